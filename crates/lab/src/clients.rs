//! Writers built on real client libraries (the folders of `clients/`, protocol in
//! `clients/README.md`), run beside a drill's own writers: each resolves the global name through
//! the system resolver and reconnects its library's own way, with the library's default settings
//! or with the recommended ones. They show what an application sees, where the drill's own
//! writers show the best case (they resolve again after every error).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::LabSpec;
use crate::writer::{self, WriterConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Library {
    RedisPy,
    /// valkey-py, the fork of redis-py the Valkey project maintains.
    ValkeyPy,
    /// valkey-glide's Python client (asyncio).
    GlidePython,
    Ioredis,
    /// iovalkey, the fork of ioredis the Valkey project maintains.
    Iovalkey,
    /// node-redis (npm `redis`).
    NodeRedis,
    /// valkey-glide's Node.js client (npm `@valkey/valkey-glide`).
    GlideNode,
    /// phpredis, the C extension (Debian php-redis).
    Phpredis,
    /// Predis, in plain PHP (Debian php-predis).
    Predis,
    RedisRs,
    ValkeyCli,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Settings {
    Default,
    Recommended,
}

impl Settings {
    pub fn as_str(self) -> &'static str {
        match self {
            Settings::Default => "default",
            Settings::Recommended => "recommended",
        }
    }
}

/// One client writer of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientWriter {
    pub library: Library,
    pub settings: Settings,
}

impl Library {
    pub const ALL: [Library; 11] = [
        Library::RedisPy,
        Library::ValkeyPy,
        Library::GlidePython,
        Library::Ioredis,
        Library::Iovalkey,
        Library::NodeRedis,
        Library::GlideNode,
        Library::Phpredis,
        Library::Predis,
        Library::RedisRs,
        Library::ValkeyCli,
    ];

    /// Its writer can use the library's cluster client (`VALKEY_DR_CLUSTER=1`); PHP and
    /// valkey-cli have no cluster writer.
    pub fn has_cluster_client(self) -> bool {
        !matches!(
            self,
            Library::Phpredis | Library::Predis | Library::ValkeyCli
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Library::RedisPy => "redis-py",
            Library::ValkeyPy => "valkey-py",
            Library::GlidePython => "glide-python",
            Library::Ioredis => "ioredis",
            Library::Iovalkey => "iovalkey",
            Library::NodeRedis => "node-redis",
            Library::GlideNode => "glide-node",
            Library::Phpredis => "phpredis",
            Library::Predis => "predis",
            Library::RedisRs => "redis-rs",
            Library::ValkeyCli => "valkey-cli",
        }
    }

    /// The program and its arguments; an error names what is missing and how to install it.
    /// A fork shares its original's writer (same API): the writer is told which one to load.
    fn command(self, clients_dir: &Path) -> Result<(PathBuf, Vec<String>), String> {
        let python = clients_dir.join("python");
        let node = clients_dir.join("node");
        let path = |p: PathBuf| p.display().to_string();
        let (program, args) = match self {
            Library::RedisPy | Library::ValkeyPy | Library::GlidePython => {
                let module = match self {
                    Library::RedisPy => "redis",
                    Library::ValkeyPy => "valkey",
                    _ => "glide",
                };
                (
                    python.join(".venv/bin/python3"),
                    vec![path(python.join("writer.py")), module.to_string()],
                )
            }
            Library::Ioredis | Library::Iovalkey | Library::NodeRedis | Library::GlideNode => {
                let package = match self {
                    Library::NodeRedis => "redis",
                    Library::GlideNode => "@valkey/valkey-glide",
                    _ => self.name(),
                };
                let modules = node.join("node_modules").join(package);
                if !modules.exists() {
                    return Err(format!(
                        "{} is missing: run `make clients`",
                        modules.display()
                    ));
                }
                (
                    PathBuf::from("node"),
                    vec![path(node.join("writer.js")), package.to_string()],
                )
            }
            // Debian's packages (`install-deps.sh --test`), one writer for both.
            Library::Phpredis | Library::Predis => (
                PathBuf::from("php"),
                vec![
                    path(clients_dir.join("php/writer.php")),
                    self.name().to_string(),
                ],
            ),
            Library::RedisRs => (redis_rs_binary(clients_dir)?, vec![]),
            Library::ValkeyCli => (
                PathBuf::from("bash"),
                vec![path(clients_dir.join("valkey-cli/writer.sh"))],
            ),
        };
        if program.is_absolute() && !program.exists() {
            return Err(format!(
                "{} is missing: run `make clients`",
                program.display()
            ));
        }
        Ok((program, args))
    }
}

