//! `valkey-dr aws deploy | status | promote | destroy`: the reference architecture's six manual
//! stages as one idempotent command, over the traits in [`cloud`].
//!
//! Deploy runs the template in each region twice — create, then update with what the other region
//! output (the peer VPC, the datastore id, the peering connection) — and finally sets the peering's
//! DNS-resolution options, which CloudFormation cannot. Every step first looks at what exists, so
//! a second run changes nothing and an interrupted run continues where it stopped.

pub mod cloud;
pub mod config;
pub mod sdk;
pub mod stages;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cloud::{Cloud, CloudError, Member, PeeringSide, Stack};
pub use config::{DeployConfig, DeployConfigError};
use stages::{Known, Role};

use crate::AwsConfig;
use crate::config::Targets;

/// The template every stage deploys.
pub const TEMPLATE: &str = include_str!("../../../../deploy/aws/valkey-dr.yaml");

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Cloud(#[from] CloudError),
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
}

impl Waits {
    pub fn of(deploy: &DeployConfig) -> Waits {
        Waits {
            poll: Duration::from_millis(deploy.poll_ms),
            limit: Duration::from_secs(3 * 3600),
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
    let key = artifact_key(zip);
    let mut changed = 0;

    say(&format!(
        "stage 1/6: Lambda code → s3://{}/{key}",
        deploy.artifact_bucket
    ));
    if cloud
        .artifacts
        .ensure(&region(Role::Primary), &deploy.artifact_bucket, &key, zip)
        .await?
    {
        say("  uploaded");
        changed += 1;
    } else {
        say("  already there");
    }

    let mut primary_outputs = cloud
        .stacks
        .describe(&region(Role::Primary), &stack(Role::Primary))
        .await?
        .map(|s| s.outputs)
        .unwrap_or_default();
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
        let parameters = stages::parameters(config, deploy, role, &known, &key);
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

fn targets_from(outputs: &BTreeMap<String, String>) -> Option<Targets> {
    Some(Targets {
        global_replication_group_id: outputs.get("GlobalReplicationGroupId")?.clone(),
        hosted_zone_id: outputs.get("HostedZoneId")?.clone(),
    })
}

/// The ids a reconcile needs: from the file, else from the primary stack's outputs.
pub async fn targets(config: &AwsConfig, cloud: &Cloud<'_>) -> Result<Targets, DeployError> {
    let from_file = config.targets();
    let Some(deploy) = &config.deploy else {
        return from_file.map_err(|e| DeployError::Config(e.to_string()));
    };
    if let Ok(targets) = from_file {
        return Ok(targets);
    }
    let name = stages::stack_name(deploy, Role::Primary);
    let stack = cloud.stacks.describe(&deploy.primary.region, &name).await?;
    stack
        .as_ref()
        .and_then(|s| targets_from(&s.outputs))
        .ok_or_else(|| {
            DeployError::Config(format!(
                "stack {name} in {} is missing or has no GlobalReplicationGroupId/HostedZoneId outputs: run `valkey-dr aws deploy` first",
                deploy.primary.region
            ))
        })
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
        Some(stack) => Err(failure(cloud, region, name, stack).await),
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

/// The error for a stack that ended badly: the first resource failure explains it best.
async fn failure(cloud: &Cloud<'_>, region: &str, name: &str, stack: Stack) -> DeployError {
    let first_failed = cloud
        .stacks
        .events(region, name)
        .await
        .ok()
        .and_then(|events| {
            events
                .into_iter()
                .rev()
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
    cloud.stacks.delete(region, name).await?;
    match wait_for(cloud, region, name, seen, waits, say).await? {
        None => Ok(true),
        Some(s) if s.status == "DELETE_COMPLETE" => Ok(true),
        Some(s) => Err(failure(cloud, region, name, s).await),
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
/// FailoverGlobalReplicationGroup and waits until ElastiCache reports it. Moving the name is the
/// reconcile's job (the caller runs one right after, without waiting for the Lambda).
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
    let current = members
        .iter()
        .find(|m| m.role == "PRIMARY")
        .map(|m| m.region.clone())
        .unwrap_or_else(|| to_region.to_string());
    wait_until(
        waits,
        say,
        &format!("global datastore {global} to settle"),
        || async { cloud.datastore.settled(&current, global).await },
    )
    .await?;
    say(&format!(
        "failing over {global}: {} → {} ({to_region})",
        describe_members(&members),
        target.replication_group_id
    ));
    cloud
        .datastore
        .failover(&current, global, to_region, &target.replication_group_id)
        .await?;
    wait_until(
        waits,
        say,
        &format!("{to_region} to become primary"),
        || async {
            let members = cloud.datastore.members(to_region, global).await?;
            let promoted = members
                .iter()
                .any(|m| m.region == to_region && m.role == "PRIMARY");
            Ok(promoted && cloud.datastore.settled(to_region, global).await?)
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

/// `aws destroy`: the deploy undone in reverse — secondary out of the global datastore, the
/// peering removed (secondary route, then the primary's peering and zone association), the
/// secondary stack deleted, then the primary — and checked: no replication group and no helper
/// instance is left in either region.
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

    say("step 1/5: take the secondary out of the global datastore");
    if let Some(global) = output(&primary, "GlobalReplicationGroupId") {
        let primary_group = output(&primary, "ReplicationGroupId");
        let members = cloud
            .datastore
            .members(&region(Role::Primary), &global)
            .await?;
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
            promote(config, cloud, &home.region.clone(), waits, say).await?;
        }
        for member in cloud
            .datastore
            .members(&region(Role::Primary), &global)
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
                    &region(Role::Primary),
                    &global,
                    &member.replication_group_id,
                    &member.region,
                )
                .await?;
            wait_until(
                waits,
                say,
                "the secondary to leave the datastore",
                || async {
                    let members = cloud
                        .datastore
                        .members(&region(Role::Primary), &global)
                        .await?;
                    Ok(!members
                        .iter()
                        .any(|m| m.replication_group_id == member.replication_group_id))
                },
            )
            .await?;
        }
    } else {
        say("  no global datastore recorded");
    }

    say(
        "step 2/5: remove the VPC peering (secondary's route, then the primary's peering and zone association)",
    );
    let key = primary
        .as_ref()
        .and_then(|s| s.parameters.get("LambdaArtifactKey").cloned())
        .unwrap_or_default();
    // Everything known except the peering; the secondary keeps the datastore id it was deployed
    // with (the primary does not use it).
    let unpeered = Known {
        global_replication_group_id: secondary
            .as_ref()
            .and_then(|s| s.parameters.get("GlobalReplicationGroupId").cloned()),
        ..Known::default()
    };
    for (role, present) in [(Role::Secondary, &secondary), (Role::Primary, &primary)] {
        let Some(existing) = present else { continue };
        let peered = ["PeeringConnectionId", "PeerVpcId"]
            .iter()
            .any(|k| existing.parameters.get(*k).is_some_and(|v| !v.is_empty()));
        if !peered {
            continue;
        }
        let parameters = stages::parameters(config, deploy, role, &unpeered, &key);
        say(&format!("  updating {}", stack(role)));
        apply_stack(cloud, &region(role), &stack(role), &parameters, waits, say).await?;
    }

    for (step, role) in [(3, Role::Secondary), (4, Role::Primary)] {
        say(&format!(
            "step {step}/5: delete stack {} in {}",
            stack(role),
            region(role)
        ));
        if !delete_stack(cloud, &region(role), &stack(role), waits, say).await? {
            say("  not there");
        }
    }

    say("step 5/5: verify nothing is left");
    let mut left = Vec::new();
    for (region, group, instance) in expected_gone {
        if let Some(group) = group {
            if cloud.datastore.endpoint(&region, &group).await?.is_some() {
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
    if left.is_empty() {
        Ok(())
    } else {
        Err(DeployError::Leftovers(left.join(", ")))
    }
}

/// `aws status`: the stacks, the datastore's members with their endpoints.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub stacks: Vec<(String, String, String)>,
    pub members: Vec<(Member, Option<String>)>,
    pub targets: Option<Targets>,
}

pub async fn status(config: &AwsConfig, cloud: &Cloud<'_>) -> Result<Status, DeployError> {
    let mut status = Status::default();
    let mut primary_outputs = None;
    if let Some(deploy) = &config.deploy {
        for role in [Role::Primary, Role::Secondary] {
            let name = stages::stack_name(deploy, role);
            let region = stages::region(deploy, role).to_string();
            let stack = cloud.stacks.describe(&region, &name).await?;
            let state = stack.as_ref().map_or("absent".into(), |s| s.status.clone());
            if role == Role::Primary {
                primary_outputs = stack.map(|s| s.outputs);
            }
            status.stacks.push((name, region, state));
        }
    }
    // The ids from the file, else from the primary stack just read (not read again).
    let Some(targets) = config
        .targets()
        .ok()
        .or_else(|| primary_outputs.as_ref().and_then(targets_from))
    else {
        return Ok(status);
    };
    let asked_region = config
        .deploy
        .as_ref()
        .map(|d| d.primary.region.clone())
        .unwrap_or_default();
    for member in cloud
        .datastore
        .members(&asked_region, &targets.global_replication_group_id)
        .await?
    {
        let endpoint = cloud
            .datastore
            .endpoint(&member.region, &member.replication_group_id)
            .await?;
        status.members.push((member, endpoint));
    }
    status.targets = Some(targets);
    Ok(status)
}
