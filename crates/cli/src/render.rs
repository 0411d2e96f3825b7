//! Human-readable output: the status table and promotion progress.

use std::fmt::Write;
use valkey_dr_controller::events::EventKind;
use valkey_dr_core::config::DnsProviderConfig;

use serde_json::Value;
use valkey_dr_controller::Status;
use valkey_dr_core::Config;

/// Left-aligned columns, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into())
}

pub fn status(config: &Config, status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "epoch {} · writer {} ({}) · {}\n",
        opt(&status.epoch),
        opt(&status.primary),
        opt(&status.primary_region),
        status.findings.join("; ")
    );
    if let Some(c) = &status.coordination {
        let _ = writeln!(
            out,
            "site {} · leader {}{}\n",
            c.site,
            c.leader.as_deref().unwrap_or("none (no etcd quorum?)"),
            if c.fencing {
                " · this site pauses its region's writer (cut off from etcd)"
            } else {
                ""
            }
        );
        for warning in &c.warnings {
            let _ = writeln!(out, "warning: {warning}\n");
        }
    }
    let rows: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.region.clone(),
                n.node.clone(),
                n.role.clone(),
                opt(&n.follows),
                opt(&n.link),
                opt(&n.lag_bytes),
                opt(&n.lag_ms),
                opt(&n.keys),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "REGION",
            "NODE",
            "ROLE",
            "FOLLOWS",
            "LINK",
            "LAG_BYTES",
            "LAG_MS",
            "KEYS",
        ],
        &rows,
    ));
    let served_by = match &config.dns.provider {
        DnsProviderConfig::Embedded { listen } => listen.clone(),
        DnsProviderConfig::Rfc2136(c) => format!("RFC 2136 to {}", c.servers.join(", ")),
    };
    let _ = writeln!(out, "\nDNS ({served_by}, zone {})", config.zone_fqdn());
    let rows: Vec<Vec<String>> = status
        .dns
        .iter()
        .map(|r| vec![r.name.clone(), r.rtype.clone(), r.values.join(" ")])
        .collect();
    out.push_str(&table(&["NAME", "TYPE", "VALUE"], &rows));
    out
}

/// One line per finished promotion step.
pub fn promotion_event(event: &Value) -> Option<String> {
    if EventKind::of(event)? != EventKind::PromotionStep || event.get("state")?.as_str()? != "done"
    {
        return None;
    }
    Some(format!(
        "  {:<13} {:>9.3} ms  {}",
        event.get("step")?.as_str()?,
        event.get("duration_ms")?.as_f64()?,
        event.get("detail")?.as_str().unwrap_or_default()
    ))
}

pub fn promotion_result(result: &Value) -> String {
    let s = |k: &str| {
        result
            .get(k)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .unwrap_or_default()
    };
    format!(
        "promoted {} ({}) → {} ({}), epoch {}; writes paused {} ms, total {} ms",
        s("from_region"),
        s("old_primary"),
        s("to_region"),
        s("new_primary"),
        s("epoch"),
        s("write_pause_ms"),
        s("total_ms")
    )
}