/// `valkey-dr-client-redis-rs`, built by `make clients`: beside this executable, or in the
/// workspace's target directory next to `clients/`.
fn redis_rs_binary(clients_dir: &Path) -> Result<PathBuf, String> {
    const NAME: &str = "valkey-dr-client-redis-rs";
    let beside_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let mut candidates: Vec<PathBuf> = beside_exe
        .iter()
        .flat_map(|d| [d.join(NAME), d.join("..").join(NAME)])
        .collect();
    let target = clients_dir.join("..").join("target");
    candidates.extend(["debug", "release"].map(|p| target.join(p).join(NAME)));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{NAME} is not built: run `make clients`"))
}

impl std::str::FromStr for Library {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Library::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Library::ALL.iter().map(|l| l.name()).collect();
                format!(
                    "unknown client library `{s}`: expected one of {}",
                    names.join(", ")
                )
            })
    }
}

impl std::fmt::Display for ClientWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.library.name(), self.settings.as_str())
    }
}

/// Every library, with its default and its recommended settings.
pub fn matrix(libraries: &[Library]) -> Vec<ClientWriter> {
    libraries
        .iter()
        .flat_map(|&library| {
            [Settings::Default, Settings::Recommended]
                .map(|settings| ClientWriter { library, settings })
        })
        .collect()
}

/// What a client writer prints when it stops.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Summary {
    pub acked: u64,
    pub readonly_errors: u64,
    pub other_errors: u64,
    /// Pauses between acknowledgements longer than 20 ms, as Unix milliseconds.
    pub gaps: Vec<[u64; 2]>,
    pub last_ack_ms: u64,
    pub stopped_ms: u64,
    pub first_error: Option<String>,
}

/// One row of the client table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientReport {
    pub client: String,
    pub settings: String,
    pub acknowledged_writes: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub readonly_errors: u64,
    pub other_errors: u64,
    /// From the start of the operation to the first acknowledged write after the longest pause
    /// that followed it; `None` when the client never wrote again before the drill ended.
    pub first_write_after_ms: Option<u64>,
    pub longest_gap_ms: u64,
    /// No acknowledged write from [`STUCK_AFTER`] after the name moved to the end: the library
    /// will not get off the old node by itself. `None` when the drill ended sooner than that.
    pub stuck: Option<bool>,
    /// From the start of the operation to the last acknowledged write (negative: before it).
    pub last_write_after_ms: i64,
    pub first_error: Option<String>,
    /// The writer could not run, or its result could not be checked.
    pub error: Option<String>,
}

/// How long after the name moved a client still failing counts as stuck.
pub const STUCK_AFTER: Duration = Duration::from_secs(30);

/// How long a client must have run past the [`STUCK_AFTER`] line to be judged: a working
/// library may be inside one silent retry (a 1 s timeout) when the line passes.
pub const STUCK_JUDGED_OVER: Duration = Duration::from_secs(2);

/// Whether the client was stuck (see [`ClientReport::stuck`]): it wrote nothing from
/// `STUCK_AFTER` after the name moved (`effect_ms`) until it stopped; unknown when it stopped
/// less than [`STUCK_JUDGED_OVER`] after that line.
pub fn stuck(summary: &Summary, effect_ms: u64) -> Option<bool> {
    let deadline = effect_ms + STUCK_AFTER.as_millis() as u64;
    let judged_from = deadline + STUCK_JUDGED_OVER.as_millis() as u64;
    (summary.stopped_ms >= judged_from).then_some(summary.last_ack_ms < deadline)
}

