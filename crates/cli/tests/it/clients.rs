//! Switchover and failover as real client libraries see it: `valkey-dr drill … --clients` on
//! the highly available lab with every place in a network namespace of its own. The libraries
//! stand in the controller's (the witness's) place and resolve the global name with their own
//! resolvers through its DNS server (the lab's DNS listens on port 53 and names it in
//! /etc/netns/<ns>/resolv.conf), so a cut of the writer's region drops their packets too. The
//! clients come from `make clients`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::harness::{BIN, as_root, needs_sudo, outcome};

/// A lab in network namespaces, stopped (namespaces and all) when the test ends, however it
/// ends. Needs root, or sudo without a password (as `make test`'s installs do).
struct NetnsLab {
    dir: PathBuf,
    sudo: bool,
}

impl NetnsLab {
    fn up(name: &str) -> NetnsLab {
        let lab = NetnsLab {
            dir: std::env::temp_dir().join(format!("valkey-dr-{name}-{}", std::process::id())),
            sudo: needs_sudo(),
        };
        let _ = std::fs::remove_dir_all(&lab.dir);
        // --no-tls: the lab's node certificates name IP addresses only, and libraries that
        // verify the host name would refuse them through the global name. Port 53: resolv.conf
        // names no port.
        let (ok, text) = lab.run(&["lab", "up", "--netns", "--dns", "127.0.0.1:53", "--no-tls"]);
        assert!(
            ok,
            "lab up --netns: {text} (this test needs root or sudo -n)"
        );
        lab
    }

    /// `valkey-dr <args> --dir <lab>` as root.
    fn output(&self, args: &[&str]) -> std::process::Output {
        let mut full = vec![BIN];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--dir", self.dir.to_str().unwrap()]);
        as_root(self.sudo, &full).output().unwrap()
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        outcome(self.output(args))
    }

    /// One drill with every client library; its JSON report.
    fn drill(&self, args: &[&str]) -> Value {
        let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients");
        let mut full = vec!["drill"];
        full.extend_from_slice(args);
        full.extend_from_slice(&[
            "--clients",
            "--clients-dir",
            clients.to_str().unwrap(),
            "--output",
            "json",
        ]);
        let out = self.output(&full);
        let json = String::from_utf8_lossy(&out.stdout).into_owned();
        let (ok, text) = outcome(out);
        assert!(ok, "drill {args:?}: {text}");
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("drill output {json}: {e}"))
    }
}

