//! Observations and a two-region topology for table tests, here and in the crates that build on
//! this one (feature `testing`).

use crate::config::Config;
use crate::observation::{ReplicationInfo, Role};
use crate::{Endpoint, NodeId, NodeObservation, Topology};

pub const LAB: &str = r#"
    primary_region = "us-east-1"
    [[regions]]
    name = "us-east-1"
    nodes = [{ host = "127.0.1.1" }, { host = "127.0.1.2" }]
    [[regions]]
    name = "us-east-2"
    nodes = [{ host = "127.0.2.1" }, { host = "127.0.2.2" }]
    [dns]
    zone = "valkey-dr.live"
    global_name = "demo"
"#;

pub fn lab() -> Topology {
    Topology::from_config(&Config::parse(LAB).unwrap())
}

/// Node `n` (0-based: 0,1 in us-east-1; 2,3 in us-east-2) as primary.
pub fn primary(n: usize) -> NodeObservation {
    obs(
        n,
        Ok(ReplicationInfo {
            role: Role::Primary,
            offset: 100,
            replication_id: "r".into(),
            replication_id2: String::new(),
            replication_id2_until: None,
            connected_replicas: 1,
            master_last_io_s: None,
        }),
    )
}

pub fn replica_of(n: usize, master: usize, offset: u64) -> NodeObservation {
    let host = ["127.0.1.1", "127.0.1.2", "127.0.2.1", "127.0.2.2"][master];
    obs(
        n,
        Ok(ReplicationInfo {
            role: Role::Replica {
                master: Endpoint::new(host, 6379),
                link_up: true,
                sync_in_progress: false,
            },
            offset,
            replication_id: "r".into(),
            replication_id2: String::new(),
            replication_id2_until: None,
            connected_replicas: 0,
            master_last_io_s: Some(0),
        }),
    )
}

/// Node `n` is not running: its connection refused.
pub fn down(n: usize) -> NodeObservation {
    obs(
        n,
        Err(crate::observation::Failure::new(
            crate::observation::FailureKind::Gone,
            "connection refused",
        )),
    )
}

/// Node `n` does not answer (stalled, or behind a cut): it timed out.
pub fn silent(n: usize) -> NodeObservation {
    obs(
        n,
        Err(crate::observation::Failure::new(
            crate::observation::FailureKind::Unreachable,
            "timed out",
        )),
    )
}

pub fn obs(
    n: usize,
    state: Result<ReplicationInfo, crate::observation::Failure>,
) -> NodeObservation {
    NodeObservation {
        node: NodeId(n),
        state,
        keys: None,
        heartbeat_ms: None,
        epoch_mark: None,
    }
}

pub fn healthy() -> Vec<NodeObservation> {
    vec![
        primary(0),
        replica_of(1, 0, 100),
        replica_of(2, 0, 100),
        replica_of(3, 2, 100),
    ]
}
