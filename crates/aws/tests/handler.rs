mod common;

use std::time::Duration;

use serde_json::json;
use valkey_dr_aws::AwsConfig;
use valkey_dr_aws::handler::{Backends, ReconcileFailed, handle, respond};
use valkey_dr_aws::route53::Route53;
use valkey_dr_dns::DnsProvider;

fn config(zone_id: &str) -> AwsConfig {
    AwsConfig::parse(&format!(
        "global_replication_group_id = \"ldgnf-valkey-dr\"\nhosted_zone_id = \"{zone_id}\"\nzone = \"valkey-dr.internal\"\nglobal_name = \"demo\"\ninsync_timeout_secs = 5\n"
    ))
    .unwrap()
}

fn sns(message: &str) -> serde_json::Value {
    json!({ "Records": [{ "EventSource": "aws:sns", "Sns": { "Message": message } }] })
}

async fn cname(dns: &Route53) -> Vec<String> {
    dns.records(&["demo.valkey-dr.internal.".to_string()])
        .await
        .unwrap()
        .into_iter()
        .flat_map(|r| r.values)
        .collect()
}

async fn txt(dns: &Route53) -> String {
    dns.records(&["_valkey-dr.demo.valkey-dr.internal.".to_string()])
        .await
        .unwrap()[0]
        .values[0]
        .clone()
}

