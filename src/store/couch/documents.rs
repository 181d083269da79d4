//! Documents as CouchDB holds them: bodies kept as their JSON text in one member (see "Layout"),
//! a document's tree read back from `open_revs=all` ([`Fetched`]), replicated writes with
//! `new_edits: false`, `_bulk_get`, and the reads of `_local` documents and their recorded names.

use std::collections::HashMap;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use hearth_replicator::rev::{Rev, Revisions};
use hearth_replicator::tree::RevTree;
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

use super::*;

/// A document as CouchDB holds it: its tree, and each leaf's deleted flag and body.
pub(super) struct Fetched {
    pub(super) tree: RevTree,
    pub(super) leaves: HashMap<Rev, (bool, Body)>,
}

impl Fetched {
    pub(super) fn doc_rev(&self, id: &DocId, rev: &Rev, revs: bool) -> Option<DocRev> {
        if !self.tree.is_leaf(rev) {
            return None;
        }
        let (deleted, body) = self.leaves.get(rev)?;
        Some(DocRev {
            id: id.clone(),
            rev: rev.clone(),
            deleted: *deleted,
            body: body.clone(),
            revisions: if revs { self.tree.history(rev) } else { None },
        })
    }
}

/// The member of a CouchDB document holding its body's JSON text (see "Layout").
const BODY_MEMBER: &str = "hearth:body";

/// The body of a CouchDB document: the text in [`BODY_MEMBER`] when it is the only member not
/// starting with `_`; otherwise (documents written before bodies were kept as text, and
/// tombstones with an empty body) every member not starting with `_`.
pub(super) fn stored_body(doc: &Map<String, Value>) -> Result<Body, StoreError> {
    let mut own = doc.iter().filter(|(k, _)| !k.starts_with('_'));
    if let (Some((k, Value::String(text))), None) = (own.next(), own.next()) {
        if k == BODY_MEMBER {
            return Body::parse(text).map_err(|e| corrupt(format!("body of {:?}: {e}", doc.get("_id"))));
        }
    }
    Ok(Body::from_map(doc))
}

/// A body as a member of a CouchDB document: its text, as a string (an empty body stays out,
/// so tombstones stay bare).
pub(super) fn body_member(body: &Body) -> Option<(String, Value)> {
    (!body.is_empty()).then(|| (BODY_MEMBER.to_owned(), Value::String(body.as_str().to_owned())))
}

pub(super) fn parse_rev(s: &str) -> Result<Rev, StoreError> {
    s.parse().map_err(|_| corrupt(format!("revision {s:?} from CouchDB")))
}

/// The JSON of a replicated write: `_id`, `_rev`, `_revisions`, `_deleted`, body.
pub(super) fn replicated_json(id: &str, revisions: &[Rev], deleted: bool, body: &Body) -> Value {
    let mut doc = Map::with_capacity(5);
    doc.insert("_id".into(), Value::String(id.to_owned()));
    if let Some(head) = revisions.first() {
        doc.insert("_rev".into(), Value::String(head.to_string()));
    }
    doc.insert("_revisions".into(), serde_json::to_value(Revisions::from_revs(revisions)).unwrap_or(Value::Null));
    if deleted {
        doc.insert("_deleted".into(), Value::Bool(true));
    }
    doc.extend(body_member(body));
    Value::Object(doc)
}

impl CouchStore {
    /// The document's tree and leaves; `None` when CouchDB has no such document (or database).
    pub(super) async fn fetch(&self, db: &str, id: &DocId) -> Result<Option<Fetched>, StoreError> {
        let query = [("open_revs", "all".to_owned()), ("revs", "true".to_owned())];
        let reply = self.server.send(Method::GET, &[db, id.as_str()], &query, None).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let items = match reply.body {
            Value::Array(items) => items,
            body => return Err(Reply { status: reply.status, body }.unexpected("open_revs=all")),
        };
        let mut tree = RevTree::new();
        let mut leaves = HashMap::new();
        for item in items {
            let Some(Value::Object(doc)) = item.get("ok") else {
                continue;
            };
            let rev = parse_rev(doc.get("_rev").and_then(Value::as_str).unwrap_or_default())?;
            let history = match doc.get("_revisions") {
                Some(r) => serde_json::from_value::<Revisions>(r.clone())
                    .ok()
                    .and_then(|r| r.to_revs().ok())
                    .ok_or_else(|| corrupt(format!("_revisions of {id} from CouchDB")))?,
                None => vec![rev.clone()],
            };
            // PouchDB Server gets the history wrong when a hash repeats along one path
            // (`3-y` under `2-y`); keep what is certain.
            let history = if history.first() == Some(&rev) { history } else { vec![rev.clone()] };
            let deleted = doc.get("_deleted") == Some(&Value::Bool(true));
            tree.merge_path(&history, deleted);
            leaves.insert(rev, (deleted, stored_body(doc)?));
        }
        if tree.is_empty() {
            return Ok(None);
        }
        Ok(Some(Fetched { tree, leaves }))
    }

