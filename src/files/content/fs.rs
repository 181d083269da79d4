//! The local filesystem backend (see the module above for its layout and commit protocol, and
//! [`super::direct`] for its direct I/O).

use super::direct::{read_direct, set_direct, AlignedBuf, DirectWriter, DIRECT_ALIGN, DIRECT_MIN};
use super::*;

/// Chunks read from a file for a download (into an [`AlignedBuf`]).
pub(super) const READ_CHUNK: usize = super::direct::BUF_BYTES;

/// The filesystem backend: each instance's content under `<root>/<instance>/`.
pub struct FsBackend {
    root: PathBuf,
    direct: bool,
}

impl FsBackend {
    /// `direct`: write and read files of `DIRECT_MIN` bytes or more with direct I/O where the
    /// filesystem allows it (see [`super::direct`]; `files.direct_io`).
    pub fn new(root: PathBuf, direct: bool) -> FsBackend {
        FsBackend { root, direct }
    }
}

impl ContentBackend for FsBackend {
    fn open(&self, instance: &str) -> anyhow::Result<Arc<dyn ContentStore>> {
        Ok(Arc::new(FsContent::open(&self.root.join(instance), self.direct)?))
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
    /// Whether direct I/O is tried (see [`super::direct`]).
    direct: bool,
}

impl FsContent {
    /// The content under `dir`; `direct` as for [`FsBackend::new`].
    pub fn open(dir: &Path, direct: bool) -> anyhow::Result<FsContent> {
        let objects = dir.join("objects");
        let tmp = dir.join("tmp");
        for d in [&objects, &tmp] {
            std::fs::create_dir_all(d).map_err(|e| anyhow::anyhow!("failed to create {}: {e}", d.display()))?;
        }
        Ok(FsContent { objects, tmp, live: Default::default(), durable_dirs: Default::default(), direct })
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
pub(super) const WRITE_BLOCK: usize = super::direct::BUF_BYTES;

/// Every this many bytes written, a writer starts an `fdatasync` of its file in the background
/// (at most one at a time), so the disk works while the body still arrives and the `fsync` of
/// `commit` has little left to do: the same idea as RocksDB's `bytes_per_sync`. Durability
/// still comes from the final `fsync`; an error of a background one fails the commit (after a
/// failed `fsync` Linux may report the next one clean).
pub(super) const WRITEBACK_BYTES: u64 = 32 * 1024 * 1024;

pub(super) struct FsWriter {
    /// The temporary file, written by one blocking task at a time.
    file: Option<Arc<std::fs::File>>,
    /// Small chunks gathered until they make a block.
    pending: bytes::BytesMut,
    /// The block being written, if any: at most one, so writes stay in order. The
    /// [`DirectWriter`] travels with it and comes back.
    in_flight: Option<tokio::task::JoinHandle<io::Result<Option<DirectWriter>>>>,
    /// With direct I/O allowed (`files.direct_io`): what the bytes go through (see
    /// [`super::direct`]), while no write holds it.
    direct: Option<DirectWriter>,
    /// Whether direct I/O is allowed.
    direct_allowed: bool,
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
        if let Some(d) = self.direct.take() {
            d.discard();
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
            let direct = task
                .await
                .map_err(|e| ContentError::Unavailable(anyhow::anyhow!("a write task failed: {e}")))?
                .map_err(|e| ContentError::io(e, "failed to write content"))?;
            if direct.is_some() {
                self.direct = direct;
            }
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

    /// Hands `chunks` (consecutive) to a blocking task once the previous ones are written, as one
    /// vectored write; returns without waiting for it, so the next block can arrive meanwhile.
    /// Starts a background sync every [`WRITEBACK_BYTES`].
    async fn submit(&mut self, chunks: Vec<Bytes>) -> Result<(), ContentError> {
        self.settle().await?;
        let file = self.file.clone().ok_or_else(Self::closed)?;
        let before = self.written;
        self.written += chunks.iter().map(|c| c.len() as u64).sum::<u64>();
        let sync_file = file.clone();
        self.in_flight = Some(match self.direct.take() {
            Some(direct) => tokio::task::spawn_blocking(move || direct.write(&file, &chunks, before).map(Some)),
            // Writes go at the file's offset: one block at a time, in order, and nothing else
            // moves it.
            None if self.direct_allowed => return Err(Self::closed()),
            None => tokio::task::spawn_blocking(move || write_all_vectored(&file, &chunks).map(|()| None)),
        });
        let sync_done = self.syncing.as_ref().is_none_or(|t| t.is_finished());
        if sync_done && self.written - self.sync_mark >= WRITEBACK_BYTES {
            self.settle_sync().await?;
            self.sync_mark = self.written;
            self.syncing = Some(tokio::task::spawn_blocking(move || sync_file.sync_data()));
        }
        Ok(())
    }
}

/// Writes every byte of `chunks` at `file`'s offset, by `writev`s of at most [`IOV_MAX`] slices.
fn write_all_vectored(mut file: &std::fs::File, chunks: &[Bytes]) -> io::Result<()> {
    use std::io::{IoSlice, Write};
    for group in chunks.chunks(IOV_MAX) {
        let mut slices: Vec<IoSlice<'_>> = group.iter().map(|c| IoSlice::new(c)).collect();
        let mut left = &mut slices[..];
        while !left.is_empty() {
            match file.write_vectored(left) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut left, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Slices one `writev` takes at most (Linux's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

#[async_trait]
impl ContentWriter for FsWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), ContentError> {
        if self.file.is_none() {
            return Err(Self::closed());
        }
        if self.pending.is_empty() && chunk.len() >= WRITE_BLOCK {
            // A whole block already: handed over as it is (copied only into a direct writer's
            // aligned buffer).
            return self.submit(vec![chunk]).await;
        }
        self.pending.extend_from_slice(&chunk);
        if self.pending.len() >= WRITE_BLOCK {
            let block = self.pending.split().freeze();
            self.pending.reserve(WRITE_BLOCK);
            self.submit(vec![block]).await?;
        }
        Ok(())
    }

    /// The chunks as they are, in one write (after what `write` gathered): vectored, or copied
    /// into a direct writer's aligned buffer.
    async fn write_block(&mut self, block: Block) -> Result<(), ContentError> {
        if self.file.is_none() {
            return Err(Self::closed());
        }
        let mut chunks = Vec::with_capacity(block.chunks().len() + 1);
        if !self.pending.is_empty() {
            chunks.push(self.pending.split().freeze());
        }
        chunks.extend(block.into_chunks());
        if chunks.is_empty() {
            return Ok(());
        }
        self.submit(chunks).await
    }

    async fn commit(mut self: Box<Self>) -> Result<(), ContentError> {
        if self.direct_allowed && self.direct.is_none() && self.in_flight.is_none() {
            // A write failed (its task took the direct writer): nothing may be published.
            return Err(Self::closed());
        }
        if !self.pending.is_empty() {
            let block = self.pending.split().freeze();
            self.submit(vec![block]).await?;
        }
        self.settle().await?;
        self.settle_sync().await?;
        let file = self.file.take().ok_or_else(Self::closed)?;
        let (tmp, dest, objects, durable) =
            (self.tmp.clone(), self.dest.clone(), self.objects.clone(), self.durable_dirs.clone());
        let (direct, written) = (self.direct.take(), self.written);
        // The whole commit on one thread of the blocking pool (one hand-over, not one per step):
        // the direct writer's last bytes, then the publication.
        let renamed = tokio::task::spawn_blocking(move || {
            if let Some(Err(e)) = direct.map(|d| d.finish(&file, written)) {
                return (false, Err(e));
            }
            publish(&file, &tmp, &dest, &objects, &durable)
        })
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
pub(super) fn publish(
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
/// first poll on). Holds no thread while the caller waits (a slow client costs a block of
/// memory, not a thread).
///
/// With `direct` (a file in direct mode, `range` starting on a [`DIRECT_ALIGN`] boundary),
/// every block starts on one: each read asks for whole units, and a short count comes only at
/// the end of the file.
pub(super) fn read_blocks(file: Arc<std::fs::File>, range: Range<u64>, direct: bool) -> ContentStream {
    type Pending = tokio::task::JoinHandle<io::Result<Bytes>>;
    fn start(file: &Arc<std::fs::File>, at: u64, end: u64, direct: bool) -> Option<Pending> {
        if at >= end {
            return None;
        }
        let len = (end - at).min(READ_CHUNK as u64) as usize;
        let file = file.clone();
        Some(tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            if !direct && len < DIRECT_MIN as usize {
                // A block of a file read through the page cache, smaller than a direct file's
                // smallest: memory of its size rather than a pooled megabyte.
                let mut buf = bytes::BytesMut::zeroed(len);
                file.read_exact_at(&mut buf, at)?;
                return Ok(buf.freeze());
            }
            // A pooled buffer: it goes back to the pool once the block is sent and dropped.
            let mut buf = AlignedBuf::take();
            if direct {
                read_direct(&file, &mut buf, len, at)?;
            } else {
                file.read_exact_at(&mut buf.bytes_mut()[..len], at)?;
            }
            buf.filled = len;
            Ok(buf.into_bytes())
        }))
    }
    // The first block is read when the stream is first polled: a stream made ahead of its
    // turn (the content channel opens each file one ahead of its window) holds no block.
    futures_util::stream::try_unfold((file, range.start, range.end, None), move |(file, at, end, pending)| async move {
        let Some(pending) = pending.or_else(|| start(&file, at, end, direct)) else {
            return Ok(None);
        };
        let block = pending
            .await
            .map_err(|e| ContentError::Unavailable(anyhow::anyhow!("a read task failed: {e}")))?
            .map_err(|e| ContentError::io(e, "failed to read content"))?;
        let at = at + block.len() as u64;
        let next = start(&file, at, end, direct);
        Ok(Some((block, (file, at, end, next))))
    })
    .boxed()
}

pub(super) fn clamp(range: Option<Range<u64>>, size: u64) -> Result<Range<u64>, ContentError> {
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
            direct: self.direct.then(DirectWriter::new),
            direct_allowed: self.direct,
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

    /// The check, the temporary file, its write (direct from [`DIRECT_MIN`] bytes, as a
    /// writer's), and the commit ([`publish`]) in one task of the blocking pool.
    async fn put_verified(&self, key: &ContentKey, block: Block, verify: Verify) -> Result<Verdict, ContentError> {
        let tmp = self.tmp.join(uuid::Uuid::new_v4().simple().to_string());
        if let Ok(mut live) = self.live.lock() {
            live.insert(tmp.clone());
        }
        let (dest, objects, durable, direct) =
            (self.path(key), self.objects.clone(), self.durable_dirs.clone(), self.direct);
        let task_tmp = tmp.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let tmp = task_tmp;
            if let Err(reason) = verify(block.chunks()) {
                return Ok(Err(reason));
            }
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| ContentError::io(e, "failed to create a temporary file"))?;
            let len = block.len() as u64;
            let written = if direct {
                DirectWriter::new().write(&file, block.chunks(), 0).and_then(|d| d.finish(&file, len))
            } else {
                write_all_vectored(&file, block.chunks())
            };
            let (moved, outcome) = match written {
                Ok(()) => publish(&file, &tmp, &dest, &objects, &durable),
                Err(e) => (false, Err(e)),
            };
            if !moved {
                let _ = std::fs::remove_file(&tmp);
            }
            outcome.map(Ok).map_err(|e| ContentError::io(e, "failed to commit content"))
        })
        .await
        .map_err(|e| ContentError::Unavailable(anyhow::anyhow!("a commit task failed: {e}")));
        if let Ok(mut live) = self.live.lock() {
            live.remove(&tmp);
        }
        outcome?
    }

    async fn read(&self, key: &ContentKey, range: Option<Range<u64>>) -> Result<ContentStream, ContentError> {
        let path = self.path(key);
        let aligned = range.as_ref().is_none_or(|r| r.start % DIRECT_ALIGN as u64 == 0);
        let direct = self.direct && aligned;
        let (file, size, direct) = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(path)?;
            let size = file.metadata()?.len();
            let direct = direct && size >= DIRECT_MIN && set_direct(&file, true)?;
            Ok::<_, io::Error>((file, size, direct))
        })
        .await
        .map_err(|e| ContentError::Unavailable(anyhow::anyhow!("an open task failed: {e}")))?
        .map_err(|e| ContentError::io(e, "failed to open content"))?;
        let range = clamp(range, size)?;
        Ok(read_blocks(Arc::new(file), range, direct))
    }

    /// One `stat`, on the calling thread: it reads a directory entry and an inode that are in
    /// memory but for a cold start (the objects' directories are few and used by every file),
    /// and a trip to the blocking pool would cost more than the call (two context switches; a
    /// received file looks twice). [`ContentStore::sizes`] of many keys still goes to the pool.
    async fn size(&self, key: &ContentKey) -> Result<Option<u64>, ContentError> {
        match std::fs::metadata(self.path(key)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ContentError::io(e, "failed to read content metadata")),
        }
    }

    async fn sizes(&self, keys: &[ContentKey]) -> Result<Vec<Option<u64>>, ContentError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let paths: Vec<PathBuf> = keys.iter().map(|k| self.path(k)).collect();
        tokio::task::spawn_blocking(move || {
            paths
                .iter()
                .map(|p| match std::fs::metadata(p) {
                    Ok(m) => Ok(Some(m.len())),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(ContentError::io(e, "failed to read content metadata")),
                })
                .collect()
        })
        .await
        .map_err(|e| ContentError::Unavailable(anyhow::anyhow!("a metadata task failed: {e}")))?
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
