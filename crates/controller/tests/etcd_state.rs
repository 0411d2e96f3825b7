//! The state store in a real etcd (started by the test): a write whose reply was lost must not
//! wedge the leader.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use valkey_dr_controller::state::{State, StateStore};
use valkey_dr_coord::cluster::EtcdCluster;
use valkey_dr_coord::{Coordinator, LeaderCell};
use valkey_dr_core::{Config, EpochRecord, NodeId, Topology};

fn topology() -> Topology {
    let config = Config::parse(
        "primary_region = \"a\"\n[[regions]]\nname = \"a\"\nnodes = [{ host = \"127.0.0.1\" }]\n\
         [[regions]]\nname = \"b\"\nnodes = [{ host = \"127.0.0.2\" }]\n\
         [dns]\nzone = \"z.test\"\nglobal_name = \"demo\"\n",
    )
    .unwrap();
    Topology::from_config(&config)
}

fn epoch(epoch: u64, primary: usize) -> EpochRecord {
    EpochRecord {
        epoch,
        primary: NodeId(primary),
    }
}

fn state(n: u64, primary: usize) -> State {
    State::new(epoch(n, primary))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_whose_reply_was_lost_counts_once_etcd_shows_it_and_never_wedges_the_leader() {
    let dir = std::env::temp_dir().join(format!("valkey-dr-state-etcd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ip = Ipv4Addr::new(127, 252, (std::process::id() % 250) as u8, 7);
    let cluster = EtcdCluster::start(&dir, ip, 1).await.expect("etcd starts");
    let coord = Coordinator::connect(
        &cluster.endpoints(),
        "/valkey-dr/state-test",
        "witness",
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    let claim = coord
        .try_lead()
        .await
        .unwrap()
        .expect("the only candidate leads");
    let leader = Arc::new(LeaderCell::default());
    leader.set(Some(claim.fence()));

    let topology = topology();
    let ours = StateStore::in_etcd(coord.clone(), leader.clone(), &topology);
    ours.reload().await.unwrap();
    ours.adopt_epoch(epoch(1, 0), None, false).await.unwrap();

    // The same leader's write of epoch 2 commits, but its reply is lost: modelled by a second
    // store on the same fence writing it, so that `ours` still holds the old revision.
    let lost_reply = StateStore::in_etcd(coord.clone(), leader.clone(), &topology);
    lost_reply.reload().await.unwrap();
    lost_reply
        .adopt_epoch(epoch(2, 1), None, false)
        .await
        .unwrap();

    // The retry finds epoch 2 in etcd: done, not a failure.
    ours.adopt_epoch(epoch(2, 1), None, false).await.unwrap();
    assert_eq!(ours.get(), Some(state(2, 1)));
    // And the next write goes through: the store re-read the revision.
    ours.adopt_epoch(epoch(3, 0), None, false).await.unwrap();
    assert_eq!(ours.epoch().unwrap().epoch, 3);

    // A conflicting write is refused, and leaves the store holding what etcd holds.
    lost_reply.reload().await.unwrap();
    lost_reply
        .adopt_epoch(epoch(4, 1), None, false)
        .await
        .unwrap();
    assert!(ours.adopt_epoch(epoch(4, 0), None, false).await.is_err());
    assert_eq!(
        ours.epoch(),
        Some(EpochRecord {
            epoch: 4,
            primary: NodeId(1)
        })
    );
    ours.adopt_epoch(epoch(5, 0), None, false).await.unwrap();

    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
