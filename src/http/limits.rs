//! The limits CouchDB sets on requests, applied as a body is read: `max_http_request_size`
//! (413 `too_large` before the body is read whole, see [`super::read_body`]),
//! `max_document_size` (413 `document_too_large`, the document's id as the reason),
//! `max_bulk_docs_count` (413 `max_bulk_docs_count_exceeded`) and `max_bulk_get_count` (413
//! `max_bulk_get_count_exceeded`). Their values and defaults are in [`crate::config::Config`].
//!
//! Lists are read by [`array_at_most`] and [`object_at_most`]: elements stay unparsed text, and
//! a list longer than its limit is refused at the first element past it, so a small body of
//! millions of tiny documents costs no more than the body itself.

use std::cell::Cell;
use std::fmt;

use actix_web::{web, HttpRequest};
use serde::de::{Error as _, MapAccess, SeqAccess, Visitor};
use serde::Deserializer as _;
use serde_json::value::RawValue;

use super::{ApiError, ApiResult, AppState};
use crate::store::doc::body_size;

/// The limits of one request, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `max_http_request_size`, in bytes.
    pub request: usize,
    /// `max_document_size`, in bytes of a body as stored.
    pub document: usize,
    /// `max_bulk_docs_count`: documents per `_bulk_docs`, and per `_revs_diff`.
    pub bulk_docs: usize,
    /// `max_bulk_get_count`: documents asked for per `_bulk_get`.
    pub bulk_get: usize,
    /// `revs_limit`: revisions per document in a `_revs_diff`.
    pub revs: usize,
}

impl Limits {
    pub fn of(req: &HttpRequest) -> Limits {
        let defaults;
        let config = match req.app_data::<web::Data<AppState>>() {
            Some(state) => &state.config,
            None => {
                defaults = crate::config::Config::default();
                &defaults
            }
        };
        Limits {
            request: config.max_http_request_size,
            document: config.max_document_size,
            bulk_docs: config.max_bulk_docs_count,
            bulk_get: config.max_bulk_get_count,
            revs: config.revs_limit.max(1),
        }
    }

    /// Refuses a document whose body (as stored: see [`body_size`]) is over
    /// `max_document_size`: 413 `document_too_large` with its id as the reason, as CouchDB
    /// answers.
    pub fn check_document(&self, id: &str, body_bytes: usize) -> ApiResult<()> {
        if body_bytes > self.document {
            return Err(ApiError::Limit { error: "document_too_large", reason: id.to_owned() });
        }
        Ok(())
    }

    pub fn too_many_docs(&self) -> ApiError {
        ApiError::Limit {
            error: "max_bulk_docs_count_exceeded",
            reason: format!("a _bulk_docs holds at most {} documents (max_bulk_docs_count)", self.bulk_docs),
        }
    }

    pub fn too_many_gets(&self) -> ApiError {
        ApiError::Limit {
            error: "max_bulk_get_count_exceeded",
            reason: format!("a _bulk_get asks for at most {} documents (max_bulk_get_count)", self.bulk_get),
        }
    }

