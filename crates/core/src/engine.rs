//! What the controller needs from a cache engine: observe one node, and act on it. The controller
//! only sees this trait; each engine is its own crate (`crates/valkey` for self-hosted Valkey and
//! Redis OSS). Every operation names one node and must be bounded by a timeout, so that an
//! unreachable node never blocks a pass.

use std::time::Duration;

use async_trait::async_trait;

use crate::observation::{EpochMark, Failure, FailureKind, NodeObservation, ReplicationInfo};
use crate::topology::{Endpoint, NodeId};

#[derive(Debug, thiserror::Error)]
#[error("{node}: {operation} failed: {reason}")]
pub struct EngineError {
    pub node: Endpoint,
    pub operation: &'static str,
    /// What the failure says about the node, decided from the error's type.
    pub kind: FailureKind,
    pub reason: String,
    /// The node's error reply, when it answered with one.
    pub reply: Option<ErrorReply>,
}

/// An error reply from a live node, by its code: the ones the controller acts on by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorReply {
    /// `-MISCONF`: its last RDB save failed and `stop-writes-on-bgsave-error` makes it refuse
    /// writes — a problem of this node's disk, not of the data its replicas hold.
    Misconf,
    /// `-OOM`: over `maxmemory` under a no-eviction policy — the same data is as large on a
    /// replica.
    OutOfMemory,
    /// `-READONLY`: a replica.
    ReadOnly,
    /// `-NOREPLICAS`: fewer good replicas than `min-replicas-to-write`.
    NoReplicas,
    /// Any other (`-LOADING`, `-BUSY`, `-MASTERDOWN`, …).
    Other,
}

impl ErrorReply {
    /// The reply of an error code (the first word of `-CODE text`).
    pub fn from_code(code: &str) -> ErrorReply {
        match code {
            "MISCONF" => ErrorReply::Misconf,
            "OOM" => ErrorReply::OutOfMemory,
            "READONLY" => ErrorReply::ReadOnly,
            "NOREPLICAS" => ErrorReply::NoReplicas,
            _ => ErrorReply::Other,
        }
    }

    /// A writer that answers this to every write cannot take any: the name leads nowhere useful.
    pub fn refuses_writes(self) -> bool {
        matches!(self, ErrorReply::Misconf | ErrorReply::OutOfMemory)
    }
}

impl EngineError {
    /// The observation failure this error amounts to.
    pub fn failure(&self) -> Failure {
        Failure::new(self.kind, self.reason.clone())
    }
}

#[async_trait]
pub trait Engine: Send + Sync {
    /// The node's replication state, key count and heartbeat, or why it could not be read.
    async fn observe(&self, id: NodeId, node: &Endpoint) -> NodeObservation;
    /// Only the replication state (catch-up polls).
    async fn replication(&self, node: &Endpoint) -> Result<ReplicationInfo, EngineError>;
    /// The cheapest liveness probe.
    async fn ping(&self, node: &Endpoint) -> Result<(), EngineError>;
    /// Records `now_ms` and the epoch mark on the writer: replicas measure their lag in time with
    /// it, and every node carries the latest epoch beyond the controller's own state.
    async fn write_heartbeat(
        &self,
        node: &Endpoint,
        now_ms: u64,
        mark: &EpochMark,
    ) -> Result<(), EngineError>;
    /// Blocks writes (not reads, not replication) for at most `duration`; expires by itself.
    async fn pause_writes(&self, node: &Endpoint, duration: Duration) -> Result<(), EngineError>;
    /// [`Engine::pause_writes`], then the node's replication state as of the pause: the offset
    /// that every write it acknowledged is at (a switchover's fence). One round trip where the
    /// engine can pipeline the two.
    async fn pause_writes_and_read(
        &self,
        node: &Endpoint,
        duration: Duration,
    ) -> Result<ReplicationInfo, EngineError> {
        self.pause_writes(node, duration).await?;
        self.replication(node).await
    }
    async fn unpause(&self, node: &Endpoint) -> Result<(), EngineError>;
    /// The engine's own coordinated failover to `target` (a direct replica of `node`).
    async fn failover_to(&self, node: &Endpoint, target: &Endpoint) -> Result<(), EngineError>;
    /// Makes the node a primary.
    async fn promote(&self, node: &Endpoint) -> Result<(), EngineError>;
    /// Makes the node a replica of `source`.
    async fn replicate_from(&self, node: &Endpoint, source: &Endpoint) -> Result<(), EngineError>;
    /// Closes the node's normal and pub/sub client connections; returns how many.
    async fn kill_clients(&self, node: &Endpoint) -> Result<u64, EngineError>;
    /// [`Engine::kill_clients`], then lifts the write pause (a switchover's release): one round
    /// trip where the engine can pipeline the two.
    async fn kill_clients_and_unpause(&self, node: &Endpoint) -> Result<u64, EngineError> {
        let killed = self.kill_clients(node).await;
        self.unpause(node).await?;
        killed
    }
    /// Writes the node's current role to its config file, so that a restart keeps it, with the
    /// write quorum at rest ([`crate::self_fence::WriteQuorum::AT_REST`]): restarted empty as a
    /// master, it acknowledges nothing.
    async fn persist_role(&self, node: &Endpoint) -> Result<(), EngineError>;
    /// Sets the node's write quorum ([`crate::self_fence`]).
    async fn set_write_quorum(
        &self,
        node: &Endpoint,
        quorum: crate::self_fence::WriteQuorum,
    ) -> Result<(), EngineError>;
    /// The node's settings that decide how fast a replica copies what its master holds.
    async fn sync_settings(&self, node: &Endpoint) -> Result<SyncSettings, EngineError>;
    /// Makes the connection this engine acts on `node` with the one of the leader holding
    /// `token` (etcd's, which grows with every leadership): every connection of an earlier
    /// leader there is closed, so that a deposed leader whose clock stood still (a paused VM)
    /// and that still believes it may act fails on its next command; and a later leader's
    /// connection there refuses this one ([`crate::observation::FailureKind::Refused`]). Engines
    /// without connections to fence accept.
    async fn claim(&self, _node: &Endpoint, _token: i64) -> Result<(), EngineError> {
        Ok(())
    }
}

