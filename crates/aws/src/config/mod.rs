//! `aws.toml`: which global datastore, which hosted zone, which name.

pub mod deploy;

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// Identity in the ownership TXT record.
    #[serde(default = "default_owner")]
    pub owner: String,
    /// The global datastore (global replication group) id. Optional with `[deploy]`: then it is
    /// read from the primary stack's outputs.
    #[serde(default)]
    pub global_replication_group_id: Option<String>,
    /// The Route 53 hosted zone holding the name (optional with `[deploy]`, like the datastore id).
    #[serde(default)]
    pub hosted_zone_id: Option<String>,
    pub zone: String,
    /// Relative to the zone (`demo`) or fully qualified.
    pub global_name: String,
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// Wait until Route 53 reports the change INSYNC (seconds; 0 does not wait).
    #[serde(default = "default_insync_timeout")]
    pub insync_timeout_secs: u64,
    /// The SNS topic this region's ElastiCache events arrive on (the Lambda's
    /// `VALKEY_DR_EVENTS_TOPIC_ARN`): every message from it wakes a reconcile.
    #[serde(default)]
    pub events_topic_arn: Option<String>,
    /// What `valkey-dr aws deploy` creates; absent for a reconcile-only configuration.
    #[serde(default)]
    pub deploy: Option<deploy::DeployConfig>,
}

/// The two ids a reconcile needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    pub global_replication_group_id: String,
    pub hosted_zone_id: String,
}

fn default_owner() -> String {
    "valkey-dr".into()
}
fn default_ttl() -> u32 {
    10
}
fn default_insync_timeout() -> u64 {
    60
}

#[derive(Debug, thiserror::Error)]
pub enum AwsConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("aws config is not valid TOML or has an unexpected shape: {0}")]
    Syntax(String),
    #[error("aws config field `{field}`: {problem}; fix: {fix}")]
    Invalid {
        field: &'static str,
        problem: String,
        fix: &'static str,
    },
}

impl From<deploy::DeployConfigError> for AwsConfigError {
    fn from(e: deploy::DeployConfigError) -> AwsConfigError {
        AwsConfigError::Invalid {
            field: e.field,
            problem: e.problem,
            fix: e.fix,
        }
    }
}

