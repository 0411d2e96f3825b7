//! A scripted world of nodes in memory that records every action, so that the order of actions is
//! visible and faults (a node refusing REPLICAOF, a node going away) are cheap to inject. It
//! passes the engine battery ([`super::battery`]) like real Valkey does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use valkey_dr_core::engine::SyncSettings;
use valkey_dr_core::observation::{EpochMark, FailureKind};
use valkey_dr_core::self_fence::WriteQuorum;
use valkey_dr_core::{
    Endpoint, Engine, EngineError, ErrorReply, NodeId, NodeObservation, ReplicationInfo, Role,
};

#[derive(Debug, Clone)]
pub struct FakeNode {
    pub master: Option<Endpoint>,
    pub offset: u64,
    pub replication_id: String,
    pub replication_id2: String,
    /// Up to which offset `replication_id2` was this node's history (set at a promotion).
    pub replication_id2_until: Option<u64>,
    /// False: nothing listens (a dead process), every call fails as [`FailureKind::Gone`].
    pub up: bool,
    /// Up but never answering (stalled, or behind a cut): every call fails as
    /// [`FailureKind::Unreachable`].
    pub silent: bool,
    /// Writes are paused (`CLIENT PAUSE WRITE`): a heartbeat is not written.
    pub paused: bool,
    pub refuses_replicaof: bool,
    /// `CONFIG REWRITE` fails (its config file cannot be written).
    pub refuses_rewrite: bool,
    /// A replica whose link to its master is down although the master answers (it saw the
    /// master restart, or a partition between them).
    pub link_broken: bool,
    /// `min-replicas-to-write`: writes are refused with fewer replicas attached.
    pub min_replicas: u32,
    /// The last heartbeat written here or replicated from the master: time and epoch mark.
    pub heartbeat: Option<(u64, EpochMark)>,
    /// A slow node: every command takes effect (and answers) only this long after it is sent.
    pub answers_after: Duration,
    /// A master that answers every write with this error reply (`-MISCONF` after a failed
    /// snapshot, `-OOM` over `maxmemory`).
    pub refuses_writes: Option<ErrorReply>,
}

impl FakeNode {
    /// A master on history `replication_id` at `offset`, taking writes.
    pub fn primary(replication_id: &str, offset: u64) -> FakeNode {
        FakeNode {
            master: None,
            offset,
            replication_id: replication_id.into(),
            replication_id2: "0000".into(),
            replication_id2_until: None,
            up: true,
            silent: false,
            paused: false,
            refuses_replicaof: false,
            refuses_rewrite: false,
            link_broken: false,
            min_replicas: 0,
            heartbeat: None,
            answers_after: Duration::ZERO,
            refuses_writes: None,
        }
    }

    /// A replica of `master`, caught up with it at `offset` on `replication_id`.
    pub fn replica_of(master: &Endpoint, replication_id: &str, offset: u64) -> FakeNode {
        FakeNode {
            master: Some(master.clone()),
            ..FakeNode::primary(replication_id, offset)
        }
    }
}

#[derive(Default)]
pub struct World {
    pub nodes: HashMap<Endpoint, FakeNode>,
    /// Every action, in order: "PROMOTE 127.0.1.2:6379", "PAUSE …", …
    pub log: Vec<String>,
    next_id: u32,
}

impl World {
    /// The nodes that replicate from `master`, directly or through others, and are up.
    fn replicas_below(&self, master: &Endpoint) -> Vec<Endpoint> {
        let mut below = Vec::new();
        let mut frontier = vec![master.clone()];
        while let Some(m) = frontier.pop() {
            for (e, n) in &self.nodes {
                if n.up && n.master.as_ref() == Some(&m) && !below.contains(e) {
                    below.push(e.clone());
                    frontier.push(e.clone());
                }
            }
        }
        below
    }
}

#[derive(Clone, Default)]
pub struct FakeEngine(Arc<Mutex<World>>);

