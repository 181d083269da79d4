//! `/files`: Cozy's files API (`docs/files.md` of cozy-stack) over [`crate::files`]. Uploads
//! stream the request body into the content store chunk by chunk; downloads stream content
//! out, with `Range` (206), `ETag`/`If-None-Match` (304) and `Content-Disposition`.
//!
//! Who may call: an app or CLI token whose scope covers `io.cozy.files` with the route's verb,
//! or a sharecode of a link on `io.cozy.files`, which reads only. A rule limited to some ids
//! covers those files and directories and everything under those directories (Cozy's rule for
//! `io.cozy.files` permissions), judged on the item's place in the tree when asked.

use std::sync::Arc;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use futures_util::StreamExt;
use hearth_replicator::rev::Rev;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{parse_json, path, read_body, state_of, ApiError, ApiResult, AppState, Inst, Query};
use crate::auth::{PermissionSet, Reach, Verb};
use crate::files::{self, Files, FilesError, Item, Kind, Patch, UploadSpec, UploadTarget, ROOT_ID, TRASH_ID};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource(["/files", "/files/"]).route(web::post().to(create_at_root)))
        .service(
            web::resource("/files/metadata")
                .route(web::get().to(metadata_by_path))
                .route(web::head().to(metadata_by_path)),
        )
        .service(
            web::resource("/files/download")
                .route(web::get().to(download_by_path))
                .route(web::head().to(download_by_path)),
        )
        .service(
            web::resource("/files/download/{id}")
                .route(web::get().to(download_by_id))
                .route(web::head().to(download_by_id)),
        )
        .service(web::resource("/files/trash").route(web::get().to(list_trash)).route(web::delete().to(empty_trash)))
        .service(web::resource("/files/trash/{id}").route(web::post().to(restore)).route(web::delete().to(destroy)))
        .service(
            web::resource("/files/{id}")
                .route(web::get().to(get_one))
                .route(web::head().to(get_one))
                .route(web::post().to(create))
                .route(web::put().to(replace))
                .route(web::patch().to(patch))
                .route(web::delete().to(trash)),
        );
}

impl From<FilesError> for ApiError {
    fn from(e: FilesError) -> Self {
        match e {
            FilesError::NotFound(r) => ApiError::NotFound(r),
            FilesError::BadRequest(r) => ApiError::BadRequest(r),
            FilesError::Conflict(r) => ApiError::ConflictWith(r),
            FilesError::Forbidden(r) => ApiError::Forbidden(r),
            FilesError::Precondition(r) => ApiError::PreconditionFailed(r),
            FilesError::QuotaExceeded(r) => ApiError::QuotaExceeded(r),
            FilesError::BadRange => ApiError::bad_request("range not satisfiable"),
            FilesError::Store(e) => e.into(),
            FilesError::Content(files::ContentError::Full(e)) => {
                ApiError::Internal(e.context(std::io::Error::from(std::io::ErrorKind::StorageFull)))
            }
            FilesError::Content(files::ContentError::Unavailable(e)) => ApiError::Unavailable(e),
            FilesError::Content(e) => ApiError::Internal(e.into()),
            FilesError::Internal(e) => ApiError::Internal(e),
        }
    }
}

/// Who is calling and what they may do.
struct Caller {
    perms: PermissionSet,
    /// A sharecode: reads only.
    link: bool,
}

impl Caller {
    async fn of(inst: &Inst, req: &HttpRequest) -> ApiResult<Caller> {
        let (perms, link) = super::permissions::files_permissions(&inst.0, req).await?;
        Ok(Caller { perms, link })
    }