impl AwsConfig {
    pub fn load(path: &Path) -> Result<AwsConfig, AwsConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| AwsConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        AwsConfig::parse(&text)
    }

    pub fn parse(text: &str) -> Result<AwsConfig, AwsConfigError> {
        let config: AwsConfig = toml::from_str(text)
            .map_err(|e| AwsConfigError::Syntax(e.to_string().trim().to_string()))?;
        let required = [
            (
                "zone",
                &config.zone,
                "the zone's name, e.g. valkey-dr.internal",
            ),
            (
                "global_name",
                &config.global_name,
                "the writer name, e.g. demo",
            ),
        ];
        for (field, value, fix) in required {
            if value.trim().is_empty() {
                return Err(AwsConfigError::Invalid {
                    field,
                    problem: "empty".into(),
                    fix,
                });
            }
        }
        // The owner goes into the ownership TXT record, which must stay one string of at most
        // 255 bytes (Route 53 would need it split) and parse back (no `,` or `=`).
        if !valkey_dr_core::names::is_label(&config.owner, false) {
            return Err(AwsConfigError::Invalid {
                field: "owner",
                problem: format!("\"{}\" is not a valid DNS label", config.owner),
                fix: "use 1-63 letters, digits or hyphens, not starting or ending with a hyphen",
            });
        }
        if config.ttl == 0 {
            return Err(AwsConfigError::Invalid {
                field: "ttl",
                problem: "TTL 0".into(),
                fix: "use at least 1 second (the reference design uses 10)",
            });
        }
        if let Some(deploy) = &config.deploy {
            deploy.validate()?;
        }
        Ok(config)
    }

    /// The ids from the file, or `None` for those that are missing or empty.
    pub fn targets(&self) -> Result<Targets, AwsConfigError> {
        let given = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        let global_replication_group_id =
            given(&self.global_replication_group_id).ok_or(AwsConfigError::Invalid {
                field: "global_replication_group_id",
                problem: "missing".into(),
                fix: "set it to the global datastore id (output GlobalReplicationGroupId of the primary stack), or add [deploy] so that it is read from the stack",
            })?;
        let hosted_zone_id = given(&self.hosted_zone_id).ok_or(AwsConfigError::Invalid {
            field: "hosted_zone_id",
            problem: "missing".into(),
            fix: "set it to the Route 53 hosted zone id (output HostedZoneId of the primary stack), or add [deploy] so that it is read from the stack",
        })?;
        Ok(Targets {
            global_replication_group_id,
            hosted_zone_id,
        })
    }

    /// The settings the Lambda reads from its environment, as (field, `VALKEY_DR_<name>`): the
    /// template must set every one (a test renders it and checks), or the function runs with
    /// defaults the operator did not choose.
    pub const ENVIRONMENT: [(&'static str, &'static str); 8] = [
        ("global_replication_group_id", "GLOBAL_REPLICATION_GROUP_ID"),
        ("hosted_zone_id", "HOSTED_ZONE_ID"),
        ("zone", "ZONE"),
        ("global_name", "GLOBAL_NAME"),
        ("owner", "OWNER"),
        ("events_topic_arn", "EVENTS_TOPIC_ARN"),
        ("ttl", "TTL"),
        ("insync_timeout_secs", "INSYNC_TIMEOUT_SECS"),
    ];

    /// The settings of [`Self::ENVIRONMENT`] that are whole numbers.
    const NUMBERS: [&'static str; 2] = ["ttl", "insync_timeout_secs"];

    /// The Lambda's configuration, from the environment the template sets ([`Self::ENVIRONMENT`]).
    pub fn from_env() -> Result<AwsConfig, AwsConfigError> {
        AwsConfig::from_variables(|name| std::env::var(format!("VALKEY_DR_{name}")).ok())
    }

    /// [`Self::from_env`] with `var` looking a `VALKEY_DR_<name>` variable up.
    pub fn from_variables(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<AwsConfig, AwsConfigError> {
        let mut text = String::new();
        for (key, name) in Self::ENVIRONMENT {
            let Some(value) = var(name) else { continue };
            if Self::NUMBERS.contains(&key) {
                let number = value.parse::<u64>().map_err(|_| AwsConfigError::Invalid {
                    field: key,
                    problem: format!("VALKEY_DR_{name}=\"{value}\" is not a number"),
                    fix: "set it to whole seconds",
                })?;
                text.push_str(&format!("{key} = {number}\n"));
            } else {
                text.push_str(&format!("{key} = {}\n", toml::Value::String(value)));
            }
        }
        AwsConfig::parse(&text)
    }

    /// The region to ask AWS in when the machine names none: `[deploy.primary] region`.
    pub fn home_region(&self) -> Option<&str> {
        self.deploy.as_ref().map(|d| d.primary.region.as_str())
    }

    pub fn names(&self) -> valkey_dr_core::records::ManagedNames {
        valkey_dr_core::records::ManagedNames::new(
            &self.global_name,
            &self.zone,
            self.ttl,
            &self.owner,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_valid() {
        let example = AwsConfig::parse(include_str!("../../../../deploy/aws/aws.toml")).unwrap();
        let deploy = example.deploy.as_ref().expect("the example has [deploy]");
        assert_eq!(deploy.secondary.region, "us-west-2");
        assert!(example.targets().is_err(), "ids come from the stacks");
    }

    #[test]
    fn errors_name_the_field() {
        let base = "global_replication_group_id = \"g\"\nhosted_zone_id = \"Z1\"\nzone = \"z.internal\"\nglobal_name = \"demo\"\n";
        let config = AwsConfig::parse(base).unwrap();
        assert_eq!(config.targets().unwrap().hosted_zone_id, "Z1");
        assert_eq!(config.names().global, "demo.z.internal.");
        assert_eq!(config.names().ownership, "_valkey-dr.demo.z.internal.");
        // A name that only ends with the zone's letters is not inside it.
        let outside = AwsConfig {
            global_name: "xz.internal".into(),
            ..config.clone()
        };
        assert_eq!(outside.names().global, "xz.internal.z.internal.");
        let cases = [
            (
                base.replace("zone = \"z.internal\"", "zone = \"\""),
                "`zone`",
            ),
            (format!("{base}ttl = 0\n"), "`ttl`"),
            (format!("owner = \"a,b=c\"\n{base}"), "`owner`"),
            (
                format!("owner = \"{}\"\n{base}", "o".repeat(200)),
                "`owner`",
            ),
            (format!("{base}ttll = 5\n"), "unknown field `ttll`"),
        ];
        for (text, expected) in cases {
            let error = AwsConfig::parse(&text).unwrap_err().to_string();
            assert!(error.contains(expected), "{expected}: {error}");
        }
        let without_zone_id =
            AwsConfig::parse(&base.replace("hosted_zone_id = \"Z1\"\n", "")).unwrap();
        let error = without_zone_id.targets().unwrap_err().to_string();
        assert!(error.contains("`hosted_zone_id`: missing"), "{error}");
    }
}
