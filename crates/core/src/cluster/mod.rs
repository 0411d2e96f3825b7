//! Valkey cluster mode: the shards of one cluster stretched over the regions, as discovered from
//! the nodes (never configured by hand), and where each shard's nodes stand against the regions.
//! Pure: the engine reads the shards, [`shard_views`] places them.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::endpoint::Endpoint;
use crate::observation::ReplicationInfo;
use crate::topology::{RegionId, Topology};

mod fence;
mod moves;
mod name;
mod restart;

pub use fence::{
    RegionVerdict, heard_by_a_replica, observations_of, region_verdict, unheard_for, write_quorums,
};
pub use moves::{
    FailoverGuard, MoveRefusal, ShardMove, TakeoverRefusal, best_replica_in, failover_guards,
    may_take_over, plan_failover, plan_switchover,
};
pub use name::{ClusterEpoch, MoveState, move_state, records};
pub use restart::{EmptyPrimary, StartVerdict, empty_primaries, start_verdict};

/// The number of hash slots of a Valkey cluster.
pub const SLOTS: u32 = 16_384;

/// One shard: the slots it serves and its nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub slots: Vec<RangeInclusive<u16>>,
    pub nodes: Vec<ShardNode>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardNode {
    /// The node's cluster id (40 hex characters).
    pub id: String,
    /// Where clients reach it: its announced address and its TLS port when it has one.
    pub endpoint: Endpoint,
    pub role: ShardRole,
    pub replication_offset: u64,
    pub health: NodeHealth,
    /// It answered when its offset was read — whatever the cluster thinks of it (a survivor's
    /// view of a lost region is stale, and a node marked failed may still answer us).
    pub answered: bool,
    /// Whether the cluster may promote it by itself when its primary fails
    /// (`cluster-replica-no-failover no`); `None` when it was not read.
    pub automatic_failover: Option<bool>,
    /// Whether the cluster may move it, as a replica, to a shard left without one
    /// (`cluster-allow-replica-migration yes`); `None` when it was not read.
    pub replica_migration: Option<bool>,
    /// Its own account of its replication, as read with its offset (`None`: it did not answer).
    pub replication: Option<ReplicationInfo>,
    /// How often it pings its replicas, in seconds (`repl-ping-replica-period`); `None` when it
    /// was not read.
    pub ping_replicas_every_s: Option<u64>,
    /// Its `min-replicas-to-write` and `min-replicas-max-lag` as read; `None` when not read.
    pub write_quorum: Option<crate::self_fence::WriteQuorum>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardRole {
    Primary,
    Replica,
}

/// How a node stands, worst last: what the cluster thinks of it, and whether it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeHealth {
    Online,
    /// A replica that has not loaded its primary's data yet (offset 0).
    Loading,
    /// It did not answer when asked for its offset (the cluster may not have noticed yet).
    Unanswered,
    /// Marked failed (`FAIL`) by the cluster.
    Failed,
}

impl Shard {
    /// The shard's primary, if the cluster names one.
    pub fn primary(&self) -> Option<&ShardNode> {
        self.nodes.iter().find(|n| n.role == ShardRole::Primary)
    }

    /// Its slot ranges as people read them: `0-5460`, several joined by commas.
    pub fn slot_ranges(&self) -> String {
        slot_ranges(&self.slots)
    }

    /// Its first slot (shards are shown in slot order).
    pub fn first_slot(&self) -> u16 {
        self.slots.iter().map(|r| *r.start()).min().unwrap_or(0)
    }

    /// How many slots it serves.
    pub fn slot_count(&self) -> u32 {
        self.slots
            .iter()
            .map(|r| u32::from(*r.end()) - u32::from(*r.start()) + 1)
            .sum()
    }
}

/// Slot ranges as people read them: `0-5460`, several joined by commas.
pub fn slot_ranges(ranges: &[RangeInclusive<u16>]) -> String {
    ranges
        .iter()
        .map(|r| format!("{}-{}", r.start(), r.end()))
        .collect::<Vec<_>>()
        .join(",")
}

