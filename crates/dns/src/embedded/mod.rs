//! The embedded authoritative DNS server: a versioned in-memory zone ([`Zone`]) served over UDP
//! and TCP by hickory-server ([`server`]).

mod server;
mod udp;
mod zone;

pub use server::{DnsServer, ServerError, respond};
pub use zone::{Lookup, Zone};
