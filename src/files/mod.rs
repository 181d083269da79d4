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

pub mod conformance;
pub mod content;
pub mod index;
pub mod model;
pub mod received;
pub mod shared;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use hearth_replicator::rev::Rev;
use md5::Digest;
use serde_json::{json, Value};

pub use content::{ContentBackend, ContentError, ContentKey, ContentStore, ContentWriter};
use index::{Entry, Index};
pub use model::Kind;

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

/// What an upload makes or replaces.
#[derive(Clone, Debug)]
pub enum UploadTarget {
    New {
        dir_id: String,
        name: String,
    },
    /// New content for an existing file; `if_match`: the revision it must still be at.
    Replace {
        id: String,
        if_match: Option<Rev>,
    },
}

/// The parameters of an upload besides its target.
#[derive(Clone, Debug, Default)]
pub struct UploadSpec {
    /// `Content-Length`, when declared.
    pub declared_size: Option<u64>,
    /// `Content-MD5`, decoded.
    pub declared_md5: Option<[u8; 16]>,
    pub content_type: Option<String>,
    pub tags: Option<Vec<String>>,
    pub executable: Option<bool>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

/// Changes of `PATCH /files/:id`.
#[derive(Clone, Debug, Default)]
pub struct Patch {
    /// Cozy's free-form `metadata` object, as written (replaces the former one whole).
    pub metadata: Option<Box<serde_json::value::RawValue>>,
    pub name: Option<String>,
    pub dir_id: Option<String>,
    pub tags: Option<Vec<String>>,
    pub executable: Option<bool>,
    pub updated_at: Option<String>,
    pub if_match: Option<Rev>,
}

/// Bytes reserved by uploads in progress, so concurrent uploads cannot together pass the quota.
#[derive(Default)]
struct Reservations {
    bytes: Mutex<u64>,
}

/// Releases its bytes when dropped.
struct Reserved {
    pool: Arc<Reservations>,
    bytes: u64,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if let Ok(mut b) = self.pool.bytes.lock() {
            *b = b.saturating_sub(self.bytes);
        }
    }
}

/// A content version being written by this process (see "The sweep").
struct Writing {
    set: Arc<Mutex<HashSet<String>>>,
    vfs_id: String,
}

impl Drop for Writing {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.lock() {
            s.remove(&self.vfs_id);
        }
    }
}

/// An upload in progress: feed it the body with [`Upload::write`], then [`Files::finish_upload`].
/// Dropping it discards what was written.
pub struct Upload {
    target: UploadTarget,
    spec: UploadSpec,
    vfs_id: String,
    writer: Box<dyn ContentWriter>,
    md5: Hasher,
    size: u64,
    /// Bytes this upload may still take: the declared size, or what the quota leaves.
    reserved: Reserved,
    quota_room: u64,
    /// Body chunks (as small as the socket's reads) gathered into blocks of
    /// [`Upload::BLOCK`], which go to the hasher and the content writer: few hand-overs, large
    /// writes.
    block: bytes::BytesMut,
    _writing: Writing,
}

impl Upload {
    const BLOCK: usize = 1024 * 1024;

    /// Hands the gathered block to the hasher and the writer.
    async fn flush_block(&mut self) -> Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let block = self.block.split().freeze();
        self.hand_over(block).await
    }

    async fn hand_over(&mut self, block: Bytes) -> Result<()> {
        self.md5.update(block.clone()).await?;
        self.writer.write(block).await?;
        Ok(())
    }

    /// Writes one chunk of the body: 413 (`QuotaExceeded`) as soon as the body goes past the
    /// quota, 400 past its declared `Content-Length`.
    pub async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let new_size = self.size + chunk.len() as u64;
        if let Some(declared) = self.spec.declared_size {
            if new_size > declared {
                return Err(bad("the body is longer than its Content-Length"));
            }
        } else if new_size > self.reserved.bytes {
            // A body of unknown length reserves quota as it comes.
            let more = new_size - self.reserved.bytes;
            let mut total = self.reserved.pool.bytes.lock().map_err(|_| internal("reservations poisoned"))?;
            let others = total.saturating_sub(self.reserved.bytes);
            if others.saturating_add(new_size) > self.quota_room {
                return Err(quota_exceeded());
            }
            *total += more;
            self.reserved.bytes += more;
        }
        if self.block.is_empty() && chunk.len() >= Self::BLOCK {
            self.size = new_size;
            return self.hand_over(chunk).await;
        }
        if self.block.is_empty() {
            // A block, or what is left of a declared body when that is less.
            let left = self.spec.declared_size.map_or(u64::MAX, |d| d - self.size);
            self.block.reserve(left.min(Self::BLOCK as u64) as usize);
        }
        self.size = new_size;
        self.block.extend_from_slice(&chunk);
        if self.block.len() >= Self::BLOCK {
            self.flush_block().await?;
        }
        Ok(())
    }
}

