//! `[deploy]` in aws.toml: the two regions, their address plans, the node type and where the
//! Lambda's code goes. Validated before anything is created: overlapping address ranges would make
//! the VPC peering unusable, and CloudFormation would only say so half-way through.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// Prefix of stack and resource names (`<environment>-primary`, `<environment>-secondary`).
    #[serde(default = "default_environment")]
    pub environment: String,
    #[serde(default = "default_node_type")]
    pub node_type: String,
    /// 1: cluster mode off. 2 or more: cluster mode on, this many shards (each a primary and a
    /// replica in every region); the name leads to the configuration endpoint.
    #[serde(default = "default_shards")]
    pub shards: u32,
    /// The global datastore id suffix (ElastiCache prefixes it with an account-specific string).
    #[serde(default = "default_environment")]
    pub global_datastore_suffix: String,
    /// The zip built by `make lambda`.
    #[serde(default = "default_lambda_zip")]
    pub lambda_zip: PathBuf,
    pub primary: RegionPlan,
    pub secondary: RegionPlan,
    /// Milliseconds between polls of a stack or datastore that is changing.
    #[serde(default = "default_poll")]
    pub poll_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionPlan {
    pub region: String,
    /// An existing S3 bucket in this region for the Lambda's code (Lambda reads code only from a
    /// bucket in its own region).
    pub artifact_bucket: String,
    pub vpc_cidr: String,
    /// Two private subnets, one per availability zone.
    pub subnet_cidrs: [String; 2],
    /// An SNS topic in this region that this region's failed-reconcile alarm notifies (an alarm
    /// can notify only a topic in its own region). Without it the alarm only changes state.
    #[serde(default)]
    pub alarm_topic_arn: Option<String>,
}

fn default_environment() -> String {
    "valkey-dr".into()
}
fn default_node_type() -> String {
    "cache.r7g.large".into()
}
fn default_shards() -> u32 {
    1
}
fn default_lambda_zip() -> PathBuf {
    "target/lambda/valkey-dr-lambda.zip".into()
}
fn default_poll() -> u64 {
    10_000
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("aws config field `{field}`: {problem}; fix: {fix}")]
pub struct DeployConfigError {
    pub field: &'static str,
    pub problem: String,
    pub fix: &'static str,
}

/// An IPv4 range `a.b.c.d/n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub base: u32,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (address, prefix) = text.trim().split_once('/')?;
        let address: Ipv4Addr = address.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        if prefix > 32 {
            return None;
        }
        let base = u32::from(address);
        // Host bits set (10.1.0.5/16) is almost always a typo of the intended network.
        (base & !Cidr::mask(prefix) == 0).then_some(Cidr { base, prefix })
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        }
    }

    fn last(self) -> u32 {
        self.base | !Cidr::mask(self.prefix)
    }

    pub fn overlaps(self, other: Cidr) -> bool {
        self.base <= other.last() && other.base <= self.last()
    }

    pub fn contains(self, other: Cidr) -> bool {
        self.base <= other.base && other.last() <= self.last()
    }
}

