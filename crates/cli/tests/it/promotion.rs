use std::time::Duration;

use crate::harness::TestLab;
use valkey_dr_lab::writer;

#[tokio::test(flavor = "multi_thread")]
async fn initial_dns_matches_the_topology_and_promote_moves_it() {
    let lab = TestLab::start().await;
    let demo = lab.name("demo");
    assert_eq!(
        lab.dig_short(&demo, "CNAME"),
        vec![lab.name("primary.us-east-1")]
    );
    assert_eq!(
        lab.dig_short(&demo, "A"),
        vec![lab.name("primary.us-east-1"), lab.ip(0, 0)]
    );
    assert_eq!(
        lab.dig_short(&lab.name("primary.us-east-1"), "A"),
        vec![lab.ip(0, 0)]
    );
    assert_eq!(
        lab.dig_short(&lab.name("reader.us-east-1"), "A"),
        vec![lab.ip(0, 1)]
    );
    assert_eq!(
        lab.dig_short(&lab.name("primary.us-east-2"), "A"),
        vec![lab.ip(1, 0)]
    );
    assert_eq!(
        lab.dig_short(&lab.name("reader.us-east-2"), "A"),
        vec![lab.ip(1, 1)]
    );
    assert_eq!(
        lab.dig_short(&lab.name("_valkey-dr.demo"), "TXT"),
        vec!["heritage=valkey-dr,owner=valkey-dr-lab,epoch=1,primary=us-east-1"]
    );
    let serial_before = soa_serial(&lab);

    let out = lab.cli(&["promote", "us-east-2", "--output", "json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["epoch"], 2);
    assert_eq!(
        report["new_primary"],
        format!("{}:{}", lab.ip(1, 0), lab.spec.port)
    );
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "preflight",
            "fence",
            "wait_catch_up",
            "promote",
            "switch_dns",
            "release",
            "repoint",
            "verify"
        ]
    );

    assert_eq!(
        lab.dig_short(&demo, "A"),
        vec![lab.name("primary.us-east-2"), lab.ip(1, 0)]
    );
    assert_eq!(
        lab.dig_short(&lab.name("_valkey-dr.demo"), "TXT"),
        vec!["heritage=valkey-dr,owner=valkey-dr-lab,epoch=2,primary=us-east-2"]
    );
    assert!(
        soa_serial(&lab) > serial_before,
        "the SOA serial rises with every change"
    );

    // The old primary region follows the new writer: the old primary heads it.
    let status = lab
        .wait_until(|s| s["findings"] == serde_json::json!(["healthy"]))
        .await;
    let role = |ip: String| {
        let node = format!("{ip}:{}", lab.spec.port);
        let n = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == node)
            .unwrap()
            .clone();
        (
            n["role"].as_str().unwrap().to_string(),
            n["follows"].as_str().map(str::to_string),
        )
    };
    let writer = format!("{}:{}", lab.ip(1, 0), lab.spec.port);
    assert_eq!(role(lab.ip(1, 0)), ("primary".into(), None));
    assert_eq!(role(lab.ip(0, 0)), ("replica".into(), Some(writer)));
    assert_eq!(
        role(lab.ip(0, 1)),
        (
            "replica".into(),
            Some(format!("{}:{}", lab.ip(0, 0), lab.spec.port))
        )
    );

    // And back: a second promotion raises the epoch again.
    lab.cli(&["promote", "us-east-1"]);
    assert_eq!(
        lab.dig_short(&demo, "A"),
        vec![lab.name("primary.us-east-1"), lab.ip(0, 0)]
    );
    assert_eq!(
        lab.dig_short(&lab.name("_valkey-dr.demo"), "TXT"),
        vec!["heritage=valkey-dr,owner=valkey-dr-lab,epoch=3,primary=us-east-1"]
    );
}

fn soa_serial(lab: &TestLab) -> u64 {
    let soa = lab.dig_short(&format!("{}.", lab.spec.zone), "SOA");
    soa[0].split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_written_before_a_promotion_are_readable_through_the_name_after_it() {
    let lab = TestLab::start().await;
    let config = valkey_dr_lab::writer::WriterConfig {
        prefix: "before".into(),
        ..writer_config(&lab)
    };
    // Write a fixed batch through the name, then promote, then read through the name.
    let report = writer::run(&config, tokio::time::sleep(Duration::from_millis(300))).await;
    assert!(report.acknowledged > 0);
    assert_eq!(report.targets, vec![lab.ip(0, 0)]);
    lab.cli(&["promote", "us-east-2"]);
    assert_eq!(
        writer::verify(&config, report.acknowledged).await.unwrap(),
        0
    );
    let mut conn = lab
        .connection(&lab.dig_short(&lab.name("demo"), "A")[1])
        .await;
    let role: redis::Value = redis::cmd("ROLE").query_async(&mut conn).await.unwrap();
    assert!(
        format!("{role:?}").contains("master"),
        "the name leads to the new writer"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writer_hammering_the_name_during_promote_loses_no_acknowledged_write() {
    let lab = TestLab::start().await;
    let config = valkey_dr_lab::writer::WriterConfig {
        prefix: "hammer".into(),
        ..writer_config(&lab)
    };
    let promote = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let out = tokio::process::Command::new(crate::harness::BIN)
            .args(["promote", "us-east-2", "--config"])
            .arg(lab.config_path())
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let report = writer::run(&config, promote).await;
    assert_eq!(
        report.targets,
        vec![lab.ip(0, 0), lab.ip(1, 0)],
        "the writer followed the name"
    );
    assert!(report.acknowledged > 100, "{report:?}");
    let lost = writer::verify(&config, report.acknowledged).await.unwrap();
    assert_eq!(lost, 0, "acknowledged writes lost: {report:?}");
}

pub fn writer_config(lab: &TestLab) -> valkey_dr_lab::writer::WriterConfig {
    lab.spec.writer("w").unwrap()
}
