//! A read-only snapshot for `valkey-dr status`: nodes, roles, links, lag, epoch and DNS.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use valkey_dr_core::analysis::analyze;
use valkey_dr_core::{NodeId, Role};

use crate::Controller;
use crate::clock::now_ms;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub region: String,
    pub node: String,
    /// `primary`, `replica` or `unreachable`.
    pub role: String,
    pub follows: Option<String>,
    /// `up`, `down` or `syncing` for replicas.
    pub link: Option<String>,
    pub lag_bytes: Option<u64>,
    pub lag_ms: Option<u64>,
    /// The node's replication offset, when it answers.
    #[serde(default)]
    pub offset: Option<u64>,
    pub keys: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnsStatus {
    pub name: String,
    pub rtype: String,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub epoch: Option<u64>,
    pub primary: Option<String>,
    pub primary_region: Option<String>,
    pub findings: Vec<String>,
    pub nodes: Vec<NodeStatus>,
    pub dns: Vec<DnsStatus>,
    /// Set when the writer came back without its data and nobody else held it: what was lost, until
    /// an operator runs `ack` or `adopt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_loss_suspected: Option<serde_json::Value>,
    /// The highly available shape: this controller's site and who leads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordination: Option<CoordinationStatus>,
    /// How old the node observations shown are: those of the last pass, unless it is older than
    /// a few passes (then the nodes were asked afresh).
    #[serde(default)]
    pub observed_ms_ago: u64,
    /// The writer's self-fence as this controller last set it (`min-replicas-to-write`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_fence: Option<SelfFenceStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfFenceStatus {
    pub writer: String,
    /// Replicas the writer must hear from within `max_lag_s` to take writes (0: off).
    pub replicas: u32,
    pub max_lag_s: u32,
    /// Losing every replica outside its region makes the writer refuse writes.
    pub armed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoordinationStatus {
    pub site: String,
    pub leader: Option<String>,
    pub is_leader: bool,
    /// True while this site pauses its region's writer (it lost its lease).
    pub fencing: bool,
    /// How old the state shown is: when this site last read it from etcd (a follower; the
    /// leader writes it).
    #[serde(default)]
    pub state_read_ms_ago: Option<u64>,
    /// When etcd last vouched for this site's copy of the records (a read or a watch event).
    #[serde(default)]
    pub records_read_ms_ago: Option<u64>,
    /// False while this site's DNS server answers SERVFAIL for the names: its copy is not loaded
    /// yet, or etcd has not vouched for it within a lease TTL (the name may have moved).
    #[serde(default = "answering")]
    pub dns_answering: bool,
    /// etcd's storage when last checked (every 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<valkey_dr_coord::Storage>,
    /// What an operator must act on before it costs writes: an etcd alarm, a database near its
    /// quota.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

fn answering() -> bool {
    true
}

impl Controller {
    /// What the last pass saw (the nodes observed afresh when no recent pass did) and the DNS
    /// records as they are; changes nothing.
    pub async fn status(&self) -> Status {
        let topology = &self.topology;
        let recent = Duration::from_millis(self.config.controller.reconcile_interval_ms * 3)
            .max(Duration::from_secs(3));
        let last_pass = self.last_pass.borrow().clone();
        let last_seen = last_pass
            .seen
            .clone()
            .filter(|(at, _)| at.elapsed() < recent);
        let (observed_ms_ago, observations) = match last_seen {
            Some((at, observations)) => (at.elapsed().as_millis() as u64, observations),
            None => (0, self.observe_all().await),
        };
        let epoch = self.epoch();
        let analysis = analyze(topology, &observations, epoch.as_ref());
        let writer_info = analysis
            .active_primary
            .and_then(|p| observations.iter().find(|o| o.node == p))
            .and_then(|o| o.info().map(|i| (i.offset, o.heartbeat_ms)));
        let name = |n: NodeId| topology.node_name(n);
        let nodes = observations
            .iter()
            .map(|o| {
                let region = topology.region_of(o.node).name.clone();
                let mut status = NodeStatus {
                    region,
                    node: name(o.node),
                    role: "unreachable".into(),
                    follows: None,
                    link: None,
                    lag_bytes: None,
                    lag_ms: None,
                    offset: o.info().map(|i| i.offset),
                    keys: o.keys,
                    error: o.state.as_ref().err().map(|f| f.reason.clone()),
                };
                if let Ok(info) = &o.state {
                    match &info.role {
                        Role::Primary => status.role = "primary".into(),
                        Role::Replica {
                            master,
                            link_up,
                            sync_in_progress,
                        } => {
                            status.role = "replica".into();
                            status.follows = Some(
                                topology
                                    .node_by_any_address(master)
                                    .map(name)
                                    .unwrap_or_else(|| master.to_string()),
                            );
                            status.link = Some(
                                match (link_up, sync_in_progress) {
                                    (_, true) => "syncing",
                                    (true, _) => "up",
                                    _ => "down",
                                }
                                .into(),
                            );
                            if let Some((writer_offset, _)) = writer_info {
                                let behind = writer_offset.saturating_sub(info.offset);
                                status.lag_bytes = Some(behind);
                                // Caught up means no lag; otherwise the age of the newest
                                // heartbeat the replica has applied.
                                status.lag_ms = if behind == 0 {
                                    Some(0)
                                } else {
                                    o.heartbeat_ms.map(|hb| now_ms().saturating_sub(hb))
                                };
                            }
                        }
                    }
                }
                status
            })
            .collect();
        let records = self
            .dns
            .records(&self.names.all(topology))
            .await
            .unwrap_or_default();
        let data_loss = self.state.get().and_then(|s| s.data_loss);
        let mut findings: Vec<String> = analysis
            .findings
            .iter()
            .map(|f| f.describe(topology))
            .collect();
        // Why nothing moves while the writer does not serve (down, or back without its data):
        // the decision or the withholding reason the last pass reported.
        if let Some(refusal) = &last_pass.writer_refusal {
            findings.push(refusal.clone());
        }
        for waiting in &last_pass.waiting {
            findings.push(format!("waiting: {waiting}"));
        }
        if let Some(loss) = &data_loss {
            findings.insert(
                0,
                format!(
                    "data loss suspected: {} came back without its data (offset {} → {}); run `valkey-dr ack` once handled",
                    loss["node"].as_str().unwrap_or("the writer"),
                    loss["offset_before"],
                    loss["offset"]
                ),
            );
        }
        Status {
            epoch: epoch.map(|e| e.epoch),
            primary: epoch.map(|e| name(e.primary)),
            primary_region: epoch.map(|e| topology.region_of(e.primary).name.clone()),
            findings,
            nodes,
            dns: records
                .into_iter()
                .map(|r| DnsStatus {
                    name: r.name,
                    rtype: r.rtype.to_string(),
                    values: r.values,
                })
                .collect(),
            data_loss_suspected: data_loss,
            observed_ms_ago,
            self_fence: last_pass.self_fence,
            coordination: self.ha().map(|ha| (ha, ha.storage())).map(|(ha, etcd)| {
                CoordinationStatus {
                    site: ha.site().to_string(),
                    leader: ha.leader_site(),
                    is_leader: ha.leader.is_leader(),
                    fencing: ha.fencing(),
                    state_read_ms_ago: ha.state_read_ago().map(|d| d.as_millis() as u64),
                    records_read_ms_ago: ha
                        .records
                        .zone()
                        .confirmed_ago()
                        .map(|d| d.as_millis() as u64),
                    dns_answering: ha.records.zone().is_current(),
                    warnings: etcd
                        .as_ref()
                        .map(|s| s.warnings(ha.config.etcd_quota_bytes()))
                        .into_iter()
                        .flatten()
                        .chain(ha.records_warning())
                        .collect(),
                    etcd,
                }
            }),
        }
    }
}
