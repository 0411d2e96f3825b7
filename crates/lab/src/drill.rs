//! `valkey-dr drill`: move the writer while sequence-numbered writers go through the global name,
//! and measure what clients saw — and `drill bench`, which repeats drills and tabulates them.

use std::path::Path;
use std::time::{Duration, Instant};
use valkey_dr_controller::events::EventKind;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use valkey_dr_controller::clock::now_ms;
use valkey_dr_controller::control::{self, Request};
use valkey_dr_controller::promotion::PromoteMethod;
use valkey_dr_dns::resolve::StubResolver;

use crate::LabSpec;
use crate::clients::{self, ClientReport, ClientWriter};
use crate::writer::{self, WriterConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "operation")]
pub enum Operation {
    /// A planned switchover through the controller.
    Switchover { method: PromoteMethod },
    /// The writer node fails; the controller fails over on its own.
    Failover { fault: Fault },
}

/// How the writer fails in a failover drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// SIGKILL; restarted (empty) after the drill.
    Kill,
    /// SIGSTOP for the whole drill: connections stay open and silent, as with a hung host;
    /// SIGCONT after the drill, and the controller fences it.
    Stall,
    /// The writer's region cut off; healed after the drill.
    Partition,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Stall => "stall",
            Fault::Partition => "partition",
        }
    }
}

/// Some nanoseconds of the clock: a phase nobody chooses.
fn now_nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// When a drill's operation starts after its writers: half a TTL past their first
/// re-resolution. The writers resolve the name again whenever its TTL (the lab's: 1 s) runs out,
/// all at once since they start together; an operation at 1 s met those reconnections every
/// time, and the longest gap then measured a reconnection (a TLS handshake) besides the
/// operation.
pub const OPERATION_AT: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone)]
pub struct DrillOptions {
    pub operation: Operation,
    /// Switchover target region (default: the other region).
    pub region: Option<String>,
    pub writers: usize,
    pub duration: Duration,
    /// When the operation starts, after the writers.
    pub at: Duration,
    /// Writers on real client libraries beside the drill's own (`--clients`).
    pub clients: Option<ClientsOptions>,
}

