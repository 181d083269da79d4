//! Where the bytes of files live: the [`ContentStore`] trait and its two backends, the local
//! filesystem ([`FsContent`], the default) and S3-compatible object storage ([`S3Content`],
//! through the `object_store` crate). Both pass one conformance suite
//! ([`super::conformance`]).
//!
//! A content store maps opaque keys ([`ContentKey`], e.g. `files/ab/ab12…`) to immutable
//! objects. An object is written once through a [`ContentWriter`]: chunk by chunk (never held
//! whole in memory), then `commit`, after which it is durable and readable under its key; a
//! writer dropped or aborted before `commit` leaves nothing readable. Objects are never
//! rewritten in place: a new version of a file gets a fresh key, and the metadata document
//! that names the key is the switch (see `files` for the whole protocol). The same store can
//! hold other kinds of content under other key prefixes (CouchDB attachments, for one).
//!
//! Filesystem layout, under the instance's directory: `objects/<key>` for committed objects,
//! `tmp/<random>` for objects being written. A commit fsyncs the temporary file, renames it to
//! its key, and fsyncs the directories the rename touched, so a crash at any point leaves
//! either no object or a complete one (plus, at worst, a temporary file the sweep removes).
//!
//! S3 layout: `<prefix>/<instance>/<key>` in the bucket. Objects up to [`S3_PART_BYTES`] are
//! sent with one `PUT` when committed; larger ones with a multipart upload whose parts go out
//! as they fill (at most [`S3_PARTS_IN_FLIGHT`] at once), completed by `commit`: S3 makes an
//! object visible only once its upload completes. A writer dropped midway aborts its upload.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, PutPayload, WriteMultipart};

/// A content key: `/`-separated segments of ASCII letters, digits, `-`, `_` and `.`, none
/// empty, `.` or `..`, at most 512 bytes in all. Keys are made by hearth (never taken from a
/// request), and the rules keep them safe as file paths and as object names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentKey(String);

impl ContentKey {
    pub fn parse(s: &str) -> Result<ContentKey, String> {
        let ok = !s.is_empty()
            && s.len() <= 512
            && s.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            });
        if ok {
            Ok(ContentKey(s.to_owned()))
        } else {
            Err(format!("invalid content key {s:?}"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ContentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("no such content")]
    NotFound,
    /// The requested range starts at or past the end of the object.
    #[error("range not satisfiable")]
    BadRange,
    /// No space left on the device (or the S3 server said so).
    #[error("no space left for content")]
    Full(#[source] anyhow::Error),
    #[error("the content store is unavailable")]
    Unavailable(#[source] anyhow::Error),
}

impl ContentError {
    fn io(e: io::Error, what: &str) -> ContentError {
        if matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded) {
            ContentError::Full(anyhow::Error::new(e).context(what.to_owned()))
        } else if e.kind() == io::ErrorKind::NotFound {
            ContentError::NotFound
        } else {
            ContentError::Unavailable(anyhow::Error::new(e).context(what.to_owned()))
        }
    }

    fn object(e: object_store::Error, what: &str) -> ContentError {
        match e {
            object_store::Error::NotFound { .. } => ContentError::NotFound,
            e => ContentError::Unavailable(anyhow::Error::new(e).context(what.to_owned())),
        }
    }
}

/// A committed object, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: ContentKey,
    pub size: u64,
    pub modified: SystemTime,
}

/// Bytes of an object, streamed.
pub type ContentStream = BoxStream<'static, Result<Bytes, ContentError>>;

/// One object being written. Nothing is readable under its key before [`ContentWriter::commit`]
/// returns; dropping the writer (a cut connection) or [`ContentWriter::abort`] discards it.
#[async_trait]
pub trait ContentWriter: Send {
    async fn write(&mut self, chunk: Bytes) -> Result<(), ContentError>;
    /// Makes the object durable and readable under its key, atomically.
    async fn commit(self: Box<Self>) -> Result<(), ContentError>;
    async fn abort(self: Box<Self>);
}

/// The content of one instance.
#[async_trait]
pub trait ContentStore: Send + Sync + 'static {
    /// Starts writing the object `key`. Keys are fresh for each object: committing over an
    /// existing key is not supported (hearth never does it).
    async fn create(&self, key: &ContentKey) -> Result<Box<dyn ContentWriter>, ContentError>;

    /// The object's bytes, or those in `range` (end exclusive, clamped to the object's size).
    /// `NotFound` for an unknown key, `BadRange` for a range starting at or past the end of a
    /// non-empty object.
    async fn read(&self, key: &ContentKey, range: Option<Range<u64>>) -> Result<ContentStream, ContentError>;

    /// The object's size, `None` when it does not exist.
    async fn size(&self, key: &ContentKey) -> Result<Option<u64>, ContentError>;

    /// Removes the object; removing an absent object is not an error.
    async fn delete(&self, key: &ContentKey) -> Result<(), ContentError>;

    /// Every committed object whose key starts with `prefix` (a whole segment prefix such as
    /// `files/`), in no particular order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ContentError>;

    /// Removes what interrupted writes left behind (temporary files, for the filesystem) last
    /// modified before `older_than`, except what this process is writing right now. Returns
    /// how many were removed.
    async fn sweep_incomplete(&self, older_than: SystemTime) -> Result<u64, ContentError>;

    /// True when only this process writes to the store (the filesystem backend: one `hearth
    /// serve` per data directory). Then whatever was left from before this process opened the
    /// store is garbage of a dead process, and the sweep removes it at once, without waiting
    /// for `files.orphan_grace_secs`. False for S3, whose bucket other processes may share.
    fn exclusive(&self) -> bool {
        false
    }
}

