//! One reconcile pass: observe → analyze → plan → apply, plus the error policy.

use std::time::Duration;
use valkey_dr_core::observation::info_of;

use serde_json::json;
use valkey_dr_core::analysis::{self, analyze};
use valkey_dr_core::intent::{self, Resolution};
use valkey_dr_core::observation::{EpochMark, History};
use valkey_dr_core::{
    Analysis, EpochRecord, NodeId, NodeObservation, Ownership, RecordSet, RecordType, plan, records,
};
use valkey_dr_dns::DnsError;

use crate::Controller;
use crate::events::now_ms;

/// What the previous pass saw, to emit events only for changes.
#[derive(Default)]
pub struct Memory {
    nodes: Vec<String>,
    findings: Vec<String>,
    conflicts: Vec<(String, String)>,
    bootstrap_problem: Option<String>,
    /// The last failover situation reported, to report each once.
    pub(crate) decision: String,
    /// The last reason a cross-region failover was withheld by the sites' views.
    pub(crate) withheld: String,
    /// A failover whose DNS change is not committed yet.
    pub(crate) pending_failover: Option<PendingFailover>,
    /// When the last successful pass started.
    last_good_pass: Option<std::time::Instant>,
    /// The writer and its replication history when last seen (only ever moved forward along its
    /// history): the basis of "data at risk" and of noticing a writer that lost its data.
    pub(crate) last_writer: Option<(NodeId, History)>,
    /// The replication id of the lost history last reported, to report each once.
    pub(crate) reported_lost: Option<String>,
    /// Nodes whose sync settings were checked in this run.
    settings_checked: std::collections::BTreeSet<NodeId>,
    /// The write quorum set on the writer (its self-fence).
    pub(crate) write_quorum: Option<crate::self_fence::AppliedQuorum>,
    /// A higher write quorum wanted since then, not set yet.
    pub(crate) raise_seen: Option<(valkey_dr_core::self_fence::WriteQuorum, std::time::Instant)>,
    started: bool,
}

/// A failover between its promotion and the pass that commits DNS for its epoch.
#[derive(Debug, Clone)]
pub(crate) struct PendingFailover {
    pub kind: String,
    pub epoch: u64,
    pub new_primary: String,
    /// The first failed probe of the old writer (or the failover's start when unknown).
    pub detected: std::time::Instant,
}

#[derive(Debug, Clone)]
pub struct PassOutcome {
    pub observations: Vec<NodeObservation>,
    pub analysis: Analysis,
    pub epoch: Option<EpochRecord>,
    /// DNS changes applied by this pass (0 when DNS already matched).
    pub applied: usize,
    pub conflicts: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error("every node refused the controller ({0}); check auth and tls in the config")]
    Refused(String),
    #[error("coordination: {0}")]
    Coordination(String),
}

/// The first refusal (node and reason), when every node refused us.
fn all_refused(
    topology: &valkey_dr_core::Topology,
    observations: &[NodeObservation],
) -> Option<String> {
    let refused = |o: &NodeObservation| {
        o.failure() == Some(valkey_dr_core::observation::FailureKind::Refused)
    };
    if !observations.is_empty() && observations.iter().all(refused) {
        let first = &observations[0];
        first
            .state
            .as_ref()
            .err()
            .map(|reason| format!("{}: {reason}", topology.node_name(first.node)))
    } else {
        None
    }
}

/// Whether an epoch mark found on a node may replace `ours`: newer, within [`MAX_MARK_JUMP`] of it,
/// and below [`valkey_dr_core::analysis::MAX_EPOCH`].
fn believable_mark(mark: &EpochMark, ours: Option<EpochRecord>) -> bool {
    mark.epoch <= valkey_dr_core::analysis::MAX_EPOCH
        && ours.is_none_or(|e| mark.epoch > e.epoch && mark.epoch - e.epoch <= MAX_MARK_JUMP)
}

/// A state file behind the nodes by more promotions than this is not believed to be merely old:
/// the mark is someone else's (another deployment's data, or a client's write).
const MAX_MARK_JUMP: u64 = 1000;

/// How long to wait after `failures` failed passes in a row: doubling, capped at 30 s.
pub fn error_policy(interval: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(10);
    (interval * factor).min(Duration::from_secs(30))
}

/// A one-line description of a node's state, for change events.
pub(crate) fn describe_node(controller: &Controller, o: &NodeObservation) -> String {
    match &o.state {
        Err(e) => format!("unreachable ({e})"),
        Ok(info) => match &info.role {
            valkey_dr_core::Role::Primary => "primary".into(),
            valkey_dr_core::Role::Replica {
                master, link_up, ..
            } => {
                let known = controller
                    .topology
                    .node_by_any_address(master)
                    .map(|n| controller.topology.node_name(n))
                    .unwrap_or_else(|| master.to_string());
                format!(
                    "replica of {known}, link {}",
                    if *link_up { "up" } else { "down" }
                )
            }
        },
    }
}

