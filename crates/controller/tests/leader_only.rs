//! The leader's engine ([`LeaderOnly`]) acts on a node only inside this controller's lease
//! window: an action that has not reached a slow node when the window ends is abandoned, so that
//! it cannot land after another controller took over; a renewal meanwhile keeps it going. A new
//! leader's first action on a node waits until its predecessor's last window has surely ended.

use std::sync::Arc;
use std::time::{Duration, Instant};

use valkey_dr_controller::ha::LeaderOnly;
use valkey_dr_controller::testing::{FakeEngine, FakeNode};
use valkey_dr_coord::{Fence, LeaderCell};
use valkey_dr_core::{Endpoint, Engine};

fn slow_node(answers_after: Duration) -> (FakeEngine, Endpoint) {
    let engine = FakeEngine::default();
    let node = Endpoint::new("127.0.1.1", 6379);
    engine.insert(
        node.clone(),
        FakeNode {
            answers_after,
            ..FakeNode::primary("history", 1000)
        },
    );
    (engine, node)
}

fn leader_for(window: Duration) -> Arc<LeaderCell> {
    let leader = Arc::new(LeaderCell::default());
    leader.set(Some(Fence {
        token: 7,
        act_until: Instant::now() + window,
        acts_from: Instant::now(),
    }));
    leader
}

#[tokio::test]
async fn an_action_that_outlives_the_lease_window_is_abandoned_before_it_lands() {
    let (engine, node) = slow_node(Duration::from_millis(400));
    let leader = leader_for(Duration::from_millis(100));
    let leading = LeaderOnly {
        inner: Arc::new(engine.clone()),
        leader,
    };
    let error = leading
        .pause_writes(&node, Duration::from_secs(5))
        .await
        .expect_err("the window ended before the node answered");
    assert!(error.reason.contains("lease window ended"), "{error}");
    // Had the command gone on, it would have landed by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        engine.log(),
        Vec::<String>::new(),
        "nothing reached the node"
    );
    assert!(!engine.world().nodes[&node].paused);
}

#[tokio::test]
async fn a_renewal_during_the_action_keeps_it_going() {
    let (engine, node) = slow_node(Duration::from_millis(300));
    let leader = leader_for(Duration::from_millis(100));
    let renewer = leader.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        renewer.set(Some(Fence {
            token: 7,
            act_until: Instant::now() + Duration::from_secs(2),
            acts_from: Instant::now(),
        }));
    });
    let leading = LeaderOnly {
        inner: Arc::new(engine.clone()),
        leader,
    };
    leading
        .pause_writes(&node, Duration::from_secs(5))
        .await
        .expect("renewed before the window ended");
    assert_eq!(engine.log(), vec![format!("PAUSE {node}")]);
}

#[tokio::test]
async fn no_action_without_the_lease_and_observing_needs_none() {
    let (engine, node) = slow_node(Duration::ZERO);
    let leading = LeaderOnly {
        inner: Arc::new(engine.clone()),
        leader: Arc::new(LeaderCell::default()),
    };
    let error = leading.unpause(&node).await.expect_err("not the leader");
    assert!(error.reason.contains("not the leader"), "{error}");
    assert!(leading.replication(&node).await.is_ok());
    assert!(engine.log().is_empty());
}

/// Review finding N6 (c): etcd 3.4 revokes every lease when a frozen raft leader resumes, so the
/// old leader may never hear it was deposed and acts until its own window ends — up to ⅔ TTL
/// after the new leader took the key. The new leader's actions on nodes wait that long; its
/// heartbeats (no role, no client access changes) do not.
#[tokio::test]
async fn a_new_leader_acts_on_nodes_only_after_its_predecessors_window() {
    let (engine, node) = slow_node(Duration::ZERO);
    let predecessor_stops = Instant::now() + Duration::from_millis(300);
    let leader = Arc::new(LeaderCell::default());
    leader.set(Some(Fence {
        token: 8,
        act_until: Instant::now() + Duration::from_secs(5),
        acts_from: predecessor_stops,
    }));
    let leading = LeaderOnly {
        inner: Arc::new(engine.clone()),
        leader,
    };
    let mark = valkey_dr_core::observation::EpochMark {
        epoch: 3,
        writer: node.to_string(),
    };
    leading.write_heartbeat(&node, 1, &mark).await.unwrap();
    assert!(
        Instant::now() < predecessor_stops,
        "the heartbeat did not wait"
    );
    leading.promote(&node).await.unwrap();
    assert!(
        Instant::now() >= predecessor_stops,
        "promoted while the predecessor could still act"
    );
    leading
        .pause_writes(&node, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        Instant::now() < predecessor_stops + Duration::from_millis(200),
        "only the first action waits"
    );
}
