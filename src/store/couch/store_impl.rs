//! The [`Store`] trait on CouchDB: each operation in terms of the client, the sequence index,
//! the edit guards and the tracking of the sibling modules. A document a peer sends for a
//! sharing is judged and written here, in `apply_received` (see "Atomicity").

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use anyhow::anyhow;
use async_trait::async_trait;
use hearth_replicator::rev::Rev;
use hearth_replicator::tree::RevTree;
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use super::*;

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
        self.read_changes(doctype, query).await
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
        self.read_all_docs(doctype, query).await
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
            let current = self.local_rev(&db, id).await?.map_or(0, |(n, _)| n);
            if let Some(n) = self.write_local(&db, id, &body, current).await? {
                return Ok(n);
            }
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
        self.write_local(&db, id, &body, expected).await?.ok_or(StoreError::Conflict)
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

    async fn track_existing(&self, sharing_id: &SharingId) -> Result<u64, StoreError> {
        let sharing_id = sharing_id.as_str();
        self.take_existing(sharing_id).await
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
        sharing_id: &SharingId,
        origin: MemberIndex,
        doctype: &Doctype,
        docs: Vec<DocWrite>,
        judge: Arc<Judge>,
    ) -> Result<Vec<Received>, StoreError> {
        let sharing_id = sharing_id.as_str();
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
                    let arrival = path.first().map(Rev::to_string);
                    // `track` keeps the index as the bare number it stores.
                    let entry = Entry { initial: false, origin: Some(origin.get()), arrival };
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
        sharing_id: &SharingId,
        after: Option<(Doctype, DocId)>,
        limit: usize,
    ) -> Result<Vec<(Doctype, DocId)>, StoreError> {
        let sharing_id = sharing_id.as_str();
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
        sharing_id: &SharingId,
        since: u64,
        limit: usize,
    ) -> Result<Vec<SharedChange>, StoreError> {
        let sharing_id = sharing_id.as_str();
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
                let left_rev = st.left_rev.as_deref().map(parse_rev).transpose()?;
                out.push(SharedChange {
                    seq,
                    doctype,
                    id,
                    rule_index: st.rule,
                    removed: st.removed,
                    joined: st.joined,
                    initial: st.initial,
                    origin: st.origin.map(MemberIndex),
                    left_rev,
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
        sharing_id: &SharingId,
        doctype: &Doctype,
        ids: &[DocId],
    ) -> Result<HashMap<DocId, SharedState>, StoreError> {
        let sharing_id = sharing_id.as_str();
        self.catch_up(doctype).await?;
        let keys: Vec<String> = ids.iter().map(|id| track_key(sharing_id, doctype.as_str(), id.as_str())).collect();
        let states = self.track_states(&keys).await?;
        Ok(ids.iter().zip(&keys).filter_map(|(id, k)| states.get(k).map(|(_, st)| (id.clone(), st.shared()))).collect())
    }

    async fn shared_info(&self, sharing_id: &SharingId, since: u64) -> Result<SharedInfo, StoreError> {
        let sharing_id = sharing_id.as_str();
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

    async fn untrack(&self, sharing_id: &SharingId) -> Result<(), StoreError> {
        let sharing_id = sharing_id.as_str();
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

impl CouchStore {
    /// `PUT <db>/_local/<id>` over revision `0-<rev>` (none when `rev` is 0): the new revision
    /// number, or `None` when CouchDB answers 409 (the revision moved on).
    async fn write_local(&self, db: &str, id: &str, body: &Body, rev: u64) -> Result<Option<u64>, StoreError> {
        let mut doc: Map<String, Value> = body_member(body).into_iter().collect();
        if rev > 0 {
            doc.insert("_rev".into(), Value::String(format!("0-{rev}")));
        }
        let reply = self.send_to_db(db, Method::PUT, &["_local", id], &[], Some(&Value::Object(doc))).await?;
        if reply.status == StatusCode::CONFLICT {
            return Ok(None);
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
        Ok(Some(n))
    }
}
