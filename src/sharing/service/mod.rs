//! The sharing operations, in the order of the flow: create → invite → discovery (owner) →
//! sharing request (recipient) → accept or refuse (recipient) → answer (owner) → members,
//! permissions, revocation. Cut along the sides: `owner` (creating, inviting, discovery, the
//! recipients' answers), `recipient` (the request, accepting or refusing, credentials) and
//! `lifecycle` (revocation, leaving, permissions); here, what several of them use. Every
//! operation is reachable as `service::name`.

mod lifecycle;
mod members;
mod owner;
mod recipient;

pub use lifecycle::*;
pub use members::*;
pub use owner::*;
pub use recipient::*;

use reqwest::Method;
use serde_json::Value;
use url::Url;

use super::model::{now_rfc3339, Member, MemberIndex, MemberStatus, PeerCredentials, Rule, Sharing, SharingId};
use super::outbox::{self, Entry};
use super::protocol::{Answer, Document, Received, ANSWER_TYPE, CREDENTIALS_TYPE, SHARINGS_TYPE};
use super::Context;
use super::{invitations, links, mail, model, request};
use super::{load, save, update, Result, SharingError};
use crate::auth::oauth::{self, OAuthClient};
use crate::auth::{random_hex, PermissionSet, Verb};
use crate::instance::Instance;
use crate::store::{json as records, DocId, Doctype};

/// A document to send, as JSON (what the outbox and the federation client carry). Our wire
/// types always serialise.
fn to_value(doc: impl serde::Serialize) -> Value {
    serde_json::to_value(doc).unwrap_or(Value::Null)
}

fn bad(reason: impl Into<String>) -> SharingError {
    SharingError::BadRequest(reason.into())
}

/// The invitation `state` of a member: derived from the instance key and the member's nonce,
/// so it is never stored and can be shown again to the owner.
pub fn member_state(inst: &Instance, sharing: &Sharing, index: MemberIndex) -> Option<String> {
    let nonce = sharing.member(index)?.state_nonce.as_deref()?;
    Some(inst.derive_secret("sharing-state", &[sharing.id(), nonce]))
}

/// The member an invitation `state` belongs to (constant-time comparison with each member's).
pub fn member_by_state(inst: &Instance, sharing: &Sharing, state: &str) -> Option<MemberIndex> {
    let mut found = None;
    for i in sharing.recipient_indexes() {
        if let Some(expected) = member_state(inst, sharing, i) {
            if Instance::secrets_match(state, &expected) {
                found = Some(i);
            }
        }
    }
    found
}

pub fn invitation_link(cx: &Context, inst: &Instance, sharing: &Sharing, index: MemberIndex) -> Option<String> {
    let state = member_state(inst, sharing, index)?;
    // With a preview path, the link opens the preview page (its code leads to discovery).
    if let Some(preview) = links::preview_link(cx, inst, sharing, index) {
        return Some(preview);
    }
    Some(format!(
        "{}/sharings/{}/discovery?state={state}",
        cx.federation.instance_url(inst.domain.as_str()),
        sharing.id()
    ))
}

fn revoked_conflict() -> SharingError {
    SharingError::Conflict("this sharing was revoked".into())
}

/// Why an invitation cannot be followed or answered any more.
fn closed_conflict(s: &Sharing) -> SharingError {
    if s.is_revoked() {
        revoked_conflict()
    } else {
        SharingError::Conflict("this invitation was already answered, or revoked".into())
    }
}

/// The index of this instance among the members of a sharing it received.
fn own_index(cx: &Context, inst: &Instance, s: &Sharing) -> Option<MemberIndex> {
    let me = cx.federation.instance_url(inst.domain.as_str());
    s.members
        .iter()
        .position(|m| m.instance.as_deref() == Some(me.as_str()) && m.status != MemberStatus::Owner)
        .map(MemberIndex)
}

fn owner_url(s: &Sharing) -> Result<Url> {
    let raw =
        s.members.first().and_then(|m| m.instance.as_deref()).ok_or_else(|| bad("the sharing has no owner address"))?;
    Url::parse(raw).map_err(|_| bad("invalid owner address"))
}

