//! Who calls a route, by audience, as typed extractors: the prologue a handler used to repeat
//! (read the credentials, check them, answer 401 or 403) runs before it, and the handler
//! receives the caller.
//! - [`AppCaller`]: an app or CLI of this instance, with a bearer token of audience `app` or
//!   `cli` and its scope (`/data`, `/sharings/` management, `/permissions`, ...);
//! - [`PeerCaller`]: another instance, with the sharing credentials this instance issued it
//!   for the sharing named in the path (`/sharings/:id/...` notifications and replication);
//!   [`ReplicatingPeer`] adds that the sharing is active and the caller a ready member;
//! - [`PageSession`]: the owner's browser, with a live session cookie (pages).
//!
//! Each fails with the error its handlers answered before, same status, same JSON body
//! (`{"error","reason"}`, see `http::error`).

use std::future::{ready, Future, Ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;

use super::sharings::{peer, replicating_peer, sharing_id};
use super::{data_caller, instance_of, ApiError, ApiResult, Inst};
use crate::auth::{Claims, PermissionSet, Verb};
use crate::sharing::{MemberIndex, Sharing, SharingId};

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

impl FromRequest for PeerCaller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<PeerCaller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        of_sharing(req, |inst, req, id| async move {
            let index = peer(&inst, &req, &id, Verb::Get).await?;
            Ok(PeerCaller { id, index })
        })
    }
}

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

impl FromRequest for ReplicatingPeer {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<ReplicatingPeer, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        of_sharing(req, |inst, req, id| async move {
            let (sharing, index) = replicating_peer(&inst, &req, &id, Verb::Get).await?;
            Ok(ReplicatingPeer { id, sharing, index })
        })
    }
}

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
