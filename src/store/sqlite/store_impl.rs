//! The `Store` trait over the tables of one instance's database file.

use std::collections::BTreeSet;

use super::*;

/// The removed rows of a document (`?2`, `?3`) in one sharing (`?1`): one look-up by key.
pub(super) const REMOVED_ROWS: &str =
    "SELECT COUNT(*) FROM shared WHERE sharing_id = ?1 AND doctype = ?2 AND id = ?3 AND removed = 1";

/// A page of a sharing's (`?1`) live documents after the cursor (`?2` doctype, `?3` id), at
/// most `?4`: a row-value comparison, so that the key seeks to the cursor.
pub(super) const SHARED_DOCS: &str =
    "SELECT s.doctype, s.id FROM shared s JOIN docs d ON d.doctype = s.doctype AND d.id = s.id
     WHERE s.sharing_id = ?1 AND s.removed = 0 AND d.deleted = 0 AND (s.doctype, s.id) > (?2, ?3)
     ORDER BY s.doctype, s.id LIMIT ?4";

#[async_trait]
impl Store for SqliteStore {
    async fn db_info(&self, doctype: &Doctype) -> Result<DbInfo, StoreError> {
        let doctype = doctype.as_str().to_owned();
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT last_seq, doc_count, del_count FROM doctypes WHERE doctype = ?1")?;
            let row = stmt
                .query_row(params![doctype], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))
                .optional()?;
            let (seq, docs, dels) = row.unwrap_or((0, 0, 0));
            Ok(DbInfo { update_seq: seq as u64, doc_count: docs.max(0) as u64, doc_del_count: dels.max(0) as u64 })
        })
        .await
    }

    async fn get(&self, doctype: &Doctype, id: &DocId, opts: GetOptions) -> Result<DocView, StoreError> {
        let (doctype, id) = (doctype.as_str().to_owned(), id.clone());
        let (of, key) = (doctype.clone(), id.as_str().to_owned());
        let bytes = move |conn: &Connection| leaf_bodies(conn, &of, &[&key], 1);
        self.read_point(true, bytes, move |conn| {
            let row = load_doc(conn, &doctype, id.as_str())?.ok_or(StoreError::NotFound)?;
            let rev = requested_rev(&row.tree, opts.rev.clone())?;
            let doc = doc_rev(conn, &doctype, &id, &row.tree, &rev, opts.revs)?.ok_or(StoreError::NotFound)?;
            Ok(DocView { doc, conflicts: row.tree.conflicts(), deleted_conflicts: row.tree.deleted_conflicts() })
        })
        .await
    }

    async fn open_revs(
        &self,
        doctype: &Doctype,
        id: &DocId,
        revs: OpenRevs,
        latest: bool,
    ) -> Result<Vec<OpenRev>, StoreError> {
        let (doctype, id) = (doctype.as_str().to_owned(), id.clone());
        // Each revision named is read (and parsed) once per time it is named.
        let times = match &revs {
            OpenRevs::All => 1,
            OpenRevs::Some(named) => named.len(),
        };
        let (of, key) = (doctype.clone(), id.as_str().to_owned());
        let bytes = move |conn: &Connection| leaf_bodies(conn, &of, &[&key], times);
        self.read_point(times <= POINT_READ_KEYS, bytes, move |conn| open_revs_in(conn, &doctype, &id, revs, latest))
            .await
    }

    async fn open_revs_many(
        &self,
        doctype: &Doctype,
        wanted: Vec<(DocId, Vec<Rev>)>,
    ) -> Result<Vec<(DocId, Vec<OpenRev>)>, StoreError> {
        let doctype = doctype.as_str().to_owned();
        self.read(move |conn| {
            wanted
                .into_iter()
                .map(|(id, revs)| Ok((id.clone(), open_revs_in(conn, &doctype, &id, OpenRevs::Some(revs), false)?)))
                .collect()
        })
        .await
    }

    async fn bulk_docs(
        &self,
        doctype: &Doctype,
        docs: Vec<DocWrite>,
        new_edits: bool,
    ) -> Result<Vec<WriteResult>, StoreError> {
        let doctype = doctype.as_str().to_owned();
        self.write(move |tx, ctx| {
            let mut counters = DoctypeCounters::load(tx, &doctype)?;
            let mut results = Vec::with_capacity(if new_edits { docs.len() } else { 0 });
            if new_edits {
                for w in &docs {
                    results.push(apply_interactive(tx, ctx, &mut counters, &doctype, w)?);
                }
            } else {
                // Grouped per document, in order of first appearance (each keeps request order).
                let mut groups: Vec<(&DocId, Vec<&DocWrite>)> = Vec::new();
                let mut index: HashMap<&DocId, usize> = HashMap::new();
                for w in &docs {
                    let i = *index.entry(&w.id).or_insert_with(|| {
                        groups.push((&w.id, Vec::new()));
                        groups.len() - 1
                    });
                    groups[i].1.push(w);
                }
                for (id, writes) in groups {
                    let existing = load_doc(tx, &doctype, id.as_str())?;
                    results.extend(apply_replicated(
                        tx,
                        ctx,
                        &mut counters,
                        &doctype,
                        id,
                        &writes,
                        Prior { existing, join: None },
                    )?);
                }
            }
            counters.save(tx, &doctype)?;
            Ok(results)
        })
        .await
    }

    async fn changes(&self, doctype: &Doctype, query: &ChangesQuery) -> Result<Changes, StoreError> {
        let doctype = doctype.as_str().to_owned();
        // Nothing after `since` (the doctype's counter, which numbered every row, is not past
        // it): answered by a point read, without a trip to the blocking pool. Most catch-ups of
        // the files index, one or two per request on files, find nothing.
        if query.limit != Some(0) && self.inner.reader_idle() {
            let probe = doctype.clone();
            let last: Option<i64> = self
                .read_point(true, no_bodies, move |conn| {
                    Ok(conn
                        .prepare_cached("SELECT last_seq FROM doctypes WHERE doctype = ?1")?
                        .query_row(params![probe], |r| r.get(0))
                        .optional()?)
                })
                .await?;
            if last.is_none_or(|last| last <= query.since as i64) {
                return Ok(Changes { rows: Vec::new(), last_seq: query.since, pending: 0 });
            }
        }
        let query = query.clone();
        self.read(move |conn| {
            let limit = query.limit.map_or(i64::MAX, |l| l as i64);
            let ids_json = query
                .doc_ids
                .as_ref()
                .map(|ids| serde_json::to_string(&ids.iter().map(|i| i.as_str()).collect::<Vec<_>>()))
                .transpose()
                .map_err(internal)?;
            let sql = match (&ids_json, query.include_docs) {
                (None, false) => {
                    "SELECT d.id, d.seq, d.leaves, d.deleted, NULL FROM docs d
                    WHERE d.doctype = ?1 AND d.seq > ?2 ORDER BY d.seq LIMIT ?3"
                }
                (None, true) => {
                    "SELECT d.id, d.seq, d.leaves, d.deleted, b.body FROM docs d
                    LEFT JOIN bodies b ON b.doctype = d.doctype AND b.id = d.id AND b.rev = d.winner
                    WHERE d.doctype = ?1 AND d.seq > ?2 ORDER BY d.seq LIMIT ?3"
                }
                (Some(_), false) => {
                    "SELECT d.id, d.seq, d.leaves, d.deleted, NULL FROM docs d
                    WHERE d.doctype = ?1 AND d.seq > ?2 AND d.id IN (SELECT value FROM json_each(?4))
                    ORDER BY d.seq LIMIT ?3"
                }
                (Some(_), true) => {
                    "SELECT d.id, d.seq, d.leaves, d.deleted, b.body FROM docs d
                    LEFT JOIN bodies b ON b.doctype = d.doctype AND b.id = d.id AND b.rev = d.winner
                    WHERE d.doctype = ?1 AND d.seq > ?2 AND d.id IN (SELECT value FROM json_each(?4))
                    ORDER BY d.seq LIMIT ?3"
                }
            };
            let mut stmt = conn.prepare_cached(sql)?;
            let map_row = |r: &rusqlite::Row<'_>| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, Option<Vec<u8>>>(4)?,
                ))
            };
            let found = match &ids_json {
                None => stmt.query_map(params![doctype, query.since as i64, limit], map_row)?,
                Some(ids) => stmt.query_map(params![doctype, query.since as i64, limit, ids], map_row)?,
            };
            // Rows are read one at a time: the read stops once the bodies reach `max_bytes`.
            let max_bytes = query.max_bytes.filter(|_| query.include_docs).unwrap_or(usize::MAX);
            let (mut raw, mut bytes, mut cut) = (Vec::new(), 0usize, false);
            for row in found {
                if bytes >= max_bytes {
                    cut = true;
                    break;
                }
                let row = row?;
                bytes += row.4.as_ref().map_or(0, Vec::len);
                raw.push(row);
            }
            let mut rows = Vec::with_capacity(raw.len());
            let mut last_seq = query.since;
            for (id, seq, leaves, deleted, body) in raw {
                let leaves = decode_leaves(&id, &leaves)?;
                let winner = leaves.first().ok_or_else(|| StoreError::Corrupt(format!("no leaves for {id}")))?.clone();
                let doc_id = DocId::parse(&id).map_err(StoreError::Corrupt)?;
                let doc = match body {
                    Some(b) => Some(DocRev {
                        id: doc_id.clone(),
                        rev: winner.0.clone(),
                        deleted: winner.1,
                        body: parse_body(&id, b)?,
                        revisions: None,
                    }),
                    None => None,
                };
                let changes =
                    if query.all_docs { leaves.into_iter().map(|(r, _)| r).collect() } else { vec![winner.0] };
                last_seq = seq as u64;
                rows.push(ChangeRow { seq: seq as u64, id: doc_id, changes, deleted, doc });
            }
            // A shorter page than asked for is the end of the feed, in this read's snapshot,
            // unless the read stopped on `max_bytes`.
            let pending = match query.limit {
                _ if cut => pending(conn, &doctype, last_seq, ids_json.as_deref())?,
                Some(l) if rows.len() >= l => pending(conn, &doctype, last_seq, ids_json.as_deref())?,
                _ => 0,
            };
            Ok(Changes { rows, last_seq, pending })
        })
        .await
    }

    async fn revs_diff(
        &self,
        doctype: &Doctype,
        revs: BTreeMap<DocId, Vec<Rev>>,
    ) -> Result<BTreeMap<DocId, RevsDiff>, StoreError> {
        let doctype = doctype.as_str().to_owned();
        self.read_point(revs.len() <= POINT_READ_KEYS, no_bodies, move |conn| {
            let mut out = BTreeMap::new();
            for (id, wanted) in revs {
                let (missing, possible_ancestors) = match load_doc(conn, &doctype, id.as_str())? {
                    Some(row) => row.tree.revs_diff(&wanted),
                    None => {
                        let mut seen = HashSet::new();
                        (wanted.into_iter().filter(|r| seen.insert(r.clone())).collect(), Vec::new())
                    }
                };
                if !missing.is_empty() {
                    out.insert(id, RevsDiff { missing, possible_ancestors });
                }
            }
            Ok(out)
        })
        .await
    }

    async fn all_docs(&self, doctype: &Doctype, query: &AllDocsQuery) -> Result<AllDocs, StoreError> {
        let doctype = doctype.as_str().to_owned();
        let query = query.clone();
        let keys: Vec<String> = query.keys.iter().flatten().map(|k| k.as_str().to_owned()).collect();
        let (of, include_docs) = (doctype.clone(), query.include_docs);
        let bytes = move |conn: &Connection| match include_docs {
            true => leaf_bodies(conn, &of, &keys.iter().map(String::as_str).collect::<Vec<_>>(), 1),
            false => Ok(0),
        };
        let point = query.keys.as_ref().is_some_and(|k| k.len() <= POINT_READ_KEYS);
        self.read_point(point, bytes, move |conn| {
            let total: i64 = conn
                .prepare_cached("SELECT doc_count FROM doctypes WHERE doctype = ?1")?
                .query_row(params![doctype], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            let mut rows = Vec::new();
            // Bodies read so far, against `max_bytes`.
            let max_bytes = query.max_bytes.filter(|_| query.include_docs).unwrap_or(usize::MAX);
            let mut bytes = 0usize;
            let fetch_doc = |id: &DocId, rev: &Rev, deleted: bool| -> Result<Option<DocRev>, StoreError> {
                if !query.include_docs || deleted {
                    return Ok(None);
                }
                Ok(load_body(conn, &doctype, id.as_str(), rev)?.map(|body| DocRev {
                    id: id.clone(),
                    rev: rev.clone(),
                    deleted,
                    body,
                    revisions: None,
                }))
            };
            let size = |doc: &Option<DocRev>| doc.as_ref().map_or(0, |d| d.body.as_str().len());
            let mut more = false;
            if let Some(keys) = &query.keys {
                let mut stmt =
                    conn.prepare_cached("SELECT winner, deleted FROM docs WHERE doctype = ?1 AND id = ?2")?;
                let wanted: Vec<&DocId> =
                    keys.iter().skip(query.skip).take(query.limit.unwrap_or(usize::MAX)).collect();
                for key in wanted {
                    if bytes >= max_bytes {
                        // Keys remain unanswered.
                        more = true;
                        break;
                    }
                    let found = stmt
                        .query_row(params![doctype, key.as_str()], |r| {
                            Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))
                        })
                        .optional()?;
                    rows.push(match found {
                        Some((rev, deleted)) => {
                            let rev: Rev = rev.parse().map_err(|_| StoreError::Corrupt(format!("winner of {key}")))?;
                            let doc = fetch_doc(key, &rev, deleted)?;
                            bytes += size(&doc);
                            AllDocsRow::Doc { id: key.clone(), rev, deleted, doc }
                        }
                        None => AllDocsRow::NotFound { key: key.clone() },
                    });
                }
            } else {
                let start_inclusive = !query.exclusive_start;
                let (lower, upper, upper_inclusive, lower_inclusive) = if query.descending {
                    (query.end_key.clone(), query.start_key.clone(), start_inclusive, query.inclusive_end)
                } else {
                    (query.start_key.clone(), query.end_key.clone(), query.inclusive_end, start_inclusive)
                };
                let mut sql = String::from("SELECT id, winner FROM docs WHERE doctype = ?1 AND deleted = 0");
                if lower.is_some() {
                    sql.push_str(if lower_inclusive { " AND id >= ?2" } else { " AND id > ?2" });
                }
                if upper.is_some() {
                    sql.push_str(if upper_inclusive { " AND id <= ?3" } else { " AND id < ?3" });
                }
                sql.push_str(if query.descending { " ORDER BY id DESC" } else { " ORDER BY id" });
                sql.push_str(" LIMIT ?4 OFFSET ?5");
                let mut stmt = conn.prepare_cached(&sql)?;
                let limit = query.limit.map_or(-1, |l| l as i64);
                let mut bind: Vec<Box<dyn rusqlite::ToSql>> = vec![Box::new(doctype.clone())];
                bind.push(Box::new(lower.clone().unwrap_or_default()));
                bind.push(Box::new(upper.clone().unwrap_or_default()));
                bind.push(Box::new(limit));
                bind.push(Box::new(query.skip as i64));
                // Unused placeholders still need a value bound; SQLite numbers them by position.
                let found = stmt.query_map(rusqlite::params_from_iter(bind.iter()), |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })?;
                for row in found {
                    if bytes >= max_bytes {
                        // A row follows the last one answered.
                        more = true;
                        break;
                    }
                    let (id, rev) = row?;
                    let id = DocId::parse(&id).map_err(StoreError::Corrupt)?;
                    let rev: Rev = rev.parse().map_err(|_| StoreError::Corrupt(format!("winner of {id}")))?;
                    let doc = fetch_doc(&id, &rev, false)?;
                    bytes += size(&doc);
                    rows.push(AllDocsRow::Doc { id, rev, deleted: false, doc });
                }
                more |= query.limit.is_some_and(|l| rows.len() >= l);
            }
            Ok(AllDocs { total_rows: total.max(0) as u64, offset: query.skip, rows, more })
        })
        .await
    }

    async fn get_local(&self, doctype: &Doctype, id: &str) -> Result<LocalDoc, StoreError> {
        let (doctype, id) = (doctype.as_str().to_owned(), id.to_owned());
        let (of, key) = (doctype.clone(), id.clone());
        let bytes = move |conn: &Connection| -> Result<u64, StoreError> {
            let n: Option<i64> = conn
                .prepare_cached("SELECT length(body) FROM locals WHERE doctype = ?1 AND id = ?2")?
                .query_row(params![of, key], |r| r.get(0))
                .optional()?;
            Ok(n.unwrap_or(0).max(0) as u64)
        };
        self.read_point(true, bytes, move |conn| {
            let row: Option<(i64, Vec<u8>)> = conn
                .prepare_cached("SELECT rev, body FROM locals WHERE doctype = ?1 AND id = ?2")?
                .query_row(params![doctype, id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let (rev, body) = row.ok_or(StoreError::NotFound)?;
            Ok(LocalDoc { body: parse_body(&id, body)?, id, rev: rev as u64 })
        })
        .await
    }

    async fn put_local(&self, doctype: &Doctype, id: &str, body: Body) -> Result<u64, StoreError> {
        let (doctype, id) = (doctype.as_str().to_owned(), id.to_owned());
        self.write(move |tx, _| {
            let bytes = body.as_str().as_bytes();
            let rev: i64 = tx
                .prepare_cached(
                    "INSERT INTO locals (doctype, id, rev, body) VALUES (?1, ?2, 1, ?3)
                     ON CONFLICT (doctype, id) DO UPDATE SET rev = rev + 1, body = ?3 RETURNING rev",
                )?
                .query_row(params![doctype, id, bytes], |r| r.get(0))?;
            Ok(rev as u64)
        })
        .await
    }

    async fn delete_local(&self, doctype: &Doctype, id: &str) -> Result<(), StoreError> {
        let (doctype, id) = (doctype.as_str().to_owned(), id.to_owned());
        self.write(move |tx, _| {
            let n = tx
                .prepare_cached("DELETE FROM locals WHERE doctype = ?1 AND id = ?2")?
                .execute(params![doctype, id])?;
            if n == 0 {
                Err(StoreError::NotFound)
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn put_local_if(&self, doctype: &Doctype, id: &str, body: Body, expected: u64) -> Result<u64, StoreError> {
        let (doctype, id) = (doctype.as_str().to_owned(), id.to_owned());
        self.write(move |tx, _| {
            if local_rev(tx, &doctype, &id)?.unwrap_or(0) != expected {
                return Err(StoreError::Conflict);
            }
            let rev = expected as i64 + 1;
            tx.prepare_cached(
                "INSERT INTO locals (doctype, id, rev, body) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (doctype, id) DO UPDATE SET rev = ?3, body = ?4",
            )?
            .execute(params![doctype, id, rev, body.as_str().as_bytes()])?;
            Ok(rev as u64)
        })
        .await
    }

    async fn delete_local_if(&self, doctype: &Doctype, id: &str, expected: u64) -> Result<(), StoreError> {
        let (doctype, id) = (doctype.as_str().to_owned(), id.to_owned());
        self.write(move |tx, _| match local_rev(tx, &doctype, &id)? {
            None => Err(StoreError::NotFound),
            Some(n) if n != expected => Err(StoreError::Conflict),
            Some(_) => {
                tx.prepare_cached("DELETE FROM locals WHERE doctype = ?1 AND id = ?2")?
                    .execute(params![doctype, id])?;
                Ok(())
            }
        })
        .await
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.commits.subscribe()
    }

    async fn doc_leaves(
        &self,
        doctype: &Doctype,
        ids: &[DocId],
    ) -> Result<HashMap<DocId, Vec<(Rev, bool)>>, StoreError> {
        let (doctype, ids) = (doctype.as_str().to_owned(), ids.to_vec());
        self.read_point(ids.len() <= POINT_READ_KEYS, no_bodies, move |conn| {
            let mut out = HashMap::with_capacity(ids.len());
            for id in ids {
                if let Some(leaves) = leaves_of(conn, &doctype, id.as_str())? {
                    out.insert(id, leaves);
                }
            }
            Ok(out)
        })
        .await
    }

    fn set_tracking(&self, rules: Vec<TrackRule>) {
        self.inner.tracking.set(rules);
    }

    async fn track_existing(&self, sharing_id: &SharingId) -> Result<u64, StoreError> {
        Ok(self.track_existing_part(sharing_id, None, usize::MAX).await?.added)
    }

    async fn track_existing_part(
        &self,
        sharing_id: &SharingId,
        resume: Option<&str>,
        limit: usize,
    ) -> Result<TrackedPart, StoreError> {
        // The position: the rule being scanned (its place among the sharing's rules) and the
        // last id a selector rule's scan passed.
        let (mut position, mut after) = match resume {
            None => (0, String::new()),
            Some(p) => p
                .split_once(':')
                .and_then(|(rule, id)| Some((rule.parse::<usize>().ok()?, id.to_owned())))
                .ok_or_else(|| StoreError::Internal(anyhow::anyhow!("not a tracking position: {p:?}")))?,
        };
        let sharing_id = sharing_id.as_str().to_owned();
        self.write(move |tx, ctx| {
            let started: Option<i64> = tx
                .prepare_cached("SELECT 1 FROM sharing_starts WHERE sharing_id = ?1")?
                .query_row(params![sharing_id], |r| r.get(0))
                .optional()?;
            if started.is_some() {
                return Ok(TrackedPart { added: 0, next: None });
            }
            let rules: Vec<&TrackRule> = ctx.tracking.iter().filter(|r| r.sharing_id == sharing_id).collect();
            let entry = Entry { initial: true, origin: None };
            let mut added = 0;
            let mut budget = limit.max(1);
            while let Some(rule) = rules.get(position) {
                // The first matching rule of the sharing wins, as for later writes.
                let first = |id: &str, body: &Body| {
                    rules.iter().find(|r| r.matches(rule.doctype.as_str(), id, body)).map(|r| r.rule_index)
                };
                let mut joined = Vec::new();
                // Where the next part starts, when this one stops inside the rule's scan.
                let mut stop = None;
                match &rule.selector {
                    // Id rules: the listed documents, in one part.
                    None => {
                        let mut stmt = tx
                            .prepare_cached("SELECT winner FROM docs WHERE doctype = ?1 AND id = ?2 AND deleted = 0")?;
                        let mut seen = HashSet::new();
                        for v in &rule.values {
                            if !seen.insert(v) {
                                continue;
                            }
                            let winner: Option<String> =
                                stmt.query_row(params![rule.doctype.as_str(), v], |r| r.get(0)).optional()?;
                            let Some(winner) = winner else { continue };
                            if shared_row(tx, &sharing_id, rule.doctype.as_str(), v)?.is_some_and(|st| !st.removed) {
                                continue;
                            }
                            let rev: Rev = winner.parse().map_err(|_| StoreError::Corrupt(format!("winner of {v}")))?;
                            let body = load_body(tx, rule.doctype.as_str(), v, &rev)?.unwrap_or_default();
                            joined.extend(first(v, &body).map(|i| (v.clone(), i)));
                        }
                        budget = budget.saturating_sub(seen.len());
                    }
                    // Selector rules: every live document, read with its body in one scan, in
                    // parts of `budget` documents.
                    Some(_) => {
                        let mut last = None;
                        let scanned =
                            each_unshared_live(tx, &sharing_id, rule.doctype.as_str(), &after, budget, |id, body| {
                                if let Some(i) = first(&id, &body) {
                                    joined.push((id.clone(), i));
                                }
                                last = Some(id);
                                Ok(())
                            })?;
                        if scanned >= budget {
                            // Maybe more: the next part goes on after the last one seen.
                            stop = Some(format!("{position}:{}", last.as_deref().unwrap_or(&after)));
                        }
                        budget = budget.saturating_sub(scanned);
                    }
                }
                record_joined(tx, &ctx.seqs, &sharing_id, rule.doctype.as_str(), &joined, entry)?;
                added += joined.len() as u64;
                if stop.is_some() {
                    return Ok(TrackedPart { added, next: stop });
                }
                position += 1;
                after.clear();
            }
            // Subtree rules: the documents under a shared one, a level per pass, so parents
            // come before their children in the feed; in the last part.
            let subtree: Vec<&str> = {
                let mut d: Vec<&str> =
                    rules.iter().filter(|r| r.parent_field.is_some()).map(|r| r.doctype.as_str()).collect();
                d.dedup();
                d
            };
            for doctype in subtree {
                loop {
                    let mut joined = Vec::new();
                    each_unshared_live(tx, &sharing_id, doctype, "", usize::MAX, |id, body| {
                        let parent = TrackRule::parent_of(&ctx.tracking, doctype, &body);
                        let parent = parent_rule(tx, &sharing_id, doctype, parent.as_deref())?;
                        if let Some(r) = rules.iter().find(|r| r.matches_in(doctype, &id, &body, parent)) {
                            joined.push((id, r.rule_index));
                        }
                        Ok(())
                    })?;
                    if joined.is_empty() {
                        break;
                    }
                    record_joined(tx, &ctx.seqs, &sharing_id, doctype, &joined, entry)?;
                    added += joined.len() as u64;
                }
            }
            tx.prepare_cached("INSERT INTO sharing_starts (sharing_id) VALUES (?1) ON CONFLICT DO NOTHING")?
                .execute(params![sharing_id])?;
            Ok(TrackedPart { added, next: None })
        })
        .await
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
        let (sharing_id, doctype) = (sharing_id.to_owned(), doctype.as_str().to_owned());
        self.write(move |tx, ctx| {
            let mut counters = DoctypeCounters::load(tx, &doctype)?;
            let mut out = Vec::with_capacity(docs.len());
            for w in &docs {
                // Judged on what this transaction sees: no other write can come in between.
                let parent = TrackRule::parent_of(&ctx.tracking, &doctype, &w.body);
                let existing = load_doc(tx, &doctype, w.id.as_str())?;
                let standing = Standing {
                    exists: existing.is_some(),
                    shared: shared_row(tx, &sharing_id, &doctype, w.id.as_str())?,
                    parent: parent_rule(tx, &sharing_id, &doctype, parent.as_deref())?,
                };
                let (join, revokes) = match judge(w, &standing) {
                    Verdict::Accept { join, revokes } => (join, revokes),
                    Verdict::Moot => {
                        out.push(Received::Moot);
                        continue;
                    }
                    Verdict::Refuse(reason) => {
                        out.push(Received::Refused(reason));
                        continue;
                    }
                };
                if w.revisions.as_deref().is_none_or(<[Rev]>::is_empty) {
                    out.push(Received::Invalid("the document needs _rev or _revisions".into()));
                    continue;
                }
                let join = join.map(|rule| Join { sharing: &sharing_id, rule, origin });
                let tracked = ctx.tracking.iter().any(|r| r.doctype == doctype && r.sharing_id == sharing_id);
                if let (Some(j), false) = (join, tracked) {
                    // No tracking rule of this sharing for the doctype (rules changing under
                    // it): the row is recorded here, as the write's tracking would not.
                    let entry = Entry { initial: false, origin: Some(origin) };
                    record_shared(tx, &ctx.seqs, &sharing_id, &doctype, w.id.as_str(), j.rule, None, entry)?;
                }
                let join = join.filter(|_| tracked);
                match apply_replicated(tx, ctx, &mut counters, &doctype, &w.id, &[w], Prior { existing, join })?.pop() {
                    Some(WriteResult::Rejected { reason, .. }) => out.push(Received::Invalid(reason)),
                    _ => out.push(Received::Written { revokes }),
                }
            }
            counters.save(tx, &doctype)?;
            Ok(out)
        })
        .await
    }

    async fn retrack(&self, doctype: &Doctype, ids: &[DocId]) -> Result<Retracked, StoreError> {
        let (doctype, ids) = (doctype.as_str().to_owned(), ids.to_vec());
        self.write(move |tx, ctx| {
            let mut out = Retracked::default();
            // Only the sharings tracking the doctype can change here (`track_doc` writes no
            // other's rows), so only theirs are counted: each a look-up by primary key (counting
            // every sharing's rows of the document walked the whole table, in the writer).
            let sharings: BTreeSet<String> = ctx
                .tracking
                .iter()
                .filter(|r| r.doctype == doctype)
                .map(|r| r.sharing_id.as_str().to_owned())
                .collect();
            if sharings.is_empty() {
                return Ok(out);
            }
            let removed_rows = |id: &DocId| -> Result<i64, StoreError> {
                let mut stmt = tx.prepare_cached(REMOVED_ROWS)?;
                let mut n = 0i64;
                for sharing in &sharings {
                    n += stmt.query_row(params![sharing, doctype, id.as_str()], |r| r.get::<_, i64>(0))?;
                }
                Ok(n)
            };
            for id in &ids {
                let Some(row) = load_doc(tx, &doctype, id.as_str())? else { continue };
                let Some(winner) = row.tree.winner() else { continue };
                let body = load_body(tx, &doctype, id.as_str(), &winner.rev)?.unwrap_or_default();
                let before = if winner.deleted { 0 } else { removed_rows(id)? };
                let winner = (&winner.rev, winner.deleted);
                let recorded = track_doc(tx, ctx, &doctype, id.as_str(), winner, &body, Track::MembershipOnly)?;
                out.recorded += recorded;
                if recorded > 0 && before > 0 && removed_rows(id)? < before {
                    out.rejoined.push(id.clone());
                }
            }
            Ok(out)
        })
        .await
    }

    async fn shared_docs(
        &self,
        sharing_id: &SharingId,
        after: Option<(Doctype, DocId)>,
        limit: usize,
    ) -> Result<Vec<(Doctype, DocId)>, StoreError> {
        let sharing_id = sharing_id.as_str();
        let sharing_id = sharing_id.to_owned();
        let (after_doctype, after_id) =
            after.map_or((String::new(), String::new()), |(t, i)| (t.as_str().to_owned(), i.as_str().to_owned()));
        self.read(move |conn| {
            let rows: Vec<(String, String)> = conn
                .prepare_cached(SHARED_DOCS)?
                .query_map(params![sharing_id, after_doctype, after_id, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            rows.into_iter()
                .map(|(t, i)| {
                    Ok((
                        Doctype::parse(&t).map_err(StoreError::Corrupt)?,
                        DocId::parse(&i).map_err(StoreError::Corrupt)?,
                    ))
                })
                .collect()
        })
        .await
    }

    async fn shared_changes(
        &self,
        sharing_id: &SharingId,
        since: u64,
        limit: usize,
    ) -> Result<Vec<SharedChange>, StoreError> {
        let sharing_id = sharing_id.as_str().to_owned();
        self.read(move |conn| shared_change_rows(conn, &sharing_id, since, limit)).await
    }

    /// The feed's rows and their leaves in one read transaction: one snapshot, so every row
    /// read goes with the leaves of its own write (the default's check of the row again is
    /// moot), and one hand-over to the store's threads instead of three.
    async fn shared_changes_with_leaves(
        &self,
        sharing_id: &SharingId,
        since: u64,
        limit: usize,
        keep: KeepRow,
    ) -> Result<SharedChangesPage, StoreError> {
        let sharing_id = sharing_id.as_str().to_owned();
        self.read(move |conn| {
            let rows = shared_change_rows(conn, &sharing_id, since, limit)?;
            let (read, last_seq) = (rows.len(), rows.last().map_or(since, |r| r.seq));
            let mut kept = Vec::with_capacity(rows.len());
            for r in rows.into_iter().filter(|r| keep(r)) {
                if let Some(leaves) = leaves_of(conn, r.doctype.as_str(), r.id.as_str())? {
                    kept.push((r, leaves));
                }
            }
            Ok(SharedChangesPage { rows: kept, read, last_seq })
        })
        .await
    }

    async fn shared_state(
        &self,
        sharing_id: &SharingId,
        doctype: &Doctype,
        ids: &[DocId],
    ) -> Result<HashMap<DocId, SharedState>, StoreError> {
        let sharing_id = sharing_id.as_str();
        let (sharing_id, doctype, ids) = (sharing_id.to_owned(), doctype.as_str().to_owned(), ids.to_vec());
        self.read_point(ids.len() <= POINT_READ_KEYS, no_bodies, move |conn| {
            let mut out = HashMap::new();
            for id in ids {
                if let Some(st) = shared_row(conn, &sharing_id, &doctype, id.as_str())? {
                    out.insert(id, st);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn shared_info(&self, sharing_id: &SharingId, since: u64) -> Result<SharedInfo, StoreError> {
        let sharing_id = sharing_id.as_str();
        let sharing_id = sharing_id.to_owned();
        self.read(move |conn| {
            let last_seq: i64 = conn
                .prepare_cached("SELECT last_seq FROM sharing_seqs WHERE sharing_id = ?1")?
                .query_row(params![sharing_id], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            let docs: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM shared WHERE sharing_id = ?1 AND removed = 0")?
                .query_row(params![sharing_id], |r| r.get(0))?;
            let pending: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM shared WHERE sharing_id = ?1 AND seq > ?2")?
                .query_row(params![sharing_id, since as i64], |r| r.get(0))?;
            Ok(SharedInfo { last_seq: last_seq as u64, docs: docs as u64, pending: pending as u64 })
        })
        .await
    }

    async fn untrack(&self, sharing_id: &SharingId) -> Result<(), StoreError> {
        let sharing_id = sharing_id.as_str();
        let sharing_id = sharing_id.to_owned();
        self.write(move |tx, _| {
            tx.prepare_cached("DELETE FROM shared WHERE sharing_id = ?1")?.execute(params![sharing_id])?;
            tx.prepare_cached("DELETE FROM sharing_starts WHERE sharing_id = ?1")?.execute(params![sharing_id])?;
            Ok(())
        })
        .await
    }

    async fn doctypes(&self) -> Result<Vec<Doctype>, StoreError> {
        self.read(|conn| {
            let names: Vec<String> = conn
                .prepare_cached("SELECT doctype FROM doctypes UNION SELECT doctype FROM locals ORDER BY 1")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            names.iter().map(|n| Doctype::parse(n).map_err(StoreError::Corrupt)).collect()
        })
        .await
    }

    async fn local_docs(&self, doctype: &Doctype) -> Result<Vec<LocalDoc>, StoreError> {
        let doctype = doctype.as_str().to_owned();
        self.read(move |conn| {
            let rows: Vec<(String, i64, Vec<u8>)> = conn
                .prepare_cached("SELECT id, rev, body FROM locals WHERE doctype = ?1 ORDER BY id")?
                .query_map(params![doctype], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            rows.into_iter()
                .map(|(id, rev, body)| Ok(LocalDoc { body: parse_body(&id, body)?, id, rev: rev as u64 }))
                .collect()
        })
        .await
    }

    async fn advance_seq(&self, doctype: &Doctype, at_least: u64) -> Result<(), StoreError> {
        let doctype = doctype.as_str().to_owned();
        self.write(move |tx, _| {
            let mut counters = DoctypeCounters::load(tx, &doctype)?;
            if counters.last_seq < at_least {
                counters.last_seq = at_least;
                counters.save(tx, &doctype)?;
            }
            Ok(())
        })
        .await
    }
}

/// The `N` of a `_local` document's `0-N`, if it exists.
pub(super) fn local_rev(conn: &Connection, doctype: &str, id: &str) -> Result<Option<u64>, StoreError> {
    let rev: Option<i64> = conn
        .prepare_cached("SELECT rev FROM locals WHERE doctype = ?1 AND id = ?2")?
        .query_row(params![doctype, id], |r| r.get(0))
        .optional()?;
    Ok(rev.map(|r| r as u64))
}
