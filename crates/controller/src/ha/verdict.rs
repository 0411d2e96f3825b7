//! The pure rules of the highly available shape, each with its case table: may the writer leave
//! its region, what the region guard keeps paused, when a site's view is published again.

use serde::{Deserialize, Serialize};
use valkey_dr_core::NodeId;
use valkey_dr_core::config::CoordinationConfig;

/// What one site last saw of the writer, published under `views/<site>` on its presence lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub epoch: u64,
    pub writer: String,
    pub writer_reachable: bool,
    /// Wall clock of the observation (Unix ms), the site's own: used for a view's age only until
    /// the leader has seen it change ([`ViewAges`]).
    pub at_ms: u64,
}

/// A view older than this says nothing about now.
pub const VIEW_MAX_AGE_MS: u64 = 5_000;

/// A site's view as the leader read it from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenView {
    pub site: String,
    pub view: View,
    /// How long ago the leader saw this view change, on its own monotonic clock; `None` while it
    /// has not seen it change yet (its first read of it).
    pub unchanged_for_ms: Option<u64>,
}

impl SeenView {
    /// Fresh: of `epoch`, and changed (published again) within [`VIEW_MAX_AGE_MS`] as the leader
    /// measured it. Before the leader has seen a change, the site's own wall-clock stamp is all
    /// there is; a site whose clock is behind then counts from its next refresh
    /// (`VIEW_REFRESH_MS`) on, instead of never, and one whose clock is ahead stops counting once
    /// it stops publishing.
    fn fresh(&self, epoch: u64, now_ms: u64) -> bool {
        let age = self
            .unchanged_for_ms
            .unwrap_or_else(|| now_ms.saturating_sub(self.view.at_ms));
        self.view.epoch == epoch && age <= VIEW_MAX_AGE_MS
    }
}

/// When the leader saw each site's view change: the etcd revision of each view key, and the
/// leader's own instant at which that revision first showed up. Wall clocks are compared across
/// sites only for a view never seen to change.
#[derive(Debug, Default)]
pub struct ViewAges {
    seen: std::collections::HashMap<String, (i64, Option<std::time::Instant>)>,
}

impl ViewAges {
    /// Notes the revision of `site`'s view read at `now`; returns how long it has been unchanged
    /// since the leader first saw it change (`None` at the first read of a site's view).
    pub fn note(&mut self, site: &str, revision: i64, now: std::time::Instant) -> Option<u64> {
        let entry = self
            .seen
            .entry(site.to_string())
            .or_insert((revision, None));
        if entry.0 != revision {
            *entry = (revision, Some(now));
        }
        entry
            .1
            .map(|changed| now.saturating_duration_since(changed).as_millis() as u64)
    }
}

/// Why a cross-region failover must wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Withheld {
    /// The writer's region still has a live controller that sees the writer: its clients may
    /// still be writing there, and it has not fenced them.
    RegionStillPresent { region: String },
    /// Fewer than a majority of sites see the writer down.
    NoMajority { down: usize, needed: usize },
    /// What the sites see could not be read.
    Unreadable { reason: String },
}

impl std::fmt::Display for Withheld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Withheld::RegionStillPresent { region } => write!(
                f,
                "the controller of region {region} still holds its presence and sees the writer: waiting until it fences the writer or its lease expires"
            ),
            Withheld::NoMajority { down, needed } => write!(
                f,
                "only {down} site(s) see the writer down, {needed} needed: no failover from a minority view"
            ),
            Withheld::Unreadable { reason } => write!(f, "{reason}"),
        }
    }
}

/// Decides whether the leader may move the writer out of `writer_region`: pure, from the sites
/// present in etcd and their fresh views of this epoch's writer (the leader's own included).
pub fn cross_region_verdict(
    config: &CoordinationConfig,
    writer_region: &str,
    present: &[String],
    views: &[SeenView],
    epoch: u64,
    now_ms: u64,
) -> Result<(), Withheld> {
    let sees_down = |site: &str| {
        views
            .iter()
            .any(|v| v.site == site && v.fresh(epoch, now_ms) && !v.view.writer_reachable)
    };
    let down = config.sites.iter().filter(|s| sees_down(s)).count();
    if down < config.quorum() {
        return Err(Withheld::NoMajority {
            down,
            needed: config.quorum(),
        });
    }
    let region_has_controller = config.sites.iter().any(|s| s == writer_region);
    if region_has_controller
        && present.iter().any(|s| s == writer_region)
        && !sees_down(writer_region)
    {
        return Err(Withheld::RegionStillPresent {
            region: writer_region.to_string(),
        });
    }
    Ok(())
}

