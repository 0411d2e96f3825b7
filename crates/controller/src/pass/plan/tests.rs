use super::*;
use valkey_dr_core::observation::Role;
use valkey_dr_core::self_fence::WriteQuorum;
use valkey_dr_core::testing::{down, lab, primary, replica_of, silent};
use valkey_dr_core::{Ownership, RecordType};

const A1: NodeId = NodeId(0);
const A2: NodeId = NodeId(1);
const B1: NodeId = NodeId(2);

fn history(offset: u64) -> History {
    History {
        replication_id: "r".into(),
        offset,
        parent: None,
    }
}

/// A1 writes at epoch 1; A2 and B1 replicate from it, B2 from B1 (the lab's shape).
fn healthy() -> Vec<NodeObservation> {
    vec![
        primary(0),
        replica_of(1, 0, 100),
        replica_of(2, 0, 100),
        replica_of(3, 2, 100),
    ]
}

fn state() -> State {
    let mut state = State::new(EpochRecord {
        epoch: 1,
        primary: A1,
    });
    state.writer_history = Some(history(100));
    state
}

fn names() -> ManagedNames {
    ManagedNames::new("demo", "valkey-dr.live", 5, "valkey-dr")
}

/// What a controller that has run a while sees: the records already match the nodes.
fn snapshot(observations: Vec<NodeObservation>, state: Option<State>) -> Snapshot {
    let mut s = Snapshot {
        look: 1,
        observations,
        state,
        remembered_writer: None,
        records: Vec::new(),
        down: BTreeSet::new(),
        writer_failing_for: None,
        now_ms: 1_000_000,
        first_pass: false,
        lineage_recorded_ms: Some(1_000_000),
        writer_refusal: None,
    };
    s.remembered_writer = s.epoch().map(|e| (e.primary, history(100)));
    let topology = lab();
    let names = names();
    // etcd's rules: a mark naming the writer changes nothing there.
    let plan = plan_actions(&s, &rules(&topology, &names, true));
    for action in plan.actions {
        if let Action::ApplyDns { changes } = action {
            for change in changes {
                if let Change::Create { new: r } | Change::Update { new: r, .. } = change {
                    s.records.push(r);
                }
            }
        }
    }
    s
}

fn rules<'a>(topology: &'a Topology, names: &'a ManagedNames, coordinated: bool) -> Rules<'a> {
    Rules {
        topology,
        names,
        in_region_failover: true,
        cross_region_failover: FailoverPolicy::Auto,
        max_data_at_risk_bytes: 1 << 20,
        writer_quorum_max_lag_s: 2,
        coordinated,
        refusing_writer_after: Duration::from_millis(1500),
    }
}

fn name(action: &Action) -> &'static str {
    match action {
        Action::RecoverEpoch { .. } => "RecoverEpoch",
        Action::AdoptEpoch { .. } => "AdoptEpoch",
        Action::BootstrapBlocked { .. } => "BootstrapBlocked",
        Action::ResolveIntent { .. } => "ResolveIntent",
        Action::ReportLostWriter { .. } => "ReportLostWriter",
        Action::AcceptLoss { .. } => "AcceptLoss",
        Action::HoldLostWriter { .. } => "HoldLostWriter",
        Action::Withhold { .. } => "Withhold",
        Action::FailOver { .. } => "FailOver",
        Action::FenceRogues { .. } => "FenceRogues",
        Action::PauseRogues { .. } => "PauseRogues",
        Action::Release { .. } => "Release",
        Action::PersistRole { .. } => "PersistRole",
        Action::RememberWriter { .. } => "RememberWriter",
        Action::LiftStalePause { .. } => "LiftStalePause",
        Action::CheckSyncSettings => "CheckSyncSettings",
        Action::Heartbeat { .. } => "Heartbeat",
        Action::KeepWriteQuorum { .. } => "KeepWriteQuorum",
        Action::SwitchAway { .. } => "SwitchAway",
        Action::Repoint { .. } => "Repoint",
        Action::ApplyDns { .. } => "ApplyDns",
    }
}

