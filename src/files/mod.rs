//! `io.cozy.files` on one instance: a tree of directories and files with Cozy's well-known root
//! and trash, unique names per directory, a quota, and content kept apart in a
//! [`ContentStore`](content::ContentStore) (the local filesystem or S3).
//!
//! # Where things live, and why
//!
//! * **Metadata** is ordinary documents of `io.cozy.files` in the instance's store (SQLite or
//!   CouchDB), with revision trees like every document, so the replicator can carry them
//!   between instances (`model` lists the members).
//! * **The tree index** (`index`) is a per-instance SQLite file derived from the store's
//!   `io.cozy.files` changes feed: children by name, ancestors, bytes used, referenced content.
//!   It is derived rather than maintained inside each backend's write path because the same
//!   code then serves both backends, and every way a document can arrive (`/files`, a peer
//!   through `Store::apply_received`, an import, a PouchDB client if `/data` allowed it) is
//!   covered by construction: all of them go through the feed. Crash consistency: the index
//!   applies a batch of feed rows and the sequence they end at in one SQLite transaction, so
//!   it is always the exact image of the store at some sequence; after a crash it replays from
//!   there. Every `/files` call catches up before it reads (a read sees every write made
//!   before it on this instance), and on the CouchDB backend every hearth process keeps its
//!   own index, fed from the same numbered feed.
//! * **Content** is immutable objects under fresh keys (`files/<v[0..2]>/<v>` for version id
//!   `v`, a random 128-bit hex id). A file document names its version in `internal_vfs_id`.
//!
//! # Writes
//!
//! Writes that check the tree (unique names, moves, trash) are serialised per instance by one
//! lock held from the check to the document write, after catching up the index. Within one
//! hearth process this makes the checks exact. What the lock cannot order: documents received
//! from peers (the next step, sharing files, resolves their name clashes as Cozy does, by
//! renaming) and, on CouchDB, writes through another hearth process serving the same instance
//! at the same moment (the index tolerates two children with one name: listings show both, and
//! a later write through `/files` still refuses a third).
//!
//! An upload streams the request body into a new content object (no lock held), computing its
//! MD5 and size on the way and stopping at the quota (413). Then: the object is committed
//! (fsync of the file and its directory on the filesystem, a completed upload on S3); the MD5
//! is checked against `Content-MD5` (412) and the size against `Content-Length`; under the
//! lock, the checks are made again and the document is written, pointing at the new version:
//! that write is the atomic switch. Only then is the previous version deleted. A crash or a
//! cut connection at any point leaves the old document, hence the old content, in place; what
//! it may leave behind is an unreferenced object or temporary file, which the sweep removes.
//!
//! # The sweep
//!
//! [`Files::sweep`] (run at startup for every instance, then every `files.sweep_secs`) deletes
//! temporary files and content objects that no file document's current version names, once
//! they are older than `files.orphan_grace_secs` and not being written by this process. On the
//! filesystem, which only this process writes, anything older than this process's opening of
//! the instance goes at once: a crash's leftovers are gone right after the restart. To
//! never delete a version about to be committed, an upload registers its version id before
//! writing and unregisters it only after the document is written and the index caught up; the
//! sweep checks that registry *before* it asks the index, so a version is either still
//! registered or already in the index when looked at. The grace period covers uploads of other
//! processes sharing an S3 bucket.

/// The content backends' conformance suite: for the tests only (the `conformance` feature, as
/// the store's), never in a release build.
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod content;
mod held;
pub mod index;
pub mod model;
pub mod received;
mod registry;
pub mod sample;
pub mod shared;
mod tree;
mod upload;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use hearth_replicator::rev::Rev;
use md5::Digest;
use serde_json::{json, Value};

pub use content::{Block, ContentBackend, ContentError, ContentKey, ContentStore, ContentWriter};
pub use held::{Held, HoldGuard, HELD_DOCTYPE};
use index::{Entry, Index};
pub use model::Kind;
use registry::ensure_dir_in;
pub use registry::{
    ensure_shared_with_me, instance_quota, run_sweeps, set_instance_quota, FilesRegistry, Swept, SHARED_WITH_ME_ID,
    SHARED_WITH_ME_NAME,
};
pub use tree::Patch;
use upload::{Reservations, Reserved, Sink, Writing};
pub use upload::{Upload, UploadSpec, UploadTarget};