/// The content stores of every instance of a server: one backend, one store per instance.
pub trait ContentBackend: Send + Sync + 'static {
    /// The store of the instance whose file-safe name is `instance` (see `Domain`).
    fn open(&self, instance: &str) -> anyhow::Result<Arc<dyn ContentStore>>;
    /// Removes every object of an instance.
    fn destroy(&self, instance: &str) -> futures_util::future::BoxFuture<'static, anyhow::Result<()>>;
}

// ---------------------------------------------------------------------------------------------
// Local filesystem.

/// Chunks read from a file for a download.
const READ_CHUNK: usize = 1024 * 1024;

/// The filesystem backend: each instance's content under `<root>/<instance>/`.
pub struct FsBackend {
    root: PathBuf,
}

impl FsBackend {
    pub fn new(root: PathBuf) -> FsBackend {
        FsBackend { root }
    }
}

impl ContentBackend for FsBackend {
    fn open(&self, instance: &str) -> anyhow::Result<Arc<dyn ContentStore>> {
        Ok(Arc::new(FsContent::open(&self.root.join(instance))?))
    }

    fn destroy(&self, instance: &str) -> futures_util::future::BoxFuture<'static, anyhow::Result<()>> {
        let dir = self.root.join(instance);
        Box::pin(async move {
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(anyhow::Error::new(e).context(format!("failed to remove {}", dir.display()))),
            }
        })
    }
}

/// One instance's content on the local filesystem.
pub struct FsContent {
    objects: PathBuf,
    tmp: PathBuf,
    /// Temporary files of the writers open in this process, which a sweep leaves alone.
    live: Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>>,
    /// Directories under `objects` whose entry in their parent this process has synced (see
    /// [`publish`]).
    durable_dirs: Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>>,
}

impl FsContent {
    pub fn open(dir: &Path) -> anyhow::Result<FsContent> {
        let objects = dir.join("objects");
        let tmp = dir.join("tmp");
        for d in [&objects, &tmp] {
            std::fs::create_dir_all(d).map_err(|e| anyhow::anyhow!("failed to create {}: {e}", d.display()))?;
        }
        Ok(FsContent { objects, tmp, live: Default::default(), durable_dirs: Default::default() })
    }

    fn path(&self, key: &ContentKey) -> PathBuf {
        // Keys are checked segments (no `..`, no absolute path): joining stays under `objects`.
        self.objects.join(key.as_str())
    }
}

/// fsync of a directory, so a rename or an unlink in it is durable.
async fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(|e| io::Error::other(e.to_string()))?
}

/// Blocks handed to the disk by a filesystem writer: smaller chunks are gathered up to this
/// size first, so each write is one system call on a thread of the blocking pool.
const WRITE_BLOCK: usize = 1024 * 1024;

