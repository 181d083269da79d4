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
//! SQLite connections are blocking: calls run on tokio's blocking pool, except reads of a few
//! documents by key, which take less time than the hand-over and run where they are called
//! (`SqliteStore::read_point`). Writes go through one connection (SQLite has one writer
//! anyway); reads use a small pool of their own connections, which WAL lets run alongside a
//! write.
//!
//! WAL checkpoints (copying committed pages into the database file, which lets the WAL start
//! over) run on the writer right after a group's acknowledgements, once the WAL is past
//! [`CHECKPOINT_BYTES`]: SQLite's own automatic checkpoint runs inside the `COMMIT` that
//! crosses its threshold, before that group is acknowledged (10-14 ms instead of 2-3 for a
//! 500-document group). Run by the writer between two groups, a checkpoint copies everything
//! and the next write starts the WAL over (one run by another connection while writes go on
//! never catches up, and the WAL grows). SQLite's own still runs past
//! [`CHECKPOINT_FALLBACK_PAGES`], should these fail.
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
/// 4: `bodies` is a rowid table (see [`BODIES`]).
/// 5: `shared.left_rev`, the revision a document left its sharing at (`SharedChange::left_rev`).
const SCHEMA_VERSION: i64 = 5;

/// Sequence numbers per `feed_counts` bucket.
pub const FEED_BUCKET: u64 = 1024;

/// The bodies of leaf revisions. A rowid table, unlike the others: a row of a `WITHOUT ROWID`
/// table keeps at most about a quarter of a page (1,002 bytes of 4,096) in its b-tree page
/// and puts the rest on an overflow page of its own, so every body over about 1 KB took a
/// whole extra page, mostly empty, to write and to read; a rowid table keeps up to 4,061
/// bytes in place (SQLite's file format, "B-tree Page Format", the `X` and `M` thresholds).
/// The key is then also kept in the primary key's index. Version 4 of the schema.
const BODIES: &str = "bodies";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS doctypes (
    doctype TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    doc_count INTEGER NOT NULL,
    del_count INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bodies (
    doctype TEXT NOT NULL,
    id TEXT NOT NULL,
    rev TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (doctype, id, rev)
);
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
    left_rev TEXT,
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

/// The WAL size past which the writer checkpoints after a commit (about SQLite's default of
/// 1,000 pages). It is also the WAL's `journal_size_limit`: each time the WAL starts over,
/// SQLite truncates its file to this size, and later commits write over it in place (no size
/// change to sync); the file grows past it only when more than this was written since.
const CHECKPOINT_BYTES: u64 = 4 << 20;

/// The WAL size, in pages, past which SQLite's automatic checkpoint runs in the commit itself,
/// should the checkpoints after commits fail: 64 MiB of 4 KiB pages.
const CHECKPOINT_FALLBACK_PAGES: i64 = 16_384;

/// Reader connections kept open per instance.
const MAX_IDLE_READERS: usize = 4;

/// The most documents a read may name to run on the caller's thread ([`SqliteStore::read_point`]).
const POINT_READ_KEYS: usize = 16;

/// The most bytes of stored bodies a read may load to run on the caller's thread (parsing a
/// body costs about its size in time): larger ones go to the blocking pool.
const POINT_READ_BYTES: u64 = 64 * 1024;

/// For [`SqliteStore::read_point`]: a read that loads no body.
fn no_bodies(_: &Connection) -> Result<u64, StoreError> {
    Ok(0)
}

/// For [`SqliteStore::read_point`]: the bytes of the stored bodies of every leaf of documents
/// `ids` of `doctype`, `times` over (a read may name a revision several times).
fn leaf_bodies(conn: &Connection, doctype: &str, ids: &[&str], times: usize) -> Result<u64, StoreError> {
    let ids = serde_json::to_string(ids).map_err(internal)?;
    let bytes: i64 = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(length(body)), 0) FROM bodies
             WHERE doctype = ?1 AND id IN (SELECT value FROM json_each(?2))",
        )?
        .query_row(params![doctype, ids], |r| r.get(0))?;
    Ok((bytes.max(0) as u64).saturating_mul(times.max(1) as u64))
}

pub struct SqliteStore {
    inner: Arc<Inner>,
}

