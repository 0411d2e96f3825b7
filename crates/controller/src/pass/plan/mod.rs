//! The decisions of one pass as one pure function: [`plan_actions`] turns what the pass saw (a
//! [`Snapshot`]) into a [`Plan`], an ordered list of [`Action`]s that the executor
//! (`pass/execute.rs`) carries out in order. Every rule of the controller's acting half is here,
//! checked in the order of this table (the tests below have a row per line):
//!
//! | situation                                                        | action                         |
//! |------------------------------------------------------------------|--------------------------------|
//! | one controller: a node's epoch mark is newer than the state      | `RecoverEpoch`                 |
//! | etcd: a newer mark names the master that etcd's writer follows (etcd restored from a backup) | `RecoverEpoch` |
//! | etcd: a newer mark names a live master, etcd's writer follows no one | `Withhold`, and nothing else |
//! | no epoch recorded                                                | `AdoptEpoch` / `BootstrapBlocked` |
//! | a promotion intent is recorded                                   | `ResolveIntent`, and no failover or fence until it is settled |
//! | the writer lost its data, every node answered, none holds it     | `AcceptLoss`                   |
//! | the writer lost its data and no failover can happen now          | `HoldLostWriter`               |
//! | a failover is due from a silent writer to another region, and its self-fence is not certain | `Withhold` |
//! | a failover is due                                                | `FailOver` (with the checks it must pass right before acting) |
//! | a master that is not the epoch's writer, the writer serving      | `FenceRogues` (demoted under it) |
//! | a master that is not the epoch's writer, the writer down or lost | `PauseRogues` (every pass)     |
//! | a switchover's old primary whose clients were never closed       | `Release` (and its role persisted) |
//! | a switchover's old primary whose role is not in its config file   | `PersistRole`                  |
//! | a writer serves                                                  | `RememberWriter`, `LiftStalePause` (first pass), `Heartbeat`, `KeepWriteQuorum`, `Repoint` |
//! | the records differ from what the nodes say                       | `ApplyDns`                     |
//!
//! Actions that change the nodes or the state ([`Action::looks_again`]) end the plan when they
//! did something: the pass then looks at the nodes again and plans anew, so DNS is only ever
//! computed from what the nodes say after the last change. A plan is written as if each of them
//! did nothing, which is what the rest of the list is for.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use valkey_dr_core::analysis::{self, Finding, analyze};
use valkey_dr_core::config::FailoverPolicy;
use valkey_dr_core::failover::{self, Decision, WriterState};
use valkey_dr_core::intent::{self, Resolution};
use valkey_dr_core::observation::{EpochMark, History, info_of};
use valkey_dr_core::records::ManagedNames;
use valkey_dr_core::{
    Analysis, Change, EpochRecord, ErrorReply, NodeId, NodeObservation, RecordSet, RegionId,
    Topology, plan as dns_plan, records,
};

use crate::state::{Intent, State};

/// How often the writer's offset is recorded while its replication id stays the same: a writer
/// restarted from a file older than the record is then seen to have gone back, by any controller
/// (a new leader too) and after a restart.
pub const LINEAGE_RECORD_EVERY_MS: u64 = 10_000;

/// How many times one pass looks at the nodes: the first look, then one after each change (an
/// epoch adopted, an intent settled, a failover, a fence). The last look only settles (DNS and
/// upkeep), so a node that keeps refusing to change cannot hold a pass forever.
pub const MAX_LOOKS: u8 = 5;

