//! A real etcd cluster of our own (Debian's `etcd-server`), for the lab and the tests: members on
//! loopback addresses with free ports, each its own process and data directory, which can be
//! killed and restarted one by one.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::EtcdTls;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("etcd is not installed (Debian: apt-get install etcd-server)")]
    NotInstalled,
    #[error("{0}")]
    Io(String),
    #[error("the etcd cluster did not elect a leader within {0:?}; see {1}")]
    NotReady(Duration, String),
}

pub struct Member {
    pub name: String,
    pub client: SocketAddr,
    peer: SocketAddr,
    child: Option<Child>,
}

/// Readies member `i`'s command before each start (the lab puts a member in its site's network
/// namespace this way).
pub type Placing = Box<dyn Fn(usize, &mut Command) -> std::io::Result<()> + Send + Sync>;

pub struct EtcdCluster {
    dir: PathBuf,
    pub members: Vec<Member>,
    placing: Option<Placing>,
}

fn free_port(ip: Ipv4Addr) -> Result<SocketAddr, ClusterError> {
    let listener = TcpListener::bind((ip, 0)).map_err(|e| ClusterError::Io(e.to_string()))?;
    listener
        .local_addr()
        .map_err(|e| ClusterError::Io(e.to_string()))
}

impl EtcdCluster {
    /// Starts `size` members on `ip` under `dir` and waits until they answer.
    pub async fn start(dir: &Path, ip: Ipv4Addr, size: usize) -> Result<EtcdCluster, ClusterError> {
        let addresses = (0..size)
            .map(|_| Ok((free_port(ip)?, free_port(ip)?)))
            .collect::<Result<_, ClusterError>>()?;
        EtcdCluster::start_placed(dir, addresses, None).await
    }

