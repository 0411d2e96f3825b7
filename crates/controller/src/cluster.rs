//! Cluster mode: the shards of a Valkey cluster stretched over the configured regions,
//! discovered from whichever configured node answers first, placed in their regions with what
//! is wrong ([`valkey_dr_core::cluster::shard_views`]), and moved together to another region by
//! an operator's all-shard switchover ([`cluster_switchover`]). Not yet part of the controller's
//! loop: no epoch, no name, no failover.

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde::Serialize;
use valkey_dr_core::cluster::{
    Shard, ShardMove, ShardView, SwitchoverRefusal, plan_switchover, shard_views, slot_ranges,
    uncovered_slots,
};
use valkey_dr_core::{Config, Endpoint, Engine, Topology};
use valkey_dr_valkey::cluster::TakeOver;
use valkey_dr_valkey::{Timeouts, ValkeyEngine};

/// What `valkey-dr cluster status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// The node whose view this is.
    pub asked: String,
    /// Where the primaries belong (the configured primary region).
    pub writer_region: String,
    /// In slot order.
    pub shards: Vec<ShardView>,
    /// Slots no shard serves (`start-end`): the cluster refuses them.
    pub uncovered_slots: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterStatusError {
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),
    #[error("no configured node answered CLUSTER SHARDS:\n{0}")]
    NoNodeAnswered(String),
}

fn engine(config: &Config) -> Result<ValkeyEngine, crate::security::SecurityError> {
    Ok(ValkeyEngine::new(
        Timeouts {
            connect: Duration::from_millis(config.controller.connect_timeout_ms),
            command: Duration::from_millis(config.controller.command_timeout_ms),
        },
        crate::security::load(config)?,
    ))
}

/// The shards as the first configured node that answers `CLUSTER SHARDS` sees them, and that
/// node.
async fn discover(
    engine: &ValkeyEngine,
    topology: &Topology,
) -> Result<(Endpoint, Vec<Shard>), String> {
    let mut failures = Vec::new();
    for node in &topology.nodes {
        match engine.cluster_shards(&node.control_endpoint).await {
            Ok(shards) => return Ok((node.endpoint.clone(), shards)),
            Err(e) => failures.push(format!("  {}: {e}", node.endpoint)),
        }
    }
    Err(failures.join("\n"))
}

/// Asks the configured nodes in order until one answers `CLUSTER SHARDS`.
pub async fn cluster_status(config: &Config) -> Result<ClusterStatus, ClusterStatusError> {
    let topology = Topology::from_config(config);
    let engine = engine(config)?;
    let (asked, shards) = discover(&engine, &topology)
        .await
        .map_err(ClusterStatusError::NoNodeAnswered)?;
    Ok(ClusterStatus {
        asked: asked.to_string(),
        writer_region: topology.region(topology.bootstrap_region).name.clone(),
        uncovered_slots: uncovered_slots(&shards)
            .into_iter()
            .map(|r| slot_ranges(&[r]))
            .collect(),
        shards: shard_views(&topology, topology.bootstrap_region, &shards),
    })
}

/// What `valkey-dr cluster switchover` did.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterSwitchover {
    pub to_region: String,
    /// One per shard that moved (a shard already in the region stays).
    pub moves: Vec<ShardMove>,
    /// From the first shard's pause to the last one's release.
    pub write_pause_ms: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterSwitchoverError {
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),
    #[error("no configured node answered CLUSTER SHARDS:\n{0}")]
    NoNodeAnswered(String),
    #[error("no region `{0}` in the configuration")]
    UnknownRegion(String),
    #[error("nothing moved: {}", list(.0))]
    Refused(Vec<SwitchoverRefusal>),
    /// Stopped before any shard handed over: every pause lifted, nothing changed.
    #[error("nothing moved: {0}")]
    Aborted(String),
    /// Some shard did not hand over: the ones that did were handed back.
    #[error("rolled back: {reason}; {}", rolled_back(.handed_back, .not_handed_back))]
    RolledBack {
        reason: String,
        handed_back: Vec<String>,
        not_handed_back: Vec<String>,
    },
}

fn list(refusals: &[SwitchoverRefusal]) -> String {
    refusals
        .iter()
        .map(|r| format!("\n  - {r}"))
        .collect::<String>()
}

fn rolled_back(handed_back: &[String], not_handed_back: &[String]) -> String {
    if not_handed_back.is_empty() {
        format!(
            "every shard's primary is where it was ({} handed back)",
            handed_back.len()
        )
    } else {
        format!(
            "shards {} could not be handed back: their primaries stand in the new region; run the switchover again or back",
            not_handed_back.join(" ")
        )
    }
}

/// How long a shard may take to hand over once asked (Valkey gives a manual failover 5 s).
const HANDOVER_WITHIN: Duration = Duration::from_secs(6);
/// The pause outlasts the catch-up and the handovers by this much, and runs out by itself if
/// the operator's command dies.
const PAUSE_MARGIN: Duration = Duration::from_secs(2);

