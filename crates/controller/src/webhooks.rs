//! Webhooks: failovers, switchovers, fencing and suspected data loss POSTed as JSON to the
//! configured URLs, signed with HMAC-SHA256 (`X-Valkey-DR-Signature: sha256=<hex>` over the body),
//! retried with backoff. Deliveries follow the event stream from their own tasks and bounded
//! queues: a slow or dead receiver never holds the controller up (what does not fit is dropped
//! and counted in `valkey_dr_webhook_deliveries_total{result="dropped"}`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hmac::{KeyInit, Mac};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use valkey_dr_core::config::{WebhookConfig, WebhookEvent};

use crate::events::{EventKind, EventSink};
use crate::metrics::Metrics;
use crate::security::{SecurityError, read_secret};

/// Deliveries waiting per webhook before new ones are dropped.
const QUEUE: usize = 256;
/// Attempts per delivery: 0.5 s doubling to 30 s between them, about two minutes in all.
const ATTEMPTS: u32 = 8;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The webhook event of a controller event, when it is one a webhook can receive.
pub fn webhook_event(kind: EventKind) -> Option<WebhookEvent> {
    match kind {
        EventKind::FailoverStarted => Some(WebhookEvent::FailoverStarted),
        EventKind::FailoverCompleted => Some(WebhookEvent::FailoverCompleted),
        EventKind::PromotionDone => Some(WebhookEvent::SwitchoverCompleted),
        EventKind::Fenced | EventKind::SelfFenced => Some(WebhookEvent::Fenced),
        EventKind::DataLossSuspected => Some(WebhookEvent::DataLossSuspected),
        _ => None,
    }
}

/// `sha256=<hex>` of HMAC-SHA256(`secret`, `body`): what a receiver recomputes to check a POST.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret)
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<bytes::Bytes>>;

struct Hook {
    url: String,
    events: Vec<WebhookEvent>,
    queue: mpsc::Sender<(WebhookEvent, bytes::Bytes)>,
}

/// Starts the dispatcher of `events` and one delivery task per webhook of `configs`; their
/// handles, to abort on stop. Both running shapes (a replication group's controller, a
/// cluster's) call it with their own event stream.
pub fn start(
    configs: &[WebhookConfig],
    events: &EventSink,
    metrics: &Arc<Metrics>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, SecurityError> {
    if configs.is_empty() {
        return Ok(Vec::new());
    }
    let client = http_client();
    let mut tasks = Vec::new();
    let mut hooks = Vec::new();
    for config in configs {
        let secret = read_secret("webhooks.secret_file", &config.secret_file)?;
        let (queue, deliveries) = mpsc::channel(QUEUE);
        tasks.push(tokio::spawn(deliver(
            config.clone(),
            secret,
            deliveries,
            client.clone(),
            metrics.clone(),
        )));
        hooks.push(Hook {
            url: config.url.clone(),
            events: config.events.clone(),
            queue,
        });
    }
    tasks.push(tokio::spawn(dispatch(
        events.subscribe(),
        hooks,
        metrics.clone(),
    )));
    Ok(tasks)
}

fn http_client() -> HttpClient {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = match hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider.clone())
    {
        Ok(builder) => builder,
        // No system roots: http:// URLs still work, https:// ones fail and are reported.
        Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        ),
    };
    let https = builder.https_or_http().enable_http1().build();
    Client::builder(hyper_util::rt::TokioExecutor::new()).build(https)
}

/// Turns each event a webhook wants into a queued delivery.
async fn dispatch(
    mut events: broadcast::Receiver<String>,
    hooks: Vec<Hook>,
    metrics: Arc<Metrics>,
) {
    static DELIVERY: AtomicU64 = AtomicU64::new(0);
    loop {
        let line = match events.recv().await {
            Ok(line) => line,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "webhooks fell behind the event stream");
                for _ in 0..missed {
                    metrics.webhook("dropped");
                }
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Ok(event) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let Some(kind) = EventKind::of(&event).and_then(webhook_event) else {
            continue;
        };
        let name = kind.name();
        let id = format!(
            "{}-{}",
            crate::clock::now_ms(),
            DELIVERY.fetch_add(1, Ordering::Relaxed)
        );
        let body = json!({ "event": name, "id": id, "ts": event["ts"], "data": event });
        let body = bytes::Bytes::from(body.to_string());
        for hook in &hooks {
            if !(hook.events.is_empty() || hook.events.contains(&kind)) {
                continue;
            }
            if hook.queue.try_send((kind, body.clone())).is_err() {
                tracing::warn!(url = %hook.url, event = name, "webhook queue full; delivery dropped");
                metrics.webhook("dropped");
            }
        }
    }
}

/// Delivers one webhook's queue in order, each POST retried with backoff.
async fn deliver(
    config: WebhookConfig,
    secret: String,
    mut deliveries: mpsc::Receiver<(WebhookEvent, bytes::Bytes)>,
    client: HttpClient,
    metrics: Arc<Metrics>,
) {
    while let Some((kind, body)) = deliveries.recv().await {
        let name = kind.name();
        let mut backoff =
            valkey_dr_core::Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        for attempt in 1..=ATTEMPTS {
            let outcome = post(&client, &config.url, &secret, name, &body).await;
            match outcome {
                Ok(()) => {
                    metrics.webhook("delivered");
                    break;
                }
                Err(reason) if attempt == ATTEMPTS => {
                    // The URL may carry a token in its query: only its origin is logged.
                    tracing::warn!(url = %origin(&config.url), event = %name, %reason, "webhook delivery failed; giving up");
                    metrics.webhook("failed");
                }
                Err(reason) => {
                    tracing::info!(url = %origin(&config.url), event = %name, %reason, attempt, "webhook delivery failed; retrying");
                    metrics.webhook("retried");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

async fn post(
    client: &HttpClient,
    url: &str,
    secret: &str,
    name: &str,
    body: &bytes::Bytes,
) -> Result<(), String> {
    let request = hyper::Request::post(url)
        .header("content-type", "application/json")
        .header("x-valkey-dr-event", name)
        .header("x-valkey-dr-signature", signature(secret.as_bytes(), body))
        .body(Full::new(body.clone()))
        .map_err(|e| format!("bad request: {e}"))?;
    let response = tokio::time::timeout(ATTEMPT_TIMEOUT, client.request(request))
        .await
        .map_err(|_| format!("no answer within {ATTEMPT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", response.status()))
    }
}

/// `scheme://host[:port]` of a URL (no path, query or credentials).
fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit('@').next().unwrap_or(host);
    format!("{scheme}://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn only_the_documented_events_go_out() {
        let cases = [
            (EventKind::FailoverStarted, Some("failover.started")),
            (EventKind::FailoverCompleted, Some("failover.completed")),
            (EventKind::PromotionDone, Some("switchover.completed")),
            (EventKind::Fenced, Some("fenced")),
            (EventKind::SelfFenced, Some("fenced")),
            (EventKind::DataLossSuspected, Some("data_loss_suspected")),
            (EventKind::DnsApplied, None),
            (EventKind::PromotionStarted, None),
        ];
        for (kind, expected) in cases {
            assert_eq!(
                webhook_event(kind).map(WebhookEvent::name),
                expected,
                "{kind}"
            );
        }
    }

    #[test]
    fn logged_urls_keep_only_their_origin() {
        assert_eq!(
            origin("https://user:pw@hooks.example.com:8443/a/b?token=secret"),
            "https://hooks.example.com:8443"
        );
        assert_eq!(origin("http://127.0.0.1:9/x"), "http://127.0.0.1:9");
    }
}
