//! Sharing by link over HTTP: `/permissions` (create a link with its sharecodes, read, change,
//! revoke, list), `POST /auth/share-by-link/password`, the public pages under `/public/` that a
//! link opens, and [`data_permissions`], which turns the credential of a `/data` request (an
//! app or CLI token, or a sharecode) into its permission set.
//!
//! A sharecode is presented as `Authorization: Bearer <code>` (anything that is not a JWT is
//! taken for a code), or, on reads only, with the `hearth_sharecode` cookie that a public page
//! sets when opened with `?sharecode=` (the page then redirects to its URL without the code, so
//! the code leaves the address bar, history and `Referer`s). Unknown, expired and revoked
//! codes all get the same 401; failures are counted per client address and answered 429 past
//! `links.max_failures`, while valid codes never count.

use std::sync::Arc;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::callers::AppCaller;
use super::login::{esc, page};
use super::{bearer, data_caller, parse_json, path, read_body, ApiError, ApiResult, Inst, Query};
use super::{jsonapi, state_of};
use crate::auth::{self, Attempt, PermissionSet, Reach, Verb};
use crate::instance::Instance;
use crate::sharing::links::{self, Grant};
use crate::sharing::{self, service, SharingId};
use crate::store::{json as records, DocId, Doctype};

/// The cookie a public page keeps its sharecode in.
pub const SHARECODE_COOKIE: &str = "hearth_sharecode";
/// The one answer for unknown, expired and revoked codes.
const INVALID_CODE: &str = "invalid, expired or revoked sharecode";
const PASSWORD_NEEDED: &str = "this link is protected by a password: POST /auth/share-by-link/password first";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource(["/permissions", "/permissions/"]).route(web::post().to(create)))
        .route("/permissions/self", web::get().to(get_self))
        .route("/permissions/doctype/{doctype}/shared-by-link", web::get().to(shared_by_link))
        .service(
            web::resource("/permissions/{id}")
                .route(web::get().to(get_one))
                .route(web::patch().to(patch))
                .route(web::delete().to(delete)),
        )
        .route("/auth/share-by-link/password", web::post().to(password))
        .route("/public/{tail:.*}", web::get().to(public_page));
}

/// The client's address as rate limits count it: IPv6 by /64, as one host often owns a whole
/// /64. Forwarding headers are not trusted.
pub(super) fn client_address(req: &HttpRequest) -> String {
    match req.peer_addr().map(|a| a.ip()) {
        Some(std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Some(std::net::IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(|v4| v4.to_string()).unwrap_or_default(),
        Some(ip) => ip.to_string(),
        None => "unknown".into(),
    }
}

/// The rate-limit key of a client presenting codes.
fn client_key(req: &HttpRequest) -> String {
    format!("code:{}", client_address(req))
}

fn max_failures(req: &HttpRequest) -> u32 {
    state_of(req).map_or(20, |s| s.config.links.max_failures)
}

/// Reserves one code attempt of this client before the code is looked up (429 when failures
/// and attempts in flight use up its budget; then even a valid code waits): see
/// `auth::throttle` for why the reservation comes first.
pub(super) fn reserve_code_attempt<'a>(inst: &'a Instance, req: &HttpRequest) -> ApiResult<Attempt<'a>> {
    inst.login_failures.reserve_with(&client_key(req), max_failures(req)).ok_or(ApiError::TooManyRequests)
}

/// Counts a wrong code or link password against the client.
pub(super) fn code_failed(inst: &Instance, attempt: Attempt<'_>) {
    attempt.failed();
    tracing::warn!(instance = %inst.domain, "invalid code presented");
}

/// The sharecode a request presents: a bearer that is not a JWT, or (reads only) the cookie.
fn presented_code(req: &HttpRequest) -> Option<String> {
    if let Some(b) = bearer(req) {
        return (!b.contains('.')).then(|| b.to_owned());
    }
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return req.cookie(SHARECODE_COOKIE).map(|c| c.value().to_owned());
    }
    None
}

