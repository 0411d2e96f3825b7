//! The template as CloudFormation would instantiate it for each role, checked against the rules
//! AWS documents but neither cfn-lint (schema only) nor moto enforces. The template is rendered
//! with the parameters deploy passes: Conditions resolved, `!If` branches taken, `AWS::NoValue`
//! dropped, parameter references replaced by their values.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml_ng::Value;
use serde_yaml_ng::value::TaggedValue;
use valkey_dr_aws::AwsConfig;
use valkey_dr_aws::deploy::artifact::{Architecture, Artifact};
use valkey_dr_aws::deploy::stages::{self, Known, Reconcile, Role};

/// One role's resources after rendering.
struct Rendered {
    resources: BTreeMap<String, Value>,
    parameters: BTreeMap<String, String>,
}

impl Rendered {
    fn of_type(&self, kind: &str) -> Vec<(&String, &Value)> {
        self.resources
            .iter()
            .filter(|(_, r)| r["Type"].as_str() == Some(kind))
            .collect()
    }

    fn properties(&self, logical: &str) -> &Value {
        &self.resources[logical]["Properties"]
    }
}

/// `!Ref X` / `{Ref: X}`, `!If [...]` / `{Fn::If: [...]}`, … as (function, argument).
fn intrinsic(value: &Value) -> Option<(String, &Value)> {
    match value {
        Value::Tagged(tagged) => {
            let TaggedValue { tag, value } = tagged.as_ref();
            let name = tag.to_string();
            let name = name.trim_start_matches('!');
            Some((
                if name == "Ref" {
                    "Ref".into()
                } else {
                    format!("Fn::{name}")
                },
                value,
            ))
        }
        Value::Mapping(m) if m.len() == 1 => {
            let (key, value) = m.iter().next()?;
            let key = key.as_str()?;
            (key == "Ref" || key.starts_with("Fn::") || key == "Condition")
                .then(|| (key.to_string(), value))
        }
        _ => None,
    }
}

struct Renderer<'a> {
    parameters: BTreeMap<String, String>,
    conditions: &'a Value,
    cache: BTreeMap<String, bool>,
}

impl Renderer<'_> {
    fn condition(&mut self, name: &str) -> bool {
        if let Some(known) = self.cache.get(name) {
            return *known;
        }
        let expression = self.conditions[name].clone();
        let value = self.evaluate(&expression);
        self.cache.insert(name.to_string(), value);
        value
    }

    fn evaluate(&mut self, expression: &Value) -> bool {
        let (function, argument) = intrinsic(expression).expect("a condition function");
        let items = || argument.as_sequence().expect("a list").clone();
        match function.as_str() {
            "Fn::Equals" => {
                let [a, b] = items().try_into().expect("two operands");
                self.scalar(&a) == self.scalar(&b)
            }
            "Fn::And" => items().iter().all(|c| self.evaluate(c)),
            "Fn::Or" => items().iter().any(|c| self.evaluate(c)),
            "Fn::Not" => !self.evaluate(&items()[0]),
            "Fn::Condition" | "Condition" => self.condition(argument.as_str().unwrap()),
            other => panic!("condition function {other}"),
        }
    }

    fn scalar(&self, value: &Value) -> String {
        match intrinsic(value) {
            Some((f, name)) if f == "Ref" => self.parameters[name.as_str().unwrap()].clone(),
            _ => Renderer::plain(value),
        }
    }

    fn plain(value: &Value) -> String {
        match value {
            Value::String(s) => s.clone(),
            other => serde_yaml_ng::to_string(other).unwrap().trim().to_string(),
        }
    }

    /// The value with `!If` resolved and parameters substituted; `None` for `AWS::NoValue`.
    fn render(&mut self, value: &Value) -> Option<Value> {
        if let Some((function, argument)) = intrinsic(value) {
            match function.as_str() {
                "Fn::If" => {
                    let items = argument.as_sequence().expect("!If takes a list");
                    let branch = if self.condition(items[0].as_str().unwrap()) {
                        &items[1]
                    } else {
                        &items[2]
                    };
                    return self.render(branch);
                }
                "Ref" => {
                    let name = argument.as_str().unwrap();
                    if name == "AWS::NoValue" {
                        return None;
                    }
                    if let Some(value) = self.parameters.get(name) {
                        return Some(Value::String(value.clone()));
                    }
                    return Some(Value::String(format!("ref:{name}")));
                }
                _ => {
                    let rendered = self.render(argument)?;
                    return Some(Value::Tagged(Box::new(TaggedValue {
                        tag: serde_yaml_ng::value::Tag::new(function.trim_start_matches("Fn::")),
                        value: rendered,
                    })));
                }
            }
        }
        match value {
            Value::Mapping(m) => Some(Value::Mapping(
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), self.render(v)?)))
                    .collect(),
            )),
            Value::Sequence(s) => Some(Value::Sequence(
                s.iter().filter_map(|v| self.render(v)).collect(),
            )),
            other => Some(other.clone()),
        }
    }
}

