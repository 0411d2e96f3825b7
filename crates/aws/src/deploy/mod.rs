//! `valkey-dr aws deploy | status | promote | destroy`: the reference architecture's six manual
//! stages as one idempotent command, over the traits in [`cloud`].
//!
//! Deploy runs the template in each region twice — create, then update with what the other region
//! output (the peer VPC, the datastore id, the peering connection) — and finally sets the peering's
//! DNS-resolution options, which CloudFormation cannot. Every step first looks at what exists, so
//! a second run changes nothing and an interrupted run continues where it stopped.

pub mod artifact;
pub mod cloud;

mod destroy;
mod peering;
mod promote;
pub mod sdk;
mod stacks;
pub mod stages;
mod status;
mod wait;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

pub use crate::config::deploy::{DeployConfig, DeployConfigError};
use artifact::{Artifact, ArtifactError};
use cloud::{Change, Cloud, CloudError, Member, PeeringSide, Stack};
use stages::{Known, Reconcile, Role};

pub use destroy::destroy;
use peering::peering_dns;
pub use promote::promote;
use stacks::*;
pub use status::{Status, status};
use wait::*;

use crate::AwsConfig;
use crate::config::Targets;

/// The template every stage deploys.
pub const TEMPLATE: &str = include_str!("../../../../deploy/aws/valkey-dr.yaml");

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error("{0}")]
    Config(String),
    #[error("stack {stack} in {region}: {status}{}", reason.as_deref().map(|r| format!(" — {r}")).unwrap_or_default())]
    StackFailed {
        stack: String,
        region: String,
        status: String,
        reason: Option<String>,
    },
    #[error("{what} did not finish within {waited:?}")]
    Timeout { what: String, waited: Duration },
    #[error("destroy left resources behind: {0}")]
    Leftovers(String),
}

/// Where progress lines go (stdout for the CLI, a buffer in tests).
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// How long to wait for CloudFormation and ElastiCache (a global datastore member takes ~30 min).
#[derive(Debug, Clone, Copy)]
pub struct Waits {
    pub poll: Duration,
    pub limit: Duration,
    /// How long a reconcile already running may still write after the function is disabled: the
    /// function's timeout (50 s in the template) plus a margin.
    pub drain: Duration,
}

impl Waits {
    pub fn of(deploy: &DeployConfig) -> Waits {
        Waits {
            poll: Duration::from_millis(deploy.poll_ms),
            limit: Duration::from_secs(3 * 3600),
            drain: Duration::from_secs(60),
        }
    }
}

fn deploy_config(config: &AwsConfig) -> Result<&DeployConfig, DeployError> {
    config.deploy.as_ref().ok_or_else(|| {
        DeployError::Config(
            "aws config has no [deploy] table: add one (regions, CIDRs, artifact_bucket; see deploy/aws/aws.toml)"
                .into(),
        )
    })
}

/// The S3 key of a Lambda zip: its content hash, so that a new build is a new key.
pub fn artifact_key(zip: &[u8]) -> String {
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(zip));
    format!("valkey-dr-lambda-{}.zip", &digest[..16])
}

/// What a finished deploy reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    pub targets: Targets,
    pub peering_connection_id: String,
    /// Stages that changed something (0 on a repeated run).
    pub changed: usize,
}

