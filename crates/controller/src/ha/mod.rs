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

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use valkey_dr_coord::keys;

use serde_json::json;
use valkey_dr_coord::{Claim, Coordinator, LeaderCell};
use valkey_dr_core::NodeId;
use valkey_dr_core::config::CoordinationConfig;
use valkey_dr_core::observation::NodeObservation;
use valkey_dr_dns::etcd::EtcdRecords;

use crate::Controller;
use crate::clock::now_ms;

mod forward;
mod guard;
mod leader_only;
mod verdict;

pub(crate) use forward::serve_requests;
pub use leader_only::LeaderOnly;
use verdict::view_due;
pub use verdict::{
    GuardView, SeenView, VIEW_MAX_AGE_MS, View, ViewAges, Withheld, cross_region_verdict,
    guard_target,
};

/// How often each controller reads etcd's storage size and alarms.
const STORAGE_CHECK_EVERY: Duration = Duration::from_secs(10);

/// How often a controller that does not lead looks at the leader key.
pub(crate) const FOLLOWER_TICK: Duration = Duration::from_millis(100);

/// How often a site reads the records although its watch reported nothing.
const RECORDS_RESYNC_EVERY: Duration = Duration::from_secs(1);

/// This controller's part in the highly available shape. What its tasks learn is kept in one
/// cell per fact, each written by one task only and read by the others (`tokio::sync::watch`).
pub struct Ha {
    pub coord: Coordinator,
    pub leader: Arc<LeaderCell>,
    pub records: Arc<EtcdRecords>,
    pub config: CoordinationConfig,
    /// This site's presence; written only by [`Ha::keep_presence`].
    presence: watch::Sender<Presence>,
    /// The site that led when this controller last looked; written only by
    /// [`campaign`].
    leader_site: watch::Sender<Option<String>>,
    /// What this site last saw of the writer; written only by passes, published on the site's
    /// key by [`Ha::keep_presence`].
    view: watch::Sender<Option<View>>,
    /// Whether this site pauses its region's writer now; written only by
    /// [`Controller::guard_region`].
    fencing: watch::Sender<bool>,
    /// When the state was last read from etcd successfully; written only by the reads.
    synced_at: watch::Sender<Option<Instant>>,
    /// etcd's storage when last checked; written only by [`Ha::check_storage`].
    storage: watch::Sender<Option<valkey_dr_coord::Storage>>,
}

/// This site's presence key as its keeper last knew it.
#[derive(Default, Clone, Copy)]
struct Presence {
    /// Until when it counts on this controller's clock (None: not held).
    until: Option<Instant>,
    /// Since when it holds again after a lapse (or first).
    since: Option<Instant>,
    /// When the last renewal that etcd answered was sent.
    answered: Option<Instant>,
    /// The first claim was answered (or failed): until then a guard that fenced would pause the
    /// region's writer at every start.
    tried: bool,
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
            presence: watch::Sender::new(Presence::default()),
            leader_site: watch::Sender::new(None),
            view: watch::Sender::new(None),
            fencing: watch::Sender::new(false),
            synced_at: watch::Sender::new(None),
            storage: watch::Sender::new(None),
        }
    }

    /// etcd's storage when last checked (None: not yet, or etcd did not answer).
    pub fn storage(&self) -> Option<valkey_dr_coord::Storage> {
        self.storage.borrow().clone()
    }

    pub fn site(&self) -> &str {
        &self.config.site
    }

    /// The site that leads, as far as this controller knows.
    pub fn leader_site(&self) -> Option<String> {
        if self.leader.is_leader() {
            return Some(self.config.site.clone());
        }
        self.leader_site.borrow().clone()
    }

    /// This site's contact with etcd at `now`, as the region guard reads it.
    fn contact(&self, now: Instant) -> guard::Contact {
        let fence_after = Duration::from_millis(self.config.fence_after_ms());
        guard::contact(&self.presence.borrow(), fence_after, now)
    }

    /// Whether the state was read from etcd after this site's presence last came back.
    fn synced_since_present(&self) -> bool {
        let since = self.presence.borrow().since;
        matches!((*self.synced_at.borrow(), since), (Some(read), Some(since)) if read > since)
    }

    fn note_synced(&self) {
        self.synced_at.send_replace(Some(Instant::now()));
    }

    /// Why this site's DNS server answers SERVFAIL for the names, if it does.
    pub fn records_warning(&self) -> Option<String> {
        let zone = self.records.zone();
        (!zone.is_current()).then(|| match zone.confirmed_ago() {
            Some(ago) => format!(
                "this site's DNS server answers SERVFAIL for the names: etcd last vouched for its copy of the records {} ms ago (the name may have moved since); resolvers ask another site's server",
                ago.as_millis()
            ),
            None => "this site's DNS server answers SERVFAIL for the names: its copy of the records was never loaded from etcd".into(),
        })
    }

    /// How long ago the state was last read from etcd (None: never).
    pub fn state_read_ago(&self) -> Option<Duration> {
        self.synced_at.borrow().map(|at| at.elapsed())
    }

    pub fn set_view(&self, view: View) {
        self.view.send_replace(Some(view));
    }

    /// Whether this site pauses its region's writer now.
    pub fn fencing(&self) -> bool {
        *self.fencing.borrow()
    }

    /// How often leases are renewed: twelve times per TTL, so that a key expires soon after its
    /// holder dies or is cut off.
    fn renew_every(&self) -> Duration {
        self.coord.ttl() / 12
    }
}

