//! Route 53 as a [`DnsProvider`]: every batch is one `ChangeResourceRecordSets` call in which an
//! update is `DELETE <expected old>` + `CREATE <new>`, so Route 53 itself refuses the batch when
//! the record is not what we expect (`InvalidChangeBatch`) — compare-and-swap, atomically.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_route53::Client;
use aws_sdk_route53::error::ProvideErrorMetadata;
use aws_sdk_route53::types::{
    Change as R53Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord,
    ResourceRecordSet, RrType,
};
use valkey_dr_core::config::fqdn;
use valkey_dr_core::{Change, RecordSet, RecordType};
use valkey_dr_dns::{DnsError, DnsProvider};

pub struct Route53 {
    client: Client,
    zone_id: String,
    insync_timeout: Duration,
    /// First delay of the retry on `Throttling` / `PriorRequestNotComplete` (doubles each time).
    retry_base: Duration,
}

const ATTEMPTS: u32 = 5;

fn rtype(t: RecordType) -> RrType {
    match t {
        RecordType::A => RrType::A,
        RecordType::Aaaa => RrType::Aaaa,
        RecordType::Cname => RrType::Cname,
        RecordType::Txt => RrType::Txt,
    }
}

fn from_rtype(t: &RrType) -> Option<RecordType> {
    match t {
        RrType::A => Some(RecordType::A),
        RrType::Aaaa => Some(RecordType::Aaaa),
        RrType::Cname => Some(RecordType::Cname),
        RrType::Txt => Some(RecordType::Txt),
        _ => None,
    }
}

/// Route 53 keeps TXT data quoted and `*` etc. escaped as `\052`.
fn unescape_name(name: &str) -> String {
    fqdn(&name.replace("\\052", "*"))
}

fn to_wire(set: &RecordSet, value: &str) -> String {
    match set.rtype {
        RecordType::Txt => format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\"")),
        _ => value.to_string(),
    }
}

fn from_wire(rtype: RecordType, value: &str) -> String {
    match rtype {
        RecordType::Txt => value
            .trim()
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value)
            .replace("\\\"", "\"")
            .replace("\\\\", "\\"),
        RecordType::Cname => fqdn(value),
        _ => value.to_string(),
    }
}

fn unavailable(e: impl std::fmt::Display) -> DnsError {
    DnsError::Unavailable(e.to_string())
}

impl Route53 {
    pub fn new(client: Client, zone_id: &str, insync_timeout: Duration) -> Route53 {
        Route53 {
            client,
            zone_id: zone_id.trim_start_matches("/hostedzone/").to_string(),
            insync_timeout,
            retry_base: Duration::from_millis(200),
        }
    }

    pub fn with_retry_base(mut self, base: Duration) -> Route53 {
        self.retry_base = base;
        self
    }

    fn record_set(set: &RecordSet) -> Result<ResourceRecordSet, DnsError> {
        let records = set
            .values
            .iter()
            .map(|v| {
                ResourceRecord::builder()
                    .value(to_wire(set, v))
                    .build()
                    .map_err(unavailable)
            })
            .collect::<Result<Vec<_>, _>>()?;
        ResourceRecordSet::builder()
            .name(&set.name)
            .r#type(rtype(set.rtype))
            .ttl(i64::from(set.ttl))
            .set_resource_records(Some(records))
            .build()
            .map_err(unavailable)
    }

    fn batch(changes: &[Change]) -> Result<ChangeBatch, DnsError> {
        let mut out = Vec::new();
        let mut push = |action: ChangeAction, set: &RecordSet| -> Result<(), DnsError> {
            out.push(
                R53Change::builder()
                    .action(action)
                    .resource_record_set(Self::record_set(set)?)
                    .build()
                    .map_err(unavailable)?,
            );
            Ok(())
        };
        for change in changes {
            match change {
                Change::Create { new } => push(ChangeAction::Create, new)?,
                // DELETE must match the current record exactly, or Route 53 refuses the batch.
                Change::Update { old, new } => {
                    push(ChangeAction::Delete, old)?;
                    push(ChangeAction::Create, new)?;
                }
                Change::Delete { old } => push(ChangeAction::Delete, old)?,
            }
        }
        ChangeBatch::builder()
            .comment("valkey-dr reconcile")
            .set_changes(Some(out))
            .build()
            .map_err(unavailable)
    }

