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
use crate::store::{json, DocId, Doctype, MemberIndex, StoreError};

pub const OUTBOX_DOCTYPE: &str = "io.hearth.outbox";

pub(crate) fn doctype() -> Doctype {
    Doctype::parse(OUTBOX_DOCTYPE).unwrap_or_else(|_| unreachable!("static doctype"))
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// Stored as the bare id. Read back through [`SharingId::parse`]: an entry stored with an
    /// invalid id does not deserialise, and the worker drops it (`sync::outbox::process`).
    #[serde(deserialize_with = "parsed_sharing_id")]
    pub sharing_id: SharingId,
    /// The member to notify; its stored credentials authenticate the call.
    pub member_index: MemberIndex,
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
    pub fn new(sharing_id: &SharingId, member_index: MemberIndex, method: Method, path: String) -> Entry {
        Entry {
            sharing_id: sharing_id.clone(),
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

fn parsed_sharing_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SharingId, D::Error> {
    SharingId::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
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

/// Adds an entry under a fixed id, replacing the one of that id not delivered yet: for notices
/// where only the latest counts (the member list). An entry being delivered while it is
/// replaced keeps the new one (the worker's delete of the old revision then conflicts).
pub async fn enqueue_replacing(cx: &Context, inst: &Instance, key: &str, entry: Entry) -> Result<(), StoreError> {
    let body = match serde_json::to_value(&entry) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let id = DocId::parse(key).map_err(StoreError::Corrupt)?;
    let store = inst.store.as_ref();
    let mut tries = 0;
    loop {
        let parent = json::get(store, &doctype(), &id).await?.map(|r| r.rev);
        match json::put(store, &doctype(), &id, parent.as_ref(), body.clone()).await {
            Ok(_) => break,
            // Replaced or delivered meanwhile: read it again.
            Err(StoreError::Conflict) if tries < 8 => tries += 1,
            Err(e) => return Err(e),
        }
    }
    cx.sync.wake_outbox();
    Ok(())
}

/// Drops the entry of a fixed id (see [`enqueue_replacing`]) when one waits.
pub async fn cancel(inst: &Instance, key: &str) -> Result<(), StoreError> {
    let id = DocId::parse(key).map_err(StoreError::Corrupt)?;
    let store = inst.store.as_ref();
    if let Some(r) = json::get(store, &doctype(), &id).await? {
        match json::delete(store, &doctype(), &id, &r.rev).await {
            // Delivered or replaced meanwhile: nothing left to cancel, or a newer list.
            Ok(_) | Err(StoreError::Conflict) => {}
            Err(e) => return Err(e),
        }
    }
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_entry_is_stored_with_its_sharing_id_as_a_bare_string() {
        let sid = SharingId::parse("0123456789abcdef0123456789abcdef").unwrap();
        let mut e = Entry::new(&sid, MemberIndex(2), Method::PUT, "/sharings/x/members".into());
        e.created_at = "2024-01-01T00:00:00Z".into();
        let stored = serde_json::to_value(&e).unwrap();
        assert_eq!(
            stored,
            json!({"sharing_id": "0123456789abcdef0123456789abcdef", "member_index": 2, "method": "PUT",
                "path": "/sharings/x/members", "attempts": 0, "next_at_ms": 0,
                "created_at": "2024-01-01T00:00:00Z", "forget_credentials": false})
        );
        assert_eq!(serde_json::from_value::<Entry>(stored).unwrap(), e);
    }

    #[test]
    fn an_entry_stored_with_an_invalid_sharing_id_does_not_read_back() {
        let stored = json!({"sharing_id": "not a sharing id", "member_index": 1, "method": "PUT",
            "path": "/x", "created_at": "2024-01-01T00:00:00Z"});
        let err = serde_json::from_value::<Entry>(stored).unwrap_err();
        assert!(err.to_string().contains("invalid sharing id"), "{err}");
    }
}
