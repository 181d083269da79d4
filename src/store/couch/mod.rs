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
//! initial, origin, left_rev}`, updated under MVCC, the latest sequence winning), and the
//! sharing's feed is a chain of `u/<sharing>/<first>` batches numbered like the document
//! batches; a feed row counts only if it is still its document's latest. `s/<sharing>` marks a
//! sharing whose initial set was taken (`track_existing` writes it once the set is recorded;
//! later calls stop there). A received document's membership is recorded before its write (see "Atomicity"),
//! so the two get different rows; the state keeps the revision the write brings, and the
//! write's row, if that revision is still the winner and nothing changed in between, becomes
//! its `joined` row: as on SQLite, `joined == seq` means the document has not changed here
//! since it came from its sender, and is not sent back to it. Sharings and the outbox
//! themselves are documents of internal doctypes, written with the interactive-edit rules
//! below.
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
//!
//! # Where things live
//!
//! * `client`: [`CouchServer`] (the HTTP clients, the startup check, creating and deleting
//!   databases), each answer as a `Reply`, the errors transport failures and refusals map to,
//!   and a store's requests to its databases and its meta database.
//! * `naming`: database names and the keys of the meta database's documents.
//! * `documents`: documents as stored (bodies as text), a document's tree as read back,
//!   replicated writes, `_bulk_get`, `_all_docs`, `_local` reads.
//! * `sequence`: the sequencer, and the index that serves `changes` ("Sequence numbers").
//! * `guards`: edit guards, interactive and replicated writes ("Atomicity").
//! * `track`: sharing membership and feeds, the initial set ("Sharing tracking").
//! * `store_impl`: the [`Store`] trait, built from the above; received documents are judged
//!   and written there (`apply_received`).
//! * This file: the tunables and [`CouchStore`], one instance's handle.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::*;

mod client;
mod documents;
mod guards;
mod naming;
mod sequence;
mod store_impl;
mod track;

pub use client::CouchServer;
use client::*;
use documents::*;
use guards::*;
use naming::*;
use sequence::*;
use track::*;

/// Longest wait for a TCP (and TLS) connection to CouchDB.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for one CouchDB request, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Database name prefix when `couchdb.prefix` is not set.
pub const DEFAULT_PREFIX: &str = "hearth";
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
}
