//! The controller of a cluster (`mode = "cluster"`): it keeps the cluster's epoch (which region
//! holds the primaries) in `cluster.json`, leads the global name to that region's primaries
//! (cluster clients take them as seeds), and runs the operator's all-shard switchover and region
//! failover under its lock, recording each move before it starts. A pass settles a move that
//! ended halfway (a crash, a failed command) by what the shards show, never by what the command
//! said; within the writer region the cluster replaces a lost primary itself, and the name
//! follows at the next pass.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::unix::OwnedWriteHalf;
use valkey_dr_core::cluster::{
    ClusterEpoch, MoveState, RegionVerdict, Shard, move_state, records, region_verdict,
    write_quorums, writer_region,
};
use valkey_dr_core::config::DnsProviderConfig;
use valkey_dr_core::config::FailoverPolicy;
use valkey_dr_core::observation::NodeObservation;
use valkey_dr_core::records::ManagedNames;
use valkey_dr_core::self_fence::WriteQuorum;
use valkey_dr_core::{Config, Ownership, RecordType, RegionId, Topology};
use valkey_dr_core::{Engine, NodeId};
use valkey_dr_dns::DnsProvider;
use valkey_dr_dns::embedded::{DnsServer, Zone};
use valkey_dr_valkey::ValkeyEngine;

use super::state::{ClusterMove, ClusterState, ClusterStore};
use super::{
    ClusterError, ClusterFailover, ClusterStatus, ClusterSwitchover, CutStep, discover, status_of,
};
use crate::ControllerError;
use crate::control::{ControlServer, ControlTarget, Reply, Request, stream_events};
use crate::events::{EventKind, EventSink};

/// How long a move's result may take to show in the shards once its command returned: the
/// cluster's gossip carries each takeover to the node asked.
const SETTLE_WITHIN: Duration = Duration::from_secs(5);

/// Called at each step of a move (the crash tests stop the process there).
pub type StepHook = Arc<dyn Fn(CutStep) + Send + Sync>;

pub struct ClusterController {
    config: Config,
    topology: Topology,
    names: ManagedNames,
    engine: ValkeyEngine,
    dns: Arc<dyn DnsProvider>,
    events: EventSink,
    store: ClusterStore,
    /// Held by every pass and every move: they never interleave.
    acting: tokio::sync::Mutex<()>,
    /// Each answering node's `min-replicas-to-write` as last set, and whether the node took it
    /// (set every pass; kept to report changes and the armed set); changed only by the holder
    /// of `acting`.
    quorums: std::sync::Mutex<std::collections::HashMap<NodeId, (WriteQuorum, bool)>>,
    /// Since when each node of the writer region has neither answered nor been heard by a
    /// replica; changed only by the holder of `acting`.
    silent_since: std::sync::Mutex<std::collections::HashMap<NodeId, Instant>>,
    /// The last automatic-failover verdict reported, so that each is reported once.
    reported_verdict: std::sync::Mutex<Option<String>>,
    step_hook: Option<StepHook>,
}

/// What one pass saw and did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterPass {
    pub epoch: u64,
    pub writer_region: String,
    /// The region a recorded move goes to, while it is halfway.
    pub moving_to: Option<String>,
    /// Record sets changed.
    pub applied: usize,
    /// The region an automatic failover should move the primaries to now (`cross_region_failover
    /// = "auto"`): the writer region is lost and its primaries surely fenced.
    pub fail_over_to: Option<String>,
    /// A node of the writer region is silent: the next pass comes after `probe_interval_ms`,
    /// so that its silence is measured finely.
    #[serde(default)]
    pub watching: bool,
}

/// What `status` shows for a controlled cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlledClusterStatus {
    pub epoch: Option<u64>,
    pub moving_to: Option<String>,
    /// What the global name leads to now, as the DNS provider holds it.
    pub name: Vec<String>,
    /// The nodes whose self-fence is armed, as last set: how many good replicas each needs to
    /// take writes (those beside it plus one outside its region).
    #[serde(default)]
    pub self_fenced: std::collections::BTreeMap<String, u32>,
    #[serde(flatten)]
    pub cluster: ClusterStatus,
}

