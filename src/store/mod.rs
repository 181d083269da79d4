//! Document storage: the `Store` trait every backend implements, and the document types that
//! cross it.
//!
//! A store holds, per doctype, documents with their full revision trees (bodies are kept for
//! leaf revisions only, as CouchDB keeps them after compaction), a changes feed where each
//! document appears once at its latest sequence number, and `_local` documents (replication
//! checkpoints) that have no history and never appear in the feed.
//!
//! Every backend must pass the suite in [`conformance`].

pub mod body;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod couch;
pub mod doc;
pub mod json;
pub mod sqlite;
pub mod tracking;
pub mod transfer;

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
pub use body::Body;
pub use doc::{DocId, Doctype, MemberIndex, SharingId};
use hearth_replicator::rev::Rev;
pub use tracking::{
    Judge, KeepRow, Received, Retracked, SharedChange, SharedChangesPage, SharedInfo, SharedState, Standing, TrackRule,
    TrackedPart, Verdict,
};

/// Whether an error's chain says the disk is full: SQLite's `SQLITE_FULL`, or an I/O error
/// `ENOSPC`/`EDQUOT` (for writes outside the stores, e.g. the registry).
pub fn is_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(current) = cause {
        if let Some(rusqlite::Error::SqliteFailure(f, _)) = current.downcast_ref::<rusqlite::Error>() {
            if f.code == rusqlite::ErrorCode::DiskFull {
                return true;
            }
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::StorageFull || io.kind() == std::io::ErrorKind::QuotaExceeded {
                return true;
            }
        }
        if matches!(current.downcast_ref::<StoreError>(), Some(StoreError::Full(_))) {
            return true;
        }
        cause = current.source();
    }
    false
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// The document exists but its winning revision is a deletion.
    #[error("deleted")]
    Deleted,
    #[error("document update conflict")]
    Conflict,
    #[error("corrupt data in store: {0}")]
    Corrupt(String),
    #[error("store unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// The disk (or CouchDB's) is full: the write was not made; reads still work, and writes
    /// work again once space is freed (SQLite's `SQLITE_FULL`, CouchDB's 507).
    #[error("no space left for writes")]
    Full(#[source] anyhow::Error),
    #[error("store failure")]
    Internal(#[source] anyhow::Error),
}

/// A document write, as parsed from a request body.
#[derive(Debug, Clone, PartialEq)]
pub struct DocWrite {
    pub id: DocId,
    /// `_rev`: the parent for interactive edits, the new revision itself for replicated ones.
    pub rev: Option<Rev>,
    /// `_revisions`, newest first (replicated writes).
    pub revisions: Option<Vec<Rev>>,
    pub deleted: bool,
    /// The body without any `_` member, as written (see [`body`]).
    pub body: Body,
}

/// The outcome of one document of a bulk write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteResult {
    Ok {
        id: DocId,
        rev: Rev,
    },
    Conflict {
        id: DocId,
    },
    /// Replicated write that was invalid (for example no revision).
    Rejected {
        id: DocId,
        reason: String,
    },
}

/// One revision of a document as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct DocRev {
    pub id: DocId,
    pub rev: Rev,
    pub deleted: bool,
    pub body: Body,
    /// This revision's ancestry, newest first, when asked for.
    pub revisions: Option<Vec<Rev>>,
}

/// The winning revision of a document plus its conflicts.
#[derive(Debug, Clone, PartialEq)]
pub struct DocView {
    pub doc: DocRev,
    pub conflicts: Vec<Rev>,
    pub deleted_conflicts: Vec<Rev>,
}

#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    /// A specific revision instead of the winner.
    pub rev: Option<Rev>,
    /// Include `_revisions`.
    pub revs: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OpenRevs {
    All,
    Some(Vec<Rev>),
}