/// One shard as status shows it: its slots, its nodes placed in their regions, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardView {
    /// `0-5460`, or several ranges joined by commas.
    pub slots: String,
    pub slot_count: u32,
    pub primary: Option<PlacedNode>,
    pub replicas: Vec<PlacedNode>,
    pub findings: Vec<ShardFinding>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedNode {
    pub node: String,
    /// The configured region holding this address; `None` for a node the config does not list.
    pub region: Option<String>,
    pub offset: u64,
    /// How far behind the shard's primary (0 for the primary itself).
    pub lag_bytes: u64,
    pub health: NodeHealth,
    /// Whether the cluster may promote it by itself (`cluster-replica-no-failover no`).
    pub automatic_failover: Option<bool>,
    /// Whether the cluster may move it to another shard (`cluster-allow-replica-migration yes`).
    pub replica_migration: Option<bool>,
}

/// What is wrong with a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "finding", rename_all = "snake_case")]
pub enum ShardFinding {
    /// No node of the shard is its primary: its slots take no write.
    NoPrimary,
    /// The primary stands outside the writer region (the cluster moved it by itself, or a move
    /// stopped halfway).
    PrimaryOutsideWriterRegion { region: Option<String> },
    /// No replica of the shard in this region: losing the writer region loses the shard.
    NoReplicaIn { region: String },
    /// A group that serves no slot: a primary taken over while it was away (it rejoins as a
    /// replica when back), and the replicas still naming it.
    NoSlots,
    /// A node of the shard that no configured region lists.
    UnknownNode { node: String },
    /// A node the cluster marks failed or loading.
    NotOnline { node: String, health: NodeHealth },
    /// A replica outside its primary's region that the cluster may promote by itself: the
    /// cluster bus would move the shard's primary across regions on its own.
    MayFailOverAcrossRegions { node: String },
    /// A replica in its primary's region that the cluster may not promote: a lost primary is not
    /// replaced there.
    NoInRegionFailover { node: String },
    /// A node the cluster may move to another shard by itself (replica migration): a shard that
    /// loses its only replica in a region to it then has none there.
    MayMoveToAnotherShard { node: String },
}

/// The configured region holding `endpoint`; `None` for a node no region lists.
fn region_id(topology: &Topology, endpoint: &Endpoint) -> Option<RegionId> {
    topology
        .node_by_any_address(endpoint)
        .map(|id| topology.node(id).region)
}

/// [`region_id`]'s name.
fn region_name(topology: &Topology, endpoint: &Endpoint) -> Option<String> {
    region_id(topology, endpoint).map(|r| topology.region(r).name.clone())
}

/// Where the primaries belong as long as nothing records it: the configured region holding the
/// primaries of the most slots (after an all-shard switchover, its target; halfway through a
/// move, the side most slots are on), `configured` when no primary stands in a configured
/// region or two regions hold as many slots.
pub fn writer_region(topology: &Topology, shards: &[Shard], configured: RegionId) -> RegionId {
    let mut slots = vec![0u32; topology.regions.len()];
    for shard in shards {
        if let Some(region) = shard
            .primary()
            .and_then(|p| region_id(topology, &p.endpoint))
        {
            slots[region.0] += shard.slot_count();
        }
    }
    let most = slots.iter().copied().max().unwrap_or(0);
    let holding_most: Vec<usize> = (0..slots.len())
        .filter(|r| most > 0 && slots[*r] == most)
        .collect();
    match holding_most.as_slice() {
        [only] => RegionId(*only),
        _ => configured,
    }
}

