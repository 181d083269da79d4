//! The `io.cozy.files` document, as in Cozy (`cozy-doctypes` `io.cozy.files`): what its
//! members mean, how names are checked, and the JSON:API view `/files` answers.
//!
//! Stored members, both kinds: `type` (`"directory"` | `"file"`), `name`, `dir_id` (the parent;
//! absent on the root), `created_at`, `updated_at` (RFC 3339), `tags` (strings), optional
//! `metadata` (any object, kept as written), `trashed` (true on the item that was put in the
//! trash) and `restore_path` (the path of its parent then). Directories add `path` (as of the
//! directory's own last write: `/files` answers the path derived from the tree, which is right
//! after an ancestor moved or for a document received by replication). Files add `size` (a
//! decimal string, as Cozy stores it, so no JavaScript peer rounds it), `md5sum` (base64 of
//! the MD5 of the content, RFC 1864's `Content-MD5` form), `mime`, `class`, `executable`, and
//! `internal_vfs_id`: which content version holds the bytes (hearth's own; Cozy's Swift layout
//! has the same member).

use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::store::Body;

/// Longest name, in bytes (UTF-8), as most filesystems allow.
pub const MAX_NAME_BYTES: usize = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Directory = 0,
    File = 1,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Directory => "directory",
            Kind::File => "file",
        }
    }
}

/// What the tree index keeps of a document (see `index`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub dir_id: Option<String>,
    pub name: String,
    pub kind: Kind,
    pub size: u64,
    pub vfs_id: Option<String>,
    pub trashed: bool,
}

/// The node a document describes; `None` for a document that is not a file or a directory
/// (no `type`, or another value), which the tree then ignores.
pub fn node_of(id: &str, body: &Body) -> Option<Node> {
    let kind = match body.get("type")?.as_str()? {
        "directory" => Kind::Directory,
        "file" => Kind::File,
        _ => return None,
    };
    let dir_id = match body.get("dir_id") {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    };
    // The root is the one node without a parent; anything else without one is detached.
    let dir_id = if id == super::ROOT_ID { None } else { Some(dir_id.unwrap_or_default()) };
    let name = body.get("name").and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    Some(Node {
        dir_id,
        name,
        kind,
        size: if kind == Kind::File { size_of(body) } else { 0 },
        vfs_id: body.get("internal_vfs_id").and_then(|v| v.as_str().map(str::to_owned)),
        trashed: body.get("trashed").and_then(|v| v.as_bool()).unwrap_or(false),
    })
}

/// A file's `size`: a decimal string (Cozy's form) or a number.
pub fn size_of(body: &Body) -> u64 {
    match body.get("size") {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

/// What two names of one directory are compared by: their Unicode NFC form (canonical
/// composition, UAX #15). A name typed on macOS arrives decomposed (NFD: `e` + U+0301) where
/// other systems send `é` precomposed; both name the same file for a person, and Cozy's clients
/// treat them so. Case is kept apart (`a` and `A` are two names, as in Cozy). The name stored
/// is always the one written.
pub fn name_key(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    name.nfc().collect()
}

/// Checks a file or directory name: not empty, not blank (made only of characters that draw
/// nothing, see [`renders_blank`]), not `.` or `..`, no `/`, no NUL or
/// other control character, no character that hides or reorders the text shown (bidi
/// embeddings, overrides and isolates U+202A–U+202E and U+2066–U+2069, the invisible U+FEFF:
/// `a\u{202E}txt.exe` displays as "aexe.txt", nextcloud/server#10030), at most
/// [`MAX_NAME_BYTES`] bytes. The reason is the 400 answer.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.trim().is_empty() {
        return Err("a name cannot be only white space".into());
    }
    // A name made only of characters that draw nothing is as blank as one of spaces.
    if name.chars().all(renders_blank) {
        return Err("a name needs a visible character (this one has only invisible or blank ones)".into());
    }
    if name.chars().any(|c| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')) {
        return Err("a name cannot contain bidirectional-override or invisible characters".into());
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid name"));
    }
    if name.contains('/') {
        return Err("a name cannot contain '/'".into());
    }
    if name.chars().any(char::is_control) {
        return Err("a name cannot contain NUL or other control characters".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("a name is at most {MAX_NAME_BYTES} bytes long (this one is {})", name.len()));
    }
    Ok(())
}

