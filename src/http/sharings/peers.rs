//! `/sharings/...` routes for peer instances, authorised by sharing credentials (or, for
//! `/auth/access_token`, the OAuth client's): the sharing request, notifications (revoked,
//! left, credentials, answer, members), delegated recipients, replication (`_revs_diff`,
//! `_bulk_docs`) and the token refresh.

use super::*;
use crate::http::callers::{PeerCaller, ReplicatingPeer};
use crate::sharing::protocol::{BulkDocs, Document, InvitationLink};

/// `PUT /sharings/:id` — on a recipient, from the owner's instance: the notice of a sharing
/// request (at most 64 KiB); the request itself is fetched back from the owner (see
/// `sharing::request`). Answers the stored request.
pub(super) async fn put_request(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let id = sharing_id(&req)?;
    let body = anonymous_json_body(&req, payload).await?;
    let s = service::receive_request(&state_of(&req)?.sharing, &inst.0, &id, &body).await?;
    Ok(jsonapi(StatusCode::OK, doc(&s)))
}

/// `GET /sharings/:id/request` — on the owner, from a recipient's instance with the request
/// token of its notice (`Authorization: Bearer`): the sharing request for that member.
pub(super) async fn request_fetch(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let id = sharing_id(&req)?;
    let token = bearer(&req).ok_or(ApiError::Unauthorized("the request token is required"))?;
    let doc = crate::sharing::request::serve(&inst.0, &id, token).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/vnd.api+json")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(doc.to_string()))
}

