use std::process::Command;

use crate::harness::BIN;

/// `check-config` on a bad file fails with an error that names the field and the fix.
#[test]
fn check_config_names_the_field_and_the_fix() {
    let dir = std::env::temp_dir().join(format!("valkey-dr-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("ttl = 0", "dns.ttl"),
        ("ttl = 5\nbogus = 1", "unknown field `bogus`"),
    ];
    for (dns_extra, expected) in cases {
        let path = dir.join("bad.toml");
        std::fs::write(
            &path,
            format!(
                "primary_region = \"a\"\n[[regions]]\nname = \"a\"\nnodes = [{{ host = \"127.0.0.1\" }}]\n\
                 [[regions]]\nname = \"b\"\nnodes = [{{ host = \"127.0.0.2\" }}]\n\
                 [dns]\nzone = \"z.test\"\nglobal_name = \"demo\"\n{dns_extra}\n"
            ),
        )
        .unwrap();
        let out = Command::new(BIN)
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reader that goes away (`valkey-dr check-config … | head -1`) ends the command quietly, as
/// it ends any Unix tool — it used to panic in `println!` ("failed printing to stdout").
#[test]
fn a_closed_stdout_ends_a_command_without_a_panic() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../valkey-dr.toml");
    // The operator's commands, and the lab's tools (`chaos --list` prints from their module).
    for args in [
        &["check-config", example][..],
        &["chaos", "--list", "--netns"],
    ] {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Closed before the command writes a byte: its first write meets a broken pipe.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.status.success(), "{args:?}: {:?}: {stderr}", out.status);
    }
}