/// Whether a character draws nothing where it stands: white space (`White_Space`), a control
/// (`Cc`), a Unicode `Default_Ignorable_Code_Point` (the ranges below, as listed in the Unicode
/// Character Database's DerivedCoreProperties.txt: soft hyphen, zero-width characters, joiners,
/// bidi marks, Hangul fillers, variation selectors, tags, ...), or one of the characters that
/// are not ignorable but are drawn as an empty cell: U+2800 BRAILLE PATTERN BLANK, U+3000
/// IDEOGRAPHIC SPACE (also white space), U+2000–U+200A and U+205F spaces (white space too).
/// A name made only of such characters is refused by [`check_name`]; a name with at least one
/// other character may contain them.
pub fn renders_blank(c: char) -> bool {
    c.is_whitespace() || c.is_control() || is_default_ignorable(c) || matches!(c, '\u{2800}' | '\u{3000}')
}

/// Unicode `Default_Ignorable_Code_Point` (DerivedCoreProperties.txt, Unicode 15.1; the set has
/// been stable since Unicode 6.0 apart from U+180F, added in 14.0).
pub fn is_default_ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// Splits an absolute path (`/a/b`) into checked names; `/` gives none. Refuses relative
/// paths, empty segments (`//`), `.` and `..`.
pub fn split_path(path: &str) -> Result<Vec<&str>, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("a path must start with '/'".into());
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    rest.split('/').map(|seg| check_name(seg).map(|()| seg).map_err(|e| format!("invalid path: {e}"))).collect()
}

/// The MIME type of an upload: the request's `Content-Type` unless absent or generic, else a
/// guess from the name's extension (as Cozy does).
pub fn mime_for(name: &str, content_type: Option<&str>) -> String {
    match content_type.map(|c| c.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()) {
        Some(c) if !c.is_empty() && c != "application/octet-stream" && c.contains('/') && c.len() <= 255 => c,
        _ => mime_guess::from_path(name).first_raw().unwrap_or("application/octet-stream").to_owned(),
    }
}

/// Whether a browser would run content of this MIME type (HTML, XHTML, SVG, XML, scripts):
/// such files are always downloaded as attachments, never shown inline.
pub fn is_active_mime(mime: &str) -> bool {
    let m = mime.to_ascii_lowercase();
    m.starts_with("text/html")
        || m.contains("xml")
        || m.contains("javascript")
        || m.contains("ecmascript")
        || m.starts_with("multipart/")
}

/// Cozy's `class` of a MIME type.
pub fn class_for(mime: &str) -> &'static str {
    let (top, sub) = mime.split_once('/').unwrap_or((mime, ""));
    match top {
        "image" => "image",
        "audio" => "audio",
        "video" => "video",
        "text" => "text",
        _ => match sub {
            "pdf" => "pdf",
            "zip" | "gzip" | "x-tar" | "x-7z-compressed" | "x-rar-compressed" | "x-bzip2" => "zip",
            s if s.contains("spreadsheet") || s.contains("excel") => "spreadsheet",
            s if s.contains("presentation") || s.contains("powerpoint") => "slide",
            s if s.contains("word") || s.contains("opendocument.text") => "text",
            _ => "files",
        },
    }
}

fn raw(v: &Value) -> Box<RawValue> {
    RawValue::from_string(v.to_string()).unwrap_or_else(|_| unreachable!("a Value serialises to JSON"))
}

/// Sets member `key` of `body` to `v`.
pub fn set(body: &mut Body, key: &str, v: Value) {
    body.set(key, &raw(&v));
}

/// Removes member `key` of `body`.
pub fn remove(body: &mut Body, key: &str) {
    let members = body.members();
    *body = Body::from_members(members.iter().filter(|m| m.key() != key));
}

