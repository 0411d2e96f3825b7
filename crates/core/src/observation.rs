//! What a node reports about itself, and the parser for `INFO replication`.

use serde::{Deserialize, Serialize};

use crate::topology::{Endpoint, NodeId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Role {
    /// `role:master`: accepts writes.
    Primary,
    /// `role:slave`: follows `master`.
    Replica {
        master: Endpoint,
        /// `master_link_status:up`. Lags reality by `repl-timeout` after a cut link.
        link_up: bool,
        /// `master_sync_in_progress:1`: a full resync is running.
        sync_in_progress: bool,
    },
}

/// The replication state of one reachable node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationInfo {
    #[serde(flatten)]
    pub role: Role,
    /// The replication stream position: `master_repl_offset` on a primary, `slave_repl_offset`
    /// on a replica.
    pub offset: u64,
    /// `master_replid`: the replication history this node is on.
    pub replication_id: String,
    /// `master_replid2`: the history this node continued from after its last promotion
    /// (all zeros when none).
    #[serde(default)]
    pub replication_id2: String,
    /// `second_repl_offset`: up to which offset `replication_id2`'s history is this node's own
    /// (None: no earlier history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_id2_until: Option<u64>,
    pub connected_replicas: u32,
    /// `master_last_io_seconds_ago` on a replica whose link is up: how long since its master last
    /// sent anything (data or the ping every `repl-ping-replica-period`).
    #[serde(default)]
    pub master_last_io_s: Option<u64>,
}

impl ReplicationInfo {
    pub fn is_primary(&self) -> bool {
        matches!(self.role, Role::Primary)
    }

    pub fn master(&self) -> Option<&Endpoint> {
        match &self.role {
            Role::Replica { master, .. } => Some(master),
            Role::Primary => None,
        }
    }

    /// Where this node's replication history stands.
    pub fn history(&self) -> History {
        let parent = self
            .replication_id2_until
            .filter(|_| {
                !self.replication_id2.is_empty() && self.replication_id2.bytes().any(|b| b != b'0')
            })
            .map(|until| ParentHistory {
                replication_id: self.replication_id2.clone(),
                until,
            });
        History {
            replication_id: self.replication_id.clone(),
            offset: self.offset,
            parent,
        }
    }

    /// True when this node's data continues `before` (the writer's history as last seen): its
    /// replication offset has not gone backwards. A node restarted empty starts again from zero,
    /// one restarted from an older file from where that file was. The replication id is no test
    /// here: a primary also takes a new one when it creates its backlog for its first replica
    /// (after a restart, or after `repl-backlog-ttl` without replicas) without losing anything.
    pub fn continues(&self, before: &History) -> bool {
        self.offset >= before.offset
    }

    /// True when this node is on `before`'s replication history at any offset: a replica that
    /// synced from that writer (it may lag behind).
    ///
    /// Also a node on the history `before` continued from, at an offset no further than where
    /// `before` forked from it: it holds a prefix of `before` (everything up to a promotion),
    /// which is worth more than nothing when the writer comes back empty. One past the fork
    /// took writes `before` never had, and does not count.
    pub fn shares_history(&self, before: &History) -> bool {
        let on_parent = before
            .parent
            .as_ref()
            .is_some_and(|p| self.replication_id == p.replication_id && self.offset <= p.until);
        !before.replication_id.is_empty()
            && (self.replication_id == before.replication_id
                || self.replication_id2 == before.replication_id
                || on_parent)
    }
}

/// A node's replication id and offset at one observation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub replication_id: String,
    pub offset: u64,
    /// The history this one continued from at its writer's promotion, and up to which offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentHistory>,
}

/// The earlier history a writer's continued from (`master_replid2` up to `second_repl_offset`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentHistory {
    pub replication_id: String,
    pub until: u64,
}

/// What a failed call says about the node. The engine decides it from the error's type (a
/// timeout, an error reply's code, a TLS alert), never from its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// No answer: a timeout, no route. The node may be alive behind a cut, or stalled, and may
    /// still take writes from clients that reach it. Counts towards `down_after`.
    Unreachable,
    /// Nothing serves at the node's address: the connection was refused, or closed or reset by
    /// the other end (the process died). Counts towards `down_after`, like silence; unlike
    /// silence, it says the node takes no writes now.
    Gone,
    /// The node answered with an error reply (`-LOADING`, `-BUSY`, `-MASTERDOWN`, …) or a reply
    /// we cannot read: alive but unusable for now. Never counts towards `down_after`.
    Unusable,
    /// The node answered but refused us (wrong password, untrusted certificate, missing ACL
    /// permission): a configuration problem, never a reason to fail over.
    Refused,
}

