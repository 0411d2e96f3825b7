//! The controller with `[dns.provider] kind = "rfc2136"`: the real `valkey-dr run` keeps the
//! name on a real BIND 9 (started by the test, TSIG key, update-policy) and a switchover moves the
//! CNAME and its ownership TXT there, against the lab's real Valkey nodes; BIND down is reported
//! and retried with backoff.

// The DNS crate's real-server harness; this test uses BIND only.
#[allow(dead_code)]
#[path = "../../../dns/tests/servers/mod.rs"]
mod servers;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use servers::{AuthServer, KEY_NAME, Kind, SECRET};
use valkey_dr_core::Config;
use valkey_dr_core::config::{DnsProviderConfig, Rfc2136Config, TsigAlgorithm};

use crate::harness::{BIN, TestLab, outcome};

struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_controller_moves_the_name_on_bind_with_signed_updates() {
    let lab = TestLab::start().await;
    let regions: Vec<&str> = lab.spec.regions.iter().map(String::as_str).collect();
    let mut bind = AuthServer::start_for(Kind::Bind, &regions);
    // The lab's own controller (embedded DNS) steps aside; ours takes its state over.
    lab.kill_controller().await;

    let secret_file = lab.spec.dir.join("secrets").join("tsig-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let mut config = Config::load(&lab.config_path()).unwrap();
    config.dns.zone = "z.test".into();
    config.dns.provider = DnsProviderConfig::Rfc2136(Rfc2136Config {
        servers: vec![bind.addr.to_string()],
        tsig_key_name: KEY_NAME.into(),
        tsig_algorithm: TsigAlgorithm::HmacSha256,
        tsig_secret_file: Some(secret_file),
        tsig_secret_env: None,
        tsig_secret: None,
        timeout_ms: 2000,
    });
    config.http = None;
    let path = lab.spec.dir.join("rfc2136.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    let log = lab.spec.dir.join("rfc2136-controller.log");
    let _controller = Controller(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );

    let primary_of = |region: &str| format!("primary.{region}.z.test.");
    let (first, second) = (lab.spec.regions[0].clone(), lab.spec.regions[1].clone());
    wait_for("the name on BIND", || {
        bind.dig("demo.z.test", "CNAME") == primary_of(&first)
    });
    assert_eq!(bind.dig(&primary_of(&first), "A"), lab.ip(0, 0));
    let owner_before = bind.dig("_valkey-dr.demo.z.test", "TXT");
    assert!(
        owner_before.contains("heritage=valkey-dr"),
        "{owner_before}"
    );

    let promote = |region: &str| {
        let out = Command::new(BIN)
            .args(["promote", region, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let (ok, text) = outcome(out);
        assert!(ok, "promote {region}: {text}");
    };
    promote(&second);
    assert_eq!(bind.dig("demo.z.test", "CNAME"), primary_of(&second));
    assert_eq!(bind.dig(&primary_of(&second), "A"), lab.ip(1, 0));
    let owner_after = bind.dig("_valkey-dr.demo.z.test", "TXT");
    assert_ne!(
        owner_after, owner_before,
        "the ownership TXT moved with the CNAME"
    );
    assert!(
        owner_after.contains(&format!("primary={second}")),
        "{owner_after}"
    );

    // BIND down: every pass fails, is reported with the server's address, and is retried with
    // a growing delay; back up, the next switchover moves the name again.
    bind.kill();
    let failures = || -> Vec<serde_json::Value> {
        lab.events()
            .into_iter()
            .filter(|e| {
                e["event"] == "reconcile_failed"
                    && e["error"]
                        .as_str()
                        .is_some_and(|t| t.contains(&bind.addr.to_string()))
            })
            .collect()
    };
    wait_for("two reported failures", || failures().len() >= 2);
    let delays: Vec<u64> = failures()
        .iter()
        .map(|e| e["retry_in_ms"].as_u64().unwrap())
        .collect();
    assert!(delays[1] > delays[0], "backoff: {delays:?}");
    bind.restart();
    promote(&first);
    assert_eq!(bind.dig("demo.z.test", "CNAME"), primary_of(&first));

    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        !logged.contains(SECRET),
        "the TSIG secret never appears in the log"
    );
}