/// The revision a `get` answers: the one asked for, else the winner (`Deleted` when the winner
/// is a deletion, `NotFound` for an empty tree).
pub fn requested_rev(tree: &hearth_replicator::tree::RevTree, asked: Option<Rev>) -> Result<Rev, StoreError> {
    match asked {
        Some(r) => Ok(r),
        None => {
            let winner = tree.winner().ok_or(StoreError::NotFound)?;
            if winner.deleted {
                Err(StoreError::Deleted)
            } else {
                Ok(winner.rev)
            }
        }
    }
}

impl OpenRevs {
    /// The revisions to answer for a document with this tree: every leaf for `All`; the given
    /// ones, or with `latest` the leaves descending from each (an unknown one kept, to be
    /// reported missing), without repeats.
    pub fn resolve(self, tree: &hearth_replicator::tree::RevTree, latest: bool) -> Vec<Rev> {
        match self {
            OpenRevs::All => tree.leaves().into_iter().map(|l| l.rev).collect(),
            OpenRevs::Some(list) if latest => {
                let mut out: Vec<Rev> = Vec::new();
                for r in list {
                    let leaves = tree.latest(&r);
                    if leaves.is_empty() {
                        out.push(r);
                    }
                    for l in leaves {
                        if !out.contains(&l) {
                            out.push(l);
                        }
                    }
                }
                out
            }
            OpenRevs::Some(list) => list,
        }
    }
}

/// One answer of `open_revs`: the revision's document, or a revision we don't have.
#[derive(Debug, Clone, PartialEq)]
pub enum OpenRev {
    Found(DocRev),
    Missing(Rev),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRow {
    pub seq: u64,
    pub id: DocId,
    /// Leaf revisions, winner first (only the winner unless `all_docs`).
    pub changes: Vec<Rev>,
    pub deleted: bool,
    pub doc: Option<DocRev>,
}

#[derive(Debug, Clone, Default)]
pub struct ChangesQuery {
    pub since: u64,
    pub limit: Option<usize>,
    pub all_docs: bool,
    pub include_docs: bool,
    pub doc_ids: Option<Vec<DocId>>,
    /// With `include_docs`: stop after the row whose document takes the answer's bodies to
    /// this many bytes (one row at least), so a page of large documents stays bounded; the
    /// answer's `pending` then counts the rows left. A bound the store may exceed: the CouchDB
    /// backend reads pages by rows only.
    pub max_bytes: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Changes {
    pub rows: Vec<ChangeRow>,
    pub last_seq: u64,
    /// Rows of the same feed (same `doc_ids` filter) after `last_seq`: what a client asking
    /// again from `last_seq` would still get (CouchDB's `pending`).
    pub pending: u64,
}

#[derive(Debug, Clone, Default)]
pub struct AllDocsQuery {
    pub keys: Option<Vec<DocId>>,
    pub start_key: Option<String>,
    pub end_key: Option<String>,
    pub inclusive_end: bool,
    pub descending: bool,
    pub limit: Option<usize>,
    pub skip: usize,
    pub include_docs: bool,
    /// Leaves `start_key` itself out (the next page after a row with that id).
    pub exclusive_start: bool,
    /// With `include_docs`: stop after the row whose document takes the answer's bodies to
    /// this many bytes (one row at least); [`AllDocs::more`] then says so. As for
    /// [`ChangesQuery::max_bytes`], the CouchDB backend reads by rows only.
    pub max_bytes: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AllDocsRow {
    Doc { id: DocId, rev: Rev, deleted: bool, doc: Option<DocRev> },
    NotFound { key: DocId },
}

#[derive(Debug, Clone, PartialEq)]
pub struct AllDocs {
    pub total_rows: u64,
    pub offset: usize,
    pub rows: Vec<AllDocsRow>,
    /// Whether rows may follow the last one answered: the store stopped at `limit` or at
    /// `max_bytes` (with `keys`: not every key was answered, the rows answer the first ones).
    pub more: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DbInfo {
    pub doc_count: u64,
    pub doc_del_count: u64,
    pub update_seq: u64,
}

/// `_revs_diff` answer for one document: nothing is listed for documents missing nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RevsDiff {
    pub missing: Vec<Rev>,
    pub possible_ancestors: Vec<Rev>,
}

/// A `_local` document: no history, a `0-N` revision.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalDoc {
    pub id: String,
    pub rev: u64,
    /// Every member but `_id`, `_rev`, `_revisions` and `_deleted`, as written.
    pub body: Body,
}

/// Storage of one instance. Implementations must make each bulk write atomic and durable
/// before returning, and keep every revision tree's invariants (see `hearth_replicator::tree`).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn db_info(&self, doctype: &Doctype) -> Result<DbInfo, StoreError>;