impl ClusterController {
    pub fn new(
        config: Config,
        dns: Arc<dyn DnsProvider>,
        step_hook: Option<StepHook>,
    ) -> Result<ClusterController, ControllerError> {
        std::fs::create_dir_all(&config.state_dir).map_err(|source| ControllerError::StateDir {
            path: config.state_dir.display().to_string(),
            source,
        })?;
        let topology = Topology::from_config(&config);
        let events = EventSink::open(
            &config.events_file(),
            config.controller.events_max_bytes,
            Arc::new(crate::metrics::Metrics::new()),
        );
        let (store, problem) = ClusterStore::open(&config.state_dir, &topology);
        if let Some(problem) = problem {
            events.emit(
                EventKind::StateUnusable,
                json!({ "error": problem.to_string() }),
            );
        }
        Ok(ClusterController {
            engine: super::engine(&config)?,
            names: ManagedNames::from_config(&config),
            topology,
            dns,
            events,
            store,
            acting: tokio::sync::Mutex::new(()),
            quorums: Default::default(),
            silent_since: Default::default(),
            reported_verdict: Default::default(),
            step_hook,
            config,
        })
    }

    pub fn events(&self) -> &EventSink {
        &self.events
    }

    pub fn state(&self) -> Option<ClusterState> {
        self.store.get()
    }

    fn region_name(&self, region: RegionId) -> String {
        self.topology.region(region).name.clone()
    }

    /// One pass: the shards discovered, a recorded move settled by them, the name led to the
    /// epoch's region's primaries.
    pub async fn reconcile(&self) -> Result<ClusterPass, ClusterError> {
        let _acting = self.acting.lock().await;
        self.reconcile_locked().await
    }

    async fn reconcile_locked(&self) -> Result<ClusterPass, ClusterError> {
        let known = self.store.get();
        // Where the primaries are (or go): its nodes know of every takeover first.
        let prefer = known
            .as_ref()
            .map(|s| s.moving.map_or(s.epoch.writer_region, |m| m.to));
        // The shards and every node's own account, asked at once: a silent node costs one
        // command timeout per pass, not two.
        let (discovered, observations) = futures::join!(
            discover(&self.engine, &self.topology, prefer),
            futures::future::join_all(
                self.topology
                    .nodes
                    .iter()
                    .map(|n| self.engine.observe(n.id, &n.control_endpoint)),
            )
        );
        let (_, shards) = discovered.map_err(ClusterError::NoNodeAnswered)?;
        let state = match known {
            Some(state) => state,
            None => self.recover_epoch(&shards).await?,
        };
        let state = self.settle(state, &shards)?;
        let state = self.fence(state, &shards, &observations).await;
        let applied = self.publish(&state.epoch, &shards).await?;
        let fail_over_to = self.judge_region(&state, &shards, &observations);
        let watching = !self
            .silent_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        Ok(ClusterPass {
            epoch: state.epoch.epoch,
            writer_region: self.region_name(state.epoch.writer_region),
            moving_to: state.moving.map(|m| self.region_name(m.to)),
            applied,
            fail_over_to: fail_over_to.map(|r| self.region_name(r)),
            watching,
        })
    }

