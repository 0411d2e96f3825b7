//! The engine for self-hosted Valkey (or Redis OSS) nodes.
//!
//! Every operation names one node by its endpoint and is bounded by the configured connect and
//! command timeouts, so an unreachable node costs at most one timeout per call and never blocks
//! the controller.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
pub use valkey_dr_core::engine::{Engine, EngineError, ErrorReply, SyncSettings};
use valkey_dr_core::observation::{
    EpochMark, Failure, FailureKind, NodeObservation, ReplicationInfo, parse_info_replication,
};
use valkey_dr_core::{Endpoint, NodeId};

pub mod acl;
pub mod cluster;
mod connect;

use connect::open;
pub use connect::{
    Credentials, Secret, Security, Timeouts, TlsMaterial, classify, client, connect,
};

/// The key the controller writes on the writer once per pass to measure replication lag in time.
pub const HEARTBEAT_KEY: &str = "__valkey-dr:heartbeat";
/// The key holding the epoch mark (`<epoch> <writer>`), written with the heartbeat.
pub const EPOCH_KEY: &str = "__valkey-dr:epoch";

/// Talks to the nodes of one topology. Connections are cached per node and dropped on any error,
/// so a node that comes back is reached again on the next call.
pub struct ValkeyEngine {
    timeouts: Timeouts,
    security: Security,
    connections: Mutex<HashMap<Endpoint, Cached>>,
}

/// A node's cached connection, and the leader token it was claimed for ([`Engine::claim`]).
struct Cached {
    conn: MultiplexedConnection,
    claimed_for: Option<i64>,
}

/// The name a leader's connection carries on a node: how a later leader finds and closes it.
const LEADER_CONNECTION: &str = "valkey-dr-leader-";

impl ValkeyEngine {
    pub fn new(timeouts: Timeouts, security: Security) -> Self {
        ValkeyEngine {
            timeouts,
            security,
            connections: Mutex::new(HashMap::new()),
        }
    }

    async fn connection(&self, node: &Endpoint) -> Result<MultiplexedConnection, EngineError> {
        if let Some(cached) = self.connections.lock().expect("lock").get(node) {
            return Ok(cached.conn.clone());
        }
        let conn = open(node, &self.security, self.timeouts)
            .await
            .map_err(|f| EngineError {
                node: node.clone(),
                operation: "connect",
                kind: f.kind,
                reason: f.reason,
                reply: None,
            })?;
        self.connections.lock().expect("lock").insert(
            node.clone(),
            Cached {
                conn: conn.clone(),
                claimed_for: None,
            },
        );
        Ok(conn)
    }

    /// Whether the cached connection to `node` is claimed for `token` already.
    fn claimed(&self, node: &Endpoint, token: i64) -> bool {
        self.connections
            .lock()
            .expect("lock")
            .get(node)
            .is_some_and(|c| c.claimed_for == Some(token))
    }