/// Moves every shard's primary to `to_region` as one cut: writes paused on every primary first,
/// every target caught up with its primary's frozen offset, then every shard handed over with
/// `CLUSTER FAILOVER TAKEOVER` while the pause holds, then every old primary's clients released (they reconnect and follow `MOVED` to the new primaries). All or
/// nothing: a refusal or a failure before the handovers lifts every pause and changes nothing; a
/// shard that does not hand over hands the others back.
pub async fn cluster_switchover(
    config: &Config,
    to_region: &str,
) -> Result<ClusterSwitchover, ClusterSwitchoverError> {
    let topology = Topology::from_config(config);
    let to = topology
        .region_by_name(to_region)
        .ok_or_else(|| ClusterSwitchoverError::UnknownRegion(to_region.to_string()))?;
    let engine = engine(config)?;
    let (_, shards) = discover(&engine, &topology)
        .await
        .map_err(ClusterSwitchoverError::NoNodeAnswered)?;
    let moves = plan_switchover(&topology, &shards, to).map_err(ClusterSwitchoverError::Refused)?;
    let done = |moves: Vec<ShardMove>, started: Option<Instant>| ClusterSwitchover {
        to_region: to_region.to_string(),
        moves,
        write_pause_ms: started.map_or(0.0, |s| s.elapsed().as_secs_f64() * 1000.0),
    };
    if moves.is_empty() {
        return Ok(done(moves, None));
    }
    let catchup = Duration::from_millis(config.controller.catchup_timeout_ms);
    let pause = catchup + HANDOVER_WITHIN + PAUSE_MARGIN;

    // 1. The cut: writes paused on every primary, each with the offset it froze at.
    let started = Instant::now();
    let paused = join_all(
        moves
            .iter()
            .map(|m| engine.pause_writes_and_read(&m.from, pause)),
    )
    .await;
    let mut frozen = Vec::new();
    for (m, result) in moves.iter().zip(paused) {
        match result {
            Ok(info) => frozen.push(info.offset),
            Err(e) => {
                lift(&engine, &moves).await;
                return Err(ClusterSwitchoverError::Aborted(format!(
                    "cannot pause writes on {} (shard {}): {e}",
                    m.from, m.slots
                )));
            }
        }
    }

    // 2. Every target holds everything its primary acknowledged.
    let deadline = Instant::now() + catchup;
    loop {
        let offsets = join_all(moves.iter().map(|m| engine.replication(&m.to))).await;
        let behind: Vec<String> = moves
            .iter()
            .zip(&offsets)
            .zip(&frozen)
            .filter(|((_, seen), needed)| !seen.as_ref().is_ok_and(|i| i.offset >= **needed))
            .map(|((m, _), _)| format!("{} (shard {})", m.to, m.slots))
            .collect();
        if behind.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            lift(&engine, &moves).await;
            return Err(ClusterSwitchoverError::Aborted(format!(
                "not caught up within {} ms: {}",
                catchup.as_millis(),
                behind.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    // 3. Every shard hands over, at once: `TAKEOVER` needs no vote (concurrent coordinated
    // failovers compete for the primaries' one vote per epoch, and all but one time out), and is
    // safe here because every old primary is paused and every target holds all it acknowledged.
    // So the pause must still hold for a while.
    let left = pause.saturating_sub(started.elapsed());
    if left < PAUSE_MARGIN {
        lift(&engine, &moves).await;
        return Err(ClusterSwitchoverError::Aborted(format!(
            "only {} ms of the write pause left; retry",
            left.as_millis()
        )));
    }
    let handed = join_all(
        moves
            .iter()
            .map(|m| hand_over(&engine, &m.to, &m.from, TakeOver::Takeover)),
    )
    .await;
    if let Some(reason) = handed.iter().find_map(|r| r.as_ref().err()) {
        let reason = reason.clone();
        let back: Vec<&ShardMove> = moves
            .iter()
            .zip(&handed)
            .filter(|(_, r)| r.is_ok())
            .map(|(m, _)| m)
            .collect();
        // Back one at a time, coordinated: the new primaries are not paused, and a coordinated
        // failover brings back whatever they took meanwhile.
        let (mut handed_back, mut not_handed_back) = (Vec::new(), Vec::new());
        for m in back {
            match hand_over(&engine, &m.from, &m.to, TakeOver::Coordinated).await {
                Ok(()) => handed_back.push(m.slots.clone()),
                Err(_) => not_handed_back.push(m.slots.clone()),
            }
        }
        lift(&engine, &moves).await;
        return Err(ClusterSwitchoverError::RolledBack {
            reason,
            handed_back,
            not_handed_back,
        });
    }

    // 4. Release: the old primaries' clients reconnect and follow MOVED.
    join_all(
        moves
            .iter()
            .map(|m| engine.kill_clients_and_unpause(&m.from)),
    )
    .await;
    Ok(done(moves, Some(started)))
}

/// Lifts the pause on every shard's old primary.
async fn lift(engine: &ValkeyEngine, moves: &[ShardMove]) {
    join_all(moves.iter().map(|m| engine.unpause(&m.from))).await;
}

/// Asks `replica` to take its shard over from `primary`, and waits until it is the primary and
/// the old one follows it, or [`HANDOVER_WITHIN`] passed.
async fn hand_over(
    engine: &ValkeyEngine,
    replica: &Endpoint,
    primary: &Endpoint,
    how: TakeOver,
) -> Result<(), String> {
    engine
        .cluster_failover(replica, how)
        .await
        .map_err(|e| format!("{replica} refused CLUSTER FAILOVER: {e}"))?;
    let deadline = Instant::now() + HANDOVER_WITHIN;
    loop {
        let (new, old) = futures::join!(engine.replication(replica), engine.replication(primary));
        if new.is_ok_and(|i| i.is_primary()) && old.is_ok_and(|i| !i.is_primary()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{replica} did not take over from {primary} within {} s",
                HANDOVER_WITHIN.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
