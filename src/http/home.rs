//! The owner's web app: `GET /` (the home page, server-rendered with maud, which escapes every
//! value it is given), its script and stylesheet (`/web/app.js`, `/web/app.css`, embedded in the
//! binary), and `POST /auth/session/token`, which turns the browser's session into a
//! short-lived app token.
//!
//! The page acts only through the public API, as any app does: its script asks for an app token
//! with the session cookie *and* the page's CSRF token in the `X-CSRF-Token` header (derived from
//! the session with the instance key: another site can neither read it nor send a custom header
//! without a CORS preflight, which hearth never grants), then calls `/sharings`, `/files`,
//! `/permissions` with `Authorization: Bearer`. Tokens last [`SESSION_TOKEN_TTL_SECS`].
//!
//! Every page here has a strict CSP: scripts, styles and connections from this origin only, no
//! inline script or style, no framing.

use std::collections::HashMap;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup, DOCTYPE};
use serde_json::{json, Value};

use super::callers::PageSession;
use super::state_of;
use super::{ApiError, ApiResult, Inst, Query};
use crate::auth::{Audience, PermissionSet};
use crate::files::{Kind, ROOT_ID, TRASH_ID};
use crate::instance::Instance;
use crate::sharing::{self, MemberIndex, MemberStatus, Sharing};

/// Lifetime of the app token the page gets for its session: ten minutes (the script asks for a
/// new one before it ends).
pub const SESSION_TOKEN_TTL_SECS: u64 = 600;

/// The page's Content-Security-Policy.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                       img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const APP_JS: &str = include_str!("../../assets/web/app.js");
const APP_CSS: &str = include_str!("../../assets/web/app.css");

/// How many children of a folder the page lists.
const FOLDER_PAGE: usize = 200;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(home))
        .route("/web/app.js", web::get().to(script))
        .route("/web/app.css", web::get().to(stylesheet))
        .route("/favicon.ico", web::get().to(no_icon))
        .route("/auth/session/token", web::post().to(session_token));
}

/// The CSRF token of the browser's session (see the module documentation).
pub fn session_csrf(inst: &Instance, session: &str) -> String {
    inst.derive_secret("web-csrf", &[session])
}

/// The scope of the page's token: the owner manages sharings, files and links, and reads the
/// doctypes of its sharings (for the realtime feed).
pub async fn owner_scope(inst: &Instance) -> ApiResult<PermissionSet> {
    let mut doctypes = vec![
        sharing::SHARINGS_DOCTYPE.to_owned(),
        crate::files::DOCTYPE.to_owned(),
        sharing::links::PERMISSIONS_DOCTYPE.to_owned(),
    ];
    for s in sharing::list(inst.store.as_ref()).await? {
        for r in &s.rules {
            if !doctypes.contains(&r.doctype) && !sharing::model::is_internal_doctype(&r.doctype) {
                doctypes.push(r.doctype.clone());
            }
        }
    }
    PermissionSet::parse(&doctypes.join(" ")).map_err(|e| ApiError::Internal(anyhow::anyhow!("owner scope: {e}")))
}

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(body)
}

async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// Browsers ask for it on every page: no icon, and no 404 in their console.
async fn no_icon() -> HttpResponse {
    HttpResponse::NoContent().insert_header((header::CACHE_CONTROL, "max-age=86400")).finish()
}

async fn stylesheet() -> HttpResponse {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// `POST /auth/session/token` — with the session cookie and `X-CSRF-Token` (the token in the
/// home page's `<meta name="hearth-csrf">`): `{"access_token", "token_type": "bearer",
/// "expires_in": 600, "scope"}`, an app token of the owner. 401 without a live session, 403
/// with a missing or wrong CSRF token.
async fn session_token(inst: Inst, PageSession(session): PageSession, req: HttpRequest) -> ApiResult<HttpResponse> {
    let presented = req.headers().get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !Instance::secrets_match(presented, &session_csrf(&inst.0, &session)) {
        return Err(ApiError::Forbidden("invalid CSRF token".into()));
    }
    let scope = owner_scope(&inst.0).await?;
    let token = inst.0.keys.issue(Audience::App, "web", SESSION_TOKEN_TTL_SECS, Some(&scope), None);
    Ok(HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(json!({
        "access_token": token, "token_type": "bearer", "expires_in": SESSION_TOKEN_TTL_SECS,
        "scope": scope.to_string(),
    })))
}

fn html_page(title: &str, csrf: &str, body: Markup) -> HttpResponse {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="hearth-csrf" content=(csrf);
                title { (title) " · hearth" }
                link rel="stylesheet" href="/web/app.css";
                script src="/web/app.js" defer {}
            }
            body { (body) }
        }
    };
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Content-Security-Policy", CSP))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(page.into_string())
}

