//! Moving every shard's primary to one region — a planned switchover, a failover after a
//! region's loss — and which nodes the cluster may promote by itself afterwards: pure plans.

use serde::{Deserialize, Serialize};

use super::{
    NodeHealth, Shard, ShardNode, ShardRole, region_id, region_name, slot_ranges, uncovered_slots,
};
use crate::endpoint::Endpoint;
use crate::topology::{RegionId, Topology};

/// One node's `cluster-replica-no-failover`, as the region holding its shard's primary wants it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverGuard {
    pub node: Endpoint,
    /// Whether the cluster may promote it by itself (`cluster-replica-no-failover no`).
    pub automatic_failover: bool,
}

/// The nodes whose automatic failover must change so that the cluster replaces a lost primary
/// only within its region — moving a primary across regions is valkey-dr's decision, under its
/// epoch: allowed for the nodes in the region of their shard's primary, refused for every other
/// (a primary's own setting counts once it is a replica). `moved`: the moves done since `shards`
/// were read, whose targets now lead their shards. Nodes that did not answer are left alone.
pub fn failover_guards(
    topology: &Topology,
    shards: &[Shard],
    moved: &[ShardMove],
) -> Vec<FailoverGuard> {
    let region_of = |endpoint: &Endpoint| region_name(topology, endpoint);
    let mut guards = Vec::new();
    for shard in shards.iter().filter(|s| s.slot_count() > 0) {
        let Some(primary) = shard.primary() else {
            continue;
        };
        let leader = moved
            .iter()
            .find(|m| m.from == primary.endpoint)
            .map_or(&primary.endpoint, |m| &m.to);
        let Some(region) = region_of(leader) else {
            continue;
        };
        for node in shard.nodes.iter().filter(|n| n.answered) {
            let allowed = region_of(&node.endpoint).as_ref() == Some(&region);
            if node.automatic_failover != Some(allowed) {
                guards.push(FailoverGuard {
                    node: node.endpoint.clone(),
                    automatic_failover: allowed,
                });
            }
        }
    }
    guards
}

/// One shard's part of an all-shard switchover: its primary hands over to a replica in the
/// region that is to hold the primaries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMove {
    /// The shard's slots, as [`ShardView::slots`] shows them.
    pub slots: String,
    pub from: Endpoint,
    pub to: Endpoint,
    /// The target's cluster id.
    pub to_id: String,
}

/// Why an all-shard move (a switchover, a region failover) may not start. Every shard moves or
/// none does, so one shard that cannot move stops them all, before anything is touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum MoveRefusal {
    #[error("slots {slots} are served by no shard: the cluster is not whole")]
    UncoveredSlots { slots: String },
    #[error("shard {slots} has no primary")]
    NoPrimary { slots: String },
    #[error("shard {slots}: its primary {node} is not online")]
    PrimaryNotOnline { slots: String, node: String },
    #[error(
        "shard {slots} has no online replica of its primary in {region}: add one (CLUSTER REPLICATE) or pick another region"
    )]
    NoReplicaIn { slots: String, region: String },
    /// A region failover takes a shard from a primary it cannot reach only on the operator's
    /// word that it takes no writes: cut off but alive, it would be a second writer.
    #[error(
        "shard {slots}: its primary {node} does not answer, and may still take writes where it stands; once it is down or fenced (stopped, or its region cut off from its clients), confirm with --confirm-down"
    )]
    PrimaryMayStillWrite { slots: String, node: String },
}

/// The moves that put every shard's primary in `to` by a planned switchover: per shard, the
/// online replica in `to` with the highest replication offset ([`best_replica_in`]). Shards
/// whose primary already stands in `to` stay as they are. All or nothing: any shard that cannot
/// move (its primary is not online, no replica there), or a slot no shard serves, refuses the
/// whole switchover.
pub fn plan_switchover(
    topology: &Topology,
    shards: &[Shard],
    to: RegionId,
) -> Result<Vec<ShardMove>, Vec<MoveRefusal>> {
    plan_moves(topology, shards, to, |slots, primary| {
        (primary.health != NodeHealth::Online).then(|| MoveRefusal::PrimaryNotOnline {
            slots: slots.to_string(),
            node: primary.endpoint.to_string(),
        })
    })
}

