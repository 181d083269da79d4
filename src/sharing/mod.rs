//! Sharings between instances (the Cozy-to-Cozy flow of DESIGN.md section 3): creation,
//! invitations, discovery, the sharing request, acceptance and the OAuth credential exchange,
//! members and their permissions, revocation.
//!
//! Sharings are stored as documents of `io.cozy.sharings` in the instance's own store; updates
//! are optimistic (the current revision is the parent; a concurrent writer makes us re-read and
//! re-apply), which is also what makes single-use invitation states safe under races.

pub mod ended;
pub mod invitations;
pub mod links;
pub mod mail;
pub mod model;
pub mod outbox;
pub mod protocol;
pub mod receive;
pub mod request;
pub mod send;
pub mod service;
pub mod tracking;
pub mod xor;

use std::sync::Arc;

use tokio::sync::Semaphore;

use hearth_replicator::rev::Rev;
use serde_json::Value;

use crate::config::Config;
use crate::federation::client::{Federation, FederationError};
use crate::instance::Instance;
use crate::store::{json, DocId, Doctype, Store, StoreError};
pub use model::{Member, MemberIndex, MemberStatus, Rule, Sharing, SharingId};

pub const SHARINGS_DOCTYPE: &str = "io.cozy.sharings";

fn sharings() -> Doctype {
    Doctype::parse(SHARINGS_DOCTYPE).unwrap_or_else(|_| unreachable!("static doctype"))
}

#[derive(Debug, thiserror::Error)]
pub enum SharingError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooMany(String),
    /// What is asked for is being set up here (see `Sharing::accepting_here`): try again in
    /// a moment (503 with `Retry-After`).
    #[error("{0}")]
    NotReadyYet(String),
    #[error(transparent)]
    Peer(#[from] FederationError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = SharingError> = std::result::Result<T, E>;

/// How the sharing layer tells the background workers (in `sync`, the layer above) that there
/// is work for them, without knowing them: `sync::manager::SyncManager` implements it, and the
/// application hands it down in the [`Context`].
pub trait SyncHandle: Send + Sync {
    /// A sharing changed state (or its tracked documents did): plan replication now rather
    /// than at the next sweep.
    fn wake_replication(&self);
    /// An outbox entry was written: deliver it now rather than at the next sweep.
    fn wake_outbox(&self);
}

/// What the sharing operations need beyond the instance they act on: the configuration, the
/// federation client, which sharings each store tracks, the handle that wakes the workers, and
/// the permits for request fetch-backs. One per application (the CLI builds its own).
pub struct Context {
    pub config: Arc<Config>,
    pub federation: Arc<Federation>,
    pub tracking: tracking::Tracking,
    pub sync: Arc<dyn SyncHandle>,
    /// Permits for the fetch-backs unauthenticated sharing requests cause (see [`request`]):
    /// at most [`request::MAX_CONCURRENT_FETCHES`] at once.
    pub request_fetches: Semaphore,
    /// Each instance's files: a sharing that ends moves its files whose bytes never arrived
    /// to the trash ([`ended`]).
    pub files: Arc<crate::files::FilesRegistry>,
    /// (instance, sharing) pairs whose end records [`ended::run_retries`] settles again.
    pub(crate) end_retries: std::sync::Mutex<std::collections::BTreeSet<(String, String)>>,
    /// Held by each settling of an end record (see [`ended`]): one at a time.
    pub(crate) end_settling: tokio::sync::Mutex<()>,
}

impl Context {
    pub fn new(
        config: Arc<Config>,
        federation: Arc<Federation>,
        sync: Arc<dyn SyncHandle>,
        files: Arc<crate::files::FilesRegistry>,
    ) -> Context {
        Context {
            config,
            federation,
            tracking: tracking::Tracking::default(),
            sync,
            request_fetches: Semaphore::new(request::MAX_CONCURRENT_FETCHES),
            files,
            end_retries: Default::default(),
            end_settling: Default::default(),
        }
    }

    /// After a sharing changed state: tracking follows (see [`tracking::Tracking::changed`]),
    /// replication is woken, and when the sharing ended, its files whose bytes never arrived
    /// go to the trash ([`ended`]); on an owner whose sharing goes on, the files whose awaited
    /// edit came from a member gone get their previous content back
    /// ([`ended::members_departed`]).
    pub async fn sharing_changed(&self, inst: &Instance, id: &SharingId) -> Result<(), StoreError> {
        self.tracking.changed(inst, id, &self.files).await?;
        self.sync.wake_replication();
        ended::settle_logged(self, inst, id).await;
        ended::members_departed(self, inst, id).await;
        Ok(())
    }
}

fn decode(id: &DocId, rev: Rev, body: serde_json::Map<String, Value>) -> Result<Sharing, StoreError> {
    let mut s: Sharing =
        serde_json::from_value(Value::Object(body)).map_err(|e| StoreError::Corrupt(format!("sharing {id}: {e}")))?;
    s.id = Some(SharingId::parse(id.as_str()).map_err(StoreError::Corrupt)?);
    s.rev = Some(rev.to_string());
    Ok(s)
}

fn encode(s: &Sharing) -> Result<serde_json::Map<String, Value>, StoreError> {
    match serde_json::to_value(s) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(StoreError::Internal(anyhow::anyhow!("sharing does not serialise to an object"))),
    }
}

fn doc_id(id: &SharingId) -> Result<DocId, StoreError> {
    DocId::parse(id.as_str()).map_err(StoreError::Corrupt)
}

pub async fn load(store: &dyn Store, id: &SharingId) -> Result<Option<Sharing>, StoreError> {
    let did = doc_id(id)?;
    match json::get(store, &sharings(), &did).await? {
        Some(rec) => Ok(Some(decode(&did, rec.rev, rec.body)?)),
        None => Ok(None),
    }
}

/// Writes a sharing: created when it has no revision, else on top of its revision (`Conflict`
/// when someone wrote it meanwhile).
pub async fn save(store: &dyn Store, s: &mut Sharing) -> Result<(), StoreError> {
    let id = s.id.clone().ok_or_else(|| StoreError::Internal(anyhow::anyhow!("sharing without id")))?;
    let parent =
        s.rev.as_deref().map(|r| r.parse::<Rev>()).transpose().map_err(|_| StoreError::Corrupt("rev".into()))?;
    s.updated_at = model::now_rfc3339();
    let rev = json::put(store, &sharings(), &doc_id(&id)?, parent.as_ref(), encode(s)?).await?;
    s.rev = Some(rev.to_string());
    Ok(())
}

/// Loads, applies `f`, saves; on a concurrent write, starts again from the new version.
pub async fn update<T>(
    store: &dyn Store,
    id: &SharingId,
    mut f: impl FnMut(&mut Sharing) -> Result<T>,
) -> Result<(T, Sharing)> {
    for _ in 0..20 {
        let mut s = load(store, id).await?.ok_or_else(|| SharingError::NotFound("no such sharing".into()))?;
        let out = f(&mut s)?;
        match save(store, &mut s).await {
            Ok(()) => return Ok((out, s)),
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(SharingError::Store(StoreError::Conflict))
}

pub async fn list(store: &dyn Store) -> Result<Vec<Sharing>, StoreError> {
    json::list(store, &sharings()).await?.into_iter().map(|r| decode(&r.id, r.rev, r.body)).collect()
}
