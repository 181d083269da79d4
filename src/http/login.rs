//! The owner's passphrase login: `GET /auth/login` shows a form, `POST /auth/login` checks the
//! passphrase and starts a session, `POST /auth/logout` ends it.
//!
//! A session is a random id kept server-side (`instance::Sessions`, stored hashed) and sent as
//! the `hearth_session` cookie (HttpOnly, SameSite=Lax): every login gets its own, logging out
//! ends it, and changing the passphrase ends them all. Guessing is limited as `auth::throttle`
//! describes: an attempt is reserved per client address before the passphrase is verified;
//! once the instance has seen many failures, verifications for browsers that never logged in
//! are spaced out instead of refused, and a browser that logged in before (the signed
//! `hearth_device` cookie) is never slowed down by other people's guesses.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::{read_body, AppState, Inst};
use crate::http::{ApiError, ApiResult};
use crate::instance::Instance;

pub const SESSION_COOKIE: &str = "hearth_session";

/// Marks a browser that logged in before: `<random id>.<MAC of the id>`.
pub const DEVICE_COOKIE: &str = "hearth_device";

/// Lifetime of the device cookie: a year (it grants nothing but an exemption from the
/// instance-wide slowdown).
const DEVICE_TTL_SECS: i64 = 365 * 24 * 3600;

/// The limiter key of the instance-wide load of unknown browsers.
const INSTANCE_KEY: &str = "instance";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/auth/login").route(web::get().to(login_page)).route(web::post().to(login_submit)));
    cfg.service(web::resource("/auth/logout").route(web::post().to(logout)));
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

/// The id of the browser's device cookie, when it carries a valid one for this instance.
fn known_device(inst: &Instance, req: &HttpRequest) -> Option<String> {
    let cookie = req.cookie(DEVICE_COOKIE)?;
    let (id, mac) = cookie.value().split_once('.')?;
    let expected = inst.derive_secret("device", &[id]);
    (id.len() == 32 && Instance::secrets_match(mac, &expected)).then(|| id.to_owned())
}

fn cookie<'c>(req: &HttpRequest, name: &'c str, value: String, max_age_secs: i64) -> Cookie<'c> {
    Cookie::build(name, value)
        .path("/")
        .http_only(true)
        .secure(req.connection_info().scheme() == "https")
        .same_site(SameSite::Lax)
        .max_age(actix_web::cookie::time::Duration::seconds(max_age_secs))
        .finish()
}

/// `POST /auth/login` — checks the passphrase; on success starts a session (cookie) and
/// redirects (303) to `redirect`. Wrong passphrase: 401 with the form again. Guessing: 429
/// (see the module documentation).
async fn login_submit(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("application state missing")))?;
    let body = read_body(&req, payload, 64 * 1024).await?;
    let form: LoginForm =
        serde_urlencoded::from_bytes(&body).map_err(|_| ApiError::bad_request("the form needs a passphrase field"))?;
    let redirect = safe_redirect(form.redirect.as_deref());
    let inst = inst.0;
    let device = known_device(&inst, &req);
    let key = match &device {
        Some(id) => format!("device:{id}"),
        None => format!("addr:{}", super::permissions::client_address(&req)),
    };
    // Reserved before verifying: concurrent attempts cannot all pass the check.
    let Some(attempt) = inst.login_failures.reserve(&key) else {
        return Err(ApiError::TooManyRequests);
    };
    // Unknown browsers share the instance's load: failures, and verifications in flight (so
    // that concurrent attempts from many addresses cannot all pass as "free").
    let mut instance_attempt = None;
    if device.is_none() {
        // The load read with the reservation, atomically: two concurrent attempts never both
        // see the same load and pass as the same free one.
        let Some((reserved, load)) = inst.login_failures.reserve_counting(INSTANCE_KEY, u32::MAX) else {
            return Err(ApiError::TooManyRequests);
        };
        match inst.login_slowdown.turn(load) {
            Ok(wait) if wait.is_zero() => {}
            Ok(wait) => tokio::time::sleep(wait).await,
            Err(retry) => {
                reserved.cancel();
                attempt.cancel();
                return Err(ApiError::RetryAfter(retry.as_secs().max(1)));
            }
        }
        instance_attempt = Some(reserved);
    }
    // argon2 is deliberately slow: keep it off the async workers.
    inst.passphrase_checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let registry = state.registry.clone();
    let domain = inst.domain.clone();
    let ok = web::block(move || registry.check_passphrase(&domain, &form.passphrase))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    if !ok {
        attempt.failed();
        if let Some(a) = instance_attempt {
            a.failed();
        }
        tracing::warn!(instance = %inst.domain, "failed login attempt");
        return Ok(page(
            actix_web::http::StatusCode::UNAUTHORIZED,
            "Log in",
            &login_form(&inst, &redirect, Some("Wrong passphrase.")),
        ));
    }
    attempt.succeeded();
    if let Some(a) = instance_attempt {
        a.succeeded();
    }
    let ttl = state.config.session_ttl_secs;
    let session = inst.sessions.start(ttl).map_err(ApiError::Internal)?;
    let device_id = device.unwrap_or_else(|| crate::auth::random_hex(16));
    let device_value = format!("{device_id}.{}", inst.derive_secret("device", &[&device_id]));
    Ok(HttpResponse::SeeOther()
        .cookie(cookie(&req, SESSION_COOKIE, session, ttl.min(i64::MAX as u64) as i64))
        .cookie(cookie(&req, DEVICE_COOKIE, device_value, DEVICE_TTL_SECS))
        .insert_header((header::LOCATION, redirect))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .finish())
}

/// `POST /auth/logout` — ends this browser's session (if any) and sends it to the login page.
async fn logout(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    if let Some(c) = req.cookie(SESSION_COOKIE) {
        inst.0.sessions.end(c.value()).map_err(ApiError::Internal)?;
    }
    Ok(HttpResponse::SeeOther()
        .cookie(cookie(&req, SESSION_COOKIE, String::new(), 0))
        .insert_header((header::LOCATION, "/auth/login"))
        .finish())
}

/// The owner's session id, when the request carries the cookie of a live session.
pub fn owner_session(inst: &Instance, req: &HttpRequest) -> Option<String> {
    let cookie = req.cookie(SESSION_COOKIE)?;
    inst.sessions.is_valid(cookie.value()).then(|| cookie.value().to_owned())
}
