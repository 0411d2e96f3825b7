//! The changes that lead the DNS provider's records to a desired set: read what it holds for
//! those names, plan the difference under the ownership record ([`valkey_dr_core::plan`]). One
//! piece for the switchover's commit and the cluster's passes; and the ownership record as
//! published, for whatever recovers or checks the epoch.

use valkey_dr_core::records::{ManagedNames, our_ownership};
use valkey_dr_core::{Change, Ownership, RecordSet};
use valkey_dr_dns::DnsProvider;

/// Why no change set could be made.
#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    #[error("cannot read the records: {0}")]
    Read(String),
    /// A name is not ours to change (another owner, a foreign record, a newer epoch).
    #[error("{name}: {reason}")]
    Conflict { name: String, reason: String },
}

/// The changes that make `desired` hold on `dns`, reading only the names `desired` has.
pub async fn changes_toward(
    dns: &dyn DnsProvider,
    names: &ManagedNames,
    desired: &[RecordSet],
) -> Result<Vec<Change>, ChangesError> {
    let wanted: Vec<String> = desired.iter().map(|r| r.name.clone()).collect();
    let current = dns
        .records(&wanted)
        .await
        .map_err(|e| ChangesError::Read(e.to_string()))?;
    let plan = valkey_dr_core::plan::calculate(&current, desired, &names.ownership, &names.owner);
    if let Some((name, reason)) = plan.conflicts.into_iter().next() {
        return Err(ChangesError::Conflict { name, reason });
    }
    Ok(plan.changes)
}

/// Our ownership record as `dns` holds it: `None` when none is published (or not ours), an error
/// when it cannot be read — never a guess: an epoch recovered from an unreadable record would
/// start below the published one, and every later write of the name would be refused as stale.
pub async fn published_ownership(
    dns: &dyn DnsProvider,
    names: &ManagedNames,
) -> Result<Option<Ownership>, ChangesError> {
    let records = dns
        .records(std::slice::from_ref(&names.ownership))
        .await
        .map_err(|e| ChangesError::Read(e.to_string()))?;
    Ok(our_ownership(&records, names))
}
