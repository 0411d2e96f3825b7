//! The planned switchover as an explicit state machine (after Sentinel's failover states):
//!
//! Preflight → Fence → WaitCatchUp → Promote → SwitchDns → Release → Repoint → Verify
//!
//! Fence pauses writes on the old primary, so once the target has caught up no acknowledged
//! write can be missing from it. Abort is possible only before Promote and unpauses the old
//! primary; from Promote on the switchover is carried forward (by a restarted controller too:
//! the intent, recorded in Preflight). The pause holds one durable write, SwitchDns: the new
//! epoch and the records that lead the name to the target, together; everything else
//! (Preflight's reads and the intent, Repoint, Verify's passes) happens outside it.

mod publish;
mod steps;

use std::time::{Duration, Instant};

use publish::{PublishError, Published};
use steps::{Machine, round};
pub use steps::{PromoteError, PromoteMethod, PromotionReport, Step, StepRecord};
use valkey_dr_core::observation::info_of;

use serde_json::json;
use valkey_dr_core::analysis::analyze;
use valkey_dr_core::observation::History;
use valkey_dr_core::{NodeId, NodeObservation, Role};

use crate::Controller;

/// Where a switchover moves the writer.
#[derive(Debug, Clone)]
enum Destination {
    /// The head of a region (an operator's `promote`).
    Region(String),
    /// One replica that follows the writer directly (a switch away from a writer that refuses
    /// writes, inside its region).
    Replica(NodeId),
}

/// The least write pause that must be left at the point of no return: the remaining steps up to
/// the old primary's demotion take milliseconds; this leaves room for a slow node.
const PAUSE_MARGIN: Duration = Duration::from_secs(2);

/// How long a switchover's preflight waits for etcd's raft leader to move to this site.
const RAFT_LEADER_MOVE_WAIT: Duration = Duration::from_millis(500);

impl Controller {
    /// Moves the writer to the head of `region` without losing an acknowledged write.
    pub async fn promote(&self, region: &str) -> Result<PromotionReport, PromoteError> {
        self.promote_with(region, PromoteMethod::Safe).await
    }

    pub async fn promote_with(
        &self,
        region: &str,
        method: PromoteMethod,
    ) -> Result<PromotionReport, PromoteError> {
        let mut carried = self.pass_lock.lock().await;
        self.promotion(
            &mut carried,
            Destination::Region(region.to_string()),
            method,
            None,
            None,
        )
        .await
    }

    /// A pass's switchover away from a writer that refuses every write for a reason of its own
    /// (`-MISCONF`) to `target`, the best replica of its region; failovers are blocked afterwards
    /// as after any unplanned move, so that a fault shared by both nodes cannot make the writer
    /// flap. Reported as a switchover (the `promotion_*` events, with the reason). True when the
    /// writer moved.
    pub(crate) async fn switch_away(
        &self,
        carried: &mut crate::pass::Carried,
        target: NodeId,
        reply: valkey_dr_core::ErrorReply,
    ) -> bool {
        let block = crate::clock::now_ms() + self.config.controller.failover_block_ms;
        self.promotion(
            carried,
            Destination::Replica(target),
            PromoteMethod::Safe,
            Some(block),
            Some(json!({ "writer_refuses_writes": reply })),
        )
        .await
        .is_ok()
    }

    async fn promotion(
        &self,
        carried: &mut crate::pass::Carried,
        destination: Destination,
        method: PromoteMethod,
        block_until_ms: Option<u64>,
        reason: Option<serde_json::Value>,
    ) -> Result<PromotionReport, PromoteError> {
        let region = match &destination {
            Destination::Region(region) => region.clone(),
            Destination::Replica(node) => self.topology.region_of(*node).name.clone(),
        };
        let region = region.as_str();
        let mut machine = Machine {
            controller: self,
            started: Instant::now(),
            steps: Vec::new(),
            current: None,
            region: region.to_string(),
        };
        let mut started = json!({ "region": region });
        if let Some(reason) = reason {
            started["reason"] = reason;
        }
        self.events
            .emit(crate::events::EventKind::PromotionStarted, &started);
        let result = self
            .promote_locked(carried, &mut machine, destination, method, block_until_ms)
            .await;
        match &result {
            Ok(report) => self
                .events
                .emit(crate::events::EventKind::PromotionDone, report),
            Err(error) => {
                machine.finish(format!("failed: {error}"));
                self.events.emit(
                    crate::events::EventKind::PromotionFailed,
                    json!({ "region": region, "error": error.to_string() }),
                );
            }
        }
        result
    }

