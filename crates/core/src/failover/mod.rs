//! `decide`: whether and where to fail over, from one round of observations, the set of nodes
//! that have been down for at least `down_after`, and the writer's replication history as last
//! seen. Pure; the controller measures time and executes the decision.
//!
//! A candidate must be on the writer's history (same replication id, so it synced from that
//! writer) and not in a full resync; the most advanced one wins, and region preference only breaks
//! ties (or, with cross-region failover manual, picks the region's own replica when that gives up
//! no more than `max_data_at_risk_bytes`).
//!
//! | writer                                  | best candidate                      | decision                              |
//! |-----------------------------------------|-------------------------------------|---------------------------------------|
//! | up, on its history                      | —                                   | none                                  |
//! | down (or back without its data: *lost*) | in its region, ≥ every other        | in-region failover                    |
//! | down or lost                            | in another region, ahead, `auto`    | cross-region failover                 |
//! | down or lost                            | in another region, ahead, `manual`  | in-region within the bound, else wait |
//! | down or lost                            | more than the bound behind the writer | wait for an operator                |
//! | a replica still holding the history     | itself, if the most advanced        | promote it again (new epoch)          |
//! | down, failovers blocked                 | in its region                       | in-region failover: the block only stops moves across regions |
//! | down, failovers blocked                 | in another region, a local one within the bound behind it | in-region failover to the local one |
//! | down, failovers blocked                 | in another region only              | blocked, report (a *lost* writer is replaced even then) |
//! | down for us, a replica still hears it   | —                                   | none: a one-sided view (`WriterSeenAlive`) |
//! | down or lost, in-region failover off    | in its region only                  | wait for an operator                  |
//! | lost                                    | none, and some node did not answer or is mid-sync on the history | no candidate: wait (never declare the loss on silence) |
//! | lost                                    | none, every configured node answered, none holds the history | the history is lost (`HistoryLost`) |

use crate::observation::info_of;
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::analysis::EpochRecord;
use crate::config::FailoverPolicy;
use crate::observation::{History, NodeObservation, Role};
use crate::topology::{NodeId, RegionId, Topology};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    None,
    InRegion {
        target: NodeId,
    },
    CrossRegion {
        target: NodeId,
    },
    /// Nothing may happen automatically: report and wait for an operator.
    WaitForOperator {
        reason: WaitReason,
        suggested: Option<NodeId>,
    },
    /// A failover would be due, but an earlier one blocks automatic failovers until `ack`.
    Blocked {
        would: Box<Decision>,
    },
    /// The writer is down or lost and no node holding its history can take over now. Nothing is
    /// concluded: a node that did not answer, or is mid-sync, may still hold the history.
    NoCandidate,
    /// The writer lost its data and every configured node answered without holding its history:
    /// the loss has happened, and only now may the writer's current data become the history.
    HistoryLost,
    /// The writer does not answer the controller, but `witness` still replicates from it over a
    /// live link: the controller's view is one-sided (a partition only it sees). No failover.
    WriterSeenAlive {
        witness: NodeId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum WaitReason {
    /// The best candidate is in another region and cross-region failover is manual.
    CrossRegionManual { region: RegionId },
    /// The best candidate is further behind the writer's last known offset than allowed.
    DataAtRisk { bytes: u64 },
    /// The only candidates are in the writer's region, and in-region failover is off.
    InRegionOff { region: RegionId },
}

pub struct Policy {
    pub in_region: bool,
    pub cross_region: FailoverPolicy,
    /// True while an earlier automatic failover blocks new ones.
    pub blocked: bool,
    /// An unplanned failover that gives up more than this waits for an operator.
    pub max_data_at_risk_bytes: u64,
}

/// Nodes that may take over, most advanced first (ties: the earlier node in the configuration):
/// reachable, not `excluded`, replicas on `lineage`'s history, not in a full resync.
pub fn candidates(
    topology: &Topology,
    observations: &[NodeObservation],
    excluded: &BTreeSet<NodeId>,
    lineage: &History,
    region: impl Fn(RegionId) -> bool,
) -> Vec<(u64, NodeId)> {
    let mut ranked: Vec<(u64, NodeId)> = observations
        .iter()
        .filter(|o| !excluded.contains(&o.node) && region(topology.node(o.node).region))
        .filter_map(|o| {
            let info = o.info()?;
            match info.role {
                Role::Replica {
                    sync_in_progress: false,
                    ..
                } if info.shares_history(lineage) => Some((info.offset, o.node)),
                _ => None,
            }
        })
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked
}

/// True when `o` answered and its dataset may hold `lineage`: a replica on that history in any
/// state (mid-sync it still has its old data until the transfer ends), or a master continuing it.
fn holds_history(o: &NodeObservation, lineage: &History) -> bool {
    o.info().is_some_and(|info| {
        if info.is_primary() {
            info.shares_history(lineage) && info.continues(lineage)
        } else {
            info.shares_history(lineage)
        }
    })
}

/// The node a lost writer should follow so that nobody copies its emptiness: the reachable node
/// (not the writer) holding the most of `lineage`, mid-sync or not. A replica whose own link is
/// down refuses to feed others, so following even a mid-sync holder stops the copy.
pub fn best_holder(
    observations: &[NodeObservation],
    writer: NodeId,
    lineage: &History,
) -> Option<NodeId> {
    observations
        .iter()
        .filter(|o| o.node != writer && holds_history(o, lineage))
        .max_by_key(|o| (o.info().map_or(0, |i| i.offset), std::cmp::Reverse(o.node)))
        .map(|o| o.node)
}

/// A replica that still hears from `writer` over its replication link: link up and the last byte
/// from it at most a second ago (the writer pings its replicas every `repl-ping-replica-period`,
/// so this needs that period short; with Valkey's default of 10 s an idle link never qualifies and
/// the check vetoes nothing). A link cut by a partition stays "up" until `repl-timeout`, but its
/// last-I/O age grows from the cut on.
fn seen_alive_by(
    topology: &Topology,
    observations: &[NodeObservation],
    writer: NodeId,
) -> Option<NodeId> {
    observations.iter().find_map(|o| {
        let info = o.info()?;
        let Role::Replica {
            master,
            link_up: true,
            ..
        } = &info.role
        else {
            return None;
        };
        let follows_writer = topology.node_by_any_address(master) == Some(writer);
        (follows_writer && info.master_last_io_s.is_some_and(|s| s <= 1)).then_some(o.node)
    })
}

/// `lineage`, or without a known history the most advanced replica's as the best guess.
pub fn lineage_or_guess(
    observations: &[NodeObservation],
    lineage: Option<&History>,
    excluded: &BTreeSet<NodeId>,
) -> History {
    if let Some(l) = lineage {
        return l.clone();
    }
    observations
        .iter()
        .filter(|o| !excluded.contains(&o.node))
        .filter_map(|o| o.info())
        .filter(|i| !i.is_primary())
        .max_by_key(|i| i.offset)
        .map(|i| i.history())
        .unwrap_or(History {
            replication_id: String::new(),
            offset: 0,
            parent: None,
        })
}

/// The writer's state as the observations show it against its history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterState {
    /// A master on its history: nothing to do.
    Serving,
    /// Reachable, but its data does not continue its history (restarted empty, as a master or as a
    /// replica): replace it at once, before any replica copies the emptiness.
    Lost,
    /// Reachable as a replica, still on its history (restarted from disk as a replica, or demoted
    /// by someone): it may take over again like any candidate.
    Replica,
    /// No answer.
    Unreachable,
}

