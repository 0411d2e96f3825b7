//! The switchover's steps, the record of each step as it runs (an event per step, a fault
//! point after each), and what a switchover reports or why it stopped.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;
use valkey_dr_core::EngineError;

use crate::Controller;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Preflight,
    Fence,
    WaitCatchUp,
    Promote,
    SwitchDns,
    Release,
    Repoint,
    Verify,
}

/// How the writer is moved. Only `Safe` is loss-free; the others exist to measure it against
/// (`bench/failover`): `Blind` promotes without pausing the old writer, `FailoverCommand` uses
/// Valkey's own `FAILOVER TO`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromoteMethod {
    #[default]
    Safe,
    Blind,
    FailoverCommand,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: Step,
    pub started: String,
    pub duration_ms: f64,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromotionReport {
    pub from_region: String,
    pub to_region: String,
    pub old_primary: String,
    pub new_primary: String,
    pub epoch: u64,
    pub method: PromoteMethod,
    /// How long writes were paused on the old primary.
    pub write_pause_ms: f64,
    pub total_ms: f64,
    pub steps: Vec<StepRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error("unknown region \"{0}\"")]
    UnknownRegion(String),
    #[error("preflight failed, nothing was changed: {0}")]
    Preflight(String),
    #[error(
        "aborted: {target} did not catch up within {timeout_ms} ms ({behind} bytes behind); writes on {old} were unpaused, nothing else was changed"
    )]
    CatchUpTimeout {
        target: String,
        old: String,
        behind: u64,
        timeout_ms: u64,
    },
    #[error("aborted before promotion, writes on the old primary were unpaused: {0}")]
    Aborted(EngineError),
    #[error("promotion to {target} failed after the new epoch was recorded ({0}); the controller keeps reconciling", target = .1)]
    AfterPromote(String, String),
    #[error(
        "aborted: the old primary {0} could not be demoted ({1}); it stays the writer, writes on it were unpaused, nothing else was changed"
    )]
    NotDemoted(String, String),
}

/// Records the steps of one switchover as they run.
pub(super) struct Machine<'a> {
    pub(super) controller: &'a Controller,
    pub(super) started: Instant,
    pub(super) steps: Vec<StepRecord>,
    pub(super) current: Option<(Step, Instant, String)>,
    pub(super) region: String,
}

impl Machine<'_> {
    pub(super) fn enter(&mut self, step: Step) {
        self.finish(String::new());
        self.current = Some((step, Instant::now(), crate::clock::now_rfc3339()));
        self.controller.events.emit(
            crate::events::EventKind::PromotionStep,
            json!({ "step": step, "state": "started", "region": self.region }),
        );
    }

    pub(super) fn finish(&mut self, detail: String) {
        if let Some((step, at, started)) = self.current.take() {
            let duration_ms = at.elapsed().as_secs_f64() * 1000.0;
            self.controller.events.emit(
                crate::events::EventKind::PromotionStep,
                json!({ "step": step, "state": "done", "region": self.region, "duration_ms": round(duration_ms), "detail": detail }),
            );
            self.steps.push(StepRecord {
                step,
                started,
                duration_ms: round(duration_ms),
                detail,
            });
            self.controller
                .fault_point(crate::faults::FaultPoint::StepDone(step));
        }
    }
}
pub(super) fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}
