//! The sharing model: a sharing, its rules and members, the member state machine, and the
//! credentials each side keeps to talk to the other. Stored as documents of the internal
//! doctype `io.cozy.sharings` (so every storage backend holds them, and export moves them);
//! [`Sharing::to_api`] is the only way out to clients, and it never includes credentials.

pub use crate::federation::client::PeerCredentials;
/// Defined with the store's ids, which the tracking methods of [`crate::store::Store`] take.
pub use crate::store::{MemberIndex, SharingId};

/// The files doctype, whose rules by id share subtrees (see [`Rule::subtree`]).
pub const FILES_DOCTYPE: &str = "io.cozy.files";
/// The member of a file or directory naming its parent directory (Cozy's `dir_id`).
pub const FILES_PARENT: &str = "dir_id";
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::protocol::{ApiMember, RevMeta, SelfLink, SharingAttributes, SharingResource, SHARINGS_TYPE};
use crate::store::Doctype;

/// How changes of one kind flow for a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Flow {
    /// Never propagated.
    #[default]
    None,
    /// From the owner to the recipients only.
    Push,
    /// Both ways.
    Sync,
    /// (`remove` only) deleting a matched document revokes the sharing.
    Revoke,
}

impl Flow {
    fn parse(s: &str, allow_revoke: bool) -> Option<Flow> {
        match s.to_ascii_lowercase().as_str() {
            "" | "none" => Some(Flow::None),
            "push" => Some(Flow::Push),
            "sync" => Some(Flow::Sync),
            "revoke" if allow_revoke => Some(Flow::Revoke),
            _ => None,
        }
    }

    /// Whether a change of this kind may travel from the owner to recipients. (`revoke` does
    /// not travel: the deletion revokes the sharing instead.)
    pub fn owner_to_recipient(self) -> bool {
        matches!(self, Flow::Push | Flow::Sync)
    }

    /// Whether a change of this kind may travel from a recipient to the owner.
    pub fn recipient_to_owner(self) -> bool {
        matches!(self, Flow::Sync)
    }
}

/// Most rules a sharing may have.
pub const MAX_RULES: usize = 20;
/// Most values one rule may list (document ids, or values of its selector).
pub const MAX_VALUES_PER_RULE: usize = 100;
/// Longest value of a rule, in bytes.
pub const MAX_VALUE_BYTES: usize = 256;
/// Longest rule title, in bytes.
pub const MAX_TITLE_BYTES: usize = 256;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub title: String,
    pub doctype: String,
    /// Field path the values are matched against; `_id` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    pub values: Vec<String>,
    /// Rules used for the preview only, never replicated.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local: bool,
    #[serde(default)]
    pub add: Flow,
    #[serde(default)]
    pub update: Flow,
    #[serde(default)]
    pub remove: Flow,
}

/// Doctypes that only hearth itself writes; sharing them or reaching them through `/data` is
/// refused.
pub fn is_internal_doctype(doctype: &str) -> bool {
    matches!(doctype, "io.cozy.sharings" | "io.cozy.oauth.clients" | "io.cozy.permissions" | "io.cozy.shared")
        || doctype.starts_with("io.hearth.")
}

