//! One `Config` for the server and every CLI command: defaults, then a TOML file, then
//! `HEARTH_*` environment variables (`__` between nesting levels, e.g.
//! `HEARTH_FEDERATION__ALLOW_HTTP=true`).

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP server binds (port 0 picks a free one, as tests do).
    pub listen: String,
    /// Directory holding the instance registry and one database file per instance.
    pub data_dir: PathBuf,
    /// Storage backend: "sqlite" (embedded default) or "couchdb".
    pub store: StoreKind,
    /// Largest request body accepted, in bytes (CouchDB's `max_http_request_size`); larger
    /// ones get 413 `too_large` before being read whole. Bodies are held in memory while
    /// parsed, hence a default far below CouchDB's 4 GiB.
    #[serde(alias = "max_body_bytes")]
    pub max_http_request_size: usize,
    /// Largest document body accepted, in bytes of its JSON text without the `_` members
    /// (CouchDB's `max_document_size`, default 8,000,000): a larger one gets 413
    /// `document_too_large` with its id as the reason, on every route that writes documents
    /// (a `_bulk_docs` is refused whole, as CouchDB does; a peer's replicator then sends the
    /// other documents alone and reports that one refused).
    pub max_document_size: usize,
    /// Most documents in one `_bulk_docs` (CouchDB's `max_bulk_docs_count`): beyond, 413
    /// `max_bulk_docs_count_exceeded`, told while reading the request, before any document is
    /// parsed. Also the most documents a `_revs_diff` may list (each with at most `revs_limit`
    /// revisions).
    pub max_bulk_docs_count: usize,
    /// Most documents asked for in one `_bulk_get` (CouchDB's `max_bulk_get_count`): beyond,
    /// 413 `max_bulk_get_count_exceeded`.
    pub max_bulk_get_count: usize,
    /// Revisions kept per document branch (CouchDB's `_revs_limit`).
    pub revs_limit: usize,
    /// Lifetime of tokens printed by `hearth instances token`, in seconds.
    pub cli_token_ttl_secs: u64,
    /// Lifetime of the owner's login session cookie, in seconds.
    pub session_ttl_secs: u64,
    /// Failed passphrase attempts allowed per client address (and per known browser) in
    /// `login_window_secs` before 429; also the failures the whole instance tolerates before
    /// spacing verifications for unknown browsers (see `auth::throttle`).
    pub login_max_failures: u32,
    /// Window of the failed-login rate limit, in seconds.
    pub login_window_secs: u64,
    /// Once the instance saw `login_max_failures` failures in the window: the least time
    /// between two passphrase verifications for browsers that never logged in, in ms.
    pub login_slowdown_ms: u64,
    /// Longest an attempt waits for its turn under that slowdown before getting 429 with
    /// `Retry-After`, in seconds.
    pub login_max_wait_secs: u64,
    /// Longest a `feed=longpoll` changes request waits, in milliseconds.
    pub longpoll_max_ms: u64,
    pub couchdb: CouchConfig,
    pub federation: FederationConfig,
    pub mail: MailConfig,
    pub replication: ReplicationConfig,
    pub links: LinksConfig,
    pub files: FilesConfig,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Sqlite,
    Couchdb,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CouchConfig {
    /// Base URL of the CouchDB server, e.g. `http://127.0.0.1:5984`.
    pub url: Option<String>,
    /// A CouchDB admin (hearth creates one database per instance and doctype).
    pub user: Option<String>,
    #[serde(skip_serializing)]
    pub password: Option<SecretString>,
    /// First part of every database name (default `hearth`), so several hearth deployments
    /// (or test runs) can share one CouchDB.
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// Let peers live on loopback and private addresses (tests and local demos only).
    pub allow_private_addresses: bool,
    /// Let peers be reached over plain `http://` (tests and local demos only).
    pub allow_http: bool,
    /// Lifetime of the access tokens given to peer instances, in seconds.
    pub access_token_ttl_secs: u64,
    /// Most members (owner included) a sharing may have.
    pub max_members: usize,
    /// Most sharing requests not yet answered that one peer instance may leave here.
    pub max_pending_requests_per_peer: usize,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            allow_private_addresses: false,
            allow_http: false,
            access_token_ttl_secs: 3600,
            max_members: 100,
            max_pending_requests_per_peer: 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// SMTP URL for invitation mails; none configured means invitations are only shown.
    #[serde(skip_serializing)]
    pub smtp_url: Option<SecretString>,
    pub from: Option<String>,
}

/// Sharing by link and invitation links.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinksConfig {
    /// Failed sharecode, link password and invitation code attempts allowed per client address
    /// (IPv6: per /64) in `login_window_secs` before 429. Valid codes never count.
    pub max_failures: u32,
    /// Default lifetime of an invitation link, in seconds (72 hours).
    pub invitation_ttl_secs: u64,
    /// Longest lifetime an invitation link may be given, in seconds.
    pub max_invitation_ttl_secs: u64,
}

impl Default for LinksConfig {
    fn default() -> Self {
        LinksConfig { max_failures: 20, invitation_ttl_secs: 72 * 3600, max_invitation_ttl_secs: 365 * 24 * 3600 }
    }
}

