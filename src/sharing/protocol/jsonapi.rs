//! The JSON:API documents of `/sharings` that instances send each other (Cozy's shapes; see
//! the sharing seed's `POST /sharings/:id/answer`):
//! - the answer to a sharing request ([`Answer`], type `io.cozy.sharings.answer`), both ways:
//!   the recipient's acceptance (`state`, its credentials) or refusal, and the owner's reply
//!   (its credentials, the member's index and read-only flag);
//! - new credentials for a recipient ([`Answer`] too, type `io.cozy.sharings.credentials`,
//!   `POST /sharings/:id/credentials`);
//! - the member list the owner tells its members ([`MembersAttributes`],
//!   `PUT /sharings/:id/recipients`);
//! - recipients a member adds through the owner ([`RecipientRef`] in a relationship,
//!   `POST /sharings/:id/recipients/delegated`) and their invitation links ([`InvitationLink`]).
//!
//! Sent documents are serialised with their members in alphabetical order, as they always were
//! on the wire. Received ones are read leniently (see [`super::Lenient`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{lenient, lenient_list, object, or_default, present, wire_object, Lenient};
use crate::auth::oauth::IssuedClient;
use crate::federation::client::PeerCredentials;
use crate::sharing::model::Rule;
use crate::store::MemberIndex;

/// `type` of an answer to a sharing request.
pub const ANSWER_TYPE: &str = "io.cozy.sharings.answer";
/// `type` of the owner's notice of new credentials.
pub const CREDENTIALS_TYPE: &str = "io.cozy.sharings.credentials";
/// `type` of a sharing.
pub const SHARINGS_TYPE: &str = "io.cozy.sharings";
/// `type` of a recipient.
pub const CONTACTS_TYPE: &str = "io.cozy.contacts";

/// A JSON:API document: `{"data": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document<T> {
    pub data: T,
}

/// A resource with attributes, as sent: `{"attributes", "id", "type"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resource<A> {
    pub attributes: A,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

impl<A> Document<Resource<A>> {
    pub fn resource(kind: &'static str, id: &str, attributes: A) -> Self {
        Document { data: Resource { attributes, id: id.to_owned(), kind } }
    }
}

/// A received document, read leniently: `data` is `None` when absent, `Some(Lenient(None))`
/// when not an object (`null` included).
#[derive(Debug, Default, Deserialize)]
#[serde(bound(deserialize = "A: serde::de::DeserializeOwned"))]
pub struct Received<A> {
    #[serde(default, deserialize_with = "present")]
    pub data: Option<Lenient<ReceivedResource<A>>>,
}

/// The resource of a [`Received`] document; `attributes` and `relationships` as for `data`.
#[derive(Debug, Deserialize)]
#[serde(bound(deserialize = "A: serde::de::DeserializeOwned"))]
pub struct ReceivedResource<A> {
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub attributes: Option<Lenient<A>>,
    #[serde(default, deserialize_with = "lenient")]
    pub relationships: Option<Relationships>,
}

impl<A: serde::de::DeserializeOwned> Received<A> {
    /// Reads a body leniently (anything reads, as an empty document at worst).
    pub fn read(body: &Value) -> Received<A> {
        object(body.clone()).unwrap_or(Received { data: None })
    }

    /// The resource, when `data` is an object.
    pub fn resource(&self) -> Option<&ReceivedResource<A>> {
        self.data.as_ref().and_then(|d| d.0.as_ref())
    }

    /// The resource's attributes: `None` when absent, `Some(None)` when not of the shape
    /// (`null` included).
    pub fn attributes(&self) -> Option<Option<&A>> {
        self.resource().and_then(|r| r.attributes.as_ref()).map(|a| a.0.as_ref())
    }

    /// The resource's attributes, their default when absent or not of the shape.
    pub fn attributes_or_default(self) -> A
    where
        A: Default,
    {
        self.data.and_then(|d| d.0).and_then(|r| r.attributes).and_then(|a| a.0).unwrap_or_default()
    }
}

