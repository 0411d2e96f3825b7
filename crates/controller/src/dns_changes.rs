//! The changes that lead the DNS provider's records to a desired set: read what it holds for
//! those names, plan the difference under the ownership record ([`valkey_dr_core::plan`]). One
//! piece for the switchover's commit and the cluster's passes.

use valkey_dr_core::records::ManagedNames;
use valkey_dr_core::{Change, RecordSet};
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
