//! The sharing operations, on the owner's side and on a recipient's, in the order of the flow:
//! create → invite → discovery (owner) → sharing request (recipient) → accept or refuse
//! (recipient) → answer (owner) → members, permissions, revocation.

use reqwest::Method;
use serde_json::{json, Value};
use url::Url;

use super::model::{now_rfc3339, Member, MemberStatus, PeerCredentials, Rule, Sharing, SharingId};
use super::outbox::{self, Entry};
use super::Context;
use super::{load, save, update, Result, SharingError};
use crate::auth::oauth::{self, OAuthClient};
use crate::auth::{random_hex, PermissionSet, Verb};
use crate::instance::Instance;
use crate::store::{json as records, DocId, Doctype, StoreError};

fn bad(reason: impl Into<String>) -> SharingError {
    SharingError::BadRequest(reason.into())
}

/// The invitation `state` of a member: derived from the instance key and the member's nonce,
/// so it is never stored and can be shown again to the owner.
pub fn member_state(inst: &Instance, sharing: &Sharing, index: usize) -> Option<String> {
    let nonce = sharing.members.get(index)?.state_nonce.as_deref()?;
    Some(inst.derive_secret("sharing-state", &[sharing.id(), nonce]))
}

/// The member an invitation `state` belongs to (constant-time comparison with each member's).
pub fn member_by_state(inst: &Instance, sharing: &Sharing, state: &str) -> Option<usize> {
    let mut found = None;
    for i in 1..sharing.members.len() {
        if let Some(expected) = member_state(inst, sharing, i) {
            if Instance::secrets_match(state, &expected) {
                found = Some(i);
            }
        }
    }
    found
}

pub fn invitation_link(cx: &Context, inst: &Instance, sharing: &Sharing, index: usize) -> Option<String> {
    let state = member_state(inst, sharing, index)?;
    // With a preview path, the link opens the preview page (its code leads to discovery).
    if let Some(preview) = super::links::preview_link(cx, inst, sharing, index) {
        return Some(preview);
    }
    Some(format!(
        "{}/sharings/{}/discovery?state={state}",
        cx.federation.instance_url(inst.domain.as_str()),
        sharing.id()
    ))
}

/// One recipient as given by the client: a contact id, or inline email/instance.
struct RecipientInput {
    name: Option<String>,
    email: Option<String>,
    instance: Option<String>,
}

fn first_string(v: Option<&Value>, key: &str) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let primary = items.iter().find(|i| i.get("primary") == Some(&Value::Bool(true)));
            primary.or(items.first()).and_then(|i| i.get(key)).and_then(Value::as_str).map(str::to_owned)
        }
        _ => None,
    }
}

async fn resolve_recipients(inst: &Instance, rel: Option<&Value>) -> Result<Vec<RecipientInput>> {
    let Some(rel) = rel else {
        return Ok(Vec::new());
    };
    let data = rel.get("data").and_then(Value::as_array).ok_or_else(|| bad("recipients must have a data array"))?;
    let contacts = Doctype::parse("io.cozy.contacts").map_err(bad)?;
    let mut out = Vec::with_capacity(data.len());
    for item in data {
        let item = item.as_object().ok_or_else(|| bad("each recipient must be an object"))?;
        let text = |k: &str| item.get(k).and_then(Value::as_str).map(str::to_owned);
        if let Some(id) = text("id") {
            if item.get("type").and_then(Value::as_str).is_some_and(|t| t != "io.cozy.contacts") {
                return Err(bad("recipients must be io.cozy.contacts"));
            }
            let did = DocId::parse(&id).map_err(bad)?;
            let contact = records::get(inst.store.as_ref(), &contacts, &did)
                .await?
                .ok_or_else(|| bad(format!("no contact {id}")))?;
            let b = &contact.body;
            out.push(RecipientInput {
                name: b.get("fullname").and_then(Value::as_str).map(str::to_owned),
                email: first_string(b.get("email"), "address"),
                instance: first_string(b.get("cozy"), "url")
                    .or_else(|| b.get("instance").and_then(Value::as_str).map(str::to_owned)),
            });
        } else {
            let r = RecipientInput { name: text("name"), email: text("email"), instance: text("instance") };
            if r.email.is_none() && r.instance.is_none() {
                return Err(bad("an inline recipient needs an email or an instance"));
            }
            out.push(r);
        }
    }
    Ok(out)
}

fn add_member(s: &mut Sharing, r: RecipientInput, read_only: bool, added_by: Option<usize>) -> usize {
    let mut m = Member::new(MemberStatus::MailNotSent);
    m.name = r.name;
    m.email = r.email.filter(|e| e.len() <= 320);
    m.instance = r.instance.filter(|i| i.len() <= 512);
    m.read_only = read_only;
    m.state_nonce = Some(random_hex(16));
    m.xor_key = Some(random_hex(16));
    m.added_by = added_by;
    s.members.push(m);
    s.members.len() - 1
}