/// The outage a client saw from the operation: the longest pause between acknowledgements that
/// ended after the operation started (`operation_ms`) and began before it took effect
/// (`effect_ms`, when the name moved) — a later pause is the client's own jitter, not the
/// operation's. A pause still open when the writer stopped counts. Returns (first write after
/// the operation, longest pause); the first is `None` when that pause never ended.
pub fn outage(summary: &Summary, operation_ms: u64, effect_ms: u64) -> (Option<u64>, u64) {
    let open = (summary.stopped_ms.saturating_sub(summary.last_ack_ms) > 20).then_some((
        summary.last_ack_ms,
        summary.stopped_ms,
        true,
    ));
    let longest = summary
        .gaps
        .iter()
        .map(|&[from, to]| (from, to, false))
        .chain(open)
        .filter(|&(from, to, _)| to > operation_ms && from <= effect_ms)
        .max_by_key(|&(from, to, _)| to - from);
    match longest {
        None => (Some(0), 0),
        Some((from, to, true)) => (None, to - from),
        Some((from, to, false)) => (Some(to.saturating_sub(operation_ms)), to - from),
    }
}

pub struct Running {
    writer: ClientWriter,
    key: String,
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
}

/// Where the client writers write.
#[derive(Debug, Clone)]
pub struct Target {
    /// The lab's global name, or a seed node of a cluster.
    pub host: String,
    pub port: u16,
    pub password: String,
    /// Cluster mode: each library's cluster client, which reads the slots from the seed and
    /// follows `MOVED`.
    pub cluster: bool,
}

impl Target {
    /// The lab's global name, as an application reaches the writer.
    pub fn lab(spec: &LabSpec) -> Target {
        Target {
            host: format!("{}.{}", spec.global_name, spec.zone),
            port: spec.port,
            password: std::fs::read_to_string(spec.password_file())
                .unwrap_or_default()
                .trim()
                .to_string(),
            cluster: false,
        }
    }

    /// A cluster with no password, through one of its nodes.
    pub fn cluster_seed(seed: std::net::SocketAddr) -> Target {
        Target {
            host: seed.ip().to_string(),
            port: seed.port(),
            password: String::new(),
            cluster: true,
        }
    }
}

/// Starts every writer and waits until each has written once (or failed to start).
pub async fn start(
    target: &Target,
    clients_dir: &Path,
    run_id: u64,
    writers: &[ClientWriter],
    netns: Option<&str>,
) -> Vec<Result<Running, ClientReport>> {
    let mut started = Vec::new();
    for &writer in writers {
        let failed = |error: String| ClientReport {
            error: Some(error),
            ..report_for(writer)
        };
        let (program, args) = match writer.library.command(clients_dir) {
            Ok(c) => c,
            Err(e) => {
                started.push(Err(failed(e)));
                continue;
            }
        };
        let key = format!(
            "clients:{run_id}:{}:{}",
            writer.library.name(),
            writer.settings.as_str()
        );
        // In a lab's network namespace through `ip netns exec`, which also puts the place's
        // /etc/netns/<ns>/resolv.conf in place: each library resolves the name as an
        // application standing there would.
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        let spawned = command
            .args(&args)
            .env("VALKEY_DR_HOST", &target.host)
            .env("VALKEY_DR_PORT", target.port.to_string())
            .env("VALKEY_DR_CLUSTER", if target.cluster { "1" } else { "" })
            .env("VALKEY_DR_USER", "")
            // The password goes in the environment, never on a command line others can read.
            .env("VALKEY_DR_PASSWORD", &target.password)
            .env("VALKEY_DR_KEY", &key)
            // The drill stops the writer with SIGTERM; this only bounds a forgotten one.
            .env("VALKEY_DR_SECONDS", "600")
            .env("VALKEY_DR_SETTINGS", writer.settings.as_str())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                started.push(Err(failed(format!(
                    "cannot run {}: {e}",
                    program.display()
                ))));
                continue;
            }
        };
        let Some(stdout) = child.stdout.take() else {
            started.push(Err(failed("no stdout".into())));
            continue;
        };
        started.push(Ok(Running {
            writer,
            key,
            child,
            stdout: BufReader::new(stdout).lines(),
        }));
    }
    let mut ready = Vec::new();
    for running in started {
        ready.push(match running {
            Err(report) => Err(report),
            Ok(mut r) => {
                let first =
                    tokio::time::timeout(Duration::from_secs(20), r.stdout.next_line()).await;
                match first {
                    Ok(Ok(Some(line))) if line == "ready" => Ok(r),
                    _ => {
                        let _ = r.child.start_kill();
                        Err(ClientReport {
                            error: Some("did not write within 20 s of starting".into()),
                            ..report_for(r.writer)
                        })
                    }
                }
            }
        });
    }
    ready
}

