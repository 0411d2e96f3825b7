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

pub mod cluster;

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, PutOptions, Txn, TxnOp};

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("etcd is unreachable or has no quorum: {0}")]
    Unavailable(String),
    #[error("no longer the leader: etcd refused a write fenced by token {token}")]
    Deposed { token: i64 },
    #[error("the leader lease expired")]
    Expired,
}

fn unavailable(e: etcd_client::Error) -> CoordError {
    CoordError::Unavailable(e.to_string())
}

/// This controller's claim to lead: the lease that keeps the leader key alive, the fencing token,
/// and until when it may act on its own clock.
#[derive(Debug)]
pub struct Leadership {
    lease: i64,
    /// The leader key's create revision.
    pub token: i64,
    act_until: Instant,
}

impl Leadership {
    /// True while this controller may still act as the leader: its lease cannot have expired in
    /// etcd yet, whatever etcd's clock says.
    pub fn may_act(&self, now: Instant) -> bool {
        now < self.act_until
    }

    pub fn act_until(&self) -> Instant {
        self.act_until
    }

    /// A leadership with the given token and deadline, as a deposed leader whose clock lies would
    /// believe it has (for tests of the fencing).
    pub fn for_test(token: i64, act_until: Instant) -> Leadership {
        Leadership {
            lease: 0,
            token,
            act_until,
        }
    }
}

#[derive(Clone)]
pub struct Coordinator {
    client: Client,
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
        let timeout = (ttl / 3).max(Duration::from_millis(300));
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(unavailable)?;
        let prefix = prefix.trim_end_matches('/').to_string();
        Ok(Coordinator {
            client,
            leader_key: format!("{prefix}/leader"),
            prefix,
            site: site.to_string(),
            ttl: ttl.max(Duration::from_secs(2)),
            timeout,
        })
    }

    pub fn site(&self) -> &str {
        &self.site
    }

    /// How long a renewal keeps the right to act: two thirds of the TTL, so the leader stops
    /// acting a third of the TTL before etcd can expire its key (clock drift and delays).
    fn act_window(&self) -> Duration {
        self.ttl * 2 / 3
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{}", self.prefix, name)
    }

    /// Tries once to become the leader. `Ok(Leadership)` when this controller now holds the key;
    /// otherwise the site that holds it.
    pub async fn try_lead(&self) -> Result<Result<Leadership, String>, CoordError> {
        let mut client = self.client.clone();
        let sent = Instant::now();
        let lease = client
            .lease_grant(self.ttl.as_secs() as i64, None)
            .await
            .map_err(unavailable)?
            .id();
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.leader_key.as_str(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(
                self.leader_key.as_str(),
                self.site.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(self.leader_key.as_str(), None)]);
        let response = match client.txn(txn).await {
            Ok(r) => r,
            Err(e) => {
                let _ = client.lease_revoke(lease).await;
                return Err(unavailable(e));
            }
        };
        if response.succeeded() {
            let token = response.header().map_or(0, |h| h.revision());
            return Ok(Ok(Leadership {
                lease,
                token,
                act_until: sent + self.act_window(),
            }));
        }
        let _ = client.lease_revoke(lease).await;
        let holder = response
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(get) => get
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => None,
            })
            .unwrap_or_default();
        Ok(Err(holder))
    }

    /// Renews the lease once. On success the leadership may act for another window from the time
    /// the renewal was sent; on failure it keeps its old deadline, which passes by itself.
    pub async fn renew(&self, leadership: &mut Leadership) -> Result<(), CoordError> {
        let mut client = self.client.clone();
        let sent = Instant::now();
        let renewal = async {
            let (mut keeper, mut stream) = client
                .lease_keep_alive(leadership.lease)
                .await
                .map_err(unavailable)?;
            keeper.keep_alive().await.map_err(unavailable)?;
            match stream.message().await.map_err(unavailable)? {
                Some(reply) if reply.ttl() > 0 => Ok(()),
                _ => Err(CoordError::Expired),
            }
        };
        match tokio::time::timeout(self.timeout, renewal).await {
            Ok(Ok(())) => {
                leadership.act_until = sent + self.act_window();
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(CoordError::Unavailable("renewal timed out".into())),
        }
    }

    /// Gives up leadership at once (the key goes with the lease).
    pub async fn resign(&self, leadership: Leadership) -> Result<(), CoordError> {
        let mut client = self.client.clone();
        client
            .lease_revoke(leadership.lease)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// Writes `name = value` only if `leadership` still holds the leader key: etcd checks the
    /// fencing token, so a deposed or paused leader's write fails.
    pub async fn put_fenced(
        &self,
        leadership: &Leadership,
        name: &str,
        value: &[u8],
    ) -> Result<(), CoordError> {
        if !leadership.may_act(Instant::now()) {
            return Err(CoordError::Expired);
        }
        let mut client = self.client.clone();
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.leader_key.as_str(),
                CompareOp::Equal,
                leadership.token,
            )])
            .and_then([TxnOp::put(self.key(name), value.to_vec(), None)]);
        let response = client.txn(txn).await.map_err(unavailable)?;
        if response.succeeded() {
            Ok(())
        } else {
            Err(CoordError::Deposed {
                token: leadership.token,
            })
        }
    }

    /// The value stored under `name` (a quorum read).
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, CoordError> {
        let mut client = self.client.clone();
        let response = client
            .get(self.key(name), None)
            .await
            .map_err(unavailable)?;
        Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// The site that holds the leader key now, if any.
    pub async fn leader(&self) -> Result<Option<String>, CoordError> {
        let mut client = self.client.clone();
        let response = client
            .get(self.leader_key.as_str(), None)
            .await
            .map_err(unavailable)?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }
}
