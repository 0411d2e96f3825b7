//! `valkey-dr`: a thin command-line layer over the valkey-dr library crates.

// Before the other modules: its `out!`/`outln!` macros serve them all.
#[macro_use]
mod output;

#[cfg(feature = "aws")]
mod aws;
mod chaos;
mod drill;
mod lab;
mod render;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use valkey_dr_controller::cluster::controller::ControlledClusterStatus;
use valkey_dr_controller::cluster::{ClusterFailover, ClusterSwitchover};
use valkey_dr_controller::control::{self, Request};
use valkey_dr_controller::faults::{Fault, FaultAction, FaultInjector, FaultPoint};
use valkey_dr_controller::promotion::PromoteMethod;
use valkey_dr_core::Config;
use valkey_dr_core::config::Mode;

#[derive(Parser)]
#[command(
    name = "valkey-dr",
    version,
    about = "One DNS name that always leads to the writable Valkey primary across regions."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    Safe,
    Blind,
    FailoverCommand,
}

impl From<Method> for PromoteMethod {
    fn from(m: Method) -> Self {
        match m {
            Method::Safe => PromoteMethod::Safe,
            Method::Blind => PromoteMethod::Blind,
            Method::FailoverCommand => PromoteMethod::FailoverCommand,
        }
    }
}

