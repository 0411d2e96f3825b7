//! A sequence-numbered writer that reaches the writer the way an application does: it resolves
//! the global name through DNS, connects to the answer, and on any error (READONLY, a closed
//! connection, a timeout) or TTL expiry resolves again. Each acknowledged write is counted, so a
//! later [`verify`] can tell exactly how many acknowledged writes were lost.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use valkey_dr_dns::resolve::StubResolver;

#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub dns: SocketAddr,
    pub name: String,
    pub port: u16,
    /// Keys are `<prefix>:<sequence>`; in list mode, one list `<prefix>`.
    pub prefix: String,
    /// Append sequence numbers to one list (RPUSH) instead of one key each: the list shows
    /// duplicated and reordered writes too.
    pub list: bool,
    /// Where this client reaches a node the name resolves to, when not at `ip:port` directly:
    /// a client outside the node's region goes through the network path a partition cuts.
    pub via: std::collections::HashMap<IpAddr, SocketAddr>,
    /// TLS and AUTH, as for any client of the nodes.
    pub security: valkey_dr_valkey::Security,
    /// The network namespace the client stands in (a lab in namespaces: [`crate::netns`]);
    /// `None`: where the caller runs. Reading back ([`verify`]) runs where the caller runs.
    pub netns: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WriterReport {
    /// Writes 0..acknowledged were acknowledged, in order.
    pub acknowledged: u64,
    pub errors: u64,
    /// Longest time between two acknowledgements, as the client saw it.
    pub max_write_gap_ms: f64,
    /// When that gap ended (Unix ms).
    #[serde(default)]
    pub max_write_gap_ended_at_ms: u64,
    /// Every address the name led to, in order of first use.
    pub targets: Vec<String>,
}

/// How long a writer waits to connect and for each reply.
const CLIENT_TIMEOUTS: valkey_dr_valkey::Timeouts = valkey_dr_valkey::Timeouts {
    connect: Duration::from_millis(500),
    command: Duration::from_millis(1000),
};

pub async fn connect(
    ip: IpAddr,
    port: u16,
    security: &valkey_dr_valkey::Security,
) -> Result<MultiplexedConnection, String> {
    connect_within(ip, port, security, CLIENT_TIMEOUTS).await
}

async fn connect_within(
    ip: IpAddr,
    port: u16,
    security: &valkey_dr_valkey::Security,
    timeouts: valkey_dr_valkey::Timeouts,
) -> Result<MultiplexedConnection, String> {
    valkey_dr_valkey::connect(
        &valkey_dr_core::Endpoint::new(&ip.to_string(), port),
        security,
        timeouts,
    )
    .await
}

/// Resolves the name and connects to the first address.
async fn connect_by_name(
    resolver: &StubResolver,
    config: &WriterConfig,
    timeouts: valkey_dr_valkey::Timeouts,
) -> Result<(IpAddr, u32, MultiplexedConnection), String> {
    let (ips, ttl) = resolver
        .resolve(&config.name)
        .await
        .map_err(|e| e.to_string())?;
    let ip = *ips.first().ok_or("no address")?;
    let address = config
        .via
        .get(&ip)
        .copied()
        .unwrap_or(SocketAddr::new(ip, config.port));
    Ok((
        ip,
        ttl,
        connect_within(address.ip(), address.port(), &config.security, timeouts).await?,
    ))
}

/// Writes until `stop` completes.
pub async fn run(config: &WriterConfig, stop: impl Future<Output = ()>) -> WriterReport {
    run_counted(config, stop, &AtomicU64::new(0)).await
}

