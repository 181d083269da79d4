//! The sending end of the content channel of files sharings (issue 13, item 2; the receiving
//! end is `http::content`, the storage `files::received`). Metadata goes first, by the
//! replicator (`replication`); the bytes of each file follow here, per (sharing, member):
//!
//! 1. Only what the member acknowledged is looked at: the sharing feed's rows after this
//!    link's *content checkpoint* and up to its replication checkpoint (`last_seq` of the
//!    link's [`LinkRecord`](super::replication::LinkRecord)): the documents there have landed
//!    on the member (or were refused).
//! 2. For the files among them (feed order: a directory, which has no content, comes before
//!    what it holds, and deletions, which have none either, settle at once), the member is
//!    asked which versions it lacks (`POST /sharings/:id/io.cozy.files/_content_diff`, ids in
//!    its id space), then each missing version is streamed with its MD5
//!    (`PUT /sharings/:id/io.cozy.files/:file-id/content?vfs_id=`), which the member checks
//!    against the document it holds before making it visible.
//! 3. The content checkpoint (`_local` `content-<sharing>-<member>` of
//!    `io.hearth.replication`, [`ContentRecord`]) moves past each row once its content is
//!    delivered or not needed (rows settle in feed order, as the member answers each file), and
//!    is written at most every [`CHECKPOINT_EVERY`] while files go: after a cut connection or a
//!    crash of either side the next round starts after the last delivered file it recorded, and
//!    a file the member already has is answered `present` by the diff, so it is never sent
//!    again.
//!
//! A file whose document the member refused (see the link's `LinkRecord::refused`) is passed
//! over: there is nothing to deliver for it.
//!
//! A file whose bytes are not here yet (the owner relaying a recipient's file to the other
//! members before it arrived) is passed over and holds the checkpoint before it, while the
//! files after it go; it goes when the bytes arrive (the receiving route wakes this worker) or
//! at the next retry. Failures and refusals back off as the
//! replicator's do (`replication.retry_base_ms` doubling up to `retry_max_ms`).
//!
//! Such a wait, or one on a file the member says it is receiving, leaves the link `healthy`
//! while it moves: a held file delivered, or bytes of one arriving here
//! ([`Files::arriving`](crate::files::Files::arriving)), start it over. One on the same files
//! that lasts `replication.content_wait_max_ms` (bytes that never come: lost, or only on a
//! member that cannot send them) shows: the link is `degraded` and `last_error` says how many
//! files wait and since when, until they come (`hearth_replicator::content::Stall`).
//!
//! `files_pending` and `bytes_pending` of [`ContentStatus`] are computed from the same state:
//! the files of the sharing whose row is past the content checkpoint, less those the last
//! round that ran to its end delivered or found not needed past a file it held ([`Settled`]:
//! kept in memory, so until the first round after a restart they are counted).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hearth_replicator::content::{
    self, Answer, ContentSource, ContentTarget, FileOffer, Hold, Need, OfferBatch, Outcome, Stall,
};
use hearth_replicator::schedule::{Backoff, Health, LinkSchedule};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::manager::{targets, PeerKey};
use super::replication::{read_checkpoint, read_link, SyncError, CHECKPOINTS_DOCTYPE};
use crate::federation::client::Federation;
use crate::files::{Files, FilesRegistry};
use crate::instance::{Instance, Registry};
use crate::sharing::model::{PeerCredentials, Sharing};
use crate::sharing::protocol::{ContentDiffAnswer, ContentDiffRequest, ContentOffer, MAX_DIFF};
use crate::sharing::xor::IdMap;
use crate::sharing::{self, Context, MemberIndex};
use crate::store::{Body, DocId, Doctype, SharingId, StoreError};

/// Feed rows read per batch of a round: as many as the receiver takes files in one content
/// diff ([`MAX_DIFF`]; asked in [`DIFF_FILES`] parts). A batch's window drains at its end, and
/// its large files go ahead of its small ones only within it (`hearth_replicator::content`):
/// with batches of 200 rows, the 300 MiB file of `hearth-bench folder`, in a later batch of
/// its round, started 0.85 s into a sharing of 2.1 to 2.5 s, and ended with the last small
/// files; in one batch of the round's rows, it starts with the first files.
const BATCH: usize = MAX_DIFF;
/// Files asked about per `_content_diff` request (see `Peer::diff`): two requests per batch,
/// so a receiver whose content store checks each version with a request of its own (S3) has
/// half as many to make before it answers.
const DIFF_FILES: usize = MAX_DIFF / 2;
const _: () = assert!(DIFF_FILES <= MAX_DIFF);
/// How long a link whose files wait for content not on this instance yet waits before it
/// looks again, in milliseconds.
const WAITING_MS: u64 = 1000;
/// How often the worker looks for links whose content is behind, besides being woken (by
/// content arriving, and by each replication batch landing on a member: the content of its
/// files follows at once).
const TICK: Duration = Duration::from_millis(100);

fn checkpoints() -> Doctype {
    Doctype::parse(CHECKPOINTS_DOCTYPE).unwrap_or_else(|_| unreachable!("static doctype"))
}

pub fn record_id(sharing: &str, member: MemberIndex) -> String {
    format!("content-{sharing}-{member}")
}

/// What a (sharing, member) content link has delivered, kept durably (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContentRecord {
    /// The sharing feed's sequence up to which every file's content was delivered to the
    /// member, or was not needed.
    pub last_seq: u64,
    /// Files whose content the member acknowledged, all told (a file is counted once per
    /// version sent).
    pub files_sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
}

pub async fn read_record(inst: &Instance, sharing: &str, member: MemberIndex) -> Result<ContentRecord, StoreError> {
    match inst.store.get_local(&checkpoints(), &record_id(sharing, member)).await {
        Ok(doc) => serde_json::from_str(doc.body.as_str())
            .map_err(|e| StoreError::Corrupt(format!("content checkpoint of sharing {sharing}, member {member}: {e}"))),
        Err(StoreError::NotFound) => Ok(ContentRecord::default()),
        Err(e) => Err(e),
    }
}

async fn write_record(inst: &Instance, sharing: &str, member: MemberIndex, r: &ContentRecord) -> Result<(), SyncError> {
    let body = match serde_json::to_value(r) {
        Ok(Value::Object(m)) => Body::from_map(&m),
        _ => return Err(SyncError::Protocol("content checkpoint does not serialise".into())),
    };
    inst.store.put_local(&checkpoints(), &record_id(sharing, member), body).await?;
    Ok(())
}