/// `POST /sharings/`: validates the JSON:API body, checks every rule is within the caller's
/// permissions, stores the sharing with the owner as member 0 and one member per recipient.
pub async fn create(cx: &Context, inst: &Instance, caller: &PermissionSet, body: &Value) -> Result<Sharing> {
    let data =
        body.get("data").and_then(Value::as_object).ok_or_else(|| bad("the body must be a JSON:API document"))?;
    if data.get("type").and_then(Value::as_str) != Some("io.cozy.sharings") {
        return Err(bad("data.type must be io.cozy.sharings"));
    }
    let attrs = data.get("attributes").and_then(Value::as_object).ok_or_else(|| bad("data.attributes missing"))?;
    let text = |k: &str| -> Result<Option<String>> {
        match attrs.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.len() <= 1000 => Ok(Some(s.clone())),
            Some(_) => Err(bad(format!("{k} must be a string of at most 1000 characters"))),
        }
    };
    let open_sharing = match attrs.get("open_sharing") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("open_sharing must be a boolean")),
    };
    let rules = attrs
        .get("rules")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| bad("a sharing needs a non-empty rules array"))?;
    if rules.len() > super::model::MAX_RULES {
        return Err(bad(format!("a sharing has at most {} rules", super::model::MAX_RULES)));
    }
    let rules = rules.iter().map(|r| Rule::from_input(r).map_err(bad)).collect::<Result<Vec<_>>>()?;
    for rule in &rules {
        let doctype = Doctype::parse(&rule.doctype).map_err(bad)?;
        let allowed = match &rule.selector {
            None => rule.values.iter().all(|v| {
                [Verb::Get, Verb::Post, Verb::Put, Verb::Delete]
                    .iter()
                    .all(|verb| caller.allows(&doctype, *verb, Some(v)))
            }),
            Some(_) => {
                [Verb::Get, Verb::Post, Verb::Put, Verb::Delete].iter().all(|verb| caller.allows(&doctype, *verb, None))
            }
        };
        if !allowed {
            return Err(SharingError::Forbidden(format!("the rule on {doctype} is outside the token's permissions")));
        }
    }
    let rels = data.get("relationships");
    let rw = resolve_recipients(inst, rels.and_then(|r| r.get("recipients"))).await?;
    let ro = resolve_recipients(inst, rels.and_then(|r| r.get("read_only_recipients"))).await?;
    if 1 + rw.len() + ro.len() > cx.config.federation.max_members {
        return Err(bad(format!("a sharing has at most {} members", cx.config.federation.max_members)));
    }
    let now = now_rfc3339();
    let mut owner = Member::new(MemberStatus::Owner);
    owner.public_name = Some(inst.display_name().chars().filter(|c| !c.is_control()).take(200).collect());
    owner.email = inst.email.clone();
    let owner_url = cx.federation.instance_url(inst.domain.as_str());
    owner.instance = Some(owner_url.clone());
    // The id names its owner (see `request`): recipients check it before anything else.
    let id_nonce = random_hex(16);
    let mut s = Sharing {
        id: Some(SharingId::derived(&owner_url, &id_nonce)),
        rev: None,
        description: text("description")?.unwrap_or_default(),
        preview_path: text("preview_path")?,
        app_slug: text("app_slug")?,
        owner: true,
        active: false,
        open_sharing,
        initial_sync: false,
        created_at: now.clone(),
        updated_at: now,
        rules,
        members: vec![owner],
        invitations: Vec::new(),
        id_nonce: Some(id_nonce),
        revoked_at: None,
    };
    for r in rw {
        add_member(&mut s, r, false, None);
    }
    for r in ro {
        add_member(&mut s, r, true, None);
    }
    save(inst.store.as_ref(), &mut s).await?;
    tracing::info!(instance = %inst.domain, sharing = %s.id(), members = s.members.len() - 1, "sharing created");
    send_invitations(cx, inst, s).await
}

/// Mails the invitation of every member not mailed yet, when SMTP is configured; those members
/// become `pending`. Failures are logged and leave the member `mail-not-sent`.
pub async fn send_invitations(cx: &Context, inst: &Instance, s: Sharing) -> Result<Sharing> {
    if cx.config.mail.smtp_url.is_none() {
        return Ok(s);
    }
    let mut sent = Vec::new();
    for (i, m) in s.members.iter().enumerate().skip(1) {
        let (Some(email), MemberStatus::MailNotSent) = (m.email.as_deref(), m.status) else { continue };
        let Some(link) = invitation_link(cx, inst, &s, i) else { continue };
        let invitation =
            super::mail::Invitation { to: email, owner: inst.display_name(), description: &s.description, link: &link };
        match super::mail::send_invitation(&cx.config.mail, &invitation).await {
            Ok(()) => sent.push(i),
            Err(e) => {
                tracing::warn!(instance = %inst.domain, sharing = %s.id(), member = i, error = %e, "invitation mail not sent")
            }
        }
    }
    if sent.is_empty() {
        return Ok(s);
    }
    let id = s.id.clone().ok_or_else(|| bad("sharing without id"))?;
    let ((), s) = update(inst.store.as_ref(), &id, |s| {
        for i in &sent {
            if let Some(m) = s.members.get_mut(*i).filter(|m| m.status == MemberStatus::MailNotSent) {
                m.status = MemberStatus::Pending;
            }
        }
        Ok(())
    })
    .await?;
    Ok(s)
}

