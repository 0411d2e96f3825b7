//! The deploy orchestration, stage by stage, against a fake AWS (moto cannot create ElastiCache
//! resources through CloudFormation). The fake plays the template and is as strict as AWS where
//! deploy depends on it: each stack's outputs follow from its parameters, a primary stack with a
//! peer creates a peering connection waiting for acceptance, stacks own their replication group
//! and helper instance, the primary stack owns the hosted zone; every stack's scheduled reconcile
//! (while enabled) writes the name; a zone holding records cannot be deleted
//! (`HostedZoneNotEmpty`), nor a group that is `modifying`; a region can be made unreachable.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use valkey_dr_aws::AwsConfig;
use valkey_dr_aws::deploy::cloud::{
    Artifacts, Change, Cloud, CloudError, Datastore, Group, Member, Network, Peering, PeeringSide,
    RecordSet, Stack, StackEvent, Stacks, Zones,
};
use valkey_dr_aws::deploy::{self, DeployError, Waits};
use valkey_dr_core::RecordType;

#[derive(Default)]
struct World {
    stacks: BTreeMap<(String, String), FakeStack>,
    objects: BTreeMap<String, Vec<u8>>,
    peering: Option<Peering>,
    /// (region, group id) → role; "" = standalone.
    groups: BTreeMap<(String, String), String>,
    instances: Vec<(String, String)>,
    /// Every mutating call, in order.
    calls: Vec<String>,
    /// Make the next submit of this stack fail with this resource reason.
    fail_next: Option<(String, String)>,
    fail_reason: String,
    /// Answer this many of the next DescribeStacks calls made while a stack is changing with a
    /// throttling error.
    throttle_describes: u32,
    /// Instances that survive their stack (a leak for destroy to find).
    leak_instances: bool,
    /// The primary stack's hosted zone: (name, type) → record set.
    zone: Option<BTreeMap<(String, RecordType), RecordSet>>,
    /// Groups in a change (after a disassociation): describe polls left until `available`.
    modifying: BTreeMap<(String, String), u32>,
    /// Regions that do not answer.
    down: std::collections::BTreeSet<String>,
    event_counter: usize,
}

const ZONE_ID: &str = "Z0FAKE";

struct FakeStack {
    stack: Stack,
    events: Vec<StackEvent>,
    /// Polls left before the operation in progress completes.
    polls_left: u32,
    /// The status to reach when the polls run out.
    target: String,
}

struct Fake(Mutex<World>);

fn outputs(region: &str, p: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let role = p["Role"].clone();
    let mut o = BTreeMap::from([
        ("VpcId".to_string(), format!("vpc-{region}")),
        (
            "ReplicationGroupId".to_string(),
            format!("{}-{role}", p["EnvironmentName"]),
        ),
        ("HelperInstanceId".to_string(), format!("i-{region}")),
    ]);
    if role == "primary" {
        o.insert(
            "GlobalReplicationGroupId".into(),
            format!("ldgnf-{}", p["GlobalReplicationGroupIdSuffix"]),
        );
        o.insert("HostedZoneId".into(), ZONE_ID.into());
        if p.get("PeerVpcId").is_some_and(|v| !v.is_empty()) {
            o.insert("PeeringConnectionId".into(), "pcx-1".into());
        }
    }
    o
}

impl World {
    fn event(&mut self, region: &str, name: &str, logical: &str, status: &str, reason: &str) {
        self.event_counter += 1;
        let event = StackEvent {
            id: format!("e{}", self.event_counter),
            timestamp: format!("t{}", self.event_counter),
            logical_id: logical.into(),
            resource_type: if logical == name {
                "AWS::CloudFormation::Stack".into()
            } else {
                "AWS::ElastiCache::ReplicationGroup".into()
            },
            status: status.into(),
            reason: (!reason.is_empty()).then(|| reason.to_string()),
        };
        if let Some(s) = self.stacks.get_mut(&(region.into(), name.into())) {
            s.events.insert(0, event);
        }
    }

