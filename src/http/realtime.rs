//! `GET /realtime/events` — Server-Sent Events (the WHATWG HTML `text/event-stream` format) of
//! what changes on the instance, for an app token (`Authorization: Bearer`) or the owner's
//! browser session (the session cookie; `EventSource` cannot send headers, and another site
//! cannot read the stream: no CORS is granted).
//!
//! Events, each `event: NAME` with one JSON `data:` line:
//! - `ready` `{"doctypes": [...]}`: the doctypes whose changes follow.
//! - `change` `{"doctype", "id", "rev", "deleted"}`: a document of a doctype the caller may read
//!   (`GET` in its scope; whole doctypes or the ids it covers) changed. Internal doctypes
//!   (`io.cozy.sharings`, `io.cozy.permissions`...) never appear.
//! - `sharing` `{"sharing_id", "kind", "member"?, "status"?}`: a sharing the caller may read
//!   changed; `kind` is `request` (a new request came in), `accepted`, `refused`, `revoked`
//!   (a member's status), `ended` (the sharing ended for this instance) or `updated`.
//! - `sync` `{"sharing_id", "member", "health", "running", "last_error", "refused_docs"}`:
//!   the replication state to a member changed (the `status` route's terms).
//!
//! - `sharing` of kind `conflict` `{"sharing_id", "kind", "doctype", "id", "revs"}`: a document
//!   of an active sharing now has several live leaf revisions (CouchDB's `_conflicts`), winner
//!   first.
//!
//! One reader per instance (a [`Hub`], started by its first subscriber) reads the changes, the
//! sharings and the sync states once and broadcasts them to every subscriber through a ring of
//! [`HUB_EVENTS`] events; each subscriber filters them with its own permissions. A subscriber
//! that falls behind the ring reads what it missed from the store itself. Each subscriber has a
//! bounded queue of [`QUEUE_EVENTS`] events; a subscriber that does not take them within
//! [`SLOW_CONSUMER_SECS`] of the queue filling is dropped (its stream ends), so a slow or
//! stalled client costs the server at most that queue and the socket's buffers.
//! A comment line every [`KEEPALIVE_SECS`] finds dead connections; then, too, a browser
//! session's stream ends once the session has (logging out).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::callers::AppOrOwner;
use super::{ApiError, ApiResult, AppState, Inst};
use crate::auth::{PermissionSet, Reach, Verb};
use crate::instance::Instance;
use crate::sharing::{self, MemberIndex, MemberStatus, Sharing};
use crate::store::{ChangesQuery, Doctype};

/// Events queued per subscriber at most.
pub const QUEUE_EVENTS: usize = 64;
/// How long a full queue waits for its subscriber before dropping it.
pub const SLOW_CONSUMER_SECS: u64 = 5;
const KEEPALIVE_SECS: u64 = 15;
/// How often sync states are compared (they live in memory, not in the store).
const SYNC_POLL: Duration = Duration::from_secs(1);
/// Rows read per doctype per round.
const CHANGES_BATCH: usize = 200;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/realtime/events", web::get().to(events));
}

/// Counts a live subscriber (one whose starting point is taken) for as long as its feed runs
/// (`Instance::realtime_subscribers`).
struct Subscribed(Arc<Instance>);

impl Subscribed {
    fn new(inst: Arc<Instance>) -> Subscribed {
        inst.realtime_subscribers.fetch_add(1, Ordering::Relaxed);
        Subscribed(inst)
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.0.realtime_subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn events(inst: Inst, caller: AppOrOwner, req: HttpRequest) -> ApiResult<HttpResponse> {
    let svc = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("application state missing")))?
        .clone();
    let AppOrOwner { perms, session } = caller;
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE_EVENTS);
    tokio::spawn(async move {
        if let Err(e) = feed(&svc, &inst.0, &perms, session.as_deref(), &tx).await {
            tracing::debug!(instance = %inst.0.domain, "realtime subscriber ends: {e}");
        }
    });
    let stream =
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|o| o.map(Ok::<_, std::convert::Infallible>)));
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