/// Everything one look of a pass saw, taken before deciding anything.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// 1 for the pass's first look, then one more after each change.
    pub look: u8,
    pub observations: Vec<NodeObservation>,
    /// The durable state as read now (epoch, intent, lineage, block, self-fence, data loss).
    pub state: Option<State>,
    /// The writer and its history as this run last saw it: it moves only forward along the
    /// writer's history, so that a writer back without its data is not taken as the lineage.
    pub remembered_writer: Option<(NodeId, History)>,
    /// The managed records as the DNS backend holds them.
    pub records: Vec<RecordSet>,
    /// Nodes down by failure detection (failed rounds spanning `down_after`).
    pub down: BTreeSet<NodeId>,
    /// How long the epoch's writer has been failing probes, if it is.
    pub writer_failing_for: Option<Duration>,
    /// Wall clock (failover blocks are wall-clock deadlines in the state).
    pub now_ms: u64,
    /// No pass of this run has seen a writer yet.
    pub first_pass: bool,
    /// When this run last recorded the writer's history durably.
    pub lineage_recorded_ms: Option<u64>,
    /// The epoch's writer has answered every write (the heartbeat) with this error reply, for
    /// this long.
    pub writer_refusal: Option<(ErrorReply, Duration)>,
}

impl Snapshot {
    pub fn epoch(&self) -> Option<EpochRecord> {
        self.state.as_ref().map(|s| s.epoch)
    }

    /// The writer's replication history as last seen ([`lineage`]).
    pub fn lineage(&self, epoch: &EpochRecord) -> Option<History> {
        lineage(self.remembered_writer.as_ref(), self.state.as_ref(), epoch)
    }
}

/// The epoch writer's replication history as last seen: this run's memory of it, else the
/// state's record.
pub fn lineage(
    remembered: Option<&(NodeId, History)>,
    state: Option<&State>,
    epoch: &EpochRecord,
) -> Option<History> {
    match remembered {
        Some((node, history)) if *node == epoch.primary => Some(history.clone()),
        _ => state.and_then(|s| s.writer_history.clone()),
    }
}

/// The configured rules a plan follows, and what it needs to name things.
pub struct Rules<'a> {
    pub topology: &'a Topology,
    pub names: &'a ManagedNames,
    pub in_region_failover: bool,
    pub cross_region_failover: FailoverPolicy,
    pub max_data_at_risk_bytes: u64,
    /// The writer's self-fence (`min-replicas-to-write`) lag; 0 = off.
    pub writer_quorum_max_lag_s: u32,
    /// etcd holds the state (the highly available shape): marks on the nodes never outrank it,
    /// and a writer leaves its region only on a majority of the sites' views.
    pub coordinated: bool,
    /// How long a writer that refuses writes for a reason of its own is given before it is
    /// switched away from (`down_after_ms`).
    pub refusing_writer_after: Duration,
}

/// Which unplanned move this is (events, metrics and reports name it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverKind {
    /// To a replica in the writer's region.
    InRegion,
    /// To another region.
    CrossRegion,
    /// An operator's `failover <region> --force`.
    Forced,
}

