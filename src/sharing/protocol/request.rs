//! The sharing request document (DESIGN.md §3, step 3; flow and threat model in
//! `sharing::request`): what an owner serves a recipient's instance at
//! `GET /sharings/:id/request`, in the shape of Cozy's `PUT /sharings/:id` body. The one type
//! [`SharingRequest`] is written by the owner and read by the recipient.
//!
//! Written through a JSON value, so members come out in alphabetical order at every depth (as
//! they always did on the wire). Read, every list is bounded (a longer list stops the parse, so
//! a hostile owner's answer costs at most about its size in memory: [`MAX_RULES`] rules of
//! [`MAX_VALUES_PER_RULE`] values, [`MAX_WIRE_MEMBERS`] members), each rule is checked by
//! `Rule::from_input` as a rule made here, members that only the owner uses (`links`, `meta`,
//! the dates, `owner`, `initial_sync`) are skipped, and flags and the member's `state` are read
//! leniently, all without building what is skipped (a value of the wrong type, however large,
//! costs nothing but its reading).

use serde::de::{Deserializer, Error as _};
use serde::{Deserialize, Serialize};

use super::{bounded, flag, lenient_object, text, ApiMember, RevMeta, SelfLink};
use crate::sharing::model::{Rule, MAX_RULES, MAX_VALUES_PER_RULE};

/// Members a request may list before its parse stops (the recipient's configured
/// `max_members` is checked after).
pub const MAX_WIRE_MEMBERS: usize = 1000;

/// `{"data": RequestResource, "meta": {"state"}}`; `meta` only in the answer to the member's
/// own instance (see `sharing::request::serve`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharingRequest {
    pub data: RequestResource,
    #[serde(default, deserialize_with = "lenient_object", skip_serializing_if = "Option::is_none")]
    pub meta: Option<RequestMeta>,
}

/// The `meta` of a [`SharingRequest`]: the member's `state`, with which the recipient's apps
/// can answer without the invitation link (owners before it gave none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestMeta {
    #[serde(default, deserialize_with = "text")]
    pub state: Option<String>,
}

/// The sharing as member `n` is offered it: a sharing resource (`type` `io.cozy.sharings`),
/// whose `links` and `meta` the owner writes as for apps and the recipient does not read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestResource {
    pub attributes: RequestAttributes,
    pub id: String,
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub links: Option<SelfLink>,
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub meta: Option<RevMeta>,
    #[serde(rename = "type")]
    pub kind: String,
}

/// The attributes of a [`RequestResource`]: those of a sharing as apps see them (see
/// `SharingAttributes`), without `active` and `revoked_at`, with the `id_nonce` the sharing's
/// id derives from (`SharingId::derived`). `rules` and `members` are required; members are by
/// index, the owner's first, others than the owner and the member reduced to their status and
/// public name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestAttributes {
    #[serde(default)]
    pub app_slug: Option<String>,
    #[serde(skip_deserializing)]
    pub created_at: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub id_nonce: Option<String>,
    #[serde(skip_deserializing)]
    pub initial_sync: bool,
    #[serde(deserialize_with = "members")]
    pub members: Vec<ApiMember>,
    #[serde(default, deserialize_with = "flag")]
    pub open_sharing: bool,
    #[serde(skip_deserializing)]
    pub owner: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_path: Option<String>,
    #[serde(deserialize_with = "rules")]
    pub rules: Vec<Rule>,
    #[serde(skip_deserializing)]
    pub updated_at: String,
}

/// A rule as read from a request, its `values` bounded, before `Rule::from_input` checks it.
#[derive(Deserialize, Serialize)]
struct RuleWire {
    #[serde(default)]
    title: Option<String>,
    doctype: String,
    #[serde(default)]
    selector: Option<String>,
    #[serde(deserialize_with = "values")]
    values: Vec<String>,
    #[serde(default)]
    local: Option<bool>,
    #[serde(default)]
    add: Option<String>,
    #[serde(default)]
    update: Option<String>,
    #[serde(default)]
    remove: Option<String>,
}

fn values<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    bounded(d, MAX_VALUES_PER_RULE)
}

fn members<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ApiMember>, D::Error> {
    bounded(d, MAX_WIRE_MEMBERS)
}

/// At most [`MAX_RULES`] rules, each checked as a rule made here (its reason is the error).
fn rules<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Rule>, D::Error> {
    let wire: Vec<RuleWire> = bounded(d, MAX_RULES)?;
    wire.iter()
        .map(|r| {
            let v = serde_json::to_value(r).map_err(D::Error::custom)?;
            Rule::from_input(&v).map_err(D::Error::custom)
        })
        .collect()
}
