//! Valkey cluster mode: a cluster's shards read from `CLUSTER SHARDS` on any node — which slots
//! each shard serves, its primary and replicas, their replication offsets and health.

use redis::Value;
use valkey_dr_core::Endpoint;
pub use valkey_dr_core::cluster::{NodeHealth, SLOTS, Shard, ShardNode, ShardRole};
use valkey_dr_core::observation::FailureKind;

use crate::{EngineError, ValkeyEngine, error};

/// Why a `CLUSTER SHARDS` reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected CLUSTER SHARDS reply: {0}")]
pub struct ShardsError(String);

/// The shards in a `CLUSTER SHARDS` reply (RESP2 flat arrays or RESP3 maps alike).
pub fn parse_shards(reply: &Value) -> Result<Vec<Shard>, ShardsError> {
    let bad = |what: &str| ShardsError(what.to_string());
    let Value::Array(shards) = reply else {
        return Err(bad("not an array of shards"));
    };
    shards
        .iter()
        .map(|shard| {
            let fields = fields(shard).ok_or_else(|| bad("a shard is not a map"))?;
            let slots = match field(&fields, "slots") {
                Some(Value::Array(bounds)) => bounds
                    .chunks(2)
                    .map(|pair| match pair {
                        [start, end] => Some(slot(start)?..=slot(end)?),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("slots are not pairs of slot numbers"))?,
                _ => return Err(bad("a shard without slots")),
            };
            let nodes = match field(&fields, "nodes") {
                Some(Value::Array(nodes)) => nodes
                    .iter()
                    .map(|n| node(n).ok_or_else(|| bad("a node without id, ip, port or role")))
                    .collect::<Result<Vec<_>, _>>()?,
                _ => return Err(bad("a shard without nodes")),
            };
            Ok(Shard { slots, nodes })
        })
        .collect()
}

fn node(value: &Value) -> Option<ShardNode> {
    let fields = fields(value)?;
    let text = |key| field(&fields, key).and_then(string);
    let number = |key| field(&fields, key).and_then(integer);
    let port = number("tls-port").or_else(|| number("port"))?;
    Some(ShardNode {
        id: text("id")?,
        endpoint: Endpoint::new(&text("ip")?, u16::try_from(port).ok()?),
        role: match text("role")?.as_str() {
            "master" | "primary" => ShardRole::Primary,
            "replica" | "slave" => ShardRole::Replica,
            _ => return None,
        },
        replication_offset: number("replication-offset").unwrap_or(0).max(0) as u64,
        health: match text("health").as_deref() {
            Some("fail" | "failed") => NodeHealth::Failed,
            Some("loading") => NodeHealth::Loading,
            _ => NodeHealth::Online,
        },
    })
}

/// A map as (key, value) pairs: RESP3 maps, or RESP2's flat arrays of alternating keys and values.
fn fields(value: &Value) -> Option<Vec<(String, &Value)>> {
    match value {
        Value::Map(pairs) => pairs.iter().map(|(k, v)| Some((string(k)?, v))).collect(),
        Value::Array(flat) if flat.len() % 2 == 0 => flat
            .chunks(2)
            .map(|pair| Some((string(&pair[0])?, &pair[1])))
            .collect(),
        _ => None,
    }
}

fn field<'v>(fields: &[(String, &'v Value)], key: &str) -> Option<&'v Value> {
    fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

fn string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => string(other)?.parse().ok(),
    }
}

fn slot(value: &Value) -> Option<u16> {
    integer(value)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| u32::from(*n) < SLOTS)
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

    /// The cluster's shards as `node` sees them.
    pub async fn cluster_shards(&self, node: &Endpoint) -> Result<Vec<Shard>, EngineError> {
        let reply: Value = self
            .run(node, "CLUSTER SHARDS", redis::cmd("CLUSTER").arg("SHARDS"))
            .await?;
        parse_shards(&reply).map_err(|e| error(node, "CLUSTER SHARDS", FailureKind::Unusable, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn node_value(id: &str, port: i64, role: &str, offset: i64, health: &str) -> Value {
        Value::Array(vec![
            bulk("id"),
            bulk(id),
            bulk("port"),
            Value::Int(port),
            bulk("ip"),
            bulk("127.0.0.1"),
            bulk("endpoint"),
            bulk("127.0.0.1"),
            bulk("role"),
            bulk(role),
            bulk("replication-offset"),
            Value::Int(offset),
            bulk("health"),
            bulk(health),
        ])
    }

    #[test]
    fn a_resp2_reply_reads_as_shards_and_a_malformed_one_is_an_error() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("slots"),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Int(16000),
                Value::Int(16383),
            ]),
            bulk("nodes"),
            Value::Array(vec![
                node_value("a", 7000, "master", 1200, "online"),
                node_value("b", 7003, "replica", 1100, "loading"),
            ]),
        ])]);
        let shards = parse_shards(&reply).unwrap();
        assert_eq!(shards.len(), 1);
        assert_eq!(shards[0].slots, vec![0..=5460, 16000..=16383]);
        assert_eq!(shards[0].slot_count(), 5461 + 384);
        let primary = shards[0].primary().unwrap();
        assert_eq!(primary.endpoint, Endpoint::new("127.0.0.1", 7000));
        assert_eq!(primary.replication_offset, 1200);
        assert_eq!(shards[0].nodes[1].role, ShardRole::Replica);
        assert_eq!(shards[0].nodes[1].health, NodeHealth::Loading);

        for bad in [
            Value::Int(3),
            Value::Array(vec![Value::Array(vec![
                bulk("nodes"),
                Value::Array(vec![]),
            ])]),
            Value::Array(vec![Value::Array(vec![
                bulk("slots"),
                Value::Array(vec![Value::Int(0), Value::Int(20_000)]),
                bulk("nodes"),
                Value::Array(vec![]),
            ])]),
            Value::Array(vec![Value::Array(vec![
                bulk("slots"),
                Value::Array(vec![]),
                bulk("nodes"),
                Value::Array(vec![node_value("a", 7000, "arbiter", 0, "online")]),
            ])]),
        ] {
            assert!(parse_shards(&bad).is_err(), "{bad:?}");
        }
    }
}
