//! What a partition cuts, as the lab's commands and the chaos nemesis name it. One entry of a
//! partition is one [`Cut`]; the region-link emulator ([`crate::link`]) and the network
//! namespaces' packet filters ([`crate::netns`]) both ask it which traffic it drops.
//!
//! Places are named by their vantage: a region's name, or [`CONTROLLER_VANTAGE`] for the
//! controller's place (the witness site in the highly available shape).

use std::fmt;
use std::net::Ipv4Addr;

use crate::spec::CONTROLLER_VANTAGE;

/// One entry of a partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cut {
    /// A place cut off from every other (`<place>`).
    Isolate(String),
    /// The regions cannot reach each other; the controller's place still reaches all
    /// (`region-link`).
    RegionLink,
    /// Nothing flows between two places, either way (`<a>-to:<b>`).
    Between(String, String),
    /// Packets from `from` to `to` are dropped, the other way flows (`oneway:<from>:<to>`).
    /// Real networks only: a proxy carries both directions of a connection or neither.
    OneWay { from: String, to: String },
    /// Only etcd's peer traffic between this place and every other (`etcd-peers:<place>`).
    /// Real networks only: etcd members reach each other directly, not through the link.
    EtcdPeers(String),
    /// `percent` of the packets between this place and every other, chosen at random
    /// (`loss:<percent>:<place>`). Real networks only.
    Loss { place: String, percent: u8 },
    /// Nothing flows between one node and a place, either way; the node's own place and every
    /// other still reach it (`node:<address>-to:<place>`): one host's route or security group,
    /// not a whole site. Real networks only.
    NodeLink { node: Ipv4Addr, place: String },
}

/// What a cut does to the traffic from one place to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Every packet dropped.
    All,
    /// Only etcd's peer traffic dropped.
    EtcdPeers,
    /// This share of the packets dropped, in percent.
    Loss(u8),
}

/// The entry that cuts only the link between regions.
pub const LINK: &str = "region-link";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CutError {
    #[error(
        "`{0}` is not a partition entry: use a place name, region-link, <a>-to:<b>, oneway:<from>:<to>, etcd-peers:<place>, loss:<percent>:<place> or node:<address>-to:<place>"
    )]
    Malformed(String),
    #[error("loss must be 1..=100 percent, not `{0}`")]
    Percent(String),
}

impl Cut {
    pub fn parse(entry: &str) -> Result<Cut, CutError> {
        let malformed = || CutError::Malformed(entry.to_string());
        let named = |s: &str| (!s.is_empty() && !s.contains(':')).then(|| s.to_string());
        if entry == LINK {
            return Ok(Cut::RegionLink);
        }
        if let Some(rest) = entry.strip_prefix("oneway:") {
            let (from, to) = rest.split_once(':').ok_or_else(malformed)?;
            return Ok(Cut::OneWay {
                from: named(from).ok_or_else(malformed)?,
                to: named(to).ok_or_else(malformed)?,
            });
        }
        if let Some(rest) = entry.strip_prefix("node:") {
            let (node, place) = rest.split_once("-to:").ok_or_else(malformed)?;
            return Ok(Cut::NodeLink {
                node: node.parse().map_err(|_| malformed())?,
                place: named(place).ok_or_else(malformed)?,
            });
        }
        if let Some(place) = entry.strip_prefix("etcd-peers:") {
            return Ok(Cut::EtcdPeers(named(place).ok_or_else(malformed)?));
        }
        if let Some(rest) = entry.strip_prefix("loss:") {
            let (percent, place) = rest.split_once(':').ok_or_else(malformed)?;
            let percent = percent
                .parse::<u8>()
                .ok()
                .filter(|p| (1..=100).contains(p))
                .ok_or_else(|| CutError::Percent(percent.to_string()))?;
            return Ok(Cut::Loss {
                place: named(place).ok_or_else(malformed)?,
                percent,
            });
        }
        if let Some((a, b)) = entry.split_once("-to:") {
            return Ok(Cut::Between(
                named(a).ok_or_else(malformed)?,
                named(b).ok_or_else(malformed)?,
            ));
        }
        Ok(Cut::Isolate(named(entry).ok_or_else(malformed)?))
    }

    /// True for the cuts only packet filters can make (the emulator cannot).
    pub fn needs_real_network(&self) -> bool {
        matches!(
            self,
            Cut::OneWay { .. } | Cut::EtcdPeers(_) | Cut::Loss { .. } | Cut::NodeLink { .. }
        )
    }

