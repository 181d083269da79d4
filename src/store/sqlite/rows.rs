//! Rows of one document: its tree, leaves and body; the per-doctype counters; the writes of
//! an interactive or replicated edit with their tracking (run inside the writer's transaction).

use super::*;

/// What the `docs` table holds for one document.
pub(super) struct DocRow {
    pub(super) tree: RevTree,
    pub(super) deleted: bool,
    pub(super) seq: u64,
}

pub(super) fn load_doc(conn: &Connection, doctype: &str, id: &str) -> Result<Option<DocRow>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT tree, deleted, seq FROM docs WHERE doctype = ?1 AND id = ?2")?;
    let row = stmt
        .query_row(params![doctype, id], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, bool>(1)?, r.get::<_, i64>(2)?)))
        .optional()?;
    row.map(|(bytes, deleted, seq)| {
        let tree = RevTree::decode(&bytes).map_err(|_| StoreError::Corrupt(format!("revision tree of {id}")))?;
        Ok(DocRow { tree, deleted, seq: seq as u64 })
    })
    .transpose()
}

pub(super) fn load_body(conn: &Connection, doctype: &str, id: &str, rev: &Rev) -> Result<Option<Body>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT body FROM bodies WHERE doctype = ?1 AND id = ?2 AND rev = ?3")?;
    let bytes: Option<Vec<u8>> = stmt.query_row(params![doctype, id, rev.to_string()], |r| r.get(0)).optional()?;
    bytes.map(|b| parse_body(id, b)).transpose()
}

/// Bodies are stored as their JSON text; files written before bodies were kept as written
/// hold serde_json's serialisation of the same object, which reads the same way.
pub(super) fn parse_body(id: &str, bytes: Vec<u8>) -> Result<Body, StoreError> {
    Body::from_stored(bytes).map_err(|e| StoreError::Corrupt(format!("body of {id}: {e}")))
}

pub(super) fn encode_leaves(tree: &RevTree) -> String {
    let leaves: Vec<(String, bool)> = tree.leaves().into_iter().map(|l| (l.rev.to_string(), l.deleted)).collect();
    serde_json::to_string(&leaves).unwrap_or_else(|_| "[]".into())
}

/// The leaves of a document (winner first, with their deleted flags); `None` when it has no tree.
pub(super) fn leaves_of(conn: &Connection, doctype: &str, id: &str) -> Result<Option<Vec<(Rev, bool)>>, StoreError> {
    let leaves: Option<String> = conn
        .prepare_cached("SELECT leaves FROM docs WHERE doctype = ?1 AND id = ?2")?
        .query_row(params![doctype, id], |r| r.get(0))
        .optional()?;
    leaves.map(|l| decode_leaves(id, &l)).transpose()
}

pub(super) fn decode_leaves(id: &str, s: &str) -> Result<Vec<(Rev, bool)>, StoreError> {
    let raw: Vec<(String, bool)> =
        serde_json::from_str(s).map_err(|_| StoreError::Corrupt(format!("leaves of {id}")))?;
    raw.into_iter()
        .map(|(r, d)| Ok((r.parse().map_err(|_| StoreError::Corrupt(format!("leaves of {id}")))?, d)))
        .collect()
}

/// The counters of one doctype, held in memory for the length of a write transaction.
pub(super) struct DoctypeCounters {
    pub(super) last_seq: u64,
    pub(super) doc_count: i64,
    pub(super) del_count: i64,
    /// Changes to `feed_counts` (bucket → documents added or removed), written once at the end
    /// of the transaction: a batch moves many documents but touches few buckets.
    pub(super) buckets: BTreeMap<u64, i64>,
}

