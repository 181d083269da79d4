//! After acceptance, on either side: revocation (of the sharing or one member), leaving, being
//! revoked or left, and members' read-only permission.

use super::*;

/// Revokes members on the owner (`index` None: everyone). The local effect is immediate; each
/// ready member is told through the outbox.
pub async fn revoke(cx: &Context, inst: &Instance, id: &SharingId, index: Option<MemberIndex>) -> Result<Sharing> {
    let store = inst.store.as_ref();
    // Credentials die first: once a member shows as revoked, its tokens must already fail.
    if let Some(current) = load(store, id).await?.filter(|s| s.owner) {
        let targets: Vec<MemberIndex> = match index {
            Some(i) => vec![i],
            None => current.recipient_indexes().collect(),
        };
        delete_inbound_clients(inst, &current, &targets).await?;
    }
    let (revoked, s) = update(store, id, |s| {
        if !s.owner {
            return Err(SharingError::Forbidden("only the owner revokes members".into()));
        }
        let targets: Vec<MemberIndex> = match index {
            Some(i) if i.is_owner() => return Err(bad("the owner cannot be revoked; revoke the sharing instead")),
            Some(i) if s.member(i).is_some() => vec![i],
            Some(_) => return Err(SharingError::NotFound("no such member".into())),
            None => s.recipient_indexes().collect(),
        };
        let mut done = Vec::new();
        if index.is_none() {
            // Everyone: the sharing ends, with every invitation link of it.
            s.revoked_at.get_or_insert_with(now_rfc3339);
            invitations::revoke_all(s);
        }
        for i in targets {
            let m = &mut s.members[i];
            if m.status == MemberStatus::Revoked {
                continue;
            }
            let was_ready = m.status == MemberStatus::Ready;
            m.status = MemberStatus::Revoked;
            done.push((i, m.inbound_client_id.take(), was_ready && m.outbound.is_some()));
            invitations::revoke_created_by(s, i);
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
        tracing::info!(instance = %inst.domain, sharing = %id, member = i.get(), "member revoked");
    }
    cx.sharing_changed(inst, id).await?;
    tell_members(cx, inst, &s).await?;
    Ok(s)
}

/// Ends sharing `id` on this instance, whichever side it is: on the owner the sharing is
/// revoked for every member ([`revoke`] with no index), on a recipient this instance leaves it
/// ([`leave`]). What a removal under a `remove: revoke` rule, a shared root going to the trash,
/// and `hearth sharings revoke` without a member do.
pub async fn end(cx: &Context, inst: &Instance, id: &SharingId) -> Result<Sharing> {
    let s = load(inst.store.as_ref(), id).await?.ok_or_else(|| SharingError::NotFound("no such sharing".into()))?;
    if s.owner {
        revoke(cx, inst, id, None).await
    } else {
        leave(cx, inst, id).await
    }
}

pub(super) async fn delete_inbound_clients(inst: &Instance, s: &Sharing, members: &[MemberIndex]) -> Result<()> {
    for i in members {
        if let Some(c) = s.member(*i).and_then(|m| m.inbound_client_id.as_deref()) {
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
        delete_inbound_clients(inst, &current, &[MemberIndex::OWNER]).await?;
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
        let mut e = Entry::new(id, MemberIndex::OWNER, Method::DELETE, format!("/sharings/{id}/answer"));
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
        delete_inbound_clients(inst, &current, &[MemberIndex::OWNER]).await?;
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
pub async fn member_left(cx: &Context, inst: &Instance, id: &SharingId, index: MemberIndex) -> Result<()> {
    if let Some(current) = load(inst.store.as_ref(), id).await?.filter(|_| !index.is_owner()) {
        delete_inbound_clients(inst, &current, &[index]).await?;
    }
    let (client, _) = update(inst.store.as_ref(), id, |s| {
        let m = s
            .member_mut(index)
            .filter(|_| !index.is_owner())
            .ok_or_else(|| SharingError::NotFound("no such member".into()))?;
        m.status = MemberStatus::Revoked;
        m.outbound = None;
        let c = m.inbound_client_id.take();
        invitations::revoke_created_by(s, index);
        s.active = s.members.iter().any(|m| m.status == MemberStatus::Ready);
        Ok(c)
    })
    .await?;
    if let Some(c) = client {
        oauth::delete_client(inst, &c).await?;
    }
    tracing::info!(instance = %inst.domain, sharing = %id, member = index.get(), "member left");
    cx.sharing_changed(inst, id).await?;
    tell_members_of(cx, inst, id).await?;
    Ok(())
}

/// `POST|DELETE /sharings/:id/recipients/:index/readonly` on the owner. For a ready member the
/// client standing for it is replaced (its old tokens stop working at once) and the new
/// credentials are sent to it through the outbox.
pub async fn set_read_only(
    cx: &Context,
    inst: &Instance,
    id: &SharingId,
    index: MemberIndex,
    read_only: bool,
) -> Result<Sharing> {
    let store = inst.store.as_ref();
    let s = load(store, id).await?.ok_or_else(|| SharingError::NotFound("no such sharing".into()))?;
    if !s.owner {
        return Err(SharingError::Forbidden("only the owner changes permissions".into()));
    }
    if index.is_owner() || s.member(index).is_none() {
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
        let m = s.member_mut(index).ok_or_else(|| SharingError::NotFound("no such member".into()))?;
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
        let notice = Answer { read_only: Some(read_only), ..Answer::with_credentials(&issued) };
        e.body = Some(to_value(Document::resource(CREDENTIALS_TYPE, id.as_str(), notice)));
        // One per member, the newest replacing one not delivered yet: an older one landing
        // after it would leave the member a client deleted here.
        outbox::enqueue_replacing(cx, inst, &super::members::credentials_key(id, index), e).await?;
    }
    tell_members(cx, inst, &s).await?;
    Ok(s)
}

/// Whether a `remove: revoke` rule on ids has lost its documents: every one of its values is
/// deleted or absent here, and at least one was deleted. The sharing is not tracked before its
/// first acceptance, so such a deletion is seen when a member answers: the sharing is revoked
/// then, as a deletion after acceptance revokes it (Cozy).
pub(super) async fn revoke_rule_emptied(inst: &Instance, s: &Sharing) -> Result<bool> {
    for rule in s.rules.iter().filter(|r| r.remove == model::Flow::Revoke && r.by_id()) {
        let Ok(doctype) = Doctype::parse(&rule.doctype) else { continue };
        let ids: Vec<DocId> = rule.values.iter().filter_map(|v| DocId::parse(v).ok()).collect();
        let leaves = inst.store.doc_leaves(&doctype, &ids).await?;
        let alive = leaves.values().any(|l| l.first().is_some_and(|(_, deleted)| !deleted));
        if !alive && !leaves.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `DELETE /files/:id` is about to move `id` to the trash: every sharing whose shared root (a
/// value of a files rule by id, see `Rule::subtree`) is `id` or lies under it ends here first,
/// as in Cozy (cozy-stack PR #2487, and #3709 for a root inside a trashed directory): on the
/// owner it is revoked for everyone (the members keep their files), on a recipient this
/// recipient leaves it (its copy is its own to keep or destroy). Done before the trash write,
/// so tracking has stopped when the root moves: no removal of it ever reaches the other side.
/// Answers the sharings ended.
pub async fn trashing(
    cx: &Context,
    inst: &Instance,
    files: &crate::files::Files,
    id: &DocId,
) -> Result<Vec<SharingId>> {
    let failed =
        |e: crate::files::FilesError| SharingError::Store(crate::store::StoreError::Internal(anyhow::anyhow!("{e}")));
    let mut ended = Vec::new();
    for s in crate::sharing::list(inst.store.as_ref()).await? {
        let Some(sid) = s.id.clone() else { continue };
        let live = if s.owner { s.revoked_at.is_none() } else { s.active };
        if !live {
            continue;
        }
        let mut root_inside = false;
        for root in s.rules.iter().filter(|r| r.subtree()).flat_map(|r| r.values.iter()) {
            match files.get(root).await {
                Ok(item) if !item.trashed() && item.lineage().any(|a| a == id.as_str()) => {
                    root_inside = true;
                    break;
                }
                Ok(_) | Err(crate::files::FilesError::NotFound(_)) => {}
                Err(e) => return Err(failed(e)),
            }
        }
        if !root_inside {
            continue;
        }
        tracing::info!(instance = %inst.domain, sharing = %sid, "the shared root goes to the trash: the sharing ends here");
        end(cx, inst, &sid).await?;
        ended.push(sid);
    }
    Ok(ended)
}

/// Whether this instance is a recipient of `s` whose own edits reach the owner (it may write,
/// and `s` has `sync` rules): a version of its own that loses to the owner's there comes back
/// as the owner's conflict copy (`files::shared`), whose bytes only this instance may hold.
pub fn edits_come_back(cx: &Context, inst: &Instance, s: &Sharing) -> bool {
    !s.owner && s.has_sync_rule() && own_index(cx, inst, s).and_then(|i| s.member(i)).is_some_and(|m| !m.read_only)
}

/// The shared roots (ids on this instance) of the live sharings this instance received
/// read-only: the values of their files rules by id (`Rule::subtree`). On a recipient a
/// root's id is already the one it holds (the owner transforms ids before sending, see
/// `sharing::xor`). `/files` refuses a change at or below one of them (nextcloud/server#17819:
/// accepted here, the owner would refuse it and the member's tree would never match again).
pub async fn read_only_roots(cx: &Context, inst: &Instance) -> Result<Vec<String>> {
    let mut roots = Vec::new();
    for s in crate::sharing::list(inst.store.as_ref()).await? {
        if s.owner || !s.active || s.is_revoked() {
            continue;
        }
        let read_only = own_index(cx, inst, &s).and_then(|i| s.member(i)).is_some_and(|m| m.read_only);
        if read_only {
            roots.extend(s.rules.iter().filter(|r| r.subtree() && !r.local).flat_map(|r| r.values.iter().cloned()));
        }
    }
    Ok(roots)
}