    /// Whether an automatic failover should move the primaries now ([`region_verdict`]), with
    /// the silences measured up to this pass; each new verdict is reported once.
    fn judge_region(
        &self,
        state: &ClusterState,
        shards: &[Shard],
        observations: &[NodeObservation],
    ) -> Option<RegionId> {
        let now = Instant::now();
        let silent_since = {
            let mut silent = self.silent_since.lock().unwrap_or_else(|e| e.into_inner());
            for o in observations {
                let node = &self.topology.node(o.node);
                let heard =
                    valkey_dr_core::cluster::heard_by_a_replica(observations, &node.endpoint);
                if node.region != state.epoch.writer_region || o.info().is_some() || heard {
                    silent.remove(&o.node);
                } else {
                    silent.entry(o.node).or_insert(now);
                }
            }
            silent.clone()
        };
        let controller = &self.config.controller;
        let blocked = state
            .failovers_blocked_until_ms
            .is_some_and(|until| crate::clock::now_ms() < until);
        if controller.cross_region_failover != FailoverPolicy::Auto {
            return None;
        }
        match state.moving {
            // An automatic failover that left a shard where it was (its target slow to answer)
            // carries on: the primaries it takes from were known fenced when it started, and one
            // that answers again is paused and caught up first.
            Some(m) if m.automatic => return Some(m.to),
            Some(_) => return None,
            None if blocked => return None,
            None => {}
        }
        let certain_after = WriteQuorum {
            replicas: 1,
            max_lag_s: controller.writer_quorum_max_lag_s,
        }
        .certain_after();
        let verdict = region_verdict(
            &self.topology,
            &state.epoch,
            shards,
            observations,
            // Silent since the controller first saw it so, or longer by its replicas' account,
            // less the 1 s between the primary's pings (`repl-ping-replica-period`): the last
            // one they heard may have come that long before the silence began.
            |n| {
                let ours = silent_since.get(&n).map(|t| now.duration_since(*t));
                let theirs = valkey_dr_core::cluster::unheard_for(
                    observations,
                    &self.topology.node(n).endpoint,
                )
                .map(|d| d.saturating_sub(Duration::from_secs(1)));
                ours.max(theirs.filter(|_| ours.is_some()))
            },
            |n| state.armed.contains(&n),
            certain_after,
        );
        let (kind, to, why) = match &verdict {
            RegionVerdict::NotLost => (None, None, String::new()),
            RegionVerdict::Withheld(why) => (Some(EventKind::FailoverWithheld), None, why.clone()),
            RegionVerdict::FailOver(to) => {
                (Some(EventKind::FailoverNeeded), Some(*to), String::new())
            }
        };
        // Withheld reasons carry the silence so far: one report per kind of verdict.
        let label = kind.map(|k| k.to_string());
        let mut reported = self
            .reported_verdict
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *reported != label {
            if let Some(kind) = kind {
                self.events.emit(
                    kind,
                    json!({
                        "writer_region": self.region_name(state.epoch.writer_region),
                        "to_region": to.map(|r| self.region_name(r)),
                        "reason": why,
                    }),
                );
            }
            *reported = label;
        }
        to
    }

    /// The epoch when nothing usable is recorded: the one the ownership record carries (a
    /// controller restarted without its state directory goes on from there when its DNS
    /// server kept the record, as an RFC 2136 server does), else epoch 1 where the primaries of
    /// the most slots stand (the embedded server starts empty: nothing else publishes a number
    /// that ours would have to exceed).
    async fn recover_epoch(&self, shards: &[Shard]) -> Result<ClusterState, ClusterError> {
        let published = self
            .dns
            .records(std::slice::from_ref(&self.names.ownership))
            .await
            .ok()
            .into_iter()
            .flatten()
            .filter(|r| r.rtype == RecordType::Txt)
            .flat_map(|r| r.values)
            .filter_map(|v| Ownership::parse(&v))
            .find(|o| o.owner == self.names.owner);
        let epoch = match published
            .as_ref()
            .and_then(|o| Some((o.epoch, self.topology.region_by_name(&o.primary_region)?)))
        {
            Some((epoch, writer_region)) => ClusterEpoch {
                epoch,
                writer_region,
            },
            None => ClusterEpoch {
                epoch: 1,
                writer_region: writer_region(
                    &self.topology,
                    shards,
                    self.topology.bootstrap_region,
                ),
            },
        };
        let state = ClusterState::new(epoch);
        self.record(state.clone())?;
        self.events.emit(
            EventKind::EpochRecovered,
            json!({
                "epoch": epoch.epoch,
                "writer_region": self.region_name(epoch.writer_region),
                "from": if published.is_some() { "ownership record" } else { "the shards" },
            }),
        );
        Ok(state)
    }

    fn record(&self, state: ClusterState) -> Result<(), ClusterError> {
        if self.store.get().as_ref() == Some(&state) {
            return Ok(());
        }
        self.store.set(state).map_err(|e| {
            self.events.emit(
                EventKind::StateWriteFailed,
                json!({ "error": e.to_string() }),
            );
            ClusterError::StateNotRecorded(e.to_string())
        })
    }

