//! `/sharings/...` routes (the owner's and the recipients' sides of the Cozy-to-Cozy flow),
//! the recipient's acceptance page (`/auth/authorize/sharing`) and the OAuth token refresh
//! endpoint (`/auth/access_token`). The logic lives in `crate::sharing::service`; handlers parse,
//! authorise and shape answers.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::limits::Limits;
use super::login::{esc, owner_session, page, SESSION_COOKIE};
use super::state_of;
use super::{bearer, data_caller, parse_json, path, read_body, ApiError, ApiResult, Inst, Query};
use crate::auth::{oauth, PermissionSet, Verb};
use crate::sharing::service::{self, Discovery, ListQuery};
use crate::sharing::{self, MemberStatus, Sharing, SharingError, SharingId};
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
            // Refused by the SSRF guard: no connection was made, nothing failed upstream.
            SharingError::Peer(p) if p.is_policy_refusal() => {
                ApiError::BadRequest(format!("this address cannot be used: {p}; no connection was made"))
            }
            SharingError::Peer(p) => ApiError::BadGateway(p.to_string()),
            SharingError::Store(s) => s.into(),
        }
    }
}

fn sharing_id(req: &HttpRequest) -> ApiResult<SharingId> {
    SharingId::parse(&path::param(req, "id")?).map_err(ApiError::BadRequest)
}

