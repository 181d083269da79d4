//! The tree index: a small SQLite file per instance, derived from the `io.cozy.files` changes
//! feed of the instance's store, that answers what documents alone cannot answer cheaply on
//! every backend: the children of a directory by name (unique names, paginated listings), the
//! ancestors of a node (paths, the trash, permission subtrees, cycles), the bytes used (quota)
//! and which content versions are referenced (the orphan sweep).
//!
//! It is a cache of the store, never a source of truth: each table row mirrors the winning
//! revision of one document, and `meta.seq` is the feed sequence those rows reflect. Catching
//! up reads the feed after `seq` (with the winners' bodies) and applies the rows and the new
//! `seq` in one SQLite transaction, so after a crash the index is at some older `seq` and the
//! next catch-up replays from there (applying a row twice is harmless: each is an upsert of a
//! document's current state). Deleting the file rebuilds it from sequence 0. Documents written
//! by any path — `/files`, a replicator through `Store::apply_received`, an import — reach the
//! index the same way, through the feed.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension};

use super::model::{self, Kind, Node};
use super::{FilesError, ROOT_ID, TRASH_ID};
use crate::store::{ChangesQuery, Doctype, Store};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    dir_id TEXT,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    size INTEGER NOT NULL,
    vfs_id TEXT,
    trashed INTEGER NOT NULL,
    name_key TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS nodes_by_parent ON nodes (dir_id, name, id);
-- Name checks (`child_named`) find their rows and their order here: without `name, id` the
-- planner walked every child of the directory through `nodes_by_parent` instead, at each
-- upload, create or rename (O(children) each).
DROP INDEX IF EXISTS nodes_by_name_key;
CREATE INDEX IF NOT EXISTS nodes_by_name ON nodes (dir_id, name_key, name, id);
CREATE INDEX IF NOT EXISTS nodes_by_vfs ON nodes (vfs_id);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
";

/// The first child of a directory (`?1`) with a name key (`?2`), by (name, id), other than
/// `?3`: found and ordered by `nodes_by_name` alone, whatever the directory holds.
const CHILD_NAMED: &str = "SELECT id, dir_id, name, kind, size, vfs_id, trashed FROM nodes
     WHERE dir_id = ?1 AND name_key = ?2 AND id != ?3 ORDER BY name, id LIMIT 1";

/// A page of a directory's (`?1`) children after the cursor (`?2` name, `?3` id), at most `?4`.
const CHILDREN: &str = "SELECT id, dir_id, name, kind, size, vfs_id, trashed FROM nodes
     WHERE dir_id = ?1 AND (name, id) > (?2, ?3) ORDER BY name, id LIMIT ?4";

/// Nodes under a directory (`?1`), at most `?2` levels down, the deepest first, at most `?3`.
/// `CROSS JOIN` keeps the subtree as the outer loop, each node then found by its key: left to
/// itself, SQLite 3.46 scanned a whole index of `nodes` for every call instead.
const DESCENDANTS: &str = "WITH RECURSIVE down(id, depth) AS (
        SELECT id, 1 FROM nodes WHERE dir_id = ?1
        UNION ALL
        SELECT n.id, down.depth + 1 FROM down JOIN nodes n ON n.dir_id = down.id WHERE down.depth < ?2
     )
     SELECT n.id, n.dir_id, n.name, n.kind, n.size, n.vfs_id, n.trashed
     FROM down CROSS JOIN nodes n ON n.id = down.id ORDER BY down.depth DESC LIMIT ?3";

/// Feed rows read per catch-up step.
const CATCH_UP_BATCH: usize = 500;

/// The most ids a lookup may name to run on the caller's thread ([`Index::with_point`]).
const POINT_READ_KEYS: usize = 16;
/// Deepest tree walked up from a node; deeper chains (or cycles, which concurrent moves on two
/// replicas can make) have no path.
pub const MAX_DEPTH: i64 = 512;

/// One row of the index: what the files layer needs of a node without reading its document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub dir_id: Option<String>,
    pub name: String,
    pub kind: Kind,
    pub size: u64,
    pub vfs_id: Option<String>,
    pub trashed: bool,
}

pub struct Index {
    conn: Arc<Mutex<Connection>>,
    /// One catch-up at a time (they would apply the same rows).
    catching_up: tokio::sync::Mutex<()>,
}

