//! `decide`: whether and where to fail over, from one analysis and the set of nodes that have been
//! down for at least `down_after`. Pure; the controller measures time and executes the decision.
//!
//! | writer            | writer's region                 | decision                                      |
//! |-------------------|---------------------------------|-----------------------------------------------|
//! | up                | —                               | none                                          |
//! | down              | a healthy replica is up         | in-region failover to the most advanced one  |
//! | down              | every node down, policy `auto`  | cross-region failover to the most advanced   |
//! | down              | every node down, policy `manual`| wait for an operator, naming the best target |
//! | down, but blocked | —                               | blocked (anti-flapping), report               |

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::analysis::EpochRecord;
use crate::config::FailoverPolicy;
use crate::observation::{NodeObservation, Role};
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
    /// The writer's region is down and the policy is manual: report and wait.
    WaitForOperator {
        region: RegionId,
        suggested: Option<NodeId>,
    },
    /// A failover would be due, but an earlier one blocks automatic failovers until `ack`.
    Blocked {
        would: Box<Decision>,
    },
    /// The writer is down and no node can take over.
    NoCandidate,
}

pub struct Policy {
    pub in_region: bool,
    pub cross_region: FailoverPolicy,
    /// True while an earlier automatic failover blocks new ones.
    pub blocked: bool,
}

/// Replicas that may take over: reachable, not down, not in a full resync, holding data. Most
/// advanced (highest offset) first; ties go to the earlier node in the configuration.
pub fn candidates(
    topology: &Topology,
    observations: &[NodeObservation],
    down: &BTreeSet<NodeId>,
    region: impl Fn(RegionId) -> bool,
) -> Vec<NodeId> {
    let mut ranked: Vec<(u64, NodeId)> = observations
        .iter()
        .filter(|o| !down.contains(&o.node) && region(topology.node(o.node).region))
        .filter_map(|o| {
            let info = o.info()?;
            match info.role {
                Role::Replica {
                    sync_in_progress: false,
                    ..
                } if info.offset > 0 => Some((info.offset, o.node)),
                _ => None,
            }
        })
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked.into_iter().map(|(_, n)| n).collect()
}

pub fn decide(
    topology: &Topology,
    observations: &[NodeObservation],
    epoch: &EpochRecord,
    down: &BTreeSet<NodeId>,
    policy: &Policy,
) -> Decision {
    let writer = epoch.primary;
    if !down.contains(&writer) {
        return Decision::None;
    }
    let writer_region = topology.node(writer).region;
    let decision = {
        let local = candidates(topology, observations, down, |r| r == writer_region);
        let region_down = topology
            .region(writer_region)
            .nodes
            .iter()
            .all(|n| down.contains(n));
        let remote = candidates(topology, observations, down, |r| r != writer_region);
        match (local.first(), region_down) {
            (Some(target), _) if policy.in_region => Decision::InRegion { target: *target },
            (_, true) => match policy.cross_region {
                FailoverPolicy::Auto => match remote.first() {
                    Some(target) => Decision::CrossRegion { target: *target },
                    None => Decision::NoCandidate,
                },
                FailoverPolicy::Manual => Decision::WaitForOperator {
                    region: writer_region,
                    suggested: remote.first().copied(),
                },
            },
            // Part of the region is still up but may not take over (in-region failover off, or
            // only unsuitable replicas): nothing to do automatically.
            (_, false) => Decision::NoCandidate,
        }
    };
    match decision {
        Decision::InRegion { .. } | Decision::CrossRegion { .. } if policy.blocked => {
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
    use crate::analysis::tests::{down as unreachable, lab, primary, replica_of};

    const EPOCH: EpochRecord = EpochRecord {
        epoch: 1,
        primary: NodeId(0),
    };

    fn policy(cross_region: FailoverPolicy, blocked: bool) -> Policy {
        Policy {
            in_region: true,
            cross_region,
            blocked,
        }
    }

    #[test]
    fn table() {
        let n = NodeId;
        let set = |ids: &[usize]| ids.iter().map(|i| n(*i)).collect::<BTreeSet<_>>();
        let writer_dead = vec![
            unreachable(0),
            replica_of(1, 0, 90),
            replica_of(2, 0, 95),
            replica_of(3, 2, 80),
        ];
        let region_dead = vec![
            unreachable(0),
            unreachable(1),
            replica_of(2, 0, 95),
            replica_of(3, 2, 99),
        ];
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
                crate::analysis::tests::healthy(),
                set(&[]),
                policy(FailoverPolicy::Auto, false),
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
                "writer node down: in-region",
                writer_dead.clone(),
                set(&[0]),
                manual,
                Decision::InRegion { target: n(1) },
            ),
            (
                "writer node down, in-region off, region partly up",
                writer_dead.clone(),
                set(&[0]),
                Policy {
                    in_region: false,
                    cross_region: FailoverPolicy::Auto,
                    blocked: false,
                },
                Decision::NoCandidate,
            ),
            (
                "region down, auto: most advanced remote",
                region_dead.clone(),
                set(&[0, 1]),
                auto,
                Decision::CrossRegion { target: n(3) },
            ),
            (
                "region down, manual: wait and suggest",
                region_dead.clone(),
                set(&[0, 1]),
                policy(FailoverPolicy::Manual, false),
                Decision::WaitForOperator {
                    region: RegionId(0),
                    suggested: Some(n(3)),
                },
            ),
            (
                "blocked after an earlier failover",
                writer_dead.clone(),
                set(&[0]),
                policy(FailoverPolicy::Auto, true),
                Decision::Blocked {
                    would: Box::new(Decision::InRegion { target: n(1) }),
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
                Decision::NoCandidate,
            ),
        ];
        for (name, observations, down, policy, expected) in cases {
            assert_eq!(
                decide(&lab(), &observations, &EPOCH, &down, &policy),
                expected,
                "{name}"
            );
        }
    }
}
