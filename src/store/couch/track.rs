//! Sharing tracking: each document's membership of a sharing (`t/<sharing>/<doctype>/<id>`),
//! the sharing's feed (`u/<sharing>/<first>` batches), the rules applied to each page the
//! sequencer numbers, and the initial set a sharing takes. See "Sharing tracking" in the module
//! documentation.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::anyhow;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::*;
use crate::store::tracking::{self, TrackAction};

/// A document's membership in one sharing, `t/<sharing>/<doctype>/<id>` in the meta database.
/// `joined`, `initial` and `origin` are set when the state is created and kept afterwards
/// (absent from states written by older versions: 0, false, none), except that a received
/// document's state moves `joined` to the row of the write that brought it (see `arrival`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct TrackState {
    pub(super) seq: u64,
    pub(super) rule: usize,
    pub(super) removed: bool,
    #[serde(default)]
    pub(super) joined: u64,
    #[serde(default)]
    pub(super) initial: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) origin: Option<usize>,
    /// For a received document whose membership is recorded before its write (see
    /// "Atomicity"): the revision that write brings. The membership's row and the write's row
    /// are numbered apart here (on SQLite they are one row), so when the sequencer tracks the
    /// write, still the winner and with nothing changed since the membership (`seq == joined`),
    /// `joined` moves to the write's row: `joined == seq` then means, as on SQLite, that the
    /// document has not changed here since it came from `origin`, and it is not sent back
    /// (`SharedChange::joined`). Cleared by any later row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) arrival: Option<String>,
    /// For a removed state, the revision the document left at (`SharedChange::left_rev`);
    /// absent from states written by older versions. Set by each row, never kept from an
    /// older state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) left_rev: Option<String>,
}

impl TrackState {
    pub(super) fn shared(&self) -> SharedState {
        SharedState { rule_index: self.rule, removed: self.removed, seq: self.seq }
    }
}

/// How a document enters a sharing, recorded when its state is created (`arrival`: see
/// [`TrackState::arrival`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Entry {
    pub(super) initial: bool,
    pub(super) origin: Option<usize>,
    pub(super) arrival: Option<String>,
}

/// A row to append to a sharing's feed.
#[derive(Debug, Clone)]
pub(super) struct ShareRecord {
    doctype: String,
    id: String,
    rule: usize,
    removed: bool,
    entry: Entry,
    /// The row is the write of a received document's `arrival`: its state's `joined` moves to it.
    arrived: bool,
    /// For a removed row, the revision the document left at ([`TrackState::left_rev`]).
    left_rev: Option<String>,
}

impl ShareRecord {
    pub(super) fn new(doctype: &str, id: &str, rule: usize, removed: bool, entry: Entry) -> ShareRecord {
        let (doctype, id) = (doctype.to_owned(), id.to_owned());
        ShareRecord { doctype, id, rule, removed, entry, arrived: false, left_rev: None }
    }
}

/// A batch of a sharing's feed, `u/<sharing>/<first>`: rows (doctype, id, rule, removed)
/// numbered `first..=last`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ShareBatch {
    pub(super) first: u64,
    pub(super) last: u64,
    pub(super) rows: Vec<(String, String, usize, bool)>,
}

impl CouchStore {
    /// The tracking rules; `Internal` if their lock is poisoned (nothing is numbered untracked).
    pub(super) fn rules(&self) -> Result<Arc<Vec<TrackRule>>, StoreError> {
        self.tracking.get()
    }

    pub(super) fn share_lock(&self, sharing: &str) -> Result<Arc<tokio::sync::Mutex<()>>, StoreError> {
        let mut locks = self.share_locks.lock().map_err(|_| internal(anyhow!("sharing lock poisoned")))?;
        Ok(locks.entry(sharing.to_owned()).or_default().clone())
    }

