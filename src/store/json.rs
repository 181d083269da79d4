//! Small helpers to keep hearth's own records (sharings, OAuth clients, the outbox) as plain
//! documents of internal doctypes, on any backend: read, write with the current revision as
//! parent (optimistic concurrency: a concurrent writer gets `Conflict`), list, delete. Records
//! are small and hold no big numbers: their bodies are parsed into maps here.

use hearth_replicator::rev::Rev;
use serde_json::{Map, Value};

use super::{AllDocsQuery, AllDocsRow, Body, DocId, DocWrite, Doctype, GetOptions, Store, StoreError, WriteResult};

/// A stored record: its id, current revision and body.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: DocId,
    pub rev: Rev,
    pub body: Map<String, Value>,
}

pub async fn get(store: &dyn Store, doctype: &Doctype, id: &DocId) -> Result<Option<Record>, StoreError> {
    match store.get(doctype, id, GetOptions::default()).await {
        Ok(v) => Ok(Some(Record { id: id.clone(), rev: v.doc.rev, body: to_map(id, &v.doc.body)? })),
        Err(StoreError::NotFound | StoreError::Deleted) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `body` on top of `parent` (None: create, or recreate after a deletion).
pub async fn put(
    store: &dyn Store,
    doctype: &Doctype,
    id: &DocId,
    parent: Option<&Rev>,
    body: Map<String, Value>,
) -> Result<Rev, StoreError> {
    write(store, doctype, id, parent, false, body).await
}

pub async fn delete(store: &dyn Store, doctype: &Doctype, id: &DocId, parent: &Rev) -> Result<Rev, StoreError> {
    write(store, doctype, id, Some(parent), true, Map::new()).await
}

async fn write(
    store: &dyn Store,
    doctype: &Doctype,
    id: &DocId,
    parent: Option<&Rev>,
    deleted: bool,
    body: Map<String, Value>,
) -> Result<Rev, StoreError> {
    let w = DocWrite { id: id.clone(), rev: parent.cloned(), revisions: None, deleted, body: Body::from_map(&body) };
    match store.bulk_docs(doctype, vec![w], true).await?.pop() {
        Some(WriteResult::Ok { rev, .. }) => Ok(rev),
        Some(WriteResult::Conflict { .. }) => Err(StoreError::Conflict),
        Some(WriteResult::Rejected { reason, .. }) => Err(StoreError::Internal(anyhow::anyhow!(reason))),
        None => Err(StoreError::Internal(anyhow::anyhow!("no write result"))),
    }
}

/// Every live record of a doctype, in id order.
pub async fn list(store: &dyn Store, doctype: &Doctype) -> Result<Vec<Record>, StoreError> {
    let q = AllDocsQuery { include_docs: true, inclusive_end: true, ..Default::default() };
    let all = store.all_docs(doctype, &q).await?;
    all.rows
        .into_iter()
        .filter_map(|row| match row {
            AllDocsRow::Doc { id, rev, doc: Some(d), deleted: false } => Some((id, rev, d.body)),
            _ => None,
        })
        .map(|(id, rev, body)| Ok(Record { body: to_map(&id, &body)?, id, rev }))
        .collect()
}

fn to_map(id: &DocId, body: &Body) -> Result<Map<String, Value>, StoreError> {
    body.to_map().map_err(|e| StoreError::Corrupt(format!("record {id}: {e}")))
}
