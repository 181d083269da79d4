//! The embedded SQLite backend: one database file per instance, WAL journal, `synchronous=FULL`
//! so a write is on disk before it is acknowledged, one transaction per bulk write.
//!
//! Tables: `docs` holds one row per document (its encoded revision tree, winner, leaves and the
//! sequence of its latest change; the `(doctype, seq)` index is the changes feed), `bodies` the
//! bodies of leaf revisions (their JSON text as written, see `store::body`), `doctypes` the
//! per-doctype sequence counter and counts, `feed_counts` how many documents sit in each range
//! of [`FEED_BUCKET`] sequence numbers (for `pending`, see [`pending`]), `locals` the `_local`
//! documents. Revision trees are read and written per document, never whole tables.
//!
//! SQLite connections are blocking: every call runs on tokio's blocking pool. Writes go through
//! one connection (SQLite has one writer anyway); reads use a small pool of their own
//! connections, which WAL lets run alongside a write.
//!
//! Writes are committed in groups: the writes that arrive while one transaction is being
//! written wait in a queue, and the next transaction takes them all, each in a savepoint of its
//! own (a write that fails is rolled back alone, the others commit). One fsync then covers the
//! group, and each write is acknowledged only once that commit is on disk. Many small
//! concurrent writes (single documents, checkpoints) thus cost one fsync per group instead of
//! one each.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use async_trait::async_trait;
use hearth_replicator::rev::{new_rev, Rev};
use hearth_replicator::tree::RevTree;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tokio::sync::watch;

use super::tracking::{self, TrackAction};
use super::*;

/// 3: `feed_counts` (filled from `docs` when an older file is opened), and where and how each
/// document entered its sharing (`shared.joined`, `initial`, `origin`; `sharing_starts`).
const SCHEMA_VERSION: i64 = 3;