impl Drop for NetnsLab {
    fn drop(&mut self) {
        let _ = self.run(&["lab", "down"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn table(report: &Value) -> String {
    let moved = format!(
        "the name moved {} ms after the operation (detection {} ms)\n",
        report["dns_flip_ms"], report["detection_ms"]
    );
    let rows = report["clients"].as_array().unwrap().iter().map(row);
    std::iter::once(moved).chain(rows).collect()
}

fn row(c: &Value) -> String {
    format!(
        "{:<12} {:<11} first write after {:>6} ms  last at {:>6} ms  stuck {:<5}  acked {:>5}  lost {}  READONLY {}  other {}  {}\n",
        c["client"].as_str().unwrap_or(""),
        c["settings"].as_str().unwrap_or(""),
        c["first_write_after_ms"],
        c["last_write_after_ms"],
        c["stuck"],
        c["acknowledged_writes"],
        c["lost"],
        c["readonly_errors"],
        c["other_errors"],
        c["error"]
    )
}

/// With their defaults these libraries wait on a silent connection for as long as it stays
/// silent: a hung writer (SIGSTOP) and a writer whose region is cut off look the same to them.
/// redis-py 8 has a 5 s socket timeout, its fork valkey-py none; GLIDE gets off a cut-off node
/// (its connection errors) but not off a hung one (its connection stays up). These versions are
/// pinned; if one changes, the table in docs/clients.md must change too.
fn stuck_with_defaults(operation: &str, client: &str) -> bool {
    let silent_forever = [
        "valkey-py",
        "ioredis",
        "iovalkey",
        "node-redis",
        "phpredis",
        "predis",
        "redis-rs",
        "valkey-cli",
    ];
    match operation {
        "stall" => silent_forever.contains(&client) || client.starts_with("glide-"),
        "isolation" => silent_forever.contains(&client),
        _ => false,
    }
}

#[test]
fn client_libraries_follow_the_name_through_switchover_failover_and_isolation() {
    let lab = NetnsLab::up("clients");

    let switchover = lab.drill(&["switchover", "--duration", "6"]);
    eprintln!("switchover:\n{}", table(&switchover));
    let failover = lab.drill(&["failover", "--duration", "9"]);
    eprintln!("failover (writer SIGKILLed):\n{}", table(&failover));
    // Long enough to tell a slow recovery from a stuck client: the fault lands up to 1 s after
    // the drill's operation time (a random phase of the controller's pass), the name moves ~5 s
    // after it, and a client is judged 30 s after that, over 2 s more.
    let stall = lab.drill(&["failover", "--stall", "--duration", "41"]);
    eprintln!("failover (writer SIGSTOPped):\n{}", table(&stall));
    let isolation = lab.drill(&["failover", "--partition", "--duration", "42"]);
    eprintln!("failover (writer's region cut off):\n{}", table(&isolation));

    let reports = [
        ("switchover", &switchover),
        ("failover", &failover),
        ("stall", &stall),
        ("isolation", &isolation),
    ];
    // Every broken expectation is listed, not only the first: a library's behaviour in a race
    // is easier to read beside the others'.
    let mut broken = Vec::new();
    let mut expect = |holds: bool, what: String| {
        if !holds {
            broken.push(what);
        }
    };
    for (operation, report) in reports {
        let rows = report["clients"].as_array().unwrap();
        expect(
            rows.len() == 22,
            format!(
                "{operation}: {} rows, not one per library and setting",
                rows.len()
            ),
        );
        expect(
            report["epoch_after"].as_u64() > report["epoch_before"].as_u64(),
            format!("{operation}: the epoch did not move"),
        );
        for c in rows {
            let client = c["client"].as_str().unwrap_or_default();
            let who = format!("{operation}: {client} ({})", c["settings"]);
            // Each writer ran, wrote through the name resolved by its library, and its list was
            // read back from the new primary.
            expect(c["error"].is_null(), format!("{who}: {}", c["error"]));
            expect(
                c["acknowledged_writes"].as_u64() > Some(0),
                format!("{who}: no acknowledged write"),
            );
            let recovered = c["first_write_after_ms"].is_u64();
            let long_drill = matches!(operation, "stall" | "isolation");
            if c["settings"] == "default" && stuck_with_defaults(operation, client) {
                expect(
                    !recovered,
                    format!("{who} now gives up on a silent node: update docs/clients.md"),
                );
                expect(
                    c["stuck"] == true,
                    format!(
                        "{who}: stuck {}, expected still failing 30 s later",
                        c["stuck"]
                    ),
                );
            } else if c["settings"] == "default" && operation == "failover" && client == "phpredis"
            {
                // phpredis marks an object whose command lost its connection as gone for good,
                // but reconnects when it sees the drop before sending: after a crash it recovers
                // or never does, by the race (a PHP-FPM application reconnects per request).
            } else {
                // Demotion closes every client connection, and a dead node refuses new ones,
                // so after a switchover or a crash even the defaults reconnect and resolve
                // again; the recommended settings also time out a silent node.
                expect(
                    recovered,
                    format!("{who} never wrote after the {operation}"),
                );
                if long_drill {
                    expect(
                        c["stuck"] == false,
                        format!("{who}: stuck {}, expected writing 30 s later", c["stuck"]),
                    );
                }
            }
        }
    }
    // A switchover loses nothing for any library: writes pause, the replica catches up, then
    // the name moves.
    for c in switchover["clients"].as_array().unwrap() {
        expect(
            c["lost"] == 0,
            format!(
                "switchover: {} ({}) lost {}",
                c["client"], c["settings"], c["lost"]
            ),
        );
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}
