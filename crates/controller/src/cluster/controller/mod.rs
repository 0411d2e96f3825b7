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
    ClusterEpoch, MoveState, RegionVerdict, Shard, empty_primaries, move_state, observations_of,
    records, region_verdict, write_quorums, writer_region,
};
use valkey_dr_core::config::DnsProviderConfig;
use valkey_dr_core::config::FailoverPolicy;
use valkey_dr_core::observation::{History, NodeObservation};
use valkey_dr_core::records::ManagedNames;
use valkey_dr_core::self_fence::WriteQuorum;
use valkey_dr_core::{Config, RegionId, Topology};
use valkey_dr_core::{Engine, NodeId};
use valkey_dr_dns::DnsProvider;
use valkey_dr_dns::embedded::DnsServer;
use valkey_dr_valkey::ValkeyEngine;

use super::state::{ClusterMove, ClusterState, ClusterStore};
use super::{
    ClusterError, ClusterFailover, ClusterStatus, ClusterSwitchover, CutStep, Mover, discover,
    status_of,
};
use crate::ControllerError;
use crate::control::{ControlServer, ControlTarget, Reply, Request, stream_events};
use crate::dns_changes::ChangesError;
use crate::events::{EventKind, EventSink};

mod automatic;
mod control;
mod fence;
mod loss;
mod office;
mod start;

pub use start::{RunningCluster, start};

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
    /// Each answering node's `min-replicas-to-write` as it should be, and whether it is in force
    /// (to report changes once, and for `status`); changed only by the holder of `acting`.
    quorums: std::sync::Mutex<std::collections::HashMap<NodeId, (WriteQuorum, bool)>>,
    /// Since when each node of the writer region has neither answered nor been heard by a
    /// replica; changed only by the holder of `acting`.
    silent_since: std::sync::Mutex<std::collections::HashMap<NodeId, Instant>>,
    /// The last automatic-failover verdict reported, so that each is reported once.
    reported_verdict: std::sync::Mutex<Option<String>>,
    /// What `status` shows: what the last passes saw and published (a status read costs no
    /// round of reads, which a silent node or DNS backend would hold up).
    last_pass: std::sync::Mutex<LastPass>,
    step_hook: Option<StepHook>,
    /// What the event stream counts (webhook deliveries among them).
    metrics: Arc<crate::metrics::Metrics>,
    /// The highly available shape: one controller per site on etcd, the leader acts
    /// ([`crate::ha`]); `None` for one controller.
    ha: Option<Arc<crate::ha::Ha>>,
    /// Wakes the pass loop (a new leader acts at once).
    wake: tokio::sync::Notify,
}

/// What the last passes saw and left, for `status`.
#[derive(Debug, Clone, Default)]
struct LastPass {
    /// The shards as the last pass saw them, placed against the epoch's region.
    view: Option<ClusterStatus>,
    /// The addresses the name leads to, as the last pass that wrote or confirmed it left it
    /// (a pass that sees no writer-region primary leaves the name, and this, as they were).
    name: Vec<String>,
    /// Each node's replication history when it last answered: a slot-serving primary whose
    /// offset went back since came back without its data.
    histories: std::collections::BTreeMap<NodeId, History>,
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
    /// What the global name leads to, as the last pass that wrote or confirmed it in the DNS
    /// provider left it (empty before one did).
    pub name: Vec<String>,
    /// The nodes whose self-fence is armed, as last set: how many good replicas each needs to
    /// take writes (those beside it plus one outside its region).
    #[serde(default)]
    pub self_fenced: std::collections::BTreeMap<String, u32>,
    /// The highly available shape: this controller's site, and the site that leads as far as
    /// it knows (none: no leader seen, etcd unreachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The last primary that came back without its data, until `valkey-dr ack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_loss_suspected: Option<serde_json::Value>,
    #[serde(flatten)]
    pub cluster: ClusterStatus,
}

impl ClusterController {
    pub fn new(
        config: Config,
        dns: Arc<dyn DnsProvider>,
        step_hook: Option<StepHook>,
    ) -> Result<ClusterController, ControllerError> {
        ClusterController::build(config, dns, None, step_hook)
    }

    /// A controller of the highly available shape: the epoch in etcd, the records in etcd
    /// served by every site, and actions only while leading.
    pub fn with_coordination(
        config: Config,
        ha: crate::ha::Ha,
        step_hook: Option<StepHook>,
    ) -> Result<ClusterController, ControllerError> {
        let dns = ha.records.clone();
        ClusterController::build(config, dns, Some(ha), step_hook)
    }

