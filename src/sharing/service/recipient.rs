//! A recipient's side: the sharing request as received, accepting (the OAuth credential
//! exchange with the owner) or refusing it, and credentials sent later.

use super::*;

/// `PUT /sharings/:id` on a recipient: see [`request::receive`].
pub async fn receive_request(cx: &Context, inst: &Instance, id: &SharingId, body: &Value) -> Result<Sharing> {
    request::receive(cx, inst, id, body).await
}

pub(super) fn sharing_scope(id: &SharingId, write: bool) -> PermissionSet {
    let verbs = if write { "ALL" } else { "GET" };
    PermissionSet::parse(&format!("io.cozy.sharings:{verbs}:{id}")).unwrap_or_default()
}

/// A sharing request received here and not answered yet.
pub(super) async fn load_request(cx: &Context, inst: &Instance, id: &SharingId) -> Result<Sharing> {
    let s = load(inst.store.as_ref(), id)
        .await?
        .filter(|s| !s.owner)
        .ok_or_else(|| SharingError::NotFound("no such sharing request".into()))?;
    if s.active {
        return Err(SharingError::Conflict("this sharing is already accepted".into()));
    }
    if request::answered(&s, &cx.federation.instance_url(inst.domain.as_str())) {
        return Err(SharingError::Conflict("this sharing request was already answered, or revoked".into()));
    }
    Ok(s)
}

/// The digest of a pending request as this instance shows it (see `request::digest`): what the
/// acceptance page carries and [`accept`] checks.
pub async fn pending_digest(cx: &Context, inst: &Instance, id: &SharingId) -> Result<String> {
    let s = load_request(cx, inst, id).await?;
    Ok(request::digest(&s, own_index(cx, inst, &s).unwrap_or(MemberIndex::OWNER)))
}

/// Accepting on the recipient: checks that the request is still the one shown (`digest`, from
/// the acceptance page; 409 otherwise), creates the client standing for the owner, sends the
/// answer with `state` and the digest (the owner checks it is the request it offers), stores
/// the owner's credentials, and activates the sharing.
pub async fn accept(cx: &Context, inst: &Instance, id: &SharingId, state: &str, digest: &str) -> Result<Sharing> {
    let store = inst.store.as_ref();
    let s = load_request(cx, inst, id).await?;
    let me = own_index(cx, inst, &s).unwrap_or(MemberIndex::OWNER);
    let my_url = cx.federation.instance_url(inst.domain.as_str());
    let shown = request::digest(&s, me);
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
        MemberIndex::OWNER,
        &sharing_scope(id, true),
        &format!("Sharing {owner_name}"),
        ttl,
    )
    .await?;
    let attributes = Answer {
        state: Some(state.to_owned()),
        public_name: Some(inst.display_name().to_owned()),
        request_digest: Some(shown.clone()),
        ..Answer::with_credentials(&issued)
    };
    let body = to_value(Document::resource(ANSWER_TYPE, id.as_str(), attributes));
    let answer =
        match cx.federation.call_open(Method::POST, &owner, &format!("/sharings/{id}/answer"), Some(&body)).await {
            Ok(a) => a,
            Err(e) => {
                oauth::delete_client(inst, &issued.client_id).await?;
                return Err(owner_refusal(e));
            }
        };
    let attrs = Received::<Answer>::read(&answer).attributes_or_default();
    let Some(creds) = attrs.peer_credentials() else {
        oauth::delete_client(inst, &issued.client_id).await?;
        return Err(SharingError::Peer(crate::federation::client::FederationError::BadResponse {
            peer: crate::federation::client::origin(&owner),
        }));
    };
    // This instance's member is the one the request is addressed to (`request::receive` made
    // sure there is exactly one); an owner naming another index is not followed.
    if attrs.member_index.is_some_and(|i| i != me) {
        tracing::warn!(instance = %inst.domain, sharing = %id, "the owner's answer names another member index; ignored");
    }
    let read_only = attrs.read_only == Some(true);
    let client_id = issued.client_id.clone();
    let stored = update(store, id, |s| {
        // A replacement that landed during the exchange (only the owner can make one) is not
        // what was accepted.
        if s.active || request::answered(s, &my_url) || request::digest(s, me) != shown {
            return Err(changed_conflict());
        }
        let owner = s.members.first_mut().ok_or_else(|| bad("no owner"))?;
        owner.outbound = Some(creds.clone());
        owner.inbound_client_id = Some(client_id.clone());
        if let Some(i) = own_index(cx, inst, s) {
            if let Some(m) = s.member_mut(i) {
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
    request::unmark_pending(inst, &s).await;
    tracing::info!(instance = %inst.domain, sharing = %id, "sharing accepted");
    cx.sharing_changed(inst, id).await?;
    Ok(s)
}

/// Refusing on the recipient: tells the owner (with `state`) and forgets the request.
pub async fn refuse(cx: &Context, inst: &Instance, id: &SharingId, state: &str) -> Result<()> {
    let store = inst.store.as_ref();
    let s = load_request(cx, inst, id).await?;
    let owner = owner_url(&s)?;
    let refusal = Answer { state: Some(state.to_owned()), refused: Some(true), ..Answer::default() };
    let body = to_value(Document::resource(ANSWER_TYPE, id.as_str(), refusal));
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
    request::unmark_pending(inst, &s).await;
    Ok(())
}

/// The owner's refusal of an answer (its invitation closed, the sharing revoked, the request
/// changed, a wrong `state`) is a conflict for the person answering, with the owner's reason;
/// anything else is the peer's failure (502).
pub(super) fn owner_refusal(e: crate::federation::client::FederationError) -> SharingError {
    match e {
        crate::federation::client::FederationError::Status { status: 400 | 403 | 404 | 409 | 410, reason, .. } => {
            SharingError::Conflict(format!("the sharing's owner refused the answer: {reason}"))
        }
        other => SharingError::Peer(other),
    }
}

/// `POST /sharings/:id/credentials` from the owner, on a recipient: new credentials after a
/// permission change.
pub async fn receive_credentials(inst: &Instance, id: &SharingId, body: &Value) -> Result<()> {
    let notice = Received::<Answer>::read(body);
    let attrs = notice.attributes().ok_or_else(|| bad("data.attributes missing"))?.cloned().unwrap_or_default();
    let creds = attrs.peer_credentials().ok_or_else(|| bad("client and access_token required"))?;
    let read_only = attrs.read_only == Some(true);
    acceptance_recorded(inst, id).await?;
    update(inst.store.as_ref(), id, |s| {
        if s.accepting_here() {
            return Err(still_accepting());
        }
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
