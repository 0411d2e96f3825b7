//! Moving every shard's primary to the other region at once, planned: whole or not at all.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn an_all_shard_switchover_moves_every_primary_or_none_and_loses_no_acknowledged_write() {
    // Nodes 0–2 lead the shards; 3–5 follow them in us-east-1, 6–8 in us-east-2.
    let (lab, writers) = written("switch").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // One target refuses to take over (an ACL denies it CLUSTER FAILOVER): the two shards that
    // moved hand back, and every primary is where it was.
    may_fail_over(lab.addrs[7], false).await;
    let said = cluster_unfinished(&lab.path, &["switchover", "us-east-2"]);
    assert!(
        said.contains("rolled back") && said.contains("every shard's primary is where it was"),
        "{said}"
    );
    primaries_in(&lab.path, "us-east-1").await;
    may_fail_over(lab.addrs[7], true).await;
    // Whole again (the lab.nodes that handed back have resynced) before the operator tries again.
    let deadline = Instant::now() + Duration::from_secs(15);
    while status(&lab.path)["shards"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["findings"] != serde_json::json!([]))
    {
        assert!(
            Instant::now() < deadline,
            "never whole again: {:#}",
            status(&lab.path)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let out = succeed(&mut cluster(
        &lab.path,
        &["switchover", "us-east-2", "--output", "json"],
    ));
    let done: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(done["moves"].as_array().map(Vec::len), Some(3), "{done:#}");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Every shard's primary now stands in us-east-2, and every acknowledged write — through
    // the rollback and the switchover — is on the new primary.
    primaries_in(&lab.path, "us-east-2").await;
    // Status now places them there: no shard's primary is "outside the writer region".
    let moved = status(&lab.path);
    assert_eq!(moved["writer_region"], "us-east-2", "{moved:#}");
    assert!(
        !moved.to_string().contains("primary_outside_writer_region"),
        "{moved:#}"
    );
    // The cluster may now promote by itself the lab.nodes in us-east-2 only.
    for (i, addr) in lab.addrs.iter().enumerate() {
        assert_eq!(automatic_failover(*addr).await, i >= 6, "node {i}");
    }
    let gaps = writers.stop_and_check(lab.addrs[6]).await;
    eprintln!(
        "longest gap between acknowledged writes per shard (ms): {gaps:?}; switchover: {done}"
    );

    // Moving them back: a switchover to where they already are moves nothing.
    let out = succeed(&mut cluster(&lab.path, &["switchover", "us-east-2"]));
    assert!(String::from_utf8_lossy(&out).contains("already in us-east-2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_switchover_that_dies_at_any_step_loses_nothing_and_a_rerun_completes_it() {
    let (lab, writers) = written("crash").await;
    let regions = ["us-east-2", "us-east-1"];
    for (i, step) in ["paused", "caught-up", "handed-over-1", "handed-over-2"]
        .into_iter()
        .enumerate()
    {
        let to = regions[i % 2];
        let crashed = cluster(&lab.path, &["switchover", to])
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
        while primaries_among(&lab.addrs).await != 3 {
            assert!(
                Instant::now() < deadline,
                "{step}: not one primary per shard"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Run again, it completes the move (and lifts the pauses the dead run left).
        succeed(&mut cluster(&lab.path, &["switchover", to]));
        primaries_in(&lab.path, to).await;
        whole(&lab.path).await;
    }
    let gaps = writers.stop_and_check(lab.addrs[0]).await;
    eprintln!("longest gap between acknowledged writes per shard (ms): {gaps:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_switchover_stalled_past_its_write_pause_hands_no_more_over_and_rolls_back() {
    let (lab, writers) = written("stall").await;
    // A catch-up bound of 500 ms: every primary's writes are paused for 2 × (0.5 + 6) + 2 = 15 s.
    let mut config = std::fs::read_to_string(&lab.path).unwrap();
    config.push_str("[controller]\ncatchup_timeout_ms = 500\n");
    std::fs::write(&lab.path, config).unwrap();
    // The command stands still for 14 s after the first shard's handover: the other primaries'
    // pauses end a second later, and they take writes their targets may not hold yet.
    let out = cluster(&lab.path, &["switchover", "us-east-2"])
        .env("VALKEY_DR_FAULT", "stall-after:handed-over-1:14000")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{said}");
    assert!(
        said.contains("rolled back") && said.contains("write pause on its primary ends"),
        "{said}"
    );
    eprintln!("{said}");
    // Only the first shard had moved, and it handed back: every primary is where it was, and
    // every acknowledged write is there.
    primaries_in(&lab.path, "us-east-1").await;
    writers.stop_and_check(lab.addrs[0]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_restarted_empty_after_its_catch_up_is_not_promoted_and_nothing_is_lost() {
    let (mut lab, writers) = written("empty-target").await;
    // The command stops itself (SIGSTOP) once every target caught up, before any takeover.
    let command = cluster(&lab.path, &["switchover", "us-east-2"])
        .env("VALKEY_DR_FAULT", "stop-after:caught-up")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = command.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !valkey_dr_lab::process::is_stopped(pid) {
        assert!(Instant::now() < deadline, "the switchover never caught up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Meanwhile every target (us-east-2) dies and comes back empty, its nodes.conf kept: still
    // its shard's replica, holding nothing. Its primary is stalled, so it cannot resync yet —
    // the moment an empty node may be told to take over. Stalled for well under the cluster's
    // node timeout, and no primary can vote meanwhile: the cluster promotes nobody by itself.
    for primary in &lab.nodes[..3] {
        primary.signal(libc::SIGSTOP);
    }
    for target in &mut lab.nodes[6..] {
        target.restart().await.unwrap();
    }
    valkey_dr_lab::process::signal(pid, libc::SIGCONT);
    tokio::time::sleep(Duration::from_millis(700)).await;
    for primary in &lab.nodes[..3] {
        primary.signal(libc::SIGCONT);
    }
    let out = command.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    // Not taken over: the move rolls back as a whole, and may be asked again.
    assert_eq!(out.status.code(), Some(75), "{said}");
    assert!(
        said.contains("rolled back") && said.contains("restarted empty since"),
        "{said}"
    );
    eprintln!("{said}");
    primaries_in(&lab.path, "us-east-1").await;
    // Every write the primaries acknowledged is still there (a promoted empty target would have
    // had its old primary resync from it, empty).
    writers.stop_and_check(lab.addrs[0]).await;
    // And once the targets resynced, the switchover asked again moves every shard.
    whole(&lab.path).await;
    succeed(&mut cluster(&lab.path, &["switchover", "us-east-2"]));
    primaries_in(&lab.path, "us-east-2").await;
}
