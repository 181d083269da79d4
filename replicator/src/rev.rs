//! Revision ids (`N-hash`), the `_revisions` wire shape, and deterministic new revision ids.
//!
//! A revision id is a generation (`pos`, starting at 1) and an opaque hash, written `pos-hash`
//! (split at the first `-`: the hash may itself contain dashes, as CouchDB allows). Revisions are
//! ordered by generation first, then by the hash's bytes, which is the order CouchDB uses to pick
//! a winner among leaves.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use md5::{Digest, Md5};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Highest generation: the largest 19-digit number, so every revision prints and parses back.
pub const MAX_POS: u64 = 9_999_999_999_999_999_999;

/// Longest hash we accept in a revision id. CouchDB's own are 32 hex digits; peers may use
/// other strings, but nothing legitimate comes near this.
pub const MAX_HASH_LEN: usize = 128;

/// One revision of a document: generation and hash.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rev {
    pub pos: u64,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevError {
    #[error("invalid rev format")]
    Format,
    #[error("revision history is empty or inconsistent")]
    History,
}

impl Rev {
    pub fn new(pos: u64, hash: impl Into<String>) -> Self {
        Rev { pos, hash: hash.into() }
    }
}

impl Ord for Rev {
    fn cmp(&self, other: &Self) -> Ordering {
        self.pos.cmp(&other.pos).then_with(|| self.hash.as_bytes().cmp(other.hash.as_bytes()))
    }
}

impl PartialOrd for Rev {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Rev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.pos, self.hash)
    }
}

/// Checks a hash: printable ASCII without spaces, bounded length. 32-digit hex hashes are
/// normalised to lowercase, as CouchDB re-emits them, so `1-ABC…` and `1-abc…` are one revision.
fn normalise_hash(hash: &str) -> Result<String, RevError> {
    if hash.len() > MAX_HASH_LEN || !hash.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RevError::Format);
    }
    if hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hash.to_ascii_lowercase())
    } else {
        Ok(hash.to_owned())
    }
}

impl FromStr for Rev {
    type Err = RevError;

    /// Parses `pos-hash`; `pos` must be a positive decimal without sign or leading zeros, the
    /// hash non-empty.
    fn from_str(s: &str) -> Result<Self, RevError> {
        let (pos, hash) = s.split_once('-').ok_or(RevError::Format)?;
        if pos.is_empty() || pos.len() > 19 || pos.starts_with('0') || hash.is_empty() {
            return Err(RevError::Format);
        }
        if !pos.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RevError::Format);
        }
        let pos: u64 = pos.parse().map_err(|_| RevError::Format)?;
        Ok(Rev { pos, hash: normalise_hash(hash)? })
    }
}

impl Serialize for Rev {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rev {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The `_revisions` field: `start` is the newest generation, `ids` the hashes newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revisions {
    pub start: u64,
    pub ids: Vec<String>,
}

impl Revisions {
    /// The revisions this history names, newest first. Fails on an empty list, a generation
    /// that would go below 1, or an invalid hash.
    pub fn to_revs(&self) -> Result<Vec<Rev>, RevError> {
        if self.ids.is_empty() || (self.ids.len() as u64) > self.start || self.start > MAX_POS {
            return Err(RevError::History);
        }
        self.ids
            .iter()
            .enumerate()
            .map(|(i, hash)| {
                if hash.is_empty() {
                    return Err(RevError::Format);
                }
                Ok(Rev { pos: self.start - i as u64, hash: normalise_hash(hash)? })
            })
            .collect()
    }

