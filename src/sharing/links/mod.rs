//! Sharing by link (Cozy's `io.cozy.permissions` documents of type `share`): a permission set
//! with named *sharecodes*, an optional expiry and an optional password. A sharecode is a bearer
//! secret giving exactly that set on `/data`.
//!
//! Storage:
//! - each link is a document of `io.cozy.permissions` (hidden from `/data`) holding its rules,
//!   for each code name the SHA-256 of the code (never the code: it is shown once, when issued),
//!   the argon2 hash of the password and the expiry;
//! - a code is found by hash: `io.hearth.sharecodes` holds one small document per issued secret,
//!   whose id is the SHA-256 of the code and whose body points at the link (or, for invitation
//!   links, at the sharing and invitation, see [`super::invitations`]). The pointer is only an
//!   index: a code works while the link document exists, is not expired and still lists that
//!   hash under the code's name, so deleting or patching the link stops a code at once.
//!
//! Preview codes (`share-preview`, one per member of a sharing with a `preview_path`) are not
//! stored at all: `sp_<sharing id>_<mac>`, the mac derived from the instance key and the member's
//! state nonce, like the member's invitation `state`. They give GET on the sharing's documents
//! and stop working when the member is revoked; their first use moves the member to `seen`.

use std::collections::BTreeMap;

use hearth_replicator::rev::Rev;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::model::{is_internal_doctype, now_rfc3339, MemberIndex, SharingId};
use super::{Result, SharingError};
use crate::auth::{random_hex, PermissionSet, Verb};
use crate::instance::Instance;
use crate::store::{json as records, DocId, Doctype, StoreError};

mod preview;

use preview::resolve_preview;
pub use preview::{preview_code, preview_link, preview_page_path};

pub const PERMISSIONS_DOCTYPE: &str = "io.cozy.permissions";
/// Index of issued secrets by hash (sharecodes and invitation codes).
pub const CODES_DOCTYPE: &str = "io.hearth.sharecodes";

/// Type of a link permission made by `POST /permissions`.
pub const KIND_SHARE: &str = "share";
/// Type of a member's preview permission.
pub const KIND_PREVIEW: &str = "share-preview";

const PREVIEW_PREFIX: &str = "sp_";
const MAX_RULES: usize = 50;
const MAX_VALUES: usize = 1000;
const MAX_CODES: usize = 50;

fn permissions_dt() -> Doctype {
    Doctype::parse(PERMISSIONS_DOCTYPE).unwrap_or_else(|_| unreachable!("static doctype"))
}

fn codes_dt() -> Doctype {
    Doctype::parse(CODES_DOCTYPE).unwrap_or_else(|_| unreachable!("static doctype"))
}

fn bad(reason: impl Into<String>) -> SharingError {
    SharingError::BadRequest(reason.into())
}

/// SHA-256 (hex) of a presented secret: what is stored and looked up.
pub fn code_hash(code: &str) -> String {
    hex::encode(Sha256::digest(code.as_bytes()))
}

/// A fresh sharecode: 160 random bits, hex.
pub fn new_code() -> String {
    random_hex(20)
}

