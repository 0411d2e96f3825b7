//! The fake cloud the deploy tests run against (no real thing can run the ElastiCache global
//! datastore or CloudFormation here): a world of stacks, networks, datastores and zones.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use valkey_dr_aws::deploy::cloud::{
    Artifacts, Change, CloudError, Datastore, Group, Member, Network, Peering, PeeringSide,
    RecordSet, Stack, StackEvent, Stacks, Zones,
};
use valkey_dr_core::RecordType;

#[derive(Default)]
pub struct World {
    pub stacks: BTreeMap<(String, String), FakeStack>,
    pub objects: BTreeMap<String, Vec<u8>>,
    pub peering: Option<Peering>,
    /// (region, group id) → role; "" = standalone.
    pub groups: BTreeMap<(String, String), String>,
    pub instances: Vec<(String, String)>,
    /// Every mutating call, in order.
    pub calls: Vec<String>,
    /// Make the next submit of this stack fail with this resource reason.
    pub fail_next: Option<(String, String)>,
    pub fail_reason: String,
    /// Answer this many of the next DescribeStacks calls made while a stack is changing with a
    /// throttling error.
    pub throttle_describes: u32,
    /// Instances that survive their stack (a leak for destroy to find).
    pub leak_instances: bool,
    /// The primary stack's hosted zone: (name, type) → record set.
    pub zone: Option<BTreeMap<(String, RecordType), RecordSet>>,
    /// Groups in a change (after a disassociation): describe polls left until `available`.
    pub modifying: BTreeMap<(String, String), u32>,
    /// Regions that do not answer.
    pub down: std::collections::BTreeSet<String>,
    pub event_counter: usize,
    /// The next failover goes through but its answer is lost: the SDK sends it again and meets
    /// the change in progress (review B6).
    pub failover_answer_lost: bool,
}

pub const ZONE_ID: &str = "Z0FAKE";

pub struct FakeStack {
    pub stack: Stack,
    pub events: Vec<StackEvent>,
    /// Polls left before the operation in progress completes.
    pub polls_left: u32,
    /// The status to reach when the polls run out.
    pub target: String,
}

pub struct Fake(pub Mutex<World>);

pub fn outputs(region: &str, p: &BTreeMap<String, String>) -> BTreeMap<String, String> {
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
    pub fn event(&mut self, region: &str, name: &str, logical: &str, status: &str, reason: &str) {
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
    pub fn settle(&mut self, region: &str, name: &str) {
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
    pub fn delete_failed(&mut self, region: &str, name: &str, logical: &str, reason: &str) {
        self.event(region, name, logical, "DELETE_FAILED", reason);
        let fake = self
            .stacks
            .get_mut(&(region.to_string(), name.to_string()))
            .unwrap();
        fake.stack.status = "DELETE_FAILED".into();
        fake.stack.reason = Some(reason.into());
    }

    /// The global datastore's members, the primary first.
    pub fn members(&self) -> Vec<Member> {
        let mut members: Vec<Member> = self
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
        members
    }

    pub fn reachable(&self, region: &str) -> Result<(), CloudError> {
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
    pub fn tick(&mut self) {
        for polls in self.modifying.values_mut() {
            *polls = polls.saturating_sub(1);
        }
        self.modifying.retain(|_, polls| *polls > 0);
    }

    /// What the enabled reconcile functions do every minute: put the name on the primary.
    /// The owner is the one the stack gave the function (`Owner`, the template's default
    /// `valkey-dr` when deploy passed none), as the real function reads `VALKEY_DR_OWNER`.
    pub fn scheduled_reconcile(&mut self) {
        let enabled = self.stacks.iter().find(|((region, _), s)| {
            !self.down.contains(region)
                && s.stack.parameters.get("Reconcile").map(String::as_str) == Some("enabled")
                && s.stack.complete()
        });
        let owner = enabled
            .and_then(|(_, s)| s.stack.parameters.get("Owner").cloned())
            .unwrap_or_else(|| "valkey-dr".into());
        let enabled = enabled.is_some();
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
                        owner: owner.clone(),
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
pub fn describe(p: &BTreeMap<String, String>) -> String {
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
        Ok(w.members())
    }
    /// As AWS reports it: `modifying` while a group changes, `primary-only` while the primary is
    /// the only member, `available` otherwise.
    async fn settled(&self, region: &str, _global_id: &str) -> Result<bool, CloudError> {
        let w = self.0.lock().unwrap();
        w.reachable(region)?;
        let members = w.members();
        let status = if !w.modifying.is_empty() {
            "modifying"
        } else if members.len() == 1 {
            "primary-only"
        } else {
            "available"
        };
        Ok(valkey_dr_aws::discovery::settled(status, &members))
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
        let busy = || {
            CloudError::api(
                "ElastiCache",
                Some("InvalidGlobalReplicationGroupState"),
                "the global datastore is modifying",
            )
        };
        if !w.modifying.is_empty() {
            w.tick();
            return Err(busy());
        }
        // AWS refuses a failover to the member that is already primary (the exact code is not
        // documented; nothing may depend on it).
        let key = (to_region.to_string(), to_group.to_string());
        if w.groups.get(&key).map(String::as_str) == Some("PRIMARY") {
            return Err(CloudError::api(
                "ElastiCache",
                Some("InvalidParameterValue"),
                format!("{to_group} is already the primary"),
            ));
        }
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
        if std::mem::take(&mut w.failover_answer_lost) {
            w.modifying.insert(key, 3);
            return Err(busy());
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