/// Resolves a presented code (429 when limited, the one 401 when invalid); the flag says
/// whether the link is unlocked (no password, or the password cookie is there).
pub(super) async fn resolve_code(inst: &Instance, req: &HttpRequest, code: &str) -> ApiResult<(Grant, bool)> {
    let attempt = reserve_code_attempt(inst, req)?;
    let Some(grant) = links::resolve(inst, code).await? else {
        code_failed(inst, attempt);
        return Err(ApiError::Unauthorized(INVALID_CODE));
    };
    attempt.succeeded();
    let unlocked = match &grant.password_hash {
        None => true,
        Some(hash) => req.cookie(&links::password_cookie_name(&grant.perm_id)).is_some_and(|c| {
            Instance::secrets_match(c.value(), &links::password_cookie_value(inst, &grant.perm_id, hash))
        }),
    };
    Ok((grant, unlocked))
}

async fn unlocked_grant(inst: &Instance, req: &HttpRequest, code: &str) -> ApiResult<Grant> {
    match resolve_code(inst, req, code).await? {
        (grant, true) => Ok(grant),
        (_, false) => Err(ApiError::Unauthorized(PASSWORD_NEEDED)),
    }
}

/// The permissions of a `/data` request: those of its app or CLI token, or exactly those of
/// its sharecode.
pub async fn data_permissions(inst: &Arc<Instance>, req: &HttpRequest) -> ApiResult<PermissionSet> {
    match presented_code(req) {
        Some(code) => Ok(unlocked_grant(inst, req, &code).await?.set),
        None => Ok(data_caller(inst, req)?.1),
    }
}

/// The permissions of a `/files` request, and whether they come from a sharecode (a link,
/// which only reads files).
pub async fn files_permissions(inst: &Arc<Instance>, req: &HttpRequest) -> ApiResult<(PermissionSet, bool)> {
    match presented_code(req) {
        Some(code) => Ok((unlocked_grant(inst, req, &code).await?.set, true)),
        None => Ok((data_caller(inst, req)?.1, false)),
    }
}

async fn json_body(req: &HttpRequest, payload: web::Payload, allow_empty: bool) -> ApiResult<Value> {
    let limit = state_of(req)?.config.max_http_request_size.min(1024 * 1024);
    let bytes = read_body(req, payload, limit).await?;
    if allow_empty && bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({"data": {"attributes": {}}}));
    }
    parse_json(&bytes)
}

/// argon2 off the async workers.
async fn hash_password(pw: String) -> ApiResult<String> {
    web::block(move || auth::hash_passphrase(&pw))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(ApiError::Internal)
}

/// `POST /permissions?codes=a,b&ttl=1h` — a `share` link on a set within the token's own
/// permissions, with one sharecode per name; the codes are in this answer only.
async fn create(inst: Inst, caller: AppCaller, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let q = Query::of(&req)?;
    let names = links::parse_code_names(q.get("codes").unwrap_or_default())?;
    let ttl = q.get("ttl").map(links::parse_ttl).transpose()?;
    let new = links::parse_new_link(&json_body(&req, payload, false).await?)?;
    let hash = match new.password.clone() {
        Some(pw) => Some(hash_password(pw).await?),
        None => None,
    };
    let (p, issued) = links::create(&inst.0, &caller.perms, new, hash, &names, ttl).await?;
    Ok(jsonapi(StatusCode::OK, json!({"data": p.to_api(Some(&issued))})))
}

/// `GET /permissions/self` — the permissions of the request's own credential: a sharecode's
/// link (never its codes; a preview adds its member as `included`), or a token's scope.
async fn get_self(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    if let Some(code) = presented_code(&req) {
        let mut view = unlocked_grant(&inst.0, &req, &code).await?.view;
        let included = view.as_object_mut().and_then(|o| o.remove("included"));
        let mut out = json!({"data": view});
        if let Some(inc) = included {
            out["included"] = inc;
        }
        return Ok(jsonapi(StatusCode::OK, out));
    }
    let (claims, perms) = data_caller(&inst.0, &req)?;
    let expires_at = time::OffsetDateTime::from_unix_timestamp(claims.exp.min(i64::MAX as u64) as i64)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok());
    Ok(jsonapi(
        StatusCode::OK,
        json!({"data": {"type": links::PERMISSIONS_DOCTYPE, "id": claims.sub, "attributes": {
            "type": claims.aud, "permissions": links::set_to_api(&perms), "expires_at": expires_at}}}),
    ))
}

