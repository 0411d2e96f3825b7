//! A run's controllers — one, or one per site on a three-member etcd — and their configs.

use super::*;

/// The controller process of a run.
pub(super) struct Controller(Child);

impl Controller {
    /// The one controller of a run, inside network namespace `netns` when one is given.
    pub(super) fn start(
        valkey_dr: &Path,
        config: &Path,
        dir: &Path,
        fault: Option<&str>,
        netns: Option<&str>,
    ) -> Controller {
        Controller::spawn(valkey_dr, config, &dir.join("controller.log"), fault, netns)
    }

    /// A site's controller of the highly available shape, its log `controller-<site>.log`; in
    /// its site's place when the run has places.
    pub(super) fn start_site(
        valkey_dr: &Path,
        site: &cluster::LabSite,
        dir: &Path,
        fault: Option<&str>,
        places: Option<&Places>,
    ) -> Controller {
        let log = dir.join(format!("controller-{}.log", site.name));
        let netns = places.map(|p| p.site_ns(&site.name));
        Controller::spawn(valkey_dr, &site.config, &log, fault, netns.as_deref())
    }

    pub(super) fn spawn(
        valkey_dr: &Path,
        config: &Path,
        log: &Path,
        fault: Option<&str>,
        netns: Option<&str>,
    ) -> Controller {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .ok();
        let mut command = Command::new(valkey_dr);
        command
            .args(["run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.map_or_else(Stdio::null, Stdio::from));
        if let Some(fault) = fault {
            command.env("VALKEY_DR_FAULT", fault);
        }
        if let Some(ns) = netns {
            crate::netns::enter(&mut command, ns).expect("the run's namespace exists");
        }
        Controller(command.spawn().expect("valkey-dr runs"))
    }

    pub(super) fn stopped(&self) -> bool {
        crate::process::is_stopped(self.0.id() as i32)
    }

    pub(super) fn signal(&self, signal: i32) {
        crate::process::signal(self.0.id() as i32, signal);
    }

    pub(super) fn ended(&mut self) -> bool {
        self.0.try_wait().ok().flatten().is_some()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A three-member etcd for a run in `dir`, and each site's controller config: us-east-1,
/// us-east-2 and the witness, each with its DNS server on a port of its own at `dns_ip` — or,
/// with `places`, each member and DNS server in its site's place.
pub(super) async fn on_etcd(
    dir: &Path,
    addrs: &[SocketAddr],
    dns_ip: Ipv4Addr,
    places: Option<&Places>,
) -> Result<(valkey_dr_coord::cluster::EtcdCluster, Vec<cluster::LabSite>), String> {
    const SITES: [&str; 3] = ["us-east-1", "us-east-2", "witness"];
    let etcd = match places {
        Some(places) => places.etcd(&dir.join("etcd")).await?,
        None => {
            valkey_dr_coord::cluster::EtcdCluster::start(&dir.join("etcd"), Ipv4Addr::LOCALHOST, 3)
                .await
                .map_err(|e| e.to_string())?
        }
    };
    let ports: Vec<SocketAddr> = SITES
        .iter()
        .map(|site| match places {
            Some(places) => Ok(places.site_dns(site)),
            None => std::net::UdpSocket::bind((dns_ip, 0))
                .and_then(|s| s.local_addr())
                .map_err(|e| e.to_string()),
        })
        .collect::<Result<_, _>>()?;
    let sites = cluster::write_site_configs(
        dir,
        &[("us-east-1", &addrs[..6]), ("us-east-2", &addrs[6..9])],
        &SITES.map(String::from),
        &etcd.endpoints(),
        |i| ports[i],
        CONTROLLER_SETTINGS,
    )
    .map_err(|e| e.to_string())?;
    Ok((etcd, sites))
}

pub(super) fn control_socket(config: &Path) -> Result<PathBuf, String> {
    valkey_dr_core::Config::load(config)
        .map(|c| c.control_socket())
        .map_err(|e| e.to_string())
}

/// The run's config: the cluster's controller with automatic region failover, its DNS on
/// `dns`; survivors take writes alone (us-east-2 keeps no replica once it leads).
pub(super) fn write_config(
    dir: &Path,
    addrs: &[SocketAddr],
    dns: SocketAddr,
) -> std::io::Result<PathBuf> {
    let path = cluster::write_regions_config(
        dir,
        &[("us-east-1", &addrs[..6]), ("us-east-2", &addrs[6..9])],
        Some(dns),
    )?;
    let written = std::fs::read_to_string(&path)?;
    std::fs::write(&path, format!("{written}{CONTROLLER_SETTINGS}"))?;
    Ok(path)
}

/// Every run's controller settings.
pub(super) const CONTROLLER_SETTINGS: &str =
    "[controller]\ncross_region_failover = \"auto\"\nwrites_need_a_replica = false\n";