/// The moves that put every shard's primary in `to` after the loss of the region(s) holding
/// them: the same targets as a switchover, whatever the cluster thinks of the old primaries'
/// health (a survivor's view of a lost region is stale). A primary that did not answer is taken
/// from only when the operator `confirmed_down` that it takes no writes.
pub fn plan_failover(
    topology: &Topology,
    shards: &[Shard],
    to: RegionId,
    confirmed_down: bool,
) -> Result<Vec<ShardMove>, Vec<MoveRefusal>> {
    plan_moves(topology, shards, to, |slots, primary| {
        (!confirmed_down && !primary.answered).then(|| MoveRefusal::PrimaryMayStillWrite {
            slots: slots.to_string(),
            node: primary.endpoint.to_string(),
        })
    })
}

/// Per shard in slot order: no primary, or `refuse_primary` says no → a refusal; primary in `to`
/// → stays; else the move to [`best_replica_in`] `to`.
fn plan_moves(
    topology: &Topology,
    shards: &[Shard],
    to: RegionId,
    refuse_primary: impl Fn(&str, &ShardNode) -> Option<MoveRefusal>,
) -> Result<Vec<ShardMove>, Vec<MoveRefusal>> {
    let mut refusals: Vec<MoveRefusal> = uncovered_slots(shards)
        .into_iter()
        .map(|r| MoveRefusal::UncoveredSlots {
            slots: slot_ranges(&[r]),
        })
        .collect();
    let mut moves = Vec::new();
    let mut ordered: Vec<&Shard> = shards.iter().collect();
    ordered.sort_by_key(|s| s.first_slot());
    // A group without slots (a primary taken over while it was away, its replicas) has nothing
    // to move.
    for shard in ordered.into_iter().filter(|s| s.slot_count() > 0) {
        let slots = shard.slot_ranges();
        let Some(primary) = shard.primary() else {
            refusals.push(MoveRefusal::NoPrimary { slots });
            continue;
        };
        if let Some(refusal) = refuse_primary(&slots, primary) {
            refusals.push(refusal);
            continue;
        }
        if in_region(topology, &primary.endpoint, to) {
            continue;
        }
        match best_replica_in(topology, shard, to) {
            Some(target) => moves.push(ShardMove {
                slots,
                from: primary.endpoint.clone(),
                to: target.endpoint.clone(),
                to_id: target.id.clone(),
            }),
            None => refusals.push(MoveRefusal::NoReplicaIn {
                slots,
                region: topology.region(to).name.clone(),
            }),
        }
    }
    if refusals.is_empty() {
        Ok(moves)
    } else {
        Err(refusals)
    }
}

fn in_region(topology: &Topology, endpoint: &Endpoint, region: RegionId) -> bool {
    region_id(topology, endpoint) == Some(region)
}

/// The shard's online replica in `region` with the highest replication offset (ties: the
/// earlier node in the configuration).
pub fn best_replica_in<'a>(
    topology: &Topology,
    shard: &'a Shard,
    region: RegionId,
) -> Option<&'a ShardNode> {
    let config_order = |endpoint: &Endpoint| {
        topology
            .node_by_any_address(endpoint)
            .map_or(usize::MAX, |id| id.0)
    };
    shard
        .nodes
        .iter()
        .filter(|n| {
            n.role == ShardRole::Replica
                && n.health == NodeHealth::Online
                && in_region(topology, &n.endpoint, region)
        })
        .max_by_key(|n| {
            (
                n.replication_offset,
                std::cmp::Reverse(config_order(&n.endpoint)),
            )
        })
}

/// Why a target may not take its shard over now, though it was chosen for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TakeoverRefusal {
    /// It holds less than it held when chosen (caught up with its paused primary, or seen at
    /// discovery): restarted empty since, or resyncing. Taken over, its shard would be empty, and
    /// the old primary, following it, would drop everything it holds.
    #[error(
        "holds replication offset {holds}, below the {needed} it held when chosen (restarted empty since?): not taken over"
    )]
    FellBehind { holds: u64, needed: u64 },
    /// A full resync is running: what it holds is being replaced.
    #[error("a full resync is running on it: not taken over")]
    Resyncing,
}

