//! A Valkey cluster of real `valkey-server` processes (cluster mode), formed the way an operator
//! forms one: `CLUSTER ADDSLOTSRANGE` on each primary, `CLUSTER MEET`, `CLUSTER REPLICATE`. The
//! building block of cluster mode's tests.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use valkey_dr_controller::poll;
use valkey_dr_core::cluster::SLOTS;

/// One cluster node; killed when dropped.
pub struct ClusterNode {
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
    /// Whether the cluster may promote it by itself (`cluster-replica-no-failover`), as its
    /// deployment configures it: only beside the primaries.
    automatic_failover: bool,
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failed test keeps the node's files (its log, nodes.conf) to be read.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl ClusterNode {
    /// SIGKILL, its files kept (`nodes.conf`: it comes back as the node it was).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (SIGSTOP: a stalled host; SIGCONT: it goes on).
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
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
        self.child = spawn(self.addr, &self.dir, self.automatic_failover)?;
        wait_listening(self.addr).await
    }
}

fn spawn(addr: SocketAddr, dir: &Path, automatic_failover: bool) -> Result<Child, ClusterError> {
    server(addr, dir, automatic_failover)?
        .spawn()
        .map_err(ClusterError::Start)
}

/// The command that starts the cluster node at `addr`, its files in `dir`; the cluster may
/// promote it by itself when `automatic_failover`.
fn server(addr: SocketAddr, dir: &Path, automatic_failover: bool) -> Result<Command, ClusterError> {
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
        .args(["--cluster-announce-ip", &addr.ip().to_string()])
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
        .arg("--dir")
        .arg(&dir)
        .arg("--logfile")
        .arg(dir.join("valkey.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(command)
}

/// The addresses of a cluster lab's nodes (`lab up --shards`), on 127.<block>.<region>.<n> at
/// `port`, in the order [`form_nodes`] takes them: every shard's primary in the first region
/// (nodes 1…shards), a replica of each beside it (shards+1…2·shards), then a replica of each
/// in every other region (1…shards). Returns them with each region's share.
pub fn lab_layout(
    block: u8,
    port: u16,
    regions: &[String],
    shards: u8,
) -> (Vec<SocketAddr>, Vec<(String, std::ops::Range<usize>)>) {
    let at = |region: u8, n: u8| SocketAddr::new(Ipv4Addr::new(127, block, region, n).into(), port);
    let mut addrs: Vec<SocketAddr> = (1..=2 * shards).map(|n| at(1, n)).collect();
    let mut shares = vec![(regions[0].clone(), 0..addrs.len())];
    for (r, name) in regions.iter().enumerate().skip(1) {
        let first = addrs.len();
        addrs.extend((1..=shards).map(|n| at(r as u8 + 1, n)));
        shares.push((name.clone(), first..addrs.len()));
    }
    (addrs, shares)
}

/// Starts a cluster lab that outlives this process (`lab up --shards`): one daemonized node
/// per address of [`lab_layout`], its pid file in `dir` (`lab down` stops it, as every lab
/// process) and its files in `dir/node-<ip>`, formed into `shards` shards, and
/// `dir/valkey-dr.toml` naming every node in its region, for a controller of the cluster
/// (`mode = "cluster"`) whose DNS server listens on `dns`. The cluster may promote by itself
/// only the first region's nodes. Returns the config's path.
pub async fn up(
    dir: &Path,
    block: u8,
    port: u16,
    regions: &[String],
    shards: u8,
    dns: SocketAddr,
) -> Result<PathBuf, ClusterError> {
    let (addrs, shares) = lab_layout(block, port, regions, shards);
    std::fs::create_dir_all(dir).map_err(ClusterError::Start)?;
    let dir = std::path::absolute(dir).map_err(ClusterError::Start)?;
    for (i, addr) in addrs.iter().enumerate() {
        let node_dir = dir.join(format!("node-{}", addr.ip()));
        let _ = std::fs::remove_dir_all(&node_dir);
        std::fs::create_dir_all(&node_dir).map_err(ClusterError::Start)?;
        let started = server(*addr, &node_dir, i < 2 * usize::from(shards))?
            .args(["--daemonize", "yes", "--pidfile"])
            .arg(dir.join(format!("valkey-{}.pid", addr.ip())))
            .status()
            .map_err(ClusterError::Start)?;
        if !started.success() {
            return Err(ClusterError::NotFormed(
                Duration::ZERO,
                format!("valkey-server for {addr} exited with {started}"),
            ));
        }
    }
    for addr in &addrs {
        wait_listening(*addr).await?;
    }
    form_nodes(&addrs, usize::from(shards)).await?;
    let regions: Vec<(&str, &[SocketAddr])> = shares
        .iter()
        .map(|(name, range)| (name.as_str(), &addrs[range.clone()]))
        .collect();
    write_regions_config(&dir, &regions, Some(dns)).map_err(ClusterError::Start)
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

/// A cluster of `count` nodes on free ports of `ip` ([`start`]), tried again on fresh ports
/// up to three times: a port found free can be taken by another process before the node binds
/// it. Returns the addresses and the nodes.
pub async fn form(
    dir: &Path,
    ip: Ipv4Addr,
    count: usize,
    primaries: usize,
) -> Result<(Vec<SocketAddr>, Vec<ClusterNode>), ClusterError> {
    let mut tries = 0;
    loop {
        let addrs: Vec<SocketAddr> = (0..count)
            .map(|_| free_cluster_port(ip).map(|port| SocketAddr::new(ip.into(), port)))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                ClusterError::NotFormed(Duration::ZERO, format!("no free port on {ip}"))
            })?;
        tries += 1;
        match start(dir, &addrs, primaries).await {
            Ok(nodes) => return Ok((addrs, nodes)),
            Err(e) if tries >= 3 => return Err(e),
            Err(_) => {}
        }
    }
}

/// A cluster of one node per address of `ips`, all on one port free on every one of them (as on
/// separate hosts: the name leads clients to addresses, which carry no port), tried again on
/// another port up to three times ([`form`]). Returns the addresses and the nodes.
pub async fn form_spread(
    dir: &Path,
    ips: &[Ipv4Addr],
    primaries: usize,
) -> Result<(Vec<SocketAddr>, Vec<ClusterNode>), ClusterError> {
    let mut tries = 0;
    loop {
        let port = (0..100)
            .find_map(|_| {
                let port = free_cluster_port(*ips.first()?)?;
                ips.iter()
                    .all(|ip| {
                        TcpListener::bind((*ip, port)).is_ok()
                            && TcpListener::bind((*ip, port + 10_000)).is_ok()
                    })
                    .then_some(port)
            })
            .ok_or_else(|| {
                ClusterError::NotFormed(Duration::ZERO, "no port free on every address".into())
            })?;
        let addrs: Vec<SocketAddr> = ips
            .iter()
            .map(|ip| SocketAddr::new((*ip).into(), port))
            .collect();
        tries += 1;
        match start(dir, &addrs, primaries).await {
            Ok(nodes) => return Ok((addrs, nodes)),
            Err(e) if tries >= 3 => return Err(e),
            Err(_) => {}
        }
    }
}

/// Starts one node per address (its files under `dir`), gives the first `primaries` a share of
/// the slots each, and makes node `i` beyond them a replica of primary `i % primaries`. Nodes
/// from `2 * primaries` on stand in the other region ([`write_config`]): the cluster may not
/// promote them by itself (`cluster-replica-no-failover yes`). Returns once every node sees
/// every shard whole and every replica online.
pub async fn start(
    dir: &Path,
    addrs: &[SocketAddr],
    primaries: usize,
) -> Result<Vec<ClusterNode>, ClusterError> {
    let mut nodes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let node_dir = dir.join(format!("cluster-{}-{}", addr.ip(), addr.port()));
        let _ = std::fs::remove_dir_all(&node_dir);
        std::fs::create_dir_all(&node_dir).map_err(ClusterError::Start)?;
        let automatic_failover = i < 2 * primaries;
        let child = spawn(*addr, &node_dir, automatic_failover)?;
        nodes.push(ClusterNode {
            addr: *addr,
            child,
            dir: node_dir,
            automatic_failover,
        });
    }
    for node in &nodes {
        wait_listening(node.addr).await?;
    }
    form_nodes(addrs, primaries).await?;
    Ok(nodes)
}

