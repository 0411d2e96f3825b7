use std::process::Command;
use std::time::Duration;

use valkey_dr_core::Endpoint;
use valkey_dr_valkey::{Security, Timeouts, TlsMaterial};

use crate::harness::{BIN, TestLab};

const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_millis(500),
    command: Duration::from_millis(500),
};

fn password(lab: &TestLab) -> String {
    std::fs::read_to_string(lab.spec.password_file())
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tls_lab_refuses_plain_text_and_untrusted_clients_and_accepts_its_ca() {
    let lab = TestLab::start().await;
    let node = Endpoint::new(&lab.ip(0, 0), lab.spec.port);
    let good = lab.spec.security().unwrap();

    let plain = Security {
        tls: None,
        ..good.clone()
    };
    let Err(error) = valkey_dr_valkey::connect(&node, &plain, TIMEOUTS).await else {
        panic!("plain text is refused");
    };
    assert!(!error.is_empty());

    // A client that trusts another CA must not accept the lab's certificates.
    let other_ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let untrusting = Security {
        tls: Some(TlsMaterial {
            ca_pem: other_ca.cert.pem().into_bytes(),
            client: None,
        }),
        ..good.clone()
    };
    let Err(error) = valkey_dr_valkey::connect(&node, &untrusting, TIMEOUTS).await else {
        panic!("untrusted");
    };
    assert!(
        error.contains("certificate") || error.contains("UnknownIssuer"),
        "{error}"
    );

    let mut conn = valkey_dr_valkey::connect(&node, &good, TIMEOUTS)
        .await
        .expect("the lab's CA is trusted");
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");

    // Replication itself runs over TLS: the cross-region replica is linked through the TLS port.
    let status = lab.status().await;
    assert_eq!(status["nodes"][2]["link"], "up");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_reported_changes_no_dns_and_is_retried_with_backoff() {
    let lab = TestLab::start().await;
    let before = lab.dig(&[&lab.name("demo"), "A", "+short"]);
    let serial = lab.dig_short(&format!("{}.", lab.spec.zone), "SOA");
    let old = password(&lab);
    let new = "rotated-but-not-told-to-the-controller";
    // Rotate the password on every node and drop every client, the controller's included.
    for (r, i) in lab.spec.nodes().collect::<Vec<_>>() {
        let mut conn = lab.connection(&lab.ip(r, i)).await;
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("masterauth")
            .arg(new)
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg(new)
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: redis::Value = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .query_async(&mut conn)
            .await
            .unwrap_or(redis::Value::Nil);
    }
    // Passes now fail with a clear reason and back off.
    let mut failures = Vec::new();
    for _ in 0..80 {
        failures = lab
            .events()
            .into_iter()
            .filter(|e| e["event"] == "reconcile_failed")
            .collect();
        if failures.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failures.len() >= 3, "{failures:?}");
    let error = failures[0]["error"].as_str().unwrap();
    assert!(
        error.contains("refused the controller") && error.contains("authentication failed"),
        "{error}"
    );
    assert!(
        error.contains(&lab.node(0, 0)),
        "the error names a node: {error}"
    );
    let delays: Vec<u64> = failures
        .iter()
        .map(|f| f["retry_in_ms"].as_u64().unwrap())
        .collect();
    assert!(
        delays.windows(2).all(|w| w[1] >= w[0]) && delays[2] > delays[0],
        "backoff grows: {delays:?}"
    );

    assert_eq!(
        lab.dig(&[&lab.name("demo"), "A", "+short"]),
        before,
        "DNS unchanged"
    );
    assert_eq!(
        lab.dig_short(&format!("{}.", lab.spec.zone), "SOA"),
        serial,
        "no DNS write at all"
    );
    assert!(
        lab.first_event("failover_started").is_none(),
        "a refusal is not a failure"
    );

    // Neither password appears anywhere the controller writes.
    let log = std::fs::read_to_string(lab.spec.dir.join("controller.log")).unwrap();
    let events = std::fs::read_to_string(lab.spec.controller_dir().join("events.jsonl")).unwrap();
    for secret in [old.as_str(), new] {
        assert!(
            !log.contains(secret) && !events.contains(secret),
            "a password leaked"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_appear_in_no_log_event_status_or_config_output() {
    let lab = TestLab::start().await;
    lab.cli(&["promote", "us-east-2"]);
    let secret = password(&lab);
    let mut outputs = vec![
        lab.cli(&["status", "--output", "json"]),
        lab.cli(&["status"]),
        lab.cli(&["reconcile"]),
        lab.lab(&["status", "--output", "json"]),
        std::fs::read_to_string(lab.spec.dir.join("controller.log")).unwrap(),
        std::fs::read_to_string(lab.spec.controller_dir().join("events.jsonl")).unwrap(),
        std::fs::read_to_string(lab.config_path()).unwrap(),
    ];
    let check = Command::new(BIN)
        .arg("check-config")
        .arg(lab.config_path())
        .output()
        .unwrap();
    outputs.push(String::from_utf8_lossy(&check.stdout).into_owned());
    for (i, text) in outputs.iter().enumerate() {
        assert!(!text.is_empty(), "output {i} is empty");
        assert!(!text.contains(&secret), "output {i} contains the password");
    }
    // The files that must hold it are the owner's only.
    use std::os::unix::fs::PermissionsExt;
    for path in [
        lab.spec.password_file(),
        lab.spec.app_password_file(),
        lab.spec.dir.join(format!("valkey-{}.conf", lab.ip(0, 0))),
    ] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
}

/// The lab's applications connect as their own user: they write their keys, read the epoch mark,
/// and cannot write it (a forged mark cannot steer a failover) nor steer the node.
#[tokio::test(flavor = "multi_thread")]
async fn the_labs_applications_cannot_write_the_control_keys() {
    let lab = TestLab::start().await;
    let node = Endpoint::new(&lab.ip(0, 0), lab.spec.port);
    let writer = lab.spec.writer("acl-check").unwrap();
    let mut app = valkey_dr_valkey::connect(&node, &writer.security, TIMEOUTS)
        .await
        .unwrap();
    redis::cmd("SET")
        .arg("acl-check:1")
        .arg("x")
        .query_async::<()>(&mut app)
        .await
        .unwrap();
    let mark: Option<String> = redis::cmd("GET")
        .arg(valkey_dr_valkey::EPOCH_KEY)
        .query_async(&mut app)
        .await
        .unwrap();
    assert!(
        mark.is_some_and(|m| m.starts_with('1')),
        "the controller's mark reads back"
    );
    for forged in [
        redis::cmd("SET")
            .arg(valkey_dr_valkey::EPOCH_KEY)
            .arg("999 127.0.0.1:1")
            .clone(),
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("min-replicas-to-write")
            .arg("0")
            .clone(),
    ] {
        let refused = forged.query_async::<()>(&mut app).await.unwrap_err();
        assert_eq!(refused.code(), Some("NOPERM"), "{refused}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_control_socket_is_the_owners_only() {
    use std::os::unix::fs::PermissionsExt;
    let lab = TestLab::start().await;
    let socket = lab.spec.controller_config().control_socket();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot switch to another user to try the socket");
        return;
    }
    // Another user cannot move the writer (nor read status) through it.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "promote",
            "us-east-2",
            "--config",
        ])
        .arg(lab.config_path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "another user moved the writer: {stderr}"
    );
    assert!(
        stderr.contains("Permission denied") || stderr.contains("cannot"),
        "{stderr}"
    );
    assert_eq!(lab.status().await["epoch"], 1, "nothing moved");
}
