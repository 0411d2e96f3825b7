//! Unplanned failover: failure detection with hysteresis, promotion of the best replica without
//! the old writer's cooperation, fencing of rogue masters, and the anti-flapping block.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use valkey_dr_core::observation::info_of;

use serde::{Deserialize, Serialize};
use serde_json::json;
use valkey_dr_core::analysis::analyze;
use valkey_dr_core::failover::{self, Decision, WaitReason, WriterState};
use valkey_dr_core::observation::History;
use valkey_dr_core::self_fence::WriteQuorum;
use valkey_dr_core::{EpochRecord, NodeId, NodeObservation};

use crate::Controller;
use crate::pass::plan::FailoverKind;
use crate::pass::{Carried, Reported};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverReport {
    pub kind: FailoverKind,
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
    #[error("the promotion failed and was not carried out: {0}")]
    Promote(String),
    #[error("{region} has {masters} nodes reporting role:master; adopt needs exactly one")]
    AdoptNeedsOneMaster { region: String, masters: usize },
    /// The published epoch cannot be read: an adopted epoch must exceed it.
    #[error("cannot read the published epoch, nothing adopted: {0}")]
    Dns(String),
}

/// How a demotion went: the node follows the new writer, or it could not be demoted and stays
/// fenced (writes paused, clients closed) until a later pass demotes it.
#[derive(Debug, Clone, Serialize)]
pub struct Demotion {
    pub node: String,
    pub now_follows: String,
    pub demoted: bool,
    /// `CONFIG REWRITE` failed (no config file?): a restart brings back the old role.
    pub role_persisted: bool,
    pub clients_closed: Option<u64>,
    pub error: Option<String>,
}

impl Controller {
    /// The writer's replication history as last seen: this run's memory, else `state.json`.
    pub(crate) fn lineage(&self, carried: &Carried, epoch: &EpochRecord) -> Option<History> {
        crate::pass::plan::lineage(
            carried.last_writer.as_ref(),
            self.state.get().as_ref(),
            epoch,
        )
    }

    /// Makes `node` a replica of `source` for good: `REPLICAOF`, `CONFIG REWRITE` so a restart
    /// keeps the role, and its normal and pub/sub clients closed so they leave for the writer.
    /// When `REPLICAOF` fails the node stays fenced: writes paused and clients closed.
    pub(crate) async fn demote(
        &self,
        node: NodeId,
        source: NodeId,
        close_clients: bool,
    ) -> Demotion {
        let mut demotion = self.demote_in_memory(node, source, close_clients).await;
        if demotion.demoted {
            let endpoint = &self.topology.node(node).control_endpoint;
            demotion.role_persisted = self.engine.persist_role(endpoint).await.is_ok();
        }
        demotion
    }

    /// [`Controller::demote`] without rewriting the node's config file (`role_persisted` false):
    /// for the switchover, which persists it after its write pause.
    pub(crate) async fn demote_in_memory(
        &self,
        node: NodeId,
        source: NodeId,
        close_clients: bool,
    ) -> Demotion {
        let endpoint = &self.topology.node(node).control_endpoint;
        let follow = self.topology.replication_endpoint(source, node);
        let demoted = self.engine.replicate_from(endpoint, &follow).await;
        if demoted.is_err() {
            let hold = Duration::from_millis(self.config.controller.catchup_timeout_ms)
                + Duration::from_secs(10);
            let _ = self.engine.pause_writes(endpoint, hold).await;
        }
        // A node left fenced loses its clients in any case: they must not wait on it.
        let closed = if close_clients || demoted.is_err() {
            self.engine.kill_clients(endpoint).await.ok()
        } else {
            None
        };
        Demotion {
            node: self.topology.node_name(node),
            now_follows: follow.to_string(),
            demoted: demoted.is_ok(),
            role_persisted: false,
            clients_closed: closed,
            error: demoted.err().map(|e| e.to_string()),
        }
    }

    /// One `fenced` event: the demotion's outcome and the epoch it enforces.
    pub(crate) fn report_fenced(&self, demotion: &Demotion, epoch: u64) {
        let mut detail = serde_json::to_value(demotion).unwrap_or_default();
        detail["epoch"] = json!(epoch);
        self.events.emit(crate::events::EventKind::Fenced, &detail);
    }

