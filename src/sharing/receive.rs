//! The receiving side of replication (`POST /sharings/:id/_revs_diff` and `_bulk_docs`), with
//! the safety principles and the rules enforced per document and per action, all in [`judge`]:
//! - a document unknown here is created only if it matches a rule of this sharing, and either
//!   belongs to the sharing's initial set (sent by the owner: named by an id rule, or listed
//!   in the request's `_initial`) or the rule's `add` lets new documents flow this way;
//! - a document already here is changed only if it is in this sharing, and the rule's `update`
//!   (or `remove`, for a deletion or a document leaving the sharing) lets it flow;
//! - a document that exists here outside the sharing is never touched (a peer cannot pull it
//!   into the sharing);
//! - nothing at all is accepted from a read-only member (its token is GET-only: 403 earlier);
//! - an item of a shared folder that left the sharing here while the peer changed it is moot
//!   (the removal this instance sends answers it), and, on the owner, a new item whose parent
//!   left the sharing is restored into the shared directory (`files::shared`, rules 3 and 4).
//!
//! After the write, files follow up (`files::shared`): removals leave dissociated copies, the
//! owner settles conflicts, moved directories take their subtrees along.
//!
//! [`judge`] runs inside the store's write of each document (`Store::apply_received`), so
//! what it reads (the document's existence, its membership) is what the write finds: a local
//! write cannot move a document out of the sharing between the judgement and the write.
//!
//! Refused documents are reported; the rest of the batch applies (`new_edits=false`: merged
//! into the revision trees, idempotent). On the owner, ids are transformed back from the
//! sender's id space (see `sharing::xor`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use hearth_replicator::rev::Rev;
use serde_json::value::RawValue;
use serde_json::Value;

use super::model::{ChangeKind, Flow, Sharing, FILES_DOCTYPE, FILES_PARENT};
use super::protocol::{BulkDocs, Refused, RevsDiffAnswer, RevsDiffEntry, RevsDiffRequest};
use super::xor::IdMap;
use super::{MemberIndex, Result, SharingError};
use crate::instance::Instance;
use crate::store::doc::parse_doc;
use crate::store::{Body, DocId, DocWrite, Doctype, GetOptions, Judge, Received, Standing, StoreError, Verdict};

fn split_key(key: &str) -> Result<(Doctype, DocId)> {
    let (doctype, id) = key.split_once('/').ok_or_else(|| SharingError::BadRequest(format!("invalid key {key:?}")))?;
    Ok((
        Doctype::parse(doctype).map_err(SharingError::BadRequest)?,
        DocId::parse(id).map_err(SharingError::BadRequest)?,
    ))
}

/// `_revs_diff` for a peer: honest for documents of this sharing; documents outside it are
/// reported as entirely missing (their existence here is none of the peer's business).
pub async fn revs_diff(inst: &Instance, s: &Sharing, from: MemberIndex, body: &Value) -> Result<RevsDiffAnswer> {
    let map = IdMap::for_member(s, from);
    let asked = RevsDiffRequest::parse(body, |key| split_key(key).map_err(|e| e.to_string()))
        .map_err(SharingError::BadRequest)?;
    let mut per_doctype: BTreeMap<Doctype, Vec<(String, DocId, Vec<Rev>)>> = BTreeMap::new();
    for (key, (doctype, peer_id), revs) in asked {
        let id = DocId::parse(&map.convert(peer_id.as_str())).map_err(SharingError::BadRequest)?;
        per_doctype.entry(doctype).or_default().push((key, id, revs));
    }
    let mut out = BTreeMap::new();
    for (doctype, entries) in per_doctype {
        let ids: Vec<DocId> = entries.iter().map(|(_, id, _)| id.clone()).collect();
        let shared = inst.store.shared_state(s.sharing_id(), &doctype, &ids).await?;
        let mut honest = BTreeMap::new();
        for (key, id, revs) in &entries {
            // Documents that left the sharing are outside it, like any other.
            if shared.get(id).is_some_and(|st| !st.removed) {
                honest.insert(id.clone(), revs.clone());
            } else if !revs.is_empty() {
                out.insert(key.clone(), RevsDiffEntry { missing: revs.clone(), possible_ancestors: Vec::new() });
            }
        }
        let diff = inst.store.revs_diff(&doctype, honest).await?;
        for (key, id, _) in &entries {
            if let Some(d) = diff.get(id) {
                let entry =
                    RevsDiffEntry { missing: d.missing.clone(), possible_ancestors: d.possible_ancestors.clone() };
                out.insert(key.clone(), entry);
            }
        }
    }
    Ok(RevsDiffAnswer(out))
}

/// What `_bulk_docs` did.
pub struct Applied {
    pub accepted: usize,
    pub refused: Vec<Refused>,
    /// A document of a `remove: revoke` rule was deleted by the peer.
    pub revoke: bool,
}

/// The files of the receiving instance, for what a batch of `io.cozy.files` changes there.
#[derive(Clone, Copy)]
pub struct FilesHere<'a> {
    pub files: &'a crate::files::Files,
    /// The content versions a batch leaves unnamed are left to the sweep (`files.sweep_secs`,
    /// past `files.orphan_grace_secs`) rather than deleted at once: on a recipient whose own
    /// edits reach the owner (`service::edits_come_back`), its version that loses to the
    /// owner's comes back as the owner's conflict copy, and only this instance holds its
    /// bytes until its content link delivers them (they were deleted before the copy came
    /// back, and the copy answered 409 everywhere for good).
    pub keep_unnamed: bool,
}

/// Set (to anything) in the environment of `hearth serve`, this instance's files cannot be
/// opened for the first received batch of files holding a deletion, once: the tests'
/// (`tests/folder_crash.rs`) way to have a batch of files answered 503. Never set otherwise;
/// release builds do not look.
pub const FAIL_FILES_FOR_A_REMOVAL_ONCE: &str = "HEARTH_TEST_FAIL_FILES_FOR_A_RECEIVED_REMOVAL_ONCE";

/// The files of `inst` for a received batch: `None` when the batch holds no file. A batch of
/// files is never written without them: its documents follow the tree's rules (the shared
/// root's place, orphans, conflicts) and its follow-ups need them (a removal's dissociated
/// copy), and the peer never sends a batch again once it is answered. When they cannot be
/// opened (a CouchDB that does not answer while the index catches up, a disk error):
/// `Store(Unavailable)`, answered 503, and the peer sends the batch again after its backoff.
pub async fn files_for_batch(
    registry: &crate::files::FilesRegistry,
    inst: &Instance,
    request: &BulkDocs<&RawValue>,
) -> Result<Option<Arc<crate::files::Files>>> {
    let Some(docs) = request.docs.iter().find_map(|(d, docs)| (d.as_str() == FILES_DOCTYPE).then_some(docs)) else {
        return Ok(None);
    };
    let opened = match injected_files_failure(docs) {
        Ok(()) => registry.of(inst).await,
        Err(e) => Err(e),
    };
    opened.map(Some).map_err(|e| {
        let e = anyhow::Error::new(e).context("this instance's files cannot be opened now");
        tracing::warn!(instance = %inst.domain, error = format!("{e:#}"),
            "a batch of files came while this instance's files could not be opened: answered 503");
        SharingError::Store(StoreError::Unavailable(e))
    })
}

