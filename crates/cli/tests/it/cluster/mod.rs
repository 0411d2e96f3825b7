//! Cluster mode against a real Valkey cluster: three shards, each a primary and a replica in
//! us-east-1 and a replica in us-east-2 (nine `valkey-server` processes on loopback). The engine
//! discovers the shards from any node; `valkey-dr cluster status` places them in the configured
//! regions and says what is wrong; `valkey-dr cluster switchover` moves every primary at once.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use valkey_dr_core::Endpoint;
use valkey_dr_core::cluster::{NodeHealth, SLOTS, ShardRole};
use valkey_dr_lab::clients::{self, Library};
use valkey_dr_lab::cluster::{ClusterNode, ShardWriters, list_at};
use valkey_dr_lab::writer::{ListCheck, check_list};
use valkey_dr_valkey::{Security, Timeouts, ValkeyEngine};

use crate::harness::{BIN, succeed};

mod client_libraries;
mod discovery;
mod linked;
mod region_failover;
mod switchover;

fn config(dir: &std::path::Path, addrs: &[SocketAddr]) -> std::path::PathBuf {
    valkey_dr_lab::cluster::write_config(dir, addrs).unwrap()
}

/// `valkey-dr cluster <args> --config <config>`.
fn cluster(config: &std::path::Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("cluster")
        .args(args)
        .arg("--config")
        .arg(config);
    command
}

/// `valkey-dr cluster <args> --config <config>`, which must fail; what it said.
/// Runs `valkey-dr cluster …`, which must fail — exit status 1, not the 75 of a command that
/// may simply be run again — and returns what it said.
fn cluster_fails(config: &std::path::Path, args: &[&str]) -> String {
    let out = cluster(config, args).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{said}");
    said
}

/// Runs `valkey-dr cluster …`, which must end unfinished with nothing lost — exit status 75, the
/// command may be run again — and returns what it said.
fn cluster_unfinished(config: &std::path::Path, args: &[&str]) -> String {
    let out = cluster(config, args).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(75), "{said}");
    said
}

/// Lets `node` run `CLUSTER FAILOVER`, or (an ACL rule) refuses it.
async fn may_fail_over(node: SocketAddr, allowed: bool) {
    let rule = if allowed {
        "+cluster|failover"
    } else {
        "-cluster|failover"
    };
    valkey_dr_lab::cluster::command(node, &["ACL", "SETUSER", "default", rule])
        .await
        .unwrap();
}

fn status(config: &std::path::Path) -> serde_json::Value {
    let out = succeed(&mut cluster(config, &["status", "--output", "json"]));
    serde_json::from_slice(&out).unwrap()
}

/// A 9-node cluster on a loopback address of this test's own, and its config, in a directory of
/// its own: nodes 0–2 lead the shards; 3–5 follow them in us-east-1, 6–8 in us-east-2. Dropped,
/// its nodes are stopped and the directory removed — kept when the test failed, to look at.
///
/// Its own address, not 127.0.0.1: the nodes of a cluster keep calling a node that died at its
/// address, and another test's node that took the freed port there answered them — the two
/// clusters' gossip mixed (a fresh cluster saw takeovers it never made, and a new primary was
/// turned back into a replica).
struct Formed {
    dir: std::path::PathBuf,
    addrs: Vec<SocketAddr>,
    nodes: Vec<ClusterNode>,
    /// The valkey-dr config naming the nodes and their regions.
    path: std::path::PathBuf,
}