fn member_index(req: &HttpRequest) -> ApiResult<usize> {
    path::param(req, "index")?.parse().map_err(|_| ApiError::bad_request("member index must be a number"))
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
fn may_read(perms: &PermissionSet, s: &Sharing) -> bool {
    let sharings_dt = Doctype::parse("io.cozy.sharings").ok();
    sharings_dt.is_some_and(|d| perms.allows(&d, Verb::Get, Some(s.id())))
        || s.rules.iter().any(|r| {
            Doctype::parse(&r.doctype).is_ok_and(|d| perms.allows(&d, Verb::Get, r.values.first().map(String::as_str)))
        })
}

pub(super) async fn load_managed(inst: &Inst, req: &HttpRequest, id: &SharingId) -> ApiResult<Sharing> {
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
pub(super) async fn peer(inst: &Inst, req: &HttpRequest, id: &SharingId, verb: Verb) -> ApiResult<usize> {
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

/// `POST /sharings/` — creates a sharing (JSON:API `io.cozy.sharings`); 201 with the sharing.
async fn create(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let (_, perms) = data_caller(&inst.0, &req)?;
    let body = json_body(&req, payload).await?;
    let s = service::create(&state_of(&req)?.sharing, &inst.0, &perms, &body).await?;
    Ok(jsonapi(StatusCode::CREATED, doc(&s)))
}

/// `GET /sharings/?direction=incoming|outgoing&status=&doctype=&page[cursor]=&page[limit]=`.
async fn list(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let (_, perms) = data_caller(&inst.0, &req)?;
    let q = Query::of(&req)?;
    let outgoing = match q.get("direction") {
        None => None,
        Some("outgoing") => Some(true),
        Some("incoming") => Some(false),
        Some(_) => return Err(ApiError::bad_request("direction must be incoming or outgoing")),
    };
    let status = q
        .get("status")
        .map(|s| MemberStatus::parse(s).ok_or_else(|| ApiError::bad_request("unknown status")))
        .transpose()?;
    let limit = match q.get("page[limit]") {
        None => 50,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| ApiError::bad_request("page[limit] must be 1 to 1000"))?,
    };
    let query = ListQuery {
        outgoing,
        status,
        doctype: q.get("doctype").map(str::to_owned),
        cursor: q.get("page[cursor]").map(str::to_owned),
        limit,
    };
    let (items, next) = service::list_filtered(&inst.0, &query).await?;
    let data: Vec<Value> = items.iter().filter(|s| may_read(&perms, s)).map(Sharing::to_api).collect();
    let mut out = json!({"data": data, "meta": {"count": data.len()}});
    if outgoing != Some(false) {
        // The owner's link permissions and invitation links, apart from the sharings.
        let first_page = query.cursor.is_none();
        out["included"] = json!(super::invitations::included(&inst.0, &perms, &items, first_page).await?);
    }
    if let Some(cursor) = next {
        let mut url = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [("direction", q.get("direction")), ("status", q.get("status")), ("doctype", q.get("doctype"))] {
            if let Some(v) = v {
                url.append_pair(k, v);
            }
        }
        url.append_pair("page[cursor]", &cursor).append_pair("page[limit]", &limit.to_string());
        out["links"] = json!({"next": format!("/sharings/?{}", url.finish())});
    }
    Ok(jsonapi(StatusCode::OK, out))
}

/// `shared_docs` listed per page of `GET /sharings/:id` when `page[limit]` is not given.
const SHARED_DOCS_PAGE: usize = 100;
/// The largest `page[limit]` of `GET /sharings/:id`.
const SHARED_DOCS_MAX_PAGE: usize = 1000;

/// `GET /sharings/:id?page[limit]=&page[cursor]=` — the sharing, for the owner's apps, or a
/// member's instance (with its token), with `relationships.shared_docs` as in Cozy: the
/// documents in the sharing on this instance, `{"id", "type"}` ordered by doctype then id,
/// ids as this instance knows them (a member's instance gets them in its own id space).
/// Paginated: `page[limit]` documents (default 100, 1 to 1000); when more follow,
/// `shared_docs.links.next` is the URL of the next page (`page[cursor]` is opaque).
async fn get_sharing(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let id = sharing_id(&req)?;
    let token = bearer(&req).ok_or(ApiError::Unauthorized("a bearer token is required"))?;
    let s = sharing::load(inst.0.store.as_ref(), &id).await?;
    let (allowed, member) = match data_caller(&inst.0, &req) {
        Ok((_, perms)) => (s.as_ref().is_some_and(|s| may_read(&perms, s)), None),
        Err(_) => {
            let (client, perms) = service::peer_member(&inst.0, &id, token).await?;
            (service::peer_may(&perms, &id, Verb::Get), Some(client.member_index))
        }
    };
    let s = match s {
        Some(s) if allowed => s,
        Some(_) => return Err(ApiError::Forbidden("the token does not cover this sharing".into())),
        None => return Err(ApiError::NotFound("no such sharing".into())),
    };
    let q = Query::of(&req)?;
    let limit = match q.get("page[limit]") {
        None => SHARED_DOCS_PAGE,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=SHARED_DOCS_MAX_PAGE).contains(l))
            .ok_or_else(|| ApiError::bad_request("page[limit] must be 1 to 1000"))?,
    };
    // Ids in the caller's space: ours for apps, the member's for its instance.
    let ids = crate::sharing::xor::IdMap::for_member(&s, member.unwrap_or(0));
    let after = q
        .get("page[cursor]")
        .map(|c| {
            c.split_once('/')
                .and_then(|(t, i)| Some((Doctype::parse(t).ok()?, DocId::parse(&ids.convert(i)).ok()?)))
                .ok_or_else(|| ApiError::bad_request("invalid page[cursor]"))
        })
        .transpose()?;
    let mut docs = inst.0.store.shared_docs(s.id(), after, limit + 1).await?;
    let more = docs.len() > limit;
    docs.truncate(limit);
    let data: Vec<Value> =
        docs.iter().map(|(t, i)| json!({"type": t.as_str(), "id": ids.convert(i.as_str())})).collect();
    let mut shared_docs = json!({"data": data});
    if let Some((t, i)) = docs.last().filter(|_| more) {
        let cursor = format!("{t}/{}", ids.convert(i.as_str()));
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("page[cursor]", &cursor)
            .append_pair("page[limit]", &limit.to_string())
            .finish();
        shared_docs["links"] = json!({"next": format!("/sharings/{}?{query}", s.id())});
    }
    let mut out = doc(&s);
    out["data"]["relationships"] = json!({"shared_docs": shared_docs});
    Ok(jsonapi(StatusCode::OK, out))
}

/// `PUT /sharings/:id` — on a recipient, from the owner's instance: the notice of a sharing
/// request (at most 64 KiB); the request itself is fetched back from the owner (see
/// `sharing::request`). Answers the stored request.
async fn put_request(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let id = sharing_id(&req)?;
    let body = anonymous_json_body(&req, payload).await?;
    let s = service::receive_request(&state_of(&req)?.sharing, &inst.0, &id, &body).await?;
    Ok(jsonapi(StatusCode::OK, doc(&s)))
}