/// `_bulk_docs` from member `from` (the request as read, each document a slice of its text):
/// each document judged ([`judge`]) and written in one store transaction; the refused ones
/// reported. A member whose token may not write (`may_write` false: read-only, or without
/// `sync` rules) has every document refused with [`super::protocol::READ_ONLY_REFUSAL`], but
/// for the echo of a removal this instance made, which is moot: it only hands back what this
/// instance sent. Documents are split into their `_` members and their body as written (see
/// `store::body`), never parsed into numbers. A batch holding files needs `files`
/// ([`files_for_batch`]): without them it is `Store(Unavailable)`, nothing written.
pub async fn bulk_docs(
    inst: &Instance,
    files: Option<FilesHere<'_>>,
    s: &Sharing,
    from: MemberIndex,
    may_write: bool,
    request: BulkDocs<&RawValue>,
) -> Result<Applied> {
    let keep_unnamed = files.is_some_and(|f| f.keep_unnamed);
    let files = files.map(|f| f.files);
    let map = IdMap::for_member(s, from);
    let mut applied = Applied { accepted: 0, refused: Vec::new(), revoke: false };
    for (doctype, docs) in request.docs {
        // Batches of files of one sharing run at once, a replay of its journal while serving
        // alone: taken before anything of the tree is read (and before `naming`, which other
        // sharings' batches wait on), given back once the follow-ups are done.
        let mut batches = match files {
            Some(_) if doctype.as_str() == FILES_DOCTYPE => {
                Some(guard(inst.domain.as_str(), s.id()).read_owned().await)
            }
            // Never written without them (see `files_for_batch`).
            None if doctype.as_str() == FILES_DOCTYPE => {
                let e = anyhow::anyhow!("a batch of files without this instance's files");
                return Err(SharingError::Store(StoreError::Unavailable(e)));
            }
            _ => None,
        };
        // Held once a shared root is named here, until it is written under that name.
        let mut naming = None;
        let mut peer_ids = Vec::with_capacity(docs.len());
        let mut writes = Vec::with_capacity(docs.len());
        let mut claimed: HashSet<DocId> = HashSet::new();
        for d in docs {
            let mut w = match parse_doc(d, None, false) {
                Ok(w) => w,
                // A document that names its id is refused alone (`_attachments`, say): the
                // peer sees why, the rest of the batch applies.
                Err(reason) => match peer_doc_id(d) {
                    Some(id) => {
                        let doctype = doctype.as_str().to_owned();
                        applied.refused.push(Refused { id, doctype, error: "bad_request".into(), reason });
                        continue;
                    }
                    None => return Err(SharingError::BadRequest(reason)),
                },
            };
            let peer_id = w.id.to_string();
            w.id = DocId::parse(&map.convert(&peer_id)).map_err(SharingError::BadRequest)?;
            map.convert_fields(doctype.as_str(), &mut w.body);
            if !w.deleted {
                place_shared_root(inst, files, s, &doctype, &mut w, &mut naming).await?;
            }
            if request.initial.contains(&format!("{doctype}/{peer_id}")) {
                claimed.insert(w.id.clone());
            }
            peer_ids.push(peer_id);
            writes.push(w);
        }
        if crate::sharing::xor::ID_FIELDS.iter().any(|(d, _)| *d == doctype.as_str()) {
            (peer_ids, writes) = parents_first(peer_ids, writes);
        }
        let tree =
            if doctype.as_str() == FILES_DOCTYPE { Some(TreeBefore::read(inst, s, &writes).await?) } else { None };
        // The content versions these files name before the write: those the write leaves
        // unnamed (a version replaced, or one losing to the owner's, such as a read-only
        // member's own edit) are deleted once the batch is written, not at the next sweep;
        // unless they may come back as the owner's conflict copy (`FilesHere::keep_unnamed`).
        let named_before = match (files, &tree) {
            (Some(files), Some(_)) if !keep_unnamed => {
                let ids: Vec<DocId> = writes.iter().map(|w| w.id.clone()).collect();
                files.versions_named(&ids).await.map_err(files_failed)?
            }
            _ => Default::default(),
        };
        // An edit whose bytes are not here yet keeps the version it replaces (`files::held`),
        // written down before the write that stops naming it.
        // The guard is kept until what the batch leaves unnamed is released.
        let holding = match (files, &tree) {
            (Some(files), Some(_)) => {
                let from = Some((s.id(), from.get()));
                Some(files.hold_replaced(&writes, !keep_unnamed, from).await.map_err(files_failed)?)
            }
            _ => None,
        };
        let mut relocations: HashSet<(DocId, Rev)> = HashSet::new();
        if let Some(tree) = tree.as_ref().filter(|t| !t.orphans.is_empty()) {
            (peer_ids, writes, relocations) = restore_orphans(s, tree, peer_ids, writes);
        }
        // The echo of a removal this instance sent (see `protocol::DEPARTED_FROM`) is moot:
        // never written, so it cannot delete an item that came back here meanwhile.
        let own_mark = Value::String(super::protocol::departure_mark(inst.domain.as_str()));
        let judge: Arc<Judge> = {
            let (s, doctype) = (s.clone(), doctype.clone());
            let orphans = tree.as_ref().map(|t| t.orphans.clone()).unwrap_or_default();
            let own_mark = own_mark.clone();
            Arc::new(move |w: &DocWrite, standing: &Standing| {
                let facts = Facts {
                    claimed_initial: claimed.contains(&w.id),
                    may_write,
                    own_removal: w.body.get(super::protocol::DEPARTED_FROM).as_ref() == Some(&own_mark),
                    orphan_of: orphans.get(&w.id).copied(),
                    relocation: w.rev.as_ref().is_some_and(|r| relocations.contains(&(w.id.clone(), r.clone()))),
                };
                judge(&s, &doctype, w, standing, facts)
            })
        };
        // A removal, as opposed to the deletion of a settled conflict's losing leaf, or to the
        // echo of a removal this instance sent (see `protocol::DEPARTED_FROM`).
        let written_ids: Vec<(DocId, bool)> = writes
            .iter()
            .map(|w| {
                let removal = w.deleted
                    && w.body.get(crate::files::shared::CONFLICT_LOSER) != Some(Value::Bool(true))
                    && w.body.get(super::protocol::DEPARTED_FROM).as_ref() != Some(&own_mark);
                (w.id.clone(), removal)
            })
            .collect();
        let live: Vec<bool> = writes.iter().map(|w| !w.deleted).collect();
        // What follows the write is journaled before it, and the entry removed once done: a
        // process killed in between finds it at its next start (`replay_follow_ups`), a batch
        // whose follow-ups fail has them retried (`retry_follow_ups`), since the peer, which
        // sees its revisions here then, never sends them again.
        // A recipient follows up only removals and moved directories, which `before` holds.
        let mut journal = match (files, &tree) {
            (Some(_), Some(tree)) if s.owner || !tree.before.is_empty() => {
                Some(Journal::write(inst, s, from, &writes, &written_ids, tree).await?)
            }
            _ => None,
        };
        let outcomes = inst.store.apply_received(s.sharing_id(), from, &doctype, writes, judge).await?;
        #[cfg(debug_assertions)]
        if written_ids.iter().any(|(_, removal)| *removal) && std::env::var_os(ABORT_AFTER_REMOVAL).is_some() {
            tracing::warn!("{ABORT_AFTER_REMOVAL} is set: aborting after a received removal, before its follow-ups");
            std::process::abort();
        }
        // Written: the next root named sees this one (naming catches the index up first).
        drop(naming.take());
        if let (Some(files), Some(tree)) = (files, &tree) {
            let written: Vec<((DocId, bool), bool)> = written_ids
                .into_iter()
                .zip(live)
                .zip(&outcomes)
                .filter(|(_, o)| matches!(o, Received::Written { .. }))
                .map(|(w, _)| w)
                .collect();
            // A document the peer sent a live revision of in the same batch is alive there: a
            // deletion coming with it is a branch of its history, not a removal (see
            // `files::shared`, "Re-entry"); removing it here would lose what the peer holds.
            let alive: HashSet<DocId> =
                written.iter().filter(|(_, live)| *live).map(|((id, _), _)| id.clone()).collect();
            let written: Vec<(DocId, bool)> =
                written.into_iter().map(|((id, removal), _)| (id.clone(), removal && !alive.contains(&id))).collect();
            #[cfg(debug_assertions)]
            let injected = injected_follow_up_failure(&written);
            #[cfg(not(debug_assertions))]
            let injected = Ok(());
            let followed = match injected {
                Ok(()) => tree.follow_up(inst, files, s, &written).await,
                Err(e) => Err(e),
            };
            if let Err(e) = followed {
                // The entry stays: retried while the process runs (`retry_follow_ups`), and at
                // the next start.
                if let Some(journal) = &journal {
                    tracing::warn!(instance = %inst.domain, sharing = %s.id(), entry = %journal.id, error = %e,
                        "the follow-ups of a received batch failed: retried later");
                }
                return Err(e);
            }
            if let Some(journal) = journal.take() {
                journal.done(inst).await;
            }
            drop(batches.take());
            let released = files.release_versions(&named_before).await.map_err(files_failed)?;
            drop(holding);
            if released > 0 {
                tracing::info!(instance = %inst.domain, sharing = %s.id(), released, "content no file names any more deleted");
            }
        }
        for (peer_id, outcome) in peer_ids.into_iter().zip(outcomes) {
            let refuse = |error: &str, reason: String| Refused {
                id: peer_id.clone(),
                doctype: doctype.as_str().to_owned(),
                error: error.to_owned(),
                reason,
            };
            match outcome {
                Received::Written { revokes } => {
                    applied.accepted += 1;
                    applied.revoke |= revokes;
                }
                Received::Moot => applied.accepted += 1,
                Received::Refused(reason) => applied.refused.push(refuse("forbidden", reason)),
                Received::Invalid(reason) => applied.refused.push(refuse("bad_request", reason)),
            }
        }
    }
    Ok(applied)
}

