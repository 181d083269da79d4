//! The content loop of a files sharing, generic over a source and a target endpoint, like
//! [`crate::replicate`] for documents. Metadata goes first, by the replicator; the bytes of each
//! file follow, per (sharing, member), in one run:
//!
//! 1. read the files whose feed row is past the content checkpoint and at most `upto` (the
//!    replication checkpoint: their metadata reached the member), in feed order;
//! 2. ask the target which of their versions it lacks ([`Need`]);
//! 3. stream each missing version whose bytes are here, largest first, up to [`IN_FLIGHT`] at
//!    once ([`ContentTarget::put_many`]), and save the checkpoint at each file's row once the
//!    target acknowledged it and every file before it (outcomes settle in feed order, whatever
//!    order they were sent in); when all of a batch is settled, at its end.
//!
//! Resuming after any failure or crash is therefore from the last file delivered, and a file the
//! target has is answered [`Need::Present`]: a completed file is never sent again. A file whose
//! bytes are not here yet (a relay waiting for them), or that the target is receiving from
//! elsewhere, is passed over: the run delivers the files after it, keeps the checkpoint before
//! it, and ends as [`Outcome::Blocked`].
//!
//! Such a wait is no failure, and usually a short one (a relay whose bytes are on their way).
//! One that lasts shows: [`Stall`] says when a link has waited on the same files for longer
//! than a bound, and the caller reports it (`degraded`, as a refusal is).
//!
//! The target's side of the contract (see `tests/content_simulation.rs`, which checks both
//! under faults): it answers `Missing` only for the version its current document names and
//! whose bytes it lacks, and makes bytes visible only whole and verified against that document.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;

use futures_util::{Stream, StreamExt};

/// One file to offer: its feed row, its id on the target, its version and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileOffer {
    pub seq: u64,
    /// The file's id in the target's id space.
    pub key: String,
    /// The version (`internal_vfs_id`): content is immutable per version.
    pub version: String,
    pub size: u64,
    /// The MD5 of the content (base64, Cozy's `md5sum`), sent with it; the target checks the
    /// bytes against its own document.
    pub md5sum: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct OfferBatch {
    /// Files among the rows read, in feed order (directories and deletions have no content).
    pub offers: Vec<FileOffer>,
    /// The last row read (checkpointed once the batch is settled).
    pub last_seq: u64,
    /// Whether more rows follow, up to `upto`.
    pub pending: bool,
}

/// What the target needs of a version it is offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Its document names this version and the bytes are not there: send them.
    Missing,
    Present,
    /// Its document does not name this version (replaced since, deleted, refused): nothing to
    /// send; a newer version comes with its own row.
    Stale,
    /// Being received right now (another run, a delayed request).
    InProgress,
}

impl Need {
    pub fn as_str(self) -> &'static str {
        match self {
            Need::Missing => "missing",
            Need::Present => "present",
            Need::Stale => "stale",
            Need::InProgress => "in_progress",
        }
    }

    pub fn parse(s: &str) -> Option<Need> {
        Some(match s {
            "missing" => Need::Missing,
            "present" => Need::Present,
            "stale" => Need::Stale,
            "in_progress" => Need::InProgress,
            _ => return None,
        })
    }
}

/// How a run ended without error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything up to `upto` is delivered.
    Done,
    /// Some files' bytes are not here yet, or the target is receiving them: everything else
    /// was delivered, and the checkpoint stays before the first of them; try again later.
    Blocked,
}

/// Why a run passed over a file and held the checkpoint before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Its bytes are not here (yet): [`ContentSource::read`] answered `None`.
    NotHere,
    /// The target is receiving it from elsewhere ([`Need::InProgress`]).
    Receiving,
    /// The target refused it ([`ContentTarget::refused`]).
    Refused,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContentReport {
    pub files_sent: u64,
    pub bytes_sent: u64,
    pub last_seq: u64,
    /// Files passed over because their bytes are not here (yet) or are being received.
    pub waiting: u64,
    /// Files the target refused ([`ContentTarget::refused`]), also passed over.
    pub refused: u64,
    /// The files passed over (counted in `waiting`), in feed order, and why. Every other file
    /// whose row the run read was delivered or not needed.
    pub held: Vec<(FileOffer, Hold)>,
}

