//! Sharing requests answered by an app, with the acceptance page's checks (see
//! `sharing::request` and `GET|POST /auth/authorize/sharing`):
//! `GET /sharings/requests`, `POST /sharings/:id/accept`, `POST /sharings/:id/refuse`.
//!
//! The page's form carries the owner's `state` from the invitation link; an app has no link,
//! so these use the state the owner gave this instance with the request (kept on its own member,
//! `Member::answer_state`). The token must be able to manage the sharing (`io.cozy.sharings`,
//! or every rule with every verb), as for the other owner-side routes.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::callers::{AppCaller, ManagedSharing};
use super::sharings::may_manage;
use super::{jsonapi, state_of};
use super::{parse_json, read_body, ApiError, ApiResult, Inst};
use crate::instance::Instance;
use crate::sharing::service;
use crate::sharing::{self, MemberIndex, MemberStatus, Sharing, SharingId};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/sharings/requests", web::get().to(list))
        .route("/sharings/{id}/accept", web::post().to(accept))
        .route("/sharings/{id}/refuse", web::post().to(refuse));
}

/// This instance's own member in a request it received.
fn own_member<'a>(s: &'a Sharing, me: &str) -> Option<(usize, &'a sharing::Member)> {
    s.members
        .iter()
        .enumerate()
        .skip(1)
        .find(|(_, m)| m.instance.as_deref() == Some(me) && m.status != MemberStatus::Owner)
}

fn is_pending(s: &Sharing, me: &str) -> bool {
    !s.owner && !s.active && !s.is_revoked() && !sharing::request::answered(s, me)
}

/// `GET /sharings/requests` — the requests received and not answered, each with `meta.digest`
/// (what `accept` needs); the owner's `state` is never shown.
async fn list(inst: Inst, AppCaller { perms, .. }: AppCaller, req: HttpRequest) -> ApiResult<HttpResponse> {
    let me = state_of(&req)?.sharing.federation.instance_url(inst.0.domain.as_str());
    let mut data = Vec::new();
    for s in sharing::list(inst.0.store.as_ref()).await? {
        if !is_pending(&s, &me) || !may_manage(&perms, &s) {
            continue;
        }
        let index = own_member(&s, &me).map_or(MemberIndex::OWNER, |(i, _)| MemberIndex(i));
        let mut v = s.to_api();
        v["meta"]["digest"] = json!(sharing::request::digest(&s, index));
        data.push(v);
    }
    Ok(jsonapi(StatusCode::OK, json!({"meta": {"count": data.len()}, "data": data})))
}

/// The request `:id` as the caller may answer it, and the state to answer with.
fn answerable(
    inst: &Inst,
    req: &HttpRequest,
    ManagedSharing { id, sharing: s }: ManagedSharing,
) -> ApiResult<(SharingId, String)> {
    if s.owner {
        return Err(ApiError::NotFound("no such sharing request: this instance owns the sharing".into()));
    }
    let me = state_of(req)?.sharing.federation.instance_url(inst.0.domain.as_str());
    if !is_pending(&s, &me) {
        return Err(ApiError::ConflictWith("this sharing request was already answered, accepted or revoked".into()));
    }
    let state = own_member(&s, &me).and_then(|(_, m)| m.answer_state.clone()).ok_or_else(|| {
        ApiError::ConflictWith(
            "the owner's instance gave no answer state with this request: answer it from the invitation link".into(),
        )
    })?;
    Ok((id, state))
}

/// `POST /sharings/:id/accept` `{"digest"}` — accepts, as the acceptance page does: 409 when the
/// request changed since the digest was read (or was answered); 200 with the active sharing.
async fn accept(inst: Inst, m: ManagedSharing, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let (id, state) = answerable(&inst, &req, m)?;
    let body = parse_json(&read_body(&req, payload, 64 * 1024).await?)?;
    let digest = body.get("digest").and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request("accepting needs the digest of the request shown (GET /sharings/requests)")
    })?;
    let s = service::accept(&state_of(&req)?.sharing, &inst.0, &id, &state, digest).await?;
    Ok(jsonapi(StatusCode::OK, json!({"data": s.to_api()})))
}

/// `POST /sharings/:id/refuse` — refuses; the owner's instance is told (its member becomes
/// `refused`). 200 with the sharing.
async fn refuse(inst: Inst, m: ManagedSharing, req: HttpRequest) -> ApiResult<HttpResponse> {
    let (id, state) = answerable(&inst, &req, m)?;
    service::refuse(&state_of(&req)?.sharing, &inst.0, &id, &state).await?;
    let s = loaded(&inst.0, &id).await?;
    Ok(jsonapi(StatusCode::OK, json!({"data": s.to_api()})))
}

async fn loaded(inst: &Instance, id: &SharingId) -> ApiResult<Sharing> {
    sharing::load(inst.store.as_ref(), id).await?.ok_or_else(|| ApiError::NotFound("no such sharing".into()))
}