fn with(
    mut o: NodeObservation,
    f: impl FnOnce(&mut valkey_dr_core::ReplicationInfo),
) -> NodeObservation {
    if let Ok(info) = o.state.as_mut() {
        f(info);
    }
    o
}

/// A replica whose link to its master is down (it saw the master go).
fn orphan(n: usize, master: usize, offset: u64) -> NodeObservation {
    with(replica_of(n, master, offset), |i| {
        if let Role::Replica { link_up, .. } = &mut i.role {
            *link_up = false;
        }
        i.master_last_io_s = Some(30);
    })
}

/// A replica of A1 in a full resync (it still has its old data until the transfer ends).
fn syncing(n: usize, offset: u64) -> NodeObservation {
    with(replica_of(n, 0, offset), |i| {
        if let Role::Replica {
            sync_in_progress, ..
        } = &mut i.role
        {
            *sync_in_progress = true;
        }
    })
}

fn empty_master(n: usize) -> NodeObservation {
    with(primary(n), |i| {
        i.replication_id = "new".into();
        i.offset = 0;
    })
}

const UPKEEP: [&str; 4] = [
    "RememberWriter",
    "CheckSyncSettings",
    "Heartbeat",
    "KeepWriteQuorum",
];

fn upkeep_then(first: &[&'static str], last: &[&'static str]) -> Vec<&'static str> {
    first
        .iter()
        .chain(UPKEEP.iter())
        .chain(last.iter())
        .copied()
        .collect()
}

