//! Chaos for cluster mode (`valkey-dr chaos --cluster`): each scenario on a stretched cluster of
//! its own — nine nodes, each on an address of its own, three shards, every primary and a
//! replica of it in us-east-1 and a replica in us-east-2 — run by a `valkey-dr run` process with
//! `cross_region_failover = "auto"`, a writer per shard through the cluster, and a monitor that
//! asks every answering node, every 20 ms, which slots it serves as a primary.
//!
//! The verdict: no slot ever claimed by two primaries under one config epoch (an old primary's
//! claim under a lower epoch, before it hears of its successor, is counted apart), one primary
//! per slot and the name on the writer region's primaries at the end, no write acknowledged
//! after the fault lost (a write acknowledged before a crash and not yet replicated may be:
//! replication is asynchronous; the table shows how many), and no shard wiped (more than half
//! its writes acknowledged before the fault lost: an empty primary synced by its replicas).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use valkey_dr_controller::cluster::controller::ControlledClusterStatus;
use valkey_dr_controller::cluster::start_guard::start_guard;
use valkey_dr_controller::control::{self, Request};

use crate::cluster::{self, ClusterNode, ShardWriters};

/// What a scenario does to the cluster once its writers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterFault {
    /// An all-shard switchover to us-east-2 through the controller.
    Switchover,
    /// The controller aborts after this step of a switchover (`crash-after:<step>`); a new one
    /// settles the move, and the switchover asked again completes it.
    ControllerCrash(&'static str),
    /// The controller's move stands still 3 s after this step (`stall-after:<step>:3000`), then
    /// goes on: within the write pause, or not at all.
    ControllerStall(&'static str),
    /// The whole controller process stopped (SIGSTOP, its DNS server too) for 3 s after this
    /// step of a switchover (`stop-after:<step>`), then resumed (SIGCONT).
    ControllerStopped(&'static str),
    /// A replica of shard 0 in us-east-1 SIGKILLed and started again at once with no data: it
    /// rejoins from its `nodes.conf` and syncs again.
    ReplicaRestartedEmpty,
    /// Shard 0's primary SIGKILLed, replaced within us-east-1 by the cluster, then started again
    /// with no data: it rejoins as a replica (restarted *before* it is replaced it would empty
    /// its shard — Valkey's own hazard, see the runbook; [`ClusterFault::PrimaryRestartedThroughGuard`]
    /// is the guarded restart).
    PrimaryBackEmptyAfterReplaced,
    /// Shard 0's primary SIGKILLed and restarted at once, empty, through `cluster start-guard` (as
    /// a supervisor's `ExecStartPre=` runs it): the guard holds the start until the cluster has
    /// replaced it, and it rejoins as a replica; without the guard its shard would be wiped.
    PrimaryRestartedThroughGuard,
    /// Shard 0's primary SIGKILLed: the cluster replaces it within us-east-1, the name follows.
    PrimaryKilled,
    /// Every us-east-1 node SIGKILLed: the controller fails the region over by itself.
    RegionKilled,
    /// Every us-east-1 node SIGKILLed, and the controller dies after this step of the automatic
    /// failover it starts (`crash-after:<step>`); a new one carries the recorded move on.
    RegionKilledControllerCrash(&'static str),
    /// Every us-east-1 node stopped (SIGSTOP) for 8 s, then resumed: failed over meanwhile, its
    /// old primaries must not take a write when they come back.
    RegionStalled,
    /// The highly available shape (a controller per site on etcd, the witness leading): the
    /// leader aborts after this step of a switchover; another site takes the leader key and
    /// settles the move, and the switchover asked again at us-east-2 completes it.
    LeaderCrash(&'static str),
    /// The highly available shape: the leader's whole process stopped (SIGSTOP) once a
    /// switchover's targets caught up, until another site leads, then resumed: it must take no
    /// shard over; the switchover asked again at us-east-2 completes it.
    LeaderStoppedPastLease,
    /// The highly available shape: every us-east-1 node and us-east-1's controller SIGKILLed:
    /// the leader, at another site, fails the region over.
    RegionKilledWithItsSite,
}

impl ClusterFault {
    /// Run by a controller per site on etcd rather than one.
    fn highly_available(self) -> bool {
        matches!(
            self,
            ClusterFault::LeaderCrash(_)
                | ClusterFault::LeaderStoppedPastLease
                | ClusterFault::RegionKilledWithItsSite
        )
    }
}

pub struct ClusterScenario {
    pub name: String,
    pub fault: ClusterFault,
}

pub fn scenarios() -> Vec<ClusterScenario> {
    let mut all = vec![ClusterScenario {
        name: "cluster: switchover".into(),
        fault: ClusterFault::Switchover,
    }];
    for step in ["paused", "caught-up", "handed-over-1", "handed-over-2"] {
        all.push(ClusterScenario {
            name: format!("cluster: controller crash after {step}"),
            fault: ClusterFault::ControllerCrash(step),
        });
    }
    for step in ["paused", "handed-over-1"] {
        all.push(ClusterScenario {
            name: format!("cluster: controller stalled 3 s after {step}"),
            fault: ClusterFault::ControllerStall(step),
        });
    }
    all.push(ClusterScenario {
        name: "cluster: controller process stopped 3 s (SIGSTOP) after handed-over-1".into(),
        fault: ClusterFault::ControllerStopped("handed-over-1"),
    });
    all.push(ClusterScenario {
        name: "cluster: a replica restarted empty at once".into(),
        fault: ClusterFault::ReplicaRestartedEmpty,
    });
    all.push(ClusterScenario {
        name: "cluster: a primary SIGKILLed, back empty once replaced".into(),
        fault: ClusterFault::PrimaryBackEmptyAfterReplaced,
    });
    all.push(ClusterScenario {
        name: "cluster: a primary SIGKILLed, restarted at once through the start guard".into(),
        fault: ClusterFault::PrimaryRestartedThroughGuard,
    });
    all.push(ClusterScenario {
        name: "cluster: a primary SIGKILLed".into(),
        fault: ClusterFault::PrimaryKilled,
    });
    all.push(ClusterScenario {
        name: "cluster: writer region SIGKILLed".into(),
        fault: ClusterFault::RegionKilled,
    });
    for step in ["paused", "handed-over-1"] {
        all.push(ClusterScenario {
            name: format!(
                "cluster: writer region SIGKILLed, the controller crashing after {step} of its failover"
            ),
            fault: ClusterFault::RegionKilledControllerCrash(step),
        });
    }
    all.push(ClusterScenario {
        name: "cluster: writer region stalled 8 s".into(),
        fault: ClusterFault::RegionStalled,
    });
    for step in ["paused", "caught-up", "handed-over-1", "handed-over-2"] {
        all.push(ClusterScenario {
            name: format!("cluster: HA, leader crash after {step}"),
            fault: ClusterFault::LeaderCrash(step),
        });
    }
    all.push(ClusterScenario {
        name: "cluster: HA, leader stopped (SIGSTOP) past its lease after caught-up".into(),
        fault: ClusterFault::LeaderStoppedPastLease,
    });
    all.push(ClusterScenario {
        name: "cluster: HA, writer region SIGKILLed with its site's controller".into(),
        fault: ClusterFault::RegionKilledWithItsSite,
    });
    all
}

/// One run's outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterRunReport {
    pub scenario: String,
    /// Acknowledged writes missing at the end that were acknowledged before the fault
    /// (asynchronous replication at a crash).
    pub lost_before_fault: usize,
    /// Acknowledged writes missing at the end that were acknowledged after the fault: must be 0.
    pub lost_after_fault: usize,
    /// Shards whose list lost more than half the writes acknowledged before the fault: a wipe
    /// (an empty primary's dataset synced by its replicas), never what a crash had in flight.
    pub wiped_shards: usize,
    /// Monitor samples in which two answering primaries claimed a slot under the same config
    /// epoch: a conflict the cluster cannot settle by itself.
    pub two_primaries_samples: usize,
    /// Samples in which an old primary still claimed a slot under a lower config epoch than
    /// its successor (it has not heard of the takeover yet; paused by the move, or cut off and
    /// fenced, it takes no write meanwhile — what "lost after the fault" checks).
    pub stale_claim_samples: usize,
    /// How many times the switchover was asked ([`switchover_until_done`]); 0 in the scenarios
    /// with none.
    pub switchovers_asked: u32,
    /// From the fault to the name leading to the writer region's primaries at the end.
    pub name_settled_ms: Option<u64>,
    pub verdict: String,
}

impl ClusterRunReport {
    pub fn ok(&self) -> bool {
        self.verdict == "ok"
    }
}

/// The controller process of a run.
struct Controller(Child);

impl Controller {
    fn start(valkey_dr: &Path, config: &Path, dir: &Path, fault: Option<&str>) -> Controller {
        Controller::spawn(valkey_dr, config, &dir.join("controller.log"), fault)
    }

    /// A site's controller of the highly available shape, its log `controller-<site>.log`.
    fn start_site(
        valkey_dr: &Path,
        site: &cluster::LabSite,
        dir: &Path,
        fault: Option<&str>,
    ) -> Controller {
        let log = dir.join(format!("controller-{}.log", site.name));
        Controller::spawn(valkey_dr, &site.config, &log, fault)
    }

    fn spawn(valkey_dr: &Path, config: &Path, log: &Path, fault: Option<&str>) -> Controller {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .ok();
        let mut command = Command::new(valkey_dr);
        command
            .args(["run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.map_or_else(Stdio::null, Stdio::from));
        if let Some(fault) = fault {
            command.env("VALKEY_DR_FAULT", fault);
        }
        Controller(command.spawn().expect("valkey-dr runs"))
    }

    fn stopped(&self) -> bool {
        crate::process::is_stopped(self.0.id() as i32)
    }

    fn signal(&self, signal: i32) {
        crate::process::signal(self.0.id() as i32, signal);
    }

    fn ended(&mut self) -> bool {
        self.0.try_wait().ok().flatten().is_some()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One run of `scenario` in `dir` (removed after a good run unless `keep`); `run` numbers the
/// run's addresses.
pub async fn run(
    scenario: &ClusterScenario,
    base: &Path,
    valkey_dr: &Path,
    run: u8,
    keep: bool,
) -> ClusterRunReport {
    let dir = base.join(format!("cluster-{run}"));
    let _ = std::fs::remove_dir_all(&dir);
    let mut report = ClusterRunReport {
        scenario: scenario.name.clone(),
        ..ClusterRunReport::default()
    };
    match run_in(scenario, &dir, valkey_dr, run, &mut report).await {
        Ok(()) => {
            let mut wrong = Vec::new();
            if report.two_primaries_samples > 0 {
                wrong.push(format!(
                    "two primaries claimed a slot under one epoch in {} samples",
                    report.two_primaries_samples
                ));
            }
            if report.wiped_shards > 0 {
                wrong.push(format!(
                    "{} shard(s) wiped: more than half their writes acknowledged before the fault lost",
                    report.wiped_shards
                ));
            }
            if report.lost_after_fault > 0 {
                wrong.push(format!(
                    "{} writes acknowledged after the fault lost",
                    report.lost_after_fault
                ));
            }
            if scenario_is_planned(scenario.fault) && report.lost_before_fault > 0 {
                wrong.push(format!(
                    "{} writes lost by a planned move",
                    report.lost_before_fault
                ));
            }
            report.verdict = if wrong.is_empty() {
                "ok".into()
            } else {
                wrong.join("; ")
            };
        }
        Err(e) => report.verdict = format!("failed: {e}"),
    }
    if report.ok() && !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    report
}

/// Switchovers lose nothing, whatever dies during them.
fn scenario_is_planned(fault: ClusterFault) -> bool {
    matches!(
        fault,
        ClusterFault::Switchover
            | ClusterFault::ControllerCrash(_)
            | ClusterFault::ControllerStall(_)
            | ClusterFault::ControllerStopped(_)
            | ClusterFault::ReplicaRestartedEmpty
            | ClusterFault::LeaderCrash(_)
            | ClusterFault::LeaderStoppedPastLease
    )
}

async fn run_in(
    scenario: &ClusterScenario,
    dir: &Path,
    valkey_dr: &Path,
    run: u8,
    report: &mut ClusterRunReport,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let pid = std::process::id();
    let ip = |n: u8| Ipv4Addr::new(127, 130 + n, (pid >> 8) as u8 ^ run, run);
    let ips: Vec<Ipv4Addr> = (0..9).map(ip).collect();
    let (addrs, mut nodes) = cluster::form_spread(dir, &ips, 3)
        .await
        .map_err(|e| e.to_string())?;
    // Kept with the run's directory, which [`run`] removes after a good run.
    nodes.iter_mut().for_each(ClusterNode::keep_files);
    let dns = std::net::UdpSocket::bind((ip(9), 0))
        .and_then(|s| s.local_addr())
        .map_err(|e| e.to_string())?;
    let config = write_config(dir, &addrs, dns).map_err(|e| e.to_string())?;
    let crash = match scenario.fault {
        ClusterFault::ControllerCrash(step)
        | ClusterFault::RegionKilledControllerCrash(step)
        | ClusterFault::LeaderCrash(step) => Some(format!("crash-after:{step}")),
        ClusterFault::ControllerStall(step) => Some(format!("stall-after:{step}:3000")),
        ClusterFault::ControllerStopped(step) => Some(format!("stop-after:{step}")),
        ClusterFault::LeaderStoppedPastLease => Some("stop-after:caught-up".into()),
        _ => None,
    };
    // One controller, or (the highly available shape) the witness's — it leads, the fault armed
    // in it — with a controller per region beside it; the name is then asked of us-east-2's,
    // which survives every such row.
    let (mut controller, sites, socket, dns, _etcd) = if scenario.fault.highly_available() {
        let (etcd, sites) = on_etcd(dir, &addrs, ip(9)).await?;
        let witness = &sites[2];
        let leader_socket = control_socket(&witness.config)?;
        let controller = Controller::start_site(valkey_dr, witness, dir, crash.as_deref());
        leader_is(
            &leader_socket,
            |l| l == "witness",
            "the witness",
            Duration::from_secs(30),
        )
        .await?;
        let others: Vec<Controller> = sites[..2]
            .iter()
            .map(|site| Controller::start_site(valkey_dr, site, dir, None))
            .collect();
        ready(&leader_socket, Duration::from_secs(30)).await?;
        let socket = control_socket(&sites[1].config)?;
        let (dns, sites) = (sites[1].dns, (sites, others));
        (controller, Some(sites), socket, dns, Some(etcd))
    } else {
        let controller = Controller::start(valkey_dr, &config, dir, crash.as_deref());
        let socket = dir.join("state/control.sock");
        ready(&socket, Duration::from_secs(30)).await?;
        (controller, None, socket, dns, None)
    };
    let (leader_socket, mut others) = match sites {
        Some((sites, others)) => (Some(control_socket(&sites[2].config)?), others),
        None => (None, Vec::new()),
    };

    let writers = ShardWriters::start(&addrs[..3], &addrs)
        .await
        .map_err(|e| e.to_string())?;
    let monitor = Monitor::start(addrs.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fault_at = Instant::now();
    let before_fault = writers.last_acked();
    let writer_region = match scenario.fault {
        ClusterFault::Switchover | ClusterFault::ControllerStall(_) => {
            switchover_until_done(&socket, report).await?;
            "us-east-2"
        }
        ClusterFault::ControllerStopped(_) => {
            // The switchover's request waits while the process stands still: asked from a task
            // of its own, the process resumed 3 s after it stopped.
            let asked = socket.clone();
            let asking = tokio::spawn(async move { switchover(&asked).await });
            if !holds_within(Duration::from_secs(10), || controller.stopped()).await {
                return Err("the controller did not stop itself".into());
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            controller.signal(libc::SIGCONT);
            match asking.await.map_err(|e| e.to_string())? {
                Ok(()) => {}
                Err(control::ClientError::Retryable(_)) => {
                    switchover_until_done(&socket, report).await?
                }
                Err(e) => return Err(e.to_string()),
            }
            "us-east-2"
        }
        ClusterFault::ControllerCrash(_) => {
            // It dies mid-move: the request ends without a result.
            let _ = switchover(&socket).await;
            if !holds_within(Duration::from_secs(10), || controller.ended()).await {
                return Err("the controller did not crash".into());
            }
            controller = Controller::start(valkey_dr, &config, dir, None);
            ready(&socket, Duration::from_secs(30)).await?;
            switchover_until_done(&socket, report).await?;
            "us-east-2"
        }
        ClusterFault::ReplicaRestartedEmpty => {
            nodes[3]
                .restart()
                .await
                .map_err(|e| format!("{}: {e}", addrs[3]))?;
            "us-east-1"
        }
        ClusterFault::PrimaryKilled | ClusterFault::PrimaryBackEmptyAfterReplaced => {
            nodes[0].kill();
            "us-east-1"
        }
        ClusterFault::PrimaryRestartedThroughGuard => {
            nodes[0].kill();
            let loaded = valkey_dr_core::Config::load(&config).map_err(|e| e.to_string())?;
            let node = addrs[0].to_string();
            start_guard(&loaded, &node, Duration::from_secs(30), |_| {})
                .await
                .map_err(|e| format!("{node}: {e}"))?;
            nodes[0]
                .restart()
                .await
                .map_err(|e| format!("{node}: {e}"))?;
            "us-east-1"
        }
        ClusterFault::RegionKilled => {
            for node in &mut nodes[..6] {
                node.kill();
            }
            "us-east-2"
        }
        ClusterFault::RegionKilledControllerCrash(_) => {
            for node in &mut nodes[..6] {
                node.kill();
            }
            // It decides after the lost primaries' fences are certain (~4.5 s), then dies in
            // the failover.
            if !holds_within(Duration::from_secs(20), || controller.ended()).await {
                return Err("the controller did not crash in its failover".into());
            }
            controller = Controller::start(valkey_dr, &config, dir, None);
            "us-east-2"
        }
        ClusterFault::RegionStalled => {
            for node in &nodes[..6] {
                node.signal(libc::SIGSTOP);
            }
            "us-east-2"
        }
        ClusterFault::LeaderCrash(_) => {
            // Asked of the leader itself: it dies mid-move (a site that handed the request on
            // would wait for an answer that never comes). Asked again at us-east-2, handed to
            // the next leader.
            let leader_socket = leader_socket.as_deref().expect("a leader");
            let _ = switchover(leader_socket).await;
            if !holds_within(Duration::from_secs(10), || controller.ended()).await {
                return Err("the leader did not crash".into());
            }
            switchover_until_done(&socket, report).await?;
            "us-east-2"
        }
        ClusterFault::LeaderStoppedPastLease => {
            let leader_socket = leader_socket.clone().expect("a leader");
            let asking = tokio::spawn(async move { switchover(&leader_socket).await });
            if !holds_within(Duration::from_secs(10), || controller.stopped()).await {
                return Err("the leader did not stop itself".into());
            }
            // Its lease runs out and another site leads; then it goes on.
            leader_is(
                &socket,
                |l| l != "witness",
                "another site",
                Duration::from_secs(20),
            )
            .await?;
            controller.signal(libc::SIGCONT);
            if asking.await.map_err(|e| e.to_string())?.is_ok() {
                return Err("the deposed leader carried its switchover out".into());
            }
            switchover_until_done(&socket, report).await?;
            "us-east-2"
        }
        ClusterFault::RegionKilledWithItsSite => {
            for node in &mut nodes[..6] {
                node.kill();
            }
            others.remove(0);
            "us-east-2"
        }
    };
    // The nodes lost to the fault, which the name must not lead to.
    let gone: Vec<SocketAddr> = match scenario.fault {
        ClusterFault::PrimaryKilled
        | ClusterFault::PrimaryBackEmptyAfterReplaced
        | ClusterFault::PrimaryRestartedThroughGuard => vec![addrs[0]],
        ClusterFault::RegionKilled
        | ClusterFault::RegionKilledControllerCrash(_)
        | ClusterFault::RegionStalled
        | ClusterFault::RegionKilledWithItsSite => addrs[..6].to_vec(),
        _ => Vec::new(),
    };
    let settled = name_settles(&socket, dns, writer_region, &gone, Duration::from_secs(30)).await;
    report.name_settled_ms = settled
        .as_ref()
        .ok()
        .map(|_| fault_at.elapsed().as_millis() as u64);
    if scenario.fault == ClusterFault::PrimaryBackEmptyAfterReplaced && settled.is_ok() {
        // Replaced (the name left it): back with no data, it must rejoin as a replica.
        nodes[0]
            .restart()
            .await
            .map_err(|e| format!("{}: {e}", addrs[0]))?;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if scenario.fault == ClusterFault::RegionStalled {
        // Kept stopped 8 s in all, then back: the old primaries find themselves taken over.
        tokio::time::sleep(Duration::from_secs(8).saturating_sub(fault_at.elapsed())).await;
        for node in &nodes[..6] {
            node.signal(libc::SIGCONT);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let written = writers.stop().await;
    (report.two_primaries_samples, report.stale_claim_samples) = monitor.stop().await;
    settled?;
    let alive = if matches!(
        scenario.fault,
        ClusterFault::RegionKilled
            | ClusterFault::RegionKilledControllerCrash(_)
            | ClusterFault::RegionKilledWithItsSite
            | ClusterFault::PrimaryKilled
            | ClusterFault::PrimaryBackEmptyAfterReplaced
            | ClusterFault::PrimaryRestartedThroughGuard
    ) {
        addrs[6]
    } else {
        addrs[0]
    };
    for ((w, before), _) in written.iter().zip(&before_fault).zip(0..) {
        let kept = cluster::list_at(alive, &w.key)
            .await
            .map_err(|e| e.to_string())?;
        let mut lost_before = 0;
        for n in w.acked.iter().filter(|n| !kept.contains(n)) {
            if (*n as i64) <= *before {
                lost_before += 1;
            } else {
                report.lost_after_fault += 1;
            }
        }
        let acked_before = w.acked.iter().filter(|n| (**n as i64) <= *before).count();
        if lost_before * 2 > acked_before {
            report.wiped_shards += 1;
        }
        report.lost_before_fault += lost_before;
    }
    // At the end every old primary has heard of its successor.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some((a, b)) = cluster::two_primaries_for_a_slot(&addrs).await {
        if Instant::now() > deadline {
            return Err(format!(
                "10 s after the end, two primaries claim a slot: {a:?} / {b:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(controller);
    drop(others);
    drop(nodes);
    Ok(())
}

/// A three-member etcd for a run in `dir`, and each site's controller config: us-east-1,
/// us-east-2 and the witness, each with its DNS server on a port of its own at `dns_ip`.
async fn on_etcd(
    dir: &Path,
    addrs: &[SocketAddr],
    dns_ip: Ipv4Addr,
) -> Result<(valkey_dr_coord::cluster::EtcdCluster, Vec<cluster::LabSite>), String> {
    let etcd =
        valkey_dr_coord::cluster::EtcdCluster::start(&dir.join("etcd"), Ipv4Addr::LOCALHOST, 3)
            .await
            .map_err(|e| e.to_string())?;
    let ports: Vec<SocketAddr> = (0..3)
        .map(|_| {
            std::net::UdpSocket::bind((dns_ip, 0))
                .and_then(|s| s.local_addr())
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let sites = cluster::write_site_configs(
        dir,
        &[("us-east-1", &addrs[..6]), ("us-east-2", &addrs[6..9])],
        &["us-east-1".into(), "us-east-2".into(), "witness".into()],
        &etcd.endpoints(),
        |i| ports[i],
        CONTROLLER_SETTINGS,
    )
    .map_err(|e| e.to_string())?;
    Ok((etcd, sites))
}

fn control_socket(config: &Path) -> Result<PathBuf, String> {
    valkey_dr_core::Config::load(config)
        .map(|c| c.control_socket())
        .map_err(|e| e.to_string())
}

/// Waits until the controller at `socket` names a leader that is `wanted` (`what` says which).
async fn leader_is(
    socket: &Path,
    wanted: impl Fn(&str) -> bool,
    what: &str,
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let leader = status(socket).await.ok().and_then(|s| s.leader);
        if leader.as_deref().is_some_and(&wanted) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{what} did not lead within {within:?}: {leader:?} does"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The run's config: the cluster's controller with automatic region failover, its DNS on
/// `dns`; survivors take writes alone (us-east-2 keeps no replica once it leads).
fn write_config(dir: &Path, addrs: &[SocketAddr], dns: SocketAddr) -> std::io::Result<PathBuf> {
    let path = cluster::write_regions_config(
        dir,
        &[("us-east-1", &addrs[..6]), ("us-east-2", &addrs[6..9])],
        Some(dns),
    )?;
    let written = std::fs::read_to_string(&path)?;
    std::fs::write(&path, format!("{written}{CONTROLLER_SETTINGS}"))?;
    Ok(path)
}

/// Every run's controller settings.
const CONTROLLER_SETTINGS: &str =
    "[controller]\ncross_region_failover = \"auto\"\nwrites_need_a_replica = false\n";

async fn status(socket: &Path) -> Result<ControlledClusterStatus, String> {
    let value = control::request(socket, &Request::Status, |_| {})
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// Waits until the controller answers, has published the name and armed every fence.
async fn ready(socket: &Path, within: Duration) -> Result<ControlledClusterStatus, String> {
    let deadline = Instant::now() + within;
    loop {
        match status(socket).await {
            Ok(s) if !s.name.is_empty() && s.self_fenced.len() == 3 => return Ok(s),
            other if Instant::now() > deadline => {
                return Err(format!("the controller is not ready: {other:?}"));
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Whether `check` holds within `within` (asked every 5 ms).
async fn holds_within(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    valkey_dr_controller::poll::until(within, Duration::from_millis(5), async || {
        check().then_some(())
    })
    .await
    .is_some()
}

async fn switchover(socket: &Path) -> Result<(), control::ClientError> {
    let request = Request::ClusterSwitchover {
        region: "us-east-2".into(),
    };
    control::request(socket, &request, |_| {}).await.map(|_| ())
}

/// The switchover to us-east-2, asked again while the controller answers that it ended
/// unfinished with nothing lost ([`control::ClientError::Retryable`]): refused before anything
/// was touched (a replica that followed a crashed move may be loading its sync) or rolled back (a
/// handover slow under load: seen in the full test suite, its replica's takeover landing after
/// the 6 s wait). Neither is what the verdict judges — it still requires every shard moved, the
/// name on them and no write lost; the report counts the times it was asked.
async fn switchover_until_done(socket: &Path, report: &mut ClusterRunReport) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        report.switchovers_asked += 1;
        match switchover(socket).await {
            Ok(()) => return Ok(()),
            Err(control::ClientError::Retryable(e)) if Instant::now() < deadline => {
                tracing::warn!(error = %e, "switchover not done; asked again");
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Waits until `region` holds every slot's primary, none of them `gone`, and the name (read
/// with a DNS query) leads to exactly those primaries.
async fn name_settles(
    socket: &Path,
    dns: SocketAddr,
    region: &str,
    gone: &[SocketAddr],
    within: Duration,
) -> Result<(), String> {
    let resolver = valkey_dr_dns::resolve::StubResolver::new(dns);
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(s) = status(socket).await {
            let serving: Vec<_> = s
                .cluster
                .shards
                .iter()
                .filter(|shard| shard.slot_count > 0)
                .collect();
            let mut primaries: Vec<String> = serving
                .iter()
                .filter_map(|shard| shard.primary.as_ref())
                .filter(|p| p.region.as_deref() == Some(region))
                .filter_map(|p| p.node.rsplit_once(':').map(|(ip, _)| ip.to_string()))
                .collect();
            primaries.sort();
            let mut name: Vec<String> = resolver
                .resolve("demo.valkey-dr.live")
                .await
                .map(|(ips, _)| ips.iter().map(|ip| ip.to_string()).collect())
                .unwrap_or_default();
            name.sort();
            let none_gone = primaries
                .iter()
                .all(|ip| !gone.iter().any(|g| g.ip().to_string() == *ip));
            if s.cluster.uncovered_slots.is_empty()
                && primaries.len() == serving.len()
                && name == primaries
                && none_gone
            {
                return Ok(());
            }
            last = format!("name {name:?}, primaries in {region} {primaries:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("the name did not settle on {region}: {last}"))
}

/// Samples, every 20 ms, whether two answering primaries claim a slot: under one config epoch
/// (a conflict), or one under a lower epoch than the other (a stale claim).
struct Monitor {
    stop: Arc<AtomicBool>,
    conflicts: Arc<AtomicUsize>,
    stale: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    fn start(addrs: Vec<SocketAddr>) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let conflicts = Arc::new(AtomicUsize::new(0));
        let stale = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (stop, conflicts, stale) = (stop.clone(), conflicts.clone(), stale.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    match cluster::two_primaries_for_a_slot(&addrs).await {
                        Some((a, b)) if a.epoch == b.epoch => {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(_) => {
                            stale.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {}
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Monitor {
            stop,
            conflicts,
            stale,
            task,
        }
    }

    /// (conflict samples, stale-claim samples)
    async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (
            self.conflicts.load(Ordering::Relaxed),
            self.stale.load(Ordering::Relaxed),
        )
    }
}
