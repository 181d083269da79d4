//! Names: an instance's database names (prefix, domain and doctype mapped to the characters
//! CouchDB accepts, reversibly) and the keys of hearth's own documents in the meta database
//! (`b/` sequence batches, `g/` edit guards, `l/` `_local` names, `t/`, `u/` and `s/` sharing
//! tracking). See "Layout" in the module documentation.

use serde_json::Value;

use super::*;

/// CouchDB's limit on database names.
const MAX_DB_NAME: usize = 238;

/// Maps a domain into database-name characters: `.` → `-`, `-` → `$`, `:` → `_`.
pub(super) fn map_domain(domain: &str) -> String {
    let mapped: String = domain
        .chars()
        .map(|c| match c {
            '.' => '-',
            '-' => '$',
            ':' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    if mapped.len() > 120 {
        use sha2::Digest;
        format!("${}", &hex::encode(sha2::Sha256::digest(domain.as_bytes()))[..32])
    } else {
        mapped
    }
}

/// Maps a doctype into database-name characters: `.` → `-`, `-` → `$`.
pub(super) fn map_doctype(doctype: &Doctype) -> String {
    doctype
        .as_str()
        .chars()
        .map(|c| match c {
            '.' => '-',
            '-' => '$',
            c => c,
        })
        .collect()
}

/// The inverse of [`map_doctype`], `None` for names that are not a doctype's.
pub(super) fn unmap_doctype(mapped: &str) -> Option<Doctype> {
    let s: String = mapped
        .chars()
        .map(|c| match c {
            '-' => '.',
            '$' => '-',
            c => c,
        })
        .collect();
    let dt = Doctype::parse(&s).ok()?;
    (map_doctype(&dt) == mapped).then_some(dt)
}

pub(super) fn valid_db_name(name: &str) -> bool {
    name.len() <= MAX_DB_NAME
        && name.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_$()+/-".contains(&b))
}

pub(super) fn batch_key(doctype: &Doctype, first: u64) -> String {
    format!("b/{}/{first:020}", doctype.as_str())
}

pub(super) fn guard_key(doctype: &Doctype, id: &DocId) -> String {
    format!("g/{}/{}", doctype.as_str(), id.as_str())
}

pub(super) fn local_marker_prefix(doctype: &Doctype) -> String {
    format!("l/{}/", doctype.as_str())
}

pub(super) fn track_key(sharing: &str, doctype: &str, id: &str) -> String {
    format!("t/{sharing}/{doctype}/{id}")
}

/// Created when a sharing's initial set is taken (see `Store::track_existing`).
pub(super) fn start_key(sharing: &str) -> String {
    format!("s/{sharing}")
}

pub(super) fn share_batch_key(sharing: &str, first: u64) -> String {
    format!("u/{sharing}/{first:020}")
}

pub(super) fn json_key(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(s: &str) -> Doctype {
        Doctype::parse(s).unwrap()
    }

    #[test]
    fn names_are_valid_and_reversible() {
        for (domain, doctype, name) in [
            ("alice.localhost:8080", "io.cozy.notes", "hearth+alice-localhost_8080+io-cozy-notes"),
            ("my-host.example.net", "io.cozy.bank-accounts", "hearth+my$host-example-net+io-cozy-bank$accounts"),
            ("a.b", "x_y.z", "hearth+a-b+x_y-z"),
        ] {
            let got = format!("hearth+{}+{}", map_domain(domain), map_doctype(&dt(doctype)));
            assert_eq!(got, name);
            assert!(valid_db_name(&got), "{got}");
            assert_eq!(unmap_doctype(&map_doctype(&dt(doctype))), Some(dt(doctype)));
        }
        assert_ne!(map_doctype(&dt("a.b-c")), map_doctype(&dt("a-b.c")));
        assert_ne!(map_domain("a-b.c"), map_domain("a.b-c"));
        assert_eq!(unmap_doctype("$meta"), None);
        let long = format!("{}.example.net", "a".repeat(200));
        let name = format!("hearth+{}+{}", map_domain(&long), map_doctype(&dt(&"x".repeat(128))));
        assert!(valid_db_name(&name), "{} chars", name.len());
    }

    #[test]
    fn batch_keys_sort_numerically() {
        let t = dt("io.cozy.notes");
        assert!(batch_key(&t, 9) < batch_key(&t, 10));
        assert!(batch_key(&t, 0) < batch_key(&t, 1) && batch_key(&t, u64::MAX) > batch_key(&t, 1 << 40));
    }
}
