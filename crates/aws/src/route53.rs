//! Route 53 as a [`DnsProvider`]: every batch is one `ChangeResourceRecordSets` call in which an
//! update is `DELETE <expected old>` + `CREATE <new>`, so Route 53 itself refuses the batch when
//! the record is not what we expect (`InvalidChangeBatch`) — compare-and-swap, atomically.
//!
//! Throttling (`Throttling`, `PriorRequestNotComplete`) is retried by the SDK's standard retry
//! strategy, configured here: one layer of retries, not ours stacked on the SDK's.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_route53::Client;
use aws_sdk_route53::error::ProvideErrorMetadata;
use aws_sdk_route53::types::{
    Change as R53Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord,
    ResourceRecordSet, RrType,
};
use valkey_dr_core::names::fqdn;
use valkey_dr_core::{Change, RecordSet, RecordType};
use valkey_dr_dns::{DnsError, DnsProvider};

pub struct Route53 {
    client: Client,
    zone_id: String,
    insync_timeout: Duration,
}

/// Attempts per request, throttling included (the SDK's standard strategy, exponential backoff).
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

/// Whether an `InvalidChangeBatch` says a precondition failed (a DELETE that did not match, a
/// CREATE of something that exists): a conflict. Anything else it says (a CNAME beside other
/// records, a malformed value) is a refusal that no retry or re-read can fix.
fn precondition_failed(message: &str) -> bool {
    [
        "but it was not found",
        "values provided do not match",
        "but it already exists",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// `client` with the retry strategy this provider relies on.
fn with_retries(client: Client, initial_backoff: Duration) -> Client {
    let config = client
        .config()
        .to_builder()
        .retry_config(
            aws_sdk_route53::config::retry::RetryConfig::standard()
                .with_max_attempts(ATTEMPTS)
                .with_initial_backoff(initial_backoff),
        )
        .build();
    Client::from_conf(config)
}

impl Route53 {
    pub fn new(client: Client, zone_id: &str, insync_timeout: Duration) -> Route53 {
        Route53 {
            client: with_retries(client, Duration::from_millis(200)),
            zone_id: zone_id.trim_start_matches("/hostedzone/").to_string(),
            insync_timeout,
        }
    }

    /// The first backoff of a throttled request (tests shorten it).
    pub fn with_retry_base(mut self, base: Duration) -> Route53 {
        self.client = with_retries(self.client, base);
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

    /// Waits until Route 53 reports the change on all its name servers. The change is applied
    /// either way (Route 53 accepted it): a wait that runs out, or a GetChange that fails, is
    /// logged, not an error — reporting failure would make the caller redo a change that is done.
    async fn wait_insync(&self, change_id: &str) -> bool {
        if self.insync_timeout.is_zero() {
            return true;
        }
        let deadline = tokio::time::Instant::now() + self.insync_timeout;
        loop {
            match self.client.get_change().id(change_id).send().await {
                Ok(out) if out.change_info().map(|i| i.status()) == Some(&ChangeStatus::Insync) => {
                    return true;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(change_id, error = %aws_sdk_route53::error::DisplayErrorContext(e), "applied; cannot tell whether it is INSYNC yet");
                    return false;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    change_id,
                    waited = ?self.insync_timeout,
                    "applied; not INSYNC yet (some name servers may answer the old value a little longer)"
                );
                return false;
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
        let result = self
            .client
            .change_resource_record_sets()
            .hosted_zone_id(&self.zone_id)
            .change_batch(batch)
            .send()
            .await;
        match result {
            Ok(out) => {
                let id = out
                    .change_info()
                    .map(|i| i.id().to_string())
                    .unwrap_or_default();
                self.wait_insync(&id).await;
                Ok(())
            }
            Err(error) => {
                let service = error.into_service_error();
                if service.is_invalid_change_batch() {
                    let message = service.to_string();
                    if precondition_failed(&message) {
                        return Err(DnsError::Conflict {
                            name: names.join(", "),
                            expected: "the values this batch deletes".into(),
                            found: message,
                        });
                    }
                    return Err(DnsError::Rejected(message));
                }
                let throttled =
                    service.is_prior_request_not_complete() || service.code() == Some("Throttling");
                let context = aws_sdk_route53::error::DisplayErrorContext(service);
                Err(DnsError::Unavailable(if throttled {
                    format!("Route 53 still throttling after {ATTEMPTS} attempts: {context}")
                } else {
                    context.to_string()
                }))
            }
        }
    }
}
