//! A controller running a cluster (`mode = "cluster"`): `valkey-dr run` against a real stretched
//! cluster of nine `valkey-server` processes, its name read with `dig` from its own DNS server.
//! The epoch is the controller's, kept in `cluster.json`; the name leads to the writer region's
//! primaries only; a move is recorded before it starts and settled by what the shards show.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use valkey_dr_lab::cluster::ClusterNode;

use crate::harness::{BIN, dig, succeed};

mod ha;

/// A free port on `ip` for both UDP and TCP (the DNS server listens on both).
fn free_dns_port(ip: Ipv4Addr) -> u16 {
    (0..100)
        .find_map(|_| {
            let udp = std::net::UdpSocket::bind((ip, 0)).ok()?;
            let port = udp.local_addr().ok()?.port();
            std::net::TcpListener::bind((ip, port)).ok().map(|_| port)
        })
        .expect("a free port")
}

/// A new file beside `config` for a controller's stderr.
fn log_file(config: &Path) -> std::fs::File {
    let dir = config.parent().unwrap();
    let n = std::fs::read_dir(dir).map_or(0, |d| d.count());
    std::fs::File::create(dir.join(format!("controller-{n}.log"))).unwrap()
}

/// The controller process; killed (SIGKILL) when dropped.
struct Controller {
    child: Child,
}

