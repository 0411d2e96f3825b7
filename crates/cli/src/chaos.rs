//! `valkey-dr chaos`: the nemesis scenarios, each on a lab of its own, with a table of what the
//! clients saw.

use std::path::PathBuf;

use anyhow::{Result, bail};
use valkey_dr_lab::chaos::{self, ChaosReport};
use valkey_dr_lab::drill;

use crate::Output;

#[derive(clap::Args)]
pub struct ChaosArgs {
    /// Run only the scenarios whose name contains this text (repeatable) [default: all]
    #[arg(long)]
    pub scenario: Vec<String>,
    /// Runs per scenario; the table shows medians.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Where the scenarios' labs live while they run.
    #[arg(long, default_value = "target/chaos")]
    pub dir: PathBuf,
    /// List the scenarios and exit.
    #[arg(long)]
    pub list: bool,
    /// Keep each stopped lab's directory (logs, events) for inspection.
    #[arg(long)]
    pub keep: bool,
    /// Keep the directory of a run that did not end well.
    #[arg(long, conflicts_with = "keep")]
    pub keep_failed: bool,
    /// Each place of every lab (a region, the controller's or the witness's place) in a network
    /// namespace of its own: partitions drop real packets (nftables), and the scenarios that
    /// only packet filters can make run too. Needs root.
    #[arg(long)]
    pub netns: bool,
    /// Cluster mode's scenarios instead: each on a stretched cluster of its own (nine nodes on
    /// loopback) run by its controller ([`valkey_dr_lab::cluster_chaos`]). With --netns, the
    /// scenarios that cut real packets run too, each in network namespaces of its own.
    #[arg(long)]
    pub cluster: bool,
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
}

pub async fn dispatch(args: ChaosArgs) -> Result<()> {
    if args.cluster {
        return cluster(args).await;
    }
    let all = chaos::scenarios();
    if args.list {
        for s in &all {
            outln!("{}", s.name);
        }
        return Ok(());
    }
    let selected: Vec<_> = all
        .into_iter()
        .filter(|s| asked_for(&args.scenario, &s.name))
        .filter(|s| runs_here(&args, s.fault.needs_real_network(), &s.name))
        .collect();
    if selected.is_empty() {
        bail!(none_matched(&args.scenario, "chaos --list"));
    }
    let bin = std::env::current_exe()?;
    std::fs::create_dir_all(&args.dir)?;
    // Node configs name their files by path: the lab needs an absolute one.
    let base = std::path::absolute(&args.dir)?;
    let keep = match (args.keep, args.keep_failed) {
        (true, _) => chaos::Keep::All,
        (_, true) => chaos::Keep::Failed,
        _ => chaos::Keep::None,
    };
    let mut results: Vec<Vec<ChaosReport>> = Vec::new();
    for (n, scenario) in selected.iter().enumerate() {
        let mut reports = Vec::new();
        for run in 0..args.runs.max(1) {
            let seed = std::process::id() ^ ((n * 31 + run) as u32).wrapping_mul(2_654_435_761);
            let network = if args.netns {
                chaos::Network::Namespaces
            } else {
                chaos::Network::Loopback
            };
            let report = chaos::run(&base, scenario, &bin, seed, keep, network).await?;
            eprintln!(
                "{:<55} run {}/{}: lost {}+{}, two masters {} ms, name on a replica {} ms, {}",
                scenario.name,
                run + 1,
                args.runs.max(1),
                report.lost_outside,
                report.lost_inside,
                report.two_masters_ms,
                report.name_on_replica_ms,
                report.verdict
            );
            let kept = chaos::lab_dir(&base, seed);
            if kept.exists() {
                eprintln!("  lab kept in {}", kept.display());
            }
            reports.push(report);
        }
        results.push(reports);
    }
    match args.output {
        Output::Json => outln!("{}", serde_json::to_string_pretty(&results)?),
        Output::Table => {
            out!("{}", table(&results));
            let ha: Vec<Vec<ChaosReport>> = selected
                .iter()
                .zip(&results)
                .filter(|(s, _)| s.ha)
                .map(|(_, r)| r.clone())
                .collect();
            if !ha.is_empty() {
                out!("\n{}", ha_table(&ha));
            }
        }
    }
    if results
        .iter()
        .flatten()
        .any(|r| !r.verdict.starts_with("ok"))
    {
        bail!("some scenarios did not end well (see VERDICT)");
    }
    Ok(())
}