    /// Runs one command on a node; on failure the cached connection is dropped.
    async fn run<T: redis::FromRedisValue>(
        &self,
        node: &Endpoint,
        operation: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, EngineError> {
        let mut conn = self.connection(node).await?;
        let reply =
            tokio::time::timeout(self.timeouts.command * 2, cmd.query_async::<T>(&mut conn)).await;
        self.settle(node, operation, reply)
    }

    /// Runs several commands in one round trip; a failed connection is dropped ([`Self::settle`]).
    async fn run_pipeline<T: redis::FromRedisValue>(
        &self,
        node: &Endpoint,
        operation: &'static str,
        pipeline: &redis::Pipeline,
    ) -> Result<T, EngineError> {
        let mut conn = self.connection(node).await?;
        let reply = tokio::time::timeout(
            self.timeouts.command * 2,
            pipeline.query_async::<T>(&mut conn),
        )
        .await;
        self.settle(node, operation, reply)
    }

    fn settle<T>(
        &self,
        node: &Endpoint,
        operation: &'static str,
        reply: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, EngineError> {
        let result = reply
            .map_err(|_| error(node, operation, FailureKind::Unreachable, "timed out"))
            .and_then(|r| {
                r.map_err(|e| EngineError {
                    reply: e.code().map(ErrorReply::from_code),
                    ..error(node, operation, classify(&e), &e)
                })
            });
        // Only a connection that failed is dropped (no answer, a broken stream): an error *reply*
        // (`-READONLY`, `-BUSY`, `-LOADING`, `-MISCONF`) came over a working one. Reopening it
        // could fail on a node at `maxclients` during a reconnect storm, exactly when the guard
        // must pause it or the leader demote it.
        if result.as_ref().is_err_and(|e| e.kind.no_answer()) {
            self.connections.lock().expect("lock").remove(node);
        }
        result
    }
}

/// The leaders' connections in a `CLIENT LIST` reply: (client id, leader token).
fn leader_connections(list: &str) -> impl Iterator<Item = (i64, i64)> + '_ {
    list.lines().filter_map(|line| {
        let field = |key: &str| {
            line.split(' ')
                .find_map(|f| f.strip_prefix(key).and_then(|f| f.strip_prefix('=')))
        };
        let id = field("id")?.parse().ok()?;
        let token = field("name")?
            .strip_prefix(LEADER_CONNECTION)?
            .parse()
            .ok()?;
        Some((id, token))
    })
}

/// Closes the normal and pub/sub clients, not ours (`CLIENT KILL TYPE … SKIPME yes`).
fn kill_clients_pipeline() -> redis::Pipeline {
    let kill = |kind: &str| {
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg(kind)
            .arg("SKIPME")
            .arg("yes")
            .clone()
    };
    redis::pipe()
        .add_command(kill("normal"))
        .add_command(kill("pubsub"))
        .clone()
}

/// `CLIENT PAUSE <ms> WRITE`: writes blocked (not reads, not replication) for `duration`.
fn pause_writes_command(duration: Duration) -> redis::Cmd {
    let ms = duration.as_millis().max(1) as u64;
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("WRITE")
        .clone()
}

impl ValkeyEngine {
    /// `before`'s commands (their replies ignored), then INFO replication cross-checked with
    /// ROLE, all in one round trip.
    async fn read_replication(
        &self,
        node: &Endpoint,
        operation: &'static str,
        mut before: redis::Pipeline,
    ) -> Result<ReplicationInfo, EngineError> {
        let pipeline = before.cmd("INFO").arg("replication").cmd("ROLE").clone();
        let (text, role): (String, Vec<redis::Value>) =
            self.run_pipeline(node, operation, &pipeline).await?;
        checked_replication(node, &text, &role)
    }
}

#[async_trait::async_trait]
impl Engine for ValkeyEngine {
    /// Reads a node's replication state: INFO replication cross-checked with ROLE, one round trip.
    async fn replication(&self, node: &Endpoint) -> Result<ReplicationInfo, EngineError> {
        self.read_replication(node, "INFO replication", redis::pipe())
            .await
    }

    /// Replication state, key count, heartbeat and epoch mark, in one round trip. Each reply is
    /// taken on its own: a node that refuses `DBSIZE` or `MGET` (`-MASTERDOWN` on a replica with
    /// `replica-serve-stale-data no`, `-LOADING`) is still observed through INFO and ROLE.
    async fn observe(&self, id: NodeId, node: &Endpoint) -> NodeObservation {
        let pipeline = redis::pipe()
            .ignore_errors()
            .cmd("INFO")
            .arg("replication")
            .cmd("ROLE")
            .cmd("DBSIZE")
            .cmd("MGET")
            .arg(HEARTBEAT_KEY)
            .arg(EPOCH_KEY)
            .clone();
        let reply: Result<Vec<redis::RedisResult<redis::Value>>, _> =
            self.run_pipeline(node, "INFO replication", &pipeline).await;
        let mut observation = NodeObservation {
            node: id,
            state: Err(Failure::new(FailureKind::Unusable, "")),
            keys: None,
            heartbeat_ms: None,
            epoch_mark: None,
        };
        let replies = match reply {
            Ok(replies) if replies.len() == 4 => replies,
            Ok(replies) => {
                observation.state = Err(Failure::new(
                    FailureKind::Unusable,
                    format!("{node}: {} replies to 4 commands", replies.len()),
                ));
                return observation;
            }
            Err(e) => {
                observation.state = Err(e.failure());
                return observation;
            }
        };
        let mut replies = replies.into_iter();
        let mut next = || -> Result<redis::Value, Failure> {
            replies
                .next()
                .expect("four replies")
                .map_err(|e| Failure::new(classify(&e), e.to_string()))
        };
        fn parse<T: redis::FromRedisValue>(v: Result<redis::Value, Failure>) -> Result<T, Failure> {
            v.and_then(|v| {
                redis::from_redis_value::<T>(v)
                    .map_err(|e| Failure::new(FailureKind::Unusable, e.to_string()))
            })
        }
        let info = parse::<String>(next());
        let role = parse::<Vec<redis::Value>>(next());
        observation.state = match (info, role) {
            (Ok(text), Ok(role)) => {
                checked_replication(node, &text, &role).map_err(|e| e.failure())
            }
            (Err(f), _) | (_, Err(f)) => Err(Failure::new(
                f.kind,
                error(node, "INFO replication", f.kind, f.reason).reason,
            )),
        };
        observation.keys = parse::<u64>(next()).ok();
        if let Ok(values) = parse::<Vec<Option<String>>>(next()) {
            // A heartbeat or mark someone overwrote is none, not a failed probe.
            observation.heartbeat_ms = values
                .first()
                .cloned()
                .flatten()
                .and_then(|v| v.parse().ok());
            observation.epoch_mark = values
                .get(1)
                .cloned()
                .flatten()
                .and_then(|v| EpochMark::parse(&v));
        }
        observation
    }