impl Controller {
    /// Reports a failover complete once a pass has committed DNS in its epoch: the time from the
    /// first failed probe to here is what clients lived without a writer behind the name.
    fn complete_failover(&self, epoch: Option<EpochRecord>) {
        let done = {
            let mut memory = self.memory.lock().expect("memory lock");
            memory
                .pending_failover
                .take_if(|p| epoch.is_some_and(|e| e.epoch == p.epoch))
        };
        if let Some(done) = done {
            self.events.emit(
                "failover_completed",
                json!({
                    "kind": done.kind,
                    "epoch": done.epoch,
                    "new_primary": done.new_primary,
                    "duration_ms": done.detected.elapsed().as_millis() as u64,
                }),
            );
        }
    }

    pub async fn reconcile_once(&self) -> Result<PassOutcome, PassError> {
        let _guard = self.topology_lock.lock().await;
        let started = std::time::Instant::now();
        let outcome = self.reconcile_guarded().await;
        self.metrics.pass_finished(started.elapsed());
        if outcome.is_ok() {
            self.memory.lock().expect("memory lock").last_good_pass = Some(started);
        }
        outcome
    }

    /// How long ago the last successful pass started (`/readyz`).
    pub fn last_good_pass(&self) -> Option<std::time::Duration> {
        self.memory
            .lock()
            .expect("memory lock")
            .last_good_pass
            .map(|at| at.elapsed())
    }

    async fn reconcile_guarded(&self) -> Result<PassOutcome, PassError> {
        // The zone follows etcd on its own (`follow_records`); a pass only decides who acts.
        if let Some(ha) = self.ha()
            && !ha.leader.is_leader()
        {
            return self.follow_once(ha).await;
        }
        let outcome = self.reconcile_locked().await?;
        if let Some(ha) = self.ha() {
            self.publish_view(ha, &outcome.observations);
        }
        Ok(outcome)
    }

    pub(crate) async fn reconcile_locked(&self) -> Result<PassOutcome, PassError> {
        let probed_at = std::time::Instant::now();
        let mut observations = self.observe_all().await;
        if let Some(reason) = all_refused(&self.topology, &observations) {
            // Every node refuses us: our credentials or trust settings are wrong. Nothing can be
            // decided from that; fail the pass so the error policy backs off and reports it.
            return Err(PassError::Refused(reason));
        }
        let current = self.dns.records(&self.names.all(&self.topology)).await?;
        let mut epoch = self.epoch();
        if let Some(recovered) = self.recover_epoch_from_marks(&observations, epoch).await {
            epoch = Some(recovered);
        }
        if epoch.is_none() {
            epoch = self.bootstrap(&observations, &current).await;
        }
        // An interrupted promotion is settled before anything else acts on the nodes.
        let mut acted = false;
        if let Some(e) = epoch
            && self.state.get().is_some_and(|s| s.intent.is_some())
        {
            epoch = Some(self.resolve_intent(&observations, e).await);
            acted = true;
        }
        if acted {
            observations = self.observe_reachable(&observations).await;
        }
        let mut analysis = analyze(&self.topology, &observations, epoch.as_ref());
        self.note_changes(&observations, &analysis);
        // Act on the nodes first (failover, fencing), then look again: DNS is computed only from
        // what the nodes say after that.
        let (epoch, failed_over) = self
            .detect_and_fail_over(&observations, epoch, probed_at)
            .await;
        let enforced = match epoch {
            Some(e) if !failed_over => self.enforce_epoch(&observations, e).await,
            _ => false,
        };
        if failed_over || enforced {
            observations = self.observe_reachable(&observations).await;
            analysis = analyze(&self.topology, &observations, epoch.as_ref());
            self.note_changes(&observations, &analysis);
        }
        self.first_pass_housekeeping(&observations, &analysis).await;

        if let (Some(primary), Some(e)) = (analysis.active_primary, epoch) {
            let endpoint = &self.topology.node(primary).control_endpoint;
            let mark = EpochMark {
                epoch: e.epoch,
                writer: self.topology.node_name(primary),
            };
            if let Err(e) = self.engine.write_heartbeat(endpoint, now_ms(), &mark).await {
                tracing::debug!(error = %e, "heartbeat not written");
            }
            self.keep_write_quorum(&observations, primary).await;
            self.repoint_misdirected(&analysis).await;
        }

        let desired = records::desired(&self.names, &self.topology, &analysis, epoch.as_ref());
        let plan = plan::calculate(&current, &desired, &self.names.ownership, &self.names.owner);
        self.note_conflicts(&plan.conflicts);
        if !plan.changes.is_empty() {
            self.events
                .emit("dns_plan", json!({ "changes": plan.changes }));
            match self.dns.apply(&plan.changes).await {
                Ok(()) => self
                    .events
                    .emit("dns_applied", json!({ "changes": plan.changes.len() })),
                Err(error) => {
                    self.events
                        .emit("dns_apply_failed", json!({ "error": error.to_string() }));
                    return Err(error.into());
                }
            }
        }
        self.complete_failover(epoch);
        Ok(PassOutcome {
            observations,
            analysis,
            epoch,
            applied: plan.changes.len(),
            conflicts: plan.conflicts,
        })
    }