/// `valkey-dr cluster status`: a row per shard.
/// A cluster's shards; `epoch`: the controller's, when one runs the cluster (the primaries then
/// belong where it says, not where those of the most slots are).
pub fn cluster(
    status: &valkey_dr_controller::cluster::ClusterStatus,
    epoch: Option<u64>,
) -> String {
    use valkey_dr_core::cluster::ShardFinding;
    let placed = |n: &valkey_dr_core::cluster::PlacedNode| {
        format!(
            "{} ({})",
            n.node,
            n.region.as_deref().unwrap_or("no configured region")
        )
    };
    let rows: Vec<Vec<String>> = status
        .shards
        .iter()
        .map(|shard| {
            let findings: Vec<String> = shard
                .findings
                .iter()
                .map(|f| match f {
                    ShardFinding::NoPrimary => "no primary".to_string(),
                    ShardFinding::NoSlots => "serves no slot (taken over while away)".to_string(),
                    ShardFinding::PrimaryOutsideWriterRegion { region } => format!(
                        "primary outside {} (in {})",
                        status.writer_region,
                        region.as_deref().unwrap_or("no configured region")
                    ),
                    ShardFinding::NoReplicaIn { region } => format!("no replica in {region}"),
                    ShardFinding::UnknownNode { node } => {
                        format!("{node} is in no configured region")
                    }
                    ShardFinding::NotOnline { node, health } => format!("{node} {health:?}"),
                    ShardFinding::MayFailOverAcrossRegions { node } => format!(
                        "the cluster may promote {node} across regions (cluster-replica-no-failover no)"
                    ),
                    ShardFinding::NoInRegionFailover { node } => format!(
                        "the cluster may not promote {node} beside its primary (cluster-replica-no-failover yes)"
                    ),
                    ShardFinding::MayMoveToAnotherShard { node } => format!(
                        "the cluster may move {node} to another shard (cluster-allow-replica-migration yes)"
                    ),
                })
                .collect();
            vec![
                if shard.slots.is_empty() {
                    "none".into()
                } else {
                    shard.slots.clone()
                },
                shard.primary.as_ref().map_or("-".into(), placed),
                shard
                    .replicas
                    .iter()
                    .map(|r| format!("{} lag {} B", placed(r), r.lag_bytes))
                    .collect::<Vec<_>>()
                    .join(", "),
                if findings.is_empty() {
                    "ok".into()
                } else {
                    findings.join("; ")
                },
            ]
        })
        .collect();
    let basis = match epoch {
        Some(epoch) => format!("by the controller's epoch {epoch}"),
        None => "where those of the most slots are".into(),
    };
    let mut out = format!(
        "{} shard(s), seen from {}; primaries belong in {} ({basis})\n",
        status.shards.len(),
        status.asked,
        status.writer_region
    );
    out.push_str(&table(&["SLOTS", "PRIMARY", "REPLICAS", "FINDINGS"], &rows));
    if !status.uncovered_slots.is_empty() {
        let _ = writeln!(
            out,
            "slots no shard serves: {}",
            status.uncovered_slots.join(", ")
        );
    }
    out
}

/// What a cluster command did to the nodes' automatic failover: one line per side, and the
/// nodes it could not set.
fn automatic_failover(set: &[valkey_dr_controller::cluster::GuardSet]) -> String {
    let nodes = |allowed: bool, failed: bool| {
        set.iter()
            .filter(|g| g.guard.automatic_failover == allowed && g.error.is_some() == failed)
            .map(|g| match &g.error {
                Some(e) => format!("{} ({e})", g.guard.node),
                None => g.guard.node.to_string(),
            })
            .collect::<Vec<_>>()
    };
    let mut out = String::new();
    for (allowed, failed, what) in [
        (false, false, "automatic failover refused on"),
        (true, false, "automatic failover allowed on"),
        (false, true, "automatic failover NOT refused on"),
        (true, true, "automatic failover NOT allowed on"),
    ] {
        let listed = nodes(allowed, failed);
        if !listed.is_empty() {
            out.push_str(&format!("{what} {}\n", listed.join(", ")));
        }
    }
    out
}

pub fn cluster_switchover(done: &valkey_dr_controller::cluster::ClusterSwitchover) -> String {
    if done.moves.is_empty() {
        return format!(
            "every shard's primary is already in {}\n{}",
            done.to_region,
            automatic_failover(&done.automatic_failover)
        );
    }
    let rows: Vec<Vec<String>> = done
        .moves
        .iter()
        .map(|m| vec![m.slots.clone(), m.from.to_string(), m.to.to_string()])
        .collect();
    let mut out = format!(
        "{} shard(s) moved to {}; writes paused {:.1} ms\n",
        done.moves.len(),
        done.to_region,
        done.write_pause_ms
    );
    out.push_str(&table(&["SLOTS", "FROM", "TO"], &rows));
    out.push_str(&automatic_failover(&done.automatic_failover));
    out
}