    /// The winner (or `opts.rev`) with its conflicts. `NotFound` when the document or the
    /// revision is unknown, or when the winner is deleted and no revision was asked for.
    async fn get(&self, doctype: &Doctype, id: &DocId, opts: GetOptions) -> Result<DocView, StoreError>;

    /// The given leaf revisions (`All`: every leaf, winner first) with their `_revisions`.
    /// Unknown documents give `NotFound` with `All`, and `Missing` entries otherwise.
    async fn open_revs(
        &self,
        doctype: &Doctype,
        id: &DocId,
        revs: OpenRevs,
        latest: bool,
    ) -> Result<Vec<OpenRev>, StoreError>;

    /// `open_revs` (given revisions, with `_revisions`) for many documents at once.
    async fn open_revs_many(
        &self,
        doctype: &Doctype,
        wanted: Vec<(DocId, Vec<Rev>)>,
    ) -> Result<Vec<(DocId, Vec<OpenRev>)>, StoreError> {
        let mut out = Vec::with_capacity(wanted.len());
        for (id, revs) in wanted {
            let found = self.open_revs(doctype, &id, OpenRevs::Some(revs), false).await?;
            out.push((id, found));
        }
        Ok(out)
    }

    /// Applies every write in one transaction. `new_edits = true` is an interactive edit
    /// (`rev` must be a leaf; a new revision id is derived); `false` merges the given history
    /// as a replicator does, idempotently.
    async fn bulk_docs(
        &self,
        doctype: &Doctype,
        docs: Vec<DocWrite>,
        new_edits: bool,
    ) -> Result<Vec<WriteResult>, StoreError>;

    /// The feed after `query.since`, and how many rows remain after what it answers
    /// ([`Changes::pending`]), computed without reading those rows (see each backend).
    async fn changes(&self, doctype: &Doctype, query: &ChangesQuery) -> Result<Changes, StoreError>;

    async fn revs_diff(
        &self,
        doctype: &Doctype,
        revs: BTreeMap<DocId, Vec<Rev>>,
    ) -> Result<BTreeMap<DocId, RevsDiff>, StoreError>;

    async fn all_docs(&self, doctype: &Doctype, query: &AllDocsQuery) -> Result<AllDocs, StoreError>;

    /// Reads a `_local` document. `_local` ids stay `&str` here and in the calls below: they are
    /// not document ids (hearth's checkpoint and settings names, the checkpoint ids a PouchDB
    /// client picks), are never replicated, and CouchDB takes any string after `_local/`.
    async fn get_local(&self, doctype: &Doctype, id: &str) -> Result<LocalDoc, StoreError>;

    /// Writes a `_local` document whatever its revision (hearth's own checkpoints and settings;
    /// client writes go through [`Store::put_local_if`]).
    async fn put_local(&self, doctype: &Doctype, id: &str, body: Body) -> Result<u64, StoreError>;

    async fn delete_local(&self, doctype: &Doctype, id: &str) -> Result<(), StoreError>;

    /// Writes a `_local` document for a client, if its current revision is `0-expected` (`0`:
    /// it must not exist), as CouchDB's `update_local_docs` checks; [`StoreError::Conflict`]
    /// otherwise, nothing written. Returns the new `N` of `0-N`.
    async fn put_local_if(&self, doctype: &Doctype, id: &str, body: Body, expected: u64) -> Result<u64, StoreError>;

    /// Deletes a `_local` document for a client, if its current revision is `0-expected`:
    /// [`StoreError::NotFound`] when there is none, [`StoreError::Conflict`] for another revision.
    async fn delete_local_if(&self, doctype: &Doctype, id: &str, expected: u64) -> Result<(), StoreError>;