fn files_failed(e: crate::files::FilesError) -> SharingError {
    SharingError::Store(StoreError::Internal(anyhow::Error::new(e)))
}

/// On the owner, each new item whose parent left the sharing (rule 3 of `files::shared`) is
/// followed in the batch by its relocation: a revision on top of the one received that puts
/// it in the shared directory (the rule's root). Written in the same batch, the item never
/// stands outside the sharing, so no removal of it is ever sent. Answers the batch and the
/// relocations (id, revision).
fn restore_orphans(
    s: &Sharing,
    tree: &TreeBefore,
    peer_ids: Vec<String>,
    writes: Vec<DocWrite>,
) -> (Vec<String>, Vec<DocWrite>, HashSet<(DocId, Rev)>) {
    let mut relocations = HashSet::new();
    let (mut ids, mut out) = (Vec::with_capacity(writes.len()), Vec::with_capacity(writes.len()));
    for (peer_id, w) in peer_ids.into_iter().zip(writes) {
        let root = tree
            .orphans
            .get(&w.id)
            .and_then(|&rule| s.rules.get(rule))
            .filter(|r| r.subtree())
            .and_then(|r| r.values.first())
            .and_then(|v| serde_json::value::to_raw_value(v).ok());
        let relocation = match (root, w.revisions.as_deref().filter(|p| !p.is_empty())) {
            (Some(root), Some(path)) if !w.deleted => {
                let mut body = w.body.clone();
                body.set(FILES_PARENT, &root);
                hearth_replicator::rev::new_rev(path.first(), false, body.as_str().as_bytes()).ok().map(|rev| {
                    let mut revisions = vec![rev.clone()];
                    revisions.extend(path.iter().cloned());
                    DocWrite { id: w.id.clone(), rev: Some(rev), revisions: Some(revisions), deleted: false, body }
                })
            }
            _ => None,
        };
        ids.push(peer_id.clone());
        out.push(w);
        if let Some(r) = relocation {
            if let Some(rev) = &r.rev {
                relocations.insert((r.id.clone(), rev.clone()));
            }
            ids.push(peer_id);
            out.push(r);
        }
    }
    (ids, out, relocations)
}

/// Where the follow-ups of received files are journaled: `_local` documents, one per batch
/// whose follow-ups are pending (see [`Journal`]).
pub const JOURNAL_DOCTYPE: &str = "io.hearth.journal";

/// Set (to anything) in the environment of `hearth serve`, a process aborts right after it
/// writes a received batch of files holding a removal, before that batch's follow-ups (the
/// dissociated copy): the crash tests' (`tests/folder_crash.rs`) way to stop it exactly
/// there. Never set otherwise; release builds do not look.
pub const ABORT_AFTER_REMOVAL: &str = "HEARTH_TEST_ABORT_AFTER_RECEIVED_REMOVAL";

/// Set (to anything) in the environment of `hearth serve`, the first follow-ups of a received
/// batch holding a removal fail once, before they run (the entry stays, as for any failure of
/// them): the tests' (`tests/folder_crash.rs`) way to have follow-ups retried
/// while the process runs ([`retry_follow_ups`]). Never set otherwise; release builds do not
/// look.
pub const FAIL_FOLLOW_UPS_ONCE: &str = "HEARTH_TEST_FAIL_RECEIVED_FOLLOW_UPS_ONCE";

/// Set to a number of milliseconds in the environment of `hearth serve`, a replay of journaled
/// follow-ups waits that long between judging the writes and following them up: the tests'
/// way to have a batch arrive in between. Never set otherwise; release builds do not look.
pub const SLOW_REPLAY_MS: &str = "HEARTH_TEST_SLOW_REPLAY_MS";

#[cfg(debug_assertions)]
fn injected_files_failure(docs: &[&RawValue]) -> std::result::Result<(), crate::files::FilesError> {
    static FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if docs.iter().any(|d| d.get().contains("\"_deleted\":true"))
        && std::env::var_os(FAIL_FILES_FOR_A_REMOVAL_ONCE).is_some()
        && !FAILED.swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        return Err(crate::files::FilesError::Internal(anyhow::anyhow!("{FAIL_FILES_FOR_A_REMOVAL_ONCE} is set")));
    }
    Ok(())
}

#[cfg(not(debug_assertions))]
fn injected_files_failure(_: &[&RawValue]) -> std::result::Result<(), crate::files::FilesError> {
    Ok(())
}

#[cfg(debug_assertions)]
fn injected_follow_up_failure(written: &[(DocId, bool)]) -> Result<()> {
    static FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if written.iter().any(|(_, removal)| *removal)
        && std::env::var_os(FAIL_FOLLOW_UPS_ONCE).is_some()
        && !FAILED.swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        return Err(SharingError::Store(StoreError::Internal(anyhow::anyhow!("{FAIL_FOLLOW_UPS_ONCE} is set"))));
    }
    Ok(())
}

fn journal_doctype() -> Doctype {
    Doctype::parse(JOURNAL_DOCTYPE).unwrap_or_else(|_| unreachable!("static doctype"))
}