    /// The template's side effects once a stack operation completes.
    fn settle(&mut self, region: &str, name: &str) {
        let key = (region.to_string(), name.to_string());
        let Some(fake) = self.stacks.get_mut(&key) else {
            return;
        };
        fake.stack.status = fake.target.clone();
        let status = fake.stack.status.clone();
        let p = fake.stack.parameters.clone();
        if status == "DELETE_COMPLETE" {
            let o = fake.stack.outputs.clone();
            let group = o.get("ReplicationGroupId").cloned().unwrap_or_default();
            if self
                .modifying
                .contains_key(&(region.to_string(), group.clone()))
            {
                return self.delete_failed(
                    region,
                    name,
                    "ReplicationGroup",
                    "Replication group is not in the available state (modifying)",
                );
            }
            if o.contains_key("HostedZoneId") && self.zone.as_ref().is_some_and(|z| !z.is_empty()) {
                return self.delete_failed(
                    region,
                    name,
                    "HostedZone",
                    "The specified hosted zone contains non-required resource record sets and so cannot be deleted. (HostedZoneNotEmpty)",
                );
            }
            if o.contains_key("HostedZoneId") {
                self.zone = None;
            }
            self.stacks.remove(&key);
            if let Some(group) = o.get("ReplicationGroupId") {
                self.groups.remove(&(region.to_string(), group.clone()));
            }
            if !self.leak_instances {
                self.instances.retain(|(r, _)| r != region);
            }
            if o.contains_key("PeeringConnectionId") {
                self.peering = None;
            }
            return;
        }
        if !status.ends_with("_COMPLETE") || status.contains("ROLLBACK") {
            return;
        }
        let o = outputs(region, &p);
        fake.stack.outputs = o.clone();
        if o.contains_key("HostedZoneId") && self.zone.is_none() {
            self.zone = Some(BTreeMap::new());
        }
        let group = (region.to_string(), o["ReplicationGroupId"].clone());
        let role = if p["Role"] == "primary" {
            "PRIMARY"
        } else if p.contains_key("GlobalReplicationGroupId") {
            "SECONDARY"
        } else {
            ""
        };
        self.groups.entry(group).or_insert_with(|| role.into());
        if !self.instances.iter().any(|(r, _)| r == region) {
            self.instances
                .push((region.into(), o["HelperInstanceId"].clone()));
        }
        match (o.contains_key("PeeringConnectionId"), &self.peering) {
            (true, None) => {
                self.peering = Some(Peering {
                    id: "pcx-1".into(),
                    status: "pending-acceptance".into(),
                    requester_region: region.into(),
                    accepter_region: p["PeerRegion"].clone(),
                    requester_dns: false,
                    accepter_dns: false,
                })
            }
            (false, Some(_)) if p["Role"] == "primary" => self.peering = None,
            _ => {}
        }
    }
}

impl World {
    fn delete_failed(&mut self, region: &str, name: &str, logical: &str, reason: &str) {
        self.event(region, name, logical, "DELETE_FAILED", reason);
        let fake = self
            .stacks
            .get_mut(&(region.to_string(), name.to_string()))
            .unwrap();
        fake.stack.status = "DELETE_FAILED".into();
        fake.stack.reason = Some(reason.into());
    }

    fn reachable(&self, region: &str) -> Result<(), CloudError> {
        if self.down.contains(region) {
            return Err(CloudError::api(
                "fake",
                Some("RequestTimeout"),
                format!("{region} does not answer"),
            ));
        }
        Ok(())
    }

    /// Time passes with every poll: a group in a change gets closer to `available`.
    fn tick(&mut self) {
        for polls in self.modifying.values_mut() {
            *polls = polls.saturating_sub(1);
        }
        self.modifying.retain(|_, polls| *polls > 0);
    }

