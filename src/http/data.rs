//! `/data/:doctype/...`: each doctype of an instance looks like a CouchDB database, so a CouchDB
//! replication client (PouchDB, CouchDB's replicator) can sync with it, and Cozy apps find the
//! routes they know. Every route checks the bearer token's scope for the doctype, the verb and,
//! for scopes limited to some ids, the documents touched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::ContentType;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use hearth_replicator::rev::Rev;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::limits::{array_at_most, Bounded, Limits};
use super::stream::{self, put_json, Step, PAGE_BYTES, PAGE_ROWS};
use super::{parse_json, parse_raw, parse_raw_object, path, read_body, AppState, Inst, Query};
use crate::auth::{PermissionSet, Reach, Verb};
use crate::http::{ApiError, ApiResult};
use crate::store::body::Members;
use crate::store::doc::{parse_doc, parse_new_doc, render, render_into};
use crate::store::{
    AllDocs, AllDocsQuery, AllDocsRow, Body, ChangeRow, Changes, ChangesQuery, DocId, DocRev, DocView, Doctype,
    GetOptions, OpenRev, OpenRevs, Store, WriteResult,
};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/data/", web::get().to(welcome))
        .service(
            web::resource(["/data/{doctype}", "/data/{doctype}/"])
                .route(web::get().to(db_info))
                .route(web::head().to(db_info))
                .route(web::post().to(create_doc)),
        )
        .service(
            web::resource("/data/{doctype}/_all_docs").route(web::get().to(all_docs)).route(web::post().to(all_docs)),
        )
        .service(web::resource("/data/{doctype}/_changes").route(web::get().to(changes)).route(web::post().to(changes)))
        .route("/data/{doctype}/_revs_diff", web::post().to(revs_diff))
        .route("/data/{doctype}/_bulk_docs", web::post().to(bulk_docs))
        .route("/data/{doctype}/_bulk_get", web::post().to(bulk_get))
        .route("/data/{doctype}/_ensure_full_commit", web::post().to(ensure_full_commit))
        // One resource for documents and `_local/` ones: the id is only known once decoded, and
        // CouchDB takes `_local%2Fx` for `_local/x` (see `doc_of`).
        .service(
            web::resource("/data/{doctype}/{id:.+}")
                .route(web::get().to(get_doc))
                .route(web::head().to(get_doc))
                .route(web::put().to(put_doc))
                .route(web::delete().to(delete_doc)),
        );
}

fn doctype_of(req: &HttpRequest) -> ApiResult<Doctype> {
    let doctype = Doctype::parse(&path::param(req, "doctype")?).map_err(ApiError::BadRequest)?;
    if crate::sharing::model::is_internal_doctype(doctype.as_str()) {
        return Err(ApiError::Forbidden(format!("{doctype} is managed by hearth and not reachable through /data")));
    }
    Ok(doctype)
}

/// What the `{id}` of `/data/:doctype/{id}` names once decoded.
enum PathDoc {
    Doc(DocId),
    /// A `_local/` document, whether the client sent `_local/x` or `_local%2Fx` (CouchDB takes
    /// both; PouchDB sends the first). Its handlers read the id with `local_id`.
    Local,
}

fn doc_of(req: &HttpRequest) -> ApiResult<PathDoc> {
    let id = path::param(req, "id")?;
    if id.starts_with(LOCAL_PREFIX) {
        return Ok(PathDoc::Local);
    }
    DocId::parse(&id).map(PathDoc::Doc).map_err(ApiError::BadRequest)
}

const LOCAL_PREFIX: &str = "_local/";

fn max_body(req: &HttpRequest) -> usize {
    Limits::of(req).request
}

/// The caller's permissions on `doctype`, after checking the token or sharecode (401) and that
/// some rule covers the doctype with `verb` (403).
async fn authorize(inst: &Inst, req: &HttpRequest, doctype: &Doctype, verb: Verb) -> ApiResult<(PermissionSet, Reach)> {
    if doctype.as_str() == crate::files::DOCTYPE && verb != Verb::Get {
        // Content and metadata change together, through `/files`, or they could disagree.
        return Err(ApiError::Forbidden(format!(
            "{doctype} is read-only through /data: write files and directories through /files"
        )));
    }
    let perms = super::permissions::data_permissions(&inst.0, req).await?;
    match perms.reach(doctype, verb) {
        Reach::None => Err(ApiError::Forbidden(format!("the token gives no {verb:?} access to {doctype}"))),
        reach => Ok((perms, reach)),
    }
}

/// Refuses when the caller's reach doesn't include every id.
fn check_ids<'a>(reach: &Reach, ids: impl IntoIterator<Item = &'a DocId>) -> ApiResult<()> {
    if let Reach::Ids(allowed) = reach {
        for id in ids {
            if !allowed.iter().any(|a| a == id.as_str()) {
                return Err(ApiError::Forbidden(format!("the token gives no access to document {id}")));
            }
        }
    }
    Ok(())
}

/// Refuses scopes limited to some ids on routes that touch the whole doctype.
fn need_all(reach: &Reach) -> ApiResult<()> {
    match reach {
        Reach::All => Ok(()),
        _ => Err(ApiError::Forbidden("this route needs access to the whole doctype".into())),
    }
}