    /// [`CouchStore::fetch`] for several documents, a few at a time.
    pub(super) async fn fetch_many(&self, db: &str, ids: &[DocId]) -> Result<HashMap<DocId, Fetched>, StoreError> {
        let found: Vec<(DocId, Option<Fetched>)> = stream::iter(ids.iter().cloned())
            .map(|id| async move { self.fetch(db, &id).await.map(|f| (id, f)) })
            .buffer_unordered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(found.into_iter().filter_map(|(id, f)| f.map(|f| (id, f))).collect())
    }

    /// Writes replicated revisions (`new_edits: false`); returns CouchDB's per-document errors.
    pub(super) async fn write_replicated(&self, doctype: &Doctype, docs: Vec<Value>) -> Result<Vec<Value>, StoreError> {
        if docs.is_empty() {
            return Ok(Vec::new());
        }
        let db = self.db_name(doctype);
        let body = json!({"new_edits": false, "docs": docs});
        let reply = self.send_to_db(&db, Method::POST, &["_bulk_docs"], &[], Some(&body)).await?;
        if !reply.status.is_success() {
            return Err(reply.unexpected("_bulk_docs new_edits=false"));
        }
        let results = match reply.body {
            Value::Array(results) => results,
            body => return Err(Reply { status: reply.status, body }.unexpected("_bulk_docs new_edits=false")),
        };
        self.committed();
        // CouchDB 3 and PouchDB Server list only failures; older servers listed successes too.
        Ok(results.into_iter().filter(|r| r.get("error").is_some()).collect())
    }

    /// The given revisions' documents through `_bulk_get` (tombstones included).
    pub(super) async fn bulk_get(
        &self,
        doctype: &Doctype,
        wanted: &[(DocId, Rev)],
    ) -> Result<HashMap<(DocId, Rev), DocRev>, StoreError> {
        let mut out = HashMap::new();
        if wanted.is_empty() {
            return Ok(out);
        }
        let db = self.db_name(doctype);
        let docs: Vec<Value> =
            wanted.iter().map(|(id, rev)| json!({"id": id.as_str(), "rev": rev.to_string()})).collect();
        let reply = self.server.send(Method::POST, &[&db, "_bulk_get"], &[], Some(&json!({"docs": docs}))).await?;
        if reply.db_missing() {
            return Ok(out);
        }
        if !reply.status.is_success() {
            return Err(reply.unexpected("_bulk_get"));
        }
        for result in reply.body.get("results").and_then(Value::as_array).into_iter().flatten() {
            for d in result.get("docs").and_then(Value::as_array).into_iter().flatten() {
                let Some(Value::Object(doc)) = d.get("ok") else { continue };
                let (Some(id), Some(rev)) =
                    (doc.get("_id").and_then(Value::as_str), doc.get("_rev").and_then(Value::as_str))
                else {
                    continue;
                };
                let (Ok(id), Ok(rev)) = (DocId::parse(id), rev.parse::<Rev>()) else { continue };
                let deleted = doc.get("_deleted") == Some(&Value::Bool(true));
                let body = stored_body(doc)?;
                out.insert((id.clone(), rev.clone()), DocRev { id, rev, deleted, body, revisions: None });
            }
        }
        Ok(out)
    }