/// `POST /sharings/:id/recipients`: more recipients for an existing sharing (owner only).
pub async fn add_recipients(cx: &Context, inst: &Instance, id: &SharingId, body: &Value) -> Result<Sharing> {
    let rels = body.get("data").and_then(|d| d.get("relationships"));
    let rw = resolve_recipients(inst, rels.and_then(|r| r.get("recipients"))).await?;
    let ro = resolve_recipients(inst, rels.and_then(|r| r.get("read_only_recipients"))).await?;
    if rw.is_empty() && ro.is_empty() {
        return Err(bad("no recipients given"));
    }
    let max = cx.config.federation.max_members;
    let mut pending = Some((rw, ro));
    let ((), s) = update(inst.store.as_ref(), id, |s| {
        if !s.owner {
            return Err(SharingError::Forbidden("only the owner adds recipients".into()));
        }
        if !s.accepts_members() {
            return Err(revoked_conflict());
        }
        let (rw, ro) = pending.take().ok_or(SharingError::Store(StoreError::Conflict))?;
        if s.members.len() + rw.len() + ro.len() > max {
            return Err(bad(format!("a sharing has at most {max} members")));
        }
        for r in rw {
            add_member(s, r, false, None);
        }
        for r in ro {
            add_member(s, r, true, None);
        }
        Ok(())
    })
    .await?;
    send_invitations(cx, inst, s).await
}

/// `POST /sharings/:id/recipients/delegated`: a ready recipient of an `open_sharing` adds
/// members on the owner; they are read-only until the owner upgrades them. Answers the new
/// members' invitation links, for the recipient to pass on.
pub async fn add_delegated(
    cx: &Context,
    inst: &Instance,
    id: &SharingId,
    caller_index: usize,
    body: &Value,
) -> Result<Vec<(usize, String)>> {
    let rel = body.get("data").and_then(|d| d.get("relationships")).and_then(|r| r.get("recipients"));
    let list = resolve_recipients_inline(rel)?;
    if list.is_empty() {
        return Err(bad("no recipients given"));
    }
    let max = cx.config.federation.max_members;
    let mut pending = Some(list);
    let (added, s) = update(inst.store.as_ref(), id, |s| {
        if !s.owner || !s.open_sharing {
            return Err(SharingError::Forbidden("this sharing does not accept members added by recipients".into()));
        }
        if !s.accepts_members() {
            return Err(revoked_conflict());
        }
        if s.members.get(caller_index).map(|m| m.status) != Some(MemberStatus::Ready) {
            return Err(SharingError::Forbidden("only ready members may add recipients".into()));
        }
        let list = pending.take().ok_or(SharingError::Store(StoreError::Conflict))?;
        if s.members.len() + list.len() > max {
            return Err(bad(format!("a sharing has at most {max} members")));
        }
        Ok(list.into_iter().map(|r| add_member(s, r, true, Some(caller_index))).collect::<Vec<_>>())
    })
    .await?;
    Ok(added.into_iter().filter_map(|i| invitation_link(cx, inst, &s, i).map(|l| (i, l))).collect())
}

fn resolve_recipients_inline(rel: Option<&Value>) -> Result<Vec<RecipientInput>> {
    let data = rel
        .and_then(|r| r.get("data"))
        .and_then(Value::as_array)
        .ok_or_else(|| bad("recipients must have a data array"))?;
    data.iter()
        .map(|item| {
            let text = |k: &str| item.get(k).and_then(Value::as_str).map(str::to_owned);
            let r = RecipientInput { name: text("name"), email: text("email"), instance: text("instance") };
            if r.email.is_none() && r.instance.is_none() {
                Err(bad("a delegated recipient needs an email or an instance"))
            } else {
                Ok(r)
            }
        })
        .collect()
}

/// Where a member's invitation stands, for the discovery page.
pub enum Discovery {
    /// Ask for the recipient's instance address (pre-filled when known).
    Ask { sharing: Box<Sharing>, index: usize },
    /// Already answered or revoked: nothing to do.
    Done { status: MemberStatus },
}

/// `GET /sharings/:id/discovery?state=`: what to show for this state.
pub async fn discovery_state(inst: &Instance, id: &SharingId, state: &str) -> Result<Discovery> {
    let s = load(inst.store.as_ref(), id)
        .await?
        .filter(|s| s.owner)
        .ok_or_else(|| SharingError::NotFound("no such sharing".into()))?;
    let index = member_by_state(inst, &s, state).ok_or_else(|| SharingError::Forbidden("invalid invitation".into()))?;
    let status = s.members[index].status;
    if s.invitation_open(index) {
        Ok(Discovery::Ask { sharing: Box::new(s), index })
    } else if s.is_revoked() {
        Ok(Discovery::Done { status: MemberStatus::Revoked })
    } else {
        Ok(Discovery::Done { status })
    }
}