fn created(value: Value) -> HttpResponse {
    HttpResponse::Created().json(value)
}

/// A document as answered: its text spliced from the stored body (see `store::body`); a body
/// that cannot be rendered is a corrupt store, an opaque 500.
fn rendered(doc: &DocRev) -> ApiResult<Box<RawValue>> {
    render(doc).map_err(render_failed)
}

fn render_failed(e: serde_json::Error) -> ApiError {
    ApiError::Internal(anyhow::Error::new(e).context("failed to render a stored document"))
}

/// `{"ok": doc}` or `{"missing": rev}`: one answer of `open_revs`, documents embedded as
/// their text.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum RevAnswer {
    Ok(Box<RawValue>),
    Missing(String),
}

/// `GET /data/` — CouchDB's server welcome, which replication clients read for a server id.
async fn welcome(inst: Inst) -> HttpResponse {
    let uuid = hex::encode(&sha2::Sha256::digest(inst.0.domain.as_str().as_bytes())[..16]);
    HttpResponse::Ok().json(json!({"couchdb": "Welcome", "vendor": {"name": "hearth"}, "uuid": uuid}))
}

use sha2::Digest;

/// `GET /data/:doctype/` — database information (`update_seq`, `doc_count`...), which clients
/// read before replicating.
async fn db_info(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let doctype = doctype_of(&req)?;
    authorize(&inst, &req, &doctype, Verb::Get).await?;
    let info = inst.0.store.db_info(&doctype).await?;
    Ok(HttpResponse::Ok().json(json!({
        "db_name": doctype.as_str(),
        "doc_count": info.doc_count,
        "doc_del_count": info.doc_del_count,
        "update_seq": info.update_seq,
        "purge_seq": 0,
        "compact_running": false,
        "disk_format_version": 8,
        "instance_start_time": "0",
        "sizes": {"file": 0, "external": 0, "active": 0},
        "props": {},
    })))
}

/// Answer of a single-document write, in Cozy's shape (a superset of CouchDB's): `data` is the
/// document as written, with its new `_id` and `_rev`.
fn write_answer(doctype: &Doctype, id: &DocId, rev: &Rev, body: Body, status: StatusCode) -> ApiResult<HttpResponse> {
    #[derive(Serialize)]
    struct Written<'a> {
        ok: bool,
        id: &'a str,
        rev: String,
        r#type: &'a str,
        data: Box<RawValue>,
    }
    let doc = DocRev { id: id.clone(), rev: rev.clone(), deleted: false, body, revisions: None };
    let answer =
        Written { ok: true, id: id.as_str(), rev: rev.to_string(), r#type: doctype.as_str(), data: rendered(&doc)? };
    Ok(HttpResponse::build(status).insert_header((header::ETAG, format!("\"{rev}\""))).json(answer))
}

/// Runs one interactive write and maps a conflict to 409.
async fn write_one(inst: &Inst, doctype: &Doctype, w: crate::store::DocWrite) -> ApiResult<Rev> {
    let mut results = inst.0.store.bulk_docs(doctype, vec![w], true).await?;
    match results.pop() {
        Some(WriteResult::Ok { rev, .. }) => Ok(rev),
        Some(WriteResult::Conflict { .. }) => Err(ApiError::Conflict),
        Some(WriteResult::Rejected { reason, .. }) => Err(ApiError::BadRequest(reason)),
        None => Err(ApiError::Internal(anyhow::anyhow!("store returned no result"))),
    }
}

/// `POST /data/:doctype/` — creates a document; the server picks the id unless `_id` is given.
async fn create_doc(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let doctype = doctype_of(&req)?;
    let (_, reach) = authorize(&inst, &req, &doctype, Verb::Post).await?;
    let limits = Limits::of(&req);
    let bytes = read_body(&req, payload, limits.request).await?;
    let mut w = parse_new_doc(parse_raw(&bytes)?, true).map_err(ApiError::BadRequest)?;
    limits.check_document(w.id.as_str(), w.body.as_str().len())?;
    check_ids(&reach, [&w.id])?;
    if w.rev.is_some() {
        return Err(ApiError::bad_request("a new document cannot have _rev; use PUT to update"));
    }
    w.deleted = false;
    let body = w.body.clone();
    let id = w.id.clone();
    let rev = write_one(&inst, &doctype, w).await?;
    write_answer(&doctype, &id, &rev, body, StatusCode::CREATED)
}

/// The revision named by `?rev=` or `If-Match` (which must agree when both are given).
fn rev_param(req: &HttpRequest, q: &Query) -> ApiResult<Option<Rev>> {
    let from_query = q.get("rev").map(str::to_owned);
    let from_header = req
        .headers()
        .get(header::IF_MATCH)
        .map(|v| v.to_str().map(|s| s.trim().trim_matches('"').to_owned()))
        .transpose()
        .map_err(|_| ApiError::bad_request("invalid If-Match header"))?;
    let raw = match (from_query, from_header) {
        (Some(a), Some(b)) if a != b => return Err(ApiError::bad_request("rev and If-Match disagree")),
        (a, b) => a.or(b),
    };
    raw.map(|r| r.parse::<Rev>().map_err(|e| ApiError::bad_request(e.to_string()))).transpose()
}