wire_object! {
    /// An OAuth client, `client` of credentials (`client_kind` is `sharing`).
    pub struct WireClient {
        client_id: String,
        client_kind: String,
        client_secret: String,
    }
}

wire_object! {
    /// Tokens, `access_token` of credentials (`token_type` is `bearer`).
    pub struct AccessToken {
        access_token: String,
        refresh_token: String,
        scope: String,
        token_type: String,
    }
}

wire_object! {
    /// The attributes of an answer (`io.cozy.sharings.answer`) or of new credentials
    /// (`io.cozy.sharings.credentials`). Cozy's members are `state`, `client` and
    /// `access_token`; hearth adds `public_name` and `request_digest` (the recipient's name, and
    /// the digest of the request it accepted), `member_index` and `read_only` (the owner tells
    /// the member which it is, and whether it may write), and `refused` (`true`: a refusal
    /// instead of credentials).
    pub struct Answer {
        access_token: AccessToken,
        client: WireClient,
        member_index: MemberIndex,
        public_name: String,
        read_only: bool,
        refused: bool,
        request_digest: String,
        state: String,
    }
}

impl Answer {
    /// The credentials of a client this instance issued for the peer.
    pub fn with_credentials(c: &IssuedClient) -> Answer {
        Answer {
            client: Some(WireClient {
                client_id: Some(c.client_id.clone()),
                client_kind: Some("sharing".into()),
                client_secret: Some(c.client_secret.clone()),
            }),
            access_token: Some(AccessToken {
                access_token: Some(c.access_token.clone()),
                refresh_token: Some(c.refresh_token.clone()),
                scope: Some(c.scope.clone()),
                token_type: Some("bearer".into()),
            }),
            ..Answer::default()
        }
    }

    /// The credentials the peer issued for this instance: `None` unless the client's id and
    /// secret and both tokens are there, none empty nor of 4096 bytes or more.
    pub fn peer_credentials(&self) -> Option<PeerCredentials> {
        let ok = |s: &Option<String>| s.clone().filter(|s| !s.is_empty() && s.len() < 4096);
        let (client, tokens) = (self.client.as_ref()?, self.access_token.as_ref()?);
        Some(PeerCredentials {
            client_id: ok(&client.client_id)?,
            client_secret: ok(&client.client_secret)?,
            access_token: ok(&tokens.access_token)?,
            refresh_token: ok(&tokens.refresh_token)?,
        })
    }
}

wire_object! {
    /// One member in the member list (`PUT /sharings/:id/recipients`): `status`, `read_only`
    /// and `public_name` for every member; `name`, `email` and `instance` only for the owner
    /// and the member the list is for. `status` is `model::MemberStatus`'s name (empty when
    /// absent or not a string).
    pub struct WireMember {
        email: String,
        instance: String,
        name: String,
        public_name: String,
        ;
        read_only: bool,
        status: String,
    }
}

/// The attributes of the member list: `{"members": [member, ...]}` (by index, the owner's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MembersAttributes {
    /// Received: `None` when absent or not an array; an item that is not an object is
    /// `Lenient(None)`.
    #[serde(default, deserialize_with = "lenient_list")]
    pub members: Option<Vec<Lenient<WireMember>>>,
}

impl MembersAttributes {
    /// The list to send.
    pub fn of(members: Vec<WireMember>) -> MembersAttributes {
        MembersAttributes { members: Some(members.into_iter().map(|m| Lenient(Some(m))).collect()) }
    }
}

/// A resource's relationships naming recipients (`recipients` may write, `read_only_recipients`
/// may only read), each `{"data": [recipient, ...]}`; kept as received, read by
/// [`RecipientRef::parse_relationship`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Relationships {
    #[serde(default, deserialize_with = "present_value", skip_serializing_if = "Option::is_none")]
    pub recipients: Option<Value>,
    #[serde(default, deserialize_with = "present_value", skip_serializing_if = "Option::is_none")]
    pub read_only_recipients: Option<Value>,
}

