//! Unplanned failover: failure detection with hysteresis, promotion of the best replica without
//! the old writer's cooperation, fencing of rogue masters, and the anti-flapping block.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use valkey_dr_core::analysis::{Finding, analyze};
use valkey_dr_core::failover::{self, Decision, Policy};
use valkey_dr_core::{EpochRecord, NodeId, NodeObservation};

use crate::Controller;

/// When each failing node started failing. A node is *down* only after failing every probe for
/// `down_after`; one good probe clears it (hysteresis against blips).
#[derive(Default)]
pub struct Health {
    failing_since: HashMap<NodeId, Instant>,
    reported_down: BTreeSet<NodeId>,
}

impl Health {
    /// Records one round of probes sent at `probed_at`; returns the nodes that are down at `now`.
    pub fn update(
        &mut self,
        observations: &[NodeObservation],
        probed_at: Instant,
        now: Instant,
        down_after: Duration,
    ) -> BTreeSet<NodeId> {
        for o in observations {
            // A node that refuses us (wrong password, certificate) is alive: never "down".
            if o.failure() == Some(valkey_dr_core::observation::FailureKind::Unreachable) {
                self.failing_since.entry(o.node).or_insert(probed_at);
            } else {
                self.failing_since.remove(&o.node);
                self.reported_down.remove(&o.node);
            }
        }
        self.failing_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= down_after)
            .map(|(n, _)| *n)
            .collect()
    }

    /// A failed probe outside a pass (the writer watch): failing since the probe was sent.
    pub fn note_failure(&mut self, node: NodeId, probed_at: Instant) {
        self.failing_since.entry(node).or_insert(probed_at);
    }

    pub fn any_failing(&self) -> bool {
        !self.failing_since.is_empty()
    }

    pub fn failing_for(&self, node: NodeId, now: Instant) -> Option<Duration> {
        self.failing_since
            .get(&node)
            .map(|since| now.duration_since(*since))
    }

    /// True the first time a node is seen down (to report it once).
    fn newly_down(&mut self, node: NodeId) -> bool {
        self.reported_down.insert(node)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverReport {
    pub kind: String,
    pub from_primary: String,
    pub new_primary: String,
    pub new_primary_region: String,
    pub epoch: u64,
    /// Time the old writer had been failing when the failover started.
    pub detection_ms: Option<u64>,
    /// Replication offset the old writer was last seen at, minus the new writer's: writes that may
    /// be lost because the old writer could not be paused.
    pub data_at_risk_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error("no epoch recorded yet: the controller has not adopted a writer")]
    NoEpoch,
    #[error("unknown region \"{0}\"")]
    UnknownRegion(String),
    #[error(
        "the writer {0} is reachable and takes writes; use `valkey-dr promote` for a loss-free switchover"
    )]
    WriterReachable(String),
    #[error("no replica in {0} can take over (reachable, in sync, holding data)")]
    NoCandidate(String),
    #[error("a forced failover may lose writes; repeat with --force to confirm")]
    NotForced,
    #[error("cannot record the new epoch: {0}")]
    State(String),
    #[error("{region} has {masters} nodes reporting role:master; adopt needs exactly one")]
    AdoptNeedsOneMaster { region: String, masters: usize },
}

impl Controller {
    fn policy(&self) -> Policy {
        let blocked = self
            .memory
            .lock()
            .expect("memory lock")
            .failovers_blocked_until_ms
            .is_some_and(|until| crate::events::now_ms() < until);
        Policy {
            in_region: self.config.controller.in_region_failover,
            cross_region: self.config.controller.cross_region_failover,
            blocked,
        }
    }