#[test]
fn every_decision_of_a_pass() {
    let topology = lab();
    let names = names();
    let single = rules(&topology, &names, false);
    let coordinated = rules(&topology, &names, true);
    let marked = |mut o: NodeObservation, epoch| {
        o.epoch_mark = Some(EpochMark {
            epoch,
            writer: "127.0.1.1:6379".into(),
        });
        o
    };
    // A mark naming node `writer` of the lab as the writer of `epoch`.
    let marked_as = |mut o: NodeObservation, epoch, writer: usize| {
        o.epoch_mark = Some(EpochMark {
            epoch,
            writer: topology.node_name(NodeId(writer)),
        });
        o
    };
    let writer_down = |failing_s: u64, armed: bool| {
        let mut s = snapshot(
            vec![down(0), down(1), orphan(2, 0, 90), replica_of(3, 2, 90)],
            Some(state()),
        );
        s.down = [A1, A2].into();
        s.writer_failing_for = Some(Duration::from_secs(failing_s));
        if let Some(state) = s.state.as_mut() {
            state.writer_quorum = armed.then_some(WriteQuorum {
                replicas: 1,
                max_lag_s: 2,
            });
        }
        s
    };
    // The writer alone fails, silent (`timed out`) or gone (connection refused); its region's
    // replica holds the history.
    let writer_alone_fails = |writer: NodeObservation, failing_s: u64, armed: bool| {
        let mut s = snapshot(
            vec![
                writer,
                orphan(1, 0, 100),
                orphan(2, 0, 100),
                replica_of(3, 2, 100),
            ],
            Some(state()),
        );
        s.down = [A1].into();
        s.writer_failing_for = Some(Duration::from_secs(failing_s));
        if let Some(state) = s.state.as_mut() {
            state.writer_quorum = armed.then_some(WriteQuorum {
                replicas: 2,
                max_lag_s: 2,
            });
        }
        s
    };
    let blocked = |mut s: Snapshot| {
        if let Some(state) = s.state.as_mut() {
            state.failovers_blocked_until_ms = Some(s.now_ms + 1);
        }
        s
    };
    let with_intent = {
        let mut s = snapshot(
            vec![
                with(replica_of(0, 2, 100), |_| {}),
                replica_of(1, 0, 100),
                with(primary(2), |i| i.offset = 100),
                replica_of(3, 2, 100),
            ],
            Some(state()),
        );
        if let Some(state) = s.state.as_mut() {
            state.intent = Some(Intent {
                epoch: 2,
                source: A1,
                target: B1,
                required_offset: 100,
                replication_id: "r".into(),
            });
        }
        s
    };
    let in_dns = |mut s: Snapshot, region: &str, epoch: u64| {
        s.records = vec![RecordSet::new(
            &names.ownership,
            RecordType::Txt,
            5,
            [Ownership {
                owner: "valkey-dr".into(),
                epoch,
                primary_region: region.into(),
            }
            .to_txt()],
        )];
        s
    };
    let first_pass = |mut s: Snapshot| {
        s.first_pass = true;
        s
    };
    let last_look = |mut s: Snapshot| {
        s.look = MAX_LOOKS;
        s
    };
    let stale_records = |mut s: Snapshot| {
        s.records.clear();
        s
    };
    let misdirected = with(replica_of(3, 2, 100), |i| {
        i.role = Role::Replica {
            master: valkey_dr_core::Endpoint::new("127.0.1.2", 6379),
            link_up: true,
            sync_in_progress: false,
        }
    });
    let refusing = |reply: ErrorReply, for_ms: u64| {
        let mut s = snapshot(healthy(), Some(state()));
        s.writer_refusal = Some((reply, Duration::from_millis(for_ms)));
        s
    };
    let no_in_region = Rules {
        in_region_failover: false,
        ..rules(&topology, &names, false)
    };
    let history_gone = snapshot(
        vec![
            empty_master(0),
            with(replica_of(1, 0, 0), |i| i.replication_id = "new".into()),
            with(replica_of(2, 0, 0), |i| i.replication_id = "new".into()),
            with(replica_of(3, 2, 0), |i| i.replication_id = "new".into()),
        ],
        Some(state()),
    );

    #[rustfmt::skip]
    let cases: Vec<(&str, Snapshot, &Rules, Vec<&str>)> = vec![
        ("healthy, records match: upkeep only",
         snapshot(healthy(), Some(state())), &single, upkeep_then(&[], &[])),
        ("the records differ from the nodes: DNS follows",
         stale_records(snapshot(healthy(), Some(state()))), &single, upkeep_then(&[], &["ApplyDns"])),
        ("first pass of a run: a pause left by a dead controller is lifted",
         first_pass(snapshot(healthy(), Some(state()))), &single,
         vec!["RememberWriter", "LiftStalePause", "CheckSyncSettings", "Heartbeat", "KeepWriteQuorum"]),
        ("a newer mark on the writer, one controller: the state file is behind",
         snapshot(vec![marked(primary(0), 5), replica_of(1, 0, 100), replica_of(2, 0, 100), replica_of(3, 2, 100)], Some(state())),
         &single, vec!["RecoverEpoch"]),
        ("a newer mark, etcd holds the state: marks never outrank it",
         snapshot(vec![marked(primary(0), 5), replica_of(1, 0, 100), replica_of(2, 0, 100), replica_of(3, 2, 100)], Some(state())),
         &coordinated, upkeep_then(&[], &[])),
        ("etcd restored from before the last promotion: its writer follows the marked master, the mark is taken",
         snapshot(vec![replica_of(0, 2, 100), replica_of(1, 0, 100), marked_as(primary(2), 5, 2), replica_of(3, 2, 100)], Some(state())),
         &coordinated, vec!["RecoverEpoch"]),
        ("a newer mark on a live master, etcd's writer down: held for an operator, nothing fenced",
         { let mut s = snapshot(vec![down(0), replica_of(1, 2, 100), marked_as(primary(2), 5, 2), replica_of(3, 2, 100)], Some(state())); s.down = [A1].into(); s },
         &coordinated, vec!["Withhold"]),
        ("a newer mark on a second master, etcd's writer a master too: held, nothing fenced",
         snapshot(vec![primary(0), replica_of(1, 0, 100), marked_as(primary(2), 5, 2), replica_of(3, 2, 100)], Some(state())),
         &coordinated, vec!["Withhold"]),
        ("no epoch, one master in the primary region: adopted",
         snapshot(healthy(), None), &single, vec!["AdoptEpoch"]),
        ("no epoch, two masters: nobody is adopted",
         snapshot(vec![primary(0), replica_of(1, 0, 100), primary(2), replica_of(3, 2, 100)], None),
         &single, vec!["BootstrapBlocked"]),
        ("no epoch, our ownership record names the other region",
         in_dns(snapshot(vec![replica_of(0, 2, 100), replica_of(1, 2, 100), primary(2), replica_of(3, 2, 100)], None), "us-east-2", 4),
         &single, vec!["AdoptEpoch", "ApplyDns"]),
        ("an interrupted promotion is settled before anything else",
         with_intent, &single, vec!["ResolveIntent"]),
        ("the writer is down, a replica of its region holds the history",
         { let mut s = snapshot(vec![down(0), orphan(1, 0, 100), orphan(2, 0, 100), replica_of(3, 2, 100)], Some(state())); s.down = [A1].into(); s },
         &single, vec!["FailOver"]),
        ("the writer's process is gone (refused), its self-fence armed: replaced in its region at once",
         writer_alone_fails(down(0), 2, true), &single, vec!["FailOver"]),
        ("the writer is silent (it may be alive behind a cut), its self-fence armed but not surely in force: held",
         writer_alone_fails(silent(0), 2, true), &single, vec!["Withhold"]),
        ("the same in the highly available shape: held",
         writer_alone_fails(silent(0), 2, true), &coordinated, vec!["Withhold"]),
        ("the writer is silent and its self-fence surely holds: replaced in its region",
         writer_alone_fails(silent(0), 5, true), &single, vec!["FailOver"]),
        ("the writer is silent, its self-fence disarmed (nothing would end a wait): replaced in its region",
         writer_alone_fails(silent(0), 2, false), &single, vec!["FailOver"]),
        ("its region is down, the self-fence was not armed: an operator decides",
         writer_down(30, false), &single, vec!["Withhold"]),
        ("its region is down, the self-fence is armed but not surely in force yet",
         writer_down(2, true), &single, vec!["Withhold"]),
        ("its region is down, the self-fence surely holds: the writer leaves its region",
         writer_down(5, true), &single, vec!["FailOver"]),
        ("a failover is due but blocked after an earlier one",
         blocked(writer_down(5, true)), &single, vec![]),
        ("the writer is back empty and a replica holds the history: replaced",
         snapshot(vec![empty_master(0), replica_of(1, 0, 100), replica_of(2, 0, 100), replica_of(3, 2, 100)], Some(state())),
         &single, vec!["ReportLostWriter", "FailOver", "CheckSyncSettings", "Heartbeat", "KeepWriteQuorum"]),
        ("the writer is back empty, its replicas mid-sync: it follows the holder",
         snapshot(vec![empty_master(0), syncing(1, 100), syncing(2, 100), down(3)], Some(state())),
         &single, vec!["ReportLostWriter", "HoldLostWriter", "CheckSyncSettings", "Heartbeat", "KeepWriteQuorum"]),
        ("the writer is back empty, every node answered and none holds the history",
         history_gone, &single, vec!["ReportLostWriter", "AcceptLoss", "CheckSyncSettings", "Heartbeat", "KeepWriteQuorum"]),
        ("a master that is not the epoch's writer is fenced",
         snapshot(vec![primary(0), replica_of(1, 0, 100), primary(2), replica_of(3, 2, 100)], Some(state())),
         &single, upkeep_then(&["FenceRogues"], &["Repoint"])),
        ("a master that is not the epoch's writer, the writer not answering: paused, not demoted",
         snapshot(vec![down(0), orphan(1, 0, 100), primary(2), replica_of(3, 2, 100)], Some(state())),
         &single, vec!["PauseRogues"]),
        ("the writer back empty beside a rogue master: the rogue is paused, never put under it",
         blocked(snapshot(vec![empty_master(0), syncing(1, 100), primary(2), replica_of(3, 2, 100)], Some(state()))),
         &single, vec!["ReportLostWriter", "FailOver", "PauseRogues", "CheckSyncSettings", "Heartbeat", "KeepWriteQuorum", "Repoint"]),
        ("a switchover's old primary, now a replica, whose clients were never closed: released after DNS",
         { let mut s = stale_records(snapshot(healthy(), Some(state()))); if let Some(st) = s.state.as_mut() { st.release_pending = Some(A2); } s },
         &single, upkeep_then(&[], &["ApplyDns", "Release"])),
        ("a release recorded for the writer itself (it is the writer again): only settled",
         { let mut s = snapshot(healthy(), Some(state())); if let Some(st) = s.state.as_mut() { st.release_pending = Some(A1); } s },
         &single, upkeep_then(&[], &["Release"])),
        ("a switchover's old primary, released, whose role never reached its config file: persisted",
         { let mut s = snapshot(healthy(), Some(state())); if let Some(st) = s.state.as_mut() { st.persist_pending = Some(A2); } s },
         &single, upkeep_then(&[], &["PersistRole"])),
        ("a role to persist on the writer itself (it is the writer again): only settled",
         { let mut s = snapshot(healthy(), Some(state())); if let Some(st) = s.state.as_mut() { st.persist_pending = Some(A1); } s },
         &single, upkeep_then(&[], &["PersistRole"])),
        ("release and role both pending: the release persists it, once",
         { let mut s = snapshot(healthy(), Some(state())); if let Some(st) = s.state.as_mut() { st.release_pending = Some(A2); st.persist_pending = Some(A2); } s },
         &single, upkeep_then(&[], &["Release"])),
        ("a replica follows the wrong node: repointed",
         snapshot(vec![primary(0), replica_of(1, 0, 100), replica_of(2, 0, 100), misdirected], Some(state())),
         &single, upkeep_then(&[], &["Repoint"])),
        ("the writer refuses writes for its disk (MISCONF) past down_after: switched to its region's replica",
         refusing(ErrorReply::Misconf, 2000), &single, upkeep_then(&["SwitchAway"], &[])),
        ("MISCONF for less than down_after: not yet",
         refusing(ErrorReply::Misconf, 1000), &single, upkeep_then(&[], &[])),
        ("MISCONF, but failovers are blocked after an earlier move",
         blocked(refusing(ErrorReply::Misconf, 2000)), &single, upkeep_then(&[], &[])),
        ("MISCONF, in-region failover off: reported only",
         refusing(ErrorReply::Misconf, 2000), &no_in_region, upkeep_then(&[], &[])),
        ("OOM: reported only, a replica holds as much data",
         refusing(ErrorReply::OutOfMemory, 60_000), &single, upkeep_then(&[], &[])),
        ("the last look of a pass only settles",
         last_look(snapshot(vec![primary(0), replica_of(1, 0, 100), primary(2), replica_of(3, 2, 100)], Some(state()))),
         &single, upkeep_then(&[], &["Repoint"])),
    ];
    for (case, snapshot, rules, expected) in cases {
        let plan = plan_actions(&snapshot, rules);
        let got: Vec<&str> = plan.actions.iter().map(name).collect();
        assert_eq!(got, expected, "{case}: {:#?}", plan.actions);
    }
}

