//! The controller's decisions and their execution against the fake engine
//! ([`valkey_dr_controller::testing::FakeEngine`], held to real Valkey's behaviour by the engine
//! battery): the order of actions is visible and faults (a node refusing REPLICAOF, a state
//! directory that cannot be written) are cheap to inject. The same flows run against real
//! Valkey servers in the cli's integration tests.

use std::sync::Arc;
use std::time::Duration;

use valkey_dr_controller::Controller;
use valkey_dr_controller::testing::{FakeEngine, FakeNode};
use valkey_dr_core::{Config, Endpoint, NodeId};
use valkey_dr_dns::embedded::Zone;

/// Changes the node at `host` (port 6379).
fn set(engine: &FakeEngine, host: &str, change: impl FnOnce(&mut FakeNode)) {
    engine.set(&endpoint(host), change);
}

fn endpoint(host: &str) -> Endpoint {
    Endpoint::new(host, 6379)
}

const WRITER: &str = "127.0.1.1";
const LOCAL_REPLICA: &str = "127.0.1.2";
const REMOTE_HEAD: &str = "127.0.2.1";
const REMOTE_REPLICA: &str = "127.0.2.2";

/// The reference topology, healthy: the writer at offset 1000, everyone caught up.
fn world() -> FakeEngine {
    let engine = FakeEngine::default();
    let node = |master: Option<&str>| match master {
        None => FakeNode::primary("history", 1000),
        Some(m) => FakeNode::replica_of(&endpoint(m), "history", 1000),
    };
    engine.insert(endpoint(WRITER), node(None));
    engine.insert(endpoint(LOCAL_REPLICA), node(Some(WRITER)));
    engine.insert(endpoint(REMOTE_HEAD), node(Some(WRITER)));
    engine.insert(endpoint(REMOTE_REPLICA), node(Some(REMOTE_HEAD)));
    engine
}

fn controller(engine: &FakeEngine, name: &str) -> Controller {
    controller_with(engine, name, "")
}

