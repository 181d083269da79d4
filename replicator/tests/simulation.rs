//! Deterministic simulation of hearth's replication: in-memory instances in a star (one owner,
//! two or three recipients), driven by the real [`run`] loop over in-memory [`Source`] and
//! [`Target`] endpoints, with seeded random edits and network faults between any two steps.
//!
//! # Model
//!
//! * An instance holds documents (`d/<id>` → [`RevTree`] + the bodies of its leaves), one changes
//!   feed (a sequence per local document change, one entry per document at its latest change, as
//!   CouchDB's by-seq index) and a durable checkpoint per peer (its position in that feed). A
//!   change applied from a peer is recorded in the feed too, so the owner relays between
//!   recipients, and echoes are cheap (`_revs_diff` finds nothing missing).
//! * Directions: owner → each recipient and each recipient → owner; at most one run per direction
//!   at a time (hearth's per-(sharing, member) worker).
//! * Every endpoint call yields to the scheduler before doing its work, and target calls yield
//!   again before their reply, so a run is a sequence of steps that the scheduler interleaves
//!   with everything else. The futures are polled with a no-op waker: in-memory endpoints are
//!   always ready after one yield, no executor is needed.
//! * Local edits are interactive (`edit_parent` + `new_rev`): creations, updates of the winner or
//!   of a losing leaf, deletions (tombstones), recreations after a deletion, and bursts of
//!   concurrent edits of one document on several instances. Some bodies are drawn from a tiny
//!   set so that two instances sometimes make the very same edit (same revision id).
//! * The target applies `_bulk_docs` with `new_edits=false` semantics: merge of the `_revisions`
//!   path, first body of a revision wins, bodies kept for leaves only, stemming to the seed's
//!   `revs_limit`, a feed change when the tree changed.
//!
//! # Faults (rates drawn per seed, some seeds have none)
//!
//! Lost `_revs_diff`/`_bulk_docs` requests and replies (a lost `_bulk_docs` reply means the target
//! applied the batch and the source sees an error), duplicated `_bulk_docs` (applied twice at once,
//! or a copy delivered later), delayed `_bulk_docs` (the source times out; the request is delivered
//! later, after newer ones: reordering), partitions of a recipient's link, and crash-restarts
//! (every run involving the instance is dropped wherever it stands, e.g. between `_bulk_docs` and
//! `save_checkpoint`, and restarted later from the durable checkpoint).
//!
//! # Schedule
//!
//! Runs start when the link's [`LinkSchedule`] says so, on a simulated clock (each step is
//! [`STEP_MS`]): a failed run backs off ([`BACKOFF`], seeded jitter), a crash of the source
//! forgets its schedules (they live in its memory), a crash of the target fails the run. After
//! the network heals, every link must be due again within the backoff's cap (never given up),
//! and once the healing rounds succeed every link is healthy.
//!
//! # Checks
//!
//! While running: whenever a source saves a checkpoint, every leaf of every document at or below
//! that sequence is in the target's tree (the checkpoint never skips anything). After the
//! network heals: replication rounds in all directions until a round finds nothing missing
//! (bounded), then every instance has the same leaves, winner, conflicts and leaf bodies for every
//! document, the bodies are the ones written, no revision ever written (acknowledged) is lost, and
//! every parent link is the true one. With the default `revs_limit` (nothing is ever stemmed)
//! every tree is exactly the true tree, revision by revision and link by link. With a small limit
//! (a fifth of the seeds), a written revision may be stemmed away, but only under a descendant,
//! never lost; and an instance may keep a *stale leaf*, an old leaf that the stemmed history of
//! its descendants no longer reaches (a stemming-induced conflict, as in CouchDB: see
//! `with_a_tiny_revs_limit_a_lagging_peer_resurrects_a_deleted_document_as_couchdb_does`). Stale
//! leaves are counted in the statistics, not compared; every other leaf must be everywhere.
//!
//! `the_checks_catch_broken_endpoints` proves the checks bite: each deliberate bug of the
//! endpoints ([`Sabotage`]) makes some seed fail.
//!
//! Trees are compared by shape (revisions, parent links, leaves with their deleted flags), not
//! with `RevTree`'s `==`: an instance that only received a revision as an ancestor in `_revisions`
//! knows it by id only (unknown deleted flag), as CouchDB's `?REV_MISSING`, while its author knows
//! the flag. That is expected and not compared.
//!
//! # Running
//!
//! `SIM_SEEDS=n` runs seeds `0..n` (default 1,000; `SIM_SEED_START` shifts the range),
//! `SIM_SEED=n` runs one seed (`SIM_TRACE=1` prints what happened step by step). A failure names
//! the seed and the command reproducing it.
//!
//! One file, over 800 lines: the model, its invariants and the scenarios that drive it are one
//! piece, read together (every scenario is a use of the same harness).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use hearth_replicator::replicate::{
    run, Change, ChangeBatch, DocKey, Limits, Outgoing, Refusal, Report, Source, Target,
};
use hearth_replicator::rev::{new_rev, Rev, Revisions};
use hearth_replicator::schedule::{Backoff, Health, LinkSchedule};
use hearth_replicator::tree::{Leaf, RevTree};
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------------------
// PRNG and executor

/// splitmix64: tiny, fast, and stable forever, so a seed means the same run on every machine.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6865_6172_7468_5f73)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// True with probability `p`/1000.
    fn permille(&mut self, p: u64) -> bool {
        self.below(1000) < p
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.index(items.len())]
    }
}

/// A future that is pending once: the point where the scheduler takes over between two steps.
#[derive(Default)]
struct Step(bool);

impl Future for Step {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

/// Polls a future until it is ready: in-memory endpoints never wait for anything.
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(out) = poll_once(fut.as_mut()) {
            return out;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The world: instances, the truth, the network

const OWNER: usize = 0;
/// `revs_limit` of most seeds: more than any document's revisions, so nothing is ever stemmed.
const NO_STEMMING: usize = 1000;
/// Replication rounds (every recipient to the owner, then the owner to every recipient) allowed
/// after the network heals before "did not converge" is a failure.
const MAX_ROUNDS: usize = 6;

/// Simulated time per step of the scheduler.
const STEP_MS: u64 = 10;

/// The links' retry schedule in the simulation (hearth's defaults, scaled to its clock).
const BACKOFF: Backoff = Backoff { base_ms: 10, max_ms: 400 };

#[derive(Clone, Debug, PartialEq, Eq)]
enum SimError {
    LostRequest,
    LostReply,
    Timeout,
    Unreachable,
}

/// A deliberate bug in the in-memory endpoints, to prove that the checks catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sabotage {
    None,
    /// The target merges `[_rev]` alone, ignoring `_revisions`.
    IgnoreRevisions,
    /// The target does not record applied changes in its feed (so the owner relays nothing).
    NoFeedOnApply,
    /// The source's `changes` silently skips the last change of a full batch.
    SkipLastChange,
    /// The source moves its checkpoint as soon as it reads changes, before the target
    /// acknowledged them (what a loop saving the checkpoint too early would do).
    EarlyCheckpoint,
    /// The source's `fetch` leaves out tombstones.
    DropTombstones,
    /// The target writes an incoming body over the document's winner (a store keeping "the
    /// document" rather than revisions), so a losing conflict clobbers the winner's body.
    BodyOnWinner,
}

/// What happens to one `_bulk_docs` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Deliver,
    LoseRequest,
    /// Applied, and the reply is lost.
    LoseReply,
    /// The source times out; the request is applied later, after newer ones.
    Delay,
    /// Applied twice in a row.
    DuplicateNow,
    /// Applied, and a copy arrives again later.
    DuplicateLater,
}

#[derive(Clone, Debug)]
struct Config {
    recipients: usize,
    docs: usize,
    steps: usize,
    revs_limit: usize,
    limits: Limits,
    /// Fault rates, per mille of the events concerned.
    loss: u64,
    delay: u64,
    dup: u64,
    crash: u64,
    partition: u64,
    sabotage: Sabotage,
}

impl Config {
    fn random(rng: &mut Rng, sabotage: Sabotage) -> Config {
        let calm = rng.permille(100);
        let rate = |rng: &mut Rng, max: u64| if calm { 0 } else { rng.below(max + 1) };
        Config {
            recipients: 2 + rng.index(2),
            docs: 1 + rng.index(8),
            steps: 100 + rng.index(800),
            revs_limit: if rng.permille(200) { rng.pick(&[1, 2, 3, 4, 6]) } else { NO_STEMMING },
            limits: Limits {
                batch_size: rng.pick(&[1, 2, 3, 5, 500]),
                max_docs: rng.pick(&[1, 2, 3, 500]),
                max_bytes: rng.pick(&[150, 400, 8 * 1024 * 1024]),
            },
            loss: rate(rng, 150),
            delay: rate(rng, 100),
            dup: rate(rng, 100),
            crash: rate(rng, 20),
            partition: rate(rng, 8),
            sabotage,
        }
    }

