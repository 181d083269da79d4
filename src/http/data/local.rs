//! `_local` documents (replication checkpoints): no history, never in the feeds, reached through
//! `/data/:doctype/_local/{id}` (or `_local%2F{id}`).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::auth::Verb;
use crate::http::limits::Limits;
use crate::http::{parse_raw, path, read_body, ApiError, ApiResult, Inst, Query};
use crate::store::body::Members;
use crate::store::Body;

use super::*;

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
pub(super) async fn get_local(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
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

/// The `N` of a `_local` revision `0-N` a client names (CouchDB reads it as an integer; `0`
/// for none).
fn local_rev_number(rev: Option<&str>) -> ApiResult<u64> {
    let Some(rev) = rev else { return Ok(0) };
    rev.strip_prefix("0-")
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| ApiError::bad_request("invalid rev format: a _local revision is 0-N"))
}

/// The `_local` revision named by `?rev=` or `If-Match` (which must agree).
fn local_rev_param(req: &HttpRequest, q: &Query) -> ApiResult<Option<String>> {
    let from_header = req
        .headers()
        .get(header::IF_MATCH)
        .map(|v| v.to_str().map(|s| s.trim().trim_matches('"').to_owned()))
        .transpose()
        .map_err(|_| ApiError::bad_request("invalid If-Match header"))?;
    match (q.get("rev").map(str::to_owned), from_header) {
        (Some(a), Some(b)) if a != b => Err(ApiError::bad_request("rev and If-Match disagree")),
        (a, b) => Ok(a.or(b)),
    }
}

/// `PUT /data/:doctype/_local/:id` — writes it if the `_rev` given (in the body, `?rev=` or
/// `If-Match`) is its current one, none for a new document; otherwise 409 `conflict`, as
/// CouchDB's `update_local_docs` and PouchDB answer. Replicators read a checkpoint before they
/// write it, so they name its revision.
pub(super) async fn put_local(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let doctype = doctype_of(&req)?;
    let (_, reach) = authorize(&inst, &req, &doctype, Verb::Put).await?;
    need_all(&reach)?;
    let id = local_id(&req)?;
    let q = Query::of(&req)?;
    let limits = Limits::of(&req);
    let bytes = read_body(&req, payload, limits.request).await?;
    let members = Members::of(parse_raw(&bytes)?.get())
        .ok_or_else(|| ApiError::bad_request("the document must be a JSON object"))?;
    members.check_depth().map_err(ApiError::BadRequest)?;
    let mut body_rev = None;
    for m in members.iter().filter(|m| m.key() == "_rev") {
        body_rev = match serde_json::from_str::<Value>(m.value) {
            Ok(Value::String(s)) => Some(s),
            Ok(Value::Null) => None,
            _ => return Err(ApiError::bad_request("invalid rev format: a _local revision is 0-N")),
        };
    }
    let rev = match (body_rev, local_rev_param(&req, &q)?) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::bad_request("rev in the body and in the request disagree"))
        }
        (a, b) => a.or(b),
    };
    let expected = local_rev_number(rev.as_deref())?;
    let body = Body::from_members(
        members.iter().filter(|m| !matches!(m.key().as_ref(), "_id" | "_rev" | "_revisions" | "_deleted")),
    );
    limits.check_document(&format!("_local/{id}"), body.as_str().len())?;
    let rev = inst.0.store.put_local_if(&doctype, &id, body, expected).await?;
    let full = format!("{LOCAL_PREFIX}{id}");
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location(&req, &doctype, &full)))
        .json(json!({"ok": true, "id": full, "rev": format!("0-{rev}")})))
}

/// `DELETE /data/:doctype/_local/:id?rev=0-N` (or `If-Match`) — 409 `conflict` when `0-N` is
/// not its current revision (none given included), 404 when there is no such document
/// (CouchDB's and PouchDB's answers).
pub(super) async fn delete_local(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let doctype = doctype_of(&req)?;
    let (_, reach) = authorize(&inst, &req, &doctype, Verb::Delete).await?;
    need_all(&reach)?;
    let id = local_id(&req)?;
    let q = Query::of(&req)?;
    let expected = local_rev_number(local_rev_param(&req, &q)?.as_deref())?;
    inst.0.store.delete_local_if(&doctype, &id, expected).await?;
    Ok(HttpResponse::Ok().json(json!({"ok": true, "id": format!("_local/{id}"), "rev": "0-0"})))
}
