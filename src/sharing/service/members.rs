//! Members across instances: the owner tells every ready member the member list when it changes
//! (Cozy's `PUT /sharings/:id/recipients`), and a recipient of an `open_sharing` forwards the
//! recipients its apps add to the owner (Cozy's delegated sharing: the recipient's instance
//! calls the owner's `POST /sharings/:id/recipients/delegated` with its peer credentials).

use super::*;
use crate::sharing::protocol::{
    DelegatedRecipients, InvitationLink, MembersAttributes, RecipientRef, RelatedResource, Relationship, Relationships,
    WireMember, CONTACTS_TYPE,
};

/// The path of the member-list notice on a recipient.
fn members_path(id: &SharingId) -> String {
    format!("/sharings/{id}/recipients")
}

/// The member list as member `target` is shown it: every member's status, public name and
/// read-only flag, by index (the indices are the owner's); the address, name and email only of
/// the owner and of `target` itself, as in the sharing request (see `request::shows_address`).
pub fn members_document(s: &Sharing, target: MemberIndex) -> Value {
    let members: Vec<WireMember> = s
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut o = WireMember {
                status: m.status.as_str().to_owned(),
                read_only: m.read_only,
                public_name: m.public_name.clone(),
                ..WireMember::default()
            };
            if request::shows_address(MemberIndex(i), target) {
                (o.name, o.email, o.instance) = (m.name.clone(), m.email.clone(), m.instance.clone());
            }
            o
        })
        .collect();
    to_value(Document::resource(SHARINGS_TYPE, s.id(), MembersAttributes::of(members)))
}

/// On the owner, after a member change (added, answered, revoked, left, read-only): queues the
/// member list for every ready member it can call. One notice per member is kept in the outbox
/// (a newer list replaces one not delivered yet), so an older list never lands after a newer one.
pub async fn tell_members(cx: &Context, inst: &Instance, s: &Sharing) -> Result<()> {
    if !s.owner {
        return Ok(());
    }
    let id = s.id.clone().ok_or_else(|| bad("sharing without id"))?;
    for (i, m) in s.members.iter().enumerate().skip(1) {
        let i = MemberIndex(i);
        let key = format!("members-{id}-{i}");
        if m.status != MemberStatus::Ready || m.outbound.is_none() {
            // Revoked or gone: a list still waiting for it is not its business any more.
            if m.status == MemberStatus::Revoked {
                outbox::cancel(inst, &key).await?;
                outbox::cancel(inst, &credentials_key(&id, i)).await?;
            }
            continue;
        }
        let mut e = Entry::new(&id, i, Method::PUT, members_path(&id));
        e.body = Some(members_document(s, i));
        outbox::enqueue_replacing(cx, inst, &key, e).await?;
    }
    Ok(())
}

/// The outbox key of member `i`'s credentials notice (one waits at most; see
/// `lifecycle::set_read_only`).
pub(super) fn credentials_key(id: &SharingId, i: MemberIndex) -> String {
    format!("credentials-{id}-{i}")
}

/// Loads the sharing once more and tells its members (see [`tell_members`]).
pub(super) async fn tell_members_of(cx: &Context, inst: &Instance, id: &SharingId) -> Result<()> {
    match load(inst.store.as_ref(), id).await? {
        Some(s) => tell_members(cx, inst, &s).await,
        None => Ok(()),
    }
}

/// `PUT /sharings/:id/recipients` from the owner, on a recipient: the member list. Statuses,
/// public names and read-only flags are taken by index; members the owner added since are
/// appended. This instance's own credentials and the owner's entry are left as they are.
/// 400 when the list is malformed, shorter than the one known, or longer than `max_members`.
pub async fn receive_members(cx: &Context, inst: &Instance, id: &SharingId, body: &Value) -> Result<Sharing> {
    let list = Received::<MembersAttributes>::read(body)
        .attributes_or_default()
        .members
        .ok_or_else(|| bad("data.attributes.members must be an array"))?;
    if list.len() > cx.config.federation.max_members {
        return Err(bad(format!("a sharing has at most {} members", cx.config.federation.max_members)));
    }
    let mut wire = Vec::with_capacity(list.len());
    for item in list {
        let item = item.0.unwrap_or_default();
        let status = MemberStatus::parse(&item.status).ok_or_else(|| bad("each member needs a known status"))?;
        let text = |t: Option<String>| t.map(|s| s.chars().filter(|c| !c.is_control()).take(200).collect::<String>());
        wire.push((status, text(item.public_name), text(item.name), text(item.email), item.read_only));
    }
    acceptance_recorded(inst, id).await?;
    let ((), s) = update(inst.store.as_ref(), id, |s| {
        let me = own_index(cx, inst, s);
        if s.accepting_here() {
            return Err(still_accepting());
        }
        if s.owner || !s.active {
            return Err(SharingError::Conflict("not an active sharing received from an owner".into()));
        }
        if wire.len() < s.members.len() {
            return Err(bad("the member list cannot lose members"));
        }
        if wire.first().map(|w| w.0) != Some(MemberStatus::Owner)
            || wire.iter().skip(1).any(|w| w.0 == MemberStatus::Owner)
        {
            return Err(bad("the first member, and only it, is the owner"));
        }
        for (i, (status, public_name, name, email, read_only)) in wire.iter().cloned().enumerate() {
            if i == 0 {
                continue;
            }
            if i >= s.members.len() {
                let mut m = Member::new(status);
                (m.public_name, m.name, m.email, m.read_only) = (public_name, name, email, read_only);
                s.members.push(m);
                continue;
            }
            let m = &mut s.members[i];
            m.status = status;
            m.read_only = read_only;
            if public_name.is_some() {
                m.public_name = public_name;
            }
            if Some(MemberIndex(i)) != me {
                if name.is_some() {
                    m.name = name;
                }
                if email.is_some() {
                    m.email = email;
                }
            }
        }
        Ok(())
    })
    .await?;
    tracing::info!(instance = %inst.domain, sharing = %id, members = s.members.len(), "member list updated by the owner");
    Ok(s)
}

