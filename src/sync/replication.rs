//! One replication of a sharing from this instance to one member (the owner to a recipient,
//! or a recipient to the owner), executing `hearth_replicator::replicate::run` with:
//! - [`LocalSource`]: the sharing's tracked changes in the local store, filtered by the rules
//!   for this direction, with ids transformed for the member; the checkpoint is a `_local`
//!   document per (sharing, member), which also keeps what the member did with what it was
//!   sent ([`LinkRecord`]: documents written, refused and why);
//! - [`PeerTarget`]: the member's `/sharings/:id/_revs_diff` and `_bulk_docs`, called with the
//!   credentials it gave us (refreshed on 401, and stored again when they change).
//!
//! Which changes travel is decided by `sharing::send::judge` (the rules, and how they mirror
//! the receiving side's judgement, are there); this module reads the feed and the leaves it
//! needs and executes the decision.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use hearth_replicator::replicate::{Change, ChangeBatch, DocKey, Outgoing, Refusal, Source, Target};
use hearth_replicator::rev::Rev;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use crate::federation::client::{Federation, FederationError};
use crate::instance::Instance;
use crate::sharing::model::{now_rfc3339, PeerCredentials, Sharing};
use crate::sharing::protocol::{BulkDocs, Departure, Refused, RevsDiffAnswer, RevsDiffRequest};
use crate::sharing::send::{self, ToMember};
use crate::sharing::xor::IdMap;
use crate::sharing::{self, MemberIndex, SharingId};
use crate::store::doc::render_as;
use crate::store::{Body, DocId, Doctype, KeepRow, OpenRev, StoreError};

pub const CHECKPOINTS_DOCTYPE: &str = "io.hearth.replication";

/// Logs how long one replication step took, at DEBUG, when dropped: with
/// `HEARTH_LOG=hearth::sync=debug`, a change's way to a peer reads step by step (`step`, the
/// documents it handled, `us` microseconds).
struct Step {
    what: &'static str,
    docs: usize,
    started: std::time::Instant,
}

impl Step {
    fn start(what: &'static str, docs: usize) -> Step {
        Step { what, docs, started: std::time::Instant::now() }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        tracing::debug!(
            step = self.what,
            docs = self.docs,
            us = self.started.elapsed().as_micros() as u64,
            "replication step"
        );
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Peer(#[from] FederationError),
    #[error("{0}")]
    Protocol(String),
    /// A document under a `remove: revoke` rule was deleted here or left the rule's set: the
    /// sharing must be revoked.
    #[error("a document whose removal revokes the sharing was deleted")]
    RevokeRequested,
}

impl SyncError {
    pub fn is_transient(&self) -> bool {
        match self {
            // A full disk frees up: retry later, as for an unavailable store.
            SyncError::Store(StoreError::Unavailable(_) | StoreError::Full(_)) => true,
            SyncError::Store(_) => false,
            SyncError::Peer(p) => p.is_transient(),
            SyncError::Protocol(_) | SyncError::RevokeRequested => false,
        }
    }
}

fn checkpoints() -> Doctype {
    Doctype::parse(CHECKPOINTS_DOCTYPE).unwrap_or_else(|_| unreachable!("static doctype"))
}

pub fn checkpoint_id(sharing: &str, member: MemberIndex) -> String {
    format!("sharing-{sharing}-{member}")
}

/// Refused documents a [`LinkRecord`] names at most (beyond, refusals are only counted).
pub const MAX_REFUSED_KEPT: usize = 10_000;

/// What a (sharing, member) link has delivered, kept in its checkpoint document (`_local`
/// `sharing-<sharing>-<member>` of `io.hearth.replication`), updated with the checkpoint after
/// each batch the member acknowledged, so it survives restarts. Counters use the names of
/// CouchDB's replication statistics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinkRecord {
    /// The sharing feed's sequence up to which the member acknowledged everything.
    pub last_seq: u64,
    /// Documents the member wrote.
    pub docs_written: u64,
    /// Documents the member refused (not written), all told.
    pub doc_write_failures: u64,
    /// Revisions the member said it lacked (`_revs_diff`).
    pub missing_revisions_found: u64,
    /// Documents the member refused and has not written since: `<doctype>/<id>` (this
    /// instance's ids) → the member's reason. The link is not healthy while this is not empty.
    pub refused: BTreeMap<String, String>,
    pub last_refusal: Option<LastRefusal>,
}

/// The latest document a member refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRefusal {
    /// `<doctype>/<id>`, this instance's id.
    pub doc: String,
    pub reason: String,
    /// RFC 3339.
    pub at: String,
}