/// One journaled batch of received files: what [`TreeBefore::follow_up`] needs to run again,
/// written before the batch and removed once its follow-ups are done. Shape (a `_local`
/// document of [`JOURNAL_DOCTYPE`], id `<sharing>-<member>-<n>`, see [`Journal`]):
/// `{"sharing": id, "writes": [{"id", "rev", "removal", "live", "live_before"}], "before":
/// {id: "<the document before, as written>"}}`.
/// Bodies are kept as their text, so they come back byte for byte (numbers of any size).
#[derive(serde::Serialize, serde::Deserialize)]
struct JournalEntry {
    sharing: String,
    writes: Vec<JournaledWrite>,
    before: std::collections::HashMap<String, String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct JournaledWrite {
    id: String,
    rev: Option<String>,
    removal: bool,
    live: bool,
    /// For a removal: the document's live leaves before the write (an edit made here that the
    /// removal did not reach, which its follow-up turns into the dissociated copy).
    #[serde(default)]
    live_before: Vec<String>,
}

/// A batch's journal entry while its follow-ups are pending: its id is a slot of the link
/// (`<sharing>-<member>-<n>`, the lowest not in use in this process), so a link writes over
/// the same few entries rather than leaving one name per batch behind (CouchDB keeps a marker
/// per `_local` name). One dropped before [`Journal::done`] cleared it (its follow-ups failed,
/// or the batch failed between the entry and them) is retried ([`retry_follow_ups`]).
struct Journal {
    id: String,
    /// The slot: (instance, entry id), freed once the entry is cleared.
    slot: (String, String),
    cleared: bool,
}

type Slot = (String, String);

/// The journal's state in this process: the slots in use, by (instance, entry id), and what
/// waits for [`retry_follow_ups`]. A slot whose entry was not cleared stays taken until a
/// replay clears it, so no batch writes over it.
#[derive(Default)]
struct Slots {
    taken: std::collections::BTreeSet<Slot>,
    /// Entries whose follow-ups failed, with their tries so far and when they are due again.
    retry: BTreeMap<Slot, Retry>,
    /// Instances whose replay at start failed as a whole (their entries could not be listed):
    /// they take no new entry until [`retry_follow_ups`] replays them all.
    unreplayed: std::collections::BTreeSet<String>,
}

#[derive(Clone, Copy)]
struct Retry {
    failures: u32,
    due: std::time::Instant,
}

static SLOTS: std::sync::LazyLock<std::sync::Mutex<Slots>> = std::sync::LazyLock::new(Default::default);

fn slots() -> std::sync::MutexGuard<'static, Slots> {
    // Nothing panics while holding it; should something, its sets are still whole.
    SLOTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Received batches of files and replays of their follow-ups, per (instance, sharing): batches
/// share it (they run at once), a replay while serving holds it alone. A replay judges a
/// removal from the document's leaves, then makes its copy: a batch written in between (the
/// owner moving the file back in) would be removed with it.
type Guards = std::sync::Mutex<std::collections::HashMap<(String, String), Arc<tokio::sync::RwLock<()>>>>;
static GUARDS: std::sync::LazyLock<Guards> = std::sync::LazyLock::new(Default::default);

/// The guard of (instance, sharing). Guards nobody holds go (only the map has them: no task
/// waits on them or is between taking and locking one), so the map holds those in use, not
/// one per sharing ever received, and a new one is as good as a free one.
fn guard(domain: &str, sharing: &str) -> Arc<tokio::sync::RwLock<()>> {
    let mut guards = GUARDS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    guards.retain(|_, g| Arc::strong_count(g) > 1);
    guards.entry((domain.to_owned(), sharing.to_owned())).or_default().clone()
}

impl Journal {
    async fn write(
        inst: &Instance,
        s: &Sharing,
        from: MemberIndex,
        writes: &[DocWrite],
        written_ids: &[(DocId, bool)],
        tree: &TreeBefore,
    ) -> Result<Journal> {
        let removed: Vec<DocId> =
            written_ids.iter().filter(|(_, removal)| *removal).map(|(id, _)| id.clone()).collect();
        let leaves = if removed.is_empty() {
            Default::default()
        } else {
            inst.store.doc_leaves(&crate::files::doctype(), &removed).await?
        };
        let entry = JournalEntry {
            sharing: s.id().to_owned(),
            writes: writes
                .iter()
                .zip(written_ids)
                .map(|(w, (_, removal))| JournaledWrite {
                    id: w.id.to_string(),
                    rev: w.rev.as_ref().map(|r| r.to_string()),
                    removal: *removal,
                    live: !w.deleted,
                    live_before: leaves
                        .get(&w.id)
                        .filter(|_| *removal)
                        .map(|l| l.iter().filter(|(_, deleted)| !deleted).map(|(r, _)| r.to_string()).collect())
                        .unwrap_or_default(),
                })
                .collect(),
            before: tree.before.iter().map(|(id, b)| (id.to_string(), b.as_str().to_owned())).collect(),
        };
        let body = serde_json::to_string(&entry)
            .map_err(|e| SharingError::Store(StoreError::Internal(anyhow::anyhow!("journal entry: {e}"))))?;
        let body = Body::parse(&body).map_err(|e| SharingError::Store(StoreError::Internal(anyhow::anyhow!(e))))?;
        let mut journal = {
            let mut slots = slots();
            let domain = inst.domain.to_string();
            if slots.unreplayed.contains(&domain) {
                // Its entries are not known: a new one could write over one still pending.
                return Err(SharingError::Store(StoreError::Internal(anyhow::anyhow!(
                    "the follow-ups journaled before the last start are not replayed yet"
                ))));
            }
            let slot = (0..)
                .map(|n| (domain.clone(), format!("{}-{}-{n}", s.id(), from.get())))
                .find(|slot| !slots.taken.contains(slot))
                .unwrap_or_else(|| unreachable!("an unbounded range"));
            slots.taken.insert(slot.clone());
            Journal { id: slot.1.clone(), slot, cleared: false }
        };
        if let Err(e) = inst.store.put_local(&journal_doctype(), &journal.id, body).await {
            // Not written: nothing to clear or retry.
            slots().taken.remove(&journal.slot);
            journal.cleared = true;
            return Err(e.into());
        }
        Ok(journal)
    }

    /// The follow-ups are done: the entry goes (if that fails, a retry runs them again, which
    /// finds nothing left to do, and clears it).
    async fn done(mut self, inst: &Instance) {
        match inst.store.delete_local(&journal_doctype(), &self.id).await {
            Ok(()) | Err(StoreError::NotFound) => {
                let mut slots = slots();
                slots.retry.remove(&self.slot);
                slots.taken.remove(&self.slot);
                self.cleared = true;
            }
            Err(e) => {
                tracing::warn!(instance = %inst.domain, entry = %self.id, error = %e, "failed to clear a follow-up journal entry");
            }
        }
    }
}

impl Drop for Journal {
    /// Not cleared: the entry stays, so does its slot, and [`retry_follow_ups`] replays it,
    /// `base` later at first, then twice as long after each failure ([`retry_delay`]).
    fn drop(&mut self) {
        if self.cleared {
            return;
        }
        let mut slots = slots();
        slots.taken.insert(self.slot.clone());
        // A first failure is due at once (the retry loop looks every `base`); a retry that
        // failed set its next try before it ran.
        let retry =
            slots.retry.entry(self.slot.clone()).or_insert(Retry { failures: 0, due: std::time::Instant::now() });
        retry.failures = retry.failures.saturating_add(1);
    }
}

/// How long after its `failures`-th failure in a row an entry is tried again: `base`, doubling
/// up to `max` (the replicator's backoff, `replication.retry_base_ms` and `retry_max_ms`).
fn retry_delay(failures: u32, base: std::time::Duration, max: std::time::Duration) -> std::time::Duration {
    base.saturating_mul(1u32 << failures.saturating_sub(1).min(20)).min(max).max(base)
}

/// Runs the follow-ups of every batch of files journaled and not done (a process killed
/// between a received write and its follow-ups, or follow-ups that failed), then clears their
/// entries; at start, before serving (the files of an instance are opened only if it has
/// entries). A write counts as made when its revision is a leaf of its document now (a batch
/// killed before its write made none: nothing follows). A removal is followed up while the
/// document's live leaves are among those it had before the write (an edit the removal did
/// not reach becomes the copy, as it would have), not once it has another (it came back
/// since: removing that would lose it). Follow-ups that already ran find nothing left to do (a
/// dissociated copy is made once, a settled conflict is settled). An entry that fails is
/// logged and kept: [`retry_follow_ups`] tries it again while the process runs, and the next
/// start does; the others still run. When the entries cannot be listed, the instance takes no
/// new entry (its batches of files are answered with an error, and sent again) until
/// [`retry_follow_ups`] replays them. Answers how many were replayed.
pub async fn replay_follow_ups(inst: &Instance, files: &crate::files::FilesRegistry) -> Result<usize> {
    let domain = inst.domain.to_string();
    let entries = match inst.store.local_docs(&journal_doctype()).await {
        Ok(entries) => entries,
        Err(e) => {
            slots().unreplayed.insert(domain);
            return Err(e.into());
        }
    };
    if entries.is_empty() {
        slots().unreplayed.remove(&domain);
        return Ok(0);
    }
    let files = match files.of(inst).await {
        Ok(files) => files,
        Err(e) => {
            slots().unreplayed.insert(domain);
            return Err(files_failed(e));
        }
    };
    {
        // Taken before any replay: a batch received meanwhile writes none of them over.
        let mut slots = slots();
        slots.unreplayed.remove(&domain);
        slots.taken.extend(entries.iter().map(|local| (domain.clone(), local.id.clone())));
    }
    let mut replayed = 0;
    for local in entries {
        let journal = Journal { slot: (domain.clone(), local.id.clone()), id: local.id, cleared: false };
        replayed += usize::from(replay_entry(inst, &files, journal, local.body.as_str()).await);
    }
    Ok(replayed)
}

/// Replays the entries of `inst` whose follow-ups failed in this process and are due (see
/// [`retry_delay`]), as [`replay_follow_ups`] does at start, or all its entries if that failed:
/// the follow-ups of a batch that met a passing failure (a busy store, a full disk since freed)
/// run without waiting for a restart. Each replay holds its sharing's batches off (see
/// [`GUARDS`]). Answers how many were replayed. Called by [`run_follow_up_retries`].
pub async fn retry_follow_ups(
    inst: &Instance,
    files: &crate::files::FilesRegistry,
    base: std::time::Duration,
    max: std::time::Duration,
) -> Result<usize> {
    let domain = inst.domain.to_string();
    let now = std::time::Instant::now();
    let (unreplayed, due): (bool, Vec<Slot>) = {
        let slots = slots();
        let due = slots
            .retry
            .iter()
            .filter(|(slot, r)| slot.0 == domain && r.due <= now)
            .map(|(slot, _)| slot.clone())
            .collect();
        (slots.unreplayed.contains(&domain), due)
    };
    if unreplayed {
        return replay_follow_ups(inst, files).await;
    }
    if due.is_empty() {
        return Ok(0);
    }
    let files = files.of(inst).await.map_err(files_failed)?;
    let mut replayed = 0;
    for slot in due {
        {
            // The next try, should this one fail.
            let mut slots = slots();
            if let Some(r) = slots.retry.get_mut(&slot) {
                r.due = now + retry_delay(r.failures.saturating_add(1), base, max);
            }
        }
        let journal = Journal { id: slot.1.clone(), slot: slot.clone(), cleared: false };
        let local = match inst.store.get_local(&journal_doctype(), &journal.id).await {
            Ok(local) => local,
            // Cleared meanwhile.
            Err(StoreError::NotFound) => {
                journal.done(inst).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(instance = %inst.domain, entry = %journal.id, error = %e, "reading a follow-up journal entry failed");
                continue;
            }
        };
        replayed += usize::from(replay_entry(inst, &files, journal, local.body.as_str()).await);
    }
    Ok(replayed)
}

/// Whether entries of `domain` wait for [`retry_follow_ups`].
fn to_retry(domain: &str) -> bool {
    let s = slots();
    s.unreplayed.contains(domain) || s.retry.keys().any(|(d, _)| d == domain)
}

/// Retries the follow-ups that failed ([`retry_follow_ups`]) of the instances of `registry`
/// every `base`, each entry with its own backoff ([`retry_delay`]), and an instance whose
/// retry fails as a whole (its files cannot be opened, its store answers errors) with one of
/// its own, until `cancel` is cancelled. (The journal's state is the process's: entries of
/// an instance removed while serving stay listed, and are not looked at.)
pub async fn run_follow_up_retries(
    registry: Arc<crate::instance::Registry>,
    files: Arc<crate::files::FilesRegistry>,
    base: std::time::Duration,
    max: std::time::Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut failing: std::collections::HashMap<String, Retry> = Default::default();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(base) => {}
        }
        let now = std::time::Instant::now();
        for inst in registry.opened() {
            if cancel.is_cancelled() {
                return;
            }
            let domain = inst.domain.to_string();
            if !to_retry(&domain) || failing.get(&domain).is_some_and(|r| r.due > now) {
                continue;
            }
            match retry_follow_ups(&inst, &files, base, max).await {
                Ok(_) => {
                    failing.remove(&domain);
                }
                Err(e) => {
                    // The instance as a whole (its files, its store): backed off as an entry is.
                    let r = failing.entry(domain).or_insert(Retry { failures: 0, due: now });
                    r.failures = r.failures.saturating_add(1);
                    r.due = now + retry_delay(r.failures, base, max);
                    tracing::warn!(instance = %inst.domain, error = %e, "retrying the follow-ups of received files failed");
                }
            }
        }
    }
}

