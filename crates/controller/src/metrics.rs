//! Prometheus metrics (OpenMetrics text on `/metrics`). Gauges describe the topology as a fresh
//! status snapshot shows it at scrape time; counters and histograms count what the event stream
//! reports (every failover, switchover, fencing action and DNS change is an event) and how long
//! passes and probes take. Labels are bounded: regions, nodes and record names come from the
//! configuration, kinds and results from fixed sets.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry, Unit};
use serde_json::Value;

use crate::events::EventKind;
use crate::status::Status;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    region: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeRoleLabels {
    region: String,
    node: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    name: String,
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailoverLabels {
    kind: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    epoch: Gauge,
    leader: Gauge,
    data_loss_suspected: Gauge,
    dns_answering: Gauge,
    node_up: Family<NodeLabels, Gauge>,
    node_info: Family<NodeRoleLabels, Gauge>,
    offset: Family<NodeLabels, Gauge>,
    lag_bytes: Family<NodeLabels, Gauge>,
    lag_seconds: Family<NodeLabels, FloatGauge>,
    link_up: Family<NodeLabels, Gauge>,
    dns_target: Family<TargetLabels, Gauge>,
    dns_changes: Family<ResultLabels, Counter>,
    failovers: Family<FailoverLabels, Counter>,
    fencing: Family<KindLabels, Counter>,
    webhook_deliveries: Family<ResultLabels, Counter>,
    last_failover: FloatGauge,
    switchover_gap: Histogram,
    failover_duration: Histogram,
    probe_duration: Histogram,
    pass_duration: Histogram,
}

/// Buckets in seconds from 1 ms to ~65 s (doubling).
fn seconds_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Registers `metric` under `name` (with its unit suffix when it has one) and hands it back.
fn add<M: Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    metric: M,
) -> M {
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, metric.clone()),
        None => registry.register(name, help, metric.clone()),
    }
    metric
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("valkey_dr");
        let seconds = || Histogram::new(seconds_buckets());
        let (bytes, secs) = (Some(Unit::Bytes), Some(Unit::Seconds));
        Metrics {
            epoch: add(
                &mut r,
                "epoch",
                "The epoch in force (rises with every promotion)",
                None,
                Gauge::default(),
            ),
            leader: add(
                &mut r,
                "leader",
                "1 while this controller decides (always 1 for a single controller)",
                None,
                Gauge::default(),
            ),
            data_loss_suspected: add(
                &mut r,
                "data_loss_suspected",
                "1 while a writer came back without its data and nobody acknowledged it",
                None,
                Gauge::default(),
            ),
            dns_answering: add(
                &mut r,
                "dns_answering",
                "0 while this site's DNS server answers SERVFAIL for the names: its copy of the records is not loaded, or etcd has not vouched for it within a lease TTL",
                None,
                Gauge::default(),
            ),
            node_up: add(
                &mut r,
                "node_up",
                "1 when the node answers",
                None,
                Family::default(),
            ),
            node_info: add(
                &mut r,
                "node_info",
                "The node's role (primary, replica or unreachable) as a label; value 1",
                None,
                Family::default(),
            ),
            offset: add(
                &mut r,
                "replication_offset",
                "The node's replication offset",
                bytes.clone(),
                Family::default(),
            ),
            lag_bytes: add(
                &mut r,
                "replication_lag",
                "How far the replica is behind the writer",
                bytes,
                Family::default(),
            ),
            lag_seconds: add(
                &mut r,
                "replication_lag",
                "Age of the newest writer heartbeat the replica has applied (0 when caught up)",
                secs.clone(),
                Family::default(),
            ),
            link_up: add(
                &mut r,
                "master_link_up",
                "1 when the replica's link to its primary is up",
                None,
                Family::default(),
            ),
            dns_target: add(
                &mut r,
                "dns_target_info",
                "Where each managed name leads; value 1",
                None,
                Family::default(),
            ),
            dns_changes: add(
                &mut r,
                "dns_changes",
                "DNS changes by result (applied, conflict, failed)",
                None,
                Family::default(),
            ),
            failovers: add(
                &mut r,
                "failovers",
                "Failovers and switchovers by kind and result (started, completed, failed)",
                None,
                Family::default(),
            ),
            fencing: add(
                &mut r,
                "fencing_actions",
                "Fencing actions by kind (demote, region_pause)",
                None,
                Family::default(),
            ),
            webhook_deliveries: add(
                &mut r,
                "webhook_deliveries",
                "Webhook deliveries by result (delivered, retried, failed, dropped)",
                None,
                Family::default(),
            ),
            last_failover: add(
                &mut r,
                "last_failover_timestamp",
                "When the last failover or switchover started (Unix time)",
                secs.clone(),
                FloatGauge::default(),
            ),
            switchover_gap: add(
                &mut r,
                "switchover_write_gap",
                "How long a switchover paused writes",
                secs.clone(),
                seconds(),
            ),
            failover_duration: add(
                &mut r,
                "failover_duration",
                "From the first failed probe of the writer to the DNS change committed",
                secs.clone(),
                seconds(),
            ),
            probe_duration: add(
                &mut r,
                "probe_duration",
                "One observation of every node",
                secs.clone(),
                seconds(),
            ),
            pass_duration: add(
                &mut r,
                "reconcile_pass_duration",
                "One reconcile pass",
                secs,
                seconds(),
            ),
            registry: r,
        }
    }

    /// The gauges from a status snapshot (every series is rewritten: a node's old role goes).
    pub fn set_status(&self, status: &Status) {
        self.epoch.set(status.epoch.unwrap_or(0) as i64);
        self.leader.set(
            status
                .coordination
                .as_ref()
                .map_or(1, |c| i64::from(c.is_leader)),
        );
        self.data_loss_suspected
            .set(i64::from(status.data_loss_suspected.is_some()));
        self.dns_answering.set(
            status
                .coordination
                .as_ref()
                .map_or(1, |c| i64::from(c.dns_answering)),
        );
        self.node_info.clear();
        self.link_up.clear();
        self.lag_bytes.clear();
        self.lag_seconds.clear();
        self.offset.clear();
        for node in &status.nodes {
            let labels = NodeLabels {
                region: node.region.clone(),
                node: node.node.clone(),
            };
            self.node_up
                .get_or_create(&labels)
                .set(i64::from(node.role != "unreachable"));
            self.node_info
                .get_or_create(&NodeRoleLabels {
                    region: node.region.clone(),
                    node: node.node.clone(),
                    role: node.role.clone(),
                })
                .set(1);
            if let Some(offset) = node.offset {
                self.offset.get_or_create(&labels).set(offset as i64);
            }
            if let Some(link) = &node.link {
                self.link_up
                    .get_or_create(&labels)
                    .set(i64::from(link == "up"));
            }
            if let Some(lag) = node.lag_bytes {
                self.lag_bytes.get_or_create(&labels).set(lag as i64);
            }
            if let Some(lag) = node.lag_ms {
                self.lag_seconds
                    .get_or_create(&labels)
                    .set(lag as f64 / 1000.0);
            }
        }
        self.dns_target.clear();
        for record in status.dns.iter().filter(|r| r.rtype != "TXT") {
            for value in &record.values {
                self.dns_target
                    .get_or_create(&TargetLabels {
                        name: record.name.clone(),
                        target: value.clone(),
                    })
                    .set(1);
            }
        }
    }
}

