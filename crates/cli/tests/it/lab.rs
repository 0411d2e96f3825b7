use std::process::Command;

use crate::harness::BIN;

fn lab(args: &[&str], dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("lab")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap();
    crate::harness::outcome(out)
}

/// The CLI lifecycle: `up` twice starts one copy, `down` leaves no process behind.
#[test]
fn lab_up_is_single_copy_and_down_leaves_no_process() {
    let free = valkey_dr_lab::LabSpec::on_free_block(std::path::PathBuf::new(), std::process::id())
        .expect("a free loopback block");
    let (block, port) = (free.block, free.port);
    let dir = std::env::temp_dir().join(format!("valkey-dr-lifecycle-{block}-{port}"));
    let dns = format!("127.{block}.0.53:{port}");
    let (port, block) = (port.to_string(), block.to_string());
    let up = ["up", "--port", &port, "--block", &block, "--dns", &dns];
    let (ok, out) = lab(&up, &dir);
    assert!(ok, "{out}");
    assert!(out.contains("lab up in"), "{out}");
    let spec = valkey_dr_lab::LabSpec::load(&dir).unwrap();
    let pids: Vec<i32> = valkey_dr_lab::process::processes(&spec.dir)
        .iter()
        .map(|p| p.pid.unwrap())
        .collect();
    assert_eq!(
        pids.len(),
        11,
        "four nodes, the link, three etcd members, three controllers"
    );

    let (ok, out) = lab(&up, &dir);
    assert!(ok && out.contains("already running"), "{out}");
    let again: Vec<i32> = valkey_dr_lab::process::processes(&spec.dir)
        .iter()
        .map(|p| p.pid.unwrap())
        .collect();
    assert_eq!(again, pids, "no second copy was started");

    // A node started again while it runs is refused: the second server would fail to bind,
    // but only after it wrote its pid over the first's, which `down` would then miss.
    let pidfile = spec.node_pidfile(0, 1);
    let before = std::fs::read_to_string(&pidfile).unwrap();
    let again = valkey_dr_lab::process::start_node(&spec, 0, 1);
    assert!(
        again
            .as_ref()
            .is_err_and(|e| e.to_string().contains("already running")),
        "{again:?}"
    );
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), before);

    let (ok, out) = lab(&["status", "--output", "json"], &dir);
    assert!(ok, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["status"]["epoch"], 1);

    let (ok, out) = lab(&["down"], &dir);
    assert!(ok && out.contains("stopped 11 process(es)"), "{out}");
    for pid in pids {
        assert!(
            !valkey_dr_lab::process::is_alive(pid),
            "process {pid} survived lab down"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
