//! Cluster mode: the shards of a Valkey cluster stretched over the configured regions,
//! discovered from whichever configured node answers first, placed in their regions with what
//! is wrong ([`valkey_dr_core::cluster::shard_views`]), and moved together to another region by
//! an operator's all-shard switchover ([`cluster_switchover`]) or region failover
//! ([`cluster_failover`]). With `mode = "cluster"` a [`controller::ClusterController`] runs
//! them, keeps the epoch and leads the name; without it they act on the nodes alone.

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde::{Deserialize, Serialize};
use valkey_dr_core::cluster::{
    FailoverGuard, MoveRefusal, Shard, ShardMove, ShardView, failover_guards, plan_failover,
    plan_switchover, shard_views, slot_ranges, uncovered_slots, writer_region,
};
use valkey_dr_core::{Config, Endpoint, Engine, RegionId, Topology};
use valkey_dr_valkey::cluster::NodeHealth;
use valkey_dr_valkey::{Timeouts, ValkeyEngine};

pub mod controller;
mod handover;
pub mod start_guard;
mod state;

pub use handover::{CutStep, Mover};
use handover::{
    HANDOVER_WITHIN, Handover, PAUSE_MARGIN, Quiet, catch_up, cut_over, follow_successor, follows,
    linked, take_over_in_turn,
};

/// What `valkey-dr cluster status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node whose view this is.
    pub asked: String,
    /// Where the primaries belong: the epoch's region when a controller runs the cluster, else
    /// the region holding the primaries of the most slots (the configured primary region on a
    /// tie).
    pub writer_region: String,
    /// In slot order.
    pub shards: Vec<ShardView>,
    /// Slots no shard serves (`start-end`): the cluster refuses them.
    pub uncovered_slots: Vec<String>,
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

/// The shards as the first configured node that answers `CLUSTER NODES` sees them, and that
/// node; the nodes of `prefer` are asked first (after a region's loss, a survivor's view). A
/// node that has not answered within [`HEDGE_AFTER`] does not hold up the next one, which is
/// asked too: a stopped node takes the connection and answers nothing until the command times
/// out, and a lost region's six would hold a pass up six timeouts.
async fn discover(
    engine: &ValkeyEngine,
    topology: &Topology,
    prefer: Option<RegionId>,
) -> Result<(Endpoint, Vec<Shard>), String> {
    use futures::StreamExt;
    let mut nodes: Vec<_> = topology.nodes.iter().collect();
    nodes.sort_by_key(|n| Some(n.region) != prefer);
    let mut waiting = nodes.into_iter();
    let mut asked = futures::stream::FuturesUnordered::new();
    let mut failures = Vec::new();
    if let Some(first) = waiting.next() {
        asked.push(shards_seen_by(engine, first));
    }
    while !asked.is_empty() {
        let hedge = tokio::time::sleep(HEDGE_AFTER);
        tokio::select! {
            Some((node, seen)) = asked.next() => match seen {
                Ok(shards) => return Ok((node.endpoint.clone(), shards)),
                Err(e) => {
                    failures.push(format!("  {}: {e}", node.endpoint));
                    if let Some(next) = waiting.next() {
                        asked.push(shards_seen_by(engine, next));
                    }
                }
            },
            _ = hedge => {
                if let Some(next) = waiting.next() {
                    asked.push(shards_seen_by(engine, next));
                }
            }
        }
    }
    Err(failures.join("\n"))
}

/// How long discovery waits for a node before asking the next one too.
const HEDGE_AFTER: Duration = Duration::from_millis(200);

async fn shards_seen_by<'a>(
    engine: &ValkeyEngine,
    node: &'a valkey_dr_core::Node,
) -> (
    &'a valkey_dr_core::Node,
    Result<Vec<Shard>, valkey_dr_core::EngineError>,
) {
    (node, engine.cluster_shards(&node.control_endpoint).await)
}

/// The nodes of `shards` that answered when they were discovered.
fn answering_nodes(shards: &[Shard]) -> Vec<&Endpoint> {
    shards
        .iter()
        .flat_map(|s| &s.nodes)
        .filter(|n| n.health == NodeHealth::Online)
        .map(|n| &n.endpoint)
        .collect()
}

