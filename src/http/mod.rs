//! The HTTP layer: routes, extractors (the instance chosen by `Host`, the caller's permissions),
//! request-body and query-string helpers that turn every malformed input into a JSON 4xx.
//! Handlers read route parameters (ids, names) with [`path::param`], which decodes them exactly
//! once, never with `match_info()` or actix's `web::Path` (see the `path` module for why).

pub mod callers;
pub mod content;
pub mod data;
pub mod error;
pub mod files;
pub mod home;
pub mod invitations;
pub mod limits;
pub mod login;
pub mod path;
pub mod permissions;
pub mod realtime;
pub mod requests;
pub mod sharings;
pub mod stream;

use std::collections::{BTreeMap, HashMap};
use std::future::{ready, Ready};
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::auth::{Audience, Claims, PermissionSet};
use crate::config::Config;
use crate::instance::{Domain, Instance, Registry};
use crate::sharing;
use crate::sync::manager::SyncManager;
pub use error::{ApiError, ApiResult};

/// What the handlers reach, each part built once by the application and handed down: the
/// configuration, the instance registry, the sharing layer's context, and the replication
/// manager (for its per-peer states and to wake it).
pub struct AppState {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub sharing: Arc<sharing::Context>,
    pub sync: Arc<SyncManager>,
    pub files: Arc<crate::files::FilesRegistry>,
    /// The realtime readers, one per instance with subscribers.
    pub realtime: Arc<realtime::Hubs>,
    pub content: Arc<crate::sync::content::ContentSender>,
    /// Writes of several steps, run to their end.
    pub writes: Writes,
}

/// Writes of several steps, run to their end: actix drops a handler's future when its client
/// goes away (a closed connection, a peer's request deadline), and a write cut between its
/// steps would leave them half done for good. A received removal's dissociated copy, an
/// owner's settlement, a moved directory's subtree, a revocation's notices follow their first
/// write in separate steps, and a retry would not bring them back, since that write is already
/// there. So such a write runs on a task of its own, on the application's runtime (not on the
/// actix worker's, which goes as soon as the worker stops), and stopping the application
/// waits for it ([`Writes::drain`]).
#[derive(Clone)]
pub struct Writes {
    runtime: tokio::runtime::Handle,
    tracker: tokio_util::task::TaskTracker,
}

impl Writes {
    /// Writes run on `runtime`: the application's, outliving its HTTP workers.
    pub fn new(runtime: tokio::runtime::Handle) -> Writes {
        Writes { runtime, tracker: tokio_util::task::TaskTracker::new() }
    }

    /// Runs `work` to its end, whether or not the caller still waits for it; its outcome.
    pub async fn to_completion<T, E, F>(&self, work: F) -> ApiResult<T>
    where
        T: Send + 'static,
        E: Send + 'static,
        ApiError: From<E>,
        F: std::future::Future<Output = Result<T, E>> + Send + 'static,
    {
        match self.tracker.spawn_on(work, &self.runtime).await {
            Ok(outcome) => Ok(outcome?),
            Err(e) => Err(ApiError::Internal(anyhow::anyhow!("a write stopped before its end: {e}"))),
        }
    }

    /// Waits up to `grace` for the writes under way (and any begun meanwhile) to end; whether
    /// they all did. Those still running go on after it.
    pub async fn drain(&self, grace: std::time::Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait()).await.is_ok()
    }
}

