//! How the engine reaches a node: timeouts, TLS and AUTH material (secrets never shown), the
//! connection itself, and what a failure to reach it says about the node.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo,
};
use valkey_dr_core::Endpoint;
use valkey_dr_core::observation::{Failure, FailureKind};

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
}

/// A secret string: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Secret,
}

#[derive(Clone)]
pub struct TlsMaterial {
    /// PEM of the CA the nodes' certificates must chain to.
    pub ca_pem: Vec<u8>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client: Option<(Vec<u8>, Secret)>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("client_cert", &self.client.is_some())
            .finish()
    }
}

/// How to reach nodes safely: TLS verified against a CA, and AUTH.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub tls: Option<TlsMaterial>,
    pub auth: Option<Credentials>,
}

/// A client for one node with the given security settings: the one place where every connection
/// of the controller, the lab and the drills is built.
pub fn client(node: &Endpoint, security: &Security) -> Result<Client, String> {
    let mut settings = RedisConnectionInfo::default();
    if let Some(auth) = &security.auth {
        if let Some(user) = &auth.username {
            settings = settings.set_username(user);
        }
        settings = settings.set_password(auth.password.expose());
    }
    let Some(tls) = &security.tls else {
        let info = ConnectionAddr::Tcp(node.host.clone(), node.port)
            .into_connection_info()
            .map_err(|e| e.to_string())?
            .set_redis_settings(settings);
        return Client::open(info).map_err(|e| e.to_string());
    };
    // One process-wide crypto provider; a second install is refused harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let host = if node.host.contains(':') {
        format!("[{}]", node.host)
    } else {
        node.host.clone()
    };
    let info = format!("rediss://{host}:{}", node.port)
        .into_connection_info()
        .map_err(|e| e.to_string())?
        .set_redis_settings(settings);
    let certificates = redis::TlsCertificates {
        client_tls: tls
            .client
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.expose().as_bytes().to_vec(),
            }),
        root_cert: Some(tls.ca_pem.clone()),
    };
    Client::build_with_tls(info, certificates).map_err(|e| e.to_string())
}

/// Opens a multiplexed connection to a node, bounded by the timeouts.
pub async fn connect(
    node: &Endpoint,
    security: &Security,
    timeouts: Timeouts,
) -> Result<MultiplexedConnection, String> {
    open(node, security, timeouts).await.map_err(|f| f.reason)
}

/// [`connect`], with what a failure says about the node.
pub(crate) async fn open(
    node: &Endpoint,
    security: &Security,
    timeouts: Timeouts,
) -> Result<MultiplexedConnection, Failure> {
    // A client that cannot even be built is our configuration's fault, not the node's.
    let client = client(node, security).map_err(|e| Failure::new(FailureKind::Refused, e))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeouts.connect))
        .set_response_timeout(Some(timeouts.command));
    // The overall bound also covers the TLS and AUTH handshakes.
    tokio::time::timeout(
        timeouts.connect + timeouts.command,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .map_err(|_| Failure::new(FailureKind::Unreachable, "timed out"))?
    .map_err(|e| Failure::new(classify(&e), e.to_string()))
}

/// What an error from a node says about it, from the error's type: silence (timeouts, no route),
/// nothing serving at its address (the connection refused, or closed or reset by the other end),
/// a refusal of us (authentication, ACL, the TLS handshake rejecting a certificate), or an error
/// reply from a live node (`-LOADING`, `-BUSY`, `-MASTERDOWN`, …).
pub fn classify(e: &redis::RedisError) -> FailureKind {
    use redis::{ErrorKind, ServerErrorKind};
    match e.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm) => {
            FailureKind::Refused
        }
        ErrorKind::Server(_) | ErrorKind::Extension => match e.code() {
            Some("NOAUTH" | "WRONGPASS" | "NOPERM") => FailureKind::Refused,
            _ => FailureKind::Unusable,
        },
        ErrorKind::Io if rejected_by_tls(e) => FailureKind::Refused,
        ErrorKind::Io if closed_by_the_other_end(e) => FailureKind::Gone,
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => FailureKind::Unusable,
        _ => FailureKind::Unreachable,
    }
}

/// True when the error's cause is the TLS handshake refusing a certificate (ours or the node's).
fn rejected_by_tls(e: &redis::RedisError) -> bool {
    matches!(
        cause::<rustls::Error>(e),
        Some(
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::AlertReceived(_)
        )
    )
}

/// True when the other end answered that nothing serves there: the connection was refused, or
/// closed or reset (a process that died, or a link to a dead one). A cut or a stalled node does
/// neither: it stays silent until a timeout.
fn closed_by_the_other_end(e: &redis::RedisError) -> bool {
    use std::io::ErrorKind::*;
    cause::<std::io::Error>(e).is_some_and(|io| {
        matches!(
            io.kind(),
            ConnectionRefused | ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe
        )
    })
}

/// The first error of type `T` among `e`'s causes, looking inside `io::Error`s and redis's shared
/// error box.
fn cause<T: std::error::Error + 'static>(e: &redis::RedisError) -> Option<&T> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(found) = unwrap_cause(c) {
            return Some(found);
        }
        cause = c.source();
    }
    None
}

fn unwrap_cause<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    if let Some(found) = e.downcast_ref::<T>() {
        return Some(found);
    }
    if let Some(shared) = e.downcast_ref::<Shared>() {
        return unwrap_cause(shared.as_ref());
    }
    e.downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| unwrap_cause(inner))
}
