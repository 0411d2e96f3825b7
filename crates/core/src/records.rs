//! DNS record sets and the records the system should publish for an analysis.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::analysis::{Analysis, EpochRecord};
use crate::config::Config;
use crate::names::fqdn;
use crate::observation::{NodeObservation, Role};
use crate::ownership::{self, Ownership};
use crate::topology::{NodeId, Topology};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RecordType {
    A,
    Aaaa,
    Cname,
    Txt,
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordType::A => "A",
            RecordType::Aaaa => "AAAA",
            RecordType::Cname => "CNAME",
            RecordType::Txt => "TXT",
        })
    }
}

/// All records of one name and type. Names are lower-case and fully qualified; values are sorted
/// so that two sets with the same content compare equal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordSet {
    pub name: String,
    pub rtype: RecordType,
    pub ttl: u32,
    pub values: Vec<String>,
}

impl RecordSet {
    pub fn new(
        name: &str,
        rtype: RecordType,
        ttl: u32,
        values: impl IntoIterator<Item = String>,
    ) -> Self {
        let mut values: Vec<String> = values.into_iter().collect();
        values.sort();
        values.dedup();
        RecordSet {
            name: fqdn(name),
            rtype,
            ttl,
            values,
        }
    }
}

impl fmt::Display for RecordSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.name,
            self.ttl,
            self.rtype,
            self.values.join(" ")
        )
    }
}

/// The names valkey-dr manages for one config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedNames {
    pub zone: String,
    pub global: String,
    pub ownership: String,
    pub ttl: u32,
    pub owner: String,
}

impl ManagedNames {
    pub fn from_config(config: &Config) -> Self {
        ManagedNames::new(
            &config.dns.global_name,
            &config.dns.zone,
            config.dns.ttl,
            &config.owner,
        )
    }

    /// The names for a global name (relative or absolute) in `zone`.
    pub fn new(global_name: &str, zone: &str, ttl: u32, owner: &str) -> Self {
        let global = crate::names::name_in_zone(global_name, zone);
        ManagedNames {
            zone: fqdn(zone),
            ownership: ownership::record_name(&global),
            global,
            ttl,
            owner: owner.to_string(),
        }
    }

    pub fn regional_primary(&self, region: &str) -> String {
        format!("primary.{region}.{}", self.zone)
    }

    pub fn regional_reader(&self, region: &str) -> String {
        format!("reader.{region}.{}", self.zone)
    }

    /// Every name the controller may write, for reading the current state.
    pub fn all(&self, topology: &Topology) -> Vec<String> {
        let mut names = vec![self.global.clone(), self.ownership.clone()];
        for region in &topology.regions {
            names.push(self.regional_primary(&region.name));
            names.push(self.regional_reader(&region.name));
        }
        names
    }
}

/// The records that should exist given the analysis. A name is left out (and so left untouched)
/// when the analysis does not know a correct value for it: lack of knowledge never deletes.
pub fn desired(
    names: &ManagedNames,
    topology: &Topology,
    analysis: &Analysis,
    epoch: Option<&EpochRecord>,
) -> Vec<RecordSet> {
    let mut records = Vec::new();
    let nodes_record = |name: String, nodes: &[NodeId]| -> Option<RecordSet> {
        let hosts: Vec<&str> = nodes
            .iter()
            .map(|n| topology.node(*n).endpoint.host.as_str())
            .collect();
        host_record(&name, names.ttl, &hosts)
    };
    for region in &topology.regions {
        if let Some(head) = analysis.heads[region.id.0] {
            records.extend(nodes_record(names.regional_primary(&region.name), &[head]));
        }
        records.extend(nodes_record(
            names.regional_reader(&region.name),
            &analysis.readers[region.id.0],
        ));
    }
    if let (Some(primary), Some(epoch)) = (analysis.active_primary, epoch)
        && epoch.primary == primary
    {
        let region = &topology.region_of(primary).name;
        records.push(RecordSet::new(
            &names.global,
            RecordType::Cname,
            names.ttl,
            [names.regional_primary(region)],
        ));
        records.push(ownership_record(names, epoch.epoch, region));
    }
    records.sort();
    records
}

