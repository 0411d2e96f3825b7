//! One cut between primaries and replicas of a cluster's shards: the writes paused, the
//! replicas caught up, each shard taken over in turn under an epoch no other node holds, and
//! the waits around it. What [`super::cluster_switchover`] and [`super::cluster_failover`] share.

use std::time::{Duration, Instant};

use futures::future::join_all;
use valkey_dr_core::cluster::may_take_over;
use valkey_dr_core::{Endpoint, Engine, EngineError, ReplicationInfo};
use valkey_dr_valkey::ValkeyEngine;
use valkey_dr_valkey::cluster::EpochBump;

use crate::poll;

/// The moments of an all-shard switchover (where the crash tests stop it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutStep {
    /// Writes are paused on every primary; nothing else changed.
    Paused,
    /// Every target holds what its primary acknowledged; no shard handed over yet.
    CaughtUp,
    /// This many shards handed over (the rest not yet); no client released.
    HandedOver(usize),
}

impl std::fmt::Display for CutStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CutStep::Paused => f.write_str("paused"),
            CutStep::CaughtUp => f.write_str("caught-up"),
            CutStep::HandedOver(n) => write!(f, "handed-over-{n}"),
        }
    }
}

/// Who runs a move, as its steps see it: told of each step reached (events, the crash tests'
/// hook), and asked just before each pause and each takeover whether it may still act — a
/// controller that lost the leader key may not: another leads and may act on the same shards.
pub trait Mover: Sync {
    fn reached(&self, step: CutStep);
    fn may_act(&self) -> bool {
        true
    }
}

/// A command run by the operator on the nodes alone: a closure told of each step.
impl<F: Fn(CutStep) + Sync> Mover for F {
    fn reached(&self, step: CutStep) {
        self(step)
    }
}

/// A move's second cut (a hand-back): its steps are not reported, but it acts only while the
/// mover may.
pub(super) struct Quiet<'a, M: Mover>(pub(super) &'a M);

impl<M: Mover> Mover for Quiet<'_, M> {
    fn reached(&self, _: CutStep) {}
    fn may_act(&self) -> bool {
        self.0.may_act()
    }
}

/// Why a step was not taken by a mover that may no longer act.
pub(super) const NO_LONGER_LEADS: &str = "this controller no longer leads: not done (the leader settles the move by what the shards show)";

/// How long a shard may take to hand over once asked.
pub(super) const HANDOVER_WITHIN: Duration = Duration::from_secs(6);
/// How long an old primary is given to follow its successor by itself (gossip carries the
/// takeover within milliseconds) before it is told to.
const SELF_FOLLOW_WITHIN: Duration = Duration::from_millis(500);
/// How often an old primary that refused to follow (it still held the slots) is asked again.
const RETRY_FOLLOW_EVERY: Duration = Duration::from_millis(250);
/// The pause outlasts the catch-up and the handovers by this much, and runs out by itself if
/// the operator's command dies.
pub(super) const PAUSE_MARGIN: Duration = Duration::from_secs(2);

/// How long a bystander asked to raise the cluster's epoch may take to hear of the replica's.
const BYSTANDER_HEARS_WITHIN: Duration = Duration::from_secs(2);