    /// Refuses unless `verb` is allowed on the item (or directory) with this lineage (the item
    /// first, then its ancestors).
    ///
    /// For a link (a sharecode) whatever lies outside what it covers does not exist: the answer
    /// is the 404 of an id that names nothing (`no file or directory ID`, the same body), for
    /// every verb, so that a link holder cannot tell which ids exist. A link never reaches into
    /// the trash either: trashing a linked item cuts the link until it is restored (as a
    /// deleted item would). Inside its scope a link only reads (403 for any other verb).
    /// A token (the owner's apps) with a narrower scope gets the 403 of its scope.
    fn check<'a>(&self, verb: Verb, lineage: impl IntoIterator<Item = &'a str>) -> ApiResult<()> {
        let lineage: Vec<&str> = lineage.into_iter().collect();
        let doctype = files::doctype();
        if self.link {
            let id = lineage.first().copied().unwrap_or_default();
            let hidden = || Err(ApiError::NotFound(format!("no file or directory {id}")));
            if lineage.contains(&files::TRASH_ID) {
                return hidden();
            }
            let covered = match self.perms.reach(&doctype, Verb::Get) {
                Reach::All => true,
                Reach::None => return Err(ApiError::Forbidden(format!("no Get access to {}", files::DOCTYPE))),
                Reach::Ids(ids) => lineage.iter().any(|id| ids.iter().any(|a| a == id)),
            };
            if !covered {
                return hidden();
            }
            if verb != Verb::Get {
                return Err(ApiError::Forbidden("a link gives read-only access to files".into()));
            }
            return Ok(());
        }
        match self.perms.reach(&doctype, verb) {
            Reach::All => Ok(()),
            Reach::None => Err(ApiError::Forbidden(format!("no {verb:?} access to {}", files::DOCTYPE))),
            Reach::Ids(ids) => {
                if lineage.iter().any(|id| ids.iter().any(|a| a == id)) {
                    Ok(())
                } else {
                    Err(ApiError::Forbidden(format!("no {verb:?} access to this file or directory")))
                }
            }
        }
    }
}

impl Caller {
    /// The item at a path, for this caller: what it may not read answers exactly as what is
    /// not there (404), so a link or a narrow token cannot probe the rest of the tree.
    async fn at_path(&self, files: &Files, path: &str) -> ApiResult<Item> {
        let hidden = || ApiError::NotFound("no such file or directory".into());
        match files.by_path(path).await {
            Ok(item) => match self.check(Verb::Get, item.lineage()) {
                Ok(()) => Ok(item),
                Err(ApiError::Forbidden(_) | ApiError::NotFound(_)) => Err(hidden()),
                Err(e) => Err(e),
            },
            Err(FilesError::NotFound(_)) => Err(hidden()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The reason of the 403 a change inside a folder shared with this instance read-only gets.
pub const READ_ONLY_SHARED: &str = "this folder is shared with you read-only";

/// The roots of the folders shared with this instance read-only (see
/// `sharing::service::read_only_roots`): a change at or below one through `/files` is refused
/// with a 403 ([`READ_ONLY_SHARED`]) and changes nothing, since the owner would refuse it and
/// the member's tree would never match the owner's again (nextcloud/server#17819). Trashing the
/// root itself stays allowed: it ends the sharing here (`service::trashing`).
struct ReadOnlyRoots(Vec<String>);

impl ReadOnlyRoots {
    async fn of(req: &HttpRequest, inst: &Inst) -> ApiResult<ReadOnlyRoots> {
        Ok(ReadOnlyRoots(crate::sharing::service::read_only_roots(&state_of(req)?.sharing, &inst.0).await?))
    }

    /// Refuses when one of `lineage` (an item first, then its ancestors) is a read-only root.
    fn check<'a>(&self, lineage: impl IntoIterator<Item = &'a str>) -> ApiResult<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        if lineage.into_iter().any(|id| self.0.iter().any(|r| r == id)) {
            return Err(ApiError::Forbidden(READ_ONLY_SHARED.into()));
        }
        Ok(())
    }

    /// Refuses restoring `item` from the trash when the directory it goes back to (its
    /// `restore_path`, or the nearest existing directory above it, which `Files::restore`
    /// makes the rest under) is in a read-only shared folder.
    async fn check_restore(&self, files: &Files, item: &Item) -> ApiResult<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut path = item.body.get("restore_path").and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        loop {
            if path.is_empty() || path == "/" {
                return Ok(());
            }
            match files.by_path(&path).await {
                Ok(dir) => return self.check(dir.lineage()),
                Err(FilesError::NotFound(_) | FilesError::BadRequest(_)) => {}
                Err(e) => return Err(e.into()),
            }
            path = match path.rfind('/') {
                Some(i) => path[..i].to_owned(),
                None => String::new(),
            };
        }
    }
}

async fn files_of(req: &HttpRequest, inst: &Inst) -> ApiResult<Arc<Files>> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("application state missing")))?;
    Ok(state.files.of(&inst.0).await?)
}