impl DoctypeCounters {
    pub(super) fn load(tx: &Transaction<'_>, doctype: &str) -> Result<Self, StoreError> {
        let mut stmt = tx.prepare_cached("SELECT last_seq, doc_count, del_count FROM doctypes WHERE doctype = ?1")?;
        let row = stmt.query_row(params![doctype], |r| Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?))).optional()?;
        let (last_seq, doc_count, del_count) = row.unwrap_or((0, 0, 0));
        Ok(DoctypeCounters { last_seq: last_seq as u64, doc_count, del_count, buckets: BTreeMap::new() })
    }

    /// One document moves in the feed: out of its old position's bucket, into the new one's.
    pub(super) fn count_move(&mut self, old: Option<u64>, new: u64) {
        if let Some(old) = old {
            *self.buckets.entry(old / FEED_BUCKET).or_default() -= 1;
        }
        *self.buckets.entry(new / FEED_BUCKET).or_default() += 1;
    }

    pub(super) fn save(&self, tx: &Transaction<'_>, doctype: &str) -> Result<(), StoreError> {
        tx.prepare_cached(
            "INSERT INTO doctypes (doctype, last_seq, doc_count, del_count) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (doctype) DO UPDATE SET last_seq = ?2, doc_count = ?3, del_count = ?4",
        )?
        .execute(params![doctype, self.last_seq as i64, self.doc_count, self.del_count])?;
        let mut count = tx.prepare_cached(
            "INSERT INTO feed_counts (doctype, bucket, docs) VALUES (?1, ?2, ?3)
             ON CONFLICT (doctype, bucket) DO UPDATE SET docs = docs + ?3",
        )?;
        for (bucket, delta) in self.buckets.iter().filter(|(_, d)| **d != 0) {
            count.execute(params![doctype, *bucket as i64, delta])?;
        }
        Ok(())
    }
}

/// Writes one document's new state: tree, bodies added and removed, counters and sequence.
pub(super) struct DocUpdate<'a> {
    pub(super) doctype: &'a str,
    pub(super) id: &'a str,
    /// The document's deleted flag and feed position before this write, if it existed.
    pub(super) before: Option<(bool, u64)>,
    pub(super) tree: &'a RevTree,
    /// Bodies of revisions new to the tree, as written (also used to avoid reading the
    /// winner's back for tracking).
    pub(super) new_bodies: Vec<(&'a Rev, &'a Body)>,
    pub(super) old_leaves: Vec<Rev>,
    /// A document received from a member that joins a sharing with this write.
    pub(super) join: Option<Join<'a>>,
}

/// A received document joining sharing `sharing` by rule `rule`, sent by member `origin`: its
/// row is created by the write's own tracking, with that entry, so the row's `joined` is the
/// sequence of the write that brought it (see `SharedChange::joined`: nothing changed here since
/// while `seq == joined`).
#[derive(Clone, Copy)]
pub(super) struct Join<'a> {
    pub(super) sharing: &'a str,
    pub(super) rule: usize,
    pub(super) origin: MemberIndex,
}

/// How many documents of the feed sit after `after` (each document is in the feed once, at its
/// latest change), without reading them: the counts of the buckets after `after`'s bucket,
/// plus the documents counted in the rest of its bucket through the `(doctype, seq)` index.
/// At most `update_seq / FEED_BUCKET` count rows and `FEED_BUCKET - 1` index entries are read,
/// whatever the length of the feed.
///
/// With `ids` (`filter=_doc_ids`, or a scope limited to some documents) only those documents
/// count: each is looked up by id, so the cost follows the list, not the feed.
pub(super) fn pending(conn: &Connection, doctype: &str, after: u64, ids: Option<&str>) -> Result<u64, StoreError> {
    let n: i64 = match ids {
        Some(ids) => conn
            .prepare_cached(
                "SELECT COUNT(*) FROM (SELECT DISTINCT value AS id FROM json_each(?3)) AS wanted
                 CROSS JOIN docs AS d ON d.doctype = ?1 AND d.id = wanted.id WHERE d.seq > ?2",
            )?
            .query_row(params![doctype, after as i64, ids], |r| r.get(0))?,
        None => {
            let bucket = after / FEED_BUCKET;
            let later: i64 = conn
                .prepare_cached("SELECT COALESCE(SUM(docs), 0) FROM feed_counts WHERE doctype = ?1 AND bucket > ?2")?
                .query_row(params![doctype, bucket as i64], |r| r.get(0))?;
            let within: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM docs WHERE doctype = ?1 AND seq > ?2 AND seq < ?3")?
                .query_row(params![doctype, after as i64, ((bucket + 1) * FEED_BUCKET) as i64], |r| r.get(0))?;
            later + within
        }
    };
    Ok(n.max(0) as u64)
}

