//! Cluster mode, read-only so far: the shards of a Valkey cluster stretched over the configured
//! regions, discovered from whichever configured node answers first, and placed in their
//! regions with what is wrong ([`valkey_dr_core::cluster::shard_views`]).

use std::time::Duration;

use serde::Serialize;
use valkey_dr_core::cluster::{ShardView, shard_views, uncovered_slots};
use valkey_dr_core::{Config, Topology};
use valkey_dr_valkey::{Timeouts, ValkeyEngine};

/// What `valkey-dr cluster status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// The node whose view this is.
    pub asked: String,
    /// Where the primaries belong (the configured primary region).
    pub writer_region: String,
    /// In slot order.
    pub shards: Vec<ShardView>,
    /// Slots no shard serves (`start-end`): the cluster refuses them.
    pub uncovered_slots: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterStatusError {
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),
    #[error("no configured node answered CLUSTER SHARDS:\n{0}")]
    NoNodeAnswered(String),
}

/// Asks the configured nodes in order until one answers `CLUSTER SHARDS`.
pub async fn cluster_status(config: &Config) -> Result<ClusterStatus, ClusterStatusError> {
    let topology = Topology::from_config(config);
    let engine = ValkeyEngine::new(
        Timeouts {
            connect: Duration::from_millis(config.controller.connect_timeout_ms),
            command: Duration::from_millis(config.controller.command_timeout_ms),
        },
        crate::security::load(config)?,
    );
    let mut failures = Vec::new();
    for node in &topology.nodes {
        match engine.cluster_shards(&node.control_endpoint).await {
            Ok(shards) => {
                return Ok(ClusterStatus {
                    asked: node.endpoint.to_string(),
                    writer_region: topology.region(topology.bootstrap_region).name.clone(),
                    uncovered_slots: uncovered_slots(&shards)
                        .iter()
                        .map(|r| format!("{}-{}", r.start(), r.end()))
                        .collect(),
                    shards: shard_views(&topology, topology.bootstrap_region, &shards),
                });
            }
            Err(e) => failures.push(format!("  {}: {e}", node.endpoint)),
        }
    }
    Err(ClusterStatusError::NoNodeAnswered(failures.join("\n")))
}