/// The replication offset `node` had when `shards` were read (0 when it was not among them).
fn offset_seen(shards: &[Shard], node: &Endpoint) -> u64 {
    shards
        .iter()
        .flat_map(|s| &s.nodes)
        .find(|n| n.endpoint == *node)
        .map_or(0, |n| n.replication_offset)
}

/// Asks the configured nodes in order until one answers `CLUSTER NODES`.
pub async fn cluster_status(config: &Config) -> Result<ClusterStatus, ClusterError> {
    let topology = Topology::from_config(config);
    let engine = engine(config)?;
    let (asked, shards) = discover(&engine, &topology, None)
        .await
        .map_err(ClusterError::NoNodeAnswered)?;
    let writer = writer_region(&topology, &shards, topology.bootstrap_region);
    Ok(status_of(&topology, &asked, &shards, writer))
}

/// The shards as `asked` sees them, placed against `writer` as the primaries' region.
fn status_of(
    topology: &Topology,
    asked: &Endpoint,
    shards: &[Shard],
    writer: RegionId,
) -> ClusterStatus {
    ClusterStatus {
        asked: asked.to_string(),
        writer_region: topology.region(writer).name.clone(),
        uncovered_slots: uncovered_slots(shards)
            .into_iter()
            .map(|r| slot_ranges(&[r]))
            .collect(),
        shards: shard_views(topology, writer, shards),
    }
}

/// What `valkey-dr cluster switchover` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterSwitchover {
    pub to_region: String,
    /// One per shard that moved (a shard already in the region stays).
    pub moves: Vec<ShardMove>,
    /// From the first shard's pause to the last one's release.
    pub write_pause_ms: f64,
    /// The nodes whose automatic failover changed sides with the primaries ([`failover_guards`]).
    pub automatic_failover: Vec<GuardSet>,
}

/// A node's automatic failover as a command set it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuardSet {
    #[serde(flatten)]
    pub guard: FailoverGuard,
    /// Why it could not be set (the node keeps its setting; `cluster status` shows it).
    pub error: Option<String>,
}

/// Sets every node's automatic failover as `guards` want it: the refusals first, so that no
/// moment lets the cluster promote in two regions.
async fn set_guards(engine: &ValkeyEngine, guards: Vec<FailoverGuard>) -> Vec<GuardSet> {
    let (refused, allowed): (Vec<_>, Vec<_>) =
        guards.into_iter().partition(|g| !g.automatic_failover);
    let mut set = Vec::new();
    for group in [refused, allowed] {
        let results = join_all(
            group
                .iter()
                .map(|g| engine.set_cluster_automatic_failover(&g.node, g.automatic_failover)),
        )
        .await;
        set.extend(group.into_iter().zip(results).map(|(guard, r)| GuardSet {
            guard,
            error: r.err().map(|e| e.to_string()),
        }));
    }
    set
}

fn list(refusals: &[MoveRefusal]) -> String {
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
            "could not be handed back, their primaries stand in the new region (run the switchover again, or back): {}",
            not_handed_back.join("; ")
        )
    }
}

/// Moves every shard's primary to `to_region` as one cut ([`cut_over`]), then releases the old
/// primaries' clients (they reconnect and follow `MOVED` to the new primaries). All or nothing:
/// a refusal or a failure before the handovers lifts every pause and changes nothing; a shard
/// that does not hand over makes the others hand back, by the same cut in reverse.
pub async fn cluster_switchover(
    config: &Config,
    to_region: &str,
    reached: impl Fn(CutStep) + Sync,
) -> Result<ClusterSwitchover, ClusterError> {
    switchover_with(&engine(config)?, config, to_region, &reached).await
}

