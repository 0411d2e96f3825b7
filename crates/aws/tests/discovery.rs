mod common;

use aws_sdk_elasticache::operation::describe_global_replication_groups::DescribeGlobalReplicationGroupsOutput;
use aws_sdk_elasticache::types::{GlobalReplicationGroup, GlobalReplicationGroupMember};
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use valkey_dr_aws::discovery::{self, DiscoveryError};

#[tokio::test]
async fn finds_the_primary_member_and_its_endpoint_in_its_region() {
    let (client, rules) = common::elasticache("us-east-2");
    let regions = std::sync::Mutex::new(Vec::new());
    let primary = discovery::primary(
        &client,
        |region| {
            regions.lock().unwrap().push(region.to_string());
            client.clone()
        },
        "ldgnf-valkey-dr",
    )
    .await
    .unwrap();
    assert_eq!(primary.region, "us-east-2");
    assert_eq!(primary.replication_group_id, "valkey-dr-us-east-2");
    assert_eq!(
        primary.endpoint,
        "master.valkey-dr-us-east-2.abc123.cache.amazonaws.com"
    );
    assert_eq!(
        *regions.lock().unwrap(),
        vec!["us-east-2"],
        "the group is described in its own region"
    );
    assert_eq!(rules[0].num_calls(), 1);
}

#[tokio::test]
async fn no_primary_member_is_an_error_not_a_guess() {
    let rule =
        mock!(aws_sdk_elasticache::Client::describe_global_replication_groups).then_output(|| {
            DescribeGlobalReplicationGroupsOutput::builder()
                .global_replication_groups(
                    GlobalReplicationGroup::builder()
                        .members(
                            GlobalReplicationGroupMember::builder()
                                .replication_group_id("a")
                                .replication_group_region("us-east-1")
                                .role("SECONDARY")
                                .build(),
                        )
                        .build(),
                )
                .build()
        });
    let client = mock_client!(aws_sdk_elasticache, RuleMode::MatchAny, [&rule]);
    let error = discovery::primary(&client, |_| client.clone(), "ldgnf-valkey-dr")
        .await
        .unwrap_err();
    assert!(matches!(error, DiscoveryError::NoPrimary(_)), "{error}");
}
