//! `valkey-dr aws promote`: a Global Datastore failover to another region, waited for.

use super::*;

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
    let targets = targets_asking_first(config, cloud, Some(to_region)).await?;
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
    // with InvalidGlobalReplicationGroupState: wait for it, asking again. That change may be our
    // own failover, applied with its answer lost (the SDK sent it again): before asking again,
    // look whether the target already is the primary.
    let asked = std::cell::Cell::new(false);
    wait_until(
        waits,
        say,
        &format!("{global} to accept the failover"),
        || async {
            if asked.replace(true) && is_primary(cloud, to_region, global).await? {
                return Ok(true);
            }
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
        || is_primary(cloud, to_region, global),
    )
    .await?;
    let members = cloud.datastore.members(to_region, global).await?;
    say(&format!("members now: {}", describe_members(&members)));
    Ok(Member {
        role: "PRIMARY".into(),
        ..target
    })
}

/// Whether the member in `region` is the global datastore's primary, asked in `region`.
async fn is_primary(cloud: &Cloud<'_>, region: &str, global: &str) -> Result<bool, CloudError> {
    let members = cloud.datastore.members(region, global).await?;
    Ok(members
        .iter()
        .any(|m| m.region == region && m.role == "PRIMARY"))
}

pub(super) fn describe_members(members: &[Member]) -> String {
    if members.is_empty() {
        return "none".into();
    }
    members
        .iter()
        .map(|m| format!("{} {} ({})", m.region, m.replication_group_id, m.role))
        .collect::<Vec<_>>()
        .join(", ")
}
