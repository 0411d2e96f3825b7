//! The self-fence of a cluster's primaries: each one's `min-replicas-to-write` as a replication
//! group's writer gets it ([`crate::self_fence::desired`]): the replicas beside it plus one
//! outside its region, so that a primary cut off from every replica outside its region refuses
//! writes within `max_lag_s` + 2 s — whatever happens to the controller. Every other node that
//! answers gets no quorum: a replica the cluster promotes within the region (its own failover)
//! starts with none that no longer fits it. Pure: the controller observes and sets.

use std::time::Duration;

use crate::endpoint::Endpoint;
use crate::observation::{Failure, FailureKind, NodeObservation, Role};
use crate::self_fence::{HEARD_WITHIN_S, WriteQuorum, desired};
use crate::topology::{NodeId, RegionId, Topology};

use super::{ClusterEpoch, Shard, plan_failover};

/// Every configured node's own account of its replication, as the shards were read with it
/// ([`Shard`]s carry it): what the fence and the verdict judge by, with no second round of
/// reads. A node that did not answer, or that the view does not list, has none.
pub fn observations_of(topology: &Topology, shards: &[Shard]) -> Vec<NodeObservation> {
    topology
        .nodes
        .iter()
        .map(|node| {
            let replication = shards
                .iter()
                .flat_map(|s| &s.nodes)
                .filter(|n| topology.node_by_any_address(&n.endpoint) == Some(node.id))
                .find_map(|n| n.replication.clone());
            NodeObservation {
                node: node.id,
                state: replication.ok_or_else(|| {
                    Failure::new(
                        FailureKind::Unreachable,
                        "did not answer when the shards were read",
                    )
                }),
                keys: None,
                heartbeat_ms: None,
                epoch_mark: None,
            }
        })
        .collect()
}

/// The quorum each answering node should have: a primary that serves slots (by its own account
/// and by the shards' view) and pings its replicas every second its self-fence, a replica
/// [`WriteQuorum::OFF`] (the cluster may promote it within its region, and it must not start
/// with a quorum that no longer fits it). A primary the view gives no slots is left as it is, not
/// listed, and one outside the epoch's `writer_region` is only ever armed: either may be a
/// primary taken over while it was cut off that has not heard of it yet and still takes its
/// slots' writes — its own fence is then all that stops them (lowering it at the heal gave it
/// half a second of writes beside its successor: chaos row "cluster: HA, writer region isolated
/// with its site …").
pub fn write_quorums(
    topology: &Topology,
    shards: &[Shard],
    observations: &[NodeObservation],
    writer_region: RegionId,
    max_lag_s: u32,
    need_a_replica: bool,
) -> Vec<(NodeId, WriteQuorum)> {
    observations
        .iter()
        .filter_map(|o| Some((o.node, o.info()?)))
        .filter_map(|(node, info)| {
            if !info.is_primary() {
                return Some((node, WriteQuorum::OFF));
            }
            let endpoint = &topology.node(node).endpoint;
            let leading = shards
                .iter()
                .filter(|s| s.slot_count() > 0)
                .filter_map(Shard::primary)
                .find(|p| p.endpoint == *endpoint)?;
            // The fence counts a replica outside the region only while it heard from the
            // primary within a second: with Valkey's default ping period (10 s) an idle
            // primary's replicas fall silent and a cut-off busy one could still count as heard
            // — so no fence, and with it no automatic failover, unless it pings every second.
            let pings_every_second = leading
                .ping_replicas_every_s
                .is_some_and(|s| s <= HEARD_WITHIN_S);
            let quorum = if pings_every_second {
                desired(topology, observations, node, max_lag_s, need_a_replica)
            } else {
                WriteQuorum::OFF
            };
            // Outside the writer region only ever armed (a shard moved there, its move not
            // settled yet), never lowered: the view may be one that still shows a primary
            // taken over while it was away.
            (topology.node(node).region == writer_region || quorum.armed())
                .then_some((node, quorum))
        })
        .collect()
}

