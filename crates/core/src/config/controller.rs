//! The controller's timing and failover rules.

use super::*;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// Time between two reconcile passes when nothing wakes the controller earlier.
    #[serde(default = "default_reconcile_interval_ms")]
    pub reconcile_interval_ms: u64,
    /// Limit for opening a connection to a node.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Limit for one command's reply from a node.
    #[serde(default = "default_command_timeout_ms")]
    pub command_timeout_ms: u64,
    /// How long a planned switchover waits for the target to catch up before it aborts.
    #[serde(default = "default_catchup_timeout_ms")]
    pub catchup_timeout_ms: u64,
    /// A node counts as down only after failing every probe for this long (short blips are ignored).
    #[serde(default = "default_down_after_ms")]
    pub down_after_ms: u64,
    /// Probe interval while some node is failing (faster than the reconcile interval).
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
    /// Promote a replica of the writer's region when the writer node is down (like Multi-AZ).
    #[serde(default = "default_true")]
    pub in_region_failover: bool,
    /// When the writer's whole region is down: `manual` reports and waits for
    /// `valkey-dr failover <region> --force`; `auto` promotes the best node of another region.
    #[serde(default)]
    pub cross_region_failover: FailoverPolicy,
    /// After an automatic failover, further automatic failovers wait for `valkey-dr ack` or this long.
    #[serde(default = "default_failover_block_ms")]
    pub failover_block_ms: u64,
    /// The writer's self-fence (`min-replicas-to-write`, [`crate::self_fence`]): a writer that has
    /// heard from no replica outside its region for this many seconds refuses writes, and only
    /// then may another region take over from it automatically. 0 turns it off, and with it
    /// automatic failover away from a writer that cannot be reached.
    #[serde(default = "default_writer_quorum_max_lag_s")]
    pub writer_quorum_max_lag_s: u32,
    /// A writer with no replica that holds its writes (none synced and connected: all down, or
    /// every one mid full resync right after a promotion) refuses writes (`-NOREPLICAS`) until
    /// one has synced, instead of acknowledging writes that die with it. Off: it keeps taking
    /// writes alone (more available; a second failure in that window loses them). Needs the
    /// self-fence on (`writer_quorum_max_lag_s` > 0).
    #[serde(default = "default_true")]
    pub writes_need_a_replica: bool,
    /// An unplanned failover that would give up more than this many bytes of the writer's
    /// replication stream (its last seen offset minus the best candidate's) waits for an operator
    /// (`valkey-dr failover <region> --force`) instead of happening automatically.
    #[serde(default = "default_max_data_at_risk_bytes")]
    pub max_data_at_risk_bytes: u64,
    /// `events.jsonl` is rotated to `events.jsonl.1` (one generation kept) when it reaches this size.
    #[serde(default = "default_events_max_bytes")]
    pub events_max_bytes: u64,
}

fn default_events_max_bytes() -> u64 {
    64 * 1024 * 1024
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverPolicy {
    #[default]
    Manual,
    Auto,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            reconcile_interval_ms: default_reconcile_interval_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            command_timeout_ms: default_command_timeout_ms(),
            catchup_timeout_ms: default_catchup_timeout_ms(),
            down_after_ms: default_down_after_ms(),
            probe_interval_ms: default_probe_interval_ms(),
            in_region_failover: true,
            cross_region_failover: FailoverPolicy::Manual,
            failover_block_ms: default_failover_block_ms(),
            writer_quorum_max_lag_s: default_writer_quorum_max_lag_s(),
            writes_need_a_replica: true,
            max_data_at_risk_bytes: default_max_data_at_risk_bytes(),
            events_max_bytes: default_events_max_bytes(),
        }
    }
}
