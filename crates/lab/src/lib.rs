//! The local multi-region lab: on one machine, the reference topology of real `valkey-server`
//! processes on their own loopback addresses, cross-region replication through the region-link
//! emulator ([`link`]), and the controller with its embedded DNS server.

pub mod chaos;
pub mod clients;
pub mod cluster;
pub mod cluster_chaos;
pub mod cut;
pub mod drill;
pub mod link;
pub mod netns;
pub mod pki;
pub mod process;
pub mod spec;
pub mod writer;

pub use spec::LabSpec;