impl DeployConfig {
    pub fn validate(&self) -> Result<(), DeployConfigError> {
        let name_ok = |s: &str| {
            (2..=31).contains(&s.len())
                && s.starts_with(|c: char| c.is_ascii_lowercase())
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        if !name_ok(&self.environment) {
            return Err(invalid(
                "deploy.environment",
                format!("\"{}\" is not a valid name", self.environment),
                "2-31 lowercase letters, digits or '-', starting with a letter",
            ));
        }
        if !name_ok(&self.global_datastore_suffix) {
            return Err(invalid(
                "deploy.global_datastore_suffix",
                format!("\"{}\" is not a valid name", self.global_datastore_suffix),
                "2-31 lowercase letters, digits or '-', starting with a letter",
            ));
        }
        if self.node_type.starts_with("cache.r6gd.") {
            return Err(invalid(
                "deploy.node_type",
                format!(
                    "\"{}\" needs data tiering, which the template does not set up (ElastiCache would refuse the group)",
                    self.node_type
                ),
                "use an R6g or R7g node of the same size, e.g. cache.r7g.large",
            ));
        }
        if !(1..=500).contains(&self.shards) {
            return Err(invalid(
                "deploy.shards",
                format!("{} shards", self.shards),
                "1 keeps cluster mode off; 2 to 500 shards turn it on",
            ));
        }
        if !global_datastore_node_type(&self.node_type) {
            return Err(invalid(
                "deploy.node_type",
                format!("\"{}\" cannot run a global datastore", self.node_type),
                "use a large or bigger M5, M6g, M7g, R5, R6g, R7g or C7gn node, e.g. cache.r7g.large",
            ));
        }
        for (field, plan) in [
            ("deploy.primary.artifact_bucket", &self.primary),
            ("deploy.secondary.artifact_bucket", &self.secondary),
        ] {
            if !bucket_name_ok(&plan.artifact_bucket) {
                return Err(invalid(
                    field,
                    format!("\"{}\" is not a usable bucket name", plan.artifact_bucket),
                    "name an existing S3 bucket in that region: 3-63 lowercase letters, digits, '.' or '-', starting and ending with a letter or digit",
                ));
            }
        }
        for (field, plan) in [
            ("deploy.primary.alarm_topic_arn", &self.primary),
            ("deploy.secondary.alarm_topic_arn", &self.secondary),
        ] {
            let Some(arn) = &plan.alarm_topic_arn else {
                continue;
            };
            match topic_region(arn) {
                Some(region) if region == plan.region => {}
                Some(region) => {
                    return Err(invalid(
                        field,
                        format!("{arn} is in {region}, not {}", plan.region),
                        "an alarm notifies only a topic in its own region: name a topic in that region",
                    ));
                }
                None => {
                    return Err(invalid(
                        field,
                        format!("\"{arn}\" is not an SNS topic ARN"),
                        "use arn:aws:sns:<region>:<account>:<topic>, or leave the field out",
                    ));
                }
            }
        }
        if self.primary.region == self.secondary.region {
            return Err(invalid(
                "deploy.secondary.region",
                format!("same region as the primary ({})", self.primary.region),
                "a global datastore spans two different regions",
            ));
        }
        if !(1..=300_000).contains(&self.poll_ms) {
            return Err(invalid(
                "deploy.poll_ms",
                format!("{} is out of range", self.poll_ms),
                "use 1 to 300000 milliseconds (the default is 10000)",
            ));
        }
        let primary = self.primary.ranges("deploy.primary")?;
        let secondary = self.secondary.ranges("deploy.secondary")?;
        if primary.0.overlaps(secondary.0) {
            return Err(invalid(
                "deploy.secondary.vpc_cidr",
                format!(
                    "{} overlaps the primary's {}",
                    self.secondary.vpc_cidr, self.primary.vpc_cidr
                ),
                "peered VPCs need disjoint ranges, e.g. 10.1.0.0/16 and 10.2.0.0/16",
            ));
        }
        Ok(())
    }
}

/// The node families and sizes of global datastores the template deploys: large or bigger M5, M6g,
/// M7g, R5, R6g, R7g and C7gn (the template's AllowedPattern says the same). Global datastores also
/// run on R6gd, but only with data tiering, which the template does not set up.
pub fn global_datastore_node_type(node_type: &str) -> bool {
    const FAMILIES: [&str; 7] = ["m5", "m6g", "m7g", "r5", "r6g", "r7g", "c7gn"];
    let mut parts = node_type.split('.');
    let (Some("cache"), Some(family), Some(size), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let size_ok = size == "large"
        || size
            .strip_suffix("xlarge")
            .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()));
    FAMILIES.contains(&family) && size_ok
}

/// The region of an SNS topic ARN (`arn:<partition>:sns:<region>:<account>:<name>`).
fn topic_region(arn: &str) -> Option<&str> {
    let parts: Vec<&str> = arn.split(':').collect();
    match parts[..] {
        ["arn", partition, "sns", region, account, name]
            if !partition.is_empty()
                && !region.is_empty()
                && account.len() == 12
                && account.chars().all(|c| c.is_ascii_digit())
                && !name.is_empty() =>
        {
            Some(region)
        }
        _ => None,
    }
}