    /// A recorded move, settled by the shards: done (its epoch in force), not moved (dropped),
    /// or left halfway for the operator.
    fn settle(&self, state: ClusterState, shards: &[Shard]) -> Result<ClusterState, ClusterError> {
        let Some(moving) = state.moving else {
            return Ok(state);
        };
        let settled = match move_state(&self.topology, &state.epoch, moving.to, shards) {
            MoveState::Halfway => return Ok(state),
            MoveState::Done => ClusterState {
                epoch: ClusterEpoch {
                    epoch: moving.epoch,
                    writer_region: moving.to,
                },
                moving: None,
                ..state
            },
            MoveState::NotMoved => ClusterState {
                moving: None,
                ..state
            },
        };
        self.record(settled.clone())?;
        self.events.emit(
            EventKind::ClusterMoveSettled,
            json!({
                "epoch": settled.epoch.epoch,
                "writer_region": self.region_name(settled.epoch.writer_region),
                "moved": settled.epoch.writer_region == moving.to,
            }),
        );
        Ok(settled)
    }

    /// Sets every answering node's self-fence ([`write_quorums`]), every pass; a change, or a
    /// node that refuses, is reported. Returns `state` with the nodes armed now (recorded when
    /// that changed; a node that did not answer keeps its mark).
    async fn fence(
        &self,
        state: ClusterState,
        shards: &[Shard],
        observations: &[NodeObservation],
    ) -> ClusterState {
        let wanted = write_quorums(
            &self.topology,
            shards,
            observations,
            self.config.controller.writer_quorum_max_lag_s,
            self.config.controller.writes_need_a_replica,
        );
        {
            let mut known = self.quorums.lock().unwrap_or_else(|e| e.into_inner());
            known.retain(|node, _| wanted.iter().any(|(n, _)| n == node));
        }
        // Set on every node every pass, not only where it changed: a node restarted between two
        // passes (from a config file without it) answers as before, and only the setting
        // itself tells — one CONFIG SET per node per pass. Reported when it changes.
        let results = futures::future::join_all(wanted.iter().map(|(node, quorum)| {
            self.engine
                .set_write_quorum(&self.topology.node(*node).control_endpoint, *quorum)
        }))
        .await;
        for ((node, quorum), result) in wanted.into_iter().zip(results) {
            let in_force = result.is_ok();
            let before = self
                .quorums
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(node, (quorum, in_force));
            // Reported on a change, or once when a node keeps refusing it.
            if before != Some((quorum, in_force)) {
                self.events.emit(
                    EventKind::WriteQuorumSet,
                    json!({
                        "node": self.topology.node_name(node),
                        "replicas": quorum.replicas,
                        "max_lag_s": quorum.max_lag_s,
                        "armed": quorum.armed(),
                        "error": result.err().map(|e| e.to_string()),
                    }),
                );
            }
        }
        let in_force = self
            .quorums
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut armed = state.armed.clone();
        for (node, (quorum, took)) in &in_force {
            if *took && quorum.armed() {
                armed.insert(*node);
            } else if *took {
                armed.remove(node);
            }
        }
        let next = ClusterState { armed, ..state };
        // Not recorded: the next pass tries again; meanwhile a restart knows the older set.
        let _ = self.record(next.clone());
        next
    }

    /// Leads the name to `epoch`'s primaries ([`records`]); returns the record sets changed.
    async fn publish(&self, epoch: &ClusterEpoch, shards: &[Shard]) -> Result<usize, ClusterError> {
        let desired = records(&self.names, &self.topology, epoch, shards);
        if desired.is_empty() {
            return Ok(0);
        }
        let names = [self.names.global.clone(), self.names.ownership.clone()];
        let current = self
            .dns
            .records(&names)
            .await
            .map_err(|e| ClusterError::NameNotMoved(e.to_string()))?;
        let plan = valkey_dr_core::plan::calculate(
            &current,
            &desired,
            &self.names.ownership,
            &self.names.owner,
        );
        if let Some((name, reason)) = plan.conflicts.first() {
            self.events.emit(
                EventKind::DnsConflict,
                json!({ "name": name, "reason": reason }),
            );
            return Err(ClusterError::NameNotMoved(format!("{name}: {reason}")));
        }
        if plan.changes.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.dns.apply(&plan.changes).await {
            self.events
                .emit(EventKind::DnsApplyFailed, json!({ "error": e.to_string() }));
            return Err(ClusterError::NameNotMoved(e.to_string()));
        }
        self.events.emit(
            EventKind::DnsApplied,
            json!({ "changes": plan.changes.len(), "epoch": epoch.epoch }),
        );
        Ok(plan.changes.len())
    }

