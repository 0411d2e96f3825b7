//! Leader election and fencing on a real three-member etcd cluster started by the test.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use valkey_dr_coord::cluster::EtcdCluster;
use valkey_dr_coord::{CoordError, Coordinator};

const TTL: Duration = Duration::from_secs(2);

async fn cluster(name: &str) -> EtcdCluster {
    let dir = std::env::temp_dir().join(format!("valkey-dr-etcd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // An address of its own, so its ports never collide with tests that use 127.0.0.1.
    let ip = Ipv4Addr::new(127, 253, (std::process::id() % 250) as u8, name.len() as u8);
    EtcdCluster::start(&dir, ip, 3).await.expect("etcd starts")
}

async fn coordinator(cluster: &EtcdCluster, site: &str) -> Coordinator {
    Coordinator::connect(&cluster.endpoints(), "/valkey-dr/test", site, TTL)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_leader_at_a_time_and_a_deposed_leaders_write_is_refused() {
    let cluster = cluster("depose").await;
    let east = coordinator(&cluster, "us-east-1").await;
    let west = coordinator(&cluster, "us-east-2").await;

    let mut leader = east.try_lead().await.unwrap().expect("first claim wins");
    assert_eq!(west.try_lead().await.unwrap().unwrap_err(), "us-east-1");
    assert_eq!(west.leader().await.unwrap().as_deref(), Some("us-east-1"));
    east.put_fenced(leader.fence(), "epoch", b"2")
        .await
        .unwrap();
    east.renew(&mut leader).await.unwrap();

    // The leader stalls (no renewal): its lease expires in etcd and another site takes over.
    let started = Instant::now();
    let successor = loop {
        if let Ok(won) = west.try_lead().await.unwrap() {
            break won;
        }
        assert!(started.elapsed() < TTL * 3, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(successor.token > leader.token);
    // Its actions on nodes wait until the old leader's window has surely ended (lock-delay).
    assert!(successor.acts_from() > Instant::now() + TTL / 2);
    west.put_fenced(successor.fence(), "epoch", b"3")
        .await
        .unwrap();

    // The old leader wakes up: on its own clock it no longer may act, and even if its clock lied,
    // etcd refuses its write because the fencing token is stale.
    assert!(!leader.may_act(Instant::now()));
    let forged = {
        let mut l = leader;
        east.renew(&mut l).await.unwrap_err();
        l
    };
    let stale = valkey_dr_coord::Leadership::for_test(forged.token, Instant::now() + TTL);
    assert!(matches!(
        east.put_fenced(stale.fence(), "epoch", b"stale").await,
        Err(CoordError::Deposed { .. })
    ));
    assert_eq!(west.get("epoch").await.unwrap().as_deref(), Some(&b"3"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_without_quorum_stops_acting_before_its_lease_can_expire() {
    let mut cluster = cluster("quorum").await;
    let east = coordinator(&cluster, "us-east-1").await;
    let mut leader = east.try_lead().await.unwrap().unwrap();
    east.renew(&mut leader).await.unwrap();
    let renewed = Instant::now();
    // The right to act ends two thirds of the TTL after the renewal was sent: before etcd can
    // expire the key, whatever delays and clock drift.
    assert!(leader.act_until() <= renewed + TTL * 2 / 3);
    // Two of three members gone: no quorum. The surviving member may serve keep-alives until it
    // notices it lost its followers (an election timeout, 500 ms here): wait that out.
    cluster.kill(1);
    cluster.kill(2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let deadline = leader.act_until();
    for _ in 0..3 {
        assert!(
            east.renew(&mut leader).await.is_err(),
            "renewed without quorum"
        );
    }
    assert_eq!(leader.act_until(), deadline);
    tokio::time::sleep_until(deadline.into()).await;
    assert!(!leader.may_act(Instant::now()));
    assert!(matches!(
        east.put_fenced(leader.fence(), "epoch", b"late").await,
        Err(CoordError::Expired)
    ));
    cluster.restart(1).unwrap();
    cluster.restart(2).unwrap();
    cluster.wait_ready(Duration::from_secs(20)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn resigning_hands_over_at_once() {
    let cluster = cluster("resign").await;
    let east = coordinator(&cluster, "us-east-1").await;
    let witness = coordinator(&cluster, "witness").await;
    let leader = east.try_lead().await.unwrap().unwrap();
    east.resign(leader).await.unwrap();
    let next = witness
        .try_lead()
        .await
        .unwrap()
        .expect("the key went with the lease");
    assert!(next.may_act(Instant::now()));
}

#[tokio::test(flavor = "multi_thread")]
async fn swaps_compare_the_revision_and_a_silent_sites_claim_expires() {
    let cluster = cluster("swap").await;
    let east = coordinator(&cluster, "us-east-1").await;
    let west = coordinator(&cluster, "us-east-2").await;
    let leader = east.try_lead().await.unwrap().unwrap();

    // Compare-and-swap: the first write expects absence, the second the first's revision.
    let first = east
        .swap_fenced(leader.fence(), "dns", Some(0), b"a")
        .await
        .unwrap();
    assert!(matches!(
        east.swap_fenced(leader.fence(), "dns", Some(0), b"b").await,
        Err(CoordError::Conflict { found, .. }) if found == first
    ));
    east.swap_fenced(leader.fence(), "dns", Some(first), b"c")
        .await
        .unwrap();
    assert_eq!(
        west.get_versioned("dns").await.unwrap().value.as_deref(),
        Some(&b"c"[..])
    );

    // A site's presence lives as long as its claim is renewed.
    let mut present = west.claim_site().await.unwrap();
    west.put_with(&present, "views/us-east-2", b"{}")
        .await
        .unwrap();
    west.renew(&mut present).await.unwrap();
    let listed = |c: Vec<(String, Vec<u8>)>| c.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(listed(east.list("sites").await.unwrap()), ["us-east-2"]);
    assert_eq!(listed(east.list("views").await.unwrap()), ["us-east-2"]);
    tokio::time::sleep(TTL + Duration::from_millis(1200)).await;
    assert!(east.list("sites").await.unwrap().is_empty());
    assert!(east.list("views").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_whose_key_is_gone_is_deposed_even_when_its_lease_still_renews() {
    let cluster = cluster("gone").await;
    let east = coordinator(&cluster, "us-east-1").await;
    let mut leader = east.try_lead().await.unwrap().unwrap();
    east.renew_leadership(&mut leader).await.unwrap();
    // The key disappears while the lease lives on (an operator, or an early expiry in etcd):
    // a keep-alive alone still succeeds, the leadership check does not.
    let mut raw = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .unwrap();
    raw.delete("/valkey-dr/test/leader", None).await.unwrap();
    east.renew(&mut leader).await.unwrap();
    assert!(matches!(
        east.renew_leadership(&mut leader).await,
        Err(CoordError::Deposed { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sites_presence_whose_key_is_gone_is_not_renewed_though_its_lease_is() {
    let cluster = cluster("presence-gone").await;
    let west = coordinator(&cluster, "us-east-2").await;
    let mut present = west.claim_site().await.unwrap();
    west.renew_presence(&mut present).await.unwrap();
    // The key disappears while the lease lives on: the leader would read the region as released,
    // so the site must not believe itself present (before, the keep-alive alone said it was).
    let mut raw = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .unwrap();
    raw.delete("/valkey-dr/test/sites/us-east-2", None)
        .await
        .unwrap();
    west.renew(&mut present).await.unwrap();
    let renewed = west.renew_presence(&mut present).await;
    assert!(matches!(renewed, Err(CoordError::Expired)), "{renewed:?}");
    // A new claim is present again.
    let mut again = west.claim_site().await.unwrap();
    west.renew_presence(&mut again).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_lease_ends_the_leadership_at_once() {
    let cluster = cluster("revoked").await;
    let east = coordinator(&cluster, "us-east-1").await;
    let mut leader = east.try_lead().await.unwrap().unwrap();
    // etcd 3.4 revokes every lease when a frozen raft leader resumes: the leader's own clock
    // still says it may act, the renewal must say it may not.
    let mut raw = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .unwrap();
    for lease in raw.leases().await.unwrap().leases() {
        raw.lease_revoke(lease.id()).await.unwrap();
    }
    assert!(leader.may_act(Instant::now()));
    // The revocation deletes the leader key with the lease. Which the renewal meets first depends
    // on which member applied the revocation first (the keep-alive goes to the raft leader, the
    // read may be served after a follower applied it): `Expired` or `Deposed`, and the
    // controller stops acting at once on either.
    let renewed = east.renew_leadership(&mut leader).await;
    assert!(
        matches!(
            renewed,
            Err(CoordError::Expired | CoordError::Deposed { .. })
        ),
        "{renewed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn raft_leadership_moves_to_the_named_member() {
    let cluster = cluster("move").await;
    let endpoints = cluster.endpoints();
    for target in ["etcd2", "etcd0"] {
        valkey_dr_coord::cluster::move_leader_to(&endpoints, None, target)
            .await
            .unwrap();
        let mut raw = etcd_client::Client::connect(&endpoints, None)
            .await
            .unwrap();
        let members = raw.member_list().await.unwrap();
        let id = members
            .members()
            .iter()
            .find(|m| m.name() == target)
            .unwrap()
            .id();
        assert_eq!(
            raw.status().await.unwrap().leader(),
            id,
            "leader is {target}"
        );
    }
}

/// A switchover's one commit costs a quorum round trip from the member that leads the raft
/// group: the coordinator moves the leadership to its own (first) member, and says when it
/// already is there.
#[tokio::test(flavor = "multi_thread")]
async fn the_raft_leadership_moves_to_the_coordinators_own_member() {
    let cluster = cluster("lead-here").await;
    let endpoints = cluster.endpoints();
    valkey_dr_coord::cluster::move_leader_to(&endpoints, None, "etcd2")
        .await
        .unwrap();
    // This site's member first, as every site lists its own.
    let own = Coordinator::connect(&endpoints, "/valkey-dr/test", "us-east-1", TTL)
        .await
        .unwrap();
    assert!(own.lead_raft_here(Duration::from_secs(5)).await.unwrap());
    let leader = valkey_dr_coord::cluster::raft_leader(&endpoints, None)
        .await
        .unwrap();
    assert_eq!(leader, "etcd0");
    // Already there: nothing to move, still true.
    assert!(own.lead_raft_here(Duration::ZERO).await.unwrap());
    // The first member leads: a commit from here works as before.
    let mut leadership = own.try_lead().await.unwrap().unwrap();
    own.renew_leadership(&mut leadership).await.unwrap();
}

/// A member that hangs (frozen here; on a network, one cut off or waiting for a new raft leader)
/// holds a request until its timeout. Renewals and reads ask the next member after a short while
/// instead of waiting that out, so that a site's presence stays renewed within its region
/// guard's fence window while one member hangs (asked one after another, the members of a
/// three-site etcd cost up to three timeouts).
#[tokio::test(flavor = "multi_thread")]
async fn renewals_and_reads_do_not_wait_out_a_hung_member() {
    let cluster = cluster("hedged").await;
    // A TTL of 30 s gives each member 5 s to answer.
    let ttl = Duration::from_secs(30);
    let site = Coordinator::connect(&cluster.endpoints(), "/valkey-dr/test", "us-east-1", ttl)
        .await
        .unwrap();
    let mut presence = site.claim_site().await.unwrap();
    // A follower hangs; freezing the raft leader would cost an election on top.
    valkey_dr_coord::cluster::move_leader_to(&cluster.endpoints(), None, "etcd1")
        .await
        .unwrap();
    cluster.freeze(0, true);

    let asked = Instant::now();
    let renewed = site.renew_presence(&mut presence).await;
    let read = site.get("state").await;
    let waited = asked.elapsed();
    cluster.freeze(0, false);
    renewed.unwrap();
    read.unwrap();
    assert!(
        waited < Duration::from_secs(5),
        "waited {waited:?}: the frozen member's whole timeout"
    );
}