    /// Starts a member on each `(client, peer)` address pair under `dir`, each command readied
    /// by `placing` first, and waits until they answer.
    pub async fn start_placed(
        dir: &Path,
        addresses: Vec<(SocketAddr, SocketAddr)>,
        placing: Option<Placing>,
    ) -> Result<EtcdCluster, ClusterError> {
        std::fs::create_dir_all(dir).map_err(|e| ClusterError::Io(e.to_string()))?;
        let size = addresses.len();
        let members = addresses
            .into_iter()
            .enumerate()
            .map(|(i, (client, peer))| Member {
                name: format!("etcd{i}"),
                client,
                peer,
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster {
            dir: dir.to_path_buf(),
            members,
            placing,
        };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        cluster.wait_ready(Duration::from_secs(20)).await?;
        Ok(cluster)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://{}", m.client))
            .collect()
    }

    fn spawn(&mut self, i: usize) -> Result<(), ClusterError> {
        let member = &self.members[i];
        let log = std::fs::File::create(self.dir.join(format!("{}.log", member.name)))
            .map_err(|e| ClusterError::Io(e.to_string()))?;
        let mut command = member_command(&self.dir, &self.addresses(), i, None);
        if let Some(placing) = &self.placing {
            placing(i, &mut command).map_err(|e| ClusterError::Io(e.to_string()))?;
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| ClusterError::Io(e.to_string()))?,
            )
            .stderr(log)
            .spawn()
            .map_err(spawn_error)?;
        self.members[i].child = Some(child);
        Ok(())
    }

    fn addresses(&self) -> Vec<MemberAddress> {
        self.members
            .iter()
            .map(|m| MemberAddress {
                name: m.name.clone(),
                client: m.client,
                peer: m.peer,
                reached_at: m.peer,
            })
            .collect()
    }

    /// SIGKILLs member `i` (its data stays).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) member `i`: a frozen member accepts connections and
    /// answers nothing.
    pub fn freeze(&self, i: usize, frozen: bool) {
        if let Some(child) = &self.members[i].child {
            let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: a signal to a process this cluster started.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// Starts member `i` again on its data.
    pub fn restart(&mut self, i: usize) -> Result<(), ClusterError> {
        self.kill(i);
        self.spawn(i)
    }

    /// Waits until a quorum answers a write.
    pub async fn wait_ready(&self, limit: Duration) -> Result<(), ClusterError> {
        wait_ready(
            &self.endpoints(),
            None,
            limit,
            &self.dir.display().to_string(),
        )
        .await
    }
}

/// Where one member listens.
#[derive(Debug, Clone)]
pub struct MemberAddress {
    pub name: String,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    /// Where the other members reach its peer port: `peer` itself, or a link in front of it
    /// (the lab's region link, so that raft's messages cross it as they would between sites).
    pub reached_at: SocketAddr,
}

/// The command that starts member `i` of `members`, its data in `dir/<name>`. Elections are
/// tuned for loopback (50 ms heartbeat, 500 ms election timeout). History is compacted to the
/// last 1000 revisions and the backend quota set explicitly: etcd compacts nothing by default,
/// and past its quota it refuses every write (NOSPACE), which would fence the writer's region
/// for good.
///
/// With `tls`, clients and peers speak TLS and must present a certificate signed by its CA
/// (`--client-cert-auth`, `--peer-client-cert-auth`): whoever can write etcd can move the writer.
pub fn member_command(
    dir: &Path,
    members: &[MemberAddress],
    i: usize,
    tls: Option<&MemberTls>,
) -> Command {
    let member = &members[i];
    let scheme = if tls.is_some() { "https" } else { "http" };
    let initial = members
        .iter()
        .map(|m| format!("{}={scheme}://{}", m.name, m.reached_at))
        .collect::<Vec<_>>()
        .join(",");
    let mut command = Command::new("etcd");
    command
        .arg("--name")
        .arg(&member.name)
        .arg("--data-dir")
        .arg(dir.join(&member.name))
        .arg("--listen-client-urls")
        .arg(format!("{scheme}://{}", member.client))
        .arg("--advertise-client-urls")
        .arg(format!("{scheme}://{}", member.client))
        .arg("--listen-peer-urls")
        .arg(format!("{scheme}://{}", member.peer))
        .arg("--initial-advertise-peer-urls")
        .arg(format!("{scheme}://{}", member.reached_at))
        .arg("--initial-cluster")
        .arg(initial)
        .arg("--initial-cluster-state")
        .arg("new")
        .arg("--initial-cluster-token")
        .arg(dir.display().to_string())
        .arg("--heartbeat-interval")
        .arg("50")
        .arg("--election-timeout")
        .arg("500")
        // A member cut off keeps campaigning at ever higher terms; without a pre-vote its first
        // message after the heal deposes the leader (seen on real packet cuts: the majority's
        // writer then paused 1.5 s). etcd 3.5 turns it on by default, Debian's 3.4 does not.
        .arg("--pre-vote")
        .arg("--auto-compaction-mode")
        .arg("revision")
        .arg("--auto-compaction-retention")
        .arg("1000")
        .arg("--quota-backend-bytes")
        .arg((2u64 << 30).to_string());
    if let Some(tls) = tls {
        // The same files for both sides: a member serves its clients and reaches its peers.
        for side in ["", "peer-"] {
            command
                .arg(format!("--{side}cert-file"))
                .arg(&tls.cert_file)
                .arg(format!("--{side}key-file"))
                .arg(&tls.key_file)
                .arg(format!("--{side}client-cert-auth"))
                .arg(format!("--{side}trusted-ca-file"))
                .arg(&tls.ca_file);
        }
    }
    command
}

/// A member's TLS files: its certificate (valid for every address it is reached at, used to
/// both serve and reach its peers) and key, and the CA that signs clients and peers.
#[derive(Debug, Clone)]
pub struct MemberTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

pub fn spawn_error(e: std::io::Error) -> ClusterError {
    match e.kind() {
        std::io::ErrorKind::NotFound => ClusterError::NotInstalled,
        _ => ClusterError::Io(e.to_string()),
    }
}

/// Makes the member named `name` etcd's raft leader (asked of every member in turn: only the
/// current leader can hand over). A raft leader change extends every lease by a full TTL, so
/// the leader belongs where an isolation is least likely: the witness.
pub async fn move_leader_to(
    endpoints: &[String],
    tls: Option<&EtcdTls>,
    name: &str,
) -> Result<(), ClusterError> {
    let options = EtcdTls::options(tls)
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_secs(2));
    let error = |e: etcd_client::Error| ClusterError::Io(e.to_string());
    let mut client = etcd_client::Client::connect(endpoints, Some(options.clone()))
        .await
        .map_err(error)?;
    let members = client.member_list().await.map_err(error)?;
    let target = members
        .members()
        .iter()
        .find(|m| m.name() == name)
        .map(|m| m.id())
        .ok_or_else(|| ClusterError::Io(format!("no etcd member named {name}")))?;
    // A transfer is only started by the call; it can be dropped (a member still catching up).
    // Ask again until every member agrees the target leads.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let mut leaders = Vec::new();
        for endpoint in endpoints {
            let Ok(mut member) =
                etcd_client::Client::connect([endpoint], Some(options.clone())).await
            else {
                continue;
            };
            let Ok(status) = member.status().await else {
                continue;
            };
            leaders.push(status.leader());
            if status.leader() != target
                && status
                    .header()
                    .is_some_and(|h| h.member_id() == status.leader())
            {
                let _ = member.move_leader(target).await;
            }
        }
        if leaders.len() == endpoints.len() && leaders.iter().all(|l| *l == target) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(ClusterError::Io(format!(
        "etcd leadership did not move to {name}"
    )))
}

/// The name of the member that leads the raft group now, as the first member that answers says.
pub async fn raft_leader(
    endpoints: &[String],
    tls: Option<&EtcdTls>,
) -> Result<String, ClusterError> {
    let options = EtcdTls::options(tls)
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_secs(2));
    let error = |e: etcd_client::Error| ClusterError::Io(e.to_string());
    let mut client = etcd_client::Client::connect(endpoints, Some(options))
        .await
        .map_err(error)?;
    let leader = client.status().await.map_err(error)?.leader();
    let members = client.member_list().await.map_err(error)?;
    members
        .members()
        .iter()
        .find(|m| m.id() == leader)
        .map(|m| m.name().to_string())
        .ok_or_else(|| ClusterError::Io("no etcd member leads".into()))
}

/// Raises etcd's `NOSPACE` alarm on every member (`raised`), or disarms it: from then on etcd
/// refuses writes exactly as when its database passed its quota, without filling gigabytes.
pub async fn set_nospace_alarm(
    endpoints: &[String],
    tls: Option<&EtcdTls>,
    raised: bool,
) -> Result<(), ClusterError> {
    use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
    let error = |e: etcd_client::Error| ClusterError::Io(e.to_string());
    let mut client = etcd_client::Client::connect(endpoints, Some(EtcdTls::options(tls)))
        .await
        .map_err(error)?;
    let members = client.member_list().await.map_err(error)?;
    let action = if raised {
        AlarmAction::Activate
    } else {
        AlarmAction::Deactivate
    };
    for member in members.members() {
        let mut options = AlarmOptions::new();
        options.with_member(member.id());
        client
            .alarm(action, AlarmType::Nospace, Some(options))
            .await
            .map_err(error)?;
    }
    Ok(())
}

/// Waits until a quorum of the members at `endpoints` answers a write.
pub async fn wait_ready(
    endpoints: &[String],
    tls: Option<&EtcdTls>,
    limit: Duration,
    what: &str,
) -> Result<(), ClusterError> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let options = EtcdTls::options(tls)
            .with_connect_timeout(Duration::from_millis(300))
            .with_timeout(Duration::from_millis(500));
        if let Ok(mut client) = etcd_client::Client::connect(endpoints, Some(options)).await
            && client.put("ready", "1", None).await.is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(ClusterError::NotReady(limit, what.to_string()))
}

impl Drop for EtcdCluster {
    /// Stops every member and removes its data (etcd preallocates 64 MB write-ahead log files: a
    /// test suite that left them behind would fill the disk run after run); the logs stay.
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
            let _ = std::fs::remove_dir_all(self.dir.join(&self.members[i].name));
        }
    }
}
