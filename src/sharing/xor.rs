//! Per-member id transformation (the answer to DESIGN.md §4's re-share pitfall, as in Cozy):
//! the owner XORs the hex digits of every document id with a random key of the member when
//! sending to that member, and applies the same XOR (an involution) to what it receives from
//! it. A recipient therefore holds the owner's documents under ids of its own; a new sharing
//! (or a new invitation) gets a new key, so documents shared again arrive as fresh documents
//! instead of colliding with the copies (and tombstones) left by an earlier, revoked sharing.
//! Other characters are kept, so any id works; recipients know nothing of the key. The
//! transformation is only as good as the id has lowercase hex digits: hearth's own ids (and
//! Cozy's) have 32, but an id like `n1` has one, so two keys give the same id one time in
//! sixteen, and such an id may land on a recipient's own document (which is then refused by
//! the safety rules instead of overwritten).

use super::model::{MemberIndex, Sharing};

/// A key: 32 nibbles, from 32 hex digits.
pub fn parse_key(hex: &str) -> Option<Vec<u8>> {
    let key: Option<Vec<u8>> = hex.chars().map(|c| c.to_digit(16).map(|d| d as u8)).collect();
    key.filter(|k| !k.is_empty())
}

/// XORs the lowercase hex digits (`0-9a-f`) of `id` with `key` (cycled by character
/// position). Uppercase letters are left alone: a digit may become a letter, and only
/// lowercase keeps the mapping its own inverse.
pub fn xor_id(id: &str, key: &[u8]) -> String {
    if key.is_empty() {
        return id.to_owned();
    }
    if id.is_ascii() {
        // One byte per character: the same positions, without decoding (hearth's and Cozy's
        // ids are all ASCII; this runs for every id sent to or received from a member).
        let bytes = id.bytes().enumerate().map(|(i, b)| match hex_value(b) {
            // A key byte past 15 (not from `parse_key`) leaves the digit, as `from_digit` does.
            Some(d) => HEX_DIGITS.get(usize::from(d ^ key[i % key.len()])).copied().unwrap_or(b),
            None => b,
        });
        return bytes.map(char::from).collect();
    }
    id.chars()
        .enumerate()
        .map(|(i, c)| match c {
            '0'..='9' | 'a'..='f' => {
                let d = c.to_digit(16).unwrap_or(0) as u8;
                char::from_digit(u32::from(d ^ key[i % key.len()]), 16).unwrap_or(c)
            }
            c => c,
        })
        .collect()
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The value of a lowercase hex digit.
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// The id transformation between this instance and member `from` (only the owner has keys).
pub struct IdMap {
    key: Option<Vec<u8>>,
}

impl IdMap {
    pub fn for_member(s: &Sharing, member: MemberIndex) -> IdMap {
        let key = if s.owner { s.member(member).and_then(|m| m.xor_key.as_deref()).and_then(parse_key) } else { None };
        IdMap { key }
    }

    /// Our id for an id in the peer's space, and back (XOR is its own inverse).
    pub fn convert(&self, id: &str) -> String {
        match &self.key {
            Some(k) => xor_id(id, k),
            None => id.to_owned(),
        }
    }
}

/// Members holding another document's id, per doctype: they go through the same transform
/// as `_id`, so a tree stays a tree on every member (Cozy transforms `dir_id` the same way).
pub const ID_FIELDS: &[(&str, &str)] = &[(super::model::FILES_DOCTYPE, super::model::FILES_PARENT)];

impl IdMap {
    /// Transforms, in place and keeping the other members byte for byte, the [`ID_FIELDS`]
    /// members of a body of `doctype`.
    pub fn convert_fields(&self, doctype: &str, body: &mut crate::store::Body) {
        if self.key.is_none() {
            return;
        }
        for (_, field) in ID_FIELDS.iter().filter(|(d, _)| *d == doctype) {
            if let Some(serde_json::Value::String(id)) = body.get(field) {
                if let Ok(raw) = serde_json::value::to_raw_value(&self.convert(&id)) {
                    body.set(field, &raw);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_is_an_involution_that_keeps_non_hex_characters() {
        let key = parse_key("0123456789abcdef0123456789abcdef").unwrap();
        for id in ["612acf1c-1d72-11e8-b043-ef239d3074dd", "ABCdef-xyz", "note:1", "", "ghij"] {
            let x = xor_id(id, &key);
            assert_eq!(xor_id(&x, &key), id);
            assert_eq!(x.len(), id.len());
            for (a, b) in id.chars().zip(x.chars()) {
                let lower_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
                assert_eq!(lower_hex(a), lower_hex(b));
                if !lower_hex(a) {
                    assert_eq!(a, b);
                }
            }
        }
        assert_ne!(xor_id("612acf1c", &key), "612acf1c");
        let other = parse_key("ffffffffffffffffffffffffffffffff").unwrap();
        assert_ne!(xor_id("612acf1c", &key), xor_id("612acf1c", &other));
        assert!(parse_key("not hex").is_none());
    }

    /// The character-by-character transform, as it was before the ASCII path.
    fn xor_by_chars(id: &str, key: &[u8]) -> String {
        id.chars()
            .enumerate()
            .map(|(i, c)| match c.to_digit(16).filter(|_| !c.is_ascii_uppercase()) {
                Some(d) => char::from_digit(d ^ u32::from(key[i % key.len()]), 16).unwrap_or(c),
                None => c,
            })
            .collect()
    }

    #[test]
    fn ascii_ids_and_other_ids_are_transformed_by_character_position() {
        let key = parse_key("0123456789abcdef0123456789abcdef").unwrap();
        let short = parse_key("f1").unwrap();
        // Bytes past 15 come from no `parse_key`, but the function takes any: both paths agree.
        let wide = vec![0x1f_u8, 3, 200];
        // Non-ASCII characters before hex digits shift byte positions but not character ones.
        for id in ["é0a1", "0a1é", "ü612acf1c-1d72-11e8-b043-ef239d3074dd", "日本0123abc", "a", "0", "-"] {
            for k in [&key, &short, &wide] {
                assert_eq!(xor_id(id, k), xor_by_chars(id, k), "{id}");
            }
        }
        let mut seed = 0x2545f4914f6cdd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet: Vec<char> = "0123456789abcdefABCDEFxyz-_:é".chars().collect();
        for _ in 0..2000 {
            let len = (next() % 40) as usize;
            let id: String = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            assert_eq!(xor_id(&id, &key), xor_by_chars(&id, &key), "{id}");
            assert_eq!(xor_id(&xor_id(&id, &key), &key), id);
        }
    }
}