impl crate::events::EventObserver for Metrics {
    /// Counts what an event reports. Kinds are matched exactly; others count nothing.
    fn on_event(&self, kind: EventKind, event: &Value) {
        let count = |family: &Family<FailoverLabels, Counter>, kind: &str, result: &str| {
            family
                .get_or_create(&FailoverLabels {
                    kind: kind.into(),
                    result: result.into(),
                })
                .inc();
        };
        let failover_kind = || event["kind"].as_str().unwrap_or("unknown").to_string();
        let seconds = |field: &str| event[field].as_f64().map(|ms| ms / 1000.0);
        match kind {
            EventKind::DnsApplied => {
                self.dns_changes
                    .get_or_create(&result("applied"))
                    .inc_by(event["changes"].as_u64().unwrap_or(1));
            }
            EventKind::DnsApplyFailed => {
                self.dns_changes.get_or_create(&result("failed")).inc();
            }
            EventKind::DnsConflict => {
                let conflicts = event["conflicts"].as_array().map_or(1, |c| c.len() as u64);
                self.dns_changes
                    .get_or_create(&result("conflict"))
                    .inc_by(conflicts);
            }
            EventKind::FailoverStarted => {
                count(&self.failovers, &failover_kind(), "started");
                self.last_failover
                    .set(crate::clock::now_ms() as f64 / 1000.0);
            }
            EventKind::FailoverCompleted => {
                count(&self.failovers, &failover_kind(), "completed");
                if let Some(s) = seconds("duration_ms") {
                    self.failover_duration.observe(s);
                }
            }
            EventKind::FailoverFailed => count(&self.failovers, &failover_kind(), "failed"),
            EventKind::PromotionStarted => {
                count(&self.failovers, "switchover", "started");
                self.last_failover
                    .set(crate::clock::now_ms() as f64 / 1000.0);
            }
            EventKind::PromotionDone => {
                count(&self.failovers, "switchover", "completed");
                if let Some(s) = seconds("write_pause_ms") {
                    self.switchover_gap.observe(s);
                }
            }
            EventKind::PromotionFailed => count(&self.failovers, "switchover", "failed"),
            EventKind::Fenced => {
                self.fencing.get_or_create(&kind_label("demote")).inc();
            }
            EventKind::SelfFenced => {
                self.fencing
                    .get_or_create(&kind_label("region_pause"))
                    .inc();
            }
            _ => {}
        }
    }
}