/// Every this many bytes written, a writer starts an `fdatasync` of its file in the background
/// (at most one at a time), so the disk works while the body still arrives and the `fsync` of
/// `commit` has little left to do: the same idea as RocksDB's `bytes_per_sync`. Durability
/// still comes from the final `fsync`; an error of a background one fails the commit (after a
/// failed `fsync` Linux may report the next one clean).
const WRITEBACK_BYTES: u64 = 32 * 1024 * 1024;

struct FsWriter {
    /// The temporary file, written by one blocking task at a time.
    file: Option<Arc<std::fs::File>>,
    /// Small chunks gathered until they make a block.
    pending: bytes::BytesMut,
    /// The block being written, if any: at most one, so writes stay in order.
    in_flight: Option<tokio::task::JoinHandle<io::Result<()>>>,
    /// A background `fdatasync`, if one runs (see [`WRITEBACK_BYTES`]).
    syncing: Option<tokio::task::JoinHandle<io::Result<()>>>,
    /// Bytes handed to blocking writes so far, and how many there were when the last
    /// background sync started.
    written: u64,
    sync_mark: u64,
    tmp: PathBuf,
    dest: PathBuf,
    objects: PathBuf,
    done: bool,
    live: Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>>,
    durable_dirs: Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>>,
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        if !self.done {
            // A cut connection: nothing of it stays (a crash leaves the file to the sweep). A
            // block still being written goes to the unlinked file and vanishes with it.
            let _ = std::fs::remove_file(&self.tmp);
        }
        if let Ok(mut live) = self.live.lock() {
            live.remove(&self.tmp);
        }
    }
}

impl FsWriter {
    fn closed() -> ContentError {
        ContentError::Unavailable(anyhow::anyhow!("writer closed"))
    }

    /// Waits for the block being written, if any.
    async fn settle(&mut self) -> Result<(), ContentError> {
        if let Some(task) = self.in_flight.take() {
            task.await
                .map_err(|e| ContentError::Unavailable(anyhow::anyhow!("a write task failed: {e}")))?
                .map_err(|e| ContentError::io(e, "failed to write content"))?;
        }
        Ok(())
    }

    /// Waits for the background sync, if any.
    async fn settle_sync(&mut self) -> Result<(), ContentError> {
        if let Some(task) = self.syncing.take() {
            task.await
                .map_err(|e| ContentError::Unavailable(anyhow::anyhow!("a sync task failed: {e}")))?
                .map_err(|e| ContentError::io(e, "failed to sync content"))?;
        }
        Ok(())
    }

    /// Hands `block` to a blocking task once the previous one is written; returns without
    /// waiting for it, so the next block can arrive meanwhile. Starts a background sync every
    /// [`WRITEBACK_BYTES`].
    async fn submit(&mut self, block: Bytes) -> Result<(), ContentError> {
        self.settle().await?;
        let file = self.file.clone().ok_or_else(Self::closed)?;
        let start = self.written;
        self.written += block.len() as u64;
        let sync_file = file.clone();
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&block, start)
        }));
        let sync_done = self.syncing.as_ref().is_none_or(|t| t.is_finished());
        if sync_done && self.written - self.sync_mark >= WRITEBACK_BYTES {
            self.settle_sync().await?;
            self.sync_mark = self.written;
            self.syncing = Some(tokio::task::spawn_blocking(move || sync_file.sync_data()));
        }
        Ok(())
    }
}