/// The content state of one member, for `GET /sharings/:id/status` (`content`) and `hearth
/// sharings status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ContentStatus {
    /// Files of the sharing whose content the member may still lack (past the content
    /// checkpoint), and their bytes.
    pub files_pending: u64,
    pub bytes_pending: u64,
    pub files_sent: u64,
    pub bytes_sent: u64,
    /// The content checkpoint (a sequence of the sharing feed).
    pub last_seq: u64,
    pub running: bool,
    /// As a documents link's (`hearth_replicator::schedule::Health`): `healthy` once a round
    /// delivered everything, `retrying`/`down` while rounds fail, and `degraded` while the
    /// member refuses content it was sent (over its quota, say), or while the link has waited
    /// on the same files for `replication.content_wait_max_ms` (see the module docs): its copy
    /// lacks those bytes.
    pub health: Health,
    /// Files the member refused in the last round (0 once a round delivers everything).
    pub refused_files: u64,
    pub last_error: Option<String>,
}

/// In-process state of one content link: its schedule (the replicator's, as for documents:
/// backoff with jitter, never giving up), the files refused in the last round, how many
/// rounds in a row were refused (the backoff of a refusal), the files it waits for and since
/// when, and the last error.
#[derive(Clone, Debug, Default)]
struct LinkState {
    schedule: LinkSchedule,
    refused: u64,
    refusals: u32,
    stall: Stall,
    /// When the round running now started: a wait is judged as of then while it runs (it may
    /// be delivering the very files waited for, or their bytes arriving, which only its end
    /// tells).
    round_started_ms: Option<u64>,
    /// How far the round running now and the rounds ahead of it have gone (the round's
    /// `upto`, then each round ahead's): a round ahead covers only rows past it, once each.
    covered_upto: u64,
    /// A round ahead runs (see [`Ahead`]).
    ahead_running: bool,
    /// Rows whose files rounds ahead delivered, past the last settled round's `upto`: not
    /// pending, though the checkpoint has not passed them yet.
    delivered_ahead: Arc<Mutex<BTreeSet<u64>>>,
    /// What the rounds of this link did that their record does not say yet ([`Live`]).
    live: Arc<Mutex<Live>>,
    settled: Option<Settled>,
    last_error: Option<String>,
}

/// What the rounds of a link did since they last wrote its record (written at most every
/// [`CHECKPOINT_EVERY`], and only when a file is answered: a large file travelling for minutes
/// after a small one would leave the small one unsaid): the status adds it to the record's.
/// Changed with the record under [`RECORD_WRITES`], so the sum is exact.
#[derive(Clone, Copy, Debug, Default)]
struct Live {
    files_sent: u64,
    bytes_sent: u64,
    /// The checkpoint of the round running, past the record's (0 once it ended).
    last_seq: u64,
}

/// What the last round that ran to its end settled: every file whose row is at most `upto`
/// was delivered or not needed, but for the rows in `held`. A held file keeps the content
/// checkpoint before it while the files after it go: without this, they would count as
/// pending until it is delivered. Still true after later rounds fail (they deliver, never
/// undo), and after edits: a file edited since has its row past `upto`.
#[derive(Clone, Debug, Default)]
struct Settled {
    upto: u64,
    held: BTreeSet<u64>,
}

impl Settled {
    /// Whether the file of this feed row may still lack its content on the member.
    fn pending(settled: Option<&Settled>, seq: u64) -> bool {
        settled.is_none_or(|s| seq > s.upto || s.held.contains(&seq))
    }
}

impl LinkState {
    /// Takes in how a round that ended at `now_ms` went.
    fn settle(&mut self, outcome: &Result<(Outcome, Held), SyncError>, now_ms: u64, backoff: &Backoff, jitter: u64) {
        self.round_started_ms = None;
        // The round wrote its checkpoint to the record before it ended: the record says it.
        if let Ok(mut live) = self.live.lock() {
            live.last_seq = 0;
        }
        if let Ok((_, held)) = outcome {
            self.settled = Some(Settled { upto: held.upto, held: held.seqs.clone() });
            if let Ok(mut ahead) = self.delivered_ahead.lock() {
                ahead.retain(|seq| *seq > held.upto);
            }
        }
        match outcome {
            Ok((Outcome::Done, _)) => {
                self.last_error = None;
                (self.refused, self.refusals) = (0, 0);
                self.stall.clear();
                self.schedule.succeeded();
            }
            // The rest was delivered; these files hold the checkpoint until their bytes are
            // here (shown, never a silent stall).
            // The member refused some (over its quota): the link runs, its member's copy is
            // incomplete (`degraded`, never `healthy`), and it is retried with a growing wait,
            // as a failure is.
            Ok((Outcome::Blocked, held @ Held { refused: Some(reason), count, .. })) => {
                (self.refused, self.refusals) = (*count, self.refusals.saturating_add(1));
                self.stall.held(now_ms, held.waits.clone(), held.arriving);
                self.schedule.succeeded();
                self.schedule.wait(now_ms, backoff.delay_ms(self.refusals - 1, jitter));
                self.last_error = Some(format!("the member refused {count} file(s): {reason}"));
            }
            // The round ran and the member refused nothing: the link is well, and looks again
            // soon; a wait that lasts shows ([`LinkState::view`]).
            Ok((Outcome::Blocked, held)) => {
                self.last_error = Some(format!(
                    "{} file(s) wait for content that is not on this instance yet, or that the member is receiving",
                    held.waiting
                ));
                (self.refused, self.refusals) = (0, 0);
                self.stall.held(now_ms, held.waits.clone(), held.arriving);
                self.schedule.succeeded();
                self.schedule.wait(now_ms, WAITING_MS);
            }
            // The files it waits for are as they were: a failed round saw nothing of them.
            Err(e) => {
                self.schedule.failed(now_ms, backoff, jitter);
                self.last_error = Some(e.to_string());
            }
        }
    }

    /// The health and last error to show at `now_ms`: a wait on the same files for `wait_ms`
    /// or more degrades a link that runs well, as a refusal does, and says so.
    fn view(&self, now_ms: u64, wait_ms: u64) -> (Health, Option<String>) {
        let judged_at = match self.round_started_ms {
            Some(started) if self.schedule.running => started.min(now_ms),
            _ => now_ms,
        };
        let stalled = self.stall.stalled(judged_at, wait_ms);
        let health = self.schedule.health.with_refusals(self.refused > 0 || stalled.is_some());
        let last_error = match stalled {
            // A failing link's error says more.
            Some(stalled) if matches!(self.schedule.health, Health::Idle | Health::Healthy) => {
                let waits = stalled_message(stalled, now_ms);
                Some(match (self.refused, &self.last_error) {
                    (0, _) | (_, None) => waits,
                    (_, Some(refusal)) => format!("{refusal}; {waits}"),
                })
            }
            _ => self.last_error.clone(),
        };
        (health, last_error)
    }
}