fn report_for(writer: ClientWriter) -> ClientReport {
    ClientReport {
        client: writer.library.name().into(),
        settings: writer.settings.as_str().into(),
        ..ClientReport::default()
    }
}

/// Stops every writer (SIGTERM, then SIGKILL after 5 s), reads its summary, and checks its list
/// for lost writes with `check(key, acknowledged)` ([`lab_list_check`] on a lab). The operation
/// started at `operation_ms` and took effect at `effect_ms` (Unix milliseconds).
pub async fn stop(
    running: Vec<Result<Running, ClientReport>>,
    operation_ms: u64,
    effect_ms: u64,
    check: impl AsyncFn(&str, u64) -> Result<writer::ListCheck, String>,
) -> Vec<ClientReport> {
    let mut reports = Vec::new();
    for r in running {
        let mut r = match r {
            Err(report) => {
                reports.push(report);
                continue;
            }
            Ok(r) => r,
        };
        if let Some(pid) = r.child.id() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        let mut report = report_for(r.writer);
        // What it said last, to name in the report when no summary comes.
        let mut last_said = String::from("nothing");
        let summary = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match r.stdout.next_line().await {
                    Ok(Some(line)) => match serde_json::from_str::<Summary>(&line) {
                        Ok(summary) => return Some(summary),
                        Err(e) => last_said = format!("{line:?} ({e})"),
                    },
                    Ok(None) => return None,
                    Err(e) => {
                        last_said = format!("unreadable output ({e})");
                        return None;
                    }
                }
            }
        })
        .await;
        let _ = r.child.start_kill();
        let ended = r.child.wait().await;
        let summary = match summary {
            Ok(Some(summary)) => summary,
            stopped => {
                let how = match stopped {
                    Err(_) => "still running 5 s after SIGTERM".to_string(),
                    Ok(_) => format!(
                        "ended ({})",
                        ended.map_or_else(|e| e.to_string(), |s| s.to_string())
                    ),
                };
                report.error = Some(format!(
                    "gave no summary when stopped: {how}; last said {last_said}"
                ));
                reports.push(report);
                continue;
            }
        };
        let (first_write_after_ms, longest_gap_ms) = outage(&summary, operation_ms, effect_ms);
        report.stuck = stuck(&summary, effect_ms);
        report.last_write_after_ms = summary.last_ack_ms as i64 - operation_ms as i64;
        report.acknowledged_writes = summary.acked;
        report.readonly_errors = summary.readonly_errors;
        report.other_errors = summary.other_errors;
        report.first_error = summary.first_error;
        report.first_write_after_ms = first_write_after_ms;
        report.longest_gap_ms = longest_gap_ms;
        match check(&r.key, summary.acked).await {
            Ok(check) => {
                report.lost = check.lost;
                report.duplicated = check.duplicated;
            }
            Err(e) => report.error = Some(format!("cannot check its writes: {e}")),
        }
        reports.push(report);
    }
    reports
}

