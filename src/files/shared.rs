//! What sharing folders (issue 13) asks of an instance's tree: membership that follows moves,
//! copies kept when an item leaves a sharing, and the owner's settlement of what members send.
//! The sharing layer calls these after it wrote received documents (`sharing::receive`); the
//! `/files` writes call [`Files::cascade`] themselves. None of it reads a clock or anything
//! local to decide: every outcome follows from revision trees, ids and the owner's tree, so
//! every member ends with the same tree.
//!
//! # Membership follows moves (the cascade)
//!
//! A files rule naming a directory shares its subtree (Cozy, `vfs.WalkByID`): a document is in
//! the sharing when its parent is. When a directory moves (in, out, to the trash, back), the
//! store tracks the directory itself in the write's transaction; [`Files::cascade`] then
//! tracks its whole subtree again, parents first, so every descendant enters or leaves with
//! it (`Store::retrack`), on whichever instance the move was made (the owner, or a member
//! under `sync`). A descendant that leaves travels as a removal, one that enters as an arrival.
//!
//! # Re-entry
//!
//! A removal reaches the other members as a tombstone on top of the revision they hold
//! (`sync::replication`), and the item itself does not change when it comes back with its
//! parent: its revision is one the members already have, under their tombstone, so sending it
//! again would bring nothing back. So an item that enters a sharing again after having left
//! it (`Retracked::rejoined`: a directory moved out and back, restored from the trash, or any
//! directory holding it brought back in, at any depth) gets a new revision, with the same
//! body, on the instance where the move was made. A live leaf wins over a deleted one
//! (CouchDB's rule), so on every member it takes the item's place again, content included
//! (its bytes follow on the content channel as for any new version). The revision id is
//! derived from its parent and body, so two instances reviving the same item make the same
//! revision. A file or directory moved back itself has a new revision already (the move).
//!
//! The removal stays in the item's revision tree, a deleted leaf under the live one. It is
//! history, not a removal any more: a sender never sends a removal (a deletion marked
//! `departed_from`) of a document that is alive and in the sharing on its side
//! (`sync::replication`), so a member that never had the item (one accepting later, or a
//! second sharing of the same folder) or that missed the removal gets the item as it is; and
//! a receiver takes a deletion that comes in one batch with a live revision of the same
//! document for a branch of its history, never for a removal (`sharing::receive`). Taken for
//! a removal, it would delete the item there and send that deletion on, to the owner and
//! from there to every member.
//!
//! # Conflict rules
//!
//! Only the owner settles (Cozy's star: every change passes through the owner, which relays it;
//! settling in one place is what makes the result the same everywhere). Members keep what the
//! owner sends, revision trees merged as CouchDB does (`new_edits=false`), until the owner's
//! settlement reaches them as ordinary revisions.
//!
//! 1. **Concurrent edits** (two live leaves in a file's revision tree). The winner is CouchDB's
//!    (the live leaf of highest generation, then of highest revision hash), the same on every
//!    member: it keeps the id. When the losing leaf's content differs (`md5sum`), it becomes a
//!    new file beside the winner, named as the winner with ` (2)` before the extension (the
//!    first free `(n)`, as Cozy's `conflictName`), with an id derived from the original's and
//!    the losing revision (as Cozy's `conflictID`). The losing leaf is then deleted in the
//!    original's tree, by a deletion marked [`CONFLICT_LOSER`] (members tell it from a removal).
//!    A losing leaf with the same content (a concurrent rename or move, or a directory) is only
//!    deleted: the winner's metadata stands (Cozy reconciles these the same way).
//! 2. **Same name in one directory** (a member's item arrives where the owner already has that
//!    name). The item already in the owner's tree keeps its name; the arriving one is renamed
//!    with the first free ` (n)` (Cozy's `resolveConflictSamePath`, owner wins) by a new
//!    revision, which reaches every member.
//! 3. **Parent deleted meanwhile** (a member adds or moves an item into a directory the owner
//!    deleted, trashed or moved out at the same time). The item is restored into the shared
//!    directory itself (the rule's root) by a new revision, rather than lost with its parent
//!    (Cozy's "parent trashed concurrently" recreates the parent; moving the item is what the
//!    other members can follow without bringing back what the owner deleted).
//! 4. **Trashed on one side, edited on the other.** The trash wins the shared tree: the item
//!    left the sharing on the side that trashed it, and its removal reaches the editor, whose
//!    edit is not lost: the editor keeps it as its dissociated copy (below). The owner answers
//!    the concurrent edit as moot (neither written nor refused), since the removal it answers
//!    with is already on its way.
//!
//! # Leaving keeps a copy (dissociation)
//!
//! An item that leaves a sharing on one side (moved out, trashed) reaches the others as a
//! removal. The receiving member deletes it from the shared tree and keeps a dissociated copy
//! in its trash, with a new id of its own and `restore_path` where it was (Cozy's
//! `TrashFile`/`TrashDir` dissociate the same way): the copy belongs to no sharing. The
//! descendants of a directory that left land under their parent's copy, so the copy of a
//! directory holds what the directory held. A file whose bytes had not arrived yet when it
//! left still gets them: the sender goes on offering the content of what left, and the
//! member takes the bytes of the version its copy names (`files::received`), never of a
//! later one. So does a file a member moved out itself before its bytes arrived (its own file
//! now, under the same id): the owner, which keeps a dissociated copy of it, offers the
//! version that copy names (`sync::content`). A sender never offers anything made after an
//! item left, whatever a member answers: a file moved out on the sender is offered only while
//! it is still at the revision it left at, a dissociated copy only while it is as it was made
//! (`Files::offered_versions`).
//!
//! # A sharing that ends takes back the files whose bytes never came
//!
//! Cozy creates the document of a shared file only with its content, so a Cozy user never sees
//! a file that cannot be opened. Here the document comes first and the bytes follow
//! (`files::received`), so when a sharing ends on an instance (revoked by the owner, left by a
//! member, for everyone or for the last member) the files of it whose bytes never arrived
//! would stay in the tree for good, each download a 404. They go to the trash instead, as any
//! trashed file does ([`Files::trash_contentless`]: `trashed`, `restore_path` where they were):
//! never destroyed, so the user can still restore or destroy them. The rest of the copy stays
//! (Cozy's rule: members keep their copies). `sharing::ended` picks the candidates from the
//! sharing's feed when it ends, before the feed is forgotten, and keeps a durable record so a
//! file moves once at most; here, each candidate is judged twice, when picked
//! ([`Files::contentless`]: bytes being received, or absent) and again under the write lock
//! just before it moves, each time looking whether its bytes are being received *before*
//! looking whether they are here (the other order would miss a reception that commits in
//! between, and take a file whose bytes just landed for one without), and it moves only when it is
//! still a file outside the trash, under no root the caller keeps (another live sharing
//! holds it: its bytes may come that way), whose bytes are neither being received nor here.
//! Directories never move this way. A file that had its bytes here before an edit whose bytes
//! never came does not move either: it gets back the version it had (`files::held`).