pub fn cluster_failover(done: &valkey_dr_controller::cluster::ClusterFailover) -> String {
    if done.shards.is_empty() {
        return format!(
            "every shard's primary is already in {}\n{}",
            done.to_region,
            automatic_failover(&done.automatic_failover)
        );
    }
    let rows: Vec<Vec<String>> = done
        .shards
        .iter()
        .map(|s| {
            let old = match (s.old_answered, s.caught_up, s.old_follows) {
                (false, _, _) => "did not answer: rejoins as a replica when back".to_string(),
                (true, _, None) => "still the primary (the shard did not move)".to_string(),
                (true, caught_up, Some(follows)) => format!(
                    "paused, {}, {}",
                    if caught_up {
                        "caught up"
                    } else {
                        "NOT caught up"
                    },
                    if follows {
                        "follows"
                    } else {
                        "does NOT follow: kept paused"
                    }
                ),
            };
            vec![
                s.r#move.slots.clone(),
                s.r#move.from.to_string(),
                s.r#move.to.to_string(),
                s.error.clone().unwrap_or_else(|| "moved".into()),
                old,
            ]
        })
        .collect();
    let mut out = format!(
        "{} shard(s) failed over to {} in {:.0} ms\n",
        done.shards.len(),
        done.to_region,
        done.took_ms
    );
    out.push_str(&table(
        &["SLOTS", "FROM", "TO", "RESULT", "OLD PRIMARY"],
        &rows,
    ));
    out.push_str(&automatic_failover(&done.automatic_failover));
    out
}

/// A controlled cluster: the epoch, what the name leads to, a move left halfway, the shards.
pub fn controlled_cluster(
    status: &valkey_dr_controller::cluster::controller::ControlledClusterStatus,
) -> String {
    let mut out = format!(
        "{} leads to {}\n",
        "the name",
        if status.name.is_empty() {
            "nothing yet".to_string()
        } else {
            status.name.join(", ")
        }
    );
    if let Some(site) = &status.site {
        let _ = writeln!(
            out,
            "site {site}; {}",
            match &status.leader {
                Some(leader) if leader == site => "this site leads".to_string(),
                Some(leader) => format!("site {leader} leads (moves asked here are handed to it)"),
                None => "no leader known (is etcd reachable?)".to_string(),
            }
        );
    }
    if !status.self_fenced.is_empty() {
        let _ = writeln!(
            out,
            "self-fence armed on {} node(s): cut off from every replica outside its region, each refuses writes",
            status.self_fenced.len()
        );
    }
    if let Some(loss) = &status.data_loss_suspected {
        let _ = writeln!(
            out,
            "data loss suspected: {} came back without its data while serving slots {} (its replicas copy the empty dataset); restore from a backup if needed, then `valkey-dr ack`",
            loss["node"].as_str().unwrap_or("a primary"),
            loss["slots"].as_str().unwrap_or("?")
        );
    }
    if let Some(to) = &status.moving_to {
        let _ = writeln!(
            out,
            "a move to {to} stopped halfway: run `valkey-dr cluster switchover {to}` (or `cluster failover {to}`) again to finish it"
        );
    }
    out.push_str(&cluster(&status.cluster, status.epoch));
    out
}

/// One line for a cluster move's step event, as the controller streams it.
pub fn cluster_event(event: &serde_json::Value) -> Option<String> {
    use valkey_dr_controller::events::EventKind;
    match EventKind::of(event)? {
        EventKind::ClusterMoveRecorded => Some(format!(
            "move to {} recorded (epoch {})",
            event["to_region"].as_str()?,
            event["epoch"]
        )),
        EventKind::ClusterStep => Some(format!("  {}", event["step"].as_str()?)),
        EventKind::ClusterMoveSettled => Some(format!(
            "epoch {}: primaries in {}",
            event["epoch"],
            event["writer_region"].as_str()?
        )),
        EventKind::DnsApplied => Some(format!("  name moved ({} record sets)", event["changes"])),
        _ => None,
    }
}
