//! The plan's decisions about the writer itself: fail over from a writer that is down or lost,
//! switch away from one that refuses every write, or hold it.

use valkey_dr_core::failover::{self, Decision, Policy, WriterState};
use valkey_dr_core::observation::{FailureKind, info_of};
use valkey_dr_core::self_fence::WriteQuorum;
use valkey_dr_core::{EpochRecord, ErrorReply, NodeId, Role};

use super::{Action, FailoverChecks, FailoverKind, Rules, Snapshot};

pub(super) fn failover_actions(
    snapshot: &Snapshot,
    rules: &Rules,
    epoch: EpochRecord,
    actions: &mut Vec<Action>,
) -> Decision {
    let observations = &snapshot.observations;
    let writer = epoch.primary;
    let lineage = snapshot.lineage(&epoch);
    let writer_state = failover::writer_state(observations, writer, lineage.as_ref());
    if writer_state == WriterState::Lost
        && let (Some(before), Some(_)) = (&lineage, info_of(observations, writer))
    {
        actions.push(Action::ReportLostWriter {
            writer,
            before: before.clone(),
        });
    }
    let policy = Policy {
        in_region: rules.in_region_failover,
        cross_region: rules.cross_region_failover,
        blocked: snapshot
            .state
            .as_ref()
            .and_then(|s| s.failovers_blocked_until_ms)
            .is_some_and(|until| snapshot.now_ms < until),
        max_data_at_risk_bytes: rules.max_data_at_risk_bytes,
    };
    let decision = failover::decide(
        rules.topology,
        observations,
        &epoch,
        &snapshot.down,
        lineage.as_ref(),
        &policy,
    );
    let silent = writer_state == WriterState::Unreachable;
    // Nothing serves at its address: its process is not running, so it takes no writes now.
    let gone = observations
        .iter()
        .find(|o| o.node == writer)
        .and_then(|o| o.failure())
        == Some(FailureKind::Gone);
    if decision == Decision::None
        && writer_state == WriterState::Serving
        && !policy.blocked
        && let Some(switch) = switch_away(snapshot, rules, writer)
    {
        actions.push(switch);
    }
    match decision {
        Decision::InRegion { target } | Decision::CrossRegion { target } => {
            let kind = match decision {
                Decision::InRegion { .. } => FailoverKind::InRegion,
                _ => FailoverKind::CrossRegion,
            };
            let leaves_silent_region = kind == FailoverKind::CrossRegion && silent;
            // A silent writer may be alive behind a cut, still acknowledging the writes of
            // clients that reach it: it is replaced only once it surely refuses writes itself
            // (its self-fence). Across regions whoever is alive in its region, and even when its
            // process looks gone (a cut seen through a rejecting firewall looks the same). In its
            // region only when it is silent, not gone, and its self-fence is armed: with the
            // fence disarmed (no healthy replica outside the region) nothing would ever make the
            // wait end, and a region's own failover stays automatic.
            let withheld = if leaves_silent_region {
                self_fence_withheld(snapshot, rules, writer)
            } else if kind == FailoverKind::InRegion && silent && !gone {
                self_fence_pending(snapshot, rules, writer)
            } else {
                None
            };
            match withheld {
                Some(reason) => actions.push(Action::Withhold { reason }),
                None => actions.push(Action::FailOver {
                    from: epoch,
                    target,
                    kind,
                    checks: FailoverChecks {
                        writer_still_silent: silent,
                        majority_of_sites: rules.coordinated && leaves_silent_region,
                    },
                }),
            }
        }
        Decision::HistoryLost => {
            if let Some(now) = info_of(observations, writer) {
                actions.push(Action::AcceptLoss {
                    writer,
                    before: lineage,
                    now: now.history(),
                });
            }
        }
        // No failover now (waiting for a node, an operator, or a block): a writer back empty
        // must neither take writes nor feed its emptiness to its replicas.
        _ if writer_state == WriterState::Lost
            && info_of(observations, writer).is_some_and(|i| i.is_primary()) =>
        {
            actions.push(Action::HoldLostWriter {
                writer,
                holder: lineage
                    .as_ref()
                    .and_then(|l| failover::best_holder(observations, writer, l)),
            });
        }
        _ => {}
    }
    decision
}

/// A writer that serves but has refused every write because of its own disk (`-MISCONF`) for
/// [`Rules::refusing_writer_after`] is switched over to the best replica of its region that
/// follows it directly: the data is intact, only this node cannot take writes. Not for `-OOM`,
/// which is only reported: a replica holds as much data and would refuse the same writes.
fn switch_away(snapshot: &Snapshot, rules: &Rules, writer: NodeId) -> Option<Action> {
    let (reply, refused_for) = snapshot.writer_refusal?;
    if reply != ErrorReply::Misconf
        || refused_for < rules.refusing_writer_after
        || !rules.in_region_failover
    {
        return None;
    }
    let topology = rules.topology;
    let region = topology.node(writer).region;
    let writer_addresses =
        |master: &valkey_dr_core::Endpoint| topology.node_by_any_address(master) == Some(writer);
    snapshot
        .observations
        .iter()
        .filter(|o| o.node != writer && topology.node(o.node).region == region)
        .filter_map(|o| {
            let info = o.info()?;
            let follows = matches!(&info.role, Role::Replica { master, link_up: true, sync_in_progress: false } if writer_addresses(master));
            follows.then_some((o.node, info.offset))
        })
        .max_by_key(|(node, offset)| (*offset, std::cmp::Reverse(*node)))
        .map(|(target, _)| Action::SwitchAway { target, reply })
}

/// Why an unreachable writer may not be replaced from another region yet, if it may not: its
/// self-fence was not armed when last seen (an operator decides), or has not surely taken hold.
/// `None` when the self-fence is off in the config: then nothing is known about the writer, and
/// the highly available shape's region guard is the only fence.
pub fn self_fence_withheld(snapshot: &Snapshot, rules: &Rules, writer: NodeId) -> Option<String> {
    if rules.writer_quorum_max_lag_s == 0 {
        return None;
    }
    if armed_quorum(snapshot, writer).is_none() {
        let name = rules.topology.node_name(writer);
        return Some(format!(
            "the writer {name} cannot be reached and is not known to refuse writes: its self-fence (min-replicas-to-write) was not armed when last seen (no healthy replica outside its region); if it is really gone, run `valkey-dr failover <region> --force`"
        ));
    }
    self_fence_pending(snapshot, rules, writer)
}

/// The writer's self-fence as the state records it (this controller's own setting, or the last
/// leader's), if it was armed.
fn armed_quorum(snapshot: &Snapshot, writer: NodeId) -> Option<WriteQuorum> {
    snapshot
        .state
        .as_ref()
        .filter(|s| s.epoch.primary == writer)
        .and_then(|s| s.writer_quorum)
        .filter(|q| q.armed())
}

/// Why a silent writer whose self-fence was armed may not be replaced yet: the fence has not
/// surely taken hold. `None` once it has, or when no armed fence is known.
fn self_fence_pending(snapshot: &Snapshot, rules: &Rules, writer: NodeId) -> Option<String> {
    if rules.writer_quorum_max_lag_s == 0 {
        return None;
    }
    let quorum = armed_quorum(snapshot, writer)?;
    let name = rules.topology.node_name(writer);
    let certain = quorum.certain_after();
    (snapshot.writer_failing_for.unwrap_or_default() < certain).then(|| {
        format!(
            "waiting until the unreachable writer {name} surely refuses writes: its self-fence takes hold {} s after its last contact",
            certain.as_secs()
        )
    })
}