/// How a node serves full resyncs to its replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncSettings {
    /// `repl-diskless-sync yes`
    pub diskless: bool,
    /// `repl-diskless-sync-delay` (seconds)
    pub diskless_delay_s: u64,
    /// `repl-ping-replica-period` (seconds): how often a master that takes no write still sends
    /// its replicas a byte.
    pub ping_replica_period_s: u64,
    /// `replica-read-only yes`: a replica refuses writes (`-READONLY`) instead of keeping them
    /// where nobody reads them and its next sync discards them.
    pub replica_read_only: bool,
    /// `cluster-enabled yes`: a node of a Valkey cluster, which refuses `REPLICAOF`; its
    /// primaries move with `valkey-dr cluster switchover`, not with the controller.
    pub cluster_enabled: bool,
}

impl SyncSettings {
    /// Every way these settings weaken a safety rule of the controller.
    pub fn weaknesses(&self) -> Vec<&'static str> {
        let mut found: Vec<&'static str> = self.defeats_empty_restart_guard().into_iter().collect();
        if self.cluster_enabled {
            found.push(
                "cluster-enabled yes: a cluster node refuses REPLICAOF, so the controller, which manages one replication group, cannot fail it over or switch it; move a cluster's primaries with `valkey-dr cluster switchover` and watch them with `valkey-dr cluster status`",
            );
        }
        if !self.replica_read_only {
            found.push(
                "replica-read-only no: a demoted writer and every replica take the writes of clients that reach them (a stale DNS answer, a pooled connection) and lose them at their next sync; set replica-read-only yes",
            );
        }
        if self.ping_replica_period_s > 1 {
            found.push(
                "repl-ping-replica-period above 1 s: an idle writer's replicas hear from it that rarely, so a writer the controller cannot reach but its replicas still hear is not recognized as alive (the one-sided-view veto), and a quiet link counts as lost for the self-fence; set repl-ping-replica-period 1",
            );
        }
        found
    }

    /// Why these settings defeat the guard against a writer restarted empty as a master, if they
    /// do: its replicas would copy the emptiness before the controller's next pass.
    pub fn defeats_empty_restart_guard(&self) -> Option<&'static str> {
        if !self.diskless {
            Some(
                "repl-diskless-sync no: a writer restarted empty as a master writes an empty RDB in milliseconds and its replicas load it; use diskless sync with Valkey's default delay (5 s), or give every node's config file a replicaof line so that none restarts as a master",
            )
        } else if self.diskless_delay_s == 0 {
            Some(
                "repl-diskless-sync-delay 0: a writer restarted empty as a master is copied to its replicas at once; keep Valkey's default (5 s), or give every node's config file a replicaof line so that none restarts as a master",
            )
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_immediate_sync_defeats_the_guard() {
        let settings = |diskless, diskless_delay_s| SyncSettings {
            diskless,
            diskless_delay_s,
            ping_replica_period_s: 1,
            replica_read_only: true,
            cluster_enabled: false,
        };
        assert!(settings(true, 0).defeats_empty_restart_guard().is_some());
        assert!(settings(true, 5).defeats_empty_restart_guard().is_none());
        // Disk-based sync of an empty dataset is an empty RDB: as quick as no delay.
        assert!(settings(false, 5).defeats_empty_restart_guard().is_some());
    }

    #[test]
    fn valkeys_default_ping_period_is_reported() {
        let settings = |ping_replica_period_s| SyncSettings {
            diskless: true,
            diskless_delay_s: 5,
            ping_replica_period_s,
            replica_read_only: true,
            cluster_enabled: false,
        };
        assert!(settings(1).weaknesses().is_empty());
        let default = settings(10).weaknesses();
        assert_eq!(default.len(), 1);
        assert!(default[0].contains("repl-ping-replica-period 1"));
        let writable = SyncSettings {
            replica_read_only: false,
            ..settings(1)
        };
        assert!(writable.weaknesses()[0].contains("set replica-read-only yes"));
        let clustered = SyncSettings {
            cluster_enabled: true,
            ..settings(1)
        };
        assert!(clustered.weaknesses()[0].contains("valkey-dr cluster switchover"));
    }
}