/// What must still hold right before a failover acts: checked by the executor on fresh reads,
/// because the snapshot is already some milliseconds old.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverChecks {
    /// The writer must not answer a fresh probe (earlier rounds may have timed out while the
    /// controller stalled).
    pub writer_still_silent: bool,
    /// A majority of the sites must see the writer down, and its region's controller must have
    /// let go (the highly available shape, leaving the writer's region).
    pub majority_of_sites: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The nodes carry a newer epoch mark than the state (a reverted, truncated or lost state
    /// file): take the epoch and writer from the mark.
    RecoverEpoch {
        record: EpochRecord,
        mark: EpochMark,
        history: Option<History>,
        recorded_epoch: Option<u64>,
    },
    /// No epoch recorded: adopt the writer found in `region`.
    AdoptEpoch {
        record: EpochRecord,
        region: RegionId,
        history: Option<History>,
        /// The region and epoch came from our ownership record in DNS, not the config.
        from_dns: bool,
    },
    BootstrapBlocked {
        region: RegionId,
        problem: String,
    },
    /// Settle an interrupted promotion ([`valkey_dr_core::intent`]).
    ResolveIntent {
        intent: Intent,
        resolution: Resolution,
        source_answers: bool,
        target_is_master: bool,
    },
    /// Report (once) that the writer no longer continues its history.
    ReportLostWriter {
        writer: NodeId,
        before: History,
    },
    /// Every node answered and none holds the history: record the loss and go on from what the
    /// writer has now.
    AcceptLoss {
        writer: NodeId,
        before: Option<History>,
        now: History,
    },
    /// The writer is back empty as a master and no failover can happen yet: pause it, and make it
    /// follow the node holding the most of its history (if one is in sight).
    HoldLostWriter {
        writer: NodeId,
        holder: Option<NodeId>,
    },
    /// A failover is due but may not happen yet, for this reason.
    Withhold {
        reason: String,
    },
    FailOver {
        from: EpochRecord,
        target: NodeId,
        kind: FailoverKind,
        checks: FailoverChecks,
    },
    /// Demote every master that is not the epoch's writer under its expected source.
    FenceRogues {
        epoch: u64,
        rogues: Vec<(NodeId, NodeId)>,
    },
    /// Pause the writes of masters that are not the epoch's writer while the writer cannot take
    /// them in (down, or back without its data).
    PauseRogues {
        rogues: Vec<NodeId>,
    },
    /// A switchover's old primary whose clients were not closed (the controller died before its
    /// Release step): close them and lift its pause (`close`), or only settle the record when it
    /// is the writer again.
    Release {
        node: NodeId,
        close: bool,
    },
    /// A switchover's old primary whose role is not in its config file yet: persist it
    /// (`rewrite`), or only settle the record when it is the writer again (whose file is never
    /// rewritten).
    PersistRole {
        node: NodeId,
        rewrite: bool,
    },
    /// Remember the writer's history; `durable` when its replication id is new (promotions and
    /// restarts) or the record is older than [`LINEAGE_RECORD_EVERY_MS`], so that the lineage
    /// survives a restart of the controller and a change of leader.
    RememberWriter {
        writer: NodeId,
        history: History,
        durable: bool,
    },
    /// First pass of a run: lift a write pause a controller that died mid-switchover left behind.
    LiftStalePause {
        writer: NodeId,
    },
    /// Warn about sync settings that let replicas copy an empty restarted writer.
    CheckSyncSettings,
    Heartbeat {
        writer: NodeId,
        mark: EpochMark,
    },
    /// Keep the writer's self-fence in step with its replicas.
    KeepWriteQuorum {
        writer: NodeId,
    },
    /// The writer answers but refuses every write for a reason of its own (`-MISCONF`: its disk
    /// cannot take a snapshot): a planned switchover to its best replica in its region, which
    /// holds the same data and loses nothing.
    SwitchAway {
        target: NodeId,
        reply: ErrorReply,
    },
    /// A replica follows the wrong node: point it at `source`.
    Repoint {
        node: NodeId,
        source: NodeId,
    },
    ApplyDns {
        changes: Vec<Change>,
    },
}

impl Action {
    /// Whether the pass looks at the nodes again (and plans anew) after this action changed
    /// something.
    pub fn looks_again(&self) -> bool {
        matches!(
            self,
            Action::RecoverEpoch { .. }
                | Action::AdoptEpoch { .. }
                | Action::ResolveIntent { .. }
                | Action::AcceptLoss { .. }
                | Action::HoldLostWriter { .. }
                | Action::FailOver { .. }
                | Action::FenceRogues { .. }
                | Action::SwitchAway { .. }
        )
    }
}

/// One look's decisions, and what they were made from (for reports and the pass's outcome).
#[derive(Debug, Clone)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// The epoch in force while planning (before any action of this plan).
    pub epoch: Option<EpochRecord>,
    pub analysis: Analysis,
    /// The failover decision, when there is a writer to decide about.
    pub decision: Option<Decision>,
    /// Names we want to change but may not (not ours).
    pub conflicts: Vec<(String, String)>,
}