/// The record set that leads `name` to `hosts`: their addresses (A, or AAAA when none is IPv4:
/// the two cannot share one set, and a mixed list publishes its IPv4 hosts) when every host is
/// an IP address, else a CNAME to the first (a CNAME takes one target). `None` for no host.
pub fn host_record(name: &str, ttl: u32, hosts: &[&str]) -> Option<RecordSet> {
    let ips: Vec<IpAddr> = hosts.iter().filter_map(|h| h.parse().ok()).collect();
    if ips.len() == hosts.len() && !ips.is_empty() {
        let v4: Vec<String> = ips
            .iter()
            .filter(|ip| ip.is_ipv4())
            .map(|ip| ip.to_string())
            .collect();
        if v4.is_empty() {
            Some(RecordSet::new(
                name,
                RecordType::Aaaa,
                ttl,
                ips.iter().map(|ip| ip.to_string()),
            ))
        } else {
            Some(RecordSet::new(name, RecordType::A, ttl, v4))
        }
    } else {
        hosts
            .first()
            .map(|h| RecordSet::new(name, RecordType::Cname, ttl, [fqdn(h)]))
    }
}

/// The ownership record beside the global name: who manages it, at which epoch, for which
/// region's writer.
pub fn ownership_record(names: &ManagedNames, epoch: u64, primary_region: &str) -> RecordSet {
    let owner = Ownership {
        owner: names.owner.clone(),
        epoch,
        primary_region: primary_region.to_string(),
    };
    RecordSet::new(
        &names.ownership,
        RecordType::Txt,
        names.ttl,
        [owner.to_txt()],
    )
}

/// Our ownership record among `records` (what a DNS provider holds): the TXT beside the global
/// name that parses and names us as its owner. One reading for every place that recovers or
/// checks the published epoch.
pub fn our_ownership(records: &[RecordSet], names: &ManagedNames) -> Option<Ownership> {
    records
        .iter()
        .filter(|r| r.name == names.ownership && r.rtype == RecordType::Txt)
        .flat_map(|r| r.values.iter())
        .filter_map(|v| Ownership::parse(v))
        .find(|o| o.owner == names.owner)
}

