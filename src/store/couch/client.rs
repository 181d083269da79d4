//! HTTP calls to CouchDB and their errors: [`CouchServer`] (the clients, the startup check,
//! database creation), each answer as a [`Reply`], the mapping of transport failures and CouchDB
//! refusals to [`StoreError`], and the requests of one instance's store to its databases
//! (`send_to_db`) and to its meta database.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::*;
use crate::config::CouchConfig;

/// Characters sent as they are in a path segment; everything else is percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

fn unavailable(e: impl Into<anyhow::Error>) -> StoreError {
    StoreError::Unavailable(e.into())
}

pub(super) fn internal(e: impl Into<anyhow::Error>) -> StoreError {
    StoreError::Internal(e.into())
}

pub(super) fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

/// A transport failure: CouchDB unreachable, too slow, or the connection was cut.
pub(super) fn transport(e: reqwest::Error) -> StoreError {
    if e.is_decode() {
        internal(anyhow!(e).context("undecodable answer from CouchDB"))
    } else {
        unavailable(anyhow!(e).context("CouchDB is unreachable"))
    }
}

fn from_couch_rs(e: couch_rs::error::CouchError) -> StoreError {
    let upstream = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<reqwest::Error>());
    let transport_failure = upstream.is_some_and(|r| r.status().is_none() && !r.is_decode());
    match e.status() {
        _ if transport_failure => unavailable(anyhow!("CouchDB is unreachable: {e}")),
        Some(s) if s.is_server_error() => unavailable(anyhow!("CouchDB failed: {e}")),
        _ => internal(anyhow!("CouchDB refused a database operation: {e}")),
    }
}

/// The innermost cause of a store error, for one-line messages.
fn root_cause(e: StoreError) -> String {
    match e {
        StoreError::Unavailable(e) | StoreError::Internal(e) | StoreError::Full(e) => e.root_cause().to_string(),
        other => other.to_string(),
    }
}

/// A CouchDB answer: status and JSON body (`Null` when empty or not JSON).
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) body: Value,
}

impl Reply {
    pub(super) fn field(&self, name: &str) -> &str {
        self.body.get(name).and_then(Value::as_str).unwrap_or("")
    }

    /// CouchDB says "Database does not exist.", PouchDB Server "no_db_file".
    pub(super) fn db_missing(&self) -> bool {
        self.status == StatusCode::NOT_FOUND
            && matches!(self.field("reason"), "Database does not exist." | "no_db_file")
    }

    pub(super) fn unexpected(&self, what: &str) -> StoreError {
        if self.status == StatusCode::INSUFFICIENT_STORAGE {
            return StoreError::Full(anyhow!("CouchDB has no space left ({what})"));
        }
        internal(anyhow!(
            "unexpected CouchDB answer to {what}: {} {} {}",
            self.status,
            self.field("error"),
            self.field("reason")
        ))
    }
}

/// A connection to one CouchDB server (or cluster), shared by every instance's store.
pub struct CouchServer {
    http: reqwest::Client,
    admin: couch_rs::Client,
    /// The server URL without a trailing slash.
    base: String,
    user: Option<String>,
    password: Option<SecretString>,
    pub(super) prefix: String,
    /// Databases known to exist (created, or seen).
    known_dbs: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for CouchServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CouchServer").field("base", &self.base).field("user", &self.user).finish_non_exhaustive()
    }
}

