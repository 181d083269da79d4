//! The content loop of a files sharing, generic over a source and a target endpoint, like
//! [`crate::replicate`] for documents. Metadata goes first, by the replicator; the bytes of each
//! file follow, per (sharing, member), in one run:
//!
//! 1. read the files whose feed row is past the content checkpoint and at most `upto` (the
//!    replication checkpoint: their metadata reached the member), in feed order;
//! 2. ask the target which of their versions it lacks ([`Need`]);
//! 3. stream each missing version whose bytes are here, up to [`IN_FLIGHT`] at once
//!    ([`ContentTarget::put_many`]; files of [`LARGE`] bytes or more first, on up to half the
//!    window, the others in feed order), and save the checkpoint at each file's row once the
//!    target acknowledged it and every file before it (outcomes settle in feed order, as they
//!    come, whatever order the files went in); when all of a batch is settled, at its end.
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

use std::task::Poll;

use futures_channel::mpsc;
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

    /// What became of a put, as [`run`] settles it: delivered, refused for now
    /// ([`ContentTarget::refused`]), or failed.
    fn answer(&self, r: Result<(), Self::Error>) -> Answer<Self::Error> {
        Answer::of(r, |e| self.refused(e))
    }

    /// Sends the versions `files` yields, each as [`ContentTarget::put`] would, and answers each
    /// one it took on `answers` as soon as it is answered ([`ContentTarget::answer`]). A target
    /// may send several at once (up to [`IN_FLIGHT`], taking the next from `files` as soon as
    /// one is answered); by default they go one after the other. After a failure no new one is
    /// taken (the ones in flight finish, and are answered); every one taken is answered.
    fn put_many<F>(
        &mut self,
        files: F,
        answers: mpsc::UnboundedSender<(FileOffer, Answer<Self::Error>)>,
    ) -> impl Future<Output = ()> + Send
    where
        F: Stream<Item = (FileOffer, C)> + Send,
        Self: Send,
        Self::Error: Send,
        C: Send,
    {
        async move {
            let mut files = std::pin::pin!(files);
            while let Some((offer, content)) = files.next().await {
                let r = self.put(&offer, content).await;
                let answer = self.answer(r);
                let failed = matches!(answer, Answer::Failed(_));
                let _ = answers.unbounded_send((offer, answer));
                if failed {
                    break;
                }
            }
        }
    }
}

/// A put as [`run`] settles it (see [`ContentTarget::answer`]).
#[derive(Debug)]
pub enum Answer<E> {
    Delivered,
    Refused(E),
    Failed(E),
}

impl<E> Answer<E> {
    /// The answer to a put's result, `refused` telling a refusal from a failure.
    pub fn of(r: Result<(), E>, refused: impl FnOnce(&E) -> bool) -> Answer<E> {
        match r {
            Ok(()) => Answer::Delivered,
            Err(e) if refused(&e) => Answer::Refused(e),
            Err(e) => Answer::Failed(e),
        }
    }
}

/// Files in flight at once, at most, for a target that sends concurrently
/// ([`ContentTarget::put_many`]): a window over each batch of offers, the next file started as
/// soon as one is answered, so small files are not held up by one another's round trips and
/// fsyncs, and the receiver's fsyncs of several files overlap.
pub const IN_FLIGHT: usize = 8;

/// Files this large or larger go ahead of the others of their batch ([`Batch::next`]), on up
/// to half the window.
pub const LARGE: u64 = 16 * 1024 * 1024;

/// Where each file of a batch stands.
enum Slot<E> {
    /// Nothing to send: the target has it, or does not name it.
    Skip,
    /// Passed over: the target is receiving it, or its bytes are not here.
    Held(Hold),
    /// To send.
    Waiting,
    /// Handed to the target, not answered yet.
    Sent,
    Answered(Answer<E>),
}

/// One batch of offers being sent: which file goes next, and how far the checkpoint may move
/// (outcomes settle in feed order, whatever order the files went in).
struct Batch<'o, E> {
    offers: &'o [FileOffer],
    slots: Vec<Slot<E>>,
    /// Files before this index (in feed order) are settled.
    settled: usize,
    /// A file settled so far was not delivered nor held (failed, or never answered): the
    /// checkpoint stays before it.
    gap: bool,
    failure: Option<E>,
}