    /// Records the move to `region` (its epoch one past the current), so that a crash from here
    /// on is settled by the next pass.
    async fn begin_move(&self, region: &str, automatic: bool) -> Result<ClusterMove, ClusterError> {
        let to = self
            .topology
            .region_by_name(region)
            .ok_or_else(|| ClusterError::UnknownRegion(region.to_string()))?;
        // A pass first: the epoch exists, and a move left halfway is settled if it can be. An
        // automatic failover comes right after the pass that called for it (a pass with a
        // silent region takes a command timeout more).
        if !automatic || self.store.get().is_none() {
            self.reconcile_locked().await?;
        }
        let state = self.store.get().ok_or_else(|| {
            ClusterError::StateNotRecorded("no epoch recorded after a pass".into())
        })?;
        // A move to the same region again (finishing one left halfway) keeps its epoch.
        let epoch = match state.moving {
            Some(m) if m.to == to => m.epoch,
            Some(m) => m.epoch.max(state.epoch.epoch) + 1,
            None => state.epoch.epoch + 1,
        };
        let moving = ClusterMove {
            epoch,
            to,
            automatic,
        };
        self.record(ClusterState {
            moving: Some(moving),
            ..state
        })?;
        self.events.emit(
            EventKind::ClusterMoveRecorded,
            json!({ "epoch": moving.epoch, "to_region": region }),
        );
        Ok(moving)
    }

    /// After a move's command returned: passes until the shards show it settled (its takeovers
    /// reach the node asked by gossip), for up to [`SETTLE_WITHIN`].
    async fn finish_move(&self) -> Result<ClusterPass, ClusterError> {
        let deadline = Instant::now() + SETTLE_WITHIN;
        loop {
            let pass = self.reconcile_locked().await;
            match &pass {
                Ok(p) if p.moving_to.is_none() => return pass,
                _ if Instant::now() >= deadline => return pass,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// What a move calls at each step: an event, and the crash tests' hook.
    fn step_reporter(self: &Arc<Self>) -> impl Fn(CutStep) + Send + Sync + 'static {
        let controller = self.clone();
        move |step| {
            controller
                .events
                .emit(EventKind::ClusterStep, json!({ "step": step.to_string() }));
            if let Some(hook) = &controller.step_hook {
                hook(step);
            }
        }
    }

    /// The operator's all-shard switchover ([`super::cluster_switchover`]), recorded as a move
    /// before it starts; the name moves once the shards show every primary in `region`.
    pub async fn switchover(
        self: &Arc<Self>,
        region: &str,
    ) -> Result<ClusterSwitchover, ClusterError> {
        let _acting = self.acting.lock().await;
        self.begin_move(region, false).await?;
        let done = super::cluster_switchover(&self.config, region, self.step_reporter()).await;
        let settled = self.finish_move().await;
        let done = done?;
        settled?;
        Ok(done)
    }

    /// The operator's region failover ([`super::cluster_failover`]), recorded as a move; the
    /// name moves once the shards show every primary in `region`.
    pub async fn failover(
        self: &Arc<Self>,
        region: &str,
        confirm_down: bool,
    ) -> Result<ClusterFailover, ClusterError> {
        self.fail_over(region, confirm_down, false).await
    }

    async fn fail_over(
        self: &Arc<Self>,
        region: &str,
        confirm_down: bool,
        automatic: bool,
    ) -> Result<ClusterFailover, ClusterError> {
        let _acting = self.acting.lock().await;
        self.begin_move(region, automatic).await?;
        let done =
            super::cluster_failover(&self.config, region, confirm_down, self.step_reporter()).await;
        let settled = self.finish_move().await;
        let done = done?;
        settled?;
        Ok(done)
    }

    /// The automatic region failover a pass called for: every primary of the lost region is
    /// surely fenced (its self-fence armed, silent past its certainty), which stands for the
    /// operator's `--confirm-down`. Further automatic failovers then wait `failover_block_ms`
    /// or `valkey-dr ack`.
    async fn fail_over_automatically(self: &Arc<Self>, region: &str) {
        self.events.emit(
            EventKind::FailoverStarted,
            json!({ "to_region": region, "automatic": true }),
        );
        match self.fail_over(region, true, true).await {
            Ok(done) => {
                let _acting = self.acting.lock().await;
                if let Some(state) = self.store.get() {
                    let until = crate::clock::now_ms() + self.config.controller.failover_block_ms;
                    let _ = self.record(ClusterState {
                        failovers_blocked_until_ms: Some(until),
                        ..state
                    });
                }
                self.events.emit(
                    EventKind::FailoverCompleted,
                    json!({ "to_region": region, "automatic": true, "took_ms": done.took_ms }),
                );
            }
            Err(e) => self.events.emit(
                EventKind::FailoverFailed,
                json!({ "to_region": region, "automatic": true, "error": e.to_string() }),
            ),
        }
    }

    /// `valkey-dr ack`: automatic failovers are allowed again; whether they were blocked.
    pub async fn ack(&self) -> Result<bool, ClusterError> {
        let _acting = self.acting.lock().await;
        let Some(state) = self.store.get() else {
            return Ok(false);
        };
        let was_blocked = state
            .failovers_blocked_until_ms
            .is_some_and(|until| crate::clock::now_ms() < until);
        self.record(ClusterState {
            failovers_blocked_until_ms: None,
            ..state
        })?;
        Ok(was_blocked)
    }

    pub async fn status(&self) -> Result<ControlledClusterStatus, ClusterError> {
        let state = self.store.get();
        let prefer = state.as_ref().map(|s| s.epoch.writer_region);
        let (asked, shards) = discover(&self.engine, &self.topology, prefer)
            .await
            .map_err(ClusterError::NoNodeAnswered)?;
        let writer = state.as_ref().map_or_else(
            || writer_region(&self.topology, &shards, self.topology.bootstrap_region),
            |s| s.epoch.writer_region,
        );
        let name = self
            .dns
            .records(std::slice::from_ref(&self.names.global))
            .await
            .unwrap_or_default()
            .into_iter()
            .flat_map(|r| r.values)
            .collect();
        let self_fenced = self
            .quorums
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, (q, in_force))| *in_force && q.armed())
            .map(|(node, (q, _))| (self.topology.node_name(*node), q.replicas))
            .collect();
        Ok(ControlledClusterStatus {
            self_fenced,
            epoch: state.as_ref().map(|s| s.epoch.epoch),
            moving_to: state
                .as_ref()
                .and_then(|s| s.moving)
                .map(|m| self.region_name(m.to)),
            name,
            cluster: status_of(&self.topology, &asked, &shards, writer),
        })
    }

