//! Invitation links (the DIAL model): a reusable link for a sharing, with a permission (`read`
//! or `write`, plus optional `share`), an optional `max_accepted_users` and an expiry. Anyone
//! holding the link goes through the ordinary discovery with their own instance address; each
//! use makes a NEW member (with its own state nonce), after which the flow is exactly that of a
//! personal invitation (sharing request, acceptance, credential exchange), and the member can
//! be revoked on its own.
//!
//! Storage: invitation records live inside the sharing document (`Sharing::invitations`), and
//! members made through one carry its id (`Member::invitation`). Reserving a seat and creating
//! the member is therefore one optimistic update of one document: of two concurrent uses of the
//! last seat, exactly one write wins and the other re-reads, recounts and gets
//! `The limit of maximum accepted invites is reached`. The link's code (160 random bits) is
//! never stored, only its SHA-256, here and in the code index of [`super::links`] (which lets
//! `GET /invitations/:code` find the sharing).
//!
//! Link: `<owner>/sharings/<id>/discovery?invitation=<code>`. A seat is taken when someone
//! starts discovery through the link and given back if discovery fails or they refuse; members
//! revoked later keep counting (the seat was used). Re-sharing: a ready member who joined
//! through a link with `share` may create read-only links (through its instance, which calls the
//! owner with its credentials); they never outlive the member's own link, count against its
//! `max_accepted_users`, and are revoked with the member or with the parent link.
//!
//! Revocation ends every way back in: revoking the whole sharing revokes every link of it (the
//! sharing is terminal, see `Sharing::accepts_members`); revoking one member, or a member
//! leaving, revokes the links it created, and its instance cannot take a seat again through any
//! link (only a new sharing brings it back).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use url::Url;

use super::links::{self, code_hash, in_secs, is_past, CodeRef};
use super::model::{now_rfc3339, Member, MemberStatus, Sharing, SharingId};
use super::protocol::{Document, Field, InvitationAttributes, InvitationRequest, InvitationResource};
use super::Context;
use super::MemberIndex;
use super::{load, service, update, Result, SharingError};
use crate::auth::random_hex;
use crate::federation::client::FederationError;
use crate::instance::Instance;

/// The JSON:API type of invitation resources.
pub const INVITATIONS_TYPE: &str = "io.hearth.invitations";
pub const LIMIT_REACHED: &str = "The limit of maximum accepted invites is reached";
const ONLY_READ: &str = "Invalid permissions set. The permission READ is allowed for re-sharing only";
const SHARE_ALONE: &str =
    "Invalid permissions set. SHARE must come with READ or WRITE, and the permission READ is allowed for re-sharing only";
/// Invitation records kept per sharing (revoked and expired ones are pruned first).
const MAX_RECORDS: usize = 200;
const MAX_SEATS: u64 = 10_000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Invitation {
    /// Public id (for management routes); not a secret.
    pub id: String,
    /// SHA-256 of the link's code.
    pub code_hash: String,
    /// Members made through this link may write (else read-only).
    pub write: bool,
    /// Members made through this link may re-share, read-only.
    #[serde(default)]
    pub share: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_accepted_users: Option<u32>,
    pub expires_at: String,
    pub created_at: String,
    /// Member index of the creator: 0 for the owner, else the re-sharing member (stored as the
    /// bare number).
    #[serde(default = "owner_index")]
    pub created_by: MemberIndex,
    /// For a re-share: the link the re-sharing member joined through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

impl Invitation {
    pub fn is_active(&self) -> bool {
        !self.revoked && !is_past(&self.expires_at)
    }

    pub fn permissions(&self) -> Vec<&'static str> {
        let mut p = vec![if self.write { "write" } else { "read" }];
        if self.share {
            p.push("share");
        }
        p
    }
}

/// `Invitation::created_by` when absent: the owner.
fn owner_index() -> MemberIndex {
    MemberIndex::OWNER
}

fn bad(reason: impl Into<String>) -> SharingError {
    SharingError::BadRequest(reason.into())
}

fn invalid() -> SharingError {
    SharingError::Forbidden("invalid invitation".into())
}

