//! A file's previous content, kept while a received edit's bytes are on their way (issue 13).
//!
//! A member's edit of a file comes as a new document (a new `internal_vfs_id`, `md5sum`, `size`)
//! before its bytes (`files::received`). Until they land, the file answers 409 "retry later".
//! Were the previous version's bytes deleted at once, as a replaced version's are, and the bytes
//! of the edit never came (the sharing ends first: revoked, left, the sender's quota or disk
//! gone), the file would be lost on this instance, the bytes it had before the edit included:
//! on the owner, its own file. So the previous version is *held*:
//!
//! 1. **When**: a received batch is about to replace a file's current version, whose bytes are
//!    here, by one whose bytes are not ([`Files::hold_replaced`], before the batch is written).
//!    A durable record, a `_local` document of [`HELD_DOCTYPE`] named by the held version, with
//!    the file's id and the version's `md5sum` and `size`, is written before the document that
//!    stops naming it: so neither the release that follows a received batch
//!    (`Files::release_versions`) nor the sweep ever deletes it (both look at the holds after the
//!    index said nothing names the version: a hold written after that look belongs to a write
//!    made after it, when the version was still named). One hold per file: a second edit whose
//!    bytes do not come either keeps the first hold (the last version whose bytes were here).
//! 2. **Released** when the file's current version has its bytes here: at once when received
//!    bytes are committed ([`Files::finish_received`]), otherwise at the next sweep (an upload
//!    replaced it, the file was destroyed or removed). The held version then goes as the
//!    batch that replaced it would have let it go: deleted at once if nothing names it, or left
//!    to the sweep on a member whose own edits come back as the owner's conflict copies
//!    (`sharing::receive::FilesHere::keep_unnamed`).
//! 3. **Used** when the sharing ends before the bytes came (`sharing::ended`): the file gets its
//!    held version back ([`Files::revert_held`]: a new revision naming it, with its `md5sum`
//!    and `size`, the rest of the document as received) instead of moving to the trash. The
//!    edit whose bytes never came is dropped; nothing the instance had is lost.
//!
//! What a hold does not do: a held version is not counted in the quota's bytes used (the
//! document counts the edit's size), and while the edit's bytes are awaited the file still
//! answers 409: its document says the edit, whose bytes these are not.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::content::ContentKey;
use super::{internal, model, version_key, Files, Kind, Result};
use crate::store::{Body, DocId, DocWrite, Doctype, StoreError};

/// Where holds are kept: one `_local` document per held version, named by the version.
pub const HELD_DOCTYPE: &str = "io.hearth.files-held";

fn held() -> Doctype {
    Doctype::parse(HELD_DOCTYPE).unwrap_or_else(|_| unreachable!("static doctype"))
}

/// A held version (the body of its record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The file (its id here) whose previous version this is.
    pub file: String,
    pub md5sum: String,
    /// Its `size` member as the document had it (Cozy writes bytes as a decimal string).
    pub size: serde_json::Value,
    /// Whether the version is deleted as soon as the hold goes, if nothing names it, rather
    /// than left to the sweep (as the batch that replaced it would have: see
    /// `sharing::receive::FilesHere::keep_unnamed`).
    #[serde(default)]
    pub release: bool,
}

/// The holds of one instance in this process, by file: (held version, its record).
pub(super) type Holds = std::sync::Mutex<HashMap<String, (String, Held)>>;

impl Files {
    /// Reads the records of the holds (at open).
    pub(super) async fn load_holds(&self) -> Result<()> {
        let mut by_file = HashMap::new();
        for doc in self.store.local_docs(&held()).await? {
            match serde_json::from_str::<Held>(doc.body.as_str()) {
                Ok(h) => {
                    by_file.insert(h.file.clone(), (doc.id, h));
                }
                Err(e) => tracing::warn!(version = %doc.id, error = %e, "an unreadable hold record is ignored"),
            }
        }
        *self.holds.lock().map_err(|_| internal("holds poisoned"))? = by_file;
        Ok(())
    }

    /// The hold of file `id`, if it has one: (held version, record).
    pub fn held_of(&self, id: &str) -> Option<(String, Held)> {
        self.holds.lock().ok()?.get(id).cloned()
    }