    async fn wait_insync(&self, change_id: &str) -> Result<(), DnsError> {
        if self.insync_timeout.is_zero() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.insync_timeout;
        loop {
            let out = self
                .client
                .get_change()
                .id(change_id)
                .send()
                .await
                .map_err(|e| unavailable(e.into_service_error()))?;
            if out.change_info().map(|i| i.status()) == Some(&ChangeStatus::Insync) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DnsError::Unavailable(format!(
                    "change {change_id} not INSYNC after {:?}",
                    self.insync_timeout
                )));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[async_trait]
impl DnsProvider for Route53 {
    async fn records(&self, names: &[String]) -> Result<Vec<RecordSet>, DnsError> {
        let mut found = Vec::new();
        for name in names {
            let name = fqdn(name);
            let out = self
                .client
                .list_resource_record_sets()
                .hosted_zone_id(&self.zone_id)
                .start_record_name(&name)
                .max_items(10)
                .send()
                .await
                .map_err(|e| unavailable(aws_sdk_route53::error::DisplayErrorContext(e)))?;
            for set in out.resource_record_sets() {
                let Some(rtype) = from_rtype(set.r#type()) else {
                    continue;
                };
                if unescape_name(set.name()) != name {
                    continue;
                }
                let values = set
                    .resource_records()
                    .iter()
                    .map(|r| from_wire(rtype, r.value()));
                found.push(RecordSet::new(
                    &name,
                    rtype,
                    set.ttl().unwrap_or(0) as u32,
                    values,
                ));
            }
        }
        Ok(found)
    }

    async fn apply(&self, changes: &[Change]) -> Result<(), DnsError> {
        if changes.is_empty() {
            return Ok(());
        }
        // Check our expectations first: this names the record in the error and spares a request;
        // Route 53 enforces the same check atomically on the batch.
        let names: Vec<String> = changes.iter().map(|c| c.name().to_string()).collect();
        let current = self.records(&names).await?;
        for change in changes {
            let (name, rtype) = valkey_dr_dns::change_key(change);
            let found = current.iter().find(|r| r.name == name && r.rtype == rtype);
            valkey_dr_dns::check_expected(change, found)?;
        }
        let batch = Self::batch(changes)?;
        let mut delay = self.retry_base;
        for attempt in 1..=ATTEMPTS {
            let result = self
                .client
                .change_resource_record_sets()
                .hosted_zone_id(&self.zone_id)
                .change_batch(batch.clone())
                .send()
                .await;
            match result {
                Ok(out) => {
                    let id = out
                        .change_info()
                        .map(|i| i.id().to_string())
                        .unwrap_or_default();
                    return self.wait_insync(&id).await;
                }
                Err(error) => {
                    let service = error.into_service_error();
                    let throttled = service.is_prior_request_not_complete()
                        || service.code() == Some("Throttling");
                    if service.is_invalid_change_batch() {
                        return Err(DnsError::Conflict {
                            name: names.join(", "),
                            expected: "the values this batch deletes".into(),
                            found: service.to_string(),
                        });
                    }
                    if throttled && attempt < ATTEMPTS {
                        tracing::warn!(attempt, "Route 53 asks us to slow down; retrying");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                        continue;
                    }
                    return Err(unavailable(aws_sdk_route53::error::DisplayErrorContext(
                        service,
                    )));
                }
            }
        }
        Err(DnsError::Unavailable(format!(
            "Route 53 still throttling after {ATTEMPTS} attempts"
        )))
    }
}