#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// Controller config file [default: $VALKEY_DR_CONFIG, else the running lab's config]
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Each shard: its slots, its primary and replicas with their regions and lag, and what is
    /// wrong (a primary outside the writer region, a region without a replica, a failed node).
    /// Discovered from the first configured node that answers `CLUSTER NODES`.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Move every shard's primary to REGION as one cut: writes paused on every primary, every
    /// target caught up, every shard handed over (`CLUSTER FAILOVER TAKEOVER`, under the pause),
    /// clients released. All or
    /// nothing: a shard that cannot move stops them all; one that fails to hand over hands the
    /// others back. With `mode = "cluster"` the controller runs it: it records the move, raises
    /// the epoch and moves the name once the shards show every primary in REGION.
    Switchover {
        /// The region that is to hold every shard's primary.
        region: String,
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// After the loss of the region holding the primaries: every shard's primary to REGION, by
    /// TAKEOVER on its most advanced replica there. A primary that still answers is paused
    /// first and its replica caught up (nothing lost); one that does not answer is taken from
    /// only with --confirm-down. Every shard that can move moves; a rerun completes the rest.
    /// With `mode = "cluster"` the controller runs it, as it runs a switchover.
    Failover {
        /// The region that is to hold every shard's primary.
        region: String,
        /// Every primary that does not answer is down or fenced: it takes no writes (stopped,
        /// or its region cut off from its clients). Without it, a primary that does not answer
        /// stops the failover, since cut off but alive it would be a second writer.
        #[arg(long)]
        confirm_down: bool,
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Before a cluster node without persistence starts (its supervisor's `ExecStartPre=`):
    /// returns once no other node counts NODE as the primary of slots — the cluster replaced it,
    /// and it rejoins empty as its successor's replica. Started empty while it still is one,
    /// every replica of its shard would full-sync the empty dataset. Exits 75 after --wait-s
    /// while one still does (the supervisor tries again); 0 at once when it was a replica, and
    /// after --wait-s when no other node answers (a whole-cluster restart).
    StartGuard {
        /// The node about to start, as the configuration names it (`host:port`).
        node: String,
        /// How long to wait for the cluster to replace it.
        #[arg(long, default_value_t = 60)]
        wait_s: u64,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller in the foreground: reconcile loop, embedded DNS server, control socket.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Validate a config file and print it with defaults filled in.
    CheckConfig { file: PathBuf },
    /// Show regions, nodes, roles, replication links and lag, the epoch, and DNS.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Planned switchover: move the writer to REGION without losing an acknowledged write.
    Promote {
        region: String,
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
        /// `safe` is the loss-free switchover; `blind` (no pause) and `failover-command` (Valkey's
        /// FAILOVER TO) exist to compare against it.
        #[arg(long, value_enum, default_value = "safe")]
        method: Method,
    },
    /// Unplanned failover to REGION when the writer is unreachable (it cannot be paused: writes it
    /// took after the last replication may be lost; the report says how many bytes were at risk).
    Failover {
        region: String,
        /// Confirm that writes may be lost.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// After a split brain: make REGION's master the writer of a new epoch; other masters are fenced.
    Adopt {
        region: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Allow automatic failovers again after one happened (anti-flapping block).
    Ack {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run one reconcile pass now.
    Reconcile {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the controller's event stream (JSON lines).
    Events {
        #[command(flatten)]
        config: ConfigArg,
        /// Keep printing new events as they arrive.
        #[arg(long, short)]
        follow: bool,
    },
    /// Cluster mode: the shards of a Valkey cluster stretched over the configured regions, and
    /// an all-shard switchover.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Measured switchovers and failovers against a running lab.
    Drill {
        #[command(subcommand)]
        command: drill::DrillCommand,
    },
    /// Fault scenarios, each on a lab of its own, judged by independent writers and a monitor:
    /// acknowledged writes lost, time with two masters, time with the name on a replica.
    Chaos(chaos::ChaosArgs),
    /// The AWS shape: the reconcile the Lambda runs, from this machine.
    #[cfg(feature = "aws")]
    Aws {
        #[command(subcommand)]
        command: aws::AwsCommand,
    },
    /// The local two-region lab.
    Lab {
        #[command(subcommand)]
        command: lab::LabCommand,
    },
}

fn main() -> std::process::ExitCode {
    match run_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The error chain, one cause per line; no backtrace for users.
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            // 75 (EX_TEMPFAIL): the controller ended the request unfinished with nothing lost
            // and the same command may be run again; scripts can tell that from a failure.
            if retryable(&error) {
                std::process::ExitCode::from(75)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// Whether `error` ended a request unfinished with nothing lost, where the same command may be
/// run again: said so by the controller, by a cluster move run here, or by the start guard of a
/// node the cluster has not replaced yet.
fn retryable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<control::ClientError>(),
            Some(control::ClientError::Retryable(_))
        ) || cause
            .downcast_ref::<valkey_dr_controller::cluster::ClusterError>()
            .is_some_and(|e| e.retryable())
            || matches!(
                cause.downcast_ref::<valkey_dr_controller::cluster::start_guard::StartGuardError>(),
                Some(
                    valkey_dr_controller::cluster::start_guard::StartGuardError::NotReplaced { .. }
                )
            )
    })
}

fn run_cli() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VALKEY_DR_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(dispatch(cli.command))
}

async fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run { config } => run(&load_config(&config)?).await,
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            out!("{}", config.to_toml());
            Ok(())
        }
        Command::Status { config, output } => {
            let config = load_config(&config)?;
            if config.mode == Mode::Cluster {
                return controlled_cluster_status(&config, output).await;
            }
            let status =
                control::request(&config.control_socket(), &Request::Status, |_| {}).await?;
            match output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&status)?),
                Output::Table => out!(
                    "{}",
                    render::status(&config, &serde_json::from_value(status)?)
                ),
            }
            Ok(())
        }
        Command::Promote {
            region,
            config,
            output,
            method,
        } => {
            let config = load_config(&config)?;
            promote(&config, &region, output, method.into()).await
        }
        Command::Failover {
            region,
            force,
            config,
        } => {
            let config = load_config(&config)?;
            let request = Request::Failover { region, force };
            let result = control::request(&config.control_socket(), &request, |_| {}).await?;
            outln!("{}", serde_json::to_string_pretty(&result)?);
            Ok(())
        }
        Command::Adopt { region, config } => {
            let config = load_config(&config)?;
            let result =
                control::request(&config.control_socket(), &Request::Adopt { region }, |_| {})
                    .await?;
            outln!("{}", serde_json::to_string_pretty(&result)?);
            Ok(())
        }
        Command::Cluster {
            command:
                ClusterCommand::StartGuard {
                    node,
                    wait_s,
                    config,
                },
        } => {
            use valkey_dr_core::cluster::StartVerdict;
            let config = load_config(&config)?;
            let wait = std::time::Duration::from_secs(wait_s);
            let verdict = valkey_dr_controller::cluster::start_guard::start_guard(
                &config,
                &node,
                wait,
                |waiting| match waiting {
                    StartVerdict::Wait { slots, listed_by } => eprintln!(
                        "{node}: waiting (at most {wait_s} s) for the cluster to replace it: {} still count(s) it as the primary of slots {slots}",
                        listed_by.join(", ")
                    ),
                    _ => eprintln!(
                        "{node}: no other node answers; waiting {wait_s} s before starting alone"
                    ),
                },
            )
            .await?;
            match verdict {
                StartVerdict::NoneAnswered => outln!(
                    "{node} may start: no other node answered for {wait_s} s (a whole-cluster restart)"
                ),
                _ => outln!("{node} may start: no other node counts it as serving slots"),
            }
            Ok(())
        }
        Command::Cluster {
            command: ClusterCommand::Status { config, output },
        } => {
            let config = load_config(&config)?;
            if config.mode == Mode::Cluster {
                return controlled_cluster_status(&config, output).await;
            }
            let status = valkey_dr_controller::cluster::cluster_status(&config).await?;
            match output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&status)?),
                Output::Table => out!("{}", render::cluster(&status, None)),
            }
            Ok(())
        }
        Command::Cluster {
            command:
                ClusterCommand::Switchover {
                    region,
                    config,
                    output,
                },
        } => {
            let config = load_config(&config)?;
            let done: ClusterSwitchover = if config.mode == Mode::Cluster {
                let request = Request::ClusterSwitchover { region };
                serde_json::from_value(control_request(&config, &request, output).await?)?
            } else {
                // The crash tests stop it at a step (`VALKEY_DR_FAULT=crash-after:<step>`), as
                // they stop the controller.
                valkey_dr_controller::cluster::cluster_switchover(&config, &region, crash_at())
                    .await?
            };
            match output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&done)?),
                Output::Table => out!("{}", render::cluster_switchover(&done)),
            }
            Ok(())
        }
        Command::Cluster {
            command:
                ClusterCommand::Failover {
                    region,
                    confirm_down,
                    config,
                    output,
                },
        } => {
            let config = load_config(&config)?;
            let show = |done: &ClusterFailover| -> Result<()> {
                match output {
                    Output::Json => outln!("{}", serde_json::to_string_pretty(done)?),
                    Output::Table => out!("{}", render::cluster_failover(done)),
                }
                Ok(())
            };
            if config.mode == Mode::Cluster {
                let request = Request::ClusterFailover {
                    region,
                    confirm_down,
                };
                let done = control_request(&config, &request, output).await?;
                return show(&serde_json::from_value(done)?);
            }
            match valkey_dr_controller::cluster::cluster_failover(
                &config,
                &region,
                confirm_down,
                crash_at(),
            )
            .await
            {
                Ok(done) => show(&done),
                Err(e) => {
                    // What did move is shown before the error.
                    if let valkey_dr_controller::cluster::ClusterError::Incomplete {
                        done, ..
                    } = &e
                    {
                        show(done)?;
                    }
                    Err(e.into())
                }
            }
        }
        Command::Ack { config } => {
            let config = load_config(&config)?;
            let result = control::request(&config.control_socket(), &Request::Ack, |_| {}).await?;
            if result["was_blocked"] == true {
                outln!("automatic failovers are allowed again");
            } else {
                outln!("automatic failovers were not blocked");
            }
            Ok(())
        }
        Command::Reconcile { config } => {
            let config = load_config(&config)?;
            let result =
                control::request(&config.control_socket(), &Request::Reconcile, |_| {}).await?;
            outln!("{}", serde_json::to_string_pretty(&result)?);
            Ok(())
        }
        Command::Events { config, follow } => {
            events(&load_config(&config)?.events_file(), follow).await
        }
        Command::Lab { command } => lab::dispatch(command).await,
        Command::Drill { command } => drill::dispatch(command).await,
        Command::Chaos(args) => chaos::dispatch(args).await,
        #[cfg(feature = "aws")]
        Command::Aws { command } => aws::dispatch(command).await,
    }
}