pub(super) fn save_doc(
    tx: &Transaction<'_>,
    ctx: &WriteCtx,
    counters: &mut DoctypeCounters,
    u: DocUpdate<'_>,
) -> Result<(), StoreError> {
    let winner = u.tree.winner().ok_or_else(|| StoreError::Corrupt(format!("empty tree for {}", u.id)))?;
    for (rev, body) in &u.new_bodies {
        // Only leaves keep a body: a revision extended later in the same batch gets none.
        if u.tree.is_leaf(rev) {
            tx.prepare_cached("INSERT OR IGNORE INTO bodies (doctype, id, rev, body) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![u.doctype, u.id, rev.to_string(), body.as_str().as_bytes()])?;
        }
    }
    // Only leaves keep a body (CouchDB keeps no more after compaction).
    let mut del = tx.prepare_cached("DELETE FROM bodies WHERE doctype = ?1 AND id = ?2 AND rev = ?3")?;
    for old in &u.old_leaves {
        if !u.tree.is_leaf(old) {
            del.execute(params![u.doctype, u.id, old.to_string()])?;
        }
    }
    match (u.before.map(|(deleted, _)| deleted), winner.deleted) {
        (None, false) => counters.doc_count += 1,
        (None, true) => counters.del_count += 1,
        (Some(false), true) => {
            counters.doc_count -= 1;
            counters.del_count += 1;
        }
        (Some(true), false) => {
            counters.doc_count += 1;
            counters.del_count -= 1;
        }
        _ => {}
    }
    counters.last_seq += 1;
    counters.count_move(u.before.map(|(_, seq)| seq), counters.last_seq);
    tx.prepare_cached(
        "INSERT INTO docs (doctype, id, seq, winner, deleted, leaves, tree) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (doctype, id) DO UPDATE SET seq = ?3, winner = ?4, deleted = ?5, leaves = ?6, tree = ?7",
    )?
    .execute(params![
        u.doctype,
        u.id,
        counters.last_seq as i64,
        winner.rev.to_string(),
        winner.deleted,
        encode_leaves(u.tree),
        u.tree.encode(),
    ])?;
    if ctx.tracking.iter().any(|r| r.doctype == u.doctype) {
        let body = match u.new_bodies.iter().find(|(rev, _)| **rev == winner.rev) {
            Some((_, written)) => (*written).clone(),
            None => load_body(tx, u.doctype, u.id, &winner.rev)?.unwrap_or_default(),
        };
        track_doc(tx, ctx, u.doctype, u.id, (&winner.rev, winner.deleted), &body, Track::Write(u.join))?;
    }
    Ok(())
}

/// Why [`track_doc`] runs.
#[derive(Clone, Copy)]
pub(super) enum Track<'a> {
    /// A write, and the sharing a received document joins with it, if any.
    Write(Option<Join<'a>>),
    /// A cascade (see `Store::retrack`): rows are recorded only where membership changes.
    MembershipOnly,
}

/// Updates every sharing's feed for one written document (see `tracking::decide`), as `how`
/// says: `winner` is its winning revision and whether it is deleted, `body` that revision's.
/// Returns the rows recorded.
pub(super) fn track_doc(
    tx: &Transaction<'_>,
    ctx: &WriteCtx,
    doctype: &str,
    id: &str,
    (winner, deleted): (&Rev, bool),
    body: &Body,
    how: Track<'_>,
) -> Result<u64, StoreError> {
    let (join, membership_only) = match how {
        Track::Write(join) => (join, false),
        Track::MembershipOnly => (None, true),
    };
    let rules = ctx.tracking.as_slice();
    let mut recorded = 0;
    let mut sharings: Vec<&str> =
        rules.iter().filter(|r| r.doctype == doctype).map(|r| r.sharing_id.as_str()).collect();
    sharings.sort_unstable();
    sharings.dedup();
    let parent = TrackRule::parent_of(rules, doctype, body);
    for sharing in sharings {
        let parent_rule = parent_rule(tx, sharing, doctype, parent.as_deref())?;
        let (matching, joining) = tracking::matching_rules(rules, sharing, doctype, id, body, parent_rule);
        let (tracked, entry) = match join.filter(|j| j.sharing == sharing) {
            // Joining now: tracked as if its row were there already, created with its entry.
            Some(j) => (Some((j.rule, false)), Entry { initial: false, origin: Some(j.origin) }),
            None => (shared_row(tx, sharing, doctype, id)?.map(|st| (st.rule_index, st.removed)), Entry::default()),
        };
        let action = tracking::decide(deleted, matching, joining, tracked);
        if membership_only && !tracking::changes_membership(action, tracked) {
            continue;
        }
        if let TrackAction::Record { rule_index, removed } = action {
            let left_rev = removed.then_some(winner);
            record_shared(tx, &ctx.seqs, sharing, doctype, id, rule_index, left_rev, entry)?;
            recorded += 1;
        }
    }
    Ok(recorded)
}

/// The rule of a parent's row in a sharing, when the parent is in it (see `Standing::parent`).
pub(super) fn parent_rule(
    conn: &Connection,
    sharing: &str,
    doctype: &str,
    parent: Option<&str>,
) -> Result<Option<usize>, StoreError> {
    let Some(parent) = parent else { return Ok(None) };
    Ok(shared_row(conn, sharing, doctype, parent)?.filter(|st| !st.removed).map(|st| st.rule_index))
}

/// Rows of `sharing_id`'s feed after `since`, at most `limit`, in order.
pub(super) fn shared_change_rows(
    conn: &Connection,
    sharing_id: &str,
    since: u64,
    limit: usize,
) -> Result<Vec<SharedChange>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, doctype, id, rule, removed, joined, initial, origin, left_rev FROM shared
         WHERE sharing_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    type Row = (i64, String, String, i64, bool, i64, bool, Option<i64>, Option<String>);
    let rows: Vec<Row> = stmt
        .query_map(params![sharing_id, since as i64, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?))
        })?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(seq, doctype, id, rule, removed, joined, initial, origin, left_rev)| {
            let left_rev = left_rev
                .map(|r| r.parse::<Rev>().map_err(|e| StoreError::Corrupt(format!("left_rev of {id}: {e}"))))
                .transpose()?;
            Ok(SharedChange {
                seq: seq as u64,
                doctype: Doctype::parse(&doctype).map_err(StoreError::Corrupt)?,
                id: DocId::parse(&id).map_err(StoreError::Corrupt)?,
                rule_index: rule as usize,
                removed,
                joined: joined as u64,
                initial,
                origin: origin.map(|o| MemberIndex(o as usize)),
                left_rev,
            })
        })
        .collect()
}