    /// Whether version `vfs_id` is held (see the module docs). Asks the store, so that holds
    /// made by another process serving the same instance count too.
    pub(super) async fn is_held(&self, vfs_id: &str) -> Result<bool> {
        if self.holds.lock().map_or(true, |h| h.values().any(|(v, _)| v == vfs_id)) {
            return Ok(true);
        }
        match self.store.get_local(&held(), vfs_id).await {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Step 1 of the module docs, for a batch of received file documents about to be written:
    /// holds the current version of each file it replaces by a version whose bytes are not
    /// here. `release`: whether a version the hold leaves unnamed is deleted when the hold
    /// goes ([`Held::release`]). Answers the holds made.
    pub async fn hold_replaced(&self, writes: &[DocWrite], release: bool) -> Result<usize> {
        // The new version each live file document names, where it differs from the one here.
        let ids: Vec<String> = writes.iter().map(|w| w.id.as_str().to_owned()).collect();
        self.sync().await?;
        let entries = self.index.get_many(&ids).await?;
        let mut replaced: Vec<(String, String, String)> = Vec::new();
        for (w, e) in writes.iter().zip(entries) {
            let Some(Some(current)) = e.filter(|e| e.kind == Kind::File).map(|e| e.vfs_id) else { continue };
            let new = w.body.get("internal_vfs_id").and_then(|v| v.as_str().map(str::to_owned));
            let Some(new) = new.filter(|n| !w.deleted && *n != current) else { continue };
            if self.held_of(w.id.as_str()).is_none() {
                replaced.push((w.id.as_str().to_owned(), current, new));
            }
        }
        if replaced.is_empty() {
            return Ok(0);
        }
        // Held only when the current version's bytes are here and the new one's are not.
        let keys = |pick: fn(&(String, String, String)) -> &String| -> Result<Vec<ContentKey>> {
            replaced.iter().map(|r| version_key(pick(r)).ok_or_else(|| internal("invalid version id"))).collect()
        };
        let (now, next) = (self.present(&keys(|r| &r.1)?).await?, self.present(&keys(|r| &r.2)?).await?);
        let mut made = 0;
        for ((id, current, _), (here, coming)) in replaced.iter().zip(now.into_iter().zip(next)) {
            if !here || coming {
                continue;
            }
            let Some(doc) = DocId::parse(id).ok() else { continue };
            let Some((_, body)) = self.live_docs(vec![doc]).await?.remove(id.as_str()) else { continue };
            if body.get("internal_vfs_id").and_then(|v| v.as_str().map(str::to_owned)).as_ref() != Some(current) {
                continue;
            }
            let Some(md5sum) = body.get("md5sum").and_then(|v| v.as_str().map(str::to_owned)) else { continue };
            let Some(size) = body.get("size") else { continue };
            let h = Held { file: id.clone(), md5sum, size, release };
            self.write_hold(current, &h).await?;
            self.holds.lock().map_err(|_| internal("holds poisoned"))?.insert(id.clone(), (current.clone(), h));
            made += 1;
        }
        Ok(made)
    }

    async fn write_hold(&self, vfs_id: &str, h: &Held) -> Result<()> {
        let body = match serde_json::to_value(h) {
            Ok(serde_json::Value::Object(m)) => Body::from_map(&m),
            _ => return Err(internal("a hold does not serialise")),
        };
        self.store.put_local(&held(), vfs_id, body).await?;
        Ok(())
    }

    /// Drops the hold of file `id` (its record, then this process's note of it); its version is
    /// then released if nothing names it and the hold says so ([`Held::release`]), else left
    /// to the sweep. Answers whether it had one.
    async fn drop_hold(&self, id: &str) -> Result<bool> {
        let Some((vfs_id, h)) = self.held_of(id) else { return Ok(false) };
        match self.store.delete_local(&held(), &vfs_id).await {
            Ok(()) | Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        self.holds.lock().map_err(|_| internal("holds poisoned"))?.remove(id);
        if h.release {
            self.release_versions(&HashSet::from([vfs_id])).await?;
        }
        Ok(true)
    }

    /// Step 2 of the module docs: drops the hold of each of `ids` whose file's current version
    /// has its bytes here, or which is no longer a file here. Answers the holds dropped.
    pub(super) async fn release_holds(&self, ids: &[String]) -> Result<usize> {
        let ids: Vec<String> = ids.iter().filter(|id| self.held_of(id).is_some()).cloned().collect();
        if ids.is_empty() {
            return Ok(0);
        }
        self.sync().await?;
        let entries = self.index.get_many(&ids).await?;
        let mut dropped = 0;
        for (id, e) in ids.iter().zip(entries) {
            let key =
                e.filter(|e| e.kind == Kind::File && !e.trashed).and_then(|e| e.vfs_id).and_then(|v| version_key(&v));
            let settled = match key {
                Some(key) => self.content.size(&key).await?.is_some(),
                None => true,
            };
            if settled && self.drop_hold(id).await? {
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// Every hold of this process, by file (for the sweep).
    pub(super) fn held_files(&self) -> Vec<String> {
        self.holds.lock().map(|h| h.keys().cloned().collect()).unwrap_or_default()
    }

    /// Step 3 of the module docs, under the write lock, for `item`, a file whose current
    /// version's bytes never came: gives it its held version back. Answers whether it did
    /// (false: no hold, or the held bytes are gone).
    pub(super) async fn revert_held(&self, item: &super::Item) -> Result<bool> {
        let Some((vfs_id, h)) = self.held_of(&item.id) else { return Ok(false) };
        let Some(key) = version_key(&vfs_id) else { return Ok(false) };
        if self.content.size(&key).await?.is_none() {
            return Ok(false);
        }
        let mut body = item.body.clone();
        model::set(&mut body, "internal_vfs_id", serde_json::json!(vfs_id));
        model::set(&mut body, "md5sum", serde_json::json!(h.md5sum));
        model::set(&mut body, "size", h.size);
        model::set(&mut body, "updated_at", serde_json::json!(super::now()));
        self.write_doc(&item.id, Some(&item.rev), false, body).await?;
        self.sync().await?;
        self.drop_hold(&item.id).await?;
        Ok(true)
    }
}