#[tokio::test]
async fn events_only_wake_a_reconcile_that_follows_the_real_primary() {
    let moto = common::moto().await;
    let route53 = common::route53(&moto);
    let zone_id = common::hosted_zone(&route53, "valkey-dr.internal").await;
    let dns = Route53::new(route53, &zone_id, Duration::from_secs(5));
    let config = config(&zone_id);
    let backends = |region: &'static str, tag: &'static str| {
        let (client, _rules) = common::elasticache_with(region, tag);
        Backends {
            elasticache: client.clone(),
            regional: Box::new(move |_| client.clone()),
            dns: &dns,
        }
    };

    // First run: us-east-1 is primary; the name is created with epoch 1.
    let outcome = handle(
        &json!({ "action": "reconcile" }),
        &config,
        &backends("us-east-1", "abc123"),
    )
    .await;
    assert_eq!(outcome.error, None);
    assert_eq!(
        cname(&dns).await,
        vec!["master.valkey-dr-us-east-1.abc123.cache.amazonaws.com."]
    );
    assert!(txt(&dns).await.contains("epoch=1,primary=us-east-1"));

    // Already right: a FailoverComplete for us-east-1 changes nothing.
    let outcome = handle(
        &sns("ElastiCache:FailoverComplete : valkey-dr-us-east-1"),
        &config,
        &backends("us-east-1", "abc123"),
    )
    .await;
    assert_eq!(
        (outcome.applied, outcome.error.clone()),
        (0, None),
        "no-op when DNS is right"
    );

    // An event naming the secondary's group, which is not the primary (a FailoverComplete for an
    // in-region failover there, a forged or stale message): the name does not move to it.
    let outcome = handle(
        &sns("ElastiCache:FailoverComplete : valkey-dr-us-east-2"),
        &config,
        &backends("us-east-1", "abc123"),
    )
    .await;
    assert!(outcome.reconciled);
    assert_eq!((outcome.applied, outcome.error.clone()), (0, None));
    assert_eq!(outcome.primary_region.as_deref(), Some("us-east-1"));
    assert_eq!(
        cname(&dns).await,
        vec!["master.valkey-dr-us-east-1.abc123.cache.amazonaws.com."]
    );

    // The global datastore failed over to us-east-2. An event naming the *old* group still moves
    // the name to the real primary: the event's content is never trusted.
    let outcome = handle(
        &sns(r#"{"ElastiCache:FailoverComplete":"valkey-dr-us-east-1"}"#),
        &config,
        &backends("us-east-2", "abc123"),
    )
    .await;
    assert_eq!(outcome.error, None);
    assert!(outcome.applied > 0);
    assert_eq!(
        cname(&dns).await,
        vec!["master.valkey-dr-us-east-2.abc123.cache.amazonaws.com."]
    );
    assert!(txt(&dns).await.contains("epoch=2,primary=us-east-2"));

    // And back, woken only by the schedule (no event at all from ElastiCache). The group came back
    // with another endpoint: moto wrongly refuses to re-create a record value it has seen before
    // in the zone, even when the same batch deletes the current one (Route 53 accepts it).
    let schedule =
        json!({ "source": "aws.events", "detail-type": "Scheduled Event", "detail": {} });
    let outcome = handle(&schedule, &config, &backends("us-east-1", "def456")).await;
    assert_eq!(outcome.error, None);
    assert_eq!(
        cname(&dns).await,
        vec!["master.valkey-dr-us-east-1.def456.cache.amazonaws.com."]
    );
    assert!(txt(&dns).await.contains("epoch=3,primary=us-east-1"));
}

#[tokio::test]
async fn unrelated_or_malformed_events_change_nothing_and_succeed() {
    let moto = common::moto().await;
    let route53 = common::route53(&moto);
    let zone_id = common::hosted_zone(&route53, "valkey-dr.internal").await;
    let dns = Route53::new(route53, &zone_id, Duration::from_secs(5));
    let config = config(&zone_id);
    let (client, rules) = common::elasticache("us-east-2");
    let backends = Backends {
        elasticache: client.clone(),
        regional: Box::new(move |_| client.clone()),
        dns: &dns,
    };
    for event in [
        sns("hello from the SNS console"),
        json!({ "action": "drop" }),
        json!("just a string"),
        json!({}),
    ] {
        let outcome = handle(&event, &config, &backends).await;
        assert!(!outcome.reconciled, "{event}");
        assert_eq!(outcome.error, None);
    }
    assert_eq!(rules[0].num_calls(), 0, "ElastiCache was not even asked");
    assert!(cname(&dns).await.is_empty());
}

const OUR_TOPIC: &str = "arn:aws:sns:us-east-2:123456789012:valkey-dr-EventsTopic-1";

fn sns_from(topic: &str, message: &str) -> serde_json::Value {
    json!({ "Records": [{
        "EventSource": "aws:sns",
        "Sns": { "TopicArn": topic, "Message": message }
    }] })
}

#[tokio::test]
async fn any_message_from_our_topic_wakes_a_reconcile_and_a_failed_one_fails_the_invocation() {
    let moto = common::moto().await;
    let route53 = common::route53(&moto);
    let zone_id = common::hosted_zone(&route53, "valkey-dr.internal").await;
    let dns = Route53::new(route53, &zone_id, Duration::from_secs(5));
    let config = AwsConfig {
        events_topic_arn: Some(OUR_TOPIC.into()),
        ..config(&zone_id)
    };
    let (client, _rules) = common::elasticache("us-east-2");
    let backends = Backends {
        elasticache: client.clone(),
        regional: Box::new(move |_| client.clone()),
        dns: &dns,
    };
    // A message format nobody has seen yet, on our own topic: reconcile anyway.
    let outcome = handle(
        &sns_from(OUR_TOPIC, "ElastiCache has a brand new event format"),
        &config,
        &backends,
    )
    .await;
    assert!(outcome.reconciled);
    assert_eq!(outcome.error, None);
    assert_eq!(
        cname(&dns).await,
        vec!["master.valkey-dr-us-east-2.abc123.cache.amazonaws.com."]
    );
    assert!(respond(&outcome).is_ok());
    // The same message from another topic is only logged.
    let outcome = handle(
        &sns_from("arn:aws:sns:us-east-2:123456789012:other", "hello"),
        &config,
        &backends,
    )
    .await;
    assert!(!outcome.reconciled);
    assert!(
        respond(&outcome).is_ok(),
        "nothing retries what is not for us"
    );

    // A reconcile that fails (moto has no such datastore) fails the invocation.
    let missing = aws_sdk_elasticache::Client::new(&common::sdk(&moto, "us-east-2"));
    let failing = Backends {
        elasticache: missing.clone(),
        regional: Box::new(move |_| missing.clone()),
        dns: &dns,
    };
    let outcome = handle(&json!({ "action": "reconcile" }), &config, &failing).await;
    assert!(outcome.reconciled);
    let error = respond(&outcome).unwrap_err();
    assert!(
        matches!(&error, ReconcileFailed(e) if e.contains("not found")),
        "{error}"
    );
}

#[tokio::test]
async fn a_name_owned_by_someone_else_is_never_touched() {
    let moto = common::moto().await;
    let route53 = common::route53(&moto);
    let zone_id = common::hosted_zone(&route53, "valkey-dr.internal").await;
    let dns = Route53::new(route53, &zone_id, Duration::from_secs(5));
    let foreign = valkey_dr_core::RecordSet::new(
        "demo.valkey-dr.internal",
        valkey_dr_core::RecordType::Cname,
        10,
        ["somewhere-else.example.".to_string()],
    );
    dns.apply(&[valkey_dr_core::Change::Create { new: foreign }])
        .await
        .unwrap();
    let config = config(&zone_id);
    let (client, _rules) = common::elasticache("us-east-2");
    let backends = Backends {
        elasticache: client.clone(),
        regional: Box::new(move |_| client.clone()),
        dns: &dns,
    };
    let outcome = handle(&json!({ "action": "reconcile" }), &config, &backends).await;
    // Issue 22: a conflict that stays after a second read is an error the alarm sees (it was
    // silent: the name never moved and nothing said so).
    let error = outcome.error.clone().unwrap_or_default();
    assert!(
        error.contains("not ours to move") && error.contains("demo.valkey-dr.internal."),
        "{outcome:?}"
    );
    assert!(respond(&outcome).is_err());
    assert!(!outcome.plan.unwrap().conflicts.is_empty());
    assert_eq!(cname(&dns).await, vec!["somewhere-else.example."]);
}

#[tokio::test]
async fn an_ignored_event_needs_no_aws_at_all() {
    let moto = common::moto().await;
    let loaded = std::sync::atomic::AtomicUsize::new(0);
    let load = || async {
        loaded.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        common::sdk(&moto, "us-east-1")
    };
    let config = config("Z-unused");
    for event in [
        json!({ "hello": "world" }),
        sns("hello from the SNS console"),
    ] {
        let outcome = valkey_dr_aws::handler::handle_loading(&event, &config, load).await;
        assert!(!outcome.reconciled);
        assert_eq!(outcome.error, None);
    }
    assert_eq!(
        loaded.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no AWS configuration was loaded"
    );
    // A reconcile does load it (and fails here: there is no such datastore on moto).
    let outcome =
        valkey_dr_aws::handler::handle_loading(&json!({ "action": "reconcile" }), &config, load)
            .await;
    assert!(outcome.reconciled);
    assert_eq!(loaded.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(outcome.error.unwrap().contains("ldgnf-valkey-dr not found"));
}

/// The other region's function (or `aws promote`'s own reconcile) writes the same records between
/// this run's read and its write: Route 53 (moto) refuses our batch as a conflict.
struct Raced<'a> {
    inner: &'a Route53,
    raced: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl DnsProvider for Raced<'_> {
    async fn records(
        &self,
        names: &[String],
    ) -> Result<Vec<valkey_dr_core::RecordSet>, valkey_dr_dns::DnsError> {
        self.inner.records(names).await
    }
    async fn apply(
        &self,
        changes: &[valkey_dr_core::Change],
    ) -> Result<(), valkey_dr_dns::DnsError> {
        if !self.raced.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.inner
                .apply(changes)
                .await
                .expect("the competitor's write");
        }
        self.inner.apply(changes).await
    }
}