/// The config named on the command line, else `$VALKEY_DR_CONFIG`, else the lab's.
fn load_config(arg: &ConfigArg) -> Result<Config> {
    let path = arg
        .config
        .clone()
        .or_else(|| std::env::var_os("VALKEY_DR_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| lab::default_dir().join("valkey-dr.toml"));
    if !path.exists() && arg.config.is_none() {
        bail!(
            "no config given and no lab found at {}: pass --config FILE, set VALKEY_DR_CONFIG, or start the lab with `valkey-dr lab up`",
            path.display()
        );
    }
    Ok(Config::load(&path)?)
}

/// `VALKEY_DR_FAULT=crash-after:<point>` (or `stall-after:<point>`): the crash tests' way into a
/// controller process (see `valkey_dr_controller::faults`).
struct EnvFault(Fault);

impl FaultInjector for EnvFault {
    fn at(&self, point: FaultPoint) -> Option<FaultAction> {
        self.0.action_at(point)
    }

    fn inject(&self, action: FaultAction) {
        match action {
            FaultAction::Crash => std::process::abort(),
            // SAFETY: stops this process, as a VM pause or SIGSTOP from outside would.
            FaultAction::Stall => unsafe {
                libc::raise(libc::SIGSTOP);
            },
        }
    }
}

async fn run(config: &Config) -> Result<()> {
    if config.mode == Mode::Cluster {
        return run_cluster(config).await;
    }
    let faults = match std::env::var("VALKEY_DR_FAULT") {
        Ok(text) => {
            let fault: Fault = text
                .parse()
                .map_err(|e| anyhow::anyhow!("VALKEY_DR_FAULT: {e}"))?;
            Some(Arc::new(EnvFault(fault)) as Arc<dyn FaultInjector>)
        }
        Err(_) => None,
    };
    let mut running = valkey_dr_controller::start_with(config.clone(), faults).await?;
    let controller = running.controller.clone();
    until_stopped(controller.events(), running.task_ended()).await?;
    running.stop().await;
    Ok(())
}

/// The controller of a cluster (`mode = "cluster"`), until SIGINT or SIGTERM.
async fn run_cluster(config: &Config) -> Result<()> {
    let hook: valkey_dr_controller::cluster::controller::StepHook = Arc::new(crash_at());
    let mut running =
        valkey_dr_controller::cluster::controller::start(config.clone(), Some(hook)).await?;
    let controller = running.controller.clone();
    until_stopped(controller.events(), running.task_ended()).await?;
    running.stop().await;
    Ok(())
}

/// Echoes a running controller's events to stderr until SIGINT or SIGTERM. When one of its
/// tasks ends (`ended`: it panicked) the process exits at once with 70: no lease renewal, no
/// half-working controller; the supervisor restarts it.
async fn until_stopped(
    events: &valkey_dr_controller::EventSink,
    ended: impl std::future::Future<Output = String>,
) -> Result<()> {
    use valkey_dr_controller::events::EventKind;
    events.echo_to_stderr(true);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        ended = ended => {
            events.emit(EventKind::ControllerFailed, serde_json::json!({ "reason": ended }));
            std::process::exit(70);
        }
    }
    events.emit(EventKind::ControllerStopped, serde_json::json!({}));
    Ok(())
}

pub async fn promote(
    config: &Config,
    region: &str,
    output: Output,
    method: PromoteMethod,
) -> Result<()> {
    let request = Request::Promote {
        region: region.to_string(),
        method,
    };
    let result = control::request(&config.control_socket(), &request, |event| {
        if output == Output::Table
            && let Some(line) = render::promotion_event(event)
        {
            outln!("{line}");
        }
    })
    .await?;
    match output {
        Output::Json => outln!("{}", serde_json::to_string_pretty(&result)?),
        Output::Table => outln!("{}", render::promotion_result(&result)),
    }
    Ok(())
}

async fn events(path: &Path, follow: bool) -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open the event log {}", path.display()))?;
    let mut reader = tokio::io::BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            if !follow {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        }
        out!("{line}");
    }
}