fn parse_rev_list(v: &Value, what: &str) -> ApiResult<Vec<Rev>> {
    let Value::Array(items) = v else {
        return Err(ApiError::bad_request(format!("{what} must be an array of revisions")));
    };
    items
        .iter()
        .map(|r| {
            let s = r.as_str().ok_or_else(|| ApiError::bad_request(format!("invalid revision in {what}")))?;
            s.parse::<Rev>().map_err(|e| ApiError::bad_request(format!("invalid revision in {what}: {e}")))
        })
        .collect()
}

/// A document's JSON text, written once into the buffer that becomes the response body (a
/// large document is copied once, from the stored text).
fn render_view(view: &DocView, conflicts: bool, deleted_conflicts: bool) -> ApiResult<Vec<u8>> {
    let revs = |list: &[Rev]| Value::Array(list.iter().map(|r| Value::String(r.to_string())).collect());
    let mut extra = Vec::new();
    if conflicts && !view.conflicts.is_empty() {
        extra.push(("_conflicts", revs(&view.conflicts)));
    }
    if deleted_conflicts && !view.deleted_conflicts.is_empty() {
        extra.push(("_deleted_conflicts", revs(&view.deleted_conflicts)));
    }
    let mut out = Vec::with_capacity(view.doc.body.as_str().len() + 256);
    render_into(&mut out, &view.doc, view.doc.id.as_str(), &extra).map_err(render_failed)?;
    Ok(out)
}

/// Whether an `If-None-Match` header names this ETag (or is `*`), RFC 9110 §13.1.2: the
/// client's copy is current.
fn none_match(req: &HttpRequest, etag: &str) -> bool {
    req.headers().get_all(header::IF_NONE_MATCH).filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|tag| {
        let tag = tag.trim();
        // Weak comparison: `W/"x"` matches `"x"`.
        tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag
    })
}

/// `GET /data/:doctype/:id` — the winning revision (or `?rev=`), with `?revs=true`,
/// `?conflicts=true`, `?deleted_conflicts=true`; `?open_revs=all|[...]` (and `latest=true`)
/// answers a JSON array of `{"ok": doc}` / `{"missing": rev}` as CouchDB does for JSON clients.
/// The ETag is the revision; an `If-None-Match` naming it answers 304 without a body (CouchDB,
/// RFC 9110 §13.1.2). Bodies are answered as written (see `store::body`).
async fn get_doc(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let doctype = doctype_of(&req)?;
    let id = match doc_of(&req)? {
        PathDoc::Doc(id) => id,
        PathDoc::Local => return get_local(inst, req).await,
    };
    let (_, reach) = authorize(&inst, &req, &doctype, Verb::Get).await?;
    check_ids(&reach, [&id])?;
    let q = Query::of(&req)?;
    if let Some(open) = q.get("open_revs") {
        let revs = if open == "all" {
            OpenRevs::All
        } else {
            let v: Value = serde_json::from_str(open)
                .map_err(|_| ApiError::bad_request("open_revs must be all or a JSON array"))?;
            OpenRevs::Some(parse_rev_list(&v, "open_revs")?)
        };
        let found = inst.0.store.open_revs(&doctype, &id, revs, q.flag("latest")?).await?;
        let list = found
            .into_iter()
            .map(|r| {
                Ok(match r {
                    OpenRev::Found(d) => RevAnswer::Ok(rendered(&d)?),
                    OpenRev::Missing(rev) => RevAnswer::Missing(rev.to_string()),
                })
            })
            .collect::<ApiResult<Vec<_>>>()?;
        return Ok(HttpResponse::Ok().json(list));
    }
    let opts = GetOptions { rev: rev_param(&req, &q)?, revs: q.flag("revs")? };
    let view = inst.0.store.get(&doctype, &id, opts).await?;
    let etag = format!("\"{}\"", view.doc.rev);
    if none_match(&req, &etag) {
        return Ok(HttpResponse::NotModified().insert_header((header::ETAG, etag)).finish());
    }
    let body = render_view(&view, q.flag("conflicts")?, q.flag("deleted_conflicts")?)?;
    drop(view);
    Ok(HttpResponse::Ok().insert_header((header::ETAG, etag)).insert_header(ContentType::json()).body(body))
}

