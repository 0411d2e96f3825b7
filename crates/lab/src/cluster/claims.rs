//! What each primary claims by its own account: the slots it serves, under which epoch.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

/// A primary's claim, by its own account (`myself` in its `CLUSTER NODES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub node: SocketAddr,
    /// Its config epoch: of two claims on a slot, the cluster keeps the higher.
    pub epoch: u64,
    pub slots: Vec<(u16, u16)>,
}

/// The claim of each node at `addrs` that answers as a primary.
pub async fn primary_claims(addrs: &[SocketAddr]) -> Vec<Claim> {
    // All at once, each within 300 ms: a stopped node takes the connection and never answers.
    let listed = futures::future::join_all(addrs.iter().map(|addr| {
        tokio::time::timeout(
            Duration::from_millis(300),
            command(*addr, &["CLUSTER", "NODES"]),
        )
    }))
    .await;
    let mut claims = Vec::new();
    for (addr, listed) in addrs.iter().zip(listed) {
        let Ok(Ok(redis::Value::BulkString(listed))) = listed else {
            continue;
        };
        let listed = String::from_utf8_lossy(&listed).into_owned();
        let Some(me) = listed.lines().find(|l| l.contains("myself,master")) else {
            continue;
        };
        let fields: Vec<&str> = me.split_whitespace().collect();
        let slots = fields
            .iter()
            .skip(8)
            .filter(|f| !f.starts_with('['))
            .filter_map(|f| {
                let (a, b) = f.split_once('-').unwrap_or((f, f));
                Some((a.parse().ok()?, b.parse().ok()?))
            })
            .collect();
        claims.push(Claim {
            node: *addr,
            epoch: fields.get(6).and_then(|e| e.parse().ok()).unwrap_or(0),
            slots,
        });
    }
    claims
}

/// The slot ranges each node at `addrs` that answers as a primary serves by its own account.
pub async fn served_by_primaries(addrs: &[SocketAddr]) -> Vec<(SocketAddr, Vec<(u16, u16)>)> {
    primary_claims(addrs)
        .await
        .into_iter()
        .map(|c| (c.node, c.slots))
        .collect()
}

/// Two answering primaries that each claim a slot of the same range, if any: `(a, b)`.
pub async fn two_primaries_for_a_slot(addrs: &[SocketAddr]) -> Option<(Claim, Claim)> {
    let claims = primary_claims(addrs).await;
    for (i, a) in claims.iter().enumerate() {
        for b in &claims[i + 1..] {
            let overlap = a
                .slots
                .iter()
                .any(|ra| b.slots.iter().any(|rb| !(ra.1 < rb.0 || rb.1 < ra.0)));
            if overlap {
                return Some((a.clone(), b.clone()));
            }
        }
    }
    None
}