fn internal(e: impl Into<anyhow::Error>) -> FilesError {
    FilesError::Internal(e.into())
}

impl Index {
    pub fn open(path: &Path) -> anyhow::Result<Index> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
        }
        let conn = Connection::open(path).with_context(|| format!("failed to open {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // The index is derived: losing its last transactions to a power cut only means replaying
        // them from the feed.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // An index made before `name_key` existed is dropped and rebuilt from the feed (it is
        // a cache: see the module documentation).
        let has_key: i64 = conn
            .query_row("SELECT COUNT(*) FROM pragma_table_info('nodes') WHERE name = 'name_key'", [], |r| r.get(0))
            .context("failed to read the files index schema")?;
        let has_nodes: i64 = conn
            .query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'nodes'", [], |r| r.get(0))
            .context("failed to read the files index schema")?;
        if has_nodes > 0 && has_key == 0 {
            conn.execute_batch("DROP TABLE nodes; DROP TABLE IF EXISTS meta;")
                .context("failed to drop an old files index")?;
        }
        conn.execute_batch(SCHEMA).context("failed to create the files index")?;
        Ok(Index { conn: Arc::new(Mutex::new(conn)), catching_up: tokio::sync::Mutex::new(()) })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, FilesError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().map_err(|_| internal(anyhow::anyhow!("files index lock poisoned")))?;
            f(&mut conn).map_err(internal)
        })
        .await
        .map_err(internal)?
    }

    /// [`Index::with`] for a read of a few rows by key: run on the caller's thread when the
    /// connection is free at once (tens of microseconds, less than the two thread hand-overs of
    /// a trip to the blocking pool), else on the pool, never waiting for the lock here.
    async fn with_point<T: Send + 'static>(
        &self,
        point: bool,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, FilesError> {
        let ran = match point {
            true => match self.conn.try_lock() {
                Ok(mut conn) => Ok(f(&mut conn).map_err(internal)),
                Err(_) => Err(f),
            },
            false => Err(f),
        };
        let out = match ran {
            Ok(out) => out,
            Err(f) => return self.with(f).await,
        };
        // A loop of lookups gives its thread back now and then (tokio's task budget).
        tokio::task::coop::consume_budget().await;
        out
    }

    /// The feed sequence the index reflects.
    pub async fn seq(&self) -> Result<u64, FilesError> {
        self.with_point(true, |c| meta(c, "seq")).await
    }

    /// Starts over from sequence 0 (the store was replaced or emptied under the index).
    pub async fn reset(&self) -> Result<(), FilesError> {
        self.with(|c| c.execute_batch("DELETE FROM nodes; DELETE FROM meta;")).await
    }

    /// Applies every change of the feed after the index's sequence; returns the new sequence
    /// and the bytes of every file in the index then (trashed ones too, as in Cozy), kept up to
    /// date by each catch-up and read with the sequence: a catch-up with nothing to apply, as
    /// at most requests, costs the index's sequence, read on the calling thread when nothing
    /// holds the index, and the store's answer that nothing is new (on SQLite, a read of its
    /// counter on the calling thread when a reader connection is idle).
    ///
    /// `used` is set to those bytes before another catch-up can run: concurrent ones store
    /// theirs in the order they ran, the last one's last.
    pub async fn catch_up(
        &self,
        store: &dyn Store,
        doctype: &Doctype,
        used: &std::sync::atomic::AtomicU64,
    ) -> Result<(u64, u64), FilesError> {
        let _one = self.catching_up.lock().await;
        let (since, bytes) = self.catch_up_locked(store, doctype).await?;
        used.store(bytes, std::sync::atomic::Ordering::SeqCst);
        Ok((since, bytes))
    }

    async fn catch_up_locked(&self, store: &dyn Store, doctype: &Doctype) -> Result<(u64, u64), FilesError> {
        let (mut since, mut used) = self.with_point(true, |c| Ok((meta(c, "seq")?, meta(c, "bytes")?))).await?;
        loop {
            let q = ChangesQuery { since, limit: Some(CATCH_UP_BATCH), include_docs: true, ..Default::default() };
            let changes = store.changes(doctype, &q).await?;
            if changes.rows.is_empty() {
                return Ok((since, used));
            }
            let full = changes.rows.len() >= CATCH_UP_BATCH;
            let rows: Vec<(String, Option<Node>)> = changes
                .rows
                .into_iter()
                .map(|row| {
                    let node = match (&row.doc, row.deleted) {
                        (Some(doc), false) => model::node_of(row.id.as_str(), &doc.body),
                        _ => None,
                    };
                    (row.id.as_str().to_owned(), node)
                })
                .collect();
            let last = changes.last_seq;
            used = self
                .with(move |c| {
                    let tx = c.transaction()?;
                    let mut bytes = meta(&tx, "bytes")? as i64;
                    for (id, node) in rows {
                        let old: i64 = tx
                            .prepare_cached("SELECT size FROM nodes WHERE id = ?1 AND kind = 1")?
                            .query_row(params![id], |r| r.get(0))
                            .optional()?
                            .unwrap_or(0);
                        bytes -= old;
                        match node {
                            None => {
                                tx.prepare_cached("DELETE FROM nodes WHERE id = ?1")?.execute(params![id])?;
                            }
                            Some(n) => {
                                if n.kind == Kind::File {
                                    bytes += n.size.min(i64::MAX as u64) as i64;
                                }
                                tx.prepare_cached(
                                    "INSERT INTO nodes (id, dir_id, name, kind, size, vfs_id, trashed, name_key)
                                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                                 ON CONFLICT (id) DO UPDATE SET dir_id = ?2, name = ?3, kind = ?4, size = ?5,
                                   vfs_id = ?6, trashed = ?7, name_key = ?8",
                                )?
                                .execute(params![
                                    id,
                                    n.dir_id,
                                    n.name,
                                    n.kind as i64,
                                    n.size.min(i64::MAX as u64) as i64,
                                    n.vfs_id,
                                    n.trashed,
                                    model::name_key(&n.name)
                                ])?;
                            }
                        }
                    }
                    tx.prepare_cached(
                        "INSERT INTO meta (key, value) VALUES ('seq', ?1) ON CONFLICT (key) DO UPDATE SET value = ?1",
                    )?
                    .execute(params![last as i64])?;
                    tx.prepare_cached(
                        "INSERT INTO meta (key, value) VALUES ('bytes', ?1) ON CONFLICT (key) DO UPDATE SET value = ?1",
                    )?
                    .execute(params![bytes.max(0)])?;
                    tx.commit()?;
                    Ok(bytes.max(0) as u64)
                })
                .await?;
            since = last;
            if !full {
                return Ok((since, used));
            }
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Entry>, FilesError> {
        Ok(self.get_many(&[id.to_owned()]).await?.pop().flatten())
    }

    /// [`Index::get`] of each id, in order, in one read: on the calling thread for a few ids
    /// ([`Index::with_point`]), else in one hand-over to the blocking pool. The status of a
    /// sharing counts its files at each request, and one hand-over per file (a thread woken,
    /// then the task) cost more than the lookups.
    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<Option<Entry>>, FilesError> {
        let ids = ids.to_vec();
        self.with_point(ids.len() <= POINT_READ_KEYS, move |c| {
            let mut stmt =
                c.prepare_cached("SELECT id, dir_id, name, kind, size, vfs_id, trashed FROM nodes WHERE id = ?1")?;
            ids.iter().map(|id| stmt.query_row(params![id], entry).optional()).collect()
        })
        .await
    }

    /// The child of `dir` named `name`, other than `except`. Names are compared as
    /// [`model::name_key`] does: `é` written precomposed (NFC) or decomposed (NFD, as macOS
    /// writes it) is one name.
    pub async fn child_named(&self, dir: &str, name: &str, except: Option<&str>) -> Result<Option<Entry>, FilesError> {
        let (dir, name, except) = (dir.to_owned(), model::name_key(name), except.unwrap_or_default().to_owned());
        self.with_point(true, move |c| {
            c.prepare_cached(CHILD_NAMED)?.query_row(params![dir, name, except], entry).optional()
        })
        .await
    }

    /// Children of `dir` ordered by (name, id), after `after` (exclusive), at most `limit`.
    pub async fn children(
        &self,
        dir: &str,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<Vec<Entry>, FilesError> {
        let dir = dir.to_owned();
        // No cursor is ("", ""), before every row: ids are never empty. A row-value comparison,
        // so that the index seeks to the cursor instead of reading the directory from its start.
        let (name, id) = after.unwrap_or_default();
        self.with(move |c| {
            c.prepare_cached(CHILDREN)?.query_map(params![dir, name, id, limit as i64], entry)?.collect()
        })
        .await
    }

    pub async fn count_children(&self, dir: &str) -> Result<u64, FilesError> {
        let dir = dir.to_owned();
        self.with(move |c| {
            c.prepare_cached("SELECT COUNT(*) FROM nodes WHERE dir_id = ?1")?
                .query_row(params![dir], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
        })
        .await
    }

    /// The node and its ancestors, the node first and the farthest last. The chain ends at a
    /// node without parent (the root, for a node in the tree), at a missing parent, or after
    /// [`MAX_DEPTH`] steps (a cycle).
    pub async fn ancestry(&self, id: &str) -> Result<Vec<Entry>, FilesError> {
        let id = id.to_owned();
        self.with(move |c| {
            c.prepare_cached(
                "WITH RECURSIVE up(id, depth) AS (
                    SELECT ?1, 0
                    UNION ALL
                    SELECT n.dir_id, up.depth + 1 FROM up JOIN nodes n ON n.id = up.id
                    WHERE n.dir_id IS NOT NULL AND up.depth < ?2
                 )
                 SELECT n.id, n.dir_id, n.name, n.kind, n.size, n.vfs_id, n.trashed
                 FROM up JOIN nodes n ON n.id = up.id ORDER BY up.depth",
            )?
            .query_map(params![id, MAX_DEPTH], entry)?
            .collect()
        })
        .await
    }

    /// Nodes under `dir` (not `dir` itself), the deepest first, at most `limit`: removing them
    /// in that order never leaves a node whose parent is gone, so a caller working in batches
    /// reaches every one.
    pub async fn descendants(&self, dir: &str, limit: usize) -> Result<Vec<Entry>, FilesError> {
        let dir = dir.to_owned();
        self.with(move |c| {
            c.prepare_cached(DESCENDANTS)?.query_map(params![dir, MAX_DEPTH, limit as i64], entry)?.collect()
        })
        .await
    }

    /// How many levels of nodes there are under `dir` (0 for none), counted up to
    /// `MAX_DEPTH + 1`: a subtree deeper than that reads as `MAX_DEPTH + 1`.
    pub async fn height(&self, dir: &str) -> Result<i64, FilesError> {
        let dir = dir.to_owned();
        self.with(move |c| {
            c.prepare_cached(
                "WITH RECURSIVE down(id, depth) AS (
                    SELECT id, 1 FROM nodes WHERE dir_id = ?1
                    UNION ALL
                    SELECT n.id, down.depth + 1 FROM down JOIN nodes n ON n.dir_id = down.id WHERE down.depth <= ?2
                 )
                 SELECT COALESCE(MAX(depth), 0) FROM down",
            )?
            .query_row(params![dir, MAX_DEPTH], |r| r.get(0))
        })
        .await
    }

    /// Ids of the nodes under `dir` (not `dir` itself), the shallowest first: each one comes
    /// after its parent, so a caller going through them in order sees a parent settled before
    /// what it holds (the cascade of a move, see `Files::cascade`).
    pub async fn subtree(&self, dir: &str) -> Result<Vec<String>, FilesError> {
        let dir = dir.to_owned();
        self.with(move |c| {
            c.prepare_cached(
                "WITH RECURSIVE down(id, depth) AS (
                    SELECT id, 1 FROM nodes WHERE dir_id = ?1
                    UNION ALL
                    SELECT n.id, down.depth + 1 FROM down JOIN nodes n ON n.dir_id = down.id WHERE down.depth < ?2
                 )
                 SELECT id FROM down ORDER BY depth, id",
            )?
            .query_map(params![dir, MAX_DEPTH], |r| r.get(0))?
            .collect()
        })
        .await
    }

    /// Every file's current version and size: (vfs_id, size).
    pub async fn file_versions(&self) -> Result<Vec<(String, u64)>, FilesError> {
        self.with(|c| {
            c.prepare_cached("SELECT vfs_id, size FROM nodes WHERE kind = 1 AND vfs_id IS NOT NULL")?
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?
                .collect()
        })
        .await
    }

    /// Whether some file's current version is `vfs_id`.
    pub async fn references(&self, vfs_id: &str) -> Result<bool, FilesError> {
        let vfs_id = vfs_id.to_owned();
        self.with(move |c| {
            c.prepare_cached("SELECT 1 FROM nodes WHERE vfs_id = ?1 LIMIT 1")?
                .query_row(params![vfs_id], |_| Ok(()))
                .optional()
                .map(|o| o.is_some())
        })
        .await
    }
}

