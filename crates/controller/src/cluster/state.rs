//! A cluster controller's durable state in `cluster.json`: the epoch (which region holds the
//! primaries, by the controller's decision) and the all-shard move in flight, recorded before it
//! starts so that a restart settles it by what the shards show. Owned by one [`ClusterStore`];
//! written like `state.json` (temporary file, fsync, rename, fsync of the directory).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use valkey_dr_core::cluster::ClusterEpoch;
use valkey_dr_core::{NodeId, RegionId, Topology};

use crate::state::{LoadError, write_durably};

/// An all-shard move in flight: the epoch it establishes and where to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterMove {
    pub epoch: u64,
    pub to: RegionId,
    /// Started by the controller's automatic failover, which carries on with it while it is
    /// halfway (a shard that did not move is tried again each pass).
    pub automatic: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterState {
    pub epoch: ClusterEpoch,
    pub moving: Option<ClusterMove>,
    /// The nodes whose self-fence was armed (and in force) when they last answered: kept so that
    /// a restarted controller knows whether a primary it cannot reach refuses writes.
    pub armed: BTreeSet<NodeId>,
    /// Automatic region failovers wait until then (Unix ms) after one, unless an operator runs
    /// `valkey-dr ack`.
    pub failovers_blocked_until_ms: Option<u64>,
}

impl ClusterState {
    pub fn new(epoch: ClusterEpoch) -> ClusterState {
        ClusterState {
            epoch,
            moving: None,
            armed: BTreeSet::new(),
            failovers_blocked_until_ms: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    epoch: u64,
    /// By name: stable across config reorderings.
    writer_region: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    moving: Option<StoredMove>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    armed: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failovers_blocked_until_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredMove {
    epoch: u64,
    to_region: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    automatic: bool,
}

/// The one owner of `cluster.json`. Only the holder of the controller's acting lock changes it.
pub struct ClusterStore {
    path: PathBuf,
    topology: Topology,
    current: Mutex<Option<ClusterState>>,
}

impl ClusterStore {
    /// The store of `state_dir`, with what it holds; an unreadable file is reported (the epoch
    /// is then recovered from the ownership record in DNS) and not trusted.
    pub fn open(state_dir: &Path, topology: &Topology) -> (ClusterStore, Option<LoadError>) {
        let path = state_dir.join("cluster.json");
        let (current, problem) = match load(&path, topology) {
            Ok(state) => (state, None),
            Err(e) => (None, Some(e)),
        };
        let store = ClusterStore {
            path,
            topology: topology.clone(),
            current: Mutex::new(current),
        };
        (store, problem)
    }

    pub fn get(&self) -> Option<ClusterState> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records `next` durably, then in memory: after it returns, a crash cannot bring back the
    /// previous state; when it fails, nothing changed.
    pub fn set(&self, next: ClusterState) -> std::io::Result<()> {
        let region = |r: RegionId| self.topology.region(r).name.clone();
        let stored = Stored {
            epoch: next.epoch.epoch,
            writer_region: region(next.epoch.writer_region),
            moving: next.moving.map(|m| StoredMove {
                epoch: m.epoch,
                to_region: region(m.to),
                automatic: m.automatic,
            }),
            armed: next
                .armed
                .iter()
                .map(|n| self.topology.node_name(*n))
                .collect(),
            failovers_blocked_until_ms: next.failovers_blocked_until_ms,
        };
        let bytes = serde_json::to_vec_pretty(&stored).expect("serializes");
        write_durably(&self.path, &bytes)?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(next);
        Ok(())
    }
}

fn load(path: &Path, topology: &Topology) -> Result<Option<ClusterState>, LoadError> {
    let name = path.display().to_string();
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LoadError::Read { path: name, source }),
    };
    let corrupt = |reason: String| LoadError::Corrupt {
        path: name.clone(),
        reason,
    };
    let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let region = |region: &str| {
        topology
            .region_by_name(region)
            .ok_or_else(|| corrupt(format!("region `{region}` is not configured")))
    };
    Ok(Some(ClusterState {
        epoch: ClusterEpoch {
            epoch: stored.epoch,
            writer_region: region(&stored.writer_region)?,
        },
        moving: match stored.moving {
            Some(m) => Some(ClusterMove {
                epoch: m.epoch,
                to: region(&m.to_region)?,
                automatic: m.automatic,
            }),
            None => None,
        },
        armed: stored
            .armed
            .iter()
            .map(|name| {
                topology
                    .nodes
                    .iter()
                    .find(|n| n.endpoint.to_string() == *name)
                    .map(|n| n.id)
                    .ok_or_else(|| corrupt(format!("node `{name}` is not configured")))
            })
            .collect::<Result<_, _>>()?,
        failovers_blocked_until_ms: stored.failovers_blocked_until_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use valkey_dr_core::testing::lab;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("valkey-dr-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_epoch_and_a_move_in_flight_survive_a_restart() {
        let dir = temp_dir("cluster-state");
        let topology = lab();
        let (store, problem) = ClusterStore::open(&dir, &topology);
        assert!(problem.is_none() && store.get().is_none());
        let moving = ClusterState {
            moving: Some(ClusterMove {
                epoch: 5,
                to: RegionId(1),
                automatic: true,
            }),
            armed: [NodeId(0), NodeId(1)].into(),
            failovers_blocked_until_ms: Some(1_800_000_000_000),
            ..ClusterState::new(ClusterEpoch {
                epoch: 4,
                writer_region: RegionId(0),
            })
        };
        store.set(moving.clone()).unwrap();
        let (reopened, problem) = ClusterStore::open(&dir, &topology);
        assert!(problem.is_none());
        assert_eq!(reopened.get(), Some(moving));
        let text = std::fs::read_to_string(dir.join("cluster.json")).unwrap();
        assert!(text.contains("\"to_region\": \"us-east-2\""), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_truncated_file_or_an_unknown_region_is_reported_not_trusted() {
        let dir = temp_dir("cluster-state-bad");
        let topology = lab();
        for (case, text) in [
            ("truncated", "{\"epoch\": 4, \"writer_reg"),
            (
                "unknown region",
                "{\"epoch\": 4, \"writer_region\": \"mars-1\"}",
            ),
        ] {
            std::fs::write(dir.join("cluster.json"), text).unwrap();
            let (store, problem) = ClusterStore::open(&dir, &topology);
            assert!(store.get().is_none(), "{case}");
            let problem = problem.unwrap_or_else(|| panic!("{case}: not reported"));
            assert!(
                matches!(problem, LoadError::Corrupt { .. }),
                "{case}: {problem}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
