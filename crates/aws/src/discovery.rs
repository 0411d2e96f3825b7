//! Who is the writer: the global datastore's PRIMARY member, and its primary endpoint in its region.

use aws_sdk_elasticache::Client;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    pub region: String,
    pub replication_group_id: String,
    /// The primary endpoint's host name: the CNAME target.
    pub endpoint: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("ElastiCache: {0}")]
    Api(String),
    #[error("global datastore {0} not found")]
    NotFound(String),
    #[error(
        "global datastore {0} has no associated PRIMARY member (a failover may be in progress)"
    )]
    NoPrimary(String),
    #[error("replication group {0} has no primary endpoint yet")]
    NoEndpoint(String),
}

/// Asks ElastiCache where the writer is. `regional` gives a client for a member's region.
pub async fn primary(
    global: &Client,
    regional: impl Fn(&str) -> Client,
    global_id: &str,
) -> Result<Primary, DiscoveryError> {
    let out = global
        .describe_global_replication_groups()
        .global_replication_group_id(global_id)
        .show_member_info(true)
        .send()
        .await
        .map_err(|e| {
            DiscoveryError::Api(aws_sdk_elasticache::error::DisplayErrorContext(e).to_string())
        })?;
    let group = out
        .global_replication_groups()
        .first()
        .ok_or_else(|| DiscoveryError::NotFound(global_id.to_string()))?;
    let member = group
        .members()
        .iter()
        .find(|m| m.role() == Some("PRIMARY") && m.status() != Some("disassociating"))
        .ok_or_else(|| DiscoveryError::NoPrimary(global_id.to_string()))?;
    let (Some(region), Some(group_id)) = (
        member.replication_group_region(),
        member.replication_group_id(),
    ) else {
        return Err(DiscoveryError::NoPrimary(global_id.to_string()));
    };
    let out = regional(region)
        .describe_replication_groups()
        .replication_group_id(group_id)
        .send()
        .await
        .map_err(|e| {
            DiscoveryError::Api(aws_sdk_elasticache::error::DisplayErrorContext(e).to_string())
        })?;
    let endpoint = out
        .replication_groups()
        .first()
        .and_then(|g| {
            // Cluster mode disabled: the node group's primary endpoint; enabled: the configuration endpoint.
            g.node_groups()
                .first()
                .and_then(|n| n.primary_endpoint())
                .or(g.configuration_endpoint())
                .and_then(|e| e.address())
        })
        .ok_or_else(|| DiscoveryError::NoEndpoint(group_id.to_string()))?;
    Ok(Primary {
        region: region.to_string(),
        replication_group_id: group_id.to_string(),
        endpoint: endpoint.to_string(),
    })
}