/// One rule of a link, in Cozy's shape: `{"type": doctype, "verbs": [...], "values": [...]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkRule {
    #[serde(rename = "type")]
    pub doctype: String,
    /// Empty means every verb (Cozy's `ALL`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verbs: Vec<String>,
    /// Empty means every document of the doctype.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl LinkRule {
    fn to_rule(&self) -> Option<crate::auth::scope::Rule> {
        let verbs = if self.verbs.is_empty() { "ALL".to_owned() } else { self.verbs.join(",") };
        // The verbs go through the scope parser; the values are set directly, since document
        // ids may hold the scope syntax's separators.
        let mut set = PermissionSet::parse(&format!("{}:{verbs}", self.doctype)).ok()?;
        let mut rule = set.rules.pop()?;
        rule.values = self.values.clone();
        Some(rule)
    }

    fn from_input(name: &str, v: &Value) -> Result<LinkRule> {
        let o = v.as_object().ok_or_else(|| bad(format!("permission {name} must be an object")))?;
        let doctype = o
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("permission {name} needs a type (a doctype)")))?;
        Doctype::parse(doctype).map_err(bad)?;
        if is_internal_doctype(doctype) {
            return Err(bad(format!("{doctype} cannot be shared by link")));
        }
        let strings = |k: &str, max: usize| -> Result<Vec<String>> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(items)) if items.len() <= max => items
                    .iter()
                    .map(|i| match i {
                        Value::String(s) if !s.is_empty() && s.len() <= 512 => Ok(s.clone()),
                        _ => Err(bad(format!("permission {name}: {k} must be non-empty strings"))),
                    })
                    .collect(),
                Some(_) => Err(bad(format!("permission {name}: {k} must be an array of at most {max} strings"))),
            }
        };
        let mut verbs = strings("verbs", 6)?;
        for v in &mut verbs {
            *v = v.to_ascii_uppercase();
            if !matches!(v.as_str(), "ALL" | "GET" | "POST" | "PUT" | "PATCH" | "DELETE") {
                return Err(bad(format!("permission {name}: unknown verb {v:?}")));
            }
        }
        if verbs.iter().any(|v| v == "ALL") {
            verbs.clear();
        }
        if doctype == crate::files::DOCTYPE && verbs != ["GET"] {
            return Err(bad(format!("permission {name}: links on {doctype} are read-only: verbs must be [\"GET\"]")));
        }
        verbs.sort();
        verbs.dedup();
        let values = strings("values", MAX_VALUES)?;
        match o.get("selector").and_then(Value::as_str) {
            None | Some("") | Some("id") | Some("_id") => {}
            Some(_) => return Err(bad(format!("permission {name}: only the document id may be used as selector"))),
        }
        Ok(LinkRule { doctype: doctype.to_owned(), verbs, values })
    }
}

/// A stored link permission.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkPermission {
    #[serde(skip)]
    pub id: String,
    #[serde(skip)]
    pub rev: Option<Rev>,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    pub permissions: BTreeMap<String, LinkRule>,
    /// Code name -> SHA-256 of the code.
    #[serde(default)]
    codes: BTreeMap<String, String>,
    /// argon2 hash of the password, when the link has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

fn format_time(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// `now + secs`, RFC 3339.
pub fn in_secs(secs: u64) -> String {
    let secs = i64::try_from(secs).unwrap_or(i64::MAX / 2);
    format_time(time::OffsetDateTime::now_utc().saturating_add(time::Duration::seconds(secs)))
}

/// Whether an RFC 3339 instant is past; an unreadable one counts as past (fail closed).
pub fn is_past(at: &str) -> bool {
    parse_time(at).is_none_or(|t| t <= time::OffsetDateTime::now_utc())
}

/// Parses an RFC 3339 instant from a client (400 otherwise), normalised to UTC.
pub fn parse_instant(s: &str) -> Result<String> {
    parse_time(s)
        .map(|t| format_time(t.to_offset(time::UtcOffset::UTC)))
        .ok_or_else(|| bad("expires_at must be an RFC 3339 date"))
}

/// Cozy's "bigduration" for `ttl`: one or more `<number><unit>`, units `Y` (365 days), `M`
/// (30 days), `W`, `D`, `h`, `m`, `s`; a bare number is seconds.
pub fn parse_ttl(s: &str) -> Result<u64> {
    let err = || bad("ttl must be a duration such as 30s, 15m, 1h, 2D, 1W, 1M or 1Y");
    if s.is_empty() || s.len() > 32 {
        return Err(err());
    }
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| err())?;
        num.clear();
        let unit = match c {
            'Y' | 'y' => 365 * 86_400,
            'M' => 30 * 86_400,
            'W' | 'w' => 7 * 86_400,
            'D' | 'd' => 86_400,
            'h' | 'H' => 3600,
            'm' => 60,
            's' | 'S' => 1,
            _ => return Err(err()),
        };
        total = total.saturating_add(n.saturating_mul(unit));
    }
    if !num.is_empty() {
        return Err(err());
    }
    Ok(total)
}

impl LinkPermission {
    /// The permission set the codes give.
    pub fn set(&self) -> PermissionSet {
        PermissionSet { rules: self.permissions.values().filter_map(LinkRule::to_rule).collect() }
    }

