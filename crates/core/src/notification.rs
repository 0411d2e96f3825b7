//! Notifications that wake the reconciler on AWS: ElastiCache events delivered through SNS (in
//! both formats seen in the wild), EventBridge schedules and direct invocations.
//!
//! A notification never says where the writer is: it only causes a reconcile, which asks
//! ElastiCache. So the parser's job is to tell "something happened" from "not for us", and to keep
//! the event name and group for the log. Anything unrecognised is `Ignored` with a reason, never
//! an error: SNS must not retry it forever.

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notification {
    /// An ElastiCache event (any name: reconcile decides) about a replication group or cluster.
    #[serde(rename = "elasticache")]
    ElastiCache { event: String, source: String },
    /// A scheduled reconcile (EventBridge).
    Schedule,
    /// `{"action":"reconcile"}` invoked directly.
    Reconcile,
    /// Not something to act on; logged with the reason.
    Ignored { reason: String },
}

/// Parses a Lambda input event. An SNS event may carry several records: one notification each.
pub fn parse(event: &Value) -> Vec<Notification> {
    if let Some(records) = event.get("Records").and_then(Value::as_array) {
        return records.iter().map(parse_sns_record).collect();
    }
    // SNS delivering to an HTTP(S) subscriber posts the message envelope itself.
    match event.get("Type").and_then(Value::as_str) {
        Some("Notification") => {
            return vec![match event.get("Message").and_then(Value::as_str) {
                Some(message) => parse_sns_message(message),
                None => ignored("SNS notification without a message".into()),
            }];
        }
        Some(other) if event.get("TopicArn").is_some() => {
            return vec![ignored(format!("SNS {} message", truncate(other)))];
        }
        _ => {}
    }
    if event.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event") {
        return vec![Notification::Schedule];
    }
    match event.get("action").and_then(Value::as_str) {
        Some("reconcile") => vec![Notification::Reconcile],
        Some(other) => vec![ignored(format!("unknown action \"{}\"", truncate(other)))],
        None => vec![ignored("not an SNS, schedule or action event".into())],
    }
}

fn ignored(reason: String) -> Notification {
    Notification::Ignored { reason }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

fn parse_sns_record(record: &Value) -> Notification {
    let Some(message) = record.pointer("/Sns/Message").and_then(Value::as_str) else {
        return ignored("SNS record without a message".into());
    };
    parse_sns_message(message)
}

/// One SNS message: `ElastiCache:FailoverComplete : my-group` or
/// `{"ElastiCache:FailoverComplete":"my-group"}` (possibly with several keys).
pub fn parse_sns_message(message: &str) -> Notification {
    let message = message.trim();
    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(message) {
        return match map.iter().find(|(k, _)| k.starts_with("ElastiCache:")) {
            Some((event, source)) => Notification::ElastiCache {
                event: truncate(event),
                source: truncate(source.as_str().unwrap_or_default()),
            },
            None => ignored("JSON message without an ElastiCache event".into()),
        };
    }
    match message
        .split_once(':')
        .filter(|(service, _)| *service == "ElastiCache")
    {
        Some((_, rest)) => {
            let (name, source) = rest.split_once(':').unwrap_or((rest, ""));
            Notification::ElastiCache {
                event: truncate(&format!("ElastiCache:{}", name.trim())),
                source: truncate(source.trim()),
            }
        }
        None => ignored("message is not an ElastiCache notification".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sns(message: &str) -> Value {
        json!({ "Records": [{ "EventSource": "aws:sns", "Sns": { "Message": message } }] })
    }

    fn elasticache(event: &str, source: &str) -> Notification {
        Notification::ElastiCache {
            event: event.into(),
            source: source.into(),
        }
    }

    #[test]
    fn table() {
        let cases: Vec<(&str, Value, Vec<Notification>)> = vec![
            (
                "plain text",
                sns("ElastiCache:FailoverComplete : valkey-dr-east-2"),
                vec![elasticache(
                    "ElastiCache:FailoverComplete",
                    "valkey-dr-east-2",
                )],
            ),
            (
                "JSON object keyed by event name",
                sns(r#"{"ElastiCache:ReplicationGroupPromotedAsPrimary":"valkey-dr-east-2"}"#),
                vec![elasticache(
                    "ElastiCache:ReplicationGroupPromotedAsPrimary",
                    "valkey-dr-east-2",
                )],
            ),
            (
                "SNS test message",
                sns("hello"),
                vec![ignored("message is not an ElastiCache notification".into())],
            ),
            (
                "JSON of another service",
                sns(r#"{"AutoScaling":"x"}"#),
                vec![ignored("JSON message without an ElastiCache event".into())],
            ),
            (
                "two records",
                json!({ "Records": [
                    { "Sns": { "Message": "ElastiCache:CacheNodeReplaceStarted : g" } },
                    { "Sns": {} }
                ]}),
                vec![
                    elasticache("ElastiCache:CacheNodeReplaceStarted", "g"),
                    ignored("SNS record without a message".into()),
                ],
            ),
            (
                "SNS HTTP delivery",
                json!({ "Type": "Notification", "TopicArn": "arn:t", "Message": "ElastiCache:FailoverComplete : g2" }),
                vec![elasticache("ElastiCache:FailoverComplete", "g2")],
            ),
            (
                "SNS HTTP subscription confirmation",
                json!({ "Type": "SubscriptionConfirmation", "TopicArn": "arn:t", "SubscribeURL": "https://x" }),
                vec![ignored("SNS SubscriptionConfirmation message".into())],
            ),
            (
                "schedule",
                json!({ "source": "aws.events", "detail-type": "Scheduled Event" }),
                vec![Notification::Schedule],
            ),
            (
                "direct",
                json!({ "action": "reconcile" }),
                vec![Notification::Reconcile],
            ),
            (
                "unknown action",
                json!({ "action": "drop-tables" }),
                vec![ignored("unknown action \"drop-tables\"".into())],
            ),
            (
                "anything else",
                json!([1, 2, 3]),
                vec![ignored("not an SNS, schedule or action event".into())],
            ),
        ];
        for (name, event, expected) in cases {
            assert_eq!(parse(&event), expected, "{name}");
        }
    }
}