/// Forms a cluster of the nodes at `addrs`, listening already: the first `primaries` get a
/// share of the slots each, node `i` beyond them follows primary `i % primaries`. Returns once
/// every node sees every shard whole and every replica online.
async fn form_nodes(addrs: &[SocketAddr], primaries: usize) -> Result<(), ClusterError> {
    // Every node its own config epoch before it meets the others, as `valkey-cli --cluster
    // create` does: left to the cluster's collision handling, which only separates primaries
    // and slowly, replicas formed sharing one (seen: all three us-east-2 replicas on the
    // cluster's highest epoch, and one primary on 0). A replica that holds the highest epoch
    // with others cannot claim a new one, and with its region's primaries gone no node could
    // raise the cluster's: its shard could not be taken over.
    for (i, node) in addrs.iter().enumerate() {
        command(
            *node,
            &["CLUSTER", "SET-CONFIG-EPOCH", &(i + 1).to_string()],
        )
        .await?;
    }
    let per = SLOTS as usize / primaries;
    for (i, node) in addrs[..primaries].iter().enumerate() {
        let start = i * per;
        let end = if i + 1 == primaries {
            SLOTS as usize - 1
        } else {
            start + per - 1
        };
        command(
            *node,
            &[
                "CLUSTER",
                "ADDSLOTSRANGE",
                &start.to_string(),
                &end.to_string(),
            ],
        )
        .await?;
    }
    for node in &addrs[1..] {
        let (ip, port) = (node.ip().to_string(), node.port().to_string());
        command(addrs[0], &["CLUSTER", "MEET", &ip, &port]).await?;
    }
    // Generous: beside other tests on two cores, nine nodes take a while to meet and sync.
    let limit = Duration::from_secs(40);
    let deadline = Instant::now() + limit;
    let mut ids = Vec::new();
    for node in &addrs[..primaries] {
        ids.push(text(command(*node, &["CLUSTER", "MYID"]).await?));
    }
    // A replica can follow a primary only once it knows it.
    for (i, node) in addrs.iter().enumerate().skip(primaries) {
        let id = &ids[i % primaries];
        loop {
            let known = text(command(*node, &["CLUSTER", "NODES"]).await?);
            if known.contains(id.as_str()) {
                break;
            }
            if Instant::now() > deadline {
                return Err(ClusterError::NotFormed(
                    limit,
                    format!("{node} never met {id}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        command(*node, &["CLUSTER", "REPLICATE", id]).await?;
    }
    // Whole: every node sees every replica and the cluster serving.
    for node in addrs {
        until(deadline, limit, *node, async || {
            let info = text(command(*node, &["CLUSTER", "INFO"]).await?);
            let known = text(command(*node, &["CLUSTER", "NODES"]).await?);
            let replicas = known.lines().filter(|l| l.contains("slave")).count();
            Ok(if !info.contains("cluster_state:ok") {
                Some("cluster_state is not ok".to_string())
            } else if replicas != addrs.len() - primaries {
                Some(format!("knows {replicas} replicas:\n{known}"))
            } else {
                None
            })
        })
        .await?;
    }
    // One write per shard, which every replica then holds: a replica still at offset 0 is
    // reported as loading.
    for (i, primary) in addrs[..primaries].iter().enumerate() {
        let last = if i + 1 == primaries {
            SLOTS as usize - 1
        } else {
            (i + 1) * per - 1
        };
        let slots = (i * per) as i64..=last as i64;
        for n in 0.. {
            let key = format!("valkey-dr-lab-{n}");
            let slot = command(*primary, &["CLUSTER", "KEYSLOT", &key]).await?;
            if matches!(slot, redis::Value::Int(s) if slots.contains(&s)) {
                command(*primary, &["SET", &key, "formed"]).await?;
                break;
            }
        }
    }
    // Until every node lists every other, none failed, and every replica has loaded its
    // primary's data.
    for node in addrs {
        until(deadline, limit, *node, async || {
            let listed = text(command(*node, &["CLUSTER", "NODES"]).await?);
            let loaded = text(command(*node, &["INFO", "replication"]).await?);
            let all_listed_online =
                valkey_dr_valkey::cluster::parse_nodes(&listed).is_ok_and(|shards| {
                    shards.iter().flat_map(|s| &s.nodes).count() == addrs.len()
                        && shards
                            .iter()
                            .flat_map(|s| &s.nodes)
                            .all(|n| n.health == valkey_dr_core::cluster::NodeHealth::Online)
                });
            // Linked, and holding the write made above (a replica synced before it is at 0).
            let offset = loaded
                .lines()
                .find_map(|l| l.trim().strip_prefix("slave_repl_offset:"))
                .and_then(|n| n.parse::<u64>().ok());
            let linked = loaded.contains("role:master")
                || (loaded.contains("master_link_status:up") && offset.is_some_and(|o| o > 1));
            Ok(if !all_listed_online {
                Some(format!("does not list every node online:\n{listed}"))
            } else if !linked {
                Some("its link to its primary is not up".to_string())
            } else {
                None
            })
        })
        .await?;
    }
    // Valkey 8.0.1 does not save nodes.conf when it learns a node's shard id, and refuses to
    // start from a file in which a replica's shard id differs from its primary's ("corrupted
    // cluster config file"): a node SIGKILLed soon after forming could never come back. Once
    // every replica has its primary's shard id, every node saves its view.
    for (i, node) in addrs.iter().enumerate().skip(primaries) {
        let primary = addrs[i % primaries];
        until(deadline, limit, *node, async || {
            let own = text(command(*node, &["CLUSTER", "MYSHARDID"]).await?);
            let theirs = text(command(primary, &["CLUSTER", "MYSHARDID"]).await?);
            Ok((own != theirs).then(|| format!("shard id {own}, its primary's {theirs}")))
        })
        .await?;
    }
    // And every node has heard of every replica's new shard id (it saves the others too).
    for node in addrs {
        until(deadline, limit, *node, async || {
            let listed = text(command(*node, &["CLUSTER", "NODES"]).await?);
            Ok(shard_id_mismatch(&listed))
        })
        .await?;
        command(*node, &["CLUSTER", "SAVECONFIG"]).await?;
    }
    Ok(())
}

/// The shard id of a `CLUSTER NODES` (or `nodes.conf`) line:
/// `<id> <ip:port@bus>,<hostname>,shard-id=<shard>,… <flags> <primary id or -> …`.
fn shard_id_of(line: &str) -> Option<String> {
    line.split_whitespace()
        .nth(1)?
        .split(',')
        .find_map(|f| f.strip_prefix("shard-id="))
        .map(str::to_string)
}

/// `nodes.conf` (or a `CLUSTER NODES` listing) with every replica in its primary's shard.
/// Valkey 8.0.1 can save a view in which a replica keeps the shard id it had before it followed
/// its primary (seen after a node learned the change and later saved an older one), and then
/// refuses to start from it: "corrupted cluster config file". The repair is the operator's too
/// (docs/runbook.md).
pub fn repair_shard_ids(conf: &str) -> String {
    let lines: Vec<&str> = conf.lines().collect();
    let mut repaired: Vec<String> = lines
        .iter()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let primary = fields
                .get(3)
                .filter(|id| **id != "-" && fields.len() > 7)
                .and_then(|id| lines.iter().find(|l| l.starts_with(*id)));
            match (primary.and_then(|p| shard_id_of(p)), shard_id_of(line)) {
                (Some(theirs), Some(own)) if theirs != own => {
                    line.replacen(&format!("shard-id={own}"), &format!("shard-id={theirs}"), 1)
                }
                _ => line.to_string(),
            }
        })
        .collect();
    if conf.ends_with('\n') {
        repaired.push(String::new());
    }
    repaired.join("\n")
}

/// A replica in a `CLUSTER NODES` listing whose shard id differs from its primary's, if any.
fn shard_id_mismatch(listed: &str) -> Option<String> {
    let lines: Vec<&str> = listed.lines().collect();
    lines.iter().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let primary_id = *fields.get(3)?;
        if primary_id == "-" {
            return None;
        }
        let primary = lines.iter().find(|l| l.starts_with(primary_id))?;
        (shard_id_of(line) != shard_id_of(primary)).then(|| {
            format!(
                "replica {} listed in shard {:?}, its primary in {:?}",
                fields[0],
                shard_id_of(line),
                shard_id_of(primary)
            )
        })
    })
}

/// Polls `check` until it finds nothing missing (`None`), or fails at `deadline` with what
/// was missing last.
async fn until(
    deadline: Instant,
    limit: Duration,
    node: SocketAddr,
    mut check: impl AsyncFnMut() -> Result<Option<String>, ClusterError>,
) -> Result<(), ClusterError> {
    let mut missing = String::new();
    let within = deadline.saturating_duration_since(Instant::now());
    let checked = poll::until(within, Duration::from_millis(50), async || {
        match check().await {
            Ok(Some(what)) => {
                missing = what;
                None
            }
            Ok(None) => Some(Ok(())),
            Err(e) => Some(Err(e)),
        }
    })
    .await;
    checked.unwrap_or_else(|| {
        Err(ClusterError::NotFormed(
            limit,
            format!("{node} not ready: {missing}"),
        ))
    })
}

/// Waits up to 5 s for `addr` to take connections; an error when it never does (the node did
/// not start: its log says why).
async fn wait_listening(addr: SocketAddr) -> Result<(), ClusterError> {
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

fn text(value: redis::Value) -> String {
    match value {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        redis::Value::SimpleString(s) => s,
        other => format!("{other:?}"),
    }
}

/// A key of the shard that serves `slots` (asked of `node`, which knows every slot's key).
pub async fn key_in(
    node: SocketAddr,
    slots: std::ops::RangeInclusive<i64>,
) -> Result<String, ClusterError> {
    for n in 0..1_000_000 {
        let key = format!("writes-{n}");
        let slot = command(node, &["CLUSTER", "KEYSLOT", &key]).await?;
        if matches!(slot, redis::Value::Int(s) if slots.contains(&s)) {
            return Ok(key);
        }
    }
    Err(ClusterError::NotFormed(
        Duration::ZERO,
        format!("no key found for slots {slots:?}"),
    ))
}

/// What one shard writer did: every write acknowledged, the longest wait for one.
#[derive(Debug, Clone)]
pub struct ShardWritten {
    pub key: String,
    pub acked: Vec<u64>,
    pub longest: Duration,
}

/// A running shard writer: what it acknowledged, its longest wait.
type Writing = tokio::task::JoinHandle<(Vec<u64>, Duration)>;

/// A writer per shard, each appending to a key of its shard as a cluster client does
/// ([`shard_writer`]).
pub struct ShardWriters {
    stop: Arc<AtomicBool>,
    running: Vec<(String, Arc<AtomicI64>, Writing)>,
}

impl ShardWriters {
    /// One writer per node of `primaries`, the `i`th on a key of the `i`th equal share of the
    /// slots (as [`start`] gives them out), with every node of `seeds` to turn to.
    pub async fn start(
        primaries: &[SocketAddr],
        seeds: &[SocketAddr],
    ) -> Result<ShardWriters, ClusterError> {
        let shares = primaries.len();
        let per = i64::from(SLOTS) / shares as i64;
        let stop = Arc::new(AtomicBool::new(false));
        let mut running = Vec::new();
        for (i, primary) in primaries.iter().enumerate() {
            let last = if i + 1 == shares {
                i64::from(SLOTS) - 1
            } else {
                (i as i64 + 1) * per - 1
            };
            let key = key_in(*primary, i as i64 * per..=last).await?;
            let last_acked = Arc::new(AtomicI64::new(-1));
            let writer = tokio::spawn(shard_writer(
                *primary,
                seeds.to_vec(),
                key.clone(),
                stop.clone(),
                last_acked.clone(),
            ));
            running.push((key, last_acked, writer));
        }
        Ok(ShardWriters { stop, running })
    }

    /// The last write each has had acknowledged so far (-1: none yet).
    pub fn last_acked(&self) -> Vec<i64> {
        self.running
            .iter()
            .map(|(_, last, _)| last.load(Ordering::Relaxed))
            .collect()
    }

    /// Stops them; what each did.
    pub async fn stop(self) -> Vec<ShardWritten> {
        self.stop.store(true, Ordering::Relaxed);
        let mut written = Vec::new();
        for (key, _, handle) in self.running {
            let (acked, longest) = handle.await.unwrap_or_default();
            written.push(ShardWritten {
                key,
                acked,
                longest,
            });
        }
        written
    }
}

/// Appends 0, 1, 2, … to `key` until `stop`, as a cluster client does: on `MOVED` it goes where
/// it is sent, on a dropped connection it reconnects and sends the same write again, and when
/// its node does not take connections it tries the next of `seeds`. Keeps the last write
/// acknowledged in `last_acked`. Returns every write acknowledged and the longest time between
/// two acknowledgements.
async fn shard_writer(
    mut node: SocketAddr,
    seeds: Vec<SocketAddr>,
    key: String,
    stop: Arc<AtomicBool>,
    last_acked: Arc<AtomicI64>,
) -> (Vec<u64>, Duration) {
    let mut acked = Vec::new();
    let mut last = Instant::now();
    let mut longest = Duration::ZERO;
    let mut conn = None;
    let mut n = 0;
    let mut next_seed = seeds.iter().cycle();
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            conn = match redis::Client::open(format!("redis://{node}/")) {
                Ok(client) => client.get_multiplexed_async_connection().await.ok(),
                Err(_) => None,
            };
            if conn.is_none() {
                node = next_seed.next().copied().unwrap_or(node);
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        }
        let Some(open) = conn.as_mut() else { continue };
        let pushed: redis::RedisResult<i64> =
            redis::cmd("RPUSH").arg(&key).arg(n).query_async(open).await;
        match pushed {
            Ok(_) => {
                acked.push(n);
                last_acked.store(n as i64, Ordering::Relaxed);
                n += 1;
                longest = longest.max(last.elapsed());
                last = Instant::now();
            }
            Err(e) => {
                if let Some(to) = e.redirect_node().and_then(|(to, _)| to.parse().ok()) {
                    node = to;
                }
                conn = None;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    (acked, longest)
}

/// A primary's claim, by its own account (`myself` in its `CLUSTER NODES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub node: SocketAddr,
    /// Its config epoch: of two claims on a slot, the cluster keeps the higher.
    pub epoch: u64,
    pub slots: Vec<(u16, u16)>,
}

/// The claim of each node at `addrs` that answers as a primary.
pub async fn primary_claims(addrs: &[SocketAddr]) -> Vec<Claim> {
    // All at once, each within 300 ms: a stopped node takes the connection and never answers.
    let listed = futures::future::join_all(addrs.iter().map(|addr| {
        tokio::time::timeout(
            Duration::from_millis(300),
            command(*addr, &["CLUSTER", "NODES"]),
        )
    }))
    .await;
    let mut claims = Vec::new();
    for (addr, listed) in addrs.iter().zip(listed) {
        let Ok(Ok(redis::Value::BulkString(listed))) = listed else {
            continue;
        };
        let listed = String::from_utf8_lossy(&listed).into_owned();
        let Some(me) = listed.lines().find(|l| l.contains("myself,master")) else {
            continue;
        };
        let fields: Vec<&str> = me.split_whitespace().collect();
        let slots = fields
            .iter()
            .skip(8)
            .filter(|f| !f.starts_with('['))
            .filter_map(|f| {
                let (a, b) = f.split_once('-').unwrap_or((f, f));
                Some((a.parse().ok()?, b.parse().ok()?))
            })
            .collect();
        claims.push(Claim {
            node: *addr,
            epoch: fields.get(6).and_then(|e| e.parse().ok()).unwrap_or(0),
            slots,
        });
    }
    claims
}

/// The slot ranges each node at `addrs` that answers as a primary serves by its own account.
pub async fn served_by_primaries(addrs: &[SocketAddr]) -> Vec<(SocketAddr, Vec<(u16, u16)>)> {
    primary_claims(addrs)
        .await
        .into_iter()
        .map(|c| (c.node, c.slots))
        .collect()
}

/// Two answering primaries that each claim a slot of the same range, if any: `(a, b)`.
pub async fn two_primaries_for_a_slot(addrs: &[SocketAddr]) -> Option<(Claim, Claim)> {
    let claims = primary_claims(addrs).await;
    for (i, a) in claims.iter().enumerate() {
        for b in &claims[i + 1..] {
            let overlap = a
                .slots
                .iter()
                .any(|ra| b.slots.iter().any(|rb| !(ra.1 < rb.0 || rb.1 < ra.0)));
            if overlap {
                return Some((a.clone(), b.clone()));
            }
        }
    }
    None
}

/// The list at `key`, read from whichever node serves it (following `MOVED` from `asked`).
pub async fn list_at(asked: SocketAddr, key: &str) -> Result<Vec<u64>, ClusterError> {
    let mut node = asked;
    let mut redirects = 0;
    // A node that stood where no majority of primaries was answers CLUSTERDOWN for a while
    // after it is back with one (Valkey's rejoin delay, up to `cluster-node-timeout`).
    let down_until = std::time::Instant::now() + Duration::from_secs(10);
    while redirects < 5 {
        match command(node, &["LRANGE", key, "0", "-1"]).await {
            Ok(redis::Value::Array(items)) => {
                return Ok(items
                    .iter()
                    .filter_map(|v| match v {
                        redis::Value::BulkString(b) => String::from_utf8_lossy(b).parse().ok(),
                        _ => None,
                    })
                    .collect());
            }
            Ok(other) => {
                return Err(ClusterError::Command {
                    node,
                    command: format!("LRANGE {key}"),
                    error: format!("{other:?}"),
                });
            }
            Err(ClusterError::Command { error, .. })
                if error.to_ascii_uppercase().contains("MOVED") =>
            {
                // `MOVED <slot> <ip:port>`
                node = error
                    .split_whitespace()
                    .find_map(|w| w.parse().ok())
                    .unwrap_or(node);
                redirects += 1;
            }
            Err(ClusterError::Command { error, .. })
                if error.to_ascii_uppercase().contains("CLUSTERDOWN")
                    && std::time::Instant::now() < down_until =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(ClusterError::NotFormed(
        Duration::ZERO,
        format!("{key}: redirected more than 5 times"),
    ))
}

/// Writes `dir/valkey-dr.toml` for a cluster started by [`start`] on nine `addrs`: the first six
/// in us-east-1 (the primaries and a replica of each), the last three in us-east-2.
pub fn write_config(dir: &Path, addrs: &[SocketAddr]) -> std::io::Result<PathBuf> {
    write_regions_config(
        dir,
        &[("us-east-1", &addrs[..6]), ("us-east-2", &addrs[6..9])],
        None,
    )
}

/// Writes `dir/valkey-dr.toml` for a cluster whose nodes stand in `regions` (name, nodes); the
/// first holds the primaries. `controlled`: a controller runs the cluster (`mode = "cluster"`),
/// its DNS server on that address; else the `cluster` commands act on the nodes alone.
pub fn write_regions_config(
    dir: &Path,
    regions: &[(&str, &[SocketAddr])],
    controlled: Option<SocketAddr>,
) -> std::io::Result<PathBuf> {
    let mut config = format!(
        "primary_region = \"{}\"\nstate_dir = \"{}\"\n",
        regions[0].0,
        dir.join("state").display()
    );
    if controlled.is_some() {
        config.push_str("mode = \"cluster\"\n");
    }
    for (name, addrs) in regions {
        let nodes: Vec<String> = addrs
            .iter()
            .map(|a| format!("{{ host = \"{}\", port = {} }}", a.ip(), a.port()))
            .collect();
        config.push_str(&format!(
            "[[regions]]\nname = \"{name}\"\nnodes = [{}]\n",
            nodes.join(", ")
        ));
    }
    config.push_str("[dns]\nzone = \"valkey-dr.live\"\nglobal_name = \"demo\"\n");
    if let Some(dns) = controlled {
        config.push_str(&format!(
            "[dns.provider]\nkind = \"embedded\"\nlisten = \"{dns}\"\n"
        ));
    }
    let path = dir.join("valkey-dr.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_listed_outside_its_primarys_shard_is_found() {
        // From a nodes.conf Valkey 8.0.1 then refused to start from ("corrupted cluster config
        // file"): node 418d… follows 765b… but is listed in another shard.
        let listed = "\
418d 127.114.19.17:36465@46465,,tls-port=0,shard-id=e66d slave 765b 0 1 0 connected
9b9e 127.117.19.17:36465@46465,,tls-port=0,shard-id=25cd slave,nofailover 765b 0 1 0 connected
765b 127.111.19.17:36465@46465,,tls-port=0,shard-id=25cd master - 0 1 0 connected 5461-10921
";
        let found = shard_id_mismatch(listed).unwrap();
        assert!(found.contains("418d"), "{found}");
        let fixed = listed.replace("shard-id=e66d", "shard-id=25cd");
        assert_eq!(shard_id_mismatch(&fixed), None);
        assert_eq!(repair_shard_ids(listed), fixed);
        assert_eq!(repair_shard_ids(&fixed), fixed);
        // The `vars` line and a primary's are left as they are.
        let with_vars = format!("{fixed}vars currentEpoch 5 lastVoteEpoch 0\n");
        assert_eq!(repair_shard_ids(&with_vars), with_vars);
    }
}
