//! `analyze`: names the situation of a topology from one round of observations.
//!
//! Pure: the same observations and epoch record always give the same analysis.

use serde::{Deserialize, Serialize};

use crate::observation::NodeObservation;
use crate::topology::{Endpoint, NodeId, RegionId, Topology};

/// The controller's record of who the writer is: only this node may be the global DNS target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Raised by every promotion.
    pub epoch: u64,
    pub primary: NodeId,
}

/// The highest epoch taken from marks on the nodes: a mark is data-plane input that any client
/// can write, so a value near the top of the range (which would leave no room for promotions)
/// is never believed.
pub const MAX_EPOCH: u64 = 1 << 48;

impl EpochRecord {
    /// The epoch of the next promotion, to `primary`; `None` past [`MAX_EPOCH`].
    pub fn next(&self, primary: NodeId) -> Option<EpochRecord> {
        let epoch = self.epoch.checked_add(1).filter(|e| *e <= MAX_EPOCH)?;
        Some(EpochRecord { epoch, primary })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "finding", rename_all = "snake_case")]
pub enum Finding {
    /// Every node reachable, one writer, every replica following the node it should.
    Healthy,
    /// A node other than the writer does not answer probes.
    NodeDown { node: NodeId },
    /// The writer of the current epoch does not answer probes.
    PrimaryNodeDown { node: NodeId },
    /// Nobody that may take writes does: no epoch writer with `role:master`.
    NoWritablePrimary,
    /// Several nodes take writes and no epoch says which one is right: only an operator can decide.
    SplitBrain { masters: Vec<NodeId> },
    /// A node reports `role:master` but is not the writer of the current epoch (a stale old primary,
    /// an empty node restarted without persistence). Never a DNS target.
    RogueMaster { node: NodeId },
    /// A replica whose link to its master is down.
    ReplicaLinkDown { node: NodeId },
    /// A replica following another node than the topology wants.
    ReplicaMisdirected {
        node: NodeId,
        follows: Endpoint,
        expected: NodeId,
    },
}

impl Finding {
    /// One line for people: the situation and the nodes by address.
    pub fn describe(&self, topology: &Topology) -> String {
        let name = |n: &NodeId| topology.node_name(*n);
        match self {
            Finding::Healthy => "healthy".into(),
            Finding::NodeDown { node } => format!("node down: {}", name(node)),
            Finding::PrimaryNodeDown { node } => format!("primary node down: {}", name(node)),
            Finding::NoWritablePrimary => "no writable primary".into(),
            Finding::SplitBrain { masters } => format!(
                "split brain: {} all report role:master and no epoch decides; run `valkey-dr adopt <region>`",
                masters.iter().map(name).collect::<Vec<_>>().join(", ")
            ),
            Finding::RogueMaster { node } => format!(
                "rogue master (not the epoch's writer, never a DNS target): {}",
                name(node)
            ),
            Finding::ReplicaLinkDown { node } => format!("replication link down: {}", name(node)),
            Finding::ReplicaMisdirected {
                node,
                follows,
                expected,
            } => {
                format!(
                    "{} follows {follows} instead of {}",
                    name(node),
                    name(expected)
                )
            }
        }
    }
}

/// The outcome of [`analyze`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Analysis {
    pub findings: Vec<Finding>,
    /// The writer of the current epoch, when it is reachable and reports `role:master`: the only
    /// node the global name may lead to.
    pub active_primary: Option<NodeId>,
    /// Per region (indexed by `RegionId`): the node that heads it — the writer in the primary region,
    /// the node replicating across regions elsewhere.
    pub heads: Vec<Option<NodeId>>,
    /// Per region: healthy replicas that serve reads (the head when there is no other).
    pub readers: Vec<Vec<NodeId>>,
    /// For each reachable node that should replicate: the node it should follow.
    pub sources: Vec<(NodeId, NodeId)>,
}

impl Analysis {
    pub fn is_healthy(&self) -> bool {
        self.findings == [Finding::Healthy]
    }
}

/// Why no writer could be adopted when there is no epoch record yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootstrapError {
    #[error("no node reports role:master")]
    NoMaster,
    #[error("{0} nodes report role:master; adopt one explicitly")]
    SplitBrain(usize),
    #[error("the only master is outside the expected primary region")]
    OutsideRegion(NodeId),
}

/// Picks the writer when no epoch has been recorded: the single master, which must be in `region`.
pub fn bootstrap(
    topology: &Topology,
    observations: &[NodeObservation],
    region: RegionId,
) -> Result<NodeId, BootstrapError> {
    let masters = masters(observations);
    match masters.as_slice() {
        [] => Err(BootstrapError::NoMaster),
        [only] if topology.node(*only).region == region => Ok(*only),
        [only] => Err(BootstrapError::OutsideRegion(*only)),
        many => Err(BootstrapError::SplitBrain(many.len())),
    }
}

