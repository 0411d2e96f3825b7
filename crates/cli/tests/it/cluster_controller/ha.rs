//! The highly available shape for a cluster: one controller per site (us-east-1, us-east-2 and
//! a witness) on a three-member etcd. The leader moves the primaries and writes the epoch and
//! the records to etcd under its fence; every site's DNS server serves the name from etcd, and
//! a leader's death costs a new election, not the name.

use super::*;
use valkey_dr_coord::cluster::EtcdCluster;

const SITES: [&str; 3] = ["us-east-1", "us-east-2", "witness"];

/// One site's controller: its config (its own state directory, DNS server and site name) and
/// its DNS server's address.
struct Site {
    name: &'static str,
    config: PathBuf,
    dns: SocketAddr,
    controller: Option<Controller>,
}

impl Site {
    /// The addresses the name leads to, as this site's DNS server answers.
    fn name(&self) -> Vec<String> {
        let mut ips: Vec<String> = dig(self.dns, &["demo.valkey-dr.live", "A", "+short"])
            .lines()
            .map(str::to_string)
            .collect();
        ips.sort();
        ips
    }

    fn ownership(&self) -> Option<(u64, String)> {
        let txt = dig(
            self.dns,
            &["_valkey-dr.demo.valkey-dr.live", "TXT", "+short"],
        );
        let owner = valkey_dr_core::Ownership::parse(txt.trim())?;
        Some((owner.epoch, owner.primary_region))
    }

    fn cluster(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("cluster")
            .args(args)
            .args(["--output", "json", "--config"])
            .arg(&self.config)
            .output()
            .unwrap()
    }
}

/// Writes each site's config from the one-controller config of `setup`, pointing at `etcd`.
fn sites(setup: &Setup, etcd: &EtcdCluster) -> Vec<Site> {
    let base = std::fs::read_to_string(&setup.config).unwrap();
    let endpoints: Vec<String> = etcd
        .endpoints()
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect();
    let sites: Vec<String> = SITES.iter().map(|s| format!("\"{s}\"")).collect();
    SITES
        .iter()
        .map(|name| {
            let ip = match setup.dns.ip() {
                IpAddr::V4(ip) => ip,
                IpAddr::V6(_) => unreachable!("the tests listen on IPv4 loopback"),
            };
            let dns = SocketAddr::new(IpAddr::V4(ip), free_dns_port(ip));
            let text = base
                .replace(
                    &format!("{}\"", setup.dir.join("state").display()),
                    &format!("{}\"", setup.dir.join(format!("state-{name}")).display()),
                )
                .replace(&setup.dns.to_string(), &dns.to_string());
            let text = format!(
                "{text}[coordination]\netcd = [{}]\nsite = \"{name}\"\nsites = [{}]\n",
                endpoints.join(", "),
                sites.join(", ")
            );
            let config = setup.dir.join(format!("valkey-dr-{name}.toml"));
            std::fs::write(&config, text).unwrap();
            Site {
                name,
                config,
                dns,
                controller: None,
            }
        })
        .collect()
}

