//! The nemesis scenarios: each fault as data, and the catalog `valkey-dr chaos` runs.

use serde::{Deserialize, Serialize};

use super::PAUSE_EXPIRED;

/// How long a writer stall must last to be failed over with the default self-fence (its lag
/// limit, 2 s, + 2 s: [`valkey_dr_core::self_fence::WriteQuorum::certain_after`]).
const STALL_FAILED_OVER_MS: u64 = 4000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "fault")]
pub enum Fault {
    /// SIGKILL the writer; restart it empty after `restart_after_ms` (0: at once, as a
    /// supervisor with `Restart=always` does).
    KillWriter { restart_after_ms: u64 },
    /// SIGKILL the writer and restart it at once from a config file without `replicaof` (a common
    /// production default): it comes back as an empty master.
    WriterRestartedEmptyAsMaster,
    /// SIGKILL the writer, let the controller fail over, restart the old writer, then SIGKILL the
    /// *promoted* writer and restart it at once, empty.
    PromotedWriterRestartedAtOnce,
    /// Cut the writer's region off from the other region and the controller for `for_ms`.
    IsolateWriterRegion { for_ms: u64 },
    /// Cut only the controller (and the outside writer, which stands where it stands) from the
    /// writer's region for `for_ms`; the regions still reach each other.
    IsolateControllerFromWriterRegion { for_ms: u64 },
    /// A switchover whose controller aborts right after `step`; restarted after `restart_after_ms`.
    ControllerCrash { step: String, restart_after_ms: u64 },
    /// SIGSTOP the controller for `for_ms`.
    ControllerStall { for_ms: u64 },
    /// SIGSTOP the writer node for `for_ms` (a paused VM, a stalled process): silent, not dead —
    /// it resumes with its clients and its data, and must not find a second writer.
    WriterStall { for_ms: u64 },
    /// Restart the writer's in-region replica empty, then SIGKILL the writer.
    ReplicaRestartedThenWriterKilled,
    /// A switchover, then the controller restarted over a truncated or reverted `state.json`.
    StateDamaged { truncated: bool },
    /// `replica-serve-stale-data no` on every node, then SIGKILL the writer.
    StaleReadsRefusedThenWriterKilled,
    /// Highly available shape: a switchover whose leader stops right after `step` — aborts
    /// (`stall_ms` 0, restarted 500 ms later) or is SIGSTOPped for `stall_ms`.
    LeaderFails { step: String, stall_ms: u64 },
    /// Highly available shape: the leader's site (controller and etcd member) cut off for `for_ms`;
    /// with `leads_raft`, its etcd member is made raft leader first, so that the cut also costs
    /// an etcd election every other site sits through.
    IsolateLeaderSite { for_ms: u64, leads_raft: bool },
    /// Highly available shape: etcd's raft leader member SIGKILLed and restarted on its data
    /// `down_ms` later — a plain etcd leader election, which must cost the writer no more than a
    /// brief pause and move nothing.
    EtcdLeaderKilled { down_ms: u64 },
    /// Highly available shape: two of the three etcd members SIGSTOPped for `for_ms`.
    EtcdQuorumLost { for_ms: u64 },
    /// The writer's region isolated 8 s and healed; 6 s later the writer of the new epoch
    /// SIGKILLed and restarted empty from its own config file after `restart_after_ms` (as a
    /// master when `as_master`: its file without `replicaof`); 5 s later the writer of that moment
    /// SIGKILLed and restarted empty at once. The writes of the isolation phase are excused (an
    /// isolated writer acknowledges writes until it is fenced); no other may be lost.
    IsolateThenKillNewWriter {
        restart_after_ms: u64,
        as_master: bool,
    },
    /// Highly available shape: the controller of the writer's region SIGKILLed and, `gap_ms`
    /// later, the region cut off for `for_ms` (`cut_first`: the cut first, the controller killed
    /// `gap_ms` into it). Nothing may leave two masters that accept writes.
    /// `restart_inside`: the controller is restarted 0.5 s into the cut, without etcd access.
    RegionControllerDownAndCut {
        cut_first: bool,
        gap_ms: u64,
        for_ms: u64,
        #[serde(default)]
        restart_inside: bool,
    },
    /// SIGKILL the head of the other region (the writer's only replica outside its region) and
    /// restart it empty after `restart_after_ms`: what the writer's self-fence costs a healthy
    /// writer (no failover may happen; the writers' longest gap shows any refusal).
    RemoteHeadKilled { restart_after_ms: u64 },
    /// The writer's disk fails: its snapshot dies (`save` configured, the snapshot's process
    /// killed), so it answers every write with `-MISCONF` while it stays up and keeps its data.
    WriterDiskFails,
    /// Cut only the link between the regions for `for_ms` (every controller still reaches both):
    /// the writer is not the one cut off and must keep taking writes.
    RegionLinkCut { for_ms: u64 },
    /// Highly available shape: a switchover into the other region, and `gap_ms` after it returns
    /// that region (the new writer's) cut off for `for_ms`, before its controller may have read
    /// the new epoch.
    SwitchoverThenCut { gap_ms: u64, for_ms: u64 },
    /// Network namespaces only: every packet *from* the writer's region to every other place
    /// dropped for `for_ms`, while theirs still reach it (an asymmetric partition).
    WriterRegionUnheard { for_ms: u64 },
    /// Network namespaces only: the etcd peer traffic of the writer's site cut for `for_ms`;
    /// its controller still reaches the other members as a client, and the regions each other.
    WriterSiteEtcdPeersCut { for_ms: u64 },
    /// Network namespaces only: `percent` of the packets to and from the writer's region
    /// dropped at random for `for_ms`.
    WriterRegionLossy { percent: u8, for_ms: u64 },
    /// Only the path between the leader and the writer node fails (a route, a security group):
    /// the writer's region, its replicas and its clients still reach it.
    LeaderCutFromWriterNode { for_ms: u64 },
    /// Highly available shape: the witness site (its controller and etcd member) cut off for
    /// `for_ms` while its DNS server still answers resolvers; `kill_after_ms` into the cut the
    /// writer is SIGKILLed (restarted after the heal), so the name moves while that site cannot
    /// hear of it. Its server must stop answering the old writer, not lead there all cut long.
    WitnessCutWhileWriterKilled { for_ms: u64, kill_after_ms: u64 },
}

