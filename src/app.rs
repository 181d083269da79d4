//! Building and running the server: [`Core::open`] wires the application's parts once (the
//! command line uses them as they are); `Application::build(config)` adds the listener (port 0
//! picks a free port, as tests do) and the background workers, and returns a handle;
//! `run_until_stopped` serves until the server is stopped. Nothing is global, so one process
//! can run several applications.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::{Server, ServerHandle, Service};
use actix_web::{web, App, HttpServer};
use anyhow::Context;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::federation::client::Federation;
use crate::http::{self, AppState};
use crate::instance::Registry;
use crate::sharing;
use crate::sync::content::ContentSender;
use crate::sync::manager::{self, SyncManager};
use crate::sync::outbox;

/// The application's parts, each built once and handed down to the layer that needs it: the
/// configuration, the instance registry, the sharing layer's context (with the federation
/// client, and the replication manager seen through `sharing::SyncHandle`), and the
/// replication manager itself. Opening them starts nothing.
#[derive(Clone)]
pub struct Core {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub sharing: Arc<sharing::Context>,
    pub sync: Arc<SyncManager>,
    /// Each instance's files (`io.cozy.files`), opened on first use.
    pub files: Arc<crate::files::FilesRegistry>,
    /// The senders of files sharings' content (`sync::content`).
    pub content: Arc<ContentSender>,
}

impl Core {
    pub fn open(config: Config) -> anyhow::Result<Core> {
        let config = Arc::new(config);
        let registry = Arc::new(Registry::open(config.clone())?);
        let federation = Arc::new(Federation::new(&config)?);
        let sync = Arc::new(SyncManager::default());
        let files = Arc::new(crate::files::FilesRegistry::new(&config)?);
        let sharing = Arc::new(sharing::Context::new(config.clone(), federation, sync.clone(), files.clone()));
        let content = Arc::new(ContentSender::new(&config.replication));
        Ok(Core { config, registry, sharing, sync, files, content })
    }

    /// What the HTTP handlers reach.
    fn state(&self, writes: http::Writes) -> AppState {
        AppState {
            writes,
            config: self.config.clone(),
            registry: self.registry.clone(),
            sharing: self.sharing.clone(),
            sync: self.sync.clone(),
            files: self.files.clone(),
            realtime: Default::default(),
            content: self.content.clone(),
        }
    }
}

/// Stops an [`Application`]: its background workers first, with whatever replication run or
/// content round they have under way (dropped as a crash would drop it: each resumes from its
/// checkpoint), then its server, which lets requests in flight finish (`graceful`, up to 5 s),
/// and last the writes of several steps under way ([`http::Writes`], up to [`WRITES_GRACE`];
/// one still running then is not cut by the stop: it ends on its own in a process that goes on,
/// and is cut when the process exits, as `hearth serve` then does).
#[derive(Clone)]
pub struct Stopper {
    server: ServerHandle,
    cancel: CancellationToken,
    writes: http::Writes,
}

/// How long a stop waits for the writes under way to end.
pub const WRITES_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

impl Stopper {
    /// The workers and the server are told at once, when called; the future resolves once the
    /// server has stopped and the writes under way have ended.
    pub fn stop(&self, graceful: bool) -> impl std::future::Future<Output = ()> {
        self.cancel.cancel();
        let server = self.server.stop(graceful);
        let writes = self.writes.clone();
        async move {
            server.await;
            drain(&writes).await;
        }
    }
}

async fn drain(writes: &http::Writes) {
    if !writes.drain(WRITES_GRACE).await {
        tracing::warn!(grace_secs = WRITES_GRACE.as_secs(), "writes still under way at the stop were left unfinished");
    }
}