/// Whether `Accept` asks for JSON only: every media range it lists is a JSON type
/// (`application/json`, `application/vnd.api+json`, ...). No `Accept`, `*/*` (curl's default)
/// or any other type is not JSON only (RFC 9110 §12.5.1: no header means any type).
fn json_only(req: &HttpRequest) -> bool {
    let Some(accept) = req.headers().get(header::ACCEPT).and_then(|a| a.to_str().ok()) else { return false };
    let ranges: Vec<String> = accept
        .split(',')
        .map(|r| r.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .filter(|r| !r.is_empty())
        .collect();
    !ranges.is_empty() && ranges.iter().all(|r| r == "application/json" || r.ends_with("+json"))
}

/// `GET /[?dir=FOLDER-ID]` — the owner's home. Without a session, a client is sent (303) to
/// the login page, which brings it back here (`/auth/login?redirect=%2F`), whatever its
/// `Accept` (`*/*`, none, `text/html`, ...), except one that asks for JSON only: that API client
/// gets the JSON 404 of a route the API does not have.
async fn home(inst: Inst, session: Option<PageSession>, req: HttpRequest) -> ApiResult<HttpResponse> {
    let Some(PageSession(session)) = session else {
        if json_only(&req) {
            return Err(ApiError::NotFound("no such route".into()));
        }
        let back = format!("/?{}", req.query_string());
        let back = if req.query_string().is_empty() { "/" } else { back.as_str() };
        let login = format!("/auth/login?{}", serde_urlencoded::to_string([("redirect", back)]).unwrap_or_default());
        return Ok(HttpResponse::SeeOther().insert_header((header::LOCATION, login)).finish());
    };
    let q = Query::of(&req)?;
    let svc = state_of(&req)?;
    let inst = inst.0;
    let mut sharings = sharing::list(inst.store.as_ref()).await?;
    sharings.sort_by(|a, b| b.created_at.cmp(&a.created_at));
    let scope = owner_scope(&inst).await?;
    let links: Vec<Value> = sharing::links::list_covered(&inst, &scope).await?.iter().map(|l| l.to_api(None)).collect();
    let files = svc.files.of(&inst).await?;
    let linked = linked_files(&files, &links).await?;
    let dir_id = q.get("dir").unwrap_or(ROOT_ID);
    let dir = match files.get(dir_id).await {
        Ok(d) if d.kind() == Kind::Directory && !d.trashed() => d,
        _ => files.get(ROOT_ID).await?,
    };
    let (children, _, count) = files.children(&dir, None, FOLDER_PAGE).await?;
    let me = svc.sharing.federation.instance_url(inst.domain.as_str());

    let (mine, theirs): (Vec<&Sharing>, Vec<&Sharing>) = sharings.iter().partition(|s| s.owner);
    let requests: Vec<&Sharing> =
        theirs.iter().copied().filter(|s| !s.active && s.revoked_at.is_none() && !answered(s, &me)).collect();
    let incoming: Vec<&Sharing> = theirs.iter().copied().filter(|s| s.active || s.revoked_at.is_some()).collect();

    let body = html! {
        header.top {
            h1 { "hearth · " (inst.display_name()) }
            form method="post" action="/auth/logout" { button type="submit" { "Log out" } }
        }
        p #live .live { "Connecting…" }
        div #output role="status" aria-live="polite" tabindex="-1" {}
        nav aria-label="Sections" {
            a href="#requests" { "Requests" } " · " a href="#shared-by-me" { "Shared by me" } " · "
            a href="#shared-with-me" { "Shared with me" } " · " a href="#links" { "Links" } " · "
            a href="#files" { "Files" }
        }
        main #main {
            section #requests aria-labelledby="requests-h" {
                h2 #requests-h { "Requests" }
                @if requests.is_empty() { p.empty { "No sharing request waiting." } }
                @for s in &requests { (request_card(s, &me)) }
            }
            section #shared-by-me aria-labelledby="mine-h" {
                h2 #mine-h { "Shared by me" }
                @if mine.is_empty() { p.empty { "You share nothing yet." } }
                @for s in &mine { (sharing_card(s, &svc.sharing, &inst)) }
            }
            section #shared-with-me aria-labelledby="theirs-h" {
                h2 #theirs-h { "Shared with me" }
                @if incoming.is_empty() { p.empty { "Nothing is shared with you yet." } }
                @for s in &incoming { (sharing_card(s, &svc.sharing, &inst)) }
            }
            section #links aria-labelledby="links-h" {
                h2 #links-h { "Links" }
                @if links.is_empty() { p.empty { "No link." } }
                ul.list { @for l in &links { (link_item(l, &linked)) } }
            }
            section #files aria-labelledby="files-h" data-dir=(dir.id) {
                h2 #files-h { "Files" }
                (breadcrumb(&dir))
                div.tools {
                    form.inline data-action="mkdir" {
                        label { "New folder " input name="name" required autocomplete="off"; }
                        " " button type="submit" { "Create" }
                    }
                    form.inline data-action="upload" {
                        label { "Upload " input type="file" name="file" multiple required; }
                        " " button type="submit" { "Send" }
                    }
                    // The root holds the trash and "Shared with me": folders inside it are shared,
                    // never the root itself (the API refuses it too).
                    @if dir.id != ROOT_ID {
                        form.inline data-action="share-folder-with" {
                            fieldset {
                                legend { "Share this folder with someone" }
                                label { "Email or hearth address " input name="who" required autocomplete="email"
                                    placeholder="name@example.net"; }
                                " "
                                label { "Access " select name="access" { option value="write" { "read and write" } option value="read" { "read only" } } }
                                " " button type="submit" { "Share" }
                            }
                        }
                        form.inline data-action="share-folder" {
                            fieldset {
                                legend { "Share this folder by link" }
                                label { "Expires in days " input type="number" name="days" min="1" max="3650" value="7"; }
                                " "
                                label { "Password " input type="password" name="password" autocomplete="new-password"; }
                                " " button type="submit" { "Create link" }
                            }
                        }
                    }
                }
                progress #upload-progress max="100" value="0" hidden {}
                @let count = if dir.id == ROOT_ID { count.saturating_sub(1) } else { count };
                p.count { (count) " item(s)" @if count as usize > FOLDER_PAGE { ", the first " (FOLDER_PAGE) " shown" } }
                ul.list.files { @for item in children.iter().filter(|i| i.id != TRASH_ID) { (file_item(item)) } }
            }
        }
    };
    Ok(html_page("Home", &session_csrf(&inst, &session), body))
}

