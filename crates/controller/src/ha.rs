//! The highly available shape: one controller per site (each region and a witness), coordinated
//! through etcd ([`valkey_dr_coord`]).
//!
//! - **One leader acts.** Every controller campaigns for the leader key; the one holding it runs
//!   full reconcile passes, the others observe, publish what they see and serve DNS. The leader
//!   reads the state from etcd before its first action and stops acting before its lease can
//!   expire on its own clock ([`LeaderCell`]); every write it makes (state, DNS records) is fenced
//!   by its token in etcd, and every action on a node goes through [`LeaderOnly`].
//! - **Every site serves DNS** from the records in etcd; without etcd it keeps the last ones.
//! - **Regions fence themselves.** Each site keeps a presence key alive. A region's controller
//!   that cannot renew it pauses its region's writer before the key can expire; the leader moves
//!   the writer out of a region only once that region's key is gone (or its own controller sees
//!   the writer down too), and only when a majority of sites sees the writer down
//!   ([`cross_region_verdict`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use valkey_dr_coord::{Claim, Coordinator, LeaderCell};
use valkey_dr_core::config::CoordinationConfig;
use valkey_dr_core::engine::SyncSettings;
use valkey_dr_core::observation::{EpochMark, FailureKind, NodeObservation, ReplicationInfo};
use valkey_dr_core::{Endpoint, Engine, EngineError, NodeId};
use valkey_dr_dns::etcd::EtcdRecords;

use crate::Controller;
use crate::events::now_ms;

/// What one site last saw of the writer, published under `views/<site>` on its presence lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub epoch: u64,
    pub writer: String,
    pub writer_reachable: bool,
    /// Wall clock of the observation (Unix ms); views older than [`VIEW_MAX_AGE_MS`] are ignored.
    pub at_ms: u64,
}

/// An operator's request handed to the leader through etcd, with the moment (wall clock, Unix
/// ms) after which the command that sent it no longer waits: a later leader refuses it instead of
/// running it unannounced. Sites' clocks are assumed NTP-synced (seconds of skew at most).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Forwarded {
    deadline_ms: u64,
    request: crate::control::Request,
}

/// How often a controller that does not lead looks at the leader key.
const FOLLOWER_TICK: Duration = Duration::from_millis(100);

/// How long a forwarded request and its answer live in etcd.
const REQUEST_TTL: Duration = Duration::from_secs(120);

