//! `valkey-dr drill …`: measured switchovers and failovers against a running lab.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Subcommand;
use valkey_dr_lab::clients::{self, Library};
use valkey_dr_lab::drill::{self, ClientsOptions, DrillOptions, DrillReport, Fault, Operation};

use crate::lab::DirArg;
use crate::{Method, Output};

#[derive(Subcommand)]
pub enum DrillCommand {
    /// Planned switchover (`promote`) while writers go through the name.
    Switchover {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_enum, default_value = "safe")]
        method: Method,
    },
    /// Unplanned failover: SIGKILL of the writer node; with --stall, SIGSTOP of it for the whole
    /// drill (a hung host); with --partition, isolation of its region.
    Failover {
        #[command(flatten)]
        common: Common,
        #[arg(long, conflicts_with = "stall")]
        partition: bool,
        #[arg(long)]
        stall: bool,
    },
    /// The highly available shape's drills, each on a lab of its own: the leader killed and
    /// SIGSTOPped mid-switchover, the leader's site isolated, the writer's region isolated with
    /// writers inside, only the leader cut from the writer's region, etcd quorum lost.
    Ha {
        /// Runs per drill; the table shows medians.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Where the drills' labs live while they run.
        #[arg(long, default_value = "target/drill-ha")]
        dir: std::path::PathBuf,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Cluster mode, each run on a cluster of its own (nine nodes on loopback, three shards, a
    /// writer per shard): the all-shard switchover to us-east-2, then the loss of us-east-2
    /// (its nodes SIGKILLed) and the failover back to us-east-1. Prints medians.
    Cluster {
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Where the clusters' files live while they run.
        #[arg(long, default_value = "target/drill-cluster")]
        dir: std::path::PathBuf,
        /// One-way latency between the two regions, each node reached through a proxy that
        /// adds it to traffic from the other region (the writers and the controller stand in
        /// us-east-1); 0: every node reached directly.
        #[arg(long, default_value_t = 0)]
        link_ms: u64,
        /// `cluster-node-timeout` set on every node once formed [default: the lab's 2000]: how
        /// long a survivor that saw a minority of primaries waits after a takeover.
        #[arg(long)]
        node_timeout_ms: Option<u64>,
        /// The automatic failover's controller's `writer_quorum_max_lag_s` [default: the
        /// config's]: the self-fence's lag limit, which the failover waits out.
        #[arg(long)]
        max_lag_s: Option<u32>,
    },
    /// Repeat every scenario and print medians: our switchover against blind promotion and
    /// FAILOVER TO, and both kinds of failover.
    Bench {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value_t = 4)]
        writers: usize,
    },
}

#[derive(clap::Args)]
pub struct Common {
    #[command(flatten)]
    dir: DirArg,
    /// Target region of a switchover [default: the other region]
    #[arg(long)]
    region: Option<String>,
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Seconds the writers run; the operation starts after 1.5 s.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    #[arg(long, short, value_enum, default_value = "table")]
    output: Output,
    /// Also write through real client libraries, each with its default and its recommended
    /// settings: all of them, or those listed (redis-py, valkey-py, glide-python, ioredis,
    /// iovalkey, node-redis, glide-node, phpredis, predis, redis-rs, valkey-cli). They resolve
    /// the name through the system resolver: on a lab in network namespaces with its DNS on port
    /// 53 they run in the controller's place and resolve through its DNS server (docs/clients.md).
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    clients: Option<Vec<Library>>,
    /// Where the client writers and their installed libraries are (`make clients`).
    #[arg(long, default_value = "clients")]
    clients_dir: std::path::PathBuf,
}