use crate::store::{
    AllDocsQuery, AllDocsRow, Body, DocId, DocWrite, Doctype, GetOptions, Store, StoreError, WriteResult,
};

/// The doctype of files and directories.
pub const DOCTYPE: &str = "io.cozy.files";
/// Cozy's well-known id of the root directory.
pub const ROOT_ID: &str = "io.cozy.files.root-dir";
/// Cozy's well-known id of the trash directory.
pub const TRASH_ID: &str = "io.cozy.files.trash-dir";
/// The trash's name in the root, as in Cozy.
pub const TRASH_NAME: &str = ".cozy_trash";
/// Where an instance's own quota is kept: a `_local` document of this internal doctype.
const SETTINGS_DOCTYPE: &str = "io.hearth.files";
const QUOTA_DOC: &str = "quota";

pub fn doctype() -> Doctype {
    Doctype::parse(DOCTYPE).unwrap_or_else(|_| unreachable!("static doctype"))
}

fn settings_doctype() -> Doctype {
    Doctype::parse(SETTINGS_DOCTYPE).unwrap_or_else(|_| unreachable!("static doctype"))
}

/// Percent-encodes an id for a link (`/files/<id>`).
pub fn encode_id(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// A name already taken in the directory, or a concurrent change of the same item.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    /// `If-Match` or `Content-MD5` did not match.
    #[error("{0}")]
    Precondition(String),
    /// Over the instance's quota: nothing was written.
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("range not satisfiable")]
    BadRange,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error("files failure")]
    Internal(#[source] anyhow::Error),
}

pub type Result<T, E = FilesError> = std::result::Result<T, E>;

fn bad(reason: impl Into<String>) -> FilesError {
    FilesError::BadRequest(reason.into())
}

fn now() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Checks an RFC 3339 date given by a client (`CreatedAt`, `UpdatedAt`).
pub fn check_date(s: &str) -> Result<String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|_| s.to_owned())
        .map_err(|_| bad(format!("{s:?} is not an RFC 3339 date")))
}

/// A file or directory as read: its document (winning revision) and its place in the tree.
#[derive(Clone, Debug)]
pub struct Item {
    pub id: String,
    pub rev: Rev,
    pub body: Body,
    /// The node and its ancestors, the node first (see `Index::ancestry`).
    pub ancestry: Vec<Entry>,
}

impl Item {
    pub fn kind(&self) -> Kind {
        self.ancestry.first().map_or(Kind::File, |e| e.kind)
    }

    pub fn name(&self) -> &str {
        self.ancestry.first().map_or("", |e| e.name.as_str())
    }

    pub fn dir_id(&self) -> Option<&str> {
        self.ancestry.first().and_then(|e| e.dir_id.as_deref())
    }

    /// The path derived from the tree; `None` for a node not attached to the root.
    pub fn path(&self) -> Option<String> {
        index::path_of(&self.ancestry)
    }

    /// In the trash, itself or through a directory.
    pub fn trashed(&self) -> bool {
        index::in_trash(&self.ancestry)
    }

    pub fn size(&self) -> u64 {
        self.ancestry.first().map_or(0, |e| e.size)
    }

    pub fn mime(&self) -> String {
        self.body.get("mime").and_then(|v| v.as_str().map(str::to_owned)).unwrap_or("application/octet-stream".into())
    }

    pub fn md5sum(&self) -> Option<String> {
        self.body.get("md5sum").and_then(|v| v.as_str().map(str::to_owned))
    }

    /// The content key of the current version.
    pub fn content_key(&self) -> Option<ContentKey> {
        self.ancestry.first().and_then(|e| e.vfs_id.as_deref()).and_then(version_key)
    }

    /// Ids of the node and its ancestors (for permissions given on a directory).
    pub fn lineage(&self) -> impl Iterator<Item = &str> {
        self.ancestry.iter().map(|e| e.id.as_str())
    }

