//! The replication routes that work on many documents at once: `_bulk_docs`, `_revs_diff`
//! and `_bulk_get` (the last streamed in chunks).

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use hearth_replicator::rev::Rev;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::auth::Verb;
use crate::http::limits::{array_at_most, Bounded, Limits};
use crate::http::stream::{self, put_json, Step};
use crate::http::{parse_raw_object, read_body, ApiError, ApiResult, Inst, Query};
use crate::store::doc::{parse_doc, parse_new_doc, render_into};
use crate::store::{DocId, Doctype, OpenRev, OpenRevs, Store, WriteResult};

use super::*;

/// `POST /data/:doctype/_bulk_docs` — `{"docs": [...], "new_edits": bool}` in one transaction.
/// With `new_edits: false` (replication) the answer lists only the failures, as CouchDB does.
/// More than `max_bulk_docs_count` documents: 413 `max_bulk_docs_count_exceeded`, told at the
/// first document past the limit; a document over `max_document_size`: 413
/// `document_too_large` for the whole request (CouchDB's answers; its replicator then splits the
/// batch until that document travels alone, and counts it as a write failure).
pub(super) async fn bulk_docs(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let doctype = doctype_of(&req)?;
    let q = Query::of(&req)?;
    let (_, reach) = authorize(&inst, &req, &doctype, Verb::Post).await?;
    let limits = Limits::of(&req);
    let bytes = read_body(&req, payload, limits.request).await?;
    // Documents stay unparsed text until each is split into its `_` members and its body.
    let body = parse_raw_object(&bytes, "the body")?;
    let new_edits = match body.get("new_edits").map(|v| serde_json::from_str::<Value>(v.get())) {
        None => q.bool("new_edits")?.unwrap_or(true),
        Some(Ok(Value::Bool(b))) => b,
        Some(_) => return Err(ApiError::bad_request("new_edits must be a boolean")),
    };
    let no_docs = || ApiError::bad_request("the body must have a docs array");
    let docs = match array_at_most(body.get("docs").ok_or_else(no_docs)?.get().as_bytes(), limits.bulk_docs) {
        Ok(docs) => docs,
        Err(Bounded::TooMany) => return Err(limits.too_many_docs()),
        Err(Bounded::Invalid(_)) => return Err(no_docs()),
    };
    let writes = docs
        .into_iter()
        .map(|d| {
            let w = if new_edits { parse_new_doc(d, true) } else { parse_doc(d, None, false) };
            let w = w.map_err(ApiError::BadRequest)?;
            limits.check_document(w.id.as_str(), w.body.as_str().len())?;
            Ok(w)
        })
        .collect::<ApiResult<Vec<_>>>()?;
    drop(body);
    drop(bytes);
    check_ids(&reach, writes.iter().map(|w| &w.id))?;
    let results = inst.0.store.bulk_docs(&doctype, writes, new_edits).await?;
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Answer<'a> {
        Ok { ok: bool, id: &'a str, rev: String },
        Failed { id: &'a str, error: &'static str, reason: &'a str },
    }
    let out: Vec<Answer<'_>> = results
        .iter()
        .map(|r| match r {
            WriteResult::Ok { id, rev } => Answer::Ok { ok: true, id: id.as_str(), rev: rev.to_string() },
            WriteResult::Conflict { id } => {
                Answer::Failed { id: id.as_str(), error: "conflict", reason: "Document update conflict." }
            }
            WriteResult::Rejected { id, reason } => Answer::Failed { id: id.as_str(), error: "bad_request", reason },
        })
        .collect();
    Ok(HttpResponse::Created().json(out))
}

/// `POST /data/:doctype/_revs_diff` — `{"id": [revs]}` → the revisions this instance lacks. At
/// most `max_bulk_docs_count` documents of at most `revs_limit` revisions each (413 beyond).
pub(super) async fn revs_diff(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let doctype = doctype_of(&req)?;
    let (_, reach) = authorize(&inst, &req, &doctype, Verb::Get).await?;
    let limits = Limits::of(&req);
    let bytes = read_body(&req, payload, limits.request).await?;
    let mut wanted = BTreeMap::new();
    for (id, revs) in limits.revs_diff(&bytes)? {
        let id = DocId::parse(&id).map_err(ApiError::BadRequest)?;
        let revs = revs
            .into_iter()
            .map(|r| {
                let s: String = serde_json::from_str(r.get())
                    .map_err(|_| ApiError::bad_request("invalid revision in the revision list"))?;
                s.parse::<Rev>()
                    .map_err(|e| ApiError::bad_request(format!("invalid revision in the revision list: {e}")))
            })
            .collect::<ApiResult<Vec<_>>>()?;
        wanted.insert(id, revs);
    }
    drop(bytes);
    check_ids(&reach, wanted.keys())?;
    let diff = inst.0.store.revs_diff(&doctype, wanted).await?;
    let mut out = Map::new();
    for (id, d) in diff {
        let mut entry = Map::new();
        entry.insert("missing".into(), json!(d.missing.iter().map(Rev::to_string).collect::<Vec<_>>()));
        if !d.possible_ancestors.is_empty() {
            entry.insert(
                "possible_ancestors".into(),
                json!(d.possible_ancestors.iter().map(Rev::to_string).collect::<Vec<_>>()),
            );
        }
        out.insert(id.to_string(), Value::Object(entry));
    }
    Ok(HttpResponse::Ok().json(out))
}

/// `POST /data/:doctype/_bulk_get?revs=true` — several documents (given revisions, or without
/// one every leaf, deleted ones included, as CouchDB's `open_revs=all`) in CouchDB's `{"results": [{"id", "docs": [{"ok"}|{"error"}]}]}` shape, written as
/// they are read (see `http::stream`). More than `max_bulk_get_count` documents asked for: 413
/// `max_bulk_get_count_exceeded`. An entry with an invalid id or rev gets its own
/// `{"error": {"id", "rev", "error": "bad_request", "reason"}}`, the others are answered (CouchDB).
pub(super) async fn bulk_get(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let doctype = doctype_of(&req)?;
    let q = Query::of(&req)?;
    let (_, reach) = authorize(&inst, &req, &doctype, Verb::Get).await?;
    let limits = Limits::of(&req);
    let bytes = read_body(&req, payload, limits.request).await?;
    let body = parse_raw_object(&bytes, "the body")?;
    let flag = |name: &str| body.get(name).is_some_and(|v| v.get() == "true");
    let revs_history = q.flag("revs")? || flag("revs");
    let latest = q.flag("latest")? || flag("latest");
    let no_docs = || ApiError::bad_request("the body must have a docs array");
    let docs = match array_at_most(body.get("docs").ok_or_else(no_docs)?.get().as_bytes(), limits.bulk_get) {
        Ok(docs) => docs,
        Err(Bounded::TooMany) => return Err(limits.too_many_gets()),
        Err(Bounded::Invalid(_)) => return Err(no_docs()),
    };
    #[derive(serde::Deserialize)]
    struct Wanted {
        id: Option<Value>,
        rev: Option<Value>,
    }
    let mut wanted = Vec::with_capacity(docs.len());
    for d in docs {
        let d: Wanted = serde_json::from_str(d.get())
            .map_err(|_| ApiError::bad_request("each docs entry must be a JSON object"))?;
        let id =
            d.id.as_ref()
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_request("each docs entry needs an id"))?;
        // An id or rev CouchDB refuses is that entry's error, not the request's.
        let id = match DocId::parse(id) {
            Ok(id) => id,
            Err(reason) => {
                wanted.push(BulkEntry::Bad { id: id.to_owned(), rev: rev_text(&d.rev), reason });
                continue;
            }
        };
        let rev = match &d.rev {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => match s.parse::<Rev>() {
                Ok(r) => Some(r),
                Err(e) => {
                    wanted.push(BulkEntry::Bad { id: id.to_string(), rev: Some(s.clone()), reason: e.to_string() });
                    continue;
                }
            },
            Some(other) => {
                let reason = "invalid rev format".to_owned();
                wanted.push(BulkEntry::Bad { id: id.to_string(), rev: Some(other.to_string()), reason });
                continue;
            }
        };
        wanted.push(BulkEntry::Doc(id, rev));
    }
    drop(body);
    drop(bytes);
    check_ids(&reach, wanted.iter().filter_map(|w| if let BulkEntry::Doc(id, _) = w { Some(id) } else { None }))?;
    let mut feed = BulkGet { store: inst.0.store.clone(), doctype, wanted, next: 0, revs_history, latest };
    let mut out = b"{\"results\":[".to_vec();
    let next = feed.step(&mut out).await?;
    Ok(stream::respond(out, next.then_some(feed), |mut feed: BulkGet| async move {
        let mut out = Vec::new();
        let more = feed.step(&mut out).await?;
        Ok::<Step<BulkGet>, ApiError>((out, more.then_some(feed)))
    }))
}