    /// No faults, no stemming: for the scenarios.
    fn calm(recipients: usize) -> Config {
        Config {
            recipients,
            docs: 0,
            steps: 0,
            revs_limit: NO_STEMMING,
            limits: Limits::default(),
            loss: 0,
            delay: 0,
            dup: 0,
            crash: 0,
            partition: 0,
            sabotage: Sabotage::None,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Doc {
    tree: RevTree,
    bodies: BTreeMap<Rev, Value>,
}

impl Doc {
    /// Stems and drops the bodies of revisions that are no longer leaves.
    fn settle(&mut self, revs_limit: usize) -> usize {
        let stemmed = self.tree.stem(revs_limit).len();
        let tree = &self.tree;
        self.bodies.retain(|rev, _| tree.is_leaf(rev));
        stemmed
    }
}

#[derive(Debug, Default)]
struct Instance {
    docs: BTreeMap<DocKey, Doc>,
    /// seq → document, one entry per document at its latest change.
    feed: BTreeMap<u64, DocKey>,
    latest: BTreeMap<DocKey, u64>,
    seq: u64,
    /// Durable position in `feed` delivered to each peer.
    checkpoints: BTreeMap<usize, u64>,
}

impl Instance {
    fn record(&mut self, key: &DocKey) {
        self.seq += 1;
        if let Some(old) = self.latest.insert(key.clone(), self.seq) {
            self.feed.remove(&old);
        }
        self.feed.insert(self.seq, key.clone());
    }
}

/// A revision as its author wrote it.
#[derive(Clone, Debug, PartialEq)]
struct TrueRev {
    parent: Option<Rev>,
    deleted: bool,
    body: Value,
}

#[derive(Clone, Debug)]
struct Delayed {
    from: usize,
    to: usize,
    docs: Vec<Outgoing>,
}

#[derive(Clone, Debug, Default)]
struct Stats {
    seeds: u64,
    steps: u64,
    creations: u64,
    updates: u64,
    loser_edits: u64,
    deletions: u64,
    recreations: u64,
    concurrent_bursts: u64,
    same_edit_twice: u64,
    runs_started: u64,
    runs_ok: u64,
    runs_failed: u64,
    /// Starts the schedule deferred (the link was backing off).
    runs_deferred: u64,
    /// Links that reached `down`, and runs started on a link that was down (never given up).
    links_down: u64,
    runs_while_down: u64,
    lost_requests: u64,
    lost_replies: u64,
    delayed: u64,
    delivered_late: u64,
    dropped_late: u64,
    duplicated: u64,
    crashes: u64,
    crashes_between_bulk_docs_and_checkpoint: u64,
    partitions: u64,
    docs_applied: u64,
    stemmed: u64,
    heal_rounds: u64,
    docs_in_conflict_at_end: u64,
    deleted_docs_at_end: u64,
    docs_with_stale_leaves_at_end: u64,
    winners_differing_by_stale_leaves: u64,
    /// The first seeds that ended with stale leaves (stemming-induced conflicts), and with
    /// winners differing because of them.
    stale_leaf_seeds: Vec<u64>,
    stale_winner_seeds: Vec<u64>,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        macro_rules! sum {
            ($($f:ident),*) => { $(self.$f += o.$f;)* };
        }
        sum!(
            seeds,
            steps,
            creations,
            updates,
            loser_edits,
            deletions,
            recreations,
            concurrent_bursts,
            same_edit_twice,
            runs_started,
            runs_ok,
            runs_failed,
            runs_deferred,
            links_down,
            runs_while_down,
            lost_requests,
            lost_replies,
            delayed,
            delivered_late,
            dropped_late,
            duplicated,
            crashes,
            crashes_between_bulk_docs_and_checkpoint,
            partitions,
            docs_applied,
            stemmed,
            heal_rounds,
            docs_in_conflict_at_end,
            deleted_docs_at_end,
            docs_with_stale_leaves_at_end,
            winners_differing_by_stale_leaves
        );
        for (mine, theirs) in
            [(&mut self.stale_leaf_seeds, &o.stale_leaf_seeds), (&mut self.stale_winner_seeds, &o.stale_winner_seeds)]
        {
            mine.extend(theirs);
            mine.sort_unstable();
            mine.truncate(10);
        }
    }
}

struct World {
    rng: Rng,
    cfg: Config,
    insts: Vec<Instance>,
    /// Every revision ever written, per document, as written: the acknowledged revisions.
    truth: BTreeMap<DocKey, BTreeMap<Rev, TrueRev>>,
    faults: bool,
    /// Per recipient: its link to the owner is down.
    link_down: Vec<bool>,
    delayed: Vec<Delayed>,
    /// Scripted fates for the next `_bulk_docs` requests (scenarios).
    script: VecDeque<Fate>,
    /// Directions whose target applied a `_bulk_docs` not yet covered by a checkpoint.
    unsaved: BTreeSet<(usize, usize)>,
    /// Documents applied per direction (from, to).
    received: BTreeMap<(usize, usize), u64>,
    /// Invariants broken while running.
    violations: Vec<String>,
    stats: Stats,
    counter: u64,
    trace: Option<Vec<String>>,
}

type Shared = Arc<Mutex<World>>;

fn lock(world: &Shared) -> MutexGuard<'_, World> {
    world.lock().unwrap_or_else(|e| e.into_inner())
}

/// A sent document, parsed back (the simulation's bodies hold small numbers only).
fn parsed(out: &Outgoing) -> Value {
    serde_json::from_str(out.doc.get()).expect("outgoing documents are JSON")
}

fn name(i: usize) -> String {
    if i == OWNER {
        "owner".into()
    } else {
        format!("r{i}")
    }
}

impl World {
    fn new(rng: Rng, cfg: Config, trace: bool) -> World {
        let n = cfg.recipients + 1;
        let mut insts: Vec<Instance> = (0..n).map(|_| Instance::default()).collect();
        for (i, inst) in insts.iter_mut().enumerate() {
            for peer in peers(i, n) {
                inst.checkpoints.insert(peer, 0);
            }
        }
        World {
            rng,
            cfg,
            insts,
            truth: BTreeMap::new(),
            faults: true,
            link_down: vec![false; n],
            delayed: Vec::new(),
            script: VecDeque::new(),
            unsaved: BTreeSet::new(),
            received: BTreeMap::new(),
            violations: Vec::new(),
            stats: Stats::default(),
            counter: 0,
            trace: trace.then(Vec::new),
        }
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            t.push(line());
        }
    }

    fn link_is_down(&self, a: usize, b: usize) -> bool {
        self.link_down[a.max(b)]
    }

    // ---- local (interactive) writes ----

    /// An interactive write: `edit_parent(leaf, deleting)` then `new_rev`. Returns the new
    /// revision, or `None` on an edit conflict.
    fn write(&mut self, i: usize, key: &str, leaf: Option<&Rev>, deleting: bool, body: Value) -> Option<Rev> {
        let limit = self.cfg.revs_limit;
        let doc = self.insts[i].docs.entry(key.to_owned()).or_default();
        let parent = doc.tree.edit_parent(leaf, deleting).ok()?;
        let canonical = serde_json::to_vec(&body).expect("a JSON value serialises");
        let rev =
            new_rev(parent.as_ref(), deleting, &canonical).expect("simulated generations stay far below the limit");
        let path: Vec<Rev> = std::iter::once(rev.clone()).chain(parent.clone()).collect();
        doc.tree.merge_path(&path, deleting);
        doc.bodies.entry(rev.clone()).or_insert_with(|| body.clone());
        self.stats.stemmed += doc.settle(limit) as u64;
        self.insts[i].record(&key.to_owned());
        let written = TrueRev { parent: parent.clone(), deleted: deleting, body };
        let truth = self.truth.entry(key.to_owned()).or_default();
        match truth.get(&rev) {
            Some(known) => {
                if *known != written {
                    self.violations.push(format!("{rev} of {key} written twice differently"));
                }
                self.stats.same_edit_twice += 1;
            }
            None => {
                truth.insert(rev.clone(), written);
            }
        }
        self.log(|| {
            let what = if deleting { "deletes" } else { "writes" };
            let parent = parent.map_or("nothing".into(), |p| p.to_string());
            format!("{} {what} {key} {rev} on {parent}", name(i))
        });
        Some(rev)
    }