    /// Updates failure detection and, when a failover is due, carries it out. Returns the epoch in
    /// force afterwards and whether anything changed on the nodes.
    pub(crate) async fn detect_and_fail_over(
        &self,
        observations: &[NodeObservation],
        epoch: Option<EpochRecord>,
        probed_at: Instant,
    ) -> (Option<EpochRecord>, bool) {
        let now = Instant::now();
        let down_after = Duration::from_millis(self.config.controller.down_after_ms);
        let down = {
            let mut health = self.health.lock().expect("health lock");
            let down = health.update(observations, probed_at, now, down_after);
            for node in &down {
                if health.newly_down(*node) {
                    self.events.emit(
                        "node_down",
                        json!({ "node": self.topology.node_name(*node), "failing_ms": health.failing_for(*node, now).map(|d| d.as_millis() as u64) }),
                    );
                }
            }
            down
        };
        let Some(epoch) = epoch else {
            return (None, false);
        };
        let mut down = down;
        if let Some(writer) = self.restarted_empty(observations, &epoch) {
            down.insert(writer);
        }
        let decision =
            failover::decide(&self.topology, observations, &epoch, &down, &self.policy());
        self.note_decision(&decision);
        let (target, kind) = match decision {
            Decision::InRegion { target } => (target, "in_region"),
            Decision::CrossRegion { target } => (target, "cross_region"),
            _ => return (Some(epoch), false),
        };
        let detection = self
            .health
            .lock()
            .expect("health lock")
            .failing_for(epoch.primary, now);
        // The anti-flapping block goes to state.json in the same write as the new epoch.
        let until = crate::events::now_ms() + self.config.controller.failover_block_ms;
        let previous_block = self
            .memory
            .lock()
            .expect("memory lock")
            .failovers_blocked_until_ms
            .replace(until);
        match self
            .fail_over(epoch, target, kind, observations, detection)
            .await
        {
            Ok((new_epoch, _)) => (Some(new_epoch), true),
            Err(_) => {
                self.memory
                    .lock()
                    .expect("memory lock")
                    .failovers_blocked_until_ms = previous_block;
                (Some(epoch), false)
            }
        }
    }

    /// The writer, if it came back without its data since the last pass
    /// ([`valkey_dr_core::observation::ReplicationInfo::lost_history_since`]). It counts as down
    /// at once: waiting for `down_after` would let its replicas full-sync from it and lose their
    /// copy too.
    fn restarted_empty(
        &self,
        observations: &[NodeObservation],
        epoch: &EpochRecord,
    ) -> Option<NodeId> {
        let memory = self.memory.lock().expect("memory lock");
        let (node, before) = memory.last_writer.as_ref()?;
        let now = observations
            .iter()
            .find(|o| o.node == *node && *node == epoch.primary)?
            .info()?;
        if !now.lost_history_since(before) {
            return None;
        }
        self.events.emit(
            "writer_restarted_empty",
            json!({
                "node": self.topology.node_name(*node),
                "replication_id_before": before.replication_id,
                "offset_before": before.offset,
                "replication_id": now.replication_id,
                "offset": now.offset,
            }),
        );
        Some(*node)
    }

    fn note_decision(&self, decision: &Decision) {
        let text = match decision {
            Decision::None => String::new(),
            Decision::WaitForOperator { region, suggested } => format!(
                "region {} is down and cross-region failover is manual; run `valkey-dr failover {} --force` (writes the old writer took after the last replication may be lost)",
                self.topology.region(*region).name,
                suggested
                    .map(|n| self.topology.region_of(n).name.clone())
                    .unwrap_or_else(|| "<region>".into())
            ),
            Decision::Blocked { would } => format!(
                "a failover is due ({would:?}) but blocked after an earlier one; run `valkey-dr ack` to allow it"
            ),
            Decision::NoCandidate => "the writer is down and no replica can take over".into(),
            Decision::InRegion { .. } | Decision::CrossRegion { .. } => String::new(),
        };
        let mut memory = self.memory.lock().expect("memory lock");
        if memory.decision != text {
            if !text.is_empty() {
                self.events
                    .emit("failover_needed", json!({ "situation": text }));
            }
            memory.decision = text;
        }
    }