fn id_param(req: &HttpRequest) -> ApiResult<String> {
    let id = path::param(req, "id")?;
    if id.is_empty() || id.len() > crate::store::doc::MAX_ID_LEN || id.chars().any(char::is_control) {
        return Err(ApiError::bad_request("invalid file id"));
    }
    Ok(id)
}

/// `{"data": …, "included": […], "links": …, "meta": …}`, documents embedded as their text.
#[derive(Serialize)]
struct Answer {
    data: Box<RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    included: Option<Vec<Box<RawValue>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    links: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<Value>,
}

fn jsonapi(status: StatusCode, answer: &Answer) -> ApiResult<HttpResponse> {
    let text = serde_json::to_string(answer).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(HttpResponse::build(status).content_type("application/vnd.api+json").body(text))
}

fn one(status: StatusCode, item: &Item) -> ApiResult<HttpResponse> {
    let mut resp = jsonapi(status, &Answer { data: item.resource(), included: None, links: None, meta: None })?;
    if let Ok(v) = header::HeaderValue::from_str(&format!("/files/{}", files::encode_id(&item.id))) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

fn page_limit(q: &Query) -> ApiResult<usize> {
    match q.get("page[limit]") {
        None => Ok(30),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| ApiError::bad_request("page[limit] must be 1 to 1000")),
    }
}

/// An item, and for a directory a page of its children (`included`, `relationships.contents`,
/// `links.next`, `meta.count`), as Cozy answers `GET /files/:id`.
async fn show(files: &Files, caller: &Caller, item: Item, q: &Query) -> ApiResult<HttpResponse> {
    caller.check(Verb::Get, item.lineage())?;
    if item.kind() == Kind::File {
        return one(StatusCode::OK, &item);
    }
    let limit = page_limit(q)?;
    let (children, next, count) = files.children(&item, q.get("page[cursor]"), limit).await?;
    let refs: Vec<Value> = children.iter().map(|c| json!({"type": files::DOCTYPE, "id": c.id})).collect();
    let resource: Value = serde_json::from_str(item.resource().get()).unwrap_or(Value::Null);
    // The directory's own members are hearth's (no client JSON besides tags): a Value is fine.
    let mut data = resource;
    data["relationships"]["contents"] = json!({"data": refs});
    let links = next.map(|cursor| {
        let query = serde_urlencoded::to_string([("page[cursor]", cursor), ("page[limit]", limit.to_string())])
            .unwrap_or_default();
        json!({"next": format!("/files/{}?{query}", files::encode_id(&item.id))})
    });
    let answer = Answer {
        data: crate::files::model::raw_text(&data.to_string()),
        included: Some(children.iter().map(Item::resource).collect()),
        links,
        meta: Some(json!({"count": count})),
    };
    jsonapi(StatusCode::OK, &answer)
}

/// `GET /files/:id` — a file's metadata, or a directory with a page of its children
/// (`page[limit]`, default 30, at most 1000; `page[cursor]` from `links.next`). `HEAD` answers
/// the same status and headers (`Content-Length` of the JSON included), without the body
/// (RFC 9110 §9.3.2).
async fn get_one(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let caller = Caller::of(&inst, &req).await?;
    let files = files_of(&req, &inst).await?;
    let item = files.get(&id_param(&req)?).await?;
    show(&files, &caller, item, &Query::of_single(&req)?).await
}

/// `GET /files/metadata?Path=/a/b` — the same, by absolute path.
async fn metadata_by_path(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let caller = Caller::of(&inst, &req).await?;
    let files = files_of(&req, &inst).await?;
    let q = Query::of_single(&req)?;
    let p = q.get("Path").ok_or_else(|| ApiError::bad_request("Path is required"))?;
    let item = caller.at_path(&files, p).await?;
    show(&files, &caller, item, &q).await
}

fn tags_param(q: &Query) -> ApiResult<Option<Vec<String>>> {
    q.get("Tags")
        .map(|t| {
            let tags: Vec<String> = t.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
            if tags.len() > 100 || tags.iter().any(|t| t.len() > 255 || t.chars().any(char::is_control)) {
                return Err(ApiError::bad_request("Tags: at most 100 tags of at most 255 bytes"));
            }
            Ok(tags)
        })
        .transpose()
}

fn date_param(q: &Query, name: &str) -> ApiResult<Option<String>> {
    q.get(name).map(|d| files::check_date(d).map_err(ApiError::from)).transpose()
}

