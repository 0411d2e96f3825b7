//! Switchover and failover as real client libraries see it: `valkey-dr drill … --clients` in a network namespace
//! this test creates, where the lab's DNS server is the system resolver's (127.0.0.1:53 named in
//! /etc/netns/<ns>/resolv.conf), so redis-py, valkey-py, ioredis, iovalkey, redis-rs and valkey-cli each resolve the
//! global name their own way. The clients come from `make clients`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::harness::{BIN, outcome};

/// A network namespace with its own loopback and resolv.conf; removed on drop with everything
/// still running in it. Needs root, or sudo without a password (as `make test`'s installs do).
struct Namespace {
    name: String,
    sudo: bool,
}

impl Namespace {
    fn create(name: &str) -> Namespace {
        let uid = Command::new("id").arg("-u").output().expect("id runs");
        let sudo = String::from_utf8_lossy(&uid.stdout).trim() != "0";
        let ns = Namespace {
            name: name.to_string(),
            sudo,
        };
        ns.root(&["ip", "netns", "add", name]);
        let etc = format!("/etc/netns/{name}");
        ns.root(&["mkdir", "-p", &etc]);
        ns.root(&[
            "sh",
            "-c",
            &format!("echo 'nameserver 127.0.0.1' > {etc}/resolv.conf"),
        ]);
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn command(&self, args: &[&str]) -> Command {
        let (program, rest) = if self.sudo {
            ("sudo", args.to_vec())
        } else {
            (args[0], args[1..].to_vec())
        };
        let mut command = Command::new(program);
        if self.sudo {
            command.arg("-n");
        }
        command.args(rest);
        command
    }

    /// Runs a command as root on the host; panics with its output on failure.
    fn root(&self, args: &[&str]) {
        let out = self
            .command(args)
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e} (this test needs root or sudo -n)"));
        let (ok, text) = outcome(out);
        assert!(ok, "{args:?}: {text} (this test needs root or sudo -n)");
    }

    /// Runs a command inside the namespace.
    fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        self.command(&full).output().expect("ip netns exec runs")
    }

    fn exec_ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (ok, text) = outcome(out);
        assert!(ok, "{args:?} in {}: {text}", self.name);
        stdout
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Whatever the test left running in the namespace dies with it.
        let _ = self
            .command(&[
                "sh",
                "-c",
                &format!(
                    "ip netns pids {0} | xargs -r kill -9; ip netns del {0}; rm -rf /etc/netns/{0}",
                    self.name
                ),
            ])
            .output();
    }
}

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients")
}

fn drill(ns: &Namespace, lab: &Path, args: &[&str]) -> Value {
    let clients = clients_dir();
    let mut full = vec![
        BIN,
        "drill",
        args[0],
        "--dir",
        lab.to_str().unwrap(),
        "--clients",
        "--clients-dir",
        clients.to_str().unwrap(),
        "--output",
        "json",
    ];
    full.extend_from_slice(&args[1..]);
    let json = ns.exec_ok(&full);
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("drill output {json}: {e}"))
}

fn table(report: &Value) -> String {
    report["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{:<10} {:<11} first write after {:>6} ms  acked {:>5}  lost {}  READONLY {}  other {}  {}\n",
                c["client"].as_str().unwrap_or(""),
                c["settings"].as_str().unwrap_or(""),
                c["first_write_after_ms"],
                c["acknowledged_writes"],
                c["lost"],
                c["readonly_errors"],
                c["other_errors"],
                c["error"]
            )
        })
        .collect()
}

