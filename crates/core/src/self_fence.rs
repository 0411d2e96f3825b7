//! The writer's self-fence: Valkey's own `min-replicas-to-write`, set so that a writer cut off from
//! every replica outside its region refuses writes (`-NOREPLICAS`) within `max_lag_s` + about 2 s,
//! whatever happens to the controllers. It is the fence that does not need a live controller in
//! the writer's region: a region cut off while its controller is down, or goes down, still stops
//! taking writes before another region is promoted.
//!
//! The writer must count `in_region + 1` good replicas, where `in_region` is how many of its direct
//! replicas in its own region are healthy now: losing every replica outside the region leaves it
//! short by one. With no healthy direct replica outside its region, the quorum is off (the writer
//! keeps taking writes) and the fence is *disarmed*: an unreachable writer is then never known
//! fenced, and no automatic failover moves the name to another region.
//!
//! | writer's healthy direct replicas          | quorum            | fence    |
//! |-------------------------------------------|-------------------|----------|
//! | in its region: 1, outside: 1              | 2 replicas        | armed    |
//! | in its region: 0, outside: 1              | 1 replica         | armed    |
//! | in its region: 2, outside: 2              | 3 replicas        | armed    |
//! | in its region: 1, outside: 0              | off               | disarmed |
//! | outside, but mid full resync or link down | off               | disarmed |
//! | outside, link up but silent for 2 s       | off               | disarmed (a cut link, before `repl-timeout`) |
//! | none synced, none about to resume partially (all down, or all needing a full resync after a promotion) | 1 replica (`writes_need_a_replica`; off without it) | armed: writes refused until one syncs |
//! | quorum disabled in the config (lag 0)     | off               | disarmed |
//!
//! Cost to a healthy region: no added latency (Valkey checks a counter it keeps anyway). A replica
//! outside the region that stops acknowledging makes the writer refuse writes from `max_lag_s`
//! after its last acknowledgement until the controller's next pass lowers the quorum, which it
//! usually does first: a pass sees the replica go before its lag reaches the limit.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::observation::{NodeObservation, Role};
use crate::topology::{NodeId, Topology};

/// `min-replicas-to-write` and `min-replicas-max-lag` for one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteQuorum {
    pub replicas: u32,
    pub max_lag_s: u32,
}

impl WriteQuorum {
    /// No quorum: the node takes writes whatever its replicas do (Valkey's default). Every node
    /// that is not the writer has it, so that a promotion is never held up by an old setting.
    pub const OFF: WriteQuorum = WriteQuorum {
        replicas: 0,
        max_lag_s: 10,
    };

    /// What a node's config file keeps (the controller writes it with every role it persists, and
    /// the lab's files start with it): a node that restarts empty *as a master* acknowledges
    /// nothing until a replica has synced from it, which takes Valkey's diskless delay (5 s),
    /// while the controller replaces it in about a pass. The running writer gets its real quorum
    /// from the controller; a node is promoted with [`WriteQuorum::OFF`].
    pub const AT_REST: WriteQuorum = WriteQuorum {
        replicas: 1,
        max_lag_s: 10,
    };

    /// True when losing every replica outside the writer's region makes it refuse writes.
    pub fn armed(&self) -> bool {
        self.replicas > 0
    }

    /// How long after the writer's last contact with the outside its refusal is certain: the lag
    /// limit, one more second for Valkey's whole-second clock and one for the once-a-second
    /// refresh of its count of good replicas.
    pub fn certain_after(&self) -> Duration {
        Duration::from_secs(u64::from(self.max_lag_s) + 2)
    }
}

/// A replica outside the writer's region counts toward its fence while it heard from the writer
/// this recently (`master_last_io_seconds_ago`).
pub const HEARD_WITHIN_S: u64 = 1;

/// The quorum the writer should have now, from one round of observations. `max_lag_s` 0 disables
/// the self-fence. `need_a_replica`: with no synced replica at all, one is required (the writer
/// refuses writes until one has synced; none of them would survive its loss).
pub fn desired(
    topology: &Topology,
    observations: &[NodeObservation],
    writer: NodeId,
    max_lag_s: u32,
    need_a_replica: bool,
) -> WriteQuorum {
    if max_lag_s == 0 {
        return WriteQuorum::OFF;
    }
    let writer_region = topology.node(writer).region;
    let (mut inside, mut outside) = (0u32, 0u32);
    for o in observations {
        let Some(info) = o.info() else { continue };
        let Role::Replica {
            master,
            link_up: true,
            sync_in_progress: false,
        } = &info.role
        else {
            continue;
        };
        if topology.node_by_any_address(master) != Some(writer) {
            continue;
        }
        if topology.node(o.node).region == writer_region {
            inside += 1;
        } else if info.master_last_io_s.is_some_and(|s| s <= HEARD_WITHIN_S) {
            // Outside the region, a replica counts only while it still hears from the writer:
            // the quorum is lowered before the writer's own count of it drops (its lag limit),
            // so a cut of the region link alone never stops writes for long. This needs
            // `repl-ping-replica-period` ≤ 1 s; with Valkey's default (10 s) an idle writer's
            // fence stays disarmed (no automatic failover away from it when it is unreachable).
            outside += 1;
        }
    }
    if inside == 0 && outside == 0 && need_a_replica && !resync_soon(topology, observations, writer)
    {
        return WriteQuorum {
            replicas: 1,
            max_lag_s,
        };
    }
    if outside == 0 {
        return WriteQuorum::OFF;
    }
    WriteQuorum {
        replicas: inside + 1,
        max_lag_s,
    }
}