impl Fault {
    /// How many times the fault SIGKILLs the writer. Replication is asynchronous: a writer killed
    /// between acknowledging a write and sending it to its replicas takes that write with it. A
    /// client waits for each acknowledgement before its next write, so each kill can cost each
    /// client at most its last write; nothing a controller does can save it (only a planned
    /// switchover can, by pausing first).
    pub(super) fn writer_kills(&self) -> u64 {
        match self {
            Fault::KillWriter { .. }
            | Fault::WriterRestartedEmptyAsMaster
            | Fault::ReplicaRestartedThenWriterKilled
            | Fault::StaleReadsRefusedThenWriterKilled
            | Fault::WitnessCutWhileWriterKilled { .. } => 1,
            // A stall the controller fails over from ends like a kill for the write the node
            // acknowledged and had not yet sent to a replica when it froze: its demotion on
            // resume drops it. Silence is replaced once the self-fence holds (4 s).
            Fault::WriterStall { for_ms } if *for_ms >= STALL_FAILED_OVER_MS => 1,
            Fault::PromotedWriterRestartedAtOnce | Fault::IsolateThenKillNewWriter { .. } => 2,
            Fault::IsolateWriterRegion { .. }
            | Fault::IsolateControllerFromWriterRegion { .. }
            | Fault::LeaderFails { .. }
            | Fault::IsolateLeaderSite { .. }
            | Fault::EtcdQuorumLost { .. }
            | Fault::EtcdLeaderKilled { .. }
            | Fault::RegionControllerDownAndCut { .. }
            | Fault::SwitchoverThenCut { .. }
            | Fault::RemoteHeadKilled { .. }
            | Fault::RegionLinkCut { .. }
            | Fault::WriterDiskFails
            | Fault::ControllerCrash { .. }
            | Fault::ControllerStall { .. }
            | Fault::WriterStall { .. }
            | Fault::StateDamaged { .. }
            | Fault::WriterRegionUnheard { .. }
            | Fault::WriterSiteEtcdPeersCut { .. }
            | Fault::WriterRegionLossy { .. }
            | Fault::LeaderCutFromWriterNode { .. } => 0,
        }
    }