    /// What this cut does to the traffic sent from place `from` to place `to`.
    pub fn effect(&self, from: &str, to: &str) -> Option<Effect> {
        if from == to {
            return None;
        }
        let touches = |place: &str| from == place || to == place;
        match self {
            Cut::Isolate(place) => touches(place).then_some(Effect::All),
            Cut::RegionLink => {
                (from != CONTROLLER_VANTAGE && to != CONTROLLER_VANTAGE).then_some(Effect::All)
            }
            Cut::Between(a, b) => {
                ((from == a && to == b) || (from == b && to == a)).then_some(Effect::All)
            }
            Cut::OneWay { from: f, to: t } => (from == f && to == t).then_some(Effect::All),
            Cut::EtcdPeers(place) => touches(place).then_some(Effect::EtcdPeers),
            Cut::Loss { place, percent } => touches(place).then_some(Effect::Loss(*percent)),
            // One node, not a place: the packet filters drop it by address.
            Cut::NodeLink { .. } => None,
        }
    }
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cut::Isolate(place) => write!(f, "{place}"),
            Cut::RegionLink => write!(f, "{LINK}"),
            Cut::Between(a, b) => write!(f, "{a}-to:{b}"),
            Cut::OneWay { from, to } => write!(f, "oneway:{from}:{to}"),
            Cut::EtcdPeers(place) => write!(f, "etcd-peers:{place}"),
            Cut::Loss { place, percent } => write!(f, "loss:{percent}:{place}"),
            Cut::NodeLink { node, place } => write!(f, "node:{node}-to:{place}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EAST: &str = "us-east-1";
    const WEST: &str = "us-east-2";
    const CTL: &str = CONTROLLER_VANTAGE;

    #[test]
    fn each_cut_drops_what_it_names_and_nothing_else() {
        let all = Some(Effect::All);
        // (entry, from, to, effect)
        let table: &[(&str, &str, &str, Option<Effect>)] = &[
            (EAST, EAST, WEST, all),
            (EAST, WEST, EAST, all),
            (EAST, CTL, EAST, all),
            (EAST, CTL, WEST, None),
            (LINK, EAST, WEST, all),
            (LINK, CTL, EAST, None),
            (LINK, EAST, CTL, None),
            ("controller-to:us-east-1", CTL, EAST, all),
            ("controller-to:us-east-1", EAST, CTL, all),
            ("controller-to:us-east-1", EAST, WEST, None),
            ("oneway:us-east-1:us-east-2", EAST, WEST, all),
            ("oneway:us-east-1:us-east-2", WEST, EAST, None),
            ("oneway:us-east-1:us-east-2", EAST, CTL, None),
            ("etcd-peers:controller", CTL, EAST, Some(Effect::EtcdPeers)),
            ("etcd-peers:controller", WEST, EAST, None),
            ("loss:30:us-east-2", EAST, WEST, Some(Effect::Loss(30))),
            ("loss:30:us-east-2", WEST, CTL, Some(Effect::Loss(30))),
            ("loss:30:us-east-2", EAST, CTL, None),
            ("node:198.18.1.1-to:controller", CTL, EAST, None),
            (EAST, EAST, EAST, None),
        ];
        for (entry, from, to, effect) in table {
            let cut = Cut::parse(entry).expect(entry);
            assert_eq!(cut.to_string(), *entry, "round trip");
            assert_eq!(cut.effect(from, to), *effect, "{entry}: {from} → {to}");
        }
    }

    #[test]
    fn malformed_entries_are_refused_with_the_grammar() {
        for entry in [
            "",
            "oneway:a",
            "loss:0:a",
            "loss:101:a",
            "loss:x:a",
            "a-to:",
            "etcd-peers:",
            "node:1.2.3-to:a",
            "node:1.2.3.4",
        ] {
            let error = Cut::parse(entry).expect_err(entry).to_string();
            assert!(
                error.contains("region-link") || error.contains("percent"),
                "{entry}: {error}"
            );
        }
        assert!(Cut::parse("oneway:a:b").unwrap().needs_real_network());
        assert!(!Cut::parse("a").unwrap().needs_real_network());
        assert!(
            Cut::parse("node:198.18.1.1-to:controller")
                .unwrap()
                .needs_real_network()
        );
    }
}
