//! The sharing request (DESIGN.md §3, step 3): how the owner's instance offers a sharing to a
//! recipient's instance, and how the recipient makes sure that what it shows its owner, and
//! what gets accepted, comes from the sharing's owner and from nobody else. Both sides of each
//! message are here: the notice, the request document, the digest, the pending-request index.
//!
//! The flow:
//! 1. Discovery on the owner records the recipient's instance address on the member, then
//!    sends `PUT <recipient>/sharings/<id>` with a small *notice* (at most [`MAX_NOTICE_BYTES`]):
//!    `{"data": {"type": "io.cozy.sharings", "id": ID, "attributes": {"id_nonce": NONCE,
//!    "members": [{"status": "owner", "instance": OWNER_URL, "public_name": NAME}]},
//!    "meta": {"request_token": TOKEN}}}`.
//! 2. The recipient checks that `ID` derives from `OWNER_URL` and `NONCE`
//!    ([`SharingId::derived`]), then fetches the request back from that owner:
//!    `GET <OWNER_URL>/sharings/<ID>/request` with `Authorization: Bearer <TOKEN>`. The owner
//!    answers, while that member's invitation is open, the request for the member the token
//!    belongs to, in the shape of Cozy's `PUT /sharings/:id` body ([`request_document`]).
//! 3. The recipient stores what the owner answered, never what the notice said, and only if
//!    it is addressed to this instance.
//! 4. The acceptance page shows the stored request with its [`digest`]; accepting carries
//!    that digest and is refused (409) when the stored request changed since it was shown.
//!    The answer to the owner carries it too, and the owner refuses it (409) unless it is the
//!    digest of the request it offers that member: the rules accepted are the rules read.
//!
//! Threat model: someone sends `PUT /sharings/<id>` to a recipient without being the owner.
//! - *Knows the sharing id* (it is in every invitation link): they can name the owner's address
//!   and nonce, but cannot make a request token for this recipient (an HMAC of the owner's key
//!   and the member's nonce, which the owner gives only to the recipient's instance, in its own
//!   notice): the fetch-back fails, nothing is stored or replaced. A co-recipient's own token
//!   fetches the request addressed to the co-recipient's instance: refused, not addressed here.
//! - *Also runs an instance*: it can serve any request it likes, but only under ids derived from
//!   its own address. An id of another owner's sharing does not derive from it (finding one
//!   means breaking SHA-256): refused. Requests under its own ids are stored as what they are,
//!   requests from it, and the acceptance page shows its address next to its chosen name.
//! - *Pre-empts the first PUT* (sends one before the owner does, to plant a request or to hold
//!   the id): one of the two cases above, so nothing is stored and the owner's own notice later
//!   goes through. A stored request's owner address never changes, and a stored request is
//!   replaced only after a successful fetch-back from that stored owner.
//!
//! What an anonymous caller can make a recipient hold or do: a notice body of at most
//! [`MAX_NOTICE_BYTES`] (413 beyond, before reading it); then, only for a well-formed notice
//! whose id derives from its owner address, one fetch of at most [`MAX_REQUEST_BYTES`] within
//! [`FETCH_DEADLINE`], [`MAX_CONCURRENT_FETCHES`] at once per process, parsed into bounded types
//! (a list longer than its limit stops the parse). Pending requests are at most
//! `max_pending_requests_per_peer` per owner address and [`PENDING_PEERS_FACTOR`] times that in
//! all, counted from a small index of ids ([`PENDING_DOCTYPE`]) without reading any request.

use std::time::Duration;

use reqwest::Method;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use url::Url;

use super::model::{now_rfc3339, Member, MemberIndex, MemberStatus, Rule, Sharing, SharingId};
use super::protocol::{
    Document, Lenient, Notice, NoticeAttributes, NoticeMeta, NoticeOwner, RequestAttributes, RequestMeta,
    RequestResource, SharingRequest,
};
use super::Context;
use super::{load, save, Result, SharingError};
use crate::instance::Instance;
use crate::store::{json as records, AllDocsQuery, AllDocsRow, DocId, Doctype, Store, StoreError};

/// Largest body of an unauthenticated request (`PUT /sharings/:id`, `POST /sharings/:id/answer`,
/// the HTML forms): the notice and the answer are a few hundred bytes.
pub const MAX_NOTICE_BYTES: usize = 64 * 1024;