/// Sequence numbers per `feed_counts` bucket.
pub const FEED_BUCKET: u64 = 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS doctypes (
    doctype TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    doc_count INTEGER NOT NULL,
    del_count INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS docs (
    doctype TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    winner TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    leaves TEXT NOT NULL,
    tree BLOB NOT NULL,
    PRIMARY KEY (doctype, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS docs_by_seq ON docs (doctype, seq);
CREATE TABLE IF NOT EXISTS bodies (
    doctype TEXT NOT NULL,
    id TEXT NOT NULL,
    rev TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (doctype, id, rev)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shared (
    sharing_id TEXT NOT NULL,
    doctype TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    rule INTEGER NOT NULL,
    removed INTEGER NOT NULL,
    joined INTEGER NOT NULL DEFAULT 0,
    initial INTEGER NOT NULL DEFAULT 0,
    origin INTEGER,
    PRIMARY KEY (sharing_id, doctype, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS shared_by_seq ON shared (sharing_id, seq);
CREATE TABLE IF NOT EXISTS sharing_seqs (
    sharing_id TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS feed_counts (
    doctype TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    docs INTEGER NOT NULL,
    PRIMARY KEY (doctype, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sharing_starts (
    sharing_id TEXT PRIMARY KEY
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS locals (
    doctype TEXT NOT NULL,
    id TEXT NOT NULL,
    rev INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (doctype, id)
) WITHOUT ROWID;
";

/// Reader connections kept open per instance.
const MAX_IDLE_READERS: usize = 4;

pub struct SqliteStore {
    inner: Arc<Inner>,
}

/// A queued write: runs in its savepoint, and answers how to acknowledge it once the group's
/// commit is known (`None`: committed; `Some(e)`: the commit failed).
/// A group that cannot be written gives each of its writes the error instead (`Err`).
type Job = Box<dyn FnOnce(Result<(&Transaction<'_>, &WriteCtx), StoreError>) -> Ack + Send>;
type Ack = Box<dyn FnOnce(Option<StoreError>) + Send>;

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    /// Writes waiting for the next group commit (see the module docs).
    queue: Mutex<Vec<Job>>,
    readers: Mutex<Vec<Connection>>,
    revs_limit: usize,
    tracking: tracking::Rules,
    commits: watch::Sender<u64>,
}

/// What a write transaction needs besides the connection.
struct WriteCtx {
    revs_limit: usize,
    tracking: Arc<Vec<TrackRule>>,
}

fn internal(e: impl Into<anyhow::Error>) -> StoreError {
    StoreError::Internal(e.into())
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::SqliteFailure(ref f, _)
                if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
            {
                StoreError::Unavailable(e.into())
            }
            rusqlite::Error::SqliteFailure(ref f, _) if f.code == rusqlite::ErrorCode::DiskFull => {
                StoreError::Full(e.into())
            }
            e => StoreError::Internal(e.into()),
        }
    }
}

fn open_connection(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("failed to open {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    Ok(conn)
}

/// Brings a database written by an older hearth to [`SCHEMA_VERSION`] (`SCHEMA` has already
/// created whatever table was missing).
fn migrate(conn: &Connection, from: i64) -> rusqlite::Result<()> {
    if (1..3).contains(&from) {
        // Version 3: where and how each document entered its sharing. Older rows get
        // `joined = 0`, which every member's checkpoint is past: their documents count as
        // already known to every member, as version 2 assumed.
        let columns: Vec<String> =
            conn.prepare("PRAGMA table_info(shared)")?.query_map([], |r| r.get(1))?.collect::<Result<_, _>>()?;
        for (name, ddl) in [
            ("joined", "ALTER TABLE shared ADD COLUMN joined INTEGER NOT NULL DEFAULT 0"),
            ("initial", "ALTER TABLE shared ADD COLUMN initial INTEGER NOT NULL DEFAULT 0"),
            ("origin", "ALTER TABLE shared ADD COLUMN origin INTEGER"),
        ] {
            if !columns.iter().any(|c| c == name) {
                conn.execute_batch(ddl)?;
            }
        }
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`.
    pub fn open(path: &Path, revs_limit: usize) -> anyhow::Result<SqliteStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
        }
        let conn = open_connection(path)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            anyhow::bail!("{} was written by a newer hearth (schema {version})", path.display());
        }
        // Only a new or older file is written to: opening must work on a full disk, where the
        // store then serves reads and refuses writes (`StoreError::Full`).
        if version < SCHEMA_VERSION {
            conn.execute_batch(SCHEMA).context("failed to create the schema")?;
            migrate(&conn, version).context("failed to upgrade the schema")?;
            if version < 3 {
                // Files from before `feed_counts`: count the feed once.
                conn.execute(
                    "INSERT OR REPLACE INTO feed_counts (doctype, bucket, docs)
                     SELECT doctype, seq / ?1, COUNT(*) FROM docs GROUP BY doctype, seq / ?1",
                    params![FEED_BUCKET as i64],
                )
                .context("failed to count the changes feeds")?;
            }
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        let (commits, _) = watch::channel(0);
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer: Mutex::new(conn),
                queue: Mutex::new(Vec::new()),
                readers: Mutex::new(Vec::new()),
                revs_limit: revs_limit.max(1),
                tracking: tracking::Rules::default(),
                commits,
            }),
        })
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().map_err(|_| internal(anyhow::anyhow!("reader pool poisoned")))?.pop();
            let conn = match pooled {
                Some(c) => c,
                None => open_connection(&inner.path).map_err(StoreError::Unavailable)?,
            };
            // One read transaction: a snapshot, so a write committing between two statements
            // (e.g. the tree, then the body of its winner) is never half seen.
            let out = conn.unchecked_transaction().map_err(StoreError::from).and_then(|tx| f(&tx));
            if let Ok(mut pool) = inner.readers.lock() {
                if pool.len() < MAX_IDLE_READERS {
                    pool.push(conn);
                }
            }
            out
        })
        .await
        .map_err(internal)?
    }

    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &WriteCtx) -> Result<T, StoreError> + Send + 'static,
    {
        let (sender, receiver) = tokio::sync::oneshot::channel::<Result<T, StoreError>>();
        let job: Job = Box::new(move |group| {
            let out = match group {
                Ok((tx, ctx)) => in_savepoint(tx, |tx| f(tx, ctx)),
                Err(e) => Err(e),
            };
            Box::new(move |failed: Option<StoreError>| {
                let _ = sender.send(match (failed, out) {
                    (Some(e), Ok(_)) => Err(e),
                    (_, out) => out,
                });
            })
        });
        let leader = {
            let mut queue = self.inner.queue.lock().map_err(|_| internal(anyhow::anyhow!("write queue poisoned")))?;
            queue.push(job);
            queue.len() == 1
        };
        if leader {
            // The queue was empty: no group is waiting to take it, this write starts one. (A
            // group being written has taken its queue already; this one waits for it.)
            let inner = self.inner.clone();
            let group = tokio::task::spawn_blocking(move || commit_group(&inner));
            drop(group);
        }
        receiver.await.map_err(|_| internal(anyhow::anyhow!("the write was dropped: its group commit failed")))?
    }
}

/// Runs `f` in a savepoint of `tx`: a failure undoes `f`'s writes alone.
fn in_savepoint<T>(
    tx: &Transaction<'_>,
    f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    tx.prepare_cached("SAVEPOINT write")?.execute([])?;
    match f(tx) {
        Ok(v) => {
            tx.prepare_cached("RELEASE write")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            tx.execute_batch("ROLLBACK TO write; RELEASE write")?;
            Err(e)
        }
    }
}

/// Takes every queued write and commits them in one transaction, then acknowledges each.
fn commit_group(inner: &Inner) {
    let mut conn = match inner.writer.lock() {
        Ok(c) => c,
        Err(_) => return fail_all(take_queue(inner), internal(anyhow::anyhow!("writer poisoned"))),
    };
    let jobs = take_queue(inner);
    if jobs.is_empty() {
        return;
    }
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return fail_all(jobs, e.into()),
    };
    // Rules are read under the writer lock, so a write sees the rules set before it.
    let tracking = match inner.tracking.get() {
        Ok(t) => t,
        Err(e) => return fail_all(jobs, e),
    };
    let ctx = WriteCtx { revs_limit: inner.revs_limit, tracking };
    let acks: Vec<Ack> = jobs.into_iter().map(|job| job(Ok((&tx, &ctx)))).collect();
    match tx.commit() {
        Ok(()) => {
            inner.commits.send_modify(|n| *n += 1);
            for ack in acks {
                ack(None);
            }
        }
        Err(e) => {
            let mut errors = errors_for(acks.len(), e.into());
            for ack in acks {
                ack(errors.pop());
            }
        }
    }
}

fn take_queue(inner: &Inner) -> Vec<Job> {
    inner.queue.lock().map(|mut q| std::mem::take(&mut *q)).unwrap_or_default()
}

/// Answers every write of a group that could not be written.
fn fail_all(jobs: Vec<Job>, error: StoreError) {
    let mut errors = errors_for(jobs.len(), error);
    for job in jobs {
        if let Some(e) = errors.pop() {
            job(Err(e))(None);
        }
    }
}

/// The error of a failed group, once per write (store errors are not `Clone`: the first write
/// gets the error itself, the others a copy of the same kind).
fn errors_for(n: usize, e: StoreError) -> Vec<StoreError> {
    let copy = |e: &StoreError| match e {
        StoreError::Unavailable(x) => StoreError::Unavailable(anyhow::anyhow!("{x:#}")),
        StoreError::Full(x) => StoreError::Full(anyhow::anyhow!("{x:#}")),
        StoreError::Internal(x) => StoreError::Internal(anyhow::anyhow!("{x:#}")),
        StoreError::Corrupt(x) => StoreError::Corrupt(x.clone()),
        StoreError::NotFound => StoreError::NotFound,
        StoreError::Deleted => StoreError::Deleted,
        StoreError::Conflict => StoreError::Conflict,
    };
    let mut out: Vec<StoreError> = (1..n).map(|_| copy(&e)).collect();
    out.push(e);
    out.reverse();
    out
}

/// What the `docs` table holds for one document.
struct DocRow {
    tree: RevTree,
    deleted: bool,
    seq: u64,
}

fn load_doc(conn: &Connection, doctype: &str, id: &str) -> Result<Option<DocRow>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT tree, deleted, seq FROM docs WHERE doctype = ?1 AND id = ?2")?;
    let row = stmt
        .query_row(params![doctype, id], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, bool>(1)?, r.get::<_, i64>(2)?)))
        .optional()?;
    row.map(|(bytes, deleted, seq)| {
        let tree = RevTree::decode(&bytes).map_err(|_| StoreError::Corrupt(format!("revision tree of {id}")))?;
        Ok(DocRow { tree, deleted, seq: seq as u64 })
    })
    .transpose()
}

fn load_body(conn: &Connection, doctype: &str, id: &str, rev: &Rev) -> Result<Option<Body>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT body FROM bodies WHERE doctype = ?1 AND id = ?2 AND rev = ?3")?;
    let bytes: Option<Vec<u8>> = stmt.query_row(params![doctype, id, rev.to_string()], |r| r.get(0)).optional()?;
    bytes.map(|b| parse_body(id, b)).transpose()
}

/// Bodies are stored as their JSON text; files written before bodies were kept as written
/// hold serde_json's serialisation of the same object, which reads the same way.
fn parse_body(id: &str, bytes: Vec<u8>) -> Result<Body, StoreError> {
    Body::from_stored(bytes).map_err(|e| StoreError::Corrupt(format!("body of {id}: {e}")))
}

fn encode_leaves(tree: &RevTree) -> String {
    let leaves: Vec<(String, bool)> = tree.leaves().into_iter().map(|l| (l.rev.to_string(), l.deleted)).collect();
    serde_json::to_string(&leaves).unwrap_or_else(|_| "[]".into())
}

fn decode_leaves(id: &str, s: &str) -> Result<Vec<(Rev, bool)>, StoreError> {
    let raw: Vec<(String, bool)> =
        serde_json::from_str(s).map_err(|_| StoreError::Corrupt(format!("leaves of {id}")))?;
    raw.into_iter()
        .map(|(r, d)| Ok((r.parse().map_err(|_| StoreError::Corrupt(format!("leaves of {id}")))?, d)))
        .collect()
}

/// The counters of one doctype, held in memory for the length of a write transaction.
struct DoctypeCounters {
    last_seq: u64,
    doc_count: i64,
    del_count: i64,
    /// Changes to `feed_counts` (bucket → documents added or removed), written once at the end
    /// of the transaction: a batch moves many documents but touches few buckets.
    buckets: BTreeMap<u64, i64>,
}

impl DoctypeCounters {
    fn load(tx: &Transaction<'_>, doctype: &str) -> Result<Self, StoreError> {
        let mut stmt = tx.prepare_cached("SELECT last_seq, doc_count, del_count FROM doctypes WHERE doctype = ?1")?;
        let row = stmt.query_row(params![doctype], |r| Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?))).optional()?;
        let (last_seq, doc_count, del_count) = row.unwrap_or((0, 0, 0));
        Ok(DoctypeCounters { last_seq: last_seq as u64, doc_count, del_count, buckets: BTreeMap::new() })
    }

    /// One document moves in the feed: out of its old position's bucket, into the new one's.
    fn count_move(&mut self, old: Option<u64>, new: u64) {
        if let Some(old) = old {
            *self.buckets.entry(old / FEED_BUCKET).or_default() -= 1;
        }
        *self.buckets.entry(new / FEED_BUCKET).or_default() += 1;
    }

    fn save(&self, tx: &Transaction<'_>, doctype: &str) -> Result<(), StoreError> {
        tx.prepare_cached(
            "INSERT INTO doctypes (doctype, last_seq, doc_count, del_count) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (doctype) DO UPDATE SET last_seq = ?2, doc_count = ?3, del_count = ?4",
        )?
        .execute(params![doctype, self.last_seq as i64, self.doc_count, self.del_count])?;
        let mut count = tx.prepare_cached(
            "INSERT INTO feed_counts (doctype, bucket, docs) VALUES (?1, ?2, ?3)
             ON CONFLICT (doctype, bucket) DO UPDATE SET docs = docs + ?3",
        )?;
        for (bucket, delta) in self.buckets.iter().filter(|(_, d)| **d != 0) {
            count.execute(params![doctype, *bucket as i64, delta])?;
        }
        Ok(())
    }
}

/// Writes one document's new state: tree, bodies added and removed, counters and sequence.
struct DocUpdate<'a> {
    doctype: &'a str,
    id: &'a str,
    /// The document's deleted flag and feed position before this write, if it existed.
    before: Option<(bool, u64)>,
    tree: &'a RevTree,
    /// Bodies of revisions new to the tree, as written (also used to avoid reading the
    /// winner's back for tracking).
    new_bodies: Vec<(&'a Rev, &'a Body)>,
    old_leaves: Vec<Rev>,
    /// A document received from a member that joins a sharing with this write.
    join: Option<Join<'a>>,
}

/// A received document joining sharing `sharing` by rule `rule`, sent by member `origin`: its
/// row is created by the write's own tracking, with that entry, so the row's `joined` is the
/// sequence of the write that brought it (see `SharedChange::joined`: nothing changed here since
/// while `seq == joined`).
#[derive(Clone, Copy)]
struct Join<'a> {
    sharing: &'a str,
    rule: usize,
    origin: usize,
}

/// How many documents of the feed sit after `after` (each document is in the feed once, at its
/// latest change), without reading them: the counts of the buckets after `after`'s bucket,
/// plus the documents counted in the rest of its bucket through the `(doctype, seq)` index.
/// At most `update_seq / FEED_BUCKET` count rows and `FEED_BUCKET - 1` index entries are read,
/// whatever the length of the feed.
///
/// With `ids` (`filter=_doc_ids`, or a scope limited to some documents) only those documents
/// count: each is looked up by id, so the cost follows the list, not the feed.
fn pending(conn: &Connection, doctype: &str, after: u64, ids: Option<&str>) -> Result<u64, StoreError> {
    let n: i64 = match ids {
        Some(ids) => conn
            .prepare_cached(
                "SELECT COUNT(*) FROM (SELECT DISTINCT value AS id FROM json_each(?3)) AS wanted
                 CROSS JOIN docs AS d ON d.doctype = ?1 AND d.id = wanted.id WHERE d.seq > ?2",
            )?
            .query_row(params![doctype, after as i64, ids], |r| r.get(0))?,
        None => {
            let bucket = after / FEED_BUCKET;
            let later: i64 = conn
                .prepare_cached("SELECT COALESCE(SUM(docs), 0) FROM feed_counts WHERE doctype = ?1 AND bucket > ?2")?
                .query_row(params![doctype, bucket as i64], |r| r.get(0))?;
            let within: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM docs WHERE doctype = ?1 AND seq > ?2 AND seq < ?3")?
                .query_row(params![doctype, after as i64, ((bucket + 1) * FEED_BUCKET) as i64], |r| r.get(0))?;
            later + within
        }
    };
    Ok(n.max(0) as u64)
}

fn save_doc(
    tx: &Transaction<'_>,
    ctx: &WriteCtx,
    counters: &mut DoctypeCounters,
    u: DocUpdate<'_>,
) -> Result<(), StoreError> {
    let winner = u.tree.winner().ok_or_else(|| StoreError::Corrupt(format!("empty tree for {}", u.id)))?;
    for (rev, body) in &u.new_bodies {
        // Only leaves keep a body: a revision extended later in the same batch gets none.
        if u.tree.is_leaf(rev) {
            tx.prepare_cached("INSERT OR IGNORE INTO bodies (doctype, id, rev, body) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![u.doctype, u.id, rev.to_string(), body.as_str().as_bytes()])?;
        }
    }
    // Only leaves keep a body (CouchDB keeps no more after compaction).
    let mut del = tx.prepare_cached("DELETE FROM bodies WHERE doctype = ?1 AND id = ?2 AND rev = ?3")?;
    for old in &u.old_leaves {
        if !u.tree.is_leaf(old) {
            del.execute(params![u.doctype, u.id, old.to_string()])?;
        }
    }
    match (u.before.map(|(deleted, _)| deleted), winner.deleted) {
        (None, false) => counters.doc_count += 1,
        (None, true) => counters.del_count += 1,
        (Some(false), true) => {
            counters.doc_count -= 1;
            counters.del_count += 1;
        }
        (Some(true), false) => {
            counters.doc_count += 1;
            counters.del_count -= 1;
        }
        _ => {}
    }
    counters.last_seq += 1;
    counters.count_move(u.before.map(|(_, seq)| seq), counters.last_seq);
    tx.prepare_cached(
        "INSERT INTO docs (doctype, id, seq, winner, deleted, leaves, tree) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (doctype, id) DO UPDATE SET seq = ?3, winner = ?4, deleted = ?5, leaves = ?6, tree = ?7",
    )?
    .execute(params![
        u.doctype,
        u.id,
        counters.last_seq as i64,
        winner.rev.to_string(),
        winner.deleted,
        encode_leaves(u.tree),
        u.tree.encode(),
    ])?;
    if ctx.tracking.iter().any(|r| r.doctype == u.doctype) {
        let body = match u.new_bodies.iter().find(|(rev, _)| **rev == winner.rev) {
            Some((_, written)) => (*written).clone(),
            None => load_body(tx, u.doctype, u.id, &winner.rev)?.unwrap_or_default(),
        };
        track_doc(tx, &ctx.tracking, u.doctype, u.id, winner.deleted, &body, Track::Write(u.join))?;
    }
    Ok(())
}

/// Why [`track_doc`] runs.
#[derive(Clone, Copy)]
enum Track<'a> {
    /// A write, and the sharing a received document joins with it, if any.
    Write(Option<Join<'a>>),
    /// A cascade (see `Store::retrack`): rows are recorded only where membership changes.
    MembershipOnly,
}

/// Updates every sharing's feed for one written document (see `tracking::decide`), as `how`
/// says. Returns the rows recorded.
fn track_doc(
    tx: &Transaction<'_>,
    rules: &[TrackRule],
    doctype: &str,
    id: &str,
    deleted: bool,
    body: &Body,
    how: Track<'_>,
) -> Result<u64, StoreError> {
    let (join, membership_only) = match how {
        Track::Write(join) => (join, false),
        Track::MembershipOnly => (None, true),
    };
    let mut recorded = 0;
    let mut sharings: Vec<&str> =
        rules.iter().filter(|r| r.doctype == doctype).map(|r| r.sharing_id.as_str()).collect();
    sharings.sort_unstable();
    sharings.dedup();
    let parent = TrackRule::parent_of(rules, doctype, body);
    for sharing in sharings {
        let parent_rule = parent_rule(tx, sharing, doctype, parent.as_deref())?;
        let (matching, joining) = tracking::matching_rules(rules, sharing, doctype, id, body, parent_rule);
        let (tracked, entry) = match join.filter(|j| j.sharing == sharing) {
            // Joining now: tracked as if its row were there already, created with its entry.
            Some(j) => (Some((j.rule, false)), Entry { initial: false, origin: Some(j.origin) }),
            None => (shared_row(tx, sharing, doctype, id)?.map(|st| (st.rule_index, st.removed)), Entry::default()),
        };
        let action = tracking::decide(deleted, matching, joining, tracked);
        if membership_only && !tracking::changes_membership(action, tracked) {
            continue;
        }
        if let TrackAction::Record { rule_index, removed } = action {
            record_shared(tx, sharing, doctype, id, rule_index, removed, entry)?;
            recorded += 1;
        }
    }
    Ok(recorded)
}

/// The rule of a parent's row in a sharing, when the parent is in it (see `Standing::parent`).
fn parent_rule(
    conn: &Connection,
    sharing: &str,
    doctype: &str,
    parent: Option<&str>,
) -> Result<Option<usize>, StoreError> {
    let Some(parent) = parent else { return Ok(None) };
    Ok(shared_row(conn, sharing, doctype, parent)?.filter(|st| !st.removed).map(|st| st.rule_index))
}

fn shared_row(conn: &Connection, sharing: &str, doctype: &str, id: &str) -> Result<Option<SharedState>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT rule, removed, seq FROM shared WHERE sharing_id = ?1 AND doctype = ?2 AND id = ?3")?
        .query_row(params![sharing, doctype, id], |r| {
            Ok(SharedState {
                rule_index: r.get::<_, i64>(0)? as usize,
                removed: r.get(1)?,
                seq: r.get::<_, i64>(2)? as u64,
            })
        })
        .optional()?)
}

/// How a document enters a sharing, recorded when its row is created (a row that exists keeps
/// what it had).
#[derive(Default, Clone, Copy)]
struct Entry {
    initial: bool,
    origin: Option<usize>,
}

fn record_shared(
    tx: &Transaction<'_>,
    sharing: &str,
    doctype: &str,
    id: &str,
    rule_index: usize,
    removed: bool,
    entry: Entry,
) -> Result<(), StoreError> {
    let seq: i64 = tx
        .prepare_cached(
            "INSERT INTO sharing_seqs (sharing_id, last_seq) VALUES (?1, 1)
             ON CONFLICT (sharing_id) DO UPDATE SET last_seq = last_seq + 1 RETURNING last_seq",
        )?
        .query_row(params![sharing], |r| r.get(0))?;
    tx.prepare_cached(
        "INSERT INTO shared (sharing_id, doctype, id, seq, rule, removed, joined, initial, origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?4, ?7, ?8)
         ON CONFLICT (sharing_id, doctype, id) DO UPDATE SET seq = ?4, rule = ?5, removed = ?6",
    )?
    .execute(params![
        sharing,
        doctype,
        id,
        seq,
        rule_index as i64,
        removed,
        entry.initial,
        entry.origin.map(|o| o as i64)
    ])?;
    Ok(())
}

fn apply_interactive(
    tx: &Transaction<'_>,
    ctx: &WriteCtx,
    counters: &mut DoctypeCounters,
    doctype: &str,
    w: &DocWrite,
) -> Result<WriteResult, StoreError> {
    let existing = load_doc(tx, doctype, w.id.as_str())?;
    let before = existing.as_ref().map(|d| (d.deleted, d.seq));
    let mut tree = existing.map(|d| d.tree).unwrap_or_default();
    let Ok(parent) = tree.edit_parent(w.rev.as_ref(), w.deleted) else {
        return Ok(WriteResult::Conflict { id: w.id.clone() });
    };
    // The revision id hashes the body's text as written (see `store::body`).
    let rev = match new_rev(parent.as_ref(), w.deleted, w.body.as_str().as_bytes()) {
        Ok(rev) => rev,
        Err(e) => return Ok(WriteResult::Rejected { id: w.id.clone(), reason: e.to_string() }),
    };
    let path: Vec<Rev> = std::iter::once(rev.clone()).chain(parent).collect();
    let old_leaves: Vec<Rev> = tree.leaves().into_iter().map(|l| l.rev).collect();
    tree.merge_path(&path, w.deleted);
    // Acknowledge only what the tree holds: `merge_path` drops revisions it cannot store.
    if !tree.is_leaf(&rev) {
        return Err(internal(anyhow::anyhow!("edit {rev} of {} was not merged into its tree", w.id)));
    }
    tree.stem(ctx.revs_limit);
    save_doc(
        tx,
        ctx,
        counters,
        DocUpdate {
            doctype,
            id: w.id.as_str(),
            before,
            tree: &tree,
            new_bodies: vec![(&rev, &w.body)],
            old_leaves,
            join: None,
        },
    )?;
    Ok(WriteResult::Ok { id: w.id.clone(), rev })
}

/// What the caller of [`apply_replicated`] already knows of the document: its row (read in the
/// same transaction), and whether it joins a sharing with this write.
struct Prior<'a> {
    existing: Option<DocRow>,
    join: Option<Join<'a>>,
}

/// Replicated writes of one document (in request order), merged into its tree loaded once and
/// saved once: a batch of n branches of one document costs O(n log n), not n times the size of
/// its tree. Returns the writes refused.
fn apply_replicated(
    tx: &Transaction<'_>,
    ctx: &WriteCtx,
    counters: &mut DoctypeCounters,
    doctype: &str,
    id: &DocId,
    writes: &[&DocWrite],
    prior: Prior<'_>,
) -> Result<Vec<WriteResult>, StoreError> {
    let Prior { existing, join } = prior;
    let mut refused = Vec::new();
    let before = existing.as_ref().map(|d| (d.deleted, d.seq));
    let mut tree = existing.map(|d| d.tree).unwrap_or_default();
    let old_leaves: Vec<Rev> = tree.leaves().into_iter().map(|l| l.rev).collect();
    let mut changed = false;
    let mut added: Vec<(&Rev, &Body)> = Vec::new();
    for w in writes {
        let Some(path) = w.revisions.as_deref().filter(|p| !p.is_empty()) else {
            refused.push(WriteResult::Rejected {
                id: w.id.clone(),
                reason: "when new_edits is false, the document needs _rev or _revisions".into(),
            });
            continue;
        };
        let head = &path[0];
        let known_before = tree.contains(head);
        // A revision we have is never rewritten, and re-sending it changes nothing.
        changed |= tree.merge(path, w.deleted).1;
        // Acknowledge only what the tree holds: `merge` drops revisions it cannot store.
        if !tree.contains(head) {
            refused
                .push(WriteResult::Rejected { id: w.id.clone(), reason: format!("revision {head} cannot be stored") });
            continue;
        }
        // Only a revision new to this tree gets a body: the first body of a revision is final.
        if !known_before {
            added.push((head, &w.body));
        }
    }
    if !changed {
        return Ok(refused);
    }
    tree.stem(ctx.revs_limit);
    let update = DocUpdate { doctype, id: id.as_str(), before, tree: &tree, new_bodies: added, old_leaves, join };
    save_doc(tx, ctx, counters, update)?;
    Ok(refused)
}

fn doc_rev(
    conn: &Connection,
    doctype: &str,
    id: &DocId,
    tree: &RevTree,
    rev: &Rev,
    revs: bool,
) -> Result<Option<DocRev>, StoreError> {
    if !tree.is_leaf(rev) {
        return Ok(None);
    }
    let deleted = tree.deleted(rev).unwrap_or(false);
    let Some(body) = load_body(conn, doctype, id.as_str(), rev)? else {
        return Ok(None);
    };
    Ok(Some(DocRev {
        id: id.clone(),
        rev: rev.clone(),
        deleted,
        body,
        revisions: if revs { tree.history(rev) } else { None },
    }))
}

/// `open_revs` within a read connection (shared by the single and the batched calls).
fn open_revs_in(
    conn: &Connection,
    doctype: &str,
    id: &DocId,
    revs: OpenRevs,
    latest: bool,
) -> Result<Vec<OpenRev>, StoreError> {
    let (doctype, id) = (doctype, id.clone());
    let row = load_doc(conn, doctype, id.as_str())?;
    let tree = match (row, &revs) {
        (Some(r), _) => r.tree,
        (None, OpenRevs::All) => return Err(StoreError::NotFound),
        (None, OpenRevs::Some(_)) => RevTree::new(),
    };
    let wanted = revs.resolve(&tree, latest);
    wanted
        .into_iter()
        .map(|r| {
            Ok(match doc_rev(conn, doctype, &id, &tree, &r, true)? {
                Some(d) => OpenRev::Found(d),
                None => OpenRev::Missing(r),
            })
        })
        .collect()
}

#[async_trait]
impl Store for SqliteStore {
    async fn db_info(&self, doctype: &Doctype) -> Result<DbInfo, StoreError> {
        let doctype = doctype.as_str().to_owned();
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT last_seq, doc_count, del_count FROM doctypes WHERE doctype = ?1")?;
            let row = stmt
                .query_row(params![doctype], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))
                .optional()?;
            let (seq, docs, dels) = row.unwrap_or((0, 0, 0));
            Ok(DbInfo { update_seq: seq as u64, doc_count: docs.max(0) as u64, doc_del_count: dels.max(0) as u64 })
        })
        .await
    }

    async fn get(&self, doctype: &Doctype, id: &DocId, opts: GetOptions) -> Result<DocView, StoreError> {
        let (doctype, id) = (doctype.as_str().to_owned(), id.clone());
        self.read(move |conn| {
            let row = load_doc(conn, &doctype, id.as_str())?.ok_or(StoreError::NotFound)?;
            let rev = requested_rev(&row.tree, opts.rev.clone())?;
            let doc = doc_rev(conn, &doctype, &id, &row.tree, &rev, opts.revs)?.ok_or(StoreError::NotFound)?;
            Ok(DocView { doc, conflicts: row.tree.conflicts(), deleted_conflicts: row.tree.deleted_conflicts() })
        })
        .await
    }

    async fn open_revs(
        &self,
        doctype: &Doctype,
        id: &DocId,
        revs: OpenRevs,
        latest: bool,
    ) -> Result<Vec<OpenRev>, StoreError> {
        let (doctype, id) = (doctype.as_str().to_owned(), id.clone());
        self.read(move |conn| open_revs_in(conn, &doctype, &id, revs, latest)).await
    }

    async fn open_revs_many(
        &self,
        doctype: &Doctype,
        wanted: Vec<(DocId, Vec<Rev>)>,
    ) -> Result<Vec<(DocId, Vec<OpenRev>)>, StoreError> {
        let doctype = doctype.as_str().to_owned();
        self.read(move |conn| {
            wanted
                .into_iter()
                .map(|(id, revs)| Ok((id.clone(), open_revs_in(conn, &doctype, &id, OpenRevs::Some(revs), false)?)))
                .collect()
        })
        .await
    }

    async fn bulk_docs(
        &self,
        doctype: &Doctype,
        docs: Vec<DocWrite>,
        new_edits: bool,
    ) -> Result<Vec<WriteResult>, StoreError> {
        let doctype = doctype.as_str().to_owned();
        self.write(move |tx, ctx| {
            let mut counters = DoctypeCounters::load(tx, &doctype)?;
            let mut results = Vec::with_capacity(if new_edits { docs.len() } else { 0 });
            if new_edits {
                for w in &docs {
                    results.push(apply_interactive(tx, ctx, &mut counters, &doctype, w)?);
                }
            } else {
                // Grouped per document, in order of first appearance (each keeps request order).
                let mut groups: Vec<(&DocId, Vec<&DocWrite>)> = Vec::new();
                let mut index: HashMap<&DocId, usize> = HashMap::new();
                for w in &docs {
                    let i = *index.entry(&w.id).or_insert_with(|| {
                        groups.push((&w.id, Vec::new()));
                        groups.len() - 1
                    });
                    groups[i].1.push(w);
                }
                for (id, writes) in groups {
                    let existing = load_doc(tx, &doctype, id.as_str())?;
                    results.extend(apply_replicated(
                        tx,
                        ctx,
                        &mut counters,
                        &doctype,
                        id,
                        &writes,
                        Prior { existing, join: None },
                    )?);
                }
            }
            counters.save(tx, &doctype)?;
            Ok(results)
        })
        .await
    }

    async fn changes(&self, doctype: &Doctype, query: &ChangesQuery) -> Result<Changes, StoreError> {
        let doctype = doctype.as_str().to_owned();
        let query = query.clone();
        self.read(move |conn| {
            let limit = query.limit.map_or(i64::MAX, |l| l as i64);
            let ids_json = query
                .doc_ids
                .as_ref()
                .map(|ids| serde_json::to_string(&ids.iter().map(|i| i.as_str()).collect::<Vec<_>>()))
                .transpose()
                .map_err(internal)?;
            let sql = match (&ids_json, query.include_docs) {
                (None, false) => {
                    "SELECT d.id, d.seq, d.leaves, d.deleted, NULL FROM docs d
                    WHERE d.doctype = ?1 AND d.seq > ?2 ORDER BY d.seq LIMIT ?3"
                }
                (None, true) => {
                    "SELECT d.id, d.seq, d.leaves, d.deleted, b.body FROM docs d
                    LEFT JOIN bodies b ON b.doctype = d.doctype AND b.id = d.id AND b.rev = d.winner
                    WHERE d.doctype = ?1 AND d.seq > ?2 ORDER BY d.seq LIMIT ?3"
                }
                (Some(_), false) => {
                    "SELECT d.id, d.seq, d.leaves, d.deleted, NULL FROM docs d
                    WHERE d.doctype = ?1 AND d.seq > ?2 AND d.id IN (SELECT value FROM json_each(?4))
                    ORDER BY d.seq LIMIT ?3"
                }
                (Some(_), true) => {
                    "SELECT d.id, d.seq, d.leaves, d.deleted, b.body FROM docs d
                    LEFT JOIN bodies b ON b.doctype = d.doctype AND b.id = d.id AND b.rev = d.winner
                    WHERE d.doctype = ?1 AND d.seq > ?2 AND d.id IN (SELECT value FROM json_each(?4))
                    ORDER BY d.seq LIMIT ?3"
                }
            };
            let mut stmt = conn.prepare_cached(sql)?;
            let map_row = |r: &rusqlite::Row<'_>| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, Option<Vec<u8>>>(4)?,
                ))
            };
            let found = match &ids_json {
                None => stmt.query_map(params![doctype, query.since as i64, limit], map_row)?,
                Some(ids) => stmt.query_map(params![doctype, query.since as i64, limit, ids], map_row)?,
            };
            // Rows are read one at a time: the read stops once the bodies reach `max_bytes`.
            let max_bytes = query.max_bytes.filter(|_| query.include_docs).unwrap_or(usize::MAX);
            let (mut raw, mut bytes, mut cut) = (Vec::new(), 0usize, false);
            for row in found {
                if bytes >= max_bytes {
                    cut = true;
                    break;
                }
                let row = row?;
                bytes += row.4.as_ref().map_or(0, Vec::len);
                raw.push(row);
            }
            let mut rows = Vec::with_capacity(raw.len());
            let mut last_seq = query.since;
            for (id, seq, leaves, deleted, body) in raw {
                let leaves = decode_leaves(&id, &leaves)?;
                let winner = leaves.first().ok_or_else(|| StoreError::Corrupt(format!("no leaves for {id}")))?.clone();
                let doc_id = DocId::parse(&id).map_err(StoreError::Corrupt)?;
                let doc = match body {
                    Some(b) => Some(DocRev {
                        id: doc_id.clone(),
                        rev: winner.0.clone(),
                        deleted: winner.1,
                        body: parse_body(&id, b)?,
                        revisions: None,
                    }),
                    None => None,
                };
                let changes =
                    if query.all_docs { leaves.into_iter().map(|(r, _)| r).collect() } else { vec![winner.0] };
                last_seq = seq as u64;
                rows.push(ChangeRow { seq: seq as u64, id: doc_id, changes, deleted, doc });
            }
            // A shorter page than asked for is the end of the feed, in this read's snapshot,
            // unless the read stopped on `max_bytes`.
            let pending = match query.limit {
                _ if cut => pending(conn, &doctype, last_seq, ids_json.as_deref())?,
                Some(l) if rows.len() >= l => pending(conn, &doctype, last_seq, ids_json.as_deref())?,
                _ => 0,
            };
            Ok(Changes { rows, last_seq, pending })
        })
        .await
    }

    async fn revs_diff(
        &self,
        doctype: &Doctype,
        revs: BTreeMap<DocId, Vec<Rev>>,
    ) -> Result<BTreeMap<DocId, RevsDiff>, StoreError> {
        let doctype = doctype.as_str().to_owned();
        self.read(move |conn| {
            let mut out = BTreeMap::new();
            for (id, wanted) in revs {
                let (missing, possible_ancestors) = match load_doc(conn, &doctype, id.as_str())? {
                    Some(row) => row.tree.revs_diff(&wanted),
                    None => {
                        let mut seen = HashSet::new();
                        (wanted.into_iter().filter(|r| seen.insert(r.clone())).collect(), Vec::new())
                    }
                };
                if !missing.is_empty() {
                    out.insert(id, RevsDiff { missing, possible_ancestors });
                }
            }
            Ok(out)
        })
        .await
    }

    async fn all_docs(&self, doctype: &Doctype, query: &AllDocsQuery) -> Result<AllDocs, StoreError> {
        let doctype = doctype.as_str().to_owned();
        let query = query.clone();
        self.read(move |conn| {
            let total: i64 = conn
                .prepare_cached("SELECT doc_count FROM doctypes WHERE doctype = ?1")?
                .query_row(params![doctype], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            let mut rows = Vec::new();
            // Bodies read so far, against `max_bytes`.
            let max_bytes = query.max_bytes.filter(|_| query.include_docs).unwrap_or(usize::MAX);
            let mut bytes = 0usize;
            let fetch_doc = |id: &DocId, rev: &Rev, deleted: bool| -> Result<Option<DocRev>, StoreError> {
                if !query.include_docs || deleted {
                    return Ok(None);
                }
                Ok(load_body(conn, &doctype, id.as_str(), rev)?.map(|body| DocRev {
                    id: id.clone(),
                    rev: rev.clone(),
                    deleted,
                    body,
                    revisions: None,
                }))
            };
            let size = |doc: &Option<DocRev>| doc.as_ref().map_or(0, |d| d.body.as_str().len());
            let mut more = false;
            if let Some(keys) = &query.keys {
                let mut stmt =
                    conn.prepare_cached("SELECT winner, deleted FROM docs WHERE doctype = ?1 AND id = ?2")?;
                let wanted: Vec<&DocId> =
                    keys.iter().skip(query.skip).take(query.limit.unwrap_or(usize::MAX)).collect();
                for key in wanted {
                    if bytes >= max_bytes {
                        // Keys remain unanswered.
                        more = true;
                        break;
                    }
                    let found = stmt
                        .query_row(params![doctype, key.as_str()], |r| {
                            Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))
                        })
                        .optional()?;
                    rows.push(match found {
                        Some((rev, deleted)) => {
                            let rev: Rev = rev.parse().map_err(|_| StoreError::Corrupt(format!("winner of {key}")))?;
                            let doc = fetch_doc(key, &rev, deleted)?;
                            bytes += size(&doc);
                            AllDocsRow::Doc { id: key.clone(), rev, deleted, doc }
                        }
                        None => AllDocsRow::NotFound { key: key.clone() },
                    });
                }
            } else {
                let start_inclusive = !query.exclusive_start;
                let (lower, upper, upper_inclusive, lower_inclusive) = if query.descending {
                    (query.end_key.clone(), query.start_key.clone(), start_inclusive, query.inclusive_end)
                } else {
                    (query.start_key.clone(), query.end_key.clone(), query.inclusive_end, start_inclusive)
                };
                let mut sql = String::from("SELECT id, winner FROM docs WHERE doctype = ?1 AND deleted = 0");
                if lower.is_some() {
                    sql.push_str(if lower_inclusive { " AND id >= ?2" } else { " AND id > ?2" });
                }
                if upper.is_some() {
                    sql.push_str(if upper_inclusive { " AND id <= ?3" } else { " AND id < ?3" });
                }
                sql.push_str(if query.descending { " ORDER BY id DESC" } else { " ORDER BY id" });
                sql.push_str(" LIMIT ?4 OFFSET ?5");
                let mut stmt = conn.prepare_cached(&sql)?;
                let limit = query.limit.map_or(-1, |l| l as i64);
                let mut bind: Vec<Box<dyn rusqlite::ToSql>> = vec![Box::new(doctype.clone())];
                bind.push(Box::new(lower.clone().unwrap_or_default()));
                bind.push(Box::new(upper.clone().unwrap_or_default()));
                bind.push(Box::new(limit));
                bind.push(Box::new(query.skip as i64));
                // Unused placeholders still need a value bound; SQLite numbers them by position.
                let found = stmt.query_map(rusqlite::params_from_iter(bind.iter()), |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })?;
                for row in found {
                    if bytes >= max_bytes {
                        // A row follows the last one answered.
                        more = true;
                        break;
                    }
                    let (id, rev) = row?;
                    let id = DocId::parse(&id).map_err(StoreError::Corrupt)?;
                    let rev: Rev = rev.parse().map_err(|_| StoreError::Corrupt(format!("winner of {id}")))?;
                    let doc = fetch_doc(&id, &rev, false)?;
                    bytes += size(&doc);
                    rows.push(AllDocsRow::Doc { id, rev, deleted: false, doc });
                }
                more |= query.limit.is_some_and(|l| rows.len() >= l);
            }
            Ok(AllDocs { total_rows: total.max(0) as u64, offset: query.skip, rows, more })
        })
        .await
    }

    async fn get_local(&self, doctype: &Doctype, id: &str) -> Result<LocalDoc, StoreError> {
        let (doctype, id) = (doctype.as_str().to_owned(), id.to_owned());
        self.read(move |conn| {
            let row: Option<(i64, Vec<u8>)> = conn
                .prepare_cached("SELECT rev, body FROM locals WHERE doctype = ?1 AND id = ?2")?
                .query_row(params![doctype, id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let (rev, body) = row.ok_or(StoreError::NotFound)?;
            Ok(LocalDoc { body: parse_body(&id, body)?, id, rev: rev as u64 })
        })
        .await
    }

    async fn put_local(&self, doctype: &Doctype, id: &str, body: Body) -> Result<u64, StoreError> {
        let (doctype, id) = (doctype.as_str().to_owned(), id.to_owned());
        self.write(move |tx, _| {
            let bytes = body.as_str().as_bytes();
            let rev: i64 = tx
                .prepare_cached(
                    "INSERT INTO locals (doctype, id, rev, body) VALUES (?1, ?2, 1, ?3)
                     ON CONFLICT (doctype, id) DO UPDATE SET rev = rev + 1, body = ?3 RETURNING rev",
                )?
                .query_row(params![doctype, id, bytes], |r| r.get(0))?;
            Ok(rev as u64)
        })
        .await
    }

    async fn delete_local(&self, doctype: &Doctype, id: &str) -> Result<(), StoreError> {
        let (doctype, id) = (doctype.as_str().to_owned(), id.to_owned());
        self.write(move |tx, _| {
            let n = tx
                .prepare_cached("DELETE FROM locals WHERE doctype = ?1 AND id = ?2")?
                .execute(params![doctype, id])?;
            if n == 0 {
                Err(StoreError::NotFound)
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn put_local_if(&self, doctype: &Doctype, id: &str, body: Body, expected: u64) -> Result<u64, StoreError> {
        let (doctype, id) = (doctype.as_str().to_owned(), id.to_owned());
        self.write(move |tx, _| {
            if local_rev(tx, &doctype, &id)?.unwrap_or(0) != expected {
                return Err(StoreError::Conflict);
            }
            let rev = expected as i64 + 1;
            tx.prepare_cached(
                "INSERT INTO locals (doctype, id, rev, body) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (doctype, id) DO UPDATE SET rev = ?3, body = ?4",
            )?
            .execute(params![doctype, id, rev, body.as_str().as_bytes()])?;
            Ok(rev as u64)
        })
        .await
    }

    async fn delete_local_if(&self, doctype: &Doctype, id: &str, expected: u64) -> Result<(), StoreError> {
        let (doctype, id) = (doctype.as_str().to_owned(), id.to_owned());
        self.write(move |tx, _| match local_rev(tx, &doctype, &id)? {
            None => Err(StoreError::NotFound),
            Some(n) if n != expected => Err(StoreError::Conflict),
            Some(_) => {
                tx.prepare_cached("DELETE FROM locals WHERE doctype = ?1 AND id = ?2")?
                    .execute(params![doctype, id])?;
                Ok(())
            }
        })
        .await
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.commits.subscribe()
    }

    async fn doc_leaves(
        &self,
        doctype: &Doctype,
        ids: &[DocId],
    ) -> Result<HashMap<DocId, Vec<(Rev, bool)>>, StoreError> {
        let (doctype, ids) = (doctype.as_str().to_owned(), ids.to_vec());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached("SELECT leaves FROM docs WHERE doctype = ?1 AND id = ?2")?;
            let mut out = HashMap::with_capacity(ids.len());
            for id in ids {
                let leaves: Option<String> = stmt.query_row(params![doctype, id.as_str()], |r| r.get(0)).optional()?;
                if let Some(l) = leaves {
                    let decoded = decode_leaves(id.as_str(), &l)?;
                    out.insert(id, decoded);
                }
            }
            Ok(out)
        })
        .await
    }

    fn set_tracking(&self, rules: Vec<TrackRule>) {
        self.inner.tracking.set(rules);
    }

    async fn track_existing(&self, sharing_id: &str) -> Result<u64, StoreError> {
        let sharing_id = sharing_id.to_owned();
        self.write(move |tx, ctx| {
            let started = tx
                .prepare_cached("INSERT INTO sharing_starts (sharing_id) VALUES (?1) ON CONFLICT DO NOTHING")?
                .execute(params![sharing_id])?;
            if started == 0 {
                return Ok(0);
            }
            let rules: Vec<&TrackRule> = ctx.tracking.iter().filter(|r| r.sharing_id == sharing_id).collect();
            let mut added = 0;
            for rule in &rules {
                // Candidates: the listed ids for id rules, every live document otherwise.
                let candidates: Vec<(String, String)> = match &rule.selector {
                    None => {
                        let mut stmt = tx.prepare_cached(
                            "SELECT id, winner FROM docs WHERE doctype = ?1 AND id = ?2 AND deleted = 0",
                        )?;
                        let mut found = Vec::new();
                        for v in &rule.values {
                            if let Some(row) =
                                stmt.query_row(params![rule.doctype, v], |r| Ok((r.get(0)?, r.get(1)?))).optional()?
                            {
                                found.push(row);
                            }
                        }
                        found
                    }
                    Some(_) => tx
                        .prepare_cached("SELECT id, winner FROM docs WHERE doctype = ?1 AND deleted = 0 ORDER BY id")?
                        .query_map(params![rule.doctype], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<Result<_, _>>()?,
                };
                for (id, winner) in candidates {
                    if shared_row(tx, &sharing_id, &rule.doctype, &id)?.is_some_and(|st| !st.removed) {
                        continue;
                    }
                    let rev: Rev = winner.parse().map_err(|_| StoreError::Corrupt(format!("winner of {id}")))?;
                    let body = load_body(tx, &rule.doctype, &id, &rev)?.unwrap_or_default();
                    // The first matching rule of the sharing wins, as for later writes.
                    let first = rules.iter().find(|r| r.matches(&rule.doctype, &id, &body)).map(|r| r.rule_index);
                    if let Some(rule_index) = first {
                        let entry = Entry { initial: true, origin: None };
                        record_shared(tx, &sharing_id, &rule.doctype, &id, rule_index, false, entry)?;
                        added += 1;
                    }
                }
            }
            // Subtree rules: the documents under a shared one, a level per pass, so parents
            // come before their children in the feed.
            let subtree: Vec<&str> = {
                let mut d: Vec<&str> =
                    rules.iter().filter(|r| r.parent_field.is_some()).map(|r| r.doctype.as_str()).collect();
                d.dedup();
                d
            };
            for doctype in subtree {
                loop {
                    let live: Vec<(String, String)> = tx
                        .prepare_cached("SELECT id, winner FROM docs WHERE doctype = ?1 AND deleted = 0 ORDER BY id")?
                        .query_map(params![doctype], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<Result<_, _>>()?;
                    let mut joined = Vec::new();
                    for (id, winner) in live {
                        if shared_row(tx, &sharing_id, doctype, &id)?.is_some_and(|st| !st.removed) {
                            continue;
                        }
                        let rev: Rev = winner.parse().map_err(|_| StoreError::Corrupt(format!("winner of {id}")))?;
                        let body = load_body(tx, doctype, &id, &rev)?.unwrap_or_default();
                        let parent = TrackRule::parent_of(&ctx.tracking, doctype, &body);
                        let parent = parent_rule(tx, &sharing_id, doctype, parent.as_deref())?;
                        if let Some(r) = rules.iter().find(|r| r.matches_in(doctype, &id, &body, parent)) {
                            joined.push((id, r.rule_index));
                        }
                    }
                    if joined.is_empty() {
                        break;
                    }
                    for (id, rule_index) in joined {
                        let entry = Entry { initial: true, origin: None };
                        record_shared(tx, &sharing_id, doctype, &id, rule_index, false, entry)?;
                        added += 1;
                    }
                }
            }
            Ok(added)
        })
        .await
    }

    async fn apply_received(
        &self,
        sharing_id: &str,
        origin: usize,
        doctype: &Doctype,
        docs: Vec<DocWrite>,
        judge: Arc<Judge>,
    ) -> Result<Vec<Received>, StoreError> {
        let (sharing_id, doctype) = (sharing_id.to_owned(), doctype.as_str().to_owned());
        self.write(move |tx, ctx| {
            let mut counters = DoctypeCounters::load(tx, &doctype)?;
            let mut out = Vec::with_capacity(docs.len());
            for w in &docs {
                // Judged on what this transaction sees: no other write can come in between.
                let parent = TrackRule::parent_of(&ctx.tracking, &doctype, &w.body);
                let existing = load_doc(tx, &doctype, w.id.as_str())?;
                let standing = Standing {
                    exists: existing.is_some(),
                    shared: shared_row(tx, &sharing_id, &doctype, w.id.as_str())?,
                    parent: parent_rule(tx, &sharing_id, &doctype, parent.as_deref())?,
                };
                let (join, revokes) = match judge(w, &standing) {
                    Verdict::Accept { join, revokes } => (join, revokes),
                    Verdict::Moot => {
                        out.push(Received::Moot);
                        continue;
                    }
                    Verdict::Refuse(reason) => {
                        out.push(Received::Refused(reason));
                        continue;
                    }
                };
                if w.revisions.as_deref().is_none_or(<[Rev]>::is_empty) {
                    out.push(Received::Invalid("the document needs _rev or _revisions".into()));
                    continue;
                }
                let join = join.map(|rule| Join { sharing: &sharing_id, rule, origin });
                let tracked = ctx.tracking.iter().any(|r| r.doctype == doctype && r.sharing_id == sharing_id);
                if let (Some(j), false) = (join, tracked) {
                    // No tracking rule of this sharing for the doctype (rules changing under
                    // it): the row is recorded here, as the write's tracking would not.
                    let entry = Entry { initial: false, origin: Some(origin) };
                    record_shared(tx, &sharing_id, &doctype, w.id.as_str(), j.rule, false, entry)?;
                }
                let join = join.filter(|_| tracked);
                match apply_replicated(tx, ctx, &mut counters, &doctype, &w.id, &[w], Prior { existing, join })?.pop() {
                    Some(WriteResult::Rejected { reason, .. }) => out.push(Received::Invalid(reason)),
                    _ => out.push(Received::Written { revokes }),
                }
            }
            counters.save(tx, &doctype)?;
            Ok(out)
        })
        .await
    }

    async fn retrack(&self, doctype: &Doctype, ids: &[DocId]) -> Result<Retracked, StoreError> {
        let (doctype, ids) = (doctype.as_str().to_owned(), ids.to_vec());
        self.write(move |tx, ctx| {
            let mut out = Retracked::default();
            if !ctx.tracking.iter().any(|r| r.doctype == doctype) {
                return Ok(out);
            }
            let removed_rows = |id: &DocId| -> Result<i64, StoreError> {
                Ok(tx
                    .prepare_cached("SELECT COUNT(*) FROM shared WHERE doctype = ?1 AND id = ?2 AND removed = 1")?
                    .query_row(params![doctype, id.as_str()], |r| r.get(0))?)
            };
            for id in &ids {
                let Some(row) = load_doc(tx, &doctype, id.as_str())? else { continue };
                let Some(winner) = row.tree.winner() else { continue };
                let body = load_body(tx, &doctype, id.as_str(), &winner.rev)?.unwrap_or_default();
                let before = if winner.deleted { 0 } else { removed_rows(id)? };
                let recorded =
                    track_doc(tx, &ctx.tracking, &doctype, id.as_str(), winner.deleted, &body, Track::MembershipOnly)?;
                out.recorded += recorded;
                if recorded > 0 && before > 0 && removed_rows(id)? < before {
                    out.rejoined.push(id.clone());
                }
            }
            Ok(out)
        })
        .await
    }

    async fn shared_docs(
        &self,
        sharing_id: &str,
        after: Option<(Doctype, DocId)>,
        limit: usize,
    ) -> Result<Vec<(Doctype, DocId)>, StoreError> {
        let sharing_id = sharing_id.to_owned();
        let (after_doctype, after_id) =
            after.map_or((String::new(), String::new()), |(t, i)| (t.as_str().to_owned(), i.as_str().to_owned()));
        self.read(move |conn| {
            let rows: Vec<(String, String)> = conn
                .prepare_cached(
                    "SELECT s.doctype, s.id FROM shared s JOIN docs d ON d.doctype = s.doctype AND d.id = s.id
                     WHERE s.sharing_id = ?1 AND s.removed = 0 AND d.deleted = 0
                       AND (s.doctype > ?2 OR (s.doctype = ?2 AND s.id > ?3))
                     ORDER BY s.doctype, s.id LIMIT ?4",
                )?
                .query_map(params![sharing_id, after_doctype, after_id, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            rows.into_iter()
                .map(|(t, i)| {
                    Ok((
                        Doctype::parse(&t).map_err(StoreError::Corrupt)?,
                        DocId::parse(&i).map_err(StoreError::Corrupt)?,
                    ))
                })
                .collect()
        })
        .await
    }

    async fn shared_changes(
        &self,
        sharing_id: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<SharedChange>, StoreError> {
        let sharing_id = sharing_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, doctype, id, rule, removed, joined, initial, origin FROM shared
                 WHERE sharing_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            type Row = (i64, String, String, i64, bool, i64, bool, Option<i64>);
            let rows: Vec<Row> = stmt
                .query_map(params![sharing_id, since as i64, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
                })?
                .collect::<Result<_, _>>()?;
            rows.into_iter()
                .map(|(seq, doctype, id, rule, removed, joined, initial, origin)| {
                    Ok(SharedChange {
                        seq: seq as u64,
                        doctype: Doctype::parse(&doctype).map_err(StoreError::Corrupt)?,
                        id: DocId::parse(&id).map_err(StoreError::Corrupt)?,
                        rule_index: rule as usize,
                        removed,
                        joined: joined as u64,
                        initial,
                        origin: origin.map(|o| o as usize),
                    })
                })
                .collect()
        })
        .await
    }

    async fn shared_state(
        &self,
        sharing_id: &str,
        doctype: &Doctype,
        ids: &[DocId],
    ) -> Result<HashMap<DocId, SharedState>, StoreError> {
        let (sharing_id, doctype, ids) = (sharing_id.to_owned(), doctype.as_str().to_owned(), ids.to_vec());
        self.read(move |conn| {
            let mut out = HashMap::new();
            for id in ids {
                if let Some(st) = shared_row(conn, &sharing_id, &doctype, id.as_str())? {
                    out.insert(id, st);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn shared_info(&self, sharing_id: &str, since: u64) -> Result<SharedInfo, StoreError> {
        let sharing_id = sharing_id.to_owned();
        self.read(move |conn| {
            let last_seq: i64 = conn
                .prepare_cached("SELECT last_seq FROM sharing_seqs WHERE sharing_id = ?1")?
                .query_row(params![sharing_id], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            let docs: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM shared WHERE sharing_id = ?1 AND removed = 0")?
                .query_row(params![sharing_id], |r| r.get(0))?;
            let pending: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM shared WHERE sharing_id = ?1 AND seq > ?2")?
                .query_row(params![sharing_id, since as i64], |r| r.get(0))?;
            Ok(SharedInfo { last_seq: last_seq as u64, docs: docs as u64, pending: pending as u64 })
        })
        .await
    }

    async fn untrack(&self, sharing_id: &str) -> Result<(), StoreError> {
        let sharing_id = sharing_id.to_owned();
        self.write(move |tx, _| {
            tx.prepare_cached("DELETE FROM shared WHERE sharing_id = ?1")?.execute(params![sharing_id])?;
            tx.prepare_cached("DELETE FROM sharing_starts WHERE sharing_id = ?1")?.execute(params![sharing_id])?;
            Ok(())
        })
        .await
    }

    async fn doctypes(&self) -> Result<Vec<Doctype>, StoreError> {
        self.read(|conn| {
            let names: Vec<String> = conn
                .prepare_cached("SELECT doctype FROM doctypes UNION SELECT doctype FROM locals ORDER BY 1")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            names.iter().map(|n| Doctype::parse(n).map_err(StoreError::Corrupt)).collect()
        })
        .await
    }

    async fn local_docs(&self, doctype: &Doctype) -> Result<Vec<LocalDoc>, StoreError> {
        let doctype = doctype.as_str().to_owned();
        self.read(move |conn| {
            let rows: Vec<(String, i64, Vec<u8>)> = conn
                .prepare_cached("SELECT id, rev, body FROM locals WHERE doctype = ?1 ORDER BY id")?
                .query_map(params![doctype], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            rows.into_iter()
                .map(|(id, rev, body)| Ok(LocalDoc { body: parse_body(&id, body)?, id, rev: rev as u64 }))
                .collect()
        })
        .await
    }

    async fn advance_seq(&self, doctype: &Doctype, at_least: u64) -> Result<(), StoreError> {
        let doctype = doctype.as_str().to_owned();
        self.write(move |tx, _| {
            let mut counters = DoctypeCounters::load(tx, &doctype)?;
            if counters.last_seq < at_least {
                counters.last_seq = at_least;
                counters.save(tx, &doctype)?;
            }
            Ok(())
        })
        .await
    }
}

/// The `N` of a `_local` document's `0-N`, if it exists.
fn local_rev(conn: &Connection, doctype: &str, id: &str) -> Result<Option<u64>, StoreError> {
    let rev: Option<i64> = conn
        .prepare_cached("SELECT rev FROM locals WHERE doctype = ?1 AND id = ?2")?
        .query_row(params![doctype, id], |r| r.get(0))
        .optional()?;
    Ok(rev.map(|r| r as u64))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::json;

    #[tokio::test]
    async fn a_write_fails_and_commits_nothing_while_the_tracking_rules_are_poisoned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("db.sqlite"), 1000).expect("open");
        let t = Doctype::parse("io.hearth.notes").expect("doctype");
        let rule = TrackRule {
            sharing_id: "s1".into(),
            rule_index: 0,
            doctype: t.as_str().into(),
            selector: None,
            values: vec!["a".into()],
            joins: true,
            parent_field: None,
        };
        store.set_tracking(vec![rule.clone()]);
        let id = DocId::parse("a").expect("id");
        let body = || json!({"n": 1}).as_object().cloned().expect("object");

        store.inner.tracking.poison();
        let refused = json::put(&store, &t, &id, None, body()).await;
        assert!(matches!(refused, Err(StoreError::Internal(_))), "{refused:?}");
        assert!(json::get(&store, &t, &id).await.expect("read").is_none(), "nothing was committed");

        // Setting the rules again heals the lock, and the write is tracked.
        store.set_tracking(vec![rule]);
        json::put(&store, &t, &id, None, body()).await.expect("write after healing");
        let feed = store.shared_changes("s1", 0, 10).await.expect("feed");
        assert_eq!(feed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["a"]);
    }
}
