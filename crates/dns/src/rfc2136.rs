//! RFC 2136 dynamic updates, signed with TSIG (RFC 8945), to the primary server of a zone the
//! team already runs (BIND, Knot, PowerDNS).
//!
//! A batch of changes is ONE UPDATE message, which the server applies atomically: its
//! prerequisites are the record sets the changes replace ("RRset exists, value dependent") or
//! expect absent ("RRset does not exist"), its updates delete those sets and add the new ones. So
//! the global CNAME and its ownership TXT (epoch included) move together or not at all, and a
//! writer that read stale records loses the race on the server itself (NXRRSET/YXRRSET), where
//! external-dns's provider sends updates without prerequisites and checks ownership client-side.
//!
//! Reads are plain queries to the primary over TCP, pipelined on one connection: one per managed
//! name and type, so a large zone costs no more than a small one.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hickory_proto::op::{Message, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm as HickoryAlgorithm, TsigError};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType as HickoryType, TSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use valkey_dr_core::config::TsigAlgorithm;
use valkey_dr_core::{Change, RecordSet, RecordType};

use crate::wire::{from_record, to_hickory_type, to_records};
use crate::{DnsError, DnsProvider, change_key, check_expected};

/// A TSIG key. Its secret never appears in `Debug`, logs or errors.
#[derive(Clone)]
pub struct TsigKey {
    pub name: String,
    pub algorithm: TsigAlgorithm,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl TsigKey {
    /// A key from its base64 secret, as BIND's `tsig-keygen`, `keymgr` and `pdnsutil` print it.
    pub fn from_base64(
        name: &str,
        algorithm: TsigAlgorithm,
        secret: &str,
    ) -> Result<TsigKey, String> {
        let secret = data_encoding::BASE64
            .decode(secret.trim().as_bytes())
            .map_err(|_| "the TSIG secret is not base64".to_string())?;
        if secret.is_empty() {
            return Err("the TSIG secret is empty".into());
        }
        Ok(TsigKey {
            name: name.to_string(),
            algorithm,
            secret,
        })
    }
}

/// The record types a managed name can hold; reads ask for each.
const READ_TYPES: [RecordType; 4] = [
    RecordType::Cname,
    RecordType::A,
    RecordType::Aaaa,
    RecordType::Txt,
];

/// What one read query asks: a name and one of our types.
type Question = (Name, RecordType);

/// Seconds either side of our clock a server accepts a signature (RFC 8945's recommended 300).
const FUDGE: u16 = 300;

pub struct Rfc2136 {
    servers: Vec<SocketAddr>,
    zone: Name,
    key_name: String,
    signer: TSigner,
    timeout: Duration,
}

impl Rfc2136 {
    pub fn new(
        servers: Vec<SocketAddr>,
        zone: &str,
        key: TsigKey,
        timeout: Duration,
    ) -> Result<Rfc2136, String> {
        let zone = fqdn_name(zone).ok_or_else(|| format!("{zone} is not a DNS name"))?;
        let key_name =
            fqdn_name(&key.name).ok_or_else(|| format!("{} is not a DNS name", key.name))?;
        let algorithm = match key.algorithm {
            TsigAlgorithm::HmacSha256 => HickoryAlgorithm::HmacSha256,
            TsigAlgorithm::HmacSha384 => HickoryAlgorithm::HmacSha384,
            TsigAlgorithm::HmacSha512 => HickoryAlgorithm::HmacSha512,
        };
        let signer = TSigner::new(key.secret, algorithm, key_name, FUDGE)
            .map_err(|e| format!("TSIG key {}: {e}", key.name))?;
        Ok(Rfc2136 {
            servers,
            zone,
            key_name: key.name,
            signer,
            timeout,
        })
    }

    /// A name of ours as a wire name; refused when it is outside the zone.
    fn owner(&self, name: &str) -> Result<Name, DnsError> {
        fqdn_name(name)
            .filter(|n| self.zone.zone_of(n))
            .ok_or_else(|| DnsError::OutOfZone {
                name: name.to_string(),
                zone: self.zone.to_ascii(),
            })
    }

