//! The replication loop, generic over a source and a target endpoint, with the planning steps
//! as pure functions. One run replicates a sharing's changes from one instance to one peer:
//!
//! 1. read the source's changes since its checkpoint (one entry per document: its leaves);
//! 2. ask the target which of those revisions it lacks (`_revs_diff`), except for documents
//!    the source knows the target cannot have ([`Change::fresh`]);
//! 3. fetch the missing revisions with their history and send them (`_bulk_docs`,
//!    `new_edits=false` semantics: idempotent, trees merge), in chunks bounded by count and
//!    bytes;
//! 4. record the checkpoint only once the target acknowledged the batch, so a crash re-sends at
//!    most that batch.
//!
//! Endpoints are traits whose futures are `Send`, so the loop runs on any executor (the server
//! uses tokio; the simulation tests poll them directly).

use std::collections::BTreeMap;
use std::future::Future;

use serde_json::value::RawValue;

use crate::rev::Rev;

/// `doctype/id`, the key the sharing protocol uses.
pub type DocKey = String;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub seq: u64,
    pub key: DocKey,
    /// Every leaf revision of the document (conflicts included).
    pub leaves: Vec<Rev>,
    /// The target cannot hold any revision of this document (the source knows it never sent
    /// it there, nor got it from there): its leaves are sent without asking `_revs_diff`.
    /// Sending a revision the target has is harmless (`new_edits=false` merges nothing new),
    /// so this only saves a round trip; a source unsure of it says `false`.
    pub fresh: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ChangeBatch {
    pub changes: Vec<Change>,
    /// The sequence to checkpoint once this batch is delivered.
    pub last_seq: u64,
    /// Whether more changes follow.
    pub pending: bool,
}

/// A revision to send: the document with `_id`, `_rev`, `_revisions` and its body, as JSON
/// text. The sender embeds the text as it is: a body is never parsed and re-serialised on its
/// way to a peer, so it arrives as it was written.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub key: DocKey,
    pub doc: Box<RawValue>,
    /// Size of the serialised document, for byte-bounded chunks.
    pub bytes: usize,
}

impl Outgoing {
    pub fn new(key: DocKey, doc: Box<RawValue>) -> Outgoing {
        let bytes = doc.get().len();
        Outgoing { key, doc, bytes }
    }
}

/// A document the target refused (outside the sharing, not allowed in this direction...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub key: DocKey,
    pub reason: String,
}

