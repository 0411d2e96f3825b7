//! The nemesis's partitions: cuts put in force through the lab's link (and, in network
//! namespaces, nftables), for a while and then healed, with the writes in flight excused.

use std::collections::BTreeSet;
use std::time::Duration;

use super::nemesis::Lab;
use super::{ChaosError, lab_error};
use crate::cut::Cut;

impl Lab<'_> {
    /// Puts `cuts` in force (recording the places they touch).
    pub(super) async fn cut(&self, cuts: &BTreeSet<Cut>) -> Result<(), ChaosError> {
        // The places each cut names; the others keep a majority and every path to it.
        let named = cuts.iter().flat_map(|c| match c {
            Cut::Isolate(p) | Cut::EtcdPeers(p) | Cut::Loss { place: p, .. } => vec![p.clone()],
            Cut::OneWay { from, .. } | Cut::NodeLink { place: from, .. } => vec![from.clone()],
            Cut::Between(a, b) => vec![a.clone(), b.clone()],
            Cut::RegionLink => self.spec.regions.clone(),
        });
        self.cut_places
            .lock()
            .expect("cut places lock")
            .extend(named);
        let entries = cuts.iter().map(Cut::to_string).collect();
        crate::link::set_partition(&self.spec.dir, &entries)
            .await
            .map_err(lab_error)
    }

    /// Every place but `vantage`, by vantage name.
    pub(super) fn other_places<'s>(
        &'s self,
        vantage: &'s str,
    ) -> impl Iterator<Item = String> + 's {
        std::iter::once(crate::spec::CONTROLLER_VANTAGE.to_string())
            .chain(self.spec.regions.iter().cloned())
            .filter(move |p| p != vantage)
    }

    /// [`Lab::partition_for`], excusing the writes acknowledged while the region was cut off and
    /// in the moment before, whose replication across the link was still in flight: asynchronous
    /// replication loses those whenever the other side takes over.
    pub(super) async fn cut_excused(&self, region: String, ms: u64) -> Result<(), ChaosError> {
        self.cut_excused_all([Cut::Isolate(region)].into(), ms)
            .await
    }

    /// [`Lab::cut_for`], excusing as [`Lab::cut_excused`] does.
    pub(super) async fn cut_excused_all(
        &self,
        cuts: BTreeSet<Cut>,
        ms: u64,
    ) -> Result<(), ChaosError> {
        let (writer, _) = self.writer().await?;
        let from = self.replicated_marks(writer).await;
        self.cut_for(cuts, ms).await?;
        self.excuse_since(&from);
        Ok(())
    }

    /// Cuts `entry` (a region, or a controller cut) for `ms`, then heals.
    pub(super) async fn partition_for(&self, entry: String, ms: u64) -> Result<(), ChaosError> {
        let cut = Cut::parse(&entry).map_err(lab_error)?;
        self.cut_for([cut].into(), ms).await
    }

    /// Puts `cuts` in force for `ms`, then heals; the fault's time is when they took hold.
    pub(super) async fn cut_for(&self, cuts: BTreeSet<Cut>, ms: u64) -> Result<(), ChaosError> {
        self.cut_for_excusing(cuts, ms, None).await
    }

    /// [`Lab::cut_for`]; with `in_flight_from` (the marks taken shortly before), the writes
    /// acknowledged from then until the cut took hold are excused: their replication across the
    /// link was still in flight.
    pub(super) async fn cut_for_excusing(
        &self,
        cuts: BTreeSet<Cut>,
        ms: u64,
        in_flight_from: Option<&[u64]>,
    ) -> Result<(), ChaosError> {
        *self.faulted_at.lock().expect("fault time lock") =
            Some(valkey_dr_controller::clock::now_ms());
        self.cut(&cuts).await?;
        if let Some(from) = in_flight_from {
            self.excuse_since(from);
        }
        tokio::time::sleep(Duration::from_millis(ms)).await;
        crate::link::set_partition(&self.spec.dir, &Default::default())
            .await
            .map_err(lab_error)
    }
}