    /// Promotes `target` in a new epoch. The epoch is recorded before the promotion so that a
    /// restarted controller fences the old writer, never the new one.
    pub(crate) async fn fail_over(
        &self,
        old: EpochRecord,
        target: NodeId,
        kind: &str,
        observations: &[NodeObservation],
        detection: Option<Duration>,
    ) -> Result<(EpochRecord, FailoverReport), FailoverError> {
        let target_offset = observations
            .iter()
            .find(|o| o.node == target)
            .and_then(|o| o.info())
            .map(|i| i.offset)
            .unwrap_or(0);
        let last_writer_offset = self
            .memory
            .lock()
            .expect("memory lock")
            .last_writer
            .as_ref()
            .map_or(0, |(_, history)| history.offset);
        let new_epoch = EpochRecord {
            epoch: old.epoch + 1,
            primary: target,
        };
        let report = FailoverReport {
            kind: kind.to_string(),
            from_primary: self.topology.node_name(old.primary),
            new_primary: self.topology.node_name(target),
            new_primary_region: self.topology.region_of(target).name.clone(),
            epoch: new_epoch.epoch,
            detection_ms: detection.map(|d| d.as_millis() as u64),
            data_at_risk_bytes: last_writer_offset.saturating_sub(target_offset),
        };
        if let Err(e) = self.set_epoch(new_epoch) {
            self.events
                .emit("state_write_failed", json!({ "error": e.to_string() }));
            return Err(FailoverError::State(e.to_string()));
        }
        self.events.emit("failover_started", &report);
        let result = self
            .engine
            .promote(&self.topology.node(target).control_endpoint)
            .await;
        self.events.emit(
            "failover_promoted",
            json!({ "node": report.new_primary, "epoch": new_epoch.epoch, "error": result.err().map(|e| e.to_string()) }),
        );
        Ok((new_epoch, report))
    }

    /// `valkey-dr failover <region> --force`: promote the best replica of `region` although the
    /// writer cannot be paused. Refused while the writer is reachable.
    pub async fn forced_failover(
        &self,
        region: &str,
        force: bool,
    ) -> Result<FailoverReport, FailoverError> {
        let _guard = self.topology_lock.lock().await;
        let region_id = self
            .topology
            .region_by_name(region)
            .ok_or_else(|| FailoverError::UnknownRegion(region.to_string()))?;
        let epoch = self.epoch().ok_or(FailoverError::NoEpoch)?;
        let observations = self.observe_all().await;
        let analysis = analyze(&self.topology, &observations, Some(&epoch));
        if analysis.active_primary.is_some() {
            return Err(FailoverError::WriterReachable(
                self.topology.node_name(epoch.primary),
            ));
        }
        if !force {
            return Err(FailoverError::NotForced);
        }
        let unreachable: BTreeSet<NodeId> = observations
            .iter()
            .filter(|o| o.state.is_err())
            .map(|o| o.node)
            .collect();
        let target = *failover::candidates(&self.topology, &observations, &unreachable, |r| {
            r == region_id
        })
        .first()
        .ok_or_else(|| FailoverError::NoCandidate(region.to_string()))?;
        let detection = self
            .health
            .lock()
            .expect("health lock")
            .failing_for(epoch.primary, Instant::now());
        let (_, report) = self
            .fail_over(epoch, target, "forced", &observations, detection)
            .await?;
        // Repoint the others and switch DNS now rather than on the next tick.
        let _ = self.reconcile_locked().await;
        Ok(report)
    }