/// A controller that campaigns for the leader key (a replication group's, a cluster's): what
/// [`campaign`] needs of it.
#[async_trait::async_trait]
pub(crate) trait Office: Send + Sync + 'static {
    fn ha(&self) -> Option<&Ha>;
    fn events(&self) -> &crate::events::EventSink;
    /// True when this site should leave the leader key to another: it is the writer's region and
    /// another site is present, so that losing this region does not first cost a leader
    /// election (a TTL) and only then a failover.
    async fn should_hand_over(&self, ha: &Ha) -> bool;
    /// Reads the state again from etcd, before a new leader acts on it.
    async fn reload_state(&self) -> Result<(), String>;
    /// The epoch in force, as last read (for the report).
    fn epoch_number(&self) -> Option<u64>;
    /// This controller now leads under `token`: what it does at once (a pass now: a move the
    /// old leader left half done is settled).
    fn took_office(&self, token: i64);
    /// Held while no pass or move runs: leadership is handed over only between them.
    fn idle(&self) -> Option<Box<dyn Send + '_>>;
    /// Carries out an operator's request another site handed over ([`forward::serve_requests`]).
    async fn execute(self: Arc<Self>, request: crate::control::Request) -> crate::control::Reply;
}

/// Campaigns for the leader key and keeps it renewed while it holds it.
pub(crate) async fn campaign(office: Arc<impl Office>) {
    let Some(ha) = office.ha() else { return };
    let mut claim: Option<Claim> = None;
    let mut unavailable_reported = false;
    loop {
        let round = Instant::now();
        match claim.as_mut() {
            Some(held) => match ha.coord.renew_leadership(held).await {
                Ok(()) => {
                    ha.leader.set(Some(held.fence()));
                    if office.should_hand_over(ha).await
                        && let Some(_idle) = office.idle()
                        && let Some(held) = claim.take()
                    {
                        // Between passes and promotions: nothing is left half done.
                        ha.leader.set(None);
                        let _ = ha.coord.resign(held).await;
                        office.events().emit(
                            crate::events::EventKind::LeadershipHandedOver,
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
                    office.events().emit(
                        crate::events::EventKind::LeadershipLost,
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
                    Ok(None) if office.should_hand_over(ha).await => {
                        tokio::time::sleep(FOLLOWER_TICK).await;
                        continue;
                    }
                    Ok(None) => ha.coord.try_lead().await,
                    Err(error) => Err(error),
                };
                match outcome {
                    Ok(Ok(won)) => {
                        unavailable_reported = false;
                        claim = take_office(office.as_ref(), ha, won).await;
                    }
                    Ok(Err(holder)) => {
                        unavailable_reported = false;
                        ha.note_leader(holder, office.events());
                        tokio::time::sleep(FOLLOWER_TICK).await;
                        continue;
                    }
                    Err(error) => {
                        if !unavailable_reported {
                            office.events().emit(
                                crate::events::EventKind::EtcdUnavailable,
                                json!({ "error": error.to_string() }),
                            );
                            unavailable_reported = true;
                        }
                    }
                }
            }
        }
        // On a cadence, not after a pause: a renewal that waited out a member's timeout is
        // followed by the next at once.
        tokio::time::sleep_until((round + ha.renew_every()).into()).await;
    }
}

/// A new leader acts only on the state as etcd holds it now: it reads it before it takes the
/// fence, and gives the key back if it cannot.
async fn take_office(office: &impl Office, ha: &Ha, won: Claim) -> Option<Claim> {
    match office.reload_state().await {
        Ok(()) => {
            ha.note_synced();
            ha.leader.set(Some(won.fence()));
            office.events().emit(
                crate::events::EventKind::LeaderElected,
                json!({ "site": ha.site(), "token": won.token, "epoch": office.epoch_number() }),
            );
            office.took_office(won.token);
            Some(won)
        }
        Err(error) => {
            office.events().emit(
                crate::events::EventKind::StateUnusable,
                json!({ "error": error }),
            );
            let _ = ha.coord.resign(won).await;
            None
        }
    }
}

impl Ha {
    /// Keeps this site's zone a copy of the records in etcd: a watch brings each change moments
    /// after the leader's commit (every site answers with a new writer within milliseconds); a
    /// read every second is the net under it, for a watch that broke without a word.
    pub async fn follow_records(self: Arc<Self>) {
        let ha = self;
        loop {
            let watch = ha.coord.watch(valkey_dr_coord::keys::RECORDS).await;
            // Read after the watch is in place: no change falls between the two.
            let _ = ha.records.sync().await;
            let Ok(mut watch) = watch else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            loop {
                tokio::select! {
                    changed = watch.changed() => match changed {
                        Ok(seen) => {
                            let _ = ha.records.load(&seen).await;
                        }
                        Err(_) => break,
                    },
                    _ = tokio::time::sleep(RECORDS_RESYNC_EVERY) => {
                        let _ = ha.records.sync().await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Checks etcd's storage every 10 s (two small reads; a database nears its quota over days,
    /// an alarm is raised at once): `status` warns before etcd refuses writes, which would fence the writer's region.
    pub async fn check_storage(self: Arc<Self>) {
        let ha = self;
        loop {
            if let Ok(storage) = ha.coord.storage().await {
                ha.storage.send_replace(Some(storage));
            }
            tokio::time::sleep(STORAGE_CHECK_EVERY).await;
        }
    }

    /// Keeps this site's presence key alive and publishes its view of the writer on it.
    pub async fn keep_presence(self: Arc<Self>) {
        let ha = self;
        let mut claim: Option<Claim> = None;
        let mut published: Option<View> = None;
        loop {
            let sent = Instant::now();
            let renewed = match claim.as_mut() {
                Some(held) => match ha.coord.renew_presence(held).await {
                    Ok(()) => true,
                    // The key is gone in etcd (expired, or revoked): the leader may already read
                    // this region as released, so the guard must fence now, not when the old
                    // window runs out.
                    Err(valkey_dr_coord::CoordError::Expired) => {
                        ha.presence.send_modify(|p| p.until = None);
                        claim = None;
                        false
                    }
                    Err(_) => false,
                },
                None => {
                    let claimed = ha.coord.claim_site().await;
                    ha.presence.send_modify(|p| p.tried = true);
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
                    ha.presence.send_modify(|p| {
                        if p.until.is_none_or(|t| Instant::now() >= t) {
                            p.since = Some(Instant::now());
                        }
                        p.until = Some(held.act_until());
                        p.answered = Some(sent);
                    });
                } else if !held.may_act(Instant::now()) {
                    // The lease may be gone in etcd: start over with a new one.
                    claim = None;
                }
            }
            let view = ha.view.borrow().clone();
            if let (Some(held), Some(view)) = (&claim, view)
                && published.as_ref().is_none_or(|p| view_due(p, &view))
                && ha
                    .coord
                    .put_with(
                        held,
                        &keys::view(ha.site()),
                        &serde_json::to_vec(&view).expect("view serializes"),
                    )
                    .await
                    .is_ok()
            {
                published = Some(view);
            }
            // On a cadence: after a slow renewal (an etcd election) the next goes at once, so
            // that the region guard's pause ends as soon as etcd answers again.
            tokio::time::sleep_until((sent + ha.renew_every()).into()).await;
        }
    }

    /// Whether another site's controller keeps its presence key: the writer region's site then
    /// leaves the leader key to it.
    pub(crate) async fn another_site_present(&self) -> bool {
        self.coord
            .list(keys::SITES)
            .await
            .is_ok_and(|present| present.iter().any(|(site, _)| site != self.site()))
    }

    /// Records which site leads, reporting each change.
    fn note_leader(&self, holder: String, events: &crate::events::EventSink) {
        let previous = self.leader_site.send_replace(Some(holder.clone()));
        if previous.as_ref() != Some(&holder) {
            events.emit(
                crate::events::EventKind::LeaderSeen,
                json!({ "site": self.site(), "leader": holder }),
            );
        }
    }
}

#[async_trait::async_trait]
impl Office for Controller {
    fn ha(&self) -> Option<&Ha> {
        self.ha.as_deref()
    }

    fn events(&self) -> &crate::events::EventSink {
        &self.events
    }

    async fn should_hand_over(&self, ha: &Ha) -> bool {
        let Some(epoch) = self.epoch() else {
            return false;
        };
        if self.topology.region_of(epoch.primary).name != ha.site() {
            return false;
        }
        ha.another_site_present().await
    }

    async fn reload_state(&self) -> Result<(), String> {
        self.state.reload().await.map_err(|e| e.to_string())
    }

    fn epoch_number(&self) -> Option<u64> {
        self.epoch().map(|e| e.epoch)
    }

    fn took_office(&self, token: i64) {
        self.claim_nodes(token);
        self.wake.notify_one();
    }

    async fn execute(self: Arc<Self>, request: crate::control::Request) -> crate::control::Reply {
        crate::control::execute(&self, request).await
    }

    fn idle(&self) -> Option<Box<dyn Send + '_>> {
        self.pass_lock
            .try_lock()
            .ok()
            .map(|idle| Box::new(idle) as Box<dyn Send>)
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

    /// Claims every node for this leadership at once, in the background ([`valkey_dr_core::Engine::claim`]): a
    /// predecessor still holding connections there — frozen, and sure on its own clock that it
    /// may act — fails on its next command, whether or not this leader ever acts on that node.
    /// A node not reached now is claimed before this leader's first action on it.
    fn claim_nodes(&self, token: i64) {
        let engine = self.engine.clone();
        let nodes: Vec<_> = self
            .topology
            .nodes
            .iter()
            .map(|n| n.control_endpoint.clone())
            .collect();
        tokio::spawn(async move {
            futures::future::join_all(nodes.iter().map(|node| {
                let engine = engine.clone();
                async move {
                    if let Err(e) = engine.claim(node, token).await {
                        tracing::debug!(%node, error = %e, "node not claimed at taking office");
                    }
                }
            }))
            .await;
        });
    }

    /// A pass of a controller that does not lead: read the state and the records from etcd (on
    /// failure keep the last ones), observe, and publish what this site sees of the writer.
    pub(crate) async fn follow_once(
        &self,
        carried: &mut crate::pass::Carried,
        ha: &Ha,
    ) -> Result<crate::PassOutcome, crate::PassError> {
        let probed_at = Instant::now();
        let observations = self.observe_all().await;
        // Without etcd this site keeps the last state and records it read, and says so once.
        let synced = self.sync_from_etcd(ha).await;
        let failing = synced.is_err();
        if failing != std::mem::replace(&mut carried.reported.etcd_failing, failing) {
            match synced {
                Err(error) => self.events.emit(
                    crate::events::EventKind::EtcdUnavailable,
                    json!({ "error": error.to_string() }),
                ),
                Ok(()) => self
                    .events
                    .emit(crate::events::EventKind::EtcdAvailable, json!({})),
            }
        }
        // Failure detection runs here too, so that a new leader does not start from nothing.
        let down_after = Duration::from_millis(self.config.controller.down_after_ms);
        self.apply_stall(carried);
        carried
            .health
            .update(&observations, probed_at, Instant::now(), down_after);
        let epoch = self.epoch();
        self.publish_view(ha, &observations);
        // What this site waited for while it led is not what anyone waits for now.
        carried.reported.decision.clear();
        carried.reported.withheld.clear();
        self.publish_pass(carried, Some(&observations), None);
        let analysis =
            valkey_dr_core::analysis::analyze(&self.topology, &observations, epoch.as_ref());
        Ok(crate::PassOutcome {
            observations,
            analysis,
            epoch,
            applied: 0,
            conflicts: Vec::new(),
            retry_after: None,
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

    /// Reads the sites present and their views from etcd and decides.
    pub(crate) async fn cross_region_verdict_now(
        &self,
        view_ages: &mut ViewAges,
        ha: &Ha,
        writer: NodeId,
    ) -> Result<(), Withheld> {
        let Some(epoch) = self.epoch() else {
            return Ok(());
        };
        let unreadable = |what: &str, error: valkey_dr_coord::CoordError| Withheld::Unreadable {
            reason: format!("cannot read the {what} from etcd: {error}"),
        };
        let present: Vec<String> = ha
            .coord
            .list(keys::SITES)
            .await
            .map_err(|e| unreadable("sites", e))?
            .into_iter()
            .map(|(site, _)| site)
            .collect();
        let read = ha
            .coord
            .list_versioned(keys::VIEWS)
            .await
            .map_err(|e| unreadable("sites' views", e))?;
        let now = Instant::now();
        let mut views: Vec<SeenView> = read
            .into_iter()
            .filter(|(site, _)| site != ha.site())
            .filter_map(|(site, versioned)| {
                let view = serde_json::from_slice(versioned.value.as_deref()?).ok()?;
                let unchanged_for_ms = view_ages.note(&site, versioned.revision, now);
                Some(SeenView {
                    site,
                    view,
                    unchanged_for_ms,
                })
            })
            .collect();
        // The leader's own, current view (what it published may be a pass old).
        views.push(SeenView {
            site: ha.site().to_string(),
            view: View {
                epoch: epoch.epoch,
                writer: self.topology.node_name(writer),
                writer_reachable: false,
                at_ms: now_ms(),
            },
            unchanged_for_ms: Some(0),
        });
        let region = &self.topology.region_of(writer).name;
        cross_region_verdict(&ha.config, region, &present, &views, epoch.epoch, now_ms())
    }
}