/// A member kept as JSON, present even when `null`.
fn present_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Ok(Some(Value::deserialize(d)?))
}

/// A resource with relationships, as sent: `{"id", "relationships", "type"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelatedResource<R> {
    pub id: String,
    pub relationships: R,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// One relationship: `{"data": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Relationship<T> {
    pub data: T,
}

/// The relationships of delegated recipients, as sent: `{"recipients": {"data": [...]}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DelegatedRecipients {
    pub recipients: Relationship<Vec<RecipientRef>>,
}

wire_object! {
    /// A recipient in a relationship: a contact by `id` (of `type` `io.cozy.contacts`, looked
    /// up by the receiver), or inline, by `email` and/or `instance` (with a `name`).
    pub struct RecipientRef {
        email: String,
        id: String,
        instance: String,
        name: String,
        #[serde(rename = "type")]
        kind: String,
    }
}

impl RecipientRef {
    /// Reads a relationship, `{"data": [recipient, ...]}`: `None` for an item that is not an
    /// object. Errs when there is no `data` array.
    pub fn parse_relationship(rel: &Value) -> Result<Vec<Option<RecipientRef>>, String> {
        #[derive(Deserialize)]
        struct Rel {
            #[serde(default, deserialize_with = "lenient_list")]
            data: Option<Vec<Lenient<RecipientRef>>>,
        }
        let data = object::<Rel>(rel.clone()).and_then(|r| r.data).ok_or("recipients must have a data array")?;
        Ok(data.into_iter().map(|r| r.0).collect())
    }
}

impl Relationships {
    /// The relationships of a received document's resource (empty when there are none).
    pub fn of(body: &Value) -> Relationships {
        Received::<Value>::read(body).resource().and_then(|r| r.relationships.clone()).unwrap_or_default()
    }
}

wire_object! {
    /// The owner as a notice names it: its `status` (`owner`), `instance` and `public_name`,
    /// each written even when `null`.
    pub struct NoticeOwner {
        ;
        instance: Option<String>,
        public_name: Option<String>,
        status: String,
    }
}

/// The attributes of a notice: the nonce the sharing's id derives from (written even when
/// `null`), and the owner, alone in `members`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NoticeAttributes {
    #[serde(default, deserialize_with = "or_default")]
    pub id_nonce: Option<String>,
    /// Received: `None` when absent or not an array.
    #[serde(default, deserialize_with = "lenient_list")]
    pub members: Option<Vec<Lenient<NoticeOwner>>>,
}

wire_object! {
    /// The meta of a notice: the token that fetches the request back.
    pub struct NoticeMeta {
        request_token: String,
    }
}

wire_object! {
    /// The resource of a notice (`PUT /sharings/:id`, owner to recipient: see
    /// `sharing::request`), `{"attributes", "id", "meta", "type"}`; a member of the wrong shape
    /// reads as its default.
    pub struct Notice {
        ;
        attributes: NoticeAttributes,
        id: String,
        meta: NoticeMeta,
        #[serde(rename = "type")]
        kind: String,
    }
}

impl Notice {
    /// Reads a notice's body: `None` unless `data` is an object.
    pub fn read(body: &Value) -> Option<Notice> {
        #[derive(Deserialize)]
        struct In {
            #[serde(default, deserialize_with = "lenient")]
            data: Option<Notice>,
        }
        object::<In>(body.clone()).and_then(|d| d.data)
    }
}

/// One invitation link in the owner's answer to delegated recipients: the new member's index
/// and its invitation's URL (`{"data": [link, ...]}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvitationLink {
    pub index: MemberIndex,
    pub invitation: String,
}

