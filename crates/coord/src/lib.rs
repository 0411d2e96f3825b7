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
mod storage;
mod tls;
mod watch;

pub use storage::Storage;
pub use tls::EtcdTls;
pub use watch::Watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{
    AlarmAction, AlarmType, Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp,
};

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

/// One key of a fenced compare-and-swap ([`Coordinator::swap_all_fenced`]).
#[derive(Debug, Clone, Copy)]
pub struct Swap<'a> {
    pub name: &'a str,
    /// The revision `name` must still have (0: absent); `None`: written whatever it holds.
    pub expected: Option<i64>,
    pub value: &'a [u8],
}

/// What a fenced write needs: the leader key's create revision (the fencing token) and until when
/// the leader may act on its own clock. Copied out of a [`Claim`] for each write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub token: i64,
    pub act_until: Instant,
    /// Before this, a predecessor may still be acting on its own clock ([`Claim::acts_from`]):
    /// actions on nodes wait for it; fenced etcd writes need not (etcd compares the token).
    pub acts_from: Instant,
}

impl Fence {
    pub fn may_act(&self, now: Instant) -> bool {
        now < self.act_until
    }
}

/// The current leader fence of this controller, shared by everything that writes under it (the
/// state store, the DNS records, the node actions). Empty while another controller leads.
#[derive(Debug, Default)]
pub struct LeaderCell {
    fence: std::sync::Mutex<Option<Fence>>,
}

impl LeaderCell {
    /// The fence, only while it may still act on this controller's clock.
    pub fn fence(&self) -> Option<Fence> {
        let fence = *self.fence.lock().expect("leader cell lock");
        fence.filter(|f| f.may_act(Instant::now()))
    }

    pub fn is_leader(&self) -> bool {
        self.fence().is_some()
    }

    pub fn set(&self, fence: Option<Fence>) {
        *self.fence.lock().expect("leader cell lock") = fence;
    }
}

/// A key this controller keeps alive with a lease: the leader key, or its site's presence key.
/// `act_until` is when the claim stops counting on this controller's own clock.
#[derive(Debug)]
pub struct Claim {
    lease: i64,
    /// The key's create revision (for the leader key: the fencing token).
    pub token: i64,
    act_until: Instant,
    acts_from: Instant,
}

/// The claim on the leader key.
pub type Leadership = Claim;

impl Claim {
    /// True while the key cannot have expired in etcd yet, whatever etcd's clock says.
    pub fn may_act(&self, now: Instant) -> bool {
        now < self.act_until
    }

    pub fn act_until(&self) -> Instant {
        self.act_until
    }

    /// When this claim's predecessor has stopped acting, whatever it learned. A deposed leader
    /// stops when its own window ends, and a window only starts at a renewal sent before its key
    /// vanished — so one window after the key was taken, the old leader has stopped, even when
    /// etcd revoked its lease early and no renewal ever told it (etcd 3.4 revokes every lease
    /// when a frozen raft leader resumes). Chubby calls this the lock-delay.
    pub fn acts_from(&self) -> Instant {
        self.acts_from
    }

    pub fn fence(&self) -> Fence {
        Fence {
            token: self.token,
            act_until: self.act_until,
            acts_from: self.acts_from,
        }
    }

    /// A claim with the given token and deadline, as a deposed leader whose clock lies would
    /// believe it has (for tests of the fencing).
    #[cfg(feature = "testing")]
    pub fn for_test(token: i64, act_until: Instant) -> Claim {
        Claim {
            lease: 0,
            token,
            act_until,
            acts_from: Instant::now(),
        }
    }
}

/// How long an idempotent request waits for one member before the next is asked too: a member
/// with a raft leader answers within a few round trips of the link between sites.
const HEDGE_AFTER: Duration = Duration::from_millis(100);

/// A value read with the revision of its last change (0: absent), for compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Option<Vec<u8>>,
    pub revision: i64,
}

