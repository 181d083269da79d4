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

/// Highest generation a revision may have: 2^53 - 1 (`Number.MAX_SAFE_INTEGER`).
///
/// Every peer must represent a generation exactly, and PouchDB (JavaScript) parses `_rev`'s
/// generation and `_revisions.start` into a double, where integers above 2^53 - 1 silently
/// round to a neighbour: a PouchDB peer would store and send back another revision than the one
/// it acknowledged. CouchDB (Erlang integers) has no limit; no real document is edited 2^53
/// times, so generations above this are refused on the way in ([`Rev::from_str`],
/// [`Revisions::to_revs`]) and an edit that would go past it is refused by [`new_rev`]. With
/// every generation at most this, `pos + 1` can never overflow.
pub const MAX_POS: u64 = (1 << 53) - 1;

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
    /// A generation above [`MAX_POS`], given or about to be created by an edit.
    #[error("revision generation above the limit of 9007199254740991 (2^53 - 1, the largest that every peer, PouchDB included, represents exactly)")]
    GenerationLimit,
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

    /// Parses `pos-hash`; `pos` must be a positive decimal without sign or leading zeros, at
    /// most [`MAX_POS`] ([`RevError::GenerationLimit`] above it), the hash non-empty.
    fn from_str(s: &str) -> Result<Self, RevError> {
        let (pos, hash) = s.split_once('-').ok_or(RevError::Format)?;
        if pos.is_empty() || pos.starts_with('0') || hash.is_empty() {
            return Err(RevError::Format);
        }
        if !pos.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RevError::Format);
        }
        // Any longer run of digits is a number above the limit (and above u64).
        let pos: u64 = pos.parse().map_err(|_| RevError::GenerationLimit)?;
        if pos > MAX_POS {
            return Err(RevError::GenerationLimit);
        }
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
    /// that would go below 1 or above [`MAX_POS`], or an invalid hash.
    pub fn to_revs(&self) -> Result<Vec<Rev>, RevError> {
        if self.start > MAX_POS {
            return Err(RevError::GenerationLimit);
        }
        if self.ids.is_empty() || (self.ids.len() as u64) > self.start {
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
///
/// Fails with [`RevError::GenerationLimit`] when the parent is already at [`MAX_POS`]: the
/// edit must be refused, since a revision above the limit could not be stored or sent.
pub fn new_rev(parent: Option<&Rev>, deleted: bool, body: &[u8]) -> Result<Rev, RevError> {
    let pos = match parent {
        None => 1,
        Some(p) => p.pos.checked_add(1).filter(|&pos| pos <= MAX_POS).ok_or(RevError::GenerationLimit)?,
    };
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
    Ok(Rev { pos, hash: hex::encode(md5.finalize()) })
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
        for bad in ["", "1", "-a", "0-a", "01-a", "1-", "a-b", "+1-a", "1 -a", "1-a b"] {
            assert_eq!(bad.parse::<Rev>(), Err(RevError::Format), "{bad:?} should be refused");
        }
    }

    #[test]
    fn generations_above_the_javascript_safe_limit_are_refused() {
        assert_eq!(MAX_POS, 9_007_199_254_740_991);
        assert_eq!("9007199254740991-a".parse::<Rev>().unwrap().pos, MAX_POS);
        for bad in
            ["9007199254740992-a", "9999999999999999999-a", "18446744073709551615-a", "99999999999999999999999-a"]
        {
            assert_eq!(bad.parse::<Rev>(), Err(RevError::GenerationLimit), "{bad:?} should be refused");
        }
        let over = Revisions { start: MAX_POS + 1, ids: vec!["a".into()] };
        assert_eq!(over.to_revs(), Err(RevError::GenerationLimit));
    }

    #[test]
    fn an_edit_past_the_limit_is_refused_and_one_up_to_it_is_made() {
        let below = Rev::new(MAX_POS - 1, "a");
        assert_eq!(new_rev(Some(&below), false, b"{}").unwrap().pos, MAX_POS);
        let at = Rev::new(MAX_POS, "a");
        assert_eq!(new_rev(Some(&at), false, b"{}"), Err(RevError::GenerationLimit));
        let beyond = Rev::new(u64::MAX, "a");
        assert_eq!(new_rev(Some(&beyond), true, b"{}"), Err(RevError::GenerationLimit));
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
        assert_eq!(huge.to_revs(), Err(RevError::GenerationLimit));
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
        let new = |p: Option<&Rev>, d: bool, b: &[u8]| new_rev(p, d, b).unwrap();
        let r1 = new(Some(&parent), false, body);
        assert_eq!(r1, new(Some(&parent), false, body));
        assert_eq!(r1.pos, 2);
        assert_eq!(r1.hash.len(), 32);
        assert_ne!(r1, new(Some(&parent), true, body));
        assert_ne!(r1, new(Some(&Rev::new(1, "b")), false, body));
        assert_ne!(r1, new(Some(&parent), false, br#"{"title":"ho"}"#));
        assert_eq!(new(None, false, body).pos, 1);
    }
}