    fn random_body(&mut self) -> Value {
        if self.rng.permille(300) {
            // Small set: two instances sometimes make exactly the same edit.
            json!({ "v": self.rng.below(3) })
        } else {
            self.counter += 1;
            json!({ "v": self.rng.below(100), "n": self.counter, "pad": "x".repeat(self.rng.index(60)) })
        }
    }

    /// A random interactive edit of `key` on instance `i`.
    fn random_edit(&mut self, i: usize, key: &str) {
        let body = self.random_body();
        let tree = self.insts[i].docs.get(key).map(|d| d.tree.clone()).unwrap_or_default();
        let Some(winner) = tree.winner() else {
            self.stats.creations += 1;
            self.write(i, key, None, false, body);
            return;
        };
        if winner.deleted {
            // Recreation (continues from the deleted winner), most of the time.
            if self.rng.permille(700) {
                self.stats.recreations += 1;
                self.write(i, key, None, false, body);
            }
            return;
        }
        let live: Vec<Rev> = tree.leaves().into_iter().filter(|l| !l.deleted).map(|l| l.rev).collect();
        let leaf = if live.len() > 1 && self.rng.permille(400) {
            self.stats.loser_edits += 1;
            live[1 + self.rng.index(live.len() - 1)].clone()
        } else {
            winner.rev
        };
        if self.rng.permille(250) {
            self.stats.deletions += 1;
            self.write(i, key, Some(&leaf), true, json!({}));
        } else {
            self.stats.updates += 1;
            self.write(i, key, Some(&leaf), false, body);
        }
    }

    // ---- target side ----

    fn revs_diff(
        &mut self,
        from: usize,
        to: usize,
        revs: &BTreeMap<DocKey, Vec<Rev>>,
    ) -> Result<BTreeMap<DocKey, Vec<Rev>>, SimError> {
        if self.link_is_down(from, to) {
            return Err(SimError::Unreachable);
        }
        if self.faults && self.rng.permille(self.cfg.loss) {
            self.stats.lost_requests += 1;
            self.log(|| format!("revs_diff {}->{} lost", name(from), name(to)));
            return Err(SimError::LostRequest);
        }
        let inst = &self.insts[to];
        let mut out = BTreeMap::new();
        for (key, revs) in revs {
            let (missing, _) = match inst.docs.get(key) {
                Some(doc) => doc.tree.revs_diff(revs),
                None => RevTree::new().revs_diff(revs),
            };
            if !missing.is_empty() {
                out.insert(key.clone(), missing);
            }
        }
        Ok(out)
    }

    /// The reply of a target call travels back.
    fn reply(&mut self, from: usize, to: usize, what: &str) -> Result<(), SimError> {
        if self.link_is_down(from, to) {
            return Err(SimError::Unreachable);
        }
        if self.faults && self.rng.permille(self.cfg.loss) {
            self.stats.lost_replies += 1;
            self.log(|| format!("{what} reply {}->{} lost", name(to), name(from)));
            return Err(SimError::LostReply);
        }
        Ok(())
    }

    fn fate(&mut self) -> Fate {
        if let Some(f) = self.script.pop_front() {
            return f;
        }
        if !self.faults {
            return Fate::Deliver;
        }
        let (loss, delay, dup) = (self.cfg.loss, self.cfg.delay, self.cfg.dup);
        let roll = self.rng.below(1000);
        if roll < loss {
            Fate::LoseRequest
        } else if roll < loss + delay {
            Fate::Delay
        } else if roll < loss + delay + dup {
            if self.rng.permille(500) {
                Fate::DuplicateNow
            } else {
                Fate::DuplicateLater
            }
        } else {
            Fate::Deliver
        }
    }

    fn bulk_docs(&mut self, from: usize, to: usize, docs: Vec<Outgoing>) -> Result<(), SimError> {
        if self.link_is_down(from, to) {
            return Err(SimError::Unreachable);
        }
        let fate = self.fate();
        self.log(|| {
            let keys: Vec<String> = docs.iter().map(|d| format!("{}@{}", d.key, parsed(d)["_rev"])).collect();
            format!("bulk_docs {}->{} {fate:?} {}", name(from), name(to), keys.join(" "))
        });
        match fate {
            Fate::LoseRequest => {
                self.stats.lost_requests += 1;
                return Err(SimError::LostRequest);
            }
            Fate::Delay => {
                self.stats.delayed += 1;
                self.delayed.push(Delayed { from, to, docs });
                return Err(SimError::Timeout);
            }
            Fate::Deliver => {}
            Fate::LoseReply => {
                self.stats.lost_replies += 1;
            }
            Fate::DuplicateNow => {
                self.stats.duplicated += 1;
                self.apply(from, to, &docs);
            }
            Fate::DuplicateLater => {
                self.stats.duplicated += 1;
                self.delayed.push(Delayed { from, to, docs: docs.clone() });
            }
        }
        self.apply(from, to, &docs);
        self.unsaved.insert((from, to));
        if fate == Fate::LoseReply {
            return Err(SimError::LostReply);
        }
        Ok(())
    }

    /// `_bulk_docs` with `new_edits=false` semantics.
    fn apply(&mut self, from: usize, to: usize, docs: &[Outgoing]) {
        let (limit, sabotage) = (self.cfg.revs_limit, self.cfg.sabotage);
        *self.received.entry((from, to)).or_default() += docs.len() as u64;
        self.stats.docs_applied += docs.len() as u64;
        for out in docs {
            let doc = parsed(out);
            let rev: Rev = doc["_rev"].as_str().and_then(|s| s.parse().ok()).expect("_rev");
            let path = match serde_json::from_value::<Revisions>(doc["_revisions"].clone()) {
                Ok(revisions) if sabotage != Sabotage::IgnoreRevisions => revisions.to_revs().expect("_revisions"),
                _ => vec![rev.clone()],
            };
            assert_eq!(path[0], rev, "_revisions starts with _rev");
            let deleted = doc["_deleted"] == json!(true);
            let body: Map<String, Value> = doc
                .as_object()
                .expect("object")
                .iter()
                .filter(|(k, _)| !k.starts_with('_'))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let inst = &mut self.insts[to];
            let doc = inst.docs.entry(out.key.clone()).or_default();
            let before = shape(&doc.tree);
            doc.tree.merge_path(&path, deleted);
            if doc.tree.is_leaf(&rev) {
                doc.bodies.entry(rev.clone()).or_insert(Value::Object(body.clone()));
            }
            if sabotage == Sabotage::BodyOnWinner {
                if let Some(winner) = doc.tree.winner() {
                    doc.bodies.insert(winner.rev, Value::Object(body));
                }
            }
            let stemmed = doc.settle(limit);
            let changed = shape(&doc.tree) != before;
            if changed && sabotage != Sabotage::NoFeedOnApply {
                inst.record(&out.key);
            }
            self.stats.stemmed += stemmed as u64;
        }
    }

    fn deliver_late(&mut self, index: usize) {
        let d = self.delayed.remove(index);
        self.stats.delivered_late += 1;
        self.log(|| format!("late bulk_docs {}->{} delivered ({} docs)", name(d.from), name(d.to), d.docs.len()));
        self.apply(d.from, d.to, &d.docs);
    }

    // ---- source side ----

    fn changes(&mut self, me: usize, peer: usize, since: u64, limit: usize) -> ChangeBatch {
        let inst = &self.insts[me];
        let mut entries: Vec<(u64, DocKey)> =
            inst.feed.range(since + 1..).take(limit + 1).map(|(s, k)| (*s, k.clone())).collect();
        let pending = entries.len() > limit;
        entries.truncate(limit);
        let mut last_seq = entries.last().map_or(inst.seq.max(since), |e| e.0);
        if self.cfg.sabotage == Sabotage::SkipLastChange && pending && entries.len() > 1 {
            entries.pop();
        }
        if entries.is_empty() {
            last_seq = last_seq.max(since);
        }

        let changes = entries
            .into_iter()
            .map(|(seq, key)| {
                let leaves = inst.docs[&key].tree.leaves().into_iter().map(|l| l.rev).collect();
                Change { seq, key, leaves, fresh: false }
            })
            .collect();
        if self.cfg.sabotage == Sabotage::EarlyCheckpoint {
            self.insts[me].checkpoints.insert(peer, last_seq);
        }
        ChangeBatch { changes, last_seq, pending }
    }

