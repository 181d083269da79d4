//! The receiving side of replication (`POST /sharings/:id/_revs_diff` and `_bulk_docs`), with
//! the safety principles enforced per document and per action:
//! - a document unknown here is created only if it matches a rule of this sharing whose `add`
//!   lets it flow in this direction;
//! - a document already here is changed only if it is in this sharing, and the rule's `update`
//!   (or `remove`, for a deletion or a document leaving the sharing) lets it flow;
//! - a document that exists here outside the sharing is never touched (a peer cannot pull it
//!   into the sharing);
//! - nothing at all is accepted from a read-only member (its token is GET-only: 403 earlier).
//!
//! Refused documents are reported; the rest of the batch applies (`new_edits=false`: merged
//! into the revision trees, idempotent). On the owner, ids are transformed back from the
//! sender's id space (see `sync::xor`).

use std::collections::{BTreeMap, HashMap};

use hearth_replicator::rev::Rev;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::model::{ChangeKind, Sharing};
use super::{Result, SharingError};
use crate::instance::Instance;
use crate::store::doc::parse_doc;
use crate::store::{DocId, DocWrite, Doctype};
use crate::sync::xor;

/// The id transformation between this instance and member `from` (only the owner has keys).
pub struct IdMap {
    key: Option<Vec<u8>>,
}

impl IdMap {
    pub fn for_member(s: &Sharing, member: usize) -> IdMap {
        let key = if s.owner {
            s.members.get(member).and_then(|m| m.xor_key.as_deref()).and_then(xor::parse_key)
        } else {
            None
        };
        IdMap { key }
    }

    /// Our id for an id in the peer's space, and back (XOR is its own inverse).
    pub fn convert(&self, id: &str) -> String {
        match &self.key {
            Some(k) => xor::xor_id(id, k),
            None => id.to_owned(),
        }
    }
}

fn split_key(key: &str) -> Result<(Doctype, DocId)> {
    let (doctype, id) = key.split_once('/').ok_or_else(|| SharingError::BadRequest(format!("invalid key {key:?}")))?;
    Ok((
        Doctype::parse(doctype).map_err(SharingError::BadRequest)?,
        DocId::parse(id).map_err(SharingError::BadRequest)?,
    ))
}

/// `_revs_diff` for a peer: honest for documents of this sharing; documents outside it are
/// reported as entirely missing (their existence here is none of the peer's business).
pub async fn revs_diff(inst: &Instance, s: &Sharing, from: usize, body: &Value) -> Result<Value> {
    let map = IdMap::for_member(s, from);
    let obj = body.as_object().ok_or_else(|| SharingError::BadRequest("the body must be an object".into()))?;
    let mut per_doctype: BTreeMap<Doctype, Vec<(String, DocId, Vec<Rev>)>> = BTreeMap::new();
    for (key, revs) in obj {
        let (doctype, peer_id) = split_key(key)?;
        let revs: Vec<Rev> = revs
            .as_array()
            .ok_or_else(|| SharingError::BadRequest("revisions must be arrays".into()))?
            .iter()
            .map(|r| {
                let r = r.as_str().ok_or_else(|| SharingError::BadRequest("invalid revision".into()))?;
                r.parse().map_err(|e| SharingError::BadRequest(format!("invalid revision {r:?}: {e}")))
            })
            .collect::<Result<_>>()?;
        let id = DocId::parse(&map.convert(peer_id.as_str())).map_err(SharingError::BadRequest)?;
        per_doctype.entry(doctype).or_default().push((key.clone(), id, revs));
    }
    let mut out = serde_json::Map::new();
    for (doctype, entries) in per_doctype {
        let ids: Vec<DocId> = entries.iter().map(|(_, id, _)| id.clone()).collect();
        let shared = inst.store.shared_state(s.id(), &doctype, &ids).await?;
        let mut honest = BTreeMap::new();
        for (key, id, revs) in &entries {
            // Documents that left the sharing are outside it, like any other.
            if shared.get(id).is_some_and(|st| !st.removed) {
                honest.insert(id.clone(), revs.clone());
            } else if !revs.is_empty() {
                out.insert(key.clone(), json!({"missing": revs.iter().map(Rev::to_string).collect::<Vec<_>>()}));
            }
        }
        let diff = inst.store.revs_diff(&doctype, honest).await?;
        for (key, id, _) in &entries {
            if let Some(d) = diff.get(id) {
                let mut entry = json!({"missing": d.missing.iter().map(Rev::to_string).collect::<Vec<_>>()});
                if !d.possible_ancestors.is_empty() {
                    entry["possible_ancestors"] =
                        json!(d.possible_ancestors.iter().map(Rev::to_string).collect::<Vec<_>>());
                }
                out.insert(key.clone(), entry);
            }
        }
    }
    Ok(Value::Object(out))
}

