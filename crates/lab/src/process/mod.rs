//! Starting and stopping the lab's processes. Every process records its pid in the lab directory,
//! so `lab down` finds them all and `lab up` can tell that a lab is already running.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::spec::LabSpec;

mod signals;
pub use signals::{is_alive, is_running, is_stopped, kill_recorded, signal, signal_recorded};

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{0}")]
    Io(String),
    #[error(
        "no valkey-server (or redis-server) found in PATH; install Valkey 8 (`make deps`, or apt-get install -t bookworm-backports valkey-server) or set VALKEY_SERVER"
    )]
    NoValkey,
    #[error("{what} did not become ready within {seconds} s; see {log}")]
    NotReady {
        what: String,
        seconds: u64,
        log: String,
    },
}

fn io(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> LabError {
    move |e| LabError::Io(format!("{context}: {e}"))
}

/// A process of the lab, as recorded by its pid file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabProcess {
    pub name: String,
    pub pidfile: PathBuf,
    pub pid: Option<i32>,
    pub alive: bool,
}

pub fn valkey_server_binary() -> Result<PathBuf, LabError> {
    if let Some(path) = std::env::var_os("VALKEY_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["valkey-server", "redis-server"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(LabError::NoValkey)
}

/// Every process a lab in `dir` recorded (`*.pid` files): its nodes, the link daemon and the
/// controller. Read from the directory alone, so a lab of any version can be found and stopped.
pub fn processes(dir: &Path) -> Vec<LabProcess> {
    let mut list: Vec<LabProcess> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pid"))
        .map(|pidfile| {
            let stem = pidfile
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let name = match stem.as_str() {
                "link" => "region link".to_string(),
                "controller" => "controller".to_string(),
                other => other.replacen("valkey-", "valkey ", 1),
            };
            let pid = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            LabProcess {
                name,
                alive: pid.is_some_and(is_alive),
                pid,
                pidfile,
            }
        })
        .collect();
    // Nodes first (by address), then the link, then the controller.
    list.sort_by_key(|p| {
        (
            !p.name.starts_with("valkey"),
            p.name.starts_with("controller"),
            p.name.clone(),
        )
    });
    list
}

pub fn any_running(dir: &Path) -> bool {
    processes(dir).iter().any(|p| p.alive)
}

/// Starts a fresh lab. Returns false (and starts nothing) when one is already running in the directory.
pub async fn up(spec: &LabSpec, valkey_dr: &Path) -> Result<bool, LabError> {
    up_with_env(spec, valkey_dr, &[]).await
}

/// [`up`], with extra environment for the controllers (fault injection).
pub async fn up_with_env(
    spec: &LabSpec,
    valkey_dr: &Path,
    env: &[(&str, &str)],
) -> Result<bool, LabError> {
    if any_running(&spec.dir) {
        return Ok(false);
    }
    valkey_server_binary()?;
    reset_dir(spec)?;
    spec.save().map_err(io("writing lab.json"))?;
    if spec.netns {
        crate::netns::create(spec).map_err(|e| {
            crate::netns::destroy(spec);
            LabError::Io(e.to_string())
        })?;
    }
    // The lab's config (what `valkey-dr status` and friends read) is the last site's.
    std::fs::write(spec.config_path(), spec.main_config().to_toml())
        .map_err(io("writing the controller config"))?;
    for site in &spec.sites {
        std::fs::write(
            spec.site_config_path(site),
            spec.site_config(site).to_toml(),
        )
        .map_err(io("writing a site's controller config"))?;
    }

    crate::pki::generate(spec).map_err(LabError::Io)?;
    let security = spec.security().map_err(LabError::Io)?;
    let password = security
        .auth
        .as_ref()
        .map(|a| a.password.expose().to_string())
        .unwrap_or_default();
    let app_password = std::fs::read_to_string(spec.app_password_file())
        .map_err(io("reading the applications' password"))?;
    for (r, i) in spec.nodes() {
        let conf = spec.dir.join(format!("valkey-{}.conf", spec.node_ip(r, i)));
        std::fs::create_dir_all(spec.node_dir(r, i)).map_err(io("creating a node directory"))?;
        // The config holds the password: owner-only.
        write_private(
            &conf,
            &spec.valkey_conf(r, i, &password, app_password.trim()),
        )
        .map_err(io("writing a valkey config"))?;
        start_node(spec, r, i)?;
    }
    for (r, i) in spec.nodes() {
        let addr = spec.node_addr(r, i);
        wait_for(
            &format!("valkey {addr}"),
            &spec.dir.join(format!("valkey-{}.log", addr.ip())),
            || ping(addr, &security),
        )
        .await?;
    }
    // Every node starts as a replica (see `LabSpec::valkey_conf`): make the writer a master.
    let writer = spec.node_addr(0, 0);
    let endpoint = valkey_dr_core::Endpoint::new(&writer.ip().to_string(), writer.port());
    let timeouts = valkey_dr_valkey::Timeouts {
        connect: Duration::from_millis(500),
        command: Duration::from_millis(1000),
    };
    let mut conn = valkey_dr_valkey::connect(&endpoint, &security, timeouts)
        .await
        .map_err(|e| LabError::Io(format!("connecting to the writer {writer}: {e}")))?;
    redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async::<()>(&mut conn)
        .await
        .map_err(|e| LabError::Io(format!("promoting the writer {writer}: {e}")))?;
    start_links(spec, valkey_dr)?;
    if spec.is_ha() {
        start_etcd(spec).await?;
        // The last site (the witness) starts first and leads: the data regions are the likelier
        // to fail, and a lab that always starts the same way is easier to read.
        let (first, others) = spec.sites.split_last().expect("sites");
        start_site_controller(spec, valkey_dr, first, env)?;
        let socket = spec.site_config(first).control_socket();
        wait_for(
            "the first controller to lead",
            &spec.dir.join(format!("controller-{first}.log")),
            || async {
                valkey_dr_controller::control::request(
                    &socket,
                    &valkey_dr_controller::control::Request::Status,
                    |_| {},
                )
                .await
                .is_ok_and(|s| s["coordination"]["is_leader"] == true)
            },
        )
        .await?;
        for site in others {
            start_site_controller(spec, valkey_dr, site, env)?;
        }
    } else {
        start_controller(spec, valkey_dr, env)?;
    }
    Ok(true)
}

/// Starts the region link's daemon: one for the whole lab on loopback, one per place (serving
/// the link ends that listen there) in network namespaces.
fn start_links(spec: &LabSpec, valkey_dr: &Path) -> Result<(), LabError> {
    if !spec.netns {
        return spawn_daemon(valkey_dr, &["lab", "link", "--dir"], spec, "link", &[]);
    }
    for place in crate::netns::places(spec) {
        let place_arg = place.to_string();
        spawn(
            valkey_dr,
            &["lab", "link", "--place", &place_arg, "--dir"],
            &spec.dir,
            &spec.dir,
            &format!("link-{place}"),
            &[],
            namespace(spec, place).as_deref(),
        )?;
    }
    Ok(())
}

/// The network namespace a process of place `place` runs in, if the lab has them.
fn namespace(spec: &LabSpec, place: u8) -> Option<String> {
    spec.netns.then(|| crate::netns::place_ns(spec, place))
}

/// Makes `command` start in `ns`, if any.
fn enter(command: &mut Command, ns: Option<&str>) -> Result<(), LabError> {
    match ns {
        Some(ns) => crate::netns::enter(command, ns).map_err(io(format!("entering {ns}"))),
        None => Ok(()),
    }
}

/// Starts one etcd member per site, daemonized, and waits until they have a quorum.
async fn start_etcd(spec: &LabSpec) -> Result<(), LabError> {
    let members = spec.etcd_members();
    for i in 0..members.len() {
        start_etcd_member(spec, i)?;
    }
    let endpoints = spec.etcd_member_endpoints();
    let tls = spec.etcd_tls().map_err(LabError::Io)?;
    valkey_dr_coord::cluster::wait_ready(
        &endpoints,
        tls.as_ref(),
        Duration::from_secs(30),
        "the lab's etcd",
    )
    .await
    .map_err(|e| {
        LabError::Io(format!(
            "{e}; see {}",
            spec.dir.join("etcd-*.log").display()
        ))
    })
}

/// Starts (or restarts, on its data) the etcd member of site number `i`.
pub fn start_etcd_member(spec: &LabSpec, i: usize) -> Result<(), LabError> {
    use std::os::unix::process::CommandExt;
    let members = spec.etcd_members();
    let name = &members[i].name;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spec.dir.join(format!("etcd-{name}.log")))
        .map_err(io("creating an etcd log"))?;
    let tls = spec.etcd_member_tls(name);
    let mut command =
        valkey_dr_coord::cluster::member_command(&spec.dir.join("etcd"), &members, i, tls.as_ref());
    enter(&mut command, namespace(spec, spec.place(name)).as_deref())?;
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io("log file"))?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| LabError::Io(valkey_dr_coord::cluster::spawn_error(e).to_string()))?;
    std::fs::write(spec.etcd_pidfile(name), child.id().to_string())
        .map_err(io("writing a pid file"))?;
    Ok(())
}