/// Largest request document a recipient reads from an owner. The largest request hearth makes
/// is about 1.2 MB: [`super::model::MAX_RULES`] rules of [`super::model::MAX_VALUES_PER_RULE`] values of at most
/// [`super::model::MAX_VALUE_BYTES`] bytes (each at most doubled by JSON escapes), plus 100
/// members (the default `max_members`) of at most 1.1 KB; the unit test
/// `the_largest_request_fits_the_fetch_limit` builds it.
pub const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;

/// How long a recipient waits for the owner's request document.
pub const FETCH_DEADLINE: Duration = Duration::from_secs(10);

/// Fetch-backs running at once in a process; more wait, and give up (429) after
/// [`FETCH_DEADLINE`].
pub const MAX_CONCURRENT_FETCHES: usize = 4;

/// The total of pending requests an instance keeps is this many times the per-peer limit.
pub const PENDING_PEERS_FACTOR: usize = 25;

/// Index of the pending requests received here: one empty document per request, with id
/// `<first 16 hex digits of SHA-256(owner address)>-<sharing id>`, so the requests from one
/// owner are a range of ids.
pub const PENDING_DOCTYPE: &str = "io.hearth.sharing-requests";

fn bad(reason: impl Into<String>) -> SharingError {
    SharingError::BadRequest(reason.into())
}

/// The token that lets member `index`'s instance fetch its request back (owner side): derived
/// from the instance key and the member's nonce, never stored, distinct from the `state`.
pub fn request_token(inst: &Instance, s: &Sharing, index: MemberIndex) -> Option<String> {
    let nonce = s.member(index)?.state_nonce.as_deref()?;
    Some(inst.derive_secret("sharing-request", &[s.id(), nonce]))
}

fn member_by_token(inst: &Instance, s: &Sharing, token: &str) -> Option<MemberIndex> {
    let mut found = None;
    for i in s.recipient_indexes() {
        if request_token(inst, s, i).is_some_and(|t| Instance::secrets_match(token, &t)) {
            found = Some(i);
        }
    }
    found
}

/// The notice the owner sends in `PUT /sharings/:id` for member `index`.
pub fn notice(inst: &Instance, s: &Sharing, index: MemberIndex) -> Option<Value> {
    let token = request_token(inst, s, index)?;
    let owner = s.members.first()?;
    let owner = NoticeOwner {
        instance: owner.instance.clone(),
        public_name: owner.public_name.clone(),
        status: MemberStatus::Owner.as_str().to_owned(),
    };
    let data = Notice {
        attributes: NoticeAttributes { id_nonce: s.id_nonce.clone(), members: Some(vec![Lenient(Some(owner))]) },
        id: s.id().to_owned(),
        meta: NoticeMeta { request_token: Some(token) },
        kind: super::SHARINGS_DOCTYPE.to_owned(),
    };
    serde_json::to_value(Document { data }).ok()
}

/// Whether member `member`'s address, name and email are shown to member `target`: only the
/// owner's and `target`'s own; every other member is reduced to its status, public name and
/// read-only flag. The one rule of the sharing request and of the member list
/// (`service::members_document`).
pub fn shows_address(member: MemberIndex, target: MemberIndex) -> bool {
    member.is_owner() || member == target
}

/// The request for member `target`, as its instance fetches it: Cozy's `PUT /sharings/:id`
/// body, without any secret; the other members reduced to their status and public name, the
/// rules' document ids transformed with the member's key (see `sharing::xor`), local rules left
/// out.
pub fn request_document(s: &Sharing, target: MemberIndex) -> SharingRequest {
    let mut shown = s.clone();
    if let Some(key) = s.member(target).and_then(|m| m.xor_key.as_deref()).and_then(crate::sharing::xor::parse_key) {
        for r in shown.rules.iter_mut().filter(|r| r.selector.is_none()) {
            r.values = r.values.iter().map(|v| crate::sharing::xor::xor_id(v, &key)).collect();
        }
    }
    for (i, m) in shown.members.iter_mut().enumerate() {
        if !shows_address(MemberIndex(i), target) {
            m.instance = None;
            m.email = None;
            m.name = None;
        }
    }
    shown.rules.retain(|r| !r.local);
    let api = shown.api();
    let a = api.attributes;
    SharingRequest {
        data: RequestResource {
            attributes: RequestAttributes {
                app_slug: a.app_slug,
                created_at: a.created_at,
                description: Some(a.description),
                id_nonce: s.id_nonce.clone(),
                initial_sync: a.initial_sync,
                members: a.members,
                open_sharing: a.open_sharing,
                owner: a.owner,
                preview_path: a.preview_path,
                rules: a.rules,
                updated_at: a.updated_at,
            },
            id: api.id,
            links: Some(api.links),
            meta: Some(api.meta),
            kind: api.kind,
        },
        meta: None,
    }
}

