//! The ownership TXT record: `heritage=valkey-dr,owner=<id>,epoch=<n>,primary=<region>`.
//!
//! It sits next to the global name (`_valkey-dr.<global name>`), marks the records valkey-dr
//! manages, and carries the epoch so that a stale controller can tell it has been overtaken.

use serde::{Deserialize, Serialize};

pub const HERITAGE: &str = "valkey-dr";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ownership {
    pub owner: String,
    pub epoch: u64,
    pub primary_region: String,
}

impl Ownership {
    pub fn to_txt(&self) -> String {
        format!(
            "heritage={HERITAGE},owner={},epoch={},primary={}",
            self.owner, self.epoch, self.primary_region
        )
    }

    /// Parses the TXT data; `None` when it is not a valkey-dr ownership record.
    pub fn parse(txt: &str) -> Option<Ownership> {
        let (mut heritage, mut owner, mut epoch, mut primary) = (None, None, None, None);
        for pair in txt.trim_matches('"').split(',') {
            let (key, value) = pair.split_once('=')?;
            let slot = match key.trim() {
                "heritage" => &mut heritage,
                "owner" => &mut owner,
                "epoch" => &mut epoch,
                "primary" => &mut primary,
                _ => continue,
            };
            *slot = Some(value.trim().to_string());
        }
        if heritage.as_deref() != Some(HERITAGE) {
            return None;
        }
        Some(Ownership {
            owner: owner?,
            epoch: epoch?.parse().ok()?,
            primary_region: primary?,
        })
    }
}

/// The name of the ownership record for a managed global name.
pub fn record_name(global_name: &str) -> String {
    format!("_valkey-dr.{global_name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_foreign_txt() {
        let o = Ownership {
            owner: "lab".into(),
            epoch: 7,
            primary_region: "us-east-2".into(),
        };
        assert_eq!(Ownership::parse(&o.to_txt()), Some(o.clone()));
        assert_eq!(Ownership::parse(&format!("\"{}\"", o.to_txt())), Some(o));
        for foreign in [
            "",
            "v=spf1 -all",
            "heritage=external-dns,owner=x,epoch=1,primary=a",
            "heritage=valkey-dr,owner=x,epoch=z,primary=a",
            "heritage=valkey-dr,owner=x",
        ] {
            assert_eq!(Ownership::parse(foreign), None, "{foreign}");
        }
    }
}
