//! `valkey-dr chaos`: a nemesis schedule on a lab of its own, judged by an independent checker.
//!
//! Each scenario starts a fresh lab, runs two sequence writers through the global name — one
//! outside every region (through the controller's links, cut when a region is isolated) and one
//! inside the writer's region (straight to the nodes) — injects its faults, heals, waits for the
//! controller to converge and reads every list back. A monitor that talks to every node directly
//! samples every 50 ms how many nodes report `role:master` and whether the name leads to one.
//! None of it asks the controller what happened: the verdict comes from the clients' view.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use valkey_dr_controller::control::{self, Request};
use valkey_dr_controller::promotion::PromoteMethod;
use valkey_dr_core::{Endpoint, Engine};
use valkey_dr_dns::resolve::StubResolver;
use valkey_dr_valkey::{Timeouts, ValkeyEngine};

use crate::LabSpec;
use crate::writer::{self, WriterConfig};

/// The write pause of a switchover in chaos labs: catch-up limit 1 s, so the pause (catch-up
/// + 4 s) expires 5 s after the fence.
const CATCHUP_TIMEOUT_MS: u64 = 1000;
const PAUSE_EXPIRED: Duration = Duration::from_secs(6);
/// Longer than a write takes to cross the region link (7 ms each way in the lab).
const REPLICATION_IN_FLIGHT: Duration = Duration::from_millis(100);
/// The lab controllers' lease TTL.
const LEASE_TTL_MS: u64 = 3000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "fault")]
pub enum Fault {
    /// SIGKILL the writer; restart it empty after `restart_after_ms` (0: at once, as a
    /// supervisor with `Restart=always` does).
    KillWriter { restart_after_ms: u64 },
    /// SIGKILL the writer and restart it at once from a config file without `replicaof` (a common
    /// production default): it comes back as an empty master.
    WriterRestartedEmptyAsMaster,
    /// SIGKILL the writer, let the controller fail over, restart the old writer, then SIGKILL the
    /// *promoted* writer and restart it at once, empty.
    PromotedWriterRestartedAtOnce,
    /// Cut the writer's region off from the other region and the controller for `for_ms`.
    IsolateWriterRegion { for_ms: u64 },
    /// Cut only the controller (and the outside writer, which stands where it stands) from the
    /// writer's region for `for_ms`; the regions still reach each other.
    IsolateControllerFromWriterRegion { for_ms: u64 },
    /// A switchover whose controller aborts right after `step`; restarted after `restart_after_ms`.
    ControllerCrash { step: String, restart_after_ms: u64 },
    /// SIGSTOP the controller for `for_ms`.
    ControllerStall { for_ms: u64 },
    /// Restart the writer's in-region replica empty, then SIGKILL the writer.
    ReplicaRestartedThenWriterKilled,
    /// A switchover, then the controller restarted over a truncated or reverted `state.json`.
    StateDamaged { truncated: bool },
    /// `replica-serve-stale-data no` on every node, then SIGKILL the writer.
    StaleReadsRefusedThenWriterKilled,
    /// Highly available shape: a switchover whose leader stops right after `step` — aborts
    /// (`stall_ms` 0, restarted 500 ms later) or is SIGSTOPped for `stall_ms`.
    LeaderFails { step: String, stall_ms: u64 },
    /// Highly available shape: the leader's site (controller and etcd member) cut off for `for_ms`.
    IsolateLeaderSite { for_ms: u64 },
    /// Highly available shape: two of the three etcd members SIGSTOPped for `for_ms`.
    EtcdQuorumLost { for_ms: u64 },
    /// The writer's region isolated 8 s and healed; 6 s later the writer of the new epoch
    /// SIGKILLed and restarted empty from its own config file after `restart_after_ms` (as a
    /// master when `as_master`: its file without `replicaof`); 5 s later the writer of that moment
    /// SIGKILLed and restarted empty at once. The writes of the isolation phase are excused (an
    /// isolated writer acknowledges writes until it is fenced); no other may be lost.
    IsolateThenKillNewWriter {
        restart_after_ms: u64,
        as_master: bool,
    },
    /// Highly available shape: the controller of the writer's region SIGKILLed and, `gap_ms`
    /// later, the region cut off for `for_ms` (`cut_first`: the cut first, the controller killed
    /// `gap_ms` into it). Nothing may leave two masters that accept writes.
    RegionControllerDownAndCut {
        cut_first: bool,
        gap_ms: u64,
        for_ms: u64,
    },
    /// Highly available shape: a switchover into the other region, and `gap_ms` after it returns
    /// that region (the new writer's) cut off for `for_ms`, before its controller may have read
    /// the new epoch.
    SwitchoverThenCut { gap_ms: u64, for_ms: u64 },
}

