//! A cluster whose regions stand apart by an emulated link, as the replication lab's regions
//! do: each node listens at an address of its own and announces another, where a proxy carries
//! its client port and its cluster bus port on to it. A connection from a node of another region
//! — the proxy knows it by its source address, every node's `bind-source-addr` — is delayed by
//! the link's one-way latency each way; one from a node of the same region is not. Any other
//! source (the drill's writers, a controller in the same process) stands in `clients_region`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::*;

/// Where each node stands and where the link's clients do.
pub struct LinkLayout<'a> {
    /// The addresses the nodes listen at, one per node, in [`start`]'s order.
    pub listen: &'a [Ipv4Addr],
    /// The addresses they announce (where the proxies listen), one per node.
    pub announced: &'a [Ipv4Addr],
    /// Each node's region (any label; equal labels stand together).
    pub regions: &'a [usize],
    /// The region of a connection from any other address.
    pub clients_region: usize,
    /// One-way latency between two regions.
    pub delay: Duration,
}

/// The proxies of a linked cluster; they stop when this is dropped.
pub struct RegionLink {
    proxies: Vec<JoinHandle<()>>,
}

impl Drop for RegionLink {
    fn drop(&mut self) {
        for proxy in &self.proxies {
            proxy.abort();
        }
    }
}

/// A cluster of one node per address of `layout` on one port, formed through the proxies (with
/// `primaries` shards, as [`start`]), tried again on another port up to three times. Returns the
/// announced addresses (what clients and configs use), the nodes and the link.
pub async fn form_linked(
    dir: &Path,
    layout: &LinkLayout<'_>,
    primaries: usize,
) -> Result<(Vec<SocketAddr>, Vec<ClusterNode>, RegionLink), ClusterError> {
    let all: Vec<Ipv4Addr> = layout
        .listen
        .iter()
        .chain(layout.announced)
        .copied()
        .collect();
    let mut tries = 0;
    loop {
        tries += 1;
        let attempt = async {
            let port = port_free_on_all(&all)?;
            let link = start_proxies(layout, port).await?;
            let places: Vec<NodePlace> = layout
                .listen
                .iter()
                .zip(layout.announced)
                .map(|(listen, announced)| NodePlace {
                    listen: SocketAddr::new((*listen).into(), port),
                    announced: (*announced).into(),
                    netns: None,
                })
                .collect();
            let nodes = start_placed(dir, &places, primaries).await?;
            let announced = places
                .iter()
                .map(|p| SocketAddr::new(p.announced, p.listen.port()))
                .collect();
            Ok((announced, nodes, link))
        };
        match attempt.await {
            Ok(formed) => return Ok(formed),
            Err(e) if tries >= 3 => return Err(e),
            Err(_) => {}
        }
    }
}

/// A proxy on each announced address's `port` and bus port (+10000), to the node's.
async fn start_proxies(layout: &LinkLayout<'_>, port: u16) -> Result<RegionLink, ClusterError> {
    let region_of: Arc<HashMap<IpAddr, usize>> = Arc::new(
        layout
            .listen
            .iter()
            .zip(layout.regions)
            .map(|(ip, region)| (IpAddr::V4(*ip), *region))
            .collect(),
    );
    let mut link = RegionLink {
        proxies: Vec::new(),
    };
    for ((listen, announced), region) in layout
        .listen
        .iter()
        .zip(layout.announced)
        .zip(layout.regions)
    {
        for port in [port, port + 10_000] {
            let listener = TcpListener::bind((*announced, port))
                .await
                .map_err(ClusterError::Start)?;
            let target = SocketAddr::new((*listen).into(), port);
            let (region, region_of) = (*region, region_of.clone());
            let (clients_region, delay) = (layout.clients_region, layout.delay);
            link.proxies.push(tokio::spawn(async move {
                loop {
                    let Ok((client, from)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let from_region = region_of.get(&from.ip()).copied().unwrap_or(clients_region);
                    let delay = if from_region == region {
                        Duration::ZERO
                    } else {
                        delay
                    };
                    tokio::spawn(crate::link::relay(
                        client,
                        target,
                        delay,
                        Arc::default(),
                        Default::default(),
                    ));
                }
            }));
        }
    }
    Ok(link)
}
