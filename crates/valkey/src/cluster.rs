//! Valkey cluster mode: a cluster's shards read from `CLUSTER NODES` on any node — which slots
//! each shard serves, its primary and replicas, their health — with each node's replication
//! offset read from the node itself.
//!
//! Not `CLUSTER SHARDS`: Valkey 8.0 groups that reply by shard id, and right after a takeover
//! a node that changed sides can list the old, slotless primary as the slots' owner and leave
//! the new one out altogether, while its `CLUSTER NODES` is right (seen on 8.0.1, in the
//! region-failover test). `CLUSTER NODES` is each node's own slot table.

use futures::future::join_all;
pub use valkey_dr_core::cluster::{NodeHealth, SLOTS, Shard, ShardNode, ShardRole};
use valkey_dr_core::observation::FailureKind;
use valkey_dr_core::{Endpoint, Engine};

use crate::{EngineError, ValkeyEngine, error};

/// Why a `CLUSTER NODES` reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected CLUSTER NODES line `{line}`: {why}")]
pub struct NodesError {
    line: String,
    why: &'static str,
}

/// The shards in a `CLUSTER NODES` reply: one per primary, with the replicas that name it, in
/// the reply's order. A replica whose primary the reply does not list forms a shard without a
/// primary; a primary that lost its slots (taken over while it was away) a shard without slots.
/// Offsets are 0 and no node answered yet here ([`ValkeyEngine::cluster_shards`] asks them).
pub fn parse_nodes(reply: &str) -> Result<Vec<Shard>, NodesError> {
    struct Line {
        node: ShardNode,
        primary_id: Option<String>,
        slots: Vec<std::ops::RangeInclusive<u16>>,
    }
    let mut lines = Vec::new();
    for line in reply.lines().filter(|l| !l.trim().is_empty()) {
        let bad = |why| NodesError {
            line: line.to_string(),
            why,
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return Err(bad("fewer than 8 fields"));
        }
        // `ip:port@cport[,hostname]`
        let address = fields[1].split(['@', ',']).next().unwrap_or_default();
        let (ip, port) = address
            .rsplit_once(':')
            .and_then(|(ip, port)| Some((ip, port.parse::<u16>().ok()?)))
            .ok_or_else(|| bad("no ip:port"))?;
        let flags: Vec<&str> = fields[2].split(',').collect();
        let role = if flags.contains(&"master") {
            ShardRole::Primary
        } else if flags.contains(&"slave") {
            ShardRole::Replica
        } else {
            // Still in the handshake, or without an address: not a member yet.
            continue;
        };
        let slots = fields[8..]
            .iter()
            // `[slot->-id]` / `[slot-<-id]`: a slot moving between shards.
            .filter(|f| !f.starts_with('['))
            .map(|f| {
                let (start, end) = f.split_once('-').unwrap_or((f, f));
                let slot = |n: &str| n.parse::<u16>().ok().filter(|n| u32::from(*n) < SLOTS);
                Some(slot(start)?..=slot(end)?)
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("a slot that is not a number below 16384"))?;
        lines.push(Line {
            node: ShardNode {
                id: fields[0].to_string(),
                endpoint: Endpoint::new(ip, port),
                role,
                replication_offset: 0,
                health: if flags.contains(&"fail") {
                    NodeHealth::Failed
                } else {
                    NodeHealth::Online
                },
                answered: false,
                automatic_failover: None,
                replica_migration: None,
                replication: None,
                ping_replicas_every_s: None,
                write_quorum: None,
            },
            primary_id: (role == ShardRole::Replica && fields[3] != "-")
                .then(|| fields[3].to_string()),
            slots,
        });
    }
    let mut shards: Vec<(String, Shard)> = lines
        .iter()
        .filter(|l| l.node.role == ShardRole::Primary)
        .map(|l| {
            (
                l.node.id.clone(),
                Shard {
                    slots: l.slots.clone(),
                    nodes: vec![l.node.clone()],
                },
            )
        })
        .collect();
    for line in lines
        .into_iter()
        .filter(|l| l.node.role == ShardRole::Replica)
    {
        let id = line.primary_id.unwrap_or_default();
        match shards.iter_mut().find(|(primary, _)| *primary == id) {
            Some((_, shard)) => shard.nodes.push(line.node),
            None => shards.push((
                id,
                Shard {
                    slots: Vec::new(),
                    nodes: vec![line.node],
                },
            )),
        }
    }
    Ok(shards.into_iter().map(|(_, shard)| shard).collect())
}

/// What the cluster may do with a node by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterNodeSettings {
    /// It may promote the node when its primary fails (`cluster-replica-no-failover no`).
    pub automatic_failover: bool,
    /// It may move the node, as a replica, to a shard left without one
    /// (`cluster-allow-replica-migration yes`).
    pub replica_migration: bool,
    /// How often it pings its replicas, in seconds (`repl-ping-replica-period`); `None` when the
    /// reply does not say.
    pub ping_replicas_every_s: Option<u64>,
    /// Its `min-replicas-to-write` and `min-replicas-max-lag`; `None` when the reply does not say.
    pub write_quorum: Option<valkey_dr_core::self_fence::WriteQuorum>,
}

