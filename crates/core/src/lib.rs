//! Types and pure decision logic of valkey-dr.
//!
//! Nothing in this crate performs I/O: the controller observes the world, hands the observations to
//! [`analysis::analyze`], turns the result into desired DNS records with [`records::desired`] and
//! diffs them against what the DNS backend holds with [`plan::calculate`].

pub mod analysis;
pub mod backoff;
pub mod cluster;
pub mod config;
pub mod endpoint;
pub mod engine;
pub mod failover;
pub mod intent;
pub mod names;
pub mod notification;
pub mod observation;
pub mod ownership;
pub mod plan;
pub mod records;
pub mod self_fence;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod topology;

pub use analysis::{Analysis, EpochRecord, Finding};
pub use backoff::Backoff;
pub use config::{Config, ConfigError};
pub use engine::{Engine, EngineError, ErrorReply};
pub use observation::{NodeObservation, ReplicationInfo, Role};
pub use ownership::Ownership;
pub use plan::{Change, Plan};
pub use records::{RecordSet, RecordType};
pub use topology::{Endpoint, Node, NodeId, Region, RegionId, Topology};