/// `PUT /data/:doctype/:id` — creates or updates; the parent revision comes from `_rev`,
/// `?rev=` or `If-Match`. With `?new_edits=false` the body is a replicated revision.
async fn put_doc(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let doctype = doctype_of(&req)?;
    let id = match doc_of(&req)? {
        PathDoc::Doc(id) => id,
        PathDoc::Local => return put_local(inst, req, payload).await,
    };
    let q = Query::of(&req)?;
    let (_, reach) = authorize(&inst, &req, &doctype, Verb::Put).await?;
    check_ids(&reach, [&id])?;
    let new_edits = q.bool("new_edits")?.unwrap_or(true);
    let limits = Limits::of(&req);
    let bytes = read_body(&req, payload, limits.request).await?;
    let mut w = parse_doc(parse_raw(&bytes)?, Some(id.clone()), new_edits).map_err(ApiError::BadRequest)?;
    limits.check_document(id.as_str(), w.body.as_str().len())?;
    if !new_edits {
        let rev = w.rev.clone().ok_or_else(|| ApiError::bad_request("invalid rev format"))?;
        let results = inst.0.store.bulk_docs(&doctype, vec![w], false).await?;
        if let Some(WriteResult::Rejected { reason, .. }) = results.into_iter().next() {
            return Err(ApiError::BadRequest(reason));
        }
        return Ok(created(json!({"ok": true, "id": id.as_str(), "rev": rev.to_string()})));
    }
    match (rev_param(&req, &q)?, &w.rev) {
        (Some(a), Some(b)) if &a != b => {
            return Err(ApiError::bad_request("rev in the body and in the request disagree"))
        }
        (Some(a), None) => w.rev = Some(a),
        _ => {}
    }
    let body = w.body.clone();
    let rev = write_one(&inst, &doctype, w).await?;
    write_answer(&doctype, &id, &rev, body, StatusCode::CREATED)
}

/// `DELETE /data/:doctype/:id?rev=` — adds a deletion revision on top of `rev`.
async fn delete_doc(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let doctype = doctype_of(&req)?;
    let id = match doc_of(&req)? {
        PathDoc::Doc(id) => id,
        PathDoc::Local => return delete_local(inst, req).await,
    };
    let q = Query::of(&req)?;
    let (_, reach) = authorize(&inst, &req, &doctype, Verb::Delete).await?;
    check_ids(&reach, [&id])?;
    let rev = rev_param(&req, &q)?
        .ok_or_else(|| ApiError::bad_request("the revision to delete is required (?rev= or If-Match)"))?;
    let w =
        crate::store::DocWrite { id: id.clone(), rev: Some(rev), revisions: None, deleted: true, body: Body::empty() };
    let rev = write_one(&inst, &doctype, w).await?;
    Ok(HttpResponse::Ok().insert_header((header::ETAG, format!("\"{rev}\""))).json(
        json!({"ok": true, "id": id.as_str(), "rev": rev.to_string(), "type": doctype.as_str(), "deleted": true}),
    ))
}

fn as_object(v: Value, what: &str) -> ApiResult<Map<String, Value>> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::bad_request(format!("{what} must be a JSON object"))),
    }
}

/// `POST /data/:doctype/_bulk_docs` — `{"docs": [...], "new_edits": bool}` in one transaction.
/// With `new_edits: false` (replication) the answer lists only the failures, as CouchDB does.
/// More than `max_bulk_docs_count` documents: 413 `max_bulk_docs_count_exceeded`, told at the
/// first document past the limit; a document over `max_document_size`: 413
/// `document_too_large` for the whole request (CouchDB's answers; its replicator then splits the
/// batch until that document travels alone, and counts it as a write failure).
async fn bulk_docs(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
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
async fn revs_diff(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
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

/// `POST /data/:doctype/_bulk_get?revs=true` — several documents (given revisions, or the
/// winner) in CouchDB's `{"results": [{"id", "docs": [{"ok"}|{"error"}]}]}` shape, written as
/// they are read (see `http::stream`). More than `max_bulk_get_count` documents asked for: 413
/// `max_bulk_get_count_exceeded`.
async fn bulk_get(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
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
        let id = DocId::parse(id).map_err(ApiError::BadRequest)?;
        let rev = match d.rev {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.parse::<Rev>().map_err(|e| ApiError::bad_request(e.to_string()))?),
            Some(_) => return Err(ApiError::bad_request("invalid rev format")),
        };
        wanted.push((id, rev));
    }
    drop(body);
    drop(bytes);
    check_ids(&reach, wanted.iter().map(|(id, _)| id))?;
    let mut feed = BulkGet { store: inst.0.store.clone(), doctype, wanted, next: 0, revs_history, latest };
    let mut out = b"{\"results\":[".to_vec();
    let next = feed.step(&mut out).await?;
    Ok(stream::respond(out, next.then_some(feed), |mut feed: BulkGet| async move {
        let mut out = Vec::new();
        let more = feed.step(&mut out).await?;
        Ok::<Step<BulkGet>, ApiError>((out, more.then_some(feed)))
    }))
}

