//! DNS for valkey-dr: the [`DnsProvider`] trait every backend implements, and the backends.
//!
//! - [`embedded`]: the authoritative server built into the controller (hickory-server).
//! - [`etcd`]: the records held in etcd, written by the leading controller, served by the
//!   embedded server of every controller.
//! - [`rfc2136`]: dynamic updates signed with TSIG to a server the team already runs (BIND,
//!   Knot, PowerDNS).
//!
//! A new backend is a new module implementing [`DnsProvider`]; the [`conformance`] battery is
//! the contract it must pass.

#[cfg(feature = "testing")]
pub mod conformance;
#[cfg(feature = "embedded")]
pub mod embedded;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "resolve")]
pub mod resolve;
#[cfg(feature = "rfc2136")]
pub mod rfc2136;
#[cfg(any(feature = "embedded", feature = "rfc2136"))]
pub mod wire;

use async_trait::async_trait;
use valkey_dr_core::{Change, RecordSet};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// A compare-and-swap precondition failed: the record is not what the change expected.
    #[error(
        "{name}: record changed under us (expected {expected}, found {found}); nothing was applied"
    )]
    Conflict {
        name: String,
        expected: String,
        found: String,
    },
    #[error("{name} is outside the zone {zone}")]
    OutOfZone { name: String, zone: String },
    #[error("DNS backend unavailable: {0}")]
    Unavailable(String),
    /// The backend refused the change as invalid (not a precondition): retrying cannot help.
    #[error("DNS backend refused the change: {0}")]
    Rejected(String),
    /// The write was refused because this controller no longer holds the right to make it (a
    /// deposed leader, or one whose lease ran out on its own clock).
    #[error("DNS write refused: {0}")]
    Fenced(String),
}

/// Checks one change's precondition: the record set it expects (None: that the name and type
/// are absent) against what `found` holds. Backends share it so that conflicts read the same.
pub fn check_expected(change: &Change, found: Option<&RecordSet>) -> Result<(), DnsError> {
    let expected = change.expected();
    if found == expected {
        return Ok(());
    }
    let show = |r: Option<&RecordSet>| r.map_or("nothing".to_string(), |r| r.to_string());
    Err(DnsError::Conflict {
        name: change.name().to_string(),
        expected: show(expected),
        found: show(found),
    })
}

/// The name and type a change applies to.
pub fn change_key(change: &Change) -> (&str, valkey_dr_core::RecordType) {
    match change {
        Change::Create { new } => (&new.name, new.rtype),
        Change::Update { old, .. } | Change::Delete { old } => (&old.name, old.rtype),
    }
}

/// A place where DNS records live. Every implementation must apply a batch of changes atomically
/// and refuse the whole batch when any change's expected old value does not match.
#[async_trait]
pub trait DnsProvider: Send + Sync {
    /// The record sets currently held for the given names (any type).
    async fn records(&self, names: &[String]) -> Result<Vec<RecordSet>, DnsError>;

    /// Applies all changes or none.
    async fn apply(&self, changes: &[Change]) -> Result<(), DnsError>;
}