/// A master restarted from an older file keeps its replication id but goes back in offset: the
/// replicas that held more of that history show it, while their link is down (it dropped at the
/// restart) or they resync (which would replace their data with the older one). Sound only when
/// the writer was read after the replicas (a healthy writer is then never behind a replica on its
/// own history): `first_look` reads it again when this says yes.
pub fn went_back(observations: &[NodeObservation], writer: NodeId) -> bool {
    let Some(info) = info_of(observations, writer).filter(|i| i.is_primary()) else {
        return false;
    };
    observations.iter().filter(|o| o.node != writer).any(|o| {
        o.info().is_some_and(|r| {
            matches!(r.role, Role::Replica { link_up, sync_in_progress, .. } if !link_up || sync_in_progress)
                && r.replication_id == info.replication_id
                && r.offset > info.offset
        })
    })
}

pub fn writer_state(
    observations: &[NodeObservation],
    writer: NodeId,
    lineage: Option<&History>,
) -> WriterState {
    let Some(info) = info_of(observations, writer) else {
        return WriterState::Unreachable;
    };
    if went_back(observations, writer) {
        return WriterState::Lost;
    }
    let on_history = |l: &History| {
        if info.is_primary() {
            info.continues(l)
        } else {
            info.shares_history(l)
        }
    };
    match (info.is_primary(), lineage.is_none_or(on_history)) {
        (_, false) => WriterState::Lost,
        (true, true) => WriterState::Serving,
        (false, true) => WriterState::Replica,
    }
}