/// [`run`], keeping `progress` at the number of writes acknowledged so far (a nemesis reads it to
/// tell which writes were acknowledged in which phase of its schedule).
pub async fn run_counted(
    config: &WriterConfig,
    stop: impl Future<Output = ()>,
    progress: &AtomicU64,
) -> WriterReport {
    tokio::pin!(stop);
    let resolver = StubResolver::new(config.dns);
    let mut report = WriterReport::default();
    let mut connection: Option<(MultiplexedConnection, Instant)> = None;
    let mut last_ack = Instant::now();
    loop {
        if futures_ready(&mut stop).await {
            break;
        }
        if connection
            .as_ref()
            .is_none_or(|(_, expires)| Instant::now() >= *expires)
        {
            match connect_by_name(&resolver, config, CLIENT_TIMEOUTS).await {
                Ok((ip, ttl, conn)) => {
                    let ip = ip.to_string();
                    if report.targets.last() != Some(&ip) {
                        report.targets.push(ip);
                    }
                    connection = Some((
                        conn,
                        Instant::now() + Duration::from_secs(u64::from(ttl.max(1))),
                    ));
                }
                Err(_) => {
                    report.errors += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
            }
        }
        let (conn, _) = connection.as_mut().expect("connected above");
        let seq = report.acknowledged;
        let command = if config.list {
            redis::cmd("RPUSH").arg(&config.prefix).arg(seq).clone()
        } else {
            redis::cmd("SET")
                .arg(format!("{}:{seq}", config.prefix))
                .arg(seq)
                .clone()
        };
        let result: Result<redis::Value, _> = command.query_async(conn).await;
        match result {
            Ok(_) => {
                let gap = last_ack.elapsed().as_secs_f64() * 1000.0;
                if seq > 0 && gap > report.max_write_gap_ms {
                    report.max_write_gap_ms = gap;
                    report.max_write_gap_ended_at_ms = valkey_dr_controller::clock::now_ms();
                }
                last_ack = Instant::now();
                report.acknowledged += 1;
                progress.store(report.acknowledged, Ordering::Relaxed);
            }
            Err(_) => {
                // READONLY, closed connection, timeout: the writer may have moved. Ask DNS again.
                report.errors += 1;
                connection = None;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    report.max_write_gap_ms = (report.max_write_gap_ms * 1000.0).round() / 1000.0;
    report
}

async fn futures_ready(stop: &mut std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
    tokio::select! {
        biased;
        _ = stop.as_mut() => true,
        _ = std::future::ready(()) => false,
    }
}

/// Counts acknowledged writes `0..acknowledged` that are missing or wrong on the node the name
/// leads to now.
pub async fn verify(config: &WriterConfig, acknowledged: u64) -> Result<u64, String> {
    let resolver = StubResolver::new(config.dns);
    let (_, _, mut conn) = connect_by_name(&resolver, config, CLIENT_TIMEOUTS).await?;
    let mut lost = 0;
    let mut start = 0;
    while start < acknowledged {
        let end = (start + 1000).min(acknowledged);
        let keys: Vec<String> = (start..end)
            .map(|s| format!("{}:{s}", config.prefix))
            .collect();
        let values: Vec<Option<u64>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        lost += values
            .iter()
            .zip(start..end)
            .filter(|(v, s)| **v != Some(*s))
            .count() as u64;
        start = end;
    }
    Ok(lost)
}

/// What a list writer's list holds compared with what was acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListCheck {
    /// Acknowledged sequence numbers missing from the list.
    pub lost: u64,
    /// Of those, the ones acknowledged inside an excused window of the schedule (see
    /// [`ListCheck::lost_outside`]).
    #[serde(default)]
    pub lost_excused: u64,
    /// Entries present more than once (a retried write whose first attempt had landed).
    pub duplicated: u64,
    /// Entries smaller than the one before them.
    pub reordered: u64,
}

/// Checks a list writer's list through the name.
pub async fn verify_list(config: &WriterConfig, acknowledged: u64) -> Result<ListCheck, String> {
    verify_list_excusing(config, acknowledged, &[]).await
}

/// [`verify_list`], counting apart the writes lost from the `excused` ranges of sequence numbers
/// (a phase where losing acknowledged writes is expected, such as an isolated region's writer
/// before its fence).
pub async fn verify_list_excusing(
    config: &WriterConfig,
    acknowledged: u64,
    excused: &[std::ops::Range<u64>],
) -> Result<ListCheck, String> {
    // Read in pages, each on the connection of the last that succeeded: a list of 100,000
    // entries in one reply took seconds through the link's proxy, and one closed connection
    // (seen: three reads in a row after a heal) cost the whole read. A page that fails is read
    // again on a new connection; a failed read is no verdict.
    const PAGE: usize = 10_000;
    const TRIES: u32 = 5;
    let timeouts = valkey_dr_valkey::Timeouts {
        connect: Duration::from_secs(2),
        command: Duration::from_secs(15),
    };
    let resolver = StubResolver::new(config.dns);
    let mut entries: Vec<u64> = Vec::new();
    let mut conn = None;
    let mut failures = 0;
    loop {
        let page = async {
            if conn.is_none() {
                conn = Some(connect_by_name(&resolver, config, timeouts).await?.2);
            }
            let conn = conn.as_mut().expect("connected above");
            redis::cmd("LRANGE")
                .arg(&config.prefix)
                .arg(entries.len())
                .arg(entries.len() + PAGE - 1)
                .query_async::<Vec<u64>>(conn)
                .await
                .map_err(|e| e.to_string())
        };
        match page.await {
            Ok(page) => {
                failures = 0;
                let last = page.len() < PAGE;
                entries.extend(page);
                if last {
                    return Ok(check_list_excusing(&entries, acknowledged, excused));
                }
            }
            Err(e) => {
                failures += 1;
                if failures == TRIES {
                    return Err(format!(
                        "{e} (reading entries from {} on, {TRIES} tries)",
                        entries.len()
                    ));
                }
                conn = None;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

pub fn check_list(entries: &[u64], acknowledged: u64) -> ListCheck {
    check_list_excusing(entries, acknowledged, &[])
}

pub fn check_list_excusing(
    entries: &[u64],
    acknowledged: u64,
    excused: &[std::ops::Range<u64>],
) -> ListCheck {
    let mut seen = std::collections::HashSet::new();
    let duplicated = entries.iter().filter(|e| !seen.insert(**e)).count() as u64;
    let reordered = entries.windows(2).filter(|w| w[1] < w[0]).count() as u64;
    let lost: Vec<u64> = (0..acknowledged).filter(|s| !seen.contains(s)).collect();
    let lost_excused = lost
        .iter()
        .filter(|s| excused.iter().any(|r| r.contains(s)))
        .count() as u64;
    ListCheck {
        lost: lost.len() as u64,
        lost_excused,
        duplicated,
        reordered,
    }
}

impl ListCheck {
    /// Acknowledged writes lost outside the excused windows.
    pub fn lost_outside(&self) -> u64 {
        self.lost - self.lost_excused
    }
}

/// Several writers running side by side until stopped.
pub struct Fleet {
    stop: tokio::sync::watch::Sender<bool>,
    running: Vec<(WriterConfig, tokio::task::JoinHandle<WriterReport>)>,
    progress: Vec<Arc<AtomicU64>>,
}

impl Fleet {
    pub fn start(configs: Vec<WriterConfig>) -> Fleet {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let progress: Vec<Arc<AtomicU64>> = configs
            .iter()
            .map(|_| Arc::new(AtomicU64::new(0)))
            .collect();
        let running = configs
            .into_iter()
            .zip(&progress)
            .map(|(config, progress)| {
                let mut stop = stop_rx.clone();
                let progress = progress.clone();
                let work = {
                    let config = config.clone();
                    async move {
                        let stopped = async move {
                            let _ = stop.wait_for(|s| *s).await;
                        };
                        run_counted(&config, stopped, &progress).await
                    }
                };
                let task = match config.netns.clone() {
                    None => tokio::spawn(work),
                    Some(ns) => tokio::task::spawn_blocking(move || run_in(&ns, work)),
                };
                (config, task)
            })
            .collect();
        Fleet {
            stop,
            running,
            progress,
        }
    }

    /// Counters of each writer's acknowledged writes, in the order of the configs.
    pub fn progress(&self) -> Vec<Arc<AtomicU64>> {
        self.progress.clone()
    }

    /// Stops every writer and returns what each acknowledged.
    pub async fn stop(self) -> Vec<(WriterConfig, WriterReport)> {
        let _ = self.stop.send(true);
        let mut reports = Vec::new();
        for (config, task) in self.running {
            reports.push((config, task.await.unwrap_or_default()));
        }
        reports
    }
}

/// Runs a writer on a runtime of its own, on a thread inside namespace `ns` (its sockets are
/// the namespace's). A writer that cannot start there reports nothing acknowledged.
fn run_in(ns: &str, work: impl Future<Output = WriterReport> + Send + 'static) -> WriterReport {
    match crate::netns::block_on_in(ns, work).map(|t| t.join()) {
        Ok(Ok(Ok(Ok(report)))) => report,
        other => {
            tracing::error!(ns, outcome = ?other.map(|_| ()), "a writer could not run in its namespace");
            WriterReport::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_check_counts_lost_duplicated_and_reordered() {
        assert_eq!(check_list(&[0, 1, 2, 3], 4), ListCheck::default());
        assert_eq!(
            check_list(&[0, 1, 3], 4),
            ListCheck {
                lost: 1,
                duplicated: 0,
                reordered: 0,
                ..ListCheck::default()
            }
        );
        assert_eq!(
            check_list(&[0, 1, 1, 2], 3),
            ListCheck {
                lost: 0,
                duplicated: 1,
                reordered: 0,
                ..ListCheck::default()
            }
        );
        assert_eq!(
            check_list(&[0, 1, 2, 1], 3),
            ListCheck {
                lost: 0,
                duplicated: 1,
                reordered: 1,
                ..ListCheck::default()
            }
        );
        assert_eq!(
            check_list(&[0, 2, 1], 3),
            ListCheck {
                lost: 0,
                duplicated: 0,
                reordered: 1,
                ..ListCheck::default()
            }
        );
        // Unacknowledged writes that landed are neither lost nor duplicates.
        assert_eq!(check_list(&[0, 1, 2], 2), ListCheck::default());
    }

    #[test]
    fn losses_inside_an_excused_window_are_counted_apart() {
        let check = check_list_excusing(&[0, 1, 5, 6, 8], 9, &[2..5, 9..9]);
        assert_eq!((check.lost, check.lost_excused), (4, 3));
        assert_eq!(
            check.lost_outside(),
            1,
            "only 7 was lost outside the window"
        );
    }
}
