//! The owner's passphrase login: `GET /auth/login` shows a form, `POST /auth/login` checks the
//! passphrase and sets a session cookie (a short JWT of audience `session`, HttpOnly,
//! SameSite=Lax) used by the owner-only pages of later steps (accepting a sharing).
//! Failed attempts are rate-limited per client address and per instance.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::{read_body, AppState, Inst};
use crate::auth::{Audience, Claims};
use crate::http::{ApiError, ApiResult};
use crate::instance::Instance;

pub const SESSION_COOKIE: &str = "hearth_session";

/// How many times the per-address limit the whole instance tolerates before locking logins.
const INSTANCE_WIDE_FACTOR: u32 = 10;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/auth/login").route(web::get().to(login_page)).route(web::post().to(login_submit)));
}

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A complete HTML page with the headers every page gets (no referrer: pages may carry secrets
/// in their URL; no framing).
pub fn page(status: actix_web::http::StatusCode, title: &str, body_html: &str) -> HttpResponse {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width\"><title>{} · hearth</title><style>body{{font-family:sans-serif;\
         max-width:36rem;margin:3rem auto;padding:0 1rem}}input,button{{font-size:1rem;padding:.4rem}}\
         .error{{color:#a00}}</style></head><body>{}</body></html>",
        esc(title),
        body_html
    );
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action *"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(html)
}

/// Only same-site paths are accepted as a place to go back to after login (no open redirect).
fn safe_redirect(target: Option<&str>) -> String {
    target.filter(|t| is_local_path(t)).unwrap_or("/").to_owned()
}

/// Whether `target` is a path on this site: it starts with one `/`, and has no backslash,
/// whitespace or control character (browsers drop tabs and newlines from URLs, which would
/// turn `/\t/evil.example` into `//evil.example`).
pub fn is_local_path(target: &str) -> bool {
    target.starts_with('/')
        && !target.starts_with("//")
        && !target.chars().any(|c| c == '\\' || c.is_whitespace() || c.is_control())
}

fn login_form(inst: &Instance, redirect: &str, error: Option<&str>) -> String {
    format!(
        "<h1>Log in to {}</h1>{}<form method=\"post\" action=\"/auth/login\">\
         <input type=\"hidden\" name=\"redirect\" value=\"{}\">\
         <label>Passphrase <input type=\"password\" name=\"passphrase\" id=\"passphrase\" autofocus required></label> \
         <button type=\"submit\" id=\"login\">Log in</button></form>",
        esc(inst.display_name()),
        error.map(|e| format!("<p class=\"error\">{}</p>", esc(e))).unwrap_or_default(),
        esc(redirect)
    )
}

#[derive(Deserialize)]
struct LoginQuery {
    redirect: Option<String>,
}

/// `GET /auth/login?redirect=/path` — the passphrase form.
async fn login_page(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let q: LoginQuery =
        serde_urlencoded::from_str(req.query_string()).map_err(|_| ApiError::bad_request("malformed query string"))?;
    let redirect = safe_redirect(q.redirect.as_deref());
    Ok(page(actix_web::http::StatusCode::OK, "Log in", &login_form(&inst.0, &redirect, None)))
}

#[derive(Deserialize)]
struct LoginForm {
    passphrase: String,
    redirect: Option<String>,
}

/// `POST /auth/login` — checks the passphrase; on success sets the session cookie and
/// redirects (303) to `redirect`.
async fn login_submit(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("application state missing")))?;
    let body = read_body(&req, payload, 64 * 1024).await?;
    let form: LoginForm =
        serde_urlencoded::from_bytes(&body).map_err(|_| ApiError::bad_request("the form needs a passphrase field"))?;
    let redirect = safe_redirect(form.redirect.as_deref());
    let inst = inst.0;
    let addr = req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
    let addr_key = format!("addr:{addr}");
    if inst.login_failures.is_limited(&addr_key) || instance_locked(&inst, state.config.login_max_failures) {
        return Err(ApiError::TooManyRequests);
    }
    // argon2 is deliberately slow: keep it off the async workers.
    let registry = state.registry.clone();
    let domain = inst.domain.clone();
    let ok = web::block(move || registry.check_passphrase(&domain, &form.passphrase))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    if !ok {
        inst.login_failures.record_failure(&addr_key);
        inst.login_failures.record_failure("instance");
        tracing::warn!(instance = %inst.domain, "failed login attempt");
        return Ok(page(
            actix_web::http::StatusCode::UNAUTHORIZED,
            "Log in",
            &login_form(&inst, &redirect, Some("Wrong passphrase.")),
        ));
    }
    let ttl = state.config.session_ttl_secs;
    let token = inst.keys.issue(Audience::Session, "owner", ttl, None, None);
    let cookie = Cookie::build(SESSION_COOKIE, token)
        .path("/")
        .http_only(true)
        .secure(req.connection_info().scheme() == "https")
        .same_site(SameSite::Lax)
        .max_age(actix_web::cookie::time::Duration::seconds(ttl.min(i64::MAX as u64) as i64))
        .finish();
    Ok(HttpResponse::SeeOther()
        .cookie(cookie)
        .insert_header((header::LOCATION, redirect))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .finish())
}

fn instance_locked(inst: &Instance, max: u32) -> bool {
    // The instance-wide key uses the same limiter with a larger budget, so a distributed guess
    // still hits a wall.
    inst.login_failures.is_limited_with("instance", max.saturating_mul(INSTANCE_WIDE_FACTOR))
}

/// The owner's session, when the request carries a valid session cookie for this instance.
pub fn owner_session(inst: &Instance, req: &HttpRequest) -> Option<Claims> {
    let cookie = req.cookie(SESSION_COOKIE)?;
    inst.keys.verify(cookie.value(), &[Audience::Session])
}