impl LinkRecord {
    /// Folds in what the member did with one batch: the documents it wrote clear their earlier
    /// refusal; the refused ones are kept (up to [`MAX_REFUSED_KEPT`]) and counted.
    pub fn record_batch(&mut self, written: &[String], refused: &[(String, String)], at: &str) {
        self.docs_written += written.len() as u64;
        for key in written {
            self.refused.remove(key);
        }
        self.doc_write_failures += refused.len() as u64;
        for (key, reason) in refused {
            if self.refused.len() < MAX_REFUSED_KEPT || self.refused.contains_key(key) {
                self.refused.insert(key.clone(), reason.clone());
            }
        }
        if let Some((key, reason)) = refused.last() {
            self.last_refusal = Some(LastRefusal { doc: key.clone(), reason: reason.clone(), at: at.to_owned() });
        }
    }
}

/// The record of (sharing, member); `last_seq`: everything up to it was acknowledged.
pub async fn read_link(inst: &Instance, sharing: &str, member: MemberIndex) -> Result<LinkRecord, StoreError> {
    match inst.store.get_local(&checkpoints(), &checkpoint_id(sharing, member)).await {
        Ok(doc) => serde_json::from_str(doc.body.as_str())
            .map_err(|e| StoreError::Corrupt(format!("checkpoint of sharing {sharing}, member {member}: {e}"))),
        Err(StoreError::NotFound) => Ok(LinkRecord::default()),
        Err(e) => Err(e),
    }
}

/// The checkpoint of (sharing, member): everything up to it was acknowledged by the member.
/// (Only `last_seq` is read: the scheduler asks often, and the refusals can be many.)
pub async fn read_checkpoint(inst: &Instance, sharing: &str, member: MemberIndex) -> Result<u64, StoreError> {
    match inst.store.get_local(&checkpoints(), &checkpoint_id(sharing, member)).await {
        Ok(doc) => Ok(doc.body.get("last_seq").and_then(|v| v.as_u64()).unwrap_or(0)),
        Err(StoreError::NotFound) => Ok(0),
        Err(e) => Err(e),
    }
}

/// Saves `seq` as the checkpoint of (sharing, member) when it is past the saved one: the
/// position runs reached through changes filtered out whole, which they keep in memory rather
/// than write after each batch (see `replicate::run`). The caller makes sure no run of the
/// link is under way.
pub async fn save_position(inst: &Instance, sharing: &str, member: MemberIndex, seq: u64) -> Result<(), SyncError> {
    let mut record = read_link(inst, sharing, member).await?;
    if record.last_seq >= seq {
        return Ok(());
    }
    record.last_seq = seq;
    inst.store.put_local(&checkpoints(), &checkpoint_id(sharing, member), record_body(&record)?).await?;
    Ok(())
}

fn record_body(record: &LinkRecord) -> Result<Body, SyncError> {
    match serde_json::to_value(record) {
        Ok(Value::Object(m)) => Ok(Body::from_map(&m)),
        _ => Err(SyncError::Protocol("checkpoint does not serialise".into())),
    }
}

/// What the source and the target of one run share: the documents going as part of the
/// initial set, and what the member did with the batch being sent (keys in its id space).
#[derive(Default)]
struct Exchange {
    initial: HashSet<DocKey>,
    missing_found: u64,
    written: Vec<DocKey>,
    refused: Vec<(DocKey, String)>,
}

type Shared = Arc<Mutex<Exchange>>;