pub(super) fn shared_row(
    conn: &Connection,
    sharing: &str,
    doctype: &str,
    id: &str,
) -> Result<Option<SharedState>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT rule, removed, seq FROM shared WHERE sharing_id = ?1 AND doctype = ?2 AND id = ?3")?
        .query_row(params![sharing, doctype, id], |r| {
            Ok(SharedState {
                rule_index: r.get::<_, i64>(0)? as usize,
                removed: r.get(1)?,
                seq: r.get::<_, i64>(2)? as u64,
            })
        })
        .optional()?)
}

/// How a document enters a sharing, recorded when its row is created (a row that exists keeps
/// what it had).
#[derive(Default, Clone, Copy)]
pub(super) struct Entry {
    pub(super) initial: bool,
    pub(super) origin: Option<MemberIndex>,
}

/// Records a row of `sharing`'s feed for one document: in the sharing, or with `left_rev`,
/// removed from it at that revision (`SharedChange::left_rev`).
#[allow(clippy::too_many_arguments)]
pub(super) fn record_shared(
    tx: &Transaction<'_>,
    seqs: &SharingSeqs,
    sharing: &str,
    doctype: &str,
    id: &str,
    rule_index: usize,
    left_rev: Option<&Rev>,
    entry: Entry,
) -> Result<(), StoreError> {
    let seq = seqs.take(tx, sharing, 1)?;
    write_shared(tx, sharing, doctype, id, seq, rule_index, left_rev, entry)
}

