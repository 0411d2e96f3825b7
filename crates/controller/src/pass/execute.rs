//! The one place a pass acts: it takes a look ([`Snapshot`]), asks [`plan_actions`] what to do,
//! carries the actions out in order — the state change first, then the nodes — and looks again
//! after an action that changed something. Nothing here decides a rule; it checks only what must
//! still hold right before an action (a writer still silent, a majority of sites).

use std::time::{Duration, Instant};

use serde_json::json;
use valkey_dr_core::intent::Resolution;
use valkey_dr_core::observation::{History, info_of};
use valkey_dr_core::self_fence::WriteQuorum;
use valkey_dr_core::{EpochRecord, NodeId, NodeObservation};

use super::plan::{Action, FailoverChecks, FailoverKind, Plan, Rules, Snapshot, plan_actions};
use super::{PassError, PassOutcome, all_refused};
use crate::Controller;
use crate::clock::now_ms;
use crate::events::EventKind;
use crate::ha::Withheld;
use crate::state::Intent;

/// How long a quick look waits for a node that was silent at the last look: enough for a node
/// that is back, far less than a connect timeout for one that is still gone.
const QUICK_PROBE: Duration = Duration::from_millis(100);

/// What one action did.
enum Done {
    /// It changed the nodes or the state.
    Changed,
    Unchanged,
    /// It did nothing yet and asks for the pass to be called again this soon.
    Retry(Duration),
    /// DNS changes applied.
    Applied(usize),
}

enum Next {
    LookAgain,
    Finished {
        applied: usize,
        retry_after: Option<Duration>,
    },
}