/// One entry of a `_bulk_get`: a document (at a revision, or all its leaves), or an entry
/// CouchDB answers with an error of its own (`bad_request` and the reason).
enum BulkEntry {
    Doc(DocId, Option<Rev>),
    Bad { id: String, rev: Option<String>, reason: String },
}

/// A `rev` member as an error entry repeats it.
fn rev_text(rev: &Option<Value>) -> Option<String> {
    match rev {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    }
}

/// A `_bulk_get` being answered: the documents asked for, and how many were written.
struct BulkGet {
    store: Arc<dyn Store>,
    doctype: Doctype,
    wanted: Vec<BulkEntry>,
    next: usize,
    revs_history: bool,
    latest: bool,
}

/// Bytes of a `_bulk_get` answer written per chunk (one document past it at most).
const BULK_GET_CHUNK: usize = 256 * 1024;

impl BulkGet {
    /// Writes the next results, about [`BULK_GET_CHUNK`] bytes of them (the end of the answer
    /// after the last); whether more follow.
    async fn step(&mut self, out: &mut Vec<u8>) -> ApiResult<bool> {
        while self.next < self.wanted.len() && out.len() < BULK_GET_CHUNK {
            let entry = &self.wanted[self.next];
            if self.next > 0 {
                out.push(b',');
            }
            self.next += 1;
            #[derive(Serialize)]
            struct Failed<'a> {
                id: &'a str,
                rev: Option<&'a str>,
                error: &'a str,
                reason: &'a str,
            }
            let error = |out: &mut Vec<u8>, f: Failed<'_>| {
                out.extend_from_slice(b"{\"error\":");
                put_json(out, &f)?;
                out.push(b'}');
                Ok::<(), ApiError>(())
            };
            let (id, rev) = match entry {
                BulkEntry::Doc(id, rev) => (id, rev),
                BulkEntry::Bad { id, rev, reason } => {
                    out.extend_from_slice(b"{\"id\":");
                    put_json(out, id)?;
                    out.extend_from_slice(b",\"docs\":[");
                    error(out, Failed { id, rev: rev.as_deref(), error: "bad_request", reason })?;
                    out.extend_from_slice(b"]}");
                    continue;
                }
            };
            out.extend_from_slice(b"{\"id\":");
            put_json(out, id.as_str())?;
            out.extend_from_slice(b",\"docs\":[");
            // Without a rev, every leaf (deleted ones included), as CouchDB's `open_revs=all`.
            let revs = match rev {
                Some(r) => OpenRevs::Some(vec![r.clone()]),
                None => OpenRevs::All,
            };
            match self.store.open_revs(&self.doctype, id, revs, self.latest).await {
                Ok(found) => {
                    for (i, f) in found.into_iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        match f {
                            OpenRev::Found(mut d) => {
                                if !self.revs_history {
                                    d.revisions = None;
                                }
                                out.extend_from_slice(b"{\"ok\":");
                                render_into(out, &d, d.id.as_str(), &[]).map_err(render_failed)?;
                                out.push(b'}');
                            }
                            OpenRev::Missing(r) => {
                                let r = r.to_string();
                                error(
                                    out,
                                    Failed { id: id.as_str(), rev: Some(&r), error: "not_found", reason: "missing" },
                                )?
                            }
                        }
                    }
                }
                Err(crate::store::StoreError::NotFound) => {
                    error(out, Failed { id: id.as_str(), rev: None, error: "not_found", reason: "missing" })?
                }
                Err(e) => return Err(e.into()),
            }
            out.extend_from_slice(b"]}");
        }
        if self.next < self.wanted.len() {
            return Ok(true);
        }
        out.extend_from_slice(b"]}");
        Ok(false)
    }
}
