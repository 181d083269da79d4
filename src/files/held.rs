//! A file's previous content, kept while a received edit's bytes are on their way (issue 13).
//!
//! A member's edit of a file comes as a new document (a new `internal_vfs_id`, `md5sum`, `size`)
//! before its bytes (`files::received`). Until they land, the file answers 409 "retry later".
//! Were the previous version's bytes deleted at once, as a replaced version's are, and the bytes
//! of the edit never came (the sharing ends first: revoked, left, the receiver's quota or disk
//! full), the file would be lost on this instance, the bytes it had before the edit included:
//! on the owner, its own file. So the last version whose bytes were here is *held*:
//!
//! 1. **When**: a received batch is about to replace a file's current version, whose bytes are
//!    here, by one whose bytes are not ([`Files::hold_replaced`], before the batch is written).
//!    A durable record, a `_local` document of [`HELD_DOCTYPE`] named by the held version, with
//!    the file's id and the version's `md5sum` and `size`, is written before the document that
//!    stops naming it: so neither the release that follows a received batch
//!    (`Files::release_versions`) nor the sweep ever deletes it (both look at the holds after the
//!    index said nothing names the version: a hold written after that look belongs to a write
//!    made after it, when the version was still named). The file's older holds then go (the
//!    version held now is newer, and here). A second edit whose bytes do not come either, on top
//!    of one whose bytes have not come, keeps the hold there is: the last version whose bytes
//!    were here.
//! 2. **Released** when the file's current version, another one, has its bytes here, or the
//!    file is gone (destroyed, removed): looked at when received bytes are committed
//!    ([`Files::finish_received`]), when an upload replaces the content, and by every sweep, for
//!    every record (those another process serving the instance made too). A file in the trash
//!    whose bytes never came keeps its hold. The held version then goes as the batch that
//!    replaced it would have let it go: deleted at once if nothing names it, or left to the
//!    sweep on a member whose own edits come back as the owner's conflict copies
//!    (`sharing::receive::FilesHere::keep_unnamed`). A received batch holds
//!    [`Files::hold_replaced`]'s guard from its holds to its release; a release waits for the
//!    batches under way, so it never judges a file between its hold and the write that follows
//!    (the file still names the held version then, and the hold would look moot), nor releases
//!    a hold that a batch relies on to skip making its own.
//! 3. **Used** when the sharing ends before the bytes came (`sharing::ended`): the file gets its
//!    held version back ([`Files::revert_held`]: a new revision naming it, with its `md5sum`
//!    and `size`, the rest of the document as received) instead of moving to the trash (one in
//!    the trash gets it back there). The edit whose bytes never came is dropped; nothing the
//!    instance had is lost. The records are read from the store there, so the process that
//!    settles the end uses the holds whichever process made them.
//!
//! 4. **Used** too, on the owner, when the member whose edit is awaited leaves or is revoked
//!    while the sharing goes on with others ([`Files::revert_departed`], from
//!    `sharing::ended::members_departed`): members talk only to the owner, so the bytes of a
//!    member's edit that the owner lacks can come from that member alone. The file gets its
//!    held version back if that edit is still its current version; the new revision reaches
//!    the other members as any edit of the owner's, and they get its bytes from the owner. A
//!    member's edit on top of the awaited one becomes the awaited edit (its sender's leaving
//!    is what counts then).
//!
//! 5. **Kept by a copy**: a file that leaves the sharing while its edit's bytes are awaited
//!    (moved out, trashed or removed by another member) is kept here as a dissociated copy
//!    (`files::shared`, "Leaving keeps a copy"); the copy names the held version, what this
//!    instance had, rather than the edit, whose bytes may never come
//!    ([`Files::with_held_version`]). The hold then goes with the file it was made for.
//!
//! What a hold does not do: a held version is not counted in the quota's bytes used (the
//! document counts the edit's size), and while the edit's bytes are awaited the file still
//! answers 409: its document says the edit, whose bytes these are not.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

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
    /// The edit awaited: the version that replaced this one (or the latest edit since, whose
    /// bytes are not here either), the sharing it came by and the member (its index there)
    /// that sent it. On the owner, that member gone is the end of the wait (step 4).
    #[serde(default)]
    pub awaited: Option<Awaited>,
}

/// The edit a hold waits for (see [`Held::awaited`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Awaited {
    pub version: String,
    pub sharing: String,
    pub from: usize,
}