    /// Reads a `_revs_diff` body (`{"id": [revs]}`): at most `max_bulk_docs_count` documents of
    /// at most `revs_limit` revisions each, else 413 `too_large`. The entries stay unparsed.
    pub fn revs_diff<'a>(&self, body: &'a [u8]) -> ApiResult<Vec<(String, Vec<&'a RawValue>)>> {
        let entries = match object_at_most(body, self.bulk_docs) {
            Ok(e) => e,
            Err(Bounded::TooMany) => {
                return Err(ApiError::Limit {
                    error: "too_large",
                    reason: format!("a _revs_diff lists at most {} documents (max_bulk_docs_count)", self.bulk_docs),
                })
            }
            Err(Bounded::Invalid(e)) => return Err(invalid(body, &e, "the body")),
        };
        entries
            .into_iter()
            .map(|(id, revs)| match array_at_most(revs.get().as_bytes(), self.revs) {
                Ok(list) => Ok((id, list)),
                Err(Bounded::TooMany) => Err(ApiError::Limit {
                    error: "too_large",
                    reason: format!("a _revs_diff lists at most {} revisions per document (revs_limit)", self.revs),
                }),
                Err(Bounded::Invalid(_)) => Err(ApiError::bad_request("each document needs an array of revisions")),
            })
            .collect()
    }

    /// Reads a peer's `_bulk_docs` body (`{"<doctype>": [documents], "_initial": [keys]}`) in
    /// one pass, its members in order and each member's elements unparsed text (see
    /// [`crate::sharing::protocol::BulkDocs::from_members`]): at most `max_bulk_docs_count`
    /// documents in all, and as many `_initial` keys, else 413 `max_bulk_docs_count_exceeded`
    /// at the first one past it; each document within `max_document_size`, else 413
    /// `document_too_large`. A body of another shape, or naming a member twice, is a 400 whose
    /// reason says what is wrong without quoting the body.
    pub fn peer_bulk_docs<'a>(&self, body: &'a [u8]) -> ApiResult<Vec<(String, Vec<&'a RawValue>)>> {
        let state = Reading::default();
        let mut de = serde_json::Deserializer::from_slice(body);
        let read = (&mut de)
            .deserialize_map(PeerBulkDocs { max: self.bulk_docs, state: &state })
            .and_then(|v| de.end().map(|_| v));
        let members = match read {
            Ok(members) => members,
            Err(_) if state.over.get() => return Err(self.too_many_docs()),
            // A value of another type than expected (serde's message would quote it).
            Err(e) if e.classify() == serde_json::error::Category::Data => {
                return Err(ApiError::bad_request(
                    state.shape.get().unwrap_or("the body must be an object of doctypes"),
                ))
            }
            Err(e) => return Err(invalid(body, &e, "the body")),
        };
        for (key, list) in &members {
            if key.starts_with('_') {
                continue;
            }
            for doc in list {
                // The text is longer than the body it holds: only long ones are measured.
                if doc.get().len() <= self.document {
                    continue;
                }
                if let Some(size) = body_size(doc) {
                    let id = serde_json::from_str::<IdOnly>(doc.get()).ok().and_then(|d| d.id).unwrap_or_default();
                    self.check_document(&id, size)?;
                }
            }
        }
        Ok(members)
    }
}

/// What reading a peer's `_bulk_docs` found wrong, for the answer.
#[derive(Default)]
struct Reading {
    /// More than the limit allows.
    over: Cell<bool>,
    /// The 400's reason when a member is not what it should be.
    shape: Cell<Option<&'static str>>,
}

/// The visitor of a peer's `_bulk_docs` body: an object of at most `max + 1` arrays, each
/// named once, `max` elements in all not counting `_` members (`_initial`), each of those at
/// most `max` long too.
struct PeerBulkDocs<'f> {
    max: usize,
    state: &'f Reading,
}

impl<'de> Visitor<'de> for PeerBulkDocs<'_> {
    type Value = Vec<(String, Vec<&'de RawValue>)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of doctypes")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: Vec<(String, Vec<&'de RawValue>)> = Vec::new();
        let mut named = std::collections::HashSet::new();
        let mut docs = 0usize;
        while let Some(key) = map.next_key::<String>()? {
            // More members than documents allowed (and `_initial`) is more documents, or
            // empty lists nobody sends.
            if out.len() > self.max {
                self.state.over.set(true);
                return Err(A::Error::custom(format!("more than {} members", self.max + 1)));
            }
            // JSON allows a name twice; a second list of the same doctype (or of `_initial`)
            // would be read as what, and would escape the count of `_initial` keys.
            if !named.insert(key.clone()) {
                self.state.shape.set(Some(crate::sharing::protocol::NAMED_TWICE));
                return Err(A::Error::custom("a member is named twice"));
            }
            let meta = key.starts_with('_');
            let max = if meta { self.max } else { self.max - docs };
            let list = map.next_value_seed(Elements { max, state: self.state, meta })?;
            if !meta {
                docs += list.len();
            }
            out.push((key, list));
        }
        Ok(out)
    }
}

/// One member of a peer's `_bulk_docs`: an array of at most `max` elements, kept unparsed.
struct Elements<'f> {
    max: usize,
    state: &'f Reading,
    /// `_initial` (keys), not documents: named in the error for another shape.
    meta: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for Elements<'_> {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        let (what, reason) = if self.meta {
            ("an array of document keys", "_initial must be an array of document keys")
        } else {
            ("an array of documents", "each doctype needs an array of documents")
        };
        // Used only when the error is about a type (the caller checks): a syntax error inside
        // the member is reported as such.
        deserializer.deserialize_seq(ArrayAtMost { max: self.max, over: &self.state.over, what }).inspect_err(|_| {
            if self.state.shape.get().is_none() {
                self.state.shape.set(Some(reason));
            }
        })
    }
}

