//! The one durable write inside a switchover's pause: the new epoch and the records that lead
//! the name to the target, together.

use valkey_dr_core::observation::History;
use valkey_dr_core::{NodeId, NodeObservation};

use crate::Controller;

/// What [`Controller::publish_writer`] commits.
pub(super) struct Published {
    pub(super) epoch: valkey_dr_core::EpochRecord,
    pub(super) history: History,
    pub(super) block_until_ms: Option<u64>,
    pub(super) release: Option<NodeId>,
    pub(super) old: NodeId,
}

/// Why the name did not move with the epoch.
#[derive(Debug)]
pub(super) enum PublishError {
    /// Nothing was committed: the intent stays, and whoever acts next completes it.
    EpochNotRecorded(String),
    /// The epoch is committed; the records are not (the next pass publishes them).
    NameNotMoved(String),
}

impl Controller {
    /// The commit that moves the name: the new epoch (its writer's history, the block, the old
    /// primary to release) and the records that lead the name to the new writer. In the highly
    /// available shape they are one etcd transaction under the leader's fence — the name never
    /// leads to the target before its epoch is durable, and a deposed leader writes neither.
    /// With a state file, the epoch is written first, then the records. Returns how many records
    /// changed.
    pub(super) async fn publish_writer(
        &self,
        carried: &mut crate::pass::Carried,
        published: Published,
        observations: &[NodeObservation],
    ) -> Result<usize, PublishError> {
        let Published {
            epoch,
            history,
            block_until_ms,
            release,
            old,
        } = published;
        let (changes, mut not_moved) =
            match self.writer_record_changes(observations, old, &epoch).await {
                Ok(changes) => (changes, None),
                Err(reason) => (Vec::new(), Some(reason)),
            };
        let staged = match self.ha() {
            Some(ha) if !changes.is_empty() => match ha.records.stage(&changes).await {
                Ok(staged) => Some(staged),
                Err(e) => {
                    not_moved = Some(e.to_string());
                    None
                }
            },
            _ => None,
        };
        let committed = {
            let also: Vec<valkey_dr_coord::Swap<'_>> = staged.iter().map(|s| s.swap()).collect();
            self.commit_epoch(carried, epoch, history, block_until_ms, release, &also)
                .await
        };
        match (committed, staged) {
            (Err(e), staged) => {
                if let Some(staged) = staged {
                    staged.abandoned().await;
                }
                Err(PublishError::EpochNotRecorded(e.to_string()))
            }
            (Ok(()), Some(staged)) => {
                staged.committed(self.state.revision());
                Ok(changes.len())
            }
            (Ok(()), None) => match not_moved {
                Some(reason) => Err(PublishError::NameNotMoved(reason)),
                None if changes.is_empty() => Ok(0),
                None => self
                    .dns
                    .apply(&changes)
                    .await
                    .map(|()| changes.len())
                    .map_err(|e| PublishError::NameNotMoved(e.to_string())),
            },
        }
    }

    /// The changes that lead the name to `epoch`'s writer ([`records::after_promotion`]),
    /// against what the DNS provider holds; a name that is not ours is an error.
    async fn writer_record_changes(
        &self,
        observations: &[NodeObservation],
        old: NodeId,
        epoch: &valkey_dr_core::EpochRecord,
    ) -> Result<Vec<valkey_dr_core::Change>, String> {
        let desired = valkey_dr_core::records::after_promotion(
            &self.names,
            &self.topology,
            observations,
            old,
            epoch.primary,
            epoch,
        );
        crate::dns_changes::changes_toward(self.dns.as_ref(), &self.names, &desired)
            .await
            .map_err(|e| e.to_string())
    }
}
