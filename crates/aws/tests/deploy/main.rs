//! The deploy orchestration, stage by stage, against a fake AWS (moto cannot create ElastiCache
//! resources through CloudFormation). The fake plays the template and is as strict as AWS where
//! deploy depends on it: each stack's outputs follow from its parameters, a primary stack with a
//! peer creates a peering connection waiting for acceptance, stacks own their replication group
//! and helper instance, the primary stack owns the hosted zone; every stack's scheduled reconcile
//! (while enabled) writes the name; a zone holding records cannot be deleted
//! (`HostedZoneNotEmpty`), nor a group that is `modifying`; a region can be made unreachable.

mod fake;

use std::sync::Mutex;
use std::time::Duration;

use fake::*;
use valkey_dr_aws::AwsConfig;
use valkey_dr_aws::deploy::cloud::{Cloud, RecordSet};
use valkey_dr_aws::deploy::{self, DeployError, Waits};
use valkey_dr_core::RecordType;

fn config() -> AwsConfig {
    AwsConfig::parse(
        r#"
zone = "valkey-dr.internal"
global_name = "demo"

[deploy]
poll_ms = 1
primary = { region = "us-east-2", artifact_bucket = "artifacts-east", vpc_cidr = "10.1.0.0/16", subnet_cidrs = ["10.1.1.0/24", "10.1.2.0/24"] }
secondary = { region = "us-west-2", artifact_bucket = "artifacts-west", vpc_cidr = "10.2.0.0/16", subnet_cidrs = ["10.2.1.0/24", "10.2.2.0/24"] }
"#,
    )
    .unwrap()
}

fn waits() -> Waits {
    Waits {
        poll: Duration::from_millis(1),
        limit: Duration::from_secs(10),
        drain: Duration::ZERO,
    }
}

/// A Lambda zip as `make lambda` builds it: an arm64 executable needing glibc 2.34 at most.
fn zip(version: &str) -> Vec<u8> {
    let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
    elf.resize(18, 0);
    elf.extend(0xb7u16.to_le_bytes());
    elf.resize(64, 0);
    elf.extend(b"GLIBC_2.17\0GLIBC_2.34\0");
    elf.extend(version.as_bytes());
    deploy::artifact::stored_zip("bootstrap", &elf)
}

struct Run {
    fake: Fake,
    lines: Mutex<Vec<String>>,
}

impl Run {
    fn new() -> Run {
        Run {
            fake: Fake(Mutex::new(World::default())),
            lines: Mutex::new(Vec::new()),
        }
    }
    fn cloud(&self) -> Cloud<'_> {
        Cloud {
            stacks: &self.fake,
            network: &self.fake,
            artifacts: &self.fake,
            datastore: &self.fake,
            zones: &self.fake,
        }
    }
    fn say(&self) -> impl Fn(&str) + Send + Sync + '_ {
        |line: &str| self.lines.lock().unwrap().push(line.to_string())
    }
    async fn deploy(&self) -> Result<deploy::Deployed, DeployError> {
        deploy::deploy(&config(), &self.cloud(), &zip("v1"), waits(), &self.say()).await
    }
    fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut self.fake.0.lock().unwrap().calls)
    }
    fn take_lines(&self) -> Vec<String> {
        std::mem::take(&mut self.lines.lock().unwrap())
    }
}

