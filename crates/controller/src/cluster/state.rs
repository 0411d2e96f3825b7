//! A cluster controller's durable state: the epoch (which region holds the primaries, by the
//! controllers' decision) and the all-shard move in flight, recorded before it starts so that a
//! restart settles it by what the shards show. Owned by one [`ClusterStore`]: in `cluster.json`
//! for one controller (written like `state.json`: temporary file, fsync, rename, fsync of the
//! directory), or in etcd for the highly available shape, written only under the leader's fence
//! and compared with the revision last read, as the replication state is.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use valkey_dr_core::cluster::ClusterEpoch;
use valkey_dr_core::{NodeId, RegionId, Topology};

use crate::state::{LoadError, StateError, read_from_etcd, write_durably};

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
    /// The last report of a primary that came back without its data, until an operator runs
    /// `valkey-dr ack`: kept here, not in one controller's memory, so that a restart or another
    /// site's leadership still shows it.
    pub data_loss: Option<serde_json::Value>,
}

impl ClusterState {
    pub fn new(epoch: ClusterEpoch) -> ClusterState {
        ClusterState {
            epoch,
            moving: None,
            armed: BTreeSet::new(),
            failovers_blocked_until_ms: None,
            data_loss: None,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_loss: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredMove {
    epoch: u64,
    to_region: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    automatic: bool,
}

/// The etcd key of a cluster's state (under the deployment's prefix).
const CLUSTER_STATE_KEY: &str = valkey_dr_coord::keys::CLUSTER_STATE;

/// Where the state lives.
enum Backend {
    File(PathBuf),
    Etcd {
        coord: valkey_dr_coord::Coordinator,
        leader: std::sync::Arc<valkey_dr_coord::LeaderCell>,
        /// The revision of the key when it was last read or written (0: absent).
        revision: Mutex<i64>,
    },
}

/// The one owner of the cluster's state. Only the holder of the controller's acting lock
/// changes it.
pub struct ClusterStore {
    backend: Backend,
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
            backend: Backend::File(path),
            topology: topology.clone(),
            current: Mutex::new(current),
        };
        (store, problem)
    }

    /// A store in etcd, written only while `leader` holds a fence. Empty until [`Self::reload`].
    pub fn in_etcd(
        coord: valkey_dr_coord::Coordinator,
        leader: std::sync::Arc<valkey_dr_coord::LeaderCell>,
        topology: &Topology,
    ) -> ClusterStore {
        ClusterStore {
            backend: Backend::Etcd {
                coord,
                leader,
                revision: Mutex::new(0),
            },
            topology: topology.clone(),
            current: Mutex::new(None),
        }
    }

    pub fn get(&self) -> Option<ClusterState> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the state again from etcd (a new leader before it acts; the other sites every
    /// pass). A file is its own source and has nothing to read.
    pub async fn reload(&self) -> Result<(), LoadError> {
        let Backend::Etcd {
            coord, revision, ..
        } = &self.backend
        else {
            return Ok(());
        };
        let (state, read_at) = read_from_etcd(coord, CLUSTER_STATE_KEY, |bytes, source| {
            decode(bytes, source, &self.topology)
        })
        .await?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = state;
        *revision.lock().unwrap_or_else(|e| e.into_inner()) = read_at;
        Ok(())
    }

    /// Records `next` durably, then in memory: after it returns, a crash cannot bring back the
    /// previous state; when it fails, nothing changed. A write to etcd whose answer was lost
    /// is settled by reading the key again: it may have committed.
    pub async fn set(&self, next: ClusterState) -> Result<(), StateError> {
        let bytes = encode(&self.topology, &next);
        match &self.backend {
            Backend::File(path) => write_durably(path, &bytes)?,
            Backend::Etcd {
                coord,
                leader,
                revision,
            } => {
                let fence = leader.fence().ok_or(StateError::NotLeader)?;
                let expected = *revision.lock().unwrap_or_else(|e| e.into_inner());
                let swap = valkey_dr_coord::Swap {
                    name: CLUSTER_STATE_KEY,
                    expected: Some(expected),
                    value: &bytes,
                };
                match coord.swap_all_fenced(fence, &[swap]).await {
                    Ok(written) => *revision.lock().unwrap_or_else(|e| e.into_inner()) = written,
                    Err(error) => {
                        let committed = !matches!(
                            error,
                            valkey_dr_coord::CoordError::Deposed { .. }
                                | valkey_dr_coord::CoordError::Expired
                        ) && self.reload().await.is_ok()
                            && self.get().as_ref() == Some(&next);
                        if !committed {
                            return Err(error.into());
                        }
                    }
                }
            }
        }
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(next);
        Ok(())
    }
}

fn encode(topology: &Topology, next: &ClusterState) -> Vec<u8> {
    let region = |r: RegionId| topology.region(r).name.clone();
    let stored = Stored {
        epoch: next.epoch.epoch,
        writer_region: region(next.epoch.writer_region),
        moving: next.moving.map(|m| StoredMove {
            epoch: m.epoch,
            to_region: region(m.to),
            automatic: m.automatic,
        }),
        armed: next.armed.iter().map(|n| topology.node_name(*n)).collect(),
        failovers_blocked_until_ms: next.failovers_blocked_until_ms,
        data_loss: next.data_loss.clone(),
    };
    serde_json::to_vec_pretty(&stored).expect("serializes")
}

fn load(path: &Path, topology: &Topology) -> Result<Option<ClusterState>, LoadError> {
    let name = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => decode(&bytes, &name, topology).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LoadError::Read { path: name, source }),
    }
}

fn decode(bytes: &[u8], name: &str, topology: &Topology) -> Result<ClusterState, LoadError> {
    let corrupt = |reason: String| LoadError::Corrupt {
        path: name.to_string(),
        reason,
    };
    let stored: Stored = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    let region = |region: &str| {
        topology
            .region_by_name(region)
            .ok_or_else(|| corrupt(format!("region `{region}` is not configured")))
    };
    Ok(ClusterState {
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
        data_loss: stored.data_loss,
    })
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
            data_loss: Some(serde_json::json!({ "node": "127.0.1.1:6379", "offset": 0 })),
            ..ClusterState::new(ClusterEpoch {
                epoch: 4,
                writer_region: RegionId(0),
            })
        };
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(store.set(moving.clone()))
            .unwrap();
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