fn exchange(shared: &Shared) -> Result<std::sync::MutexGuard<'_, Exchange>, SyncError> {
    shared.lock().map_err(|_| SyncError::Protocol("replication state poisoned".into()))
}

/// The two ends of one replication of `sharing` to `member`, starting from the saved
/// checkpoint or from `position`, where an earlier run of this process got to, if further.
pub fn endpoints(
    federation: Arc<Federation>,
    inst: Arc<Instance>,
    sharing: &Sharing,
    member: MemberIndex,
    position: u64,
) -> Result<(LocalSource, PeerTarget), SyncError> {
    let shared = Shared::default();
    let target = PeerTarget::new(federation, inst.clone(), sharing, member, shared.clone())?;
    let ids = IdMap::for_member(sharing, member);
    let source = LocalSource {
        inst,
        sharing: sharing.clone(),
        member,
        ids,
        departures: HashMap::new(),
        alive: HashSet::new(),
        record: LinkRecord::default(),
        position,
        shared,
    };
    Ok((source, target))
}

pub struct LocalSource {
    pub inst: Arc<Instance>,
    pub sharing: Sharing,
    pub member: MemberIndex,
    ids: IdMap,
    /// Documents that left the sharing in this batch: the deletion peers get instead of the
    /// new content (key → the tombstone and the local revision it follows).
    departures: HashMap<DocKey, (Rev, Rev)>,
    /// Documents of the batch that are alive and in the sharing here: a removal that is one of
    /// their deleted leaves is history, never sent (see [`LocalSource::fetch`]).
    alive: HashSet<DocKey>,
    /// The link's record as of the last checkpoint.
    record: LinkRecord,
    /// Where an earlier run got to, possibly past the saved checkpoint (see [`save_position`]).
    position: u64,
    shared: Shared,
}

impl LocalSource {
    /// Whether document `id` is, as of now, out of the sharing here (tracked, and removed).
    async fn still_out(&self, doctype: &Doctype, id: &DocId) -> Result<bool, SyncError> {
        let states = self.inst.store.shared_state(self.sharing.sharing_id(), doctype, std::slice::from_ref(id)).await?;
        Ok(states.get(id).is_some_and(|st| st.removed))
    }

    /// The revision of this instance's removal on top of `winner` (derived from it and from the
    /// removal's body, so the same whenever it is made); `None` for a revision at the
    /// generation limit, which cannot get a child.
    fn departure_rev(&self, winner: &Rev) -> Option<Rev> {
        let body = crate::sharing::protocol::departure_body(self.inst.domain.as_str());
        hearth_replicator::rev::new_rev(Some(winner), true, body.as_bytes()).ok()
    }

    /// A removal on top of a document's current winner: the tombstone and the winner (with its
    /// history) to build it from; nothing when the winner is a deletion already.
    async fn departure_from_winner(
        &self,
        doctype: &Doctype,
        id: &DocId,
    ) -> Result<(Option<Rev>, Vec<OpenRev>), SyncError> {
        let leaves = self.inst.store.doc_leaves(doctype, std::slice::from_ref(id)).await?;
        let Some((winner, false)) = leaves.get(id).and_then(|l| l.first()).cloned() else {
            return Ok((None, Vec::new()));
        };
        let Some(tombstone) = self.departure_rev(&winner) else { return Ok((None, Vec::new())) };
        let found = self.inst.store.open_revs_many(doctype, vec![(id.clone(), vec![winner])]).await?;
        Ok((Some(tombstone), found.into_iter().next().map(|(_, f)| f).unwrap_or_default()))
    }

    /// `doctype/id` in the member's id space → in this instance's.
    fn local_key(&self, key: &str) -> String {
        match key.split_once('/') {
            Some((doctype, id)) => format!("{doctype}/{}", self.ids.convert(id)),
            None => key.to_owned(),
        }
    }
}

impl Source for LocalSource {
    type Error = SyncError;

    async fn checkpoint(&mut self) -> Result<u64, SyncError> {
        self.record = read_link(&self.inst, self.sharing.id(), self.member).await?;
        Ok(self.record.last_seq.max(self.position))
    }