fn masters(observations: &[NodeObservation]) -> Vec<NodeId> {
    observations
        .iter()
        .filter(|o| o.info().is_some_and(|i| i.is_primary()))
        .map(|o| o.node)
        .collect()
}

pub fn analyze(
    topology: &Topology,
    observations: &[NodeObservation],
    epoch: Option<&EpochRecord>,
) -> Analysis {
    let observation = |id: NodeId| observations.iter().find(|o| o.node == id);
    let info = |id: NodeId| observation(id).and_then(|o| o.info());
    let mut findings = Vec::new();

    let masters = masters(observations);
    let writer = epoch.map(|e| e.primary);
    for node in &topology.nodes {
        if info(node.id).is_none() {
            findings.push(if Some(node.id) == writer {
                Finding::PrimaryNodeDown { node: node.id }
            } else {
                Finding::NodeDown { node: node.id }
            });
        }
    }
    let active_primary = writer.filter(|w| info(*w).is_some_and(|i| i.is_primary()));
    match writer {
        Some(writer) => {
            if info(writer).is_some_and(|i| !i.is_primary()) {
                findings.push(Finding::NoWritablePrimary);
            }
            for m in masters.iter().filter(|m| **m != writer) {
                findings.push(Finding::RogueMaster { node: *m });
            }
        }
        None if masters.len() > 1 => findings.push(Finding::SplitBrain {
            masters: masters.clone(),
        }),
        None if masters.is_empty() => findings.push(Finding::NoWritablePrimary),
        None => {}
    }

    // A node may head a region or serve reads only if it follows someone: a master that is not the
    // writer is rogue and must never be a target.
    let follows = |id: NodeId| {
        info(id)
            .and_then(|i| i.master())
            .and_then(|m| topology.node_by_any_address(m))
    };
    let mut heads = Vec::new();
    let mut readers = Vec::new();
    for region in &topology.regions {
        let head = if writer.is_some_and(|w| topology.node(w).region == region.id) {
            active_primary
        } else {
            let replicas: Vec<NodeId> = region
                .nodes
                .iter()
                .copied()
                .filter(|n| info(*n).is_some_and(|i| !i.is_primary()))
                .collect();
            let cross_region = replicas
                .iter()
                .copied()
                .find(|n| follows(*n).is_some_and(|m| topology.node(m).region != region.id));
            cross_region.or_else(|| {
                replicas
                    .iter()
                    .copied()
                    .max_by_key(|n| (info(*n).map(|i| i.offset), std::cmp::Reverse(*n)))
            })
        };
        let mut region_readers: Vec<NodeId> = region
            .nodes
            .iter()
            .copied()
            .filter(|n| Some(*n) != head)
            .filter(|n| {
                info(*n).is_some_and(|i| {
                    matches!(
                        i.role,
                        crate::Role::Replica {
                            link_up: true,
                            sync_in_progress: false,
                            ..
                        }
                    )
                })
            })
            .collect();
        if region_readers.is_empty() {
            region_readers.extend(head);
        }
        heads.push(head);
        readers.push(region_readers);
    }

    let mut sources = Vec::new();
    if let Some(writer) = writer {
        for node in &topology.nodes {
            if node.id == writer || info(node.id).is_none() {
                continue;
            }
            let head = heads[node.region.0];
            let source = if node.region == topology.node(writer).region || head == Some(node.id) {
                writer
            } else {
                match head {
                    Some(head) => head,
                    None => continue,
                }
            };
            sources.push((node.id, source));
        }
    }
    for (node, expected) in &sources {
        let Some(i) = info(*node) else { continue };
        match &i.role {
            crate::Role::Replica {
                master, link_up, ..
            } => {
                if follows(*node) != Some(*expected) {
                    findings.push(Finding::ReplicaMisdirected {
                        node: *node,
                        follows: master.clone(),
                        expected: *expected,
                    });
                } else if !link_up {
                    findings.push(Finding::ReplicaLinkDown { node: *node });
                }
            }
            crate::Role::Primary => {} // reported as rogue above
        }
    }

    if findings.is_empty() {
        findings.push(Finding::Healthy);
    }
    Analysis {
        findings,
        active_primary,
        heads,
        readers,
        sources,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::{ReplicationInfo, Role};

    use crate::testing::*;

    const EPOCH: EpochRecord = EpochRecord {
        epoch: 1,
        primary: NodeId(0),
    };

    #[test]
    fn classifies_situations() {
        let n = NodeId;
        let mut link_down = healthy();
        if let Ok(ReplicationInfo {
            role: Role::Replica { link_up, .. },
            ..
        }) = &mut link_down[3].state
        {
            *link_up = false;
        }
        // (situation, observations, recorded epoch, expected findings, expected DNS writer)
        type Case = (
            &'static str,
            Vec<NodeObservation>,
            Option<EpochRecord>,
            Vec<Finding>,
            Option<NodeId>,
        );
        let cases: Vec<Case> = vec![
            (
                "healthy",
                healthy(),
                Some(EPOCH),
                vec![Finding::Healthy],
                Some(n(0)),
            ),
            (
                "replica down",
                vec![
                    primary(0),
                    down(1),
                    replica_of(2, 0, 100),
                    replica_of(3, 2, 100),
                ],
                Some(EPOCH),
                vec![Finding::NodeDown { node: n(1) }],
                Some(n(0)),
            ),
            (
                "primary down",
                vec![
                    down(0),
                    replica_of(1, 0, 90),
                    replica_of(2, 0, 90),
                    replica_of(3, 2, 90),
                ],
                Some(EPOCH),
                vec![Finding::PrimaryNodeDown { node: n(0) }],
                None,
            ),
            (
                "writer demoted behind our back",
                vec![
                    replica_of(0, 2, 100),
                    replica_of(1, 0, 100),
                    replica_of(2, 0, 100),
                    replica_of(3, 2, 100),
                ],
                Some(EPOCH),
                vec![Finding::NoWritablePrimary],
                None,
            ),
            (
                "empty node restarted as master",
                vec![
                    primary(0),
                    replica_of(1, 0, 100),
                    primary(2),
                    replica_of(3, 2, 100),
                ],
                Some(EPOCH),
                vec![
                    Finding::RogueMaster { node: n(2) },
                    Finding::ReplicaMisdirected {
                        node: n(3),
                        follows: Endpoint::new("127.0.2.1", 6379),
                        expected: n(0),
                    },
                ],
                Some(n(0)),
            ),
            (
                "two masters, no epoch",
                vec![
                    primary(0),
                    replica_of(1, 0, 100),
                    primary(2),
                    replica_of(3, 2, 100),
                ],
                None,
                vec![Finding::SplitBrain {
                    masters: vec![n(0), n(2)],
                }],
                None,
            ),
            (
                "no master, no epoch",
                vec![
                    replica_of(0, 2, 1),
                    replica_of(1, 0, 1),
                    replica_of(2, 0, 1),
                    replica_of(3, 2, 1),
                ],
                None,
                vec![Finding::NoWritablePrimary],
                None,
            ),
            (
                "replica link down",
                link_down,
                Some(EPOCH),
                vec![Finding::ReplicaLinkDown { node: n(3) }],
                Some(n(0)),
            ),
        ];
        for (name, observations, epoch, findings, active) in cases {
            let analysis = analyze(&lab(), &observations, epoch.as_ref());
            assert_eq!(analysis.findings, findings, "{name}");
            assert_eq!(analysis.active_primary, active, "{name}");
        }
    }

    #[test]
    fn heads_and_readers_follow_replication() {
        let analysis = analyze(&lab(), &healthy(), Some(&EPOCH));
        assert_eq!(analysis.heads, vec![Some(NodeId(0)), Some(NodeId(2))]);
        assert_eq!(analysis.readers, vec![vec![NodeId(1)], vec![NodeId(3)]]);
        // The rogue master heads nothing and reads nothing.
        let rogue = vec![
            primary(0),
            replica_of(1, 0, 100),
            primary(2),
            replica_of(3, 2, 100),
        ];
        let analysis = analyze(&lab(), &rogue, Some(&EPOCH));
        assert_eq!(analysis.heads[1], Some(NodeId(3)));
        assert_eq!(analysis.readers[1], vec![NodeId(3)]);
    }

    #[test]
    fn after_promotion_the_old_primary_heads_the_secondary_region() {
        let promoted = vec![
            replica_of(0, 2, 100),
            replica_of(1, 0, 100),
            primary(2),
            replica_of(3, 2, 100),
        ];
        let epoch = EpochRecord {
            epoch: 2,
            primary: NodeId(2),
        };
        let analysis = analyze(&lab(), &promoted, Some(&epoch));
        assert_eq!(analysis.findings, vec![Finding::Healthy]);
        assert_eq!(analysis.heads, vec![Some(NodeId(0)), Some(NodeId(2))]);
        assert_eq!(
            analysis.sources,
            vec![
                (NodeId(0), NodeId(2)),
                (NodeId(1), NodeId(0)),
                (NodeId(3), NodeId(2))
            ]
        );
    }

    #[test]
    fn bootstrap_adopts_only_a_single_master_in_the_region() {
        let t = lab();
        assert_eq!(bootstrap(&t, &healthy(), RegionId(0)), Ok(NodeId(0)));
        assert_eq!(
            bootstrap(&t, &healthy(), RegionId(1)),
            Err(BootstrapError::OutsideRegion(NodeId(0)))
        );
        let split = vec![primary(0), primary(2)];
        assert_eq!(
            bootstrap(&t, &split, RegionId(0)),
            Err(BootstrapError::SplitBrain(2))
        );
        assert_eq!(
            bootstrap(&t, &[down(0)], RegionId(0)),
            Err(BootstrapError::NoMaster)
        );
    }
}
