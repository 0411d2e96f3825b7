//! `valkey-dr aws status`: what the stacks and the datastore show.

use super::*;

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