    /// Writes the heartbeat and the epoch mark on the writer; replicas' copies tell how far
    /// behind they are in time, and every node carries the epoch it last heard of.
    async fn write_heartbeat(
        &self,
        node: &Endpoint,
        now_ms: u64,
        mark: &EpochMark,
    ) -> Result<(), EngineError> {
        self.run::<()>(
            node,
            "MSET heartbeat",
            redis::cmd("MSET")
                .arg(HEARTBEAT_KEY)
                .arg(now_ms)
                .arg(EPOCH_KEY)
                .arg(mark.render()),
        )
        .await
    }

    /// `PING`: the cheapest liveness probe.
    async fn ping(&self, node: &Endpoint) -> Result<(), EngineError> {
        self.run::<String>(node, "PING", &redis::cmd("PING"))
            .await
            .map(|_| ())
    }

    /// `CLIENT PAUSE <ms> WRITE`: write commands block, reads and replication go on. The pause
    /// expires by itself, so a controller that dies mid-switchover cannot leave writes blocked.
    async fn pause_writes(&self, node: &Endpoint, duration: Duration) -> Result<(), EngineError> {
        self.run::<()>(node, "CLIENT PAUSE", &pause_writes_command(duration))
            .await
    }

    /// `CLIENT PAUSE … WRITE`, `INFO replication` and `ROLE` pipelined: Valkey runs them in
    /// order, so the offset read is the one every write acknowledged before the pause is at.
    async fn pause_writes_and_read(
        &self,
        node: &Endpoint,
        duration: Duration,
    ) -> Result<ReplicationInfo, EngineError> {
        let mut pause = redis::pipe();
        pause.add_command(pause_writes_command(duration)).ignore();
        self.read_replication(node, "CLIENT PAUSE", pause).await
    }

    async fn unpause(&self, node: &Endpoint) -> Result<(), EngineError> {
        self.run::<()>(node, "CLIENT UNPAUSE", redis::cmd("CLIENT").arg("UNPAUSE"))
            .await
    }

    /// Valkey's own coordinated handover: `FAILOVER TO host port TIMEOUT 5000`.
    async fn failover_to(&self, node: &Endpoint, target: &Endpoint) -> Result<(), EngineError> {
        self.run::<()>(
            node,
            "FAILOVER",
            redis::cmd("FAILOVER")
                .arg("TO")
                .arg(&target.host)
                .arg(target.port)
                .arg("TIMEOUT")
                .arg(5000),
        )
        .await
    }

    /// `REPLICAOF NO ONE`.
    async fn promote(&self, node: &Endpoint) -> Result<(), EngineError> {
        self.run::<()>(
            node,
            "REPLICAOF NO ONE",
            redis::cmd("REPLICAOF").arg("NO").arg("ONE"),
        )
        .await
    }

    /// `REPLICAOF host port`.
    async fn replicate_from(&self, node: &Endpoint, source: &Endpoint) -> Result<(), EngineError> {
        self.run::<()>(
            node,
            "REPLICAOF",
            redis::cmd("REPLICAOF").arg(&source.host).arg(source.port),
        )
        .await
    }

    /// Closes the node's normal and pub/sub client connections (not replicas, not ours) so that
    /// clients reconnect and resolve the name again. Returns how many were closed.
    async fn kill_clients(&self, node: &Endpoint) -> Result<u64, EngineError> {
        let (normal, pubsub): (u64, u64) = self
            .run_pipeline(node, "CLIENT KILL", &kill_clients_pipeline())
            .await?;
        Ok(normal + pubsub)
    }

