//! The lab's etcd: one member per site, its addresses, its certificates, and how each site
//! reaches the members.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use valkey_dr_core::config::TlsConfig;

use super::LabSpec;

/// etcd's ports on every site address.
pub(super) const ETCD_CLIENT_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;

impl LabSpec {
    /// The etcd member of a site: `127.<block>.<site>.50`.
    pub fn etcd_ip(&self, site: &str) -> Ipv4Addr {
        self.ip(self.site_octet(site), 50)
    }

    pub fn etcd_members(&self) -> Vec<valkey_dr_coord::cluster::MemberAddress> {
        self.sites
            .iter()
            .map(|site| valkey_dr_coord::cluster::MemberAddress {
                name: site.clone(),
                client: SocketAddr::new(self.etcd_ip(site).into(), ETCD_CLIENT_PORT),
                peer: self.etcd_peer(site),
                reached_at: self.etcd_peer_link(site).unwrap_or(self.etcd_peer(site)),
            })
            .collect()
    }

    pub(super) fn etcd_peer(&self, site: &str) -> SocketAddr {
        SocketAddr::new(self.etcd_ip(site).into(), ETCD_PEER_PORT)
    }

    /// Where the other members reach the raft port of `site`'s member on loopback: a link end
    /// `127.<block>.<site>.70` that delays every byte like the region link, so that a quorum
    /// commit costs what it costs between sites. (In namespaces the members reach each other
    /// straight across the bridge, where the packet cuts act: `None`.)
    pub(super) fn etcd_peer_link(&self, site: &str) -> Option<SocketAddr> {
        (!self.netns)
            .then(|| SocketAddr::new(self.ip(self.site_octet(site), 70).into(), ETCD_PEER_PORT))
    }

    /// Where site `from` reaches the etcd member of site `to` through the region link:
    /// `127.<block>.<from>.<60 + to>`.
    pub(super) fn etcd_link_addr(&self, from: &str, to: &str) -> SocketAddr {
        SocketAddr::new(
            self.ip(self.site_octet(from), 60 + self.site_octet(to))
                .into(),
            ETCD_CLIENT_PORT,
        )
    }

    /// etcd's URL scheme: with the lab's TLS, clients and peers speak TLS with certificates.
    fn etcd_scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// Every member's client URL, reached directly (the lab's own commands and checks).
    pub fn etcd_member_endpoints(&self) -> Vec<String> {
        self.etcd_members()
            .iter()
            .map(|m| format!("{}://{}", self.etcd_scheme(), m.client))
            .collect()
    }

    /// The CA and the controllers' client certificate for etcd (None without the lab's TLS).
    pub fn etcd_client_tls(&self) -> Option<TlsConfig> {
        self.tls.then(|| TlsConfig {
            ca_file: self.ca_file(),
            client_cert_file: Some(self.dir.join("tls").join("etcd-client.pem")),
            client_key_file: Some(self.dir.join("tls").join("etcd-client.key")),
        })
    }

    /// [`LabSpec::etcd_client_tls`], loaded.
    pub fn etcd_tls(&self) -> Result<Option<valkey_dr_coord::EtcdTls>, String> {
        self.etcd_client_tls()
            .map(|tls| {
                let cert = tls.client_cert_file.expect("set above");
                let key = tls.client_key_file.expect("set above");
                valkey_dr_coord::EtcdTls::load(&tls.ca_file, Some((&cert, &key)))
                    .map_err(|e| e.to_string())
            })
            .transpose()
    }

    /// The certificate and key of a site's etcd member (valid for its own address and every
    /// link end it is reached at), with the lab's CA.
    pub fn etcd_member_tls(&self, site: &str) -> Option<valkey_dr_coord::cluster::MemberTls> {
        self.tls.then(|| valkey_dr_coord::cluster::MemberTls {
            ca_file: self.ca_file(),
            cert_file: self.dir.join("tls").join(format!("etcd-{site}.pem")),
            key_file: self.dir.join("tls").join(format!("etcd-{site}.key")),
        })
    }

    /// Every address the etcd member of `site` is reached at (its own, and its link ends) or
    /// reaches its peers from (etcd checks a peer's certificate against the address it comes
    /// from: on loopback the kernel picks 127.0.0.1, in a namespace the place's own `.254`).
    pub fn etcd_member_ips(&self, site: &str) -> Vec<Ipv4Addr> {
        let source = if self.netns {
            self.ip(self.site_octet(site), 254)
        } else {
            Ipv4Addr::LOCALHOST
        };
        let mut ips = vec![self.etcd_ip(site), source];
        ips.extend(self.etcd_peer_link(site).and_then(|link| match link.ip() {
            std::net::IpAddr::V4(ip) => Some(ip),
            std::net::IpAddr::V6(_) => None,
        }));
        ips.extend(self.sites.iter().filter(|f| *f != site).filter_map(|from| {
            match self.etcd_link_addr(from, site).ip() {
                std::net::IpAddr::V4(ip) => Some(ip),
                std::net::IpAddr::V6(_) => None,
            }
        }));
        ips
    }

    /// The etcd client URLs of site `from`: its own member first and directly (a controller
    /// asks the member beside it; the others cost a trip across the link), the others through
    /// the link.
    pub fn etcd_endpoints(&self, from: &str) -> Vec<String> {
        let own = self.sites.iter().filter(|s| *s == from);
        own.chain(self.sites.iter().filter(|s| *s != from))
            .map(|to| {
                let addr = if to == from {
                    SocketAddr::new(self.etcd_ip(to).into(), ETCD_CLIENT_PORT)
                } else {
                    self.etcd_link_addr(from, to)
                };
                format!("{}://{addr}", self.etcd_scheme())
            })
            .collect()
    }

    /// The pid file of a site's etcd member.
    pub fn etcd_pidfile(&self, site: &str) -> PathBuf {
        self.dir.join(format!("etcd-{site}.pid"))
    }
}
