//! A Valkey cluster of real `valkey-server` processes (cluster mode), formed the way an operator
//! forms one: `CLUSTER ADDSLOTSRANGE` on each primary, `CLUSTER MEET`, `CLUSTER REPLICATE`. The
//! building block of cluster mode's tests.

mod claims;
mod form;
mod layout;
mod linked;
mod node;
mod sites;
mod writers;

pub use claims::*;
pub use form::*;
pub use layout::*;
pub use linked::*;
pub use node::*;
pub use sites::*;
pub use writers::*;
