//! The stack parameters of each stage, as pure functions of the configuration and of what earlier
//! stages output. Running the stages again with everything known yields the same parameters, so a
//! second `deploy` changes nothing.

use std::collections::BTreeMap;

use super::artifact::Artifact;
use crate::AwsConfig;
use crate::config::deploy::{DeployConfig, RegionPlan};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Primary,
    Secondary,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }
}

/// Outputs the stages pass on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    pub global_replication_group_id: Option<String>,
    pub hosted_zone_id: Option<String>,
    pub secondary_vpc_id: Option<String>,
    pub peering_connection_id: Option<String>,
}

impl Known {
    /// What the two stacks' outputs say (either may be missing).
    pub fn from_outputs(
        primary: Option<&BTreeMap<String, String>>,
        secondary: Option<&BTreeMap<String, String>>,
    ) -> Known {
        let mut known = Known::default();
        for (role, outputs) in [(Role::Primary, primary), (Role::Secondary, secondary)] {
            if let Some(outputs) = outputs {
                known.absorb(role, outputs);
            }
        }
        known
    }

    /// Takes in what one stack output; an output that is missing or empty keeps what was known.
    pub fn absorb(&mut self, role: Role, outputs: &BTreeMap<String, String>) {
        let take = |slot: &mut Option<String>, key: &str| {
            if let Some(value) = outputs.get(key).filter(|v| !v.is_empty()) {
                *slot = Some(value.clone());
            }
        };
        match role {
            Role::Primary => {
                take(
                    &mut self.global_replication_group_id,
                    "GlobalReplicationGroupId",
                );
                take(&mut self.hosted_zone_id, "HostedZoneId");
                take(&mut self.peering_connection_id, "PeeringConnectionId");
            }
            Role::Secondary => take(&mut self.secondary_vpc_id, "VpcId"),
        }
    }
}

pub fn stack_name(deploy: &DeployConfig, role: Role) -> String {
    format!("{}-{}", deploy.environment, role.as_str())
}

pub fn region(deploy: &DeployConfig, role: Role) -> &str {
    &plan(deploy, role).region
}

pub fn plan(deploy: &DeployConfig, role: Role) -> &RegionPlan {
    match role {
        Role::Primary => &deploy.primary,
        Role::Secondary => &deploy.secondary,
    }
}

/// Whether the stack's reconcile function runs (destroy turns it off before removing the records,
/// so that the schedule does not put them back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconcile {
    Enabled,
    Disabled,
}

/// The stack parameters for `role` given what is known so far and the Lambda artifact.
pub fn parameters(
    config: &AwsConfig,
    deploy: &DeployConfig,
    role: Role,
    known: &Known,
    artifact: &Artifact,
    reconcile: Reconcile,
) -> BTreeMap<String, String> {
    let own = plan(deploy, role);
    let peer = plan(
        deploy,
        match role {
            Role::Primary => Role::Secondary,
            Role::Secondary => Role::Primary,
        },
    );
    let mut p = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        p.insert(k.to_string(), v.to_string());
    };
    set("Role", role.as_str());
    set("EnvironmentName", &deploy.environment);
    set("VpcCidr", &own.vpc_cidr);
    set("PrivateSubnet1Cidr", &own.subnet_cidrs[0]);
    set("PrivateSubnet2Cidr", &own.subnet_cidrs[1]);
    set("PeerVpcCidr", &peer.vpc_cidr);
    // Both regions run the reconcile function: it must work while the other region is down.
    set(
        "GlobalReplicationGroupIdSuffix",
        &deploy.global_datastore_suffix,
    );
    set("HostedZoneName", config.zone.trim_end_matches('.'));
    set("GlobalRecordName", &config.global_name);
    set("RecordTtl", &config.ttl.to_string());
    set("Owner", &config.owner);
    set("LambdaArtifactBucket", &own.artifact_bucket);
    set(
        "AlarmTopicArn",
        own.alarm_topic_arn.as_deref().unwrap_or(""),
    );
    set("LambdaArtifactKey", &artifact.key);
    set("LambdaArchitecture", artifact.architecture.as_str());
    set(
        "Reconcile",
        match reconcile {
            Reconcile::Enabled => "enabled",
            Reconcile::Disabled => "disabled",
        },
    );
    // Both roles: a joining group inherits the shard count, but must know it is a cluster.
    set("Shards", &deploy.shards.to_string());
    match role {
        Role::Primary => {
            set("CacheNodeType", &deploy.node_type);
            if let Some(vpc) = &known.secondary_vpc_id {
                set("PeerVpcId", vpc);
                set("PeerRegion", &peer.region);
            }
        }
        Role::Secondary => {
            if let Some(id) = &known.global_replication_group_id {
                set("GlobalReplicationGroupId", id);
            }
            if let Some(id) = &known.hosted_zone_id {
                set("HostedZoneId", id);
            }
            if let Some(id) = &known.peering_connection_id {
                set("PeeringConnectionId", id);
            }
        }
    }
    p
}

