//! One cluster node: its `valkey-server` process, started, killed, stopped and restarted, and
//! the commands the lab sends it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use valkey_dr_controller::poll;

use super::*;

/// One cluster node; killed when dropped.
pub struct ClusterNode {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The address it gives the cluster for itself: its own, or one where a proxy carries its
    /// traffic ([`super::form_linked`]).
    pub(crate) announced: IpAddr,
    /// The network namespace it runs in ([`crate::netns`]); `None`: the machine's own.
    pub(crate) netns: Option<String>,
    pub(crate) child: Child,
    pub(crate) dir: PathBuf,
    /// Whether the cluster may promote it by itself (`cluster-replica-no-failover`), as its
    /// deployment configures it: only beside the primaries.
    pub(crate) automatic_failover: bool,
    /// Its files stay when it is dropped ([`ClusterNode::keep_files`]).
    pub(crate) keep: bool,
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failed test keeps the node's files (its log, nodes.conf) to be read.
        if !self.keep && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl ClusterNode {
    /// Its files (log, `nodes.conf`) stay when it is dropped: their directory's owner decides.
    pub fn keep_files(&mut self) {
        self.keep = true;
    }

    /// SIGKILL, its files kept (`nodes.conf`: it comes back as the node it was).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (SIGSTOP: a stalled host; SIGCONT: it goes on).
    pub fn signal(&self, signal: i32) {
        crate::process::signal(self.child.id() as i32, signal);
    }

    /// Starts it again from its files, with no data (nothing is persisted): a node back from a
    /// lost region.
    pub async fn restart(&mut self) -> Result<(), ClusterError> {
        self.kill();
        // Valkey 8.0.1 may have saved a replica in another shard than its primary's, and then
        // refuses to start from the file (see [`repair_shard_ids`]).
        let conf = self.dir.join("nodes.conf");
        if let Ok(text) = std::fs::read_to_string(&conf) {
            let repaired = repair_shard_ids(&text);
            if repaired != text {
                std::fs::write(&conf, repaired).map_err(ClusterError::Start)?;
            }
        }
        self.child = server(
            self.addr,
            self.announced,
            &self.dir,
            self.automatic_failover,
            self.netns.as_deref(),
        )?
        .spawn()
        .map_err(ClusterError::Start)?;
        wait_listening(self.addr).await
    }
}

/// The command that starts the cluster node at `addr`, known to the cluster (and to clients
/// through it) as `announced`, its files in `dir`; the cluster may promote it by itself when
/// `automatic_failover`, inside network namespace `netns` when one is given.
pub(crate) fn server(
    addr: SocketAddr,
    announced: IpAddr,
    dir: &Path,
    automatic_failover: bool,
    netns: Option<&str>,
) -> Result<Command, ClusterError> {
    // Absolute: valkey-server enters `--dir` before it opens `--logfile`.
    let dir = std::path::absolute(dir).map_err(ClusterError::Start)?;
    let mut command = Command::new("valkey-server");
    command
        .args([
            "--port",
            &addr.port().to_string(),
            "--bind",
            &addr.ip().to_string(),
        ])
        // On any loopback address, not only 127.0.0.1: connections to peers leave from this
        // node's own address, and it tells them so.
        .args(["--bind-source-addr", &addr.ip().to_string()])
        .args(["--cluster-announce-ip", &announced.to_string()])
        .args(["--replica-announce-ip", &announced.to_string()])
        .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
        // A full sync starts at once rather than after Valkey's 5 s wait for more replicas: the
        // cluster forms, and a node back from a lost region rejoins, that much sooner.
        .args(["--repl-diskless-sync-delay", "0"])
        // A replica hears from its primary every second even when no write flows: the
        // primary's self-fence counts a replica outside its region only while it does.
        .args(["--repl-ping-replica-period", "1"])
        // A replica never moves to another shard by itself (Valkey's replica migration, on by
        // default, gave a shard whose replica was resyncing another shard's only replica in
        // us-east-2): where replicas stand is part of the regions' layout.
        .args(["--cluster-allow-replica-migration", "no"])
        .args([
            "--cluster-replica-no-failover",
            if automatic_failover { "no" } else { "yes" },
        ])
        .args(["--save", "", "--appendonly", "no"])
        // The lab's nodes take no password: protected mode would refuse every client that is
        // not on loopback, as in network namespaces ([`crate::cluster_chaos`]'s cut regions).
        .args(["--protected-mode", "no"])
        .arg("--dir")
        .arg(&dir)
        .arg("--logfile")
        .arg(dir.join("valkey.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(ns) = netns {
        crate::netns::enter(&mut command, ns).map_err(ClusterError::Start)?;
    }
    Ok(command)
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

/// Waits up to 5 s for `addr` to take connections; an error when it never does (the node did
/// not start: its log says why).
pub(crate) async fn wait_listening(addr: SocketAddr) -> Result<(), ClusterError> {
    let within = Duration::from_secs(5);
    poll::until(within, Duration::from_millis(25), async || {
        tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
    })
    .await
    .ok_or_else(|| {
        ClusterError::NotFormed(
            within,
            format!("{addr} never took a connection (see its valkey.log)"),
        )
    })
}

/// A connection to `node` that waits for replies longer than the client's default 500 ms: two
/// cores running several clusters (forks for full syncs among them) are slow at times.
pub async fn connect(node: SocketAddr) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    redis::Client::open(format!("redis://{node}/"))?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// One command on its own short-lived connection.
pub async fn command(node: SocketAddr, args: &[&str]) -> Result<redis::Value, ClusterError> {
    let failed = |error: String| ClusterError::Command {
        node,
        command: args.join(" "),
        error,
    };
    let mut conn = connect(node).await.map_err(|e| failed(e.to_string()))?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut conn)
        .await
        .map_err(|e| failed(e.to_string()))
}

pub(crate) fn text(value: redis::Value) -> String {
    match value {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        redis::Value::SimpleString(s) => s,
        other => format!("{other:?}"),
    }
}