/// A queued write: runs in the group's transaction (in a savepoint of its own when the group
/// holds other writes), says whether it failed, and answers how to acknowledge it once the
/// group's commit is known (`None`: committed; `Some(e)`: the commit failed).
/// A group that cannot be written gives each of its writes the error instead (`Err`).
type Job = Box<dyn FnOnce(Result<Group<'_>, StoreError>) -> Done + Send>;
type Ack = Box<dyn FnOnce(Option<StoreError>) + Send>;

/// What a queued write runs in.
struct Group<'a> {
    tx: &'a Transaction<'a>,
    ctx: &'a WriteCtx,
    /// The only write of its group: it needs no savepoint, as a failure rolls back the whole
    /// transaction. (A savepoint held open over a large write makes SQLite copy every page it
    /// changes into the statement journal, which spills to a temporary file past 64 KiB.)
    alone: bool,
}

/// A write that has run: its error (a copy) if it failed, and how to acknowledge it.
struct Done {
    failed: Option<StoreError>,
    ack: Ack,
}

struct Inner {
    path: PathBuf,
    /// The WAL file beside it (its size says when to checkpoint, see [`checkpoint_when_due`]).
    wal: PathBuf,
    writer: Mutex<Connection>,
    /// Writes waiting for the next group commit (see the module docs).
    queue: Mutex<Vec<Job>>,
    readers: Mutex<Vec<Connection>>,
    revs_limit: usize,
    tracking: tracking::Rules,
    commits: watch::Sender<u64>,
}

impl Inner {
    /// An idle reader connection, if the pool holds one.
    fn pooled_reader(&self) -> Result<Option<Connection>, StoreError> {
        Ok(self.readers.lock().map_err(|_| internal(anyhow::anyhow!("reader pool poisoned")))?.pop())
    }

    /// Runs `f` in one read transaction of `conn`, a snapshot (a write committing between two
    /// statements, e.g. the tree then the body of its winner, is never half seen), then gives
    /// `conn` back to the pool.
    fn read_with<T>(
        &self,
        conn: Connection,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let out = conn.unchecked_transaction().map_err(StoreError::from).and_then(|tx| f(&tx));
        self.give_back(conn);
        out
    }

    /// Whether an idle reader connection is in the pool now (a point read would run inline).
    fn reader_idle(&self) -> bool {
        self.readers.lock().is_ok_and(|pool| !pool.is_empty())
    }

    /// Puts an idle reader connection back in the pool, unless it is full.
    fn give_back(&self, conn: Connection) {
        if let Ok(mut pool) = self.readers.lock() {
            if pool.len() < MAX_IDLE_READERS {
                pool.push(conn);
            }
        }
    }
}

/// What a write transaction needs besides the connection.
struct WriteCtx {
    revs_limit: usize,
    tracking: Arc<Vec<TrackRule>>,
    seqs: SharingSeqs,
}

/// The sharings' feed sequences (`sharing_seqs`) as one group's transaction advances them:
/// each is read once, advanced here, and written back once before the commit, instead of an
/// `UPDATE … RETURNING` per document entering or changing in a sharing. A write rolled back
/// alone within its group (its savepoint) gives back the numbers it took (see
/// [`commit_group`]), as its rows are gone with it.
#[derive(Default)]
struct SharingSeqs(std::cell::RefCell<HashMap<String, (i64, bool)>>);

type SeqsSnapshot = HashMap<String, (i64, bool)>;

impl SharingSeqs {
    /// Reserves `n` numbers of `sharing`'s feed; answers the first.
    fn take(&self, tx: &Transaction<'_>, sharing: &str, n: i64) -> Result<i64, StoreError> {
        let mut seqs = self.0.borrow_mut();
        let entry = match seqs.get_mut(sharing) {
            Some(e) => e,
            None => {
                // The feed's own last row too: the numbers go on past it whatever the counter
                // says (one lookup in `shared_by_seq`).
                let last: i64 = tx
                    .prepare_cached(
                        "SELECT MAX(COALESCE((SELECT last_seq FROM sharing_seqs WHERE sharing_id = ?1), 0),
                                    COALESCE((SELECT MAX(seq) FROM shared WHERE sharing_id = ?1), 0))",
                    )?
                    .query_row(params![sharing], |r| r.get(0))?;
                seqs.entry(sharing.to_owned()).or_insert((last, false))
            }
        };
        let first = entry.0 + 1;
        *entry = (entry.0 + n, true);
        Ok(first)
    }

    fn snapshot(&self) -> SeqsSnapshot {
        self.0.borrow().clone()
    }

    fn restore(&self, snapshot: SeqsSnapshot) {
        *self.0.borrow_mut() = snapshot;
    }

    /// Writes the advanced sequences back, in the group's transaction.
    fn flush(&self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        for (sharing, (last, advanced)) in self.0.borrow_mut().iter_mut() {
            if std::mem::take(advanced) {
                tx.prepare_cached(
                    "INSERT INTO sharing_seqs (sharing_id, last_seq) VALUES (?1, ?2)
                     ON CONFLICT (sharing_id) DO UPDATE SET last_seq = ?2",
                )?
                .execute(params![sharing, *last])?;
            }
        }
        Ok(())
    }
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

