//! `/sharings/...` routes (the owner's and the recipients' sides of the Cozy-to-Cozy flow),
//! the recipient's acceptance page (`/auth/authorize/sharing`) and the OAuth token refresh
//! endpoint (`/auth/access_token`). The logic lives in `crate::sharing::service`; handlers parse,
//! authorise and shape answers.
//!
//! Split by audience: `apps` (bearer app tokens: create, list, manage, status, sync),
//! `peers` (other instances, with sharing credentials or the OAuth client's: notifications,
//! replication, token refresh) and `pages` (a person's browser, with a session: discovery and
//! the acceptance page). This module holds the routes and the helpers they share.

mod apps;
mod pages;
mod peers;

use apps::*;
use pages::*;
pub(super) use peers::replicating_peer;
use peers::*;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::limits::Limits;
use super::login::{esc, page, SESSION_COOKIE};
use super::state_of;
use super::{bearer, data_caller, parse_json, path, read_body, ApiError, ApiResult, Inst, Query};
use crate::auth::{oauth, PermissionSet, Verb};
use crate::sharing::service::{self, Discovery, ListQuery};
use crate::sharing::{self, MemberIndex, MemberStatus, Sharing, SharingError, SharingId};
use crate::store::{DocId, Doctype};

/// Largest body of a route reachable without credentials (the sharing notice and answer, the
/// forms): see `sharing::request::MAX_NOTICE_BYTES`.
pub const ANONYMOUS_BODY_BYTES: usize = crate::sharing::request::MAX_NOTICE_BYTES;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/sharings/").route(web::post().to(create)).route(web::get().to(list)))
        .service(
            web::resource("/sharings/{id}")
                .route(web::get().to(get_sharing))
                .route(web::put().to(put_request))
                .route(web::delete().to(revoked_notification)),
        )
        .service(
            web::resource("/sharings/{id}/discovery")
                .route(web::get().to(discovery_page))
                .route(web::post().to(discovery_post)),
        )
        .service(
            web::resource("/sharings/{id}/answer")
                .route(web::post().to(answer))
                .route(web::delete().to(left_notification)),
        )
        .service(
            web::resource("/sharings/{id}/recipients")
                .route(web::post().to(add_recipients))
                .route(web::put().to(members_notification))
                .route(web::delete().to(revoke_all)),
        )
        .route("/sharings/{id}/recipients/self", web::delete().to(leave))
        .route("/sharings/{id}/recipients/delegated", web::post().to(add_delegated))
        .route("/sharings/{id}/recipients/{index}", web::delete().to(revoke_one))
        .service(
            web::resource("/sharings/{id}/recipients/{index}/readonly")
                .route(web::post().to(add_read_only))
                .route(web::delete().to(remove_read_only)),
        )
        .route("/sharings/{id}/request", web::get().to(request_fetch))
        .route("/sharings/{id}/credentials", web::post().to(credentials_notification))
        .route("/sharings/{id}/_revs_diff", web::post().to(replication_revs_diff))
        .route("/sharings/{id}/_bulk_docs", web::post().to(replication_bulk_docs))
        .route("/sharings/{id}/status", web::get().to(status))
        .route("/sharings/{id}/sync", web::post().to(sync_now))
        .service(
            web::resource("/auth/authorize/sharing")
                .route(web::get().to(authorize_page))
                .route(web::post().to(authorize_post)),
        )
        .route("/auth/access_token", web::post().to(access_token));
}

impl From<SharingError> for ApiError {
    fn from(e: SharingError) -> Self {
        match e {
            SharingError::BadRequest(r) => ApiError::BadRequest(r),
            SharingError::Unauthorized(r) => ApiError::Unauthorized(r),
            SharingError::Forbidden(r) => ApiError::Forbidden(r),
            SharingError::NotFound(r) => ApiError::NotFound(r),
            SharingError::Conflict(r) => ApiError::ConflictWith(r),
            SharingError::TooMany(_) => ApiError::TooManyRequests,
            SharingError::NotReadyYet(r) => ApiError::NotReadyYet(r),
            // Refused by the SSRF guard: no connection was made, nothing failed upstream.
            SharingError::Peer(p) if p.is_policy_refusal() => {
                ApiError::BadRequest(format!("this address cannot be used: {p}; no connection was made"))
            }
            SharingError::Peer(p) => ApiError::BadGateway(p.to_string()),
            SharingError::Store(s) => s.into(),
        }
    }
}