/// "N file(s) have waited for content since <RFC 3339>", the time taken back from the
/// schedules' clock.
fn stalled_message(stalled: content::Stalled, now_ms: u64) -> String {
    let ago = time::Duration::milliseconds(now_ms.saturating_sub(stalled.since_ms).min(i64::MAX as u64) as i64);
    let since = (time::OffsetDateTime::now_utc() - ago)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    format!(
        "{} file(s) have waited for content since {since}: not on this instance and none arriving, or the member \
         says it is receiving them",
        stalled.files
    )
}

/// The content senders of one application: per-link state, and the bell that wakes them.
pub struct ContentSender {
    states: Mutex<HashMap<PeerKey, LinkState>>,
    wake: Notify,
    /// The origin of the schedules' clock (milliseconds since); tokio's, so that tests may
    /// pause it.
    epoch: tokio::time::Instant,
    /// `replication.content_wait_max_ms`.
    wait_ms: u64,
}

impl ContentSender {
    pub fn new(config: &crate::config::ReplicationConfig) -> ContentSender {
        ContentSender {
            states: Mutex::default(),
            wake: Notify::new(),
            epoch: tokio::time::Instant::now(),
            wait_ms: config.content_wait_max_ms,
        }
    }

    /// Look at every link now (metadata or content arrived).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The schedules' clock: milliseconds since this sender was made (monotonic).
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn with_state<T>(&self, key: &PeerKey, f: impl FnOnce(&mut LinkState) -> T) -> Option<T> {
        self.states.lock().ok().map(|mut m| f(m.entry(key.clone()).or_default()))
    }

    /// The status of one member's content link, computed from the checkpoint and the feed.
    pub async fn status(
        &self,
        inst: &Instance,
        files: &Files,
        s: &Sharing,
        member: MemberIndex,
    ) -> Result<ContentStatus, SyncError> {
        let key = PeerKey { domain: inst.domain.to_string(), sharing: s.id().to_owned(), member };
        let st = self.with_state(&key, |st| st.clone()).unwrap_or_default();
        let (record, live) = {
            let _writes = RECORD_WRITES.lock().await;
            let record = read_record(inst, s.id(), member).await?;
            (record, st.live.lock().map(|l| *l).unwrap_or_default())
        };
        let last_seq = record.last_seq.max(live.last_seq);
        let ahead = st.delivered_ahead.lock().map(|a| a.clone()).unwrap_or_default();
        let (files_pending, bytes_pending) =
            pending(inst, files, s.sharing_id(), last_seq, st.settled.as_ref(), &ahead).await?;
        let (health, last_error) = st.view(self.now_ms(), self.wait_ms);
        Ok(ContentStatus {
            files_pending,
            bytes_pending,
            files_sent: record.files_sent + live.files_sent,
            bytes_sent: record.bytes_sent + live.bytes_sent,
            last_seq,
            running: st.schedule.running || st.ahead_running,
            health,
            refused_files: st.refused,
            last_error,
        })
    }
}

/// Files of sharing `sharing` whose feed row is past `since` and that neither `settled` nor
/// `ahead` (rows delivered by rounds ahead) says are delivered, and their bytes.
async fn pending(
    inst: &Instance,
    files: &Files,
    sharing: &SharingId,
    since: u64,
    settled: Option<&Settled>,
    ahead: &BTreeSet<u64>,
) -> Result<(u64, u64), SyncError> {
    let doctype = crate::files::doctype();
    let (mut count, mut bytes, mut at) = (0, 0, since);
    loop {
        let rows = inst.store.shared_changes(sharing, at, 1000).await?;
        let Some(last) = rows.last() else { break };
        at = last.seq;
        let full = rows.len() >= 1000;
        let rows: Vec<_> =
            rows.into_iter().filter(|r| Settled::pending(settled, r.seq) && !ahead.contains(&r.seq)).collect();
        let ids: Vec<String> = offered_rows(rows, &doctype).iter().map(|r| r.id.to_string()).collect();
        for size in files.version_sizes(&ids).await.map_err(files_error)?.into_iter().flatten() {
            count += 1;
            bytes += size;
        }
        if !full {
            break;
        }
    }
    Ok((count, bytes))
}

/// Files of sharing `sharing` whose content is not on this instance, and their bytes (what a
/// member receiving content still waits for).
pub async fn missing_here(inst: &Instance, files: &Files, sharing: &SharingId) -> Result<(u64, u64), SyncError> {
    let doctype = crate::files::doctype();
    let (mut count, mut bytes, mut at) = (0, 0, 0);
    loop {
        let rows = inst.store.shared_changes(sharing, at, 1000).await?;
        let Some(last) = rows.last() else { break };
        at = last.seq;
        let ids = file_ids(&rows, &doctype);
        for size in files.missing_content(&ids).await.map_err(files_error)?.into_iter().flatten() {
            count += 1;
            bytes += size;
        }
        if rows.len() < 1000 {
            break;
        }
    }
    Ok((count, bytes))
}

/// The ids of the rows of files (and directories) still in the sharing.
fn file_ids(rows: &[crate::store::tracking::SharedChange], doctype: &Doctype) -> Vec<String> {
    rows.iter().filter(|r| &r.doctype == doctype && !r.removed).map(|r| r.id.to_string()).collect()
}

/// The rows of files (and directories) whose content may be offered to a member: those in the
/// sharing, and those that left it. A file that left before its bytes reached the member is
/// kept there as a dissociated copy naming the version it had (`files::shared`, "Leaving keeps
/// a copy"): the member answers whether that copy lacks the version offered, and takes its
/// bytes only for the version its copy names; and only that version is offered for it
/// (`Files::offered_versions`), so a member that answers otherwise gets nothing made after
/// the file left either.
fn offered_rows(
    rows: Vec<crate::store::tracking::SharedChange>,
    doctype: &Doctype,
) -> Vec<crate::store::tracking::SharedChange> {
    rows.into_iter().filter(|r| &r.doctype == doctype).collect()
}

fn files_error(e: crate::files::FilesError) -> SyncError {
    match e {
        crate::files::FilesError::Store(s) => SyncError::Store(s),
        e => SyncError::Protocol(format!("files: {e}")),
    }
}

fn has_files_rule(s: &Sharing) -> bool {
    s.rules.iter().any(|r| r.doctype == crate::files::DOCTYPE && !r.local)
}