/// Brings a database written by an older hearth (schema `from`, 0 for a new file) to
/// [`SCHEMA_VERSION`], the layout of `bodies` apart ([`bodies_to_rowid`]); `SCHEMA` has already
/// created whatever table was missing.
fn migrate(conn: &Connection, from: i64) -> rusqlite::Result<()> {
    if from == 0 {
        return Ok(());
    }
    // Columns `shared` gained. Version 3: where and how each document entered its sharing.
    // Older rows get `joined = 0`, which every member's checkpoint is past: their documents
    // count as already known to every member, as version 2 assumed. Version 5: the revision a
    // document left its sharing at; older removed rows have none, and the content of their
    // files is not offered any more (see `SharedChange::left_rev`).
    let columns: Vec<String> =
        conn.prepare("PRAGMA table_info(shared)")?.query_map([], |r| r.get(1))?.collect::<Result<_, _>>()?;
    for (name, ddl) in [
        ("joined", "ALTER TABLE shared ADD COLUMN joined INTEGER NOT NULL DEFAULT 0"),
        ("initial", "ALTER TABLE shared ADD COLUMN initial INTEGER NOT NULL DEFAULT 0"),
        ("origin", "ALTER TABLE shared ADD COLUMN origin INTEGER"),
        ("left_rev", "ALTER TABLE shared ADD COLUMN left_rev TEXT"),
    ] {
        if !columns.iter().any(|c| c == name) {
            conn.execute_batch(ddl)?;
        }
    }
    if from < 3 {
        // Version 2 took a sharing's initial set in one transaction and marked no start: a
        // sharing with a feed has its set, and is not to take it again.
        conn.execute_batch("INSERT OR IGNORE INTO sharing_starts (sharing_id) SELECT DISTINCT sharing_id FROM shared")?;
    }
    Ok(())
}

/// Whether `bodies` is still the `WITHOUT ROWID` table of schema 3 and older (see [`BODIES`]).
fn bodies_without_rowid(conn: &Connection) -> rusqlite::Result<bool> {
    let wr: Option<bool> = conn
        .query_row(
            "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1 COLLATE NOCASE",
            [BODIES],
            |r| r.get(0),
        )
        .optional()?;
    Ok(wr == Some(true))
}

