//! Content received from a sharing member (issue 13, item 2): a file document arrives by the
//! replicator naming its version (`internal_vfs_id`, `md5sum`, `size`) before its bytes; the
//! bytes come apart, on the content channel (`sync::content` sends them, `http::content`
//! receives them), and are stored here under the *same* version id the sender uses. So the
//! content of a file is here exactly when the object its document names exists:
//! - [`Files::content_needs`] answers, for the versions a member offers, whether this instance
//!   lacks each (the "which files need content" question of Cozy's files sharing);
//! - [`Files::begin_received`] / [`ReceivedContent::write`] / [`Files::finish_received`] write
//!   it to a temporary object while computing its MD5 and size, check both against the
//!   *document here* (never against what the sender claims), then commit the object, which
//!   makes it visible atomically under its key: a reader sees no object, or the whole verified
//!   one. Until then `GET /files/download` answers 409 (see `http::files`).
//!
//! A cut transfer leaves a temporary object the sweep removes; the version is registered as
//! being written for the duration, so the sweep never takes it half-way.

use super::content::{Block, ContentKey};
use super::index::Entry;
use super::{internal, version_key, Files, FilesError, Kind, Reserved, Result, Sink, Writing};
use crate::store::tracking::SharedChange;
use crate::store::DocId;
use bytes::Bytes;
use hearth_replicator::rev::Rev;
use md5::Digest;
use std::sync::atomic::Ordering;

/// What this instance needs of one version of a file a member offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentNeed {
    /// The file here names this version and its bytes are not here: send them.
    Missing,
    /// The bytes are here already.
    Present,
    /// The file here does not name this version (not arrived yet, replaced since, deleted, a
    /// directory): nothing to send now.
    Stale,
    /// Another transfer of this version is being written here right now.
    InProgress,
}

impl ContentNeed {
    pub fn as_str(self) -> &'static str {
        match self {
            ContentNeed::Missing => "missing",
            ContentNeed::Present => "present",
            ContentNeed::Stale => "stale",
            ContentNeed::InProgress => "in_progress",
        }
    }
}

/// A received version being written: feed it with [`ReceivedContent::write`], then
/// [`Files::finish_received`]. Dropping it discards what was written.
pub struct ReceivedContent {
    /// The file (its id here) and the version received.
    file: String,
    vfs_id: String,
    body: Body,
    size: u64,
    expected_size: u64,
    expected_md5: String,
    /// Its bytes, counted against the quota while it is received.
    reserved: Reserved,
    _writing: Writing,
    /// Its version among those arriving (see [`Files::arriving`]).
    _arriving: Writing,
}

impl ReceivedContent {
    /// Chunks smaller than this are gathered before they go in a [`Body::Whole`]'s block.
    const SMALL: usize = 4096;

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes one chunk: `BadRequest` as soon as the bytes go past the document's `size`.
    pub async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.size += chunk.len() as u64;
        if self.size > self.expected_size {
            return Err(FilesError::BadRequest(format!(
                "the content is longer than the file's size ({} bytes)",
                self.expected_size
            )));
        }
        match &mut self.body {
            Body::Streamed(sink) => sink.push(chunk).await,
            Body::Whole(_, block, small) => {
                // Chunks under `SMALL` (a sender of tiny chunks) are gathered, each byte copied
                // once, so the block's list stays short (at most two entries per `SMALL` bytes).
                if chunk.len() < Self::SMALL {
                    small.extend_from_slice(&chunk);
                    if small.len() >= Self::SMALL {
                        block.push(small.split().freeze());
                    }
                } else {
                    block.push(small.split().freeze());
                    block.push(chunk);
                }
                Ok(())
            }
        }
    }

    /// Drops what was written (the temporary object goes).
    pub async fn abort(self) {
        if let Body::Streamed(sink) = self.body {
            sink.writer.abort().await;
        }
    }
}

/// Where a received version's bytes go until [`Files::finish_received`].
enum Body {
    /// To a temporary object as they come, hashed on the way ([`Sink`]): a version larger than
    /// [`Sink::BLOCK`].
    Streamed(Sink),
    /// Kept in memory (at most [`Sink::BLOCK`] bytes, the size of a block a [`Sink`] gathers
    /// anyway), then checked and written in one go (`ContentStore::put_verified`): no
    /// temporary object, hashing thread or write task for each of the many small files of a
    /// folder.
    Whole(ContentKey, Block, bytes::BytesMut),
}

