//! Who calls a route, by audience, as typed extractors: the prologue a handler used to repeat
//! (read the credentials, check them, answer 401 or 403) runs before it, and the handler
//! receives the caller.
//! - [`AppCaller`]: an app or CLI of this instance, with a bearer token of audience `app` or
//!   `cli` and its scope (`/data`, `/sharings/` management, `/permissions`, ...);
//! - [`PeerCaller`]: another instance, with the sharing credentials this instance issued it
//!   for the sharing named in the path (`/sharings/:id/...` notifications and replication);
//!   [`ReplicatingPeer`] adds that the sharing is active and the caller a ready member;
//! - [`PageSession`]: the owner's browser, with a live session cookie (pages);
//! - [`AppOrOwner`]: either an app's token or the owner's session (the realtime feed);
//! - [`InvitationCreator`]: either an app managing a sharing or a member's instance (invitation
//!   links).
//!
//! And, for app routes on one sharing, the caller with the sharing it may act on, checked in
//! the order the handlers always checked them (the path's ids first, then the token, then the
//! sharing): [`ManagedSharing`], [`ManagedMember`], [`ReadableSharing`] and, for apps and
//! members alike, [`SharingReader`].
//!
//! Each fails with the error its handlers answered before, same status, same JSON body
//! (`{"error","reason"}`, see `http::error`). Being extractors, they run before the handler
//! reads the body: a request without valid credentials gets its 401 or 403 whatever its body
//! (for `POST /sharings/:id/invitations`, whose handler used to read the body first, a
//! malformed body from an unauthenticated caller answered 400 before [`InvitationCreator`]).

use std::future::{ready, Future, Ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;

use super::sharings::{load_managed, may_read, member_index, peer, replicating_peer, sharing_id};
use super::{bearer, data_caller, instance_of, ApiError, ApiResult, Inst};
use crate::auth::{Claims, PermissionSet, Verb};
use crate::sharing::{self, service, MemberIndex, Sharing, SharingId};

/// `FromRequest` for the caller of a `/sharings/:id/...` route, as `check` finds it (see
/// [`of_sharing`]).
macro_rules! sharing_caller {
    ($name:ident, $check:expr) => {
        impl FromRequest for $name {
            type Error = ApiError;
            type Future = LocalBoxFuture<'static, Result<$name, ApiError>>;

            fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
                of_sharing(req, $check)
            }
        }
    };
}

/// An app's (or the CLI's) call: its token's claims and permissions. 401 without a bearer
/// token, or with one that is not a live app or CLI token of this instance.
pub struct AppCaller {
    pub claims: Claims,
    pub perms: PermissionSet,
}

impl FromRequest for AppCaller {
    type Error = ApiError;
    type Future = Ready<Result<AppCaller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            instance_of(req)
                .and_then(|inst| data_caller(&inst, req))
                .map(|(claims, perms)| AppCaller { claims, perms }),
        )
    }
}

/// A peer instance's call on `/sharings/:id/...`: the sharing named in the path and the member
/// its token stands for (0: the owner's instance). 400 for an invalid sharing id, 401 without
/// a token or with one that is not this sharing's, 403 when its permissions do not allow even
/// reading the sharing.
pub struct PeerCaller {
    pub id: SharingId,
    pub index: MemberIndex,
}

impl PeerCaller {
    /// 403 unless the caller is the sharing's owner (notices only the owner sends).
    pub fn owner_only(&self) -> ApiResult<()> {
        if !self.index.is_owner() {
            return Err(ApiError::Forbidden("only the owner's instance may send this".into()));
        }
        Ok(())
    }

    /// 403 unless the caller is a member other than the owner.
    pub fn member_only(&self) -> ApiResult<()> {
        if self.index.is_owner() {
            return Err(ApiError::Forbidden("only a member's instance may send this".into()));
        }
        Ok(())
    }
}

sharing_caller!(PeerCaller, |inst, req, id| async move {
    let index = peer(&inst, &req, &id, Verb::Get).await?;
    Ok(PeerCaller { id, index })
});

/// The caller of a `/sharings/:id/...` route, as `check` finds it with the instance, the
/// request and the sharing id of the path (400 for an invalid id, before any credential).
fn of_sharing<T, F, Fut>(req: &HttpRequest, check: F) -> LocalBoxFuture<'static, ApiResult<T>>
where
    F: FnOnce(Inst, HttpRequest, SharingId) -> Fut + 'static,
    Fut: Future<Output = ApiResult<T>> + 'static,
{
    let req = req.clone();
    Box::pin(async move {
        let inst = Inst(instance_of(&req)?);
        let id = sharing_id(&req)?;
        check(inst, req, id).await
    })
}

/// A peer's call on a replication route: as [`PeerCaller`], and besides the sharing must be
/// active and the caller a ready member (any member on the owner, the owner on a recipient;
/// 403 otherwise, 404 for no such sharing). Carries the sharing as loaded.
pub struct ReplicatingPeer {
    pub id: SharingId,
    pub sharing: Sharing,
    pub index: MemberIndex,
}

sharing_caller!(ReplicatingPeer, |inst, req, id| async move {
    let (sharing, index) = replicating_peer(&inst, &req, &id, Verb::Get).await?;
    Ok(ReplicatingPeer { id, sharing, index })
});

/// The owner's browser, logged in: its session id. 401 `log in first` without a live session
/// (pages that send a browser to the login page instead take an `Option<PageSession>`).
pub struct PageSession(pub String);

impl FromRequest for PageSession {
    type Error = ApiError;
    type Future = Ready<Result<PageSession, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(instance_of(req).and_then(|inst| {
            super::login::owner_session(&inst, req).map(PageSession).ok_or(ApiError::Unauthorized("log in first"))
        }))
    }
}

