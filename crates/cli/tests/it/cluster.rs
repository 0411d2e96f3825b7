//! Cluster mode against a real Valkey cluster: three shards, each a primary and a replica in
//! us-east-1 and a replica in us-east-2 (nine `valkey-server` processes on loopback). The engine
//! discovers the shards from any node; `valkey-dr cluster status` places them in the configured
//! regions and says what is wrong; `valkey-dr cluster switchover` moves every primary at once.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use valkey_dr_core::Endpoint;
use valkey_dr_core::cluster::{NodeHealth, SLOTS, ShardRole};
use valkey_dr_lab::clients::{self, Library};
use valkey_dr_lab::cluster::{ClusterNode, ShardWriters, list_at};
use valkey_dr_lab::writer::{ListCheck, check_list};
use valkey_dr_valkey::{Security, Timeouts, ValkeyEngine};

use crate::harness::{BIN, succeed};

fn config(dir: &std::path::Path, addrs: &[SocketAddr]) -> std::path::PathBuf {
    valkey_dr_lab::cluster::write_config(dir, addrs).unwrap()
}

/// `valkey-dr cluster <args> --config <config>`.
fn cluster(config: &std::path::Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("cluster")
        .args(args)
        .arg("--config")
        .arg(config);
    command
}

/// `valkey-dr cluster <args> --config <config>`, which must fail; what it said.
fn cluster_fails(config: &std::path::Path, args: &[&str]) -> String {
    let out = cluster(config, args).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{said}");
    said
}

/// Lets `node` run `CLUSTER FAILOVER`, or (an ACL rule) refuses it.
async fn may_fail_over(node: SocketAddr, allowed: bool) {
    let rule = if allowed {
        "+cluster|failover"
    } else {
        "-cluster|failover"
    };
    valkey_dr_lab::cluster::command(node, &["ACL", "SETUSER", "default", rule])
        .await
        .unwrap();
}

