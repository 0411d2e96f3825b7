//! The lab as the nemesis drives it: faults injected and healed, the writer located, the
//! phases whose losses a schedule excuses.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use valkey_dr_controller::control::{self, Request};
use valkey_dr_controller::promotion::PromoteMethod;
use valkey_dr_core::{Endpoint, Engine};
use valkey_dr_valkey::ValkeyEngine;

use super::{
    CATCHUP_TIMEOUT_MS, ChaosError, Fault, REPLICATED_WITHIN, endpoint, lab_error, node_engine,
    read_pid, signal, timeouts,
};
use crate::LabSpec;
use crate::cut::Cut;
use crate::writer::WriterConfig;

/// The lab as the nemesis drives it.
pub(super) struct Lab<'a> {
    /// When the fault took hold, if the fault records it (Unix ms).
    pub(super) faulted_at: std::sync::Mutex<Option<u64>>,
    /// Each writer's count of acknowledged writes, as it runs.
    pub(super) progress: std::sync::OnceLock<Vec<std::sync::Arc<std::sync::atomic::AtomicU64>>>,
    /// Per writer, the ranges of sequence numbers whose loss the schedule excuses.
    pub(super) excused: std::sync::Mutex<Vec<Vec<std::ops::Range<u64>>>>,
    /// The places (vantage names) some cut of the schedule touched.
    pub(super) cut_places: std::sync::Mutex<BTreeSet<String>>,
    pub(super) spec: &'a LabSpec,
    valkey_dr: &'a Path,
    socket: PathBuf,
    engine: ValkeyEngine,
}