impl CouchServer {
    /// Builds the clients (no request is made; see [`CouchServer::check`]).
    pub fn new(config: &CouchConfig) -> anyhow::Result<CouchServer> {
        let url = config.url.as_deref().context("store = \"couchdb\" needs couchdb.url (HEARTH_COUCHDB__URL)")?;
        let parsed = url::Url::parse(url).with_context(|| format!("couchdb.url {url:?} is not a URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            anyhow::bail!("couchdb.url must be an http:// or https:// URL, not {url:?}");
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            anyhow::bail!("put the CouchDB credentials in couchdb.user and couchdb.password, not in couchdb.url");
        }
        let prefix = config.prefix.clone().unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
        if !valid_db_name(&prefix) || prefix.len() > 40 || prefix.contains('+') {
            anyhow::bail!(
                "couchdb.prefix {prefix:?} must start with a lowercase letter, use a-z 0-9 _ $ ( ) / - and be at \
                 most 40 characters"
            );
        }
        let base = parsed.as_str().trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // Below the keep-alive of the servers met in front of CouchDB or standing in for it
            // (Node's HTTP server, PouchDB Server's, closes idle connections after 5 s; Apache's
            // default is 5 s too): a connection kept longer can be reused just as the server
            // resets it ("Connection reset by peer" on a request that never reached it).
            .pool_idle_timeout(Duration::from_secs(4))
            .build()
            .context("failed to build the CouchDB HTTP client")?;
        let password = config.password.as_ref().map(|p| p.expose_secret().to_owned());
        let mut admin = couch_rs::Client::new_with_timeout(
            &base,
            config.user.as_deref(),
            password.as_deref(),
            Some(REQUEST_TIMEOUT.as_secs()),
        )
        .map_err(|e| anyhow!("failed to build the couch_rs client: {e}"))?;
        let path = parsed.path().trim_end_matches('/');
        if !path.is_empty() {
            // couch_rs replaces the URL path: keep a CouchDB served under a sub-path reachable.
            admin.set_prefix(format!("{path}/"));
        }
        Ok(CouchServer {
            http,
            admin,
            base,
            user: config.user.clone(),
            password: config.password.clone(),
            prefix,
            known_dbs: Mutex::new(HashSet::new()),
        })
    }

    /// Builds the server handle and checks it (see [`CouchServer::check`]) from synchronous
    /// code, in or out of a tokio runtime: the check runs on a helper thread with its own
    /// runtime and its own clients, so no pooled connection outlives that runtime.
    pub fn connect_blocking(config: &CouchConfig) -> anyhow::Result<Arc<CouchServer>> {
        let server = CouchServer::new(config)?;
        let config = config.clone();
        std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async { CouchServer::new(&config)?.check().await })
        })
        .join()
        .map_err(|_| anyhow!("the CouchDB check panicked"))??;
        Ok(Arc::new(server))
    }

    /// Checks that CouchDB answers, accepts the credentials and lets this user create
    /// databases, with messages that say what to fix.
    pub async fn check(&self) -> anyhow::Result<()> {
        // GET at `path`, failing on no answer or refused credentials.
        let get = |path: &'static [&'static str]| async move {
            let reply = self
                .send_raw(Method::GET, path, &[], None)
                .await
                .map_err(|e| anyhow!("CouchDB at {} is unreachable: {}", self.base, root_cause(e)))?;
            if reply.status == StatusCode::UNAUTHORIZED {
                anyhow::bail!(
                    "CouchDB at {} refused the credentials of user {:?} (check couchdb.user and couchdb.password)",
                    self.base,
                    self.user.as_deref().unwrap_or("")
                );
            }
            Ok(reply)
        };
        let root = get(&[]).await?;
        if !root.status.is_success()
            || (root.body.get("couchdb").is_none() && root.body.get("express-pouchdb").is_none())
        {
            anyhow::bail!("{} does not look like CouchDB (GET / answered {})", self.base, root.status);
        }
        let session = get(&["_session"]).await?;
        let roles = session.body.pointer("/userCtx/roles").and_then(Value::as_array).cloned().unwrap_or_default();
        if !roles.iter().any(|r| r == "_admin") {
            match &self.user {
                None => anyhow::bail!(
                    "CouchDB at {} needs credentials: set couchdb.user and couchdb.password (HEARTH_COUCHDB__USER, \
                     HEARTH_COUCHDB__PASSWORD)",
                    self.base
                ),
                Some(u) => anyhow::bail!(
                    "CouchDB user {u:?} is not an admin of {}; hearth creates databases, so it needs one",
                    self.base
                ),
            }
        }
        Ok(())
    }

    /// Deletes every database of an instance (`hearth instances rm`), from synchronous code
    /// (same helper-thread arrangement as [`CouchServer::connect_blocking`]).
    pub fn destroy_instance_blocking(&self, domain: &str) -> anyhow::Result<()> {
        let config = CouchConfig {
            url: Some(self.base.clone()),
            user: self.user.clone(),
            password: self.password.clone(),
            prefix: Some(self.prefix.clone()),
        };
        let domain = domain.to_owned();
        let dropped = std::thread::spawn(move || -> anyhow::Result<Vec<String>> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let server = Arc::new(CouchServer::new(&config)?);
                let store = server.store(&domain, 1);
                let mut names: Vec<String> =
                    store.doctypes().await.map_err(anyhow::Error::from)?.iter().map(|t| store.db_name(t)).collect();
                names.push(store.meta_db.clone());
                for name in &names {
                    match server.admin.destroy_db(name).await {
                        Ok(_) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(anyhow!("failed to delete CouchDB database {name}: {e}")),
                    }
                }
                Ok(names)
            })
        })
        .join()
        .map_err(|_| anyhow!("deleting the CouchDB databases panicked"))??;
        if let Ok(mut k) = self.known_dbs.lock() {
            for name in &dropped {
                k.remove(name);
            }
        }
        Ok(())
    }

    /// A store for one instance.
    pub fn store(self: &Arc<Self>, domain: &str, revs_limit: usize) -> CouchStore {
        CouchStore::new(self.clone(), domain, revs_limit)
    }

    fn url(&self, path: &[&str], query: &[(&str, String)]) -> Result<String, StoreError> {
        let mut url = self.base.clone();
        for seg in path {
            url.push('/');
            url.extend(utf8_percent_encode(seg, SEGMENT));
        }
        if path.is_empty() {
            url.push('/');
        }
        if !query.is_empty() {
            url.push('?');
            url.push_str(&serde_urlencoded::to_string(query).map_err(internal)?);
        }
        Ok(url)
    }

    /// One request, any status.
    async fn send_raw(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Reply, StoreError> {
        let mut req =
            self.http.request(method, self.url(path, query)?).header(reqwest::header::ACCEPT, "application/json");
        if let Some(user) = &self.user {
            req = req.basic_auth(user, self.password.as_ref().map(|p| p.expose_secret()));
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport)?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply { status, body })
    }

    /// One request; server errors are `Unavailable`, refused credentials `Internal` (the
    /// startup check passed, so someone changed them: an operator problem, logged).
    pub(super) async fn send(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Reply, StoreError> {
        let reply = self.send_raw(method, path, query, body).await?;
        if reply.status.is_server_error() {
            return Err(unavailable(anyhow!(
                "CouchDB answered {}: {} {}",
                reply.status,
                reply.field("error"),
                reply.field("reason")
            )));
        }
        if matches!(reply.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(internal(anyhow!(
                "CouchDB refused hearth's request ({}): {}",
                reply.status,
                reply.field("reason")
            )));
        }
        Ok(reply)
    }

    fn knows_db(&self, db: &str) -> bool {
        self.known_dbs.lock().is_ok_and(|k| k.contains(db))
    }

    fn forget_db(&self, db: &str) {
        if let Ok(mut k) = self.known_dbs.lock() {
            k.remove(db);
        }
    }

    /// Creates the database unless it is known to exist.
    pub(super) async fn ensure_db(&self, db: &str, revs_limit: usize) -> Result<(), StoreError> {
        if self.knows_db(db) {
            return Ok(());
        }
        match self.admin.make_db(db).await {
            Ok(_) => {
                tracing::debug!(db, "created CouchDB database");
                // PouchDB Server refuses this (400); CouchDB applies it. Both keep 1000 by default.
                let limit = json!(revs_limit.max(1));
                match self.send(Method::PUT, &[db, "_revs_limit"], &[], Some(&limit)).await {
                    Ok(r) if r.status.is_success() => {}
                    Ok(r) => tracing::debug!(db, status = %r.status, "the server does not support _revs_limit"),
                    Err(e) => return Err(e),
                }
            }
            Err(e) if e.status() == Some(StatusCode::PRECONDITION_FAILED) => {}
            Err(e) => return Err(from_couch_rs(e)),
        }
        if let Ok(mut k) = self.known_dbs.lock() {
            k.insert(db.to_owned());
        }
        Ok(())
    }
}

