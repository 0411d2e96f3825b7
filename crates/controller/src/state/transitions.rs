//! The named changes of the durable state: every write goes through one of these, so that what
//! can happen to the epoch, the intent and the lineage is listed in one place.

use valkey_dr_coord::Swap;
use valkey_dr_core::EpochRecord;
use valkey_dr_core::NodeId;
use valkey_dr_core::observation::History;
use valkey_dr_core::self_fence::WriteQuorum;

use super::{Intent, State, StateError, StateStore};

impl StateStore {
    /// Changes a recorded state in place (nothing is recorded yet: no change).
    async fn amend(&self, change: impl FnOnce(&mut State)) -> Result<(), StateError> {
        self.update(|s| {
            let mut next = s.cloned()?;
            change(&mut next);
            Some(next)
        })
        .await
        .map(|_| ())
    }

    /// A writer adopted without a promotion (at a first start, from a mark on the nodes, or by an
    /// operator's `adopt`): its epoch and history; an intent is settled by it. `settle_loss`
    /// clears a reported data loss (the operator decided what the history is).
    pub async fn adopt_epoch(
        &self,
        epoch: EpochRecord,
        history: Option<History>,
        settle_loss: bool,
    ) -> Result<(), StateError> {
        self.update(|now| {
            let mut next = now.cloned().unwrap_or_else(|| State::new(epoch));
            next.epoch = epoch;
            next.intent = None;
            next.writer_history = history;
            if settle_loss {
                next.data_loss = None;
            }
            Some(next)
        })
        .await
        .map(|_| ())
    }

    /// A promotion is about to happen (the epoch before it stays in force until it commits).
    pub async fn record_intent(&self, intent: Intent) -> Result<(), StateError> {
        self.amend(|next| {
            next.intent = Some(intent);
        })
        .await
    }

    /// A promotion happened: the new epoch, its writer's history (the lineage the next failover
    /// checks) and the anti-flapping block, in one write that settles the intent — with `also`
    /// (the records that publish the new writer, in etcd) in the same transaction.
    /// `release` names an old primary whose clients are still to be closed (a switchover's).
    pub async fn commit_epoch(
        &self,
        epoch: EpochRecord,
        history: History,
        block_until_ms: Option<u64>,
        release: Option<NodeId>,
        also: &[Swap<'_>],
    ) -> Result<(), StateError> {
        self.update_with(
            |s| {
                let mut next = s.cloned().unwrap_or_else(|| State::new(epoch));
                next.epoch = epoch;
                next.intent = None;
                next.writer_history = Some(history);
                next.release_pending = release;
                next.persist_pending = release;
                // The new writer was promoted with no quorum: not fenced until one is set.
                next.writer_quorum = None;
                if block_until_ms.is_some() {
                    next.failovers_blocked_until_ms = block_until_ms;
                }
                Some(next)
            },
            also,
        )
        .await
        .map(|_| ())
    }

    /// A promotion that did not happen (rolled back, or nothing to do): the old epoch stands.
    pub async fn clear_intent(&self) -> Result<(), StateError> {
        self.amend(|next| {
            next.intent = None;
        })
        .await
    }

    /// The writer took a new replication id (a restart, a new backlog) on its history.
    pub async fn record_writer_history(&self, history: History) -> Result<(), StateError> {
        self.amend(|next| {
            next.writer_history = Some(history);
        })
        .await
    }

    /// The write quorum in force on `writer` (its self-fence), if `writer` is still the epoch's.
    pub async fn record_write_quorum(
        &self,
        writer: NodeId,
        quorum: Option<WriteQuorum>,
    ) -> Result<(), StateError> {
        self.amend(|next| {
            if next.epoch.primary == writer {
                next.writer_quorum = quorum;
            }
        })
        .await
    }

    /// The writer lost its history and nobody holds it: its current history becomes the lineage,
    /// and the loss is kept for every site's status until an operator acknowledges it.
    pub async fn record_loss(
        &self,
        history: History,
        loss: serde_json::Value,
    ) -> Result<(), StateError> {
        self.amend(|next| {
            next.writer_history = Some(history);
            next.data_loss = Some(loss);
        })
        .await
    }

    /// The old primary's clients were closed (or it is the writer again): nothing to release;
    /// `persisted` when its role is in its config file too.
    pub async fn release_done(&self, node: NodeId, persisted: bool) -> Result<(), StateError> {
        self.amend(|next| {
            if next.release_pending == Some(node) {
                next.release_pending = None;
            }
            if persisted && next.persist_pending == Some(node) {
                next.persist_pending = None;
            }
        })
        .await
    }

    /// The old primary's role is in its config file (or it is the writer again, whose file is
    /// never rewritten): nothing to persist.
    pub async fn persist_done(&self, node: NodeId) -> Result<(), StateError> {
        self.amend(|next| {
            if next.persist_pending == Some(node) {
                next.persist_pending = None;
            }
        })
        .await
    }

    /// An operator's `ack`: automatic failovers are allowed again and a reported loss is
    /// settled. Returns whether a block was in force at `now_ms`.
    pub async fn acknowledge(&self, now_ms: u64) -> Result<bool, StateError> {
        let mut was_blocked = false;
        self.update(|s| {
            let mut next = s.cloned()?;
            was_blocked = next
                .failovers_blocked_until_ms
                .take()
                .is_some_and(|until| now_ms < until);
            next.data_loss = None;
            Some(next)
        })
        .await?;
        Ok(was_blocked)
    }
}