impl Rule {
    /// Builds a rule from a client's JSON, checking every field (400 reasons).
    pub fn from_input(v: &Value) -> Result<Rule, String> {
        let o = v.as_object().ok_or("each rule must be an object")?;
        let text = |k: &str| -> Result<Option<String>, String> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(format!("rule {k} must be a string")),
            }
        };
        let title = text("title")?.unwrap_or_default();
        if title.len() > MAX_TITLE_BYTES || title.chars().any(char::is_control) {
            return Err(format!("a rule title is at most {MAX_TITLE_BYTES} bytes, without control characters"));
        }
        let doctype = text("doctype")?.ok_or("each rule needs a doctype")?;
        Doctype::parse(&doctype)?;
        if is_internal_doctype(&doctype) {
            return Err(format!("{doctype} cannot be shared"));
        }
        let selector = match text("selector")?.as_deref() {
            None | Some("") | Some("id") | Some("_id") => None,
            Some(s) if s.split('.').all(|p| !p.is_empty()) && s.len() <= 128 && !s.starts_with('_') => {
                Some(s.to_owned())
            }
            Some(_) => return Err("invalid rule selector".into()),
        };
        let values = match o.get("values") {
            Some(Value::Array(list)) if list.len() > MAX_VALUES_PER_RULE => {
                return Err(format!("a rule lists at most {MAX_VALUES_PER_RULE} values"))
            }
            Some(Value::Array(list)) if !list.is_empty() => list
                .iter()
                .map(|v| match v {
                    Value::String(s)
                        if !s.is_empty() && s.len() <= MAX_VALUE_BYTES && !s.chars().any(char::is_control) =>
                    {
                        Ok(s.clone())
                    }
                    _ => Err(format!(
                        "rule values must be non-empty strings of at most {MAX_VALUE_BYTES} bytes, without control characters"
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err("each rule needs a non-empty values array".into()),
        };
        // The root holds the trash and "Shared with me": sharing it (or them) would send
        // what the owner threw away and what others shared with them.
        let special = [crate::files::ROOT_ID, crate::files::TRASH_ID, crate::files::SHARED_WITH_ME_ID];
        if doctype == crate::files::DOCTYPE
            && selector.is_none()
            && values.iter().any(|v| special.contains(&v.as_str()))
        {
            return Err(
                "the root, the trash and \"Shared with me\" cannot be shared: share a folder inside them".into()
            );
        }
        let flow = |k: &str, revoke: bool| -> Result<Flow, String> {
            let s = text(k)?.unwrap_or_default();
            Flow::parse(&s, revoke).ok_or_else(|| {
                format!("rule {k} must be one of none, push, sync{}", if revoke { ", revoke" } else { "" })
            })
        };
        let local = match o.get("local") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err("rule local must be a boolean".into()),
        };
        Ok(Rule {
            title,
            doctype,
            selector,
            values,
            local,
            add: flow("add", false)?,
            update: flow("update", false)?,
            remove: flow("remove", true)?,
        })
    }

    /// The rule as the store tracks it on the owner's instance (`owner`) or a recipient's;
    /// `None` for a doctype the store cannot hold (rules are checked when made, so only a
    /// damaged document has one: it tracks nothing).
    pub fn track_rule(
        &self,
        sharing_id: &SharingId,
        rule_index: usize,
        owner: bool,
    ) -> Option<crate::store::TrackRule> {
        Some(crate::store::TrackRule {
            sharing_id: sharing_id.clone(),
            rule_index,
            doctype: Doctype::parse(&self.doctype).ok()?,
            selector: self.selector.clone(),
            values: self.values.clone(),
            joins: self.joins_later(owner),
            parent_field: self.subtree().then(|| FILES_PARENT.to_owned()),
        })
    }

    /// Whether this rule shares subtrees: a rule by id on `io.cozy.files` shares each named
    /// directory with everything under it, at any depth, including what is added or moved in
    /// later (a file named alone is shared alone), as in Cozy.
    pub fn subtree(&self) -> bool {
        self.doctype == FILES_DOCTYPE && self.by_id()
    }

    /// Whether this rule names its documents by id (rather than by a field's value).
    pub fn by_id(&self) -> bool {
        self.selector.is_none()
    }

    /// Whether a document that begins to match after the sharing started enters it on the
    /// owner's instance (`owner`) or a recipient's. As in Cozy, `add` governs exactly these
    /// documents, in the direction they would flow: `push` or `sync` on the owner, `sync` on
    /// a recipient. An id rule names its documents once and for all: on the owner they belong
    /// to the sharing from its start, whenever they are written (none begins to match later).
    pub fn joins_later(&self, owner: bool) -> bool {
        if owner {
            self.by_id() || self.add.owner_to_recipient()
        } else {
            self.add.recipient_to_owner()
        }
    }

    /// Whether a document body (with its id) is selected by this rule.
    pub fn matches(&self, doctype: &str, id: &str, body: &crate::store::Body) -> bool {
        self.track_rule(&crate::store::doc::UNSET_SHARING_ID, 0, true).is_some_and(|r| r.matches(doctype, id, body))
    }

    /// [`Rule::matches`], or (subtree rules) its parent is in the sharing under this rule,
    /// whose index is `index` (`parent`: the rule of the parent's row, see `store::Standing`).
    pub fn matches_in(
        &self,
        index: usize,
        doctype: &str,
        id: &str,
        body: &crate::store::Body,
        parent: Option<usize>,
    ) -> bool {
        self.track_rule(&crate::store::doc::UNSET_SHARING_ID, index, true)
            .is_some_and(|r| r.matches_in(doctype, id, body, parent))
    }

    /// Whether a change may flow in this direction: `deleted` or `leaving` changes follow
    /// `remove`, new documents `add`, others `update`.
    pub fn allows(&self, kind: ChangeKind, to_owner: bool) -> bool {
        let flow = match kind {
            ChangeKind::Add => self.add,
            ChangeKind::Update => self.update,
            ChangeKind::Remove => self.remove,
        };
        if to_owner {
            flow.recipient_to_owner()
        } else {
            flow.owner_to_recipient()
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// What a replicated change does to a document of the sharing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Add,
    Update,
    Remove,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemberStatus {
    Owner,
    MailNotSent,
    Pending,
    Seen,
    Ready,
    Refused,
    Revoked,
}

impl MemberStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Owner => "owner",
            MemberStatus::MailNotSent => "mail-not-sent",
            MemberStatus::Pending => "pending",
            MemberStatus::Seen => "seen",
            MemberStatus::Ready => "ready",
            MemberStatus::Refused => "refused",
            MemberStatus::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<MemberStatus> {
        serde_json::from_value(Value::String(s.to_owned())).ok()
    }

    /// Whether the invitation of a member in this status can still be answered.
    pub fn is_invited(self) -> bool {
        matches!(self, MemberStatus::MailNotSent | MemberStatus::Pending | MemberStatus::Seen)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub status: MemberStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Base URL of the member's instance (`https://bob.example.net`), once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default)]
    pub read_only: bool,
    /// Owner side: random input of this member's invitation `state` (the state itself is
    /// derived with the instance key, so it is never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_nonce: Option<String>,
    /// Owner side: the key of this member's id transformation (see `sharing::xor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xor_key: Option<String>,
    /// Owner side: index of the member who added this one (delegated adds); stored as the bare
    /// number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_by: Option<MemberIndex>,
    /// Owner side: the invitation link this member joined through (see `sharing::invitations`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitation: Option<String>,
    /// Recipient side, on this instance's own member: the `state` its answer carries, as the
    /// owner gave it with the request (see `sharing::request::serve`), so that an app can accept
    /// or refuse without the invitation link. A secret: never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_state: Option<String>,
    /// Our OAuth client standing for this member (its tokens authenticate the member here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_client_id: Option<String>,
    /// What we use to call this member (owner side) or the owner (recipient side, on member 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<PeerCredentials>,
}

/// `members[index]`: a sharing's member list is indexed by member index (panics when out of
/// bounds, as a `usize` index does; see `Sharing::member` for the checked way).
impl std::ops::Index<MemberIndex> for Vec<Member> {
    type Output = Member;

    fn index(&self, index: MemberIndex) -> &Member {
        &self[index.get()]
    }
}

impl std::ops::IndexMut<MemberIndex> for Vec<Member> {
    fn index_mut(&mut self, index: MemberIndex) -> &mut Member {
        &mut self[index.get()]
    }
}

impl Member {
    pub fn new(status: MemberStatus) -> Member {
        Member {
            status,
            name: None,
            public_name: None,
            email: None,
            instance: None,
            read_only: false,
            state_nonce: None,
            xor_key: None,
            added_by: None,
            invitation: None,
            answer_state: None,
            inbound_client_id: None,
            outbound: None,
        }
    }

    /// The member as apps see it (its own name, else its public name, as `name`).
    fn api(&self) -> ApiMember {
        ApiMember {
            email: self.email.clone(),
            instance: self.instance.clone(),
            name: self.name.clone().or_else(|| self.public_name.clone()),
            public_name: self.public_name.clone(),
            read_only: self.read_only,
            status: self.status.as_str().to_owned(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sharing {
    #[serde(skip)]
    pub id: Option<SharingId>,
    /// Revision of the stored document (for optimistic updates).
    #[serde(skip)]
    pub rev: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_slug: Option<String>,
    /// Whether this instance is the sharer.
    pub owner: bool,
    /// Whether the sharing is set up and replicating (at least one member ready).
    pub active: bool,
    #[serde(default)]
    pub open_sharing: bool,
    #[serde(default)]
    pub initial_sync: bool,
    pub created_at: String,
    pub updated_at: String,
    pub rules: Vec<Rule>,
    /// `members[0]` is always the owner.
    pub members: Vec<Member>,
    /// Owner side: invitation links (see `sharing::invitations`); never shown to peers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invitations: Vec<super::invitations::Invitation>,
    /// The random input of the id (see [`SharingId::derived`]); sent to recipients, who check
    /// the id with it. Absent on sharings made before ids were derived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_nonce: Option<String>,
    /// When the sharing ended for this instance (RFC 3339): on the owner, everyone was revoked
    /// (by the owner, or by a `remove: revoke` rule); on a recipient, the owner revoked it or
    /// it left. Terminal: nothing reopens a sharing once this is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

impl Sharing {
    pub fn id(&self) -> &str {
        self.sharing_id().as_str()
    }

    /// On a recipient, called by the owner with valid credentials: still recording its own
    /// acceptance. The owner learns of the acceptance (the recipient's answer) before the
    /// recipient stores it as active, and may push documents or send the member list at once;
    /// such a call waits for the acceptance to be recorded (`service::acceptance_recorded`,
    /// at most `ACCEPTANCE_WAIT`), and only past that is answered "not ready yet" (503 with
    /// `Retry-After`), a transient failure the owner retries, not a refusal. (A request never
    /// accepted gave the owner no credentials, so only an acceptance under way gets there.)
    pub fn accepting_here(&self) -> bool {
        !self.owner
            && !self.active
            && self.revoked_at.is_none()
            && self.members.first().is_some_and(|o| o.outbound.is_none())
    }

    /// The sharing's id, typed (as the store's tracking methods take it); an empty id before
    /// one is given.
    pub fn sharing_id(&self) -> &SharingId {
        self.id.as_ref().unwrap_or(&crate::store::doc::UNSET_SHARING_ID)
    }

    /// The JSON:API resource clients see ([`SharingResource`]): never credentials, states or
    /// nonces.
    pub fn api(&self) -> SharingResource {
        SharingResource {
            attributes: SharingAttributes {
                active: self.active,
                app_slug: self.app_slug.clone(),
                created_at: self.created_at.clone(),
                description: self.description.clone(),
                initial_sync: self.initial_sync,
                members: self.members.iter().map(Member::api).collect(),
                open_sharing: self.open_sharing,
                owner: self.owner,
                preview_path: self.preview_path.clone(),
                revoked_at: self.revoked_at.clone(),
                rules: self.rules.clone(),
                updated_at: self.updated_at.clone(),
            },
            id: self.id().to_owned(),
            links: SelfLink { self_link: format!("/sharings/{}", self.id()) },
            meta: RevMeta { rev: self.rev.clone() },
            kind: SHARINGS_TYPE.to_owned(),
        }
    }

    /// [`Sharing::api`] as a JSON value, for answers that add members to it (members in
    /// alphabetical order, as a JSON value writes them).
    pub fn to_api(&self) -> Value {
        serde_json::to_value(self.api()).unwrap_or(Value::Null)
    }

    /// Whether the sharing ended (see `revoked_at`).
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }

    /// Whether member `index`'s invitation can still be followed and answered: the one rule
    /// every way in checks (discovery by `state` or preview code, the fetch of the sharing
    /// request, the owner's processing of an answer). Closed once the member answered, was
    /// revoked or left, and for everyone once the sharing is revoked.
    pub fn invitation_open(&self, index: MemberIndex) -> bool {
        !self.is_revoked() && !index.is_owner() && self.member(index).is_some_and(|m| m.status.is_invited())
    }

    /// Member `index`, if there is one.
    pub fn member(&self, index: MemberIndex) -> Option<&Member> {
        self.members.get(index.get())
    }

    /// Member `index`, if there is one, to change it.
    pub fn member_mut(&mut self, index: MemberIndex) -> Option<&mut Member> {
        self.members.get_mut(index.get())
    }

    /// The recipients' indexes (every member but the owner), in order.
    pub fn recipient_indexes(&self) -> impl Iterator<Item = MemberIndex> {
        (1..self.members.len()).map(MemberIndex)
    }

    /// Whether new members may still join (invitation links, added recipients): not once the
    /// sharing is revoked.
    pub fn accepts_members(&self) -> bool {
        !self.is_revoked()
    }

    /// Whether the instance at `url` was a member of this sharing and was revoked or left: it
    /// does not come back in through an invitation link.
    pub fn instance_revoked(&self, url: &str) -> bool {
        self.members.iter().skip(1).any(|m| m.status == MemberStatus::Revoked && m.instance.as_deref() == Some(url))
    }

    /// Whether any rule lets changes flow from recipients to the owner.
    pub fn has_sync_rule(&self) -> bool {
        self.rules.iter().any(|r| !r.local && (r.add == Flow::Sync || r.update == Flow::Sync || r.remove == Flow::Sync))
    }

    /// The tracking rules of this sharing (local rules are for previews and never tracked).
    pub fn track_rules(&self) -> Vec<crate::store::TrackRule> {
        self.rules
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.local)
            .filter_map(|(i, r)| r.track_rule(self.sharing_id(), i, self.owner))
            .collect()
    }

    /// Whether a recipient at `index` may write to the owner.
    pub fn member_may_write(&self, index: MemberIndex) -> bool {
        !index.is_owner() && self.member(index).is_some_and(|m| !m.read_only) && self.has_sync_rule()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rules_are_validated_case_insensitively() {
        let r = Rule::from_input(
            &json!({"title": "t", "doctype": "io.cozy.notes", "values": ["a"], "add": "SYNC", "remove": "Revoke"}),
        )
        .unwrap();
        assert_eq!((r.add, r.update, r.remove), (Flow::Sync, Flow::None, Flow::Revoke));
        for bad in [
            json!({"doctype": "io.cozy.notes", "values": []}),
            json!({"doctype": "io.cozy.notes"}),
            json!({"doctype": "IO", "values": ["a"]}),
            json!({"doctype": "io.cozy.sharings", "values": ["a"]}),
            json!({"doctype": "io.cozy.notes", "values": ["a"], "add": "revoke"}),
            json!({"doctype": "io.cozy.notes", "values": ["a"], "update": "always"}),
            json!({"doctype": "io.cozy.notes", "values": [1]}),
            json!({"doctype": "io.cozy.notes", "values": ["a"], "selector": "_rev"}),
            json!("rule"),
        ] {
            assert!(Rule::from_input(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_match_by_id_or_by_a_field_path() {
        let by_id = Rule::from_input(&json!({"doctype": "io.cozy.notes", "values": ["a"]})).unwrap();
        let empty = crate::store::Body::empty();
        assert!(by_id.matches("io.cozy.notes", "a", &empty));
        assert!(!by_id.matches("io.cozy.notes", "b", &empty));
        assert!(!by_id.matches("io.cozy.todos", "a", &empty));
        let by_field =
            Rule::from_input(&json!({"doctype": "io.cozy.todos", "values": ["l1"], "selector": "list.id"})).unwrap();
        let body = |v: Value| crate::store::Body::from_map(v.as_object().unwrap());
        assert!(by_field.matches("io.cozy.todos", "x", &body(json!({"list": {"id": "l1"}}))));
        assert!(!by_field.matches("io.cozy.todos", "x", &body(json!({"list": {"id": "l2"}}))));
        assert!(!by_field.matches("io.cozy.todos", "x", &body(json!({"list": "l1"}))));
    }

    #[test]
    fn api_view_never_shows_credentials() {
        let mut m = Member::new(MemberStatus::Ready);
        m.state_nonce = Some("nonce-secret".into());
        m.outbound = Some(PeerCredentials {
            client_id: "cid".into(),
            client_secret: "client-secret".into(),
            access_token: "access-secret".into(),
            refresh_token: "refresh-secret".into(),
        });
        m.inbound_client_id = Some("inbound".into());
        let s = Sharing {
            id: Some(SharingId::generate()),
            rev: None,
            description: "d".into(),
            preview_path: None,
            app_slug: None,
            owner: true,
            active: true,
            open_sharing: false,
            initial_sync: false,
            created_at: now_rfc3339(),
            updated_at: now_rfc3339(),
            rules: vec![],
            members: vec![Member::new(MemberStatus::Owner), m],
            invitations: vec![],
            id_nonce: None,
            revoked_at: None,
        };
        let text = s.to_api().to_string();
        for secret in ["nonce-secret", "client-secret", "access-secret", "refresh-secret", "inbound", "cid"] {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
    }

    /// A sharing for the pinned API views: fixed dates, id and revision.
    fn pinned(owner: bool, members: Vec<Member>) -> Sharing {
        let rule = json!({"title": "notes", "doctype": "io.cozy.notes", "values": ["n1", "n2"],
            "add": "sync", "update": "push", "remove": "revoke"});
        let mut s: Sharing = serde_json::from_value(json!({"description": "Holiday \"notes\"", "owner": owner,
            "active": true, "created_at": "2026-01-02T03:04:05Z", "updated_at": "2026-01-02T03:04:06Z",
            "rules": [rule], "members": [], "id_nonce": "nonce"}))
        .unwrap();
        (s.id, s.rev, s.members) =
            (SharingId::parse("0123456789abcdef0123456789abcdef").ok(), Some("2-abc".into()), members);
        s
    }

    /// The JSON:API view apps get, byte for byte (key order and values), pinned before it was
    /// built from types: an owner's, a recipient's, one without members, and a revoked one.
    #[test]
    fn api_view_is_pinned_byte_for_byte() {
        let mut owner = Member::new(MemberStatus::Owner);
        owner.public_name = Some("Alice".into());
        owner.email = Some("alice@example.net".into());
        owner.instance = Some("https://alice.example.net".into());
        let mut bob = Member::new(MemberStatus::Ready);
        bob.name = Some("Bob B.".into());
        bob.public_name = Some("Bob".into());
        bob.instance = Some("https://bob.example.net".into());
        bob.read_only = true;
        bob.xor_key = Some("k".into());
        let mut carol = Member::new(MemberStatus::MailNotSent);
        carol.email = Some("carol@example.net".into());
        let shown = pinned(true, vec![owner.clone(), bob.clone(), carol]);
        assert_eq!(shown.to_api().to_string(), OWNER_VIEW);

        let mut recipient = pinned(false, vec![owner, bob]);
        recipient.rev = None;
        recipient.app_slug = Some("notes".into());
        recipient.preview_path = Some("/preview".into());
        recipient.open_sharing = true;
        recipient.initial_sync = true;
        assert_eq!(recipient.to_api().to_string(), RECIPIENT_VIEW);

        let mut empty = pinned(true, vec![]);
        empty.rules = vec![];
        empty.description = String::new();
        assert_eq!(empty.to_api().to_string(), EMPTY_VIEW);

        let mut revoked = pinned(true, vec![Member::new(MemberStatus::Owner), Member::new(MemberStatus::Revoked)]);
        revoked.active = false;
        revoked.revoked_at = Some("2026-02-03T04:05:06Z".into());
        assert_eq!(revoked.to_api().to_string(), REVOKED_VIEW);
    }

    const OWNER_VIEW: &str = r#"{"attributes":{"active":true,"app_slug":null,"created_at":"2026-01-02T03:04:05Z","description":"Holiday \"notes\"","initial_sync":false,"members":[{"email":"alice@example.net","instance":"https://alice.example.net","name":"Alice","public_name":"Alice","status":"owner"},{"instance":"https://bob.example.net","name":"Bob B.","public_name":"Bob","read_only":true,"status":"ready"},{"email":"carol@example.net","status":"mail-not-sent"}],"open_sharing":false,"owner":true,"rules":[{"add":"sync","doctype":"io.cozy.notes","remove":"revoke","title":"notes","update":"push","values":["n1","n2"]}],"updated_at":"2026-01-02T03:04:06Z"},"id":"0123456789abcdef0123456789abcdef","links":{"self":"/sharings/0123456789abcdef0123456789abcdef"},"meta":{"rev":"2-abc"},"type":"io.cozy.sharings"}"#;
    const RECIPIENT_VIEW: &str = r#"{"attributes":{"active":true,"app_slug":"notes","created_at":"2026-01-02T03:04:05Z","description":"Holiday \"notes\"","initial_sync":true,"members":[{"email":"alice@example.net","instance":"https://alice.example.net","name":"Alice","public_name":"Alice","status":"owner"},{"instance":"https://bob.example.net","name":"Bob B.","public_name":"Bob","read_only":true,"status":"ready"}],"open_sharing":true,"owner":false,"preview_path":"/preview","rules":[{"add":"sync","doctype":"io.cozy.notes","remove":"revoke","title":"notes","update":"push","values":["n1","n2"]}],"updated_at":"2026-01-02T03:04:06Z"},"id":"0123456789abcdef0123456789abcdef","links":{"self":"/sharings/0123456789abcdef0123456789abcdef"},"meta":{"rev":null},"type":"io.cozy.sharings"}"#;
    const EMPTY_VIEW: &str = r#"{"attributes":{"active":true,"app_slug":null,"created_at":"2026-01-02T03:04:05Z","description":"","initial_sync":false,"members":[],"open_sharing":false,"owner":true,"rules":[],"updated_at":"2026-01-02T03:04:06Z"},"id":"0123456789abcdef0123456789abcdef","links":{"self":"/sharings/0123456789abcdef0123456789abcdef"},"meta":{"rev":"2-abc"},"type":"io.cozy.sharings"}"#;
    const REVOKED_VIEW: &str = r#"{"attributes":{"active":false,"app_slug":null,"created_at":"2026-01-02T03:04:05Z","description":"Holiday \"notes\"","initial_sync":false,"members":[{"status":"owner"},{"status":"revoked"}],"open_sharing":false,"owner":true,"revoked_at":"2026-02-03T04:05:06Z","rules":[{"add":"sync","doctype":"io.cozy.notes","remove":"revoke","title":"notes","update":"push","values":["n1","n2"]}],"updated_at":"2026-01-02T03:04:06Z"},"id":"0123456789abcdef0123456789abcdef","links":{"self":"/sharings/0123456789abcdef0123456789abcdef"},"meta":{"rev":"2-abc"},"type":"io.cozy.sharings"}"#;
}