/// `POST /sharings/:id/discovery`: checks the address the recipient typed, records it on the
/// member, sends that instance the notice of its sharing request (it fetches the request back,
/// see `request`), and answers where to send the person's browser next. When the notice fails,
/// the member is put back as it was.
pub async fn discover(cx: &Context, inst: &Instance, id: &SharingId, state: &str, url: &str) -> Result<String> {
    let s = load(inst.store.as_ref(), id)
        .await?
        .filter(|s| s.owner)
        .ok_or_else(|| SharingError::NotFound("no such sharing".into()))?;
    let index = member_by_state(inst, &s, state).ok_or_else(|| SharingError::Forbidden("invalid invitation".into()))?;
    if !s.invitation_open(index) {
        return Err(closed_conflict(&s));
    }
    let peer = cx.federation.normalise_instance_url(url).map_err(|e| match e {
        crate::federation::client::FederationError::Guard(g) => bad(format!("this address cannot be used: {g}")),
        other => SharingError::Peer(other),
    })?;
    let peer_str = peer.as_str().trim_end_matches('/').to_owned();
    if peer_str == cx.federation.instance_url(inst.domain.as_str()) {
        return Err(bad("the recipient's instance cannot be the owner's"));
    }
    // The request the recipient fetches back names its instance: record it first.
    let (before, s) = update(inst.store.as_ref(), id, |s| {
        if !s.invitation_open(index) {
            return Err(closed_conflict(s));
        }
        let m = &mut s.members[index];
        let before = (m.instance.clone(), m.status);
        m.instance = Some(peer_str.clone());
        m.status = MemberStatus::Seen;
        Ok(before)
    })
    .await?;
    if let Err(e) = super::request::send_notice(cx, inst, &s, index, &peer).await {
        let restored = update(inst.store.as_ref(), id, |s| {
            let m = &mut s.members[index];
            if m.status == MemberStatus::Seen && m.instance.as_deref() == Some(peer_str.as_str()) {
                (m.instance, m.status) = before.clone();
            }
            Ok(())
        })
        .await;
        if let Err(r) = restored {
            tracing::warn!(instance = %inst.domain, sharing = %id, member = index, error = %r, "failed to restore a member after a failed notice");
        }
        return Err(e);
    }
    let mut redirect = peer.join("/auth/authorize/sharing").map_err(|_| bad("invalid address"))?;
    redirect.query_pairs_mut().append_pair("sharing_id", id.as_str()).append_pair("state", state);
    Ok(redirect.to_string())
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

/// `PUT /sharings/:id` on a recipient: see [`super::request::receive`].
pub async fn receive_request(cx: &Context, inst: &Instance, id: &SharingId, body: &Value) -> Result<Sharing> {
    super::request::receive(cx, inst, id, body).await
}

/// The index of this instance among the members of a sharing it received.
fn own_index(cx: &Context, inst: &Instance, s: &Sharing) -> Option<usize> {
    let me = cx.federation.instance_url(inst.domain.as_str());
    s.members.iter().position(|m| m.instance.as_deref() == Some(me.as_str()) && m.status != MemberStatus::Owner)
}

fn owner_url(s: &Sharing) -> Result<Url> {
    let raw =
        s.members.first().and_then(|m| m.instance.as_deref()).ok_or_else(|| bad("the sharing has no owner address"))?;
    Url::parse(raw).map_err(|_| bad("invalid owner address"))
}

fn peer_credentials(v: &Value) -> Option<PeerCredentials> {
    let client = v.get("client")?;
    let tokens = v.get("access_token")?;
    let s = |o: &Value, k: &str| {
        o.get(k).and_then(Value::as_str).filter(|s| !s.is_empty() && s.len() < 4096).map(str::to_owned)
    };
    Some(PeerCredentials {
        client_id: s(client, "client_id")?,
        client_secret: s(client, "client_secret")?,
        access_token: s(tokens, "access_token")?,
        refresh_token: s(tokens, "refresh_token")?,
    })
}

fn credentials_json(c: &oauth::IssuedClient) -> Value {
    json!({
        "client": {"client_id": c.client_id, "client_secret": c.client_secret, "client_kind": "sharing"},
        "access_token": {"token_type": "bearer", "access_token": c.access_token, "refresh_token": c.refresh_token, "scope": c.scope},
    })
}

fn sharing_scope(id: &SharingId, write: bool) -> PermissionSet {
    let verbs = if write { "ALL" } else { "GET" };
    PermissionSet::parse(&format!("io.cozy.sharings:{verbs}:{id}")).unwrap_or_default()
}

/// A sharing request received here and not answered yet.
async fn load_request(cx: &Context, inst: &Instance, id: &SharingId) -> Result<Sharing> {
    let s = load(inst.store.as_ref(), id)
        .await?
        .filter(|s| !s.owner)
        .ok_or_else(|| SharingError::NotFound("no such sharing request".into()))?;
    if s.active {
        return Err(SharingError::Conflict("this sharing is already accepted".into()));
    }
    if super::request::answered(&s, &cx.federation.instance_url(inst.domain.as_str())) {
        return Err(SharingError::Conflict("this sharing request was already answered, or revoked".into()));
    }
    Ok(s)
}

/// The digest of a pending request as this instance shows it (see `request::digest`): what the
/// acceptance page carries and [`accept`] checks.
pub async fn pending_digest(cx: &Context, inst: &Instance, id: &SharingId) -> Result<String> {
    let s = load_request(cx, inst, id).await?;
    Ok(super::request::digest(&s, own_index(cx, inst, &s).unwrap_or(0)))
}

/// Accepting on the recipient: checks that the request is still the one shown (`digest`, from
/// the acceptance page; 409 otherwise), creates the client standing for the owner, sends the
/// answer with `state` and the digest (the owner checks it is the request it offers), stores
/// the owner's credentials, and activates the sharing.
pub async fn accept(cx: &Context, inst: &Instance, id: &SharingId, state: &str, digest: &str) -> Result<Sharing> {
    let store = inst.store.as_ref();
    let s = load_request(cx, inst, id).await?;
    let me = own_index(cx, inst, &s).unwrap_or(0);
    let my_url = cx.federation.instance_url(inst.domain.as_str());
    let shown = super::request::digest(&s, me);
    if !Instance::secrets_match(digest, &shown) {
        return Err(changed_conflict());
    }
    let owner = owner_url(&s)?;
    let ttl = cx.config.federation.access_token_ttl_secs;
    let owner_name =
        s.members[0].public_name.clone().unwrap_or_else(|| owner.host_str().unwrap_or_default().to_owned());
    let issued = oauth::create_sharing_client(
        inst,
        id.as_str(),
        0,
        &sharing_scope(id, true),
        &format!("Sharing {owner_name}"),
        ttl,
    )
    .await?;
    let mut attributes = credentials_json(&issued);
    attributes["state"] = json!(state);
    attributes["public_name"] = json!(inst.display_name());
    attributes["request_digest"] = json!(shown);
    let body = json!({"data": {"type": "io.cozy.sharings.answer", "id": id.as_str(), "attributes": attributes}});
    let answer =
        match cx.federation.call_open(Method::POST, &owner, &format!("/sharings/{id}/answer"), Some(&body)).await {
            Ok(a) => a,
            Err(e) => {
                oauth::delete_client(inst, &issued.client_id).await?;
                return Err(owner_refusal(e));
            }
        };
    let attrs = answer.get("data").and_then(|d| d.get("attributes")).cloned().unwrap_or(Value::Null);
    let Some(creds) = peer_credentials(&attrs) else {
        oauth::delete_client(inst, &issued.client_id).await?;
        return Err(SharingError::Peer(crate::federation::client::FederationError::BadResponse {
            peer: crate::federation::client::origin(&owner),
        }));
    };
    let my_index = attrs.get("member_index").and_then(Value::as_u64).map(|i| i as usize);
    let read_only = attrs.get("read_only") == Some(&Value::Bool(true));
    let fallback_index = own_index(cx, inst, &s);
    let client_id = issued.client_id.clone();
    let stored = update(store, id, |s| {
        // A replacement that landed during the exchange (only the owner can make one) is not
        // what was accepted.
        if s.active || super::request::answered(s, &my_url) || super::request::digest(s, me) != shown {
            return Err(changed_conflict());
        }
        let owner = s.members.first_mut().ok_or_else(|| bad("no owner"))?;
        owner.outbound = Some(creds.clone());
        owner.inbound_client_id = Some(client_id.clone());
        if let Some(i) = my_index.or(fallback_index) {
            if let Some(m) = s.members.get_mut(i) {
                m.status = MemberStatus::Ready;
                m.read_only = read_only;
            }
        }
        s.active = true;
        s.initial_sync = true;
        Ok(())
    })
    .await;
    let s = match stored {
        Ok(((), s)) => s,
        Err(e) => {
            oauth::delete_client(inst, &client_id).await?;
            return Err(e);
        }
    };
    super::request::unmark_pending(inst, &s).await;
    tracing::info!(instance = %inst.domain, sharing = %id, "sharing accepted");
    cx.sharing_changed(inst, id).await?;
    Ok(s)
}

/// Refusing on the recipient: tells the owner (with `state`) and forgets the request.
pub async fn refuse(cx: &Context, inst: &Instance, id: &SharingId, state: &str) -> Result<()> {
    let store = inst.store.as_ref();
    let s = load_request(cx, inst, id).await?;
    let owner = owner_url(&s)?;
    let body = json!({"data": {"type": "io.cozy.sharings.answer", "id": id.as_str(), "attributes": {"state": state, "refused": true}}});
    cx.federation
        .call_open(Method::POST, &owner, &format!("/sharings/{id}/answer"), Some(&body))
        .await
        .map_err(owner_refusal)?;
    let (_, s) = update(store, id, |s| {
        for m in s.members.iter_mut().skip(1) {
            if m.status.is_invited() {
                m.status = MemberStatus::Refused;
            }
        }
        Ok(())
    })
    .await?;
    super::request::unmark_pending(inst, &s).await;
    Ok(())
}

/// The owner's refusal of an answer (its invitation closed, the sharing revoked, the request
/// changed, a wrong `state`) is a conflict for the person answering, with the owner's reason;
/// anything else is the peer's failure (502).
fn owner_refusal(e: crate::federation::client::FederationError) -> SharingError {
    match e {
        crate::federation::client::FederationError::Status { status: 400 | 403 | 404 | 409 | 410, reason, .. } => {
            SharingError::Conflict(format!("the sharing's owner refused the answer: {reason}"))
        }
        other => SharingError::Peer(other),
    }
}

fn changed_conflict() -> SharingError {
    SharingError::Conflict("the sharing request changed since it was shown: open it again".into())
}

/// `POST /sharings/:id/answer` on the owner: checks the single-use `state`, and on acceptance
/// creates the client standing for the member, stores the member's credentials, and answers
/// with its own.
pub async fn process_answer(cx: &Context, inst: &Instance, id: &SharingId, body: &Value) -> Result<Value> {
    let store = inst.store.as_ref();
    let data =
        body.get("data").and_then(Value::as_object).ok_or_else(|| bad("the body must be a JSON:API document"))?;
    if data.get("type").and_then(Value::as_str) != Some("io.cozy.sharings.answer") {
        return Err(bad("data.type must be io.cozy.sharings.answer"));
    }
    let attrs = data.get("attributes").cloned().unwrap_or(Value::Null);
    let state = attrs.get("state").and_then(Value::as_str).ok_or_else(|| bad("the answer needs a state"))?;
    let s =
        load(store, id).await?.filter(|s| s.owner).ok_or_else(|| SharingError::NotFound("no such sharing".into()))?;
    let index = member_by_state(inst, &s, state).ok_or_else(|| SharingError::Forbidden("invalid state".into()))?;
    if !s.invitation_open(index) {
        return Err(closed_conflict(&s));
    }
    if attrs.get("refused") == Some(&Value::Bool(true)) {
        update(store, id, |s| {
            if !s.invitation_open(index) {
                return Err(closed_conflict(s));
            }
            let m = &mut s.members[index];
            m.status = MemberStatus::Refused;
            Ok(())
        })
        .await?;
        tracing::info!(instance = %inst.domain, sharing = %id, member = index, "sharing refused");
        return Ok(
            json!({"data": {"type": "io.cozy.sharings.answer", "id": id.as_str(), "attributes": {"refused": true}}}),
        );
    }
    let creds = peer_credentials(&attrs).ok_or_else(|| bad("the answer needs client and access_token"))?;
    // The member accepted exactly the request offered to it (see `request`).
    let accepted = attrs
        .get("request_digest")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("the answer needs the request_digest"))?;
    if !Instance::secrets_match(accepted, &super::request::offered_digest(&s, index)?) {
        return Err(SharingError::Conflict("the request accepted is not the one offered to this member".into()));
    }
    let public_name = attrs.get("public_name").and_then(Value::as_str).map(|n| n.chars().take(200).collect::<String>());
    let write = s.member_may_write(index);
    let ttl = cx.config.federation.access_token_ttl_secs;
    let name =
        public_name.clone().or_else(|| s.members[index].email.clone()).unwrap_or_else(|| format!("member {index}"));
    let issued = oauth::create_sharing_client(
        inst,
        id.as_str(),
        index,
        &sharing_scope(id, write),
        &format!("Sharing {name}"),
        ttl,
    )
    .await?;
    let client_id = issued.client_id.clone();
    let result = update(store, id, |s| {
        // The one place a member becomes ready: never once the invitation is closed.
        if !s.invitation_open(index) {
            return Err(closed_conflict(s));
        }
        let m = &mut s.members[index];
        m.status = MemberStatus::Ready;
        m.outbound = Some(creds.clone());
        m.inbound_client_id = Some(client_id.clone());
        if public_name.is_some() {
            m.public_name = public_name.clone();
        }
        s.active = true;
        Ok(m.read_only)
    })
    .await;
    let read_only = match result {
        Ok((ro, _)) => ro,
        Err(e) => {
            oauth::delete_client(inst, &client_id).await?;
            return Err(e);
        }
    };
    tracing::info!(instance = %inst.domain, sharing = %id, member = index, "sharing accepted by member");
    cx.sharing_changed(inst, id).await?;
    let mut attributes = credentials_json(&issued);
    attributes["member_index"] = json!(index);
    attributes["read_only"] = json!(read_only);
    Ok(json!({"data": {"type": "io.cozy.sharings.answer", "id": id.as_str(), "attributes": attributes}}))
}

