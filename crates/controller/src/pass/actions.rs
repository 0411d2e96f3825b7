//! What each action of a plan does on the nodes and in the state (called by `execute.rs`).

use std::time::{Duration, Instant};

use serde_json::json;
use valkey_dr_core::intent::Resolution;
use valkey_dr_core::observation::{History, info_of};
use valkey_dr_core::self_fence::WriteQuorum;
use valkey_dr_core::{EpochRecord, NodeId, NodeObservation};

use super::execute::Done;
use super::plan::{FailoverChecks, FailoverKind};
use super::{Carried, Reported};
use crate::Controller;
use crate::clock::now_ms;
use crate::events::EventKind;
use crate::ha::Withheld;
use crate::state::Intent;

impl Controller {
    /// Records an epoch found on the nodes or adopted at a start; false when the write failed.
    pub(super) async fn adopt_epoch(&self, record: EpochRecord, history: Option<History>) -> bool {
        match self.state.adopt_epoch(record, history, false).await {
            Ok(()) => true,
            Err(e) => {
                self.state_write_failed(&e);
                false
            }
        }
    }

    /// A failover, once what it relies on still holds: the writer still silent on a fresh
    /// probe, and (leaving the writer's region in the highly available shape) a majority of the
    /// sites' views with the writer's region let go.
    pub(super) async fn checked_fail_over(
        &self,
        carried: &mut Carried,
        observations: &[NodeObservation],
        from: EpochRecord,
        target: NodeId,
        kind: FailoverKind,
        checks: FailoverChecks,
    ) -> Done {
        let writer = from.primary;
        // A live node answers within a probe interval; an isolated one must not delay the
        // failover by a whole connect timeout.
        let confirm_within = Duration::from_millis(self.config.controller.probe_interval_ms);
        if checks.writer_still_silent
            && tokio::time::timeout(
                confirm_within,
                self.engine
                    .ping(&self.topology.node(writer).control_endpoint),
            )
            .await
            .is_ok_and(|reply| reply.is_ok())
        {
            carried.health.forget(writer);
            self.events.emit(
                crate::events::EventKind::FailoverCancelled,
                json!({ "node": self.topology.node_name(writer), "reason": "the writer answered the confirmation probe" }),
            );
            return Done::Unchanged;
        }
        if checks.majority_of_sites
            && let Some(ha) = self.ha()
        {
            let verdict = self
                .cross_region_verdict_now(&mut carried.view_ages, ha, writer)
                .await;
            match verdict {
                Ok(()) => carried.region_release_since = None,
                // The writer's region still holding its lease is the one obstacle that time
                // removes by itself: ask to be called again soon, at most a TTL long, rather than
                // wait here holding the topology lock.
                Err(Withheld::RegionStillPresent { .. })
                    if ha.leader.is_leader()
                        && carried
                            .region_release_since
                            .get_or_insert_with(Instant::now)
                            .elapsed()
                            < ha.coord.ttl() =>
                {
                    return Done::Retry(crate::ha::FOLLOWER_TICK);
                }
                Err(withheld) => {
                    self.note_withheld(&mut carried.reported, withheld.to_string());
                    return Done::Unchanged;
                }
            }
        }
        // The anti-flapping block goes to the state in the same write as the new epoch.
        let block = now_ms() + self.config.controller.failover_block_ms;
        let result = self
            .fail_over(carried, from, target, kind, observations, Some(block))
            .await;
        if result.is_ok() {
            Done::Changed
        } else {
            Done::Unchanged
        }
    }