/// A `_bulk_get` being answered: the documents asked for, and how many were written.
struct BulkGet {
    store: Arc<dyn Store>,
    doctype: Doctype,
    wanted: Vec<(DocId, Option<Rev>)>,
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
            let (id, rev) = &self.wanted[self.next];
            if self.next > 0 {
                out.push(b',');
            }
            self.next += 1;
            out.extend_from_slice(b"{\"id\":");
            put_json(out, id.as_str())?;
            out.extend_from_slice(b",\"docs\":[");
            #[derive(Serialize)]
            struct Failed<'a> {
                id: &'a str,
                rev: Option<String>,
                error: &'static str,
                reason: &'static str,
            }
            let error = |out: &mut Vec<u8>, rev: Option<&Rev>, reason| {
                out.extend_from_slice(b"{\"error\":");
                put_json(out, &Failed { id: id.as_str(), rev: rev.map(Rev::to_string), error: "not_found", reason })?;
                out.push(b'}');
                Ok::<(), ApiError>(())
            };
            match rev {
                Some(r) => {
                    let found =
                        self.store.open_revs(&self.doctype, id, OpenRevs::Some(vec![r.clone()]), self.latest).await?;
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
                            OpenRev::Missing(r) => error(out, Some(&r), "missing")?,
                        }
                    }
                }
                None => {
                    let opts = GetOptions { rev: None, revs: self.revs_history };
                    match self.store.get(&self.doctype, id, opts).await {
                        Ok(view) => {
                            out.extend_from_slice(b"{\"ok\":");
                            render_into(out, &view.doc, view.doc.id.as_str(), &[]).map_err(render_failed)?;
                            out.push(b'}');
                        }
                        Err(crate::store::StoreError::NotFound) => error(out, None, "missing")?,
                        Err(crate::store::StoreError::Deleted) => error(out, None, "deleted")?,
                        Err(e) => return Err(e.into()),
                    }
                }
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

/// `POST /data/:doctype/_ensure_full_commit` — every write is durable when acknowledged; kept
/// for replicators that still call it.
async fn ensure_full_commit(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let doctype = doctype_of(&req)?;
    authorize(&inst, &req, &doctype, Verb::Post).await?;
    Ok(created(json!({"ok": true, "instance_start_time": "0"})))
}

fn parse_seq(s: &str) -> ApiResult<u64> {
    let s = s.trim().trim_matches('"');
    // CouchDB 2+ sequences look like `N-opaque`; ours are plain integers, but accept the prefix.
    let n = s.split('-').next().unwrap_or_default();
    n.parse::<u64>().map_err(|_| ApiError::bad_request("since must be a sequence number or now"))
}

/// `GET|POST /data/:doctype/_changes` — `since`, `limit`, `style=all_docs`, `include_docs`,
/// `feed=normal|longpoll` with `timeout`, `filter=_doc_ids` with `doc_ids` (query or body).
/// Each document appears once, at its latest change (one changed while a long answer is being
/// written may appear again, at its new sequence: see [`ChangesFeed`]); scopes limited to some
/// ids see only those. `pending` is the number of rows after `last_seq` for the same filter and
/// scope (CouchDB's), which the store counts without reading them. The answer is written as it
/// is read (see `http::stream`).
async fn changes(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let doctype = doctype_of(&req)?;
    let q = Query::of(&req)?;
    let (_, reach) = authorize(&inst, &req, &doctype, Verb::Get).await?;
    let state = req.app_data::<web::Data<AppState>>().map(|s| s.config.clone());
    let body = if req.method() == actix_web::http::Method::POST {
        let bytes = read_body(&req, payload, max_body(&req)).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            Map::new()
        } else {
            as_object(parse_json(&bytes)?, "the body")?
        }
    } else {
        Map::new()
    };
    let ids_param = match body.get("doc_ids") {
        Some(v) => Some(v.clone()),
        None => q.json("doc_ids")?,
    };
    let mut doc_ids = match (q.get("filter"), ids_param) {
        (Some("_doc_ids"), Some(ids)) => {
            let Value::Array(list) = ids else {
                return Err(ApiError::bad_request("doc_ids must be an array"));
            };
            let ids = list
                .iter()
                .map(|v| v.as_str().ok_or_else(|| ApiError::bad_request("doc_ids must hold strings")))
                .map(|s| s.and_then(|s| DocId::parse(s).map_err(ApiError::BadRequest)))
                .collect::<ApiResult<Vec<_>>>()?;
            Some(ids)
        }
        (Some("_doc_ids"), None) => return Err(ApiError::bad_request("filter=_doc_ids needs doc_ids")),
        (Some(f), _) => return Err(ApiError::bad_request(format!("unsupported filter {f}"))),
        (None, _) => None,
    };
    if let Reach::Ids(allowed) = &reach {
        let allowed: Vec<DocId> = allowed.iter().filter_map(|a| DocId::parse(a).ok()).collect();
        doc_ids = Some(match doc_ids {
            Some(ids) => ids.into_iter().filter(|i| allowed.contains(i)).collect(),
            None => allowed,
        });
    }
    let store = &inst.0.store;
    let since = match q.get("since") {
        None => 0,
        Some("now") => store.db_info(&doctype).await?.update_seq,
        Some(s) => parse_seq(s)?,
    };
    let limit = q.u64("limit")?.map(|l| l as usize);
    let include_docs = q.flag("include_docs")?;
    let query = ChangesQuery {
        since,
        limit,
        all_docs: match q.get("style") {
            None | Some("main_only") => false,
            Some("all_docs") => true,
            Some(_) => return Err(ApiError::bad_request("style must be main_only or all_docs")),
        },
        include_docs,
        doc_ids,
        max_bytes: include_docs.then_some(PAGE_BYTES),
    };
    let longpoll = match q.get("feed") {
        None | Some("normal") => false,
        Some("longpoll") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!("feed={other} is not supported; use normal or longpoll")))
        }
    };
    let max_wait = state.map_or(60_000, |c| c.longpoll_max_ms);
    let timeout = Duration::from_millis(q.u64("timeout")?.unwrap_or(max_wait).min(max_wait));
    let mut feed = ChangesFeed { store: store.clone(), doctype, query, remaining: limit, end: None, written: 0 };
    // Subscribe before the first read so no commit between the read and the wait is missed.
    let mut commits = store.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut page = feed.read().await?;
    while longpoll && page.rows.is_empty() {
        match tokio::time::timeout_at(deadline, commits.changed()).await {
            Ok(Ok(())) => page = feed.read().await?,
            _ => break,
        }
    }
    let mut out = b"{\"results\":[".to_vec();
    let more = feed.write(page, &mut out).await?;
    Ok(stream::respond(out, more.then_some(feed), |mut feed: ChangesFeed| async move {
        let page = feed.read().await?;
        let mut out = Vec::new();
        let more = feed.write(page, &mut out).await?;
        Ok::<Step<ChangesFeed>, ApiError>((out, more.then_some(feed)))
    }))
}

