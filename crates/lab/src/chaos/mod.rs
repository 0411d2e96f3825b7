//! `valkey-dr chaos`: a nemesis schedule on a lab of its own, judged by an independent checker.
//!
//! Each scenario starts a fresh lab, runs two sequence writers through the global name — one
//! outside every region (through the controller's links, cut when a region is isolated) and one
//! inside the writer's region (straight to the nodes) — injects its faults, heals, waits for the
//! controller to converge and reads every list back. A monitor that talks to every node directly
//! samples every 50 ms how many nodes report `role:master` and whether the name leads to one.
//! None of it asks the controller what happened: the verdict comes from the clients' view.

mod monitor;
mod nemesis;
mod partitions;
mod scenarios;
mod verdict;

use std::path::Path;
use std::time::{Duration, Instant};
use valkey_dr_controller::events::EventKind;

use serde::{Deserialize, Serialize};
use valkey_dr_controller::control;
use valkey_dr_core::Endpoint;
use valkey_dr_valkey::{Timeouts, ValkeyEngine};

use crate::LabSpec;
use crate::writer;
use monitor::Monitor;
use nemesis::Lab;
pub use scenarios::{Fault, Scenario, scenarios};
use verdict::verdict;

/// The write pause of a switchover in chaos labs: catch-up limit 1 s, so the pause (catch-up
/// + 4 s) expires 5 s after the fence.
const CATCHUP_TIMEOUT_MS: u64 = 1000;
const PAUSE_EXPIRED: Duration = Duration::from_secs(6);
/// How long a cut waits for every node outside the writer's region to hold what the writer
/// had acknowledged before it goes ahead anyway (a node that is down or resyncing never will).
const REPLICATED_WITHIN: Duration = Duration::from_secs(2);
/// The lab controllers' lease TTL.
const LEASE_TTL_MS: u64 = 3000;
/// The longest writer pause a site that no cut touched may take: what an etcd election costs.
const UNTOUCHED_PAUSE_LIMIT_MS: u64 = 1000;

/// What one run of a scenario showed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChaosReport {
    pub scenario: String,
    pub acknowledged_outside: u64,
    pub lost_outside: u64,
    pub acknowledged_inside: u64,
    pub lost_inside: u64,
    /// Of the lost writes, those acknowledged in a phase the scenario excuses (an isolated
    /// region's writer before its fence).
    #[serde(default)]
    pub lost_excused: u64,
    /// Time during which two or more nodes reported `role:master` *and accepted a write*.
    #[serde(default)]
    pub two_writable_masters_ms: u64,
    /// The longest time the name led to a node that was not a master (dead or a replica).
    #[serde(default)]
    pub longest_name_off_writer_ms: u64,
    /// `data_loss_suspected` events the controllers reported.
    #[serde(default)]
    pub data_loss_suspected: u64,
    /// The longest time a writer went without an acknowledged write.
    #[serde(default)]
    pub max_write_gap_ms: u64,
    /// Time during which two or more nodes reported `role:master`, and how many such intervals.
    pub two_masters_ms: u64,
    pub two_masters_intervals: u64,
    /// Time during which the name led to a node that answered as a replica.
    pub name_on_replica_ms: u64,
    pub name_on_replica_intervals: u64,
    pub failovers: u64,
    /// After healing: exactly one master, the name on it, the controller reporting healthy.
    pub final_one_writer: bool,
    pub final_name_on_writer: bool,
    pub final_healthy: bool,
    /// The most times one site's DNS answer for the name changed (more than the failovers: a
    /// double flip).
    pub name_changes: u64,
    /// Time during which some running controller's DNS server did not answer for the name.
    pub name_unresolved_ms: u64,
    /// The longest time two sites' DNS servers answered different addresses for the name (a
    /// site answering from a copy that missed a move).
    #[serde(default)]
    pub longest_sites_disagree_ms: u64,
    /// Highly available shape: from the fault to a new leader's election.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub takeover_ms: Option<u64>,
    /// Highly available shape: writes (state, DNS, node actions) refused because their leader had
    /// lost its lease — by etcd's token check or by the controller's own clock.
    pub stale_writes_refused: u64,
    /// Highly available shape: when a region's controller paused its writer, after the fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_after_ms: Option<u64>,
    /// Highly available shape, partitions: writer pauses (`self_fenced`) by sites that no cut
    /// touched that lasted longer than [`UNTOUCHED_PAUSE_LIMIT_MS`] — a site in full contact has
    /// no reason to stop its writes, and an etcd election (which every site sits through when
    /// the raft leader is cut off) must cost less.
    #[serde(default)]
    pub fenced_untouched: u64,
    /// The longest such pause, however short.
    #[serde(default)]
    pub longest_untouched_pause_ms: u64,
    pub verdict: String,
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("no free loopback block for a chaos lab: {0}")]
    NoBlock(String),
    #[error("lab: {0}")]
    Lab(String),
    #[error("controller: {0}")]
    Controller(#[from] control::ClientError),
}