/// Starts the controller of one site of the highly available shape.
pub fn start_site_controller(
    spec: &LabSpec,
    valkey_dr: &Path,
    site: &str,
    env: &[(&str, &str)],
) -> Result<(), LabError> {
    spawn(
        valkey_dr,
        &["run", "--config"],
        &spec.site_config_path(site),
        &spec.dir,
        &format!("controller-{site}"),
        env,
        namespace(spec, spec.place(site)).as_deref(),
    )
}

/// Starts (or restarts) one node from its config file, daemonized. Without persistence it comes
/// back empty, in the role its file gives it. The umask keeps the file the owner's only when the
/// controller rewrites it (`CONFIG REWRITE` creates it anew; it holds the password).
///
/// Refused while the node's pid file names a live process: a second server on the same config
/// fails to bind, but only after it wrote its own pid there — the first one, still serving, would
/// be lost to `lab down`.
pub fn start_node(spec: &LabSpec, region: usize, index: usize) -> Result<(), LabError> {
    use std::os::unix::process::CommandExt;
    if let Some(pid) = node_pid(spec, region, index).filter(|pid| is_alive(*pid)) {
        return Err(LabError::Io(format!(
            "valkey {} is already running (pid {pid})",
            spec.node_addr(region, index)
        )));
    }
    let valkey_server = valkey_server_binary()?;
    let conf = spec
        .dir
        .join(format!("valkey-{}.conf", spec.node_ip(region, index)));
    let mut command = Command::new(&valkey_server);
    command
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    enter(&mut command, namespace(spec, region as u8 + 1).as_deref())?;
    // SAFETY: umask is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    let status = command
        .status()
        .map_err(io(format!("starting {}", valkey_server.display())))?;
    if !status.success() {
        return Err(LabError::Io(format!(
            "{} exited with {status} for {}",
            valkey_server.display(),
            conf.display()
        )));
    }
    Ok(())
}