impl Files {
    /// For each (file `id`, version `vfs_id`) asked (ids of this instance), what its document
    /// says of that version: (size, md5sum); `None` when the winning document is not a file
    /// naming `vfs_id`. The index must have been caught up: it picks the candidates (one
    /// lookup), then their documents are read (one read for all) and decide, since the index
    /// may lag them: a revision received since must never pair its `md5sum` with another
    /// version (see `Files::load`).
    async fn named_versions(&self, asked: &[(String, String)]) -> Result<Vec<Option<(u64, String)>>> {
        let ids: Vec<String> = asked.iter().map(|(id, _)| id.clone()).collect();
        let entries = self.index.get_many(&ids).await?;
        let named = self.named_in(asked, entries).await?;
        Ok(named.into_iter().map(|n| n.map(|(_, size, md5)| (size, md5))).collect())
    }

    /// [`Files::named_versions`] with the index's entries of the files already read, each with
    /// the revision of the document read (the winner that names the version).
    async fn named_in(
        &self,
        asked: &[(String, String)],
        entries: Vec<Option<Entry>>,
    ) -> Result<Vec<Option<(Rev, u64, String)>>> {
        let candidate = |(_, vfs_id): &(String, String), e: &Option<Entry>| {
            e.as_ref().is_some_and(|e| e.kind == Kind::File && e.vfs_id.as_deref() == Some(vfs_id.as_str()))
        };
        let keys: Vec<DocId> = asked
            .iter()
            .zip(&entries)
            .filter(|(a, e)| candidate(a, e))
            .filter_map(|((id, _), _)| DocId::parse(id).ok())
            .collect();
        let docs = self.live_docs(keys).await?;
        Ok(asked
            .iter()
            .zip(&entries)
            .map(|(a, e)| {
                let (id, vfs_id) = a;
                let (rev, body) = docs.get(id).filter(|_| candidate(a, e))?;
                let node = super::model::node_of(id, body)?;
                let named = node.kind == Kind::File && node.vfs_id.as_deref() == Some(vfs_id.as_str());
                let md5 = body.get("md5sum").and_then(|v| v.as_str().map(str::to_owned));
                md5.filter(|_| named).map(|md5| (rev.clone(), node.size, md5))
            })
            .collect())
    }

    /// Whether this instance lacks the bytes of each version `vfs_id` of file `id` asked about.
    pub async fn content_needs(&self, asked: &[(String, String)]) -> Result<Vec<ContentNeed>> {
        self.sync().await?;
        // The versions the documents here name (the others are stale)...
        let named = self
            .named_here(asked)
            .await?
            .into_iter()
            .zip(asked)
            .map(|(named, (_, vfs_id))| match named {
                Some(_) => version_key(vfs_id).map(Some).ok_or_else(|| internal("invalid version id")),
                None => Ok(None),
            })
            .collect::<Result<Vec<Option<ContentKey>>>>()?;
        // ...then whether their bytes are here, all at once, and only for those absent whether
        // they are being written: a reception committed in between is present, one begun in
        // between is in progress (looked at the other way round, it would be answered missing
        // and its sender refused with a conflict).
        let keys: Vec<ContentKey> = named.iter().flatten().cloned().collect();
        let mut here = self.present(&keys).await?.into_iter();
        let mut out = Vec::with_capacity(asked.len());
        for ((_, vfs_id), key) in asked.iter().zip(named) {
            out.push(match key {
                None => ContentNeed::Stale,
                Some(_) if here.next().unwrap_or(false) => ContentNeed::Present,
                Some(_) if self.writing.lock().is_ok_and(|w| w.contains(vfs_id)) => ContentNeed::InProgress,
                Some(_) => ContentNeed::Missing,
            });
        }
        Ok(out)
    }

    /// Whether the object of each key is in the content store, in order (one call for all).
    pub(super) async fn present(&self, keys: &[ContentKey]) -> Result<Vec<bool>> {
        let sizes = self.content.sizes(keys).await?;
        if sizes.len() != keys.len() {
            return Err(internal(&format!("the content store answered {} sizes for {} keys", sizes.len(), keys.len())));
        }
        Ok(sizes.into_iter().map(|s| s.is_some()).collect())
    }

