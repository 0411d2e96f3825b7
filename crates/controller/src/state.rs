//! The controller's durable record of the epoch and its writer, in `state.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use valkey_dr_core::{EpochRecord, Topology};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEpoch {
    pub epoch: u64,
    /// The writer's address (stable across config reorderings, unlike an index).
    pub primary: String,
    pub primary_region: String,
}

pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(state_dir: &Path) -> StateFile {
        StateFile {
            path: state_dir.join("state.json"),
        }
    }

    /// The stored epoch, if any and if its writer is still part of the topology.
    pub fn load(&self, topology: &Topology) -> Option<EpochRecord> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let stored: StoredEpoch = match serde_json::from_str(&text) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "ignoring unreadable state file");
                return None;
            }
        };
        let primary = topology
            .nodes
            .iter()
            .find(|n| n.endpoint.to_string() == stored.primary)?
            .id;
        Some(EpochRecord {
            epoch: stored.epoch,
            primary,
        })
    }

    /// Writes atomically (temporary file + rename), so a crash never leaves half a record.
    pub fn store(&self, topology: &Topology, record: &EpochRecord) -> std::io::Result<()> {
        let stored = StoredEpoch {
            epoch: record.epoch,
            primary: topology.node_name(record.primary),
            primary_region: topology.region_of(record.primary).name.clone(),
        };
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&stored).expect("serializes"),
        )?;
        std::fs::rename(&tmp, &self.path)
    }
}