impl InvitationLink {
    /// Reads the owner's answer leniently: items that are not links are skipped.
    pub fn parse_answer(answer: &Value) -> Vec<InvitationLink> {
        #[derive(Deserialize)]
        struct Links {
            #[serde(default, deserialize_with = "lenient_list")]
            data: Option<Vec<Lenient<InvitationLink>>>,
        }
        let links = object::<Links>(answer.clone()).and_then(|l| l.data).unwrap_or_default();
        links.into_iter().filter_map(|l| l.0).collect()
    }
}

/// A sharing as its apps see it: `data` of `GET /sharings/:id` and of the other answers of
/// `/sharings` (Cozy's shape), `{"attributes", "id", "links": {"self": "/sharings/<id>"},
/// "meta": {"rev"}, "type": "io.cozy.sharings"}`. Never credentials, states or nonces (see
/// `Sharing::to_api`, the one way to make it). Written through a JSON value, whose members
/// come out in alphabetical order, nested rules included, as they always did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharingResource {
    pub attributes: SharingAttributes,
    pub id: String,
    pub links: SelfLink,
    pub meta: RevMeta,
    #[serde(rename = "type")]
    pub kind: String,
}

/// The attributes of a [`SharingResource`]. `app_slug` is always written (`null` when no app
/// created the sharing, as in Cozy's answers); `preview_path` and `revoked_at` (RFC 3339, when
/// the sharing ended for this instance) only when set. `members` are by index, the owner's
/// first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharingAttributes {
    pub active: bool,
    pub app_slug: Option<String>,
    pub created_at: String,
    pub description: String,
    pub initial_sync: bool,
    pub members: Vec<ApiMember>,
    pub open_sharing: bool,
    pub owner: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    pub rules: Vec<Rule>,
    pub updated_at: String,
}

/// A member as apps see it: its `status` (`model::MemberStatus`'s name), `name` (its own, or
/// else its public name), `public_name`, `email` and `instance` when known, and `read_only`
/// only when `true`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiMember {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_name: Option<String>,
    #[serde(default, deserialize_with = "super::flag", skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    pub status: String,
}

/// `links` of a resource: `{"self": path}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfLink {
    #[serde(rename = "self")]
    pub self_link: String,
}

/// `meta` of a stored resource: its revision, `null` before it is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevMeta {
    pub rev: Option<String>,
}

/// A member of an app's input that may be left out, set to `null`, or be of another type
/// than the one expected; told apart so that each gets the answer it always had.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Field<T> {
    /// Absent, or `null`.
    #[default]
    Unset,
    Set(T),
    /// Present, of another type.
    Invalid,
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Field<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Null => Field::Unset,
            v => serde_json::from_value(v).map_or(Field::Invalid, Field::Set),
        })
    }
}

impl<T> Field<T> {
    /// Absent, or `null` (left out when written).
    pub fn is_unset(&self) -> bool {
        matches!(self, Field::Unset)
    }
}

/// Written as its value (`null` when unset: skip it with [`Field::is_unset`]); an invalid field
/// is only ever read, never written.
impl<T: Serialize> Serialize for Field<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Field::Unset => s.serialize_none(),
            Field::Set(v) => v.serialize(s),
            Field::Invalid => Err(serde::ser::Error::custom("an invalid field is not written")),
        }
    }
}

/// The body of `POST /sharings/:id/invitations` (hearth's own, in the spirit of DIAL's share
/// links): `{"permissions": ["read"|"write", "share"?], "max_accepted_users"?: seats,
/// "expires_in"?: seconds}`, also read inside a JSON:API `data.attributes`. Sent by an app, and
/// by a re-sharing member's instance on behalf of its app (`invitations::forward`); judged by the
/// owner (`invitations::parse_request`), with the reasons it always gave for each member.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct InvitationRequest {
    #[serde(default, skip_serializing_if = "Field::is_unset")]
    pub expires_in: Field<u64>,
    #[serde(default, skip_serializing_if = "Field::is_unset")]
    pub max_accepted_users: Field<u64>,
    #[serde(default, skip_serializing_if = "Field::is_unset")]
    pub permissions: Field<Vec<String>>,
}

