//! Each pass sets every answering node's self-fence ([`write_quorums`]) where the node's own
//! setting, read with the shards, differs from it, and keeps the set of armed nodes in the state.

use super::*;

impl ClusterController {
    /// Sets each answering node's self-fence ([`write_quorums`]) where its own setting differs
    /// (a node restarted from a config file without it shows so); a change, or a node that
    /// refuses, is reported once. Returns `state` with the nodes armed now (recorded when that
    /// changed; a node that did not answer keeps its mark).
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
            state.epoch.writer_region,
            self.config.controller.writer_quorum_max_lag_s,
            self.config.controller.writes_need_a_replica,
        );
        let read = |node: NodeId| {
            shards
                .iter()
                .flat_map(|s| &s.nodes)
                .filter(|n| self.topology.node_by_any_address(&n.endpoint) == Some(node))
                .find_map(|n| n.write_quorum)
        };
        let changes: Vec<(NodeId, WriteQuorum)> = wanted
            .iter()
            .copied()
            .filter(|(node, quorum)| read(*node) != Some(*quorum))
            .collect();
        let results = futures::future::join_all(changes.iter().map(|(node, quorum)| {
            self.engine
                .set_write_quorum(&self.topology.node(*node).control_endpoint, *quorum)
        }))
        .await;
        let mut refused = std::collections::HashMap::new();
        for ((node, _), result) in changes.iter().zip(results) {
            if let Err(e) = result {
                refused.insert(*node, e.to_string());
            }
        }
        let mut armed = state.armed.clone();
        // The guard is gone before the state is recorded (an await).
        {
            let mut known = self.quorums.lock().unwrap_or_else(|e| e.into_inner());
            known.retain(|node, _| wanted.iter().any(|(n, _)| n == node));
            for (node, quorum) in wanted {
                let in_force = if refused.contains_key(&node) {
                    read(node)
                } else {
                    Some(quorum)
                };
                if in_force.is_some_and(|q| q.armed()) {
                    armed.insert(node);
                } else {
                    armed.remove(&node);
                }
                let entry = (quorum, in_force == Some(quorum));
                if known.insert(node, entry) != Some(entry) {
                    self.events.emit(
                        EventKind::WriteQuorumSet,
                        json!({
                            "node": self.topology.node_name(node),
                            "replicas": quorum.replicas,
                            "max_lag_s": quorum.max_lag_s,
                            "armed": quorum.armed(),
                            "error": refused.get(&node),
                        }),
                    );
                }
            }
        }
        let next = ClusterState { armed, ..state };
        // Not recorded: the next pass tries again; meanwhile a restart knows the older set.
        let _ = self.record(next.clone()).await;
        next
    }
}