    /// What the enabled reconcile functions do every minute: put the name on the primary.
    fn scheduled_reconcile(&mut self) {
        let enabled = self.stacks.iter().any(|((region, _), s)| {
            !self.down.contains(region)
                && s.stack.parameters.get("Reconcile").map(String::as_str) == Some("enabled")
                && s.stack.complete()
        });
        let primary = self
            .groups
            .iter()
            .find(|(_, role)| *role == "PRIMARY")
            .map(|((region, group), _)| format!("master.{group}.{region}.cache.amazonaws.com."));
        if let (true, Some(target), Some(zone)) = (enabled, primary, self.zone.as_mut()) {
            for (name, rtype, value) in [
                ("demo.valkey-dr.internal.", RecordType::Cname, target),
                (
                    "_valkey-dr.demo.valkey-dr.internal.",
                    RecordType::Txt,
                    valkey_dr_core::ownership::Ownership {
                        owner: "valkey-dr".into(),
                        epoch: 1,
                        primary_region: "x".into(),
                    }
                    .to_txt(),
                ),
            ] {
                zone.insert(
                    (name.to_string(), rtype),
                    RecordSet::new(name, rtype, 10, [value]),
                );
            }
        }
    }
}

#[async_trait]
impl Stacks for Fake {
    async fn describe(&self, region: &str, name: &str) -> Result<Option<Stack>, CloudError> {
        let mut w = self.0.lock().unwrap();
        w.reachable(region)?;
        w.scheduled_reconcile();
        w.tick();
        let key = (region.to_string(), name.to_string());
        let changing = w.stacks.get(&key).is_some_and(|s| s.stack.in_progress());
        if changing && w.throttle_describes > 0 {
            w.throttle_describes -= 1;
            return Err(CloudError::api(
                "CloudFormation",
                Some("Throttling"),
                "Rate exceeded",
            ));
        }
        let Some(fake) = w.stacks.get_mut(&key) else {
            return Ok(None);
        };
        if fake.stack.in_progress() {
            if fake.polls_left > 0 {
                fake.polls_left -= 1;
            } else {
                let target = fake.target.clone();
                let failing = target.contains("ROLLBACK");
                if failing {
                    let reason = match w.fail_reason.as_str() {
                        "" => "Subnet group has no subnet in us-west-2c".to_string(),
                        given => given.to_string(),
                    };
                    w.event(region, name, "ReplicationGroup", "CREATE_FAILED", &reason);
                }
                w.event(region, name, name, &target, "");
                w.settle(region, name);
            }
        }
        Ok(w.stacks.get(&key).map(|s| s.stack.clone()))
    }

    async fn submit(
        &self,
        region: &str,
        name: &str,
        _template: &str,
        parameters: &BTreeMap<String, String>,
        exists: bool,
    ) -> Result<bool, CloudError> {
        let mut w = self.0.lock().unwrap();
        w.reachable(region)?;
        let key = (region.to_string(), name.to_string());
        assert_eq!(exists, w.stacks.contains_key(&key), "submit's exists flag");
        if exists && w.stacks[&key].stack.parameters == *parameters {
            return Ok(false); // CloudFormation: "No updates are to be performed."
        }
        let verb = if exists { "update" } else { "create" };
        w.calls
            .push(format!("{verb} {name} {}", describe(parameters)));
        let failing = w.fail_next.take_if(|(n, _)| n == name);
        if let Some((_, reason)) = &failing {
            w.fail_reason = reason.clone();
        }
        let failing = failing.is_some();
        let target = match (exists, failing) {
            (false, false) => "CREATE_COMPLETE",
            (true, false) => "UPDATE_COMPLETE",
            (false, true) => "ROLLBACK_COMPLETE",
            (true, true) => "UPDATE_ROLLBACK_COMPLETE",
        };
        let status = if exists {
            "UPDATE_IN_PROGRESS"
        } else {
            "CREATE_IN_PROGRESS"
        };
        let previous = w.stacks.remove(&key);
        w.stacks.insert(
            key,
            FakeStack {
                stack: Stack {
                    status: status.into(),
                    reason: None,
                    parameters: parameters.clone(),
                    outputs: previous
                        .as_ref()
                        .map(|p| p.stack.outputs.clone())
                        .unwrap_or_default(),
                },
                events: previous.map(|p| p.events).unwrap_or_default(),
                polls_left: 1,
                target: target.into(),
            },
        );
        w.event(region, name, name, status, "User Initiated");
        w.event(region, name, "ReplicationGroup", status, "");
        Ok(true)
    }