#[test]
fn client_libraries_follow_the_name_through_switchover_and_failover() {
    let name = format!("vdr-clients-{}", std::process::id());
    let ns = Namespace::create(&name);
    let lab = std::env::temp_dir().join(format!("valkey-dr-{name}"));
    let _ = std::fs::remove_dir_all(&lab);
    // --no-tls: the lab's node certificates name IP addresses only, and libraries that verify
    // the host name would refuse them through the global name.
    ns.exec_ok(&[
        BIN,
        "lab",
        "up",
        "--dir",
        lab.to_str().unwrap(),
        "--dns",
        "127.0.0.1:53",
        "--no-tls",
        "--single-controller",
    ]);

    // The drill refuses what it cannot measure: the libraries connect to the nodes directly,
    // past the emulated region links a partition cuts.
    let partition = ns.exec(&[
        BIN,
        "drill",
        "failover",
        "--partition",
        "--clients",
        "--dir",
        lab.to_str().unwrap(),
    ]);
    let (ok, text) = outcome(partition);
    assert!(!ok && text.contains("not with --partition"), "{text}");

    let switchover = drill(&ns, &lab, &["switchover", "--duration", "6"]);
    eprintln!("switchover:\n{}", table(&switchover));
    let failover = drill(&ns, &lab, &["failover", "--duration", "9"]);
    eprintln!("failover (writer SIGKILLed):\n{}", table(&failover));
    // Long enough to tell a slow recovery from a stuck client (30 s after the name moved).
    let stall = drill(&ns, &lab, &["failover", "--stall", "--duration", "36"]);
    eprintln!("failover (writer SIGSTOPped):\n{}", table(&stall));

    let reports = [
        ("switchover", &switchover),
        ("failover", &failover),
        ("stall", &stall),
    ];
    for (operation, report) in reports {
        let rows = report["clients"].as_array().unwrap();
        assert_eq!(rows.len(), 22, "{operation}: every library and setting");
        assert!(report["epoch_after"].as_u64() > report["epoch_before"].as_u64());
        for c in rows {
            let who = format!("{operation}: {} ({})", c["client"], c["settings"]);
            // Each writer ran, wrote through the name resolved by its library, and its list was
            // read back from the new primary.
            assert!(c["error"].is_null(), "{who}: {}", c["error"]);
            assert!(c["acknowledged_writes"].as_u64() > Some(0), "{who}");
            let recovered = c["first_write_after_ms"].is_u64();
            match (operation, c["settings"].as_str(), c["client"].as_str()) {
                // A hung writer keeps its connections open and silent: with their defaults
                // valkey-py, ioredis, iovalkey, redis-rs and valkey-cli wait on it for as long as
                // it hangs (redis-py 8 has a 5 s socket timeout, its fork none). (These versions
                // are pinned; if one changes, the README's table must change too.)
                (
                    "stall",
                    Some("default"),
                    Some(
                        "valkey-py" | "glide-python" | "glide-node" | "ioredis" | "iovalkey"
                        | "node-redis" | "redis-rs" | "valkey-cli" | "predis",
                    ),
                )
                | ("stall", Some("default"), Some("phpredis")) => {
                    assert!(
                        !recovered,
                        "{who} now gives up on a hung node: update the README"
                    );
                    if operation == "stall" {
                        assert_eq!(c["stuck"], true, "{who}: still failing 30 s later");
                    }
                }
                // phpredis marks an object whose command lost its connection as gone for good,
                // but reconnects when it sees the drop before sending: after a crash it recovers
                // or never does, by the race (a PHP-FPM application reconnects per request).
                ("failover", Some("default"), Some("phpredis")) => {}
                // Demotion closes every client connection, and a dead node refuses new ones,
                // so after a switchover or a crash even the defaults reconnect and resolve
                // again; the recommended settings also time out a hung node.
                _ => {
                    assert!(recovered, "{who} never wrote after the {operation}");
                    if operation == "stall" {
                        assert_eq!(c["stuck"], false, "{who}: writing 30 s later");
                    }
                }
            }
        }
    }
    // A switchover loses nothing for any library: writes pause, the replica catches up, then
    // the name moves.
    for c in switchover["clients"].as_array().unwrap() {
        assert_eq!(
            c["lost"], 0,
            "switchover: {} ({})",
            c["client"], c["settings"]
        );
    }
    let _ = ns.exec(&[BIN, "lab", "down", "--dir", lab.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&lab);
}