/// The pid a node's pid file names, if any.
fn node_pid(spec: &LabSpec, region: usize, index: usize) -> Option<i32> {
    std::fs::read_to_string(spec.node_pidfile(region, index))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Starts a node again from its config file with an empty data directory, as a supervisor
/// (`Restart=always`) brings back a node without persistence on ephemeral storage. Without this,
/// a replica would reload the RDB file its last full sync left on disk.
pub fn start_node_empty(spec: &LabSpec, region: usize, index: usize) -> Result<(), LabError> {
    let dir = spec.node_dir(region, index);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    start_node(spec, region, index)
}

/// Starts a killed node again the way a supervisor does (`Restart=always`, `RestartSec=100ms`):
/// a start whose server exits at once (its port still held for a moment by the killed process's
/// last sockets or a forked child: `bind: Address already in use`) is tried again until the node
/// answers, up to 10 s. Without this, one lost race kept a node down until the scenario healed,
/// which no supervisor would do. A start whose server lives but does not answer yet is waited
/// for, not started again. `empty`: its data directory is cleared first.
pub async fn restart_node(
    spec: &LabSpec,
    region: usize,
    index: usize,
    empty: bool,
) -> Result<(), LabError> {
    let security = spec.security().map_err(LabError::Io)?;
    let addr = spec.node_addr(region, index);
    let log = spec.dir.join(format!("valkey-{}.log", addr.ip()));
    let what = format!("valkey {addr} after a restart");
    for _ in 0..10 {
        if !node_pid(spec, region, index).is_some_and(is_alive) {
            if empty {
                start_node_empty(spec, region, index)?;
            } else {
                start_node(spec, region, index)?;
            }
        }
        if wait_within(&what, &log, Duration::from_secs(1), || {
            ping(addr, &security)
        })
        .await
        .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(LabError::NotReady {
        what,
        seconds: 10,
        log: log.display().to_string(),
    })
}

/// Removes the `replicaof` line from a node's config file, as in a deployment whose writer's file
/// makes it a master: restarted, it comes back as one (empty, without persistence).
pub fn drop_replicaof(spec: &LabSpec, region: usize, index: usize) -> Result<(), LabError> {
    let conf = spec
        .dir
        .join(format!("valkey-{}.conf", spec.node_ip(region, index)));
    let text = std::fs::read_to_string(&conf).map_err(io("reading a valkey config"))?;
    let without: String = text
        .lines()
        .filter(|l| !l.starts_with("replicaof"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&conf, without).map_err(io("writing a valkey config"))
}

/// Starts the lab's controller (again), with extra environment variables.
pub fn start_controller(
    spec: &LabSpec,
    valkey_dr: &Path,
    env: &[(&str, &str)],
) -> Result<(), LabError> {
    spawn_daemon(valkey_dr, &["run", "--config"], spec, "controller", env)
}

/// Starts `valkey-dr run --config <config>` detached, its pid file and log `<name>.pid|log` in
/// `dir`.
pub fn start_named_controller(
    valkey_dr: &Path,
    config: &Path,
    dir: &Path,
    name: &str,
) -> Result<(), LabError> {
    spawn(
        valkey_dr,
        &["run", "--config"],
        config,
        dir,
        name,
        &[],
        None,
    )
}

/// Starts `valkey-dr <args> <path>` detached from the terminal, appending to `<name>.log`.
fn spawn_daemon(
    valkey_dr: &Path,
    args: &[&str],
    spec: &LabSpec,
    name: &str,
    env: &[(&str, &str)],
) -> Result<(), LabError> {
    let target = if name == "link" {
        spec.dir.clone()
    } else {
        spec.config_path()
    };
    // The single controller stands in the controller's place.
    spawn(
        valkey_dr,
        args,
        &target,
        &spec.dir,
        name,
        env,
        namespace(spec, 0).as_deref(),
    )
}

/// Starts `valkey-dr <args> <target>` detached (in namespace `ns`, if any), logging to
/// `dir/<name>.log`, pid in `<name>.pid`.
fn spawn(
    valkey_dr: &Path,
    args: &[&str],
    target: &Path,
    dir: &Path,
    name: &str,
    env: &[(&str, &str)],
    ns: Option<&str>,
) -> Result<(), LabError> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .map_err(io("creating a log file"))?;
    let mut command = Command::new(valkey_dr);
    enter(&mut command, ns)?;
    let child = command
        .args(args)
        .arg(target)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io("log file"))?)
        .stderr(log)
        // Own process group: a Ctrl-C in the shell that ran `lab up` does not stop the lab.
        .process_group(0)
        .spawn()
        .map_err(io(format!("starting {}", valkey_dr.display())))?;
    std::fs::write(dir.join(format!("{name}.pid")), child.id().to_string())
        .map_err(io("writing a pid file"))?;
    Ok(())
}

