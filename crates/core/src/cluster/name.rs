//! The global name of a cluster and the epoch behind it. The controller, not the cluster's
//! gossip, decides which region holds the writers: a [`ClusterEpoch`] numbers each decision,
//! and the name leads to that region's primaries only. Cluster clients take them as seeds and
//! learn every shard from `CLUSTER SHARDS`. Pure: the controller discovers the shards and
//! applies the records.

use crate::records::{ManagedNames, RecordSet, host_record, ownership_record};
use crate::topology::{RegionId, Topology};

use super::{NodeHealth, Shard, region_id};

/// Which region holds the cluster's primaries, by the controller's decision; the number grows
/// with each decision, as the replication group's epoch does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterEpoch {
    pub epoch: u64,
    pub writer_region: RegionId,
}

/// The records of the global name: the addresses of the writer region's primaries that serve
/// slots and answer, and the ownership record with the epoch. Nothing when no such primary is
/// seen (lack of knowledge never deletes, and the name never leads to a replica or to another
/// region's node before the epoch moves there).
pub fn records(
    names: &ManagedNames,
    topology: &Topology,
    epoch: &ClusterEpoch,
    shards: &[Shard],
) -> Vec<RecordSet> {
    let mut seeds: Vec<&str> = shards
        .iter()
        .filter(|s| s.slot_count() > 0)
        .filter_map(Shard::primary)
        .filter(|p| p.health == NodeHealth::Online && p.answered)
        .filter(|p| region_id(topology, &p.endpoint) == Some(epoch.writer_region))
        .map(|p| p.endpoint.host.as_str())
        .collect();
    seeds.sort_unstable();
    seeds.dedup();
    let Some(global) = host_record(&names.global, names.ttl, &seeds) else {
        return Vec::new();
    };
    let region = &topology.region(epoch.writer_region).name;
    let mut records = vec![global, ownership_record(names, epoch.epoch, region)];
    records.sort();
    records
}

/// Where an all-shard move to `target`, recorded before it started, stands by the shards: the
/// next pass settles a move whose command (or controller) ended halfway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveState {
    /// Every slot's primary stands in the target region: the move's epoch is in force.
    Done,
    /// Every slot's primary still stands in the epoch's region: nothing moved.
    NotMoved,
    /// Some slots' primaries stand in the target region and some elsewhere, or a slot has no
    /// primary: an operator finishes it (the command again) or moves it back.
    Halfway,
}