/// [`cluster_switchover`] through `engine` (a controller's, with its connections).
pub(crate) async fn switchover_with(
    engine: &ValkeyEngine,
    config: &Config,
    to_region: &str,
    mover: &impl Mover,
) -> Result<ClusterSwitchover, ClusterError> {
    let topology = Topology::from_config(config);
    let to = topology
        .region_by_name(to_region)
        .ok_or_else(|| ClusterError::UnknownRegion(to_region.to_string()))?;
    let (_, shards) = discover(engine, &topology, None)
        .await
        .map_err(ClusterError::NoNodeAnswered)?;
    let moves = plan_switchover(&topology, &shards, to).map_err(ClusterError::Refused)?;
    let started = Instant::now();
    let catchup = Duration::from_millis(config.controller.catchup_timeout_ms);
    let forward: Vec<(&Endpoint, &Endpoint)> = moves.iter().map(|m| (&m.from, &m.to)).collect();
    // Long enough for a hand-back too; lifted as soon as it is over.
    let pause = 2 * (catchup + HANDOVER_WITHIN) + PAUSE_MARGIN;
    let bystanders = answering_nodes(&shards);
    let handed = cut_over(engine, &forward, &bystanders, catchup, pause, mover)
        .await
        .map_err(ClusterError::Aborted)?;
    let old_primaries = || forward.iter().map(|(from, _)| *from);
    // Deposed mid-move, it acts no more — no release, no hand-back: the leader settles the
    // move by what the shards show, and the pauses run out by themselves.
    if !mover.may_act() {
        return Err(ClusterError::Deposed);
    }
    let Some(reason) = handed.iter().find_map(|r| r.clone().err()) else {
        join_all(old_primaries().map(|node| engine.kill_clients_and_unpause(node))).await;
        // A run that died before its release left pauses behind, on nodes this one did not
        // move (their shard was already there): lifted too. A replica takes no write anyway.
        let others = shards
            .iter()
            .flat_map(|s| &s.nodes)
            .filter(|n| !old_primaries().any(|from| *from == n.endpoint));
        join_all(others.map(|n| engine.unpause(&n.endpoint))).await;
        let write_pause_ms = started.elapsed().as_secs_f64() * 1000.0;
        let automatic_failover =
            set_guards(engine, failover_guards(&topology, &shards, &moves)).await;
        return Ok(ClusterSwitchover {
            to_region: to_region.to_string(),
            moves,
            write_pause_ms,
            automatic_failover,
        });
    };
    // Hand back what moved, by the same cut the other way: the new primaries paused, the old
    // ones caught up with them (they may have taken writes), then taken back. The old primaries
    // of the shards that did not move stay paused meanwhile.
    // What moved is what the targets say, not only what the handovers confirmed: a target whose
    // takeover landed after its handover gave up leads its shard too, and is handed back with
    // the others (counted as not moved, it stayed in the other region: halfway).
    let leads = join_all(
        moves
            .iter()
            .zip(&handed)
            .map(|(m, handed)| moved_over(engine, m, handed)),
    )
    .await;
    let moved: Vec<&ShardMove> = moves
        .iter()
        .zip(leads)
        .filter(|(_, leads)| *leads)
        .map(|(m, _)| m)
        .collect();
    let back: Vec<(&Endpoint, &Endpoint)> = moved.iter().map(|m| (&m.to, &m.from)).collect();
    // A target whose takeover landed late was not followed by its old primary within the
    // handover's wait: an old primary that stands as a primary with no slots (seen under load)
    // would never catch up with the hand-back's cut, and the shard would keep one replica
    // less. It is told to follow first, as the handover does.
    // An old primary, a replica since its handover, may be in a full sync from its new primary,
    // which a paused primary does not feed (seen: the hand-back's catch-up ran out while the
    // transfer stood still). The reverse cut pauses once they are linked.
    join_all(moved.iter().map(async |m| {
        follow_successor(engine, &m.from, &m.to, HANDOVER_WITHIN).await;
        linked(engine, &m.from, HANDOVER_WITHIN).await
    }))
    .await;
    // And a paused replica applies nothing its primary sends until its pause ends (Valkey 8.0.1:
    // `CLIENT PAUSE WRITE` holds the replication stream back too; seen: a hand-back after 14 s of
    // writes never caught up). Replicas now, the old primaries take no write: released.
    join_all(moved.iter().map(|m| engine.unpause(&m.from))).await;
    let returned = match cut_over(
        engine,
        &back,
        &bystanders,
        catchup,
        catchup + HANDOVER_WITHIN + PAUSE_MARGIN,
        &Quiet(mover),
    )
    .await
    {
        Ok(returned) => returned,
        Err(reason) => vec![Err(reason); back.len()],
    };
    let (mut handed_back, mut not_handed_back) = (Vec::new(), Vec::new());
    for (m, r) in moved.iter().zip(&returned) {
        match r {
            Ok(()) => handed_back.push(m.slots.clone()),
            Err(why) => not_handed_back.push(format!("{} ({why})", m.slots)),
        }
    }
    // The nodes that handed back are replicas again: their clients go back to the old primaries.
    join_all(
        back.iter()
            .map(|(from, _)| engine.kill_clients_and_unpause(from)),
    )
    .await;
    join_all(old_primaries().map(|node| engine.unpause(node))).await;
    Err(ClusterError::RolledBack {
        reason,
        handed_back,
        not_handed_back,
    })
}