    /// The JSON:API resource (see `model::resource`).
    pub fn resource(&self) -> Box<serde_json::value::RawValue> {
        model::resource(&self.id, &self.rev.to_string(), &self.body, self.path().as_deref(), self.trashed())
    }
}

/// The tree entry of node `id` as its document describes it.
fn entry_of(id: &str, n: model::Node) -> Entry {
    Entry {
        id: id.to_owned(),
        dir_id: n.dir_id,
        name: n.name,
        kind: n.kind,
        size: n.size,
        vfs_id: n.vfs_id,
        trashed: n.trashed,
    }
}

/// The content key of version `vfs_id`.
pub fn version_key(vfs_id: &str) -> Option<ContentKey> {
    let shard = vfs_id.get(..2)?;
    ContentKey::parse(&format!("files/{shard}/{vfs_id}")).ok()
}

fn new_version() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn internal(what: &str) -> FilesError {
    FilesError::Internal(anyhow::anyhow!("{what}"))
}

/// The 413 of a file that does not fit: its size (`None` for a body of unknown length, then
/// `size` is what had arrived when it passed the quota) and the bytes that were free for it.
fn quota_exceeded(size: u64, known: bool, free: u64) -> FilesError {
    let what = if known { format!("it is {size} bytes") } else { format!("its body passed {size} bytes") };
    FilesError::QuotaExceeded(format!(
        "the file does not fit in the instance's quota: {what}, {free} bytes are free: nothing was written"
    ))
}

/// The files of one instance.
pub struct Files {
    store: Arc<dyn Store>,
    pub content: Arc<dyn ContentStore>,
    index: Index,
    /// Held from the checks of a tree write to its document write.
    writes: tokio::sync::Mutex<()>,
    writing: Arc<Mutex<HashSet<String>>>,
    /// The versions being received from sharing members past their checks (see
    /// [`Files::arriving`]).
    arriving: Arc<Mutex<HashSet<String>>>,
    reservations: Arc<Reservations>,
    /// Bytes of content being received from sharing members (see `received`), and the lock
    /// under which a reception's quota check and a commit of received content happen.
    receiving: Arc<Reservations>,
    receiving_check: tokio::sync::Mutex<()>,
    /// Held from naming a received shared root in "Shared with me"
    /// ([`Files::shared_root_name`]) until its write: see [`Files::naming_shared_roots`].
    shared_roots: tokio::sync::Mutex<()>,
    used: AtomicU64,
    default_quota: u64,
    /// When this process opened the instance's files (see [`ContentStore::exclusive`]).
    opened_at: SystemTime,
    /// Previous versions kept while a received edit's bytes are on their way (see `held`).
    holds: held::Holds,
}

impl Files {
    /// Opens an instance's files: its index (caught up with the store) and content, creating
    /// the root and the trash on first use.
    pub async fn open(
        store: Arc<dyn Store>,
        content: Arc<dyn ContentStore>,
        index_path: &std::path::Path,
        default_quota: u64,
    ) -> Result<Files> {
        // On the blocking pool: the first open after an upgrade may build an index of the
        // whole tree (seconds, for a big one), which must not hold a runtime worker.
        let path = index_path.to_owned();
        let index = tokio::task::spawn_blocking(move || Index::open(&path))
            .await
            .map_err(|e| FilesError::Internal(e.into()))?
            .map_err(FilesError::Internal)?;
        let files = Files {
            store,
            content,
            index,
            writes: tokio::sync::Mutex::new(()),
            writing: Default::default(),
            arriving: Default::default(),
            reservations: Default::default(),
            receiving: Default::default(),
            receiving_check: tokio::sync::Mutex::new(()),
            shared_roots: tokio::sync::Mutex::new(()),
            used: AtomicU64::new(0),
            default_quota,
            opened_at: SystemTime::now(),
            holds: Default::default(),
        };
        files.load_holds().await?;
        // A store emptied or replaced under the index (an instance removed and made again):
        // start over.
        let info = files.store.db_info(&doctype()).await?;
        if info.update_seq < files.index.seq().await? {
            files.index.reset().await?;
        }
        files.ensure_dir(ROOT_ID, json!({"type": "directory", "name": "", "path": "/"})).await?;
        files
            .ensure_dir(
                TRASH_ID,
                json!({"type": "directory", "name": TRASH_NAME, "dir_id": ROOT_ID, "path": format!("/{TRASH_NAME}")}),
            )
            .await?;
        files.sync().await?;
        Ok(files)
    }