fn instant(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// A validated `POST /sharings/:id/invitations` body.
#[derive(Debug, PartialEq)]
pub struct NewInvitation {
    pub write: bool,
    pub share: bool,
    pub max_accepted_users: Option<u32>,
    pub expires_in: u64,
}

/// Judges an [`InvitationRequest`] in `body` (see its docs). A re-sharer may only ask for
/// `read`. Reasons of the 400s: the permissions' shape, `share` alone, a re-sharer's `write` or
/// `share`, seats from 1 to [`MAX_SEATS`], an expiry from 1 s to the configured maximum.
pub fn parse_request(cx: &Context, body: &Value, resharer: bool) -> Result<NewInvitation> {
    let ask = judge_shape(body, resharer)?;
    let max_accepted_users = match ask.max_accepted_users {
        Field::Unset => None,
        Field::Set(n) => Some(
            Some(n)
                .filter(|n| (1..=MAX_SEATS).contains(n))
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(seats_refused)?,
        ),
        Field::Invalid => return Err(seats_refused()),
    };
    let links_cfg = &cx.config.links;
    let expiry_refused =
        || bad(format!("expires_in must be a number of seconds from 1 to {}", links_cfg.max_invitation_ttl_secs));
    let expires_in = match ask.expires_in {
        Field::Unset => links_cfg.invitation_ttl_secs,
        Field::Set(n) if (1..=links_cfg.max_invitation_ttl_secs).contains(&n) => n,
        _ => return Err(expiry_refused()),
    };
    let (write, share) = ask.flags;
    Ok(NewInvitation { write, share, max_accepted_users, expires_in })
}

fn seats_refused() -> SharingError {
    bad(format!("max_accepted_users must be an integer from 1 to {MAX_SEATS}"))
}

/// A request whose permissions were judged (`flags`: write, share); the rest as asked.
struct Asked {
    flags: (bool, bool),
    max_accepted_users: Field<u64>,
    expires_in: Field<u64>,
}

/// The checks that need no configuration: the body's shape and its permissions (also made by a
/// re-sharing member's instance before it asks the owner).
fn judge_shape(body: &Value, resharer: bool) -> Result<Asked> {
    let ask = InvitationRequest::read(body).ok_or_else(|| bad("the body must be a JSON object"))?;
    let shape = || bad("permissions must be a list of read or write, and optionally share");
    let Field::Set(list) = ask.permissions else { return Err(shape()) };
    if list.is_empty() || list.len() > 3 {
        return Err(shape());
    }
    let (mut read, mut write, mut share) = (false, false, false);
    for p in &list {
        match p.to_ascii_lowercase().as_str() {
            "read" => read = true,
            "write" => write = true,
            "share" => share = true,
            _ => return Err(shape()),
        }
    }
    if !read && !write {
        return Err(bad(SHARE_ALONE));
    }
    if resharer && (write || share) {
        return Err(bad(ONLY_READ));
    }
    Ok(Asked { flags: (write, share), max_accepted_users: ask.max_accepted_users, expires_in: ask.expires_in })
}

/// Whether a member holds a seat of its link.
fn takes_seat(m: &Member) -> bool {
    m.status != MemberStatus::Refused
}

fn parent_of<'a>(s: &'a Sharing, inv: &str) -> Option<&'a str> {
    s.invitations.iter().find(|i| i.id == inv).and_then(|i| i.parent.as_deref())
}

/// Seats used on link `inv`: members made through it or through a re-share of it.
fn seats_used(s: &Sharing, inv: &str) -> usize {
    s.members
        .iter()
        .skip(1)
        .filter(|m| takes_seat(m))
        .filter(|m| m.invitation.as_deref().is_some_and(|i| i == inv || parent_of(s, i) == Some(inv)))
        .count()
}

fn count_members(s: &Sharing, inv: &str, pred: impl Fn(MemberStatus) -> bool) -> usize {
    s.members.iter().skip(1).filter(|m| m.invitation.as_deref() == Some(inv) && pred(m.status)).count()
}