/// Replays one journal entry (`body`, its text) and clears it, or keeps it for a retry when it
/// fails: whether it was replayed. While serving, the replay holds the batches of its sharing
/// off ([`GUARDS`]).
async fn replay_entry(inst: &Instance, files: &crate::files::Files, journal: Journal, body: &str) -> bool {
    let Ok(entry) = serde_json::from_str::<JournalEntry>(body) else {
        tracing::warn!(instance = %inst.domain, entry = %journal.id, "dropping an unreadable follow-up journal entry");
        journal.done(inst).await;
        return false;
    };
    let guard = guard(inst.domain.as_str(), &entry.sharing);
    let _alone = guard.write().await;
    match replay(inst, files, entry).await {
        Ok(replayed) => {
            journal.done(inst).await;
            replayed
        }
        Err(e) => {
            tracing::error!(instance = %inst.domain, entry = %journal.id, error = %e,
                "replaying the journaled follow-ups of a received batch failed: retried later");
            false
        }
    }
}

/// One entry of [`replay_follow_ups`]: false when its sharing is gone or inactive here.
async fn replay(inst: &Instance, files: &crate::files::Files, entry: JournalEntry) -> Result<bool> {
    let doctype = crate::files::doctype();
    let s = match super::SharingId::parse(&entry.sharing) {
        Ok(id) => super::load(inst.store.as_ref(), &id).await?,
        Err(_) => None,
    };
    let Some(s) = s.filter(|s| s.active) else { return Ok(false) };
    let ids: Vec<DocId> = entry.writes.iter().filter_map(|w| DocId::parse(&w.id).ok()).collect();
    let leaves = inst.store.doc_leaves(&doctype, &ids).await?;
    let mut written: Vec<(DocId, bool, bool)> = Vec::new();
    for w in &entry.writes {
        let (Ok(id), Some(rev)) = (DocId::parse(&w.id), w.rev.as_deref()) else { continue };
        let Some(leaves) = leaves.get(&id).filter(|l| l.iter().any(|(r, _)| r.to_string() == rev)) else {
            continue;
        };
        let removal = w.removal
            && leaves.iter().filter(|(_, deleted)| !deleted).all(|(r, _)| w.live_before.contains(&r.to_string()));
        written.push((id, removal, w.live));
    }
    let alive: HashSet<DocId> = written.iter().filter(|(_, _, live)| *live).map(|(id, _, _)| id.clone()).collect();
    let written: Vec<(DocId, bool)> =
        written.into_iter().map(|(id, removal, _)| (id.clone(), removal && !alive.contains(&id))).collect();
    let mut before = std::collections::HashMap::new();
    for (id, body) in entry.before {
        if let (Ok(id), Ok(body)) = (DocId::parse(&id), Body::parse(&body)) {
            before.insert(id, body);
        }
    }
    let tree = TreeBefore { before, orphans: Default::default() };
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var(SLOW_REPLAY_MS).ok().and_then(|v| v.parse().ok()) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    tree.follow_up(inst, files, &s, &written).await?;
    tracing::info!(instance = %inst.domain, sharing = %s.id(), docs = written.len(), "replayed the follow-ups of a received batch");
    Ok(true)
}

/// What a batch of `io.cozy.files` needs known of the tree before it is written, for what
/// follows the write (see `files::shared`).
struct TreeBefore {
    /// The version before the write, of the documents the batch deletes or moves.
    before: std::collections::HashMap<DocId, Body>,
    /// New documents whose parent left the sharing here (owner only): the rule it was in.
    orphans: std::collections::HashMap<DocId, usize>,
}