/// Review B3: the loser of that benign race reported a failure (the alarm in one region on every
/// failover; `aws promote` exiting non-zero after a move that went through).
#[tokio::test]
async fn losing_a_race_to_the_same_records_is_a_success() {
    let moto = common::moto().await;
    let route53 = common::route53(&moto);
    let zone_id = common::hosted_zone(&route53, "valkey-dr.internal").await;
    let dns = Route53::new(route53, &zone_id, Duration::ZERO);
    let config = config(&zone_id);
    let (client, _rules) = common::elasticache_with("us-east-1", "abc123");
    let raced = Raced {
        inner: &dns,
        raced: false.into(),
    };
    let backends = Backends {
        elasticache: client.clone(),
        regional: Box::new(move |_| client.clone()),
        dns: &raced,
    };
    let outcome = handle(&json!({ "action": "reconcile" }), &config, &backends).await;
    assert_eq!(outcome.error, None, "{outcome:?}");
    assert_eq!(outcome.applied, 0, "the competitor's write stands");
    assert!(respond(&outcome).is_ok());
    assert_eq!(
        cname(&dns).await,
        vec!["master.valkey-dr-us-east-1.abc123.cache.amazonaws.com."]
    );
    assert!(txt(&dns).await.contains("epoch=1,primary=us-east-1"));
}