/// Forgets revoked or expired records nobody refers to any more.
fn prune(s: &mut Sharing) {
    let referenced: Vec<String> = s
        .members
        .iter()
        .filter_map(|m| m.invitation.clone())
        .chain(s.invitations.iter().filter_map(|i| i.parent.clone()))
        .collect();
    s.invitations.retain(|i| i.is_active() || referenced.contains(&i.id));
}

/// Creates an invitation link for sharing `id` (on its owner). `creator` is 0 for the owner,
/// or the index of a ready member re-sharing. Answers the record and the link (the only time
/// the link is shown).
pub async fn create(
    cx: &Context,
    inst: &Instance,
    id: &SharingId,
    creator: MemberIndex,
    body: &Value,
) -> Result<(Invitation, String)> {
    let req = parse_request(cx, body, !creator.is_owner())?;
    // The records as they were, so that the entries of those pruned can go.
    let pruned_before: Vec<String> = load(inst.store.as_ref(), id)
        .await?
        .map(|s| s.invitations.iter().filter(|i| !i.is_active()).map(|i| i.code_hash.clone()).collect())
        .unwrap_or_default();
    let code = links::new_code();
    let hash = code_hash(&code);
    let inv_id = random_hex(16);
    let (inv, s) = update(inst.store.as_ref(), id, |s| {
        if !s.owner {
            return Err(SharingError::Forbidden("only the owner's instance keeps invitation links".into()));
        }
        if !s.accepts_members() {
            return Err(SharingError::Conflict("this sharing was revoked".into()));
        }
        let mut inv = Invitation {
            id: inv_id.clone(),
            code_hash: hash.clone(),
            write: req.write,
            share: req.share,
            max_accepted_users: req.max_accepted_users,
            expires_at: in_secs(req.expires_in),
            created_at: now_rfc3339(),
            created_by: creator,
            parent: None,
            revoked: false,
        };
        if !creator.is_owner() {
            let m = s
                .member(creator)
                .filter(|m| m.status == MemberStatus::Ready)
                .ok_or_else(|| SharingError::Forbidden("only ready members may re-share".into()))?;
            let parent = m
                .invitation
                .as_deref()
                .and_then(|p| s.invitations.iter().find(|i| i.id == p))
                .filter(|p| p.share)
                .ok_or_else(|| bad("this sharing was not shared with you with the SHARE permission"))?;
            if !parent.is_active() {
                return Err(bad("the invitation you joined with has expired or was revoked: re-sharing is over"));
            }
            // A re-share only narrows: never a later expiry than the re-sharer's own link.
            if instant(&inv.expires_at) > instant(&parent.expires_at) {
                inv.expires_at = parent.expires_at.clone();
            }
            inv.parent = Some(parent.id.clone());
        }
        prune(s);
        if s.invitations.len() >= MAX_RECORDS {
            return Err(bad(format!("a sharing keeps at most {MAX_RECORDS} invitation links")));
        }
        s.invitations.push(inv.clone());
        Ok(inv)
    })
    .await?;
    // The code's index entry, once the link exists (a refused request leaves nothing behind);
    // entries of the records pruned above go. Without its entry the code opens nothing, so a
    // failure here revokes the link, whose code nobody was shown.
    let target = CodeRef::Invitation { sharing_id: id.to_string(), invitation_id: inv_id.clone() };
    if let Err(e) = links::index_code(inst, &hash, &target).await {
        let revoked = update(inst.store.as_ref(), id, |s| {
            revoke_where(s, |i| i.id == inv_id);
            Ok(())
        })
        .await;
        if let Err(r) = revoked {
            tracing::warn!(instance = %inst.domain, sharing = %id, error = %r, "an unindexed invitation link stays");
        }
        return Err(e.into());
    }
    let kept: std::collections::HashSet<&str> = s.invitations.iter().map(|i| i.code_hash.as_str()).collect();
    links::unindex_codes(inst, pruned_before.into_iter().filter(|h| !kept.contains(h.as_str()))).await;
    tracing::info!(instance = %inst.domain, sharing = %id, invitation = %inv.id, by = creator.get(), "invitation link created");
    let link =
        format!("{}/sharings/{id}/discovery?invitation={code}", cx.federation.instance_url(inst.domain.as_str()));
    Ok((inv, link))
}