#[tokio::test]
async fn deploy_runs_the_stages_in_order_and_passes_outputs_on() {
    let run = Run::new();
    let deployed = run.deploy().await.unwrap();
    let key = deploy::artifact_key(&zip("v1"));
    assert_eq!(
        run.take_calls(),
        vec![
            // Each region's function reads its code from its own region's bucket.
            format!("upload artifacts-east/{key}"),
            format!("upload artifacts-west/{key}"),
            "create valkey-dr-primary Reconcile=enabled".to_string(),
            "create valkey-dr-secondary GlobalReplicationGroupId=ldgnf-valkey-dr HostedZoneId=Z0FAKE Reconcile=enabled".into(),
            "update valkey-dr-primary PeerVpcId=vpc-us-west-2 PeerRegion=us-west-2 Reconcile=enabled".into(),
            "update valkey-dr-secondary GlobalReplicationGroupId=ldgnf-valkey-dr HostedZoneId=Z0FAKE PeeringConnectionId=pcx-1 Reconcile=enabled".into(),
            "accept pcx-1 in us-west-2".into(),
            "allow-dns pcx-1 Requester in us-east-2".into(),
            "allow-dns pcx-1 Accepter in us-west-2".into(),
        ]
    );
    assert_eq!(
        deployed.targets.global_replication_group_id,
        "ldgnf-valkey-dr"
    );
    assert_eq!(deployed.targets.hosted_zone_id, "Z0FAKE");
    assert_eq!(deployed.changed, 9);
    let lines = run.take_lines().join("\n");
    // Progress shows each stage and the stack events while waiting.
    for expected in [
        "stage 1/6: Lambda code (arm64, glibc 2.34)",
        "stage 2/6: stack valkey-dr-primary in us-east-2 (Role=primary)",
        "stage 4/6: stack valkey-dr-primary in us-east-2 (Role=primary, PeerVpcId=vpc-us-west-2)",
        "ReplicationGroup",
        "CREATE_IN_PROGRESS",
        "UPDATE_COMPLETE",
    ] {
        assert!(lines.contains(expected), "missing {expected:?} in\n{lines}");
    }
    let world = run.fake.0.lock().unwrap();
    let peering = world.peering.as_ref().unwrap();
    assert!(peering.requester_dns && peering.accepter_dns);
}

#[tokio::test]
async fn a_second_deploy_changes_nothing() {
    let run = Run::new();
    run.deploy().await.unwrap();
    run.take_calls();
    let again = run.deploy().await.unwrap();
    assert_eq!(run.take_calls(), Vec::<String>::new());
    assert_eq!(again.changed, 0);
    let lines = run.take_lines().join("\n");
    assert!(
        lines.contains("already there") && lines.contains("unchanged"),
        "{lines}"
    );
    assert!(
        lines.contains("Requester side (us-east-2): already allowed"),
        "{lines}"
    );
}

#[tokio::test]
async fn a_failed_stage_reports_the_resource_and_a_rerun_recovers() {
    let run = Run::new();
    run.fake.0.lock().unwrap().fail_next = Some(("valkey-dr-secondary".into(), String::new()));
    let error = run.deploy().await.unwrap_err().to_string();
    assert!(
        error.contains("stack valkey-dr-secondary in us-west-2: ROLLBACK_COMPLETE")
            && error.contains("ReplicationGroup: Subnet group has no subnet"),
        "{error}"
    );
    // The primary stack was created; nothing after the failed stage ran.
    let calls = run.take_calls();
    assert_eq!(calls.len(), 4, "{calls:?}");
    // The rerun deletes the rolled-back stack and goes on from there.
    let deployed = run.deploy().await.unwrap();
    let calls = run.take_calls();
    assert_eq!(calls[0], "delete valkey-dr-secondary");
    assert_eq!(
        calls[1],
        "create valkey-dr-secondary GlobalReplicationGroupId=ldgnf-valkey-dr HostedZoneId=Z0FAKE Reconcile=enabled"
    );
    assert!(
        calls
            .iter()
            .all(|c| !c.starts_with("create valkey-dr-primary"))
    );
    assert_eq!(deployed.peering_connection_id, "pcx-1");
}