/// Revokes members on the owner (`index` None: everyone). The local effect is immediate; each
/// ready member is told through the outbox.
pub async fn revoke(cx: &Context, inst: &Instance, id: &SharingId, index: Option<usize>) -> Result<Sharing> {
    let store = inst.store.as_ref();
    // Credentials die first: once a member shows as revoked, its tokens must already fail.
    if let Some(current) = load(store, id).await?.filter(|s| s.owner) {
        let targets: Vec<usize> = match index {
            Some(i) => vec![i],
            None => (1..current.members.len()).collect(),
        };
        delete_inbound_clients(inst, &current, &targets).await?;
    }
    let (revoked, s) = update(store, id, |s| {
        if !s.owner {
            return Err(SharingError::Forbidden("only the owner revokes members".into()));
        }
        let targets: Vec<usize> = match index {
            Some(0) => return Err(bad("the owner cannot be revoked; revoke the sharing instead")),
            Some(i) if i < s.members.len() => vec![i],
            Some(_) => return Err(SharingError::NotFound("no such member".into())),
            None => (1..s.members.len()).collect(),
        };
        let mut done = Vec::new();
        if index.is_none() {
            // Everyone: the sharing ends, with every invitation link of it.
            s.revoked_at.get_or_insert_with(now_rfc3339);
            super::invitations::revoke_all(s);
        }
        for i in targets {
            let m = &mut s.members[i];
            if m.status == MemberStatus::Revoked {
                continue;
            }
            let was_ready = m.status == MemberStatus::Ready;
            m.status = MemberStatus::Revoked;
            done.push((i, m.inbound_client_id.take(), was_ready && m.outbound.is_some()));
            super::invitations::revoke_created_by(s, i);
        }
        s.active = s.members.iter().any(|m| m.status == MemberStatus::Ready);
        Ok(done)
    })
    .await?;
    for (i, client, notify) in revoked {
        if let Some(c) = client {
            oauth::delete_client(inst, &c).await?;
        }
        if notify {
            let mut e = Entry::new(id, i, Method::DELETE, format!("/sharings/{id}"));
            e.forget_credentials = true;
            outbox::enqueue(cx, inst, e).await?;
        }
        tracing::info!(instance = %inst.domain, sharing = %id, member = i, "member revoked");
    }
    cx.sharing_changed(inst, id).await?;
    Ok(s)
}

