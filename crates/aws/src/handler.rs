//! The event handler (the Lambda's body and `valkey-dr aws reconcile`): whatever arrives only wakes
//! a reconcile; the reconcile asks ElastiCache who the primary is and moves the name there.

use serde::Serialize;
use serde_json::Value;
use valkey_dr_core::notification::{self, Notification};
use valkey_dr_core::ownership::Ownership;
use valkey_dr_core::records::ManagedNames;
use valkey_dr_core::{Plan, RecordSet, RecordType, plan};
use valkey_dr_dns::{DnsError, DnsProvider};

use crate::config::AwsConfig;
use crate::discovery::{self, Primary};

/// What the AWS shape needs to reconcile: ElastiCache clients and the DNS provider.
pub struct Backends<'a> {
    pub elasticache: aws_sdk_elasticache::Client,
    /// A client for a member's region.
    pub regional: Box<dyn Fn(&str) -> aws_sdk_elasticache::Client + Send + Sync + 'a>,
    pub dns: &'a dyn DnsProvider,
}

impl<'a> Backends<'a> {
    /// Clients from the standard SDK configuration (environment, profiles, `AWS_ENDPOINT_URL…`).
    pub fn from_sdk(sdk: &aws_config::SdkConfig, dns: &'a dyn DnsProvider) -> Backends<'a> {
        let sdk = sdk.clone();
        Backends {
            elasticache: aws_sdk_elasticache::Client::new(&sdk),
            regional: Box::new(move |region: &str| discovery::client_in(&sdk, region)),
            dns,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub notifications: Vec<Notification>,
    /// False when every notification was ignored.
    pub reconciled: bool,
    pub primary_region: Option<String>,
    pub primary_endpoint: Option<String>,
    pub epoch: Option<u64>,
    pub plan: Option<Plan>,
    pub applied: usize,
    pub error: Option<String>,
}

impl Outcome {
    fn new(notifications: Vec<Notification>, reconciled: bool) -> Outcome {
        Outcome {
            notifications,
            reconciled,
            primary_region: None,
            primary_endpoint: None,
            epoch: None,
            plan: None,
            applied: 0,
            error: None,
        }
    }
}

/// The records for the discovered primary: the CNAME to its endpoint and our ownership TXT. The
/// epoch rises when the primary region differs from the one DNS carries.
pub fn desired(
    names: &ManagedNames,
    primary: &Primary,
    current: &[RecordSet],
) -> (Vec<RecordSet>, u64) {
    let published = current
        .iter()
        .filter(|r| r.name == names.ownership && r.rtype == RecordType::Txt)
        .flat_map(|r| r.values.iter())
        .find_map(|v| Ownership::parse(v))
        .filter(|o| o.owner == names.owner);
    let epoch = match published {
        Some(o) if o.primary_region == primary.region => o.epoch,
        Some(o) => o.epoch + 1,
        None => 1,
    };
    let ownership = Ownership {
        owner: names.owner.clone(),
        epoch,
        primary_region: primary.region.clone(),
    };
    let records = vec![
        RecordSet::new(
            &names.global,
            RecordType::Cname,
            names.ttl,
            [valkey_dr_core::names::fqdn(&primary.endpoint)],
        ),
        RecordSet::new(
            &names.ownership,
            RecordType::Txt,
            names.ttl,
            [ownership.to_txt()],
        ),
    ];
    (records, epoch)
}

/// One reconcile: discover, plan, apply.
pub async fn reconcile(config: &AwsConfig, backends: &Backends<'_>) -> Outcome {
    let mut outcome = Outcome::new(Vec::new(), true);
    let targets = match config.targets() {
        Ok(t) => t,
        Err(e) => {
            outcome.error = Some(e.to_string());
            return outcome;
        }
    };
    let primary = match discovery::primary(
        &backends.elasticache,
        &backends.regional,
        &targets.global_replication_group_id,
    )
    .await
    {
        Ok(p) => p,
        Err(e) => {
            outcome.error = Some(e.to_string());
            return outcome;
        }
    };
    outcome.primary_region = Some(primary.region.clone());
    outcome.primary_endpoint = Some(primary.endpoint.clone());
    let names = config.names();
    // Both regions' functions and `aws promote` reconcile the same name after a failover; the
    // loser of that race meets a compare-and-swap conflict. Read and plan again once: when the
    // winner already wrote what we wanted, the new plan is empty and this run succeeded too.
    for attempt in 1..=2 {
        let current = match backends
            .dns
            .records(&[names.global.clone(), names.ownership.clone()])
            .await
        {
            Ok(c) => c,
            Err(e) => {
                outcome.error = Some(e.to_string());
                return outcome;
            }
        };
        let (wanted, epoch) = desired(&names, &primary, &current);
        outcome.epoch = Some(epoch);
        let plan = plan::calculate(&current, &wanted, &names.ownership, &names.owner);
        if !plan.conflicts.is_empty() {
            // Not ours to move (a foreign or unreadable ownership record). Once may be a moment
            // in someone's change; twice is for an operator: an error, so the alarm sees it.
            let why = plan
                .conflicts
                .iter()
                .map(|(name, why)| format!("{name}: {why}"))
                .collect::<Vec<_>>()
                .join("; ");
            outcome.plan = Some(plan);
            if attempt == 1 {
                tracing::info!(conflicts = %why, "the name is not ours to move; reading it again");
                continue;
            }
            outcome.error = Some(format!("the name is not ours to move: {why}"));
            return outcome;
        }
        let applied = if plan.changes.is_empty() {
            Ok(())
        } else {
            backends.dns.apply(&plan.changes).await
        };
        outcome.plan = Some(plan);
        match applied {
            Ok(()) => {
                outcome.applied = outcome.plan.as_ref().map_or(0, |p| p.changes.len());
                return outcome;
            }
            Err(e @ DnsError::Conflict { .. }) if attempt == 1 => {
                tracing::info!(error = %e, "the records changed under this run; reading them again");
            }
            Err(e) => {
                outcome.error = Some(e.to_string());
                return outcome;
            }
        }
    }
    outcome
}

/// The invocation's result: a reconcile that failed fails the invocation (Lambda's Errors metric,
/// the template's alarm, and a retry for asynchronous invocations); an event that only was not
/// for us succeeds, so that nothing retries it.
pub fn respond(outcome: &Outcome) -> Result<Value, ReconcileFailed> {
    if let Some(error) = &outcome.error {
        return Err(ReconcileFailed(error.clone()));
    }
    Ok(serde_json::to_value(outcome).unwrap_or(Value::Null))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reconcile failed: {0}")]
pub struct ReconcileFailed(pub String);

/// Handles one Lambda input event. Unrelated or malformed events are logged and change nothing.
pub async fn handle(event: &Value, config: &AwsConfig, backends: &Backends<'_>) -> Outcome {
    let (notifications, wanted) = triage(event, config);
    if !wanted {
        return Outcome::new(notifications, false);
    }
    Outcome {
        notifications,
        ..reconcile(config, backends).await
    }
}

/// The event's notifications, logged, and whether it asks for a reconcile: any record from our own
/// events topic does, whatever its message says (ElastiCache's event names and formats change; the
/// parse is for the log), and so does any recognised notification from elsewhere.
fn triage(event: &Value, config: &AwsConfig) -> (Vec<Notification>, bool) {
    let notifications = notification::parse(event);
    for n in &notifications {
        tracing::info!(notification = ?n, "event received");
    }
    let from_our_topic = config.events_topic_arn.as_deref().is_some_and(|ours| {
        event
            .get("Records")
            .and_then(Value::as_array)
            .is_some_and(|records| {
                records
                    .iter()
                    .any(|r| r.pointer("/Sns/TopicArn").and_then(Value::as_str) == Some(ours))
            })
    });
    let wanted = from_our_topic
        || notifications
            .iter()
            .any(|n| !matches!(n, Notification::Ignored { .. }));
    (notifications, wanted)
}

/// Handles one event with clients from the standard SDK configuration: what the Lambda does, for
/// `valkey-dr aws handle-event` and `valkey-dr aws reconcile` on an operator's machine. `region`
/// (when given) is where ElastiCache is asked: after a regional failure, the surviving region.
pub async fn handle_with_sdk(event: &Value, config: &AwsConfig, region: Option<&str>) -> Outcome {
    handle_loading(event, config, || {
        crate::sdk_config::load(region, config.home_region())
    })
    .await
}

/// [`handle_with_sdk`] with the SDK configuration from `load`, which runs only when the event asks
/// for a reconcile: an event that is not for us needs no AWS configuration at all.
pub async fn handle_loading<F, Fut>(event: &Value, config: &AwsConfig, load: F) -> Outcome
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = aws_config::SdkConfig>,
{
    let (notifications, wanted) = triage(event, config);
    if !wanted {
        return Outcome::new(notifications, false);
    }
    let targets = match config.targets() {
        Ok(t) => t,
        Err(e) => {
            return Outcome {
                error: Some(e.to_string()),
                ..Outcome::new(notifications, true)
            };
        }
    };
    let sdk = load().await;
    let dns = crate::route53::Route53::new(
        aws_sdk_route53::Client::new(&sdk),
        &targets.hosted_zone_id,
        std::time::Duration::from_secs(config.insync_timeout_secs),
    );
    let backends = Backends::from_sdk(&sdk, &dns);
    Outcome {
        notifications,
        ..reconcile(config, &backends).await
    }
}