    /// Each version `vfs_id` of file `id` as [`Files::named_versions`], or else as a
    /// dissociated copy of `id` names it, the first one or the one of that version (a file that
    /// left the sharing before its bytes arrived here: the copy kept of it still lacks them,
    /// see `files::shared`).
    async fn named_here(&self, asked: &[(String, String)]) -> Result<Vec<Option<(u64, String)>>> {
        let mut named = self.named_versions(asked).await?;
        let copy_ids: [fn(&str, &str) -> String; 2] =
            [|id, _| super::shared::dissociated_id(id), |id, vfs_id| super::shared::dissociated_version_id(id, vfs_id)];
        for copy_id in copy_ids {
            let missed: Vec<usize> = (0..asked.len()).filter(|&i| named[i].is_none()).collect();
            if missed.is_empty() {
                break;
            }
            let copies: Vec<(String, String)> =
                missed.iter().map(|&i| (copy_id(&asked[i].0, &asked[i].1), asked[i].1.clone())).collect();
            for (i, copy) in missed.into_iter().zip(self.named_versions(&copies).await?) {
                named[i] = copy;
            }
        }
        Ok(named)
    }

    /// Whether the bytes of file `id`'s current version are here (a directory: true).
    pub async fn has_content(&self, id: &str) -> Result<bool> {
        self.sync().await?;
        self.has_content_synced(id).await
    }

    async fn has_content_synced(&self, id: &str) -> Result<bool> {
        let Some(entry) = self.index.get(id).await? else { return Ok(false) };
        match (entry.kind, entry.vfs_id.as_deref().and_then(version_key)) {
            (Kind::Directory, _) => Ok(true),
            (Kind::File, Some(key)) => Ok(self.content.size(&key).await?.is_some()),
            (Kind::File, None) => Ok(false),
        }
    }

    /// A file's current version as the content channel offers it: (vfs_id, size, md5sum);
    /// `None` for a directory, a deleted or unknown id, or a file without a version.
    pub async fn current_version(&self, id: &str) -> Result<Option<(String, u64, String)>> {
        Ok(self.current_versions(&[id.to_owned()]).await?.pop().flatten())
    }

    /// [`Files::current_version`] of each id, with whether its bytes are here.
    pub async fn current_versions(&self, ids: &[String]) -> Result<Vec<Option<(String, u64, String)>>> {
        Ok(self.current_at(ids).await?.into_iter().map(|v| v.map(|(_, v)| v)).collect())
    }

    /// [`Files::current_versions`], each with the revision of the document it was read from.
    async fn current_at(&self, ids: &[String]) -> Result<Vec<Option<(Rev, (String, u64, String))>>> {
        self.sync().await?;
        // The version each file's index entry names, then what its document says of it.
        let entries = self.index.get_many(ids).await?;
        let asked: Vec<(String, String)> = ids
            .iter()
            .zip(&entries)
            .map(|(id, e)| match e {
                Some(Entry { kind: Kind::File, vfs_id: Some(v), .. }) => (id.clone(), v.clone()),
                // Never named: no index entry names an empty version.
                _ => (id.clone(), String::new()),
            })
            .collect();
        let named = self.named_in(&asked, entries).await?;
        Ok(asked.into_iter().zip(named).map(|((_, v), n)| n.map(|(rev, size, md5)| (rev, (v, size, md5)))).collect())
    }

