//! Shared test harness: a real lab (valkey-server processes, region link, controller) on its own
//! loopback block and free port, so tests run in parallel and beside a running reference lab.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use valkey_dr_controller::control::{self, Request};
use valkey_dr_lab::LabSpec;
use valkey_dr_lab::process;

pub const BIN: &str = env!("CARGO_BIN_EXE_valkey-dr");

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct TestLab {
    pub spec: LabSpec,
}

impl TestLab {
    pub async fn start() -> TestLab {
        Self::start_with(|_| {}).await
    }

    /// The highly available shape: three etcd members, a controller per site.
    pub async fn start_ha() -> TestLab {
        Self::start_with(|spec| spec.sites = LabSpec::default_sites(&spec.regions)).await
    }

    /// Starts a lab whose spec `adjust` may change first (e.g. the failover policy).
    pub async fn start_with(adjust: impl FnOnce(&mut LabSpec)) -> TestLab {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let seed = std::process::id() ^ n.wrapping_mul(2_654_435_761);
        // The time too: a pid reused by a later run must not name the directory of a lab an
        // earlier run kept (its pid files then name live, unrelated processes).
        let started_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "valkey-dr-test-{}-{n}-{seed}-{started_ns}",
            std::process::id()
        ));
        let mut spec = LabSpec::on_free_block(dir, seed).expect("a free loopback block");
        // One controller unless the test asks for the highly available shape.
        spec.sites.clear();
        adjust(&mut spec);
        let started = process::up(&spec, BIN.as_ref()).await.expect("lab starts");
        assert!(started, "a fresh directory has no running lab");
        let spec_regions = spec.regions.len();
        let lab = TestLab { spec };
        lab.wait_until(|s| {
            s["findings"] == serde_json::json!(["healthy"])
                && s["dns"]
                    .as_array()
                    .is_some_and(|d| d.len() == 2 + 2 * spec_regions)
        })
        .await;
        // One pass on the healthy topology settles every record (readers join last).
        lab.cli(&["reconcile"]);
        lab
    }

    pub fn config_path(&self) -> PathBuf {
        self.spec.config_path()
    }

    pub fn ip(&self, region: usize, index: usize) -> String {
        self.spec.node_ip(region, index).to_string()
    }

    pub fn name(&self, relative: &str) -> String {
        format!("{relative}.{}.", self.spec.zone)
    }

    pub async fn status(&self) -> serde_json::Value {
        let socket = self.spec.main_config().control_socket();
        control::request(&socket, &Request::Status, |_| {})
            .await
            .expect("controller answers")
    }

    /// The status as one site's controller reports it (highly available shape).
    pub async fn site_status(&self, site: &str) -> serde_json::Value {
        let socket = self.spec.site_config(site).control_socket();
        control::request(&socket, &Request::Status, |_| {})
            .await
            .expect("controller answers")
    }

    /// Polls the controller's status until `ready` holds (at most 20 s).
    pub async fn wait_until(
        &self,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        let mut error = String::new();
        for _ in 0..400 {
            match control::request(
                &self.spec.main_config().control_socket(),
                &Request::Status,
                |_| {},
            )
            .await
            {
                Ok(status) if ready(&status) => return status,
                Ok(status) => last = status,
                Err(e) => error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "condition not reached; last status: {last:#}\nlast error: {error}\n{}",
            self.controller_logs()
        );
    }

    /// The last lines of every controller's log, for a failure message.
    fn controller_logs(&self) -> String {
        let Ok(entries) = std::fs::read_dir(&self.spec.dir) else {
            return String::new();
        };
        let mut out = String::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with("controller") && name.ends_with(".log") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                out.push_str(&format!("--- {name} (last lines)\n{tail}\n"));
            }
        }
        out
    }

    /// `dig +short` against the lab's DNS server.
    pub fn dig_short(&self, name: &str, rtype: &str) -> Vec<String> {
        let out = self.dig(&[name, rtype, "+short"]);
        out.lines()
            .map(|l| l.trim_matches('"').to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    pub fn dig(&self, args: &[&str]) -> String {
        dig(self.spec.dns, args)
    }

    /// Runs the valkey-dr binary with the lab's config; returns stdout, panics on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .output()
            .expect("valkey-dr runs");
        assert!(
            out.status.success(),
            "valkey-dr {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `valkey-dr lab <args> --dir <lab>`; panics on failure.
    pub fn lab(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .arg("lab")
            .args(args)
            .arg("--dir")
            .arg(&self.spec.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "lab {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The controllers' events so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.spec
            .controller_dirs()
            .iter()
            .flat_map(|dir| {
                std::fs::read_to_string(dir.join("events.jsonl"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The first event named `name`, if the controller emitted one.
    pub fn first_event(&self, name: &str) -> Option<serde_json::Value> {
        self.events().into_iter().find(|e| e["event"] == name)
    }

    pub fn node(&self, region: usize, index: usize) -> String {
        format!("{}:{}", self.ip(region, index), self.spec.port)
    }

    /// SIGKILLs one node's valkey-server and waits until it is gone.
    pub async fn kill_node(&self, region: usize, index: usize) {
        process::kill_recorded(&self.spec.node_pidfile(region, index))
            .await
            .unwrap();
    }

    /// SIGKILLs the lab's controller and waits until it is gone.
    pub async fn kill_controller(&self) {
        process::kill_recorded(&self.spec.controller_pidfile(None))
            .await
            .unwrap();
    }

    /// SIGKILLs the controller of one site (highly available shape).
    pub async fn kill_site_controller(&self, site: &str) {
        process::kill_recorded(&self.spec.controller_pidfile(Some(site)))
            .await
            .unwrap();
    }

    /// `dig +short` against one site's DNS server.
    pub fn dig_site(&self, site: &str, name: &str) -> Vec<String> {
        dig(self.spec.site_dns(site), &[name, "+short"])
            .lines()
            .map(|l| l.trim_matches('"').to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    pub async fn connection(&self, ip: &str) -> redis::aio::MultiplexedConnection {
        valkey_dr_lab::writer::connect(
            ip.parse().unwrap(),
            self.spec.port,
            &self.spec.security().unwrap(),
        )
        .await
        .expect("node reachable")
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        // Drop cannot await: stop the processes with plain signals, as `lab down` does.
        for p in process::processes(&self.spec.dir) {
            if let Some(pid) = p.pid.filter(|_| p.alive) {
                // SAFETY: signal delivery to a pid this lab recorded.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // A failed test keeps its lab's files (logs, events, node files) for whoever reads the
        // failure; VALKEY_DR_KEEP_LAB=1 keeps every lab.
        if std::thread::panicking() {
            eprintln!("lab kept in {}", self.spec.dir.display());
        } else if std::env::var_os("VALKEY_DR_KEEP_LAB").is_none() {
            let _ = std::fs::remove_dir_all(&self.spec.dir);
        }
    }
}

/// How many nodes of a status report say `role:master`.
pub fn primaries(status: &serde_json::Value) -> usize {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["role"] == "primary")
        .count()
}

/// Runs `dig @server -p port <args>` and returns its output.
pub fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=2", "+tries=2"])
        .args(args)
        .output()
        .expect("dig is installed (make test installs dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a finished command succeeded, and everything it printed (stdout, then stderr).
/// Runs `command`, fails the test with its stderr unless it succeeds, and returns its stdout.
pub fn succeed(command: &mut Command) -> Vec<u8> {
    let out = command.output().expect("the command runs");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn outcome(out: std::process::Output) -> (bool, String) {
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Whether this test runs as someone else than root (and needs `sudo -n` for namespaces).
pub fn needs_sudo() -> bool {
    let uid = Command::new("id").arg("-u").output().expect("id runs");
    String::from_utf8_lossy(&uid.stdout).trim() != "0"
}

/// `args` run as root: directly, or through `sudo -n`.
pub fn as_root(sudo: bool, args: &[&str]) -> Command {
    let (program, rest) = if sudo {
        ("sudo", args)
    } else {
        (args[0], &args[1..])
    };
    let mut command = Command::new(program);
    if sudo {
        command.arg("-n");
    }
    command.args(rest);
    command
}