#[async_trait]
impl ContentWriter for FsWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), ContentError> {
        if self.file.is_none() {
            return Err(Self::closed());
        }
        if self.pending.is_empty() && chunk.len() >= WRITE_BLOCK {
            // A whole block already (what an upload hands over): written as it is, uncopied.
            return self.submit(chunk).await;
        }
        self.pending.extend_from_slice(&chunk);
        if self.pending.len() >= WRITE_BLOCK {
            let block = self.pending.split().freeze();
            self.pending.reserve(WRITE_BLOCK);
            self.submit(block).await?;
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<(), ContentError> {
        if !self.pending.is_empty() {
            let block = self.pending.split().freeze();
            self.submit(block).await?;
        }
        self.settle().await?;
        self.settle_sync().await?;
        let file = self.file.take().ok_or_else(Self::closed)?;
        let (tmp, dest, objects, durable) =
            (self.tmp.clone(), self.dest.clone(), self.objects.clone(), self.durable_dirs.clone());
        // The whole commit on one thread of the blocking pool (one hand-over, not one per step).
        let renamed = tokio::task::spawn_blocking(move || publish(&file, &tmp, &dest, &objects, &durable))
            .await
            .map_err(|e| ContentError::Unavailable(anyhow::anyhow!("the commit task failed: {e}")))?;
        let (moved, outcome) = renamed;
        if moved {
            self.done = true;
        }
        outcome.map_err(|e| ContentError::io(e, "failed to commit content"))
    }

    async fn abort(mut self: Box<Self>) {
        self.file = None;
        let _ = self.settle().await;
        let _ = self.settle_sync().await;
        let _ = tokio::fs::remove_file(&self.tmp).await;
        self.done = true;
    }
}

/// Makes the temporary file `tmp` the object `dest`, durably: fsync of the file, rename, fsync
/// of the directory it lands in, and of the parent of each directory level under `objects` not
/// yet known durable in this process (`durable`: a level another commit created, or that was
/// there before, gets its entry synced once, by whichever commit comes first; two commits
/// meeting there both sync it, so neither answers before the entry is on disk). Returns whether
/// the rename happened, and the outcome.
fn publish(
    file: &std::fs::File,
    tmp: &Path,
    dest: &Path,
    objects: &Path,
    durable: &std::sync::Mutex<std::collections::HashSet<PathBuf>>,
) -> (bool, io::Result<()>) {
    if let Err(e) = file.sync_all() {
        return (false, Err(e));
    }
    let parent = dest.parent().unwrap_or(objects);
    if let Err(e) = std::fs::create_dir_all(parent) {
        return (false, Err(e));
    }
    if let Err(e) = std::fs::rename(tmp, dest) {
        return (false, Err(e));
    }
    let synced = (|| {
        std::fs::File::open(parent)?.sync_all()?;
        let mut level = parent;
        while level != objects && level.starts_with(objects) {
            let Some(up) = level.parent() else { break };
            if !durable.lock().is_ok_and(|d| d.contains(level)) {
                std::fs::File::open(up)?.sync_all()?;
                if let Ok(mut d) = durable.lock() {
                    d.insert(level.to_path_buf());
                }
            }
            level = up;
        }
        Ok(())
    })();
    (true, synced)
}

/// Reads `range` of `file` in blocks of [`READ_CHUNK`], each by one positional read on a thread
/// of the blocking pool, the next block read while the caller sends the previous one (from the
/// first poll on). Holds no
/// thread while the caller waits (a slow client costs a block of memory, not a thread).
fn read_blocks(file: Arc<std::fs::File>, range: Range<u64>) -> ContentStream {
    type Pending = tokio::task::JoinHandle<io::Result<Bytes>>;
    fn start(file: &Arc<std::fs::File>, at: u64, end: u64) -> Option<Pending> {
        if at >= end {
            return None;
        }
        let len = (end - at).min(READ_CHUNK as u64) as usize;
        let file = file.clone();
        Some(tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = bytes::BytesMut::zeroed(len);
            file.read_exact_at(&mut buf, at)?;
            Ok(buf.freeze())
        }))
    }
    // The first block is read when the stream is first polled: a stream made ahead of its
    // turn (the content channel reads a group of files before sending them) holds no block.
    futures_util::stream::try_unfold((file, range.start, range.end, None), |(file, at, end, pending)| async move {
        let Some(pending) = pending.or_else(|| start(&file, at, end)) else {
            return Ok(None);
        };
        let block = pending
            .await
            .map_err(|e| ContentError::Unavailable(anyhow::anyhow!("a read task failed: {e}")))?
            .map_err(|e| ContentError::io(e, "failed to read content"))?;
        let at = at + block.len() as u64;
        let next = start(&file, at, end);
        Ok(Some((block, (file, at, end, next))))
    })
    .boxed()
}

fn clamp(range: Option<Range<u64>>, size: u64) -> Result<Range<u64>, ContentError> {
    match range {
        None => Ok(0..size),
        Some(r) if size == 0 && r.start == 0 => Ok(0..0),
        Some(r) if r.start >= size || r.start > r.end => Err(ContentError::BadRange),
        Some(r) => Ok(r.start..r.end.min(size)),
    }
}

