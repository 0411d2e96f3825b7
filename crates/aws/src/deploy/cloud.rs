//! What deploy, status, promote and destroy need from AWS, one trait per service. The real
//! implementations are in [`super::sdk`]; tests drive the orchestration with fakes (moto cannot
//! create ElastiCache resources through CloudFormation).

use std::collections::BTreeMap;

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("{service}: {message}")]
    Api {
        service: &'static str,
        /// AWS's error code when there is one (`ValidationError`, `InvalidVpcPeeringConnectionID.NotFound`).
        code: Option<String>,
        message: String,
    },
}

impl CloudError {
    /// AWS's error code, when it sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            CloudError::Api { code, .. } => code.as_deref(),
        }
    }

    pub fn api(service: &'static str, code: Option<&str>, message: impl Into<String>) -> Self {
        CloudError::Api {
            service,
            code: code.map(str::to_string),
            message: message.into(),
        }
    }
}

/// A CloudFormation stack as deploy sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stack {
    pub status: String,
    pub reason: Option<String>,
    pub parameters: BTreeMap<String, String>,
    pub outputs: BTreeMap<String, String>,
}

impl Stack {
    pub fn in_progress(&self) -> bool {
        self.status.ends_with("_IN_PROGRESS")
    }
    /// A settled stack whose last operation succeeded.
    pub fn complete(&self) -> bool {
        matches!(
            self.status.as_str(),
            "CREATE_COMPLETE" | "UPDATE_COMPLETE" | "IMPORT_COMPLETE"
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackEvent {
    pub id: String,
    pub timestamp: String,
    pub logical_id: String,
    pub resource_type: String,
    pub status: String,
    pub reason: Option<String>,
}

#[async_trait]
pub trait Stacks: Send + Sync {
    /// `None` when the stack does not exist (or was deleted).
    async fn describe(&self, region: &str, name: &str) -> Result<Option<Stack>, CloudError>;
    /// Creates the stack, or updates it when `exists`. `Ok(false)`: CloudFormation found nothing
    /// to update.
    async fn submit(
        &self,
        region: &str,
        name: &str,
        template: &str,
        parameters: &BTreeMap<String, String>,
        exists: bool,
    ) -> Result<bool, CloudError>;
    /// The stack's events, newest first (as CloudFormation lists them).
    async fn events(&self, region: &str, name: &str) -> Result<Vec<StackEvent>, CloudError>;
    async fn delete(&self, region: &str, name: &str) -> Result<(), CloudError>;
}

/// Which end of a VPC peering connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeeringSide {
    Requester,
    Accepter,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peering {
    pub id: String,
    /// `pending-acceptance`, `active`, …
    pub status: String,
    pub requester_region: String,
    pub accepter_region: String,
    pub requester_dns: bool,
    pub accepter_dns: bool,
}

#[async_trait]
pub trait Network: Send + Sync {
    async fn peering(&self, region: &str, id: &str) -> Result<Option<Peering>, CloudError>;
    async fn accept_peering(&self, region: &str, id: &str) -> Result<(), CloudError>;
    /// Lets the VPC on `side` resolve the other VPC's private DNS names over the peering. For a
    /// cross-region peering each side must be set in its own region.
    async fn allow_remote_dns(
        &self,
        region: &str,
        id: &str,
        side: PeeringSide,
    ) -> Result<(), CloudError>;
    /// Of `ids`, those instances that still exist (any state but terminated).
    async fn live_instances(&self, region: &str, ids: &[String])
    -> Result<Vec<String>, CloudError>;
}

#[async_trait]
pub trait Artifacts: Send + Sync {
    /// Uploads `body` to `bucket/key` unless an object is already there; true when it uploaded.
    async fn ensure(
        &self,
        region: &str,
        bucket: &str,
        key: &str,
        body: &[u8],
    ) -> Result<bool, CloudError>;
}

pub use crate::discovery::Member;

#[async_trait]
pub trait Datastore: Send + Sync {
    /// The global datastore's members; empty when it does not exist.
    async fn members(&self, region: &str, global_id: &str) -> Result<Vec<Member>, CloudError>;
    /// Whether the datastore and all its members are `available` (no change in flight).
    async fn settled(&self, region: &str, global_id: &str) -> Result<bool, CloudError>;
    async fn failover(
        &self,
        region: &str,
        global_id: &str,
        to_region: &str,
        to_group: &str,
    ) -> Result<(), CloudError>;
    async fn disassociate(
        &self,
        region: &str,
        global_id: &str,
        group: &str,
        group_region: &str,
    ) -> Result<(), CloudError>;
    /// The replication group, `None` when it does not exist.
    async fn group(&self, region: &str, group: &str) -> Result<Option<Group>, CloudError>;
}

/// A replication group as deploy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// `available`, `modifying`, `creating`, `deleting`, …
    pub status: String,
    /// The primary endpoint's host name, once there is one.
    pub endpoint: Option<String>,
}

/// The hosted zone, for what deploy itself must do in it (destroy removes our records, which
/// CloudFormation does not know, before the stack can delete the zone).
#[async_trait]
pub trait Zones: Send + Sync {
    async fn records(&self, zone_id: &str, names: &[String]) -> Result<Vec<RecordSet>, CloudError>;
    /// One atomic batch; a delete must match the current record exactly (compare-and-swap).
    async fn apply(&self, zone_id: &str, changes: &[Change]) -> Result<(), CloudError>;
    async fn exists(&self, zone_id: &str) -> Result<bool, CloudError>;
}

pub use valkey_dr_core::{Change, RecordSet};

/// Everything the orchestration talks to.
pub struct Cloud<'a> {
    pub stacks: &'a dyn Stacks,
    pub network: &'a dyn Network,
    pub artifacts: &'a dyn Artifacts,
    pub datastore: &'a dyn Datastore,
    pub zones: &'a dyn Zones,
}