    /// The nodes carry the epoch mark their writer last wrote. A mark newer than our epoch means
    /// our state is behind (a reverted, truncated or lost `state.json`): take the epoch and writer
    /// from the mark, never act on the older one.
    async fn recover_epoch_from_marks(
        &self,
        observations: &[NodeObservation],
        ours: Option<EpochRecord>,
    ) -> Option<EpochRecord> {
        // In the highly available shape etcd holds the state; a mark never outranks it.
        if self.ha().is_some() {
            return None;
        }
        let (mark, writer) = observations
            .iter()
            .filter_map(|o| o.epoch_mark.as_ref())
            .filter(|m| believable_mark(m, ours))
            .filter_map(|m| {
                let node = self
                    .topology
                    .nodes
                    .iter()
                    .find(|n| n.endpoint.to_string() == m.writer)?;
                // The writer a mark names must answer as a master: any client can write a mark.
                info_of(observations, node.id)
                    .is_some_and(|i| i.is_primary())
                    .then_some((m, node.id))
            })
            .max_by_key(|(m, _)| m.epoch)?;
        let record = EpochRecord {
            epoch: mark.epoch,
            primary: writer,
        };
        let history = info_of(observations, writer)
            .filter(|i| i.is_primary())
            .map(|i| i.history());
        if let Err(e) = self.set_epoch(record, history).await {
            self.state_write_failed(&e);
            return None;
        }
        self.events.emit(
            "epoch_recovered",
            json!({
                "epoch": mark.epoch,
                "primary": mark.writer,
                "recorded_epoch": ours.map(|e| e.epoch),
                "source": "epoch mark on the nodes",
            }),
        );
        Some(record)
    }

    /// Settles a promotion intent found in the state ([`valkey_dr_core::intent::resolve`]) and
    /// returns the epoch in force afterwards.
    async fn resolve_intent(
        &self,
        observations: &[NodeObservation],
        epoch: EpochRecord,
    ) -> EpochRecord {
        let Some(intent) = self.state.get().and_then(|s| s.intent) else {
            return epoch;
        };
        let required = History {
            replication_id: intent.replication_id.clone(),
            offset: intent.required_offset,
        };
        let pending = intent::Pending {
            source: intent.source,
            target: intent.target,
            required: required.clone(),
        };
        let resolution = intent::resolve(&pending, observations);
        let new_epoch = EpochRecord {
            epoch: intent.epoch,
            primary: intent.target,
        };
        let source_answers = observations
            .iter()
            .any(|o| o.node == intent.source && o.info().is_some());
        let source_endpoint = &self.topology.node(intent.source).control_endpoint;
        let target_endpoint = &self.topology.node(intent.target).control_endpoint;
        let mut detail = json!({
            "resolution": resolution,
            "epoch": intent.epoch,
            "source": self.topology.node_name(intent.source),
            "target": self.topology.node_name(intent.target),
            "required_offset": intent.required_offset,
        });
        let in_force = match resolution {
            Resolution::Complete | Resolution::Promote => {
                if resolution == Resolution::Promote {
                    if source_answers {
                        let hold = Duration::from_millis(self.config.controller.catchup_timeout_ms);
                        let _ = self.engine.pause_writes(source_endpoint, hold).await;
                    }
                    let _ = self
                        .engine
                        .set_write_quorum(
                            target_endpoint,
                            valkey_dr_core::self_fence::WriteQuorum::OFF,
                        )
                        .await;
                    if let Err(e) = self.engine.promote(target_endpoint).await {
                        // The intent stays: the next pass looks again.
                        detail["error"] = json!(e.to_string());
                        self.events.emit("intent_resolved", &detail);
                        return epoch;
                    }
                }
                if self.commit_epoch(new_epoch, required, None).await.is_err() {
                    return epoch;
                }
                if source_answers {
                    detail["demotion"] =
                        json!(self.demote(intent.source, intent.target, true).await);
                }
                new_epoch
            }
            Resolution::RollBack => {
                let target_master = observations
                    .iter()
                    .any(|o| o.node == intent.target && o.info().is_some_and(|i| i.is_primary()));
                if target_master {
                    detail["demotion"] =
                        json!(self.demote(intent.target, intent.source, true).await);
                }
                let _ = self.engine.unpause(source_endpoint).await;
                self.clear_intent().await;
                epoch
            }
            Resolution::Wait => {
                self.clear_intent().await;
                epoch
            }
        };
        self.events.emit("intent_resolved", &detail);
        in_force
    }