/// What a switchover publishes in the same write as its new epoch: the records that lead the name
/// to `target` (the global name, its ownership record, the target region's primary name), from
/// `observations` as they are once the move is done — `target` a primary, `old` following it.
/// Every other name is left to the next pass.
pub fn after_promotion(
    names: &ManagedNames,
    topology: &Topology,
    observations: &[NodeObservation],
    old: NodeId,
    target: NodeId,
    epoch: &EpochRecord,
) -> Vec<RecordSet> {
    let mut promised = observations.to_vec();
    for o in &mut promised {
        let role = if o.node == target {
            Role::Primary
        } else if o.node == old {
            Role::Replica {
                master: topology.replication_endpoint(target, old),
                link_up: true,
                sync_in_progress: false,
            }
        } else {
            continue;
        };
        if let Ok(info) = &mut o.state {
            info.role = role;
        }
    }
    let analysis = crate::analysis::analyze(topology, &promised, Some(epoch));
    let writer_names = [
        names.global.clone(),
        names.ownership.clone(),
        names.regional_primary(&topology.region_of(target).name),
    ];
    desired(names, topology, &analysis, Some(epoch))
        .into_iter()
        .filter(|r| writer_names.contains(&r.name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::analyze;
    use crate::testing::{LAB, down, healthy, lab, primary, replica_of};

    fn names() -> ManagedNames {
        ManagedNames::from_config(&Config::parse(LAB).unwrap())
    }

    fn find<'a>(records: &'a [RecordSet], name: &str) -> Option<&'a RecordSet> {
        records.iter().find(|r| r.name == name)
    }

    #[test]
    fn our_ownership_is_the_parsable_txt_beside_the_name_that_names_us() {
        let names = names();
        let ours = ownership_record(&names, 7, "us-east-2");
        let txt =
            |name: &str, value: &str| RecordSet::new(name, RecordType::Txt, 5, [value.to_string()]);
        let theirs = "heritage=valkey-dr,owner=someone-else,epoch=9,primary=us-east-1";
        let cases: [(&str, Vec<RecordSet>, Option<u64>); 6] = [
            ("nothing published", vec![], None),
            ("ours", vec![ours.clone()], Some(7)),
            ("another owner's", vec![txt(&names.ownership, theirs)], None),
            (
                "not valkey-dr's",
                vec![txt(&names.ownership, "v=spf1 -all")],
                None,
            ),
            (
                "ours under another name",
                vec![RecordSet {
                    name: names.global.clone(),
                    ..ours.clone()
                }],
                None,
            ),
            (
                "ours beside a foreign value",
                vec![RecordSet {
                    values: vec![theirs.into(), ours.values[0].clone()],
                    ..ours.clone()
                }],
                Some(7),
            ),
        ];
        for (case, records, epoch) in cases {
            let found = our_ownership(&records, &names);
            assert_eq!(found.map(|o| o.epoch), epoch, "{case}");
        }
    }

    #[test]
    fn healthy_lab_publishes_every_name() {
        let epoch = EpochRecord {
            epoch: 1,
            primary: NodeId(0),
        };
        let records = desired(
            &names(),
            &lab(),
            &analyze(&lab(), &healthy(), Some(&epoch)),
            Some(&epoch),
        );
        let text: Vec<String> = records.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "_valkey-dr.demo.valkey-dr.live. 5 TXT heritage=valkey-dr,owner=valkey-dr,epoch=1,primary=us-east-1",
                "demo.valkey-dr.live. 5 CNAME primary.us-east-1.valkey-dr.live.",
                "primary.us-east-1.valkey-dr.live. 5 A 127.0.1.1",
                "primary.us-east-2.valkey-dr.live. 5 A 127.0.2.1",
                "reader.us-east-1.valkey-dr.live. 5 A 127.0.1.2",
                "reader.us-east-2.valkey-dr.live. 5 A 127.0.2.2",
            ]
        );
    }

    #[test]
    fn a_switchover_publishes_only_the_names_that_lead_to_its_target() {
        let text = |records: Vec<RecordSet>| -> Vec<String> {
            records.iter().map(|r| r.to_string()).collect()
        };
        // (case, observations before the move, old, target, expected records)
        let cases = [
            (
                "to the other region's head: its primary name is already right",
                healthy(),
                0,
                2,
                vec![
                    "_valkey-dr.demo.valkey-dr.live. 5 TXT heritage=valkey-dr,owner=valkey-dr,epoch=2,primary=us-east-2",
                    "demo.valkey-dr.live. 5 CNAME primary.us-east-2.valkey-dr.live.",
                    "primary.us-east-2.valkey-dr.live. 5 A 127.0.2.1",
                ],
            ),
            (
                "to a replica of the writer's own region: the region's primary name moves too",
                healthy(),
                0,
                1,
                vec![
                    "_valkey-dr.demo.valkey-dr.live. 5 TXT heritage=valkey-dr,owner=valkey-dr,epoch=2,primary=us-east-1",
                    "demo.valkey-dr.live. 5 CNAME primary.us-east-1.valkey-dr.live.",
                    "primary.us-east-1.valkey-dr.live. 5 A 127.0.1.2",
                ],
            ),
            (
                "a node that does not answer changes nothing about the target's names",
                vec![primary(0), down(1), replica_of(2, 0, 100), down(3)],
                0,
                2,
                vec![
                    "_valkey-dr.demo.valkey-dr.live. 5 TXT heritage=valkey-dr,owner=valkey-dr,epoch=2,primary=us-east-2",
                    "demo.valkey-dr.live. 5 CNAME primary.us-east-2.valkey-dr.live.",
                    "primary.us-east-2.valkey-dr.live. 5 A 127.0.2.1",
                ],
            ),
        ];
        for (case, observations, old, target, expected) in cases {
            let epoch = EpochRecord {
                epoch: 2,
                primary: NodeId(target),
            };
            let records = after_promotion(
                &names(),
                &lab(),
                &observations,
                NodeId(old),
                NodeId(target),
                &epoch,
            );
            assert_eq!(text(records), expected, "{case}");
        }
    }

    #[test]
    fn unknown_writer_leaves_the_global_name_alone() {
        let epoch = EpochRecord {
            epoch: 1,
            primary: NodeId(0),
        };
        let observations = vec![
            down(0),
            replica_of(1, 0, 1),
            replica_of(2, 0, 1),
            replica_of(3, 2, 1),
        ];
        let records = desired(
            &names(),
            &lab(),
            &analyze(&lab(), &observations, Some(&epoch)),
            Some(&epoch),
        );
        assert!(find(&records, "demo.valkey-dr.live.").is_none());
        assert!(find(&records, "_valkey-dr.demo.valkey-dr.live.").is_none());
        assert!(find(&records, "primary.us-east-1.valkey-dr.live.").is_none());
        // A rogue master is never a target, of any name.
        let rogue = vec![
            primary(0),
            replica_of(1, 0, 1),
            primary(2),
            replica_of(3, 2, 1),
        ];
        let records = desired(
            &names(),
            &lab(),
            &analyze(&lab(), &rogue, Some(&epoch)),
            Some(&epoch),
        );
        assert!(
            records
                .iter()
                .all(|r| !r.values.contains(&"127.0.2.1".to_string())),
            "{records:?}"
        );
    }
}
