//! Chaos for cluster mode (`valkey-dr chaos --cluster`): each scenario on a stretched cluster of
//! its own — nine nodes, each on an address of its own, three shards, every primary and a
//! replica of it in us-east-1 and a replica in us-east-2 — run by a `valkey-dr run` process with
//! `cross_region_failover = "auto"`, a writer per shard through the cluster, and a monitor that
//! asks every answering node, every 20 ms, which slots it serves as a primary. The partition
//! rows (`--netns`) stand each region and the controller in network namespaces of their own
//! ([`places`]) and cut real packets.
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
use crate::cut::Cut;

mod asking;
mod monitor;
mod places;
mod processes;
mod scenarios;

use asking::*;
use monitor::Monitor;
use places::Places;
use processes::*;
pub use scenarios::*;

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
    /// A partition ([`ClusterFault::Partitioned`]): the writes the writer region's own
    /// applications had acknowledged after the cut and that are gone at the end — taken by
    /// primaries cut off from their successors (the fence bounds them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_inside: Option<usize>,
    /// From the cut to the last of those: when the cut-off primaries' self-fence took hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inside_fenced_ms: Option<u64>,
    /// Those acknowledged after the name was seen on the survivors: two writers. Must be 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inside_acked_after_name_moved: Option<usize>,
    pub verdict: String,
}

