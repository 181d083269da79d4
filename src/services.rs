//! What background workers and request handlers share: configuration, the instance registry,
//! the federation client and the wake-up signal of the outbox. Built once per `Application`.

use std::sync::Arc;

use tokio::sync::{Notify, Semaphore};

use crate::config::Config;
use crate::federation::client::Federation;
use crate::instance::Registry;
use crate::sync::manager::SyncManager;

pub struct Services {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub federation: Arc<Federation>,
    /// Signalled when an outbox entry is added, so it is sent without waiting for the sweep.
    pub outbox: Arc<Notify>,
    /// Replication scheduling and per-peer state.
    pub sync: Arc<SyncManager>,
    /// Permits for the fetch-backs unauthenticated sharing requests cause (see
    /// `sharing::request`): at most `MAX_CONCURRENT_FETCHES` at once.
    pub request_fetches: Arc<Semaphore>,
    /// Each instance's files (`io.cozy.files`), opened on first use.
    pub files: Arc<crate::files::FilesRegistry>,
}
