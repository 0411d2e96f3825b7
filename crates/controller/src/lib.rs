//! The valkey-dr controller.
//!
//! A reconcile pass observes every node, analyzes the topology, computes the DNS records the
//! analysis allows and applies the difference as compare-and-swap changes. Passes run on a timer
//! and on operator commands and writer-probe failures; a pass never needs to know why it ran, and a pass
//! with nothing to change writes nothing. Promotions ([`promotion`]) hold the same lock as passes,
//! so the two never interleave.

pub mod clock;
pub mod cluster;
pub mod control;
mod dns_changes;
pub mod events;
pub mod failover;
pub mod faults;
pub mod ha;
pub mod health;
pub mod http;
pub mod metrics;
pub mod pass;
pub mod poll;
pub mod promotion;
pub mod security;
mod self_fence;
pub mod state;
pub mod status;
#[cfg(feature = "testing")]
pub mod testing;
pub mod webhooks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use valkey_dr_core::config::DnsProviderConfig;
use valkey_dr_core::records::ManagedNames;
use valkey_dr_core::{Config, EpochRecord, NodeId, Topology};
use valkey_dr_core::{Engine, NodeObservation};
use valkey_dr_dns::DnsProvider;
use valkey_dr_dns::embedded::{DnsServer, Zone};
use valkey_dr_valkey::{Timeouts, ValkeyEngine};

