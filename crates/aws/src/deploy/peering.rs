//! The peering connection's DNS-resolution options, which CloudFormation cannot set.

use super::*;

/// Accepts the peering if needed and enables DNS resolution on both sides; returns how many
/// changes it made.
pub(super) async fn peering_dns(
    cloud: &Cloud<'_>,
    requester_region: &str,
    accepter_region: &str,
    id: &str,
    waits: Waits,
    say: Progress<'_>,
) -> Result<usize, DeployError> {
    let started = Instant::now();
    let mut changes = 0;
    loop {
        let peering = cloud
            .network
            .peering(requester_region, id)
            .await?
            .ok_or_else(|| DeployError::Config(format!("peering connection {id} not found")))?;
        match peering.status.as_str() {
            "active" => {
                for (side, region, allowed) in [
                    (
                        PeeringSide::Requester,
                        requester_region,
                        peering.requester_dns,
                    ),
                    (PeeringSide::Accepter, accepter_region, peering.accepter_dns),
                ] {
                    if allowed {
                        say(&format!("  {id} {side:?} side ({region}): already allowed"));
                    } else {
                        cloud.network.allow_remote_dns(region, id, side).await?;
                        say(&format!("  {id} {side:?} side ({region}): allowed"));
                        changes += 1;
                    }
                }
                return Ok(changes);
            }
            "pending-acceptance" => {
                say(&format!(
                    "  {id} pending acceptance; accepting in {accepter_region}"
                ));
                cloud.network.accept_peering(accepter_region, id).await?;
                changes += 1;
            }
            "initiating-request" | "provisioning" => {}
            other => {
                return Err(DeployError::Config(format!(
                    "peering connection {id} is {other}; it cannot carry traffic"
                )));
            }
        }
        if started.elapsed() > waits.limit {
            return Err(DeployError::Timeout {
                what: format!("peering connection {id}"),
                waited: waits.limit,
            });
        }
        tokio::time::sleep(waits.poll).await;
    }
}