/// `If-Match` (RFC 9110 §13.1.1): a revision, quoted or not; `*` matches any current
/// representation (no condition); a weak tag (`W/"..."`) never matches under the strong
/// comparison `If-Match` uses: 412.
fn if_match(req: &HttpRequest) -> ApiResult<Option<Rev>> {
    let Some(v) = req.headers().get(header::IF_MATCH) else { return Ok(None) };
    let s = v.to_str().map_err(|_| ApiError::bad_request("If-Match must be a revision"))?.trim();
    if s == "*" {
        return Ok(None);
    }
    if s.starts_with("W/") {
        return Err(ApiError::PreconditionFailed("a weak entity tag never matches If-Match (RFC 9110)".into()));
    }
    s.trim_matches('"').parse::<Rev>().map(Some).map_err(|_| ApiError::bad_request("If-Match must be a revision"))
}

/// The parameters of an upload, from its query string and headers: the body's length is its
/// `Content-Length`, unless it is chunked (then it may grow up to the quota).
fn upload_spec(req: &HttpRequest, q: &Query) -> ApiResult<UploadSpec> {
    let h = req.headers();
    let declared_size = match h.get(header::CONTENT_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("bad Content-Length"))?,
        ),
        None => None,
    };
    let chunked = h
        .get(header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    // Without either header an HTTP/1.1 request has no body (RFC 9112 §6.3): zero bytes.
    let declared_size = if declared_size.is_none() && !chunked { Some(0) } else { declared_size };
    let declared_md5 = match h.get("Content-MD5") {
        None => None,
        Some(v) => {
            let bad = || ApiError::bad_request("Content-MD5 must be the base64 of a 16-byte MD5 (RFC 1864)");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.to_str().map_err(|_| bad())?.trim())
                .map_err(|_| bad())?;
            Some(<[u8; 16]>::try_from(bytes.as_slice()).map_err(|_| bad())?)
        }
    };
    Ok(UploadSpec {
        declared_size,
        declared_md5,
        content_type: h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned),
        tags: tags_param(q)?,
        executable: q.bool("Executable")?,
        created_at: date_param(q, "CreatedAt")?,
        updated_at: date_param(q, "UpdatedAt")?,
    })
}

/// Streams the body into a new content version, then switches the file to it. A body that
/// sends nothing for `files.body_idle_secs` ends the upload with a 408; the temporary content
/// goes with the dropped upload.
async fn upload(
    req: &HttpRequest,
    files: &Files,
    target: UploadTarget,
    spec: UploadSpec,
    mut payload: web::Payload,
) -> ApiResult<Item> {
    let idle = std::time::Duration::from_secs(state_of(req)?.config.files.body_idle_secs.max(1));
    let mut up = files.begin_upload(target, spec).await?;
    loop {
        let next = tokio::time::timeout(idle, payload.next())
            .await
            .map_err(|_| ApiError::RequestTimeout(format!("the request body sent nothing for {} s", idle.as_secs())))?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
        up.write(chunk).await?;
    }
    Ok(files.finish_upload(up).await?)
}

/// `POST /files/` — [`create`] in the root.
async fn create_at_root(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    create_in(inst, req, payload, ROOT_ID.to_owned()).await
}

/// `POST /files/:dir-id?Type=file|directory&Name=…` — uploads a file (`Tags`, `Executable`,
/// `CreatedAt`, `UpdatedAt`; headers `Content-Length` or chunked, `Content-MD5`,
/// `Content-Type`) or creates a directory (`Tags`, `CreatedAt`). 201; 404 no such directory,
/// 409 name taken, 412 `Content-MD5` mismatch, 413 over the quota.
async fn create(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let dir_id = id_param(&req)?;
    create_in(inst, req, payload, dir_id).await
}