/// S3's bucket naming rules (a dotted name is reached path-style: as a host it would not match
/// S3's wildcard certificate).
fn bucket_name_ok(name: &str) -> bool {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && edge_ok(name.chars().next())
        && edge_ok(name.chars().last())
        && !name.contains("..")
}

impl RegionPlan {
    /// The VPC range and its subnets, checked: every subnet inside the VPC, none overlapping.
    fn ranges(&self, at: &'static str) -> Result<(Cidr, [Cidr; 2]), DeployConfigError> {
        let field = |leaf: &str| -> &'static str {
            match (at, leaf) {
                ("deploy.primary", "vpc") => "deploy.primary.vpc_cidr",
                ("deploy.primary", _) => "deploy.primary.subnet_cidrs",
                (_, "vpc") => "deploy.secondary.vpc_cidr",
                _ => "deploy.secondary.subnet_cidrs",
            }
        };
        let parse = |text: &str, leaf: &str| {
            Cidr::parse(text).ok_or_else(|| {
                invalid(
                    field(leaf),
                    format!("\"{text}\" is not an IPv4 network"),
                    "write a.b.c.d/n with the host bits zero, e.g. 10.1.0.0/16",
                )
            })
        };
        let vpc = parse(&self.vpc_cidr, "vpc")?;
        if !(16..=28).contains(&vpc.prefix) {
            return Err(invalid(
                field("vpc"),
                format!("/{} is outside what a VPC allows", vpc.prefix),
                "use a prefix between /16 and /28",
            ));
        }
        let subnets = [
            parse(&self.subnet_cidrs[0], "subnet")?,
            parse(&self.subnet_cidrs[1], "subnet")?,
        ];
        for (text, subnet) in self.subnet_cidrs.iter().zip(subnets) {
            if !vpc.contains(subnet) {
                return Err(invalid(
                    field("subnet"),
                    format!("{text} is not inside the VPC's {}", self.vpc_cidr),
                    "choose subnets inside the VPC range",
                ));
            }
        }
        if subnets[0].overlaps(subnets[1]) {
            return Err(invalid(
                field("subnet"),
                format!(
                    "{} and {} overlap",
                    self.subnet_cidrs[0], self.subnet_cidrs[1]
                ),
                "give each availability zone its own range",
            ));
        }
        Ok((vpc, subnets))
    }
}