fn find_by_hash<'a>(s: &'a Sharing, hash: &str) -> Option<&'a Invitation> {
    let mut found = None;
    for inv in &s.invitations {
        if Instance::secrets_match(hash, &inv.code_hash) {
            found = Some(inv);
        }
    }
    found
}

/// The sharing an invitation code opens, for the discovery page (403 for unknown, revoked and
/// expired codes alike).
pub async fn discovery_view(inst: &Instance, id: &SharingId, code: &str) -> Result<Sharing> {
    let s = load(inst.store.as_ref(), id).await?.filter(|s| s.owner && s.accepts_members()).ok_or_else(invalid)?;
    let ok = find_by_hash(&s, &code_hash(code)).is_some_and(Invitation::is_active);
    if ok {
        Ok(s)
    } else {
        Err(invalid())
    }
}

/// Atomically takes a seat of the link and makes the member for `peer` (or finds the member
/// this instance already started with through the same link). Answers its index.
async fn reserve(cx: &Context, inst: &Instance, id: &SharingId, code: &str, peer: &str) -> Result<MemberIndex> {
    let hash = code_hash(code);
    let max_members = cx.config.federation.max_members;
    let (index, _) = update(inst.store.as_ref(), id, |s| {
        if !s.owner || !s.accepts_members() {
            return Err(invalid());
        }
        let inv = find_by_hash(s, &hash).filter(|i| i.is_active()).cloned().ok_or_else(invalid)?;
        // A member revoked (or who left) does not come back through a link: only a new
        // sharing brings it back.
        if s.instance_revoked(peer) {
            return Err(SharingError::Forbidden("this instance was revoked from this sharing".into()));
        }
        if let Some(p) = &inv.parent {
            if !s.invitations.iter().any(|x| &x.id == p && !x.revoked) {
                return Err(invalid());
            }
        }
        // The same instance coming back through the same link resumes its pending seat.
        let again = s.recipient_indexes().find(|&i| {
            let m = &s.members[i];
            m.invitation.as_deref() == Some(inv.id.as_str())
                && m.instance.as_deref() == Some(peer)
                && (m.status.is_invited() || m.status == MemberStatus::Ready)
        });
        if let Some(i) = again {
            if s.members[i].status == MemberStatus::Ready {
                return Err(SharingError::Conflict("this instance already accepted this invitation".into()));
            }
            return Ok(i);
        }
        // An instance that is already in the sharing (invited personally, or through another
        // link) gets a clear 409 here, not a seat its instance would refuse.
        service::already_there(s, MemberIndex::OWNER, peer)?;
        for link in [Some(inv.id.as_str()), inv.parent.as_deref()].into_iter().flatten() {
            let max = s.invitations.iter().find(|x| x.id == link).and_then(|x| x.max_accepted_users);
            if max.is_some_and(|max| seats_used(s, link) >= max as usize) {
                return Err(bad(LIMIT_REACHED));
            }
        }
        if s.members.len() >= max_members {
            return Err(bad(format!("a sharing has at most {max_members} members")));
        }
        let mut m = Member::new(MemberStatus::Pending);
        m.instance = Some(peer.to_owned());
        m.read_only = !inv.write;
        m.state_nonce = Some(random_hex(16));
        m.xor_key = Some(random_hex(16));
        m.invitation = Some(inv.id.clone());
        m.added_by = (!inv.created_by.is_owner()).then_some(inv.created_by);
        s.members.push(m);
        Ok(MemberIndex(s.members.len() - 1))
    })
    .await?;
    Ok(index)
}

/// Gives a seat back when the discovery that took it failed.
async fn release(inst: &Instance, id: &SharingId, index: MemberIndex) {
    let r = update(inst.store.as_ref(), id, |s| {
        if let Some(m) = s.member_mut(index) {
            if m.status.is_invited() {
                m.status = MemberStatus::Refused;
            }
        }
        Ok(())
    })
    .await;
    if let Err(e) = r {
        tracing::warn!(instance = %inst.domain, sharing = %id, member = index.get(), error = %e, "failed to give a seat back");
    }
}

