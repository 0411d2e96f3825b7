//! The event stream: every observation change, analysis, plan, applied change and promotion step,
//! as one JSON object per line — appended to `events.jsonl`, logged, and broadcast to control
//! clients that follow an operation.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// Every kind of event the controller reports: the `event` field of each line. Metrics,
/// webhooks, the CLI, chaos and drills match on these, not on strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Adopted,
    Analysis,
    BootstrapBlocked,
    ClusterMoveRecorded,
    ClusterMoveSettled,
    ClusterStep,
    ControllerFailed,
    ControllerStalled,
    ControllerStarted,
    ControllerStopped,
    DataLossSuspected,
    DnsApplied,
    DnsApplyFailed,
    DnsConflict,
    DnsPlan,
    EpochAdopted,
    EpochRecovered,
    EtcdAvailable,
    EtcdUnavailable,
    FailoverBlockCleared,
    FailoverCancelled,
    FailoverCompleted,
    FailoverFailed,
    FailoverNeeded,
    FailoverPromoted,
    FailoverStarted,
    FailoverWithheld,
    FaultInjected,
    Fenced,
    HttpListening,
    HttpUnavailable,
    IntentResolved,
    LeaderElected,
    LeaderSeen,
    LeadershipHandedOver,
    LeadershipLost,
    LostWriterHeld,
    NodeDown,
    ObservationChanged,
    OldPrimaryReleased,
    PromotionDone,
    PromotionFailed,
    PromotionStarted,
    PromotionStep,
    ReconcileFailed,
    ReplicaRepointed,
    RequestForwarded,
    RoguePaused,
    SelfFenceLifted,
    SelfFenced,
    SettingWeakensSafety,
    StateUnusable,
    StateWriteFailed,
    WriteQuorumSet,
    WriterRefusesWrites,
    WriterRestartedEmpty,
    WriterTakesWrites,
}

impl EventKind {
    /// The kind of a logged event line's JSON, if it is one of ours.
    pub fn of(event: &Value) -> Option<EventKind> {
        EventKind::deserialize(event.get("event")?).ok()
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_value(self) {
            Ok(Value::String(name)) => f.write_str(&name),
            _ => write!(f, "{self:?}"),
        }
    }
}

/// What hears of every event as it is emitted, besides the log (the metrics): the event stream
/// depends on no reader of it.
pub trait EventObserver: Send + Sync {
    fn on_event(&self, kind: EventKind, event: &Value);
}

/// Hears nothing.
impl EventObserver for () {
    fn on_event(&self, _: EventKind, _: &Value) {}
}

/// How many recent events `/api/events` and the status page show.
const RECENT: usize = 500;

pub struct EventSink {
    log: Mutex<EventLog>,
    live: broadcast::Sender<String>,
    /// The last [`RECENT`] events, oldest first.
    recent: Mutex<VecDeque<String>>,
    observer: Arc<dyn EventObserver>,
    /// Also print each event on standard error (the controller's log).
    echo: std::sync::atomic::AtomicBool,
}

/// `events.jsonl`, rotated to `events.jsonl.1` at `max_bytes` (one generation kept).
struct EventLog {
    path: PathBuf,
    file: Option<std::fs::File>,
    written: u64,
    max_bytes: u64,
}

impl EventLog {
    fn open(path: &Path, max_bytes: u64) -> EventLog {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(
                |e| tracing::warn!(path = %path.display(), error = %e, "cannot open the event log"),
            )
            .ok();
        let written = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        EventLog {
            path: path.to_path_buf(),
            file,
            written,
            max_bytes,
        }
    }

    fn append(&mut self, line: &str) {
        if self.written + line.len() as u64 + 1 > self.max_bytes && self.written > 0 {
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            self.file = None;
            if let Err(e) = std::fs::rename(&self.path, &rotated) {
                tracing::warn!(error = %e, "cannot rotate the event log");
            }
            *self = EventLog::open(&self.path.clone(), self.max_bytes);
        }
        if let Some(file) = &mut self.file
            && writeln!(file, "{line}").is_ok()
        {
            self.written += line.len() as u64 + 1;
        }
    }
}

impl EventSink {
    /// Appends to `path` (rotated at `max_bytes`); events are still logged, counted and broadcast
    /// when the file cannot be opened.
    pub fn open(path: &Path, max_bytes: u64, observer: Arc<dyn EventObserver>) -> EventSink {
        EventSink {
            log: Mutex::new(EventLog::open(path, max_bytes)),
            live: broadcast::channel(1024).0,
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            observer,
            echo: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The last events, oldest first, each one JSON object.
    pub fn recent(&self) -> Vec<String> {
        self.recent
            .lock()
            .expect("recent events lock")
            .iter()
            .cloned()
            .collect()
    }

    pub fn echo_to_stderr(&self, on: bool) {
        self.echo.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.live.subscribe()
    }

    /// Emits `{"ts": "...", "event": kind, ...data}`.
    pub fn emit(&self, kind: EventKind, data: impl Serialize) {
        let mut event = json!({ "ts": crate::clock::now_rfc3339(), "event": kind });
        if let (Value::Object(map), Ok(Value::Object(extra))) =
            (&mut event, serde_json::to_value(data))
        {
            map.extend(extra);
        }
        self.observer.on_event(kind, &event);
        let line = event.to_string();
        tracing::debug!(target: "valkey_dr::event", "{line}");
        if self.echo.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!("{line}");
        }
        self.log.lock().expect("event log lock").append(&line);
        {
            let mut recent = self.recent.lock().expect("recent events lock");
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(line.clone());
        }
        let _ = self.live.send(line);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_log_rotates_at_its_size_and_keeps_one_generation() {
        let dir = std::env::temp_dir().join(format!("valkey-dr-events-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let sink = super::EventSink::open(&path, 2_000, std::sync::Arc::new(()));
        for i in 0..100 {
            sink.emit(super::EventKind::Analysis, serde_json::json!({ "i": i }));
        }
        let current = std::fs::read_to_string(&path).unwrap();
        let previous = std::fs::read_to_string(dir.join("events.jsonl.1")).unwrap();
        assert!(current.len() <= 2_000 && previous.len() <= 2_000);
        assert!(
            current.contains("\"i\":99"),
            "the newest event is in the current file"
        );
        assert!(!std::fs::exists(dir.join("events.jsonl.2")).unwrap());
        // Every line whole, in both files.
        for line in current.lines().chain(previous.lines()) {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        assert_eq!(sink.recent().len(), 100);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