    /// Settles a promotion intent as [`valkey_dr_core::intent::resolve`] said; true when it
    /// changed the state or the nodes.
    pub(super) async fn resolve_intent(
        &self,
        carried: &mut Carried,
        intent: &Intent,
        resolution: Resolution,
        source_answers: bool,
        target_is_master: bool,
    ) -> bool {
        let required = History {
            replication_id: intent.replication_id.clone(),
            offset: intent.required_offset,
            parent: None,
        };
        let new_epoch = EpochRecord {
            epoch: intent.epoch,
            primary: intent.target,
        };
        let source_endpoint = &self.topology.node(intent.source).control_endpoint;
        let target_endpoint = &self.topology.node(intent.target).control_endpoint;
        let mut resolution = resolution;
        if resolution == Resolution::Complete && source_answers {
            // The source is paused before it is looked at again: a write it took after the
            // observation (its pause ran out) rolls the promotion back instead of being lost to
            // the demotion.
            let hold = Duration::from_millis(self.config.controller.catchup_timeout_ms);
            let _ = self.engine.pause_writes(source_endpoint, hold).await;
            if let Ok(now) = self.engine.replication(source_endpoint).await
                && now.is_primary()
                && now.replication_id == intent.replication_id
                && now.offset > intent.required_offset
            {
                resolution = Resolution::RollBack;
            }
        }
        let mut detail = json!({
            "resolution": resolution,
            "epoch": intent.epoch,
            "source": self.topology.node_name(intent.source),
            "target": self.topology.node_name(intent.target),
            "required_offset": intent.required_offset,
        });
        let changed = match resolution {
            Resolution::Complete | Resolution::Promote => {
                if resolution == Resolution::Promote {
                    if source_answers {
                        let hold = Duration::from_millis(self.config.controller.catchup_timeout_ms);
                        let _ = self.engine.pause_writes(source_endpoint, hold).await;
                    }
                    let _ = self
                        .engine
                        .set_write_quorum(target_endpoint, WriteQuorum::OFF)
                        .await;
                    if let Err(e) = self.engine.promote(target_endpoint).await {
                        // The intent stays: the next pass looks again.
                        detail["error"] = json!(e.to_string());
                        self.events
                            .emit(crate::events::EventKind::IntentResolved, &detail);
                        return false;
                    }
                }
                // A switchover cut short leaves the source's clients blocked on its pause: they
                // are closed (and the pause lifted) once it is seen demoted, after the name moved.
                if self
                    .commit_epoch(carried, new_epoch, required, None, Some(intent.source), &[])
                    .await
                    .is_err()
                {
                    return false;
                }
                if source_answers {
                    // Its clients are closed by the release, once the name leads to the target.
                    detail["demotion"] =
                        json!(self.demote(intent.source, intent.target, false).await);
                }
                true
            }
            Resolution::RollBack => {
                if target_is_master {
                    detail["demotion"] =
                        json!(self.demote(intent.target, intent.source, true).await);
                }
                let _ = self.engine.unpause(source_endpoint).await;
                self.clear_intent().await;
                true
            }
            Resolution::Wait => {
                self.clear_intent().await;
                true
            }
        };
        self.events
            .emit(crate::events::EventKind::IntentResolved, &detail);
        changed
    }

    pub(crate) async fn clear_intent(&self) {
        if let Err(e) = self.state.clear_intent().await {
            self.state_write_failed(&e);
        }
    }

    /// Points a replica that follows the wrong node at `source`. Only replicas: a node reporting
    /// role:master is never demoted here.
    pub(super) async fn repoint(&self, node: NodeId, source: NodeId) {
        let endpoint = &self.topology.node(node).control_endpoint;
        let source = self.topology.replication_endpoint(source, node);
        let mut result = self.engine.replicate_from(endpoint, &source).await;
        if result.is_ok() {
            result = self.engine.persist_role(endpoint).await;
        }
        self.events.emit(
            crate::events::EventKind::ReplicaRepointed,
            json!({
                "node": self.topology.node_name(node),
                "source": source.to_string(),
                "ok": result.is_ok(),
                "error": result.err().map(|e| e.to_string()),
            }),
        );
    }