    pub fn expired(&self) -> bool {
        self.expires_at.as_deref().is_some_and(is_past)
    }

    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    pub fn password_hash(&self) -> Option<&str> {
        self.password.as_deref()
    }

    pub fn code_names(&self) -> Vec<&str> {
        self.codes.keys().map(String::as_str).collect()
    }

    /// The JSON:API resource; `issued` (name -> code) only in the answer that creates codes.
    pub fn to_api(&self, issued: Option<&BTreeMap<String, String>>) -> Value {
        let mut attributes = json!({
            "type": self.kind,
            "permissions": self.permissions,
            "code_names": self.code_names(),
            "password": self.has_password(),
            "expires_at": self.expires_at,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        });
        if let Some(src) = &self.source_id {
            attributes["source_id"] = json!(src);
        }
        if let Some(codes) = issued {
            attributes["codes"] = json!(codes);
        }
        json!({
            "type": PERMISSIONS_DOCTYPE,
            "id": self.id,
            "meta": {"rev": self.rev.as_ref().map(ToString::to_string)},
            "attributes": attributes,
            "links": {"self": format!("/permissions/{}", self.id)},
        })
    }
}

/// Cozy's `permissions` map of a permission set (for tokens: `rule0`, `rule1`...).
pub fn set_to_api(set: &PermissionSet) -> Value {
    let mut out = Map::new();
    for (i, r) in set.rules.iter().enumerate() {
        let verbs: Vec<&str> = [
            (Verb::Get, "GET"),
            (Verb::Post, "POST"),
            (Verb::Put, "PUT"),
            (Verb::Patch, "PATCH"),
            (Verb::Delete, "DELETE"),
        ]
        .iter()
        .filter(|(v, _)| r.verbs.contains(*v))
        .map(|(_, n)| *n)
        .collect();
        let verbs = if verbs.len() == 5 { vec!["ALL"] } else { verbs };
        let mut rule = json!({"type": r.doctype.as_str(), "verbs": verbs});
        if !r.values.is_empty() {
            rule["values"] = json!(r.values);
        }
        out.insert(format!("rule{i}"), rule);
    }
    Value::Object(out)
}

/// Where an issued secret points, stored under the hash of the secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CodeRef {
    Link { perm_id: String, name: String },
    Invitation { sharing_id: String, invitation_id: String },
}

/// Records `hash -> target` in the code index.
pub async fn index_code(inst: &Instance, hash: &str, target: &CodeRef) -> Result<(), StoreError> {
    let id = DocId::parse(hash).map_err(StoreError::Corrupt)?;
    let body = match serde_json::to_value(target) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    records::put(inst.store.as_ref(), &codes_dt(), &id, None, body).await?;
    Ok(())
}

/// Where the code with this hash points, if it was ever issued and not unindexed.
pub async fn lookup_code(inst: &Instance, hash: &str) -> Result<Option<CodeRef>, StoreError> {
    let Ok(id) = DocId::parse(hash) else {
        return Ok(None);
    };
    Ok(records::get(inst.store.as_ref(), &codes_dt(), &id)
        .await?
        .and_then(|r| serde_json::from_value(Value::Object(r.body)).ok()))
}

