//! Valkey cluster mode: the shards of one cluster stretched over the regions, as discovered from
//! the nodes (never configured by hand), and where each shard's nodes stand against the regions.
//! Pure: the engine reads the shards, [`shard_views`] places them.

use std::ops::RangeInclusive;

use serde::Serialize;

use crate::endpoint::Endpoint;
use crate::topology::{RegionId, Topology};

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardRole {
    Primary,
    Replica,
}

/// How a node stands, worst last: what the cluster thinks of it, and whether it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardView {
    /// `0-5460`, or several ranges joined by commas.
    pub slots: String,
    pub slot_count: u32,
    pub primary: Option<PlacedNode>,
    pub replicas: Vec<PlacedNode>,
    pub findings: Vec<ShardFinding>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
}

/// What is wrong with a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
}

/// The name of the configured region holding `endpoint`; `None` for a node no region lists.
fn region_name(topology: &Topology, endpoint: &Endpoint) -> Option<String> {
    topology
        .node_by_any_address(endpoint)
        .map(|id| topology.region_of(id).name.clone())
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

/// One node's `cluster-replica-no-failover`, as the region holding its shard's primary wants it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    topology
        .node_by_any_address(endpoint)
        .is_some_and(|id| topology.node(id).region == region)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::lab;

    fn node(topology: &Topology, n: usize, role: ShardRole, offset: u64) -> ShardNode {
        ShardNode {
            id: format!("id{n}"),
            endpoint: topology.nodes[n].endpoint.clone(),
            role,
            replication_offset: offset,
            health: NodeHealth::Online,
            answered: true,
            automatic_failover: None,
        }
    }

    fn shard(nodes: Vec<ShardNode>, slots: RangeInclusive<u16>) -> Shard {
        Shard {
            slots: vec![slots],
            nodes,
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