    async fn ensure_dir(&self, id: &str, fields: Value) -> Result<()> {
        ensure_dir_in(self.store.as_ref(), id, fields).await
    }
    /// Catches the index up with the store.
    pub async fn sync(&self) -> Result<()> {
        self.index.catch_up(self.store.as_ref(), &doctype(), &self.used).await?;
        Ok(())
    }

    /// This instance's quota in bytes: its own (`hearth instances quota`), else the default.
    pub async fn quota(&self) -> Result<u64> {
        Ok(instance_quota(self.store.as_ref()).await?.unwrap_or(self.default_quota))
    }

    /// Bytes used by files (trashed ones included).
    pub async fn used(&self) -> Result<u64> {
        self.sync().await?;
        Ok(self.used.load(Ordering::SeqCst))
    }

    /// The item `id`: its winning document, and its place in the tree from the index. The
    /// node's own fields (size, content version, name, parent) are the document's: a revision
    /// received after the index caught up (a replicated edit) must never pair its `md5sum` with
    /// the previous version's content. When the two differ the index catches up and the read is
    /// tried again, so that the ancestors match too; after that the document's fields win.
    async fn load(&self, id: &str) -> Result<Item> {
        let missing = || FilesError::NotFound(format!("no file or directory {id}"));
        let doc_id = DocId::parse(id).map_err(|_| missing())?;
        let mut attempts = 0;
        loop {
            let mut ancestry = self.index.ancestry(id).await?;
            if ancestry.is_empty() {
                return Err(missing());
            }
            let view = match self.store.get(&doctype(), &doc_id, GetOptions::default()).await {
                Ok(v) => v,
                Err(StoreError::NotFound | StoreError::Deleted) => return Err(missing()),
                Err(e) => return Err(e.into()),
            };
            let Some(node) = model::node_of(id, &view.doc.body) else { return Err(missing()) };
            let fresh = entry_of(id, node);
            if fresh != ancestry[0] {
                attempts += 1;
                if attempts < 3 {
                    self.sync().await?;
                    continue;
                }
                ancestry[0] = fresh;
            }
            return Ok(Item { id: id.to_owned(), rev: view.doc.rev, body: view.doc.body, ancestry });
        }
    }

    /// A file or directory by id (after catching up).
    pub async fn get(&self, id: &str) -> Result<Item> {
        self.sync().await?;
        self.load(id).await
    }

    /// A file or directory by absolute path (`/a/b`; `..`, `.` and relative paths refused).
    pub async fn by_path(&self, path: &str) -> Result<Item> {
        let names = model::split_path(path).map_err(bad)?;
        self.sync().await?;
        let mut at = ROOT_ID.to_owned();
        for name in names {
            at = match self.index.child_named(&at, name, None).await? {
                Some(e) => e.id,
                None => return Err(FilesError::NotFound(format!("nothing at {path}"))),
            };
        }
        let item = self.load(&at).await?;
        // A trailing slash names a directory: a file is not one (404, as a file system answers).
        if path.len() > 1 && path.ends_with('/') && item.kind() == Kind::File {
            return Err(FilesError::NotFound(format!("nothing at {path}: a file is not a directory")));
        }
        Ok(item)
    }

    /// The winning revision and body of each live document of `keys` (one read for all), by id;
    /// deleted and unknown ones are left out.
    async fn live_docs(&self, keys: Vec<DocId>) -> Result<HashMap<String, (Rev, Body)>> {
        let rows = self.live_rows(keys, true).await?;
        Ok(rows.into_iter().filter_map(|(id, rev, body)| Some((id.as_str().to_owned(), (rev, body?)))).collect())
    }

