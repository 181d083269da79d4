//! Uploads: the body streamed into a new content version while its MD5 is computed on a thread
//! of its own, then the atomic switch of the file document to that version (see "Writes" in
//! the module above).

use super::*;

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

/// Bytes reserved by uploads in progress, so concurrent uploads cannot together pass the quota.
#[derive(Default)]
pub(super) struct Reservations {
    pub(super) bytes: Mutex<u64>,
}

/// Releases its bytes when dropped.
pub(super) struct Reserved {
    pub(super) pool: Arc<Reservations>,
    pub(super) bytes: u64,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if let Ok(mut b) = self.pool.bytes.lock() {
            *b = b.saturating_sub(self.bytes);
        }
    }
}

/// A content version being written by this process (see "The sweep"), or another set's
/// registration of a version, removed when dropped.
pub(super) struct Writing {
    pub(super) set: Arc<Mutex<HashSet<String>>>,
    pub(super) vfs_id: String,
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
    sink: Sink,
    size: u64,
    /// Bytes this upload may still take: the declared size, or what the quota leaves.
    reserved: Reserved,
    quota_room: u64,
    _writing: Writing,
}

impl Upload {
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
                return Err(quota_exceeded(new_size, false, self.quota_room.saturating_sub(others)));
            }
            *total += more;
            self.reserved.bytes += more;
        }
        self.size = new_size;
        self.sink.push(chunk).await
    }
}

/// Where the bytes of an upload or of a received file go: the chunks, as they came, gathered
/// into blocks ([`Block`]) of about [`Sink::BLOCK`] bytes, each handed to the hashing thread
/// ([`Hasher`]) and to the content writer: few hand-overs, large (vectored) writes, and no
/// copy of the bytes on the way.
pub(super) struct Sink {
    pub(super) writer: Box<dyn ContentWriter>,
    md5: Hasher,
    block: Block,
}

impl Sink {
    pub(super) const BLOCK: usize = 1024 * 1024;
    /// A block is handed over at this many chunks even when smaller (a client sending tiny
    /// chunks): one vectored write takes at most 1,024.
    const MAX_CHUNKS: usize = 1024;

    pub(super) fn new(writer: Box<dyn ContentWriter>) -> Sink {
        Sink { writer, md5: Hasher::start(), block: Block::default() }
    }

    pub(super) async fn push(&mut self, chunk: Bytes) -> Result<()> {
        self.block.push(chunk);
        if self.block.len() >= Self::BLOCK || self.block.chunks().len() >= Self::MAX_CHUNKS {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let block = self.block.take();
        self.md5.update(block.clone()).await?;
        self.writer.write_block(block).await?;
        Ok(())
    }

    /// Hands over what is left and waits for the hash: the MD5 of every byte pushed, and the
    /// writer, to commit or abort. On an error the writer is aborted.
    pub(super) async fn finish(mut self) -> Result<([u8; 16], Box<dyn ContentWriter>)> {
        if let Err(e) = self.flush().await {
            self.writer.abort().await;
            return Err(e);
        }
        match self.md5.finish().await {
            Ok(digest) => Ok((digest, self.writer)),
            Err(e) => {
                self.writer.abort().await;
                Err(e)
            }
        }
    }
}

/// The MD5 of an upload, computed on a thread of its own while the chunks are written, so
/// hashing and writing overlap (MD5 runs at about the speed of a disk: one after the other,
/// they would halve an upload's throughput). At most [`Hasher::QUEUE`] blocks (of about
/// [`Sink::BLOCK`] bytes) wait for it.
pub(super) struct Hasher {
    pub(super) blocks: Option<tokio::sync::mpsc::Sender<Block>>,
    pub(super) digest: tokio::task::JoinHandle<[u8; 16]>,
}

impl Hasher {
    pub(super) const QUEUE: usize = 4;

    pub(super) fn start() -> Hasher {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Block>(Self::QUEUE);
        let digest = tokio::task::spawn_blocking(move || {
            let mut md5 = md5::Md5::new();
            while let Some(block) = rx.blocking_recv() {
                for chunk in block.chunks() {
                    md5.update(chunk);
                }
            }
            md5.finalize().into()
        });
        Hasher { blocks: Some(tx), digest }
    }

    pub(super) async fn update(&mut self, block: Block) -> Result<()> {
        let tx = self.blocks.as_ref().ok_or_else(|| internal("hasher closed"))?;
        tx.send(block).await.map_err(|_| internal("the hashing thread stopped"))
    }

    pub(super) async fn finish(mut self) -> Result<[u8; 16]> {
        self.blocks = None;
        (&mut self.digest).await.map_err(|e| FilesError::Internal(e.into()))
    }
}

impl Files {
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
                return Err(quota_exceeded(reserve, true, room.saturating_sub(*total)));
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
        Ok(Upload { target, spec, vfs_id, sink: Sink::new(writer), size: 0, reserved, quota_room, _writing: writing })
    }

    /// Ends an upload whose whole body was written: checks size and MD5, commits the content,
    /// then writes the document that points at it (the switch), and removes the old version.
    pub async fn finish_upload(&self, upload: Upload) -> Result<Item> {
        let Upload { target, spec, vfs_id, sink, size, reserved, quota_room: _, _writing } = upload;
        let (digest, writer) = sink.finish().await?;
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
                // The replaced version goes unless another document still names it (a
                // dissociated copy of this file, say); a version held for it is moot now.
                if let Err(e) = self.release_versions(&old.into_iter().collect()).await {
                    tracing::warn!(error = ?e, "failed to delete a replaced version; the sweep will");
                }
                if let Err(e) = self.release_holds(&item.id).await {
                    tracing::warn!(error = ?e, "failed to release a held version; the sweep will");
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
    pub(super) async fn switch(
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
        let taken = self.used.load(Ordering::SeqCst).saturating_sub(credit);
        if taken.saturating_add(size) > quota {
            return Err(quota_exceeded(size, true, quota.saturating_sub(taken)));
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
}