impl InvitationRequest {
    /// The request in `body` (its `data.attributes` when it has them); `None` unless an object.
    pub fn read(body: &Value) -> Option<InvitationRequest> {
        let attrs = body.get("data").and_then(|d| d.get("attributes")).unwrap_or(body);
        attrs.is_object().then(|| serde_json::from_value(attrs.clone()).ok()).flatten()
    }
}

/// An invitation link (type `io.hearth.invitations`), as `POST` and `GET /sharings/:id/
/// invitations` answer it: its `permissions` (`read` or `write`, and `share`), seats
/// (`max_accepted_users`, `null` for no limit; `seats_used` by members made through it or a
/// re-share of it), RFC 3339 dates, `created_by` (0: the owner, or the re-sharing member's
/// index), the `parent` link of a re-share, and counts of members `accepted` and `pending`.
/// `link`, the link itself, only in the answer that creates it (the one time it is shown).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvitationResource {
    pub attributes: InvitationAttributes,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// The attributes of an [`InvitationResource`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvitationAttributes {
    pub accepted: usize,
    pub active: bool,
    pub created_at: String,
    pub created_by: MemberIndex,
    pub expires_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    pub max_accepted_users: Option<u32>,
    pub parent: Option<String>,
    pub pending: usize,
    pub permissions: Vec<String>,
    pub seats_used: usize,
    pub sharing_id: String,
}