/// The deploy's stages in order: each stack created, then each updated with what the other output.
pub const DEPLOY_ORDER: [Role; 4] = [
    Role::Primary,
    Role::Secondary,
    Role::Primary,
    Role::Secondary,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::deploy::tests::example;
    use crate::deploy::artifact::Architecture;

    fn config() -> AwsConfig {
        AwsConfig::parse("zone = \"valkey-dr.internal\"\nglobal_name = \"demo\"\n").unwrap()
    }

    pub(crate) fn artifact() -> Artifact {
        Artifact {
            key: "key.zip".into(),
            architecture: Architecture::X86_64,
            glibc: Some((2, 34)),
        }
    }

    pub(crate) fn everything() -> Known {
        Known {
            global_replication_group_id: Some("ldgnf-valkey-dr".into()),
            hosted_zone_id: Some("Z1".into()),
            secondary_vpc_id: Some("vpc-2".into()),
            peering_connection_id: Some("pcx-1".into()),
        }
    }

    #[test]
    fn parameters_follow_what_is_known() {
        let deploy = example();
        let nothing = Known::default();
        let all = everything();
        // (role, known, key, expected value; None = absent)
        let cases: [(Role, &Known, &str, Option<&str>); 17] = [
            (Role::Primary, &nothing, "Role", Some("primary")),
            (Role::Primary, &nothing, "VpcCidr", Some("10.1.0.0/16")),
            (Role::Primary, &nothing, "PeerVpcCidr", Some("10.2.0.0/16")),
            (Role::Primary, &nothing, "PeerVpcId", None),
            (Role::Primary, &all, "PeerVpcId", Some("vpc-2")),
            (Role::Primary, &all, "PeerRegion", Some("us-west-2")),
            (Role::Primary, &all, "LambdaArtifactKey", Some("key.zip")),
            (
                Role::Primary,
                &all,
                "LambdaArtifactBucket",
                Some("artifacts-east"),
            ),
            (Role::Primary, &all, "HostedZoneId", None),
            (Role::Secondary, &nothing, "GlobalReplicationGroupId", None),
            (
                Role::Secondary,
                &all,
                "GlobalReplicationGroupId",
                Some("ldgnf-valkey-dr"),
            ),
            (Role::Secondary, &all, "HostedZoneId", Some("Z1")),
            (Role::Secondary, &all, "PeeringConnectionId", Some("pcx-1")),
            (
                Role::Secondary,
                &all,
                "PrivateSubnet2Cidr",
                Some("10.2.2.0/24"),
            ),
            // Both regions run the reconcile function, from their own region's bucket.
            (
                Role::Secondary,
                &all,
                "LambdaArtifactBucket",
                Some("artifacts-west"),
            ),
            (Role::Secondary, &all, "LambdaArchitecture", Some("x86_64")),
            (
                Role::Secondary,
                &all,
                "HostedZoneName",
                Some("valkey-dr.internal"),
            ),
        ];
        for (role, known, key, expected) in cases {
            let p = parameters(
                &config(),
                &deploy,
                role,
                known,
                &artifact(),
                Reconcile::Enabled,
            );
            assert_eq!(p.get(key).map(String::as_str), expected, "{role:?} {key}");
        }
        // A secondary never carries the primary-only settings.
        let p = parameters(
            &config(),
            &deploy,
            Role::Secondary,
            &all,
            &artifact(),
            Reconcile::Enabled,
        );
        assert!(!p.contains_key("CacheNodeType") && !p.contains_key("PeerVpcId"));
        assert_eq!(p["Reconcile"], "enabled");
        let p = parameters(
            &config(),
            &deploy,
            Role::Primary,
            &all,
            &artifact(),
            Reconcile::Disabled,
        );
        assert_eq!(p["Reconcile"], "disabled");
    }

    /// Every parameter deploy passes is declared by the template (CloudFormation rejects unknown
    /// ones), and every template parameter without a default is passed.
    #[test]
    fn parameters_match_the_template() {
        let template = crate::deploy::TEMPLATE;
        let section = template
            .split("\nParameters:\n")
            .nth(1)
            .and_then(|rest| rest.split("\nConditions:").next())
            .unwrap();
        let mut declared = std::collections::BTreeSet::new();
        let mut without_default = std::collections::BTreeSet::new();
        let mut current = None;
        for line in section.lines() {
            if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':'))
                && !name.starts_with(' ')
            {
                declared.insert(name.to_string());
                without_default.insert(name.to_string());
                current = Some(name.to_string());
            } else if line.trim_start().starts_with("Default:")
                && let Some(name) = &current
            {
                without_default.remove(name);
            }
        }
        for role in [Role::Primary, Role::Secondary] {
            let passed = parameters(
                &config(),
                &example(),
                role,
                &everything(),
                &artifact(),
                Reconcile::Enabled,
            );
            for key in passed.keys() {
                assert!(declared.contains(key), "{key} is not a template parameter");
            }
            for key in &without_default {
                assert!(passed.contains_key(key), "{role:?} does not pass {key}");
            }
        }
        assert!(declared.len() > 10, "{declared:?}");
    }

    #[test]
    fn known_comes_from_both_stacks_outputs() {
        let primary = BTreeMap::from([
            ("GlobalReplicationGroupId".to_string(), "g".to_string()),
            ("HostedZoneId".to_string(), "Z1".to_string()),
            ("PeeringConnectionId".to_string(), String::new()),
        ]);
        let secondary = BTreeMap::from([("VpcId".to_string(), "vpc-2".to_string())]);
        let known = Known::from_outputs(Some(&primary), Some(&secondary));
        assert_eq!(
            known,
            Known {
                global_replication_group_id: Some("g".into()),
                hosted_zone_id: Some("Z1".into()),
                secondary_vpc_id: Some("vpc-2".into()),
                peering_connection_id: None,
            }
        );
        assert_eq!(Known::from_outputs(None, None), Known::default());
    }
}
