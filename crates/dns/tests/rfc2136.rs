//! The RFC 2136 provider against real BIND 9, Knot DNS and PowerDNS Authoritative: the
//! conformance battery every backend passes, the CNAME and its ownership TXT moving in one
//! message or not at all, two writers racing, a wrong key, a server down.

mod servers;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use servers::{AuthServer, KEY_NAME, Kind, SECRET, ZONE};
use valkey_dr_core::config::TsigAlgorithm;
use valkey_dr_core::{Change, RecordSet, RecordType};
use valkey_dr_dns::conformance::battery;
use valkey_dr_dns::rfc2136::{Rfc2136, TsigKey};
use valkey_dr_dns::{DnsError, DnsProvider};

fn provider(servers: Vec<SocketAddr>, secret: &str) -> Rfc2136 {
    let key = TsigKey::from_base64(KEY_NAME, TsigAlgorithm::HmacSha256, secret).unwrap();
    Rfc2136::new(servers, ZONE, key, Duration::from_secs(2)).unwrap()
}

fn set(name: &str, rtype: RecordType, value: &str) -> RecordSet {
    RecordSet::new(name, rtype, 5, [value.to_string()])
}

fn cname(value: &str) -> RecordSet {
    set("demo.z.test.", RecordType::Cname, value)
}

fn owner(epoch: u64) -> RecordSet {
    set(
        "_valkey-dr.demo.z.test.",
        RecordType::Txt,
        &format!("heritage=valkey-dr,owner=test,epoch={epoch},primary=r{epoch}"),
    )
}

async fn conformance(kind: Kind) {
    let server = AuthServer::start(kind);
    battery(&provider(vec![server.addr], SECRET), ZONE).await;
}

/// The flip the controller makes: CNAME and ownership TXT in one UPDATE. With one stale
/// expectation nothing moves; with both right, both move.
async fn cname_and_owner_move_together(kind: Kind) {
    let server = AuthServer::start(kind);
    let dns = provider(vec![server.addr], SECRET);
    dns.apply(&[
        Change::Create {
            new: cname("primary.r1.z.test."),
        },
        Change::Create { new: owner(1) },
    ])
    .await
    .unwrap();
    let stale_owner = dns
        .apply(&[
            Change::Update {
                old: cname("primary.r1.z.test."),
                new: cname("primary.r2.z.test."),
            },
            Change::Update {
                old: owner(7),
                new: owner(2),
            },
        ])
        .await;
    assert!(
        matches!(&stale_owner, Err(DnsError::Conflict { name, .. }) if name.starts_with("_valkey-dr")),
        "{kind:?}: a stale owner record refuses the whole flip: {stale_owner:?}"
    );
    assert_eq!(server.dig("demo.z.test", "CNAME"), "primary.r1.z.test.");
    dns.apply(&[
        Change::Update {
            old: cname("primary.r1.z.test."),
            new: cname("primary.r2.z.test."),
        },
        Change::Update {
            old: owner(1),
            new: owner(2),
        },
    ])
    .await
    .unwrap();
    assert_eq!(server.dig("demo.z.test", "CNAME"), "primary.r2.z.test.");
    assert!(
        server
            .dig("_valkey-dr.demo.z.test", "TXT")
            .contains("epoch=2")
    );
}

/// Two controllers read the same records and flip to different targets at once: the server's
/// prerequisites let exactly one through.
async fn racing_writers_exactly_one_wins(kind: Kind) {
    let server = AuthServer::start(kind);
    let first = provider(vec![server.addr], SECRET);
    let second = provider(vec![server.addr], SECRET);
    first
        .apply(&[Change::Create {
            new: cname("primary.r1.z.test."),
        }])
        .await
        .unwrap();
    for round in 0..5 {
        let current = first
            .records(&["demo.z.test.".to_string()])
            .await
            .unwrap()
            .remove(0);
        let flip = |target: String| Change::Update {
            old: current.clone(),
            new: cname(&target),
        };
        let (to_a, to_b) = (
            [flip(format!("a{round}.z.test."))],
            [flip(format!("b{round}.z.test."))],
        );
        let (a, b) = tokio::join!(first.apply(&to_a), second.apply(&to_b));
        let winners = [&a, &b].iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "{kind:?} round {round}: {a:?} / {b:?}");
        let loser = if a.is_ok() { &b } else { &a };
        assert!(
            matches!(loser, Err(DnsError::Conflict { .. })),
            "{kind:?}: the loser sees a conflict: {loser:?}"
        );
        let expected = if a.is_ok() { "a" } else { "b" };
        assert_eq!(
            server.dig("demo.z.test", "CNAME"),
            format!("{expected}{round}.z.test."),
            "{kind:?}: the winner's value is served"
        );
    }
}