/// Every shard placed against the configured regions, in slot order; `writer_region` is where the
/// primaries belong.
pub fn shard_views(
    topology: &Topology,
    writer_region: RegionId,
    shards: &[Shard],
) -> Vec<ShardView> {
    let region_of = |endpoint: &Endpoint| region_name(topology, endpoint);
    let mut views: Vec<(u16, ShardView)> = shards
        .iter()
        .map(|shard| {
            let primary_offset = shard.primary().map_or(0, |p| p.replication_offset);
            let place = |n: &ShardNode| PlacedNode {
                node: n.endpoint.to_string(),
                region: region_of(&n.endpoint),
                offset: n.replication_offset,
                lag_bytes: primary_offset.saturating_sub(n.replication_offset),
                health: n.health,
                automatic_failover: n.automatic_failover,
                replica_migration: n.replica_migration,
            };
            let primary = shard.primary().map(place);
            let replicas: Vec<PlacedNode> = shard
                .nodes
                .iter()
                .filter(|n| n.role == ShardRole::Replica)
                .map(place)
                .collect();
            let mut findings = Vec::new();
            let serves = shard.slot_count() > 0;
            match &primary {
                _ if !serves => findings.push(ShardFinding::NoSlots),
                None => findings.push(ShardFinding::NoPrimary),
                Some(p) if p.region.as_deref() != Some(&topology.region(writer_region).name) => {
                    findings.push(ShardFinding::PrimaryOutsideWriterRegion {
                        region: p.region.clone(),
                    })
                }
                Some(_) => {}
            }
            for region in topology.regions.iter().filter(|_| serves) {
                if !replicas
                    .iter()
                    .any(|r| r.region.as_deref() == Some(&region.name))
                {
                    findings.push(ShardFinding::NoReplicaIn {
                        region: region.name.clone(),
                    });
                }
            }
            for r in replicas.iter().filter(|_| serves) {
                let beside_primary = primary.as_ref().is_some_and(|p| p.region == r.region);
                match (r.automatic_failover, beside_primary) {
                    (Some(true), false) => findings.push(ShardFinding::MayFailOverAcrossRegions {
                        node: r.node.clone(),
                    }),
                    (Some(false), true) => findings.push(ShardFinding::NoInRegionFailover {
                        node: r.node.clone(),
                    }),
                    _ => {}
                }
            }
            for n in primary.iter().chain(&replicas) {
                // A primary too: once its slots are taken over it rejoins as a replica.
                if serves && n.replica_migration == Some(true) {
                    findings.push(ShardFinding::MayMoveToAnotherShard {
                        node: n.node.clone(),
                    });
                }
                if n.region.is_none() {
                    findings.push(ShardFinding::UnknownNode {
                        node: n.node.clone(),
                    });
                }
                if n.health != NodeHealth::Online {
                    findings.push(ShardFinding::NotOnline {
                        node: n.node.clone(),
                        health: n.health,
                    });
                }
            }
            (
                shard.first_slot(),
                ShardView {
                    slots: shard.slot_ranges(),
                    slot_count: shard.slot_count(),
                    primary,
                    replicas,
                    findings,
                },
            )
        })
        .collect();
    // Serving shards in slot order, then the groups without slots.
    views.sort_by_key(|(first, view)| (view.slot_count == 0, *first));
    views.into_iter().map(|(_, v)| v).collect()
}