#[test]
fn a_failover_names_the_checks_it_must_pass_right_before_acting() {
    let topology = lab();
    let names = names();
    let mut region_down = snapshot(
        vec![down(0), down(1), orphan(2, 0, 100), replica_of(3, 2, 90)],
        Some(state()),
    );
    region_down.down = [A1, A2].into();
    region_down.writer_failing_for = Some(Duration::from_secs(5));
    if let Some(state) = region_down.state.as_mut() {
        state.writer_quorum = Some(WriteQuorum {
            replicas: 1,
            max_lag_s: 2,
        });
    }
    let mut node_down = snapshot(
        vec![
            down(0),
            orphan(1, 0, 100),
            orphan(2, 0, 100),
            replica_of(3, 2, 100),
        ],
        Some(state()),
    );
    node_down.down = [A1].into();
    let back_empty = snapshot(
        vec![
            empty_master(0),
            replica_of(1, 0, 100),
            replica_of(2, 0, 100),
            replica_of(3, 2, 100),
        ],
        Some(state()),
    );
    let failover = |s: &Snapshot, coordinated: bool| {
        plan_actions(s, &rules(&topology, &names, coordinated))
            .actions
            .into_iter()
            .find_map(|a| match a {
                Action::FailOver {
                    target,
                    kind,
                    checks,
                    ..
                } => Some((target, kind, checks)),
                _ => None,
            })
    };
    let checks = |silent, majority| FailoverChecks {
        writer_still_silent: silent,
        majority_of_sites: majority,
    };
    #[rustfmt::skip]
    let cases = [
        ("one node down, one controller", failover(&node_down, false),
         Some((A2, FailoverKind::InRegion, checks(true, false)))),
        ("one node down, three sites: in-region needs no majority", failover(&node_down, true),
         Some((A2, FailoverKind::InRegion, checks(true, false)))),
        ("region down, one controller", failover(&region_down, false),
         Some((B1, FailoverKind::CrossRegion, checks(true, false)))),
        ("region down, three sites: a majority and the region's release", failover(&region_down, true),
         Some((B1, FailoverKind::CrossRegion, checks(true, true)))),
        ("writer back empty: it answers, nothing to confirm", failover(&back_empty, true),
         Some((A2, FailoverKind::InRegion, checks(false, false)))),
    ];
    for (case, got, expected) in cases {
        assert_eq!(got, expected, "{case}");
    }
}