impl FakeEngine {
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.0.lock().expect("fake world lock")
    }

    pub fn insert(&self, endpoint: Endpoint, node: FakeNode) {
        self.world().nodes.insert(endpoint, node);
    }

    /// Changes one node (to inject a fault or a restart).
    pub fn set(&self, endpoint: &Endpoint, change: impl FnOnce(&mut FakeNode)) {
        if let Some(node) = self.world().nodes.get_mut(endpoint) {
            change(node);
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.world().log.clone()
    }

    fn node(&self, endpoint: &Endpoint) -> Result<FakeNode, EngineError> {
        match self.world().nodes.get(endpoint) {
            Some(n) if n.up && n.silent => Err(error(
                endpoint,
                "connect",
                FailureKind::Unreachable,
                "timed out",
            )),
            Some(n) if n.up => Ok(n.clone()),
            _ => Err(error(
                endpoint,
                "connect",
                FailureKind::Gone,
                "connection refused",
            )),
        }
    }

    /// The node as a command finds it when it arrives ([`FakeNode::answers_after`]).
    async fn reach(&self, endpoint: &Endpoint) -> Result<FakeNode, EngineError> {
        let delay = self.node(endpoint)?.answers_after;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.node(endpoint)
    }

    fn act(&self, what: &str, endpoint: &Endpoint) {
        self.world().log.push(format!("{what} {endpoint}"));
    }
}

fn error(
    endpoint: &Endpoint,
    operation: &'static str,
    kind: FailureKind,
    reason: &str,
) -> EngineError {
    EngineError {
        node: endpoint.clone(),
        operation,
        kind,
        reason: reason.into(),
        reply: None,
    }
}

#[async_trait]
impl Engine for FakeEngine {
    async fn observe(&self, id: NodeId, node: &Endpoint) -> NodeObservation {
        let heartbeat = self.node(node).ok().and_then(|n| n.heartbeat);
        NodeObservation {
            node: id,
            state: self.replication(node).await.map_err(|e| e.failure()),
            keys: Some(1),
            heartbeat_ms: heartbeat.as_ref().map(|(at, _)| *at),
            epoch_mark: heartbeat.map(|(_, mark)| mark),
        }
    }

    async fn replication(&self, endpoint: &Endpoint) -> Result<ReplicationInfo, EngineError> {
        let node = self.reach(endpoint).await?;
        let world = self.world();
        let role = match &node.master {
            None => Role::Primary,
            Some(master) => Role::Replica {
                master: master.clone(),
                link_up: !node.link_broken && world.nodes.get(master).is_some_and(|m| m.up),
                sync_in_progress: false,
            },
        };
        let connected_replicas = world
            .nodes
            .values()
            .filter(|n| n.up && n.master.as_ref() == Some(endpoint))
            .count() as u32;
        Ok(ReplicationInfo {
            role,
            offset: node.offset,
            replication_id: node.replication_id,
            replication_id2: node.replication_id2,
            replication_id2_until: node.replication_id2_until,
            connected_replicas,
            master_last_io_s: node.master.as_ref().map(|_| 0),
        })
    }

    async fn ping(&self, node: &Endpoint) -> Result<(), EngineError> {
        self.reach(node).await.map(|_| ())
    }

    async fn write_heartbeat(
        &self,
        endpoint: &Endpoint,
        now_ms: u64,
        mark: &EpochMark,
    ) -> Result<(), EngineError> {
        let node = self.reach(endpoint).await?;
        let refused = |reason| {
            Err(error(
                endpoint,
                "MSET heartbeat",
                FailureKind::Refused,
                reason,
            ))
        };
        if node.master.is_some() {
            return refused("READONLY You can't write against a read only replica.");
        }
        if node.paused {
            return refused("timed out: writes are paused");
        }
        if let Some(reply) = node.refuses_writes {
            return Err(EngineError {
                reply: Some(reply),
                ..error(
                    endpoint,
                    "MSET heartbeat",
                    FailureKind::Unusable,
                    "the node refuses writes",
                )
            });
        }
        let mut world = self.world();
        let attached = world
            .nodes
            .values()
            .filter(|n| n.up && n.master.as_ref() == Some(endpoint))
            .count() as u32;
        if attached < node.min_replicas {
            return refused("NOREPLICAS Not enough good replicas to write.");
        }
        // Written here and replicated, at once, to every node below.
        for e in std::iter::once(endpoint.clone()).chain(world.replicas_below(endpoint)) {
            if let Some(n) = world.nodes.get_mut(&e) {
                n.heartbeat = Some((now_ms, mark.clone()));
            }
        }
        Ok(())
    }