#[derive(Debug, Clone)]
pub struct ClientsOptions {
    /// The `clients/` folder: the writers and their installed libraries.
    pub dir: std::path::PathBuf,
    pub writers: Vec<ClientWriter>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DrillReport {
    pub operation: String,
    /// When the operation started (Unix ms): the times below count from it, the controllers'
    /// events line up with it.
    #[serde(default)]
    pub started_at_ms: u64,
    pub method: Option<String>,
    pub old_primary: String,
    pub new_primary: Option<String>,
    pub new_primary_region: Option<String>,
    pub epoch_before: u64,
    pub epoch_after: u64,
    pub writers: usize,
    pub acknowledged_writes: u64,
    pub acknowledged_lost: u64,
    pub duplicated_writes: u64,
    pub reordered_writes: u64,
    /// Longest time any writer waited between two acknowledgements.
    pub max_write_gap_ms: f64,
    /// From the start of the operation until the name resolved to another address.
    pub dns_flip_ms: Option<f64>,
    /// From the first site's DNS server answering with the new address (the leader's, which
    /// loads it at its commit) until the last site's did: how long the sites disagree. `None`
    /// when a site never did; 0 with one server.
    #[serde(default)]
    pub dns_every_site_after_first_ms: Option<f64>,
    /// When the longest write gap ended, from the start of the operation (its start is this
    /// minus [`DrillReport::max_write_gap_ms`]).
    #[serde(default)]
    pub max_write_gap_ended_ms: Option<f64>,
    /// How long the old writer had been failing when the controller started the failover.
    pub detection_ms: Option<u64>,
    /// From the start of the operation until every reachable node replicated correctly again.
    pub replication_healthy_ms: Option<f64>,
    /// The client-library writers (`--clients`), one row each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<ClientReport>,
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("{0}")]
    Controller(#[from] control::ClientError),
    #[error("{0}")]
    Lab(String),
}

async fn status(socket: &Path) -> Result<Value, DrillError> {
    Ok(control::request(socket, &Request::Status, |_| {}).await?)
}

fn elapsed_ms(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

/// The time between the first and the last site answering with the new address (`None` when
/// one never did).
fn dns_spread(flips: &[Option<f64>]) -> Option<f64> {
    let flips: Option<Vec<f64>> = flips.iter().copied().collect();
    let flips = flips.filter(|f| !f.is_empty())?;
    let first = flips.iter().copied().fold(f64::INFINITY, f64::min);
    let last = flips.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some(((last - first) * 10.0).round() / 10.0)
}

/// True when every finding is `healthy` or about a node that is down.
fn replication_settled(status: &Value) -> bool {
    status["findings"].as_array().is_some_and(|f| {
        f.iter().all(|f| {
            f.as_str()
                .is_some_and(|f| f == "healthy" || f.contains("down:"))
        })
    })
}

pub async fn run(spec: &LabSpec, options: &DrillOptions) -> Result<DrillReport, DrillError> {
    if options.clients.is_some()
        && !spec.netns
        && options.operation
            == (Operation::Failover {
                fault: Fault::Partition,
            })
    {
        // On loopback a partition cuts the emulated region links only; the client libraries
        // connect to the nodes directly, so they would not be cut off and their numbers would
        // mean nothing. In network namespaces the cut drops their packets too.
        return Err(DrillError::Lab(
            "--clients with --partition needs a lab in network namespaces (`lab up --netns`)"
                .into(),
        ));
    }
    let socket = spec.main_config().control_socket();
    let before = status(&socket).await?;
    let old_primary = before["primary"].as_str().unwrap_or_default().to_string();
    let old_region = before["primary_region"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let name = format!("{}.{}.", spec.global_name, spec.zone);
    let resolver = StubResolver::new(spec.dns);
    let initial_ip = resolver
        .resolve(&name)
        .await
        .ok()
        .and_then(|(ips, _)| ips.first().copied());

    let run_id = now_ms();
    // The writers stand where the controller stands, outside every region: isolating a region
    // cuts them off from its nodes as it cuts the controller off.
    let via: std::collections::HashMap<_, _> = spec
        .nodes()
        .map(|(r, i)| {
            (
                std::net::IpAddr::from(spec.node_ip(r, i)),
                spec.controller_link_addr(r, i),
            )
        })
        .collect();
    let client_writers = match &options.clients {
        Some(c) => {
            // In network namespaces the libraries stand where the drill's writers do: in the
            // controller's place, outside every region.
            let place = spec
                .netns
                .then(|| crate::netns::vantage_ns(spec, crate::spec::CONTROLLER_VANTAGE));
            clients::start(
                &clients::Target::lab(spec),
                &c.dir,
                run_id,
                &c.writers,
                place.as_deref(),
            )
            .await
        }
        None => Vec::new(),
    };
    let base = spec.writer("drill").map_err(DrillError::Lab)?;
    let configs: Vec<WriterConfig> = (0..options.writers)
        .map(|w| WriterConfig {
            prefix: format!("drill:{run_id}:{w}"),
            list: true,
            via: via.clone(),
            ..base.clone()
        })
        .collect();
    let writers = writer::Fleet::start(configs);

    // A fault lands at a moment of the controller's pass cycle that nothing chooses, as a real
    // one does. Drills run back to back start at a fixed distance from the controller's passes
    // (successive drills detected a fault at the same time to within 3 ms): at a fixed moment
    // they would all measure one phase.
    let phase = match options.operation {
        Operation::Failover { .. } => {
            let cycle = spec.main_config().controller.reconcile_interval_ms.max(1);
            Duration::from_millis(u64::from(now_nanos()) % cycle)
        }
        Operation::Switchover { .. } => Duration::ZERO,
    };
    tokio::time::sleep(options.at + phase).await;
    let started = Instant::now();
    let started_wall = now_ms();
    // When each site's DNS server first answers with another address (the lab's own first).
    let flips: Vec<_> = std::iter::once(spec.dns)
        .chain(spec.dns_servers().into_iter().filter(|d| *d != spec.dns))
        .map(|dns| {
            let name = name.clone();
            tokio::spawn(async move {
                let resolver = StubResolver::new(dns);
                while started.elapsed() < Duration::from_secs(30) {
                    if let Ok((ips, _)) = resolver.resolve(&name).await
                        && ips.first().copied() != initial_ip
                    {
                        return Some(elapsed_ms(started));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                None
            })
        })
        .collect();
    let epoch_before = before["epoch"].as_u64().unwrap_or(0);
    let settled = tokio::spawn({
        let socket = socket.clone();
        async move {
            // Healthy again means: the new epoch is in force and every reachable node follows it.
            while started.elapsed() < Duration::from_secs(30) {
                if let Ok(s) = status(&socket).await
                    && replication_settled(&s)
                    && s["epoch"].as_u64().is_some_and(|e| e > epoch_before)
                {
                    return Some(elapsed_ms(started));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None
        }
    });

    let mut report = DrillReport {
        started_at_ms: started_wall,
        old_primary: old_primary.clone(),
        writers: options.writers,
        epoch_before,
        ..DrillReport::default()
    };
    let mut failed: Option<(usize, usize)> = None;
    match options.operation {
        Operation::Switchover { method } => {
            report.operation = "switchover".into();
            report.method = serde_json::to_value(method)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string));
            let region = options
                .region
                .clone()
                .or_else(|| spec.regions.iter().find(|r| **r != old_region).cloned())
                .unwrap_or_default();
            let request = Request::Promote { region, method };
            if let Err(e) = control::request(&socket, &request, |_| {}).await {
                report.error = Some(e.to_string());
            }
        }
        Operation::Failover { fault } => {
            report.operation = format!("failover_{}", fault.as_str());
            if fault == Fault::Partition {
                crate::link::set_partition(&spec.dir, &[old_region.clone()].into())
                    .await
                    .map_err(|e| DrillError::Lab(e.to_string()))?;
            } else {
                let node = spec
                    .nodes()
                    .find(|(r, i)| spec.node_addr(*r, *i).to_string() == old_primary)
                    .ok_or_else(|| {
                        DrillError::Lab(format!("the writer {old_primary} is not a lab node"))
                    })?;
                let pidfile = spec.node_pidfile(node.0, node.1);
                match fault {
                    Fault::Kill => crate::process::kill_recorded(&pidfile).await.map(|_| ()),
                    _ => crate::process::signal_recorded(&pidfile, libc::SIGSTOP).map(|_| ()),
                }
                .map_err(|e| DrillError::Lab(e.to_string()))?;
                failed = Some(node);
            }
        }
    }

    let rest = options
        .duration
        .saturating_sub(options.at)
        .max(Duration::from_millis(100));
    tokio::time::sleep_until((started + rest).into()).await;
    let mut writer_gap_end = None;
    for (config, result) in writers.stop().await {
        report.acknowledged_writes += result.acknowledged;
        if result.max_write_gap_ms > report.max_write_gap_ms {
            writer_gap_end = Some(result.max_write_gap_ended_at_ms);
        }
        report.max_write_gap_ms = report.max_write_gap_ms.max(result.max_write_gap_ms);
        match writer::verify_list(&config, result.acknowledged).await {
            Ok(check) => {
                report.acknowledged_lost += check.lost;
                report.duplicated_writes += check.duplicated;
                report.reordered_writes += check.reordered;
            }
            Err(e) => report.error = Some(format!("verification failed: {e}")),
        }
    }
    let mut site_flips = Vec::new();
    for flip in flips {
        site_flips.push(flip.await.ok().flatten());
    }
    report.dns_flip_ms = site_flips.first().copied().flatten();
    report.dns_every_site_after_first_ms = dns_spread(&site_flips);
    report.max_write_gap_ended_ms = writer_gap_end.map(|at| at as f64 - started_wall as f64);
    // The operation took effect when the name moved (or, if it never did, by the end).
    let effect_ms = started_wall
        + report
            .dns_flip_ms
            .map_or(rest.as_millis() as u64, |ms| ms as u64);
    report.clients = clients::stop(
        client_writers,
        started_wall,
        effect_ms,
        async |key: &str, acked| clients::lab_list_check(spec, key, acked).await,
    )
    .await;
    report.replication_healthy_ms = settled.await.ok().flatten();
    report.detection_ms = detection_ms(spec, started_wall);

    // Leave the lab as healthy as it was: restart what was killed, resume what was stopped,
    // heal, allow failovers again.
    match (options.operation, failed) {
        (Operation::Failover { fault: Fault::Kill }, Some(node)) => {
            crate::process::restart_node(spec, node.0, node.1, false)
                .await
                .map_err(|e| DrillError::Lab(e.to_string()))?
        }
        (
            Operation::Failover {
                fault: Fault::Stall,
            },
            Some((region, index)),
        ) => {
            crate::process::signal_recorded(&spec.node_pidfile(region, index), libc::SIGCONT)
                .map_err(|e| DrillError::Lab(e.to_string()))?;
        }
        (
            Operation::Failover {
                fault: Fault::Partition,
            },
            _,
        ) => crate::link::set_partition(&spec.dir, &Default::default())
            .await
            .map_err(|e| DrillError::Lab(e.to_string()))?,
        _ => {}
    }
    // Allow failovers again for the next drill; a leader change may refuse the first attempt.
    let deadline = Instant::now() + Duration::from_secs(10);
    while control::request(&socket, &Request::Ack, |_| {})
        .await
        .is_err()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = wait_healthy(&socket, Duration::from_secs(30)).await?;
    report.epoch_after = after["epoch"].as_u64().unwrap_or(0);
    report.new_primary = after["primary"].as_str().map(str::to_string);
    report.new_primary_region = after["primary_region"].as_str().map(str::to_string);
    Ok(report)
}

async fn wait_healthy(socket: &Path, limit: Duration) -> Result<Value, DrillError> {
    let deadline = Instant::now() + limit;
    loop {
        let s = status(socket).await?;
        if s["findings"] == serde_json::json!(["healthy"]) || Instant::now() >= deadline {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The detection time the controller reported for a failover that started after `since_ms`.
fn detection_ms(spec: &LabSpec, since_ms: u64) -> Option<u64> {
    let events: String = spec
        .controller_dirs()
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("events.jsonl")).ok())
        .collect::<Vec<_>>()
        .join("\n");
    let since = valkey_dr_controller::clock::rfc3339(since_ms);
    events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| {
            EventKind::of(e) == Some(EventKind::FailoverStarted)
                && e["ts"].as_str().is_some_and(|ts| ts >= since.as_str())
        })
        .find_map(|e| e["detection_ms"].as_u64())
}

/// One scenario of the benchmark.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub operation: Operation,
    pub duration: Duration,
}

pub fn bench_scenarios() -> Vec<Scenario> {
    let switchover = |name, method| Scenario {
        name,
        operation: Operation::Switchover { method },
        duration: Duration::from_millis(3500),
    };
    vec![
        switchover("switchover (valkey-dr)", PromoteMethod::Safe),
        switchover("blind REPLICAOF NO ONE + DNS", PromoteMethod::Blind),
        switchover("FAILOVER TO + DNS", PromoteMethod::FailoverCommand),
        Scenario {
            name: "failover: primary node SIGKILL",
            operation: Operation::Failover { fault: Fault::Kill },
            duration: Duration::from_millis(6500),
        },
        Scenario {
            // Silent, not dead: replaced once its self-fence holds.
            name: "failover: primary node silent (SIGSTOP)",
            operation: Operation::Failover {
                fault: Fault::Stall,
            },
            duration: Duration::from_millis(8500),
        },
        Scenario {
            name: "failover: region isolated (auto)",
            operation: Operation::Failover {
                fault: Fault::Partition,
            },
            duration: Duration::from_millis(7500),
        },
    ]
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

/// Median and range of one measurement over runs: `12.3 (10.1–15.0)`.
pub fn summarize(values: &[f64]) -> String {
    let mut v = values.to_vec();
    match median(&mut v) {
        None => "-".into(),
        Some(m) => format!("{m:.1} ({:.1}–{:.1})", v[0], v[v.len() - 1]),
    }
}

pub fn median_of(values: &[f64]) -> Option<f64> {
    median(&mut values.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn client_libraries_in_a_partition_need_real_packets_cut() {
        // On loopback the libraries connect past the emulated links a partition cuts: refused
        // before anything is touched (no lab runs here).
        let options = DrillOptions {
            operation: Operation::Failover {
                fault: Fault::Partition,
            },
            region: None,
            writers: 1,
            duration: Duration::from_secs(1),
            at: Duration::ZERO,
            clients: Some(ClientsOptions {
                dir: "clients".into(),
                writers: clients::matrix(&[clients::Library::RedisPy]),
            }),
        };
        let spec = LabSpec::reference(std::env::temp_dir().join("valkey-dr-no-lab"));
        let refused = run(&spec, &options).await.unwrap_err().to_string();
        assert!(
            refused.contains("needs a lab in network namespaces"),
            "{refused}"
        );
    }

    #[test]
    fn the_sites_disagree_from_the_first_flip_to_the_last() {
        // (case, each site's flip, expected)
        let cases = [
            ("one server", vec![Some(40.0)], Some(0.0)),
            (
                "three sites",
                vec![Some(41.2), Some(40.0), Some(43.5)],
                Some(3.5),
            ),
            ("a site never flipped", vec![Some(40.0), None], None),
            ("no server", vec![], None),
        ];
        for (case, flips, expected) in cases {
            assert_eq!(dns_spread(&flips), expected, "{case}");
        }
    }
}
