//! Whether a cluster node without persistence may start again. It comes back empty; if the
//! cluster still counts it as the primary of slots, it comes back as that primary and every
//! replica of its shard — in every region — full-syncs the empty dataset: the shard's data is
//! gone everywhere. Valkey has no setting against it (valkey-io/valkey#579), and a node started
//! without its `nodes.conf` is no safer: replicas follow their primary's address. So the node
//! starts only once no other node counts it as serving slots — the cluster has replaced it (a
//! replica beside it took the shard over after `cluster-node-timeout`) and it rejoins as a
//! replica of its successor, syncing *from* it. Pure: the views are read by the caller.

use crate::endpoint::Endpoint;

use super::Shard;

/// What the other nodes' views say about starting `node` empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartVerdict {
    /// Every node that answered counts it as serving no slot (a replica, a primary whose slots
    /// were taken over, or unknown to them): it may start.
    Start,
    /// No other node answered: nothing reachable holds data it could wipe — a whole-cluster
    /// restart, or this host cut off (the caller waits its full window before it believes that).
    NoneAnswered,
    /// `listed_by` still count it as the primary of `slots`: its replicas hold the shard's data.
    Wait {
        slots: String,
        listed_by: Vec<String>,
    },
}

/// One other node's view: its address and the shards it reported (`None`: it did not answer).
pub type NodeView = (Endpoint, Option<Vec<Shard>>);

/// The verdict for starting `node` from the other nodes' `views`.
pub fn start_verdict(node: &Endpoint, views: &[NodeView]) -> StartVerdict {
    let mut answered = false;
    let mut slots = None;
    let mut listed_by = Vec::new();
    for (asked, shards) in views.iter().filter(|(asked, _)| asked != node) {
        let Some(shards) = shards else { continue };
        answered = true;
        let serving = shards
            .iter()
            .find(|s| s.slot_count() > 0 && s.primary().is_some_and(|p| &p.endpoint == node));
        if let Some(shard) = serving {
            slots.get_or_insert_with(|| shard.slot_ranges());
            listed_by.push(asked.to_string());
        }
    }
    match slots {
        Some(slots) => StartVerdict::Wait { slots, listed_by },
        None if answered => StartVerdict::Start,
        None => StartVerdict::NoneAnswered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::tests::{node, shard};
    use crate::cluster::{NodeHealth, ShardNode, ShardRole};
    use crate::testing::lab;

    #[test]
    fn a_node_starts_empty_only_once_no_answering_node_counts_it_as_serving_slots() {
        // Node 0 is the one restarting; 1 beside it, 2 and 3 in the other region.
        let topology = lab();
        let at = |n: usize| topology.nodes[n].endpoint.clone();
        let primary = |n| node(&topology, n, ShardRole::Primary, 100);
        let replica = |n| node(&topology, n, ShardRole::Replica, 100);
        let failed = |n: ShardNode| ShardNode {
            health: NodeHealth::Failed,
            ..n
        };
        // As the cluster saw it before the kill, and once node 1 took the shard over.
        let before = vec![shard(vec![primary(0), replica(1), replica(2)], 0..=16383)];
        let marked_failed = vec![shard(
            vec![failed(primary(0)), replica(1), replica(2)],
            0..=16383,
        )];
        let taken_over = vec![
            shard(vec![primary(1), replica(2)], 0..=16383),
            crate::cluster::Shard {
                slots: Vec::new(),
                nodes: vec![failed(primary(0))],
            },
        ];
        let as_replica = vec![shard(vec![primary(1), replica(0), replica(2)], 0..=16383)];
        let wait = |listed_by: &[usize]| StartVerdict::Wait {
            slots: "0-16383".into(),
            listed_by: listed_by.iter().map(|n| at(*n).to_string()).collect(),
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<NodeView>, StartVerdict)> = vec![
            ("every node still counts it as the primary: its replicas would sync the empty dataset",
             vec![(at(1), Some(before.clone())), (at(2), Some(before.clone()))], wait(&[1, 2])),
            ("marked failed, not yet replaced: the slots are still its own",
             vec![(at(1), Some(marked_failed.clone())), (at(2), Some(before.clone()))], wait(&[1, 2])),
            ("replaced where one node knows it, not yet where another does",
             vec![(at(1), Some(taken_over.clone())), (at(2), Some(before.clone()))], wait(&[2])),
            ("replaced everywhere: it rejoins as its successor's replica",
             vec![(at(1), Some(taken_over.clone())), (at(2), Some(taken_over.clone()))], StartVerdict::Start),
            ("it was a replica", vec![(at(1), Some(as_replica.clone()))], StartVerdict::Start),
            ("one view is enough when the others do not answer",
             vec![(at(1), None), (at(2), Some(taken_over.clone()))], StartVerdict::Start),
            ("a silent node proves nothing either way",
             vec![(at(1), None), (at(2), Some(before.clone()))], wait(&[2])),
            ("nobody answers", vec![(at(1), None), (at(2), None)], StartVerdict::NoneAnswered),
            ("its own view (a stale answer from itself) is not asked",
             vec![(at(0), Some(before.clone()))], StartVerdict::NoneAnswered),
        ];
        for (case, views, verdict) in cases {
            assert_eq!(start_verdict(&at(0), &views), verdict, "{case}");
        }
    }
}
