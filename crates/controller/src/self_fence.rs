//! Keeps the writer's self-fence ([`valkey_dr_core::self_fence`]) in step with its replicas, and
//! answers whether a writer that cannot be reached is known fenced.

use std::time::Instant;

use serde_json::json;
use valkey_dr_core::observation::info_of;
use valkey_dr_core::self_fence::{self, WriteQuorum};
use valkey_dr_core::{NodeId, NodeObservation};

use crate::Controller;
use crate::pass::Carried;

/// The write quorum this controller set on a writer, and whether it was armed when the writer
/// was last seen serving.
#[derive(Debug, Clone)]
pub(crate) struct AppliedQuorum {
    writer: NodeId,
    /// The writer's replication id when set: a restart loses the setting and takes a new id.
    replication_id: String,
    quorum: WriteQuorum,
    /// The quorum was in force (set without error) at the last pass that saw the writer.
    in_force: bool,
}

/// How long a higher quorum must be wanted before it is set: longer than a replica's interval
/// between acknowledgements (1 s).
const RAISE_AFTER: std::time::Duration = std::time::Duration::from_millis(1500);

impl Controller {
    /// Sets the writer's write quorum when what its replicas allow has changed (or the writer
    /// restarted). Lowering is what keeps writes going when a replica outside the region goes;
    /// the fence is counted as armed only once Valkey confirmed the setting.
    pub(crate) async fn keep_write_quorum(
        &self,
        carried: &mut Carried,
        observations: &[NodeObservation],
        writer: NodeId,
    ) {
        let Some(info) = info_of(observations, writer) else {
            return;
        };
        let desired_with = |need_a_replica| {
            self_fence::desired(
                &self.topology,
                observations,
                writer,
                self.config.controller.writer_quorum_max_lag_s,
                need_a_replica,
            )
        };
        let desired = desired_with(self.config.controller.writes_need_a_replica);
        // Held only because no replica holds the writer's writes: no replica can be counted too
        // early, and every write taken meanwhile would die with the writer.
        let held_alone = desired.armed() && !desired_with(false).armed();
        // Not armed until confirmed: a verdict between here and the reply must not rely on it.
        let previous = {
            let unchanged = carried.write_quorum.as_ref().is_some_and(|a| {
                a.writer == writer
                    && a.replication_id == info.replication_id
                    && a.quorum == desired
                    && a.in_force
            });
            if unchanged {
                carried.raise_seen = None;
                return;
            }
            // A raise waits until it was wanted for a while: a replica that has just finished a
            // full sync reports its link up before the writer has its first acknowledgement, and a
            // quorum counting it at once makes the writer refuse writes for that moment.
            let applied = carried
                .write_quorum
                .as_ref()
                .filter(|a| a.writer == writer && a.replication_id == info.replication_id)
                .map_or(0, |a| a.quorum.replicas);
            if desired.replicas > applied && !held_alone {
                let since = match carried.raise_seen {
                    Some((wanted, since)) if wanted == desired => since,
                    _ => {
                        carried.raise_seen = Some((desired, Instant::now()));
                        return;
                    }
                };
                if since.elapsed() < RAISE_AFTER {
                    return;
                }
            }
            carried.raise_seen = None;
            carried.write_quorum.take()
        };
        // The durable record is what a verdict trusts, here or at the next leader: a quorum that
        // is lowered is recorded first, one that is raised only once Valkey took it.
        let recorded = self.state.get().and_then(|s| s.writer_quorum);
        if !desired.armed()
            && recorded.is_some_and(|q| q.armed())
            && self
                .record_write_quorum(writer, Some(desired))
                .await
                .is_err()
        {
            return;
        }
        let endpoint = &self.topology.node(writer).control_endpoint;
        let result = self.engine.set_write_quorum(endpoint, desired).await;
        if result.is_ok() && recorded != Some(desired) {
            let _ = self.record_write_quorum(writer, Some(desired)).await;
        }
        // Reported on a change, or once when a node keeps refusing the setting.
        let reported = previous.is_some_and(|p| {
            p.writer == writer && p.quorum == desired && p.in_force == result.is_ok()
        });
        if !reported {
            self.events.emit(
                crate::events::EventKind::WriteQuorumSet,
                json!({
                    "node": self.topology.node_name(writer),
                    "replicas": desired.replicas,
                    "max_lag_s": desired.max_lag_s,
                    "armed": desired.armed(),
                    "error": result.as_ref().err().map(|e| e.to_string()),
                }),
            );
        }
        carried.write_quorum = Some(AppliedQuorum {
            writer,
            replication_id: info.replication_id.clone(),
            quorum: desired,
            in_force: result.is_ok(),
        });
    }

    /// The self-fence as last set, for `status`.
    pub(crate) fn self_fence_status(
        &self,
        applied: &AppliedQuorum,
    ) -> crate::status::SelfFenceStatus {
        crate::status::SelfFenceStatus {
            writer: self.topology.node_name(applied.writer),
            replicas: applied.quorum.replicas,
            max_lag_s: applied.quorum.max_lag_s,
            armed: applied.in_force && applied.quorum.armed(),
        }
    }

    /// Records the quorum in force on `writer` in the state, if `writer` is still the epoch's.
    async fn record_write_quorum(
        &self,
        writer: NodeId,
        quorum: Option<WriteQuorum>,
    ) -> Result<(), crate::state::StateError> {
        let result = self.state.record_write_quorum(writer, quorum).await;
        if let Err(e) = &result {
            self.state_write_failed(e);
        }
        result.map(|_| ())
    }
}
