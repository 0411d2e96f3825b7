//! The region-link emulator: a TCP proxy per cross-region path that delays every byte by a fixed
//! one-way latency and can be partitioned. A partition is a black hole, as on a real network:
//! connections stay open and nothing flows until the link heals (no resets, so replicas notice
//! only through their own timeouts).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cut::{Cut, Effect};
use crate::spec::LinkSpec;

/// Which parts of the lab are cut off: the entries of the partition file, parsed.
#[derive(Default)]
pub struct Partition {
    cut: RwLock<BTreeSet<Cut>>,
}

pub use crate::cut::LINK;

/// The partition entry that cuts only the controller (and whatever stands where it stands) from
/// `region`, while the regions still reach each other: an asymmetric partition.
pub fn controller_cut(region: &str) -> String {
    site_cut(crate::spec::CONTROLLER_VANTAGE, region)
}

/// The partition entry that cuts only the traffic between `vantage` (a region, or the
/// controller's place) and `region`.
pub fn site_cut(vantage: &str, region: &str) -> String {
    Cut::Between(vantage.to_string(), region.to_string()).to_string()
}

impl Partition {
    /// True when traffic between the two sides must not flow. A proxy carries both directions of
    /// a connection, so a cut of either direction stops both.
    pub fn blocks(&self, a: &str, b: &str) -> bool {
        let cut = self.cut.read().expect("partition lock");
        cut.iter()
            .any(|c| c.effect(a, b) == Some(Effect::All) || c.effect(b, a) == Some(Effect::All))
    }

    /// Replaces the partition; entries that are not cuts are ignored (`set_partition` refuses
    /// them before they reach the file). True when it changed.
    pub fn set(&self, entries: BTreeSet<String>) -> bool {
        let wanted: BTreeSet<Cut> = entries.iter().filter_map(|e| Cut::parse(e).ok()).collect();
        let mut cut = self.cut.write().expect("partition lock");
        let changed = *cut != wanted;
        *cut = wanted;
        changed
    }
}

/// The file through which `lab partition` and `lab heal` steer the link daemon: one cut region per line.
pub fn partition_file(dir: &Path) -> PathBuf {
    dir.join("partition")
}

pub fn read_partition_file(dir: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(partition_file(dir))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Starts one listener per link; returns the bound addresses (useful when a port was 0).
pub async fn start(
    links: &[LinkSpec],
    partition: Arc<Partition>,
) -> std::io::Result<Vec<SocketAddr>> {
    let mut bound = Vec::new();
    for link in links {
        let listener = TcpListener::bind(link.listen).await?;
        bound.push(listener.local_addr()?);
        let link = link.clone();
        let partition = partition.clone();
        let delay = Duration::from_millis(link.delay_ms);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                tokio::spawn(carry(client, link.clone(), delay, partition.clone()));
            }
        });
    }
    Ok(bound)
}

async fn carry(client: TcpStream, link: LinkSpec, delay: Duration, partition: Arc<Partition>) {
    // A connection opened during a partition hangs, like a SYN into a black hole.
    while partition.blocks(&link.from_region, &link.to_region) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let regions = (link.from_region.clone(), link.to_region.clone());
    relay(client, link.target, delay, partition, regions).await
}

/// Carries `client`'s connection to `target` both ways, each byte `delay` late, and nothing
/// while `partition` cuts the two regions apart.
pub async fn relay(
    client: TcpStream,
    target: SocketAddr,
    delay: Duration,
    partition: Arc<Partition>,
    regions: (String, String),
) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pump(
            client_read,
            server_write,
            delay,
            partition.clone(),
            regions.clone()
        ),
        pump(server_read, client_write, delay, partition, regions),
    );
}

/// Copies one direction, releasing each chunk `delay` after it was read. The bounded queue gives
/// back-pressure during a partition, as a full TCP window would.
async fn pump(
    mut from: impl AsyncReadExt + Unpin + Send + 'static,
    mut to: impl AsyncWriteExt + Unpin,
    delay: Duration,
    partition: Arc<Partition>,
    (a, b): (String, String),
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    while let Some((due, chunk)) = rx.recv().await {
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        while partition.blocks(&a, &b) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&chunk).await.is_err() {
            break;
        }
    }
    reader.abort();
    let _ = to.shutdown().await;
}