    /// `valkey-dr adopt <region>`: the operator's decision after a split brain (or any situation
    /// without a trustworthy epoch): the master of `region` becomes the writer of a new epoch; the
    /// next pass fences every other master.
    pub async fn adopt(&self, region: &str) -> Result<EpochRecord, FailoverError> {
        let _guard = self.topology_lock.lock().await;
        let region_id = self
            .topology
            .region_by_name(region)
            .ok_or_else(|| FailoverError::UnknownRegion(region.to_string()))?;
        let observations = self.observe_all().await;
        let masters: Vec<NodeId> = observations
            .iter()
            .filter(|o| {
                self.topology.node(o.node).region == region_id
                    && o.info().is_some_and(|i| i.is_primary())
            })
            .map(|o| o.node)
            .collect();
        let [writer] = masters[..] else {
            return Err(FailoverError::AdoptNeedsOneMaster {
                region: region.to_string(),
                masters: masters.len(),
            });
        };
        let published = self
            .dns
            .records(std::slice::from_ref(&self.names.ownership))
            .await
            .unwrap_or_default()
            .iter()
            .flat_map(|r| r.values.iter())
            .filter_map(|v| valkey_dr_core::Ownership::parse(v))
            .map(|o| o.epoch)
            .max()
            .unwrap_or(0);
        let epoch = EpochRecord {
            epoch: self.epoch().map_or(0, |e| e.epoch).max(published) + 1,
            primary: writer,
        };
        self.set_epoch(epoch)
            .map_err(|e| FailoverError::State(e.to_string()))?;
        self.events.emit(
            "adopted",
            json!({ "region": region, "primary": self.topology.node_name(writer), "epoch": epoch.epoch }),
        );
        let _ = self.reconcile_locked().await;
        Ok(epoch)
    }

    /// `valkey-dr ack`: allow automatic failovers again.
    pub fn ack(&self) -> bool {
        let was_blocked = self
            .memory
            .lock()
            .expect("memory lock")
            .failovers_blocked_until_ms
            .take()
            .is_some_and(|until| crate::events::now_ms() < until);
        if let Some(epoch) = self.epoch()
            && let Err(e) = self.store_state(epoch)
        {
            self.events
                .emit("state_write_failed", json!({ "error": e.to_string() }));
        }
        self.events.emit(
            "failover_block_cleared",
            json!({ "was_blocked": was_blocked }),
        );
        was_blocked
    }

    /// Acts on what the epoch says, before DNS: completes an interrupted promotion (the epoch's
    /// writer reachable but still a replica) and fences rogue masters (demote, close clients).
    /// Returns true when it changed a node.
    pub(crate) async fn enforce_epoch(
        &self,
        observations: &[NodeObservation],
        epoch: EpochRecord,
    ) -> bool {
        let analysis = analyze(&self.topology, observations, Some(&epoch));
        let writer = epoch.primary;
        let writer_is_replica = observations
            .iter()
            .find(|o| o.node == writer)
            .and_then(|o| o.info())
            .is_some_and(|i| !i.is_primary());
        if writer_is_replica {
            let result = self
                .engine
                .promote(&self.topology.node(writer).control_endpoint)
                .await;
            self.events.emit(
                "promotion_completed",
                json!({
                    "node": self.topology.node_name(writer),
                    "epoch": epoch.epoch,
                    "reason": "the epoch's writer was still a replica (an interrupted promotion)",
                    "error": result.err().map(|e| e.to_string()),
                }),
            );
            return true;
        }
        if analysis.active_primary.is_none() {
            return false;
        }
        let mut changed = false;
        for finding in &analysis.findings {
            let Finding::RogueMaster { node } = finding else {
                continue;
            };
            let Some((_, source)) = analysis.sources.iter().find(|(n, _)| n == node) else {
                continue;
            };
            let endpoint = &self.topology.node(*node).control_endpoint;
            let follow = self.topology.replication_endpoint(*source, *node);
            let demoted = self.engine.replicate_from(endpoint, &follow).await;
            let closed = self.engine.kill_normal_clients(endpoint).await;
            self.events.emit(
                "fenced",
                json!({
                    "node": self.topology.node_name(*node),
                    "now_follows": follow.to_string(),
                    "epoch": epoch.epoch,
                    "clients_closed": closed.as_ref().ok(),
                    "error": demoted.err().map(|e| e.to_string()),
                }),
            );
            changed = true;
        }
        changed
    }
}
