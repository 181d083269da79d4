//! The replication messages: `POST /sharings/:id/_revs_diff` (request [`RevsDiffRequest`],
//! answer [`RevsDiffAnswer`]) and `POST /sharings/:id/_bulk_docs` (request [`BulkDocs`], answer
//! a list of [`Refused`]), and the removal an instance synthesises for a document that left the
//! sharing there ([`Departure`]). Shapes are Cozy's (CouchDB's `_revs_diff` and `new_edits=false`
//! `_bulk_docs`, keyed by `<doctype>/<id>`), with hearth's `_initial` and `departed_from`.

use std::collections::{BTreeMap, BTreeSet};

use hearth_replicator::rev::{Rev, Revisions};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::{object, Lenient};
use crate::store::Doctype;

/// The reason given to a member that may not write (read-only, or a sharing without `sync`
/// rules: its token is GET-only): for each document it sends to `_bulk_docs`, refused in the
/// answer (`sharing::receive::judge`; the echo of the receiver's own removal excepted, moot),
/// and as the 403 of the other routes that would write (sending file content). The member's
/// replicator reads it as the refusal of what it was sending, shown in its status as
/// `degraded` with `refused_docs` (`sync::replication::PeerTarget`), rather than as a failure
/// to retry.
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
    #[derive(Serialize)]
    struct Mark {
        departed_from: String,
    }
    serde_json::to_string(&Mark { departed_from: departure_mark(domain) }).unwrap_or_default()
}

/// The removal an instance sends for a document that left the sharing there (see
/// [`DEPARTED_FROM`]): `{"_deleted":true,"_id","_rev","_revisions","departed_from"}`, members in
/// this order. Synthesised, not a stored body, so it is the one document the sender serialises.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Departure {
    pub _deleted: bool,
    /// In the receiver's id space.
    pub _id: String,
    pub _rev: Rev,
    /// Written `{"ids","start"}`, as it always was.
    #[serde(serialize_with = "ids_then_start")]
    pub _revisions: Revisions,
    /// [`departure_mark`] of the instance the document left.
    pub departed_from: String,
}

impl Departure {
    /// The removal `rev` of document `id`, with its `history` (newest first, `rev` included).
    pub fn new(id: String, rev: Rev, history: &[Rev], departed_from: String) -> Departure {
        Departure { _deleted: true, _id: id, _rev: rev, _revisions: Revisions::from_revs(history), departed_from }
    }
}

fn ids_then_start<S: serde::Serializer>(r: &Revisions, serializer: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Sorted<'a> {
        ids: &'a [String],
        start: u64,
    }
    Sorted { ids: &r.ids, start: r.start }.serialize(serializer)
}

/// `POST /sharings/:id/_revs_diff` body: `{"<doctype>/<id>": ["<rev>", ...]}`, ids in the
/// receiver's id space (CouchDB's `_revs_diff`, keyed by doctype too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RevsDiffRequest<'a>(pub &'a BTreeMap<String, Vec<Rev>>);

impl RevsDiffRequest<'_> {
    /// Reads a body; the reason names what is wrong (a 400 for the sender). Each key is handed
    /// to `check_key` first, in the body's order, so a bad key is reported before its revisions.
    pub fn parse<K>(
        body: &Value,
        mut check_key: impl FnMut(&str) -> Result<K, String>,
    ) -> Result<Vec<(String, K, Vec<Rev>)>, String> {
        let obj = body.as_object().ok_or_else(|| "the body must be an object".to_string())?;
        let mut out = Vec::with_capacity(obj.len());
        for (key, revs) in obj {
            let checked = check_key(key)?;
            let revs: Vec<Rev> = revs
                .as_array()
                .ok_or_else(|| "revisions must be arrays".to_string())?
                .iter()
                .map(|r| {
                    let r = r.as_str().ok_or_else(|| "invalid revision".to_string())?;
                    r.parse().map_err(|e| format!("invalid revision {r:?}: {e}"))
                })
                .collect::<Result<_, String>>()?;
            out.push((key.clone(), checked, revs));
        }
        Ok(out)
    }
}

