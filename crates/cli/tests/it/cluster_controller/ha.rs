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
        name_at(self.dns)
    }

    fn ownership(&self) -> Option<(u64, String)> {
        ownership_at(self.dns)
    }

    fn cluster(&self, args: &[&str]) -> std::process::Output {
        cluster_at(&self.config, args)
    }
}

/// A three-member etcd for the cluster of `setup`, and each site's config pointing at it.
async fn on_etcd(setup: &Setup) -> (EtcdCluster, Vec<Site>) {
    let etcd = EtcdCluster::start(&setup.dir.join("etcd"), Ipv4Addr::LOCALHOST, 3)
        .await
        .expect("etcd starts");
    let sites = sites(setup, &etcd);
    (etcd, sites)
}

/// How many times the controllers of `sites` took the leader key so far.
fn elected_count(setup: &Setup, sites: &[&str]) -> usize {
    sites
        .iter()
        .map(|s| events_at(setup, s, "leader_elected").len())
        .sum()
}

/// Waits until the controllers of `sites` took the leader key more than `before` times.
fn wait_elected(setup: &Setup, sites: &[&str], before: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while elected_count(setup, sites) <= before {
        assert!(
            Instant::now() < deadline,
            "none of {sites:?} took the leader key"
        );
        std::thread::sleep(Duration::from_millis(50));
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

/// Runs a switchover to `region` at `site`, whether or not it leads (another site hands it to
/// the leader through etcd), asked again while it ends unfinished with nothing lost (exit 75:
/// a replica that followed the last move still loading its sync); the name of the site whose
/// controller carried it out.
fn switch_at(setup: &Setup, site: &Site, region: &str) -> String {
    let forwarded_before: Vec<usize> = SITES
        .iter()
        .map(|s| events_at(setup, s, "request_forwarded").len())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = site.cluster(&["switchover", region]);
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            break;
        }
        assert!(
            out.status.code() == Some(75) && Instant::now() < deadline,
            "{}: {said}",
            site.name
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Carried out where a forwarded request was taken, else at the site asked.
    SITES
        .iter()
        .zip(forwarded_before)
        .find(|(s, before)| events_at(setup, s, "request_forwarded").len() > *before)
        .map_or(site.name, |(s, _)| *s)
        .to_string()
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
    every_site_serves_within(sites, ips, epoch..=epoch, region);
}

/// Waits until every running site's DNS server leads the name to `ips` in `region` at one epoch
/// of `epochs`; returns it.
fn every_site_serves_within(
    sites: &[Site],
    ips: &[String],
    epochs: std::ops::RangeInclusive<u64>,
    region: &str,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut served = Vec::new();
    for site in sites.iter().filter(|s| s.controller.is_some()) {
        loop {
            let (name, owner) = (site.name(), site.ownership());
            if let Some((epoch, at)) = &owner
                && name == ips
                && epochs.contains(epoch)
                && at == region
            {
                served.push(*epoch);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the name leads to {name:?} with {owner:?}, not to {ips:?} at epoch {epochs:?} in {region}",
                site.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    served.dedup();
    assert_eq!(
        served.len(),
        1,
        "the sites serve different epochs: {served:?}"
    );
    served[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn three_cluster_controllers_on_etcd_move_the_primaries_through_the_leader_and_survive_its_death()
 {
    let setup = Setup::new("cluster-ha").await;
    let (etcd, mut sites) = on_etcd(&setup).await;
    for site in &mut sites {
        site.controller = Some(Controller::start(&site.config, None));
    }
    let east1 = setup.ips(0..3);
    let east2 = setup.ips(6..9);

    // A leader takes office and publishes the epoch; every site serves it from etcd.
    every_site_serves(&sites, &east1, 1, "us-east-1");
    // Asked at us-east-1 — the writer region's site, which leaves the leader key to another
    // site — the switchover is handed to the leader through etcd and carried out there.
    let leader_name = switch_at(&setup, &sites[0], "us-east-2");
    assert_ne!(leader_name, "us-east-1", "the writer region's site led");
    // A switchover asked again because its leader lost office before answering (exit 75) may
    // have been carried out already: the one asked again keeps its epoch.
    let moved = every_site_serves_within(&sites, &east2, 2..=2, "us-east-2");
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
    // (The site that carried out the switchover may have handed the key on since: the writer
    // region's site leaves it to another.)
    let leader_name = status_at(&sites[0]).unwrap()["leader"]
        .as_str()
        .expect("a leader is known")
        .to_string();
    let leader = sites.iter_mut().find(|s| s.name == leader_name).unwrap();
    let leader_name = leader.name;
    drop(leader.controller.take());
    let survivors: Vec<&Site> = sites.iter().filter(|s| s.controller.is_some()).collect();
    for site in &survivors {
        assert_eq!(site.name(), east2, "{} while no leader acts", site.name);
    }
    let killed = Instant::now();
    let asked = sites.iter().find(|s| s.controller.is_some()).unwrap();
    let new_leader = switch_at(&setup, asked, "us-east-1");
    assert_ne!(new_leader, leader_name);
    let elected = events_at(&setup, &new_leader, "leader_elected");
    assert!(!elected.is_empty(), "{new_leader}: no leader_elected");
    eprintln!(
        "{new_leader} led after {leader_name}'s death; its switchover done {} ms after the kill",
        killed.elapsed().as_millis()
    );
    let moved_back = every_site_serves_within(&sites, &east1, moved + 1..=moved + 2, "us-east-1");

    // The dead site comes back as a follower: it serves what etcd holds.
    let back = sites.iter_mut().find(|s| s.name == leader_name).unwrap();
    back.controller = Some(Controller::start(&back.config, None));
    every_site_serves(&sites, &east1, moved_back, "us-east-1");
    drop(etcd);
}

/// `site`'s controller's status (None while it does not answer yet).
fn status_at(site: &Site) -> Option<serde_json::Value> {
    let out = site.cluster(&["status"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Each slot-serving shard's primary as `site`'s controller last saw it: its address's IP and
/// its region.
fn primaries_seen(site: &Site) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = status_at(site) {
            break status;
        }
        assert!(Instant::now() < deadline, "{} does not answer", site.name);
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut seen: Vec<(String, String)> = status["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["slot_count"] != 0)
        .map(|s| {
            let node = s["primary"]["node"].as_str().unwrap_or("?");
            let ip = node.rsplit_once(':').map_or(node, |(ip, _)| ip);
            let region = s["primary"]["region"].as_str().unwrap_or("?");
            (ip.to_string(), region.to_string())
        })
        .collect();
    seen.sort();
    seen
}

/// The region of every slot-serving shard's primary, as `site`'s controller last saw them.
fn primary_regions(site: &Site) -> Vec<String> {
    primaries_seen(site).into_iter().map(|(_, r)| r).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_stalled_past_its_lease_mid_switchover_takes_no_shard_over_when_it_resumes() {
    let setup = Setup::new("cluster-ha-stall").await;
    let (etcd, mut sites) = on_etcd(&setup).await;
    // The witness leads, its process set to stop itself (SIGSTOP, as a paused VM) once a
    // move's targets caught up.
    start_fresh(
        &setup,
        &mut sites,
        "/valkey-dr",
        Some("stop-after:caught-up"),
    );
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
    wait_elected(&setup, &["us-east-1", "us-east-2"], 0);
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
    let leader = switch_at(&setup, &sites[2], "us-east-2");
    assert_ne!(leader, "witness");
    every_site_serves(&sites, &setup.ips(6..9), 2, "us-east-2");
    drop(etcd);
}

/// Starts every site's controller afresh under the etcd key prefix `prefix` (a deployment of its
/// own: no leader, no epoch, no records yet): the witness first, with `witness_fault`, once it
/// leads the others without one.
fn start_fresh(setup: &Setup, sites: &mut [Site], prefix: &str, witness_fault: Option<&str>) {
    for site in sites.iter_mut() {
        drop(site.controller.take());
        let text = std::fs::read_to_string(&site.config).unwrap();
        let text = match text.find("prefix = ") {
            Some(at) => text[..at].to_string(),
            None => text,
        };
        std::fs::write(&site.config, format!("{text}prefix = \"{prefix}\"\n")).unwrap();
    }
    let elected_before = elected_count(setup, &["witness"]);
    sites[2].controller = Some(Controller::start(&sites[2].config, witness_fault));
    wait_elected(setup, &["witness"], elected_before);
    for site in &mut sites[..2] {
        site.controller = Some(Controller::start(&site.config, None));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_killed_at_any_step_of_a_switchover_loses_nothing_and_the_next_leader_completes_it()
 {
    let setup = Setup::new("cluster-ha-crash").await;
    let (etcd, mut sites) = on_etcd(&setup).await;
    let writers =
        valkey_dr_lab::cluster::ShardWriters::start("writes", &setup.addrs[..3], &setup.addrs)
            .await
            .unwrap();
    let regions = ["us-east-2", "us-east-1"];
    for (i, step) in ["paused", "caught-up", "handed-over-1", "handed-over-2"]
        .into_iter()
        .enumerate()
    {
        let (to, from) = (regions[i % 2], regions[(i + 1) % 2]);
        start_fresh(
            &setup,
            &mut sites,
            &format!("/valkey-dr-crash-{i}"),
            Some(&format!("crash-after:{step}")),
        );
        let from_primaries = primaries_in_region(&sites[0], from);
        every_site_serves(&sites, &from_primaries, 1, from);
        let survivors = ["us-east-1", "us-east-2"];
        let elected_before = elected_count(&setup, &survivors);
        // The leader (the witness) dies at the step. A replica that followed the last move may
        // still be loading its sync: the move is then refused before anything is touched (exit
        // 75), and asked again. Once the move is asked at another site, handed to the leader
        // through etcd: that site tells the operator as soon as the next leader is elected,
        // not after the request's whole life (120 s).
        let forwarded = step == "caught-up";
        let asked = if forwarded { &sites[0] } else { &sites[2] };
        let deadline = Instant::now() + Duration::from_secs(20);
        let lost_office = "lost its office before answering";
        let said = loop {
            let out = asked.cluster(&["switchover", to]);
            let said = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                !out.status.success(),
                "{step}: the leader died mid-move: {said}"
            );
            if said.contains(lost_office) {
                assert_eq!(out.status.code(), Some(75), "{step}: {said}");
                break said;
            }
            if out.status.code() != Some(75) || Instant::now() > deadline {
                break said;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        assert_eq!(said.contains(lost_office), forwarded, "{step}: {said}");
        let witness = sites[2].controller.as_mut().unwrap();
        assert!(
            witness.ended_within(Duration::from_secs(10)),
            "{step}: not crashed: {said}"
        );
        drop(sites[2].controller.take());
        // Another site leads and settles the recorded move by what the shards show: each shard
        // has one primary, and once the new leader's first pass ran, the name leads only to
        // primaries (until then it may still name an old primary the dead leader handed over:
        // a seed that now answers MOVED, never a second writer).
        let crashed = Instant::now();
        wait_elected(&setup, &survivors, elected_before);
        let deadline = Instant::now() + Duration::from_secs(20);
        let name_within_primaries = |sites: &[Site], primaries: &[String]| {
            sites.iter().filter(|s| s.controller.is_some()).all(|site| {
                let name = site.name();
                !name.is_empty() && name.iter().all(|ip| primaries.contains(ip))
            })
        };
        loop {
            let primaries = primaries_now(&sites[0]);
            assert_eq!(primaries.len(), 3, "{step}: not one primary per shard");
            if name_within_primaries(&sites, &primaries) {
                break;
            }
            assert!(Instant::now() < deadline, "{step}: the name never settled");
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "{step}: a new leader, and the name leads only to primaries, {} ms after the leader died",
            crashed.elapsed().as_millis()
        );
        for _ in 0..10 {
            let primaries = primaries_now(&sites[0]);
            assert_eq!(primaries.len(), 3, "{step}: not one primary per shard");
            assert!(
                name_within_primaries(&sites, &primaries),
                "{step}: the name leads to a node that is no primary"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // The switchover asked again, at the new leader, completes the move.
        let leader = switch_at(&setup, &sites[0], to);
        assert_ne!(leader, "witness", "{step}");
        let moved = primaries_in_region(&sites[0], to);
        assert_eq!(moved.len(), 3, "{step}: {moved:?}");
        let owner = sites[0].ownership();
        assert_eq!(owner.map(|o| o.1), Some(to.to_string()), "{step}");
        for site in sites.iter().filter(|s| s.controller.is_some()) {
            assert_eq!(site.name(), moved, "{step}: {}", site.name);
        }
        eprintln!("{step}: the next leader completed the move to {to}");
    }
    for site in &mut sites {
        drop(site.controller.take());
    }
    // Every acknowledged write is in the cluster.
    for written in writers.stop().await {
        let kept: std::collections::HashSet<u64> =
            valkey_dr_lab::cluster::list_at(setup.addrs[0], &written.key)
                .await
                .unwrap()
                .into_iter()
                .collect();
        let lost = written.acked.iter().filter(|n| !kept.contains(n)).count();
        assert!(
            written.acked.len() > 10,
            "{}: the writer wrote",
            written.key
        );
        assert_eq!(lost, 0, "{}: acknowledged writes lost", written.key);
    }
    drop(etcd);
}

/// The addresses of every slot-serving primary, as `site`'s controller last saw them.
fn primaries_now(site: &Site) -> Vec<String> {
    primaries_seen(site).into_iter().map(|(ip, _)| ip).collect()
}

/// The addresses of the primaries in `region`, once all three stand there as `site` sees them.
fn primaries_in_region(site: &Site, region: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if primary_regions(site) == [region; 3] {
            return primaries_now(site);
        }
        assert!(
            Instant::now() < deadline,
            "the primaries are not all in {region}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_writer_region_with_its_site_is_failed_over_by_the_leader_elsewhere() {
    let mut setup = Setup::with("cluster-ha-auto", "cross_region_failover = \"auto\"\n").await;
    let (etcd, mut sites) = on_etcd(&setup).await;
    for site in &mut sites {
        site.controller = Some(Controller::start(&site.config, None));
    }
    let (east1, east2) = (setup.ips(0..3), setup.ips(6..9));
    every_site_serves(&sites, &east1, 1, "us-east-1");
    // The writer region's site leaves the leader key to another site; the leader arms every
    // primary's self-fence.
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        let status = status_at(&sites[1]).unwrap_or_default();
        let leader = status["leader"].as_str().unwrap_or_default().to_string();
        let leader_status = SITES
            .iter()
            .position(|s| *s == leader)
            .and_then(|i| status_at(&sites[i]))
            .unwrap_or_default();
        let armed = leader_status["self_fenced"]
            .as_object()
            .map_or(0, |o| o.len());
        if leader != "us-east-1" && !leader.is_empty() && armed == 3 {
            break leader;
        }
        assert!(
            Instant::now() < deadline,
            "leader {leader:?}, armed {armed}: {leader_status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    // us-east-1 is lost whole: its six nodes and its site's controller. The leader, elsewhere,
    // moves every shard to us-east-2 once the primaries are surely fenced, and every surviving
    // site serves the new name.
    let lost = Instant::now();
    for node in &mut setup.nodes[..6] {
        node.kill();
    }
    drop(sites[0].controller.take());
    every_site_serves(&sites, &east2, 2, "us-east-2");
    eprintln!(
        "{leader} led; every surviving site served us-east-2 {} ms after us-east-1 was lost",
        lost.elapsed().as_millis()
    );
    let done = SITES
        .iter()
        .map(|s| events_at(&setup, s, "failover_completed").len())
        .sum::<usize>();
    assert_eq!(done, 1, "one automatic failover");
    drop(etcd);
}