/// Whether the scenario named `name` was asked for (`--scenario`; none given: every one).
fn asked_for(filters: &[String], name: &str) -> bool {
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

fn none_matched(filters: &[String], list: &str) -> String {
    format!("no scenario matches {filters:?}; see `valkey-dr {list}`")
}

/// Whether a scenario runs in this invocation: one that needs network namespaces only with
/// `--netns` (skipped, and said so, without).
fn runs_here(args: &ChaosArgs, needs_namespaces: bool, name: &str) -> bool {
    let runs = args.netns || !needs_namespaces;
    if !runs {
        eprintln!("{name:<55} skipped: needs --netns");
    }
    runs
}

/// A cut-off region's own applications: the writes they lost, and when its primaries stopped
/// acknowledging (none for the scenarios that cut nothing).
fn inside_cell(report: &valkey_dr_lab::cluster_chaos::ClusterRunReport) -> Option<String> {
    let lost = report.lost_inside?;
    let fenced = report
        .inside_fenced_ms
        .map_or("-".to_string(), |ms| format!("{ms} ms"));
    Some(format!("{lost} lost, fenced after {fenced}"))
}

/// `chaos --cluster`: cluster mode's scenarios, each run `--runs` times.
async fn cluster(args: ChaosArgs) -> Result<()> {
    use valkey_dr_lab::cluster_chaos;
    let selected: Vec<_> = cluster_chaos::scenarios()
        .into_iter()
        .filter(|s| asked_for(&args.scenario, &s.name))
        .collect();
    if args.list {
        for s in &selected {
            outln!("{}", s.name);
        }
        return Ok(());
    }
    let selected: Vec<_> = selected
        .into_iter()
        .filter(|s| runs_here(&args, s.fault.needs_namespaces(), &s.name))
        .collect();
    if selected.is_empty() {
        bail!(none_matched(&args.scenario, "chaos --cluster --list"));
    }
    let bin = std::env::current_exe()?;
    std::fs::create_dir_all(&args.dir)?;
    let base = std::path::absolute(&args.dir)?;
    let mut results = Vec::new();
    let mut run_number = 0u8;
    for scenario in &selected {
        let mut reports = Vec::new();
        for run in 0..args.runs.max(1) {
            run_number = run_number.wrapping_add(1).max(1);
            let report = cluster_chaos::run(scenario, &base, &bin, run_number, args.keep).await;
            eprintln!(
                "{:<45} run {}/{}: lost {}+{}, two primaries in {} samples (stale claims {}), name settled {} ms,{} {}{}",
                scenario.name,
                run + 1,
                args.runs.max(1),
                report.lost_after_fault,
                report.lost_before_fault,
                report.two_primaries_samples,
                report.stale_claim_samples,
                report
                    .name_settled_ms
                    .map_or("-".to_string(), |ms| ms.to_string()),
                inside_cell(&report)
                    .map(|cell| format!(" cut-off region: {cell},"))
                    .unwrap_or_default(),
                report.verdict,
                match report.switchovers_asked {
                    0 | 1 => String::new(),
                    n => format!(" (switchover asked {n} times)"),
                }
            );
            reports.push(report);
        }
        results.push(reports);
    }
    match args.output {
        Output::Json => outln!("{}", serde_json::to_string_pretty(&results)?),
        Output::Table => {
            let rows: Vec<Vec<String>> = results
                .iter()
                .map(|runs| {
                    let ok = runs.iter().filter(|r| r.ok()).count();
                    vec![
                        runs[0].scenario.clone(),
                        median_cell(runs.iter().map(|r| r.lost_after_fault as u64).collect()),
                        median_cell(runs.iter().map(|r| r.lost_before_fault as u64).collect()),
                        median_cell(
                            runs.iter()
                                .map(|r| r.two_primaries_samples as u64)
                                .collect(),
                        ),
                        median_cell(runs.iter().map(|r| r.stale_claim_samples as u64).collect()),
                        median_cell(runs.iter().filter_map(|r| r.name_settled_ms).collect()),
                        runs.iter()
                            .filter_map(inside_cell)
                            .collect::<Vec<_>>()
                            .join("; "),
                        format!("{ok}/{} ok", runs.len()),
                    ]
                })
                .collect();
            out!(
                "{}",
                crate::render::table(
                    &[
                        "SCENARIO",
                        "LOST AFTER THE FAULT",
                        "LOST BEFORE IT (ASYNC)",
                        "TWO PRIMARIES, ONE EPOCH (SAMPLES)",
                        "STALE CLAIMS (SAMPLES)",
                        "NAME SETTLED MS",
                        "CUT-OFF REGION: LOST, FENCED AFTER",
                        "VERDICT",
                    ],
                    &rows
                )
            );
        }
    }
    if results.iter().flatten().any(|r| !r.ok()) {
        bail!("some cluster scenarios did not end well (see the verdicts above)");
    }
    Ok(())
}

/// The median of one measure over a scenario's runs, with the range when runs differ.
fn median_cell(values: Vec<u64>) -> String {
    let mut v = values;
    if v.is_empty() {
        return "-".into();
    }
    v.sort_unstable();
    let median =
        drill::median_of(&v.iter().map(|x| *x as f64).collect::<Vec<_>>()).unwrap_or_default();
    if v[0] == v[v.len() - 1] {
        format!("{median:.0}")
    } else {
        format!("{median:.0} ({}–{})", v[0], v[v.len() - 1])
    }
}

/// What the highly available shape adds: takeover, self-fencing, flips, refused stale writes,
/// and whether every running site resolved the name throughout.
fn ha_table(results: &[Vec<ChaosReport>]) -> String {
    let rows: Vec<Vec<String>> = results
        .iter()
        .filter(|reports| !reports.is_empty())
        .map(|reports| {
            let all = |f: fn(&ChaosReport) -> u64| median_cell(reports.iter().map(f).collect());
            let some = |f: fn(&ChaosReport) -> Option<u64>| {
                median_cell(reports.iter().filter_map(f).collect())
            };
            vec![
                reports[0].scenario.clone(),
                some(|r| r.takeover_ms),
                some(|r| r.fenced_after_ms),
                all(|r| r.longest_untouched_pause_ms),
                all(|r| r.name_changes.saturating_sub(r.failovers.max(1))),
                all(|r| r.stale_writes_refused),
                all(|r| r.name_unresolved_ms),
                all(|r| r.longest_sites_disagree_ms),
            ]
        })
        .collect();
    let mut out = crate::render::table(
        &[
            "SCENARIO",
            "TAKEOVER ms",
            "REGION FENCED AFTER ms",
            "UNCUT SITES' LONGEST PAUSE ms",
            "DOUBLE FLIPS",
            "STALE WRITES REFUSED",
            "NAME UNRESOLVED ms",
            "SITES DISAGREE ms",
        ],
        &rows,
    );
    out.push_str(
        "\nTAKEOVER: from the fault to another site's election. REGION FENCED AFTER: from the fault\n\
         to the writer's own region pausing its writer. UNCUT SITES' LONGEST PAUSE: of a writer by a\n\
         site no cut named (it kept a majority: only an etcd election, ≤ 1 s, excuses one). DOUBLE FLIPS: name changes beyond one\n\
         per failover. STALE WRITES REFUSED: writes of a leader that had lost its lease, refused by\n\
         etcd or by its own clock. NAME UNRESOLVED: time some running site's DNS gave no answer.\n\
         SITES DISAGREE: the longest time two sites' DNS answered different writers (a site cut off\n\
         from etcd answers SERVFAIL once its copy may be stale, after a lease TTL).\n",
    );
    out
}

/// "ok (n/n)" when every run ended well, else each run's verdict that did not.
fn verdict_summary(reports: &[ChaosReport]) -> String {
    let failed: Vec<&str> = reports
        .iter()
        .map(|r| r.verdict.as_str())
        .filter(|v| !v.starts_with("ok"))
        .collect();
    let ok = reports.len() - failed.len();
    if failed.is_empty() {
        format!("ok ({ok}/{})", reports.len())
    } else {
        format!("{ok}/{} ok; {}", reports.len(), failed.join(" / "))
    }
}

fn table(results: &[Vec<ChaosReport>]) -> String {
    let rows: Vec<Vec<String>> = results
        .iter()
        .filter(|reports| !reports.is_empty())
        .map(|reports| {
            let column = |f: fn(&ChaosReport) -> u64| median_cell(reports.iter().map(f).collect());
            vec![
                reports[0].scenario.clone(),
                reports.len().to_string(),
                column(|r| r.acknowledged_outside + r.acknowledged_inside),
                column(|r| r.lost_outside),
                column(|r| r.lost_inside),
                column(|r| r.lost_excused),
                column(|r| r.two_masters_ms),
                column(|r| r.two_writable_masters_ms),
                column(|r| r.name_on_replica_ms),
                column(|r| r.max_write_gap_ms),
                column(|r| r.failovers),
                verdict_summary(reports),
            ]
        })
        .collect();
    let mut out = crate::render::table(
        &[
            "SCENARIO",
            "RUNS",
            "ACKED",
            "LOST OUTSIDE",
            "LOST INSIDE",
            "EXCUSED",
            "TWO MASTERS ms",
            "TWO WRITERS ms",
            "NAME ON REPLICA ms",
            "MAX GAP ms",
            "FAILOVERS",
            "VERDICT",
        ],
        &rows,
    );
    out.push_str(
        "\nmedian (min–max) over runs. OUTSIDE: a writer beyond every region (cut off by an isolation);\n\
         INSIDE: a writer in the writer's region. EXCUSED: acknowledged in a phase the scenario\n\
         excuses (an isolated writer before its fence), not counted as lost. TWO MASTERS: time two\n\
         nodes reported role:master (a paused or fenced old primary counts); TWO WRITERS: time two\n\
         of them took a write. MAX GAP: a writer's longest wait for an acknowledgement. VERDICT: every acknowledged write read back, one writer, the\n\
         name on it, the controller healthy (and no failover where none is allowed); \"in flight at\n\
         the kill\": at most one write per client per SIGKILL of the writer, acknowledged by it and\n\
         not yet sent to any replica (asynchronous replication; no failover can save those).\n",
    );
    out
}