pub fn decide(
    topology: &Topology,
    observations: &[NodeObservation],
    epoch: &EpochRecord,
    down: &BTreeSet<NodeId>,
    lineage: Option<&History>,
    policy: &Policy,
) -> Decision {
    let writer = epoch.primary;
    let state = writer_state(observations, writer, lineage);
    let mut excluded = down.clone();
    match state {
        WriterState::Serving => return Decision::None,
        WriterState::Unreachable if !down.contains(&writer) => return Decision::None,
        WriterState::Unreachable => {
            if let Some(witness) = seen_alive_by(topology, observations, writer) {
                return Decision::WriterSeenAlive { witness };
            }
        }
        WriterState::Lost => {
            excluded.insert(writer);
        }
        WriterState::Replica => {}
    }
    let known_lineage = lineage;
    let lineage = &lineage_or_guess(observations, lineage, &excluded);
    let writer_region = topology.node(writer).region;
    let ranked = candidates(topology, observations, &excluded, lineage, |_| true);
    let every_node_answered = topology.nodes.iter().all(|n| {
        observations
            .iter()
            .any(|o| o.node == n.id && o.info().is_some())
    });
    let Some(&(best_offset, best)) = ranked.first() else {
        // A lost writer's history is declared gone only when every configured node answered and
        // none holds it: silence, a node loading or mid-sync, proves nothing.
        let someone_holds_it = known_lineage.is_some_and(|l| {
            observations
                .iter()
                .filter(|o| o.node != writer)
                .any(|o| holds_history(o, l))
        });
        return if state == WriterState::Lost && every_node_answered && !someone_holds_it {
            Decision::HistoryLost
        } else {
            Decision::NoCandidate
        };
    };
    let local = ranked
        .iter()
        .find(|(_, n)| topology.node(*n).region == writer_region)
        .copied()
        .filter(|_| policy.in_region);
    // With in-region failover off, the writer may still move to another region: the best remote
    // candidate, which is not the best overall when a local replica is ahead.
    let remote = ranked
        .iter()
        .find(|(_, n)| topology.node(*n).region != writer_region)
        .copied();
    let within_bound = |offset: u64| best_offset - offset <= policy.max_data_at_risk_bytes;
    let region_down = topology.region(writer_region).nodes.iter().all(|n| {
        excluded.contains(n)
            || !observations
                .iter()
                .any(|o| o.node == *n && o.info().is_some())
    });
    let decision = match (local, remote) {
        (Some((offset, target)), _) if offset >= best_offset => Decision::InRegion { target },
        // In-region failover is off and only the writer's region holds a candidate: an
        // operator decides (the history stays where it is meanwhile).
        (None, None) if !policy.in_region => {
            return Decision::WaitForOperator {
                reason: WaitReason::InRegionOff {
                    region: writer_region,
                },
                suggested: Some(best),
            };
        }
        // In-region failover is off, the writer is merely down and part of its region is up:
        // nothing moves across regions automatically for a node failure.
        (None, Some(_)) if !policy.in_region && !region_down && state != WriterState::Lost => {
            return Decision::WaitForOperator {
                reason: WaitReason::InRegionOff {
                    region: writer_region,
                },
                suggested: Some(best),
            };
        }
        (_, Some((_, target))) if policy.cross_region == FailoverPolicy::Auto => {
            Decision::CrossRegion { target }
        }
        (Some((offset, target)), _) if within_bound(offset) => Decision::InRegion { target },
        _ => Decision::WaitForOperator {
            reason: WaitReason::CrossRegionManual {
                region: writer_region,
            },
            suggested: Some(best),
        },
    };
    let chosen_offset = match &decision {
        Decision::InRegion { target } | Decision::CrossRegion { target } => ranked
            .iter()
            .find(|(_, n)| n == target)
            .map_or(0, |(o, _)| *o),
        _ => best_offset,
    };
    // What a target at `offset` gives up of the writer's history as last seen.
    let at_risk = |offset: u64| lineage.offset.saturating_sub(offset);
    // A writer back without its data lost what no other node holds, whatever we choose: when
    // every node answered and none holds more than the target, waiting saves nothing and keeps
    // writes stopped (before, the writer's emptiness was adopted instead: everything lost).
    let most_held = observations
        .iter()
        .filter(|o| o.node != writer && holds_history(o, lineage))
        .filter_map(|o| o.info().map(|i| i.offset))
        .max()
        .unwrap_or(0);
    let lost_for_good =
        state == WriterState::Lost && every_node_answered && chosen_offset >= most_held;
    if at_risk(chosen_offset) > policy.max_data_at_risk_bytes && !lost_for_good {
        return Decision::WaitForOperator {
            reason: WaitReason::DataAtRisk {
                bytes: at_risk(chosen_offset),
            },
            suggested: Some(best),
        };
    }
    match decision {
        // The block after a failover stops the writer moving across regions again (flapping over
        // a partition); it never keeps a dead writer published when its own region holds a
        // candidate. A writer that is reachable but not serving its history (back empty, or a
        // replica) is replaced even across regions: waiting lets its replicas copy the
        // emptiness, and nobody takes writes meanwhile.
        // The writer's region's own replica may be a few bytes behind a remote one at the moment
        // of a kill (the remote link had more in flight): the block must not then keep the dead
        // writer published when the local replica gives up no more than the bound — the same
        // trade `manual` makes.
        Decision::CrossRegion { .. } if policy.blocked && state == WriterState::Unreachable => {
            match local.filter(|(offset, _)| {
                within_bound(*offset) && at_risk(*offset) <= policy.max_data_at_risk_bytes
            }) {
                Some((_, target)) => Decision::InRegion { target },
                None => Decision::Blocked {
                    would: Box::new(decision),
                },
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests;
