//! The leader's engine ([`LeaderOnly`]) acts on a node only inside this controller's lease
//! window: an action that has not reached a slow node when the window ends is abandoned, so that
//! it cannot land after another controller took over; a renewal meanwhile keeps it going.

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
