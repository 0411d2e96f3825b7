//! A lost region's shards failing over to the survivors, by hand and by the cluster itself.

use super::*;

/// A cluster with a writer per shard whose us-east-1 is lost (SIGKILLed), but for one primary
/// (node 1) that still answers.
struct LostRegion {
    lab: Formed,
    writers: Writers,
    /// The last write each writer had acknowledged when the region was lost.
    before_loss: Vec<i64>,
}

impl LostRegion {
    async fn new(name: &str) -> LostRegion {
        let (mut lab, writers) = written(name).await;
        for i in [0, 2, 3, 4, 5] {
            lab.nodes[i].kill();
        }
        let before_loss = writers.last_acked();
        LostRegion {
            lab,
            writers,
            before_loss,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_regions_shards_fail_over_to_the_survivors_and_its_nodes_rejoin_as_replicas() {
    let LostRegion {
        mut lab,
        writers,
        before_loss,
    } = LostRegion::new("lost").await;

    // The two silent primaries may still take writes where they stand: nothing moves until
    // the operator confirms them down.
    let said = cluster_fails(&lab.path, &["failover", "us-east-2"]);
    assert!(
        said.contains("nothing moved")
            && said.contains("--confirm-down")
            && said.contains(&format!("{} does not answer", lab.addrs[0]))
            && said.contains(&format!("{} does not answer", lab.addrs[2]))
            && !said.contains(&format!("{} does not answer", lab.addrs[1])),
        "{said}"
    );
    assert_eq!(
        primaries_among(&lab.addrs[1..2]).await,
        1,
        "node 1 untouched"
    );

    let failover = || {
        cluster(
            &lab.path,
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
    may_fail_over(lab.addrs[7], false).await;
    let partial = failover();
    let said = String::from_utf8_lossy(&partial.stderr);
    assert!(!partial.status.success(), "{said}");
    assert!(said.contains("1 of 3 shard(s) did not move"), "{said}");
    let done: serde_json::Value = serde_json::from_slice(&partial.stdout).unwrap();
    let refused = &done["shards"][1];
    assert!(refused["error"].is_string(), "{done:#}");
    assert_eq!(refused["old_follows"], serde_json::Value::Null, "{done:#}");
    assert_eq!(
        primaries_among(&lab.addrs[1..2]).await,
        1,
        "node 1 still leads"
    );
    let during = writers.last_acked()[1];
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(writers.last_acked()[1] > during, "shard 1 takes writes");
    may_fail_over(lab.addrs[7], true).await;

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
    assert_eq!(shard["from"]["port"], lab.addrs[1].port(), "{done:#}");
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
    primaries_in(&lab.path, "us-east-2").await;

    // The region comes back with no data: its lab.nodes learn of the takeovers and rejoin as
    // replicas, one primary per shard, and nothing written since is wiped.
    for i in [0, 2, 3, 4, 5] {
        lab.nodes[i].restart().await.unwrap();
    }
    whole(&lab.path).await;
    assert_eq!(primaries_among(&lab.addrs).await, 3);
    primaries_in(&lab.path, "us-east-2").await;
    let after_failover = writers.last_acked();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Only what the lost primaries had acknowledged and not yet sent to us-east-2 may be lost;
    // shard 1, whose primary answered, loses nothing.
    let lossy = [before_loss[0], -1, before_loss[2]];
    let (_, lost) = writers.stop_and_check_after(lab.addrs[6], &lossy).await;
    eprintln!("acknowledged writes lost with the region, per shard: {lost:?}");
    assert!(after_failover.iter().all(|n| *n > 0));
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
        lab,
        writers,
        before_loss,
    } = LostRegion::new("lost-crash").await;
    let alive = [lab.addrs[1], lab.addrs[6], lab.addrs[7], lab.addrs[8]];
    let failover = |crash: Option<&str>| {
        let mut command = cluster(&lab.path, &["failover", "us-east-2", "--confirm-down"]);
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
    primaries_in(&lab.path, "us-east-2").await;
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
    writers.stop_and_check_after(lab.addrs[6], &lossy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_replaces_a_lost_primary_beside_it_never_across_regions() {
    let (mut lab, writers) = written("beside").await;
    // Each shard's primary lost in turn: its replica in us-east-1 (node 3–5) and the one in
    // us-east-2 (6–8) are as far along, and only the first may be promoted by the cluster.
    let mut lossy = vec![-1; 3];
    for (shard, lost_up_to) in lossy.iter_mut().enumerate() {
        *lost_up_to = writers.last_acked()[shard];
        let killed = Instant::now();
        lab.nodes[shard].kill();
        let beside = [lab.addrs[3 + shard], lab.addrs[6 + shard]];
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
    primaries_in(&lab.path, "us-east-1").await;
    let marks = writers.last_acked();
    writers
        .each_writes_past(&marks, Duration::from_secs(10))
        .await;
    // Only what a lost primary had not sent yet may be lost (the cluster's failover does not
    // wait for its replicas).
    writers.stop_and_check_after(lab.addrs[3], &lossy).await;
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
    // The cluster's current epoch as `conn`'s node knows it.
    let current = async |conn: &mut redis::aio::MultiplexedConnection| -> Option<u64> {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(conn)
            .await
            .ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("cluster_current_epoch:"))?
            .trim()
            .parse()
            .ok()
    };
    for _ in 0..50 {
        bump(&mut on_third).await;
        let raised = current(&mut on_third).await;
        // Both must have heard of it first (gossip, slower on a loaded host), or they raise
        // from different epochs.
        let heard = Instant::now() + Duration::from_secs(3);
        while Instant::now() < heard {
            let (on_a_now, on_b_now) = (current(&mut on_a).await, current(&mut on_b).await);
            if raised.is_some() && on_a_now == raised && on_b_now == raised {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
    let (mut lab, writers) = written("tie").await;
    // Shard 0's primary and its replica in us-east-2 — the first to take over — hold the
    // cluster's highest epoch both; then us-east-1 is lost, whole.
    let tied = tie_epochs(lab.addrs[0], lab.addrs[6], lab.addrs[1]).await;
    for node in &mut lab.nodes[..6] {
        node.kill();
    }
    let before_loss = writers.last_acked();
    let out = succeed(&mut cluster(
        &lab.path,
        &["failover", "us-east-2", "--confirm-down"],
    ));
    // Every survivor sees every shard's primary in us-east-2.
    let survivors = &lab.addrs[6..];
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
    for node in &mut lab.nodes[..6] {
        node.restart().await.unwrap();
    }
    whole(&lab.path).await;
    assert_eq!(primaries_among(&lab.addrs).await, 3);
    primaries_in(&lab.path, "us-east-2").await;
    let lossy = [before_loss[0], before_loss[1], before_loss[2]];
    writers.stop_and_check_after(lab.addrs[6], &lossy).await;
}

/// A primary without persistence SIGKILLed and restarted at once through `cluster start-guard`
/// (as its supervisor's `ExecStartPre=` would run it): the guard holds the start while any node
/// still counts it as the shard's primary (exit 75), returns once the replica beside it took the
/// shard over, and the node comes back empty as that replica's replica, syncing *from* it — the
/// shard keeps every write it had replicated. Started at once without the guard, every replica
/// of the shard would have full-synced its empty dataset (docs/runbook.md, measured).
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_restarted_at_once_through_the_start_guard_waits_until_replaced_and_keeps_the_shard()
 {
    let (mut lab, writers) = written("guard").await;
    let mut lossy = vec![-1; 3];
    lossy[0] = writers.last_acked()[0];
    lab.nodes[0].kill();
    let killed = Instant::now();
    let node = lab.addrs[0].to_string();

    // At once: the cluster has not noticed yet (`cluster-node-timeout` 2 s).
    let said = cluster_unfinished(&lab.path, &["start-guard", &node, "--wait-s", "0"]);
    assert!(
        said.contains("still count(s) it as the primary of slots"),
        "{said}"
    );

    let out = succeed(&mut cluster(
        &lab.path,
        &["start-guard", &node, "--wait-s", "30"],
    ));
    eprintln!(
        "the guard let it start {} ms after the SIGKILL: {}",
        killed.elapsed().as_millis(),
        String::from_utf8_lossy(&out).trim()
    );
    assert_eq!(
        primaries_among(&lab.addrs[3..4]).await,
        1,
        "replaced beside it"
    );

    lab.nodes[0].restart().await.unwrap();
    whole(&lab.path).await;
    assert_eq!(
        primaries_among(&lab.addrs[..1]).await,
        0,
        "back as a replica"
    );
    // It synced from the replica that took over: it holds the shard's list again.
    let keys = valkey_dr_lab::cluster::command(lab.addrs[0], &["DBSIZE"]).await;
    assert!(
        matches!(keys, Ok(redis::Value::Int(n)) if n >= 1),
        "{keys:?}"
    );
    let marks = writers.last_acked();
    writers
        .each_writes_past(&marks, Duration::from_secs(10))
        .await;
    writers.stop_and_check_after(lab.addrs[3], &lossy).await;
}