impl Fault {
    /// How many times the fault SIGKILLs the writer. Replication is asynchronous: a writer killed
    /// between acknowledging a write and sending it to its replicas takes that write with it. A
    /// client waits for each acknowledgement before its next write, so each kill can cost each
    /// client at most its last write; nothing a controller does can save it (only a planned
    /// switchover can, by pausing first).
    fn writer_kills(&self) -> u64 {
        match self {
            Fault::KillWriter { .. }
            | Fault::WriterRestartedEmptyAsMaster
            | Fault::ReplicaRestartedThenWriterKilled
            | Fault::StaleReadsRefusedThenWriterKilled => 1,
            Fault::PromotedWriterRestartedAtOnce | Fault::IsolateThenKillNewWriter { .. } => 2,
            Fault::IsolateWriterRegion { .. }
            | Fault::IsolateControllerFromWriterRegion { .. }
            | Fault::LeaderFails { .. }
            | Fault::IsolateLeaderSite { .. }
            | Fault::EtcdQuorumLost { .. }
            | Fault::RegionControllerDownAndCut { .. }
            | Fault::SwitchoverThenCut { .. }
            | Fault::ControllerCrash { .. }
            | Fault::ControllerStall { .. }
            | Fault::StateDamaged { .. } => 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    pub fault: Fault,
    /// How long the writers run.
    pub duration_ms: u64,
    /// The most failovers the scenario allows (a stall must cause none).
    pub max_failovers: Option<u64>,
    /// Run on the highly available shape (three etcd members, a controller per site).
    #[serde(default)]
    pub ha: bool,
}

pub fn scenarios() -> Vec<Scenario> {
    let s = |name: &str, fault: Fault, seconds: u64| Scenario {
        name: name.to_string(),
        fault,
        duration_ms: seconds * 1000,
        max_failovers: None,
        ha: false,
    };
    let ha = |scenario: Scenario| Scenario {
        name: format!("HA: {}", scenario.name),
        ha: true,
        ..scenario
    };
    let mut all = vec![
        s(
            "writer killed, restarted empty after 6 s",
            Fault::KillWriter {
                restart_after_ms: 6000,
            },
            12,
        ),
        s(
            "writer killed, restarted empty at once",
            Fault::KillWriter {
                restart_after_ms: 0,
            },
            10,
        ),
        s(
            "writer killed, restarted empty at once as a master",
            Fault::WriterRestartedEmptyAsMaster,
            10,
        ),
        s(
            "promoted writer killed, restarted empty at once",
            Fault::PromotedWriterRestartedAtOnce,
            20,
        ),
        s(
            "writer region isolated 8 s",
            Fault::IsolateWriterRegion { for_ms: 8000 },
            14,
        ),
        Scenario {
            // Nothing is wrong with the writer: only the controller's view is cut.
            max_failovers: Some(0),
            ..s(
                "controller cut off from the writer region 8 s",
                Fault::IsolateControllerFromWriterRegion { for_ms: 8000 },
                14,
            )
        },
        Scenario {
            max_failovers: Some(0),
            ..s(
                "controller stalled 3 s (SIGSTOP)",
                Fault::ControllerStall { for_ms: 3000 },
                9,
            )
        },
        s(
            "replica restarted empty, then writer killed",
            Fault::ReplicaRestartedThenWriterKilled,
            12,
        ),
        s(
            "state.json truncated before a restart",
            Fault::StateDamaged { truncated: true },
            10,
        ),
        s(
            "state.json reverted before a restart",
            Fault::StateDamaged { truncated: false },
            10,
        ),
        s(
            "replica-serve-stale-data no, writer killed",
            Fault::StaleReadsRefusedThenWriterKilled,
            10,
        ),
    ];
    all.extend([
        ha(s(
            "writer region isolated 8 s",
            Fault::IsolateWriterRegion { for_ms: 8000 },
            14,
        )),
        ha(Scenario {
            max_failovers: Some(0),
            ..s(
                "leader cut off from the writer region 8 s",
                Fault::IsolateControllerFromWriterRegion { for_ms: 8000 },
                14,
            )
        }),
        ha(Scenario {
            max_failovers: Some(0),
            ..s(
                "leader site isolated 8 s",
                Fault::IsolateLeaderSite { for_ms: 8000 },
                14,
            )
        }),
        ha(Scenario {
            max_failovers: Some(0),
            ..s(
                "etcd quorum lost 6 s",
                Fault::EtcdQuorumLost { for_ms: 6000 },
                12,
            )
        }),
    ]);
    // A new writer killed after a region failover and brought back empty by its supervisor, in
    // both shapes: the history must survive on the nodes that hold it.
    for (restart_after_ms, as_master) in [(6000, false), (1000, false), (3000, false), (1000, true)]
    {
        let name = format!(
            "region isolated, healed, new writer killed, restarted empty{} after {} s",
            if as_master { " as a master" } else { "" },
            restart_after_ms / 1000
        );
        let fault = Fault::IsolateThenKillNewWriter {
            restart_after_ms,
            as_master,
        };
        let seconds = 32 + restart_after_ms / 1000;
        all.push(s(&name, fault.clone(), seconds));
        all.push(ha(s(&name, fault, seconds)));
    }
    // A region whose controller is down (or goes down) is still fenced before the writer moves.
    for (name, cut_first) in [
        (
            "writer region's controller killed, region cut 2 s later",
            false,
        ),
        ("writer region cut, its controller killed 0.5 s later", true),
    ] {
        all.push(ha(s(
            name,
            Fault::RegionControllerDownAndCut {
                cut_first,
                gap_ms: if cut_first { 500 } else { 2000 },
                for_ms: 8000,
            },
            16,
        )));
    }
    all.push(ha(s(
        "switchover, the new writer's region cut 0.5 s later",
        Fault::SwitchoverThenCut {
            gap_ms: 500,
            for_ms: 8000,
        },
        16,
    )));
    for step in ["fence", "intent", "promote", "switch_dns"] {
        all.push(ha(s(
            &format!("leader killed after {step}"),
            Fault::LeaderFails {
                step: step.to_string(),
                stall_ms: 0,
            },
            12,
        )));
        all.push(ha(s(
            &format!("leader stalled 5 s after {step}"),
            Fault::LeaderFails {
                step: step.to_string(),
                stall_ms: 5000,
            },
            14,
        )));
    }
    for step in [
        "fence",
        "intent",
        "promoted",
        "promote",
        "switch_dns",
        "release",
    ] {
        for (when, delay) in [("within", 500), ("after", PAUSE_EXPIRED.as_millis() as u64)] {
            all.push(s(
                &format!("controller crash after {step}, restart {when} the pause"),
                Fault::ControllerCrash {
                    step: step.to_string(),
                    restart_after_ms: delay,
                },
                if delay > 1000 { 13 } else { 8 },
            ));
        }
    }
    all
}

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
    /// Highly available shape: from the fault to a new leader's election.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub takeover_ms: Option<u64>,
    /// Highly available shape: writes (state, DNS, node actions) refused because their leader had
    /// lost its lease — by etcd's token check or by the controller's own clock.
    pub stale_writes_refused: u64,
    /// Highly available shape: when a region's controller paused its writer, after the fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_after_ms: Option<u64>,
    pub verdict: String,
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("no free loopback block for a chaos lab")]
    NoBlock,
    #[error("lab: {0}")]
    Lab(String),
    #[error("controller: {0}")]
    Controller(#[from] control::ClientError),
}

fn lab_error(e: impl std::fmt::Display) -> ChaosError {
    ChaosError::Lab(e.to_string())
}

/// Runs one scenario on a fresh lab under `base` and tears the lab down.
pub async fn run(
    base: &Path,
    scenario: &Scenario,
    valkey_dr: &Path,
    seed: u32,
    keep: bool,
) -> Result<ChaosReport, ChaosError> {
    let dir = base.join(format!("chaos-{seed}"));
    let mut spec = LabSpec::on_free_block(dir.clone(), seed).ok_or(ChaosError::NoBlock)?;
    if !scenario.ha {
        spec.sites.clear();
    }
    spec.catchup_timeout_ms = Some(CATCHUP_TIMEOUT_MS);
    let result = run_on(&spec, scenario, valkey_dr).await;
    crate::process::down(&spec.dir).await;
    if !keep {
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
    let mut injected_at = valkey_dr_controller::events::now_ms();
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
    report.data_loss_suspected = lab
        .events_since(injected_at)
        .iter()
        .filter(|e| e["event"] == "data_loss_suspected")
        .count() as u64;
    if spec.is_ha() {
        // Times count from when the fault took hold (a partition's start), if it was recorded.
        if let Some(at) = *lab.faulted_at.lock().expect("fault time lock") {
            injected_at = at;
        }
        let events = lab.events_since(injected_at);
        report.takeover_ms = events
            .iter()
            .find(|e| e["event"] == "leader_elected")
            .and_then(|e| valkey_dr_controller::events::parse_rfc3339(e["ts"].as_str()?))
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
        report.fenced_after_ms = events
            .iter()
            .find(|e| e["event"] == "self_fenced")
            .and_then(|e| valkey_dr_controller::events::parse_rfc3339(e["ts"].as_str()?))
            .map(|t| t.saturating_sub(injected_at));
    }
    report.verdict = verdict(&report, scenario);
    Ok(report)
}

fn verdict(r: &ChaosReport, scenario: &Scenario) -> String {
    let mut problems = Vec::new();
    let lost = r.lost_outside + r.lost_inside;
    // At most one write per client per kill of the writer: the replication window, not a fault of
    // the controller's (see `Fault::writer_kills`).
    let in_flight = scenario.fault.writer_kills();
    let within_window = r.lost_outside <= in_flight && r.lost_inside <= in_flight;
    // An isolated region's writer acknowledges writes until its controller fences it; those are
    // lost by design of asynchronous replication, and the fence must come within the lease TTL.
    let fenced_in_time = scenario.ha
        && matches!(scenario.fault, Fault::IsolateWriterRegion { .. })
        && r.fenced_after_ms.is_some_and(|ms| ms <= LEASE_TTL_MS);
    if lost > 0 && !within_window && !fenced_in_time {
        problems.push(format!("{lost} acknowledged lost"));
    }
    if !r.final_one_writer {
        problems.push("not one writer".into());
    }
    // One controller cannot fence a region it is cut off from, and promotes only once the
    // writer's self-fence holds; the highly available shape must never show two writers.
    if scenario.ha && r.two_writable_masters_ms > 0 {
        problems.push(format!(
            "two masters accepted writes for {} ms",
            r.two_writable_masters_ms
        ));
    }
    if r.data_loss_suspected > 0 {
        problems.push(format!("{} data loss(es) suspected", r.data_loss_suspected));
    }
    // A kill moves the name to a live writer within seconds (issue: a block that keeps a dead
    // writer published is an outage).
    if matches!(scenario.fault, Fault::IsolateThenKillNewWriter { .. })
        && r.longest_name_off_writer_ms > 3000
    {
        problems.push(format!(
            "the name led to no writer for {} ms",
            r.longest_name_off_writer_ms
        ));
    }
    if !r.final_name_on_writer {
        problems.push("name not on the writer".into());
    }
    if !r.final_healthy {
        problems.push("not healthy".into());
    }
    if scenario.max_failovers.is_some_and(|max| r.failovers > max) {
        problems.push(format!("{} failover(s)", r.failovers));
    }
    if r.name_changes > r.failovers.max(1) {
        problems.push(format!(
            "the name changed {} times for {} failover(s)",
            r.name_changes, r.failovers
        ));
    }
    match (problems.is_empty(), lost) {
        (true, 0) if r.lost_excused > 0 => format!(
            "ok ({} acknowledged by the isolated writer before its fence)",
            r.lost_excused
        ),
        (true, 0) => "ok".into(),
        (true, lost) if fenced_in_time => format!(
            "ok ({lost} acknowledged before the region fenced itself, {} ms in)",
            r.fenced_after_ms.unwrap_or_default()
        ),
        (true, lost) => format!("ok ({lost} in flight at the kill)"),
        _ => problems.join("; "),
    }
}

/// The lab as the nemesis drives it.
struct Lab<'a> {
    /// When the fault took hold, if the fault records it (Unix ms).
    faulted_at: std::sync::Mutex<Option<u64>>,
    /// Each writer's count of acknowledged writes, as it runs.
    progress: std::sync::OnceLock<Vec<std::sync::Arc<std::sync::atomic::AtomicU64>>>,
    /// Per writer, the ranges of sequence numbers whose loss the schedule excuses.
    excused: std::sync::Mutex<Vec<Vec<std::ops::Range<u64>>>>,
    spec: &'a LabSpec,
    valkey_dr: &'a Path,
    socket: PathBuf,
    engine: ValkeyEngine,
}

impl<'a> Lab<'a> {
    fn new(spec: &'a LabSpec, valkey_dr: &'a Path) -> Result<Lab<'a>, ChaosError> {
        Ok(Lab {
            faulted_at: std::sync::Mutex::new(None),
            progress: std::sync::OnceLock::new(),
            excused: std::sync::Mutex::new(Vec::new()),
            spec,
            valkey_dr,
            socket: spec.main_config().control_socket(),
            engine: node_engine(spec)?,
        })
    }