    async fn promote_locked(
        &self,
        carried: &mut crate::pass::Carried,
        m: &mut Machine<'_>,
        destination: Destination,
        method: PromoteMethod,
        block_until_ms: Option<u64>,
    ) -> Result<PromotionReport, PromoteError> {
        let topology = &self.topology;
        let name = |n: NodeId| topology.node_name(n);
        let endpoint = |n: NodeId| &topology.node(n).control_endpoint;

        m.enter(Step::Preflight);
        let region = m.region.clone();
        let region = region.as_str();
        let target_region = topology
            .region_by_name(region)
            .ok_or_else(|| PromoteError::UnknownRegion(region.to_string()))?;
        let observations = self.observe_all().await;
        let epoch = self.epoch().ok_or_else(|| {
            PromoteError::Preflight(
                "no epoch recorded yet: the controller has not adopted a writer".into(),
            )
        })?;
        let analysis = analyze(topology, &observations, Some(&epoch));
        let old = epoch.primary;
        if analysis.active_primary != Some(old) {
            return Err(PromoteError::Preflight(format!(
                "the writer {} is not reachable as a primary; a planned switchover needs it (use a failover instead)",
                name(old)
            )));
        }
        let target = match destination {
            Destination::Region(_) if topology.node(old).region == target_region => {
                return Err(PromoteError::Preflight(format!(
                    "{region} already holds the writer ({})",
                    name(old)
                )));
            }
            Destination::Region(_) => analysis.heads[target_region.0].ok_or_else(|| {
                PromoteError::Preflight(format!("no reachable replica heads {region}"))
            })?,
            Destination::Replica(node) => node,
        };
        let target_info = observed(&observations, target);
        let follows_old = matches!(
            target_info.map(|i| &i.role),
            Some(Role::Replica { master, link_up: true, sync_in_progress: false })
                if topology.node_by_any_address(master) == Some(old)
        );
        if !follows_old {
            return Err(PromoteError::Preflight(format!(
                "{} does not replicate from the writer {} with a healthy link",
                name(target),
                name(old)
            )));
        }
        // The pause holds one etcd commit: from here it costs one round trip to the nearest other
        // member when this site's member leads the raft group, two hops more when a member
        // elsewhere does. Moved here, outside the pause, for this planned operation only (a
        // raft leader change extends every lease by its TTL), and never into the region that
        // is about to hold the writer (losing it would then cost an etcd election on top of the
        // failover). Not moved is no reason to stop.
        let raft = match self.ha().filter(|ha| ha.coord.site() != region) {
            Some(ha) => match ha.coord.lead_raft_here(RAFT_LEADER_MOVE_WAIT).await {
                Ok(true) => "; etcd's raft leader is this site's member",
                Ok(false) => "; etcd's raft leader did not move here in time",
                Err(e) => {
                    tracing::warn!(error = %e, "cannot ask etcd to move its raft leader here");
                    "; etcd's raft leader stays where it is"
                }
            },
            None => "",
        };
        // A quorum left from the target's own time as a writer would refuse its first writes;
        // cleared before the fence, outside the write pause.
        self.engine
            .set_write_quorum(
                endpoint(target),
                valkey_dr_core::self_fence::WriteQuorum::OFF,
            )
            .await
            .map_err(|e| PromoteError::Preflight(e.to_string()))?;
        // The intent goes to durable state before the pause, so that the pause holds only one
        // commit (the epoch with the records), and a controller restarted at any later step
        // resumes or rolls back from it instead of guessing. Its offset is the writer's before
        // the pause, a lower bound: `intent::resolve` promotes only a target the old writer was
        // seen demoted under, which this switchover does only once the target caught up.
        let new_epoch = epoch
            .next(target)
            .ok_or_else(|| PromoteError::Preflight(format!("epoch {} cannot grow", epoch.epoch)))?;
        let mut old_info = observed(&observations, old)
            .cloned()
            .ok_or_else(|| PromoteError::Preflight(format!("{} not observed", name(old))))?;
        let intent = crate::state::Intent {
            epoch: new_epoch.epoch,
            source: old,
            target,
            required_offset: old_info.offset,
            replication_id: old_info.replication_id.clone(),
        };
        if let Err(e) = self.record_intent(intent).await {
            self.state_write_failed(&e);
            return Err(PromoteError::Preflight(format!(
                "cannot record the promotion intent: {e}"
            )));
        }
        self.fault_point(crate::faults::FaultPoint::IntentRecorded);
        m.finish(format!("{} → {}{raft}", name(old), name(target)));

        let catchup = Duration::from_millis(self.config.controller.catchup_timeout_ms);
        let pause = catchup + 2 * PAUSE_MARGIN;
        let pause_started = Instant::now();
        // Blind and FAILOVER TO have no pause: the old primary's last observed state stands in.
        let mut needed = old_info.offset;
        match method {
            PromoteMethod::Safe => {
                // Fence. The pause outlives the whole switchover but expires by itself if we die.
                // One round trip: the pause and the offset it froze.
                m.enter(Step::Fence);
                old_info = match self
                    .engine
                    .pause_writes_and_read(endpoint(old), pause)
                    .await
                {
                    Ok(info) => info,
                    Err(e) => {
                        return Err(self
                            .abort(old, PromoteError::Preflight(e.to_string()))
                            .await);
                    }
                };
                needed = old_info.offset;
                m.finish(format!("writes paused on {} at offset {needed}", name(old)));

                m.enter(Step::WaitCatchUp);
                let deadline = Instant::now() + catchup;
                let mut reached = 0;
                loop {
                    let answered = match self.engine.replication(endpoint(target)).await {
                        Ok(info) => {
                            reached = info.offset;
                            if reached >= needed {
                                break;
                            }
                            true
                        }
                        Err(_) => false,
                    };
                    if Instant::now() >= deadline {
                        let error = PromoteError::CatchUpTimeout {
                            target: name(target),
                            old: name(old),
                            behind: needed.saturating_sub(reached),
                            timeout_ms: self.config.controller.catchup_timeout_ms,
                        };
                        return Err(self.abort(old, error).await);
                    }
                    // Read again at once while the target answers: each read is a round trip
                    // to it, and every millisecond here holds the writes. A target that does
                    // not answer is asked every millisecond.
                    if answered {
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                m.finish(format!("target at offset {reached} ≥ {needed}"));
            }
            PromoteMethod::Blind => {
                // No pause, no catch-up: the target's history goes as far as the target got, and
                // that is what the new epoch records (not the old primary's offset, which a
                // lagging target never reaches).
                if let Ok(info) = self.engine.replication(endpoint(target)).await {
                    needed = needed.min(info.offset);
                }
            }
            PromoteMethod::FailoverCommand => {
                // FAILOVER TO pauses, waits for the target's ACK and hands over by itself.
                m.enter(Step::Fence);
                let announced = &topology.node(target).endpoint;
                if let Err(e) = self.engine.failover_to(endpoint(old), announced).await {
                    self.clear_intent().await;
                    return Err(PromoteError::Preflight(e.to_string()));
                }
                m.finish(format!("FAILOVER TO {announced} sent to {}", name(old)));
                m.enter(Step::WaitCatchUp);
                let deadline = Instant::now() + catchup;
                while !self
                    .engine
                    .replication(endpoint(target))
                    .await
                    .is_ok_and(|i| i.is_primary())
                {
                    if Instant::now() >= deadline {
                        return Err(PromoteError::AfterPromote(
                            "FAILOVER did not complete".into(),
                            name(target),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                m.finish(format!("{} took over", name(target)));
            }
        }

        // The pause must outlast the rest of the switchover: check what is left of it right
        // before the point of no return, so the old primary cannot take a write after it.
        if method == PromoteMethod::Safe {
            let left = pause.saturating_sub(pause_started.elapsed());
            if left < PAUSE_MARGIN {
                return Err(self
                    .abort(
                        old,
                        PromoteError::Preflight(format!(
                            "only {} ms of the write pause left; retry",
                            left.as_millis()
                        )),
                    )
                    .await);
            }
        }

        // Point of no return. The old primary is demoted first, still paused, and the target
        // promoted only once it follows: if the old primary cannot be reached or refuses, nothing
        // changes (no second writer waits behind a pause that runs out). Its clients stay blocked
        // on the pause until Release; their writes then meet a replica.
        m.enter(Step::Promote);
        let required = History {
            replication_id: old_info.replication_id.clone(),
            offset: needed,
            parent: None,
        };
        let demotion = match method {
            PromoteMethod::Safe => {
                // Its config file is rewritten after the release, outside the pause. A restart
                // before that brings back the role its file names — a replica when the file follows
                // the rule that no file names a master; otherwise a master the next pass finds
                // outside the epoch and demotes (the window existed between REPLICAOF and REWRITE
                // before; it is longer now by the promotion, the commit and the release).
                let mut demotion = self.demote_in_memory(old, target, false).await;
                if !demotion.demoted {
                    if !self.follows(old, target).await {
                        let reason = demotion.error.clone().unwrap_or_default();
                        return Err(self
                            .abort(old, PromoteError::NotDemoted(name(old), reason))
                            .await);
                    }
                    // The command took effect; only its reply was lost.
                    demotion.demoted = true;
                }
                Some(demotion)
            }
            _ => None,
        };
        self.fault_point(crate::faults::FaultPoint::OldDemoted);
        let promoted = match method {
            PromoteMethod::FailoverCommand => Ok(()),
            _ => self.engine.promote(endpoint(target)).await,
        };
        if let Err(e) = promoted {
            // The target may or may not have executed it; do not guess.
            let still_replica = self
                .engine
                .replication(endpoint(target))
                .await
                .is_ok_and(|i| !i.is_primary());
            if still_replica && demotion.is_none() {
                return Err(self.abort(old, PromoteError::Aborted(e)).await);
            }
            if still_replica {
                // The old primary already follows the target: the intent stays, and the next
                // pass promotes the target (it holds everything) or lets failure detection decide.
                return Err(PromoteError::AfterPromote(e.to_string(), name(target)));
            }
        }
        self.fault_point(crate::faults::FaultPoint::TargetPromoted);
        // Blind: the old primary follows the new one afterwards (there is no pause to hold it).
        let demotion = match (method, demotion) {
            (PromoteMethod::Blind, _) => Some(self.demote(old, target, false).await),
            (_, demotion) => demotion,
        };
        let demoted = demotion.as_ref().is_none_or(|d| d.demoted);
        m.finish(format!(
            "{} is primary; {}",
            name(target),
            match &demotion {
                Some(d) if d.demoted => format!("{} follows it", name(old)),
                Some(d) => format!(
                    "{} could not be demoted and stays fenced: {}",
                    name(old),
                    d.error.clone().unwrap_or_default()
                ),
                None => String::new(),
            }
        ));

        // The one commit inside the pause: the new epoch and the records that lead the name to
        // the target, together.
        m.enter(Step::SwitchDns);
        let release = Some(old).filter(|_| method == PromoteMethod::Safe);
        let published = self
            .publish_writer(
                carried,
                Published {
                    epoch: new_epoch,
                    history: required,
                    block_until_ms,
                    release,
                    old,
                },
                &observations,
            )
            .await;
        let dns_detail = match &published {
            Ok(changed) => format!("epoch {}, {changed} record(s) changed", new_epoch.epoch),
            Err(PublishError::EpochNotRecorded(reason)) => {
                return Err(PromoteError::AfterPromote(
                    format!(
                        "cannot record the new epoch: {reason} (the intent stays; whoever acts next completes it)"
                    ),
                    name(target),
                ));
            }
            Err(PublishError::NameNotMoved(reason)) => {
                format!(
                    "epoch {} recorded; name not moved: {reason}",
                    new_epoch.epoch
                )
            }
        };
        m.finish(dns_detail.clone());

        // Clients still connected to the old primary reconnect, resolve the name again and land on
        // the new primary; their paused writes were never executed, so none is lost. A node that
        // could not be demoted is never unpaused: it stays fenced until a pass demotes it.
        m.enter(Step::Release);
        let (killed, unpaused) = self
            .release_clients(old, method == PromoteMethod::Safe && demoted)
            .await;
        let write_pause_ms = round(pause_started.elapsed().as_secs_f64() * 1000.0);
        let persisted = match (method, demoted) {
            (PromoteMethod::Safe, true) => self.persist_old_role(old).await,
            _ => false,
        };
        self.settle_release(old, &killed, persisted).await;
        m.finish(format!(
            "closed {} client connection(s) on {}, {}{}",
            killed
                .as_ref()
                .map(|n| n.to_string())
                .unwrap_or_else(|e| e.to_string()),
            name(old),
            match (method, demoted, unpaused) {
                (PromoteMethod::Safe, true, true) => "unpaused",
                (PromoteMethod::Safe, true, false) =>
                    "unpause failed (the pause expires by itself)",
                (PromoteMethod::Safe, false, _) => "kept paused: not demoted",
                _ => "no pause to lift",
            },
            if persisted {
                ", its role persisted"
            } else {
                ""
            }
        ));

        // Outside the pause: the other regions' replicas follow the new writer.
        m.enter(Step::Repoint);
        let mut repointed = Vec::new();
        for o in &observations {
            let follows_old = o
                .info()
                .and_then(|i| i.master())
                .and_then(|master| topology.node_by_any_address(master))
                == Some(old);
            let cross_region = topology.node(o.node).region != topology.node(old).region;
            if follows_old && cross_region && o.node != target {
                let source = topology.replication_endpoint(target, o.node);
                let mut result = self.engine.replicate_from(endpoint(o.node), &source).await;
                if result.is_ok() {
                    result = self.engine.persist_role(endpoint(o.node)).await;
                }
                match result {
                    Ok(()) => repointed.push(format!("{} → {source}", name(o.node))),
                    Err(e) => repointed.push(format!("{} failed: {e}", name(o.node))),
                }
            }
        }
        m.finish(repointed.join(", "));

        // Verify: passes until replication is healthy again (the demoted primary's partial
        // resync), which also publish every other name (readers, the old region's primary).
        m.enter(Step::Verify);
        let verify_deadline = Instant::now() + Duration::from_secs(3);
        let mut verified = self.reconcile_locked(carried).await;
        while !verified
            .as_ref()
            .is_ok_and(|p| p.analysis.is_healthy() && p.applied == 0)
            && Instant::now() < verify_deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
            verified = self.reconcile_locked(carried).await;
        }
        let detail = match &verified {
            Ok(pass) => pass
                .analysis
                .findings
                .iter()
                .map(|f| f.describe(topology))
                .collect::<Vec<_>>()
                .join("; "),
            Err(e) => format!("DNS error: {e}"),
        };
        m.finish(detail);
        let name_moved = match &published {
            Ok(_) => true,
            // The name moved after all if a pass of Verify moved it.
            Err(_) => verified
                .as_ref()
                .is_ok_and(|p| p.analysis.active_primary == Some(target)),
        };
        if !name_moved {
            return Err(PromoteError::AfterPromote(dns_detail, name(target)));
        }
        Ok(PromotionReport {
            from_region: topology.region_of(old).name.clone(),
            to_region: region.to_string(),
            old_primary: name(old),
            new_primary: name(target),
            epoch: new_epoch.epoch,
            method,
            write_pause_ms,
            total_ms: round(m.started.elapsed().as_secs_f64() * 1000.0),
            steps: m.steps.clone(),
        })
    }

    /// Whether `node` reports following `source` (a demotion whose reply was lost still counts).
    async fn follows(&self, node: NodeId, source: NodeId) -> bool {
        self.engine
            .replication(&self.topology.node(node).control_endpoint)
            .await
            .ok()
            .and_then(|i| i.master().cloned())
            .and_then(|master| self.topology.node_by_any_address(&master))
            == Some(source)
    }

    /// Undoes a switchover before its point of no return: unpause the old primary, then drop the
    /// intent (a commit outside the pause; if it fails, the next pass rolls the intent back, as
    /// the old primary is still the writer).
    async fn abort(&self, old: NodeId, error: PromoteError) -> PromoteError {
        if let Err(e) = self
            .engine
            .unpause(&self.topology.node(old).control_endpoint)
            .await
        {
            tracing::warn!(error = %e, "unpause after abort failed; the pause expires by itself");
        }
        self.clear_intent().await;
        error
    }
}

fn observed(
    observations: &[NodeObservation],
    node: NodeId,
) -> Option<&valkey_dr_core::ReplicationInfo> {
    info_of(observations, node)
}
