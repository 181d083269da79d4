//! Single documents: `GET`, `PUT`, `DELETE` and `POST` of `/data/:doctype/{id}` (with
//! `open_revs`, `If-None-Match` and `Location`), and the answer of a write.

use actix_web::http::header::ContentType;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use hearth_replicator::rev::Rev;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::auth::Verb;
use crate::http::limits::Limits;
use crate::http::{parse_raw, read_body, ApiError, ApiResult, Inst, Query};
use crate::store::doc::{parse_doc, parse_new_doc, render_into};
use crate::store::{Body, DocId, DocRev, DocView, Doctype, GetOptions, OpenRev, OpenRevs, WriteResult};

use super::*;

/// `{"ok": doc}` or `{"missing": rev}`: one answer of `open_revs`, documents embedded as
/// their text.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum RevAnswer {
    Ok(Box<RawValue>),
    Missing(String),
}

/// Answer of a single-document write, in Cozy's shape (a superset of CouchDB's): `data` is the
/// document as written, with its new `_id` and `_rev` (and `_deleted: true` for a deletion).
/// Headers: `ETag` (the new revision) and, as CouchDB sends for 201, `Location` (the document's
/// absolute URL, see [`location`]).
fn write_answer(req: &HttpRequest, doctype: &Doctype, w: &Written, status: StatusCode) -> ApiResult<HttpResponse> {
    #[derive(Serialize)]
    struct Answer<'a> {
        ok: bool,
        id: &'a str,
        rev: String,
        r#type: &'a str,
        data: Box<RawValue>,
    }
    let doc =
        DocRev { id: w.id.clone(), rev: w.rev.clone(), deleted: w.deleted, body: w.body.clone(), revisions: None };
    let answer =
        Answer { ok: true, id: w.id.as_str(), rev: w.rev.to_string(), r#type: doctype.as_str(), data: rendered(&doc)? };
    let mut resp = HttpResponse::build(status);
    resp.insert_header((header::ETAG, format!("\"{}\"", w.rev)));
    if status == StatusCode::CREATED {
        resp.insert_header((header::LOCATION, location(req, doctype, w.id.as_str())));
    }
    Ok(resp.json(answer))
}

/// A document just written, as [`write_answer`] tells it.
struct Written {
    id: DocId,
    rev: Rev,
    deleted: bool,
    body: Body,
}

