//! `calculate`: the pure diff from the records a DNS backend holds to the records we want.
//!
//! Ownership rules (after external-dns' TXT registry): the ownership TXT next to the global name
//! says who manages the names. Records under another owner are never touched; without any
//! ownership record only names that do not exist yet are created. Every update carries the value it
//! expects to replace, so a backend can apply it as a compare-and-swap.

use serde::{Deserialize, Serialize};

use crate::ownership::Ownership;
use crate::records::{RecordSet, RecordType};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    Create { new: RecordSet },
    Update { old: RecordSet, new: RecordSet },
    Delete { old: RecordSet },
}

impl Change {
    /// The record set this change expects to find (None: the name and type must not exist).
    pub fn expected(&self) -> Option<&RecordSet> {
        match self {
            Change::Create { .. } => None,
            Change::Update { old, .. } | Change::Delete { old } => Some(old),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Change::Create { new } | Change::Update { new, .. } => &new.name,
            Change::Delete { old } => &old.name,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// Names we want to change but may not: why, per name.
    pub conflicts: Vec<(String, String)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.conflicts.is_empty()
    }
}

pub fn calculate(
    current: &[RecordSet],
    desired: &[RecordSet],
    ownership_name: &str,
    owner: &str,
) -> Plan {
    let mut plan = Plan::default();
    let ownership_txt = current
        .iter()
        .find(|r| r.name == ownership_name && r.rtype == RecordType::Txt);
    let ownership = ownership_txt.and_then(|r| r.values.iter().find_map(|v| Ownership::parse(v)));
    let owned = match (ownership_txt, &ownership) {
        (None, _) => false,
        (Some(_), Some(o)) if o.owner == owner => true,
        (Some(_), Some(o)) => {
            return conflict_all(
                desired,
                format!("owned by \"{}\", not by us (\"{owner}\")", o.owner),
            );
        }
        (Some(_), None) => {
            return conflict_all(
                desired,
                "a TXT record not written by valkey-dr exists there".into(),
            );
        }
    };
    // A higher epoch in DNS means another controller promoted after us: we are stale.
    let desired_epoch = desired
        .iter()
        .find(|r| r.name == ownership_name)
        .and_then(|r| r.values.iter().find_map(|v| Ownership::parse(v)))
        .map(|o| o.epoch);
    if let (Some(published), Some(ours)) = (ownership.as_ref().map(|o| o.epoch), desired_epoch)
        && published > ours
    {
        return conflict_all(
            desired,
            format!("DNS carries epoch {published}, newer than ours ({ours})"),
        );
    }
    for want in desired {
        let at_name: Vec<&RecordSet> = current.iter().filter(|r| r.name == want.name).collect();
        let same_type = at_name.iter().find(|r| r.rtype == want.rtype);
        match (same_type, at_name.is_empty()) {
            (Some(have), _) if *have == want => {}
            (_, true) => plan.changes.push(Change::Create { new: want.clone() }),
            (_, false) if !owned => plan.conflicts.push((
                want.name.clone(),
                "exists and is not marked as ours by an ownership record".into(),
            )),
            (Some(have), _) => plan.changes.push(Change::Update {
                old: (*have).clone(),
                new: want.clone(),
            }),
            (None, false) => {
                // A name changing type (A <-> CNAME) is replaced: CNAME cannot coexist with other data.
                for have in at_name {
                    plan.changes.push(Change::Delete { old: have.clone() });
                }
                plan.changes.push(Change::Create { new: want.clone() });
            }
        }
    }
    plan
}

fn conflict_all(desired: &[RecordSet], reason: String) -> Plan {
    Plan {
        changes: Vec::new(),
        conflicts: desired
            .iter()
            .map(|r| (r.name.clone(), reason.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: &str = "_valkey-dr.demo.z.";

    fn cname(target: &str) -> RecordSet {
        RecordSet::new("demo.z.", RecordType::Cname, 5, [target.to_string()])
    }
    fn a(name: &str, ip: &str) -> RecordSet {
        RecordSet::new(name, RecordType::A, 5, [ip.to_string()])
    }
    fn txt(owner: &str, epoch: u64) -> RecordSet {
        let o = Ownership {
            owner: owner.into(),
            epoch,
            primary_region: "r1".into(),
        };
        RecordSet::new(OWN, RecordType::Txt, 5, [o.to_txt()])
    }
    fn foreign_txt() -> RecordSet {
        RecordSet::new(OWN, RecordType::Txt, 5, ["hello".to_string()])
    }
    fn create(r: RecordSet) -> Change {
        Change::Create { new: r }
    }
    fn update(old: RecordSet, new: RecordSet) -> Change {
        Change::Update { old, new }
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            current: Vec<RecordSet>,
            desired: Vec<RecordSet>,
            changes: Vec<Change>,
            conflicts: usize,
        }
        let cases = vec![
            Case {
                name: "empty zone: create everything",
                current: vec![],
                desired: vec![cname("p1."), txt("me", 1)],
                changes: vec![create(cname("p1.")), create(txt("me", 1))],
                conflicts: 0,
            },
            Case {
                name: "in sync: nothing to do",
                current: vec![cname("p1."), txt("me", 1)],
                desired: vec![cname("p1."), txt("me", 1)],
                changes: vec![],
                conflicts: 0,
            },
            Case {
                name: "owned: update with expected old value",
                current: vec![cname("p1."), txt("me", 1)],
                desired: vec![cname("p2."), txt("me", 2)],
                changes: vec![
                    update(cname("p1."), cname("p2.")),
                    update(txt("me", 1), txt("me", 2)),
                ],
                conflicts: 0,
            },
            Case {
                name: "owned by someone else: touch nothing",
                current: vec![cname("p1."), txt("other", 1)],
                desired: vec![cname("p2."), txt("me", 2)],
                changes: vec![],
                conflicts: 2,
            },
            Case {
                name: "foreign TXT at the ownership name: touch nothing",
                current: vec![cname("p1."), foreign_txt()],
                desired: vec![cname("p2."), txt("me", 2)],
                changes: vec![],
                conflicts: 2,
            },
            Case {
                name: "no ownership record: create missing names, leave existing ones",
                current: vec![cname("elsewhere.")],
                desired: vec![cname("p1."), txt("me", 1), a("primary.r1.z.", "10.0.0.1")],
                changes: vec![create(txt("me", 1)), create(a("primary.r1.z.", "10.0.0.1"))],
                conflicts: 1,
            },
            Case {
                name: "stale controller: DNS has a newer epoch",
                current: vec![cname("p2."), txt("me", 3)],
                desired: vec![cname("p1."), txt("me", 2)],
                changes: vec![],
                conflicts: 2,
            },
            Case {
                name: "type change replaces the record",
                current: vec![a("primary.r1.z.", "10.0.0.1"), txt("me", 1)],
                desired: vec![RecordSet::new(
                    "primary.r1.z.",
                    RecordType::Cname,
                    5,
                    ["node.example.".to_string()],
                )],
                changes: vec![
                    Change::Delete {
                        old: a("primary.r1.z.", "10.0.0.1"),
                    },
                    create(RecordSet::new(
                        "primary.r1.z.",
                        RecordType::Cname,
                        5,
                        ["node.example.".to_string()],
                    )),
                ],
                conflicts: 0,
            },
            Case {
                name: "TTL change is an update",
                current: vec![a("primary.r1.z.", "10.0.0.1"), txt("me", 1)],
                desired: vec![RecordSet::new(
                    "primary.r1.z.",
                    RecordType::A,
                    30,
                    ["10.0.0.1".to_string()],
                )],
                changes: vec![update(
                    a("primary.r1.z.", "10.0.0.1"),
                    RecordSet::new("primary.r1.z.", RecordType::A, 30, ["10.0.0.1".to_string()]),
                )],
                conflicts: 0,
            },
        ];
        for case in cases {
            let plan = calculate(&case.current, &case.desired, OWN, "me");
            assert_eq!(plan.changes, case.changes, "{}", case.name);
            assert_eq!(
                plan.conflicts.len(),
                case.conflicts,
                "{}: {:?}",
                case.name,
                plan.conflicts
            );
        }
    }

    #[test]
    fn applying_a_plan_converges() {
        // Idempotence: after applying the plan's changes, the same desired state plans nothing.
        let mut current = vec![cname("p1."), txt("me", 1)];
        let desired = vec![cname("p2."), txt("me", 2), a("primary.r2.z.", "10.0.0.2")];
        for change in calculate(&current, &desired, OWN, "me").changes {
            if let Some(old) = change.expected() {
                current.retain(|r| r != old);
            }
            if let Change::Create { new } | Change::Update { new, .. } = change {
                current.push(new);
            }
        }
        assert!(calculate(&current, &desired, OWN, "me").is_empty());
    }
}