    /// The one UPDATE message for a batch: prerequisites = what each change expects, updates =
    /// delete the expected set, add the new one.
    pub fn update_message(&self, changes: &[Change]) -> Result<Message, DnsError> {
        let mut message = Message::query();
        message.metadata.op_code = OpCode::Update;
        message.metadata.recursion_desired = false;
        let mut zone = Query::new();
        zone.set_name(self.zone.clone())
            .set_query_class(DNSClass::IN)
            .set_query_type(HickoryType::SOA);
        message.add_zone(zone);
        for change in changes {
            let (name, rtype) = change_key(change);
            let owner = self.owner(name)?;
            match change.expected() {
                // RFC 2136 §2.4.2: RRset exists (value dependent) — TTL 0, the set's records.
                Some(old) => {
                    message.add_pre_requisites(to_records(old).into_iter().map(|mut r| {
                        r.ttl = 0;
                        r
                    }))
                }
                // §2.4.3: RRset does not exist — class NONE, no data.
                None => {
                    let mut absent = Record::update0(owner.clone(), 0, to_hickory_type(rtype));
                    absent.dns_class = DNSClass::NONE;
                    message.add_pre_requisite(absent);
                }
            }
            if change.expected().is_some() {
                // §2.5.2: delete an RRset — class ANY, no data.
                let mut delete = Record::update0(owner, 0, to_hickory_type(rtype));
                delete.dns_class = DNSClass::ANY;
                message.add_update(delete);
            }
            if let Change::Create { new } | Change::Update { new, .. } = change {
                message.add_updates(to_records(new));
            }
        }
        Ok(message)
    }

    /// Sends a signed UPDATE to the first server that answers and checks the answer's signature.
    async fn send_update(&self, changes: &[Change]) -> Result<ResponseCode, DnsError> {
        let mut failures = Vec::new();
        for &server in &self.servers {
            // Each attempt is built and signed afresh: a new id and time.
            let mut message = self.update_message(changes)?;
            let mut verifier = message
                .finalize(&self.signer, unix_now())
                .map_err(|e| DnsError::Rejected(format!("cannot sign the update: {e}")))?
                .ok_or_else(|| DnsError::Rejected("the update was not signed".into()))?;
            let bytes = message
                .to_vec()
                .map_err(|e| DnsError::Rejected(format!("cannot encode the update: {e}")))?;
            let reply = match self.exchange(server, &[bytes]).await {
                Ok(mut replies) => replies.remove(0),
                Err(e) => {
                    failures.push(format!("{server}: {e}"));
                    continue;
                }
            };
            let parsed = Message::from_vec(&reply).map_err(|e| {
                DnsError::Unavailable(format!("{server} sent an answer that does not parse: {e}"))
            })?;
            let code = parsed.metadata.response_code;
            let tsig_error = parsed.signature().and_then(|s| s.data.error);
            if let Some(error) = tsig_error {
                return Err(DnsError::Rejected(format!(
                    "{server} refused our TSIG key {}: {} — check the key name, algorithm and secret, and the server's clock",
                    self.key_name,
                    match error {
                        TsigError::BadKey =>
                            "BADKEY (it does not know this key and algorithm, or — Knot's answer to a denied update — its update-policy / ACL does not grant the key these names)",
                        TsigError::BadSig => "BADSIG (the secret differs)",
                        TsigError::BadTime => "BADTIME (the clocks differ by more than 300 s)",
                        _ => "a TSIG error",
                    }
                )));
            }
            if parsed.signature().is_none() && code != ResponseCode::NoError {
                // An unsigned refusal: the server did not accept our key (PowerDNS, for one,
                // answers a bad signature this way) or does not serve the zone.
                return Err(DnsError::Rejected(format!(
                    "{server} answered {code} unsigned: it did not accept our TSIG key {} (name, algorithm or secret), or is not authoritative for {}",
                    self.key_name, self.zone
                )));
            }
            // Any other answer to a signed update must be signed with our key.
            verifier.verify(&reply).map_err(|e| {
                DnsError::Rejected(format!(
                    "{server}'s answer failed TSIG verification ({e}); the update's outcome is unknown and the next pass reads it back"
                ))
            })?;
            return Ok(code);
        }
        Err(no_server_answered(&failures))
    }