    fn fetch(&mut self, me: usize, wanted: &BTreeMap<DocKey, Vec<Rev>>) -> Vec<Outgoing> {
        let inst = &self.insts[me];
        let mut out = Vec::new();
        for (key, revs) in wanted {
            let Some(doc) = inst.docs.get(key) else { continue };
            for rev in revs {
                // Revisions that stopped being leaves meanwhile are left out: the newer leaf has
                // a later change.
                let (true, Some(body)) = (doc.tree.is_leaf(rev), doc.bodies.get(rev)) else { continue };
                let deleted = doc.tree.deleted(rev) == Some(true);
                if deleted && self.cfg.sabotage == Sabotage::DropTombstones {
                    continue;
                }
                let history = doc.tree.history(rev).expect("a leaf has a history");
                let mut fields = body.as_object().cloned().unwrap_or_default();
                fields.insert("_id".into(), json!(key.trim_start_matches("d/")));
                fields.insert("_rev".into(), json!(rev.to_string()));
                fields.insert("_revisions".into(), serde_json::to_value(Revisions::from_revs(&history)).expect("json"));
                if deleted {
                    fields.insert("_deleted".into(), json!(true));
                }
                let text = serde_json::value::to_raw_value(&fields).expect("json");
                out.push(Outgoing::new(key.clone(), text));
            }
        }
        out
    }

    fn save_checkpoint(&mut self, me: usize, peer: usize, seq: u64) {
        // The checkpoint never skips anything: every leaf of every document at or below `seq` is
        // in the peer's tree (without stemming; with it, the peer may hold a descendant only).
        if self.cfg.revs_limit == NO_STEMMING {
            let src = &self.insts[me];
            for (key, _) in src.latest.iter().filter(|(_, s)| **s <= seq) {
                for leaf in src.docs[key].tree.leaves() {
                    let there = self.insts[peer].docs.get(key).is_some_and(|d| d.tree.contains(&leaf.rev));
                    if !there {
                        self.violations.push(format!(
                            "{} saved checkpoint {seq} for {} but {key} {} is not there",
                            name(me),
                            name(peer),
                            leaf.rev
                        ));
                    }
                }
            }
        }
        self.insts[me].checkpoints.insert(peer, seq);
        self.unsaved.remove(&(me, peer));
        self.log(|| format!("{} checkpoint for {} = {seq}", name(me), name(peer)));
    }
}

fn peers(i: usize, n: usize) -> Vec<usize> {
    if i == OWNER {
        (1..n).collect()
    } else {
        vec![OWNER]
    }
}

// ---------------------------------------------------------------------------------------------
// Endpoints

struct SourceEnd {
    world: Shared,
    me: usize,
    peer: usize,
}

struct TargetEnd {
    world: Shared,
    me: usize,
    from: usize,
}

impl Source for SourceEnd {
    type Error = SimError;

    fn checkpoint(&mut self) -> impl Future<Output = Result<u64, SimError>> + Send {
        let (world, me, peer) = (self.world.clone(), self.me, self.peer);
        async move {
            Step::default().await;
            let seq = lock(&world).insts[me].checkpoints[&peer];
            Ok(seq)
        }
    }

    fn changes(&mut self, since: u64, limit: usize) -> impl Future<Output = Result<ChangeBatch, SimError>> + Send {
        let (world, me, peer) = (self.world.clone(), self.me, self.peer);
        async move {
            Step::default().await;
            let batch = lock(&world).changes(me, peer, since, limit);
            Ok(batch)
        }
    }

    fn fetch(
        &mut self,
        wanted: BTreeMap<DocKey, Vec<Rev>>,
    ) -> impl Future<Output = Result<Vec<Outgoing>, SimError>> + Send {
        let (world, me) = (self.world.clone(), self.me);
        async move {
            Step::default().await;
            let docs = lock(&world).fetch(me, &wanted);
            Ok(docs)
        }
    }

    fn save_checkpoint(&mut self, seq: u64) -> impl Future<Output = Result<(), SimError>> + Send {
        let (world, me, peer) = (self.world.clone(), self.me, self.peer);
        async move {
            Step::default().await;
            lock(&world).save_checkpoint(me, peer, seq);
            Ok(())
        }
    }
}

impl Target for TargetEnd {
    type Error = SimError;

    fn revs_diff(
        &mut self,
        revs: BTreeMap<DocKey, Vec<Rev>>,
    ) -> impl Future<Output = Result<BTreeMap<DocKey, Vec<Rev>>, SimError>> + Send {
        let (world, me, from) = (self.world.clone(), self.me, self.from);
        async move {
            Step::default().await;
            let missing = lock(&world).revs_diff(from, me, &revs)?;
            Step::default().await;
            lock(&world).reply(from, me, "revs_diff")?;
            Ok(missing)
        }
    }

    fn bulk_docs(&mut self, docs: Vec<Outgoing>) -> impl Future<Output = Result<Vec<Refusal>, SimError>> + Send {
        let (world, me, from) = (self.world.clone(), self.me, self.from);
        async move {
            Step::default().await;
            lock(&world).bulk_docs(from, me, docs)?;
            Step::default().await;
            lock(&world).reply(from, me, "bulk_docs")?;
            Ok(Vec::new())
        }
    }
}

type RunFuture = Pin<Box<dyn Future<Output = Result<Report, SimError>>>>;

/// A replication run in flight from `src` to `dst`.
struct Flight {
    src: usize,
    dst: usize,
    fut: RunFuture,
}

fn flight(world: &Shared, src: usize, dst: usize) -> Flight {
    let limits = lock(world).cfg.limits;
    let mut source = SourceEnd { world: world.clone(), me: src, peer: dst };
    let mut target = TargetEnd { world: world.clone(), me: dst, from: src };
    let fut = async move { run(&mut source, &mut target, &limits, |_| {}).await };
    Flight { src, dst, fut: Box::pin(fut) }
}

/// One complete run without interleaving.
fn replicate(world: &Shared, src: usize, dst: usize) -> Result<Report, SimError> {
    block_on(flight(world, src, dst).fut)
}

fn directions(n: usize) -> Vec<(usize, usize)> {
    (1..n).flat_map(|r| [(r, OWNER), (OWNER, r)]).collect()
}

// ---------------------------------------------------------------------------------------------
// The simulation

struct Outcome {
    stats: Stats,
    trace: Vec<String>,
}

