//! Document bodies exactly as written: the JSON text of the object a client sent, minus its
//! top-level `_` members (`_id`, `_rev`...), with insignificant whitespace removed and nothing
//! else touched. Member order at every depth, numbers of any size or precision, strings and
//! their escapes stay byte for byte what the client wrote, as CouchDB keeps them (it stores
//! the decoded terms, so integers stay exact and key order is kept).
//!
//! Documents travel as this text: parsed once when received (a pass that splits the top-level
//! members and validates, see [`Members`]), stored as is, rendered by splicing the `_` members
//! around it ([`crate::store::doc::render`]), and sent to peers without being parsed again.
//! hearth's own code that needs a field parses on demand ([`Body::get`], [`Body::to_map`]).
//!
//! The text is also what a new revision id is computed from (see `hearth_replicator::rev`):
//! key order and the exact spelling of numbers enter the hash, as they do in CouchDB, whose
//! revision ids are an md5 of the body as it serialises it.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Deepest nesting of arrays and objects accepted in a body, the document's own braces
/// included (serde_json's default recursion limit, which hearth applied when it parsed bodies).
pub const MAX_DEPTH: usize = 128;

/// The JSON text of an object: compact (no whitespace outside strings), valid, and for
/// documents without top-level `_` members. Every constructor checks this; the text is never
/// parsed into numbers, so none is ever rounded.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Body(Box<str>);

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

impl Body {
    /// `{}`.
    pub fn empty() -> Body {
        Body("{}".into())
    }

    /// Serialises a map built by hearth itself (its own records, tests). `_` members are left
    /// out, as in a document body. serde_json maps are sorted by key, so the order is the
    /// keys' order.
    pub fn from_map(map: &Map<String, Value>) -> Body {
        let mut out = String::with_capacity(64);
        out.push('{');
        for (k, v) in map.iter().filter(|(k, _)| !k.starts_with('_')) {
            if out.len() > 1 {
                out.push(',');
            }
            // Serialising a string or a Value into a String cannot fail.
            out.push_str(&serde_json::to_string(k).unwrap_or_default());
            out.push(':');
            out.push_str(&serde_json::to_string(v).unwrap_or_default());
        }
        out.push('}');
        Body(out.into())
    }

    /// Any JSON object text (every member kept): validated, whitespace removed. Used for text
    /// read back from storage and for `_local` documents.
    pub fn parse(json: &str) -> Result<Body, String> {
        serde_json::from_str::<IgnoredAny>(json).map_err(|e| format!("invalid JSON: {e}"))?;
        let members = Members::of(json).ok_or_else(|| "a body must be a JSON object".to_string())?;
        members.check_depth()?;
        Ok(Body::from_members(members.iter()))
    }

    /// Stored bytes (SQLite blobs): UTF-8, then [`Body::parse`].
    pub fn from_stored(bytes: Vec<u8>) -> Result<Body, String> {
        let text = String::from_utf8(bytes).map_err(|_| "a body is not UTF-8".to_string())?;
        if is_compact_object(&text) && serde_json::from_str::<IgnoredAny>(&text).is_ok() {
            // Already in the stored form: keep the allocation.
            return Ok(Body(text.into()));
        }
        Body::parse(&text)
    }

    /// A body made of some members of an object, in the order given.
    pub fn from_members<'m>(members: impl IntoIterator<Item = Member<'m>>) -> Body {
        let mut out = String::from("{");
        for m in members {
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(m.raw_key);
            out.push(':');
            out.push_str(m.value);
        }
        out.push('}');
        Body(out.into())
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the object has no member.
    pub fn is_empty(&self) -> bool {
        &*self.0 == "{}"
    }

    /// The members, as written.
    pub fn members(&self) -> Members<'_> {
        // The text is a compact object by construction: no whitespace to remove.
        let spans = member_spans(self.0.as_bytes()).unwrap_or_default();
        Members { text: Cow::Borrowed(&self.0), spans, depth: 0 }
    }

    /// Parses the whole body (hearth's own records, which hold no big numbers).
    pub fn to_map(&self) -> Result<Map<String, Value>, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// The value at a dotted path (`list.id`), parsed; `None` when a step is missing or not an
    /// object. Only the top-level member on the path is parsed. When a key appears twice, the
    /// last one counts, as in JavaScript.
    pub fn get(&self, path: &str) -> Option<Value> {
        let mut parts = path.split('.');
        let first = parts.next()?;
        let text = &self.0;
        let (_, value) = MemberSpans::new(text.as_bytes())
            .map_while(Result::ok)
            .filter(|(k, _)| unescape_key(&text[k.clone()]) == first)
            .last()?;
        let mut value: Value = serde_json::from_str(&text[value]).ok()?;
        for p in parts {
            value = match value {
                Value::Object(mut m) => m.remove(p)?,
                _ => return None,
            };
        }
        Some(value)
    }

    /// Replaces the value of the top-level member `key` where it stands (every occurrence), or
    /// appends the member when it is absent. The other members stay byte for byte.
    pub fn set(&mut self, key: &str, value: &RawValue) {
        let value = minify(value.get());
        let members = self.members();
        let mut found = false;
        let mut out = String::with_capacity(self.0.len() + value.len());
        out.push('{');
        for m in members.iter() {
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(m.raw_key);
            out.push(':');
            if m.key() == key {
                found = true;
                out.push_str(&value);
            } else {
                out.push_str(m.value);
            }
        }
        if !found {
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(key).unwrap_or_default());
            out.push(':');
            out.push_str(&value);
        }
        out.push('}');
        self.0 = out.into();
    }
}