/// What `_bulk_docs` did.
pub struct Applied {
    pub accepted: usize,
    pub refused: Vec<Value>,
    /// A document of a `remove: revoke` rule was deleted by the peer.
    pub revoke: bool,
}

/// `_bulk_docs` from member `from` (`{"doctype": [documents]}`, the request's JSON text):
/// checks each document against the sharing's rules and membership, applies the accepted ones,
/// reports the others. Documents are split into their `_` members and their body as written
/// (see `store::body`), never parsed into numbers.
pub async fn bulk_docs(inst: &Instance, s: &Sharing, from: usize, body: &[u8]) -> Result<Applied> {
    let map = IdMap::for_member(s, from);
    let to_owner = s.owner;
    let obj: BTreeMap<String, &RawValue> = serde_json::from_slice(body).map_err(|e| {
        SharingError::BadRequest(match e.classify() {
            serde_json::error::Category::Data => "the body must be an object of doctypes".into(),
            _ => format!("invalid JSON: {e}"),
        })
    })?;
    let mut applied = Applied { accepted: 0, refused: Vec::new(), revoke: false };
    for (doctype, docs) in obj {
        let doctype = Doctype::parse(&doctype).map_err(SharingError::BadRequest)?;
        let docs: Vec<&RawValue> = serde_json::from_str(docs.get())
            .map_err(|_| SharingError::BadRequest("each doctype needs an array of documents".into()))?;
        let mut writes = Vec::with_capacity(docs.len());
        for d in docs {
            let mut w = parse_doc(d, None, false).map_err(SharingError::BadRequest)?;
            let peer_id = w.id.to_string();
            w.id = DocId::parse(&map.convert(&peer_id)).map_err(SharingError::BadRequest)?;
            writes.push((peer_id, w));
        }
        let ids: Vec<DocId> = writes.iter().map(|(_, w)| w.id.clone()).collect();
        let shared = inst.store.shared_state(s.id(), &doctype, &ids).await?;
        let existing: HashMap<DocId, Vec<(Rev, bool)>> = inst.store.doc_leaves(&doctype, &ids).await?;
        let mut accepted: Vec<DocWrite> = Vec::new();
        for (peer_id, w) in writes {
            let verdict = judge(
                s,
                &doctype,
                &w,
                shared.get(&w.id).filter(|st| !st.removed).map(|st| st.rule_index),
                existing.contains_key(&w.id),
                to_owner,
            );
            match verdict {
                Ok(revoke) => {
                    applied.revoke |= revoke;
                    accepted.push(w);
                }
                Err(reason) => applied
                    .refused
                    .push(json!({"id": peer_id, "doctype": doctype.as_str(), "error": "forbidden", "reason": reason})),
            }
        }
        applied.accepted += accepted.len();
        if !accepted.is_empty() {
            let errors = inst.store.bulk_docs(&doctype, accepted, false).await?;
            for e in errors {
                if let crate::store::WriteResult::Rejected { id, reason } = e {
                    applied.refused.push(json!({"id": map.convert(id.as_str()), "doctype": doctype.as_str(), "error": "bad_request", "reason": reason}));
                }
            }
        }
    }
    Ok(applied)
}

/// The decision for one incoming document. `Ok(true)` when the change should revoke the sharing
/// (a deletion under a `remove: revoke` rule).
fn judge(
    s: &Sharing,
    doctype: &Doctype,
    w: &DocWrite,
    tracked: Option<usize>,
    exists: bool,
    to_owner: bool,
) -> Result<bool, String> {
    let matching =
        s.rules.iter().enumerate().find(|(_, r)| !r.local && r.matches(doctype.as_str(), w.id.as_str(), &w.body));
    match tracked {
        None if exists => Err("the document exists here outside this sharing".into()),
        None if w.deleted => Err("the document is not in this sharing".into()),
        None => match matching {
            Some((_, rule)) if rule.allows(ChangeKind::Add, to_owner) => Ok(false),
            Some(_) => Err("the sharing's rules do not let new documents flow this way".into()),
            None => Err("the document matches no rule of this sharing".into()),
        },
        Some(index) => {
            let rule = s.rules.get(index).ok_or_else(|| "unknown rule".to_string())?;
            let kind = if w.deleted || matching.is_none() { ChangeKind::Remove } else { ChangeKind::Update };
            if kind == ChangeKind::Remove && w.deleted && rule.remove == super::model::Flow::Revoke {
                // The owner's deletion ends the sharing here; a member cannot delete the
                // owner's document this way (its own deletion makes it leave instead).
                return if to_owner {
                    Err("removals under a revoke rule do not flow to the owner".into())
                } else {
                    Ok(true)
                };
            }
            if rule.allows(kind, to_owner) {
                Ok(false)
            } else {
                Err(format!(
                    "the sharing's rules do not let {} flow this way",
                    if kind == ChangeKind::Remove { "removals" } else { "updates" }
                ))
            }
        }
    }
}
