//! The owner's side: creating a sharing, adding recipients and sending their invitations,
//! discovery (a recipient names its instance), and the recipients' answers.

use super::*;
use crate::sharing::protocol::{Field, NewSharingAttributes, RecipientRef, Relationships, CONTACTS_TYPE};

/// One recipient as given by the client: a contact id, or inline email/instance.
#[derive(Clone)]
pub(super) struct RecipientInput {
    pub(super) name: Option<String>,
    pub(super) email: Option<String>,
    pub(super) instance: Option<String>,
}

pub(super) fn first_string(v: Option<&Value>, key: &str) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let primary = items.iter().find(|i| i.get("primary") == Some(&Value::Bool(true)));
            primary.or(items.first()).and_then(|i| i.get(key)).and_then(Value::as_str).map(str::to_owned)
        }
        _ => None,
    }
}

pub(super) async fn resolve_recipients(inst: &Instance, rel: Option<&Value>) -> Result<Vec<RecipientInput>> {
    let Some(rel) = rel else {
        return Ok(Vec::new());
    };
    let data = RecipientRef::parse_relationship(rel).map_err(bad)?;
    let contacts = Doctype::parse(CONTACTS_TYPE).map_err(bad)?;
    let mut out = Vec::with_capacity(data.len());
    for item in data {
        let item = item.ok_or_else(|| bad("each recipient must be an object"))?;
        if let Some(id) = item.id {
            if item.kind.as_deref().is_some_and(|t| t != CONTACTS_TYPE) {
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
            let r = RecipientInput { name: item.name, email: item.email, instance: item.instance };
            if r.email.is_none() && r.instance.is_none() {
                return Err(bad("an inline recipient needs an email or an instance"));
            }
            out.push(r);
        }
    }
    Ok(out)
}

/// What adding one recipient did (`meta.recipients` of `POST /sharings/:id/recipients`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddOutcome {
    /// A new member, with its own invitation.
    Added,
    /// The person was already invited and had not answered: the invitation is sent again (the
    /// same link, which stays valid: they may hold the first one already).
    InvitedAgain,
    /// The person is already a ready member: nothing changes.
    AlreadyMember,
}

impl AddOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AddOutcome::Added => "added",
            AddOutcome::InvitedAgain => "invited_again",
            AddOutcome::AlreadyMember => "already_member",
        }
    }
}

/// Whether two instance addresses name the same instance: case, a trailing slash and a
/// missing `http://`/`https://` scheme (`bob.example` as typed in a form) aside.
fn same_instance(a: &str, b: &str) -> bool {
    fn bare(u: &str) -> &str {
        let u = u.trim().trim_end_matches('/');
        for scheme in ["https://", "http://"] {
            if u.get(..scheme.len()).is_some_and(|p| p.eq_ignore_ascii_case(scheme)) {
                return &u[scheme.len()..];
            }
        }
        u
    }
    bare(a).eq_ignore_ascii_case(bare(b))
}

/// The member a recipient names already, as Cozy's `addMember` matches them: by email when
/// one is given, else by instance address. Only members still in the sharing (invited or
/// ready) count: one who refused or was revoked is added anew.
pub(super) fn existing_member(s: &Sharing, r: &RecipientInput) -> Option<MemberIndex> {
    s.recipient_indexes().find(|&i| {
        let m = &s.members[i];
        let current = m.status == MemberStatus::Ready || m.status.is_invited();
        let same = match (&r.email, &r.instance) {
            (Some(e), _) => m.email.as_deref().is_some_and(|x| x.trim().eq_ignore_ascii_case(e.trim())),
            (None, Some(u)) => m.instance.as_deref().is_some_and(|x| same_instance(x, u)),
            (None, None) => false,
        };
        current && same
    })
}

/// Adds `r` unless it names a member already there (see [`existing_member`]).
fn add_or_find(
    s: &mut Sharing,
    r: RecipientInput,
    read_only: bool,
    added_by: Option<MemberIndex>,
) -> (MemberIndex, AddOutcome) {
    match existing_member(s, &r) {
        Some(i) if s.members[i].status == MemberStatus::Ready => (i, AddOutcome::AlreadyMember),
        Some(i) => (i, AddOutcome::InvitedAgain),
        None => (add_member(s, r, read_only, added_by), AddOutcome::Added),
    }
}