    async fn changes(&mut self, since: u64, limit: usize) -> Result<ChangeBatch, SyncError> {
        let mut step = Step::start("changes", 0);
        // What came from this member and has not changed here since (the row's latest change
        // is the write that brought it) is not sent back: the member holds every revision of
        // it, so it is not even asked about (no echo of an initial sync to its sender), and its
        // leaves are not read. A document under a `remove: revoke` rule is still looked at, as
        // its deletion must end the sharing here too.
        let (sharing, member) = (self.sharing.clone(), self.member);
        let keep: KeepRow = Arc::new(move |r| !send::is_echo(&sharing, member, r));
        let page = self.inst.store.shared_changes_with_leaves(self.sharing.sharing_id(), since, limit, keep).await?;
        step.docs = page.read;
        let pending = page.read >= limit;
        let last_seq = page.last_seq;
        let mut changes = Vec::with_capacity(page.rows.len());
        let mut initial = Vec::new();
        // Each row goes with the leaves of its own write (a document written again meanwhile
        // is left out of this page: its newer row comes in a later one).
        for (r, l) in page.rows {
            let deleted = l.first().is_some_and(|(_, d)| *d);
            let key = format!("{}/{}", r.doctype, self.ids.convert(r.id.as_str()));
            match send::judge(&self.sharing, self.member, &r, deleted, since) {
                ToMember::Skip => continue,
                ToMember::Revoke => return Err(SyncError::RevokeRequested),
                ToMember::Arrival { initial: listed } => {
                    if listed {
                        initial.push(key.clone());
                    }
                    let leaves = l.into_iter().map(|(rev, _)| rev).collect();
                    self.alive.insert(key.clone());
                    changes.push(Change { seq: r.seq, key, leaves, fresh: true });
                }
                ToMember::Departure => {
                    // Under the rule's `remove` policy the member gets a deletion on top of
                    // the revision it may have; the same on every instance, since the
                    // tombstone's id is derived from that revision. For files, the member
                    // keeps a dissociated copy (Cozy; see `files::shared`).
                    let Some((winner, _)) = l.first() else { continue };
                    let Some(tombstone) = self.departure_rev(winner) else {
                        // A winner at the generation limit cannot get a child: its peers keep it.
                        tracing::warn!(doc = %key, rev = %winner, "no removal sent: the revision is at the generation limit");
                        continue;
                    };
                    self.departures.insert(key.clone(), (tombstone.clone(), winner.clone()));
                    self.alive.remove(&key);
                    changes.push(Change { seq: r.seq, key, leaves: vec![tombstone], fresh: false });
                }
                ToMember::Change => {
                    if deleted {
                        self.alive.remove(&key);
                    } else {
                        self.alive.insert(key.clone());
                    }
                    let leaves = l.into_iter().map(|(rev, _)| rev).collect();
                    changes.push(Change { seq: r.seq, key, leaves, fresh: false });
                }
            }
        }
        exchange(&self.shared)?.initial.extend(initial);
        Ok(ChangeBatch { changes, last_seq, pending })
    }

