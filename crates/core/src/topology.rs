//! The configured shape of the system: regions and their nodes, addressed by index.

pub use crate::endpoint::Endpoint;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub usize);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RegionId(pub usize);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub id: RegionId,
    pub name: String,
    pub nodes: Vec<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: NodeId,
    pub region: RegionId,
    pub endpoint: Endpoint,
    /// Address used by nodes of another region to replicate from this one.
    pub replication_address: BTreeMap<RegionId, Endpoint>,
    /// Where the controller talks to this node (usually `endpoint`).
    pub control_endpoint: Endpoint,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub regions: Vec<Region>,
    pub nodes: Vec<Node>,
    /// Where the writer lives when no epoch has been recorded yet.
    pub bootstrap_region: RegionId,
}

impl Topology {
    /// Builds the topology of a validated config.
    pub fn from_config(config: &Config) -> Topology {
        let region_id = |name: &str| {
            RegionId(
                config
                    .regions
                    .iter()
                    .position(|r| r.name == name)
                    .expect("validated config names only known regions"),
            )
        };
        let mut regions = Vec::new();
        let mut nodes = Vec::new();
        for (r, region) in config.regions.iter().enumerate() {
            let mut ids = Vec::new();
            for node in &region.nodes {
                let id = NodeId(nodes.len());
                ids.push(id);
                let endpoint = Endpoint::new(&node.host, node.port);
                nodes.push(Node {
                    id,
                    region: RegionId(r),
                    control_endpoint: node
                        .controller_address
                        .as_deref()
                        .map(|a| Endpoint::parse(a).expect("validated address"))
                        .unwrap_or_else(|| endpoint.clone()),
                    endpoint,
                    replication_address: node
                        .replication_address
                        .iter()
                        .map(|(from, address)| {
                            (
                                region_id(from),
                                Endpoint::parse(address).expect("validated address"),
                            )
                        })
                        .collect(),
                });
            }
            regions.push(Region {
                id: RegionId(r),
                name: region.name.clone(),
                nodes: ids,
            });
        }
        Topology {
            regions,
            nodes,
            bootstrap_region: region_id(&config.primary_region),
        }
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }

    pub fn region(&self, id: RegionId) -> &Region {
        &self.regions[id.0]
    }

    pub fn region_of(&self, id: NodeId) -> &Region {
        self.region(self.node(id).region)
    }

    pub fn region_by_name(&self, name: &str) -> Option<RegionId> {
        self.regions.iter().find(|r| r.name == name).map(|r| r.id)
    }

    pub fn node_by_endpoint(&self, endpoint: &Endpoint) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|n| &n.endpoint == endpoint)
            .map(|n| n.id)
    }

    /// The node a replica's reported master address stands for: its own address or one of the
    /// addresses other regions use to reach it.
    pub fn node_by_any_address(&self, endpoint: &Endpoint) -> Option<NodeId> {
        self.node_by_endpoint(endpoint).or_else(|| {
            self.nodes
                .iter()
                .find(|n| n.replication_address.values().any(|a| a == endpoint))
                .map(|n| n.id)
        })
    }

    /// The address `replica` must use to replicate from `source`.
    pub fn replication_endpoint(&self, source: NodeId, replica: NodeId) -> Endpoint {
        let source = self.node(source);
        let from = self.node(replica).region;
        if from == source.region {
            return source.endpoint.clone();
        }
        source
            .replication_address
            .get(&from)
            .cloned()
            .unwrap_or_else(|| source.endpoint.clone())
    }

    /// A human name for a node: its address.
    pub fn node_name(&self, id: NodeId) -> String {
        self.node(id).endpoint.to_string()
    }
}