fn simulate(seed: u64, sabotage: Sabotage, trace: bool) -> Result<Outcome, (String, Vec<String>)> {
    let mut rng = Rng::new(seed);
    let cfg = Config::random(&mut rng, sabotage);
    let n = cfg.recipients + 1;
    let keys: Vec<DocKey> = (0..cfg.docs).map(|d| format!("d/doc{d}")).collect();
    let world: Shared = Arc::new(Mutex::new(World::new(rng, cfg.clone(), trace)));
    lock(&world).log(|| format!("seed {seed}: {cfg:?}"));
    let mut flights: Vec<Flight> = Vec::new();
    // Each source's schedule of its links, on the simulated clock.
    let mut schedules: BTreeMap<(usize, usize), LinkSchedule> =
        directions(n).into_iter().map(|d| (d, LinkSchedule::default())).collect();
    let mut now: u64 = 0;

    for _ in 0..cfg.steps {
        now += STEP_MS;
        let mut guard = lock(&world);
        let w = &mut *guard;
        w.stats.steps += 1;
        let roll = w.rng.below(1000);
        match roll {
            // A local edit; sometimes the same document on several instances at once.
            0..=219 => {
                let key = keys[w.rng.index(keys.len())].clone();
                if w.rng.permille(150) {
                    w.stats.concurrent_bursts += 1;
                    let first = w.rng.index(n);
                    let count = 2 + w.rng.index(n - 1);
                    for j in 0..count {
                        w.random_edit((first + j) % n, &key);
                    }
                } else {
                    let i = w.rng.index(n);
                    w.random_edit(i, &key);
                }
            }
            // One step of a run in flight.
            220..=699 => {
                if flights.is_empty() {
                    continue;
                }
                let f = w.rng.index(flights.len());
                drop(guard);
                let polled = poll_once(flights[f].fut.as_mut());
                if let Poll::Ready(result) = polled {
                    let done = flights.swap_remove(f);
                    let mut w = lock(&world);
                    let sched = schedules.entry((done.src, done.dst)).or_default();
                    match result {
                        Ok(report) => {
                            w.stats.runs_ok += 1;
                            sched.succeeded();
                            w.log(|| format!("run {}->{} done: {report:?}", name(done.src), name(done.dst)));
                        }
                        Err(e) => {
                            w.stats.runs_failed += 1;
                            let was_down = sched.health == Health::Down;
                            let jitter = w.rng.next();
                            sched.failed(now, &BACKOFF, jitter);
                            w.stats.links_down += u64::from(!was_down && sched.health == Health::Down);
                            let next = sched.next_at_ms;
                            w.log(|| {
                                format!("run {}->{} failed: {e:?}; next at {next:?}", name(done.src), name(done.dst))
                            });
                        }
                    }
                }
            }
            // Start a run (the trigger after a write, or a retry after a failure).
            700..=849 => {
                let dirs = directions(n);
                let (src, dst) = dirs[w.rng.index(dirs.len())];
                if flights.iter().any(|f| (f.src, f.dst) == (src, dst)) {
                    continue;
                }
                let sched = schedules.entry((src, dst)).or_default();
                if !sched.due(now) {
                    w.stats.runs_deferred += 1;
                    continue;
                }
                sched.started();
                w.stats.runs_while_down += u64::from(sched.health == Health::Down);
                w.stats.runs_started += 1;
                w.log(|| format!("run {}->{} starts", name(src), name(dst)));
                drop(guard);
                flights.push(flight(&world, src, dst));
            }
            // A delayed request arrives, after newer ones.
            850..=919 => {
                if !w.delayed.is_empty() {
                    let i = w.rng.index(w.delayed.len());
                    w.deliver_late(i);
                }
            }
            // Crash-restart: runs involving the instance stop wherever they are.
            920..=969 => {
                if !w.rng.permille(w.cfg.crash * 25) {
                    continue;
                }
                let k = w.rng.index(n);
                w.stats.crashes += 1;
                // The crashed instance's schedules were in its memory: it starts afresh.
                for ((src, _), sched) in schedules.iter_mut() {
                    if *src == k {
                        *sched = LinkSchedule::default();
                    }
                }
                let mut kept = Vec::new();
                for f in flights.drain(..) {
                    if f.dst == k && f.src != k {
                        // Its source sees the run fail.
                        let jitter = w.rng.next();
                        schedules.entry((f.src, f.dst)).or_default().failed(now, &BACKOFF, jitter);
                    }
                    if f.src == k || f.dst == k {
                        if w.unsaved.contains(&(f.src, f.dst)) {
                            w.stats.crashes_between_bulk_docs_and_checkpoint += 1;
                        }
                        w.unsaved.remove(&(f.src, f.dst));
                        w.log(|| format!("crash of {} aborts run {}->{}", name(k), name(f.src), name(f.dst)));
                    } else {
                        kept.push(f);
                    }
                }
                flights = kept;
            }
            // A recipient's link goes down or comes back.
            _ => {
                if w.rng.permille(w.cfg.partition * 30) {
                    let r = 1 + w.rng.index(n - 1);
                    w.link_down[r] = !w.link_down[r];
                    w.stats.partitions += u64::from(w.link_down[r]);
                    let down = w.link_down[r];
                    w.log(|| format!("link of {} {}", name(r), if down { "down" } else { "up" }));
                }
            }
        }
    }

    // The network heals: runs in flight finish, late requests arrive or are dropped.
    {
        let mut w = lock(&world);
        w.faults = false;
        w.link_down.iter_mut().for_each(|d| *d = false);
        w.log(|| "--- network heals ---".into());
    }
    let fail = |world: &Shared, msg: String| {
        let trace = lock(world).trace.take().unwrap_or_default();
        Err((msg, trace))
    };
    for f in flights.drain(..) {
        if let Err(e) = block_on(f.fut) {
            return fail(&world, format!("run {}->{} failed after the network healed: {e:?}", f.src, f.dst));
        }
        schedules.entry((f.src, f.dst)).or_default().succeeded();
    }
    // Never given up: every link is due again within the backoff's cap, whatever it went through.
    for ((src, dst), sched) in schedules.iter_mut() {
        if sched.next_at_ms.is_some_and(|t| t > now + BACKOFF.max_ms) {
            return fail(&world, format!("link {src}->{dst} is not retried within the cap: {sched:?} at {now}"));
        }
    }
    now += BACKOFF.max_ms;
    for ((src, dst), sched) in schedules.iter_mut() {
        if !sched.due(now) {
            return fail(&world, format!("link {src}->{dst} is not due after the cap: {sched:?} at {now}"));
        }
    }
    {
        let mut guard = lock(&world);
        let w = &mut *guard;
        while !w.delayed.is_empty() {
            let i = w.rng.index(w.delayed.len());
            if w.rng.permille(500) {
                w.deliver_late(i);
            } else {
                w.delayed.remove(i);
                w.stats.dropped_late += 1;
            }
        }
    }
    let mut quiet = false;
    for round in 1..=MAX_ROUNDS {
        lock(&world).stats.heal_rounds += 1;
        let mut moved = 0;
        let order: Vec<(usize, usize)> = (1..n).map(|r| (r, OWNER)).chain((1..n).map(|r| (OWNER, r))).collect();
        for (src, dst) in order {
            let sched = schedules.entry((src, dst)).or_default();
            sched.started();
            match replicate(&world, src, dst) {
                Ok(report) => moved += report.missing_found + report.docs_sent,
                Err(e) => return fail(&world, format!("round {round}: run {src}->{dst} failed: {e:?}")),
            }
            sched.succeeded();
        }
        if moved == 0 {
            quiet = true;
            break;
        }
    }
    if !quiet {
        return fail(&world, format!("still replicating after {MAX_ROUNDS} rounds"));
    }
    if let Some((link, sched)) = schedules.iter().find(|(_, s)| s.health != Health::Healthy || s.attempts != 0) {
        return fail(&world, format!("link {link:?} is not healthy after the healing rounds: {sched:?}"));
    }
    let mut w = lock(&world);
    if let Err(msg) = check(&mut w) {
        let mut trace = w.trace.take().unwrap_or_default();
        if !trace.is_empty() {
            for (i, inst) in w.insts.iter().enumerate() {
                for (key, doc) in &inst.docs {
                    trace.push(format!("final {key} on {}: {:?}", name(i), shape(&doc.tree).0));
                }
            }
        }
        return Err((msg, trace));
    }
    w.stats.seeds = 1;
    if w.stats.docs_with_stale_leaves_at_end > 0 {
        w.stats.stale_leaf_seeds.push(seed);
    }
    if w.stats.winners_differing_by_stale_leaves > 0 {
        w.stats.stale_winner_seeds.push(seed);
    }
    Ok(Outcome { stats: w.stats.clone(), trace: w.trace.take().unwrap_or_default() })
}

/// The tree as a comparable value: every revision with its parent, and the leaves with their
/// deleted flags, winner first.
fn shape(tree: &RevTree) -> (Vec<(Rev, Option<Rev>)>, Vec<Leaf>) {
    (tree.revs().map(|r| (r.clone(), tree.parent(r).cloned())).collect(), tree.leaves())
}

/// What differs between a tree and the expected one, briefly.
fn diff(tree: &RevTree, expected: &RevTree) -> String {
    let short = |r: &Rev| format!("{}-{}", r.pos, &r.hash[..r.hash.len().min(6)]);
    let mut out = Vec::new();
    for rev in expected.revs() {
        match (tree.contains(rev), tree.parent(rev), expected.parent(rev)) {
            (false, _, _) => out.push(format!("missing {}", short(rev))),
            (true, got, want) if got != want => {
                out.push(format!("{} under {:?}, not {:?}", short(rev), got.map(short), want.map(short)))
            }
            _ => {}
        }
    }
    out.extend(tree.revs().filter(|r| !expected.contains(r)).map(|r| format!("extra {}", short(r))));
    let leaves = |t: &RevTree| {
        t.leaves()
            .iter()
            .map(|l| format!("{}{}", short(&l.rev), if l.deleted { "(del)" } else { "" }))
            .collect::<Vec<_>>()
    };
    if tree.leaves() != expected.leaves() {
        out.push(format!("leaves {:?}, expected {:?}", leaves(tree), leaves(expected)));
    }
    let more = out.len().saturating_sub(12);
    out.truncate(12);
    if more > 0 {
        out.push(format!("{more} more"));
    }
    out.join(", ")
}

