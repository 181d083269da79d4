//! Building and running the server: `Application::build(config)` binds the listener (port 0
//! picks a free port, as tests do) and returns a handle; `run_until_stopped` serves until the
//! server is stopped. Nothing is global, so one process can run several applications.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::{Server, ServerHandle, Service};
use actix_web::{web, App, HttpServer};
use anyhow::Context;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::federation::client::Federation;
use crate::http;
use crate::instance::Registry;
use crate::services::Services;
use crate::sync::manager::{self, SyncManager};
use crate::sync::outbox;

pub struct Application {
    port: u16,
    server: Server,
    registry: Arc<Registry>,
    services: Arc<Services>,
    /// Stops the background workers when the application is dropped or stopped.
    cancel: CancellationToken,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let config = Arc::new(config);
        let registry = Arc::new(Registry::open(config.clone())?);
        let listener =
            TcpListener::bind(&config.listen).with_context(|| format!("failed to listen on {}", config.listen))?;
        let port = listener.local_addr()?.port();
        registry.open_all()?;
        let federation = Arc::new(Federation::new(&config)?);
        let services = Arc::new(Services {
            config: config.clone(),
            registry: registry.clone(),
            federation,
            outbox: Arc::new(Notify::new()),
            sync: Arc::new(SyncManager::default()),
            request_fetches: Arc::new(tokio::sync::Semaphore::new(crate::sharing::request::MAX_CONCURRENT_FETCHES)),
            files: Arc::new(crate::files::FilesRegistry::new(&config)?),
        });
        // Before serving: every open instance's store knows the rules of its sharings.
        for inst in registry.opened() {
            manager::refresh_tracking(&services, &inst).await?;
        }
        let cancel = CancellationToken::new();
        tokio::spawn(outbox::run(services.clone(), cancel.clone()));
        tokio::spawn(manager::run(services.clone(), cancel.clone()));
        // Content left by crashes and cut uploads goes at startup, then every `sweep_secs`.
        tokio::spawn(crate::files::run_sweeps(
            registry.clone(),
            services.files.clone(),
            std::time::Duration::from_secs(config.files.sweep_secs.max(1)),
            std::time::Duration::from_secs(config.files.orphan_grace_secs),
            cancel.clone(),
        ));
        let state = web::Data::from(services.clone());
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
                .configure(http::routes)
        })
        // Without it, a response whose body follows its headers in a second write (a file
        // download) waits for the client's delayed ACK: ~40 ms per small file.
        .tcp_nodelay(true)
        .listen(listener)?
        .shutdown_timeout(5)
        .run();
        Ok(Application { port, server, registry, services, cancel })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// A handle to stop the server from elsewhere.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    pub fn services(&self) -> Arc<Services> {
        self.services.clone()
    }

    /// Serves until stopped (by the handle or a signal), then stops the background workers.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        self.cancel.cancel();
        result
    }
}
