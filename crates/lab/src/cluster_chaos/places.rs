//! A run whose places stand in network namespaces of their own ([`crate::netns`]): us-east-1's
//! six nodes and its applications, us-east-2's three nodes and its applications, and the
//! controller's place (the witness site in the highly available shape, where each site's
//! controller and etcd member stand in its own place), joined by a bridge. A cut drops real
//! packets where they arrive; the run's monitor, checkers and read-backs stand at the machine's
//! own end, which no cut touches.

use crate::LabSpec;
use crate::cluster::NodePlace;
use crate::cut::Cut;

use super::*;

/// The namespaces of one run; removed (with any process still inside) when dropped.
pub(super) struct Places {
    spec: LabSpec,
}

impl Drop for Places {
    fn drop(&mut self) {
        crate::netns::destroy(&self.spec);
    }
}

impl Places {
    /// Claims a free slot and builds its namespaces: place 0 the controller's, 1 us-east-1,
    /// 2 us-east-2 (`seed` spreads the slot chosen).
    pub(super) fn build(dir: &Path, seed: u32) -> Result<Places, String> {
        let slot = crate::netns::claim_slot(seed).map_err(|e| e.to_string())?;
        let spec = LabSpec {
            nodes_per_region: 6,
            sites: LabSpec::default_sites(&["us-east-1".into(), "us-east-2".into()]),
            ..LabSpec::in_netns(dir.to_path_buf(), slot)
        };
        let places = Places { spec };
        crate::netns::create(&places.spec).map_err(|e| e.to_string())?;
        Ok(places)
    }

    /// The nine nodes in [`cluster::start`]'s order: us-east-1's primaries and a replica of
    /// each, then a replica of each in us-east-2; all on one port (each address is its own).
    pub(super) fn nodes(&self) -> Vec<NodePlace> {
        let in_region = |region: usize, count: usize| {
            (0..count).map(move |i| (region, self.spec.node_addr(region, i)))
        };
        in_region(0, 6)
            .chain(in_region(1, 3))
            .map(|(region, listen)| NodePlace {
                listen,
                announced: listen.ip(),
                netns: Some(self.region_ns(region)),
            })
            .collect()
    }

    /// The namespace of region `region` (0: us-east-1).
    pub(super) fn region_ns(&self, region: usize) -> String {
        crate::netns::place_ns(&self.spec, region as u8 + 1)
    }

    /// The controller's namespace.
    pub(super) fn controller_ns(&self) -> String {
        crate::netns::place_ns(&self.spec, 0)
    }

    /// Where the controller's DNS server listens, in its place.
    pub(super) fn dns(&self) -> SocketAddr {
        self.spec.dns
    }

    /// The namespace of a site of the highly available shape (a region's, or the witness's: the
    /// controller's place).
    pub(super) fn site_ns(&self, site: &str) -> String {
        crate::netns::vantage_ns(&self.spec, site)
    }

    /// Where a site's DNS server listens, in its place.
    pub(super) fn site_dns(&self, site: &str) -> SocketAddr {
        self.spec.site_dns(site)
    }

    /// A three-member etcd under `dir`, each site's member in its site's place.
    pub(super) async fn etcd(
        &self,
        dir: &Path,
    ) -> Result<valkey_dr_coord::cluster::EtcdCluster, String> {
        let members = self.spec.etcd_members();
        let namespaces: Vec<String> = members.iter().map(|m| self.site_ns(&m.name)).collect();
        let placing: valkey_dr_coord::cluster::Placing =
            Box::new(move |i, command| crate::netns::enter(command, &namespaces[i]));
        valkey_dr_coord::cluster::EtcdCluster::start_placed(
            dir,
            members.iter().map(|m| (m.client, m.peer)).collect(),
            Some(placing),
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// Puts `cuts` in force (empty: heal), replacing the previous ones.
    pub(super) fn cut(&self, cuts: &[Cut]) -> Result<(), String> {
        crate::netns::apply(&self.spec, cuts).map_err(|e| e.to_string())
    }
}
