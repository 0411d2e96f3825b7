//! The `valkey-dr.toml` configuration: strict parsing and validation.
//!
//! Every validation error names the offending field and says how to fix it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::endpoint::Endpoint;
pub use crate::names::{fqdn, is_label, name_in_zone};

/// The most regions a topology may span: one primary region and up to two secondaries.
pub const MAX_REGIONS: usize = 3;

mod controller;
mod coordination;
mod dns;
mod http;
mod security;
#[cfg(test)]
mod tests;
mod validate;

pub use controller::*;
pub use coordination::*;
pub use dns::*;
pub use http::*;
pub use security::*;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity written into the ownership TXT record; records owned by another identity are never touched.
    #[serde(default = "default_owner")]
    pub owner: String,
    /// Where the controller keeps its epoch record, event log and control socket.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The region whose primary is the writer when no epoch has been recorded yet.
    pub primary_region: String,
    /// What the nodes form: one replication group (the default), or one Valkey cluster
    /// stretched over the regions, whose shards are discovered from the nodes.
    #[serde(default, skip_serializing_if = "Mode::is_replication")]
    pub mode: Mode,
    pub regions: Vec<RegionConfig>,
    pub dns: DnsConfig,
    #[serde(default)]
    pub controller: ControllerConfig,
    /// TLS for every connection to the nodes; omit for plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Credentials for the nodes; omit when they need no AUTH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// Several controllers in separate failure domains, coordinated through etcd. Omit for one
    /// controller with its state in `state.json` (simple, but not highly available).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordination: Option<CoordinationConfig>,
    /// The read-only HTTP endpoint (metrics, health, status, events); omit to serve none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpConfig>,
    /// URLs that receive failovers, switchovers, fencing and suspected data loss as signed JSON.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookConfig>,
}

/// What the configured nodes form.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One primary and its replicas (`REPLICAOF`).
    #[default]
    Replication,
    /// A Valkey cluster (`cluster-enabled yes`): every shard's primary in the writer region.
    Cluster,
}

impl Mode {
    fn is_replication(&self) -> bool {
        *self == Mode::Replication
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    pub name: String,
    pub nodes: Vec<NodeConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// IP address (served as an A record) or host name (served as a CNAME).
    pub host: String,
    #[serde(default = "default_valkey_port")]
    pub port: u16,
    /// How nodes of another region reach this node for replication ("host:port"), keyed by that
    /// region's name: a proxy, NAT or peering address. Defaults to `host:port`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub replication_address: BTreeMap<String, String>,
    /// How the controller reaches this node ("host:port"), when not at `host:port` (a proxy, a
    /// tunnel). Defaults to `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_address: Option<String>,
}

fn default_owner() -> String {
    "valkey-dr".into()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/valkey-dr")
}
fn default_valkey_port() -> u16 {
    6379
}
fn default_ttl() -> u32 {
    5
}
fn default_rfc2136_timeout_ms() -> u64 {
    2000
}
fn default_dns_listen() -> String {
    "127.0.0.1:5353".into()
}
fn default_reconcile_interval_ms() -> u64 {
    1000
}
fn default_connect_timeout_ms() -> u64 {
    500
}
fn default_command_timeout_ms() -> u64 {
    500
}
fn default_catchup_timeout_ms() -> u64 {
    5000
}
fn default_down_after_ms() -> u64 {
    1500
}
fn default_probe_interval_ms() -> u64 {
    250
}
fn default_failover_block_ms() -> u64 {
    300_000
}
fn default_writer_quorum_max_lag_s() -> u32 {
    2
}
fn default_max_data_at_risk_bytes() -> u64 {
    1 << 20
}
fn default_lease_ttl_ms() -> u64 {
    3000
}

fn default_true() -> bool {
    true
}

/// A configuration problem: which field, what is wrong, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config is not valid TOML or has an unexpected shape: {0}")]
    Syntax(String),
    #[error("config field `{field}`: {problem}; fix: {fix}")]
    Invalid {
        field: String,
        problem: String,
        fix: String,
    },
}

impl ConfigError {
    fn invalid(
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// The field the error is about, when it is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Config::parse(&text)
    }

    /// Parses and validates a config document.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Syntax(e.to_string().trim().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }

    /// The etcd key prefix of this deployment.
    pub fn coordination_prefix(&self) -> Option<String> {
        let c = self.coordination.as_ref()?;
        Some(
            c.prefix
                .clone()
                .unwrap_or_else(|| format!("/valkey-dr/{}", self.owner)),
        )
    }

    /// The zone as a fully qualified, lower-case name with trailing dot.
    pub fn zone_fqdn(&self) -> String {
        fqdn(&self.dns.zone)
    }

    /// The global writer name, fully qualified.
    pub fn global_name_fqdn(&self) -> String {
        name_in_zone(&self.dns.global_name, &self.dns.zone)
    }

    pub fn control_socket(&self) -> PathBuf {
        self.state_dir.join("control.sock")
    }

    pub fn events_file(&self) -> PathBuf {
        self.state_dir.join("events.jsonl")
    }
}