fn frame(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// Why a feed ends.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("the client went away")]
    Gone,
    #[error("the client did not keep up")]
    TooSlow,
    #[error("the session ended")]
    LoggedOut,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

async fn send(tx: &mpsc::Sender<Bytes>, b: Bytes) -> Result<(), Ended> {
    match tx.try_send(b) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(Ended::Gone),
        Err(mpsc::error::TrySendError::Full(b)) => {
            match tokio::time::timeout(Duration::from_secs(SLOW_CONSUMER_SECS), tx.send(b)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(Ended::Gone),
                Err(_) => Err(Ended::TooSlow),
            }
        }
    }
}

/// The doctypes whose documents the caller may read, and which ids when not all.
fn readable(perms: &PermissionSet) -> BTreeMap<String, Option<Vec<String>>> {
    let mut out = BTreeMap::new();
    for r in &perms.rules {
        let name = r.doctype.as_str();
        if sharing::model::is_internal_doctype(name) || out.contains_key(name) {
            continue;
        }
        match perms.reach(&r.doctype, Verb::Get) {
            Reach::All => {
                out.insert(name.to_owned(), None);
            }
            Reach::Ids(ids) => {
                out.insert(name.to_owned(), Some(ids));
            }
            Reach::None => {}
        }
    }
    out
}

/// Whether the caller may read a sharing: the whole `io.cozy.sharings` doctype, or `GET` on one
/// of its rules' doctypes (as `GET /sharings/:id/status`).
fn may_read(perms: &PermissionSet, s: &Sharing) -> bool {
    let readable = |d: &str| Doctype::parse(d).is_ok_and(|d| perms.reach(&d, Verb::Get) != Reach::None);
    readable(sharing::SHARINGS_DOCTYPE) || s.rules.iter().any(|r| readable(&r.doctype))
}

type SyncView = (String, bool, Option<String>, usize);

/// Events kept for the subscribers of one instance (shared by all of them): a subscriber more
/// than this many events behind catches up from the store.
pub const HUB_EVENTS: usize = 1024;

/// One event as the instance's reader produced it, with what a subscriber needs to filter it.
enum Event {
    /// A document changed: `seq` in its doctype's feed.
    Change { doctype: Doctype, id: String, seq: u64, frame: Bytes },
    /// A `sharing` or `sync` event about this sharing.
    Sharing { sharing: Arc<Sharing>, frame: Bytes },
}

/// The instances' readers: one per instance with subscribers (`GET /realtime/events`), started
/// by the first subscriber and ending within [`SYNC_POLL`] of the last one leaving.
#[derive(Default)]
pub struct Hubs(std::sync::Mutex<HashMap<String, std::sync::Weak<Hub>>>);

/// The reader of one instance: it reads each subscribed doctype's changes, the sharings and
/// the sync states once, and broadcasts the events to every subscriber (each filters them with
/// its own permissions), instead of one reader per subscriber.
pub struct Hub {
    events: tokio::sync::broadcast::Sender<Arc<Event>>,
    /// The doctypes read, and the sequence each is read up to.
    cursors: std::sync::Mutex<HashMap<Doctype, u64>>,
}

impl Hubs {
    fn hub(&self, svc: &web::Data<AppState>, inst: &Arc<Instance>) -> Arc<Hub> {
        let mut hubs = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        hubs.retain(|_, h| h.strong_count() > 0);
        if let Some(h) = hubs.get(inst.domain.as_str()).and_then(std::sync::Weak::upgrade) {
            return h;
        }
        let (events, _) = tokio::sync::broadcast::channel(HUB_EVENTS);
        let hub = Arc::new(Hub { events, cursors: Default::default() });
        hubs.insert(inst.domain.to_string(), Arc::downgrade(&hub));
        let (weak, svc, inst) = (Arc::downgrade(&hub), svc.clone(), inst.clone());
        tokio::spawn(async move {
            if let Err(e) = read(&svc, &inst, weak).await {
                tracing::warn!(instance = %inst.domain, "realtime reader ends: {e}");
            }
        });
        hub
    }
}