fn perm_id(req: &HttpRequest) -> ApiResult<String> {
    let id = path::param(req, "id")?;
    DocId::parse(&id).map_err(ApiError::BadRequest)?;
    Ok(id)
}

/// `GET /permissions/:id` — a link whose set the token covers (code names only).
async fn get_one(inst: Inst, AppCaller { perms, .. }: AppCaller, req: HttpRequest) -> ApiResult<HttpResponse> {
    let p = links::managed(&inst.0, &perms, &perm_id(&req)?).await?;
    Ok(jsonapi(StatusCode::OK, json!({"data": p.to_api(None)})))
}

/// `PATCH /permissions/:id?codes=c&ttl=` — adds codes (`?codes=` or `add_codes`, answered once),
/// removes codes (`remove_codes`: they stop at once), changes `expires_at` or `password` (an
/// empty string removes either).
async fn patch(inst: Inst, caller: AppCaller, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let id = perm_id(&req)?;
    let q = Query::of(&req)?;
    let (mut change, password) = links::parse_patch(&json_body(&req, payload, true).await?)?;
    for name in links::parse_code_names(q.get("codes").unwrap_or_default())? {
        if !change.add_codes.contains(&name) {
            change.add_codes.push(name);
        }
    }
    if let Some(ttl) = q.get("ttl") {
        change.expires_at = Some(Some(links::in_secs(links::parse_ttl(ttl)?)));
    }
    // Check the caller before any argon2 work or code issuing.
    links::managed(&inst.0, &caller.perms, &id).await?;
    change.password_hash = match password {
        None => None,
        Some(None) => Some(None),
        Some(Some(pw)) => Some(Some(hash_password(pw).await?)),
    };
    let (p, issued) = links::patch(&inst.0, &caller.perms, &id, change).await?;
    Ok(jsonapi(StatusCode::OK, json!({"data": p.to_api((!issued.is_empty()).then_some(&issued))})))
}