impl AppState {
    /// A sharing operation on `inst`, run to its end ([`Writes::to_completion`]): `work` gets
    /// the sharing layer's context and the instance.
    pub async fn sharing_write<T, F, Fut>(&self, inst: &Arc<Instance>, work: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<sharing::Context>, Arc<Instance>) -> Fut,
        Fut: std::future::Future<Output = Result<T, sharing::SharingError>> + Send + 'static,
    {
        self.writes.to_completion(work(self.sharing.clone(), inst.clone())).await
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/status", web::get().to(status))
        // First: actix-web tries each route in turn, by a regular expression for those with
        // parameters, and a folder's content comes as one request per file (about 2 % of the
        // receiving server's CPU in a folder went to trying the routes before these).
        // Nothing before them could take these paths.
        .configure(content::routes)
        .configure(login::routes)
        .configure(data::routes)
        .configure(files::routes)
        .configure(permissions::routes)
        // Before `/sharings/{id}`, which would take `requests` for an id.
        .configure(requests::routes)
        .configure(invitations::routes)
        .configure(sharings::routes)
        .configure(realtime::routes)
        .configure(home::routes)
        .default_service(web::to(not_found));
}

/// `GET /status` — answers once the server is ready.
async fn status() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn not_found() -> ApiResult<HttpResponse> {
    Err(ApiError::NotFound("no such route".into()))
}

/// The instance named by the request's `Host` header (404 JSON when this server doesn't host it).
pub struct Inst(pub Arc<Instance>);

impl FromRequest for Inst {
    type Error = ApiError;
    type Future = Ready<Result<Inst, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(instance_of(req).map(Inst))
    }
}

fn instance_of(req: &HttpRequest) -> ApiResult<Arc<Instance>> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("application state missing")))?;
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .ok_or_else(|| ApiError::bad_request("missing Host header"))?;
    let unknown = || ApiError::NotFound("no instance for this host".into());
    let domain = Domain::parse(host).map_err(|_| unknown())?;
    state.registry.get(&domain).map_err(instance_unavailable)?.ok_or_else(unknown)
}

/// Why an instance hosted here could not be opened, as an answer: 503 when a newer hearth
/// wrote its store (the schema numbers, not the file's path), else an internal error.
fn instance_unavailable(e: anyhow::Error) -> ApiError {
    match e.chain().find_map(|c| c.downcast_ref::<crate::store::sqlite::NewerSchema>()) {
        Some(newer) => {
            tracing::warn!(error = %newer, "an instance's store was written by a newer hearth: its requests get 503");
            ApiError::NewerData(format!(
                "this instance's data was written by a newer version of hearth (store schema {}, this server reads \
             up to {}): it is left untouched; upgrade hearth to serve it",
                newer.found, newer.supported
            ))
        }
        None => ApiError::Internal(e),
    }
}

/// The bearer token of a request, if any.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The caller of a `/data` or management route: an app or CLI token of this instance with a
/// scope. Tokens of peer instances (audience `access`) are checked by the sharing routes.
pub fn data_caller(inst: &Instance, req: &HttpRequest) -> ApiResult<(Claims, PermissionSet)> {
    let token = bearer(req).ok_or(ApiError::Unauthorized("a bearer token is required"))?;
    let claims = inst
        .keys
        .verify(token, &[Audience::App, Audience::Cli])
        .ok_or(ApiError::Unauthorized("invalid or expired token"))?;
    let perms = claims.permissions().ok_or(ApiError::Unauthorized("invalid or expired token"))?;
    Ok((claims, perms))
}

/// Reads a request body up to `limit` bytes: 413 as soon as the declared or received size is
/// over it, without buffering the rest.
pub async fn read_body(req: &HttpRequest, mut payload: web::Payload, limit: usize) -> ApiResult<web::Bytes> {
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::TooLarge);
    }
    // A declared length is allocated once (a growing buffer copies, and holds up to twice the
    // body while it does).
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Parses a JSON body (serde_json's depth limit of 128 applies).
pub fn parse_json(body: &[u8]) -> ApiResult<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("request body is empty; a JSON document is required"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
}

/// Checks a JSON body and returns its text, unparsed (documents are kept as written: see
/// `store::body`).
pub fn parse_raw(body: &[u8]) -> ApiResult<&RawValue> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("request body is empty; a JSON document is required"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
}

/// A JSON object body's members, their values unparsed; `what` names it in the error.
pub fn parse_raw_object<'a>(body: &'a [u8], what: &str) -> ApiResult<BTreeMap<String, &'a RawValue>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("request body is empty; a JSON document is required"));
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::bad_request(format!("{what} must be a JSON object")),
        _ => ApiError::bad_request(format!("invalid JSON: {e}")),
    })
}

/// A parsed query string with typed accessors that answer 400 on bad values.
pub struct Query(HashMap<String, String>);

