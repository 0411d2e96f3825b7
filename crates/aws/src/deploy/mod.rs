//! `valkey-dr aws deploy | status | promote | destroy`: the reference architecture's six manual
//! stages as one idempotent command, over the traits in [`cloud`].
//!
//! Deploy runs the template in each region twice — create, then update with what the other region
//! output (the peer VPC, the datastore id, the peering connection) — and finally sets the peering's
//! DNS-resolution options, which CloudFormation cannot. Every step first looks at what exists, so
//! a second run changes nothing and an interrupted run continues where it stopped.

pub mod artifact;
pub mod cloud;
pub mod config;
pub mod sdk;
pub mod stages;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use artifact::{Artifact, ArtifactError};
use cloud::{Change, Cloud, CloudError, Member, PeeringSide, Stack};
pub use config::{DeployConfig, DeployConfigError};
use stages::{Known, Reconcile, Role};

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
            // A group can join the datastore only once the datastore is available.
            wait_until(
                waits,
                say,
                &format!("global datastore {global} to be available"),
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
    let from_file = config.targets();
    let Some(deploy) = &config.deploy else {
        return from_file.map_err(|e| DeployError::Config(e.to_string()));
    };
    if let Ok(targets) = from_file {
        return Ok(targets);
    }
    let mut problems = Vec::new();
    for role in [Role::Primary, Role::Secondary] {
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

/// Creates or updates one stack and waits for it, printing its events. Returns its outputs and
/// whether anything changed.
async fn apply_stack(
    cloud: &Cloud<'_>,
    region: &str,
    name: &str,
    parameters: &BTreeMap<String, String>,
    waits: Waits,
    say: Progress<'_>,
) -> Result<(BTreeMap<String, String>, bool), DeployError> {
    let mut existing = settle(cloud, region, name, waits, say).await?;
    if let Some(stack) = &existing {
        match stack.status.as_str() {
            // A failed create leaves an empty stack that can only be deleted.
            "ROLLBACK_COMPLETE" => {
                say(&format!(
                    "  {name} is ROLLBACK_COMPLETE from an earlier failed create; deleting it first"
                ));
                delete_stack(cloud, region, name, waits, say).await?;
                existing = None;
            }
            "UPDATE_ROLLBACK_COMPLETE" => {}
            _ if stack.complete() => {}
            other => {
                return Err(DeployError::StackFailed {
                    stack: name.into(),
                    region: region.into(),
                    status: other.into(),
                    reason: Some(
                        "not in a state that can be updated; inspect it in the CloudFormation console"
                            .into(),
                    ),
                });
            }
        }
    }
    let seen = event_ids(cloud, region, name, existing.is_some()).await?;
    let before = seen.clone();
    let changed = cloud
        .stacks
        .submit(region, name, TEMPLATE, parameters, existing.is_some())
        .await?;
    if !changed {
        say("  unchanged");
        return Ok((existing.unwrap_or_default().outputs, false));
    }
    let done = wait_for(cloud, region, name, seen, waits, say).await?;
    match done {
        Some(stack) if stack.complete() => {
            say(&format!("  {}", stack.status));
            Ok((stack.outputs, true))
        }
        Some(stack) => Err(failure(cloud, region, name, stack, &before).await),
        None => Err(DeployError::StackFailed {
            stack: name.into(),
            region: region.into(),
            status: "DELETED".into(),
            reason: Some("the stack disappeared while it was being deployed".into()),
        }),
    }
}

async fn event_ids(
    cloud: &Cloud<'_>,
    region: &str,
    name: &str,
    exists: bool,
) -> Result<BTreeSet<String>, DeployError> {
    if !exists {
        return Ok(BTreeSet::new());
    }
    Ok(cloud
        .stacks
        .events(region, name)
        .await?
        .into_iter()
        .map(|e| e.id)
        .collect())
}

/// Waits out an operation already in flight on the stack (another deploy, a rollback).
async fn settle(
    cloud: &Cloud<'_>,
    region: &str,
    name: &str,
    waits: Waits,
    say: Progress<'_>,
) -> Result<Option<Stack>, DeployError> {
    let stack = cloud.stacks.describe(region, name).await?;
    match stack {
        Some(s) if s.in_progress() => {
            say(&format!("  {name} is {}; waiting for it", s.status));
            let seen = event_ids(cloud, region, name, true).await?;
            wait_for(cloud, region, name, seen, waits, say).await
        }
        other => Ok(other),
    }
}

/// Polls until the stack leaves *_IN_PROGRESS (or is gone), printing events not in `seen`.
async fn wait_for(
    cloud: &Cloud<'_>,
    region: &str,
    name: &str,
    mut seen: BTreeSet<String>,
    waits: Waits,
    say: Progress<'_>,
) -> Result<Option<Stack>, DeployError> {
    let started = Instant::now();
    let mut patience = Patience::default();
    loop {
        let stack = match cloud.stacks.describe(region, name).await {
            Ok(stack) => {
                patience.succeeded();
                stack
            }
            Err(e) => {
                patience.failed(e, waits, say, name).await?;
                continue;
            }
        };
        if let Ok(events) = cloud.stacks.events(region, name).await {
            for event in events.iter().rev() {
                if seen.insert(event.id.clone()) {
                    say(&format!(
                        "  {:<20} {:<28} {:<40} {}{}",
                        event.timestamp,
                        event.logical_id,
                        event.resource_type,
                        event.status,
                        event
                            .reason
                            .as_deref()
                            .filter(|r| !r.is_empty())
                            .map(|r| format!(" — {r}"))
                            .unwrap_or_default()
                    ));
                }
            }
        }
        match stack {
            Some(s) if s.in_progress() => {}
            other => return Ok(other),
        }
        if started.elapsed() > waits.limit {
            return Err(DeployError::Timeout {
                what: format!("stack {name} in {region}"),
                waited: waits.limit,
            });
        }
        tokio::time::sleep(waits.poll).await;
    }
}

/// The error for a stack that ended badly: the first resource failure of this operation (events
/// not in `before`, which an earlier failed operation may have left) explains it best.
async fn failure(
    cloud: &Cloud<'_>,
    region: &str,
    name: &str,
    stack: Stack,
    before: &BTreeSet<String>,
) -> DeployError {
    let first_failed = cloud
        .stacks
        .events(region, name)
        .await
        .ok()
        .and_then(|events| {
            events
                .into_iter()
                .rev()
                .filter(|e| !before.contains(&e.id))
                .find(|e| e.status.ends_with("_FAILED"))
                .map(|e| format!("{}: {}", e.logical_id, e.reason.unwrap_or_default()))
        });
    DeployError::StackFailed {
        stack: name.into(),
        region: region.into(),
        status: stack.status,
        reason: first_failed.or(stack.reason),
    }
}

async fn delete_stack(
    cloud: &Cloud<'_>,
    region: &str,
    name: &str,
    waits: Waits,
    say: Progress<'_>,
) -> Result<bool, DeployError> {
    if settle(cloud, region, name, waits, say).await?.is_none() {
        return Ok(false);
    }
    let seen = event_ids(cloud, region, name, true).await?;
    let before = seen.clone();
    cloud.stacks.delete(region, name).await?;
    match wait_for(cloud, region, name, seen, waits, say).await? {
        None => Ok(true),
        Some(s) if s.status == "DELETE_COMPLETE" => Ok(true),
        Some(s) => Err(failure(cloud, region, name, s, &before).await),
    }
}

/// Accepts the peering if needed and enables DNS resolution on both sides; returns how many
/// changes it made.
async fn peering_dns(
    cloud: &Cloud<'_>,
    requester_region: &str,
    accepter_region: &str,
    id: &str,
    waits: Waits,
    say: Progress<'_>,
) -> Result<usize, DeployError> {
    let started = Instant::now();
    let mut changes = 0;
    loop {
        let peering = cloud
            .network
            .peering(requester_region, id)
            .await?
            .ok_or_else(|| DeployError::Config(format!("peering connection {id} not found")))?;
        match peering.status.as_str() {
            "active" => {
                for (side, region, allowed) in [
                    (
                        PeeringSide::Requester,
                        requester_region,
                        peering.requester_dns,
                    ),
                    (PeeringSide::Accepter, accepter_region, peering.accepter_dns),
                ] {
                    if allowed {
                        say(&format!("  {id} {side:?} side ({region}): already allowed"));
                    } else {
                        cloud.network.allow_remote_dns(region, id, side).await?;
                        say(&format!("  {id} {side:?} side ({region}): allowed"));
                        changes += 1;
                    }
                }
                return Ok(changes);
            }
            "pending-acceptance" => {
                say(&format!(
                    "  {id} pending acceptance; accepting in {accepter_region}"
                ));
                cloud.network.accept_peering(accepter_region, id).await?;
                changes += 1;
            }
            "initiating-request" | "provisioning" => {}
            other => {
                return Err(DeployError::Config(format!(
                    "peering connection {id} is {other}; it cannot carry traffic"
                )));
            }
        }
        if started.elapsed() > waits.limit {
            return Err(DeployError::Timeout {
                what: format!("peering connection {id}"),
                waited: waits.limit,
            });
        }
        tokio::time::sleep(waits.poll).await;
    }
}

/// `aws promote <region>`: makes the member in `region` the global datastore's primary through
/// FailoverGlobalReplicationGroup and waits until ElastiCache reports it. Every call goes to
/// `region` itself: when this is the recovery from a regional failure, the old primary's region
/// may not answer, so nothing here waits for it. Moving the name is the reconcile's job (the
/// caller runs one from `region` right after, without waiting for the Lambda).
pub async fn promote(
    config: &AwsConfig,
    cloud: &Cloud<'_>,
    to_region: &str,
    waits: Waits,
    say: Progress<'_>,
) -> Result<Member, DeployError> {
    let targets = targets(config, cloud).await?;
    let global = &targets.global_replication_group_id;
    let members = cloud.datastore.members(to_region, global).await?;
    let target = members
        .iter()
        .find(|m| m.region == to_region)
        .cloned()
        .ok_or_else(|| {
            DeployError::Config(format!(
                "global datastore {global} has no member in {to_region}; members: {}",
                describe_members(&members)
            ))
        })?;
    if target.role == "PRIMARY" {
        say(&format!(
            "{} in {to_region} is already the primary",
            target.replication_group_id
        ));
        return Ok(target);
    }
    say(&format!(
        "failing over {global} (asked in {to_region}): {} → {} ({to_region})",
        describe_members(&members),
        target.replication_group_id
    ));
    // A change already in flight (another failover, a modification) makes ElastiCache refuse
    // with InvalidGlobalReplicationGroupState: wait for it, asking again.
    wait_until(
        waits,
        say,
        &format!("{global} to accept the failover"),
        || async {
            match cloud
                .datastore
                .failover(to_region, global, to_region, &target.replication_group_id)
                .await
            {
                Ok(()) => Ok(true),
                Err(e) if e.code() == Some("InvalidGlobalReplicationGroupState") => {
                    say(&format!("  busy ({e}); asking again"));
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        },
    )
    .await?;
    wait_until(
        waits,
        say,
        &format!("{to_region} to become primary"),
        || async {
            let members = cloud.datastore.members(to_region, global).await?;
            Ok(members
                .iter()
                .any(|m| m.region == to_region && m.role == "PRIMARY"))
        },
    )
    .await?;
    let members = cloud.datastore.members(to_region, global).await?;
    say(&format!("members now: {}", describe_members(&members)));
    Ok(Member {
        role: "PRIMARY".into(),
        ..target
    })
}

fn describe_members(members: &[Member]) -> String {
    if members.is_empty() {
        return "none".into();
    }
    members
        .iter()
        .map(|m| format!("{} {} ({})", m.region, m.replication_group_id, m.role))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Consecutive failed polls tolerated while waiting: a deploy that waits half an hour must not die
/// of one throttled or dropped request (the SDK's own retries are over within seconds).
#[derive(Default)]
struct Patience {
    failures: u32,
}

impl Patience {
    const LIMIT: u32 = 5;

    async fn failed(
        &mut self,
        error: CloudError,
        waits: Waits,
        say: Progress<'_>,
        what: &str,
    ) -> Result<(), DeployError> {
        self.failures += 1;
        if self.failures >= Self::LIMIT {
            return Err(error.into());
        }
        let delay = (waits.poll * 2u32.pow(self.failures)).min(Duration::from_secs(60));
        say(&format!(
            "  checking {what} failed ({error}); retry {}/{} in {delay:?}",
            self.failures,
            Self::LIMIT - 1
        ));
        tokio::time::sleep(delay).await;
        Ok(())
    }

    fn succeeded(&mut self) {
        self.failures = 0;
    }
}

async fn wait_until<F, Fut>(
    waits: Waits,
    say: Progress<'_>,
    what: &str,
    mut done: F,
) -> Result<(), DeployError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, CloudError>>,
{
    let started = Instant::now();
    let mut patience = Patience::default();
    loop {
        match done().await {
            Ok(true) => return Ok(()),
            Ok(false) => patience.succeeded(),
            Err(e) => {
                patience.failed(e, waits, say, what).await?;
                continue;
            }
        }
        if started.elapsed() > waits.limit {
            return Err(DeployError::Timeout {
                what: what.into(),
                waited: waits.limit,
            });
        }
        tokio::time::sleep(waits.poll).await;
    }
}

/// `aws destroy`: the deploy undone in reverse — secondary out of the global datastore; both
/// stacks updated to stop their reconcile functions and drop the peering; our records removed
/// from the zone by compare-and-swap (CloudFormation does not know them, and cannot delete a zone
/// that holds them); the secondary stack deleted, then the primary — and checked: no replication
/// group, helper instance or hosted zone is left.
pub async fn destroy(
    config: &AwsConfig,
    cloud: &Cloud<'_>,
    waits: Waits,
    say: Progress<'_>,
) -> Result<(), DeployError> {
    let deploy = deploy_config(config)?;
    let stack = |role| stages::stack_name(deploy, role);
    let region = |role| stages::region(deploy, role).to_string();
    let primary = settle(
        cloud,
        &region(Role::Primary),
        &stack(Role::Primary),
        waits,
        say,
    )
    .await?;
    let secondary = settle(
        cloud,
        &region(Role::Secondary),
        &stack(Role::Secondary),
        waits,
        say,
    )
    .await?;
    let output =
        |s: &Option<Stack>, key: &str| s.as_ref().and_then(|s| s.outputs.get(key).cloned());
    // What must be gone at the end, recorded before the stacks (and their outputs) disappear.
    let mut expected_gone: Vec<(String, Option<String>, Option<String>)> = Vec::new();
    for (role, s) in [(Role::Primary, &primary), (Role::Secondary, &secondary)] {
        expected_gone.push((
            region(role),
            output(s, "ReplicationGroupId"),
            output(s, "HelperInstanceId"),
        ));
    }
    let zone_id = output(&primary, "HostedZoneId");

    say("step 1/6: take the secondary out of the global datastore");
    if let Some(global) = output(&primary, "GlobalReplicationGroupId") {
        leave_datastore(config, cloud, &global, &primary, waits, say).await?;
    } else {
        say("  no global datastore recorded");
    }

    say("step 2/6: stop both reconcile functions and remove the VPC peering");
    // Everything known except the peering; the secondary keeps the ids it was deployed with.
    let kept = |key: &str| {
        secondary
            .as_ref()
            .and_then(|s| s.parameters.get(key).cloned())
    };
    let unpeered = Known {
        global_replication_group_id: kept("GlobalReplicationGroupId"),
        hosted_zone_id: kept("HostedZoneId"),
        ..Known::default()
    };
    let mut disabled = false;
    for (role, present) in [(Role::Secondary, &secondary), (Role::Primary, &primary)] {
        let Some(existing) = present else { continue };
        let artifact = deployed_artifact(existing);
        let parameters = stages::parameters(
            config,
            deploy,
            role,
            &unpeered,
            &artifact,
            Reconcile::Disabled,
        );
        if parameters == existing.parameters {
            continue;
        }
        say(&format!("  updating {}", stack(role)));
        apply_stack(cloud, &region(role), &stack(role), &parameters, waits, say).await?;
        disabled = true;
    }
    if disabled && !waits.drain.is_zero() {
        say(&format!(
            "  waiting {:?} for a reconcile already running to end",
            waits.drain
        ));
        tokio::time::sleep(waits.drain).await;
    }

    say("step 3/6: remove our records from the hosted zone");
    if let Some(zone_id) = &zone_id
        && cloud.zones.exists(zone_id).await?
    {
        remove_owned_records(config, cloud, zone_id, say).await?;
    } else {
        say("  no hosted zone");
    }

    for (step, role) in [(4, Role::Secondary), (5, Role::Primary)] {
        say(&format!(
            "step {step}/6: delete stack {} in {}",
            stack(role),
            region(role)
        ));
        if !delete_stack(cloud, &region(role), &stack(role), waits, say).await? {
            say("  not there");
        }
    }

    say("step 6/6: verify nothing is left");
    let mut left = Vec::new();
    for (region, group, instance) in expected_gone {
        if let Some(group) = group {
            if cloud.datastore.group(&region, &group).await?.is_some() {
                left.push(format!("replication group {group} in {region}"));
            } else {
                say(&format!("  replication group {group} ({region}): gone"));
            }
        }
        if let Some(instance) = instance {
            let live = cloud
                .network
                .live_instances(&region, std::slice::from_ref(&instance))
                .await?;
            if live.is_empty() {
                say(&format!("  instance {instance} ({region}): gone"));
            } else {
                left.push(format!("instance {instance} in {region}"));
            }
        }
    }
    if let Some(zone_id) = zone_id {
        if cloud.zones.exists(&zone_id).await? {
            left.push(format!("hosted zone {zone_id}"));
        } else {
            say(&format!("  hosted zone {zone_id}: gone"));
        }
    }
    if left.is_empty() {
        Ok(())
    } else {
        Err(DeployError::Leftovers(left.join(", ")))
    }
}

/// Step 1 of destroy: restore the stacks' roles if a promotion swapped them, then disassociate
/// every secondary and wait until its group is `available` again (a group still `modifying`
/// cannot be deleted).
async fn leave_datastore(
    config: &AwsConfig,
    cloud: &Cloud<'_>,
    global: &str,
    primary: &Option<Stack>,
    waits: Waits,
    say: Progress<'_>,
) -> Result<(), DeployError> {
    let deploy = deploy_config(config)?;
    let home_region = stages::region(deploy, Role::Primary).to_string();
    let primary_group = primary
        .as_ref()
        .and_then(|s| s.outputs.get("ReplicationGroupId").cloned());
    let members = cloud.datastore.members(&home_region, global).await?;
    let home = members
        .iter()
        .find(|m| Some(&m.replication_group_id) == primary_group.as_ref());
    if let Some(home) = home.filter(|m| m.role != "PRIMARY") {
        // The stack's datastore resource lists its own group as PRIMARY; deleting it while
        // the roles are swapped would fail half-way.
        say(&format!(
            "  {} is not primary (promoted away earlier); failing back first",
            home.replication_group_id
        ));
        promote(config, cloud, &home.region, waits, say).await?;
    }
    let settled = || async { cloud.datastore.settled(&home_region, global).await };
    wait_until(waits, say, &format!("{global} to settle"), settled).await?;
    for member in cloud
        .datastore
        .members(&home_region, global)
        .await?
        .into_iter()
        .filter(|m| m.role != "PRIMARY")
    {
        say(&format!(
            "  disassociating {} ({})",
            member.replication_group_id, member.region
        ));
        cloud
            .datastore
            .disassociate(
                &home_region,
                global,
                &member.replication_group_id,
                &member.region,
            )
            .await?;
        wait_until(
            waits,
            say,
            &format!("{} to leave and be available", member.replication_group_id),
            || async {
                let members = cloud.datastore.members(&home_region, global).await?;
                if members
                    .iter()
                    .any(|m| m.replication_group_id == member.replication_group_id)
                {
                    return Ok(false);
                }
                let group = cloud
                    .datastore
                    .group(&member.region, &member.replication_group_id)
                    .await?;
                Ok(group.is_none_or(|g| g.status == "available"))
            },
        )
        .await?;
    }
    Ok(())
}

/// The Lambda artifact a stack was deployed with (destroy updates stacks without a new build).
fn deployed_artifact(stack: &Stack) -> Artifact {
    let parameter = |key: &str| stack.parameters.get(key).cloned().unwrap_or_default();
    Artifact {
        key: parameter("LambdaArtifactKey"),
        architecture: if parameter("LambdaArchitecture") == "x86_64" {
            artifact::Architecture::X86_64
        } else {
            artifact::Architecture::Arm64
        },
        glibc: None,
    }
}

/// Deletes the name and its ownership TXT when the TXT says we own them, in one batch whose
/// deletes must match the records exactly; records owned by someone else are left and reported.
async fn remove_owned_records(
    config: &AwsConfig,
    cloud: &Cloud<'_>,
    zone_id: &str,
    say: Progress<'_>,
) -> Result<(), DeployError> {
    let names = config.names();
    let current = cloud
        .zones
        .records(zone_id, &[names.global.clone(), names.ownership.clone()])
        .await?;
    let owner = current
        .iter()
        .filter(|r| r.name == names.ownership && r.rtype == valkey_dr_core::RecordType::Txt)
        .flat_map(|r| r.values.iter())
        .find_map(|v| valkey_dr_core::ownership::Ownership::parse(v))
        .map(|o| o.owner);
    match owner {
        None if current.is_empty() => {
            say("  none there");
            Ok(())
        }
        Some(owner) if owner == names.owner => {
            let changes: Vec<Change> = current
                .into_iter()
                .map(|old| Change::Delete { old })
                .collect();
            cloud.zones.apply(zone_id, &changes).await?;
            say(&format!(
                "  deleted {} record set(s) owned by \"{owner}\"",
                changes.len()
            ));
            Ok(())
        }
        other => {
            say(&format!(
                "  {} is not ours ({}); left in place — the zone cannot be deleted while it is there",
                names.global,
                other
                    .map(|o| format!("owned by \"{o}\""))
                    .unwrap_or_else(|| "no ownership record".into())
            ));
            Ok(())
        }
    }
}

/// `aws status`: the stacks, the datastore's members with their endpoints.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub stacks: Vec<(String, String, String)>,
    pub members: Vec<(Member, Option<String>)>,
    pub targets: Option<Targets>,
}

/// Status is what one reads during an outage: a region that does not answer is shown as such,
/// and the datastore is asked in whichever region answers.
pub async fn status(config: &AwsConfig, cloud: &Cloud<'_>) -> Result<Status, DeployError> {
    let mut status = Status::default();
    let mut from_stacks = None;
    let mut regions = Vec::new();
    if let Some(deploy) = &config.deploy {
        for role in [Role::Primary, Role::Secondary] {
            let name = stages::stack_name(deploy, role);
            let region = stages::region(deploy, role).to_string();
            let state = match cloud.stacks.describe(&region, &name).await {
                Ok(stack) => {
                    let ids = stack.as_ref().and_then(|s| stack_targets(role, s));
                    from_stacks = from_stacks.or(ids);
                    stack.map_or("absent".into(), |s| s.status)
                }
                Err(e) => format!("unreachable: {e}"),
            };
            status.stacks.push((name, region.clone(), state));
            regions.push(region);
        }
    }
    // The ids from the file, else from the stacks just read (not read again).
    let Some(targets) = config.targets().ok().or(from_stacks) else {
        return Ok(status);
    };
    let mut members = None;
    let mut last_error = None;
    for region in regions
        .iter()
        .map(String::as_str)
        .chain(regions.is_empty().then_some(""))
    {
        match cloud
            .datastore
            .members(region, &targets.global_replication_group_id)
            .await
        {
            Ok(found) => {
                members = Some(found);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let members = match (members, last_error) {
        (Some(members), _) => members,
        (None, Some(e)) => return Err(e.into()),
        (None, None) => Vec::new(),
    };
    for member in members {
        let endpoint = match cloud
            .datastore
            .group(&member.region, &member.replication_group_id)
            .await
        {
            Ok(group) => group.and_then(|g| g.endpoint),
            Err(e) => Some(format!("unreachable: {e}")),
        };
        status.members.push((member, endpoint));
    }
    status.targets = Some(targets);
    Ok(status)
}
