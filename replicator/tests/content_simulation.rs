//! Deterministic simulation of the content channel of a files sharing, driven by the real
//! [`content::run`] over in-memory endpoints, with seeded random edits and faults between any
//! two steps.
//!
//! # Model
//!
//! An owner holds files (`key` → version; each version's bytes are fixed by it) and a feed
//! (one row per file at its latest change, as the sharing feed). Each recipient holds the
//! metadata it was sent (`key` → version), replicated up to a per-member *replication
//! checkpoint* that advances at random moments — possibly right before the sender crashes: a
//! crash between metadata and content — and its visible objects (version → bytes). The content
//! run for a member goes up to that checkpoint, from a durable content checkpoint.
//!
//! # Faults
//!
//! Lost diffs; `put`s whose body is cut (the receiver gets part of the bytes), whose reply is
//! lost (applied, but the sender sees an error), or that are delayed and delivered later, after
//! newer ones and after the file changed (reordering); the sender crashing at any call (its
//! in-memory state gone, the durable checkpoint kept); bytes not here yet on the sender
//! (a relay waiting). Between any two calls the world moves on: new files, new versions,
//! deletions, metadata advancing.
//!
//! # Checks
//!
//! Always: a visible object holds exactly its version's bytes (content pending is never
//! served partial or wrong), and no (member, version) is committed twice (a completed file is
//! never sent again, whatever failed around it). After the faults stop and the metadata is
//! fully replicated: runs until `Done`, then every member holds the bytes of the version each
//! of its documents names. `the_checks_catch_broken_endpoints` proves each check bites.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use hearth_replicator::content::{self, ContentSource, ContentTarget, FileOffer, Hold, Need, OfferBatch, Outcome};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn permille(&mut self, p: u64) -> bool {
        self.below(1000) < p
    }
}

/// Whether a run's future was woken since it was last polled.
struct Woken(std::sync::atomic::AtomicBool);

