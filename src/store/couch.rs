//! The CouchDB backend: an instance's documents live in Apache CouchDB 3.x (a single node or a
//! cluster), one database per doctype, so instances can outgrow one machine. It passes the same
//! conformance suite as the SQLite backend, against CouchDB and against PouchDB Server (which CI
//! uses as a stand-in: see "Deviations" below).
//!
//! # Layout
//!
//! For the instance `alice.example.net` and the doctype `io.cozy.notes`, documents go to the
//! database `hearth+alice-example-net+io-cozy-notes` (prefix `couchdb.prefix`, default `hearth`).
//! Names must match `^[a-z][a-z0-9_$()+/-]*$`, so the domain maps `.` to `-`, `-` to `$` and `:`
//! to `_` (domains have no `_`), and the doctype maps `.` to `-` and `-` to `$` (`_` stays):
//! the mapping is reversible, so two domains or doctypes never share a database. Cozy separates
//! the parts with `/`; PouchDB Server silently drops `/` from database names, which would let
//! `a/bc` and `ab/c` collide, hence `+` (always sent as `%2B`, since CouchDB's URL decoding
//! turns a bare `+` into a space). A domain long enough to push a name past CouchDB's 238
//! characters is replaced by `$` and a hash of it. Databases are created on the first write and
//! remembered; reads of a database that doesn't exist answer as an empty one, so a stray GET
//! creates nothing. A database that disappears (PouchDB Server restarted in memory) is created
//! again on the next write.
//!
//! Each revision is a CouchDB document with its `_id`, `_rev`, `_revisions` and `_deleted`,
//! and its body as one string member, `"hearth:body"`, holding the body's JSON text exactly as
//! the client wrote it (see `store::body`). The body is not spread into native members because
//! every server on the way would re-encode it: PouchDB Server's `JSON.parse` rounds integers
//! beyond 2^53 and moves integer-like keys first, so a document would come back changed. A
//! string is kept byte for byte by CouchDB and PouchDB Server alike. An empty body is left out
//! (tombstones stay bare). `_local` documents keep their bodies the same way. Documents written
//! before this layout, with native members, are still read (as their members, in the server's
//! order): a document whose only member not starting with `_` is a string named
//! `hearth:body` is taken for the new layout. The cost: CouchDB views or Mango queries on
//! hearth's databases see one string, not the fields (hearth itself uses neither).
//!
//! Next to them, one `…+$meta` database per instance holds hearth's own bookkeeping: the
//! sequence index (`b/<doctype>/<first seq>` documents), edit guards (`g/<doctype>/<doc id>`) and
//! the names of `_local` documents (`l/<doctype>/<id>`), described below. The instance registry
//! (domains, keys, passphrase hashes) stays the small SQLite file in the data dir whatever the
//! backend: it is per hearth process configuration, not instance data.
//!
//! # Requests
//!
//! `couch_rs` 0.12 (on reqwest 0.12, like the rest of hearth) creates and deletes databases
//! (its client has a 30 s total timeout but no separate connect timeout). Everything else
//! goes through one reqwest client of our own, because couch_rs has no `_revs_diff`, no
//! `new_edits: false`, no `_bulk_get`, no `open_revs`, no `style=all_docs` changes and no connect
//! timeout. Every call is bounded: 5 s to connect, 30 s per request. Long-polls are served from
//! hearth's own commit counter ([`Store::subscribe`], bumped by this process's writes), never by
//! holding a CouchDB request open: a change written by another hearth process wakes a
//! long-poll here only at its timeout. A failed connection, a
//! timeout, a cut response or a 5xx from CouchDB is [`StoreError::Unavailable`] (the API answers
//! 503); the next request tries again, so service resumes as soon as CouchDB is back. Startup
//! checks `GET /` and `GET /_session`, and refuses to start with a clear message when CouchDB is
//! unreachable, refuses the credentials, or the user is not an admin (hearth creates databases).
//!
//! # Sequence numbers
//!
//! The trait's feed uses integer sequences (since-exclusive, ascending, each document once at
//! its latest change). CouchDB 2+ sequences are opaque strings whose numeric prefix is a sum over
//! shards: neither comparable nor stable across requests, and a clustered feed may replay rows.
//! So hearth numbers changes itself, with an index derived from CouchDB's own feed:
//!
//! * A *sequencer* reads `_changes?style=all_docs&include_docs&conflicts&since=S` and appends the
//!   rows, numbered `first..`, to a batch document `b/<doctype>/<first, 20 digits>` holding
//!   `first`, `last`, the rows (id, leaves winner first, deleted) and CouchDB's `last_seq` to
//!   resume from. A batch is written with a plain create, so two processes racing for the same
//!   numbers get one 201 and one 409 (the loser re-reads and continues): numbers are never
//!   reused. A batch is self-consistent (its rows and its `since` come from one feed read), so no
//!   change between two batches is lost, and a crash before the write only means the next run
//!   re-reads the same rows. The sequencer runs after every write (so consecutive writes get
//!   consecutive numbers, as on SQLite) and before every read of the feed or of `update_seq`
//!   (so a write is numbered even if that first run failed, and changes written by another
//!   process are seen).
//! * Serving `changes(since)` reads the batches after `since` and keeps a row only if its winner
//!   is still the document's winner (one `_all_docs?keys=` request per batch): a document that
//!   changed again has a later row. Within one answer a document appears once, at its latest
//!   row. A row whose conflicts changed without a new winner can appear twice across answers,
//!   which consumers of a changes feed already accept (CouchDB clusters do the same).
//! * `update_seq` is the last number handed out; `_local` writes and writes that change nothing
//!   (a revision already known) produce no CouchDB change, hence no number, as on SQLite.
//! * `pending` (rows after an answer's `last_seq`) is counted without reading them: the rows
//!   still current in the rest of the batch holding `last_seq` (that batch's rows were checked
//!   for the answer anyway), plus the documents CouchDB's feed holds after that batch's `since`
//!   (each document is once in CouchDB's feed, at its latest change, and a document changed after
//!   the batch has its current row after it, numbered or about to be). CouchDB answers that
//!   count itself (`_changes?since=…&limit=0` returns `pending` from its by-sequence index, per
//!   shard); with `doc_ids` the listed documents' changes after `since` are counted
//!   (`filter=_doc_ids`, which CouchDB serves by looking each id up). PouchDB Server does not
//!   report `pending`: there the rows after `since` are read and counted, a cost of the
//!   stand-in only.
//!
//! # Sharing tracking
//!
//! The SQLite backend updates each sharing's feed (see `tracking`) in the transaction of the
//! document write. Here tracking is done by the sequencer, from the same feed page it numbers
//! (the rows carry the winners' bodies), *before* it writes the batch: a change cannot be
//! numbered without having been tracked, and a crash in between only tracks it twice, which the
//! sharing feed absorbs. Since the sequencer runs after every write, before every feed read, and
//! before every read of a sharing's feed (for each doctype its rules name), no write escapes
//! tracking: this is how "tracking in the same transaction as the write" carries over. The rules
//! applied are those in force when the change is numbered, normally right after the write.
//! Each document's membership is `t/<sharing>/<doctype>/<id>` (`{seq, rule, removed, joined,
//! initial, origin}`, updated under MVCC, the latest sequence winning), and the sharing's feed
//! is a chain of `u/<sharing>/<first>` batches numbered like the document batches; a feed row
//! counts only if it is still its document's latest. `s/<sharing>` marks a sharing whose
//! initial set was taken (`track_existing` writes it once the set is recorded; later calls stop
//! there). Sharings and the outbox themselves are documents of internal doctypes, written with
//! the interactive-edit rules below.
//!
//! # Atomicity
//!
//! CouchDB has no multi-document transactions. What each kind of write guarantees here:
//!
//! * Replicated writes (`new_edits: false`) go straight to `_bulk_docs`, which applies each
//!   document atomically. A batch is not all-or-nothing, but these writes are idempotent merges,
//!   so a replicator that re-sends an unacknowledged batch converges (the design's checkpoint
//!   rule already requires the peer's acknowledgement).
//! * Interactive edits (`new_edits: true`) must get hearth's deterministic revision ids (md5 of
//!   parent, deleted flag and the body's text as written, as on SQLite, so the same edit on two
//!   instances makes one revision), which CouchDB's own `new_edits: true` cannot produce. They are written
//!   with `new_edits: false` after checking that the parent is a leaf, and that check-then-write
//!   is made atomic with an edit guard per document: a normal document in the meta database,
//!   updated under CouchDB's MVCC (`_rev`) before the data write. The guard holds the revisions
//!   about to be written, with their bodies, like a write-ahead log record. A writer
//!   1. reads the guard and the document's tree (`open_revs=all&revs=true`);
//!   2. rolls the guard's record forward if its revisions are missing while its base is there
//!      (a writer that stopped after taking the guard), so that edit counts as done;
//!   3. checks its parent against that tree (else 409) and computes its revision;
//!   4. replaces the guard with its own record, conditional on the guard's `_rev`: a concurrent
//!      writer of the same document, in this process or another, gets a CouchDB conflict and
//!      starts again at 1, where it sees (and rolls forward) the winner's edit;
//!   5. writes its revisions with `new_edits: false`.
//!
//!   Edits are thus serialised per document in guard order, as CouchDB's `new_edits: true`
//!   would: two edits of one leaf never both succeed. Plain replicated writes take no guard: a
//!   branch a peer adds while an edit is in flight is the same tree as if the edit came first.
//!   If step 5 fails the caller gets 503, and the edit may still be applied later by step 2 (as
//!   with any request that times out). The guarantee is CouchDB's own: in a partitioned
//!   cluster two guard updates can both be accepted, exactly as two `new_edits: true` edits
//!   can. Guards keep the last edited body of each document (a storage cost of the meta
//!   database).
//! * Documents a peer sends for a sharing (`Store::apply_received`) must be judged on the state
//!   their write finds: a local edit that moves a document out of the sharing must not land
//!   between the judgement and the write. They go through the same guards: read the guards,
//!   then the trees; roll pending edits forward and number the changes (so tracking has seen
//!   every write that took its guard first); judge; replace each accepted document's guard,
//!   conditional on the `_rev` read (a conflict means an edit came in between: that document
//!   is judged again, up to 8 rounds, then 503); record a document entering the sharing; write.
//!   The guard's record carries that membership, so a writer rolling the write forward records
//!   it too. A crash after the membership and before the write leaves a member without its
//!   document (harmless: it is skipped until written), never a written document outside.
//!   Local replicated writes (`/data` with `new_edits: false`, a PouchDB client) still take no
//!   guard, so they are not ordered with a received document's judgement.
//!
//! # Semantics kept where CouchDB servers differ
//!
//! The document tree is rebuilt from `open_revs=all&revs=true` (every leaf with its
//! `_revisions`: every node of CouchDB's tree is on some leaf's path) and hearth's own
//! [`RevTree`] answers from it, so every backend agrees on: winner-first leaf order, `_conflicts`
//! and `_deleted_conflicts`, bodies for leaves only (CouchDB keeps older bodies until it
//! compacts), `Deleted` versus `NotFound`, `latest=true`, and `_revs_diff`'s missing revisions
//! and `possible_ancestors` (CouchDB's `_revs_diff` answer is used to skip documents missing
//! nothing).
//!
//! # Deviations of PouchDB Server 4.2.0 met (the backend works with both)
//!
//! * `/` dropped from database names (`a/b` is stored as `ab`): names use `+` instead.
//! * `_changes?style=all_docs` does not list the winner first: the order comes from the row's
//!   included winner and its `_conflicts`.
//! * `_revs_diff` never returns `possible_ancestors`, and reports as missing a revision it knows
//!   only by id (an ancestor received in `_revisions`), where CouchDB says it is present: both
//!   are recomputed from the tree.
//! * `open_revs` with `latest=true` and an unknown revision crashes the whole server, so
//!   `latest` is never sent: the tree answers it.
//! * `GET /db` has no `doc_del_count`: counted from the changes feed when absent.
//! * `GET /db/_local_docs` is not routed: `_local` names are recorded in the meta database.
//! * `PUT /db/_local/id` without the current `_rev` is a 409 (CouchDB ignores `_local`
//!   revisions): the current revision is read and sent, and a 409 retried.
//! * `PUT /db/_revs_limit` is refused (400): `revs_limit` other than its default of 1000 only
//!   applies on CouchDB; the conformance run against PouchDB Server uses 1000.
//! * A deleted document's 404 says "missing", not "deleted": the tree decides instead.
//! * When one hash repeats along a path (`3-y` under `2-y`, which md5 revision ids never do),
//!   it reports the wrong `_revisions` and loses `_deleted` for that leaf; the conformance suite
//!   avoids such ids.
//! * Basic credentials of a user that doesn't exist are refused, even in admin party mode: run
//!   it without `couchdb.user`.
//! * `GET /` has no `"couchdb"` member (couch_rs's `check_status` fails on it): the startup
//!   check accepts `"express-pouchdb"` too.
//! * Documents are re-encoded by `JSON.parse`/`JSON.stringify`: integers beyond 2^53 are
//!   rounded and integer-like keys move first. Bodies are stored as strings (see "Layout").
//! * `_changes` has no `pending`: it is counted from the rows (see "Sequence numbers").

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use async_trait::async_trait;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use hearth_replicator::rev::{new_rev, Rev, Revisions};
use hearth_replicator::tree::RevTree;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use super::tracking::{self, TrackAction};
use super::*;
use crate::config::CouchConfig;

