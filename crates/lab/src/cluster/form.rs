//! Forming a cluster the way an operator does: a config epoch per node, `CLUSTER
//! ADDSLOTSRANGE` on each primary, `CLUSTER MEET`, `CLUSTER REPLICATE`, then waiting until every
//! node sees it whole and has saved a view it can start from again.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};
use valkey_dr_controller::poll;
use valkey_dr_core::cluster::SLOTS;

use super::*;

/// A cluster of `count` nodes on free ports of `ip` ([`start`]), tried again on fresh ports
/// up to three times: a port found free can be taken by another process before the node binds
/// it. Returns the addresses and the nodes.
pub async fn form(
    dir: &Path,
    ip: Ipv4Addr,
    count: usize,
    primaries: usize,
) -> Result<(Vec<SocketAddr>, Vec<ClusterNode>), ClusterError> {
    start_on_free_addresses(dir, primaries, || {
        (0..count)
            .map(|_| free_cluster_port(ip).map(|port| SocketAddr::new(ip.into(), port)))
            .collect::<Option<_>>()
            .ok_or_else(|| ClusterError::NotFormed(Duration::ZERO, format!("no free port on {ip}")))
    })
    .await
}

/// A cluster of one node per address of `ips`, all on one port free on every one of them (as on
/// separate hosts: the name leads clients to addresses, which carry no port), tried again on
/// another port up to three times ([`form`]). Returns the addresses and the nodes.
pub async fn form_spread(
    dir: &Path,
    ips: &[Ipv4Addr],
    primaries: usize,
) -> Result<(Vec<SocketAddr>, Vec<ClusterNode>), ClusterError> {
    start_on_free_addresses(dir, primaries, || {
        let port = port_free_on_all(ips)?;
        Ok(ips
            .iter()
            .map(|ip| SocketAddr::new((*ip).into(), port))
            .collect())
    })
    .await
}

/// A port free on every one of `ips`, its cluster bus port (+10000) too.
pub(crate) fn port_free_on_all(ips: &[Ipv4Addr]) -> Result<u16, ClusterError> {
    (0..100)
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
        })
}

/// [`start`] on the addresses `pick` finds free, picked and tried again up to three times: an
/// address found free can be taken by another process before its node binds it.
async fn start_on_free_addresses(
    dir: &Path,
    primaries: usize,
    pick: impl Fn() -> Result<Vec<SocketAddr>, ClusterError>,
) -> Result<(Vec<SocketAddr>, Vec<ClusterNode>), ClusterError> {
    let mut tries = 0;
    loop {
        let addrs = pick()?;
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
    let own: Vec<NodePlace> = addrs.iter().map(|a| NodePlace::own(*a)).collect();
    start_placed(dir, &own, primaries).await
}

/// Where a node stands: the address it listens at, the IP it gives the cluster for itself, and
/// the network namespace it runs in.
#[derive(Debug, Clone)]
pub struct NodePlace {
    pub listen: SocketAddr,
    pub announced: IpAddr,
    /// `None`: the machine's own.
    pub netns: Option<String>,
}

impl NodePlace {
    /// At `listen`, announcing it, in the machine's own namespace.
    pub fn own(listen: SocketAddr) -> NodePlace {
        NodePlace {
            listen,
            announced: listen.ip(),
            netns: None,
        }
    }
}

/// [`start`] on nodes that each stand where `places` says: a node may announce another IP, where
/// its ports are reached ([`form_linked`]'s proxies), and run in a network namespace of its own
/// ([`crate::cluster_chaos`]'s isolated regions). Formed through the announced addresses.
pub async fn start_placed(
    dir: &Path,
    places: &[NodePlace],
    primaries: usize,
) -> Result<Vec<ClusterNode>, ClusterError> {
    let mut nodes = Vec::new();
    for (i, place) in places.iter().enumerate() {
        let (addr, announced) = (&place.listen, &place.announced);
        let node_dir = dir.join(format!("cluster-{}-{}", addr.ip(), addr.port()));
        let _ = std::fs::remove_dir_all(&node_dir);
        std::fs::create_dir_all(&node_dir).map_err(ClusterError::Start)?;
        let automatic_failover = i < 2 * primaries;
        let child = server(
            *addr,
            *announced,
            &node_dir,
            automatic_failover,
            place.netns.as_deref(),
        )?
        .spawn()
        .map_err(ClusterError::Start)?;
        nodes.push(ClusterNode {
            addr: *addr,
            announced: *announced,
            netns: place.netns.clone(),
            child,
            dir: node_dir,
            automatic_failover,
            keep: false,
        });
    }
    for node in &nodes {
        wait_listening(node.addr).await?;
    }
    let announced: Vec<SocketAddr> = places
        .iter()
        .map(|p| SocketAddr::new(p.announced, p.listen.port()))
        .collect();
    form_nodes(&announced, primaries).await?;
    Ok(nodes)
}

/// Forms a cluster of the nodes at `addrs`, listening already: the first `primaries` get a
/// share of the slots each, node `i` beyond them follows primary `i % primaries`. Returns once
/// every node sees every shard whole and every replica online.
pub(crate) async fn form_nodes(addrs: &[SocketAddr], primaries: usize) -> Result<(), ClusterError> {
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

/// Waits, for up to `within`, until every replica holds what its primary held when this was
/// called (`addrs[i % primaries]` is the primary of `addrs[i]`): the writes made so far reached
/// every region, so that a fault from now on is judged against replicated history, not against
/// a replication stream still starting.
pub async fn until_replicated(
    addrs: &[SocketAddr],
    primaries: usize,
    within: Duration,
) -> Result<(), ClusterError> {
    let offset = |info: &str, field: &str| {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(field))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut marks = Vec::with_capacity(primaries);
    for primary in &addrs[..primaries] {
        let info = text(command(*primary, &["INFO", "replication"]).await?);
        marks.push(offset(&info, "master_repl_offset:"));
    }
    let deadline = Instant::now() + within;
    for (i, node) in addrs.iter().enumerate().skip(primaries) {
        let mark = marks[i % primaries];
        until(deadline, within, *node, async || {
            let info = text(command(*node, &["INFO", "replication"]).await?);
            let at = offset(&info, "slave_repl_offset:");
            Ok((at < mark).then(|| format!("replicated up to {at}, its primary was at {mark}")))
        })
        .await?;
    }
    Ok(())
}

/// Polls `check` until it finds nothing missing (`None`), or fails at `deadline` with what
/// was missing last.
pub(crate) async fn until(
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
