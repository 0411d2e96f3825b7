//! The cluster drill's emulated link (`drill cluster --link-ms`): a node is reached through a
//! proxy at the address it announces, which delays only what comes from another region.

use super::*;
use valkey_dr_lab::cluster::{LinkLayout, command, form_linked};

/// The round trip of one `PING` to `node`.
async fn ping_ms(node: SocketAddr) -> f64 {
    let mut conn = valkey_dr_lab::cluster::connect(node).await.unwrap();
    let started = Instant::now();
    let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    started.elapsed().as_secs_f64() * 1000.0
}

#[tokio::test]
async fn a_linked_cluster_delays_what_crosses_regions_and_nothing_else() {
    let dir = std::env::temp_dir().join(format!("valkey-dr-linked-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let block = (std::process::id() >> 8) as u8;
    let at = |first: u8, n: u8| Ipv4Addr::new(127, first + n, block, 77);
    // One shard: its primary in region 0, a replica in region 1; the test's client in region 0.
    let (listen, announced) = ([at(60, 0), at(60, 1)], [at(62, 0), at(62, 1)]);
    let layout = LinkLayout {
        listen: &listen,
        announced: &announced,
        regions: &[0, 1],
        clients_region: 0,
        delay: Duration::from_millis(40),
    };
    let (addrs, _nodes, _link) = form_linked(&dir, &layout, 1).await.unwrap();
    assert_eq!(
        addrs.iter().map(|a| a.ip()).collect::<Vec<_>>(),
        announced.map(std::net::IpAddr::V4),
        "clients are given the announced addresses"
    );

    // The cluster knows its nodes by the announced addresses, and the replica reaches its
    // primary through the link.
    let text = |v: redis::Value| redis::from_redis_value::<String>(v).unwrap();
    let nodes = text(command(addrs[0], &["CLUSTER", "NODES"]).await.unwrap());
    for ip in announced.iter().chain(&listen) {
        assert_eq!(
            nodes.contains(&format!("{ip}:")),
            announced.contains(ip),
            "{ip} in {nodes}"
        );
    }
    let info = text(command(addrs[1], &["INFO", "replication"]).await.unwrap());
    assert!(
        info.contains(&format!("master_host:{}", announced[0])),
        "{info}"
    );

    // From region 0: the primary beside it at once, the replica 40 ms away each way.
    let mut near = Vec::new();
    let mut far = Vec::new();
    for _ in 0..10 {
        near.push(ping_ms(addrs[0]).await);
        far.push(ping_ms(addrs[1]).await);
    }
    let least = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(least(&far) >= 80.0, "across the link: {far:?}");
    assert!(least(&near) < 40.0, "within the region: {near:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