/// `GET /sharings/:id/request` — on the owner, from a recipient's instance with the request
/// token of its notice (`Authorization: Bearer`): the sharing request for that member.
async fn request_fetch(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let id = sharing_id(&req)?;
    let token = bearer(&req).ok_or(ApiError::Unauthorized("the request token is required"))?;
    let doc = crate::sharing::request::serve(&inst.0, &id, token).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/vnd.api+json")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(doc.to_string()))
}

/// `DELETE /sharings/:id` — on a recipient, from the owner: this instance was revoked.
async fn revoked_notification(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let id = sharing_id(&req)?;
    let index = peer(&inst, &req, &id, Verb::Get).await?;
    if index != 0 {
        return Err(ApiError::Forbidden("only the owner's instance may send this".into()));
    }
    service::revoked_by_owner(&state_of(&req)?.sharing, &inst.0, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `DELETE /sharings/:id/answer` — on the owner, from a member's instance: it left.
async fn left_notification(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let id = sharing_id(&req)?;
    let index = peer(&inst, &req, &id, Verb::Get).await?;
    if index == 0 {
        return Err(ApiError::Forbidden("only a member's instance may send this".into()));
    }
    service::member_left(&state_of(&req)?.sharing, &inst.0, &id, index).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /sharings/:id/credentials` — on a recipient, from the owner: new credentials.
async fn credentials_notification(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let id = sharing_id(&req)?;
    let index = peer(&inst, &req, &id, Verb::Get).await?;
    if index != 0 {
        return Err(ApiError::Forbidden("only the owner's instance may send this".into()));
    }
    let body = json_body(&req, payload).await?;
    service::receive_credentials(&inst.0, &id, &body).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /sharings/:id/answer` — on the owner, from a recipient's instance: the credential
/// exchange (or a refusal), authenticated by the member's `state` (at most 64 KiB).
async fn answer(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let id = sharing_id(&req)?;
    let body = anonymous_json_body(&req, payload).await?;
    let out = service::process_answer(&state_of(&req)?.sharing, &inst.0, &id, &body).await?;
    Ok(jsonapi(StatusCode::OK, out))
}

/// `POST /sharings/:id/recipients` — more recipients. On the owner they are added; on a
/// recipient of an `open_sharing` they are forwarded to the owner's delegated route (see
/// `service::forward_recipients`) and the answer carries their invitation links in
/// `meta.invitations` (`[{"index", "invitation"}]`); on a recipient of a sharing that is not
/// open, 403. On the owner, `meta.recipients` says per recipient given (`recipients`, then
/// `read_only_recipients`) `{"index", "outcome"}`: `added`, `invited_again` (already invited
/// and not answered: the same invitation is sent again) or `already_member` (ready: nothing
/// changes); a person is never made a member twice.
async fn add_recipients(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let id = sharing_id(&req)?;
    let s = load_managed(&inst, &req, &id).await?;
    let body = json_body(&req, payload).await?;
    let cx = &state_of(&req)?.sharing;
    if !s.owner {
        let (s, links) = service::forward_recipients(cx, &inst.0, &id, &body).await?;
        let mut out = doc(&s);
        let links: Vec<Value> = links.into_iter().map(|(i, l)| json!({"index": i, "invitation": l})).collect();
        out["meta"] = json!({"invitations": links});
        return Ok(jsonapi(StatusCode::OK, out));
    }
    let (s, outcomes) = service::add_recipients(cx, &inst.0, &id, &body).await?;
    let mut out = doc(&s);
    let outcomes: Vec<Value> = outcomes.into_iter().map(|(i, o)| json!({"index": i, "outcome": o.as_str()})).collect();
    out["meta"] = json!({"recipients": outcomes});
    Ok(jsonapi(StatusCode::OK, out))
}

/// `PUT /sharings/:id/recipients` — on a recipient, from the owner's instance: the member list
/// (see `service::receive_members`).
async fn members_notification(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let id = sharing_id(&req)?;
    let index = peer(&inst, &req, &id, Verb::Get).await?;
    if index != 0 {
        return Err(ApiError::Forbidden("only the owner's instance may send this".into()));
    }
    let body = json_body(&req, payload).await?;
    service::receive_members(&state_of(&req)?.sharing, &inst.0, &id, &body).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /sharings/:id/recipients/delegated` — a ready member of an open sharing adds
/// recipients through the owner; answers their invitation links.
async fn add_delegated(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let id = sharing_id(&req)?;
    let index = peer(&inst, &req, &id, Verb::Get).await?;
    let body = json_body(&req, payload).await?;
    let links = service::add_delegated(&state_of(&req)?.sharing, &inst.0, &id, index, &body).await?;
    let data: Vec<Value> = links.into_iter().map(|(i, l)| json!({"index": i, "invitation": l})).collect();
    Ok(jsonapi(StatusCode::OK, json!({"data": data})))
}

/// `DELETE /sharings/:id/recipients` — the owner revokes everyone.
async fn revoke_all(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let id = sharing_id(&req)?;
    load_managed(&inst, &req, &id).await?;
    let s = service::revoke(&state_of(&req)?.sharing, &inst.0, &id, None).await?;
    Ok(jsonapi(StatusCode::OK, doc(&s)))
}

/// `DELETE /sharings/:id/recipients/:index` — the owner revokes one member.
async fn revoke_one(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let id = sharing_id(&req)?;
    let index = member_index(&req)?;
    load_managed(&inst, &req, &id).await?;
    let s = service::revoke(&state_of(&req)?.sharing, &inst.0, &id, Some(index)).await?;
    Ok(jsonapi(StatusCode::OK, doc(&s)))
}

/// `DELETE /sharings/:id/recipients/self` — a recipient leaves.
async fn leave(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let id = sharing_id(&req)?;
    load_managed(&inst, &req, &id).await?;
    let s = service::leave(&state_of(&req)?.sharing, &inst.0, &id).await?;
    Ok(jsonapi(StatusCode::OK, doc(&s)))
}

async fn read_only(inst: Inst, req: HttpRequest, value: bool) -> ApiResult<HttpResponse> {
    let id = sharing_id(&req)?;
    let index = member_index(&req)?;
    load_managed(&inst, &req, &id).await?;
    let s = service::set_read_only(&state_of(&req)?.sharing, &inst.0, &id, index, value).await?;
    Ok(jsonapi(StatusCode::OK, doc(&s)))
}

/// `POST /sharings/:id/recipients/:index/readonly` — the member becomes read-only.
async fn add_read_only(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    read_only(inst, req, true).await
}

/// `DELETE /sharings/:id/recipients/:index/readonly` — the member may write again.
async fn remove_read_only(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    read_only(inst, req, false).await
}

#[derive(Deserialize)]
struct StateQuery {
    state: Option<String>,
    invitation: Option<String>,
}

fn small_page(status: StatusCode, title: &str, text: &str) -> HttpResponse {
    page(status, title, &format!("<h1>{}</h1><p id=\"message\">{}</p>", esc(title), esc(text)))
}

fn error_page(e: ApiError) -> HttpResponse {
    use actix_web::ResponseError;
    let status = e.status_code();
    if status.is_server_error() {
        // Log the cause as the JSON path would.
        let _ = e.error_response();
    }
    small_page(status, "Something went wrong", &e.to_string())
}

/// `GET /sharings/:id/discovery?state=` — the page where a recipient gives their instance URL.
async fn discovery_page(inst: Inst, req: HttpRequest) -> HttpResponse {
    let result = async {
        let id = sharing_id(&req)?;
        let q: StateQuery =
            serde_urlencoded::from_str(req.query_string()).map_err(|_| ApiError::bad_request("malformed query"))?;
        let (hidden, found) = super::invitations::discovery_lookup(&inst.0, &req, &id, q.state, q.invitation).await?;
        Ok::<_, ApiError>((id, hidden, found))
    }
    .await;
    match result {
        Err(e) => error_page(e),
        Ok((_, _, Discovery::Done { status })) => {
            let text = match status {
                MemberStatus::Ready => "This invitation was already accepted.",
                MemberStatus::Refused => "This invitation was refused.",
                _ => "This invitation was revoked.",
            };
            small_page(StatusCode::OK, "Invitation", text)
        }
        Ok((id, hidden, Discovery::Ask { sharing, index })) => {
            let owner = sharing.members[0].public_name.clone().unwrap_or_default();
            let known = sharing.members.get(index).and_then(|m| m.instance.clone()).unwrap_or_default();
            let hidden = hidden
                .map(|(name, value)| format!("<input type=\"hidden\" name=\"{name}\" value=\"{}\">", esc(&value)))
                .unwrap_or_default();
            let body = format!(
                "<h1>{owner} shares “{desc}” with you</h1>\
                 <form method=\"post\" action=\"/sharings/{id}/discovery\">\
                 {hidden}\
                 <label>The address of your instance <input type=\"text\" name=\"url\" id=\"url\" value=\"{known}\" \
                 placeholder=\"https://you.example.net\" required></label> \
                 <button type=\"submit\" id=\"discover\">Continue</button></form>",
                owner = esc(&owner),
                desc = esc(&sharing.description),
                id = esc(id.as_str()),
                known = esc(&known),
            );
            page(StatusCode::OK, "Invitation", &body)
        }
    }
}

#[derive(Deserialize)]
struct DiscoveryForm {
    state: Option<String>,
    invitation: Option<String>,
    sharecode: Option<String>,
    url: String,
}

/// `POST /sharings/:id/discovery` — form post: 302 to the recipient's acceptance page; with
/// `Accept: application/json`: `{"redirect": ...}`.
async fn discovery_post(inst: Inst, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let wants_json =
        req.headers().get(header::ACCEPT).and_then(|a| a.to_str().ok()).is_some_and(|a| a.contains("application/json"));
    let result = async {
        let id = sharing_id(&req)?;
        let body = read_body(&req, payload, ANONYMOUS_BODY_BYTES).await?;
        let form: DiscoveryForm =
            serde_urlencoded::from_bytes(&body).map_err(|_| ApiError::bad_request("the form needs state and url"))?;
        let key = (form.state, form.invitation, form.sharecode);
        super::invitations::discover(&inst.0, &req, &id, key, &form.url).await
    }
    .await;
    match (result, wants_json) {
        (Ok(redirect), true) => {
            HttpResponse::Ok().insert_header(("Referrer-Policy", "no-referrer")).json(json!({"redirect": redirect}))
        }
        (Ok(redirect), false) => HttpResponse::Found()
            .insert_header((header::LOCATION, redirect))
            .insert_header(("Referrer-Policy", "no-referrer"))
            .finish(),
        (Err(e), true) => actix_web::ResponseError::error_response(&e),
        (Err(e), false) => error_page(e),
    }
}

#[derive(Deserialize)]
struct AuthorizeQuery {
    sharing_id: String,
    state: String,
}

fn csrf_token(inst: &crate::instance::Instance, req: &HttpRequest) -> Option<String> {
    let cookie = req.cookie(SESSION_COOKIE)?;
    Some(inst.derive_secret("csrf", &[cookie.value()]))
}

fn wants_json(req: &HttpRequest) -> bool {
    req.headers().get(header::ACCEPT).and_then(|a| a.to_str().ok()).is_some_and(|a| a.contains("application/json"))
}

/// `GET /auth/authorize/sharing?sharing_id=&state=` — the recipient's owner sees what is
/// shared, by whom (name and instance address) and with which access, and accepts or refuses
/// (logged in; otherwise sent to the login page and back). The form carries the digest of what
/// it shows (see `sharing::request`). With `Accept: application/json`:
/// `{"data": <the sharing request>, "meta": {"digest", "csrf_token"}}`.
async fn authorize_page(inst: Inst, req: HttpRequest) -> HttpResponse {
    let json = wants_json(&req);
    if owner_session(&inst.0, &req).is_none() {
        if json {
            return actix_web::ResponseError::error_response(&ApiError::Unauthorized("log in first"));
        }
        let back = format!("/auth/authorize/sharing?{}", req.query_string());
        let login = format!("/auth/login?{}", serde_urlencoded::to_string([("redirect", back)]).unwrap_or_default());
        return HttpResponse::Found()
            .insert_header((header::LOCATION, login))
            .insert_header(("Referrer-Policy", "no-referrer"))
            .finish();
    }
    let result = async {
        let q: AuthorizeQuery = serde_urlencoded::from_str(req.query_string())
            .map_err(|_| ApiError::bad_request("sharing_id and state are required"))?;
        let id = SharingId::parse(&q.sharing_id).map_err(ApiError::BadRequest)?;
        let s = sharing::load(inst.0.store.as_ref(), &id)
            .await?
            .filter(|s| !s.owner)
            .ok_or_else(|| ApiError::NotFound("no such sharing request".into()))?;
        Ok::<_, ApiError>((q, s))
    }
    .await;
    let (q, s) = match result {
        Ok(v) => v,
        Err(e) if json => return actix_web::ResponseError::error_response(&e),
        Err(e) => return error_page(e),
    };
    let svc = match state_of(&req) {
        Ok(svc) => svc,
        Err(e) => return error_page(e),
    };
    let me = svc.sharing.federation.instance_url(inst.0.domain.as_str());
    let closed = if s.active {
        Some("You already accepted this sharing.")
    } else if crate::sharing::request::answered(&s, &me) {
        Some("This sharing request was answered, or revoked.")
    } else {
        None
    };
    if let Some(text) = closed {
        if json {
            return actix_web::ResponseError::error_response(&ApiError::ConflictWith(text.into()));
        }
        return small_page(StatusCode::OK, "Sharing", text);
    }
    let my_index =
        s.members.iter().position(|m| m.instance.as_deref() == Some(me.as_str()) && m.status != MemberStatus::Owner);
    let digest = crate::sharing::request::digest(&s, my_index.unwrap_or(0));
    let csrf = csrf_token(&inst.0, &req).unwrap_or_default();
    if json {
        return HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(json!({"data": s.to_api(), "meta": {"digest": digest, "csrf_token": csrf}}));
    }
    let read_only = my_index.is_some_and(|i| s.members[i].read_only) || !s.has_sync_rule();
    let owner = &s.members[0];
    // The name is the owner's to choose; the address is the one the request was fetched from.
    let owner_address = owner.instance.clone().unwrap_or_default();
    let owner_name = owner.public_name.clone().unwrap_or_else(|| owner_address.clone());
    let rules: String = s
        .rules
        .iter()
        .map(|r| {
            let scope = match &r.selector {
                Some(field) => format!("documents whose {} is {}", esc(field), esc(&r.values.join(", "))),
                None => format!("{} document(s)", r.values.len()),
            };
            format!("<li>{} <small>({}, {scope})</small></li>", esc(&r.title), esc(&r.doctype))
        })
        .collect();
    let body = format!(
        "<h1>{owner} wants to share with you</h1><p id=\"owner\">From the instance <code>{address}</code></p>\
         <p id=\"description\">{desc}</p><ul id=\"rules\">{rules}</ul>\
         <p id=\"access\">{access}</p>\
         <form method=\"post\" action=\"/auth/authorize/sharing\">\
         <input type=\"hidden\" name=\"sharing_id\" value=\"{id}\"><input type=\"hidden\" name=\"state\" value=\"{state}\">\
         <input type=\"hidden\" name=\"digest\" value=\"{digest}\">\
         <input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\
         <button type=\"submit\" name=\"action\" value=\"accept\" id=\"accept\">Accept</button> \
         <button type=\"submit\" name=\"action\" value=\"refuse\" id=\"refuse\">Refuse</button></form>",
        owner = esc(&owner_name),
        address = esc(&owner_address),
        desc = esc(&s.description),
        access = if read_only { "You will receive the documents, read-only." } else { "You will be able to edit the documents too." },
        id = esc(s.id()),
        state = esc(&q.state),
    );
    page(StatusCode::OK, "Accept a sharing", &body)
}

#[derive(Deserialize)]
struct AuthorizeForm {
    sharing_id: String,
    state: String,
    csrf_token: String,
    action: String,
    /// The digest of the request the page showed (required to accept).
    digest: Option<String>,
}

/// `POST /auth/authorize/sharing` — Accept or Refuse (session and CSRF token required; to
/// accept, the `digest` the page showed: 409 when the request changed since). With `Accept:
/// application/json` the answer is the sharing (JSON:API) or a JSON error.
async fn authorize_post(inst: Inst, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let json = wants_json(&req);
    let result = async {
        if owner_session(&inst.0, &req).is_none() {
            return Err(ApiError::Unauthorized("log in first"));
        }
        let body = read_body(&req, payload, ANONYMOUS_BODY_BYTES).await?;
        let form: AuthorizeForm =
            serde_urlencoded::from_bytes(&body).map_err(|_| ApiError::bad_request("incomplete form"))?;
        let expected = csrf_token(&inst.0, &req).unwrap_or_default();
        if !crate::instance::Instance::secrets_match(&form.csrf_token, &expected) {
            return Err(ApiError::Forbidden("invalid CSRF token".into()));
        }
        let id = SharingId::parse(&form.sharing_id).map_err(ApiError::BadRequest)?;
        let svc = state_of(&req)?;
        match form.action.as_str() {
            "accept" => {
                let digest =
                    form.digest.as_deref().ok_or_else(|| ApiError::bad_request("the form needs the digest"))?;
                let s = service::accept(&svc.sharing, &inst.0, &id, &form.state, digest).await?;
                Ok(("You accepted the sharing. The documents will appear on your instance.", s))
            }
            "refuse" => {
                service::refuse(&svc.sharing, &inst.0, &id, &form.state).await?;
                let s = sharing::load(inst.0.store.as_ref(), &id)
                    .await?
                    .ok_or_else(|| ApiError::NotFound("no such sharing request".into()))?;
                Ok(("You refused the sharing.", s))
            }
            _ => Err(ApiError::bad_request("action must be accept or refuse")),
        }
    }
    .await;
    match (result, json) {
        (Ok((_, s)), true) => jsonapi(StatusCode::OK, doc(&s)),
        (Ok((text, _)), false) => small_page(StatusCode::OK, "Sharing", text),
        (Err(e), true) => actix_web::ResponseError::error_response(&e),
        (Err(e), false) => error_page(e),
    }
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    refresh_token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

fn oauth_error(status: StatusCode, error: &str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({"error": error, "reason": error}))
}

/// `POST /auth/access_token` — OAuth 2 token endpoint for peer instances; only
/// `grant_type=refresh_token` (RFC 6749 section 6), client credentials in the body or as HTTP
/// Basic authentication.
async fn access_token(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
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

fn basic_auth(req: &HttpRequest) -> Option<(String, String)> {
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
/// ready member (any member on the owner, the owner on a recipient).
pub(super) async fn replicating_peer(
    inst: &Inst,
    req: &HttpRequest,
    id: &SharingId,
    verb: Verb,
) -> ApiResult<(Sharing, usize)> {
    let index = peer(inst, req, id, verb).await?;
    let s =
        sharing::load(inst.0.store.as_ref(), id).await?.ok_or_else(|| ApiError::NotFound("no such sharing".into()))?;
    let ready = if s.owner {
        s.members.get(index).is_some_and(|m| m.status == MemberStatus::Ready)
    } else {
        index == 0 && s.active
    };
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
async fn replication_revs_diff(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let id = sharing_id(&req)?;
    let (s, from) = replicating_peer(&inst, &req, &id, Verb::Get).await?;
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
async fn replication_bulk_docs(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let id = sharing_id(&req)?;
    let (s, from) = replicating_peer(&inst, &req, &id, Verb::Post).await?;
    // Kept as text: documents are parsed as written (see `store::body`).
    let limits = Limits::of(&req);
    let body = read_body(&req, payload, limits.request).await?;
    limits.peer_bulk_docs(&body)?;
    let svc = state_of(&req)?;
    // Received documents must land in this sharing's feed (to be relayed, and recognised as
    // in the sharing later): the store must know its rules before applying them.
    svc.sharing.tracking.ensure(&inst.0, s.id()).await?;
    let files = svc.files.of(&inst.0).await.ok();
    let applied = crate::sharing::receive::bulk_docs(&inst.0, files.as_deref(), &s, from, &body).await?;
    tracing::info!(instance = %inst.0.domain, sharing = %id, member = from, accepted = applied.accepted,
        refused = applied.refused.len(), "received documents");
    if applied.revoke {
        let outcome = if s.owner {
            service::revoke(&svc.sharing, &inst.0, &id, None).await
        } else {
            service::leave(&svc.sharing, &inst.0, &id).await
        };
        outcome?;
    }
    svc.sync.wake();
    Ok(HttpResponse::Ok().json(applied.refused))
}

/// `GET /sharings/:id/status` — each member's status and, for the peers this instance
/// replicates to, `replication`: the state (`crate::sync::manager::LinkStatus`: `health` one of
/// `idle|healthy|degraded|retrying|down`, last error and success, progress, CouchDB's counters
/// `last_seq`, `docs_written`, `doc_write_failures`, `missing_revisions_found`, the documents
/// the member refused and has not written since, `refused_docs`, and `last_refusal` with its
/// reason) and `pending`, the changes past `last_seq`. For a sharing of files, each such member
/// also has `content` (`crate::sync::content::ContentStatus`: `files_pending`, `bytes_pending`
/// still to deliver to it, `files_sent`, `bytes_sent`, its content checkpoint `last_seq`,
/// `running`, `last_error`), and the sharing `content_missing` (`files`, `bytes`): the files of
/// the sharing whose content has not arrived on this instance yet.
async fn status(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let id = sharing_id(&req)?;
    let (_, perms) = data_caller(&inst.0, &req)?;
    let s =
        sharing::load(inst.0.store.as_ref(), &id).await?.ok_or_else(|| ApiError::NotFound("no such sharing".into()))?;
    if !may_read(&perms, &s) {
        return Err(ApiError::Forbidden("the token does not cover this sharing".into()));
    }
    let svc = state_of(&req)?;
    let targets = crate::sync::manager::targets(&s);
    // Files sharings: each member's content link, and what this instance still waits for.
    let files = if s.rules.iter().any(|r| r.doctype == crate::files::DOCTYPE) {
        Some(svc.files.of(&inst.0).await?)
    } else {
        None
    };
    let mut members = Vec::new();
    for (i, m) in s.members.iter().enumerate() {
        let mut entry = json!({"index": i, "status": m.status.as_str(), "read_only": m.read_only,
            "name": m.public_name.clone().or_else(|| m.name.clone()).or_else(|| m.email.clone())});
        if targets.contains(&i) {
            let key =
                crate::sync::manager::PeerKey { domain: inst.0.domain.to_string(), sharing: id.to_string(), member: i };
            let record = crate::sync::replication::read_link(&inst.0, id.as_str(), i).await?;
            let info = inst.0.store.shared_info(id.as_str(), record.last_seq).await?;
            let link = crate::sync::manager::LinkStatus::new(svc.sync.state(&key), record);
            let mut rep = serde_json::to_value(link).unwrap_or(Value::Null);
            rep["pending"] = json!(info.pending);
            entry["replication"] = rep;
            if let Some(files) = &files {
                entry["content"] = content_status(&svc.content, &inst.0, files, &s, i).await?;
            }
        }
        members.push(entry);
    }
    let info = inst.0.store.shared_info(id.as_str(), u64::MAX).await?;
    let mut attributes = json!({"owner": s.owner, "active": s.active, "documents": info.docs,
        "last_seq": info.last_seq, "members": members});
    if let Some(files) = &files {
        let (count, bytes) =
            crate::sync::content::missing_here(&inst.0, files, id.as_str()).await.map_err(sync_error)?;
        attributes["content_missing"] = json!({"files": count, "bytes": bytes});
    }
    Ok(jsonapi(
        StatusCode::OK,
        json!({"data": {"type": "io.cozy.sharings.status", "id": id.as_str(), "attributes": attributes}}),
    ))
}

/// The `content` of a member in the status (see `sync::content::ContentStatus`).
async fn content_status(
    sender: &crate::sync::content::ContentSender,
    inst: &crate::instance::Instance,
    files: &crate::files::Files,
    s: &Sharing,
    member: usize,
) -> ApiResult<Value> {
    let status = sender.status(inst, files, s, member).await.map_err(sync_error)?;
    Ok(serde_json::to_value(status).unwrap_or(Value::Null))
}

fn sync_error(e: crate::sync::replication::SyncError) -> ApiError {
    match e {
        crate::sync::replication::SyncError::Store(s) => s.into(),
        e => ApiError::Internal(e.into()),
    }
}

/// `POST /sharings/:id/sync` — replicate now (skipping any backoff); answers 202.
async fn sync_now(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let id = sharing_id(&req)?;
    let s = load_managed(&inst, &req, &id).await?;
    state_of(&req)?.sync.sync_now(inst.0.domain.as_str(), &s);
    Ok(HttpResponse::Accepted().json(json!({"ok": true})))
}