impl Hub {
    /// Reads `doctype` from `seq` on, unless it is read already (from an earlier sequence).
    fn follow(&self, doctype: &Doctype, seq: u64) {
        let mut c = self.cursors.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        c.entry(doctype.clone()).or_insert(seq);
    }
}

/// The instance's reader: broadcasts what changes until no subscriber is left.
async fn read(svc: &AppState, inst: &Arc<Instance>, hub: std::sync::Weak<Hub>) -> Result<(), Ended> {
    let store = inst.store.clone();
    let mut commits = store.subscribe();
    let sharings_dt =
        Doctype::parse(sharing::SHARINGS_DOCTYPE).map_err(|e| Ended::Store(crate::store::StoreError::Corrupt(e)))?;
    let mut sharings_seq = store.db_info(&sharings_dt).await?.update_seq;
    let mut known: HashMap<String, Arc<Sharing>> =
        sharing::list(store.as_ref()).await?.into_iter().map(|s| (s.id().to_owned(), Arc::new(s))).collect();
    let mut sync_seen: HashMap<(String, MemberIndex), SyncView> = HashMap::new();
    sync_changes(svc, inst, &known, &mut sync_seen, None).await?;
    let mut poll = tokio::time::interval(SYNC_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = commits.changed() => if changed.is_err() { return Err(Ended::Gone) },
            _ = poll.tick() => {
                let Some(hub) = hub.upgrade() else { return Ok(()) };
                sync_changes(svc, inst, &known, &mut sync_seen, Some(&hub.events)).await?;
                continue;
            }
        }
        let Some(hub) = hub.upgrade() else { return Ok(()) };
        let cursors: Vec<(Doctype, u64)> = hub
            .cursors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(d, s)| (d.clone(), *s))
            .collect();
        for (dt, mut since) in cursors {
            loop {
                let q = ChangesQuery { since, limit: Some(CHANGES_BATCH), all_docs: true, ..Default::default() };
                let changes = store.changes(&dt, &q).await?;
                for row in &changes.rows {
                    let rev = row.changes.first().map(ToString::to_string);
                    let data =
                        json!({"doctype": dt.as_str(), "id": row.id.as_str(), "rev": rev, "deleted": row.deleted});
                    let ev = Event::Change {
                        doctype: dt.clone(),
                        id: row.id.as_str().to_owned(),
                        seq: row.seq,
                        frame: frame("change", &data),
                    };
                    tracing::debug!(instance = %inst.domain, id = %row.id, seq = row.seq, "realtime change");
                    let _ = hub.events.send(Arc::new(ev));
                    if row.changes.len() > 1 {
                        conflicts(inst, &known, &dt, row, &hub.events).await?;
                    }
                }
                since = changes.last_seq.max(since);
                if changes.pending == 0 || changes.rows.is_empty() {
                    break;
                }
            }
            let mut c = hub.cursors.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(s) = c.get_mut(&dt) {
                *s = (*s).max(since);
            }
        }
        let seq = store.db_info(&sharings_dt).await?.update_seq;
        if seq != sharings_seq {
            sharings_seq = seq;
            let now: HashMap<String, Arc<Sharing>> =
                sharing::list(store.as_ref()).await?.into_iter().map(|s| (s.id().to_owned(), Arc::new(s))).collect();
            for (id, s) in &now {
                for ev in lifecycle(known.get(id).map(|s| s.as_ref()), s) {
                    let _ =
                        hub.events.send(Arc::new(Event::Sharing { sharing: s.clone(), frame: frame("sharing", &ev) }));
                }
            }
            known = now;
        }
    }
}

