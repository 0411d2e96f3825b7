//! The three-host install guide (`docs/three-sites.md`) run as written by
//! `scripts/three-hosts.sh`: three network namespaces stand for the hosts, each with its own
//! address and filesystem, the package (built here from the test build of the binary) installed
//! with apt-get, etcd, Valkey and valkey-dr started from their units' own commands, TLS
//! everywhere. Then the writer's host is killed outright.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::{BIN, as_root, needs_sudo, outcome};

const EAST: &str = "192.0.2.1";
const WEST: &str = "192.0.2.2";
const WEST_SECOND: &str = "192.0.2.12";
const WITNESS: &str = "192.0.2.3";
const NAME: &str = "demo.valkey-dr.live";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The hosts, taken down (namespaces and all) when the test ends, however it ends.
struct ThreeHosts {
    dir: PathBuf,
    sudo: bool,
}

impl ThreeHosts {
    fn script(&self, args: &[&str]) -> (bool, String) {
        let script = repo().join("scripts/three-hosts.sh");
        let mut full = vec!["bash", script.to_str().unwrap()];
        full.extend_from_slice(args);
        outcome(as_root(self.sudo, &full).output().unwrap())
    }

    /// A command on `host`; its output (it must succeed).
    fn on(&self, host: &str, command: &str) -> String {
        let (ok, text) =
            self.script(&["on", self.dir.to_str().unwrap(), host, "sh", "-c", command]);
        assert!(ok, "on {host}: {command}:\n{text}");
        text
    }

    /// What `host`'s own site's DNS server answers for the name (the last line: the address).
    fn answer(&self, host: &str, server: &str) -> String {
        let text = self.on(
            host,
            &format!("dig +short +time=1 +tries=1 @{server} {NAME} A || true"),
        );
        text.lines().last().unwrap_or("").trim().to_string()
    }

    /// Waits until `host`'s site answers one of `addresses` for the name (at most `limit`); the
    /// answer.
    fn wait_answer(&self, host: &str, server: &str, addresses: &[&str], limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let answer = self.answer(host, server);
            if addresses.contains(&answer.as_str()) {
                return answer;
            }
            assert!(
                start.elapsed() < limit,
                "{host}'s DNS ({server}) answers {answer:?} for {NAME}, not {addresses:?}, after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// valkey-cli on `host` as the applications' user, over TLS, to `node`.
    fn app(&self, host: &str, node: &str, command: &str) -> String {
        self.on(
            host,
            &format!(
                "REDISCLI_AUTH=$(cat pki/app-password) valkey-cli --tls --cacert pki/ca.pem \
                 --user app -h {node} -p 6379 {command}"
            ),
        )
        .trim()
        .to_string()
    }

    /// `command` (a write) on `node` as the applications' user, retried while the node refuses
    /// it for want of a synced replica (`NOREPLICAS`), at most 15 s; how long that took.
    fn write(&self, host: &str, node: &str, command: &str) -> Duration {
        let start = Instant::now();
        loop {
            let reply = self.app(host, node, command);
            if reply == "OK" {
                return start.elapsed();
            }
            assert!(
                reply.starts_with("NOREPLICAS") && start.elapsed() < Duration::from_secs(15),
                "{command} on {node} after {:?}: {reply}",
                start.elapsed()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for ThreeHosts {
    fn drop(&mut self) {
        let _ = self.script(&["down", self.dir.to_str().unwrap()]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_three_host_guide_installs_and_survives_the_loss_of_a_host() {
    // The guide's ACL line for applications is the one the lab uses and the tests check.
    let guide = std::fs::read_to_string(repo().join("docs/three-sites.md")).unwrap();
    let rules = valkey_dr_valkey::acl::application_rules().join(" ");
    assert!(
        guide.contains(&format!("user app on >$(cat pki/app-password) {rules}")),
        "docs/three-sites.md's application user differs from application_rules(): {rules}"
    );

    let dir = std::env::temp_dir().join(format!("valkey-dr-three-hosts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let built = outcome(
        std::process::Command::new("bash")
            .arg(repo().join("scripts/build-deb.sh"))
            .args([BIN, dir.join("deb").to_str().unwrap()])
            .output()
            .unwrap(),
    );
    assert!(built.0, "build-deb: {}", built.1);
    let deb = built.1.lines().last().unwrap().trim().to_string();

    let hosts = ThreeHosts {
        dir: dir.join("hosts"),
        sudo: needs_sudo(),
    };
    let dir_arg = hosts.dir.to_str().unwrap().to_string();
    let (ok, text) = hosts.script(&["up", &dir_arg, &deb]);
    assert!(ok, "three-hosts up (needs root or sudo -n):\n{text}");

    // The guide's last block checked that every site answers; its output is in the log.
    let witness_log = std::fs::read_to_string(hosts.dir.join("witness.log")).unwrap();
    assert!(
        witness_log.contains("site witness · leader"),
        "status at the witness:\n{witness_log}"
    );
    for (host, server) in [("east", EAST), ("west", WEST), ("witness", WITNESS)] {
        hosts.wait_answer(host, server, &[EAST], Duration::from_secs(10));
    }

    // Applications write through the name over TLS; their user cannot touch the control keys.
    let writer = hosts.answer("witness", WITNESS);
    // A writer takes writes once a replica has synced from it (`min-replicas-to-write 1` at rest).
    hosts.write("witness", &writer, "SET guide-key before-the-loss");
    // Both direct replicas (east's second node, west's first) have it.
    assert_eq!(
        hosts.app("witness", &writer, "WAIT 2 5000"),
        "2",
        "replicated"
    );
    let refused = hosts.app("witness", &writer, "SET __valkey-dr:epoch 99");
    assert!(refused.contains("NOPERM"), "control key written: {refused}");

    // The writer's host dies outright: west and the witness keep etcd's quorum, the writer
    // region is down, and the leader promotes one of west's nodes; the other follows it.
    let (ok, text) = hosts.script(&["kill", &dir_arg, "east"]);
    assert!(ok, "kill east: {text}");
    let west = [WEST, WEST_SECOND];
    let writer = hosts.wait_answer("witness", WITNESS, &west, Duration::from_secs(30));
    assert_eq!(
        hosts.wait_answer("west", WEST, &west, Duration::from_secs(5)),
        writer
    );
    assert_eq!(
        hosts.app("witness", &writer, "GET guide-key"),
        "before-the-loss"
    );
    // Right after the promotion the writer may refuse writes (NOREPLICAS) until its region's
    // other node has synced from it (`writes_need_a_replica`).
    let waited = hosts.write("witness", &writer, "SET guide-key after-the-loss");
    eprintln!("the new writer took writes {waited:?} after the name moved");
    assert_eq!(
        hosts.app("witness", &writer, "WAIT 1 5000"),
        "1",
        "west's other node"
    );
    // The witness's controller follows: it shows the epoch its last pass read from etcd, a
    // pass after the records (which every site copies from an etcd watch) moved.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = hosts.on(
            "witness",
            "valkey-dr status --config /etc/valkey-dr/valkey-dr.toml --output json",
        );
        let status: serde_json::Value = serde_json::from_str(&status).expect("status is JSON");
        if status["epoch"] != 1 || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["primary_region"], "us-west-2", "{status:#}");
    assert_eq!(status["epoch"], 2, "one promotion: {status:#}");

    // The status page as the witness serves it, in Chromium (make test installs it): kept for
    // the docs.
    let png = repo().join("target/three-hosts-status.png");
    let (ok, text) = hosts.script(&["screenshot", &dir_arg, "witness", png.to_str().unwrap()]);
    assert!(ok && png.exists(), "screenshot: {text}");
}
