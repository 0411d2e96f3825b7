//! The embedded DNS server on its own, serving a fixed zone, for `bench/dns`:
//! `serve <IP:port>` answers for `valkey-dr.bench.` until killed.

use std::sync::Arc;

use valkey_dr_core::{Change, RecordSet, RecordType};
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
    let zone = Arc::new(Zone::new("valkey-dr.bench"));
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
    let changes: Vec<Change> = records
        .into_iter()
        .map(|new| Change::Create { new })
        .collect();
    zone.apply_changes(&changes)
        .expect("a fresh zone takes the records");
    let server = DnsServer::start(zone, listen, 5).await.unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1);
    });
    eprintln!("serving valkey-dr.bench. on {}", server.local_addr());
    let _ = tokio::signal::ctrl_c().await;
    server.shutdown().await;
}
