//! The `valkey-dr.toml` configuration: strict parsing and validation.
//!
//! Every validation error names the offending field and says how to fix it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::topology::Endpoint;

/// The most regions a topology may span: one primary region and up to two secondaries.
pub const MAX_REGIONS: usize = 3;

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

/// The read-only HTTP endpoint. Moving the writer stays on the owner-only control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `ip:port`; loopback unless a token and TLS are configured.
    #[serde(default = "default_http_listen")]
    pub listen: String,
    /// A file holding the bearer token every request but `/healthz` and `/readyz` must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain and key: the endpoint speaks HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
}

/// What a webhook can receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WebhookEvent {
    #[serde(rename = "failover.started")]
    FailoverStarted,
    #[serde(rename = "failover.completed")]
    FailoverCompleted,
    #[serde(rename = "switchover.completed")]
    SwitchoverCompleted,
    #[serde(rename = "fenced")]
    Fenced,
    #[serde(rename = "data_loss_suspected")]
    DataLossSuspected,
}

impl WebhookEvent {
    /// The name in the payload's `event` and the `X-Valkey-DR-Event` header.
    pub fn name(self) -> &'static str {
        match self {
            WebhookEvent::FailoverStarted => "failover.started",
            WebhookEvent::FailoverCompleted => "failover.completed",
            WebhookEvent::SwitchoverCompleted => "switchover.completed",
            WebhookEvent::Fenced => "fenced",
            WebhookEvent::DataLossSuspected => "data_loss_suspected",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL that receives each event as a JSON POST.
    pub url: String,
    /// A file holding the HMAC-SHA256 key; every POST carries
    /// `X-Valkey-DR-Signature: sha256=<hex of HMAC(body)>`.
    pub secret_file: PathBuf,
    /// Which events to send [default: all].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<WebhookEvent>,
}

fn default_http_listen() -> String {
    "127.0.0.1:9187".into()
}

/// The highly available shape: one controller per site (each region and a witness), one leader
/// at a time elected in etcd, the epoch, intent and DNS records held in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinationConfig {
    /// Client URLs of the etcd members, e.g. `["http://10.0.1.5:2379", …]`.
    pub etcd: Vec<String>,
    /// This controller's site: a region name (the controller fences that region's writer when it
    /// loses etcd) or another name (a witness).
    pub site: String,
    /// Every controller site; a cross-region failover needs a majority of them to see the writer
    /// down.
    pub sites: Vec<String>,
    /// Lease of the leader key and of each site's presence (whole seconds in etcd, at least 2 s).
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// Key prefix in etcd [default: /valkey-dr/<owner>].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The address of each site's DNS server: the zone's NS set names them all
    /// (`ns-<site>.<zone>`), so resolvers find the name through any surviving site.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub name_servers: BTreeMap<String, std::net::IpAddr>,
}

