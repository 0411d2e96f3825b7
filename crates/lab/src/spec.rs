//! The lab's shape and addresses, and the files it writes: valkey configs and the controller config.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use valkey_dr_core::self_fence::WriteQuorum;

use serde::{Deserialize, Serialize};
use valkey_dr_core::Config;
use valkey_dr_core::config::{AuthConfig, TlsConfig};
use valkey_dr_core::config::{
    ControllerConfig, CoordinationConfig, DnsConfig, DnsProviderConfig, FailoverPolicy, HttpConfig,
    NodeConfig, RegionConfig,
};

/// The user the lab's applications (its writers) connect as.
pub const APP_USER: &str = "app";

/// Everything that defines one lab. Stored as `lab.json` in the lab directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSpec {
    pub dir: PathBuf,
    pub regions: Vec<String>,
    pub nodes_per_region: u8,
    /// Second octet of every lab address: node `i` of region `r` is `127.<block>.<r>.<i>`
    /// (both from 1). The default 0 gives the reference addresses 127.0.1.1 … 127.0.2.2.
    pub block: u8,
    /// The port of every node (DNS answers carry addresses, so all nodes share one port).
    pub port: u16,
    pub dns: SocketAddr,
    /// One-way delay of the region link.
    pub link_delay_ms: u64,
    pub ttl: u32,
    pub zone: String,
    pub global_name: String,
    /// The controller's policy when the writer's whole region is down.
    #[serde(default)]
    pub failover: FailoverPolicy,
    /// TLS on every node (plain port 0) with the lab's own CA; AUTH is always on.
    #[serde(default)]
    pub tls: bool,
    /// The highly available shape: one controller and one etcd member per site (each region,
    /// and [`WITNESS`] unless there are three regions). Empty: one controller, no etcd.
    #[serde(default)]
    pub sites: Vec<String>,
    /// The controllers' catch-up limit for switchovers (default: the controller's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catchup_timeout_ms: Option<u64>,
    /// Webhooks every controller of the lab sends to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<valkey_dr_core::config::WebhookConfig>,
    /// Each place of the lab (a region, the controller's place) in a network namespace of its
    /// own, so that partitions drop real packets ([`crate::netns`]). Addresses are then
    /// `198.18.0.0/15` ones (a range reserved for test networks) instead of loopback ones.
    #[serde(default)]
    pub netns: bool,
}

/// The site that holds no data, only a controller and an etcd member (the third failure domain).
pub const WITNESS: &str = "witness";

/// The name under which the controller's links appear in partitions: the controller watches the
/// regions from outside, so isolating a region also hides it from the controller.
pub const CONTROLLER_VANTAGE: &str = "controller";

mod etcd;
mod secrets;

use etcd::ETCD_CLIENT_PORT;

impl LabSpec {
    pub fn reference(dir: PathBuf) -> LabSpec {
        LabSpec {
            dir,
            regions: vec!["us-east-1".into(), "us-east-2".into()],
            nodes_per_region: 2,
            block: 0,
            port: 6379,
            dns: "127.0.0.1:5353".parse().expect("static address"),
            link_delay_ms: 7,
            ttl: 1,
            zone: "valkey-dr.live".into(),
            global_name: "demo".into(),
            failover: FailoverPolicy::Auto,
            tls: true,
            sites: vec!["us-east-1".into(), "us-east-2".into(), WITNESS.into()],
            catchup_timeout_ms: None,
            webhooks: Vec::new(),
            netns: false,
        }
    }

    /// The lab address `host` of the place with third octet `place` (0: the controller's place
    /// or the witness, 1…: the regions): `127.<block>.<place>.<host>` on loopback; in network
    /// namespaces, in the lab's /21 of `198.18.0.0/15` ([`LabSpec::netns_subnet`]).
    pub fn ip(&self, place: u8, host: u8) -> Ipv4Addr {
        if self.netns {
            let n = self.netns_base() + u16::from(place);
            Ipv4Addr::new(198, 18 + (n / 256) as u8, (n % 256) as u8, host)
        } else {
            Ipv4Addr::new(127, self.block, place, host)
        }
    }

    /// The first /24 of the lab's /21 in `198.18.0.0/15`: 64 labs side by side, eight /24s each
    /// (one per place, and the last for the machine's own end of the lab network).
    fn netns_base(&self) -> u16 {
        u16::from(self.block % 64) * 8
    }