pub(super) fn sharing_id(req: &HttpRequest) -> ApiResult<SharingId> {
    SharingId::parse(&path::param(req, "id")?).map_err(ApiError::BadRequest)
}

pub(in crate::http) fn member_index(req: &HttpRequest) -> ApiResult<MemberIndex> {
    path::param(req, "index")?
        .parse()
        .map(MemberIndex)
        .map_err(|_| ApiError::bad_request("member index must be a number"))
}

fn jsonapi(status: StatusCode, v: Value) -> HttpResponse {
    HttpResponse::build(status).content_type("application/vnd.api+json").body(v.to_string())
}

fn doc(s: &Sharing) -> Value {
    json!({"data": s.to_api()})
}

/// Whether an owner's token may manage this sharing: it covers every rule with every verb (as
/// creating it required), or it has the whole `io.cozy.sharings` doctype.
pub(super) fn may_manage(perms: &PermissionSet, s: &Sharing) -> bool {
    let sharings_dt = Doctype::parse("io.cozy.sharings").ok();
    if sharings_dt
        .is_some_and(|d| [Verb::Get, Verb::Post, Verb::Put, Verb::Delete].iter().all(|v| perms.allows(&d, *v, None)))
    {
        return true;
    }
    s.rules.iter().all(|r| {
        Doctype::parse(&r.doctype).is_ok_and(|d| {
            [Verb::Get, Verb::Post, Verb::Put, Verb::Delete].iter().all(|v| match &r.selector {
                None => r.values.iter().all(|id| perms.allows(&d, *v, Some(id))),
                Some(_) => perms.allows(&d, *v, None),
            })
        })
    })
}

/// Whether an owner's token may read this sharing: GET on one of its doctypes, or on sharings.
pub(in crate::http) fn may_read(perms: &PermissionSet, s: &Sharing) -> bool {
    let sharings_dt = Doctype::parse("io.cozy.sharings").ok();
    sharings_dt.is_some_and(|d| perms.allows(&d, Verb::Get, Some(s.id())))
        || s.rules.iter().any(|r| {
            Doctype::parse(&r.doctype).is_ok_and(|d| perms.allows(&d, Verb::Get, r.values.first().map(String::as_str)))
        })
}

pub(in crate::http) async fn load_managed(inst: &Inst, req: &HttpRequest, id: &SharingId) -> ApiResult<Sharing> {
    let perms = match data_caller(&inst.0, req) {
        Ok((_, perms)) => perms,
        Err(e) => {
            // A member's instance is known here, but managing the sharing is the owner's.
            if let Some(token) = bearer(req) {
                if service::peer_member(&inst.0, id, token).await.is_ok() {
                    return Err(ApiError::Forbidden("members cannot manage the sharing".into()));
                }
            }
            return Err(e);
        }
    };
    let s =
        sharing::load(inst.0.store.as_ref(), id).await?.ok_or_else(|| ApiError::NotFound("no such sharing".into()))?;
    if !may_manage(&perms, &s) {
        return Err(ApiError::Forbidden("the token does not cover this sharing".into()));
    }
    Ok(s)
}

/// The member a peer's bearer token stands for (`401` when missing, invalid or revoked).
pub(super) async fn peer(inst: &Inst, req: &HttpRequest, id: &SharingId, verb: Verb) -> ApiResult<MemberIndex> {
    let token = bearer(req).ok_or(ApiError::Unauthorized("a bearer token is required"))?;
    let (client, perms) = service::peer_member(&inst.0, id, token).await?;
    if !service::peer_may(&perms, id, verb) {
        if verb != Verb::Get && service::peer_may(&perms, id, Verb::Get) {
            // A member that may read but not write: its changes are refused (a reason its
            // replicator recognises, see `sharing::protocol::READ_ONLY_REFUSAL`).
            return Err(ApiError::Forbidden(crate::sharing::protocol::READ_ONLY_REFUSAL.into()));
        }
        return Err(ApiError::Forbidden("this member's permissions do not allow it".into()));
    }
    Ok(client.member_index)
}

async fn json_body(req: &HttpRequest, payload: web::Payload) -> ApiResult<Value> {
    let limit = state_of(req)?.config.max_http_request_size;
    parse_json(&read_body(req, payload, limit).await?)
}

/// The body of a route anyone may call, without credentials: at most [`ANONYMOUS_BODY_BYTES`]
/// (413 beyond, before reading it whole).
async fn anonymous_json_body(req: &HttpRequest, payload: web::Payload) -> ApiResult<Value> {
    parse_json(&read_body(req, payload, ANONYMOUS_BODY_BYTES).await?)
}