/// [`record_shared`] for many documents entering `sharing` at once (an initial set).
/// `joined` is `(id, rule_index)`, numbered in that order.
pub(super) fn record_joined(
    tx: &Transaction<'_>,
    seqs: &SharingSeqs,
    sharing: &str,
    doctype: &str,
    joined: &[(String, usize)],
    entry: Entry,
) -> Result<(), StoreError> {
    if joined.is_empty() {
        return Ok(());
    }
    let first = seqs.take(tx, sharing, joined.len() as i64)?;
    for (seq, (id, rule_index)) in (first..).zip(joined) {
        write_shared(tx, sharing, doctype, id, seq, *rule_index, None, entry)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write_shared(
    tx: &Transaction<'_>,
    sharing: &str,
    doctype: &str,
    id: &str,
    seq: i64,
    rule_index: usize,
    left_rev: Option<&Rev>,
    entry: Entry,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO shared (sharing_id, doctype, id, seq, rule, removed, joined, initial, origin, left_rev)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?4, ?7, ?8, ?9)
         ON CONFLICT (sharing_id, doctype, id) DO UPDATE SET seq = ?4, rule = ?5, removed = ?6, left_rev = ?9",
    )?
    .execute(params![
        sharing,
        doctype,
        id,
        seq,
        rule_index as i64,
        left_rev.is_some(),
        entry.initial,
        entry.origin.map(|o| o.get() as i64),
        left_rev.map(Rev::to_string)
    ])?;
    Ok(())
}

/// Calls `f` with each live document of `doctype` that is not in `sharing` (no row, or a
/// removed one), in id order from the first id past `after` ("" for all), with its winning
/// revision's body (empty when it has none), for at most `limit` documents; answers how many
/// it passed. Reads only: `f` must not write to the tables it scans.
pub(super) fn each_unshared_live(
    conn: &Connection,
    sharing: &str,
    doctype: &str,
    after: &str,
    limit: usize,
    mut f: impl FnMut(String, Body) -> Result<(), StoreError>,
) -> Result<usize, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.id, b.body FROM docs d
         LEFT JOIN bodies b ON b.doctype = d.doctype AND b.id = d.id AND b.rev = d.winner
         WHERE d.doctype = ?1 AND d.id > ?3 AND d.deleted = 0 AND NOT EXISTS (
             SELECT 1 FROM shared s WHERE s.sharing_id = ?2 AND s.doctype = d.doctype AND s.id = d.id
             AND s.removed = 0)
         ORDER BY d.id LIMIT ?4",
    )?;
    // SQLite reads a negative limit as none.
    let limit = i64::try_from(limit).unwrap_or(-1);
    let mut rows = stmt.query(params![doctype, sharing, after, limit])?;
    let mut seen = 0;
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let body = match row.get::<_, Option<Vec<u8>>>(1)? {
            Some(bytes) => parse_body(&id, bytes)?,
            None => Body::default(),
        };
        f(id, body)?;
        seen += 1;
    }
    Ok(seen)
}

pub(super) fn apply_interactive(
    tx: &Transaction<'_>,
    ctx: &WriteCtx,
    counters: &mut DoctypeCounters,
    doctype: &str,
    w: &DocWrite,
) -> Result<WriteResult, StoreError> {
    let existing = load_doc(tx, doctype, w.id.as_str())?;
    let before = existing.as_ref().map(|d| (d.deleted, d.seq));
    let mut tree = existing.map(|d| d.tree).unwrap_or_default();
    let Ok(parent) = tree.edit_parent(w.rev.as_ref(), w.deleted) else {
        return Ok(WriteResult::Conflict { id: w.id.clone() });
    };
    // The revision id hashes the body's text as written (see `store::body`).
    let rev = match new_rev(parent.as_ref(), w.deleted, w.body.as_str().as_bytes()) {
        Ok(rev) => rev,
        Err(e) => return Ok(WriteResult::Rejected { id: w.id.clone(), reason: e.to_string() }),
    };
    let path: Vec<Rev> = std::iter::once(rev.clone()).chain(parent).collect();
    let old_leaves: Vec<Rev> = tree.leaves().into_iter().map(|l| l.rev).collect();
    tree.merge_path(&path, w.deleted);
    // Acknowledge only what the tree holds: `merge_path` drops revisions it cannot store.
    if !tree.is_leaf(&rev) {
        return Err(internal(anyhow::anyhow!("edit {rev} of {} was not merged into its tree", w.id)));
    }
    tree.stem(ctx.revs_limit);
    save_doc(
        tx,
        ctx,
        counters,
        DocUpdate {
            doctype,
            id: w.id.as_str(),
            before,
            tree: &tree,
            new_bodies: vec![(&rev, &w.body)],
            old_leaves,
            join: None,
        },
    )?;
    Ok(WriteResult::Ok { id: w.id.clone(), rev })
}

