//! `valkey-dr chaos` end to end: one scenario on a lab of its own, judged by its own writers.

use std::process::Command;

use crate::harness::BIN;

#[test]
fn chaos_runs_a_scenario_on_its_own_lab_and_reports_what_the_clients_saw() {
    let dir = std::env::temp_dir().join(format!("valkey-dr-chaos-{}", std::process::id()));
    let out = Command::new(BIN)
        .args(["chaos", "--runs", "1", "--output", "json", "--scenario"])
        .arg("replica-serve-stale-data no")
        .arg("--dir")
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let report = &results[0][0];
    assert_eq!(report["verdict"], "ok", "{report:#}");
    assert_eq!(report["failovers"], 1);
    assert!(report["acknowledged_outside"].as_u64().unwrap() > 100);
    assert!(report["acknowledged_inside"].as_u64().unwrap() > 100);
    assert_eq!(report["lost_outside"], 0);
    assert_eq!(report["lost_inside"], 0);
    assert!(report["final_one_writer"].as_bool().unwrap());
    // The scenario's lab is gone.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