/// The worker: see the module docs.
pub async fn run(
    registry: Arc<Registry>,
    cx: Arc<Context>,
    files: Arc<FilesRegistry>,
    sender: Arc<ContentSender>,
    sync: Arc<super::manager::SyncManager>,
    cancel: CancellationToken,
) {
    loop {
        for inst in registry.opened() {
            if cancel.is_cancelled() {
                return;
            }
            if let Err(e) = plan(&cx, &files, &sender, &inst, &cancel).await {
                tracing::warn!(instance = %inst.domain, error = %e, "content planning failed");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = sender.wake.notified() => {}
            _ = sync.batch_landed() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

async fn plan(
    cx: &Arc<Context>,
    files: &Arc<FilesRegistry>,
    sender: &Arc<ContentSender>,
    inst: &Arc<Instance>,
    cancel: &CancellationToken,
) -> Result<(), SyncError> {
    for s in sharing::list(inst.store.as_ref()).await? {
        if !has_files_rule(&s) {
            continue;
        }
        for member in targets(&s) {
            let key = PeerKey { domain: inst.domain.to_string(), sharing: s.id().to_owned(), member };
            let (idle, ahead_from) = sender
                .with_state(&key, |st| {
                    // Never two rounds of a link over the same rows: a round waits for the round
                    // ahead to end (which wakes this worker).
                    let idle = !st.schedule.running
                        && !st.ahead_running
                        && st.schedule.next_at_ms.is_none_or(|t| t <= sender.now_ms());
                    let ahead = st.schedule.running && !st.ahead_running;
                    (idle, ahead.then_some(st.covered_upto))
                })
                .unwrap_or((false, None));
            if !idle && ahead_from.is_none() {
                continue;
            }
            let link_seq = read_checkpoint(inst, s.id(), member).await?;
            if let Some(since) = ahead_from.filter(|since| !idle && link_seq > *since) {
                start_ahead(cx, files, sender, inst, &s, key, since, link_seq, cancel).await?;
                continue;
            }
            if !idle {
                continue;
            }
            let record = read_record(inst, s.id(), member).await?;
            if link_seq <= record.last_seq {
                continue;
            }
            let f = files.of(inst).await.map_err(files_error)?;
            let now = sender.now_ms();
            let Some(live) = sender.with_state(&key, |st| {
                st.schedule.started();
                st.round_started_ms = Some(now);
                st.covered_upto = link_seq;
                st.live.clone()
            }) else {
                continue;
            };
            let backoff = super::backoff(&cx.config);
            let (cx, sender, inst, s, cancel) = (cx.clone(), sender.clone(), inst.clone(), s.clone(), cancel.clone());
            tokio::spawn(async move {
                // Stopped with the workers, even half-way: a round resumes from its checkpoint.
                let outcome = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return,
                    outcome = round(&cx.federation, &inst, &f, &s, member, link_seq, None, live) => outcome,
                };
                sender.with_state(&key, |st| st.settle(&outcome, sender.now_ms(), &backoff, rand::random()));
                match &outcome {
                    Ok((Outcome::Blocked, Held { refused: Some(reason), count, .. })) => {
                        tracing::warn!(instance = %inst.domain, sharing = %s.id(), member = member.get(), refused = count,
                            reason = %reason, "the member refused file content, will retry");
                    }
                    Err(e) => {
                        tracing::warn!(instance = %inst.domain, sharing = %s.id(), member = member.get(), error = %e,
                            "content transfer failed, will retry");
                    }
                    Ok(_) => {}
                }
                sender.wake();
            });
        }
    }
    Ok(())
}

/// A round ahead of the one running on a link: it delivers the files of the rows past the
/// running round's `upto` (written since it started: in a sharing already running, each upload
/// is a row of its own) without waiting for that round to end, so files written after a large
/// one do not wait for it. It never moves the checkpoint (the running round owns it): the next
/// round, which starts only once the round ahead has ended, offers those rows again and the
/// member answers `present`, so nothing is sent twice; meanwhile they are not counted as
/// pending ([`LinkState::delivered_ahead`]). Each row is covered by one round ahead at most
/// (`LinkState::covered_upto`). Its failures and refusals are left to the rounds that own the
/// checkpoint, which meet them again. One case sends a file twice: a file of the running
/// round's batch not sent yet whose row moves past that round's `upto` with the same version
/// (renamed meanwhile) goes in both; the member answers the second `present` or 409.
struct Ahead {
    since: u64,
    delivered: Arc<Mutex<BTreeSet<u64>>>,
}

/// Starts a round ahead on link `key` for the rows in `(since, upto]` (see [`Ahead`]), unless
/// one runs.
#[allow(clippy::too_many_arguments)]
async fn start_ahead(
    cx: &Arc<Context>,
    files: &Arc<FilesRegistry>,
    sender: &Arc<ContentSender>,
    inst: &Arc<Instance>,
    s: &Sharing,
    key: PeerKey,
    since: u64,
    upto: u64,
    cancel: &CancellationToken,
) -> Result<(), SyncError> {
    let f = files.of(inst).await.map_err(files_error)?;
    let Some((delivered, live)) = sender
        .with_state(&key, |st| {
            let free = st.schedule.running && !st.ahead_running && upto > st.covered_upto;
            if free {
                (st.ahead_running, st.covered_upto) = (true, upto);
            }
            free.then(|| (st.delivered_ahead.clone(), st.live.clone()))
        })
        .flatten()
    else {
        return Ok(());
    };
    let member = key.member;
    let (cx, sender, inst, s, cancel) = (cx.clone(), sender.clone(), inst.clone(), s.clone(), cancel.clone());
    tokio::spawn(async move {
        // The link takes rounds again however this one ends (a panic included).
        struct Ended(Arc<ContentSender>, PeerKey);
        impl Drop for Ended {
            fn drop(&mut self) {
                self.0.with_state(&self.1, |st| st.ahead_running = false);
                self.0.wake();
            }
        }
        let _ended = Ended(sender.clone(), key.clone());
        let ahead = Ahead { since, delivered };
        let outcome = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            outcome = round(&cx.federation, &inst, &f, &s, member, upto, Some(ahead), live) => outcome,
        };
        if let Err(e) = outcome {
            tracing::debug!(instance = %inst.domain, sharing = %s.id(), member = member.get(), error = %e,
                "a round ahead ended early: the next round takes its files");
        }
    });
    Ok(())
}

/// How often, at most, a content link's record is written while files are delivered (see
/// `LocalContent::save_checkpoint`).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// This instance's side of one content link (see `hearth_replicator::content`).
struct LocalContent<'a> {
    inst: &'a Instance,
    files: &'a Files,
    sharing: &'a Sharing,
    member: MemberIndex,
    ids: IdMap,
    record: ContentRecord,
    /// Files delivered (and their bytes) since the record was last written.
    unsaved: (u64, u64),
    /// This is a round ahead (see [`Ahead`]).
    ahead: Option<Ahead>,
    /// What this round did past the record, with the link's other round ([`Live`]).
    live: Arc<Mutex<Live>>,
    /// The record moved since it was last written.
    dirty: bool,
    written_at: Option<Instant>,
}

impl LocalContent<'_> {
    /// Writes the record if it moved since it was last written: the files delivered since are
    /// added to the stored counts, and the checkpoint is set, unless this is a round ahead
    /// (which never moves it). Read and written under [`RECORD_WRITES`], so that a round and a
    /// round ahead on one link count both.
    async fn flush(&mut self) -> Result<(), SyncError> {
        if self.dirty {
            let _writing = RECORD_WRITES.lock().await;
            let mut stored = read_record(self.inst, self.sharing.id(), self.member).await?;
            stored.files_sent += self.unsaved.0;
            stored.bytes_sent += self.unsaved.1;
            if self.ahead.is_none() {
                stored.last_seq = self.record.last_seq;
            }
            write_record(self.inst, self.sharing.id(), self.member, &stored).await?;
            if let Ok(mut live) = self.live.lock() {
                live.files_sent = live.files_sent.saturating_sub(self.unsaved.0);
                live.bytes_sent = live.bytes_sent.saturating_sub(self.unsaved.1);
            }
            self.unsaved = (0, 0);
            self.dirty = false;
            self.written_at = Some(Instant::now());
        }
        Ok(())
    }
}