pub use events::EventSink;
pub use pass::{PassError, PassOutcome};
pub use promotion::{PromoteError, PromotionReport};
pub use status::Status;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Dns(#[from] valkey_dr_dns::embedded::ServerError),
    #[error("cannot open control socket {path}: {source}")]
    Control {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Security(#[from] security::SecurityError),
    #[error("cannot reach etcd at {endpoints}: {reason}")]
    Coordination { endpoints: String, reason: String },
    #[error(transparent)]
    Http(#[from] http::HttpError),
}

/// The controller's state directory, made if missing: both running shapes start here.
pub(crate) fn create_state_dir(config: &Config) -> Result<(), ControllerError> {
    std::fs::create_dir_all(&config.state_dir).map_err(|source| ControllerError::StateDir {
        path: config.state_dir.display().to_string(),
        source,
    })
}

pub struct Controller {
    pub(crate) config: Config,
    pub(crate) topology: Topology,
    pub(crate) names: ManagedNames,
    /// Acts on the nodes; in the highly available shape, only while this controller leads.
    pub(crate) engine: Arc<dyn Engine>,
    /// The same engine without the leader check, for the region guard.
    pub(crate) local_engine: Arc<dyn Engine>,
    /// The highly available shape's coordination (None: one controller, `state.json`).
    pub(crate) ha: Option<Arc<ha::Ha>>,
    pub(crate) dns: Arc<dyn DnsProvider>,
    pub(crate) events: EventSink,
    /// Counted from the events, timed by passes and probes, set from status at scrape time.
    pub(crate) metrics: Arc<metrics::Metrics>,
    /// The one owner of the durable state (epoch, writer history, intent, block).
    pub(crate) state: state::StateStore,
    /// Held by every pass and every promotion, so that they never interleave, with what a pass
    /// carries to the next: only its holder reads or changes that.
    pub(crate) pass_lock: tokio::sync::Mutex<pass::Carried>,
    /// What the last pass saw; written only by [`Controller::reconcile`].
    pub(crate) last_pass: tokio::sync::watch::Sender<pass::LastPass>,
    /// When this controller last resumed from a stall of its own; written only by
    /// [`Controller::watch_clock`], applied to failure detection by the next look.
    pub(crate) resumed_at: tokio::sync::watch::Sender<Option<std::time::Instant>>,
    /// Wakes the reconcile loop for a pass now (a new leader acts at once).
    pub(crate) wake: tokio::sync::Notify,
    /// The crash and stall tests' fault injector ([`faults`]); none in production.
    faults: Option<Arc<dyn faults::FaultInjector>>,
}

impl Controller {
    /// A controller for self-hosted Valkey nodes, with the TLS and AUTH settings of `config`.
    pub fn new(config: Config, dns: Arc<dyn DnsProvider>) -> Result<Controller, ControllerError> {
        let engine = Controller::valkey_engine(&config)?;
        Controller::with_engine(config, dns, engine)
    }

    fn valkey_engine(config: &Config) -> Result<Box<dyn Engine>, ControllerError> {
        Ok(Box::new(ValkeyEngine::new(
            Timeouts {
                connect: Duration::from_millis(config.controller.connect_timeout_ms),
                command: Duration::from_millis(config.controller.command_timeout_ms),
            },
            security::load(config)?,
        )))
    }

    /// A controller that acts on the nodes through `engine` (another engine, or a fake one in
    /// tests).
    pub fn with_engine(
        config: Config,
        dns: Arc<dyn DnsProvider>,
        engine: Box<dyn Engine>,
    ) -> Result<Controller, ControllerError> {
        Controller::build(config, dns, engine, None)
    }

    /// A controller of the highly available shape: state in etcd, actions only while leading.
    pub fn with_coordination(
        config: Config,
        ha: ha::Ha,
        engine: Box<dyn Engine>,
    ) -> Result<Controller, ControllerError> {
        let dns = ha.records.clone();
        Controller::build(config, dns, engine, Some(ha))
    }

    fn build(
        config: Config,
        dns: Arc<dyn DnsProvider>,
        engine: Box<dyn Engine>,
        ha: Option<ha::Ha>,
    ) -> Result<Controller, ControllerError> {
        create_state_dir(&config)?;
        let topology = Topology::from_config(&config);
        let (state, state_problem) = match &ha {
            Some(ha) => (
                state::StateStore::in_etcd(ha.coord.clone(), ha.leader.clone(), &topology),
                None,
            ),
            None => state::StateStore::open(&config.state_dir, &topology),
        };
        let local_engine: Arc<dyn Engine> = Arc::from(engine);
        let engine: Arc<dyn Engine> = match &ha {
            Some(ha) => Arc::new(ha::LeaderOnly {
                inner: local_engine.clone(),
                leader: ha.leader.clone(),
            }),
            None => local_engine.clone(),
        };
        let metrics = Arc::new(metrics::Metrics::new());
        let events = EventSink::open(
            &config.events_file(),
            config.controller.events_max_bytes,
            metrics.clone(),
        );
        if let Some(problem) = state_problem {
            events.emit(
                crate::events::EventKind::StateUnusable,
                serde_json::json!({ "error": problem.to_string() }),
            );
        }
        Ok(Controller {
            names: ManagedNames::from_config(&config),
            events,
            metrics,
            topology,
            engine,
            local_engine,
            ha: ha.map(Arc::new),
            dns,
            state,
            pass_lock: tokio::sync::Mutex::new(pass::Carried::default()),
            last_pass: tokio::sync::watch::Sender::new(pass::LastPass::default()),
            resumed_at: tokio::sync::watch::Sender::new(None),
            wake: tokio::sync::Notify::new(),
            faults: None,
            config,
        })
    }

    /// Observes every node of the topology concurrently.
    pub(crate) async fn observe_all(&self) -> Vec<NodeObservation> {
        let started = std::time::Instant::now();
        let observations = futures::future::join_all(
            self.topology
                .nodes
                .iter()
                .map(|n| self.engine.observe(n.id, &n.control_endpoint)),
        )
        .await;
        self.metrics.probed(started.elapsed());
        observations
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn events(&self) -> &EventSink {
        &self.events
    }

    pub fn epoch(&self) -> Option<EpochRecord> {
        self.state.epoch()
    }

    /// Reports a failed state write (the action it guarded is not taken).
    pub(crate) fn state_write_failed(&self, error: &state::StateError) {
        self.events.emit(
            crate::events::EventKind::StateWriteFailed,
            serde_json::json!({ "error": error.to_string() }),
        );
    }

    /// Injects the fault a test asked for at `point`, if any (after reporting it).
    pub(crate) fn fault_point(&self, point: faults::FaultPoint) {
        let Some(faults) = &self.faults else { return };
        let Some(action) = faults.at(point) else {
            return;
        };
        let key = match action {
            faults::FaultAction::Crash => "crash_after",
            faults::FaultAction::Stall => "stall_after",
        };
        self.events.emit(
            crate::events::EventKind::FaultInjected,
            serde_json::json!({ key: point.to_string() }),
        );
        faults.inject(action);
    }

    /// The crash and stall tests' fault injector (see [`faults`]).
    pub fn with_faults(mut self, faults: Option<Arc<dyn faults::FaultInjector>>) -> Controller {
        self.faults = faults;
        self
    }

    /// PINGs every node every `every` and returns the failed probes (node, when sent) as soon as
    /// one fails, so that failure detection starts at once instead of at the next pass, for all
    /// of them alike — and so that a replica outside the writer's region that goes away lowers
    /// the writer's quorum within a probe interval (the writer refuses writes from the moment it
    /// disconnects).
    async fn watch_writer(&self, every: Duration) -> Vec<(NodeId, std::time::Instant)> {
        loop {
            tokio::time::sleep(every).await;
            if self.epoch().is_none() {
                continue;
            }
            let sent = std::time::Instant::now();
            let pings = self
                .topology
                .nodes
                .iter()
                .map(|n| n.id)
                .map(|n| async move {
                    (
                        n,
                        self.engine
                            .ping(&self.topology.node(n).control_endpoint)
                            .await
                            .is_ok(),
                    )
                });
            let failed: Vec<(NodeId, std::time::Instant)> = futures::future::join_all(pings)
                .await
                .into_iter()
                .filter(|(_, ok)| !ok)
                .map(|(n, _)| (n, sent))
                .collect();
            if !failed.is_empty() {
                return failed;
            }
        }
    }

    /// Measures the controller's own timer lag. After a stall (VM pause, CPU starvation, SIGSTOP)
    /// the probes that timed out meanwhile say nothing about the nodes: failure detection starts
    /// over, so a stall never fails over a healthy writer.
    pub async fn watch_clock(self: Arc<Self>) {
        let tick = Duration::from_millis(100);
        let mut last = std::time::Instant::now();
        loop {
            tokio::time::sleep(tick).await;
            let now = std::time::Instant::now();
            let lag = now.saturating_duration_since(last).saturating_sub(tick);
            last = now;
            if lag >= health::STALL_THRESHOLD {
                self.resumed_at.send_replace(Some(now));
                self.events.emit(
                    crate::events::EventKind::ControllerStalled,
                    serde_json::json!({ "lag_ms": lag.as_millis() as u64 }),
                );
            }
        }
    }

    /// Runs reconcile passes until `shutdown` completes: every interval, at once when the writer's
    /// region stops answering, and with
    /// backoff after failed passes.
    pub async fn run_loop(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let interval = Duration::from_millis(self.config.controller.reconcile_interval_ms);
        let probe_interval =
            Duration::from_millis(self.config.controller.probe_interval_ms).min(interval);
        let mut failures = 0u32;
        let mut quick = false;
        let mut failed_probes = Vec::new();
        loop {
            let outcome = self.reconcile(quick, &failed_probes).await;
            quick = false;
            failed_probes.clear();
            let delay = match outcome {
                // The pass waits for something time removes: call it again that soon.
                Ok(PassOutcome {
                    retry_after: Some(after),
                    ..
                }) => {
                    failures = 0;
                    quick = true;
                    after
                }
                // While a node is failing, probe faster so that `down_after` is measured finely.
                Ok(_) if self.last_pass.borrow().nodes_failing => {
                    failures = 0;
                    probe_interval
                }
                Ok(_) => {
                    failures = 0;
                    interval
                }
                Err(error) => {
                    failures += 1;
                    let delay = pass::error_policy(interval, failures);
                    self.events.emit(
                        crate::events::EventKind::ReconcileFailed,
                        serde_json::json!({ "error": error.to_string(), "attempt": failures, "retry_in_ms": delay.as_millis() as u64 }),
                    );
                    delay
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(delay) => {}
                failed = self.watch_writer(probe_interval) => failed_probes = failed,
                _ = self.wake.notified() => {}
            }
        }
    }
}

/// A running controller with its control socket, and its embedded DNS server unless the records
/// live on a server of the user's (RFC 2136).
pub struct Running {
    pub controller: Arc<Controller>,
    pub dns_addr: Option<SocketAddr>,
    serving: Serving,
}

impl Running {
    /// Resolves when an essential task ends (they never end on their own: it panicked), with its
    /// name. A controller that goes on without its reconcile loop, its guard or its lease would
    /// keep renewing a lease it cannot use or leave a region unfenced: the caller exits non-zero
    /// so that the supervisor restarts it.
    pub async fn task_ended(&mut self) -> String {
        let names: Vec<&str> = ESSENTIAL
            .iter()
            .chain(if self.controller.ha.is_some() {
                ESSENTIAL_HA.iter()
            } else {
                [].iter()
            })
            .copied()
            .collect();
        self.serving.first_ended(&names).await
    }

    pub async fn stop(self) {
        self.serving.stop().await;
    }
}

/// What a started controller (a replication group's or a cluster's) runs beside itself: its
/// embedded DNS server, if any, its tasks (the essential ones first) and its control socket.
pub(crate) struct Serving {
    pub(crate) dns: Option<DnsServer>,
    pub(crate) tasks: Vec<tokio::task::JoinHandle<()>>,
    pub(crate) socket: std::path::PathBuf,
}

impl Serving {
    /// Resolves when one of the first `names.len()` tasks ends, naming it and how.
    pub(crate) async fn first_ended(&mut self, names: &[&str]) -> String {
        let watched = self.tasks.iter_mut().take(names.len());
        let (outcome, index, _) = futures::future::select_all(watched).await;
        let how = match outcome {
            Err(e) if e.is_panic() => "panicked",
            Err(_) => "was cancelled",
            Ok(()) => "ended",
        };
        format!("the {} task {how}", names[index])
    }

    pub(crate) async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(dns) = self.dns {
            dns.shutdown().await;
        }
        let _ = std::fs::remove_file(self.socket);
    }
}

/// Starts the controller for `config`: the embedded DNS server, the control socket and the
/// reconcile loop; with `[coordination]`, also the campaign for leadership, the site's presence
/// and the region guard.
pub async fn start(config: Config) -> Result<Running, ControllerError> {
    start_with(config, None).await
}

/// [`start`], with a fault injector for the crash and stall tests.
pub async fn start_with(
    config: Config,
    faults: Option<Arc<dyn faults::FaultInjector>>,
) -> Result<Running, ControllerError> {
    let listen = match &config.dns.provider {
        DnsProviderConfig::Embedded { listen } => listen.parse().expect("validated listen address"),
        DnsProviderConfig::Rfc2136(rfc2136) => {
            return start_rfc2136(config.clone(), rfc2136, faults).await;
        }
    };
    let (zone, ha) = site_zone(&config).await?;
    let dns = DnsServer::start_with_name_servers(
        zone.clone(),
        listen,
        config.dns.ttl,
        &name_servers(&config),
    )
    .await?;
    let dns_addr = Some(dns.local_addr());
    let controller = match ha {
        None => Controller::new(config, zone)?,
        Some(ha) => {
            let engine = Controller::valkey_engine(&config)?;
            Controller::with_coordination(config, ha, engine)?
        }
    };
    let controller = Arc::new(controller.with_faults(faults));
    let tasks = start_tasks(&controller, dns_addr).await?;
    let socket = controller.config.control_socket();
    Ok(Running {
        controller,
        dns_addr,
        serving: Serving {
            dns: Some(dns),
            tasks,
            socket,
        },
    })
}

/// The zone the embedded DNS server answers from, and with `[coordination]` this controller's
/// part in the highly available shape (either controller: a replication group's, a cluster's).
/// There the zone is a copy of the records in etcd, loaded before serving when etcd answers;
/// until it is, the server answers SERVFAIL (never an NXDOMAIN from an empty copy, which
/// resolvers would cache and not ask another site's server), and again once etcd has not
/// answered for a lease TTL: by then a leader elsewhere may have moved the name.
pub(crate) async fn site_zone(
    config: &Config,
) -> Result<(Arc<Zone>, Option<ha::Ha>), ControllerError> {
    let Some(coordination) = &config.coordination else {
        return Ok((Arc::new(Zone::new(&config.dns.zone)), None));
    };
    let zone = Arc::new(Zone::awaiting_copy(
        &config.dns.zone,
        Duration::from_millis(coordination.lease_ttl_ms),
    ));
    let ha = connect_coordination(config, coordination, zone.clone()).await?;
    let first = tokio::time::timeout(ha.coord.ttl(), ha.records.sync()).await;
    if !matches!(first, Ok(Ok(_))) {
        tracing::warn!(
            "records not loaded from etcd before serving; answering SERVFAIL until they are"
        );
    }
    Ok((zone, Some(ha)))
}

/// Every site's DNS server names all of them: `ns-<site>.<zone>`.
pub(crate) fn name_servers(config: &Config) -> Vec<(String, std::net::IpAddr)> {
    config
        .coordination
        .iter()
        .flat_map(|c| c.name_servers.iter())
        .map(|(site, ip)| (format!("ns-{site}"), *ip))
        .collect()
}

/// One controller whose records live on the user's DNS server, changed by RFC 2136 updates.
async fn start_rfc2136(
    config: Config,
    rfc2136: &valkey_dr_core::config::Rfc2136Config,
    faults: Option<Arc<dyn faults::FaultInjector>>,
) -> Result<Running, ControllerError> {
    let provider = rfc2136_provider(&config, rfc2136)?;
    let controller = Arc::new(Controller::new(config, provider)?.with_faults(faults));
    let tasks = start_tasks(&controller, None).await?;
    let socket = controller.config.control_socket();
    Ok(Running {
        controller,
        dns_addr: None,
        serving: Serving {
            dns: None,
            tasks,
            socket,
        },
    })
}

/// The user's DNS server, changed by RFC 2136 updates signed with the configured TSIG key.
pub(crate) fn rfc2136_provider(
    config: &Config,
    rfc2136: &valkey_dr_core::config::Rfc2136Config,
) -> Result<Arc<dyn DnsProvider>, ControllerError> {
    let key = security::tsig_key(rfc2136)?;
    let servers = rfc2136
        .servers
        .iter()
        .map(|s| s.parse().expect("validated server address"))
        .collect();
    let provider = valkey_dr_dns::rfc2136::Rfc2136::new(
        servers,
        &config.dns.zone,
        key,
        Duration::from_millis(rfc2136.timeout_ms),
    )
    .map_err(|reason| security::SecurityError::Invalid {
        field: "dns.provider",
        reason,
    })?;
    Ok(Arc::new(provider))
}

/// The control socket, the loops, the HTTP endpoint and the webhooks of a started controller.
async fn start_tasks(
    controller: &Arc<Controller>,
    dns_addr: Option<SocketAddr>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, ControllerError> {
    let control = control::ControlServer::bind(controller.clone())?;
    controller.events.emit(
        crate::events::EventKind::ControllerStarted,
        serde_json::json!({
            "dns": dns_addr.map(|a| a.to_string()),
            "control_socket": controller.config.control_socket().display().to_string(),
            "http": controller.config.http.as_ref().map(|h| h.listen.clone()),
            "epoch": controller.epoch().map(|e| e.epoch),
            "site": controller.ha().map(|ha| ha.site().to_string()),
        }),
    );
    // The essential tasks come first (`ESSENTIAL_*`): they loop for the controller's life, and one
    // that ends has panicked.
    let mut tasks = vec![
        tokio::spawn(control.serve()),
        tokio::spawn(controller.clone().run_loop(std::future::pending())),
        tokio::spawn(controller.clone().watch_clock()),
    ];
    if controller.ha.is_some() {
        tasks.push(tokio::spawn(ha::campaign(controller.clone())));
        tasks.push(tokio::spawn(controller.clone().guard_region()));
        tasks.push(tokio::spawn(ha::serve_requests(controller.clone())));
    }
    if let Some(ha) = &controller.ha {
        tasks.push(tokio::spawn(ha.clone().keep_presence()));
        tasks.push(tokio::spawn(ha.clone().follow_records()));
        tasks.push(tokio::spawn(ha.clone().check_storage()));
    }
    if let Some(http) = &controller.config.http {
        tasks.push(http::serve(controller.clone(), http).await?);
    }
    tasks.extend(webhooks::start(
        &controller.config.webhooks,
        &controller.events,
        &controller.metrics,
    )?);
    Ok(tasks)
}

/// The essential tasks, in the order [`start_tasks`] spawns them.
const ESSENTIAL: [&str; 3] = ["control socket", "reconcile loop", "clock watch"];
const ESSENTIAL_HA: [&str; 6] = [
    "leader campaign",
    "region guard",
    "forwarded requests",
    "site presence",
    "records follower",
    "etcd storage check",
];

/// Connects to etcd, retrying with backoff for a while: a controller started before its etcd
/// members (a whole site booting) waits for them instead of exiting.
async fn connect_coordination(
    config: &Config,
    coordination: &valkey_dr_core::config::CoordinationConfig,
    zone: Arc<Zone>,
) -> Result<ha::Ha, ControllerError> {
    let prefix = config.coordination_prefix().unwrap_or_default();
    let ttl = Duration::from_millis(coordination.lease_ttl_ms);
    let mut backoff =
        valkey_dr_core::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let tls = coordination
        .tls
        .as_ref()
        .map(|tls| {
            let client = tls
                .client_cert_file
                .as_deref()
                .zip(tls.client_key_file.as_deref());
            valkey_dr_coord::EtcdTls::load(&tls.ca_file, client)
        })
        .transpose()
        .map_err(|error| ControllerError::Coordination {
            endpoints: coordination.etcd.join(","),
            reason: error.to_string(),
        })?;
    let coord = loop {
        match valkey_dr_coord::Coordinator::connect_with(
            &coordination.etcd,
            &prefix,
            &coordination.site,
            ttl,
            tls.as_ref(),
        )
        .await
        {
            Ok(coord) => break coord,
            Err(error) if backoff.failures() >= 20 => {
                return Err(ControllerError::Coordination {
                    endpoints: coordination.etcd.join(","),
                    reason: error.to_string(),
                });
            }
            Err(error) => {
                tracing::warn!(error = %error, "etcd not reachable yet; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    };
    let leader = Arc::new(valkey_dr_coord::LeaderCell::default());
    let records = Arc::new(valkey_dr_dns::etcd::EtcdRecords::new(
        coord.clone(),
        leader.clone(),
        zone,
    ));
    Ok(ha::Ha::new(coord, leader, records, coordination.clone()))
}