/// Why a node could not be observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub kind: FailureKind,
    pub reason: String,
}

impl FailureKind {
    /// True when the node did not answer at all, silent or gone: what failure detection counts.
    pub fn no_answer(self) -> bool {
        matches!(self, FailureKind::Unreachable | FailureKind::Gone)
    }
}

impl Failure {
    pub fn new(kind: FailureKind, reason: impl Into<String>) -> Failure {
        Failure {
            kind,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// One node's observation: its replication state, or why it could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeObservation {
    pub node: NodeId,
    pub state: Result<ReplicationInfo, Failure>,
    /// Number of keys (`DBSIZE`), when read.
    pub keys: Option<u64>,
    /// The controller's heartbeat timestamp (Unix ms) as this node last received it.
    pub heartbeat_ms: Option<u64>,
    /// The epoch mark the writer of an epoch carries in its data (and its replicas copy), so the
    /// epoch survives the controller's own state ([`EpochMark`]).
    #[serde(default)]
    pub epoch_mark: Option<EpochMark>,
}

/// `<epoch> <writer address>`, written on the writer with every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochMark {
    pub epoch: u64,
    pub writer: String,
}

impl EpochMark {
    pub fn parse(text: &str) -> Option<EpochMark> {
        let (epoch, writer) = text.trim().split_once(' ')?;
        Some(EpochMark {
            epoch: epoch.parse().ok()?,
            writer: writer.to_string(),
        })
    }