#[async_trait]
impl ContentStore for FsContent {
    async fn create(&self, key: &ContentKey) -> Result<Box<dyn ContentWriter>, ContentError> {
        let tmp = self.tmp.join(uuid::Uuid::new_v4().simple().to_string());
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await
            .map_err(|e| ContentError::io(e, "failed to create a temporary file"))?;
        if let Ok(mut live) = self.live.lock() {
            live.insert(tmp.clone());
        }
        Ok(Box::new(FsWriter {
            file: Some(Arc::new(file.into_std().await)),
            pending: bytes::BytesMut::new(),
            in_flight: None,
            syncing: None,
            written: 0,
            sync_mark: 0,
            tmp,
            dest: self.path(key),
            objects: self.objects.clone(),
            done: false,
            live: self.live.clone(),
            durable_dirs: self.durable_dirs.clone(),
        }))
    }

    async fn read(&self, key: &ContentKey, range: Option<Range<u64>>) -> Result<ContentStream, ContentError> {
        let path = self.path(key);
        let (file, size) = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(path)?;
            let size = file.metadata()?.len();
            Ok::<_, io::Error>((file, size))
        })
        .await
        .map_err(|e| ContentError::Unavailable(anyhow::anyhow!("an open task failed: {e}")))?
        .map_err(|e| ContentError::io(e, "failed to open content"))?;
        let range = clamp(range, size)?;
        Ok(read_blocks(Arc::new(file), range))
    }

    async fn size(&self, key: &ContentKey) -> Result<Option<u64>, ContentError> {
        match tokio::fs::metadata(self.path(key)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ContentError::io(e, "failed to read content metadata")),
        }
    }

    async fn delete(&self, key: &ContentKey) -> Result<(), ContentError> {
        let path = self.path(key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                if let Some(p) = path.parent() {
                    sync_dir(p).await.map_err(|e| ContentError::io(e, "failed to delete content"))?;
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ContentError::io(e, "failed to delete content")),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ContentError> {
        let objects = self.objects.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut stack = vec![objects.clone()];
            while let Some(dir) = stack.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(ContentError::io(e, "failed to list content")),
                };
                for entry in entries {
                    let entry = entry.map_err(|e| ContentError::io(e, "failed to list content"))?;
                    let meta = entry.metadata().map_err(|e| ContentError::io(e, "failed to list content"))?;
                    let path = entry.path();
                    if meta.is_dir() {
                        stack.push(path);
                        continue;
                    }
                    let Some(rel) = path.strip_prefix(&objects).ok().and_then(|p| p.to_str()) else {
                        continue;
                    };
                    let Ok(key) = ContentKey::parse(&rel.replace(std::path::MAIN_SEPARATOR, "/")) else {
                        continue;
                    };
                    if key.as_str().starts_with(&prefix) {
                        out.push(ObjectInfo {
                            key,
                            size: meta.len(),
                            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        });
                    }
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| ContentError::Unavailable(e.into()))?
    }

    fn exclusive(&self) -> bool {
        true
    }

    async fn sweep_incomplete(&self, older_than: SystemTime) -> Result<u64, ContentError> {
        let tmp = self.tmp.clone();
        let live = self.live.clone();
        tokio::task::spawn_blocking(move || {
            let mut removed = 0;
            let entries = match std::fs::read_dir(&tmp) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(ContentError::io(e, "failed to list temporary content")),
            };
            for entry in entries.flatten() {
                let old = entry.metadata().ok().and_then(|m| m.modified().ok()).is_none_or(|m| m <= older_than);
                let writing = live.lock().map_or(true, |l| l.contains(&entry.path()));
                if old && !writing && std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
        .map_err(|e| ContentError::Unavailable(e.into()))?
    }
}

// ---------------------------------------------------------------------------------------------
// S3-compatible object storage.

/// Size of each part of a multipart upload (S3 requires at least 5 MiB but for the last), and
/// the largest object sent with a single `PUT`.
pub const S3_PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts uploading at once, per object being written.
pub const S3_PARTS_IN_FLIGHT: usize = 2;

/// How to reach an S3-compatible server.
#[derive(Clone, Debug)]
pub struct S3Settings {
    /// `http(s)://host:port` of an S3-compatible server; `None` for AWS itself.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: secrecy::SecretString,
    /// First segment of every object name, so several deployments can share a bucket.
    pub prefix: String,
    /// Allow a plain `http://` endpoint (tests, local servers).
    pub allow_http: bool,
}

impl S3Settings {
    /// The settings of the S3 backend from the `[files.s3]` configuration; an error naming what
    /// is missing.
    pub fn from_config(s3: &crate::config::S3Config) -> anyhow::Result<S3Settings> {
        let missing = |k: &str| anyhow::anyhow!("files.backend = \"s3\" needs files.s3.{k}");
        Ok(S3Settings {
            endpoint: s3.endpoint.clone(),
            bucket: s3.bucket.clone().ok_or_else(|| missing("bucket"))?,
            region: s3.region.clone(),
            access_key_id: s3.access_key_id.clone().ok_or_else(|| missing("access_key_id"))?,
            secret_access_key: s3.secret_access_key.clone().ok_or_else(|| missing("secret_access_key"))?,
            prefix: s3.prefix.clone(),
            allow_http: s3.allow_http,
        })
    }
}

/// The S3 backend: one client, each instance under its own prefix.
pub struct S3Backend {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl S3Backend {
    pub fn new(s: &S3Settings) -> anyhow::Result<S3Backend> {
        use secrecy::ExposeSecret;
        let mut b = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&s.bucket)
            .with_region(&s.region)
            .with_access_key_id(&s.access_key_id)
            .with_secret_access_key(s.secret_access_key.expose_secret())
            .with_allow_http(s.allow_http)
            // No whole-request timeout: a download streams at its reader's pace. Connecting is
            // bounded, and a failed call is retried a few times, within 30 s.
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_allow_http(s.allow_http)
                    .with_timeout_disabled()
                    .with_connect_timeout(std::time::Duration::from_secs(5)),
            )
            .with_retry(object_store::RetryConfig {
                max_retries: 3,
                retry_timeout: std::time::Duration::from_secs(30),
                ..Default::default()
            });
        if let Some(endpoint) = &s.endpoint {
            // Path-style addressing (`endpoint/bucket/key`): what S3-compatible servers serve.
            b = b.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
        }
        let store = b.build().map_err(|e| anyhow::anyhow!("invalid S3 configuration: {e}"))?;
        let prefix = s.prefix.trim_matches('/').to_owned();
        ContentKey::parse(&prefix).map_err(|_| anyhow::anyhow!("files.s3.prefix must be a simple name"))?;
        Ok(S3Backend { store: Arc::new(store), prefix })
    }
}

impl ContentBackend for S3Backend {
    fn open(&self, instance: &str) -> anyhow::Result<Arc<dyn ContentStore>> {
        ContentKey::parse(instance).map_err(anyhow::Error::msg)?;
        Ok(Arc::new(S3Content { store: self.store.clone(), base: format!("{}/{instance}", self.prefix) }))
    }

    fn destroy(&self, instance: &str) -> futures_util::future::BoxFuture<'static, anyhow::Result<()>> {
        let store = self.store.clone();
        let base = object_store::path::Path::from(format!("{}/{instance}", self.prefix));
        Box::pin(async move {
            let locations = store.list(Some(&base)).map_ok(|m| m.location).boxed();
            store.delete_stream(locations).try_collect::<Vec<_>>().await?;
            Ok(())
        })
    }
}