/// True when some direct replica of `writer`, link down for now, is on its history (or on the one
/// it was promoted from, no further than the promotion): it resumes with a partial resync, as
/// every replica does right after a switchover. One that needs a full resync (empty, or on
/// another history) does not count: Valkey waits `repl-diskless-sync-delay` before sending it
/// anything, and the writer would take writes alone meanwhile.
fn resync_soon(topology: &Topology, observations: &[NodeObservation], writer: NodeId) -> bool {
    let Some(history) = observations
        .iter()
        .find(|o| o.node == writer)
        .and_then(|o| o.info())
        .map(|i| i.history())
    else {
        return false;
    };
    observations.iter().any(|o| {
        o.info().is_some_and(|info| {
            matches!(&info.role, Role::Replica { master, sync_in_progress: false, .. }
                if topology.node_by_any_address(master) == Some(writer))
                && info.shares_history(&history)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::ReplicationInfo;
    use crate::testing::{down, lab, primary, replica_of};

    fn with(mut o: NodeObservation, f: impl FnOnce(&mut ReplicationInfo)) -> NodeObservation {
        if let Ok(info) = &mut o.state {
            f(info);
        }
        o
    }

    #[test]
    fn table() {
        // The lab: node 0 writes in region 0 with replica 1; node 2 heads region 1, node 3 chains
        // under node 2.
        let writer = NodeId(0);
        let armed = |replicas| WriteQuorum {
            replicas,
            max_lag_s: 2,
        };
        let syncing = |o| {
            with(o, |i| {
                if let Role::Replica {
                    sync_in_progress, ..
                } = &mut i.role
                {
                    *sync_in_progress = true;
                }
            })
        };
        let silent = |o| with(o, |i| i.master_last_io_s = Some(2));
        let link_down = |o| {
            with(o, |i| {
                if let Role::Replica { link_up, .. } = &mut i.role {
                    *link_up = false;
                }
            })
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<NodeObservation>, u32, WriteQuorum)> = vec![
            ("healthy: the in-region replica and the remote head",
             vec![primary(0), replica_of(1, 0, 9), replica_of(2, 0, 9), replica_of(3, 2, 9)], 2, armed(2)),
            ("the in-region replica down: the remote head alone",
             vec![primary(0), down(1), replica_of(2, 0, 9), replica_of(3, 2, 9)], 2, armed(1)),
            ("the remote head down: disarmed, writes go on",
             vec![primary(0), replica_of(1, 0, 9), down(2), replica_of(3, 2, 9)], 2, WriteQuorum::OFF),
            ("the remote head mid full resync: disarmed",
             vec![primary(0), replica_of(1, 0, 9), syncing(replica_of(2, 0, 9)), replica_of(3, 2, 9)], 2, WriteQuorum::OFF),
            ("the remote head's link down: disarmed",
             vec![primary(0), replica_of(1, 0, 9), link_down(replica_of(2, 0, 9)), replica_of(3, 2, 9)], 2, WriteQuorum::OFF),
            ("the remote head's link up but silent for 2 s (cut, not yet timed out): disarmed before the writer's own limit",
             vec![primary(0), replica_of(1, 0, 9), silent(replica_of(2, 0, 9)), replica_of(3, 2, 9)], 2, WriteQuorum::OFF),
            ("a silent replica inside the region still counts (the quorum may only be too high there)",
             vec![primary(0), silent(replica_of(1, 0, 9)), replica_of(2, 0, 9), replica_of(3, 2, 9)], 2, armed(2)),
            ("a chained replica is not the writer's: it does not count",
             vec![primary(0), replica_of(1, 0, 9), down(2), replica_of(3, 1, 9)], 2, WriteQuorum::OFF),
            ("disabled in the config",
             vec![primary(0), replica_of(1, 0, 9), replica_of(2, 0, 9), replica_of(3, 2, 9)], 0, WriteQuorum::OFF),
        ];
        for (case, observations, lag, expected) in cases {
            assert_eq!(
                desired(&lab(), &observations, writer, lag, true),
                expected,
                "{case}"
            );
        }
        // No replica holds the writer's writes: with `writes_need_a_replica` it waits for one
        // (a promoted writer whose replicas all need a full resync; every replica down), without
        // it, it writes alone.
        #[rustfmt::skip]
        let alone: Vec<(&str, Vec<NodeObservation>)> = vec![
            ("every replica mid full resync after a promotion",
             vec![primary(0), syncing(replica_of(1, 0, 0)), syncing(replica_of(2, 0, 0)), replica_of(3, 2, 0)]),
            ("every replica down",
             vec![primary(0), down(1), down(2), down(3)]),
        ];
        for (case, observations) in alone {
            assert_eq!(
                desired(&lab(), &observations, writer, 2, true),
                armed(1),
                "{case}"
            );
            assert_eq!(
                desired(&lab(), &observations, writer, 2, false),
                WriteQuorum::OFF,
                "{case}"
            );
            assert_eq!(
                desired(&lab(), &observations, writer, 0, true),
                WriteQuorum::OFF,
                "{case}: lag 0"
            );
        }
    }

    #[test]
    fn refusal_is_certain_two_seconds_after_the_lag_limit() {
        let quorum = WriteQuorum {
            replicas: 2,
            max_lag_s: 2,
        };
        assert_eq!(quorum.certain_after(), Duration::from_secs(4));
        assert!(quorum.armed());
        assert!(!WriteQuorum::OFF.armed());
    }
}