impl CouchStore {
    /// Sends a request to a database that must exist (writes): creates it first if needed,
    /// and once more if it disappeared since.
    pub(super) async fn send_to_db(
        &self,
        db: &str,
        method: Method,
        rest: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Reply, StoreError> {
        let mut path = vec![db];
        path.extend_from_slice(rest);
        for attempt in 0..2 {
            self.server.ensure_db(db, self.revs_limit).await?;
            let reply = self.server.send(method.clone(), &path, query, body).await?;
            if reply.db_missing() && attempt == 0 {
                self.server.forget_db(db);
                continue;
            }
            return Ok(reply);
        }
        Err(internal(anyhow!("database {db} keeps disappearing")))
    }

    /// `_all_docs` of the meta database between two keys, with documents.
    pub(super) async fn meta_range(
        &self,
        start: &str,
        end: &str,
        descending: bool,
        limit: usize,
    ) -> Result<Vec<(String, Value)>, StoreError> {
        let query = [
            ("startkey", json_key(start)),
            ("endkey", json_key(end)),
            ("descending", descending.to_string()),
            ("limit", limit.to_string()),
            ("include_docs", "true".to_owned()),
        ];
        let reply = self.server.send(Method::GET, &[&self.meta_db, "_all_docs"], &query, None).await?;
        if reply.db_missing() {
            return Ok(Vec::new());
        }
        if !reply.status.is_success() {
            return Err(reply.unexpected("meta _all_docs"));
        }
        let rows = reply.body.get("rows").and_then(Value::as_array).cloned().unwrap_or_default();
        Ok(rows
            .into_iter()
            .filter_map(|r| Some((r.get("id")?.as_str()?.to_owned(), r.get("doc").cloned().unwrap_or(Value::Null))))
            .collect())
    }

    /// Creates a meta document; `false` if one with that id exists already.
    pub(super) async fn create_meta(&self, id: &str, body: &Value) -> Result<bool, StoreError> {
        let reply = self.send_to_db(&self.meta_db, Method::PUT, &[id], &[], Some(body)).await?;
        match reply.status {
            s if s.is_success() => Ok(true),
            StatusCode::CONFLICT => Ok(false),
            _ => Err(reply.unexpected("creating a meta document")),
        }
    }

    /// `POST <meta>/_all_docs?include_docs=true` for `keys` (one request: callers keep it to a
    /// page): a row per key, deleted documents included.
    pub(super) async fn meta_rows(&self, keys: &[String]) -> Result<Reply, StoreError> {
        self.server
            .send(
                Method::POST,
                &[&self.meta_db, "_all_docs"],
                &[("include_docs", "true".to_owned())],
                Some(&json!({ "keys": keys })),
            )
            .await
    }

    /// Meta documents by id (those that exist), with their `_rev`.
    pub(super) async fn meta_docs(&self, keys: &[String]) -> Result<HashMap<String, (String, Value)>, StoreError> {
        let mut out = HashMap::new();
        for chunk in keys.chunks(500) {
            let reply = self.meta_rows(chunk).await?;
            if reply.db_missing() {
                return Ok(out);
            }
            if !reply.status.is_success() {
                return Err(reply.unexpected("meta _all_docs keys"));
            }
            for row in reply.body.get("rows").and_then(Value::as_array).into_iter().flatten() {
                if row.pointer("/value/deleted") == Some(&Value::Bool(true)) {
                    continue;
                }
                if let (Some(id), Some(rev), Some(doc)) = (
                    row.get("id").and_then(Value::as_str),
                    row.pointer("/value/rev").and_then(Value::as_str),
                    row.get("doc").filter(|d| d.is_object()),
                ) {
                    out.insert(id.to_owned(), (rev.to_owned(), doc.clone()));
                }
            }
        }
        Ok(out)
    }
}