    /// Sends each framed message over one TCP connection and returns the answers in order.
    async fn exchange(
        &self,
        server: SocketAddr,
        messages: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>, String> {
        let work = async {
            let mut stream = TcpStream::connect(server)
                .await
                .map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for m in messages {
                out.extend_from_slice(&(m.len() as u16).to_be_bytes());
                out.extend_from_slice(m);
            }
            stream.write_all(&out).await.map_err(|e| e.to_string())?;
            let ids: Vec<[u8; 2]> = messages.iter().map(|m| [m[0], m[1]]).collect();
            let mut replies: Vec<Option<Vec<u8>>> = vec![None; messages.len()];
            for _ in 0..messages.len() {
                let len = stream.read_u16().await.map_err(|e| e.to_string())? as usize;
                let mut reply = vec![0; len];
                stream
                    .read_exact(&mut reply)
                    .await
                    .map_err(|e| e.to_string())?;
                // Servers may answer pipelined queries out of order (RFC 7766): match by id.
                let slot = ids
                    .iter()
                    .position(|id| reply.len() >= 2 && reply[..2] == id[..])
                    .ok_or("an answer with an id we never sent")?;
                replies[slot] = Some(reply);
            }
            Ok(replies.into_iter().flatten().collect())
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| format!("no answer within {} ms", self.timeout.as_millis()))?
    }

    /// One query per name and type, encoded, with what each asks. The ids are consecutive from
    /// a random start, so that answers pipelined on one connection match their questions (random
    /// ids collide within a batch: ~0.4% of passes with 24 queries).
    fn read_queries(&self, names: &[String]) -> Result<(Vec<Question>, Vec<Vec<u8>>), DnsError> {
        let first_id = Message::query().metadata.id;
        let mut asked = Vec::new();
        let mut queries = Vec::new();
        for name in names {
            let owner = self.owner(name)?;
            for rtype in READ_TYPES {
                let mut message = Message::query();
                message.metadata.id = first_id.wrapping_add(queries.len() as u16);
                message.metadata.recursion_desired = false;
                message.add_query(Query::query(owner.clone(), to_hickory_type(rtype)));
                let bytes = message
                    .to_vec()
                    .map_err(|e| DnsError::Rejected(format!("cannot encode a query: {e}")))?;
                asked.push((owner.clone(), rtype));
                queries.push(bytes);
            }
        }
        Ok((asked, queries))
    }

    /// The record sets held for `names`, from the first server that answers.
    async fn read(&self, names: &[String]) -> Result<Vec<RecordSet>, DnsError> {
        let (asked, queries) = self.read_queries(names)?;
        let mut failures = Vec::new();
        for &server in &self.servers {
            let replies = match self.exchange(server, &queries).await {
                Ok(r) if r.len() == queries.len() => r,
                Ok(_) => {
                    failures.push(format!("{server}: answers missing"));
                    continue;
                }
                Err(e) => {
                    failures.push(format!("{server}: {e}"));
                    continue;
                }
            };
            let mut sets = Vec::new();
            for ((owner, rtype), reply) in asked.iter().zip(replies) {
                let reply = Message::from_vec(&reply).map_err(|e| {
                    DnsError::Unavailable(format!("{server}: an answer does not parse: {e}"))
                })?;
                match reply.metadata.response_code {
                    ResponseCode::NoError | ResponseCode::NXDomain => {}
                    code => {
                        return Err(DnsError::Unavailable(format!(
                            "{server} answered {code} for {owner} {rtype}"
                        )));
                    }
                }
                // Only the asked name's own records: a CNAME answer to a TXT query is not TXT.
                let mut ttl = 0;
                let values: Vec<String> = reply
                    .answers
                    .iter()
                    .filter(|r| r.name == *owner)
                    .filter_map(|r| {
                        let (t, value) = from_record(r)?;
                        (t == *rtype).then(|| {
                            ttl = r.ttl;
                            value
                        })
                    })
                    .collect();
                if !values.is_empty() {
                    sets.push(RecordSet::new(&owner.to_ascii(), *rtype, ttl, values));
                }
            }
            return Ok(sets);
        }
        Err(no_server_answered(&failures))
    }
}

#[async_trait]
impl DnsProvider for Rfc2136 {
    async fn records(&self, names: &[String]) -> Result<Vec<RecordSet>, DnsError> {
        self.read(names).await
    }