/// The lock under which content records are read and written back (see `LocalContent::flush`).
static RECORD_WRITES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl ContentSource for LocalContent<'_> {
    type Error = SyncError;
    type Content = crate::files::content::ContentStream;

    async fn checkpoint(&mut self) -> Result<u64, SyncError> {
        self.record = read_record(self.inst, self.sharing.id(), self.member).await?;
        Ok(self.ahead.as_ref().map_or(self.record.last_seq, |a| a.since.max(self.record.last_seq)))
    }

    async fn offers(&mut self, since: u64, upto: u64, limit: usize) -> Result<OfferBatch, SyncError> {
        let rows = self.inst.store.shared_changes(self.sharing.sharing_id(), since, limit).await?;
        let full = rows.len() >= limit;
        let rows: Vec<_> = rows.into_iter().take_while(|r| r.seq <= upto).collect();
        let last_seq = rows.last().map_or(since, |r| r.seq);
        let mut files = offered_rows(rows, &crate::files::doctype());
        // A file whose metadata the member refused (a read-only member's edit, say) has no
        // content to deliver there: its row is passed over.
        let refused = read_link(self.inst, self.sharing.id(), self.member).await?.refused;
        if !refused.is_empty() {
            files.retain(|r| !refused.contains_key(&format!("{}/{}", crate::files::DOCTYPE, r.id)));
        }
        // What is offered for a file that left the sharing (moved out here, or by a member):
        // only the version it had when it left, never anything made after
        // (`Files::offered_versions`).
        let versions = self.files.offered_versions(&files).await.map_err(files_error)?;
        // Read after the versions: a file written since its row was read (moved out, then
        // edited, say) may name a version made after it left; its newer row comes later in the
        // feed and decides for it, so it is passed over here.
        let ids: Vec<DocId> = files.iter().map(|r| r.id.clone()).collect();
        let now = if ids.is_empty() {
            Default::default()
        } else {
            self.inst.store.shared_state(self.sharing.sharing_id(), &crate::files::doctype(), &ids).await?
        };
        let mut offers = Vec::new();
        for (row, version) in files.iter().zip(versions) {
            if now.get(&row.id).is_none_or(|state| state.seq != row.seq) {
                continue;
            }
            if let Some((vfs_id, size, md5sum)) = version {
                let key = self.ids.convert(row.id.as_str());
                offers.push(FileOffer { seq: row.seq, key, version: vfs_id, size, md5sum });
            }
        }
        offers.sort_by_key(|o| o.seq);
        Ok(OfferBatch { offers, last_seq, pending: full && last_seq < upto })
    }

    async fn read(&mut self, offer: &FileOffer) -> Result<Option<Self::Content>, SyncError> {
        let key = crate::files::version_key(&offer.version)
            .ok_or_else(|| SyncError::Protocol(format!("invalid version id {}", offer.version)))?;
        match self.files.content.read(&key, None).await {
            Ok(stream) => Ok(Some(stream)),
            Err(crate::files::ContentError::NotFound) => {
                tracing::debug!(version = %offer.version, "content not here yet: the round waits for it");
                Ok(None)
            }
            Err(e) => Err(SyncError::Protocol(format!("reading version {}: {e}", offer.version))),
        }
    }

    /// After each file delivered the record moves in memory, and is written at most every
    /// [`CHECKPOINT_EVERY`] (and at the end of each batch, and of the round: [`LocalContent::flush`]):
    /// a file delivered after the last write is offered again after a crash, and the member
    /// answers `present` for it, so it is still never sent twice, and a small file no longer
    /// costs a durable write of its own here.
    async fn save_checkpoint(&mut self, seq: u64, sent: Option<&FileOffer>) -> Result<(), SyncError> {
        match (&self.ahead, sent) {
            // A round ahead never moves the checkpoint; what it delivers is no longer pending.
            (Some(_), None) => return Ok(()),
            (Some(ahead), Some(o)) => {
                if let Ok(mut delivered) = ahead.delivered.lock() {
                    delivered.insert(o.seq);
                }
            }
            (None, _) => self.record.last_seq = seq,
        }
        if let Ok(mut live) = self.live.lock() {
            if self.ahead.is_none() {
                live.last_seq = seq;
            }
            if let Some(o) = sent {
                live.files_sent += 1;
                live.bytes_sent += o.size;
            }
        }
        if let Some(o) = sent {
            self.unsaved.0 += 1;
            self.unsaved.1 += o.size;
        }
        self.dirty = true;
        if sent.is_none() || self.written_at.is_none_or(|t| t.elapsed() >= CHECKPOINT_EVERY) {
            self.flush().await?;
        }
        Ok(())
    }
}

/// The member's side: its content routes, called with the credentials it gave us.
struct Peer<'a> {
    federation: &'a Federation,
    inst: &'a Instance,
    sharing: &'a Sharing,
    member: MemberIndex,
    base: Url,
    creds: PeerCredentials,
    /// The reason of the last file the member refused (see [`is_refusal`]).
    refusal: Mutex<Option<String>>,
}

/// A file the member refuses for now, held and retried later: 413, over its quota
/// (`http::content`).
fn is_refusal(e: &SyncError) -> Option<&str> {
    match e {
        SyncError::Peer(crate::federation::client::FederationError::Status { status: 413, reason, .. }) => Some(reason),
        _ => None,
    }
}

