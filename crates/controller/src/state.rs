//! The controller's durable record of the epoch and its writer, in `state.json`, and of the
//! anti-flapping block, so that a restarted controller neither forgets the writer nor fails over
//! again right after an automatic failover.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use valkey_dr_core::{EpochRecord, Topology};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEpoch {
    pub epoch: u64,
    /// The writer's address (stable across config reorderings, unlike an index).
    pub primary: String,
    pub primary_region: String,
    /// Automatic failovers are blocked until then (Unix ms), unless an operator runs `ack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failovers_blocked_until_ms: Option<u64>,
}

/// What `state.json` holds, resolved against the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    pub epoch: EpochRecord,
    pub failovers_blocked_until_ms: Option<u64>,
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

    /// The stored state, if any and if its writer is still part of the topology.
    pub fn load(&self, topology: &Topology) -> Option<State> {
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
        Some(State {
            epoch: EpochRecord {
                epoch: stored.epoch,
                primary,
            },
            failovers_blocked_until_ms: stored.failovers_blocked_until_ms,
        })
    }

    /// Writes atomically (temporary file + rename), so a crash never leaves half a record.
    pub fn store(&self, topology: &Topology, state: &State) -> std::io::Result<()> {
        let record = &state.epoch;
        let stored = StoredEpoch {
            epoch: record.epoch,
            primary: topology.node_name(record.primary),
            primary_region: topology.region_of(record.primary).name.clone(),
            failovers_blocked_until_ms: state.failovers_blocked_until_ms,
        };
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&stored).expect("serializes"),
        )?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        let config = valkey_dr_core::config::Config::parse(
            "primary_region = \"a\"\n[[regions]]\nname = \"a\"\nnodes = [{ host = \"127.0.0.1\" }]\n\
             [[regions]]\nname = \"b\"\nnodes = [{ host = \"127.0.0.2\" }]\n\
             [dns]\nzone = \"z.test\"\nglobal_name = \"demo\"\n",
        )
        .unwrap();
        Topology::from_config(&config)
    }

    #[test]
    fn the_block_survives_a_restart_and_old_files_still_load() {
        let dir = std::env::temp_dir().join(format!("valkey-dr-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let topology = topology();
        let file = StateFile::new(&dir);
        let state = State {
            epoch: EpochRecord {
                epoch: 3,
                primary: topology.nodes[1].id,
            },
            failovers_blocked_until_ms: Some(1_900_000_000_000),
        };
        file.store(&topology, &state).unwrap();
        assert_eq!(file.load(&topology), Some(state));
        // A file written before the block was recorded.
        std::fs::write(
            dir.join("state.json"),
            r#"{"epoch": 2, "primary": "127.0.0.1:6379", "primary_region": "a"}"#,
        )
        .unwrap();
        let loaded = file.load(&topology).unwrap();
        assert_eq!(
            (loaded.epoch.epoch, loaded.failovers_blocked_until_ms),
            (2, None)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