#[derive(serde::Deserialize)]
struct IdOnly {
    #[serde(rename = "_id")]
    id: Option<String>,
}

/// The 400 for a body that is not what a bounded reader expected.
pub fn invalid(body: &[u8], e: &serde_json::Error, what: &str) -> ApiError {
    if body.iter().all(u8::is_ascii_whitespace) {
        return ApiError::bad_request("request body is empty; a JSON document is required");
    }
    match e.classify() {
        serde_json::error::Category::Data => ApiError::bad_request(format!("{what} must be a JSON object")),
        _ => ApiError::bad_request(format!("invalid JSON: {e}")),
    }
}

/// Why a bounded reader stopped.
#[derive(Debug)]
pub enum Bounded {
    /// Not JSON, or not the expected shape.
    Invalid(serde_json::Error),
    /// More elements than the limit: reading stopped at the first one past it.
    TooMany,
}

/// The elements of the JSON array `json`, unparsed; [`Bounded::TooMany`] at its `max + 1`th
/// element, before reading further.
pub fn array_at_most(json: &[u8], max: usize) -> Result<Vec<&RawValue>, Bounded> {
    let over = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(json);
    let out =
        (&mut de).deserialize_seq(ArrayAtMost { max, over: &over, what: "an array" }).and_then(|v| de.end().map(|_| v));
    out.map_err(|e| if over.get() { Bounded::TooMany } else { Bounded::Invalid(e) })
}

/// The members of the JSON object `json`, in order, their values unparsed;
/// [`Bounded::TooMany`] at its `max + 1`th member, before reading further.
pub fn object_at_most(json: &[u8], max: usize) -> Result<Vec<(String, &RawValue)>, Bounded> {
    let over = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(json);
    let out = (&mut de).deserialize_map(ObjectAtMost { max, over: &over }).and_then(|v| de.end().map(|_| v));
    out.map_err(|e| if over.get() { Bounded::TooMany } else { Bounded::Invalid(e) })
}

struct ArrayAtMost<'f> {
    max: usize,
    over: &'f Cell<bool>,
    /// What was expected, for the error of another shape.
    what: &'static str,
}

impl<'de> Visitor<'de> for ArrayAtMost<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element::<&'de RawValue>()? {
            if out.len() == self.max {
                self.over.set(true);
                return Err(A::Error::custom(format!("more than {} elements", self.max)));
            }
            out.push(v);
        }
        Ok(out)
    }
}

struct ObjectAtMost<'f> {
    max: usize,
    over: &'f Cell<bool>,
}

