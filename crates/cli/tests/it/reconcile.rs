use std::time::Duration;

use crate::harness::TestLab;

fn applied(lab: &TestLab) -> u64 {
    let out = lab.cli(&["reconcile"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["applied"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_reconcile_pass_changes_nothing() {
    let lab = TestLab::start().await;
    // Let the controller settle (readers may still be joining), then passes must be no-ops.
    for _ in 0..20 {
        if applied(&lab) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let serial = lab.dig_short(&format!("{}.", lab.spec.zone), "SOA");
    assert_eq!(applied(&lab), 0);
    assert_eq!(applied(&lab), 0);
    assert_eq!(
        lab.dig_short(&format!("{}.", lab.spec.zone), "SOA"),
        serial,
        "no write, no serial change"
    );
    let events = std::fs::read_to_string(lab.spec.controller_dir().join("events.jsonl")).unwrap();
    let applied_events = events
        .lines()
        .filter(|l| l.contains("\"event\":\"dns_applied\""))
        .count();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = std::fs::read_to_string(lab.spec.controller_dir().join("events.jsonl")).unwrap();
    assert_eq!(
        events
            .lines()
            .filter(|l| l.contains("\"event\":\"dns_applied\""))
            .count(),
        applied_events,
        "timer passes on a settled topology write nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_node_restarted_as_a_master_is_never_served_and_is_fenced() {
    let lab = TestLab::start().await;
    let rogue_ip = lab.ip(1, 0);
    let rogue = format!("{rogue_ip}:{}", lab.spec.port);
    lab.kill_node(1, 0).await;
    // The controller moves the region's names off the dead node.
    lab.wait_until(|s| {
        s["dns"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| !r["values"].to_string().contains(&rogue_ip))
    })
    .await;

    // Restart it without persistence and without `replicaof`: an empty, writable master.
    let conf =
        std::fs::read_to_string(lab.spec.dir.join(format!("valkey-{rogue_ip}.conf"))).unwrap();
    let conf: String = conf
        .lines()
        .filter(|l| !l.starts_with("replicaof"))
        .map(|l| format!("{l}\n"))
        .collect();
    let path = lab.spec.dir.join("restarted.conf");
    std::fs::write(&path, conf).unwrap();
    let status =
        std::process::Command::new(valkey_dr_lab::process::valkey_server_binary().unwrap())
            .arg(&path)
            .status()
            .unwrap();
    assert!(status.success());

    // It is fenced: demoted to a replica of its region's head, which took over following the
    // writer when it died.
    let head = format!("{}:{}", lab.ip(1, 1), lab.spec.port);
    lab.wait_until(|s| {
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node"] == rogue && n["follows"] == head && n["link"] == "up")
    })
    .await;
    assert_eq!(
        lab.dig_short(&lab.name("demo"), "A")[1],
        lab.ip(0, 0),
        "the writer's name never moved"
    );

    // The event stream shows the order: seen as a master, fenced, and no DNS plan in between
    // (or before the kill's recovery) ever named it.
    let events = std::fs::read_to_string(lab.spec.controller_dir().join("events.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen_master = events
        .iter()
        .position(|e| {
            e["event"] == "observation_changed" && e["node"] == rogue && e["now"] == "primary"
        })
        .expect("the controller saw the rogue master");
    let fenced = events
        .iter()
        .position(|e| e["event"] == "fenced" && e["node"] == rogue)
        .expect("the rogue master was fenced");
    assert!(seen_master < fenced);
    for e in &events[seen_master..fenced] {
        if e["event"] == "dns_plan" {
            assert!(
                !e.to_string().contains(&rogue_ip),
                "a plan named the rogue master: {e}"
            );
        }
    }
    // Over several passes after that, the names stay right.
    for _ in 0..5 {
        assert_eq!(lab.dig_short(&lab.name("demo"), "A")[1], lab.ip(0, 0));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_that_cannot_catch_up_aborts_the_promotion_and_changes_nothing() {
    let lab = TestLab::start().await;
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["lab", "partition", "--dir"])
        .arg(&lab.spec.dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    // A write after the cut: the secondary can no longer reach the writer's offset.
    let mut conn = lab.connection(&lab.ip(0, 0)).await;
    let _: () = redis::cmd("SET")
        .arg("after-cut")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();

    let out = std::process::Command::new(crate::harness::BIN)
        .args(["promote", "us-east-2", "--config"])
        .arg(lab.config_path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("did not catch up") && stderr.contains("unpaused"),
        "{stderr}"
    );

    assert_eq!(lab.dig_short(&lab.name("demo"), "A")[1], lab.ip(0, 0));
    assert!(lab.dig_short(&lab.name("_valkey-dr.demo"), "TXT")[0].contains("epoch=1,"));
    // The old writer takes writes again at once (the pause was lifted, not left to expire). Its
    // self-fence may refuse them for a moment: cut off from its replica outside the region, it
    // refuses until the controller's next pass lowers its quorum (the controller still reaches
    // both regions, so the writer is not the one cut off).
    let started = std::time::Instant::now();
    loop {
        let write = redis::cmd("SET")
            .arg("after-abort")
            .arg(1)
            .query_async::<()>(&mut conn)
            .await;
        match write {
            Ok(()) => break,
            Err(e) if e.to_string().contains("NOREPLICAS") => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(started.elapsed() < Duration::from_secs(3), "writes refused");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "writes were left paused"
    );
    let status = lab.status().await;
    assert_eq!(status["epoch"], 1);
}