pub struct Application {
    port: u16,
    server: Server,
    core: Core,
    /// Stops the background workers when the application is dropped or stopped.
    cancel: CancellationToken,
    writes: http::Writes,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let core = Core::open(config)?;
        let Core { config, registry, sharing, sync, files, content } = core.clone();
        let listener =
            TcpListener::bind(&config.listen).with_context(|| format!("failed to listen on {}", config.listen))?;
        let port = listener.local_addr()?.port();
        registry.open_all()?;
        // Before serving: every open instance's store knows the rules of its sharings.
        for inst in registry.opened() {
            sharing.tracking.refresh(&inst).await?;
            // Follow-ups of received files that a stop cut short (`sharing::receive`): run
            // before the instance serves. One that fails again is logged and retried while
            // the server runs (below); the instance serves all the same.
            if let Err(e) = crate::sharing::receive::replay_follow_ups(&inst, &files).await {
                tracing::error!(instance = %inst.domain, error = ?e, "replaying the follow-ups of received files failed");
            }
            // Sharings that ended before a stop let them move their files whose bytes never
            // arrived to the trash (`sharing::ended`).
            if let Err(e) = crate::sharing::ended::complete(&sharing, &inst).await {
                tracing::error!(instance = %inst.domain, error = %e, "completing the ends of sharings failed");
            }
        }
        let cancel = CancellationToken::new();
        tokio::spawn(outbox::run(registry.clone(), sharing.clone(), sync.clone(), cancel.clone()));
        // Content left by crashes and cut uploads goes at startup, then every `sweep_secs`.
        tokio::spawn(crate::sync::content::run(
            registry.clone(),
            sharing.clone(),
            files.clone(),
            content,
            sync.clone(),
            cancel.clone(),
        ));
        // Follow-ups of received files that failed, retried with the replicator's backoff.
        tokio::spawn(crate::sharing::receive::run_follow_up_retries(
            registry.clone(),
            files.clone(),
            std::time::Duration::from_millis(config.replication.retry_base_ms.max(1)),
            std::time::Duration::from_millis(config.replication.retry_max_ms.max(1)),
            cancel.clone(),
        ));
        tokio::spawn(crate::sharing::ended::run_retries(registry.clone(), sharing.clone(), cancel.clone()));
        tokio::spawn(crate::files::run_sweeps(
            registry.clone(),
            files,
            std::time::Duration::from_secs(config.files.sweep_secs.max(1)),
            std::time::Duration::from_secs(config.files.orphan_grace_secs),
            cancel.clone(),
        ));
        tokio::spawn(manager::run(registry, sharing, sync, cancel.clone()));
        // On this runtime, which outlives the HTTP workers' own.
        let writes = http::Writes::new(tokio::runtime::Handle::current());
        let state = web::Data::new(core.state(writes.clone()));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap_fn(|req, srv| {
                    // Log the route template, never the raw path or query: they may hold secrets.
                    let started = Instant::now();
                    let method = req.method().clone();
                    let route = req.match_pattern().unwrap_or_else(|| "(unmatched)".into());
                    let fut = srv.call(req);
                    async move {
                        let res = fut.await?;
                        tracing::info!(
                            %method,
                            route = %route,
                            status = res.status().as_u16(),
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "request"
                        );
                        Ok(res)
                    }
                })
                .wrap(actix_web::middleware::ErrorHandlers::new().default_handler_client(http::error::json_when_empty))
                .configure(http::routes)
        })
        // Without it, a response whose body follows its headers in a second write (a file
        // download) waits for the client's delayed ACK: ~40 ms per small file.
        .tcp_nodelay(true)
        .listen(listener)?
        .shutdown_timeout(5)
        // Signals are the embedder's to handle, through `Stopper` (`hearth serve` turns Ctrl-C and
        // SIGTERM into a graceful stop, workers first): actix's own handlers stopped the server
        // alone, and on Ctrl-C without letting the requests in flight finish.
        .disable_signals()
        .run();
        Ok(Application { port, server, core, cancel, writes })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.core.registry.clone()
    }

    /// A handle to stop the application from elsewhere.
    pub fn handle(&self) -> Stopper {
        Stopper { server: self.server.handle(), cancel: self.cancel.clone(), writes: self.writes.clone() }
    }

    /// The sharing layer's context (tests and the benchmark drive sharing operations with it).
    pub fn sharing(&self) -> Arc<sharing::Context> {
        self.core.sharing.clone()
    }

    /// Each instance's files (`io.cozy.files`).
    pub fn files(&self) -> Arc<crate::files::FilesRegistry> {
        self.core.files.clone()
    }

    /// The replication manager: per-peer states.
    pub fn sync(&self) -> Arc<SyncManager> {
        self.core.sync.clone()
    }

    /// Serves until stopped (by the handle or a signal), then stops the background workers and
    /// waits for the writes under way (see [`Stopper`]).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        self.cancel.cancel();
        drain(&self.writes).await;
        result
    }
}