/// Decides everything one look of a pass does. Pure.
pub fn plan_actions(snapshot: &Snapshot, rules: &Rules) -> Plan {
    let topology = rules.topology;
    let observations = &snapshot.observations;
    let epoch = snapshot.epoch();
    let mut actions = Vec::new();
    let mut decision = None;
    // An interrupted promotion is settled before anything else acts on the nodes; while it cannot
    // be, nothing else does (a failover now would promote in the same epoch).
    let intent = snapshot.state.as_ref().and_then(|s| s.intent.clone());
    let settled = intent.is_none();
    if snapshot.look < MAX_LOOKS {
        // A newer mark than the state puts the epoch in doubt: nothing else is planned from it
        // (should the recovery's write fail, the rest of the plan would act on the old epoch).
        if let Some(newer) = newer_mark(snapshot, topology, epoch, rules.coordinated) {
            let action = match newer {
                NewerMark::Recover(recover) => recover,
                NewerMark::Hold(reason) => Action::Withhold { reason },
            };
            return Plan {
                actions: vec![action],
                epoch,
                analysis: analyze(topology, observations, epoch.as_ref()),
                decision: None,
                conflicts: Vec::new(),
            };
        }
        if epoch.is_none() {
            actions.push(adopt_epoch(snapshot, rules));
        }
        if let Some(intent) = intent {
            actions.push(resolve_intent(topology, observations, intent));
        }
        if let Some(e) = epoch.filter(|_| settled) {
            let d = failover_actions(snapshot, rules, e, &mut actions);
            decision = Some(d);
        }
    }
    let analysis = analyze(topology, observations, epoch.as_ref());
    if snapshot.look < MAX_LOOKS
        && settled
        && let Some(e) = epoch
    {
        fence_rogues(snapshot, &analysis, e, &mut actions);
    }
    if let (Some(writer), Some(e)) = (analysis.active_primary, epoch) {
        upkeep(snapshot, rules.topology, &analysis, writer, e, &mut actions);
    }
    let desired = records::desired(rules.names, topology, &analysis, epoch.as_ref());
    let dns = dns_plan::calculate(
        &snapshot.records,
        &desired,
        &rules.names.ownership,
        &rules.names.owner,
    );
    if !dns.changes.is_empty() {
        actions.push(Action::ApplyDns {
            changes: dns.changes,
        });
    }
    // After the name moved: the old primary's clients reconnect to the new writer, and its
    // role goes to its config file.
    if let (true, Some(e), Some(state)) = (settled, epoch, snapshot.state.as_ref()) {
        let demoted = |node| info_of(observations, node).is_some_and(|i| !i.is_primary());
        if let Some(node) = state.release_pending {
            if node == e.primary {
                actions.push(Action::Release { node, close: false });
            } else if demoted(node) {
                actions.push(Action::Release { node, close: true });
            }
        }
        if let Some(node) = state
            .persist_pending
            .filter(|n| state.release_pending != Some(*n))
        {
            if node == e.primary {
                actions.push(Action::PersistRole {
                    node,
                    rewrite: false,
                });
            } else if demoted(node) {
                actions.push(Action::PersistRole {
                    node,
                    rewrite: true,
                });
            }
        }
    }
    Plan {
        actions,
        epoch,
        analysis,
        decision,
        conflicts: dns.conflicts,
    }
}

/// Masters that are not the epoch's writer take no write. While the writer serves on its history
/// they are demoted under it; while it is down or lost they are only paused (re-paused every pass):
/// a rogue demoted under a writer back without its data would copy the emptiness.
fn fence_rogues(
    snapshot: &Snapshot,
    analysis: &Analysis,
    epoch: EpochRecord,
    actions: &mut Vec<Action>,
) {
    let rogues: Vec<NodeId> = analysis
        .findings
        .iter()
        .filter_map(|f| match f {
            Finding::RogueMaster { node } => Some(*node),
            _ => None,
        })
        .collect();
    if rogues.is_empty() {
        return;
    }
    let lineage = snapshot.lineage(&epoch);
    let serving = analysis.active_primary.is_some()
        && failover::writer_state(&snapshot.observations, epoch.primary, lineage.as_ref())
            == WriterState::Serving;
    let under_writer: Vec<(NodeId, NodeId)> = rogues
        .iter()
        .filter_map(|node| {
            analysis
                .sources
                .iter()
                .find(|(n, _)| n == node)
                .map(|(_, source)| (*node, *source))
        })
        .collect();
    if serving && under_writer.len() == rogues.len() {
        actions.push(Action::FenceRogues {
            epoch: epoch.epoch,
            rogues: under_writer,
        });
    } else {
        actions.push(Action::PauseRogues { rogues });
    }
}