    /// True for the faults only packet filters can make (`chaos --netns`). A cut-off raft
    /// leader too (the witness's member often is one): the loopback lab's stand-in, a frozen
    /// member, makes etcd 3.4 revoke every lease when it resumes, which no partition does.
    pub fn needs_real_network(&self) -> bool {
        matches!(
            self,
            Fault::WriterRegionUnheard { .. }
                | Fault::WriterSiteEtcdPeersCut { .. }
                | Fault::WriterRegionLossy { .. }
                | Fault::LeaderCutFromWriterNode { .. }
                | Fault::WitnessCutWhileWriterKilled { .. }
                | Fault::IsolateLeaderSite {
                    leads_raft: true,
                    ..
                }
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    pub fault: Fault,
    /// How long the writers run.
    pub duration_ms: u64,
    /// The most failovers the scenario allows (a stall must cause none).
    pub max_failovers: Option<u64>,
    /// Run on the highly available shape (three etcd members, a controller per site).
    #[serde(default)]
    pub ha: bool,
}

pub fn scenarios() -> Vec<Scenario> {
    let s = |name: &str, fault: Fault, seconds: u64| Scenario {
        name: name.to_string(),
        fault,
        duration_ms: seconds * 1000,
        max_failovers: None,
        ha: false,
    };
    let ha = |scenario: Scenario| Scenario {
        name: format!("HA: {}", scenario.name),
        ha: true,
        ..scenario
    };
    let mut all = vec![
        s(
            "writer killed, restarted empty after 6 s",
            Fault::KillWriter {
                restart_after_ms: 6000,
            },
            12,
        ),
        s(
            "writer killed, restarted empty at once",
            Fault::KillWriter {
                restart_after_ms: 0,
            },
            10,
        ),
        s(
            "writer killed, restarted empty at once as a master",
            Fault::WriterRestartedEmptyAsMaster,
            10,
        ),
        s(
            "promoted writer killed, restarted empty at once",
            Fault::PromotedWriterRestartedAtOnce,
            20,
        ),
        s(
            "writer region isolated 8 s",
            Fault::IsolateWriterRegion { for_ms: 8000 },
            14,
        ),
        Scenario {
            // Nothing is wrong with the writer: only the controller's view is cut.
            max_failovers: Some(0),
            ..s(
                "controller cut off from the writer region 8 s",
                Fault::IsolateControllerFromWriterRegion { for_ms: 8000 },
                14,
            )
        },
        Scenario {
            max_failovers: Some(0),
            ..s(
                "controller stalled 3 s (SIGSTOP)",
                Fault::ControllerStall { for_ms: 3000 },
                9,
            )
        },
        Scenario {
            // Silent is not dead: it is replaced only once its self-fence holds (4 s).
            max_failovers: Some(0),
            ..s(
                "the writer node stalled 3 s (SIGSTOP: a paused VM)",
                Fault::WriterStall { for_ms: 3000 },
                9,
            )
        },
        Scenario {
            max_failovers: Some(1),
            ..s(
                "the writer node stalled 6 s (SIGSTOP: a paused VM)",
                Fault::WriterStall { for_ms: 6000 },
                12,
            )
        },
        s(
            "replica restarted empty, then writer killed",
            Fault::ReplicaRestartedThenWriterKilled,
            12,
        ),
        s(
            "state.json truncated before a restart",
            Fault::StateDamaged { truncated: true },
            10,
        ),
        s(
            "state.json reverted before a restart",
            Fault::StateDamaged { truncated: false },
            10,
        ),
        s(
            "replica-serve-stale-data no, writer killed",
            Fault::StaleReadsRefusedThenWriterKilled,
            10,
        ),
    ];
    all.extend([
        ha(s(
            "writer region isolated 8 s",
            Fault::IsolateWriterRegion { for_ms: 8000 },
            14,
        )),
        ha(Scenario {
            max_failovers: Some(0),
            ..s(
                "leader cut off from the writer region 8 s",
                Fault::IsolateControllerFromWriterRegion { for_ms: 8000 },
                14,
            )
        }),
        ha(Scenario {
            max_failovers: Some(0),
            ..s(
                "leader site isolated 8 s",
                Fault::IsolateLeaderSite {
                    for_ms: 8000,
                    leads_raft: false,
                },
                14,
            )
        }),
        ha(Scenario {
            max_failovers: Some(0),
            ..s(
                "leader site isolated 8 s, its etcd member the raft leader",
                Fault::IsolateLeaderSite {
                    for_ms: 8000,
                    leads_raft: true,
                },
                14,
            )
        }),
        ha(Scenario {
            max_failovers: Some(0),
            ..s(
                "the writer node stalled 3 s (SIGSTOP: a paused VM)",
                Fault::WriterStall { for_ms: 3000 },
                9,
            )
        }),
        ha(s(
            "witness site cut off 10 s, the writer SIGKILLed 1 s in",
            Fault::WitnessCutWhileWriterKilled {
                for_ms: 10_000,
                kill_after_ms: 1000,
            },
            16,
        )),
        ha(Scenario {
            max_failovers: Some(0),
            ..s(
                "etcd quorum lost 6 s",
                Fault::EtcdQuorumLost { for_ms: 6000 },
                12,
            )
        }),
    ]);
    // A new writer killed after a region failover and brought back empty by its supervisor, in
    // both shapes: the history must survive on the nodes that hold it.
    for (restart_after_ms, as_master) in [(6000, false), (1000, false), (3000, false), (1000, true)]
    {
        let name = format!(
            "region isolated and healed, then the new writer SIGKILLed, back empty{} after {} s",
            if as_master { " as a master" } else { "" },
            restart_after_ms / 1000
        );
        let fault = Fault::IsolateThenKillNewWriter {
            restart_after_ms,
            as_master,
        };
        let seconds = 32 + restart_after_ms / 1000;
        all.push(s(&name, fault.clone(), seconds));
        all.push(ha(s(&name, fault, seconds)));
    }
    // A region whose controller is down (or goes down) is still fenced before the writer moves.
    for (name, cut_first, restart_inside) in [
        (
            "writer region's controller killed, region cut 2 s later",
            false,
            false,
        ),
        (
            "writer region cut, its controller killed 0.5 s later",
            true,
            false,
        ),
        (
            "writer region's controller killed, region cut, controller restarted inside the cut",
            false,
            true,
        ),
    ] {
        all.push(ha(s(
            name,
            Fault::RegionControllerDownAndCut {
                cut_first,
                gap_ms: if cut_first { 500 } else { 2000 },
                // The writer moves once its self-fence surely holds (4 s of silence) and the
                // dead controller's presence has lapsed: about 6 s into the cut, later on a
                // loaded machine (seen: no failover within an 8 s cut, beside other tests).
                for_ms: 12_000,
                restart_inside,
            },
            20,
        )));
    }
    let at_most = |max: u64, scenario: Scenario| Scenario {
        max_failovers: Some(max),
        ..scenario
    };
    let shaped = |ha_shape: bool, scenario: Scenario| {
        if ha_shape { ha(scenario) } else { scenario }
    };
    // The self-fence's cost: the writer's only replica outside its region goes away for 8 s.
    for shape in [false, true] {
        all.push(shaped(
            shape,
            at_most(
                0,
                s(
                    "the writer's replica outside its region killed, back empty after 8 s",
                    Fault::RemoteHeadKilled {
                        restart_after_ms: 8000,
                    },
                    14,
                ),
            ),
        ));
        all.push(shaped(
            shape,
            at_most(
                0,
                s(
                    "the link between the regions cut 8 s (both regions alive)",
                    Fault::RegionLinkCut { for_ms: 8000 },
                    14,
                ),
            ),
        ));
    }
    all.push(at_most(
        0,
        ha(s(
            "etcd's leader killed, back after 5 s (an etcd election)",
            Fault::EtcdLeaderKilled { down_ms: 5000 },
            12,
        )),
    ));
    // A writer that refuses every write for its own disk is switched away from, once.
    for shape in [false, true] {
        all.push(shaped(
            shape,
            at_most(
                1,
                s(
                    "the writer's disk fails (MISCONF on every write)",
                    Fault::WriterDiskFails,
                    12,
                ),
            ),
        ));
    }
    all.push(ha(s(
        "switchover, the new writer's region cut 0.5 s later",
        Fault::SwitchoverThenCut {
            gap_ms: 500,
            for_ms: 8000,
        },
        16,
    )));
    // What only real packet filters can do (`chaos --netns`).
    for shape in [false, true] {
        all.push(shaped(
            shape,
            at_most(
                1,
                s(
                    "the writer region unheard 8 s (its packets dropped, the others' reach it)",
                    Fault::WriterRegionUnheard { for_ms: 8000 },
                    14,
                ),
            ),
        ));
    }
    all.push(ha(at_most(
        0,
        s(
            "the writer site's etcd peer traffic cut 8 s",
            Fault::WriterSiteEtcdPeersCut { for_ms: 8000 },
            14,
        ),
    )));
    all.push(ha(at_most(
        1,
        s(
            "20% of the writer region's packets lost for 8 s",
            Fault::WriterRegionLossy {
                percent: 20,
                for_ms: 8000,
            },
            14,
        ),
    )));
    // Review N4 (a): a one-sided view must not move the writer inside its region while its
    // replicas still hear it (the veto of a writer seen alive).
    all.push(ha(at_most(
        0,
        s(
            "leader cut off from the writer node alone 8 s (its region still reaches it)",
            Fault::LeaderCutFromWriterNode { for_ms: 8000 },
            14,
        ),
    )));
    for step in ["intent", "fence", "promote", "switch_dns"] {
        all.push(ha(s(
            &format!("leader killed after {step}"),
            Fault::LeaderFails {
                step: step.to_string(),
                stall_ms: 0,
            },
            12,
        )));
        all.push(ha(s(
            &format!("leader stalled 5 s after {step}"),
            Fault::LeaderFails {
                step: step.to_string(),
                stall_ms: 5000,
            },
            14,
        )));
    }
    for step in [
        "intent",
        "fence",
        "demoted",
        "promoted",
        "promote",
        "switch_dns",
        "release",
    ] {
        for (when, delay) in [("within", 500), ("after", PAUSE_EXPIRED.as_millis() as u64)] {
            all.push(s(
                &format!("controller crash after {step}, restart {when} the pause"),
                Fault::ControllerCrash {
                    step: step.to_string(),
                    restart_after_ms: delay,
                },
                if delay > 1000 { 13 } else { 8 },
            ));
        }
    }
    all
}
