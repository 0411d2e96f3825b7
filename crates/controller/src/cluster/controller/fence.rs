//! Each pass sets every answering node's self-fence ([`write_quorums`]) and keeps the set of
//! armed nodes in the state.

use super::*;

impl ClusterController {
    /// Sets every answering node's self-fence ([`write_quorums`]), every pass; a change, or a
    /// node that refuses, is reported. Returns `state` with the nodes armed now (recorded when
    /// that changed; a node that did not answer keeps its mark).
    pub(super) async fn fence(
        &self,
        state: ClusterState,
        shards: &[Shard],
        observations: &[NodeObservation],
    ) -> ClusterState {
        let wanted = write_quorums(
            &self.topology,
            shards,
            observations,
            self.config.controller.writer_quorum_max_lag_s,
            self.config.controller.writes_need_a_replica,
        );
        {
            let mut known = self.quorums.lock().unwrap_or_else(|e| e.into_inner());
            known.retain(|node, _| wanted.iter().any(|(n, _)| n == node));
        }
        // Set on every node every pass, not only where it changed: a node restarted between two
        // passes (from a config file without it) answers as before, and only the setting
        // itself tells — one CONFIG SET per node per pass. Reported when it changes.
        let results = futures::future::join_all(wanted.iter().map(|(node, quorum)| {
            self.engine
                .set_write_quorum(&self.topology.node(*node).control_endpoint, *quorum)
        }))
        .await;
        for ((node, quorum), result) in wanted.into_iter().zip(results) {
            let in_force = result.is_ok();
            let before = self
                .quorums
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(node, (quorum, in_force));
            // Reported on a change, or once when a node keeps refusing it.
            if before != Some((quorum, in_force)) {
                self.events.emit(
                    EventKind::WriteQuorumSet,
                    json!({
                        "node": self.topology.node_name(node),
                        "replicas": quorum.replicas,
                        "max_lag_s": quorum.max_lag_s,
                        "armed": quorum.armed(),
                        "error": result.err().map(|e| e.to_string()),
                    }),
                );
            }
        }
        let in_force = self
            .quorums
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut armed = state.armed.clone();
        for (node, (quorum, took)) in &in_force {
            if *took && quorum.armed() {
                armed.insert(*node);
            } else if *took {
                armed.remove(node);
            }
        }
        let next = ClusterState { armed, ..state };
        // Not recorded: the next pass tries again; meanwhile a restart knows the older set.
        let _ = self.record(next.clone());
        next
    }
}
