//! Asking etcd's members: one client per member, failing over and hedging between them, and
//! moving raft leadership to this site's member.

use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::Client;

use crate::{CoordError, Coordinator, unavailable};

/// How long an idempotent request waits for one member before the next is asked too: a member
/// with a raft leader answers within a few round trips of the link between sites.
const HEDGE_AFTER: Duration = Duration::from_millis(100);

impl Coordinator {
    /// Runs `op` on the preferred member, then on the others until one answers (each within the
    /// request timeout). Only transport failures move on; an answer is final. One member at a
    /// time: a write sent to two could apply twice.
    pub(crate) async fn call<T, F, Fut>(&self, op: F) -> Result<T, CoordError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.ask_members(op, None).await
    }

    /// [`Coordinator::call`] for requests that may safely run twice (lease renewals, reads):
    /// when the member asked has not answered within [`HEDGE_AFTER`], the next one is asked too,
    /// and the first answer wins. A member that has lost its raft leader (an election, a member
    /// cut off) holds a request until the timeout; asked one after another, three members cost
    /// three timeouts, which is longer than a region guard waits before it pauses its writer.
    pub(crate) async fn call_idempotent<T, F, Fut>(&self, op: F) -> Result<T, CoordError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.ask_members(op, Some(HEDGE_AFTER)).await
    }

    /// The members in turn from the preferred one, each within the request timeout, the next
    /// at once after a refusal or a timeout — and, with `hedge`, also once the member asked last
    /// has been silent that long. The first answer wins and its member is preferred next time.
    async fn ask_members<T, F, Fut>(&self, op: F, hedge: Option<Duration>) -> Result<T, CoordError>
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
        while let Some(more) = (!in_flight.is_empty()).then_some(asked < members) {
            let hedge_now = async {
                match hedge {
                    Some(after) if more => tokio::time::sleep(after).await,
                    _ => std::future::pending().await,
                }
            };
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
                        if more {
                            in_flight.push(ask(asked));
                            asked += 1;
                        }
                    }
                },
                () = hedge_now => {
                    in_flight.push(ask(asked));
                    asked += 1;
                }
            }
        }
        Err(CoordError::Unavailable(last))
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
}