/// Removes index entries (best effort: a stale entry opens nothing, the target is re-checked).
pub async fn unindex_codes(inst: &Instance, hashes: impl IntoIterator<Item = String>) {
    for hash in hashes {
        let Ok(id) = DocId::parse(&hash) else { continue };
        match records::get(inst.store.as_ref(), &codes_dt(), &id).await {
            Ok(Some(rec)) => {
                if let Err(e) = records::delete(inst.store.as_ref(), &codes_dt(), &id, &rec.rev).await {
                    tracing::warn!(instance = %inst.domain, error = %e, "failed to drop a code index entry");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(instance = %inst.domain, error = %e, "failed to read a code index entry"),
        }
    }
}

fn decode(rec: records::Record) -> Result<LinkPermission, StoreError> {
    let mut p: LinkPermission = serde_json::from_value(Value::Object(rec.body))
        .map_err(|e| StoreError::Corrupt(format!("permission {}: {e}", rec.id)))?;
    p.id = rec.id.to_string();
    p.rev = Some(rec.rev);
    Ok(p)
}

fn encode(p: &LinkPermission) -> Result<Map<String, Value>, StoreError> {
    match serde_json::to_value(p) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(StoreError::Internal(anyhow::anyhow!("permission does not serialise to an object"))),
    }
}

pub async fn load_link(inst: &Instance, id: &str) -> Result<Option<LinkPermission>, StoreError> {
    let Ok(did) = DocId::parse(id) else {
        return Ok(None);
    };
    records::get(inst.store.as_ref(), &permissions_dt(), &did).await?.map(decode).transpose()
}

async fn save_link(inst: &Instance, p: &mut LinkPermission) -> Result<(), StoreError> {
    let id = DocId::parse(&p.id).map_err(StoreError::Corrupt)?;
    p.updated_at = now_rfc3339();
    let rev = records::put(inst.store.as_ref(), &permissions_dt(), &id, p.rev.as_ref(), encode(p)?).await?;
    p.rev = Some(rev);
    Ok(())
}

/// Code names from `?codes=a,b` (or a PATCH): non-empty, unique, at most 128 characters.
pub fn parse_code_names(list: &str) -> Result<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    for n in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if n.len() > 128 || n.chars().any(char::is_control) {
            return Err(bad("code names are at most 128 printable characters"));
        }
        if !names.iter().any(|x| x == n) {
            names.push(n.to_owned());
        }
    }
    if names.len() > MAX_CODES {
        return Err(bad(format!("at most {MAX_CODES} codes per link")));
    }
    Ok(names)
}

/// What `POST /permissions` asks for, validated.
pub struct NewLink {
    pub permissions: BTreeMap<String, LinkRule>,
    pub expires_at: Option<String>,
    /// The password to set, in clear (hashed by the caller, off the async workers).
    pub password: Option<String>,
}

/// Reads the JSON:API body of `POST /permissions`.
pub fn parse_new_link(body: &Value) -> Result<NewLink> {
    let data =
        body.get("data").and_then(Value::as_object).ok_or_else(|| bad("the body must be a JSON:API document"))?;
    if data.get("type").and_then(Value::as_str).is_some_and(|t| t != PERMISSIONS_DOCTYPE) {
        return Err(bad("data.type must be io.cozy.permissions"));
    }
    let attrs = data.get("attributes").and_then(Value::as_object).ok_or_else(|| bad("data.attributes missing"))?;
    let perms = attrs
        .get("permissions")
        .and_then(Value::as_object)
        .filter(|p| !p.is_empty() && p.len() <= MAX_RULES)
        .ok_or_else(|| bad(format!("permissions must be an object of 1 to {MAX_RULES} rules")))?;
    let mut permissions = BTreeMap::new();
    for (name, rule) in perms {
        if name.is_empty() || name.len() > 128 {
            return Err(bad("rule names are 1 to 128 characters"));
        }
        permissions.insert(name.clone(), LinkRule::from_input(name, rule)?);
    }
    let expires_at = match attrs.get("expires_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(parse_instant(s)?),
        Some(_) => return Err(bad("expires_at must be an RFC 3339 date")),
    };
    let password = match attrs.get("password") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) if s.len() <= 1024 => Some(s.clone()),
        Some(_) => return Err(bad("password must be a string of at most 1024 characters")),
    };
    Ok(NewLink { permissions, expires_at, password })
}

/// Issues codes for `names` on link `perm_id`: indexes their hashes, returns name -> code and
/// name -> hash.
async fn issue_codes(
    inst: &Instance,
    perm_id: &str,
    names: &[String],
) -> Result<(BTreeMap<String, String>, BTreeMap<String, String>)> {
    let mut issued = BTreeMap::new();
    let mut hashes = BTreeMap::new();
    for name in names {
        let code = new_code();
        let hash = code_hash(&code);
        index_code(inst, &hash, &CodeRef::Link { perm_id: perm_id.to_owned(), name: name.clone() }).await?;
        issued.insert(name.clone(), code);
        hashes.insert(name.clone(), hash);
    }
    Ok((issued, hashes))
}

