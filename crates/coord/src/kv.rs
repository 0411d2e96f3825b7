//! Keys under the prefix: reads, and the leader's fenced writes.

use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

use crate::{Claim, CoordError, Coordinator, Fence};

/// One key of a fenced compare-and-swap ([`Coordinator::swap_all_fenced`]).
#[derive(Debug, Clone, Copy)]
pub struct Swap<'a> {
    pub name: &'a str,
    /// The revision `name` must still have (0: absent); `None`: written whatever it holds.
    pub expected: Option<i64>,
    pub value: &'a [u8],
}

/// A value read with the revision of its last change (0: absent), for compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Option<Vec<u8>>,
    pub revision: i64,
}

impl Coordinator {
    pub(crate) async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, CoordError> {
        self.call(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
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

    pub(crate) async fn get_kv(
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
}
