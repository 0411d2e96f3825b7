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