fn config() -> AwsConfig {
    AwsConfig::parse(include_str!("../../../deploy/aws/aws.toml")).unwrap()
}

fn artifact(architecture: Architecture) -> Artifact {
    Artifact {
        key: "valkey-dr-lambda-0123.zip".into(),
        architecture,
        glibc: Some((2, 34)),
    }
}

fn everything() -> Known {
    Known {
        global_replication_group_id: Some("ldgnf-valkey-dr".into()),
        hosted_zone_id: Some("Z0123".into()),
        secondary_vpc_id: Some("vpc-2".into()),
        peering_connection_id: Some("pcx-1".into()),
    }
}

/// The template rendered with exactly the parameters deploy passes for `role`.
fn render(role: Role, artifact: &Artifact, reconcile: Reconcile) -> Rendered {
    render_with(&config(), role, artifact, reconcile)
}

/// [`render`] for another `config`.
fn render_with(
    config: &AwsConfig,
    role: Role,
    artifact: &Artifact,
    reconcile: Reconcile,
) -> Rendered {
    let template: Value = serde_yaml_ng::from_str(valkey_dr_aws::deploy::TEMPLATE).unwrap();
    let deploy = config.deploy.as_ref().unwrap();
    let passed = stages::parameters(config, deploy, role, &everything(), artifact, reconcile);
    let mut parameters = BTreeMap::new();
    for (name, declared) in template["Parameters"].as_mapping().unwrap() {
        let name = name.as_str().unwrap().to_string();
        let value = passed
            .get(&name)
            .cloned()
            .or_else(|| declared.get("Default").map(Renderer::plain))
            .unwrap_or_else(|| panic!("{role:?}: parameter {name} has no value"));
        parameters.insert(name, value);
    }
    parameters.insert("AWS::Region".into(), stages::region(deploy, role).into());
    let mut renderer = Renderer {
        parameters: parameters.clone(),
        conditions: &template["Conditions"],
        cache: BTreeMap::new(),
    };
    let mut resources = BTreeMap::new();
    for (name, resource) in template["Resources"].as_mapping().unwrap() {
        if let Some(condition) = resource.get("Condition").and_then(Value::as_str)
            && !renderer.condition(condition)
        {
            continue;
        }
        resources.insert(
            name.as_str().unwrap().to_string(),
            renderer.render(resource).unwrap(),
        );
    }
    Rendered {
        resources,
        parameters,
    }
}

/// Every logical id a rendered resource refers to (`ref:X`, `!GetAtt X.Y`, `${X}` in `!Sub`).
fn references(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("ref:") {
                out.insert(name.to_string());
            }
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                let end = rest[start..]
                    .find('}')
                    .map(|e| start + e)
                    .unwrap_or(rest.len());
                out.insert(rest[start + 2..end].split('.').next().unwrap().to_string());
                rest = &rest[end..];
            }
        }
        Value::Tagged(tagged) if tagged.tag == "GetAtt" => {
            let target = match &tagged.value {
                Value::String(s) => s.split('.').next().unwrap().to_string(),
                Value::Sequence(s) => s[0].as_str().unwrap().to_string(),
                other => panic!("GetAtt {other:?}"),
            };
            out.insert(target);
        }
        Value::Tagged(tagged) => references(&tagged.value, out),
        Value::Mapping(m) => m.values().for_each(|v| references(v, out)),
        Value::Sequence(s) => s.iter().for_each(|v| references(v, out)),
        _ => {}
    }
}

const ROLES: [Role; 2] = [Role::Primary, Role::Secondary];

