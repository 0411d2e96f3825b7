//! Coordination between controllers in several failure domains, on etcd (not a home-made
//! consensus): one leader at a time, and every write the leader makes fenced by its token.
//!
//! The leader key is created in a transaction only when it does not exist, attached to a lease
//! of `ttl`; its create revision is the *fencing token*. Every write of the leader is a
//! transaction conditioned on the leader key still having that create revision, so a deposed
//! leader's write fails in etcd itself — a lock alone is not safe (a paused leader wakes up
//! believing it still leads). The leader also stops acting before its lease can expire, measured
//! on its own clock from when it *sent* its last successful renewal (Patroni's rule: a leader that
//! cannot renew demotes itself).

#[cfg(feature = "cluster")]
pub mod cluster;
pub mod keys;
mod kv;
mod lease;
mod members;
mod storage;
mod tls;
mod watch;

pub use kv::{Swap, Versioned};
pub use lease::{Claim, Fence, LeaderCell, Leadership, Term};
pub use storage::Storage;
pub use tls::EtcdTls;
pub use watch::Watch;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use etcd_client::Client;

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("etcd TLS: {0}")]
    Tls(String),
    #[error("etcd is unreachable or has no quorum: {0}")]
    Unavailable(String),
    #[error("no longer the leader: etcd refused a write fenced by token {token}")]
    Deposed { token: i64 },
    #[error("the leader lease expired")]
    Expired,
    #[error("{key} changed under us (expected revision {expected}, found {found})")]
    Conflict {
        key: String,
        expected: i64,
        found: i64,
    },
}

fn unavailable(e: etcd_client::Error) -> CoordError {
    CoordError::Unavailable(e.to_string())
}

/// A connection to etcd: one client per member, used in turn (`members.rs`). etcd-client
/// balances requests over all members, so with one member frozen or cut off a third of the
/// requests would hang until their timeout; here a request that fails moves on to the next
/// member, a read or renewal also hedges to it after a short silence, and the member that
/// answered last is asked first.
#[derive(Clone)]
pub struct Coordinator {
    clients: Arc<Vec<Client>>,
    preferred: Arc<AtomicUsize>,
    leader_key: String,
    prefix: String,
    site: String,
    ttl: Duration,
    timeout: Duration,
}

impl Coordinator {
    /// Connects to the etcd members at `endpoints`. Keys live under `prefix`; `site` names this
    /// controller (its failure domain); `ttl` is the leader lease (at least 2 s: etcd counts
    /// whole seconds).
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        site: &str,
        ttl: Duration,
    ) -> Result<Coordinator, CoordError> {
        Self::connect_with(endpoints, prefix, site, ttl, None).await
    }

    /// [`Coordinator::connect`] over TLS (`https://` endpoints) when `tls` is given.
    pub async fn connect_with(
        endpoints: &[String],
        prefix: &str,
        site: &str,
        ttl: Duration,
        tls: Option<&EtcdTls>,
    ) -> Result<Coordinator, CoordError> {
        // Per member and request: three members answer within one act window (2/3 TTL).
        let timeout = (ttl / 6).max(Duration::from_millis(200));
        // A member that lost its leader refuses at once instead of hanging.
        let options = EtcdTls::options(tls)
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_require_leader(true);
        let mut clients = Vec::new();
        for endpoint in endpoints {
            // Connections are made lazily: a member down now is simply skipped later.
            clients.push(
                Client::connect([endpoint], Some(options.clone()))
                    .await
                    .map_err(unavailable)?,
            );
        }
        if clients.is_empty() {
            return Err(CoordError::Unavailable("no etcd endpoint given".into()));
        }
        let prefix = prefix.trim_end_matches('/').to_string();
        Ok(Coordinator {
            clients: Arc::new(clients),
            preferred: Arc::new(AtomicUsize::new(0)),
            leader_key: format!("{prefix}/{}", keys::LEADER),
            prefix,
            site: site.to_string(),
            ttl: ttl.max(Duration::from_secs(2)),
            timeout,
        })
    }

    pub fn site(&self) -> &str {
        &self.site
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{}", self.prefix, name)
    }

    /// The lease TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}
