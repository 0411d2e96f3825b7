//! One function per fuzz target. Each takes arbitrary bytes, must never panic on them, and checks
//! a property where there is one. `fuzz/fuzz_targets/*` call these; `tests/corpus.rs` replays the
//! committed corpus through them in `make test`, so a crash found once stays fixed.

use std::sync::{Arc, OnceLock};

use valkey_dr_core::{Change, Config, Ownership, RecordSet, RecordType};
use valkey_dr_dns::embedded::{Zone, respond};

/// The config parser: any text is rejected with an error or accepted; an accepted config survives
/// a round trip through its own serialization.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text) {
        let again = Config::parse(&config.to_toml()).expect("a valid config parses again");
        assert_eq!(again, config);
    }
}

/// The `INFO replication` parser, fed what a (possibly hostile) server might send.
pub fn info_replication(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = valkey_dr_core::observation::parse_info_replication(text);
}

/// Inputs that arrive as events: Lambda events (SNS ElastiCache notifications, schedules, direct
/// invokes), control-socket requests, and ownership TXT data read from DNS.
pub fn events(data: &[u8]) {
    if let Ok(event) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = valkey_dr_core::notification::parse(&event);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = valkey_dr_core::notification::parse_sns_message(text);
    }
    let _ = serde_json::from_slice::<valkey_dr_controller::control::Request>(data);
    if let Ok(text) = std::str::from_utf8(data)
        && let Some(ownership) = Ownership::parse(text)
    {
        // What we parse, we can write back and parse to the same value.
        assert_eq!(Ownership::parse(&ownership.to_txt()), Some(ownership));
    }
}

fn zone() -> Arc<Zone> {
    static ZONE: OnceLock<Arc<Zone>> = OnceLock::new();
    ZONE.get_or_init(|| {
        let zone = Arc::new(Zone::new("valkey-dr.live"));
        let set = |name: &str, rtype, value: &str| Change::Create {
            new: RecordSet::new(name, rtype, 5, [value.to_string()]),
        };
        zone.apply_changes(&[
            set(
                "demo.valkey-dr.live",
                RecordType::Cname,
                "primary.us-east-1.valkey-dr.live.",
            ),
            set(
                "primary.us-east-1.valkey-dr.live",
                RecordType::A,
                "127.0.1.1",
            ),
            set(
                "reader.us-east-1.valkey-dr.live",
                RecordType::A,
                "127.0.1.2",
            ),
            set(
                "_valkey-dr.demo.valkey-dr.live",
                RecordType::Txt,
                "heritage=valkey-dr,owner=f,epoch=1,primary=us-east-1",
            ),
        ])
        .expect("static records");
        zone
    })
    .clone()
}

/// DNS request handling: any packet gets no answer or a well-formed one.
pub fn dns_request(data: &[u8]) {
    if let Some(response) = respond(zone(), data, 5) {
        hickory_proto::op::Message::from_vec(&response).expect("our response decodes");
    }
}

/// A fuzz target: arbitrary bytes in, a panic on a bug.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus replay.
pub const TARGETS: [(&str, Target); 4] = [
    ("config", config),
    ("info_replication", info_replication),
    ("events", events),
    ("dns_request", dns_request),
];