impl std::task::Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The endpoints never wait: a run only waits on its own hand-overs (a file to the target's
/// window, an answer back), each of which wakes it at once. A poll left pending without a wake
/// is a run stuck for good.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let woken = Arc::new(Woken(std::sync::atomic::AtomicBool::new(false)));
    let waker = Waker::from(woken.clone());
    loop {
        woken.0.store(false, std::sync::atomic::Ordering::SeqCst);
        match f.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(v) => return v,
            Poll::Pending if woken.0.load(std::sync::atomic::Ordering::SeqCst) => {}
            Poll::Pending => panic!("a run waits, and nothing will wake it"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sabotage {
    None,
    /// The receiver commits what it got without checking it against its document.
    NoVerify,
    /// The receiver answers `missing` for versions it holds.
    DiffIgnoresPresence,
    /// The sender's batches claim every row up to the end was read.
    SkipsRows,
}

fn bytes_of(key: &str, version: u64) -> Vec<u8> {
    let len = 1 + (version as usize * 7 + key.len() * 13) % 64;
    (0..len).map(|i| (i as u64 ^ version ^ key.len() as u64) as u8).collect()
}

#[derive(Default)]
struct Member {
    /// Metadata: key → version named.
    docs: BTreeMap<String, u64>,
    objects: HashMap<u64, Vec<u8>>,
    /// The replication checkpoint (owner's feed sequence).
    link_seq: u64,
    /// The durable content checkpoint.
    content_seq: u64,
    committed: HashMap<u64, usize>,
}

struct World {
    rng: Rng,
    sabotage: Sabotage,
    faults: bool,
    /// Owner: key → (version, seq of its row, deleted).
    files: BTreeMap<String, (u64, u64, bool)>,
    seq: u64,
    next_version: u64,
    members: Vec<Member>,
    /// Delayed puts: (member, key, version, bytes).
    delayed: Vec<(usize, String, u64, Vec<u8>)>,
    /// Versions whose bytes have not reached the owner yet (a relay waiting).
    not_here: HashSet<u64>,
    /// Version → key (versions are unique).
    versions: HashMap<u64, String>,
    stats: HashMap<&'static str, u64>,
}

#[derive(Debug)]
struct Fault;

impl World {
    fn new(seed: u64, members: usize, sabotage: Sabotage) -> World {
        let mut w = World {
            rng: Rng(seed),
            sabotage,
            faults: true,
            files: BTreeMap::new(),
            seq: 0,
            next_version: 1,
            members: (0..members).map(|_| Member::default()).collect(),
            delayed: Vec::new(),
            not_here: HashSet::new(),
            versions: HashMap::new(),
            stats: HashMap::new(),
        };
        for _ in 0..8 {
            w.edit();
        }
        w
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    fn edit(&mut self) {
        self.seq += 1;
        let n = self.files.len() as u64;
        let key = if n == 0 || self.rng.permille(400) {
            format!("f{}", self.seq)
        } else {
            self.files.keys().nth(self.rng.below(n) as usize).cloned().unwrap_or_default()
        };
        let deleting = self.files.contains_key(&key) && self.rng.permille(150);
        let version = self.next_version;
        self.next_version += 1;
        if self.faults && self.rng.permille(100) {
            self.not_here.insert(version);
        }
        self.versions.insert(version, key.clone());
        self.files.insert(key, (version, self.seq, deleting));
    }

    /// Metadata of member `m` catches up with the owner (the replicator, abstracted).
    fn replicate_metadata(&mut self, m: usize) {
        let files: Vec<(String, u64, bool)> = self.files.iter().map(|(k, (v, _, d))| (k.clone(), *v, *d)).collect();
        let member = &mut self.members[m];
        for (k, v, d) in files {
            if d {
                member.docs.remove(&k);
            } else {
                member.docs.insert(k, v);
            }
        }
        member.link_seq = self.seq;
    }

    /// The world moves on between two calls.
    fn step(&mut self) {
        if !self.faults {
            return; // healed: nothing moves any more
        }
        match self.rng.below(10) {
            0 | 1 => self.edit(),
            2 | 3 => {
                let m = self.rng.below(self.members.len() as u64) as usize;
                self.replicate_metadata(m);
            }
            4 if !self.delayed.is_empty() => {
                let i = self.rng.below(self.delayed.len() as u64) as usize;
                let (m, key, version, bytes) = self.delayed.remove(i);
                self.count("delayed puts delivered");
                let _ = self.apply_put(m, &key, version, bytes);
            }
            5 if !self.not_here.is_empty() => {
                let v = *self.not_here.iter().next().unwrap_or(&0);
                self.not_here.remove(&v);
            }
            _ => {}
        }
    }

    fn check_visible(&self) {
        for (m, member) in self.members.iter().enumerate() {
            for (version, bytes) in &member.objects {
                let key = self.key_of(*version);
                assert_eq!(
                    bytes,
                    &bytes_of(&key, *version),
                    "member {m}: version {version} is visible with other bytes"
                );
            }
            for (version, n) in &member.committed {
                assert!(*n <= 1, "member {m}: version {version} was committed {n} times");
            }
        }
    }

    fn key_of(&self, version: u64) -> String {
        self.versions.get(&version).cloned().unwrap_or_default()
    }

    /// The receiver: verify against the document here, commit whole.
    fn apply_put(&mut self, m: usize, key: &str, version: u64, bytes: Vec<u8>) -> Result<(), Fault> {
        let sabotage = self.sabotage;
        let member = &mut self.members[m];
        if member.docs.get(key) != Some(&version) {
            return Err(Fault); // 409: the document here does not name this version
        }
        if member.objects.contains_key(&version) {
            return Ok(()); // present: nothing written
        }
        if sabotage != Sabotage::NoVerify && bytes != bytes_of(key, version) {
            return Err(Fault); // 412: nothing kept
        }
        member.objects.insert(version, bytes);
        *member.committed.entry(version).or_default() += 1;
        self.check_visible();
        Ok(())
    }
}

type Shared = Arc<Mutex<World>>;

struct Owner {
    world: Shared,
    member: usize,
}

impl Owner {
    fn call(&mut self) -> Result<(), Fault> {
        let mut w = self.world.lock().unwrap();
        w.step();
        if w.faults && w.rng.permille(20) {
            w.count("sender crashes");
            return Err(Fault);
        }
        Ok(())
    }
}

impl ContentSource for Owner {
    type Error = Fault;
    type Content = Vec<u8>;

    async fn checkpoint(&mut self) -> Result<u64, Fault> {
        self.call()?;
        Ok(self.world.lock().unwrap().members[self.member].content_seq)
    }

    async fn offers(&mut self, since: u64, upto: u64, limit: usize) -> Result<OfferBatch, Fault> {
        self.call()?;
        let w = self.world.lock().unwrap();
        let mut rows: Vec<(u64, String, u64, bool)> = w
            .files
            .iter()
            .filter(|(_, (_, s, _))| *s > since && *s <= upto)
            .map(|(k, (v, s, d))| (*s, k.clone(), *v, *d))
            .collect();
        rows.sort();
        let more = rows.len() > limit;
        rows.truncate(limit);
        let last_seq = if w.sabotage == Sabotage::SkipsRows { upto } else { rows.last().map_or(since, |r| r.0) };
        let offers = rows
            .iter()
            .filter(|r| !r.3)
            .map(|(s, k, v, _)| FileOffer {
                seq: *s,
                key: k.clone(),
                version: v.to_string(),
                size: bytes_of(k, *v).len() as u64,
                md5sum: String::new(),
            })
            .collect();
        Ok(OfferBatch { offers, last_seq, pending: more })
    }

    async fn read(&mut self, offer: &FileOffer) -> Result<Option<Vec<u8>>, Fault> {
        self.call()?;
        let version: u64 = offer.version.parse().map_err(|_| Fault)?;
        let w = self.world.lock().unwrap();
        Ok((!w.not_here.contains(&version)).then(|| bytes_of(&offer.key, version)))
    }

    async fn save_checkpoint(&mut self, seq: u64, _sent: Option<&FileOffer>) -> Result<(), Fault> {
        self.call()?;
        let mut w = self.world.lock().unwrap();
        let m = self.member;
        assert!(seq >= w.members[m].content_seq, "the content checkpoint only moves forward");
        w.members[m].content_seq = seq;
        Ok(())
    }
}

struct Recipient {
    world: Shared,
    member: usize,
    /// The versions the member held when it last answered a diff.
    present_at_diff: HashSet<u64>,
}

impl ContentTarget<Vec<u8>> for Recipient {
    type Error = Fault;

    async fn diff(&mut self, offers: &[FileOffer]) -> Result<HashMap<String, Need>, Fault> {
        let mut w = self.world.lock().unwrap();
        w.step();
        if w.faults && w.rng.permille(50) {
            w.count("lost diffs");
            return Err(Fault);
        }
        let sabotage = w.sabotage;
        let member = &w.members[self.member];
        self.present_at_diff = member.objects.keys().copied().collect();
        Ok(offers
            .iter()
            .map(|o| {
                let version: u64 = o.version.parse().unwrap_or(0);
                let need = if member.docs.get(&o.key) != Some(&version) {
                    Need::Stale
                } else if member.objects.contains_key(&version) && sabotage != Sabotage::DiffIgnoresPresence {
                    Need::Present
                } else {
                    Need::Missing
                };
                (o.key.clone(), need)
            })
            .collect())
    }

    async fn put(&mut self, offer: &FileOffer, mut content: Vec<u8>) -> Result<(), Fault> {
        let version: u64 = offer.version.parse().map_err(|_| Fault)?;
        assert!(!self.present_at_diff.contains(&version), "version {version}, which the member held, was sent again");
        let mut w = self.world.lock().unwrap();
        w.step();
        if w.faults {
            match w.rng.below(1000) {
                0..=59 => {
                    // Cut on its way: the receiver gets part of the bytes.
                    w.count("cut puts");
                    let keep = w.rng.below(content.len() as u64) as usize;
                    content.truncate(keep);
                    let _ = w.apply_put(self.member, &offer.key, version, content);
                    return Err(Fault);
                }
                60..=109 => {
                    w.count("lost put replies");
                    let _ = w.apply_put(self.member, &offer.key, version, content);
                    return Err(Fault);
                }
                110..=159 => {
                    w.count("delayed puts");
                    w.delayed.push((self.member, offer.key.clone(), version, content));
                    return Err(Fault);
                }
                _ => {}
            }
        }
        w.count("puts");
        w.apply_put(self.member, &offer.key, version, content)
    }
}

/// One content run for member `m`; whether it ended `Done`.
fn run_once(world: &Shared, m: usize, limit: usize) -> bool {
    let upto = world.lock().unwrap().members[m].link_seq;
    let mut source = Owner { world: world.clone(), member: m };
    let mut target = Recipient { world: world.clone(), member: m, present_at_diff: HashSet::new() };
    let outcome = block_on(content::run(&mut source, &mut target, upto, limit));
    world.lock().unwrap().check_visible();
    matches!(outcome, Ok((Outcome::Done, _)))
}

fn simulate(seed: u64, sabotage: Sabotage) -> World {
    let members = 2 + (seed % 2) as usize;
    let world: Shared = Arc::new(Mutex::new(World::new(seed, members, sabotage)));
    let limit = 1 + (seed % 5) as usize;
    for _ in 0..100 {
        let m = world.lock().unwrap().rng.below(members as u64) as usize;
        run_once(&world, m, limit);
    }
    // Heal: no more faults, nothing new; the delayed requests land; metadata catches up.
    {
        let mut w = world.lock().unwrap();
        w.faults = false;
        w.not_here.clear();
        let delayed = std::mem::take(&mut w.delayed);
        for (m, key, version, bytes) in delayed {
            let _ = w.apply_put(m, &key, version, bytes);
        }
        for m in 0..members {
            w.replicate_metadata(m);
        }
    }
    for m in 0..members {
        let mut done = false;
        for _ in 0..10 {
            if run_once(&world, m, limit) {
                done = true;
                break;
            }
        }
        assert!(done, "seed {seed}: member {m}'s content run never finished after healing");
    }
    let w =
        Arc::try_unwrap(world).ok().and_then(|m| m.into_inner().ok()).unwrap_or_else(|| panic!("world still shared"));
    for (m, member) in w.members.iter().enumerate() {
        for (key, version) in &member.docs {
            assert_eq!(
                member.objects.get(version),
                Some(&bytes_of(key, *version)),
                "seed {seed}: member {m} lacks the content of {key} version {version}"
            );
        }
    }
    w
}

#[test]
fn content_reaches_every_member_whole_once_under_crashes_cuts_and_reordering() {
    let mut totals: BTreeMap<&'static str, u64> = BTreeMap::new();
    for seed in 0..100 {
        let w = simulate(seed, Sabotage::None);
        for (k, v) in w.stats {
            *totals.entry(k).or_default() += v;
        }
    }
    println!("{totals:?}");
    for what in
        ["sender crashes", "cut puts", "lost put replies", "delayed puts", "delayed puts delivered", "lost diffs"]
    {
        assert!(totals.get(what).copied().unwrap_or(0) > 0, "the simulation never exercised {what}");
    }
}

#[test]
fn the_checks_catch_broken_endpoints() {
    for sabotage in [Sabotage::NoVerify, Sabotage::DiffIgnoresPresence, Sabotage::SkipsRows] {
        let caught = (0..100).any(|seed| std::panic::catch_unwind(|| simulate(seed, sabotage)).is_err());
        assert!(caught, "{sabotage:?} went unnoticed");
    }
}

// One file whose bytes never come (lost, or refused on their way to the sender) must not stall
// every file after it: they are delivered, and the checkpoint stays before it.

/// Five files; the bytes of file 2 are not on the source (lost, or not arrived).
struct LossySource {
    checkpoint: u64,
    lost: u64,
}

fn numbered(seq: u64) -> FileOffer {
    FileOffer { seq, key: format!("f{seq}"), version: format!("v{seq}"), size: 10, md5sum: String::new() }
}

impl ContentSource for LossySource {
    type Error = ();
    type Content = u64;
    async fn checkpoint(&mut self) -> Result<u64, ()> {
        Ok(self.checkpoint)
    }
    async fn offers(&mut self, since: u64, upto: u64, limit: usize) -> Result<OfferBatch, ()> {
        let offers: Vec<FileOffer> = (since + 1..=upto).take(limit).map(numbered).collect();
        let last_seq = offers.last().map_or(since, |o| o.seq);
        Ok(OfferBatch { offers, last_seq, pending: last_seq < upto })
    }
    async fn read(&mut self, offer: &FileOffer) -> Result<Option<u64>, ()> {
        Ok((offer.seq != self.lost).then_some(offer.seq))
    }
    async fn save_checkpoint(&mut self, seq: u64, _: Option<&FileOffer>) -> Result<(), ()> {
        assert!(seq >= self.checkpoint, "the checkpoint never goes back");
        self.checkpoint = seq;
        Ok(())
    }
}

#[derive(Default)]
struct HoldingTarget {
    held: HashSet<String>,
    puts: u64,
}

impl ContentTarget<u64> for HoldingTarget {
    type Error = ();
    async fn diff(&mut self, offers: &[FileOffer]) -> Result<HashMap<String, Need>, ()> {
        Ok(offers
            .iter()
            .map(|o| (o.key.clone(), if self.held.contains(&o.key) { Need::Present } else { Need::Missing }))
            .collect())
    }
    async fn put(&mut self, offer: &FileOffer, _: u64) -> Result<(), ()> {
        assert!(self.held.insert(offer.key.clone()), "{} sent twice", offer.key);
        self.puts += 1;
        Ok(())
    }
}

#[test]
fn a_file_whose_bytes_never_come_holds_the_checkpoint_but_not_the_files_after_it() {
    block_on(async {
        let (mut source, mut target) = (LossySource { checkpoint: 0, lost: 2 }, HoldingTarget::default());
        let (outcome, report) = content::run(&mut source, &mut target, 5, 2).await.unwrap();
        assert_eq!(outcome, Outcome::Blocked);
        assert_eq!((report.files_sent, report.waiting), (4, 1));
        assert_eq!(report.held, vec![(numbered(2), Hold::NotHere)], "the report names the file held, and why");
        assert_eq!(source.checkpoint, 1, "the checkpoint stays before the missing file");
        assert!(["f1", "f3", "f4", "f5"].iter().all(|k| target.held.contains(*k)));
        // Again, still without its bytes: nothing is sent twice.
        let (outcome, report) = content::run(&mut source, &mut target, 5, 2).await.unwrap();
        assert_eq!((outcome, report.files_sent, report.waiting), (Outcome::Blocked, 0, 1));
        // Its bytes arrive: it goes, alone, and the checkpoint reaches the end.
        source.lost = 0;
        let (outcome, report) = content::run(&mut source, &mut target, 5, 2).await.unwrap();
        assert_eq!((outcome, report.files_sent, source.checkpoint), (Outcome::Done, 1, 5));
        assert_eq!(target.puts, 5);
    });
}

// The large files a batch lacks go first (on up to half the window), so a large file travels
// while the small ones go around it; the checkpoint still moves in feed order only.

/// Files 1..=n of the given sizes, all of whose bytes are here.
struct SizedSource {
    sizes: Vec<u64>,
    checkpoint: u64,
}

impl ContentSource for SizedSource {
    type Error = String;
    type Content = ();
    async fn checkpoint(&mut self) -> Result<u64, String> {
        Ok(self.checkpoint)
    }
    async fn offers(&mut self, since: u64, upto: u64, limit: usize) -> Result<OfferBatch, String> {
        let offers: Vec<FileOffer> = (since + 1..=upto.min(self.sizes.len() as u64))
            .take(limit)
            .map(|seq| FileOffer { size: self.sizes[seq as usize - 1], ..numbered(seq) })
            .collect();
        let last_seq = offers.last().map_or(since, |o| o.seq);
        Ok(OfferBatch { offers, last_seq, pending: last_seq < upto })
    }
    async fn read(&mut self, _: &FileOffer) -> Result<Option<()>, String> {
        Ok(Some(()))
    }
    async fn save_checkpoint(&mut self, seq: u64, _: Option<&FileOffer>) -> Result<(), String> {
        assert!(seq >= self.checkpoint, "the checkpoint never goes back");
        self.checkpoint = seq;
        Ok(())
    }
}

/// Records the order files are put in; putting `failing` fails (a cut link, not a refusal).
#[derive(Default)]
struct OrderTarget {
    held: HashSet<String>,
    order: Vec<String>,
    failing: Option<String>,
}

impl ContentTarget<()> for OrderTarget {
    type Error = String;
    async fn diff(&mut self, offers: &[FileOffer]) -> Result<HashMap<String, Need>, String> {
        Ok(offers
            .iter()
            .map(|o| (o.key.clone(), if self.held.contains(&o.key) { Need::Present } else { Need::Missing }))
            .collect())
    }
    async fn put(&mut self, offer: &FileOffer, _: ()) -> Result<(), String> {
        self.order.push(offer.key.clone());
        if self.failing.as_ref() == Some(&offer.key) {
            return Err(format!("{} cut", offer.key));
        }
        assert!(self.held.insert(offer.key.clone()), "{} sent twice", offer.key);
        Ok(())
    }
}

#[test]
fn the_largest_files_go_first_and_the_checkpoint_moves_in_feed_order_only() {
    block_on(async {
        let large = content::LARGE;
        let mut source = SizedSource { sizes: vec![10, large, 10, 2 * large, 10], checkpoint: 0 };
        let mut target = OrderTarget { failing: Some("f2".into()), ..OrderTarget::default() };
        // f4 (the largest) goes, then f2, the other large one, fails: nothing else is attempted,
        // and f4, delivered, does not move the checkpoint past f1, which was not.
        let failed = content::run(&mut source, &mut target, 5, 10).await;
        assert_eq!(failed, Err("f2 cut".to_owned()));
        assert_eq!(target.order, ["f4", "f2"]);
        assert_eq!(source.checkpoint, 0, "f1 was never delivered");
        // The link is back: the rest goes, largest first, and f4 is not sent again.
        target.failing = None;
        target.order.clear();
        let (outcome, report) = content::run(&mut source, &mut target, 5, 10).await.unwrap();
        assert_eq!((outcome, report.files_sent, source.checkpoint), (Outcome::Done, 4, 5));
        assert_eq!(target.order, ["f2", "f1", "f3", "f5"], "large files first, then feed order");
    });
}
