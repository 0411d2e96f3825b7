//! One reconcile pass: look at everything once ([`plan::Snapshot`]), decide in one pure function
//! ([`plan::plan_actions`]), act in one place (`execute.rs`), look again after a change, and end
//! with the delay before the next pass. Plus the error policy and the reports of what changed.
//!
//! To change a failover rule, edit [`plan::plan_actions`] (or the pure functions of
//! `valkey_dr_core::failover` it calls) and its table of cases.

mod actions;
mod execute;
mod look;
pub mod plan;

use std::time::Duration;

use serde_json::json;
use valkey_dr_core::observation::History;
use valkey_dr_core::{Analysis, EpochRecord, NodeId, NodeObservation};
use valkey_dr_dns::DnsError;

use crate::Controller;

/// What the previous pass saw, to emit events only for changes.
#[derive(Default)]
pub struct Memory {
    nodes: Vec<String>,
    findings: Vec<String>,
    conflicts: Vec<(String, String)>,
    pub(super) bootstrap_problem: Option<String>,
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
    pub(super) settings_checked: std::collections::BTreeSet<NodeId>,
    /// The write quorum set on the writer (its self-fence).
    pub(crate) write_quorum: Option<crate::self_fence::AppliedQuorum>,
    /// A higher write quorum wanted since then, not set yet.
    pub(crate) raise_seen: Option<(valkey_dr_core::self_fence::WriteQuorum, std::time::Instant)>,
    pub(super) started: bool,
    /// Since when a cross-region failover waits for the writer's region to let go of its lease.
    pub(crate) region_release_since: Option<std::time::Instant>,
    /// The last look of the last pass: a pass that asked to be called again soon looks again
    /// from it (nodes that answered are asked again; silent ones only briefly).
    pub(super) last_look: Option<plan::Snapshot>,
    /// What the last successful pass (leading or following) saw of the nodes, and when: what
    /// `status`, `/api/status` and `/metrics` show, without probing every node per request.
    pub(crate) last_seen: Option<(std::time::Instant, Vec<NodeObservation>)>,
    /// When the writer's history was last recorded durably by this run.
    pub(super) lineage_recorded_ms: Option<u64>,
    /// Rogue masters paused while the writer could not take them in (reported once each).
    pub(super) paused_rogues: std::collections::BTreeSet<NodeId>,
}

/// A failover between its promotion and the pass that commits DNS for its epoch.
#[derive(Debug, Clone)]
pub(crate) struct PendingFailover {
    pub kind: plan::FailoverKind,
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
    /// The pass waits for something that time removes (a region letting go of its lease) and
    /// asks to be called again this soon, instead of holding the topology lock while it waits.
    pub retry_after: Option<Duration>,
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

/// How long to wait after `failures` failed passes in a row: doubling, capped at 30 s.
pub fn error_policy(interval: Duration, failures: u32) -> Duration {
    valkey_dr_core::Backoff::after(interval, Duration::from_secs(30), failures)
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
                crate::events::EventKind::FailoverCompleted,
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
        self.reconcile(false).await
    }

    /// A pass; `quick` when the last pass asked to be called again soon
    /// ([`PassOutcome::retry_after`]).
    pub(crate) async fn reconcile(&self, quick: bool) -> Result<PassOutcome, PassError> {
        let _guard = self.topology_lock.lock().await;
        let started = std::time::Instant::now();
        let outcome = self.reconcile_guarded(quick).await;
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

    async fn reconcile_guarded(&self, quick: bool) -> Result<PassOutcome, PassError> {
        // The zone follows etcd on its own (`follow_records`); a pass only decides who acts.
        if let Some(ha) = self.ha()
            && !ha.leader.is_leader()
        {
            return self.follow_once(ha).await;
        }
        let outcome = self.run_pass(quick).await?;
        if let Some(ha) = self.ha() {
            self.publish_view(ha, &outcome.observations);
        }
        Ok(outcome)
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
                    crate::events::EventKind::ObservationChanged,
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
            self.events.emit(
                crate::events::EventKind::Analysis,
                json!({ "findings": findings }),
            );
        }
        memory.nodes = nodes;
        memory.findings = findings;
    }

    fn note_conflicts(&self, conflicts: &[(String, String)]) {
        let mut memory = self.memory.lock().expect("memory lock");
        if memory.conflicts != conflicts {
            if !conflicts.is_empty() {
                self.events.emit(
                    crate::events::EventKind::DnsConflict,
                    json!({ "conflicts": conflicts }),
                );
            }
            memory.conflicts = conflicts.to_vec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_policy_doubles_up_to_a_cap() {
        let s = Duration::from_secs(1);
        let delays: Vec<u64> = (1..=7).map(|f| error_policy(s, f).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(error_policy(s, u32::MAX), Duration::from_secs(30));
    }
}