impl TreeBefore {
    async fn read(inst: &Instance, s: &Sharing, writes: &[DocWrite]) -> Result<TreeBefore> {
        let doctype = crate::files::doctype();
        let mut before = std::collections::HashMap::new();
        for w in writes {
            let directory = matches!(w.body.get("type"), Some(Value::String(t)) if t == "directory");
            if !(w.deleted || directory) {
                continue;
            }
            match inst.store.get(&doctype, &w.id, GetOptions::default()).await {
                Ok(v) => {
                    before.insert(w.id.clone(), v.doc.body);
                }
                Err(StoreError::NotFound | StoreError::Deleted) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut orphans = std::collections::HashMap::new();
        if s.owner {
            let parents: Vec<(DocId, DocId)> = writes
                .iter()
                .filter(|w| !w.deleted)
                .filter_map(|w| match w.body.get(FILES_PARENT) {
                    Some(Value::String(p)) => DocId::parse(&p).ok().map(|p| (w.id.clone(), p)),
                    _ => None,
                })
                .collect();
            let ids: Vec<DocId> = parents.iter().map(|(_, p)| p.clone()).collect();
            let states = inst.store.shared_state(s.sharing_id(), &doctype, &ids).await?;
            for (id, parent) in parents {
                if let Some(st) = states.get(&parent).filter(|st| st.removed) {
                    orphans.insert(id, st.rule_index);
                }
            }
        }
        Ok(TreeBefore { before, orphans })
    }

    /// After the write: a received removal leaves a dissociated copy; on the owner, what a
    /// member sent is settled (conflicts, parent gone, name taken); a directory that moved
    /// takes its subtree with it.
    async fn follow_up(
        &self,
        inst: &Instance,
        files: &crate::files::Files,
        s: &Sharing,
        written: &[(DocId, bool)],
    ) -> Result<()> {
        let failed = |e: crate::files::FilesError| SharingError::Store(StoreError::Internal(anyhow::anyhow!("{e}")));
        let doctype = crate::files::doctype();
        // A document is removed when the sender removed it (not when it deleted the losing
        // leaf of a settled conflict). Removals go parents first (a batch is in id order), so
        // a copy lands under its parent's copy.
        let mut order: Vec<DocId> = Vec::new();
        let mut removed: std::collections::HashMap<DocId, bool> = std::collections::HashMap::new();
        for (id, deleted) in written {
            match removed.get_mut(id) {
                Some(any) => *any |= *deleted,
                None => {
                    order.push(id.clone());
                    removed.insert(id.clone(), *deleted);
                }
            }
        }
        let removals: Vec<DocId> = order.iter().filter(|id| removed.get(*id) == Some(&true)).cloned().collect();
        let parent_in = |id: &DocId| -> Option<usize> {
            let parent = match self.before.get(id)?.get(FILES_PARENT) {
                Some(Value::String(p)) => p,
                _ => return None,
            };
            removals.iter().position(|r| r.as_str() == parent)
        };
        let mut placed = vec![false; removals.len()];
        for start in 0..removals.len() {
            let mut chain = vec![start];
            while let Some(p) = chain.last().and_then(|&i| parent_in(&removals[i])) {
                if placed[p] || chain.contains(&p) {
                    break;
                }
                chain.push(p);
            }
            for &i in chain.iter().rev() {
                if !placed[i] {
                    placed[i] = true;
                    let id = &removals[i];
                    files.dissociate(id.as_str(), self.before.get(id).cloned()).await.map_err(failed)?;
                }
            }
        }
        let states = inst.store.shared_state(s.sharing_id(), &doctype, &order).await?;
        for id in &order {
            if removed.get(id) == Some(&true) {
                continue;
            }
            if s.owner {
                let root = states
                    .get(id)
                    .and_then(|st| s.rules.get(st.rule_index))
                    .filter(|r| r.subtree())
                    .and_then(|r| r.values.first())
                    .cloned();
                let settled = files.settle(id.as_str(), root.as_deref()).await.map_err(failed)?;
                if settled != crate::files::shared::Settled::default() {
                    tracing::info!(instance = %inst.domain, sharing = %s.id(), doc = %id, ?settled, "settled a member's version");
                }
            }
            if let Some(old) = self.before.get(id) {
                let now = inst.store.get(&doctype, id, GetOptions::default()).await.ok().map(|v| v.doc.body);
                if now.is_some_and(|b| b.get(FILES_PARENT) != old.get(FILES_PARENT)) {
                    files.cascade(id.as_str()).await.map_err(failed)?;
                }
            }
        }
        Ok(())
    }
}

/// Orders a batch so that a directory comes before what it holds (a subtree rule lets a
/// document in by its parent, judged first): parents first, otherwise the order sent.
fn parents_first(peer_ids: Vec<String>, writes: Vec<DocWrite>) -> (Vec<String>, Vec<DocWrite>) {
    // A parent is found by its first live write (a batch may hold several revisions of one
    // document, its deleted leaves after its live ones: those must not go first).
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, w) in writes.iter().enumerate().filter(|(_, w)| !w.deleted) {
        index.entry(w.id.to_string()).or_insert(i);
    }
    let parent = |i: usize| match writes[i].body.get(FILES_PARENT) {
        Some(Value::String(p)) => index.get(&p).copied(),
        _ => None,
    };
    let mut order = Vec::with_capacity(writes.len());
    let mut placed = vec![false; writes.len()];
    for start in 0..writes.len() {
        // Walk up to the first ancestor not placed (bounded: a cycle stops the walk).
        let mut chain = vec![start];
        while let Some(p) = parent(*chain.last().unwrap_or(&start)) {
            if placed[p] || chain.contains(&p) {
                break;
            }
            chain.push(p);
        }
        for &i in chain.iter().rev() {
            if !placed[i] {
                placed[i] = true;
                order.push(i);
            }
        }
    }
    let mut slots: Vec<Option<(String, DocWrite)>> = peer_ids.into_iter().zip(writes).map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).unzip()
}

/// The root of a shared subtree (a value of a subtree rule, see `Rule::subtree`) has its place
/// in each member's own tree: on a recipient, inside the "Shared with me" directory (created
/// when needed) under the rule's title; on the owner, where the owner keeps it. Its `dir_id`
/// and `name` are therefore local members: set here on what a peer sends, whatever it says
/// (Cozy does the same; the revision is the same everywhere, the placement is each member's).
///
/// `naming` takes [`crate::files::Files::naming_shared_roots`] before a root is named on a
/// recipient; the caller holds it until the root is written.
async fn place_shared_root<'f>(
    inst: &Instance,
    files: Option<&'f crate::files::Files>,
    s: &Sharing,
    doctype: &Doctype,
    w: &mut DocWrite,
    naming: &mut Option<tokio::sync::MutexGuard<'f, ()>>,
) -> Result<()> {
    let Some(rule) =
        s.rules.iter().find(|r| r.subtree() && r.doctype == doctype.as_str() && r.values.contains(&w.id.to_string()))
    else {
        return Ok(());
    };
    let raw = |v: &str| serde_json::value::to_raw_value(v).map_err(|e| SharingError::BadRequest(e.to_string()));
    if s.owner {
        let current = inst.store.get(doctype, &w.id, crate::store::GetOptions::default()).await;
        if let Ok(current) = current {
            for field in [FILES_PARENT, "name"] {
                if let Some(Value::String(v)) = current.doc.body.get(field) {
                    w.body.set(field, &raw(&v)?);
                }
            }
        }
    } else {
        // Never into the trash: one there comes back to the root first (see
        // `Files::ensure_shared_with_me`).
        match files {
            Some(files) => files.ensure_shared_with_me().await,
            None => crate::files::ensure_shared_with_me(inst.store.as_ref()).await,
        }
        .map_err(|e| SharingError::Store(crate::store::StoreError::Internal(anyhow::anyhow!(e.to_string()))))?;
        w.body.set(FILES_PARENT, &raw(crate::files::SHARED_WITH_ME_ID)?);
        if !rule.title.is_empty() {
            let name = match files {
                Some(files) => {
                    if naming.is_none() {
                        *naming = Some(files.naming_shared_roots().await);
                    }
                    let kind = if w.body.get("type") == Some(Value::String("file".into())) {
                        crate::files::Kind::File
                    } else {
                        crate::files::Kind::Directory
                    };
                    files.shared_root_name(w.id.as_str(), &rule.title, kind).await.map_err(|e| {
                        SharingError::Store(crate::store::StoreError::Internal(anyhow::anyhow!(e.to_string())))
                    })?
                }
                None => rule.title.clone(),
            };
            w.body.set("name", &raw(&name)?);
        }
    }
    Ok(())
}

/// The `_id` of a received document that could not be parsed, when it has a string one.
fn peer_doc_id(d: &serde_json::value::RawValue) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        #[serde(rename = "_id")]
        id: String,
    }
    serde_json::from_str::<IdOnly>(d.get()).ok().map(|d| d.id)
}

