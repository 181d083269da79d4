//! Invitation links over HTTP (the DIAL model, logic in `crate::sharing::invitations`): the
//! owner creates, lists and revokes links of a sharing; a ready member with `share` re-shares
//! (its app asks its own instance, which asks the owner with the member's credentials); a
//! holder reads what a link offers; a recipient discards a sharing. The discovery page
//! (`/sharings/:id/discovery`, in `sharings::pages`) takes `?invitation=` too.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::callers::{InvitationCreator, ManagedSharing};
use super::permissions::{code_failed, reserve_code_attempt};
use super::{jsonapi, state_of};
use super::{parse_json, path, read_body, ApiError, ApiResult, Inst, Query};
use crate::sharing;
use crate::sharing::invitations;
use crate::sharing::protocol::Document;
use crate::sharing::service;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/sharings/{id}/invitations").route(web::get().to(list)).route(web::post().to(create)))
        .route("/sharings/{id}/invitations/{inv}", web::delete().to(revoke))
        .route("/sharings/{id}/discard", web::post().to(discard))
        .route("/invitations/{code}", web::get().to(details));
}

/// A wire type as JSON: through a value, so members come out in alphabetical order, as they
/// always did.
fn wire(v: &impl serde::Serialize) -> ApiResult<Value> {
    serde_json::to_value(v).map_err(|e| ApiError::Internal(e.into()))
}

async fn json_body(req: &HttpRequest, payload: web::Payload) -> ApiResult<Value> {
    parse_json(&read_body(req, payload, 64 * 1024).await?)
}

/// `POST /sharings/:id/invitations` — `{"permissions": ["read"|"write", "share"?],
/// "max_accepted_users"?, "expires_in"?}`; 201 with the invitation and its `link` (shown this
/// once). From the owner's app; from a ready member's instance (its access token: a re-share,
/// read-only); or from a member's app on its own instance, which forwards it to the owner.
async fn create(
    inst: Inst,
    caller: InvitationCreator,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let svc = state_of(&req)?;
    let body = json_body(&req, payload).await?;
    let (id, creator) = match caller {
        InvitationCreator::App(app) if !app.sharing.owner => {
            let answer = invitations::forward(&svc.sharing, &inst.0, &app.id, &body).await?;
            return Ok(jsonapi(StatusCode::CREATED, wire(&answer)?));
        }
        InvitationCreator::App(app) => (app.id, sharing::MemberIndex::OWNER),
        InvitationCreator::Member { id, index } => (id, index),
    };
    let (inv, link) = invitations::create(&svc.sharing, &inst.0, &id, creator, &body).await?;
    let s =
        sharing::load(inst.0.store.as_ref(), &id).await?.ok_or_else(|| ApiError::NotFound("no such sharing".into()))?;
    let mut data = invitations::to_api(&s, &inv);
    data.attributes.link = Some(link);
    Ok(jsonapi(StatusCode::CREATED, wire(&Document { data })?))
}

/// `GET /sharings/:id/invitations` — the owner's active links with their accept counts.
async fn list(ManagedSharing { sharing: s, .. }: ManagedSharing) -> ApiResult<HttpResponse> {
    if !s.owner {
        return Err(ApiError::Forbidden("invitation links are kept by the sharing's owner".into()));
    }
    let data = invitations::active_list(&s);
    Ok(jsonapi(StatusCode::OK, json!({"data": wire(&data)?, "meta": {"count": data.len()}})))
}

/// `DELETE /sharings/:id/invitations/:inv?revoke_members=true` — the link (and re-shares made
/// from it) stops working; the members it made stay unless `revoke_members`.
async fn revoke(inst: Inst, ManagedSharing { id, .. }: ManagedSharing, req: HttpRequest) -> ApiResult<HttpResponse> {
    let inv = path::param(&req, "inv")?;
    let revoke_members = Query::of(&req)?.flag("revoke_members")?;
    let s = invitations::revoke(&state_of(&req)?.sharing, &inst.0, &id, &inv, revoke_members).await?;
    Ok(jsonapi(StatusCode::OK, json!({"data": s.to_api()})))
}

/// `GET /invitations/:code` — what a link offers, for whoever holds it (404 for unknown,
/// revoked and expired links alike; failures are rate-limited like sharecodes).
async fn details(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let attempt = reserve_code_attempt(&inst.0, &req)?;
    let code = path::param(&req, "code")?;
    match invitations::details(&inst.0, &code).await? {
        Some(v) => {
            attempt.succeeded();
            Ok(jsonapi(StatusCode::OK, json!({"data": v})))
        }
        None => {
            code_failed(&inst.0, attempt);
            Err(ApiError::NotFound("no such invitation".into()))
        }
    }
}

/// `POST /sharings/:id/discard` — on a recipient: leaves an accepted sharing (as
/// `DELETE /sharings/:id/recipients/self`), or drops a request not accepted.
async fn discard(
    inst: Inst,
    ManagedSharing { id, sharing: s }: ManagedSharing,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    if s.owner {
        return Err(ApiError::bad_request("the owner revokes the sharing instead of discarding it"));
    }
    let cx = &state_of(&req)?.sharing;
    if s.active {
        let s = state_of(&req)?
            .sharing_write(&inst.0, |cx, inst| async move { service::leave(&cx, &inst, &id).await })
            .await?;
        return Ok(jsonapi(StatusCode::OK, json!({"data": s.to_api()})));
    }
    // A pending request: the owner is told, as for a refusal (its member becomes `refused`,
    // which frees an invitation link's seat), when the owner gave the state to answer with.
    let me = cx.federation.instance_url(inst.0.domain.as_str());
    let state = s
        .members
        .iter()
        .skip(1)
        .find(|m| m.instance.as_deref() == Some(me.as_str()) && m.status.is_invited())
        .and_then(|m| m.answer_state.clone());
    if let Some(state) = state.filter(|_| !sharing::request::answered(&s, &me)) {
        match service::refuse(cx, &inst.0, &id, &state).await {
            Ok(()) => {
                let s = sharing::load(inst.0.store.as_ref(), &id)
                    .await?
                    .ok_or_else(|| ApiError::NotFound("no such sharing".into()))?;
                return Ok(jsonapi(StatusCode::OK, json!({"data": s.to_api()})));
            }
            // Discarding never fails because the owner cannot be told: it is forgotten here.
            Err(e) => {
                tracing::warn!(instance = %inst.0.domain, sharing = %id, "discarded without telling the owner: {e}")
            }
        }
    }
    let s = invitations::drop_request(&inst.0, &id).await?;
    Ok(jsonapi(StatusCode::OK, json!({"data": s.to_api()})))
}