/// The attributes of `POST /sharings`'s `data` (type `io.cozy.sharings`), as an app sends them
/// (Cozy's shape): `description`, `preview_path` and `app_slug` (strings), `open_sharing` (a
/// boolean), and `rules`, a non-empty array of rules, each read and checked by
/// `Rule::from_input`. The recipients come in the resource's relationships
/// ([`Relationships`]). Other members are ignored; `sharing::service::create` judges these.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct NewSharingAttributes {
    #[serde(default)]
    pub description: Field<String>,
    #[serde(default)]
    pub preview_path: Field<String>,
    #[serde(default)]
    pub app_slug: Field<String>,
    #[serde(default)]
    pub open_sharing: Field<bool>,
    #[serde(default)]
    pub rules: Field<Vec<Value>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issued() -> IssuedClient {
        IssuedClient {
            client_id: "cid".into(),
            client_secret: "csecret".into(),
            access_token: "uia7b85928e5cf".into(),
            refresh_token: "rtok".into(),
            scope: "io.cozy.sharings:ALL:ce8835a061d0ef68947afe69a0046722".into(),
        }
    }

    /// The seed's `POST /sharings/:id/answer` request (its `client` written out), with hearth's
    /// additions.
    #[test]
    fn the_seeds_answer_round_trips() {
        let seed = json!({"data": {"type": "io.cozy.sharings.answer", "id": "ce8835a061d0ef68947afe69a0046722",
            "attributes": {"state": "eiJ3iepoaihohz1Y",
                "client": {"client_id": "cid", "client_secret": "csecret", "client_kind": "sharing"},
                "access_token": {"token_type": "bearer", "access_token": "uia7b85928e5cf", "refresh_token": "rtok",
                    "scope": "io.cozy.sharings:ALL:ce8835a061d0ef68947afe69a0046722"},
                "public_name": "Bob", "request_digest": "d1"}}});
        let received = Received::<Answer>::read(&seed);
        assert_eq!(received.resource().and_then(|r| r.kind.as_deref()), Some(ANSWER_TYPE));
        let attrs = received.attributes_or_default();
        assert_eq!(attrs.state.as_deref(), Some("eiJ3iepoaihohz1Y"));
        let creds = attrs.peer_credentials().unwrap();
        assert_eq!((creds.client_id.as_str(), creds.access_token.as_str()), ("cid", "uia7b85928e5cf"));
        let sent = Answer {
            state: Some("eiJ3iepoaihohz1Y".into()),
            public_name: Some("Bob".into()),
            request_digest: Some("d1".into()),
            ..Answer::with_credentials(&issued())
        };
        let doc = Document::resource(ANSWER_TYPE, "ce8835a061d0ef68947afe69a0046722", sent);
        // Members in alphabetical order: the same bytes as the JSON value of old.
        assert_eq!(serde_json::to_string(&doc).unwrap(), seed.to_string());
    }

    #[test]
    fn the_owners_reply_and_a_refusal_round_trip() {
        let reply = Answer {
            member_index: Some(MemberIndex(2)),
            read_only: Some(false),
            ..Answer::with_credentials(&issued())
        };
        let text = serde_json::to_string(&Document::resource(ANSWER_TYPE, "s1", reply.clone())).unwrap();
        let back = Received::<Answer>::read(&serde_json::from_str(&text).unwrap()).attributes_or_default();
        assert_eq!(back, reply);
        let refusal = Answer { state: Some("st".into()), refused: Some(true), ..Answer::default() };
        assert_eq!(
            serde_json::to_string(&Document::resource(ANSWER_TYPE, "s1", refusal)).unwrap(),
            r#"{"data":{"attributes":{"refused":true,"state":"st"},"id":"s1","type":"io.cozy.sharings.answer"}}"#
        );
    }

    #[test]
    fn answers_are_read_leniently_and_credentials_need_all_four_values() {
        let odd = json!({"data": {"type": "io.cozy.sharings.answer", "attributes": {"state": 3, "refused": "yes",
            "read_only": 1, "member_index": -1, "client": ["cid"], "access_token": {"access_token": "a"}}}});
        let attrs = Received::<Answer>::read(&odd).attributes_or_default();
        assert_eq!(attrs.state, None);
        assert_eq!(attrs.refused, None);
        assert_eq!((attrs.read_only, attrs.member_index, attrs.client.clone()), (None, None, None));
        assert!(attrs.peer_credentials().is_none());
        let mut empty = Answer::with_credentials(&issued());
        empty.access_token.as_mut().unwrap().refresh_token = Some(String::new());
        assert!(empty.peer_credentials().is_none());
        // `data.attributes` present but not an object is told apart from absent.
        let null_attrs = Received::<Answer>::read(&json!({"data": {"attributes": null}}));
        assert_eq!(null_attrs.attributes(), Some(None));
        assert_eq!(Received::<Answer>::read(&json!({"data": {}})).attributes(), None);
        assert!(Received::<Answer>::read(&json!({"data": []})).resource().is_none());
        assert!(Received::<Answer>::read(&json!([{"data": {}}])).data.is_none());
    }

    #[test]
    fn member_lists_round_trip() {
        let wire = json!({"data": {"type": "io.cozy.sharings", "id": "s1", "attributes": {"members": [
            {"status": "owner", "read_only": false, "public_name": "Alice", "name": "Alice", "instance": "http://alice.example"},
            {"status": "ready", "read_only": true}]}}});
        let list = Received::<MembersAttributes>::read(&wire).attributes_or_default().members.unwrap();
        let list: Vec<WireMember> = list.into_iter().map(|m| m.0.unwrap()).collect();
        assert_eq!(list[0].instance.as_deref(), Some("http://alice.example"));
        assert!(list[1].read_only && list[1].status == "ready");
        let sent = Document::resource(SHARINGS_TYPE, "s1", MembersAttributes::of(list));
        assert_eq!(serde_json::to_string(&sent).unwrap(), wire.to_string());
        let odd = json!({"data": {"attributes": {"members": [3, {"status": 1}]}}});
        let list = Received::<MembersAttributes>::read(&odd).attributes_or_default().members.unwrap();
        assert_eq!(list[0].0, None);
        assert_eq!(list[1].0.as_ref().map(|m| m.status.as_str()), Some(""));
        let none = json!({"data": {"attributes": {"members": {}}}});
        assert!(Received::<MembersAttributes>::read(&none).attributes_or_default().members.is_none());
    }

    #[test]
    fn delegated_recipients_and_their_links_round_trip() {
        let sent = Document {
            data: RelatedResource {
                id: "s1".into(),
                relationships: DelegatedRecipients {
                    recipients: Relationship {
                        data: vec![RecipientRef {
                            email: Some("carol@example".into()),
                            kind: Some(CONTACTS_TYPE.into()),
                            ..RecipientRef::default()
                        }],
                    },
                },
                kind: SHARINGS_TYPE,
            },
        };
        let text = serde_json::to_string(&sent).unwrap();
        let expected = json!({"data": {"type": "io.cozy.sharings", "id": "s1", "relationships": {"recipients": {"data": [
            {"type": "io.cozy.contacts", "email": "carol@example"}]}}}});
        assert_eq!(text, expected.to_string());
        let rels = Relationships::of(&serde_json::from_str(&text).unwrap());
        assert!(rels.read_only_recipients.is_none());
        let list = RecipientRef::parse_relationship(rels.recipients.as_ref().unwrap()).unwrap();
        assert_eq!(
            list,
            vec![Some(RecipientRef {
                email: Some("carol@example".into()),
                kind: Some(CONTACTS_TYPE.into()),
                ..RecipientRef::default()
            })]
        );
        assert_eq!(RecipientRef::parse_relationship(&json!({"data": [["x"]]})).unwrap(), vec![None]);
        assert!(RecipientRef::parse_relationship(&json!({"data": {}})).is_err());
        assert!(RecipientRef::parse_relationship(&json!(null)).is_err());
        // `null` recipients are present (and refused by the service), not absent.
        let rels = Relationships::of(&json!({"data": {"relationships": {"recipients": null}}}));
        assert_eq!(rels.recipients, Some(Value::Null));

        let links = json!({"data": [{"index": 3, "invitation": "http://x/i"}, {"index": "3"}, 4]});
        assert_eq!(
            InvitationLink::parse_answer(&links),
            vec![InvitationLink { index: MemberIndex(3), invitation: "http://x/i".into() }]
        );
        let back = Document { data: InvitationLink::parse_answer(&links) };
        assert_eq!(serde_json::to_string(&back).unwrap(), r#"{"data":[{"index":3,"invitation":"http://x/i"}]}"#);
    }

    #[test]
    fn notices_round_trip_and_are_read_leniently() {
        // The notice of `sharing::request`'s module docs.
        let wire = json!({"data": {"type": "io.cozy.sharings", "id": "s1", "attributes": {"id_nonce": "n1",
            "members": [{"status": "owner", "instance": "http://alice.example", "public_name": "Alice"}]},
            "meta": {"request_token": "t1"}}});
        let notice = Notice::read(&wire).unwrap();
        let owner = notice.attributes.members.as_ref().and_then(|m| m[0].0.clone()).unwrap();
        assert_eq!((owner.status.as_str(), owner.instance.as_deref()), ("owner", Some("http://alice.example")));
        assert_eq!((notice.id.as_str(), notice.meta.request_token.as_deref()), ("s1", Some("t1")));
        assert_eq!(serde_json::to_string(&Document { data: notice }).unwrap(), wire.to_string());
        // An owner without a name is written with `null`, as it always was.
        let bare = NoticeOwner { status: "owner".into(), ..NoticeOwner::default() };
        assert_eq!(serde_json::to_string(&bare).unwrap(), r#"{"instance":null,"public_name":null,"status":"owner"}"#);
        let odd = json!({"data": {"attributes": {"id_nonce": 3, "members": [["owner"]]}, "meta": []}});
        let notice = Notice::read(&odd).unwrap();
        assert_eq!(notice.attributes.id_nonce, None);
        assert_eq!(notice.attributes.members, Some(vec![Lenient(None)]));
        assert_eq!(notice.meta, NoticeMeta::default());
        assert!(Notice::read(&json!({"data": [1]})).is_none() && Notice::read(&json!([])).is_none());
    }
}