/// A request as written on the wire: through a JSON value, so its members come out in
/// alphabetical order at every depth (see `protocol::request`).
fn wire(doc: &SharingRequest) -> Result<Value> {
    serde_json::to_value(doc).map_err(|e| bad(e.to_string()))
}

/// `GET /sharings/:id/request` on the owner: the request of the member whose request token
/// this is, while its invitation is open and its instance is known (403 otherwise, the same
/// for an unknown token and a closed invitation).
pub async fn serve(inst: &Instance, id: &SharingId, token: &str) -> Result<Value> {
    let refused = || SharingError::Forbidden("invalid request token, or the invitation is closed".into());
    let s = load(inst.store.as_ref(), id).await?.filter(|s| s.owner).ok_or_else(refused)?;
    let index = member_by_token(inst, &s, token).ok_or_else(refused)?;
    if !s.invitation_open(index) || s.member(index).is_none_or(|m| m.instance.is_none()) {
        return Err(refused());
    }
    let mut doc = request_document(&s, index);
    // The member's `state`, for its instance only (the holder of its request token): it lets
    // the recipient's apps answer without the invitation link, which carries the same state.
    doc.meta = super::service::member_state(inst, &s, index).map(|state| RequestMeta { state: Some(state) });
    wire(&doc)
}

/// What a recipient shows and what its acceptance covers, in a fixed field order.
#[derive(Serialize)]
struct Shown<'a> {
    owner: Option<&'a str>,
    owner_name: Option<&'a str>,
    description: &'a str,
    rules: &'a [Rule],
    read_only: bool,
}

/// The digest of a request as member `target` sees it: SHA-256 (hex) of its owner's address
/// and name, its description, its rules and whether the member is read-only.
pub fn digest(s: &Sharing, target: MemberIndex) -> String {
    let owner = s.members.first();
    let shown = Shown {
        owner: owner.and_then(|m| m.instance.as_deref()),
        owner_name: owner.and_then(|m| m.public_name.as_deref()),
        description: &s.description,
        rules: &s.rules,
        read_only: s.member(target).is_some_and(|m| m.read_only),
    };
    hex::encode(Sha256::digest(serde_json::to_vec(&shown).unwrap_or_default()))
}

/// The digest of the request the owner offers member `index` (owner side): that of the
/// request document once read back as a recipient reads it.
pub fn offered_digest(s: &Sharing, index: MemberIndex) -> Result<String> {
    let bytes = serde_json::to_vec(&wire(&request_document(s, index))?).map_err(|e| bad(e.to_string()))?;
    let (offered, _) = parse_document(&bytes, &SharingId::parse(s.id()).map_err(bad)?, usize::MAX)?;
    Ok(digest(&offered, index))
}

fn clip(s: Option<String>, max_chars: usize) -> Option<String> {
    s.map(|s| s.chars().filter(|c| !c.is_control()).take(max_chars).collect())
}

/// Reads a request document (recipient side) into an inactive, not-owned sharing with the same
/// validation as a sharing created here, and the member's `state` if the owner gave it.
/// `max_members` counts the owner.
fn parse_document(bytes: &[u8], id: &SharingId, max_members: usize) -> Result<(Sharing, Option<String>)> {
    let wire: SharingRequest = serde_json::from_slice(bytes).map_err(|e| {
        // The reason without serde's position in the owner's text.
        let e = e.to_string();
        bad(format!("the sharing request is invalid: {}", e.split(" at line ").next().unwrap_or(&e)))
    })?;
    let state = wire.meta.and_then(|m| clip(m.state, 256)).filter(|s| !s.is_empty());
    let data = wire.data;
    if data.kind != super::SHARINGS_DOCTYPE || data.id != id.as_str() {
        return Err(bad("the sharing request is for another sharing"));
    }
    let a = data.attributes;
    if a.rules.is_empty() {
        return Err(bad("a sharing needs rules"));
    }
    if a.members.len() < 2 || a.members.len() > max_members {
        return Err(bad("a sharing request needs its members, within this instance's limit"));
    }
    let members = a
        .members
        .into_iter()
        .map(|m| {
            let status = MemberStatus::parse(&m.status).ok_or_else(|| bad("invalid member status"))?;
            let mut member = Member::new(status);
            member.name = clip(m.name, 512);
            member.public_name = clip(m.public_name, 512);
            member.email = clip(m.email, 512);
            member.instance = clip(m.instance, 512);
            member.read_only = m.read_only;
            Ok(member)
        })
        .collect::<Result<Vec<_>>>()?;
    if members[0].status != MemberStatus::Owner || members[1..].iter().any(|m| m.status == MemberStatus::Owner) {
        return Err(bad("the first member, and only it, must be the owner"));
    }
    let now = now_rfc3339();
    let sharing = Sharing {
        id: Some(id.clone()),
        rev: None,
        description: clip(a.description, 1000).unwrap_or_default(),
        preview_path: clip(a.preview_path, 1000),
        app_slug: clip(a.app_slug, 1000),
        owner: false,
        active: false,
        open_sharing: a.open_sharing,
        initial_sync: false,
        created_at: now.clone(),
        updated_at: now,
        rules: a.rules,
        members,
        invitations: Vec::new(),
        id_nonce: clip(a.id_nonce, 64),
        revoked_at: None,
    };
    Ok((sharing, state))
}