    pub(crate) async fn clear_intent(&self) {
        if let Err(e) = self
            .state
            .update(|s| {
                let mut next = s.cloned()?;
                next.intent = None;
                Some(next)
            })
            .await
        {
            self.state_write_failed(&e);
        }
    }

    /// Adopts a writer when no epoch is recorded: the region and epoch of our ownership record in
    /// DNS if there is one, else the configured primary region at epoch 1.
    async fn bootstrap(
        &self,
        observations: &[NodeObservation],
        current: &[RecordSet],
    ) -> Option<EpochRecord> {
        let published = current
            .iter()
            .filter(|r| r.name == self.names.ownership && r.rtype == RecordType::Txt)
            .flat_map(|r| r.values.iter())
            .find_map(|v| Ownership::parse(v))
            .filter(|o| o.owner == self.names.owner);
        let (region, epoch) = match &published {
            Some(o) => match self.topology.region_by_name(&o.primary_region) {
                Some(region) => (region, o.epoch),
                None => (self.topology.bootstrap_region, o.epoch),
            },
            None => (self.topology.bootstrap_region, 1),
        };
        match analysis::bootstrap(&self.topology, observations, region) {
            Ok(primary) => {
                let record = EpochRecord { epoch, primary };
                let history = info_of(observations, primary).map(|i| i.history());
                if let Err(e) = self.set_epoch(record, history).await {
                    self.state_write_failed(&e);
                    return None;
                }
                self.events.emit(
                    "epoch_adopted",
                    json!({
                        "epoch": epoch,
                        "primary": self.topology.node_name(primary),
                        "region": self.topology.region(region).name,
                        "source": if published.is_some() { "dns ownership record" } else { "config primary_region" },
                    }),
                );
                Some(record)
            }
            Err(problem) => {
                let problem = problem.to_string();
                let mut memory = self.memory.lock().expect("memory lock");
                if memory.bootstrap_problem.as_ref() != Some(&problem) {
                    self.events.emit(
                        "bootstrap_blocked",
                        json!({ "region": self.topology.region(region).name, "reason": problem }),
                    );
                    memory.bootstrap_problem = Some(problem);
                }
                None
            }
        }
    }

    /// Points replicas that follow the wrong node at the node the topology wants. Only replicas:
    /// a node reporting role:master is never demoted here.
    async fn repoint_misdirected(&self, analysis: &Analysis) {
        for finding in &analysis.findings {
            let analysis::Finding::ReplicaMisdirected { node, expected, .. } = finding else {
                continue;
            };
            let endpoint = &self.topology.node(*node).control_endpoint;
            let source = self.topology.replication_endpoint(*expected, *node);
            let mut result = self.engine.replicate_from(endpoint, &source).await;
            if result.is_ok() {
                result = self.engine.persist_role(endpoint).await;
            }
            self.events.emit(
                "replica_repointed",
                json!({
                    "node": self.topology.node_name(*node),
                    "source": source.to_string(),
                    "ok": result.is_ok(),
                    "error": result.err().map(|e| e.to_string()),
                }),
            );
        }
    }