/// Runs the link daemon of a lab until the process is stopped: the proxies, plus (when
/// `steered`) a watcher that applies `partition` file changes within ~10 ms. In network
/// namespaces the link only delays: packet filters make the partitions.
pub async fn run_daemon(dir: &Path, links: &[LinkSpec], steered: bool) -> std::io::Result<()> {
    let partition = Arc::new(Partition::default());
    start(links, partition.clone()).await?;
    if !steered {
        return std::future::pending().await;
    }
    partition.set(read_partition_file(dir));
    loop {
        let wanted = read_partition_file(dir);
        if partition.set(wanted.clone()) || !applied_file(dir).exists() {
            tracing::info!(cut = ?wanted, "region link partition changed");
            write_list(&applied_file(dir), &wanted)?;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Written by the link daemon once a partition change is in force.
fn applied_file(dir: &Path) -> PathBuf {
    dir.join("partition.applied")
}

fn write_list(path: &Path, regions: &BTreeSet<String>) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, regions.iter().cloned().collect::<Vec<_>>().join("\n"))?;
    std::fs::rename(tmp, path)
}

/// Cuts what `entries` name ([`Cut`]; empty: heal) and waits until the cut is in force.
///
/// In network namespaces the namespaces' packet filters drop the packets ([`crate::netns`]).
/// On loopback the link daemon holds the traffic of its proxies, and an isolated site's etcd
/// member is frozen too (SIGSTOP, SIGCONT on heal): etcd's peers do not pass the link, and a
/// frozen member is the nearest a loopback lab comes to an unreachable one. The cuts only packet
/// filters can make are refused there.
pub async fn set_partition(dir: &Path, entries: &BTreeSet<String>) -> std::io::Result<()> {
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let cuts: Vec<Cut> = entries
        .iter()
        .map(|e| Cut::parse(e))
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    let spec = crate::LabSpec::load(dir).ok();
    if let Some(spec) = spec.as_ref().filter(|s| s.netns) {
        crate::netns::apply(spec, &cuts).map_err(|e| std::io::Error::other(e.to_string()))?;
        write_list(&partition_file(dir), entries)?;
        return write_list(&applied_file(dir), entries);
    }
    if let Some(cut) = cuts.iter().find(|c| c.needs_real_network()) {
        return Err(invalid(format!(
            "`{cut}` needs a lab in network namespaces (`lab up --netns`, `chaos --netns`)"
        )));
    }
    if let Some(spec) = &spec {
        for site in &spec.sites {
            let isolated = entries.contains(&spec.vantage(site));
            let pid = std::fs::read_to_string(spec.etcd_pidfile(site))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
            if let Some(pid) = pid {
                let signal = if isolated {
                    libc::SIGSTOP
                } else {
                    libc::SIGCONT
                };
                // SAFETY: signalling a process the lab started.
                unsafe { libc::kill(pid, signal) };
            }
        }
    }
    if entries.is_empty() {
        match std::fs::remove_file(partition_file(dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    } else {
        write_list(&partition_file(dir), entries)?;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let applied: BTreeSet<String> = std::fs::read_to_string(applied_file(dir))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect();
        if &applied == entries {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the region link daemon did not apply the change (is the lab running?)",
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delays_and_partitions_traffic() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let link = LinkSpec {
            listen: "127.0.0.1:0".parse().unwrap(),
            target,
            from_region: "a".into(),
            to_region: "b".into(),
            delay_ms: 20,
        };
        let partition = Arc::new(Partition::default());
        let bound = start(&[link], partition.clone()).await.unwrap();
        let mut conn = TcpStream::connect(bound[0]).await.unwrap();
        let started = std::time::Instant::now();
        conn.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert!(
            started.elapsed() >= Duration::from_millis(40),
            "both directions are delayed"
        );

        partition.set(["b".to_string()].into());
        conn.write_all(b"lost").await.unwrap();
        let cut = tokio::time::timeout(Duration::from_millis(200), conn.read_exact(&mut buf)).await;
        assert!(cut.is_err(), "nothing flows through a partition");
        partition.set([LINK.to_string()].into());
        assert!(partition.blocks("a", "b"));
        assert!(
            !partition.blocks(crate::spec::CONTROLLER_VANTAGE, "b"),
            "the controller still sees b"
        );
        partition.set(BTreeSet::new());
        tokio::time::timeout(Duration::from_secs(2), conn.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"lost", "held data flows once the link heals");
    }
}

#[cfg(test)]
mod asymmetric_tests {
    use super::*;
    use crate::spec::CONTROLLER_VANTAGE as CONTROLLER;

    #[test]
    fn a_controller_cut_leaves_the_region_link_up() {
        let partition = Partition::default();
        partition.set([controller_cut("us-east-1")].into());
        assert!(partition.blocks(CONTROLLER, "us-east-1"));
        assert!(partition.blocks("us-east-1", CONTROLLER));
        assert!(!partition.blocks(CONTROLLER, "us-east-2"));
        assert!(!partition.blocks("us-east-1", "us-east-2"));
    }
}