async fn create_in(inst: Inst, req: HttpRequest, payload: web::Payload, dir_id: String) -> ApiResult<HttpResponse> {
    let caller = Caller::of(&inst, &req).await?;
    let q = Query::of_single(&req)?;
    let kind = q.get("Type").ok_or_else(|| ApiError::bad_request("Type is required: file or directory"))?;
    let name = q.get("Name").ok_or_else(|| ApiError::bad_request("Name is required"))?.to_owned();
    crate::files::model::check_name(&name).map_err(ApiError::BadRequest)?;
    let files = files_of(&req, &inst).await?;
    let dir = files.get(&dir_id).await?;
    caller.check(Verb::Post, dir.lineage())?;
    ReadOnlyRoots::of(&req, &inst).await?.check(dir.lineage())?;
    let item = match kind {
        "directory" => files.create_dir(&dir_id, &name, tags_param(&q)?, date_param(&q, "CreatedAt")?).await?,
        "file" => {
            let spec = upload_spec(&req, &q)?;
            upload(&req, &files, UploadTarget::New { dir_id, name }, spec, payload).await?
        }
        _ => return Err(ApiError::bad_request("Type must be file or directory")),
    };
    one(StatusCode::CREATED, &item)
}

/// `PUT /files/:file-id` — replaces a file's content (same headers as an upload, optional
/// `If-Match`: 412 when the file moved on). The old content stays until the new one is whole.
async fn replace(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let caller = Caller::of(&inst, &req).await?;
    let id = id_param(&req)?;
    let files = files_of(&req, &inst).await?;
    let item = files.get(&id).await?;
    caller.check(Verb::Put, item.lineage())?;
    ReadOnlyRoots::of(&req, &inst).await?.check(item.lineage())?;
    let q = Query::of_single(&req)?;
    let spec = upload_spec(&req, &q)?;
    let item = upload(&req, &files, UploadTarget::Replace { id, if_match: if_match(&req)? }, spec, payload).await?;
    one(StatusCode::OK, &item)
}

fn max_body(req: &HttpRequest) -> usize {
    req.app_data::<web::Data<AppState>>().map_or(1024 * 1024, |s| s.config.max_http_request_size.min(1024 * 1024))
}

/// The text of `data.attributes.KEY` in a JSON:API request body, exactly as sent.
fn raw_attribute(body: &[u8], key: &str) -> ApiResult<Box<RawValue>> {
    #[derive(serde::Deserialize)]
    struct Doc<'a> {
        #[serde(borrow)]
        data: Data<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        attributes: std::collections::HashMap<String, &'a RawValue>,
    }
    let doc: Doc<'_> = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    doc.data
        .attributes
        .get(key)
        .map(|v| (*v).to_owned())
        .ok_or_else(|| ApiError::bad_request(format!("{key} is missing")))
}

/// `PATCH /files/:id` — JSON:API `{"data": {"attributes": {"name", "dir_id", "tags",
/// "executable", "updated_at", "metadata"}}}`: renames, moves (never into itself or below), retags.
/// Optional `If-Match`.
async fn patch(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let caller = Caller::of(&inst, &req).await?;
    let id = id_param(&req)?;
    let bytes = read_body(&req, payload, max_body(&req)).await?;
    let body = parse_json(&bytes)?;
    let attrs = body
        .get("data")
        .and_then(|d| d.get("attributes"))
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("the body must be {\"data\": {\"attributes\": {...}}}"))?;
    let string = |k: &str| -> ApiResult<Option<String>> {
        match attrs.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::bad_request(format!("{k} must be a string"))),
        }
    };
    let tags = match attrs.get("tags") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) if items.len() <= 100 => Some(
            items
                .iter()
                .map(|t| match t {
                    Value::String(s) if s.len() <= 255 && !s.chars().any(char::is_control) => Ok(s.clone()),
                    _ => Err(ApiError::bad_request("tags must be strings of at most 255 bytes")),
                })
                .collect::<ApiResult<Vec<_>>>()?,
        ),
        Some(_) => return Err(ApiError::bad_request("tags must be an array of at most 100 strings")),
    };
    let executable = match attrs.get("executable") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(ApiError::bad_request("executable must be true or false")),
    };
    // `metadata` (Cozy's free-form object: EXIF, page count...) is kept as written: key order
    // and numbers of any size, so it is taken from the request's text, not from `attrs`.
    let metadata = match attrs.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(_)) => Some(raw_attribute(&bytes, "metadata")?),
        Some(_) => return Err(ApiError::bad_request("metadata must be an object")),
    };
    let p = Patch {
        metadata,
        name: string("name")?,
        dir_id: string("dir_id")?,
        tags,
        executable,
        updated_at: string("updated_at")?.map(|d| files::check_date(&d)).transpose()?,
        if_match: if_match(&req)?,
    };
    let files = files_of(&req, &inst).await?;
    let item = files.get(&id).await?;
    caller.check(Verb::Patch, item.lineage())?;
    let read_only = ReadOnlyRoots::of(&req, &inst).await?;
    read_only.check(item.lineage())?;
    if let Some(dir) = &p.dir_id {
        if Some(dir.as_str()) != item.dir_id() {
            let target = files.get(dir).await?;
            caller.check(Verb::Patch, target.lineage())?;
            read_only.check(target.lineage())?;
        }
    }
    let item = state_of(&req)?.writes.to_completion(async move { files.patch(&id, p).await }).await?;
    one(StatusCode::OK, &item)
}