/// One entry of the `_revs_diff` answer: the revisions the receiver lacks, and those it has
/// that may be their ancestors (absent when none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevsDiffEntry {
    pub missing: Vec<Rev>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub possible_ancestors: Vec<Rev>,
}

/// `POST /sharings/:id/_revs_diff` answer: `{"<doctype>/<id>": {"missing": [...],
/// "possible_ancestors": [...]}}`, only for documents with something missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RevsDiffAnswer(pub BTreeMap<String, RevsDiffEntry>);

impl RevsDiffAnswer {
    /// Reads an answer, leniently within an object: an entry or a revision that cannot be read
    /// counts as nothing missing.
    pub fn parse(answer: Value) -> Result<RevsDiffAnswer, String> {
        #[derive(Deserialize)]
        struct Entry {
            #[serde(default)]
            missing: Vec<Lenient<Rev>>,
        }
        let Value::Object(obj) = answer else {
            return Err("_revs_diff answer is not an object".into());
        };
        let mut out = BTreeMap::new();
        for (key, entry) in obj {
            let Some(entry) = object::<Entry>(entry) else { continue };
            let missing: Vec<Rev> = entry.missing.into_iter().filter_map(|r| r.0).collect();
            out.insert(key, RevsDiffEntry { missing, possible_ancestors: Vec::new() });
        }
        Ok(RevsDiffAnswer(out))
    }
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
/// them (`D` is `Box<RawValue>`), and the receiver reads the request once, each document a
/// slice of its text (`D` is `&RawValue`, see [`BulkDocs::from_members`]), then splits each
/// into its `_` members and its body as written.
#[derive(Debug)]
pub struct BulkDocs<D = Box<RawValue>> {
    pub docs: BTreeMap<Doctype, Vec<D>>,
    pub initial: BTreeSet<String>,
}

impl<D> Default for BulkDocs<D> {
    fn default() -> Self {
        BulkDocs { docs: BTreeMap::new(), initial: BTreeSet::new() }
    }
}

impl<D: Serialize> Serialize for BulkDocs<D> {
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

impl<'a> BulkDocs<&'a RawValue> {
    /// A request from the members of its body as read (each member's elements unparsed, in
    /// the body's order: `http::limits::Limits::peer_bulk_docs` reads them within the
    /// limits); the reason names what is wrong (a 400 for the sender), such as a member named
    /// twice.
    pub fn from_members(members: Vec<(String, Vec<&'a RawValue>)>) -> Result<Self, String> {
        let mut out = BulkDocs::default();
        let mut initial_seen = false;
        for (key, elements) in members {
            if key == INITIAL {
                if std::mem::replace(&mut initial_seen, true) {
                    return Err(NAMED_TWICE.into());
                }
                for k in elements {
                    let k: String = serde_json::from_str(k.get())
                        .map_err(|_| "_initial must be an array of document keys".to_string())?;
                    out.initial.insert(k);
                }
                continue;
            }
            let doctype = Doctype::parse(&key)?;
            if out.docs.insert(doctype, elements).is_some() {
                return Err(NAMED_TWICE.into());
            }
        }
        Ok(out)
    }
}

/// The reason given for a `_bulk_docs` body that names a doctype, or `_initial`, twice (JSON
/// allows it; the receiver does not guess which list is meant).
pub const NAMED_TWICE: &str = "each doctype, and _initial, is named once in the body";

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

    /// Reads a body as the receiver does, without its limits.
    pub(super) fn read(body: &str) -> Result<BulkDocs<&RawValue>, String> {
        let members: Vec<(String, Vec<&RawValue>)> = serde_json::from_str::<BTreeMap<String, Vec<&RawValue>>>(body)
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect();
        BulkDocs::from_members(members)
    }

