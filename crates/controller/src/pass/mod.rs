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

/// What this run of the controller carries from one pass to the next. It lives inside the pass
/// lock (`Controller::pass_lock`): only a pass or a promotion, which hold the lock, read or change
/// it, and a reader elsewhere sees only what a pass published ([`LastPass`]).
#[derive(Default)]
pub(crate) struct Carried {
    /// Failure detection: which nodes fail, since when.
    pub health: crate::health::Health,
    /// When this run last applied a stall of its own clock to `health`.
    pub stall_applied: Option<std::time::Instant>,
    /// The writer and its replication history when last seen (only ever moved forward along its
    /// history): the basis of "data at risk" and of noticing a writer that lost its data.
    pub last_writer: Option<(NodeId, History)>,
    /// A pass of this run has seen a writer (and lifted a pause left by an earlier run).
    pub started: bool,
    /// When the writer's history was last recorded durably by this run.
    pub lineage_recorded_ms: Option<u64>,
    /// A failover whose DNS change is not committed yet.
    pub pending_failover: Option<PendingFailover>,
    /// Since when a cross-region failover waits for the writer's region to let go of its lease.
    pub region_release_since: Option<std::time::Instant>,
    /// The write quorum set on the writer (its self-fence).
    pub write_quorum: Option<crate::self_fence::AppliedQuorum>,
    /// A higher write quorum wanted since then, not set yet.
    pub raise_seen: Option<(valkey_dr_core::self_fence::WriteQuorum, std::time::Instant)>,
    /// Nodes whose sync settings were checked in this run.
    pub settings_checked: std::collections::BTreeSet<NodeId>,
    /// The last look of the last pass: a pass that asked to be called again soon looks again
    /// from it (nodes that answered are asked again; silent ones only briefly).
    pub last_look: Option<plan::Snapshot>,
    /// The epoch's writer answering writes with an error reply of its own, since when.
    pub writer_refusal: Option<Refusal>,
    /// When this controller, leading, saw each site's view change (the highly available shape).
    pub view_ages: crate::ha::ViewAges,
    /// What was last reported, to report each change once.
    pub reported: Reported,
}

/// A writer that answers the heartbeat write with an error reply that refuses every write
/// ([`valkey_dr_core::ErrorReply::refuses_writes`]).
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub writer: NodeId,
    pub reply: valkey_dr_core::ErrorReply,
    pub since: std::time::Instant,
    pub error: String,
}

/// The last report of each kind, so that a pass reports only what changed.
#[derive(Default)]
pub(crate) struct Reported {
    nodes: Vec<String>,
    findings: Vec<String>,
    conflicts: Vec<(String, String)>,
    pub bootstrap_problem: Option<String>,
    /// The last failover situation reported.
    pub decision: String,
    /// The last reason a cross-region failover was withheld by the sites' views.
    pub withheld: String,
    /// The replication id of the lost history last reported.
    pub lost_history: Option<String>,
    /// Rogue masters paused while the writer could not take them in.
    pub paused_rogues: std::collections::BTreeSet<NodeId>,
    /// The last copy of the state from etcd failed (a follower).
    pub etcd_failing: bool,
}

/// What the last pass saw, published by `Controller::reconcile` alone: `status`, `/api/status`,
/// `/metrics` and `/readyz` read it instead of probing every node per request.
#[derive(Default, Clone)]
pub struct LastPass {
    /// When the last successful pass started.
    pub good_at: Option<std::time::Instant>,
    /// What it saw of the nodes, and when.
    pub seen: Option<(std::time::Instant, Vec<NodeObservation>)>,
    /// What a failover waits for (the reason it is withheld, the decision reported), if anything.
    pub waiting: Vec<String>,
    /// A node was failing probes at its end (the loop then probes faster).
    pub nodes_failing: bool,
    /// The writer's self-fence as last set.
    pub self_fence: Option<crate::status::SelfFenceStatus>,
    /// The writer refuses writes: why, and for how long (for `status`).
    pub writer_refusal: Option<String>,
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
    fn complete_failover(&self, carried: &mut Carried, epoch: Option<EpochRecord>) {
        let done = carried
            .pending_failover
            .take_if(|p| epoch.is_some_and(|e| e.epoch == p.epoch));
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
        self.reconcile(false, &[]).await
    }

