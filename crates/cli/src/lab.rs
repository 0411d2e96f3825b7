//! `valkey-dr lab …`: the local two-region lab.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use valkey_dr_controller::control::{self, Request};
use valkey_dr_lab::LabSpec;
use valkey_dr_lab::process;
use valkey_dr_lab::writer;

use crate::Output;

#[derive(clap::Args, Clone)]
pub struct DirArg {
    /// Lab directory [default: $VALKEY_DR_LAB_DIR, else ./.valkey-dr-lab]
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl DirArg {
    pub fn path(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(default_dir)
    }

    pub fn spec(&self) -> Result<LabSpec> {
        let dir = self.path();
        LabSpec::load(&dir).with_context(|| {
            format!(
                "no lab in {} (start one with `valkey-dr lab up`)",
                dir.display()
            )
        })
    }
}

pub fn default_dir() -> PathBuf {
    std::env::var_os("VALKEY_DR_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".valkey-dr-lab"))
}

#[derive(Subcommand)]
pub enum LabCommand {
    /// Start the lab: four valkey-server processes, the region link, the controller with DNS.
    Up {
        #[command(flatten)]
        dir: DirArg,
        /// Port of every node.
        #[arg(long, default_value_t = 6379)]
        port: u16,
        /// Second octet of the lab's loopback addresses (127.<block>.<region>.<node>; default 0),
        /// or with --netns its slot (below 64; default: the first free one).
        #[arg(long)]
        block: Option<u8>,
        /// Address of the embedded DNS server.
        #[arg(long, default_value = "127.0.0.1:5353")]
        dns: SocketAddr,
        /// One-way delay of the region link in milliseconds.
        #[arg(long, default_value_t = 7)]
        link_delay_ms: u64,
        /// TTL of the DNS records in seconds.
        #[arg(long, default_value_t = 1)]
        ttl: u32,
        /// Plain TCP instead of TLS (AUTH stays on).
        #[arg(long)]
        no_tls: bool,
        /// Data regions: 2 (plus a witness site) or 3 (the third doubles as the witness).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=3))]
        regions: u8,
        /// One controller with its state in a file, no etcd (not highly available).
        #[arg(long)]
        single_controller: bool,
        /// Each place (region, controller or witness) in a network namespace of its own, so that
        /// `lab partition` drops real packets (needs root; addresses in 198.18.0.0/15, the block
        /// below 64; the DNS server then listens on <place 0>.53 at the --dns port).
        #[arg(long)]
        netns: bool,
        /// A Valkey cluster of this many shards instead (cluster mode): every shard's primary
        /// and a replica in the first region, a replica in every other, run by a controller per
        /// site on etcd (or one, with --single-controller) that serves the name.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=16))]
        shards: Option<u8>,
    },
    /// Stop every lab process.
    Down {
        #[command(flatten)]
        dir: DirArg,
    },
    /// The lab's processes and the controller's status.
    Status {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Cut the link between regions, or (with --region) isolate regions from everything.
    Partition {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long = "region")]
        regions: Vec<String>,
        /// Any partition entry: a place, region-link, <a>-to:<b>, and in network namespaces
        /// also oneway:<from>:<to>, etcd-peers:<place>, loss:<percent>:<place> (repeatable;
        /// places are region names or `controller`, the witness's and the controller's place).
        #[arg(long = "cut")]
        cuts: Vec<String>,
    },
    /// Restore the region link.
    Heal {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Write sequence-numbered keys through the global name for a while, then check that every
    /// acknowledged write is readable through it.
    Writer {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        #[arg(long, default_value = "writer")]
        prefix: String,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Run the region-link emulator of a lab (started by `lab up`).
    #[command(hide = true)]
    Link {
        #[arg(long)]
        dir: PathBuf,
        /// In network namespaces: serve only the link ends that listen in this place.
        #[arg(long)]
        place: Option<u8>,
    },
}

/// `lab up --shards`: a cluster lab of its own and its controllers — one per site on etcd, or
/// with `single_controller` one — the last site's DNS server on `dns` (stopped by `lab down` as
/// any lab's processes).
async fn cluster_up(
    dir: &std::path::Path,
    block: u8,
    port: u16,
    regions: u8,
    shards: u8,
    dns: SocketAddr,
    single_controller: bool,
) -> Result<()> {
    if process::any_running(dir) {
        outln!("a lab is already running in {}", dir.display());
        return Ok(());
    }
    let mut names = LabSpec::reference(dir.to_path_buf()).regions;
    if regions == 3 {
        names.push("us-west-2".into());
    }
    let started = std::time::Instant::now();
    let config = valkey_dr_lab::cluster::up(dir, block, port, &names, shards, dns)
        .await
        .with_context(|| format!("starting a cluster lab in {}", dir.display()))?;
    let exe = std::env::current_exe().context("locating the valkey-dr binary")?;
    // (name of the controller's process, its config, its DNS server)
    let controllers: Vec<(String, std::path::PathBuf, SocketAddr)> = if single_controller {
        vec![("controller".into(), config.clone(), dns)]
    } else {
        valkey_dr_lab::cluster::start_sites(dir, block, port, &names, shards, dns)
            .await
            .with_context(|| format!("starting the cluster lab's etcd in {}", dir.display()))?
            .into_iter()
            .map(|site| (format!("controller-{}", site.name), site.config, site.dns))
            .collect()
    };
    // The last site (the witness) first: it takes the leader key, which the writer region's
    // site would hand on anyway.
    for (name, config, _) in controllers.iter().rev() {
        process::start_named_controller(&exe, config, dir, name)?;
        let loaded = valkey_dr_core::Config::load(config)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while control::request(&loaded.control_socket(), &Request::Status, |_| {})
            .await
            .is_err()
        {
            if std::time::Instant::now() > deadline {
                bail!(
                    "the cluster's controller {name} did not answer within 10 s: see {}",
                    dir.join(format!("{name}.log")).display()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    // Up once the name is published and every site serves it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for (name, config, _) in &controllers {
        let loaded = valkey_dr_core::Config::load(config)?;
        loop {
            let status = control::request(&loaded.control_socket(), &Request::Status, |_| {})
                .await
                .ok();
            let named = status.as_ref().is_some_and(|s| {
                !s["epoch"].is_null() && s["name"].as_array().is_some_and(|n| !n.is_empty())
            });
            if named {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "{name} serves no name 20 s after the start: see {}",
                    dir.join(format!("{name}.log")).display()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let shape = if single_controller {
        format!("its controller's DNS on {dns}")
    } else {
        let servers: Vec<String> = controllers
            .iter()
            .map(|(name, _, dns)| format!("{} on {dns}", name.trim_start_matches("controller-")))
            .collect();
        format!(
            "a controller per site on etcd, each site's DNS: {}",
            servers.join(", ")
        )
    };
    outln!(
        "cluster lab up in {:.1} s: {shards} shard(s) over {} ({} nodes, the primaries in {}), {shape}\n  valkey-dr cluster status --config {}\n  dig @{} -p {} demo.valkey-dr.live\n  valkey-dr lab down --dir {}",
        started.elapsed().as_secs_f64(),
        names.join(", "),
        valkey_dr_lab::cluster::lab_layout(block, port, &names, shards)
            .0
            .len(),
        names[0],
        config.display(),
        dns.ip(),
        dns.port(),
        dir.display()
    );
    Ok(())
}

pub async fn dispatch(command: LabCommand) -> Result<()> {
    match command {
        LabCommand::Up {
            dir,
            port,
            block,
            dns,
            link_delay_ms,
            ttl,
            no_tls,
            regions,
            single_controller,
            netns,
            shards,
        } => {
            if let Some(shards) = shards {
                return cluster_up(
                    &dir.path(),
                    block.unwrap_or(0),
                    port,
                    regions,
                    shards,
                    dns,
                    single_controller,
                )
                .await;
            }
            let mut spec = LabSpec::reference(absolute(dir.path())?);
            if regions == 3 {
                spec.regions.push("us-west-2".into());
            }
            spec.sites = if single_controller {
                Vec::new()
            } else {
                LabSpec::default_sites(&spec.regions)
            };
            spec.port = port;
            spec.block = block.unwrap_or(0);
            spec.dns = dns;
            spec.link_delay_ms = link_delay_ms;
            spec.ttl = ttl;
            spec.tls = !no_tls;
            if netns {
                spec.block = match block {
                    Some(b) if b >= 64 => bail!(
                        "--block must be below 64 with --netns (64 labs fit in 198.18.0.0/15)"
                    ),
                    Some(b) => b,
                    None => valkey_dr_lab::netns::claim_slot(std::process::id())?,
                };
                spec.netns = true;
                spec.dns = SocketAddr::new(spec.ip(0, 53).into(), dns.port());
            }
            up(&spec).await
        }
        LabCommand::Down { dir } => {
            let dir = dir.path();
            let stopped = process::down(&dir).await;
            if stopped.is_empty() {
                outln!("no lab process was running in {}", dir.display());
            } else {
                outln!(
                    "stopped {} process(es): {}",
                    stopped.len(),
                    stopped.join(", ")
                );
            }
            Ok(())
        }
        LabCommand::Status { dir, output } => {
            let spec = dir.spec()?;
            let processes = process::processes(&spec.dir);
            let config = spec.main_config();
            let status = control::request(&config.control_socket(), &Request::Status, |_| {}).await;
            match output {
                Output::Json => {
                    let procs: Vec<_> = processes
                        .iter()
                        .map(|p| serde_json::json!({ "name": p.name, "pid": p.pid, "alive": p.alive }))
                        .collect();
                    let status = status.map_err(|e| e.to_string());
                    outln!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({
                            "processes": procs,
                            "status": status.as_ref().ok(),
                            "error": status.as_ref().err(),
                        }))?
                    );
                }
                Output::Table => {
                    let rows: Vec<Vec<String>> = processes
                        .iter()
                        .map(|p| {
                            vec![
                                p.name.clone(),
                                p.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                                if p.alive { "running" } else { "stopped" }.into(),
                            ]
                        })
                        .collect();
                    outln!(
                        "lab {} · region link {} ms one way · partition: {}\n",
                        spec.dir.display(),
                        spec.link_delay_ms,
                        partition_text(&spec)
                    );
                    out!(
                        "{}",
                        crate::render::table(&["PROCESS", "PID", "STATE"], &rows)
                    );
                    outln!();
                    out!(
                        "{}",
                        crate::render::status(&config, &serde_json::from_value(status?)?)
                    );
                }
            }
            Ok(())
        }
        LabCommand::Partition { dir, regions, cuts } => {
            let spec = dir.spec()?;
            let regions = if regions.is_empty() && cuts.is_empty() {
                vec![valkey_dr_lab::link::LINK.to_string()]
            } else {
                regions
            };
            for r in &regions {
                if !spec.regions.contains(r)
                    && !spec.sites.contains(r)
                    && r != valkey_dr_lab::link::LINK
                {
                    bail!(
                        "unknown region \"{r}\"; the lab has {}",
                        spec.regions.join(", ")
                    );
                }
            }
            // A site without data (the witness) is cut where it stands.
            let regions: Vec<String> = regions
                .iter()
                .map(|r| {
                    if spec.sites.contains(r) {
                        spec.vantage(r)
                    } else {
                        r.clone()
                    }
                })
                .collect();
            let entries = regions.iter().chain(&cuts).cloned().collect();
            valkey_dr_lab::link::set_partition(&spec.dir, &entries).await?;
            if regions == [valkey_dr_lab::link::LINK] {
                outln!(
                    "region link cut: regions cannot reach each other (the controller still reaches all)"
                );
            } else if !regions.is_empty() {
                outln!(
                    "isolated from the other regions and the controller: {}",
                    regions.join(", ")
                );
            }
            if !cuts.is_empty() {
                outln!("cut: {}", cuts.join(", "));
            }
            Ok(())
        }
        LabCommand::Heal { dir } => {
            let spec = dir.spec()?;
            valkey_dr_lab::link::set_partition(&spec.dir, &Default::default()).await?;
            outln!("region link healed");
            Ok(())
        }
        LabCommand::Writer {
            dir,
            seconds,
            prefix,
            output,
        } => {
            let spec = dir.spec()?;
            let config = spec.writer(&prefix).map_err(anyhow::Error::msg)?;
            let report = writer::run(
                &config,
                tokio::time::sleep(Duration::from_secs_f64(seconds)),
            )
            .await;
            let lost = writer::verify(&config, report.acknowledged)
                .await
                .map_err(anyhow::Error::msg)?;
            match output {
                Output::Json => {
                    let mut value = serde_json::to_value(&report)?;
                    value["acknowledged_lost"] = lost.into();
                    outln!("{}", serde_json::to_string_pretty(&value)?);
                }
                Output::Table => outln!(
                    "writer: {} acknowledged writes, {} lost, {} errors retried, longest gap between acknowledgements {:.1} ms, targets {}",
                    report.acknowledged,
                    lost,
                    report.errors,
                    report.max_write_gap_ms,
                    report.targets.join(" → ")
                ),
            }
            Ok(())
        }
        LabCommand::Link { dir, place } => {
            let spec = LabSpec::load(&dir)?;
            let links: Vec<_> = spec
                .links()
                .into_iter()
                .filter(|l| match (place, l.listen.ip()) {
                    (Some(place), std::net::IpAddr::V4(ip)) => spec.place_of(ip) == place,
                    (Some(_), std::net::IpAddr::V6(_)) => false,
                    (None, _) => true,
                })
                .collect();
            valkey_dr_lab::link::run_daemon(&spec.dir, &links, place.is_none()).await?;
            Ok(())
        }
    }
}

fn partition_text(spec: &LabSpec) -> String {
    let cut = valkey_dr_lab::link::read_partition_file(&spec.dir);
    if cut.is_empty() {
        "none".into()
    } else {
        cut.into_iter().collect::<Vec<_>>().join(", ")
    }
}

fn absolute(path: PathBuf) -> Result<PathBuf> {
    Ok(if path.is_absolute() {
        path
    } else {
        std::env::current_dir()?.join(path)
    })
}

async fn up(spec: &LabSpec) -> Result<()> {
    let exe = std::env::current_exe().context("locating the valkey-dr binary")?;
    if !process::up(spec, &exe).await? {
        outln!(
            "a lab is already running in {} (see `valkey-dr lab status`)",
            spec.dir.display()
        );
        return Ok(());
    }
    let config = spec.main_config();
    let socket = config.control_socket();
    let log = match spec.sites.last() {
        Some(site) => spec.dir.join(format!("controller-{site}.log")),
        None => spec.dir.join("controller.log"),
    };
    let ready = process::wait_for("the controller", &log, || async {
        match control::request(&socket, &Request::Status, |_| {}).await {
            Ok(status) => {
                status["findings"] == serde_json::json!(["healthy"]) && status["epoch"].is_u64()
            }
            Err(_) => false,
        }
    })
    .await;
    if let Err(e) = ready {
        process::down(&spec.dir).await;
        return Err(e.into());
    }
    // One pass now on every controller, so that every DNS server reflects the healthy topology
    // before anyone looks.
    let sockets: Vec<_> = if spec.is_ha() {
        spec.sites
            .iter()
            .map(|s| spec.site_config(s).control_socket())
            .collect()
    } else {
        vec![socket]
    };
    for socket in sockets {
        control::request(&socket, &Request::Reconcile, |_| {}).await?;
    }
    outln!("lab up in {}", spec.dir.display());
    for (r, region) in spec.regions.iter().enumerate() {
        let nodes: Vec<String> = (0..spec.nodes_per_region as usize)
            .map(|i| spec.node_addr(r, i).to_string())
            .collect();
        outln!("  {region:<10} {}", nodes.join("  "));
    }
    if spec.is_ha() {
        outln!(
            "  region link {} ms one way; zone {}",
            spec.link_delay_ms,
            spec.zone
        );
        for site in &spec.sites {
            let http = spec.site_config(site).http.map(|h| h.listen);
            outln!(
                "  site {site:<10} controller + etcd member {}; DNS {}; metrics http://{}/metrics",
                spec.etcd_ip(site),
                spec.site_dns(site),
                http.unwrap_or_default()
            );
        }
    } else {
        outln!(
            "  region link {} ms one way; DNS {} for zone {}; controller state {}; metrics http://{}/metrics",
            spec.link_delay_ms,
            spec.dns,
            spec.zone,
            spec.controller_dir().display(),
            spec.http_addr()
        );
    }
    Ok(())
}