/// One cut over `(primary, replica)` pairs: writes paused on every primary, each with the offset
/// it froze at; every replica caught up with it; then every replica takes its shard over with
/// `CLUSTER FAILOVER TAKEOVER`, one after another. TAKEOVER needs no vote — concurrent
/// coordinated failovers compete for the primaries' one vote per epoch, and all but one time
/// out — and is safe here because every old primary is paused and every replica holds all it
/// acknowledged.
/// The pauses stay for the caller to lift, except when this stops before any handover
/// (`Err`): then every pause is lifted and nothing changed. Returns one result per pair.
pub(super) async fn cut_over(
    engine: &ValkeyEngine,
    pairs: &[(&Endpoint, &Endpoint)],
    bystanders: &[&Endpoint],
    catchup: Duration,
    pause: Duration,
    mover: &impl Mover,
) -> Result<Vec<Result<(), String>>, String> {
    // The first replica's claim may need gossip to carry an epoch between nodes (when its own is
    // the highest, [`claim_next_epoch`]): hundreds of milliseconds, made before the writes stop.
    // The later replicas hear of each takeover at once (a takeover tells every node). A claim
    // that fails here (a replica still loading its sync answers nothing) is made again in the
    // pause, once the replica caught up, as if none had been tried.
    let mut claimed_before = None;
    if let Some((_, first)) = pairs.first() {
        match claim_next_epoch(engine, first, bystanders, None).await {
            Ok(epoch) => claimed_before = Some((*first, epoch)),
            Err(e) => {
                tracing::info!(replica = %first, error = %e, "epoch not claimed before the pause; claiming it in the pause")
            }
        }
    }
    if !mover.may_act() {
        return Err(NO_LONGER_LEADS.to_string());
    }
    let started = Instant::now();
    // Lifted only while this mover may act: a deposed leader's lift could end the pause of the
    // leader's own move on the same primaries, whose writes its targets would then miss.
    let lift = async || {
        if mover.may_act() {
            join_all(pairs.iter().map(|(primary, _)| engine.unpause(primary))).await;
        }
    };
    let paused = join_all(
        pairs
            .iter()
            .map(|(primary, _)| engine.pause_writes_and_read(primary, pause)),
    )
    .await;
    let mut frozen = Vec::new();
    for ((primary, _), result) in pairs.iter().zip(paused) {
        match result {
            Ok(info) => frozen.push(info.offset),
            Err(e) => {
                lift().await;
                return Err(format!("cannot pause writes on {primary}: {e}"));
            }
        }
    }
    mover.reached(CutStep::Paused);
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "cut: paused"
    );
    let targets: Vec<(&Endpoint, u64)> = pairs
        .iter()
        .zip(frozen)
        .map(|((_, replica), offset)| (*replica, offset))
        .collect();
    let behind = catch_up(engine, &targets, catchup).await;
    if !behind.is_empty() {
        lift().await;
        return Err(format!(
            "not caught up within {} ms: {}",
            catchup.as_millis(),
            behind.join(", ")
        ));
    }
    mover.reached(CutStep::CaughtUp);
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "cut: caught up"
    );
    // The pause must still hold for a while when the shards change hands.
    let left = pause.saturating_sub(started.elapsed());
    if left < PAUSE_MARGIN {
        lift().await;
        return Err(format!(
            "only {} ms of the write pause left; retry",
            left.as_millis()
        ));
    }
    let handovers: Vec<Handover> = pairs
        .iter()
        .zip(&targets)
        .map(|((primary, replica), (_, frozen))| Handover {
            replica,
            old: Some(primary),
            fenced_until: Some(started + pause - PAUSE_MARGIN),
            holds: *frozen,
        })
        .collect();
    Ok(take_over_in_turn(engine, &handovers, bystanders, claimed_before, mover).await)
}

/// Waits until every `(replica, offset)` replica holds its offset, or `within` passed; returns
/// the replicas still behind (none: all caught up).
pub(super) async fn catch_up(
    engine: &ValkeyEngine,
    targets: &[(&Endpoint, u64)],
    within: Duration,
) -> Vec<String> {
    let mut behind = Vec::new();
    poll::until(within, Duration::from_millis(1), async || {
        let seen = join_all(
            targets
                .iter()
                .map(|(replica, _)| engine.replication(replica)),
        )
        .await;
        behind = targets
            .iter()
            .zip(&seen)
            .filter(|((_, needed), seen)| !seen.as_ref().is_ok_and(|i| i.offset >= *needed))
            .map(|((replica, _), _)| replica.to_string())
            .collect();
        behind.is_empty().then_some(())
    })
    .await;
    behind
}

/// One shard changing hands: `replica` takes it over; `old`, when given, must follow it.
#[derive(Clone, Copy)]
pub(super) struct Handover<'a> {
    pub(super) replica: &'a Endpoint,
    pub(super) old: Option<&'a Endpoint>,
    /// Until when the old primary's write pause holds, less [`PAUSE_MARGIN`]: a takeover later
    /// than that would race the writes it takes again once the pause runs out (this process
    /// stalled, or a shard before took long), which its replica never received.
    pub(super) fenced_until: Option<Instant>,
    /// The replication offset the replica held when it was chosen, which it must still hold
    /// when asked to take over ([`may_take_over`]).
    pub(super) holds: u64,
}

