//! The cluster lab (`lab up --shards`): where its nodes stand, and the configs that name them.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

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
        let started = server(
            *addr,
            addr.ip(),
            &node_dir,
            i < 2 * usize::from(shards),
            None,
        )?
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
    let path = dir.join("valkey-dr.toml");
    std::fs::write(
        &path,
        regions_config(&dir.join("state"), regions, controlled),
    )?;
    Ok(path)
}

/// The text of [`write_regions_config`], the state in `state_dir`.
pub(super) fn regions_config(
    state_dir: &Path,
    regions: &[(&str, &[SocketAddr])],
    controlled: Option<SocketAddr>,
) -> String {
    let mut config = format!(
        "primary_region = \"{}\"\nstate_dir = \"{}\"\n",
        regions[0].0,
        state_dir.display()
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
    config
}
