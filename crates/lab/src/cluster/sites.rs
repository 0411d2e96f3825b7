//! A cluster lab's highly available shape (`lab up --shards`, unless `--single-controller`): an
//! etcd member and a controller per site — each region, and a witness unless there are three —
//! every site's DNS server answering the name from etcd.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use valkey_dr_coord::cluster::{MemberAddress, member_command, wait_ready};

use super::*;

/// One site of a cluster lab: its name, its controller's config and its DNS server.
#[derive(Debug, Clone)]
pub struct LabSite {
    pub name: String,
    pub config: PathBuf,
    pub dns: SocketAddr,
}

/// The sites over `regions`: every region, and a witness unless there are three.
pub fn site_names(regions: &[String]) -> Vec<String> {
    let mut sites = regions.to_vec();
    if sites.len() < 3 {
        sites.push("witness".into());
    }
    sites
}

/// Site `i`'s etcd member: 127.<block>.<i + 1>.50 (no node of the lab has a host number above
/// 32), on etcd's ports.
fn etcd_member(block: u8, i: usize, name: &str) -> MemberAddress {
    let ip = Ipv4Addr::new(127, block, i as u8 + 1, 50);
    let peer = SocketAddr::new(ip.into(), 2380);
    MemberAddress {
        name: name.to_string(),
        client: SocketAddr::new(ip.into(), 2379),
        peer,
        reached_at: peer,
    }
}

/// Site `i`'s DNS server: the last site's on `dns` (the address `lab up --dns` names, which the
/// lab's own config `valkey-dr.toml` is that site's), the others' on 127.<block>.<i + 1>.53 at
/// its port.
fn site_dns(block: u8, i: usize, sites: usize, dns: SocketAddr) -> SocketAddr {
    if i + 1 == sites {
        dns
    } else {
        SocketAddr::new(
            Ipv4Addr::new(127, block, i as u8 + 1, 53).into(),
            dns.port(),
        )
    }
}

/// Starts one etcd member per site (daemonized: `etcd-<site>.pid` in `dir`, stopped by `lab
/// down` as every lab process), waits for their quorum, and writes each site's controller config
/// for the cluster lab [`up`] started with the same arguments ([`write_site_configs`]). The last
/// site's is `dir/valkey-dr.toml`, the lab's config; the others' `dir/valkey-dr-<site>.toml`.
pub async fn start_sites(
    dir: &Path,
    block: u8,
    port: u16,
    regions: &[String],
    shards: u8,
    dns: SocketAddr,
) -> Result<Vec<LabSite>, ClusterError> {
    let dir = std::path::absolute(dir).map_err(ClusterError::Start)?;
    let names = site_names(regions);
    // A new lab starts from nothing: no etcd data, no state of an earlier lab's controllers.
    let _ = std::fs::remove_dir_all(dir.join("etcd"));
    for name in &names {
        let _ = std::fs::remove_dir_all(dir.join(format!("state-{name}")));
    }
    let members: Vec<MemberAddress> = names
        .iter()
        .enumerate()
        .map(|(i, name)| etcd_member(block, i, name))
        .collect();
    for (i, member) in members.iter().enumerate() {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("etcd-{}.log", member.name)))
            .map_err(ClusterError::Start)?;
        let child = member_command(&dir.join("etcd"), &members, i, None)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(ClusterError::Start)?)
            .stderr(log)
            // Own process group: a Ctrl-C in the shell that ran `lab up` does not stop it.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                ClusterError::Start(std::io::Error::other(
                    valkey_dr_coord::cluster::spawn_error(e).to_string(),
                ))
            })?;
        std::fs::write(
            dir.join(format!("etcd-{}.pid", member.name)),
            child.id().to_string(),
        )
        .map_err(ClusterError::Start)?;
    }
    let endpoints: Vec<String> = members
        .iter()
        .map(|m| format!("http://{}", m.client))
        .collect();
    wait_ready(
        &endpoints,
        None,
        Duration::from_secs(30),
        "the cluster lab's etcd",
    )
    .await
    .map_err(|e| ClusterError::Start(std::io::Error::other(e.to_string())))?;
    let (addrs, shares) = lab_layout(block, port, regions, shards);
    let placed: Vec<(&str, &[SocketAddr])> = shares
        .iter()
        .map(|(name, range)| (name.as_str(), &addrs[range.clone()]))
        .collect();
    let sites = write_site_configs(
        &dir,
        &placed,
        &names,
        &endpoints,
        |i| site_dns(block, i, names.len(), dns),
        "",
    )
    .map_err(ClusterError::Start)?;
    // The last site's config is the lab's own.
    let last = sites.last().expect("a site");
    std::fs::rename(&last.config, dir.join("valkey-dr.toml")).map_err(ClusterError::Start)?;
    let mut sites = sites;
    if let Some(last) = sites.last_mut() {
        last.config = dir.join("valkey-dr.toml");
    }
    Ok(sites)
}

/// Writes `dir/valkey-dr-<site>.toml` for each of `sites`, controllers of the cluster whose nodes
/// stand in `placed` (region, nodes; the first holds the primaries), on the etcd members at
/// `etcd`: site `i`'s state in `dir/state-<site>`, its DNS server on `dns(i)`, `extra` (say, a
/// `[controller]` table) and `[coordination]` appended.
pub fn write_site_configs(
    dir: &Path,
    placed: &[(&str, &[SocketAddr])],
    sites: &[String],
    etcd: &[String],
    dns: impl Fn(usize) -> SocketAddr,
    extra: &str,
) -> std::io::Result<Vec<LabSite>> {
    let quoted = |list: &[String]| {
        list.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    sites
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let dns = dns(i);
            let text = format!(
                "{}{extra}[coordination]\netcd = [{}]\nsite = \"{name}\"\nsites = [{}]\n",
                regions_config(&dir.join(format!("state-{name}")), placed, Some(dns)),
                quoted(etcd),
                quoted(sites)
            );
            let config = dir.join(format!("valkey-dr-{name}.toml"));
            std::fs::write(&config, text)?;
            Ok(LabSite {
                name: name.clone(),
                config,
                dns,
            })
        })
        .collect()
}