#[test]
fn every_reference_resolves_in_each_role() {
    for role in ROLES {
        let rendered = render(role, &artifact(Architecture::Arm64), Reconcile::Enabled);
        for (name, resource) in &rendered.resources {
            let mut found = BTreeSet::new();
            references(resource, &mut found);
            for target in found {
                let known = rendered.resources.contains_key(&target)
                    || rendered.parameters.contains_key(&target)
                    || target.starts_with("AWS::")
                    // `!Sub [text, {Zone: …}]` names its own variables.
                    || target == "Zone";
                assert!(
                    known,
                    "{role:?}: {name} refers to {target}, absent in this role"
                );
            }
        }
    }
}

/// What ElastiCache infers from the primary for a group joining a global datastore and rejects
/// when passed (the list the moto stand-in enforces too).
fn inherited() -> Vec<&'static str> {
    include_str!("../../../deploy/aws/joining-group-inherits.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

#[test]
fn a_joining_group_passes_nothing_elasticache_infers() {
    let secondary = render(
        Role::Secondary,
        &artifact(Architecture::Arm64),
        Reconcile::Enabled,
    );
    let group = secondary.properties("ReplicationGroup");
    assert_eq!(
        group["GlobalReplicationGroupId"].as_str(),
        Some("ldgnf-valkey-dr")
    );
    let inherited = inherited();
    assert!(inherited.len() >= 10 && inherited.contains(&"CacheNodeType"));
    for property in inherited {
        assert!(group.get(property).is_none(), "secondary passes {property}");
    }
    // The primary defines them: encryption and failover are set once, for the whole datastore.
    let primary = render(
        Role::Primary,
        &artifact(Architecture::Arm64),
        Reconcile::Enabled,
    );
    let group = primary.properties("ReplicationGroup");
    assert!(group.get("GlobalReplicationGroupId").is_none());
    for property in [
        "Engine",
        "CacheNodeType",
        "TransitEncryptionEnabled",
        "AtRestEncryptionEnabled",
    ] {
        assert!(group.get(property).is_some(), "primary lacks {property}");
    }
    assert_eq!(group["CacheNodeType"].as_str(), Some("cache.r7g.large"));
}

#[test]
fn each_region_has_an_unencrypted_topic_and_its_own_reconcile_function() {
    for role in ROLES {
        let rendered = render(role, &artifact(Architecture::Arm64), Reconcile::Enabled);
        let group = rendered.properties("ReplicationGroup");
        let topic = group["NotificationTopicArn"]
            .as_str()
            .and_then(|t| t.strip_prefix("ref:"))
            .unwrap_or_else(|| panic!("{role:?}: the group has no notification topic"));
        let topic_id = topic;
        let topic = &rendered.resources[topic];
        assert_eq!(topic["Type"].as_str(), Some("AWS::SNS::Topic"));
        // Review B1: the statement AWS documents for ElastiCache events, in force before the group
        // publishes its first.
        let policies = rendered.of_type("AWS::SNS::TopicPolicy");
        let (policy_id, policy) = policies
            .iter()
            .find(|(_, p)| {
                serde_yaml_ng::to_string(&p["Properties"]["Topics"])
                    .unwrap()
                    .contains(topic_id)
            })
            .unwrap_or_else(|| panic!("{role:?}: the events topic has no policy"));
        let statement = &policy["Properties"]["PolicyDocument"]["Statement"][0];
        assert_eq!(statement["Principal"]["AWS"].as_str(), Some("*"));
        assert_eq!(statement["Action"].as_str(), Some("sns:Publish"));
        assert!(
            statement["Condition"]["StringEquals"]
                .get("AWS:SourceOwner")
                .is_some(),
            "{role:?}: {statement:?}"
        );
        assert_eq!(
            rendered.resources["ReplicationGroup"]["DependsOn"].as_str(),
            Some(policy_id.as_str()),
            "{role:?}"
        );
        // ElastiCache cannot publish to an encrypted topic (the topic goes inactive).
        assert!(
            topic["Properties"].get("KmsMasterKeyId").is_none(),
            "{role:?}: the events topic is encrypted"
        );
        let functions = rendered.of_type("AWS::Lambda::Function");
        assert_eq!(functions.len(), 1, "{role:?}: one reconcile function");
        let target = |kind: &str, field: &str| {
            rendered.of_type(kind).iter().any(|(_, r)| {
                serde_yaml_ng::to_string(&r["Properties"][field])
                    .unwrap()
                    .contains(functions[0].0.as_str())
            })
        };
        assert!(
            target("AWS::Events::Rule", "Targets"),
            "{role:?}: no schedule"
        );
        assert!(
            rendered
                .of_type("AWS::SNS::Subscription")
                .iter()
                .any(|(_, r)| {
                    r["Properties"]["TopicArn"] == group["NotificationTopicArn"]
                        && serde_yaml_ng::to_string(&r["Properties"]["Endpoint"])
                            .unwrap()
                            .contains(functions[0].0.as_str())
                }),
            "{role:?}: the events topic does not reach the function"
        );
        let environment = &functions[0].1["Properties"]["Environment"]["Variables"];
        for variable in [
            "VALKEY_DR_GLOBAL_REPLICATION_GROUP_ID",
            "VALKEY_DR_HOSTED_ZONE_ID",
        ] {
            assert!(
                environment.get(variable).is_some(),
                "{role:?}: the function lacks {variable}"
            );
        }
        if role == Role::Secondary {
            assert_eq!(
                environment["VALKEY_DR_HOSTED_ZONE_ID"].as_str(),
                Some("Z0123")
            );
            assert_eq!(
                environment["VALKEY_DR_GLOBAL_REPLICATION_GROUP_ID"].as_str(),
                Some("ldgnf-valkey-dr")
            );
        }
    }
}

/// Review A2: the owner in aws.toml never reached the functions, so with any other owner both
/// saw our records as foreign and never moved the name (silently: a plan conflict is no error).
#[test]
fn each_function_runs_with_the_settings_deploy_was_given_a_chosen_owner_too() {
    let mut config = config();
    config.owner = "team-cache".into();
    for role in ROLES {
        let rendered = render_with(
            &config,
            role,
            &artifact(Architecture::Arm64),
            Reconcile::Enabled,
        );
        let functions = rendered.of_type("AWS::Lambda::Function");
        let environment = &functions[0].1["Properties"]["Environment"]["Variables"];
        let variable = |name: &str| {
            environment
                .get(format!("VALKEY_DR_{name}").as_str())
                .map(Renderer::plain)
        };
        for (_, name) in AwsConfig::ENVIRONMENT {
            assert!(
                variable(name).is_some(),
                "{role:?}: the function lacks VALKEY_DR_{name}"
            );
        }
        let seen = AwsConfig::from_variables(variable).unwrap();
        assert_eq!(seen.names(), config.names(), "{role:?}");
    }
}

#[test]
fn the_function_runs_the_artifacts_architecture_within_the_schedule_on_any_account() {
    for architecture in [Architecture::Arm64, Architecture::X86_64] {
        for role in ROLES {
            let rendered = render(role, &artifact(architecture), Reconcile::Enabled);
            let function = rendered.properties("ReconcileFunction");
            assert_eq!(
                function["Architectures"][0].as_str(),
                Some(architecture.as_str()),
                "{role:?}"
            );
            assert_eq!(function["Runtime"].as_str(), Some("provided.al2023"));
            let timeout = function["Timeout"].as_u64().unwrap();
            let schedule = rendered.properties("ReconcileSchedule");
            assert_eq!(
                schedule["ScheduleExpression"].as_str(),
                Some("rate(1 minute)")
            );
            assert!(
                timeout < 60,
                "a run may outlast the schedule's period: {timeout} s"
            );
            // Review B2: the INSYNC wait (60 s by default) outlived the 50 s timeout, so a slow
            // propagation killed a run whose change was applied (an error, the alarm, retries).
            let insync = function["Environment"]["Variables"]["VALKEY_DR_INSYNC_TIMEOUT_SECS"]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(60);
            assert!(
                insync + 15 <= timeout,
                "the INSYNC wait ({insync} s) leaves too little of the {timeout} s timeout"
            );
            // Review B7: a reservation of 1 fails on accounts at Lambda's minimum quota (10 must
            // stay unreserved); concurrent runs are safe (compare-and-swap, a loser plans again).
            assert!(
                function.get("ReservedConcurrentExecutions").is_none(),
                "{role:?}: an enabled function reserves no concurrency"
            );
            assert_eq!(schedule["State"].as_str(), Some("ENABLED"));
            assert!(rendered.resources.contains_key("ReconcileFailedAlarm"));
        }
    }
}

/// Review B9: the template had `AlarmTopicArn` but deploy never set it, so the failed-reconcile
/// alarm notified nobody. Each region's alarm notifies the topic configured for that region.
#[test]
fn each_regions_alarm_notifies_the_topic_configured_for_it() {
    let mut config = config();
    for role in ROLES {
        let alarm = render(role, &artifact(Architecture::Arm64), Reconcile::Enabled);
        assert!(
            alarm.properties("ReconcileFailedAlarm")["AlarmActions"].is_null(),
            "{role:?}: no topic, no action"
        );
    }
    let deploy = config.deploy.as_mut().unwrap();
    deploy.primary.alarm_topic_arn = Some("arn:aws:sns:us-east-2:123456789012:oncall".into());
    deploy.secondary.alarm_topic_arn = Some("arn:aws:sns:us-west-2:123456789012:oncall".into());
    config.deploy.as_ref().unwrap().validate().unwrap();
    for (role, region) in [(Role::Primary, "us-east-2"), (Role::Secondary, "us-west-2")] {
        let rendered = render_with(
            &config,
            role,
            &artifact(Architecture::Arm64),
            Reconcile::Enabled,
        );
        let actions = rendered.properties("ReconcileFailedAlarm")["AlarmActions"]
            .as_sequence()
            .map(|a| a.iter().map(Renderer::plain).collect::<Vec<_>>());
        assert_eq!(
            actions,
            Some(vec![format!("arn:aws:sns:{region}:123456789012:oncall")]),
            "{role:?}"
        );
    }
}

#[test]
fn a_disabled_reconcile_neither_runs_on_schedule_nor_at_all() {
    for role in ROLES {
        let rendered = render(role, &artifact(Architecture::Arm64), Reconcile::Disabled);
        assert_eq!(
            rendered.properties("ReconcileFunction")["ReservedConcurrentExecutions"].as_u64(),
            Some(0)
        );
        assert_eq!(
            rendered.properties("ReconcileSchedule")["State"].as_str(),
            Some("DISABLED")
        );
    }
}

#[test]
fn the_node_type_pattern_names_the_families_the_config_accepts() {
    let template: Value = serde_yaml_ng::from_str(valkey_dr_aws::deploy::TEMPLATE).unwrap();
    let pattern = template["Parameters"]["CacheNodeType"]["AllowedPattern"]
        .as_str()
        .unwrap();
    let families = pattern
        .split_once("cache\\.(")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(families, _)| families.split('|').collect::<Vec<_>>())
        .unwrap_or_else(|| panic!("unexpected pattern {pattern}"));
    assert_eq!(families, ["m5", "m6g", "m7g", "r5", "r6g", "r7g", "c7gn"]);
    for family in families {
        let node_type = format!("cache.{family}.large");
        assert!(valkey_dr_aws::config::deploy::global_datastore_node_type(
            &node_type
        ));
    }
}