/// A client writer's list on the lab's current primary (through the name), checked.
pub async fn lab_list_check(
    spec: &LabSpec,
    key: &str,
    acked: u64,
) -> Result<writer::ListCheck, String> {
    let config = WriterConfig {
        prefix: key.to_string(),
        list: true,
        ..spec.writer(key)?
    };
    writer::verify_list(&config, acked).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(gaps: &[[u64; 2]], last_ack_ms: u64, stopped_ms: u64) -> Summary {
        Summary {
            gaps: gaps.to_vec(),
            last_ack_ms,
            stopped_ms,
            ..Summary::default()
        }
    }

    #[test]
    fn stuck_means_still_failing_thirty_seconds_after_the_name_moved() {
        // (case, summary, expected); the name moves at 1_000, so the line is at 31_000.
        let cases = [
            (
                "stopped before the line: unknown",
                summary(&[], 900, 30_000),
                None,
            ),
            (
                "stopped too soon after the line to tell a retry from a stuck client",
                summary(&[[990, 2_000]], 30_500, 32_900),
                None,
            ),
            (
                "recovered at once",
                summary(&[[990, 1_100]], 40_000, 40_001),
                Some(false),
            ),
            (
                "recovered late, before the line",
                summary(&[[990, 29_000]], 40_000, 40_001),
                Some(false),
            ),
            ("never wrote again", summary(&[], 990, 40_000), Some(true)),
            (
                "wrote again, then stopped before the line",
                summary(&[[990, 2_000]], 20_000, 40_000),
                Some(true),
            ),
        ];
        for (case, s, expected) in cases {
            assert_eq!(stuck(&s, 1_000), expected, "{case}");
        }
    }

    #[test]
    fn outage_is_the_longest_pause_the_operation_caused() {
        // (case, summary, expected (first write after, longest pause)); the operation starts at
        // 1_000 and the name moves at 1_040.
        let cases = [
            ("no pause at all", summary(&[], 5_000, 5_010), (Some(0), 0)),
            (
                "one pause across the operation",
                summary(&[[990, 1_300]], 5_000, 5_001),
                (Some(300), 310),
            ),
            (
                "a longer pause before the operation does not count",
                summary(&[[100, 900], [1_020, 1_200]], 5_000, 5_001),
                (Some(200), 180),
            ),
            (
                "paused, wrote briefly, then the real outage",
                summary(&[[1_000, 1_010], [1_020, 2_500]], 5_000, 5_001),
                (Some(1_500), 1_480),
            ),
            (
                "a longer pause long after the name moved is the client's own jitter",
                summary(&[[1_005, 1_050], [4_000, 4_070]], 5_000, 5_001),
                (Some(50), 45),
            ),
            (
                "never wrote again",
                summary(&[[100, 130]], 999, 5_000),
                (None, 4_001),
            ),
            (
                "a short open pause at the end is no outage",
                summary(&[[1_000, 1_400]], 4_990, 5_000),
                (Some(400), 400),
            ),
        ];
        for (case, s, expected) in cases {
            assert_eq!(outage(&s, 1_000, 1_040), expected, "{case}");
        }
    }

    #[test]
    fn the_matrix_has_both_settings_of_every_library() {
        let names: Vec<String> = matrix(&Library::ALL)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            names,
            [
                "redis-py (default)",
                "redis-py (recommended)",
                "valkey-py (default)",
                "valkey-py (recommended)",
                "glide-python (default)",
                "glide-python (recommended)",
                "ioredis (default)",
                "ioredis (recommended)",
                "iovalkey (default)",
                "iovalkey (recommended)",
                "node-redis (default)",
                "node-redis (recommended)",
                "glide-node (default)",
                "glide-node (recommended)",
                "phpredis (default)",
                "phpredis (recommended)",
                "predis (default)",
                "predis (recommended)",
                "redis-rs (default)",
                "redis-rs (recommended)",
                "valkey-cli (default)",
                "valkey-cli (recommended)",
            ]
        );
    }

    #[test]
    fn a_missing_library_is_named_with_the_command_that_installs_it() {
        let empty = std::env::temp_dir().join("valkey-dr-no-clients");
        for library in [
            Library::RedisPy,
            Library::ValkeyPy,
            Library::Ioredis,
            Library::Iovalkey,
            Library::NodeRedis,
            Library::GlideNode,
        ] {
            let err = library.command(&empty).unwrap_err();
            assert!(err.contains("make clients"), "{err}");
        }
    }
}