/// Whether an epoch mark found on a node may replace `ours`: newer, within [`MAX_MARK_JUMP`] of it,
/// and below [`valkey_dr_core::analysis::MAX_EPOCH`].
pub fn believable_mark(mark: &EpochMark, ours: Option<EpochRecord>) -> bool {
    mark.epoch <= valkey_dr_core::analysis::MAX_EPOCH
        && ours.is_none_or(|e| mark.epoch > e.epoch && mark.epoch - e.epoch <= MAX_MARK_JUMP)
}

/// A state file behind the nodes by more promotions than this is not believed to be merely old:
/// the mark is someone else's (another deployment's data, or a client's write).
const MAX_MARK_JUMP: u64 = 1000;

/// What a newer epoch mark on the nodes than the state's asks for.
enum NewerMark {
    Recover(Action),
    /// The nodes and etcd disagree and neither is clearly behind: nothing acts on the nodes until
    /// an operator says which is right (`adopt`).
    Hold(String),
}

/// One controller: a believable mark whose writer answers as a master is newer than the state
/// file, which was reverted, truncated or lost: take it. etcd (the highly available shape) holds
/// the authority and a mark is data any client with write access could forge, so it outranks
/// etcd only when the nodes themselves say etcd is behind — etcd's writer follows the mark's
/// writer, as it does after etcd was restored from a backup older than the last promotion.
/// Anything else is held for an operator: failing over or fencing from an epoch the nodes
/// contradict would demote the real writer.
fn newer_mark(
    snapshot: &Snapshot,
    topology: &Topology,
    ours: Option<EpochRecord>,
    coordinated: bool,
) -> Option<NewerMark> {
    let observations = &snapshot.observations;
    let (mark, writer) = observations
        .iter()
        .filter_map(|o| o.epoch_mark.as_ref())
        .filter(|m| believable_mark(m, ours))
        .filter_map(|m| {
            let node = topology
                .nodes
                .iter()
                .find(|n| n.endpoint.to_string() == m.writer)?;
            // The writer a mark names must answer as a master: any client can write a mark.
            info_of(observations, node.id)
                .is_some_and(|i| i.is_primary())
                .then_some((m, node.id))
        })
        .max_by_key(|(m, _)| m.epoch)?;
    if coordinated {
        let recorded = ours?;
        if recorded.primary == writer {
            return None;
        }
        if !follows(topology, observations, recorded.primary, writer) {
            return Some(NewerMark::Hold(format!(
                "{} answers as the writer of epoch {}, newer than etcd's epoch {} (writer {}), \
                 which does not follow it: was etcd restored from a backup? `valkey-dr adopt \
                 <region>` names the writer",
                topology.node_name(writer),
                mark.epoch,
                recorded.epoch,
                topology.node_name(recorded.primary),
            )));
        }
    }
    Some(NewerMark::Recover(Action::RecoverEpoch {
        record: EpochRecord {
            epoch: mark.epoch,
            primary: writer,
        },
        mark: mark.clone(),
        history: info_of(observations, writer).map(|i| i.history()),
        recorded_epoch: ours.map(|e| e.epoch),
    }))
}

