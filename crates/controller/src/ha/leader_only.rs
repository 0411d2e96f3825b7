//! The engine as the leader uses it: a decorator that refuses every action on a node once this
//! controller may no longer act (observing is always allowed), and acts on a node only over a
//! connection claimed for its leadership ([`Engine::claim`]): a later leader closes it, so a
//! deposed leader whose clock stood still fails on the node instead of acting.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use valkey_dr_coord::LeaderCell;
use valkey_dr_core::engine::SyncSettings;
use valkey_dr_core::observation::{EpochMark, FailureKind, NodeObservation, ReplicationInfo};
use valkey_dr_core::{Endpoint, Engine, EngineError, NodeId};

/// The engine as the leader uses it: every action on a node first checks that this controller
/// still may act (observing is always allowed), and is abandoned when its lease window ends before
/// the node answered — a connection still being opened then never sends the command. A controller
/// that lost the lease mid-pass stops at the next action instead of finishing on a stale view.
pub struct LeaderOnly {
    pub inner: Arc<dyn Engine>,
    pub leader: Arc<LeaderCell>,
}

impl LeaderOnly {
    fn refused(node: &Endpoint, operation: &'static str, reason: &str) -> EngineError {
        EngineError {
            node: node.clone(),
            operation,
            kind: FailureKind::Refused,
            reason: reason.into(),
            reply: None,
        }
    }

    /// Runs `action` while this controller may act: refused when it may not, abandoned (its
    /// future dropped) when the window ends first. A renewal meanwhile extends the window. A new
    /// leader's first actions wait until its predecessor has surely stopped
    /// ([`valkey_dr_coord::Claim::acts_from`]).
    async fn within_lease<T>(
        &self,
        node: &Endpoint,
        operation: &'static str,
        action: impl Future<Output = Result<T, EngineError>>,
    ) -> Result<T, EngineError> {
        self.after_predecessor().await;
        self.while_leading(node, operation, action).await
    }

    /// Waits out the predecessor's last window, once per leadership (the wait is over for
    /// every later action of it).
    async fn after_predecessor(&self) {
        if let Some(fence) = self.leader.fence()
            && fence.acts_from > std::time::Instant::now()
        {
            tokio::time::sleep_until(tokio::time::Instant::from_std(fence.acts_from)).await;
        }
    }

    async fn while_leading<T>(
        &self,
        node: &Endpoint,
        operation: &'static str,
        action: impl Future<Output = Result<T, EngineError>>,
    ) -> Result<T, EngineError> {
        let mut action = std::pin::pin!(action);
        let mut started = false;
        loop {
            let Some(fence) = self.leader.fence() else {
                let reason = if started {
                    "this controller's lease window ended before the node answered"
                } else {
                    "this controller is not the leader"
                };
                return Err(LeaderOnly::refused(node, operation, reason));
            };
            let until = tokio::time::Instant::from_std(fence.act_until);
            if !started {
                // The node's connection is this leadership's before anything is sent on it: an
                // earlier leader's is closed there, and a later leader's refuses us.
                match tokio::time::timeout_at(until, self.inner.claim(node, fence.token)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_) => continue,
                }
            }
            started = true;
            if let Ok(result) = tokio::time::timeout_at(until, &mut action).await {
                return result;
            }
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
        // A heartbeat changes no role and no client's access: it need not wait for the
        // predecessor, and keeps the replicas' lag measured across a change of leader.
        self.while_leading(
            node,
            "heartbeat",
            self.inner.write_heartbeat(node, now_ms, mark),
        )
        .await
    }
    async fn pause_writes(&self, node: &Endpoint, duration: Duration) -> Result<(), EngineError> {
        self.within_lease(node, "pause", self.inner.pause_writes(node, duration))
            .await
    }
    async fn pause_writes_and_read(
        &self,
        node: &Endpoint,
        duration: Duration,
    ) -> Result<ReplicationInfo, EngineError> {
        self.within_lease(
            node,
            "pause",
            self.inner.pause_writes_and_read(node, duration),
        )
        .await
    }
    async fn unpause(&self, node: &Endpoint) -> Result<(), EngineError> {
        self.within_lease(node, "unpause", self.inner.unpause(node))
            .await
    }
    async fn failover_to(&self, node: &Endpoint, target: &Endpoint) -> Result<(), EngineError> {
        self.within_lease(node, "failover", self.inner.failover_to(node, target))
            .await
    }
    async fn promote(&self, node: &Endpoint) -> Result<(), EngineError> {
        self.within_lease(node, "promote", self.inner.promote(node))
            .await
    }
    async fn replicate_from(&self, node: &Endpoint, source: &Endpoint) -> Result<(), EngineError> {
        self.within_lease(node, "replicaof", self.inner.replicate_from(node, source))
            .await
    }
    async fn kill_clients(&self, node: &Endpoint) -> Result<u64, EngineError> {
        self.within_lease(node, "kill clients", self.inner.kill_clients(node))
            .await
    }
    async fn kill_clients_and_unpause(&self, node: &Endpoint) -> Result<u64, EngineError> {
        self.within_lease(
            node,
            "kill clients, unpause",
            self.inner.kill_clients_and_unpause(node),
        )
        .await
    }
    async fn persist_role(&self, node: &Endpoint) -> Result<(), EngineError> {
        self.within_lease(node, "config rewrite", self.inner.persist_role(node))
            .await
    }
    async fn sync_settings(&self, node: &Endpoint) -> Result<SyncSettings, EngineError> {
        self.inner.sync_settings(node).await
    }
    async fn claim(&self, node: &Endpoint, token: i64) -> Result<(), EngineError> {
        self.inner.claim(node, token).await
    }
    async fn set_write_quorum(
        &self,
        node: &Endpoint,
        quorum: valkey_dr_core::self_fence::WriteQuorum,
    ) -> Result<(), EngineError> {
        self.within_lease(
            node,
            "config set",
            self.inner.set_write_quorum(node, quorum),
        )
        .await
    }
}