    /// Builds the field from revisions newest first (each one generation below the previous).
    pub fn from_revs(revs: &[Rev]) -> Self {
        Revisions { start: revs.first().map_or(0, |r| r.pos), ids: revs.iter().map(|r| r.hash.clone()).collect() }
    }
}

/// The id of the revision that an interactive edit creates: md5 of the parent revision, the
/// deleted flag and the body, so the same edit of the same parent gives the same revision on
/// every instance (no spurious conflict when two peers make it).
///
/// `body` is the body's JSON text as written, without any `_` member and without whitespace
/// outside strings (hearth's `store::Body`). Key order and the exact spelling of numbers and
/// strings enter the hash: `{"a":1,"b":2}` and `{"b":2,"a":1}` are two different edits, as in
/// CouchDB, whose revision ids are an md5 of the body as it serialises it (keeping key order).
pub fn new_rev(parent: Option<&Rev>, deleted: bool, body: &[u8]) -> Rev {
    let mut md5 = Md5::new();
    md5.update(b"hearth-rev-v1\0");
    match parent {
        Some(p) => {
            md5.update(p.pos.to_string().as_bytes());
            md5.update(b"-");
            md5.update(p.hash.as_bytes());
        }
        None => md5.update(b"0"),
    }
    md5.update(if deleted { b"\0d\0" } else { b"\0l\0" });
    md5.update(body);
    Rev { pos: parent.map_or(1, |p| p.pos + 1), hash: hex::encode(md5.finalize()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_rev_ids() {
        let r: Rev = "12-abc-def".parse().unwrap();
        assert_eq!(r, Rev::new(12, "abc-def"));
        assert_eq!(r.to_string(), "12-abc-def");
    }

    #[test]
    fn rejects_malformed_rev_ids() {
        for bad in ["", "1", "-a", "0-a", "01-a", "1-", "a-b", "+1-a", "1 -a", "1-a b", "99999999999999999999-a"] {
            assert!(bad.parse::<Rev>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn hex_hashes_are_lowercased() {
        let r: Rev = "3-ABCDEF0123456789ABCDEF0123456789".parse().unwrap();
        assert_eq!(r.hash, "abcdef0123456789abcdef0123456789");
        let other: Rev = "3-ABC".parse().unwrap();
        assert_eq!(other.hash, "ABC");
    }

    #[test]
    fn generation_orders_before_hash() {
        let a: Rev = "10-a".parse().unwrap();
        let z: Rev = "9-z".parse().unwrap();
        assert!(a > z);
        assert!(Rev::new(2, "a") > Rev::new(2, "B"));
    }

    #[test]
    fn revisions_round_trip() {
        let revs = vec![Rev::new(3, "c"), Rev::new(2, "b"), Rev::new(1, "a")];
        let r = Revisions::from_revs(&revs);
        assert_eq!(r.start, 3);
        assert_eq!(r.to_revs().unwrap(), revs);
        let huge = Revisions { start: u64::MAX, ids: vec!["a".into()] };
        assert!(huge.to_revs().is_err(), "generations must print and parse back");
        let max = Revisions { start: MAX_POS, ids: vec!["a".into()] };
        assert_eq!(max.to_revs().unwrap()[0].to_string().parse::<Rev>().unwrap().pos, MAX_POS);
        let too_long = Revisions { start: 1, ids: vec!["b".into(), "a".into()] };
        assert!(too_long.to_revs().is_err());
        let empty = Revisions { start: 1, ids: vec![] };
        assert!(empty.to_revs().is_err());
    }

    #[test]
    fn new_revs_are_deterministic_and_depend_on_every_input() {
        let parent = Rev::new(1, "a");
        let body = br#"{"title":"hi"}"#;
        let r1 = new_rev(Some(&parent), false, body);
        assert_eq!(r1, new_rev(Some(&parent), false, body));
        assert_eq!(r1.pos, 2);
        assert_eq!(r1.hash.len(), 32);
        assert_ne!(r1, new_rev(Some(&parent), true, body));
        assert_ne!(r1, new_rev(Some(&Rev::new(1, "b")), false, body));
        assert_ne!(r1, new_rev(Some(&parent), false, br#"{"title":"ho"}"#));
        assert_eq!(new_rev(None, false, body).pos, 1);
    }
}