    /// Passes every `reconcile_interval_ms`, with backoff after failed ones.
    pub async fn run_loop(self: Arc<Self>) {
        let interval = Duration::from_millis(self.config.controller.reconcile_interval_ms);
        let probe_interval =
            Duration::from_millis(self.config.controller.probe_interval_ms).min(interval);
        let mut failures = 0u32;
        loop {
            let delay = match self.reconcile().await {
                Ok(pass) => {
                    failures = 0;
                    if let Some(region) = pass.fail_over_to {
                        // On a thread of its own, as a requested move (see `run_streaming`).
                        let controller = self.clone();
                        let runtime = tokio::runtime::Handle::current();
                        let _ = tokio::task::spawn_blocking(move || {
                            runtime.block_on(controller.fail_over_automatically(&region))
                        })
                        .await;
                    }
                    if pass.watching {
                        probe_interval
                    } else {
                        interval
                    }
                }
                Err(error) => {
                    failures += 1;
                    let delay = crate::pass::error_policy(interval, failures);
                    self.events.emit(
                        EventKind::ReconcileFailed,
                        json!({ "error": error.to_string(), "attempt": failures, "retry_in_ms": delay.as_millis() as u64 }),
                    );
                    delay
                }
            };
            tokio::time::sleep(delay).await;
        }
    }
}

impl ControlTarget for ClusterController {
    fn socket_path(&self) -> std::path::PathBuf {
        self.config.control_socket()
    }