/// The holds of one instance as this process last read or wrote them, by held version, and
/// the lock between received batches (shared) and releases (exclusive): see step 2.
#[derive(Default)]
pub(super) struct Holds {
    known: std::sync::Mutex<HashMap<String, Held>>,
    batches: Arc<tokio::sync::RwLock<()>>,
}

/// Held by a received batch of files from its holds until the versions it leaves unnamed are
/// released (see step 2 of the module docs).
pub struct HoldGuard {
    _batch: tokio::sync::OwnedRwLockReadGuard<()>,
}

impl Files {
    /// Reads every hold record from the store (this process's view of them made anew).
    pub(super) async fn load_holds(&self) -> Result<HashMap<String, Held>> {
        let mut all = HashMap::new();
        for doc in self.store.local_docs(&held()).await? {
            match serde_json::from_str::<Held>(doc.body.as_str()) {
                Ok(h) => {
                    all.insert(doc.id, h);
                }
                Err(e) => tracing::warn!(version = %doc.id, error = %e, "an unreadable hold record is ignored"),
            }
        }
        *self.holds.known.lock().map_err(|_| internal("holds poisoned"))? = all.clone();
        Ok(all)
    }

    /// The files (ids here) that have a hold, read from the store.
    pub async fn held_files(&self) -> Result<HashSet<String>> {
        Ok(self.load_holds().await?.into_values().map(|h| h.file).collect())
    }

    /// The holds of file `id` this process knows of: (held version, record).
    fn known_holds_of(&self, id: &str) -> Vec<(String, Held)> {
        self.holds
            .known
            .lock()
            .map(|k| k.iter().filter(|(_, h)| h.file == id).map(|(v, h)| (v.clone(), h.clone())).collect())
            .unwrap_or_default()
    }