/// A connection to etcd: one client per member, used in turn. etcd-client balances requests
/// over all members, so with one member frozen or cut off a third of the requests would hang
/// until their timeout; here a request that fails moves on to the next member, and the member
/// that answered last is asked first.
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

    /// Runs `op` on the preferred member, then on the others until one answers (each within the
    /// request timeout). Only transport failures move on; an answer is final.
    async fn call<T, F, Fut>(&self, op: F) -> Result<T, CoordError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last = String::new();
        for step in 0..self.clients.len() {
            let i = (first + step) % self.clients.len();
            match tokio::time::timeout(self.timeout, op(self.clients[i].clone())).await {
                Ok(Ok(value)) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(value);
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "request timed out".into(),
            }
        }
        Err(CoordError::Unavailable(last))
    }

    /// [`Coordinator::call`] for requests that may safely run twice (lease renewals, reads):
    /// when the member asked has not answered within [`HEDGE_AFTER`], the next one is asked too,
    /// and the first answer wins. A member that has lost its raft leader (an election, a member
    /// cut off) holds a request until the timeout; asked one after another, three members cost
    /// three timeouts, which is longer than a region guard waits before it pauses its writer.
    async fn call_idempotent<T, F, Fut>(&self, op: F) -> Result<T, CoordError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        use futures::StreamExt;
        let members = self.clients.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let ask = |step: usize| {
            let i = (first + step) % members;
            let request = tokio::time::timeout(self.timeout, op(self.clients[i].clone()));
            async move { (i, request.await) }
        };
        let mut in_flight = futures::stream::FuturesUnordered::new();
        in_flight.push(ask(0));
        let mut asked = 1;
        let mut last = String::new();
        while !in_flight.is_empty() {
            let hedge = asked < members;
            tokio::select! {
                Some((i, answer)) = in_flight.next() => match answer {
                    Ok(Ok(value)) => {
                        self.preferred.store(i, Ordering::Relaxed);
                        return Ok(value);
                    }
                    failed => {
                        last = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "request timed out".into(),
                        };
                        // A refusal moves on at once.
                        if asked < members {
                            in_flight.push(ask(asked));
                            asked += 1;
                        }
                    }
                },
                () = tokio::time::sleep(HEDGE_AFTER), if hedge => {
                    in_flight.push(ask(asked));
                    asked += 1;
                }
            }
        }
        Err(CoordError::Unavailable(last))
    }

    /// How long a renewal keeps the right to act: two thirds of the TTL, so the leader stops
    /// acting a third of the TTL before etcd can expire its key (clock drift and delays).
    fn act_window(&self) -> Duration {
        self.ttl * 2 / 3
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{}", self.prefix, name)
    }

    async fn grant(&self) -> Result<i64, CoordError> {
        let ttl = self.ttl.as_secs() as i64;
        self.call(|mut c| async move { c.lease_grant(ttl, None).await })
            .await
            .map(|r| r.id())
    }

    async fn revoke(&self, lease: i64) -> Result<(), CoordError> {
        self.call(|mut c| async move { c.lease_revoke(lease).await })
            .await
            .map(|_| ())
    }

    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, CoordError> {
        self.call(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// Tries once to become the leader. `Ok(Leadership)` when this controller now holds the key;
    /// otherwise the site that holds it.
    pub async fn try_lead(&self) -> Result<Result<Leadership, String>, CoordError> {
        let sent = Instant::now();
        let lease = self.grant().await?;
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
        let response = match self.txn(txn).await {
            Ok(r) => r,
            Err(e) => {
                // The put may have landed before the answer was lost: the key goes with the lease.
                let _ = self.revoke(lease).await;
                return Err(e);
            }
        };
        if response.succeeded() {
            let token = response.header().map_or(0, |h| h.revision());
            return Ok(Ok(Leadership {
                lease,
                token,
                act_until: sent + self.act_window(),
                // Measured after the answer: the old key was gone before the txn ran.
                acts_from: Instant::now() + self.act_window(),
            }));
        }
        let _ = self.revoke(lease).await;
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

    /// Renews the lease once. On success the claim counts for another window from the time the
    /// renewal was sent; on failure it keeps its old deadline, which passes by itself.
    pub async fn renew(&self, claim: &mut Claim) -> Result<(), CoordError> {
        let sent = Instant::now();
        self.keep_alive(claim.lease).await?;
        claim.act_until = sent + self.act_window();
        Ok(())
    }

    /// Renews this site's presence and confirms, by a linearizable read, that its key is still
    /// there on this claim's lease: a keep-alive answer alone could come from a member that no
    /// longer leads (etcd 3.4 answers keep-alives there), and the key may be gone while the lease
    /// lives. `Expired` when it is gone — the region guard fences at once, since the leader may
    /// already read the region as released.
    pub async fn renew_presence(&self, claim: &mut Claim) -> Result<(), CoordError> {
        let sent = Instant::now();
        self.keep_alive(claim.lease).await?;
        let response = self.get_kv(self.key(&keys::site(&self.site)), None).await?;
        if response
            .kvs()
            .first()
            .is_none_or(|kv| kv.lease() != claim.lease)
        {
            return Err(CoordError::Expired);
        }
        claim.act_until = sent + self.act_window();
        Ok(())
    }

    /// Renews the leader's lease and confirms, by a linearizable read, that the leader key is
    /// still the one this claim created: a keep-alive answer alone could come from a member
    /// that has not yet learned it lost its own leadership. `Deposed` when the key is gone or
    /// another's — the caller stops acting at once.
    pub async fn renew_leadership(&self, leadership: &mut Leadership) -> Result<(), CoordError> {
        let sent = Instant::now();
        self.keep_alive(leadership.lease).await?;
        let response = self.get_kv(self.leader_key.clone(), None).await?;
        let ours = response
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == leadership.token);
        if !ours {
            return Err(CoordError::Deposed {
                token: leadership.token,
            });
        }
        leadership.act_until = sent + self.act_window();
        Ok(())
    }

    async fn keep_alive(&self, lease: i64) -> Result<(), CoordError> {
        let ttl = self
            .call_idempotent(|mut c| async move {
                // Opening the keep-alive stream sends one renewal and reads its answer.
                match c.lease_keep_alive(lease).await {
                    Ok(_) => Ok(1),
                    // The lease is gone (expired, or revoked: etcd 3.4 revokes every lease when a
                    // frozen raft leader resumes). etcd-client reports a zero TTL as this error.
                    Err(etcd_client::Error::LeaseKeepAliveError(message))
                        if message == "lease not found" =>
                    {
                        Ok(0)
                    }
                    Err(etcd_client::Error::GRpcStatus(status))
                        if status.code() == tonic::Code::NotFound =>
                    {
                        Ok(0)
                    }
                    Err(e) => Err(e),
                }
            })
            .await?;
        if ttl <= 0 {
            return Err(CoordError::Expired);
        }
        Ok(())
    }

    /// Gives up leadership at once (the key goes with the lease).
    pub async fn resign(&self, leadership: Claim) -> Result<(), CoordError> {
        self.revoke(leadership.lease).await
    }

    /// Writes `name = value` only if the fence's leader still holds the leader key: etcd checks
    /// the fencing token, so a deposed or paused leader's write fails.
    pub async fn put_fenced(
        &self,
        fence: Fence,
        name: &str,
        value: &[u8],
    ) -> Result<(), CoordError> {
        self.swap_fenced(fence, name, None, value).await.map(|_| ())
    }

    /// Compare-and-swap under the fence: writes `name = value` only if the leader key still has
    /// the fence's token and (with `expected`) `name` was last changed at that revision (0: absent).
    /// Returns the revision of the write.
    pub async fn swap_fenced(
        &self,
        fence: Fence,
        name: &str,
        expected: Option<i64>,
        value: &[u8],
    ) -> Result<i64, CoordError> {
        self.swap_all_fenced(
            fence,
            &[Swap {
                name,
                expected,
                value,
            }],
        )
        .await
    }

    /// [`Coordinator::swap_fenced`] for several keys in one transaction: every key is written or
    /// none is. A conflict names the first key whose revision moved.
    pub async fn swap_all_fenced(
        &self,
        fence: Fence,
        swaps: &[Swap<'_>],
    ) -> Result<i64, CoordError> {
        if !fence.may_act(Instant::now()) {
            return Err(CoordError::Expired);
        }
        let keys: Vec<String> = swaps.iter().map(|s| self.key(s.name)).collect();
        let mut when = vec![Compare::create_revision(
            self.leader_key.as_str(),
            CompareOp::Equal,
            fence.token,
        )];
        let mut puts = Vec::new();
        let mut reads = vec![TxnOp::get(self.leader_key.as_str(), None)];
        for (swap, key) in swaps.iter().zip(&keys) {
            if let Some(revision) = swap.expected {
                when.push(Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    revision,
                ));
            }
            puts.push(TxnOp::put(key.as_str(), swap.value.to_vec(), None));
            reads.push(TxnOp::get(key.as_str(), None));
        }
        let txn = Txn::new().when(when).and_then(puts).or_else(reads);
        let response = self.txn(txn).await?;
        if response.succeeded() {
            return Ok(response.header().map_or(0, |h| h.revision()));
        }
        // The failure branch read the leader key, then every key in order.
        let mut found = response.op_responses().into_iter().map(|op| match op {
            etcd_client::TxnOpResponse::Get(get) => get.kvs().first().cloned(),
            _ => None,
        });
        let leader_created = found.next().flatten().map_or(0, |kv| kv.create_revision());
        if leader_created != fence.token {
            return Err(CoordError::Deposed { token: fence.token });
        }
        let current = found.map(|kv| kv.map_or(0, |kv| kv.mod_revision()));
        let (swap, now) = swaps
            .iter()
            .zip(current)
            .find(|(swap, now)| swap.expected.is_some_and(|e| e != *now))
            .or_else(|| swaps.first().map(|s| (s, 0)))
            .ok_or(CoordError::Deposed { token: fence.token })?;
        Err(CoordError::Conflict {
            key: swap.name.to_string(),
            expected: swap.expected.unwrap_or_default(),
            found: now,
        })
    }

    async fn get_kv(
        &self,
        key: String,
        options: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, CoordError> {
        self.call_idempotent(|mut c| {
            let key = key.clone();
            let options = options.clone();
            async move { c.get(key, options).await }
        })
        .await
    }

    /// The value stored under `name` and the revision of its last change (a quorum read).
    pub async fn get_versioned(&self, name: &str) -> Result<Versioned, CoordError> {
        let response = self.get_kv(self.key(name), None).await?;
        Ok(match response.kvs().first() {
            Some(kv) => Versioned {
                value: Some(kv.value().to_vec()),
                revision: kv.mod_revision(),
            },
            None => Versioned {
                value: None,
                revision: 0,
            },
        })
    }

    /// The value stored under `name` (a quorum read).
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, CoordError> {
        Ok(self.get_versioned(name).await?.value)
    }

    /// Every key under `name/` (the part after it) with its value (a quorum read).
    pub async fn list(&self, name: &str) -> Result<Vec<(String, Vec<u8>)>, CoordError> {
        Ok(self
            .list_versioned(name)
            .await?
            .into_iter()
            .map(|(key, v)| (key, v.value.unwrap_or_default()))
            .collect())
    }

    /// [`Coordinator::list`] with each key's revision (of its last change).
    pub async fn list_versioned(&self, name: &str) -> Result<Vec<(String, Versioned)>, CoordError> {
        let prefix = format!("{}/", self.key(name));
        let response = self
            .get_kv(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await?;
        Ok(response
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                (
                    key.strip_prefix(&prefix).unwrap_or(&key).to_string(),
                    Versioned {
                        value: Some(kv.value().to_vec()),
                        revision: kv.mod_revision(),
                    },
                )
            })
            .collect())
    }

    /// etcd's storage as the member that answers reports it, with the cluster's active alarms.
    pub async fn storage(&self) -> Result<Storage, CoordError> {
        let status = self.call(|mut c| async move { c.status().await }).await?;
        let alarms = self
            .call(|mut c| async move { c.alarm(AlarmAction::Get, AlarmType::None, None).await })
            .await?;
        Ok(Storage {
            db_bytes: status.db_size().max(0) as u64,
            quota_bytes: u64::try_from(status.db_size_quota())
                .ok()
                .filter(|q| *q > 0),
            alarms: alarms
                .alarms()
                .iter()
                .filter_map(|a| match a.alarm() {
                    AlarmType::Nospace => Some("NOSPACE".to_string()),
                    AlarmType::Corrupt => Some("CORRUPT".to_string()),
                    AlarmType::None => None,
                })
                .collect(),
        })
    }

    /// Makes the first member (this controller's own, as the configuration lists it) etcd's raft
    /// leader when another member leads: a commit from here then costs one round trip to the
    /// nearest other member instead of a hop to a leader elsewhere and back (on the lab's 7 ms
    /// link: 18–23 ms instead of 33–36). Only the leader can hand over, so it is asked; the
    /// move is waited for at most `within`. Returns whether the first member leads now.
    ///
    /// A new raft leader extends every lease by its TTL (etcd), which delays the detection of a
    /// failure that follows by as much: this is for a planned operation, not for every pass.
    pub async fn lead_raft_here(&self, within: Duration) -> Result<bool, CoordError> {
        let deadline = tokio::time::Instant::now() + within;
        let status = |mut client: Client| async move {
            let status = tokio::time::timeout(self.timeout, client.status())
                .await
                .map_err(|_| CoordError::Unavailable("status timed out".into()))?
                .map_err(unavailable)?;
            let member = status.header().map(|h| h.member_id()).unwrap_or_default();
            Ok::<_, CoordError>((member, status.leader()))
        };
        let (own, leader) = status(self.clients[0].clone()).await?;
        if own == leader {
            self.preferred.store(0, Ordering::Relaxed);
            return Ok(true);
        }
        for client in &self.clients[1..] {
            if status(client.clone())
                .await
                .is_ok_and(|(member, _)| member == leader)
            {
                let mut client = client.clone();
                tokio::time::timeout(self.timeout, client.move_leader(own))
                    .await
                    .map_err(|_| CoordError::Unavailable("move leader timed out".into()))?
                    .map_err(unavailable)?;
                break;
            }
        }
        loop {
            if status(self.clients[0].clone())
                .await
                .is_ok_and(|(own, leader)| own == leader)
            {
                self.preferred.store(0, Ordering::Relaxed);
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The site that holds the leader key now, if any.
    pub async fn leader(&self) -> Result<Option<String>, CoordError> {
        let response = self.get_kv(self.leader_key.clone(), None).await?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    async fn put_on(&self, key: String, value: Vec<u8>, lease: i64) -> Result<i64, CoordError> {
        self.call(|mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await
        .map(|r| r.header().map_or(0, |h| h.revision()))
    }

    /// Announces this site: `sites/<site>` lives as long as the returned claim is renewed. Other
    /// controllers read a region's absence as "its controller is gone or cut off, and has fenced
    /// its writer".
    pub async fn claim_site(&self) -> Result<Claim, CoordError> {
        let sent = Instant::now();
        let lease = self.grant().await?;
        match self
            .put_on(
                self.key(&keys::site(&self.site)),
                self.site.as_bytes().to_vec(),
                lease,
            )
            .await
        {
            Ok(token) => Ok(Claim {
                lease,
                token,
                act_until: sent + self.act_window(),
                // A site's presence has no predecessor to wait for.
                acts_from: sent,
            }),
            Err(e) => {
                let _ = self.revoke(lease).await;
                Err(e)
            }
        }
    }

    /// Writes `name = value` attached to `claim`'s lease: it disappears with the claim.
    pub async fn put_with(
        &self,
        claim: &Claim,
        name: &str,
        value: &[u8],
    ) -> Result<(), CoordError> {
        self.put_on(self.key(name), value.to_vec(), claim.lease)
            .await
            .map(|_| ())
    }

    /// Writes `name = value` for `ttl` (then etcd deletes it).
    pub async fn put_expiring(
        &self,
        name: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), CoordError> {
        let seconds = ttl.as_secs().max(1) as i64;
        let lease = self
            .call(|mut c| async move { c.lease_grant(seconds, None).await })
            .await?
            .id();
        self.put_on(self.key(name), value.to_vec(), lease)
            .await
            .map(|_| ())
    }

    /// Deletes `name` under the fence if it exists; true when this call deleted it (so that of
    /// two takers exactly one gets it).
    pub async fn take_fenced(&self, fence: Fence, name: &str) -> Result<bool, CoordError> {
        if !fence.may_act(Instant::now()) {
            return Err(CoordError::Expired);
        }
        let key = self.key(name);
        let txn = Txn::new()
            .when([
                Compare::create_revision(self.leader_key.as_str(), CompareOp::Equal, fence.token),
                Compare::version(key.as_str(), CompareOp::Greater, 0),
            ])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// The lease TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}