    async fn answer(self: Arc<Self>, request: Request, out: &mut OwnedWriteHalf) -> Reply {
        let reply = |result: Result<serde_json::Value, ClusterError>| match result {
            Ok(value) => Reply::Result(value),
            Err(e) => Reply::Error(e.to_string()),
        };
        match request {
            Request::Status => reply(self.status().await.map(|s| to_json(&s))),
            Request::Reconcile => reply(self.reconcile().await.map(|p| to_json(&p))),
            Request::Ack => reply(
                self.ack()
                    .await
                    .map(|was_blocked| json!({ "was_blocked": was_blocked })),
            ),
            Request::ClusterSwitchover { region } => {
                let controller = self.clone();
                run_streaming(&self.events, out, move |runtime| {
                    runtime
                        .block_on(controller.switchover(&region))
                        .map(|d| to_json(&d))
                })
                .await
                .map_or_else(Reply::Error, reply)
            }
            Request::ClusterFailover {
                region,
                confirm_down,
            } => {
                let controller = self.clone();
                run_streaming(&self.events, out, move |runtime| {
                    runtime
                        .block_on(controller.failover(&region, confirm_down))
                        .map(|d| to_json(&d))
                })
                .await
                .map_or_else(Reply::Error, reply)
            }
            other => Reply::Error(format!(
                "this controller runs a cluster (mode = \"cluster\"): `{}` is for a replication group; use `valkey-dr cluster switchover` or `cluster failover`",
                serde_json::to_value(&other)
                    .ok()
                    .and_then(|v| v["command"].as_str().map(str::to_string))
                    .unwrap_or_default()
            )),
        }
    }
}

fn to_json(value: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_default()
}

/// Runs `operation` on a thread of its own, which drives its future on the runtime it is given,
/// while the events stream to `out` ([`stream_events`]); `Err` when it panicked. On a thread
/// because a move's future is not `Send` for every lifetime (rustc cannot prove it through its
/// nested borrows), which a task needs.
async fn run_streaming<T: Send + 'static>(
    events: &EventSink,
    out: &mut OwnedWriteHalf,
    operation: impl FnOnce(&tokio::runtime::Handle) -> T + Send + 'static,
) -> Result<T, String> {
    let runtime = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || operation(&runtime));
    stream_events(events, out, task)
        .await
        .map_err(|e| format!("the operation failed: {e}"))
}

/// A started cluster controller: its embedded DNS server (unless the records live on the user's
/// server), its control socket and its passes.
pub struct RunningCluster {
    pub controller: Arc<ClusterController>,
    pub dns_addr: Option<std::net::SocketAddr>,
    dns: Option<DnsServer>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningCluster {
    /// Resolves when a task ends (they loop for the controller's life: it panicked), naming it.
    pub async fn task_ended(&mut self) -> String {
        let (outcome, index, _) = futures::future::select_all(self.tasks.iter_mut()).await;
        let how = if outcome.is_err() {
            "panicked"
        } else {
            "ended"
        };
        format!(
            "the {} task {how}",
            ["control socket", "reconcile loop"][index]
        )
    }

    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(dns) = self.dns {
            dns.shutdown().await;
        }
        let _ = std::fs::remove_file(self.controller.config.control_socket());
    }
}

/// Starts the controller of the cluster `config` describes.
pub async fn start(
    config: Config,
    step_hook: Option<StepHook>,
) -> Result<RunningCluster, ControllerError> {
    let (dns, server): (Arc<dyn DnsProvider>, Option<DnsServer>) = match &config.dns.provider {
        DnsProviderConfig::Embedded { listen } => {
            let zone = Arc::new(Zone::new(&config.dns.zone));
            let listen = listen.parse().expect("validated listen address");
            let server =
                DnsServer::start_with_name_servers(zone.clone(), listen, config.dns.ttl, &[])
                    .await?;
            (zone, Some(server))
        }
        DnsProviderConfig::Rfc2136(rfc2136) => (crate::rfc2136_provider(&config, rfc2136)?, None),
    };
    let controller = Arc::new(ClusterController::new(config, dns, step_hook)?);
    let control = ControlServer::bind(controller.clone())?;
    let dns_addr = server.as_ref().map(DnsServer::local_addr);
    controller.events.emit(
        EventKind::ControllerStarted,
        json!({
            "mode": "cluster",
            "dns": dns_addr.map(|a| a.to_string()),
            "control_socket": controller.config.control_socket().display().to_string(),
            "epoch": controller.state().map(|s| s.epoch.epoch),
            "cross_region_failover": controller.config.controller.cross_region_failover,
        }),
    );
    let tasks = vec![
        tokio::spawn(control.serve()),
        tokio::spawn(controller.clone().run_loop()),
    ];
    Ok(RunningCluster {
        controller,
        dns_addr,
        dns: server,
        tasks,
    })
}