/// A controller with extra `[controller]` settings (TOML lines).
fn controller_with(engine: &FakeEngine, name: &str, settings: &str) -> Controller {
    let dir = std::env::temp_dir().join(format!("valkey-dr-fake-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    reopen(engine, name, settings)
}

/// A controller on the state directory `name` as it is (a restart).
fn reopen(engine: &FakeEngine, name: &str, settings: &str) -> Controller {
    let dir = std::env::temp_dir().join(format!("valkey-dr-fake-{name}-{}", std::process::id()));
    let config = Config::parse(&format!(
        r#"
        primary_region = "us-east-1"
        state_dir = "{}"
        [[regions]]
        name = "us-east-1"
        nodes = [{{ host = "{WRITER}" }}, {{ host = "{LOCAL_REPLICA}" }}]
        [[regions]]
        name = "us-east-2"
        nodes = [{{ host = "{REMOTE_HEAD}" }}, {{ host = "{REMOTE_REPLICA}" }}]
        [dns]
        zone = "valkey-dr.live"
        global_name = "demo"
        [controller]
        down_after_ms = 200
        probe_interval_ms = 50
        {settings}
        "#,
        dir.display()
    ))
    .unwrap();
    let zone = Arc::new(Zone::new(&config.dns.zone));
    Controller::with_engine(config, zone, Box::new(engine.clone())).unwrap()
}

/// [`reopen`], its records behind `dns`.
fn reopen_with_dns(
    engine: &FakeEngine,
    name: &str,
    dns: Arc<dyn valkey_dr_dns::DnsProvider>,
) -> Controller {
    let config = reopen(engine, name, "").config().clone();
    Controller::with_engine(config, dns, Box::new(engine.clone())).unwrap()
}

/// Passes for a while, as the run loop would make them while a node fails.
async fn passes(controller: &Controller, n: usize) {
    for _ in 0..n {
        let _ = controller.reconcile_once().await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
}

#[tokio::test]
async fn a_writer_back_as_an_empty_replica_is_replaced_never_promoted() {
    let engine = world();
    let controller = controller(&engine, "empty-replica");
    controller.reconcile_once().await.unwrap();
    assert_eq!(controller.epoch().unwrap().epoch, 1);
    // The writer restarts empty as a replica of its own replica (its config file's replicaof).
    set(&engine, WRITER, |n| {
        n.master = Some(endpoint(LOCAL_REPLICA));
        n.offset = 0;
        n.replication_id = "fresh-random-id".into();
    });
    controller.reconcile_once().await.unwrap();
    assert_eq!(controller.epoch().unwrap().epoch, 2);
    let log = engine.log();
    assert!(
        log.contains(&format!("PROMOTE {}", endpoint(LOCAL_REPLICA))),
        "{log:?}"
    );
    assert!(
        !log.contains(&format!("PROMOTE {}", endpoint(WRITER))),
        "the empty node was promoted: {log:?}"
    );
}

#[tokio::test]
async fn a_switchover_demotes_the_old_primary_while_paused_and_unpauses_only_a_replica() {
    let engine = world();
    let controller = controller(&engine, "switchover");
    controller.reconcile_once().await.unwrap();
    controller.promote("us-east-2").await.unwrap();
    let log = engine.log();
    // The first pass after a start lifts a pause a crashed switchover may have left: look from
    // the switchover's own pause on.
    let start = log.iter().position(|l| l.starts_with("PAUSE")).unwrap();
    let at = |entry: String| {
        start
            + log[start..]
                .iter()
                .position(|l| *l == entry)
                .unwrap_or_else(|| panic!("{entry} missing: {log:?}"))
    };
    let old = endpoint(WRITER);
    let new = endpoint(REMOTE_HEAD);
    // Pause → demote the old primary, still paused → promote the target (the old primary
    // already follows it: never two masters) → its clients closed → unpaused, now a replica →
    // its role written to its file, outside the pause.
    assert!(at(format!("PAUSE {old}")) < at(format!("REPLICAOF {old}")));
    assert!(at(format!("REPLICAOF {old}")) < at(format!("PROMOTE {new}")));
    assert!(at(format!("PROMOTE {new}")) < at(format!("KILL-CLIENTS {old}")));
    assert!(at(format!("KILL-CLIENTS {old}")) < at(format!("UNPAUSE {old}")));
    assert!(at(format!("UNPAUSE {old}")) < at(format!("REWRITE {old}")));
    assert!(
        !log.contains(&format!("REWRITE {new}")),
        "the writer's file keeps its replicaof"
    );
}

/// A switchover whose old primary cannot write its config file (`CONFIG REWRITE` fails) keeps the
/// role to persist in the state, and the passes after it retry until it lands — once. A restart
/// of the node would otherwise bring back the role its old file names.
#[tokio::test]
async fn an_old_primarys_role_that_could_not_be_persisted_is_retried_until_it_lands() {
    let engine = world();
    let controller = controller(&engine, "persist-retry");
    controller.reconcile_once().await.unwrap();
    set(&engine, WRITER, |n| n.refuses_rewrite = true);
    controller.promote("us-east-2").await.unwrap();
    let old = endpoint(WRITER);
    let rewrites = || {
        engine
            .log()
            .iter()
            .filter(|l| **l == format!("REWRITE {old}"))
            .count()
    };
    passes(&controller, 3).await;
    assert_eq!(rewrites(), 0, "{:?}", engine.log());
    set(&engine, WRITER, |n| n.refuses_rewrite = false);
    passes(&controller, 1).await;
    assert_eq!(
        rewrites(),
        1,
        "persisted at the next pass: {:?}",
        engine.log()
    );
    passes(&controller, 3).await;
    assert_eq!(rewrites(), 1, "and settled: {:?}", engine.log());
    // A restarted controller reads the state: nothing left to persist.
    drop(controller);
    let restarted = reopen(&engine, "persist-retry", "");
    passes(&restarted, 2).await;
    assert_eq!(rewrites(), 1, "{:?}", engine.log());
}

/// N5: an old primary that cannot be demoted (refused here; unreachable alike) aborts the
/// switchover before the target is promoted: it stays the only writer, unpaused, and the name
/// stays on it. (Promoting first left it a master under a pause that runs out.)
#[tokio::test]
async fn an_old_primary_that_refuses_demotion_aborts_the_switchover_before_any_promotion() {
    let engine = world();
    let controller = controller(&engine, "refuses");
    controller.reconcile_once().await.unwrap();
    set(&engine, WRITER, |n| n.refuses_replicaof = true);
    let refused = controller.promote("us-east-2").await;
    assert!(
        matches!(
            refused,
            Err(valkey_dr_controller::PromoteError::NotDemoted(..))
        ),
        "{refused:?}"
    );
    let old = endpoint(WRITER);
    let log = engine.log();
    assert!(log.contains(&format!("REPLICAOF-REFUSED {old}")), "{log:?}");
    assert!(
        !log.iter().any(|l| l.starts_with("PROMOTE")),
        "no second master, ever: {log:?}"
    );
    assert!(!engine.world().nodes[&old].paused, "writes resume: {log:?}");
    assert_eq!(controller.epoch().unwrap().primary, NodeId(0));
    assert!(controller.epoch().is_some_and(|e| e.epoch == 1));
}

#[tokio::test]
async fn without_a_writable_state_no_failover_happens() {
    let engine = world();
    let controller = controller(&engine, "readonly-state");
    controller.reconcile_once().await.unwrap();
    let state_dir = controller.config().state_dir.clone();
    // The state cannot be written durably (a full or read-only disk): nothing may be promoted,
    // since a restarted controller would not know about it.
    std::fs::remove_dir_all(&state_dir).unwrap();
    std::fs::write(&state_dir, b"not a directory").unwrap();
    set(&engine, WRITER, |n| n.up = false);
    passes(&controller, 10).await;
    assert!(
        !engine.log().iter().any(|l| l.starts_with("PROMOTE")),
        "{:?}",
        engine.log()
    );
    assert_eq!(controller.epoch().unwrap().epoch, 1);
    let _ = std::fs::remove_file(&state_dir);
}

#[tokio::test]
async fn a_replica_of_the_region_takes_over_within_the_bound_and_reports_what_it_gave_up() {
    let engine = world();
    let controller = controller(&engine, "advanced");
    controller.reconcile_once().await.unwrap();
    set(&engine, LOCAL_REPLICA, |n| n.offset = 900);
    set(&engine, WRITER, |n| n.up = false);
    // Cross-region failover is `manual`: the region's own replica may take over only within
    // max_data_at_risk_bytes (1 MiB) of the more advanced one elsewhere; 100 bytes is within.
    passes(&controller, 10).await;
    let log = engine.log();
    assert!(
        log.contains(&format!("PROMOTE {}", endpoint(LOCAL_REPLICA))),
        "{log:?}"
    );
    let events = std::fs::read_to_string(controller.config().events_file()).unwrap();
    let started: serde_json::Value = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "failover_started")
        .unwrap();
    assert_eq!(started["data_at_risk_bytes"], 100, "{started}");
}

/// A blind promotion (the benchmark's baseline) of a target that lags behind: the new epoch
/// records the history as far as the target got, so the next pass does not take the new writer
/// for one that lost its data and fail over again.
#[tokio::test]
async fn a_blind_promotion_of_a_lagging_target_is_not_mistaken_for_a_lost_writer() {
    let engine = world();
    let controller = controller(&engine, "blind");
    controller.reconcile_once().await.unwrap();
    set(&engine, REMOTE_HEAD, |n| n.offset = 900);
    controller
        .promote_with(
            "us-east-2",
            valkey_dr_controller::promotion::PromoteMethod::Blind,
        )
        .await
        .unwrap();
    passes(&controller, 3).await;
    let epoch = controller.epoch().unwrap();
    assert_eq!(epoch.epoch, 2, "{:?}", engine.log());
    let promotions: Vec<String> = engine
        .log()
        .into_iter()
        .filter(|l| l.starts_with("PROMOTE"))
        .collect();
    assert_eq!(
        promotions,
        vec![format!("PROMOTE {}", endpoint(REMOTE_HEAD))]
    );
}

#[tokio::test]
async fn an_ack_that_cannot_be_recorded_is_an_error_and_the_block_stays() {
    let engine = world();
    let controller = controller(&engine, "ack-unwritable");
    controller.reconcile_once().await.unwrap();
    set(&engine, WRITER, |n| n.up = false);
    passes(&controller, 10).await;
    assert_eq!(controller.epoch().unwrap().epoch, 2, "{:?}", engine.log());
    // The failover blocks the next one until `ack`; an ack that cannot be written must say so
    // (it used to report the block cleared while it stayed).
    let state_dir = controller.config().state_dir.clone();
    let saved = state_dir.with_extension("saved");
    std::fs::rename(&state_dir, &saved).unwrap();
    std::fs::write(&state_dir, b"not a directory").unwrap();
    assert!(controller.ack().await.is_err());
    std::fs::remove_file(&state_dir).unwrap();
    std::fs::rename(&saved, &state_dir).unwrap();
    assert!(
        controller.ack().await.unwrap(),
        "the block was still in force"
    );
}

/// The writer restarted empty as a master (a config file without `replicaof`), as a supervisor
/// brings it back without persistence.
fn writer_back_empty_as_a_master(engine: &FakeEngine) {
    set(engine, WRITER, |n| {
        n.master = None;
        n.offset = 0;
        n.replication_id = "fresh-random-id".into();
    });
}

#[tokio::test]
async fn in_region_failover_off_never_takes_a_writer_back_empty_as_the_history() {
    let engine = world();
    let controller = controller_with(&engine, "in-region-off", "in_region_failover = false");
    controller.reconcile_once().await.unwrap();
    writer_back_empty_as_a_master(&engine);
    passes(&controller, 3).await;
    let status = controller.status().await;
    assert!(
        status.data_loss_suspected.is_none(),
        "every replica holds the history: nothing is lost ({:?})",
        status.data_loss_suspected
    );
    // Cross-region failover is manual: nobody is promoted, but the empty writer takes no write
    // and follows the node holding the history, so no replica copies its emptiness.
    let log = engine.log();
    assert!(
        log.contains(&format!("PAUSE {}", endpoint(WRITER))),
        "{log:?}"
    );
    assert!(
        log.contains(&format!("REPLICAOF {}", endpoint(WRITER))),
        "{log:?}"
    );
    assert!(!log.iter().any(|a| a.starts_with("PROMOTE")), "{log:?}");
    assert_eq!(controller.epoch().unwrap().epoch, 1);
}

#[tokio::test]
async fn in_region_failover_off_with_auto_moves_a_lost_writers_history_to_the_other_region() {
    let engine = world();
    let controller = controller_with(
        &engine,
        "in-region-off-auto",
        "in_region_failover = false\ncross_region_failover = \"auto\"",
    );
    controller.reconcile_once().await.unwrap();
    writer_back_empty_as_a_master(&engine);
    passes(&controller, 3).await;
    assert!(controller.status().await.data_loss_suspected.is_none());
    let epoch = controller.epoch().unwrap();
    assert_eq!(epoch.epoch, 2);
    let log = engine.log();
    assert!(
        log.contains(&format!("PROMOTE {}", endpoint(REMOTE_HEAD))),
        "{log:?}"
    );
}

#[tokio::test]
async fn a_lost_writer_is_declared_lost_only_when_every_node_answered() {
    let engine = world();
    let controller = controller(&engine, "lost-on-silence");
    controller.reconcile_once().await.unwrap();
    // Both regions' other nodes are silent for a moment while the writer is back empty: that
    // says nothing about what they hold.
    for host in [LOCAL_REPLICA, REMOTE_HEAD, REMOTE_REPLICA] {
        set(&engine, host, |n| n.up = false);
    }
    writer_back_empty_as_a_master(&engine);
    passes(&controller, 2).await;
    assert!(controller.status().await.data_loss_suspected.is_none());
    // They answer again, holding the history: one of them takes over.
    for host in [LOCAL_REPLICA, REMOTE_HEAD, REMOTE_REPLICA] {
        set(&engine, host, |n| n.up = true);
    }
    passes(&controller, 3).await;
    assert!(controller.status().await.data_loss_suspected.is_none());
    assert_eq!(controller.epoch().unwrap().primary, NodeId(1));
}

#[tokio::test]
async fn the_block_after_a_failover_never_keeps_a_dead_writer_when_its_region_has_a_replica() {
    let engine = world();
    let controller = controller(&engine, "block-in-region");
    controller.reconcile_once().await.unwrap();
    // A first failover sets the block; the new writer dies too.
    set(&engine, WRITER, |n| n.up = false);
    passes(&controller, 8).await;
    assert_eq!(controller.epoch().unwrap().primary, NodeId(1));
    // The old writer comes back and resyncs from the new one (same history, caught up).
    let history = engine.world().nodes[&endpoint(LOCAL_REPLICA)].clone();
    set(&engine, WRITER, |n| {
        n.up = true;
        n.master = Some(endpoint(LOCAL_REPLICA));
        n.replication_id = history.replication_id.clone();
        n.offset = history.offset;
    });
    passes(&controller, 2).await;
    set(&engine, LOCAL_REPLICA, |n| n.up = false);
    passes(&controller, 8).await;
    let epoch = controller.epoch().unwrap();
    assert_eq!(
        (epoch.epoch, epoch.primary),
        (3, NodeId(0)),
        "the block stops moves across regions, not a failover inside the writer's region"
    );
}

#[tokio::test]
async fn a_suspected_loss_is_shown_after_a_restart_until_ack() {
    let engine = world();
    let controller = controller(&engine, "loss-survives");
    controller.reconcile_once().await.unwrap();
    // Every node answers and none holds the history any more: the loss is certain.
    writer_back_empty_as_a_master(&engine);
    for host in [LOCAL_REPLICA, REMOTE_HEAD, REMOTE_REPLICA] {
        set(&engine, host, |n| {
            n.offset = 0;
            n.replication_id = format!("fresh-{host}");
        });
    }
    passes(&controller, 2).await;
    assert!(controller.status().await.data_loss_suspected.is_some());
    drop(controller);
    let restarted = reopen(&engine, "loss-survives", "");
    assert!(
        restarted.status().await.data_loss_suspected.is_some(),
        "a restart does not forget a loss nobody acknowledged"
    );
    restarted.ack().await.unwrap();
    assert!(restarted.status().await.data_loss_suspected.is_none());
}

/// The writer restarts from a file older than what its replicas hold, before a (new) controller
/// recorded its latest offset: the recorded lineage is older still, so the writer seems to
/// continue it. Its replicas, cut off by the restart and ahead of it on its own history, show it
/// went back: it is replaced, not resynced from (which would lose what only the replicas hold).
#[tokio::test]
async fn a_writer_restarted_from_an_older_file_is_replaced_though_the_recorded_lineage_is_older() {
    let engine = world();
    for host in [WRITER, LOCAL_REPLICA, REMOTE_HEAD, REMOTE_REPLICA] {
        set(&engine, host, |n| n.offset = 500);
    }
    let first = controller(&engine, "older-file");
    passes(&first, 2).await;
    drop(first);
    // Writes go on while no controller records them; then the writer restarts from a file
    // written at 800.
    for host in [WRITER, LOCAL_REPLICA, REMOTE_HEAD, REMOTE_REPLICA] {
        set(&engine, host, |n| n.offset = 1000);
    }
    set(&engine, WRITER, |n| n.offset = 800);
    for host in [LOCAL_REPLICA, REMOTE_HEAD] {
        set(&engine, host, |n| n.link_broken = true);
    }
    let restarted = reopen(&engine, "older-file", "");
    passes(&restarted, 3).await;
    let log = engine.log();
    assert!(
        log.contains(&format!("PROMOTE {}", endpoint(LOCAL_REPLICA))),
        "the replica holding the most is promoted: {log:?}"
    );
    assert_eq!(restarted.epoch().unwrap().primary, NodeId(1), "{log:?}");
    assert!(
        log.contains(&format!("REPLICAOF {}", endpoint(WRITER))),
        "the writer that went back follows it: {log:?}"
    );
}

/// M10: an old writer comes back as a master while the epoch's writer blips. It takes no write
/// meanwhile (paused), and is demoted once the writer answers again.
#[tokio::test]
async fn a_rogue_master_is_paused_while_the_writer_does_not_answer_then_demoted() {
    let engine = world();
    let controller = controller(&engine, "rogue-blip");
    passes(&controller, 1).await;
    set(&engine, REMOTE_HEAD, |n| n.master = None);
    set(&engine, WRITER, |n| n.up = false);
    let _ = controller.reconcile_once().await;
    let log = engine.log();
    assert!(
        log.contains(&format!("PAUSE {}", endpoint(REMOTE_HEAD))),
        "the rogue is paused while the writer does not answer: {log:?}"
    );
    assert!(
        !log.contains(&format!("REPLICAOF {}", endpoint(REMOTE_HEAD))),
        "and not demoted under a writer that does not answer: {log:?}"
    );
    set(&engine, WRITER, |n| n.up = true);
    let _ = controller.reconcile_once().await;
    let log = engine.log();
    assert!(
        log.contains(&format!("REPLICAOF {}", endpoint(REMOTE_HEAD))),
        "demoted once the writer answers: {log:?}"
    );
    assert_eq!(controller.epoch().unwrap().primary, NodeId(0));
}

/// A fault injector that "crashes" the controller (a panic in its task) where its fault is armed.
struct CrashAt(valkey_dr_controller::faults::Fault);

impl valkey_dr_controller::faults::FaultInjector for CrashAt {
    fn at(
        &self,
        point: valkey_dr_controller::faults::FaultPoint,
    ) -> Option<valkey_dr_controller::faults::FaultAction> {
        self.0.action_at(point)
    }

    fn inject(&self, _: valkey_dr_controller::faults::FaultAction) {
        panic!("crashed at {}", self.0);
    }
}

/// M8: the controller dies after recording a switchover's epoch (`switch_dns`), or after the
/// promotion before it (`promote`), before closing the old primary's clients. The release is
/// recorded with the epoch (by the switchover, or by the next controller completing the intent),
/// so the next controller closes them (they would otherwise keep meeting READONLY on a replica
/// until they recycle) and lifts its pause, after the name moved.
#[tokio::test]
async fn a_switchover_cut_short_after_its_promotion_still_closes_the_old_primarys_clients() {
    use valkey_dr_controller::faults::{Fault, FaultAction, FaultPoint};
    use valkey_dr_controller::promotion::Step;
    for step in [Step::Promote, Step::SwitchDns] {
        let engine = world();
        let name = format!("release-{step:?}");
        let first = Arc::new(
            controller(&engine, &name).with_faults(Some(Arc::new(CrashAt(Fault {
                action: FaultAction::Crash,
                at: FaultPoint::StepDone(step),
            })))),
        );
        first.reconcile_once().await.unwrap();
        let crashed = tokio::spawn({
            let first = first.clone();
            async move { first.promote("us-east-2").await.map(|_| ()) }
        })
        .await;
        assert!(
            crashed.is_err(),
            "{step:?}: the controller died mid-switchover"
        );
        drop(first);
        let old = endpoint(WRITER);
        let before_restart = engine.log().len();
        assert!(
            !engine.log().contains(&format!("KILL-CLIENTS {old}")),
            "{step:?}: {:?}",
            engine.log()
        );
        let restarted = reopen(&engine, &name, "");
        passes(&restarted, 2).await;
        let log = engine.log()[before_restart..].to_vec();
        assert_eq!(
            restarted.epoch().unwrap().primary,
            NodeId(2),
            "{step:?}: {log:?}"
        );
        assert!(
            log.contains(&format!("KILL-CLIENTS {old}")),
            "{step:?}: the next controller closes the old primary's clients: {log:?}"
        );
        assert!(!engine.world().nodes[&old].paused, "{step:?}: {log:?}");
        assert!(
            log.contains(&format!("REWRITE {old}")),
            "{step:?}: and writes its replica role to its config file: {log:?}"
        );
        let kills = |log: &[String]| {
            log.iter()
                .filter(|l| **l == format!("KILL-CLIENTS {old}"))
                .count()
        };
        passes(&restarted, 2).await;
        assert_eq!(
            kills(&engine.log()[before_restart..]),
            1,
            "{step:?}: once: the release is settled in the state"
        );
    }
}

/// A writer whose disk fails (`-MISCONF` to every write) still answers and still holds the data:
/// after `down_after` the controller switches over to the replica of its region — the safe way,
/// paused, caught up, demoted before the promotion — and blocks further moves, so that a fault
/// shared by both nodes cannot make the writer flap. A writer out of memory is only reported:
/// a replica holds as much data.
/// Whether `status` reports the writer refusing every write.
async fn refusal_reported(controller: &Controller) -> bool {
    let findings = controller.status().await.findings;
    findings.iter().any(|f| f.contains("refuses every write"))
}

#[tokio::test]
async fn a_writer_that_refuses_writes_for_its_disk_is_switched_away_from_one_out_of_memory_is_reported()
 {
    let engine = world();
    let controller = controller(&engine, "misconf");
    controller.reconcile_once().await.unwrap();
    set(&engine, WRITER, |n| {
        n.refuses_writes = Some(valkey_dr_core::ErrorReply::Misconf)
    });
    controller.reconcile_once().await.unwrap();
    // Refusing for less than down_after: reported, not acted on yet.
    assert_eq!(controller.epoch().unwrap().primary, NodeId(0));
    assert!(
        refusal_reported(&controller).await,
        "the refusal is reported"
    );
    passes(&controller, 6).await;
    let epoch = controller.epoch().unwrap();
    assert_eq!((epoch.epoch, epoch.primary), (2, NodeId(1)));
    let log = engine.log();
    let at = |entry: String| {
        log.iter()
            .rposition(|l| *l == entry)
            .unwrap_or_else(|| panic!("{entry} missing: {log:?}"))
    };
    let (old, new) = (endpoint(WRITER), endpoint(LOCAL_REPLICA));
    assert!(at(format!("PAUSE {old}")) < at(format!("REPLICAOF {old}")));
    assert!(at(format!("REPLICAOF {old}")) < at(format!("PROMOTE {new}")));
    assert!(
        !refusal_reported(&controller).await,
        "the new writer takes writes"
    );
    // Reported as what it is: a switchover with its reason, counted once (before, it also
    // reported a failover start that nothing completed).
    let events = std::fs::read_to_string(std::env::temp_dir().join(format!(
        "valkey-dr-fake-misconf-{}/events.jsonl",
        std::process::id()
    )))
    .unwrap();
    let kinds: Vec<serde_json::Value> = events
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let of = |kind: &str| kinds.iter().filter(|e| e["event"] == kind).count();
    let started: Vec<&serde_json::Value> = kinds
        .iter()
        .filter(|e| e["event"] == "promotion_started")
        .collect();
    assert_eq!(started.len(), 1, "{events}");
    assert_eq!(started[0]["reason"]["writer_refuses_writes"], "misconf");
    assert_eq!(of("promotion_done"), 1, "{events}");
    assert_eq!(of("failover_started"), 0, "{events}");
    assert_eq!(of("writer_refuses_writes"), 1, "{events}");
    // The new writer runs out of memory: reported, never moved (blocked or not).
    set(&engine, LOCAL_REPLICA, |n| {
        n.refuses_writes = Some(valkey_dr_core::ErrorReply::OutOfMemory)
    });
    passes(&controller, 6).await;
    assert_eq!(controller.epoch().unwrap().epoch, 2);
    assert!(
        refusal_reported(&controller).await,
        "the refusal is reported"
    );
}

#[tokio::test]
async fn adopt_decides_nothing_while_the_published_epoch_cannot_be_read() {
    use valkey_dr_controller::failover::FailoverError;
    use valkey_dr_core::records::{ManagedNames, ownership_record};
    use valkey_dr_dns::DnsProvider;

    // us-east-1 is gone and the operator made us-east-2's head a master by hand.
    let engine = world();
    set(&engine, WRITER, |n| n.up = false);
    set(&engine, LOCAL_REPLICA, |n| n.up = false);
    set(&engine, REMOTE_HEAD, |n| n.master = None);
    // The DNS server holding the ownership record does not answer: a real RFC 2136 client
    // sending to a port nothing listens on.
    let down = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let key = valkey_dr_dns::rfc2136::TsigKey {
        name: "valkey-dr".into(),
        algorithm: valkey_dr_core::config::TsigAlgorithm::HmacSha256,
        secret: vec![7; 32],
    };
    let unreachable = valkey_dr_dns::rfc2136::Rfc2136::new(
        vec![down],
        "valkey-dr.live",
        key,
        Duration::from_millis(300),
    )
    .unwrap();
    let controller = reopen_with_dns(&engine, "adopt-dns-down", Arc::new(unreachable));
    // Adopting epoch 0 + 1 below a published epoch would have every later write of the name
    // refused as stale: nothing is adopted until the record can be read.
    let refused = controller.adopt("us-east-2").await.unwrap_err();
    assert!(matches!(refused, FailoverError::Dns(_)), "{refused}");
    assert_eq!(controller.epoch(), None, "an epoch was adopted blind");

    // The server back, holding epoch 5 for us-east-1: the adopted epoch goes past it.
    let config = controller.config().clone();
    drop(controller);
    let zone = Zone::new(&config.dns.zone);
    zone.apply(&[valkey_dr_core::Change::Create {
        new: ownership_record(&ManagedNames::from_config(&config), 5, "us-east-1"),
    }])
    .await
    .unwrap();
    let controller = reopen_with_dns(&engine, "adopt-dns-down", Arc::new(zone));
    let adopted = controller.adopt("us-east-2").await.unwrap();
    assert_eq!(adopted.epoch, 6);
    assert_eq!(adopted.primary, NodeId(2));
}
