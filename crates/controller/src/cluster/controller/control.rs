//! The cluster controller's control socket: its requests, and the moves run on a thread of
//! their own while their events stream to the client.

use super::*;

impl ControlTarget for ClusterController {
    fn socket_path(&self) -> std::path::PathBuf {
        self.config.control_socket()
    }

    async fn answer(self: Arc<Self>, request: Request, out: &mut OwnedWriteHalf) -> Reply {
        match request {
            // Only the leader moves the primaries or changes the state: another site hands the
            // request to it through etcd and relays its answer (without the move's events).
            request
                if !matches!(request, Request::Status | Request::Reconcile)
                    && let Some(ha) = self.ha.as_ref().filter(|ha| !ha.leader.is_leader()) =>
            {
                let reply = ha.forward(&request).await;
                // A pass of its own now: a `status` asked here next shows what the leader did.
                let _ = self.reconcile().await;
                reply
            }
            request => self.answer_here(request, Some(out)).await,
        }
    }
}

impl ClusterController {
    /// A request carried out by this controller, a move's events streamed to `out` when given
    /// (a request another site forwarded has no one to stream to).
    pub(super) async fn answer_here(
        self: Arc<Self>,
        request: Request,
        out: Option<&mut OwnedWriteHalf>,
    ) -> Reply {
        match request {
            Request::Status => reply(self.status().await),
            Request::Reconcile => reply(self.reconcile().await),
            Request::Ack => reply(
                self.ack()
                    .await
                    .map(|was_blocked| json!({ "was_blocked": was_blocked })),
            ),
            Request::ClusterSwitchover { region } => {
                let controller = self.clone();
                run_streaming(&self.events, out, move |runtime| {
                    runtime.block_on(controller.switchover(&region))
                })
                .await
                .map_or_else(Reply::Error, reply)
            }
            Request::ClusterFailover {
                region,
                confirm_down,
            } => {
                let controller = self.clone();
                run_streaming(&self.events, out, move |runtime| {
                    runtime.block_on(controller.failover(&region, confirm_down))
                })
                .await
                .map_or_else(Reply::Error, reply)
            }
            other => Reply::Error(format!(
                "this controller runs a cluster (mode = \"cluster\"): `{}` is for a replication group; use `valkey-dr cluster switchover` or `cluster failover`",
                serde_json::to_value(&other)
                    .ok()
                    .and_then(|v| v["command"].as_str().map(str::to_string))
                    .unwrap_or_default()
            )),
        }
    }
}

fn reply<T: Serialize>(result: Result<T, ClusterError>) -> Reply {
    match result {
        Ok(value) => Reply::result(value),
        Err(e) if e.retryable() => Reply::Retryable(e.to_string()),
        Err(e) => Reply::Error(e.to_string()),
    }
}

/// Runs `operation` on a thread of its own, which drives its future on the runtime it is given,
/// while the events stream to `out` when given ([`stream_events`]); `Err` when it panicked. On a
/// thread because a move's future is not `Send` for every lifetime (rustc cannot prove it
/// through its nested borrows), which a task needs.
async fn run_streaming<T: Send + 'static>(
    events: &EventSink,
    out: Option<&mut OwnedWriteHalf>,
    operation: impl FnOnce(&tokio::runtime::Handle) -> T + Send + 'static,
) -> Result<T, String> {
    let runtime = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || operation(&runtime));
    let done = match out {
        Some(out) => stream_events(events, out, task).await,
        None => task.await,
    };
    done.map_err(|e| format!("the operation failed: {e}"))
}