    /// The current revision number of a `_local` document, `None` if there is none.
    pub(super) async fn local_rev(&self, db: &str, id: &str) -> Result<Option<(u64, Body)>, StoreError> {
        let reply = self.server.send(Method::GET, &[db, "_local", id], &[], None).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let doc = match reply.body {
            Value::Object(doc) => doc,
            body => return Err(Reply { status: reply.status, body }.unexpected("reading a _local document")),
        };
        let rev = doc.get("_rev").and_then(Value::as_str).unwrap_or("0-0");
        let n = rev
            .strip_prefix("0-")
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| corrupt(format!("_local revision {rev:?}")))?;
        Ok(Some((n, stored_body(&doc)?)))
    }

    pub(super) async fn record_local_name(&self, doctype: &Doctype, id: &str) -> Result<(), StoreError> {
        let key = (doctype.clone(), id.to_owned());
        if self.markers.lock().is_ok_and(|m| m.contains(&key)) {
            return Ok(());
        }
        self.create_meta(&format!("{}{id}", local_marker_prefix(doctype)), &json!({})).await?;
        if let Ok(mut m) = self.markers.lock() {
            m.insert(key);
        }
        Ok(())
    }

    /// [`Store::all_docs`], from CouchDB's `_all_docs` (`exclusive_start`, `skip` and `more` worked
    /// out here).
    pub(super) async fn read_all_docs(&self, doctype: &Doctype, query: &AllDocsQuery) -> Result<AllDocs, StoreError> {
        let db = self.db_name(doctype);
        let mut params: Vec<(&str, String)> = Vec::new();
        if query.include_docs {
            params.push(("include_docs", "true".into()));
        }
        let reply = match &query.keys {
            Some(keys) => {
                let keys: Vec<&str> =
                    keys.iter().skip(query.skip).take(query.limit.unwrap_or(usize::MAX)).map(DocId::as_str).collect();
                self.server.send(Method::POST, &[&db, "_all_docs"], &params, Some(&json!({"keys": keys}))).await?
            }
            None => {
                if let Some(k) = &query.start_key {
                    params.push(("startkey", json_key(k)));
                }
                if let Some(k) = &query.end_key {
                    params.push(("endkey", json_key(k)));
                    params.push(("inclusive_end", query.inclusive_end.to_string()));
                }
                if query.descending {
                    params.push(("descending", "true".into()));
                }
                // CouchDB's `startkey` is inclusive: with `exclusive_start`, the start key's row
                // is read and left out below, and skipped rows are counted after it.
                let (skip, extra) = if query.exclusive_start { (0, query.skip + 1) } else { (query.skip, 0) };
                if let Some(l) = query.limit {
                    params.push(("limit", (l + extra).to_string()));
                }
                if skip > 0 {
                    params.push(("skip", skip.to_string()));
                }
                self.server.send(Method::GET, &[&db, "_all_docs"], &params, None).await?
            }
        };
        if reply.db_missing() {
            let rows = match &query.keys {
                Some(keys) => keys
                    .iter()
                    .skip(query.skip)
                    .take(query.limit.unwrap_or(usize::MAX))
                    .map(|k| AllDocsRow::NotFound { key: k.clone() })
                    .collect(),
                None => Vec::new(),
            };
            return Ok(AllDocs { total_rows: 0, offset: query.skip, rows, more: false });
        }
        if !reply.status.is_success() {
            return Err(reply.unexpected("_all_docs"));
        }
        let total_rows = reply.body.get("total_rows").and_then(Value::as_u64).unwrap_or(0);
        let read: &[Value] = reply.body.get("rows").and_then(Value::as_array).map_or(&[], Vec::as_slice);
        let mut read = read.iter().peekable();
        let mut more = false;
        if query.keys.is_none() {
            // Rows CouchDB read, before any is left out: as many as asked means more may follow.
            let asked = query.limit.map(|l| if query.exclusive_start { l + query.skip + 1 } else { l });
            more = asked.is_some_and(|a| read.len() >= a);
            if query.exclusive_start {
                let start = query.start_key.as_deref();
                if start.is_some() && read.peek().and_then(|r| r.get("id")).and_then(Value::as_str) == start {
                    read.next();
                }
                for _ in 0..query.skip {
                    read.next();
                }
            }
        }
        let mut rows = Vec::new();
        for r in read {
            if query.keys.is_none() && query.limit.is_some_and(|l| rows.len() >= l) {
                more = true;
                break;
            }
            if r.get("error").is_some() {
                if let Some(key) = r.get("key").and_then(Value::as_str).and_then(|k| DocId::parse(k).ok()) {
                    rows.push(AllDocsRow::NotFound { key });
                }
                continue;
            }
            // Design documents and other non-hearth ids are not listed.
            let Some(Ok(id)) = r.get("id").and_then(Value::as_str).map(DocId::parse) else { continue };
            let rev = parse_rev(r.pointer("/value/rev").and_then(Value::as_str).unwrap_or_default())?;
            let deleted = r.pointer("/value/deleted") == Some(&Value::Bool(true));
            let doc = match r.get("doc") {
                Some(Value::Object(d)) if query.include_docs && !deleted => {
                    Some(DocRev { id: id.clone(), rev: rev.clone(), deleted, body: stored_body(d)?, revisions: None })
                }
                _ => None,
            };
            rows.push(AllDocsRow::Doc { id, rev, deleted, doc });
        }
        Ok(AllDocs { total_rows, offset: query.skip, rows, more })
    }
}
