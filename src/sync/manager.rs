//! Executing the replication schedule: a worker watches each open instance's commit counter,
//! and right after a write (or `replication.debounce_ms` after it, when set) — or at each sweep
//! (`replication.sweep_ms`), which catches anything missed, such as changes made by another
//! process — it starts, for every (sharing, member) with undelivered changes whose schedule says
//! it is due, a replication task of its own: a slow or dead peer never blocks requests nor other
//! peers. The schedule itself (backoff with jitter up to `replication.retry_max_ms`, health
//! states, never giving up) is the sans-I/O crate's `schedule::LinkSchedule`; this module gives
//! it the clock and the jitter. Each link's state (see [`Health`], last error, last success,
//! progress) is kept for the status route and CLI, with what the peer wrote and refused, which
//! the link's checkpoint keeps ([`LinkRecord`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hearth_replicator::replicate::{self, Limits};
pub use hearth_replicator::schedule::Health;
use hearth_replicator::schedule::LinkSchedule;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::replication::{self, read_checkpoint, LastRefusal, LinkRecord, SyncError};
use crate::federation::client::FederationError;
use crate::instance::{Instance, Registry};
use crate::sharing::model::{now_rfc3339, MemberStatus, Sharing};
use crate::sharing::{service, Context, MemberIndex, SyncHandle};
use crate::store::StoreError;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub domain: String,
    pub sharing: String,
    /// The member's index (`sync::content` keys its links the same way).
    pub member: MemberIndex,
}

/// What this process knows of one replication link (the rest is in its [`LinkRecord`]).
#[derive(Clone, Debug, Default)]
pub struct PeerState {
    /// When the link runs, its health and failures in a row.
    pub schedule: LinkSchedule,
    pub last_error: Option<String>,
    pub last_success: Option<String>,
    /// Changes processed by the current (or last) run, and how many it had to process.
    pub processed: u64,
    pub total: u64,
    /// The sharing feed's sequence the last runs went past: everything up to it was delivered
    /// or is not for this member. It may be ahead of the saved checkpoint (runs do not write
    /// one after changes filtered out whole, see `replicate::run`); the sweep saves it.
    pub position: u64,
}

/// The replication state of one member, for `GET /sharings/:id/status` (`replication`) and
/// `hearth sharings status`. Counters are CouchDB's replication statistics, kept across
/// restarts with the checkpoint.
#[derive(Clone, Debug, Serialize)]
pub struct LinkStatus {
    pub health: Health,
    pub running: bool,
    pub last_error: Option<String>,
    /// RFC 3339.
    pub last_success: Option<String>,
    /// Failed runs in a row.
    pub attempts: u32,
    pub processed: u64,
    pub total: u64,
    /// The sharing feed's sequence the member acknowledged everything up to.
    pub last_seq: u64,
    pub docs_written: u64,
    pub doc_write_failures: u64,
    pub missing_revisions_found: u64,
    /// Documents the member refused and has not written since.
    pub refused_docs: u64,
    pub last_refusal: Option<LastRefusal>,
}

impl LinkStatus {
    /// `last_seq` is the saved checkpoint, or this process's position when it is further.
    pub fn new(state: PeerState, record: LinkRecord) -> LinkStatus {
        LinkStatus {
            health: state.schedule.health.with_refusals(!record.refused.is_empty()),
            running: state.schedule.running,
            last_error: state.last_error,
            last_success: state.last_success,
            attempts: state.schedule.attempts,
            processed: state.processed,
            total: state.total,
            last_seq: record.last_seq.max(state.position),
            docs_written: record.docs_written,
            doc_write_failures: record.doc_write_failures,
            missing_revisions_found: record.missing_revisions_found,
            refused_docs: record.refused.len() as u64,
            last_refusal: record.last_refusal,
        }
    }
}

/// What this instance refused of the documents one member sent it (`POST
/// /sharings/:id/_bulk_docs`: a read-only member's own edits, documents outside the sharing),
/// counted since this process started: the receiving side's view of the refusals the member's
/// own status shows (`refused_docs`, `last_refusal`), in `GET /sharings/:id/status` as the
/// member's `refused_received`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReceivedRefusals {
    /// Documents refused (each refusal counted, a document sent again counts again).
    pub docs: u64,
    /// Files whose content is refused now (over this instance's quota), as the member names
    /// them: each counted once however often it is sent again, and no more once its content
    /// is taken. Shown as `files`, their count.
    #[serde(rename = "files", serialize_with = "count")]
    pub refused_files: std::collections::BTreeSet<String>,
    /// The last one: `<doctype>/<id>` as the member sent it (its own id), the reason, when
    /// (RFC 3339).
    pub last: Option<LastRefusal>,
}