impl<'a> Lab<'a> {
    pub(super) fn new(spec: &'a LabSpec, valkey_dr: &'a Path) -> Result<Lab<'a>, ChaosError> {
        Ok(Lab {
            faulted_at: std::sync::Mutex::new(None),
            progress: std::sync::OnceLock::new(),
            excused: std::sync::Mutex::new(Vec::new()),
            cut_places: std::sync::Mutex::new(BTreeSet::new()),
            spec,
            valkey_dr,
            socket: spec.main_config().control_socket(),
            engine: node_engine(spec)?,
        })
    }

    /// Each writer's acknowledged count now.
    pub(super) fn marks(&self) -> Vec<u64> {
        self.progress.get().map_or_else(Vec::new, |p| {
            p.iter()
                .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
                .collect()
        })
    }

    /// Excuses the writes each writer had acknowledged between `from` (its [`Lab::marks`]) and
    /// now, plus the one in flight at either end.
    /// The writers' marks, once every node outside the writer's region holds what the writer had
    /// then (its replication offset read right after the marks): the writes acknowledged before
    /// them are replicated, so a cut may lose only later ones — measured, not assumed from a
    /// sleep (a loaded machine delayed the link by more than the 100 ms once slept here, and
    /// older acknowledged writes were lost). Waits at most [`REPLICATED_WITHIN`].
    pub(super) async fn replicated_marks(&self, writer: (usize, usize)) -> Vec<u64> {
        let from = self.marks();
        let node = |(r, i): (usize, usize)| endpoint(self.spec.node_addr(r, i));
        let Ok(held) = self.engine.replication(&node(writer)).await else {
            return from;
        };
        let outside: Vec<_> = self
            .spec
            .nodes()
            .filter(|(r, _)| *r != writer.0)
            .map(node)
            .collect();
        let until = std::time::Instant::now() + REPLICATED_WITHIN;
        while std::time::Instant::now() < until {
            let caught_up =
                futures::future::join_all(outside.iter().map(|n| self.engine.replication(n)))
                    .await
                    .iter()
                    .all(|info| info.as_ref().is_ok_and(|i| i.offset >= held.offset));
            if caught_up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        from
    }

    pub(super) fn excuse_since(&self, from: &[u64]) {
        let now = self.marks();
        let mut excused = self.excused.lock().expect("excused lock");
        excused.resize(now.len(), Vec::new());
        for (i, (start, end)) in from.iter().zip(&now).enumerate() {
            excused[i].push(*start..end + 1);
        }
    }

    /// Every controller's events since `since_ms`, in time order.
    pub(super) fn events_since(&self, since_ms: u64) -> Vec<Value> {
        let since = valkey_dr_controller::clock::rfc3339(since_ms);
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
    pub(super) async fn leader_site(&self) -> Result<String, ChaosError> {
        let status = self.status().await?;
        status["coordination"]["leader"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| lab_error("no leader"))
    }

    pub(super) fn pidfile(&self, site: Option<&str>) -> PathBuf {
        self.spec.controller_pidfile(site)
    }

    pub(super) async fn status(&self) -> Result<Value, ChaosError> {
        Ok(control::request(&self.socket, &Request::Status, |_| {}).await?)
    }

    pub(super) async fn wait_healthy(&self, limit: Duration) -> Result<Value, ChaosError> {
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

    pub(super) async fn wait_epoch_above(
        &self,
        epoch: u64,
        limit: Duration,
    ) -> Result<Value, ChaosError> {
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

    pub(super) async fn restart_controller(&self, fault: Option<&str>) -> Result<(), ChaosError> {
        let _ = crate::process::kill_recorded(&self.spec.dir.join("controller.pid")).await;
        let mut config = self.spec.controller_config();
        config.controller.catchup_timeout_ms = CATCHUP_TIMEOUT_MS;
        std::fs::write(self.spec.config_path(), config.to_toml()).map_err(lab_error)?;
        let env: Vec<(&str, &str)> = fault.map(|f| ("VALKEY_DR_FAULT", f)).into_iter().collect();
        crate::process::start_controller(self.spec, self.valkey_dr, &env).map_err(lab_error)
    }

    /// One writer outside every region (through the controller's links) and one inside the
    /// writer's region (straight to the nodes). In network namespaces each stands in its place:
    /// the outside one where the controller (or the witness) stands, the inside one in the
    /// writer's region, asking its own site's DNS server in the highly available shape.
    pub(super) fn writers(&self) -> Result<Vec<WriterConfig>, ChaosError> {
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
        let (writer_region, inside_dns) = (&self.spec.regions[0], self.spec.dns);
        let place_ns = |vantage: &str| {
            self.spec
                .netns
                .then(|| crate::netns::vantage_ns(self.spec, vantage))
        };
        Ok(vec![
            WriterConfig {
                prefix: "chaos:outside".into(),
                list: true,
                via,
                netns: place_ns(crate::spec::CONTROLLER_VANTAGE),
                ..base.clone()
            },
            WriterConfig {
                prefix: "chaos:inside".into(),
                list: true,
                netns: place_ns(writer_region),
                dns: if self.spec.netns && self.spec.is_ha() {
                    self.spec.site_dns(writer_region)
                } else {
                    inside_dns
                },
                ..base
            },
        ])
    }

    /// The lab coordinates of the node `name` (`ip:port`).
    pub(super) fn node(&self, name: &str) -> Option<(usize, usize)> {
        self.spec
            .nodes()
            .find(|(r, i)| self.spec.node_addr(*r, *i).to_string() == name)
    }

    pub(super) async fn writer(&self) -> Result<((usize, usize), u64), ChaosError> {
        let s = self.status().await?;
        let node = s["primary"]
            .as_str()
            .and_then(|p| self.node(p))
            .ok_or_else(|| lab_error("no writer"))?;
        Ok((node, s["epoch"].as_u64().unwrap_or(0)))
    }

    pub(super) async fn kill(&self, (r, i): (usize, usize)) -> Result<(), ChaosError> {
        crate::process::kill_recorded(&self.spec.node_pidfile(r, i))
            .await
            .map_err(lab_error)
    }

    /// Restarts a node empty (its data directory cleared), as every fault here means it.
    pub(super) async fn restart(&self, (r, i): (usize, usize)) -> Result<(), ChaosError> {
        crate::process::restart_node(self.spec, r, i, true)
            .await
            .map_err(lab_error)
    }

    pub(super) fn other_region(&self, node: (usize, usize)) -> String {
        self.spec.regions[(node.0 + 1) % self.spec.regions.len()].clone()
    }

    pub(super) async fn promote(&self, region: String) -> Result<Value, ChaosError> {
        let request = Request::Promote {
            region,
            method: PromoteMethod::Safe,
        };
        Ok(control::request(&self.socket, &request, |_| {}).await?)
    }

    pub(super) fn controller_pid(&self) -> Option<i32> {
        read_pid(&self.pidfile(None))
    }

    pub(super) async fn inject(
        &self,
        fault: &Fault,
        state_at_start: &str,
    ) -> Result<(), ChaosError> {
        let (writer, epoch) = self.writer().await?;
        match fault {
            Fault::KillWriter { restart_after_ms } => {
                self.kill(writer).await?;
                tokio::time::sleep(Duration::from_millis(*restart_after_ms)).await;
                self.restart(writer).await?;
            }
            Fault::WriterRestartedEmptyAsMaster => {
                self.kill(writer).await?;
                crate::process::drop_replicaof(self.spec, writer.0, writer.1).map_err(lab_error)?;
                self.restart(writer).await?;
            }
            Fault::PromotedWriterRestartedAtOnce => {
                self.kill(writer).await?;
                self.wait_epoch_above(epoch, Duration::from_secs(10))
                    .await?;
                self.restart(writer).await?;
                self.wait_healthy(Duration::from_secs(15)).await?;
                let _ = control::request(&self.socket, &Request::Ack, |_| {}).await;
                let (promoted, _) = self.writer().await?;
                self.kill(promoted).await?;
                self.restart(promoted).await?;
            }
            Fault::IsolateWriterRegion { for_ms } => {
                // Only the writes whose replication was in flight when the cut took hold are
                // excused here; the inside writer's after it are the verdict's (its fence).
                let from = self.replicated_marks(writer).await;
                let region = self.spec.regions[writer.0].clone();
                self.cut_for_excusing([Cut::Isolate(region)].into(), *for_ms, Some(&from))
                    .await?;
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
            Fault::IsolateLeaderSite { for_ms, leads_raft } => {
                let leader = self.leader_site().await?;
                if *leads_raft {
                    let tls = self.spec.etcd_tls().map_err(lab_error)?;
                    valkey_dr_coord::cluster::move_leader_to(
                        &self.spec.etcd_member_endpoints(),
                        tls.as_ref(),
                        &leader,
                    )
                    .await
                    .map_err(lab_error)?;
                }
                self.partition_for(self.spec.vantage(&leader), *for_ms)
                    .await?;
            }
            Fault::WitnessCutWhileWriterKilled {
                for_ms,
                kill_after_ms,
            } => {
                // etcd's raft leadership away from the witness first (the lab gives it there):
                // the row is about the cut site's DNS, not the election its cut would cost every
                // site (the raft-leader rows measure that).
                let tls = self.spec.etcd_tls().map_err(lab_error)?;
                valkey_dr_coord::cluster::move_leader_to(
                    &self.spec.etcd_member_endpoints(),
                    tls.as_ref(),
                    &self.other_region(writer),
                )
                .await
                .map_err(lab_error)?;
                let witness = [Cut::Isolate(crate::spec::CONTROLLER_VANTAGE.into())];
                let kill = async {
                    tokio::time::sleep(Duration::from_millis(*kill_after_ms)).await;
                    self.kill(writer).await
                };
                let (cut, killed) = tokio::join!(self.cut_for(witness.into(), *for_ms), kill);
                cut.and(killed)?;
                self.restart(writer).await?;
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
            Fault::EtcdLeaderKilled { down_ms } => {
                let members = self.spec.etcd_members();
                let endpoints = self.spec.etcd_member_endpoints();
                let tls = self.spec.etcd_tls().map_err(lab_error)?;
                let leader = valkey_dr_coord::cluster::raft_leader(&endpoints, tls.as_ref())
                    .await
                    .map_err(lab_error)?;
                let i = members
                    .iter()
                    .position(|m| m.name == leader)
                    .ok_or_else(|| lab_error(format!("no etcd member {leader}")))?;
                let pid = read_pid(&self.spec.etcd_pidfile(&self.spec.sites[i]))
                    .ok_or_else(|| lab_error("no etcd pid file"))?;
                signal(pid, libc::SIGKILL);
                tokio::time::sleep(Duration::from_millis(*down_ms)).await;
                crate::process::start_etcd_member(self.spec, i).map_err(lab_error)?;
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
            Fault::WriterStall { for_ms } => {
                let pid = read_pid(&self.spec.node_pidfile(writer.0, writer.1))
                    .ok_or_else(|| lab_error("no writer pid file"))?;
                signal(pid, libc::SIGSTOP);
                tokio::time::sleep(Duration::from_millis(*for_ms)).await;
                signal(pid, libc::SIGCONT);
            }
            Fault::ReplicaRestartedThenWriterKilled => {
                let replica = (writer.0, 1 - writer.1);
                self.kill(replica).await?;
                self.restart(replica).await?;
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
                // Healed means replicated again: until the healed region's full resync is
                // over (Valkey's diskless delay, 5 s, plus the transfer), the new history lives
                // in one region only, and a double failure there loses it whatever any
                // controller does (seen on real packet cuts, where the transfer took longer).
                tokio::time::sleep(Duration::from_secs(6)).await;
                self.wait_healthy(Duration::from_secs(15)).await?;
                let (promoted, _) = self.writer().await?;
                self.kill(promoted).await?;
                if *as_master {
                    crate::process::drop_replicaof(self.spec, promoted.0, promoted.1)
                        .map_err(lab_error)?;
                }
                tokio::time::sleep(Duration::from_millis(*restart_after_ms)).await;
                self.restart(promoted).await?;
                tokio::time::sleep(Duration::from_secs(5)).await;
                let (current, _) = self.writer().await?;
                self.kill(current).await?;
                self.restart(current).await?;
            }
            Fault::RegionControllerDownAndCut {
                cut_first,
                gap_ms,
                for_ms,
                restart_inside,
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
                let from = self.replicated_marks(writer).await;
                *self.faulted_at.lock().expect("fault time lock") =
                    Some(valkey_dr_controller::clock::now_ms());
                self.cut(&[Cut::Isolate(region.clone())].into()).await?;
                let mut cut_for = Duration::from_millis(*for_ms);
                if *cut_first {
                    tokio::time::sleep(gap).await;
                    crate::process::kill_recorded(&controller)
                        .await
                        .map_err(lab_error)?;
                    cut_for = cut_for.saturating_sub(gap);
                }
                if *restart_inside {
                    // Its supervisor restarts it inside the cut: it cannot reach etcd.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    crate::process::start_site_controller(self.spec, self.valkey_dr, &region, &[])
                        .map_err(lab_error)?;
                    cut_for = cut_for.saturating_sub(Duration::from_millis(500));
                }
                tokio::time::sleep(cut_for).await;
                crate::link::set_partition(&self.spec.dir, &Default::default())
                    .await
                    .map_err(lab_error)?;
                self.excuse_since(&from);
            }
            Fault::RemoteHeadKilled { restart_after_ms } => {
                let head = ((writer.0 + 1) % self.spec.regions.len(), 0);
                self.kill(head).await?;
                tokio::time::sleep(Duration::from_millis(*restart_after_ms)).await;
                self.restart(head).await?;
            }
            Fault::WriterDiskFails => self.fail_snapshots(writer).await?,
            Fault::RegionLinkCut { for_ms } => {
                self.partition_for(crate::link::LINK.to_string(), *for_ms)
                    .await?;
            }
            Fault::SwitchoverThenCut { gap_ms, for_ms } => {
                let region = self.other_region(writer);
                self.promote(region.clone()).await?;
                tokio::time::sleep(Duration::from_millis(*gap_ms)).await;
                self.cut_excused(region, *for_ms).await?;
            }
            Fault::WriterRegionUnheard { for_ms } => {
                let region = self.spec.regions[writer.0].clone();
                let entries = self
                    .other_places(&region)
                    .map(|to| Cut::OneWay {
                        from: region.clone(),
                        to,
                    })
                    .collect();
                self.cut_excused_all(entries, *for_ms).await?;
            }
            Fault::WriterSiteEtcdPeersCut { for_ms } => {
                let region = self.spec.regions[writer.0].clone();
                self.cut_for([Cut::EtcdPeers(region)].into(), *for_ms)
                    .await?;
            }
            Fault::WriterRegionLossy { percent, for_ms } => {
                let place = self.spec.regions[writer.0].clone();
                let entries = [Cut::Loss {
                    place,
                    percent: *percent,
                }];
                self.cut_excused_all(entries.into(), *for_ms).await?;
            }
            Fault::LeaderCutFromWriterNode { for_ms } => {
                let leader = self.spec.vantage(&self.leader_site().await?);
                let node = self.spec.node_ip(writer.0, writer.1);
                self.cut_for(
                    [Cut::NodeLink {
                        node,
                        place: leader,
                    }]
                    .into(),
                    *for_ms,
                )
                .await?;
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

    pub(super) async fn config_set(
        &self,
        node: &Endpoint,
        key: &str,
        value: &str,
    ) -> Result<(), ChaosError> {
        self.command(node, redis::cmd("CONFIG").arg("SET").arg(key).arg(value))
            .await
    }

    /// Runs one command on a node over a connection of its own.
    async fn command(&self, node: &Endpoint, cmd: &redis::Cmd) -> Result<(), ChaosError> {
        let security = self.spec.security().map_err(lab_error)?;
        let mut conn = valkey_dr_valkey::connect(node, &security, timeouts())
            .await
            .map_err(lab_error)?;
        cmd.query_async::<redis::Value>(&mut conn)
            .await
            .map(|_| ())
            .map_err(lab_error)
    }

    /// Makes a node's snapshot fail the way a failed disk does, and only that: `save` configured,
    /// a snapshot started slow enough to be caught, and its process killed. With
    /// `stop-writes-on-bgsave-error` (Valkey's default) the node then answers every write with
    /// `-MISCONF` until a snapshot succeeds, while it stays up, keeps its data and replicates.
    async fn fail_snapshots(&self, (r, i): (usize, usize)) -> Result<(), ChaosError> {
        let node = endpoint(self.spec.node_addr(r, i));
        let pid = read_pid(&self.spec.node_pidfile(r, i))
            .ok_or_else(|| lab_error("the writer has no pid file"))?;
        self.config_set(&node, "save", "3600 1").await?;
        self.config_set(&node, "rdb-key-save-delay", "10000000")
            .await?;
        self.command(&node, &redis::cmd("BGSAVE")).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let children = children_of(pid);
        if children.is_empty() {
            return Err(lab_error("no snapshot process to kill"));
        }
        for child in children {
            signal(child, libc::SIGKILL);
        }
        // Later forks (a diskless sync to a replica) must not crawl.
        self.config_set(&node, "rdb-key-save-delay", "0").await
    }

    /// Undoes every fault: the partition lifted, every node and the controller running.
    pub(super) async fn heal(&self) -> Result<(), ChaosError> {
        crate::link::set_partition(&self.spec.dir, &Default::default())
            .await
            .map_err(lab_error)?;
        // A node that lives is resumed, never started again: a second server on its config
        // would clear its data and take its pid file, and leave it running unrecorded.
        for (r, i) in self.spec.nodes() {
            match read_pid(&self.spec.node_pidfile(r, i)) {
                Some(pid) if crate::process::is_alive(pid) => signal(pid, libc::SIGCONT),
                _ => {
                    let _ = self.restart((r, i)).await;
                }
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

/// The processes whose parent is `pid` (from `/proc/<pid>/stat`).
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    // "pid (comm) state ppid …": the comm may hold spaces and parentheses.
                    let after = &stat[stat.rfind(')')? + 1..];
                    after.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}