    /// What the content channel offers for each of these rows of a sharing's feed (rows of
    /// files, in any order; `sync::content` sends them), as [`Files::current_versions`]:
    /// (vfs_id, size, md5sum), or `None` when nothing is to be offered. Never anything made
    /// after a file left the sharing (the rule of `files::shared`, "Leaving keeps a copy"):
    /// - a file in the sharing: its current version;
    /// - a file that left the sharing and is live here (a `removed` row: moved out, on this
    ///   instance): its current version only while its winning revision is still the one it
    ///   left at (`SharedChange::left_rev`), so a member whose dissociated copy names that
    ///   version still gets its bytes. Once the file changed here, nothing: new content would
    ///   reach a member that answers `missing` for it, whatever its copy names (a rename or a
    ///   move, which keeps the content, offers nothing either: the revision is all the row
    ///   knows). A removed row without that revision (recorded before it was kept) offers
    ///   nothing: it cannot tell, and a copy left without its bytes is the lesser harm;
    /// - for the others (a file gone from here: a member moved it out, and this instance keeps
    ///   a dissociated copy of it): the version its copy names, as [`Files::left_versions`]
    ///   says (nothing made after it left either).
    pub async fn offered_versions(&self, rows: &[SharedChange]) -> Result<Vec<Option<(String, u64, String)>>> {
        let ids: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
        let mut versions: Vec<Option<(String, u64, String)>> = rows
            .iter()
            .zip(self.current_at(&ids).await?)
            .map(|(row, current)| {
                let (rev, version) = current?;
                (!row.removed || row.left_rev.as_ref() == Some(&rev)).then_some(version)
            })
            .collect();
        let gone: Vec<usize> = (0..ids.len()).filter(|&i| versions[i].is_none()).collect();
        if !gone.is_empty() {
            let asked: Vec<String> = gone.iter().map(|&i| ids[i].clone()).collect();
            for (i, v) in gone.into_iter().zip(self.left_versions(&asked).await?) {
                versions[i] = v;
            }
        }
        Ok(versions)
    }

    /// For each of `ids`, files gone from this instance, the version its dissociated copy names
    /// (as [`Files::current_versions`]), when the copy is as it was made and its bytes are here;
    /// else `None`. A copy at its first revision names the version the file had when it left a
    /// sharing (`files::shared`, "Leaving keeps a copy"), which the sharing's members knew: a
    /// member whose own file (moved out by it before the bytes arrived) names that version still
    /// lacks them. A copy changed since (its owner's own file now: restored, renamed, given new
    /// content) is never offered, so nothing made after the file left reaches a member; and a
    /// copy whose bytes are not here is not offered either (nothing could arrive for it).
    pub async fn left_versions(&self, ids: &[String]) -> Result<Vec<Option<(String, u64, String)>>> {
        let copies: Vec<String> = ids.iter().map(|id| super::shared::dissociated_id(id)).collect();
        let mut versions = self.current_versions(&copies).await?;
        let named: Vec<DocId> = copies
            .iter()
            .zip(&versions)
            .filter(|(_, v)| v.is_some())
            .filter_map(|(c, _)| DocId::parse(c).ok())
            .collect();
        if named.is_empty() {
            return Ok(versions);
        }
        let leaves = self.store.doc_leaves(&super::doctype(), &named).await?;
        let keys: Vec<ContentKey> = versions.iter().flatten().filter_map(|(v, _, _)| version_key(v)).collect();
        let mut here = self.present(&keys).await?.into_iter();
        for (copy, v) in copies.iter().zip(versions.iter_mut()) {
            let Some((vfs_id, _, _)) = v else { continue };
            let first = DocId::parse(copy)
                .ok()
                .and_then(|d| leaves.get(&d).cloned())
                .is_some_and(|l| l.len() == 1 && l[0].0.pos == 1 && !l[0].1);
            let present = version_key(vfs_id).is_some() && here.next().unwrap_or(false);
            if !(first && present) {
                *v = None;
            }
        }
        Ok(versions)
    }

    /// Of `ids`, the files that have a version (what the content channel offers, as
    /// [`Files::current_versions`], from the index alone: no document is read): its size each,
    /// `None` for the others. For counting what is pending, at every status request.
    ///
    /// Three differences with what is offered ([`Files::offered_versions`]), all passing: a file
    /// document without an `md5sum` (hearth always writes one; a peer's document may lack it),
    /// and a file that left the sharing and changed here since (or whose row does not say when
    /// it left), are counted here and never offered, until the content checkpoint passes their
    /// row; and the size is the index's, which may lag the document by one edit.
    pub async fn version_sizes(&self, ids: &[String]) -> Result<Vec<Option<u64>>> {
        self.sync().await?;
        let entries = self.index.get_many(ids).await?;
        Ok(entries
            .into_iter()
            .map(|e| match e {
                Some(e) if e.kind == Kind::File && e.vfs_id.is_some() => Some(e.size),
                _ => None,
            })
            .collect())
    }

