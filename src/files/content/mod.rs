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

/// Consecutive chunks of an object handed over at once, kept as they came: a request body's
/// chunks are as small as the socket's reads (8 to 32 KiB under actix-web), and gathering them
/// into one buffer would copy every byte once more, into memory the allocator often has to
/// fault in afresh (a third of the receiving server's time besides hashing, when it did).
#[derive(Clone, Debug, Default)]
pub struct Block {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Block {
    /// Appends `chunk` (an empty one is left out).
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.chunks.push(chunk);
        }
    }

    /// Bytes in the block.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// The block, leaving this one empty.
    pub fn take(&mut self) -> Block {
        std::mem::take(self)
    }

    pub fn into_chunks(self) -> Vec<Bytes> {
        self.chunks
    }
}

/// The check of [`ContentStore::put_verified`]: given the object's chunks, `Err(reason)` to
/// refuse them.
pub type Verify = Box<dyn FnOnce(&[Bytes]) -> Verdict + Send>;

/// What [`Verify`] answers: `Err(reason)` when the bytes are refused (nothing written).
pub type Verdict = Result<(), String>;

/// One object being written. Nothing is readable under its key before [`ContentWriter::commit`]
/// returns; dropping the writer (a cut connection) or [`ContentWriter::abort`] discards it.
#[async_trait]
pub trait ContentWriter: Send {
    async fn write(&mut self, chunk: Bytes) -> Result<(), ContentError>;
    /// Writes the chunks of `block`, in order, after what was written before: as many
    /// [`ContentWriter::write`]s, unless the backend takes them at once (the filesystem: one
    /// vectored write).
    async fn write_block(&mut self, block: Block) -> Result<(), ContentError> {
        for chunk in block.into_chunks() {
            self.write(chunk).await?;
        }
        Ok(())
    }
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

    /// Writes the object `key` whole, from `block` (bytes already in memory), if `verify`
    /// accepts them: `verify` runs first, on a thread where blocking is allowed, and when it
    /// answers `Err(reason)` nothing is written and the reason comes back (`Ok(Err(reason))`).
    /// Otherwise the object is committed as by a writer ([`ContentWriter::commit`]): durable and
    /// readable under its key, atomically. For objects that arrive whole before they are
    /// checked (a received file of at most one block, `files::received`): the filesystem does
    /// the check, the write and the commit in one task of the blocking pool, where a writer
    /// takes one hand-over for its creation, one per write and one for its commit.
    async fn put_verified(&self, key: &ContentKey, block: Block, verify: Verify) -> Result<Verdict, ContentError> {
        let (block, verdict) = tokio::task::spawn_blocking(move || {
            let verdict = verify(block.chunks());
            (block, verdict)
        })
        .await
        .map_err(|e| ContentError::Unavailable(anyhow::anyhow!("a check task failed: {e}")))?;
        if verdict.is_err() {
            return Ok(verdict);
        }
        let mut writer = self.create(key).await?;
        writer.write_block(block).await?;
        writer.commit().await?;
        Ok(Ok(()))
    }

    /// The object's bytes, or those in `range` (end exclusive, clamped to the object's size).
    /// `NotFound` for an unknown key, `BadRange` for a range starting at or past the end of a
    /// non-empty object.
    async fn read(&self, key: &ContentKey, range: Option<Range<u64>>) -> Result<ContentStream, ContentError>;

    /// The object's size, `None` when it does not exist.
    async fn size(&self, key: &ContentKey) -> Result<Option<u64>, ContentError>;

    /// [`ContentStore::size`] of each key: exactly one answer per key, in the order of
    /// `keys`; the first error fails the whole call (no partial answer). A backend that can
    /// look at many objects at once (the filesystem: one blocking task for all; S3: several
    /// requests in flight) says so here.
    async fn sizes(&self, keys: &[ContentKey]) -> Result<Vec<Option<u64>>, ContentError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.size(key).await?);
        }
        Ok(out)
    }

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

mod direct;
mod fs;
mod s3;

pub use direct::{DIRECT_ALIGN, DIRECT_MIN};
pub(crate) use fs::*;
pub use fs::{FsBackend, FsContent};
pub use s3::{S3Backend, S3Content, S3Settings, S3_PARTS_IN_FLIGHT, S3_PART_BYTES};
