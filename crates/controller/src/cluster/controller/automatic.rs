//! The automatic region failover: each pass's verdict on the writer region
//! ([`region_verdict`]), the failover it calls for, and `ack`.

use super::*;

impl ClusterController {
    /// Whether an automatic failover should move the primaries now ([`region_verdict`]), with
    /// the silences measured up to this pass; each new verdict is reported once.
    pub(super) fn judge_region(
        &self,
        state: &ClusterState,
        shards: &[Shard],
        observations: &[NodeObservation],
    ) -> Option<RegionId> {
        let now = Instant::now();
        let silent_since = {
            let mut silent = self.silent_since.lock().unwrap_or_else(|e| e.into_inner());
            for o in observations {
                let node = &self.topology.node(o.node);
                let heard =
                    valkey_dr_core::cluster::heard_by_a_replica(observations, &node.endpoint);
                if node.region != state.epoch.writer_region || o.info().is_some() || heard {
                    silent.remove(&o.node);
                } else {
                    silent.entry(o.node).or_insert(now);
                }
            }
            silent.clone()
        };
        let controller = &self.config.controller;
        let blocked = state
            .failovers_blocked_until_ms
            .is_some_and(|until| crate::clock::now_ms() < until);
        if controller.cross_region_failover != FailoverPolicy::Auto {
            return None;
        }
        match state.moving {
            // An automatic failover that left a shard where it was (its target slow to answer)
            // carries on: the primaries it takes from were known fenced when it started, and one
            // that answers again is paused and caught up first.
            Some(m) if m.automatic => return Some(m.to),
            Some(_) => return None,
            None if blocked => return None,
            None => {}
        }
        let certain_after = WriteQuorum {
            replicas: 1,
            max_lag_s: controller.writer_quorum_max_lag_s,
        }
        .certain_after();
        let verdict = region_verdict(
            &self.topology,
            &state.epoch,
            shards,
            observations,
            // Silent since the controller first saw it so, or longer by its replicas' account,
            // less the 1 s between the primary's pings (`repl-ping-replica-period`): the last
            // one they heard may have come that long before the silence began.
            |n| {
                let ours = silent_since.get(&n).map(|t| now.duration_since(*t));
                let theirs = valkey_dr_core::cluster::unheard_for(
                    observations,
                    &self.topology.node(n).endpoint,
                )
                .map(|d| d.saturating_sub(Duration::from_secs(1)));
                ours.max(theirs.filter(|_| ours.is_some()))
            },
            |n| state.armed.contains(&n),
            certain_after,
        );
        let (kind, to, why) = match &verdict {
            RegionVerdict::NotLost => (None, None, String::new()),
            RegionVerdict::Withheld(why) => (Some(EventKind::FailoverWithheld), None, why.clone()),
            RegionVerdict::FailOver(to) => {
                (Some(EventKind::FailoverNeeded), Some(*to), String::new())
            }
        };
        // Withheld reasons carry the silence so far: one report per kind of verdict.
        let label = kind.map(|k| k.to_string());
        let mut reported = self
            .reported_verdict
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *reported != label {
            if let Some(kind) = kind {
                self.events.emit(
                    kind,
                    json!({
                        "writer_region": self.region_name(state.epoch.writer_region),
                        "to_region": to.map(|r| self.region_name(r)),
                        "reason": why,
                    }),
                );
            }
            *reported = label;
        }
        to
    }

    /// The automatic region failover a pass called for: every primary of the lost region is
    /// surely fenced (its self-fence armed, silent past its certainty), which stands for the
    /// operator's `--confirm-down`. Further automatic failovers then wait `failover_block_ms`
    /// or `valkey-dr ack`.
    pub(super) async fn fail_over_automatically(self: &Arc<Self>, region: &str) {
        self.events.emit(
            EventKind::FailoverStarted,
            json!({ "to_region": region, "automatic": true }),
        );
        match self.fail_over(region, true, true).await {
            Ok(done) => {
                let _acting = self.acting.lock().await;
                if let Some(state) = self.store.get() {
                    let until = crate::clock::now_ms() + self.config.controller.failover_block_ms;
                    let _ = self
                        .record(ClusterState {
                            failovers_blocked_until_ms: Some(until),
                            ..state
                        })
                        .await;
                }
                self.events.emit(
                    EventKind::FailoverCompleted,
                    json!({ "to_region": region, "automatic": true, "took_ms": done.took_ms }),
                );
            }
            Err(e) => self.events.emit(
                EventKind::FailoverFailed,
                json!({ "to_region": region, "automatic": true, "error": e.to_string() }),
            ),
        }
    }

    /// `valkey-dr ack`: automatic failovers are allowed again and a loss report is cleared;
    /// whether failovers were blocked.
    pub async fn ack(&self) -> Result<bool, ClusterError> {
        let _acting = self.acting.lock().await;
        self.not_leader()?;
        let Some(state) = self.store.get() else {
            return Ok(false);
        };
        let was_blocked = state
            .failovers_blocked_until_ms
            .is_some_and(|until| crate::clock::now_ms() < until);
        self.record(ClusterState {
            failovers_blocked_until_ms: None,
            data_loss: None,
            ..state
        })
        .await?;
        Ok(was_blocked)
    }
}
