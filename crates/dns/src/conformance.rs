//! The contract every [`DnsProvider`] must meet, as one battery of checks. A backend's tests call
//! [`battery`] with a provider for an empty test zone `zone` (e.g. `z.test.`).

use valkey_dr_core::{Change, RecordSet, RecordType};

use crate::{DnsError, DnsProvider};

fn set(name: &str, rtype: RecordType, value: &str) -> RecordSet {
    RecordSet::new(name, rtype, 5, [value.to_string()])
}

/// Panics with a description of the first broken rule.
pub async fn battery(provider: &dyn DnsProvider, zone: &str) {
    let global = format!("demo.{zone}");
    let primary = format!("primary.r1.{zone}");
    let names = vec![global.clone(), primary.clone()];
    let cname_1 = set(&global, RecordType::Cname, &format!("primary.r1.{zone}"));
    let cname_2 = set(&global, RecordType::Cname, &format!("primary.r2.{zone}"));
    let a_1 = set(&primary, RecordType::A, "10.0.0.1");

    assert_eq!(
        provider.records(&names).await.unwrap(),
        vec![],
        "a new zone holds none of our names"
    );

    provider
        .apply(&[
            Change::Create {
                new: cname_1.clone(),
            },
            Change::Create { new: a_1.clone() },
        ])
        .await
        .expect("creating absent records succeeds");
    let mut held = provider.records(&names).await.unwrap();
    held.sort();
    assert_eq!(
        held,
        vec![cname_1.clone(), a_1.clone()],
        "records read back as written"
    );

    let stale = Change::Update {
        old: cname_2.clone(),
        new: cname_1.clone(),
    };
    let create_new = Change::Create {
        new: set(&format!("reader.r1.{zone}"), RecordType::A, "10.0.0.2"),
    };
    let error = provider
        .apply(&[create_new, stale])
        .await
        .expect_err("a stale expected value is refused");
    assert!(
        matches!(error, DnsError::Conflict { .. }),
        "a stale update is a conflict: {error}"
    );
    assert_eq!(
        provider
            .records(&[format!("reader.r1.{zone}")])
            .await
            .unwrap(),
        vec![],
        "a refused batch applies nothing"
    );

    let duplicate = provider
        .apply(&[Change::Create {
            new: cname_2.clone(),
        }])
        .await;
    assert!(
        matches!(duplicate, Err(DnsError::Conflict { .. })),
        "create never overwrites"
    );

    provider
        .apply(&[Change::Update {
            old: cname_1.clone(),
            new: cname_2.clone(),
        }])
        .await
        .expect("compare-and-swap with the right expected value succeeds");
    assert_eq!(
        provider
            .records(std::slice::from_ref(&global))
            .await
            .unwrap(),
        vec![cname_2.clone()]
    );

    provider
        .apply(&[Change::Delete { old: a_1.clone() }])
        .await
        .expect("delete with the right value");
    assert_eq!(provider.records(&[primary]).await.unwrap(), vec![]);
    provider
        .apply(&[])
        .await
        .expect("an empty batch is a no-op");
}