/// What the caller of [`apply_replicated`] already knows of the document: its row (read in the
/// same transaction), and whether it joins a sharing with this write.
pub(super) struct Prior<'a> {
    pub(super) existing: Option<DocRow>,
    pub(super) join: Option<Join<'a>>,
}

/// Replicated writes of one document (in request order), merged into its tree loaded once and
/// saved once: a batch of n branches of one document costs O(n log n), not n times the size of
/// its tree. Returns the writes refused.
pub(super) fn apply_replicated(
    tx: &Transaction<'_>,
    ctx: &WriteCtx,
    counters: &mut DoctypeCounters,
    doctype: &str,
    id: &DocId,
    writes: &[&DocWrite],
    prior: Prior<'_>,
) -> Result<Vec<WriteResult>, StoreError> {
    let Prior { existing, join } = prior;
    let mut refused = Vec::new();
    let before = existing.as_ref().map(|d| (d.deleted, d.seq));
    let mut tree = existing.map(|d| d.tree).unwrap_or_default();
    let old_leaves: Vec<Rev> = tree.leaves().into_iter().map(|l| l.rev).collect();
    let mut changed = false;
    let mut added: Vec<(&Rev, &Body)> = Vec::new();
    for w in writes {
        let Some(path) = w.revisions.as_deref().filter(|p| !p.is_empty()) else {
            refused.push(WriteResult::Rejected {
                id: w.id.clone(),
                reason: "when new_edits is false, the document needs _rev or _revisions".into(),
            });
            continue;
        };
        let head = &path[0];
        let known_before = tree.contains(head);
        // A revision we have is never rewritten, and re-sending it changes nothing.
        changed |= tree.merge(path, w.deleted).1;
        // Acknowledge only what the tree holds: `merge` drops revisions it cannot store.
        if !tree.contains(head) {
            refused
                .push(WriteResult::Rejected { id: w.id.clone(), reason: format!("revision {head} cannot be stored") });
            continue;
        }
        // Only a revision new to this tree gets a body: the first body of a revision is final.
        if !known_before {
            added.push((head, &w.body));
        }
    }
    if !changed {
        return Ok(refused);
    }
    tree.stem(ctx.revs_limit);
    let update = DocUpdate { doctype, id: id.as_str(), before, tree: &tree, new_bodies: added, old_leaves, join };
    save_doc(tx, ctx, counters, update)?;
    Ok(refused)
}

pub(super) fn doc_rev(
    conn: &Connection,
    doctype: &str,
    id: &DocId,
    tree: &RevTree,
    rev: &Rev,
    revs: bool,
) -> Result<Option<DocRev>, StoreError> {
    if !tree.is_leaf(rev) {
        return Ok(None);
    }
    let deleted = tree.deleted(rev).unwrap_or(false);
    let Some(body) = load_body(conn, doctype, id.as_str(), rev)? else {
        return Ok(None);
    };
    Ok(Some(DocRev {
        id: id.clone(),
        rev: rev.clone(),
        deleted,
        body,
        revisions: if revs { tree.history(rev) } else { None },
    }))
}

/// `open_revs` within a read connection (shared by the single and the batched calls).
pub(super) fn open_revs_in(
    conn: &Connection,
    doctype: &str,
    id: &DocId,
    revs: OpenRevs,
    latest: bool,
) -> Result<Vec<OpenRev>, StoreError> {
    let (doctype, id) = (doctype, id.clone());
    let row = load_doc(conn, doctype, id.as_str())?;
    let tree = match (row, &revs) {
        (Some(r), _) => r.tree,
        (None, OpenRevs::All) => return Err(StoreError::NotFound),
        (None, OpenRevs::Some(_)) => RevTree::new(),
    };
    let wanted = revs.resolve(&tree, latest);
    wanted
        .into_iter()
        .map(|r| {
            Ok(match doc_rev(conn, doctype, &id, &tree, &r, true)? {
                Some(d) => OpenRev::Found(d),
                None => OpenRev::Missing(r),
            })
        })
        .collect()
}