/// Schema 4: copies `bodies` into a rowid table (see [`BODIES`]), in a transaction of its own
/// that also sets the version (to [`SCHEMA_VERSION`]: [`migrate`] made every other change
/// before). It needs about the table's size again in free space: on a full disk it fails, the
/// file stays at version 3 (which every query reads as well) and the next opening tries again.
fn bodies_to_rowid(conn: &Connection) -> rusqlite::Result<()> {
    let tx = Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    if bodies_without_rowid(&tx)? {
        // The old table is set aside and `SCHEMA` creates the new one, as in a new file.
        tx.execute_batch("ALTER TABLE bodies RENAME TO bodies_v3;")?;
        tx.execute_batch(SCHEMA)?;
        tx.execute_batch(
            "INSERT INTO bodies (doctype, id, rev, body) SELECT doctype, id, rev, body FROM bodies_v3;
             DROP TABLE bodies_v3;",
        )?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    // The copy went through the WAL: give its space back.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    Ok(())
}

/// A store file written by a newer hearth (a schema above [`SCHEMA_VERSION`]): this one
/// neither reads nor writes it. Requests for its instance are answered 503 saying so (the
/// path stays out of the answer; see `http::instance_of`).
#[derive(Debug, thiserror::Error)]
#[error("{} was written by a newer hearth (schema {found}; this one reads up to {supported})", path.display())]
pub struct NewerSchema {
    pub path: PathBuf,
    pub found: i64,
    pub supported: i64,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`: [`NewerSchema`] (in the
    /// `anyhow` chain) for a file a newer hearth wrote.
    pub fn open(path: &Path, revs_limit: usize) -> anyhow::Result<SqliteStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
        }
        let conn = open_connection(path)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(NewerSchema { path: path.to_owned(), found: version, supported: SCHEMA_VERSION }.into());
        }
        // Only a new or older file is written to: opening must work on a full disk, where the
        // store then serves reads and refuses writes (`StoreError::Full`). (An older file's
        // columns take a few pages: on a full disk that upgrade fails, and the file opens once
        // there is room.)
        if version < SCHEMA_VERSION {
            // In one transaction: a crash while upgrading leaves the file as it was. (The
            // version is read again under the transaction's lock: another process may have
            // upgraded the file meanwhile.)
            let tx = Transaction::new_unchecked(&conn, rusqlite::TransactionBehavior::Immediate)
                .context("failed to start the schema upgrade")?;
            let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
            tx.execute_batch(SCHEMA).context("failed to create the schema")?;
            migrate(&tx, version).context("failed to upgrade the schema")?;
            if version < 3 {
                // Files from before `feed_counts`: count the feed once.
                tx.execute(
                    "INSERT OR REPLACE INTO feed_counts (doctype, bucket, docs)
                     SELECT doctype, seq / ?1, COUNT(*) FROM docs GROUP BY doctype, seq / ?1",
                    params![FEED_BUCKET as i64],
                )
                .context("failed to count the changes feeds")?;
            }
            // A new file has a rowid `bodies` already; an older one whose bodies have not moved
            // yet stays at version 3 until they do (below).
            let to = if bodies_without_rowid(&tx)? { 3 } else { SCHEMA_VERSION };
            tx.pragma_update(None, "user_version", to.max(version))?;
            tx.commit().context("failed to upgrade the schema")?;
        }
        if version < SCHEMA_VERSION && bodies_without_rowid(&conn)? {
            if let Err(e) = bodies_to_rowid(&conn) {
                tracing::warn!(file = %path.display(), error = %e,
                    "bodies were not moved to the faster layout of schema 4 (the file stays at version 3, read as before); the next start tries again");
            }
        }
        // Checkpoints run after acknowledgements (see the module docs); the WAL is truncated when
        // it starts over, so that its size says how much it holds.
        conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_FALLBACK_PAGES)?;
        conn.pragma_update(None, "journal_size_limit", CHECKPOINT_BYTES as i64)?;
        let (commits, _) = watch::channel(0);
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                wal: {
                    let mut wal = path.to_path_buf().into_os_string();
                    wal.push("-wal");
                    wal.into()
                },
                writer: Mutex::new(conn),
                queue: Mutex::new(Vec::new()),
                readers: Mutex::new(Vec::new()),
                revs_limit: revs_limit.max(1),
                tracking: tracking::Rules::default(),
                commits,
            }),
        })
    }

    /// Runs `f` in a read transaction on a thread of the blocking pool: for reads whose size
    /// the caller does not bound (feeds, scans, many keys).
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match inner.pooled_reader()? {
                Some(c) => c,
                None => open_connection(&inner.path).map_err(StoreError::Unavailable)?,
            };
            inner.read_with(conn, f)
        })
        .await
        .map_err(internal)?
    }

    /// A read of a few rows by key ([`POINT_READ_KEYS`] documents at most, which the caller
    /// vouches for with `point`) whose stored bodies, as `bytes` counts them in the same
    /// snapshot, come to at most [`POINT_READ_BYTES`]: run on the caller's thread when an idle
    /// reader connection is there, else as [`SqliteStore::read`]. It takes tens of
    /// microseconds, less than the two thread hand-overs of a trip to the blocking pool (a
    /// thread woken for it, then the task: the receiving end of a files sharing made about
    /// eight such reads per file). WAL lets a reader run alongside the writer without waiting
    /// for it. A loop of such reads gives its thread back now and then (tokio's task budget),
    /// and a panic in `f` is an internal error, as from the pool.
    async fn read_point<T, F>(
        &self,
        point: bool,
        bytes: impl FnOnce(&Connection) -> Result<u64, StoreError>,
        f: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = if point { self.inner.pooled_reader()? } else { None };
        let Some(conn) = conn else { return self.read(f).await };
        let mut f = Some(f);
        // `f` runs only when the bodies are small; otherwise it is still here, for the pool.
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.inner.read_with(conn, |tx| {
                if bytes(tx)? > POINT_READ_BYTES {
                    return Ok(None);
                }
                let f = f.take().ok_or_else(|| internal(anyhow::anyhow!("a point read ran twice")))?;
                f(tx).map(Some)
            })
        }));
        tokio::task::coop::consume_budget().await;
        match ran {
            Ok(Ok(Some(out))) => Ok(out),
            Ok(Ok(None)) => self.read(f.ok_or_else(|| internal(anyhow::anyhow!("a point read lost its read")))?).await,
            Ok(Err(e)) => Err(e),
            Err(_) => Err(internal(anyhow::anyhow!("a read panicked"))),
        }
    }

    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &WriteCtx) -> Result<T, StoreError> + Send + 'static,
    {
        let (sender, receiver) = tokio::sync::oneshot::channel::<Result<T, StoreError>>();
        let job: Job = Box::new(move |group| {
            let out = match group {
                Ok(Group { tx, ctx, alone: true }) => f(tx, ctx),
                Ok(Group { tx, ctx, alone: false }) => in_savepoint(tx, |tx| f(tx, ctx)),
                Err(e) => Err(e),
            };
            let failed = out.as_ref().err().map(copy_error);
            let ack: Ack = Box::new(move |failed: Option<StoreError>| {
                let _ = sender.send(match (failed, out) {
                    (Some(e), Ok(_)) => Err(e),
                    (_, out) => out,
                });
            });
            Done { failed, ack }
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
            if tx.execute_batch("ROLLBACK TO write; RELEASE write").is_err() {
                // The savepoint cannot be undone (SQLite may have rolled the transaction back
                // itself, after an I/O error or a full disk): the whole group is given up
                // (see `commit_group`), with this write's own error.
                let _ = tx.execute_batch("ROLLBACK");
            }
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
    let ctx = WriteCtx { revs_limit: inner.revs_limit, tracking, seqs: SharingSeqs::default() };
    let alone = jobs.len() == 1;
    let mut done: Vec<Done> = Vec::with_capacity(jobs.len());
    let mut jobs = jobs.into_iter();
    while let Some(job) = jobs.next() {
        let before = (!alone).then(|| ctx.seqs.snapshot());
        let d = job(Ok(Group { tx: &tx, ctx: &ctx, alone }));
        if let (Some(e), true) = (&d.failed, tx.is_autocommit()) {
            // SQLite rolled the transaction back (see `in_savepoint`): nothing of the group
            // is written, and what is left of it is not run.
            let e = copy_error(e);
            done.push(d);
            for d in done {
                (d.ack)(Some(copy_error(&e)));
            }
            return fail_all(jobs.collect(), e);
        }
        if let (Some(before), Some(_)) = (before, &d.failed) {
            // Rolled back alone: the numbers it took are free again.
            ctx.seqs.restore(before);
        }
        done.push(d);
    }
    if alone && done.iter().all(|d| d.failed.is_some()) {
        // The only write failed: nothing of it may be committed (it ran without a savepoint).
        drop(tx);
        for d in done {
            (d.ack)(None);
        }
        return;
    }
    let acks: Vec<Ack> = done.into_iter().map(|d| d.ack).collect();
    if let Err(e) = ctx.seqs.flush(&tx) {
        let mut errors = errors_for(acks.len(), e);
        for ack in acks {
            ack(errors.pop());
        }
        return;
    }
    match tx.commit() {
        Ok(()) => {
            inner.commits.send_modify(|n| *n += 1);
            for ack in acks {
                ack(None);
            }
            checkpoint_when_due(inner, &conn);
        }
        Err(e) => {
            let mut errors = errors_for(acks.len(), e.into());
            for ack in acks {
                ack(errors.pop());
            }
        }
    }
}

/// Checkpoints the database on the writer `conn` (between two groups, after the
/// acknowledgements of the last one) when its WAL holds more than [`CHECKPOINT_BYTES`].
/// `PASSIVE`: it copies what no reader still needs, without waiting for anyone.
fn checkpoint_when_due(inner: &Inner, conn: &Connection) {
    if std::fs::metadata(&inner.wal).map(|m| m.len()).unwrap_or(0) <= CHECKPOINT_BYTES {
        return;
    }
    let path = &inner.path;
    let outcome = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    });
    match outcome {
        Ok((busy, log, copied)) => tracing::debug!(file = %path.display(), busy, log, copied, "checkpoint"),
        // SQLite's own checkpoint, past the fallback size, covers for a failing one.
        Err(e) => tracing::warn!(file = %path.display(), error = %e, "checkpoint failed"),
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
            (job(Err(e)).ack)(None);
        }
    }
}

/// The error of a failed group, once per write (store errors are not `Clone`: the first write
/// gets the error itself, the others a copy of the same kind).
fn errors_for(n: usize, e: StoreError) -> Vec<StoreError> {
    let mut out: Vec<StoreError> = (1..n).map(|_| copy_error(&e)).collect();
    out.push(e);
    out.reverse();
    out
}

/// A store error of the same kind and message (store errors are not `Clone`).
fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(x) => StoreError::Unavailable(anyhow::anyhow!("{x:#}")),
        StoreError::Full(x) => StoreError::Full(anyhow::anyhow!("{x:#}")),
        StoreError::Internal(x) => StoreError::Internal(anyhow::anyhow!("{x:#}")),
        StoreError::Corrupt(x) => StoreError::Corrupt(x.clone()),
        StoreError::NotFound => StoreError::NotFound,
        StoreError::Deleted => StoreError::Deleted,
        StoreError::Conflict => StoreError::Conflict,
    }
}

mod rows;
mod store_impl;

use rows::*;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::json;

    /// A document's removed rows in a sharing (counted for every node of a moved folder, in
    /// the writer) and a page of a sharing's documents are found by key: counting every
    /// sharing's rows of a document walked the whole `shared` table, and a page re-read its
    /// doctype from the start.
    #[tokio::test]
    async fn sharing_lookups_read_only_their_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("db.sqlite"), 1000).expect("open");
        let plans = store
            .read(|conn| {
                let plan = |sql: &str, n: usize| -> Result<String, StoreError> {
                    let steps: Vec<String> = conn
                        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?
                        .query_map(rusqlite::params_from_iter((0..n).map(|_| "x")), |r| r.get(3))?
                        .collect::<Result<_, _>>()?;
                    Ok(steps.join("; "))
                };
                Ok((plan(store_impl::REMOVED_ROWS, 3)?, plan(store_impl::SHARED_DOCS, 4)?))
            })
            .await
            .expect("plans");
        assert_eq!(plans.0, "SEARCH shared USING PRIMARY KEY (sharing_id=? AND doctype=? AND id=?)");
        assert!(
            plans.1.contains("(sharing_id=? AND (doctype,id)>(?,?))") && !plans.1.contains("TEMP B-TREE"),
            "{}",
            plans.1
        );
    }

    /// A read of a few documents by key runs on the calling thread once a reader connection is
    /// idle (no trip to the blocking pool), and sees what was acknowledged before it; a read
    /// of more keys or larger bodies, or with no idle reader, goes to the pool; a panic in a
    /// read is an internal error.
    #[tokio::test]
    async fn point_reads_run_where_they_are_called_and_see_every_acknowledged_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("db.sqlite"), 1000).expect("open");
        let here = std::thread::current().id();
        let thread =
            |point: bool, bytes: u64| store.read_point(point, move |_| Ok(bytes), |_| Ok(std::thread::current().id()));
        assert_ne!(thread(true, 0).await.expect("first read"), here, "no reader was idle: the pool opened one");
        assert_eq!(thread(true, 0).await.expect("point read"), here);
        assert_eq!(thread(true, POINT_READ_BYTES).await.expect("point read of bodies"), here);
        assert_ne!(
            thread(true, POINT_READ_BYTES + 1).await.expect("large bodies"),
            here,
            "large bodies go to the pool"
        );
        assert_ne!(thread(false, 0).await.expect("scan"), here);
        let panicked = store.read_point(true, no_bodies, |_| -> Result<(), StoreError> { panic!("in a read") }).await;
        assert!(matches!(panicked, Err(StoreError::Internal(_))), "{panicked:?}");

        let t = Doctype::parse("io.hearth.notes").expect("doctype");
        for i in 0..20 {
            let id = DocId::parse(&format!("n{i}")).expect("id");
            json::put(&store, &t, &id, None, json!({"n": i}).as_object().cloned().expect("object")).await.expect("put");
            let got = json::get(&store, &t, &id).await.expect("get").expect("written");
            assert_eq!(got.body.get("n"), Some(&json!(i)));
        }
        let feed = store.changes(&t, &ChangesQuery::default()).await.expect("changes");
        assert_eq!(feed.rows.len(), 20);
        let after = store.changes(&t, &ChangesQuery { since: feed.last_seq, ..Default::default() }).await;
        assert_eq!(after.expect("end").last_seq, feed.last_seq, "nothing after the end: since comes back");
    }

    #[tokio::test]
    async fn a_write_fails_and_commits_nothing_while_the_tracking_rules_are_poisoned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("db.sqlite"), 1000).expect("open");
        let t = Doctype::parse("io.hearth.notes").expect("doctype");
        let rule = TrackRule {
            sharing_id: SharingId::parse("e1").expect("sharing id"),
            rule_index: 0,
            doctype: t.clone(),
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
        let feed = store.shared_changes(&SharingId::parse("e1").expect("id"), 0, 10).await.expect("feed");
        assert_eq!(feed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["a"]);
    }

    /// The writer checkpoints after its commits once the WAL is past `CHECKPOINT_BYTES` (SQLite's
    /// own would wait for 64 MiB): the pages reach the database file, and the next write starts
    /// the WAL over, truncated to `CHECKPOINT_BYTES`, so it never grows much past that, even
    /// while writes keep coming from several tasks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_growing_wal_is_checkpointed_after_commits_and_starts_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite");
        let store = Arc::new(SqliteStore::open(&path, 1000).expect("open"));
        let t = Doctype::parse("io.hearth.notes").expect("doctype");
        let wal = dir.path().join("db.sqlite-wal");
        let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        // A new document of about 1 KB.
        fn kilobyte(id: String) -> DocWrite {
            DocWrite {
                id: DocId::parse(&id).expect("id"),
                rev: None,
                revisions: None,
                deleted: false,
                body: Body::from_map(json!({"text": "x".repeat(1000)}).as_object().expect("object")),
            }
        }
        let writers: Vec<_> = (0..3)
            .map(|w| {
                let (store, t, wal) = (store.clone(), t.clone(), wal.clone());
                tokio::spawn(async move {
                    let mut largest = 0;
                    for batch in 0..20 {
                        let docs = (0..100).map(|i| kilobyte(format!("w{w}-{batch}-{i}"))).collect();
                        store.bulk_docs(&t, docs, true).await.expect("write");
                        largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
                    }
                    largest
                })
            })
            .collect();
        let mut largest = 0;
        for w in writers {
            largest = largest.max(w.await.expect("writer"));
        }
        // 6,000 documents of 1 KB: about 4 times the threshold went through the WAL.
        assert!(size(&path) > CHECKPOINT_BYTES, "the pages reached the database file: {} bytes", size(&path));
        assert!(largest <= CHECKPOINT_BYTES + (2 << 20), "the WAL started over: it reached {largest} bytes");
        // Where the writers stopped, the WAL may hold anything under the threshold (how their
        // writes were grouped decides it): write until a commit takes it past the threshold,
        // after which the writer checkpoints before it takes the next write.
        let mut extra = 0;
        while size(&wal) <= CHECKPOINT_BYTES {
            assert!(extra < 10_000, "the WAL never went past the threshold: {} bytes", size(&wal));
            let docs = (0..10).map(|i| kilobyte(format!("x-{extra}-{i}"))).collect();
            store.bulk_docs(&t, docs, true).await.expect("write");
            extra += 10;
        }
        json::put(
            store.as_ref(),
            &t,
            &DocId::parse("last").expect("id"),
            None,
            json!({}).as_object().cloned().expect("object"),
        )
        .await
        .expect("write");
        assert!(size(&wal) <= CHECKPOINT_BYTES, "the WAL is truncated when it starts over: {} bytes", size(&wal));
        assert_eq!(store.db_info(&t).await.expect("info").doc_count, 6001 + extra, "nothing was lost");
    }

    /// An initial set is taken in parts of the size asked (id rules' values count), each
    /// resuming after the last document the previous one scanned, and only the last part marks
    /// the sharing started.
    #[tokio::test]
    async fn an_initial_set_is_taken_in_parts_that_each_scan_at_most_their_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("db.sqlite"), 1000).expect("open");
        let t = Doctype::parse("io.hearth.notes").expect("doctype");
        let sharing = SharingId::parse("e2").expect("sharing id");
        // Seven that match, then five that do not (scanned, never shared: only the position
        // says they were seen).
        for (prefix, list, n) in [("d", "l", 7), ("e", "m", 5)] {
            for i in 0..n {
                let id = DocId::parse(&format!("{prefix}{i}")).expect("id");
                json::put(&store, &t, &id, None, json!({"list": list}).as_object().cloned().expect("object"))
                    .await
                    .expect("put");
            }
        }
        let rule = |i, selector, values: &[&str]| {
            crate::store::conformance::track_rule(&sharing, &t, i, selector, values, true)
        };
        store.set_tracking(vec![rule(0, None, &["d6"]), rule(1, Some("list"), &["l"])]);
        let mut resume = None;
        let mut steps = Vec::new();
        loop {
            let part = store.track_existing_part(&sharing, resume.as_deref(), 2).await.expect("part");
            let fed = store.shared_changes(&sharing, 0, 100).await.expect("feed").len();
            steps.push((part.added, part.next.clone(), fed));
            match part.next {
                Some(next) => resume = Some(next),
                None => break,
            }
            assert!(steps.len() < 20, "the parts never end: {steps:?}");
        }
        let next = |s: &str| Some(s.to_owned());
        assert_eq!(
            steps,
            [
                (2, next("1:d0"), 2),
                (2, next("1:d2"), 4),
                (2, next("1:d4"), 6),
                (1, next("1:e0"), 7),
                (0, next("1:e2"), 7),
                (0, next("1:e4"), 7),
                (0, None, 7)
            ],
            "d6 by its id rule with d0, then two documents a part, matching or not"
        );
        // Resuming from any position once the set is taken adds nothing.
        let again = store.track_existing_part(&sharing, Some("1:d0"), 2).await.expect("again");
        assert_eq!((again.added, again.next), (0, None));
    }

    /// A write that fails commits nothing, whether it is alone in its group (no savepoint: the
    /// transaction is rolled back) or not (its savepoint is); the sharing feed's numbers it
    /// took are free again, and no number is ever given to two rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_commits_nothing_alone_or_in_a_group_and_its_feed_numbers_are_not_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SqliteStore::open(&dir.path().join("db.sqlite"), 1000).expect("open"));
        let sharing = SharingId::parse("e1").expect("sharing id");
        let record = |id: &'static str, fail: bool| {
            let store = store.clone();
            async move {
                store
                    .write(move |tx, ctx| {
                        record_shared(tx, &ctx.seqs, "e1", "io.hearth.notes", id, 0, None, Entry::default())?;
                        if fail {
                            return Err(StoreError::Conflict);
                        }
                        Ok(())
                    })
                    .await
            }
        };
        let feed = |store: Arc<SqliteStore>, sharing: SharingId| async move {
            let rows = store.shared_changes(&sharing, 0, 100).await.expect("feed");
            rows.into_iter().map(|c| (c.id.as_str().to_owned(), c.seq)).collect::<Vec<_>>()
        };

        assert!(matches!(record("alone", true).await, Err(StoreError::Conflict)));
        assert_eq!(feed(store.clone(), sharing.clone()).await, vec![], "nothing of the failed write");

        // Two writes in one group: the writer is held until both are queued.
        let held = store.inner.writer.lock().expect("writer");
        let failing = tokio::spawn(record("failing", true));
        let passing = tokio::spawn(record("passing", false));
        // (The test's body runs outside the runtime's workers: blocking it holds no task up.)
        while store.inner.queue.lock().expect("queue").len() < 2 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(held);
        assert!(matches!(failing.await.expect("task"), Err(StoreError::Conflict)));
        passing.await.expect("task").expect("the other write of the group commits");
        let rows = feed(store.clone(), sharing.clone()).await;
        assert_eq!(rows, vec![("passing".to_owned(), 1)], "the failed writes' numbers are taken again");

        record("later", false).await.expect("write");
        let rows = feed(store.clone(), sharing.clone()).await;
        assert_eq!(rows, vec![("passing".to_owned(), 1), ("later".to_owned(), 2)]);
        let info = store.shared_info(&sharing, 0).await.expect("info");
        assert_eq!(info.last_seq, 2, "the sequence written back is the last one given");
    }
}