    /// Whether version `vfs_id` is held (see the module docs). Asks the store when this process
    /// knows of no such hold, so that holds another process made count too.
    pub(super) async fn is_held(&self, vfs_id: &str) -> Result<bool> {
        if self.holds.known.lock().map_or(true, |k| k.contains_key(vfs_id)) {
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
    /// here, and notes the edit awaited (`from`: the sharing and the member that sent the
    /// batch) on the hold there is of a file whose bytes are awaited already. `release`:
    /// whether a version the hold leaves unnamed is deleted when the hold goes
    /// ([`Held::release`]). Answers the guard the batch keeps until it has released what it
    /// left unnamed.
    pub async fn hold_replaced(
        &self,
        writes: &[DocWrite],
        release: bool,
        from: Option<(&str, usize)>,
    ) -> Result<HoldGuard> {
        let guard = HoldGuard { _batch: self.holds.batches.clone().read_owned().await };
        // The files whose live document is replaced by one naming another version.
        let ids: Vec<String> = writes.iter().map(|w| w.id.as_str().to_owned()).collect();
        self.sync().await?;
        let entries = self.index.get_many(&ids).await?;
        let mut replaced: Vec<(String, String, String)> = Vec::new();
        for (w, e) in writes.iter().zip(entries) {
            let Some(Some(current)) = e.filter(|e| e.kind == Kind::File).map(|e| e.vfs_id) else { continue };
            let new = w.body.get("internal_vfs_id").and_then(|v| v.as_str().map(str::to_owned));
            // A version that names no valid key (a peer's document may say anything) has no
            // bytes to wait for: nothing to hold for it.
            let valid = |v: &String| version_key(v).is_some();
            if let Some(new) = new.filter(|n| !w.deleted && *n != current && valid(n) && valid(&current)) {
                replaced.push((w.id.as_str().to_owned(), current, new));
            }
        }
        if replaced.is_empty() {
            return Ok(guard);
        }
        // Held only when the current version's bytes are here and the new one's are not.
        let keys = |pick: fn(&(String, String, String)) -> &String| -> Vec<ContentKey> {
            replaced.iter().filter_map(|r| version_key(pick(r))).collect()
        };
        let (now, next) = (self.present(&keys(|r| &r.1)).await?, self.present(&keys(|r| &r.2)).await?);
        let awaited =
            |new: &str| from.map(|(s, i)| Awaited { version: new.to_owned(), sharing: s.to_owned(), from: i });
        let mut picked: Vec<(String, String, String)> = Vec::new();
        for ((id, current, new), (here, coming)) in replaced.into_iter().zip(now.into_iter().zip(next)) {
            if coming {
                continue;
            }
            if here {
                picked.push((id, current, new));
                continue;
            }
            // Awaited already: the hold there is now waits for this edit.
            for (v, mut h) in self.known_holds_of(&id) {
                h.awaited = awaited(&new);
                self.write_hold(&v, &h).await?;
            }
        }
        if picked.is_empty() {
            return Ok(guard);
        }
        let docs = self.live_docs(picked.iter().filter_map(|(id, _, _)| DocId::parse(id).ok()).collect()).await?;
        for (id, current, new) in picked {
            // The document must still name it (the index may lag), with what to give back.
            let Some((_, body)) = docs.get(&id) else { continue };
            let field = |f: &str| body.get(f);
            if field("internal_vfs_id").and_then(|v| v.as_str().map(str::to_owned)).as_ref() != Some(&current) {
                continue;
            }
            let (Some(md5sum), Some(size)) =
                (field("md5sum").and_then(|v| v.as_str().map(str::to_owned)), field("size"))
            else {
                continue;
            };
            let older = self.known_holds_of(&id);
            self.write_hold(&current, &Held { file: id.clone(), md5sum, size, release, awaited: awaited(&new) })
                .await?;
            // Its older holds are moot: this version is newer, and here.
            let older: Vec<(String, Held)> = older.into_iter().filter(|(v, _)| *v != current).collect();
            self.drop_holds(older).await?;
        }
        Ok(guard)
    }

    async fn write_hold(&self, vfs_id: &str, h: &Held) -> Result<()> {
        let body = match serde_json::to_value(h) {
            Ok(serde_json::Value::Object(m)) => Body::from_map(&m),
            _ => return Err(internal("a hold does not serialise")),
        };
        self.store.put_local(&held(), vfs_id, body).await?;
        self.holds.known.lock().map_err(|_| internal("holds poisoned"))?.insert(vfs_id.to_owned(), h.clone());
        Ok(())
    }

    /// Drops these holds (each record, then this process's note of it); each version is then
    /// released if nothing names it and its hold says so ([`Held::release`]), else left to the
    /// sweep.
    async fn drop_holds(&self, holds: Vec<(String, Held)>) -> Result<()> {
        let mut released = HashSet::new();
        for (vfs_id, h) in holds {
            match self.store.delete_local(&held(), &vfs_id).await {
                Ok(()) | Err(StoreError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
            self.holds.known.lock().map_err(|_| internal("holds poisoned"))?.remove(&vfs_id);
            if h.release {
                released.insert(vfs_id);
            }
        }
        self.release_versions(&released).await?;
        Ok(())
    }

    /// Step 2 of the module docs for file `id`, after its content changed here (received
    /// bytes committed, an upload): drops its holds this process knows of if they are settled.
    /// Nothing is read when it has none (the common case, on every received file).
    pub(super) async fn release_holds(&self, id: &str) -> Result<usize> {
        if self.known_holds_of(id).is_empty() {
            return Ok(0);
        }
        let _alone = self.holds.batches.write().await;
        let known = self.holds.known.lock().map_err(|_| internal("holds poisoned"))?.clone();
        self.release_settled(known.into_iter().filter(|(_, h)| h.file == id).collect()).await
    }

    /// Step 2 of the module docs for every hold, read from the store (those another process
    /// made too): the sweep's. Answers the holds dropped.
    pub(super) async fn release_all_holds(&self) -> Result<usize> {
        let _alone = self.holds.batches.write().await;
        let all = self.load_holds().await?;
        self.release_settled(all.into_iter().collect()).await
    }

    /// Drops those of `holds` whose file's current version, another one, has its bytes here, or
    /// which is no longer a file here; the batches' lock held. Answers the holds dropped.
    async fn release_settled(&self, holds: Vec<(String, Held)>) -> Result<usize> {
        let mut by_file: HashMap<String, Vec<(String, Held)>> = HashMap::new();
        for (v, h) in holds {
            by_file.entry(h.file.clone()).or_default().push((v, h));
        }
        if by_file.is_empty() {
            return Ok(0);
        }
        self.sync().await?;
        let files: Vec<String> = by_file.keys().cloned().collect();
        let entries = self.index.get_many(&files).await?;
        let mut dropped = 0;
        for (id, e) in files.iter().zip(entries) {
            let holds = by_file.remove(id).unwrap_or_default();
            let settled: Vec<(String, Held)> = match e.filter(|e| e.kind == Kind::File) {
                // Gone.
                None => holds,
                Some(e) => {
                    let Some(current) = e.vfs_id else { continue };
                    let Some(key) = version_key(&current) else { continue };
                    if self.content.size(&key).await?.is_none() {
                        continue;
                    }
                    // Never one the file still names: between a hold and its batch's write (in
                    // another process, which the lock does not order), it looks moot.
                    holds.into_iter().filter(|(v, _)| *v != current).collect()
                }
            };
            dropped += settled.len();
            self.drop_holds(settled).await?;
        }
        Ok(dropped)
    }

    /// Step 4 of the module docs, on the owner of sharing `sharing`, still active: gives back
    /// its held version to each file whose awaited edit came from a member `gone` says is no
    /// longer in the sharing, and is still the file's current version, with its bytes neither
    /// here nor being received. The new revision goes to the members left, as any edit of the
    /// owner's. Answers the files given their version back.
    pub async fn revert_departed(&self, sharing: &str, gone: impl Fn(usize) -> bool) -> Result<Vec<String>> {
        let due: Vec<(String, String)> = self
            .load_holds()
            .await?
            .into_values()
            .filter_map(|h| {
                let a = h.awaited?;
                (a.sharing == sharing && gone(a.from)).then_some((h.file, a.version))
            })
            .collect();
        let mut reverted = Vec::new();
        for (id, version) in due {
            let _lock = self.writes.lock().await;
            self.sync().await?;
            let item = match self.load(&id).await {
                Ok(item) => item,
                Err(super::FilesError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            if item.kind() != Kind::File || item.ancestry.first().and_then(|e| e.vfs_id.as_deref()) != Some(&version) {
                continue;
            }
            let Some(key) = version_key(&version) else { continue };
            if self.receiving(&version) || self.content.size(&key).await?.is_some() {
                continue;
            }
            match self.revert_held(&item).await {
                Ok(true) => reverted.push(id),
                Ok(false) | Err(super::FilesError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(reverted)
    }

    /// `body`, a version of file `id` about to be kept as a dissociated copy (`files::shared`,
    /// "Leaving keeps a copy"), under the write lock: when the bytes of the version it names
    /// are not here and `id` has a held version whose bytes are, the copy names the held one
    /// instead, what this instance had (step 5 of the module docs).
    pub(super) async fn with_held_version(&self, id: &str, mut body: Body) -> Result<Body> {
        let named = body.get("internal_vfs_id").and_then(|v| v.as_str().and_then(version_key));
        let Some(named) = named else { return Ok(body) };
        if self.content.size(&named).await?.is_some() {
            return Ok(body);
        }
        let holds = self.stored_holds_of(id).await?;
        if let Some((vfs_id, h)) = self.first_present(&holds).await? {
            naming_held(&mut body, vfs_id, h);
        }
        Ok(body)
    }

    /// The holds of file `id`, read from the store: (held version, record).
    async fn stored_holds_of(&self, id: &str) -> Result<Vec<(String, Held)>> {
        Ok(self.load_holds().await?.into_iter().filter(|(_, h)| h.file == id).collect())
    }

    /// The first of `holds` whose bytes are here.
    async fn first_present<'h>(&self, holds: &'h [(String, Held)]) -> Result<Option<(&'h String, &'h Held)>> {
        for (vfs_id, h) in holds {
            let Some(key) = version_key(vfs_id) else { continue };
            if self.content.size(&key).await?.is_some() {
                return Ok(Some((vfs_id, h)));
            }
        }
        Ok(None)
    }

    /// Step 3 of the module docs, under the write lock, for `item`, a file whose current
    /// version's bytes never came: gives it its held version back (one whose bytes are here).
    /// Answers whether it did (false: no hold, or the held bytes are gone).
    pub(super) async fn revert_held(&self, item: &super::Item) -> Result<bool> {
        let holds = self.stored_holds_of(&item.id).await?;
        let Some((vfs_id, h)) = self.first_present(&holds).await? else { return Ok(false) };
        let mut body = item.body.clone();
        naming_held(&mut body, vfs_id, h);
        model::set(&mut body, "updated_at", serde_json::json!(super::now()));
        self.write_doc(&item.id, Some(&item.rev), false, body).await?;
        self.sync().await?;
        self.drop_holds(holds).await?;
        Ok(true)
    }
}

/// Makes `body` name held version `vfs_id` (its `internal_vfs_id`, `md5sum` and `size`).
fn naming_held(body: &mut Body, vfs_id: &str, h: &Held) {
    model::set(body, "internal_vfs_id", serde_json::json!(vfs_id));
    model::set(body, "md5sum", serde_json::json!(h.md5sum));
    model::set(body, "size", h.size.clone());
}