pub trait Source {
    type Error;
    /// The sequence up to which everything was delivered to this target.
    fn checkpoint(&mut self) -> impl Future<Output = Result<u64, Self::Error>> + Send;
    fn changes(&mut self, since: u64, limit: usize) -> impl Future<Output = Result<ChangeBatch, Self::Error>> + Send;
    /// The given revisions with their history; revisions gone meanwhile are left out (the
    /// newer leaf will come with a later change).
    fn fetch(
        &mut self,
        wanted: BTreeMap<DocKey, Vec<Rev>>,
    ) -> impl Future<Output = Result<Vec<Outgoing>, Self::Error>> + Send;
    fn save_checkpoint(&mut self, seq: u64) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

pub trait Target {
    type Error;
    /// The revisions the target lacks, per document (documents lacking nothing are left out).
    fn revs_diff(
        &mut self,
        revs: BTreeMap<DocKey, Vec<Rev>>,
    ) -> impl Future<Output = Result<BTreeMap<DocKey, Vec<Rev>>, Self::Error>> + Send;
    fn bulk_docs(&mut self, docs: Vec<Outgoing>) -> impl Future<Output = Result<Vec<Refusal>, Self::Error>> + Send;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Changes read per batch.
    pub batch_size: usize,
    /// Most documents per `_bulk_docs` request.
    pub max_docs: usize,
    /// Most bytes per `_bulk_docs` request (a single larger document still goes alone).
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { batch_size: 500, max_docs: 500, max_bytes: 8 * 1024 * 1024 }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub batches: u64,
    /// Changes read from the source.
    pub changes_read: u64,
    /// Revisions the target said it lacked.
    pub missing_found: u64,
    /// Documents sent.
    pub docs_sent: u64,
    pub refused: Vec<Refusal>,
    pub last_seq: u64,
}

/// The `_revs_diff` request for a batch: every leaf of every changed document, except the
/// documents the target cannot have ([`Change::fresh`]), which come second: they are missing
/// whole. A document named twice is asked about if either change is not fresh.
pub fn plan_revs_diff(changes: &[Change]) -> (BTreeMap<DocKey, Vec<Rev>>, BTreeMap<DocKey, Vec<Rev>>) {
    let mut ask: BTreeMap<DocKey, Vec<Rev>> = BTreeMap::new();
    let mut fresh: BTreeMap<DocKey, Vec<Rev>> = BTreeMap::new();
    for c in changes.iter().filter(|c| !c.fresh) {
        ask.entry(c.key.clone()).or_default();
    }
    for c in changes {
        let entry = match ask.get_mut(&c.key) {
            Some(e) => e,
            None => fresh.entry(c.key.clone()).or_default(),
        };
        for l in &c.leaves {
            if !entry.contains(l) {
                entry.push(l.clone());
            }
        }
    }
    ask.retain(|_, revs| !revs.is_empty());
    fresh.retain(|_, revs| !revs.is_empty());
    (ask, fresh)
}

/// Splits documents into requests of at most `max_docs` documents and `max_bytes` bytes,
/// keeping their order (a document bigger than `max_bytes` travels alone).
pub fn chunk(docs: Vec<Outgoing>, limits: &Limits) -> Vec<Vec<Outgoing>> {
    let mut out = Vec::new();
    let mut cur: Vec<Outgoing> = Vec::new();
    let mut bytes = 0;
    for d in docs {
        if !cur.is_empty() && (cur.len() >= limits.max_docs.max(1) || bytes + d.bytes > limits.max_bytes) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += d.bytes;
        cur.push(d);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Sequence numbers past the saved checkpoint that batches filtered out whole may leave
/// unsaved, in batches (see [`run`]).
pub const FILTERED_UNSAVED_BATCHES: u64 = 20;

/// Replicates until the source has nothing more, calling `progress` after each batch.
///
/// The checkpoint is saved after each batch the target acknowledged. A batch the source
/// filtered out whole (nothing of it goes to this target) moves the run's position without a
/// write: only once such batches add up to [`FILTERED_UNSAVED_BATCHES`] batches' worth of
/// sequence numbers past the saved checkpoint, or when a later batch is delivered, is the
/// checkpoint saved. A crash then costs reading those changes again, never sending them (they
/// were not sent), so nothing is re-sent because of it. [`Report::last_seq`] is the run's
/// position, which the caller may keep in memory to start the next run from.
///
/// A run ends when a read finds nothing new: the next batch is read while one is being sent
/// (even when the source said nothing followed), so changes made meanwhile go in the same run.
pub async fn run<S, T, E>(
    source: &mut S,
    target: &mut T,
    limits: &Limits,
    mut progress: impl FnMut(&Report),
) -> Result<Report, E>
where
    S: Source<Error = E>,
    T: Target<Error = E>,
{
    let limit = limits.batch_size.max(1);
    let mut report = Report::default();
    let mut since = source.checkpoint().await?;
    let mut saved = since;
    report.last_seq = since;
    // The next batch, read (and, when the target cannot have any of it, fetched) while the
    // previous one was being sent.
    let mut prefetched: Option<Prepared> = None;
    loop {
        let Prepared { batch, docs } = match prefetched.take() {
            Some(p) => p,
            None => Prepared { batch: source.changes(since, limit).await?, docs: None },
        };
        if batch.changes.is_empty() {
            // Nothing to send in this batch (the source may filter changes out): move past it,
            // and go on while the source says more follows.
            if batch.last_seq <= since {
                return Ok(report);
            }
            since = batch.last_seq;
            report.last_seq = since;
            if since - saved >= FILTERED_UNSAVED_BATCHES * limit as u64 {
                source.save_checkpoint(since).await?;
                saved = since;
            }
            if !batch.pending {
                return Ok(report);
            }
            continue;
        }
        report.changes_read += batch.changes.len() as u64;
        let docs = match docs {
            Some((docs, found)) => {
                report.missing_found += found;
                docs
            }
            None => {
                let (wanted, fresh) = plan_revs_diff(&batch.changes);
                let mut missing = if wanted.is_empty() { BTreeMap::new() } else { target.revs_diff(wanted).await? };
                missing.extend(fresh);
                report.missing_found += missing.values().map(|v| v.len() as u64).sum::<u64>();
                if missing.is_empty() {
                    Vec::new()
                } else {
                    source.fetch(missing).await?
                }
            }
        };
        // Send this batch while reading the next one (and fetching it, when there is nothing
        // to ask the target about it); the checkpoint still moves only once the target has
        // acknowledged this batch, and the next batch is sent only after that: at most one
        // batch is ever sent past the checkpoint.
        let send = async {
            let mut sent = 0u64;
            let mut refused = Vec::new();
            for part in chunk(docs, limits) {
                sent += part.len() as u64;
                refused.extend(target.bulk_docs(part).await?);
            }
            Ok::<_, E>((sent, refused))
        };
        let next_since = batch.last_seq;
        let next = async {
            let batch = source.changes(next_since, limit).await?;
            let (wanted, fresh) = plan_revs_diff(&batch.changes);
            if !wanted.is_empty() || batch.changes.is_empty() {
                return Ok(Prepared { batch, docs: None });
            }
            let found = fresh.values().map(|v| v.len() as u64).sum::<u64>();
            let docs = if fresh.is_empty() { Vec::new() } else { source.fetch(fresh).await? };
            Ok::<_, E>(Prepared { batch, docs: Some((docs, found)) })
        };
        let (sent, next) = join(send, next).await;
        let (sent, refused) = sent?;
        report.docs_sent += sent;
        report.refused.extend(refused);
        source.save_checkpoint(batch.last_seq).await?;
        since = batch.last_seq;
        saved = since;
        report.last_seq = since;
        report.batches += 1;
        progress(&report);
        prefetched = Some(next?);
    }
}

/// A batch read ahead, with its documents when they could be fetched ahead too (and the
/// revisions they count as missing).
struct Prepared {
    batch: ChangeBatch,
    docs: Option<(Vec<Outgoing>, u64)>,
}

/// Runs two futures concurrently on whatever executor polls this one (no runtime needed).
async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none() {
            if let std::task::Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let std::task::Poll::Ready(v) = b.as_mut().poll(cx) {
                rb = Some(v);
            }
        }
        match (ra.take(), rb.take()) {
            (Some(x), Some(y)) => std::task::Poll::Ready((x, y)),
            (x, y) => {
                ra = x;
                rb = y;
                std::task::Poll::Pending
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(s: &str) -> Rev {
        s.parse().unwrap()
    }

    #[test]
    fn revs_diff_plan_merges_leaves_per_document() {
        let changes = vec![
            Change { seq: 1, key: "d/a".into(), leaves: vec![rev("2-x"), rev("2-y")], fresh: false },
            Change { seq: 2, key: "d/b".into(), leaves: vec![], fresh: false },
            Change { seq: 3, key: "d/a".into(), leaves: vec![rev("2-x"), rev("3-z")], fresh: true },
            Change { seq: 4, key: "d/c".into(), leaves: vec![rev("1-c")], fresh: true },
        ];
        let (ask, fresh) = plan_revs_diff(&changes);
        assert_eq!(ask.len(), 1);
        assert_eq!(ask["d/a"], vec![rev("2-x"), rev("2-y"), rev("3-z")], "asked: one of its changes is not fresh");
        assert_eq!(fresh.into_iter().collect::<Vec<_>>(), vec![("d/c".to_string(), vec![rev("1-c")])]);
    }

    fn null() -> Box<RawValue> {
        RawValue::from_string("null".into()).unwrap()
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    /// A source whose first batch is entirely filtered out (empty but pending).
    struct Filtered {
        checkpoint: u64,
        calls: u32,
    }

    impl Source for Filtered {
        type Error = ();
        async fn checkpoint(&mut self) -> Result<u64, ()> {
            Ok(self.checkpoint)
        }
        async fn changes(&mut self, since: u64, _limit: usize) -> Result<ChangeBatch, ()> {
            self.calls += 1;
            Ok(match since {
                0 => ChangeBatch { changes: vec![], last_seq: 10, pending: true },
                10 => ChangeBatch {
                    changes: vec![Change { seq: 11, key: "d/a".into(), leaves: vec![rev("1-a")], fresh: false }],
                    last_seq: 11,
                    pending: false,
                },
                _ => ChangeBatch { changes: vec![], last_seq: since, pending: false },
            })
        }
        async fn fetch(&mut self, wanted: BTreeMap<DocKey, Vec<Rev>>) -> Result<Vec<Outgoing>, ()> {
            Ok(wanted.into_keys().map(|k| Outgoing::new(k, null())).collect())
        }
        async fn save_checkpoint(&mut self, seq: u64) -> Result<(), ()> {
            assert!(seq >= self.checkpoint, "checkpoints only move forward");
            self.checkpoint = seq;
            Ok(())
        }
    }

    struct Sink(Vec<DocKey>);

    impl Target for Sink {
        type Error = ();
        async fn revs_diff(&mut self, revs: BTreeMap<DocKey, Vec<Rev>>) -> Result<BTreeMap<DocKey, Vec<Rev>>, ()> {
            Ok(revs)
        }
        async fn bulk_docs(&mut self, docs: Vec<Outgoing>) -> Result<Vec<Refusal>, ()> {
            self.0.extend(docs.into_iter().map(|d| d.key));
            Ok(vec![])
        }
    }

    #[test]
    fn a_batch_filtered_out_entirely_does_not_stop_the_run() {
        let mut source = Filtered { checkpoint: 0, calls: 0 };
        let mut sink = Sink(vec![]);
        let report = block_on(run(&mut source, &mut sink, &Limits::default(), |_| {})).unwrap();
        assert_eq!(sink.0, ["d/a"]);
        assert_eq!((report.last_seq, source.checkpoint), (11, 11));
        // The two batches, and the read made while sending the second, which found nothing
        // new and ended the run.
        assert_eq!(source.calls, 3);
    }

    /// A source whose changes are all filtered out, in batches of 10 sequence numbers.
    struct AllFiltered {
        checkpoint: u64,
        saves: u32,
        end: u64,
    }

    impl Source for AllFiltered {
        type Error = ();
        async fn checkpoint(&mut self) -> Result<u64, ()> {
            Ok(self.checkpoint)
        }
        async fn changes(&mut self, since: u64, _limit: usize) -> Result<ChangeBatch, ()> {
            let last_seq = (since + 10).min(self.end);
            Ok(ChangeBatch { changes: vec![], last_seq, pending: last_seq < self.end })
        }
        async fn fetch(&mut self, _: BTreeMap<DocKey, Vec<Rev>>) -> Result<Vec<Outgoing>, ()> {
            Ok(vec![])
        }
        async fn save_checkpoint(&mut self, seq: u64) -> Result<(), ()> {
            self.checkpoint = seq;
            self.saves += 1;
            Ok(())
        }
    }

    #[test]
    fn batches_filtered_out_whole_move_the_position_without_writing_a_checkpoint_each() {
        let limits = Limits { batch_size: 10, max_docs: 10, max_bytes: 1000 };
        // Fewer than FILTERED_UNSAVED_BATCHES batches: the run goes past them, writing nothing.
        let mut source = AllFiltered { checkpoint: 0, saves: 0, end: 50 };
        let report = block_on(run(&mut source, &mut Sink(vec![]), &limits, |_| {})).unwrap();
        assert_eq!((report.last_seq, source.checkpoint, source.saves), (50, 0, 0));
        // Many more: saved each time FILTERED_UNSAVED_BATCHES batches' worth went by unsaved,
        // so that a crash re-reads (never re-sends) at most that much.
        let span = FILTERED_UNSAVED_BATCHES * 10;
        let mut source = AllFiltered { checkpoint: 0, saves: 0, end: 5 * span + 30 };
        let report = block_on(run(&mut source, &mut Sink(vec![]), &limits, |_| {})).unwrap();
        assert_eq!((report.last_seq, source.checkpoint, source.saves), (5 * span + 30, 5 * span, 5));
    }

    #[test]
    fn chunks_respect_count_and_bytes_and_keep_order() {
        let doc = |i: usize, bytes: usize| Outgoing { key: format!("d/{i}"), doc: null(), bytes };
        let docs: Vec<Outgoing> = (0..7).map(|i| doc(i, 10)).collect();
        let limits = Limits { batch_size: 10, max_docs: 3, max_bytes: 1000 };
        let sizes: Vec<usize> = chunk(docs, &limits).iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 3, 1]);
        let docs = vec![doc(0, 60), doc(1, 60), doc(2, 500), doc(3, 1)];
        let limits = Limits { batch_size: 10, max_docs: 10, max_bytes: 100 };
        let parts = chunk(docs, &limits);
        let keys: Vec<Vec<&str>> = parts.iter().map(|p| p.iter().map(|d| d.key.as_str()).collect()).collect();
        assert_eq!(keys, vec![vec!["d/0"], vec!["d/1"], vec!["d/2"], vec!["d/3"]]);
        assert!(chunk(Vec::new(), &limits).is_empty());
    }
}
