//! Who is the writer: the global datastore's PRIMARY member, and its primary endpoint in its region.

use aws_sdk_elasticache::Client;
use aws_sdk_elasticache::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_elasticache::types::ReplicationGroup;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    pub region: String,
    pub replication_group_id: String,
    /// The primary endpoint's host name: the CNAME target.
    pub endpoint: String,
}

/// One member of a global datastore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub region: String,
    pub replication_group_id: String,
    /// `PRIMARY` or `SECONDARY`.
    pub role: String,
    /// `associated`, `associating`, `disassociating`, …
    pub status: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("ElastiCache: {message}")]
    Api {
        code: Option<String>,
        message: String,
    },
    #[error("global datastore {0} not found")]
    NotFound(String),
    #[error(
        "global datastore {0} has no associated PRIMARY member (a failover may be in progress)"
    )]
    NoPrimary(String),
    #[error("replication group {0} has no primary endpoint yet")]
    NoEndpoint(String),
}

fn api<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    error: aws_sdk_elasticache::error::SdkError<E, R>,
) -> DiscoveryError {
    DiscoveryError::Api {
        code: error.code().map(str::to_string),
        message: DisplayErrorContext(error).to_string(),
    }
}

/// A client for `region` with everything else from `sdk` (an empty region keeps the default).
pub fn client_in(sdk: &aws_config::SdkConfig, region: &str) -> Client {
    let mut config = aws_sdk_elasticache::config::Builder::from(sdk);
    if !region.is_empty() {
        config = config.region(aws_sdk_elasticache::config::Region::new(region.to_string()));
    }
    Client::from_conf(config.build())
}

/// The datastore's members and whether it and all of them are settled ([`settled`]).
/// `Ok(None)`: no such datastore.
pub async fn members(
    client: &Client,
    global_id: &str,
) -> Result<Option<(Vec<Member>, bool)>, DiscoveryError> {
    let out = match client
        .describe_global_replication_groups()
        .global_replication_group_id(global_id)
        .show_member_info(true)
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) if e.code() == Some("GlobalReplicationGroupNotFoundFault") => return Ok(None),
        Err(e) => return Err(api(e)),
    };
    let Some(group) = out.global_replication_groups().first() else {
        return Ok(None);
    };
    let members: Vec<Member> = group
        .members()
        .iter()
        .map(|m| Member {
            region: m.replication_group_region().unwrap_or_default().to_string(),
            replication_group_id: m.replication_group_id().unwrap_or_default().to_string(),
            role: m.role().unwrap_or_default().to_string(),
            status: m.status().unwrap_or_default().to_string(),
        })
        .collect();
    let settled = settled(group.status().unwrap_or_default(), &members);
    Ok(Some((members, settled)))
}

/// Whether a global datastore with `status` and `members` takes a change (a group joining or
/// leaving, a failover): every member `associated`, and the datastore `available` — or
/// `primary-only`, which is what AWS reports while its only member is the primary (before the
/// first secondary joins, after the last one left).
pub fn settled(status: &str, members: &[Member]) -> bool {
    matches!(status, "available" | "primary-only")
        && members.iter().all(|m| m.status == "associated")
}

/// The replication group's status and primary endpoint (once it has one); `Ok(None)` when the
/// group does not exist.
pub async fn group(
    client: &Client,
    group_id: &str,
) -> Result<Option<(String, Option<String>)>, DiscoveryError> {
    match client
        .describe_replication_groups()
        .replication_group_id(group_id)
        .send()
        .await
    {
        Ok(out) => Ok(out.replication_groups().first().map(|group| {
            (
                group.status().unwrap_or_default().to_string(),
                primary_endpoint(group).map(str::to_string),
            )
        })),
        Err(e) if e.code() == Some("ReplicationGroupNotFoundFault") => Ok(None),
        Err(e) => Err(api(e)),
    }
}

/// The replication group's primary endpoint; `Ok(None)` when the group does not exist.
pub async fn endpoint(client: &Client, group_id: &str) -> Result<Option<String>, DiscoveryError> {
    match group(client, group_id).await? {
        Some((_, Some(endpoint))) => Ok(Some(endpoint)),
        Some((_, None)) => Err(DiscoveryError::NoEndpoint(group_id.to_string())),
        None => Ok(None),
    }
}

/// Cluster mode disabled: the node group's primary endpoint; enabled: the configuration endpoint.
fn primary_endpoint(group: &ReplicationGroup) -> Option<&str> {
    group
        .node_groups()
        .first()
        .and_then(|n| n.primary_endpoint())
        .or(group.configuration_endpoint())
        .and_then(|e| e.address())
}

/// Asks ElastiCache where the writer is. `regional` gives a client for a member's region.
pub async fn primary(
    global: &Client,
    regional: impl Fn(&str) -> Client,
    global_id: &str,
) -> Result<Primary, DiscoveryError> {
    let (members, _) = members(global, global_id)
        .await?
        .ok_or_else(|| DiscoveryError::NotFound(global_id.to_string()))?;
    let member = members
        .iter()
        .find(|m| {
            m.role == "PRIMARY"
                && m.status != "disassociating"
                && !m.region.is_empty()
                && !m.replication_group_id.is_empty()
        })
        .ok_or_else(|| DiscoveryError::NoPrimary(global_id.to_string()))?;
    let endpoint = endpoint(&regional(&member.region), &member.replication_group_id)
        .await?
        .ok_or_else(|| DiscoveryError::NoEndpoint(member.replication_group_id.clone()))?;
    Ok(Primary {
        region: member.region.clone(),
        replication_group_id: member.replication_group_id.clone(),
        endpoint,
    })
}

#[cfg(test)]
mod tests {
    use aws_sdk_elasticache::types::{Endpoint, NodeGroup};

    use super::*;

    #[test]
    fn the_name_leads_to_the_primary_endpoint_or_in_cluster_mode_the_configuration_endpoint() {
        let endpoint = |address: &str| Endpoint::builder().address(address).port(6379).build();
        // Cluster mode off: the node group's primary endpoint.
        let plain = ReplicationGroup::builder()
            .node_groups(
                NodeGroup::builder()
                    .node_group_id("0001")
                    .primary_endpoint(endpoint("primary.example"))
                    .build(),
            )
            .build();
        assert_eq!(primary_endpoint(&plain), Some("primary.example"));
        // Cluster mode on: node groups have no primary endpoint; clients start from the
        // configuration endpoint and follow MOVED.
        let sharded = ReplicationGroup::builder()
            .cluster_enabled(true)
            .configuration_endpoint(endpoint("clustercfg.example"))
            .node_groups(NodeGroup::builder().node_group_id("0001").build())
            .node_groups(NodeGroup::builder().node_group_id("0002").build())
            .build();
        assert_eq!(primary_endpoint(&sharded), Some("clustercfg.example"));
        assert_eq!(primary_endpoint(&ReplicationGroup::builder().build()), None);
    }
}
