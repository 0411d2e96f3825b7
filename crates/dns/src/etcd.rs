//! DNS records held in etcd: the leading controller changes them, every controller serves them
//! from its own embedded zone, so the global name resolves through any surviving site.
//!
//! A change is one etcd transaction that holds only if this controller still holds the leader key
//! (its fencing token) and the records are still at the revision of this controller's copy: each
//! change's own compare-and-swap is checked against that copy, and the copy against etcd, in one
//! round trip. A stale copy makes the transaction fail as a conflict and is read again. A
//! controller that cannot reach etcd keeps serving the last records it read and never invents a
//! change.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;
use valkey_dr_coord::{CoordError, Coordinator, LeaderCell};
use valkey_dr_core::{Change, RecordSet};

use crate::embedded::Zone;
use crate::{DnsError, DnsProvider};

/// The etcd key of the record sets (under the deployment's prefix).
const RECORDS_KEY: &str = valkey_dr_coord::keys::RECORDS;

pub struct EtcdRecords {
    coord: Coordinator,
    leader: Arc<LeaderCell>,
    /// This controller's copy, which its DNS server answers from.
    zone: Arc<Zone>,
    /// The revision the zone was last loaded from or written at (0: none yet).
    served_revision: AtomicI64,
    /// Serializes copying from etcd and writing to it, so that the zone and its revision always
    /// match.
    updating: tokio::sync::Mutex<()>,
}

fn coord_error(e: CoordError) -> DnsError {
    match e {
        CoordError::Unavailable(reason) | CoordError::Tls(reason) => {
            DnsError::Unavailable(format!("etcd: {reason}"))
        }
        e @ (CoordError::Deposed { .. } | CoordError::Expired) => DnsError::Fenced(e.to_string()),
        CoordError::Conflict { key, .. } => DnsError::Conflict {
            name: key,
            expected: "the records as read".into(),
            found: "a newer write".into(),
        },
    }
}

impl EtcdRecords {
    pub fn new(coord: Coordinator, leader: Arc<LeaderCell>, zone: Arc<Zone>) -> EtcdRecords {
        EtcdRecords {
            coord,
            leader,
            zone,
            served_revision: AtomicI64::new(0),
            updating: tokio::sync::Mutex::new(()),
        }
    }

    /// What etcd holds, with its revision.
    async fn read(&self) -> Result<(Vec<RecordSet>, i64), DnsError> {
        let read = self
            .coord
            .get_versioned(RECORDS_KEY)
            .await
            .map_err(coord_error)?;
        let sets = match &read.value {
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| {
                DnsError::Unavailable(format!("the records in etcd are unreadable: {e}"))
            })?,
            None => Vec::new(),
        };
        Ok((sets, read.revision))
    }

    /// Loads the records from etcd into the local zone when they changed. On error the zone keeps
    /// answering with what it last loaded.
    pub async fn sync(&self) -> Result<bool, DnsError> {
        let _updating = self.updating.lock().await;
        self.sync_locked().await
    }

    async fn sync_locked(&self) -> Result<bool, DnsError> {
        let (sets, revision) = self.read().await?;
        // The first copy is loaded even when etcd holds no records yet (revision 0).
        if revision == self.served_revision.load(Ordering::SeqCst) && self.zone.is_loaded() {
            return Ok(false);
        }
        self.served_revision.store(revision, Ordering::SeqCst);
        Ok(self.zone.replace_all(sets))
    }
}

#[async_trait]
impl DnsProvider for EtcdRecords {
    /// The records of this controller's copy (what it serves); changes are checked against etcd.
    async fn records(&self, names: &[String]) -> Result<Vec<RecordSet>, DnsError> {
        self.zone.records(names).await
    }

    async fn apply(&self, changes: &[Change]) -> Result<(), DnsError> {
        let fence = self
            .leader
            .fence()
            .ok_or_else(|| DnsError::Fenced("this controller is not the leader".into()))?;
        let _updating = self.updating.lock().await;
        if !self.zone.is_loaded() {
            self.sync_locked().await?;
        }
        // The zone's own rules (preconditions, CNAME exclusivity, zone membership) on a copy.
        let scratch = Zone::new(self.zone.origin());
        scratch.replace_all(self.zone.snapshot());
        scratch.apply_changes(changes)?;
        let next = scratch.snapshot();
        let bytes = serde_json::to_vec(&next).expect("record sets serialize");
        let revision = self.served_revision.load(Ordering::SeqCst);
        match self
            .coord
            .swap_fenced(fence, RECORDS_KEY, Some(revision), &bytes)
            .await
        {
            Ok(written) => {
                self.served_revision.store(written, Ordering::SeqCst);
                self.zone.replace_all(next);
                Ok(())
            }
            Err(error) => {
                // Our copy was behind: read it again, so the next pass plans from etcd's records.
                if matches!(error, CoordError::Conflict { .. }) {
                    let _ = self.sync_locked().await;
                }
                Err(coord_error(error))
            }
        }
    }
}