    async fn events(&self, region: &str, name: &str) -> Result<Vec<StackEvent>, CloudError> {
        let w = self.0.lock().unwrap();
        Ok(w.stacks
            .get(&(region.to_string(), name.to_string()))
            .map(|s| s.events.clone())
            .unwrap_or_default())
    }

    async fn delete(&self, region: &str, name: &str) -> Result<(), CloudError> {
        let mut w = self.0.lock().unwrap();
        w.reachable(region)?;
        w.calls.push(format!("delete {name}"));
        let key = (region.to_string(), name.to_string());
        if let Some(s) = w.stacks.get_mut(&key) {
            s.stack.status = "DELETE_IN_PROGRESS".into();
            s.target = "DELETE_COMPLETE".into();
            s.polls_left = 1;
        }
        w.event(region, name, name, "DELETE_IN_PROGRESS", "User Initiated");
        Ok(())
    }
}

/// The parameters that pass outputs on, for the call log.
fn describe(p: &BTreeMap<String, String>) -> String {
    [
        "GlobalReplicationGroupId",
        "HostedZoneId",
        "PeerVpcId",
        "PeerRegion",
        "PeeringConnectionId",
        "Reconcile",
    ]
    .iter()
    .filter_map(|k| p.get(*k).map(|v| format!("{k}={v}")))
    .collect::<Vec<_>>()
    .join(" ")
}

#[async_trait]
impl Network for Fake {
    async fn peering(&self, _region: &str, id: &str) -> Result<Option<Peering>, CloudError> {
        let w = self.0.lock().unwrap();
        Ok(w.peering.clone().filter(|p| p.id == id))
    }
    async fn accept_peering(&self, region: &str, id: &str) -> Result<(), CloudError> {
        let mut w = self.0.lock().unwrap();
        w.calls.push(format!("accept {id} in {region}"));
        let p = w.peering.as_mut().expect("peering exists");
        assert_eq!(
            p.accepter_region, region,
            "accepted in the accepter's region"
        );
        p.status = "active".into();
        Ok(())
    }
    async fn allow_remote_dns(
        &self,
        region: &str,
        id: &str,
        side: PeeringSide,
    ) -> Result<(), CloudError> {
        let mut w = self.0.lock().unwrap();
        w.calls.push(format!("allow-dns {id} {side:?} in {region}"));
        let p = w.peering.as_mut().expect("peering exists");
        assert_eq!(p.status, "active");
        match side {
            PeeringSide::Requester => {
                assert_eq!(p.requester_region, region);
                p.requester_dns = true;
            }
            PeeringSide::Accepter => {
                assert_eq!(p.accepter_region, region);
                p.accepter_dns = true;
            }
        }
        Ok(())
    }
    async fn live_instances(
        &self,
        region: &str,
        ids: &[String],
    ) -> Result<Vec<String>, CloudError> {
        let w = self.0.lock().unwrap();
        Ok(w.instances
            .iter()
            .filter(|(r, i)| r == region && ids.contains(i))
            .map(|(_, i)| i.clone())
            .collect())
    }
}

#[async_trait]
impl Artifacts for Fake {
    async fn ensure(
        &self,
        _region: &str,
        bucket: &str,
        key: &str,
        body: &[u8],
    ) -> Result<bool, CloudError> {
        let mut w = self.0.lock().unwrap();
        let path = format!("{bucket}/{key}");
        if w.objects.contains_key(&path) {
            return Ok(false);
        }
        w.calls.push(format!("upload {path}"));
        w.objects.insert(path, body.to_vec());
        Ok(true)
    }
}