/// A changes feed being answered, read a page at a time ([`PAGE_ROWS`] rows, or the rows whose
/// documents reach [`PAGE_BYTES`]). Each page is its own read, from the last sequence answered:
/// like CouchDB's feed, the answer is not one snapshot. It ends at the `update_seq` seen once
/// the first page shows more to come (so steady writes cannot keep it going), or at the limit;
/// a document changed while the feed is read can appear again at its new sequence, and nothing
/// is skipped (a change past the end is what `pending` counts and the next request reads).
struct ChangesFeed {
    store: Arc<dyn Store>,
    doctype: Doctype,
    /// The next page's query (its `since` moves on).
    query: ChangesQuery,
    /// Rows still allowed by the request's `limit`.
    remaining: Option<usize>,
    end: Option<u64>,
    written: usize,
}

impl ChangesFeed {
    async fn read(&mut self) -> ApiResult<Changes> {
        self.query.limit = Some(self.remaining.map_or(PAGE_ROWS, |r| r.min(PAGE_ROWS)));
        Ok(self.store.changes(&self.doctype, &self.query).await?)
    }

    /// Writes a page's rows, then the end of the answer after the last page; whether more
    /// pages follow.
    async fn write(&mut self, page: Changes, out: &mut Vec<u8>) -> ApiResult<bool> {
        for row in &page.rows {
            if self.written > 0 {
                out.push(b',');
            }
            self.written += 1;
            write_change(out, row, self.query.include_docs)?;
        }
        if let Some(r) = self.remaining.as_mut() {
            *r = r.saturating_sub(page.rows.len());
        }
        let mut more = !page.rows.is_empty() && page.pending > 0 && self.remaining != Some(0);
        if more {
            let end = match self.end {
                Some(end) => end,
                None => *self.end.insert(self.store.db_info(&self.doctype).await?.update_seq),
            };
            more = page.last_seq < end;
        }
        if more {
            self.query.since = page.last_seq;
            return Ok(true);
        }
        out.extend_from_slice(format!("],\"last_seq\":{},\"pending\":{}}}", page.last_seq, page.pending).as_bytes());
        Ok(false)
    }
}