impl<'o, E> Batch<'o, E> {
    fn new(offers: &'o [FileOffer], needs: &HashMap<String, Need>) -> Batch<'o, E> {
        let slots = offers
            .iter()
            .map(|o| match needs.get(&o.key) {
                Some(Need::Missing) => Slot::Waiting,
                Some(Need::InProgress) => Slot::Held(Hold::Receiving),
                Some(Need::Present | Need::Stale) | None => Slot::Skip,
            })
            .collect();
        Batch { offers, slots, settled: 0, gap: false, failure: None }
    }

    /// The file to send next (by index), if any waits: the largest waiting one of [`LARGE`]
    /// bytes or more while fewer than half the window carry such files, so that a large file
    /// travels while the small ones go around it instead of last and alone; otherwise the
    /// first waiting in feed order, so small files keep going (and settle, moving the
    /// checkpoint) while large ones travel.
    fn next(&self) -> Option<usize> {
        let waiting = |i: &usize| matches!(self.slots[*i], Slot::Waiting);
        let all = 0..self.offers.len();
        let large_in_flight =
            all.clone().filter(|&i| matches!(self.slots[i], Slot::Sent) && self.offers[i].size >= LARGE).count();
        if large_in_flight < IN_FLIGHT / 2 {
            let largest = all
                .clone()
                .filter(waiting)
                .filter(|&i| self.offers[i].size >= LARGE)
                .max_by_key(|&i| (self.offers[i].size, std::cmp::Reverse(i)));
            if largest.is_some() {
                return largest;
            }
        }
        all.clone().find(|i| waiting(i) && self.offers[*i].size < LARGE).or_else(|| all.clone().find(waiting))
    }

    /// Settles the files answered or held at the head of the feed order: the checkpoint moves
    /// past each one delivered unless one before it is held or was not delivered.
    fn settle(&mut self, checkpoint: &mut u64, held: &mut bool, report: &mut ContentReport) {
        while self.settled < self.offers.len() {
            let offer = &self.offers[self.settled];
            match std::mem::replace(&mut self.slots[self.settled], Slot::Skip) {
                Slot::Skip => {}
                Slot::Held(why) => {
                    *held = true;
                    report.waiting += 1;
                    report.held.push((offer.clone(), why));
                }
                Slot::Answered(Answer::Delivered) => {
                    if !*held && !self.gap {
                        *checkpoint = offer.seq;
                        report.last_seq = *checkpoint;
                    }
                }
                Slot::Answered(Answer::Refused(_)) => {
                    *held = true;
                    report.waiting += 1;
                    report.refused += 1;
                    report.held.push((offer.clone(), Hold::Refused));
                }
                Slot::Answered(Answer::Failed(e)) => {
                    self.gap = true;
                    self.failure.get_or_insert(e);
                }
                slot @ (Slot::Waiting | Slot::Sent) => {
                    self.slots[self.settled] = slot;
                    return;
                }
            }
            self.settled += 1;
        }
    }

    /// Once the target answered all it took: the files it never took (after a failure) or
    /// never answered are not delivered. One never answered without a failure (a target
    /// breaking its contract) holds the run, so the checkpoint never passes it.
    fn finish(&mut self, checkpoint: &mut u64, held: &mut bool, report: &mut ContentReport) {
        for slot in &mut self.slots[self.settled..] {
            if matches!(slot, Slot::Waiting | Slot::Sent) {
                self.gap = true;
                *slot = Slot::Skip;
            }
        }
        if self.gap && self.failure.is_none() {
            *held = true;
        }
        self.settle(checkpoint, held, report);
    }
}

/// What the sending side of a batch is told: a free place in the window, a file answered, or
/// the target done.
enum Event<E> {
    Room,
    Closed,
    Answer(Option<(FileOffer, Answer<E>)>),
}

/// Feeds a batch's files to the target as its window takes them, each read only then, and
/// settles each answer as it comes: a file delivered is saved at once (counted, with the
/// checkpoint as far as the feed order allows), so progress shows while large files travel.
/// Returns a failed read, if one ended the feeding.
#[allow(clippy::too_many_arguments)]
async fn feed<S, E>(
    source: &mut S,
    batch: &mut Batch<'_, E>,
    mut files: mpsc::Sender<(FileOffer, S::Content)>,
    mut answers: mpsc::UnboundedReceiver<(FileOffer, Answer<E>)>,
    checkpoint: &mut u64,
    held: &mut bool,
    report: &mut ContentReport,
) -> Result<Option<E>, E>
where
    S: ContentSource<Error = E>,
{
    let mut read_error = None;
    let mut feeding = true;
    loop {
        if feeding && batch.next().is_none() {
            files.close_channel();
            feeding = false;
        }
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(a) = answers.poll_next_unpin(cx) {
                return Poll::Ready(Event::Answer(a));
            }
            if feeding {
                match files.poll_ready(cx) {
                    Poll::Ready(Ok(())) => return Poll::Ready(Event::Room),
                    Poll::Ready(Err(_)) => return Poll::Ready(Event::Closed),
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Answer(None) => break,
            Event::Answer(Some((offer, answer))) => {
                let Some(i) = batch.offers.iter().position(|o| o.seq == offer.seq) else { continue };
                let delivered = matches!(answer, Answer::Delivered);
                batch.slots[i] = Slot::Answered(answer);
                batch.settle(checkpoint, held, report);
                if delivered {
                    report.files_sent += 1;
                    report.bytes_sent += offer.size;
                    source.save_checkpoint(*checkpoint, Some(&offer)).await?;
                }
            }
            Event::Closed => feeding = false,
            Event::Room => {
                let Some(i) = batch.next() else { continue };
                let offer = batch.offers[i].clone();
                match source.read(&offer).await {
                    Ok(Some(content)) => {
                        batch.slots[i] = Slot::Sent;
                        if files.start_send((offer, content)).is_err() {
                            batch.slots[i] = Slot::Waiting;
                            feeding = false;
                        }
                    }
                    Ok(None) => {
                        batch.slots[i] = Slot::Held(Hold::NotHere);
                        batch.settle(checkpoint, held, report);
                    }
                    Err(e) => {
                        read_error = Some(e);
                        files.close_channel();
                        feeding = false;
                    }
                }
            }
        }
    }
    batch.finish(checkpoint, held, report);
    Ok(read_error)
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
        let offers = source.offers(cursor, upto, limit.max(1)).await?;
        if offers.last_seq <= cursor && offers.offers.is_empty() {
            return finish(report, held);
        }
        let needs = if offers.offers.is_empty() { HashMap::new() } else { target.diff(&offers.offers).await? };
        let mut batch = Batch::new(&offers.offers, &needs);
        // A window of one file ahead of the target's: it takes the next as soon as it has room.
        let (files_tx, files_rx) = mpsc::channel(0);
        let (answers_tx, answers_rx) = mpsc::unbounded();
        let (_, fed) = futures_util::future::join(
            target.put_many(files_rx, answers_tx),
            feed(source, &mut batch, files_tx, answers_rx, &mut checkpoint, &mut held, &mut report),
        )
        .await;
        let read_error = fed?;
        if let Some(e) = batch.failure.take().or(read_error) {
            return Err(e);
        }
        cursor = cursor.max(offers.last_seq);
        if !held && offers.last_seq > checkpoint {
            source.save_checkpoint(offers.last_seq, None).await?;
            checkpoint = offers.last_seq;
            report.last_seq = checkpoint;
        }
        if !offers.pending {
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

    fn offer(seq: u64, size: u64) -> FileOffer {
        FileOffer { seq, key: format!("f{seq}"), version: format!("v{seq}"), size, md5sum: String::new() }
    }

    #[test]
    fn large_files_go_first_on_half_the_window_and_the_others_in_feed_order() {
        // Six large files (seq 1..=6, the later the larger), then four small ones.
        let offers: Vec<FileOffer> = (1..=10).map(|seq| offer(seq, if seq <= 6 { LARGE + seq } else { 10 })).collect();
        let needs = offers.iter().map(|o| (o.key.clone(), Need::Missing)).collect();
        let mut batch: Batch<'_, ()> = Batch::new(&offers, &needs);
        let mut picked = Vec::new();
        while let Some(i) = batch.next() {
            batch.slots[i] = Slot::Sent;
            picked.push(offers[i].seq);
            if picked.len() == IN_FLIGHT {
                break;
            }
        }
        assert_eq!(picked, [6, 5, 4, 3, 7, 8, 9, 10], "four large ones, the largest first, then the small ones");
        // A large one answered: the next large one takes its place.
        batch.slots[5] = Slot::Answered(Answer::Delivered);
        assert_eq!(batch.next().map(|i| offers[i].seq), Some(2));
    }

    #[test]
    fn answers_settle_in_feed_order_as_they_come() {
        let offers = vec![offer(1, 10), offer(2, LARGE), offer(3, 10), offer(4, 10)];
        let mut needs: HashMap<String, Need> = offers.iter().map(|o| (o.key.clone(), Need::Missing)).collect();
        needs.insert("f4".into(), Need::Present);
        let mut batch: Batch<'_, ()> = Batch::new(&offers, &needs);
        let (mut checkpoint, mut held, mut report) = (0, false, ContentReport::default());
        for i in 0..3 {
            batch.slots[i] = Slot::Sent;
        }
        // f3, then f1 answered while f2 (large) travels: the checkpoint passes f1 only.
        batch.slots[2] = Slot::Answered(Answer::Delivered);
        batch.settle(&mut checkpoint, &mut held, &mut report);
        assert_eq!(checkpoint, 0);
        batch.slots[0] = Slot::Answered(Answer::Delivered);
        batch.settle(&mut checkpoint, &mut held, &mut report);
        assert_eq!(checkpoint, 1, "f2 is still on its way");
        // f2 delivered: past f3, and f4 (present) is settled with them.
        batch.slots[1] = Slot::Answered(Answer::Delivered);
        batch.settle(&mut checkpoint, &mut held, &mut report);
        assert_eq!((checkpoint, batch.settled, held), (3, 4, false));
    }

    #[test]
    fn a_file_taken_and_never_answered_holds_the_run() {
        let offers = vec![offer(1, 10), offer(2, 10)];
        let needs = offers.iter().map(|o| (o.key.clone(), Need::Missing)).collect();
        let mut batch: Batch<'_, ()> = Batch::new(&offers, &needs);
        let (mut checkpoint, mut held, mut report) = (0, false, ContentReport::default());
        batch.slots[0] = Slot::Sent;
        batch.slots[1] = Slot::Answered(Answer::Delivered);
        batch.finish(&mut checkpoint, &mut held, &mut report);
        assert_eq!((checkpoint, held), (0, true), "the end of the batch must not save past f1");
    }

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