/// A `sharing` event of kind `conflict` for each active sharing covering a document that now
/// has more than one live leaf revision (CouchDB's `_conflicts`): `{"sharing_id", "kind":
/// "conflict", "doctype", "id", "revs"}`, the revisions winner first.
async fn conflicts(
    inst: &Arc<Instance>,
    known: &HashMap<String, Arc<Sharing>>,
    dt: &Doctype,
    row: &crate::store::ChangeRow,
    events: &tokio::sync::broadcast::Sender<Arc<Event>>,
) -> Result<(), Ended> {
    let covering: Vec<&Arc<Sharing>> = known
        .values()
        .filter(|s| s.active)
        .filter(|s| {
            s.rules.iter().any(|r| {
                r.doctype == dt.as_str() && (r.selector.is_some() || r.values.iter().any(|v| v == row.id.as_str()))
            })
        })
        .collect();
    if covering.is_empty() {
        return Ok(());
    }
    let leaves = inst.store.doc_leaves(dt, std::slice::from_ref(&row.id)).await?;
    let live: Vec<String> = leaves
        .get(&row.id)
        .map(|l| l.iter().filter(|(_, deleted)| !deleted).map(|(r, _)| r.to_string()).collect())
        .unwrap_or_default();
    if live.len() < 2 {
        return Ok(());
    }
    for s in covering {
        let data = json!({"sharing_id": s.id(), "kind": "conflict", "doctype": dt.as_str(), "id": row.id.as_str(), "revs": live});
        let _ = events.send(Arc::new(Event::Sharing { sharing: s.clone(), frame: frame("sharing", &data) }));
    }
    Ok(())
}

/// Streams one subscriber's events to `tx` until it goes, falls behind, or (for a browser
/// session) its session ends. Events come from the instance's [`Hub`]; a subscriber that falls
/// more than [`HUB_EVENTS`] behind reads the changes it missed from the store itself (and is
/// told every readable sharing was `updated`), so a slow but live reader loses nothing.
async fn feed(
    svc: &web::Data<AppState>,
    inst: &Arc<Instance>,
    perms: &PermissionSet,
    session: Option<&str>,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), Ended> {
    let store = inst.store.clone();
    let hub = svc.realtime.hub(svc, inst);
    let mut events = hub.events.subscribe();
    let doctypes = readable(perms);
    // What this subscriber was given of each doctype, for catching up.
    let mut delivered: HashMap<Doctype, u64> = HashMap::new();
    for name in doctypes.keys() {
        let Ok(dt) = Doctype::parse(name) else { continue };
        let seq = store.db_info(&dt).await?.update_seq;
        hub.follow(&dt, seq);
        delivered.insert(dt, seq);
    }
    // Counted from here: what happens from now on reaches the subscriber.
    let _live = Subscribed::new(inst.clone());
    send(tx, frame("ready", &json!({"doctypes": doctypes.keys().collect::<Vec<_>>()}))).await?;
    let mut keepalive = tokio::time::interval(Duration::from_secs(KEEPALIVE_SECS));
    keepalive.tick().await;
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = keepalive.tick() => {
                if session.is_some_and(|id| !inst.sessions.is_valid(id)) {
                    return Err(Ended::LoggedOut);
                }
                send(tx, Bytes::from_static(b": keepalive\n\n")).await?;
                continue;
            }
            _ = tx.closed() => return Err(Ended::Gone),
        };
        match ev {
            Ok(ev) => match ev.as_ref() {
                Event::Change { doctype, id, seq, frame } => {
                    let Some(ids) = doctypes.get(doctype.as_str()) else { continue };
                    let Some(done) = delivered.get_mut(doctype) else { continue };
                    if *seq <= *done {
                        continue;
                    }
                    *done = *seq;
                    if ids.as_ref().is_some_and(|ids| !ids.iter().any(|i| i == id)) {
                        continue;
                    }
                    send(tx, frame.clone()).await?;
                }
                Event::Sharing { sharing, frame } => {
                    if may_read(perms, sharing) {
                        send(tx, frame.clone()).await?;
                    }
                }
            },
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                catch_up(inst, perms, &doctypes, &mut delivered, tx).await?;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Err(Ended::Gone),
        }
    }
}