use hearth_replicator::rev::Rev;
use md5::Digest;
use serde_json::json;

use super::content::ContentKey;
use super::index;
use super::model::{self, Kind};
use super::{child_path, doctype, Files, FilesError, Result, TRASH_ID, TRASH_NAME};
use crate::store::{Body, DocId, DocWrite, GetOptions, StoreError, WriteResult};

/// The member marking the deletion of a leaf that is no removal (`true`), which a member
/// receiving it tells from a removal (a removal leaves a dissociated copy; this does not): a
/// settled conflict's losing leaf (the document lives on as its winner), or the edit a
/// dissociation kept in its copy (the removal that caused it travels by itself; taken for a
/// removal, this deletion removed the document wherever it had come back, restored from a
/// trash, say).
pub const CONFLICT_LOSER: &str = "conflict_loser";

/// The id of the dissociated copy of `id` (a derived one, so a removal received twice makes
/// one copy, and a directory's descendants find their parent's copy).
pub fn dissociated_id(id: &str) -> String {
    hex::encode(md5::Md5::digest(format!("dissociated/{id}").as_bytes()))
}

/// The id of a later dissociated copy of file `id`, of its version `vfs_id`: a file that left
/// a sharing, came back, and left again with other bytes (an edit made here meanwhile, say)
/// keeps those too, in a copy of their own (derived as well: one per version, however often
/// the removal is received).
pub(super) fn dissociated_version_id(id: &str, vfs_id: &str) -> String {
    hex::encode(md5::Md5::digest(format!("dissociated/{id}/{vfs_id}").as_bytes()))
}

/// The id of the conflict copy of `id` made from its losing revision `rev`: derived from both
/// (as Cozy's `conflictID`), so settling the same conflict twice makes one copy.
pub fn conflict_id(id: &str, rev: &Rev) -> String {
    hex::encode(md5::Md5::digest(format!("conflict/{id}/{rev}").as_bytes()))
}