impl Formed {
    async fn new(name: &str) -> Formed {
        let dir =
            std::env::temp_dir().join(format!("valkey-dr-cluster-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid = std::process::id();
        let ip = Ipv4Addr::new(127, 101, (pid >> 8) as u8, (pid as u8).max(1));
        let (addrs, nodes) = valkey_dr_lab::cluster::form(&dir, ip, 9, 3)
            .await
            .expect("the cluster forms");
        let path = config(&dir, &addrs);
        Formed {
            dir,
            addrs,
            nodes,
            path,
        }
    }
}

impl Drop for Formed {
    fn drop(&mut self) {
        self.nodes.clear();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Waits until every shard's primary stands in `region` as status sees it (the node it asks
/// hears of the others' handovers by gossip).
async fn primaries_in(config: &std::path::Path, region: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = status(config);
        let all_there = now["shards"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|shard| shard["slot_count"] != 0)
            .all(|shard| shard["primary"]["region"] == region);
        if all_there {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "primaries never all in {region}: {now:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the cluster is whole again as status sees it, three looks in a row: every shard
/// with its primary and both replicas, every node online (a node that just handed back shows
/// online as a primary, then loading as a replica while it resyncs).
async fn whole(config: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut in_a_row = 0;
    while in_a_row < 3 {
        let now = status(config);
        let whole = now["shards"].as_array().unwrap().iter().all(|shard| {
            let replicas = shard["replicas"].as_array().unwrap();
            replicas.len() == 2
                && replicas.iter().all(|r| r["health"] == "online")
                && shard["primary"]["health"] == "online"
        });
        in_a_row = if whole { in_a_row + 1 } else { 0 };
        assert!(Instant::now() < deadline, "never whole again: {now:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many of the nodes at `addrs` say they are a primary (`ROLE`).
async fn primaries_among(addrs: &[SocketAddr]) -> usize {
    let mut primaries = 0;
    for addr in addrs {
        let role = valkey_dr_lab::cluster::command(*addr, &["ROLE"]).await;
        if let Ok(redis::Value::Array(reply)) = role
            && matches!(reply.first(), Some(redis::Value::BulkString(r)) if r.as_slice() == b"master")
        {
            primaries += 1;
        }
    }
    primaries
}

/// A cluster ([`Formed`]) with a writer per shard.
async fn written(name: &str) -> (Formed, Writers) {
    let lab = Formed::new(name).await;
    let writers = Writers::start(&lab.addrs).await;
    (lab, writers)
}

/// The lab's shard writers, checked: every write they had acknowledged is in the cluster.
struct Writers(ShardWriters);

impl Writers {
    /// Starts them on the primaries `addrs[..3]`, with every node as a seed.
    async fn start(addrs: &[SocketAddr]) -> Writers {
        let writers = ShardWriters::start("writes", &addrs[..3], addrs)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        Writers(writers)
    }

    fn last_acked(&self) -> Vec<i64> {
        self.0.last_acked()
    }

    /// Waits until each writer has had a write past `marks` acknowledged, at most `within`.
    async fn each_writes_past(&self, marks: &[i64], within: Duration) {
        let deadline = Instant::now() + within;
        while self
            .last_acked()
            .iter()
            .zip(marks)
            .any(|(now, then)| now <= then)
        {
            assert!(Instant::now() < deadline, "a shard never took writes again");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops them and checks that every write they had acknowledged is in the cluster (read
    /// through `asked`); returns each one's longest wait for an acknowledgement, in ms.
    async fn stop_and_check(self, asked: SocketAddr) -> Vec<u128> {
        self.stop_and_check_after(asked, &[-1; 3]).await.0
    }

    /// As [`Writers::stop_and_check`], but writer `i`'s writes up to `lossy[i]` may be lost (a
    /// lost region took them); returns the gaps and how many each lost.
    async fn stop_and_check_after(
        self,
        asked: SocketAddr,
        lossy: &[i64],
    ) -> (Vec<u128>, Vec<usize>) {
        let (mut gaps, mut losses) = (Vec::new(), Vec::new());
        for (written, lossy) in self.0.stop().await.into_iter().zip(lossy) {
            let key = &written.key;
            gaps.push(written.longest.as_millis());
            assert!(written.acked.len() > 10, "{key}: the writer wrote");
            let kept: std::collections::HashSet<u64> =
                list_at(asked, key).await.unwrap().into_iter().collect();
            let lost: Vec<&u64> = written.acked.iter().filter(|n| !kept.contains(n)).collect();
            let unexpected: Vec<&&u64> = lost.iter().filter(|n| ***n as i64 > *lossy).collect();
            assert!(
                unexpected.is_empty(),
                "{key}: {} acknowledged writes lost (up to {lossy} might be), the first: {:?}",
                unexpected.len(),
                &unexpected[..unexpected.len().min(10)]
            );
            losses.push(lost.len());
        }
        (gaps, losses)
    }
}

/// Whether the cluster may promote the node at `addr` by itself (`cluster-replica-no-failover`).
async fn automatic_failover(addr: SocketAddr) -> bool {
    let reply =
        valkey_dr_lab::cluster::command(addr, &["CONFIG", "GET", "cluster-replica-no-failover"])
            .await;
    match reply {
        Ok(redis::Value::Array(pair)) => {
            matches!(pair.get(1), Some(redis::Value::BulkString(v)) if v.as_slice() == b"no")
        }
        other => panic!("CONFIG GET on {addr}: {other:?}"),
    }
}
