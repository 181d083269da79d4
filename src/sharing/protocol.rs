//! Message shapes of the replication routes between instances (`POST /sharings/:id/_bulk_docs`),
//! in one place for the side that sends them (`sync::replication::PeerTarget`) and the side
//! that reads them (`sharing::receive`). The shapes are Cozy's, with one optional addition.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::store::Doctype;

/// The member of a `_bulk_docs` body listing the documents of the sharing's initial set.
pub const INITIAL: &str = "_initial";

/// `POST /sharings/:id/_bulk_docs` body: `{"<doctype>": [document, ...], "_initial": [key, ...]}`.
///
/// Documents carry `_id` (in the receiver's id space), `_rev`, `_revisions` and `_deleted` as
/// in CouchDB's `new_edits=false` writes. `_initial` (hearth's addition; absent means empty)
/// lists, as `<doctype>/<id>` keys, the documents an owner sends as part of the sharing's
/// initial set, which a recipient accepts whatever the rule's `add` says (Cozy's rule: `add`
/// governs only documents that begin to match later). A recipient can tell the documents of
/// id rules by itself; the list is how it learns those of selector rules. `_` cannot start a
/// doctype, so the member never collides with one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BulkDocs {
    pub docs: BTreeMap<Doctype, Vec<Value>>,
    pub initial: BTreeSet<String>,
}

impl BulkDocs {
    pub fn to_json(&self) -> Value {
        let mut out: Map<String, Value> =
            self.docs.iter().map(|(t, docs)| (t.as_str().to_owned(), Value::Array(docs.clone()))).collect();
        if !self.initial.is_empty() {
            out.insert(INITIAL.into(), self.initial.iter().cloned().map(Value::String).collect());
        }
        Value::Object(out)
    }

    /// Reads a body; the reason names what is wrong (a 400 for the sender).
    pub fn parse(body: &Value) -> Result<BulkDocs, String> {
        let obj = body.as_object().ok_or("the body must be an object of doctypes")?;
        let mut out = BulkDocs::default();
        for (key, value) in obj {
            if key == INITIAL {
                let keys = value.as_array().ok_or("_initial must be an array of document keys")?;
                for k in keys {
                    out.initial.insert(k.as_str().ok_or("_initial must be an array of document keys")?.to_owned());
                }
                continue;
            }
            let doctype = Doctype::parse(key)?;
            let docs = value.as_array().ok_or("each doctype needs an array of documents")?;
            out.docs.insert(doctype, docs.clone());
        }
        Ok(out)
    }
}

/// One document the receiver did not write, in the `_bulk_docs` answer (an array, `[]` when
/// every document was written). `error` is `forbidden` for a refusal by the sharing's rules or
/// safety principles, `bad_request` for an invalid replicated write; `id` is in the sender's
/// id space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub id: String,
    pub doctype: String,
    pub error: String,
    pub reason: String,
}

impl Refused {
    /// The answer's items, leniently: anything that is not a refusal is skipped.
    pub fn parse_answer(answer: &Value) -> Vec<Refused> {
        answer
            .as_array()
            .map(|items| items.iter().filter_map(|i| serde_json::from_value(i.clone()).ok()).collect())
            .unwrap_or_default()
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.doctype, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bulk_docs_bodies_round_trip_and_bad_ones_are_refused() {
        let body = json!({"io.cozy.notes": [{"_id": "a", "_rev": "1-x"}], "_initial": ["io.cozy.notes/a"]});
        let parsed = BulkDocs::parse(&body).unwrap();
        assert_eq!(parsed.initial.iter().collect::<Vec<_>>(), ["io.cozy.notes/a"]);
        assert_eq!(parsed.to_json(), body);
        let plain = json!({"io.cozy.notes": []});
        assert!(BulkDocs::parse(&plain).unwrap().initial.is_empty());
        assert_eq!(BulkDocs::parse(&plain).unwrap().to_json(), plain);
        for bad in [json!([]), json!({"Bad": []}), json!({"io.cozy.notes": 1}), json!({"_initial": [1]})] {
            assert!(BulkDocs::parse(&bad).is_err(), "{bad}");
        }
    }
}
