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