#[tokio::test]
async fn a_failed_update_names_its_own_cause_not_an_older_one() {
    let run = Run::new();
    run.deploy().await.unwrap();
    for (version, reason) in [("v2", "the first cause"), ("v3", "the second cause")] {
        run.fake.0.lock().unwrap().fail_next = Some(("valkey-dr-primary".into(), reason.into()));
        let error = deploy::deploy(&config(), &run.cloud(), &zip(version), waits(), &run.say())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("UPDATE_ROLLBACK_COMPLETE") && error.contains(reason),
            "{reason}: {error}"
        );
        assert!(
            version == "v2" || !error.contains("the first cause"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_throttled_poll_is_retried_and_too_many_give_up() {
    let run = Run::new();
    run.fake.0.lock().unwrap().throttle_describes = 2;
    run.deploy().await.unwrap();
    let lines = run.take_lines().join("\n");
    assert!(
        lines.contains(
            "checking valkey-dr-primary failed (CloudFormation: Rate exceeded); retry 1/4"
        ) && lines.contains("retry 2/4"),
        "{lines}"
    );

    let run = Run::new();
    run.fake.0.lock().unwrap().throttle_describes = 5;
    let error = run.deploy().await.unwrap_err().to_string();
    assert_eq!(error, "CloudFormation: Rate exceeded");
}

#[tokio::test]
async fn promote_fails_over_and_is_a_no_op_when_already_primary() {
    let run = Run::new();
    let mut config = config();
    deploy::deploy(&config, &run.cloud(), &zip("v1"), waits(), &run.say())
        .await
        .unwrap();
    config.global_replication_group_id = None; // read from the primary stack's outputs
    run.take_calls();
    let promoted = deploy::promote(&config, &run.cloud(), "us-west-2", waits(), &run.say())
        .await
        .unwrap();
    assert_eq!(promoted.replication_group_id, "valkey-dr-secondary");
    assert_eq!(
        run.take_calls(),
        vec!["failover to valkey-dr-secondary in us-west-2".to_string()]
    );
    deploy::promote(&config, &run.cloud(), "us-west-2", waits(), &run.say())
        .await
        .unwrap();
    assert_eq!(run.take_calls(), Vec::<String>::new());
    let error = deploy::promote(&config, &run.cloud(), "eu-west-1", waits(), &run.say())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("no member in eu-west-1"), "{error}");
}

/// Review B6: the failover went through but its answer was lost; the SDK's re-send met the change
/// in progress ("busy"), and once it settled promote asked to fail over to what already was the
/// primary — and reported failure after a successful move.
#[tokio::test]
async fn promote_whose_failover_answer_was_lost_sees_it_went_through() {
    let run = Run::new();
    run.deploy().await.unwrap();
    run.take_calls();
    run.fake.0.lock().unwrap().failover_answer_lost = true;
    let promoted = deploy::promote(&config(), &run.cloud(), "us-west-2", waits(), &run.say())
        .await
        .unwrap();
    assert_eq!(promoted.region, "us-west-2");
    assert_eq!(
        run.take_calls(),
        vec!["failover to valkey-dr-secondary in us-west-2".to_string()]
    );
}

#[tokio::test]
async fn promote_works_while_the_primary_region_is_down() {
    let run = Run::new();
    run.deploy().await.unwrap();
    run.take_calls();
    run.fake.0.lock().unwrap().down.insert("us-east-2".into());
    // No ids in the config: the primary stack does not answer, the secondary stack names them.
    let promoted = deploy::promote(&config(), &run.cloud(), "us-west-2", waits(), &run.say())
        .await
        .unwrap();
    assert_eq!(promoted.region, "us-west-2");
    assert_eq!(
        run.take_calls(),
        vec!["failover to valkey-dr-secondary in us-west-2".to_string()]
    );
    let lines = run.take_lines().join("\n");
    assert!(lines.contains("asked in us-west-2"), "{lines}");
    // Both stacks gone or down: the error says where the ids would have come from.
    run.fake.0.lock().unwrap().down.insert("us-west-2".into());
    let error = deploy::promote(&config(), &run.cloud(), "us-west-2", waits(), &run.say())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("stack valkey-dr-primary in us-east-2: fake: us-east-2 does not answer")
            && error.contains("stack valkey-dr-secondary in us-west-2"),
        "{error}"
    );
}

#[tokio::test]
async fn status_reads_what_answers_during_an_outage() {
    let run = Run::new();
    run.deploy().await.unwrap();
    run.fake.0.lock().unwrap().down.insert("us-east-2".into());
    let status = deploy::status(&config(), &run.cloud()).await.unwrap();
    assert!(
        status.stacks[0].2.starts_with("unreachable"),
        "{:?}",
        status.stacks
    );
    assert_eq!(status.stacks[1].2, "UPDATE_COMPLETE");
    assert_eq!(
        status.targets.unwrap().global_replication_group_id,
        "ldgnf-valkey-dr"
    );
    let shown: Vec<String> = status
        .members
        .iter()
        .map(|(m, endpoint)| {
            format!(
                "{} {} {}",
                m.region,
                m.role,
                endpoint.as_deref().unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(
        shown[0].starts_with("us-east-2 PRIMARY unreachable"),
        "{shown:?}"
    );
    assert!(
        shown[1].starts_with("us-west-2 SECONDARY master."),
        "{shown:?}"
    );
}

#[tokio::test]
async fn destroy_undoes_the_deploy_in_reverse_and_verifies() {
    let run = Run::new();
    run.deploy().await.unwrap();
    deploy::promote(&config(), &run.cloud(), "us-west-2", waits(), &run.say())
        .await
        .unwrap();
    run.take_calls();
    // The schedule has written the name by now.
    assert_eq!(run.fake.0.lock().unwrap().zone.as_ref().unwrap().len(), 2);
    deploy::destroy(&config(), &run.cloud(), waits(), &run.say())
        .await
        .unwrap();
    assert_eq!(
        run.take_calls(),
        vec![
            // The stacks' roles are restored before the secondary leaves.
            "failover to valkey-dr-primary in us-east-2".to_string(),
            "disassociate valkey-dr-secondary in us-west-2".into(),
            // The reconcile functions stop before the records go, or the schedule rewrites them.
            "update valkey-dr-secondary GlobalReplicationGroupId=ldgnf-valkey-dr HostedZoneId=Z0FAKE Reconcile=disabled".into(),
            "update valkey-dr-primary Reconcile=disabled".into(),
            "delete record _valkey-dr.demo.valkey-dr.internal. TXT".into(),
            "delete record demo.valkey-dr.internal. CNAME".into(),
            "delete valkey-dr-secondary".into(),
            "delete valkey-dr-primary".into(),
        ]
    );
    {
        let world = run.fake.0.lock().unwrap();
        assert!(world.stacks.is_empty() && world.groups.is_empty() && world.instances.is_empty());
        assert!(world.zone.is_none());
    }
    let lines = run.take_lines().join("\n");
    for expected in [
        "instance i-us-west-2 (us-west-2): gone",
        "hosted zone Z0FAKE: gone",
        "deleted 2 record set(s) owned by \"valkey-dr\"",
    ] {
        assert!(lines.contains(expected), "missing {expected:?} in\n{lines}");
    }
    // A second destroy finds nothing to do and still succeeds.
    deploy::destroy(&config(), &run.cloud(), waits(), &run.say())
        .await
        .unwrap();
    assert_eq!(run.take_calls(), Vec::<String>::new());
}

/// Issue 22 (A2 end to end): deploy → promote → destroy with an owner other than the default. The
/// functions write the name as the owner the stack gave them; destroy removes only what the
/// config's owner holds — with the owner lost on the way (A2), the records and the zone stayed.
/// A destroy cut short half-way (a stack update refused) finishes when run again.
#[tokio::test]
async fn a_chosen_owner_deploys_promotes_and_destroys_leaving_nothing_even_after_a_cut_short_destroy()
 {
    let run = Run::new();
    let mut config = config();
    config.owner = "team-cache".into();
    deploy::deploy(&config, &run.cloud(), &zip("v1"), waits(), &run.say())
        .await
        .unwrap();
    deploy::promote(&config, &run.cloud(), "us-west-2", waits(), &run.say())
        .await
        .unwrap();
    {
        let mut world = run.fake.0.lock().unwrap();
        world.scheduled_reconcile(); // the next minute's run
        let zone = world.zone.as_ref().unwrap();
        let txt = &zone[&(
            "_valkey-dr.demo.valkey-dr.internal.".to_string(),
            RecordType::Txt,
        )];
        assert!(txt.values[0].contains("owner=team-cache"), "{txt:?}");
        let cname = &zone[&("demo.valkey-dr.internal.".to_string(), RecordType::Cname)];
        assert!(
            cname.values[0].contains("valkey-dr-secondary.us-west-2"),
            "{cname:?}"
        );
    }
    run.fake.0.lock().unwrap().fail_next = Some(("valkey-dr-primary".into(), String::new()));
    let error = deploy::destroy(&config, &run.cloud(), waits(), &run.say())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("valkey-dr-primary"), "{error}");
    deploy::destroy(&config, &run.cloud(), waits(), &run.say())
        .await
        .unwrap();
    let world = run.fake.0.lock().unwrap();
    assert!(world.stacks.is_empty() && world.groups.is_empty() && world.instances.is_empty());
    assert!(world.zone.is_none(), "{:?}", world.zone);
}

#[tokio::test]
async fn destroy_leaves_a_name_it_does_not_own_and_says_why_the_zone_stays() {
    let run = Run::new();
    run.deploy().await.unwrap();
    {
        // Someone else's record in our zone.
        let mut world = run.fake.0.lock().unwrap();
        let theirs = RecordSet::new(
            "other.valkey-dr.internal.",
            RecordType::A,
            60,
            ["10.9.9.9".to_string()],
        );
        world
            .zone
            .as_mut()
            .unwrap()
            .insert((theirs.name.clone(), RecordType::A), theirs);
    }
    let error = deploy::destroy(&config(), &run.cloud(), waits(), &run.say())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("DELETE_FAILED") && error.contains("HostedZoneNotEmpty"),
        "{error}"
    );
    let zone = run.fake.0.lock().unwrap().zone.clone().unwrap();
    assert_eq!(
        zone.keys().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        vec!["other.valkey-dr.internal."],
        "only our two records were removed: {}",
        run.take_lines().join("\n")
    );
}

#[tokio::test]
async fn destroy_reports_what_survived() {
    let run = Run::new();
    run.deploy().await.unwrap();
    run.fake.0.lock().unwrap().leak_instances = true;
    let error = deploy::destroy(&config(), &run.cloud(), waits(), &run.say())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "destroy left resources behind: instance i-us-east-2 in us-east-2, instance i-us-west-2 in us-west-2"
    );
}

#[tokio::test]
async fn an_artifact_the_runtime_cannot_run_stops_deploy_before_anything_is_created() {
    let run = Run::new();
    let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
    elf.resize(18, 0);
    elf.extend(0x3eu16.to_le_bytes());
    elf.extend(b"GLIBC_2.36\0");
    let native = deploy::artifact::stored_zip("bootstrap", &elf);
    let error = deploy::deploy(&config(), &run.cloud(), &native, waits(), &run.say())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("needs GLIBC_2.36"), "{error}");
    assert_eq!(run.take_calls(), Vec::<String>::new());
}

