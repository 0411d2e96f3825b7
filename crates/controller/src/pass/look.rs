//! How a pass looks: every node observed (the writer read last when a replica seems ahead of
//! it), the DNS records, failure detection, and the state as read — one [`Snapshot`].

use std::time::{Duration, Instant};

use serde_json::json;
use valkey_dr_core::NodeObservation;

use super::plan::Snapshot;
use super::{Carried, PassError, all_refused};
use crate::Controller;
use crate::clock::now_ms;

/// How long a quick look waits for a node that was silent at the last look: enough for a node
/// that is back, far less than a connect timeout for one that is still gone.
const QUICK_PROBE: Duration = Duration::from_millis(100);

impl Controller {
    pub(super) async fn first_look(&self, carried: &mut Carried) -> Result<Snapshot, PassError> {
        let probed_at = Instant::now();
        let mut observations = self.observe_all().await;
        self.read_writer_last(&mut observations).await;
        if let Some(reason) = all_refused(&self.topology, &observations) {
            // Every node refuses us: our credentials or trust settings are wrong. Nothing can be
            // decided from that; fail the pass so the error policy backs off and reports it.
            return Err(PassError::Refused(reason));
        }
        let records = self.dns.records(&self.names.all(&self.topology)).await?;
        self.update_health(carried, &observations, probed_at);
        Ok(self.snapshot(carried, 1, observations, records))
    }

    /// After an action: the nodes that answered are asked again; silent ones are not waited for
    /// a second time (their failure stands); DNS was not touched, so its records stand too.
    pub(super) async fn look_again(&self, carried: &mut Carried, last: &Snapshot) -> Snapshot {
        let mut observations: Vec<NodeObservation> = self
            .observe_again(&last.observations, Duration::ZERO)
            .await
            .into_iter()
            .map(|(o, _)| o)
            .collect();
        self.read_writer_last(&mut observations).await;
        self.snapshot(carried, last.look + 1, observations, last.records.clone())
    }

    pub(super) async fn quick_look(
        &self,
        carried: &mut Carried,
        last: &Snapshot,
    ) -> Result<Snapshot, PassError> {
        let probed_at = Instant::now();
        let fresh = self.observe_again(&last.observations, QUICK_PROBE).await;
        let answered: Vec<NodeObservation> = fresh
            .iter()
            .filter(|(_, f)| *f)
            .map(|(o, _)| o.clone())
            .collect();
        self.update_health(carried, &answered, probed_at);
        let records = self.dns.records(&self.names.all(&self.topology)).await?;
        let mut observations: Vec<NodeObservation> = fresh.into_iter().map(|(o, _)| o).collect();
        self.read_writer_last(&mut observations).await;
        Ok(self.snapshot(carried, 1, observations, records))
    }

    /// Observes again the nodes that answered in `previous`; the silent ones only for
    /// `silent_within` (zero: not at all), keeping their failure when they stay silent. Each
    /// observation comes with whether it is fresh.
    async fn observe_again(
        &self,
        previous: &[NodeObservation],
        silent_within: Duration,
    ) -> Vec<(NodeObservation, bool)> {
        futures::future::join_all(previous.iter().map(|o| async move {
            let endpoint = &self.topology.node(o.node).control_endpoint;
            if o.state.is_ok() {
                (self.engine.observe(o.node, endpoint).await, true)
            } else if silent_within.is_zero() {
                (o.clone(), false)
            } else {
                match tokio::time::timeout(silent_within, self.engine.observe(o.node, endpoint))
                    .await
                {
                    Ok(now) => (now, true),
                    Err(_) => (o.clone(), false),
                }
            }
        }))
        .await
    }

    /// Nodes are read concurrently, so a replica read a moment after its writer may be ahead of
    /// it. When a replica seems ahead of the writer on the writer's own history (a writer
    /// restarted from an older file, [`valkey_dr_core::failover::went_back`]), the writer is read
    /// again, after them: a healthy writer then is never behind.
    pub(super) async fn read_writer_last(&self, observations: &mut [NodeObservation]) {
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
    pub(crate) fn update_health(
        &self,
        carried: &mut Carried,
        observations: &[NodeObservation],
        probed_at: Instant,
    ) {
        let now = Instant::now();
        let down_after = Duration::from_millis(self.config.controller.down_after_ms);
        self.apply_stall(carried);
        let health = &mut carried.health;
        for node in health.update(observations, probed_at, now, down_after) {
            if health.newly_down(node) {
                self.events.emit(
                    crate::events::EventKind::NodeDown,
                    json!({ "node": self.topology.node_name(node), "failing_ms": health.failing_for(node, now).map(|d| d.as_millis() as u64) }),
                );
            }
        }
    }

    /// A stall of this controller's clock ([`Controller::watch_clock`]) since the last look
    /// restarts every failing clock: probes that timed out meanwhile say nothing about the nodes.
    pub(crate) fn apply_stall(&self, carried: &mut Carried) {
        let resumed = *self.resumed_at.borrow();
        if resumed > carried.stall_applied
            && let Some(at) = resumed
        {
            carried.health.stalled(at);
            carried.stall_applied = resumed;
        }
    }

    pub(super) fn snapshot(
        &self,
        carried: &mut Carried,
        look: u8,
        observations: Vec<NodeObservation>,
        records: Vec<valkey_dr_core::RecordSet>,
    ) -> Snapshot {
        self.apply_stall(carried);
        let now = Instant::now();
        let state = self.state.get();
        let writer_refusal = carried
            .writer_refusal
            .as_ref()
            .filter(|r| state.as_ref().is_some_and(|s| s.epoch.primary == r.writer))
            .map(|r| (r.reply, now.saturating_duration_since(r.since)));
        let health = &carried.health;
        let down_after = Duration::from_millis(self.config.controller.down_after_ms);
        Snapshot {
            look,
            down: health.down(now, down_after),
            writer_failing_for: state
                .as_ref()
                .and_then(|s| health.failing_for(s.epoch.primary, now)),
            observations,
            state,
            remembered_writer: carried.last_writer.clone(),
            records,
            now_ms: now_ms(),
            first_pass: !carried.started,
            lineage_recorded_ms: carried.lineage_recorded_ms,
            writer_refusal,
        }
    }
}