    /// The place (third-octet index, as in [`LabSpec::ip`]) an address of this lab belongs to.
    pub fn place_of(&self, ip: Ipv4Addr) -> u8 {
        let [_, second, third, _] = ip.octets();
        if self.netns {
            let n = u16::from(second.saturating_sub(18)) * 256 + u16::from(third);
            n.saturating_sub(self.netns_base()) as u8
        } else {
            third
        }
    }

    /// The place of a vantage: the controller's place is 0, region `r` is `r + 1`.
    pub fn place(&self, vantage: &str) -> u8 {
        self.site_octet(vantage)
    }

    /// The sites of the highly available shape for these regions: each region, plus a witness
    /// when there are only two (three regions are three failure domains already).
    pub fn default_sites(regions: &[String]) -> Vec<String> {
        let mut sites = regions.to_vec();
        if sites.len() < 3 {
            sites.push(WITNESS.into());
        }
        sites
    }

    pub fn is_ha(&self) -> bool {
        !self.sites.is_empty()
    }

    /// The third octet of a site's addresses: its region's, or 0 for the witness.
    fn site_octet(&self, site: &str) -> u8 {
        self.regions
            .iter()
            .position(|r| r == site)
            .map_or(0, |r| r as u8 + 1)
    }

    /// Where a site's controller stands in the region link: its region, or the witness's place
    /// (the single controller's vantage).
    pub fn vantage(&self, site: &str) -> String {
        if self.regions.iter().any(|r| r == site) {
            site.to_string()
        } else {
            CONTROLLER_VANTAGE.into()
        }
    }

    /// The config the lab's commands use: the last site's controller (or the single one).
    pub fn main_config(&self) -> Config {
        match self.sites.last() {
            Some(site) => self.site_config(site),
            None => self.controller_config(),
        }
    }

    /// The DNS server of a site's controller: the last site serves on `dns` (the address people
    /// dig), the others on `127.<block>.<site>.53` with the same port.
    /// A controller's HTTP endpoint: its DNS server's address, the next port (the one before
    /// when the DNS port is the last).
    fn http_beside(dns: SocketAddr) -> SocketAddr {
        let port = dns.port().checked_add(1).unwrap_or(dns.port() - 1);
        SocketAddr::new(dns.ip(), port)
    }

    /// Where the controller of `site` serves metrics, status and events.
    pub fn site_http(&self, site: &str) -> SocketAddr {
        self.http_for(self.site_dns(site))
    }