/// One row of a changes feed: `{"seq", "id", "changes": [{"rev"}], "deleted"?, "doc"?}`, `doc`
/// being `null` for a document without a body to show.
fn write_change(out: &mut Vec<u8>, row: &ChangeRow, include_docs: bool) -> ApiResult<()> {
    out.extend_from_slice(format!("{{\"seq\":{},\"id\":", row.seq).as_bytes());
    put_json(out, row.id.as_str())?;
    out.extend_from_slice(b",\"changes\":[");
    for (i, rev) in row.changes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"rev\":");
        put_json(out, &rev.to_string())?;
        out.push(b'}');
    }
    out.push(b']');
    if row.deleted {
        out.extend_from_slice(b",\"deleted\":true");
    }
    if include_docs {
        out.extend_from_slice(b",\"doc\":");
        match &row.doc {
            Some(d) => render_into(out, d, d.id.as_str(), &[]).map_err(render_failed)?,
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
    Ok(())
}

fn key_param(q: &Query, body: &BTreeMap<String, &RawValue>, names: &[&str]) -> ApiResult<Option<String>> {
    for name in names {
        let v = match body.get(*name) {
            Some(raw) => Some(
                serde_json::from_str::<Value>(raw.get())
                    .map_err(|_| ApiError::bad_request(format!("{name} must be JSON")))?,
            ),
            None => q.json(name)?,
        };
        if let Some(v) = v {
            return match v {
                Value::String(s) => Ok(Some(s)),
                _ => Err(ApiError::bad_request(format!("{name} must be a JSON string (document ids are strings)"))),
            };
        }
    }
    Ok(None)
}

/// `GET|POST /data/:doctype/_all_docs` — documents by id, with `keys`, `startkey`/`endkey`
/// (JSON strings), `limit`, `skip`, `descending`, `inclusive_end`, `include_docs`. Written as
/// it is read (see `http::stream`), a page of ids at a time: each page is its own read, from the
/// last id answered, so (as with CouchDB's clusters) the answer is not one snapshot: a document
/// created or deleted while it is written may or may not be listed, every other one is listed
/// once. `total_rows` is the count when the first page was read.
async fn all_docs(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let doctype = doctype_of(&req)?;
    let q = Query::of(&req)?;
    let (_, reach) = authorize(&inst, &req, &doctype, Verb::Get).await?;
    let bytes = if req.method() == actix_web::http::Method::POST {
        Some(read_body(&req, payload, max_body(&req)).await?)
    } else {
        None
    };
    let body = match &bytes {
        Some(b) => parse_raw_object(b, "the body")?,
        None => BTreeMap::new(),
    };
    let keys: Option<Vec<String>> = match body.get("keys") {
        Some(raw) => Some(serde_json::from_str(raw.get()).map_err(|_| keys_error(raw.get()))?),
        None => match q.get("keys") {
            Some(text) => Some(serde_json::from_str(text).map_err(|_| keys_error(text))?),
            None => None,
        },
    };
    let keys = keys
        .map(|list| list.iter().map(|k| DocId::parse(k).map_err(ApiError::BadRequest)).collect::<ApiResult<Vec<_>>>())
        .transpose()?;
    let keys = match (&reach, keys) {
        (Reach::All, keys) => keys,
        (Reach::Ids(_), Some(keys)) => {
            check_ids(&reach, keys.iter())?;
            Some(keys)
        }
        (Reach::Ids(allowed), None) => Some(allowed.iter().filter_map(|a| DocId::parse(a).ok()).collect()),
        (Reach::None, _) => return Err(ApiError::Forbidden("no access".into())),
    };
    let key = key_param(&q, &body, &["key"])?;
    let limit = q.u64("limit")?.map(|l| l as usize);
    let skip = q.u64("skip")?.unwrap_or(0) as usize;
    let include_docs = q.flag("include_docs")? || body.get("include_docs").is_some_and(|v| v.get() == "true");
    let query = AllDocsQuery {
        start_key: key.clone().or(key_param(&q, &body, &["startkey", "start_key"])?),
        end_key: key.or(key_param(&q, &body, &["endkey", "end_key"])?),
        keys: None,
        inclusive_end: q.bool("inclusive_end")?.unwrap_or(true),
        descending: q.flag("descending")?,
        limit: None,
        skip,
        include_docs,
        exclusive_start: false,
        max_bytes: include_docs.then_some(PAGE_BYTES),
    };
    drop(body);
    drop(bytes);
    // With keys, the request's `skip` and `limit` pick the keys; pages then take them in order.
    let keys = keys.map(|k| k.into_iter().skip(skip).take(limit.unwrap_or(usize::MAX)).collect());
    let mut feed = AllDocsFeed { store: inst.0.store.clone(), doctype, query, keys, remaining: limit, written: 0 };
    let page = feed.read().await?;
    let mut out = Vec::new();
    out.extend_from_slice(format!("{{\"total_rows\":{},\"offset\":{skip},\"rows\":[", page.total_rows).as_bytes());
    let more = feed.write(page, &mut out)?;
    Ok(stream::respond(out, more.then_some(feed), |mut feed: AllDocsFeed| async move {
        let page = feed.read().await?;
        let mut out = Vec::new();
        let more = feed.write(page, &mut out)?;
        Ok::<Step<AllDocsFeed>, ApiError>((out, more.then_some(feed)))
    }))
}

fn keys_error(text: &str) -> ApiError {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(_)) => ApiError::bad_request("keys must be strings"),
        Ok(_) => ApiError::bad_request("keys must be an array"),
        Err(_) => ApiError::bad_request("keys must be JSON"),
    }
}

/// An `_all_docs` being answered: by range, each page starting after the last id answered; by
/// keys, each page taking the next keys.
struct AllDocsFeed {
    store: Arc<dyn Store>,
    doctype: Doctype,
    /// The next page's query.
    query: AllDocsQuery,
    /// The keys not yet answered, in order.
    keys: Option<std::collections::VecDeque<DocId>>,
    /// Rows still allowed by the request's `limit` (by range).
    remaining: Option<usize>,
    written: usize,
}

impl AllDocsFeed {
    async fn read(&mut self) -> ApiResult<AllDocs> {
        match &self.keys {
            Some(keys) => {
                self.query.keys = Some(keys.iter().take(PAGE_ROWS).cloned().collect());
                self.query.skip = 0;
            }
            None => self.query.limit = Some(self.remaining.map_or(PAGE_ROWS, |r| r.min(PAGE_ROWS))),
        }
        Ok(self.store.all_docs(&self.doctype, &self.query).await?)
    }

