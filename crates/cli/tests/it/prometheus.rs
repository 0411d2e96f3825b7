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
    assert!(checked.contains("SUCCESS: 11 rules found"), "{checked}");
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