    /// Reports a failover held back by the sites' views (once per reason).
    pub(crate) fn note_withheld(&self, reported: &mut Reported, reason: String) {
        if reported.withheld != reason {
            self.events.emit(
                crate::events::EventKind::FailoverWithheld,
                json!({ "situation": reason }),
            );
            reported.withheld = reason;
        }
    }

    pub(crate) fn note_decision(&self, carried: &mut Carried, decision: &Decision) {
        let text = match decision {
            Decision::None => String::new(),
            Decision::WaitForOperator {
                reason: WaitReason::CrossRegionManual { region },
                suggested,
            } => format!(
                "the writer of region {} is down and cross-region failover is manual; run `valkey-dr failover {} --force` (writes the old writer took after the last replication may be lost)",
                self.topology.region(*region).name,
                suggested
                    .map(|n| self.topology.region_of(n).name.clone())
                    .unwrap_or_else(|| "<region>".into())
            ),
            Decision::WaitForOperator {
                reason: WaitReason::DataAtRisk { bytes },
                suggested,
            } => format!(
                "the writer is down and the best candidate ({}) is {bytes} bytes behind it, more than controller.max_data_at_risk_bytes; run `valkey-dr failover {} --force` to accept the loss",
                suggested
                    .map(|n| self.topology.node_name(n))
                    .unwrap_or_default(),
                suggested
                    .map(|n| self.topology.region_of(n).name.clone())
                    .unwrap_or_else(|| "<region>".into())
            ),
            Decision::Blocked { would } => format!(
                "a failover is due ({would:?}) but blocked after an earlier one; run `valkey-dr ack` to allow it"
            ),
            Decision::WaitForOperator {
                reason: WaitReason::InRegionOff { region },
                suggested,
            } => format!(
                "the writer of region {} is down and in-region failover is off; run `valkey-dr failover {} --force`",
                self.topology.region(*region).name,
                suggested
                    .map(|n| self.topology.region_of(n).name.clone())
                    .unwrap_or_else(|| "<region>".into())
            ),
            Decision::NoCandidate => {
                "the writer is down or lost and no replica on its history can take over now (waiting for every node to answer)".into()
            }
            Decision::HistoryLost => {
                "the writer came back without its data and no node holds its history".into()
            }
            Decision::WriterSeenAlive { witness } => format!(
                "the writer does not answer the controller, but {} still replicates from it over a live link: no failover from a one-sided view",
                self.topology.node_name(*witness)
            ),
            Decision::InRegion { .. } | Decision::CrossRegion { .. } => String::new(),
        };
        // A one-sided view is no call for an operator: it is reported as what it is.
        let event = match decision {
            Decision::WriterSeenAlive { .. } => crate::events::EventKind::FailoverWithheld,
            _ => crate::events::EventKind::FailoverNeeded,
        };
        if *decision == Decision::None {
            // Nothing is due: no reason to withhold anything either.
            carried.reported.withheld.clear();
            carried.region_release_since = None;
        }
        if carried.reported.decision != text {
            if !text.is_empty() {
                self.events.emit(event, json!({ "situation": text }));
            }
            carried.reported.decision = text;
        }
    }

