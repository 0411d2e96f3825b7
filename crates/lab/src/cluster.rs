//! A Valkey cluster of real `valkey-server` processes (cluster mode), formed the way an operator
//! forms one: `CLUSTER ADDSLOTSRANGE` on each primary, `CLUSTER MEET`, `CLUSTER REPLICATE`. The
//! building block of cluster mode's tests.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use valkey_dr_core::cluster::SLOTS;

/// One cluster node; killed when dropped.
pub struct ClusterNode {
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl ClusterNode {
    /// SIGKILL, its files kept (`nodes.conf`: it comes back as the node it was).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again from its files, with no data (nothing is persisted): a node back from a
    /// lost region.
    pub async fn restart(&mut self) -> Result<(), ClusterError> {
        self.kill();
        self.child = spawn(self.addr, &self.dir)?;
        wait_listening(self.addr).await;
        Ok(())
    }
}

fn spawn(addr: SocketAddr, dir: &Path) -> Result<Child, ClusterError> {
    Command::new("valkey-server")
        .args([
            "--port",
            &addr.port().to_string(),
            "--bind",
            &addr.ip().to_string(),
        ])
        .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(ClusterError::Start)
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot start valkey-server (make test installs it): {0}")]
    Start(std::io::Error),
    #[error("{node}: {command}: {error}")]
    Command {
        node: SocketAddr,
        command: String,
        error: String,
    },
    #[error("the cluster did not form within {0:?}: {1}")]
    NotFormed(Duration, String),
}

/// A free port on `ip` whose cluster bus port (+10000) is free too.
pub fn free_cluster_port(ip: Ipv4Addr) -> Option<u16> {
    (0..100).find_map(|_| {
        let port = TcpListener::bind((ip, 0)).ok()?.local_addr().ok()?.port();
        (port < 55_000 && TcpListener::bind((ip, port + 10_000)).is_ok()).then_some(port)
    })
}

/// Starts one node per address (its files under `dir`), gives the first `primaries` a share of
/// the slots each, and makes node `i` beyond them a replica of primary `i % primaries`. Returns
/// once every node sees every shard whole and every replica online.
pub async fn start(
    dir: &Path,
    addrs: &[SocketAddr],
    primaries: usize,
) -> Result<Vec<ClusterNode>, ClusterError> {
    let mut nodes = Vec::new();
    for addr in addrs {
        let node_dir = dir.join(format!("cluster-{}-{}", addr.ip(), addr.port()));
        let _ = std::fs::remove_dir_all(&node_dir);
        std::fs::create_dir_all(&node_dir).map_err(ClusterError::Start)?;
        let child = spawn(*addr, &node_dir)?;
        nodes.push(ClusterNode {
            addr: *addr,
            child,
            dir: node_dir,
        });
    }
    for node in &nodes {
        wait_listening(node.addr).await;
    }
    let per = SLOTS as usize / primaries;
    for (i, node) in nodes[..primaries].iter().enumerate() {
        let start = i * per;
        let end = if i + 1 == primaries {
            SLOTS as usize - 1
        } else {
            start + per - 1
        };
        command(
            node.addr,
            &[
                "CLUSTER",
                "ADDSLOTSRANGE",
                &start.to_string(),
                &end.to_string(),
            ],
        )
        .await?;
    }
    for node in &nodes[1..] {
        let (ip, port) = (node.addr.ip().to_string(), node.addr.port().to_string());
        command(nodes[0].addr, &["CLUSTER", "MEET", &ip, &port]).await?;
    }
    let limit = Duration::from_secs(20);
    let deadline = Instant::now() + limit;
    let mut ids = Vec::new();
    for node in &nodes[..primaries] {
        ids.push(text(command(node.addr, &["CLUSTER", "MYID"]).await?));
    }
    // A replica can follow a primary only once it knows it.
    for (i, node) in nodes.iter().enumerate().skip(primaries) {
        let id = &ids[i % primaries];
        loop {
            let known = text(command(node.addr, &["CLUSTER", "NODES"]).await?);
            if known.contains(id.as_str()) {
                break;
            }
            if Instant::now() > deadline {
                return Err(ClusterError::NotFormed(
                    limit,
                    format!("{} never met {id}", node.addr),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        command(node.addr, &["CLUSTER", "REPLICATE", id]).await?;
    }
    // Whole: every node sees every replica and the cluster serving.
    for node in &nodes {
        until(deadline, limit, node.addr, async || {
            let info = text(command(node.addr, &["CLUSTER", "INFO"]).await?);
            let known = text(command(node.addr, &["CLUSTER", "NODES"]).await?);
            let replicas = known.lines().filter(|l| l.contains("slave")).count();
            Ok(info.contains("cluster_state:ok") && replicas == nodes.len() - primaries)
        })
        .await?;
    }
    // One write per shard, which every replica then holds: a replica still at offset 0 is
    // reported as loading.
    for (i, primary) in nodes[..primaries].iter().enumerate() {
        let last = if i + 1 == primaries {
            SLOTS as usize - 1
        } else {
            (i + 1) * per - 1
        };
        let slots = (i * per) as i64..=last as i64;
        for n in 0.. {
            let key = format!("valkey-dr-lab-{n}");
            let slot = command(primary.addr, &["CLUSTER", "KEYSLOT", &key]).await?;
            if matches!(slot, redis::Value::Int(s) if slots.contains(&s)) {
                command(primary.addr, &["SET", &key, "formed"]).await?;
                break;
            }
        }
    }
    // Until every node lists every other, none failed, and every replica has loaded its
    // primary's data.
    for node in &nodes {
        until(deadline, limit, node.addr, async || {
            let listed = text(command(node.addr, &["CLUSTER", "NODES"]).await?);
            let loaded = text(command(node.addr, &["INFO", "replication"]).await?);
            Ok(
                valkey_dr_valkey::cluster::parse_nodes(&listed).is_ok_and(|shards| {
                    shards.iter().flat_map(|s| &s.nodes).count() == nodes.len()
                        && shards
                            .iter()
                            .flat_map(|s| &s.nodes)
                            .all(|n| n.health == valkey_dr_core::cluster::NodeHealth::Online)
                }) && (loaded.contains("role:master") || loaded.contains("master_link_status:up")),
            )
        })
        .await?;
    }
    Ok(nodes)
}

/// Polls `check` until it holds, or fails at `deadline`.
async fn until(
    deadline: Instant,
    limit: Duration,
    node: SocketAddr,
    mut check: impl AsyncFnMut() -> Result<bool, ClusterError>,
) -> Result<(), ClusterError> {
    while !check().await? {
        if Instant::now() > deadline {
            return Err(ClusterError::NotFormed(limit, format!("{node} not ready")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn wait_listening(addr: SocketAddr) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One command on its own short-lived connection.
pub async fn command(node: SocketAddr, args: &[&str]) -> Result<redis::Value, ClusterError> {
    let failed = |error: String| ClusterError::Command {
        node,
        command: args.join(" "),
        error,
    };
    let client =
        redis::Client::open(format!("redis://{node}/")).map_err(|e| failed(e.to_string()))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut conn)
        .await
        .map_err(|e| failed(e.to_string()))
}

fn text(value: redis::Value) -> String {
    match value {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        redis::Value::SimpleString(s) => s,
        other => format!("{other:?}"),
    }
}
