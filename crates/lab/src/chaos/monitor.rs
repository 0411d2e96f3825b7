//! The monitor: samples every node directly (not through the links a partition cuts) and every
//! site's answer for the name, every 50 ms.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use valkey_dr_core::{Endpoint, Engine};
use valkey_dr_dns::resolve::StubResolver;

use super::{ChaosError, endpoint, lab_error, node_engine, read_pid, timeouts};
use crate::LabSpec;

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

/// Time spent in one bad condition, and how many separate times it began.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Spell {
    pub(super) total_ms: u64,
    pub(super) intervals: u64,
    pub(super) active: bool,
    /// The longest single interval, and the one running now.
    pub(super) longest_ms: u64,
    pub(super) current_ms: u64,
}

impl Spell {
    pub(super) fn sample(&mut self, bad: bool, step: Duration) {
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
            .arg(valkey_dr_controller::clock::now_ms())
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
pub(super) struct Seen {
    pub(super) two_masters: Spell,
    /// Two or more masters that each took the monitor's write.
    pub(super) two_writable_masters: Spell,
    /// The name led to a node that is not a master (dead, or a replica).
    pub(super) name_off_writer: Spell,
    pub(super) name_on_replica: Spell,
    /// Some running controller's DNS server gave no address for the name.
    pub(super) name_unresolved: Spell,
    /// Two sites' DNS servers gave different addresses for the name: one answers from a copy
    /// that missed a move.
    pub(super) sites_disagree: Spell,
    /// The most times one site's answer for the name changed.
    pub(super) name_changes: u64,
    /// Per site: its last answer and how often it changed.
    pub(super) site_changes: Vec<(Option<std::net::IpAddr>, u64)>,
    /// The masters, and whether the name led to one, in the last sample in which every node's
    /// role read was answered (or refused: a dead node is an answer).
    pub(super) last_masters: usize,
    pub(super) last_name_on_master: bool,
}

/// Samples every node directly (not through the links a partition cuts) and the name.
pub(super) struct Monitor {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Seen>,
}

impl Monitor {
    pub(super) fn start(spec: &LabSpec) -> Result<Monitor, ChaosError> {
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
                let mut given = answers.iter().filter_map(|(_, t)| *t);
                let first = given.next();
                let disagree = given.any(|t| Some(t) != first);
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
                seen.sites_disagree.sample(disagree, elapsed);
                // The state at the end is the last sample in which no node went unanswered: a
                // read that timed out (a slow machine, a stalled node) says nothing about roles,
                // and one such sample at the end once judged a healthy lab "not one writer".
                let unanswered = roles.iter().any(|r| {
                    r.as_ref().is_err_and(|e| {
                        e.kind == valkey_dr_core::observation::FailureKind::Unreachable
                    })
                });
                if !unanswered {
                    seen.last_masters = masters.len();
                    seen.last_name_on_master = target.is_some_and(|t| masters.contains(&t));
                }
                tokio::select! {
                    _ = tokio::time::sleep(step) => {}
                    _ = stopped.changed() => {}
                }
            }
            seen
        });
        Ok(Monitor { stop, task })
    }

    pub(super) async fn stop(self) -> Seen {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}
