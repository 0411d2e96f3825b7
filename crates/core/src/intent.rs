//! `resolve`: what a (re)started controller does with a promotion intent it finds recorded — the
//! promotion was interrupted somewhere between recording the intent and recording the new epoch.
//! Pure; never a blind promotion: the target is promoted only when it provably holds everything
//! the old writer had acknowledged when it was paused.
//!
//! The intent is recorded before the pause (so that the pause holds no etcd commit of its own), so
//! its offset is the source's offset before the pause, a lower bound. What proves the target holds
//! everything is the order of the switchover: the source is demoted under the target only after
//! the target caught up with the paused source, and the target is promoted only after that.
//!
//! | target                       | source (old writer)             | action                           |
//! |------------------------------|---------------------------------|----------------------------------|
//! | master (never published)     | master, went on after the pause | roll back (the source kept going)|
//! | master                       | anything else                   | complete (fence the source)      |
//! | replica with the history     | master                          | roll back (unpause the source)   |
//! | replica, ≥ required offset   | follows the target (demoted)    | promote the target               |
//! | replica                      | answers, follows another node   | wait: a source back from its own config is no proof the target caught up |
//! | replica, ≥ required offset   | no answer                       | wait: failure detection decides, with every check a failover makes (a silent source may be a paused master) |
//! | replica behind, or no answer | not a master                    | wait: the old epoch stands and failure detection decides |
//! | no answer                    | master                          | roll back                        |

use crate::observation::info_of;
use serde::{Deserialize, Serialize};

use crate::observation::{History, NodeObservation, ReplicationInfo};
use crate::topology::{NodeId, Topology};

/// The recorded intent, as far as resolution needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub source: NodeId,
    pub target: NodeId,
    /// The source's history when the intent was recorded: replication id and offset (a lower
    /// bound of what it held when paused).
    pub required: History,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The target is the writer: record the new epoch, fence the source.
    Complete,
    /// The target holds the source's paused history: fence the source if it answers, promote
    /// the target, record the new epoch.
    Promote,
    /// Keep the old epoch: the source is (or becomes again) the writer; a target that was already
    /// promoted is demoted back under it.
    RollBack,
    /// Keep the old epoch and let failure detection decide on the next passes.
    Wait,
}

pub fn resolve(
    pending: &Pending,
    topology: &Topology,
    observations: &[NodeObservation],
) -> Resolution {
    let info = |n: NodeId| -> Option<&ReplicationInfo> { info_of(observations, n) };
    let source = info(pending.source);
    let target = info(pending.target);
    let source_master = source.is_some_and(|s| s.is_primary());
    let required = &pending.required;
    match target {
        Some(t) if t.is_primary() => {
            let source_went_on = source.is_some_and(|s| {
                s.is_primary()
                    && s.replication_id == required.replication_id
                    && s.offset > required.offset
            });
            // Only the pause's expiry can have let the source go on. The target took no client
            // write: the name leads to it only once the new epoch is committed, which settles the
            // intent. (Its offset moves anyway, with the replication pings to its own replicas.)
            if source_went_on {
                Resolution::RollBack
            } else {
                Resolution::Complete
            }
        }
        _ if source_master => Resolution::RollBack,
        // Promoted only over a source seen demoted under the target (the switchover did that
        // once the target had caught up): a silent one may still be a master whose pause runs
        // out, and one that follows another node may be back from its own config, so the
        // decision goes to failure detection and its checks instead.
        Some(t)
            if source.is_some_and(|s| follows(topology, s, pending.target))
                && t.shares_history(required)
                && t.offset >= required.offset =>
        {
            Resolution::Promote
        }
        _ => Resolution::Wait,
    }
}

fn follows(topology: &Topology, info: &ReplicationInfo, target: NodeId) -> bool {
    info.master()
        .and_then(|master| topology.node_by_any_address(master))
        == Some(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{down, lab, primary, replica_of};

    fn at(mut o: NodeObservation, offset: u64) -> NodeObservation {
        if let Ok(info) = &mut o.state {
            info.offset = offset;
        }
        o
    }

    #[test]
    fn table() {
        let pending = Pending {
            source: NodeId(0),
            target: NodeId(2),
            required: History {
                replication_id: "r".into(),
                offset: 100,
                parent: None,
            },
        };
        let promoted_target = |offset: u64| {
            let mut o = at(primary(2), offset);
            if let Ok(info) = &mut o.state {
                info.replication_id = "new".into();
                info.replication_id2 = "r".into();
            }
            o
        };
        let foreign = |o: NodeObservation| {
            let mut o = o;
            if let Ok(info) = &mut o.state {
                info.replication_id = "other".into();
            }
            o
        };
        // (situation, source, target, expected)
        let cases = [
            (
                "crash after promote, source demoted or gone",
                down(0),
                promoted_target(100),
                Resolution::Complete,
            ),
            (
                "crash after promote, source paused still",
                at(primary(0), 100),
                promoted_target(100),
                Resolution::Complete,
            ),
            (
                "crash after promote, restart after the pause expired: the source took writes",
                at(primary(0), 180),
                promoted_target(100),
                Resolution::RollBack,
            ),
            (
                "crash before promote, source serving",
                at(primary(0), 100),
                replica_of(2, 0, 100),
                Resolution::RollBack,
            ),
            (
                "crash after the source's demotion, before promote: target caught up",
                at(replica_of(0, 2, 100), 100),
                replica_of(2, 0, 100),
                Resolution::Promote,
            ),
            (
                "source back from its own config under another node, target caught up",
                at(replica_of(0, 1, 100), 100),
                replica_of(2, 0, 100),
                Resolution::Wait,
            ),
            (
                "crash before promote, source silent (maybe a master under a pause that runs out)",
                down(0),
                replica_of(2, 0, 100),
                Resolution::Wait,
            ),
            (
                "crash before promote, source gone, target behind",
                down(0),
                replica_of(2, 0, 99),
                Resolution::Wait,
            ),
            (
                "target restarted empty on another history",
                down(0),
                foreign(replica_of(2, 0, 500)),
                Resolution::Wait,
            ),
            (
                "target gone, source serving",
                at(primary(0), 100),
                down(2),
                Resolution::RollBack,
            ),
            ("both gone", down(0), down(2), Resolution::Wait),
        ];
        for (name, source, target, expected) in cases {
            assert_eq!(
                resolve(&pending, &lab(), &[source, target]),
                expected,
                "{name}"
            );
        }
    }
}