impl ClusterNodeSettings {
    /// From a `CONFIG GET` reply: name, value pairs in any order.
    fn parse(reply: &[String]) -> Option<Self> {
        let number = |name: &str| -> Option<u64> {
            reply
                .chunks(2)
                .find(|pair| pair[0] == name)
                .and_then(|pair| pair.get(1)?.parse().ok())
        };
        let value = |name: &str| {
            reply
                .chunks(2)
                .find(|pair| pair[0] == name)
                .and_then(|pair| pair.get(1))
                .and_then(|v| match v.as_str() {
                    "yes" => Some(true),
                    "no" => Some(false),
                    _ => None,
                })
        };
        Some(Self {
            automatic_failover: !value("cluster-replica-no-failover")?,
            replica_migration: value("cluster-allow-replica-migration")?,
            ping_replicas_every_s: number("repl-ping-replica-period"),
            write_quorum: number("min-replicas-to-write")
                .zip(number("min-replicas-max-lag"))
                .and_then(|(replicas, max_lag_s)| {
                    Some(valkey_dr_core::self_fence::WriteQuorum {
                        replicas: replicas.try_into().ok()?,
                        max_lag_s: max_lag_s.try_into().ok()?,
                    })
                }),
        })
    }
}

/// What `CLUSTER BUMPEPOCH` did to a node's own config epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochBump {
    /// It is now this epoch, the highest the node knows and its alone.
    Bumped(u64),
    /// It stayed this epoch: already the highest the node knows — which another node may hold
    /// too.
    Still(u64),
}

/// Reads a `CLUSTER BUMPEPOCH` reply: `BUMPED <epoch>` or `STILL <epoch>`.
fn parse_bump(reply: &str) -> Option<EpochBump> {
    let (word, epoch) = reply.trim().split_once(' ')?;
    let epoch = epoch.parse().ok()?;
    match word {
        "BUMPED" => Some(EpochBump::Bumped(epoch)),
        "STILL" => Some(EpochBump::Still(epoch)),
        _ => None,
    }
}

impl ValkeyEngine {
    /// Asks `node`, a replica, to take its shard over with `CLUSTER FAILOVER TAKEOVER`: no
    /// handshake with its primary and no vote, so safe only when that primary is surely fenced
    /// and the replica holds all it acknowledged. Returns once the node accepted the request (the
    /// handover itself follows over the cluster bus).
    pub async fn cluster_takeover(&self, node: &Endpoint) -> Result<(), EngineError> {
        let _: () = self
            .run(
                node,
                "CLUSTER FAILOVER TAKEOVER",
                redis::cmd("CLUSTER").arg("FAILOVER").arg("TAKEOVER"),
            )
            .await?;
        Ok(())
    }

    /// The node's cluster id (`CLUSTER MYID`).
    pub async fn cluster_myid(&self, node: &Endpoint) -> Result<String, EngineError> {
        self.run(node, "CLUSTER MYID", redis::cmd("CLUSTER").arg("MYID"))
            .await
    }

    /// Makes `node` a replica of the node with cluster id `primary` (`CLUSTER REPLICATE`): an old
    /// primary left without slots that did not turn into its successor's replica by itself.
    pub async fn cluster_replicate(
        &self,
        node: &Endpoint,
        primary: &str,
    ) -> Result<(), EngineError> {
        let _: () = self
            .run(
                node,
                "CLUSTER REPLICATE",
                redis::cmd("CLUSTER").arg("REPLICATE").arg(primary),
            )
            .await?;
        Ok(())
    }

    /// Asks `node` to make the cluster's next epoch its own config epoch (`CLUSTER BUMPEPOCH`).
    /// Valkey does so only when the node's own is not already the highest it knows
    /// ([`EpochBump::Still`]) — and TAKEOVER claims the slots under that same rule.
    pub async fn cluster_bump_epoch(&self, node: &Endpoint) -> Result<EpochBump, EngineError> {
        let reply: String = self
            .run(
                node,
                "CLUSTER BUMPEPOCH",
                redis::cmd("CLUSTER").arg("BUMPEPOCH"),
            )
            .await?;
        parse_bump(&reply).ok_or_else(|| {
            error(
                node,
                "CLUSTER BUMPEPOCH",
                FailureKind::Unusable,
                format!("unexpected reply `{reply}`"),
            )
        })
    }