    /// The id and winning revision of each live document of `keys`, with its body when
    /// `include_docs` (one read for all, in the order of `keys`); deleted and unknown ones are
    /// left out.
    async fn live_rows(&self, keys: Vec<DocId>, include_docs: bool) -> Result<Vec<(DocId, Rev, Option<Body>)>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let q = AllDocsQuery { keys: Some(keys), include_docs, ..Default::default() };
        Ok(self
            .store
            .all_docs(&doctype(), &q)
            .await?
            .rows
            .into_iter()
            .filter_map(|row| match row {
                AllDocsRow::Doc { id, rev, deleted: false, doc } => Some((id, rev, doc.map(|d| d.body))),
                _ => None,
            })
            .collect())
    }

    /// A page of a directory's children, ordered by name, after `cursor`; the cursor of the
    /// next page when there may be one; the total number of children.
    pub async fn children(
        &self,
        dir: &Item,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Item>, Option<String>, u64)> {
        let after = cursor.map(decode_cursor).transpose()?;
        let entries = self.index.children(&dir.id, after, limit).await?;
        let next = (entries.len() >= limit).then(|| entries.last().map(|e| encode_cursor(&e.name, &e.id))).flatten();
        let count = self.index.count_children(&dir.id).await?;
        let mut items = Vec::with_capacity(entries.len());
        let keys: Vec<DocId> = entries.iter().filter_map(|e| DocId::parse(&e.id).ok()).collect();
        let docs = self.live_docs(keys).await?;
        for e in entries {
            if let Some((rev, body)) = docs.get(&e.id) {
                // The node's own fields from the revision listed (see `load`).
                let Some(node) = model::node_of(&e.id, body) else { continue };
                let mut ancestry = vec![entry_of(&e.id, node)];
                ancestry.extend(dir.ancestry.iter().cloned());
                items.push(Item { id: e.id.clone(), rev: rev.clone(), body: body.clone(), ancestry });
            }
        }
        Ok((items, next, count))
    }

    /// Checks that `dir_id` is a directory where items may be put (not in the trash).
    async fn writable_dir(&self, dir_id: &str) -> Result<Vec<Entry>> {
        let ancestry = self.index.ancestry(dir_id).await?;
        match ancestry.first() {
            None => Err(FilesError::NotFound(format!("no directory {dir_id}"))),
            Some(e) if e.kind != Kind::Directory => Err(bad(format!("{dir_id} is a file, not a directory"))),
            Some(_) if dir_id == TRASH_ID || index::in_trash(&ancestry) => {
                Err(bad("the trash only takes items through DELETE /files/:id"))
            }
            Some(_) if index::path_of(&ancestry).is_none() => {
                Err(FilesError::Conflict(format!("directory {dir_id} is not attached to the root")))
            }
            Some(_) => Ok(ancestry),
        }
    }

    async fn check_free(&self, dir_id: &str, name: &str, except: Option<&str>) -> Result<()> {
        if self.index.child_named(dir_id, name, except).await?.is_some() {
            return Err(FilesError::Conflict(format!("{name:?} already exists in this directory")));
        }
        Ok(())
    }

    /// Writes one document interactively on top of `parent`; 409 on a concurrent change.
    async fn write_doc(&self, id: &str, parent: Option<&Rev>, deleted: bool, body: Body) -> Result<Rev> {
        let id = DocId::parse(id).map_err(bad)?;
        let w = DocWrite { id, rev: parent.cloned(), revisions: None, deleted, body };
        match self.store.bulk_docs(&doctype(), vec![w], true).await?.pop() {
            Some(WriteResult::Ok { rev, .. }) => Ok(rev),
            Some(WriteResult::Conflict { .. }) => {
                Err(FilesError::Conflict("the item changed meanwhile: read it again and retry".into()))
            }
            Some(WriteResult::Rejected { reason, .. }) => Err(bad(reason)),
            None => Err(internal("the store returned no result")),
        }
    }

    /// `POST /files/:dir-id?Type=directory&Name=…`.
    pub async fn create_dir(
        &self,
        dir_id: &str,
        name: &str,
        tags: Option<Vec<String>>,
        created_at: Option<String>,
    ) -> Result<Item> {
        model::check_name(name).map_err(bad)?;
        let _lock = self.writes.lock().await;
        self.sync().await?;
        let parent = self.writable_dir(dir_id).await?;
        self.check_free(dir_id, name, None).await?;
        let path = child_path(index::path_of(&parent).as_deref().unwrap_or("/"), name);
        let id = DocId::generate();
        let body = directory_body(name, dir_id, &path, created_at, tags.unwrap_or_default());
        self.write_doc(id.as_str(), None, false, body).await?;
        self.sync().await?;
        self.load(id.as_str()).await
    }
}