/// Each replica takes its shard over (TAKEOVER), one after another, and is waited for
/// ([`hand_over`]); then every old primary given must follow its successor. One result per
/// handover, in order. `bystanders` are other nodes that answer, asked to raise the cluster's
/// epoch when a replica cannot ([`claim_next_epoch`]).
///
/// One after another: each takeover claims the cluster's next epoch as its replica knows it, so
/// the next replica must have heard of the previous one's claim first — two claiming the same
/// epoch collide, and the claim of one is refused (seen as a hand-back that never happened,
/// right after concurrent takeovers). It hears while the shard before it changes hands, and the
/// old primaries are waited for together at the end: across a 7 ms link each of those waits was
/// a round trip or a gossip hop more inside every shard's turn, while the writes stood paused.
/// `claimed_before`: an epoch this command already made a replica's own and no other node's.
pub(super) async fn take_over_in_turn(
    engine: &ValkeyEngine,
    handovers: &[Handover<'_>],
    bystanders: &[&Endpoint],
    claimed_before: Option<(&Endpoint, u64)>,
    mover: &impl Mover,
) -> Vec<Result<(), String>> {
    let mut results = Vec::new();
    let mut highest = 0;
    // Whether the coming replica has heard of `highest`, when it was asked already.
    let mut heard = None;
    for (i, handover) in handovers.iter().enumerate() {
        let replica = handover.replica;
        let heard_now = match heard.take() {
            Some(heard) => heard,
            None if highest == 0 => Ok(()),
            None => knows_epoch(engine, replica, highest, HANDOVER_WITHIN).await,
        };
        let mine = claimed_before
            .filter(|(claimant, _)| *claimant == replica)
            .map(|(_, epoch)| epoch);
        // Its state is read with its claim, one round trip for both, and then checked just
        // before its takeover. A claim that needs a bystander takes longer: then it is read
        // again.
        let claimed = match heard_now {
            Ok(()) => {
                let (bumped, seen) = futures::join!(
                    engine.cluster_bump_epoch(replica),
                    engine.replication(replica)
                );
                match bumped.ok().and_then(|b| claimed_alone(b, mine)) {
                    Some(claimed) => Ok((claimed, Some(seen))),
                    None => claim_next_epoch(engine, replica, bystanders, mine)
                        .await
                        .map(|claimed| (claimed, None)),
                }
            }
            Err(e) => Err(e),
        };
        let taken = match claimed {
            Ok((claimed, seen)) => {
                // The next replica must hear of this claim even if this takeover then fails:
                // the two would share the epoch.
                highest = highest.max(claimed);
                let next = handovers.get(i + 1).map(|h| h.replica);
                let (taken, next_heard) =
                    futures::join!(hand_over(engine, handover, seen, mover), async {
                        match next {
                            Some(next) => {
                                Some(knows_epoch(engine, next, highest, HANDOVER_WITHIN).await)
                            }
                            None => None,
                        }
                    });
                heard = next_heard;
                taken
            }
            Err(e) => Err(e),
        };
        if let Ok(epoch) = taken
            && epoch > highest
        {
            // Raised past its claim by its takeover: the next replica must hear of that.
            highest = epoch;
            heard = None;
        }
        results.push(taken.map(|_| ()));
        mover.reached(CutStep::HandedOver(results.len()));
        tracing::debug!(shard = results.len(), "cut: handed over");
    }
    let followed =
        join_all(
            handovers
                .iter()
                .zip(&results)
                .map(async |(h, taken)| match (h.old, taken) {
                    (Some(old), Ok(())) => {
                        follow_successor(engine, old, h.replica, HANDOVER_WITHIN).await
                    }
                    _ => true,
                }),
        )
        .await;
    tracing::debug!("cut: old primaries follow");
    results
        .into_iter()
        .zip(handovers.iter().zip(followed))
        .map(|(taken, (h, followed))| match (taken, h.old) {
            (Ok(()), Some(old)) if !followed => Err(format!(
                "{} took over, but {old} did not follow it within {} s",
                h.replica,
                HANDOVER_WITHIN.as_secs()
            )),
            (taken, _) => taken,
        })
        .collect()
}

/// Makes an epoch no other node holds `replica`'s own config epoch, before it takes its shard
/// over. TAKEOVER claims the slots under the node's own config epoch, raised only when it is not
/// already the highest the node knows. A replica's own epoch is the one it had as a primary —
/// as a cluster forms, every node is an empty primary first, and two can end up with the same
/// epoch once one of them is a replica (replicas are not checked for it). Such a replica, its
/// epoch the highest, claims the slots under its primary's epoch: the rest of the cluster keeps
/// the old owner (an equal epoch wins no slot), and the old primary, back from the dead, takes
/// them back when its node id is the smaller (seen on 8.0.1, in the region-failover test).
/// When the replica cannot raise its own, a bystander raises the cluster's, which the replica
/// hears of, and then it can. `mine`: an epoch this command claimed for `replica` before; still
/// its own and the highest it knows, it is still no other node's.
async fn claim_next_epoch(
    engine: &ValkeyEngine,
    replica: &Endpoint,
    bystanders: &[&Endpoint],
    mine: Option<u64>,
) -> Result<u64, String> {
    let bump = |node: &Endpoint| {
        let node = node.clone();
        async move {
            engine
                .cluster_bump_epoch(&node)
                .await
                .map_err(|e| format!("{node} refused CLUSTER BUMPEPOCH: {e}"))
        }
    };
    let own = match bump(replica).await? {
        bumped if let Some(claimed) = claimed_alone(bumped, mine) => return Ok(claimed),
        EpochBump::Bumped(own) | EpochBump::Still(own) => own,
    };
    let mut passed_over = Vec::new();
    for bystander in bystanders.iter().filter(|b| **b != replica) {
        // Raised from below the replica's, it would be one more node on the same epoch. Gossip
        // carries the epoch within a second; a bystander that has not heard is passed over.
        if let Err(e) = knows_epoch(engine, bystander, own, BYSTANDER_HEARS_WITHIN).await {
            passed_over.push(e);
            continue;
        }
        match bump(bystander).await {
            Ok(EpochBump::Bumped(next)) => {
                knows_epoch(engine, replica, next, HANDOVER_WITHIN).await?;
                return match bump(replica).await? {
                    EpochBump::Bumped(claimed) => Ok(claimed),
                    EpochBump::Still(own) => Err(format!(
                        "{replica} kept config epoch {own} after hearing of {next}"
                    )),
                };
            }
            Ok(EpochBump::Still(theirs)) => {
                passed_over.push(format!("{bystander} holds epoch {theirs} too"))
            }
            Err(e) => passed_over.push(e),
        }
    }
    Err(format!(
        "{replica}'s config epoch {own} may be another node's too, and no other node raised the \
         cluster's ({})",
        passed_over.join("; ")
    ))
}

/// The epoch the replica's own `CLUSTER BUMPEPOCH` made its own and no other node's, if that
/// alone did: it raised its epoch, or kept `mine` (claimed by this command before).
fn claimed_alone(bump: EpochBump, mine: Option<u64>) -> Option<u64> {
    match bump {
        EpochBump::Bumped(claimed) => Some(claimed),
        EpochBump::Still(own) => (mine == Some(own)).then_some(own),
    }
}

/// Waits until `node` is a replica whose link to its primary is up with no full sync running,
/// or `within` passed.
pub(super) async fn linked(engine: &ValkeyEngine, node: &Endpoint, within: Duration) {
    poll::until(within, Duration::from_millis(5), async || {
        let synced = engine.replication(node).await.is_ok_and(|i| {
            matches!(
                i.role,
                valkey_dr_core::Role::Replica {
                    link_up: true,
                    sync_in_progress: false,
                    ..
                }
            )
        });
        synced.then_some(())
    })
    .await;
}

/// Waits until `node` knows the cluster's epoch to be at least `epoch`, at most `within`.
async fn knows_epoch(
    engine: &ValkeyEngine,
    node: &Endpoint,
    epoch: u64,
    within: Duration,
) -> Result<(), String> {
    poll::until(within, Duration::from_millis(1), async || {
        engine
            .cluster_epoch(node)
            .await
            .is_ok_and(|known| known >= epoch)
            .then_some(())
    })
    .await
    .ok_or_else(|| {
        format!(
            "{node} did not hear of the cluster's epoch {epoch} within {} ms",
            within.as_millis()
        )
    })
}

/// True once `node` says it is a replica (it learnt of its shard's new primary), false when
/// `within` passed first.
pub(super) async fn follows(engine: &ValkeyEngine, node: &Endpoint, within: Duration) -> bool {
    poll::until(within, Duration::from_millis(2), async || {
        engine
            .replication(node)
            .await
            .is_ok_and(|i| !i.is_primary())
            .then_some(())
    })
    .await
    .is_some()
}

/// `CLUSTER REPLICATE` on `old` to the node whose id is `new_id`; whether it then follows
/// within a second.
async fn make_follow(engine: &ValkeyEngine, old: &Endpoint, new_id: &str) -> bool {
    engine.cluster_replicate(old, new_id).await.is_ok()
        && follows(engine, old, Duration::from_secs(1)).await
}

/// Waits until `old` follows `new`, which took its shard over, at most `within`; true once it
/// does. Gossip carries a takeover within milliseconds, but where an old primary counts the
/// new one in another shard (Valkey 8.0.1 can hold a stale shard id for a node: see
/// `repair_shard_ids` in the lab), the takeover reads to it as its slots migrating away, and it
/// stays "an empty primary" (its log says so). It is then told to follow, as an operator would
/// — at once rather than after the whole wait, which had let the other primaries' write pauses
/// run out and rolled the move back. A refusal (it has not heard of the takeover yet and still
/// holds the slots) is asked again until `within` passed.
pub(super) async fn follow_successor(
    engine: &ValkeyEngine,
    old: &Endpoint,
    new: &Endpoint,
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    let left = || deadline.saturating_duration_since(Instant::now());
    if follows(engine, old, SELF_FOLLOW_WITHIN.min(left())).await {
        return true;
    }
    let Ok(new_id) = engine.cluster_myid(new).await else {
        return false;
    };
    while !left().is_zero() {
        if make_follow(engine, old, &new_id).await
            || follows(engine, old, RETRY_FOLLOW_EVERY.min(left())).await
        {
            return true;
        }
    }
    false
}

/// Asks the replica to take its shard over (TAKEOVER) — unless the old primary's pause is about
/// to run out — and waits until it is the primary, at most [`HANDOVER_WITHIN`]; returns its
/// epoch then.
async fn hand_over(
    engine: &ValkeyEngine,
    handover: &Handover<'_>,
    seen: Option<Result<ReplicationInfo, EngineError>>,
    mover: &impl Mover,
) -> Result<u64, String> {
    let Handover {
        replica,
        old,
        fenced_until,
        holds,
    } = *handover;
    if fenced_until.is_some_and(|until| Instant::now() >= until) {
        return Err(format!(
            "the write pause on its primary ends in under {} s: not taken over (a rerun pauses it \
             again)",
            PAUSE_MARGIN.as_secs()
        ));
    }
    // Caught up a moment ago, but a node restarted empty since (its process died; nothing is
    // persisted) is still the shard's replica by its nodes.conf, and TAKEOVER asks it nothing:
    // it would lead the shard empty, and its old primary, following it, would drop all it holds.
    let seen = match seen {
        Some(seen) => seen,
        None => engine.replication(replica).await,
    }
    .map_err(|e| format!("{replica} did not answer before its takeover: {e}"))?;
    may_take_over(&seen, holds).map_err(|e| format!("{replica} {e}"))?;
    if !mover.may_act() {
        return Err(NO_LONGER_LEADS.to_string());
    }
    engine
        .cluster_takeover(replica)
        .await
        .map_err(|e| format!("{replica} refused CLUSTER FAILOVER: {e}"))?;
    let (primary, epoch) = futures::join!(
        poll::until(HANDOVER_WITHIN, Duration::from_millis(2), async || {
            engine
                .replication(replica)
                .await
                .is_ok_and(|i| i.is_primary())
                .then_some(())
        }),
        engine.cluster_epoch(replica)
    );
    if primary.is_none() {
        let from = old.map(|o| format!(" from {o}")).unwrap_or_default();
        return Err(format!(
            "{replica} did not take over{from} within {} s",
            HANDOVER_WITHIN.as_secs()
        ));
    }
    epoch.map_err(|e| e.to_string())
}
