//! Document identifiers and the JSON shapes of documents: parsing a request's document into a
//! [`DocWrite`] (with CouchDB's rules for `_` members) and rendering a stored revision back,
//! its body spliced in as written.

use std::fmt;

use hearth_replicator::rev::{Rev, RevError, Revisions, MAX_POS};
use serde_json::value::RawValue;
use serde_json::Value;

use super::body::{Body, Members};
use super::{DocRev, DocWrite};

/// A sharing id: 32 lowercase hex digits, the same on every instance of the sharing.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct SharingId(String);

impl SharingId {
    pub fn generate() -> SharingId {
        SharingId(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn parse(s: &str) -> Result<SharingId, String> {
        if !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            Ok(SharingId(s.to_ascii_lowercase()))
        } else {
            Err("invalid sharing id".into())
        }
    }

    /// The id of a sharing created by the instance at `owner_url` (its base URL exactly as it
    /// appears in the sharing, e.g. `https://alice.example.net`) with the random `nonce`: the
    /// first 128 bits of SHA-256 over both, in hex. A recipient recomputes it from the sharing
    /// request, so an id names its owner: no other instance can make a request under an id it
    /// did not issue (see `sharing::request`).
    pub fn derived(owner_url: &str, nonce: &str) -> SharingId {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in ["hearth-sharing-id", owner_url, nonce] {
            h.update(part.as_bytes());
            h.update(b"\0");
        }
        SharingId(hex::encode(&h.finalize()[..16]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id of a sharing not yet given one: matches no tracking row (what `""` did before the
/// store took [`SharingId`]s).
pub static UNSET_SHARING_ID: SharingId = SharingId(String::new());

impl std::fmt::Display for SharingId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.0)
    }
}

/// Compared with the text of the value, as read from a request or a stored key.
impl PartialEq<str> for SharingId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for SharingId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for SharingId {
    fn eq(&self, other: &String) -> bool {
        self.0 == *other
    }
}

/// A member's index in its sharing's member list: 0 is the owner, recipients follow in the
/// order they were added, and an index never changes once given (members who leave keep
/// theirs). The same bare JSON number on the wire (`member_index`, `PeerKey`'s member) and in
/// stored tracking rows (`origin`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct MemberIndex(pub usize);

impl MemberIndex {
    /// The owner's index.
    pub const OWNER: MemberIndex = MemberIndex(0);

    /// The position in the member list.
    pub fn get(self) -> usize {
        self.0
    }

    pub fn is_owner(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for MemberIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Longest document id accepted, in bytes.
pub const MAX_ID_LEN: usize = 512;

/// A doctype such as `io.cozy.notes`: lowercase ASCII letters, digits, `.`, `-` and `_`,
/// starting with a letter (so it also maps to a CouchDB database name).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Doctype(String);

impl Doctype {
    pub fn parse(s: &str) -> Result<Doctype, String> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.as_bytes()[0].is_ascii_lowercase()
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'));
        if ok {
            Ok(Doctype(s.to_owned()))
        } else {
            Err(format!("invalid doctype {s:?}: use lowercase letters, digits, '.', '-' and '_'"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Doctype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// Compared with the text of the value, as read from a request or a stored key.
impl PartialEq<str> for Doctype {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Doctype {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for Doctype {
    fn eq(&self, other: &String) -> bool {
        self.0 == *other
    }
}

/// A document id: non-empty, at most [`MAX_ID_LEN`] bytes, no control characters, and not
/// starting with `_` (CouchDB reserves those; `_local/` documents have their own routes and
/// design documents are not supported).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocId(String);

impl DocId {
    pub fn parse(s: &str) -> Result<DocId, String> {
        if s.is_empty() {
            return Err("document id must not be empty".into());
        }
        if s.len() > MAX_ID_LEN {
            return Err(format!("document id longer than {MAX_ID_LEN} bytes"));
        }
        if s.starts_with('_') {
            return Err("only reserved document ids may start with underscore".into());
        }
        if s.chars().any(char::is_control) {
            return Err("document id contains control characters".into());
        }
        Ok(DocId(s.to_owned()))
    }

    /// A fresh server-side id: 32 lowercase hex digits, as Cozy makes them.
    pub fn generate() -> DocId {
        DocId(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// Parses a document as sent by a client. `id` supplies `_id` (which must then agree with the
/// body's, if any); `new_edits` tells whether `_revisions`/`_rev` name the new revision
/// (replication) or its parent. The members not starting with `_` become the [`Body`], as
/// written (see [`super::body`]).
/// Why a document with `_attachments` is refused, on every write path (`/data` PUT, POST and
/// `_bulk_docs` with `new_edits` true or false, documents received from a sharing peer, an
/// import): 400 `bad_request` with this reason.
pub const ATTACHMENTS_REFUSED: &str =
    "_attachments are not supported: keep file content in io.cozy.files, through /files";

pub fn parse_doc(raw: &RawValue, id: Option<DocId>, new_edits: bool) -> Result<DocWrite, String> {
    parse(raw, id, new_edits, false)
}

/// [`parse_doc`] for a document a client creates (`POST`, `_bulk_docs`): without `_id`, it
/// gets a fresh one.
pub fn parse_new_doc(raw: &RawValue, new_edits: bool) -> Result<DocWrite, String> {
    parse(raw, None, new_edits, true)
}

fn parse(raw: &RawValue, id: Option<DocId>, new_edits: bool, generate: bool) -> Result<DocWrite, String> {
    let members = Members::of(raw.get()).ok_or_else(|| "document must be a JSON object".to_string())?;
    members.check_depth()?;
    let mut body = Vec::new();
    let from_url = id.is_some();
    let mut doc_id = id;
    let mut seen_id = false;
    let mut rev = None;
    let mut revisions = None;
    let mut deleted = false;
    for m in members.iter() {
        let key = m.key();
        if !key.starts_with('_') {
            body.push(m);
            continue;
        }
        let value = || serde_json::from_str::<Value>(m.value).map_err(|e| format!("invalid {key}: {e}"));
        match key.as_ref() {
            "_id" => {
                let Value::String(s) = value()? else {
                    return Err("_id must be a string".into());
                };
                let parsed = DocId::parse(&s)?;
                match &doc_id {
                    Some(given) if *given != parsed && seen_id => {
                        return Err("the document has _id more than once, with different values".into())
                    }
                    Some(given) if *given != parsed && from_url => {
                        return Err("_id in the body does not match the document id in the URL".into())
                    }
                    _ => doc_id = Some(parsed),
                }
                seen_id = true;
            }
            "_rev" => match value()? {
                Value::String(s) => rev = Some(s.parse::<Rev>().map_err(|e| e.to_string())?),
                Value::Null => {}
                _ => return Err("invalid rev format".into()),
            },
            "_revisions" => {
                // A `start` too large for u64 (or written as a float) is still a generation
                // above the limit, and is told so rather than as a shape error.
                if value()?.get("start").and_then(Value::as_f64).is_some_and(|s| s > MAX_POS as f64) {
                    return Err(format!("invalid _revisions: {}", RevError::GenerationLimit));
                }
                let r: Revisions =
                    serde_json::from_str(m.value).map_err(|_| "_revisions must be {start, ids}".to_string())?;
                revisions = Some(r.to_revs().map_err(|e| format!("invalid _revisions: {e}"))?);
            }
            "_deleted" => match value()? {
                Value::Bool(b) => deleted = b,
                Value::Null => {}
                _ => return Err("_deleted must be a boolean".into()),
            },
            // Accepted on input and ignored, as CouchDB does.
            "_revs_info" | "_conflicts" | "_deleted_conflicts" | "_local_seq" => {}
            // For now: a later step may keep them in the files' content store.
            "_attachments" => return Err(ATTACHMENTS_REFUSED.into()),
            other => return Err(format!("bad special document member: {other}")),
        }
    }
    let id = match doc_id {
        Some(id) => id,
        None if generate => DocId::generate(),
        None => return Err("document id missing".into()),
    };
    if !new_edits {
        // The replicated revision is the head of `_revisions` when given, `_rev` otherwise.
        if revisions.is_none() {
            let Some(r) = rev.clone() else {
                return Err("when new_edits is false, the document needs _rev or _revisions".into());
            };
            revisions = Some(vec![r]);
        }
        rev = revisions.as_ref().and_then(|r| r.first().cloned());
    }
    Ok(DocWrite { id, rev, revisions, deleted, body: Body::from_members(body) })
}

/// The JSON a client sees for one revision: `_id`, `_rev`, the body as written, then
/// `_deleted` and `_revisions` when they apply (CouchDB's order).
pub fn render(doc: &DocRev) -> Result<Box<RawValue>, serde_json::Error> {
    render_as(doc, doc.id.as_str(), &[])
}

/// [`render`] under another id (a peer's id space), followed by `extra` members (such as
/// `_conflicts`). The body's text is spliced in, never parsed.
pub fn render_as(doc: &DocRev, id: &str, extra: &[(&str, Value)]) -> Result<Box<RawValue>, serde_json::Error> {
    let mut out: Vec<u8> = Vec::with_capacity(doc.body.as_str().len() + id.len() + 96);
    render_into(&mut out, doc, id, extra)?;
    // Valid JSON pieces make valid JSON; this also checks the stored body once more.
    let text = String::from_utf8(out).map_err(|e| serde::de::Error::custom(e.to_string()))?;
    RawValue::from_string(text)
}

/// [`render_as`] appended to `out`, unchecked: for answers written as they are read, whose
/// bodies were checked when read from the store (`Body` is valid JSON by construction).
pub fn render_into(
    out: &mut Vec<u8>,
    doc: &DocRev,
    id: &str,
    extra: &[(&str, Value)],
) -> Result<(), serde_json::Error> {
    let body = doc.body.as_str();
    out.extend_from_slice(b"{\"_id\":");
    serde_json::to_writer(&mut *out, id)?;
    out.extend_from_slice(b",\"_rev\":\"");
    out.extend_from_slice(doc.rev.to_string().as_bytes());
    out.push(b'"');
    if !doc.body.is_empty() {
        out.push(b',');
        // The body's members, without its braces.
        out.extend_from_slice(&body.as_bytes()[1..body.len() - 1]);
    }
    if doc.deleted {
        out.extend_from_slice(b",\"_deleted\":true");
    }
    if let Some(revs) = &doc.revisions {
        out.extend_from_slice(b",\"_revisions\":");
        serde_json::to_writer(&mut *out, &Revisions::from_revs(revs))?;
    }
    for (k, v) in extra {
        out.push(b',');
        serde_json::to_writer(&mut *out, k)?;
        out.push(b':');
        serde_json::to_writer(&mut *out, v)?;
    }
    out.push(b'}');
    Ok(())
}

/// The size [`max_document_size`](crate::config::Config::max_document_size) is compared with:
/// the bytes of a document's body as stored, its members not starting with `_`, without
/// insignificant whitespace (CouchDB measures its encoding of the body without the `_`
/// members). `None` when `raw` is not an object.
pub fn body_size(raw: &RawValue) -> Option<usize> {
    let members = Members::of(raw.get())?;
    let sizes: Vec<usize> =
        members.iter().filter(|m| !m.key().starts_with('_')).map(|m| m.raw_key_len() + 1 + m.value.len()).collect();
    // Braces, and commas between members.
    Some(2 + sizes.iter().sum::<usize>() + sizes.len().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn doctypes_are_validated() {
        assert!(Doctype::parse("io.cozy.notes").is_ok());
        for bad in ["", "IO.cozy", "1abc", "a/b", "a b", "_users", &"a".repeat(129)] {
            assert!(Doctype::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reserved_ids_are_refused() {
        for bad in ["", "_design/x", "_local/x", "_foo", "a\nb"] {
            assert!(DocId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(DocId::parse("a_b/c d").is_ok());
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    fn parse(v: Value, id: Option<DocId>, new_edits: bool) -> Result<DocWrite, String> {
        parse_doc(&serde_json::value::to_raw_value(&v).unwrap(), id, new_edits)
    }

    #[test]
    fn parses_an_interactive_edit() {
        let w = parse(json!({"_id": "a", "_rev": "1-x", "title": "t", "_conflicts": []}), None, true).unwrap();
        assert_eq!(w.id.as_str(), "a");
        assert_eq!(w.rev, Some(Rev::new(1, "x")));
        assert_eq!(w.body.as_str(), r#"{"title":"t"}"#);
        assert!(!w.deleted);
    }

    #[test]
    fn the_body_is_kept_as_written_and_rendered_back_around_it() {
        let text = r#"{ "zeta": 1, "_id": "x", "alpha": {"yak": 2, "bee": 3},
            "big": 123456789012345678901234567890, "neg": -9223372036854775809, "f": 0.1e-7, "\u0041": "\ud83d\ude00" }"#;
        let w = parse_doc(&raw(text), None, true).unwrap();
        let body = r#"{"zeta":1,"alpha":{"yak":2,"bee":3},"big":123456789012345678901234567890,"neg":-9223372036854775809,"f":0.1e-7,"\u0041":"\ud83d\ude00"}"#;
        assert_eq!(w.body.as_str(), body);
        let doc = DocRev {
            id: w.id.clone(),
            rev: Rev::new(2, "b"),
            deleted: true,
            body: w.body.clone(),
            revisions: Some(vec![Rev::new(2, "b"), Rev::new(1, "a")]),
        };
        assert_eq!(
            render(&doc).unwrap().get(),
            format!(
                r#"{{"_id":"x","_rev":"2-b",{},"_deleted":true,"_revisions":{{"start":2,"ids":["b","a"]}}}}"#,
                &body[1..body.len() - 1]
            )
        );
        let empty = DocRev { body: Body::empty(), revisions: None, deleted: false, ..doc };
        let extra = [("_conflicts", json!(["1-c"]))];
        assert_eq!(
            render_as(&empty, "peer\"id", &extra).unwrap().get(),
            r#"{"_id":"peer\"id","_rev":"2-b","_conflicts":["1-c"]}"#
        );
    }

    #[test]
    fn replicated_docs_take_their_revision_from_revisions() {
        let w = parse(
            json!({"_id": "a", "_rev": "1-zzz", "_revisions": {"start": 2, "ids": ["b", "a"]}, "_deleted": true}),
            None,
            false,
        )
        .unwrap();
        assert_eq!(w.rev, Some(Rev::new(2, "b")));
        assert_eq!(w.revisions.unwrap().len(), 2);
        assert!(w.deleted);
        assert!(parse(json!({"_id": "a"}), None, false).is_err());
    }

    #[test]
    fn generations_above_the_limit_are_refused_with_the_limit_named() {
        let too_high = [
            json!({"_id": "a", "_rev": "9007199254740992-a"}),
            json!({"_id": "a", "_rev": "9999999999999999999-a"}),
            json!({"_id": "a", "_revisions": {"start": 9007199254740992u64, "ids": ["a"]}}),
            json!({"_id": "a", "_revisions": {"start": u64::MAX, "ids": ["a"]}}),
            json!({"_id": "a", "_revisions": {"start": 1e30, "ids": ["a"]}}),
        ];
        for doc in too_high {
            for new_edits in [true, false] {
                let err = parse(doc.clone(), None, new_edits).unwrap_err();
                assert!(err.contains("9007199254740991"), "{doc} gave {err:?}");
            }
        }
        let at = parse(json!({"_id": "a", "_rev": "9007199254740991-a"}), None, false).unwrap();
        assert_eq!(at.rev.unwrap().pos, MAX_POS);
    }

    #[test]
    fn bad_members_are_refused() {
        for bad in [
            json!([]),
            json!({"_id": 3}),
            json!({"_id": "a", "_rev": "x"}),
            json!({"_id": "a", "_deleted": "yes"}),
            json!({"_id": "a", "_foo": 1}),
            json!({"_id": "a", "_attachments": {}}),
            json!({"_id": "a", "_revisions": {"start": 1, "ids": []}}),
            json!({"title": "no id"}),
        ] {
            assert!(parse(bad.clone(), None, true).is_err(), "{bad}");
        }
        assert!(parse(json!({"_id": "b"}), Some(DocId::parse("a").unwrap()), true).is_err());
    }
}
