//! Message shapes of the replication routes between instances (`POST /sharings/:id/_bulk_docs`),
//! in one place for the side that sends them (`sync::replication::PeerTarget`) and the side
//! that reads them (`sharing::receive`). The shapes are Cozy's, with one optional addition.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::store::Doctype;

/// The reason of the owner's 403 to a member that may not write (read-only, or a sharing
/// without `sync` rules: its token is GET-only) when it calls a replication route that writes
/// (`_revs_diff`, `_bulk_docs`, content). The member's replicator reads it as the refusal of
/// every document it was sending, shown in its status as `degraded` with `refused_docs`
/// (`sync::replication::PeerTarget`), rather than as a failure to retry.
pub const READ_ONLY_REFUSAL: &str =
    "this member's permissions do not allow it: it may only read this sharing, so the owner refuses its changes";

/// The member of a removal's tombstone naming the instance the document left the sharing on
/// (its [`departure_mark`]). A removal is synthesised by the instance the document left (the
/// sender does not store it: the document lives on there, outside the sharing), so the members
/// that receive it store a revision that instance lacks, and may send it back. The instance
/// that sees its own mark on a received removal knows it for the echo of its own departure:
/// not a removal by the peer (the item may have come back here since, see `files::shared`,
/// "Re-entry"): it is moot (`sharing::receive`), neither written nor refused.
pub const DEPARTED_FROM: &str = "departed_from";

/// The value of [`DEPARTED_FROM`] for an instance: a digest of its domain (members do not
/// learn each other's addresses from it).
pub fn departure_mark(domain: &str) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(format!("hearth-departure/{domain}").as_bytes()))
}

/// The body of the removal an instance sends for a document that left the sharing there (the
/// revision's id is derived from it and from the revision it follows, so it is the same
/// whenever that instance sends it).
pub fn departure_body(domain: &str) -> String {
    serde_json::json!({ DEPARTED_FROM: departure_mark(domain) }).to_string()
}

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
///
/// Documents stay the text they were read as (see `store::body`): the sender never parses
/// them, and the receiver splits each into its `_` members and its body as written.
#[derive(Debug, Default)]
pub struct BulkDocs {
    pub docs: BTreeMap<Doctype, Vec<Box<RawValue>>>,
    pub initial: BTreeSet<String>,
}

impl Serialize for BulkDocs {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let extra = usize::from(!self.initial.is_empty());
        let mut map = serializer.serialize_map(Some(self.docs.len() + extra))?;
        for (doctype, docs) in &self.docs {
            map.serialize_entry(doctype.as_str(), docs)?;
        }
        if !self.initial.is_empty() {
            map.serialize_entry(INITIAL, &self.initial)?;
        }
        map.end()
    }
}

impl BulkDocs {
    /// Reads a body (the request's JSON text); the reason names what is wrong (a 400 for the
    /// sender).
    pub fn parse(body: &[u8]) -> Result<BulkDocs, String> {
        let obj: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => "the body must be an object of doctypes".to_string(),
            _ => format!("invalid JSON: {e}"),
        })?;
        let mut out = BulkDocs::default();
        for (key, value) in obj {
            if key == INITIAL {
                let keys: Vec<String> = serde_json::from_str(value.get())
                    .map_err(|_| "_initial must be an array of document keys".to_string())?;
                out.initial.extend(keys);
                continue;
            }
            let doctype = Doctype::parse(&key)?;
            let docs: Vec<Box<RawValue>> = serde_json::from_str(value.get())
                .map_err(|_| "each doctype needs an array of documents".to_string())?;
            out.docs.insert(doctype, docs);
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

    #[test]
    fn bulk_docs_bodies_round_trip_and_bad_ones_are_refused() {
        let body = r#"{"io.cozy.notes":[{"_id":"a","_rev":"1-x","n":1.50}],"_initial":["io.cozy.notes/a"]}"#;
        let parsed = BulkDocs::parse(body.as_bytes()).unwrap();
        assert_eq!(parsed.initial.iter().collect::<Vec<_>>(), ["io.cozy.notes/a"]);
        assert_eq!(serde_json::to_string(&parsed).unwrap(), body, "documents travel as written");
        let plain = r#"{"io.cozy.notes":[]}"#;
        assert!(BulkDocs::parse(plain.as_bytes()).unwrap().initial.is_empty());
        assert_eq!(serde_json::to_string(&BulkDocs::parse(plain.as_bytes()).unwrap()).unwrap(), plain);
        for bad in ["[]", r#"{"Bad":[]}"#, r#"{"io.cozy.notes":1}"#, r#"{"_initial":[1]}"#, "{"] {
            assert!(BulkDocs::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
