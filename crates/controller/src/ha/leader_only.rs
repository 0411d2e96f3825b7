//! The engine as the leader uses it: a decorator that refuses every action on a node once this
//! controller may no longer act (observing is always allowed).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use valkey_dr_coord::LeaderCell;
use valkey_dr_core::engine::SyncSettings;
use valkey_dr_core::observation::{EpochMark, FailureKind, NodeObservation, ReplicationInfo};
use valkey_dr_core::{Endpoint, Engine, EngineError, NodeId};

/// The engine as the leader uses it: every action on a node first checks that this controller
/// still may act (observing is always allowed). A controller that lost the lease mid-pass stops
/// at the next action instead of finishing on a stale view.
pub struct LeaderOnly {
    pub inner: Arc<dyn Engine>,
    pub leader: Arc<LeaderCell>,
}

impl LeaderOnly {
    fn check(&self, node: &Endpoint, operation: &'static str) -> Result<(), EngineError> {
        if self.leader.is_leader() {
            Ok(())
        } else {
            Err(EngineError {
                node: node.clone(),
                operation,
                kind: FailureKind::Refused,
                reason: "this controller is not the leader".into(),
            })
        }
    }
}

#[async_trait]
impl Engine for LeaderOnly {
    async fn observe(&self, id: NodeId, node: &Endpoint) -> NodeObservation {
        self.inner.observe(id, node).await
    }
    async fn replication(&self, node: &Endpoint) -> Result<ReplicationInfo, EngineError> {
        self.inner.replication(node).await
    }
    async fn ping(&self, node: &Endpoint) -> Result<(), EngineError> {
        self.inner.ping(node).await
    }
    async fn write_heartbeat(
        &self,
        node: &Endpoint,
        now_ms: u64,
        mark: &EpochMark,
    ) -> Result<(), EngineError> {
        self.check(node, "heartbeat")?;
        self.inner.write_heartbeat(node, now_ms, mark).await
    }
    async fn pause_writes(&self, node: &Endpoint, duration: Duration) -> Result<(), EngineError> {
        self.check(node, "pause")?;
        self.inner.pause_writes(node, duration).await
    }
    async fn unpause(&self, node: &Endpoint) -> Result<(), EngineError> {
        self.check(node, "unpause")?;
        self.inner.unpause(node).await
    }
    async fn failover_to(&self, node: &Endpoint, target: &Endpoint) -> Result<(), EngineError> {
        self.check(node, "failover")?;
        self.inner.failover_to(node, target).await
    }
    async fn promote(&self, node: &Endpoint) -> Result<(), EngineError> {
        self.check(node, "promote")?;
        self.inner.promote(node).await
    }
    async fn replicate_from(&self, node: &Endpoint, source: &Endpoint) -> Result<(), EngineError> {
        self.check(node, "replicaof")?;
        self.inner.replicate_from(node, source).await
    }
    async fn kill_clients(&self, node: &Endpoint) -> Result<u64, EngineError> {
        self.check(node, "kill clients")?;
        self.inner.kill_clients(node).await
    }
    async fn persist_role(&self, node: &Endpoint) -> Result<(), EngineError> {
        self.check(node, "config rewrite")?;
        self.inner.persist_role(node).await
    }
    async fn sync_settings(&self, node: &Endpoint) -> Result<SyncSettings, EngineError> {
        self.inner.sync_settings(node).await
    }
    async fn set_write_quorum(
        &self,
        node: &Endpoint,
        quorum: valkey_dr_core::self_fence::WriteQuorum,
    ) -> Result<(), EngineError> {
        self.check(node, "config set")?;
        self.inner.set_write_quorum(node, quorum).await
    }
}
