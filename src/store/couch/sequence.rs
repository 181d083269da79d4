//! Sequence numbering: the sequencer that numbers CouchDB's changes into `b/<doctype>/<first>`
//! batches of the meta database (tracking them first), and the reads of that index that serve
//! the feed: batches by number, whether a row is still current, and `pending`. See "Sequence
//! numbers" in the module documentation.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use anyhow::anyhow;
use hearth_replicator::rev::Rev;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::*;

/// One row of a sequencer batch: document id, leaves winner first, winner deleted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct BatchRow(pub(super) String, pub(super) Vec<String>, pub(super) bool);

/// A sequencer batch: rows numbered `first..`, every number up to `last` used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Batch {
    pub(super) first: u64,
    pub(super) last: u64,
    /// CouchDB's `last_seq` after these rows: where the next batch reads from.
    pub(super) since: Value,
    pub(super) rows: Vec<BatchRow>,
}

/// One page of CouchDB's feed: rows, the winners' bodies (for tracking), how many rows CouchDB
/// sent (some may not be hearth's) and where the page ends.
struct FeedPage {
    rows: Vec<BatchRow>,
    bodies: Vec<Body>,
    read: usize,
    last_seq: Value,
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

/// A CouchDB sequence (an opaque string on CouchDB 2+, a number on PouchDB Server) as a query
/// parameter.
fn seq_param(since: &Value) -> String {
    match since {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => "0".to_owned(),
    }
}

impl CouchStore {
    pub(super) fn seq_lock(&self, doctype: &Doctype) -> Result<Arc<tokio::sync::Mutex<()>>, StoreError> {
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
    pub(super) async fn catch_up(&self, doctype: &Doctype) -> Result<u64, StoreError> {
        let lock = self.seq_lock(doctype)?;
        let _held = lock.lock().await;
        self.catch_up_locked(doctype).await.map(|b| b.map_or(0, |b| b.last))
    }

    pub(super) async fn catch_up_locked(&self, doctype: &Doctype) -> Result<Option<Batch>, StoreError> {
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

    /// [`Store::changes`], served from the sequence index: each document once, at its latest row.
    pub(super) async fn read_changes(&self, doctype: &Doctype, query: &ChangesQuery) -> Result<Changes, StoreError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