    /// A counter bumped after every committed write, for long-polling feeds and replication
    /// triggers.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;

    /// The leaf revisions (with their deleted flags, winner first) of some documents; unknown
    /// documents are left out.
    async fn doc_leaves(
        &self,
        doctype: &Doctype,
        ids: &[DocId],
    ) -> Result<HashMap<DocId, Vec<(Rev, bool)>>, StoreError> {
        let mut out = HashMap::new();
        for id in ids {
            match self.open_revs(doctype, id, OpenRevs::All, false).await {
                Ok(found) => {
                    let leaves = found
                        .into_iter()
                        .filter_map(|r| match r {
                            OpenRev::Found(d) => Some((d.rev, d.deleted)),
                            OpenRev::Missing(_) => None,
                        })
                        .collect();
                    out.insert(id.clone(), leaves);
                }
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    // Sharing tracking (see `tracking`): the rules of the active sharings, and per sharing a
    // feed of the documents it holds, updated in the transaction of every write.

    /// Replaces the rules every later write is tracked against.
    fn set_tracking(&self, rules: Vec<TrackRule>);

    /// Starts a sharing's feed: tracks the documents that match the rules of `sharing_id` now
    /// (its initial set, marked `initial`), whatever the rules' `add` says. Only the first
    /// call after the sharing's feed was created (or forgotten by [`Store::untrack`]) does so:
    /// later calls (another member accepting) add nothing, since documents that began to match
    /// meanwhile are `add`'s to decide. Returns how many were added.
    async fn track_existing(&self, sharing_id: &SharingId) -> Result<u64, StoreError>;

    /// [`Store::track_existing`] in parts, each in a transaction of its own that scans about
    /// `limit` documents (at least one), so a large initial set neither holds the writer nor
    /// delays the first documents' replication: `resume` is the previous part's
    /// [`TrackedPart::next`] (`None` to begin). The start is marked by the part that finishes,
    /// so a crash between parts leaves the set to be taken again (recording a document twice
    /// changes nothing). Documents written between parts are tracked by their own writes; the
    /// scan judges each document as it finds it, as CouchDB's paged `_all_docs` scan does.
    /// The default takes the whole set in one call.
    async fn track_existing_part(
        &self,
        sharing_id: &SharingId,
        resume: Option<&str>,
        limit: usize,
    ) -> Result<TrackedPart, StoreError> {
        let _ = (resume, limit);
        Ok(TrackedPart { added: self.track_existing(sharing_id).await?, next: None })
    }

    /// Judges and writes documents received from member `origin` of `sharing_id` (replicated
    /// writes, `new_edits=false` semantics), each judgement in one transaction with its write:
    /// `judge` sees the document's existence and its row in the sharing as the write will find
    /// them, so a local write cannot slip in between (on CouchDB, which has no transactions, a
    /// write conditional on the document's edit guard, judged again when the guard moved). A
    /// document accepted with `join` enters the sharing with that rule and `origin`, before
    /// the write's own tracking. One outcome per document, in order.
    async fn apply_received(
        &self,
        sharing_id: &SharingId,
        origin: MemberIndex,
        doctype: &Doctype,
        docs: Vec<DocWrite>,
        judge: std::sync::Arc<Judge>,
    ) -> Result<Vec<Received>, StoreError>;

    /// Tracks documents again against their current winners, in the order given (a directory
    /// before what it holds), recording only those whose membership changes: they enter a
    /// sharing (their parent did) or leave it (their parent did). This is the cascade of a
    /// move under subtree rules ([`TrackRule::parent_field`]): a write tracks the document
    /// written, and its descendants follow through this call, parents first, so each one is
    /// judged on its parent's new standing. Unknown ids are skipped. Returns the rows recorded
    /// and the documents that entered a sharing again after having left it.
    async fn retrack(&self, doctype: &Doctype, ids: &[DocId]) -> Result<Retracked, StoreError>;

    /// The documents in a sharing (rows not removed, documents not deleted), ordered by
    /// (doctype, id), after `after` (exclusive), at most `limit`.
    async fn shared_docs(
        &self,
        sharing_id: &SharingId,
        after: Option<(Doctype, DocId)>,
        limit: usize,
    ) -> Result<Vec<(Doctype, DocId)>, StoreError>;

    async fn shared_changes(
        &self,
        sharing_id: &SharingId,
        since: u64,
        limit: usize,
    ) -> Result<Vec<SharedChange>, StoreError>;

    async fn shared_state(
        &self,
        sharing_id: &SharingId,
        doctype: &Doctype,
        ids: &[DocId],
    ) -> Result<HashMap<DocId, SharedState>, StoreError>;

    /// A page of `sharing_id`'s feed after `since` (at most `limit` rows read, as
    /// [`Store::shared_changes`]), with the leaves of each kept row's document as of that row:
    /// what a replicator reads of every batch (`sync::replication::LocalSource::changes`).
    /// Rows `keep` refuses are left out and their leaves are not read.
    ///
    /// A row goes only with leaves its write made: when the document was written again
    /// between reading the row and reading its leaves (moved out of the sharing, say), the row
    /// is left out, and its newer row comes in a later page. This default reads the feed, the
    /// leaves and the rows again in three calls and leaves out the rows that moved; a backend
    /// that reads all three in one snapshot (SQLite) answers in one call.
    async fn shared_changes_with_leaves(
        &self,
        sharing_id: &SharingId,
        since: u64,
        limit: usize,
        keep: KeepRow,
    ) -> Result<SharedChangesPage, StoreError> {
        let rows = self.shared_changes(sharing_id, since, limit).await?;
        let (read, last_seq) = (rows.len(), rows.last().map_or(since, |r| r.seq));
        let rows: Vec<SharedChange> = rows.into_iter().filter(|r| keep(r)).collect();
        let mut by_doctype: BTreeMap<Doctype, Vec<DocId>> = BTreeMap::new();
        for r in &rows {
            by_doctype.entry(r.doctype.clone()).or_default().push(r.id.clone());
        }
        let mut leaves: HashMap<(Doctype, DocId), Vec<(Rev, bool)>> = HashMap::new();
        let mut current: HashMap<(Doctype, DocId), u64> = HashMap::new();
        for (doctype, ids) in by_doctype {
            for (id, l) in self.doc_leaves(&doctype, &ids).await? {
                leaves.insert((doctype.clone(), id), l);
            }
            for (id, st) in self.shared_state(sharing_id, &doctype, &ids).await? {
                current.insert((doctype.clone(), id), st.seq);
            }
        }
        let rows = rows
            .into_iter()
            .filter_map(|r| {
                let doc = (r.doctype.clone(), r.id.clone());
                // Read after the row, the leaves may be of a later write: the row read again
                // after them says whether one happened.
                if current.get(&doc) != Some(&r.seq) {
                    return None;
                }
                leaves.remove(&doc).map(|l| (r, l))
            })
            .collect();
        Ok(SharedChangesPage { rows, read, last_seq })
    }

    async fn shared_info(&self, sharing_id: &SharingId, since: u64) -> Result<SharedInfo, StoreError>;

    /// Forgets a sharing's feed (after revocation; the documents themselves stay).
    async fn untrack(&self, sharing_id: &SharingId) -> Result<(), StoreError>;

    // Moving an instance between backends (`transfer`).

    /// Every doctype holding documents or `_local` documents.
    async fn doctypes(&self) -> Result<Vec<Doctype>, StoreError>;

    /// Every `_local` document of a doctype.
    async fn local_docs(&self, doctype: &Doctype) -> Result<Vec<LocalDoc>, StoreError>;

    /// Makes the doctype's next change get a sequence number above `at_least` (an import
    /// numbers its documents above the source's `update_seq`, so a checkpoint taken against
    /// the old backend makes a replicator re-read them rather than skip them).
    async fn advance_seq(&self, doctype: &Doctype, at_least: u64) -> Result<(), StoreError>;
}