/// `POST /permissions?codes=&ttl=`: creates a `share` link within the caller's permissions and
/// answers it with its codes (the only time they are shown).
pub async fn create(
    inst: &Instance,
    caller: &PermissionSet,
    new: NewLink,
    password_hash: Option<String>,
    names: &[String],
    ttl_secs: Option<u64>,
) -> Result<(LinkPermission, BTreeMap<String, String>)> {
    let mut p = LinkPermission {
        id: DocId::generate().to_string(),
        rev: None,
        kind: KIND_SHARE.into(),
        source_id: None,
        permissions: new.permissions,
        codes: BTreeMap::new(),
        password: password_hash,
        expires_at: ttl_secs.map(in_secs).or(new.expires_at),
        created_at: now_rfc3339(),
        updated_at: now_rfc3339(),
    };
    let set = p.set();
    if set.rules.len() != p.permissions.len() {
        return Err(bad("invalid permission rule"));
    }
    if !caller.covers(&set) {
        return Err(SharingError::Forbidden("the link's permissions must be within the token's own".into()));
    }
    let (issued, hashes) = issue_codes(inst, &p.id, names).await?;
    p.codes = hashes;
    save_link(inst, &mut p).await?;
    tracing::info!(instance = %inst.domain, permission = %p.id, codes = issued.len(), "link permission created");
    Ok((p, issued))
}

/// A link the caller may manage: it exists, is a `share` link, and the caller's permissions
/// cover its set.
pub async fn managed(inst: &Instance, caller: &PermissionSet, id: &str) -> Result<LinkPermission> {
    let p = load_link(inst, id)
        .await?
        .filter(|p| p.kind == KIND_SHARE)
        .ok_or_else(|| SharingError::NotFound("no such permission".into()))?;
    if !caller.covers(&p.set()) {
        return Err(SharingError::Forbidden("the token does not cover this permission".into()));
    }
    Ok(p)
}

/// What `PATCH /permissions/:id` changes.
#[derive(Default)]
pub struct LinkPatch {
    pub add_codes: Vec<String>,
    pub remove_codes: Vec<String>,
    /// `Some(None)` removes the expiry.
    pub expires_at: Option<Option<String>>,
    /// `Some(None)` removes the password; `Some(Some(hash))` sets it.
    pub password_hash: Option<Option<String>>,
}

/// Reads the attributes of a PATCH body: `remove_codes`, `add_codes`, `expires_at`
/// (`""`/null removes it), `password` (`""`/null removes it; returned in clear for hashing).
pub fn parse_patch(body: &Value) -> Result<(LinkPatch, Option<Option<String>>)> {
    let attrs = body
        .get("data")
        .and_then(|d| d.get("attributes"))
        .and_then(Value::as_object)
        .ok_or_else(|| bad("the body must be a JSON:API document with attributes"))?;
    let names = |k: &str| -> Result<Vec<String>> {
        match attrs.get(k) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => {
                let list: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
                if list.len() != items.len() || list.iter().any(|n| n.contains(',')) {
                    return Err(bad(format!("{k} must be an array of code names")));
                }
                parse_code_names(&list.join(","))
            }
            Some(_) => Err(bad(format!("{k} must be an array of code names"))),
        }
    };
    let mut patch =
        LinkPatch { add_codes: names("add_codes")?, remove_codes: names("remove_codes")?, ..Default::default() };
    if let Some(v) = attrs.get("expires_at") {
        patch.expires_at = Some(match v {
            Value::Null => None,
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => Some(parse_instant(s)?),
            _ => return Err(bad("expires_at must be an RFC 3339 date")),
        });
    }
    let password = match attrs.get("password") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(s)) if s.is_empty() => Some(None),
        Some(Value::String(s)) if s.len() <= 1024 => Some(Some(s.clone())),
        Some(_) => return Err(bad("password must be a string of at most 1024 characters")),
    };
    Ok((patch, password))
}