    /// What the cluster may do with `node` by itself (one `CONFIG GET`).
    pub async fn cluster_node_settings(
        &self,
        node: &Endpoint,
    ) -> Result<ClusterNodeSettings, EngineError> {
        const COMMAND: &str = "CONFIG GET cluster-replica-no-failover \
             cluster-allow-replica-migration repl-ping-replica-period min-replicas-to-write \
             min-replicas-max-lag";
        let reply: Vec<String> = self
            .run(
                node,
                COMMAND,
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("cluster-replica-no-failover")
                    .arg("cluster-allow-replica-migration")
                    .arg("repl-ping-replica-period")
                    .arg("min-replicas-to-write")
                    .arg("min-replicas-max-lag"),
            )
            .await?;
        ClusterNodeSettings::parse(&reply).ok_or_else(|| {
            error(
                node,
                COMMAND,
                FailureKind::Unusable,
                format!("unexpected reply {reply:?}"),
            )
        })
    }

    /// Lets the cluster promote `node` by itself when its primary fails, or not
    /// (`CONFIG SET cluster-replica-no-failover`).
    pub async fn set_cluster_automatic_failover(
        &self,
        node: &Endpoint,
        allowed: bool,
    ) -> Result<(), EngineError> {
        let _: () = self
            .run(
                node,
                "CONFIG SET cluster-replica-no-failover",
                redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("cluster-replica-no-failover")
                    .arg(if allowed { "no" } else { "yes" }),
            )
            .await?;
        Ok(())
    }