/// What a notice says: the owner's address, the id's nonce, the request token.
struct NoticeFacts {
    owner: String,
    nonce: String,
    token: String,
}

fn parse_notice(body: &Value) -> Result<NoticeFacts> {
    let data = Notice::read(body).ok_or_else(|| bad("the body must be a JSON:API document"))?;
    let text = |v: Option<String>, max: usize| v.filter(|s| !s.is_empty() && s.len() <= max);
    let owner = data
        .attributes
        .members
        .and_then(|m| m.into_iter().next())
        .and_then(|m| m.0)
        .filter(|m| m.status == MemberStatus::Owner.as_str())
        .and_then(|m| text(m.instance, 512))
        .ok_or_else(|| bad("the first member must be the owner, with its instance"))?;
    let nonce = text(data.attributes.id_nonce, 64)
        .ok_or_else(|| bad("the sharing request needs the id_nonce its id derives from"))?;
    let token = text(data.meta.request_token, 256).ok_or_else(|| bad("the sharing request needs its request_token"))?;
    Ok(NoticeFacts { owner, nonce, token })
}

fn pending_dt() -> Doctype {
    Doctype::parse(PENDING_DOCTYPE).unwrap_or_else(|_| unreachable!("static doctype"))
}

fn owner_key(owner: &str) -> String {
    hex::encode(&Sha256::digest(owner.as_bytes())[..8])
}

fn marker_id(owner: &str, id: &SharingId) -> Result<DocId, StoreError> {
    DocId::parse(&format!("{}-{}", owner_key(owner), id)).map_err(StoreError::Corrupt)
}

/// Pending requests from `owner` (reading at most `cap + 1` index ids), and in all.
async fn count_pending(store: &dyn Store, owner: &str, cap: usize) -> Result<(usize, u64), StoreError> {
    let prefix = format!("{}-", owner_key(owner));
    let q = AllDocsQuery {
        start_key: Some(prefix.clone()),
        end_key: Some(format!("{prefix}\u{fff0}")),
        inclusive_end: true,
        limit: Some(cap.saturating_add(1)),
        ..Default::default()
    };
    let from_owner = store
        .all_docs(&pending_dt(), &q)
        .await?
        .rows
        .iter()
        .filter(|r| matches!(r, AllDocsRow::Doc { deleted: false, .. }))
        .count();
    Ok((from_owner, store.db_info(&pending_dt()).await?.doc_count))
}