    pub fn render(&self) -> String {
        format!("{} {}", self.epoch, self.writer)
    }
}

impl NodeObservation {
    /// Why the node could not be observed (None when it could).
    pub fn failure(&self) -> Option<FailureKind> {
        self.state.as_ref().err().map(|f| f.kind)
    }
}

impl NodeObservation {
    pub fn info(&self) -> Option<&ReplicationInfo> {
        self.state.as_ref().ok()
    }
}

/// The replication state `node` reported in `observations`, if it answered.
pub fn info_of(observations: &[NodeObservation], node: NodeId) -> Option<&ReplicationInfo> {
    observations
        .iter()
        .find(|o| o.node == node)
        .and_then(|o| o.info())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InfoParseError {
    #[error("INFO replication reply has no `{0}` field")]
    Missing(&'static str),
    #[error("INFO replication field `{field}` has an invalid value \"{value}\"")]
    Invalid { field: &'static str, value: String },
}

/// Parses the reply of `INFO replication`. Unknown fields are ignored; the fields the controller
/// relies on must be present and well formed.
pub fn parse_info_replication(text: &str) -> Result<ReplicationInfo, InfoParseError> {
    let field = |name: &'static str| -> Option<&str> {
        text.lines()
            .filter_map(|line| line.trim_end_matches('\r').split_once(':'))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    };
    let required = |name: &'static str| field(name).ok_or(InfoParseError::Missing(name));
    let number = |name: &'static str| -> Result<u64, InfoParseError> {
        let value = required(name)?;
        value.parse().map_err(|_| InfoParseError::Invalid {
            field: name,
            value: value.chars().take(64).collect(),
        })
    };
    let replication_id = field("master_replid").unwrap_or_default().to_string();
    let replication_id2 = field("master_replid2").unwrap_or_default().to_string();
    // -1 when there is no earlier history.
    let replication_id2_until = field("second_repl_offset").and_then(|v| v.parse::<u64>().ok());
    let connected_replicas = match field("connected_slaves") {
        Some(_) => number("connected_slaves")? as u32,
        None => 0,
    };
    match required("role")? {
        "master" => Ok(ReplicationInfo {
            role: Role::Primary,
            offset: number("master_repl_offset")?,
            replication_id,
            replication_id2,
            replication_id2_until,
            connected_replicas,
            master_last_io_s: None,
        }),
        "slave" | "replica" => {
            let host = required("master_host")?;
            let port = number("master_port")?;
            let port = u16::try_from(port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| InfoParseError::Invalid {
                    field: "master_port",
                    value: port.to_string(),
                })?;
            Ok(ReplicationInfo {
                role: Role::Replica {
                    master: Endpoint::new(host, port),
                    link_up: required("master_link_status")? == "up",
                    sync_in_progress: field("master_sync_in_progress") == Some("1"),
                },
                offset: number("slave_repl_offset")?,
                replication_id,
                replication_id2,
                replication_id2_until,
                connected_replicas,
                // -1 while the link is down.
                master_last_io_s: field("master_last_io_seconds_ago").and_then(|v| v.parse().ok()),
            })
        }
        other => Err(InfoParseError::Invalid {
            field: "role",
            value: other.chars().take(64).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIMARY: &str = "# Replication\r\nrole:master\r\nconnected_slaves:1\r\nslave0:ip=127.0.1.2,port=6379,state=online,offset=1234,lag=0\r\nmaster_failover_state:no-failover\r\nmaster_replid:8f1c\r\nmaster_replid2:0000\r\nmaster_repl_offset:1234\r\n";
    const REPLICA: &str = "# Replication\r\nrole:slave\r\nmaster_host:127.0.2.111\r\nmaster_port:6379\r\nmaster_link_status:up\r\nmaster_last_io_seconds_ago:0\r\nmaster_sync_in_progress:0\r\nslave_read_repl_offset:1200\r\nslave_repl_offset:1200\r\nslave_priority:100\r\nconnected_slaves:0\r\nmaster_replid:8f1c\r\nmaster_repl_offset:1200\r\n";

    #[test]
    fn parses_primary_and_replica() {
        let p = parse_info_replication(PRIMARY).unwrap();
        assert_eq!(p.role, Role::Primary);
        assert_eq!((p.offset, p.connected_replicas), (1234, 1));
        let r = parse_info_replication(REPLICA).unwrap();
        assert_eq!(
            r.role,
            Role::Replica {
                master: Endpoint::new("127.0.2.111", 6379),
                link_up: true,
                sync_in_progress: false
            }
        );
        assert_eq!(r.offset, 1200);
        assert_eq!(r.master_last_io_s, Some(0));
    }

    #[test]
    fn a_primary_that_restarted_empty_has_lost_its_history() {
        let before = History {
            replication_id: "8f1c".into(),
            offset: 50_000,
            parent: None,
        };
        let primary = |id: &str, offset: u64| ReplicationInfo {
            role: Role::Primary,
            offset,
            replication_id: id.into(),
            replication_id2: if id == "a0b1" && offset > 50_000 {
                "8f1c".into()
            } else {
                "0000".into()
            },
            replication_id2_until: None,
            connected_replicas: 0,
            master_last_io_s: None,
        };
        let cases = [
            (
                "restarted empty: new id, offset from zero",
                primary("a0b1", 0),
                true,
            ),
            (
                "restarted from an AOF: new id, small offset",
                primary("a0b1", 120),
                true,
            ),
            ("still running", primary("8f1c", 50_100), false),
            (
                "restarted from an RDB with its history",
                primary("8f1c", 50_000),
                false,
            ),
            (
                "promoted: new id, offset continues",
                primary("a0b1", 50_010),
                false,
            ),
        ];
        for (case, now, lost) in cases {
            // A writer that does not continue its history lost it (`failover::writer_state`).
            assert_eq!(!now.continues(&before), lost, "{case}");
        }
    }

    #[test]
    fn rejects_malformed_replies() {
        let cases = [
            ("", InfoParseError::Missing("role")),
            (
                "role:master\r\n",
                InfoParseError::Missing("master_repl_offset"),
            ),
            (
                "role:sentinel\r\n",
                InfoParseError::Invalid {
                    field: "role",
                    value: "sentinel".into(),
                },
            ),
            (
                "role:master\r\nmaster_repl_offset:-1\r\n",
                InfoParseError::Invalid {
                    field: "master_repl_offset",
                    value: "-1".into(),
                },
            ),
            (
                "role:slave\r\nmaster_host:h\r\nmaster_port:70000\r\n",
                InfoParseError::Invalid {
                    field: "master_port",
                    value: "70000".into(),
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_info_replication(text), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn a_promoted_nodes_history_names_the_one_it_continued_and_up_to_where() {
        let promoted = "# Replication\r\nrole:master\r\nmaster_replid:r\r\nmaster_replid2:p\r\nmaster_repl_offset:100\r\nsecond_repl_offset:61\r\n";
        let history = parse_info_replication(promoted).unwrap().history();
        assert_eq!(
            history.parent,
            Some(ParentHistory {
                replication_id: "p".into(),
                until: 61
            })
        );
        let never = "# Replication\r\nrole:master\r\nmaster_replid:r\r\nmaster_replid2:0000000000000000000000000000000000000000\r\nmaster_repl_offset:100\r\nsecond_repl_offset:-1\r\n";
        assert_eq!(
            parse_info_replication(never).unwrap().history().parent,
            None
        );
    }
}
