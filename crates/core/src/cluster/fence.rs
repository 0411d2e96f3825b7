//! The self-fence of a cluster's primaries: each one's `min-replicas-to-write` as a replication
//! group's writer gets it ([`crate::self_fence::desired`]): the replicas beside it plus one
//! outside its region, so that a primary cut off from every replica outside its region refuses
//! writes within `max_lag_s` + 2 s — whatever happens to the controller. Every other node that
//! answers gets no quorum: a replica the cluster promotes within the region (its own failover)
//! starts with none that no longer fits it. Pure: the controller observes and sets.

use crate::observation::NodeObservation;
use crate::self_fence::{WriteQuorum, desired};
use crate::topology::{NodeId, Topology};

use super::Shard;

/// The quorum each answering node should have: a primary that serves slots (by its own
/// account and by the shards' view) its self-fence, every other [`WriteQuorum::OFF`].
pub fn write_quorums(
    topology: &Topology,
    shards: &[Shard],
    observations: &[NodeObservation],
    max_lag_s: u32,
    need_a_replica: bool,
) -> Vec<(NodeId, WriteQuorum)> {
    observations
        .iter()
        .filter_map(|o| Some((o.node, o.info()?)))
        .map(|(node, info)| {
            let endpoint = &topology.node(node).endpoint;
            let serves_slots = shards.iter().any(|s| {
                s.slot_count() > 0 && s.primary().is_some_and(|p| p.endpoint == *endpoint)
            });
            let quorum = if info.is_primary() && serves_slots {
                desired(topology, observations, node, max_lag_s, need_a_replica)
            } else {
                WriteQuorum::OFF
            };
            (node, quorum)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ShardRole;
    use crate::cluster::tests::{node, shard};
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
        // 2 outside; shard B: 3 leads (in us-east-2).
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
             vec![(0, armed(2)), (1, off), (2, off), (3, off)]),
            ("the replica outside gone: no fence (nothing left to fence against), the shard keeps taking writes",
             shards.clone(),
             vec![primary(0), replica_of(1, 0, 9), down(2), primary(3)],
             vec![(0, off), (1, off), (3, off)]),
            ("the replica outside no longer hears from it: not counted",
             shards.clone(),
             vec![primary(0), replica_of(1, 0, 9), unheard(replica_of(2, 0, 9)), primary(3)],
             vec![(0, off), (1, off), (2, off), (3, off)]),
            ("a primary the shards' view gives no slots (taken over while away): none",
             taken_over,
             vec![primary(0), replica_of(1, 0, 9), replica_of(2, 0, 9)],
             vec![(0, off), (1, off), (2, off)]),
        ];
        for (case, shards, observations, expected) in cases {
            let expected: Vec<(NodeId, WriteQuorum)> =
                expected.into_iter().map(|(n, q)| (NodeId(n), q)).collect();
            assert_eq!(
                write_quorums(&topology, &shards, &observations, 2, false),
                expected,
                "{case}"
            );
        }
    }
}