/// The JSON:API resource of a document, in Cozy's shape: `attributes` are the stored members
/// as written (key order, numbers of any size), except `path` and `trashed` (derived from the
/// tree), `size` (a decimal string, as Cozy's API answers it: its `FileDoc` marshals the size
/// with `json:"size,string"`, for JavaScript clients and sizes past 2^53) and
/// `internal_vfs_id` (left out). Raw
/// JSON, so nothing a client wrote is re-encoded on the way out.
pub fn resource(id: &str, rev: &str, body: &Body, path: Option<&str>, trashed: bool) -> Box<RawValue> {
    #[derive(serde::Serialize)]
    struct Resource<'a> {
        r#type: &'a str,
        id: &'a str,
        meta: Value,
        attributes: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        relationships: Option<Value>,
        links: Value,
    }
    let kind = body.get("type").and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    let members = body.members();
    let mut attrs = Body::from_members(
        members.iter().filter(|m| !matches!(&*m.key(), "internal_vfs_id" | "path" | "trashed" | "size")),
    );
    set(&mut attrs, "trashed", json!(trashed));
    if kind == "directory" {
        set(&mut attrs, "path", path.map_or(Value::Null, |p| json!(p)));
    } else {
        set(&mut attrs, "size", json!(size_of(body).to_string()));
    }
    let attributes = raw_text(attrs.as_str());
    let relationships = body.get("dir_id").and_then(|v| v.as_str().map(str::to_owned)).map(|dir| {
        json!({"parent": {
            "links": {"related": format!("/files/{}", super::encode_id(&dir))},
            "data": {"type": super::DOCTYPE, "id": dir},
        }})
    });
    let r = Resource {
        r#type: super::DOCTYPE,
        id,
        meta: json!({"rev": rev}),
        attributes: &attributes,
        relationships,
        links: json!({"self": format!("/files/{}", super::encode_id(id))}),
    };
    raw_text(&serde_json::to_string(&r).unwrap_or_else(|_| "null".into()))
}

/// JSON text known to be valid (a stored body, or what serde_json wrote) as a raw value.
pub fn raw_text(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).unwrap_or_else(|_| raw(&Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_differ_only_by_normalization_have_one_key() {
        assert_eq!(name_key("cafe\u{301}.txt"), name_key("caf\u{e9}.txt"));
        assert_eq!(name_key("\u{212B}"), name_key("\u{C5}"), "the Angstrom sign is the letter");
        assert_ne!(name_key("Cafe"), name_key("cafe"), "case still counts");
        assert_ne!(name_key("ﬁ"), name_key("fi"), "compatibility forms (NFKC) stay apart");
    }

    #[test]
    fn names_are_checked_as_the_issue_asks() {
        for ok in ["a", "été.txt", "a b", ".hidden", "..x", &"x".repeat(255)] {
            assert!(check_name(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", ".", "..", "a/b", "/", "a\0b", "a\nb", "\u{7f}", &"x".repeat(256), &"é".repeat(128)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths_must_be_absolute_and_free_of_dot_segments() {
        assert_eq!(split_path("/").unwrap(), Vec::<&str>::new());
        assert_eq!(split_path("/a/b").unwrap(), vec!["a", "b"]);
        assert_eq!(split_path("/a/b/").unwrap(), vec!["a", "b"]);
        for bad in ["", "a/b", "/a/../b", "/a/./b", "//a", "/a//b", "/..", "/a\0"] {
            assert!(split_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nodes_read_cozy_documents() {
        let b =
            Body::parse(r#"{"type":"file","name":"a.txt","dir_id":"d","size":"12","internal_vfs_id":"v"}"#).unwrap();
        let n = node_of("f", &b).unwrap();
        assert_eq!((n.kind, n.size, n.dir_id.as_deref(), n.vfs_id.as_deref()), (Kind::File, 12, Some("d"), Some("v")));
        assert!(node_of("x", &Body::parse(r#"{"type":"note"}"#).unwrap()).is_none());
        let root = Body::parse(r#"{"type":"directory","path":"/"}"#).unwrap();
        assert_eq!(node_of(super::super::ROOT_ID, &root).unwrap().dir_id, None);
    }

    #[test]
    fn mime_comes_from_the_header_or_the_extension() {
        assert_eq!(mime_for("a.txt", Some("text/markdown; charset=utf-8")), "text/markdown");
        assert_eq!(mime_for("a.png", Some("application/octet-stream")), "image/png");
        assert_eq!(mime_for("a.unknownext", None), "application/octet-stream");
        assert_eq!(class_for("image/png"), "image");
        assert_eq!(class_for("application/pdf"), "pdf");
    }
}