    /// Each writer's acknowledged count now.
    fn marks(&self) -> Vec<u64> {
        self.progress.get().map_or_else(Vec::new, |p| {
            p.iter()
                .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
                .collect()
        })
    }

    /// Excuses the writes each writer had acknowledged between `from` (its [`Lab::marks`]) and
    /// now, plus the one in flight at either end.
    fn excuse_since(&self, from: &[u64]) {
        let now = self.marks();
        let mut excused = self.excused.lock().expect("excused lock");
        excused.resize(now.len(), Vec::new());
        for (i, (start, end)) in from.iter().zip(&now).enumerate() {
            excused[i].push(*start..end + 1);
        }
    }

    /// Every controller's events since `since_ms`, in time order.
    fn events_since(&self, since_ms: u64) -> Vec<Value> {
        let since = valkey_dr_controller::events::rfc3339(since_ms);
        let mut events: Vec<Value> = self
            .spec
            .controller_dirs()
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("events.jsonl")).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .collect::<Vec<_>>()
            })
            .filter(|e| e["ts"].as_str().is_some_and(|ts| ts >= since.as_str()))
            .collect();
        events.sort_by(|a, b| a["ts"].as_str().cmp(&b["ts"].as_str()));
        events
    }

    /// The site that leads now (highly available shape).
    async fn leader_site(&self) -> Result<String, ChaosError> {
        let status = self.status().await?;
        status["coordination"]["leader"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| lab_error("no leader"))
    }

    fn pidfile(&self, site: Option<&str>) -> PathBuf {
        self.spec.controller_pidfile(site)
    }

    async fn status(&self) -> Result<Value, ChaosError> {
        Ok(control::request(&self.socket, &Request::Status, |_| {}).await?)
    }

    async fn wait_healthy(&self, limit: Duration) -> Result<Value, ChaosError> {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.status().await;
            if let Ok(s) = &status
                && ((s["findings"] == serde_json::json!(["healthy"]) && s["epoch"].is_u64())
                    || Instant::now() >= deadline)
            {
                return status;
            }
            if status.is_err() && Instant::now() >= deadline {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_epoch_above(&self, epoch: u64, limit: Duration) -> Result<Value, ChaosError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(s) = self.status().await
                && (s["epoch"].as_u64().is_some_and(|e| e > epoch) || Instant::now() >= deadline)
            {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(lab_error("the controller did not answer"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn restart_controller(&self, fault: Option<&str>) -> Result<(), ChaosError> {
        let _ = crate::process::kill_recorded(&self.spec.dir.join("controller.pid")).await;
        let mut config = self.spec.controller_config();
        config.controller.catchup_timeout_ms = CATCHUP_TIMEOUT_MS;
        std::fs::write(self.spec.config_path(), config.to_toml()).map_err(lab_error)?;
        let env: Vec<(&str, &str)> = fault.map(|f| ("VALKEY_DR_FAULT", f)).into_iter().collect();
        crate::process::start_controller(self.spec, self.valkey_dr, &env).map_err(lab_error)
    }

    /// One writer outside every region (through the controller's links) and one inside the
    /// writer's region (straight to the nodes).
    fn writers(&self) -> Result<Vec<WriterConfig>, ChaosError> {
        let base = self.spec.writer("chaos").map_err(lab_error)?;
        let via = self
            .spec
            .nodes()
            .map(|(r, i)| {
                (
                    std::net::IpAddr::from(self.spec.node_ip(r, i)),
                    self.spec.controller_link_addr(r, i),
                )
            })
            .collect();
        Ok(vec![
            WriterConfig {
                prefix: "chaos:outside".into(),
                list: true,
                via,
                ..base.clone()
            },
            WriterConfig {
                prefix: "chaos:inside".into(),
                list: true,
                ..base
            },
        ])
    }

    /// The lab coordinates of the node `name` (`ip:port`).
    fn node(&self, name: &str) -> Option<(usize, usize)> {
        self.spec
            .nodes()
            .find(|(r, i)| self.spec.node_addr(*r, *i).to_string() == name)
    }

    async fn writer(&self) -> Result<((usize, usize), u64), ChaosError> {
        let s = self.status().await?;
        let node = s["primary"]
            .as_str()
            .and_then(|p| self.node(p))
            .ok_or_else(|| lab_error("no writer"))?;
        Ok((node, s["epoch"].as_u64().unwrap_or(0)))
    }

    async fn kill(&self, (r, i): (usize, usize)) -> Result<(), ChaosError> {
        crate::process::kill_recorded(&self.spec.node_pidfile(r, i))
            .await
            .map_err(lab_error)
    }

    fn restart(&self, (r, i): (usize, usize)) -> Result<(), ChaosError> {
        crate::process::start_node(self.spec, r, i).map_err(lab_error)
    }

    fn other_region(&self, node: (usize, usize)) -> String {
        self.spec.regions[(node.0 + 1) % self.spec.regions.len()].clone()
    }

    async fn promote(&self, region: String) -> Result<Value, ChaosError> {
        let request = Request::Promote {
            region,
            method: PromoteMethod::Safe,
        };
        Ok(control::request(&self.socket, &request, |_| {}).await?)
    }

    fn controller_pid(&self) -> Option<i32> {
        read_pid(&self.pidfile(None))
    }

    async fn inject(&self, fault: &Fault, state_at_start: &str) -> Result<(), ChaosError> {
        let (writer, epoch) = self.writer().await?;
        match fault {
            Fault::KillWriter { restart_after_ms } => {
                self.kill(writer).await?;
                tokio::time::sleep(Duration::from_millis(*restart_after_ms)).await;
                self.restart(writer)?;
            }
            Fault::WriterRestartedEmptyAsMaster => {
                self.kill(writer).await?;
                crate::process::drop_replicaof(self.spec, writer.0, writer.1).map_err(lab_error)?;
                self.restart(writer)?;
            }
            Fault::PromotedWriterRestartedAtOnce => {
                self.kill(writer).await?;
                self.wait_epoch_above(epoch, Duration::from_secs(10))
                    .await?;
                self.restart(writer)?;
                self.wait_healthy(Duration::from_secs(15)).await?;
                let _ = control::request(&self.socket, &Request::Ack, |_| {}).await;
                let (promoted, _) = self.writer().await?;
                self.kill(promoted).await?;
                self.restart(promoted)?;
            }
            Fault::IsolateWriterRegion { for_ms } => {
                let region = self.spec.regions[writer.0].clone();
                self.partition_for(region, *for_ms).await?;
            }
            Fault::IsolateControllerFromWriterRegion { for_ms } => {
                // The leader's view is cut (in the single shape, the one controller's).
                let leader = if self.spec.is_ha() {
                    self.spec.vantage(&self.leader_site().await?)
                } else {
                    crate::spec::CONTROLLER_VANTAGE.to_string()
                };
                let cut = crate::link::site_cut(&leader, &self.spec.regions[writer.0]);
                self.partition_for(cut, *for_ms).await?;
            }
            Fault::LeaderFails { stall_ms, .. } => {
                let leader = self.leader_site().await?;
                let pidfile = self.pidfile(Some(&leader));
                // The leader aborts or stops mid-switchover: the request fails or hangs.
                let _ = tokio::time::timeout(
                    Duration::from_millis(*stall_ms.max(&500)),
                    self.promote(self.other_region(writer)),
                )
                .await;
                if *stall_ms == 0 {
                    crate::process::start_site_controller(self.spec, self.valkey_dr, &leader, &[])
                        .map_err(lab_error)?;
                } else if let Some(pid) = read_pid(&pidfile) {
                    signal(pid, libc::SIGCONT);
                }
            }
            Fault::IsolateLeaderSite { for_ms } => {
                let leader = self.leader_site().await?;
                self.partition_for(self.spec.vantage(&leader), *for_ms)
                    .await?;
            }
            Fault::EtcdQuorumLost { for_ms } => {
                let stopped: Vec<i32> = self.spec.sites[..2]
                    .iter()
                    .filter_map(|s| read_pid(&self.spec.etcd_pidfile(s)))
                    .collect();
                for pid in &stopped {
                    signal(*pid, libc::SIGSTOP);
                }
                tokio::time::sleep(Duration::from_millis(*for_ms)).await;
                for pid in &stopped {
                    signal(*pid, libc::SIGCONT);
                }
            }
            Fault::ControllerCrash {
                restart_after_ms, ..
            } => {
                // The controller aborts mid-switchover: the request fails.
                let _ = self.promote(self.other_region(writer)).await;
                tokio::time::sleep(Duration::from_millis(*restart_after_ms)).await;
                self.restart_controller(None).await?;
            }
            Fault::ControllerStall { for_ms } => {
                let pid = self
                    .controller_pid()
                    .ok_or_else(|| lab_error("no controller"))?;
                // SAFETY: signals to the controller process this lab started.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                tokio::time::sleep(Duration::from_millis(*for_ms)).await;
                unsafe { libc::kill(pid, libc::SIGCONT) };
            }
            Fault::ReplicaRestartedThenWriterKilled => {
                let replica = (writer.0, 1 - writer.1);
                self.kill(replica).await?;
                self.restart(replica)?;
                tokio::time::sleep(Duration::from_millis(300)).await;
                self.kill(writer).await?;
            }
            Fault::StateDamaged { truncated } => {
                self.promote(self.other_region(writer)).await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = crate::process::kill_recorded(&self.spec.dir.join("controller.pid")).await;
                let damaged = if *truncated {
                    state_at_start[..state_at_start.len() / 2].to_string()
                } else {
                    state_at_start.to_string()
                };
                std::fs::write(self.spec.controller_dir().join("state.json"), damaged)
                    .map_err(lab_error)?;
                self.restart_controller(None).await?;
            }
            Fault::IsolateThenKillNewWriter {
                restart_after_ms,
                as_master,
            } => {
                // Steady writes first (3 s with the runner's own second).
                tokio::time::sleep(Duration::from_secs(2)).await;
                self.cut_excused(self.spec.regions[writer.0].clone(), 8000)
                    .await?;
                tokio::time::sleep(Duration::from_secs(6)).await;
                let (promoted, _) = self.writer().await?;
                self.kill(promoted).await?;
                if *as_master {
                    crate::process::drop_replicaof(self.spec, promoted.0, promoted.1)
                        .map_err(lab_error)?;
                }
                tokio::time::sleep(Duration::from_millis(*restart_after_ms)).await;
                self.restart(promoted)?;
                tokio::time::sleep(Duration::from_secs(5)).await;
                let (current, _) = self.writer().await?;
                self.kill(current).await?;
                self.restart(current)?;
            }
            Fault::RegionControllerDownAndCut {
                cut_first,
                gap_ms,
                for_ms,
            } => {
                let region = self.spec.regions[writer.0].clone();
                let controller = self.pidfile(Some(&region));
                let gap = Duration::from_millis(*gap_ms);
                if !cut_first {
                    crate::process::kill_recorded(&controller)
                        .await
                        .map_err(lab_error)?;
                    tokio::time::sleep(gap).await;
                }
                let from = self.marks();
                tokio::time::sleep(REPLICATION_IN_FLIGHT).await;
                *self.faulted_at.lock().expect("fault time lock") =
                    Some(valkey_dr_controller::events::now_ms());
                crate::link::set_partition(&self.spec.dir, &[region].into())
                    .await
                    .map_err(lab_error)?;
                let mut cut_for = Duration::from_millis(*for_ms);
                if *cut_first {
                    tokio::time::sleep(gap).await;
                    crate::process::kill_recorded(&controller)
                        .await
                        .map_err(lab_error)?;
                    cut_for = cut_for.saturating_sub(gap);
                }
                tokio::time::sleep(cut_for).await;
                crate::link::set_partition(&self.spec.dir, &Default::default())
                    .await
                    .map_err(lab_error)?;
                self.excuse_since(&from);
            }
            Fault::SwitchoverThenCut { gap_ms, for_ms } => {
                let region = self.other_region(writer);
                self.promote(region.clone()).await?;
                tokio::time::sleep(Duration::from_millis(*gap_ms)).await;
                self.cut_excused(region, *for_ms).await?;
            }
            Fault::StaleReadsRefusedThenWriterKilled => {
                for (r, i) in self.spec.nodes() {
                    let endpoint = endpoint(self.spec.node_addr(r, i));
                    self.config_set(&endpoint, "replica-serve-stale-data", "no")
                        .await?;
                }
                self.kill(writer).await?;
            }
        }
        Ok(())
    }

    /// [`Lab::partition_for`], excusing the writes acknowledged while the region was cut off and
    /// in the moment before, whose replication across the link was still in flight: asynchronous
    /// replication loses those whenever the other side takes over.
    async fn cut_excused(&self, region: String, ms: u64) -> Result<(), ChaosError> {
        let from = self.marks();
        tokio::time::sleep(REPLICATION_IN_FLIGHT).await;
        self.partition_for(region, ms).await?;
        self.excuse_since(&from);
        Ok(())
    }

    /// Cuts `entry` (a region, or a controller cut) for `ms`, then heals.
    async fn partition_for(&self, entry: String, ms: u64) -> Result<(), ChaosError> {
        *self.faulted_at.lock().expect("fault time lock") =
            Some(valkey_dr_controller::events::now_ms());
        crate::link::set_partition(&self.spec.dir, &[entry].into())
            .await
            .map_err(lab_error)?;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        crate::link::set_partition(&self.spec.dir, &Default::default())
            .await
            .map_err(lab_error)
    }

    async fn config_set(&self, node: &Endpoint, key: &str, value: &str) -> Result<(), ChaosError> {
        let security = self.spec.security().map_err(lab_error)?;
        let mut conn = valkey_dr_valkey::connect(node, &security, timeouts())
            .await
            .map_err(lab_error)?;
        redis::cmd("CONFIG")
            .arg("SET")
            .arg(key)
            .arg(value)
            .query_async::<()>(&mut conn)
            .await
            .map_err(lab_error)
    }

    /// Undoes every fault: the partition lifted, every node and the controller running.
    async fn heal(&self) -> Result<(), ChaosError> {
        crate::link::set_partition(&self.spec.dir, &Default::default())
            .await
            .map_err(lab_error)?;
        for (r, i) in self.spec.nodes() {
            if self
                .engine
                .ping(&endpoint(self.spec.node_addr(r, i)))
                .await
                .is_err()
            {
                let _ = self.restart((r, i));
            }
        }
        if self.spec.is_ha() {
            for site in &self.spec.sites {
                if let Some(pid) = read_pid(&self.spec.etcd_pidfile(site)) {
                    signal(pid, libc::SIGCONT);
                }
                match read_pid(&self.pidfile(Some(site))) {
                    Some(pid) if crate::process::is_alive(pid) => signal(pid, libc::SIGCONT),
                    _ => {
                        crate::process::start_site_controller(self.spec, self.valkey_dr, site, &[])
                            .map_err(lab_error)?
                    }
                }
            }
            return Ok(());
        }
        match self.controller_pid() {
            Some(pid) if crate::process::is_alive(pid) => signal(pid, libc::SIGCONT),
            _ => self.restart_controller(None).await?,
        }
        Ok(())
    }
}

/// The name's first address from one DNS server, or None when it does not answer at once: a
/// stopped server must not slow the monitor's samples down (each sample's time is charged to
/// what it saw).
async fn quick_resolve(resolver: &StubResolver, name: &str) -> Option<std::net::IpAddr> {
    tokio::time::timeout(Duration::from_millis(150), resolver.resolve(name))
        .await
        .ok()?
        .ok()
        .and_then(|(ips, _)| ips.first().copied())
}

fn read_pid(pidfile: &Path) -> Option<i32> {
    std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: signals to processes this lab started.
    unsafe { libc::kill(pid, signal) };
}

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

/// Time spent in one bad condition, and how many separate times it began.
#[derive(Debug, Default, Clone, Copy)]
struct Spell {
    total_ms: u64,
    intervals: u64,
    active: bool,
    /// The longest single interval, and the one running now.
    longest_ms: u64,
    current_ms: u64,
}

impl Spell {
    fn sample(&mut self, bad: bool, step: Duration) {
        if bad {
            let ms = step.as_millis() as u64;
            self.total_ms += ms;
            if !self.active {
                self.intervals += 1;
                self.current_ms = 0;
            }
            self.current_ms += ms;
            self.longest_ms = self.longest_ms.max(self.current_ms);
        }
        self.active = bad;
    }
}

/// Whether a master takes a write now: a paused node (`CLIENT PAUSE WRITE`), one refusing writes
/// (`NOREPLICAS`, `READONLY`, `MISCONF`) or one that does not answer in time does not. The probe
/// key is the monitor's own; a write held by a pause lands later on a doomed or fenced node.
async fn accepts_write(node: &Endpoint, security: &valkey_dr_valkey::Security) -> bool {
    let attempt = async {
        let mut conn = valkey_dr_valkey::connect(node, security, timeouts())
            .await
            .ok()?;
        redis::cmd("SET")
            .arg("__chaos:probe")
            .arg(valkey_dr_controller::events::now_ms())
            .query_async::<()>(&mut conn)
            .await
            .ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(250), attempt).await,
        Ok(Some(()))
    )
}

#[derive(Debug, Default)]
struct Seen {
    two_masters: Spell,
    /// Two or more masters that each took the monitor's write.
    two_writable_masters: Spell,
    /// The name led to a node that is not a master (dead, or a replica).
    name_off_writer: Spell,
    name_on_replica: Spell,
    /// Some running controller's DNS server gave no address for the name.
    name_unresolved: Spell,
    /// The most times one site's answer for the name changed.
    name_changes: u64,
    /// Per site: its last answer and how often it changed.
    site_changes: Vec<(Option<std::net::IpAddr>, u64)>,
    last_masters: usize,
    last_name_on_master: bool,
}

/// Samples every node directly (not through the links a partition cuts) and the name.
struct Monitor {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Seen>,
}

impl Monitor {
    fn start(spec: &LabSpec) -> Result<Monitor, ChaosError> {
        let engine = node_engine(spec)?;
        let security = spec.security().map_err(lab_error)?;
        let nodes: Vec<(std::net::IpAddr, Endpoint)> = spec
            .nodes()
            .map(|(r, i)| (spec.node_ip(r, i).into(), endpoint(spec.node_addr(r, i))))
            .collect();
        let resolver = StubResolver::new(spec.dns);
        // Every site's DNS server, with the pid file of the controller that serves it.
        let servers: Vec<(StubResolver, PathBuf)> = if spec.is_ha() {
            spec.sites
                .iter()
                .map(|s| {
                    (
                        StubResolver::new(spec.site_dns(s)),
                        spec.controller_pidfile(Some(s)),
                    )
                })
                .collect()
        } else {
            vec![(StubResolver::new(spec.dns), spec.controller_pidfile(None))]
        };
        let name = format!("{}.{}.", spec.global_name, spec.zone);
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut seen = Seen::default();
            let step = Duration::from_millis(50);
            let mut last = Instant::now();
            while !*stopped.borrow() {
                let roles =
                    futures::future::join_all(nodes.iter().map(|(_, e)| engine.replication(e)))
                        .await;
                let masters: Vec<std::net::IpAddr> = nodes
                    .iter()
                    .zip(&roles)
                    .filter(|(_, r)| r.as_ref().is_ok_and(|i| i.is_primary()))
                    .map(|((ip, _), _)| *ip)
                    .collect();
                // Two masters matter only if both take writes: ask each (only then, so that the
                // probe costs nothing in the common case).
                let writable = if masters.len() >= 2 {
                    let probes = nodes
                        .iter()
                        .filter(|(ip, _)| masters.contains(ip))
                        .map(|(_, e)| accepts_write(e, &security));
                    futures::future::join_all(probes)
                        .await
                        .into_iter()
                        .filter(|ok| *ok)
                        .count()
                } else {
                    masters.len()
                };
                // What every site's DNS server says (None: not running, or no answer).
                let answers: Vec<(bool, Option<std::net::IpAddr>)> =
                    futures::future::join_all(servers.iter().map(|(r, pidfile)| {
                        let name = name.clone();
                        async move {
                            let running = read_pid(pidfile).is_some_and(crate::process::is_running);
                            (running, quick_resolve(r, &name).await)
                        }
                    }))
                    .await;
                let is_replica = |t: std::net::IpAddr| {
                    nodes
                        .iter()
                        .zip(&roles)
                        .any(|((ip, _), r)| *ip == t && r.as_ref().is_ok_and(|i| !i.is_primary()))
                };
                // The name as the main DNS address gives it, else as the first site that answers.
                let target = quick_resolve(&resolver, &name)
                    .await
                    .or_else(|| answers.iter().find_map(|(_, t)| *t));
                // On a replica if any site leads there.
                let target_is_replica = answers
                    .iter()
                    .filter_map(|(_, t)| *t)
                    .chain(target)
                    .any(is_replica);
                // Each site's own sequence of answers: a double flip is one site leading back.
                seen.site_changes.resize(answers.len(), (None, 0));
                for ((_, target), (last, changes)) in answers.iter().zip(&mut seen.site_changes) {
                    if target.is_some() && last.is_some() && target != last {
                        *changes += 1;
                    }
                    if target.is_some() {
                        *last = *target;
                    }
                }
                seen.name_changes = seen.site_changes.iter().map(|(_, c)| *c).max().unwrap_or(0);
                let answers: Vec<bool> = answers
                    .iter()
                    .map(|(running, t)| !running || t.is_some())
                    .collect();
                let elapsed = last.elapsed();
                last = Instant::now();
                seen.name_unresolved
                    .sample(answers.iter().any(|ok| !ok), elapsed);
                seen.two_masters.sample(masters.len() >= 2, elapsed);
                seen.two_writable_masters.sample(writable >= 2, elapsed);
                seen.name_off_writer
                    .sample(target.is_some_and(|t| !masters.contains(&t)), elapsed);
                seen.name_on_replica.sample(target_is_replica, elapsed);
                seen.last_masters = masters.len();
                seen.last_name_on_master = target.is_some_and(|t| masters.contains(&t));
                tokio::select! {
                    _ = tokio::time::sleep(step) => {}
                    _ = stopped.changed() => {}
                }
            }
            seen
        });
        Ok(Monitor { stop, task })
    }

    async fn stop(self) -> Seen {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}