    /// Of `ids`, the files whose current version's bytes are not here: (size) each, `None`
    /// for the others. One index lookup and one look at the content store for all of them
    /// (this counts at every status request).
    pub async fn missing_content(&self, ids: &[String]) -> Result<Vec<Option<u64>>> {
        self.sync().await?;
        let entries = self.index.get_many(ids).await?;
        // Files: their size, and the key of their version when they name a valid one.
        let files: Vec<Option<(u64, Option<ContentKey>)>> = entries
            .into_iter()
            .map(|e| e.filter(|e| e.kind == Kind::File).map(|e| (e.size, e.vfs_id.as_deref().and_then(version_key))))
            .collect();
        let keys: Vec<ContentKey> = files.iter().flatten().filter_map(|(_, k)| k.clone()).collect();
        let mut present = self.present(&keys).await?.into_iter();
        Ok(files
            .into_iter()
            .map(|f| match f {
                Some((size, Some(_))) => (!present.next().unwrap_or(false)).then_some(size),
                Some((size, None)) => Some(size),
                None => None,
            })
            .collect())
    }

    /// Starts receiving version `vfs_id` of file `id`: `Conflict` when the document here does
    /// not name that version (or it is being received already), `Ok(None)` when its bytes are
    /// here already (nothing to write).
    pub async fn begin_received(&self, id: &str, vfs_id: &str) -> Result<Option<ReceivedContent>> {
        self.sync().await?;
        let asked = [(id.to_owned(), vfs_id.to_owned())];
        let Some((expected_size, expected_md5)) = self.named_here(&asked).await?.pop().flatten() else {
            return Err(FilesError::Conflict("the file here does not name this version".into()));
        };
        let key = version_key(vfs_id).ok_or_else(|| internal("invalid version id"))?;
        // Looked at first, so that a version already here is not put in the writing set (the
        // quota check does not count those among the present), then again once it is, in case
        // another transfer committed it meanwhile.
        if self.content.size(&key).await?.is_some() {
            return Ok(None);
        }
        {
            let mut w = self.writing.lock().map_err(|_| internal("writing set poisoned"))?;
            if w.contains(vfs_id) {
                return Err(FilesError::Conflict("this version is being received already".into()));
            }
            w.insert(vfs_id.to_owned());
        }
        let writing = Writing { set: self.writing.clone(), vfs_id: vfs_id.to_owned() };
        if self.content.size(&key).await?.is_some() {
            return Ok(None);
        }
        let reserved = self.reserve_received(expected_size).await?;
        let body = if expected_size <= Sink::BLOCK as u64 {
            Body::Whole(key, Block::default(), bytes::BytesMut::new())
        } else {
            Body::Streamed(Sink::new(self.content.create(&key).await?))
        };
        // Past its checks: its bytes are arriving (a refused one never was).
        self.arriving.lock().map_err(|_| internal("arriving set poisoned"))?.insert(vfs_id.to_owned());
        let arriving = Writing { set: self.arriving.clone(), vfs_id: vfs_id.to_owned() };
        Ok(Some(ReceivedContent {
            file: id.to_owned(),
            vfs_id: vfs_id.to_owned(),
            body,
            size: 0,
            expected_size,
            expected_md5,
            reserved,
            _writing: writing,
            _arriving: arriving,
        }))
    }

    /// Whether the bytes of version `vfs_id` are being received here now: a reception that
    /// passed its checks and has not ended (one whose sender stops sending ends after
    /// `files.body_idle_secs`). The content sender tells a relay waiting for bytes on their way
    /// from one waiting for bytes that do not come (`hearth_replicator::content::Stall`).
    pub fn arriving(&self, vfs_id: &str) -> bool {
        self.arriving.lock().is_ok_and(|a| a.contains(vfs_id))
    }