async fn delete_inbound_clients(inst: &Instance, s: &Sharing, members: &[usize]) -> Result<()> {
    for i in members {
        if let Some(c) = s.members.get(*i).and_then(|m| m.inbound_client_id.as_deref()) {
            oauth::delete_client(inst, c).await?;
        }
    }
    Ok(())
}

/// A recipient leaves (`DELETE /sharings/:id/recipients/self`): local effect now, the owner is
/// told through the outbox.
pub async fn leave(cx: &Context, inst: &Instance, id: &SharingId) -> Result<Sharing> {
    let current =
        load(inst.store.as_ref(), id).await?.ok_or_else(|| SharingError::NotFound("no such sharing".into()))?;
    let me = own_index(cx, inst, &current);
    if !current.owner {
        delete_inbound_clients(inst, &current, &[0]).await?;
    }
    let (client, s) = update(inst.store.as_ref(), id, |s| {
        if s.owner {
            return Err(SharingError::Forbidden("the owner revokes the sharing instead of leaving it".into()));
        }
        let was_active = s.active;
        s.active = false;
        s.revoked_at.get_or_insert_with(now_rfc3339);
        if let Some(i) = me {
            s.members[i].status = MemberStatus::Revoked;
        }
        let owner = &mut s.members[0];
        Ok((owner.inbound_client_id.take(), was_active && owner.outbound.is_some()))
    })
    .await?;
    let (client, notify) = client;
    if let Some(c) = client {
        oauth::delete_client(inst, &c).await?;
    }
    if notify {
        let mut e = Entry::new(id, 0, Method::DELETE, format!("/sharings/{id}/answer"));
        e.forget_credentials = true;
        outbox::enqueue(cx, inst, e).await?;
    }
    tracing::info!(instance = %inst.domain, sharing = %id, "left the sharing");
    cx.sharing_changed(inst, id).await?;
    Ok(s)
}