    /// Writes a page's rows, then the end of the answer after the last page; whether more
    /// pages follow.
    fn write(&mut self, page: AllDocs, out: &mut Vec<u8>) -> ApiResult<bool> {
        let answered = page.rows.len();
        let last = match page.rows.last() {
            Some(AllDocsRow::Doc { id, .. }) => Some(id.as_str().to_owned()),
            _ => None,
        };
        for row in &page.rows {
            if self.written > 0 {
                out.push(b',');
            }
            self.written += 1;
            write_all_docs_row(out, row, self.query.include_docs)?;
        }
        let more = match &mut self.keys {
            Some(keys) => {
                keys.drain(..answered.min(keys.len()));
                answered > 0 && !keys.is_empty()
            }
            None => {
                if let Some(r) = self.remaining.as_mut() {
                    *r = r.saturating_sub(answered);
                }
                match last {
                    // A page that answered nothing cannot move on.
                    Some(last) if page.more && self.remaining != Some(0) => {
                        self.query.start_key = Some(last);
                        self.query.exclusive_start = true;
                        self.query.skip = 0;
                        true
                    }
                    _ => false,
                }
            }
        };
        if !more {
            out.extend_from_slice(b"]}");
        }
        Ok(more)
    }
}

/// One row of `_all_docs`: `{"id", "key", "value": {"rev", "deleted"?}, "doc"?}`, or
/// `{"key", "error": "not_found"}` for a key without a document.
fn write_all_docs_row(out: &mut Vec<u8>, row: &AllDocsRow, include_docs: bool) -> ApiResult<()> {
    match row {
        AllDocsRow::Doc { id, rev, deleted, doc } => {
            out.extend_from_slice(b"{\"id\":");
            put_json(out, id.as_str())?;
            out.extend_from_slice(b",\"key\":");
            put_json(out, id.as_str())?;
            out.extend_from_slice(b",\"value\":{\"rev\":");
            put_json(out, &rev.to_string())?;
            if *deleted {
                out.extend_from_slice(b",\"deleted\":true");
            }
            out.push(b'}');
            if include_docs {
                out.extend_from_slice(b",\"doc\":");
                match doc {
                    Some(d) => render_into(out, d, d.id.as_str(), &[]).map_err(render_failed)?,
                    None => out.extend_from_slice(b"null"),
                }
            }
            out.push(b'}');
        }
        AllDocsRow::NotFound { key } => {
            out.extend_from_slice(b"{\"key\":");
            put_json(out, key.as_str())?;
            out.extend_from_slice(b",\"error\":\"not_found\"}");
        }
    }
    Ok(())
}

fn local_id(req: &HttpRequest) -> ApiResult<String> {
    let decoded = path::param(req, "id")?;
    let id = decoded.strip_prefix(LOCAL_PREFIX).unwrap_or_default();
    if id.is_empty() || id.len() > crate::store::doc::MAX_ID_LEN || id.chars().any(char::is_control) {
        return Err(ApiError::bad_request("invalid _local document id"));
    }
    Ok(id.to_owned())
}

/// `GET /data/:doctype/_local/:id` (or `_local%2F:id`, through `get_doc`) — a local (never
/// replicated) document, e.g. a checkpoint.
async fn get_local(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let doctype = doctype_of(&req)?;
    let (_, reach) = authorize(&inst, &req, &doctype, Verb::Get).await?;
    need_all(&reach)?;
    let id = local_id(&req)?;
    let doc = inst.0.store.get_local(&doctype, &id).await?;
    // `_id`, `_rev`, then the body as written, spliced as for documents.
    let mut out = json!({"_id": format!("_local/{id}"), "_rev": format!("0-{}", doc.rev)}).to_string();
    if !doc.body.is_empty() {
        out.pop();
        out.push(',');
        out.push_str(&doc.body.as_str()[1..]);
    }
    Ok(HttpResponse::Ok().content_type("application/json").body(out))
}

/// `PUT /data/:doctype/_local/:id` — writes it; as in CouchDB, revisions are not checked.
async fn put_local(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let doctype = doctype_of(&req)?;
    let (_, reach) = authorize(&inst, &req, &doctype, Verb::Put).await?;
    need_all(&reach)?;
    let id = local_id(&req)?;
    let limits = Limits::of(&req);
    let bytes = read_body(&req, payload, limits.request).await?;
    let members = Members::of(parse_raw(&bytes)?.get())
        .ok_or_else(|| ApiError::bad_request("the document must be a JSON object"))?;
    members.check_depth().map_err(ApiError::BadRequest)?;
    let body = Body::from_members(
        members.iter().filter(|m| !matches!(m.key().as_ref(), "_id" | "_rev" | "_revisions" | "_deleted")),
    );
    limits.check_document(&format!("_local/{id}"), body.as_str().len())?;
    let rev = inst.0.store.put_local(&doctype, &id, body).await?;
    Ok(created(json!({"ok": true, "id": format!("_local/{id}"), "rev": format!("0-{rev}")})))
}

/// `DELETE /data/:doctype/_local/:id`.
async fn delete_local(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let doctype = doctype_of(&req)?;
    let (_, reach) = authorize(&inst, &req, &doctype, Verb::Delete).await?;
    need_all(&reach)?;
    let id = local_id(&req)?;
    inst.0.store.delete_local(&doctype, &id).await?;
    Ok(HttpResponse::Ok().json(json!({"ok": true, "id": format!("_local/{id}"), "rev": "0-0"})))
}