impl ContentTarget<crate::files::content::ContentStream> for Peer<'_> {
    type Error = SyncError;

    /// One request per [`DIFF_FILES`] offers, one after the other.
    async fn diff(&mut self, offers: &[FileOffer]) -> Result<HashMap<String, Need>, SyncError> {
        let mut needs = HashMap::with_capacity(offers.len());
        for part in offers.chunks(DIFF_FILES) {
            needs.extend(self.diff_part(part).await?);
        }
        Ok(needs)
    }

    async fn put(&mut self, o: &FileOffer, content: crate::files::content::ContentStream) -> Result<(), SyncError> {
        self.put_one(o, content).await
    }

    fn refused(&self, e: &SyncError) -> bool {
        is_refusal(e).is_some()
    }

    /// Each file goes on its own request, up to `content::IN_FLIGHT` at once, the next one
    /// taken as soon as one is answered, and each answered as soon as its request is: small
    /// files are not held up by one another's round trips and fsyncs, nor by a large one, and
    /// the member's fsyncs of files received at once overlap. After a failure that is not a
    /// refusal no new file is taken; the ones in flight finish.
    async fn put_many<F>(
        &mut self,
        files: F,
        answers: futures_channel::mpsc::UnboundedSender<(FileOffer, Answer<SyncError>)>,
    ) where
        F: futures_util::Stream<Item = (FileOffer, crate::files::content::ContentStream)> + Send,
    {
        use futures_util::StreamExt;
        let mut files = std::pin::pin!(files);
        let mut running = futures_util::stream::FuturesUnordered::new();
        let (mut more, mut failed) = (true, false);
        let this = &*self;
        let start = |(o, c): (FileOffer, crate::files::content::ContentStream)| async move {
            let r = this.put_one(&o, c).await;
            (o, r)
        };
        loop {
            let room = more && !failed;
            if running.is_empty() && !room {
                break;
            }
            // An answer, or with room in the window the next file, whichever comes first (a
            // file not here yet must not keep answers from being settled).
            let next = if room && running.len() < content::IN_FLIGHT && !running.is_empty() {
                match futures_util::future::select(running.next(), files.next()).await {
                    futures_util::future::Either::Left((Some(answered), _)) => Err(answered),
                    // Not empty: never.
                    futures_util::future::Either::Left((None, _)) => continue,
                    futures_util::future::Either::Right((file, _)) => Ok(file),
                }
            } else if room && running.len() < content::IN_FLIGHT {
                Ok(files.next().await)
            } else {
                match running.next().await {
                    Some(answered) => Err(answered),
                    None => break,
                }
            };
            match next {
                Ok(Some(file)) => running.push(start(file)),
                Ok(None) => more = false,
                Err((o, r)) => {
                    // Not `ContentTarget::answer`: rustc's `Send` check of this future fails on a
                    // call of it (rust-lang/rust#102211).
                    let answer = Answer::of(r, |e| is_refusal(e).is_some());
                    failed |= matches!(answer, Answer::Failed(_));
                    let _ = answers.unbounded_send((o, answer));
                }
            }
        }
    }
}

impl Peer<'_> {
    /// Asks the member which of `offers` (at most [`MAX_DIFF`]) it lacks.
    async fn diff_part(&mut self, offers: &[FileOffer]) -> Result<HashMap<String, Need>, SyncError> {
        let body = ContentDiffRequest(
            offers.iter().map(|o| (o.key.clone(), ContentOffer { vfs_id: o.version.clone() })).collect(),
        );
        let path = format!("/sharings/{}/io.cozy.files/_content_diff", self.sharing.id());
        let before = self.creds.clone();
        let answer = self.federation.call_peer(&mut self.creds, &self.base, Method::POST, &path, Some(&body)).await;
        if self.creds != before {
            // Keep refreshed credentials, as the replicator does.
            let (member, creds) = (self.member, self.creds.clone());
            let id = self.sharing.id.clone().ok_or_else(|| SyncError::Protocol("sharing without id".into()))?;
            sharing::update(self.inst.store.as_ref(), &id, |s| {
                if let Some(m) = s.member_mut(member).filter(|m| m.outbound.is_some()) {
                    m.outbound = Some(creds.clone());
                }
                Ok(())
            })
            .await
            .map_err(|e| SyncError::Protocol(format!("storing refreshed credentials: {e}")))?;
        }
        let answer = ContentDiffAnswer::parse(answer?).map_err(SyncError::Protocol)?;
        Ok(answer.0.into_iter().filter_map(|(k, v)| Need::parse(&v).map(|n| (k, n))).collect())
    }

    async fn put_one(&self, o: &FileOffer, content: crate::files::content::ContentStream) -> Result<(), SyncError> {
        let path = format!(
            "/sharings/{}/io.cozy.files/{}/content?vfs_id={}",
            self.sharing.id(),
            crate::files::encode_id(&o.key),
            o.version
        );
        let headers = [("Content-Length", o.size.to_string()), ("Content-MD5", o.md5sum.clone())];
        let progress = Progress::new(o.size);
        let body = reqwest::Body::wrap_stream(progress.counting(content));
        let put = self.federation.put_stream(&self.creds, &self.base, &path, &headers, body, TRANSFER_BOUND);
        watched(put, &progress, STALL, ANSWER)
            .await
            .map_err(|Stalled { sent }| {
                SyncError::Protocol(if sent < o.size {
                    format!(
                        "the transfer of a file stalled: nothing moved for {} s after {sent} of its {} bytes (it is \
                         sent again, whole, at the next try)",
                        STALL.as_secs(),
                        o.size
                    )
                } else {
                    format!(
                        "the member did not answer within {} s of the last of a file's {sent} bytes (it is sent \
                         again at the next try)",
                        ANSWER.as_secs()
                    )
                })
            })?
            .map_err(SyncError::from)
            .inspect_err(|e| {
                if let (Some(reason), Ok(mut last)) = (is_refusal(e), self.refusal.lock()) {
                    *last = Some(reason.to_owned());
                }
            })?;
        Ok(())
    }
}

/// A file's transfer that moves no byte for this long is given up, and tried again with the
/// link's backoff: a slow link delivers a large file however long it takes, as long as it
/// moves (a deadline on the whole transfer cut slow links off for good: each try started over
/// and hit the same deadline). Counted from the last chunk the transfer took, until the last
/// byte is taken; then [`ANSWER`] applies.
const STALL: Duration = Duration::from_secs(60);

/// How long the member may take to answer once it has every byte of a file: it checks the
/// MD5 (computed as the bytes arrive) and makes the file durable (a flush and an fsync of what
/// the disk has not written yet, which a slow disk takes minutes over for a large file; S3
/// completes its upload).
const ANSWER: Duration = Duration::from_secs(15 * 60);