/// Whether `node` replicates from `root`, directly or through other replicas.
fn follows(
    topology: &Topology,
    observations: &[NodeObservation],
    node: NodeId,
    root: NodeId,
) -> bool {
    let mut at = node;
    for _ in 0..topology.nodes.len() {
        let Some(source) = info_of(observations, at)
            .and_then(|i| i.master())
            .and_then(|m| topology.node_by_any_address(m))
        else {
            return false;
        };
        if source == root {
            return true;
        }
        at = source;
    }
    false
}

/// The region and epoch of our ownership record in DNS if there is one, else the configured
/// primary region at epoch 1; the writer is the one master there.
fn adopt_epoch(snapshot: &Snapshot, rules: &Rules) -> Action {
    let topology = rules.topology;
    let published = records::our_ownership(&snapshot.records, rules.names);
    let (region, epoch) = match &published {
        Some(o) => (
            topology
                .region_by_name(&o.primary_region)
                .unwrap_or(topology.bootstrap_region),
            o.epoch,
        ),
        None => (topology.bootstrap_region, 1),
    };
    match analysis::bootstrap(topology, &snapshot.observations, region) {
        Ok(primary) => Action::AdoptEpoch {
            record: EpochRecord { epoch, primary },
            region,
            history: info_of(&snapshot.observations, primary).map(|i| i.history()),
            from_dns: published.is_some(),
        },
        Err(problem) => Action::BootstrapBlocked {
            region,
            problem: problem.to_string(),
        },
    }
}

fn resolve_intent(topology: &Topology, observations: &[NodeObservation], intent: Intent) -> Action {
    let pending = intent::Pending {
        source: intent.source,
        target: intent.target,
        required: History {
            replication_id: intent.replication_id.clone(),
            offset: intent.required_offset,
            parent: None,
        },
    };
    let resolution = intent::resolve(&pending, topology, observations);
    Action::ResolveIntent {
        source_answers: info_of(observations, intent.source).is_some(),
        target_is_master: info_of(observations, intent.target).is_some_and(|i| i.is_primary()),
        intent,
        resolution,
    }
}

/// What a pass does while a writer serves: remember its history, heartbeat, self-fence, repoint.
fn upkeep(
    snapshot: &Snapshot,
    topology: &Topology,
    analysis: &Analysis,
    writer: NodeId,
    epoch: EpochRecord,
    actions: &mut Vec<Action>,
) {
    let observations = &snapshot.observations;
    let before = snapshot.lineage(&epoch);
    if let Some(info) = info_of(observations, writer) {
        // Only forward along the writer's history: a writer that lost its data keeps the old
        // history as the lineage, so that the node still holding it is the one promoted.
        let forward = before.as_ref().is_none_or(|b| info.continues(b));
        if forward {
            let history = info.history();
            let recorded = snapshot
                .state
                .as_ref()
                .and_then(|s| s.writer_history.as_ref());
            let new_id = before
                .as_ref()
                .is_none_or(|b| b.replication_id != history.replication_id);
            let due = recorded != Some(&history)
                && snapshot
                    .lineage_recorded_ms
                    .is_none_or(|at| snapshot.now_ms >= at + LINEAGE_RECORD_EVERY_MS);
            actions.push(Action::RememberWriter {
                writer,
                durable: new_id || due,
                history,
            });
        }
    }
    if snapshot.first_pass {
        actions.push(Action::LiftStalePause { writer });
    }
    actions.push(Action::CheckSyncSettings);
    actions.push(Action::Heartbeat {
        writer,
        mark: EpochMark {
            epoch: epoch.epoch,
            writer: topology.node_name(writer),
        },
    });
    actions.push(Action::KeepWriteQuorum { writer });
    for finding in &analysis.findings {
        if let Finding::ReplicaMisdirected { node, expected, .. } = finding {
            actions.push(Action::Repoint {
                node: *node,
                source: *expected,
            });
        }
    }
}

mod writer;

use writer::failover_actions;
pub use writer::self_fence_withheld;

#[cfg(test)]
mod tests;