impl Query {
    /// The query string's parameters (`application/x-www-form-urlencoded`: `+` is a space,
    /// `%XX` a byte; a name given twice keeps its last value). A value that is not UTF-8 once
    /// decoded is a 400, never silently replaced by U+FFFD (a name `%FF%FE` would otherwise be
    /// stored as "��" and collide with every other such name).
    pub fn of(req: &HttpRequest) -> ApiResult<Query> {
        fn decode(s: &str) -> ApiResult<String> {
            let s = s.replace('+', " ");
            percent_encoding::percent_decode_str(&s)
                .decode_utf8()
                .map(std::borrow::Cow::into_owned)
                .map_err(|_| ApiError::bad_request("the query string is not UTF-8 once decoded"))
        }
        let mut pairs = HashMap::new();
        for part in req.query_string().split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            pairs.insert(decode(k)?, decode(v)?);
        }
        Ok(Query(pairs))
    }

    /// The same, refusing (400) a parameter given twice (`Name=a&Name=b`): for the routes where
    /// one value would silently win over another (`/files`: `Name`, `Type`, `Path`, ...).
    pub fn of_single(req: &HttpRequest) -> ApiResult<Query> {
        let q = Query::of(req)?;
        let mut seen = std::collections::HashSet::new();
        for part in req.query_string().split('&').filter(|p| !p.is_empty()) {
            let key = part.split_once('=').map_or(part, |(k, _)| k);
            let key = percent_encoding::percent_decode_str(&key.replace('+', " ")).decode_utf8_lossy().into_owned();
            if !seen.insert(key.clone()) {
                return Err(ApiError::bad_request(format!("the query parameter {key} is given more than once")));
            }
        }
        Ok(q)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn bool(&self, name: &str) -> ApiResult<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(_) => Err(ApiError::bad_request(format!("{name} must be true or false"))),
        }
    }

    pub fn flag(&self, name: &str) -> ApiResult<bool> {
        Ok(self.bool(name)?.unwrap_or(false))
    }

    pub fn u64(&self, name: &str) -> ApiResult<Option<u64>> {
        self.get(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| ApiError::bad_request(format!("{name} must be a non-negative integer")))
            })
            .transpose()
    }

    /// A JSON-encoded parameter (`keys`, `startkey`, `open_revs`...).
    pub fn json(&self, name: &str) -> ApiResult<Option<Value>> {
        self.get(name)
            .map(|v| serde_json::from_str(v).map_err(|_| ApiError::bad_request(format!("{name} must be JSON"))))
            .transpose()
    }
}

/// The application's state, as every handler reaches it (a 500 only if the server was wired
/// without it, which `app::Core` never does).
pub(crate) fn state_of(req: &HttpRequest) -> ApiResult<&web::Data<AppState>> {
    req.app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("application state missing")))
}

/// A JSON:API answer (`application/vnd.api+json`) that no cache keeps: what the sharing,
/// permission and request routes answer holds states and codes.
pub(crate) fn jsonapi(status: actix_web::http::StatusCode, v: Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/vnd.api+json")
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .body(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handler dropped half-way (its client gone) does not stop the write it began: the
    /// write's remaining steps run, and end.
    #[tokio::test]
    async fn a_write_ends_when_the_request_that_began_it_is_dropped() {
        let (began, began_rx) = tokio::sync::oneshot::channel();
        let (release, release_rx) = tokio::sync::oneshot::channel::<()>();
        let (ended, ended_rx) = tokio::sync::oneshot::channel();
        let writes = Writes::new(tokio::runtime::Handle::current());
        let w = writes.clone();
        let handler = tokio::spawn(async move {
            w.to_completion(async move {
                let _ = began.send(());
                let _ = release_rx.await;
                let _ = ended.send("the last step");
                Ok::<_, ApiError>(())
            })
            .await
        });
        began_rx.await.expect("the write began");
        handler.abort();
        assert!(handler.await.is_err_and(|e| e.is_cancelled()), "the handler was dropped");
        release.send(()).expect("the write is still there after its handler was dropped");
        // Stopping waits for it.
        assert!(writes.drain(std::time::Duration::from_secs(10)).await, "the write ended in time");
        assert_eq!(ended_rx.await.expect("the write ran to its end"), "the last step");
    }
}