    fn build(
        config: Config,
        dns: Arc<dyn DnsProvider>,
        ha: Option<crate::ha::Ha>,
        step_hook: Option<StepHook>,
    ) -> Result<ClusterController, ControllerError> {
        crate::create_state_dir(&config)?;
        let topology = Topology::from_config(&config);
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let events = EventSink::open(
            &config.events_file(),
            config.controller.events_max_bytes,
            metrics.clone(),
        );
        let (store, problem) = match &ha {
            Some(ha) => (
                ClusterStore::in_etcd(ha.coord.clone(), ha.leader.clone(), &topology),
                None,
            ),
            None => ClusterStore::open(&config.state_dir, &topology),
        };
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
            last_pass: Default::default(),
            step_hook,
            metrics,
            ha: ha.map(Arc::new),
            wake: tokio::sync::Notify::new(),
            config,
        })
    }

    /// True when this controller may act on the nodes and write the state and the records:
    /// always as the one controller, only while leading in the highly available shape.
    pub fn may_act(&self) -> bool {
        self.ha.as_ref().is_none_or(|ha| ha.leader.is_leader())
    }

    /// Why this controller refuses an operator's move, when it does not lead.
    fn not_leader(&self) -> Result<(), ClusterError> {
        match &self.ha {
            Some(ha) if !ha.leader.is_leader() => Err(ClusterError::NotLeader {
                site: ha.site().to_string(),
                leader: ha.leader_site(),
            }),
            _ => Ok(()),
        }
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
        if !self.may_act() {
            return self.follow().await;
        }
        let known = self.store.get();
        // Where the primaries are (or go): its nodes know of every takeover first.
        let prefer = known
            .as_ref()
            .map(|s| s.moving.map_or(s.epoch.writer_region, |m| m.to));
        let (asked, shards) = discover(&self.engine, &self.topology, prefer)
            .await
            .map_err(ClusterError::NoNodeAnswered)?;
        // Every node's own account, as the shards were read with it: no second round of reads.
        let observations = observations_of(&self.topology, &shards);
        let lost = self.report_empty_primaries(&shards, &observations);
        let state = match known {
            Some(state) => state,
            None => self.recover_epoch(&shards).await?,
        };
        let state = self.settle(state, &shards).await?;
        let state = self.remember_loss(state, lost).await?;
        self.remember_histories(&observations);
        let state = self.fence(state, &shards, &observations).await;
        self.last_pass
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .view = Some(status_of(
            &self.topology,
            &asked,
            &shards,
            state.epoch.writer_region,
        ));
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

    /// A pass of a controller that does not lead (the highly available shape): the state read
    /// from etcd (kept as last read when etcd does not answer) and the shards discovered, for
    /// `status`; nothing is written and no node is acted on. The zone follows the records in
    /// etcd on its own ([`crate::ha::Ha::follow_records`]).
    async fn follow(&self) -> Result<ClusterPass, ClusterError> {
        let synced = self.store.reload().await;
        let state = self.store.get();
        let prefer = state
            .as_ref()
            .map(|s| s.moving.map_or(s.epoch.writer_region, |m| m.to));
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
            .map(|sets| sets.into_iter().flat_map(|r| r.values).collect())
            .unwrap_or_default();
        {
            let mut last = self.last_pass.lock().unwrap_or_else(|e| e.into_inner());
            last.view = Some(status_of(&self.topology, &asked, &shards, writer));
            last.name = name;
        }
        synced.map_err(|e| ClusterError::EpochUnknown(e.to_string()))?;
        Ok(ClusterPass {
            epoch: state.as_ref().map_or(0, |s| s.epoch.epoch),
            writer_region: self.region_name(writer),
            moving_to: state.and_then(|s| s.moving).map(|m| self.region_name(m.to)),
            applied: 0,
            fail_over_to: None,
            watching: false,
        })
    }

    /// The epoch when nothing usable is recorded: the one the ownership record carries (a
    /// controller restarted without its state directory goes on from there when its DNS
    /// server kept the record, as an RFC 2136 server does), else epoch 1 where the primaries of
    /// the most slots stand (the embedded server starts empty: nothing else publishes a number
    /// that ours would have to exceed).
    async fn recover_epoch(&self, shards: &[Shard]) -> Result<ClusterState, ClusterError> {
        // Unreadable is not "nothing published": the pass fails (reported, retried) rather than
        // start over at epoch 1 below a published epoch, which would wedge the name. In the
        // highly available shape the record is etcd's: read now, not this site's copy (not
        // loaded yet, or its watch behind).
        if let Some(ha) = &self.ha {
            ha.records
                .sync()
                .await
                .map_err(|e| ClusterError::EpochUnknown(e.to_string()))?;
        }
        let published = crate::dns_changes::published_ownership(self.dns.as_ref(), &self.names)
            .await
            .map_err(|e| ClusterError::EpochUnknown(e.to_string()))?;
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
        self.record(state.clone()).await?;
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

    async fn record(&self, state: ClusterState) -> Result<(), ClusterError> {
        if self.store.get().as_ref() == Some(&state) {
            return Ok(());
        }
        self.store.set(state).await.map_err(|e| {
            self.events.emit(
                EventKind::StateWriteFailed,
                json!({ "error": e.to_string() }),
            );
            ClusterError::StateNotRecorded(e.to_string())
        })
    }

    /// A recorded move, settled by the shards: done (its epoch in force), not moved (dropped),
    /// or left halfway for the operator.
    async fn settle(
        &self,
        state: ClusterState,
        shards: &[Shard],
    ) -> Result<ClusterState, ClusterError> {
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
        self.record(settled.clone()).await?;
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

    /// Leads the name to `epoch`'s primaries ([`records`]); returns the record sets changed.
    async fn publish(&self, epoch: &ClusterEpoch, shards: &[Shard]) -> Result<usize, ClusterError> {
        let desired = records(&self.names, &self.topology, epoch, shards);
        if desired.is_empty() {
            return Ok(0);
        }
        let changes = match crate::dns_changes::changes_toward(
            self.dns.as_ref(),
            &self.names,
            &desired,
        )
        .await
        {
            Ok(changes) => changes,
            Err(ChangesError::Conflict { name, reason }) => {
                self.events.emit(
                    EventKind::DnsConflict,
                    json!({ "name": name, "reason": reason }),
                );
                return Err(ClusterError::NameNotMoved(format!("{name}: {reason}")));
            }
            Err(e) => return Err(ClusterError::NameNotMoved(e.to_string())),
        };
        if !changes.is_empty() {
            if let Err(e) = self.dns.apply(&changes).await {
                self.events
                    .emit(EventKind::DnsApplyFailed, json!({ "error": e.to_string() }));
                return Err(ClusterError::NameNotMoved(e.to_string()));
            }
            self.events.emit(
                EventKind::DnsApplied,
                json!({ "changes": changes.len(), "epoch": epoch.epoch }),
            );
        }
        // The provider now holds `desired`: what status shows as the name.
        self.last_pass
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .name = desired
            .into_iter()
            .filter(|r| r.name == self.names.global)
            .flat_map(|r| r.values)
            .collect();
        Ok(changes.len())
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
        // A move to the same region again (finishing one left halfway) keeps its epoch, and so
        // does one into the region the epoch already names (a switchover asked again, e.g. after
        // its leader lost office before answering): it only brings back a shard that strayed.
        let epoch = match state.moving {
            Some(m) if m.to == to => m.epoch,
            Some(m) => m.epoch.max(state.epoch.epoch) + 1,
            None if state.epoch.writer_region == to => state.epoch.epoch,
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
        })
        .await?;
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
                // Deposed: the leader settles it.
                _ if !self.may_act() => return pass,
                _ if Instant::now() >= deadline => return pass,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
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
        self.not_leader()?;
        self.begin_move(region, false).await?;
        let done = super::switchover_with(&self.engine, &self.config, region, self.as_ref()).await;
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
        self.not_leader()?;
        self.begin_move(region, automatic).await?;
        let done = super::failover_with(
            &self.engine,
            &self.config,
            region,
            confirm_down,
            self.as_ref(),
        )
        .await;
        let settled = self.finish_move().await;
        let done = done?;
        settled?;
        Ok(done)
    }

    /// What the last pass saw (a pass first, if none has run yet), with the epoch, what the
    /// name leads to and the armed fences.
    pub async fn status(&self) -> Result<ControlledClusterStatus, ClusterError> {
        let seen = || {
            let last = self.last_pass.lock().unwrap_or_else(|e| e.into_inner());
            (last.view.clone(), last.name.clone())
        };
        let (view, name) = match seen() {
            (None, _) => {
                self.reconcile().await?;
                seen()
            }
            seen => seen,
        };
        let cluster = view.ok_or_else(|| ClusterError::NoNodeAnswered("no pass yet".into()))?;
        let state = self.store.get();
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
            site: self.ha.as_ref().map(|ha| ha.site().to_string()),
            leader: self.ha.as_ref().and_then(|ha| ha.leader_site()),
            epoch: state.as_ref().map(|s| s.epoch.epoch),
            data_loss_suspected: state.as_ref().and_then(|s| s.data_loss.clone()),
            moving_to: state
                .as_ref()
                .and_then(|s| s.moving)
                .map(|m| self.region_name(m.to)),
            name,
            cluster,
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
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}
