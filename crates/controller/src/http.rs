//! The read-only HTTP endpoint: `/` (a status page that refreshes itself from the API),
//! `/metrics` (OpenMetrics text), `/healthz`, `/readyz`,
//! `/api/status` (what `valkey-dr status --output json` prints), `/api/events` (recent events as
//! JSON, or followed as server-sent events). Nothing here changes anything: moving the writer stays
//! on the owner-only control socket. Bound to loopback unless a bearer token and TLS are
//! configured (the config refuses otherwise).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_stream::StreamExt;
use valkey_dr_core::config::HttpConfig;

use crate::Controller;
use crate::security::{SecurityError, read, read_secret};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Secret(#[from] SecurityError),
    #[error("config field `http.tls_cert_file`: {0}")]
    Tls(String),
}

const STATUS_PAGE: &str = include_str!("status_page.html");

struct AppState {
    controller: Arc<Controller>,
    token: Option<String>,
    /// One scrape at a time: a scrape rewrites the gauges before it encodes them.
    scrape: tokio::sync::Mutex<()>,
}

/// Serves the endpoint until the returned task is aborted. The token and TLS files are read now
/// (a config error stops the start); a listen address that is taken is retried with backoff and
/// reported (`http_unavailable`, then `http_listening`): the controller's real work never waits
/// on its metrics port.
pub async fn serve(
    controller: Arc<Controller>,
    config: &HttpConfig,
) -> Result<tokio::task::JoinHandle<()>, HttpError> {
    let token = config
        .token_file
        .as_deref()
        .map(|path| read_secret("http.token_file", path))
        .transpose()?;
    let tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(tls_acceptor(
            &read("http.tls_cert_file", cert)?,
            &read("http.tls_key_file", key)?,
        )?),
        _ => None,
    };
    let listen = config.listen.clone();
    let app = router(Arc::new(AppState {
        controller: controller.clone(),
        token,
        scrape: tokio::sync::Mutex::new(()),
    }));
    Ok(tokio::spawn(async move {
        let listener = bind(&controller, &listen).await;
        match tls {
            None => {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::warn!(error = %e, "the HTTP endpoint stopped");
                }
            }
            Some(acceptor) => serve_tls(listener, acceptor, app).await,
        }
    }))
}

/// Binds `listen`, retrying every 1 s doubling to 30 s while it is taken; reports the first
/// failure and the success after one.
async fn bind(controller: &Controller, listen: &str) -> tokio::net::TcpListener {
    let mut backoff = valkey_dr_core::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut reported = false;
    loop {
        match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => {
                if reported {
                    controller.events.emit(
                        crate::events::EventKind::HttpListening,
                        serde_json::json!({ "listen": listen }),
                    );
                }
                return listener;
            }
            Err(e) => {
                if !reported {
                    controller.events.emit(
                        crate::events::EventKind::HttpUnavailable,
                        serde_json::json!({ "listen": listen, "error": e.to_string(), "retry": "with backoff" }),
                    );
                    reported = true;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

fn router(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/status", get(status))
        .route("/api/events", get(events))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        // The page holds no data (it reads the API, with `?token=` when one is required).
        .route("/", get(|| async { axum::response::Html(STATUS_PAGE) }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .merge(protected)
        .with_state(state)
}

/// Every route but the health checks needs `Authorization: Bearer <token>` when a token is set.
async fn authorize(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &state.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a bearer token is required\n",
            )
                .into_response();
        }
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Ready when a reconcile pass succeeded within three intervals (a controller that cannot reach
/// its nodes or its DNS backend is alive but not doing its job).
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let controller = &state.controller;
    let interval = Duration::from_millis(controller.config.controller.reconcile_interval_ms);
    // A site that cannot read etcd still answers with the last state and records it read: not
    // ready past a lease TTL of that, so that a load balancer or an operator sees it.
    if let Some(ha) = controller.ha()
        && !ha.leader.is_leader()
        && ha.state_read_ago().is_none_or(|ago| ago > ha.coord.ttl())
    {
        let ago = ha
            .state_read_ago()
            .map_or("ever".into(), |d| format!("for {} ms", d.as_millis()));
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the state was not read from etcd {ago}; this site shows what it read last\n"),
        )
            .into_response();
    }
    match controller.last_good_pass() {
        Some(age) if age <= interval * 3 => (StatusCode::OK, "ready\n").into_response(),
        Some(age) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no successful reconcile pass for {} ms\n", age.as_millis()),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no successful reconcile pass yet\n",
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let status = state.controller.status().await;
    let text = {
        let _one = state.scrape.lock().await;
        state.controller.metrics.set_status(&status);
        state.controller.metrics.encode()
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn status(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(state.controller.status().await).into_response()
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    #[serde(default)]
    follow: bool,
}

/// The recent events as a JSON array; with `?follow=true` (or `Accept: text/event-stream`) the
/// recent ones and then every new one as server-sent events.
async fn events(
    State(state): State<Arc<AppState>>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Response {
    let wants_stream = query.follow
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
    let sink = &state.controller.events;
    if !wants_stream {
        // Each line is one JSON object already: the array is their concatenation.
        return (
            [(header::CONTENT_TYPE, "application/json")],
            format!("[{}]", sink.recent().join(",")),
        )
            .into_response();
    }
    // Subscribe before reading the backlog: an event between the two is sent twice, never lost.
    let live =
        tokio_stream::wrappers::BroadcastStream::new(sink.subscribe()).filter_map(|line| line.ok());
    let backlog = tokio_stream::iter(sink.recent());
    let stream = backlog
        .chain(live)
        .map(|line| Ok::<_, Infallible>(Event::default().data(line)));
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8]) -> Result<tokio_rustls::TlsAcceptor, HttpError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| HttpError::Tls(format!("not a PEM certificate chain: {e}")))?;
    // The key's parse error says nothing about its content.
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| HttpError::Tls("http.tls_key_file holds no usable PEM private key".into()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| HttpError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| {
        HttpError::Tls(format!(
            "certificate and key do not make a server identity: {e}"
        ))
    })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            // A client that fails the handshake only loses its own connection.
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}