/// Whether `m`'s target leads its shard: its handover said so, or it answers as a primary now.
async fn moved_over(engine: &ValkeyEngine, m: &ShardMove, handed: &Result<(), String>) -> bool {
    handed.is_ok()
        || engine
            .replication(&m.to)
            .await
            .is_ok_and(|i| i.is_primary())
}

/// What `valkey-dr cluster failover` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterFailover {
    pub to_region: String,
    /// One per shard whose primary stood outside the region.
    pub shards: Vec<FailedOverShard>,
    /// From the first probe to the last shard's takeover.
    pub took_ms: f64,
    /// The nodes whose automatic failover changed sides with the primaries ([`failover_guards`]).
    pub automatic_failover: Vec<GuardSet>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedOverShard {
    #[serde(flatten)]
    pub r#move: ShardMove,
    /// The old primary answered: its writes were paused before the takeover, and its new
    /// primary waited for.
    pub old_answered: bool,
    /// The new primary held every write the old one had acknowledged before its pause (known
    /// only when the old one answered and was paused; without it, what the replica had not
    /// received is lost).
    pub caught_up: bool,
    /// The old primary follows the new one (`None` when it did not answer — it learns of the
    /// takeover from the cluster when it is back, and rejoins as a replica — or the shard did
    /// not move: it stays the primary, its pause lifted).
    pub old_follows: Option<bool>,
    /// Why the shard did not move, if it did not.
    pub error: Option<String>,
}

/// One shard's move in a failover, as it goes.
struct Moving<'a> {
    r#move: &'a ShardMove,
    /// Its old primary answered when the shards were read: it is paused before the takeover.
    old_answered: bool,
    /// The offset the old primary's writes were paused at, which its target must reach.
    frozen_at: Option<u64>,
}

/// After a failover's takeover: the old primary of `m`, if it answered, released once it follows
/// its new primary (`Some(true)`), else kept paused (`Some(false)`); released at once when its
/// shard did not move (it is still the primary).
async fn release_old_primary(engine: &ValkeyEngine, m: &Moving<'_>, moved: bool) -> Option<bool> {
    let old = &m.r#move.from;
    if !m.old_answered {
        return None;
    }
    if !moved {
        engine.unpause(old).await.ok();
        return None;
    }
    let followed = follows(engine, old, HANDOVER_WITHIN).await;
    if followed {
        engine.kill_clients_and_unpause(old).await.ok();
    } else {
        engine.pause_writes(old, UNFOLLOWED_PAUSE).await.ok();
    }
    Some(followed)
}

