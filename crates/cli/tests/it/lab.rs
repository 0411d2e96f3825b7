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

/// `lab up --shards 3 --regions 3`: a cluster lab of twelve nodes that the `cluster` commands
/// drive, every shard with a replica in every region, and that `down` stops.
#[test]
fn lab_up_with_shards_starts_a_cluster_that_down_stops() {
    let regions: Vec<String> = ["us-east-1", "us-east-2", "us-west-2"]
        .map(String::from)
        .into();
    // A block and port free on every node's address, its cluster bus port (+10000) too.
    let (block, port) = (0..500u32)
        .map(|attempt| {
            let mixed = std::process::id().wrapping_add(attempt.wrapping_mul(7919));
            (10 + (mixed % 240) as u8, 10_000 + (mixed % 12_000) as u16)
        })
        .find(|(block, port)| {
            let (addrs, _) = valkey_dr_lab::cluster::lab_layout(*block, *port, &regions, 3);
            addrs.iter().all(|a| {
                std::net::TcpListener::bind(a).is_ok()
                    && std::net::TcpListener::bind((a.ip(), a.port() + 10_000)).is_ok()
            })
        })
        .expect("a free block");
    let dir = std::env::temp_dir().join(format!("valkey-dr-cluster-lab-{block}-{port}"));
    let _down = Down(dir.clone());
    // Its controller's DNS server beside the nodes, on an address none of them has.
    let dns: std::net::SocketAddr = format!("127.{block}.0.53:{port}").parse().unwrap();
    let (port, block, dns_arg) = (port.to_string(), block.to_string(), dns.to_string());
    let (ok, out) = lab(
        &[
            "up",
            "--shards",
            "3",
            "--regions",
            "3",
            "--port",
            &port,
            "--block",
            &block,
            "--dns",
            &dns_arg,
        ],
        &dir,
    );
    assert!(
        ok && out.contains("cluster lab up in") && out.contains("a controller per site on etcd"),
        "{out}"
    );
    // The name leads to the writer region's primaries: what status shows. (Right after a move
    // the node asked may still list an old primary as one without slots, for a moment.)
    let name_leads_to_primaries_in = |region: &str, status: &serde_json::Value| {
        let mut primaries: Vec<String> = status["shards"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["slot_count"].as_u64() > Some(0))
            .map(|s| {
                assert_eq!(s["primary"]["region"], region, "{status:#}");
                let node = s["primary"]["node"].as_str().unwrap();
                node.rsplit_once(':').unwrap().0.to_string()
            })
            .collect();
        primaries.sort();
        let mut name: Vec<String> =
            crate::harness::dig(dns, &["demo.valkey-dr.live", "A", "+short"])
                .lines()
                .map(str::to_string)
                .collect();
        name.sort();
        assert_eq!(name, primaries, "{status:#}");
    };
    let config = dir.join("valkey-dr.toml");
    let cluster = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("cluster")
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        crate::harness::outcome(out)
    };

    let (ok, out) = cluster(&["status", "--output", "json"]);
    assert!(ok, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let shards = status["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 3, "{status:#}");
    for shard in shards {
        assert_eq!(shard["primary"]["region"], "us-east-1", "{status:#}");
        assert_eq!(shard["replicas"].as_array().unwrap().len(), 3, "{status:#}");
        assert_eq!(shard["findings"], serde_json::json!([]), "{status:#}");
    }
    name_leads_to_primaries_in("us-east-1", &status);
    // Moved to the third region and back, the other regions' replicas guarded each time.
    for to in ["us-west-2", "us-east-1"] {
        // Right after a switchover, its old primaries resync as replicas, and one back waits
        // for them: refused meanwhile, as all or nothing.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (ok, out) = cluster(&["switchover", to]);
            if ok {
                assert!(out.contains(&format!("moved to {to}")), "{out}");
                let (ok, out) = cluster(&["status", "--output", "json"]);
                assert!(ok, "{out}");
                name_leads_to_primaries_in(to, &serde_json::from_str(&out).unwrap());
                break;
            }
            assert!(
                out.contains("no online replica") && std::time::Instant::now() < deadline,
                "{out}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    // The lab's config is the last site's (us-west-2, whose DNS server is on --dns); moves asked
    // there went to the leader.
    let (ok, out) = cluster(&["status", "--output", "json"]);
    assert!(ok, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["site"], "us-west-2", "{status:#}");
    assert!(status["leader"].is_string(), "{status:#}");

    let (ok, out) = lab(&["down"], &dir);
    // Twelve nodes, and a controller and an etcd member per site.
    assert!(ok && out.contains("stopped 18 process(es)"), "{out}");
    let (ok, out) = lab(&["down"], &dir);
    assert!(ok && out.contains("no lab process"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Stops the lab in its directory when dropped: a failed test leaves no process behind.
struct Down(std::path::PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(BIN)
            .args(["lab", "down", "--dir"])
            .arg(&self.0)
            .output();
    }
}
