//! The receiving end of the content channel of a files sharing (issue 13, item 2; the sending
//! end is `sync::content`). Metadata travels by `_revs_diff`/`_bulk_docs`; then the sender asks
//! which versions this instance lacks and streams each one. Both routes are peer routes,
//! authenticated like `/sharings/:id/_bulk_docs` (the member's bearer token), and only concern
//! files of this sharing, in this instance's ids:
//!
//! - `POST /sharings/:id/io.cozy.files/_content_diff` — `{"<file-id>": {"vfs_id": "<v>"}, ...}`
//!   (at most [`MAX_DIFF`] files) → `{"<file-id>": "missing" | "present" | "stale" |
//!   "in_progress"}` (see `files::received::ContentNeed`); a file that was never in the
//!   sharing is `stale` (one that left it, here or elsewhere, is answered for the version it
//!   or its dissociated copy names). Ids are in the caller's id space, transformed by the
//!   owner as for documents (`sharing::xor`).
//! - `PUT /sharings/:id/io.cozy.files/:file-id/content?vfs_id=<v>` — the bytes of that version
//!   (`Content-Length` required). Written to a temporary object, checked against the size and
//!   `md5sum` of the document *here*, then made visible at once: 201 `{"ok": true, "size": N}`;
//!   200 when the bytes were here already (the body is not read); 409 when the document here
//!   does not name that version or it is being received already; 412 when the bytes do not
//!   match (nothing kept); 403 from a read-only member; 413 `too_large` when the bytes do not
//!   fit this instance's quota (`files::received`, nothing kept: the sender holds the file and
//!   retries later); 408 when the body sends nothing for `files.body_idle_secs` (nothing kept,
//!   the version free for the next transfer).

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde_json::json;

use super::sharings::replicating_peer;
use super::{instance_of, parse_json, path, read_body, state_of, ApiError, ApiResult, Inst};
use crate::auth::Verb;
use crate::files::received::ContentNeed;
use crate::sharing::protocol::{ContentDiffAnswer, ContentDiffRequest, MAX_DIFF};
use crate::sharing::xor::IdMap;
use crate::sharing::{MemberIndex, Sharing, SharingId};
use crate::store::DocId;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/sharings/{id}/io.cozy.files/_content_diff", web::post().to(content_diff))
        .route("/sharings/{id}/io.cozy.files/{file_id}/content", web::put().to(put_content));
}

fn sharing_id(req: &HttpRequest) -> ApiResult<SharingId> {
    SharingId::parse(&path::param(req, "id")?).map_err(|_| ApiError::NotFound("no such sharing".into()))
}

/// The peer calling, for content: a replicating member (as `callers::ReplicatingPeer`, its
/// errors after a 404 `no such sharing` for an invalid sharing id, as content routes always
/// answered); with `SENDS` false (the diff, a question that writes nothing) one that may only
/// read is let in, with `SENDS` true (content) it is refused, 403 `READ_ONLY_REFUSAL`. Carries
/// the sharing as loaded and the member's index (the handlers map ids with it,
/// `IdMap::for_member`).
struct ContentPeer<const SENDS: bool>(Sharing, MemberIndex);

impl<const SENDS: bool> FromRequest for ContentPeer<SENDS> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let inst = Inst(instance_of(&req)?);
            let verb = if SENDS { Verb::Post } else { Verb::Get };
            let id = sharing_id(&req)?;
            let (s, from) = replicating_peer(&inst, &req, &id, verb).await?;
            if verb != Verb::Get && s.owner && s.member(from).is_some_and(|m| m.read_only) {
                return Err(ApiError::Forbidden(crate::sharing::protocol::READ_ONLY_REFUSAL.into()));
            }
            Ok(ContentPeer(s, from))
        })
    }
}

/// Which of `ids` are files of sharing `s` here: in it, or that left it (moved out or trashed,
/// here or by another member). A file that left before its bytes arrived still takes the bytes
/// of the version it (or its dissociated copy) names, never of another: `files::received`
/// answers `stale` for any other version, and the bytes are checked against the document here.
async fn of_sharing(inst: &Inst, s: &Sharing, ids: &[DocId]) -> ApiResult<std::collections::HashSet<DocId>> {
    let doctype = crate::files::doctype();
    let states = inst.0.store.shared_state(s.sharing_id(), &doctype, ids).await?;
    Ok(states.into_keys().collect())
}

fn version_param(v: &str) -> ApiResult<String> {
    if v.len() < 3 || v.len() > 64 || !v.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(ApiError::bad_request("vfs_id must be 3 to 64 letters and digits"));
    }
    Ok(v.to_owned())
}