/// `POST /sharings/:id/discovery` with `invitation`: checks the address, takes a seat (a new
/// member), then continues as a personal invitation of that member. Answers the redirect.
pub async fn discover(cx: &Context, inst: &Instance, id: &SharingId, code: &str, url: &str) -> Result<String> {
    let peer = cx.federation.normalise_instance_url(url).map_err(|e| match e {
        FederationError::Guard(g) => bad(format!("this address cannot be used: {g}")),
        other => SharingError::Peer(other),
    })?;
    let peer_str = peer.as_str().trim_end_matches('/').to_owned();
    if peer_str == cx.federation.instance_url(inst.domain.as_str()) {
        return Err(bad("the recipient's instance cannot be the owner's"));
    }
    let index = reserve(cx, inst, id, code, &peer_str).await?;
    let s = load(inst.store.as_ref(), id).await?.ok_or_else(invalid)?;
    let state = service::member_state(inst, &s, index).ok_or_else(invalid)?;
    match service::discover(cx, inst, id, &state, url).await {
        Ok(redirect) => {
            let inv = s.member(index).and_then(|m| m.invitation.clone()).unwrap_or_default();
            tracing::info!(instance = %inst.domain, sharing = %id, invitation = %inv, member = index.get(), "invitation link used");
            Ok(redirect)
        }
        Err(e) => {
            release(inst, id, index).await;
            Err(e)
        }
    }
}

/// Marks the links matching `pred`, and the re-shares made from them, revoked; members who had
/// not answered yet through them are revoked too. Answers the ids of the links revoked.
fn revoke_where(s: &mut Sharing, pred: impl Fn(&Invitation) -> bool) -> Vec<String> {
    let mut ids: Vec<String> = s.invitations.iter().filter(|i| !i.revoked && pred(i)).map(|i| i.id.clone()).collect();
    let children: Vec<String> = s
        .invitations
        .iter()
        .filter(|i| !i.revoked && i.parent.as_ref().is_some_and(|p| ids.contains(p)))
        .map(|i| i.id.clone())
        .collect();
    ids.extend(children);
    for inv in s.invitations.iter_mut().filter(|i| ids.contains(&i.id)) {
        inv.revoked = true;
    }
    for m in s.members.iter_mut().skip(1) {
        if m.status.is_invited() && m.invitation.as_ref().is_some_and(|i| ids.contains(i)) {
            m.status = MemberStatus::Revoked;
        }
    }
    ids
}

/// Revocation of the whole sharing: every link stops working (and members who had not
/// answered through one are revoked).
pub fn revoke_all(s: &mut Sharing) {
    revoke_where(s, |_| true);
}

/// Hook of member revocation (owner revokes, member leaves): the links that member created
/// stop working.
pub fn revoke_created_by(s: &mut Sharing, index: MemberIndex) {
    if !index.is_owner() {
        revoke_where(s, |i| i.created_by == index);
    }
}

/// `DELETE /sharings/:id/invitations/:inv`: the link (and its re-shares) stops working; the
/// members made through it stay unless `revoke_members`.
pub async fn revoke(
    cx: &Context,
    inst: &Instance,
    id: &SharingId,
    inv_id: &str,
    revoke_members: bool,
) -> Result<Sharing> {
    let (ready, mut s) = update(inst.store.as_ref(), id, |s| {
        if !s.owner {
            return Err(SharingError::Forbidden("only the owner revokes invitation links".into()));
        }
        if !s.invitations.iter().any(|i| i.id == inv_id) {
            return Err(SharingError::NotFound("no such invitation".into()));
        }
        let ids = revoke_where(s, |i| i.id == inv_id);
        let ids: Vec<String> = if ids.is_empty() {
            // Already revoked: its re-shares still count for revoke_members.
            s.invitations
                .iter()
                .filter(|i| i.id == inv_id || i.parent.as_deref() == Some(inv_id))
                .map(|i| i.id.clone())
                .collect()
        } else {
            ids
        };
        Ok(s.recipient_indexes()
            .filter(|&i| {
                let m = &s.members[i];
                m.status == MemberStatus::Ready && m.invitation.as_ref().is_some_and(|x| ids.contains(x))
            })
            .collect::<Vec<_>>())
    })
    .await?;
    tracing::info!(instance = %inst.domain, sharing = %id, invitation = %inv_id, "invitation link revoked");
    if revoke_members {
        for i in ready {
            s = service::revoke(cx, inst, id, Some(i)).await?;
        }
    }
    Ok(s)
}