/// Longest wait for a TCP (and TLS) connection to CouchDB.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for one CouchDB request, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Database name prefix when `couchdb.prefix` is not set.
pub const DEFAULT_PREFIX: &str = "hearth";
/// CouchDB's limit on database names.
const MAX_DB_NAME: usize = 238;
/// Changes read from CouchDB per sequencer batch.
const BATCH_ROWS: usize = 500;
/// Batch documents read per request when serving the feed.
const BATCHES_PER_READ: usize = 8;
/// Concurrent per-document reads (`open_revs=all`).
const FETCH_CONCURRENCY: usize = 8;
/// Rounds of an interactive edit that keeps losing its guard to concurrent writers.
const EDIT_ATTEMPTS: usize = 8;
/// Attempts of a `_local` write that PouchDB Server answers with 409 (a concurrent writer).
const LOCAL_ATTEMPTS: usize = 5;
/// Characters sent as they are in a path segment; everything else is percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

fn unavailable(e: impl Into<anyhow::Error>) -> StoreError {
    StoreError::Unavailable(e.into())
}

fn internal(e: impl Into<anyhow::Error>) -> StoreError {
    StoreError::Internal(e.into())
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

/// A transport failure: CouchDB unreachable, too slow, or the connection was cut.
fn transport(e: reqwest::Error) -> StoreError {
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

/// Maps a domain into database-name characters: `.` → `-`, `-` → `$`, `:` → `_`.
fn map_domain(domain: &str) -> String {
    let mapped: String = domain
        .chars()
        .map(|c| match c {
            '.' => '-',
            '-' => '$',
            ':' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    if mapped.len() > 120 {
        use sha2::Digest;
        format!("${}", &hex::encode(sha2::Sha256::digest(domain.as_bytes()))[..32])
    } else {
        mapped
    }
}

/// Maps a doctype into database-name characters: `.` → `-`, `-` → `$`.
fn map_doctype(doctype: &Doctype) -> String {
    doctype
        .as_str()
        .chars()
        .map(|c| match c {
            '.' => '-',
            '-' => '$',
            c => c,
        })
        .collect()
}

/// The inverse of [`map_doctype`], `None` for names that are not a doctype's.
fn unmap_doctype(mapped: &str) -> Option<Doctype> {
    let s: String = mapped
        .chars()
        .map(|c| match c {
            '-' => '.',
            '$' => '-',
            c => c,
        })
        .collect();
    let dt = Doctype::parse(&s).ok()?;
    (map_doctype(&dt) == mapped).then_some(dt)
}

fn valid_db_name(name: &str) -> bool {
    name.len() <= MAX_DB_NAME
        && name.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_$()+/-".contains(&b))
}

/// A CouchDB answer: status and JSON body (`Null` when empty or not JSON).
struct Reply {
    status: StatusCode,
    body: Value,
}

impl Reply {
    fn field(&self, name: &str) -> &str {
        self.body.get(name).and_then(Value::as_str).unwrap_or("")
    }

    /// CouchDB says "Database does not exist.", PouchDB Server "no_db_file".
    fn db_missing(&self) -> bool {
        self.status == StatusCode::NOT_FOUND
            && matches!(self.field("reason"), "Database does not exist." | "no_db_file")
    }

    fn unexpected(&self, what: &str) -> StoreError {
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
    prefix: String,
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
            .pool_idle_timeout(Duration::from_secs(30))
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
        let root = self
            .send_raw(Method::GET, &[], &[], None)
            .await
            .map_err(|e| anyhow!("CouchDB at {} is unreachable: {}", self.base, root_cause(e)))?;
        if root.status == StatusCode::UNAUTHORIZED {
            anyhow::bail!(
                "CouchDB at {} refused the credentials of user {:?} (check couchdb.user and couchdb.password)",
                self.base,
                self.user.as_deref().unwrap_or("")
            );
        }
        if !root.status.is_success()
            || (root.body.get("couchdb").is_none() && root.body.get("express-pouchdb").is_none())
        {
            anyhow::bail!("{} does not look like CouchDB (GET / answered {})", self.base, root.status);
        }
        let session = self
            .send_raw(Method::GET, &["_session"], &[], None)
            .await
            .map_err(|e| anyhow!("CouchDB at {} is unreachable: {}", self.base, root_cause(e)))?;
        if session.status == StatusCode::UNAUTHORIZED {
            anyhow::bail!(
                "CouchDB at {} refused the credentials of user {:?} (check couchdb.user and couchdb.password)",
                self.base,
                self.user.as_deref().unwrap_or("")
            );
        }
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
    async fn send(
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
    async fn ensure_db(&self, db: &str, revs_limit: usize) -> Result<(), StoreError> {
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

/// One row of a sequencer batch: document id, leaves winner first, winner deleted.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BatchRow(String, Vec<String>, bool);

/// A sequencer batch: rows numbered `first..`, every number up to `last` used.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Batch {
    first: u64,
    last: u64,
    /// CouchDB's `last_seq` after these rows: where the next batch reads from.
    since: Value,
    rows: Vec<BatchRow>,
}

/// One page of CouchDB's feed: rows, the winners' bodies (for tracking), how many rows CouchDB
/// sent (some may not be hearth's) and where the page ends.
struct FeedPage {
    rows: Vec<BatchRow>,
    bodies: Vec<Body>,
    read: usize,
    last_seq: Value,
}

/// A document's membership in one sharing, `t/<sharing>/<doctype>/<id>` in the meta database.
/// `joined`, `initial` and `origin` are set when the state is created and kept afterwards
/// (absent from states written by older versions: 0, false, none).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct TrackState {
    seq: u64,
    rule: usize,
    removed: bool,
    #[serde(default)]
    joined: u64,
    #[serde(default)]
    initial: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin: Option<usize>,
}

impl TrackState {
    fn shared(&self) -> SharedState {
        SharedState { rule_index: self.rule, removed: self.removed, seq: self.seq }
    }
}

/// How a document enters a sharing, recorded when its state is created.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Entry {
    initial: bool,
    origin: Option<usize>,
}

/// A row to append to a sharing's feed.
#[derive(Debug, Clone)]
struct ShareRecord {
    doctype: String,
    id: String,
    rule: usize,
    removed: bool,
    entry: Entry,
}

impl ShareRecord {
    fn new(doctype: &str, id: &str, rule: usize, removed: bool, entry: Entry) -> ShareRecord {
        ShareRecord { doctype: doctype.to_owned(), id: id.to_owned(), rule, removed, entry }
    }
}

/// A received write's membership, kept in its edit guard so that a writer rolling the
/// write forward records it too (`s`: the sharing, `rule` and `origin` as in [`Entry`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GuardJoin {
    sharing: String,
    rule: usize,
    origin: usize,
}

/// A batch of a sharing's feed, `u/<sharing>/<first>`: rows (doctype, id, rule, removed)
/// numbered `first..=last`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ShareBatch {
    first: u64,
    last: u64,
    rows: Vec<(String, String, usize, bool)>,
}

/// What an edit guard records: the revisions an edit writes, with their bodies, and the
/// revision they were based on (`None`: the document did not exist).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GuardRecord {
    base: Option<String>,
    writes: Vec<GuardWrite>,
    /// For a received document entering a sharing: its membership, recorded before the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    join: Option<GuardJoin>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct GuardWrite {
    /// The revision and its parent, newest first.
    revisions: Vec<String>,
    deleted: bool,
    #[serde(with = "body_text")]
    body: Body,
}

/// The edits of one document in one round: the parent of the first, and each edit's index in
/// the request with the path it writes (new revision, parent).
type EditPlan = (Option<Rev>, Vec<(usize, Vec<Rev>)>);

struct Guard {
    rev: Option<String>,
    record: Option<GuardRecord>,
}

/// A document as CouchDB holds it: its tree, and each leaf's deleted flag and body.
struct Fetched {
    tree: RevTree,
    leaves: HashMap<Rev, (bool, Body)>,
}

impl Fetched {
    fn doc_rev(&self, id: &DocId, rev: &Rev, revs: bool) -> Option<DocRev> {
        if !self.tree.is_leaf(rev) {
            return None;
        }
        let (deleted, body) = self.leaves.get(rev)?;
        Some(DocRev {
            id: id.clone(),
            rev: rev.clone(),
            deleted: *deleted,
            body: body.clone(),
            revisions: if revs { self.tree.history(rev) } else { None },
        })
    }
}

/// The member of a CouchDB document holding its body's JSON text (see "Layout").
const BODY_MEMBER: &str = "hearth:body";

/// The body of a CouchDB document: the text in [`BODY_MEMBER`] when it is the only member not
/// starting with `_`; otherwise (documents written before bodies were kept as text, and
/// tombstones with an empty body) every member not starting with `_`.
fn stored_body(doc: &Map<String, Value>) -> Result<Body, StoreError> {
    let mut own = doc.iter().filter(|(k, _)| !k.starts_with('_'));
    if let (Some((k, Value::String(text))), None) = (own.next(), own.next()) {
        if k == BODY_MEMBER {
            return Body::parse(text).map_err(|e| corrupt(format!("body of {:?}: {e}", doc.get("_id"))));
        }
    }
    Ok(Body::from_map(doc))
}

/// A body as a member of a CouchDB document: its text, as a string (an empty body stays out,
/// so tombstones stay bare).
fn body_member(body: &Body) -> Option<(String, Value)> {
    (!body.is_empty()).then(|| (BODY_MEMBER.to_owned(), Value::String(body.as_str().to_owned())))
}

/// Guard records keep bodies as text; records written before that hold objects.
mod body_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_json::Value;

    use super::Body;

    pub fn serialize<S: Serializer>(body: &Body, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(body.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Body, D::Error> {
        match Value::deserialize(d)? {
            Value::String(text) => Body::parse(&text).map_err(serde::de::Error::custom),
            Value::Object(map) => Ok(Body::from_map(&map)),
            _ => Err(serde::de::Error::custom("a guard's body must be a string")),
        }
    }
}

fn parse_rev(s: &str) -> Result<Rev, StoreError> {
    s.parse().map_err(|_| corrupt(format!("revision {s:?} from CouchDB")))
}

/// The JSON of a replicated write: `_id`, `_rev`, `_revisions`, `_deleted`, body.
fn replicated_json(id: &str, revisions: &[Rev], deleted: bool, body: &Body) -> Value {
    let mut doc = Map::with_capacity(5);
    doc.insert("_id".into(), Value::String(id.to_owned()));
    if let Some(head) = revisions.first() {
        doc.insert("_rev".into(), Value::String(head.to_string()));
    }
    doc.insert("_revisions".into(), serde_json::to_value(Revisions::from_revs(revisions)).unwrap_or(Value::Null));
    if deleted {
        doc.insert("_deleted".into(), Value::Bool(true));
    }
    doc.extend(body_member(body));
    Value::Object(doc)
}

/// Winner-first order from a changes row: the winner, live conflicts, then deleted leaves,
/// each group descending (the order of [`RevTree::leaves`]).
fn order_leaves(all: Vec<Rev>, winner: Option<Rev>, conflicts: &[Rev]) -> Vec<Rev> {
    let Some(winner) = winner.filter(|w| all.contains(w)) else {
        return all;
    };
    let (mut live, mut dead): (Vec<Rev>, Vec<Rev>) =
        all.into_iter().filter(|r| *r != winner).partition(|r| conflicts.contains(r));
    live.sort_by(|a, b| b.cmp(a));
    dead.sort_by(|a, b| b.cmp(a));
    std::iter::once(winner).chain(live).chain(dead).collect()
}

fn batch_key(doctype: &Doctype, first: u64) -> String {
    format!("b/{}/{first:020}", doctype.as_str())
}

fn guard_key(doctype: &Doctype, id: &DocId) -> String {
    format!("g/{}/{}", doctype.as_str(), id.as_str())
}

fn local_marker_prefix(doctype: &Doctype) -> String {
    format!("l/{}/", doctype.as_str())
}

fn track_key(sharing: &str, doctype: &str, id: &str) -> String {
    format!("t/{sharing}/{doctype}/{id}")
}

/// Created when a sharing's initial set is taken (see `Store::track_existing`).
fn start_key(sharing: &str) -> String {
    format!("s/{sharing}")
}

fn share_batch_key(sharing: &str, first: u64) -> String {
    format!("u/{sharing}/{first:020}")
}

/// A CouchDB sequence (an opaque string on CouchDB 2+, a number on PouchDB Server) as a query
/// parameter.
fn seq_param(since: &Value) -> String {
    match since {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => "0".to_owned(),
    }
}

fn json_key(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// An instance's store on CouchDB. See the module documentation.
pub struct CouchStore {
    server: Arc<CouchServer>,
    /// `<prefix>+<mapped domain>+`: every database of this instance starts with it.
    db_prefix: String,
    meta_db: String,
    revs_limit: usize,
    commits: watch::Sender<u64>,
    /// One sequencer at a time per doctype in this process (others are fenced by CouchDB).
    seq_locks: Mutex<HashMap<Doctype, Arc<tokio::sync::Mutex<()>>>>,
    /// `_local` names already recorded in the meta database.
    markers: Mutex<HashSet<(Doctype, String)>>,
    /// The rules of the active sharings, applied as changes are numbered.
    tracking: tracking::Rules,
    /// One writer of a sharing's feed at a time in this process (others are fenced by CouchDB).
    share_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl CouchStore {
    pub fn new(server: Arc<CouchServer>, domain: &str, revs_limit: usize) -> CouchStore {
        let db_prefix = format!("{}+{}+", server.prefix, map_domain(domain));
        let meta_db = format!("{db_prefix}$meta");
        let (commits, _) = watch::channel(0);
        CouchStore {
            server,
            db_prefix,
            meta_db,
            revs_limit: revs_limit.max(1),
            commits,
            seq_locks: Mutex::new(HashMap::new()),
            markers: Mutex::new(HashSet::new()),
            tracking: tracking::Rules::default(),
            share_locks: Mutex::new(HashMap::new()),
        }
    }

    /// The database holding `doctype`'s documents.
    pub fn db_name(&self, doctype: &Doctype) -> String {
        format!("{}{}", self.db_prefix, map_doctype(doctype))
    }

    fn committed(&self) {
        self.commits.send_modify(|n| *n += 1);
    }

    /// Writes edit guards to the meta database in one `_bulk_docs`; answers the keys of the
    /// guards this writer now holds. A guard another writer took first is a `conflict`, left
    /// out (its documents are judged again); any other refusal is an error.
    async fn take_guards(&self, guard_docs: Vec<Value>) -> Result<HashSet<String>, StoreError> {
        let mut taken = HashSet::new();
        if guard_docs.is_empty() {
            return Ok(taken);
        }
        let reply = self
            .send_to_db(&self.meta_db, Method::POST, &["_bulk_docs"], &[], Some(&json!({"docs": guard_docs})))
            .await?;
        if !reply.status.is_success() {
            return Err(reply.unexpected("taking edit guards"));
        }
        for r in reply.body.as_array().into_iter().flatten() {
            if r.get("error").is_none() {
                if let Some(id) = r.get("id").and_then(Value::as_str) {
                    taken.insert(id.to_owned());
                }
            } else if r.get("error").and_then(Value::as_str) != Some("conflict") {
                return Err(internal(anyhow!("CouchDB refused an edit guard: {r}")));
            }
        }
        Ok(taken)
    }

    /// Sends a request to a database that must exist (writes): creates it first if needed,
    /// and once more if it disappeared since.
    async fn send_to_db(
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

    /// The document's tree and leaves; `None` when CouchDB has no such document (or database).
    async fn fetch(&self, db: &str, id: &DocId) -> Result<Option<Fetched>, StoreError> {
        let query = [("open_revs", "all".to_owned()), ("revs", "true".to_owned())];
        let reply = self.server.send(Method::GET, &[db, id.as_str()], &query, None).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let items = match reply.body {
            Value::Array(items) => items,
            body => return Err(Reply { status: reply.status, body }.unexpected("open_revs=all")),
        };
        let mut tree = RevTree::new();
        let mut leaves = HashMap::new();
        for item in items {
            let Some(Value::Object(doc)) = item.get("ok") else {
                continue;
            };
            let rev = parse_rev(doc.get("_rev").and_then(Value::as_str).unwrap_or_default())?;
            let history = match doc.get("_revisions") {
                Some(r) => serde_json::from_value::<Revisions>(r.clone())
                    .ok()
                    .and_then(|r| r.to_revs().ok())
                    .ok_or_else(|| corrupt(format!("_revisions of {id} from CouchDB")))?,
                None => vec![rev.clone()],
            };
            // PouchDB Server gets the history wrong when a hash repeats along one path
            // (`3-y` under `2-y`); keep what is certain.
            let history = if history.first() == Some(&rev) { history } else { vec![rev.clone()] };
            let deleted = doc.get("_deleted") == Some(&Value::Bool(true));
            tree.merge_path(&history, deleted);
            leaves.insert(rev, (deleted, stored_body(doc)?));
        }
        if tree.is_empty() {
            return Ok(None);
        }
        Ok(Some(Fetched { tree, leaves }))
    }

    /// [`CouchStore::fetch`] for several documents, a few at a time.
    async fn fetch_many(&self, db: &str, ids: &[DocId]) -> Result<HashMap<DocId, Fetched>, StoreError> {
        let found: Vec<(DocId, Option<Fetched>)> = stream::iter(ids.iter().cloned())
            .map(|id| async move { self.fetch(db, &id).await.map(|f| (id, f)) })
            .buffer_unordered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(found.into_iter().filter_map(|(id, f)| f.map(|f| (id, f))).collect())
    }

    /// Writes replicated revisions (`new_edits: false`); returns CouchDB's per-document errors.
    async fn write_replicated(&self, doctype: &Doctype, docs: Vec<Value>) -> Result<Vec<Value>, StoreError> {
        if docs.is_empty() {
            return Ok(Vec::new());
        }
        let db = self.db_name(doctype);
        let body = json!({"new_edits": false, "docs": docs});
        let reply = self.send_to_db(&db, Method::POST, &["_bulk_docs"], &[], Some(&body)).await?;
        if !reply.status.is_success() {
            return Err(reply.unexpected("_bulk_docs new_edits=false"));
        }
        let results = match reply.body {
            Value::Array(results) => results,
            body => return Err(Reply { status: reply.status, body }.unexpected("_bulk_docs new_edits=false")),
        };
        self.committed();
        // CouchDB 3 and PouchDB Server list only failures; older servers listed successes too.
        Ok(results.into_iter().filter(|r| r.get("error").is_some()).collect())
    }

    // ----- meta database -----

    /// `_all_docs` of the meta database between two keys, with documents.
    async fn meta_range(
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
    async fn create_meta(&self, id: &str, body: &Value) -> Result<bool, StoreError> {
        let reply = self.send_to_db(&self.meta_db, Method::PUT, &[id], &[], Some(body)).await?;
        match reply.status {
            s if s.is_success() => Ok(true),
            StatusCode::CONFLICT => Ok(false),
            _ => Err(reply.unexpected("creating a meta document")),
        }
    }

    // ----- sequencer -----

    fn seq_lock(&self, doctype: &Doctype) -> Result<Arc<tokio::sync::Mutex<()>>, StoreError> {
        let mut locks = self.seq_locks.lock().map_err(|_| internal(anyhow!("sequencer lock poisoned")))?;
        Ok(locks.entry(doctype.clone()).or_default().clone())
    }

    fn parse_batch(doc: Value) -> Result<Batch, StoreError> {
        serde_json::from_value(doc).map_err(|e| corrupt(format!("sequence batch: {e}")))
    }

    /// The batch with the highest numbers.
    async fn latest_batch(&self, doctype: &Doctype) -> Result<Option<Batch>, StoreError> {
        let rows = self.meta_range(&batch_key(doctype, u64::MAX), &batch_key(doctype, 0), true, 1).await?;
        rows.into_iter().next().map(|(_, doc)| Self::parse_batch(doc)).transpose()
    }

    /// Batches whose first number is `from` or more, ascending.
    async fn batches_from(&self, doctype: &Doctype, from: u64, limit: usize) -> Result<Vec<Batch>, StoreError> {
        let rows = self.meta_range(&batch_key(doctype, from), &batch_key(doctype, u64::MAX), false, limit).await?;
        rows.into_iter().map(|(_, doc)| Self::parse_batch(doc)).collect()
    }

    /// The batch holding number `seq`, if it starts before it.
    async fn batch_holding(&self, doctype: &Doctype, seq: u64) -> Result<Option<Batch>, StoreError> {
        let rows = self.meta_range(&batch_key(doctype, seq), &batch_key(doctype, 0), true, 1).await?;
        let batch = rows.into_iter().next().map(|(_, doc)| Self::parse_batch(doc)).transpose()?;
        Ok(batch.filter(|b| b.last >= seq))
    }

    /// One page of CouchDB's own feed, as batch rows; `None` if the database doesn't exist.
    async fn couch_changes(&self, doctype: &Doctype, since: &Value) -> Result<Option<FeedPage>, StoreError> {
        let since = seq_param(since);
        let query = [
            ("style", "all_docs".to_owned()),
            ("include_docs", "true".to_owned()),
            ("conflicts", "true".to_owned()),
            ("since", since),
            ("limit", BATCH_ROWS.to_string()),
        ];
        let db = self.db_name(doctype);
        let reply = self.server.send(Method::GET, &[&db, "_changes"], &query, None).await?;
        if reply.db_missing() {
            return Ok(None);
        }
        if !reply.status.is_success() {
            return Err(reply.unexpected("_changes"));
        }
        let results = reply.body.get("results").and_then(Value::as_array).cloned().unwrap_or_default();
        let Some(last_seq) =
            reply.body.get("last_seq").cloned().or_else(|| results.last().and_then(|r| r.get("seq").cloned()))
        else {
            return Ok(Some(FeedPage { rows: Vec::new(), bodies: Vec::new(), read: 0, last_seq: Value::Null }));
        };
        let read = results.len();
        let mut rows = Vec::with_capacity(read);
        let mut bodies = Vec::with_capacity(read);
        for r in results {
            let Some(id) = r.get("id").and_then(Value::as_str) else { continue };
            // Design documents and the like are not hearth's: they get no number.
            if DocId::parse(id).is_err() {
                continue;
            }
            let all: Vec<Rev> = r
                .get("changes")
                .and_then(Value::as_array)
                .map(|c| c.iter().filter_map(|c| c.get("rev")?.as_str()).map(parse_rev).collect::<Result<Vec<_>, _>>())
                .transpose()?
                .unwrap_or_default();
            if all.is_empty() {
                continue;
            }
            let doc = r.get("doc");
            let winner = doc.and_then(|d| d.get("_rev")).and_then(Value::as_str).map(parse_rev).transpose()?;
            let conflicts: Vec<Rev> = doc
                .and_then(|d| d.get("_conflicts"))
                .and_then(Value::as_array)
                .map(|c| c.iter().filter_map(Value::as_str).map(parse_rev).collect::<Result<Vec<_>, _>>())
                .transpose()?
                .unwrap_or_default();
            let leaves = order_leaves(all, winner, &conflicts);
            let deleted = r.get("deleted") == Some(&Value::Bool(true));
            rows.push(BatchRow(id.to_owned(), leaves.iter().map(Rev::to_string).collect(), deleted));
            bodies.push(doc.and_then(Value::as_object).map(stored_body).transpose()?.unwrap_or_default());
        }
        Ok(Some(FeedPage { rows, bodies, read, last_seq }))
    }

    /// Numbers every change CouchDB has that the index lacks; returns the last number.
    async fn catch_up(&self, doctype: &Doctype) -> Result<u64, StoreError> {
        let lock = self.seq_lock(doctype)?;
        let _held = lock.lock().await;
        self.catch_up_locked(doctype).await.map(|b| b.map_or(0, |b| b.last))
    }

    async fn catch_up_locked(&self, doctype: &Doctype) -> Result<Option<Batch>, StoreError> {
        let mut latest = self.latest_batch(doctype).await?;
        loop {
            let since = latest.as_ref().map_or(json!(0), |b| b.since.clone());
            let Some(FeedPage { rows, bodies, read, last_seq }) = self.couch_changes(doctype, &since).await? else {
                break;
            };
            if read == 0 {
                break;
            }
            // Tracking before numbering: a crash in between tracks these rows again (harmless),
            // never not at all.
            self.track_rows(doctype, &rows, &bodies, false).await?;
            let first = latest.as_ref().map_or(0, |b| b.last) + 1;
            // A page of non-hearth documents only still moves the feed position, on one number.
            let last = first + (rows.len().max(1) as u64) - 1;
            let batch = Batch { first, last, since: last_seq, rows };
            let body = serde_json::to_value(&batch).map_err(internal)?;
            if self.create_meta(&batch_key(doctype, first), &body).await? {
                latest = Some(batch);
                if read < BATCH_ROWS {
                    break;
                }
            } else {
                // Another process numbered these changes first: continue after its batch.
                latest = self.latest_batch(doctype).await?;
            }
        }
        Ok(latest)
    }

    /// `pending` of an answer of the feed that ended at `after`: the rows still to be served in
    /// the batch holding `after` (`stopped` when the caller knows them already), plus what
    /// CouchDB's own feed holds after that batch (see "Sequence numbers").
    async fn pending_after(
        &self,
        doctype: &Doctype,
        after: u64,
        stopped: Option<(Value, u64)>,
        wanted: Option<&HashSet<&str>>,
    ) -> Result<u64, StoreError> {
        let (since, within) = match stopped {
            Some(at) => at,
            None if after == 0 => (json!(0), 0),
            None => {
                let Some(batch) = self.batch_holding(doctype, after).await? else {
                    return Ok(0);
                };
                let candidates: Vec<(u64, BatchRow)> = batch
                    .rows
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (batch.first + i as u64, r.clone()))
                    .filter(|(seq, r)| *seq > after && wanted.is_none_or(|w| w.contains(r.0.as_str())))
                    .collect();
                let current = self.still_current(doctype, &candidates).await?;
                (batch.since, current.into_iter().filter(|ok| *ok).count() as u64)
            }
        };
        Ok(within + self.couch_changes_after(doctype, &since, wanted).await?)
    }

    /// How many documents CouchDB's feed holds after its position `since` (each document is
    /// there once, at its latest change). CouchDB answers `pending` from its by-sequence index
    /// without reading the rows; a server that does not (PouchDB Server) has its rows after
    /// `since` counted instead. For a list of ids, `filter=_doc_ids` (which CouchDB serves by
    /// looking each id up) and the rows are counted.
    async fn couch_changes_after(
        &self,
        doctype: &Doctype,
        since: &Value,
        wanted: Option<&HashSet<&str>>,
    ) -> Result<u64, StoreError> {
        let db = self.db_name(doctype);
        let since = seq_param(since);
        let reply = match wanted {
            None => {
                let query = [("since", since.clone()), ("limit", "0".to_owned())];
                let reply = self.server.send(Method::GET, &[&db, "_changes"], &query, None).await?;
                if reply.db_missing() {
                    return Ok(0);
                }
                if !reply.status.is_success() {
                    return Err(reply.unexpected("_changes for pending"));
                }
                if let Some(n) = reply.body.get("pending").and_then(Value::as_u64) {
                    return Ok(n);
                }
                self.server.send(Method::GET, &[&db, "_changes"], &[("since", since)], None).await?
            }
            Some(ids) => {
                let query = [("filter", "_doc_ids".to_owned()), ("since", since)];
                let body = json!({ "doc_ids": ids.iter().collect::<Vec<_>>() });
                self.server.send(Method::POST, &[&db, "_changes"], &query, Some(&body)).await?
            }
        };
        if reply.db_missing() {
            return Ok(0);
        }
        if !reply.status.is_success() {
            return Err(reply.unexpected("_changes for pending"));
        }
        let results = reply.body.get("results").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let ids: HashSet<&str> = results
            .iter()
            .filter_map(|r| r.get("id").and_then(Value::as_str))
            .filter(|id| DocId::parse(id).is_ok())
            .collect();
        Ok(ids.len() as u64)
    }

    /// For each candidate row, whether its winner is still the document's winner.
    async fn still_current(&self, doctype: &Doctype, rows: &[(u64, BatchRow)]) -> Result<Vec<bool>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids: Vec<&str> = rows.iter().map(|(_, r)| r.0.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let db = self.db_name(doctype);
        let reply = self.server.send(Method::POST, &[&db, "_all_docs"], &[], Some(&json!({"keys": ids}))).await?;
        if reply.db_missing() {
            return Ok(vec![false; rows.len()]);
        }
        if !reply.status.is_success() {
            return Err(reply.unexpected("_all_docs keys"));
        }
        let mut winners: HashMap<String, String> = HashMap::new();
        for r in reply.body.get("rows").and_then(Value::as_array).into_iter().flatten() {
            if let (Some(id), Some(rev)) =
                (r.get("id").and_then(Value::as_str), r.pointer("/value/rev").and_then(Value::as_str))
            {
                winners.insert(id.to_owned(), rev.to_owned());
            }
        }
        Ok(rows
            .iter()
            .map(|(_, r)| {
                let current = winners.get(&r.0).and_then(|w| w.parse::<Rev>().ok());
                let recorded = r.1.first().and_then(|w| w.parse::<Rev>().ok());
                current.is_some() && current == recorded
            })
            .collect())
    }

    /// The given revisions' documents through `_bulk_get` (tombstones included).
    async fn bulk_get(
        &self,
        doctype: &Doctype,
        wanted: &[(DocId, Rev)],
    ) -> Result<HashMap<(DocId, Rev), DocRev>, StoreError> {
        let mut out = HashMap::new();
        if wanted.is_empty() {
            return Ok(out);
        }
        let db = self.db_name(doctype);
        let docs: Vec<Value> =
            wanted.iter().map(|(id, rev)| json!({"id": id.as_str(), "rev": rev.to_string()})).collect();
        let reply = self.server.send(Method::POST, &[&db, "_bulk_get"], &[], Some(&json!({"docs": docs}))).await?;
        if reply.db_missing() {
            return Ok(out);
        }
        if !reply.status.is_success() {
            return Err(reply.unexpected("_bulk_get"));
        }
        for result in reply.body.get("results").and_then(Value::as_array).into_iter().flatten() {
            for d in result.get("docs").and_then(Value::as_array).into_iter().flatten() {
                let Some(Value::Object(doc)) = d.get("ok") else { continue };
                let (Some(id), Some(rev)) =
                    (doc.get("_id").and_then(Value::as_str), doc.get("_rev").and_then(Value::as_str))
                else {
                    continue;
                };
                let (Ok(id), Ok(rev)) = (DocId::parse(id), rev.parse::<Rev>()) else { continue };
                let deleted = doc.get("_deleted") == Some(&Value::Bool(true));
                let body = stored_body(doc)?;
                out.insert((id.clone(), rev.clone()), DocRev { id, rev, deleted, body, revisions: None });
            }
        }
        Ok(out)
    }

    // ----- interactive edits -----

    async fn read_guards(&self, doctype: &Doctype, ids: &[DocId]) -> Result<HashMap<DocId, Guard>, StoreError> {
        let keys: Vec<String> = ids.iter().map(|id| guard_key(doctype, id)).collect();
        let reply = self
            .server
            .send(
                Method::POST,
                &[&self.meta_db, "_all_docs"],
                &[("include_docs", "true".to_owned())],
                Some(&json!({"keys": keys})),
            )
            .await?;
        let mut out: HashMap<DocId, Guard> =
            ids.iter().map(|id| (id.clone(), Guard { rev: None, record: None })).collect();
        if reply.db_missing() {
            return Ok(out);
        }
        if !reply.status.is_success() {
            return Err(reply.unexpected("reading edit guards"));
        }
        let by_key: HashMap<String, &DocId> = keys.iter().cloned().zip(ids.iter()).collect();
        for row in reply.body.get("rows").and_then(Value::as_array).into_iter().flatten() {
            let Some(id) = row.get("key").and_then(Value::as_str).and_then(|k| by_key.get(k)) else { continue };
            let Some(rev) = row.pointer("/value/rev").and_then(Value::as_str) else { continue };
            let deleted = row.pointer("/value/deleted") == Some(&Value::Bool(true));
            let record = match row.get("doc") {
                Some(doc @ Value::Object(_)) if !deleted => serde_json::from_value::<GuardRecord>(doc.clone()).ok(),
                _ => None,
            };
            out.insert((*id).clone(), Guard { rev: Some(rev.to_owned()), record });
        }
        Ok(out)
    }

    /// Step 2 of an edit (see "Atomicity" in the module documentation): writes the revisions of
    /// guard records whose writer stopped between taking the guard and writing them (with the
    /// sharing membership a received write records first), and adds them to `trees`.
    async fn roll_forward(
        &self,
        doctype: &Doctype,
        guards: &HashMap<DocId, Guard>,
        trees: &mut HashMap<DocId, RevTree>,
    ) -> Result<(), StoreError> {
        let mut roll = Vec::new();
        let mut joins: BTreeMap<String, Vec<ShareRecord>> = BTreeMap::new();
        for (id, guard) in guards {
            let Some(record) = &guard.record else { continue };
            let tree = trees.entry(id.clone()).or_default();
            let Some(head) = record.writes.last().and_then(|w| w.revisions.first()).and_then(|r| r.parse::<Rev>().ok())
            else {
                continue;
            };
            let base_there = match record.base.as_deref().map(str::parse::<Rev>) {
                None => tree.is_empty(),
                Some(Ok(b)) => tree.contains(&b),
                Some(Err(_)) => false,
            };
            if tree.contains(&head) || !base_there {
                continue;
            }
            if let Some(j) = &record.join {
                let entry = Entry { initial: false, origin: Some(j.origin) };
                joins.entry(j.sharing.clone()).or_default().push(ShareRecord::new(
                    doctype.as_str(),
                    id.as_str(),
                    j.rule,
                    false,
                    entry,
                ));
            }
            for w in &record.writes {
                let Ok(path) = w.revisions.iter().map(|r| r.parse::<Rev>()).collect::<Result<Vec<_>, _>>() else {
                    continue;
                };
                tree.merge_path(&path, w.deleted);
                roll.push(replicated_json(id.as_str(), &path, w.deleted, &w.body));
            }
        }
        for (sharing, records) in joins {
            self.join_sharing(&sharing, records).await?;
        }
        if !roll.is_empty() {
            tracing::info!(%doctype, docs = roll.len(), "completing interrupted edits");
            let errors = self.write_replicated(doctype, roll).await?;
            if let Some(e) = errors.first() {
                return Err(internal(anyhow!("CouchDB refused an interrupted edit: {e}")));
            }
        }
        Ok(())
    }

    /// Records received documents entering a sharing (before they are written).
    async fn join_sharing(&self, sharing: &str, records: Vec<ShareRecord>) -> Result<(), StoreError> {
        let lock = self.share_lock(sharing)?;
        let _held = lock.lock().await;
        self.record_shared(sharing, records, None).await
    }

    /// Applies interactive edits; see "Atomicity" in the module documentation.
    async fn bulk_interactive(&self, doctype: &Doctype, docs: Vec<DocWrite>) -> Result<Vec<WriteResult>, StoreError> {
        let db = self.db_name(doctype);
        let mut results: Vec<Option<WriteResult>> = vec![None; docs.len()];
        let mut pending: Vec<usize> = (0..docs.len()).collect();
        for _ in 0..EDIT_ATTEMPTS {
            if pending.is_empty() {
                break;
            }
            let mut ids: Vec<DocId> = Vec::new();
            for &i in &pending {
                if !ids.contains(&docs[i].id) {
                    ids.push(docs[i].id.clone());
                }
            }
            // Both reads at once: a guard taken after our guard read makes our guard update
            // conflict (step 4), and an edit our tree read missed is rolled forward (step 2).
            let (guards, fetched) = tokio::try_join!(self.read_guards(doctype, &ids), self.fetch_many(&db, &ids))?;
            let mut trees: HashMap<DocId, RevTree> = fetched.into_iter().map(|(id, f)| (id, f.tree)).collect();

            // 2. Finish edits whose writer stopped between taking the guard and writing.
            self.roll_forward(doctype, &guards, &mut trees).await?;

            // 3. Check parents and compute revisions, in request order.
            let mut plans: BTreeMap<DocId, EditPlan> = BTreeMap::new();
            for &i in &pending {
                let w = &docs[i];
                let tree = trees.entry(w.id.clone()).or_default();
                let Ok(parent) = tree.edit_parent(w.rev.as_ref(), w.deleted) else {
                    results[i] = Some(WriteResult::Conflict { id: w.id.clone() });
                    continue;
                };
                // The body's text as written, as on SQLite: both backends derive the same id.
                let rev = match new_rev(parent.as_ref(), w.deleted, w.body.as_str().as_bytes()) {
                    Ok(rev) => rev,
                    Err(e) => {
                        results[i] = Some(WriteResult::Rejected { id: w.id.clone(), reason: e.to_string() });
                        continue;
                    }
                };
                let path: Vec<Rev> = std::iter::once(rev.clone()).chain(parent.clone()).collect();
                tree.merge_path(&path, w.deleted);
                // Acknowledge only what the tree holds: `merge_path` drops what it cannot store.
                if !tree.is_leaf(&rev) {
                    return Err(internal(anyhow!("edit {rev} of {} was not merged into its tree", w.id)));
                }
                tree.stem(self.revs_limit);
                plans.entry(w.id.clone()).or_insert_with(|| (parent, Vec::new())).1.push((i, path));
            }

            // 4. Take the guards.
            let guard_docs: Vec<Value> = plans
                .iter()
                .map(|(id, (base, writes))| {
                    let record = GuardRecord {
                        join: None,
                        base: base.as_ref().map(Rev::to_string),
                        writes: writes
                            .iter()
                            .map(|(i, path)| GuardWrite {
                                revisions: path.iter().map(Rev::to_string).collect(),
                                deleted: docs[*i].deleted,
                                body: docs[*i].body.clone(),
                            })
                            .collect(),
                    };
                    let mut doc = serde_json::to_value(record).unwrap_or(Value::Null);
                    if let Value::Object(m) = &mut doc {
                        m.insert("_id".into(), Value::String(guard_key(doctype, id)));
                        if let Some(rev) = guards.get(id).and_then(|g| g.rev.clone()) {
                            m.insert("_rev".into(), Value::String(rev));
                        }
                    }
                    doc
                })
                .collect();
            let taken = self.take_guards(guard_docs).await?;

            // 5. Write what we hold the guard for; retry the rest from the start.
            let mut writes = Vec::new();
            let mut done = Vec::new();
            let mut retry = Vec::new();
            for (id, (_, planned)) in &plans {
                if taken.contains(&guard_key(doctype, id)) {
                    for (i, path) in planned {
                        writes.push(replicated_json(id.as_str(), path, docs[*i].deleted, &docs[*i].body));
                        done.push((*i, path[0].clone()));
                    }
                } else {
                    retry.extend(planned.iter().map(|(i, _)| *i));
                }
            }
            let errors = self.write_replicated(doctype, writes).await?;
            if let Some(e) = errors.first() {
                return Err(internal(anyhow!("CouchDB refused an edit: {e}")));
            }
            for (i, rev) in done {
                results[i] = Some(WriteResult::Ok { id: docs[i].id.clone(), rev });
            }
            retry.sort_unstable();
            pending = retry;
        }
        Ok(results
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.unwrap_or_else(|| WriteResult::Conflict { id: docs[i].id.clone() }))
            .collect())
    }

    /// Replicated writes: see "Atomicity" in the module documentation.
    async fn bulk_replicated(&self, doctype: &Doctype, docs: Vec<DocWrite>) -> Result<Vec<WriteResult>, StoreError> {
        let mut rejected = Vec::new();
        let mut payload = Vec::with_capacity(docs.len());
        for w in &docs {
            match w.revisions.as_deref().filter(|p| !p.is_empty()) {
                Some(path) => payload.push(replicated_json(w.id.as_str(), path, w.deleted, &w.body)),
                None => rejected.push(WriteResult::Rejected {
                    id: w.id.clone(),
                    reason: "when new_edits is false, the document needs _rev or _revisions".into(),
                }),
            }
        }
        for e in self.write_replicated(doctype, payload).await? {
            let id = e.get("id").and_then(Value::as_str).and_then(|s| DocId::parse(s).ok());
            let reason = format!(
                "{}: {}",
                e.get("error").and_then(Value::as_str).unwrap_or("error"),
                e.get("reason").and_then(Value::as_str).unwrap_or("")
            );
            match id {
                Some(id) => rejected.push(WriteResult::Rejected { id, reason }),
                None => return Err(internal(anyhow!("CouchDB refused a replicated write: {e}"))),
            }
        }
        Ok(rejected)
    }

    // ----- sharing tracking -----

    /// The tracking rules; `Internal` if their lock is poisoned (nothing is numbered untracked).
    fn rules(&self) -> Result<Arc<Vec<TrackRule>>, StoreError> {
        self.tracking.get()
    }

    fn share_lock(&self, sharing: &str) -> Result<Arc<tokio::sync::Mutex<()>>, StoreError> {
        let mut locks = self.share_locks.lock().map_err(|_| internal(anyhow!("sharing lock poisoned")))?;
        Ok(locks.entry(sharing.to_owned()).or_default().clone())
    }

    /// Meta documents by id (those that exist), with their `_rev`.
    async fn meta_docs(&self, keys: &[String]) -> Result<HashMap<String, (String, Value)>, StoreError> {
        let mut out = HashMap::new();
        for chunk in keys.chunks(500) {
            let reply = self
                .server
                .send(
                    Method::POST,
                    &[&self.meta_db, "_all_docs"],
                    &[("include_docs", "true".to_owned())],
                    Some(&json!({ "keys": chunk })),
                )
                .await?;
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

    async fn track_states(&self, keys: &[String]) -> Result<HashMap<String, (String, TrackState)>, StoreError> {
        let docs = self.meta_docs(keys).await?;
        docs.into_iter()
            .map(|(k, (rev, doc))| {
                let state = serde_json::from_value(doc).map_err(|e| corrupt(format!("tracking state {k}: {e}")))?;
                Ok((k, (rev, state)))
            })
            .collect()
    }

    /// Applies the tracking rules to a page of changes of `doctype` (see `tracking::decide`);
    /// with `membership_only`, only where a document's membership changes (a cascade, see
    /// `Store::retrack`). Returns the rows recorded.
    async fn track_rows(
        &self,
        doctype: &Doctype,
        rows: &[BatchRow],
        bodies: &[Body],
        membership_only: bool,
    ) -> Result<(u64, Vec<String>), StoreError> {
        let mut recorded = 0;
        // Live documents whose row goes from removed to in (see `Retracked::rejoined`).
        let mut rejoined = Vec::new();
        let rules = self.rules()?;
        let mut sharings: Vec<&str> =
            rules.iter().filter(|r| r.doctype == doctype.as_str()).map(|r| r.sharing_id.as_str()).collect();
        sharings.sort_unstable();
        sharings.dedup();
        for sharing in sharings {
            let lock = self.share_lock(sharing)?;
            let _held = lock.lock().await;
            let keys: Vec<String> = rows.iter().map(|r| track_key(sharing, doctype.as_str(), &r.0)).collect();
            let states = self.track_states(&keys).await?;
            let mut current: HashMap<&str, (usize, bool)> = HashMap::new();
            for (row, key) in rows.iter().zip(&keys) {
                if let Some((_, st)) = states.get(key) {
                    current.insert(row.0.as_str(), (st.rule, st.removed));
                }
            }
            // Subtree rules: the parents' rows (a parent written in this page is in `current`).
            let parents: Vec<Option<String>> =
                bodies.iter().map(|b| TrackRule::parent_of(&rules, doctype.as_str(), b)).collect();
            let parent_keys: Vec<String> = parents
                .iter()
                .flatten()
                .map(|p| track_key(sharing, doctype.as_str(), p))
                .filter(|k| !states.contains_key(k))
                .collect();
            let parent_states = self.track_states(&parent_keys).await?;
            let mut records = Vec::new();
            for ((row, body), parent) in rows.iter().zip(bodies).zip(&parents) {
                let parent_rule = parent.as_deref().and_then(|p| {
                    current.get(p).copied().or_else(|| {
                        parent_states.get(&track_key(sharing, doctype.as_str(), p)).map(|(_, st)| (st.rule, st.removed))
                    })
                });
                let parent_rule = parent_rule.filter(|(_, removed)| !removed).map(|(rule, _)| rule);
                let (matching, joining) =
                    tracking::matching_rules(&rules, sharing, doctype.as_str(), &row.0, body, parent_rule);
                let tracked = current.get(row.0.as_str()).copied();
                let action = tracking::decide(row.2, matching, joining, tracked);
                if membership_only && !tracking::changes_membership(action, tracked) {
                    continue;
                }
                if let TrackAction::Record { rule_index, removed } = action {
                    if !removed && !row.2 && tracked.is_some_and(|(_, was)| was) && !rejoined.contains(&row.0) {
                        rejoined.push(row.0.clone());
                    }
                    current.insert(row.0.as_str(), (rule_index, removed));
                    records.push(ShareRecord::new(doctype.as_str(), &row.0, rule_index, removed, Entry::default()));
                }
            }
            recorded += records.len() as u64;
            self.record_shared(sharing, records, Some(states)).await?;
        }
        Ok((recorded, rejoined))
    }

    /// Appends rows to a sharing's feed and moves the documents' states to them (a state
    /// created here takes its row's sequence as `joined`, and the row's entry). The caller
    /// holds the sharing's lock.
    async fn record_shared(
        &self,
        sharing: &str,
        rows: Vec<ShareRecord>,
        mut known: Option<HashMap<String, (String, TrackState)>>,
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let first = loop {
            let latest =
                self.meta_range(&share_batch_key(sharing, u64::MAX), &share_batch_key(sharing, 0), true, 1).await?;
            let last = match latest.into_iter().next() {
                Some((_, doc)) => {
                    serde_json::from_value::<ShareBatch>(doc).map_err(|e| corrupt(format!("sharing feed: {e}")))?.last
                }
                None => 0,
            };
            let batch = ShareBatch {
                first: last + 1,
                last: last + rows.len() as u64,
                rows: rows.iter().map(|r| (r.doctype.clone(), r.id.clone(), r.rule, r.removed)).collect(),
            };
            let body = serde_json::to_value(&batch).map_err(internal)?;
            if self.create_meta(&share_batch_key(sharing, batch.first), &body).await? {
                break batch.first;
            }
        };
        let mut pending: Vec<(String, TrackState)> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let seq = first + i as u64;
                let state = TrackState {
                    seq,
                    rule: r.rule,
                    removed: r.removed,
                    joined: seq,
                    initial: r.entry.initial,
                    origin: r.entry.origin,
                };
                (track_key(sharing, &r.doctype, &r.id), state)
            })
            .collect();
        for _ in 0..EDIT_ATTEMPTS {
            if pending.is_empty() {
                return Ok(());
            }
            let keys: Vec<String> = pending.iter().map(|(k, _)| k.clone()).collect();
            // The states the caller just read (under the same lock) serve the first round.
            let existing = match known.take() {
                Some(k) => k,
                None => self.track_states(&keys).await?,
            };
            let docs: Vec<Value> = pending
                .iter()
                // Another process may have recorded a later change meanwhile: keep the latest.
                .filter(|(k, st)| existing.get(k).is_none_or(|(_, old)| old.seq < st.seq))
                .map(|(k, st)| {
                    let mut st = *st;
                    if let Some((_, old)) = existing.get(k) {
                        (st.joined, st.initial, st.origin) = (old.joined, old.initial, old.origin);
                    }
                    let mut doc = serde_json::to_value(st).unwrap_or(Value::Null);
                    if let Value::Object(m) = &mut doc {
                        m.insert("_id".into(), Value::String(k.clone()));
                        if let Some((rev, _)) = existing.get(k) {
                            m.insert("_rev".into(), Value::String(rev.clone()));
                        }
                    }
                    doc
                })
                .collect();
            if docs.is_empty() {
                return Ok(());
            }
            let reply = self
                .send_to_db(&self.meta_db, Method::POST, &["_bulk_docs"], &[], Some(&json!({ "docs": docs })))
                .await?;
            if !reply.status.is_success() {
                return Err(reply.unexpected("writing tracking states"));
            }
            let conflicted: HashSet<String> = reply
                .body
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r.get("error").is_some())
                .filter_map(|r| r.get("id").and_then(Value::as_str).map(str::to_owned))
                .collect();
            pending.retain(|(k, _)| conflicted.contains(k));
        }
        Err(StoreError::Unavailable(anyhow!("tracking states of sharing {sharing} keep conflicting")))
    }

    /// Numbers (and so tracks) the pending changes of every doctype the sharing's rules name.
    async fn catch_up_sharing(&self, sharing: &str) -> Result<(), StoreError> {
        let mut doctypes: Vec<Doctype> = self
            .rules()?
            .iter()
            .filter(|r| r.sharing_id == sharing)
            .filter_map(|r| Doctype::parse(&r.doctype).ok())
            .collect();
        doctypes.sort();
        doctypes.dedup();
        for dt in doctypes {
            self.catch_up(&dt).await?;
        }
        Ok(())
    }

    /// Every tracking state of a sharing (paged).
    async fn all_track_states(&self, sharing: &str) -> Result<Vec<(String, String, TrackState)>, StoreError> {
        let prefix = format!("t/{sharing}/");
        let end = format!("{prefix}\u{fff0}");
        let mut start = prefix.clone();
        let mut out = Vec::new();
        loop {
            let page = self.meta_range(&start, &end, false, 500).await?;
            let full = page.len() == 500;
            for (key, doc) in &page {
                let Some(st) = serde_json::from_value::<TrackState>(doc.clone()).ok() else { continue };
                let Some((dt, id)) = key.strip_prefix(prefix.as_str()).and_then(|r| r.split_once('/')) else {
                    continue;
                };
                out.push((dt.to_owned(), id.to_owned(), st));
            }
            match page.last() {
                Some((key, _)) if full => start = format!("{key}\u{0}"),
                _ => return Ok(out),
            }
        }
    }

    // ----- `_local` documents -----

    /// The current revision number of a `_local` document, `None` if there is none.
    async fn local_rev(&self, db: &str, id: &str) -> Result<Option<(u64, Body)>, StoreError> {
        let reply = self.server.send(Method::GET, &[db, "_local", id], &[], None).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let doc = match reply.body {
            Value::Object(doc) => doc,
            body => return Err(Reply { status: reply.status, body }.unexpected("reading a _local document")),
        };
        let rev = doc.get("_rev").and_then(Value::as_str).unwrap_or("0-0");
        let n = rev
            .strip_prefix("0-")
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| corrupt(format!("_local revision {rev:?}")))?;
        Ok(Some((n, stored_body(&doc)?)))
    }

    async fn record_local_name(&self, doctype: &Doctype, id: &str) -> Result<(), StoreError> {
        let key = (doctype.clone(), id.to_owned());
        if self.markers.lock().is_ok_and(|m| m.contains(&key)) {
            return Ok(());
        }
        self.create_meta(&format!("{}{id}", local_marker_prefix(doctype)), &json!({})).await?;
        if let Ok(mut m) = self.markers.lock() {
            m.insert(key);
        }
        Ok(())
    }
}

#[async_trait]
impl Store for CouchStore {
    async fn db_info(&self, doctype: &Doctype) -> Result<DbInfo, StoreError> {
        let update_seq = self.catch_up(doctype).await?;
        let db = self.db_name(doctype);
        let reply = self.server.send(Method::GET, &[&db], &[], None).await?;
        if reply.db_missing() {
            return Ok(DbInfo { update_seq, ..Default::default() });
        }
        if !reply.status.is_success() {
            return Err(reply.unexpected("GET db"));
        }
        let count = |name: &str| reply.body.get(name).and_then(Value::as_u64);
        let doc_count = count("doc_count").ok_or_else(|| reply.unexpected("GET db (no doc_count)"))?;
        let doc_del_count = match count("doc_del_count") {
            Some(n) => n,
            None => {
                // PouchDB Server: count the deleted documents in the feed.
                let feed = self.server.send(Method::GET, &[&db, "_changes"], &[], None).await?;
                feed.body
                    .get("results")
                    .and_then(Value::as_array)
                    .map_or(0, |r| r.iter().filter(|r| r.get("deleted") == Some(&Value::Bool(true))).count() as u64)
            }
        };
        Ok(DbInfo { doc_count, doc_del_count, update_seq })
    }

    async fn get(&self, doctype: &Doctype, id: &DocId, opts: GetOptions) -> Result<DocView, StoreError> {
        let f = self.fetch(&self.db_name(doctype), id).await?.ok_or(StoreError::NotFound)?;
        let rev = requested_rev(&f.tree, opts.rev)?;
        let doc = f.doc_rev(id, &rev, opts.revs).ok_or(StoreError::NotFound)?;
        Ok(DocView { doc, conflicts: f.tree.conflicts(), deleted_conflicts: f.tree.deleted_conflicts() })
    }

    async fn open_revs(
        &self,
        doctype: &Doctype,
        id: &DocId,
        revs: OpenRevs,
        latest: bool,
    ) -> Result<Vec<OpenRev>, StoreError> {
        let fetched = self.fetch(&self.db_name(doctype), id).await?;
        let f = match (fetched, &revs) {
            (Some(f), _) => f,
            (None, OpenRevs::All) => return Err(StoreError::NotFound),
            (None, OpenRevs::Some(_)) => Fetched { tree: RevTree::new(), leaves: HashMap::new() },
        };
        let wanted = revs.resolve(&f.tree, latest);
        Ok(wanted
            .into_iter()
            .map(|r| match f.doc_rev(id, &r, true) {
                Some(d) => OpenRev::Found(d),
                None => OpenRev::Missing(r),
            })
            .collect())
    }

    async fn bulk_docs(
        &self,
        doctype: &Doctype,
        docs: Vec<DocWrite>,
        new_edits: bool,
    ) -> Result<Vec<WriteResult>, StoreError> {
        let results = if new_edits {
            self.bulk_interactive(doctype, docs).await?
        } else {
            self.bulk_replicated(doctype, docs).await?
        };
        // Number the changes now, so that each write gets its own sequence number (and its
        // tracking) as it would on SQLite. If this fails the write still stands: the next read
        // of the feed numbers it.
        if let Err(e) = self.catch_up(doctype).await {
            tracing::warn!(%doctype, error = %e, "could not number the changes of a write yet");
        }
        Ok(results)
    }

    async fn changes(&self, doctype: &Doctype, query: &ChangesQuery) -> Result<Changes, StoreError> {
        let update_seq = self.catch_up(doctype).await?;
        let mut last_seq = query.since;
        // Rows kept, in order; a document seen again later leaves a hole where it was.
        let mut kept: Vec<Option<(u64, BatchRow)>> = Vec::new();
        let mut position: HashMap<String, usize> = HashMap::new();
        let mut live = 0usize;
        let wanted: Option<HashSet<&str>> = query.doc_ids.as_ref().map(|ids| ids.iter().map(DocId::as_str).collect());
        // Where the answer stopped on its limit: the batch's CouchDB position, and how many
        // rows of that batch after `last_seq` are still to be served.
        let mut stopped: Option<(Value, u64)> = None;
        if query.since < update_seq && query.limit != Some(0) {
            let mut next = query.since + 1;
            let mut queue: VecDeque<Batch> = self.batch_holding(doctype, next).await?.into_iter().collect();
            'batches: loop {
                let batch = match queue.pop_front() {
                    Some(b) => b,
                    None => {
                        let page = self.batches_from(doctype, next, BATCHES_PER_READ).await?;
                        if page.is_empty() {
                            break;
                        }
                        queue.extend(page.into_iter().filter(|b| b.last >= next));
                        continue;
                    }
                };
                let candidates: Vec<(u64, BatchRow)> = batch
                    .rows
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (batch.first + i as u64, r.clone()))
                    .filter(|(seq, r)| *seq >= next && wanted.as_ref().is_none_or(|w| w.contains(r.0.as_str())))
                    .collect();
                let current = self.still_current(doctype, &candidates).await?;
                let mut rest = candidates.into_iter().zip(current);
                for ((seq, row), ok) in rest.by_ref() {
                    last_seq = seq;
                    if !ok {
                        continue;
                    }
                    if let Some(old) = position.insert(row.0.clone(), kept.len()) {
                        kept[old] = None;
                        live -= 1;
                    }
                    kept.push(Some((seq, row)));
                    live += 1;
                    if query.limit.is_some_and(|l| live >= l) {
                        stopped = Some((batch.since.clone(), rest.filter(|(_, ok)| *ok).count() as u64));
                        break 'batches;
                    }
                }
                last_seq = last_seq.max(batch.last);
                next = batch.last + 1;
            }
        }
        let pending = match (stopped, query.limit) {
            (Some(at), _) => self.pending_after(doctype, last_seq, Some(at), wanted.as_ref()).await?,
            (None, Some(0)) => self.pending_after(doctype, last_seq, None, wanted.as_ref()).await?,
            // The feed was read to its end.
            (None, _) => 0,
        };
        let kept: Vec<(u64, BatchRow)> = kept.into_iter().flatten().collect();
        let mut rows = Vec::with_capacity(kept.len());
        for (seq, BatchRow(id, leaves, deleted)) in kept {
            let id = DocId::parse(&id).map_err(StoreError::Corrupt)?;
            let leaves: Vec<Rev> = leaves.iter().map(|r| parse_rev(r)).collect::<Result<_, _>>()?;
            if leaves.is_empty() {
                return Err(corrupt(format!("no leaves for {id} in the sequence index")));
            }
            let changes = if query.all_docs { leaves } else { leaves.into_iter().take(1).collect() };
            rows.push(ChangeRow { seq, id, changes, deleted, doc: None });
        }
        if query.include_docs {
            let wanted: Vec<(DocId, Rev)> = rows.iter().map(|r| (r.id.clone(), r.changes[0].clone())).collect();
            let mut docs = self.bulk_get(doctype, &wanted).await?;
            for row in &mut rows {
                row.doc = docs.remove(&(row.id.clone(), row.changes[0].clone()));
            }
        }
        Ok(Changes { rows, last_seq, pending })
    }

    async fn revs_diff(
        &self,
        doctype: &Doctype,
        revs: BTreeMap<DocId, Vec<Rev>>,
    ) -> Result<BTreeMap<DocId, RevsDiff>, StoreError> {
        let db = self.db_name(doctype);
        let request: Map<String, Value> = revs
            .iter()
            .filter(|(_, r)| !r.is_empty())
            .map(|(id, r)| {
                (id.as_str().to_owned(), Value::Array(r.iter().map(|r| Value::String(r.to_string())).collect()))
            })
            .collect();
        if request.is_empty() {
            return Ok(BTreeMap::new());
        }
        let reply = self.server.send(Method::POST, &[&db, "_revs_diff"], &[], Some(&Value::Object(request))).await?;
        // Documents CouchDB says miss something; the tree then says exactly what.
        let listed: Vec<DocId> = if reply.db_missing() {
            revs.keys().cloned().collect()
        } else if reply.status.is_success() {
            reply.body.as_object().map(|m| m.keys().filter_map(|k| DocId::parse(k).ok()).collect()).unwrap_or_default()
        } else {
            return Err(reply.unexpected("_revs_diff"));
        };
        let listed: Vec<DocId> = listed.into_iter().filter(|id| revs.get(id).is_some_and(|r| !r.is_empty())).collect();
        let trees = if reply.db_missing() { HashMap::new() } else { self.fetch_many(&db, &listed).await? };
        let mut out = BTreeMap::new();
        for id in listed {
            let Some(wanted) = revs.get(&id) else { continue };
            let (missing, possible_ancestors) = match trees.get(&id) {
                Some(f) => f.tree.revs_diff(wanted),
                None => RevTree::new().revs_diff(wanted),
            };
            if !missing.is_empty() {
                out.insert(id, RevsDiff { missing, possible_ancestors });
            }
        }
        Ok(out)
    }

    async fn all_docs(&self, doctype: &Doctype, query: &AllDocsQuery) -> Result<AllDocs, StoreError> {
        let db = self.db_name(doctype);
        let mut params: Vec<(&str, String)> = Vec::new();
        if query.include_docs {
            params.push(("include_docs", "true".into()));
        }
        let reply = match &query.keys {
            Some(keys) => {
                let keys: Vec<&str> =
                    keys.iter().skip(query.skip).take(query.limit.unwrap_or(usize::MAX)).map(DocId::as_str).collect();
                self.server.send(Method::POST, &[&db, "_all_docs"], &params, Some(&json!({"keys": keys}))).await?
            }
            None => {
                if let Some(k) = &query.start_key {
                    params.push(("startkey", json_key(k)));
                }
                if let Some(k) = &query.end_key {
                    params.push(("endkey", json_key(k)));
                    params.push(("inclusive_end", query.inclusive_end.to_string()));
                }
                if query.descending {
                    params.push(("descending", "true".into()));
                }
                // CouchDB's `startkey` is inclusive: with `exclusive_start`, the start key's row
                // is read and left out below, and skipped rows are counted after it.
                let (skip, extra) = if query.exclusive_start { (0, query.skip + 1) } else { (query.skip, 0) };
                if let Some(l) = query.limit {
                    params.push(("limit", (l + extra).to_string()));
                }
                if skip > 0 {
                    params.push(("skip", skip.to_string()));
                }
                self.server.send(Method::GET, &[&db, "_all_docs"], &params, None).await?
            }
        };
        if reply.db_missing() {
            let rows = match &query.keys {
                Some(keys) => keys
                    .iter()
                    .skip(query.skip)
                    .take(query.limit.unwrap_or(usize::MAX))
                    .map(|k| AllDocsRow::NotFound { key: k.clone() })
                    .collect(),
                None => Vec::new(),
            };
            return Ok(AllDocs { total_rows: 0, offset: query.skip, rows, more: false });
        }
        if !reply.status.is_success() {
            return Err(reply.unexpected("_all_docs"));
        }
        let total_rows = reply.body.get("total_rows").and_then(Value::as_u64).unwrap_or(0);
        let read: &[Value] = reply.body.get("rows").and_then(Value::as_array).map_or(&[], Vec::as_slice);
        let mut read = read.iter().peekable();
        let mut more = false;
        if query.keys.is_none() {
            // Rows CouchDB read, before any is left out: as many as asked means more may follow.
            let asked = query.limit.map(|l| if query.exclusive_start { l + query.skip + 1 } else { l });
            more = asked.is_some_and(|a| read.len() >= a);
            if query.exclusive_start {
                let start = query.start_key.as_deref();
                if start.is_some() && read.peek().and_then(|r| r.get("id")).and_then(Value::as_str) == start {
                    read.next();
                }
                for _ in 0..query.skip {
                    read.next();
                }
            }
        }
        let mut rows = Vec::new();
        for r in read {
            if query.keys.is_none() && query.limit.is_some_and(|l| rows.len() >= l) {
                more = true;
                break;
            }
            if r.get("error").is_some() {
                if let Some(key) = r.get("key").and_then(Value::as_str).and_then(|k| DocId::parse(k).ok()) {
                    rows.push(AllDocsRow::NotFound { key });
                }
                continue;
            }
            // Design documents and other non-hearth ids are not listed.
            let Some(Ok(id)) = r.get("id").and_then(Value::as_str).map(DocId::parse) else { continue };
            let rev = parse_rev(r.pointer("/value/rev").and_then(Value::as_str).unwrap_or_default())?;
            let deleted = r.pointer("/value/deleted") == Some(&Value::Bool(true));
            let doc = match r.get("doc") {
                Some(Value::Object(d)) if query.include_docs && !deleted => {
                    Some(DocRev { id: id.clone(), rev: rev.clone(), deleted, body: stored_body(d)?, revisions: None })
                }
                _ => None,
            };
            rows.push(AllDocsRow::Doc { id, rev, deleted, doc });
        }
        Ok(AllDocs { total_rows, offset: query.skip, rows, more })
    }

    async fn get_local(&self, doctype: &Doctype, id: &str) -> Result<LocalDoc, StoreError> {
        match self.local_rev(&self.db_name(doctype), id).await? {
            Some((rev, body)) => Ok(LocalDoc { id: id.to_owned(), rev, body }),
            None => Err(StoreError::NotFound),
        }
    }

    async fn put_local(&self, doctype: &Doctype, id: &str, body: Body) -> Result<u64, StoreError> {
        let db = self.db_name(doctype);
        self.server.ensure_db(&db, self.revs_limit).await?;
        self.record_local_name(doctype, id).await?;
        for _ in 0..LOCAL_ATTEMPTS {
            let current = self.local_rev(&db, id).await?.map(|(n, _)| n);
            let mut doc: Map<String, Value> = body_member(&body).into_iter().collect();
            if let Some(n) = current {
                doc.insert("_rev".into(), Value::String(format!("0-{n}")));
            }
            let reply = self.send_to_db(&db, Method::PUT, &["_local", id], &[], Some(&Value::Object(doc))).await?;
            if reply.status == StatusCode::CONFLICT {
                continue;
            }
            if !reply.status.is_success() {
                return Err(reply.unexpected("writing a _local document"));
            }
            let rev = reply.field("rev");
            let n = rev
                .strip_prefix("0-")
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| corrupt(format!("_local revision {rev:?}")))?;
            self.committed();
            return Ok(n);
        }
        Err(StoreError::Conflict)
    }

    async fn delete_local(&self, doctype: &Doctype, id: &str) -> Result<(), StoreError> {
        let db = self.db_name(doctype);
        for _ in 0..LOCAL_ATTEMPTS {
            let Some((n, _)) = self.local_rev(&db, id).await? else {
                return Err(StoreError::NotFound);
            };
            let reply =
                self.server.send(Method::DELETE, &[&db, "_local", id], &[("rev", format!("0-{n}"))], None).await?;
            match reply.status {
                s if s.is_success() => {
                    self.committed();
                    return Ok(());
                }
                StatusCode::NOT_FOUND => return Err(StoreError::NotFound),
                StatusCode::CONFLICT => continue,
                _ => return Err(reply.unexpected("deleting a _local document")),
            }
        }
        Err(StoreError::Conflict)
    }

    async fn put_local_if(&self, doctype: &Doctype, id: &str, body: Body, expected: u64) -> Result<u64, StoreError> {
        let db = self.db_name(doctype);
        self.server.ensure_db(&db, self.revs_limit).await?;
        self.record_local_name(doctype, id).await?;
        // CouchDB checks the revision itself (update_local_docs), atomically.
        let mut doc: Map<String, Value> = body_member(&body).into_iter().collect();
        if expected > 0 {
            doc.insert("_rev".into(), Value::String(format!("0-{expected}")));
        }
        let reply = self.send_to_db(&db, Method::PUT, &["_local", id], &[], Some(&Value::Object(doc))).await?;
        if reply.status == StatusCode::CONFLICT {
            return Err(StoreError::Conflict);
        }
        if !reply.status.is_success() {
            return Err(reply.unexpected("writing a _local document"));
        }
        let rev = reply.field("rev");
        let n = rev
            .strip_prefix("0-")
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| corrupt(format!("_local revision {rev:?}")))?;
        self.committed();
        Ok(n)
    }

    async fn delete_local_if(&self, doctype: &Doctype, id: &str, expected: u64) -> Result<(), StoreError> {
        let db = self.db_name(doctype);
        match self.local_rev(&db, id).await? {
            None => return Err(StoreError::NotFound),
            Some((n, _)) if n != expected => return Err(StoreError::Conflict),
            Some(_) => {}
        }
        let reply =
            self.server.send(Method::DELETE, &[&db, "_local", id], &[("rev", format!("0-{expected}"))], None).await?;
        match reply.status {
            s if s.is_success() => {
                self.committed();
                Ok(())
            }
            StatusCode::NOT_FOUND => Err(StoreError::NotFound),
            StatusCode::CONFLICT => Err(StoreError::Conflict),
            _ => Err(reply.unexpected("deleting a _local document")),
        }
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }

    async fn doctypes(&self) -> Result<Vec<Doctype>, StoreError> {
        let start = self.db_prefix.clone();
        let end = format!("{}\u{fff0}", self.db_prefix);
        let query = [("startkey", json_key(&start)), ("endkey", json_key(&end))];
        let reply = self.server.send(Method::GET, &["_all_dbs"], &query, None).await?;
        let names = match reply.body {
            Value::Array(names) => names,
            body => return Err(Reply { status: reply.status, body }.unexpected("_all_dbs")),
        };
        let mut out: Vec<Doctype> = names
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|n| n.strip_prefix(self.db_prefix.as_str()))
            .filter_map(unmap_doctype)
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn local_docs(&self, doctype: &Doctype) -> Result<Vec<LocalDoc>, StoreError> {
        let prefix = local_marker_prefix(doctype);
        let db = self.db_name(doctype);
        let mut out = Vec::new();
        let mut start = prefix.clone();
        loop {
            let page = self.meta_range(&start, &format!("{prefix}\u{fff0}"), false, 200).await?;
            let full = page.len() == 200;
            for (key, _) in &page {
                let Some(id) = key.strip_prefix(prefix.as_str()) else { continue };
                if let Some((rev, body)) = self.local_rev(&db, id).await? {
                    out.push(LocalDoc { id: id.to_owned(), rev, body });
                }
            }
            match page.last() {
                Some((key, _)) if full => start = format!("{key}\u{0}"),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn doc_leaves(
        &self,
        doctype: &Doctype,
        ids: &[DocId],
    ) -> Result<HashMap<DocId, Vec<(Rev, bool)>>, StoreError> {
        let found = self.fetch_many(&self.db_name(doctype), ids).await?;
        Ok(found
            .into_iter()
            .map(|(id, f)| (id, f.tree.leaves().into_iter().map(|l| (l.rev, l.deleted)).collect()))
            .collect())
    }

    fn set_tracking(&self, rules: Vec<TrackRule>) {
        self.tracking.set(rules);
    }

    async fn track_existing(&self, sharing_id: &str) -> Result<u64, StoreError> {
        // Number pending changes first (it takes the sharing's lock itself).
        self.catch_up_sharing(sharing_id).await?;
        let lock = self.share_lock(sharing_id)?;
        let _held = lock.lock().await;
        // Once per feed: the marker is written once the whole set is recorded, so a crash
        // midway takes it again (recording it twice changes nothing) rather than leaving it
        // half taken.
        let marker = start_key(sharing_id);
        if self.meta_docs(std::slice::from_ref(&marker)).await?.contains_key(&marker) {
            return Ok(0);
        }
        let rules: Vec<TrackRule> = self.rules()?.iter().filter(|r| r.sharing_id == sharing_id).cloned().collect();
        let mut added = 0;
        let mut done: HashSet<(String, String)> = HashSet::new();
        for rule in &rules {
            let Ok(doctype) = Doctype::parse(&rule.doctype) else { continue };
            let db = self.db_name(&doctype);
            // Candidates: the listed ids for id rules, every live document otherwise.
            let mut start: Option<String> = None;
            loop {
                let (reply, paged) = match &rule.selector {
                    None => {
                        let body = json!({ "keys": rule.values });
                        let q = [("include_docs", "true".to_owned())];
                        (self.server.send(Method::POST, &[&db, "_all_docs"], &q, Some(&body)).await?, false)
                    }
                    Some(_) => {
                        let mut q = vec![("include_docs", "true".to_owned()), ("limit", "500".to_owned())];
                        if let Some(s) = &start {
                            q.push(("startkey", json_key(s)));
                            q.push(("skip", "1".to_owned()));
                        }
                        (self.server.send(Method::GET, &[&db, "_all_docs"], &q, None).await?, true)
                    }
                };
                if reply.db_missing() {
                    break;
                }
                if !reply.status.is_success() {
                    return Err(reply.unexpected("_all_docs for tracking"));
                }
                let rows = reply.body.get("rows").and_then(Value::as_array).cloned().unwrap_or_default();
                let mut candidates = Vec::new();
                for r in &rows {
                    let (Some(id), Some(Value::Object(doc))) = (r.get("id").and_then(Value::as_str), r.get("doc"))
                    else {
                        continue;
                    };
                    if DocId::parse(id).is_err() || r.pointer("/value/deleted") == Some(&Value::Bool(true)) {
                        continue;
                    }
                    if done.insert((rule.doctype.clone(), id.to_owned())) {
                        candidates.push((id.to_owned(), stored_body(doc)?));
                    }
                }
                let keys: Vec<String> =
                    candidates.iter().map(|(id, _)| track_key(sharing_id, &rule.doctype, id)).collect();
                let states = self.track_states(&keys).await?;
                let mut records = Vec::new();
                for ((id, body), key) in candidates.iter().zip(&keys) {
                    if states.get(key).is_some_and(|(_, st)| !st.removed) {
                        continue;
                    }
                    // The first matching rule of the sharing wins, as for later writes.
                    if let Some(first) = rules.iter().find(|r| r.matches(&rule.doctype, id, body)) {
                        let entry = Entry { initial: true, origin: None };
                        records.push(ShareRecord::new(&rule.doctype, id, first.rule_index, false, entry));
                    }
                }
                added += records.len() as u64;
                self.record_shared(sharing_id, records, Some(states)).await?;
                let last_id = rows.last().and_then(|r| r.get("id")).and_then(Value::as_str).map(str::to_owned);
                match last_id {
                    Some(last) if paged && rows.len() == 500 => start = Some(last),
                    _ => break,
                }
            }
        }
        // Subtree rules: the documents under a shared one, a level per pass, so parents come
        // before their children in the feed.
        let mut subtree: Vec<&str> =
            rules.iter().filter(|r| r.parent_field.is_some()).map(|r| r.doctype.as_str()).collect();
        subtree.dedup();
        for doctype in subtree {
            let Ok(dt) = Doctype::parse(doctype) else { continue };
            let db = self.db_name(&dt);
            loop {
                let q = [("include_docs", "true".to_owned())];
                let reply = self.server.send(Method::GET, &[&db, "_all_docs"], &q, None).await?;
                if reply.db_missing() {
                    break;
                }
                if !reply.status.is_success() {
                    return Err(reply.unexpected("_all_docs for tracking"));
                }
                let rows = reply.body.get("rows").and_then(Value::as_array).cloned().unwrap_or_default();
                let mut candidates = Vec::new();
                for r in &rows {
                    let (Some(id), Some(Value::Object(doc))) = (r.get("id").and_then(Value::as_str), r.get("doc"))
                    else {
                        continue;
                    };
                    if DocId::parse(id).is_ok() {
                        candidates.push((id.to_owned(), stored_body(doc)?));
                    }
                }
                let keys: Vec<String> = candidates.iter().map(|(id, _)| track_key(sharing_id, doctype, id)).collect();
                let states = self.track_states(&keys).await?;
                let alive = |id: &str| {
                    states.get(&track_key(sharing_id, doctype, id)).filter(|(_, st)| !st.removed).map(|(_, st)| st.rule)
                };
                let mut records = Vec::new();
                for (id, body) in &candidates {
                    if alive(id).is_some() {
                        continue;
                    }
                    let parent = TrackRule::parent_of(&rules, doctype, body).and_then(|p| alive(&p));
                    if let Some(first) = rules.iter().find(|r| r.matches_in(doctype, id, body, parent)) {
                        let entry = Entry { initial: true, origin: None };
                        records.push(ShareRecord::new(doctype, id, first.rule_index, false, entry));
                    }
                }
                if records.is_empty() {
                    break;
                }
                added += records.len() as u64;
                self.record_shared(sharing_id, records, Some(states)).await?;
            }
        }
        self.create_meta(&marker, &json!({})).await?;
        Ok(added)
    }

    async fn retrack(&self, doctype: &Doctype, ids: &[DocId]) -> Result<Retracked, StoreError> {
        if !self.rules()?.iter().any(|r| r.doctype == doctype.as_str()) {
            return Ok(Retracked::default());
        }
        // The feed's pending tracking first: the cascade is judged on every earlier write.
        self.catch_up(doctype).await?;
        let mut rows = Vec::with_capacity(ids.len());
        let mut bodies = Vec::with_capacity(ids.len());
        for id in ids {
            match self.get(doctype, id, GetOptions::default()).await {
                Ok(found) => {
                    rows.push(BatchRow(id.as_str().to_owned(), vec![found.doc.rev.to_string()], false));
                    bodies.push(found.doc.body);
                }
                Err(StoreError::Deleted) => {
                    rows.push(BatchRow(id.as_str().to_owned(), Vec::new(), true));
                    bodies.push(Body::empty());
                }
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        let (recorded, rejoined) = self.track_rows(doctype, &rows, &bodies, true).await?;
        let rejoined = rejoined.iter().filter_map(|id| DocId::parse(id).ok()).collect();
        Ok(Retracked { recorded, rejoined })
    }

    async fn apply_received(
        &self,
        sharing_id: &str,
        origin: usize,
        doctype: &Doctype,
        docs: Vec<DocWrite>,
        judge: Arc<Judge>,
    ) -> Result<Vec<Received>, StoreError> {
        let db = self.db_name(doctype);
        let mut out: Vec<Option<Received>> = vec![None; docs.len()];
        let mut pending: Vec<usize> = (0..docs.len()).collect();
        for _ in 0..EDIT_ATTEMPTS {
            if pending.is_empty() {
                break;
            }
            // A document sent twice in one batch: its second copy is judged next round, after
            // the first is written (as one transaction after another would see it).
            let mut round: Vec<usize> = Vec::new();
            let mut later: Vec<usize> = Vec::new();
            for &i in &pending {
                if round.iter().any(|&j| docs[j].id == docs[i].id) {
                    later.push(i);
                } else {
                    round.push(i);
                }
            }
            let ids: Vec<DocId> = round.iter().map(|&i| docs[i].id.clone()).collect();
            // 1. The guards first: any edit that takes a guard after this read makes our guard
            //    update below conflict, and sends these documents back to be judged again.
            let guards = self.read_guards(doctype, &ids).await?;
            let mut trees: HashMap<DocId, RevTree> =
                self.fetch_many(&db, &ids).await?.into_iter().map(|(id, f)| (id, f.tree)).collect();
            // 2. Edits that took their guard before: finished, then tracked (3), so the judge
            //    sees every write that came before ours.
            self.roll_forward(doctype, &guards, &mut trees).await?;
            self.catch_up(doctype).await?;
            let keys: Vec<String> = ids.iter().map(|id| track_key(sharing_id, doctype.as_str(), id.as_str())).collect();
            let states = self.track_states(&keys).await?;
            // Subtree rules: the parents' rows, and the parents joining in this round.
            let rules = self.rules()?;
            let parent_keys: Vec<String> = round
                .iter()
                .filter_map(|&i| TrackRule::parent_of(&rules, doctype.as_str(), &docs[i].body))
                .map(|p| track_key(sharing_id, doctype.as_str(), &p))
                .collect();
            let parent_states = self.track_states(&parent_keys).await?;
            let mut joining: HashMap<DocId, usize> = HashMap::new();
            // 4. Judge.
            let mut planned: Vec<(usize, Vec<Rev>, Option<usize>, bool)> = Vec::new();
            for (&i, key) in round.iter().zip(&keys) {
                let w = &docs[i];
                let tree = trees.get(&w.id).filter(|t| !t.is_empty());
                let parent = TrackRule::parent_of(&rules, doctype.as_str(), &w.body).and_then(|p| {
                    let joined = DocId::parse(&p).ok().and_then(|id| joining.get(&id).copied());
                    joined.or_else(|| {
                        parent_states
                            .get(&track_key(sharing_id, doctype.as_str(), &p))
                            .filter(|(_, st)| !st.removed)
                            .map(|(_, st)| st.rule)
                    })
                });
                let standing =
                    Standing { exists: tree.is_some(), shared: states.get(key).map(|(_, st)| st.shared()), parent };
                let verdict = judge(w, &standing);
                if let Verdict::Accept { join: Some(rule), .. } = verdict {
                    joining.insert(w.id.clone(), rule);
                }
                match verdict {
                    Verdict::Moot => out[i] = Some(Received::Moot),
                    Verdict::Refuse(reason) => out[i] = Some(Received::Refused(reason)),
                    Verdict::Accept { join, revokes } => match w.revisions.as_deref().filter(|p| !p.is_empty()) {
                        None => {
                            out[i] = Some(Received::Invalid("the document needs _rev or _revisions".into()));
                        }
                        Some(path) => planned.push((i, path.to_vec(), join, revokes)),
                    },
                }
            }
            // 5. Take the guards of the accepted documents, conditional on what was read in 1.
            let guard_docs: Vec<Value> = planned
                .iter()
                .map(|(i, path, join, _)| {
                    let w = &docs[*i];
                    let record = GuardRecord {
                        base: trees.get(&w.id).and_then(RevTree::winner).map(|l| l.rev.to_string()),
                        writes: vec![GuardWrite {
                            revisions: path.iter().map(Rev::to_string).collect(),
                            deleted: w.deleted,
                            body: w.body.clone(),
                        }],
                        join: join.map(|rule| GuardJoin { sharing: sharing_id.to_owned(), rule, origin }),
                    };
                    let mut doc = serde_json::to_value(record).unwrap_or(Value::Null);
                    if let Value::Object(m) = &mut doc {
                        m.insert("_id".into(), Value::String(guard_key(doctype, &w.id)));
                        if let Some(rev) = guards.get(&w.id).and_then(|g| g.rev.clone()) {
                            m.insert("_rev".into(), Value::String(rev));
                        }
                    }
                    doc
                })
                .collect();
            let taken = self.take_guards(guard_docs).await?;
            // 6. Under the guard: membership first (a crash before the write leaves a member
            //    without document, never a document that entered the sharing unrecorded), then
            //    the write. A guard lost to another writer: judged again next round.
            let mut joins = Vec::new();
            let mut writes = Vec::new();
            let mut written = Vec::new();
            for (i, path, join, revokes) in planned {
                let w = &docs[i];
                if !taken.contains(&guard_key(doctype, &w.id)) {
                    later.push(i);
                    continue;
                }
                if let Some(rule) = join {
                    let entry = Entry { initial: false, origin: Some(origin) };
                    joins.push(ShareRecord::new(doctype.as_str(), w.id.as_str(), rule, false, entry));
                }
                writes.push(replicated_json(w.id.as_str(), &path, w.deleted, &w.body));
                written.push((i, revokes));
            }
            self.join_sharing(sharing_id, joins).await?;
            let errors = self.write_replicated(doctype, writes).await?;
            for (i, revokes) in written {
                let id = docs[i].id.as_str();
                let error = errors.iter().find(|e| e.get("id").and_then(Value::as_str) == Some(id));
                out[i] = Some(match error {
                    None => Received::Written { revokes },
                    Some(e) => Received::Invalid(format!(
                        "{}: {}",
                        e.get("error").and_then(Value::as_str).unwrap_or("error"),
                        e.get("reason").and_then(Value::as_str).unwrap_or("")
                    )),
                });
            }
            later.sort_unstable();
            pending = later;
        }
        if !pending.is_empty() {
            return Err(StoreError::Unavailable(anyhow!("received documents keep losing their edit guards")));
        }
        // Number and track the writes now, as after any write.
        if let Err(e) = self.catch_up(doctype).await {
            tracing::warn!(%doctype, error = %e, "could not number the changes of a write yet");
        }
        Ok(out.into_iter().map(|r| r.unwrap_or_else(|| Received::Invalid("not applied".into()))).collect())
    }

    async fn shared_docs(
        &self,
        sharing_id: &str,
        after: Option<(Doctype, DocId)>,
        limit: usize,
    ) -> Result<Vec<(Doctype, DocId)>, StoreError> {
        self.catch_up_sharing(sharing_id).await?;
        let prefix = format!("t/{sharing_id}/");
        let end = format!("{prefix}\u{fff0}");
        // Keys sort by doctype then id, since doctypes cannot contain `/`.
        let mut start = match &after {
            Some((t, i)) => format!("{}\u{0}", track_key(sharing_id, t.as_str(), i.as_str())),
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        while out.len() < limit {
            let page = self.meta_range(&start, &end, false, 500).await?;
            let full = page.len() == 500;
            let mut candidates: BTreeMap<Doctype, Vec<DocId>> = BTreeMap::new();
            let mut in_order = Vec::new();
            for (key, doc) in &page {
                let Ok(st) = serde_json::from_value::<TrackState>(doc.clone()) else { continue };
                let Some((dt, id)) = key.strip_prefix(prefix.as_str()).and_then(|r| r.split_once('/')) else {
                    continue;
                };
                let (Ok(dt), Ok(id)) = (Doctype::parse(dt), DocId::parse(id)) else { continue };
                if !st.removed {
                    candidates.entry(dt.clone()).or_default().push(id.clone());
                    in_order.push((dt, id));
                }
            }
            // Deleted documents stay in the sharing's feed, but are no longer shared documents.
            let mut live: HashSet<(Doctype, DocId)> = HashSet::new();
            for (dt, ids) in candidates {
                let db = self.db_name(&dt);
                for chunk in ids.chunks(500) {
                    let keys: Vec<&str> = chunk.iter().map(DocId::as_str).collect();
                    let reply = self
                        .server
                        .send(Method::POST, &[&db, "_all_docs"], &[], Some(&json!({ "keys": keys })))
                        .await?;
                    if reply.db_missing() {
                        continue;
                    }
                    if !reply.status.is_success() {
                        return Err(reply.unexpected("_all_docs for shared documents"));
                    }
                    for row in reply.body.get("rows").and_then(Value::as_array).into_iter().flatten() {
                        let alive = row.get("value").is_some_and(|v| v.get("deleted") != Some(&Value::Bool(true)));
                        if let Some(id) = row.get("id").and_then(Value::as_str).filter(|_| alive) {
                            if let Ok(id) = DocId::parse(id) {
                                live.insert((dt.clone(), id));
                            }
                        }
                    }
                }
            }
            out.extend(in_order.into_iter().filter(|d| live.contains(d)).take(limit - out.len()));
            match page.last() {
                Some((key, _)) if full => start = format!("{key}\u{0}"),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn shared_changes(
        &self,
        sharing_id: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<SharedChange>, StoreError> {
        self.catch_up_sharing(sharing_id).await?;
        let mut out = Vec::new();
        let mut next = since + 1;
        let holding =
            self.meta_range(&share_batch_key(sharing_id, next), &share_batch_key(sharing_id, 0), true, 1).await?;
        let mut queue: VecDeque<ShareBatch> = holding
            .into_iter()
            .filter_map(|(_, d)| serde_json::from_value::<ShareBatch>(d).ok())
            .filter(|b| b.last >= next)
            .collect();
        while out.len() < limit {
            let batch = match queue.pop_front() {
                Some(b) => b,
                None => {
                    let page = self
                        .meta_range(
                            &share_batch_key(sharing_id, next),
                            &share_batch_key(sharing_id, u64::MAX),
                            false,
                            BATCHES_PER_READ,
                        )
                        .await?;
                    if page.is_empty() {
                        break;
                    }
                    for (_, d) in page {
                        let b: ShareBatch =
                            serde_json::from_value(d).map_err(|e| corrupt(format!("sharing feed: {e}")))?;
                        if b.last >= next {
                            queue.push_back(b);
                        }
                    }
                    continue;
                }
            };
            let candidates: Vec<(u64, &(String, String, usize, bool))> = batch
                .rows
                .iter()
                .enumerate()
                .map(|(i, r)| (batch.first + i as u64, r))
                .filter(|(seq, _)| *seq >= next)
                .collect();
            let keys: Vec<String> = candidates.iter().map(|(_, r)| track_key(sharing_id, &r.0, &r.1)).collect();
            let states = self.track_states(&keys).await?;
            for ((seq, row), key) in candidates.into_iter().zip(&keys) {
                // Only a document's latest row counts.
                let Some((_, st)) = states.get(key).filter(|(_, st)| st.seq == seq) else { continue };
                let (Ok(doctype), Ok(id)) = (Doctype::parse(&row.0), DocId::parse(&row.1)) else { continue };
                out.push(SharedChange {
                    seq,
                    doctype,
                    id,
                    rule_index: st.rule,
                    removed: st.removed,
                    joined: st.joined,
                    initial: st.initial,
                    origin: st.origin,
                });
                if out.len() >= limit {
                    break;
                }
            }
            next = batch.last + 1;
        }
        // Batches are checked against the states one after the other: a document written
        // meanwhile can show twice (each row its latest when checked). Only the last one counts.
        let mut seen: HashSet<(Doctype, DocId)> = HashSet::new();
        let mut latest: Vec<SharedChange> = Vec::with_capacity(out.len());
        for c in out.into_iter().rev() {
            if seen.insert((c.doctype.clone(), c.id.clone())) {
                latest.push(c);
            }
        }
        latest.reverse();
        Ok(latest)
    }

    async fn shared_state(
        &self,
        sharing_id: &str,
        doctype: &Doctype,
        ids: &[DocId],
    ) -> Result<HashMap<DocId, SharedState>, StoreError> {
        self.catch_up(doctype).await?;
        let keys: Vec<String> = ids.iter().map(|id| track_key(sharing_id, doctype.as_str(), id.as_str())).collect();
        let states = self.track_states(&keys).await?;
        Ok(ids.iter().zip(&keys).filter_map(|(id, k)| states.get(k).map(|(_, st)| (id.clone(), st.shared()))).collect())
    }

    async fn shared_info(&self, sharing_id: &str, since: u64) -> Result<SharedInfo, StoreError> {
        self.catch_up_sharing(sharing_id).await?;
        let latest =
            self.meta_range(&share_batch_key(sharing_id, u64::MAX), &share_batch_key(sharing_id, 0), true, 1).await?;
        let last_seq = match latest.into_iter().next() {
            Some((_, d)) => {
                serde_json::from_value::<ShareBatch>(d).map_err(|e| corrupt(format!("sharing feed: {e}")))?.last
            }
            None => 0,
        };
        let states = self.all_track_states(sharing_id).await?;
        let docs = states.iter().filter(|(_, _, st)| !st.removed).count() as u64;
        let pending = states.iter().filter(|(_, _, st)| st.seq > since).count() as u64;
        Ok(SharedInfo { last_seq, docs, pending })
    }

    async fn untrack(&self, sharing_id: &str) -> Result<(), StoreError> {
        let lock = self.share_lock(sharing_id)?;
        let _held = lock.lock().await;
        for prefix in [format!("t/{sharing_id}/"), format!("u/{sharing_id}/"), start_key(sharing_id)] {
            loop {
                let page = self.meta_range(&prefix, &format!("{prefix}\u{fff0}"), false, 500).await?;
                if page.is_empty() {
                    break;
                }
                let keys: Vec<String> = page.iter().map(|(k, _)| k.clone()).collect();
                let docs: Vec<Value> = self
                    .meta_docs(&keys)
                    .await?
                    .into_iter()
                    .map(|(id, (rev, _))| json!({"_id": id, "_rev": rev, "_deleted": true}))
                    .collect();
                if docs.is_empty() {
                    break;
                }
                let reply = self
                    .send_to_db(&self.meta_db, Method::POST, &["_bulk_docs"], &[], Some(&json!({ "docs": docs })))
                    .await?;
                if !reply.status.is_success() {
                    return Err(reply.unexpected("forgetting a sharing's feed"));
                }
            }
        }
        Ok(())
    }

    async fn advance_seq(&self, doctype: &Doctype, at_least: u64) -> Result<(), StoreError> {
        let lock = self.seq_lock(doctype)?;
        let _held = lock.lock().await;
        loop {
            let latest = self.catch_up_locked(doctype).await?;
            let last = latest.as_ref().map_or(0, |b| b.last);
            if last >= at_least {
                return Ok(());
            }
            let since = latest.map_or(json!(0), |b| b.since);
            let batch = Batch { first: last + 1, last: at_least, since, rows: Vec::new() };
            let body = serde_json::to_value(&batch).map_err(internal)?;
            if self.create_meta(&batch_key(doctype, last + 1), &body).await? {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(s: &str) -> Doctype {
        Doctype::parse(s).unwrap()
    }

    #[test]
    fn names_are_valid_and_reversible() {
        for (domain, doctype, name) in [
            ("alice.localhost:8080", "io.cozy.notes", "hearth+alice-localhost_8080+io-cozy-notes"),
            ("my-host.example.net", "io.cozy.bank-accounts", "hearth+my$host-example-net+io-cozy-bank$accounts"),
            ("a.b", "x_y.z", "hearth+a-b+x_y-z"),
        ] {
            let got = format!("hearth+{}+{}", map_domain(domain), map_doctype(&dt(doctype)));
            assert_eq!(got, name);
            assert!(valid_db_name(&got), "{got}");
            assert_eq!(unmap_doctype(&map_doctype(&dt(doctype))), Some(dt(doctype)));
        }
        assert_ne!(map_doctype(&dt("a.b-c")), map_doctype(&dt("a-b.c")));
        assert_ne!(map_domain("a-b.c"), map_domain("a.b-c"));
        assert_eq!(unmap_doctype("$meta"), None);
        let long = format!("{}.example.net", "a".repeat(200));
        let name = format!("hearth+{}+{}", map_domain(&long), map_doctype(&dt(&"x".repeat(128))));
        assert!(valid_db_name(&name), "{} chars", name.len());
    }

    #[test]
    fn leaves_are_ordered_winner_first() {
        let r = |s: &str| s.parse::<Rev>().unwrap();
        let all = vec![r("3-ccc"), r("2-aaa"), r("2-bbb")];
        assert_eq!(
            order_leaves(all.clone(), Some(r("2-bbb")), &[r("2-aaa")]),
            vec![r("2-bbb"), r("2-aaa"), r("3-ccc")]
        );
        assert_eq!(order_leaves(all.clone(), None, &[]), all);
    }

    #[test]
    fn batch_keys_sort_numerically() {
        let t = dt("io.cozy.notes");
        assert!(batch_key(&t, 9) < batch_key(&t, 10));
        assert!(batch_key(&t, 0) < batch_key(&t, 1) && batch_key(&t, u64::MAX) > batch_key(&t, 1 << 40));
    }
}