/// Whether a replica that answers still hears from `primary` (its link up, the last byte from
/// it within [`HEARD_WITHIN_S`]): alive, even when the controller cannot reach it.
pub fn heard_by_a_replica(observations: &[NodeObservation], primary: &Endpoint) -> bool {
    observations.iter().any(|o| {
        o.info().is_some_and(|info| {
            matches!(&info.role, Role::Replica { master, link_up: true, .. } if master == primary)
                && info.master_last_io_s.is_some_and(|s| s <= HEARD_WITHIN_S)
        })
    })
}

/// How long every replica of `primary` that answers has gone without hearing from it, by its
/// own account (`master_last_io_seconds_ago`, whole seconds, rounded down): the primary's last
/// contact with them was at least that long ago. `None` when one of them has its link down (it
/// does not say since when) or none answers.
pub fn unheard_for(observations: &[NodeObservation], primary: &Endpoint) -> Option<Duration> {
    let mut least: Option<u64> = None;
    for info in observations.iter().filter_map(|o| o.info()) {
        let Role::Replica {
            master, link_up, ..
        } = &info.role
        else {
            continue;
        };
        if master != primary {
            continue;
        }
        let silent = info.master_last_io_s.filter(|_| *link_up)?;
        least = Some(least.map_or(silent, |l| l.min(silent)));
    }
    least.map(Duration::from_secs)
}

/// Whether the writer region is lost and another region may take its primaries over without an
/// operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionVerdict {
    /// A primary that serves slots answers, or a replica still hears from one: nothing is lost
    /// (a single lost primary is replaced within its region by the cluster itself).
    NotLost,
    /// Every primary is silent, but moving would not be safe (yet): why.
    Withheld(String),
    /// Every primary of the writer region is silent, heard by no replica, and known to refuse
    /// writes (its self-fence armed and certain by now): take them over in this region.
    FailOver(RegionId),
}

