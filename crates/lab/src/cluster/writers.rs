//! A writer per shard through the cluster, and reading back what it wrote.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};
use valkey_dr_core::cluster::SLOTS;

use super::*;

/// A key named `<prefix>-<n>` of the shard that serves `slots` (asked of `node`, which knows
/// every slot's key).
pub async fn key_in(
    node: SocketAddr,
    prefix: &str,
    slots: std::ops::RangeInclusive<i64>,
) -> Result<String, ClusterError> {
    for n in 0..1_000_000 {
        let key = format!("{prefix}-{n}");
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

/// What one shard writer did: every write acknowledged, when, and the longest wait for one.
#[derive(Debug, Clone, Default)]
pub struct ShardWritten {
    pub key: String,
    pub acked: Vec<u64>,
    /// When each of `acked` was acknowledged.
    pub acked_at: Vec<Instant>,
    pub longest: Duration,
}

/// The thread of writers run inside a network namespace ([`crate::netns::block_on_in`]).
type Driver = std::thread::JoinHandle<std::io::Result<std::io::Result<()>>>;

/// A running shard writer: what it did ([`ShardWritten`] without its key).
type Writing = tokio::task::JoinHandle<ShardWritten>;

/// A writer per shard, each appending to a key of its shard as a cluster client does
/// ([`shard_writer`]).
pub struct ShardWriters {
    stop: Arc<AtomicBool>,
    running: Vec<(String, Arc<AtomicI64>, Writing)>,
    /// The thread that runs them inside a network namespace ([`ShardWriters::start_in`]), and
    /// what ends it once they stopped.
    driver: Option<(tokio::sync::oneshot::Sender<()>, Driver)>,
}

impl ShardWriters {
    /// One writer per node of `primaries`, the `i`th on a key `<prefix>-<n>` of the `i`th equal
    /// share of the slots (as [`start`] gives them out), with every node of `seeds` to turn to.
    pub async fn start(
        prefix: &str,
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
            let key = key_in(*primary, prefix, i as i64 * per..=last).await?;
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
        Ok(ShardWriters {
            stop,
            running,
            driver: None,
        })
    }

    /// [`ShardWriters::start`] with every connection made inside network namespace `ns`, as
    /// applications standing in that place: they run on a thread of their own there.
    pub async fn start_in(
        ns: &str,
        prefix: &str,
        primaries: &[SocketAddr],
        seeds: &[SocketAddr],
    ) -> Result<ShardWriters, ClusterError> {
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (end, ended) = tokio::sync::oneshot::channel::<()>();
        let (prefix, primaries, seeds) = (prefix.to_string(), primaries.to_vec(), seeds.to_vec());
        // The writers' tasks run while the thread waits for the end.
        let thread = crate::netns::block_on_in(ns, async move {
            let _ = started_tx.send(ShardWriters::start(&prefix, &primaries, &seeds).await);
            let _ = ended.await;
        })
        .map_err(ClusterError::Start)?;
        // Dropped unsent when the thread's runtime could not start.
        let gone = || {
            ClusterError::Start(std::io::Error::other(
                "the writers' thread in the namespace ended",
            ))
        };
        let mut writers = started.await.map_err(|_| gone())??;
        writers.driver = Some((end, thread));
        Ok(writers)
    }

    /// The last write each has had acknowledged so far (-1: none yet).
    pub fn last_acked(&self) -> Vec<i64> {
        self.running
            .iter()
            .map(|(_, last, _)| last.load(Ordering::Relaxed))
            .collect()
    }

    /// Stops them; what each did.
    pub async fn stop(mut self) -> Vec<ShardWritten> {
        self.stop.store(true, Ordering::Relaxed);
        let mut written = Vec::new();
        for (key, _, handle) in std::mem::take(&mut self.running) {
            written.push(ShardWritten {
                key,
                ..handle.await.unwrap_or_default()
            });
        }
        if let Some((end, thread)) = self.driver.take() {
            let _ = end.send(());
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
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
) -> ShardWritten {
    let mut acked = Vec::new();
    let mut acked_at = Vec::new();
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
                acked_at.push(Instant::now());
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
    ShardWritten {
        key,
        acked,
        acked_at,
        longest,
    }
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
