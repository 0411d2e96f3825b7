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
    // The writer's history as last seen: replication id "r" at offset 100, continued from
    // history "p" at offset 60 (its promotion).
    let lineage = History {
        replication_id: "r".into(),
        offset: 100,
        parent: Some(crate::observation::ParentHistory {
            replication_id: "p".into(),
            until: 60,
        }),
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
            "blocked, a remote replica a few bytes ahead of the local one (in flight at a kill): the writer's own region still takes over within the bound",
            remote_ahead.clone(),
            set(&[0]),
            policy(FailoverPolicy::Auto, true),
            Decision::InRegion { target: n(1) },
        ),
        (
            "blocked, the local replica further behind the writer than the bound: blocked",
            remote_ahead.clone(),
            set(&[0]),
            Policy {
                max_data_at_risk_bytes: 6,
                ..policy(FailoverPolicy::Auto, true)
            },
            Decision::Blocked {
                would: Box::new(Decision::CrossRegion { target: n(2) }),
            },
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
            "writer back empty, promoted at 60 from history p: a node on p up to the fork holds a prefix and takes over",
            vec![
                empty_master.clone(),
                never_synced(replica_of(1, 0, 0)),
                with(replica_of(2, 3, 60), |i| i.replication_id = "p".into()),
                never_synced(replica_of(3, 2, 0)),
            ],
            set(&[]),
            Policy {
                // 40 bytes behind: beyond the bound, but nothing better exists anywhere.
                max_data_at_risk_bytes: 10,
                ..policy(FailoverPolicy::Auto, false)
            },
            Decision::CrossRegion { target: n(2) },
        ),
        (
            "writer back empty, promoted at 60 from history p: a node on p past the fork took other writes: lost",
            vec![
                empty_master.clone(),
                never_synced(replica_of(1, 0, 0)),
                with(replica_of(2, 3, 70), |i| i.replication_id = "p".into()),
                never_synced(replica_of(3, 2, 0)),
            ],
            set(&[]),
            policy(FailoverPolicy::Auto, false),
            Decision::HistoryLost,
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
        (
            "writer restarted from an older file: replicas cut off ahead of it on its own history, the recorded lineage older still: replaced",
            vec![
                with(primary(0), |i| i.offset = 150),
                replica_of(1, 0, 200),
                replica_of(2, 0, 190),
                replica_of(3, 2, 190),
            ],
            set(&[]),
            policy(FailoverPolicy::Manual, true),
            Decision::InRegion { target: n(1) },
        ),
        (
            "one-sided race: replicas on a live link read a little after the writer, ahead of it: nothing to do",
            vec![
                with(primary(0), |i| i.offset = 150),
                replica_of(1, 0, 152),
                replica_of(2, 0, 151),
                replica_of(3, 2, 151),
            ],
            set(&[]),
            policy(FailoverPolicy::Manual, false),
            Decision::None,
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
                parent: None,
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