/// The automatic region failover's decision, from one pass's view. `silent_for(node)`: how long
/// the node has neither answered the controller nor been heard by a replica (`None`: it has not
/// been silent); `armed(node)`: its self-fence was armed when it last answered; `certain_after`:
/// how long after its last contact with the outside a fenced primary surely refuses writes
/// ([`WriteQuorum::certain_after`]).
pub fn region_verdict(
    topology: &Topology,
    epoch: &ClusterEpoch,
    shards: &[Shard],
    observations: &[NodeObservation],
    silent_for: impl Fn(NodeId) -> Option<Duration>,
    armed: impl Fn(NodeId) -> bool,
    certain_after: Duration,
) -> RegionVerdict {
    let serving: Vec<&Shard> = shards.iter().filter(|s| s.slot_count() > 0).collect();
    if serving.is_empty() {
        return RegionVerdict::NotLost;
    }
    let mut silent = Vec::new();
    for shard in &serving {
        let Some(primary) = shard.primary() else {
            return RegionVerdict::Withheld(format!(
                "slots {} have no primary",
                shard.slot_ranges()
            ));
        };
        if primary.answered || heard_by_a_replica(observations, &primary.endpoint) {
            return RegionVerdict::NotLost;
        }
        silent.push(primary);
    }
    // Each shard's replicas outside the writer region must all have answered: one that did not
    // may still hear its primary (cut off from the controller, not from the primary), and that
    // primary, its fence satisfied, still takes writes.
    for shard in &serving {
        for replica in shard
            .nodes
            .iter()
            .filter(|n| n.role == super::ShardRole::Replica)
        {
            let Some(node) = topology.node_by_any_address(&replica.endpoint) else {
                continue;
            };
            if topology.node(node).region == epoch.writer_region {
                continue;
            }
            if !observations
                .iter()
                .any(|o| o.node == node && o.info().is_some())
            {
                return RegionVerdict::Withheld(format!(
                    "{} does not answer: it may still hear its primary",
                    replica.endpoint
                ));
            }
        }
    }
    for primary in &silent {
        let Some(node) = topology.node_by_any_address(&primary.endpoint) else {
            return RegionVerdict::Withheld(format!(
                "{} is in no configured region",
                primary.endpoint
            ));
        };
        if topology.node(node).region != epoch.writer_region {
            return RegionVerdict::Withheld(format!(
                "{} leads a shard outside the writer region (a move stopped halfway?)",
                primary.endpoint
            ));
        }
        if !armed(node) {
            return RegionVerdict::Withheld(format!(
                "{}'s self-fence was not armed when it last answered: cut off, it may still take writes",
                primary.endpoint
            ));
        }
        let silent = silent_for(node).unwrap_or_default();
        if silent < certain_after {
            return RegionVerdict::Withheld(format!(
                "{} silent for {} ms, surely fenced after {} ms",
                primary.endpoint,
                silent.as_millis(),
                certain_after.as_millis()
            ));
        }
    }
    let owned: Vec<Shard> = serving.into_iter().cloned().collect();
    topology
        .regions
        .iter()
        .map(|r| r.id)
        .filter(|r| *r != epoch.writer_region)
        .find(|r| plan_failover(topology, &owned, *r, true).is_ok())
        .map_or_else(
            || {
                RegionVerdict::Withheld(
                    "no other region holds an online replica of every shard".into(),
                )
            },
            RegionVerdict::FailOver,
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::tests::{node, shard};
    use crate::cluster::{ShardNode, ShardRole};
    use crate::testing::{down, lab, primary, replica_of};

    /// A replica that has not heard from its primary for 2 s.
    fn unheard(mut o: NodeObservation) -> NodeObservation {
        if let Ok(info) = &mut o.state {
            info.master_last_io_s = Some(2);
        }
        o
    }

    #[test]
    fn each_primary_that_serves_slots_is_fenced_by_its_replicas_outside_the_region() {
        // The lab: nodes 0, 1 in us-east-1, 2, 3 in us-east-2. Shard A: 0 leads, 1 beside it,
        // 2 outside; shard B: 3 leads (in us-east-2, outside the writer region us-east-1: left as
        // it is, as a primary taken over while away would be).
        let topology = lab();
        let shards = vec![
            shard(
                vec![
                    node(&topology, 0, ShardRole::Primary, 9),
                    node(&topology, 1, ShardRole::Replica, 9),
                    node(&topology, 2, ShardRole::Replica, 9),
                ],
                0..=8191,
            ),
            shard(
                vec![node(&topology, 3, ShardRole::Primary, 9)],
                8192..=16383,
            ),
        ];
        let armed = |replicas| WriteQuorum {
            replicas,
            max_lag_s: 2,
        };
        let off = WriteQuorum::OFF;
        let taken_over = vec![Shard {
            slots: vec![],
            nodes: vec![node(&topology, 0, ShardRole::Primary, 9)],
        }];
        type Case = (
            &'static str,
            Vec<Shard>,
            Vec<NodeObservation>,
            Vec<(usize, WriteQuorum)>,
        );
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("the replica beside it and the one outside: two",
             shards.clone(),
             vec![primary(0), replica_of(1, 0, 9), replica_of(2, 0, 9), primary(3)],
             vec![(0, armed(2)), (1, off), (2, off)]),
            ("the replica outside gone: no fence (nothing left to fence against), the shard keeps taking writes",
             shards.clone(),
             vec![primary(0), replica_of(1, 0, 9), down(2), primary(3)],
             vec![(0, off), (1, off)]),
            ("the replica outside no longer hears from it: not counted",
             shards.clone(),
             vec![primary(0), replica_of(1, 0, 9), unheard(replica_of(2, 0, 9)), primary(3)],
             vec![(0, off), (1, off), (2, off)]),
            ("a primary that pings its replicas every 10 s (Valkey's default): no fence",
             vec![shard(vec![ShardNode { ping_replicas_every_s: Some(10), ..node(&topology, 0, ShardRole::Primary, 9) },
                             node(&topology, 1, ShardRole::Replica, 9), node(&topology, 2, ShardRole::Replica, 9)], 0..=16383)],
             vec![primary(0), replica_of(1, 0, 9), replica_of(2, 0, 9)],
             vec![(0, off), (1, off), (2, off)]),
            ("a primary whose ping period was not read: no fence",
             vec![shard(vec![ShardNode { ping_replicas_every_s: None, ..node(&topology, 0, ShardRole::Primary, 9) },
                             node(&topology, 1, ShardRole::Replica, 9), node(&topology, 2, ShardRole::Replica, 9)], 0..=16383)],
             vec![primary(0), replica_of(1, 0, 9), replica_of(2, 0, 9)],
             vec![(0, off), (1, off), (2, off)]),
            ("a primary the shards' view gives no slots (taken over while away): left as it is, fenced",
             taken_over,
             vec![primary(0), replica_of(1, 0, 9), replica_of(2, 0, 9)],
             vec![(1, off), (2, off)]),
        ];
        for (case, shards, observations, expected) in cases {
            let expected: Vec<(NodeId, WriteQuorum)> =
                expected.into_iter().map(|(n, q)| (NodeId(n), q)).collect();
            assert_eq!(
                write_quorums(&topology, &shards, &observations, RegionId(0), 2, false),
                expected,
                "{case}"
            );
        }
        // The epoch moved to us-east-2 while us-east-1 was cut off: its primary, back and not
        // yet told, still serves its slots in its own (stale) view, and no replica outside
        // follows it any more. Lowering its quorum would let it take writes beside its
        // successor; it is left as it is. Node 3 leads in us-east-2: its fence as ever.
        assert_eq!(
            write_quorums(
                &topology,
                &shards,
                &[primary(0), replica_of(1, 0, 9), primary(2), primary(3)],
                RegionId(1),
                2,
                false
            ),
            vec![(NodeId(1), off), (NodeId(3), off)],
            "a primary outside the writer region"
        );
        // A move left halfway: shard A's primary moved to us-east-2 (node 2), its old primary
        // and replica in us-east-1 follow it; the epoch still says us-east-1. It is armed.
        let moved = vec![
            shard(
                vec![
                    node(&topology, 2, ShardRole::Primary, 9),
                    node(&topology, 0, ShardRole::Replica, 9),
                    node(&topology, 1, ShardRole::Replica, 9),
                ],
                0..=8191,
            ),
            shard(
                vec![node(&topology, 3, ShardRole::Primary, 9)],
                8192..=16383,
            ),
        ];
        assert_eq!(
            write_quorums(
                &topology,
                &moved,
                &[
                    replica_of(0, 2, 9),
                    replica_of(1, 2, 9),
                    primary(2),
                    primary(3)
                ],
                RegionId(0),
                2,
                false
            ),
            vec![(NodeId(0), off), (NodeId(1), off), (NodeId(2), armed(1))],
            "a shard moved ahead of the epoch"
        );
    }

    #[test]
    fn each_node_is_observed_as_the_shards_were_read_with_it() {
        // Nodes 0 (a primary that answered), 1 (its replica, silent); 2 and 3 in no shard.
        let topology = lab();
        let mut answered = node(&topology, 0, ShardRole::Primary, 9);
        answered.replication = primary(0).state.ok();
        let silent = node(&topology, 1, ShardRole::Replica, 0);
        let observations = observations_of(&topology, &[shard(vec![answered, silent], 0..=16383)]);
        let answers: Vec<bool> = observations.iter().map(|o| o.info().is_some()).collect();
        assert_eq!(answers, vec![true, false, false, false]);
        assert_eq!(observations[0].info(), primary(0).info());
        assert_eq!(
            observations.iter().map(|o| o.node).collect::<Vec<_>>(),
            (0..4).map(NodeId).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_primary_is_unheard_for_as_long_as_its_most_recently_heard_replica_says() {
        let topology = lab();
        let primary0 = topology.nodes[0].endpoint.clone();
        let last_io = |mut o: NodeObservation, s: u64| {
            if let Ok(info) = &mut o.state {
                info.master_last_io_s = Some(s);
            }
            o
        };
        let link_down = |mut o: NodeObservation| {
            if let Ok(info) = &mut o.state
                && let Role::Replica { link_up, .. } = &mut info.role
            {
                *link_up = false;
            }
            o
        };
        let secs = |s| Some(Duration::from_secs(s));
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<NodeObservation>, Option<Duration>)> = vec![
            ("two replicas: the one that heard last counts", vec![last_io(replica_of(1, 0, 9), 3), last_io(replica_of(2, 0, 9), 5)], secs(3)),
            ("a replica of another primary does not count", vec![last_io(replica_of(2, 0, 9), 4), last_io(replica_of(3, 2, 9), 0)], secs(4)),
            ("a replica whose link is down does not say since when", vec![last_io(replica_of(1, 0, 9), 4), link_down(replica_of(2, 0, 9))], None),
            ("no replica answers", vec![down(1), down(2)], None),
        ];
        for (case, observations, expected) in cases {
            assert_eq!(unheard_for(&observations, &primary0), expected, "{case}");
        }
    }

    #[test]
    fn the_writer_region_is_failed_over_only_when_every_primary_is_silent_unheard_and_fenced() {
        use crate::cluster::ClusterEpoch;
        use crate::topology::RegionId;
        // The lab: nodes 0, 1 in us-east-1 (the writer region), 2, 3 in us-east-2. Two shards:
        // 0 leads with 2 outside, 1 leads with 3 outside.
        let topology = lab();
        let epoch = ClusterEpoch {
            epoch: 1,
            writer_region: RegionId(0),
        };
        let silent = |n| crate::cluster::ShardNode {
            answered: false,
            ..node(&topology, n, ShardRole::Primary, 9)
        };
        let two = |first: crate::cluster::ShardNode, second: crate::cluster::ShardNode| {
            vec![
                shard(
                    vec![first, node(&topology, 2, ShardRole::Replica, 9)],
                    0..=8191,
                ),
                shard(
                    vec![second, node(&topology, 3, ShardRole::Replica, 9)],
                    8192..=16383,
                ),
            ]
        };
        let lost = two(silent(0), silent(1));
        // The outside replicas answer the controller; their links to the lost primaries are down.
        let link_down = |n: usize, master: usize| {
            let mut o = replica_of(n, master, 9);
            if let Ok(info) = &mut o.state
                && let Role::Replica { link_up, .. } = &mut info.role
            {
                *link_up = false;
            }
            o
        };
        let unheard = vec![down(0), down(1), link_down(2, 0), link_down(3, 1)];
        let still_heard = vec![down(0), down(1), replica_of(2, 0, 9), link_down(3, 1)];
        let long = Duration::from_secs(10);
        let certain = Duration::from_secs(4);
        type Case = (
            &'static str,
            Vec<Shard>,
            Vec<NodeObservation>,
            Option<Duration>,
            bool,
            Option<RegionVerdict>,
        );
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("lost, unheard, fenced for long enough", lost.clone(), unheard.clone(), Some(long), true,
             Some(RegionVerdict::FailOver(RegionId(1)))),
            ("one primary answers", two(node(&topology, 0, ShardRole::Primary, 9), silent(1)), unheard.clone(), Some(long), true,
             Some(RegionVerdict::NotLost)),
            ("a replica still hears one: alive behind a cut from us", lost.clone(), still_heard, Some(long), true,
             Some(RegionVerdict::NotLost)),
            ("silent, not yet surely fenced", lost.clone(), unheard.clone(), Some(Duration::from_secs(1)), true, None),
            ("silent, its fence was not armed", lost.clone(), unheard.clone(), Some(long), false, None),
            ("a replica outside does not answer: it may still hear its primary", lost.clone(),
         vec![down(0), down(1), down(2), link_down(3, 1)], Some(long), true, None),
        ("no replica left outside for one shard", vec![shard(vec![silent(0)], 0..=8191), shard(vec![silent(1), node(&topology, 3, ShardRole::Replica, 9)], 8192..=16383)],
             unheard.clone(), Some(long), true, None),
            ("nothing discovered", vec![], vec![], Some(long), true, Some(RegionVerdict::NotLost)),
        ];
        for (case, shards, observations, silent_for, armed, expected) in cases {
            let verdict = region_verdict(
                &topology,
                &epoch,
                &shards,
                &observations,
                |_| silent_for,
                |_| armed,
                certain,
            );
            match expected {
                Some(expected) => assert_eq!(verdict, expected, "{case}"),
                None => assert!(
                    matches!(verdict, RegionVerdict::Withheld(_)),
                    "{case}: {verdict:?}"
                ),
            }
        }
    }
}