impl ClusterRunReport {
    pub fn ok(&self) -> bool {
        self.verdict == "ok"
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
            if let Some(n) = report.inside_acked_after_name_moved.filter(|n| *n > 0) {
                wrong.push(format!(
                    "two writers: the cut-off region's primaries acknowledged {n} writes after the name moved"
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
/// SIGKILLs the writer region's six nodes, one after another. The fault holds once the last
/// is dead: a write its still-living primary acknowledged meanwhile is one acknowledged before
/// the fault (in the replication stream, as at any kill). Returns the fault's time and the
/// writers' marks then.
fn kill_writer_region(nodes: &mut [ClusterNode], writers: &ShardWriters) -> (Instant, Vec<i64>) {
    for node in &mut nodes[..6] {
        node.kill();
    }
    (Instant::now(), writers.last_acked())
}

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
    // Dropped last: the nodes and the controller inside end first.
    let places = if scenario.fault.needs_namespaces() {
        Some(Places::build(dir, pid ^ u32::from(run))?)
    } else {
        None
    };
    let (addrs, mut nodes): (Vec<SocketAddr>, Vec<ClusterNode>) = match &places {
        Some(places) => {
            let placed = places.nodes();
            let nodes = cluster::start_placed(dir, &placed, 3)
                .await
                .map_err(|e| e.to_string())?;
            (placed.iter().map(|p| p.listen).collect(), nodes)
        }
        None => {
            let ips: Vec<Ipv4Addr> = (0..9).map(ip).collect();
            cluster::form_spread(dir, &ips, 3)
                .await
                .map_err(|e| e.to_string())?
        }
    };
    // Kept with the run's directory, which [`run`] removes after a good run.
    nodes.iter_mut().for_each(ClusterNode::keep_files);
    let dns = match &places {
        Some(places) => places.dns(),
        None => std::net::UdpSocket::bind((ip(9), 0))
            .and_then(|s| s.local_addr())
            .map_err(|e| e.to_string())?,
    };
    let config = write_config(dir, &addrs, dns).map_err(|e| e.to_string())?;
    let controller_ns = places.as_ref().map(Places::controller_ns);
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
        let (etcd, sites) = on_etcd(dir, &addrs, ip(9), places.as_ref()).await?;
        let witness = &sites[2];
        let leader_socket = control_socket(&witness.config)?;
        let controller =
            Controller::start_site(valkey_dr, witness, dir, crash.as_deref(), places.as_ref());
        leader_is(
            &leader_socket,
            |l| l == "witness",
            "the witness",
            Duration::from_secs(30),
        )
        .await?;
        let others: Vec<Controller> = sites[..2]
            .iter()
            .map(|site| Controller::start_site(valkey_dr, site, dir, None, places.as_ref()))
            .collect();
        ready(&leader_socket, Duration::from_secs(30)).await?;
        let socket = control_socket(&sites[1].config)?;
        let (dns, sites) = (sites[1].dns, (sites, others));
        (controller, Some(sites), socket, dns, Some(etcd))
    } else {
        let controller = Controller::start(
            valkey_dr,
            &config,
            dir,
            crash.as_deref(),
            controller_ns.as_deref(),
        );
        let socket = dir.join("state/control.sock");
        ready(&socket, Duration::from_secs(30)).await?;
        (controller, None, socket, dns, None)
    };
    let (leader_socket, mut others) = match sites {
        Some((sites, others)) => (Some(control_socket(&sites[2].config)?), others),
        None => (None, Vec::new()),
    };

    // With places, the writers judged stand in us-east-2 (outside any cut), and us-east-1's own
    // applications write beside them: what a cut-off region's clients lose is measured apart.
    let (writers, inside) = match &places {
        Some(places) => {
            let (east_1, east_2) = (places.region_ns(0), places.region_ns(1));
            let outside = ShardWriters::start_in(&east_2, "writes", &addrs[..3], &addrs);
            let inside = ShardWriters::start_in(&east_1, "inside", &addrs[..3], &addrs);
            let (outside, inside) = tokio::join!(outside, inside);
            (
                outside.map_err(|e| e.to_string())?,
                Some(inside.map_err(|e| e.to_string())?),
            )
        }
        None => (
            ShardWriters::start("writes", &addrs[..3], &addrs)
                .await
                .map_err(|e| e.to_string())?,
            None,
        ),
    };
    let monitor = Monitor::start(addrs.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The writes so far in every region: on a loaded machine the first cross-region stream can
    // lag the first half second, and a region lost then would be judged a wiped shard.
    cluster::until_replicated(&addrs, 3, Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    let mut fault_at = Instant::now();
    let mut before_fault = writers.last_acked();
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
            controller = Controller::start(valkey_dr, &config, dir, None, controller_ns.as_deref());
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
            (fault_at, before_fault) = kill_writer_region(&mut nodes, &writers);
            "us-east-2"
        }
        ClusterFault::RegionKilledControllerCrash(_) => {
            (fault_at, before_fault) = kill_writer_region(&mut nodes, &writers);
            // It decides after the lost primaries' fences are certain (~4.5 s), then dies in
            // the failover.
            if !holds_within(Duration::from_secs(20), || controller.ended()).await {
                return Err("the controller did not crash in its failover".into());
            }
            controller = Controller::start(valkey_dr, &config, dir, None, controller_ns.as_deref());
            "us-east-2"
        }
        ClusterFault::RegionStalled => {
            for node in &nodes[..6] {
                node.signal(libc::SIGSTOP);
            }
            "us-east-2"
        }
        ClusterFault::Partitioned { cuts, moves, .. } => {
            let places = places.as_ref().expect("a run with places");
            let cuts = cuts
                .iter()
                .map(|entry| Cut::parse(entry))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            places.cut(&cuts)?;
            // The fault begins once every place's rules hold: a write acknowledged while they
            // were being put in place crossed before the cut.
            (fault_at, before_fault) = (Instant::now(), writers.last_acked());
            if moves { "us-east-2" } else { "us-east-1" }
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
            (fault_at, before_fault) = kill_writer_region(&mut nodes, &writers);
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
        | ClusterFault::Partitioned { moves: true, .. }
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
    let name_moved_at = Instant::now();
    let mut healed_at = None;
    if let (ClusterFault::Partitioned { .. }, Some(places)) = (scenario.fault, &places) {
        // Cut 12 s in all, then healed: the old primaries hear of their successors and follow.
        tokio::time::sleep(Duration::from_secs(12).saturating_sub(fault_at.elapsed())).await;
        places.cut(&[])?;
        healed_at = Some(Instant::now());
        tokio::time::sleep(Duration::from_secs(5)).await;
        // After the heal, the writer region is still the one the fault left (a cut that moves
        // nothing must not have moved a primary).
        name_settles(&socket, dns, writer_region, &gone, Duration::from_secs(10)).await?;
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
    let written_inside = match inside {
        Some(inside) => inside.stop().await,
        None => Vec::new(),
    };
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
        let kept: std::collections::HashSet<u64> = cluster::list_at(alive, &w.key)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect();
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
    if healed_at.is_some() {
        // Acknowledged after the cut and gone at the end: taken by the cut-off primaries, whose
        // history their successors replaced (what a survivor acknowledged, after the heal, stays).
        let mut lost_inside = 0;
        let mut last_inside = None;
        let mut after_name = 0;
        for w in &written_inside {
            let kept: std::collections::HashSet<u64> = cluster::list_at(alive, &w.key)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .collect();
            for (n, at) in w.acked.iter().zip(&w.acked_at) {
                if *at < fault_at || kept.contains(n) {
                    continue;
                }
                lost_inside += 1;
                last_inside = last_inside.max(Some(*at));
                if *at > name_moved_at {
                    after_name += 1;
                }
            }
        }
        report.lost_inside = Some(lost_inside);
        if matches!(
            scenario.fault,
            ClusterFault::Partitioned { moves: false, .. }
        ) {
            // Nothing cut these applications from their primaries, and nothing moved: whatever
            // they lost was lost with no fault on their path.
            report.lost_after_fault += lost_inside;
        } else {
            report.inside_fenced_ms =
                last_inside.map(|at| at.duration_since(fault_at).as_millis() as u64);
            report.inside_acked_after_name_moved = Some(after_name);
        }
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
    drop(places);
    Ok(())
}