fn count<S: serde::Serializer>(set: &std::collections::BTreeSet<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(set.len() as u64)
}

pub struct SyncManager {
    /// The origin of the schedules' clock (milliseconds since).
    epoch: Instant,
    states: Mutex<HashMap<PeerKey, PeerState>>,
    /// Refusals of what members sent here, per member (see [`ReceivedRefusals`]).
    received: Mutex<HashMap<PeerKey, ReceivedRefusals>>,
    seen: Mutex<HashMap<String, u64>>,
    wake: Notify,
    /// Signalled when an outbox entry is added, so it is sent without waiting for the sweep.
    outbox: Notify,
    /// Signalled when a replication batch landed on a member (its checkpoint moved): the
    /// content of the files in it may go (`sync::content` waits on it besides its tick).
    landed: Notify,
}

impl Default for SyncManager {
    fn default() -> Self {
        SyncManager {
            epoch: Instant::now(),
            states: Mutex::default(),
            received: Mutex::default(),
            seen: Mutex::default(),
            wake: Notify::new(),
            outbox: Notify::new(),
            landed: Notify::new(),
        }
    }
}

/// The sharing layer wakes the workers through this.
impl SyncHandle for SyncManager {
    fn wake_replication(&self) {
        self.wake();
    }

    fn wake_outbox(&self) {
        self.outbox.notify_one();
    }
}

/// The members a sharing replicates to from this instance. A recipient sends to the owner when
/// the sharing has `sync` rules, even when it may only read: the owner refuses what it sends
/// (`sharing::protocol::READ_ONLY_REFUSAL`), and the link shows those documents refused
/// (`degraded`), never a silent stay at home nor a link merely retrying.
pub fn targets(s: &Sharing) -> Vec<MemberIndex> {
    if !s.active {
        return Vec::new();
    }
    if s.owner {
        (1..s.members.len())
            .filter(|i| s.members[*i].status == MemberStatus::Ready && s.members[*i].outbound.is_some())
            .map(MemberIndex)
            .collect()
    } else {
        if s.members[0].outbound.is_some() && s.has_sync_rule() {
            vec![MemberIndex::OWNER]
        } else {
            Vec::new()
        }
    }
}

impl SyncManager {
    /// Notes the documents refused from what member `key.member` sent (none: nothing changes).
    pub fn note_received_refusals(&self, key: &PeerKey, refused: &[crate::sharing::protocol::Refused]) {
        let Some(last) = refused.last() else { return };
        if let Ok(mut m) = self.received.lock() {
            let r = m.entry(key.clone()).or_default();
            r.docs = r.docs.saturating_add(refused.len() as u64);
            r.last = Some(LastRefusal {
                doc: format!("{}/{}", last.doctype, last.id),
                reason: last.reason.clone(),
                at: now_rfc3339(),
            });
        }
    }

    /// Notes that the content of file `id` (as the member names it) sent by member
    /// `key.member` was refused for `reason` (`http::content`, over the quota): counted once in
    /// `refused_files`, and the last refusal.
    pub fn note_refused_content(&self, key: &PeerKey, id: &str, reason: &str) {
        if let Ok(mut m) = self.received.lock() {
            let r = m.entry(key.clone()).or_default();
            r.refused_files.insert(id.to_owned());
            r.last = Some(LastRefusal {
                doc: format!("{}/{id}", crate::files::DOCTYPE),
                reason: reason.to_owned(),
                at: now_rfc3339(),
            });
        }
    }

    /// Notes that the content of file `id` (as the member names it) was taken: no longer
    /// counted as refused.
    pub fn note_taken_content(&self, key: &PeerKey, id: &str) {
        if let Ok(mut m) = self.received.lock() {
            if let Some(r) = m.get_mut(key) {
                r.refused_files.remove(id);
            }
        }
    }

    /// What was refused of what member `key.member` sent here, since this process started.
    pub fn received_refusals(&self, key: &PeerKey) -> ReceivedRefusals {
        self.received.lock().ok().and_then(|m| m.get(key).cloned()).unwrap_or_default()
    }

    pub fn state(&self, key: &PeerKey) -> PeerState {
        self.states.lock().ok().and_then(|m| m.get(key).cloned()).unwrap_or_default()
    }

    fn with_state<T>(&self, key: &PeerKey, f: impl FnOnce(&mut PeerState) -> T) -> Option<T> {
        self.states.lock().ok().map(|mut m| f(m.entry(key.clone()).or_default()))
    }

    /// The schedules' clock: milliseconds since this manager was made (monotonic).
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Resolves when an outbox entry was added (see [`SyncHandle::wake_outbox`]).
    /// Waits until a replication batch lands on a member (its checkpoint saved) after the last
    /// wait, or at once if one did meanwhile.
    pub async fn batch_landed(&self) {
        self.landed.notified().await;
    }

