//! scripts/backports-source.sh: the backports source follows the machine's own Debian source
//! (mirror and keyring), whatever format it is written in.

use std::path::Path;
use std::process::Command;

fn derive(sources: &[(&str, &str)]) -> (bool, String) {
    let root = std::env::temp_dir().join(format!(
        "valkey-dr-apt-{}-{}",
        std::process::id(),
        sources.len()
    ));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("sources.list.d")).unwrap();
    for (file, text) in sources {
        std::fs::write(root.join(file), text).unwrap();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/backports-source.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg("bookworm")
        .arg(&root)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&root);
    crate::harness::outcome(out)
}

#[test]
fn the_backports_source_uses_the_machines_mirror_and_keyring() {
    let deb822 = "Types: deb\n# a comment\nURIs: http://mirror.internal:8080/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://mirror.internal:8080/debian-security\nSuites: bookworm-security\nComponents: main\n";
    let (ok, out) = derive(&[("sources.list.d/debian.sources", deb822)]);
    assert!(ok, "{out}");
    assert_eq!(
        out,
        "Types: deb\nURIs: http://mirror.internal:8080/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    );

    let one_line = "# deb http://old bookworm main\ndeb [arch=amd64 signed-by=/etc/apt/keyrings/corp.gpg] http://apt.corp/debian bookworm main contrib\n";
    let (ok, out) = derive(&[("sources.list", one_line)]);
    assert!(ok, "{out}");
    assert!(
        out.contains("URIs: http://apt.corp/debian\n")
            && out.contains("Signed-By: /etc/apt/keyrings/corp.gpg\n"),
        "{out}"
    );

    // Only the security suite, or only comments: no guess at a mirror.
    let security_only =
        "Types: deb\nURIs: http://x/debian-security\nSuites: bookworm-security\nComponents: main\n";
    let (ok, out) = derive(&[("sources.list.d/debian.sources", security_only)]);
    assert!(
        !ok && out.contains("no apt source names the bookworm suite"),
        "{out}"
    );
}