/// What the batch knows of a received document, beside what the store holds (see [`judge`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// The sender listed it in `_initial`.
    pub claimed_initial: bool,
    /// The sender may write here (not a read-only member, nor a sharing without `sync` rules).
    pub may_write: bool,
    /// It carries this instance's removal mark (`protocol::DEPARTED_FROM`): when a deletion,
    /// the echo of a removal this instance sent.
    pub own_removal: bool,
    /// Its parent left the sharing here meanwhile (`TreeBefore::orphans`): the rule it was
    /// shared by.
    pub orphan_of: Option<usize>,
    /// This write is the relocation of such an orphan into the shared directory, made here in
    /// the same batch (`restore_orphans`).
    pub relocation: bool,
}

/// The decision on one document received for sharing `s` from the other side (the owner when
/// this instance is a recipient, a recipient when it is the owner), given what the store holds
/// at the moment of the write and what the batch knows of it: the one place where a received
/// document is written, refused or found moot.
///
/// - The echo of a removal this instance sent is moot: never written, so it cannot delete an
///   item that came back here meanwhile.
/// - Anything else from a member that may not write is refused (`READ_ONLY_REFUSAL`).
/// - Then the rules ([`judge_by_rules`]).
/// - A new item whose parent left the sharing here meanwhile, refused by the rules for that
///   reason, is restored (`files::shared`, rule 3) if new documents may flow this way, as is its
///   relocation into the shared directory, written next in the same batch.
pub fn judge(s: &Sharing, doctype: &Doctype, w: &DocWrite, standing: &Standing, facts: Facts) -> Verdict {
    if w.deleted && facts.own_removal {
        return Verdict::Moot;
    }
    if !facts.may_write {
        return Verdict::Refuse(super::protocol::READ_ONLY_REFUSAL.into());
    }
    let verdict = judge_by_rules(s, doctype, w, standing, facts.claimed_initial);
    let Some(rule) = facts.orphan_of else { return verdict };
    let adds = s.rules.get(rule).is_some_and(|r| r.allows(ChangeKind::Add, s.owner));
    match verdict {
        Verdict::Refuse(_) if !standing.exists && standing.shared.is_none() && !w.deleted && adds => {
            Verdict::Accept { join: Some(rule), revokes: false }
        }
        _ if facts.relocation && adds => Verdict::Accept { join: Some(rule), revokes: false },
        verdict => verdict,
    }
}

