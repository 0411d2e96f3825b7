//! The embedded server answered over the network by `dig` and `nsupdate` — real clients.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use valkey_dr_core::{Change, RecordSet, RecordType};
use valkey_dr_dns::embedded::{DnsServer, Zone};

async fn server() -> (DnsServer, Arc<Zone>) {
    let zone = Arc::new(Zone::new("valkey-dr.test"));
    let set = |name: &str, rtype, value: &str| RecordSet::new(name, rtype, 5, [value.to_string()]);
    zone.apply_changes(&[
        Change::Create {
            new: set(
                "demo.valkey-dr.test",
                RecordType::Cname,
                "primary.r1.valkey-dr.test.",
            ),
        },
        Change::Create {
            new: set("primary.r1.valkey-dr.test", RecordType::A, "127.0.1.1"),
        },
        Change::Create {
            new: set(
                "_valkey-dr.demo.valkey-dr.test",
                RecordType::Txt,
                "heritage=valkey-dr,owner=t,epoch=1,primary=r1",
            ),
        },
    ])
    .unwrap();
    let server = DnsServer::start(zone.clone(), "127.0.0.1:0".parse().unwrap(), 5)
        .await
        .unwrap();
    (server, zone)
}

fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig is installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(output: &str) -> &str {
    output
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("no status")
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_authoritatively_over_udp_and_tcp() {
    let (server, _) = server().await;
    let addr = server.local_addr();
    for transport in ["+notcp", "+tcp"] {
        let out = dig(addr, &[transport, "demo.valkey-dr.test", "A"]);
        assert_eq!(status(&out), "NOERROR", "{out}");
        assert!(
            out.contains("flags: qr aa rd;"),
            "authoritative, no recursion available: {out}"
        );
        assert!(out.contains("CNAME\tprimary.r1.valkey-dr.test."), "{out}");
        assert!(
            out.contains("A\t127.0.1.1"),
            "the CNAME is followed within the zone: {out}"
        );
    }
    let txt = dig(addr, &["+short", "_valkey-dr.demo.valkey-dr.test", "TXT"]);
    assert_eq!(
        txt.trim(),
        "\"heritage=valkey-dr,owner=t,epoch=1,primary=r1\""
    );
    let ns = dig(addr, &["+short", "valkey-dr.test", "NS"]);
    assert_eq!(ns.trim(), "ns.valkey-dr.test.");
    let nx = dig(addr, &["nope.valkey-dr.test", "A"]);
    assert_eq!(status(&nx), "NXDOMAIN");
    assert!(nx.contains("SOA"), "negative answers carry the SOA: {nx}");
    let nodata = dig(addr, &["primary.r1.valkey-dr.test", "MX"]);
    assert_eq!(status(&nodata), "NOERROR");
    assert!(nodata.contains("ANSWER: 0"), "{nodata}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_other_zones_transfers_and_updates() {
    let (server, zone) = server().await;
    let addr = server.local_addr();
    assert_eq!(status(&dig(addr, &["example.org", "A"])), "REFUSED");
    assert_eq!(
        status(&dig(addr, &["valkey-dr.test.example.org", "A"])),
        "REFUSED"
    );
    let axfr = dig(addr, &["valkey-dr.test", "AXFR"]);
    assert!(
        axfr.contains("Transfer failed") || axfr.contains("REFUSED"),
        "{axfr}"
    );
    assert!(
        !axfr.contains("127.0.1.1"),
        "no zone data leaks through AXFR: {axfr}"
    );
    let ixfr = dig(addr, &["valkey-dr.test", "IXFR=1"]);
    assert!(!ixfr.contains("127.0.1.1"), "{ixfr}");

    let serial = zone.serial();
    let mut update = Command::new("nsupdate")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nsupdate is installed");
    let script = format!(
        "server {} {}\nzone valkey-dr.test\nupdate delete demo.valkey-dr.test CNAME\nupdate add demo.valkey-dr.test 5 CNAME evil.example.org.\nsend\n",
        addr.ip(),
        addr.port()
    );
    use std::io::Write;
    update
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = update.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("REFUSED"), "{text}");
    assert_eq!(zone.serial(), serial, "an update changes nothing");
    assert!(dig(addr, &["+short", "demo.valkey-dr.test", "CNAME"]).contains("primary.r1"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn survives_malformed_packets() {
    let (server, _) = server().await;
    let addr = server.local_addr();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let junk: [&[u8]; 5] = [
        b"",
        b"\x00",
        &[0xff; 12],
        &[0u8; 512],
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c",
    ];
    for packet in junk {
        socket.send_to(packet, addr).unwrap();
    }
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    use std::io::Write;
    tcp.write_all(&[0x00, 0x05, 1, 2, 3, 4, 5]).unwrap();
    drop(tcp);
    let out = dig(addr, &["demo.valkey-dr.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "still serving after junk: {out}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_a_flipped_record_with_a_higher_serial() {
    let (server, zone) = server().await;
    let addr = server.local_addr();
    let soa = |addr| {
        dig(addr, &["+short", "valkey-dr.test", "SOA"])
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    let before = soa(addr);
    let old = RecordSet::new(
        "demo.valkey-dr.test",
        RecordType::Cname,
        5,
        ["primary.r1.valkey-dr.test.".to_string()],
    );
    let new = RecordSet::new(
        "demo.valkey-dr.test",
        RecordType::Cname,
        5,
        ["primary.r2.valkey-dr.test.".to_string()],
    );
    zone.apply_changes(&[Change::Update { old, new }]).unwrap();
    assert_eq!(
        dig(addr, &["+short", "demo.valkey-dr.test", "CNAME"]).trim(),
        "primary.r2.valkey-dr.test."
    );
    assert!(soa(addr) > before);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn large_answers_are_truncated_over_udp_and_complete_over_tcp() {
    let (server, zone) = server().await;
    let addr = server.local_addr();
    // A reader set of 120 addresses: far more than 512 bytes.
    let readers: Vec<String> = (1..=120)
        .map(|i| format!("10.0.{}.{}", i / 250, i % 250 + 1))
        .collect();
    zone.apply_changes(&[Change::Create {
        new: RecordSet::new(
            "reader.r1.valkey-dr.test",
            RecordType::A,
            5,
            readers.clone(),
        ),
    }])
    .unwrap();
    // Plain UDP without EDNS: at most 512 bytes, so the answer is cut and flagged TC.
    let udp = dig(
        addr,
        &[
            "+noedns",
            "+ignore",
            "+notcp",
            "reader.r1.valkey-dr.test",
            "A",
        ],
    );
    assert!(udp.contains(" tc"), "the truncation flag is set: {udp}");
    // dig then retries over TCP by itself, as resolvers do, and gets every record.
    let full = dig(
        addr,
        &["+noedns", "reader.r1.valkey-dr.test", "A", "+short"],
    );
    assert_eq!(full.lines().count(), readers.len(), "{full}");
    server.shutdown().await;
}

/// Answers are cached per UDP thread by the request's bytes; a flip must never be served stale.
/// Identical questions (`+nocookie`: same bytes each time, from new source ports, so every
/// thread's cache is filled) before and after the flip.
#[tokio::test(flavor = "multi_thread")]
async fn a_cached_answer_is_never_served_after_a_flip() {
    let (server, zone) = server().await;
    let addr = server.local_addr();
    let ask = || {
        dig(
            addr,
            &["+nocookie", "+short", "demo.valkey-dr.test", "CNAME"],
        )
    };
    for _ in 0..10 {
        assert_eq!(ask().trim(), "primary.r1.valkey-dr.test.");
    }
    let cname = |target: &str| {
        RecordSet::new(
            "demo.valkey-dr.test",
            RecordType::Cname,
            5,
            [target.to_string()],
        )
    };
    zone.apply_changes(&[Change::Update {
        old: cname("primary.r1.valkey-dr.test."),
        new: cname("primary.r2.valkey-dr.test."),
    }])
    .unwrap();
    for _ in 0..10 {
        assert_eq!(ask().trim(), "primary.r2.valkey-dr.test.");
    }
    server.shutdown().await;
}

/// The UDP sockets share their port among themselves only: a second server on a taken address
/// fails to start instead of silently sharing the queries.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_server_on_the_same_address_fails_to_start() {
    let (server, zone) = server().await;
    let taken = DnsServer::start(zone, server.local_addr(), 5).await;
    assert!(taken.is_err(), "the address is taken");
    assert!(
        dig(
            server.local_addr(),
            &["+short", "demo.valkey-dr.test", "CNAME"]
        )
        .contains("r1"),
        "the first still answers"
    );
    server.shutdown().await;
}

/// A site's copy of the records in etcd, not loaded yet (a controller started while etcd is out
/// of reach): SERVFAIL, so that resolvers ask another site's server, never an NXDOMAIN that they
/// would cache. The zone's own SOA and NS still answer. Once the copy arrives, even an empty one,
/// the answers are the zone's (over UDP the cached SERVFAIL is dropped).
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_not_loaded_yet_answers_servfail_never_nxdomain() {
    let zone = Arc::new(Zone::awaiting_copy(
        "valkey-dr.test",
        Duration::from_secs(600),
    ));
    let server = DnsServer::start(zone.clone(), "127.0.0.1:0".parse().unwrap(), 5)
        .await
        .unwrap();
    let addr = server.local_addr();
    for args in [
        &["demo.valkey-dr.test", "A"][..],
        &["+tcp", "demo.valkey-dr.test", "A"],
        &["nothing.valkey-dr.test", "TXT"],
    ] {
        assert_eq!(status(&dig(addr, args)), "SERVFAIL", "{args:?}");
    }
    assert_eq!(status(&dig(addr, &["valkey-dr.test", "SOA"])), "NOERROR");

    zone.replace_all(Vec::new());
    zone.confirm();
    assert_eq!(
        status(&dig(addr, &["demo.valkey-dr.test", "A"])),
        "NXDOMAIN"
    );
    zone.replace_all(vec![RecordSet::new(
        "demo.valkey-dr.test",
        RecordType::A,
        5,
        ["127.0.1.1".to_string()],
    )]);
    assert_eq!(
        dig(addr, &["+short", "demo.valkey-dr.test", "A"]).trim(),
        "127.0.1.1"
    );
    server.shutdown().await;
}

/// Review M2: a site cut off from etcd kept answering the last records it read, for as long as
/// the cut lasted, while a leader elsewhere moved the name: clients whose resolvers asked that
/// site were led to the old writer. Real etcd (three members; the site reads only its own, which
/// is then lost) and real `dig`: the site's copy answers while etcd answered it within the vouch,
/// SERVFAIL after (over UDP too, whose cache held the old answer), never the old writer once
/// the vouch lapsed, and the new writer once its member is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_site_cut_off_from_etcd_stops_answering_its_old_records() {
    use valkey_dr_coord::cluster::EtcdCluster;
    use valkey_dr_coord::{Coordinator, LeaderCell};
    use valkey_dr_dns::DnsProvider;
    use valkey_dr_dns::etcd::EtcdRecords;

    let dir = std::env::temp_dir().join(format!("valkey-dr-dns-stale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ip = std::net::Ipv4Addr::new(127, 251, (std::process::id() % 250) as u8, 1);
    let mut cluster = EtcdCluster::start(&dir, ip, 3).await.expect("etcd starts");
    let endpoints = cluster.endpoints();
    let connect = |site: &'static str, endpoints: Vec<String>| async move {
        Coordinator::connect(
            &endpoints,
            "/valkey-dr/stale-test",
            site,
            Duration::from_secs(30),
        )
        .await
        .unwrap()
    };
    // The leader reaches the first two members; the site only the third, its own.
    let leader_coord = connect("a", endpoints[..2].to_vec()).await;
    let claim = leader_coord.try_lead().await.unwrap().unwrap();
    let leader_cell = Arc::new(LeaderCell::default());
    leader_cell.set(Some(claim.fence()));
    let leader = EtcdRecords::new(
        leader_coord,
        leader_cell,
        Arc::new(Zone::awaiting_copy(
            "valkey-dr.test",
            Duration::from_secs(30),
        )),
    );
    let writer = |region: &str| {
        RecordSet::new(
            "demo.valkey-dr.test",
            RecordType::A,
            5,
            [format!("127.0.{region}.1")],
        )
    };
    leader
        .apply(&[Change::Create { new: writer("1") }])
        .await
        .unwrap();

    let vouch = Duration::from_millis(1500);
    let site_zone = Arc::new(Zone::awaiting_copy("valkey-dr.test", vouch));
    let site = EtcdRecords::new(
        connect("b", endpoints[2..].to_vec()).await,
        Arc::new(LeaderCell::default()),
        site_zone.clone(),
    );
    site.sync().await.unwrap();
    let server = DnsServer::start(site_zone.clone(), "127.0.0.1:0".parse().unwrap(), 5)
        .await
        .unwrap();
    let addr = server.local_addr();
    let answer = || {
        dig(addr, &["+short", "demo.valkey-dr.test", "A"])
            .trim()
            .to_string()
    };
    assert_eq!(answer(), "127.0.1.1");

    // The site's member is lost; the name moves meanwhile.
    cluster.kill(2);
    let cut = Instant::now();
    leader
        .apply(&[Change::Update {
            old: writer("1"),
            new: writer("2"),
        }])
        .await
        .unwrap();
    let mut servfail_after = None;
    while cut.elapsed() < vouch * 4 {
        assert!(site.sync().await.is_err(), "the site's only member is gone");
        let udp = dig(addr, &["demo.valkey-dr.test", "A"]);
        let tcp = dig(addr, &["+tcp", "demo.valkey-dr.test", "A"]);
        match (status(&udp), status(&tcp)) {
            ("SERVFAIL", "SERVFAIL") => {
                servfail_after.get_or_insert(cut.elapsed());
            }
            // The copy went stale between the two queries (UDP is asked first).
            ("NOERROR", "SERVFAIL") if servfail_after.is_none() => {
                servfail_after = Some(cut.elapsed());
            }
            ("NOERROR", "NOERROR") => assert!(
                servfail_after.is_none(),
                "answered again after going stale: {udp}"
            ),
            other => panic!("UDP and TCP disagree, and not at the turn: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        servfail_after.is_some(),
        "the cut-off site answered its old records throughout"
    );
    assert!(!site_zone.is_current());

    // Its member back: the site answers again, with the new writer.
    cluster.restart(2).unwrap();
    let back = Instant::now();
    while site.sync().await.is_err() {
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "the member never came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(answer(), "127.0.2.1");
    server.shutdown().await;
    drop(cluster);
}