    /// Counts `size` bytes being received against the instance's quota, as a local upload is
    /// (the source of the rule: cozy-stack#2578, a sharing's files obey the receiver's quota):
    /// `QuotaExceeded` (413) when the bytes of content here, those being uploaded or received,
    /// and these do not fit. The documents of received files arrive before their bytes, and
    /// the bytes used (`Files::used`) count them all: while those fit the quota, so does any
    /// content; past it, the content actually here is counted (one size look-up per file).
    async fn reserve_received(&self, size: u64) -> Result<Reserved> {
        let _check = self.receiving_check.lock().await;
        let quota = self.quota().await?;
        let uploading = *self.reservations.bytes.lock().map_err(|_| internal("reservations poisoned"))?;
        let documents = self.used.load(Ordering::SeqCst);
        if documents.saturating_add(uploading) > quota {
            let mut present = 0u64;
            // A version being received is counted by its reservation (`receiving`) until both
            // go at once, under this lock (`finish_received`): never here besides, even once
            // its object is committed.
            let mut seen = self.writing.lock().map_err(|_| internal("writing set poisoned"))?.clone();
            let mut counted: Vec<(ContentKey, u64)> = Vec::new();
            for (vfs_id, bytes) in self.index.file_versions().await? {
                let Some(key) = version_key(&vfs_id) else { continue };
                if seen.insert(vfs_id) {
                    counted.push((key, bytes));
                }
            }
            // Looked at a thousand at a time (one call each), not one by one under the lock.
            for part in counted.chunks(1000) {
                let keys: Vec<ContentKey> = part.iter().map(|(k, _)| k.clone()).collect();
                for ((_, bytes), here) in part.iter().zip(self.present(&keys).await?) {
                    if here {
                        present = present.saturating_add(*bytes);
                    }
                }
            }
            let receiving = *self.receiving.bytes.lock().map_err(|_| internal("reservations poisoned"))?;
            let needed = present.saturating_add(uploading).saturating_add(receiving).saturating_add(size);
            if needed > quota {
                let free = quota.saturating_sub(needed.saturating_sub(size));
                return Err(FilesError::QuotaExceeded(format!(
                    "the file does not fit in the instance's quota: it is {size} bytes, {free} bytes are free \
                     (quota {quota} bytes, {present} bytes of content here): nothing was kept"
                )));
            }
        }
        let mut total = self.receiving.bytes.lock().map_err(|_| internal("reservations poisoned"))?;
        *total = total.saturating_add(size);
        Ok(Reserved { pool: self.receiving.clone(), bytes: size })
    }

    /// Ends a reception: the size and MD5 must be the document's (`Precondition` otherwise,
    /// nothing kept), then the object is committed, which makes it visible whole.
    pub async fn finish_received(&self, r: ReceivedContent) -> Result<u64> {
        let ReceivedContent { file, vfs_id, body, size, expected_size, expected_md5, reserved, _writing, _arriving } =
            r;
        let refused = move |digest: [u8; 16]| {
            let digest = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digest);
            (size != expected_size || digest != expected_md5).then(|| {
                format!(
                    "the content received ({size} bytes, md5 {digest}) is not the file's ({expected_size} bytes, md5 \
                     {expected_md5}): nothing was kept"
                )
            })
        };
        // Committed outside the quota lock, so that the commits (fsyncs) of files received at
        // once overlap, and the filesystem folds them into few journal commits.
        match body {
            Body::Streamed(sink) => {
                let (digest, writer) = sink.finish().await?;
                if let Some(reason) = refused(digest) {
                    writer.abort().await;
                    return Err(FilesError::Precondition(reason));
                }
                writer.commit().await?;
            }
            Body::Whole(key, mut block, small) => {
                block.push(small.freeze());
                let verify = Box::new(move |chunks: &[Bytes]| {
                    let mut md5 = md5::Md5::new();
                    for c in chunks {
                        md5.update(c);
                    }
                    refused(md5.finalize().into()).map_or(Ok(()), Err)
                });
                self.content.put_verified(&key, block, verify).await?.map_err(FilesError::Precondition)?;
            }
        }
        {
            // The bytes go from "being received" (`reserved`, and the version in the writing
            // set, which the quota check skips among the present) to "here" at once.
            let _check = self.receiving_check.lock().await;
            drop(reserved);
            drop(_writing);
            drop(_arriving);
        }
        tracing::debug!(version = %vfs_id, size, "received content committed");
        // The previous version held for it (see `held`) is not needed any more.
        if let Err(e) = self.release_holds(&file).await {
            tracing::warn!(version = %vfs_id, error = %e, "releasing a held version failed; the sweep will");
        }
        Ok(size)
    }
}