/// The rules' decision on a received document (see [`judge`]). `claimed_initial`: the sender
/// listed it in `_initial`.
///
/// - In the sharing here: an update, or a removal (a deletion, or a new version that no longer
///   matches), allowed by the rule's `update` or `remove` in this direction. A deletion under
///   `remove: revoke` from the owner is written and revokes the sharing here; a recipient
///   cannot delete the owner's document that way.
/// - Not in it (never, or it left): a deletion of a document that left the sharing here is
///   moot (not written: the document stays as it is here, outside the sharing); otherwise
///   refused if the document exists here (safety principle: a peer never pulls a local
///   document into the sharing) or is a deletion; otherwise it must
///   match a rule, and either be part of the initial set the owner sends (named by an id rule,
///   or listed in `_initial`) or the rule's `add` must let new documents flow this way. It then
///   enters the sharing here with that rule.
pub fn judge_by_rules(
    s: &Sharing,
    doctype: &Doctype,
    w: &DocWrite,
    standing: &Standing,
    claimed_initial: bool,
) -> Verdict {
    let to_owner = s.owner;
    let mut matching = s
        .rules
        .iter()
        .enumerate()
        .filter(|(i, r)| !r.local && r.matches_in(*i, doctype.as_str(), w.id.as_str(), &w.body, standing.parent));
    let Some(index) = standing.shared.filter(|st| !st.removed).map(|st| st.rule_index) else {
        if standing.exists && w.deleted && standing.shared.is_some() {
            // It left the sharing here: the peer's removal (often the echo of the deletion
            // this instance sent when it left) asks for what already holds.
            return Verdict::Moot;
        }
        let left = standing.shared.and_then(|st| s.rules.get(st.rule_index));
        if standing.exists && left.is_some_and(|r| r.subtree() && r.allows(ChangeKind::Remove, !to_owner)) {
            // An item of a shared folder that left it here (moved out, trashed) while the peer
            // changed it: the removal this instance sends answers it, and the peer keeps its
            // version as a dissociated copy (`files::shared`, rule 4). Neither written nor
            // refused.
            return Verdict::Moot;
        }
        if standing.exists {
            return Verdict::Refuse("the document exists here outside this sharing".into());
        }
        if w.deleted {
            return Verdict::Refuse("the document is not in this sharing".into());
        }
        let mut matched = false;
        for (i, rule) in matching {
            matched = true;
            let initial = !to_owner && (rule.by_id() || claimed_initial);
            if initial || rule.allows(ChangeKind::Add, to_owner) {
                return Verdict::Accept { join: Some(i), revokes: false };
            }
        }
        return Verdict::Refuse(if matched {
            "the sharing's rules do not let new documents flow this way".into()
        } else {
            "the document matches no rule of this sharing".into()
        });
    };
    let Some(rule) = s.rules.get(index) else {
        return Verdict::Refuse("unknown rule".into());
    };
    let kind = if w.deleted || matching.next().is_none() { ChangeKind::Remove } else { ChangeKind::Update };
    if kind == ChangeKind::Remove && w.deleted && rule.remove == Flow::Revoke {
        // The owner's deletion ends the sharing here; a member cannot delete the owner's
        // document this way (its own deletion makes it leave instead).
        return if to_owner {
            Verdict::Refuse("removals under a revoke rule do not flow to the owner".into())
        } else {
            Verdict::Accept { join: None, revokes: true }
        };
    }
    if rule.allows(kind, to_owner) {
        Verdict::Accept { join: None, revokes: false }
    } else {
        Verdict::Refuse(format!(
            "the sharing's rules do not let {} flow this way",
            if kind == ChangeKind::Remove { "removals" } else { "updates" }
        ))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use serde_json::json;

    use super::*;
    use crate::sharing::model::{Member, MemberStatus, Rule};
    use crate::store::SharedState;

    /// A guard in use is the one every batch of its (instance, sharing) gets; once nobody
    /// holds it, it leaves the map (a guard per sharing ever received was kept for good).
    #[tokio::test]
    async fn a_guard_is_shared_while_held_and_forgotten_once_free() {
        let key = ("guards.test".to_owned(), super::super::SharingId::generate().to_string());
        let held = guard(&key.0, &key.1).read_owned().await;
        let again = guard(&key.0, &key.1);
        assert!(again.try_write().is_err(), "a second guard was made while the first was held");
        drop(again);
        assert!(GUARDS.lock().unwrap().contains_key(&key));
        drop(held);
        // Any later call prunes it.
        drop(guard("guards.test", &super::super::SharingId::generate().to_string()));
        assert!(!GUARDS.lock().unwrap().contains_key(&key), "a free guard stayed");
    }

    /// An active sharing between an owner and one recipient, seen from the owner's side when
    /// `owner`, with two rules of this policy: by id (index 0), and by selector (`list`, 1).
    pub(in crate::sharing) fn sharing(owner: bool, policy: (&str, &str, &str)) -> Sharing {
        let rule = |selector: Option<&str>, values: &[&str]| {
            let mut r = json!({"doctype": "io.cozy.todos", "values": values,
                "add": policy.0, "update": policy.1, "remove": policy.2});
            if let Some(s) = selector {
                r["selector"] = json!(s);
            }
            Rule::from_input(&r).unwrap()
        };
        Sharing {
            id: Some(super::super::SharingId::generate()),
            rev: None,
            description: String::new(),
            preview_path: None,
            app_slug: None,
            owner,
            active: true,
            open_sharing: false,
            initial_sync: false,
            created_at: String::new(),
            updated_at: String::new(),
            rules: vec![rule(None, &["named"]), rule(Some("list"), &["l1"])],
            members: vec![Member::new(MemberStatus::Owner), Member::new(MemberStatus::Ready)],
            invitations: Vec::new(),
            id_nonce: None,
            revoked_at: None,
        }
    }

    fn doc(id: &str, list: &str, deleted: bool) -> DocWrite {
        let body = crate::store::Body::from_map(json!({ "list": list }).as_object().unwrap());
        DocWrite { id: DocId::parse(id).unwrap(), rev: None, revisions: None, deleted, body }
    }

    const NEW: Standing = Standing { exists: false, shared: None, parent: None };
    const OUTSIDE: Standing = Standing { exists: true, shared: None, parent: None };
    const IN: Standing =
        Standing { exists: true, shared: Some(SharedState { rule_index: 1, removed: false, seq: 1 }), parent: None };
    const LEFT: Standing =
        Standing { exists: true, shared: Some(SharedState { rule_index: 1, removed: true, seq: 1 }), parent: None };

    fn join(rule: usize) -> Verdict {
        Verdict::Accept { join: Some(rule), revokes: false }
    }

    fn refused(v: &Verdict) -> bool {
        matches!(v, Verdict::Refuse(_))
    }

    #[test]
    fn new_documents_enter_by_the_initial_set_or_by_add() {
        let t = Doctype::parse("io.cozy.todos").unwrap();
        // On a recipient, with add: none: named and claimed documents are the initial set.
        let recipient = sharing(false, ("none", "sync", "sync"));
        assert_eq!(judge_by_rules(&recipient, &t, &doc("named", "x", false), &NEW, false), join(0));
        assert_eq!(judge_by_rules(&recipient, &t, &doc("t1", "l1", false), &NEW, true), join(1));
        assert!(refused(&judge_by_rules(&recipient, &t, &doc("t1", "l1", false), &NEW, false)), "began to match later");
        assert!(
            refused(&judge_by_rules(&recipient, &t, &doc("t1", "l9", false), &NEW, true)),
            "claimed, matching no rule"
        );
        // On the owner, nothing is initial: a recipient's new document needs add: sync.
        let owner = sharing(true, ("push", "sync", "sync"));
        assert!(refused(&judge_by_rules(&owner, &t, &doc("named", "x", false), &NEW, true)));
        assert!(refused(&judge_by_rules(&owner, &t, &doc("t1", "l1", false), &NEW, true)));
        let owner = sharing(true, ("sync", "none", "none"));
        assert_eq!(judge_by_rules(&owner, &t, &doc("t1", "l1", false), &NEW, false), join(1));
        // A recipient under add: push takes later documents from the owner.
        let recipient = sharing(false, ("push", "none", "none"));
        assert_eq!(judge_by_rules(&recipient, &t, &doc("t1", "l1", false), &NEW, false), join(1));
    }

    #[test]
    fn echoes_are_moot_read_only_members_refused_and_orphans_restored() {
        let t = Doctype::parse("io.cozy.todos").unwrap();
        let s = sharing(true, ("sync", "sync", "sync"));
        let writer = Facts { may_write: true, ..Facts::default() };
        // The echo of this instance's own removal is moot, even from a read-only member.
        let echo = Facts { own_removal: true, ..Facts::default() };
        assert_eq!(judge(&s, &t, &doc("t1", "l1", true), &IN, echo), Verdict::Moot);
        assert_eq!(
            judge(&s, &t, &doc("t1", "l1", false), &IN, echo),
            Verdict::Refuse(super::super::protocol::READ_ONLY_REFUSAL.into()),
            "the mark on a live document is no echo"
        );
        // A read-only member's documents are refused whatever the rules say.
        assert_eq!(
            judge_by_rules(&s, &t, &doc("t1", "l1", false), &IN, false),
            Verdict::Accept { join: None, revokes: false }
        );
        assert!(refused(&judge(&s, &t, &doc("t1", "l1", false), &IN, Facts::default())));
        // An item whose parent left the sharing here (refused by the rules: it matches none
        // now) is restored under its rule when `add` lets it in, and so is its relocation.
        let orphan = Facts { orphan_of: Some(1), ..writer };
        assert!(refused(&judge(&s, &t, &doc("t1", "l9", false), &NEW, writer)));
        assert_eq!(judge(&s, &t, &doc("t1", "l9", false), &NEW, orphan), join(1));
        assert!(refused(&judge(&s, &t, &doc("t1", "l9", true), &NEW, orphan)), "not a deletion");
        assert_eq!(judge(&s, &t, &doc("t1", "l9", false), &OUTSIDE, Facts { relocation: true, ..orphan }), join(1));
        let push = sharing(true, ("push", "sync", "sync"));
        assert!(
            refused(&judge(&push, &t, &doc("t1", "l9", false), &NEW, orphan)),
            "add: push keeps members' items out"
        );
    }

    #[test]
    fn documents_outside_the_sharing_are_never_changed() {
        let t = Doctype::parse("io.cozy.todos").unwrap();
        let s = sharing(false, ("sync", "sync", "sync"));
        for standing in [OUTSIDE, LEFT] {
            assert!(refused(&judge_by_rules(&s, &t, &doc("t1", "l1", false), &standing, true)), "{standing:?}");
        }
        assert!(refused(&judge_by_rules(&s, &t, &doc("t1", "l1", true), &OUTSIDE, false)));
        assert!(refused(&judge_by_rules(&s, &t, &doc("t1", "l1", true), &NEW, false)));
        // A removal of a document that left the sharing here is moot, not written.
        assert_eq!(judge_by_rules(&s, &t, &doc("t1", "l1", true), &LEFT, false), Verdict::Moot);
    }

    #[test]
    fn a_change_to_a_shared_folders_item_that_left_here_is_moot_when_its_removal_flows_back() {
        let files = Doctype::parse(FILES_DOCTYPE).unwrap();
        let mut s = sharing(true, ("sync", "sync", "sync"));
        s.rules = vec![Rule::from_input(&json!({"title": "t", "doctype": FILES_DOCTYPE, "values": ["root"],
            "add": "sync", "update": "sync", "remove": "sync"}))
        .unwrap()];
        let left =
            Standing { exists: true, shared: Some(SharedState { rule_index: 0, removed: true, seq: 1 }), parent: None };
        // The removal this instance sends answers the edit: moot (files::shared, rule 4).
        assert_eq!(judge_by_rules(&s, &files, &doc("f", "x", false), &left, false), Verdict::Moot);
        // Where removals do not flow back to the sender, the edit is refused as before.
        s.rules[0].remove = Flow::None;
        assert!(refused(&judge_by_rules(&s, &files, &doc("f", "x", false), &left, false)));
    }

    #[test]
    fn changes_to_shared_documents_follow_update_and_remove_in_their_direction() {
        let t = Doctype::parse("io.cozy.todos").unwrap();
        let ok = Verdict::Accept { join: None, revokes: false };
        for (owner, policy, update, remove) in [
            (false, ("none", "push", "push"), true, true),
            (true, ("none", "push", "push"), false, false),
            (true, ("none", "sync", "none"), true, false),
            (false, ("none", "none", "sync"), false, true),
        ] {
            let s = sharing(owner, policy);
            let v = judge_by_rules(&s, &t, &doc("t1", "l1", false), &IN, false);
            assert_eq!(v == ok, update, "update, owner {owner}, {policy:?}: {v:?}");
            // Deleted, or no longer matching: a removal.
            for removal in [doc("t1", "l1", true), doc("t1", "l2", false)] {
                let v = judge_by_rules(&s, &t, &removal, &IN, false);
                assert_eq!(v == ok, remove, "removal, owner {owner}, {policy:?}: {v:?}");
            }
        }
        // Under remove: revoke, the owner's deletion revokes; a recipient's is refused.
        let recipient = sharing(false, ("none", "none", "revoke"));
        let v = judge_by_rules(&recipient, &t, &doc("t1", "l1", true), &IN, false);
        assert_eq!(v, Verdict::Accept { join: None, revokes: true });
        let owner = sharing(true, ("none", "none", "revoke"));
        assert!(refused(&judge_by_rules(&owner, &t, &doc("t1", "l1", true), &IN, false)));
    }
}