/// Removes what a previous lab left (data, state, pid files); a new lab starts from nothing.
fn reset_dir(spec: &LabSpec) -> Result<(), LabError> {
    if spec.dir.exists() {
        for entry in std::fs::read_dir(&spec.dir)
            .map_err(io("reading the lab directory"))?
            .flatten()
        {
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
    std::fs::create_dir_all(&spec.dir).map_err(io(format!("creating {}", spec.dir.display())))
}

/// Stops every lab process: SIGTERM, then SIGKILL for those still alive after 3 s.
/// Returns the names of the processes that were running.
pub async fn down(dir: &Path) -> Vec<String> {
    let running: Vec<LabProcess> = processes(dir).into_iter().filter(|p| p.alive).collect();
    for p in &running {
        // SAFETY: plain signal delivery to a pid we recorded.
        unsafe { libc::kill(p.pid.unwrap_or(0), libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while running.iter().any(|p| is_alive(p.pid.unwrap_or(0))) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for p in &running {
        if is_alive(p.pid.unwrap_or(0)) {
            // SAFETY: as above.
            unsafe { libc::kill(p.pid.unwrap_or(0), libc::SIGKILL) };
        }
    }
    while running.iter().any(|p| is_alive(p.pid.unwrap_or(0))) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for p in processes(dir) {
        let _ = std::fs::remove_file(&p.pidfile);
    }
    if let Ok(spec) = LabSpec::load(dir)
        && spec.netns
    {
        crate::netns::destroy(&spec);
    }
    let _ = std::fs::remove_file(dir.join("controller").join("control.sock"));
    running.into_iter().map(|p| p.name).collect()
}

/// `PING` with the lab's TLS and AUTH settings: true when the node answers.
pub async fn ping(addr: SocketAddr, security: &valkey_dr_valkey::Security) -> bool {
    let endpoint = valkey_dr_core::Endpoint::new(&addr.ip().to_string(), addr.port());
    let timeouts = valkey_dr_valkey::Timeouts {
        connect: Duration::from_millis(500),
        command: Duration::from_millis(500),
    };
    let Ok(mut conn) = valkey_dr_valkey::connect(&endpoint, security, timeouts).await else {
        return false;
    };
    let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
    pong.is_ok()
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

pub async fn wait_for<F, Fut>(what: &str, log: &Path, ready: F) -> Result<(), LabError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_within(what, log, Duration::from_secs(30), ready).await
}

/// Polls `ready` every 50 ms for up to `within`.
async fn wait_within<F, Fut>(
    what: &str,
    log: &Path,
    within: Duration,
    mut ready: F,
) -> Result<(), LabError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if ready().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(LabError::NotReady {
        what: what.to_string(),
        seconds: within.as_secs(),
        log: log.display().to_string(),
    })
}