    async fn fetch(&mut self, wanted: BTreeMap<DocKey, Vec<Rev>>) -> Result<Vec<Outgoing>, SyncError> {
        let _step = Step::start("fetch", wanted.len());
        // What the member lacks: what its `_revs_diff` said, and the documents it cannot have.
        exchange(&self.shared)?.missing_found += wanted.values().map(|m| m.len() as u64).sum::<u64>();
        // One store call per doctype for the whole batch.
        let mut by_doctype: BTreeMap<Doctype, Vec<(DocId, Vec<Rev>)>> = BTreeMap::new();
        let mut tombstones: HashMap<(Doctype, DocId), Rev> = HashMap::new();
        for (key, mut revs) in wanted {
            let departure = self.departures.get(&key).filter(|(t, _)| revs.contains(t)).cloned();
            let (doctype, peer_id) =
                key.split_once('/').ok_or_else(|| SyncError::Protocol(format!("bad key {key}")))?;
            let doctype = Doctype::parse(doctype).map_err(SyncError::Protocol)?;
            let id = DocId::parse(&self.ids.convert(peer_id)).map_err(SyncError::Protocol)?;
            if let Some((tombstone, parent)) = departure {
                // Read the parent's history to build the tombstone's.
                revs = vec![parent];
                tombstones.insert((doctype.clone(), id.clone()), tombstone);
            }
            by_doctype.entry(doctype).or_default().push((id, revs));
        }
        // Deletions go after everything else of the batch (a directory's children are moved
        // or deleted before it is); the receiver puts directories before what they hold
        // (`sharing::receive`).
        let mut out = Vec::new();
        let mut deletions = Vec::new();
        let departure_mark = crate::sharing::protocol::departure_mark(self.inst.domain.as_str());
        for (doctype, list) in by_doctype {
            for (id, mut found) in self.inst.store.open_revs_many(&doctype, list).await? {
                let peer_id = self.ids.convert(id.as_str());
                let mut tombstone = tombstones.remove(&(doctype.clone(), id.clone()));
                if tombstone.is_some() && !found.iter().any(|f| matches!(f, OpenRev::Found(_))) {
                    // The document changed since its row was read (renamed after it left, say):
                    // the revision the tombstone was to follow is no longer readable (CouchDB
                    // keeps only leaves' bodies). If it is still out of the sharing here, the
                    // removal follows the current winner instead. If it came back meanwhile
                    // (an item the owner restored into the shared folder, say), nothing is sent
                    // for it now: a removal on top of the revision that brought it back would
                    // win on the member over that revision, and the newer row that brought it
                    // back comes in a later batch.
                    if !self.still_out(&doctype, &id).await? {
                        continue;
                    }
                    (tombstone, found) = self.departure_from_winner(&doctype, &id).await?;
                }
                let alive = self.alive.contains(&format!("{doctype}/{peer_id}"));
                for f in found {
                    let OpenRev::Found(d) = f else { continue };
                    if alive && d.deleted && d.body.get(crate::sharing::protocol::DEPARTED_FROM).is_some() {
                        // A removal the document came back from (moved out of the sharing
                        // and back, see `files::shared`, "Re-entry"): it lost to the live
                        // revision that brought the document back, and is history here.
                        // Sent, a member would take it for a removal it has not seen (a
                        // member accepting later, or one that missed it) and remove the
                        // document; so it is not sent. (A deletion that is not a removal,
                        // such as a settled conflict's losing leaf, goes as any revision.)
                        continue;
                    }
                    let deleted = tombstone.is_some() || d.deleted;
                    let doc = match &tombstone {
                        Some(t) => {
                            let mut history = vec![t.clone()];
                            history.extend(d.revisions.unwrap_or_else(|| vec![d.rev.clone()]));
                            serde_json::value::to_raw_value(&Departure::new(
                                peer_id.clone(),
                                t.clone(),
                                &history,
                                departure_mark.clone(),
                            ))
                        }
                        // The stored text, spliced under the peer's id: never re-serialised.
                        None => {
                            let mut d = d;
                            self.ids.convert_fields(doctype.as_str(), &mut d.body);
                            render_as(&d, &peer_id, &[])
                        }
                    }
                    .map_err(|e| SyncError::Store(StoreError::Corrupt(format!("{doctype}/{id}: {e}"))))?;
                    let o = Outgoing::new(format!("{doctype}/{peer_id}"), doc);
                    if deleted {
                        deletions.push(o);
                    } else {
                        out.push(o);
                    }
                }
            }
        }
        out.extend(deletions);
        Ok(out)
    }

    async fn save_checkpoint(&mut self, seq: u64) -> Result<(), SyncError> {
        let _step = Step::start("save_checkpoint", 0);
        let (missing, written, refused) = {
            let mut x = exchange(&self.shared)?;
            (std::mem::take(&mut x.missing_found), std::mem::take(&mut x.written), std::mem::take(&mut x.refused))
        };
        let written: Vec<String> = written.iter().map(|k| self.local_key(k)).collect();
        let refused: Vec<(String, String)> = refused.iter().map(|(k, r)| (self.local_key(k), r.clone())).collect();
        let mut record = self.record.clone();
        record.last_seq = seq;
        record.missing_revisions_found += missing;
        record.record_batch(&written, &refused, &now_rfc3339());
        let body = record_body(&record)?;
        self.inst.store.put_local(&checkpoints(), &checkpoint_id(self.sharing.id(), self.member), body).await?;
        self.record = record;
        Ok(())
    }
}