    pub async fn outbox_added(&self) {
        self.outbox.notified().await
    }

    /// Asks the worker to look at every instance now (after a write through a peer or the CLI).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Replicate this sharing now, even if it is backing off.
    pub fn sync_now(&self, domain: &str, s: &Sharing) {
        for member in targets(s) {
            let key = PeerKey { domain: domain.to_owned(), sharing: s.id().to_owned(), member };
            self.with_state(&key, |st| st.schedule.force());
        }
        self.wake();
    }
}

/// The worker: see the module docs.
///
/// It waits on every open instance's commit counter, so a write is planned at once (after
/// `replication.debounce_ms`, 0 by default): a link that is idle starts its run straight away,
/// and a link with a run in flight is marked dirty and runs again as soon as that run ends,
/// taking every write made meanwhile in one go (writes coalesce while a batch is in flight
/// instead of waiting a fixed delay).
pub async fn run(registry: Arc<Registry>, cx: Arc<Context>, manager: Arc<SyncManager>, cancel: CancellationToken) {
    let debounce = Duration::from_millis(cx.config.replication.debounce_ms);
    let sweep = Duration::from_millis(cx.config.replication.sweep_ms.max(10));
    let mut last_sweep: Option<Instant> = None;
    loop {
        let sweep_due = last_sweep.is_none_or(|t| t.elapsed() >= sweep);
        if sweep_due {
            last_sweep = Some(Instant::now());
        }
        let mut commits = Vec::new();
        for inst in registry.opened() {
            if cancel.is_cancelled() {
                return;
            }
            // Subscribed before the counter is read: a commit after this read wakes the wait below.
            let mut rx = inst.store.subscribe();
            let counter = *rx.borrow_and_update();
            commits.push(rx);
            let changed = manager
                .seen
                .lock()
                .map(|mut seen| seen.insert(inst.domain.to_string(), counter) != Some(counter))
                .unwrap_or(true);
            if changed || sweep_due {
                let started = Instant::now();
                let planned = plan(&cx, &manager, &inst, sweep_due, &cancel).await;
                tracing::debug!(instance = %inst.domain, counter, us = started.elapsed().as_micros() as u64, "planned");
                if let Err(e) = planned {
                    tracing::error!(instance = %inst.domain, error = ?e, "replication planning failed");
                }
            }
        }
        let next_sweep = last_sweep.map_or(sweep, |t| sweep.saturating_sub(t.elapsed()));
        let committed = async {
            if commits.is_empty() {
                std::future::pending::<()>().await;
            }
            // An error (the store closed) wakes the loop too, which then no longer sees it.
            let (_, _, _) = futures_util::future::select_all(commits.iter_mut().map(|rx| Box::pin(rx.changed()))).await;
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = manager.wake.notified() => {}
            _ = committed => {}
            _ = tokio::time::sleep(next_sweep) => {}
        }
        if !debounce.is_zero() {
            tokio::time::sleep(debounce).await;
        }
    }
}

/// Starts a run for each link of `inst` that is due and has changes past its position; at a
/// sweep, saves the position of idle links whose runs went past their saved checkpoint.
async fn plan(
    cx: &Arc<Context>,
    manager: &Arc<SyncManager>,
    inst: &Arc<Instance>,
    sweep: bool,
    cancel: &CancellationToken,
) -> Result<(), StoreError> {
    let sharings = cx.tracking.refresh(inst).await?;
    // An owner's sharing that became active (or was left half taken by a stop) takes its
    // initial set in the background: each part's commit wakes this loop, which sends it.
    for due in cx.tracking.initial_sets_due(inst, &sharings) {
        let (cx, inst, cancel) = (cx.clone(), inst.clone(), cancel.clone());
        tokio::spawn(async move {
            // Stopped with the workers, between two parts (a part is one transaction).
            tokio::select! {
                _ = cancel.cancelled() => {}
                taken = cx.tracking.take_initial_set(&inst, &due) => if let Err(e) = taken {
                    tracing::error!(instance = %inst.domain, sharing = %due.sharing, error = %e, "initial tracking failed");
                },
            }
        });
    }
    for s in sharings {
        for member in targets(&s) {
            let key = PeerKey { domain: inst.domain.to_string(), sharing: s.id().to_owned(), member };
            let now = manager.now_ms();
            let start = manager.with_state(&key, |st| st.schedule.due(now)).unwrap_or(false);
            if !start {
                continue;
            }
            let saved = read_checkpoint(inst, s.id(), member).await?;
            let checkpoint = manager.with_state(&key, |st| st.position).unwrap_or(0).max(saved);
            // One row past the position says whether there is anything to do (an index seek;
            // counting the feed here would cost a scan of the whole sharing after each write).
            let next = inst.store.shared_changes(s.sharing_id(), checkpoint, 1).await?;
            let forced = manager.with_state(&key, |st| st.schedule.take_dirty()).unwrap_or(false);
            if next.is_empty() && !forced {
                if sweep && checkpoint > saved {
                    // No run of this link is under way (it is due), and none starts before
                    // this returns: the position can be written without racing one.
                    if let Err(e) = replication::save_position(inst, s.id(), member, checkpoint).await {
                        tracing::warn!(instance = %inst.domain, sharing = %s.id(), member = member.get(), error = %e,
                            "the replication position could not be saved");
                    }
                }
                continue;
            }
            manager.with_state(&key, |st| {
                st.schedule.started();
                st.processed = 0;
                st.total = 0;
            });
            // Stopped with the workers, even half-way: a run resumes from its checkpoint.
            let run = run_one(cx.clone(), manager.clone(), inst.clone(), s.clone(), member, key);
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => {}
                    _ = run => {}
                }
            });
        }
    }
    Ok(())
}

