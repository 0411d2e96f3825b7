//! The controller's durable state in `state.json`, owned by one [`StateStore`]: the epoch and its
//! writer, the writer's replication history (the lineage a failover candidate must be on), the
//! promotion intent recorded before the point of no return, and the anti-flapping block.
//!
//! Every change is one read-modify-write under the store's lock, written to a temporary file,
//! fsynced, renamed over `state.json` and the directory fsynced: after `update` returns, a crash
//! or power loss cannot bring back the previous state. A truncated or unreadable file is reported
//! and ignored; the epoch is then recovered from the nodes' epoch marks and DNS.

mod transitions;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use valkey_dr_coord::Swap;
use valkey_dr_core::observation::History;
use valkey_dr_core::self_fence::WriteQuorum;
use valkey_dr_core::{EpochRecord, NodeId, Topology};

/// A promotion in flight: recorded before the target is promoted, cleared when it is complete.
/// A restarted controller resumes or rolls back from it ([`valkey_dr_core::intent`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// The epoch the promotion establishes (the state's epoch is the one before it).
    pub epoch: u64,
    pub source: NodeId,
    pub target: NodeId,
    /// The old writer's offset while paused: the target must hold at least this much.
    pub required_offset: u64,
    /// The old writer's replication id at that offset.
    pub replication_id: String,
}

/// What `state.json` holds, resolved against the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub epoch: EpochRecord,
    pub failovers_blocked_until_ms: Option<u64>,
    /// The epoch writer's replication history when it was last recorded (at each change of
    /// replication id, not every write).
    pub writer_history: Option<History>,
    pub intent: Option<Intent>,
    /// The write quorum in force on the epoch's writer (its self-fence), as last set and
    /// confirmed; `None` after each promotion until it is set. Kept here so that a new leader, or
    /// a restarted controller, knows whether an unreachable writer fences itself.
    pub writer_quorum: Option<WriteQuorum>,
    /// A suspected data loss (what the writer lost), shown by every site's `status` until an
    /// operator runs `ack` or `adopt`; kept here so that a restart or a new leader does not
    /// forget it.
    pub data_loss: Option<serde_json::Value>,
    /// The old primary of a switchover whose clients were not closed yet: recorded with the new
    /// epoch, settled by the Release step — or by the next pass of whoever acts, if the
    /// controller died before it (its pooled clients would otherwise meet READONLY until they
    /// recycle).
    pub release_pending: Option<NodeId>,
    /// A switchover's old primary whose replica role is not yet in its config file (`CONFIG
    /// REWRITE` failed, or the controller died first): retried by every pass until it lands, so
    /// that a restart brings the node back a replica.
    pub persist_pending: Option<NodeId>,
}

impl State {
    pub fn new(epoch: EpochRecord) -> State {
        State {
            epoch,
            failovers_blocked_until_ms: None,
            writer_history: None,
            intent: None,
            writer_quorum: None,
            data_loss: None,
            release_pending: None,
            persist_pending: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredIntent {
    epoch: u64,
    source: String,
    target: String,
    required_offset: u64,
    replication_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    epoch: u64,
    /// The writer's address (stable across config reorderings, unlike an index).
    primary: String,
    primary_region: String,
    /// Automatic failovers are blocked until then (Unix ms), unless an operator runs `ack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failovers_blocked_until_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    writer_history: Option<History>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    intent: Option<StoredIntent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    writer_quorum: Option<WriteQuorum>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_loss: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    release_pending: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    persist_pending: Option<String>,
}

/// Why `state.json` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a valid state file ({reason}); the epoch will be recovered from the nodes and DNS"
    )]
    Corrupt { path: String, reason: String },
    #[error("{path} names {node}, which is not in the configured topology")]
    UnknownNode { path: String, node: String },
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

    /// The stored state: `Ok(None)` when there is no file yet.
    pub fn load(&self, topology: &Topology) -> Result<Option<State>, LoadError> {
        let path = self.path.display().to_string();
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(LoadError::Read { path, source }),
        };
        decode(text.as_bytes(), &path, topology).map(Some)
    }

    /// Writes durably: temporary file, fsync, rename, fsync of the directory.
    pub fn store(&self, topology: &Topology, state: &State) -> std::io::Result<()> {
        write_durably(&self.path, &encode(topology, state))
    }
}