impl Controller {
    fn start(config: &Path, fault: Option<&str>) -> Controller {
        let mut command = Command::new(BIN);
        command
            .args(["run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its events, kept with the test's files when it fails.
            .stderr(log_file(config));
        if let Some(fault) = fault {
            command.env("VALKEY_DR_FAULT", fault);
        }
        Controller {
            child: command.spawn().expect("valkey-dr runs"),
        }
    }

    /// Waits for it to end by itself (an injected crash), for up to `within`.
    fn ended_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The addresses the name leads to, as the DNS server at `dns` answers.
fn name_at(dns: SocketAddr) -> Vec<String> {
    let mut ips: Vec<String> = dig(dns, &["demo.valkey-dr.live", "A", "+short"])
        .lines()
        .map(str::to_string)
        .collect();
    ips.sort();
    ips
}

/// The ownership record's epoch and region, as the DNS server at `dns` answers.
fn ownership_at(dns: SocketAddr) -> Option<(u64, String)> {
    let txt = dig(dns, &["_valkey-dr.demo.valkey-dr.live", "TXT", "+short"]);
    let owner = valkey_dr_core::Ownership::parse(txt.trim())?;
    Some((owner.epoch, owner.primary_region))
}

/// `valkey-dr cluster <args> --output json --config <config>`, run.
fn cluster_at(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("cluster")
        .args(args)
        .args(["--output", "json", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

struct Setup {
    dir: PathBuf,
    config: PathBuf,
    dns: SocketAddr,
    addrs: Vec<SocketAddr>,
    nodes: Vec<ClusterNode>,
}

impl Setup {
    /// Nine nodes on an address of their own (see `cluster::formed`): 0–2 lead the shards, 3–5
    /// follow them in us-east-1, 6–8 in us-east-2; the config adds `mode = "cluster"` and the
    /// controller's DNS server on that address.
    async fn new(name: &str) -> Setup {
        Setup::with(name, "").await
    }

    /// [`Setup::new`] with `controller` lines added to the config's `[controller]` table.
    async fn with(name: &str, controller: &str) -> Setup {
        let dir = std::env::temp_dir().join(format!("valkey-dr-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The name carries addresses, not ports: every node has an address of its own and
        // listens on one port, as on separate hosts. The addresses are this test's own (see
        // `cluster::formed`).
        let pid = std::process::id();
        let ip = |n: u8| Ipv4Addr::new(127, 110 + n, (pid >> 8) as u8, (pid as u8).max(1));
        let ips: Vec<Ipv4Addr> = (0..9).map(ip).collect();
        let (addrs, nodes) = valkey_dr_lab::cluster::form_spread(&dir, &ips, 3)
            .await
            .expect("the cluster forms");
        let ip = ip(9);
        let config = valkey_dr_lab::cluster::write_config(&dir, &addrs).unwrap();
        let dns = SocketAddr::new(IpAddr::V4(ip), free_dns_port(ip));
        let written = std::fs::read_to_string(&config).unwrap();
        // [dns] is the file's last table: its provider follows it, the controller's settings
        // after that.
        std::fs::write(
            &config,
            format!(
                "mode = \"cluster\"\n{written}[dns.provider]\nkind = \"embedded\"\nlisten = \"{dns}\"\n[controller]\nreconcile_interval_ms = 300\n{controller}"
            ),
        )
        .unwrap();
        Setup {
            dir,
            config,
            dns,
            addrs,
            nodes,
        }
    }

    fn ips(&self, nodes: std::ops::Range<usize>) -> Vec<String> {
        let mut ips: Vec<String> = self.addrs[nodes]
            .iter()
            .map(|a| a.ip().to_string())
            .collect();
        ips.sort();
        ips.dedup();
        ips
    }

    /// The addresses the name leads to.
    fn name(&self) -> Vec<String> {
        name_at(self.dns)
    }

    /// The ownership record's epoch and region.
    fn ownership(&self) -> Option<(u64, String)> {
        ownership_at(self.dns)
    }

    fn status(&self) -> serde_json::Value {
        let out = succeed(
            Command::new(BIN)
                .args(["cluster", "status", "--output", "json", "--config"])
                .arg(&self.config),
        );
        serde_json::from_slice(&out).unwrap()
    }

    fn cluster(&self, args: &[&str]) -> std::process::Output {
        cluster_at(&self.config, args)
    }

    /// Waits until the name leads to `ips` with the ownership record `(epoch, region)`.
    fn wait_for_name(&self, ips: &[String], epoch: u64, region: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (name, owner) = (self.name(), self.ownership());
            if name == ips && owner == Some((epoch, region.to_string())) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the name leads to {name:?} with {owner:?}, not to {ips:?} at epoch {epoch} in {region}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A controller started on the config, once its control socket answers.
    fn controller(&self, fault: Option<&str>) -> Controller {
        let controller = Controller::start(&self.config, fault);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.cluster(&["status"]).status.success() {
            assert!(Instant::now() < deadline, "the controller does not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        controller
    }

    /// Waits until the controller has armed the self-fence of `count` primaries.
    fn wait_armed(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let status = self.status();
            let fenced = status["self_fenced"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            if fenced.len() == count {
                return;
            }
            assert!(Instant::now() < deadline, "not armed: {status}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every shard's nodes are online (replicas that followed a move resync first).
    fn wait_whole(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status();
            let whole = status["shards"].as_array().is_some_and(|shards| {
                shards.iter().all(|s| {
                    s["replicas"]
                        .as_array()
                        .is_some_and(|r| r.len() == 2 && r.iter().all(|n| n["health"] == "online"))
                })
            });
            if whole {
                return;
            }
            assert!(Instant::now() < deadline, "not whole: {status}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The controller's events of `kind` so far (`events.jsonl` in its state directory).
    fn events(&self, kind: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("state/events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["event"] == kind)
            .collect()
    }

    /// Polls the name for `during`: it must lead somewhere, and never to a node outside
    /// `allowed` (an empty answer would pass anything).
    fn name_stays_within(&self, allowed: &[String], during: Duration) {
        let deadline = Instant::now() + during;
        while Instant::now() < deadline {
            let name = self.name();
            assert!(
                !name.is_empty() && name.iter().all(|ip| allowed.contains(ip)),
                "the name leads to {name:?}, not within {allowed:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_controller_keeps_the_clusters_epoch_and_leads_the_name_to_the_writer_regions_primaries()
 {
    let setup = Setup::new("cluster-controller").await;
    let (east1_primaries, east2_nodes) = (setup.ips(0..3), setup.ips(6..9));
    let controller = setup.controller(None);

    // Epoch 1 where the primaries stand; the name leads to them, never to a replica.
    setup.wait_for_name(&east1_primaries, 1, "us-east-1");
    let status = setup.status();
    assert_eq!(status["epoch"], 1, "{status}");
    assert_eq!(status["writer_region"], "us-east-1", "{status}");

    // A switchover through the controller: recorded, every shard moved, the epoch raised and
    // the name moved before the command returns.
    // A move that rolls back (a handover slow under load) leaves the epoch and the name as
    // they were; it is asked again.
    // A hand-back that fails too (the late takeover was the last shard's) leaves every shard in
    // us-east-2: the controller settles that as the move done, under epoch 2.
    let mut tries = 0;
    loop {
        let out = setup.cluster(&["switchover", "us-east-2"]);
        tries += 1;
        let said = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(done["moves"].as_array().map(Vec::len), Some(3), "{done}");
            break;
        }
        // Rolled back or refused with nothing lost: exit 75, run it again.
        assert_eq!(out.status.code(), Some(75), "{said}");
        assert!(tries < 3, "{said}");
        let status = setup.status();
        let east1_now = primaries_of(&status, &setup.ips(0..6));
        if east1_now.is_empty() {
            assert_eq!(
                primaries_of(&status, &east2_nodes),
                east2_nodes,
                "after: {said}: {status}"
            );
            setup.wait_for_name(&east2_nodes, 2, "us-east-2");
            setup.wait_whole();
            break;
        }
        // Rolled back, every shard's primary is where it was, and the name on all of them; a
        // takeover that lands after the hand-back leaves its shard in us-east-2 (halfway): the
        // name then leads to the primaries still in us-east-1, and never to another node.
        assert_eq!(setup.name(), east1_now, "after: {said}: {status}");
        assert_eq!(
            setup.ownership(),
            Some((1, "us-east-1".into())),
            "after: {said}"
        );
        setup.wait_whole();
    }
    assert_eq!(setup.name(), east2_nodes);
    assert_eq!(setup.ownership(), Some((2, "us-east-2".into())));
    // Asked again (as after an answer lost with its leader): nothing moves, the epoch stays.
    // Before, it raised the epoch for no move.
    let again = setup.cluster(&["switchover", "us-east-2"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let done: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(done["moves"].as_array().map(Vec::len), Some(0), "{done}");
    assert_eq!(setup.ownership(), Some((2, "us-east-2".into())));
    let recorded = std::fs::read_to_string(setup.dir.join("state/cluster.json")).unwrap();
    assert!(recorded.contains("\"epoch\": 2"), "{recorded}");
    assert!(
        recorded.contains("\"writer_region\": \"us-east-2\""),
        "{recorded}"
    );

    // Restarted without its state directory (and its embedded DNS server empty, as it keeps
    // the zone in memory): the writer region comes back from where the primaries stand, and
    // the name with it. The number starts again at 1 — it counts only against the ownership
    // record, which a DNS server that kept it (RFC 2136) would have given back instead.
    drop(controller);
    std::fs::remove_dir_all(setup.dir.join("state")).unwrap();
    let controller = setup.controller(None);
    setup.wait_for_name(&east2_nodes, 1, "us-east-2");
    let status = setup.status();
    assert_eq!(status["writer_region"], "us-east-2", "{status}");
    setup.wait_whole();
    drop(controller);

    // A controller that dies after the first of three shards handed over back to us-east-1:
    // the move stays recorded, a restarted controller says it is halfway, and the name leads
    // only to primaries of the epoch's region — never to a node that stopped being one.
    let mut crashing = setup.controller(Some("crash-after:handed-over-1"));
    // A replica that followed the last move may still be loading its sync as the node asked
    // sees it: the move is then refused before anything is touched, and asked again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let said = loop {
        let out = setup.cluster(&["switchover", "us-east-1"]);
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "the controller died mid-move: {said}"
        );
        if out.status.code() != Some(75) || Instant::now() > deadline {
            break said;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(crashing.ended_within(Duration::from_secs(10)), "{said}");
    let _controller = setup.controller(None);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = setup.status();
        if status["moving_to"] == "us-east-1" || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["moving_to"], "us-east-1", "{status}");
    assert_eq!(status["epoch"], 1, "{status}");
    let still_primaries = primaries_of(&status, &east2_nodes);
    assert_eq!(
        still_primaries.len(),
        2,
        "two shards did not move: {status}"
    );
    setup.name_stays_within(&still_primaries, Duration::from_secs(2));

    // The command again finishes the move under the recorded move's epoch.
    let out = setup.cluster(&["switchover", "us-east-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    setup.wait_for_name(&east1_primaries_now(&setup), 2, "us-east-1");
    let status = setup.status();
    assert!(status["moving_to"].is_null(), "{status}");
    drop(_controller);
    // Every move above handed the shards over with their histories going on: no loss reported
    // (in an event log that holds the moves: not the read of a missing file).
    assert!(!setup.events("cluster_move_settled").is_empty());
    assert_eq!(
        setup.events("data_loss_suspected"),
        Vec::<serde_json::Value>::new()
    );

    // A controller that lost its state directory goes on from the ownership record — and while
    // that record cannot be read it decides nothing: starting over at epoch 1, below the
    // published 2, every later write of the name would be refused as stale.
    lost_state_dir_recovers_the_published_epoch(&setup, 2, "us-east-1").await;
}

async fn lost_state_dir_recovers_the_published_epoch(setup: &Setup, epoch: u64, region: &str) {
    use std::sync::Arc;
    use valkey_dr_controller::cluster::ClusterError;
    use valkey_dr_controller::cluster::controller::ClusterController;
    use valkey_dr_core::records::{ManagedNames, ownership_record};
    use valkey_dr_dns::DnsProvider;

    let mut config = valkey_dr_core::Config::load(&setup.config).unwrap();
    config.state_dir = setup.dir.join("state-lost");
    // An RFC 2136 server that is down: nothing listens on its port.
    let down = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let key = valkey_dr_dns::rfc2136::TsigKey {
        name: "valkey-dr".into(),
        algorithm: valkey_dr_core::config::TsigAlgorithm::HmacSha256,
        secret: vec![7; 32],
    };
    let unreachable = valkey_dr_dns::rfc2136::Rfc2136::new(
        vec![down],
        "valkey-dr.live",
        key,
        Duration::from_millis(300),
    )
    .unwrap();
    let controller = ClusterController::new(config.clone(), Arc::new(unreachable), None).unwrap();
    let refused = controller.reconcile().await.unwrap_err();
    assert!(
        matches!(refused, ClusterError::EpochUnknown(_)),
        "{refused}"
    );
    assert!(
        !config.state_dir.join("cluster.json").exists(),
        "an epoch was recorded without the published one"
    );

    // The server back, holding the record: the epoch goes on from it.
    let names = ManagedNames::from_config(&config);
    let kept = valkey_dr_dns::embedded::Zone::new("valkey-dr.live");
    kept.apply(&[valkey_dr_core::Change::Create {
        new: ownership_record(&names, epoch, region),
    }])
    .await
    .unwrap();
    let controller = ClusterController::new(config, Arc::new(kept), None).unwrap();
    let pass = controller.reconcile().await.unwrap();
    assert_eq!((pass.epoch, pass.writer_region.as_str()), (epoch, region));
}

/// The addresses among `ips` of the nodes that lead a shard with slots in `status`.
fn primaries_of(status: &serde_json::Value, ips: &[String]) -> Vec<String> {
    let mut leading: Vec<String> = status["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["slot_count"].as_u64() > Some(0))
        .filter_map(|s| s["primary"]["node"].as_str())
        .map(|node| node.rsplit_once(':').unwrap().0.to_string())
        .filter(|ip| ips.contains(ip))
        .collect();
    leading.sort();
    leading.dedup();
    leading
}

/// The us-east-1 nodes that lead a shard now (after a move back, the replicas beside the first
/// primaries may lead instead).
fn east1_primaries_now(setup: &Setup) -> Vec<String> {
    primaries_of(&setup.status(), &setup.ips(0..6))
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_regions_loss_the_name_moves_only_with_the_failover_and_stays_when_it_returns() {
    let mut setup = Setup::new("cluster-controller-loss").await;
    let (east1_primaries, east2_nodes) = (setup.ips(0..3), setup.ips(6..9));
    let _controller = setup.controller(None);
    setup.wait_for_name(&east1_primaries, 1, "us-east-1");

    // us-east-1 is lost, every node of it.
    for node in &mut setup.nodes[..6] {
        node.kill();
    }
    // Nothing moves by itself: us-east-2's replicas may not fail over (cluster-replica-no-
    // failover), and the controller leads the name nowhere new until an operator moves the
    // epoch. The silent primaries may still take writes where they stand: without the
    // operator's word that they are down, nothing moves.
    setup.name_stays_within(&east1_primaries, Duration::from_secs(3));
    let out = setup.cluster(&["failover", "us-east-2"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("--confirm-down"),
        "{said}"
    );
    assert_eq!(setup.ownership(), Some((1, "us-east-1".into())));

    // Every shard that can move moves; one whose target was slow to answer (a loaded machine:
    // `CLUSTER BUMPEPOCH` saves the node's config) stays for a rerun, as the command says —
    // and until then the name stays on the epoch's region.
    let mut tries = 0;
    let out = loop {
        let out = setup.cluster(&["failover", "us-east-2", "--confirm-down"]);
        tries += 1;
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() || !said.contains("run it again") || tries == 3 {
            break out;
        }
        assert_eq!(setup.ownership(), Some((1, "us-east-1".into())), "{said}");
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(setup.name(), east2_nodes);
    assert_eq!(setup.ownership(), Some((2, "us-east-2".into())));

    // The region comes back empty: its nodes rejoin as replicas, and the name stays.
    for node in &mut setup.nodes[..6] {
        node.restart()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", node.addr));
    }
    setup.name_stays_within(&east2_nodes, Duration::from_secs(3));
    setup.wait_whole();
    let status = setup.status();
    assert_eq!(status["epoch"], 2, "{status}");
    assert_eq!(status["writer_region"], "us-east-2", "{status}");
}

/// The first key (`fence:<n>`) the cluster hashes to a slot in `slots`.
async fn key_in(asked: SocketAddr, slots: std::ops::RangeInclusive<i64>) -> String {
    for n in 0.. {
        let key = format!("fence:{n}");
        let slot = valkey_dr_lab::cluster::command(asked, &["CLUSTER", "KEYSLOT", &key])
            .await
            .unwrap();
        if let redis::Value::Int(slot) = slot
            && slots.contains(&slot)
        {
            return key;
        }
    }
    unreachable!()
}

/// `SET key 1` on `node` itself; the error it answers, if any.
async fn set_on(node: SocketAddr, key: &str) -> Option<String> {
    valkey_dr_lab::cluster::command(node, &["SET", key, "1"])
        .await
        .err()
        .map(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_primary_cut_off_from_every_replica_outside_its_region_refuses_writes_with_no_controller_left()
 {
    let mut setup = Setup::new("cluster-controller-fence").await;
    let controller = setup.controller(None);
    // Every primary needs the replica beside it and one outside: two.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = setup.status();
        let fenced = status["self_fenced"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        if fenced.len() == 3 && fenced.values().all(|n| *n == 2) {
            break;
        }
        assert!(Instant::now() < deadline, "not armed: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let first = setup.addrs[0];
    let key = key_in(first, 0..=5460).await;
    assert_eq!(set_on(first, &key).await, None);

    // A primary whose setting went back to its config file's (restarted between two passes, or
    // changed by hand) is armed again by the next pass: the controller goes by the node's own
    // setting, not by what it last set.
    valkey_dr_lab::cluster::command(first, &["CONFIG", "SET", "min-replicas-to-write", "0"])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let setting =
            valkey_dr_lab::cluster::command(first, &["CONFIG", "GET", "min-replicas-to-write"])
                .await
                .unwrap();
        if format!("{setting:?}").contains("\"2\"") {
            break;
        }
        assert!(Instant::now() < deadline, "not armed again: {setting:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The controller gone, then every replica outside us-east-1: nothing lowers the quorum, so
    // the primaries refuse writes — as they would, cut off from the other regions, before any
    // of them is taken over.
    drop(controller);
    for node in &mut setup.nodes[6..9] {
        node.kill();
    }
    let cut = Instant::now();
    let refused = loop {
        match set_on(first, &key).await {
            Some(error) => break error,
            None if cut.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            None => panic!("still taking writes 10 s after the cut"),
        }
    };
    assert!(refused.contains("NOREPLICAS"), "{refused}");
    eprintln!(
        "refused writes {} ms after its replicas outside the region were killed (their connections closed)",
        cut.elapsed().as_millis()
    );

    // A controller that sees the outside replicas gone lowers the quorum: the shard takes
    // writes again (there is nothing left to fence against).
    let _controller = setup.controller(None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(error) = set_on(first, &key).await {
        assert!(Instant::now() < deadline, "still refused: {error}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_writer_region_is_failed_over_automatically_once_its_primaries_are_surely_fenced() {
    let mut setup = Setup::with(
        "cluster-controller-auto",
        "cross_region_failover = \"auto\"\n",
    )
    .await;
    let (east1_primaries, east2_nodes) = (setup.ips(0..3), setup.ips(6..9));
    let _controller = setup.controller(None);
    setup.wait_for_name(&east1_primaries, 1, "us-east-1");
    setup.wait_armed(3);

    // us-east-1 is lost. Its primaries refuse writes once cut off from us-east-2's replicas
    // (armed fences); the controller moves every shard there once that is certain: the lag
    // limit (2 s) and 2 s more after it last heard of them — never sooner.
    let lost = Instant::now();
    for node in &mut setup.nodes[..6] {
        node.kill();
    }
    setup.wait_for_name(&east2_nodes, 2, "us-east-2");
    let took = lost.elapsed();
    eprintln!(
        "the name led to us-east-2 {} ms after us-east-1 was lost",
        took.as_millis()
    );
    assert!(took >= Duration::from_secs(4), "moved after {took:?}");
    let events = std::fs::read_to_string(setup.dir.join("state/events.jsonl")).unwrap();
    assert!(
        events.contains("\"event\":\"failover_completed\""),
        "{events}"
    );

    // The region comes back empty: its nodes rejoin as replicas, nothing moves back, and the
    // name stays.
    for node in &mut setup.nodes[..6] {
        node.restart().await.unwrap();
    }
    setup.wait_whole();
    setup.name_stays_within(&east2_nodes, Duration::from_secs(2));
    let status = setup.status();
    assert_eq!(status["epoch"], 2, "{status}");
}

/// A primary without persistence restarted at once without `cluster start-guard`: it comes back
/// as its slots' primary, empty, and its replicas copy the empty dataset. The controller cannot
/// undo that; it reports it — `data_loss_suspected` naming the node and its slots, the offset
/// gone back — within a pass or two, so that the alert reaches the operator. `status` shows it
/// until `valkey-dr ack`, across a restart of the controller (review N9: the report lived in one
/// process's memory, and `status` never showed it), and also when the state could not be written
/// at the moment the loss was seen.
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_back_empty_before_it_was_replaced_is_reported_as_suspected_data_loss() {
    // The report also reaches a webhook, signed.
    let (hook, received) = crate::http::receiver();
    let secret = std::env::temp_dir().join(format!("valkey-dr-cc-hook-{}", std::process::id()));
    std::fs::write(&secret, "cluster-hook-secret\n").unwrap();
    let mut setup = Setup::with(
        "cluster-controller-empty",
        &format!(
            "[[webhooks]]\nurl = \"http://{hook}/hook\"\nsecret_file = \"{}\"\nevents = [\"data_loss_suspected\"]\n",
            secret.display()
        ),
    )
    .await;
    let _controller = setup.controller(None);
    setup.wait_armed(3);
    let node = setup.addrs[0].to_string();
    // The state cannot be written when the loss is seen (a directory where the controller
    // writes its next `cluster.json`): the report must still reach `status` once it can.
    let blocker = setup.dir.join("state/cluster.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    setup.nodes[0].kill();
    setup.nodes[0].restart().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let reported = loop {
        let reported = setup.events("data_loss_suspected");
        let refused = !setup.events("state_write_failed").is_empty();
        if (!reported.is_empty() && refused) || Instant::now() > deadline {
            break reported;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!reported.is_empty(), "no data_loss_suspected event");
    assert!(
        reported.iter().all(|event| event["node"] == node.as_str()),
        "{reported:#?}"
    );
    assert!(!setup.events("state_write_failed").is_empty());
    let status = setup.status();
    assert!(status["data_loss_suspected"].is_null(), "{status:#}");
    std::fs::remove_dir(&blocker).unwrap();
    // Recorded by a later pass: before, the pass that failed to record it had already taken
    // the empty node's history as the one to compare with, and the report was gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while setup.status()["data_loss_suspected"].is_null() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let event = &reported[0];
    assert_eq!(event["node"], node.as_str(), "{event}");
    assert!(
        event["offset"].as_u64() < event["offset_before"].as_u64(),
        "{event}"
    );
    assert!(
        event["slots"].as_str().is_some_and(|s| !s.is_empty()),
        "{event}"
    );

    // Delivered (the receiver refuses the first POST: retried), signed with the secret.
    let deadline = Instant::now() + Duration::from_secs(10);
    let delivered = loop {
        let posts = received.lock().unwrap().clone();
        let delivered: Vec<_> = posts
            .into_iter()
            .filter(|(_, body)| body.contains("data_loss_suspected"))
            .collect();
        if delivered.len() >= 2 || Instant::now() > deadline {
            break delivered;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        delivered.len() >= 2,
        "refused once, then delivered: {delivered:?}"
    );
    let (head, body) = delivered.last().unwrap();
    assert!(body.contains(&node), "{body}");
    let signature =
        valkey_dr_controller::webhooks::signature(b"cluster-hook-secret", body.as_bytes());
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("x-valkey-dr-signature: {signature}")),
        "{head}"
    );

    // Shown by `status`, still after a restart, until acknowledged.
    let status = setup.status();
    assert_eq!(
        status["data_loss_suspected"]["node"],
        node.as_str(),
        "{status:#}"
    );
    drop(_controller);
    let _controller = setup.controller(None);
    let status = setup.status();
    assert_eq!(
        status["data_loss_suspected"]["node"],
        node.as_str(),
        "{status:#}"
    );
    let text = succeed(
        Command::new(BIN)
            .args(["cluster", "status", "--config"])
            .arg(&setup.config),
    );
    assert!(
        String::from_utf8_lossy(&text).contains("data loss suspected"),
        "{}",
        String::from_utf8_lossy(&text)
    );
    succeed(
        Command::new(BIN)
            .args(["ack", "--config"])
            .arg(&setup.config),
    );
    let status = setup.status();
    assert!(status["data_loss_suspected"].is_null(), "{status:#}");
    let _ = std::fs::remove_file(&secret);
}