    /// Where the lab's main controller serves metrics, status and events.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_for(self.dns)
    }

    /// The HTTP endpoint of the controller whose DNS server is `dns`. In network namespaces it
    /// listens on its namespace's own loopback: an address other hosts reach needs a token and
    /// TLS (the controller refuses it otherwise), and nothing outside the place needs it.
    fn http_for(&self, dns: SocketAddr) -> SocketAddr {
        let beside = Self::http_beside(dns);
        if self.netns {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), beside.port())
        } else {
            beside
        }
    }

    pub fn site_dns(&self, site: &str) -> SocketAddr {
        if self.sites.last().is_some_and(|s| s == site) {
            self.dns
        } else {
            SocketAddr::new(self.ip(self.site_octet(site), 53).into(), self.dns.port())
        }
    }

    /// Every DNS server of the lab.
    pub fn dns_servers(&self) -> Vec<SocketAddr> {
        if self.is_ha() {
            self.sites.iter().map(|s| self.site_dns(s)).collect()
        } else {
            vec![self.dns]
        }
    }

    pub fn site_dir(&self, site: &str) -> PathBuf {
        self.dir.join(format!("controller-{site}"))
    }

    /// The state directory of every controller of the lab.
    pub fn controller_dirs(&self) -> Vec<PathBuf> {
        if self.is_ha() {
            self.sites.iter().map(|s| self.site_dir(s)).collect()
        } else {
            vec![self.controller_dir()]
        }
    }

    pub fn site_config_path(&self, site: &str) -> PathBuf {
        self.dir.join(format!("valkey-dr-{site}.toml"))
    }

    /// The pid file of a site's controller (`controller` for the single controller).
    pub fn controller_pidfile(&self, site: Option<&str>) -> PathBuf {
        match site {
            Some(site) => self.dir.join(format!("controller-{site}.pid")),
            None => self.dir.join("controller.pid"),
        }
    }

    /// The controller config of one site of the highly available shape: it reaches its own
    /// region's nodes directly, the others through the region link from where it stands.
    pub fn site_config(&self, site: &str) -> Config {
        let mut config = self.controller_config();
        config.state_dir = self.site_dir(site);
        config.dns.provider = DnsProviderConfig::Embedded {
            listen: self.site_dns(site).to_string(),
        };
        config.http = Some(HttpConfig {
            listen: self.site_http(site).to_string(),
            token_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        });
        let own = self.regions.iter().position(|r| r == site);
        for (r, region) in config.regions.iter_mut().enumerate() {
            for (i, node) in region.nodes.iter_mut().enumerate() {
                node.controller_address = Some(match own {
                    Some(own) if own == r => self.node_addr(r, i).to_string(),
                    Some(own) => self.link_addr(own, r, i).to_string(),
                    None => self.controller_link_addr(r, i).to_string(),
                });
            }
        }
        config.coordination = Some(CoordinationConfig {
            etcd: self.etcd_endpoints(site),
            site: site.to_string(),
            sites: self.sites.clone(),
            lease_ttl_ms: 3000,
            fence_after_ms: None,
            etcd_quota_bytes: None,
            tls: self.etcd_client_tls(),
            prefix: None,
            name_servers: self
                .sites
                .iter()
                .map(|s| (s.clone(), self.site_dns(s).ip()))
                .collect(),
        });
        config
    }

    /// The reference lab in network namespaces, in `slot` (below 64; [`crate::netns::claim_slot`]).
    /// Every place has its own ports, so the reference ones serve.
    pub fn in_netns(dir: PathBuf, slot: u8) -> LabSpec {
        let mut spec = LabSpec {
            block: slot,
            netns: true,
            ..LabSpec::reference(dir)
        };
        spec.dns = SocketAddr::new(spec.ip(0, 53).into(), spec.dns.port());
        spec
    }

    /// The reference lab on a loopback block and port that are free on every address it uses,
    /// so that several labs (tests, chaos runs) run side by side and beside the reference lab.
    /// When none is found, says which address refused last and why.
    pub fn on_free_block(dir: PathBuf, seed: u32) -> Result<LabSpec, String> {
        const TRIES: u32 = 200;
        let mut last_refusal = String::new();
        for attempt in 0..TRIES {
            let mixed = seed.wrapping_add(attempt.wrapping_mul(7919));
            let block = 10 + (mixed % 240) as u8;
            // Below the kernel's ephemeral range (32768–60999 by default): a port the kernel
            // hands to some client socket on 0.0.0.0 would block the lab's own bind again after a
            // restart (a controller restarted in a test found its DNS port taken that way).
            let port = 10_000 + (mixed.wrapping_mul(2_654_435_761) >> 8) as u16 % 22_000;
            let spec = LabSpec {
                block,
                port,
                dns: SocketAddr::new(Ipv4Addr::new(127, block, 0, 53).into(), port),
                ..LabSpec::reference(dir.clone())
            };
            let mut addrs: Vec<SocketAddr> =
                spec.nodes().map(|(r, i)| spec.node_addr(r, i)).collect();
            addrs.extend(spec.links().iter().map(|l| l.listen));
            addrs.extend(spec.dns_servers());
            addrs.extend(spec.etcd_members().iter().flat_map(|m| [m.client, m.peer]));
            let refusal = addrs.iter().find_map(|a| {
                let bound = std::net::TcpListener::bind(a)
                    .map(drop)
                    .and_then(|()| std::net::UdpSocket::bind(a).map(drop));
                bound.err().map(|e| format!("{a}: {e}"))
            });
            match refusal {
                None => return Ok(spec),
                Some(refusal) => last_refusal = refusal,
            }
        }
        Err(format!(
            "no loopback block free on every address after {TRIES} tries; the last refused {last_refusal}"
        ))
    }

    /// The address of node `index` (0-based) of region `region` (0-based).
    pub fn node_ip(&self, region: usize, index: usize) -> Ipv4Addr {
        self.ip(region as u8 + 1, index as u8 + 1)
    }

    pub fn node_addr(&self, region: usize, index: usize) -> SocketAddr {
        SocketAddr::new(self.node_ip(region, index).into(), self.port)
    }

    /// Where nodes of region `from` reach node `index` of region `region`: their end of the region
    /// link, `127.<block>.<from>.<100 + 10·region + index>`.
    pub fn link_addr(&self, from: usize, region: usize, index: usize) -> SocketAddr {
        let host = 100 + 10 * (region as u8 + 1) + index as u8 + 1;
        SocketAddr::new(self.ip(from as u8 + 1, host).into(), self.port)
    }

    /// Where the controller reaches node `index` of `region`: `127.<block>.0.<100 + 10·region + index>`.
    pub fn controller_link_addr(&self, region: usize, index: usize) -> SocketAddr {
        let host = 100 + 10 * (region as u8 + 1) + index as u8 + 1;
        SocketAddr::new(self.ip(0, host).into(), self.port)
    }

    /// Every link endpoint: the region link between regions (delayed), and the controller's
    /// links to every node (not delayed, but cut when the node's region is isolated).
    pub fn links(&self) -> Vec<LinkSpec> {
        let mut links = Vec::new();
        for region in 0..self.regions.len() {
            for index in 0..self.nodes_per_region as usize {
                for from in (0..self.regions.len()).filter(|f| *f != region) {
                    links.push(LinkSpec {
                        listen: self.link_addr(from, region, index),
                        target: self.node_addr(region, index),
                        from_region: self.regions[from].clone(),
                        to_region: self.regions[region].clone(),
                        delay_ms: self.link_delay_ms,
                    });
                }
                links.push(LinkSpec {
                    listen: self.controller_link_addr(region, index),
                    target: self.node_addr(region, index),
                    from_region: CONTROLLER_VANTAGE.into(),
                    to_region: self.regions[region].clone(),
                    delay_ms: 0,
                });
            }
        }
        // Raft's messages to a member cross the link too (one link end per member, whoever
        // sends: etcd advertises one peer address). Not cut by a partition: on loopback an
        // isolated site's member is stopped instead.
        for site in &self.sites {
            if let Some(listen) = self.etcd_peer_link(site) {
                links.push(LinkSpec {
                    listen,
                    target: self.etcd_peer(site),
                    from_region: self.vantage(site),
                    to_region: self.vantage(site),
                    delay_ms: self.link_delay_ms,
                });
            }
        }
        // Each site reaches the other sites' etcd members through the link too, so that
        // isolating a site cuts its controller off from the others' members.
        for from in &self.sites {
            for to in self.sites.iter().filter(|t| *t != from) {
                links.push(LinkSpec {
                    listen: self.etcd_link_addr(from, to),
                    target: SocketAddr::new(self.etcd_ip(to).into(), ETCD_CLIENT_PORT),
                    from_region: self.vantage(from),
                    to_region: self.vantage(to),
                    delay_ms: self.link_delay_ms,
                });
            }
        }
        links
    }

    pub fn controller_dir(&self) -> PathBuf {
        self.dir.join("controller")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("valkey-dr.toml")
    }

    /// The controller config for this lab.
    pub fn controller_config(&self) -> Config {
        let regions = self
            .regions
            .iter()
            .enumerate()
            .map(|(r, name)| RegionConfig {
                name: name.clone(),
                nodes: (0..self.nodes_per_region as usize)
                    .map(|i| NodeConfig {
                        host: self.node_ip(r, i).to_string(),
                        port: self.port,
                        replication_address: (0..self.regions.len())
                            .filter(|from| *from != r)
                            .map(|from| {
                                (
                                    self.regions[from].clone(),
                                    self.link_addr(from, r, i).to_string(),
                                )
                            })
                            .collect::<BTreeMap<_, _>>(),
                        controller_address: Some(self.controller_link_addr(r, i).to_string()),
                    })
                    .collect(),
            })
            .collect();
        Config {
            owner: "valkey-dr-lab".into(),
            state_dir: self.controller_dir(),
            primary_region: self.regions[0].clone(),
            mode: Default::default(),
            regions,
            dns: DnsConfig {
                zone: self.zone.clone(),
                global_name: self.global_name.clone(),
                ttl: self.ttl,
                provider: DnsProviderConfig::Embedded {
                    listen: self.dns.to_string(),
                },
            },
            controller: ControllerConfig {
                cross_region_failover: self.failover,
                catchup_timeout_ms: self
                    .catchup_timeout_ms
                    .unwrap_or(ControllerConfig::default().catchup_timeout_ms),
                ..ControllerConfig::default()
            },
            tls: self.tls.then(|| TlsConfig {
                ca_file: self.ca_file(),
                client_cert_file: None,
                client_key_file: None,
            }),
            auth: Some(AuthConfig {
                username: None,
                password_file: Some(self.password_file()),
                password_env: None,
                password: None,
            }),
            coordination: None,
            http: Some(HttpConfig {
                listen: self.http_addr().to_string(),
                token_file: None,
                tls_cert_file: None,
                tls_key_file: None,
            }),
            webhooks: self.webhooks.clone(),
        }
    }

    /// The valkey.conf of one node: the primary region's first node is the writer, its region
    /// peers follow it, other regions' first nodes follow it across the link, their peers follow them.
    ///
    /// No node's file makes it a master, not even the writer's (it names its region peer; `up`
    /// promotes it once running): a node restarted without its data must come back as a replica,
    /// which neither takes writes nor serves a sync (`-NOMASTERLINK`) until the controller decides.
    /// The controller keeps it that way: it rewrites a node's file when it becomes a replica and
    /// never when it becomes the writer.
    pub fn valkey_conf(
        &self,
        region: usize,
        index: usize,
        password: &str,
        app_password: &str,
    ) -> String {
        let ip = self.node_ip(region, index);
        let dir = self.node_dir(region, index);
        let listen = if self.tls {
            format!(
                "port 0\ntls-port {port}\ntls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {ca}\n\
                 tls-replication yes\ntls-auth-clients no\n",
                port = self.port,
                cert = self.node_cert(region, index).display(),
                key = self.node_key(region, index).display(),
                ca = self.ca_file().display(),
            )
        } else {
            format!("port {}\n", self.port)
        };
        let mut conf = format!(
            "bind {ip}\n{listen}requirepass {password}\nmasterauth {password}\nreplica-announce-ip {ip}\ndaemonize yes\npidfile {pid}\nlogfile {log}\ndir {dir}\n\
             save \"\"\nappendonly no\nprotected-mode no\n\
             repl-diskless-sync yes\n\
             repl-timeout 5\nrepl-ping-replica-period 1\n\
             min-replicas-to-write {at_rest_replicas}\nmin-replicas-max-lag {at_rest_lag}\n",
            at_rest_replicas = WriteQuorum::AT_REST.replicas,
            at_rest_lag = WriteQuorum::AT_REST.max_lag_s,
            pid = self.node_pidfile(region, index).display(),
            log = self.dir.join(format!("valkey-{ip}.log")).display(),
            dir = dir.display(),
        );
        let source = match (region, index) {
            (0, 0) => self.node_addr(0, 1),
            (_, 0) => self.link_addr(region, 0, 0),
            (_, _) => self.node_addr(region, 0),
        };
        conf.push_str(&format!("replicaof {} {}\n", source.ip(), source.port()));
        // The applications' own user: everything but the control keys and the node's steering.
        conf.push_str(&valkey_dr_valkey::acl::application_user_line(
            APP_USER,
            app_password,
        ));
        conf.push('\n');
        conf
    }

    pub fn node_dir(&self, region: usize, index: usize) -> PathBuf {
        self.dir
            .join(format!("data-{}", self.node_ip(region, index)))
    }

    pub fn node_pidfile(&self, region: usize, index: usize) -> PathBuf {
        self.dir
            .join(format!("valkey-{}.pid", self.node_ip(region, index)))
    }

    pub fn nodes(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.regions.len())
            .flat_map(move |r| (0..self.nodes_per_region as usize).map(move |i| (r, i)))
    }

    pub fn save(&self) -> std::io::Result<()> {
        std::fs::write(
            self.dir.join("lab.json"),
            serde_json::to_vec_pretty(self).expect("serializes"),
        )
    }

    pub fn load(dir: &Path) -> std::io::Result<LabSpec> {
        let text = std::fs::read(dir.join("lab.json"))?;
        serde_json::from_slice(&text)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

/// One end of the region link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSpec {
    pub listen: SocketAddr,
    pub target: SocketAddr,
    pub from_region: String,
    pub to_region: String,
    /// One-way delay.
    pub delay_ms: u64,
}

#[cfg(test)]
mod tests;
