//! The status page in a real headless Chromium (Debian's `chromium`) against a running lab: what
//! it shows before and after a switchover, and a screenshot (target/status-page.png).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::TestLab;

/// The page's DOM after its scripts ran (`--dump-dom`), or a screenshot when `screenshot` is set.
fn chromium(url: &str, profile: &Path, screenshot: Option<&Path>) -> String {
    let mut command = Command::new("chromium");
    // The flags that keep Chromium off the network on a closed machine, and a fresh profile.
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1280,1100",
        "--virtual-time-budget=4000",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    match screenshot {
        Some(path) => command.arg(format!("--screenshot={}", path.display())),
        None => command.arg("--dump-dom"),
    };
    let out = command
        .arg(url)
        .output()
        .expect("make test installs chromium");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_the_writer_and_follows_a_switchover() {
    let lab = TestLab::start().await;
    let url = format!("http://{}/", lab.spec.http_addr());
    let profile = lab.spec.dir.join("chromium");

    let before = chromium(&url, &profile, None);
    for expected in [
        "epoch <b>1</b>",
        "us-east-1 — writer's region",
        &lab.node(0, 0),
        &lab.node(1, 1),
        "healthy",
        &format!("demo.{}.", lab.spec.zone),
    ] {
        assert!(
            before.contains(expected),
            "before: missing {expected}\n{before}"
        );
    }

    lab.cli(&["promote", "us-east-2"]);

    let after = chromium(&url, &profile, None);
    for expected in [
        "epoch <b>2</b>",
        "us-east-2 — writer's region",
        "promotion done",
        "us-east-1 → us-east-2, epoch 2, writes paused",
        "switch_dns",
    ] {
        assert!(
            after.contains(expected),
            "after: missing {expected}\n{after}"
        );
    }
    assert!(!after.contains("us-east-1 — writer's region"));

    let png: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/status-page.png");
    let _ = std::fs::remove_file(&png);
    chromium(&url, &profile, Some(&png));
    let bytes = std::fs::read(&png).expect("a screenshot was written");
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "{} bytes",
        bytes.len()
    );
}