    #[test]
    fn bulk_docs_bodies_round_trip_and_bad_ones_are_refused() {
        let body = r#"{"io.cozy.notes":[{"_id":"a","_rev":"1-x","n":1.50}],"_initial":["io.cozy.notes/a"]}"#;
        let parsed = read(body).unwrap();
        assert_eq!(parsed.initial.iter().collect::<Vec<_>>(), ["io.cozy.notes/a"]);
        assert_eq!(serde_json::to_string(&parsed).unwrap(), body, "documents travel as written");
        let plain = r#"{"io.cozy.notes":[]}"#;
        assert!(read(plain).unwrap().initial.is_empty());
        assert_eq!(serde_json::to_string(&read(plain).unwrap()).unwrap(), plain);
        for bad in ["[]", r#"{"Bad":[]}"#, r#"{"io.cozy.notes":1}"#, r#"{"_initial":[1]}"#, "{"] {
            assert!(read(bad).is_err(), "{bad}");
        }
        // A member named twice (JSON allows it) is refused, whichever it is.
        let a = RawValue::from_string(r#"{"_id":"a"}"#.into()).unwrap();
        let key = RawValue::from_string(r#""io.cozy.notes/a""#.into()).unwrap();
        for twice in [
            vec![("io.cozy.notes".to_string(), vec![&*a]), ("io.cozy.notes".to_string(), vec![])],
            vec![(INITIAL.to_string(), vec![&*key]), (INITIAL.to_string(), vec![])],
        ] {
            assert_eq!(BulkDocs::from_members(twice).unwrap_err(), NAMED_TWICE);
        }
    }
}

#[cfg(test)]
mod wire_tests {
    use super::tests::read;
    use super::*;

    /// The `_revs_diff` request of the sharing seed (`POST /sharings/:id/_revs_diff`).
    const SEED_REVS_DIFF: &str = r#"{
      "io.cozy.files/29631902-2cec-11e8-860d-435b24c2cc58": ["2-4a7e4ae49c4366eaed8edeaea8f784ad"],
      "io.cozy.files/44f5752a-2cec-11e8-b227-abfc3cfd4b6e": [
        "4-2ee767305024673cfb3f5af037cd2729",
        "4-efc54218773c6acd910e2e97fea2a608"
      ]
    }"#;

    /// Its answer in the seed.
    const SEED_REVS_DIFF_ANSWER: &str = r#"{
      "io.cozy.files/44f5752a-2cec-11e8-b227-abfc3cfd4b6e": {
        "missing": ["4-2ee767305024673cfb3f5af037cd2729"],
        "possible_ancestors": ["3-753875d51501a6b1883a9d62b4d33f91"]
      }
    }"#;

    fn compact(json: &str) -> String {
        serde_json::from_str::<Value>(json).unwrap().to_string()
    }

    #[test]
    fn the_seeds_revs_diff_request_round_trips() {
        let body: Value = serde_json::from_str(SEED_REVS_DIFF).unwrap();
        let parsed = RevsDiffRequest::parse(&body, |k| Ok(k.to_owned())).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1].2.len(), 2);
        assert_eq!(parsed[1].2[1].to_string(), "4-efc54218773c6acd910e2e97fea2a608");
        let map: BTreeMap<String, Vec<Rev>> = parsed.into_iter().map(|(k, _, revs)| (k, revs)).collect();
        assert_eq!(serde_json::to_string(&RevsDiffRequest(&map)).unwrap(), compact(SEED_REVS_DIFF));
    }

