//! The local control socket: one JSON request per line in, JSON lines out.
//!
//! The socket lives in the state directory with mode 0600, so only the controller's user can
//! move the writer. Requests:
//! `{"command":"status"}`, `{"command":"reconcile"}`, `{"command":"promote","region":"…"}`,
//! `{"command":"failover","region":"…","force":true}`, `{"command":"ack"}`,
//! `{"command":"adopt","region":"…"}`; a cluster's controller (`mode = "cluster"`) answers
//! `{"command":"status"}`, `{"command":"reconcile"}`,
//! `{"command":"cluster_switchover","region":"…"}` and
//! `{"command":"cluster_failover","region":"…","confirm_down":false}`.
//! A promotion streams its events as `{"event":…}` lines and ends with `{"result":…}` or
//! `{"error":"…"}`.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};

use crate::{Controller, ControllerError};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Reconcile,
    Promote {
        region: String,
        #[serde(default)]
        method: crate::promotion::PromoteMethod,
    },
    Failover {
        region: String,
        force: bool,
    },
    Ack,
    Adopt {
        region: String,
    },
    /// Every shard's primary to `region`, as one cut (cluster mode).
    ClusterSwitchover {
        region: String,
    },
    /// Every shard's primary to `region` after the loss of the region holding them (cluster
    /// mode); `confirm_down`: the operator's word that the primaries that do not answer take no
    /// writes.
    ClusterFailover {
        region: String,
        #[serde(default)]
        confirm_down: bool,
    },
}

/// What answers the requests of a control socket: a replication group's controller or a
/// cluster's.
pub trait ControlTarget: Send + Sync + 'static {
    /// Where its socket lives (in its state directory).
    fn socket_path(&self) -> PathBuf;

    /// Answers one request; an operation may stream its events to `out` as `{"event":…}` lines
    /// before the reply.
    fn answer(
        self: Arc<Self>,
        request: Request,
        out: &mut OwnedWriteHalf,
    ) -> impl Future<Output = Reply> + Send;
}

pub struct ControlServer<T> {
    listener: UnixListener,
    target: Arc<T>,
}

impl<T: ControlTarget> ControlServer<T> {
    pub fn bind(target: Arc<T>) -> Result<ControlServer<T>, ControllerError> {
        let path = target.socket_path();
        let error = |source| ControllerError::Control {
            path: path.display().to_string(),
            source,
        };
        // A socket file left by a dead controller would make bind fail; a live one answers.
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(error(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another controller is running with this state directory",
            )));
        }
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(error)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(error)?;
        Ok(ControlServer { listener, target })
    }

    pub async fn serve(self) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(handle(self.target.clone(), stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Only our own user (or root) may send requests; the socket's mode 0600 already keeps other
/// users out, this also holds where file permissions are not enforced.
fn peer_allowed(stream: &UnixStream) -> bool {
    // SAFETY: geteuid has no preconditions.
    let own = unsafe { libc::geteuid() };
    stream
        .peer_cred()
        .is_ok_and(|cred| cred.uid() == own || cred.uid() == 0)
}

async fn handle<T: ControlTarget>(target: Arc<T>, stream: UnixStream) {
    if !peer_allowed(&stream) {
        let (_, mut write) = stream.into_split();
        let refusal = Reply::Error(
            "control requests are accepted only from the controller's own user".into(),
        );
        let _ = write.write_all(refusal.line().as_bytes()).await;
        return;
    }
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(64 * 1024));
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let request: Request = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => {
            let _ = write
                .write_all(
                    Reply::Error(format!("invalid request: {e}"))
                        .line()
                        .as_bytes(),
                )
                .await;
            return;
        }
    };
    let out = target.answer(request, &mut write).await;
    let _ = write.write_all(out.line().as_bytes()).await;
}

impl ControlTarget for Controller {
    fn socket_path(&self) -> PathBuf {
        self.config.control_socket()
    }

    async fn answer(self: Arc<Self>, request: Request, out: &mut OwnedWriteHalf) -> Reply {
        let controller = self;
        match request {
            // Only the leader moves the writer or changes the state: another controller hands
            // the request to it through etcd and relays its answer.
            request
                if !matches!(request, Request::Status | Request::Reconcile)
                    && let Some(ha) = controller.ha().filter(|ha| !ha.leader.is_leader()) =>
            {
                ha.forward(&request).await
            }
            Request::Promote { region, method } => {
                let task = {
                    let controller = controller.clone();
                    tokio::spawn(async move { controller.promote_with(&region, method).await })
                };
                match stream_events(&controller.events, out, task).await {
                    Ok(Ok(report)) => Reply::result(report),
                    Ok(Err(e)) => Reply::Error(e.to_string()),
                    Err(e) => Reply::Error(format!("promotion task failed: {e}")),
                }
            }
            request => execute(&controller, request).await,
        }
    }
}

