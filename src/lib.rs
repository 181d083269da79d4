//! hearth: a self-hosted personal cloud server whose instances share documents with each
//! other. The architecture (its layers, the path of a received document and of a local write)
//! is in docs/architecture.md; `Application` is the entry point.

pub mod app;
pub mod auth;
pub mod config;
pub mod federation;
pub mod files;
pub mod http;
pub mod instance;
pub mod logging;
pub mod sharing;
pub mod store;
pub mod sync;

pub use app::{Application, Core};
pub use config::Config;