/// The JSON:API view of a link for its owner (never its code).
pub fn to_api(s: &Sharing, inv: &Invitation) -> InvitationResource {
    InvitationResource {
        attributes: InvitationAttributes {
            accepted: count_members(s, &inv.id, |st| st == MemberStatus::Ready),
            active: inv.is_active(),
            created_at: inv.created_at.clone(),
            created_by: inv.created_by,
            expires_at: inv.expires_at.clone(),
            link: None,
            max_accepted_users: inv.max_accepted_users,
            parent: inv.parent.clone(),
            pending: count_members(s, &inv.id, MemberStatus::is_invited),
            permissions: inv.permissions().into_iter().map(str::to_owned).collect(),
            seats_used: seats_used(s, &inv.id),
            sharing_id: s.id().to_owned(),
        },
        id: inv.id.clone(),
        kind: INVITATIONS_TYPE.to_owned(),
    }
}

/// The active links of a sharing, with their accept counts.
pub fn active_list(s: &Sharing) -> Vec<InvitationResource> {
    s.invitations.iter().filter(|i| i.is_active()).map(|i| to_api(s, i)).collect()
}

/// `GET /invitations/:code`: what the link offers, for whoever holds it; `None` for unknown,
/// revoked and expired codes alike.
pub async fn details(inst: &Instance, code: &str) -> Result<Option<Value>> {
    if code.is_empty() || code.len() > 256 {
        return Ok(None);
    }
    let hash = code_hash(code);
    let Some(CodeRef::Invitation { sharing_id, invitation_id }) = links::lookup_code(inst, &hash).await? else {
        return Ok(None);
    };
    let Ok(sid) = SharingId::parse(&sharing_id) else {
        return Ok(None);
    };
    let Some(s) = load(inst.store.as_ref(), &sid).await?.filter(|s| s.owner && s.accepts_members()) else {
        return Ok(None);
    };
    let Some(inv) = find_by_hash(&s, &hash).filter(|i| i.id == invitation_id && i.is_active()) else {
        return Ok(None);
    };
    let rules: Vec<Value> = s
        .rules
        .iter()
        .filter(|r| !r.local)
        .map(|r| json!({"title": r.title, "doctype": r.doctype, "documents": r.values.len()}))
        .collect();
    let seats_left = inv.max_accepted_users.map(|m| (m as usize).saturating_sub(seats_used(&s, &inv.id)));
    Ok(Some(json!({
        "type": INVITATIONS_TYPE,
        "id": inv.id,
        "attributes": {
            "sharing_id": s.id(),
            "description": s.description,
            "owner": s.members[0].public_name,
            "rules": rules,
            "permissions": inv.permissions(),
            "expires_at": inv.expires_at,
            "max_accepted_users": inv.max_accepted_users,
            "seats_left": seats_left,
            "accepted": count_members(&s, &inv.id, |st| st == MemberStatus::Ready),
        },
        "links": {"discovery": format!("/sharings/{}/discovery", s.id())},
    })))
}