/// One instance's content in an S3 bucket.
pub struct S3Content {
    store: Arc<dyn ObjectStore>,
    base: String,
}

impl S3Content {
    fn location(&self, key: &ContentKey) -> object_store::path::Path {
        object_store::path::Path::from(format!("{}/{}", self.base, key.as_str()))
    }
}

enum S3Upload {
    /// Below one part: kept until commit, then sent with one `PUT`.
    Small(Vec<Bytes>, usize),
    Multipart(WriteMultipart),
    Done,
}

struct S3Writer {
    store: Arc<dyn ObjectStore>,
    location: object_store::path::Path,
    upload: S3Upload,
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        if let S3Upload::Multipart(w) = std::mem::replace(&mut self.upload, S3Upload::Done) {
            // A cut connection: the parts sent so far are discarded by the server.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = w.abort().await;
                });
            }
        }
    }
}

#[async_trait]
impl ContentWriter for S3Writer {
    async fn write(&mut self, chunk: Bytes) -> Result<(), ContentError> {
        match &mut self.upload {
            S3Upload::Small(chunks, len) if *len + chunk.len() <= S3_PART_BYTES => {
                *len += chunk.len();
                chunks.push(chunk);
                Ok(())
            }
            S3Upload::Small(chunks, _) => {
                let upload = self
                    .store
                    .put_multipart(&self.location)
                    .await
                    .map_err(|e| ContentError::object(e, "failed to start an S3 upload"))?;
                let mut w = WriteMultipart::new_with_chunk_size(upload, S3_PART_BYTES);
                for c in std::mem::take(chunks) {
                    w.write(&c);
                }
                w.write(&chunk);
                self.upload = S3Upload::Multipart(w);
                Ok(())
            }
            S3Upload::Multipart(w) => {
                w.wait_for_capacity(S3_PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| ContentError::object(e, "failed to upload a part to S3"))?;
                w.write(&chunk);
                Ok(())
            }
            S3Upload::Done => Err(ContentError::Unavailable(anyhow::anyhow!("writer closed"))),
        }
    }