impl CoordinationConfig {
    /// How many sites must agree (a strict majority).
    pub fn quorum(&self) -> usize {
        self.sites.len() / 2 + 1
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA that signed the nodes' certificates; nodes are verified against it.
    pub ca_file: PathBuf,
    /// Client certificate and key (PEM) when the nodes require mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
}

/// Where the nodes' password comes from. The password itself never appears in the config, on the
/// command line, in logs, events, status output or error messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// ACL user; the default user when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A file holding the password (first line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// The name of an environment variable holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Never valid: present only to explain why a literal password is refused.
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// The zone the records live in, e.g. `valkey-dr.live`.
    pub zone: String,
    /// The global writer name, relative to the zone (`demo`) or fully qualified (`demo.valkey-dr.live.`).
    pub global_name: String,
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    #[serde(default)]
    pub provider: DnsProviderConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DnsProviderConfig {
    /// The authoritative server built into the controller.
    Embedded {
        #[serde(default = "default_dns_listen")]
        listen: String,
    },
    /// RFC 2136 dynamic updates, signed with TSIG, to the zone's primary server (BIND, Knot,
    /// PowerDNS, …). Each change is one UPDATE whose prerequisites are the records it replaces.
    Rfc2136(Rfc2136Config),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rfc2136Config {
    /// The zone's primary server(s), "IP:port", tried in order. `dns.zone` must be a zone they
    /// hold (its apex).
    pub servers: Vec<String>,
    /// The TSIG key's name, as the server knows it.
    pub tsig_key_name: String,
    #[serde(default)]
    pub tsig_algorithm: TsigAlgorithm,
    /// A file holding the key's secret, base64 (as in BIND's `key` clause), on its first line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tsig_secret_file: Option<PathBuf>,
    /// The name of an environment variable holding the secret, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tsig_secret_env: Option<String>,
    /// Never valid: present only to explain why a literal secret is refused.
    #[serde(default, skip_serializing)]
    pub tsig_secret: Option<String>,
    /// Limit for one exchange with a server.
    #[serde(default = "default_rfc2136_timeout_ms")]
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TsigAlgorithm {
    #[default]
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    #[serde(rename = "hmac-sha384")]
    HmacSha384,
    #[serde(rename = "hmac-sha512")]
    HmacSha512,
}

impl Default for DnsProviderConfig {
    fn default() -> Self {
        DnsProviderConfig::Embedded {
            listen: default_dns_listen(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// Time between two reconcile passes when nothing wakes the controller earlier.
    #[serde(default = "default_reconcile_interval_ms")]
    pub reconcile_interval_ms: u64,
    /// Limit for opening a connection to a node.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Limit for one command's reply from a node.
    #[serde(default = "default_command_timeout_ms")]
    pub command_timeout_ms: u64,
    /// How long a planned switchover waits for the target to catch up before it aborts.
    #[serde(default = "default_catchup_timeout_ms")]
    pub catchup_timeout_ms: u64,
    /// A node counts as down only after failing every probe for this long (short blips are ignored).
    #[serde(default = "default_down_after_ms")]
    pub down_after_ms: u64,
    /// Probe interval while some node is failing (faster than the reconcile interval).
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
    /// Promote a replica of the writer's region when the writer node is down (like Multi-AZ).
    #[serde(default = "default_true")]
    pub in_region_failover: bool,
    /// When the writer's whole region is down: `manual` reports and waits for
    /// `valkey-dr failover <region> --force`; `auto` promotes the best node of another region.
    #[serde(default)]
    pub cross_region_failover: FailoverPolicy,
    /// After an automatic failover, further automatic failovers wait for `valkey-dr ack` or this long.
    #[serde(default = "default_failover_block_ms")]
    pub failover_block_ms: u64,
    /// The writer's self-fence (`min-replicas-to-write`, [`crate::self_fence`]): a writer that has
    /// heard from no replica outside its region for this many seconds refuses writes, and only
    /// then may another region take over from it automatically. 0 turns it off, and with it
    /// automatic failover away from a writer that cannot be reached.
    #[serde(default = "default_writer_quorum_max_lag_s")]
    pub writer_quorum_max_lag_s: u32,
    /// An unplanned failover that would give up more than this many bytes of the writer's
    /// replication stream (its last seen offset minus the best candidate's) waits for an operator
    /// (`valkey-dr failover <region> --force`) instead of happening automatically.
    #[serde(default = "default_max_data_at_risk_bytes")]
    pub max_data_at_risk_bytes: u64,
    /// `events.jsonl` is rotated to `events.jsonl.1` (one generation kept) when it reaches this size.
    #[serde(default = "default_events_max_bytes")]
    pub events_max_bytes: u64,
}

fn default_events_max_bytes() -> u64 {
    64 * 1024 * 1024
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverPolicy {
    #[default]
    Manual,
    Auto,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            reconcile_interval_ms: default_reconcile_interval_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            command_timeout_ms: default_command_timeout_ms(),
            catchup_timeout_ms: default_catchup_timeout_ms(),
            down_after_ms: default_down_after_ms(),
            probe_interval_ms: default_probe_interval_ms(),
            in_region_failover: true,
            cross_region_failover: FailoverPolicy::Manual,
            failover_block_ms: default_failover_block_ms(),
            writer_quorum_max_lag_s: default_writer_quorum_max_lag_s(),
            max_data_at_risk_bytes: default_max_data_at_risk_bytes(),
            events_max_bytes: default_events_max_bytes(),
        }
    }
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

    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_label("owner", &self.owner, false)?;
        if self.regions.len() < 2 {
            return Err(ConfigError::invalid(
                "regions",
                format!(
                    "{} region(s) configured, at least 2 are needed",
                    self.regions.len()
                ),
                "add a [[regions]] table for each region (2 or 3)",
            ));
        }
        if self.regions.len() > MAX_REGIONS {
            return Err(ConfigError::invalid(
                "regions",
                format!(
                    "{} regions configured, at most {MAX_REGIONS} are supported",
                    self.regions.len()
                ),
                "remove regions until at most 3 remain",
            ));
        }
        let mut region_names = BTreeSet::new();
        let mut addresses: BTreeMap<Endpoint, String> = BTreeMap::new();
        for (r, region) in self.regions.iter().enumerate() {
            let field = format!("regions[{r}].name");
            validate_label(&field, &region.name, false)?;
            if !region_names.insert(region.name.as_str()) {
                return Err(ConfigError::invalid(
                    field,
                    format!("duplicate region \"{}\"", region.name),
                    "give every region a unique name",
                ));
            }
            if region.nodes.is_empty() {
                return Err(ConfigError::invalid(
                    format!("regions[{r}].nodes"),
                    format!("region \"{}\" has no nodes", region.name),
                    "add at least one [[regions.nodes]] entry with host and port",
                ));
            }
            for (n, node) in region.nodes.iter().enumerate() {
                let field = format!("regions[{r}].nodes[{n}]");
                let endpoint = node_endpoint(&field, node)?;
                if let Some(other) = addresses.insert(endpoint.clone(), field.clone()) {
                    return Err(ConfigError::invalid(
                        format!("{field}.host"),
                        format!("{endpoint} is already used by {other}"),
                        "give every node its own host:port",
                    ));
                }
            }
        }
        for (r, region) in self.regions.iter().enumerate() {
            for (n, node) in region.nodes.iter().enumerate() {
                if let Some(address) = &node.controller_address {
                    Endpoint::parse(address).map_err(|problem| {
                        ConfigError::invalid(
                            format!("regions[{r}].nodes[{n}].controller_address"),
                            problem,
                            "write the address as \"host:port\"",
                        )
                    })?;
                }
                for (from, address) in &node.replication_address {
                    let field = format!("regions[{r}].nodes[{n}].replication_address.{from}");
                    if !region_names.contains(from.as_str()) || from == &region.name {
                        return Err(ConfigError::invalid(
                            field,
                            format!("\"{from}\" is not another configured region"),
                            "key each replication address by the name of the region that uses it",
                        ));
                    }
                    Endpoint::parse(address).map_err(|problem| {
                        ConfigError::invalid(field, problem, "write the address as \"host:port\"")
                    })?;
                }
            }
        }
        if self.primary_region.is_empty() {
            return Err(ConfigError::invalid(
                "primary_region",
                "no primary region given",
                "set primary_region to the name of the region that holds the writer",
            ));
        }
        if !region_names.contains(self.primary_region.as_str()) {
            return Err(ConfigError::invalid(
                "primary_region",
                format!("\"{}\" is not a configured region", self.primary_region),
                format!(
                    "use one of: {}",
                    region_names.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        self.validate_dns()?;
        self.validate_controller()?;
        self.validate_coordination()?;
        self.validate_http()?;
        self.validate_webhooks()?;
        self.validate_security()
    }

    fn validate_http(&self) -> Result<(), ConfigError> {
        let Some(http) = &self.http else {
            return Ok(());
        };
        let listen: std::net::SocketAddr = http.listen.parse().map_err(|_| {
            ConfigError::invalid(
                "http.listen",
                format!("\"{}\" is not ip:port", http.listen),
                "write e.g. 127.0.0.1:9187",
            )
        })?;
        if http.tls_cert_file.is_some() != http.tls_key_file.is_some() {
            return Err(ConfigError::invalid(
                "http.tls_cert_file",
                "a certificate without a key, or a key without a certificate",
                "set both tls_cert_file and tls_key_file, or neither",
            ));
        }
        if !listen.ip().is_loopback() && (http.token_file.is_none() || http.tls_cert_file.is_none())
        {
            return Err(ConfigError::invalid(
                "http.listen",
                format!("{listen} is reachable from other hosts without a token and TLS"),
                "set http.token_file and http.tls_cert_file/tls_key_file, or listen on 127.0.0.1",
            ));
        }
        Ok(())
    }

    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        for (i, hook) in self.webhooks.iter().enumerate() {
            if !(hook.url.starts_with("http://") || hook.url.starts_with("https://")) {
                return Err(ConfigError::invalid(
                    format!("webhooks[{i}].url"),
                    format!("\"{}\" is not an http(s) URL", hook.url),
                    "write e.g. https://alerts.example.com/valkey-dr",
                ));
            }
        }
        Ok(())
    }

    fn validate_security(&self) -> Result<(), ConfigError> {
        if let Some(tls) = &self.tls
            && tls.client_cert_file.is_some() != tls.client_key_file.is_some()
        {
            return Err(ConfigError::invalid(
                "tls.client_cert_file",
                "a client certificate needs its key and the other way round",
                "set both client_cert_file and client_key_file, or neither",
            ));
        }
        if let Some(auth) = &self.auth {
            if auth.password.is_some() {
                return Err(ConfigError::invalid(
                    "auth.password",
                    "a literal password in the config would end up in backups and diffs",
                    "put it in a file (password_file, mode 0600) or an environment variable (password_env)",
                ));
            }
            match (&auth.password_file, &auth.password_env) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return Err(ConfigError::invalid(
                        "auth.password_file",
                        "exactly one source of the password is needed",
                        "set either password_file or password_env",
                    ));
                }
            }
            if let Some(user) = &auth.username
                && (user.is_empty() || user.chars().any(|c| c.is_whitespace()))
            {
                return Err(ConfigError::invalid(
                    "auth.username",
                    "an ACL user name cannot be empty or contain spaces",
                    "use the name of the ACL user (or remove it for the default user)",
                ));
            }
        }
        Ok(())
    }

    fn validate_dns(&self) -> Result<(), ConfigError> {
        validate_dns_name("dns.zone", &self.dns.zone)?;
        validate_dns_name("dns.global_name", &self.dns.global_name)?;
        let zone = fqdn(&self.dns.zone);
        let global = self.global_name_fqdn();
        if !global.ends_with(&format!(".{zone}")) {
            return Err(ConfigError::invalid(
                "dns.global_name",
                format!("\"{global}\" is not inside zone \"{zone}\""),
                "use a name relative to the zone (e.g. \"demo\") or a name ending in the zone",
            ));
        }
        if self.dns.ttl == 0 {
            return Err(ConfigError::invalid(
                "dns.ttl",
                "TTL 0 makes resolvers query on every connection and is not cached consistently",
                "set a TTL of at least 1 second (5 is a good default)",
            ));
        }
        match &self.dns.provider {
            DnsProviderConfig::Embedded { listen } => {
                listen.parse::<std::net::SocketAddr>().map_err(|_| {
                    ConfigError::invalid(
                        "dns.provider.listen",
                        format!("\"{listen}\" is not an IP:port socket address"),
                        "write it like \"127.0.0.1:5353\"",
                    )
                })?;
            }
            DnsProviderConfig::Rfc2136(rfc2136) => self.validate_rfc2136(rfc2136)?,
        }
        Ok(())
    }

    fn validate_rfc2136(&self, c: &Rfc2136Config) -> Result<(), ConfigError> {
        if c.servers.is_empty() {
            return Err(ConfigError::invalid(
                "dns.provider.servers",
                "no server to send updates to",
                "list the zone's primary server, e.g. servers = [\"192.0.2.53:53\"]",
            ));
        }
        for server in &c.servers {
            server.parse::<std::net::SocketAddr>().map_err(|_| {
                ConfigError::invalid(
                    "dns.provider.servers",
                    format!("\"{server}\" is not an IP:port socket address"),
                    "write it like \"192.0.2.53:53\" (the primary server's address, not its name)",
                )
            })?;
        }
        validate_dns_name("dns.provider.tsig_key_name", &c.tsig_key_name)?;
        if c.tsig_secret.is_some() {
            return Err(ConfigError::invalid(
                "dns.provider.tsig_secret",
                "a literal TSIG secret in the config would end up in backups and diffs",
                "put it in a file (tsig_secret_file, mode 0600) or an environment variable (tsig_secret_env)",
            ));
        }
        if c.tsig_secret_file.is_some() == c.tsig_secret_env.is_some() {
            return Err(ConfigError::invalid(
                "dns.provider.tsig_secret_file",
                "exactly one source of the TSIG secret is needed",
                "set either tsig_secret_file or tsig_secret_env",
            ));
        }
        if !(100..=60_000).contains(&c.timeout_ms) {
            return Err(ConfigError::invalid(
                "dns.provider.timeout_ms",
                format!("{} ms is outside 100–60000", c.timeout_ms),
                "use a limit a little above the server's round trip, e.g. 2000",
            ));
        }
        if self.coordination.is_some() {
            return Err(ConfigError::invalid(
                "dns.provider.kind",
                "the highly available shape serves the records from every controller; RFC 2136 is supported with one controller",
                "remove [coordination], or use kind = \"embedded\"",
            ));
        }
        Ok(())
    }

    fn validate_coordination(&self) -> Result<(), ConfigError> {
        let Some(c) = &self.coordination else {
            return Ok(());
        };
        if c.etcd.is_empty() {
            return Err(ConfigError::invalid(
                "coordination.etcd",
                "no etcd member is listed",
                "list the client URLs of every etcd member, e.g. [\"http://10.0.1.5:2379\"]",
            ));
        }
        for (i, url) in c.etcd.iter().enumerate() {
            let authority = url.strip_prefix("http://").unwrap_or("");
            if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
                return Err(ConfigError::invalid(
                    format!("coordination.etcd[{i}]"),
                    format!("\"{url}\" is not an etcd client URL"),
                    "write it as http://<host>:<port>",
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for (i, site) in c.sites.iter().enumerate() {
            validate_label(&format!("coordination.sites[{i}]"), site, false)?;
            if !seen.insert(site.as_str()) {
                return Err(ConfigError::invalid(
                    format!("coordination.sites[{i}]"),
                    format!("duplicate site \"{site}\""),
                    "list every controller site once",
                ));
            }
        }
        for site in c.name_servers.keys() {
            if !seen.contains(site.as_str()) {
                return Err(ConfigError::invalid(
                    format!("coordination.name_servers.{site}"),
                    format!("\"{site}\" is not one of coordination.sites"),
                    "name the address of each site's DNS server under its site name",
                ));
            }
        }
        if !seen.contains(c.site.as_str()) {
            return Err(ConfigError::invalid(
                "coordination.site",
                format!("\"{}\" is not one of coordination.sites", c.site),
                "add it to coordination.sites or fix the name",
            ));
        }
        // A region's controller guards its writer only if its site carries the region's name; a
        // typo would leave the region unguarded without a word.
        for (i, region) in self.regions.iter().enumerate() {
            if !seen.contains(region.name.as_str()) {
                return Err(ConfigError::invalid(
                    "coordination.sites",
                    format!(
                        "region \"{}\" (regions[{i}]) has no site of its name, so nothing would fence its writer when it is cut off",
                        region.name
                    ),
                    "name each region's controller site exactly like the region, plus a witness",
                ));
            }
        }
        if c.sites.len() < 3 {
            return Err(ConfigError::invalid(
                "coordination.sites",
                format!(
                    "{} site(s): a majority of two is both of them",
                    c.sites.len()
                ),
                "run a controller in three failure domains (each region and a witness)",
            ));
        }
        if !(2000..=60_000).contains(&c.lease_ttl_ms) || c.lease_ttl_ms % 1000 != 0 {
            return Err(ConfigError::invalid(
                "coordination.lease_ttl_ms",
                format!(
                    "{} ms is not a whole number of seconds between 2 and 60",
                    c.lease_ttl_ms
                ),
                "use 2000, 3000, … 60000 (etcd leases count whole seconds)",
            ));
        }
        Ok(())
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

    fn validate_controller(&self) -> Result<(), ConfigError> {
        let c = &self.controller;
        for (field, value) in [
            ("controller.reconcile_interval_ms", c.reconcile_interval_ms),
            ("controller.connect_timeout_ms", c.connect_timeout_ms),
            ("controller.command_timeout_ms", c.command_timeout_ms),
            ("controller.catchup_timeout_ms", c.catchup_timeout_ms),
            ("controller.down_after_ms", c.down_after_ms),
            ("controller.probe_interval_ms", c.probe_interval_ms),
        ] {
            if value == 0 || value > 600_000 {
                return Err(ConfigError::invalid(
                    field,
                    format!("{value} ms is out of range"),
                    "use a value between 1 and 600000 milliseconds",
                ));
            }
        }
        if c.writer_quorum_max_lag_s > 60 {
            return Err(ConfigError::invalid(
                "controller.writer_quorum_max_lag_s",
                format!("{} s is more than a minute", c.writer_quorum_max_lag_s),
                "use 1 to 60 seconds (2 is the default; 0 turns the writer's self-fence off)",
            ));
        }
        if c.failover_block_ms > 86_400_000 {
            return Err(ConfigError::invalid(
                "controller.failover_block_ms",
                format!("{} ms is more than a day", c.failover_block_ms),
                "use at most 86400000 (0 disables the block)",
            ));
        }
        Ok(())
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

fn node_endpoint(field: &str, node: &NodeConfig) -> Result<Endpoint, ConfigError> {
    if node.host.is_empty() {
        return Err(ConfigError::invalid(
            format!("{field}.host"),
            "empty host",
            "set host to the node's IP address or DNS name",
        ));
    }
    if node.host.parse::<std::net::IpAddr>().is_err() {
        validate_dns_name(&format!("{field}.host"), &node.host)?;
    }
    if node.port == 0 {
        return Err(ConfigError::invalid(
            format!("{field}.port"),
            "port 0 is not a valid Valkey port",
            "set the port the node listens on (usually 6379)",
        ));
    }
    Ok(Endpoint::new(&node.host, node.port))
}

/// A name given relative to the zone (`demo`) or absolutely (`demo.zone` or `demo.zone.`), fully
/// qualified. Only a whole-label suffix counts as "inside the zone".
pub fn name_in_zone(name: &str, zone: &str) -> String {
    let name = name.to_ascii_lowercase();
    let zone = fqdn(zone);
    let bare_zone = zone.trim_end_matches('.');
    if name.ends_with('.') {
        name
    } else if name == bare_zone || name.ends_with(&format!(".{bare_zone}")) {
        format!("{name}.")
    } else {
        format!("{name}.{zone}")
    }
}

/// Lower-cases a name and adds the trailing dot.
pub fn fqdn(name: &str) -> String {
    let name = name.to_ascii_lowercase();
    if name.ends_with('.') {
        name
    } else {
        format!("{name}.")
    }
}

fn validate_dns_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(ConfigError::invalid(
            field,
            format!("\"{name}\" is not a valid DNS name (empty or longer than 253 characters)"),
            "use dot-separated labels of letters, digits and hyphens, e.g. \"valkey-dr.live\"",
        ));
    }
    for label in trimmed.split('.') {
        validate_label(field, label, true)?;
    }
    Ok(())
}

/// A DNS label: 1–63 letters, digits or hyphens, not starting or ending with a hyphen.
/// Region names and the owner id must be labels too, since they appear in record names and TXT data.
/// A DNS label: 1-63 letters, digits or hyphens (and `_` when allowed), no hyphen at either end.
pub fn is_label(label: &str, allow_underscore: bool) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || (allow_underscore && c == '_');
    !label.is_empty()
        && label.len() <= 63
        && label.chars().all(ok_char)
        && !label.starts_with('-')
        && !label.ends_with('-')
}

fn validate_label(field: &str, label: &str, allow_underscore: bool) -> Result<(), ConfigError> {
    if is_label(label, allow_underscore) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            format!("\"{label}\" is not a valid DNS label"),
            "use 1-63 letters, digits or hyphens, not starting or ending with a hyphen",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
primary_region = "us-east-1"
[[regions]]
name = "us-east-1"
nodes = [{ host = "127.0.1.1" }, { host = "127.0.1.2" }]
[[regions]]
name = "us-east-2"
nodes = [{ host = "127.0.2.1", replication_address = { us-east-1 = "127.0.1.121:6379" } }]
[dns]
zone = "valkey-dr.live"
global_name = "demo"
"#;

    #[test]
    fn the_valid_example_parses_with_defaults() {
        let config = Config::parse(VALID).unwrap();
        assert_eq!(config.dns.ttl, 5);
        assert_eq!(config.controller.reconcile_interval_ms, 1000);
        assert_eq!(config.global_name_fqdn(), "demo.valkey-dr.live.");
        assert_eq!(
            Config::parse(&config.to_toml()).unwrap(),
            config,
            "round-trips"
        );
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../../../valkey-dr.toml");
        Config::parse(text).unwrap();
    }

    #[test]
    fn each_error_names_its_field() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "duplicate region",
                r#"name = "us-east-1""#,
                "regions[1].name",
            ),
            (
                "two nodes on one address",
                r#"host = "127.0.2.1""#,
                "regions[1].nodes[1].host",
            ),
            (
                "unknown primary region",
                r#"primary_region = "eu-west-1""#,
                "primary_region",
            ),
            (
                "empty primary region",
                r#"primary_region = """#,
                "primary_region",
            ),
            ("invalid zone", r#"zone = "bad..zone""#, "dns.zone"),
            (
                "invalid global name",
                r#"global_name = "de mo""#,
                "dns.global_name",
            ),
            (
                "global name outside zone",
                r#"global_name = "demo.example.org.""#,
                "dns.global_name",
            ),
            ("ttl 0", "ttl = 0", "dns.ttl"),
            (
                "invalid region name",
                r#"name = "us_east_2""#,
                "regions[1].name",
            ),
            ("port 0", "port = 0", "regions[1].nodes[0].port"),
            (
                "replication address of an unknown region",
                r#"replication_address = { eu = "127.0.0.1:1" }"#,
                "regions[1].nodes[0].replication_address.eu",
            ),
            (
                "bad listen address",
                r#"listen = "localhost""#,
                "dns.provider.listen",
            ),
            (
                "zero interval",
                "reconcile_interval_ms = 0",
                "controller.reconcile_interval_ms",
            ),
        ];
        for (what, replacement, field) in cases {
            let text = mutate(replacement);
            match Config::parse(&text) {
                Err(e) => {
                    assert_eq!(e.field(), Some(*field), "{what}: {e}");
                    assert!(e.to_string().contains("fix:"), "{what}: {e}");
                }
                Ok(_) => panic!("{what}: accepted\n{text}"),
            }
        }
    }

    #[test]
    fn every_region_needs_a_site_of_its_name() {
        let base = include_str!("../../../valkey-dr.toml");
        let with = |sites: &str| {
            format!(
                "{base}\n[coordination]\netcd = [\"http://127.0.0.1:2379\"]\nsite = \"witness\"\nsites = {sites}\n"
            )
        };
        Config::parse(&with(r#"["us-east-1", "us-east-2", "witness"]"#)).unwrap();
        let error = Config::parse(&with(r#"["use1", "us-east-2", "witness"]"#)).unwrap_err();
        assert_eq!(error.field(), Some("coordination.sites"), "{error}");
        assert!(error.to_string().contains("us-east-1"), "{error}");
    }

    #[test]
    fn rfc2136_settings_are_checked() {
        let base = include_str!("../../../valkey-dr.toml");
        let embedded = "[dns.provider]\nkind = \"embedded\"\nlisten = \"127.0.0.1:5353\"\n";
        assert!(base.contains(embedded));
        let with = |provider: &str| base.replace(embedded, provider);
        let good = "[dns.provider]\nkind = \"rfc2136\"\nservers = [\"192.0.2.53:53\"]\ntsig_key_name = \"valkey-dr\"\ntsig_secret_file = \"/etc/valkey-dr/tsig\"\n";
        let config = Config::parse(&with(good)).unwrap();
        let DnsProviderConfig::Rfc2136(c) = &config.dns.provider else {
            panic!("rfc2136 expected");
        };
        assert_eq!(c.tsig_algorithm, TsigAlgorithm::HmacSha256, "the default");
        let cases = [
            (
                "servers = [\"192.0.2.53:53\"]",
                "servers = []",
                "dns.provider.servers",
            ),
            (
                "servers = [\"192.0.2.53:53\"]",
                "servers = [\"ns1.example.com:53\"]",
                "dns.provider.servers",
            ),
            (
                "tsig_secret_file = \"/etc/valkey-dr/tsig\"",
                "tsig_secret = \"c2VjcmV0\"",
                "dns.provider.tsig_secret",
            ),
            (
                "tsig_secret_file = \"/etc/valkey-dr/tsig\"",
                "tsig_secret_file = \"/etc/valkey-dr/tsig\"\ntsig_secret_env = \"TSIG\"",
                "dns.provider.tsig_secret_file",
            ),
            (
                "tsig_key_name = \"valkey-dr\"",
                "tsig_key_name = \"bad key\"",
                "dns.provider.tsig_key_name",
            ),
        ];
        for (from, to, field) in cases {
            let error = Config::parse(&with(&good.replace(from, to))).unwrap_err();
            assert_eq!(error.field(), Some(field), "{to}: {error}");
            // A literal secret is refused without being repeated.
            assert!(!error.to_string().contains("c2VjcmV0"), "{error}");
        }
        // The documented example section is valid as it stands.
        Config::parse(&with(include_str!("../../../deploy/rfc2136/provider.toml"))).unwrap();
        let unknown_algorithm =
            Config::parse(&with(&format!("{good}tsig_algorithm = \"hmac-md5\"\n")));
        assert!(unknown_algorithm.is_err(), "only hmac-sha256/384/512");
    }

    #[test]
    fn the_http_endpoint_and_webhooks_are_checked() {
        let base = include_str!("../../../valkey-dr.toml");
        let cases = [
            (
                "[http]\nlisten = \"0.0.0.0:9187\"\n",
                "http.listen",
                "without a token and TLS",
            ),
            (
                "[http]\nlisten = \"localhost\"\n",
                "http.listen",
                "is not ip:port",
            ),
            (
                "[http]\ntls_cert_file = \"c.pem\"\n",
                "http.tls_cert_file",
                "without a key",
            ),
            (
                "[[webhooks]]\nurl = \"ftp://x\"\nsecret_file = \"s\"\n",
                "webhooks[0].url",
                "not an http(s) URL",
            ),
        ];
        let without_http = base.replace("[http]\nlisten = \"127.0.0.1:9187\"\n", "");
        assert_ne!(without_http, base);
        for (section, field, problem) in cases {
            let error = Config::parse(&format!("{without_http}\n{section}")).unwrap_err();
            assert_eq!(error.field(), Some(field), "{error}");
            assert!(error.to_string().contains(problem), "{error}");
        }
        // An event no webhook can receive is refused by name, with the ones that exist.
        let unknown = Config::parse(&format!(
            "{without_http}\n[[webhooks]]\nurl = \"https://x\"\nsecret_file = \"s\"\nevents = [\"failover.begun\"]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            unknown.contains("failover.begun") && unknown.contains("switchover.completed"),
            "{unknown}"
        );
        // Anywhere but loopback with a token and TLS is fine.
        let exposed = format!(
            "{without_http}\n[http]\nlisten = \"0.0.0.0:9187\"\ntoken_file = \"t\"\ntls_cert_file = \"c\"\ntls_key_file = \"k\"\n"
        );
        Config::parse(&exposed).unwrap();
    }

    #[test]
    fn too_few_regions_and_unknown_fields_are_rejected() {
        let one_region = r#"
primary_region = "a"
[[regions]]
name = "a"
nodes = [{ host = "127.0.0.1" }]
[dns]
zone = "z.test"
global_name = "demo"
"#;
        assert_eq!(
            Config::parse(one_region).unwrap_err().field(),
            Some("regions")
        );
        let unknown = VALID.replace("global_name = \"demo\"", "global_name = \"demo\"\ntll = 5");
        let error = Config::parse(&unknown).unwrap_err().to_string();
        assert!(error.contains("unknown field `tll`"), "{error}");
        let no_primary = VALID.replace("primary_region = \"us-east-1\"", "");
        let error = Config::parse(&no_primary).unwrap_err().to_string();
        assert!(error.contains("missing field `primary_region`"), "{error}");
    }

    /// Applies one change to the valid config: a replacement line for the field of the same name
    /// (the second region's or its nodes' where the name repeats).
    fn mutate(replacement: &str) -> String {
        let key = replacement.split('=').next().unwrap().trim();
        match key {
            "name" => VALID.replacen("name = \"us-east-2\"", replacement, 1),
            "host" => VALID.replace(
                r#"nodes = [{ host = "127.0.2.1", replication_address = { us-east-1 = "127.0.1.121:6379" } }]"#,
                &format!(r#"nodes = [{{ host = "127.0.2.1" }}, {{ {replacement} }}]"#),
            ),
            "port" | "replication_address" => VALID.replace(
                r#"nodes = [{ host = "127.0.2.1", replication_address = { us-east-1 = "127.0.1.121:6379" } }]"#,
                &format!(r#"nodes = [{{ host = "127.0.2.1", {replacement} }}]"#),
            ),
            "primary_region" => VALID.replace("primary_region = \"us-east-1\"", replacement),
            "zone" | "global_name" => {
                let line = VALID.lines().find(|l| l.starts_with(key)).unwrap();
                VALID.replace(line, replacement)
            }
            "ttl" => format!("{VALID}{replacement}\n"),
            "listen" => format!("{VALID}[dns.provider]\nkind = \"embedded\"\n{replacement}\n"),
            "reconcile_interval_ms" => format!("{VALID}[controller]\n{replacement}\n"),
            other => panic!("no mutation for {other}"),
        }
    }
}
