//! The read-only HTTP endpoint and the webhooks.

use super::*;

/// The read-only HTTP endpoint. Moving the writer stays on the owner-only control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `ip:port`; loopback unless a token and TLS are configured.
    #[serde(default = "default_http_listen")]
    pub listen: String,
    /// A file holding the bearer token every request but `/healthz` and `/readyz` must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain and key: the endpoint speaks HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
}

/// What a webhook can receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WebhookEvent {
    #[serde(rename = "failover.started")]
    FailoverStarted,
    #[serde(rename = "failover.completed")]
    FailoverCompleted,
    #[serde(rename = "switchover.completed")]
    SwitchoverCompleted,
    #[serde(rename = "fenced")]
    Fenced,
    #[serde(rename = "data_loss_suspected")]
    DataLossSuspected,
}

impl WebhookEvent {
    /// The name in the payload's `event` and the `X-Valkey-DR-Event` header.
    pub fn name(self) -> &'static str {
        match self {
            WebhookEvent::FailoverStarted => "failover.started",
            WebhookEvent::FailoverCompleted => "failover.completed",
            WebhookEvent::SwitchoverCompleted => "switchover.completed",
            WebhookEvent::Fenced => "fenced",
            WebhookEvent::DataLossSuspected => "data_loss_suspected",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL that receives each event as a JSON POST.
    pub url: String,
    /// A file holding the HMAC-SHA256 key; every POST carries
    /// `X-Valkey-DR-Signature: sha256=<hex of HMAC(body)>`.
    pub secret_file: PathBuf,
    /// Which events to send [default: all].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<WebhookEvent>,
}

fn default_http_listen() -> String {
    "127.0.0.1:9187".into()
}