#[async_trait]
impl Datastore for Fake {
    async fn members(&self, region: &str, global_id: &str) -> Result<Vec<Member>, CloudError> {
        let w = self.0.lock().unwrap();
        w.reachable(region)?;
        assert_eq!(global_id, "ldgnf-valkey-dr");
        let mut members: Vec<Member> = w
            .groups
            .iter()
            .filter(|(_, role)| !role.is_empty())
            .map(|((region, group), role)| Member {
                region: region.clone(),
                replication_group_id: group.clone(),
                role: role.clone(),
                status: "associated".into(),
            })
            .collect();
        members.sort_by_key(|m| m.role != "PRIMARY");
        Ok(members)
    }
    async fn settled(&self, region: &str, _global_id: &str) -> Result<bool, CloudError> {
        let w = self.0.lock().unwrap();
        w.reachable(region)?;
        Ok(w.modifying.is_empty())
    }
    async fn failover(
        &self,
        region: &str,
        _global_id: &str,
        to_region: &str,
        to_group: &str,
    ) -> Result<(), CloudError> {
        let mut w = self.0.lock().unwrap();
        w.reachable(region)?;
        w.calls
            .push(format!("failover to {to_group} in {to_region}"));
        for ((region, group), role) in w.groups.iter_mut() {
            if !role.is_empty() {
                *role = if region == to_region && group == to_group {
                    "PRIMARY".into()
                } else {
                    "SECONDARY".into()
                };
            }
        }
        Ok(())
    }
    async fn disassociate(
        &self,
        region: &str,
        _global_id: &str,
        group: &str,
        group_region: &str,
    ) -> Result<(), CloudError> {
        let mut w = self.0.lock().unwrap();
        w.reachable(region)?;
        w.calls
            .push(format!("disassociate {group} in {group_region}"));
        let role = w
            .groups
            .get_mut(&(group_region.to_string(), group.to_string()))
            .expect("member exists");
        assert_eq!(role, "SECONDARY", "only a secondary can be disassociated");
        role.clear();
        // The group stays `modifying` for a while after it leaves.
        w.modifying
            .insert((group_region.to_string(), group.to_string()), 3);
        Ok(())
    }
    async fn group(&self, region: &str, group: &str) -> Result<Option<Group>, CloudError> {
        let mut w = self.0.lock().unwrap();
        w.reachable(region)?;
        w.tick();
        let key = (region.to_string(), group.to_string());
        Ok(w.groups.contains_key(&key).then(|| Group {
            status: if w.modifying.contains_key(&key) {
                "modifying".into()
            } else {
                "available".into()
            },
            endpoint: Some(format!("master.{group}.{region}.cache.amazonaws.com")),
        }))
    }
}

#[async_trait]
impl Zones for Fake {
    async fn records(&self, zone_id: &str, names: &[String]) -> Result<Vec<RecordSet>, CloudError> {
        let w = self.0.lock().unwrap();
        assert_eq!(zone_id, ZONE_ID);
        Ok(w.zone
            .iter()
            .flat_map(|z| z.values())
            .filter(|r| names.contains(&r.name))
            .cloned()
            .collect())
    }
    async fn apply(&self, zone_id: &str, changes: &[Change]) -> Result<(), CloudError> {
        let mut w = self.0.lock().unwrap();
        assert_eq!(zone_id, ZONE_ID);
        let zone = w.zone.as_mut().expect("the zone exists");
        // Route 53: the batch applies entirely or not at all; a delete must match exactly.
        for change in changes {
            if let Change::Delete { old } = change
                && zone.get(&(old.name.clone(), old.rtype)) != Some(old)
            {
                return Err(CloudError::api(
                    "Route 53",
                    Some("InvalidChangeBatch"),
                    format!("{} is not as expected", old.name),
                ));
            }
        }
        let mut calls = Vec::new();
        for change in changes {
            match change {
                Change::Delete { old } => {
                    zone.remove(&(old.name.clone(), old.rtype));
                    calls.push(format!("delete record {} {}", old.name, old.rtype));
                }
                other => panic!("destroy only deletes: {other:?}"),
            }
        }
        w.calls.extend(calls);
        Ok(())
    }
    async fn exists(&self, zone_id: &str) -> Result<bool, CloudError> {
        let w = self.0.lock().unwrap();
        Ok(zone_id == ZONE_ID && w.zone.is_some())
    }
}

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
