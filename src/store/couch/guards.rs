//! Edit guards: the per-document record in the meta database that makes an interactive edit's
//! check-then-write atomic (and that `Store::apply_received` takes to order a received
//! document's judgement before its write); rolling forward the writes of a writer that
//! stopped; interactive and replicated `_bulk_docs`. See "Atomicity" in the module
//! documentation.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::anyhow;
use hearth_replicator::rev::{new_rev, Rev};
use hearth_replicator::tree::RevTree;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::*;

/// A received write's membership, kept in its edit guard so that a writer rolling the
/// write forward records it too (`s`: the sharing, `rule` and `origin` as in [`Entry`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct GuardJoin {
    pub(super) sharing: String,
    pub(super) rule: usize,
    pub(super) origin: MemberIndex,
}

/// What an edit guard records: the revisions an edit writes, with their bodies, and the
/// revision they were based on (`None`: the document did not exist).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct GuardRecord {
    pub(super) base: Option<String>,
    pub(super) writes: Vec<GuardWrite>,
    /// For a received document entering a sharing: its membership, recorded before the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) join: Option<GuardJoin>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct GuardWrite {
    /// The revision and its parent, newest first.
    pub(super) revisions: Vec<String>,
    pub(super) deleted: bool,
    #[serde(with = "body_text")]
    pub(super) body: Body,
}

/// The edits of one document in one round: the parent of the first, and each edit's index in
/// the request with the path it writes (new revision, parent).
type EditPlan = (Option<Rev>, Vec<(usize, Vec<Rev>)>);

pub(super) struct Guard {
    pub(super) rev: Option<String>,
    pub(super) record: Option<GuardRecord>,
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

impl CouchStore {
    /// Writes edit guards to the meta database in one `_bulk_docs`; answers the keys of the
    /// guards this writer now holds. A guard another writer took first is a `conflict`, left
    /// out (its documents are judged again); any other refusal is an error.
    pub(super) async fn take_guards(&self, guard_docs: Vec<Value>) -> Result<HashSet<String>, StoreError> {
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

    pub(super) async fn read_guards(
        &self,
        doctype: &Doctype,
        ids: &[DocId],
    ) -> Result<HashMap<DocId, Guard>, StoreError> {
        let keys: Vec<String> = ids.iter().map(|id| guard_key(doctype, id)).collect();
        let reply = self.meta_rows(&keys).await?;
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
    pub(super) async fn roll_forward(
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
                let arrival = record.writes.first().and_then(|w| w.revisions.first()).cloned();
                let entry = Entry { initial: false, origin: Some(j.origin.get()), arrival };
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

    /// Applies interactive edits; see "Atomicity" in the module documentation.
    pub(super) async fn bulk_interactive(
        &self,
        doctype: &Doctype,
        docs: Vec<DocWrite>,
    ) -> Result<Vec<WriteResult>, StoreError> {
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
    pub(super) async fn bulk_replicated(
        &self,
        doctype: &Doctype,
        docs: Vec<DocWrite>,
    ) -> Result<Vec<WriteResult>, StoreError> {
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
}