/// The checks after convergence. See the module documentation.
fn check(w: &mut World) -> Result<(), String> {
    if let Some(v) = w.violations.first() {
        return Err(format!("invariant broken while running: {v} ({} in all)", w.violations.len()));
    }
    let stemming = w.cfg.revs_limit != NO_STEMMING;
    let mut keys: BTreeSet<DocKey> = w.truth.keys().cloned().collect();
    for inst in &w.insts {
        keys.extend(inst.docs.keys().cloned());
    }
    for key in &keys {
        let truth = w.truth.get(key).ok_or_else(|| format!("{key} exists but was never written"))?;
        let parents: BTreeSet<&Rev> = truth.values().filter_map(|t| t.parent.as_ref()).collect();
        // The leaves of the written history: revisions nobody wrote a child of.
        let true_leaves: BTreeSet<Rev> = truth.keys().filter(|r| !parents.contains(r)).cloned().collect();
        let mut exact = RevTree::new();
        for (rev, t) in truth {
            let path: Vec<Rev> = std::iter::once(rev.clone()).chain(t.parent.clone()).collect();
            exact.merge_path(&path, t.deleted);
        }
        let mut docs: Vec<&Doc> = Vec::new();
        for (i, inst) in w.insts.iter().enumerate() {
            let who = name(i);
            let doc = inst.docs.get(key).ok_or_else(|| format!("{key} is missing on {who}"))?;
            let tree = &doc.tree;
            // The model itself: a body for every leaf and nothing else.
            let leaves: BTreeSet<Rev> = tree.leaves().into_iter().map(|l| l.rev).collect();
            let bodies: BTreeSet<Rev> = doc.bodies.keys().cloned().collect();
            if leaves != bodies {
                return Err(format!("{key} on {who}: bodies {bodies:?} do not match leaves {leaves:?}"));
            }
            // Every leaf as written: deleted flag and body.
            for leaf in tree.leaves() {
                let t = truth.get(&leaf.rev).ok_or_else(|| format!("{key} on {who}: unknown leaf {}", leaf.rev))?;
                if t.deleted != leaf.deleted {
                    let (rev, deleted) = (&leaf.rev, leaf.deleted);
                    return Err(format!("{key} on {who}: leaf {rev} deleted={deleted}, written deleted={}", t.deleted));
                }
                if doc.bodies[&leaf.rev] != t.body {
                    let (rev, body) = (&leaf.rev, &doc.bodies[&leaf.rev]);
                    return Err(format!("{key} on {who}: leaf {rev} has body {body}, written {}", t.body));
                }
            }
            // Every parent link is the true one.
            for rev in tree.revs() {
                let t = truth.get(rev).ok_or_else(|| format!("{key} on {who}: unknown revision {rev}"))?;
                if let Some(p) = tree.parent(rev) {
                    if Some(p) != t.parent.as_ref() {
                        return Err(format!("{key} on {who}: {rev} linked under {p}, written on {:?}", t.parent));
                    }
                }
            }
            // Every leaf of the written history is a leaf here.
            if let Some(absent) = true_leaves.iter().find(|r| !leaves.contains(*r)) {
                return Err(format!("{key} on {who}: leaf {absent} is missing"));
            }
            // No acknowledged revision is lost.
            if stemming {
                // Present, or stemmed away under a present descendant.
                let mut covered: BTreeSet<Rev> = BTreeSet::new();
                for rev in tree.revs() {
                    let mut cur = Some(rev.clone());
                    while let Some(r) = cur {
                        if !covered.insert(r.clone()) {
                            break;
                        }
                        cur = truth.get(&r).and_then(|t| t.parent.clone());
                    }
                }
                if let Some(lost) = truth.keys().find(|r| !covered.contains(*r)) {
                    return Err(format!("{key} on {who}: acknowledged {lost} is lost (no descendant either)"));
                }
            } else if shape(tree) != shape(&exact) {
                return Err(format!("{key} on {who}: tree differs from the written history: {}", diff(tree, &exact)));
            }
            docs.push(doc);
        }
        // Same leaves, winner, conflicts and bodies everywhere. With stemming, a stale leaf (one
        // with descendants elsewhere, whose history no longer reaches it: a stemming-induced
        // conflict, as in CouchDB) may be on some instances only: counted, not compared.
        let first = docs[0];
        let same_leaves = docs.iter().all(|d| d.tree.leaves() == first.tree.leaves());
        if same_leaves {
            for (i, doc) in docs.iter().enumerate().skip(1) {
                let (who, tree) = (name(i), &doc.tree);
                if tree.winner() != first.tree.winner() {
                    return Err(format!("{key}: winner differs between {who} and owner"));
                }
                if tree.conflicts() != first.tree.conflicts()
                    || tree.deleted_conflicts() != first.tree.deleted_conflicts()
                {
                    return Err(format!("{key}: conflicts differ between {who} and owner"));
                }
                if doc.bodies != first.bodies {
                    return Err(format!("{key}: leaf bodies differ between {who} and owner"));
                }
                if !stemming && shape(tree) != shape(&first.tree) {
                    return Err(format!("{key}: trees differ between {who} and owner"));
                }
            }
        } else if stemming {
            w.stats.docs_with_stale_leaves_at_end += 1;
            let all: Vec<String> =
                docs.iter().enumerate().map(|(i, d)| format!("{}: {:?}", name(i), d.tree.leaves())).collect();
            if let Some(t) = &mut w.trace {
                t.push(format!("stale leaves in {key}: {}", all.join("; ")));
            }
            if docs.iter().any(|d| d.tree.winner() != first.tree.winner()) {
                w.stats.winners_differing_by_stale_leaves += 1;
            }
        } else {
            let all: Vec<String> =
                docs.iter().enumerate().map(|(i, d)| format!("{}: {:?}", name(i), d.tree.leaves())).collect();
            return Err(format!("{key}: leaves differ: {}", all.join("; ")));
        }
        w.stats.docs_in_conflict_at_end += u64::from(!first.tree.conflicts().is_empty());
        w.stats.deleted_docs_at_end += u64::from(first.tree.is_deleted());
    }
    for (i, inst) in w.insts.iter().enumerate() {
        for (peer, seq) in &inst.checkpoints {
            if *seq > inst.seq {
                return Err(format!(
                    "{} checkpoint {seq} for {} is beyond its feed ({})",
                    name(i),
                    name(*peer),
                    inst.seq
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Running many seeds

fn env_u64(var: &str) -> Option<u64> {
    let value = std::env::var(var).ok()?;
    Some(value.trim().parse().unwrap_or_else(|_| panic!("{var}={value:?} is not a number")))
}

struct Failure {
    seed: u64,
    msg: String,
    trace: Vec<String>,
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Runs the seeds on every core. With `stop_at_first`, each thread stops at its first failure.
fn run_seeds(seeds: &[u64], sabotage: Sabotage, trace: bool, stop_at_first: bool) -> (Stats, Vec<Failure>) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(seeds.len()).max(1);
    let results: Vec<(Stats, Vec<Failure>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut stats = Stats::default();
                    let mut failures = Vec::new();
                    for &seed in seeds.iter().skip(t).step_by(threads) {
                        match catch_unwind(AssertUnwindSafe(|| simulate(seed, sabotage, trace))) {
                            Ok(Ok(outcome)) => {
                                stats.add(&outcome.stats);
                                if trace {
                                    outcome.trace.iter().for_each(|l| println!("{l}"));
                                }
                            }
                            Ok(Err((msg, trace))) => failures.push(Failure { seed, msg, trace }),
                            Err(payload) => {
                                let msg = format!("panicked: {}", panic_message(payload.as_ref()));
                                failures.push(Failure { seed, msg, trace: Vec::new() });
                            }
                        }
                        if stop_at_first && !failures.is_empty() {
                            break;
                        }
                    }
                    (stats, failures)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("seed thread")).collect()
    });
    let mut stats = Stats::default();
    let mut failures = Vec::new();
    for (s, f) in results {
        stats.add(&s);
        failures.extend(f);
    }
    failures.sort_by_key(|f| f.seed);
    (stats, failures)
}

/// 1,000 seeds by default; `SIM_SEEDS=n` (from `SIM_SEED_START`, default 0) or `SIM_SEED=n`.
#[test]
fn random_seeds_converge_after_the_network_heals() {
    let (seeds, trace): (Vec<u64>, bool) = match env_u64("SIM_SEED") {
        Some(seed) => (vec![seed], env_u64("SIM_TRACE").is_some_and(|t| t != 0)),
        None => {
            let start = env_u64("SIM_SEED_START").unwrap_or(0);
            (((start)..start + env_u64("SIM_SEEDS").unwrap_or(1000)).collect(), false)
        }
    };
    let started = Instant::now();
    let (stats, failures) = run_seeds(&seeds, Sabotage::None, trace, false);
    println!("simulation: {} seeds in {:.1?}: {stats:#?}", seeds.len(), started.elapsed());
    if let Some(first) = failures.first() {
        for line in &first.trace {
            println!("{line}");
        }
        let seeds: Vec<u64> = failures.iter().take(20).map(|f| f.seed).collect();
        panic!(
            "{} of {} seeds failed (first ones: {seeds:?}).\nseed {}: {}\nreproduce with: SIM_SEED={} SIM_TRACE=1 \
             cargo test -p hearth-replicator --test simulation random_seeds -- --nocapture",
            failures.len(),
            stats.seeds as usize + failures.len(),
            first.seed,
            first.msg,
            first.seed
        );
    }
    if seeds.len() >= 500 {
        // The simulation is not vacuous: every kind of event happened.
        let s = &stats;
        let seen = [
            ("creations", s.creations),
            ("updates", s.updates),
            ("edits of losing leaves", s.loser_edits),
            ("deletions", s.deletions),
            ("recreations", s.recreations),
            ("concurrent bursts", s.concurrent_bursts),
            ("the same edit on two instances", s.same_edit_twice),
            ("lost requests", s.lost_requests),
            ("lost replies", s.lost_replies),
            ("late deliveries", s.delivered_late),
            ("duplicates", s.duplicated),
            ("crashes", s.crashes),
            ("crashes between bulk_docs and checkpoint", s.crashes_between_bulk_docs_and_checkpoint),
            ("partitions", s.partitions),
            ("runs deferred by the backoff", s.runs_deferred),
            ("links reported down", s.links_down),
            ("runs on a link reported down", s.runs_while_down),
            ("stemmed revisions", s.stemmed),
            ("documents in conflict at the end", s.docs_in_conflict_at_end),
            ("deleted documents at the end", s.deleted_docs_at_end),
        ];
        for (what, count) in seen {
            assert!(count > 0, "no {what} in {} seeds: the simulation lost its teeth", seeds.len());
        }
    }
}

/// The checks catch broken endpoints: each deliberate bug fails some seed quickly.
#[test]
fn the_checks_catch_broken_endpoints() {
    let seeds: Vec<u64> = (0..200).collect();
    for sabotage in [
        Sabotage::IgnoreRevisions,
        Sabotage::NoFeedOnApply,
        Sabotage::SkipLastChange,
        Sabotage::EarlyCheckpoint,
        Sabotage::DropTombstones,
        Sabotage::BodyOnWinner,
    ] {
        let (_, failures) = run_seeds(&seeds, sabotage, false, true);
        let first = failures.first().unwrap_or_else(|| panic!("{sabotage:?} passed 200 seeds unnoticed"));
        println!("{sabotage:?}: caught by seed {}: {}", first.seed, first.msg);
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// A world without faults nor stemming, for scripted scenarios.
struct Sim {
    world: Shared,
}

const ALICE: usize = OWNER;
const BOB: usize = 1;
const CAROL: usize = 2;

impl Sim {
    fn new(recipients: usize) -> Sim {
        let mut world = World::new(Rng::new(0), Config::calm(recipients), false);
        world.faults = false;
        Sim { world: Arc::new(Mutex::new(world)) }
    }

    fn with_limits(self, limits: Limits) -> Sim {
        lock(&self.world).cfg.limits = limits;
        self
    }

    fn with_revs_limit(self, revs_limit: usize) -> Sim {
        lock(&self.world).cfg.revs_limit = revs_limit;
        self
    }

    fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.world)
    }

    fn create(&self, i: usize, key: &str, body: Value) -> Rev {
        self.world().write(i, key, None, false, body).expect("creation")
    }

    fn update(&self, i: usize, key: &str, leaf: &Rev, body: Value) -> Rev {
        self.world().write(i, key, Some(leaf), false, body).expect("update of a leaf")
    }

    fn delete(&self, i: usize, key: &str, leaf: &Rev) -> Rev {
        self.world().write(i, key, Some(leaf), true, json!({})).expect("deletion of a leaf")
    }

    fn replicate(&self, src: usize, dst: usize) -> Result<Report, SimError> {
        replicate(&self.world, src, dst)
    }

    /// Rounds in every direction until nothing is missing anywhere; then the full checks.
    fn sync(&self) {
        let n = self.world().insts.len();
        for _ in 0..MAX_ROUNDS {
            let mut moved = 0;
            for (src, dst) in (1..n).map(|r| (r, OWNER)).chain((1..n).map(|r| (OWNER, r))) {
                let report = self.replicate(src, dst).expect("replication without faults");
                moved += report.missing_found + report.docs_sent;
            }
            if moved == 0 {
                check(&mut self.world()).unwrap();
                return;
            }
        }
        panic!("no convergence after {MAX_ROUNDS} rounds");
    }

    fn doc(&self, i: usize, key: &str) -> Doc {
        self.world().insts[i].docs.get(key).cloned().unwrap_or_default()
    }

    fn winner(&self, i: usize, key: &str) -> Leaf {
        self.doc(i, key).tree.winner().expect("a winner")
    }

    fn feed_len(&self, i: usize) -> u64 {
        self.world().insts[i].seq
    }

    fn received(&self, from: usize, to: usize) -> u64 {
        self.world().received.get(&(from, to)).copied().unwrap_or(0)
    }

    fn checkpoint(&self, i: usize, peer: usize) -> u64 {
        self.world().insts[i].checkpoints[&peer]
    }
}

#[test]
fn concurrent_edits_converge_to_the_same_winner_everywhere() {
    let sim = Sim::new(2);
    let first = sim.create(ALICE, "d/x", json!({"title": "draft"}));
    sim.sync();
    let a = sim.update(ALICE, "d/x", &first, json!({"title": "alice"}));
    let b = sim.update(BOB, "d/x", &first, json!({"title": "bob"}));
    let c = sim.update(CAROL, "d/x", &first, json!({"title": "carol"}));
    sim.sync();

    let mut expected = [a, b, c];
    expected.sort_by(|x, y| y.cmp(x));
    for i in [ALICE, BOB, CAROL] {
        let tree = sim.doc(i, "d/x").tree;
        assert_eq!(tree.winner().unwrap().rev, expected[0], "CouchDB rule: highest hash wins at equal generation");
        assert_eq!(tree.conflicts(), expected[1..], "the losing branches are kept as conflicts");
    }

    // Bob resolves the conflict by deleting the losing leaves; the resolution replicates.
    for loser in &expected[1..] {
        sim.delete(BOB, "d/x", loser);
    }
    sim.sync();
    for i in [ALICE, BOB, CAROL] {
        let tree = sim.doc(i, "d/x").tree;
        assert_eq!(tree.winner().unwrap().rev, expected[0]);
        assert!(tree.conflicts().is_empty());
        assert_eq!(tree.deleted_conflicts().len(), 2);
    }
}

#[test]
fn the_same_edit_on_two_instances_is_one_revision_not_a_conflict() {
    let sim = Sim::new(2);
    let first = sim.create(ALICE, "d/x", json!({"n": 1}));
    sim.sync();
    let on_bob = sim.update(BOB, "d/x", &first, json!({"n": 2}));
    let on_carol = sim.update(CAROL, "d/x", &first, json!({"n": 2}));
    assert_eq!(on_bob, on_carol);
    sim.sync();
    assert!(sim.doc(ALICE, "d/x").tree.conflicts().is_empty());
    assert_eq!(sim.winner(ALICE, "d/x").rev, on_bob);
}

#[test]
fn an_edit_beats_a_concurrent_deletion_and_the_tombstone_is_kept() {
    let sim = Sim::new(2);
    let first = sim.create(ALICE, "d/x", json!({"n": 1}));
    sim.sync();
    let tombstone = sim.delete(BOB, "d/x", &first);
    let edit = sim.update(CAROL, "d/x", &first, json!({"n": 2}));
    sim.sync();
    for i in [ALICE, BOB, CAROL] {
        let tree = sim.doc(i, "d/x").tree;
        assert_eq!(tree.winner().unwrap(), Leaf { rev: edit.clone(), deleted: false });
        assert_eq!(tree.deleted_conflicts(), std::slice::from_ref(&tombstone));
        assert_eq!(sim.doc(i, "d/x").bodies[&edit], json!({"n": 2}));
    }
}

#[test]
fn a_document_recreated_after_deletion_continues_its_tree_everywhere() {
    let sim = Sim::new(2);
    let first = sim.create(BOB, "d/x", json!({"n": 1}));
    sim.sync();
    let tombstone = sim.delete(CAROL, "d/x", &first);
    sim.sync();
    assert!(sim.doc(BOB, "d/x").tree.is_deleted());
    let again = sim.create(BOB, "d/x", json!({"n": 3}));
    assert_eq!(sim.doc(BOB, "d/x").tree.parent(&again), Some(&tombstone));
    sim.sync();
    for i in [ALICE, BOB, CAROL] {
        assert_eq!(sim.winner(i, "d/x").rev, again);
        assert_eq!(sim.doc(i, "d/x").tree.history(&again).unwrap().len(), 3);
    }
}

#[test]
fn a_recipient_change_reaches_the_other_recipient_through_the_owner_and_echoes_are_cheap() {
    let sim = Sim::new(2);
    let rev = sim.create(BOB, "d/x", json!({"from": "bob"}));
    assert_eq!(sim.replicate(BOB, ALICE).unwrap().docs_sent, 1);
    assert_eq!(sim.replicate(ALICE, CAROL).unwrap().docs_sent, 1);
    assert_eq!(sim.winner(CAROL, "d/x").rev, rev);
    // The owner's feed has the change too: replicating it back to bob finds nothing missing.
    let echo = sim.replicate(ALICE, BOB).unwrap();
    assert_eq!((echo.changes_read, echo.missing_found, echo.docs_sent), (1, 0, 0));
    let echo = sim.replicate(CAROL, ALICE).unwrap();
    assert_eq!((echo.changes_read, echo.missing_found, echo.docs_sent), (1, 0, 0));
    sim.sync();
}

#[test]
fn a_lost_bulk_docs_reply_is_retried_and_applied_once() {
    let sim = Sim::new(2);
    for i in 0..3 {
        sim.create(ALICE, &format!("d/{i}"), json!({"i": i}));
    }
    sim.world().script.push_back(Fate::LoseReply);
    assert_eq!(sim.replicate(ALICE, BOB), Err(SimError::LostReply));
    // Bob applied the batch; alice does not know and keeps her checkpoint.
    assert_eq!(sim.received(ALICE, BOB), 3);
    assert_eq!(sim.feed_len(BOB), 3);
    assert_eq!(sim.checkpoint(ALICE, BOB), 0);

    // The retry re-reads the changes; `_revs_diff` finds them there, nothing is applied twice.
    let retry = sim.replicate(ALICE, BOB).unwrap();
    assert_eq!((retry.changes_read, retry.missing_found, retry.docs_sent), (3, 0, 0));
    assert_eq!(sim.received(ALICE, BOB), 3);
    assert_eq!(sim.checkpoint(ALICE, BOB), sim.feed_len(ALICE));

    // A re-sent batch (the request duplicated on the way) changes nothing the second time.
    let leaf = sim.winner(ALICE, "d/0").rev;
    let edit = sim.update(ALICE, "d/0", &leaf, json!({"i": 10}));
    sim.world().script.push_back(Fate::DuplicateNow);
    assert_eq!(sim.replicate(ALICE, BOB).unwrap().docs_sent, 1);
    assert_eq!(sim.received(ALICE, BOB), 5, "the batch arrived twice");
    assert_eq!(sim.feed_len(BOB), 4, "but it changed bob's tree once");
    let tree = sim.doc(BOB, "d/0").tree;
    assert_eq!(tree.leaves(), [Leaf { rev: edit, deleted: false }]);
    assert_eq!(tree.len(), 2);
    sim.sync();
}

#[test]
fn a_late_old_bulk_docs_does_not_undo_newer_revisions() {
    let sim = Sim::new(2);
    let first = sim.create(ALICE, "d/x", json!({"n": 1}));
    sim.world().script.push_back(Fate::Delay);
    assert_eq!(sim.replicate(ALICE, BOB), Err(SimError::Timeout));
    let second = sim.update(ALICE, "d/x", &first, json!({"n": 2}));
    sim.replicate(ALICE, BOB).unwrap();
    let before = sim.doc(BOB, "d/x");
    let feed = sim.feed_len(BOB);
    // The old request, carrying only `first`, arrives now.
    sim.world().deliver_late(0);
    let after = sim.doc(BOB, "d/x");
    // (Bob may learn that `first` was not deleted: the only difference the late request makes.)
    assert_eq!(shape(&after.tree), shape(&before.tree));
    assert_eq!(after.bodies, before.bodies);
    assert_eq!(sim.winner(BOB, "d/x").rev, second);
    assert_eq!(sim.feed_len(BOB), feed, "nothing changed, nothing recorded");
    sim.sync();
}

/// Crashes a run from alice to bob after `steps` polls (or lets it finish), resumes it, and
/// returns (documents bob received in the first run, in the resumed one, changes the resumed one
/// read, the checkpoint it resumed from).
fn crash_and_resume(docs: usize, limits: Limits, steps: usize) -> (u64, u64, u64, u64) {
    let sim = Sim::new(1).with_limits(limits);
    for i in 0..docs {
        sim.create(ALICE, &format!("d/{i:03}"), json!({"i": i}));
    }
    let mut run = flight(&sim.world, ALICE, BOB);
    for _ in 0..steps {
        if poll_once(run.fut.as_mut()).is_ready() {
            break;
        }
    }
    drop(run); // the crash: whatever was not durable is gone
    let first = sim.received(ALICE, BOB);
    let resumed_from = sim.checkpoint(ALICE, BOB);
    let resumed = sim.replicate(ALICE, BOB).unwrap();
    let second = sim.received(ALICE, BOB) - first;
    assert_eq!(second, resumed.docs_sent);
    sim.sync();
    (first, second, resumed.changes_read, resumed_from)
}

#[test]
fn a_crash_between_send_and_checkpoint_resends_at_most_one_batch() {
    let limits = Limits { batch_size: 5, max_docs: 5, max_bytes: 1 << 20 };
    // Crash right after bob applied the third batch, before alice saved her checkpoint.
    let sim = Sim::new(1).with_limits(limits);
    for i in 0..20 {
        sim.create(ALICE, &format!("d/{i:03}"), json!({"i": i}));
    }
    let mut run = flight(&sim.world, ALICE, BOB);
    while !(sim.received(ALICE, BOB) == 15 && sim.world().unsaved.contains(&(ALICE, BOB))) {
        assert!(poll_once(run.fut.as_mut()).is_pending(), "the run ended before the crash point");
    }
    drop(run);
    assert_eq!(sim.checkpoint(ALICE, BOB), 10, "two batches were acknowledged");
    let resumed = sim.replicate(ALICE, BOB).unwrap();
    assert_eq!(resumed.changes_read, 10, "the unacknowledged batch is read again, and the rest");
    assert_eq!(resumed.docs_sent, 5, "and `_revs_diff` finds it already there");
    assert_eq!(sim.received(ALICE, BOB), 20, "every document was received exactly once");
    sim.sync();

    // The same at every possible crash point of the run.
    let mut points = 0;
    for steps in 0.. {
        let (first, second, reread, from) = crash_and_resume(20, limits, steps);
        assert_eq!(first + second, 20, "crash after {steps} steps: every document received once");
        let unacknowledged = 20 - from;
        assert!(reread <= unacknowledged, "crash after {steps} steps: read {reread} changes after {from}");
        assert!(
            first.saturating_sub(from) <= limits.batch_size as u64,
            "crash after {steps} steps: {first} received but only {from} acknowledged"
        );
        points += 1;
        if first == 20 && from == 20 {
            break; // the run finished before the crash
        }
    }
    assert!(points > 20);
}

/// Not a wish, a warning (CouchDB behaves the same): when a peer lags more revisions behind than
/// `revs_limit`, the history it receives no longer reaches its old leaf, which stays a leaf, so
/// a stemming-induced conflict appears; live, it even beats a deletion. The random seeds with a
/// small limit count such stale leaves (`docs_with_stale_leaves_at_end`); hearth's default limit
/// (1000) keeps them out of reach.
#[test]
fn with_a_tiny_revs_limit_a_lagging_peer_resurrects_a_deleted_document_as_couchdb_does() {
    let sim = Sim::new(1).with_revs_limit(2);
    let first = sim.create(ALICE, "d/x", json!({"n": 1}));
    sim.sync();
    let mut leaf = first.clone();
    for n in 2..5 {
        leaf = sim.update(ALICE, "d/x", &leaf, json!({ "n": n }));
    }
    let tombstone = sim.delete(ALICE, "d/x", &leaf);
    assert!(!sim.doc(ALICE, "d/x").tree.contains(&first), "stemmed away on alice");
    sim.replicate(ALICE, BOB).unwrap();
    let bob = sim.doc(BOB, "d/x").tree;
    assert_eq!(bob.winner().unwrap(), Leaf { rev: first.clone(), deleted: false }, "alive again on bob");
    assert_eq!(bob.deleted_conflicts(), [tombstone]);
    sim.sync();
    assert_eq!(sim.winner(ALICE, "d/x").rev, first, "and, once bob offers his leaf, on alice too");
}
