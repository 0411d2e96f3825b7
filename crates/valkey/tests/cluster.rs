//! Cluster mode against a real three-shard Valkey cluster (six `valkey-server` processes on
//! loopback, each shard a primary and a replica): the engine discovers the shards, their slots,
//! primaries and replicas from any node.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use valkey_dr_core::Endpoint;
use valkey_dr_valkey::cluster::{NodeHealth, SLOTS, ShardRole};
use valkey_dr_valkey::{Security, Timeouts, ValkeyEngine};

/// A cluster-enabled `valkey-server` on a free port whose bus port (+10000) is free too.
struct Node {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Node {
    fn start(name: &str) -> Node {
        let port = loop {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
                break port;
            }
        };
        let dir =
            std::env::temp_dir().join(format!("valkey-dr-cluster-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("node dir");
        let child = Command::new("valkey-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("valkey-server is installed (make test installs it)");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Node { child, dir, port }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::new("127.0.0.1", self.port)
    }

    async fn command(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    async fn text(&self, args: &[&str]) -> String {
        match self.command(args).await {
            redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
            redis::Value::VerbatimString { text, .. } => text,
            redis::Value::SimpleString(s) => s,
            other => format!("{other:?}"),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shards_of_a_real_cluster_are_discovered_from_any_node() {
    let nodes: Vec<Node> = (0..6).map(|i| Node::start(&format!("n{i}"))).collect();
    // Three primaries, a third of the slots each; then each a replica.
    let thirds = [(0, 5460), (5461, 10922), (10923, SLOTS as u16 - 1)];
    for (node, (start, end)) in nodes.iter().zip(thirds) {
        node.command(&[
            "CLUSTER",
            "ADDSLOTSRANGE",
            &start.to_string(),
            &end.to_string(),
        ])
        .await;
    }
    for node in &nodes[1..] {
        nodes[0]
            .command(&["CLUSTER", "MEET", "127.0.0.1", &node.port.to_string()])
            .await;
    }
    eventually("every node knows every other", async || {
        for node in &nodes {
            if node.text(&["CLUSTER", "NODES"]).await.lines().count() < 6 {
                return false;
            }
        }
        true
    })
    .await;
    let mut primary_ids = Vec::new();
    for primary in &nodes[..3] {
        primary_ids.push(primary.text(&["CLUSTER", "MYID"]).await);
    }
    for (replica, id) in nodes[3..].iter().zip(&primary_ids) {
        replica.command(&["CLUSTER", "REPLICATE", id]).await;
    }

    let engine = ValkeyEngine::new(
        Timeouts {
            connect: Duration::from_millis(500),
            command: Duration::from_millis(500),
        },
        Security::default(),
    );
    for asked in [&nodes[0], &nodes[4]] {
        let mut shards = Vec::new();
        eventually("three shards of two online nodes each", async || {
            shards = engine.cluster_shards(&asked.endpoint()).await.unwrap();
            shards.len() == 3
                && shards.iter().all(|s| {
                    s.nodes.len() == 2 && s.nodes.iter().all(|n| n.health == NodeHealth::Online)
                })
        })
        .await;
        assert_eq!(shards.iter().map(|s| s.slot_count()).sum::<u32>(), SLOTS);
        for (i, primary) in nodes[..3].iter().enumerate() {
            let shard = shards
                .iter()
                .find(|s| {
                    s.primary()
                        .is_some_and(|p| p.endpoint == primary.endpoint())
                })
                .unwrap_or_else(|| panic!("a shard led by node {i}: {shards:#?}"));
            assert_eq!(shard.slots, vec![thirds[i].0..=thirds[i].1]);
            assert_eq!(shard.primary().unwrap().id, primary_ids[i]);
            let replica = shard
                .nodes
                .iter()
                .find(|n| n.role == ShardRole::Replica)
                .expect("a replica");
            assert_eq!(replica.endpoint, nodes[3 + i].endpoint());
        }
    }
}