/// A controlled cluster's status (`mode = "cluster"`), from its controller.
async fn controlled_cluster_status(config: &Config, output: Output) -> Result<()> {
    let status = control::request(&config.control_socket(), &Request::Status, |_| {}).await?;
    match output {
        Output::Json => outln!("{}", serde_json::to_string_pretty(&status)?),
        Output::Table => {
            let status: ControlledClusterStatus = serde_json::from_value(status)?;
            out!("{}", render::controlled_cluster(&status))
        }
    }
    Ok(())
}

/// Sends `request` to the controller; with table output its steps are shown as they happen.
async fn control_request(
    config: &Config,
    request: &Request,
    output: Output,
) -> Result<serde_json::Value> {
    let show = |event: &serde_json::Value| {
        if output == Output::Table
            && let Some(line) = render::cluster_event(event)
        {
            eprintln!("{line}");
        }
    };
    Ok(control::request(&config.control_socket(), request, show).await?)
}

/// The fault tests stop a cluster move at a step (`VALKEY_DR_FAULT=crash-after:<step>`: the
/// process aborts), stall it there (`stall-after:<step>:<ms>`: the move's thread stands still
/// between two steps; a controller's other tasks — its DNS server, its control socket — go on),
/// or stop the whole process there (`stop-after:<step>`: it sends itself SIGSTOP, as a paused VM
/// stands still, until the test sends SIGCONT).
fn crash_at() -> impl Fn(valkey_dr_controller::cluster::CutStep) {
    let fault = std::env::var("VALKEY_DR_FAULT").unwrap_or_default();
    let crash_after = fault.strip_prefix("crash-after:").map(str::to_string);
    let stop_after = fault.strip_prefix("stop-after:").map(str::to_string);
    let stall_after = fault.strip_prefix("stall-after:").and_then(|rest| {
        let (step, ms) = rest.rsplit_once(':')?;
        Some((
            step.to_string(),
            std::time::Duration::from_millis(ms.parse().ok()?),
        ))
    });
    move |step| {
        let step = step.to_string();
        if crash_after.as_deref() == Some(step.as_str()) {
            std::process::abort();
        }
        if stop_after.as_deref() == Some(step.as_str()) {
            // SAFETY: raise(3) on this process; it goes on at SIGCONT.
            unsafe { libc::raise(libc::SIGSTOP) };
        }
        if let Some((_, stall)) = stall_after.as_ref().filter(|(at, _)| *at == step) {
            std::thread::sleep(*stall);
        }
    }
}
