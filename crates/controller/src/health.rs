//! Failure detection with hysteresis: when a node counts as down.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use valkey_dr_core::{NodeId, NodeObservation};

/// Probe rounds a node must fail in a row, besides failing for `down_after`, to count as down:
/// one slow round (a stalled controller, a timeout that fired late) is never enough.
pub const MIN_FAILED_ROUNDS: u32 = 3;

/// A gap this much longer than the clock watch's tick means the controller itself stalled (VM
/// pause, CPU starvation, SIGSTOP): probes that timed out meanwhile say nothing about the nodes.
pub const STALL_THRESHOLD: Duration = Duration::from_millis(500);

/// Failure detection. A node is *down* only after failing [`MIN_FAILED_ROUNDS`] probe rounds in a
/// row spanning `down_after`; one good probe clears it (hysteresis against blips). Time spent
/// stalled does not count: failing clocks restart when the controller resumes.
#[derive(Default)]
pub struct Health {
    failing: HashMap<NodeId, Failing>,
    reported_down: BTreeSet<NodeId>,
    /// When the controller last resumed from a stall.
    resumed_at: Option<Instant>,
}

#[derive(Clone, Copy)]
struct Failing {
    since: Instant,
    rounds: u32,
}

impl Health {
    /// Records one round of probes sent at `probed_at`; returns the nodes that are down at `now`.
    pub fn update(
        &mut self,
        observations: &[NodeObservation],
        probed_at: Instant,
        now: Instant,
        down_after: Duration,
    ) -> BTreeSet<NodeId> {
        for o in observations {
            // Only silence counts: a node that refuses us (password, certificate) or answers with
            // an error (LOADING, BUSY, MASTERDOWN) is alive.
            if o.failure().is_some_and(|kind| kind.no_answer()) {
                self.note_failure(o.node, probed_at);
            } else {
                self.failing.remove(&o.node);
                self.reported_down.remove(&o.node);
            }
        }
        self.down(now, down_after)
    }

    /// The nodes down at `now`.
    pub fn down(&self, now: Instant, down_after: Duration) -> BTreeSet<NodeId> {
        self.failing
            .iter()
            .filter(|(_, f)| {
                f.rounds >= MIN_FAILED_ROUNDS
                    && now.saturating_duration_since(f.since) >= down_after
            })
            .map(|(n, _)| *n)
            .collect()
    }

    /// One failed probe of `node` sent at `probed_at` (a pass or the writer watch).
    pub fn note_failure(&mut self, node: NodeId, probed_at: Instant) {
        let probed_at = self.resumed_at.map_or(probed_at, |r| probed_at.max(r));
        let failing = self.failing.entry(node).or_insert(Failing {
            since: probed_at,
            rounds: 0,
        });
        failing.rounds += 1;
    }

    /// The controller resumes from a stall at `now`: every failing clock starts again.
    pub fn stalled(&mut self, now: Instant) {
        self.resumed_at = Some(now);
        for f in self.failing.values_mut() {
            *f = Failing {
                since: now,
                rounds: 0,
            };
        }
    }

    pub fn any_failing(&self) -> bool {
        !self.failing.is_empty()
    }

    pub fn forget(&mut self, node: NodeId) {
        self.failing.remove(&node);
    }

    pub fn failing_for(&self, node: NodeId, now: Instant) -> Option<Duration> {
        self.failing
            .get(&node)
            .map(|f| now.saturating_duration_since(f.since))
    }

    /// True the first time a node is seen down (to report it once).
    pub(crate) fn newly_down(&mut self, node: NodeId) -> bool {
        self.reported_down.insert(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use valkey_dr_core::observation::{Failure, FailureKind};

    fn unreachable(node: usize) -> NodeObservation {
        NodeObservation {
            node: NodeId(node),
            state: Err(Failure::new(
                FailureKind::Unreachable,
                "connect failed: timed out",
            )),
            keys: None,
            heartbeat_ms: None,
            epoch_mark: None,
        }
    }

    #[test]
    fn one_late_round_spanning_down_after_is_not_down() {
        let down_after = Duration::from_millis(1500);
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut health = Health::default();
        // A probe sent at t0 whose timeout fired only after a 3 s stall.
        assert!(
            health
                .update(&[unreachable(0)], t0, ms(3000), down_after)
                .is_empty()
        );
        // Two more failed rounds: down only now, with three rounds spanning down_after.
        assert!(
            health
                .update(&[unreachable(0)], ms(3100), ms(3200), down_after)
                .is_empty()
        );
        assert_eq!(
            health.update(&[unreachable(0)], ms(3300), ms(3400), down_after),
            BTreeSet::from([NodeId(0)])
        );
    }

    #[test]
    fn a_stall_restarts_every_failing_clock() {
        let down_after = Duration::from_millis(1500);
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut health = Health::default();
        for i in 0..3 {
            health.update(&[unreachable(0)], ms(i * 100), ms(i * 100 + 50), down_after);
        }
        health.stalled(ms(1000));
        // Rounds sent before the stall ended count from its end.
        for i in 0..5 {
            let down = health.update(
                &[unreachable(0)],
                ms(900 + i * 100),
                ms(1000 + i * 100),
                down_after,
            );
            assert!(down.is_empty(), "round {i}");
        }
        assert_eq!(
            health.down(ms(2600), down_after),
            BTreeSet::from([NodeId(0)])
        );
    }

    #[test]
    fn error_replies_and_refusals_are_alive() {
        let down_after = Duration::from_millis(0);
        let t0 = Instant::now();
        let mut health = Health::default();
        let answered = |kind: FailureKind| NodeObservation {
            state: Err(Failure::new(kind, "answered")),
            ..unreachable(0)
        };
        for reason in [FailureKind::Unusable, FailureKind::Refused] {
            for _ in 0..5 {
                assert!(
                    health
                        .update(&[answered(reason)], t0, t0, down_after)
                        .is_empty(),
                    "{reason:?}"
                );
            }
        }
    }
}