/// `DELETE /files/:id` — moves the item to the trash (optional `If-Match`); 200 with the item.
async fn trash(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let caller = Caller::of(&inst, &req).await?;
    let id = id_param(&req)?;
    let files = files_of(&req, &inst).await?;
    let item = files.get(&id).await?;
    caller.check(Verb::Delete, item.lineage())?;
    // The root itself may go (the sharing ends here), nothing below it.
    ReadOnlyRoots::of(&req, &inst).await?.check(item.lineage().skip(1))?;
    let if_match = if_match(&req)?;
    // A sharing whose root goes to the trash ends first (see `service::trashing`); a trash
    // that will be refused anyway (already there, stale `If-Match`) ends none.
    // The root and the trash themselves are refused by `Files::trash`: they end nothing.
    let ends_sharing = item.id != ROOT_ID
        && item.id != TRASH_ID
        && !item.trashed()
        && if_match.as_ref().is_none_or(|r| *r == item.rev);
    let doc_id = crate::store::DocId::parse(&id).map_err(|_| ApiError::bad_request("invalid file id"))?;
    let state = state_of(&req)?;
    let (cx, inst) = (state.sharing.clone(), inst.0.clone());
    let item = state
        .writes
        .to_completion(async move {
            if ends_sharing {
                crate::sharing::service::trashing(&cx, &inst, &files, &doc_id).await?;
            }
            Ok::<_, ApiError>(files.trash(&id, if_match).await?)
        })
        .await?;
    one(StatusCode::OK, &item)
}

/// `GET /files/trash` — the items in the trash, paginated like a directory's children.
async fn list_trash(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let caller = Caller::of(&inst, &req).await?;
    let files = files_of(&req, &inst).await?;
    let trash = files.get(TRASH_ID).await?;
    caller.check(Verb::Get, trash.lineage())?;
    let q = Query::of_single(&req)?;
    let limit = page_limit(&q)?;
    let (children, next, count) = files.children(&trash, q.get("page[cursor]"), limit).await?;
    let list: Vec<Box<RawValue>> = children.iter().map(Item::resource).collect();
    let data = crate::files::model::raw_text(&serde_json::to_string(&list).map_err(|e| ApiError::Internal(e.into()))?);
    let links = next.map(|cursor| {
        let query = serde_urlencoded::to_string([("page[cursor]", cursor), ("page[limit]", limit.to_string())])
            .unwrap_or_default();
        json!({"next": format!("/files/trash?{query}")})
    });
    jsonapi(StatusCode::OK, &Answer { data, included: None, links, meta: Some(json!({"count": count})) })
}