/// How often an unchanged view is published again: often enough that it stays fresh for the
/// leader ([`VIEW_MAX_AGE_MS`]), seldom enough that etcd's history grows slowly (each put is a
/// revision; a view stamped every pass made ~3 a second per site).
const VIEW_REFRESH_MS: u64 = 2_000;

/// Whether `next` must be published after `published`: what it says changed, or it is getting old.
pub(crate) fn view_due(published: &View, next: &View) -> bool {
    (
        published.epoch,
        &published.writer,
        published.writer_reachable,
    ) != (next.epoch, &next.writer, next.writer_reachable)
        || next.at_ms.saturating_sub(published.at_ms) >= VIEW_REFRESH_MS
}

/// What the region guard knows at one tick.
#[derive(Debug, Clone, Copy)]
pub struct GuardView {
    /// This site's presence lease still counts (on its own clock).
    pub present: bool,
    /// The state was read from etcd after the presence last came back.
    pub synced_since_present: bool,
    /// The epoch's writer, as last read.
    pub writer: Option<NodeId>,
    /// The epoch's writer if it is in this site's region.
    pub local_writer: Option<NodeId>,
    /// The node the guard is pausing now.
    pub fenced: Option<NodeId>,
    /// Whether that node is a replica now (read only when it matters).
    pub fenced_is_replica: Option<bool>,
}