/// [`MoveState`] of a move from `epoch`'s region to `target`, judged by `shards`.
pub fn move_state(
    topology: &Topology,
    epoch: &ClusterEpoch,
    target: RegionId,
    shards: &[Shard],
) -> MoveState {
    let serving: Vec<Option<RegionId>> = shards
        .iter()
        .filter(|s| s.slot_count() > 0)
        .map(|s| s.primary().and_then(|p| region_id(topology, &p.endpoint)))
        .collect();
    let covered = super::uncovered_slots(shards).is_empty();
    let all_in = |region| covered && serving.iter().all(|r| *r == Some(region));
    if all_in(target) {
        MoveState::Done
    } else if all_in(epoch.writer_region) {
        MoveState::NotMoved
    } else {
        MoveState::Halfway
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ShardRole;
    use crate::cluster::tests::{node, shard};
    use crate::config::Config;
    use crate::endpoint::Endpoint;
    use crate::records::RecordType;
    use crate::testing::{LAB, lab};

    fn names() -> ManagedNames {
        ManagedNames::from_config(&Config::parse(LAB).unwrap())
    }

    #[test]
    fn the_name_leads_to_the_epoch_regions_answering_primaries_only() {
        // The lab's topology: nodes 0, 1 in us-east-1, 2, 3 in us-east-2.
        let topology = lab();
        let (east1, east2) = (RegionId(0), RegionId(1));
        let ip = |n: usize| topology.nodes[n].endpoint.host.clone();
        let led_by = |n, slots| {
            shard(
                vec![
                    node(&topology, n, ShardRole::Primary, 0),
                    node(&topology, (n + 2) % 4, ShardRole::Replica, 0),
                ],
                slots,
            )
        };
        let failed_primary = |n, slots| {
            let mut s = led_by(n, slots);
            s.nodes[0].health = NodeHealth::Failed;
            s
        };
        let silent_primary = |n, slots| {
            let mut s = led_by(n, slots);
            s.nodes[0].answered = false;
            s
        };
        let stranger = shard(
            vec![super::super::ShardNode {
                endpoint: Endpoint::new("10.9.9.9", 6379),
                ..node(&topology, 0, ShardRole::Primary, 0)
            }],
            0..=16383,
        );
        let epoch = |region| ClusterEpoch {
            epoch: 7,
            writer_region: region,
        };
        // (case, epoch, shards, the name's addresses: None when it is left as it is)
        type Case = (&'static str, ClusterEpoch, Vec<Shard>, Option<Vec<String>>);
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("both primaries in the writer region", epoch(east1),
             vec![led_by(0, 0..=8191), led_by(1, 8192..=16383)], Some(vec![ip(0), ip(1)])),
            ("the epoch moved, the primaries too", epoch(east2),
             vec![led_by(2, 0..=8191), led_by(3, 8192..=16383)], Some(vec![ip(2), ip(3)])),
            ("halfway through a move: only the primaries in the epoch's region", epoch(east1),
             vec![led_by(0, 0..=8191), led_by(3, 8192..=16383)], Some(vec![ip(0)])),
            ("the primaries moved without the epoch: the name stays", epoch(east1),
             vec![led_by(2, 0..=8191), led_by(3, 8192..=16383)], None),
            ("a primary marked failed is left out", epoch(east1),
             vec![failed_primary(0, 0..=8191), led_by(1, 8192..=16383)], Some(vec![ip(1)])),
            ("a primary that did not answer is left out", epoch(east1),
             vec![silent_primary(0, 0..=8191), led_by(1, 8192..=16383)], Some(vec![ip(1)])),
            ("no primary answers: the name stays", epoch(east1),
             vec![failed_primary(0, 0..=8191), silent_primary(1, 8192..=16383)], None),
            ("a primary no region lists is never published", epoch(east1), vec![stranger], None),
            ("a primary without slots is no seed", epoch(east1),
             vec![led_by(0, 0..=16383), Shard { slots: vec![], ..led_by(1, 0..=0) }], Some(vec![ip(0)])),
            ("nothing discovered", epoch(east1), vec![], None),
        ];
        let names = names();
        for (case, epoch, shards, expected) in cases {
            let records = records(&names, &topology, &epoch, &shards);
            let global = records.iter().find(|r| r.name == names.global);
            match expected {
                None => assert!(records.is_empty(), "{case}: {records:?}"),
                Some(ips) => {
                    let global = global.unwrap_or_else(|| panic!("{case}: no global name"));
                    assert_eq!(global.rtype, RecordType::A, "{case}");
                    let mut ips = ips;
                    ips.sort();
                    assert_eq!(global.values, ips, "{case}");
                    let txt = records.iter().find(|r| r.name == names.ownership).unwrap();
                    let owner = crate::Ownership::parse(&txt.values[0]).unwrap();
                    assert_eq!(owner.epoch, 7, "{case}");
                    assert_eq!(
                        owner.primary_region,
                        topology.region(epoch.writer_region).name,
                        "{case}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_recorded_move_is_done_not_moved_or_halfway_by_the_shards() {
        let topology = lab();
        let (east1, east2) = (RegionId(0), RegionId(1));
        let led_by = |n, slots| shard(vec![node(&topology, n, ShardRole::Primary, 0)], slots);
        let leaderless = shard(
            vec![node(&topology, 2, ShardRole::Replica, 0)],
            8192..=16383,
        );
        let from_east1 = ClusterEpoch {
            epoch: 3,
            writer_region: east1,
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<Shard>, MoveState)> = vec![
            ("every primary in the target", vec![led_by(2, 0..=8191), led_by(3, 8192..=16383)], MoveState::Done),
            ("every primary still in the epoch's region", vec![led_by(0, 0..=8191), led_by(1, 8192..=16383)], MoveState::NotMoved),
            ("one shard moved", vec![led_by(2, 0..=8191), led_by(1, 8192..=16383)], MoveState::Halfway),
            ("a shard without a primary", vec![led_by(2, 0..=8191), leaderless], MoveState::Halfway),
            ("slots no shard serves", vec![led_by(2, 0..=8191)], MoveState::Halfway),
            ("nothing discovered", vec![], MoveState::Halfway),
        ];
        for (case, shards, expected) in cases {
            assert_eq!(
                move_state(&topology, &from_east1, east2, &shards),
                expected,
                "{case}"
            );
        }
    }
}