impl<'de> Visitor<'de> for ObjectAtMost<'_> {
    type Value = Vec<(String, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<&'de RawValue>()?;
            if out.len() == self.max {
                self.over.set(true);
                return Err(A::Error::custom(format!("more than {} members", self.max)));
            }
            out.push((key, value));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { request: 1 << 20, document: 20, bulk_docs: 3, bulk_get: 3, revs: 2 }
    }

    #[test]
    fn arrays_are_read_up_to_their_limit_and_refused_past_it() {
        let three = array_at_most(br#"[{"a":1}, [2], "3"]"#, 3).unwrap();
        assert_eq!(three.iter().map(|r| r.get()).collect::<Vec<_>>(), [r#"{"a":1}"#, "[2]", r#""3""#]);
        assert!(matches!(array_at_most(b"[1,2,3,4]", 3), Err(Bounded::TooMany)));
        // Refused at the fourth element: what follows is never read, even if it is not JSON.
        assert!(matches!(array_at_most(b"[1,2,3,4,nonsense", 3), Err(Bounded::TooMany)));
        assert!(matches!(array_at_most(b"[1,2", 3), Err(Bounded::Invalid(_))));
        assert!(matches!(array_at_most(b"{}", 3), Err(Bounded::Invalid(_))));
        assert!(matches!(array_at_most(b"[1] 2", 3), Err(Bounded::Invalid(_))));
    }

    #[test]
    fn objects_are_read_in_order_up_to_their_limit() {
        let m = object_at_most(br#"{"b": [1], "a\u0041": 2}"#, 2).unwrap();
        assert_eq!(m.iter().map(|(k, v)| (k.as_str(), v.get())).collect::<Vec<_>>(), [("b", "[1]"), ("aA", "2")]);
        assert!(matches!(object_at_most(br#"{"a":1,"b":2,"c":3}"#, 2), Err(Bounded::TooMany)));
        assert!(matches!(object_at_most(b"[]", 2), Err(Bounded::Invalid(_))));
    }

    #[test]
    fn a_peer_bulk_docs_is_checked_for_count_and_document_size() {
        let l = limits();
        assert!(l.peer_bulk_docs(br#"{"io.a": [{"_id":"x","_rev":"1-a","v":1}], "io.b": [{}, {}]}"#).is_ok());
        let count = l.peer_bulk_docs(br#"{"io.a": [{}, {}], "io.b": [{}, {}]}"#).unwrap_err();
        assert!(matches!(count, ApiError::Limit { error: "max_bulk_docs_count_exceeded", .. }), "{count:?}");
        // The `_` members do not count toward the size; the body's do, without whitespace.
        let long_meta = format!(r#"{{"io.a": [{{"_id":"x","_rev":"1-{}","v":  1}}]}}"#, "a".repeat(40));
        assert!(l.peer_bulk_docs(long_meta.as_bytes()).is_ok());
        let big = l.peer_bulk_docs(br#"{"io.a": [{"_id":"big","v":"0123456789abcdef"}]}"#).unwrap_err();
        assert!(matches!(&big, ApiError::Limit { error: "document_too_large", reason } if reason == "big"), "{big:?}");
        // The elements stay the text they were.
        let read = l.peer_bulk_docs(br#"{"io.a": [{"_id":"x", "v":1.50}], "_initial": ["io.a/x"]}"#).unwrap();
        let texts: Vec<(&str, Vec<&str>)> =
            read.iter().map(|(k, v)| (k.as_str(), v.iter().map(|d| d.get()).collect())).collect();
        assert_eq!(texts, [("io.a", vec![r#"{"_id":"x", "v":1.50}"#]), ("_initial", vec![r#""io.a/x""#])]);
        // `_initial` counts apart, within the same limit.
        assert!(l.peer_bulk_docs(br#"{"io.a": [{}, {}, {}], "_initial": ["a", "b", "c"]}"#).is_ok());
        let keys = l.peer_bulk_docs(br#"{"_initial": ["a", "b", "c", "d"]}"#).unwrap_err();
        assert!(matches!(keys, ApiError::Limit { error: "max_bulk_docs_count_exceeded", .. }), "{keys:?}");
        // A member named twice is refused: a second `_initial` would escape its count.
        let twice = l.peer_bulk_docs(br#"{"_initial": ["a", "b", "c"], "_initial": ["d"]}"#).unwrap_err();
        assert!(matches!(&twice, ApiError::BadRequest(r) if r.contains("named once")), "{twice:?}");
        assert!(l.peer_bulk_docs(br#"{"io.a": [{}], "io.a": [{}]}"#).is_err());
        // Other shapes are 400s that say what is wrong, never quoting the body.
        for (bad, says) in [
            (&br#""secret-token""#[..], "the body must be an object of doctypes"),
            (b"[1]", "the body must be an object of doctypes"),
            (br#"{"io.a": "secret-token"}"#, "each doctype needs an array of documents"),
            (br#"{"io.a": [], "_initial": {"k": "secret-token"}}"#, "_initial must be an array of document keys"),
            (br#"{"io.a": [{"x": "secret-token"}"#, "invalid JSON"),
            (br#"{"io.a": [{"x": tru}]}"#, "invalid JSON"),
            (b"  ", "request body is empty"),
        ] {
            match l.peer_bulk_docs(bad) {
                Err(ApiError::BadRequest(reason)) => {
                    assert!(reason.starts_with(says), "{reason}");
                    assert!(!reason.contains("secret"), "{reason}");
                }
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bad)),
            }
        }
    }

    #[test]
    fn a_revs_diff_is_bounded_in_documents_and_revisions() {
        let l = limits();
        let ok = l.revs_diff(br#"{"a": ["1-a", "2-b"], "b": []}"#).unwrap();
        assert_eq!(ok.len(), 2);
        assert!(matches!(l.revs_diff(br#"{"a":[],"b":[],"c":[],"d":[]}"#), Err(ApiError::Limit { .. })));
        assert!(matches!(l.revs_diff(br#"{"a":["1-a","2-b","3-c"]}"#), Err(ApiError::Limit { .. })));
        assert!(matches!(l.revs_diff(b"[]"), Err(ApiError::BadRequest(_))));
        assert!(matches!(l.revs_diff(br#"{"a": 1}"#), Err(ApiError::BadRequest(_))));
    }
}