/// Replaces the file at `path` with `bytes` so that a crash or power loss leaves the old content
/// or the new, never a mix: temporary file, fsync, rename, fsync of the directory.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The state as stored (in `state.json` or in etcd), resolved against the topology; `source`
/// names where it came from in errors.
fn decode(bytes: &[u8], source: &str, topology: &Topology) -> Result<State, LoadError> {
    let path = source.to_string();
    let stored: Stored = serde_json::from_slice(bytes).map_err(|e| LoadError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let node = |name: &str| {
        topology
            .nodes
            .iter()
            .find(|n| n.endpoint.to_string() == name)
            .map(|n| n.id)
            .ok_or_else(|| LoadError::UnknownNode {
                path: path.clone(),
                node: name.to_string(),
            })
    };
    let intent = match stored.intent {
        Some(i) => Some(Intent {
            epoch: i.epoch,
            source: node(&i.source)?,
            target: node(&i.target)?,
            required_offset: i.required_offset,
            replication_id: i.replication_id,
        }),
        None => None,
    };
    Ok(State {
        epoch: EpochRecord {
            epoch: stored.epoch,
            primary: node(&stored.primary)?,
        },
        failovers_blocked_until_ms: stored.failovers_blocked_until_ms,
        writer_history: stored.writer_history,
        intent,
        writer_quorum: stored.writer_quorum,
        data_loss: stored.data_loss,
        release_pending: stored.release_pending.as_deref().map(node).transpose()?,
        persist_pending: stored.persist_pending.as_deref().map(node).transpose()?,
    })
}

fn encode(topology: &Topology, state: &State) -> Vec<u8> {
    let record = &state.epoch;
    let stored = Stored {
        epoch: record.epoch,
        primary: topology.node_name(record.primary),
        primary_region: topology.region_of(record.primary).name.clone(),
        failovers_blocked_until_ms: state.failovers_blocked_until_ms,
        writer_history: state.writer_history.clone(),
        writer_quorum: state.writer_quorum,
        data_loss: state.data_loss.clone(),
        release_pending: state.release_pending.map(|n| topology.node_name(n)),
        persist_pending: state.persist_pending.map(|n| topology.node_name(n)),
        intent: state.intent.as_ref().map(|i| StoredIntent {
            epoch: i.epoch,
            source: topology.node_name(i.source),
            target: topology.node_name(i.target),
            required_offset: i.required_offset,
            replication_id: i.replication_id.clone(),
        }),
    };
    serde_json::to_vec_pretty(&stored).expect("serializes")
}

/// Reads `key` from etcd and decodes it (`decode` is given the bytes and where they came from):
/// what it holds (None: absent) and its revision (0: absent).
pub(crate) async fn read_from_etcd<T>(
    coord: &valkey_dr_coord::Coordinator,
    key: &str,
    decode: impl FnOnce(&[u8], &str) -> Result<T, LoadError>,
) -> Result<(Option<T>, i64), LoadError> {
    let source = format!("etcd key {key}");
    let read = coord
        .get_versioned(key)
        .await
        .map_err(|e| LoadError::Read {
            path: source.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let value = match &read.value {
        Some(bytes) => Some(decode(bytes, &source)?),
        None => None,
    };
    Ok((value, read.revision))
}

/// Why a state change was not recorded (the action it guarded is then not taken).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot write the state file: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot write the state in etcd: {0}")]
    Coord(#[from] valkey_dr_coord::CoordError),
    #[error("this controller is not the leader")]
    NotLeader,
}

/// Where the state lives: a local file (one controller), or etcd, written only under the
/// leader's fence and compared with the revision last read.
enum Backend {
    File(StateFile),
    Etcd {
        coord: valkey_dr_coord::Coordinator,
        leader: std::sync::Arc<valkey_dr_coord::LeaderCell>,
        /// The revision of the state key when it was last read or written (0: absent).
        revision: Mutex<i64>,
    },
}

/// The key of the state in etcd.
const STATE_KEY: &str = valkey_dr_coord::keys::STATE;

/// The one owner of the controller's durable state: every change goes through [`StateStore::update`].
pub struct StateStore {
    backend: Backend,
    topology: Topology,
    state: Mutex<Option<State>>,
    /// Serializes read-modify-writes (held across the write, which may wait on etcd).
    writing: tokio::sync::Mutex<()>,
}

impl StateStore {
    /// Opens the store; an unusable file is returned as the error beside an empty store, so the
    /// caller can report it.
    pub fn open(state_dir: &Path, topology: &Topology) -> (StateStore, Option<LoadError>) {
        let file = StateFile::new(state_dir);
        let (state, problem) = match file.load(topology) {
            Ok(state) => (state, None),
            Err(e) => (None, Some(e)),
        };
        (
            StateStore::with_backend(Backend::File(file), topology, state),
            problem,
        )
    }

    /// A store in etcd, written only while `leader` holds a fence. Empty until [`Self::reload`].
    pub fn in_etcd(
        coord: valkey_dr_coord::Coordinator,
        leader: std::sync::Arc<valkey_dr_coord::LeaderCell>,
        topology: &Topology,
    ) -> StateStore {
        let backend = Backend::Etcd {
            coord,
            leader,
            revision: Mutex::new(0),
        };
        StateStore::with_backend(backend, topology, None)
    }

    fn with_backend(backend: Backend, topology: &Topology, state: Option<State>) -> StateStore {
        StateStore {
            backend,
            topology: topology.clone(),
            state: Mutex::new(state),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    /// Reads the state again from etcd (a new leader before it acts; followers every pass). A
    /// file store is its own source and has nothing to read.
    pub async fn reload(&self) -> Result<(), LoadError> {
        let Backend::Etcd {
            coord, revision, ..
        } = &self.backend
        else {
            return Ok(());
        };
        let _writing = self.writing.lock().await;
        self.reload_locked(coord, revision).await
    }

    async fn reload_locked(
        &self,
        coord: &valkey_dr_coord::Coordinator,
        revision: &Mutex<i64>,
    ) -> Result<(), LoadError> {
        let (state, read_at) = read_from_etcd(coord, STATE_KEY, |bytes, source| {
            decode(bytes, source, &self.topology)
        })
        .await?;
        *self.state.lock().expect("state lock") = state;
        *revision.lock().expect("revision lock") = read_at;
        Ok(())
    }

    pub fn get(&self) -> Option<State> {
        self.state.lock().expect("state lock").clone()
    }

    pub fn epoch(&self) -> Option<EpochRecord> {
        self.get().map(|s| s.epoch)
    }

    /// Applies `change` and writes the result durably before anyone can read it. Nothing changes
    /// when the write fails. `change` returning `None` leaves the state as it is.
    /// Every change goes through a named transition (`transitions.rs`).
    async fn update(
        &self,
        change: impl FnOnce(Option<&State>) -> Option<State>,
    ) -> Result<Option<State>, StateError> {
        self.update_with(change, &[]).await
    }

    /// [`StateStore::update`], writing `also` (other etcd keys) in the same transaction: all of it
    /// is written or none. A file store writes nothing else.
    async fn update_with(
        &self,
        change: impl FnOnce(Option<&State>) -> Option<State>,
        also: &[Swap<'_>],
    ) -> Result<Option<State>, StateError> {
        let _writing = self.writing.lock().await;
        let now = self.get();
        let Some(next) = change(now.as_ref()) else {
            return Ok(now);
        };
        if now.as_ref() != Some(&next) || !also.is_empty() {
            if let Err(error) = self.store(&next, also).await {
                return self.settle_failed_write(next, error).await;
            }
            *self.state.lock().expect("state lock") = Some(next.clone());
            return Ok(Some(next));
        }
        Ok(now)
    }

    /// The etcd revision of the state's last write or read (0 for a file store).
    pub fn revision(&self) -> i64 {
        match &self.backend {
            Backend::File(_) => 0,
            Backend::Etcd { revision, .. } => *revision.lock().expect("revision lock"),
        }
    }

    /// After a failed or timed-out write to etcd, what etcd holds is read again before anything
    /// else is decided: a write whose reply was lost may have committed (then it counts as done),
    /// and a stale revision would fail every later write of this leader.
    async fn settle_failed_write(
        &self,
        next: State,
        error: StateError,
    ) -> Result<Option<State>, StateError> {
        let Backend::Etcd {
            coord, revision, ..
        } = &self.backend
        else {
            return Err(error);
        };
        if matches!(error, StateError::NotLeader) {
            return Err(error);
        }
        if self.reload_locked(coord, revision).await.is_err() {
            return Err(error);
        }
        match self.get() {
            Some(held) if held == next => Ok(Some(next)),
            _ => Err(error),
        }
    }

    async fn store(&self, next: &State, also: &[Swap<'_>]) -> Result<(), StateError> {
        match &self.backend {
            Backend::File(_) if !also.is_empty() => Err(StateError::Io(std::io::Error::other(
                "a state file cannot be written in one transaction with other keys",
            ))),
            Backend::File(file) => Ok(file.store(&self.topology, next)?),
            Backend::Etcd {
                coord,
                leader,
                revision,
            } => {
                let fence = leader.fence().ok_or(StateError::NotLeader)?;
                let expected = *revision.lock().expect("revision lock");
                let bytes = encode(&self.topology, next);
                let mut swaps = vec![Swap {
                    name: STATE_KEY,
                    expected: Some(expected),
                    value: &bytes,
                }];
                swaps.extend_from_slice(also);
                let written = coord.swap_all_fenced(fence, &swaps).await?;
                *revision.lock().expect("revision lock") = written;
                Ok(())
            }
        }
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

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("valkey-dr-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_state_survives_a_restart_and_old_files_still_load() {
        let dir = temp_dir("state");
        let topology = topology();
        let file = StateFile::new(&dir);
        let state = State {
            epoch: EpochRecord {
                epoch: 3,
                primary: topology.nodes[1].id,
            },
            failovers_blocked_until_ms: Some(1_900_000_000_000),
            writer_history: Some(History {
                replication_id: "8f1c".into(),
                offset: 4242,
                parent: None,
            }),
            writer_quorum: Some(WriteQuorum {
                replicas: 2,
                max_lag_s: 2,
            }),
            data_loss: Some(serde_json::json!({ "node": "127.0.0.2:6379", "offset": 0 })),
            release_pending: Some(topology.nodes[0].id),
            persist_pending: Some(topology.nodes[0].id),
            intent: Some(Intent {
                epoch: 4,
                source: topology.nodes[1].id,
                target: topology.nodes[0].id,
                required_offset: 5000,
                replication_id: "8f1c".into(),
            }),
        };
        file.store(&topology, &state).unwrap();
        assert_eq!(file.load(&topology).unwrap(), Some(state));
        // A file written before the block and the intent were recorded.
        std::fs::write(
            dir.join("state.json"),
            r#"{"epoch": 2, "primary": "127.0.0.1:6379", "primary_region": "a"}"#,
        )
        .unwrap();
        let loaded = file.load(&topology).unwrap().unwrap();
        assert_eq!(
            (
                loaded.epoch.epoch,
                loaded.failovers_blocked_until_ms,
                loaded.intent
            ),
            (2, None, None)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_truncated_file_is_reported_not_trusted() {
        let dir = temp_dir("state-truncated");
        std::fs::write(dir.join("state.json"), r#"{"epoch": 2, "prim"#).unwrap();
        let (store, problem) = StateStore::open(&dir, &topology());
        assert!(store.get().is_none());
        assert!(
            matches!(problem, Some(LoadError::Corrupt { .. })),
            "{problem:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn updates_are_serialized_and_durable() {
        let dir = temp_dir("state-store");
        let topology = topology();
        let (store, _) = StateStore::open(&dir, &topology);
        let first = EpochRecord {
            epoch: 1,
            primary: topology.nodes[0].id,
        };
        store.update(|_| Some(State::new(first))).await.unwrap();
        // Concurrent read-modify-writes (e.g. `ack` beside a failover) never lose one another.
        futures::future::join_all((0..8).map(|_| {
            store.update(|now| {
                let mut next = now.cloned().unwrap();
                next.epoch.epoch += 1;
                Some(next)
            })
        }))
        .await
        .into_iter()
        .for_each(|r| {
            r.unwrap();
        });
        assert_eq!(store.epoch().unwrap().epoch, 9);
        let (reopened, problem) = StateStore::open(&dir, &topology);
        assert!(problem.is_none());
        assert_eq!(reopened.epoch().unwrap().epoch, 9);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