pub async fn dispatch(command: DrillCommand) -> Result<()> {
    let (common, operation) = match command {
        DrillCommand::Switchover { common, method } => (
            common,
            Operation::Switchover {
                method: method.into(),
            },
        ),
        DrillCommand::Failover {
            common,
            partition,
            stall,
        } => {
            let fault = match (partition, stall) {
                (true, _) => Fault::Partition,
                (_, true) => Fault::Stall,
                _ => Fault::Kill,
            };
            (common, Operation::Failover { fault })
        }
        DrillCommand::Bench { dir, runs, writers } => return bench(&dir, runs, writers).await,
        DrillCommand::Cluster {
            runs,
            dir,
            link_ms,
            node_timeout_ms,
            max_lag_s,
        } => {
            let settings = ClusterSettings {
                link_ms,
                node_timeout_ms,
                max_lag_s,
            };
            return cluster(runs.max(1), &dir, &settings).await;
        }
        DrillCommand::Ha { runs, dir, output } => {
            return crate::chaos::dispatch(crate::chaos::ChaosArgs {
                scenario: vec!["HA:".into()],
                runs,
                dir,
                list: false,
                keep: false,
                keep_failed: false,
                netns: false,
                cluster: false,
                output,
            })
            .await;
        }
    };
    if common.duration < 2.5 {
        bail!("--duration must be at least 2.5 seconds (the operation starts after 1.5 s)");
    }
    let spec = common.dir.spec()?;
    let options = DrillOptions {
        operation,
        region: common.region,
        writers: common.writers.max(1),
        duration: Duration::from_secs_f64(common.duration),
        at: drill::OPERATION_AT,
        clients: common.clients.map(|libraries| ClientsOptions {
            dir: common.clients_dir,
            writers: clients::matrix(if libraries.is_empty() {
                &Library::ALL
            } else {
                &libraries
            }),
        }),
    };
    let report = drill::run(&spec, &options).await?;
    match common.output {
        Output::Json => outln!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => out!("{}", render(&report)),
    }
    Ok(())
}

fn render(r: &DrillReport) -> String {
    let opt = |v: Option<f64>| {
        v.map(|v| format!("{v:.1} ms"))
            .unwrap_or_else(|| "-".into())
    };
    let mut out = format!(
        "{} {}: {} → {} ({}), epoch {} → {}\n",
        r.operation,
        r.method.clone().unwrap_or_default(),
        r.old_primary,
        r.new_primary.clone().unwrap_or_default(),
        r.new_primary_region.clone().unwrap_or_default(),
        r.epoch_before,
        r.epoch_after
    );
    out.push_str(&format!(
        "  {} writers: {} acknowledged writes, {} lost, {} duplicated, {} reordered\n",
        r.writers,
        r.acknowledged_writes,
        r.acknowledged_lost,
        r.duplicated_writes,
        r.reordered_writes
    ));
    out.push_str(&format!(
        "  longest write gap {:.1} ms{} · DNS flip {}{} · detection {} · replication healthy after {}\n",
        r.max_write_gap_ms,
        r.max_write_gap_ended_ms
            .map(|end| format!(" (from {:.1} to {end:.1} ms)", end - r.max_write_gap_ms))
            .unwrap_or_default(),
        opt(r.dns_flip_ms),
        r.dns_every_site_after_first_ms
            .map(|ms| format!(", every site {ms:.1} ms later"))
            .unwrap_or_default(),
        r.detection_ms.map(|d| format!("{d} ms")).unwrap_or_else(|| "-".into()),
        opt(r.replication_healthy_ms)
    ));
    if !r.clients.is_empty() {
        out.push_str(&render_clients(&r.clients));
    }
    if let Some(e) = &r.error {
        out.push_str(&format!("  error: {e}\n"));
    }
    out
}