/// Why a cluster command did not do all it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),
    #[error("no configured node answered CLUSTER NODES:\n{0}")]
    NoNodeAnswered(String),
    #[error("no region `{0}` in the configuration")]
    UnknownRegion(String),
    #[error("nothing moved: {}", list(.0))]
    Refused(Vec<MoveRefusal>),
    /// Stopped before any shard handed over: every pause lifted, nothing changed.
    #[error("nothing moved: {0}")]
    Aborted(String),
    /// A switchover's shard did not hand over: the ones that did were handed back.
    #[error("rolled back: {reason}; {}", rolled_back(.handed_back, .not_handed_back))]
    RolledBack {
        reason: String,
        handed_back: Vec<String>,
        not_handed_back: Vec<String>,
    },
    /// Nothing is recorded and the published epoch cannot be read: nothing is decided until
    /// it can.
    #[error("the cluster's epoch is not known: the ownership record cannot be read ({0})")]
    EpochUnknown(String),
    #[error("the cluster's epoch was not recorded: {0}")]
    StateNotRecorded(String),
    #[error("the name was not moved: {0}")]
    NameNotMoved(String),
    /// The highly available shape: the leader key was lost during the move, which stopped
    /// where it was.
    #[error(
        "this controller lost the leader key during the move and stopped acting; the leader settles it by what the shards show (run `valkey-dr cluster status`, then the command again at the leader); paused primaries resume by themselves"
    )]
    Deposed,
    /// The highly available shape: only the leader moves the primaries.
    #[error("this controller (site {site}) is not the leader; run the command on the controller of site {}", .leader.as_deref().unwrap_or("that leads (none is known: is etcd reachable?)"))]
    NotLeader {
        site: String,
        leader: Option<String>,
    },
    /// A failover moved some shards, not all: run it again (shards already moved stay).
    #[error("{} of {} shard(s) did not move, run it again: {}", .failed.len(), .of, .failed.join("; "))]
    Incomplete {
        of: usize,
        failed: Vec<String>,
        done: Box<ClusterFailover>,
    },
}

impl ClusterError {
    /// A move that ended unfinished with nothing lost, where asking again is the way on: refused
    /// before any shard moved for what the cluster mends by itself (a replica loading its sync,
    /// an in-region failover under way), aborted, rolled back, or (a failover) some shards moved
    /// and the rest left for the command again. Not a refusal that waits for the operator's word
    /// (`--confirm-down`). Sent as [`crate::control::Reply::Retryable`].
    pub fn retryable(&self) -> bool {
        match self {
            ClusterError::Refused(refusals) => !refusals
                .iter()
                .any(|r| matches!(r, MoveRefusal::PrimaryMayStillWrite { .. })),
            ClusterError::Aborted(_)
            | ClusterError::RolledBack { .. }
            | ClusterError::Incomplete { .. } => true,
            _ => false,
        }
    }
}

/// How long an old primary that answered stays paused when it does not follow its new primary:
/// long enough for an operator to stop it or make it a replica.
const UNFOLLOWED_PAUSE: Duration = Duration::from_secs(60);

/// Moves every shard's primary to `to_region` after the loss of the region holding them. A
/// primary that still answers is paused first and its target given `catchup_timeout_ms` to
/// catch up (nothing lost when it does); one that does not answer is taken from only on the
/// operator's word (`confirmed_down`) that it takes no writes ([`plan_failover`]). Each target
/// then takes its shard over with TAKEOVER, which needs no vote from the lost primaries. Not
/// all or nothing, unlike a switchover: the region is gone, so every shard that can move moves,
/// and a rerun completes the rest.
pub async fn cluster_failover(
    config: &Config,
    to_region: &str,
    confirmed_down: bool,
    reached: impl Fn(CutStep) + Sync,
) -> Result<ClusterFailover, ClusterError> {
    failover_with(
        &engine(config)?,
        config,
        to_region,
        confirmed_down,
        &reached,
    )
    .await
}