/// Whether a target, as it says it is just before its `TAKEOVER`, still holds the `needed`
/// offset it held when chosen.
pub fn may_take_over(
    seen: &crate::observation::ReplicationInfo,
    needed: u64,
) -> Result<(), TakeoverRefusal> {
    use crate::observation::Role;
    if matches!(
        seen.role,
        Role::Replica {
            sync_in_progress: true,
            ..
        }
    ) {
        return Err(TakeoverRefusal::Resyncing);
    }
    if seen.offset < needed {
        return Err(TakeoverRefusal::FellBehind {
            holds: seen.offset,
            needed,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::tests::{node, shard};
    use crate::testing::lab;

    #[test]
    fn a_switchover_moves_every_shard_or_none() {
        // Nodes 0, 1 in us-east-1, 2, 3 in us-east-2 (the lab's topology).
        let topology = lab();
        let to = RegionId(1);
        let primary = |n| node(&topology, n, ShardRole::Primary, 100);
        let replica = |n, offset| node(&topology, n, ShardRole::Replica, offset);
        let failed = |n| ShardNode {
            health: NodeHealth::Failed,
            ..replica(n, 100)
        };
        let halves = |low: Vec<ShardNode>, high: Vec<ShardNode>| {
            vec![shard(low, 0..=8191), shard(high, 8192..=16383)]
        };
        let moved = |slots: &str, from: usize, to: usize| ShardMove {
            slots: slots.into(),
            from: topology.nodes[from].endpoint.clone(),
            to: topology.nodes[to].endpoint.clone(),
            to_id: format!("id{to}"),
        };
        type Planned = Result<Vec<ShardMove>, Vec<MoveRefusal>>;
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<Shard>, Planned)> = vec![
            ("each shard to its most advanced replica in the region",
             halves(vec![primary(0), replica(1, 100), replica(2, 90), replica(3, 95)],
                    vec![primary(1), replica(0, 100), replica(2, 100), replica(3, 100)]),
             Ok(vec![moved("0-8191", 0, 3), moved("8192-16383", 1, 2)])),
            ("a shard already there stays",
             halves(vec![primary(2), replica(0, 100)], vec![primary(1), replica(3, 100)]),
             Ok(vec![moved("8192-16383", 1, 3)])),
            ("one shard without a replica there: nothing moves",
             halves(vec![primary(0), replica(2, 100)], vec![primary(1), replica(0, 100), failed(3)]),
             Err(vec![MoveRefusal::NoReplicaIn { slots: "8192-16383".into(), region: "us-east-2".into() }])),
            ("a shard without a primary, and slots nobody serves",
             vec![shard(vec![replica(0, 100), replica(2, 100)], 0..=8191)],
             Err(vec![MoveRefusal::UncoveredSlots { slots: "8192-16383".into() },
                      MoveRefusal::NoPrimary { slots: "0-8191".into() }])),
            ("a primary the cluster marks failed",
             halves(vec![ShardNode { health: NodeHealth::Failed, ..primary(0) }, replica(2, 100)],
                    vec![primary(1), replica(3, 100)]),
             Err(vec![MoveRefusal::PrimaryNotOnline { slots: "0-8191".into(), node: topology.nodes[0].endpoint.to_string() }])),
        ];
        for (case, shards, expected) in cases {
            assert_eq!(plan_switchover(&topology, &shards, to), expected, "{case}");
        }
    }

    #[test]
    fn a_region_failover_takes_a_silent_primary_only_when_confirmed_down() {
        // Nodes 0, 1 in us-east-1, 2, 3 in us-east-2; us-east-1 is lost: the survivors' view
        // still names its nodes primaries, some marked failed, some not yet.
        let topology = lab();
        let to = RegionId(1);
        let primary = |n, answered| ShardNode {
            answered,
            ..node(&topology, n, ShardRole::Primary, 100)
        };
        let replica = |n, offset| node(&topology, n, ShardRole::Replica, offset);
        // Which of the old primaries 0 and 1 answered; node 0 is marked failed.
        let shards = |answered: [bool; 2]| {
            vec![
                shard(
                    vec![
                        ShardNode {
                            health: NodeHealth::Failed,
                            ..primary(0, answered[0])
                        },
                        replica(2, 90),
                        replica(3, 95),
                    ],
                    0..=8191,
                ),
                shard(vec![primary(1, answered[1]), replica(2, 100)], 8192..=16383),
            ]
        };
        let moved = |slots: &str, from: usize, to: usize| ShardMove {
            slots: slots.into(),
            from: topology.nodes[from].endpoint.clone(),
            to: topology.nodes[to].endpoint.clone(),
            to_id: format!("id{to}"),
        };
        let both = vec![moved("0-8191", 0, 3), moved("8192-16383", 1, 2)];
        let silent = |slots: &str, n: usize| MoveRefusal::PrimaryMayStillWrite {
            slots: slots.into(),
            node: topology.nodes[n].endpoint.to_string(),
        };
        type Planned = Result<Vec<ShardMove>, Vec<MoveRefusal>>;
        #[rustfmt::skip]
        let cases: Vec<(&str, [bool; 2], bool, Planned)> = vec![
            ("no old primary answers, none confirmed down: nothing moves",
             [false, false], false, Err(vec![silent("0-8191", 0), silent("8192-16383", 1)])),
            ("one answers (it is paused first), the other is silent: still refused",
             [false, true], false, Err(vec![silent("0-8191", 0)])),
            ("confirmed down: every shard to its most advanced replica, failed or not",
             [false, false], true, Ok(both.clone())),
            ("every old primary answers, one marked failed: no confirmation needed",
             [true, true], false, Ok(both)),
        ];
        for (case, answered, confirmed, expected) in cases {
            assert_eq!(
                plan_failover(&topology, &shards(answered), to, confirmed),
                expected,
                "{case}"
            );
        }
        // A shard without a replica in the surviving region cannot move, confirmed or not.
        let stranded = vec![shard(vec![primary(0, false), replica(1, 100)], 0..=16383)];
        assert_eq!(
            plan_failover(&topology, &stranded, to, true),
            Err(vec![MoveRefusal::NoReplicaIn {
                slots: "0-16383".into(),
                region: "us-east-2".into()
            }])
        );
    }

    #[test]
    fn the_cluster_may_promote_only_the_nodes_beside_their_shards_primary() {
        // Nodes 0, 1 in us-east-1, 2, 3 in us-east-2 (the lab's topology).
        let topology = lab();
        let with = |n, role, automatic| ShardNode {
            automatic_failover: automatic,
            ..node(&topology, n, role, 100)
        };
        let guard = |n: usize, allowed| FailoverGuard {
            node: topology.nodes[n].endpoint.clone(),
            automatic_failover: allowed,
        };
        let silent = ShardNode {
            answered: false,
            ..with(3, ShardRole::Replica, Some(true))
        };
        let shards = vec![shard(
            vec![
                with(0, ShardRole::Primary, None),
                with(1, ShardRole::Replica, Some(true)),
                with(2, ShardRole::Replica, Some(false)),
                silent,
            ],
            0..=16383,
        )];
        let to_2 = ShardMove {
            slots: "0-16383".into(),
            from: topology.nodes[0].endpoint.clone(),
            to: topology.nodes[2].endpoint.clone(),
            to_id: "id2".into(),
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<ShardMove>, Vec<FailoverGuard>)> = vec![
            ("in place: only the primary's unread setting is set; a node that did not answer is left alone",
             vec![], vec![guard(0, true)]),
            ("moved to us-east-2: every node changes sides",
             vec![to_2], vec![guard(0, false), guard(1, false), guard(2, true)]),
        ];
        for (case, moved, expected) in cases {
            assert_eq!(
                failover_guards(&topology, &shards, &moved),
                expected,
                "{case}"
            );
        }
    }

    #[test]
    fn a_target_takes_over_only_while_it_holds_what_it_held_when_chosen() {
        use crate::observation::{ReplicationInfo, Role};
        let seen = |offset, sync_in_progress: bool| ReplicationInfo {
            role: Role::Replica {
                master: Endpoint::new("127.0.0.1", 7000),
                link_up: !sync_in_progress,
                sync_in_progress,
            },
            offset,
            replication_id: "a".repeat(40),
            replication_id2: "0".repeat(40),
            replication_id2_until: None,
            connected_replicas: 0,
            master_last_io_s: Some(0),
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, ReplicationInfo, u64, Result<(), TakeoverRefusal>)> = vec![
            ("caught up and still there", seen(5_000, false), 5_000, Ok(())),
            ("further on (its primary wrote before the pause took)", seen(5_100, false), 5_000, Ok(())),
            ("restarted empty, not synced yet (Valkey says offset 1)", seen(1, false), 5_000,
             Err(TakeoverRefusal::FellBehind { holds: 1, needed: 5_000 })),
            ("restarted empty and resyncing", seen(0, true), 5_000, Err(TakeoverRefusal::Resyncing)),
            ("resynced since: it holds all again", seen(5_200, false), 5_000, Ok(())),
            ("nothing known to hold (a failover's target seen at 0)", seen(0, false), 0, Ok(())),
        ];
        for (case, seen, needed, expected) in cases {
            assert_eq!(may_take_over(&seen, needed), expected, "{case}");
        }
    }
}
