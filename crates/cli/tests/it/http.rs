//! The controller's HTTP endpoint on a real lab: `/metrics` read by the official Prometheus
//! client's OpenMetrics parser before and after a switchover, health, status and events (JSON
//! and server-sent), and webhooks delivered to a receiver on loopback, signed and retried.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::harness::TestLab;

/// One HTTP/1.1 GET; (status, body).
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("the HTTP endpoint listens");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The samples of an OpenMetrics exposition as the official parser reads them:
/// `[{"name", "labels", "value"}]`. The parser rejects anything malformed.
fn parse(exposition: &str) -> Vec<Value> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/venv/bin/python3");
    let script = "import json, sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        out = [{'name': s.name, 'labels': s.labels, 'value': s.value}\n\
               for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]\n\
        print(json.dumps(out))";
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("make test installs prometheus-client in target/venv");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused the exposition: {}\n{exposition}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s["name"] == name
                && labels
                    .iter()
                    .all(|(k, v)| s["labels"][*k].as_str() == Some(*v))
        })
        .and_then(|s| s["value"].as_f64())
}

fn scrape(addr: SocketAddr) -> Vec<Value> {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_health_status_and_events_follow_a_switchover() {
    let lab = TestLab::start().await;
    let http = lab.spec.http_addr();

    assert_eq!(get(http, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(get(http, "/readyz").0, 200);

    let before = scrape(http);
    assert_eq!(sample(&before, "valkey_dr_epoch", &[]), Some(1.0));
    let east = lab.node(0, 0);
    let west = lab.node(1, 0);
    assert_eq!(
        sample(
            &before,
            "valkey_dr_node_info",
            &[("node", &east), ("role", "primary")]
        ),
        Some(1.0)
    );
    for node in [
        lab.node(0, 0),
        lab.node(0, 1),
        lab.node(1, 0),
        lab.node(1, 1),
    ] {
        assert_eq!(
            sample(&before, "valkey_dr_node_up", &[("node", &node)]),
            Some(1.0)
        );
    }
    assert_eq!(
        sample(&before, "valkey_dr_master_link_up", &[("node", &west)]),
        Some(1.0)
    );
    assert!(
        sample(
            &before,
            "valkey_dr_replication_offset_bytes",
            &[("node", &east)]
        )
        .unwrap()
            > 0.0
    );
    assert!(
        sample(
            &before,
            "valkey_dr_reconcile_pass_duration_seconds_count",
            &[]
        )
        .unwrap()
            >= 1.0
    );

    lab.cli(&["promote", "us-east-2"]);

    let after = scrape(http);
    assert_eq!(sample(&after, "valkey_dr_epoch", &[]), Some(2.0));
    assert_eq!(
        sample(
            &after,
            "valkey_dr_node_info",
            &[("node", &west), ("role", "primary")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            "valkey_dr_node_info",
            &[("node", &east), ("role", "replica")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            "valkey_dr_node_info",
            &[("node", &east), ("role", "primary")]
        ),
        None,
        "a node's old role is gone"
    );
    assert_eq!(
        sample(
            &after,
            "valkey_dr_failovers_total",
            &[("kind", "switchover"), ("result", "completed")]
        ),
        Some(1.0)
    );
    let gap = sample(&after, "valkey_dr_switchover_write_gap_seconds_sum", &[]).unwrap();
    assert!(gap > 0.0 && gap < 5.0, "{gap}");
    assert_eq!(
        sample(&after, "valkey_dr_switchover_write_gap_seconds_count", &[]),
        Some(1.0)
    );
    let name = format!("demo.{}.", lab.spec.zone);
    let target = after
        .iter()
        .find(|s| s["name"] == "valkey_dr_dns_target_info" && s["labels"]["name"] == name.as_str())
        .map(|s| s["labels"]["target"].as_str().unwrap().to_string())
        .expect("the name's target is exported");
    assert!(target.contains("us-east-2"), "{target}");
    assert!(
        sample(
            &after,
            "valkey_dr_dns_changes_total",
            &[("result", "applied")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(sample(&after, "valkey_dr_last_failover_timestamp_seconds", &[]).unwrap() > 1.7e9);

    // Status is the same JSON as `valkey-dr status --output json`.
    let (code, body) = get(http, "/api/status");
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["epoch"], 2);
    assert_eq!(status["primary_region"], "us-east-2");

    // Recent events as JSON, and followed as server-sent events.
    let (code, body) = get(http, "/api/events");
    assert_eq!(code, 200);
    let events: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert!(
        events.iter().any(|e| e["event"] == "promotion_done"),
        "{body}"
    );
    let mut stream = TcpStream::connect(http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET /api/events?follow=true HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut seen = String::new();
    let mut buffer = [0u8; 8192];
    while !seen.contains("promotion_done") {
        let n = stream.read(&mut buffer).expect("events keep coming");
        assert!(n > 0, "the stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    assert!(
        seen.contains("text/event-stream") && seen.contains("data: {"),
        "{seen}"
    );
}

/// What a receiver got: (request head, body) per POST.
pub(crate) type Received = Arc<Mutex<Vec<(String, String)>>>;

/// A webhook receiver on loopback: answers 500 to the first POST, 200 to the others, and keeps
/// each (headers, body).
pub(crate) fn receiver() -> (SocketAddr, Received) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buffer = [0u8; 8192];
            while let Ok(read) = stream.read(&mut buffer) {
                request.extend_from_slice(&buffer[..read]);
                let text = String::from_utf8_lossy(&request).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        log.lock()
                            .unwrap()
                            .push((head.to_string(), body.to_string()));
                        break;
                    }
                }
                if read == 0 {
                    break;
                }
            }
            let status = if n == 0 {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (addr, received)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_switchover_reaches_the_webhook_signed_even_after_a_refusal() {
    let (addr, received) = receiver();
    let secret_dir = std::env::temp_dir().join(format!("valkey-dr-hook-{}", std::process::id()));
    std::fs::create_dir_all(&secret_dir).unwrap();
    let secret_file = secret_dir.join("secret");
    std::fs::write(&secret_file, "hook-secret-never-shown\n").unwrap();
    let lab = TestLab::start_with(|spec| {
        spec.webhooks = vec![valkey_dr_core::config::WebhookConfig {
            url: format!("http://{addr}/hooks/valkey-dr"),
            secret_file: secret_file.clone(),
            events: vec![
                valkey_dr_core::config::WebhookEvent::SwitchoverCompleted,
                valkey_dr_core::config::WebhookEvent::Fenced,
            ],
        }];
    })
    .await;
    lab.cli(&["promote", "us-east-2"]);

    // The first POST is refused (500) and retried after half a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let delivered = loop {
        let got = received.lock().unwrap().clone();
        let switchovers: Vec<_> = got
            .iter()
            .filter(|(head, _)| head.contains("x-valkey-dr-event: switchover.completed"))
            .cloned()
            .collect();
        if switchovers.len() >= 2 {
            break switchovers;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "deliveries so far: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (head, body) = &delivered[1];
    assert_eq!(delivered[0].1, *body, "the retry sends the same delivery");
    let expected =
        valkey_dr_controller::webhooks::signature(b"hook-secret-never-shown", body.as_bytes());
    assert!(
        head.contains(&format!("x-valkey-dr-signature: {expected}")),
        "{head}"
    );
    let payload: Value = serde_json::from_str(body).unwrap();
    assert_eq!(payload["event"], "switchover.completed");
    assert_eq!(payload["data"]["to_region"], "us-east-2");
    assert_eq!(payload["data"]["epoch"], 2);
    // Only the subscribed events: no failover.started for a planned switchover.
    assert!(
        received
            .lock()
            .unwrap()
            .iter()
            .all(|(head, _)| !head.contains("failover.")),
    );
    // The secret never reaches the controller's log or events.
    for file in [
        lab.spec.dir.join("controller.log"),
        lab.spec.controller_dir().join("events.jsonl"),
    ] {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains("hook-secret-never-shown"),
            "{}",
            file.display()
        );
    }
    let _ = std::fs::remove_dir_all(&secret_dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_failover_is_timed_from_detection_to_dns() {
    let lab = TestLab::start().await;
    lab.kill_node(0, 0).await;
    lab.wait_until(|s| s["epoch"] == 2).await;
    // The pass that promoted also commits DNS; scrape until it has.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (samples, completed) = loop {
        let samples = scrape(lab.spec.http_addr());
        let completed = samples
            .iter()
            .find(|s| {
                s["name"] == "valkey_dr_failovers_total" && s["labels"]["result"] == "completed"
            })
            .cloned();
        if let Some(completed) = completed {
            break (samples, completed);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no completed failover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(completed["value"], 1.0);
    assert_eq!(
        sample(&samples, "valkey_dr_failover_duration_seconds_count", &[]),
        Some(1.0)
    );
    // From the first failed probe to DNS committed: at least the down_after window, seconds.
    let duration = sample(&samples, "valkey_dr_failover_duration_seconds_sum", &[]).unwrap();
    assert!((0.5..15.0).contains(&duration), "{duration}");
    let events = lab.events();
    let done = events
        .iter()
        .find(|e| e["event"] == "failover_completed")
        .expect("failover_completed is an event");
    assert_eq!(done["epoch"], 2);
    assert_eq!(done["new_primary"], lab.node(0, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_token_and_tls_only_authorized_clients_read_the_endpoint() {
    let lab = TestLab::start().await;
    // The lab's own CA signs a certificate for the endpoint's address.
    let dir = lab.spec.dir.join("http-tls");
    std::fs::create_dir_all(&dir).unwrap();
    let http = lab.spec.http_addr();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // Distinct names: a leaf whose subject equals its issuer reads as self-signed.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![http.ip().to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "controller");
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("token"), "metrics-token-never-shown\n").unwrap();

    lab.kill_controller().await;
    let mut config = lab.spec.main_config();
    config.http = Some(valkey_dr_core::config::HttpConfig {
        listen: http.to_string(),
        token_file: Some(dir.join("token")),
        tls_cert_file: Some(dir.join("cert.pem")),
        tls_key_file: Some(dir.join("key.pem")),
    });
    std::fs::write(lab.config_path(), config.to_toml()).unwrap();
    valkey_dr_lab::process::start_controller(&lab.spec, crate::harness::BIN.as_ref(), &[]).unwrap();
    lab.wait_until(|s| s["epoch"] == 1).await;

    // Python's urllib: the certificate chain and the address are verified.
    let fetch = |path: &str, token: Option<&str>| {
        let script = format!(
            "import ssl, sys, urllib.request, urllib.error\n\
             ctx = ssl.create_default_context(cafile='{ca}')\n\
             req = urllib.request.Request('https://{http}{path}')\n\
             {auth}\n\
             try:\n    r = urllib.request.urlopen(req, context=ctx, timeout=10); print(r.status); print(r.read().decode()[:200])\n\
             except urllib.error.HTTPError as e:\n    print(e.code)\n",
            ca = dir.join("ca.pem").display(),
            auth = token
                .map(|t| format!("req.add_header('Authorization', 'Bearer {t}')"))
                .unwrap_or_default(),
        );
        let out = Command::new("python3")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(fetch("/metrics", None).starts_with("401"));
    assert!(fetch("/metrics", Some("wrong-token")).starts_with("401"));
    let answer = fetch("/metrics", Some("metrics-token-never-shown"));
    assert!(
        answer.starts_with("200") && answer.contains("valkey_dr_"),
        "{answer}"
    );
    // Health checks need no token (load balancers probe them).
    assert!(fetch("/healthz", None).starts_with("200"));
    // Plain HTTP is not served.
    let mut plain = TcpStream::connect(http).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = write!(plain, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!String::from_utf8_lossy(&answer).contains("ok"));
    let log = std::fs::read_to_string(lab.spec.dir.join("controller.log")).unwrap();
    assert!(!log.contains("metrics-token-never-shown"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_metrics_port_never_stops_the_controller_and_is_retried() {
    let lab = TestLab::start().await;
    lab.kill_controller().await;
    // Something else holds the endpoint's address when the controller starts: a port the test
    // bound itself (rebinding the lab's own could race whatever took it meanwhile).
    let squatter = std::net::TcpListener::bind((lab.spec.http_addr().ip(), 0)).unwrap();
    let http = squatter.local_addr().unwrap();
    let mut config = lab.spec.main_config();
    config.http = Some(valkey_dr_core::config::HttpConfig {
        listen: http.to_string(),
        token_file: None,
        tls_cert_file: None,
        tls_key_file: None,
    });
    std::fs::write(lab.config_path(), config.to_toml()).unwrap();
    valkey_dr_lab::process::start_controller(&lab.spec, crate::harness::BIN.as_ref(), &[]).unwrap();
    lab.wait_until(|s| s["epoch"] == 1).await;
    // The controller does its work (a switchover) while its endpoint is unavailable.
    lab.cli(&["promote", "us-east-2"]);
    let reported = lab
        .events()
        .into_iter()
        .find(|e| e["event"] == "http_unavailable")
        .expect("the taken port is reported");
    assert_eq!(reported["listen"], http.to_string());
    drop(squatter);
    // Retried with backoff (1 s, 2 s, …): the endpoint comes up on its own.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(http).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the endpoint never came up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(sample(&scrape(http), "valkey_dr_epoch", &[]), Some(2.0));
    assert!(lab.events().iter().any(|e| e["event"] == "http_listening"));
}
