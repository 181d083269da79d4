//! hearth: a self-hosted personal cloud server whose instances share documents with each
//! other. See DESIGN.md for the architecture; `Application` is the entry point.

pub mod app;
pub mod auth;
pub mod config;
pub mod http;
pub mod instance;
pub mod store;

pub use app::Application;
pub use config::Config;