/// An object split into its top-level members, in order, with insignificant whitespace
/// removed (inside strings nothing changes).
pub struct Members<'a> {
    text: Cow<'a, str>,
    spans: Vec<(Range<usize>, Range<usize>)>,
    /// The deepest nesting of arrays and objects, the object's own braces included.
    depth: usize,
}

/// One member: its key as written (with its quotes and escapes) and its value's text.
#[derive(Clone, Copy, Debug)]
pub struct Member<'m> {
    raw_key: &'m str,
    pub value: &'m str,
}

impl<'m> Member<'m> {
    /// The key, unescaped.
    pub fn key(&self) -> Cow<'m, str> {
        unescape_key(self.raw_key)
    }

    /// The length of the key as written, quotes and escapes included.
    pub fn raw_key_len(&self) -> usize {
        self.raw_key.len()
    }
}

/// A key as written (a JSON string with its quotes), unescaped.
fn unescape_key(raw: &str) -> Cow<'_, str> {
    let inner = &raw[1..raw.len() - 1];
    if inner.contains('\\') {
        // A valid JSON string, so this only fails on an impossible input.
        Cow::Owned(serde_json::from_str(raw).unwrap_or_default())
    } else {
        Cow::Borrowed(inner)
    }
}

impl<'a> Members<'a> {
    /// Splits `json`, which must be valid JSON (the text of a `RawValue`, or checked before);
    /// `None` when it is not an object.
    pub fn of(json: &'a str) -> Option<Members<'a>> {
        let (text, depth) = minify_measure(json);
        let spans = member_spans(text.as_bytes())?;
        Some(Members { text, spans, depth })
    }

    /// Refuses objects nested deeper than [`MAX_DEPTH`]: whatever parses them later (hearth's
    /// own accessors, a peer, a client) need not recurse without bound.
    pub fn check_depth(&self) -> Result<(), String> {
        if self.depth > MAX_DEPTH {
            return Err(format!("JSON nested deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    pub fn iter(&self) -> impl Iterator<Item = Member<'_>> {
        self.spans.iter().map(|(k, v)| Member { raw_key: &self.text[k.clone()], value: &self.text[v.clone()] })
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Whether `text` looks like a compact object (starts with `{`, ends with `}`, no whitespace
/// outside strings). Only a quick check: validity is checked separately.
fn is_compact_object(text: &str) -> bool {
    text.starts_with('{') && text.ends_with('}') && matches!(minify(text), Cow::Borrowed(_))
}

/// Removes whitespace outside strings in one pass over valid JSON. Tokens are copied as they
/// are: numbers, strings and escapes stay byte for byte.
pub fn minify(json: &str) -> Cow<'_, str> {
    minify_measure(json).0
}

/// [`minify`], and the deepest nesting of arrays and objects met on the way.
fn minify_measure(json: &str) -> (Cow<'_, str>, usize) {
    let b = json.as_bytes();
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' {
            // A string is copied whole (an unterminated one runs to the end).
            let end = skip_string(b, i).unwrap_or(b.len());
            if let Some(v) = out.as_mut() {
                v.extend_from_slice(&b[i..end]);
            }
            i = end;
            continue;
        }
        if c == b'{' || c == b'[' {
            depth += 1;
            deepest = deepest.max(depth);
        } else if c == b'}' || c == b']' {
            depth = depth.saturating_sub(1);
        } else if is_space(c) {
            if out.is_none() {
                let mut v = Vec::with_capacity(b.len());
                v.extend_from_slice(&b[..i]);
                out = Some(v);
            }
            i += 1;
            continue;
        }
        if let Some(v) = out.as_mut() {
            v.push(c);
        }
        i += 1;
    }
    let text = match out {
        // Only ASCII whitespace was removed from valid UTF-8.
        Some(v) => Cow::Owned(String::from_utf8(v).unwrap_or_default()),
        None => Cow::Borrowed(json),
    };
    (text, deepest)
}

/// The index just past the string starting at `i` (which holds its opening quote); `None`
/// when it is not terminated. Jumps from one quote or backslash to the next (`memchr`): most
/// of a document's bytes are inside strings.
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let at = j + memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        if b[at] == b'"' {
            return Some(at + 1);
        }
        j = at + 2;
    }
}

/// The index just past the value starting at `i`, in compact valid JSON: the next `,`, `}` or
/// `]` at this depth.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut j = i;
    loop {
        match *b.get(j)? {
            b'"' => {
                j = skip_string(b, j)?;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth == 0 => return Some(j),
            b'}' | b']' => depth -= 1,
            b',' if depth == 0 => return Some(j),
            _ => {}
        }
        j += 1;
    }
}

/// Key and value spans of the top-level members of a compact object; `None` if `b` is not one.
fn member_spans(b: &[u8]) -> Option<Vec<(Range<usize>, Range<usize>)>> {
    MemberSpans::new(b).collect::<Result<_, ()>>().ok()
}

/// The spans of [`member_spans`], one at a time (no allocation); an `Err` ends a text that is
/// not a compact object.
struct MemberSpans<'b> {
    b: &'b [u8],
    /// Where the next member starts; `None` once done.
    next: Option<usize>,
}

impl<'b> MemberSpans<'b> {
    fn new(b: &'b [u8]) -> MemberSpans<'b> {
        MemberSpans { b, next: Some(1) }
    }

    fn member(&mut self, i: usize) -> Option<(Range<usize>, Range<usize>)> {
        let b = self.b;
        if i == 1 && (b.first() != Some(&b'{') || b.last() != Some(&b'}')) {
            return None;
        }
        if i == 1 && b.len() == 2 {
            self.next = None;
            return Some((0..0, 0..0));
        }
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(b, i)?;
        if b.get(key_end) != Some(&b':') {
            return None;
        }
        let value_end = skip_value(b, key_end + 1)?;
        self.next = match b.get(value_end)? {
            b',' => Some(value_end + 1),
            b'}' if value_end == b.len() - 1 => None,
            _ => return None,
        };
        Some((i..key_end, key_end + 1..value_end))
    }
}

impl Iterator for MemberSpans<'_> {
    type Item = Result<(Range<usize>, Range<usize>), ()>;