pub struct PeerTarget {
    pub federation: Arc<Federation>,
    pub inst: Arc<Instance>,
    pub sharing_id: SharingId,
    pub member: MemberIndex,
    pub base: Url,
    pub creds: PeerCredentials,
    shared: Shared,
}

/// Where and how this instance reaches member `member` of `s`: its address and the
/// credentials it gave us (documents and file content both go this way).
pub(crate) fn member_link(s: &Sharing, member: MemberIndex) -> Result<(Url, PeerCredentials), SyncError> {
    let m = s.member(member).ok_or_else(|| SyncError::Protocol("no such member".into()))?;
    let creds = m.outbound.clone().ok_or_else(|| SyncError::Protocol("no credentials for this member".into()))?;
    let base = m
        .instance
        .as_deref()
        .and_then(|u| Url::parse(u).ok())
        .ok_or_else(|| SyncError::Protocol("member without address".into()))?;
    Ok((base, creds))
}

impl PeerTarget {
    fn new(
        federation: Arc<Federation>,
        inst: Arc<Instance>,
        s: &Sharing,
        member: MemberIndex,
        shared: Shared,
    ) -> Result<PeerTarget, SyncError> {
        let (base, creds) = member_link(s, member)?;
        let sharing_id = s.id.clone().ok_or_else(|| SyncError::Protocol("sharing without id".into()))?;
        Ok(PeerTarget { federation, inst, sharing_id, member, base, creds, shared })
    }

    async fn call(&mut self, path: &str, body: &(impl serde::Serialize + ?Sized)) -> Result<Value, SyncError> {
        let before = self.creds.clone();
        let result = self.federation.call_peer(&mut self.creds, &self.base, Method::POST, path, Some(body)).await;
        if self.creds != before {
            let (member, creds) = (self.member, self.creds.clone());
            sharing::update(self.inst.store.as_ref(), &self.sharing_id, |s| {
                if let Some(m) = s.member_mut(member).filter(|m| m.outbound.is_some()) {
                    m.outbound = Some(creds.clone());
                }
                Ok(())
            })
            .await
            .map_err(|e| SyncError::Protocol(e.to_string()))?;
        }
        Ok(result?)
    }
}

/// The owner's refusal of everything a member that may only read sends (see
/// `sharing::protocol::READ_ONLY_REFUSAL`): the reason to record for each document.
fn read_only_refusal(e: &SyncError) -> Option<String> {
    match e {
        SyncError::Peer(FederationError::Status { status: 403, reason, .. })
            if reason.contains(crate::sharing::protocol::READ_ONLY_REFUSAL) =>
        {
            Some(format!("the owner refused it (403): {}", crate::sharing::protocol::READ_ONLY_REFUSAL))
        }
        _ => None,
    }
}

impl PeerTarget {
    /// Records every document of `keys` as refused for `reason` (the link shows `degraded`
    /// with them in `refused_docs`, and does not send them again until they change).
    fn refuse_all(&self, keys: impl IntoIterator<Item = DocKey>, reason: &str) -> Result<Vec<Refusal>, SyncError> {
        let mut x = exchange(&self.shared)?;
        let mut out = Vec::new();
        for key in keys {
            x.refused.push((key.clone(), reason.to_owned()));
            out.push(Refusal { key, reason: reason.to_owned() });
        }
        Ok(out)
    }
}

impl Target for PeerTarget {
    type Error = SyncError;