    /// The kills and `CLIENT UNPAUSE` in one pipeline: Valkey runs them in order, so the paused
    /// clients are gone before writes flow again.
    async fn kill_clients_and_unpause(&self, node: &Endpoint) -> Result<u64, EngineError> {
        let pipeline = kill_clients_pipeline()
            .add_command(redis::cmd("CLIENT").arg("UNPAUSE").clone())
            .ignore()
            .clone();
        let (normal, pubsub): (u64, u64) = self
            .run_pipeline(node, "CLIENT KILL, UNPAUSE", &pipeline)
            .await?;
        Ok(normal + pubsub)
    }

    /// One round trip when the connection is new or the leadership changed, none otherwise:
    /// name it for `token`, read our own id and the other connections, then close every earlier
    /// leader's (`CLIENT KILL ID`, which answers 0 for one already gone).
    async fn claim(&self, node: &Endpoint, token: i64) -> Result<(), EngineError> {
        if self.claimed(node, token) {
            return Ok(());
        }
        let pipeline = redis::pipe()
            .add_command(
                redis::cmd("CLIENT")
                    .arg("SETNAME")
                    .arg(format!("{LEADER_CONNECTION}{token}"))
                    .clone(),
            )
            .ignore()
            .add_command(redis::cmd("CLIENT").arg("ID").clone())
            .add_command(
                redis::cmd("CLIENT")
                    .arg("LIST")
                    .arg("TYPE")
                    .arg("normal")
                    .clone(),
            )
            .clone();
        let (own, list): (i64, String) = self.run_pipeline(node, "CLIENT LIST", &pipeline).await?;
        // Another connection of this same leadership (a replaced one not closed yet) is left be.
        let leaders = leader_connections(&list).filter(|(id, t)| *id != own && *t != token);
        let (later, earlier): (Vec<_>, Vec<_>) = leaders.partition(|(_, t)| *t > token);
        if let Some((_, later)) = later.first() {
            // Not ours to use: a later leader's acts here.
            self.connections.lock().expect("lock").remove(node);
            return Err(error(
                node,
                "claim",
                FailureKind::Refused,
                format!(
                    "a later leader (token {later}) acts on this node: this controller (token {token}) is deposed"
                ),
            ));
        }
        if !earlier.is_empty() {
            let mut kills = redis::pipe();
            for (id, _) in &earlier {
                kills.add_command(redis::cmd("CLIENT").arg("KILL").arg("ID").arg(*id).clone());
            }
            let _: Vec<u64> = self.run_pipeline(node, "CLIENT KILL", &kills).await?;
        }
        if let Some(cached) = self.connections.lock().expect("lock").get_mut(node) {
            cached.claimed_for = Some(token);
        }
        Ok(())
    }

    /// `CONFIG GET repl-diskless-sync*`.
    async fn sync_settings(&self, node: &Endpoint) -> Result<SyncSettings, EngineError> {
        let values: HashMap<String, String> = self
            .run(
                node,
                "CONFIG GET",
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("repl-diskless-sync")
                    .arg("repl-diskless-sync-delay")
                    .arg("repl-ping-replica-period")
                    .arg("replica-read-only")
                    .arg("cluster-enabled"),
            )
            .await?;
        Ok(SyncSettings {
            diskless: values.get("repl-diskless-sync").map(String::as_str) == Some("yes"),
            diskless_delay_s: values
                .get("repl-diskless-sync-delay")
                .and_then(|v| v.parse().ok())
                .unwrap_or(5),
            replica_read_only: values.get("replica-read-only").map(String::as_str) == Some("yes"),
            cluster_enabled: values.get("cluster-enabled").map(String::as_str) == Some("yes"),
            ping_replica_period_s: values
                .get("repl-ping-replica-period")
                .and_then(|v| v.parse().ok())
                .unwrap_or(10),
        })
    }