/// Runs a switchover to `region` at whichever site leads (the others refuse, naming the
/// leader), until one did it or `within` passed; the site that did it.
fn switch_at_the_leader<'a>(sites: &'a [Site], region: &str, within: Duration) -> &'a Site {
    let deadline = Instant::now() + within;
    let mut refusals = Vec::new();
    loop {
        for site in sites.iter().filter(|s| s.controller.is_some()) {
            let out = site.cluster(&["switchover", region]);
            let said = String::from_utf8_lossy(&out.stderr).into_owned();
            if out.status.success() {
                return site;
            }
            assert!(said.contains("is not the leader"), "{}: {said}", site.name);
            refusals.push(format!("{}: {said}", site.name));
        }
        assert!(
            Instant::now() < deadline,
            "no site led within {within:?}: {refusals:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The events of `kind` a site's controller recorded.
fn events_at(setup: &Setup, site: &str, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(setup.dir.join(format!("state-{site}/events.jsonl")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == kind)
        .collect()
}

/// Waits until every running site's DNS server leads the name to `ips` at `(epoch, region)`.
fn every_site_serves(sites: &[Site], ips: &[String], epoch: u64, region: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for site in sites.iter().filter(|s| s.controller.is_some()) {
        loop {
            let (name, owner) = (site.name(), site.ownership());
            if name == ips && owner == Some((epoch, region.to_string())) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the name leads to {name:?} with {owner:?}, not to {ips:?} at epoch {epoch} in {region}",
                site.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_cluster_controllers_on_etcd_move_the_primaries_through_the_leader_and_survive_its_death()
 {
    let setup = Setup::new("cluster-ha").await;
    let etcd = EtcdCluster::start(&setup.dir.join("etcd"), Ipv4Addr::LOCALHOST, 3)
        .await
        .expect("etcd starts");
    let mut sites = sites(&setup, &etcd);
    for site in &mut sites {
        site.controller = Some(Controller::start(&site.config, None));
    }
    let east1 = setup.ips(0..3);
    let east2 = setup.ips(6..9);

    // A leader takes office and publishes the epoch; every site serves it from etcd.
    every_site_serves(&sites, &east1, 1, "us-east-1");
    // Only the leader moves the primaries: the others refuse, naming it.
    let leader = switch_at_the_leader(&sites, "us-east-2", Duration::from_secs(20));
    let leader_name = leader.name;
    every_site_serves(&sites, &east2, 2, "us-east-2");
    // The epoch lives in etcd, not in a site's state directory (each site keeps its events
    // there).
    for site in SITES {
        let state = setup.dir.join(format!("state-{site}"));
        assert!(
            state.join("events.jsonl").exists(),
            "{site} keeps no events"
        );
        assert!(
            !state.join("cluster.json").exists(),
            "{site} wrote cluster.json"
        );
    }

    // The leader dies. The others elect another and go on serving the name meanwhile; the
    // new leader moves the primaries back under the next epoch.
    let leader = sites.iter_mut().find(|s| s.name == leader_name).unwrap();
    drop(leader.controller.take());
    let survivors: Vec<&Site> = sites.iter().filter(|s| s.controller.is_some()).collect();
    for site in &survivors {
        assert_eq!(site.name(), east2, "{} while no leader acts", site.name);
    }
    let killed = Instant::now();
    let new_leader = switch_at_the_leader(&sites, "us-east-1", Duration::from_secs(30));
    assert_ne!(new_leader.name, leader_name);
    let elected = events_at(&setup, new_leader.name, "leader_elected");
    assert!(
        !elected.is_empty(),
        "{}: no leader_elected",
        new_leader.name
    );
    eprintln!(
        "{} led after {leader_name}'s death; its switchover done {} ms after the kill",
        new_leader.name,
        killed.elapsed().as_millis()
    );
    every_site_serves(&sites, &east1, 3, "us-east-1");

    // The dead site comes back as a follower: it serves what etcd holds.
    let back = sites.iter_mut().find(|s| s.name == leader_name).unwrap();
    back.controller = Some(Controller::start(&back.config, None));
    every_site_serves(&sites, &east1, 3, "us-east-1");
    drop(etcd);
}

/// The region of every slot-serving shard's primary, as `site`'s controller last saw them.
fn primary_regions(site: &Site) -> Vec<String> {
    let out = site.cluster(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    status["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["slot_count"] != 0)
        .map(|s| s["primary"]["region"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_stalled_past_its_lease_mid_switchover_takes_no_shard_over_when_it_resumes() {
    let setup = Setup::new("cluster-ha-stall").await;
    let etcd = EtcdCluster::start(&setup.dir.join("etcd"), Ipv4Addr::LOCALHOST, 3)
        .await
        .expect("etcd starts");
    let mut sites = sites(&setup, &etcd);
    // The witness leads: it starts alone, its process set to stop itself (SIGSTOP, as a paused
    // VM) once a move's targets caught up.
    sites[2].controller = Some(Controller::start(
        &sites[2].config,
        Some("stop-after:caught-up"),
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while events_at(&setup, "witness", "leader_elected").is_empty() {
        assert!(Instant::now() < deadline, "the witness never led");
        std::thread::sleep(Duration::from_millis(50));
    }
    for site in &mut sites[..2] {
        site.controller = Some(Controller::start(&site.config, None));
    }
    let east1 = setup.ips(0..3);
    every_site_serves(&sites, &east1, 1, "us-east-1");

    let switchover = Command::new(BIN)
        .args(["cluster", "switchover", "us-east-2", "--config"])
        .arg(&sites[2].config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = sites[2].controller.as_ref().unwrap().child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !valkey_dr_lab::process::is_stopped(pid) {
        assert!(Instant::now() < deadline, "the move never caught up");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Its lease runs out; another site takes the leader key (and settles the recorded move:
    // nothing moved yet).
    let deadline = Instant::now() + Duration::from_secs(20);
    while events_at(&setup, "us-east-1", "leader_elected").is_empty()
        && events_at(&setup, "us-east-2", "leader_elected").is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "no other site took the leader key"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The stalled leader resumes within its write pause, its targets caught up: on its own
    // clock it no longer leads, so it takes no shard over, lifts no pause, and says so.
    valkey_dr_lab::process::signal(pid, libc::SIGCONT);
    let out = switchover.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("no longer leads") || said.contains("lost the leader key"),
        "{said}"
    );
    eprintln!("the resumed leader said: {said}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        primary_regions(&sites[0]),
        ["us-east-1"; 3],
        "a shard moved"
    );
    every_site_serves(&sites, &east1, 1, "us-east-1");

    // The new leader moves them when asked, under the next epoch.
    let leader = switch_at_the_leader(&sites, "us-east-2", Duration::from_secs(30));
    assert_ne!(leader.name, "witness");
    every_site_serves(&sites, &setup.ips(6..9), 2, "us-east-2");
    drop(etcd);
}
