//! The highly available shape's etcd settings.

use super::*;

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