fn str_of(body: &Body, field: &str) -> Option<String> {
    body.get(field).and_then(|v| v.as_str().map(str::to_owned))
}

fn kind_of(body: &Body) -> Kind {
    if str_of(body, "type").as_deref() == Some("directory") {
        Kind::Directory
    } else {
        Kind::File
    }
}

/// What [`Files::settle`] did to one received document.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Conflict copies made (their ids).
    pub copies: Vec<String>,
    /// Losing leaves deleted.
    pub losers: usize,
    /// Moved into the shared root (its parent was gone).
    pub restored: bool,
    /// Renamed (its name was taken in its directory).
    pub renamed: bool,
}

/// What [`Files::trash_contentless`] did with one file.
enum Contentless {
    Moved,
    /// It got back the version held for it (see `held`).
    Reverted,
    /// Its bytes are being received: judged again later.
    Receiving,
    /// Not one to move (anything else).
    Stays,
}

/// What [`Files::trash_contentless`] did with the files it was given (ids here).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TakenBack {
    /// Moved to the trash.
    pub moved: Vec<String>,
    /// Given back the version they had before the edit whose bytes never came (see `held`).
    pub reverted: Vec<String>,
    /// To judge again: their bytes were being received, or judging them failed (logged).
    pub left: Vec<String>,
}

impl Files {
    /// Tracks the subtree of directory `dir` again after it moved (see the module docs);
    /// answers the rows recorded.
    pub async fn cascade(&self, dir: &str) -> Result<u64> {
        self.sync().await?;
        let ids = self.index.subtree(dir).await?;
        let mut recorded = 0;
        let mut revived = 0;
        for chunk in ids.chunks(500) {
            let ids: Vec<DocId> = chunk.iter().filter_map(|i| DocId::parse(i).ok()).collect();
            let done = self.store.retrack(&doctype(), &ids).await?;
            recorded += done.recorded;
            // Parents first, as retracked (see "Re-entry" in the module docs).
            for id in &done.rejoined {
                if self.revive(id).await? {
                    revived += 1;
                }
            }
        }
        if recorded > 0 {
            tracing::info!(dir, recorded, revived, "sharing membership followed a move");
        }
        Ok(recorded)
    }

    /// Writes a new revision of `id`'s winner with the same body (see "Re-entry" in the module
    /// docs); `false` when it is deleted, gone, or was written meanwhile.
    async fn revive(&self, id: &DocId) -> Result<bool> {
        let Some((rev, body)) = self.live_leaves(id).await?.into_iter().next() else { return Ok(false) };
        self.write_new(id.as_str(), Some(&rev), false, body).await
    }

    /// Writes one document with `new_edits=true` semantics; `Ok(false)` on a conflict (someone
    /// wrote it first: for a derived id, the same copy).
    async fn write_new(&self, id: &str, parent: Option<&Rev>, deleted: bool, body: Body) -> Result<bool> {
        let id = DocId::parse(id).map_err(FilesError::BadRequest)?;
        let w = DocWrite { id, rev: parent.cloned(), revisions: None, deleted, body };
        match self.store.bulk_docs(&doctype(), vec![w], true).await?.pop() {
            Some(WriteResult::Ok { .. }) => Ok(true),
            Some(WriteResult::Conflict { .. }) => Ok(false),
            Some(WriteResult::Rejected { reason, .. }) => Err(FilesError::BadRequest(reason)),
            None => Err(FilesError::Internal(anyhow::anyhow!("the store returned no result"))),
        }
    }