/// Files (`io.cozy.files`): where content goes, quotas, the orphan sweep.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// Where file content is kept: "fs" (under `data_dir/files/content`, the default) or "s3".
    pub backend: FilesBackendKind,
    /// Bytes of file content each instance may hold, trash included, unless the instance has
    /// its own quota (`hearth instances quota`).
    pub quota_bytes: u64,
    /// Content no file names any more (left by a crash or a cut upload) is removed once older
    /// than this, in seconds.
    pub orphan_grace_secs: u64,
    /// How often the orphan sweep runs, in seconds (also once at startup).
    pub sweep_secs: u64,
    /// An upload whose body sends nothing for this many seconds is ended with a 408 and
    /// leaves nothing (a stalled body would otherwise hold its connection and temporary
    /// content for ever).
    pub body_idle_secs: u64,
    /// With the "fs" backend: write content, and read it from aligned offsets, with direct I/O
    /// (`O_DIRECT`), bypassing the page cache, where the filesystem allows it (see
    /// `files::content::DIRECT_ALIGN`). Turn off on slow drives, or to let the page cache keep
    /// files read over and over.
    pub direct_io: bool,
    pub s3: S3Config,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FilesBackendKind {
    Fs,
    S3,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            backend: FilesBackendKind::Fs,
            quota_bytes: 10 * 1024 * 1024 * 1024,
            orphan_grace_secs: 3600,
            sweep_secs: 3600,
            body_idle_secs: 60,
            direct_io: true,
            s3: S3Config::default(),
        }
    }
}

/// An S3-compatible object store for file content (`files.backend = "s3"`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// `http(s)://host:port` of an S3-compatible server; none for AWS S3 itself.
    pub endpoint: Option<String>,
    pub bucket: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    #[serde(skip_serializing)]
    pub secret_access_key: Option<SecretString>,
    /// First segment of every object name (several deployments can share a bucket).
    pub prefix: String,
    /// Allow a plain `http://` endpoint (tests, a server on the same host).
    pub allow_http: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            bucket: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            prefix: "hearth".into(),
            allow_http: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Extra delay between a local write and the replication it starts, in milliseconds; 0 (the
    /// default): at once. Writes made while a batch is in flight go together in the next run,
    /// whatever this is.
    pub debounce_ms: u64,
    /// Documents per replication batch.
    pub batch_size: usize,
    /// Most bytes per `_bulk_docs` request sent to a peer.
    pub max_batch_bytes: usize,
    /// First retry delay after a failed peer call, in milliseconds; doubles on each failure.
    pub retry_base_ms: u64,
    /// Longest delay between retries, in milliseconds (jitter is applied below it).
    pub retry_max_ms: u64,
    /// How long, in milliseconds, a files sharing's content link may wait on the same files
    /// (their bytes not on this instance and none arriving, or the member saying it is
    /// receiving them) before the member shows `degraded`. Bytes arriving, or one of the files
    /// delivered, start the wait over (`hearth_replicator::content::Stall`).
    pub content_wait_max_ms: u64,
    /// How often background work (outbox, replication sweep) looks for due items, in ms.
    pub sweep_ms: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            debounce_ms: 0,
            batch_size: 500,
            max_batch_bytes: 8 * 1024 * 1024,
            retry_base_ms: 1000,
            retry_max_ms: 300_000,
            content_wait_max_ms: 120_000,
            sweep_ms: 1000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./data"),
            store: StoreKind::Sqlite,
            max_http_request_size: 32 * 1024 * 1024,
            max_document_size: 8_000_000,
            max_bulk_docs_count: 10_000,
            max_bulk_get_count: 10_000,
            revs_limit: 1000,
            cli_token_ttl_secs: 30 * 24 * 3600,
            session_ttl_secs: 7 * 24 * 3600,
            login_max_failures: 10,
            login_window_secs: 300,
            login_slowdown_ms: 1000,
            login_max_wait_secs: 30,
            longpoll_max_ms: 60_000,
            couchdb: CouchConfig::default(),
            federation: FederationConfig::default(),
            mail: MailConfig::default(),
            replication: ReplicationConfig::default(),
            links: LinksConfig::default(),
            files: FilesConfig::default(),
        }
    }
}

impl Config {
    /// Loads defaults, then `file` (when given, it must exist), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(
                Env::prefixed("HEARTH_")
                    // Variables that are not configuration keys: the log filter, the config
                    // file path, and test-harness knobs.
                    .filter(|k| {
                        let k = k.as_str().to_ascii_lowercase();
                        k != "log" && k != "config" && !k.starts_with("test_")
                    })
                    .split("__"),
            )
            .extract()
            .map_err(Box::new)
    }

    /// A configuration for tests: a fresh data dir, port 0, private peers allowed.
    pub fn for_tests(data_dir: &Path) -> Config {
        Config {
            listen: "127.0.0.1:0".into(),
            data_dir: data_dir.to_path_buf(),
            federation: FederationConfig {
                allow_private_addresses: true,
                allow_http: true,
                ..FederationConfig::default()
            },
            replication: ReplicationConfig {
                retry_base_ms: 50,
                retry_max_ms: 500,
                sweep_ms: 100,
                ..ReplicationConfig::default()
            },
            ..Config::default()
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return its error by value
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_file_and_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("hearth.toml", "listen = \"0.0.0.0:9000\"\n[replication]\nbatch_size = 7\n")?;
            jail.set_env("HEARTH_REPLICATION__DEBOUNCE_MS", "42");
            jail.set_env("HEARTH_FEDERATION__ALLOW_HTTP", "true");
            jail.set_env("HEARTH_LOG", "debug");
            jail.set_env("HEARTH_CONFIG", "hearth.toml");
            jail.set_env("HEARTH_TEST_SOMETHING", "1");
            let c = Config::load(Some(Path::new("hearth.toml"))).map_err(|e| *e)?;
            assert_eq!(c.listen, "0.0.0.0:9000");
            assert_eq!(c.replication.batch_size, 7);
            assert_eq!(c.replication.debounce_ms, 42);
            assert!(c.federation.allow_http);
            assert_eq!(c.store, StoreKind::Sqlite);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("hearth.toml", "lisen = \"0.0.0.0:9000\"\n")?;
            assert!(Config::load(Some(Path::new("hearth.toml"))).is_err());
            Ok(())
        });
    }
}