/// On a recipient: a member's app asks to re-share; the request goes to the owner with this
/// instance's credentials (the owner decides; what needs no configuration is checked here
/// first, with the owner's reasons), and the owner's answer (the link, shown this once) comes
/// back; an answer that is not one answers 502. A refreshed access token is kept.
pub async fn forward(
    cx: &Context,
    inst: &Instance,
    id: &SharingId,
    body: &Value,
) -> Result<Document<InvitationResource>> {
    let asked = judge_shape(body, true)?;
    let request = InvitationRequest {
        expires_in: asked.expires_in,
        max_accepted_users: asked.max_accepted_users,
        permissions: Field::Set(vec!["read".to_owned()]),
    };
    let request = serde_json::to_value(&request).map_err(|e| bad(e.to_string()))?;
    let s = load(inst.store.as_ref(), id).await?.ok_or_else(|| SharingError::NotFound("no such sharing".into()))?;
    if s.owner || !s.active {
        return Err(SharingError::Forbidden("re-sharing needs an active sharing received from its owner".into()));
    }
    let owner = s
        .members
        .first()
        .and_then(|m| m.instance.as_deref())
        .and_then(|u| Url::parse(u).ok())
        .ok_or_else(|| bad("the sharing has no owner address"))?;
    let mut creds = s.members[0]
        .outbound
        .clone()
        .ok_or_else(|| SharingError::Forbidden("no credentials for the owner's instance".into()))?;
    let before = creds.access_token.clone();
    let result = cx
        .federation
        .call_peer(&mut creds, &owner, reqwest::Method::POST, &format!("/sharings/{id}/invitations"), Some(&request))
        .await;
    if creds.access_token != before {
        let kept = update(inst.store.as_ref(), id, |s| {
            if let Some(o) = s.members[0].outbound.as_mut().filter(|o| o.client_id == creds.client_id) {
                o.access_token = creds.access_token.clone();
                o.refresh_token = creds.refresh_token.clone();
            }
            Ok(())
        })
        .await;
        if let Err(e) = kept {
            tracing::warn!(instance = %inst.domain, sharing = %id, error = %e, "failed to keep a refreshed token");
        }
    }
    let answer = result.map_err(|e| match e {
        FederationError::Status { status: 400, reason, .. } => SharingError::BadRequest(reason),
        FederationError::Status { status: 403, reason, .. } => SharingError::Forbidden(reason),
        FederationError::Status { status: 404, .. } => SharingError::NotFound("no such sharing on its owner".into()),
        other => SharingError::Peer(other),
    })?;
    created_link(answer).ok_or_else(|| SharingError::Peer(FederationError::BadResponse { peer: origin_of(&owner) }))
}

/// The owner's answer to a re-share, when it is one: an invitation link, with its `link`.
fn created_link(answer: Value) -> Option<Document<InvitationResource>> {
    serde_json::from_value::<Document<InvitationResource>>(answer)
        .ok()
        .filter(|d| d.data.kind == INVITATIONS_TYPE && d.data.attributes.link.is_some())
}