/// A view older than this says nothing about now (sites' clocks are assumed NTP-synced).
pub const VIEW_MAX_AGE_MS: u64 = 5_000;

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
    views: &[(String, View)],
    epoch: u64,
    now_ms: u64,
) -> Result<(), Withheld> {
    let fresh = |v: &View| v.epoch == epoch && now_ms.saturating_sub(v.at_ms) <= VIEW_MAX_AGE_MS;
    let sees_down = |site: &str| {
        views
            .iter()
            .any(|(s, v)| s == site && fresh(v) && !v.writer_reachable)
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
fn view_due(published: &View, next: &View) -> bool {
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

/// This controller's part in the highly available shape.
pub struct Ha {
    pub coord: Coordinator,
    pub leader: Arc<LeaderCell>,
    pub records: Arc<EtcdRecords>,
    pub config: CoordinationConfig,
    shared: Mutex<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Until when this site's presence counts on its own clock (None: not held).
    present_until: Option<Instant>,
    /// The site that led when this controller last looked.
    leader_site: Option<String>,
    /// What this site last saw, to publish.
    view: Option<View>,
    /// Whether this site is pausing its region's writer now.
    fencing: bool,
    /// Whether the last copy from etcd failed.
    sync_failing: bool,
    /// Since when this site's presence holds again after a lapse (or first).
    present_since: Option<Instant>,
    /// When the state was last read from etcd successfully.
    synced_at: Option<Instant>,
    /// The first claim of this site's presence was answered (or failed): until then a guard
    /// that fenced would pause the region's writer at every start.
    presence_tried: bool,
}

impl Ha {
    pub fn new(
        coord: Coordinator,
        leader: Arc<LeaderCell>,
        records: Arc<EtcdRecords>,
        config: CoordinationConfig,
    ) -> Ha {
        Ha {
            coord,
            leader,
            records,
            config,
            shared: Mutex::new(Shared::default()),
        }
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().expect("ha lock")
    }

    pub fn site(&self) -> &str {
        &self.config.site
    }

    pub fn leader_site(&self) -> Option<String> {
        if self.leader.is_leader() {
            return Some(self.config.site.clone());
        }
        self.shared().leader_site.clone()
    }

    fn present(&self, now: Instant) -> bool {
        self.shared().present_until.is_some_and(|t| now < t)
    }

    /// Whether the state was read from etcd after this site's presence last came back.
    fn synced_since_present(&self) -> bool {
        let shared = self.shared();
        matches!((shared.synced_at, shared.present_since), (Some(read), Some(since)) if read > since)
    }

    fn note_synced(&self) {
        self.shared().synced_at = Some(Instant::now());
    }

    pub fn set_view(&self, view: View) {
        self.shared().view = Some(view);
    }

    /// Whether this site pauses its region's writer now.
    pub fn fencing(&self) -> bool {
        self.shared().fencing
    }

    /// How often leases are renewed: twelve times per TTL, so that a key expires soon after its
    /// holder dies or is cut off.
    fn renew_every(&self) -> Duration {
        self.coord.ttl() / 12
    }
}

impl Controller {
    pub(crate) fn ha(&self) -> Option<&Ha> {
        self.ha.as_deref()
    }

    /// True when this controller may act on the nodes and write state: always in the
    /// single-process shape, only while leading in the highly available one.
    pub fn may_act(&self) -> bool {
        self.ha().is_none_or(|ha| ha.leader.is_leader())
    }

    /// Why this controller refuses to act for an operator, when it does not lead.
    pub fn not_leader(&self) -> Option<String> {
        let ha = self.ha()?;
        if ha.leader.is_leader() {
            return None;
        }
        Some(match ha.leader_site() {
            Some(site) => format!(
                "this controller (site {}) is not the leader; run the command on the controller of site {site}",
                ha.site()
            ),
            None => format!(
                "this controller (site {}) is not the leader and no leader is known (is etcd reachable?)",
                ha.site()
            ),
        })
    }

    /// Hands an operator's request to the leader through etcd and waits for its answer (the
    /// control socket is local to each site; the leader may be anywhere).
    pub async fn forward(&self, request: &crate::control::Request) -> serde_json::Value {
        let Some(ha) = self.ha() else {
            return json!({ "error": "no coordination configured" });
        };
        let id = format!(
            "{}-{}-{}",
            ha.site(),
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let deadline = Instant::now() + REQUEST_TTL;
        let forwarded = Forwarded {
            deadline_ms: now_ms() + REQUEST_TTL.as_millis() as u64,
            request: request.clone(),
        };
        let body = serde_json::to_vec(&forwarded).expect("requests serialize");
        if let Err(error) = ha
            .coord
            .put_expiring(&format!("requests/{id}"), &body, REQUEST_TTL)
            .await
        {
            return json!({ "error": format!("cannot hand the request to the leader: {error}") });
        }
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(Some(reply)) = ha.coord.get(&format!("results/{id}")).await
                && let Ok(reply) = serde_json::from_slice::<serde_json::Value>(&reply)
            {
                return reply;
            }
        }
        json!({ "error": format!(
            "no leader answered within {} s (last known leader: {})",
            REQUEST_TTL.as_secs(),
            ha.leader_site().unwrap_or_else(|| "none".into())
        ) })
    }

    /// Copies the DNS records from etcd into this site's zone every 100 ms, so that every site
    /// answers with a new writer within moments of the leader's change (passes run only every
    /// reconcile interval).
    pub async fn follow_records(self: Arc<Self>) {
        let Some(ha) = self.ha.clone() else { return };
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = ha.records.sync().await;
        }
    }

    /// On the leader: carries out the requests other sites handed over, each exactly once.
    pub async fn serve_requests(self: Arc<Self>) {
        let Some(ha) = self.ha.clone() else { return };
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Some(fence) = ha.leader.fence() else {
                continue;
            };
            let Ok(pending) = ha.coord.list("requests").await else {
                continue;
            };
            for (id, body) in pending {
                if !matches!(
                    ha.coord.take_fenced(fence, &format!("requests/{id}")).await,
                    Ok(true)
                ) {
                    continue;
                }
                let reply = match serde_json::from_slice::<Forwarded>(&body) {
                    // The operator's command gave up waiting: running it now would surprise them
                    // (a forced failover long after they were told no leader answered).
                    Ok(forwarded) if now_ms() > forwarded.deadline_ms => json!({
                        "error": "the request expired before a leader could take it; run the command again"
                    }),
                    Ok(Forwarded { request, .. }) => {
                        self.events
                            .emit("request_forwarded", json!({ "id": id, "request": request }));
                        crate::control::execute(&self, request).await
                    }
                    Err(error) => json!({ "error": format!("invalid request: {error}") }),
                };
                let reply = serde_json::to_vec(&reply).expect("replies serialize");
                let _ = ha
                    .coord
                    .put_expiring(&format!("results/{id}"), &reply, REQUEST_TTL)
                    .await;
            }
        }
    }

    /// Campaigns for the leader key and keeps it renewed while it holds it.
    pub async fn campaign(self: Arc<Self>) {
        let Some(ha) = self.ha() else { return };
        let mut claim: Option<Claim> = None;
        let mut unavailable_reported = false;
        loop {
            match claim.as_mut() {
                Some(held) => match ha.coord.renew_leadership(held).await {
                    Ok(()) => {
                        ha.leader.set(Some(held.fence()));
                        if self.should_hand_over(ha).await
                            && let Ok(_idle) = self.topology_lock.try_lock()
                            && let Some(held) = claim.take()
                        {
                            // Between passes and promotions: nothing is left half done.
                            ha.leader.set(None);
                            let _ = ha.coord.resign(held).await;
                            self.events.emit(
                                "leadership_handed_over",
                                json!({ "site": ha.site(), "reason": "this site is the writer's region; another site leads so that losing this region does not cost a leader election too" }),
                            );
                        }
                    }
                    // Gone in etcd (deposed, or the lease expired or was revoked), or no renewal
                    // within the window: stop at once.
                    Err(error)
                        if matches!(
                            error,
                            valkey_dr_coord::CoordError::Deposed { .. }
                                | valkey_dr_coord::CoordError::Expired
                        ) || !held.may_act(Instant::now()) =>
                    {
                        ha.leader.set(None);
                        claim = None;
                        self.events.emit(
                            "leadership_lost",
                            json!({ "site": ha.site(), "error": error.to_string() }),
                        );
                    }
                    Err(_) => {}
                },
                // A cheap read first: campaign only when the key is free, and look often, so
                // that a dead leader's key is taken moments after it expires.
                None => {
                    let outcome = match ha.coord.leader().await {
                        Ok(Some(holder)) => Ok(Err(holder)),
                        // The writer's region leaves the key to the other sites while any is there.
                        Ok(None) if self.should_hand_over(ha).await => {
                            tokio::time::sleep(FOLLOWER_TICK).await;
                            continue;
                        }
                        Ok(None) => ha.coord.try_lead().await,
                        Err(error) => Err(error),
                    };
                    match outcome {
                        Ok(Ok(won)) => {
                            unavailable_reported = false;
                            claim = self.take_office(ha, won).await;
                        }
                        Ok(Err(holder)) => {
                            unavailable_reported = false;
                            self.note_leader(ha, holder);
                            tokio::time::sleep(FOLLOWER_TICK).await;
                            continue;
                        }
                        Err(error) => {
                            if !unavailable_reported {
                                self.events.emit(
                                    "etcd_unavailable",
                                    json!({ "error": error.to_string() }),
                                );
                                unavailable_reported = true;
                            }
                        }
                    }
                }
            }
            tokio::time::sleep(ha.renew_every()).await;
        }
    }

    /// True when this site is the writer's region and another site is present: the leader
    /// belongs elsewhere, or losing this region would first cost a leader election (a TTL) and
    /// only then a failover.
    async fn should_hand_over(&self, ha: &Ha) -> bool {
        let Some(epoch) = self.epoch() else {
            return false;
        };
        if self.topology.region_of(epoch.primary).name != ha.site() {
            return false;
        }
        ha.coord
            .list("sites")
            .await
            .is_ok_and(|present| present.iter().any(|(site, _)| site != ha.site()))
    }

    /// A new leader acts only on the state as etcd holds it now: it reads it before it takes the
    /// fence, and gives the key back if it cannot.
    async fn take_office(&self, ha: &Ha, won: Claim) -> Option<Claim> {
        match self.state.reload().await {
            Ok(()) => {
                ha.note_synced();
                ha.leader.set(Some(won.fence()));
                self.events.emit(
                    "leader_elected",
                    json!({ "site": ha.site(), "token": won.token, "epoch": self.epoch().map(|e| e.epoch) }),
                );
                // Act at once: a promotion the old leader left half done is settled now.
                self.wake.notify_one();
                Some(won)
            }
            Err(error) => {
                self.events
                    .emit("state_unusable", json!({ "error": error.to_string() }));
                let _ = ha.coord.resign(won).await;
                None
            }
        }
    }

    /// Records which site leads, reporting each change.
    fn note_leader(&self, ha: &Ha, holder: String) {
        let previous = ha.shared().leader_site.replace(holder.clone());
        if previous.as_ref() != Some(&holder) {
            self.events.emit(
                "leader_seen",
                json!({ "site": ha.site(), "leader": holder }),
            );
        }
    }

    /// Keeps this site's presence key alive and publishes its view of the writer on it.
    pub async fn keep_presence(self: Arc<Self>) {
        let Some(ha) = self.ha() else { return };
        let mut claim: Option<Claim> = None;
        let mut published: Option<View> = None;
        loop {
            let renewed = match claim.as_mut() {
                Some(held) => match ha.coord.renew(held).await {
                    Ok(()) => true,
                    // The key is gone in etcd (expired, or revoked): the leader may already read
                    // this region as released, so the guard must fence now, not when the old
                    // window runs out.
                    Err(valkey_dr_coord::CoordError::Expired) => {
                        ha.shared().present_until = None;
                        claim = None;
                        false
                    }
                    Err(_) => false,
                },
                None => {
                    let claimed = ha.coord.claim_site().await;
                    ha.shared().presence_tried = true;
                    match claimed {
                        Ok(new) => {
                            claim = Some(new);
                            published = None;
                            true
                        }
                        Err(_) => false,
                    }
                }
            };
            if let Some(held) = &claim {
                if renewed {
                    let mut shared = ha.shared();
                    if shared.present_until.is_none_or(|t| Instant::now() >= t) {
                        shared.present_since = Some(Instant::now());
                    }
                    shared.present_until = Some(held.act_until());
                } else if !held.may_act(Instant::now()) {
                    // The lease may be gone in etcd: start over with a new one.
                    claim = None;
                }
            }
            let view = ha.shared().view.clone();
            if let (Some(held), Some(view)) = (&claim, view)
                && published.as_ref().is_none_or(|p| view_due(p, &view))
                && ha
                    .coord
                    .put_with(
                        held,
                        &format!("views/{}", ha.site()),
                        &serde_json::to_vec(&view).expect("view serializes"),
                    )
                    .await
                    .is_ok()
            {
                published = Some(view);
            }
            tokio::time::sleep(ha.renew_every()).await;
        }
    }

    /// In a data region: pauses the region's writer while this site's presence has lapsed, so
    /// that clients inside an isolated region stop getting writes acknowledged before the leader
    /// may promote elsewhere. The pause is re-issued every 100 ms and expires by itself (never
    /// unpaused here: that could cut short a switchover's own pause).
    ///
    /// Once contact is back the pause goes on until a state read since then says what the paused
    /// node is: still the epoch's writer → lifted; replaced meanwhile → paused until it is a
    /// replica (the leader demotes it), so that it takes no write that the heal would discard.
    pub async fn guard_region(self: Arc<Self>) {
        let Some(ha) = self.ha() else { return };
        let Some(region) = self
            .topology
            .regions
            .iter()
            .position(|r| r.name == ha.site())
        else {
            // A witness holds no data: nothing to guard, for as long as the controller runs (an
            // essential task that ends means a failure, see `Running::task_ended`).
            return std::future::pending().await;
        };
        let every = Duration::from_millis(100);
        let pause = ha.coord.ttl() / 2;
        let mut fenced: Option<NodeId> = None;
        let mut also_fenced = std::collections::BTreeSet::new();
        loop {
            tokio::time::sleep(every).await;
            if !ha.shared().presence_tried {
                continue;
            }
            let now = Instant::now();
            let writer = self.epoch().map(|e| e.primary);
            let local_writer = writer.filter(|w| self.topology.node(*w).region.0 == region);
            let present = ha.present(now);
            let synced = ha.synced_since_present();
            // Only a node replaced while we were cut off needs its role read.
            let fenced_is_replica = match fenced {
                Some(node) if present && synced && writer != Some(node) => {
                    let endpoint = &self.topology.node(node).control_endpoint;
                    Some(
                        self.local_engine
                            .replication(endpoint)
                            .await
                            .is_ok_and(|info| !info.is_primary()),
                    )
                }
                _ => None,
            };
            let keep = guard_target(GuardView {
                present,
                synced_since_present: synced,
                writer,
                local_writer,
                fenced,
                fenced_is_replica,
            });
            match (keep, fenced) {
                (Some(node), _) => {
                    let endpoint = &self.topology.node(node).control_endpoint;
                    let paused = self.local_engine.pause_writes(endpoint, pause).await;
                    if fenced.is_none() {
                        ha.shared().fencing = true;
                        self.events.emit(
                            "self_fenced",
                            json!({ "site": ha.site(), "writer": self.topology.node_name(node), "paused": paused.is_ok() }),
                        );
                    }
                    fenced = Some(node);
                }
                (None, Some(node)) => {
                    ha.shared().fencing = false;
                    self.events.emit(
                        "self_fence_lifted",
                        json!({ "site": ha.site(), "node": self.topology.node_name(node), "still_writer": writer == Some(node) }),
                    );
                    fenced = None;
                }
                (None, None) => {}
            }
            // Cut off, this site cannot know the epoch (a switchover into the region may have
            // committed a moment ago, or this controller started without etcd): every node of
            // the region that answers as a master is paused, not only the writer it remembers.
            if !present {
                self.pause_local_masters(region, keep, pause, &mut also_fenced)
                    .await;
            } else {
                also_fenced.clear();
            }
        }
    }

    /// Pauses every node of `region` (but `skip`, paused already) that answers as a master,
    /// reporting each once per lapse.
    async fn pause_local_masters(
        &self,
        region: usize,
        skip: Option<NodeId>,
        pause: Duration,
        reported: &mut std::collections::BTreeSet<NodeId>,
    ) {
        let Some(ha) = self.ha() else { return };
        for node in &self.topology.regions[region].nodes {
            if Some(*node) == skip {
                continue;
            }
            let endpoint = &self.topology.node(*node).control_endpoint;
            let master = self
                .local_engine
                .replication(endpoint)
                .await
                .is_ok_and(|info| info.is_primary());
            if !master {
                continue;
            }
            let paused = self.local_engine.pause_writes(endpoint, pause).await;
            if reported.insert(*node) {
                self.events.emit(
                    "self_fenced",
                    json!({ "site": ha.site(), "writer": self.topology.node_name(*node), "paused": paused.is_ok(), "reason": "a master of this region while the site is cut off" }),
                );
            }
        }
    }

    /// A pass of a controller that does not lead: read the state and the records from etcd (on
    /// failure keep the last ones), observe, and publish what this site sees of the writer.
    pub(crate) async fn follow_once(
        &self,
        ha: &Ha,
    ) -> Result<crate::PassOutcome, crate::PassError> {
        let probed_at = Instant::now();
        let observations = self.observe_all().await;
        // Without etcd this site keeps the last state and records it read, and says so once.
        let synced = self.sync_from_etcd(ha).await;
        let failing = synced.is_err();
        if failing != std::mem::replace(&mut ha.shared().sync_failing, failing) {
            match synced {
                Err(error) => self
                    .events
                    .emit("etcd_unavailable", json!({ "error": error.to_string() })),
                Ok(()) => self.events.emit("etcd_available", json!({})),
            }
        }
        // Failure detection runs here too, so that a new leader does not start from nothing.
        let down_after = Duration::from_millis(self.config.controller.down_after_ms);
        self.health.lock().expect("health lock").update(
            &observations,
            probed_at,
            Instant::now(),
            down_after,
        );
        let epoch = self.epoch();
        self.publish_view(ha, &observations);
        let analysis =
            valkey_dr_core::analysis::analyze(&self.topology, &observations, epoch.as_ref());
        Ok(crate::PassOutcome {
            observations,
            analysis,
            epoch,
            applied: 0,
            conflicts: Vec::new(),
        })
    }

    /// Reads the state from etcd (the records follow on their own, `follow_records`).
    pub(crate) async fn sync_from_etcd(&self, ha: &Ha) -> Result<(), crate::PassError> {
        if let Err(error) = self.state.reload().await {
            return Err(crate::PassError::Coordination(error.to_string()));
        }
        ha.note_synced();
        Ok(())
    }

    /// Records what this site sees of the epoch's writer, for the leader's majority check.
    pub(crate) fn publish_view(&self, ha: &Ha, observations: &[NodeObservation]) {
        let Some(epoch) = self.epoch() else { return };
        let reachable = observations
            .iter()
            .find(|o| o.node == epoch.primary)
            .is_some_and(|o| o.state.is_ok());
        ha.set_view(View {
            epoch: epoch.epoch,
            writer: self.topology.node_name(epoch.primary),
            writer_reachable: reachable,
            at_ms: now_ms(),
        });
    }

    /// Whether the leader may move the writer out of its region now; `None` in the
    /// single-process shape (nothing to ask).
    pub(crate) async fn cross_region_withheld(&self, writer: NodeId) -> Option<String> {
        let ha = self.ha()?;
        // The writer's region still holding its lease is the one obstacle that time removes by
        // itself: wait for it here, at most a TTL, rather than a whole pass later.
        let waiting_since = Instant::now();
        loop {
            match self.cross_region_verdict_now(ha, writer).await {
                Err(Withheld::RegionStillPresent { .. })
                    if waiting_since.elapsed() < ha.coord.ttl() && ha.leader.is_leader() =>
                {
                    tokio::time::sleep(FOLLOWER_TICK).await;
                }
                Err(withheld) => return Some(withheld.to_string()),
                Ok(()) => return None,
            }
        }
    }

    /// Reads the sites present and their views from etcd and decides.
    async fn cross_region_verdict_now(&self, ha: &Ha, writer: NodeId) -> Result<(), Withheld> {
        let Some(epoch) = self.epoch() else {
            return Ok(());
        };
        let unreadable = |what: &str, error: valkey_dr_coord::CoordError| Withheld::Unreadable {
            reason: format!("cannot read the {what} from etcd: {error}"),
        };
        let present: Vec<String> = ha
            .coord
            .list("sites")
            .await
            .map_err(|e| unreadable("sites", e))?
            .into_iter()
            .map(|(site, _)| site)
            .collect();
        let mut views: Vec<(String, View)> = ha
            .coord
            .list("views")
            .await
            .map_err(|e| unreadable("sites' views", e))?
            .into_iter()
            .filter_map(|(site, bytes)| Some((site, serde_json::from_slice(&bytes).ok()?)))
            .collect();
        // The leader's own, current view (what it published may be a pass old).
        views.retain(|(site, _)| site != ha.site());
        views.push((
            ha.site().to_string(),
            View {
                epoch: epoch.epoch,
                writer: self.topology.node_name(writer),
                writer_reachable: false,
                at_ms: now_ms(),
            },
        ));
        let region = &self.topology.region_of(writer).name;
        cross_region_verdict(&ha.config, region, &present, &views, epoch.epoch, now_ms())
    }
}

/// The engine as the leader uses it: every action on a node first checks that this controller
/// still may act (observing is always allowed). A controller that lost the lease mid-pass stops
/// at the next action instead of finishing on a stale view.
pub struct LeaderOnly {
    pub inner: Arc<dyn Engine>,
    pub leader: Arc<LeaderCell>,
}

impl LeaderOnly {
    fn check(&self, node: &Endpoint, operation: &'static str) -> Result<(), EngineError> {
        if self.leader.is_leader() {
            Ok(())
        } else {
            Err(EngineError {
                node: node.clone(),
                operation,
                kind: FailureKind::Refused,
                reason: "this controller is not the leader".into(),
            })
        }
    }
}

#[async_trait]
impl Engine for LeaderOnly {
    async fn observe(&self, id: NodeId, node: &Endpoint) -> NodeObservation {
        self.inner.observe(id, node).await
    }
    async fn replication(&self, node: &Endpoint) -> Result<ReplicationInfo, EngineError> {
        self.inner.replication(node).await
    }
    async fn ping(&self, node: &Endpoint) -> Result<(), EngineError> {
        self.inner.ping(node).await
    }
    async fn write_heartbeat(
        &self,
        node: &Endpoint,
        now_ms: u64,
        mark: &EpochMark,
    ) -> Result<(), EngineError> {
        self.check(node, "heartbeat")?;
        self.inner.write_heartbeat(node, now_ms, mark).await
    }
    async fn pause_writes(&self, node: &Endpoint, duration: Duration) -> Result<(), EngineError> {
        self.check(node, "pause")?;
        self.inner.pause_writes(node, duration).await
    }
    async fn unpause(&self, node: &Endpoint) -> Result<(), EngineError> {
        self.check(node, "unpause")?;
        self.inner.unpause(node).await
    }
    async fn failover_to(&self, node: &Endpoint, target: &Endpoint) -> Result<(), EngineError> {
        self.check(node, "failover")?;
        self.inner.failover_to(node, target).await
    }
    async fn promote(&self, node: &Endpoint) -> Result<(), EngineError> {
        self.check(node, "promote")?;
        self.inner.promote(node).await
    }
    async fn replicate_from(&self, node: &Endpoint, source: &Endpoint) -> Result<(), EngineError> {
        self.check(node, "replicaof")?;
        self.inner.replicate_from(node, source).await
    }
    async fn kill_clients(&self, node: &Endpoint) -> Result<u64, EngineError> {
        self.check(node, "kill clients")?;
        self.inner.kill_clients(node).await
    }
    async fn persist_role(&self, node: &Endpoint) -> Result<(), EngineError> {
        self.check(node, "config rewrite")?;
        self.inner.persist_role(node).await
    }
    async fn sync_settings(&self, node: &Endpoint) -> Result<SyncSettings, EngineError> {
        self.inner.sync_settings(node).await
    }
    async fn set_write_quorum(
        &self,
        node: &Endpoint,
        quorum: valkey_dr_core::self_fence::WriteQuorum,
    ) -> Result<(), EngineError> {
        self.check(node, "config set")?;
        self.inner.set_write_quorum(node, quorum).await
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
                .map(|(s, v)| (s.to_string(), v.clone()))
                .collect::<Vec<_>>()
        };
        let down = view(false, now - 500, 4);
        let up = view(true, now - 500, 4);
        type Case = (
            &'static str,
            Vec<String>,
            Vec<(String, View)>,
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