/// [`cluster_failover`] through `engine` (a controller's, with its connections).
pub(crate) async fn failover_with(
    engine: &ValkeyEngine,
    config: &Config,
    to_region: &str,
    confirmed_down: bool,
    mover: &impl Mover,
) -> Result<ClusterFailover, ClusterError> {
    let started = Instant::now();
    let topology = Topology::from_config(config);
    let to = topology
        .region_by_name(to_region)
        .ok_or_else(|| ClusterError::UnknownRegion(to_region.to_string()))?;
    let (_, discovered) = discover(engine, &topology, Some(to))
        .await
        .map_err(ClusterError::NoNodeAnswered)?;
    let moves =
        plan_failover(&topology, &discovered, to, confirmed_down).map_err(ClusterError::Refused)?;
    let answered: Vec<&Endpoint> = discovered
        .iter()
        .filter_map(|s| s.primary())
        .filter(|p| p.answered)
        .map(|p| &p.endpoint)
        .collect();
    let mut moving: Vec<Moving> = moves
        .iter()
        .map(|m| Moving {
            r#move: m,
            old_answered: answered.contains(&&m.from),
            frozen_at: None,
        })
        .collect();

    // Fence what answers: paused until it follows its new primary.
    let catchup = Duration::from_millis(config.controller.catchup_timeout_ms);
    let pause = catchup + HANDOVER_WITHIN * moves.len() as u32 + PAUSE_MARGIN;
    let fenced_until = Instant::now() + pause - PAUSE_MARGIN;
    let fenced: Vec<&Endpoint> = moving
        .iter()
        .filter(|m| m.old_answered)
        .map(|m| &m.r#move.from)
        .collect();
    if !mover.may_act() {
        return Err(ClusterError::Aborted(handover::NO_LONGER_LEADS.into()));
    }
    let paused = join_all(
        fenced
            .iter()
            .copied()
            .map(|old| engine.pause_writes_and_read(old, pause)),
    )
    .await;
    let mut not_paused = None;
    for (m, result) in moving.iter_mut().filter(|m| m.old_answered).zip(paused) {
        match result {
            Ok(info) => m.frozen_at = Some(info.offset),
            Err(e) => not_paused = Some(format!("cannot pause writes on {}: {e}", m.r#move.from)),
        }
    }
    // It answered a moment ago: unless the operator confirmed it down, it may still take
    // writes, so nothing moves.
    if let Some(reason) = not_paused.filter(|_| !confirmed_down) {
        join_all(fenced.iter().copied().map(|old| engine.unpause(old))).await;
        return Err(ClusterError::Aborted(reason));
    }
    mover.reached(CutStep::Paused);
    let targets: Vec<(&Endpoint, u64)> = moving
        .iter()
        .filter_map(|m| Some((&m.r#move.to, m.frozen_at?)))
        .collect();
    let behind = catch_up(engine, &targets, catchup).await;
    mover.reached(CutStep::CaughtUp);

    let handovers: Vec<Handover> = moving
        .iter()
        .map(|m| Handover {
            replica: &m.r#move.to,
            old: None,
            fenced_until: m.frozen_at.map(|_| fenced_until),
            // What it was chosen with, and what its paused primary froze at if it caught up.
            holds: offset_seen(&discovered, &m.r#move.to).max(
                m.frozen_at
                    .filter(|_| !behind.contains(&m.r#move.to.to_string()))
                    .unwrap_or(0),
            ),
        })
        .collect();
    let results = take_over_in_turn(
        engine,
        &handovers,
        &answering_nodes(&discovered),
        None,
        mover,
    )
    .await;
    if !mover.may_act() {
        return Err(ClusterError::Deposed);
    }
    // An old primary that answered follows by gossip: released once it does, else kept paused.
    // One whose shard did not move is still the primary: released at once.
    let old_follows = join_all(
        moving
            .iter()
            .zip(&results)
            .map(|(m, moved)| release_old_primary(engine, m, moved.is_ok())),
    )
    .await;
    let shards: Vec<FailedOverShard> = moving
        .iter()
        .zip(results)
        .zip(old_follows)
        .map(|((m, result), old_follows)| FailedOverShard {
            r#move: m.r#move.clone(),
            old_answered: m.old_answered,
            caught_up: m.frozen_at.is_some() && !behind.contains(&m.r#move.to.to_string()),
            old_follows,
            error: result.err(),
        })
        .collect();
    let failed: Vec<String> = shards
        .iter()
        .filter_map(|s| Some(format!("{}: {}", s.r#move.slots, s.error.as_ref()?)))
        .collect();
    let took_ms = started.elapsed().as_secs_f64() * 1000.0;
    let moved: Vec<ShardMove> = shards
        .iter()
        .filter(|s| s.error.is_none())
        .map(|s| s.r#move.clone())
        .collect();
    let automatic_failover =
        set_guards(engine, failover_guards(&topology, &discovered, &moved)).await;
    let done = ClusterFailover {
        to_region: to_region.to_string(),
        shards,
        took_ms,
        automatic_failover,
    };
    if failed.is_empty() {
        Ok(done)
    } else {
        Err(ClusterError::Incomplete {
            of: done.shards.len(),
            failed,
            done: Box::new(done),
        })
    }
}