/// `scheme://host:port` of a peer, as errors name it.
fn origin_of(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// `POST /sharings/:id/discard` on a recipient, for a request not accepted: forgets it here
/// (marked refused, so it is not shown as pending any more), without telling the owner (the
/// route refuses through the owner first when it holds the member's `answer_state`).
pub async fn drop_request(inst: &Instance, id: &SharingId) -> Result<Sharing> {
    let (_, s) = update(inst.store.as_ref(), id, |s| {
        if s.owner {
            return Err(bad("the owner revokes the sharing instead of discarding it"));
        }
        for m in s.members.iter_mut().skip(1) {
            if m.status.is_invited() {
                m.status = MemberStatus::Refused;
            }
        }
        Ok(())
    })
    .await?;
    super::request::unmark_pending(inst, &s).await;
    tracing::info!(instance = %inst.domain, sharing = %id, "sharing request discarded");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sharing_with(invitations: Vec<Invitation>, members: Vec<Member>) -> Sharing {
        let mut all = vec![Member::new(MemberStatus::Owner)];
        all.extend(members);
        Sharing {
            id: Some(SharingId::generate()),
            rev: None,
            description: String::new(),
            preview_path: None,
            app_slug: None,
            owner: true,
            active: true,
            open_sharing: false,
            initial_sync: false,
            created_at: now_rfc3339(),
            updated_at: now_rfc3339(),
            rules: vec![],
            members: all,
            invitations,
            id_nonce: None,
            revoked_at: None,
        }
    }

    fn inv(id: &str, parent: Option<&str>, created_by: usize) -> Invitation {
        Invitation {
            id: id.into(),
            code_hash: code_hash(id),
            write: false,
            share: parent.is_none(),
            max_accepted_users: Some(3),
            expires_at: in_secs(3600),
            created_at: now_rfc3339(),
            created_by: MemberIndex(created_by),
            parent: parent.map(str::to_owned),
            revoked: false,
        }
    }

    fn member(inv: &str, status: MemberStatus) -> Member {
        let mut m = Member::new(status);
        m.invitation = Some(inv.into());
        m
    }

    #[test]
    fn creators_and_adders_are_stored_as_bare_numbers() {
        let mut i = inv("a", None, 2);
        i.created_at = "t".into();
        i.expires_at = "t".into();
        let stored = serde_json::to_value(&i).unwrap();
        assert_eq!(stored["created_by"], json!(2));
        let mut old = stored.clone();
        old.as_object_mut().unwrap().remove("created_by");
        let read: Invitation = serde_json::from_value(old).unwrap();
        assert_eq!(read.created_by, MemberIndex::OWNER, "absent: the owner, as before");
        let mut m = Member::new(MemberStatus::Ready);
        m.added_by = Some(MemberIndex(3));
        let stored = serde_json::to_value(&m).unwrap();
        assert_eq!(stored["added_by"], json!(3));
        assert_eq!(serde_json::from_value::<Member>(stored).unwrap().added_by, Some(MemberIndex(3)));
    }

    #[test]
    fn seats_count_re_shares_against_the_parent_and_ignore_refusals() {
        let s = sharing_with(
            vec![inv("a", None, 0), inv("b", Some("a"), 1)],
            vec![
                member("a", MemberStatus::Ready),
                member("b", MemberStatus::Seen),
                member("b", MemberStatus::Refused),
                member("a", MemberStatus::Revoked),
            ],
        );
        assert_eq!(seats_used(&s, "a"), 3);
        assert_eq!(seats_used(&s, "b"), 1);
    }

    #[test]
    fn revoking_a_member_revokes_its_links_and_their_pending_members() {
        let mut s = sharing_with(
            vec![inv("a", None, 0), inv("b", Some("a"), 1)],
            vec![
                member("a", MemberStatus::Ready),
                member("b", MemberStatus::Pending),
                member("b", MemberStatus::Ready),
            ],
        );
        revoke_created_by(&mut s, MemberIndex(1));
        assert!(!s.invitations[0].revoked && s.invitations[1].revoked);
        assert_eq!(s.members[2].status, MemberStatus::Revoked);
        assert_eq!(s.members[3].status, MemberStatus::Ready, "members who accepted stay");
        // Revoking the parent link revokes its re-shares.
        let mut s = sharing_with(vec![inv("a", None, 0), inv("b", Some("a"), 1)], vec![]);
        assert_eq!(revoke_where(&mut s, |i| i.id == "a"), vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn a_re_share_takes_only_an_invitation_link_from_the_owner() {
        let s = sharing_with(vec![inv("a", None, 0)], vec![]);
        let mut link = to_api(&s, &s.invitations[0]);
        assert!(created_link(serde_json::to_value(Document { data: link.clone() }).unwrap()).is_none(), "no link");
        link.attributes.link = Some("https://owner.example/sharings/x/discovery?invitation=c".into());
        let answer = serde_json::to_value(Document { data: link.clone() }).unwrap();
        assert_eq!(created_link(answer.clone()).map(|d| d.data), Some(link));
        for bad in [Value::Null, json!({"data": null}), json!("<html>"), json!({"data": {"type": "io.cozy.sharings"}})]
        {
            assert!(created_link(bad.clone()).is_none(), "{bad}");
        }
        let mut other = answer;
        other["data"]["type"] = json!("io.cozy.sharings");
        assert!(created_link(other).is_none());
    }

    #[test]
    fn records_expired_or_revoked_and_unused_are_pruned() {
        let mut old = inv("old", None, 0);
        old.expires_at = "2000-01-01T00:00:00Z".into();
        let mut used = inv("used", None, 0);
        used.revoked = true;
        let mut s = sharing_with(vec![old, used, inv("live", None, 0)], vec![member("used", MemberStatus::Ready)]);
        prune(&mut s);
        assert_eq!(s.invitations.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["used", "live"]);
    }
}
