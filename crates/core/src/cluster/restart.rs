//! Whether a cluster node without persistence may start again. It comes back empty; if the
//! cluster still counts it as the primary of slots, it comes back as that primary and every
//! replica of its shard — in every region — full-syncs the empty dataset: the shard's data is
//! gone everywhere. Valkey has no setting against it (valkey-io/valkey#579), and a node started
//! without its `nodes.conf` is no safer: replicas follow their primary's address. So the node
//! starts only once no other node counts it as serving slots — the cluster has replaced it (a
//! replica beside it took the shard over after `cluster-node-timeout`) and it rejoins as a
//! replica of its successor, syncing *from* it. Pure: the views are read by the caller.

use std::collections::BTreeMap;

use crate::endpoint::Endpoint;
use crate::observation::{History, NodeObservation};
use crate::topology::{NodeId, Topology};

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

/// A slot-serving primary whose data does not continue what it held at the last look: it came
/// back without its data while still counted as the slots' primary (started without the guard),
/// and its replicas copy the empty dataset from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmptyPrimary {
    pub node: NodeId,
    pub slots: String,
    pub before: History,
    pub now: History,
}

/// The slot-serving primaries of `shards` whose offset went back since `before` (each node's
/// history at the last look). A takeover keeps the offset (its new primary goes on from it); only
/// a restart without data starts again below it ([`crate::ReplicationInfo::continues`]).
pub fn empty_primaries(
    topology: &Topology,
    shards: &[Shard],
    observations: &[NodeObservation],
    before: &BTreeMap<NodeId, History>,
) -> Vec<EmptyPrimary> {
    shards
        .iter()
        .filter(|s| s.slot_count() > 0)
        .filter_map(|s| {
            let node = topology.node_by_any_address(&s.primary()?.endpoint)?;
            let info = observations.iter().find(|o| o.node == node)?.info()?;
            let before = before.get(&node)?;
            (!info.continues(before)).then(|| EmptyPrimary {
                node,
                slots: s.slot_ranges(),
                before: before.clone(),
                now: info.history(),
            })
        })
        .collect()
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

    #[test]
    fn a_primary_is_empty_when_its_offset_went_back_not_when_a_takeover_renamed_its_history() {
        use crate::testing::{primary, replica_of};
        let topology = lab();
        let at = |offset: u64, id: &str| {
            let mut seen = primary(0);
            if let Ok(info) = seen.state.as_mut() {
                info.offset = offset;
                info.replication_id = id.into();
            }
            seen
        };
        let history = |offset: u64, id: &str| History {
            replication_id: id.into(),
            offset,
            parent: None,
        };
        let shards = vec![shard(
            vec![
                node(&topology, 0, ShardRole::Primary, 0),
                node(&topology, 1, ShardRole::Replica, 0),
            ],
            0..=16383,
        )];
        let before: BTreeMap<NodeId, History> = [
            (NodeId(0), history(5000, "a")),
            (NodeId(1), history(4990, "a")),
        ]
        .into();
        let none = BTreeMap::new();
        #[rustfmt::skip]
        let cases: Vec<(&str, NodeObservation, &BTreeMap<NodeId, History>, bool)> = vec![
            ("back empty: a new history from zero", at(1, "b"), &before, true),
            ("it took over: a new history going on from the old offset", at(5100, "b"), &before, false),
            ("it went on writing", at(6000, "a"), &before, false),
            ("never seen before: nothing to compare", at(1, "b"), &none, false),
        ];
        for (case, now, before, empty) in cases {
            let observations = [now, replica_of(1, 0, 4990)];
            let found = empty_primaries(&topology, &shards, &observations, before);
            assert_eq!(!found.is_empty(), empty, "{case}: {found:?}");
            if empty {
                assert_eq!(found[0].slots, "0-16383", "{case}");
                assert_eq!(found[0].before.offset, 5000, "{case}");
            }
        }
    }
}