fn invalid(field: &'static str, problem: String, fix: &'static str) -> DeployConfigError {
    DeployConfigError {
        field,
        problem,
        fix,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn example() -> DeployConfig {
        DeployConfig {
            environment: "valkey-dr".into(),
            node_type: "cache.r7g.large".into(),
            shards: 1,
            global_datastore_suffix: "valkey-dr".into(),
            lambda_zip: "lambda.zip".into(),
            primary: RegionPlan {
                region: "us-east-2".into(),
                artifact_bucket: "artifacts-east".into(),
                vpc_cidr: "10.1.0.0/16".into(),
                subnet_cidrs: ["10.1.1.0/24".into(), "10.1.2.0/24".into()],
                alarm_topic_arn: None,
            },
            secondary: RegionPlan {
                region: "us-west-2".into(),
                artifact_bucket: "artifacts-west".into(),
                vpc_cidr: "10.2.0.0/16".into(),
                subnet_cidrs: ["10.2.1.0/24".into(), "10.2.2.0/24".into()],
                alarm_topic_arn: None,
            },
            poll_ms: 10_000,
        }
    }

    #[test]
    fn node_types_of_global_datastores() {
        for ok in [
            "cache.r7g.large",
            "cache.m5.xlarge",
            "cache.r6g.16xlarge",
            "cache.c7gn.large",
        ] {
            assert!(global_datastore_node_type(ok), "{ok}");
        }
        for bad in [
            "cache.t4g.medium",
            "cache.r7g.medium",
            "cache.r7g",
            "r7g.large",
            "cache.r7g.large.x",
            "cache.r7g.xxlarge",
            "cache.m4.large",
            "cache.r6gd.xlarge",
        ] {
            assert!(!global_datastore_node_type(bad), "{bad}");
        }
    }

    #[test]
    fn cidr_arithmetic() {
        let a = Cidr::parse("10.1.0.0/16").unwrap();
        let cases = [
            ("10.1.255.0/24", true, true),
            ("10.2.0.0/16", false, false),
            ("10.0.0.0/8", true, false),
            ("0.0.0.0/0", true, false),
            ("10.1.0.0/16", true, true),
        ];
        for (other, overlaps, inside) in cases {
            let b = Cidr::parse(other).unwrap();
            assert_eq!(a.overlaps(b), overlaps, "{other} overlaps");
            assert_eq!(a.contains(b), inside, "{other} inside");
        }
        for bad in [
            "10.1.0.5/16",
            "10.1.0.0",
            "10.1.0.0/33",
            "ten/8",
            "10.1.0.0/x",
        ] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn bad_plans_name_the_field() {
        type Edit = fn(&mut DeployConfig);
        let cases: [(Edit, &str); 16] = [
            (
                |c| c.shards = 0,
                "`deploy.shards`: 0 shards; fix: 1 keeps cluster mode off; 2 to 500 shards turn it on",
            ),
            (|c| c.shards = 501, "`deploy.shards`: 501 shards"),
            (
                |c| {
                    c.secondary.vpc_cidr = "10.1.128.0/17".into();
                    c.secondary.subnet_cidrs = ["10.1.129.0/24".into(), "10.1.130.0/24".into()];
                },
                "`deploy.secondary.vpc_cidr`: 10.1.128.0/17 overlaps the primary's 10.1.0.0/16",
            ),
            (
                |c| c.primary.subnet_cidrs[1] = "10.9.2.0/24".into(),
                "`deploy.primary.subnet_cidrs`: 10.9.2.0/24 is not inside",
            ),
            (
                |c| c.secondary.subnet_cidrs[1] = "10.2.1.128/25".into(),
                "`deploy.secondary.subnet_cidrs`: 10.2.1.0/24 and 10.2.1.128/25 overlap",
            ),
            (
                |c| c.primary.vpc_cidr = "10.1.0.1/16".into(),
                "`deploy.primary.vpc_cidr`: \"10.1.0.1/16\" is not an IPv4 network",
            ),
            (
                |c| c.primary.vpc_cidr = "10.0.0.0/8".into(),
                "`deploy.primary.vpc_cidr`: /8 is outside",
            ),
            (
                |c| c.secondary.region = "us-east-2".into(),
                "`deploy.secondary.region`: same region",
            ),
            (|c| c.environment = "Prod_1".into(), "`deploy.environment`"),
            (
                |c| c.secondary.artifact_bucket = " ".into(),
                "`deploy.secondary.artifact_bucket`",
            ),
            (
                |c| c.primary.artifact_bucket = "My_Artifacts".into(),
                "`deploy.primary.artifact_bucket`: \"My_Artifacts\" is not a usable bucket name",
            ),
            (
                |c| c.node_type = "cache.t4g.medium".into(),
                "`deploy.node_type`: \"cache.t4g.medium\" cannot run a global datastore",
            ),
            (
                |c| c.node_type = "cache.r7g.medium".into(),
                "`deploy.node_type`",
            ),
            // Review B10: accepted before, and the primary group's creation failed mid-stack.
            (
                |c| c.node_type = "cache.r6gd.xlarge".into(),
                "`deploy.node_type`: \"cache.r6gd.xlarge\" needs data tiering",
            ),
            (
                |c| {
                    c.secondary.alarm_topic_arn =
                        Some("arn:aws:sns:us-east-2:123456789012:oncall".into())
                },
                "`deploy.secondary.alarm_topic_arn`: arn:aws:sns:us-east-2:123456789012:oncall is in us-east-2, not us-west-2",
            ),
            (
                |c| c.primary.alarm_topic_arn = Some("oncall".into()),
                "`deploy.primary.alarm_topic_arn`: \"oncall\" is not an SNS topic ARN",
            ),
        ];
        assert_eq!(example().validate(), Ok(()));
        for (edit, expected) in cases {
            let mut config = example();
            edit(&mut config);
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(expected), "{expected}\n  got {error}");
        }
    }
}