    async fn apply(&self, changes: &[Change]) -> Result<(), DnsError> {
        if changes.is_empty() {
            return Ok(());
        }
        match self.send_update(changes).await? {
            ResponseCode::NoError => Ok(()),
            // A prerequisite failed: read what is there now and name the first difference.
            code @ (ResponseCode::NXRRSet
            | ResponseCode::YXRRSet
            | ResponseCode::NXDomain
            | ResponseCode::YXDomain) => {
                let names: Vec<String> = changes
                    .iter()
                    .map(|c| change_key(c).0.to_string())
                    .collect();
                let held = self.read(&names).await?;
                for change in changes {
                    let (name, rtype) = change_key(change);
                    let found = held
                        .iter()
                        .find(|s| s.name == valkey_dr_core::names::fqdn(name) && s.rtype == rtype);
                    check_expected(change, found)?;
                }
                Err(DnsError::Conflict {
                    name: change_key(&changes[0]).0.to_string(),
                    expected: "the records this batch expects".into(),
                    found: format!("a prerequisite failed ({code}) and has changed again since"),
                })
            }
            ResponseCode::Refused => Err(DnsError::Rejected(format!(
                "the server refused the update: key {} may not change these names in {} (update-policy / ACL)",
                self.key_name, self.zone
            ))),
            ResponseCode::NotZone => Err(DnsError::Rejected(format!(
                "{} is not a zone on the server (dns.zone must be the zone's apex)",
                self.zone
            ))),
            code => Err(DnsError::Unavailable(format!("the server answered {code}"))),
        }
    }
}

/// Every server was tried: the error names each with what went wrong.
fn no_server_answered(failures: &[String]) -> DnsError {
    DnsError::Unavailable(format!("no DNS server answered: {}", failures.join("; ")))
}

fn fqdn_name(name: &str) -> Option<Name> {
    let mut name = Name::from_ascii(name).ok()?;
    name.set_fqdn(true);
    Some(name)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Rfc2136 {
        let key =
            TsigKey::from_base64("k.", TsigAlgorithm::HmacSha256, "c2VjcmV0c2VjcmV0").unwrap();
        Rfc2136::new(vec![], "z.test.", key, Duration::from_secs(1)).unwrap()
    }

    fn set(name: &str, rtype: RecordType, value: &str) -> RecordSet {
        RecordSet::new(name, rtype, 5, [value.to_string()])
    }

    #[test]
    fn a_flip_of_cname_and_txt_is_one_message_with_both_prerequisites() {
        let cname = |v: &str| set("demo.z.test.", RecordType::Cname, v);
        let txt = |v: &str| set("demo-owner.z.test.", RecordType::Txt, v);
        let message = provider()
            .update_message(&[
                Change::Update {
                    old: cname("primary.r1.z.test."),
                    new: cname("primary.r2.z.test."),
                },
                Change::Update {
                    old: txt("epoch=1"),
                    new: txt("epoch=2"),
                },
            ])
            .unwrap();
        assert_eq!(message.metadata.op_code, OpCode::Update);
        assert_eq!(message.queries[0].name().to_ascii(), "z.test.");
        // Prerequisites: both current sets, value dependent (class IN, TTL 0).
        let prerequisites: Vec<String> = message
            .answers
            .iter()
            .map(|r| format!("{} {} {} {}", r.name, r.dns_class, r.ttl, r.data))
            .collect();
        assert_eq!(
            prerequisites,
            [
                "demo.z.test. IN 0 primary.r1.z.test.",
                "demo-owner.z.test. IN 0 epoch=1"
            ]
        );
        // Updates: delete each set (class ANY), add its new value.
        let updates: Vec<String> = message
            .authorities
            .iter()
            .map(|r| format!("{} {} {}", r.name, r.dns_class, r.record_type()))
            .collect();
        assert_eq!(
            updates,
            [
                "demo.z.test. ANY CNAME",
                "demo.z.test. IN CNAME",
                "demo-owner.z.test. ANY TXT",
                "demo-owner.z.test. IN TXT"
            ]
        );
    }

    #[test]
    fn a_create_requires_the_set_to_be_absent() {
        let message = provider()
            .update_message(&[Change::Create {
                new: set("a.z.test.", RecordType::A, "10.0.0.1"),
            }])
            .unwrap();
        let absent = &message.answers[0];
        assert_eq!(absent.dns_class, DNSClass::NONE);
        assert_eq!(absent.record_type(), HickoryType::A);
        assert_eq!(message.authorities.len(), 1, "only the addition");
    }

    #[test]
    fn pipelined_reads_never_share_an_id() {
        let names: Vec<String> = (0..100).map(|i| format!("n{i}.z.test.")).collect();
        let (asked, queries) = provider().read_queries(&names).unwrap();
        assert_eq!(asked.len(), 400);
        let ids: std::collections::BTreeSet<[u8; 2]> =
            queries.iter().map(|q| [q[0], q[1]]).collect();
        assert_eq!(
            ids.len(),
            queries.len(),
            "answers are matched to questions by id"
        );
    }

    #[test]
    fn names_outside_the_zone_are_refused_before_anything_is_sent() {
        let err = provider()
            .update_message(&[Change::Create {
                new: set("a.other.test.", RecordType::A, "10.0.0.1"),
            }])
            .unwrap_err();
        assert!(matches!(err, DnsError::OutOfZone { .. }), "{err}");
    }

    #[test]
    fn the_secret_never_shows() {
        let key =
            TsigKey::from_base64("k.", TsigAlgorithm::HmacSha256, "c2VjcmV0c2VjcmV0").unwrap();
        assert!(!format!("{key:?}").contains("c2Vj"));
        assert!(!format!("{key:?}").contains("secret"));
        let err = TsigKey::from_base64("k.", TsigAlgorithm::HmacSha256, "not base64!").unwrap_err();
        assert!(!err.contains("not base64!"), "{err}");
    }
}
