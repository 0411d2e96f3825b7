//! The one place a pass acts: it takes a look ([`Snapshot`]), asks [`plan_actions`] what to do,
//! carries the actions out in order — the state change first, then the nodes — and looks again
//! after an action that changed something. Nothing here decides a rule; it checks only what must
//! still hold right before an action (a writer still silent, a majority of sites).

use std::time::Duration;

use serde_json::json;

use super::plan::{Action, Plan, Rules, Snapshot, plan_actions};
use super::{Carried, PassError, PassOutcome};
use crate::Controller;
use crate::clock::now_ms;
use crate::events::EventKind;

/// What one action did.
pub(super) enum Done {
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
            refusing_writer_after: Duration::from_millis(c.down_after_ms),
        }
    }

    /// One full pass: every node observed anew. Boxed, because a pass's switchover (a writer
    /// that refuses writes) runs passes of its own.
    pub(crate) fn reconcile_locked<'a>(
        &'a self,
        carried: &'a mut Carried,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<PassOutcome, PassError>> + Send + 'a>> {
        Box::pin(self.run_pass(carried, false))
    }

    /// A pass; `quick` after a pass that asked to be called again soon: it starts from that
    /// pass's last look and waits only briefly for the nodes that were silent then.
    pub(crate) async fn run_pass(
        &self,
        carried: &mut Carried,
        quick: bool,
    ) -> Result<PassOutcome, PassError> {
        let last = if quick {
            carried.last_look.take()
        } else {
            None
        };
        let mut snapshot = match last {
            Some(last) => self.quick_look(carried, &last).await?,
            None => self.first_look(carried).await?,
        };
        loop {
            let plan = plan_actions(&snapshot, &self.rules());
            self.report(carried, &snapshot, &plan);
            match self.execute(carried, &snapshot, &plan).await? {
                Next::LookAgain => snapshot = self.look_again(carried, &snapshot).await,
                Next::Finished {
                    applied,
                    retry_after,
                } => {
                    self.publish_pass(carried, Some(&snapshot.observations), None);
                    carried.last_look = Some(snapshot.clone());
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

    /// Reports what changed since the last look (each change once).
    fn report(&self, carried: &mut Carried, snapshot: &Snapshot, plan: &Plan) {
        self.note_changes(
            &mut carried.reported,
            &snapshot.observations,
            &plan.analysis,
        );
        if let Some(decision) = &plan.decision {
            self.note_decision(carried, decision);
        }
        self.note_conflicts(&mut carried.reported, &plan.conflicts);
    }

    /// Carries out the plan in order; stops to look again after an action that changed the
    /// nodes or the state.
    async fn execute(
        &self,
        carried: &mut Carried,
        snapshot: &Snapshot,
        plan: &Plan,
    ) -> Result<Next, PassError> {
        let mut applied = 0;
        let mut retry_after = None;
        for action in &plan.actions {
            match self.act(carried, snapshot, action).await? {
                Done::Changed if action.looks_again() => return Ok(Next::LookAgain),
                Done::Retry(after) => retry_after = Some(after),
                Done::Applied(n) => applied = n,
                Done::Changed | Done::Unchanged => {}
            }
        }
        self.complete_failover(carried, plan.epoch);
        Ok(Next::Finished {
            applied,
            retry_after,
        })
    }

    async fn act(
        &self,
        carried: &mut Carried,
        snapshot: &Snapshot,
        action: &Action,
    ) -> Result<Done, PassError> {
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
                let reported = &mut carried.reported;
                if reported.bootstrap_problem.as_ref() != Some(problem) {
                    self.events.emit(
                        crate::events::EventKind::BootstrapBlocked,
                        json!({ "region": self.topology.region(*region).name, "reason": problem }),
                    );
                    reported.bootstrap_problem = Some(problem.clone());
                }
                Done::Unchanged
            }
            Action::ResolveIntent {
                intent,
                resolution,
                source_answers,
                target_is_master,
            } => changed(
                self.resolve_intent(
                    carried,
                    intent,
                    *resolution,
                    *source_answers,
                    *target_is_master,
                )
                .await,
            ),
            Action::ReportLostWriter { writer, before } => {
                self.report_lost_writer(&mut carried.reported, observations, *writer, before);
                Done::Unchanged
            }
            Action::AcceptLoss {
                writer,
                before,
                now,
            } => changed(
                self.accept_loss(carried, *writer, before.as_ref(), now)
                    .await,
            ),
            Action::HoldLostWriter { writer, holder } => {
                changed(self.hold_lost_writer(*writer, *holder).await)
            }
            Action::Withhold { reason } => {
                self.note_withheld(&mut carried.reported, reason.clone());
                Done::Unchanged
            }
            Action::FailOver {
                from,
                target,
                kind,
                checks,
            } => {
                self.checked_fail_over(carried, observations, *from, *target, *kind, *checks)
                    .await
            }
            Action::FenceRogues { epoch, rogues } => {
                for (node, source) in rogues {
                    let demotion = self.demote(*node, *source, true).await;
                    self.report_fenced(&demotion, *epoch);
                    carried.reported.paused_rogues.remove(node);
                }
                Done::Changed
            }
            Action::PauseRogues { rogues } => {
                let hold = Duration::from_millis(self.config.controller.catchup_timeout_ms)
                    + Duration::from_secs(10);
                for node in rogues {
                    let endpoint = &self.topology.node(*node).control_endpoint;
                    let paused = self.engine.pause_writes(endpoint, hold).await;
                    let first = carried.reported.paused_rogues.insert(*node);
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
            Action::Release { node, close: false } => {
                self.settle_release(*node, &Ok(0), true).await;
                Done::Unchanged
            }
            Action::Release { node, close: true } => {
                let (killed, _) = self.release_clients(*node, true).await;
                let persisted = self.persist_old_role(*node).await;
                self.events.emit(
                    EventKind::OldPrimaryReleased,
                    json!({
                        "node": self.topology.node_name(*node),
                        "clients_closed": killed.as_ref().ok(),
                        "error": killed.as_ref().err().map(|e| e.to_string()),
                        "role_persisted": persisted,
                        "reason": "the switchover that demoted it did not close its clients (the controller died before)",
                    }),
                );
                self.settle_release(*node, &killed, persisted).await;
                Done::Unchanged
            }
            Action::PersistRole { node, rewrite } => {
                if (!*rewrite || self.persist_old_role(*node).await)
                    && let Err(e) = self.state.persist_done(*node).await
                {
                    self.state_write_failed(&e);
                }
                Done::Unchanged
            }
            Action::RememberWriter {
                writer,
                history,
                durable,
            } => {
                carried.last_writer = Some((*writer, history.clone()));
                if *durable {
                    match self.state.record_writer_history(history.clone()).await {
                        Ok(()) => {
                            carried.lineage_recorded_ms = Some(now_ms());
                        }
                        Err(e) => self.state_write_failed(&e),
                    }
                }
                Done::Unchanged
            }
            Action::LiftStalePause { writer } => {
                let endpoint = &self.topology.node(*writer).control_endpoint;
                let _ = self.engine.unpause(endpoint).await;
                carried.started = true;
                Done::Unchanged
            }
            Action::CheckSyncSettings => {
                self.check_sync_settings(&mut carried.settings_checked, observations)
                    .await;
                Done::Unchanged
            }
            Action::Heartbeat { writer, mark } => {
                let endpoint = &self.topology.node(*writer).control_endpoint;
                let written = self.engine.write_heartbeat(endpoint, now_ms(), mark).await;
                if let Err(e) = &written {
                    tracing::debug!(error = %e, "heartbeat not written");
                }
                self.note_refusal(carried, *writer, &written);
                Done::Unchanged
            }
            Action::KeepWriteQuorum { writer } => {
                self.keep_write_quorum(carried, observations, *writer).await;
                Done::Unchanged
            }
            Action::SwitchAway { target, reply } => {
                changed(self.switch_away(carried, *target, *reply).await)
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
}