    /// Asks the member; a 413 (more documents than its `max_bulk_docs_count`) splits the
    /// request in halves until each part passes.
    async fn revs_diff(&mut self, revs: BTreeMap<DocKey, Vec<Rev>>) -> Result<BTreeMap<DocKey, Vec<Rev>>, SyncError> {
        let mut parts = std::collections::VecDeque::from([revs]);
        let mut out = BTreeMap::new();
        while let Some(mut part) = parts.pop_front() {
            match self.diff_part(&part).await {
                Ok(missing) => out.extend(missing),
                // A member that may only read: the owner refuses all it sends, these included.
                Err(e) if read_only_refusal(&e).is_some() => {
                    let reason = read_only_refusal(&e).unwrap_or_default();
                    let mut keys: Vec<DocKey> = part.into_keys().collect();
                    keys.extend(parts.drain(..).flat_map(BTreeMap::into_keys));
                    self.refuse_all(keys, &reason)?;
                    break;
                }
                Err(SyncError::Peer(FederationError::Status { status: 413, .. })) if part.len() > 1 => {
                    let Some(middle) = part.keys().nth(part.len() / 2).cloned() else { continue };
                    let second = part.split_off(&middle);
                    parts.push_front(second);
                    parts.push_front(part);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Sends the documents; a 413 (the member's `max_http_request_size`,
    /// `max_bulk_docs_count` or `max_document_size`) splits the request in halves until each
    /// part passes, and a document refused alone is reported as refused, as CouchDB's
    /// replicator does: it is not sent again until it changes.
    async fn bulk_docs(&mut self, docs: Vec<Outgoing>) -> Result<Vec<Refusal>, SyncError> {
        let mut parts = std::collections::VecDeque::from([docs]);
        let mut refusals = Vec::new();
        while let Some(part) = parts.pop_front() {
            let keys: Vec<DocKey> = part.iter().map(|d| d.key.clone()).collect();
            let sent = match self.send_docs(part).await {
                Err(e) if read_only_refusal(&e).is_some() => {
                    let reason = read_only_refusal(&e).unwrap_or_default();
                    let rest = parts.drain(..).flatten().map(|d| d.key);
                    refusals.extend(self.refuse_all(keys.into_iter().chain(rest), &reason)?);
                    break;
                }
                sent => sent?,
            };
            match sent {
                Sent::Answered(refused) => refusals.extend(refused),
                Sent::TooLarge(mut part, _) if part.len() > 1 => {
                    let second = part.split_off(part.len() / 2);
                    parts.push_front(second);
                    parts.push_front(part);
                }
                Sent::TooLarge(part, reason) => {
                    let reason = format!("the member refused it as too large ({reason})");
                    let mut x = exchange(&self.shared)?;
                    for d in part {
                        x.refused.push((d.key.clone(), reason.clone()));
                        refusals.push(Refusal { key: d.key, reason: reason.clone() });
                    }
                }
            }
        }
        Ok(refusals)
    }
}

/// What the member did with one `_bulk_docs` request.
enum Sent {
    Answered(Vec<Refusal>),
    /// 413: the documents, to be sent in smaller parts, and the member's reason.
    TooLarge(Vec<Outgoing>, String),
}

impl PeerTarget {
    async fn diff_part(&mut self, revs: &BTreeMap<DocKey, Vec<Rev>>) -> Result<BTreeMap<DocKey, Vec<Rev>>, SyncError> {
        let _step = Step::start("_revs_diff", revs.len());
        let body = RevsDiffRequest(revs);
        let reply = self.call(&format!("/sharings/{}/_revs_diff", self.sharing_id), &body).await?;
        let answer = RevsDiffAnswer::parse(reply).map_err(SyncError::Protocol)?;
        let mut out = BTreeMap::new();
        for (key, entry) in answer.0 {
            if revs.contains_key(&key) && !entry.missing.is_empty() {
                out.insert(key, entry.missing);
            }
        }
        Ok(out)
    }

    async fn send_docs(&mut self, docs: Vec<Outgoing>) -> Result<Sent, SyncError> {
        let _step = Step::start("_bulk_docs", docs.len());
        let mut body = BulkDocs::default();
        let mut sent: Vec<(DocKey, Doctype)> = Vec::with_capacity(docs.len());
        {
            let mut x = exchange(&self.shared)?;
            for d in docs {
                let Some(doctype) = d.key.split_once('/').and_then(|(t, _)| Doctype::parse(t).ok()) else {
                    return Err(SyncError::Protocol(format!("bad key {}", d.key)));
                };
                if x.initial.remove(&d.key) {
                    body.initial.insert(d.key.clone());
                }
                body.docs.entry(doctype.clone()).or_default().push(d.doc);
                sent.push((d.key, doctype));
            }
        }
        let reply = match self.call(&format!("/sharings/{}/_bulk_docs", self.sharing_id), &body).await {
            Ok(reply) => reply,
            Err(SyncError::Peer(FederationError::Status { status: 413, reason, .. })) => {
                // The documents go back in their order, still marked as the initial set's.
                exchange(&self.shared)?.initial.extend(std::mem::take(&mut body.initial));
                let mut by_doctype: HashMap<Doctype, std::vec::IntoIter<Box<serde_json::value::RawValue>>> =
                    body.docs.into_iter().map(|(t, docs)| (t, docs.into_iter())).collect();
                let docs = sent
                    .into_iter()
                    .filter_map(|(key, doctype)| {
                        by_doctype.get_mut(&doctype).and_then(Iterator::next).map(|doc| Outgoing::new(key, doc))
                    })
                    .collect();
                return Ok(Sent::TooLarge(docs, reason));
            }
            Err(e) => return Err(e),
        };
        let refused = Refused::parse_answer(&reply);
        let refused_keys: HashSet<String> = refused.iter().map(Refused::key).collect();
        let mut x = exchange(&self.shared)?;
        let sent: BTreeSet<DocKey> = sent.into_iter().map(|(k, _)| k).collect();
        x.written.extend(sent.into_iter().filter(|k| !refused_keys.contains(k)));
        x.refused.extend(refused.iter().map(|r| (r.key(), r.reason.clone())));
        Ok(Sent::Answered(refused.into_iter().map(|r| Refusal { key: r.key(), reason: r.reason }).collect()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn a_link_record_keeps_refused_documents_until_the_member_writes_them() {
        let mut r = LinkRecord::default();
        r.record_batch(&keys(&["t/a", "t/b"]), &[("t/c".into(), "exists".into())], "t1");
        assert_eq!((r.docs_written, r.doc_write_failures), (2, 1));
        assert_eq!(r.refused.keys().collect::<Vec<_>>(), ["t/c"]);
        assert_eq!(r.last_refusal.as_ref().map(|l| (l.doc.as_str(), l.at.as_str())), Some(("t/c", "t1")));
        // Refused again: counted again, kept once; another batch without refusals keeps it.
        r.record_batch(&[], &[("t/c".into(), "exists still".into())], "t2");
        r.record_batch(&keys(&["t/a"]), &[], "t3");
        assert_eq!((r.doc_write_failures, r.refused.len()), (2, 1));
        assert_eq!(r.refused["t/c"], "exists still");
        // Written at last: no longer refused, the last refusal stays on record.
        r.record_batch(&keys(&["t/c"]), &[], "t4");
        assert!(r.refused.is_empty());
        assert_eq!((r.docs_written, r.last_refusal.unwrap().at.as_str()), (4, "t2"));
    }

    #[test]
    fn a_link_record_names_a_bounded_number_of_refused_documents() {
        let mut r = LinkRecord::default();
        let many: Vec<(String, String)> = (0..MAX_REFUSED_KEPT + 5).map(|i| (format!("t/{i}"), "no".into())).collect();
        r.record_batch(&[], &many, "t");
        assert_eq!(r.refused.len(), MAX_REFUSED_KEPT);
        assert_eq!(r.doc_write_failures, many.len() as u64);
        // A record written by an older version (only `last_seq`) reads with empty statistics.
        let old: LinkRecord = serde_json::from_value(json!({"last_seq": 7})).unwrap();
        assert_eq!(old, LinkRecord { last_seq: 7, ..LinkRecord::default() });
    }
}