/// The MD5 of an upload, computed on a thread of its own while the chunks are written, so
/// hashing and writing overlap (MD5 runs at about the speed of a disk: one after the other,
/// they would halve an upload's throughput). At most [`Hasher::QUEUE`] blocks (of
/// [`Upload::BLOCK`]) wait for it.
struct Hasher {
    chunks: Option<tokio::sync::mpsc::Sender<Bytes>>,
    digest: tokio::task::JoinHandle<[u8; 16]>,
}

impl Hasher {
    const QUEUE: usize = 4;

    fn start() -> Hasher {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(Self::QUEUE);
        let digest = tokio::task::spawn_blocking(move || {
            let mut md5 = md5::Md5::new();
            while let Some(chunk) = rx.blocking_recv() {
                md5.update(&chunk);
            }
            md5.finalize().into()
        });
        Hasher { chunks: Some(tx), digest }
    }

    async fn update(&mut self, chunk: Bytes) -> Result<()> {
        let tx = self.chunks.as_ref().ok_or_else(|| internal("hasher closed"))?;
        tx.send(chunk).await.map_err(|_| internal("the hashing thread stopped"))
    }

    async fn finish(mut self) -> Result<[u8; 16]> {
        self.chunks = None;
        (&mut self.digest).await.map_err(|e| FilesError::Internal(e.into()))
    }
}

fn internal(what: &str) -> FilesError {
    FilesError::Internal(anyhow::anyhow!("{what}"))
}

fn quota_exceeded() -> FilesError {
    FilesError::QuotaExceeded("the instance's quota is used up: nothing was written".into())
}

/// What a sweep found and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub objects: u64,
    pub removed: u64,
    pub temporary: u64,
}

