//! The highly available shape on real etcd members, real controllers and real Valkey: every site
//! serves the name, any site takes operator commands, a deposed leader cannot write, and a
//! minority never promotes.

use std::time::{Duration, Instant};

use valkey_dr_coord::{CoordError, Coordinator, Fence, LeaderCell};
use valkey_dr_core::{Change, RecordSet, RecordType};
use valkey_dr_dns::DnsProvider;
use valkey_dr_dns::embedded::Zone;
use valkey_dr_dns::etcd::EtcdRecords;
use valkey_dr_lab::LabSpec;

use crate::harness::TestLab;

/// A client of the lab's etcd as `name` (what an operator's or an impostor's tool would hold).
async fn etcd_client(lab: &TestLab, name: &str) -> Coordinator {
    Coordinator::connect_with(
        &lab.spec.etcd_endpoints("us-east-1"),
        "/valkey-dr/valkey-dr-lab",
        name,
        Duration::from_secs(3),
        lab.spec.etcd_tls().unwrap().as_ref(),
    )
    .await
    .unwrap()
}

/// Polls `dig` against one site until it leads to `ip` (at most `limit`).
async fn wait_name_at(lab: &TestLab, site: &str, ip: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let name = lab.name("demo");
    while Instant::now() < deadline {
        if lab.dig_site(site, &name).last().map(String::as_str) == Some(ip) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn every_site_serves_the_name_and_the_survivors_carry_on_without_the_leader() {
    let lab = TestLab::start_ha().await;
    let writer = lab.ip(0, 0);
    for site in &lab.spec.sites {
        assert!(
            wait_name_at(&lab, site, &writer, Duration::from_secs(5)).await,
            "site {site} serves the name"
        );
    }
    let status = lab.status().await;
    assert_eq!(status["coordination"]["leader"], "witness", "{status:#}");

    // The leader's site dies. The others keep answering at once, from the records they hold.
    lab.kill_site_controller("witness").await;
    for site in ["us-east-1", "us-east-2"] {
        assert_eq!(
            lab.dig_site(site, &lab.name("demo")).last(),
            Some(&writer),
            "{site} answers without the leader"
        );
    }

    // An operator at any surviving site moves the writer: the request reaches whichever site
    // leads now through etcd, and every surviving site serves the new name.
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["promote", "us-east-2", "--config"])
        .arg(lab.spec.site_config_path("us-east-1"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("epoch 2"), "{text}");
    let new_writer = lab.ip(1, 0);
    for site in ["us-east-1", "us-east-2"] {
        assert!(
            wait_name_at(&lab, site, &new_writer, Duration::from_secs(2)).await,
            "{site} serves the new writer"
        );
    }

    // A deposed leader's token, whatever its own clock says, is refused by etcd: neither the
    // state nor the records change.
    let coord = etcd_client(&lab, "impostor").await;
    let stale = Fence {
        token: 1,
        act_until: Instant::now() + Duration::from_secs(30),
        acts_from: Instant::now(),
    };
    assert!(matches!(
        coord.put_fenced(stale, "state", b"{}").await,
        Err(CoordError::Deposed { .. })
    ));
    // Nor do the nodes take its commands, whatever its clock says (a VM paused and resumed):
    // the leader claimed every node when it took office.
    let frozen = valkey_dr_controller::ha::LeaderOnly {
        inner: std::sync::Arc::new(valkey_dr_valkey::ValkeyEngine::new(
            valkey_dr_valkey::Timeouts {
                connect: Duration::from_secs(1),
                command: Duration::from_secs(1),
            },
            lab.spec.security().unwrap(),
        )),
        leader: {
            let cell = std::sync::Arc::new(LeaderCell::default());
            cell.set(Some(stale));
            cell
        },
    };
    let node = valkey_dr_core::Topology::from_config(&lab.spec.main_config()).nodes[2]
        .control_endpoint
        .clone();
    let refused = valkey_dr_core::Engine::pause_writes(&frozen, &node, Duration::from_secs(30))
        .await
        .expect_err("a node claimed by a later leader refuses a deposed one");
    assert!(refused.reason.contains("later leader"), "{refused}");
    // The live leader may record the writer's progress meanwhile; the stale write never lands.
    let state_after = coord
        .get("state")
        .await
        .unwrap()
        .expect("the state is there");
    assert_ne!(&state_after[..], b"{}");
    assert!(String::from_utf8_lossy(&state_after).contains("\"epoch\": 2"));
    let cell = std::sync::Arc::new(LeaderCell::default());
    cell.set(Some(stale));
    let records = EtcdRecords::new(coord, cell, std::sync::Arc::new(Zone::new(&lab.spec.zone)));
    records.sync().await.unwrap();
    let global = lab.name("demo");
    let current = records
        .records(std::slice::from_ref(&global))
        .await
        .unwrap();
    let hijack = Change::Update {
        old: current[0].clone(),
        new: RecordSet::new(
            &global,
            RecordType::Cname,
            1,
            [lab.name("primary.us-east-1")],
        ),
    };
    let refused = records.apply(&[hijack]).await;
    assert!(
        matches!(refused, Err(valkey_dr_dns::DnsError::Fenced(_))),
        "{refused:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for site in ["us-east-1", "us-east-2"] {
        assert_eq!(
            lab.dig_site(site, &global).last(),
            Some(&new_writer),
            "{site} still serves the real writer"
        );
    }

    // An operator's request whose command stopped waiting long ago (a leaderless gap) is refused
    // by the leader that finds it, never run unannounced.
    let late = serde_json::json!({
        "deadline_ms": 1,
        "request": { "command": "promote", "region": "us-east-1" },
    });
    let forwarder = etcd_client(&lab, "operator").await;
    forwarder
        .put_expiring(
            "requests/late",
            &serde_json::to_vec(&late).unwrap(),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let reply = loop {
        if let Some(reply) = forwarder.get("results/late").await.unwrap() {
            break String::from_utf8(reply).unwrap();
        }
        assert!(Instant::now() < deadline, "no leader answered the request");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(reply.contains("expired"), "{reply}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        lab.dig_site("us-east-2", &global).last(),
        Some(&new_writer),
        "nothing was promoted"
    );
}

/// Three data regions, each site an etcd member and a controller (the third doubles as the
/// witness). One region lost: the majority moves the writer. Two lost at once: the survivor has
/// no quorum, never promotes, and pauses its writer rather than take writes alone.
#[tokio::test(flavor = "multi_thread")]
async fn three_regions_fail_over_on_a_majority_and_never_from_a_minority() {
    let lab = TestLab::start_with(|spec| {
        spec.regions.push("us-west-2".into());
        spec.sites = LabSpec::default_sites(&spec.regions);
    })
    .await;
    assert_eq!(lab.spec.sites, ["us-east-1", "us-east-2", "us-west-2"]);

    // Two regions lost at once (not the writer's): no quorum anywhere, so no promotion; the
    // writer's region fences its writer within the lease TTL.
    lab.lab(&[
        "partition",
        "--region",
        "us-east-2",
        "--region",
        "us-west-2",
    ]);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let events = lab.events();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "self_fenced" && e["site"] == "us-east-1"),
        "the writer's region fenced itself"
    );
    assert!(
        !events.iter().any(|e| e["event"] == "failover_started"),
        "no promotion from a minority"
    );
    // A cut-off site still answers with what it read last, and says it is not ready.
    let cut_off = lab.spec.site_http("us-east-2");
    let (code, body) = crate::http::get(cut_off, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not read from etcd"), "{body}");
    lab.lab(&["heal"]);
    let status = lab
        .wait_until(|s| s["findings"] == serde_json::json!(["healthy"]))
        .await;
    assert_eq!(status["epoch"], 1, "{status:#}");
    let ready_again = async {
        while crate::http::get(cut_off, "/readyz").0 != 200 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), ready_again)
        .await
        .expect("ready again once it reads etcd");

    // The writer's region lost alone: the two others are a majority and move the writer — once
    // its self-fence is armed again after the heal (raised 1.5 s after its remote replicas are
    // back; "healthy" can come first, and an unarmed writer is rightly never failed over from).
    lab.wait_until(|s| s["self_fence"]["armed"] == true).await;
    lab.lab(&["partition", "--region", "us-east-1"]);
    let status = lab
        .wait_until(|s| s["epoch"].as_u64().is_some_and(|e| e >= 2))
        .await;
    assert_ne!(status["primary_region"], "us-east-1", "{status:#}");
    lab.lab(&["heal"]);
    lab.wait_until(|s| s["findings"] == serde_json::json!(["healthy"]))
        .await;
}

/// etcd past its quota refuses every write (`NOSPACE`), and the writer's region fences itself
/// when it cannot renew; an operator must see it coming and see it happen. Every site's status
/// shows etcd's database size, and the alarm as a warning with what to do, within a check
/// interval (10 s); disarmed, the warning goes.
#[tokio::test(flavor = "multi_thread")]
async fn status_shows_etcd_storage_and_warns_on_its_nospace_alarm() {
    let lab = TestLab::start_ha().await;
    let status = lab
        .wait_until(|s| s["coordination"]["etcd"]["db_bytes"].as_u64().is_some())
        .await;
    assert!(
        status["coordination"]["etcd"]["db_bytes"].as_u64().unwrap() > 0,
        "{status:#}"
    );
    assert!(status["coordination"]["warnings"].is_null(), "{status:#}");

    let endpoints = lab.spec.etcd_member_endpoints();
    let tls = lab.spec.etcd_tls().unwrap();
    valkey_dr_coord::cluster::set_nospace_alarm(&endpoints, tls.as_ref(), true)
        .await
        .unwrap();
    let warned = lab
        .wait_until(|s| {
            s["coordination"]["warnings"]
                .to_string()
                .contains("NOSPACE")
        })
        .await;
    let warnings = warned["coordination"]["warnings"].to_string();
    assert!(
        warnings.contains("refuses every write") && warnings.contains("alarm disarm"),
        "{warned:#}"
    );
    let table = lab.cli(&["status"]);
    assert!(table.contains("warning: etcd alarm NOSPACE"), "{table}");

    valkey_dr_coord::cluster::set_nospace_alarm(&endpoints, tls.as_ref(), false)
        .await
        .unwrap();
    lab.wait_until(|s| s["coordination"]["warnings"].is_null())
        .await;
}

/// etcd restored from a backup taken before the last promotion (here: the state and the records
/// put back as they were), then the leader replaced, as every controller is after a restore: the
/// new leader reads an epoch whose writer now follows the real writer. The nodes' epoch mark says
/// etcd is behind, and the leader takes the newer epoch from it — rather than promote the old
/// writer again and pause the real one, which lost the writes acknowledged in between.
#[tokio::test(flavor = "multi_thread")]
async fn etcd_restored_from_before_the_last_promotion_keeps_the_real_writer() {
    use valkey_dr_coord::keys;
    let lab = TestLab::start_ha().await;
    let operator = etcd_client(&lab, "operator").await;
    let backup_state = operator.get(keys::STATE).await.unwrap().expect("a state");
    let backup_records = operator.get(keys::RECORDS).await.unwrap().expect("records");

    crate::harness::succeed(
        std::process::Command::new(crate::harness::BIN)
            .args(["promote", "us-east-2", "--config"])
            .arg(lab.spec.site_config_path("us-east-1")),
    );
    let writer = lab.ip(1, 0);
    assert!(wait_name_at(&lab, "us-east-1", &writer, Duration::from_secs(3)).await);

    // A client writes to the writer through the restore; every acknowledged increment must stay.
    let mut conn = lab.connection(&writer).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut acked = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let reply: redis::RedisResult<u64> = redis::cmd("INCR")
                    .arg("restored")
                    .query_async(&mut conn)
                    .await;
                if let Ok(n) = reply {
                    acked = acked.max(n);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            acked
        }
    });

    let a_long_time = Duration::from_secs(3600);
    operator
        .put_expiring(keys::STATE, &backup_state, a_long_time)
        .await
        .unwrap();
    operator
        .put_expiring(keys::RECORDS, &backup_records, a_long_time)
        .await
        .unwrap();
    lab.kill_site_controller("witness").await;

    // A new leader takes office a lease TTL later and reads the restored state.
    let deadline = Instant::now() + Duration::from_secs(15);
    while lab.first_event("epoch_recovered").is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Leave the new leader a few passes to do anything else it would do.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = client.await.unwrap();

    let status = lab.site_status("us-east-1").await;
    let lab = &lab;
    let role = |ip: String| async move {
        let mut c = lab.connection(&ip).await;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut c).await.unwrap();
        match &role[0] {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).to_string(),
            other => format!("{other:?}"),
        }
    };
    let (east, west) = (role(lab.ip(0, 0)).await, role(lab.ip(1, 0)).await);
    let master = if east == "master" {
        lab.ip(0, 0)
    } else {
        writer.clone()
    };
    let mut c = lab.connection(&master).await;
    let kept: u64 = redis::cmd("GET")
        .arg("restored")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        kept >= acked,
        "acknowledged {acked}, the master {master} kept {kept}: {status:#}"
    );
    assert_eq!(
        (east.as_str(), west.as_str()),
        ("slave", "master"),
        "{status:#}"
    );
    assert!(
        lab.first_event("epoch_recovered").is_some(),
        "the leader took the epoch from the marks: {status:#}"
    );
    assert_eq!(status["epoch"], 2, "{status:#}");
    for site in ["us-east-1", "us-east-2"] {
        assert!(
            wait_name_at(lab, site, &writer, Duration::from_secs(2)).await,
            "{site} serves the real writer"
        );
    }
}