async fn content_diff(
    inst: Inst,
    ContentPeer(s, from): ContentPeer<false>,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    // Ids come in the member's space: the owner transforms them (`sharing::xor`).
    let ids = IdMap::for_member(&s, from);
    let limit = state_of(&req)?.config.max_http_request_size;
    let body = parse_json(&read_body(&req, payload, limit).await?)?;
    let asked = ContentDiffRequest::parse(body).map_err(ApiError::BadRequest)?;
    if asked.len() > MAX_DIFF {
        return Err(ApiError::Limit {
            error: "max_bulk_docs_count_exceeded",
            reason: format!("at most {MAX_DIFF} files per request"),
        });
    }
    let mut wanted = Vec::with_capacity(asked.len());
    for (id, offer) in &asked {
        let offer = offer
            .as_ref()
            .ok_or_else(|| ApiError::bad_request(format!("{id}: an object with a string vfs_id is required")))?;
        let doc = DocId::parse(&ids.convert(id)).map_err(|e| ApiError::bad_request(format!("{id}: {e}")))?;
        wanted.push((doc, version_param(&offer.vfs_id)?));
    }
    let docs: Vec<DocId> = wanted.iter().map(|(id, _)| id.clone()).collect();
    let shared = of_sharing(&inst, &s, &docs).await?;
    let files = state_of(&req)?.files.of(&inst.0).await?;
    let (in_it, outside): (Vec<_>, Vec<_>) = wanted.into_iter().partition(|(id, _)| shared.contains(id));
    let asked: Vec<(String, String)> = in_it.into_iter().map(|(id, v)| (id.to_string(), v)).collect();
    let needs = files.content_needs(&asked).await?;
    let mut out = ContentDiffAnswer::default();
    for ((id, _), need) in asked.iter().zip(needs) {
        out.0.insert(ids.convert(id), need.as_str().to_owned());
    }
    for (id, _) in outside {
        out.0.insert(ids.convert(id.as_str()), ContentNeed::Stale.as_str().to_owned());
    }
    Ok(HttpResponse::Ok().json(out))
}

async fn put_content(
    inst: Inst,
    ContentPeer(s, from): ContentPeer<true>,
    req: HttpRequest,
    mut payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let theirs = path::param(&req, "file_id")?;
    let id = IdMap::for_member(&s, from).convert(&theirs);
    // What this instance refuses of the member's content, and takes, shows in its status.
    let key =
        crate::sync::manager::PeerKey { domain: inst.0.domain.to_string(), sharing: s.id().to_owned(), member: from };
    let doc = DocId::parse(&id).map_err(|e| ApiError::bad_request(format!("file id: {e}")))?;
    let q = super::Query::of(&req)?;
    let vfs_id = version_param(q.get("vfs_id").ok_or_else(|| ApiError::bad_request("vfs_id is required"))?)?;
    if req.headers().get(header::CONTENT_LENGTH).is_none() {
        return Err(ApiError::bad_request("Content-Length is required"));
    }
    if !of_sharing(&inst, &s, std::slice::from_ref(&doc)).await?.contains(&doc) {
        return Err(ApiError::ConflictWith("this file is not of the sharing here (yet)".into()));
    }
    let files = state_of(&req)?.files.of(&inst.0).await?;
    let begun = match files.begin_received(&id, &vfs_id).await {
        Err(crate::files::FilesError::QuotaExceeded(reason)) => {
            // Over this instance's quota: the body is read (and dropped) before the refusal, so
            // that the sender surely gets the answer rather than a cut connection.
            while let Some(Ok(_)) = payload.next().await {}
            // Shown in this instance's status too (`refused_received`), as the documents it
            // refuses are: its copy of the sharing lacks these bytes.
            state_of(&req)?.sync.note_refused_content(&key, &theirs, &reason);
            return Err(ApiError::QuotaExceeded(reason));
        }
        r => r?,
    };
    let Some(mut received) = begun else {
        return Ok(HttpResponse::Ok().json(json!({"ok": true, "size": null, "present": true})));
    };
    // A sender whose body sends nothing for `files.body_idle_secs` is answered 408, as an
    // upload is: the version is no longer being received (a later transfer may take it) and
    // its quota reservation goes.
    let idle = std::time::Duration::from_secs(state_of(&req)?.config.files.body_idle_secs.max(1));
    loop {
        let next = match tokio::time::timeout(idle, payload.next()).await {
            Ok(next) => next,
            Err(_) => {
                received.abort().await;
                return Err(ApiError::RequestTimeout(format!(
                    "the request body sent nothing for {} s",
                    idle.as_secs()
                )));
            }
        };
        let Some(chunk) = next else { break };
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                received.abort().await;
                return Err(ApiError::bad_request(format!("the body was cut: {e}")));
            }
        };
        if let Err(e) = received.write(chunk).await {
            received.abort().await;
            return Err(e.into());
        }
    }
    let size = files.finish_received(received).await?;
    // After the commit: a process killed in between has the content and no such line (the
    // crash test, tests/folder_crash.rs, accounts for it from the objects on disk).
    tracing::info!(instance = %inst.0.domain, sharing = %s.id(), member = from.get(), file = %id, version = %vfs_id,
        size, "received file content");
    state_of(&req)?.sync.note_taken_content(&key, &theirs);
    // The owner relays what a recipient sent to the other members: wake the senders.
    state_of(&req)?.content.wake();
    Ok(HttpResponse::Created().json(json!({"ok": true, "size": size})))
}