/// The files of one instance.
pub struct Files {
    store: Arc<dyn Store>,
    pub content: Arc<dyn ContentStore>,
    index: Index,
    /// Held from the checks of a tree write to its document write.
    writes: tokio::sync::Mutex<()>,
    writing: Arc<Mutex<HashSet<String>>>,
    reservations: Arc<Reservations>,
    /// Bytes of content being received from sharing members (see `received`), and the lock
    /// under which a reception's quota check and a commit of received content happen.
    receiving: Arc<Reservations>,
    receiving_check: tokio::sync::Mutex<()>,
    used: AtomicU64,
    default_quota: u64,
    /// When this process opened the instance's files (see [`ContentStore::exclusive`]).
    opened_at: SystemTime,
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
        let index = Index::open(index_path).map_err(FilesError::Internal)?;
        let files = Files {
            store,
            content,
            index,
            writes: tokio::sync::Mutex::new(()),
            writing: Default::default(),
            reservations: Default::default(),
            receiving: Default::default(),
            receiving_check: tokio::sync::Mutex::new(()),
            used: AtomicU64::new(0),
            default_quota,
            opened_at: SystemTime::now(),
        };
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
        self.index.catch_up(self.store.as_ref(), &doctype()).await?;
        self.used.store(self.index.used_bytes().await?, Ordering::SeqCst);
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
        let q = AllDocsQuery { keys: Some(keys), include_docs: true, ..Default::default() };
        let docs: HashMap<String, (Rev, Body)> = self
            .store
            .all_docs(&doctype(), &q)
            .await?
            .rows
            .into_iter()
            .filter_map(|row| match row {
                AllDocsRow::Doc { id, rev, deleted: false, doc: Some(d) } => {
                    Some((id.as_str().to_owned(), (rev, d.body)))
                }
                _ => None,
            })
            .collect();
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
        let at = now();
        let mut body = Body::empty();
        model::set(&mut body, "type", json!("directory"));
        model::set(&mut body, "name", json!(name));
        model::set(&mut body, "dir_id", json!(dir_id));
        model::set(&mut body, "path", json!(path));
        model::set(&mut body, "created_at", json!(created_at.unwrap_or_else(|| at.clone())));
        model::set(&mut body, "updated_at", json!(at));
        model::set(&mut body, "tags", json!(tags.unwrap_or_default()));
        self.write_doc(id.as_str(), None, false, body).await?;
        self.sync().await?;
        self.load(id.as_str()).await
    }

    /// Starts an upload: checks the target and the quota (413 when a declared size does not fit),
    /// then opens a new content version.
    pub async fn begin_upload(&self, target: UploadTarget, spec: UploadSpec) -> Result<Upload> {
        self.sync().await?;
        let credit = match &target {
            UploadTarget::New { dir_id, name } => {
                model::check_name(name).map_err(bad)?;
                self.writable_dir(dir_id).await?;
                self.check_free(dir_id, name, None).await?;
                0
            }
            UploadTarget::Replace { id, if_match } => {
                let item = self.load(id).await?;
                check_replaceable(&item, if_match.as_ref())?;
                item.size()
            }
        };
        let quota = self.quota().await?;
        let room = quota.saturating_add(credit).saturating_sub(self.used.load(Ordering::SeqCst));
        let reserve = spec.declared_size.unwrap_or(0);
        let reserved = {
            let mut total = self.reservations.bytes.lock().map_err(|_| internal("reservations poisoned"))?;
            if reserve > room.saturating_sub(*total) {
                return Err(quota_exceeded());
            }
            *total += reserve;
            Reserved { pool: self.reservations.clone(), bytes: reserve }
        };
        let quota_room = room;
        let vfs_id = new_version();
        if let Ok(mut w) = self.writing.lock() {
            w.insert(vfs_id.clone());
        }
        let writing = Writing { set: self.writing.clone(), vfs_id: vfs_id.clone() };
        let key = version_key(&vfs_id).ok_or_else(|| internal("invalid version id"))?;
        let writer = self.content.create(&key).await?;
        Ok(Upload {
            target,
            spec,
            vfs_id,
            writer,
            md5: Hasher::start(),
            size: 0,
            reserved,
            quota_room,
            block: bytes::BytesMut::new(),
            _writing: writing,
        })
    }

    /// Ends an upload whose whole body was written: checks size and MD5, commits the content,
    /// then writes the document that points at it (the switch), and removes the old version.
    pub async fn finish_upload(&self, mut upload: Upload) -> Result<Item> {
        if let Err(e) = upload.flush_block().await {
            upload.writer.abort().await;
            return Err(e);
        }
        let Upload { target, spec, vfs_id, writer, md5, size, reserved, quota_room: _, block: _, _writing } = upload;
        let digest = match md5.finish().await {
            Ok(d) => d,
            Err(e) => {
                writer.abort().await;
                return Err(e);
            }
        };
        if let Some(declared) = spec.declared_size {
            if size != declared {
                writer.abort().await;
                return Err(bad(format!("the body has {size} bytes, Content-Length said {declared}")));
            }
        }
        if let Some(expected) = spec.declared_md5 {
            if expected != digest {
                writer.abort().await;
                return Err(FilesError::Precondition(
                    "the content does not match its Content-MD5: nothing was written".into(),
                ));
            }
        }
        writer.commit().await?;
        let key = version_key(&vfs_id).ok_or_else(|| internal("invalid version id"))?;
        let outcome = self.switch(&target, &spec, &vfs_id, size, &digest).await;
        drop(reserved);
        match outcome {
            Ok((item, old)) => {
                if let Some(old) = old.and_then(|v| version_key(&v)) {
                    if let Err(e) = self.content.delete(&old).await {
                        tracing::warn!(error = ?e, "failed to delete a replaced version; the sweep will");
                    }
                }
                Ok(item)
            }
            Err(e) => {
                if let Err(e) = self.content.delete(&key).await {
                    tracing::warn!(error = ?e, "failed to delete an unused version; the sweep will");
                }
                Err(e)
            }
        }
    }

    /// Under the lock: the checks again, then the document write. Returns the item and the
    /// version it replaced.
    async fn switch(
        &self,
        target: &UploadTarget,
        spec: &UploadSpec,
        vfs_id: &str,
        size: u64,
        digest: &[u8; 16],
    ) -> Result<(Item, Option<String>)> {
        let _lock = self.writes.lock().await;
        self.sync().await?;
        let at = now();
        let md5sum = base64::engine::general_purpose::STANDARD.encode(digest);
        let (id, parent_rev, mut body, old, name) = match target {
            UploadTarget::New { dir_id, name } => {
                self.writable_dir(dir_id).await?;
                self.check_free(dir_id, name, None).await?;
                let mut body = Body::empty();
                model::set(&mut body, "type", json!("file"));
                model::set(&mut body, "name", json!(name));
                model::set(&mut body, "dir_id", json!(dir_id));
                model::set(&mut body, "created_at", json!(spec.created_at.clone().unwrap_or_else(|| at.clone())));
                model::set(&mut body, "tags", json!(spec.tags.clone().unwrap_or_default()));
                model::set(&mut body, "trashed", json!(false));
                (DocId::generate().as_str().to_owned(), None, body, None, name.clone())
            }
            UploadTarget::Replace { id, if_match } => {
                let item = self.load(id).await?;
                check_replaceable(&item, if_match.as_ref())?;
                let old = item.ancestry.first().and_then(|e| e.vfs_id.clone());
                let mut body = item.body.clone();
                if let Some(tags) = &spec.tags {
                    model::set(&mut body, "tags", json!(tags));
                }
                (id.clone(), Some(item.rev.clone()), body, old, item.name().to_owned())
            }
        };
        let quota = self.quota().await?;
        let credit = match target {
            UploadTarget::Replace { id, .. } => self.index.get(id).await?.map_or(0, |e| e.size),
            UploadTarget::New { .. } => 0,
        };
        if self.used.load(Ordering::SeqCst).saturating_sub(credit).saturating_add(size) > quota {
            return Err(quota_exceeded());
        }
        let mime = model::mime_for(&name, spec.content_type.as_deref());
        model::set(&mut body, "updated_at", json!(spec.updated_at.clone().unwrap_or(at)));
        model::set(&mut body, "size", json!(size.to_string()));
        model::set(&mut body, "md5sum", json!(md5sum));
        model::set(&mut body, "class", json!(model::class_for(&mime)));
        model::set(&mut body, "mime", json!(mime));
        if let Some(x) = spec.executable {
            model::set(&mut body, "executable", json!(x));
        } else if parent_rev.is_none() {
            model::set(&mut body, "executable", json!(false));
        }
        model::set(&mut body, "internal_vfs_id", json!(vfs_id));
        self.write_doc(&id, parent_rev.as_ref(), false, body).await?;
        self.sync().await?;
        Ok((self.load(&id).await?, old))
    }

    /// `PATCH /files/:id`: rename, move (`dir_id`), tags, executable, updated_at.
    pub async fn patch(&self, id: &str, p: Patch) -> Result<Item> {
        if let Some(name) = &p.name {
            model::check_name(name).map_err(bad)?;
        }
        let _lock = self.writes.lock().await;
        self.sync().await?;
        let item = self.load(id).await?;
        check_mutable(&item)?;
        check_if_match(&item, p.if_match.as_ref())?;
        if item.trashed() {
            return Err(bad("items in the trash cannot be changed: restore them first"));
        }
        let name = p.name.clone().unwrap_or_else(|| item.name().to_owned());
        let dir_id = p.dir_id.clone().unwrap_or_else(|| item.dir_id().unwrap_or(ROOT_ID).to_owned());
        let mut body = item.body.clone();
        if name != item.name() || Some(dir_id.as_str()) != item.dir_id() {
            let target = self.writable_dir(&dir_id).await?;
            if target.iter().any(|e| e.id == item.id) {
                return Err(bad("a directory cannot move into itself or one of its descendants"));
            }
            self.check_free(&dir_id, &name, Some(&item.id)).await?;
            model::set(&mut body, "name", json!(name));
            model::set(&mut body, "dir_id", json!(dir_id));
            if item.kind() == Kind::Directory {
                let parent_path = index::path_of(&target).unwrap_or_else(|| "/".into());
                model::set(&mut body, "path", json!(child_path(&parent_path, &name)));
            }
        }
        if let Some(tags) = p.tags {
            model::set(&mut body, "tags", json!(tags));
        }
        if let Some(metadata) = &p.metadata {
            body.set("metadata", metadata);
        }
        if let Some(x) = p.executable {
            if item.kind() != Kind::File {
                return Err(bad("only files have executable"));
            }
            model::set(&mut body, "executable", json!(x));
        }
        model::set(&mut body, "updated_at", json!(p.updated_at.unwrap_or_else(now)));
        self.write_doc(id, Some(&item.rev), false, body).await?;
        if item.kind() == Kind::Directory && Some(dir_id.as_str()) != item.dir_id() {
            self.cascade(id).await?;
        }
        self.sync().await?;
        self.load(id).await
    }

    /// `DELETE /files/:id`: moves an item to the trash (renamed with a suffix when the trash
    /// holds that name already), remembering where it was.
    pub async fn trash(&self, id: &str, if_match: Option<Rev>) -> Result<Item> {
        let _lock = self.writes.lock().await;
        self.sync().await?;
        let item = self.load(id).await?;
        check_mutable(&item)?;
        check_if_match(&item, if_match.as_ref())?;
        if item.trashed() {
            return Err(bad("this item is already in the trash"));
        }
        let restore_path = item.ancestry.get(1..).and_then(index::path_of).unwrap_or_else(|| "/".into());
        let name = self.free_name(TRASH_ID, item.name(), item.kind(), &item.id).await?;
        let mut body = item.body.clone();
        model::set(&mut body, "name", json!(name));
        model::set(&mut body, "dir_id", json!(TRASH_ID));
        model::set(&mut body, "trashed", json!(true));
        model::set(&mut body, "restore_path", json!(restore_path));
        if item.kind() == Kind::Directory {
            model::set(&mut body, "path", json!(child_path(&format!("/{TRASH_NAME}"), &name)));
        }
        self.write_doc(id, Some(&item.rev), false, body).await?;
        if item.kind() == Kind::Directory {
            self.cascade(id).await?;
        }
        self.sync().await?;
        self.load(id).await
    }

    /// `POST /files/trash/:id`: puts an item of the trash back where it was, recreating the
    /// directories of its path that are gone, with a suffix when its name is taken there.
    pub async fn restore(&self, id: &str) -> Result<Item> {
        let _lock = self.writes.lock().await;
        self.sync().await?;
        let item = self.load(id).await?;
        if item.dir_id() != Some(TRASH_ID) {
            return Err(bad("only items directly in the trash can be restored"));
        }
        let restore_path = item.body.get("restore_path").and_then(|v| v.as_str().map(str::to_owned));
        let names: Vec<String> = match restore_path.as_deref().map(model::split_path) {
            Some(Ok(names)) => names.into_iter().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        let mut dir = ROOT_ID.to_owned();
        let mut dir_path = String::from("/");
        for wanted in names {
            let mut name = wanted.clone();
            dir = match self.index.child_named(&dir, &wanted, None).await? {
                Some(e) if e.kind == Kind::Directory => e.id,
                existing => {
                    // Gone (or a file took its name): make the directory again.
                    if existing.is_some() {
                        name = self.free_name(&dir, &wanted, Kind::Directory, "").await?;
                    }
                    let new_id = DocId::generate();
                    let at = now();
                    let mut body = Body::empty();
                    model::set(&mut body, "type", json!("directory"));
                    model::set(&mut body, "name", json!(name));
                    model::set(&mut body, "dir_id", json!(dir));
                    model::set(&mut body, "path", json!(child_path(&dir_path, &name)));
                    model::set(&mut body, "created_at", json!(at));
                    model::set(&mut body, "updated_at", json!(at));
                    model::set(&mut body, "tags", json!([]));
                    self.write_doc(new_id.as_str(), None, false, body).await?;
                    self.sync().await?;
                    new_id.as_str().to_owned()
                }
            };
            dir_path = child_path(&dir_path, &name);
        }
        let name = self.free_name(&dir, item.name(), item.kind(), &item.id).await?;
        let mut body = item.body.clone();
        model::set(&mut body, "name", json!(name));
        model::set(&mut body, "dir_id", json!(dir));
        model::set(&mut body, "trashed", json!(false));
        model::remove(&mut body, "restore_path");
        if item.kind() == Kind::Directory {
            let parent = self.index.ancestry(&dir).await?;
            model::set(&mut body, "path", json!(child_path(&index::path_of(&parent).unwrap_or("/".into()), &name)));
        }
        self.write_doc(id, Some(&item.rev), false, body).await?;
        if item.kind() == Kind::Directory {
            self.cascade(id).await?;
        }
        self.sync().await?;
        self.load(id).await
    }

    /// `name`, or `name (2)`, `name (3)`… (before a file's extension, as Cozy does): the first
    /// one free in `dir` (other than `except`).
    async fn free_name(&self, dir: &str, name: &str, kind: Kind, except: &str) -> Result<String> {
        if self.index.child_named(dir, name, Some(except)).await?.is_none() {
            return Ok(name.to_owned());
        }
        let (stem, ext) = match (kind, name.rfind('.')) {
            (Kind::File, Some(i)) if i > 0 => (&name[..i], &name[i..]),
            _ => (name, ""),
        };
        for n in 2..1000 {
            let mut candidate = format!("{stem} ({n}){ext}");
            while candidate.len() > model::MAX_NAME_BYTES {
                // Shorten the stem, on a character boundary, to fit the suffix.
                let cut = stem.char_indices().map(|(i, _)| i).rfind(|i| *i + ext.len() + 8 <= model::MAX_NAME_BYTES);
                candidate = format!("{} ({n}){ext}", &stem[..cut.unwrap_or(0)]);
                if candidate.len() > model::MAX_NAME_BYTES {
                    return Err(FilesError::Conflict(format!("no free name for {name:?}")));
                }
            }
            if self.index.child_named(dir, &candidate, Some(except)).await?.is_none() {
                return Ok(candidate);
            }
        }
        Err(FilesError::Conflict(format!("no free name for {name:?}")))
    }

    /// `DELETE /files/trash/:id`: destroys an item of the trash, its subtree, and their content.
    pub async fn destroy(&self, id: &str) -> Result<()> {
        let _lock = self.writes.lock().await;
        self.sync().await?;
        let item = self.load(id).await?;
        check_mutable(&item)?;
        if !item.trashed() {
            return Err(bad("only items in the trash can be destroyed: DELETE /files/:id first"));
        }
        self.destroy_locked(&item).await
    }

    async fn destroy_locked(&self, item: &Item) -> Result<()> {
        if item.kind() == Kind::Directory {
            loop {
                let batch = self.index.descendants(&item.id, 200).await?;
                if batch.is_empty() {
                    break;
                }
                self.delete_nodes(&batch).await?;
            }
        }
        self.delete_nodes(&item.ancestry[..1]).await
    }

    /// Deletes documents, then their content.
    async fn delete_nodes(&self, nodes: &[Entry]) -> Result<()> {
        let keys: Vec<DocId> = nodes.iter().filter_map(|e| DocId::parse(&e.id).ok()).collect();
        let q = AllDocsQuery { keys: Some(keys), ..Default::default() };
        let writes: Vec<DocWrite> = self
            .store
            .all_docs(&doctype(), &q)
            .await?
            .rows
            .into_iter()
            .filter_map(|row| match row {
                AllDocsRow::Doc { id, rev, deleted: false, .. } => {
                    Some(DocWrite { id, rev: Some(rev), revisions: None, deleted: true, body: Body::empty() })
                }
                _ => None,
            })
            .collect();
        for r in self.store.bulk_docs(&doctype(), writes, true).await? {
            if let WriteResult::Conflict { id } | WriteResult::Rejected { id, .. } = r {
                return Err(FilesError::Conflict(format!("{id} changed meanwhile: try again")));
            }
        }
        self.sync().await?;
        for e in nodes {
            if let Some(key) = e.vfs_id.as_deref().and_then(version_key) {
                if let Err(err) = self.content.delete(&key).await {
                    tracing::warn!(error = ?err, "failed to delete destroyed content; the sweep will");
                }
            }
        }
        Ok(())
    }

    /// `DELETE /files/trash`: destroys everything in the trash.
    pub async fn empty_trash(&self) -> Result<()> {
        let _lock = self.writes.lock().await;
        loop {
            self.sync().await?;
            let trash = self.load(TRASH_ID).await?;
            let (children, _, _) = self.children(&trash, None, 100).await?;
            if children.is_empty() {
                return Ok(());
            }
            for child in &children {
                self.destroy_locked(child).await?;
            }
        }
    }

    /// Removes content no current version names (see "The sweep" above).
    pub async fn sweep(&self, grace: Duration) -> Result<Swept> {
        let mut cutoff = SystemTime::now().checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
        if self.content.exclusive() {
            // Left by a process that is gone (a crash): nobody will finish it.
            cutoff = cutoff.max(self.opened_at);
        }
        let temporary = self.content.sweep_incomplete(cutoff).await?;
        let objects = self.content.list("files/").await?;
        self.sync().await?;
        let mut swept = Swept { objects: objects.len() as u64, removed: 0, temporary };
        for obj in objects {
            if obj.modified > cutoff {
                continue;
            }
            let Some(vfs_id) = obj.key.as_str().rsplit('/').next().map(str::to_owned) else {
                continue;
            };
            // The registry first, then the index: see "The sweep".
            if self.writing.lock().map_or(true, |w| w.contains(&vfs_id)) {
                continue;
            }
            if self.index.references(&vfs_id).await? {
                continue;
            }
            self.content.delete(&obj.key).await?;
            swept.removed += 1;
        }
        Ok(swept)
    }
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

/// The directory received shared roots go in, on a recipient (Cozy's id and name).
pub const SHARED_WITH_ME_ID: &str = "io.cozy.files.shared-with-me-dir";
pub const SHARED_WITH_ME_NAME: &str = "Shared with me";

/// Creates the "Shared with me" directory at the root when it is missing.
pub async fn ensure_shared_with_me(store: &dyn crate::store::Store) -> Result<()> {
    let fields = json!({"type": "directory", "name": SHARED_WITH_ME_NAME, "dir_id": ROOT_ID,
        "path": format!("/{SHARED_WITH_ME_NAME}")});
    ensure_dir_in(store, SHARED_WITH_ME_ID, fields).await
}

/// Writes directory `id` with `fields` (and dates, tags) when it does not exist.
async fn ensure_dir_in(store: &dyn crate::store::Store, id: &str, fields: Value) -> Result<()> {
    let id = DocId::parse(id).map_err(|e| FilesError::Internal(anyhow::anyhow!(e)))?;
    match store.get(&doctype(), &id, GetOptions::default()).await {
        Ok(_) => return Ok(()),
        Err(StoreError::NotFound | StoreError::Deleted) => {}
        Err(e) => return Err(e.into()),
    }
    let mut body = Body::empty();
    let at = now();
    if let Value::Object(map) = fields {
        for (k, v) in map {
            model::set(&mut body, &k, v);
        }
    }
    model::set(&mut body, "created_at", json!(at));
    model::set(&mut body, "updated_at", json!(at));
    model::set(&mut body, "tags", json!([]));
    // A concurrent first use wrote it first: fine.
    let w = DocWrite { id, rev: None, revisions: None, deleted: false, body };
    store.bulk_docs(&doctype(), vec![w], true).await?;
    Ok(())
}

/// An instance's own quota, if one was set.
pub async fn instance_quota(store: &dyn Store) -> Result<Option<u64>, StoreError> {
    match store.get_local(&settings_doctype(), QUOTA_DOC).await {
        Ok(doc) => Ok(doc.body.get("quota_bytes").and_then(|v| v.as_u64())),
        Err(StoreError::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets (or with `None` removes) an instance's own quota.
pub async fn set_instance_quota(store: &dyn Store, bytes: Option<u64>) -> Result<(), StoreError> {
    match bytes {
        Some(b) => {
            let body = Body::parse(&json!({ "quota_bytes": b }).to_string())
                .map_err(|e| StoreError::Internal(anyhow::anyhow!(e)))?;
            store.put_local(&settings_doctype(), QUOTA_DOC, body).await.map(drop)
        }
        None => match store.delete_local(&settings_doctype(), QUOTA_DOC).await {
            Ok(()) | Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(e),
        },
    }
}

/// The files of every instance of a server, opened on first use.
pub struct FilesRegistry {
    backend: Arc<dyn ContentBackend>,
    data_dir: std::path::PathBuf,
    default_quota: u64,
    open: tokio::sync::Mutex<HashMap<String, Arc<Files>>>,
}

impl FilesRegistry {
    pub fn new(config: &crate::config::Config) -> anyhow::Result<FilesRegistry> {
        let backend: Arc<dyn ContentBackend> = match config.files.backend {
            crate::config::FilesBackendKind::Fs => {
                Arc::new(content::FsBackend::new(config.data_dir.join("files").join("content")))
            }
            crate::config::FilesBackendKind::S3 => {
                Arc::new(content::S3Backend::new(&content::S3Settings::from_config(&config.files.s3)?)?)
            }
        };
        Ok(FilesRegistry {
            backend,
            data_dir: config.data_dir.clone(),
            default_quota: config.files.quota_bytes,
            open: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The files of an instance (its store and its file-safe name).
    pub async fn of(&self, instance: &crate::instance::Instance) -> Result<Arc<Files>> {
        let name = instance.domain.file_stem();
        let mut open = self.open.lock().await;
        if let Some(f) = open.get(&name) {
            return Ok(f.clone());
        }
        let content = self.backend.open(&name).map_err(FilesError::Internal)?;
        let index_path = self.data_dir.join("files").join("index").join(format!("{name}.sqlite"));
        let files = Arc::new(Files::open(instance.store.clone(), content, &index_path, self.default_quota).await?);
        open.insert(name, files.clone());
        Ok(files)
    }

    /// Forgets an instance's files and removes its content and index (the instance is being
    /// removed).
    pub async fn destroy(&self, domain: &crate::instance::Domain) -> anyhow::Result<()> {
        let name = domain.file_stem();
        self.open.lock().await.remove(&name);
        self.backend.destroy(&name).await?;
        let index_path = self.data_dir.join("files").join("index").join(format!("{name}.sqlite"));
        for suffix in ["", "-wal", "-shm"] {
            let mut p = index_path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(std::path::PathBuf::from(p));
        }
        Ok(())
    }
}

/// Sweeps every opened instance now, then every `interval`, until cancelled.
pub async fn run_sweeps(
    registry: Arc<crate::instance::Registry>,
    files: Arc<FilesRegistry>,
    interval: Duration,
    grace: Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        for inst in registry.opened() {
            let outcome = match files.of(&inst).await {
                Ok(f) => f.sweep(grace).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(s) if s.removed + s.temporary > 0 => {
                    tracing::info!(instance = %inst.domain, removed = s.removed, temporary = s.temporary, "files swept")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(instance = %inst.domain, error = ?e, "files sweep failed"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
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
        let content = Arc::new(content::FsContent::open(&dir.path().join("content")).expect("content"));
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