    async fn pause_writes(&self, endpoint: &Endpoint, _: Duration) -> Result<(), EngineError> {
        self.reach(endpoint).await?;
        self.act("PAUSE", endpoint);
        self.set(endpoint, |n| n.paused = true);
        Ok(())
    }

    async fn unpause(&self, endpoint: &Endpoint) -> Result<(), EngineError> {
        self.reach(endpoint).await?;
        self.act("UNPAUSE", endpoint);
        self.set(endpoint, |n| n.paused = false);
        Ok(())
    }

    async fn failover_to(&self, node: &Endpoint, _: &Endpoint) -> Result<(), EngineError> {
        Err(error(
            node,
            "FAILOVER",
            FailureKind::Refused,
            "not modelled by the fake",
        ))
    }

    async fn promote(&self, endpoint: &Endpoint) -> Result<(), EngineError> {
        let node = self.reach(endpoint).await?;
        self.act("PROMOTE", endpoint);
        if node.master.is_none() {
            return Ok(());
        }
        let mut world = self.world();
        world.next_id += 1;
        let id = format!("promoted-{}", world.next_id);
        let node = world.nodes.get_mut(endpoint).expect("checked above");
        node.master = None;
        node.replication_id2 = std::mem::replace(&mut node.replication_id, id);
        node.replication_id2_until = Some(node.offset);
        Ok(())
    }

    /// Follows `source` and catches up with it at once (its data, history and heartbeat).
    async fn replicate_from(
        &self,
        endpoint: &Endpoint,
        source: &Endpoint,
    ) -> Result<(), EngineError> {
        let node = self.reach(endpoint).await?;
        if node.refuses_replicaof {
            self.act("REPLICAOF-REFUSED", endpoint);
            return Err(error(endpoint, "REPLICAOF", FailureKind::Refused, "NOPERM"));
        }
        self.act("REPLICAOF", endpoint);
        let mut world = self.world();
        let (offset, id, heartbeat) = world
            .nodes
            .get(source)
            .map(|s| (s.offset, s.replication_id.clone(), s.heartbeat.clone()))
            .unwrap_or_default();
        let node = world.nodes.get_mut(endpoint).expect("checked above");
        node.master = Some(source.clone());
        node.link_broken = false;
        node.offset = offset;
        node.replication_id = id;
        node.heartbeat = heartbeat;
        Ok(())
    }

    async fn kill_clients(&self, endpoint: &Endpoint) -> Result<u64, EngineError> {
        self.reach(endpoint).await?;
        self.act("KILL-CLIENTS", endpoint);
        Ok(0)
    }

    /// Like Valkey's `CONFIG REWRITE` after setting the quorum at rest: in force at once too.
    async fn persist_role(&self, endpoint: &Endpoint) -> Result<(), EngineError> {
        let node = self.reach(endpoint).await?;
        if node.refuses_rewrite {
            return Err(error(
                endpoint,
                "CONFIG REWRITE",
                FailureKind::Unusable,
                "Rewriting config file: Permission denied",
            ));
        }
        self.act("REWRITE", endpoint);
        self.set(endpoint, |n| n.min_replicas = WriteQuorum::AT_REST.replicas);
        Ok(())
    }

    async fn sync_settings(&self, endpoint: &Endpoint) -> Result<SyncSettings, EngineError> {
        self.reach(endpoint).await?;
        Ok(SyncSettings {
            diskless: true,
            diskless_delay_s: 5,
            ping_replica_period_s: 1,
            replica_read_only: true,
            cluster_enabled: false,
        })
    }

    async fn set_write_quorum(
        &self,
        endpoint: &Endpoint,
        quorum: WriteQuorum,
    ) -> Result<(), EngineError> {
        self.reach(endpoint).await?;
        self.act(&format!("QUORUM {}", quorum.replicas), endpoint);
        self.set(endpoint, |n| n.min_replicas = quorum.replicas);
        Ok(())
    }
}