/// `DELETE /sharings/:id` — on a recipient, from the owner: this instance was revoked.
pub(super) async fn revoked_notification(inst: Inst, caller: PeerCaller, req: HttpRequest) -> ApiResult<HttpResponse> {
    caller.owner_only()?;
    state_of(&req)?
        .sharing_write(&inst.0, |cx, inst| async move { service::revoked_by_owner(&cx, &inst, &caller.id).await })
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `DELETE /sharings/:id/answer` — on the owner, from a member's instance: it left.
pub(super) async fn left_notification(inst: Inst, caller: PeerCaller, req: HttpRequest) -> ApiResult<HttpResponse> {
    caller.member_only()?;
    state_of(&req)?
        .sharing_write(
            &inst.0,
            |cx, inst| async move { service::member_left(&cx, &inst, &caller.id, caller.index).await },
        )
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /sharings/:id/credentials` — on a recipient, from the owner: new credentials.
pub(super) async fn credentials_notification(
    inst: Inst,
    caller: PeerCaller,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    caller.owner_only()?;
    let body = json_body(&req, payload).await?;
    service::receive_credentials(&inst.0, &caller.id, &body).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /sharings/:id/answer` — on the owner, from a recipient's instance: the credential
/// exchange (or a refusal), authenticated by the member's `state` (at most 64 KiB).
pub(super) async fn answer(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let id = sharing_id(&req)?;
    let body = anonymous_json_body(&req, payload).await?;
    let out = state_of(&req)?
        .sharing_write(&inst.0, |cx, inst| async move { service::process_answer(&cx, &inst, &id, &body).await })
        .await?;
    Ok(jsonapi(StatusCode::OK, out))
}

/// `PUT /sharings/:id/recipients` — on a recipient, from the owner's instance: the member list
/// (see `service::receive_members`).
pub(super) async fn members_notification(
    inst: Inst,
    caller: PeerCaller,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    caller.owner_only()?;
    let body = json_body(&req, payload).await?;
    service::receive_members(&state_of(&req)?.sharing, &inst.0, &caller.id, &body).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /sharings/:id/recipients/delegated` — a ready member of an open sharing adds
/// recipients through the owner; answers their invitation links.
pub(super) async fn add_delegated(
    inst: Inst,
    caller: PeerCaller,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let body = json_body(&req, payload).await?;
    let links = service::add_delegated(&state_of(&req)?.sharing, &inst.0, &caller.id, caller.index, &body).await?;
    let data: Vec<InvitationLink> =
        links.into_iter().map(|(index, invitation)| InvitationLink { index, invitation }).collect();
    Ok(jsonapi(StatusCode::OK, serde_json::to_value(Document { data }).unwrap_or_default()))
}

#[derive(Deserialize)]
pub(super) struct TokenForm {
    grant_type: String,
    refresh_token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

pub(super) fn oauth_error(status: StatusCode, error: &str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({"error": error, "reason": error}))
}

/// `POST /auth/access_token` — OAuth 2 token endpoint for peer instances; only
/// `grant_type=refresh_token` (RFC 6749 section 6), client credentials in the body or as HTTP
/// Basic authentication.
pub(super) async fn access_token(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let body = read_body(&req, payload, ANONYMOUS_BODY_BYTES).await?;
    let Ok(mut form) = serde_urlencoded::from_bytes::<TokenForm>(&body) else {
        return Ok(oauth_error(StatusCode::BAD_REQUEST, "invalid_request"));
    };
    if let Some((id, secret)) = basic_auth(&req) {
        form.client_id.get_or_insert(id);
        form.client_secret.get_or_insert(secret);
    }
    if form.grant_type != "refresh_token" {
        return Ok(oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"));
    }
    let (Some(refresh), Some(id), Some(secret)) = (form.refresh_token, form.client_id, form.client_secret) else {
        return Ok(oauth_error(StatusCode::BAD_REQUEST, "invalid_request"));
    };
    let ttl = state_of(&req)?.config.federation.access_token_ttl_secs;
    match oauth::refresh(inst.0.as_ref(), &id, &secret, &refresh, ttl).await? {
        Some((client, token)) => {
            Ok(HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(json!({
                "access_token": token,
                "token_type": "bearer",
                "expires_in": ttl,
                "scope": client.scope,
            })))
        }
        None => Ok(oauth_error(StatusCode::BAD_REQUEST, "invalid_grant")),
    }
}

pub(super) fn basic_auth(req: &HttpRequest) -> Option<(String, String)> {
    use base64::Engine;
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let dec = |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
    Some((dec(id)?, dec(secret)?))
}

/// The sharing as seen by a member's instance calling it: must be active, and the caller a
/// ready member (any member on the owner, the owner on a recipient). On a recipient, a call
/// from the owner made while this instance still records its acceptance waits for it
/// (`service::acceptance_recorded`, at most `ACCEPTANCE_WAIT`), then is a 503 past that.
pub(in crate::http) async fn replicating_peer(
    inst: &Inst,
    req: &HttpRequest,
    id: &SharingId,
    verb: Verb,
) -> ApiResult<(Sharing, MemberIndex)> {
    let index = peer(inst, req, id, verb).await?;
    let s = if index.is_owner() {
        // The owner may call before this recipient has recorded its acceptance.
        service::acceptance_recorded(&inst.0, id).await?
    } else {
        sharing::load(inst.0.store.as_ref(), id).await?
    };
    let s = s.ok_or_else(|| ApiError::NotFound("no such sharing".into()))?;
    let ready = if s.owner {
        s.member(index).is_some_and(|m| m.status == MemberStatus::Ready)
    } else {
        index.is_owner() && s.active
    };
    if index.is_owner() && s.accepting_here() {
        // The owner's token is valid, so this recipient is accepting (see
        // `Sharing::accepting_here`), and still after `ACCEPTANCE_WAIT`: a transient failure
        // for the owner's replicator.
        return Err(ApiError::NotReadyYet("this instance is still recording its acceptance of this sharing".into()));
    }
    if !ready || !s.active {
        return Err(ApiError::Forbidden("this member is not replicating this sharing".into()));
    }
    Ok((s, index))
}

/// `POST /sharings/:id/_revs_diff` — `{"doctype/id": [revs]}` → what this instance lacks; at
/// most `max_bulk_docs_count` documents of at most `revs_limit` revisions (413 beyond). A
/// question that writes nothing: a member that may only read may ask it too, so that its
/// replicator learns which of its changes are its own (refused by `_bulk_docs`) and which
/// the owner has already (what it received).
pub(super) async fn replication_revs_diff(
    inst: Inst,
    caller: ReplicatingPeer,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let (s, from) = (caller.sharing, caller.index);
    let limits = Limits::of(&req);
    let bytes = read_body(&req, payload, limits.request).await?;
    limits.revs_diff(&bytes)?;
    let body = parse_json(&bytes)?;
    let out = crate::sharing::receive::revs_diff(&inst.0, &s, from, &body).await?;
    Ok(HttpResponse::Ok().json(out))
}

/// `POST /sharings/:id/_bulk_docs` — `{"doctype": [docs with _revisions]}`, applied with
/// `new_edits=false` semantics; answers the refused documents (`[]` when all applied). Within
/// the limits of `/data`'s `_bulk_docs` (413 `max_bulk_docs_count_exceeded` or
/// `document_too_large` for the whole request: the sender splits its batch, see
/// `sync::replication`).
pub(super) async fn replication_bulk_docs(
    inst: Inst,
    caller: ReplicatingPeer,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let started = std::time::Instant::now();
    // A member that may only read is let in, and each of its documents judged: the echo of a
    // removal this instance made is moot, anything else refused with `READ_ONLY_REFUSAL`
    // (shown by the member as refused, never as a failure; see `sharing::receive::bulk_docs`).
    let (id, s, from) = (caller.id, caller.sharing, caller.index);
    let may_write = match peer(&inst, &req, &id, Verb::Post).await {
        Ok(_) => true,
        Err(ApiError::Forbidden(_)) => false,
        Err(e) => return Err(e),
    };
    // Kept as text: documents are parsed as written (see `store::body`).
    let limits = Limits::of(&req);
    let body = read_body(&req, payload, limits.request).await?;
    let svc = state_of(&req)?;
    let (cx, registry, sync) = (svc.sharing.clone(), svc.files.clone(), svc.sync.clone());
    let (inst_, s_, id_) = (inst.0.clone(), s.clone(), id.clone());
    let applied = svc
        .writes
        .to_completion(async move {
            let request = BulkDocs::from_members(limits.peer_bulk_docs(&body)?).map_err(ApiError::BadRequest)?;
            // Received documents must land in this sharing's feed (to be relayed, and recognised
            // as in the sharing later): the store must know its rules before applying them.
            cx.tracking.ensure(&inst_, &id_).await?;
            let files = crate::sharing::receive::files_for_batch(&registry, &inst_, &request).await?;
            let files = files.as_deref().map(|f| crate::sharing::receive::FilesHere {
                files: f,
                keep_unnamed: service::edits_come_back(&cx, &inst_, &s_),
            });
            let applied = crate::sharing::receive::bulk_docs(&inst_, files, &s_, from, may_write, request).await?;
            let key = crate::sync::manager::PeerKey {
                domain: inst_.domain.to_string(),
                sharing: id_.to_string(),
                member: from,
            };
            sync.note_received_refusals(&key, &applied.refused);
            if applied.revoke {
                service::end(&cx, &inst_, &id_).await?;
            }
            Ok::<_, ApiError>(applied)
        })
        .await?;
    tracing::info!(instance = %inst.0.domain, sharing = %id, member = from.get(), accepted = applied.accepted,
        refused = applied.refused.len(), us = started.elapsed().as_micros() as u64, "received documents");
    svc.sync.wake();
    Ok(HttpResponse::Ok().json(applied.refused))
}