/// How long a call from the owner waits for this recipient to finish recording its acceptance
/// before it is answered "not ready yet" (see [`acceptance_recorded`]).
pub const ACCEPTANCE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// On a recipient, for a call from the owner: the sharing once this instance has finished
/// recording its acceptance (see `Sharing::accepting_here`), read again after 5 ms, then after
/// twice as long each time up to 100 ms, for at most [`ACCEPTANCE_WAIT`]; `None` when there is
/// no such sharing; a store error as it is. The owner learns of the acceptance before the
/// recipient has stored it, and its replicator starts at once: its first request waits here
/// the few milliseconds that takes, instead of being answered 503 and retried after a
/// back-off (with its batch read again). A sharing still being accepted after the wait (a
/// recipient stopped between the owner's answer and its own record) is returned as it is,
/// for the caller's 503.
pub async fn acceptance_recorded(inst: &Instance, id: &SharingId) -> Result<Option<Sharing>> {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        let s = load(inst.store.as_ref(), id).await?;
        match s {
            Some(s) if s.accepting_here() && started.elapsed() < ACCEPTANCE_WAIT => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            s => return Ok(s),
        }
    }
}

/// A call from the owner while this recipient still records its acceptance (see
/// `Sharing::accepting_here`).
fn still_accepting() -> SharingError {
    SharingError::NotReadyYet("this instance is still recording its acceptance of this sharing".into())
}

fn changed_conflict() -> SharingError {
    SharingError::Conflict("the sharing request changed since it was shown: open it again".into())
}

/// The member a peer's token stands for, when the token is a live access token of a client
/// created for `id`.
pub async fn peer_member(inst: &Instance, id: &SharingId, token: &str) -> Result<(OAuthClient, PermissionSet)> {
    let client = oauth::client_of_access_token(inst, token)
        .await?
        .ok_or(SharingError::Unauthorized("invalid, expired or revoked token"))?;
    if client.sharing_id != id.as_str() {
        return Err(SharingError::Forbidden("this token is for another sharing".into()));
    }
    let claims =
        inst.keys.verify(token, &[crate::auth::Audience::Access]).ok_or(SharingError::Unauthorized("invalid token"))?;
    let perms = claims.permissions().ok_or(SharingError::Unauthorized("invalid token"))?;
    Ok((client, perms))
}

/// Checks that a peer's permissions include `verb` on this sharing.
pub fn peer_may(perms: &PermissionSet, id: &SharingId, verb: Verb) -> bool {
    Doctype::parse("io.cozy.sharings").is_ok_and(|d| perms.allows(&d, verb, Some(id.as_str())))
}

/// Invitation links of the members who have not answered yet, for the owner.
pub fn invitations(cx: &Context, inst: &Instance, s: &Sharing) -> Vec<(MemberIndex, Member, String)> {
    s.recipient_indexes()
        .filter(|i| s.invitation_open(*i))
        .filter_map(|i| Some((i, s.member(i)?.clone(), invitation_link(cx, inst, s, i)?)))
        .collect()
}

/// The listing of `GET /sharings/`: filters and an id cursor.
pub struct ListQuery {
    pub outgoing: Option<bool>,
    pub status: Option<MemberStatus>,
    pub doctype: Option<String>,
    pub cursor: Option<String>,
    pub limit: usize,
}

pub async fn list_filtered(inst: &Instance, q: &ListQuery) -> Result<(Vec<Sharing>, Option<String>)> {
    let all = super::list(inst.store.as_ref()).await?;
    let mut out: Vec<Sharing> = all
        .into_iter()
        .filter(|s| q.cursor.as_deref().is_none_or(|c| s.id() > c))
        .filter(|s| q.outgoing.is_none_or(|o| s.owner == o))
        .filter(|s| q.doctype.as_deref().is_none_or(|d| s.rules.iter().any(|r| r.doctype == d)))
        .filter(|s| q.status.is_none_or(|st| s.members.iter().skip(1).any(|m| m.status == st)))
        .take(q.limit + 1)
        .collect();
    let next = if out.len() > q.limit {
        out.truncate(q.limit);
        out.last().map(|s| s.id().to_owned())
    } else {
        None
    };
    Ok((out, next))
}