/// `DELETE /sharings/:id` from the owner, on a recipient: we were revoked.
pub async fn revoked_by_owner(cx: &Context, inst: &Instance, id: &SharingId) -> Result<()> {
    if let Some(current) = load(inst.store.as_ref(), id).await?.filter(|s| !s.owner) {
        delete_inbound_clients(inst, &current, &[0]).await?;
    }
    let (client, _) = update(inst.store.as_ref(), id, |s| {
        if s.owner {
            return Err(SharingError::Forbidden("only the owner's instance sends this".into()));
        }
        s.active = false;
        s.revoked_at.get_or_insert_with(now_rfc3339);
        for m in s.members.iter_mut().skip(1) {
            if m.status != MemberStatus::Refused {
                m.status = MemberStatus::Revoked;
            }
        }
        let owner = &mut s.members[0];
        owner.outbound = None;
        Ok(owner.inbound_client_id.take())
    })
    .await?;
    if let Some(c) = client {
        oauth::delete_client(inst, &c).await?;
    }
    tracing::info!(instance = %inst.domain, sharing = %id, "revoked by the owner");
    cx.sharing_changed(inst, id).await?;
    Ok(())
}

/// `DELETE /sharings/:id/answer` from a member, on the owner: that member left.
pub async fn member_left(cx: &Context, inst: &Instance, id: &SharingId, index: usize) -> Result<()> {
    if let Some(current) = load(inst.store.as_ref(), id).await?.filter(|_| index > 0) {
        delete_inbound_clients(inst, &current, &[index]).await?;
    }
    let (client, _) = update(inst.store.as_ref(), id, |s| {
        let m = s
            .members
            .get_mut(index)
            .filter(|_| index > 0)
            .ok_or_else(|| SharingError::NotFound("no such member".into()))?;
        m.status = MemberStatus::Revoked;
        m.outbound = None;
        let c = m.inbound_client_id.take();
        super::invitations::revoke_created_by(s, index);
        s.active = s.members.iter().any(|m| m.status == MemberStatus::Ready);
        Ok(c)
    })
    .await?;
    if let Some(c) = client {
        oauth::delete_client(inst, &c).await?;
    }
    tracing::info!(instance = %inst.domain, sharing = %id, member = index, "member left");
    cx.sharing_changed(inst, id).await?;
    Ok(())
}

