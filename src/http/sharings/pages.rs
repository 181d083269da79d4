//! Browser pages, authorised by the person's session: the discovery page (where a recipient
//! gives their instance's address) and the acceptance page (`/auth/authorize/sharing`).

use super::*;
use crate::http::callers::PageSession;
use crate::http::permissions::{code_failed, preview_state, reserve_code_attempt};
use crate::instance::Instance;
use crate::sharing::invitations;

#[derive(Deserialize)]
pub(super) struct StateQuery {
    state: Option<String>,
    invitation: Option<String>,
}

pub(super) fn small_page(status: StatusCode, title: &str, text: &str) -> HttpResponse {
    page(status, title, &format!("<h1>{}</h1><p id=\"message\">{}</p>", esc(title), esc(text)))
}

pub(super) fn error_page(e: ApiError) -> HttpResponse {
    use actix_web::ResponseError;
    let status = e.status_code();
    if status.is_server_error() {
        // Log the cause as the JSON path would.
        let _ = e.error_response();
    }
    small_page(status, "Something went wrong", &e.to_string())
}

/// `GET /sharings/:id/discovery?state=` — the page where a recipient gives their instance URL.
pub(super) async fn discovery_page(inst: Inst, req: HttpRequest) -> HttpResponse {
    let result = async {
        let id = sharing_id(&req)?;
        let q: StateQuery =
            serde_urlencoded::from_str(req.query_string()).map_err(|_| ApiError::bad_request("malformed query"))?;
        let (hidden, found) = discovery_lookup(&inst.0, &req, &id, q.state, q.invitation).await?;
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
            let known = sharing.member(index).and_then(|m| m.instance.clone()).unwrap_or_default();
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
pub(super) struct DiscoveryForm {
    state: Option<String>,
    invitation: Option<String>,
    sharecode: Option<String>,
    url: String,
}

/// `POST /sharings/:id/discovery` — form post: 302 to the recipient's acceptance page; with
/// `Accept: application/json`: `{"redirect": ...}`.
pub(super) async fn discovery_post(inst: Inst, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let wants_json =
        req.headers().get(header::ACCEPT).and_then(|a| a.to_str().ok()).is_some_and(|a| a.contains("application/json"));
    let result = async {
        let id = sharing_id(&req)?;
        let body = read_body(&req, payload, ANONYMOUS_BODY_BYTES).await?;
        let form: DiscoveryForm =
            serde_urlencoded::from_bytes(&body).map_err(|_| ApiError::bad_request("the form needs state and url"))?;
        let key = (form.state, form.invitation, form.sharecode);
        discover(&inst.0, &req, &id, key, &form.url).await
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
pub(super) struct AuthorizeQuery {
    sharing_id: String,
    state: String,
}

pub(super) fn csrf_token(inst: &crate::instance::Instance, req: &HttpRequest) -> Option<String> {
    let cookie = req.cookie(SESSION_COOKIE)?;
    Some(inst.derive_secret("csrf", &[cookie.value()]))
}

pub(super) fn wants_json(req: &HttpRequest) -> bool {
    req.headers().get(header::ACCEPT).and_then(|a| a.to_str().ok()).is_some_and(|a| a.contains("application/json"))
}

/// `GET /auth/authorize/sharing?sharing_id=&state=` — the recipient's owner sees what is
/// shared, by whom (name and instance address) and with which access, and accepts or refuses
/// (logged in; otherwise sent to the login page and back). The form carries the digest of what
/// it shows (see `sharing::request`). With `Accept: application/json`:
/// `{"data": <the sharing request>, "meta": {"digest", "csrf_token"}}`.
pub(super) async fn authorize_page(inst: Inst, session: Option<PageSession>, req: HttpRequest) -> HttpResponse {
    let json = wants_json(&req);
    if session.is_none() {
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
    let my_index = s
        .members
        .iter()
        .position(|m| m.instance.as_deref() == Some(me.as_str()) && m.status != MemberStatus::Owner)
        .map(MemberIndex);
    let digest = crate::sharing::request::digest(&s, my_index.unwrap_or(MemberIndex::OWNER));
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
pub(super) struct AuthorizeForm {
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
pub(super) async fn authorize_post(
    inst: Inst,
    session: Option<PageSession>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let json = wants_json(&req);
    let result = async {
        if session.is_none() {
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
                let (state, digest) = (form.state.clone(), digest.to_owned());
                let s = svc
                    .sharing_write(&inst.0, |cx, inst| async move {
                        service::accept(&cx, &inst, &id, &state, &digest).await
                    })
                    .await?;
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

/// What the discovery page found for its query: the hidden field to carry (none when the
/// person is known from the preview cookie) and what to show.
async fn discovery_lookup(
    inst: &Instance,
    req: &HttpRequest,
    id: &SharingId,
    state: Option<String>,
    invitation: Option<String>,
) -> ApiResult<(Option<(&'static str, String)>, Discovery)> {
    if let Some(state) = state {
        let found = service::discovery_state(inst, id, &state).await?;
        return Ok((Some(("state", state)), found));
    }
    if let Some(code) = invitation {
        let attempt = reserve_code_attempt(inst, req)?;
        let s = match invitations::discovery_view(inst, id, &code).await {
            Ok(s) => {
                attempt.succeeded();
                s
            }
            Err(e) => {
                code_failed(inst, attempt);
                return Err(e.into());
            }
        };
        // No member yet: the index past the last one shows an empty address field.
        let index = MemberIndex(s.members.len());
        return Ok((Some(("invitation", code)), Discovery::Ask { sharing: Box::new(s), index }));
    }
    let state = preview_state(inst, req, id, None).await?;
    Ok((None, service::discovery_state(inst, id, &state).await?))
}

/// Whether a form post comes from a page of this instance (browsers send `Origin` on POST).
fn same_origin(req: &HttpRequest) -> bool {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    match req.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        None => true,
        Some(origin) => url::Url::parse(origin).ok().is_some_and(|u| {
            let h = u.host_str().unwrap_or_default();
            let with_port = u.port().map_or_else(|| h.to_owned(), |p| format!("{h}:{p}"));
            with_port.eq_ignore_ascii_case(host)
        }),
    }
}

/// `POST /sharings/:id/discovery`: a personal invitation (`state`), an invitation link
/// (`invitation`: a new member takes a seat), or a preview (`sharecode`, or the preview page's
/// cookie from a same-origin form). Answers where to send the browser.
async fn discover(
    inst: &Instance,
    req: &HttpRequest,
    id: &SharingId,
    form: (Option<String>, Option<String>, Option<String>),
    url: &str,
) -> ApiResult<String> {
    let svc = state_of(req)?;
    let (state, invitation, sharecode) = form;
    if let Some(state) = state {
        return Ok(service::discover(&svc.sharing, inst, id, &state, url).await?);
    }
    if let Some(code) = invitation {
        let attempt = reserve_code_attempt(inst, req)?;
        return match invitations::discover(&svc.sharing, inst, id, &code, url).await {
            Err(SharingError::Forbidden(r)) => {
                code_failed(inst, attempt);
                Err(ApiError::Forbidden(r))
            }
            other => {
                attempt.cancel();
                Ok(other?)
            }
        };
    }
    if sharecode.is_none() && !same_origin(req) {
        return Err(ApiError::Forbidden("cross-site form".into()));
    }
    let state = preview_state(inst, req, id, sharecode).await?;
    Ok(service::discover(&svc.sharing, inst, id, &state, url).await?)
}