/// `PATCH /permissions/:id`: adds codes (answered once), removes codes (they stop at once),
/// changes the expiry or the password.
pub async fn patch(
    inst: &Instance,
    caller: &PermissionSet,
    id: &str,
    patch: LinkPatch,
) -> Result<(LinkPermission, BTreeMap<String, String>)> {
    let (issued, hashes) = issue_codes(inst, id, &patch.add_codes).await?;
    for _ in 0..10 {
        let mut p = managed(inst, caller, id).await?;
        let mut dropped = Vec::new();
        for name in &patch.remove_codes {
            if let Some(h) = p.codes.remove(name) {
                dropped.push(h);
            }
        }
        for (name, hash) in &hashes {
            if let Some(old) = p.codes.insert(name.clone(), hash.clone()) {
                dropped.push(old);
            }
        }
        if p.codes.len() > MAX_CODES {
            return Err(bad(format!("at most {MAX_CODES} codes per link")));
        }
        if let Some(e) = &patch.expires_at {
            p.expires_at = e.clone();
        }
        if let Some(pw) = &patch.password_hash {
            p.password = pw.clone();
        }
        match save_link(inst, &mut p).await {
            Ok(()) => {
                unindex_codes(inst, dropped).await;
                tracing::info!(instance = %inst.domain, permission = %p.id, "link permission changed");
                return Ok((p, issued));
            }
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(SharingError::Store(StoreError::Conflict))
}

/// `DELETE /permissions/:id`: every code of the link stops working now.
pub async fn delete(inst: &Instance, caller: &PermissionSet, id: &str) -> Result<()> {
    for _ in 0..10 {
        let p = managed(inst, caller, id).await?;
        let did = DocId::parse(&p.id).map_err(|e| SharingError::Store(StoreError::Corrupt(e)))?;
        let rev = p.rev.clone().ok_or(SharingError::Store(StoreError::Conflict))?;
        match records::delete(inst.store.as_ref(), &permissions_dt(), &did, &rev).await {
            Ok(_) => {
                unindex_codes(inst, p.codes.into_values()).await;
                tracing::info!(instance = %inst.domain, permission = %id, "link permission revoked");
                return Ok(());
            }
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(SharingError::Store(StoreError::Conflict))
}

/// `GET /permissions/doctype/:doctype/shared-by-link`: the `share` links with a rule on
/// `doctype`, by id, after `cursor`; the second value is the next cursor.
pub async fn list_by_doctype(
    inst: &Instance,
    doctype: &str,
    cursor: Option<&str>,
    limit: usize,
) -> Result<(Vec<LinkPermission>, Option<String>)> {
    let mut out = Vec::new();
    for rec in records::list(inst.store.as_ref(), &permissions_dt()).await? {
        if cursor.is_some_and(|c| rec.id.as_str() <= c) {
            continue;
        }
        let p = decode(rec)?;
        if p.kind == KIND_SHARE && p.permissions.values().any(|r| r.doctype == doctype) {
            out.push(p);
            if out.len() > limit {
                break;
            }
        }
    }
    let next = if out.len() > limit {
        out.truncate(limit);
        out.last().map(|p| p.id.clone())
    } else {
        None
    };
    Ok((out, next))
}

/// Every `share` link whose set `caller` covers (for the owner's listings).
pub async fn list_covered(inst: &Instance, caller: &PermissionSet) -> Result<Vec<LinkPermission>> {
    let mut out = Vec::new();
    for rec in records::list(inst.store.as_ref(), &permissions_dt()).await? {
        let p = decode(rec)?;
        if p.kind == KIND_SHARE && caller.covers(&p.set()) {
            out.push(p);
        }
    }
    Ok(out)
}

/// What a valid code gives.
#[derive(Clone, Debug)]
pub struct Grant {
    /// The link permission id (for previews: `share-preview-<sharing id>`).
    pub perm_id: String,
    pub set: PermissionSet,
    /// argon2 hash of the link's password: the request also needs the password cookie.
    pub password_hash: Option<String>,
    /// For previews: the sharing and the member the code belongs to.
    pub member: Option<(SharingId, MemberIndex)>,
    /// The JSON:API view `GET /permissions/self` answers.
    pub view: Value,
}

/// The value of the cookie `POST /auth/share-by-link/password` sets for a link: a MAC of the
/// link id and its password hash (so changing the password logs every browser out).
pub fn password_cookie_value(inst: &Instance, perm_id: &str, password_hash: &str) -> String {
    inst.derive_secret("share-by-link-password", &[perm_id, password_hash])
}

pub fn password_cookie_name(perm_id: &str) -> String {
    format!("hearth_pass_{perm_id}")
}

/// What a presented sharecode gives, or `None` for an unknown, expired or revoked code (the
/// caller answers all three the same way).
pub async fn resolve(inst: &Instance, code: &str) -> Result<Option<Grant>> {
    if code.is_empty() || code.len() > 256 {
        return Ok(None);
    }
    if code.starts_with(PREVIEW_PREFIX) {
        return resolve_preview(inst, code).await;
    }
    let hash = code_hash(code);
    let Some(CodeRef::Link { perm_id, name }) = lookup_code(inst, &hash).await? else {
        return Ok(None);
    };
    let Some(p) = load_link(inst, &perm_id).await? else {
        return Ok(None);
    };
    let listed = p.codes.get(&name).is_some_and(|h| Instance::secrets_match(&hash, h));
    if !listed || p.expired() || p.kind != KIND_SHARE {
        return Ok(None);
    }
    let set = p.set();
    let mut view = p.to_api(None);
    if let Some(a) = view.get_mut("attributes").and_then(Value::as_object_mut) {
        // A code holder sees the set, not the other codes' names.
        a.remove("code_names");
    }
    Ok(Some(Grant { perm_id: p.id.clone(), set, password_hash: p.password.clone(), member: None, view }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_read_cozy_durations() {
        assert_eq!(parse_ttl("30").unwrap(), 30);
        assert_eq!(parse_ttl("1s").unwrap(), 1);
        assert_eq!(parse_ttl("15m").unwrap(), 900);
        assert_eq!(parse_ttl("1h30m").unwrap(), 5400);
        assert_eq!(parse_ttl("2D").unwrap(), 2 * 86_400);
        assert_eq!(parse_ttl("1M").unwrap(), 30 * 86_400);
        assert_eq!(parse_ttl("1Y").unwrap(), 365 * 86_400);
        for bad in ["", "h", "1x", "1h2", "-1s", "1.5h"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn link_rules_are_validated_and_become_permission_sets() {
        let body = json!({"data": {"type": "io.cozy.permissions", "attributes": {"permissions": {
            "notes": {"type": "io.cozy.notes", "verbs": ["GET"], "values": ["a,b", "c d"]},
            "todos": {"type": "io.cozy.todos"},
        }}}});
        let new = parse_new_link(&body).unwrap();
        let p = LinkPermission {
            id: "x".into(),
            rev: None,
            kind: KIND_SHARE.into(),
            source_id: None,
            permissions: new.permissions,
            codes: BTreeMap::new(),
            password: None,
            expires_at: None,
            created_at: now_rfc3339(),
            updated_at: now_rfc3339(),
        };
        let set = p.set();
        let notes = Doctype::parse("io.cozy.notes").unwrap();
        assert!(set.allows(&notes, Verb::Get, Some("a,b")));
        assert!(set.allows(&notes, Verb::Get, Some("c d")));
        assert!(!set.allows(&notes, Verb::Get, Some("a")));
        assert!(!set.allows(&notes, Verb::Put, Some("a,b")));
        assert!(set.allows(&Doctype::parse("io.cozy.todos").unwrap(), Verb::Delete, None));
        for bad in [
            json!({"data": {"attributes": {"permissions": {}}}}),
            json!({"data": {"attributes": {"permissions": {"r": {"type": "io.cozy.sharings"}}}}}),
            json!({"data": {"attributes": {"permissions": {"r": {"type": "io.cozy.notes", "verbs": ["FETCH"]}}}}}),
            json!({"data": {"attributes": {"permissions": {"r": {"type": "io.cozy.notes", "values": [""]}}}}}),
            json!({"data": {"attributes": {"permissions": {"r": {"type": "io.cozy.notes", "selector": "author"}}}}}),
            json!({"data": {"attributes": {"permissions": {"r": {"type": "io.cozy.notes"}}, "expires_at": "tomorrow"}}}),
            json!({"permissions": {"r": {"type": "io.cozy.notes"}}}),
        ] {
            assert!(parse_new_link(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expiry_fails_closed() {
        assert!(is_past("garbage"));
        assert!(is_past("2000-01-01T00:00:00Z"));
        assert!(!is_past(&in_secs(60)));
    }
}