/// A wrong secret: a clear error that names the key (never the secret), and nothing changed.
async fn a_wrong_key_changes_nothing(kind: Kind) {
    let server = AuthServer::start(kind);
    let wrong_secret = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let wrong = provider(vec![server.addr], wrong_secret);
    let err = wrong
        .apply(&[Change::Create {
            new: cname("primary.r1.z.test."),
        }])
        .await
        .expect_err("a wrong key is refused");
    let text = err.to_string();
    assert!(
        matches!(err, DnsError::Rejected(_)),
        "{kind:?}: {err:?} is not retried blindly"
    );
    assert!(text.contains(KEY_NAME), "{kind:?}: names the key: {text}");
    assert!(!text.contains(wrong_secret) && !text.contains(SECRET));
    assert_eq!(
        server.dig("demo.z.test", "CNAME"),
        "",
        "{kind:?}: nothing changed"
    );
}

/// The update-policy grants the controller's names only: any other name is refused as a whole
/// batch, clearly, and nothing changes.
async fn names_outside_the_grant_are_refused(kind: Kind) {
    let server = AuthServer::start(kind);
    let dns = provider(vec![server.addr], SECRET);
    let err = dns
        .apply(&[
            Change::Create {
                new: cname("primary.r1.z.test."),
            },
            Change::Create {
                new: set("www.z.test.", RecordType::A, "10.0.0.9"),
            },
        ])
        .await
        .expect_err("www is not ours");
    assert!(
        matches!(&err, DnsError::Rejected(text) if text.contains("update-policy")),
        "{kind:?}: {err:?}"
    );
    assert_eq!(
        server.dig("demo.z.test", "CNAME"),
        "",
        "{kind:?}: nothing changed"
    );
}

macro_rules! against {
    ($module:ident, $kind:expr) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn passes_the_conformance_battery() {
                conformance($kind).await;
            }

            #[tokio::test]
            async fn cname_and_owner_move_together_or_not_at_all() {
                cname_and_owner_move_together($kind).await;
            }

            #[tokio::test]
            async fn racing_writers_exactly_one_wins_each_round() {
                racing_writers_exactly_one_wins($kind).await;
            }

            #[tokio::test]
            async fn a_wrong_tsig_key_is_a_clear_error_and_changes_nothing() {
                a_wrong_key_changes_nothing($kind).await;
            }
        }
    };
}

/// PowerDNS grants a key a whole zone (TSIG-ALLOW-DNSUPDATE); BIND and Knot grant names.
#[tokio::test]
async fn bind9_grants_exactly_our_names() {
    names_outside_the_grant_are_refused(Kind::Bind).await;
}

#[tokio::test]
async fn knot_grants_exactly_our_names() {
    names_outside_the_grant_are_refused(Kind::Knot).await;
}

against!(bind9, Kind::Bind);
against!(knot, Kind::Knot);
against!(powerdns, Kind::PowerDns);

/// A server that is down: the next one listed takes the update; with none left, the error names
/// each server and is `Unavailable` (the controller retries it with backoff and reports it).
#[tokio::test]
async fn a_server_down_is_skipped_then_reported() {
    let server = AuthServer::start(Kind::Bind);
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let dns = provider(vec![closed, server.addr], SECRET);
    dns.apply(&[Change::Create {
        new: cname("primary.r1.z.test."),
    }])
    .await
    .expect("the second server takes the update");
    assert_eq!(server.dig("demo.z.test", "CNAME"), "primary.r1.z.test.");

    // The only server killed: an `Unavailable` error naming it; back, it answers again with the
    // records it had.
    let mut server = server;
    let only = provider(vec![server.addr], SECRET);
    server.kill();
    let err = only
        .records(&["demo.z.test.".to_string()])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DnsError::Unavailable(text) if text.contains(&server.addr.to_string())),
        "{err:?}"
    );
    server.restart();
    assert_eq!(
        only.records(&["demo.z.test.".to_string()]).await.unwrap(),
        vec![cname("primary.r1.z.test.")]
    );
}

/// The example server configs of docs/dns-providers.md are what BIND and Knot accept.
#[test]
fn the_example_server_configs_are_valid() {
    let dir =
        std::env::temp_dir().join(format!("valkey-dr-rfc2136-examples-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/rfc2136");
    for (file, program, before, after) in [
        ("named.conf", "named-checkconf", vec![], vec![]),
        ("knot.conf", "knotc", vec!["-c"], vec!["conf-check"]),
    ] {
        let text = std::fs::read_to_string(format!("{examples}/{file}")).unwrap();
        let filled = text.replace(
            "<base64 secret, also in /etc/valkey-dr/tsig-secret>",
            SECRET,
        );
        let path = dir.join(file);
        std::fs::write(&path, filled).unwrap();
        let out = Command::new(program)
            .args(before)
            .arg(&path)
            .args(after)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
