//! Leases: the leader key, each site's presence key, and the fences they give.

use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use crate::{CoordError, Coordinator, keys};

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
    pub(crate) lease: i64,
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

impl Coordinator {
    /// How long a renewal keeps the right to act: two thirds of the TTL, so the leader stops
    /// acting a third of the TTL before etcd can expire its key (clock drift and delays).
    pub(crate) fn act_window(&self) -> Duration {
        self.ttl * 2 / 3
    }

    pub(crate) async fn grant(&self) -> Result<i64, CoordError> {
        let ttl = self.ttl.as_secs() as i64;
        self.call(|mut c| async move { c.lease_grant(ttl, None).await })
            .await
            .map(|r| r.id())
    }

    pub(crate) async fn revoke(&self, lease: i64) -> Result<(), CoordError> {
        self.call(|mut c| async move { c.lease_revoke(lease).await })
            .await
            .map(|_| ())
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

    pub(crate) async fn keep_alive(&self, lease: i64) -> Result<(), CoordError> {
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

    /// The site that holds the leader key now, if any.
    pub async fn leader(&self) -> Result<Option<String>, CoordError> {
        Ok(self.leader_term().await?.map(|term| term.site))
    }

    /// The leader's term now, if one leads: its site and the revision that created the leader
    /// key — a new one for each election, even of the same site.
    pub async fn leader_term(&self) -> Result<Option<Term>, CoordError> {
        let response = self.get_kv(self.leader_key.clone(), None).await?;
        Ok(response.kvs().first().map(|kv| Term {
            site: String::from_utf8_lossy(kv.value()).into_owned(),
            created: kv.create_revision(),
        }))
    }

    pub(crate) async fn put_on(
        &self,
        key: String,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<i64, CoordError> {
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
}

/// One leader's time in office ([`Coordinator::leader_term`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub site: String,
    /// The etcd revision that created the leader key.
    pub created: i64,
}
