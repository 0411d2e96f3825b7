//! For tests (feature `testing`): a fake engine, and the battery of checks that every engine —
//! the fake and real Valkey alike — must pass, so that tests run against the fake say something
//! about real nodes.

pub mod battery;
pub mod fake_engine;

pub use battery::{BatteryNodes, battery};
pub use fake_engine::{FakeEngine, FakeNode};
