mod common;

use std::time::Duration;

use aws_sdk_route53::operation::change_resource_record_sets::{
    ChangeResourceRecordSetsError, ChangeResourceRecordSetsOutput,
};
use aws_sdk_route53::operation::list_resource_record_sets::ListResourceRecordSetsOutput;
use aws_sdk_route53::types::ChangeInfo;
use aws_sdk_route53::types::error::InvalidChangeBatch;
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use valkey_dr_aws::route53::Route53;
use valkey_dr_core::{Change, RecordSet, RecordType};
use valkey_dr_dns::{DnsError, DnsProvider};

/// The same battery as every other DNS backend, against Route 53 as moto implements it.
#[tokio::test]
async fn route53_on_moto_passes_the_provider_battery() {
    let moto = common::moto().await;
    let client = common::route53(&moto);
    let zone = common::hosted_zone(&client, "z.test").await;
    let provider = Route53::new(client, &zone, Duration::from_secs(5));
    valkey_dr_dns::conformance::battery(&provider, "z.test.").await;
}

#[tokio::test]
async fn txt_ownership_round_trips_through_route53_quoting() {
    let moto = common::moto().await;
    let client = common::route53(&moto);
    let zone = common::hosted_zone(&client, "valkey-dr.internal").await;
    let provider = Route53::new(client, &zone, Duration::from_secs(5));
    let txt = RecordSet::new(
        "_valkey-dr.demo.valkey-dr.internal",
        RecordType::Txt,
        10,
        ["heritage=valkey-dr,owner=t,epoch=3,primary=us-east-2".to_string()],
    );
    provider
        .apply(&[Change::Create { new: txt.clone() }])
        .await
        .unwrap();
    assert_eq!(
        provider
            .records(std::slice::from_ref(&txt.name))
            .await
            .unwrap(),
        vec![txt]
    );
}

fn cname(target: &str) -> RecordSet {
    RecordSet::new("demo.z.test", RecordType::Cname, 10, [target.to_string()])
}

fn listing(current: Option<RecordSet>) -> ListResourceRecordSetsOutput {
    use aws_sdk_route53::types::{ResourceRecord, ResourceRecordSet, RrType};
    let sets = current
        .map(|r| {
            vec![
                ResourceRecordSet::builder()
                    .name(&r.name)
                    .r#type(RrType::Cname)
                    .ttl(10)
                    .resource_records(
                        ResourceRecord::builder()
                            .value(&r.values[0])
                            .build()
                            .unwrap(),
                    )
                    .build()
                    .unwrap(),
            ]
        })
        .unwrap_or_default();
    ListResourceRecordSetsOutput::builder()
        .set_resource_record_sets(Some(sets))
        .is_truncated(false)
        .max_items(10)
        .build()
        .unwrap()
}

fn accepted() -> ChangeResourceRecordSetsOutput {
    ChangeResourceRecordSetsOutput::builder()
        .change_info(
            ChangeInfo::builder()
                .id("/change/C1")
                .status(aws_sdk_route53::types::ChangeStatus::Insync)
                .submitted_at(aws_sdk_route53::primitives::DateTime::from_secs(0))
                .build()
                .unwrap(),
        )
        .build()
}