async fn mark_pending(store: &dyn Store, owner: &str, id: &SharingId) -> Result<(), StoreError> {
    let mid = marker_id(owner, id)?;
    if records::get(store, &pending_dt(), &mid).await?.is_some() {
        return Ok(());
    }
    match records::put(store, &pending_dt(), &mid, None, Map::new()).await {
        Ok(_) | Err(StoreError::Conflict) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Takes a request out of the pending index once it is answered (accepted, refused,
/// discarded). Best effort: a stale entry only makes its owner's limit stricter.
pub async fn unmark_pending(inst: &Instance, s: &Sharing) {
    let Some(owner) = s.members.first().and_then(|m| m.instance.as_deref()) else { return };
    let Some(id) = s.id.as_ref() else { return };
    let store = inst.store.as_ref();
    let result = async {
        let mid = marker_id(owner, id)?;
        if let Some(rec) = records::get(store, &pending_dt(), &mid).await? {
            records::delete(store, &pending_dt(), &mid, &rec.rev).await?;
        }
        Ok::<_, StoreError>(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(instance = %inst.domain, sharing = %id, error = %e, "failed to drop a pending-request index entry");
    }
}

/// The owner's request, fetched back with the notice's token (see the module docs).
async fn fetch(cx: &Context, owner: &Url, id: &SharingId, token: &str) -> Result<Vec<u8>> {
    let permit = tokio::time::timeout(FETCH_DEADLINE, cx.request_fetches.acquire())
        .await
        .map_err(|_| SharingError::TooMany("too many sharing requests being checked".into()))?
        .map_err(|_| SharingError::TooMany("too many sharing requests being checked".into()))?;
    let fetched = cx
        .federation
        .fetch_with_token(owner, &format!("/sharings/{id}/request"), token, MAX_REQUEST_BYTES, FETCH_DEADLINE)
        .await;
    drop(permit);
    fetched.map(|b| b.to_vec()).map_err(|e| {
        tracing::info!(sharing = %id, error = %e, "a sharing request was not confirmed by its owner");
        SharingError::Forbidden(format!("the owner's instance did not confirm this sharing request: {e}"))
    })
}

/// `PUT /sharings/:id` on a recipient (unauthenticated by design, see the module docs): checks
/// the notice, fetches the request back from its owner and stores it, inactive until accepted
/// (created, or replacing a pending request of the same owner).
pub async fn receive(cx: &Context, inst: &Instance, id: &SharingId, body: &Value) -> Result<Sharing> {
    let notice = parse_notice(body)?;
    if SharingId::derived(&notice.owner, &notice.nonce) != *id {
        return Err(SharingError::Forbidden("this sharing id was not issued by that instance".into()));
    }
    let me = cx.federation.instance_url(inst.domain.as_str());
    if notice.owner == me {
        return Err(SharingError::Conflict("this sharing belongs to this instance".into()));
    }
    let owner_url =
        cx.federation.normalise_instance_url(&notice.owner).map_err(|e| bad(format!("owner address refused: {e}")))?;
    let store = inst.store.as_ref();
    let existing = load(store, id).await?;
    match &existing {
        Some(e) if e.owner => return Err(SharingError::Conflict("this sharing belongs to this instance".into())),
        Some(e) if e.active => return Err(SharingError::Conflict("this sharing is already active here".into())),
        Some(e) if e.members.first().and_then(|m| m.instance.as_deref()) != Some(notice.owner.as_str()) => {
            return Err(SharingError::Conflict("a request with this id exists from another instance".into()))
        }
        // Once answered (accepted, then left or revoked; refused; discarded), a request is
        // history: it is not rewritten (nor the credentials a pending notice needs).
        Some(e) if answered(e, &me) => {
            return Err(SharingError::Conflict("this sharing was already answered here".into()))
        }
        Some(_) => {}
        None => check_pending_room(cx, store, &notice.owner).await?,
    }
    let bytes = fetch(cx, &owner_url, id, &notice.token).await?;
    let (mut s, state) = parse_document(&bytes, id, cx.config.federation.max_members)?;
    if s.members[0].instance.as_deref() != Some(notice.owner.as_str()) {
        return Err(SharingError::Forbidden("the owner's request names another owner".into()));
    }
    let addressed = s.members[1..].iter().filter(|m| m.instance.as_deref() == Some(me.as_str())).count();
    if addressed != 1
        || !s.members[1..].iter().any(|m| m.instance.as_deref() == Some(me.as_str()) && m.status.is_invited())
    {
        return Err(SharingError::Forbidden("this sharing request is not addressed to this instance".into()));
    }
    if let Some(own) = s.members[1..].iter_mut().find(|m| m.instance.as_deref() == Some(me.as_str())) {
        own.answer_state = state;
    }
    if existing.is_none() {
        mark_pending(store, &notice.owner, id).await?;
        if let Err(e) = check_pending_room_after(cx, store, &notice.owner).await {
            unmark_pending(inst, &s).await;
            return Err(e);
        }
    }
    if let Some(e) = &existing {
        s.rev = e.rev.clone();
        s.created_at = e.created_at.clone();
    }
    if let Err(e) = save(store, &mut s).await {
        if existing.is_none() {
            unmark_pending(inst, &s).await;
        }
        return Err(match e {
            StoreError::Conflict => SharingError::Conflict("the sharing request changed meanwhile".into()),
            e => e.into(),
        });
    }
    tracing::info!(instance = %inst.domain, sharing = %id, replaced = existing.is_some(), "sharing request received");
    Ok(s)
}

/// Whether a request received by the instance at `me` was answered there (accepted, refused,
/// discarded; its member then revoked or gone), or its sharing ended. Other members' statuses,
/// as the owner reported them, do not count.
pub fn answered(s: &Sharing, me: &str) -> bool {
    let own = s.members.iter().skip(1).find(|m| m.instance.as_deref() == Some(me));
    s.is_revoked()
        || s.members.first().is_some_and(|o| o.outbound.is_some() || o.inbound_client_id.is_some())
        || match own {
            Some(m) => !m.status.is_invited(),
            None => s.members.iter().any(|m| matches!(m.status, MemberStatus::Revoked | MemberStatus::Refused)),
        }
}

async fn check_pending_room(cx: &Context, store: &dyn Store, owner: &str) -> Result<()> {
    let cap = cx.config.federation.max_pending_requests_per_peer;
    let (from_owner, total) = count_pending(store, owner, cap).await?;
    if from_owner >= cap {
        return Err(SharingError::TooMany("too many sharing requests from this instance".into()));
    }
    // Owner addresses are the caller's to choose: bound the total too.
    if total >= cap.saturating_mul(PENDING_PEERS_FACTOR) as u64 {
        return Err(SharingError::TooMany("too many sharing requests waiting for an answer".into()));
    }
    Ok(())
}

/// The same check once this request is in the index (concurrent notices all see each other).
async fn check_pending_room_after(cx: &Context, store: &dyn Store, owner: &str) -> Result<()> {
    let cap = cx.config.federation.max_pending_requests_per_peer;
    let (from_owner, total) = count_pending(store, owner, cap).await?;
    if from_owner > cap || total > cap.saturating_mul(PENDING_PEERS_FACTOR) as u64 {
        return Err(SharingError::TooMany("too many sharing requests from this instance".into()));
    }
    Ok(())
}

/// Sends member `index` its notice (owner side); answers the recipient's reply.
pub async fn send_notice(cx: &Context, inst: &Instance, s: &Sharing, index: MemberIndex, peer: &Url) -> Result<Value> {
    let body = notice(inst, s, index).ok_or_else(|| bad("this member has no invitation"))?;
    Ok(cx.federation.call_open(Method::PUT, peer, &format!("/sharings/{}", s.id()), Some(&body)).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sharing::model::{MAX_RULES, MAX_TITLE_BYTES, MAX_VALUES_PER_RULE, MAX_VALUE_BYTES};
    use crate::sharing::protocol::MAX_WIRE_MEMBERS;
    use serde_json::json;

    fn rule(n: usize) -> Rule {
        Rule::from_input(&json!({
            "title": "\"".repeat(MAX_TITLE_BYTES),
            "doctype": "io.cozy.notes",
            "selector": "author.name",
            "values": (0..MAX_VALUES_PER_RULE).map(|i| format!("{n}{i}{}", "\\".repeat(MAX_VALUE_BYTES - 8))).collect::<Vec<_>>(),
            "add": "sync", "update": "sync", "remove": "revoke",
        }))
        .unwrap()
    }

    fn largest(members: usize) -> Sharing {
        let mut owner = Member::new(MemberStatus::Owner);
        owner.instance = Some(format!("https://{}.example", "o".repeat(490)));
        owner.public_name = Some("\"".repeat(200));
        let mut all = vec![owner];
        for i in 1..members {
            let mut m = Member::new(MemberStatus::Ready);
            m.public_name = Some("\u{1F600}".repeat(200));
            m.name = Some("n".repeat(512));
            m.email = Some("e".repeat(320));
            m.instance = Some(format!("https://{i}{}.example", "m".repeat(490)));
            m.read_only = true;
            all.push(m);
        }
        Sharing {
            id: Some(SharingId::derived("https://o.example", "n")),
            rev: Some("1-abc".into()),
            description: "\"".repeat(1000),
            preview_path: Some("/".repeat(1000)),
            app_slug: Some("a".repeat(1000)),
            owner: true,
            active: true,
            open_sharing: true,
            initial_sync: false,
            created_at: now_rfc3339(),
            updated_at: now_rfc3339(),
            rules: (0..MAX_RULES).map(rule).collect(),
            members: all,
            invitations: vec![],
            id_nonce: Some("f".repeat(32)),
            revoked_at: None,
        }
    }

    #[test]
    fn the_largest_request_fits_the_fetch_limit() {
        let s = largest(crate::config::FederationConfig::default().max_members);
        let size = serde_json::to_vec(&wire(&request_document(&s, MemberIndex(1))).unwrap()).unwrap().len();
        assert!(size > MAX_REQUEST_BYTES / 2, "the worst case is really built: {size} bytes");
        assert!(size < MAX_REQUEST_BYTES, "{size} bytes");
        // ...and reads back with the same digest.
        assert_eq!(offered_digest(&s, MemberIndex(1)).unwrap(), offered_digest(&s, MemberIndex(1)).unwrap());
    }

    /// A small sharing with fixed times, nonces and keys.
    fn small() -> Sharing {
        let mut s = largest(3);
        s.description = "Holidays".into();
        s.preview_path = Some("/preview".into());
        s.app_slug = Some("drive".into());
        s.created_at = "2026-01-02T03:04:05Z".into();
        s.updated_at = "2026-01-02T03:04:06Z".into();
        s.id_nonce = Some("0123456789abcdef".into());
        s.members[0].instance = Some("https://alice.example".into());
        s.members[0].public_name = Some("Alice".into());
        for (i, m) in s.members.iter_mut().enumerate().skip(1) {
            m.name = Some(format!("Member {i}"));
            m.public_name = (i == 1).then(|| "Bob".to_owned());
            m.email = Some(format!("m{i}@example.net"));
            m.instance = Some(format!("https://m{i}.example"));
            m.read_only = i == 2;
            m.xor_key = Some("ffff".into());
            m.state_nonce = Some("secret-nonce".into());
        }
        s.rules = vec![
            Rule::from_input(&json!({"title": "notes", "doctype": "io.cozy.notes", "values": ["0a1b"], "add": "sync", "update": "sync", "remove": "revoke"}))
                .unwrap(),
            Rule::from_input(&json!({"title": "by author", "doctype": "io.cozy.notes", "selector": "author", "values": ["Bob"]}))
                .unwrap(),
            Rule::from_input(&json!({"title": "preview", "doctype": "io.cozy.files", "values": ["x"], "local": true})).unwrap(),
        ];
        s
    }

    #[test]
    fn the_request_document_is_pinned_byte_for_byte() {
        let s = small();
        let text = serde_json::to_string(&wire(&request_document(&s, MemberIndex(2))).unwrap()).unwrap();
        let id = s.id();
        let expected = format!(
            concat!(
                r#"{{"data":{{"attributes":{{"app_slug":"drive","created_at":"2026-01-02T03:04:05Z","#,
                r#""description":"Holidays","id_nonce":"0123456789abcdef","initial_sync":false,"#,
                r#""members":[{{"instance":"https://alice.example","name":"Alice","public_name":"Alice","status":"owner"}},"#,
                r#"{{"name":"Bob","public_name":"Bob","status":"ready"}},"#,
                r#"{{"email":"m2@example.net","instance":"https://m2.example","name":"Member 2","read_only":true,"status":"ready"}}],"#,
                r#""open_sharing":true,"owner":true,"preview_path":"/preview","#,
                r#""rules":[{{"add":"sync","doctype":"io.cozy.notes","remove":"revoke","title":"notes","update":"sync","values":["f5e4"]}},"#,
                r#"{{"add":"none","doctype":"io.cozy.notes","remove":"none","selector":"author","title":"by author","update":"none","values":["Bob"]}}],"#,
                r#""updated_at":"2026-01-02T03:04:06Z"}},"id":"{id}","links":{{"self":"/sharings/{id}"}},"meta":{{"rev":"1-abc"}},"type":"io.cozy.sharings"}}}}"#
            ),
            id = id
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn the_recipient_reads_the_state_and_checks_each_rule_as_one_made_here() {
        let s = small();
        let id = SharingId::parse(s.id()).unwrap();
        let mut doc = request_document(&s, MemberIndex(2));
        doc.meta = Some(RequestMeta { state: Some("the-state".into()) });
        let bytes = serde_json::to_vec(&wire(&doc).unwrap()).unwrap();
        let (read, state) = parse_document(&bytes, &id, 100).unwrap();
        assert_eq!(state.as_deref(), Some("the-state"));
        assert_eq!(read.rules.len(), 2, "local rules stay with the owner");
        assert!(read.members[2].read_only && !read.members[1].read_only);
        // What only the owner uses is read leniently; a bad rule is refused with its reason.
        let mut v = wire(&doc).unwrap();
        v["meta"] = json!(7);
        v["data"]["links"] = json!("x");
        v["data"]["attributes"]["created_at"] = json!(1);
        v["data"]["attributes"]["members"][1]["read_only"] = Value::Null;
        let (_, state) = parse_document(&serde_json::to_vec(&v).unwrap(), &id, 100).unwrap();
        assert_eq!(state, None);
        // Lists and objects where a flag, the state or what only the owner uses is expected
        // are skipped (as they are read, not built).
        let bulk = json!(vec![json!({"x": [0, 1, "two"]}); 1000]);
        for path in [&["meta"][..], &["meta", "state"], &["data", "meta"], &["data", "attributes", "open_sharing"]] {
            let mut w = wire(&doc).unwrap();
            let (last, parents) = path.split_last().unwrap();
            let mut at = &mut w;
            for p in parents {
                at = &mut at[*p];
            }
            at[*last] = bulk.clone();
            let (read, state) = parse_document(&serde_json::to_vec(&w).unwrap(), &id, 100).unwrap();
            let open = s.open_sharing && *last != "open_sharing";
            let kept = (path[0] != "meta").then(|| "the-state".to_owned());
            assert_eq!((state, read.open_sharing), (kept, open), "{path:?}");
        }
        v["data"]["attributes"]["rules"][0]["doctype"] = json!("io.cozy.sharings");
        let Err(SharingError::BadRequest(reason)) = parse_document(&serde_json::to_vec(&v).unwrap(), &id, 100) else {
            panic!("an internal doctype is refused")
        };
        assert!(reason.starts_with("the sharing request is invalid: "), "{reason}");
    }

    #[test]
    fn ids_derive_from_the_owner_address_and_the_nonce() {
        let id = SharingId::derived("https://alice.example", "0123");
        assert_eq!(id.as_str().len(), 32);
        assert_eq!(id, SharingId::derived("https://alice.example", "0123"));
        assert_ne!(id, SharingId::derived("https://alice.example/", "0123"));
        assert_ne!(id, SharingId::derived("https://mallory.example", "0123"));
        assert_ne!(id, SharingId::derived("https://alice.example", "0124"));
    }

    #[test]
    fn a_request_document_reads_back_as_it_was_offered() {
        let mut s = largest(3);
        s.rules = vec![Rule::from_input(&json!({"title": "t", "doctype": "io.cozy.notes", "values": ["a"]})).unwrap()];
        let bytes = serde_json::to_vec(&wire(&request_document(&s, MemberIndex(2))).unwrap()).unwrap();
        let (read, state) = parse_document(&bytes, &SharingId::parse(s.id()).unwrap(), 100).unwrap();
        assert_eq!(state, None, "no state unless the owner gives the member its own");
        assert_eq!(read.rules, s.rules);
        assert_eq!(read.members.len(), 3);
        assert_eq!(read.members[2].instance, s.members[2].instance);
        assert_eq!(read.members[1].instance, None, "other members' addresses stay with the owner");
        assert!(!read.owner && !read.active);
        // A change in what is shown changes the digest.
        let mut other = read.clone();
        other.rules[0].values = vec!["b".into()];
        assert_ne!(digest(&read, MemberIndex(2)), digest(&other, MemberIndex(2)));
        let mut ro = read.clone();
        ro.members[2].read_only = !ro.members[2].read_only;
        assert_ne!(digest(&read, MemberIndex(2)), digest(&ro, MemberIndex(2)));
        // Over-long lists stop the parse.
        let mut doc = wire(&request_document(&s, MemberIndex(2))).unwrap();
        doc["data"]["attributes"]["rules"][0]["values"] = json!(vec!["x"; MAX_VALUES_PER_RULE + 1]);
        assert!(parse_document(&serde_json::to_vec(&doc).unwrap(), &SharingId::parse(s.id()).unwrap(), 100).is_err());
        let mut doc = wire(&request_document(&s, MemberIndex(2))).unwrap();
        doc["data"]["attributes"]["members"] = json!(vec![json!({"status": "ready"}); MAX_WIRE_MEMBERS + 1]);
        assert!(parse_document(&serde_json::to_vec(&doc).unwrap(), &SharingId::parse(s.id()).unwrap(), 2000).is_err());
    }
}
