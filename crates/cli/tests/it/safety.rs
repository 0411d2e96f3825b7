//! Faults at the worst moments, with acknowledged writes counted: a writer restarted empty in
//! either role, a controller crash between promoting the target and demoting the old primary with
//! a restart after the write pause expired, a reverted or truncated state file, and replicas that
//! refuse reads while their link is down.

use std::time::Duration;

use valkey_dr_lab::writer;

use crate::harness::{BIN, TestLab, primaries};
use crate::promotion::writer_config;

fn epoch_is(n: u64) -> impl Fn(&serde_json::Value) -> bool {
    move |s| s["epoch"] == n && s["dns"].to_string().contains(&format!("epoch={n},"))
}

/// Writes `count` keys `<prefix>:<i>` on the node at `ip` and waits until every node holds them.
async fn write_and_replicate(lab: &TestLab, ip: &str, prefix: &str, count: u64) {
    let mut conn = lab.connection(ip).await;
    for i in 0..count {
        // A replica that finished a full sync a moment ago counts toward the writer's quorum for
        // the controller before the writer has its first acknowledgement: the writer may refuse
        // (-NOREPLICAS) for up to about a second. Nothing is lost; the client retries.
        let refused_until = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            let write = redis::cmd("SET")
                .arg(format!("{prefix}:{i}"))
                .arg(i)
                .query_async::<()>(&mut conn)
                .await;
            match write {
                Ok(()) => break,
                Err(e) if e.to_string().contains("NOREPLICAS") => {
                    assert!(std::time::Instant::now() < refused_until, "{e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    let last = format!("{prefix}:{}", count - 1);
    for region in 0..2 {
        for index in 0..2 {
            let mut node = lab.connection(&lab.ip(region, index)).await;
            for _ in 0..400 {
                let v: Option<u64> = redis::cmd("GET")
                    .arg(&last)
                    .query_async(&mut node)
                    .await
                    .unwrap_or(None);
                if v.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
}

/// How many of `<prefix>:0..count` the node at `ip` holds.
async fn held(lab: &TestLab, ip: &str, prefix: &str, count: u64) -> u64 {
    let mut conn = lab.connection(ip).await;
    let keys: Vec<String> = (0..count).map(|i| format!("{prefix}:{i}")).collect();
    let values: Vec<Option<u64>> = redis::cmd("MGET")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    values.iter().filter(|v| v.is_some()).count() as u64
}

/// Restarts a node from its own config file at once, as a supervisor with `Restart=always` does,
/// with no persistence: it comes back empty, in the role its file gives it.
fn restart_empty(lab: &TestLab, region: usize, index: usize) {
    valkey_dr_lab::process::start_node_empty(&lab.spec, region, index).unwrap();
}

/// The measured total loss: the writer fails, a replica is promoted, and then the *promoted*
/// writer crashes and is restarted empty at once. Its config file still names the old primary
/// (the controller never rewrites a writer's file), so it comes back as a replica that neither
/// takes writes nor serves a sync; the controller sees it is off the writer's history and promotes
/// the node that still holds the data — although automatic failovers are blocked after the first.
#[tokio::test(flavor = "multi_thread")]
async fn a_promoted_writer_restarted_empty_loses_nothing_anywhere() {
    let lab = TestLab::start().await;
    write_and_replicate(&lab, &lab.ip(0, 0), "first", 200).await;
    lab.kill_node(0, 0).await;
    lab.wait_until(epoch_is(2)).await;
    // The old writer comes back (empty, as a replica) and is fenced under the new one.
    restart_empty(&lab, 0, 0);
    lab.wait_until(|s| {
        s["nodes"][0]["follows"] == lab.node(0, 1)
            && s["nodes"][0]["link"] == "up"
            && (0..4).all(|n| s["nodes"][n]["keys"].as_u64().is_some_and(|k| k >= 200))
    })
    .await;
    write_and_replicate(&lab, &lab.ip(0, 1), "second", 200).await;

    lab.kill_node(0, 1).await;
    restart_empty(&lab, 0, 1);
    let status = lab.wait_until(epoch_is(3)).await;
    assert_eq!(status["primary"], lab.node(0, 0), "{status:#}");
    let event = lab
        .first_event("writer_restarted_empty")
        .expect("the lost writer was reported");
    assert_eq!(event["node"], lab.node(0, 1));
    assert_eq!(event["role"], "replica");
    let healed = lab
        .wait_until(|s| {
            (0..4).all(|n| s["nodes"][n]["keys"].as_u64().is_some_and(|k| k >= 400))
                && s["findings"] == serde_json::json!(["healthy"])
        })
        .await;
    assert_eq!(primaries(&healed), 1);
    for (region, index) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        let ip = lab.ip(region, index);
        assert_eq!(held(&lab, &ip, "first", 200).await, 200, "{ip}");
        assert_eq!(held(&lab, &ip, "second", 200).await, 200, "{ip}");
    }
}

/// A node whose file has no `replicaof` (a production default) restarts as an empty master: the
/// controller sees its history start over and promotes the replica holding the data within
/// Valkey's default `repl-diskless-sync-delay` (5 s), before the replicas copy the emptiness.
#[tokio::test(flavor = "multi_thread")]
async fn a_writer_restarted_empty_as_a_master_is_replaced_before_its_replicas_copy_it() {
    let lab = TestLab::start().await;
    write_and_replicate(&lab, &lab.ip(0, 0), "kept", 300).await;
    lab.kill_node(0, 0).await;
    valkey_dr_lab::process::drop_replicaof(&lab.spec, 0, 0).unwrap();
    restart_empty(&lab, 0, 0);

    let status = lab.wait_until(epoch_is(2)).await;
    assert_eq!(status["primary"], lab.node(0, 1), "{status:#}");
    let restarted = lab.first_event("writer_restarted_empty").unwrap();
    assert_eq!(restarted["role"], "primary");
    let healed = lab
        .wait_until(|s| {
            s["nodes"][0]["follows"] == lab.node(0, 1)
                && (0..4).all(|n| s["nodes"][n]["keys"].as_u64().is_some_and(|k| k >= 300))
        })
        .await;
    assert_eq!(primaries(&healed), 1);
    assert_eq!(held(&lab, &lab.ip(1, 1), "kept", 300).await, 300);
}

/// The controller dies after recording the intent, before the old primary is demoted, and comes
/// back only after the write pause expired: the old primary has taken writes since (the name still
/// led to it). The recorded intent shows the target took none, so the switchover is rolled back
/// and every acknowledged write survives. (Before the switchover demoted first, the same held for
/// a crash between the promotion and the demotion, which kept the new epoch and wiped them.)
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_before_the_demotion_with_a_late_restart_loses_no_acknowledged_write() {
    let lab = TestLab::start().await;
    lab.kill_controller().await;
    let mut config = lab.spec.controller_config();
    config.controller.catchup_timeout_ms = 1000;
    std::fs::write(lab.config_path(), config.to_toml()).unwrap();
    valkey_dr_lab::process::start_controller(
        &lab.spec,
        BIN.as_ref(),
        &[("VALKEY_DR_FAULT", "crash-after:intent")],
    )
    .unwrap();
    lab.wait_until(|s| s["epoch"] == 1).await;

    let writer_config = writer_config(&lab);
    let (report, ()) = tokio::join!(
        writer::run(&writer_config, tokio::time::sleep(Duration::from_secs(9))),
        async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let out = std::process::Command::new(BIN)
                .args(["promote", "us-east-2", "--config"])
                .arg(lab.config_path())
                .output()
                .unwrap();
            assert!(!out.status.success(), "the controller died mid-switchover");
            // Restart well after the pause (1 s catch-up + 4 s) has expired.
            tokio::time::sleep(Duration::from_secs(6)).await;
            valkey_dr_lab::process::start_controller(&lab.spec, BIN.as_ref(), &[]).unwrap();
        }
    );
    let status = lab
        .wait_until(|s| s["findings"] == serde_json::json!(["healthy"]))
        .await;
    assert_eq!(primaries(&status), 1, "{status:#}");
    let resolved = lab.first_event("intent_resolved").expect("intent settled");
    assert_eq!(resolved["resolution"], "roll_back", "{resolved}");
    assert_eq!(status["primary_region"], "us-east-1");
    let lost = writer::verify(&writer_config, report.acknowledged)
        .await
        .unwrap();
    assert!(report.acknowledged > 100, "{report:?}");
    assert_eq!(lost, 0, "acknowledged writes lost: {report:?}");
}

/// A `state.json` reverted to the previous epoch (a restored backup, a lost write) names a writer
/// that is now a replica. The epoch mark the nodes carry is newer: the controller takes the epoch
/// from it instead of promoting the old writer over the real one.
#[tokio::test(flavor = "multi_thread")]
async fn a_reverted_or_truncated_state_file_never_promotes_an_older_history() {
    let lab = TestLab::start().await;
    let state_path = lab.spec.controller_dir().join("state.json");
    let epoch_one = std::fs::read_to_string(&state_path).unwrap();
    lab.cli(&["promote", "us-east-2"]);
    lab.wait_until(|s| epoch_is(2)(s) && s["findings"] == serde_json::json!(["healthy"]))
        .await;
    write_and_replicate(&lab, &lab.ip(1, 0), "after", 100).await;

    for damage in ["reverted", "truncated"] {
        lab.kill_controller().await;
        let content = match damage {
            "reverted" => epoch_one.clone(),
            _ => epoch_one[..epoch_one.len() / 2].to_string(),
        };
        std::fs::write(&state_path, content).unwrap();
        valkey_dr_lab::process::start_controller(&lab.spec, BIN.as_ref(), &[]).unwrap();
        let status = lab
            .wait_until(|s| s["epoch"] == 2 && s["findings"] == serde_json::json!(["healthy"]))
            .await;
        assert_eq!(status["primary"], lab.node(1, 0), "{damage}: {status:#}");
        assert_eq!(primaries(&status), 1, "{damage}");
        assert!(lab.first_event("epoch_recovered").is_some(), "{damage}");
        assert_eq!(
            held(&lab, &lab.ip(1, 0), "after", 100).await,
            100,
            "{damage}"
        );
    }
}

/// With `replica-serve-stale-data no`, replicas answer `-MASTERDOWN` to reads once their link is
/// down. The observation still reads INFO and ROLE, so they stay candidates and failover works.
#[tokio::test(flavor = "multi_thread")]
async fn failover_works_when_replicas_refuse_stale_reads() {
    let lab = TestLab::start().await;
    for (region, index) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        let mut conn = lab.connection(&lab.ip(region, index)).await;
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("replica-serve-stale-data")
            .arg("no")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    lab.kill_node(0, 0).await;
    let status = lab.wait_until(epoch_is(2)).await;
    assert_eq!(status["primary"], lab.node(0, 1), "{status:#}");
}

/// A controller frozen for 3 s (SIGSTOP: a VM pause, CPU starvation) fails nothing over.
#[tokio::test(flavor = "multi_thread")]
async fn a_controller_stalled_for_three_seconds_fails_nothing_over() {
    let lab = TestLab::start().await;
    let pid: i32 = std::fs::read_to_string(lab.spec.dir.join("controller.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for _ in 0..2 {
        // SAFETY: signals to the controller process this lab started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        tokio::time::sleep(Duration::from_secs(3)).await;
        unsafe { libc::kill(pid, libc::SIGCONT) };
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let status = lab.status().await;
    assert_eq!(status["epoch"], 1, "{status:#}");
    assert!(lab.first_event("failover_started").is_none());
    assert!(lab.first_event("controller_stalled").is_some());
}

/// An old primary that refuses to be demoted (here its ACL forbids REPLICAOF) aborts the
/// switchover before the target is promoted: the command fails and says why, nothing moves, the
/// old primary stays the only master and takes writes again. Once it accepts REPLICAOF, the
/// switchover goes through.
#[tokio::test(flavor = "multi_thread")]
async fn an_old_primary_that_cannot_be_demoted_aborts_the_switchover_with_nothing_changed() {
    let lab = TestLab::start().await;
    // The node closes its clients on every pass while fenced: connect again when it does.
    let on_old_primary = |command: redis::Cmd| {
        let lab = &lab;
        async move {
            let security = lab.spec.security().unwrap();
            let endpoint = valkey_dr_core::Endpoint::new(&lab.ip(0, 0), lab.spec.port);
            let timeouts = valkey_dr_valkey::Timeouts {
                connect: Duration::from_millis(300),
                command: Duration::from_millis(300),
            };
            let mut conn = valkey_dr_valkey::connect(&endpoint, &security, timeouts).await?;
            tokio::time::timeout(
                Duration::from_millis(300),
                command.query_async::<()>(&mut conn),
            )
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
        }
    };
    let acl = |rule: &'static str| {
        let on_old_primary = &on_old_primary;
        async move {
            let mut command = redis::cmd("ACL");
            command.arg("SETUSER").arg("default").arg(rule);
            for _ in 0..50 {
                if on_old_primary(command.clone()).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("ACL SETUSER default {rule} failed");
        }
    };
    acl("-replicaof").await;
    let (ok, said) = crate::harness::outcome(
        std::process::Command::new(BIN)
            .args(["promote", "us-east-2", "--config"])
            .arg(lab.config_path())
            .output()
            .unwrap(),
    );
    assert!(!ok, "{said}");
    assert!(said.contains("could not be demoted"), "{said}");
    let status = lab.status().await;
    assert_eq!(status["epoch"], 1, "{status:#}");
    assert_eq!(primaries(&status), 1, "{status:#}");
    assert_eq!(status["primary"], lab.node(0, 0), "{status:#}");
    // Its writes resume at once.
    let mut set = redis::cmd("SET");
    set.arg("after-the-abort").arg(1);
    on_old_primary(set)
        .await
        .expect("the old primary takes writes again");
    acl("+replicaof").await;
    lab.cli(&["promote", "us-east-2"]);
    let status = lab
        .wait_until(|s| s["nodes"][0]["role"] == "replica" && s["nodes"][0]["link"] == "up")
        .await;
    assert_eq!(primaries(&status), 1);
    assert_eq!(status["primary"], lab.node(1, 0));
}

/// Every demotion closes the demoted node's clients, pub/sub subscribers included, so they
/// reconnect through the name instead of waiting on a replica.
#[tokio::test(flavor = "multi_thread")]
async fn a_switchover_closes_the_old_primarys_subscribers() {
    use futures::StreamExt;
    let lab = TestLab::start().await;
    let endpoint = valkey_dr_core::Endpoint::new(&lab.ip(0, 0), lab.spec.port);
    let client = valkey_dr_valkey::client(&endpoint, &lab.spec.security().unwrap()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("news").await.unwrap();
    lab.cli(&["promote", "us-east-2"]);
    let mut messages = pubsub.on_message();
    let closed = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
    assert!(
        matches!(closed, Ok(None)),
        "the subscriber is still connected to the demoted node"
    );
}

/// When the writer comes back empty and no other node holds its history (every replica is down),
/// nothing can undo the loss: status says so, with the numbers, instead of "healthy", until an
/// operator acknowledges it — also when the state could not be written the moment it was seen.
#[tokio::test(flavor = "multi_thread")]
async fn a_loss_nobody_could_prevent_is_reported_not_called_healthy() {
    let lab = TestLab::start().await;
    write_and_replicate(&lab, &lab.ip(0, 0), "gone", 100).await;
    for (region, index) in [(0, 1), (1, 0), (1, 1)] {
        lab.kill_node(region, index).await;
    }
    lab.kill_node(0, 0).await;
    valkey_dr_lab::process::drop_replicaof(&lab.spec, 0, 0).unwrap();
    restart_empty(&lab, 0, 0);
    // Silence proves nothing: while the other nodes do not answer, they may still hold the
    // history. The controller waits, says why, and the empty writer takes no write.
    let status = lab
        .wait_until(|s| s["findings"].to_string().contains("waiting"))
        .await;
    assert!(status["data_loss_suspected"].is_null(), "{status:#}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(lab.first_event("data_loss_suspected").is_none());
    let mut empty = lab.connection(&lab.ip(0, 0)).await;
    let mut set = redis::cmd("SET");
    set.arg("into-the-void").arg(1);
    let write = set.query_async::<()>(&mut empty);
    // Refused (NOREPLICAS) or held by the controller's pause: never acknowledged.
    let acknowledged = matches!(
        tokio::time::timeout(Duration::from_secs(2), write).await,
        Ok(Ok(()))
    );
    assert!(!acknowledged, "the empty writer acknowledged a write");
    // Every node answers, and none holds the history: now the loss is certain, and reported —
    // also when the state cannot be written at that moment (a directory where the controller
    // writes its next `state.json`): a later pass records it.
    let blocker = lab.spec.controller_dir().join("state.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    for (region, index) in [(0, 1), (1, 0), (1, 1)] {
        restart_empty(&lab, region, index);
    }
    for _ in 0..200 {
        if lab.first_event("data_loss_suspected").is_some()
            && lab.first_event("state_write_failed").is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(lab.first_event("data_loss_suspected").is_some());
    assert!(lab.first_event("state_write_failed").is_some());
    assert!(lab.status().await["data_loss_suspected"].is_null());
    std::fs::remove_dir(&blocker).unwrap();
    // Before, the pass that failed to record it had already taken the empty writer's history as
    // the lineage, and the loss never reached `status`.
    let status = lab
        .wait_until(|s| s["data_loss_suspected"].is_object())
        .await;
    let findings = status["findings"].to_string();
    assert!(findings.contains("data loss suspected"), "{status:#}");
    assert!(!findings.contains("\"healthy\""), "{status:#}");
    assert!(
        status["data_loss_suspected"]["lost_bytes_at_least"]
            .as_u64()
            .is_some_and(|b| b > 0),
        "{status:#}"
    );
    assert!(lab.first_event("data_loss_suspected").is_some());
    lab.cli(&["ack"]);
    let status = lab.status().await;
    assert!(status["data_loss_suspected"].is_null(), "{status:#}");
}