pub trait ContentSource {
    type Error;
    /// The content of one version, as the target's `put` takes it.
    type Content: Send;
    /// The sequence up to which every file's content was delivered.
    fn checkpoint(&mut self) -> impl Future<Output = Result<u64, Self::Error>> + Send;
    /// The files whose row is in `(since, upto]`, at most `limit` rows read.
    fn offers(
        &mut self,
        since: u64,
        upto: u64,
        limit: usize,
    ) -> impl Future<Output = Result<OfferBatch, Self::Error>> + Send;
    /// The bytes of `offer`, `None` when they are not here (yet).
    fn read(&mut self, offer: &FileOffer) -> impl Future<Output = Result<Option<Self::Content>, Self::Error>> + Send;
    /// Records that everything up to `seq` is delivered; `sent`: the file just delivered.
    fn save_checkpoint(
        &mut self,
        seq: u64,
        sent: Option<&FileOffer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

pub trait ContentTarget<C> {
    type Error;
    /// Which of these versions the target lacks; a file not answered counts as `Stale`.
    fn diff(&mut self, offers: &[FileOffer])
        -> impl Future<Output = Result<HashMap<String, Need>, Self::Error>> + Send;
    /// Sends one version's bytes; `Ok` once the target holds them (verified, visible).
    fn put(&mut self, offer: &FileOffer, content: C) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Whether `e`, answered for one file, is the target refusing that file for now (over its
    /// quota, say) rather than a failure of the link: the file is passed over and held like one
    /// whose bytes are not here (the run goes on with the files after it, the checkpoint stays
    /// before it, and the run ends as [`Outcome::Blocked`]). By default no error is.
    fn refused(&self, _e: &Self::Error) -> bool {
        false
    }

    /// Sends the versions `files` yields, each as [`ContentTarget::put`] would, and answers
    /// each one attempted with its outcome, in the order they were answered. A target may send
    /// several at once (up to [`IN_FLIGHT`], taking the next from `files` as soon as one is
    /// answered); by default they go one after the other. After a failure that is not a refusal
    /// no new one is taken from `files` (the ones in flight finish): those not taken are not
    /// answered, and were not attempted.
    fn put_many<F>(&mut self, files: F) -> impl Future<Output = Vec<(FileOffer, Result<(), Self::Error>)>> + Send
    where
        F: Stream<Item = (FileOffer, C)> + Send,
        Self: Send,
        Self::Error: Send,
        C: Send,
    {
        async move {
            let mut files = std::pin::pin!(files);
            let mut out = Vec::new();
            while let Some((offer, content)) = files.next().await {
                let r = self.put(&offer, content).await;
                let failed = r.as_ref().is_err_and(|e| !self.refused(e));
                out.push((offer, r));
                if failed {
                    break;
                }
            }
            out
        }
    }
}

/// Files in flight at once, at most, for a target that sends concurrently
/// ([`ContentTarget::put_many`]): a window over each batch of offers, the next file started as
/// soon as one is answered, so small files are not held up by one another's round trips and
/// fsyncs, nor by a large one, and the receiver's fsyncs of several files overlap.
pub const IN_FLIGHT: usize = 8;

/// How the files a batch lacks are sent: the largest first (in feed order among equals), each
/// read only when the window takes it. A large file then travels while the small ones of its
/// batch go around it, instead of last and alone, and the batch ends on small files: the
/// window drains quickly before the next batch's diff. Which file is sent when does not move
/// the checkpoint: outcomes settle in feed order ([`settle`]).
fn sending_order(offers: &[FileOffer], needs: &HashMap<String, Need>) -> Vec<FileOffer> {
    let mut order: Vec<FileOffer> =
        offers.iter().filter(|o| needs.get(&o.key) == Some(&Need::Missing)).cloned().collect();
    order.sort_by_key(|o| std::cmp::Reverse(o.size));
    order
}

/// What became of each file of a batch, by feed row (`seq`).
struct Sent<E> {
    /// Answered by the target.
    answered: HashMap<u64, Result<(), E>>,
    /// Missing on the target, but their bytes are not here (yet).
    unread: std::collections::HashSet<u64>,
}

/// Settles a batch's outcomes in feed order: each file delivered is saved, with the checkpoint
/// moved past it unless a file before it is held (bytes not here, being received, refused) or
/// was not delivered (failed, or never attempted after a failure); the first failure is
/// answered after every delivery was saved.
#[allow(clippy::too_many_arguments)]
async fn settle<S, T, E>(
    source: &mut S,
    target: &T,
    offers: &[FileOffer],
    needs: &HashMap<String, Need>,
    mut sent: Sent<E>,
    checkpoint: &mut u64,
    held: &mut bool,
    report: &mut ContentReport,
) -> Result<(), E>
where
    S: ContentSource<Error = E>,
    T: ContentTarget<S::Content, Error = E>,
{
    let mut failure = None;
    // A file before this one was not delivered, nor held: the checkpoint stays before it.
    let mut gap = false;
    for offer in offers {
        match needs.get(&offer.key) {
            Some(Need::Missing) if sent.unread.contains(&offer.seq) => {
                *held = true;
                report.waiting += 1;
                report.held.push((offer.clone(), Hold::NotHere));
            }
            Some(Need::Missing) => match sent.answered.remove(&offer.seq) {
                Some(Ok(())) => {
                    report.files_sent += 1;
                    report.bytes_sent += offer.size;
                    if !*held && !gap {
                        *checkpoint = offer.seq;
                        report.last_seq = *checkpoint;
                    }
                    source.save_checkpoint(*checkpoint, Some(offer)).await?;
                }
                Some(Err(e)) if target.refused(&e) => {
                    *held = true;
                    report.waiting += 1;
                    report.refused += 1;
                    report.held.push((offer.clone(), Hold::Refused));
                }
                Some(Err(e)) => {
                    gap = true;
                    failure.get_or_insert(e);
                }
                None => gap = true,
            },
            Some(Need::InProgress) => {
                *held = true;
                report.waiting += 1;
                report.held.push((offer.clone(), Hold::Receiving));
            }
            Some(Need::Present | Need::Stale) | None => {}
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The files a batch sends, read as the target takes them ([`read_next`]).
struct Reading<'a, S: ContentSource> {
    source: &'a mut S,
    order: std::vec::IntoIter<FileOffer>,
    /// Files passed over: their bytes are not here (yet).
    unread: &'a mut std::collections::HashSet<u64>,
    /// A failed read, which ends the stream.
    error: &'a mut Option<S::Error>,
}

/// The next file of `r` whose bytes are here, with its content.
async fn read_next<'a, S: ContentSource + 'a>(r: Reading<'a, S>) -> Option<((FileOffer, S::Content), Reading<'a, S>)> {
    let mut r = r;
    loop {
        let offer = r.order.next()?;
        match r.source.read(&offer).await {
            Ok(Some(content)) => return Some(((offer, content), r)),
            Ok(None) => {
                r.unread.insert(offer.seq);
            }
            Err(e) => {
                *r.error = Some(e);
                return None;
            }
        }
    }
}

/// Delivers the content of the files past the source's checkpoint, up to `upto`.
pub async fn run<S, T, E>(
    source: &mut S,
    target: &mut T,
    upto: u64,
    limit: usize,
) -> Result<(Outcome, ContentReport), E>
where
    S: ContentSource<Error = E> + Send,
    T: ContentTarget<S::Content, Error = E> + Send,
    E: Send,
{
    let mut report = ContentReport::default();
    let mut checkpoint = source.checkpoint().await?;
    report.last_seq = checkpoint;
    // Where reading goes on; ahead of `checkpoint` once a file had to be passed over, so that
    // one file whose bytes never come (lost, or refused on their way here) cannot hold back
    // every file after it. The checkpoint stays before it: a later run offers the files after
    // it again, and the target answers `Present` for those it already holds (never re-sent).
    let mut cursor = checkpoint;
    let mut held = false;
    let finish = |report: ContentReport, held: bool| Ok((if held { Outcome::Blocked } else { Outcome::Done }, report));
    loop {
        if cursor >= upto {
            return finish(report, held);
        }
        let batch = source.offers(cursor, upto, limit.max(1)).await?;
        if batch.last_seq <= cursor && batch.offers.is_empty() {
            return finish(report, held);
        }
        let needs = if batch.offers.is_empty() { HashMap::new() } else { target.diff(&batch.offers).await? };
        let mut unread = std::collections::HashSet::new();
        let mut read_error = None;
        let answered = {
            let reading = Reading {
                source: &mut *source,
                order: sending_order(&batch.offers, &needs).into_iter(),
                unread: &mut unread,
                error: &mut read_error,
            };
            // Boxed: the stream's type, named once, keeps rustc's `Send` check of a task running
            // this (rust-lang/rust#102211) from meeting the lifetimes inside it.
            let files: futures_util::stream::BoxStream<'_, (FileOffer, S::Content)> =
                Box::pin(futures_util::stream::unfold(reading, read_next));
            target.put_many(files).await
        };
        let sent = Sent { answered: answered.into_iter().map(|(o, r)| (o.seq, r)).collect(), unread };
        settle(source, target, &batch.offers, &needs, sent, &mut checkpoint, &mut held, &mut report).await?;
        if let Some(e) = read_error {
            return Err(e);
        }
        cursor = cursor.max(batch.last_seq);
        if !held && batch.last_seq > checkpoint {
            source.save_checkpoint(batch.last_seq, None).await?;
            checkpoint = batch.last_seq;
            report.last_seq = checkpoint;
        }
        if !batch.pending {
            return finish(report, held);
        }
    }
}

/// How long a content link has waited on the same files, as pure state (the caller gives the
/// time, in milliseconds on any monotonic clock, as to `schedule::LinkSchedule`). The files are
/// those a run held because their bytes are not here ([`Hold::NotHere`]) or the target is
/// receiving them from elsewhere ([`Hold::Receiving`]), each named by its key and version (a
/// new version of a file is a new wait). Refused files are not among them: a refusal shows
/// at once.
///
/// The wait starts when a run first holds files, and starts over whenever it moves: a file
/// held before is not held any more (delivered, or no longer needed: the member has it, the
/// file changed or left), or the bytes of a held file are arriving here (a large transfer under
/// way is no stall, however long it takes). Files joining the wait do not restart it. So a
/// relay of many files, whose bytes arrive here one after another (the ones behind a large
/// file wait for it), does not stall while they come. The price: a file whose bytes never come
/// shows once nothing else the link waits for has moved for the bound, not while other held
/// files keep being delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stall {
    /// The files the last run held (key, version).
    held: BTreeSet<(String, String)>,
    /// Since when (ms) the link has waited on them without any moving.
    since_ms: Option<u64>,
}

/// A lasting wait: how many files, and since when (ms, on the caller's clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stalled {
    pub files: usize,
    pub since_ms: u64,
}

impl Stall {
    /// A run ended at `now_ms` holding `held` (nothing held: the wait is over); `arriving`:
    /// bytes of one of them are arriving here now.
    pub fn held(&mut self, now_ms: u64, held: BTreeSet<(String, String)>, arriving: bool) {
        let moved = arriving || self.since_ms.is_none() || !self.held.is_subset(&held);
        if held.is_empty() {
            self.since_ms = None;
        } else if moved {
            self.since_ms = Some(now_ms);
        }
        self.held = held;
    }

    /// A run delivered everything: nothing waits.
    pub fn clear(&mut self) {
        *self = Stall::default();
    }

    /// At `now_ms`, whether the link has waited on the same files for `bound_ms` or more.
    pub fn stalled(&self, now_ms: u64, bound_ms: u64) -> Option<Stalled> {
        let since_ms = self.since_ms?;
        (now_ms.saturating_sub(since_ms) >= bound_ms).then_some(Stalled { files: self.held.len(), since_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two minutes, in ms.
    const BOUND: u64 = 120_000;

    fn files(keys: &[&str]) -> BTreeSet<(String, String)> {
        keys.iter().map(|k| (k.to_string(), format!("{k}-v1"))).collect()
    }

    #[test]
    fn a_wait_on_the_same_files_stalls_past_the_bound_and_ends_when_they_come() {
        let mut w = Stall::default();
        assert_eq!(w.stalled(0, BOUND), None, "nothing held");
        // x is held from 1 s on, looked at every second: no stall before the bound.
        for t in (1_000..=BOUND).step_by(1_000) {
            w.held(t, files(&["x"]), false);
            assert_eq!(w.stalled(t, BOUND), None, "at {t} ms");
        }
        assert_eq!(w.stalled(BOUND + 1_000, BOUND), Some(Stalled { files: 1, since_ms: 1_000 }));
        // y joins the wait: still the same one, since the same time.
        w.held(BOUND + 2_000, files(&["x", "y"]), false);
        assert_eq!(w.stalled(BOUND + 2_000, BOUND), Some(Stalled { files: 2, since_ms: 1_000 }));
        // y is delivered: the wait moved, and starts over for x.
        w.held(BOUND + 3_000, files(&["x"]), false);
        assert_eq!(w.stalled(BOUND + 3_000, BOUND), None);
        assert_eq!(w.stalled(2 * BOUND + 3_000, BOUND), Some(Stalled { files: 1, since_ms: BOUND + 3_000 }));
        // x comes too: nothing is held, nothing stalls, however long after.
        w.held(2 * BOUND + 4_000, BTreeSet::new(), false);
        assert_eq!(w.stalled(10 * BOUND, BOUND), None);
        // A run that delivered everything ends a stall as well.
        w.held(10 * BOUND, files(&["z"]), false);
        assert!(w.stalled(12 * BOUND, BOUND).is_some());
        w.clear();
        assert_eq!(w.stalled(12 * BOUND, BOUND), None);
    }

    #[test]
    fn bytes_arriving_for_a_held_file_are_no_stall_however_long_they_take() {
        let mut w = Stall::default();
        // Three hours of a large file arriving here, looked at every second.
        for t in (0..3 * 3_600_000).step_by(1_000) {
            w.held(t, files(&["big", "behind"]), true);
            assert_eq!(w.stalled(t, BOUND), None, "at {t} ms");
        }
        // The transfer stops (its sender went away): the wait counts from the last time bytes
        // were seen arriving.
        let last = 3 * 3_600_000 - 1_000;
        for t in (last + 1_000..last + BOUND).step_by(1_000) {
            w.held(t, files(&["big", "behind"]), false);
            assert_eq!(w.stalled(t, BOUND), None, "at {t} ms");
        }
        assert_eq!(w.stalled(last + BOUND, BOUND), Some(Stalled { files: 2, since_ms: last }));
    }

    #[test]
    fn a_new_version_of_a_held_file_is_a_new_wait() {
        let mut w = Stall::default();
        w.held(0, files(&["x"]), false);
        assert!(w.stalled(BOUND, BOUND).is_some());
        let v2: BTreeSet<_> = [("x".to_owned(), "x-v2".to_owned())].into();
        w.held(BOUND, v2.clone(), false);
        assert_eq!(w.stalled(BOUND, BOUND), None);
        w.held(2 * BOUND, v2, false);
        assert_eq!(w.stalled(2 * BOUND, BOUND), Some(Stalled { files: 1, since_ms: BOUND }));
    }
}
