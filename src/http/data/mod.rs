//! `/data/:doctype/...`: each doctype of an instance looks like a CouchDB database, so a CouchDB
//! replication client (PouchDB, CouchDB's replicator) can sync with it, and Cozy apps find the
//! routes they know. Every route checks the bearer token's scope for the doctype, the verb and,
//! for scopes limited to some ids, the documents touched.
//!
//! * this file: the routes, and what every handler shares (the doctype and id of the path,
//!   authorization, rendering), the server welcome, database information;
//! * `documents`: one document at a time;
//! * `bulk`: `_bulk_docs`, `_revs_diff`, `_bulk_get`;
//! * `feeds`: `_changes` and `_all_docs`;
//! * `local`: `_local` documents.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use sha2::Digest;

use super::limits::Limits;
use super::{path, Inst};
use crate::auth::{PermissionSet, Reach, Verb};
use crate::http::{ApiError, ApiResult};
use crate::store::doc::render;
use crate::store::{DocId, DocRev, Doctype};

mod bulk;
mod documents;
mod feeds;
mod local;

use bulk::*;
use documents::*;
use feeds::*;
use local::*;

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

/// `GET /data/` — CouchDB's server welcome, which replication clients read for a server id.
async fn welcome(inst: Inst) -> HttpResponse {
    let uuid = hex::encode(&sha2::Sha256::digest(inst.0.domain.as_str().as_bytes())[..16]);
    HttpResponse::Ok().json(json!({"couchdb": "Welcome", "vendor": {"name": "hearth"}, "uuid": uuid}))
}

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

/// `POST /data/:doctype/_ensure_full_commit` — every write is durable when acknowledged; kept
/// for replicators that still call it.
async fn ensure_full_commit(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let doctype = doctype_of(&req)?;
    authorize(&inst, &req, &doctype, Verb::Post).await?;
    Ok(created(json!({"ok": true, "instance_start_time": "0"})))
}

fn as_object(v: Value, what: &str) -> ApiResult<Map<String, Value>> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::bad_request(format!("{what} must be a JSON object"))),
    }
}