#[test]
fn cluster_mode_gives_each_region_shards_of_a_primary_and_a_replica() {
    let mut sharded = config();
    sharded.deploy.as_mut().unwrap().shards = 3;
    let number = |v: &Value| Renderer::plain(v);
    let primary = render_with(
        &sharded,
        Role::Primary,
        &artifact(Architecture::Arm64),
        Reconcile::Enabled,
    );
    let group = primary.properties("ReplicationGroup");
    assert_eq!(number(&group["NumNodeGroups"]), "3");
    assert_eq!(number(&group["ReplicasPerNodeGroup"]), "1");
    assert_eq!(
        group["CacheParameterGroupName"].as_str(),
        Some("default.valkey8.cluster.on")
    );
    assert_eq!(group["ClusterMode"].as_str(), Some("enabled"));
    assert!(group.get("NumCacheClusters").is_none());
    // The joining group inherits the shard count and the parameter group, and still has a
    // replica per shard.
    let secondary = render_with(
        &sharded,
        Role::Secondary,
        &artifact(Architecture::Arm64),
        Reconcile::Enabled,
    );
    let group = secondary.properties("ReplicationGroup");
    for property in inherited() {
        assert!(group.get(property).is_none(), "secondary passes {property}");
    }
    assert_eq!(number(&group["ReplicasPerNodeGroup"]), "1");
    assert!(group.get("NumCacheClusters").is_none());
    // One shard: cluster mode off, two nodes per region as before.
    for role in ROLES {
        let rendered = render(role, &artifact(Architecture::Arm64), Reconcile::Enabled);
        let group = rendered.properties("ReplicationGroup");
        assert_eq!(number(&group["NumCacheClusters"]), "2", "{role:?}");
        for property in [
            "NumNodeGroups",
            "ReplicasPerNodeGroup",
            "CacheParameterGroupName",
            "ClusterMode",
        ] {
            assert!(group.get(property).is_none(), "{role:?} passes {property}");
        }
    }
}
