//! The embedded DNS server on its own, serving a fixed zone, for `bench/dns`:
//! `serve <IP:port> [--copy]` answers for `valkey-dr.bench.` until killed. `--copy`: the zone is
//! a site's copy of records held in etcd, vouched for every 500 ms as the site's reads do, so
//! that every answer checks the copy's freshness.

use std::sync::Arc;

use valkey_dr_core::{RecordSet, RecordType};
use valkey_dr_dns::embedded::{DnsServer, Zone};

#[tokio::main]
async fn main() {
    let listen = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("usage: serve <IP:port>");
            std::process::exit(2);
        });
    let copy = std::env::args().nth(2).is_some_and(|a| a == "--copy");
    let zone = Arc::new(if copy {
        Zone::awaiting_copy("valkey-dr.bench", std::time::Duration::from_secs(3))
    } else {
        Zone::new("valkey-dr.bench")
    });
    let set = |name: &str, rtype, value: &str| RecordSet::new(name, rtype, 5, [value.to_string()]);
    let records = [
        set(
            "demo.valkey-dr.bench",
            RecordType::Cname,
            "primary.r1.valkey-dr.bench.",
        ),
        set("primary.r1.valkey-dr.bench", RecordType::A, "127.0.1.1"),
        set("reader.r1.valkey-dr.bench", RecordType::A, "127.0.1.2"),
        set(
            "_valkey-dr.demo.valkey-dr.bench",
            RecordType::Txt,
            "heritage=valkey-dr,owner=bench,epoch=1,primary=r1",
        ),
    ];
    zone.replace_all(records.to_vec());
    if copy {
        zone.confirm();
        let vouching = zone.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                vouching.confirm();
            }
        });
    }
    let server = DnsServer::start(zone, listen, 5).await.unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1);
    });
    eprintln!("serving valkey-dr.bench. on {}", server.local_addr());
    let _ = tokio::signal::ctrl_c().await;
    server.shutdown().await;
}