/// `DELETE /files/trash` — destroys everything in the trash; 204.
async fn empty_trash(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let caller = Caller::of(&inst, &req).await?;
    let files = files_of(&req, &inst).await?;
    let trash = files.get(TRASH_ID).await?;
    caller.check(Verb::Delete, trash.lineage())?;
    state_of(&req)?.writes.to_completion(async move { files.empty_trash().await }).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /files/trash/:id` — restores an item of the trash to where it was (its directories
/// made again if gone, a suffix added if its name is taken); 200 with the item.
async fn restore(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let caller = Caller::of(&inst, &req).await?;
    let id = id_param(&req)?;
    let files = files_of(&req, &inst).await?;
    let item = files.get(&id).await?;
    caller.check(Verb::Post, item.lineage())?;
    ReadOnlyRoots::of(&req, &inst).await?.check_restore(&files, &item).await?;
    let item = state_of(&req)?.writes.to_completion(async move { files.restore(&id).await }).await?;
    one(StatusCode::OK, &item)
}

/// `DELETE /files/trash/:id` — destroys an item of the trash and its content; 204.
async fn destroy(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let caller = Caller::of(&inst, &req).await?;
    let id = id_param(&req)?;
    let files = files_of(&req, &inst).await?;
    let item = files.get(&id).await?;
    caller.check(Verb::Delete, item.lineage())?;
    state_of(&req)?.writes.to_completion(async move { files.destroy(&id).await }).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /files/download/:file-id` — the content (see [`serve`]).
async fn download_by_id(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let caller = Caller::of(&inst, &req).await?;
    let files = files_of(&req, &inst).await?;
    let item = files.get(&id_param(&req)?).await?;
    serve(&inst, &files, &caller, &req, item).await
}

/// `GET /files/download?Path=/a/b.txt` — the content, by path.
async fn download_by_path(inst: Inst, req: HttpRequest) -> ApiResult<HttpResponse> {
    let caller = Caller::of(&inst, &req).await?;
    let files = files_of(&req, &inst).await?;
    let q = Query::of_single(&req)?;
    let p = q.get("Path").ok_or_else(|| ApiError::bad_request("Path is required"))?;
    let item = caller.at_path(&files, p).await?;
    serve(&inst, &files, &caller, &req, item).await
}

/// The one byte range of a `Range: bytes=…` header (RFC 9110 §14.1.2), as `start..end`;
/// `None` to serve the whole content (no header, several ranges or a malformed one, which the
/// RFC lets a server ignore); `Err` when it cannot be satisfied (416).
fn byte_range(req: &HttpRequest, size: u64) -> Result<Option<std::ops::Range<u64>>, ()> {
    let Some(spec) = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if set.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return Ok(None);
    };
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        // A suffix: the last N bytes.
        let Ok(n) = last.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 {
            return Err(());
        }
        size.saturating_sub(n)..size
    } else {
        let Ok(start) = first.parse::<u64>() else {
            return Ok(None);
        };
        let end = if last.is_empty() {
            size
        } else {
            match last.parse::<u64>() {
                Ok(l) if l >= start => l.saturating_add(1).min(size),
                _ => return Ok(None),
            }
        };
        start..end
    };
    if range.start >= size {
        return Err(());
    }
    Ok(Some(range))
}

/// `filename` (ASCII, quotes and backslashes replaced) and `filename*` (RFC 8187 UTF-8).
fn disposition(kind: &str, name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| if c.is_ascii() && !c.is_ascii_control() && c != '"' && c != '\\' { c } else { '_' })
        .collect();
    let encoded = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// The policy of every download: whatever a file holds, it runs no script and loads nothing,
/// in a sandbox of its own origin (images, media and plain text still display).
pub const DOWNLOAD_CSP: &str =
    "default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'; sandbox";

/// The reason of the 409 a download answers while a file received by sharing has its metadata
/// here but not yet its content (see `files::received`): never partial or other bytes.
pub const CONTENT_PENDING: &str =
    "this file's content has not arrived on this instance yet (a sharing is still transferring it): retry later";

/// The reason of the 404 a download answers for a file whose content is not here and that no
/// active sharing brings: one received by a sharing that ended (revoked, or left) before its
/// bytes arrived. Never "retry later" for bytes nothing will deliver. Such a file goes to the
/// trash when the sharing ends (`sharing::ended`); this still answers for one the user restored
/// from there, or one whose bytes were lost.
pub const CONTENT_NEVER_ARRIVED: &str =
    "this file's content is not on this instance, and no active sharing brings it (the sharing that brought the \
     file ended before its bytes arrived)";

/// Why the content of `item` (a file) is not here: still on its way (409 [`CONTENT_PENDING`])
/// when an active sharing of files has the file or one of its ancestors as its shared root,
/// or when it is in the trash (a dissociated copy takes the bytes of its version through the
/// sharing it left) while one is active; else it will not come (404 [`CONTENT_NEVER_ARRIVED`]).
async fn content_missing(inst: &Inst, item: &Item) -> ApiError {
    let sharings = match crate::sharing::list(inst.0.store.as_ref()).await {
        Ok(s) => s,
        Err(e) => return e.into(),
    };
    let roots: Vec<&String> = (sharings.iter().filter(|s| s.active).flat_map(|s| s.rules.iter()))
        .filter(|r| r.doctype == files::DOCTYPE && !r.local)
        .flat_map(|r| r.values.iter())
        .collect();
    let under = item.lineage().any(|id| roots.iter().any(|root| *root == id));
    if under || (!roots.is_empty() && item.trashed()) {
        ApiError::ConflictWith(CONTENT_PENDING.into())
    } else {
        ApiError::NotFound(CONTENT_NEVER_ARRIVED.into())
    }
}