impl Metrics {
    pub fn webhook(&self, outcome: &str) {
        self.webhook_deliveries
            .get_or_create(&result(outcome))
            .inc();
    }

    pub fn pass_finished(&self, elapsed: Duration) {
        self.pass_duration.observe(elapsed.as_secs_f64());
    }

    pub fn probed(&self, elapsed: Duration) {
        self.probe_duration.observe(elapsed.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

fn result(result: &str) -> ResultLabels {
    ResultLabels {
        result: result.into(),
    }
}

fn kind_label(kind: &str) -> KindLabels {
    KindLabels { kind: kind.into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventObserver;
    use serde_json::json;

    #[test]
    fn events_are_counted_by_kind_and_result() {
        let metrics = Metrics::new();
        let events = [
            (EventKind::PromotionStarted, json!({})),
            (EventKind::PromotionDone, json!({ "write_pause_ms": 42.0 })),
            (EventKind::FailoverStarted, json!({ "kind": "in_region" })),
            (
                EventKind::FailoverCompleted,
                json!({ "kind": "in_region", "duration_ms": 1800 }),
            ),
            (EventKind::Fenced, json!({})),
            (EventKind::DnsApplied, json!({ "changes": 2 })),
            (EventKind::DnsConflict, json!({ "conflicts": [1, 2, 3] })),
            (EventKind::Analysis, json!({})),
        ];
        for (kind, event) in &events {
            metrics.on_event(*kind, event);
        }
        let text = metrics.encode();
        for expected in [
            "valkey_dr_failovers_total{kind=\"switchover\",result=\"completed\"} 1",
            "valkey_dr_failovers_total{kind=\"in_region\",result=\"started\"} 1",
            "valkey_dr_failovers_total{kind=\"in_region\",result=\"completed\"} 1",
            "valkey_dr_fencing_actions_total{kind=\"demote\"} 1",
            "valkey_dr_dns_changes_total{result=\"applied\"} 2",
            "valkey_dr_dns_changes_total{result=\"conflict\"} 3",
            "valkey_dr_switchover_write_gap_seconds_sum 0.042",
            "valkey_dr_failover_duration_seconds_sum 1.8",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "OpenMetrics: {text}");
    }

    #[test]
    fn every_metric_the_alert_rules_and_the_dashboard_name_is_exposed() {
        // The rules and the dashboard operators load must not name a metric that does not exist
        // (a typo there is an alert that never fires, a panel that stays empty). Counters are
        // exposed as `<family>_total`, histograms as `<family>_bucket|_sum|_count`.
        let rules = concat!(
            include_str!("../../../deploy/prometheus/rules.yml"),
            include_str!("../../../deploy/grafana/valkey-dr.json")
        );
        // A family appears once it has a sample: one node of each role, one event of each kind.
        let metrics = Metrics::new();
        let status: Status = serde_json::from_value(json!({
            "epoch": 2, "primary": "10.0.2.1:6379", "primary_region": "us-east-2",
            "findings": ["healthy"], "dns": [],
            "nodes": [
                { "region": "us-east-2", "node": "10.0.2.1:6379", "role": "primary",
                  "follows": null, "link": null, "lag_bytes": null, "lag_ms": null,
                  "offset": 100, "keys": 1, "error": null },
                { "region": "us-east-1", "node": "10.0.1.1:6379", "role": "replica",
                  "follows": "10.0.2.1:6379", "link": "up", "lag_bytes": 0, "lag_ms": 0,
                  "offset": 100, "keys": 1, "error": null },
            ],
        }))
        .expect("a status");
        metrics.set_status(&status);
        for (kind, event) in [
            (EventKind::PromotionDone, json!({ "write_pause_ms": 42.0 })),
            (
                EventKind::FailoverStarted,
                json!({ "kind": "cross_region" }),
            ),
            (EventKind::Fenced, json!({})),
            (EventKind::DnsApplied, json!({ "changes": 1 })),
        ] {
            metrics.on_event(kind, &event);
        }
        metrics.webhook("failed");
        let text = metrics.encode();
        let mut names: Vec<&str> = rules
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("valkey_dr_"))
            .collect();
        names.sort_unstable();
        names.dedup();
        assert!(names.len() >= 8, "{names:?}");
        for name in names {
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "rules.yml or the dashboard names {name}, which /metrics does not expose:\n{text}"
            );
        }
    }
}