pub async fn deploy(
    config: &AwsConfig,
    cloud: &Cloud<'_>,
    zip: &[u8],
    waits: Waits,
    say: Progress<'_>,
) -> Result<Deployed, DeployError> {
    let deploy = deploy_config(config)?;
    let stack = |role| stages::stack_name(deploy, role);
    let region = |role| stages::region(deploy, role).to_string();
    let artifact = artifact::inspect(zip)?;
    let mut changed = 0;

    say(&format!(
        "stage 1/6: Lambda code ({}, glibc {}) → both regions' buckets",
        artifact.architecture,
        artifact
            .glibc
            .map(|(major, minor)| format!("{major}.{minor}"))
            .unwrap_or_else(|| "static".into())
    ));
    for role in [Role::Primary, Role::Secondary] {
        let bucket = &stages::plan(deploy, role).artifact_bucket;
        let uploaded = cloud
            .artifacts
            .ensure(&region(role), bucket, &artifact.key, zip)
            .await?;
        say(&format!(
            "  s3://{bucket}/{}: {}",
            artifact.key,
            if uploaded {
                "uploaded"
            } else {
                "already there"
            }
        ));
        changed += usize::from(uploaded);
    }

    let existing_primary = cloud
        .stacks
        .describe(&region(Role::Primary), &stack(Role::Primary))
        .await?;
    if let Some(deployed) = existing_primary
        .as_ref()
        .and_then(|s| s.parameters.get("CacheNodeType"))
        .filter(|deployed| **deployed != deploy.node_type)
    {
        // A member group's node type cannot be modified; the global datastore's can
        // (ModifyGlobalReplicationGroup), which this command does not do.
        return Err(DeployError::Config(format!(
            "`deploy.node_type` is {} but the datastore runs {deployed}: ElastiCache rejects node type changes through a member group; change it on the global datastore (aws elasticache modify-global-replication-group --cache-node-type …), then set deploy.node_type to match",
            deploy.node_type
        )));
    }
    let mut primary_outputs = existing_primary.map(|s| s.outputs).unwrap_or_default();
    let mut known = Known::from_outputs(
        Some(&primary_outputs),
        cloud
            .stacks
            .describe(&region(Role::Secondary), &stack(Role::Secondary))
            .await?
            .as_ref()
            .map(|s| &s.outputs),
    );
    let mut applied: BTreeMap<Role, BTreeMap<String, String>> = BTreeMap::new();
    for (index, role) in stages::DEPLOY_ORDER.into_iter().enumerate() {
        let parameters =
            stages::parameters(config, deploy, role, &known, &artifact, Reconcile::Enabled);
        let title = format!(
            "stage {}/6: stack {} in {}",
            index + 2,
            stack(role),
            region(role)
        );
        if applied.get(&role) == Some(&parameters) {
            say(&format!("{title}: nothing new to pass on"));
            continue;
        }
        say(&format!("{title} ({})", passes(&parameters)));
        if role == Role::Secondary
            && let Some(global) = &known.global_replication_group_id
        {
            // A group can join the datastore only once the datastore is settled: `available`,
            // or `primary-only` before the first secondary joins.
            wait_until(
                waits,
                say,
                &format!("global datastore {global} to settle"),
                || async {
                    cloud
                        .datastore
                        .settled(&region(Role::Primary), global)
                        .await
                },
            )
            .await?;
        }
        let (outputs, did_change) =
            apply_stack(cloud, &region(role), &stack(role), &parameters, waits, say).await?;
        changed += usize::from(did_change);
        applied.insert(role, parameters);
        known.absorb(role, &outputs);
        if role == Role::Primary {
            primary_outputs = outputs;
        }
    }

    say("stage 6/6: DNS resolution over the VPC peering (EC2 API; CloudFormation cannot set it)");
    let peering_id = known.peering_connection_id.clone().ok_or_else(|| {
        DeployError::Config(format!(
            "stack {} has no PeeringConnectionId output after its update",
            stack(Role::Primary)
        ))
    })?;
    changed += peering_dns(
        cloud,
        &region(Role::Primary),
        &region(Role::Secondary),
        &peering_id,
        waits,
        say,
    )
    .await?;

    let targets = targets_from(&primary_outputs).ok_or_else(|| {
        DeployError::Config(format!(
            "stack {} lacks the GlobalReplicationGroupId/HostedZoneId outputs",
            stack(Role::Primary)
        ))
    })?;
    Ok(Deployed {
        targets,
        peering_connection_id: peering_id,
        changed,
    })
}

/// The parameters a stage passes on from earlier stages, for the progress line.
fn passes(parameters: &BTreeMap<String, String>) -> String {
    let passed: Vec<String> = [
        "GlobalReplicationGroupId",
        "HostedZoneId",
        "PeerVpcId",
        "PeeringConnectionId",
    ]
    .iter()
    .filter_map(|k| parameters.get(*k).map(|v| format!("{k}={v}")))
    .collect();
    format!(
        "Role={}{}",
        parameters.get("Role").map(String::as_str).unwrap_or("?"),
        if passed.is_empty() {
            String::new()
        } else {
            format!(", {}", passed.join(", "))
        }
    )
}

/// The ids a stack names: the primary outputs them, the secondary was deployed with them.
fn stack_targets(role: Role, stack: &Stack) -> Option<Targets> {
    match role {
        Role::Primary => targets_from(&stack.outputs),
        Role::Secondary => targets_from(&stack.parameters),
    }
}

fn targets_from(outputs: &BTreeMap<String, String>) -> Option<Targets> {
    Some(Targets {
        global_replication_group_id: outputs.get("GlobalReplicationGroupId")?.clone(),
        hosted_zone_id: outputs.get("HostedZoneId")?.clone(),
    })
}

/// The ids a reconcile needs: from the file, else from whichever stack answers — the primary
/// stack's outputs, or the secondary stack's parameters (it was deployed with both ids) when the
/// primary region is down.
pub async fn targets(config: &AwsConfig, cloud: &Cloud<'_>) -> Result<Targets, DeployError> {
    targets_asking_first(config, cloud, None).await
}

/// [`targets`] asking the stack in `first` before the other: `promote` asks the region it
/// promotes, which answers when the other may be down or stalled.
pub async fn targets_asking_first(
    config: &AwsConfig,
    cloud: &Cloud<'_>,
    first: Option<&str>,
) -> Result<Targets, DeployError> {
    let from_file = config.targets();
    let Some(deploy) = &config.deploy else {
        return from_file.map_err(|e| DeployError::Config(e.to_string()));
    };
    if let Ok(targets) = from_file {
        return Ok(targets);
    }
    let mut problems = Vec::new();
    let mut roles = [Role::Primary, Role::Secondary];
    if first == Some(stages::region(deploy, Role::Secondary)) {
        roles.reverse();
    }
    for role in roles {
        let name = stages::stack_name(deploy, role);
        let region = stages::region(deploy, role);
        match cloud.stacks.describe(region, &name).await {
            Ok(Some(stack)) => {
                if let Some(targets) = stack_targets(role, &stack) {
                    return Ok(targets);
                }
                problems.push(format!("stack {name} in {region} does not name them"));
            }
            Ok(None) => problems.push(format!("stack {name} in {region} does not exist")),
            Err(e) => problems.push(format!("stack {name} in {region}: {e}")),
        }
    }
    Err(DeployError::Config(format!(
        "the global datastore and hosted zone ids are not in the config and no stack gives them ({}): run `valkey-dr aws deploy` first, or set global_replication_group_id and hosted_zone_id",
        problems.join("; ")
    )))
}
