//! The monitor: which answering node claims which slot as a primary, every 20 ms.

use super::*;

/// Samples, every 20 ms, whether two answering primaries claim a slot: under one config epoch
/// (a conflict), or one under a lower epoch than the other (a stale claim).
pub(super) struct Monitor {
    stop: Arc<AtomicBool>,
    conflicts: Arc<AtomicUsize>,
    stale: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    pub(super) fn start(addrs: Vec<SocketAddr>) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let conflicts = Arc::new(AtomicUsize::new(0));
        let stale = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (stop, conflicts, stale) = (stop.clone(), conflicts.clone(), stale.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    match cluster::two_primaries_for_a_slot(&addrs).await {
                        Some((a, b)) if a.epoch == b.epoch => {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(_) => {
                            stale.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {}
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Monitor {
            stop,
            conflicts,
            stale,
            task,
        }
    }

    /// (conflict samples, stale-claim samples)
    pub(super) async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (
            self.conflicts.load(Ordering::Relaxed),
            self.stale.load(Ordering::Relaxed),
        )
    }
}