/// Bytes of an id escaped in a `Location` path: all but RFC 3986's unreserved characters.
const PATH_ESCAPED: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The absolute URL of a document (`http://host/data/doctype/id`, the id percent-encoded once,
/// `_local/` kept as is), which CouchDB sends as `Location` with a 201 (its
/// `couch_httpd:absolute_uri`). Scheme and host are the request's own.
pub(super) fn location(req: &HttpRequest, doctype: &Doctype, id: &str) -> String {
    let info = req.connection_info();
    let (prefix, rest) = match id.strip_prefix(LOCAL_PREFIX) {
        Some(rest) => (LOCAL_PREFIX, rest),
        None => ("", id),
    };
    format!(
        "{}://{}/data/{}/{prefix}{}",
        info.scheme(),
        info.host(),
        percent_encoding::utf8_percent_encode(doctype.as_str(), PATH_ESCAPED),
        percent_encoding::utf8_percent_encode(rest, PATH_ESCAPED)
    )
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
pub(super) async fn create_doc(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
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
    let (id, body) = (w.id.clone(), w.body.clone());
    let rev = write_one(&inst, &doctype, w).await?;
    write_answer(&req, &doctype, &Written { id, rev, deleted: false, body }, StatusCode::CREATED)
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
/// large document is copied once, from the stored text), and whether it holds meta members
/// (`_conflicts`, `_deleted_conflicts`) besides the revision's own.
fn render_view(view: &DocView, conflicts: bool, deleted_conflicts: bool) -> ApiResult<(Vec<u8>, bool)> {
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
    Ok((out, !extra.is_empty()))
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
/// `?conflicts=true`, `?deleted_conflicts=true`; `?open_revs=all|[...]` (and `latest=true`,
/// `revs=true` for `_revisions`) answers a JSON array of `{"ok": doc}` / `{"missing": rev}` as
/// CouchDB does for JSON clients.
/// `?meta=true` is `conflicts` and `deleted_conflicts` together. The ETag is the revision, sent
/// when the body has no meta members (`_conflicts`, `_deleted_conflicts`) and none were asked
/// with `meta`, `revs_info` or `local_seq`; an `If-None-Match` naming it then answers 304 without a body (CouchDB,
/// RFC 9110 §13.1.2). Bodies are answered as written (see `store::body`).
pub(super) async fn get_doc(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
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
        // `_revisions` only with `revs=true`, as CouchDB and PouchDB answer.
        let revs_history = q.flag("revs")?;
        let list = found
            .into_iter()
            .map(|r| {
                Ok(match r {
                    OpenRev::Found(mut d) => {
                        if !revs_history {
                            d.revisions = None;
                        }
                        RevAnswer::Ok(rendered(&d)?)
                    }
                    OpenRev::Missing(rev) => RevAnswer::Missing(rev.to_string()),
                })
            })
            .collect::<ApiResult<Vec<_>>>()?;
        return Ok(HttpResponse::Ok().json(list));
    }
    let opts = GetOptions { rev: rev_param(&req, &q)?, revs: q.flag("revs")? };
    let view = inst.0.store.get(&doctype, &id, opts).await?;
    // `meta=true` asks for both lists too (CouchDB's `meta` = conflicts, deleted_conflicts,
    // revs_info). `revs_info` and `local_seq` are not answered, but CouchDB sends no ETag with
    // them either.
    let meta_asked = q.flag("meta")?;
    let (body, meta) =
        render_view(&view, meta_asked || q.flag("conflicts")?, meta_asked || q.flag("deleted_conflicts")?)?;
    let meta = meta || meta_asked || q.flag("revs_info")? || q.flag("local_seq")?;
    let rev = view.doc.rev.clone();
    drop(view);
    let mut resp = HttpResponse::Ok();
    resp.insert_header(ContentType::json());
    // The revision names the revision's own text (and `_revisions`, which a revision keeps),
    // not meta members that change while the revision stays: with them, no ETag and no 304
    // (CouchDB's `send_doc` does the same).
    if !meta {
        let etag = format!("\"{rev}\"");
        if none_match(&req, &etag) {
            return Ok(HttpResponse::NotModified().insert_header((header::ETAG, etag)).finish());
        }
        resp.insert_header((header::ETAG, etag));
    }
    Ok(resp.body(body))
}

/// `PUT /data/:doctype/:id` — creates or updates; the parent revision comes from `_rev`,
/// `?rev=` or `If-Match`. With `?new_edits=false` the body is a replicated revision.
pub(super) async fn put_doc(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
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
        return Ok(HttpResponse::Created()
            .insert_header((header::LOCATION, location(&req, &doctype, id.as_str())))
            .json(json!({"ok": true, "id": id.as_str(), "rev": rev.to_string()})));
    }
    match (rev_param(&req, &q)?, &w.rev) {
        (Some(a), Some(b)) if &a != b => {
            return Err(ApiError::bad_request("rev in the body and in the request disagree"))
        }
        (Some(a), None) => w.rev = Some(a),
        _ => {}
    }
    let (deleted, body) = (w.deleted, w.body.clone());
    let rev = write_one(&inst, &doctype, w).await?;
    write_answer(&req, &doctype, &Written { id, rev, deleted, body }, StatusCode::CREATED)
}

/// `DELETE /data/:doctype/:id?rev=` — adds a deletion revision on top of `rev`.
pub(super) async fn delete_doc(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
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