/// The bound on one file's transfer as a whole, far past any real one (a terabyte at 4 MB/s);
/// [`STALL`] is what ends a stuck transfer.
const TRANSFER_BOUND: Duration = Duration::from_secs(3 * 86_400);

/// How far a transfer of `size` bytes has come: bytes taken from its source, and when it last
/// took some (milliseconds since `started`).
struct Progress {
    size: u64,
    started: tokio::time::Instant,
    sent: Arc<std::sync::atomic::AtomicU64>,
    moved_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// A transfer given up by [`watched`], after `sent` bytes.
#[derive(Debug, PartialEq)]
struct Stalled {
    sent: u64,
}

impl Progress {
    fn new(size: u64) -> Progress {
        Progress { size, started: tokio::time::Instant::now(), sent: Arc::default(), moved_ms: Arc::default() }
    }

    /// `stream`, counting what is taken from it.
    fn counting<S, E>(&self, stream: S) -> impl futures_util::Stream<Item = Result<bytes::Bytes, E>>
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, E>>,
    {
        use futures_util::StreamExt;
        use std::sync::atomic::Ordering::Relaxed;
        let (started, sent, moved_ms) = (self.started, self.sent.clone(), self.moved_ms.clone());
        stream.inspect(move |chunk| {
            if let Ok(b) = chunk {
                sent.fetch_add(b.len() as u64, Relaxed);
                moved_ms.store(started.elapsed().as_millis() as u64, Relaxed);
            }
        })
    }

    fn idle(&self) -> Duration {
        let moved = Duration::from_millis(self.moved_ms.load(std::sync::atomic::Ordering::Relaxed));
        self.started.elapsed().saturating_sub(moved)
    }
}

/// Runs `transfer` until it ends, or until its source has not moved for `stall` while bytes
/// are left to send, or for `answer` once all are taken.
async fn watched<T>(
    transfer: impl std::future::Future<Output = T>,
    progress: &Progress,
    stall: Duration,
    answer: Duration,
) -> Result<T, Stalled> {
    tokio::pin!(transfer);
    let look = (stall / 4).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            out = &mut transfer => return Ok(out),
            _ = tokio::time::sleep(look) => {
                let sent_all = progress.sent.load(std::sync::atomic::Ordering::Relaxed) >= progress.size;
                if progress.idle() >= if sent_all { answer } else { stall } {
                    return Err(Stalled { sent: progress.sent.load(std::sync::atomic::Ordering::Relaxed) });
                }
            }
        }
    }
}

/// What a round left held: files waiting, how many of them the member refused, and the reason
/// of the last refusal; the others (key and version: a [`Stall`]'s), and whether the bytes of
/// one of those not here are arriving; the rows of them all, and the row the round went up to
/// (a [`Settled`]).
#[derive(Debug, Default)]
struct Held {
    waiting: u64,
    count: u64,
    refused: Option<String>,
    waits: BTreeSet<(String, String)>,
    arriving: bool,
    seqs: BTreeSet<u64>,
    upto: u64,
}

