//! The in-memory zone: record sets plus an SOA serial that rises with every change.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use valkey_dr_core::names::fqdn;
use valkey_dr_core::{Change, RecordSet, RecordType};

use crate::{DnsError, DnsProvider};

/// What the zone says about one name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Records that answer the question (a CNAME chain within the zone comes first).
    Answer(Vec<RecordSet>),
    /// The name exists but has no data of that type.
    NoData,
    NxDomain,
    /// Not a name of this zone.
    NotInZone,
}

struct State {
    sets: BTreeMap<(String, RecordType), RecordSet>,
}

pub struct Zone {
    origin: String,
    state: RwLock<State>,
    /// The SOA serial: rises with every change, stored after the change is made (under the write
    /// lock). Read without the lock, it also tells the server's answer caches that answers changed.
    serial: AtomicU32,
    /// False for a copy of records held elsewhere (etcd) until the first copy arrived: until then
    /// the server answers SERVFAIL, so that resolvers ask another name server instead of caching
    /// an NXDOMAIN that no one decided.
    loaded: AtomicBool,
    /// For a copy: how long it is vouched for after its source last answered (see
    /// [`Zone::is_current`]).
    vouch: Option<Vouch>,
}

/// A copy's vouch: when its source last answered, and for how long that counts.
struct Vouch {
    origin: Instant,
    /// Milliseconds after `origin` of the last answer (0: none yet).
    confirmed_ms: AtomicU64,
    lasts: Duration,
}

impl Vouch {
    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

/// How many CNAMEs the server follows inside its own zone before it stops.
const MAX_CNAME_CHAIN: usize = 8;

impl Zone {
    /// An empty zone. The serial starts at the current Unix time so that it keeps rising across
    /// restarts (secondaries and caches compare serials).
    pub fn new(origin: &str) -> Zone {
        Self::with_vouch(origin, None)
    }

    /// An empty copy of records held elsewhere: it answers nothing (SERVFAIL) until the first
    /// [`Zone::replace_all`], and again whenever its source has not answered ([`Zone::confirm`])
    /// for `vouched_for`: records may have changed there meanwhile, and a site that answers an
    /// old writer leads clients to a node that is no longer the primary, while a SERVFAIL sends
    /// resolvers to another site's server.
    pub fn awaiting_copy(origin: &str, vouched_for: Duration) -> Zone {
        Self::with_vouch(
            origin,
            Some(Vouch {
                origin: Instant::now(),
                confirmed_ms: AtomicU64::new(0),
                lasts: vouched_for,
            }),
        )
    }

    fn with_vouch(origin: &str, vouch: Option<Vouch>) -> Zone {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1);
        Zone {
            origin: fqdn(origin),
            state: RwLock::new(State {
                sets: BTreeMap::new(),
            }),
            serial: AtomicU32::new(now as u32),
            loaded: AtomicBool::new(vouch.is_none()),
            vouch,
        }
    }

    /// Whether the zone holds records to answer from (see [`Zone::awaiting_copy`]).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The source of a copy answered just now: what the zone holds is what it holds.
    pub fn confirm(&self) {
        if let Some(vouch) = &self.vouch {
            vouch
                .confirmed_ms
                .store(vouch.elapsed_ms(), Ordering::Release);
        }
    }

    /// How long ago a copy's source last answered (`None`: a zone of its own, or never).
    pub fn confirmed_ago(&self) -> Option<Duration> {
        let vouch = self.vouch.as_ref()?;
        let confirmed = vouch.confirmed_ms.load(Ordering::Acquire);
        (confirmed > 0).then(|| Duration::from_millis(vouch.elapsed_ms().saturating_sub(confirmed)))
    }

