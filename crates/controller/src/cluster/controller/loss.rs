//! A slot-serving primary that came back without its data: reported as it is seen, and kept in
//! the cluster's state until an operator acknowledges it.

use super::*;

impl ClusterController {
    /// Keeps the last loss report in the state until an operator acknowledges it (`status`
    /// shows it after a restart or at another site's leadership).
    pub(super) async fn remember_loss(
        &self,
        state: ClusterState,
        lost: Option<serde_json::Value>,
    ) -> Result<ClusterState, ClusterError> {
        let Some(lost) = lost else {
            return Ok(state);
        };
        let next = ClusterState {
            data_loss: Some(lost),
            ..state
        };
        self.record(next.clone()).await?;
        Ok(next)
    }

    /// Reports every slot-serving primary that came back without its data since the histories
    /// were last remembered (`data_loss_suspected`: started empty without `cluster
    /// start-guard`, its replicas copy the empty dataset). Returns the last report, if any.
    /// The histories move on only in [`Self::remember_histories`], once the report is recorded:
    /// a pass that fails before (a state write refused) reports it again.
    pub(super) fn report_empty_primaries(
        &self,
        shards: &[Shard],
        observations: &[NodeObservation],
    ) -> Option<serde_json::Value> {
        let empty = {
            let last = self.last_pass.lock().unwrap_or_else(|e| e.into_inner());
            empty_primaries(&self.topology, shards, observations, &last.histories)
        };
        let mut reported = None;
        for empty in empty {
            let report = json!({
                    "node": self.topology.node_name(empty.node),
                    "slots": empty.slots,
                    "offset_before": empty.before.offset,
                    "offset": empty.now.offset,
                    "replication_id_before": empty.before.replication_id,
                    "replication_id": empty.now.replication_id,
                    "reason": "a primary came back without its data while still serving its slots (started without `valkey-dr cluster start-guard`): its replicas copy the empty dataset",
            });
            self.events
                .emit(EventKind::DataLossSuspected, report.clone());
            reported = Some(report);
        }
        reported
    }

    /// Remembers each answering node's history, against which the next pass finds a primary
    /// back empty.
    pub(super) fn remember_histories(&self, observations: &[NodeObservation]) {
        let mut last = self.last_pass.lock().unwrap_or_else(|e| e.into_inner());
        for seen in observations {
            if let Some(info) = seen.info() {
                last.histories.insert(seen.node, info.history());
            }
        }
    }
}