/// Streams a file's content: `ETag` (its MD5), 304 for a matching `If-None-Match`, 206 with
/// `Content-Range` for one satisfiable `Range` (honoured only when `If-Range`, if any, names
/// the current ETag), 416 for an unsatisfiable one, `Content-Disposition` inline (attachment
/// with `Dl=1`). `HEAD` answers the same status and headers without reading the content.
async fn serve(inst: &Inst, files: &Files, caller: &Caller, req: &HttpRequest, item: Item) -> ApiResult<HttpResponse> {
    caller.check(Verb::Get, item.lineage())?;
    if item.kind() != Kind::File {
        return Err(ApiError::bad_request("a directory has no content to download"));
    }
    let key =
        item.content_key().ok_or_else(|| ApiError::NotFound("this file's content is not on this instance".into()))?;
    let etag = format!("\"{}\"", item.md5sum().unwrap_or_default());
    let h = req.headers();
    if let Some(inm) = h.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        if inm.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t == etag || t.strip_prefix("W/") == Some(etag.as_str())
        }) {
            return Ok(HttpResponse::NotModified().insert_header((header::ETAG, etag)).finish());
        }
    }
    let size = item.size();
    let q = Query::of_single(req)?;
    // A file that a browser would run (HTML, SVG, XML, scripts) is never shown inline on the
    // instance's origin: stored XSS through an upload (cozy-stack#3435).
    let mime = item.mime();
    let kind = if q.get("Dl") == Some("1") || files::model::is_active_mime(&mime) { "attachment" } else { "inline" };
    let if_range_ok = h.get(header::IF_RANGE).and_then(|v| v.to_str().ok()).is_none_or(|v| v.trim() == etag);
    let range = if if_range_ok { byte_range(req, size) } else { Ok(None) };
    let range = match range {
        Ok(r) => r,
        Err(()) => {
            return Ok(HttpResponse::RangeNotSatisfiable()
                .insert_header((header::CONTENT_RANGE, format!("bytes */{size}")))
                .insert_header((header::ACCEPT_RANGES, "bytes"))
                .json(json!({"error": "range_not_satisfiable", "reason": format!("the file has {size} bytes")})));
        }
    };
    let len = range.as_ref().map_or(size, |r| r.end - r.start);
    let mut resp = match &range {
        Some(r) => {
            let mut b = HttpResponse::PartialContent();
            b.insert_header((header::CONTENT_RANGE, format!("bytes {}-{}/{size}", r.start, r.end - 1)));
            b
        }
        None => HttpResponse::Ok(),
    };
    resp.insert_header((header::ETAG, etag))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::CONTENT_TYPE, mime))
        .insert_header((header::CONTENT_DISPOSITION, disposition(kind, item.name())))
        .insert_header((header::CACHE_CONTROL, "private"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CONTENT_SECURITY_POLICY, DOWNLOAD_CSP));
    if req.method() == actix_web::http::Method::HEAD {
        // The headers a GET would have, `Content-Length` included, and no body: the content is
        // only looked up, not read (a file whose content has not arrived answers as GET does).
        if files.content.size(&key).await.map_err(FilesError::Content)?.is_none() {
            return Err(content_missing(inst, &item).await);
        }
        return Ok(resp.body(actix_web::body::SizedStream::new(
            len,
            futures_util::stream::empty::<Result<bytes::Bytes, std::io::Error>>(),
        )));
    }
    let stream = match files.content.read(&key, range.clone()).await {
        Ok(stream) => stream,
        // A file received by sharing before its content (or whose content is lost): never
        // served as if complete, never a 5xx.
        Err(files::ContentError::NotFound) => {
            tracing::debug!(file = %item.id, content = %key, "download of a file whose content is not here");
            return Err(content_missing(inst, &item).await);
        }
        Err(e) => return Err(FilesError::Content(e).into()),
    };
    Ok(resp.body(actix_web::body::SizedStream::new(len, stream)))
}