/// AWS's exact answer to a stale compare-and-swap (moto is looser): a conflict, nothing applied.
#[tokio::test]
async fn a_stale_batch_rejected_by_route53_is_a_conflict() {
    let list = mock!(aws_sdk_route53::Client::list_resource_record_sets)
        .then_output(|| listing(Some(cname("a.z.test."))));
    let change = mock!(aws_sdk_route53::Client::change_resource_record_sets).then_error(|| {
        ChangeResourceRecordSetsError::InvalidChangeBatch(
            InvalidChangeBatch::builder()
                .message("[Tried to delete resource record set [name='demo.z.test.', type='CNAME'] but the values provided do not match the current values]")
                .build(),
        )
    });
    let client = mock_client!(aws_sdk_route53, RuleMode::MatchAny, [&list, &change]);
    let provider = Route53::new(client, "Z1", Duration::ZERO);
    let result = provider
        .apply(&[Change::Update {
            old: cname("a.z.test."),
            new: cname("b.z.test."),
        }])
        .await;
    match result {
        Err(DnsError::Conflict { found, .. }) => assert!(found.contains("do not match"), "{found}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// Throttling and PriorRequestNotComplete are retried with backoff (the SDK's standard strategy,
/// one layer) until the batch goes through.
#[tokio::test]
async fn throttling_is_retried_with_backoff() {
    let list =
        mock!(aws_sdk_route53::Client::list_resource_record_sets).then_output(|| listing(None));
    let change = mock!(aws_sdk_route53::Client::change_resource_record_sets)
        .sequence()
        .error(|| {
            ChangeResourceRecordSetsError::generic(
                aws_sdk_route53::error::ErrorMetadata::builder()
                    .code("Throttling")
                    .message("Rate exceeded")
                    .build(),
            )
        })
        .error(|| {
            // As AWS sends it: the modeled error with its code in the metadata.
            ChangeResourceRecordSetsError::PriorRequestNotComplete(
                aws_sdk_route53::types::error::PriorRequestNotComplete::builder()
                    .message("busy")
                    .meta(
                        aws_sdk_route53::error::ErrorMetadata::builder()
                            .code("PriorRequestNotComplete")
                            .message("busy")
                            .build(),
                    )
                    .build(),
            )
        })
        .output(accepted)
        .build();
    let client = mock_client!(aws_sdk_route53, RuleMode::MatchAny, [&list, &change]);
    let provider =
        Route53::new(client, "Z1", Duration::ZERO).with_retry_base(Duration::from_millis(1));
    provider
        .apply(&[Change::Create {
            new: cname("a.z.test."),
        }])
        .await
        .expect("third attempt succeeds");
    assert_eq!(change.num_calls(), 3);
}

/// An `InvalidChangeBatch` that is not a failed precondition (AWS's message for a CNAME beside
/// other records) is a refusal, not a conflict: re-reading and retrying cannot help.
#[tokio::test]
async fn a_batch_route53_refuses_as_invalid_is_not_a_conflict() {
    let list =
        mock!(aws_sdk_route53::Client::list_resource_record_sets).then_output(|| listing(None));
    let change = mock!(aws_sdk_route53::Client::change_resource_record_sets).then_error(|| {
        ChangeResourceRecordSetsError::InvalidChangeBatch(
            InvalidChangeBatch::builder()
                .message("[RRSet of type CNAME with DNS name demo.z.test. is not permitted as it conflicts with other records with the same DNS name in zone z.test.]")
                .build(),
        )
    });
    let client = mock_client!(aws_sdk_route53, RuleMode::MatchAny, [&list, &change]);
    let provider = Route53::new(client, "Z1", Duration::ZERO);
    let result = provider
        .apply(&[Change::Create {
            new: cname("a.z.test."),
        }])
        .await;
    assert!(
        matches!(&result, Err(DnsError::Rejected(m)) if m.contains("is not permitted")),
        "{result:?}"
    );
    assert_eq!(change.num_calls(), 1, "not retried");
}

/// Route 53 accepted the batch but has not reported it INSYNC within the wait: the change is
/// applied, so apply succeeds (reporting a failure would make the caller redo it).
#[tokio::test]
async fn a_change_not_yet_insync_is_still_applied() {
    let list =
        mock!(aws_sdk_route53::Client::list_resource_record_sets).then_output(|| listing(None));
    let pending = || {
        ChangeInfo::builder()
            .id("/change/C1")
            .status(aws_sdk_route53::types::ChangeStatus::Pending)
            .submitted_at(aws_sdk_route53::primitives::DateTime::from_secs(0))
            .build()
            .unwrap()
    };
    let change =
        mock!(aws_sdk_route53::Client::change_resource_record_sets).then_output(move || {
            ChangeResourceRecordSetsOutput::builder()
                .change_info(pending())
                .build()
        });
    let get = mock!(aws_sdk_route53::Client::get_change).then_output(move || {
        aws_sdk_route53::operation::get_change::GetChangeOutput::builder()
            .change_info(pending())
            .build()
    });
    let client = mock_client!(aws_sdk_route53, RuleMode::MatchAny, [&list, &change, &get]);
    let provider = Route53::new(client, "Z1", Duration::from_secs(1));
    provider
        .apply(&[Change::Create {
            new: cname("a.z.test."),
        }])
        .await
        .expect("applied, only not INSYNC yet");
    assert_eq!(change.num_calls(), 1);
    assert!(get.num_calls() >= 1);
}
