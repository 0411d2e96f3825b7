//! The alert rules an operator loads (`deploy/prometheus/`): valid for Prometheus's own checker,
//! and each alert fires on the series that should fire it (`promtool test rules`), with
//! Debian's `prometheus` package (`make test` installs it).

use std::path::PathBuf;
use std::process::Command;

use crate::harness::outcome;

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(deploy())
        .output()
        .expect("promtool runs (Debian's prometheus package; `make test-deps` installs it)");
    let (ok, text) = outcome(out);
    assert!(ok, "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", "rules.yml"]);
    assert!(checked.contains("SUCCESS: 12 rules found"), "{checked}");
    promtool(&["check", "config", "prometheus.yml"]);
    let tested = promtool(&["test", "rules", "rules_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// The Grafana dashboard: valid JSON whose every panel has a place and a query, and whose every
/// query is PromQL that Prometheus parses (checked as recording rules by promtool).
#[test]
fn the_dashboards_queries_are_promql() {
    let path = deploy().join("../grafana/valkey-dr.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut queries = 0;
    for (p, panel) in panels.iter().enumerate() {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(
            !title.is_empty() && panel["gridPos"]["w"].is_u64(),
            "panel {p}"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for (t, target) in targets.iter().enumerate() {
            let expr = target["expr"].as_str().expect("expr");
            // A YAML double-quoted string: the queries hold no backslash or double quote but
            // label values, which are quoted with \".
            let quoted = expr.replace('\\', "\\\\").replace('"', "\\\"");
            rules.push_str(&format!(
                "      - record: dashboard_panel_{p}_{t}\n        expr: \"{quoted}\"\n"
            ));
            queries += 1;
        }
    }
    let file = std::env::temp_dir().join(format!("valkey-dr-dashboard-{}.yml", std::process::id()));
    std::fs::write(&file, rules).unwrap();
    let checked = promtool(&["check", "rules", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(
        checked.contains(&format!("SUCCESS: {queries} rules found")),
        "{checked}"
    );
}

/// A Prometheus server this test runs, killed when the test ends.
struct Prometheus {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// GET `path` from `addr` (HTTP/1.0, the whole body).
fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// Waits until `query` (PromQL, URL-safe) returns a result `check` accepts.
async fn wait_for(
    prometheus: &Prometheus,
    path: &str,
    check: impl Fn(&serde_json::Value) -> bool,
    limit: std::time::Duration,
) -> serde_json::Value {
    let until = std::time::Instant::now() + limit;
    let mut last = serde_json::Value::Null;
    while std::time::Instant::now() < until {
        if let Some(body) = http_get(prometheus.addr, path)
            && let Ok(value) = serde_json::from_str::<serde_json::Value>(&body)
        {
            if check(&value) {
                return value;
            }
            last = value;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    panic!("{path}: not as expected within {limit:?}; last answer {last:#}");
}

/// The `ValkeyDrNodeDown` alerts of an `/api/v1/alerts` answer, pending or firing.
fn node_down_alerts(answer: &serde_json::Value) -> Vec<&serde_json::Value> {
    answer["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["labels"]["alertname"] == "ValkeyDrNodeDown")
        .collect()
}

/// Debian's Prometheus 2.42 scrapes the three sites of a highly available lab with the rules
/// operators load: every site is up, exactly one leads, and when a node is killed the
/// node-down alert fires for that node after its `for:` (and only then).
#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_every_site_and_fires_when_a_node_dies() {
    let lab = crate::harness::TestLab::start_ha().await;
    let dir = std::env::temp_dir().join(format!("valkey-dr-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let targets: Vec<String> = lab
        .spec
        .sites
        .iter()
        .map(|site| format!("\"{}\"", lab.spec.site_http(site)))
        .collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
         scrape_configs:\n  - job_name: valkey-dr\n    static_configs:\n      - targets: [{}]\n",
        deploy().join("rules.yml").display(),
        targets.join(", ")
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("prometheus runs (Debian's prometheus package; `make test-deps` installs it)");
    let prometheus = Prometheus { child, addr, dir };
    let limit = std::time::Duration::from_secs(60);

    // Every site scraped, and exactly one of them leads.
    for (query, expected) in [
        ("sum(up%7Bjob%3D%22valkey-dr%22%7D)", "3"),
        ("sum(valkey_dr_leader)", "1"),
    ] {
        wait_for(
            &prometheus,
            &format!("/api/v1/query?query={query}"),
            |v| v["data"]["result"][0]["value"][1] == expected,
            limit,
        )
        .await;
    }

    // A replica in the other region dies: no failover, the node-down alert after 30 s.
    let killed = lab.node(1, 1);
    lab.kill_node(1, 1).await;
    let firing = |v: &serde_json::Value| node_down_alerts(v).iter().any(|a| a["state"] == "firing");
    let pending = wait_for(
        &prometheus,
        "/api/v1/alerts",
        |v| !node_down_alerts(v).is_empty(),
        limit,
    )
    .await;
    assert!(!firing(&pending), "fired before its for: {pending:#}");
    let alerts = wait_for(&prometheus, "/api/v1/alerts", firing, limit).await;
    let down = node_down_alerts(&alerts);
    assert_eq!(down.len(), 1, "{alerts:#}");
    assert_eq!(down[0]["labels"]["node"], killed.as_str(), "{alerts:#}");
    assert_eq!(down[0]["labels"]["region"], lab.spec.regions[1].as_str());
    assert_eq!(
        down[0]["annotations"]["runbook_url"],
        "docs/runbook.md#valkeydrnodedown"
    );
    // Nothing else is wrong with the lab.
    for a in alerts["data"]["alerts"].as_array().unwrap() {
        let name = a["labels"]["alertname"].as_str().unwrap_or_default();
        assert!(
            matches!(name, "ValkeyDrNodeDown" | "ValkeyDrReplicaLinkDown"),
            "{name}: {alerts:#}"
        );
    }
}