    /// Remembers the writer's offset; on the first pass after a start, lifts a write pause that
    /// a controller which died mid-switchover may have left on the writer.
    async fn first_pass_housekeeping(&self, observations: &[NodeObservation], analysis: &Analysis) {
        let Some(writer) = analysis.active_primary else {
            return;
        };
        let history = info_of(observations, writer).map(|i| i.history());
        let (first, new_history) = {
            let mut memory = self.memory.lock().expect("memory lock");
            let before = match &memory.last_writer {
                Some((node, h)) if *node == writer => Some(h.clone()),
                _ => self.state.get().and_then(|s| s.writer_history),
            };
            let info = info_of(observations, writer);
            // Only forward along the writer's history: a writer that lost its data keeps the
            // old history as the lineage, so that the node still holding it is the one promoted.
            let forward = match (&before, info) {
                (Some(b), Some(i)) => i.continues(b),
                (None, Some(_)) => true,
                _ => false,
            };
            let mut new_history = None;
            if let (true, Some(history)) = (forward, history) {
                if before
                    .as_ref()
                    .is_none_or(|b| b.replication_id != history.replication_id)
                {
                    new_history = Some(history.clone());
                }
                memory.last_writer = Some((writer, history));
            }
            (!std::mem::replace(&mut memory.started, true), new_history)
        };
        // The replication id changes only at promotions and restarts: record it durably then.
        if let Some(history) = new_history {
            self.record_writer_history(history).await;
        }
        if first {
            let _ = self
                .engine
                .unpause(&self.topology.node(writer).control_endpoint)
                .await;
        }
        self.check_sync_settings(observations).await;
    }

    /// Warns, once per node and run, about settings that let replicas copy an empty restarted
    /// writer before the controller can replace it.
    async fn check_sync_settings(&self, observations: &[NodeObservation]) {
        let unchecked: Vec<NodeId> = {
            let memory = self.memory.lock().expect("memory lock");
            observations
                .iter()
                .filter(|o| o.info().is_some() && !memory.settings_checked.contains(&o.node))
                .map(|o| o.node)
                .collect()
        };
        for node in unchecked {
            let endpoint = &self.topology.node(node).control_endpoint;
            let settings = self.engine.sync_settings(endpoint).await;
            // A node that refuses CONFIG (renamed, ACL) is not asked again in this run.
            if settings
                .as_ref()
                .is_err_and(|e| e.kind == valkey_dr_core::observation::FailureKind::Unreachable)
            {
                continue;
            }
            self.memory
                .lock()
                .expect("memory lock")
                .settings_checked
                .insert(node);
            if let Some(why) = settings.ok().and_then(|s| s.defeats_empty_restart_guard()) {
                self.events.emit(
                    "setting_weakens_safety",
                    json!({ "node": self.topology.node_name(node), "warning": why }),
                );
            }
        }
    }

    fn note_changes(&self, observations: &[NodeObservation], analysis: &Analysis) {
        let nodes: Vec<String> = observations
            .iter()
            .map(|o| describe_node(self, o))
            .collect();
        let findings: Vec<String> = analysis
            .findings
            .iter()
            .map(|f| f.describe(&self.topology))
            .collect();
        let mut memory = self.memory.lock().expect("memory lock");
        for (i, now) in nodes.iter().enumerate() {
            let before = memory.nodes.get(i);
            if before != Some(now) {
                self.events.emit(
                    "observation_changed",
                    json!({
                        "node": self.topology.node_name(observations[i].node),
                        "region": self.topology.region_of(observations[i].node).name,
                        "before": before,
                        "now": now,
                    }),
                );
            }
        }
        if memory.findings != findings {
            self.events
                .emit("analysis", json!({ "findings": findings }));
        }
        memory.nodes = nodes;
        memory.findings = findings;
    }

    fn note_conflicts(&self, conflicts: &[(String, String)]) {
        let mut memory = self.memory.lock().expect("memory lock");
        if memory.conflicts != conflicts {
            if !conflicts.is_empty() {
                self.events
                    .emit("dns_conflict", json!({ "conflicts": conflicts }));
            }
            memory.conflicts = conflicts.to_vec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plausible_mark_outranks_the_state() {
        let ours = Some(EpochRecord {
            epoch: 7,
            primary: NodeId(0),
        });
        let mark = |epoch| EpochMark {
            epoch,
            writer: "127.0.1.2:6379".into(),
        };
        #[rustfmt::skip]
        let cases = [
            ("a newer epoch: the state file is behind", mark(8), ours, true),
            ("the same epoch", mark(7), ours, false),
            ("an older epoch", mark(3), ours, false),
            ("a jump of more than a thousand promotions", mark(7 + 1001), ours, false),
            ("u64::MAX, no state: it would leave no room to promote", mark(u64::MAX), None, false),
            ("no state at all: a plausible mark is taken", mark(12), None, true),
        ];
        for (case, mark, ours, believed) in cases {
            assert_eq!(believable_mark(&mark, ours), believed, "{case}");
        }
    }

    #[test]
    fn error_policy_doubles_up_to_a_cap() {
        let s = Duration::from_secs(1);
        let delays: Vec<u64> = (1..=7).map(|f| error_policy(s, f).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(error_policy(s, u32::MAX), Duration::from_secs(30));
    }
}
