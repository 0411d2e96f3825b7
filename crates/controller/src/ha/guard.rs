//! The region guard: a data region's controller pauses its region's writer while it has lost
//! contact with etcd, so that an isolated region stops taking writes before the leader may move
//! the writer elsewhere.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use valkey_dr_core::NodeId;

use super::{GuardView, Presence, guard_target};
use crate::Controller;

/// How the region guard sees this site's contact with etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Contact {
    /// etcd answered a renewal within `fence_after_ms`.
    Held,
    /// The lease still holds, but etcd has been silent for `fence_after_ms`: pause the region's
    /// writer now, briefly (re-issued while it lasts), so that an isolated region stops taking
    /// writes early, and a blip (an etcd election) costs a short pause only.
    Silent,
    /// The lease may have expired: the leader may move the writer out of the region.
    Lapsed,
}

/// This site's contact with etcd at `now`: held while etcd answered a renewal within
/// `fence_after`, silent while only the lease still holds, lapsed once it may not.
pub(super) fn contact(presence: &Presence, fence_after: Duration, now: Instant) -> Contact {
    match (presence.until, presence.answered) {
        (Some(until), Some(answered))
            if now < until && now.saturating_duration_since(answered) < fence_after =>
        {
            Contact::Held
        }
        (Some(until), _) if now < until => Contact::Silent,
        _ => Contact::Lapsed,
    }
}

/// How long the guard's pause lasts while etcd is only silent: re-issued every tick, it ends
/// soon after contact returns.
const SILENT_PAUSE: Duration = Duration::from_millis(300);

impl Controller {
    /// In a data region: pauses the region's writer while this site's presence has lapsed, so
    /// that clients inside an isolated region stop getting writes acknowledged before the leader
    /// may promote elsewhere. The pause is re-issued every 100 ms and expires by itself (never
    /// unpaused here: that could cut short a switchover's own pause).
    ///
    /// Once contact is back the pause goes on until a state read since then says what the paused
    /// node is: still the epoch's writer → lifted; replaced meanwhile → paused until it is a
    /// replica (the leader demotes it), so that it takes no write that the heal would discard.
    pub async fn guard_region(self: Arc<Self>) {
        let Some(ha) = self.ha() else { return };
        let Some(region) = self
            .topology
            .regions
            .iter()
            .position(|r| r.name == ha.site())
        else {
            // A witness holds no data: nothing to guard, for as long as the controller runs (an
            // essential task that ends means a failure, see `Running::task_ended`).
            return std::future::pending().await;
        };
        let every = Duration::from_millis(100);
        let mut fenced: Option<NodeId> = None;
        let mut also_fenced = std::collections::BTreeSet::new();
        loop {
            tokio::time::sleep(every).await;
            if !ha.presence.borrow().tried {
                continue;
            }
            let now = Instant::now();
            let writer = self.epoch().map(|e| e.primary);
            let local_writer = writer.filter(|w| self.topology.node(*w).region.0 == region);
            let contact = ha.contact(now);
            let present = contact == Contact::Held;
            // Once the lease may lapse, the pause must outlive a stall of this controller.
            let pause = match contact {
                Contact::Silent => SILENT_PAUSE,
                Contact::Held | Contact::Lapsed => ha.coord.ttl() / 2,
            };
            let synced = ha.synced_since_present();
            // Only a node replaced while we were cut off needs its role read.
            let fenced_is_replica = match fenced {
                Some(node) if present && synced && writer != Some(node) => {
                    let endpoint = &self.topology.node(node).control_endpoint;
                    Some(
                        self.local_engine
                            .replication(endpoint)
                            .await
                            .is_ok_and(|info| !info.is_primary()),
                    )
                }
                _ => None,
            };
            let keep = guard_target(GuardView {
                present,
                synced_since_present: synced,
                writer,
                local_writer,
                fenced,
                fenced_is_replica,
            });
            match (keep, fenced) {
                (Some(node), _) => {
                    let endpoint = &self.topology.node(node).control_endpoint;
                    let paused = self.local_engine.pause_writes(endpoint, pause).await;
                    if fenced.is_none() {
                        ha.fencing.send_replace(true);
                        self.events.emit(
                            crate::events::EventKind::SelfFenced,
                            json!({ "site": ha.site(), "writer": self.topology.node_name(node), "paused": paused.is_ok(), "lease_lapsed": contact == Contact::Lapsed }),
                        );
                    }
                    fenced = Some(node);
                }
                (None, Some(node)) => {
                    ha.fencing.send_replace(false);
                    self.events.emit(
                        crate::events::EventKind::SelfFenceLifted,
                        json!({ "site": ha.site(), "node": self.topology.node_name(node), "still_writer": writer == Some(node) }),
                    );
                    fenced = None;
                }
                (None, None) => {}
            }
            // Cut off, this site cannot know the epoch (a switchover into the region may have
            // committed a moment ago, or this controller started without etcd): every node of
            // the region that answers as a master is paused, not only the writer it remembers.
            if !present {
                self.pause_local_masters(region, keep, pause, &mut also_fenced)
                    .await;
            } else {
                also_fenced.clear();
            }
        }
    }

    /// Pauses every node of `region` (but `skip`, paused already) that answers as a master,
    /// reporting each once per lapse.
    async fn pause_local_masters(
        &self,
        region: usize,
        skip: Option<NodeId>,
        pause: Duration,
        reported: &mut std::collections::BTreeSet<NodeId>,
    ) {
        let Some(ha) = self.ha() else { return };
        for node in &self.topology.regions[region].nodes {
            if Some(*node) == skip {
                continue;
            }
            let endpoint = &self.topology.node(*node).control_endpoint;
            let master = self
                .local_engine
                .replication(endpoint)
                .await
                .is_ok_and(|info| info.is_primary());
            if !master {
                continue;
            }
            let paused = self.local_engine.pause_writes(endpoint, pause).await;
            if reported.insert(*node) {
                self.events.emit(
                    crate::events::EventKind::SelfFenced,
                    json!({ "site": ha.site(), "writer": self.topology.node_name(*node), "paused": paused.is_ok(), "reason": "a master of this region while the site is cut off" }),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_fences_once_etcd_is_silent_for_fence_after_not_only_when_the_lease_lapses() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // The last answered renewal was sent at t0; the lease counts until t0 + 2 s (⅔ TTL).
        let renewed = Presence {
            until: Some(ms(2000)),
            since: Some(t0),
            answered: Some(t0),
            tried: true,
        };
        let fence_after = Duration::from_millis(600);
        #[rustfmt::skip]
        let cases = [
            ("just renewed", renewed, ms(100), Contact::Held),
            ("two renewals missed, under fence_after", renewed, ms(599), Contact::Held),
            ("etcd silent for fence_after: fence, briefly", renewed, ms(600), Contact::Silent),
            ("still silent, the lease still counts", renewed, ms(1999), Contact::Silent),
            ("the lease may have lapsed", renewed, ms(2000), Contact::Lapsed),
            ("the key expired in etcd", Presence { until: None, ..renewed }, ms(100), Contact::Lapsed),
            ("never held", Presence::default(), t0, Contact::Lapsed),
        ];
        for (case, presence, now, expected) in cases {
            assert_eq!(contact(&presence, fence_after, now), expected, "{case}");
        }
    }
}