#[tokio::test]
async fn a_node_type_change_through_the_member_group_is_refused() {
    let run = Run::new();
    run.deploy().await.unwrap();
    run.take_calls();
    let mut bigger = config();
    bigger.deploy.as_mut().unwrap().node_type = "cache.r7g.xlarge".into();
    let error = deploy::deploy(&bigger, &run.cloud(), &zip("v1"), waits(), &run.say())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("datastore runs cache.r7g.large")
            && error.contains("modify-global-replication-group"),
        "{error}"
    );
    assert!(
        run.take_calls().iter().all(|c| !c.starts_with("update")),
        "no stack was touched"
    );
}

#[test]
fn overlapping_ranges_are_rejected_before_anything_is_created() {
    // Validation happens when the file is read: deploy never starts with a bad plan.
    let text = r#"
zone = "valkey-dr.internal"
global_name = "demo"
[deploy]
primary = { region = "us-east-2", artifact_bucket = "bucket-a", vpc_cidr = "10.1.0.0/16", subnet_cidrs = ["10.1.1.0/24", "10.1.2.0/24"] }
secondary = { region = "us-west-2", artifact_bucket = "bucket-b", vpc_cidr = "10.1.0.0/20", subnet_cidrs = ["10.1.1.0/24", "10.1.2.0/24"] }
"#;
    let error = AwsConfig::parse(text).unwrap_err().to_string();
    assert!(
        error.contains(
            "`deploy.secondary.vpc_cidr`: 10.1.0.0/20 overlaps the primary's 10.1.0.0/16"
        ),
        "{error}"
    );
}
