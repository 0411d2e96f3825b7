//! CloudFormation stacks: create or update one and wait until it settles, or delete it.

use super::*;

/// Creates or updates one stack and waits for it, printing its events. Returns its outputs and
/// whether anything changed.
pub(super) async fn apply_stack(
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

pub(super) async fn event_ids(
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
pub(super) async fn settle(
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
pub(super) async fn wait_for(
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
pub(super) async fn failure(
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

pub(super) async fn delete_stack(
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