/// What a subscriber that fell behind the hub missed: its doctypes' changes read from the
/// store since what it was given, and an `updated` event for each sharing it may read.
async fn catch_up(
    inst: &Arc<Instance>,
    perms: &PermissionSet,
    doctypes: &BTreeMap<String, Option<Vec<String>>>,
    delivered: &mut HashMap<Doctype, u64>,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), Ended> {
    let store = inst.store.clone();
    for (dt, since) in delivered.iter_mut() {
        let ids = doctypes.get(dt.as_str()).cloned().flatten();
        loop {
            let q = ChangesQuery { since: *since, limit: Some(CHANGES_BATCH), ..Default::default() };
            let changes = store.changes(dt, &q).await?;
            for row in &changes.rows {
                if ids.as_ref().is_some_and(|ids| !ids.iter().any(|i| i == row.id.as_str())) {
                    continue;
                }
                let rev = row.changes.first().map(ToString::to_string);
                let data = json!({"doctype": dt.as_str(), "id": row.id.as_str(), "rev": rev, "deleted": row.deleted});
                send(tx, frame("change", &data)).await?;
            }
            *since = changes.last_seq.max(*since);
            if changes.pending == 0 || changes.rows.is_empty() {
                break;
            }
        }
    }
    for s in sharing::list(store.as_ref()).await?.iter().filter(|s| may_read(perms, s)) {
        send(tx, frame("sharing", &json!({"sharing_id": s.id(), "kind": "updated"}))).await?;
    }
    Ok(())
}

/// What changed in a sharing between two versions, as `sharing` events.
fn lifecycle(before: Option<&Sharing>, after: &Sharing) -> Vec<Value> {
    let id = after.id();
    let Some(before) = before else {
        let kind = if after.owner { "updated" } else { "request" };
        return vec![json!({"sharing_id": id, "kind": kind})];
    };
    if before.rev == after.rev {
        return Vec::new();
    }
    let mut out = Vec::new();
    if before.revoked_at.is_none() && after.revoked_at.is_some() {
        out.push(json!({"sharing_id": id, "kind": "ended"}));
    }
    for (i, m) in after.members.iter().enumerate() {
        let was = before.members.get(i).map(|b| b.status);
        if was == Some(m.status) {
            continue;
        }
        let kind = match m.status {
            MemberStatus::Ready => "accepted",
            MemberStatus::Refused => "refused",
            MemberStatus::Revoked => "revoked",
            _ => "updated",
        };
        out.push(json!({"sharing_id": id, "kind": kind, "member": i, "status": m.status.as_str()}));
    }
    if out.is_empty() {
        out.push(json!({"sharing_id": id, "kind": "updated"}));
    }
    out
}

/// Compares the replication states of the active sharings' links with what was last seen;
/// broadcasts a `sync` event for each that changed (only records them when `events` is `None`).
async fn sync_changes(
    svc: &AppState,
    inst: &Arc<Instance>,
    sharings: &HashMap<String, Arc<Sharing>>,
    seen: &mut HashMap<(String, MemberIndex), SyncView>,
    events: Option<&tokio::sync::broadcast::Sender<Arc<Event>>>,
) -> Result<(), Ended> {
    for (id, s) in sharings.iter().filter(|(_, s)| s.active) {
        for member in crate::sync::manager::targets(s) {
            let key = crate::sync::manager::PeerKey { domain: inst.domain.to_string(), sharing: id.clone(), member };
            let record = crate::sync::replication::read_link(inst, id, member).await?;
            let refused = record.refused.len();
            let status = crate::sync::manager::LinkStatus::new(svc.sync.state(&key), record);
            let health = serde_json::to_value(status.health).ok().and_then(|v| v.as_str().map(str::to_owned));
            let view: SyncView = (health.unwrap_or_default(), status.running, status.last_error.clone(), refused);
            let k = (id.clone(), member);
            if seen.get(&k) == Some(&view) {
                continue;
            }
            if let Some(events) = events {
                let data = json!({"sharing_id": id, "member": member, "health": view.0, "running": view.1,
                    "last_error": view.2, "refused_docs": view.3});
                let _ = events.send(Arc::new(Event::Sharing { sharing: s.clone(), frame: frame("sync", &data) }));
            }
            seen.insert(k, view);
        }
    }
    Ok(())
}