/// Whether a recipient already answered a request (its own member is no longer invited).
fn answered(s: &Sharing, me: &str) -> bool {
    crate::sharing::request::answered(s, me)
}

fn status_text(st: MemberStatus) -> &'static str {
    match st {
        MemberStatus::Owner => "owner",
        MemberStatus::MailNotSent => "invited (link not sent)",
        MemberStatus::Pending => "invited",
        MemberStatus::Seen => "invitation seen",
        MemberStatus::Ready => "ready",
        MemberStatus::Refused => "refused",
        MemberStatus::Revoked => "revoked",
    }
}

fn rules_list(s: &Sharing) -> Markup {
    html! {
        ul.rules {
            @for r in &s.rules {
                li {
                    (r.title) " "
                    small {
                        "(" (r.doctype) ", "
                        @match &r.selector {
                            Some(field) => { "documents whose " (field) " is " (r.values.join(", ")) }
                            None => { (r.values.len()) " document(s)" }
                        }
                        ")"
                    }
                }
            }
        }
    }
}

fn member_name(m: &sharing::Member) -> String {
    m.public_name
        .clone()
        .or_else(|| m.name.clone())
        .or_else(|| m.email.clone())
        .or_else(|| m.instance.clone())
        .unwrap_or_else(|| "someone".into())
}

fn request_card(s: &Sharing, me: &str) -> Markup {
    let owner = s.members.first();
    // What accepting covers: the digest of the request as shown here (see `sharing::request`).
    let mine = s.members.iter().position(|m| m.instance.as_deref() == Some(me) && m.status != MemberStatus::Owner);
    let digest = crate::sharing::request::digest(s, MemberIndex(mine.unwrap_or(0)));
    html! {
        article.card.request data-sharing=(s.id()) {
            h3 { (if s.description.is_empty() { "A sharing" } else { s.description.as_str() }) }
            p { "From " strong { (owner.map(member_name).unwrap_or_default()) } " "
                code { (owner.and_then(|o| o.instance.clone()).unwrap_or_default()) } }
            (rules_list(s))
            div.actions {
                button type="button" data-action="accept" data-sharing=(s.id()) data-digest=(digest) { "Accept" }
                " "
                button type="button" data-action="refuse" data-sharing=(s.id()) { "Refuse" }
            }
        }
    }
}