/// The slots no shard serves (a cluster that is not whole refuses them), as ranges.
pub fn uncovered_slots(shards: &[Shard]) -> Vec<RangeInclusive<u16>> {
    let mut covered = vec![false; SLOTS as usize];
    for range in shards.iter().flat_map(|s| &s.slots) {
        for slot in range.clone() {
            covered[usize::from(slot)] = true;
        }
    }
    let mut gaps = Vec::new();
    let mut start = None;
    for (slot, is) in covered.iter().enumerate() {
        match (is, start) {
            (false, None) => start = Some(slot as u16),
            (true, Some(s)) => {
                gaps.push(s..=slot as u16 - 1);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        gaps.push(s..=(SLOTS - 1) as u16);
    }
    gaps
}

/// `shards` as one node's gossip shows them, each replica and each primary without slots moved
/// under the primary it names itself (its `INFO replication`, read from it). A node's new role
/// reaches its peers through its own pings, which a long `cluster-node-timeout` spaces out
/// (every half of it): right after a takeover the asked node may still show the old primary as
/// an empty primary with its old replicas under it, and the new primary with none — and a
/// failover planned on that would find no replica where there are several. A replica of a
/// replica goes where that one goes. A primary that serves slots stays where the view has it:
/// which slots a node serves is the cluster's word, not the node's. A node that did not answer,
/// or names a primary the view does not list, stays where it is.
pub fn placed_by_their_own_account(mut shards: Vec<Shard>) -> Vec<Shard> {
    let moves = moves_to_own_account(&shards);
    let mut placed = Vec::new();
    // From the last, so that each removal leaves the indexes before it valid.
    for (i, j, to) in moves.into_iter().rev() {
        let mut node = shards[i].nodes.remove(j);
        node.role = ShardRole::Replica;
        placed.push((to, node));
    }
    for (to, node) in placed.into_iter().rev() {
        shards[to].nodes.push(node);
    }
    shards.retain(|s| !s.nodes.is_empty());
    shards
}

/// The moves of [`placed_by_their_own_account`]: (shard, node in it, shard it belongs to).
fn moves_to_own_account(shards: &[Shard]) -> Vec<(usize, usize, usize)> {
    let serves_slots = |shard: &Shard, node: &ShardNode| {
        node.role == ShardRole::Primary && !shard.slots.is_empty()
    };
    let names = |node: &ShardNode| node.replication.as_ref()?.master().cloned();
    let node_at = |endpoint: &Endpoint| {
        shards.iter().enumerate().find_map(|(at, s)| {
            let node = s.nodes.iter().find(|n| n.endpoint == *endpoint)?;
            Some((at, s, node))
        })
    };
    // Where a node belongs: follow what it names, through replicas of replicas, until a node
    // that names none (or serves slots); at most as many hops as there are nodes.
    let hops = shards.iter().map(|s| s.nodes.len()).sum::<usize>();
    let belongs = |shard: &Shard, node: &ShardNode| -> Option<usize> {
        if serves_slots(shard, node) {
            return None;
        }
        let mut named = names(node)?;
        for _ in 0..hops {
            let (at, s, n) = node_at(&named)?;
            match names(n) {
                Some(next) if !serves_slots(s, n) && n.endpoint != node.endpoint => named = next,
                _ => return Some(at),
            }
        }
        None
    };
    shards
        .iter()
        .enumerate()
        .flat_map(|(i, shard)| {
            shard
                .nodes
                .iter()
                .enumerate()
                .filter_map(move |(j, node)| Some((i, j, belongs(shard, node)?)))
        })
        .filter(|(i, _, to)| i != to)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::lab;

    pub(crate) fn node(topology: &Topology, n: usize, role: ShardRole, offset: u64) -> ShardNode {
        ShardNode {
            id: format!("id{n}"),
            endpoint: topology.nodes[n].endpoint.clone(),
            role,
            replication_offset: offset,
            health: NodeHealth::Online,
            answered: true,
            automatic_failover: None,
            replica_migration: None,
            replication: None,
            ping_replicas_every_s: Some(1),
            write_quorum: None,
        }
    }

    pub(crate) fn shard(nodes: Vec<ShardNode>, slots: RangeInclusive<u16>) -> Shard {
        Shard {
            slots: vec![slots],
            nodes,
        }
    }

    /// Each shard: whether it serves no slot, and its nodes' ids and roles.
    type Placed = Vec<(bool, Vec<(String, ShardRole)>)>;

    #[test]
    fn replicas_are_placed_under_the_primary_they_name_themselves() {
        use crate::testing::{primary, replica_of};
        // The lab's topology: nodes 0, 1 in us-east-1, 2, 3 in us-east-2.
        let topology = lab();
        let says =
            |n: usize, role: ShardRole, own: crate::observation::NodeObservation| ShardNode {
                replication: own.state.ok(),
                ..node(&topology, n, role, 100)
            };
        let slotless = |nodes| Shard {
            slots: Vec::new(),
            nodes,
        };
        let ids = |shards: &[Shard]| -> Placed {
            shards
                .iter()
                .map(|s| {
                    let nodes = s.nodes.iter().map(|n| (n.id.clone(), n.role)).collect();
                    (s.slots.is_empty(), nodes)
                })
                .collect()
        };
        let (p, r) = (ShardRole::Primary, ShardRole::Replica);
        let want =
            |shards: &[(bool, &[(usize, ShardRole)])]| -> Vec<(bool, Vec<(String, ShardRole)>)> {
                shards
                    .iter()
                    .map(|(slotless, nodes)| {
                        (
                            *slotless,
                            nodes
                                .iter()
                                .map(|(n, role)| (format!("id{n}"), *role))
                                .collect(),
                        )
                    })
                    .collect()
            };
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<Shard>, Placed)> = vec![
            ("the view agrees with every node: unchanged",
             vec![shard(vec![says(0, p, primary(0)), says(1, r, replica_of(1, 0, 100))], 0..=16383)],
             want(&[(false, &[(0, p), (1, r)])])),
            // Right after a takeover, seen by a node that has not heard from the old primary
            // since: the old primary an empty primary with its old replica, the new one alone.
            ("an old primary and its old replica, following the new primary (one through the other)",
             vec![
                 shard(vec![says(2, p, primary(2))], 0..=16383),
                 slotless(vec![says(0, p, replica_of(0, 2, 100)), says(1, r, replica_of(1, 0, 100))]),
             ],
             want(&[(false, &[(2, p), (0, r), (1, r)])])),
            ("an empty primary that still is one keeps its replica",
             vec![
                 shard(vec![says(2, p, primary(2))], 0..=16383),
                 slotless(vec![says(0, p, primary(0)), says(1, r, replica_of(1, 0, 100))]),
             ],
             want(&[(false, &[(2, p)]), (true, &[(0, p), (1, r)])])),
            ("a primary serving slots stays, whatever it says of itself",
             vec![
                 shard(vec![says(0, p, replica_of(0, 2, 100))], 0..=8191),
                 shard(vec![says(2, p, primary(2))], 8192..=16383),
             ],
             want(&[(false, &[(0, p)]), (false, &[(2, p)])])),
            ("a node that did not answer stays where the view has it",
             vec![
                 shard(vec![says(2, p, primary(2))], 0..=16383),
                 slotless(vec![node(&topology, 0, p, 0), says(1, r, replica_of(1, 0, 100))]),
             ],
             want(&[(false, &[(2, p)]), (true, &[(0, p), (1, r)])])),
            ("a replica naming a node the view does not list stays",
             vec![shard(vec![says(0, p, primary(0)), says(1, r, replica_of(1, 3, 100))], 0..=16383)],
             want(&[(false, &[(0, p), (1, r)])])),
        ];
        for (name, view, placed) in cases {
            assert_eq!(ids(&placed_by_their_own_account(view)), placed, "{name}");
        }
    }

    #[test]
    fn each_shard_is_placed_in_its_regions_with_what_is_wrong() {
        // The lab's topology: nodes 0, 1 in us-east-1 (the writer region), 2, 3 in us-east-2.
        let topology = lab();
        let writer_region = RegionId(0);
        let healthy = shard(
            vec![
                node(&topology, 0, ShardRole::Primary, 100),
                node(&topology, 1, ShardRole::Replica, 100),
                node(&topology, 2, ShardRole::Replica, 90),
            ],
            0..=8191,
        );
        let stranger = ShardNode {
            endpoint: Endpoint::new("10.9.9.9", 6379),
            ..node(&topology, 3, ShardRole::Replica, 50)
        };
        let failed = ShardNode {
            health: NodeHealth::Failed,
            ..node(&topology, 1, ShardRole::Replica, 0)
        };
        let automatic = |n, allowed| ShardNode {
            automatic_failover: Some(allowed),
            ..node(&topology, n, ShardRole::Replica, 100)
        };
        let migrating = |n, role| ShardNode {
            replica_migration: Some(true),
            ..node(&topology, n, role, 100)
        };
        let staying = |n, role| ShardNode {
            replica_migration: Some(false),
            ..node(&topology, n, role, 100)
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, Shard, Vec<ShardFinding>)> = vec![
            ("primary and a replica in the writer region, a replica in the other", healthy.clone(), vec![]),
            ("no primary: its slots take no write",
             shard(vec![node(&topology, 1, ShardRole::Replica, 100), node(&topology, 2, ShardRole::Replica, 100)], 0..=8191),
             vec![ShardFinding::NoPrimary]),
            ("the primary moved to the other region by itself",
             shard(vec![node(&topology, 2, ShardRole::Primary, 100), node(&topology, 0, ShardRole::Replica, 100)], 0..=8191),
             vec![ShardFinding::PrimaryOutsideWriterRegion { region: Some("us-east-2".into()) },
                  ShardFinding::NoReplicaIn { region: "us-east-2".into() }]),
            ("no replica outside the writer region",
             shard(vec![node(&topology, 0, ShardRole::Primary, 100), node(&topology, 1, ShardRole::Replica, 100)], 0..=8191),
             vec![ShardFinding::NoReplicaIn { region: "us-east-2".into() }]),
            ("a node no region lists, a node marked failed",
             shard(vec![node(&topology, 0, ShardRole::Primary, 100), failed, node(&topology, 2, ShardRole::Replica, 100), stranger], 0..=8191),
             vec![ShardFinding::NotOnline { node: topology.nodes[1].endpoint.to_string(), health: NodeHealth::Failed },
                  ShardFinding::UnknownNode { node: "10.9.9.9:6379".into() }]),
            ("the cluster may promote the replica in the other region, not the one beside the primary",
             shard(vec![node(&topology, 0, ShardRole::Primary, 100), automatic(1, false), automatic(2, true)], 0..=8191),
             vec![ShardFinding::NoInRegionFailover { node: topology.nodes[1].endpoint.to_string() },
                  ShardFinding::MayFailOverAcrossRegions { node: topology.nodes[2].endpoint.to_string() }]),
            ("guarded: only the replica beside the primary may be promoted by the cluster",
             shard(vec![node(&topology, 0, ShardRole::Primary, 100), automatic(1, true), automatic(2, false)], 0..=8191),
             vec![]),
            ("the cluster may move the primary (once a replica) and the other region's replica to another shard",
             shard(vec![migrating(0, ShardRole::Primary), staying(1, ShardRole::Replica), migrating(2, ShardRole::Replica)], 0..=8191),
             vec![ShardFinding::MayMoveToAnotherShard { node: topology.nodes[0].endpoint.to_string() },
                  ShardFinding::MayMoveToAnotherShard { node: topology.nodes[2].endpoint.to_string() }]),
            ("a group without slots is not asked to stay",
             Shard { slots: vec![], nodes: vec![migrating(0, ShardRole::Primary)] },
             vec![ShardFinding::NoSlots]),
        ];
        for (case, shard, findings) in cases {
            let views = shard_views(&topology, writer_region, std::slice::from_ref(&shard));
            assert_eq!(views[0].findings, findings, "{case}");
        }
        let views = shard_views(&topology, writer_region, &[healthy]);
        assert_eq!(views[0].slots, "0-8191");
        assert_eq!(views[0].replicas[1].lag_bytes, 10);
        assert_eq!(views[0].replicas[1].region.as_deref(), Some("us-east-2"));
    }

    #[test]
    fn the_primaries_belong_where_those_of_the_most_slots_are() {
        // Nodes 0, 1 in us-east-1 (configured), 2, 3 in us-east-2.
        let topology = lab();
        let (east1, east2) = (RegionId(0), RegionId(1));
        let led_by = |n, slots| shard(vec![node(&topology, n, ShardRole::Primary, 0)], slots);
        let stranger = ShardNode {
            endpoint: Endpoint::new("10.9.9.9", 6379),
            ..node(&topology, 0, ShardRole::Primary, 0)
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<Shard>, RegionId)> = vec![
            ("every primary in us-east-1", vec![led_by(0, 0..=8191), led_by(1, 8192..=16383)], east1),
            ("every primary moved to us-east-2", vec![led_by(2, 0..=8191), led_by(3, 8192..=16383)], east2),
            ("halfway: most slots in us-east-2", vec![led_by(0, 0..=99), led_by(3, 100..=16383)], east2),
            ("as many slots on each side", vec![led_by(0, 0..=8191), led_by(2, 8192..=16383)], east1),
            ("no primary anywhere", vec![shard(vec![node(&topology, 2, ShardRole::Replica, 0)], 0..=16383)], east1),
            ("a primary no region lists", vec![shard(vec![stranger], 0..=16383)], east1),
            ("no shard", vec![], east1),
        ];
        for (case, shards, expected) in cases {
            assert_eq!(writer_region(&topology, &shards, east1), expected, "{case}");
        }
    }

    #[test]
    fn uncovered_slots_are_the_gaps_between_the_shards() {
        let serving = |slots: Vec<RangeInclusive<u16>>| Shard {
            slots,
            nodes: vec![],
        };
        assert_eq!(uncovered_slots(&[serving(vec![0..=16383])]), vec![]);
        assert_eq!(
            uncovered_slots(&[serving(vec![0..=99]), serving(vec![200..=16000])]),
            vec![100..=199, 16001..=16383]
        );
        assert_eq!(uncovered_slots(&[]), vec![0..=16383]);
    }
}