    /// The cluster's current epoch as `node` knows it (`CLUSTER INFO`): a node that takes a
    /// shard over without a vote claims the next one, so it must know the highest first.
    pub async fn cluster_epoch(&self, node: &Endpoint) -> Result<u64, EngineError> {
        let info: String = self
            .run(node, "CLUSTER INFO", redis::cmd("CLUSTER").arg("INFO"))
            .await?;
        info.lines()
            .find_map(|l| l.trim().strip_prefix("cluster_current_epoch:"))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                error(
                    node,
                    "CLUSTER INFO",
                    FailureKind::Unusable,
                    "no cluster_current_epoch",
                )
            })
    }

    /// The cluster's shards as `node` sees them (`CLUSTER NODES`) and nothing more: no node is
    /// asked for its offset or settings.
    pub async fn cluster_nodes(&self, node: &Endpoint) -> Result<Vec<Shard>, EngineError> {
        let reply: String = self
            .run(node, "CLUSTER NODES", redis::cmd("CLUSTER").arg("NODES"))
            .await?;
        parse_nodes(&reply).map_err(|e| error(node, "CLUSTER NODES", FailureKind::Unusable, e))
    }

    /// The cluster's shards as `node` sees them (`CLUSTER NODES`), each node's offset read from
    /// itself. A node that does not answer is reported so ([`NodeHealth::Unanswered`]) unless
    /// the cluster marks it failed; a replica that has not loaded its primary's data yet, as
    /// loading.
    pub async fn cluster_shards(&self, node: &Endpoint) -> Result<Vec<Shard>, EngineError> {
        let mut shards = self.cluster_nodes(node).await?;
        let nodes: Vec<&mut ShardNode> = shards.iter_mut().flat_map(|s| &mut s.nodes).collect();
        let read = join_all(nodes.iter().map(|n| async {
            futures::join!(
                self.replication(&n.endpoint),
                self.cluster_node_settings(&n.endpoint)
            )
        }))
        .await;
        for (node, (info, settings)) in nodes.into_iter().zip(read) {
            if let Ok(settings) = settings {
                node.automatic_failover = Some(settings.automatic_failover);
                node.replica_migration = Some(settings.replica_migration);
                node.ping_replicas_every_s = settings.ping_replicas_every_s;
                node.write_quorum = settings.write_quorum;
            }
            match info {
                Ok(info) => {
                    node.answered = true;
                    node.replication_offset = info.offset;
                    // A full sync running, or none done yet (a new replica starts at offset 1).
                    let loading = matches!(
                        info.role,
                        valkey_dr_core::Role::Replica {
                            sync_in_progress: true,
                            ..
                        }
                    ) || (node.role == ShardRole::Replica && info.offset <= 1);
                    if loading {
                        node.health = node.health.max(NodeHealth::Loading);
                    }
                    node.replication = Some(info);
                }
                Err(_) => node.health = node.health.max(NodeHealth::Unanswered),
            }
        }
        Ok(valkey_dr_core::cluster::placed_by_their_own_account(shards))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bumpepoch_reply_reads_as_bumped_or_still() {
        for (reply, read) in [
            ("BUMPED 7", Some(EpochBump::Bumped(7))),
            ("STILL 12", Some(EpochBump::Still(12))),
            ("BUMPED", None),
            ("BUMPED x", None),
            ("RAISED 3", None),
            ("", None),
        ] {
            assert_eq!(parse_bump(reply), read, "{reply}");
        }
    }

    #[test]
    fn a_config_get_reply_reads_as_the_nodes_settings_in_any_order() {
        let reply = |pairs: &[&str]| pairs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let settings = |automatic_failover, replica_migration| {
            Some(ClusterNodeSettings {
                automatic_failover,
                replica_migration,
                ping_replicas_every_s: None,
                write_quorum: None,
            })
        };
        for (pairs, read) in [
            (
                &[
                    "cluster-replica-no-failover",
                    "yes",
                    "cluster-allow-replica-migration",
                    "no",
                ][..],
                settings(false, false),
            ),
            (
                &[
                    "cluster-allow-replica-migration",
                    "yes",
                    "cluster-replica-no-failover",
                    "no",
                ],
                settings(true, true),
            ),
            (&["cluster-replica-no-failover", "yes"], None),
            (
                &[
                    "repl-ping-replica-period",
                    "1",
                    "cluster-replica-no-failover",
                    "no",
                    "cluster-allow-replica-migration",
                    "no",
                ],
                Some(ClusterNodeSettings {
                    automatic_failover: true,
                    replica_migration: false,
                    ping_replicas_every_s: Some(1),
                    write_quorum: None,
                }),
            ),
            (
                &[
                    "min-replicas-max-lag",
                    "2",
                    "cluster-replica-no-failover",
                    "no",
                    "min-replicas-to-write",
                    "3",
                    "cluster-allow-replica-migration",
                    "no",
                ],
                Some(ClusterNodeSettings {
                    automatic_failover: true,
                    replica_migration: false,
                    ping_replicas_every_s: None,
                    write_quorum: Some(valkey_dr_core::self_fence::WriteQuorum {
                        replicas: 3,
                        max_lag_s: 2,
                    }),
                }),
            ),
            (
                &[
                    "cluster-replica-no-failover",
                    "maybe",
                    "cluster-allow-replica-migration",
                    "no",
                ],
                None,
            ),
            (&["cluster-replica-no-failover"], None),
            (&[], None),
        ] {
            assert_eq!(ClusterNodeSettings::parse(&reply(pairs)), read, "{pairs:?}");
        }
    }

    #[test]
    fn a_cluster_nodes_reply_reads_as_shards_and_a_malformed_one_is_an_error() {
        // After a takeover while the old primary (a) was away: b took its slots, a is a failed
        // primary without slots, c still follows a; d follows b; e is still in the handshake.
        let reply = "\
b1 127.0.0.1:7003@17003 master - 0 1700000000000 7 connected 0-5460 16000-16383 [5461->-f00]
a0 127.0.0.1:7000@17000,east-a master,fail - 1700000000000 1700000000000 1 disconnected
c2 127.0.0.1:7006@17006 slave,fail a0 1700000000000 1700000000000 1 disconnected
d3 127.0.0.1:7009@17009 myself,slave b1 0 0 7 connected
e4 127.0.0.1:7010@17010 handshake - 0 0 0 connected
";
        let shards = parse_nodes(reply).unwrap();
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[0].slots, vec![0..=5460, 16000..=16383]);
        assert_eq!(shards[0].slot_count(), 5461 + 384);
        let primary = shards[0].primary().unwrap();
        assert_eq!(primary.endpoint, Endpoint::new("127.0.0.1", 7003));
        assert_eq!(shards[0].nodes[1].id, "d3");
        assert_eq!(shards[0].nodes[1].role, ShardRole::Replica);
        assert_eq!(shards[1].slot_count(), 0, "the old primary lost its slots");
        assert_eq!(shards[1].nodes[0].health, NodeHealth::Failed);
        assert_eq!(shards[1].nodes[1].id, "c2");

        for bad in [
            "a0 127.0.0.1:7000@17000 master",
            "a0 nowhere master - 0 0 1 connected",
            "a0 127.0.0.1:7000@17000 master - 0 0 1 connected 0-20000",
        ] {
            assert!(parse_nodes(bad).is_err(), "{bad}");
        }
    }
}
