//! The Debian package as an operator installs it: built by `scripts/build-deb.sh` (here from the
//! test build of the binary), unpacked into a scratch root, its service unit verified and its
//! hardening scored by systemd-analyze, and the installed binary run against a lab.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::{BIN, TestLab, outcome};

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let (ok, text) = outcome(out);
    assert!(ok, "{program} {args:?}:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn the_package_installs_a_verified_hardened_service_and_a_working_binary() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let built = run(
        "bash",
        &[root.join("scripts/build-deb.sh").to_str().unwrap(), BIN],
    );
    let deb = root.join(built.lines().last().unwrap().trim());
    let deb = deb.to_str().unwrap();

    let contents = run("dpkg-deb", &["--contents", deb]);
    for file in [
        "./usr/bin/valkey-dr",
        "./lib/systemd/system/valkey-dr.service",
        "./etc/valkey-dr/valkey-dr.toml",
        "./usr/share/man/man1/valkey-dr.1.gz",
        "./usr/share/doc/valkey-dr/README.md",
        "./usr/share/doc/valkey-dr/docs/runbook.md",
        "./usr/share/doc/valkey-dr/examples/rules.yml",
    ] {
        assert!(contents.contains(file), "{file} missing:\n{contents}");
    }
    // The config is a conffile: an upgrade keeps the operator's edits.
    let conffiles = run("dpkg-deb", &["--info", deb, "conffiles"]);
    assert_eq!(conffiles.trim(), "/etc/valkey-dr/valkey-dr.toml");
    let control = run("dpkg-deb", &["--field", deb, "Package", "Depends"]);
    assert!(
        control.contains("valkey-dr") && control.contains("adduser"),
        "{control}"
    );

    let scratch = std::env::temp_dir().join(format!("valkey-dr-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    run("dpkg-deb", &["-x", deb, scratch.to_str().unwrap()]);
    // systemd-analyze resolves the unit's dependencies (sysinit.target, …) inside the root.
    run(
        "cp",
        &[
            "-rn",
            "/lib/systemd/system/.",
            scratch.join("lib/systemd/system").to_str().unwrap(),
        ],
    );
    let root_arg = format!("--root={}", scratch.display());
    let unit = "/lib/systemd/system/valkey-dr.service";
    // Warnings (an unknown key, a value systemd cannot parse) do not fail `verify`: none allowed.
    let verified = run("systemd-analyze", &["verify", "--man=no", &root_arg, unit]);
    assert!(
        !verified.contains("valkey-dr.service"),
        "systemd-analyze verify:\n{verified}"
    );
    let security = run(
        "systemd-analyze",
        &["security", "--offline=yes", &root_arg, unit],
    );
    let exposure: f64 = security
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for valkey-dr.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score:\n{security}"));
    assert!(
        exposure <= 2.0,
        "exposure {exposure} (0 best, 10 worst):\n{security}"
    );

    // The installed binary works against a lab.
    let lab = TestLab::start().await;
    let installed = scratch.join("usr/bin/valkey-dr");
    let status = run(
        installed.to_str().unwrap(),
        &["status", "--config", lab.config_path().to_str().unwrap()],
    );
    assert!(status.contains("healthy"), "{status}");
    let manual = run(
        "sh",
        &[
            "-c",
            &format!(
                "zcat {}",
                scratch.join("usr/share/man/man1/valkey-dr.1.gz").display()
            ),
        ],
    );
    assert!(manual.contains(".TH VALKEY-DR 1") && manual.contains("check-config"));
    let _ = std::fs::remove_dir_all(&scratch);
}