/// The node the region guard must keep paused, if any: the region's writer while the site is cut
/// off; after contact returns, the paused node until a fresh state read says it is still the
/// writer, or — replaced meanwhile — until it has become a replica.
pub fn guard_target(view: GuardView) -> Option<NodeId> {
    match view.fenced {
        _ if !view.present => view.local_writer.or(view.fenced),
        None => None,
        Some(node) if !view.synced_since_present => Some(node),
        Some(node) if view.writer == Some(node) => None,
        Some(_) if view.fenced_is_replica == Some(true) => None,
        Some(node) => Some(node),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CoordinationConfig {
        CoordinationConfig {
            etcd: vec!["http://127.0.0.1:2379".into()],
            site: "witness".into(),
            sites: vec!["us-east-1".into(), "us-east-2".into(), "witness".into()],
            lease_ttl_ms: 3000,
            fence_after_ms: None,
            etcd_quota_bytes: None,
            tls: None,
            prefix: None,
            name_servers: Default::default(),
        }
    }

    fn view(reachable: bool, at_ms: u64, epoch: u64) -> View {
        View {
            epoch,
            writer: "127.0.1.1:6379".into(),
            writer_reachable: reachable,
            at_ms,
        }
    }

    #[test]
    fn a_view_is_published_when_it_says_something_new_or_grows_old() {
        let published = view(true, 10_000, 4);
        #[rustfmt::skip]
        let cases = [
            ("the same, a pass later", view(true, 11_000, 4), false),
            ("the writer seen down", view(false, 10_100, 4), true),
            ("a new epoch", view(true, 10_100, 5), true),
            ("the same, refreshed before the leader counts it stale", view(true, 12_000, 4), true),
        ];
        for (case, next, due) in cases {
            assert_eq!(view_due(&published, &next), due, "{case}");
        }
    }

    #[test]
    fn a_views_age_is_measured_on_the_leaders_clock_from_its_first_seen_change() {
        let start = std::time::Instant::now();
        let at = |ms: u64| start + std::time::Duration::from_millis(ms);
        let mut ages = ViewAges::default();
        #[rustfmt::skip]
        let steps = [
            ("first read: age unknown", 7, 0, None),
            ("read again, unchanged: still unknown", 7, 1_000, None),
            ("published again: seen changing now", 9, 1_500, Some(0)),
            ("unchanged since", 9, 4_000, Some(2_500)),
            ("published again", 12, 5_000, Some(0)),
        ];
        for (step, revision, ms, expected) in steps {
            assert_eq!(ages.note("us-east-2", revision, at(ms)), expected, "{step}");
        }
        assert_eq!(
            ages.note("witness", 3, at(5_000)),
            None,
            "each site on its own"
        );
    }

    #[test]
    fn the_guard_pauses_while_cut_off_and_until_the_paused_node_is_settled() {
        let (a, b) = (NodeId(0), NodeId(2));
        let view = |present, synced, writer, fenced, replica| GuardView {
            present,
            synced_since_present: synced,
            writer: Some(writer),
            local_writer: Some(writer).filter(|w| *w == a),
            fenced,
            fenced_is_replica: replica,
        };
        #[rustfmt::skip]
        let cases = [
            ("in contact, nothing paused", view(true, true, a, None, None), None),
            ("cut off: the region's writer", view(false, false, a, None, None), Some(a)),
            ("cut off, writer elsewhere: nothing to pause", view(false, false, b, None, None), None),
            ("back, state not read since: still paused", view(true, false, a, Some(a), None), Some(a)),
            ("back, still the writer: lifted", view(true, true, a, Some(a), None), None),
            ("back, replaced, still a master: paused", view(true, true, b, Some(a), Some(false)), Some(a)),
            ("back, replaced, now a replica: lifted", view(true, true, b, Some(a), Some(true)), None),
            ("cut off again while pausing a replaced node", view(false, true, b, Some(a), None), Some(a)),
        ];
        for (case, view, expected) in cases {
            assert_eq!(guard_target(view), expected, "{case}");
        }
    }

    #[test]
    fn the_writer_leaves_its_region_only_on_a_majority_and_after_that_region_let_go() {
        let now = 100_000;
        let sites = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let views = |v: &[(&str, View)]| {
            v.iter()
                .map(|(s, v)| SeenView {
                    site: s.to_string(),
                    view: v.clone(),
                    unchanged_for_ms: None,
                })
                .collect::<Vec<_>>()
        };
        // Seen to change by the leader `ago_ms` ago, whatever the site's own clock says.
        let seen = |site: &str, v: View, ago_ms: u64| SeenView {
            site: site.to_string(),
            view: v,
            unchanged_for_ms: Some(ago_ms),
        };
        let down = view(false, now - 500, 4);
        let up = view(true, now - 500, 4);
        type Case = (
            &'static str,
            Vec<String>,
            Vec<SeenView>,
            Result<(), Withheld>,
        );
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("region isolated: its presence gone, the other two see the writer down",
             sites(&["us-east-2", "witness"]),
             views(&[("us-east-2", down.clone()), ("witness", down.clone())]),
             Ok(())),
            ("only the leader lost the region (asymmetric): the region's peer still sees it",
             sites(&["us-east-1", "us-east-2", "witness"]),
             views(&[("us-east-1", up.clone()), ("us-east-2", up.clone()), ("witness", down.clone())]),
             Err(Withheld::NoMajority { down: 1, needed: 2 })),
            ("a majority sees it down but the region's controller is present and sees its writer",
             sites(&["us-east-1", "us-east-2", "witness"]),
             views(&[("us-east-1", up.clone()), ("us-east-2", down.clone()), ("witness", down.clone())]),
             Err(Withheld::RegionStillPresent { region: "us-east-1".into() })),
            ("the writer node died, its region's controller sees it too",
             sites(&["us-east-1", "us-east-2", "witness"]),
             views(&[("us-east-1", down.clone()), ("us-east-2", up.clone()), ("witness", down.clone())]),
             Ok(())),
            ("stale views count for nothing",
             sites(&["us-east-2", "witness"]),
             views(&[("us-east-2", view(false, now - 60_000, 4)), ("witness", down.clone())]),
             Err(Withheld::NoMajority { down: 1, needed: 2 })),
            ("views of another epoch count for nothing",
             sites(&["us-east-2", "witness"]),
             views(&[("us-east-2", view(false, now - 100, 3)), ("witness", down.clone())]),
             Err(Withheld::NoMajority { down: 1, needed: 2 })),
            ("a site whose clock is 60 s behind, seen refreshing by the leader, counts",
             sites(&["us-east-2", "witness"]),
             vec![seen("us-east-2", view(false, now - 60_000, 4), 300), views(&[("witness", down.clone())]).remove(0)],
             Ok(())),
            ("a site whose clock is 60 s ahead but that stopped publishing 6 s ago counts for nothing",
             sites(&["us-east-2", "witness"]),
             vec![seen("us-east-2", view(false, now + 60_000, 4), 6_000), views(&[("witness", down.clone())]).remove(0)],
             Err(Withheld::NoMajority { down: 1, needed: 2 })),
            ("two regions lost at once: the witness alone is a minority",
             sites(&["witness"]),
             views(&[("witness", down.clone())]),
             Err(Withheld::NoMajority { down: 1, needed: 2 })),
        ];
        for (case, present, views, expected) in cases {
            assert_eq!(
                cross_region_verdict(&config(), "us-east-1", &present, &views, 4, now),
                expected,
                "{case}"
            );
        }
    }
}