fn lab_error(e: impl std::fmt::Display) -> ChaosError {
    ChaosError::Lab(e.to_string())
}

/// Which stopped labs keep their directory (logs, events, node files) for inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Keep {
    #[default]
    None,
    /// Only a run whose verdict is not ok (or that could not be judged).
    Failed,
    All,
}

/// Where the run with `seed` keeps its lab under `base`.
pub fn lab_dir(base: &Path, seed: u32) -> std::path::PathBuf {
    base.join(format!("chaos-{seed}"))
}

/// Where a scenario's lab runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// On loopback addresses: partitions are the region link's (a user-space proxy), an
    /// isolated site's etcd member is frozen.
    #[default]
    Loopback,
    /// Each place in a network namespace of its own: partitions drop real packets.
    Namespaces,
}

/// Runs one scenario on a fresh lab under `base` and tears the lab down.
pub async fn run(
    base: &Path,
    scenario: &Scenario,
    valkey_dr: &Path,
    seed: u32,
    keep: Keep,
    network: Network,
) -> Result<ChaosReport, ChaosError> {
    let dir = lab_dir(base, seed);
    let mut spec = match network {
        Network::Loopback => {
            LabSpec::on_free_block(dir.clone(), seed).map_err(ChaosError::NoBlock)?
        }
        Network::Namespaces => LabSpec::in_netns(
            dir.clone(),
            crate::netns::claim_slot(seed).map_err(lab_error)?,
        ),
    };
    if !scenario.ha {
        spec.sites.clear();
    }
    spec.catchup_timeout_ms = Some(CATCHUP_TIMEOUT_MS);
    let result = if scenario.fault.needs_real_network() && network == Network::Loopback {
        Err(lab_error(format!(
            "`{}` cuts what only packet filters can (run it with --netns)",
            scenario.name
        )))
    } else {
        run_on(&spec, scenario, valkey_dr).await
    };
    crate::process::down(&spec.dir).await;
    if spec.netns {
        // Also when the lab never started (its slot was claimed first).
        crate::netns::destroy(&spec);
    }
    let failed = result
        .as_ref()
        .map_or(true, |r| !r.verdict.starts_with("ok"));
    if keep == Keep::None || (keep == Keep::Failed && !failed) {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn run_on(
    spec: &LabSpec,
    scenario: &Scenario,
    valkey_dr: &Path,
) -> Result<ChaosReport, ChaosError> {
    // The fault, if any, is armed in the controllers from the start.
    let fault_env = match &scenario.fault {
        Fault::ControllerCrash { step, .. } => Some(format!("crash-after:{step}")),
        Fault::LeaderFails { step, stall_ms: 0 } => Some(format!("crash-after:{step}")),
        Fault::LeaderFails { step, .. } => Some(format!("stall-after:{step}")),
        _ => None,
    };
    let env: Vec<(&str, &str)> = fault_env
        .as_deref()
        .map(|f| ("VALKEY_DR_FAULT", f))
        .into_iter()
        .collect();
    crate::process::up_with_env(spec, valkey_dr, &env)
        .await
        .map_err(lab_error)?;
    let lab = Lab::new(spec, valkey_dr)?;
    let before = lab.wait_healthy(Duration::from_secs(30)).await?;
    let epoch_before = before["epoch"].as_u64().unwrap_or(0);
    let state_at_start =
        std::fs::read_to_string(spec.controller_dir().join("state.json")).unwrap_or_default();

    let monitor = Monitor::start(spec)?;
    let writers = writer::Fleet::start(lab.writers()?);
    let _ = lab.progress.set(writers.progress());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let mut report = ChaosReport {
        scenario: scenario.name.clone(),
        ..ChaosReport::default()
    };
    let mut injected_at = valkey_dr_controller::clock::now_ms();
    if let Err(e) = lab.inject(&scenario.fault, &state_at_start).await {
        report.error = Some(e.to_string());
    }
    tokio::time::sleep_until(
        (started
            + Duration::from_millis(scenario.duration_ms).saturating_sub(Duration::from_secs(1)))
        .into(),
    )
    .await;
    lab.heal().await?;
    let after = lab.wait_healthy(Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let results = writers.stop().await;
    let seen = monitor.stop().await;

    let excused = lab.excused.lock().expect("excused lock").clone();
    for (i, (config, result)) in results.into_iter().enumerate() {
        let windows = excused.get(i).cloned().unwrap_or_default();
        let check = writer::verify_list_excusing(&config, result.acknowledged, &windows).await;
        let lost = match check {
            Ok(c) => {
                report.lost_excused += c.lost_excused;
                c.lost_outside()
            }
            Err(e) => {
                report.error = Some(format!("verification failed: {e}"));
                result.acknowledged
            }
        };
        report.max_write_gap_ms = report.max_write_gap_ms.max(result.max_write_gap_ms as u64);
        if config.via.is_empty() {
            report.acknowledged_inside = result.acknowledged;
            report.lost_inside = lost;
        } else {
            report.acknowledged_outside = result.acknowledged;
            report.lost_outside = lost;
        }
    }
    report.two_masters_ms = seen.two_masters.total_ms;
    report.two_writable_masters_ms = seen.two_writable_masters.total_ms;
    report.longest_name_off_writer_ms = seen.name_off_writer.longest_ms;
    report.two_masters_intervals = seen.two_masters.intervals;
    report.name_on_replica_ms = seen.name_on_replica.total_ms;
    report.name_on_replica_intervals = seen.name_on_replica.intervals;
    report.failovers = after["epoch"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(epoch_before);
    report.final_one_writer = seen.last_masters == 1;
    report.final_name_on_writer = seen.last_name_on_master;
    report.final_healthy = after["findings"] == serde_json::json!(["healthy"]);
    report.name_changes = seen.name_changes;
    report.name_unresolved_ms = seen.name_unresolved.total_ms;
    report.longest_sites_disagree_ms = seen.sites_disagree.longest_ms;
    report.data_loss_suspected = lab
        .events_since(injected_at)
        .iter()
        .filter(|e| EventKind::of(e) == Some(EventKind::DataLossSuspected))
        .count() as u64;
    if spec.is_ha() {
        // Times count from when the fault took hold (a partition's start), if it was recorded.
        if let Some(at) = *lab.faulted_at.lock().expect("fault time lock") {
            injected_at = at;
        }
        let events = lab.events_since(injected_at);
        report.takeover_ms = events
            .iter()
            .find(|e| EventKind::of(e) == Some(EventKind::LeaderElected))
            .and_then(|e| valkey_dr_controller::clock::parse_rfc3339(e["ts"].as_str()?))
            .map(|t| t.saturating_sub(injected_at));
        report.stale_writes_refused = events
            .iter()
            .filter(|e| {
                let text = e.to_string();
                // Refused by etcd (a stale token), or by the controller's own clock first.
                text.contains("refused a write fenced")
                    || text.contains("DNS write refused")
                    || text.contains("not the leader")
            })
            .count() as u64;
        let cut_places = lab.cut_places.lock().expect("cut places lock").clone();
        if !cut_places.is_empty() {
            let pauses = untouched_pauses(
                &events,
                |site| !cut_places.contains(&spec.vantage(site)),
                valkey_dr_controller::clock::now_ms(),
            );
            report.longest_untouched_pause_ms = pauses.iter().copied().max().unwrap_or(0);
            report.fenced_untouched = pauses
                .iter()
                .filter(|ms| **ms > UNTOUCHED_PAUSE_LIMIT_MS)
                .count() as u64;
        }
        report.fenced_after_ms = events
            .iter()
            .find(|e| EventKind::of(e) == Some(EventKind::SelfFenced))
            .and_then(|e| valkey_dr_controller::clock::parse_rfc3339(e["ts"].as_str()?))
            .map(|t| t.saturating_sub(injected_at));
    }
    report.verdict = verdict(&report, scenario);
    Ok(report)
}
/// How long each writer pause by a site that `untouched` accepts lasted (ms): from its
/// `self_fenced` to its next `self_fence_lifted`, or to `end_ms` when it was never lifted.
fn untouched_pauses(
    events: &[serde_json::Value],
    untouched: impl Fn(&str) -> bool,
    end_ms: u64,
) -> Vec<u64> {
    let mut open: std::collections::BTreeMap<String, u64> = Default::default();
    let mut pauses = Vec::new();
    for event in events {
        let (Some(site), Some(at)) = (
            event["site"].as_str().filter(|s| untouched(s)),
            event["ts"]
                .as_str()
                .and_then(valkey_dr_controller::clock::parse_rfc3339),
        ) else {
            continue;
        };
        match EventKind::of(event) {
            Some(EventKind::SelfFenced) => {
                open.entry(site.to_string()).or_insert(at);
            }
            Some(EventKind::SelfFenceLifted) => {
                if let Some(from) = open.remove(site) {
                    pauses.push(at.saturating_sub(from));
                }
            }
            _ => {}
        }
    }
    pauses.extend(open.values().map(|from| end_ms.saturating_sub(*from)));
    pauses
}

fn read_pid(pidfile: &Path) -> Option<i32> {
    std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()
}

use crate::process::signal;

fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_millis(300),
        command: Duration::from_millis(300),
    }
}

fn endpoint(addr: std::net::SocketAddr) -> Endpoint {
    Endpoint::new(&addr.ip().to_string(), addr.port())
}

fn node_engine(spec: &LabSpec) -> Result<ValkeyEngine, ChaosError> {
    Ok(ValkeyEngine::new(
        timeouts(),
        spec.security().map_err(lab_error)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::untouched_pauses;
    use serde_json::json;

    #[test]
    fn untouched_pauses_run_from_each_fence_to_its_lift() {
        let at = |ms: u64| format!("2026-12-05T10:00:{:02}.{:03}Z", ms / 1000, ms % 1000);
        let fenced = |site: &str, ms| json!({ "ts": at(ms), "event": "self_fenced", "site": site });
        let lifted =
            |site: &str, ms| json!({ "ts": at(ms), "event": "self_fence_lifted", "site": site });
        let base = valkey_dr_controller::clock::parse_rfc3339(&at(0)).unwrap();
        let end = base + 20_000;
        // (case, events, expected pauses)
        let cases = [
            ("no pause", vec![], vec![]),
            (
                "one pause, lifted",
                vec![fenced("us-east-1", 1_000), lifted("us-east-1", 1_600)],
                vec![600],
            ),
            (
                "a second fence while paused (another master of the region) is the same pause",
                vec![
                    fenced("us-east-1", 1_000),
                    fenced("us-east-1", 1_100),
                    lifted("us-east-1", 3_300),
                ],
                vec![2_300],
            ),
            (
                "the cut site's own pauses do not count",
                vec![fenced("witness", 1_000), lifted("witness", 9_000)],
                vec![],
            ),
            (
                "never lifted: until the end",
                vec![fenced("us-east-2", 2_000)],
                vec![18_000],
            ),
        ];
        for (case, events, expected) in cases {
            assert_eq!(
                untouched_pauses(&events, |site| site != "witness", end),
                expected,
                "{case}"
            );
        }
    }
}
