//! Cluster mode (read-only so far) against a real Valkey cluster: three shards, each a primary
//! and a replica in us-east-1 and a replica in us-east-2 (nine `valkey-server` processes on
//! loopback). The engine discovers the shards from any node; `valkey-dr cluster status` places
//! them in the configured regions and says what is wrong.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use valkey_dr_core::Endpoint;
use valkey_dr_core::cluster::{NodeHealth, SLOTS, ShardRole};
use valkey_dr_lab::cluster::{free_cluster_port, start};
use valkey_dr_valkey::{Security, Timeouts, ValkeyEngine};

use crate::harness::{BIN, succeed};

fn config(dir: &std::path::Path, addrs: &[SocketAddr]) -> std::path::PathBuf {
    let nodes = |range: std::ops::Range<usize>| {
        addrs[range]
            .iter()
            .map(|a| format!("{{ host = \"{}\", port = {} }}", a.ip(), a.port()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let path = dir.join("valkey-dr.toml");
    std::fs::write(
        &path,
        format!(
            "primary_region = \"us-east-1\"\nstate_dir = \"{}\"\n\
             [[regions]]\nname = \"us-east-1\"\nnodes = [{}]\n\
             [[regions]]\nname = \"us-east-2\"\nnodes = [{}]\n\
             [dns]\nzone = \"valkey-dr.live\"\nglobal_name = \"demo\"\n",
            dir.join("state").display(),
            nodes(0..6),
            nodes(6..9)
        ),
    )
    .unwrap();
    path
}

fn status(config: &std::path::Path) -> serde_json::Value {
    let out = succeed(
        Command::new(BIN)
            .args(["cluster", "status", "--output", "json", "--config"])
            .arg(config),
    );
    serde_json::from_slice(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shards_of_a_stretched_cluster_are_discovered_and_placed_in_their_regions() {
    let dir = std::env::temp_dir().join(format!("valkey-dr-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ip = Ipv4Addr::LOCALHOST;
    let addrs: Vec<SocketAddr> = (0..9)
        .map(|_| SocketAddr::new(ip.into(), free_cluster_port(ip).expect("a free port")))
        .collect();
    // Nodes 0–2 lead the shards; 3–5 follow them in us-east-1, 6–8 in us-east-2.
    let mut nodes = start(&dir, &addrs, 3).await.expect("the cluster forms");

    // The engine reads the same shards from a primary and from a replica.
    let engine = ValkeyEngine::new(
        Timeouts {
            connect: Duration::from_millis(500),
            command: Duration::from_millis(500),
        },
        Security::default(),
    );
    let endpoint = |a: SocketAddr| Endpoint::new(&a.ip().to_string(), a.port());
    for asked in [addrs[0], addrs[7]] {
        let shards = engine.cluster_shards(&endpoint(asked)).await.unwrap();
        assert_eq!(shards.len(), 3, "{shards:#?}");
        assert_eq!(shards.iter().map(|s| s.slot_count()).sum::<u32>(), SLOTS);
        for (i, primary) in addrs[..3].iter().enumerate() {
            let shard = shards
                .iter()
                .find(|s| {
                    s.primary()
                        .is_some_and(|p| p.endpoint == endpoint(*primary))
                })
                .unwrap_or_else(|| panic!("a shard led by node {i}: {shards:#?}"));
            let mut replicas: Vec<Endpoint> = shard
                .nodes
                .iter()
                .filter(|n| n.role == ShardRole::Replica)
                .map(|n| n.endpoint.clone())
                .collect();
            replicas.sort_by_key(|e| e.port);
            let mut expected = vec![endpoint(addrs[3 + i]), endpoint(addrs[6 + i])];
            expected.sort_by_key(|e| e.port);
            assert_eq!(replicas, expected);
            assert!(
                shard.nodes.iter().all(|n| n.health == NodeHealth::Online),
                "{shard:#?}"
            );
        }
    }

    // Placed in the configured regions: every shard whole, its primary in the writer region.
    let path = config(&dir, &addrs);
    let healthy = status(&path);
    let shards = healthy["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 3, "{healthy:#}");
    for shard in shards {
        assert_eq!(shard["primary"]["region"], "us-east-1", "{healthy:#}");
        assert_eq!(shard["findings"], serde_json::json!([]), "{healthy:#}");
        let regions: Vec<&str> = shard["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["region"].as_str().unwrap())
            .collect();
        assert!(
            regions.contains(&"us-east-1") && regions.contains(&"us-east-2"),
            "{healthy:#}"
        );
    }
    assert_eq!(healthy["uncovered_slots"], serde_json::json!([]));

    // A replica outside the writer region dies: the cluster marks it failed, status says so.
    let gone = addrs[6].to_string();
    drop(nodes.remove(6));
    let deadline = Instant::now() + Duration::from_secs(15);
    let failed = loop {
        let now = status(&path);
        if now["shards"].to_string().contains("not_online") {
            break now;
        }
        assert!(Instant::now() < deadline, "never marked failed: {now:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let findings = failed["shards"][0]["findings"].to_string();
    assert!(
        findings.contains(&gone) && findings.contains("failed"),
        "{failed:#}"
    );

    let out = succeed(
        Command::new(BIN)
            .args(["cluster", "status", "--config"])
            .arg(&path),
    );
    let table = String::from_utf8_lossy(&out);
    assert!(
        table.contains("3 shard(s)") && table.contains("(us-east-2)"),
        "{table}"
    );
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}
