//! `valkey-dr cluster start-guard NODE`: run before a cluster node without persistence starts
//! (a supervisor's `ExecStartPre=`). It returns once the node may come back empty — no other node
//! counts it as serving slots any more ([`start_verdict`]) — and fails after `wait` while one
//! still does, so that the supervisor tries again later instead of starting a primary whose
//! replicas would full-sync its empty dataset.

use std::time::{Duration, Instant};

use futures::future::join_all;
use valkey_dr_core::cluster::{StartVerdict, start_verdict};
use valkey_dr_core::{Config, Endpoint, Topology};

/// How often the other nodes are asked while the guard waits.
const ASK_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum StartGuardError {
    #[error("{0} is not a node of the configuration (`[[regions]]` … `nodes`)")]
    UnknownNode(String),
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),
    /// The node must not start yet; asking again later is the way on.
    #[error(
        "not started: {listed_by} still count(s) it as the primary of slots {slots} after {waited_s} s, and its replicas hold the shard's data — started empty now, they would full-sync its empty dataset. A replica beside it takes the shard over once `cluster-node-timeout` has passed when the cluster may promote one (`cluster-replica-no-failover no`); otherwise run `CLUSTER FAILOVER TAKEOVER` on the replica to keep, then start it"
    )]
    NotReplaced {
        slots: String,
        listed_by: String,
        waited_s: u64,
    },
}

/// Waits until `node` (its address as configured) may start empty: `Ok(Start)` as soon as every
/// other node that answers counts it as serving no slot; `Ok(NoneAnswered)` when no other node
/// answered during the whole of `wait` (a whole-cluster restart: nothing reachable to wipe);
/// [`StartGuardError::NotReplaced`] when one still counts it as a slot's primary after `wait`.
/// `on_wait` sees the first verdict that makes it wait.
pub async fn start_guard(
    config: &Config,
    node: &str,
    wait: Duration,
    mut on_wait: impl FnMut(&StartVerdict),
) -> Result<StartVerdict, StartGuardError> {
    let topology = Topology::from_config(config);
    let starting = Endpoint::parse(node)
        .ok()
        .and_then(|e| topology.node_by_any_address(&e))
        .ok_or_else(|| StartGuardError::UnknownNode(node.to_string()))?;
    let engine = super::engine(config)?;
    let others: Vec<_> = topology.nodes.iter().filter(|n| n.id != starting).collect();
    let starting = &topology.node(starting).endpoint;
    let started = Instant::now();
    let mut told = false;
    loop {
        let views: Vec<(Endpoint, Option<_>)> = join_all(others.iter().map(|n| async {
            let shards = engine.cluster_nodes(&n.control_endpoint).await.ok();
            (n.endpoint.clone(), shards)
        }))
        .await;
        let verdict = start_verdict(starting, &views);
        if verdict == StartVerdict::Start {
            return Ok(verdict);
        }
        if started.elapsed() >= wait {
            return match verdict {
                StartVerdict::Wait { slots, listed_by } => Err(StartGuardError::NotReplaced {
                    slots,
                    listed_by: listed_by.join(", "),
                    waited_s: started.elapsed().as_secs(),
                }),
                other => Ok(other),
            };
        }
        if !told {
            on_wait(&verdict);
            told = true;
        }
        tokio::time::sleep(ASK_EVERY).await;
    }
}