    fn next(&mut self) -> Option<Self::Item> {
        let i = self.next?;
        match self.member(i) {
            // `{}`: no member.
            Some((k, _)) if k.is_empty() => None,
            Some(span) => Some(Ok(span)),
            None => {
                self.next = None;
                Some(Err(()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUT: &str =
        r#"{"zeta":1,"alpha":{"yak":2,"bee":3},"big":123456789012345678901234567890,"neg":-9223372036854775809}"#;

    #[test]
    fn a_body_keeps_order_and_every_digit() {
        let b = Body::parse(INPUT).unwrap();
        assert_eq!(b.as_str(), INPUT);
        assert_eq!(b.get("alpha.bee"), Some(Value::from(3)));
        assert_eq!(b.get("zeta"), Some(Value::from(1)));
        assert_eq!(b.get("alpha.nope"), None);
        assert_eq!(b.get("zeta.x"), None);
    }

    #[test]
    fn whitespace_goes_but_strings_and_numbers_stay_byte_for_byte() {
        let spaced = "{ \"a b\" : \"x \\\" y\\n\" ,\n\t\"n\":1.50E+3 , \"u\":\"\\u00e9 é\", \"l\": [ 1 , { } ] }";
        let b = Body::parse(spaced).unwrap();
        assert_eq!(b.as_str(), r#"{"a b":"x \" y\n","n":1.50E+3,"u":"\u00e9 é","l":[1,{}]}"#);
        assert!(Body::parse("[1]").is_err());
        assert!(Body::parse("{\"a\":}").is_err());
        assert!(Body::parse("").is_err());
    }

    #[test]
    fn members_split_at_the_top_level_only() {
        let m = Members::of(r#"{"a":{"b":[1,"},"]},"c\"d":null,"\u0065":"x"}"#).unwrap();
        let got: Vec<(String, &str)> = m.iter().map(|m| (m.key().into_owned(), m.value)).collect();
        assert_eq!(got, vec![("a".into(), r#"{"b":[1,"},"]}"#), ("c\"d".into(), "null"), ("e".into(), r#""x""#)]);
        assert_eq!(Members::of("{}").unwrap().iter().count(), 0);
        assert!(Members::of("[]").is_none());
    }

    #[test]
    fn set_replaces_one_member_in_place_or_appends_it() {
        let mut b = Body::parse(INPUT).unwrap();
        b.set("alpha", &RawValue::from_string("[ 1, 2 ]".into()).unwrap());
        assert_eq!(
            b.as_str(),
            r#"{"zeta":1,"alpha":[1,2],"big":123456789012345678901234567890,"neg":-9223372036854775809}"#
        );
        b.set("dir_id", &RawValue::from_string("\"io.cozy.files.root-dir\"".into()).unwrap());
        assert!(b.as_str().ends_with(r#","dir_id":"io.cozy.files.root-dir"}"#), "{b:?}");
        let mut e = Body::empty();
        e.set("a", &RawValue::from_string("1".into()).unwrap());
        assert_eq!(e.as_str(), r#"{"a":1}"#);
    }

    #[test]
    fn stored_text_is_checked() {
        assert_eq!(Body::from_stored(INPUT.as_bytes().to_vec()).unwrap().as_str(), INPUT);
        assert_eq!(Body::from_stored(b"{ \"a\" : 1 }".to_vec()).unwrap().as_str(), r#"{"a":1}"#);
        assert!(Body::from_stored(b"{\"a\":".to_vec()).is_err());
        assert!(Body::from_stored(vec![0xff]).is_err());
    }

    /// The byte-at-a-time scanner `minify_measure` replaced (it now jumps through strings).
    fn minify_bytewise(json: &str) -> (String, usize) {
        let (mut in_string, mut escaped) = (false, false);
        let (mut depth, mut deepest) = (0usize, 0usize);
        let mut out = Vec::new();
        for &c in json.as_bytes() {
            if in_string {
                if escaped {
                    escaped = false;
                } else if c == b'\\' {
                    escaped = true;
                } else if c == b'"' {
                    in_string = false;
                }
            } else if c == b'"' {
                in_string = true;
            } else if c == b'{' || c == b'[' {
                depth += 1;
                deepest = deepest.max(depth);
            } else if c == b'}' || c == b']' {
                depth = depth.saturating_sub(1);
            } else if is_space(c) {
                continue;
            }
            out.push(c);
        }
        (String::from_utf8(out).unwrap(), deepest)
    }

    proptest::proptest! {
        /// Any text, valid JSON or not (unterminated strings, a trailing backslash): the same
        /// output and depth as the byte-at-a-time scan.
        #[test]
        fn minify_agrees_with_a_bytewise_scan(parts in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just("\"".to_string()),
                proptest::strategy::Just("\\".to_string()),
                proptest::strategy::Just(" ".to_string()),
                proptest::strategy::Just("\n\t\r".to_string()),
                proptest::strategy::Just("{".to_string()),
                proptest::strategy::Just("}".to_string()),
                proptest::strategy::Just("[".to_string()),
                proptest::strategy::Just("]".to_string()),
                "[a-zé:,0-9]{0,12}",
            ],
            0..40,
        )) {
            let text = parts.concat();
            let (fast, depth) = minify_measure(&text);
            proptest::prop_assert_eq!((fast.into_owned(), depth), minify_bytewise(&text));
        }
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_refused() {
        let nested = |levels: usize| format!("{{\"a\":{}1{}}}", "[".repeat(levels - 1), "]".repeat(levels - 1));
        assert!(Body::parse(&nested(MAX_DEPTH)).is_ok());
        assert!(Body::parse(&nested(MAX_DEPTH + 1)).unwrap_err().contains("deeper"));
        // Brackets inside strings are text.
        assert!(Body::parse(&format!("{{\"a\":\"{}\"}}", "[".repeat(500))).is_ok());
    }

    #[test]
    fn maps_serialise_without_underscore_members() {
        let m = serde_json::json!({"b": 1, "_id": "x", "a": [true]});
        assert_eq!(Body::from_map(m.as_object().unwrap()).as_str(), r#"{"a":[true],"b":1}"#);
    }
}
