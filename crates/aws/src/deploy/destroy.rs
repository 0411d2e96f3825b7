//! `valkey-dr aws destroy`: everything deploy created, in reverse order, and only that.

use super::*;

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
pub(super) async fn leave_datastore(
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
pub(super) fn deployed_artifact(stack: &Stack) -> Artifact {
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
pub(super) async fn remove_owned_records(
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