pub(super) fn add_member(
    s: &mut Sharing,
    r: RecipientInput,
    read_only: bool,
    added_by: Option<MemberIndex>,
) -> MemberIndex {
    let mut m = Member::new(MemberStatus::MailNotSent);
    m.name = r.name;
    m.email = r.email.filter(|e| e.len() <= 320);
    m.instance = r.instance.filter(|i| i.len() <= 512);
    m.read_only = read_only;
    m.state_nonce = Some(random_hex(16));
    m.xor_key = Some(random_hex(16));
    m.added_by = added_by;
    s.members.push(m);
    MemberIndex(s.members.len() - 1)
}

/// `POST /sharings/`: validates the JSON:API body, checks every rule is within the caller's
/// permissions, stores the sharing with the owner as member 0 and one member per recipient.
pub async fn create(cx: &Context, inst: &Instance, caller: &PermissionSet, body: &Value) -> Result<Sharing> {
    let (attrs, open_sharing, rules) = read_new_sharing(body)?;
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
    let rels = Relationships::of(body);
    let rw = resolve_recipients(inst, rels.recipients.as_ref()).await?;
    let ro = resolve_recipients(inst, rels.read_only_recipients.as_ref()).await?;
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
        description: text(&attrs.description, "description")?.unwrap_or_default(),
        preview_path: text(&attrs.preview_path, "preview_path")?,
        app_slug: text(&attrs.app_slug, "app_slug")?,
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

/// The attributes of a `POST /sharings` body (see [`NewSharingAttributes`]), with its
/// `open_sharing` flag and its rules, checked in this order (400, the first reason found): a
/// JSON:API document whose `data` is of type `io.cozy.sharings` and has attributes,
/// `open_sharing` a boolean, `rules` a non-empty array of at most [`model::MAX_RULES`] valid
/// rules. The text attributes are checked last, by [`text`], once the rules were found within
/// the caller's permissions and the recipients read.
fn read_new_sharing(body: &Value) -> Result<(NewSharingAttributes, bool, Vec<Rule>)> {
    let doc = Received::<NewSharingAttributes>::read(body);
    let resource = doc.resource().ok_or_else(|| bad("the body must be a JSON:API document"))?;
    if resource.kind.as_deref() != Some(SHARINGS_TYPE) {
        return Err(bad("data.type must be io.cozy.sharings"));
    }
    let attrs = doc.attributes().flatten().cloned().ok_or_else(|| bad("data.attributes missing"))?;
    let open_sharing = match attrs.open_sharing {
        Field::Unset => false,
        Field::Set(b) => b,
        Field::Invalid => return Err(bad("open_sharing must be a boolean")),
    };
    let rules = match &attrs.rules {
        Field::Set(rules) if !rules.is_empty() => rules,
        _ => return Err(bad("a sharing needs a non-empty rules array")),
    };
    if rules.len() > model::MAX_RULES {
        return Err(bad(format!("a sharing has at most {} rules", model::MAX_RULES)));
    }
    let rules = rules.iter().map(|r| Rule::from_input(r).map_err(bad)).collect::<Result<Vec<_>>>()?;
    Ok((attrs, open_sharing, rules))
}

/// A text attribute of a new sharing (`key`): a string of at most 1000 bytes, or absent or
/// `null` (400 otherwise).
fn text(value: &Field<String>, key: &str) -> Result<Option<String>> {
    match value {
        Field::Unset => Ok(None),
        Field::Set(s) if s.len() <= 1000 => Ok(Some(s.clone())),
        _ => Err(bad(format!("{key} must be a string of at most 1000 characters"))),
    }
}

/// Mails the invitation of every member not mailed yet, when SMTP is configured; those members
/// become `pending`. Failures are logged and leave the member `mail-not-sent`.
pub async fn send_invitations(cx: &Context, inst: &Instance, s: Sharing) -> Result<Sharing> {
    send_invitations_again(cx, inst, s, &[]).await
}

/// [`send_invitations`], and the invitation of the members `again` (invited, not answered) once
/// more, whatever their status.
async fn send_invitations_again(cx: &Context, inst: &Instance, s: Sharing, again: &[MemberIndex]) -> Result<Sharing> {
    if cx.config.mail.smtp_url.is_none() {
        return Ok(s);
    }
    let mut sent = Vec::new();
    for (i, m) in s.members.iter().enumerate().skip(1) {
        let i = MemberIndex(i);
        let due = m.status == MemberStatus::MailNotSent || (again.contains(&i) && s.invitation_open(i));
        let (Some(email), true) = (m.email.as_deref(), due) else { continue };
        let Some(link) = invitation_link(cx, inst, &s, i) else { continue };
        let invitation =
            mail::Invitation { to: email, owner: inst.display_name(), description: &s.description, link: &link };
        match mail::send_invitation(&cx.config.mail, &invitation).await {
            Ok(()) => sent.push(i),
            Err(e) => {
                tracing::warn!(instance = %inst.domain, sharing = %s.id(), member = i.get(), error = %e, "invitation mail not sent")
            }
        }
    }
    if sent.is_empty() {
        return Ok(s);
    }
    let id = s.id.clone().ok_or_else(|| bad("sharing without id"))?;
    let ((), s) = update(inst.store.as_ref(), &id, |s| {
        for i in &sent {
            if let Some(m) = s.member_mut(*i).filter(|m| m.status == MemberStatus::MailNotSent) {
                m.status = MemberStatus::Pending;
            }
        }
        Ok(())
    })
    .await?;
    Ok(s)
}

/// `POST /sharings/:id/recipients`: more recipients for an existing sharing (owner only). A
/// recipient who is already a member is not added twice (two members of one instance would
/// make that instance refuse the request): one still invited gets the invitation again, one
/// ready is left as it is, as Cozy's `addMember` does. Answers the sharing and, per recipient
/// in the order given (`recipients` then `read_only_recipients`), its member index and what
/// was done.
pub async fn add_recipients(
    cx: &Context,
    inst: &Instance,
    id: &SharingId,
    body: &Value,
) -> Result<(Sharing, Vec<(MemberIndex, AddOutcome)>)> {
    let rels = Relationships::of(body);
    let rw = resolve_recipients(inst, rels.recipients.as_ref()).await?;
    let ro = resolve_recipients(inst, rels.read_only_recipients.as_ref()).await?;
    if rw.is_empty() && ro.is_empty() {
        return Err(bad("no recipients given"));
    }
    let max = cx.config.federation.max_members;
    let (outcomes, s) = update(inst.store.as_ref(), id, |s| {
        if !s.owner {
            return Err(SharingError::Forbidden("only the owner adds recipients".into()));
        }
        if !s.accepts_members() {
            return Err(revoked_conflict());
        }
        // A member revoked (or who left) does not come back as a recipient added again, as
        // through an invitation link (`invitations`): its instance refuses a second request
        // for a sharing it answered, so the seat would wait for good. Only a new sharing
        // brings it back.
        if let Some(u) = rw.iter().chain(&ro).filter_map(|r| r.instance.as_deref()).find(|u| {
            s.members.iter().skip(1).any(|m| {
                m.status == MemberStatus::Revoked && m.instance.as_deref().is_some_and(|x| same_instance(x, u))
            })
        }) {
            return Err(SharingError::Conflict(format!(
                "{u} left this sharing or was revoked from it: only a new sharing brings it back"
            )));
        }
        let all = rw.iter().map(|r| (r, false)).chain(ro.iter().map(|r| (r, true)));
        let outcomes: Vec<(MemberIndex, AddOutcome)> =
            all.map(|(r, read_only)| add_or_find(s, r.clone(), read_only, None)).collect();
        if s.members.len() > max {
            return Err(bad(format!("a sharing has at most {max} members")));
        }
        Ok(outcomes)
    })
    .await?;
    let again: Vec<MemberIndex> =
        outcomes.iter().filter(|(_, o)| *o == AddOutcome::InvitedAgain).map(|(i, _)| *i).collect();
    let s = send_invitations_again(cx, inst, s, &again).await?;
    if outcomes.iter().any(|(_, o)| *o == AddOutcome::Added) {
        tell_members(cx, inst, &s).await?;
    }
    Ok((s, outcomes))
}

/// `POST /sharings/:id/recipients/delegated`: a ready recipient of an `open_sharing` adds
/// members on the owner; they are read-only until the owner upgrades them. Answers the new
/// members' invitation links, for the recipient to pass on.
pub async fn add_delegated(
    cx: &Context,
    inst: &Instance,
    id: &SharingId,
    caller: MemberIndex,
    body: &Value,
) -> Result<Vec<(MemberIndex, String)>> {
    let list = resolve_recipients_inline(Relationships::of(body).recipients.as_ref())?;
    if list.is_empty() {
        return Err(bad("no recipients given"));
    }
    let max = cx.config.federation.max_members;
    let (added, s) = update(inst.store.as_ref(), id, |s| {
        if !s.owner || !s.open_sharing {
            return Err(SharingError::Forbidden("this sharing does not accept members added by recipients".into()));
        }
        if !s.accepts_members() {
            return Err(revoked_conflict());
        }
        if s.member(caller).map(|m| m.status) != Some(MemberStatus::Ready) {
            return Err(SharingError::Forbidden("only ready members may add recipients".into()));
        }
        let added: Vec<(MemberIndex, AddOutcome)> =
            list.iter().map(|r| add_or_find(s, r.clone(), true, Some(caller))).collect();
        if s.members.len() > max {
            return Err(bad(format!("a sharing has at most {max} members")));
        }
        Ok(added)
    })
    .await?;
    let s = send_invitations(cx, inst, s).await?;
    tell_members(cx, inst, &s).await?;
    // The invitation of someone already invited goes back only to the member who invited
    // them: another member's (or the owner's) invitation is not theirs to pass on.
    Ok(added
        .into_iter()
        .filter(|(i, o)| *o != AddOutcome::AlreadyMember && s.members[*i].added_by == Some(caller))
        .filter_map(|(i, _)| invitation_link(cx, inst, &s, i).map(|l| (i, l)))
        .collect())
}

pub(super) fn resolve_recipients_inline(rel: Option<&Value>) -> Result<Vec<RecipientInput>> {
    let data = RecipientRef::parse_relationship(rel.unwrap_or(&Value::Null)).map_err(bad)?;
    data.into_iter()
        .map(|item| {
            let item = item.unwrap_or_default();
            let r = RecipientInput { name: item.name, email: item.email, instance: item.instance };
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
    Ask { sharing: Box<Sharing>, index: MemberIndex },
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
        already_there(s, index, &peer_str)?;
        let m = &mut s.members[index];
        let before = (m.instance.clone(), m.status);
        m.instance = Some(peer_str.clone());
        m.status = MemberStatus::Seen;
        Ok(before)
    })
    .await?;
    if let Err(e) = request::send_notice(cx, inst, &s, index, &peer).await.map_err(notice_refused) {
        let restored = update(inst.store.as_ref(), id, |s| {
            let m = &mut s.members[index];
            if m.status == MemberStatus::Seen && m.instance.as_deref() == Some(peer_str.as_str()) {
                (m.instance, m.status) = before.clone();
            }
            Ok(())
        })
        .await;
        if let Err(r) = restored {
            tracing::warn!(instance = %inst.domain, sharing = %id, member = index.get(), error = %r, "failed to restore a member after a failed notice");
        }
        return Err(e);
    }
    let mut redirect = peer.join("/auth/authorize/sharing").map_err(|_| bad("invalid address"))?;
    redirect.query_pairs_mut().append_pair("sharing_id", id.as_str()).append_pair("state", state);
    Ok(redirect.to_string())
}

/// Refuses to send `peer` a request through member `index` when another member of the sharing
/// is already that instance, invited or ready: the instance would refuse it (a request names
/// each instance once, and an active sharing is not asked again), and the person is already in.
pub(crate) fn already_there(s: &Sharing, index: MemberIndex, peer: &str) -> Result<()> {
    let other = s.recipient_indexes().filter(|&i| i != index).map(|i| &s.members[i]).find(|m| {
        (m.status == MemberStatus::Ready || m.status.is_invited())
            && m.instance.as_deref().is_some_and(|u| same_instance(u, peer))
    });
    match other {
        Some(m) if m.status == MemberStatus::Ready => {
            Err(SharingError::Conflict(format!("{peer} is already a member of this sharing")))
        }
        Some(_) => Err(SharingError::Conflict(format!(
            "{peer} is already invited to this sharing: use the invitation it was given"
        ))),
        None => Ok(()),
    }
}

/// A recipient's instance that refuses the notice (4xx) refused the request for its own
/// reasons (it answered it already, it has it from another member...): the person gets that
/// reason with 409, not a 502 as if it had failed. Transient answers (408, 429) and the rest
/// stay what they are.
fn notice_refused(e: SharingError) -> SharingError {
    match e {
        SharingError::Peer(crate::federation::client::FederationError::Status { peer, status, reason })
            if (400..500).contains(&status) && status != 408 && status != 429 =>
        {
            SharingError::Conflict(format!("the instance {peer} refused the sharing request ({status}): {reason}"))
        }
        e => e,
    }
}

/// `POST /sharings/:id/answer` on the owner: checks the single-use `state`, and on acceptance
/// creates the client standing for the member, stores the member's credentials, and answers
/// with its own.
pub async fn process_answer(cx: &Context, inst: &Instance, id: &SharingId, body: &Value) -> Result<Value> {
    let store = inst.store.as_ref();
    let received = Received::<Answer>::read(body);
    let data = received.resource().ok_or_else(|| bad("the body must be a JSON:API document"))?;
    if data.kind.as_deref() != Some(ANSWER_TYPE) {
        return Err(bad("data.type must be io.cozy.sharings.answer"));
    }
    let attrs = received.attributes_or_default();
    let state = attrs.state.as_deref().ok_or_else(|| bad("the answer needs a state"))?;
    let s =
        load(store, id).await?.filter(|s| s.owner).ok_or_else(|| SharingError::NotFound("no such sharing".into()))?;
    let index = member_by_state(inst, &s, state).ok_or_else(|| SharingError::Forbidden("invalid state".into()))?;
    if !s.invitation_open(index) {
        return Err(closed_conflict(&s));
    }
    if attrs.refused == Some(true) {
        update(store, id, |s| {
            if !s.invitation_open(index) {
                return Err(closed_conflict(s));
            }
            let m = &mut s.members[index];
            m.status = MemberStatus::Refused;
            Ok(())
        })
        .await?;
        tracing::info!(instance = %inst.domain, sharing = %id, member = index.get(), "sharing refused");
        tell_members_of(cx, inst, id).await?;
        let refused = Answer { refused: Some(true), ..Answer::default() };
        return Ok(to_value(Document::resource(ANSWER_TYPE, id.as_str(), refused)));
    }
    if !s.active && revoke_rule_emptied(inst, &s).await? {
        tracing::info!(instance = %inst.domain, sharing = %id, "a removal before any acceptance revokes the sharing");
        let s = revoke(cx, inst, id, None).await?;
        return Err(closed_conflict(&s));
    }
    let creds = attrs.peer_credentials().ok_or_else(|| bad("the answer needs client and access_token"))?;
    // The member accepted exactly the request offered to it (see `request`).
    let accepted = attrs.request_digest.as_deref().ok_or_else(|| bad("the answer needs the request_digest"))?;
    if !Instance::secrets_match(accepted, &request::offered_digest(&s, index)?) {
        return Err(SharingError::Conflict("the request accepted is not the one offered to this member".into()));
    }
    let public_name = attrs.public_name.as_deref().map(|n| n.chars().take(200).collect::<String>());
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
    tracing::info!(instance = %inst.domain, sharing = %id, member = index.get(), "sharing accepted by member");
    cx.sharing_changed(inst, id).await?;
    tell_members_of(cx, inst, id).await?;
    let attributes =
        Answer { member_index: Some(index), read_only: Some(read_only), ..Answer::with_credentials(&issued) };
    Ok(to_value(Document::resource(ANSWER_TYPE, id.as_str(), attributes)))
}

#[cfg(test)]
mod same_instance_tests {
    use super::same_instance;

    #[test]
    fn an_address_matches_with_or_without_its_scheme_case_or_trailing_slash() {
        assert!(same_instance("http://bob.localhost:8080", "bob.localhost:8080"));
        assert!(same_instance("HTTPS://Bob.Example/", "bob.example"));
        assert!(same_instance("http://bob.example/", "http://bob.example"));
        assert!(!same_instance("http://bob.example", "http://bob.example.org"));
        assert!(!same_instance("http://bob.example:8081", "bob.example:8080"));
    }
}

#[cfg(test)]
mod new_sharing_tests {
    use serde_json::json;

    use super::*;

    fn reason(body: Value) -> String {
        match read_new_sharing(&body) {
            Err(SharingError::BadRequest(r)) => r,
            Err(e) => panic!("not a 400: {e:?}"),
            Ok(_) => panic!("accepted: {body}"),
        }
    }

    fn rule() -> Value {
        json!({"title": "t", "doctype": "io.cozy.notes", "values": ["n1"]})
    }

    /// Each refusal of `POST /sharings`'s body, with the reason it always had, the first found
    /// in the order they were always checked.
    #[test]
    fn new_sharings_are_refused_with_the_reasons_they_always_had() {
        let doc = |data: Value| json!({"data": data});
        for body in [json!([]), json!({}), doc(json!(null)), doc(json!([{"type": "io.cozy.sharings"}])), doc(json!(3))]
        {
            assert_eq!(reason(body), "the body must be a JSON:API document");
        }
        for kind in [json!(null), json!("io.cozy.notes"), json!(["io.cozy.sharings"])] {
            assert_eq!(reason(doc(json!({"type": kind, "attributes": {}}))), "data.type must be io.cozy.sharings");
        }
        assert_eq!(reason(doc(json!({"attributes": {"rules": [rule()]}}))), "data.type must be io.cozy.sharings");
        for attrs in [json!(null), json!([]), json!("x")] {
            let body = doc(json!({"type": "io.cozy.sharings", "attributes": attrs}));
            assert_eq!(reason(body), "data.attributes missing");
        }
        assert_eq!(reason(doc(json!({"type": "io.cozy.sharings"}))), "data.attributes missing");
        let with = |attrs: Value| doc(json!({"type": "io.cozy.sharings", "attributes": attrs}));
        for bad in [json!("true"), json!(1), json!([true]), json!({})] {
            // Before the rules: an invalid flag is the first reason even without rules.
            assert_eq!(reason(with(json!({"open_sharing": bad}))), "open_sharing must be a boolean");
        }
        for rules in [json!(null), json!([]), json!({}), json!("r"), json!({"0": rule()})] {
            assert_eq!(reason(with(json!({"rules": rules}))), "a sharing needs a non-empty rules array");
        }
        assert_eq!(reason(with(json!({}))), "a sharing needs a non-empty rules array");
        let many: Vec<Value> = (0..=model::MAX_RULES).map(|_| rule()).collect();
        assert_eq!(reason(with(json!({"rules": many}))), format!("a sharing has at most {} rules", model::MAX_RULES));
        assert_eq!(reason(with(json!({"rules": [rule(), 3]}))), "each rule must be an object");
        assert_eq!(reason(with(json!({"rules": [rule(), []]}))), "each rule must be an object");
        assert_eq!(reason(with(json!({"rules": [{"values": ["a"]}]}))), "each rule needs a doctype");
    }

    /// What is accepted, with the text attributes read (and refused) as they always were:
    /// absent or `null` are unset, anything but a string of at most 1000 bytes is refused.
    #[test]
    fn new_sharings_accept_what_they_always_did() {
        let body = json!({"data": {"type": "io.cozy.sharings", "attributes": {"rules": [rule()],
            "description": "d", "preview_path": null, "open_sharing": null, "other": [1]}}});
        let (attrs, open, rules) = read_new_sharing(&body).unwrap();
        assert!(!open);
        assert_eq!(rules.len(), 1);
        assert_eq!(text(&attrs.description, "description").unwrap().as_deref(), Some("d"));
        assert_eq!(text(&attrs.preview_path, "preview_path").unwrap(), None);
        assert_eq!(text(&attrs.app_slug, "app_slug").unwrap(), None);
        let body = json!({"data": {"type": "io.cozy.sharings", "attributes": {"rules": [rule()], "open_sharing": true,
            "description": 3, "app_slug": "a".repeat(1001), "preview_path": "a".repeat(1000)}}});
        let (attrs, open, _) = read_new_sharing(&body).unwrap();
        assert!(open);
        let refused = |f: &Field<String>, k: &str| match text(f, k) {
            Err(SharingError::BadRequest(r)) => r,
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(
            refused(&attrs.description, "description"),
            "description must be a string of at most 1000 characters"
        );
        assert_eq!(refused(&attrs.app_slug, "app_slug"), "app_slug must be a string of at most 1000 characters");
        assert_eq!(text(&attrs.preview_path, "preview_path").unwrap().map(|p| p.len()), Some(1000));
        let body = json!({"data": {"type": "io.cozy.sharings", "attributes": {"rules": [rule()], "description": ["d"],
            "preview_path": {"p": 1}, "app_slug": true}}});
        let (attrs, _, _) = read_new_sharing(&body).unwrap();
        for (f, k) in
            [(&attrs.description, "description"), (&attrs.preview_path, "preview_path"), (&attrs.app_slug, "app_slug")]
        {
            assert_eq!(refused(f, k), format!("{k} must be a string of at most 1000 characters"));
        }
    }
}
