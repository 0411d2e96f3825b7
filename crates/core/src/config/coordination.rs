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
    /// A data region's controller pauses its region's writer once etcd has not answered it for
    /// this long (and lifts the pause when it answers again, if its lease never lapsed): the
    /// sooner an isolated region stops taking writes, the fewer are lost when it heals. At least
    /// two renewals (`lease_ttl_ms / 6`), at most `lease_ttl_ms * 2 / 3`, when the pause becomes
    /// mandatory anyway. [default: `lease_ttl_ms / 5`, 600 ms with the default lease]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_after_ms: Option<u64>,
    /// Key prefix in etcd [default: /valkey-dr/<owner>].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The address of each site's DNS server: the zone's NS set names them all
    /// (`ns-<site>.<zone>`), so resolvers find the name through any surviving site.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub name_servers: BTreeMap<String, std::net::IpAddr>,
    /// The storage quota of your etcd members (their `--quota-backend-bytes`): `status` warns
    /// when the database nears it, since past it etcd refuses every write and the writer's
    /// region fences itself. etcd 3.6 reports its quota itself. [default: 2 GiB, etcd's]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_quota_bytes: Option<u64>,
    /// TLS to etcd (`https://` URLs): the CA that signed the members' certificates, and this
    /// controller's client certificate and key when the members require one
    /// (`--client-cert-auth`, recommended: anyone who can write etcd can move the writer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<super::TlsConfig>,
}

impl CoordinationConfig {
    /// How many sites must agree (a strict majority).
    pub fn quorum(&self) -> usize {
        self.sites.len() / 2 + 1
    }

    /// [`CoordinationConfig::etcd_quota_bytes`], or etcd's default.
    pub fn etcd_quota_bytes(&self) -> u64 {
        self.etcd_quota_bytes.unwrap_or(2 << 30)
    }

    /// [`CoordinationConfig::fence_after_ms`], or its default.
    pub fn fence_after_ms(&self) -> u64 {
        self.fence_after_ms.unwrap_or(self.lease_ttl_ms / 5)
    }
}