impl Controller {
    fn rules(&self) -> Rules<'_> {
        let c = &self.config.controller;
        Rules {
            topology: &self.topology,
            names: &self.names,
            in_region_failover: c.in_region_failover,
            cross_region_failover: c.cross_region_failover,
            max_data_at_risk_bytes: c.max_data_at_risk_bytes,
            writer_quorum_max_lag_s: c.writer_quorum_max_lag_s,
            coordinated: self.ha().is_some(),
        }
    }

    /// One full pass: every node observed anew.
    pub(crate) async fn reconcile_locked(&self) -> Result<PassOutcome, PassError> {
        self.run_pass(false).await
    }

    /// A pass; `quick` after a pass that asked to be called again soon: it starts from that
    /// pass's last look and waits only briefly for the nodes that were silent then.
    pub(crate) async fn run_pass(&self, quick: bool) -> Result<PassOutcome, PassError> {
        let last = if quick {
            self.memory.lock().expect("memory lock").last_look.take()
        } else {
            None
        };
        let mut snapshot = match last {
            Some(last) => self.quick_look(&last).await?,
            None => self.first_look().await?,
        };
        loop {
            let plan = plan_actions(&snapshot, &self.rules());
            self.report(&snapshot, &plan);
            match self.execute(&snapshot, &plan).await? {
                Next::LookAgain => snapshot = self.look_again(&snapshot).await,
                Next::Finished {
                    applied,
                    retry_after,
                } => {
                    self.remember_seen(&snapshot.observations);
                    self.memory.lock().expect("memory lock").last_look = Some(snapshot.clone());
                    return Ok(PassOutcome {
                        observations: snapshot.observations,
                        analysis: plan.analysis,
                        epoch: plan.epoch,
                        applied,
                        conflicts: plan.conflicts,
                        retry_after,
                    });
                }
            }
        }
    }

    /// What `status` shows until the next pass.
    pub(crate) fn remember_seen(&self, observations: &[NodeObservation]) {
        self.memory.lock().expect("memory lock").last_seen =
            Some((Instant::now(), observations.to_vec()));
    }

    async fn first_look(&self) -> Result<Snapshot, PassError> {
        let probed_at = Instant::now();
        let mut observations = self.observe_all().await;
        self.read_writer_last(&mut observations).await;
        if let Some(reason) = all_refused(&self.topology, &observations) {
            // Every node refuses us: our credentials or trust settings are wrong. Nothing can be
            // decided from that; fail the pass so the error policy backs off and reports it.
            return Err(PassError::Refused(reason));
        }
        let records = self.dns.records(&self.names.all(&self.topology)).await?;
        self.update_health(&observations, probed_at);
        Ok(self.snapshot(1, observations, records))
    }

    /// After an action: the nodes that answered are asked again; silent ones are not waited for
    /// a second time (their failure stands); DNS was not touched, so its records stand too.
    async fn look_again(&self, last: &Snapshot) -> Snapshot {
        let mut observations = self.observe_reachable(&last.observations).await;
        self.read_writer_last(&mut observations).await;
        self.snapshot(last.look + 1, observations, last.records.clone())
    }

    async fn quick_look(&self, last: &Snapshot) -> Result<Snapshot, PassError> {
        let probed_at = Instant::now();
        let fresh: Vec<(NodeObservation, bool)> =
            futures::future::join_all(last.observations.iter().map(|o| async move {
                let endpoint = &self.topology.node(o.node).control_endpoint;
                if o.state.is_ok() {
                    (self.engine.observe(o.node, endpoint).await, true)
                } else {
                    match tokio::time::timeout(QUICK_PROBE, self.engine.observe(o.node, endpoint))
                        .await
                    {
                        Ok(now) => (now, true),
                        Err(_) => (o.clone(), false),
                    }
                }
            }))
            .await;
        let answered: Vec<NodeObservation> = fresh
            .iter()
            .filter(|(_, f)| *f)
            .map(|(o, _)| o.clone())
            .collect();
        self.update_health(&answered, probed_at);
        let records = self.dns.records(&self.names.all(&self.topology)).await?;
        let mut observations: Vec<NodeObservation> = fresh.into_iter().map(|(o, _)| o).collect();
        self.read_writer_last(&mut observations).await;
        Ok(self.snapshot(1, observations, records))
    }

    /// Nodes are read concurrently, so a replica read a moment after its writer may be ahead of
    /// it. When a replica seems ahead of the writer on the writer's own history (a writer
    /// restarted from an older file, [`valkey_dr_core::failover::went_back`]), the writer is read
    /// again, after them: a healthy writer then is never behind.
    async fn read_writer_last(&self, observations: &mut [NodeObservation]) {
        let Some(writer) = self.epoch().map(|e| e.primary) else {
            return;
        };
        if !valkey_dr_core::failover::went_back(observations, writer) {
            return;
        }
        let endpoint = &self.topology.node(writer).control_endpoint;
        let again = self.engine.observe(writer, endpoint).await;
        if let Some(o) = observations.iter_mut().find(|o| o.node == writer) {
            *o = again;
        }
    }

    /// Failure detection takes one more round of probes; reports nodes newly down.
    fn update_health(&self, observations: &[NodeObservation], probed_at: Instant) {
        let now = Instant::now();
        let down_after = Duration::from_millis(self.config.controller.down_after_ms);
        let mut health = self.health.lock().expect("health lock");
        for node in health.update(observations, probed_at, now, down_after) {
            if health.newly_down(node) {
                self.events.emit(
                    crate::events::EventKind::NodeDown,
                    json!({ "node": self.topology.node_name(node), "failing_ms": health.failing_for(node, now).map(|d| d.as_millis() as u64) }),
                );
            }
        }
    }

    fn snapshot(
        &self,
        look: u8,
        observations: Vec<NodeObservation>,
        records: Vec<valkey_dr_core::RecordSet>,
    ) -> Snapshot {
        let now = Instant::now();
        let state = self.state.get();
        let (remembered_writer, first_pass, lineage_recorded_ms) = {
            let memory = self.memory.lock().expect("memory lock");
            (
                memory.last_writer.clone(),
                !memory.started,
                memory.lineage_recorded_ms,
            )
        };
        let health = self.health.lock().expect("health lock");
        let down_after = Duration::from_millis(self.config.controller.down_after_ms);
        Snapshot {
            look,
            down: health.down(now, down_after),
            writer_failing_for: state
                .as_ref()
                .and_then(|s| health.failing_for(s.epoch.primary, now)),
            observations,
            state,
            remembered_writer,
            records,
            now_ms: now_ms(),
            first_pass,
            lineage_recorded_ms,
        }
    }

    /// Reports what changed since the last look (each change once).
    fn report(&self, snapshot: &Snapshot, plan: &Plan) {
        self.note_changes(&snapshot.observations, &plan.analysis);
        if let Some(decision) = &plan.decision {
            self.note_decision(decision);
        }
        self.note_conflicts(&plan.conflicts);
    }

    /// Carries out the plan in order; stops to look again after an action that changed the
    /// nodes or the state.
    async fn execute(&self, snapshot: &Snapshot, plan: &Plan) -> Result<Next, PassError> {
        let mut applied = 0;
        let mut retry_after = None;
        for action in &plan.actions {
            match self.act(snapshot, action).await? {
                Done::Changed if action.looks_again() => return Ok(Next::LookAgain),
                Done::Retry(after) => retry_after = Some(after),
                Done::Applied(n) => applied = n,
                Done::Changed | Done::Unchanged => {}
            }
        }
        self.complete_failover(plan.epoch);
        Ok(Next::Finished {
            applied,
            retry_after,
        })
    }

    async fn act(&self, snapshot: &Snapshot, action: &Action) -> Result<Done, PassError> {
        let observations = &snapshot.observations;
        let changed = |yes: bool| if yes { Done::Changed } else { Done::Unchanged };
        Ok(match action {
            Action::RecoverEpoch {
                record,
                mark,
                history,
                recorded_epoch,
            } => {
                let ok = self.adopt_epoch(*record, history.clone()).await;
                if ok {
                    self.events.emit(
                        crate::events::EventKind::EpochRecovered,
                        json!({
                            "epoch": mark.epoch,
                            "primary": mark.writer,
                            "recorded_epoch": recorded_epoch,
                            "source": "epoch mark on the nodes",
                        }),
                    );
                }
                changed(ok)
            }
            Action::AdoptEpoch {
                record,
                region,
                history,
                from_dns,
            } => {
                let ok = self.adopt_epoch(*record, history.clone()).await;
                if ok {
                    self.events.emit(
                        crate::events::EventKind::EpochAdopted,
                        json!({
                            "epoch": record.epoch,
                            "primary": self.topology.node_name(record.primary),
                            "region": self.topology.region(*region).name,
                            "source": if *from_dns { "dns ownership record" } else { "config primary_region" },
                        }),
                    );
                }
                changed(ok)
            }
            Action::BootstrapBlocked { region, problem } => {
                let mut memory = self.memory.lock().expect("memory lock");
                if memory.bootstrap_problem.as_ref() != Some(problem) {
                    self.events.emit(
                        crate::events::EventKind::BootstrapBlocked,
                        json!({ "region": self.topology.region(*region).name, "reason": problem }),
                    );
                    memory.bootstrap_problem = Some(problem.clone());
                }
                Done::Unchanged
            }
            Action::ResolveIntent {
                intent,
                resolution,
                source_answers,
                target_is_master,
            } => changed(
                self.resolve_intent(intent, *resolution, *source_answers, *target_is_master)
                    .await,
            ),
            Action::ReportLostWriter { writer, before } => {
                self.report_lost_writer(observations, *writer, before);
                Done::Unchanged
            }
            Action::AcceptLoss {
                writer,
                before,
                now,
            } => changed(self.accept_loss(*writer, before.as_ref(), now).await),
            Action::HoldLostWriter { writer, holder } => {
                changed(self.hold_lost_writer(*writer, *holder).await)
            }
            Action::Withhold { reason } => {
                self.note_withheld(reason.clone());
                Done::Unchanged
            }
            Action::FailOver {
                from,
                target,
                kind,
                checks,
            } => {
                self.checked_fail_over(observations, *from, *target, *kind, *checks)
                    .await
            }
            Action::FenceRogues { epoch, rogues } => {
                for (node, source) in rogues {
                    let demotion = self.demote(*node, *source, true).await;
                    self.report_fenced(&demotion, *epoch);
                    self.memory
                        .lock()
                        .expect("memory lock")
                        .paused_rogues
                        .remove(node);
                }
                Done::Changed
            }
            Action::PauseRogues { rogues } => {
                let hold = Duration::from_millis(self.config.controller.catchup_timeout_ms)
                    + Duration::from_secs(10);
                for node in rogues {
                    let endpoint = &self.topology.node(*node).control_endpoint;
                    let paused = self.engine.pause_writes(endpoint, hold).await;
                    let first = self
                        .memory
                        .lock()
                        .expect("memory lock")
                        .paused_rogues
                        .insert(*node);
                    if first {
                        self.events.emit(
                            EventKind::RoguePaused,
                            json!({
                                "node": self.topology.node_name(*node),
                                "paused": paused.is_ok(),
                                "error": paused.err().map(|e| e.to_string()),
                                "reason": "a master that is not the epoch's writer, while the writer cannot take it in: its writes stay paused until the writer serves and it is demoted",
                            }),
                        );
                    }
                }
                Done::Unchanged
            }
            Action::RememberWriter {
                writer,
                history,
                durable,
            } => {
                self.memory.lock().expect("memory lock").last_writer =
                    Some((*writer, history.clone()));
                if *durable {
                    match self.state.record_writer_history(history.clone()).await {
                        Ok(()) => {
                            self.memory.lock().expect("memory lock").lineage_recorded_ms =
                                Some(now_ms());
                        }
                        Err(e) => self.state_write_failed(&e),
                    }
                }
                Done::Unchanged
            }
            Action::LiftStalePause { writer } => {
                let endpoint = &self.topology.node(*writer).control_endpoint;
                let _ = self.engine.unpause(endpoint).await;
                self.memory.lock().expect("memory lock").started = true;
                Done::Unchanged
            }
            Action::CheckSyncSettings => {
                self.check_sync_settings(observations).await;
                Done::Unchanged
            }
            Action::Heartbeat { writer, mark } => {
                let endpoint = &self.topology.node(*writer).control_endpoint;
                if let Err(e) = self.engine.write_heartbeat(endpoint, now_ms(), mark).await {
                    tracing::debug!(error = %e, "heartbeat not written");
                }
                Done::Unchanged
            }
            Action::KeepWriteQuorum { writer } => {
                self.keep_write_quorum(observations, *writer).await;
                Done::Unchanged
            }
            Action::Repoint { node, source } => {
                self.repoint(*node, *source).await;
                Done::Unchanged
            }
            Action::ApplyDns { changes } => {
                self.events.emit(
                    crate::events::EventKind::DnsPlan,
                    json!({ "changes": changes }),
                );
                match self.dns.apply(changes).await {
                    Ok(()) => {
                        self.events.emit(
                            crate::events::EventKind::DnsApplied,
                            json!({ "changes": changes.len() }),
                        );
                        Done::Applied(changes.len())
                    }
                    Err(error) => {
                        self.events.emit(
                            crate::events::EventKind::DnsApplyFailed,
                            json!({ "error": error.to_string() }),
                        );
                        return Err(error.into());
                    }
                }
            }
        })
    }

    /// Records an epoch found on the nodes or adopted at a start; false when the write failed.
    async fn adopt_epoch(&self, record: EpochRecord, history: Option<History>) -> bool {
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
    async fn checked_fail_over(
        &self,
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
            self.health.lock().expect("health lock").forget(writer);
            self.events.emit(
                crate::events::EventKind::FailoverCancelled,
                json!({ "node": self.topology.node_name(writer), "reason": "the writer answered the confirmation probe" }),
            );
            return Done::Unchanged;
        }
        if checks.majority_of_sites
            && let Some(ha) = self.ha()
        {
            let verdict = self.cross_region_verdict_now(ha, writer).await;
            let mut memory = self.memory.lock().expect("memory lock");
            match verdict {
                Ok(()) => memory.region_release_since = None,
                // The writer's region still holding its lease is the one obstacle that time
                // removes by itself: ask to be called again soon, at most a TTL long, rather than
                // wait here holding the topology lock.
                Err(Withheld::RegionStillPresent { .. })
                    if ha.leader.is_leader()
                        && memory
                            .region_release_since
                            .get_or_insert_with(Instant::now)
                            .elapsed()
                            < ha.coord.ttl() =>
                {
                    return Done::Retry(crate::ha::FOLLOWER_TICK);
                }
                Err(withheld) => {
                    drop(memory);
                    self.note_withheld(withheld.to_string());
                    return Done::Unchanged;
                }
            }
        }
        let detection = self
            .health
            .lock()
            .expect("health lock")
            .failing_for(writer, Instant::now());
        // The anti-flapping block goes to the state in the same write as the new epoch.
        let block = now_ms() + self.config.controller.failover_block_ms;
        let result = self
            .fail_over(
                from,
                target,
                kind.as_str(),
                observations,
                detection,
                Some(block),
            )
            .await;
        if result.is_ok() {
            Done::Changed
        } else {
            Done::Unchanged
        }
    }

    /// Settles a promotion intent as [`valkey_dr_core::intent::resolve`] said; true when it
    /// changed the state or the nodes.
    async fn resolve_intent(
        &self,
        intent: &Intent,
        resolution: Resolution,
        source_answers: bool,
        target_is_master: bool,
    ) -> bool {
        let required = History {
            replication_id: intent.replication_id.clone(),
            offset: intent.required_offset,
        };
        let new_epoch = EpochRecord {
            epoch: intent.epoch,
            primary: intent.target,
        };
        let source_endpoint = &self.topology.node(intent.source).control_endpoint;
        let target_endpoint = &self.topology.node(intent.target).control_endpoint;
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
                if self.commit_epoch(new_epoch, required, None).await.is_err() {
                    return false;
                }
                if source_answers {
                    detail["demotion"] =
                        json!(self.demote(intent.source, intent.target, true).await);
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
    async fn repoint(&self, node: NodeId, source: NodeId) {
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

    /// Warns, once per node and run, about settings that let replicas copy an empty restarted
    /// writer before the controller can replace it.
    async fn check_sync_settings(&self, observations: &[NodeObservation]) {
        let unchecked: Vec<NodeId> = {
            let memory = self.memory.lock().expect("memory lock");
            observations
                .iter()
                .filter(|o| o.info().is_some() && !memory.settings_checked.contains(&o.node))
                .map(|o| o.node)
                .collect()
        };
        for node in unchecked {
            let endpoint = &self.topology.node(node).control_endpoint;
            let settings = self.engine.sync_settings(endpoint).await;
            // A node that refuses CONFIG (renamed, ACL) is not asked again in this run.
            if settings
                .as_ref()
                .is_err_and(|e| e.kind == valkey_dr_core::observation::FailureKind::Unreachable)
            {
                continue;
            }
            self.memory
                .lock()
                .expect("memory lock")
                .settings_checked
                .insert(node);
            for why in settings.map(|s| s.weaknesses()).unwrap_or_default() {
                self.events.emit(
                    EventKind::SettingWeakensSafety,
                    json!({ "node": self.topology.node_name(node), "warning": why }),
                );
            }
        }
    }

    /// Reports a writer whose data does not continue its history (once per history it shows).
    fn report_lost_writer(
        &self,
        observations: &[NodeObservation],
        writer: NodeId,
        before: &History,
    ) {
        let Some(now) = info_of(observations, writer) else {
            return;
        };
        let mut memory = self.memory.lock().expect("memory lock");
        if memory.reported_lost.as_ref() == Some(&now.replication_id) {
            return;
        }
        memory.reported_lost = Some(now.replication_id.clone());
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
    async fn hold_lost_writer(&self, writer: NodeId, holder: Option<NodeId>) -> bool {
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
    async fn accept_loss(&self, writer: NodeId, before: Option<&History>, now: &History) -> bool {
        let lost = json!({
            "node": self.topology.node_name(writer),
            "offset_before": before.map(|b| b.offset),
            "offset": now.offset,
            "lost_bytes_at_least": before.map(|b| b.offset.saturating_sub(now.offset)),
            "reason": "the writer came back without its data and no other node holds it",
        });
        self.events
            .emit(crate::events::EventKind::DataLossSuspected, &lost);
        self.memory.lock().expect("memory lock").last_writer = Some((writer, now.clone()));
        // The new lineage and the loss in one durable write: status shows the loss on every site
        // and after any restart, until `ack`.
        match self.state.record_loss(now.clone(), lost).await {
            Ok(_) => true,
            Err(e) => {
                self.state_write_failed(&e);
                false
            }
        }
    }
}