/// Replicates one (sharing, member) until nothing is left, then records the outcome.
async fn run_one(
    cx: Arc<Context>,
    manager: Arc<SyncManager>,
    inst: Arc<Instance>,
    s: Sharing,
    member: MemberIndex,
    key: PeerKey,
) {
    let limits = Limits {
        batch_size: cx.config.replication.batch_size.max(1),
        max_docs: cx.config.replication.batch_size.max(1),
        max_bytes: cx.config.replication.max_batch_bytes.max(1),
    };
    let started = Instant::now();
    // The content of a files sharing's files follows their documents (`sync::content`).
    let files_sharing = s.rules.iter().any(|r| r.doctype == crate::files::DOCTYPE);
    let position = manager.with_state(&key, |st| st.position).unwrap_or(0);
    let result = match replication::endpoints(cx.federation.clone(), inst.clone(), &s, member, position) {
        Ok((mut source, mut target)) => {
            replicate::run(&mut source, &mut target, &limits, |r| {
                manager.with_state(&key, |st| {
                    st.processed = r.changes_read;
                    st.total = st.total.max(r.changes_read);
                });
                if files_sharing {
                    manager.landed.notify_one();
                }
            })
            .await
        }
        Err(e) => Err(e),
    };
    tracing::debug!(instance = %inst.domain, sharing = %s.id(), member = member.get(), us = started.elapsed().as_micros() as u64,
        sent = result.as_ref().map_or(0, |r| r.docs_sent), "replication run");
    let backoff = super::backoff(&cx.config);
    let now = manager.now_ms();
    let mut retry_in = None;
    let again = manager
        .with_state(&key, |st| match &result {
            Ok(report) => {
                st.position = st.position.max(report.last_seq);
                st.last_error = None;
                st.last_success = Some(now_rfc3339());
                st.schedule.succeeded()
            }
            Err(e) => {
                st.last_error = Some(e.to_string());
                // 403 from a member that has not stored its acceptance yet, 503 from one that
                // is recording it (see `Sharing::accepting_here`).
                if matches!(e, SyncError::Peer(FederationError::Status { status: 403 | 503, .. })) {
                    st.schedule.refused(now, &backoff, rand::random());
                } else {
                    st.schedule.failed(now, &backoff, rand::random());
                }
                retry_in = st.schedule.next_at_ms.map(|at| at.saturating_sub(now));
                false
            }
        })
        .unwrap_or(false);
    if let Some(ms) = retry_in {
        // The retry is due before the next sweep may come: wake the worker then.
        let manager = manager.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            manager.wake();
        });
    }
    match result {
        Ok(report) => {
            if report.docs_sent > 0 || !report.refused.is_empty() {
                tracing::info!(instance = %inst.domain, sharing = %s.id(), member = member.get(), sent = report.docs_sent,
                    refused = report.refused.len(), batches = report.batches, "replicated");
            }
        }
        Err(SyncError::RevokeRequested) => {
            let Some(id) = s.id.clone() else { return };
            tracing::info!(instance = %inst.domain, sharing = %id, "a removal revokes the sharing");
            if let Err(e) = service::end(&cx, &inst, &id).await {
                tracing::error!(instance = %inst.domain, sharing = %id, error = %e, "revocation failed");
            }
        }
        Err(e) => {
            tracing::warn!(instance = %inst.domain, sharing = %s.id(), member = member.get(), error = %e, transient = e.is_transient(),
                "replication failed, will retry");
        }
    }
    if again {
        manager.wake();
    }
}