/// Streams the controller's events to `out` as `{"event":…}` lines until `task` (an operation,
/// in its own task so that a client that goes away does not stop it halfway) ends, then those
/// emitted just before its end; its result, or why the task failed.
pub(crate) async fn stream_events<T>(
    events: &crate::EventSink,
    out: &mut OwnedWriteHalf,
    task: tokio::task::JoinHandle<T>,
) -> Result<T, tokio::task::JoinError> {
    let mut live = events.subscribe();
    tokio::pin!(task);
    let result = loop {
        tokio::select! {
            done = &mut task => break done,
            Ok(event) = live.recv() => send_event(out, &event).await,
        }
    };
    while let Ok(event) = live.try_recv() {
        send_event(out, &event).await;
    }
    result
}

async fn send_event(out: &mut OwnedWriteHalf, event: &str) {
    let _ = out
        .write_all(format!("{{\"event\":{event}}}\n").as_bytes())
        .await;
}

/// One line from the controller to a control client: `{"event":…}` while an operation streams
/// its events, then `{"result":…}`, `{"retryable":"…"}` or `{"error":"…"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Event(Value),
    Result(Value),
    /// The operation ended unfinished where asking again is the way on: refused or stopped
    /// before anything moved, rolled back, or left for the next pass to settle. Nothing was lost.
    Retryable(String),
    Error(String),
}

impl Reply {
    /// A successful result.
    pub fn result(value: impl Serialize) -> Reply {
        Reply::Result(serde_json::to_value(value).unwrap_or_default())
    }

    fn line(&self) -> String {
        format!(
            "{}\n",
            serde_json::to_string(self).expect("replies serialize")
        )
    }
}

/// Carries out one request and returns its reply (a promotion without its event stream).
pub async fn execute(controller: &Arc<Controller>, request: Request) -> Reply {
    match request {
        Request::Status => Reply::result(controller.status().await),
        Request::Reconcile => match controller.reconcile_once().await {
            Ok(pass) => Reply::result(json!({
                "applied": pass.applied,
                "findings": pass.analysis.findings.iter().map(|f| f.describe(&controller.topology)).collect::<Vec<_>>(),
            })),
            Err(e) => Reply::Error(e.to_string()),
        },
        Request::Failover { region, force } => {
            match controller.forced_failover(&region, force).await {
                Ok(report) => Reply::result(report),
                Err(e) => Reply::Error(e.to_string()),
            }
        }
        Request::Ack => match controller.ack().await {
            Ok(was_blocked) => Reply::result(json!({ "was_blocked": was_blocked })),
            Err(e) => Reply::Error(format!("ack not recorded: {e}")),
        },
        Request::Adopt { region } => match controller.adopt(&region).await {
            Ok(epoch) => Reply::result(json!({
                "epoch": epoch.epoch,
                "primary": controller.topology.node_name(epoch.primary),
            })),
            Err(e) => Reply::Error(e.to_string()),
        },
        Request::Promote { region, method } => match controller.promote_with(&region, method).await
        {
            Ok(report) => Reply::result(report),
            Err(e) => Reply::Error(e.to_string()),
        },
        Request::ClusterSwitchover { .. } | Request::ClusterFailover { .. } => Reply::Error(
            "this controller runs a replication group; cluster commands need mode = \"cluster\" in its config".into(),
        ),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the controller at {path}: {source} (is it running? `valkey-dr lab up` or `valkey-dr run`)"
    )]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("controller connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("controller refused: {0}")]
    Refused(String),
    /// [`Reply::Retryable`]: not done, nothing lost; the same request may be asked again.
    #[error("not done, nothing lost (ask again): {0}")]
    Retryable(String),
    #[error("controller sent an unreadable reply: {0}")]
    Reply(String),
}

/// Sends one request; `on_event` sees every streamed event; returns the final result.
pub async fn request(
    socket: &Path,
    request: &Request,
    mut on_event: impl FnMut(&Value),
) -> Result<Value, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("{}\n", serde_json::to_string(request).expect("serializes")).as_bytes())
        .await?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let reply: Reply =
            serde_json::from_str(&line).map_err(|e| ClientError::Reply(e.to_string()))?;
        match reply {
            Reply::Event(event) => on_event(&event),
            Reply::Result(result) => return Ok(result),
            Reply::Retryable(error) => return Err(ClientError::Retryable(error)),
            Reply::Error(error) => return Err(ClientError::Refused(error)),
        }
    }
    Err(ClientError::Reply(
        "connection closed before a result".into(),
    ))
}