fn sharing_card(s: &Sharing, cx: &sharing::Context, inst: &Instance) -> Markup {
    let ended = s.revoked_at.is_some();
    // The owner passes these on when no mail is sent (see `service::invitations`).
    let member_links: Vec<(MemberIndex, String)> = if s.owner && !ended {
        sharing::service::invitations(cx, inst, s).into_iter().map(|(i, _, l)| (i, l)).collect()
    } else {
        Vec::new()
    };
    html! {
        article.card data-sharing=(s.id()) data-owner=(s.owner) {
            h3 {
                (if s.description.is_empty() { "A sharing" } else { s.description.as_str() })
                @if ended { " " span.badge { "ended" } } @else if s.active { " " span.badge.ok { "active" } }
            }
            (rules_list(s))
            table.members {
                caption.sr { "Members of " (s.description) }
                thead { tr { th scope="col" { "Member" } th scope="col" { "Status" } th scope="col" { "Sync" }
                    @if s.owner && !ended { th scope="col" { "Actions" } } } }
                tbody {
                    @for (i, m) in s.members.iter().enumerate() {
                        tr {
                            td data-label="Member" { (member_name(m)) @if let Some(inst) = &m.instance { br; small { (inst) } } }
                            td.status data-label="Status" { (status_text(m.status)) @if m.read_only { " · read-only" } }
                            td.sync #{"sync-" (s.id()) "-" (i)} data-label="Sync" { "—" }
                            @if s.owner && !ended {
                                td data-label="Actions" {
                                    @if i > 0 && m.status != MemberStatus::Revoked && m.status != MemberStatus::Refused {
                                        @if m.status == MemberStatus::Ready {
                                            button type="button" data-action="readonly" data-sharing=(s.id())
                                                data-member=(i) data-value=(!m.read_only) {
                                                (if m.read_only { "Allow writing" } else { "Make read-only" })
                                            }
                                            " "
                                        }
                                        @if let Some((_, l)) = member_links.iter().find(|(j, _)| j.get() == i) {
                                            button type="button" data-action="copy" data-link-url=(l)
                                                aria-label={"Copy the invitation link of " (member_name(m))} { "Copy invitation" }
                                            " "
                                        }
                                        button type="button" data-action="revoke-one" data-sharing=(s.id()) data-member=(i)
                                            aria-label={"Revoke " (member_name(m))} { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if !ended {
                @if s.owner {
                    h4 { "Invitation links" }
                    ul.list {
                        @for inv in s.invitations.iter().filter(|i| i.is_active()) {
                            li {
                                (inv.permissions().join(", ")) " · expires " (short_time(&inv.expires_at))
                                @if let Some(max) = inv.max_accepted_users { " · up to " (max) " people" }
                                " "
                                button type="button" data-action="revoke-invitation" data-sharing=(s.id()) data-invitation=(inv.id) { "Revoke link" }
                            }
                        }
                    }
                    form.inline data-action="invite" data-sharing=(s.id()) {
                        fieldset {
                            legend { "New invitation link" }
                            label { "Access " select name="access" { option value="read" { "read" } option value="write" { "write" } } }
                            " "
                            label { "People " input type="number" name="max" min="1" max="1000" value="1"; }
                            " "
                            label { "Expires in days " input type="number" name="days" min="1" max="365" value="7"; }
                            " " button type="submit" { "Create link" }
                        }
                    }
                    div.actions {
                        button type="button" data-action="sync" data-sharing=(s.id()) { "Sync now" }
                        " "
                        button type="button" .danger data-action="revoke-all" data-sharing=(s.id()) { "Revoke all" }
                    }
                    (add_member_form(s))
                } @else {
                    @if s.open_sharing && s.active { (add_member_form(s)) }
                    div.actions {
                        button type="button" .danger data-action="leave" data-sharing=(s.id()) { "Leave" }
                    }
                }
            }
        }
    }
}

/// Adds a member: on the owner's sharings, and on an `open_sharing` received (the instance
/// forwards it to the owner; see `service::forward_recipients`).
fn add_member_form(s: &Sharing) -> Markup {
    html! {
        form.inline data-action="add-member" data-sharing=(s.id()) {
            fieldset {
                legend { "Add someone" }
                label { "Email or hearth address " input name="who" required autocomplete="email" placeholder="name@example.net"; }
                " " button type="submit" { "Add" }
            }
        }
    }
}

/// The files and folders the links name, by id: what a person knows them by is their name and
/// path, not their id (`None`: gone, or not readable as a file any more).
async fn linked_files(files: &crate::files::Files, links: &[Value]) -> ApiResult<HashMap<String, Option<LinkedItem>>> {
    let mut out = HashMap::new();
    for l in links {
        let Some(rules) = l["attributes"]["permissions"].as_object() else { continue };
        for r in rules.values().filter(|r| r["type"] == crate::files::DOCTYPE) {
            for id in r["values"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                if out.contains_key(id) {
                    continue;
                }
                let found = match files.get(id).await {
                    Ok(item) => Some(LinkedItem {
                        name: if item.id == ROOT_ID { "Home".to_owned() } else { item.name().to_owned() },
                        path: item.path(),
                        dir: item.kind() == Kind::Directory,
                        trashed: item.trashed(),
                    }),
                    Err(crate::files::FilesError::NotFound(_) | crate::files::FilesError::BadRequest(_)) => None,
                    Err(e) => return Err(e.into()),
                };
                out.insert(id.to_owned(), found);
            }
        }
    }
    Ok(out)
}

/// A file or folder a link gives, as the Links list shows it.
struct LinkedItem {
    name: String,
    path: Option<String>,
    dir: bool,
    trashed: bool,
}

/// One link: what it gives (files and folders by name and path; other documents by doctype
/// and id), its expiry, whether it has a password, and Revoke.
fn link_item(l: &Value, linked: &HashMap<String, Option<LinkedItem>>) -> Markup {
    let a = &l["attributes"];
    let id = l["id"].as_str().unwrap_or_default();
    let rules: Vec<&Value> = a["permissions"].as_object().map(|m| m.values().collect()).unwrap_or_default();
    let values = |r: &Value| -> Vec<String> {
        r["values"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    html! {
        li data-link=(id) {
            @for (n, r) in rules.iter().enumerate() {
                @if n > 0 { "; " }
                @if r["type"] == crate::files::DOCTYPE {
                    @for (k, v) in values(r).iter().enumerate() {
                        @if k > 0 { ", " }
                        @match linked.get(v.as_str()).and_then(Option::as_ref) {
                            Some(f) => {
                                (if f.dir { "Folder " } else { "File " })
                                strong.linked { (f.name) }
                                @if f.trashed { " (in the trash)" }
                                @else if let Some(p) = &f.path { " " small { (p) } }
                            }
                            None => { "a file or folder that is gone" }
                        }
                    }
                } @else {
                    (r["type"].as_str().unwrap_or_default()) " " (values(r).join(", "))
                }
            }
            @if let Some(e) = a["expires_at"].as_str() { " · expires " (short_time(e)) }
            @if a["password"] == true { " · password" }
            " "
            button type="button" data-action="revoke-link" data-link=(id) { "Revoke" }
        }
    }
}

fn breadcrumb(dir: &crate::files::Item) -> Markup {
    // The ancestry is the node first; the root is last.
    let mut trail: Vec<(&str, &str)> = dir.ancestry.iter().map(|e| (e.id.as_str(), e.name.as_str())).collect();
    trail.reverse();
    html! {
        nav.breadcrumb aria-label="Folder" {
            @for (i, (id, name)) in trail.iter().enumerate() {
                @if i > 0 { " / " }
                @let label = if *id == ROOT_ID { "Home" } else { *name };
                @if i + 1 == trail.len() { span aria-current="page" { (label) } }
                @else { a href={"/?dir=" (urlencode(id)) "#files"} { (label) } }
            }
        }
    }
}

/// An RFC 3339 time as people read it: `2026-12-02 02:10 UTC` (the text as is when it is not
/// one).
fn short_time(t: &str) -> String {
    match time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339) {
        Ok(d) => {
            let d = d.to_offset(time::UtcOffset::UTC);
            format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", d.year(), u8::from(d.month()), d.day(), d.hour(), d.minute())
        }
        Err(_) => t.to_owned(),
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn human_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn file_item(item: &crate::files::Item) -> Markup {
    let dir = item.kind() == Kind::Directory;
    let name = item.name();
    html! {
        li.file data-file=(item.id) data-name=(name) data-kind=(if dir { "directory" } else { "file" }) {
            span.name {
                @if dir { a href={"/?dir=" (urlencode(&item.id)) "#files"} { (name) } " " span.badge { "folder" } }
                @else { button type="button" .link data-action="download" data-file=(item.id) data-name=(name) { (name) } }
            }
            @if !dir { " " small { (human_size(item.size())) } }
            details {
                summary { "Actions" span.sr { " for " (name) } }
                form.inline data-action="rename" data-file=(item.id) {
                    label { "New name " input name="name" value=(name) required autocomplete="off"; }
                    " " button type="submit" { "Rename" }
                }
                form.inline data-action="move" data-file=(item.id) {
                    label { "Move to folder path " input name="path" placeholder="/" required autocomplete="off"; }
                    " " button type="submit" { "Move" }
                }
                button type="button" .danger data-action="trash" data-file=(item.id) { "Move to trash" }
            }
        }
    }
}