    /// Promotes `target` in a new epoch. The intent is recorded first, so a controller restarted
    /// midway resumes or rolls back ([`valkey_dr_core::intent`]); an old writer that still answers
    /// (back empty, or a replica) is fenced before the target takes writes.
    pub(crate) async fn fail_over(
        &self,
        carried: &mut Carried,
        old: EpochRecord,
        target: NodeId,
        kind: FailoverKind,
        observations: &[NodeObservation],
        block_until_ms: Option<u64>,
    ) -> Result<(EpochRecord, FailoverReport), FailoverError> {
        let started = Instant::now();
        // Since the first failed probe of the old writer, when it is failing.
        let detection = carried.health.failing_for(old.primary, started);
        let target_info = info_of(observations, target).cloned();
        let target_offset = target_info.as_ref().map_or(0, |i| i.offset);
        let lineage = self.lineage(carried, &old);
        let replication_id = lineage
            .as_ref()
            .map(|l| l.replication_id.clone())
            .or_else(|| target_info.as_ref().map(|i| i.replication_id.clone()))
            .unwrap_or_default();
        let new_epoch = old
            .next(target)
            .ok_or_else(|| FailoverError::State(format!("epoch {} cannot grow", old.epoch)))?;
        let report = FailoverReport {
            kind,
            from_primary: self.topology.node_name(old.primary),
            new_primary: self.topology.node_name(target),
            new_primary_region: self.topology.region_of(target).name.clone(),
            epoch: new_epoch.epoch,
            detection_ms: detection.map(|d| d.as_millis() as u64),
            data_at_risk_bytes: lineage
                .as_ref()
                .map_or(0, |l| l.offset.saturating_sub(target_offset)),
        };
        let intent = crate::state::Intent {
            epoch: new_epoch.epoch,
            source: old.primary,
            target,
            required_offset: target_offset,
            replication_id: replication_id.clone(),
        };
        if let Err(e) = self.record_intent(intent).await {
            self.state_write_failed(&e);
            return Err(FailoverError::State(e.to_string()));
        }
        self.events
            .emit(crate::events::EventKind::FailoverStarted, &report);
        // An old writer that answers but lost its data must not take one more write.
        let old_answers = target != old.primary
            && observations
                .iter()
                .any(|o| o.node == old.primary && o.info().is_some());
        if old_answers {
            let endpoint = &self.topology.node(old.primary).control_endpoint;
            let hold = Duration::from_millis(self.config.controller.catchup_timeout_ms);
            let _ = self.engine.pause_writes(endpoint, hold).await;
            let _ = self.engine.kill_clients(endpoint).await;
        }
        let target_endpoint = &self.topology.node(target).control_endpoint;
        // A quorum left from the target's own time as a writer would refuse its first writes.
        let _ = self
            .engine
            .set_write_quorum(target_endpoint, WriteQuorum::OFF)
            .await;
        let result = self.engine.promote(target_endpoint).await;
        if let Err(e) = &result {
            let promoted = self
                .engine
                .replication(&self.topology.node(target).control_endpoint)
                .await
                .is_ok_and(|i| i.is_primary());
            if !promoted {
                let _ = self.state.clear_intent().await;
                self.events.emit(
                    crate::events::EventKind::FailoverFailed,
                    json!({ "kind": report.kind, "node": report.new_primary, "epoch": new_epoch.epoch, "error": e.to_string() }),
                );
                return Err(FailoverError::Promote(e.to_string()));
            }
        }
        let history = History {
            replication_id,
            offset: target_offset,
            parent: None,
        };
        self.commit_epoch(carried, new_epoch, history, block_until_ms, None, &[])
            .await
            .map_err(|e| FailoverError::State(e.to_string()))?;
        self.events.emit(
            crate::events::EventKind::FailoverPromoted,
            json!({ "node": report.new_primary, "epoch": new_epoch.epoch }),
        );
        carried.pending_failover = Some(crate::pass::PendingFailover {
            kind: report.kind,
            epoch: new_epoch.epoch,
            new_primary: report.new_primary.clone(),
            detected: started
                .checked_sub(detection.unwrap_or_default())
                .unwrap_or(started),
        });
        if old_answers {
            let demotion = self.demote(old.primary, target, true).await;
            self.report_fenced(&demotion, new_epoch.epoch);
        }
        Ok((new_epoch, report))
    }

    /// Records a promotion intent durably (the epoch before it stays in force).
    pub(crate) async fn record_intent(
        &self,
        intent: crate::state::Intent,
    ) -> Result<(), crate::state::StateError> {
        self.state.record_intent(intent).await
    }

