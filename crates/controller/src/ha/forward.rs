//! Operator commands at any site: a request is handed to the leader through etcd, carried out
//! there exactly once, and answered through etcd.

use crate::control::Reply;
use std::sync::Arc;
use std::time::{Duration, Instant};
use valkey_dr_coord::keys;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Ha, Office};
use crate::clock::now_ms;

/// An operator's request handed to the leader through etcd, with the moment (wall clock, Unix
/// ms) after which the command that sent it no longer waits: a later leader refuses it instead of
/// running it unannounced. Sites' clocks are assumed NTP-synced (seconds of skew at most).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Forwarded {
    deadline_ms: u64,
    request: crate::control::Request,
}

/// How long a forwarded request and its answer live in etcd.
const REQUEST_TTL: Duration = Duration::from_secs(120);

impl Ha {
    /// Hands an operator's request to the leader through etcd and waits for its answer (the
    /// control socket is local to each site; the leader may be anywhere).
    pub async fn forward(&self, request: &crate::control::Request) -> Reply {
        let ha = self;
        let id = format!(
            "{}-{}-{}",
            ha.site(),
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let deadline = Instant::now() + REQUEST_TTL;
        let forwarded = Forwarded {
            deadline_ms: now_ms() + REQUEST_TTL.as_millis() as u64,
            request: request.clone(),
        };
        let body = serde_json::to_vec(&forwarded).expect("requests serialize");
        if let Err(error) = ha
            .coord
            .put_expiring(&keys::request(&id), &body, REQUEST_TTL)
            .await
        {
            return Reply::Error(format!("cannot hand the request to the leader: {error}"));
        }
        let answer = async || {
            let reply = ha.coord.get(&keys::result(&id)).await.ok()??;
            serde_json::from_slice::<Reply>(&reply).ok()
        };
        // The term of the leader that took the request (its key gone from `requests/`). Once
        // another term begins with no answer written, the taker lost its office mid-request
        // and will never answer: what it did stands, and its successor settles a move by what
        // the nodes show. Waiting out the request's whole life would only hide that.
        let mut taken_in = None;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(reply) = answer().await {
                return reply;
            }
            // Until it is taken only the request is read; then only the leader's term.
            if taken_in.is_none() && !matches!(ha.coord.get(&keys::request(&id)).await, Ok(None)) {
                continue;
            }
            let Ok(term) = ha.coord.leader_term().await else {
                continue;
            };
            match &taken_in {
                None => taken_in = Some(term),
                Some(taker) if *taker != term => {
                    // Its answer may have landed just before the term changed.
                    if let Some(reply) = answer().await {
                        return reply;
                    }
                    let taker = taker.as_ref().map_or("a leader", |t| t.site.as_str());
                    return Reply::Retryable(format!(
                        "the leader ({taker}) took the request and lost its office before \
                         answering: what it did stands and the next leader settles it (`status` \
                         shows where things are); run the command again"
                    ));
                }
                Some(_) => {}
            }
        }
        Reply::Error(format!(
            "no leader answered within {} s (last known leader: {})",
            REQUEST_TTL.as_secs(),
            ha.leader_site().unwrap_or_else(|| "none".into())
        ))
    }
}

/// On the leader: carries out the requests other sites handed over, each exactly once.
pub(crate) async fn serve_requests(office: Arc<impl Office>) {
    let Some(ha) = office.ha() else { return };
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(fence) = ha.leader.fence() else {
            continue;
        };
        let Ok(pending) = ha.coord.list(keys::REQUESTS).await else {
            continue;
        };
        for (id, body) in pending {
            if !matches!(
                ha.coord.take_fenced(fence, &keys::request(&id)).await,
                Ok(true)
            ) {
                continue;
            }
            let reply = match serde_json::from_slice::<Forwarded>(&body) {
                // The operator's command gave up waiting: running it now would surprise them
                // (a forced failover long after they were told no leader answered).
                Ok(forwarded) if now_ms() > forwarded.deadline_ms => Reply::Error(
                    "the request expired before a leader could take it; run the command again"
                        .into(),
                ),
                Ok(Forwarded { request, .. }) => {
                    office.events().emit(
                        crate::events::EventKind::RequestForwarded,
                        json!({ "id": id, "request": request }),
                    );
                    office.clone().execute(request).await
                }
                Err(error) => Reply::Error(format!("invalid request: {error}")),
            };
            let reply = serde_json::to_vec(&reply).expect("replies serialize");
            let _ = ha
                .coord
                .put_expiring(&keys::result(&id), &reply, REQUEST_TTL)
                .await;
        }
    }
}
