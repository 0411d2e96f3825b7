//! A sequence-numbered writer that reaches the writer the way an application does: it resolves
//! the global name through DNS, connects to the answer, and on any error (READONLY, a closed
//! connection, a timeout) or TTL expiry resolves again. Each acknowledged write is counted, so a
//! later [`verify`] can tell exactly how many acknowledged writes were lost.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo};
use serde::{Deserialize, Serialize};
use valkey_dr_dns::resolve::StubResolver;

#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub dns: SocketAddr,
    pub name: String,
    pub port: u16,
    /// Keys are `<prefix>:<sequence>`.
    pub prefix: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WriterReport {
    /// Writes 0..acknowledged were acknowledged, in order.
    pub acknowledged: u64,
    pub errors: u64,
    /// Longest time between two acknowledgements, as the client saw it.
    pub max_write_gap_ms: f64,
    /// Every address the name led to, in order of first use.
    pub targets: Vec<String>,
}

pub async fn connect(ip: IpAddr, port: u16) -> Result<MultiplexedConnection, String> {
    let info = ConnectionAddr::Tcp(ip.to_string(), port)
        .into_connection_info()
        .map_err(|e| e.to_string())?;
    let client = Client::open(info).map_err(|e| e.to_string())?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(1000)));
    tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| e.to_string())
}

/// Resolves the name and connects to the first address.
async fn connect_by_name(
    resolver: &StubResolver,
    config: &WriterConfig,
) -> Result<(IpAddr, u32, MultiplexedConnection), String> {
    let (ips, ttl) = resolver
        .resolve(&config.name)
        .await
        .map_err(|e| e.to_string())?;
    let ip = *ips.first().ok_or("no address")?;
    Ok((ip, ttl, connect(ip, config.port).await?))
}

/// Writes until `stop` completes.
pub async fn run(config: &WriterConfig, stop: impl Future<Output = ()>) -> WriterReport {
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
            match connect_by_name(&resolver, config).await {
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
        let result: Result<(), _> = redis::cmd("SET")
            .arg(format!("{}:{seq}", config.prefix))
            .arg(seq)
            .query_async(conn)
            .await;
        match result {
            Ok(()) => {
                let gap = last_ack.elapsed().as_secs_f64() * 1000.0;
                if seq > 0 && gap > report.max_write_gap_ms {
                    report.max_write_gap_ms = gap;
                }
                last_ack = Instant::now();
                report.acknowledged += 1;
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
    let (_, _, mut conn) = connect_by_name(&resolver, config).await?;
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