    /// Whether the zone may answer: loaded, and for a copy, vouched for by a recent answer of
    /// its source.
    pub fn is_current(&self) -> bool {
        self.is_loaded()
            && self
                .vouch
                .as_ref()
                .is_none_or(|vouch| self.confirmed_ago().is_some_and(|ago| ago <= vouch.lasts))
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn serial(&self) -> u32 {
        self.serial.load(Ordering::Acquire)
    }

    /// Raises the serial; called with the write lock held, after the change.
    fn raise_serial(&self) {
        let next = self.serial.load(Ordering::Relaxed).wrapping_add(1).max(1);
        self.serial.store(next, Ordering::Release);
    }

    pub fn contains(&self, name: &str) -> bool {
        name == self.origin || name.ends_with(&format!(".{}", self.origin))
    }

    /// Every record set, for status displays.
    pub fn snapshot(&self) -> Vec<RecordSet> {
        self.state
            .read()
            .expect("zone lock")
            .sets
            .values()
            .cloned()
            .collect()
    }

    /// Replaces every record set with `sets` (a copy of the records held elsewhere); the serial
    /// rises when anything changed. Returns whether it did.
    pub fn replace_all(&self, sets: Vec<RecordSet>) -> bool {
        let sets: BTreeMap<_, _> = sets
            .into_iter()
            .filter(|s| self.contains(&s.name))
            .map(|s| ((s.name.clone(), s.rtype), s))
            .collect();
        let mut state = self.state.write().expect("zone lock");
        let first = !self.loaded.swap(true, Ordering::AcqRel);
        if state.sets == sets && !first {
            return false;
        }
        state.sets = sets;
        // Also on the first copy, even an empty one: the answer caches drop their SERVFAILs.
        self.raise_serial();
        true
    }

    /// Answers one question the way an authoritative server must: exact data, else a CNAME (followed
    /// within the zone), else NODATA for an existing name (including empty non-terminals), else
    /// NXDOMAIN.
    pub fn lookup(&self, name: &str, rtype: Option<RecordType>) -> Lookup {
        let name = name.to_ascii_lowercase();
        if !self.contains(&name) {
            return Lookup::NotInZone;
        }
        let state = self.state.read().expect("zone lock");
        let Some(rtype) = rtype else {
            // ANY: everything at the name.
            let all: Vec<RecordSet> = state
                .sets
                .values()
                .filter(|s| s.name == name)
                .cloned()
                .collect();
            return if all.is_empty() {
                self.no_data_or_nx(&state, &name)
            } else {
                Lookup::Answer(all)
            };
        };
        let mut answer = Vec::new();
        let mut current = name.clone();
        for _ in 0..MAX_CNAME_CHAIN {
            if let Some(set) = state.sets.get(&(current.clone(), rtype)) {
                answer.push(set.clone());
                return Lookup::Answer(answer);
            }
            match state.sets.get(&(current.clone(), RecordType::Cname)) {
                Some(cname) if rtype != RecordType::Cname => {
                    answer.push(cname.clone());
                    let target = cname.values[0].clone();
                    if !self.contains(&target) {
                        return Lookup::Answer(answer);
                    }
                    current = target;
                }
                _ => break,
            }
        }
        if !answer.is_empty() {
            return Lookup::Answer(answer);
        }
        self.no_data_or_nx(&state, &name)
    }

    fn no_data_or_nx(&self, state: &State, name: &str) -> Lookup {
        let suffix = format!(".{name}");
        let exists = name == self.origin
            || state
                .sets
                .keys()
                .any(|(k, _)| k == name || k.ends_with(&suffix));
        if exists {
            Lookup::NoData
        } else {
            Lookup::NxDomain
        }
    }

    /// Applies a batch atomically: every change's expected old value must match, or nothing is
    /// applied. The serial rises once per applied batch.
    pub fn apply_changes(&self, changes: &[Change]) -> Result<(), DnsError> {
        let mut state = self.state.write().expect("zone lock");
        for change in changes {
            let name = change.name();
            if !self.contains(name) {
                return Err(DnsError::OutOfZone {
                    name: name.to_string(),
                    zone: self.origin.clone(),
                });
            }
            let (name, rtype) = crate::change_key(change);
            crate::check_expected(change, state.sets.get(&(name.to_string(), rtype)))?;
            // A CNAME excludes other data at the name (RFC 1034 3.6.2).
            if let Change::Create { new } = change {
                let others = state.sets.keys().filter(|(k, _)| k == &new.name).count();
                let deleted = changes
                    .iter()
                    .filter(|c| matches!(c, Change::Delete { old } if old.name == new.name))
                    .count();
                if others > deleted
                    && (new.rtype == RecordType::Cname
                        || state
                            .sets
                            .contains_key(&(new.name.clone(), RecordType::Cname)))
                {
                    return Err(DnsError::Conflict {
                        name: name.to_string(),
                        expected: "no other data beside a CNAME".into(),
                        found: "other records at the name".into(),
                    });
                }
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        for change in changes {
            match change {
                Change::Create { new } | Change::Update { new, .. } => {
                    if let Change::Update { old, .. } = change {
                        state.sets.remove(&(old.name.clone(), old.rtype));
                    }
                    state
                        .sets
                        .insert((new.name.clone(), new.rtype), new.clone());
                }
                Change::Delete { old } => {
                    state.sets.remove(&(old.name.clone(), old.rtype));
                }
            }
        }
        self.raise_serial();
        Ok(())
    }
}

#[async_trait]
impl DnsProvider for Zone {
    async fn records(&self, names: &[String]) -> Result<Vec<RecordSet>, DnsError> {
        let state = self.state.read().expect("zone lock");
        Ok(state
            .sets
            .values()
            .filter(|s| names.iter().any(|n| fqdn(n) == s.name))
            .cloned()
            .collect())
    }

    async fn apply(&self, changes: &[Change]) -> Result<(), DnsError> {
        self.apply_changes(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, rtype: RecordType, value: &str) -> RecordSet {
        RecordSet::new(name, rtype, 5, [value.to_string()])
    }

    #[test]
    fn a_copy_answers_only_while_its_source_answered_within_the_vouch() {
        let own = Zone::new("z.test");
        assert!(own.is_current(), "a zone of its own needs no source");
        let copy = Zone::awaiting_copy("z.test", Duration::from_millis(200));
        assert!(!copy.is_current(), "nothing loaded");
        copy.replace_all(Vec::new());
        assert!(!copy.is_current(), "loaded, but its source never answered");
        copy.confirm();
        assert!(copy.is_current());
        std::thread::sleep(Duration::from_millis(300));
        assert!(!copy.is_current(), "its source silent past the vouch");
        copy.confirm();
        assert!(copy.is_current());
    }

    #[test]
    fn lookups_follow_cnames_and_tell_nodata_from_nxdomain() {
        let zone = Zone::new("z.test");
        zone.apply_changes(&[
            Change::Create {
                new: set("demo.z.test", RecordType::Cname, "primary.r1.z.test."),
            },
            Change::Create {
                new: set("primary.r1.z.test", RecordType::A, "10.0.0.1"),
            },
            Change::Create {
                new: set("ext.z.test", RecordType::Cname, "example.org."),
            },
        ])
        .unwrap();
        let cases = [
            (
                "demo.z.test.",
                Some(RecordType::A),
                Lookup::Answer(vec![
                    set("demo.z.test", RecordType::Cname, "primary.r1.z.test."),
                    set("primary.r1.z.test", RecordType::A, "10.0.0.1"),
                ]),
            ),
            (
                "DEMO.z.test.",
                Some(RecordType::Cname),
                Lookup::Answer(vec![set(
                    "demo.z.test",
                    RecordType::Cname,
                    "primary.r1.z.test.",
                )]),
            ),
            (
                "ext.z.test.",
                Some(RecordType::A),
                Lookup::Answer(vec![set("ext.z.test", RecordType::Cname, "example.org.")]),
            ),
            ("primary.r1.z.test.", Some(RecordType::Txt), Lookup::NoData),
            ("r1.z.test.", Some(RecordType::A), Lookup::NoData),
            ("z.test.", Some(RecordType::A), Lookup::NoData),
            ("nope.z.test.", Some(RecordType::A), Lookup::NxDomain),
            ("example.org.", Some(RecordType::A), Lookup::NotInZone),
            ("xz.test.", Some(RecordType::A), Lookup::NotInZone),
        ];
        for (name, rtype, expected) in cases {
            assert_eq!(zone.lookup(name, rtype), expected, "{name} {rtype:?}");
        }
    }

    #[test]
    fn batches_are_compare_and_swap_and_raise_the_serial() {
        let zone = Zone::new("z.test");
        let v1 = set("demo.z.test", RecordType::Cname, "a.z.test.");
        let v2 = set("demo.z.test", RecordType::Cname, "b.z.test.");
        let serial = zone.serial();
        zone.apply_changes(&[Change::Create { new: v1.clone() }])
            .unwrap();
        assert_eq!(zone.serial(), serial + 1);
        // A create of an existing name and an update from a wrong old value both fail whole.
        assert!(matches!(
            zone.apply_changes(&[Change::Create { new: v2.clone() }]),
            Err(DnsError::Conflict { .. })
        ));
        let wrong = set("demo.z.test", RecordType::Cname, "c.z.test.");
        let batch = [
            Change::Create {
                new: set("x.z.test", RecordType::A, "10.0.0.9"),
            },
            Change::Update {
                old: wrong,
                new: v2.clone(),
            },
        ];
        assert!(matches!(
            zone.apply_changes(&batch),
            Err(DnsError::Conflict { .. })
        ));
        assert_eq!(
            zone.lookup("x.z.test.", Some(RecordType::A)),
            Lookup::NxDomain,
            "nothing of a failed batch lands"
        );
        assert_eq!(zone.serial(), serial + 1);
        zone.apply_changes(&[Change::Update {
            old: v1,
            new: v2.clone(),
        }])
        .unwrap();
        assert_eq!(zone.snapshot(), vec![v2]);
        assert_eq!(zone.serial(), serial + 2);
        assert!(matches!(
            zone.apply_changes(&[Change::Create {
                new: set("demo.other.", RecordType::A, "10.0.0.1")
            }]),
            Err(DnsError::OutOfZone { .. })
        ));
    }
}
