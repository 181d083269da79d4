//! Outbox entries: notifications to peers (a revocation, a member leaving, new credentials)
//! are written as documents of `io.hearth.outbox` in the same store as the change that causes
//! them, so the local effect is immediate and the peer learns it whenever it is reachable, even
//! after a restart. The sharing operations write entries here; the worker in `sync::outbox`
//! delivers them.

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Context, SharingId};
use crate::auth::random_hex;
use crate::instance::Instance;
use crate::store::{json, DocId, Doctype, StoreError};

pub const OUTBOX_DOCTYPE: &str = "io.hearth.outbox";

pub(crate) fn doctype() -> Doctype {
    Doctype::parse(OUTBOX_DOCTYPE).unwrap_or_else(|_| unreachable!("static doctype"))
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub sharing_id: String,
    /// The member to notify; its stored credentials authenticate the call.
    pub member_index: usize,
    pub method: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub next_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub created_at: String,
    /// Forget the credentials for this member once delivered (the last message to it).
    #[serde(default)]
    pub forget_credentials: bool,
}

impl Entry {
    pub fn new(sharing_id: &SharingId, member_index: usize, method: Method, path: String) -> Entry {
        Entry {
            sharing_id: sharing_id.to_string(),
            member_index,
            method: method.to_string(),
            path,
            body: None,
            attempts: 0,
            next_at_ms: 0,
            last_error: None,
            created_at: super::model::now_rfc3339(),
            forget_credentials: false,
        }
    }
}

/// Adds an entry; the worker is woken to send it at once.
pub async fn enqueue(cx: &Context, inst: &Instance, entry: Entry) -> Result<(), StoreError> {
    let body = match serde_json::to_value(&entry) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let id = DocId::parse(&random_hex(16)).map_err(StoreError::Corrupt)?;
    json::put(inst.store.as_ref(), &doctype(), &id, None, body).await?;
    cx.sync.wake_outbox();
    Ok(())
}

/// Entries waiting to be delivered (for status displays and tests).
pub async fn pending(inst: &Instance) -> Result<Vec<Entry>, StoreError> {
    let mut out = Vec::new();
    for rec in json::list(inst.store.as_ref(), &doctype()).await? {
        if let Ok(e) = serde_json::from_value(Value::Object(rec.body)) {
            out.push(e);
        }
    }
    Ok(out)
}
