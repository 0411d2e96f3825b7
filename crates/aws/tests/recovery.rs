//! Recovery from a regional failure on moto: with the primary's region answering nothing but 503
//! (the stand-in in scripts/moto_server.py plays the outage for every service signed for it),
//! `aws promote` and the reconcile after it work through the surviving region alone.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;
use valkey_dr_aws::AwsConfig;
use valkey_dr_aws::deploy::{self, Waits, sdk::RealCloud};
use valkey_dr_aws::handler::handle_loading;
use valkey_dr_aws::route53::Route53;
use valkey_dr_dns::DnsProvider;

const PRIMARY: &str = "us-east-2";
const SURVIVOR: &str = "us-west-2";

/// A global datastore: `vdr-east` (PRIMARY) in us-east-2, `vdr-west` joining from us-west-2.
async fn global_datastore(moto: &common::Moto) {
    common::global_datastore(moto, (PRIMARY, "vdr-east"), (SURVIVOR, "vdr-west")).await;
}

fn config(zone_id: &str) -> AwsConfig {
    AwsConfig::parse(&format!(
        "global_replication_group_id = \"ldgnf-valkey-dr\"\nhosted_zone_id = \"{zone_id}\"\nzone = \"valkey-dr.internal\"\nglobal_name = \"demo\"\ninsync_timeout_secs = 5\n"
    ))
    .unwrap()
}

#[tokio::test]
async fn promote_and_reconcile_work_through_the_surviving_region_alone() {
    let moto = common::moto().await;
    global_datastore(&moto).await;
    let route53 = common::route53(&moto);
    let zone_id = common::hosted_zone(&route53, "valkey-dr.internal").await;
    let dns = Route53::new(route53, &zone_id, Duration::from_secs(5));
    let config = config(&zone_id);
    let reconcile_in = |region: &'static str| {
        let (moto, config) = (&moto, &config);
        async move {
            handle_loading(&json!({ "action": "reconcile" }), config, || async move {
                common::sdk(moto, region)
            })
            .await
        }
    };
    let first = reconcile_in(PRIMARY).await;
    assert_eq!(first.error, None);
    assert_eq!(first.primary_region.as_deref(), Some(PRIMARY));

    moto.set_region(PRIMARY, "down");
    // Asking the failed region fails, as it would on AWS.
    assert!(reconcile_in(PRIMARY).await.error.is_some());

    let cloud = RealCloud::from_sdk(common::sdk(&moto, SURVIVOR)).unwrap();
    let waits = Waits {
        poll: Duration::from_millis(100),
        limit: Duration::from_secs(30),
        drain: Duration::ZERO,
    };
    let lines = std::sync::Mutex::new(Vec::new());
    let say = |line: &str| lines.lock().unwrap().push(line.to_string());
    let started = Instant::now();
    let promoted = deploy::promote(&config, &cloud.cloud(), SURVIVOR, waits, &say)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", lines.lock().unwrap().join("\n")));
    assert_eq!(promoted.replication_group_id, "vdr-west");
    // The stand-in's failover takes a second with no PRIMARY, like AWS's: promote waited it out.
    assert!(started.elapsed() >= Duration::from_millis(900));

    let after = reconcile_in(SURVIVOR).await;
    assert_eq!(after.error, None);
    assert_eq!(after.primary_region.as_deref(), Some(SURVIVOR));
    assert_eq!(after.epoch, Some(2));
    let cname = dns
        .records(&["demo.valkey-dr.internal.".to_string()])
        .await
        .unwrap();
    assert!(
        cname[0].values[0].starts_with("master.vdr-west."),
        "{cname:?}"
    );

    // A second promote is a no-op, still without the failed region.
    deploy::promote(&config, &cloud.cloud(), SURVIVOR, waits, &say)
        .await
        .unwrap();
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("already the primary"))
    );
}

#[tokio::test]
async fn a_joining_group_that_passes_what_it_inherits_is_refused() {
    let moto = common::moto().await;
    global_datastore(&moto).await;
    let refused = valkey_dr_aws::discovery::client_in(&common::sdk(&moto, SURVIVOR), SURVIVOR)
        .create_replication_group()
        .replication_group_id("vdr-west-2")
        .replication_group_description("valkey-dr test")
        .global_replication_group_id("ldgnf-valkey-dr")
        .engine("valkey")
        .transit_encryption_enabled(true)
        .send()
        .await
        .unwrap_err();
    let refused = aws_sdk_elasticache::error::DisplayErrorContext(refused).to_string();
    assert!(
        refused.contains("InvalidParameterCombination")
            && refused.contains("Engine, TransitEncryptionEnabled"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_failover_shows_a_window_without_a_primary_and_a_lone_member_is_primary_only() {
    let moto = common::moto().await;
    global_datastore(&moto).await;
    let datastore = valkey_dr_aws::deploy::sdk::SdkDatastore::new(&common::sdk(&moto, PRIMARY));
    use valkey_dr_aws::deploy::cloud::Datastore;
    datastore
        .failover(SURVIVOR, "ldgnf-valkey-dr", SURVIVOR, "vdr-west")
        .await
        .unwrap();
    let members = datastore
        .members(SURVIVOR, "ldgnf-valkey-dr")
        .await
        .unwrap();
    assert!(members.iter().all(|m| m.role == "SECONDARY"), "{members:?}");
    assert!(
        !datastore
            .settled(SURVIVOR, "ldgnf-valkey-dr")
            .await
            .unwrap()
    );
    // A second failover while the first is in flight is refused.
    let busy = datastore
        .failover(SURVIVOR, "ldgnf-valkey-dr", SURVIVOR, "vdr-west")
        .await
        .unwrap_err();
    assert_eq!(busy.code(), Some("InvalidGlobalReplicationGroupState"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let members = datastore
        .members(SURVIVOR, "ldgnf-valkey-dr")
        .await
        .unwrap();
    assert!(
        members
            .iter()
            .any(|m| m.region == SURVIVOR && m.role == "PRIMARY")
    );
    datastore
        .disassociate(SURVIVOR, "ldgnf-valkey-dr", "vdr-east", PRIMARY)
        .await
        .unwrap();
    // One member left: AWS calls that `primary-only`, not `available` — and a datastore in that
    // state takes a new member (the first deploy's state before its secondary joins; a destroy's
    // after the last one left), so it counts as settled.
    let status = valkey_dr_aws::discovery::client_in(&common::sdk(&moto, SURVIVOR), SURVIVOR)
        .describe_global_replication_groups()
        .global_replication_group_id("ldgnf-valkey-dr")
        .send()
        .await
        .unwrap()
        .global_replication_groups()[0]
        .status()
        .map(str::to_string);
    assert_eq!(status.as_deref(), Some("primary-only"));
    assert!(
        datastore
            .settled(SURVIVOR, "ldgnf-valkey-dr")
            .await
            .unwrap()
    );
}