    /// A pass; `quick` when the last pass asked to be called again soon
    /// ([`PassOutcome::retry_after`]); `failed_probes` are the writer watch's probes that failed
    /// since the last pass. Publishes what it saw ([`LastPass`]).
    pub(crate) async fn reconcile(
        &self,
        quick: bool,
        failed_probes: &[(NodeId, std::time::Instant)],
    ) -> Result<PassOutcome, PassError> {
        let mut carried = self.pass_lock.lock().await;
        let started = std::time::Instant::now();
        self.apply_stall(&mut carried);
        for (node, sent) in failed_probes {
            carried.health.note_failure(*node, *sent);
        }
        let outcome = self.reconcile_guarded(&mut carried, quick).await;
        self.metrics.pass_finished(started.elapsed());
        let good_at = outcome.as_ref().ok().map(|_| started);
        self.publish_pass(&carried, None, good_at);
        outcome
    }

    /// Publishes what a pass saw ([`LastPass`]): the one writer of `Controller::last_pass`,
    /// called as each pass (or a promotion's pass) ends.
    pub(crate) fn publish_pass(
        &self,
        carried: &Carried,
        seen: Option<&[NodeObservation]>,
        good_at: Option<std::time::Instant>,
    ) {
        let reported = &carried.reported;
        let waiting: Vec<String> = [&reported.withheld, &reported.decision]
            .into_iter()
            .filter(|w| !w.is_empty())
            .cloned()
            .collect();
        let self_fence = carried
            .write_quorum
            .as_ref()
            .map(|applied| self.self_fence_status(applied));
        let nodes_failing = carried.health.any_failing();
        let writer_refusal = carried.writer_refusal.as_ref().map(|r| {
            format!(
                "the writer {} refuses every write for {} s: {}",
                self.topology.node_name(r.writer),
                r.since.elapsed().as_secs(),
                r.error
            )
        });
        self.last_pass.send_modify(|last| {
            last.writer_refusal = writer_refusal;
            last.waiting = waiting;
            last.nodes_failing = nodes_failing;
            last.self_fence = self_fence;
            if let Some(seen) = seen {
                last.seen = Some((std::time::Instant::now(), seen.to_vec()));
            }
            if good_at.is_some() {
                last.good_at = good_at;
            }
        });
    }

    /// How long ago the last successful pass started (`/readyz`).
    pub fn last_good_pass(&self) -> Option<std::time::Duration> {
        self.last_pass.borrow().good_at.map(|at| at.elapsed())
    }

    async fn reconcile_guarded(
        &self,
        carried: &mut Carried,
        quick: bool,
    ) -> Result<PassOutcome, PassError> {
        // The zone follows etcd on its own (`follow_records`); a pass only decides who acts.
        if let Some(ha) = self.ha()
            && !ha.leader.is_leader()
        {
            return self.follow_once(carried, ha).await;
        }
        let outcome = self.run_pass(carried, quick).await?;
        if let Some(ha) = self.ha() {
            self.publish_view(ha, &outcome.observations);
        }
        Ok(outcome)
    }

    fn note_changes(
        &self,
        reported: &mut Reported,
        observations: &[NodeObservation],
        analysis: &Analysis,
    ) {
        let nodes: Vec<String> = observations
            .iter()
            .map(|o| describe_node(self, o))
            .collect();
        let findings: Vec<String> = analysis
            .findings
            .iter()
            .map(|f| f.describe(&self.topology))
            .collect();
        for (i, now) in nodes.iter().enumerate() {
            let before = reported.nodes.get(i);
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
        if reported.findings != findings {
            self.events.emit(
                crate::events::EventKind::Analysis,
                json!({ "findings": findings }),
            );
        }
        reported.nodes = nodes;
        reported.findings = findings;
    }

    fn note_conflicts(&self, reported: &mut Reported, conflicts: &[(String, String)]) {
        if reported.conflicts != conflicts {
            if !conflicts.is_empty() {
                self.events.emit(
                    crate::events::EventKind::DnsConflict,
                    json!({ "conflicts": conflicts }),
                );
            }
            reported.conflicts = conflicts.to_vec();
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