/// `DELETE /permissions/:id` — revokes the link: every code stops working now.
async fn delete(inst: Inst, AppCaller { perms, .. }: AppCaller, req: HttpRequest) -> ApiResult<HttpResponse> {
    links::delete(&inst.0, &perms, &perm_id(&req)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /permissions/doctype/:doctype/shared-by-link?page[limit]=&page[cursor]=` — the links on
/// a doctype, for a token with GET on the whole doctype.
async fn shared_by_link(inst: Inst, AppCaller { perms, .. }: AppCaller, req: HttpRequest) -> ApiResult<HttpResponse> {
    let doctype = Doctype::parse(&path::param(&req, "doctype")?).map_err(ApiError::BadRequest)?;
    if perms.reach(&doctype, Verb::Get) != Reach::All {
        return Err(ApiError::Forbidden(format!("listing links needs GET on the whole {doctype} doctype")));
    }
    let q = Query::of(&req)?;
    let limit = match q.get("page[limit]") {
        None => 30,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| ApiError::bad_request("page[limit] must be 1 to 1000"))?,
    };
    let (items, next) = links::list_by_doctype(&inst.0, doctype.as_str(), q.get("page[cursor]"), limit).await?;
    let data: Vec<Value> = items.iter().map(|p| p.to_api(None)).collect();
    let mut out = json!({"data": data, "meta": {"count": data.len()}});
    if let Some(cursor) = next {
        let query = serde_urlencoded::to_string([("page[cursor]", cursor), ("page[limit]", limit.to_string())])
            .unwrap_or_default();
        out["links"] = json!({"next": format!("/permissions/doctype/{doctype}/shared-by-link?{query}")});
    }
    Ok(jsonapi(StatusCode::OK, out))
}

#[derive(Deserialize)]
struct PasswordForm {
    perm_id: String,
    password: String,
    redirect: Option<String>,
}

/// Only same-site paths are places to go back to (no open redirect).
fn safe_redirect(target: Option<&str>) -> Option<String> {
    target.filter(|t| super::login::is_local_path(t)).map(str::to_owned)
}

/// `POST /auth/share-by-link/password` (form `perm_id`, `password`, optional `redirect`) —
/// checks a link's password and sets the cookie its codes then need (HttpOnly, SameSite=Lax,
/// a MAC of the link and its password hash). Wrong password: 403, or, for the page's form
/// (with `redirect`), 303 back to the page with `wrong_password=1`, which asks again and says
/// why; failures are rate-limited either way.
async fn password(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let inst = inst.0;
    let body = read_body(&req, payload, 64 * 1024).await?;
    let form: PasswordForm = serde_urlencoded::from_bytes(&body)
        .map_err(|_| ApiError::bad_request("the form needs perm_id and password"))?;
    let attempt = reserve_code_attempt(&inst, &req)?;
    let link = match DocId::parse(&form.perm_id) {
        Ok(_) => links::load_link(&inst, &form.perm_id).await?,
        Err(_) => None,
    };
    let hash =
        link.filter(|p| p.kind == links::KIND_SHARE && !p.expired()).and_then(|p| p.password_hash().map(str::to_owned));
    let ok = match hash.clone() {
        Some(h) => {
            let pw = form.password;
            web::block(move || auth::verify_passphrase(&pw, &h)).await.map_err(|e| ApiError::Internal(e.into()))?
        }
        None => false,
    };
    let Some(hash) = hash.filter(|_| ok) else {
        code_failed(&inst, attempt);
        // The page's form goes back to its page, which asks again and says why; an API
        // caller gets the 403.
        if let Some(to) = safe_redirect(form.redirect.as_deref()) {
            let sep = if to.contains('?') { '&' } else { '?' };
            return Ok(HttpResponse::SeeOther()
                .insert_header((header::LOCATION, format!("{to}{sep}wrong_password=1")))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .finish());
        }
        return Err(ApiError::Forbidden("wrong password".into()));
    };
    attempt.succeeded();
    let cookie = Cookie::build(
        links::password_cookie_name(&form.perm_id),
        links::password_cookie_value(&inst, &form.perm_id, &hash),
    )
    .path("/")
    .http_only(true)
    .secure(req.connection_info().scheme() == "https")
    .same_site(SameSite::Lax)
    .finish();
    let mut resp = match safe_redirect(form.redirect.as_deref()) {
        Some(to) => {
            let mut r = HttpResponse::SeeOther();
            r.insert_header((header::LOCATION, to));
            r
        }
        None => HttpResponse::Ok(),
    };
    Ok(resp
        .cookie(cookie)
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({"ok": true})))
}

fn message_page(status: StatusCode, title: &str, text: &str) -> HttpResponse {
    page(status, title, &format!("<h1>{}</h1><p id=\"message\">{}</p>", esc(title), esc(text)))
}

fn error_page(e: &ApiError) -> HttpResponse {
    use actix_web::ResponseError;
    let status = e.status_code();
    if status.is_server_error() {
        let _ = e.error_response();
    }
    message_page(status, "Shared link", &e.to_string())
}

/// `GET /public/<path>?sharecode=` — the page a link opens. With `?sharecode=`, the code is
/// checked, kept in an HttpOnly cookie and the browser sent (302) to the same URL without it;
/// then the page shows what the link gives (a password form first when the link has one; for
/// a sharing preview, the way to add the sharing to one's own instance).
async fn public_page(inst: Inst, req: HttpRequest) -> HttpResponse {
    let inst = inst.0;
    let Ok(q) = Query::of(&req) else {
        return error_page(&ApiError::bad_request("malformed query string"));
    };
    if let Some(code) = q.get("sharecode") {
        if let Err(e) = resolve_code(&inst, &req, code).await {
            return error_page(&e);
        }
        let rest: Vec<(String, String)> = serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k != "sharecode")
            .collect();
        let mut clean = req.path().to_owned();
        if !rest.is_empty() {
            clean.push('?');
            clean.push_str(&serde_urlencoded::to_string(&rest).unwrap_or_default());
        }
        let cookie = Cookie::build(SHARECODE_COOKIE, code.to_owned())
            .path("/")
            .http_only(true)
            .secure(req.connection_info().scheme() == "https")
            .same_site(SameSite::Lax)
            .finish();
        return HttpResponse::Found()
            .cookie(cookie)
            .insert_header((header::LOCATION, clean))
            .insert_header(("Referrer-Policy", "no-referrer"))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish();
    }
    let Some(code) = req.cookie(SHARECODE_COOKIE).map(|c| c.value().to_owned()) else {
        return message_page(StatusCode::UNAUTHORIZED, "Shared link", "Open the link you were given to see this page.");
    };
    let grant = match resolve_code(&inst, &req, &code).await {
        Ok((grant, true)) => grant,
        Ok((grant, false)) => {
            let wrong = if q.get("wrong_password").is_some() {
                "<p role=\"alert\" id=\"password-error\">Wrong password: try again.</p>"
            } else {
                ""
            };
            let body = format!(
                "<h1>This link is protected by a password</h1>{wrong}\
                 <form method=\"post\" action=\"/auth/share-by-link/password\">\
                 <input type=\"hidden\" name=\"perm_id\" value=\"{}\"><input type=\"hidden\" name=\"redirect\" value=\"{}\">\
                 <label>Password <input type=\"password\" name=\"password\" id=\"password\" autofocus required></label> \
                 <button type=\"submit\" id=\"unlock\">Open</button></form>",
                esc(&grant.perm_id),
                esc(req.path())
            );
            // A page asking for a password, as the login page: 200 (a 401 document load is a
            // console error in browsers).
            return page(StatusCode::OK, "Shared link", &body);
        }
        Err(e) => return error_page(&e),
    };
    match render_grant(&inst, &req, &grant, q.get("dir")).await {
        Ok(html) => page(StatusCode::OK, "Shared with you", &html),
        Err(e) => error_page(&e),
    }
}

/// The page body for a link: what it shares (document titles when they have one; for files,
/// a download link per file and the listing of each directory, or of the sub-directory `dir`
/// inside one).
async fn render_grant(inst: &Instance, req: &HttpRequest, grant: &Grant, dir: Option<&str>) -> ApiResult<String> {
    let mut html = String::new();
    if let Some((sid, _)) = &grant.member {
        let s = sharing::load(inst.store.as_ref(), sid)
            .await?
            .ok_or_else(|| ApiError::NotFound("no such sharing".into()))?;
        let owner = s.members[0].public_name.clone().unwrap_or_default();
        html.push_str(&format!(
            "<h1>{} shares “{}” with you</h1><p><a id=\"add\" href=\"/sharings/{}/discovery\">Add it to my instance</a></p>",
            esc(&owner),
            esc(&s.description),
            esc(sid.as_str())
        ));
    } else {
        html.push_str("<h1>Shared with you</h1>");
    }
    html.push_str("<ul id=\"documents\">");
    let mut shown = 0;
    for rule in &grant.set.rules {
        if rule.doctype.as_str() == crate::files::DOCTYPE && !rule.values.is_empty() {
            let files = state_of(req)?.files.of(inst).await?;
            shown += render_files(&files, &rule.values, dir, &mut html).await?;
            continue;
        }
        if rule.values.is_empty() {
            html.push_str(&format!("<li>every document of {}</li>", esc(rule.doctype.as_str())));
            continue;
        }
        for v in rule.values.iter().take(50) {
            let title = match DocId::parse(v) {
                Ok(id) => records::get(inst.store.as_ref(), &rule.doctype, &id).await?.and_then(|r| {
                    r.body.get("title").or(r.body.get("name")).and_then(Value::as_str).map(str::to_owned)
                }),
                Err(_) => None,
            };
            html.push_str(&format!(
                "<li><code>{}</code> {}</li>",
                esc(rule.doctype.as_str()),
                esc(title.as_deref().unwrap_or(v))
            ));
            shown += 1;
        }
    }
    html.push_str("</ul>");
    if shown == 0 && grant.set.rules.is_empty() {
        html.push_str("<p>Nothing to show.</p>");
    }
    Ok(html)
}

/// Lists what a link on files reaches, as `<li>` items: each linked file with its download
/// (`/files/download/ID`, read with the page's cookie), each linked directory with its
/// children (first 200), or, with `dir`, that directory if it lies inside a linked one and
/// outside the trash. Returns how many items were listed.
async fn render_files(
    files: &crate::files::Files,
    values: &[String],
    dir: Option<&str>,
    html: &mut String,
) -> ApiResult<usize> {
    use crate::files::Kind;
    const SHOWN: usize = 200;
    let entry = |item: &crate::files::Item| match item.kind() {
        Kind::File => format!(
            "<li class=\"file\"><a href=\"/files/download/{}?Dl=1\" download>{}</a> <small>{} bytes</small></li>",
            esc(&crate::files::encode_id(&item.id)),
            esc(item.name()),
            item.size()
        ),
        Kind::Directory => format!(
            "<li class=\"dir\"><a href=\"/public/?dir={}\">{}/</a></li>",
            esc(&crate::files::encode_id(&item.id)),
            esc(item.name())
        ),
    };
    let reachable = |item: &crate::files::Item| {
        let lineage: Vec<&str> = item.lineage().collect();
        !lineage.contains(&crate::files::TRASH_ID) && lineage.iter().any(|id| values.iter().any(|v| v == id))
    };
    let mut shown = 0;
    let roots: Vec<&str> = match dir {
        Some(d) => vec![d],
        None => values.iter().map(String::as_str).take(50).collect(),
    };
    for id in roots {
        let item = match files.get(id).await {
            Ok(item) if reachable(&item) => item,
            // Not there, in the trash, or outside the link: the same answer for each.
            _ if dir.is_some() => return Err(ApiError::NotFound("no such file or directory".into())),
            _ => continue,
        };
        shown += 1;
        if item.kind() == Kind::File {
            html.push_str(&entry(&item));
            continue;
        }
        let (children, _, count) = files.children(&item, None, SHOWN).await?;
        html.push_str(&format!("<li class=\"dir\"><strong>{}/</strong><ul class=\"listing\">", esc(item.name())));
        for child in &children {
            html.push_str(&entry(child));
        }
        if count > children.len() as u64 {
            html.push_str(&format!("<li>and {} more</li>", count - children.len() as u64));
        }
        html.push_str("</ul></li>");
    }
    Ok(shown)
}

/// For the discovery of a previewed sharing: the member whose preview code the request carries
/// (form field `sharecode`, as Cozy's discovery takes, or the page's cookie), as its `state`.
pub(super) async fn preview_state(
    inst: &Instance,
    req: &HttpRequest,
    id: &SharingId,
    sharecode: Option<String>,
) -> ApiResult<String> {
    let code = match sharecode {
        Some(c) => c,
        None => req
            .cookie(SHARECODE_COOKIE)
            .map(|c| c.value().to_owned())
            .ok_or_else(|| ApiError::bad_request("the invitation link has no state"))?,
    };
    let invalid = || ApiError::Forbidden("invalid invitation".into());
    let (grant, _) = resolve_code(inst, req, &code).await?;
    let (sid, index) = grant.member.ok_or_else(invalid)?;
    if &sid != id {
        return Err(invalid());
    }
    let s = sharing::load(inst.store.as_ref(), id).await?.ok_or_else(invalid)?;
    service::member_state(inst, &s, index).ok_or_else(invalid)
}

/// Link permissions whose set `perms` covers, for the owner's sharing list.
pub(super) async fn covered_links(inst: &Instance, perms: &PermissionSet) -> ApiResult<Vec<Value>> {
    Ok(links::list_covered(inst, perms).await?.iter().map(|p| p.to_api(None)).collect())
}