    /// Keeps track of a writer that refuses writes with an error reply of its own (`-MISCONF`,
    /// `-OOM`), reporting when it starts and when it ends.
    pub(super) fn note_refusal(
        &self,
        carried: &mut Carried,
        writer: NodeId,
        written: &Result<(), valkey_dr_core::EngineError>,
    ) {
        let refusal = match written {
            Ok(()) => None,
            Err(e) => match e.reply.filter(|r| r.refuses_writes()) {
                Some(reply) => Some((reply, e.reason.clone())),
                // Not an answer about writes (no answer, a pause, a replica): nothing learned.
                None => return,
            },
        };
        let before = carried.writer_refusal.take().filter(|r| r.writer == writer);
        match (before, refusal) {
            (Some(before), Some((reply, _))) if before.reply == reply => {
                carried.writer_refusal = Some(before);
            }
            (_, Some((reply, error))) => {
                let switches = reply == valkey_dr_core::ErrorReply::Misconf
                    && self.config.controller.in_region_failover;
                self.events.emit(
                    EventKind::WriterRefusesWrites,
                    json!({
                        "node": self.topology.node_name(writer),
                        "reply": reply,
                        "error": error,
                        "next": if switches {
                            "a switchover to the best replica of its region once it refused writes for down_after_ms"
                        } else {
                            "reported only: a replica holds as much data (OOM), or in-region failover is off"
                        },
                    }),
                );
                carried.writer_refusal = Some(super::Refusal {
                    writer,
                    reply,
                    since: Instant::now(),
                    error,
                });
            }
            (Some(before), None) => {
                self.events.emit(
                    EventKind::WriterTakesWrites,
                    json!({
                        "node": self.topology.node_name(writer),
                        "refused_ms": before.since.elapsed().as_millis() as u64,
                    }),
                );
            }
            (None, None) => {}
        }
    }

    /// Warns, once per node and run, about settings that let replicas copy an empty restarted
    /// writer before the controller can replace it.
    pub(super) async fn check_sync_settings(
        &self,
        checked: &mut std::collections::BTreeSet<NodeId>,
        observations: &[NodeObservation],
    ) {
        let unchecked: Vec<NodeId> = observations
            .iter()
            .filter(|o| o.info().is_some() && !checked.contains(&o.node))
            .map(|o| o.node)
            .collect();
        for node in unchecked {
            let endpoint = &self.topology.node(node).control_endpoint;
            let settings = self.engine.sync_settings(endpoint).await;
            // A node that refuses CONFIG (renamed, ACL) is not asked again in this run.
            if settings.as_ref().is_err_and(|e| e.kind.no_answer()) {
                continue;
            }
            checked.insert(node);
            for why in settings.map(|s| s.weaknesses()).unwrap_or_default() {
                self.events.emit(
                    EventKind::SettingWeakensSafety,
                    json!({ "node": self.topology.node_name(node), "warning": why }),
                );
            }
        }
    }

    /// Reports a writer whose data does not continue its history (once per history it shows).
    pub(super) fn report_lost_writer(
        &self,
        reported: &mut Reported,
        observations: &[NodeObservation],
        writer: NodeId,
        before: &History,
    ) {
        let Some(now) = info_of(observations, writer) else {
            return;
        };
        if reported.lost_history.as_ref() == Some(&now.replication_id) {
            return;
        }
        reported.lost_history = Some(now.replication_id.clone());
        let detail = json!({
            "node": self.topology.node_name(writer),
            "role": if now.is_primary() { "primary" } else { "replica" },
            "replication_id_before": before.replication_id,
            "offset_before": before.offset,
            "replication_id": now.replication_id,
            "offset": now.offset,
        });
        self.events
            .emit(crate::events::EventKind::WriterRestartedEmpty, &detail);
    }