fn render_clients(rows: &[clients::ClientReport]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|c| {
            vec![
                c.client.clone(),
                c.settings.clone(),
                c.first_write_after_ms
                    .map(|ms| format!("{ms} ms"))
                    .unwrap_or_else(|| "never".into()),
                match c.stuck {
                    Some(true) => "STUCK".into(),
                    Some(false) => "no".into(),
                    None => "-".into(),
                },
                c.acknowledged_writes.to_string(),
                c.lost.to_string(),
                c.readonly_errors.to_string(),
                c.other_errors.to_string(),
                c.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    crate::render::table(
        &[
            "client",
            "settings",
            "first write after",
            "stuck (30 s)",
            "acked",
            "lost",
            "READONLY",
            "other errors",
            "error",
        ],
        &rows,
    )
}

async fn bench(dir: &DirArg, runs: usize, writers: usize) -> Result<()> {
    let spec = dir.spec()?;
    let scenarios = drill::bench_scenarios();
    let mut results: Vec<Vec<DrillReport>> = Vec::new();
    for scenario in &scenarios {
        let mut reports = Vec::new();
        for run in 0..runs {
            let options = DrillOptions {
                operation: scenario.operation,
                region: None,
                writers,
                duration: scenario.duration,
                at: drill::OPERATION_AT,
                clients: None,
            };
            let report = drill::run(&spec, &options).await?;
            eprintln!(
                "{:<34} run {}/{runs}: lost {}, gap {:.1} ms, dns flip {:?} ms, detection {:?} ms",
                scenario.name,
                run + 1,
                report.acknowledged_lost,
                report.max_write_gap_ms,
                report.dns_flip_ms,
                report.detection_ms
            );
            reports.push(report);
        }
        results.push(reports);
    }
    let gap = |reports: &[DrillReport]| {
        reports
            .iter()
            .map(|r| r.max_write_gap_ms)
            .collect::<Vec<_>>()
    };
    let baseline = drill::median_of(&gap(&results[1])).unwrap_or(f64::NAN);
    let rows: Vec<Vec<String>> = scenarios
        .iter()
        .zip(&results)
        .map(|(scenario, reports)| {
            let lost: Vec<f64> = reports.iter().map(|r| r.acknowledged_lost as f64).collect();
            let flip: Vec<f64> = reports.iter().filter_map(|r| r.dns_flip_ms).collect();
            let every_site: Vec<f64> = reports
                .iter()
                .filter_map(|r| r.dns_every_site_after_first_ms)
                .collect();
            let detection: Vec<f64> = reports
                .iter()
                .filter_map(|r| r.detection_ms.map(|d| d as f64))
                .collect();
            let healthy: Vec<f64> = reports
                .iter()
                .filter_map(|r| r.replication_healthy_ms)
                .collect();
            let gaps = gap(reports);
            let ratio = drill::median_of(&gaps)
                .map(|m| format!("{:.2}×", m / baseline))
                .unwrap_or_default();
            vec![
                scenario.name.to_string(),
                reports.len().to_string(),
                drill::summarize(&lost),
                drill::summarize(&gaps),
                ratio,
                drill::summarize(&flip),
                drill::summarize(&every_site),
                drill::summarize(&detection),
                drill::summarize(&healthy),
            ]
        })
        .collect();
    outln!(
        "{} runs per scenario, {writers} writers through {}.{} · region link {} ms one way · down_after {} ms\n",
        runs,
        spec.global_name,
        spec.zone,
        spec.link_delay_ms,
        spec.controller_config().controller.down_after_ms
    );
    out!(
        "{}",
        crate::render::table(
            &[
                "SCENARIO",
                "RUNS",
                "ACKED LOST",
                "MAX WRITE GAP ms",
                "GAP vs BLIND",
                "DNS FLIP ms",
                "EVERY SITE +ms",
                "DETECTION ms",
                "REPL HEALTHY ms",
            ],
            &rows
        )
    );
    outln!(
        "\nmedian (min–max) over runs; GAP vs BLIND = median max write gap / that of blind REPLICAOF NO ONE + DNS;\nEVERY SITE = from the first site's DNS answering the new writer (the leader's, at its commit) to the last"
    );
    Ok(())
}

/// One cluster drill run's measures.
struct ClusterRun {
    switchover_pause_ms: f64,
    switchover_gap_ms: f64,
    switchover_lost: usize,
    failover_command_ms: f64,
    loss_to_writable_ms: f64,
    failover_lost: usize,
    auto_name_ms: f64,
    auto_writable_ms: f64,
    auto_lost: usize,
}

/// What `drill cluster` may change from the lab's settings.
struct ClusterSettings {
    link_ms: u64,
    node_timeout_ms: Option<u64>,
    max_lag_s: Option<u32>,
}

/// The drill's nine nodes (six in us-east-1: the primaries and a replica of each; three in
/// us-east-2), one per address `ip(0..9)`, as on separate hosts. With `link_ms`, us-east-2
/// stands that far from us-east-1, where the writers and the controller stand: each node is
/// reached at `announced(n)` through a proxy. Returns the addresses to reach them at.
async fn nine_nodes(
    dir: &std::path::Path,
    ip: impl Fn(u8) -> std::net::Ipv4Addr,
    announced: impl Fn(u8) -> std::net::Ipv4Addr,
    settings: &ClusterSettings,
) -> Result<(
    Vec<std::net::SocketAddr>,
    Vec<valkey_dr_lab::cluster::ClusterNode>,
    Option<valkey_dr_lab::cluster::RegionLink>,
)> {
    use valkey_dr_lab::cluster as lab_cluster;
    let listen: Vec<std::net::Ipv4Addr> = (0..9).map(ip).collect();
    let (addrs, nodes, link) = if settings.link_ms == 0 {
        let (addrs, nodes) = lab_cluster::form_spread(dir, &listen, 3).await?;
        (addrs, nodes, None)
    } else {
        let announced: Vec<std::net::Ipv4Addr> = (0..9).map(announced).collect();
        let regions: Vec<usize> = (0..9).map(|n| usize::from(n >= 6)).collect();
        let layout = lab_cluster::LinkLayout {
            listen: &listen,
            announced: &announced,
            regions: &regions,
            clients_region: 0,
            delay: Duration::from_millis(settings.link_ms),
        };
        let (addrs, nodes, link) = lab_cluster::form_linked(dir, &layout, 3).await?;
        (addrs, nodes, Some(link))
    };
    if let Some(ms) = settings.node_timeout_ms {
        for node in &addrs {
            let ms = ms.to_string();
            lab_cluster::command(*node, &["CONFIG", "SET", "cluster-node-timeout", &ms]).await?;
        }
    }
    Ok((addrs, nodes, link))
}

async fn cluster(runs: usize, dir: &std::path::Path, settings: &ClusterSettings) -> Result<()> {
    use valkey_dr_lab::cluster as lab_cluster;
    let mut done = Vec::new();
    for run in 1..=runs {
        let run_dir = dir.join(format!("run-{run}"));
        std::fs::create_dir_all(&run_dir)?;
        // Loopback addresses of this run's own: a dead node's address is never another
        // cluster's (its peers keep calling it).
        let pid = std::process::id();
        let at = move |first: u8| {
            move |n: u8| std::net::Ipv4Addr::new(127, first + n, (pid >> 8) as u8, run as u8)
        };
        let (addrs, mut nodes, link) = nine_nodes(&run_dir, at(160), at(180), settings).await?;
        let config = valkey_dr_core::Config::load(&lab_cluster::write_config(&run_dir, &addrs)?)?;
        let lost = |written: &[lab_cluster::ShardWritten], kept: &[Vec<u64>]| {
            written
                .iter()
                .zip(kept)
                .map(|(w, kept)| w.acked.iter().filter(|n| !kept.contains(n)).count())
                .sum::<usize>()
        };
        let kept = async |asked, written: &[lab_cluster::ShardWritten]| -> Result<Vec<Vec<u64>>> {
            let mut kept = Vec::new();
            for w in written {
                kept.push(lab_cluster::list_at(asked, &w.key).await?);
            }
            Ok(kept)
        };

        let writers = lab_cluster::ShardWriters::start("writes", &addrs[..3], &addrs).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let moved =
            valkey_dr_controller::cluster::cluster_switchover(&config, "us-east-2", |_| {}).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let written = writers.stop().await;
        let switchover_kept = kept(addrs[6], &written).await?;

        // us-east-2 now holds every primary: it is lost, and the primaries come back east.
        let writers = lab_cluster::ShardWriters::start("writes", &addrs[6..9], &addrs).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        for node in &mut nodes[6..9] {
            node.kill();
        }
        let lost_at = std::time::Instant::now();
        let before = writers.last_acked();
        let failed_over =
            valkey_dr_controller::cluster::cluster_failover(&config, "us-east-1", true, |_| {})
                .await?;
        let deadline = lost_at + Duration::from_secs(30);
        while writers
            .last_acked()
            .iter()
            .zip(&before)
            .any(|(now, then)| now <= then)
        {
            if std::time::Instant::now() > deadline {
                bail!("run {run}: a shard took no write within 30 s of the region's loss");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let loss_to_writable_ms = lost_at.elapsed().as_secs_f64() * 1000.0;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let failover_written = writers.stop().await;
        let failover_kept = kept(addrs[0], &failover_written).await?;
        drop(nodes);
        drop(link);

        // Automatic: a cluster whose nodes have addresses of their own, as on separate hosts
        // (the name carries addresses), its controller in this process with
        // `cross_region_failover = "auto"`; us-east-1 lost.
        let auto_dir = run_dir.join("auto");
        let _ = std::fs::remove_dir_all(&auto_dir);
        std::fs::create_dir_all(&auto_dir)?;
        let (addrs, mut nodes, link) = nine_nodes(&auto_dir, at(120), at(140), settings).await?;
        let dns = std::net::UdpSocket::bind((at(120)(9), 0))?.local_addr()?;
        let regions = [("us-east-1", &addrs[..6]), ("us-east-2", &addrs[6..9])];
        let mut config = valkey_dr_core::Config::load(&lab_cluster::write_regions_config(
            &auto_dir,
            &regions,
            Some(dns),
        )?)?;
        config.controller.cross_region_failover = valkey_dr_core::config::FailoverPolicy::Auto;
        // us-east-2 holds one node per shard: once it leads, no shard has a replica left until
        // us-east-1 is back, and with `writes_need_a_replica` (the default) its primaries would
        // refuse writes until then. Measured here: taking writes alone.
        config.controller.writes_need_a_replica = false;
        if let Some(lag) = settings.max_lag_s {
            config.controller.writer_quorum_max_lag_s = lag;
        }
        let running = valkey_dr_controller::cluster::controller::start(config, None).await?;
        let resolver = valkey_dr_dns::resolve::StubResolver::new(dns);
        let name_leads_to = async |nodes: &[std::net::SocketAddr]| {
            let mut want: Vec<std::net::IpAddr> = nodes.iter().map(|a| a.ip()).collect();
            want.sort();
            let mut ips = resolver
                .resolve("demo.valkey-dr.live")
                .await
                .map(|(ips, _)| ips)
                .unwrap_or_default();
            ips.sort();
            ips == want
        };
        let ready_by = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let armed = running
                .controller
                .status()
                .await
                .is_ok_and(|s| s.self_fenced.len() == 3);
            if armed && name_leads_to(&addrs[..3]).await {
                break;
            }
            if std::time::Instant::now() > ready_by {
                bail!(
                    "run {run}: the cluster's controller did not arm the fences and publish the name"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let writers = lab_cluster::ShardWriters::start("writes", &addrs[..3], &addrs).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        for node in &mut nodes[..6] {
            node.kill();
        }
        let lost_at = std::time::Instant::now();
        // Writes in flight at the SIGKILL are answered (or not) within this; the automatic
        // failover waits seconds for the fences' certainty.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = writers.last_acked();
        let (mut auto_name_ms, mut auto_writable_ms) = (None, None);
        while auto_name_ms.is_none() || auto_writable_ms.is_none() {
            if std::time::Instant::now() > lost_at + Duration::from_secs(30) {
                bail!(
                    "run {run}: 30 s after us-east-1's loss, the name on the survivors: {}, every shard writable: {} (see {})",
                    auto_name_ms.is_some(),
                    auto_writable_ms.is_some(),
                    auto_dir.join("state/events.jsonl").display()
                );
            }
            let at = lost_at.elapsed().as_secs_f64() * 1000.0;
            if auto_name_ms.is_none() && name_leads_to(&addrs[6..9]).await {
                auto_name_ms = Some(at);
            }
            let writable = writers
                .last_acked()
                .iter()
                .zip(&before)
                .all(|(now, then)| now > then);
            if auto_writable_ms.is_none() && writable {
                auto_writable_ms = Some(at);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let auto_written = writers.stop().await;
        let auto_kept = kept(addrs[6], &auto_written).await?;
        running.stop().await;
        done.push(ClusterRun {
            switchover_pause_ms: moved.write_pause_ms,
            switchover_gap_ms: written
                .iter()
                .map(|w| w.longest.as_secs_f64() * 1000.0)
                .fold(0.0, f64::max),
            switchover_lost: lost(&written, &switchover_kept),
            failover_command_ms: failed_over.took_ms,
            loss_to_writable_ms,
            failover_lost: lost(&failover_written, &failover_kept),
            auto_name_ms: auto_name_ms.unwrap_or_default(),
            auto_writable_ms: auto_writable_ms.unwrap_or_default(),
            auto_lost: lost(&auto_written, &auto_kept),
        });
        drop(nodes);
        drop(link);
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    let summary = |f: fn(&ClusterRun) -> f64| {
        let values: Vec<f64> = done.iter().map(f).collect();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(0.0, f64::max);
        let median = drill::median_of(&values).unwrap_or(f64::NAN);
        format!("{median:.1} ({min:.1}–{max:.1})")
    };
    let rows = vec![
        vec![
            "switchover: writes paused (ms)".to_string(),
            summary(|r| r.switchover_pause_ms),
        ],
        vec![
            "switchover: longest gap between a writer's acknowledgements (ms)".to_string(),
            summary(|r| r.switchover_gap_ms),
        ],
        vec![
            "switchover: acknowledged writes lost".to_string(),
            summary(|r| r.switchover_lost as f64),
        ],
        vec![
            "region loss: failover command (ms)".to_string(),
            summary(|r| r.failover_command_ms),
        ],
        vec![
            "region loss: from the SIGKILL to every shard writable (ms)".to_string(),
            summary(|r| r.loss_to_writable_ms),
        ],
        vec![
            "region loss: acknowledged writes lost".to_string(),
            summary(|r| r.failover_lost as f64),
        ],
        vec![
            "automatic region loss: from the SIGKILL to the name on the survivors (ms)".to_string(),
            summary(|r| r.auto_name_ms),
        ],
        vec![
            "automatic region loss: from the SIGKILL to every shard writable, writes_need_a_replica off (ms)".to_string(),
            summary(|r| r.auto_writable_ms),
        ],
        vec![
            "automatic region loss: acknowledged writes lost".to_string(),
            summary(|r| r.auto_lost as f64),
        ],
    ];
    let mut link = match settings.link_ms {
        0 => "no link emulation".to_string(),
        ms => format!("us-east-2 {ms} ms one way from us-east-1 and its writers"),
    };
    if let Some(ms) = settings.node_timeout_ms {
        link.push_str(&format!(", cluster-node-timeout {ms}"));
    }
    if let Some(lag) = settings.max_lag_s {
        link.push_str(&format!(", writer_quorum_max_lag_s {lag}"));
    }
    outln!(
        "cluster mode: 9 nodes on loopback, 3 shards, a writer per shard, {link}; {runs} run(s), median (min–max)"
    );
    out!(
        "{}",
        crate::render::table(&["MEASURE", "MEDIAN (MIN–MAX)"], &rows)
    );
    Ok(())
}
