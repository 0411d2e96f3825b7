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

pub fn writer_state(
    observations: &[NodeObservation],
    writer: NodeId,
    lineage: Option<&History>,
) -> WriterState {
    let Some(info) = info_of(observations, writer) else {
        return WriterState::Unreachable;
    };
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
    let Some(&(best_offset, best)) = ranked.first() else {
        // A lost writer's history is declared gone only when every configured node answered and
        // none holds it: silence, a node loading or mid-sync, proves nothing.
        let every_node_answered = topology.nodes.iter().all(|n| {
            observations
                .iter()
                .any(|o| o.node == n.id && o.info().is_some())
        });
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
    let at_risk = lineage.offset.saturating_sub(chosen_offset);
    if at_risk > policy.max_data_at_risk_bytes {
        return Decision::WaitForOperator {
            reason: WaitReason::DataAtRisk { bytes: at_risk },
            suggested: Some(best),
        };
    }
    match decision {
        // The block after a failover stops the writer moving across regions again (flapping over
        // a partition); it never keeps a dead writer published when its own region holds a
        // candidate. A writer that is reachable but not serving its history (back empty, or a
        // replica) is replaced even across regions: waiting lets its replicas copy the
        // emptiness, and nobody takes writes meanwhile.
        Decision::CrossRegion { .. } if policy.blocked && state == WriterState::Unreachable => {
            Decision::Blocked {
                would: Box::new(decision),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::ReplicationInfo;
    use crate::testing::{down as unreachable, lab, primary, replica_of};

    const EPOCH: EpochRecord = EpochRecord {
        epoch: 1,
        primary: NodeId(0),
    };

    fn policy(cross_region: FailoverPolicy, blocked: bool) -> Policy {
        Policy {
            in_region: true,
            cross_region,
            blocked,
            max_data_at_risk_bytes: 1000,
        }
    }

    /// Node `n` with its replication id replaced (another history) or its offset.
    fn with(mut o: NodeObservation, f: impl FnOnce(&mut ReplicationInfo)) -> NodeObservation {
        if let Ok(info) = &mut o.state {
            f(info);
        }
        o
    }

    #[test]
    fn table() {
        let n = NodeId;
        let set = |ids: &[usize]| ids.iter().map(|i| n(*i)).collect::<BTreeSet<_>>();
        // The writer's history as last seen: replication id "r" at offset 100.
        let lineage = History {
            replication_id: "r".into(),
            offset: 100,
        };
        let writer_dead = vec![
            unreachable(0),
            replica_of(1, 0, 95),
            replica_of(2, 0, 90),
            replica_of(3, 2, 80),
        ];
        let region_dead = vec![
            unreachable(0),
            unreachable(1),
            replica_of(2, 0, 95),
            replica_of(3, 2, 99),
        ];
        let remote_ahead = vec![
            unreachable(0),
            replica_of(1, 0, 90),
            replica_of(2, 0, 95),
            replica_of(3, 2, 80),
        ];
        let never_synced = |o| {
            with(o, |i| {
                i.replication_id = "own-random-id".into();
                i.offset = 1;
            })
        };
        let syncing = |o| {
            with(o, |i| {
                if let Role::Replica {
                    sync_in_progress, ..
                } = &mut i.role
                {
                    *sync_in_progress = true;
                }
            })
        };
        let empty_master = with(primary(0), |i| {
            i.replication_id = "new".into();
            i.offset = 0;
        });
        // The writer back empty as a master; every replica still holds the history.
        let back_empty = vec![
            empty_master.clone(),
            replica_of(1, 0, 100),
            replica_of(2, 0, 98),
            replica_of(3, 2, 98),
        ];
        let in_region_off = |cross_region| Policy {
            in_region: false,
            ..policy(cross_region, false)
        };
        let auto = policy(FailoverPolicy::Auto, false);
        let manual = policy(FailoverPolicy::Manual, false);
        // (situation, observations, nodes down for down_after, policy, expected decision)
        type Case = (
            &'static str,
            Vec<NodeObservation>,
            BTreeSet<NodeId>,
            Policy,
            Decision,
        );
        let cases: Vec<Case> = vec![
            (
                "writer up",
                crate::testing::healthy(),
                set(&[]),
                auto,
                Decision::None,
            ),
            (
                "writer failing, not yet down_after",
                writer_dead.clone(),
                set(&[]),
                policy(FailoverPolicy::Auto, false),
                Decision::None,
            ),
            (
                "writer node down: in-region, the most advanced",
                writer_dead.clone(),
                set(&[0]),
                manual,
                Decision::InRegion { target: n(1) },
            ),
            (
                "writer node down, in-region off, region partly up",
                writer_dead.clone(),
                set(&[0]),
                in_region_off(FailoverPolicy::Auto),
                Decision::WaitForOperator {
                    reason: WaitReason::InRegionOff {
                        region: RegionId(0),
                    },
                    suggested: Some(n(1)),
                },
            ),
            (
                "writer back empty, in-region off: the history moves to the other region (auto)",
                back_empty.clone(),
                set(&[]),
                in_region_off(FailoverPolicy::Auto),
                Decision::CrossRegion { target: n(2) },
            ),
            (
                "writer back empty, in-region off, manual: wait, never declare the loss",
                back_empty.clone(),
                set(&[]),
                in_region_off(FailoverPolicy::Manual),
                Decision::WaitForOperator {
                    reason: WaitReason::CrossRegionManual {
                        region: RegionId(0),
                    },
                    suggested: Some(n(1)),
                },
            ),
            (
                "writer back empty, the only holder mid-sync: no candidate, the loss not declared",
                vec![
                    empty_master.clone(),
                    never_synced(replica_of(1, 0, 0)),
                    syncing(replica_of(2, 0, 98)),
                    never_synced(replica_of(3, 2, 0)),
                ],
                set(&[]),
                policy(FailoverPolicy::Auto, false),
                Decision::NoCandidate,
            ),
            (
                "writer back empty, every node answered, none holds the history: lost",
                vec![
                    empty_master.clone(),
                    never_synced(replica_of(1, 0, 0)),
                    never_synced(replica_of(2, 0, 0)),
                    never_synced(replica_of(3, 2, 0)),
                ],
                set(&[]),
                policy(FailoverPolicy::Auto, false),
                Decision::HistoryLost,
            ),
            (
                "a cross-region replica further ahead wins with auto",
                remote_ahead.clone(),
                set(&[0]),
                policy(FailoverPolicy::Auto, false),
                Decision::CrossRegion { target: n(2) },
            ),
            (
                "manual: the region's replica when it gives up no more than the bound",
                remote_ahead.clone(),
                set(&[0]),
                policy(FailoverPolicy::Manual, false),
                Decision::InRegion { target: n(1) },
            ),
            (
                "manual: beyond the bound, wait and say what is at risk",
                remote_ahead.clone(),
                set(&[0]),
                Policy {
                    max_data_at_risk_bytes: 2,
                    ..policy(FailoverPolicy::Manual, false)
                },
                Decision::WaitForOperator {
                    reason: WaitReason::DataAtRisk { bytes: 5 },
                    suggested: Some(n(2)),
                },
            ),
            (
                "region down, auto: most advanced remote",
                region_dead.clone(),
                set(&[0, 1]),
                policy(FailoverPolicy::Auto, false),
                Decision::CrossRegion { target: n(3) },
            ),
            (
                "region down, manual: wait and suggest",
                region_dead.clone(),
                set(&[0, 1]),
                policy(FailoverPolicy::Manual, false),
                Decision::WaitForOperator {
                    reason: WaitReason::CrossRegionManual {
                        region: RegionId(0),
                    },
                    suggested: Some(n(3)),
                },
            ),
            (
                "every candidate too far behind the writer: wait",
                region_dead.clone(),
                set(&[0, 1]),
                Policy {
                    max_data_at_risk_bytes: 0,
                    ..policy(FailoverPolicy::Auto, false)
                },
                Decision::WaitForOperator {
                    reason: WaitReason::DataAtRisk { bytes: 1 },
                    suggested: Some(n(3)),
                },
            ),
            (
                "blocked after an earlier failover: the writer's own region still takes over",
                writer_dead.clone(),
                set(&[0]),
                policy(FailoverPolicy::Auto, true),
                Decision::InRegion { target: n(1) },
            ),
            (
                "blocked after an earlier failover: no move across regions",
                region_dead.clone(),
                set(&[0, 1]),
                policy(FailoverPolicy::Auto, true),
                Decision::Blocked {
                    would: Box::new(Decision::CrossRegion { target: n(3) }),
                },
            ),
            (
                "a never-synced replica (own id, offset 1) is no candidate",
                vec![
                    unreachable(0),
                    never_synced(replica_of(1, 0, 1)),
                    replica_of(2, 0, 95),
                    replica_of(3, 2, 90),
                ],
                set(&[0]),
                policy(FailoverPolicy::Manual, false),
                Decision::WaitForOperator {
                    reason: WaitReason::CrossRegionManual {
                        region: RegionId(0),
                    },
                    suggested: Some(n(2)),
                },
            ),
            (
                "a rogue master is no candidate",
                vec![
                    unreachable(0),
                    unreachable(1),
                    primary(2),
                    replica_of(3, 2, 0),
                ],
                set(&[0, 1]),
                policy(FailoverPolicy::Auto, false),
                Decision::CrossRegion { target: n(3) },
            ),
            (
                "writer back empty as a master: replaced at once, even while blocked",
                back_empty.clone(),
                set(&[]),
                policy(FailoverPolicy::Manual, true),
                Decision::InRegion { target: n(1) },
            ),
            (
                "writer back empty as a replica: replaced at once",
                vec![
                    never_synced(replica_of(0, 1, 0)),
                    replica_of(1, 0, 100),
                    replica_of(2, 0, 98),
                    replica_of(3, 2, 98),
                ],
                set(&[]),
                policy(FailoverPolicy::Manual, false),
                Decision::InRegion { target: n(1) },
            ),
            (
                "writer back as a replica with its data, the most advanced: it takes over again",
                vec![
                    replica_of(0, 1, 100),
                    replica_of(1, 0, 99),
                    replica_of(2, 0, 98),
                    replica_of(3, 2, 98),
                ],
                set(&[]),
                policy(FailoverPolicy::Manual, false),
                Decision::InRegion { target: n(0) },
            ),
            (
                "one-sided: the controller lost the writer, its replica still hears it",
                writer_dead.clone(),
                set(&[0]),
                policy(FailoverPolicy::Auto, false),
                Decision::WriterSeenAlive { witness: n(1) },
            ),
            (
                "one-sided? no: the replica's link is up but silent for 3 s (cut, not yet timed out)",
                writer_dead
                    .iter()
                    .cloned()
                    .map(|o| with(o, |i| i.master_last_io_s = Some(3)))
                    .collect(),
                set(&[0]),
                policy(FailoverPolicy::Manual, false),
                Decision::InRegion { target: n(1) },
            ),
            (
                "writer back empty and its replicas already copied the emptiness: nobody holds it",
                vec![
                    empty_master,
                    never_synced(replica_of(1, 0, 0)),
                    unreachable(2),
                    unreachable(3),
                ],
                set(&[2, 3]),
                policy(FailoverPolicy::Auto, false),
                Decision::NoCandidate,
            ),
        ];
        // A dead writer's replicas see their link drop (connection reset), unless a case is about
        // what they still see.
        let link_lost = |o: NodeObservation| {
            with(o, |i| {
                if let Role::Replica {
                    master, link_up, ..
                } = &mut i.role
                    && master.host == "127.0.1.1"
                {
                    *link_up = false;
                    i.master_last_io_s = None;
                }
            })
        };
        for (name, observations, down, policy, expected) in cases {
            let observations: Vec<NodeObservation> = if name.starts_with("one-sided") {
                observations
            } else {
                observations.into_iter().map(link_lost).collect()
            };
            // "a rogue master is no candidate": node 3 follows the rogue, not the history.
            let lineage = if name.starts_with("a rogue") {
                History {
                    replication_id: "r".into(),
                    offset: 0,
                }
            } else {
                lineage.clone()
            };
            assert_eq!(
                decide(
                    &lab(),
                    &observations,
                    &EPOCH,
                    &down,
                    Some(&lineage),
                    &policy
                ),
                expected,
                "{name}"
            );
        }
    }
}