    /// A writer back empty as a master while no failover can happen yet: it follows the node
    /// that holds the most of its history (its replicas then wait on it instead of copying
    /// nothing), or, with no such node in sight, its writes stay paused. True when it changed a
    /// node.
    pub(super) async fn hold_lost_writer(&self, writer: NodeId, holder: Option<NodeId>) -> bool {
        let endpoint = &self.topology.node(writer).control_endpoint;
        let hold = Duration::from_millis(self.config.controller.catchup_timeout_ms)
            + Duration::from_secs(10);
        let _ = self.engine.pause_writes(endpoint, hold).await;
        let Some(holder) = holder else {
            return false;
        };
        let demotion = self.demote(writer, holder, true).await;
        self.events.emit(
            crate::events::EventKind::LostWriterHeld,
            json!({
                "node": demotion.node,
                "now_follows": demotion.now_follows,
                "demoted": demotion.demoted,
                "reason": "the writer came back without its data while no failover can happen yet; it follows the node holding the history so that no replica copies the empty data",
            }),
        );
        demotion.demoted
    }

    /// The writer lost its history and no node holds it any more: record the loss (status shows
    /// it until `ack`) and take the writer's current history as the lineage from now on.
    pub(super) async fn accept_loss(
        &self,
        carried: &mut Carried,
        writer: NodeId,
        before: Option<&History>,
        now: &History,
    ) -> bool {
        let lost = json!({
            "node": self.topology.node_name(writer),
            "offset_before": before.map(|b| b.offset),
            "offset": now.offset,
            "lost_bytes_at_least": before.map(|b| b.offset.saturating_sub(now.offset)),
            "reason": "the writer came back without its data and no other node holds it",
        });
        self.events
            .emit(crate::events::EventKind::DataLossSuspected, &lost);
        // The new lineage and the loss in one durable write: status shows the loss on every site
        // and after any restart, until `ack`. The lineage moves on in memory only then: a write
        // that fails leaves the old one, and the next pass finds the loss again.
        match self.state.record_loss(now.clone(), lost).await {
            Ok(_) => {
                carried.last_writer = Some((writer, now.clone()));
                true
            }
            Err(e) => {
                self.state_write_failed(&e);
                false
            }
        }
    }
}

impl Controller {
    /// A switchover's last step on its old primary: close its clients (they reconnect through the
    /// name to the new writer) and, when `unpause`, lift its write pause. Returns the clients
    /// closed and whether the pause was lifted.
    pub(crate) async fn release_clients(
        &self,
        old: NodeId,
        unpause: bool,
    ) -> (Result<u64, valkey_dr_core::EngineError>, bool) {
        let endpoint = &self.topology.node(old).control_endpoint;
        if !unpause {
            return (self.engine.kill_clients(endpoint).await, false);
        }
        match self.engine.kill_clients_and_unpause(endpoint).await {
            Ok(killed) => (Ok(killed), true),
            // Neither is known to have happened: each on its own.
            Err(_) => {
                let killed = self.engine.kill_clients(endpoint).await;
                (killed, self.engine.unpause(endpoint).await.is_ok())
            }
        }
    }

    /// Records that `old`'s clients were closed (`killed` succeeded) and its role persisted, so
    /// nobody does either again.
    pub(crate) async fn settle_release(
        &self,
        old: NodeId,
        killed: &Result<u64, valkey_dr_core::EngineError>,
        persisted: bool,
    ) {
        let written = match (killed.is_ok(), persisted) {
            (true, _) => self.state.release_done(old, persisted).await,
            (false, true) => self.state.persist_done(old).await,
            (false, false) => Ok(()),
        };
        if let Err(e) = written {
            self.state_write_failed(&e);
        }
    }

    /// Writes a demoted old primary's replica role to its config file; false (reported) when it
    /// cannot, and a later pass tries again.
    pub(crate) async fn persist_old_role(&self, node: NodeId) -> bool {
        match self
            .engine
            .persist_role(&self.topology.node(node).control_endpoint)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(node = %self.topology.node_name(node), error = %e, "cannot persist the old primary's replica role; retrying next pass");
                false
            }
        }
    }
}
