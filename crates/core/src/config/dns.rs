//! The managed names and where the records live.

use super::*;

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
