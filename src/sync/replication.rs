//! One replication of a sharing from this instance to one member (the owner to a recipient,
//! or a recipient to the owner), executing `hearth_replicator::replicate::run` with:
//! - [`LocalSource`]: the sharing's tracked changes in the local store, filtered by the rules
//!   for this direction, with ids transformed for the member; the checkpoint is a `_local`
//!   document per (sharing, member);
//! - [`PeerTarget`]: the member's `/sharings/:id/_revs_diff` and `_bulk_docs`, called with the
//!   credentials it gave us (refreshed on 401, and stored again when they change).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hearth_replicator::replicate::{Change, ChangeBatch, DocKey, Outgoing, Refusal, Source, Target};
use hearth_replicator::rev::Rev;
use reqwest::Method;
use serde_json::{json, Map, Value};
use url::Url;

use crate::federation::client::{Federation, FederationError};
use crate::instance::Instance;
use crate::sharing::model::{ChangeKind, Flow, PeerCredentials, Sharing};
use crate::sharing::receive::IdMap;
use crate::sharing::{self, SharingId};
use crate::store::doc::render_as;
use crate::store::{Body, DocId, Doctype, OpenRev, StoreError};

pub const CHECKPOINTS_DOCTYPE: &str = "io.hearth.replication";

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Peer(#[from] FederationError),
    #[error("{0}")]
    Protocol(String),
    /// A document under a `remove: revoke` rule was deleted here: the sharing must be revoked.
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

pub fn checkpoint_id(sharing: &str, member: usize) -> String {
    format!("sharing-{sharing}-{member}")
}

/// The checkpoint of (sharing, member): everything up to it was acknowledged by the member.
pub async fn read_checkpoint(inst: &Instance, sharing: &str, member: usize) -> Result<u64, StoreError> {
    match inst.store.get_local(&checkpoints(), &checkpoint_id(sharing, member)).await {
        Ok(doc) => Ok(doc.body.get("last_seq").and_then(|v| v.as_u64()).unwrap_or(0)),
        Err(StoreError::NotFound) => Ok(0),
        Err(e) => Err(e),
    }
}

pub struct LocalSource {
    pub inst: Arc<Instance>,
    pub sharing: Sharing,
    pub member: usize,
    ids: IdMap,
    /// Documents that left the sharing in this batch: the deletion peers get instead of the
    /// new content (key → the tombstone and the local revision it follows).
    departures: HashMap<DocKey, (Rev, Rev)>,
}

impl LocalSource {
    pub fn new(inst: Arc<Instance>, sharing: Sharing, member: usize) -> LocalSource {
        let ids = IdMap::for_member(&sharing, member);
        LocalSource { inst, sharing, member, ids, departures: HashMap::new() }
    }

    /// Whether changes selected by rule `index` of this kind travel in this direction.
    fn flows(&self, index: usize, kind: Option<ChangeKind>) -> bool {
        let to_owner = !self.sharing.owner;
        self.sharing.rules.get(index).is_some_and(|r| match kind {
            Some(k) => r.allows(k, to_owner),
            // A live document: an addition or an update, the target decides which.
            None => r.allows(ChangeKind::Add, to_owner) || r.allows(ChangeKind::Update, to_owner),
        })
    }
}

impl Source for LocalSource {
    type Error = SyncError;

    async fn checkpoint(&mut self) -> Result<u64, SyncError> {
        Ok(read_checkpoint(&self.inst, self.sharing.id(), self.member).await?)
    }

    async fn changes(&mut self, since: u64, limit: usize) -> Result<ChangeBatch, SyncError> {
        let rows = self.inst.store.shared_changes(self.sharing.id(), since, limit).await?;
        let pending = rows.len() >= limit;
        let last_seq = rows.last().map_or(since, |r| r.seq);
        let mut by_doctype: BTreeMap<Doctype, Vec<DocId>> = BTreeMap::new();
        for r in &rows {
            by_doctype.entry(r.doctype.clone()).or_default().push(r.id.clone());
        }
        let mut leaves: HashMap<(Doctype, DocId), Vec<(Rev, bool)>> = HashMap::new();
        for (doctype, ids) in by_doctype {
            for (id, l) in self.inst.store.doc_leaves(&doctype, &ids).await? {
                leaves.insert((doctype.clone(), id), l);
            }
        }
        let mut changes = Vec::with_capacity(rows.len());
        for r in rows {
            let Some(l) = leaves.remove(&(r.doctype.clone(), r.id.clone())) else { continue };
            let deleted = l.first().is_some_and(|(_, d)| *d);
            let rule = self.sharing.rules.get(r.rule_index);
            if deleted && rule.is_some_and(|rule| rule.remove == Flow::Revoke) {
                return Err(SyncError::RevokeRequested);
            }
            let kind = if deleted || r.removed { Some(ChangeKind::Remove) } else { None };
            if !self.flows(r.rule_index, kind) {
                continue;
            }
            let key = format!("{}/{}", r.doctype, self.ids.convert(r.id.as_str()));
            if r.removed && !deleted {
                // The document left the sharing (it no longer matches): its new content is
                // none of the peers' business. Under the rule's `remove` policy they get a
                // deletion on top of the revision they may have; the same on every instance,
                // since the tombstone's id is derived from that revision.
                let Some((winner, _)) = l.first() else { continue };
                let Ok(tombstone) = hearth_replicator::rev::new_rev(Some(winner), true, b"{}") else {
                    // A winner at the generation limit cannot get a child: its peers keep it.
                    tracing::warn!(doc = %key, rev = %winner, "no removal sent: the revision is at the generation limit");
                    continue;
                };
                self.departures.insert(key.clone(), (tombstone.clone(), winner.clone()));
                changes.push(Change { seq: r.seq, key, leaves: vec![tombstone] });
                continue;
            }
            changes.push(Change { seq: r.seq, key, leaves: l.into_iter().map(|(rev, _)| rev).collect() });
        }
        Ok(ChangeBatch { changes, last_seq, pending })
    }

    async fn fetch(&mut self, wanted: BTreeMap<DocKey, Vec<Rev>>) -> Result<Vec<Outgoing>, SyncError> {
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
        let mut out = Vec::new();
        for (doctype, list) in by_doctype {
            for (id, found) in self.inst.store.open_revs_many(&doctype, list).await? {
                let peer_id = self.ids.convert(id.as_str());
                let tombstone = tombstones.remove(&(doctype.clone(), id.clone()));
                for f in found {
                    let OpenRev::Found(d) = f else { continue };
                    let doc = match &tombstone {
                        Some(t) => {
                            let mut history = vec![t.clone()];
                            history.extend(d.revisions.unwrap_or_else(|| vec![d.rev.clone()]));
                            serde_json::value::to_raw_value(
                                &json!({"_id": peer_id, "_rev": t.to_string(), "_deleted": true,
                                   "_revisions": hearth_replicator::rev::Revisions::from_revs(&history)}),
                            )
                        }
                        // The stored text, spliced under the peer's id: never re-serialised.
                        None => render_as(&d, &peer_id, &[]),
                    }
                    .map_err(|e| SyncError::Store(StoreError::Corrupt(format!("{doctype}/{id}: {e}"))))?;
                    out.push(Outgoing::new(format!("{doctype}/{peer_id}"), doc));
                }
            }
        }
        Ok(out)
    }

    async fn save_checkpoint(&mut self, seq: u64) -> Result<(), SyncError> {
        let mut body = Map::new();
        body.insert("last_seq".into(), json!(seq));
        let body = Body::from_map(&body);
        self.inst.store.put_local(&checkpoints(), &checkpoint_id(self.sharing.id(), self.member), body).await?;
        Ok(())
    }
}

pub struct PeerTarget {
    pub federation: Arc<Federation>,
    pub inst: Arc<Instance>,
    pub sharing_id: SharingId,
    pub member: usize,
    pub base: Url,
    pub creds: PeerCredentials,
}

impl PeerTarget {
    pub fn new(
        federation: Arc<Federation>,
        inst: Arc<Instance>,
        s: &Sharing,
        member: usize,
    ) -> Result<PeerTarget, SyncError> {
        let m = s.members.get(member).ok_or_else(|| SyncError::Protocol("no such member".into()))?;
        let creds = m.outbound.clone().ok_or_else(|| SyncError::Protocol("no credentials for this member".into()))?;
        let base = m
            .instance
            .as_deref()
            .and_then(|u| Url::parse(u).ok())
            .ok_or_else(|| SyncError::Protocol("member without address".into()))?;
        let sharing_id = s.id.clone().ok_or_else(|| SyncError::Protocol("sharing without id".into()))?;
        Ok(PeerTarget { federation, inst, sharing_id, member, base, creds })
    }

    async fn call(&mut self, path: &str, body: &(impl serde::Serialize + ?Sized)) -> Result<Value, SyncError> {
        let before = self.creds.clone();
        let result = self.federation.call_peer(&mut self.creds, &self.base, Method::POST, path, Some(body)).await;
        if self.creds != before {
            let (member, creds) = (self.member, self.creds.clone());
            sharing::update(self.inst.store.as_ref(), &self.sharing_id, |s| {
                if let Some(m) = s.members.get_mut(member).filter(|m| m.outbound.is_some()) {
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

impl Target for PeerTarget {
    type Error = SyncError;

    async fn revs_diff(&mut self, revs: BTreeMap<DocKey, Vec<Rev>>) -> Result<BTreeMap<DocKey, Vec<Rev>>, SyncError> {
        let body: Map<String, Value> =
            revs.iter().map(|(k, v)| (k.clone(), json!(v.iter().map(Rev::to_string).collect::<Vec<_>>()))).collect();
        let reply = self.call(&format!("/sharings/{}/_revs_diff", self.sharing_id), &Value::Object(body)).await?;
        let obj = reply.as_object().ok_or_else(|| SyncError::Protocol("_revs_diff answer is not an object".into()))?;
        let mut out = BTreeMap::new();
        for (key, entry) in obj {
            if !revs.contains_key(key) {
                continue;
            }
            let missing: Vec<Rev> = entry
                .get("missing")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|r| r.as_str().and_then(|r| r.parse().ok())).collect())
                .unwrap_or_default();
            if !missing.is_empty() {
                out.insert(key.clone(), missing);
            }
        }
        Ok(out)
    }

    async fn bulk_docs(&mut self, docs: Vec<Outgoing>) -> Result<Vec<Refusal>, SyncError> {
        // Documents travel as the text they were read as (`Outgoing::doc`).
        let mut by_doctype: BTreeMap<String, Vec<Box<serde_json::value::RawValue>>> = BTreeMap::new();
        for d in docs {
            let doctype = d.key.split_once('/').map(|(t, _)| t.to_owned()).unwrap_or_default();
            by_doctype.entry(doctype).or_default().push(d.doc);
        }
        let reply = self.call(&format!("/sharings/{}/_bulk_docs", self.sharing_id), &by_doctype).await?;
        Ok(reply
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|i| Refusal {
                        key: format!(
                            "{}/{}",
                            i.get("doctype").and_then(Value::as_str).unwrap_or_default(),
                            i.get("id").and_then(Value::as_str).unwrap_or_default()
                        ),
                        reason: i.get("reason").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}