    pub(super) async fn track_states(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, (String, TrackState)>, StoreError> {
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
    pub(super) async fn track_rows(
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
            // Received documents whose write this page may hold: the revision it brings.
            let mut arriving: HashMap<&str, &str> = HashMap::new();
            for (row, key) in rows.iter().zip(&keys) {
                if let Some((_, st)) = states.get(key) {
                    current.insert(row.0.as_str(), (st.rule, st.removed));
                    if let Some(rev) = st.arrival.as_deref().filter(|_| st.joined == st.seq && !st.removed) {
                        arriving.insert(row.0.as_str(), rev);
                    }
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
                    let mut record = ShareRecord::new(doctype.as_str(), &row.0, rule_index, removed, Entry::default());
                    // The received write itself, its revision still the winner: nothing changed
                    // here since it came (a later edit on top of it, or winning over it, would
                    // be the winner instead).
                    let arrival = arriving.remove(row.0.as_str());
                    record.arrived =
                        !removed && arrival.is_some_and(|rev| row.1.first().map(String::as_str) == Some(rev));
                    // Leaving: the winner whose body no longer matches.
                    record.left_rev = row.1.first().filter(|_| removed).cloned();
                    records.push(record);
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
        let mut pending: Vec<(String, TrackState, bool)> = rows
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
                    arrival: r.entry.arrival.clone(),
                    left_rev: r.left_rev.clone(),
                };
                (track_key(sharing, &r.doctype, &r.id), state, r.arrived)
            })
            .collect();
        for _ in 0..EDIT_ATTEMPTS {
            if pending.is_empty() {
                return Ok(());
            }
            let keys: Vec<String> = pending.iter().map(|(k, _, _)| k.clone()).collect();
            // The states the caller just read (under the same lock) serve the first round.
            let existing = match known.take() {
                Some(k) => k,
                None => self.track_states(&keys).await?,
            };
            let docs: Vec<Value> = pending
                .iter()
                // Another process may have recorded a later change meanwhile: keep the latest.
                .filter(|(k, st, _)| existing.get(k).is_none_or(|(_, old)| old.seq < st.seq))
                .map(|(k, st, arrived)| {
                    let mut st = st.clone();
                    if let Some((_, old)) = existing.get(k) {
                        // The received write's own row: `joined` follows it (see `arrival`),
                        // if the state is still the one that awaited it.
                        let arrived = *arrived && old.arrival.is_some() && old.joined == old.seq;
                        let joined = if arrived { st.seq } else { old.joined };
                        (st.joined, st.initial, st.origin) = (joined, old.initial, old.origin);
                        st.arrival = None;
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
            pending.retain(|(k, _, _)| conflicted.contains(k));
        }
        Err(StoreError::Unavailable(anyhow!("tracking states of sharing {sharing} keep conflicting")))
    }

    /// Numbers (and so tracks) the pending changes of every doctype the sharing's rules name.
    pub(super) async fn catch_up_sharing(&self, sharing: &str) -> Result<(), StoreError> {
        let mut doctypes: Vec<Doctype> =
            self.rules()?.iter().filter(|r| r.sharing_id == sharing).map(|r| r.doctype.clone()).collect();
        doctypes.sort();
        doctypes.dedup();
        for dt in doctypes {
            self.catch_up(&dt).await?;
        }
        Ok(())
    }

    /// Every tracking state of a sharing (paged).
    pub(super) async fn all_track_states(
        &self,
        sharing: &str,
    ) -> Result<Vec<(String, String, TrackState)>, StoreError> {
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

    /// Records received documents entering a sharing (before they are written).
    pub(super) async fn join_sharing(&self, sharing: &str, records: Vec<ShareRecord>) -> Result<(), StoreError> {
        let lock = self.share_lock(sharing)?;
        let _held = lock.lock().await;
        self.record_shared(sharing, records, None).await
    }

    /// [`Store::track_existing`]: records the documents a sharing's rules select, once.
    pub(super) async fn take_existing(&self, sharing_id: &str) -> Result<u64, StoreError> {
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
            let doctype = rule.doctype.clone();
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
                    if done.insert((rule.doctype.to_string(), id.to_owned())) {
                        candidates.push((id.to_owned(), stored_body(doc)?));
                    }
                }
                let keys: Vec<String> =
                    candidates.iter().map(|(id, _)| track_key(sharing_id, rule.doctype.as_str(), id)).collect();
                let states = self.track_states(&keys).await?;
                let mut records = Vec::new();
                for ((id, body), key) in candidates.iter().zip(&keys) {
                    if states.get(key).is_some_and(|(_, st)| !st.removed) {
                        continue;
                    }
                    // The first matching rule of the sharing wins, as for later writes.
                    if let Some(first) = rules.iter().find(|r| r.matches(rule.doctype.as_str(), id, body)) {
                        let entry = Entry { initial: true, origin: None, arrival: None };
                        records.push(ShareRecord::new(rule.doctype.as_str(), id, first.rule_index, false, entry));
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
                        let entry = Entry { initial: true, origin: None, arrival: None };
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
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::CouchConfig;
    use crate::store::json;

    /// The CouchDB named by `HEARTH_TEST_COUCHDB_URL` (as for tests/couch_store.rs), with a
    /// fresh prefix; `None`, saying so, when no server was given.
    fn test_server() -> Option<Arc<CouchServer>> {
        let Ok(url) = std::env::var("HEARTH_TEST_COUCHDB_URL") else {
            eprintln!("SKIPPED: set HEARTH_TEST_COUCHDB_URL to run the CouchDB backend tests (scripts/test does)");
            return None;
        };
        let config = CouchConfig {
            url: Some(url),
            user: std::env::var("HEARTH_TEST_COUCHDB_USER").ok(),
            password: std::env::var("HEARTH_TEST_COUCHDB_PASSWORD").ok().map(Into::into),
            prefix: Some(format!("t{}", uuid::Uuid::new_v4().simple())),
        };
        Some(CouchServer::connect_blocking(&config).expect("the test CouchDB must be reachable"))
    }

    /// CouchDB has no transaction to fail: the write itself stands, but while the rules are
    /// poisoned the sequencer numbers nothing (numbering tracks first), so the feed answers an
    /// error rather than a change that escaped tracking; once the rules are set again the
    /// change is numbered and tracked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_is_never_numbered_untracked_while_the_tracking_rules_are_poisoned() {
        let Some(server) = test_server() else { return };
        let store = server.store("poison.localhost", 1000);
        let t = Doctype::parse("io.hearth.notes").expect("doctype");
        let rule =
            crate::store::conformance::track_rule(&SharingId::parse("e1").expect("id"), &t, 0, None, &["a"], true);
        store.set_tracking(vec![rule.clone()]);
        let id = DocId::parse("a").expect("id");
        let body = json!({"n": 1}).as_object().cloned().expect("object");

        store.tracking.poison();
        json::put(&store, &t, &id, None, body).await.expect("the write itself");
        let refused = store.changes(&t, &ChangesQuery::default()).await;
        assert!(matches!(refused, Err(StoreError::Internal(_))), "{refused:?}");

        // Setting the rules again heals the lock: the change is numbered, and tracked.
        store.set_tracking(vec![rule]);
        let feed = store.changes(&t, &ChangesQuery::default()).await.expect("feed");
        assert_eq!(feed.rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a"]);
        let shared = store.shared_changes(&SharingId::parse("e1").expect("id"), 0, 10).await.expect("sharing feed");
        assert_eq!(shared.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["a"]);
    }
}
