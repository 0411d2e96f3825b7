//! The scenarios: what each does to the cluster once its writers run.

/// What a scenario does to the cluster once its writers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterFault {
    /// An all-shard switchover to us-east-2 through the controller.
    Switchover,
    /// The controller aborts after this step of a switchover (`crash-after:<step>`); a new one
    /// settles the move, and the switchover asked again completes it.
    ControllerCrash(&'static str),
    /// The controller's move stands still 3 s after this step (`stall-after:<step>:3000`), then
    /// goes on: within the write pause, or not at all.
    ControllerStall(&'static str),
    /// The whole controller process stopped (SIGSTOP, its DNS server too) for 3 s after this
    /// step of a switchover (`stop-after:<step>`), then resumed (SIGCONT).
    ControllerStopped(&'static str),
    /// A replica of shard 0 in us-east-1 SIGKILLed and started again at once with no data: it
    /// rejoins from its `nodes.conf` and syncs again.
    ReplicaRestartedEmpty,
    /// Shard 0's primary SIGKILLed, replaced within us-east-1 by the cluster, then started again
    /// with no data: it rejoins as a replica (restarted *before* it is replaced it would empty
    /// its shard — Valkey's own hazard, see the runbook; [`ClusterFault::PrimaryRestartedThroughGuard`]
    /// is the guarded restart).
    PrimaryBackEmptyAfterReplaced,
    /// Shard 0's primary SIGKILLed and restarted at once, empty, through `cluster start-guard` (as
    /// a supervisor's `ExecStartPre=` runs it): the guard holds the start until the cluster has
    /// replaced it, and it rejoins as a replica; without the guard its shard would be wiped.
    PrimaryRestartedThroughGuard,
    /// Shard 0's primary SIGKILLed: the cluster replaces it within us-east-1, the name follows.
    PrimaryKilled,
    /// Every us-east-1 node SIGKILLed: the controller fails the region over by itself.
    RegionKilled,
    /// Every us-east-1 node SIGKILLed, and the controller dies after this step of the automatic
    /// failover it starts (`crash-after:<step>`); a new one carries the recorded move on.
    RegionKilledControllerCrash(&'static str),
    /// Every us-east-1 node stopped (SIGSTOP) for 8 s, then resumed: failed over meanwhile, its
    /// old primaries must not take a write when they come back.
    RegionStalled,
    /// A partition made of these cuts ([`crate::cut::Cut`] entries) held 12 s, then healed, on
    /// places in network namespaces of their own: us-east-1's nodes and its applications,
    /// us-east-2's, and the controller's place. `moves`: the writer region is failed over (its
    /// primaries fence themselves first: its own applications' writes between the cut and the
    /// fence are lost, the report shows how many and how long); else nothing may move. The other
    /// region's applications lose no write either way. `chaos --cluster --netns` only.
    Partitioned {
        cuts: &'static [&'static str],
        moves: bool,
        /// In the highly available shape: each site's controller and etcd member stand in its
        /// site's place (the witness's: the controller's place), the witness leading.
        ha: bool,
    },
    /// The highly available shape (a controller per site on etcd, the witness leading): the
    /// leader aborts after this step of a switchover; another site takes the leader key and
    /// settles the move, and the switchover asked again at us-east-2 completes it.
    LeaderCrash(&'static str),
    /// The highly available shape: the leader's whole process stopped (SIGSTOP) once a
    /// switchover's targets caught up, until another site leads, then resumed: it must take no
    /// shard over; the switchover asked again at us-east-2 completes it.
    LeaderStoppedPastLease,
    /// The highly available shape: every us-east-1 node and us-east-1's controller SIGKILLed:
    /// the leader, at another site, fails the region over.
    RegionKilledWithItsSite,
}

impl ClusterFault {
    /// Cuts that only packet filters in network namespaces can make (`chaos --cluster --netns`).
    pub fn needs_namespaces(self) -> bool {
        matches!(self, ClusterFault::Partitioned { .. })
    }

    /// Run by a controller per site on etcd rather than one.
    pub(super) fn highly_available(self) -> bool {
        matches!(
            self,
            ClusterFault::LeaderCrash(_)
                | ClusterFault::LeaderStoppedPastLease
                | ClusterFault::RegionKilledWithItsSite
                | ClusterFault::Partitioned { ha: true, .. }
        )
    }
}

pub struct ClusterScenario {
    pub name: String,
    pub fault: ClusterFault,
}

pub fn scenarios() -> Vec<ClusterScenario> {
    let mut all = Vec::new();
    let mut add = |name: String, fault| all.push(ClusterScenario { name, fault });
    add("cluster: switchover".into(), ClusterFault::Switchover);
    for step in ["paused", "caught-up", "handed-over-1", "handed-over-2"] {
        add(
            format!("cluster: controller crash after {step}"),
            ClusterFault::ControllerCrash(step),
        );
    }
    for step in ["paused", "handed-over-1"] {
        add(
            format!("cluster: controller stalled 3 s after {step}"),
            ClusterFault::ControllerStall(step),
        );
    }
    add(
        "cluster: controller process stopped 3 s (SIGSTOP) after handed-over-1".into(),
        ClusterFault::ControllerStopped("handed-over-1"),
    );
    add(
        "cluster: a replica restarted empty at once".into(),
        ClusterFault::ReplicaRestartedEmpty,
    );
    add(
        "cluster: a primary SIGKILLed, back empty once replaced".into(),
        ClusterFault::PrimaryBackEmptyAfterReplaced,
    );
    add(
        "cluster: a primary SIGKILLed, restarted at once through the start guard".into(),
        ClusterFault::PrimaryRestartedThroughGuard,
    );
    add(
        "cluster: a primary SIGKILLed".into(),
        ClusterFault::PrimaryKilled,
    );
    add(
        "cluster: writer region SIGKILLed".into(),
        ClusterFault::RegionKilled,
    );
    for step in ["paused", "handed-over-1"] {
        add(
            format!(
                "cluster: writer region SIGKILLed, the controller crashing after {step} of its failover"
            ),
            ClusterFault::RegionKilledControllerCrash(step),
        );
    }
    add(
        "cluster: writer region stalled 8 s".into(),
        ClusterFault::RegionStalled,
    );
    for (name, cuts, moves) in [
        ("writer region isolated", &["us-east-1"][..], true),
        (
            "writer region heard by nobody (one way)",
            &["oneway:us-east-1:us-east-2", "oneway:us-east-1:controller"][..],
            true,
        ),
        (
            "controller cut off from the writer region",
            &["us-east-1-to:controller"][..],
            false,
        ),
    ] {
        add(
            format!("cluster: {name} 12 s (packets dropped), then healed"),
            ClusterFault::Partitioned {
                cuts,
                moves,
                ha: false,
            },
        );
    }
    add(
        "cluster: HA, writer region isolated with its site 12 s (packets dropped), then healed"
            .into(),
        ClusterFault::Partitioned {
            cuts: &["us-east-1"],
            moves: true,
            ha: true,
        },
    );
    for step in ["paused", "caught-up", "handed-over-1", "handed-over-2"] {
        add(
            format!("cluster: HA, leader crash after {step}"),
            ClusterFault::LeaderCrash(step),
        );
    }
    add(
        "cluster: HA, leader stopped (SIGSTOP) past its lease after caught-up".into(),
        ClusterFault::LeaderStoppedPastLease,
    );
    add(
        "cluster: HA, writer region SIGKILLed with its site's controller".into(),
        ClusterFault::RegionKilledWithItsSite,
    );
    all
}