    /// Records the epoch a promotion established, its writer's history (the lineage the next
    /// failover checks), and the anti-flapping block, in one durable write that settles the intent
    /// (with `also`, other etcd keys, in the same transaction).
    pub(crate) async fn commit_epoch(
        &self,
        carried: &mut Carried,
        epoch: EpochRecord,
        history: History,
        block_until_ms: Option<u64>,
        release: Option<NodeId>,
        also: &[valkey_dr_coord::Swap<'_>],
    ) -> Result<(), crate::state::StateError> {
        let result = self
            .state
            .commit_epoch(epoch, history.clone(), block_until_ms, release, also)
            .await;
        match result {
            Ok(_) => {
                carried.last_writer = Some((epoch.primary, history));
                carried.reported.lost_history = None;
                Ok(())
            }
            Err(e) => {
                self.state_write_failed(&e);
                Err(e)
            }
        }
    }

    /// `valkey-dr failover <region> --force`: promote the most advanced replica of `region` on the
    /// writer's history although the writer cannot be paused. Refused while the writer is
    /// reachable and serving.
    pub async fn forced_failover(
        &self,
        region: &str,
        force: bool,
    ) -> Result<FailoverReport, FailoverError> {
        let mut carried = self.pass_lock.lock().await;
        let carried = &mut *carried;
        let region_id = self
            .topology
            .region_by_name(region)
            .ok_or_else(|| FailoverError::UnknownRegion(region.to_string()))?;
        let epoch = self.epoch().ok_or(FailoverError::NoEpoch)?;
        let observations = self.observe_all().await;
        let analysis = analyze(&self.topology, &observations, Some(&epoch));
        let lineage = self.lineage(carried, &epoch);
        if analysis.active_primary.is_some()
            && failover::writer_state(&observations, epoch.primary, lineage.as_ref())
                == WriterState::Serving
        {
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
            .chain(std::iter::once(epoch.primary))
            .collect();
        let lineage = failover::lineage_or_guess(&observations, lineage.as_ref(), &unreachable);
        let (_, target) =
            *failover::candidates(&self.topology, &observations, &unreachable, &lineage, |r| {
                r == region_id
            })
            .first()
            .ok_or_else(|| FailoverError::NoCandidate(region.to_string()))?;
        let (_, report) = self
            .fail_over(
                carried,
                epoch,
                target,
                FailoverKind::Forced,
                &observations,
                None,
            )
            .await?;
        // Repoint the others and switch DNS now rather than on the next tick.
        let _ = self.reconcile_locked(carried).await;
        Ok(report)
    }

    /// `valkey-dr adopt <region>`: the operator's decision after a split brain (or any situation
    /// without a trustworthy epoch): the master of `region` becomes the writer of a new epoch; the
    /// next pass fences every other master.
    pub async fn adopt(&self, region: &str) -> Result<EpochRecord, FailoverError> {
        let mut carried = self.pass_lock.lock().await;
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
        let published = crate::dns_changes::published_ownership(self.dns.as_ref(), &self.names)
            .await
            .map_err(|e| FailoverError::Dns(e.to_string()))?
            .map_or(0, |o| o.epoch);
        let marked = observations
            .iter()
            .filter_map(|o| o.epoch_mark.as_ref())
            .map(|m| m.epoch)
            .max()
            .unwrap_or(0);
        let highest = self
            .epoch()
            .map_or(0, |e| e.epoch)
            .max(published)
            .max(marked.min(valkey_dr_core::analysis::MAX_EPOCH));
        let epoch = EpochRecord {
            epoch: highest,
            primary: writer,
        }
        .next(writer)
        .ok_or_else(|| FailoverError::State(format!("epoch {highest} cannot grow")))?;
        let history = info_of(&observations, writer).map(|i| i.history());
        // The operator decided what the history is: a suspected loss is settled with it.
        self.state
            .adopt_epoch(epoch, history.clone(), true)
            .await
            .map_err(|e| FailoverError::State(e.to_string()))?;
        carried.last_writer = history.map(|h| (writer, h));
        self.events.emit(
            crate::events::EventKind::Adopted,
            json!({ "region": region, "primary": self.topology.node_name(writer), "epoch": epoch.epoch }),
        );
        let _ = self.reconcile_locked(&mut carried).await;
        Ok(epoch)
    }

    /// `valkey-dr ack`: allow automatic failovers again and clear a reported data loss.
    pub async fn ack(&self) -> Result<bool, crate::state::StateError> {
        let was_blocked = match self.state.acknowledge(crate::clock::now_ms()).await {
            Ok(was_blocked) => was_blocked,
            Err(e) => {
                // Not recorded: the block stays, and the operator is told so.
                self.state_write_failed(&e);
                return Err(e);
            }
        };
        self.events.emit(
            crate::events::EventKind::FailoverBlockCleared,
            json!({ "was_blocked": was_blocked }),
        );
        Ok(was_blocked)
    }
}
