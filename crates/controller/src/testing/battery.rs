//! The engine battery: what the controller relies on an engine to do, checked step by step. It
//! runs against real Valkey servers and against [`super::FakeEngine`] (`tests/engine_battery.rs`),
//! so that the controller's tests on the fake hold for real nodes. A new engine passes it first.

use std::time::{Duration, Instant};

use valkey_dr_core::observation::{EpochMark, FailureKind, History};
use valkey_dr_core::self_fence::WriteQuorum;
use valkey_dr_core::{Endpoint, Engine, NodeId, ReplicationInfo};

/// Two fresh standalone masters (no replicas, no write quorum, each with a config file it may
/// rewrite), an address where nothing listens (a dead process) and one that takes connections
/// but never answers (a stalled node, or one behind a cut).
pub struct BatteryNodes {
    pub a: Endpoint,
    pub b: Endpoint,
    pub gone: Endpoint,
    pub silent: Endpoint,
}

/// How long a replica may take to attach (a real full sync of an empty dataset: well under 1 s).
const ATTACH_WITHIN: Duration = Duration::from_secs(15);

async fn eventually(
    engine: &dyn Engine,
    node: &Endpoint,
    what: &str,
    check: impl Fn(&ReplicationInfo) -> bool,
) -> ReplicationInfo {
    let started = Instant::now();
    loop {
        let info = engine.replication(node).await;
        match info {
            Ok(info) if check(&info) => return info,
            other if started.elapsed() > ATTACH_WITHIN => {
                panic!("{node}: {what} not seen within {ATTACH_WITHIN:?}; last: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn mark(epoch: u64, writer: &Endpoint) -> EpochMark {
    EpochMark {
        epoch,
        writer: writer.to_string(),
    }
}

/// Runs every check in order; panics with the step that failed.
pub async fn battery(engine: &dyn Engine, nodes: &BatteryNodes) {
    let (a, b) = (&nodes.a, &nodes.b);

    // A dead process and a silent node are told apart, and neither is an answer: only the
    // first surely takes no writes now.
    let gone = engine.observe(NodeId(9), &nodes.gone).await;
    assert_eq!(
        gone.failure(),
        Some(FailureKind::Gone),
        "a node where nothing listens is gone: {gone:?}"
    );
    assert!(engine.ping(&nodes.gone).await.is_err(), "ping of nothing");
    let silent = engine.observe(NodeId(8), &nodes.silent).await;
    assert_eq!(
        silent.failure(),
        Some(FailureKind::Unreachable),
        "a node that never answers is unreachable, not gone: {silent:?}"
    );
    assert!(engine.ping(a).await.is_ok(), "ping of a live node");

    // Two masters; a heartbeat is written on a master and read back with its epoch mark.
    let a_info = engine.replication(a).await.expect("a answers");
    assert!(a_info.is_primary(), "a starts as a master: {a_info:?}");
    engine
        .write_heartbeat(a, 1_000, &mark(1, a))
        .await
        .expect("a master takes a heartbeat");
    let seen = engine.observe(NodeId(0), a).await;
    assert_eq!(seen.epoch_mark, Some(mark(1, a)), "the mark reads back");
    assert_eq!(seen.heartbeat_ms, Some(1_000), "the heartbeat reads back");

    // A replica copies its master's history and data, and refuses writes.
    engine.replicate_from(b, a).await.expect("REPLICAOF");
    let b_info = eventually(engine, b, "attached to a, link up", |i| {
        matches!(&i.role, valkey_dr_core::Role::Replica { master, link_up: true, sync_in_progress: false } if master == a)
    })
    .await;
    let a_history = engine.replication(a).await.expect("a answers").history();
    assert!(
        b_info.shares_history(&a_history),
        "the replica is on its master's history: {b_info:?} vs {a_history:?}"
    );
    let b_seen = engine.observe(NodeId(1), b).await;
    assert_eq!(
        b_seen.epoch_mark,
        Some(mark(1, a)),
        "the mark reaches the replica"
    );
    assert!(
        engine.write_heartbeat(b, 2_000, &mark(1, a)).await.is_err(),
        "a replica refuses writes"
    );
    eventually(engine, a, "one replica attached", |i| {
        i.connected_replicas == 1
    })
    .await;

    // A write quorum the master meets takes writes; one it does not meet refuses them.
    engine
        .set_write_quorum(
            a,
            WriteQuorum {
                replicas: 1,
                max_lag_s: 10,
            },
        )
        .await
        .expect("quorum of 1");
    // Valkey counts a replica toward the quorum once it has acknowledged (it does every second),
    // not when its link comes up: the controller waits as long before raising one (RAISE_AFTER).
    let started = Instant::now();
    while let Err(e) = engine.write_heartbeat(a, 3_000, &mark(1, a)).await {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "one replica attached meets a quorum of 1: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    engine
        .set_write_quorum(
            a,
            WriteQuorum {
                replicas: 2,
                max_lag_s: 10,
            },
        )
        .await
        .expect("quorum of 2");
    assert!(
        engine.write_heartbeat(a, 4_000, &mark(1, a)).await.is_err(),
        "a quorum of 2 with one replica refuses writes"
    );
    engine
        .set_write_quorum(a, WriteQuorum::OFF)
        .await
        .expect("quorum off");

    // Paused writes are not taken; unpaused they are.
    engine
        .pause_writes(a, Duration::from_secs(5))
        .await
        .expect("pause");
    assert!(
        engine.write_heartbeat(a, 5_000, &mark(1, a)).await.is_err(),
        "a paused master takes no write"
    );
    engine.unpause(a).await.expect("unpause");
    engine
        .write_heartbeat(a, 6_000, &mark(1, a))
        .await
        .expect("an unpaused master takes writes");

    // The switchover's fence: paused, and the offset read with the pause is final.
    let frozen = engine
        .pause_writes_and_read(a, Duration::from_secs(5))
        .await
        .expect("pause and read");
    assert!(frozen.is_primary(), "read as of the pause: {frozen:?}");
    assert!(
        engine.write_heartbeat(a, 6_500, &mark(1, a)).await.is_err(),
        "a paused master takes no write"
    );
    let still = engine.replication(a).await.expect("a answers while paused");
    assert_eq!(still.offset, frozen.offset, "nothing moved past the pause");
    // The release: clients closed and the pause lifted together.
    engine
        .kill_clients_and_unpause(a)
        .await
        .expect("kill clients and unpause");
    engine
        .write_heartbeat(a, 6_700, &mark(1, a))
        .await
        .expect("released, it takes writes");

    // Promotion: the replica becomes a master that continues its master's history.
    engine.promote(b).await.expect("REPLICAOF NO ONE");
    let promoted = engine.replication(b).await.expect("b answers");
    assert!(promoted.is_primary(), "promoted: {promoted:?}");
    let before = History {
        replication_id: a_history.replication_id.clone(),
        offset: 0,
        parent: None,
    };
    assert!(
        promoted.shares_history(&before),
        "the promoted node keeps the old history as its second id: {promoted:?}"
    );
    engine
        .promote(b)
        .await
        .expect("promoting a master is a no-op");

    // The old master follows the new one; its role is persisted with the quorum at rest, which
    // is in force at once: a node back as a lone master acknowledges nothing.
    engine
        .replicate_from(a, b)
        .await
        .expect("REPLICAOF the new master");
    eventually(engine, a, "attached to b, link up", |i| {
        matches!(&i.role, valkey_dr_core::Role::Replica { master, link_up: true, sync_in_progress: false } if master == b)
    })
    .await;
    engine.persist_role(a).await.expect("CONFIG REWRITE");
    engine.promote(a).await.expect("a master again");
    assert!(
        engine.write_heartbeat(a, 7_000, &mark(2, a)).await.is_err(),
        "a persisted node promoted without a replica refuses writes (quorum at rest)"
    );
    engine
        .set_write_quorum(a, WriteQuorum::OFF)
        .await
        .expect("quorum off");
    engine
        .write_heartbeat(a, 8_000, &mark(2, a))
        .await
        .expect("with the quorum lifted it takes writes");

    // Clients can be closed, and the sync settings read.
    engine.kill_clients(b).await.expect("CLIENT KILL");
    engine.sync_settings(b).await.expect("CONFIG GET");
}