/// A new directory's document: `name` in `dir_id` at `path`, created at `created_at` (now when
/// `None`), updated now, with `tags`.
fn directory_body(name: &str, dir_id: &str, path: &str, created_at: Option<String>, tags: Vec<String>) -> Body {
    let at = now();
    let mut body = Body::empty();
    model::set(&mut body, "type", json!("directory"));
    model::set(&mut body, "name", json!(name));
    model::set(&mut body, "dir_id", json!(dir_id));
    model::set(&mut body, "path", json!(path));
    model::set(&mut body, "created_at", json!(created_at.unwrap_or_else(|| at.clone())));
    model::set(&mut body, "updated_at", json!(at));
    model::set(&mut body, "tags", json!(tags));
    body
}

fn check_mutable(item: &Item) -> Result<()> {
    if item.id == ROOT_ID || item.id == TRASH_ID {
        return Err(FilesError::Forbidden("the root and the trash cannot be changed".into()));
    }
    Ok(())
}

fn check_if_match(item: &Item, if_match: Option<&Rev>) -> Result<()> {
    match if_match {
        Some(r) if r != &item.rev => {
            Err(FilesError::Precondition(format!("If-Match names revision {r}, the item is at {}", item.rev)))
        }
        _ => Ok(()),
    }
}

fn check_replaceable(item: &Item, if_match: Option<&Rev>) -> Result<()> {
    if item.kind() != Kind::File {
        return Err(bad("only a file's content can be replaced"));
    }
    if item.trashed() {
        return Err(bad("files in the trash cannot be changed: restore them first"));
    }
    check_if_match(item, if_match)
}

fn child_path(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

fn encode_cursor(name: &str, id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!([name, id]).to_string())
}

fn decode_cursor(c: &str) -> Result<(String, String)> {
    let invalid = || bad("invalid page[cursor]");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(c).map_err(|_| invalid())?;
    serde_json::from_slice::<(String, String)>(&bytes).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::json;
    use crate::store::sqlite::SqliteStore;

    fn file_body(size: &str, md5: &str, vfs_id: &str) -> serde_json::Map<String, Value> {
        json!({"type": "file", "name": "a.bin", "dir_id": ROOT_ID, "size": size, "md5sum": md5,
               "internal_vfs_id": vfs_id})
        .as_object()
        .cloned()
        .expect("object")
    }

    /// A revision written after the index caught up (as a replicated edit is) must not pair its
    /// `md5sum` with the previous version's size and content: a download would serve the old
    /// bytes under the new ETag.
    #[tokio::test]
    async fn an_item_read_while_the_index_lags_describes_one_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db.sqlite"), 1000).expect("store"));
        let content = Arc::new(content::FsContent::open(&dir.path().join("content"), true).expect("content"));
        let files = Files::open(store.clone(), content, &dir.path().join("index.sqlite"), 1 << 30).await.expect("open");
        let id = DocId::parse("f1").expect("id");
        let rev = json::put(store.as_ref(), &doctype(), &id, None, file_body("3", "old", "aaa111")).await.expect("v1");
        files.sync().await.expect("sync");
        json::put(store.as_ref(), &doctype(), &id, Some(&rev), file_body("5000", "new", "bbb222")).await.expect("v2");
        // The index has not caught up with the second revision.
        let item = files.load("f1").await.expect("load");
        assert_eq!(item.md5sum().as_deref(), Some("new"));
        assert_eq!(item.size(), 5000);
        assert_eq!(item.content_key(), version_key("bbb222"));
    }
}