    async fn commit(mut self: Box<Self>) -> Result<(), ContentError> {
        match std::mem::replace(&mut self.upload, S3Upload::Done) {
            S3Upload::Small(chunks, _) => {
                let payload: PutPayload = chunks.into_iter().collect();
                self.store
                    .put(&self.location, payload)
                    .await
                    .map_err(|e| ContentError::object(e, "failed to write to S3"))?;
                Ok(())
            }
            S3Upload::Multipart(w) => {
                w.finish().await.map_err(|e| ContentError::object(e, "failed to complete an S3 upload"))?;
                Ok(())
            }
            S3Upload::Done => Err(ContentError::Unavailable(anyhow::anyhow!("writer closed"))),
        }
    }

    async fn abort(mut self: Box<Self>) {
        if let S3Upload::Multipart(w) = std::mem::replace(&mut self.upload, S3Upload::Done) {
            let _ = w.abort().await;
        }
    }
}

#[async_trait]
impl ContentStore for S3Content {
    async fn create(&self, key: &ContentKey) -> Result<Box<dyn ContentWriter>, ContentError> {
        Ok(Box::new(S3Writer {
            store: self.store.clone(),
            location: self.location(key),
            upload: S3Upload::Small(Vec::new(), 0),
        }))
    }

    async fn read(&self, key: &ContentKey, range: Option<Range<u64>>) -> Result<ContentStream, ContentError> {
        let location = self.location(key);
        let range = match range {
            None => None,
            Some(r) => {
                let size = self.size(key).await?.ok_or(ContentError::NotFound)?;
                let r = clamp(Some(r), size)?;
                if r.is_empty() {
                    return Ok(futures_util::stream::empty().boxed());
                }
                Some(object_store::GetRange::Bounded(r))
            }
        };
        let opts = object_store::GetOptions { range, ..Default::default() };
        let got = self
            .store
            .get_opts(&location, opts)
            .await
            .map_err(|e| ContentError::object(e, "failed to read from S3"))?;
        Ok(got.into_stream().map_err(|e| ContentError::object(e, "failed to read from S3")).boxed())
    }

    async fn size(&self, key: &ContentKey) -> Result<Option<u64>, ContentError> {
        match self.store.head(&self.location(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(ContentError::object(e, "failed to read S3 metadata")),
        }
    }

    async fn delete(&self, key: &ContentKey) -> Result<(), ContentError> {
        match self.store.delete(&self.location(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(ContentError::object(e, "failed to delete from S3")),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ContentError> {
        let base = object_store::path::Path::from(self.base.as_str());
        let strip = format!("{}/", self.base);
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(|e| ContentError::object(e, "failed to list S3 objects"))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let key = ContentKey::parse(m.location.as_ref().strip_prefix(&strip)?).ok()?;
                key.as_str().starts_with(prefix).then(|| ObjectInfo {
                    key,
                    size: m.size,
                    modified: SystemTime::from(m.last_modified),
                })
            })
            .collect())
    }

    async fn sweep_incomplete(&self, _older_than: SystemTime) -> Result<u64, ContentError> {
        // Uploads cut by a crash are multipart uploads never completed: invisible, and not
        // listable through `object_store`; a bucket lifecycle rule
        // (`AbortIncompleteMultipartUpload`) reclaims their parts.
        Ok(0)
    }
}