/// `POST|DELETE /sharings/:id/recipients/:index/readonly` on the owner. For a ready member the
/// client standing for it is replaced (its old tokens stop working at once) and the new
/// credentials are sent to it through the outbox.
pub async fn set_read_only(
    cx: &Context,
    inst: &Instance,
    id: &SharingId,
    index: usize,
    read_only: bool,
) -> Result<Sharing> {
    let store = inst.store.as_ref();
    let s = load(store, id).await?.ok_or_else(|| SharingError::NotFound("no such sharing".into()))?;
    if !s.owner {
        return Err(SharingError::Forbidden("only the owner changes permissions".into()));
    }
    if index == 0 || index >= s.members.len() {
        return Err(SharingError::NotFound("no such member".into()));
    }
    let ready = s.members[index].status == MemberStatus::Ready;
    let issued = if ready {
        let mut probe = s.clone();
        probe.members[index].read_only = read_only;
        let write = probe.member_may_write(index);
        let name = s.members[index].public_name.clone().unwrap_or_else(|| format!("member {index}"));
        Some(
            oauth::create_sharing_client(
                inst,
                id.as_str(),
                index,
                &sharing_scope(id, write),
                &format!("Sharing {name}"),
                cx.config.federation.access_token_ttl_secs,
            )
            .await?,
        )
    } else {
        None
    };
    let new_client = issued.as_ref().map(|c| c.client_id.clone());
    let (old_client, s) = update(store, id, |s| {
        let m = s.members.get_mut(index).ok_or_else(|| SharingError::NotFound("no such member".into()))?;
        m.read_only = read_only;
        Ok(match &new_client {
            Some(c) => m.inbound_client_id.replace(c.clone()),
            None => None,
        })
    })
    .await?;
    if let Some(c) = old_client {
        oauth::delete_client(inst, &c).await?;
    }
    if let Some(issued) = issued {
        let mut e = Entry::new(id, index, Method::POST, format!("/sharings/{id}/credentials"));
        let mut body = credentials_json(&issued);
        body["read_only"] = json!(read_only);
        e.body = Some(json!({"data": {"type": "io.cozy.sharings.credentials", "id": id.as_str(), "attributes": body}}));
        outbox::enqueue(cx, inst, e).await?;
    }
    Ok(s)
}

/// `POST /sharings/:id/credentials` from the owner, on a recipient: new credentials after a
/// permission change.
pub async fn receive_credentials(inst: &Instance, id: &SharingId, body: &Value) -> Result<()> {
    let attrs = body.get("data").and_then(|d| d.get("attributes")).ok_or_else(|| bad("data.attributes missing"))?;
    let creds = peer_credentials(attrs).ok_or_else(|| bad("client and access_token required"))?;
    let read_only = attrs.get("read_only") == Some(&Value::Bool(true));
    update(inst.store.as_ref(), id, |s| {
        if s.owner || !s.active {
            return Err(SharingError::Conflict("not an active sharing received from an owner".into()));
        }
        s.members[0].outbound = Some(creds.clone());
        for m in s.members.iter_mut().skip(1) {
            if m.status == MemberStatus::Ready && m.instance.is_some() {
                m.read_only = read_only;
            }
        }
        Ok(())
    })
    .await?;
    Ok(())
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
pub fn invitations(cx: &Context, inst: &Instance, s: &Sharing) -> Vec<(usize, Member, String)> {
    (1..s.members.len())
        .filter(|i| s.invitation_open(*i))
        .filter_map(|i| invitation_link(cx, inst, s, i).map(|l| (i, s.members[i].clone(), l)))
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