/// An app's call or the owner's browser (`GET /realtime/...`, which `EventSource` opens with
/// the session cookie, unable to send headers): with a bearer token, the token's permissions
/// (401 as for [`AppCaller`] when it is not a live app or CLI token, the session not looked
/// at); without one, the owner's live session and the owner's scope (`home::owner_scope`);
/// 401 `a bearer token or the owner's session is required` with neither.
pub struct AppOrOwner {
    pub perms: PermissionSet,
    /// The session, when the owner's browser calls (its feed ends with the session).
    pub session: Option<String>,
}

impl FromRequest for AppOrOwner {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<AppOrOwner, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let inst = instance_of(&req)?;
            if bearer(&req).is_some() {
                return Ok(AppOrOwner { perms: data_caller(&inst, &req)?.1, session: None });
            }
            match super::login::owner_session(&inst, &req) {
                Some(id) => Ok(AppOrOwner { perms: super::home::owner_scope(&inst).await?, session: Some(id) }),
                None => Err(ApiError::Unauthorized("a bearer token or the owner's session is required")),
            }
        })
    }
}

/// An app managing the sharing named in the path (`/sharings/:id/...`: its owner's apps, or a
/// recipient's to leave it), with the sharing as loaded. 400 for an invalid sharing id, before
/// any credential; then 401 without a live app token (403 `members cannot manage the sharing`
/// when it is a member instance's token), 404 for no such sharing, 403 when the token does not
/// cover every rule of it with every verb (see `sharings::may_manage`).
pub struct ManagedSharing {
    pub id: SharingId,
    pub sharing: Sharing,
}

sharing_caller!(ManagedSharing, |inst, req, id| async move {
    let sharing = load_managed(&inst, &req, &id).await?;
    Ok(ManagedSharing { id, sharing })
});

/// As [`ManagedSharing`], on one member of the sharing (`/sharings/:id/recipients/:index...`):
/// 400 `member index must be a number` after the id's check and before any credential.
pub struct ManagedMember {
    pub id: SharingId,
    pub index: MemberIndex,
    pub sharing: Sharing,
}

sharing_caller!(ManagedMember, |inst, req, id| async move {
    let index = member_index(&req)?;
    let sharing = load_managed(&inst, &req, &id).await?;
    Ok(ManagedMember { id, index, sharing })
});

/// An app reading the sharing named in the path (its status), with the sharing as loaded: 400
/// for an invalid sharing id, 401 without a live app token, 404 for no such sharing, 403 when
/// the token reads none of its doctypes nor sharings (see `sharings::may_read`).
pub struct ReadableSharing {
    pub id: SharingId,
    pub sharing: Sharing,
}

sharing_caller!(ReadableSharing, |inst, req, id| async move {
    let (_, perms) = data_caller(&inst.0, &req)?;
    let sharing =
        sharing::load(inst.0.store.as_ref(), &id).await?.ok_or_else(|| ApiError::NotFound("no such sharing".into()))?;
    if !may_read(&perms, &sharing) {
        return Err(ApiError::Forbidden("the token does not cover this sharing".into()));
    }
    Ok(ReadableSharing { id, sharing })
});

/// Whoever reads the sharing named in the path (`GET /sharings/:id`): one of the owner's apps
/// (as [`ReadableSharing`]) or a member's instance with its sharing token, then `member` is its
/// index. 400 for an invalid sharing id, 401 `a bearer token is required` without a token; a
/// token that is not an app's is taken for a member's, refused as `service::peer_member` does
/// (401 for an unknown token, 403 for another sharing's); then 404 for no such sharing, 403
/// when the caller may not read it.
pub struct SharingReader {
    pub id: SharingId,
    pub sharing: Sharing,
    pub member: Option<MemberIndex>,
}

sharing_caller!(SharingReader, |inst, req, id| async move {
    let token = bearer(&req).ok_or(ApiError::Unauthorized("a bearer token is required"))?;
    let s = sharing::load(inst.0.store.as_ref(), &id).await?;
    let (allowed, member) = match data_caller(&inst.0, &req) {
        Ok((_, perms)) => (s.as_ref().is_some_and(|s| may_read(&perms, s)), None),
        Err(_) => {
            let (client, perms) = service::peer_member(&inst.0, &id, token).await?;
            (service::peer_may(&perms, &id, Verb::Get), Some(client.member_index))
        }
    };
    match s {
        Some(sharing) if allowed => Ok(SharingReader { id, sharing, member }),
        Some(_) => Err(ApiError::Forbidden("the token does not cover this sharing".into())),
        None => Err(ApiError::NotFound("no such sharing".into())),
    }
});

/// Who makes an invitation link on the sharing named in the path (`POST /sharings/:id/
/// invitations`): with an app token of this instance, an app managing the sharing (as
/// [`ManagedSharing`]; on a recipient, its app asks for a re-share that its instance forwards to
/// the owner); with any other token, a member's instance re-sharing through the owner (as
/// [`PeerCaller`]; 403 `only members re-share` for the owner's own instance).
pub enum InvitationCreator {
    App(Box<ManagedSharing>),
    Member { id: SharingId, index: MemberIndex },
}

sharing_caller!(InvitationCreator, |inst, req, id| async move {
    if data_caller(&inst.0, &req).is_ok() {
        let sharing = load_managed(&inst, &req, &id).await?;
        return Ok(InvitationCreator::App(Box::new(ManagedSharing { id, sharing })));
    }
    match peer(&inst, &req, &id, Verb::Get).await? {
        index if index.is_owner() => Err(ApiError::Forbidden("only members re-share".into())),
        index => Ok(InvitationCreator::Member { id, index }),
    }
});