fn status(config: &std::path::Path) -> serde_json::Value {
    let out = succeed(&mut cluster(config, &["status", "--output", "json"]));
    serde_json::from_slice(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shards_of_a_stretched_cluster_are_discovered_and_placed_in_their_regions() {
    let dir = std::env::temp_dir().join(format!("valkey-dr-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Nodes 0–2 lead the shards; 3–5 follow them in us-east-1, 6–8 in us-east-2.
    let (addrs, mut nodes) = formed(&dir).await;

    // The engine reads the same shards from a primary and from a replica.
    let engine = ValkeyEngine::new(
        Timeouts {
            connect: Duration::from_millis(500),
            command: Duration::from_millis(500),
        },
        Security::default(),
    );
    let endpoint = |a: SocketAddr| Endpoint::new(&a.ip().to_string(), a.port());
    for asked in [addrs[0], addrs[7]] {
        let shards = engine.cluster_shards(&endpoint(asked)).await.unwrap();
        assert_eq!(shards.len(), 3, "{shards:#?}");
        assert_eq!(shards.iter().map(|s| s.slot_count()).sum::<u32>(), SLOTS);
        for (i, primary) in addrs[..3].iter().enumerate() {
            let shard = shards
                .iter()
                .find(|s| {
                    s.primary()
                        .is_some_and(|p| p.endpoint == endpoint(*primary))
                })
                .unwrap_or_else(|| panic!("a shard led by node {i}: {shards:#?}"));
            let mut replicas: Vec<Endpoint> = shard
                .nodes
                .iter()
                .filter(|n| n.role == ShardRole::Replica)
                .map(|n| n.endpoint.clone())
                .collect();
            replicas.sort_by_key(|e| e.port);
            let mut expected = vec![endpoint(addrs[3 + i]), endpoint(addrs[6 + i])];
            expected.sort_by_key(|e| e.port);
            assert_eq!(replicas, expected);
            assert!(
                shard.nodes.iter().all(|n| n.health == NodeHealth::Online),
                "{shard:#?}"
            );
        }
    }

    // The controller's engine reports a cluster node as one it cannot manage, and says what to
    // use instead.
    let settings = valkey_dr_core::Engine::sync_settings(&engine, &endpoint(addrs[0]))
        .await
        .unwrap();
    assert!(
        settings
            .weaknesses()
            .iter()
            .any(|w| w.contains("valkey-dr cluster switchover")),
        "{:?}",
        settings.weaknesses()
    );

    // Placed in the configured regions: every shard whole, its primary in the writer region.
    let path = config(&dir, &addrs);
    let healthy = status(&path);
    let shards = healthy["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 3, "{healthy:#}");
    for shard in shards {
        assert_eq!(shard["primary"]["region"], "us-east-1", "{healthy:#}");
        assert_eq!(shard["findings"], serde_json::json!([]), "{healthy:#}");
        let regions: Vec<&str> = shard["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["region"].as_str().unwrap())
            .collect();
        assert!(
            regions.contains(&"us-east-1") && regions.contains(&"us-east-2"),
            "{healthy:#}"
        );
    }
    assert_eq!(healthy["uncovered_slots"], serde_json::json!([]));

    // A replica in us-east-2 the cluster may promote by itself is shown, and `cluster
    // switchover` to where the primaries are sets it back.
    valkey_dr_lab::cluster::command(
        addrs[7],
        &["CONFIG", "SET", "cluster-replica-no-failover", "no"],
    )
    .await
    .unwrap();
    let unguarded = status(&path)["shards"][1]["findings"].to_string();
    assert!(
        unguarded.contains("may_fail_over_across_regions")
            && unguarded.contains(&addrs[7].to_string()),
        "{unguarded}"
    );
    // So is a node the cluster may move to another shard (replica migration).
    valkey_dr_lab::cluster::command(
        addrs[4],
        &["CONFIG", "SET", "cluster-allow-replica-migration", "yes"],
    )
    .await
    .unwrap();
    let migrating = status(&path).to_string();
    assert!(
        migrating.contains("may_move_to_another_shard")
            && migrating.contains(&addrs[4].to_string()),
        "{migrating}"
    );
    valkey_dr_lab::cluster::command(
        addrs[4],
        &["CONFIG", "SET", "cluster-allow-replica-migration", "no"],
    )
    .await
    .unwrap();
    let out = succeed(&mut cluster(&path, &["switchover", "us-east-1"]));
    let said = String::from_utf8_lossy(&out);
    assert!(
        said.contains("already in us-east-1")
            && said.contains(&format!("automatic failover refused on {}", addrs[7])),
        "{said}"
    );
    assert!(!automatic_failover(addrs[7]).await);
    assert_eq!(
        status(&path)["shards"][1]["findings"],
        serde_json::json!([])
    );

    // A replica outside the writer region dies: status says at once that it does not answer,
    // and that it failed once the cluster marks it so.
    let gone = addrs[6].to_string();
    drop(nodes.remove(6));
    let unanswered = status(&path)["shards"][0]["findings"].to_string();
    assert!(
        unanswered.contains(&gone) && unanswered.contains("unanswered"),
        "{unanswered}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let failed = loop {
        let now = status(&path);
        if now["shards"][0]["findings"]
            .to_string()
            .contains("\"failed\"")
        {
            break now;
        }
        assert!(Instant::now() < deadline, "never marked failed: {now:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let findings = failed["shards"][0]["findings"].to_string();
    assert!(
        findings.contains(&gone) && findings.contains("failed"),
        "{failed:#}"
    );

    let out = succeed(&mut cluster(&path, &["status"]));
    let table = String::from_utf8_lossy(&out);
    assert!(
        table.contains("3 shard(s)") && table.contains("(us-east-2)"),
        "{table}"
    );
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A 9-node cluster on a loopback address of this test's own: nodes 0–2 lead the shards; 3–5
/// follow them in us-east-1, 6–8 in us-east-2.
///
/// Its own address, not 127.0.0.1: the nodes of a cluster keep calling a node that died at its
/// address, and another test's node that took the freed port there answered them — the two
/// clusters' gossip mixed (a fresh cluster saw takeovers it never made, and a new primary was
/// turned back into a replica).
async fn formed(dir: &std::path::Path) -> (Vec<SocketAddr>, Vec<ClusterNode>) {
    let pid = std::process::id();
    let ip = Ipv4Addr::new(127, 101, (pid >> 8) as u8, (pid as u8).max(1));
    valkey_dr_lab::cluster::form(dir, ip, 9, 3)
        .await
        .expect("the cluster forms")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_all_shard_switchover_moves_every_primary_or_none_and_loses_no_acknowledged_write() {
    // Nodes 0–2 lead the shards; 3–5 follow them in us-east-1, 6–8 in us-east-2.
    let Written {
        dir,
        addrs,
        nodes,
        path,
        writers,
    } = Written::start("switch").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // One target refuses to take over (an ACL denies it CLUSTER FAILOVER): the two shards that
    // moved hand back, and every primary is where it was.
    may_fail_over(addrs[7], false).await;
    let said = cluster_fails(&path, &["switchover", "us-east-2"]);
    assert!(
        said.contains("rolled back") && said.contains("every shard's primary is where it was"),
        "{said}"
    );
    primaries_in(&path, "us-east-1").await;
    may_fail_over(addrs[7], true).await;
    // Whole again (the nodes that handed back have resynced) before the operator tries again.
    let deadline = Instant::now() + Duration::from_secs(15);
    while status(&path)["shards"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["findings"] != serde_json::json!([]))
    {
        assert!(
            Instant::now() < deadline,
            "never whole again: {:#}",
            status(&path)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let out = succeed(&mut cluster(
        &path,
        &["switchover", "us-east-2", "--output", "json"],
    ));
    let done: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(done["moves"].as_array().map(Vec::len), Some(3), "{done:#}");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Every shard's primary now stands in us-east-2, and every acknowledged write — through
    // the rollback and the switchover — is on the new primary.
    primaries_in(&path, "us-east-2").await;
    // Status now places them there: no shard's primary is "outside the writer region".
    let moved = status(&path);
    assert_eq!(moved["writer_region"], "us-east-2", "{moved:#}");
    assert!(
        !moved.to_string().contains("primary_outside_writer_region"),
        "{moved:#}"
    );
    // The cluster may now promote by itself the nodes in us-east-2 only.
    for (i, addr) in addrs.iter().enumerate() {
        assert_eq!(automatic_failover(*addr).await, i >= 6, "node {i}");
    }
    let gaps = writers.stop_and_check(addrs[6]).await;
    eprintln!(
        "longest gap between acknowledged writes per shard (ms): {gaps:?}; switchover: {done}"
    );

    // Moving them back: a switchover to where they already are moves nothing.
    let out = succeed(&mut cluster(&path, &["switchover", "us-east-2"]));
    assert!(String::from_utf8_lossy(&out).contains("already in us-east-2"));
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits until every shard's primary stands in `region` as status sees it (the node it asks
/// hears of the others' handovers by gossip).
async fn primaries_in(config: &std::path::Path, region: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = status(config);
        let all_there = now["shards"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|shard| shard["slot_count"] != 0)
            .all(|shard| shard["primary"]["region"] == region);
        if all_there {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "primaries never all in {region}: {now:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the cluster is whole again as status sees it, three looks in a row: every shard
/// with its primary and both replicas, every node online (a node that just handed back shows
/// online as a primary, then loading as a replica while it resyncs).
async fn whole(config: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut in_a_row = 0;
    while in_a_row < 3 {
        let now = status(config);
        let whole = now["shards"].as_array().unwrap().iter().all(|shard| {
            let replicas = shard["replicas"].as_array().unwrap();
            replicas.len() == 2
                && replicas.iter().all(|r| r["health"] == "online")
                && shard["primary"]["health"] == "online"
        });
        in_a_row = if whole { in_a_row + 1 } else { 0 };
        assert!(Instant::now() < deadline, "never whole again: {now:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many of the nodes at `addrs` say they are a primary (`ROLE`).
async fn primaries_among(addrs: &[SocketAddr]) -> usize {
    let mut primaries = 0;
    for addr in addrs {
        let role = valkey_dr_lab::cluster::command(*addr, &["ROLE"]).await;
        if let Ok(redis::Value::Array(reply)) = role
            && matches!(reply.first(), Some(redis::Value::BulkString(r)) if r.as_slice() == b"master")
        {
            primaries += 1;
        }
    }
    primaries
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_switchover_that_dies_at_any_step_loses_nothing_and_a_rerun_completes_it() {
    let Written {
        dir,
        addrs,
        nodes,
        path,
        writers,
    } = Written::start("crash").await;
    let regions = ["us-east-2", "us-east-1"];
    for (i, step) in ["paused", "caught-up", "handed-over-1", "handed-over-2"]
        .into_iter()
        .enumerate()
    {
        let to = regions[i % 2];
        let crashed = cluster(&path, &["switchover", to])
            .env("VALKEY_DR_FAULT", format!("crash-after:{step}"))
            .output()
            .unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&crashed.status),
            Some(libc::SIGABRT),
            "{step}: {}",
            String::from_utf8_lossy(&crashed.stderr)
        );
        // Whatever moved, one primary per shard: a takeover is whole or not done.
        let deadline = Instant::now() + Duration::from_secs(5);
        while primaries_among(&addrs).await != 3 {
            assert!(
                Instant::now() < deadline,
                "{step}: not one primary per shard"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Run again, it completes the move (and lifts the pauses the dead run left).
        succeed(&mut cluster(&path, &["switchover", to]));
        primaries_in(&path, to).await;
        whole(&path).await;
    }
    let gaps = writers.stop_and_check(addrs[0]).await;
    eprintln!("longest gap between acknowledged writes per shard (ms): {gaps:?}");
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A cluster ([`formed`]) with a writer per shard, and its config, in a directory of its own.
struct Written {
    dir: std::path::PathBuf,
    addrs: Vec<SocketAddr>,
    nodes: Vec<ClusterNode>,
    path: std::path::PathBuf,
    writers: Writers,
}

impl Written {
    async fn start(name: &str) -> Written {
        let dir =
            std::env::temp_dir().join(format!("valkey-dr-cluster-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (addrs, nodes) = formed(&dir).await;
        let path = config(&dir, &addrs);
        let writers = Writers::start(&addrs).await;
        Written {
            dir,
            addrs,
            nodes,
            path,
            writers,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_switchover_stalled_past_its_write_pause_hands_no_more_over_and_rolls_back() {
    let Written {
        dir,
        addrs,
        nodes,
        path,
        writers,
    } = Written::start("stall").await;
    // A catch-up bound of 500 ms: every primary's writes are paused for 2 × (0.5 + 6) + 2 = 15 s.
    let mut config = std::fs::read_to_string(&path).unwrap();
    config.push_str("[controller]\ncatchup_timeout_ms = 500\n");
    std::fs::write(&path, config).unwrap();
    // The command stands still for 14 s after the first shard's handover: the other primaries'
    // pauses end a second later, and they take writes their targets may not hold yet.
    let out = cluster(&path, &["switchover", "us-east-2"])
        .env("VALKEY_DR_FAULT", "stall-after:handed-over-1:14000")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("rolled back") && said.contains("write pause on its primary ends"),
        "{said}"
    );
    eprintln!("{said}");
    // Only the first shard had moved, and it handed back: every primary is where it was, and
    // every acknowledged write is there.
    primaries_in(&path, "us-east-1").await;
    writers.stop_and_check(addrs[0]).await;
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A cluster with a writer per shard whose us-east-1 is lost (SIGKILLed), but for one primary
/// (node 1) that still answers.
struct LostRegion {
    dir: std::path::PathBuf,
    addrs: Vec<SocketAddr>,
    nodes: Vec<ClusterNode>,
    path: std::path::PathBuf,
    writers: Writers,
    /// The last write each writer had acknowledged when the region was lost.
    before_loss: Vec<i64>,
}

impl LostRegion {
    async fn new(name: &str) -> LostRegion {
        let Written {
            dir,
            addrs,
            mut nodes,
            path,
            writers,
        } = Written::start(name).await;
        for i in [0, 2, 3, 4, 5] {
            nodes[i].kill();
        }
        let before_loss = writers.last_acked();
        LostRegion {
            dir,
            addrs,
            nodes,
            path,
            writers,
            before_loss,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_regions_shards_fail_over_to_the_survivors_and_its_nodes_rejoin_as_replicas() {
    let LostRegion {
        dir,
        addrs,
        mut nodes,
        path,
        writers,
        before_loss,
    } = LostRegion::new("lost").await;

    // The two silent primaries may still take writes where they stand: nothing moves until
    // the operator confirms them down.
    let said = cluster_fails(&path, &["failover", "us-east-2"]);
    assert!(
        said.contains("nothing moved")
            && said.contains("--confirm-down")
            && said.contains(&format!("{} does not answer", addrs[0]))
            && said.contains(&format!("{} does not answer", addrs[2]))
            && !said.contains(&format!("{} does not answer", addrs[1])),
        "{said}"
    );
    assert_eq!(primaries_among(&addrs[1..2]).await, 1, "node 1 untouched");

    let failover = || {
        cluster(
            &path,
            &[
                "failover",
                "us-east-2",
                "--confirm-down",
                "--output",
                "json",
            ],
        )
        .output()
        .unwrap()
    };
    // Shard 1's target refuses to take over (an ACL denies it CLUSTER FAILOVER): the two other
    // shards move, and shard 1's old primary, paused for the move, is released at once — it is
    // still the primary, and its writer goes on.
    may_fail_over(addrs[7], false).await;
    let partial = failover();
    let said = String::from_utf8_lossy(&partial.stderr);
    assert!(!partial.status.success(), "{said}");
    assert!(said.contains("1 of 3 shard(s) did not move"), "{said}");
    let done: serde_json::Value = serde_json::from_slice(&partial.stdout).unwrap();
    let refused = &done["shards"][1];
    assert!(refused["error"].is_string(), "{done:#}");
    assert_eq!(refused["old_follows"], serde_json::Value::Null, "{done:#}");
    assert_eq!(primaries_among(&addrs[1..2]).await, 1, "node 1 still leads");
    let during = writers.last_acked()[1];
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(writers.last_acked()[1] > during, "shard 1 takes writes");
    may_fail_over(addrs[7], true).await;

    // Run again: the last shard moves.
    let asked = Instant::now();
    let rerun = failover();
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let done: serde_json::Value = serde_json::from_slice(&rerun.stdout).unwrap();
    let shards = done["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 1, "{done:#}");
    let shard = &shards[0];
    assert_eq!(shard["error"], serde_json::Value::Null, "{done:#}");
    assert_eq!(shard["from"]["port"], addrs[1].port(), "{done:#}");
    // Paused, caught up, and following its new primary: this shard loses nothing.
    assert_eq!(shard["old_answered"], true, "{done:#}");
    assert_eq!(shard["caught_up"], true, "{done:#}");
    assert_eq!(shard["old_follows"], true, "{done:#}");
    // Every shard takes writes again, through the survivors.
    writers
        .each_writes_past(&before_loss, Duration::from_secs(10))
        .await;
    eprintln!(
        "every shard writable {} ms after the failover was asked for; {done}",
        asked.elapsed().as_millis()
    );
    primaries_in(&path, "us-east-2").await;

    // The region comes back with no data: its nodes learn of the takeovers and rejoin as
    // replicas, one primary per shard, and nothing written since is wiped.
    for i in [0, 2, 3, 4, 5] {
        nodes[i].restart().await.unwrap();
    }
    whole(&path).await;
    assert_eq!(primaries_among(&addrs).await, 3);
    primaries_in(&path, "us-east-2").await;
    let after_failover = writers.last_acked();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Only what the lost primaries had acknowledged and not yet sent to us-east-2 may be lost;
    // shard 1, whose primary answered, loses nothing.
    let lossy = [before_loss[0], -1, before_loss[2]];
    let (_, lost) = writers.stop_and_check_after(addrs[6], &lossy).await;
    eprintln!("acknowledged writes lost with the region, per shard: {lost:?}");
    assert!(after_failover.iter().all(|n| *n > 0));
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// No slot is served by two of the primaries at `addrs`.
async fn no_slot_with_two_primaries(addrs: &[SocketAddr], when: &str) {
    if let Some((a, b)) = valkey_dr_lab::cluster::two_primaries_for_a_slot(addrs).await {
        panic!("{when}: two primaries serve a slot: {a:?} / {b:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_region_failover_that_dies_midway_leaves_one_primary_per_slot_and_a_rerun_completes_it() {
    let LostRegion {
        dir,
        addrs,
        nodes,
        path,
        writers,
        before_loss,
    } = LostRegion::new("lost-crash").await;
    let alive = [addrs[1], addrs[6], addrs[7], addrs[8]];
    let failover = |crash: Option<&str>| {
        let mut command = cluster(&path, &["failover", "us-east-2", "--confirm-down"]);
        if let Some(step) = crash {
            command.env("VALKEY_DR_FAULT", format!("crash-after:{step}"));
        }
        command.output().unwrap()
    };
    for step in ["paused", "caught-up", "handed-over-1", "handed-over-2"] {
        let crashed = failover(Some(step));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&crashed.status),
            Some(libc::SIGABRT),
            "{step}: {}",
            String::from_utf8_lossy(&crashed.stderr)
        );
        // A takeover is whole or not done: whatever moved, no slot has two primaries.
        no_slot_with_two_primaries(&alive, step).await;
    }
    // Run again: it completes the move.
    let done = failover(None);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    primaries_in(&path, "us-east-2").await;
    no_slot_with_two_primaries(&alive, "after the rerun").await;
    let served: usize = valkey_dr_lab::cluster::served_by_primaries(&alive)
        .await
        .iter()
        .flat_map(|(_, slots)| slots)
        .map(|(a, b)| usize::from(b - a) + 1)
        .sum();
    assert_eq!(served, SLOTS as usize, "every slot served by the survivors");
    // Every shard takes writes again at once (a pause a dead run left on node 1, a replica now,
    // holds back no write: its clients get MOVED first).
    let after_rerun = writers.last_acked();
    writers
        .each_writes_past(&after_rerun, Duration::from_secs(3))
        .await;
    // Shard 1's primary answered every run: paused, caught up — it loses nothing.
    let lossy = [before_loss[0], -1, before_loss[2]];
    writers.stop_and_check_after(addrs[6], &lossy).await;
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether the cluster may promote the node at `addr` by itself (`cluster-replica-no-failover`).
async fn automatic_failover(addr: SocketAddr) -> bool {
    let reply =
        valkey_dr_lab::cluster::command(addr, &["CONFIG", "GET", "cluster-replica-no-failover"])
            .await;
    match reply {
        Ok(redis::Value::Array(pair)) => {
            matches!(pair.get(1), Some(redis::Value::BulkString(v)) if v.as_slice() == b"no")
        }
        other => panic!("CONFIG GET on {addr}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_replaces_a_lost_primary_beside_it_never_across_regions() {
    let Written {
        dir,
        addrs,
        mut nodes,
        path,
        writers,
    } = Written::start("beside").await;
    // Each shard's primary lost in turn: its replica in us-east-1 (node 3–5) and the one in
    // us-east-2 (6–8) are as far along, and only the first may be promoted by the cluster.
    let mut lossy = vec![-1; 3];
    for shard in 0..3 {
        lossy[shard] = writers.last_acked()[shard];
        let killed = Instant::now();
        nodes[shard].kill();
        let beside = [addrs[3 + shard], addrs[6 + shard]];
        let deadline = Instant::now() + Duration::from_secs(20);
        while primaries_among(&beside).await == 0 {
            assert!(Instant::now() < deadline, "shard {shard}: no new primary");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "shard {shard}: the cluster promoted a replica {} ms after its primary's SIGKILL",
            killed.elapsed().as_millis()
        );
        assert_eq!(primaries_among(&beside[..1]).await, 1, "shard {shard}");
        assert_eq!(primaries_among(&beside[1..]).await, 0, "shard {shard}");
    }
    primaries_in(&path, "us-east-1").await;
    let marks = writers.last_acked();
    writers
        .each_writes_past(&marks, Duration::from_secs(10))
        .await;
    // Only what a lost primary had not sent yet may be lost (the cluster's failover does not
    // wait for its replicas).
    writers.stop_and_check_after(addrs[3], &lossy).await;
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Gives `a` and `b` the same config epoch, the cluster's highest: both raise it at once
/// (`CLUSTER BUMPEPOCH`), neither hearing of the other's first, after `third` raised it above
/// theirs. With `a` a primary and `b` its replica, the tie stays (the cluster checks for it
/// among primaries only) — as a cluster can leave it when it forms.
async fn tie_epochs(a: SocketAddr, b: SocketAddr, third: SocketAddr) -> u64 {
    let bump = async |conn: &mut redis::aio::MultiplexedConnection| -> Option<String> {
        redis::cmd("CLUSTER")
            .arg("BUMPEPOCH")
            .query_async(conn)
            .await
            .ok()
    };
    let connect = async |node| valkey_dr_lab::cluster::connect(node).await.unwrap();
    let (mut on_a, mut on_b, mut on_third) =
        (connect(a).await, connect(b).await, connect(third).await);
    for _ in 0..50 {
        bump(&mut on_third).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // On connections open already: both requests leave within a microsecond.
        let (by_a, by_b) = tokio::join!(bump(&mut on_a), bump(&mut on_b));
        if let (Some(by_a), Some(by_b)) = (by_a, by_b)
            && by_a == by_b
            && let Some(epoch) = by_a.strip_prefix("BUMPED ")
        {
            return epoch.parse().unwrap();
        }
    }
    panic!("{a} and {b} never raised the epoch at once");
}

/// The primary of the shard serving `slot` as the node at `asked` sees it.
async fn owner_seen_by(asked: SocketAddr, slot: u16) -> Option<Endpoint> {
    let Ok(redis::Value::BulkString(listed)) =
        valkey_dr_lab::cluster::command(asked, &["CLUSTER", "NODES"]).await
    else {
        return None;
    };
    let shards = valkey_dr_valkey::cluster::parse_nodes(&String::from_utf8_lossy(&listed)).ok()?;
    let shard = shards
        .iter()
        .find(|s| s.slots.iter().any(|r| r.contains(&slot)))?;
    Some(shard.primary()?.endpoint.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_takeover_whose_replica_shares_its_primarys_epoch_still_moves_the_slots() {
    let Written {
        dir,
        addrs,
        mut nodes,
        path,
        writers,
    } = Written::start("tie").await;
    // Shard 0's primary and its replica in us-east-2 — the first to take over — hold the
    // cluster's highest epoch both; then us-east-1 is lost, whole.
    let tied = tie_epochs(addrs[0], addrs[6], addrs[1]).await;
    for node in &mut nodes[..6] {
        node.kill();
    }
    let before_loss = writers.last_acked();
    let out = succeed(&mut cluster(
        &path,
        &["failover", "us-east-2", "--confirm-down"],
    ));
    // Every survivor sees every shard's primary in us-east-2.
    let survivors = &addrs[6..];
    let deadline = Instant::now() + Duration::from_secs(5);
    for slot in [0, 5461, 10922] {
        for asked in survivors {
            loop {
                let owner = owner_seen_by(*asked, slot).await;
                if owner
                    .as_ref()
                    .is_some_and(|o| survivors.iter().any(|s| o.port == s.port()))
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{asked} sees slot {slot} served by {owner:?} (tied at epoch {tied}): {}",
                    String::from_utf8_lossy(&out)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    writers
        .each_writes_past(&before_loss, Duration::from_secs(10))
        .await;
    // The region comes back with no data, and its primaries follow: the replica claimed the
    // slots under an epoch above the one it shared. Under the same epoch, the one with the
    // smaller node id would have won them — the old primary, empty, as often as not.
    for node in &mut nodes[..6] {
        node.restart().await.unwrap();
    }
    whole(&path).await;
    assert_eq!(primaries_among(&addrs).await, 3);
    primaries_in(&path, "us-east-2").await;
    let lossy = [before_loss[0], before_loss[1], before_loss[2]];
    writers.stop_and_check_after(addrs[6], &lossy).await;
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The lab's shard writers, checked: every write they had acknowledged is in the cluster.
struct Writers(ShardWriters);

impl Writers {
    /// Starts them on the primaries `addrs[..3]`, with every node as a seed.
    async fn start(addrs: &[SocketAddr]) -> Writers {
        let writers = ShardWriters::start(&addrs[..3], addrs).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        Writers(writers)
    }

    fn last_acked(&self) -> Vec<i64> {
        self.0.last_acked()
    }

    /// Waits until each writer has had a write past `marks` acknowledged, at most `within`.
    async fn each_writes_past(&self, marks: &[i64], within: Duration) {
        let deadline = Instant::now() + within;
        while self
            .last_acked()
            .iter()
            .zip(marks)
            .any(|(now, then)| now <= then)
        {
            assert!(Instant::now() < deadline, "a shard never took writes again");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops them and checks that every write they had acknowledged is in the cluster (read
    /// through `asked`); returns each one's longest wait for an acknowledgement, in ms.
    async fn stop_and_check(self, asked: SocketAddr) -> Vec<u128> {
        self.stop_and_check_after(asked, &[-1; 3]).await.0
    }

    /// As [`Writers::stop_and_check`], but writer `i`'s writes up to `lossy[i]` may be lost (a
    /// lost region took them); returns the gaps and how many each lost.
    async fn stop_and_check_after(
        self,
        asked: SocketAddr,
        lossy: &[i64],
    ) -> (Vec<u128>, Vec<usize>) {
        let (mut gaps, mut losses) = (Vec::new(), Vec::new());
        for (written, lossy) in self.0.stop().await.into_iter().zip(lossy) {
            let key = &written.key;
            gaps.push(written.longest.as_millis());
            assert!(written.acked.len() > 10, "{key}: the writer wrote");
            let kept: std::collections::HashSet<u64> =
                list_at(asked, key).await.unwrap().into_iter().collect();
            let lost: Vec<&u64> = written.acked.iter().filter(|n| !kept.contains(n)).collect();
            let unexpected: Vec<&&u64> = lost.iter().filter(|n| ***n as i64 > *lossy).collect();
            assert!(
                unexpected.is_empty(),
                "{key}: {} acknowledged writes lost (up to {lossy} might be): {unexpected:?}",
                unexpected.len()
            );
            losses.push(lost.len());
        }
        (gaps, losses)
    }
}

/// Checks a client writer's list in the cluster (read through `asked`).
async fn cluster_list_check(asked: SocketAddr, key: &str, acked: u64) -> Result<ListCheck, String> {
    let entries = list_at(asked, key).await.map_err(|e| e.to_string())?;
    Ok(check_list(&entries, acked))
}

/// Runs every client writer (`make clients`) through `act`, from its start to `settle` after it
/// returned, and checks each one's list through `asked`.
async fn through(
    seed: &clients::Target,
    writers: &[clients::ClientWriter],
    run_id: u64,
    settle: Duration,
    asked: SocketAddr,
    act: impl AsyncFnOnce(),
) -> Vec<clients::ClientReport> {
    let clients_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients");
    let running = clients::start(seed, &clients_dir, run_id, writers, None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = valkey_dr_controller::clock::now_ms();
    act().await;
    let took_effect = valkey_dr_controller::clock::now_ms();
    tokio::time::sleep(settle).await;
    clients::stop(running, started, took_effect, async |key: &str, acked| {
        cluster_list_check(asked, key, acked).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_clients_follow_a_switchover_and_a_region_failover() {
    let dir =
        std::env::temp_dir().join(format!("valkey-dr-cluster-clients-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (addrs, mut nodes) = formed(&dir).await;
    let path = config(&dir, &addrs);
    let seed = clients::Target::cluster_seed(addrs[0]);
    // Every library's cluster client (`make clients`), default and recommended settings.
    let libraries: Vec<Library> = Library::ALL
        .into_iter()
        .filter(|l| l.has_cluster_client())
        .collect();
    let writers = clients::matrix(&libraries);
    let report = |reports: &[clients::ClientReport]| {
        reports
            .iter()
            .map(|r| {
                format!(
                    "{} ({}): {} acked, {} lost, longest gap {} ms, error {:?}, first error {:?}",
                    r.client,
                    r.settings,
                    r.acknowledged_writes,
                    r.lost,
                    r.longest_gap_ms,
                    r.error,
                    r.first_error
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };

    // A planned switchover: every library follows it and loses nothing.
    let switched = through(
        &seed,
        &writers,
        1,
        // Long enough that a library stalled a second or more by a loaded machine (seen: 3.4 s
        // under four tests at once) still shows writes well after the switchover.
        Duration::from_secs(4),
        addrs[6],
        async || {
            succeed(&mut cluster(&path, &["switchover", "us-east-2"]));
        },
    )
    .await;
    eprintln!("switchover:\n{}", report(&switched));
    for r in &switched {
        assert!(r.error.is_none(), "{}", report(&switched));
        assert_eq!(r.lost, 0, "{}", report(&switched));
        assert!(
            r.last_write_after_ms > 1000,
            "it writes after the switchover: {}",
            report(&switched)
        );
    }

    // us-east-2, now holding every primary, is lost; the primaries come back east. Every
    // library writes again (what the lost primaries had not sent east may be lost: shown).
    let failed_over = through(
        &seed,
        &writers,
        2,
        Duration::from_secs(8),
        addrs[0],
        async || {
            for node in &mut nodes[6..9] {
                node.kill();
            }
            succeed(&mut cluster(
                &path,
                &["failover", "us-east-1", "--confirm-down"],
            ));
        },
    )
    .await;
    eprintln!("region failover:\n{}", report(&failed_over));
    for r in &failed_over {
        assert!(r.error.is_none(), "{}", report(&failed_over));
        assert!(
            r.first_write_after_ms.is_some() && r.last_write_after_ms > 5000,
            "it writes again after the failover: {}",
            report(&failed_over)
        );
    }
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}