    #[test]
    fn bad_revs_diff_requests_are_refused_with_a_reason() {
        let check = |k: &str| if k.contains('/') { Ok(()) } else { Err(format!("invalid key {k:?}")) };
        for (bad, reason) in [
            ("[]", "the body must be an object"),
            (r#"{"t/a": "1-a"}"#, "revisions must be arrays"),
            (r#"{"t/a": [1]}"#, "invalid revision"),
            (r#"{"t/a": ["x"]}"#, "invalid revision \"x\""),
            (r#"{"nokey": ["1-a"]}"#, "invalid key"),
        ] {
            let err = RevsDiffRequest::parse(&serde_json::from_str(bad).unwrap(), check).unwrap_err();
            assert!(err.starts_with(reason), "{bad}: {err}");
        }
    }

    #[test]
    fn the_seeds_revs_diff_answer_round_trips_and_is_read_leniently() {
        let answer = RevsDiffAnswer::parse(serde_json::from_str(SEED_REVS_DIFF_ANSWER).unwrap()).unwrap();
        let entry = &answer.0["io.cozy.files/44f5752a-2cec-11e8-b227-abfc3cfd4b6e"];
        assert_eq!(entry.missing, vec!["4-2ee767305024673cfb3f5af037cd2729".parse::<Rev>().unwrap()]);
        // The sender reads only `missing`; the receiver writes both, as the seed shows.
        let written = RevsDiffAnswer(BTreeMap::from([(
            "io.cozy.files/44f5752a-2cec-11e8-b227-abfc3cfd4b6e".to_owned(),
            RevsDiffEntry {
                missing: entry.missing.clone(),
                possible_ancestors: vec!["3-753875d51501a6b1883a9d62b4d33f91".parse().unwrap()],
            },
        )]));
        assert_eq!(serde_json::to_string(&written).unwrap(), compact(SEED_REVS_DIFF_ANSWER));
        let without = RevsDiffEntry { missing: entry.missing.clone(), possible_ancestors: Vec::new() };
        assert_eq!(serde_json::to_string(&without).unwrap(), r#"{"missing":["4-2ee767305024673cfb3f5af037cd2729"]}"#);
        let odd = json(r#"{"t/a": {"missing": ["1-a", 3, "bad"]}, "t/b": [["1-b"]], "t/c": {"missing": "1-c"}}"#);
        let read = RevsDiffAnswer::parse(odd).unwrap();
        assert_eq!(read.0["t/a"].missing, vec!["1-a".parse::<Rev>().unwrap()]);
        assert!(!read.0.contains_key("t/b") && !read.0.contains_key("t/c"));
        assert!(RevsDiffAnswer::parse(json("[]")).is_err());
    }

    fn json(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn the_seeds_bulk_docs_request_and_answer_round_trip() {
        let seed = r#"{"io.cozy.files":[{"_id":"44f5752a-2cec-11e8-b227-abfc3cfd4b6e","_rev":"4-2ee767305024673cfb3f5af037cd2729","_revisions":{"start":4,"ids":["2ee767305024673cfb3f5af037cd2729","753875d51501a6b1883a9d62b4d33f91"]}}]}"#;
        let parsed = read(seed).unwrap();
        assert_eq!(parsed.docs.len(), 1);
        assert_eq!(serde_json::to_string(&parsed).unwrap(), seed);
        assert!(Refused::parse_answer(&json("[]")).is_empty());
        let refused =
            Refused { id: "a".into(), doctype: "io.cozy.notes".into(), error: "forbidden".into(), reason: "r".into() };
        let text = serde_json::to_string(&vec![refused.clone()]).unwrap();
        assert_eq!(text, r#"[{"id":"a","doctype":"io.cozy.notes","error":"forbidden","reason":"r"}]"#);
        assert_eq!(Refused::parse_answer(&json(&text)), vec![refused]);
    }

    #[test]
    fn a_departure_is_written_as_it_always_was() {
        let history: Vec<Rev> = vec!["3-c".parse().unwrap(), "2-b".parse().unwrap()];
        let d = Departure::new("doc".into(), history[0].clone(), &history, departure_mark("alice.example"));
        let expected = serde_json::json!({"_id": "doc", "_rev": "3-c", "_deleted": true,
            "_revisions": {"start": 3, "ids": ["c", "b"]}, DEPARTED_FROM: departure_mark("alice.example")});
        assert_eq!(serde_json::to_string(&d).unwrap(), expected.to_string());
        assert_eq!(
            departure_body("alice.example"),
            serde_json::json!({DEPARTED_FROM: departure_mark("alice.example")}).to_string()
        );
    }
}