    /// The live leaves of a document (winner first) and their bodies.
    async fn live_leaves(&self, id: &DocId) -> Result<Vec<(Rev, Body)>> {
        let leaves = self.store.doc_leaves(&doctype(), std::slice::from_ref(id)).await?;
        let mut out = Vec::new();
        for (rev, deleted) in leaves.get(id).cloned().unwrap_or_default() {
            if deleted {
                continue;
            }
            let opts = GetOptions { rev: Some(rev.clone()), revs: false };
            match self.store.get(&doctype(), id, opts).await {
                Ok(v) => out.push((rev, v.doc.body)),
                Err(StoreError::NotFound | StoreError::Deleted) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// The content versions the live leaves of these documents name (every branch of a
    /// conflict, not only the winner's).
    pub async fn versions_named(&self, ids: &[DocId]) -> Result<std::collections::HashSet<String>> {
        let mut out = std::collections::HashSet::new();
        for id in ids {
            for (_, body) in self.live_leaves(id).await? {
                if let Some(v) = str_of(&body, "internal_vfs_id") {
                    out.insert(v);
                }
            }
        }
        Ok(out)
    }

    /// Deletes the content of those of `versions` that no file's current version names any
    /// more, and that nothing is writing: what the sweep would remove later, removed when the
    /// write that left them unnamed is made (a received version replacing another, or winning
    /// over a read-only member's own edit, which that member may not keep as a conflict copy:
    /// only the owner settles conflicts into copies; an upload replacing a file's content; items
    /// destroyed). A version another document still names stays: a dissociated copy, or the copy
    /// a second sharing of the same files made, names the version of the file it came from.
    /// Answers how many were deleted.
    pub async fn release_versions(&self, versions: &std::collections::HashSet<String>) -> Result<usize> {
        if versions.is_empty() {
            return Ok(0);
        }
        self.sync().await?;
        let mut released = 0;
        for v in versions {
            // The registry first, then the index, as the sweep does (see "The sweep").
            // A hold last, after the index (see `held`, step 1).
            if self.writing.lock().map_or(true, |w| w.contains(v))
                || self.index.references(v).await?
                || self.is_held(v).await?
            {
                continue;
            }
            let Some(key) = super::version_key(v) else { continue };
            match self.content.delete(&key).await {
                Ok(()) => released += 1,
                Err(e) => tracing::warn!(version = %v, error = ?e, "failed to delete unnamed content; the sweep will"),
            }
        }
        Ok(released)
    }

    /// After a removal of `id` was received and written: keeps a dissociated copy in the trash
    /// of what is left of it (a live leaf the removal did not reach: an edit made here
    /// meanwhile) if there is one, else of `before` (its version before the removal), then
    /// deletes that leaf. The copy is made first, so a process killed in between finds the
    /// edit still there, and the copy of it made (its id is derived). A file dissociated before
    /// (it left, came back, and leaves again) gets a second copy when its bytes differ from the
    /// first copy's ([`dissociated_version_id`]). Answers the copy's id, `None` when there was
    /// nothing to keep or the copy exists.
    pub async fn dissociate(&self, id: &str, before: Option<Body>) -> Result<Option<String>> {
        let _lock = self.writes.lock().await;
        let doc = DocId::parse(id).map_err(FilesError::BadRequest)?;
        let live = self.live_leaves(&doc).await?;
        let kept = live.first().map(|(_, b)| b.clone()).or(before);
        let made = match kept {
            // Of what this instance has: an edit whose bytes are awaited leaves its held version.
            Some(body) => {
                let body = self.with_held_version(id, body).await?;
                self.dissociated_copy(id, body).await?
            }
            None => None,
        };
        for (rev, _) in &live {
            let mut mark = Body::empty();
            model::set(&mut mark, CONFLICT_LOSER, json!(true));
            self.write_new(id, Some(rev), true, mark).await?;
        }
        Ok(made)
    }

    /// The copy of [`Files::dissociate`], of `body` (a version of `id`): its id, `None` when it
    /// exists already.
    async fn dissociated_copy(&self, id: &str, mut body: Body) -> Result<Option<String>> {
        self.sync().await?;
        let mut copy = dissociated_id(id);
        if let Some(first) = self.index.get(&copy).await? {
            let version = str_of(&body, "internal_vfs_id");
            match version {
                Some(v) if first.kind == Kind::File && first.vfs_id.as_deref() != Some(v.as_str()) => {
                    copy = dissociated_version_id(id, &v);
                    if self.index.get(&copy).await?.is_some() {
                        return Ok(None);
                    }
                }
                _ => return Ok(None),
            }
        }
        let kind = kind_of(&body);
        let old_dir = str_of(&body, "dir_id");
        let parent_copy = match old_dir.as_deref().map(dissociated_id) {
            Some(p) => self.index.get(&p).await?.filter(|e| e.kind == Kind::Directory).map(|e| e.id),
            None => None,
        };
        let name = str_of(&body, "name").unwrap_or_else(|| copy.clone());
        let dir = parent_copy.clone().unwrap_or_else(|| TRASH_ID.to_owned());
        let name = self.free_name(&dir, &name, kind, "").await?;
        model::set(&mut body, "name", json!(name));
        model::set(&mut body, "dir_id", json!(dir));
        if parent_copy.is_none() {
            let restore_path = match old_dir {
                Some(d) => index::path_of(&self.index.ancestry(&d).await?),
                None => None,
            };
            model::set(&mut body, "trashed", json!(true));
            model::set(&mut body, "restore_path", json!(restore_path.unwrap_or_else(|| "/".into())));
        }
        if kind == Kind::Directory {
            let parent_path =
                index::path_of(&self.index.ancestry(&dir).await?).unwrap_or_else(|| format!("/{TRASH_NAME}"));
            model::set(&mut body, "path", json!(child_path(&parent_path, &name)));
        }
        let written = self.write_new(&copy, None, false, body).await?;
        self.sync().await?;
        Ok(written.then_some(copy))
    }

    /// Whether version `vfs_id` is being received here now, or written at all (a reception
    /// between its checks and [`Files::arriving`], an upload): a lock that cannot be read
    /// says yes (nothing moves on a doubt).
    pub(super) fn receiving(&self, vfs_id: &str) -> bool {
        self.arriving(vfs_id) || self.writing.lock().map_or(true, |w| w.contains(vfs_id))
    }

    /// Of `ids`, the files (outside the trash, or in it with a hold: one of `held`, the files
    /// [`Files::held_files`] answers, see `held`) whose current version's bytes are being
    /// received, or else are not here (looked at in that order, see "A sharing that ends" in
    /// the module docs), in the order given: the candidates of [`Files::trash_contentless`],
    /// which judges them again (one being received may yet fail).
    pub async fn contentless(&self, ids: &[String], held: &std::collections::HashSet<String>) -> Result<Vec<String>> {
        self.sync().await?;
        let mut out = Vec::new();
        for chunk in ids.chunks(500) {
            let entries = self.index.get_many(chunk).await?;
            let mut files: Vec<(String, Option<ContentKey>)> = Vec::new();
            for (id, e) in chunk.iter().zip(entries) {
                // One in the trash only to get its held version back (see `held`).
                let Some(e) = e.filter(|e| e.kind == Kind::File && (!e.trashed || held.contains(id))) else {
                    continue;
                };
                let Some(vfs_id) = e.vfs_id else { continue };
                let Some(key) = super::version_key(&vfs_id) else { continue };
                files.push((id.clone(), (!self.receiving(&vfs_id)).then_some(key)));
            }
            let keys: Vec<ContentKey> = files.iter().filter_map(|(_, k)| k.clone()).collect();
            let mut here = self.present(&keys).await?.into_iter();
            for (id, key) in files {
                if key.is_none() || !here.next().unwrap_or(true) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    /// Moves to the trash each of `ids` that is, judged again under the write lock, a file
    /// outside the trash, under none of the directories `keep_under`, whose current version's
    /// bytes are neither being received nor here (see "A sharing that ends" in the module
    /// docs); one that has its previous version held (an edit whose bytes never came, see
    /// `held`) gets that version back instead. Answers what moved, what was given its previous
    /// version back, and the ids left to judge again: those whose bytes were being received
    /// (their reception may still fail: the caller looks at them again once it ended), and
    /// those whose judging failed (logged). A file changed meanwhile by someone else (a
    /// conflict) stays: it is theirs now.
    pub async fn trash_contentless(&self, ids: &[String], keep_under: &[String]) -> Result<TakenBack> {
        let mut out = TakenBack::default();
        for id in ids {
            match self.trash_if_contentless(id, keep_under).await {
                Ok(Contentless::Moved) => out.moved.push(id.clone()),
                Ok(Contentless::Reverted) => out.reverted.push(id.clone()),
                Ok(Contentless::Receiving) => out.left.push(id.clone()),
                Ok(Contentless::Stays) => {}
                Err(e) => {
                    tracing::warn!(file = %id, error = %e, "judging a file whose bytes never arrived failed; again later");
                    out.left.push(id.clone());
                }
            }
        }
        self.sync().await?;
        Ok(out)
    }

    /// One file of [`Files::trash_contentless`].
    async fn trash_if_contentless(&self, id: &str, keep_under: &[String]) -> Result<Contentless> {
        let _lock = self.writes.lock().await;
        self.sync().await?;
        let item = match self.load(id).await {
            Ok(item) => item,
            Err(FilesError::NotFound(_)) => return Ok(Contentless::Stays),
            Err(e) => return Err(e),
        };
        if item.kind() != Kind::File || item.lineage().any(|a| keep_under.iter().any(|k| k == a)) {
            return Ok(Contentless::Stays);
        }
        let Some(vfs_id) = item.ancestry.first().and_then(|e| e.vfs_id.clone()) else { return Ok(Contentless::Stays) };
        let Some(key) = super::version_key(&vfs_id) else { return Ok(Contentless::Stays) };
        if self.receiving(&vfs_id) {
            return Ok(Contentless::Receiving);
        }
        if self.content.size(&key).await?.is_some() {
            return Ok(Contentless::Stays);
        }
        match self.revert_held(&item).await {
            Ok(true) => return Ok(Contentless::Reverted),
            Ok(false) => {}
            Err(FilesError::Conflict(_)) => return Ok(Contentless::Stays),
            Err(e) => return Err(e),
        }
        if item.trashed() {
            return Ok(Contentless::Stays);
        }
        let restore_path = item.ancestry.get(1..).and_then(index::path_of).unwrap_or_else(|| "/".into());
        match self.trash_locked(&item, &restore_path).await {
            Ok(()) => Ok(Contentless::Moved),
            Err(FilesError::Conflict(_)) => Ok(Contentless::Stays),
            Err(e) => Err(e),
        }
    }

    /// On the owner, after a member's version of `id` was written: settles it by the conflict
    /// rules of the module docs (concurrent edits, parent gone, name taken). `root`: the
    /// shared directory of the rule it is in, where an item whose parent is gone is restored.
    pub async fn settle(&self, id: &str, root: Option<&str>) -> Result<Settled> {
        let _lock = self.writes.lock().await;
        self.sync().await?;
        let doc = DocId::parse(id).map_err(FilesError::BadRequest)?;
        let mut out = Settled::default();
        let live = self.live_leaves(&doc).await?;
        let Some((winner_rev, winner)) = live.first().cloned() else { return Ok(out) };
        // 1. Concurrent edits: the losers.
        let winner_md5 = str_of(&winner, "md5sum");
        let dir = str_of(&winner, "dir_id").unwrap_or_else(|| super::ROOT_ID.to_owned());
        for (rev, loser) in live.iter().skip(1) {
            let loser_md5 = str_of(loser, "md5sum");
            if kind_of(loser) == Kind::File && kind_of(&winner) == Kind::File && loser_md5 != winner_md5 {
                let copy = conflict_id(id, rev);
                if self.index.get(&copy).await?.is_none() {
                    let base = str_of(&winner, "name").unwrap_or_else(|| copy.clone());
                    // The winner holds `base`: the copy gets the first free ` (n)`.
                    let name = self.free_name(&dir, &base, Kind::File, "").await?;
                    let mut body = loser.clone();
                    model::set(&mut body, "name", json!(name));
                    model::set(&mut body, "dir_id", json!(dir));
                    if self.write_new(&copy, None, false, body).await? {
                        out.copies.push(copy);
                    }
                    self.sync().await?;
                }
            }
            let mut mark = Body::empty();
            model::set(&mut mark, CONFLICT_LOSER, json!(true));
            self.write_new(id, Some(rev), true, mark).await?;
            out.losers += 1;
        }
        // 2. and 3. Its place: a live directory outside the trash, and a name of its own there.
        let mut body = winner.clone();
        let mut changed = false;
        let ancestry = self.index.ancestry(&dir).await?;
        let parent_ok = ancestry.first().is_some_and(|p| p.kind == Kind::Directory)
            && !index::in_trash(&ancestry)
            && index::path_of(&ancestry).is_some();
        let mut dir = dir;
        if !parent_ok {
            if let Some(root) = root.filter(|r| *r != id) {
                dir = root.to_owned();
                model::set(&mut body, "dir_id", json!(dir));
                out.restored = true;
                changed = true;
            }
        }
        let name = str_of(&body, "name").unwrap_or_default();
        if !name.is_empty() && self.index.child_named(&dir, &name, Some(id)).await?.is_some() {
            let free = self.free_name(&dir, &name, kind_of(&body), id).await?;
            model::set(&mut body, "name", json!(free));
            out.renamed = true;
            changed = true;
        }
        if changed {
            if kind_of(&body) == Kind::Directory {
                let parent_path = index::path_of(&self.index.ancestry(&dir).await?).unwrap_or_else(|| "/".into());
                let name = str_of(&body, "name").unwrap_or_default();
                model::set(&mut body, "path", json!(child_path(&parent_path, &name)));
            }
            self.write_new(id, Some(&winner_rev), false, body).await?;
        }
        self.sync().await?;
        if out.restored && kind_of(&winner) == Kind::Directory {
            self.cascade(id).await?;
        }
        Ok(out)
    }
}