    /// `CONFIG REWRITE`: the node's config file gets its current role, so a restart brings it
    /// back following the same node.
    async fn persist_role(&self, node: &Endpoint) -> Result<(), EngineError> {
        let at_rest = valkey_dr_core::self_fence::WriteQuorum::AT_REST;
        let pipeline = redis::pipe()
            .cmd("CONFIG")
            .arg("SET")
            .arg("min-replicas-to-write")
            .arg(at_rest.replicas)
            .arg("min-replicas-max-lag")
            .arg(at_rest.max_lag_s)
            .ignore()
            .cmd("CONFIG")
            .arg("REWRITE")
            .ignore()
            .clone();
        self.run_pipeline::<()>(node, "CONFIG REWRITE", &pipeline)
            .await
    }

    /// `CONFIG SET min-replicas-to-write <n> min-replicas-max-lag <s>`.
    async fn set_write_quorum(
        &self,
        node: &Endpoint,
        quorum: valkey_dr_core::self_fence::WriteQuorum,
    ) -> Result<(), EngineError> {
        self.run::<()>(
            node,
            "CONFIG SET min-replicas-to-write",
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("min-replicas-to-write")
                .arg(quorum.replicas)
                .arg("min-replicas-max-lag")
                .arg(quorum.max_lag_s),
        )
        .await
    }
}

/// Parses INFO replication and rejects a reply whose ROLE disagrees (the node changed role
/// between the two commands; the next probe settles it).
fn checked_replication(
    node: &Endpoint,
    info: &str,
    role: &[redis::Value],
) -> Result<ReplicationInfo, EngineError> {
    let info = parse_info_replication(info)
        .map_err(|e| error(node, "INFO replication", FailureKind::Unusable, e))?;
    let role_name = match role.first() {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(redis::Value::SimpleString(s)) => s.clone(),
        _ => String::new(),
    };
    if (role_name == "master") != info.is_primary() {
        // The node changed role between the two commands: alive, settled by the next probe.
        return Err(error(
            node,
            "ROLE",
            FailureKind::Unusable,
            format!("ROLE says {role_name} while INFO disagrees"),
        ));
    }
    Ok(info)
}

fn error(
    node: &Endpoint,
    operation: &'static str,
    kind: FailureKind,
    reason: impl std::fmt::Display,
) -> EngineError {
    EngineError {
        node: node.clone(),
        operation,
        kind,
        reason: reason.to_string(),
        reply: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error a node's reply `-<text>` turns into.
    fn reply(text: &str) -> redis::RedisError {
        let value = redis::parse_redis_value(format!("-{text}\r\n").as_bytes()).unwrap();
        value.extract_error().unwrap_err()
    }

    #[test]
    fn failures_are_classified_by_type() {
        let io = |kind| redis::RedisError::from(std::io::Error::new(kind, "x"));
        let tls = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        let cases = [
            (
                "connection refused: nothing listens",
                io(std::io::ErrorKind::ConnectionRefused),
                FailureKind::Gone,
            ),
            (
                "reset by the other end",
                io(std::io::ErrorKind::ConnectionReset),
                FailureKind::Gone,
            ),
            (
                "closed by the other end",
                io(std::io::ErrorKind::BrokenPipe),
                FailureKind::Gone,
            ),
            (
                "closed before a reply",
                io(std::io::ErrorKind::UnexpectedEof),
                FailureKind::Gone,
            ),
            (
                "timed out: silence",
                io(std::io::ErrorKind::TimedOut),
                FailureKind::Unreachable,
            ),
            (
                "no route: silence",
                io(std::io::ErrorKind::HostUnreachable),
                FailureKind::Unreachable,
            ),
            ("untrusted certificate", tls, FailureKind::Refused),
            (
                "wrong password",
                reply("WRONGPASS invalid username-password pair"),
                FailureKind::Refused,
            ),
            (
                "no auth",
                reply("NOAUTH Authentication required."),
                FailureKind::Refused,
            ),
            (
                "no ACL permission",
                reply("NOPERM this user has no permissions"),
                FailureKind::Refused,
            ),
            (
                "loading",
                reply("LOADING Valkey is loading the dataset in memory"),
                FailureKind::Unusable,
            ),
            (
                "busy script",
                reply("BUSY Valkey is busy running a script"),
                FailureKind::Unusable,
            ),
            (
                "stale replica",
                reply("MASTERDOWN Link with MASTER is down"),
                FailureKind::Unusable,
            ),
            (
                "authentication failed",
                redis::RedisError::from((redis::ErrorKind::AuthenticationFailed, "x")),
                FailureKind::Refused,
            ),
        ];
        for (case, error, kind) in cases {
            assert_eq!(classify(&error), kind, "{case}: {error}");
        }
    }
}