/// `POST /sharings/:id/recipients` on a recipient, for one of its apps: forwards the recipients
/// (contacts resolved here, inline ones as given) to the owner's delegated route with this
/// instance's credentials, and records the new members locally at the owner's indices. Answers
/// the local copy and the new members' invitation links `(index, link)`.
/// 403 when the sharing is not `open_sharing` or this instance is not a ready member; the
/// owner's refusal is passed on (403/404/409 as a conflict or refusal, anything else 502).
pub async fn forward_recipients(
    cx: &Context,
    inst: &Instance,
    id: &SharingId,
    body: &Value,
) -> Result<(Sharing, Vec<(MemberIndex, String)>)> {
    let s = load(inst.store.as_ref(), id).await?.ok_or_else(|| SharingError::NotFound("no such sharing".into()))?;
    if !s.open_sharing {
        return Err(SharingError::Forbidden(
            "this sharing is not open: only its owner adds recipients (open_sharing is false)".into(),
        ));
    }
    let me = own_index(cx, inst, &s);
    if !s.active || s.is_revoked() || me.and_then(|i| s.member(i)).is_none_or(|m| m.status != MemberStatus::Ready) {
        return Err(SharingError::Forbidden("only a ready member of the sharing adds recipients".into()));
    }
    let rels = Relationships::of(body);
    let mut given = resolve_recipients(inst, rels.recipients.as_ref()).await?;
    given.extend(resolve_recipients(inst, rels.read_only_recipients.as_ref()).await?);
    if given.is_empty() {
        return Err(bad("no recipients given"));
    }
    let inline: Vec<RecipientRef> = given
        .iter()
        .map(|r| RecipientRef {
            kind: Some(CONTACTS_TYPE.into()),
            name: r.name.clone(),
            email: r.email.clone(),
            instance: r.instance.clone(),
            id: None,
        })
        .collect();
    let delegated = Document {
        data: RelatedResource {
            id: id.as_str().to_owned(),
            relationships: DelegatedRecipients { recipients: Relationship { data: inline } },
            kind: SHARINGS_TYPE,
        },
    };
    let owner = owner_url(&s)?;
    let mut creds = s.members[0].outbound.clone().ok_or_else(|| bad("no credentials for the owner"))?;
    let before = creds.clone();
    let answer = cx
        .federation
        .call_peer(&mut creds, &owner, Method::POST, &format!("/sharings/{id}/recipients/delegated"), Some(&delegated))
        .await;
    let refreshed = (creds != before).then_some(creds);
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            if let Some(c) = refreshed {
                keep_owner_credentials(inst, id, c).await;
            }
            return Err(match e {
                crate::federation::client::FederationError::Status { status: 403, reason, .. } => {
                    SharingError::Forbidden(format!("the sharing's owner refused: {reason}"))
                }
                other => owner_refusal(other),
            });
        }
    };
    let links: Vec<(MemberIndex, String)> =
        InvitationLink::parse_answer(&answer).into_iter().map(|l| (l.index, l.invitation)).collect();
    let max = cx.config.federation.max_members;
    let ((), s) = update(inst.store.as_ref(), id, |s| {
        if let Some(c) = &refreshed {
            if s.members[0].outbound.is_some() {
                s.members[0].outbound = Some(c.clone());
            }
        }
        for ((index, _), r) in links.iter().zip(&given) {
            // The owner's indices: the ones it has not told us of yet are appended in order.
            if index.get() == s.members.len() && index.get() < max {
                let mut m = Member::new(MemberStatus::MailNotSent);
                (m.name, m.email, m.instance) = (r.name.clone(), r.email.clone(), r.instance.clone());
                m.read_only = true;
                m.added_by = me;
                s.members.push(m);
            }
        }
        Ok(())
    })
    .await?;
    tracing::info!(instance = %inst.domain, sharing = %id, added = links.len(), "recipients added through the owner");
    Ok((s, links))
}

async fn keep_owner_credentials(inst: &Instance, id: &SharingId, creds: PeerCredentials) {
    let kept = update(inst.store.as_ref(), id, |s| {
        if s.members[0].outbound.is_some() {
            s.members[0].outbound = Some(creds.clone());
        }
        Ok(())
    })
    .await;
    if let Err(e) = kept {
        tracing::warn!(instance = %inst.domain, sharing = %id, error = %e, "refreshed credentials not kept");
    }
}