#[test]
fn only_a_plausible_mark_outranks_the_state() {
    let ours = Some(EpochRecord {
        epoch: 7,
        primary: NodeId(0),
    });
    let mark = |epoch| EpochMark {
        epoch,
        writer: "127.0.1.2:6379".into(),
    };
    #[rustfmt::skip]
    let cases = [
        ("a newer epoch: the state file is behind", mark(8), ours, true),
        ("the same epoch", mark(7), ours, false),
        ("an older epoch", mark(3), ours, false),
        ("a jump of more than a thousand promotions", mark(7 + 1001), ours, false),
        ("u64::MAX, no state: it would leave no room to promote", mark(u64::MAX), None, false),
        ("no state at all: a plausible mark is taken", mark(12), None, true),
    ];
    for (case, mark, ours, believed) in cases {
        assert_eq!(believable_mark(&mark, ours), believed, "{case}");
    }
}

#[test]
fn the_writers_offset_is_recorded_every_ten_seconds_and_at_each_new_history() {
    let topology = lab();
    let names = names();
    let rules = rules(&topology, &names, false);
    let ahead = |offset| with(primary(0), |i| i.offset = offset);
    let durable = |observations: Vec<NodeObservation>, recorded_ms_ago: Option<u64>| {
        let mut s = snapshot(observations, Some(state()));
        s.lineage_recorded_ms = recorded_ms_ago.map(|ago| s.now_ms - ago);
        plan_actions(&s, &rules)
            .actions
            .into_iter()
            .find_map(|a| match a {
                Action::RememberWriter { durable, .. } => Some(durable),
                _ => None,
            })
    };
    let new_id = with(primary(0), |i| {
        i.replication_id = "after-restart".into();
        i.offset = 150;
    });
    #[rustfmt::skip]
    let cases = [
        ("the offset moved, recorded 11 s ago", durable(vec![ahead(150)], Some(11_000)), Some(true)),
        ("the offset moved, recorded 1 s ago", durable(vec![ahead(150)], Some(1_000)), Some(false)),
        ("never recorded by this run (a restart, a new leader)", durable(vec![ahead(150)], None), Some(true)),
        ("nothing moved since the record", durable(vec![ahead(100)], Some(60_000)), Some(false)),
        ("a new replication id on the history, recorded 1 s ago", durable(vec![new_id], Some(1_000)), Some(true)),
    ];
    for (case, got, expected) in cases {
        assert_eq!(got, expected, "{case}");
    }
}
