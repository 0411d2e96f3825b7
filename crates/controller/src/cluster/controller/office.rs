//! The cluster controller as the leader campaign ([`crate::ha::campaign`]) and a move
//! ([`crate::cluster::Mover`]) see it. In the highly available shape — one controller per site
//! on etcd — the leader acts; the others follow the epoch and serve the records from etcd, and a
//! leader that lost its key stops its move at the next pause or takeover.

use super::*;
use crate::ha::{Ha, Office};

#[async_trait::async_trait]
impl Office for ClusterController {
    fn ha(&self) -> Option<&Ha> {
        self.ha.as_deref()
    }

    fn events(&self) -> &EventSink {
        &self.events
    }

    /// The writer region's site leaves the leader key to another site while one is present:
    /// losing that region then costs no leader election before the failover.
    async fn should_hand_over(&self, ha: &Ha) -> bool {
        let Some(state) = self.store.get() else {
            return false;
        };
        if self.region_name(state.epoch.writer_region) != ha.site() {
            return false;
        }
        ha.another_site_present().await
    }

    async fn reload_state(&self) -> Result<(), String> {
        self.store.reload().await.map_err(|e| e.to_string())
    }

    fn epoch_number(&self) -> Option<u64> {
        self.store.get().map(|s| s.epoch.epoch)
    }

    fn took_office(&self, _token: i64) {
        self.wake.notify_one();
    }

    async fn execute(self: Arc<Self>, request: Request) -> Reply {
        self.answer_here(request, None).await
    }

    fn idle(&self) -> Option<Box<dyn Send + '_>> {
        self.acting
            .try_lock()
            .ok()
            .map(|idle| Box::new(idle) as Box<dyn Send>)
    }
}

/// A move run by the controller: each step an event and the crash tests' hook; each pause and
/// takeover only while it may act (leads, in the highly available shape).
impl Mover for ClusterController {
    fn reached(&self, step: CutStep) {
        self.events
            .emit(EventKind::ClusterStep, json!({ "step": step.to_string() }));
        if let Some(hook) = &self.step_hook {
            hook(step);
        }
    }

    fn may_act(&self) -> bool {
        ClusterController::may_act(self)
    }
}
