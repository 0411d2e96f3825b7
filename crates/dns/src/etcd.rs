//! DNS records held in etcd: the leading controller changes them, every controller serves them
//! from its own embedded zone, so the global name resolves through any surviving site.
//!
//! A change is one etcd transaction that holds only if this controller still holds the leader key
//! (its fencing token) and the records are still at the revision of this controller's copy: each
//! change's own compare-and-swap is checked against that copy, and the copy against etcd, in one
//! round trip. A stale copy makes the transaction fail as a conflict and is read again. A
//! controller that cannot reach etcd never invents a change, and its copy answers only while
//! etcd answered it recently ([`Zone::awaiting_copy`]): past that, SERVFAIL sends resolvers to
//! another site, whose copy may know of a newer writer.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;
use valkey_dr_coord::{CoordError, Coordinator, LeaderCell, Swap, Versioned};
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

    /// This site's copy, which its DNS server answers from.
    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// What etcd holds, with its revision.
    async fn read(&self) -> Result<(Vec<RecordSet>, i64), DnsError> {
        let read = self
            .coord
            .get_versioned(RECORDS_KEY)
            .await
            .map_err(coord_error)?;
        Ok((decode(&read)?, read.revision))
    }

    /// Loads the records from etcd into the local zone when they changed. On error the zone keeps
    /// answering with what it last loaded.
    pub async fn sync(&self) -> Result<bool, DnsError> {
        let _updating = self.updating.lock().await;
        self.sync_locked().await
    }

    async fn sync_locked(&self) -> Result<bool, DnsError> {
        let (sets, revision) = self.read().await?;
        // A quorum read: the copy is current as of now.
        self.zone.confirm();
        // The first copy is loaded even when etcd holds no records yet (revision 0).
        if revision == self.served_revision.load(Ordering::SeqCst) && self.zone.is_loaded() {
            return Ok(false);
        }
        Ok(self.install(sets, revision))
    }

    /// Loads what a watch saw (the records at `seen.revision`) unless the zone already holds that
    /// revision or a later one: a watch event needs no read of its own.
    pub async fn load(&self, seen: &Versioned) -> Result<bool, DnsError> {
        let _updating = self.updating.lock().await;
        // A watch event is etcd answering, as a read is.
        self.zone.confirm();
        if seen.revision <= self.served_revision.load(Ordering::SeqCst) && self.zone.is_loaded() {
            return Ok(false);
        }
        Ok(self.install(decode(seen)?, seen.revision))
    }

    fn install(&self, sets: Vec<RecordSet>, revision: i64) -> bool {
        self.served_revision.store(revision, Ordering::SeqCst);
        self.zone.replace_all(sets)
    }
}

impl EtcdRecords {
    /// The records after `changes`, checked by the zone's rules on a copy, ready to be written
    /// (alone, or in one transaction with the new epoch: [`Staged::swap`]). Holds off every other
    /// copy and write until [`Staged::settle`].
    pub async fn stage(&self, changes: &[Change]) -> Result<Staged<'_>, DnsError> {
        let updating = self.updating.lock().await;
        if !self.zone.is_loaded() {
            self.sync_locked().await?;
        }
        let scratch = Zone::new(self.zone.origin());
        scratch.replace_all(self.zone.snapshot());
        scratch.apply_changes(changes)?;
        let next = scratch.snapshot();
        Ok(Staged {
            bytes: serde_json::to_vec(&next).expect("record sets serialize"),
            next,
            expected: self.served_revision.load(Ordering::SeqCst),
            records: self,
            _updating: updating,
        })
    }
}

/// Records staged for a fenced write ([`EtcdRecords::stage`]).
pub struct Staged<'a> {
    records: &'a EtcdRecords,
    _updating: tokio::sync::MutexGuard<'a, ()>,
    next: Vec<RecordSet>,
    bytes: Vec<u8>,
    /// The revision this copy was read at: the write holds only if etcd's is the same.
    expected: i64,
}

impl Staged<'_> {
    /// The write, compared with the revision this copy was read at.
    pub fn swap(&self) -> Swap<'_> {
        Swap {
            name: RECORDS_KEY,
            expected: Some(self.expected),
            value: &self.bytes,
        }
    }

    /// After the transaction: the zone serves the new records once they are in etcd; a conflict
    /// reads etcd again, so that the next pass plans from what it holds.
    pub async fn settle(self, written: Result<i64, CoordError>) -> Result<(), DnsError> {
        match written {
            Ok(revision) => {
                self.committed(revision);
                Ok(())
            }
            Err(error) => {
                if matches!(error, CoordError::Conflict { .. }) {
                    self.abandoned().await;
                }
                Err(coord_error(error))
            }
        }
    }

    /// The transaction committed at `revision`: the zone serves the staged records.
    pub fn committed(self, revision: i64) {
        self.records.zone.confirm();
        self.records.install(self.next, revision);
    }

    /// The transaction did not commit (or nobody knows): read etcd again, so that the zone and
    /// the next plan start from what it holds.
    pub async fn abandoned(self) {
        let _ = self.records.sync_locked().await;
    }
}

/// The record sets a stored value holds (none when the key is absent).
fn decode(read: &Versioned) -> Result<Vec<RecordSet>, DnsError> {
    match &read.value {
        Some(bytes) => serde_json::from_slice(bytes)
            .map_err(|e| DnsError::Unavailable(format!("the records in etcd are unreadable: {e}"))),
        None => Ok(Vec::new()),
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
        let staged = self.stage(changes).await?;
        let written = self.coord.swap_all_fenced(fence, &[staged.swap()]).await;
        staged.settle(written).await
    }
}