fn meta(c: &Connection, key: &str) -> rusqlite::Result<u64> {
    c.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row(params![key], |r| r.get::<_, i64>(0))
        .optional()
        .map(|v| v.unwrap_or(0).max(0) as u64)
}

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        id: r.get(0)?,
        dir_id: r.get(1)?,
        name: r.get(2)?,
        kind: if r.get::<_, i64>(3)? == Kind::File as i64 { Kind::File } else { Kind::Directory },
        size: r.get::<_, i64>(4)?.max(0) as u64,
        vfs_id: r.get(5)?,
        trashed: r.get(6)?,
    })
}

/// The path of a node from its ancestry (node first): `/a/b`, or `None` when the chain does
/// not end at the root.
pub fn path_of(ancestry: &[Entry]) -> Option<String> {
    let top = ancestry.last()?;
    if top.id != ROOT_ID {
        return None;
    }
    let mut path = String::new();
    for e in ancestry.iter().rev().skip(1) {
        path.push('/');
        path.push_str(&e.name);
    }
    if path.is_empty() {
        path.push('/');
    }
    Some(path)
}

/// Whether a node is in the trash (the trash itself not included).
pub fn in_trash(ancestry: &[Entry]) -> bool {
    ancestry.iter().skip(1).any(|e| e.id == TRASH_ID)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_index_made_before_name_keys_is_dropped_and_rebuilt_from_the_feed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE nodes (id TEXT PRIMARY KEY, dir_id TEXT, name TEXT NOT NULL, kind INTEGER NOT NULL,
                   size INTEGER NOT NULL, vfs_id TEXT, trashed INTEGER NOT NULL) WITHOUT ROWID;
                 CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
                 INSERT INTO nodes VALUES ('f', 'io.cozy.files.root-dir', 'cafe\u{301}', 1, 3, NULL, 0);
                 INSERT INTO meta VALUES ('seq', 42);",
            )
            .unwrap();
        }
        let index = Index::open(&path).unwrap();
        assert_eq!(index.seq().await.unwrap(), 0, "caught up again from the start of the feed");
        assert_eq!(index.get("f").await.unwrap(), None);
        // Reopening a current index keeps it.
        index.with(|c| c.execute("INSERT INTO meta (key, value) VALUES ('seq', 7)", []).map(|_| ())).await.unwrap();
        drop(index);
        assert_eq!(Index::open(&path).unwrap().seq().await.unwrap(), 7);
    }

    /// A name check reads the rows of that name, not every child of the directory: the plan
    /// uses `nodes_by_name` for both the lookup and the order (an index of
    /// `(dir_id, name_key)` alone made SQLite walk the directory by `nodes_by_parent`).
    #[tokio::test]
    async fn a_name_check_reads_only_the_rows_of_that_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        {
            // An index of the earlier schema gets the new index when opened.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA).unwrap();
            c.execute_batch("DROP INDEX nodes_by_name; CREATE INDEX nodes_by_name_key ON nodes (dir_id, name_key);")
                .unwrap();
        }
        let index = Index::open(&path).unwrap();
        let text = |s: &str| rusqlite::types::Value::Text(s.into());
        let plan = plan_of(&index, CHILD_NAMED, vec![text("d"), text("a"), text("")]).await;
        let indexes: Vec<String> = index
            .with(|c| {
                c.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'nodes' ORDER BY name")?
                    .query_map([], |r| r.get(0))?
                    .collect()
            })
            .await
            .unwrap();
        assert!(plan.contains("nodes_by_name (dir_id=? AND name_key=?)") && !plan.contains("TEMP B-TREE"), "{plan}");
        assert!(indexes.contains(&"nodes_by_name".to_string()) && !indexes.contains(&"nodes_by_name_key".to_string()));
        // Same answers: the first by (name, id) of the names with that key, `except` left out.
        index
            .with(|c| {
                let mut insert = c.prepare(
                    "INSERT INTO nodes (id, dir_id, name, kind, size, vfs_id, trashed, name_key)
                     VALUES (?1, 'd', ?2, 1, 0, NULL, 0, ?3)",
                )?;
                for i in 0..1000 {
                    let name = format!("n{i}");
                    insert.execute(params![format!("id{i}"), name, model::name_key(&name)])?;
                }
                insert.execute(params!["z", "caf\u{e9}", model::name_key("caf\u{e9}")])?;
                insert.execute(params!["y", "cafe\u{301}", model::name_key("cafe\u{301}")])?;
                Ok(())
            })
            .await
            .unwrap();
        let found = |name: &'static str, except: Option<&'static str>| {
            let index = &index;
            async move { index.child_named("d", name, except).await.unwrap().map(|e| e.id) }
        };
        assert_eq!(found("n500", None).await.as_deref(), Some("id500"));
        assert_eq!(found("n500", Some("id500")).await, None);
        // `e` + U+0301 sorts before `é` byte for byte: either spelling finds it first.
        assert_eq!(found("caf\u{e9}", None).await.as_deref(), Some("y"));
        assert_eq!(found("caf\u{e9}", Some("y")).await.as_deref(), Some("z"));
        assert_eq!(found("nope", None).await, None);
    }

    /// The plan of a statement, its steps joined by "; ".
    async fn plan_of(index: &Index, sql: &'static str, params: Vec<rusqlite::types::Value>) -> String {
        index
            .with(move |c| {
                let steps: Vec<String> = c
                    .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?
                    .query_map(rusqlite::params_from_iter(params), |r| r.get(3))?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(steps.join("; "))
            })
            .await
            .unwrap()
    }

    /// A page of children seeks to its cursor, and a batch of descendants reads the subtree
    /// and then each node by its key: neither reads more of the index the bigger it gets.
    #[tokio::test]
    async fn pages_of_children_and_descendants_read_only_their_rows() {
        use rusqlite::types::Value::{Integer, Text};
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.sqlite")).unwrap();
        let children =
            plan_of(&index, CHILDREN, vec![Text("d".into()), Text("a".into()), Text("b".into()), Integer(9)]).await;
        assert!(children.contains("(dir_id=? AND (name,id)>(?,?))") && !children.contains("TEMP B-TREE"), "{children}");
        let descendants = plan_of(&index, DESCENDANTS, vec![Text("d".into()), Integer(9), Integer(9)]).await;
        assert!(descendants.contains("SEARCH n USING PRIMARY KEY (id=?)"), "{descendants}");
        assert!(!descendants.contains("SCAN n"), "{descendants}");
        // Same answers: 1,000 children in pages of 64, then a two-level subtree deepest first.
        index
            .with(|c| {
                let mut insert = c.prepare(
                    "INSERT INTO nodes (id, dir_id, name, kind, size, vfs_id, trashed, name_key)
                     VALUES (?1, ?2, ?3, 1, 0, NULL, 0, ?3)",
                )?;
                for i in 0..1000 {
                    // Two children share each name: the id orders them.
                    insert.execute(params![format!("id{i:04}"), "d", format!("n{:03}", i / 2)])?;
                }
                insert.execute(params!["sub", "id0007", "x"])?;
                insert.execute(params!["subsub", "sub", "y"])?;
                Ok(())
            })
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = index.children("d", after.clone(), 64).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some((last.name.clone(), last.id.clone()));
            seen.extend(page.into_iter().map(|e| e.id));
        }
        assert_eq!(seen, (0..1000).map(|i| format!("id{i:04}")).collect::<Vec<_>>());
        let under: Vec<String> = index.descendants("id0007", 10).await.unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(under, ["subsub", "sub"]);
        assert_eq!(index.descendants("d", 3).await.unwrap().first().map(|e| e.id.as_str()), Some("subsub"));
        // Many nodes at once, in the order asked, an unknown id answered None in its place.
        let ids = ["sub", "nope", "id0999", "sub"].map(String::from);
        let got: Vec<Option<(String, String)>> =
            index.get_many(&ids).await.unwrap().into_iter().map(|e| e.map(|e| (e.id, e.name))).collect();
        let want = [Some(("sub", "x")), None, Some(("id0999", "n499")), Some(("sub", "x"))]
            .map(|e| e.map(|(i, n)| (i.to_owned(), n.to_owned())));
        assert_eq!(got, want);
    }
}