/// Delivers the content of the files past the content checkpoint, up to `link_seq`.
#[allow(clippy::too_many_arguments)]
async fn round(
    federation: &Federation,
    inst: &Instance,
    files: &Files,
    s: &Sharing,
    member: MemberIndex,
    link_seq: u64,
    ahead: Option<Ahead>,
    live: Arc<Mutex<Live>>,
) -> Result<(Outcome, Held), SyncError> {
    let (base, creds) = super::replication::member_link(s, member)?;
    let mut target = Peer { federation, inst, sharing: s, member, base, creds, refusal: Mutex::new(None) };
    let mut source = LocalContent {
        inst,
        files,
        sharing: s,
        member,
        ids: IdMap::for_member(s, member),
        record: Default::default(),
        unsaved: (0, 0),
        ahead,
        live,
        dirty: false,
        written_at: None,
    };
    let outcome = content::run(&mut source, &mut target, link_seq, BATCH).await;
    // What was delivered is recorded whatever the outcome (a failure ends the round).
    source.flush().await?;
    let (outcome, report) = outcome?;
    if report.files_sent > 0 {
        tracing::info!(instance = %inst.domain, sharing = %s.id(), member = member.get(), files = report.files_sent,
            bytes = report.bytes_sent, "sent file content");
    }
    let refused = if report.refused > 0 { target.refusal.lock().ok().and_then(|r| r.clone()) } else { None };
    let mut held = Held { waiting: report.waiting, count: report.refused, refused, upto: link_seq, ..Held::default() };
    for (offer, why) in &report.held {
        held.seqs.insert(offer.seq);
        match why {
            Hold::NotHere => held.arriving |= files.arriving(&offer.version),
            Hold::Receiving => {}
            Hold::Refused => continue,
        }
        held.waits.insert((offer.key.clone(), offer.version.clone()));
    }
    Ok((outcome, held))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    const MINUTE: Duration = Duration::from_secs(60);

    /// A chunk every `every`, `n` times, then the end (or, with `hang`, never the end).
    fn slow(n: usize, every: Duration, hang: bool) -> impl futures_util::Stream<Item = Result<bytes::Bytes, ()>> {
        futures_util::stream::unfold(0, move |i| async move {
            if i == n {
                if hang {
                    std::future::pending::<()>().await;
                }
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok(bytes::Bytes::from_static(b"0123456789")), i + 1))
        })
    }

    async fn drain(s: impl futures_util::Stream<Item = Result<bytes::Bytes, ()>>) -> usize {
        s.fold(0, |n, c| async move { n + c.map_or(0, |b| b.len()) }).await
    }

    /// A round that ended blocked on file `x` (version `v1`), its bytes arriving here or not.
    fn waiting_on_x(arriving: bool) -> Result<(Outcome, Held), SyncError> {
        let waits = [("x".to_owned(), "v1".to_owned())].into();
        Ok((Outcome::Blocked, Held { waiting: 1, waits, arriving, ..Held::default() }))
    }

    /// Rounds every `WAITING_MS` for `secs` seconds, as the worker runs them while files wait,
    /// each ending as `outcome` says; answers the health shown after each.
    async fn rounds(
        sender: &ContentSender,
        st: &mut LinkState,
        secs: u64,
        outcome: impl Fn() -> Result<(Outcome, Held), SyncError>,
    ) -> Vec<Health> {
        let backoff = Backoff { base_ms: 1000, max_ms: 300_000 };
        let mut shown = Vec::new();
        for _ in 0..secs * 1000 / WAITING_MS {
            tokio::time::advance(Duration::from_millis(WAITING_MS)).await;
            st.schedule.started();
            st.settle(&outcome(), sender.now_ms(), &backoff, 0);
            shown.push(st.view(sender.now_ms(), sender.wait_ms).0);
        }
        shown
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_round_after_a_wait_shows_no_stall_until_it_ends() {
        let config = crate::config::ReplicationConfig { content_wait_max_ms: 120_000, ..Default::default() };
        let sender = ContentSender::new(&config);
        let backoff = Backoff { base_ms: 1000, max_ms: 300_000 };
        let mut st = LinkState::default();
        // A round ends waiting on x, its bytes arriving; the next starts and sends x for 5 min.
        st.schedule.started();
        st.settle(&waiting_on_x(true), sender.now_ms(), &backoff, 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        st.schedule.started();
        st.round_started_ms = Some(sender.now_ms());
        tokio::time::advance(5 * MINUTE).await;
        assert_eq!(st.view(sender.now_ms(), sender.wait_ms).0, Health::Healthy, "x is on its way");
        // It ends still waiting on x (it was not here after all): the wait counts from before.
        st.settle(&waiting_on_x(false), sender.now_ms(), &backoff, 0);
        assert_eq!(st.view(sender.now_ms(), sender.wait_ms).0, Health::Degraded);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_on_the_same_files_past_the_bound_degrades_the_link_until_they_come() {
        let config = crate::config::ReplicationConfig { content_wait_max_ms: 120_000, ..Default::default() };
        let sender = ContentSender::new(&config);
        let mut st = LinkState::default();
        // The first two minutes of a wait: healthy, and saying what it waits for.
        let shown = rounds(&sender, &mut st, 120, || waiting_on_x(false)).await;
        assert!(shown.iter().all(|h| *h == Health::Healthy), "{shown:?}");
        let (_, said) = st.view(sender.now_ms(), sender.wait_ms);
        assert!(said.as_deref().is_some_and(|e| e.starts_with("1 file(s) wait for content")), "{said:?}");
        // Past them, still the same file: degraded, saying how many files and since when.
        let shown = rounds(&sender, &mut st, 1, || waiting_on_x(false)).await;
        assert_eq!(shown, [Health::Degraded]);
        let (_, said) = st.view(sender.now_ms(), sender.wait_ms);
        let said = said.unwrap_or_default();
        assert!(said.starts_with("1 file(s) have waited for content since "), "{said}");
        let since = said.trim_start_matches("1 file(s) have waited for content since ").split(':').next();
        assert!(since.is_some_and(|d| d.len() == 13 && d.contains('T')), "an RFC 3339 time: {said}");
        // A round that fails is retrying (worse), with its own error.
        st.schedule.started();
        let failed: Result<(Outcome, Held), SyncError> = Err(SyncError::Protocol("cut".into()));
        st.settle(&failed, sender.now_ms(), &Backoff { base_ms: 1000, max_ms: 300_000 }, 0);
        assert_eq!(st.view(sender.now_ms(), sender.wait_ms), (Health::Retrying, Some("cut".into())));
        // Bytes of it arriving here (a large transfer, three hours long): no stall.
        let shown = rounds(&sender, &mut st, 3 * 3600, || waiting_on_x(true)).await;
        assert!(shown.iter().all(|h| *h == Health::Healthy), "degraded while bytes arrived");
        // They stop arriving: degraded again once the bound has passed since they last did.
        let shown = rounds(&sender, &mut st, 120, || waiting_on_x(false)).await;
        assert_eq!((shown[118], shown[119]), (Health::Healthy, Health::Degraded));
        // They come: the round delivers everything, and the link is healthy again.
        st.schedule.started();
        st.settle(&Ok((Outcome::Done, Held::default())), sender.now_ms(), &Backoff { base_ms: 1, max_ms: 1 }, 0);
        assert_eq!(st.view(sender.now_ms(), sender.wait_ms), (Health::Healthy, None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_whose_member_refuses_and_whose_other_files_wait_too_long_says_both() {
        let config = crate::config::ReplicationConfig { content_wait_max_ms: 60_000, ..Default::default() };
        let sender = ContentSender::new(&config);
        let mut st = LinkState::default();
        let both = || {
            let waits = [("x".to_owned(), "v1".to_owned())].into();
            let refused = Some("over quota".to_owned());
            Ok((Outcome::Blocked, Held { waiting: 2, count: 1, refused, waits, ..Held::default() }))
        };
        let shown = rounds(&sender, &mut st, 61, both).await;
        assert!(shown.iter().all(|h| *h == Health::Degraded), "a refusal shows at once: {shown:?}");
        let (_, said) = st.view(sender.now_ms(), sender.wait_ms);
        let said = said.unwrap_or_default();
        assert!(
            said.starts_with("the member refused 1 file(s): over quota; 1 file(s) have waited for content since"),
            "{said}"
        );
    }

    #[test]
    fn files_delivered_past_a_held_one_are_not_pending() {
        // The last round went up to row 10 and held the file of row 4.
        let settled = Settled { upto: 10, held: [4].into() };
        for (seq, pending) in [(4, true), (5, false), (10, false), (11, true)] {
            assert_eq!(Settled::pending(Some(&settled), seq), pending, "row {seq}");
        }
        // No round ran to its end yet (a restart): all past the checkpoint.
        assert!(Settled::pending(None, 5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_transfer_that_keeps_moving_is_never_cut() {
        // 300 chunks, one every 50 s: 4 hours and more, each gap under the stall.
        let p = Progress::new(3000);
        let body = p.counting(slow(300, Duration::from_secs(50), false));
        assert_eq!(watched(drain(body), &p, MINUTE, 10 * MINUTE).await, Ok(3000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_committing_a_whole_file_gets_the_answers_time_not_the_stalls() {
        // Every byte sent, then 5 minutes of the member's fsync before it answers.
        let p = Progress::new(50);
        let transfer = async {
            let n = drain(p.counting(slow(5, Duration::from_secs(1), false))).await;
            tokio::time::sleep(5 * MINUTE).await;
            n
        };
        assert_eq!(watched(transfer, &p, MINUTE, 10 * MINUTE).await, Ok(50));
        // An answer that never comes is given up once its time is past.
        let p = Progress::new(50);
        let transfer = async {
            drain(p.counting(slow(5, Duration::from_secs(1), false))).await;
            std::future::pending::<usize>().await
        };
        assert_eq!(watched(transfer, &p, MINUTE, 10 * MINUTE).await, Err(Stalled { sent: 50 }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_transfer_that_stops_moving_is_given_up_with_what_it_sent() {
        let p = Progress::new(100);
        let body = p.counting(slow(7, Duration::from_secs(1), true));
        assert_eq!(watched(drain(body), &p, MINUTE, 10 * MINUTE).await, Err(Stalled { sent: 70 }));
    }
}
