//! The instance registry: which instances this server hosts (a small SQLite file in the data
//! dir, shared by `hearth serve` and the CLI), and for each one its opened context: store,
//! token keys, passphrase hash, settings.
//!
//! The registry is always this SQLite file, also with `store = "couchdb"`: it is the hosting
//! process's own configuration (which domains, their keys), while the instances' documents live
//! in the configured store.
//!
//! Instances are opened on first use and cached. An instance added by the CLI while the server
//! runs is found on its first request, since a cache miss reads the registry file.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension};

use crate::auth::{self, FailureLimiter, Slowdown, TokenKeys};
use crate::config::{Config, StoreKind};
use crate::store::couch::CouchServer;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;

/// An instance's domain as clients name it in `Host`: lowercase host, optional port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

impl Domain {
    pub fn parse(s: &str) -> Result<Domain, String> {
        let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s.as_str(), None),
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok_and(|n| n > 0));
        if host_ok && port_ok {
            Ok(Domain(s))
        } else {
            Err(format!("invalid instance domain {s:?}"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A file name for this domain (`:` is not portable in file names).
    pub fn file_stem(&self) -> String {
        self.0.replace(':', "_")
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// What the registry stores about one instance.
#[derive(Clone, Debug)]
pub struct InstanceRecord {
    pub domain: Domain,
    pub email: Option<String>,
    pub public_name: Option<String>,
    pub created_at: String,
    secret: Vec<u8>,
    passphrase_hash: Option<String>,
}

/// An opened instance.
pub struct Instance {
    pub domain: Domain,
    pub email: Option<String>,
    pub public_name: Option<String>,
    pub store: Arc<dyn Store>,
    pub keys: TokenKeys,
    /// Keyed with the instance's own secret, for deriving per-purpose secrets.
    mac: hmac::Hmac<sha2::Sha256>,
    /// Failed passphrase and code attempts, keyed by client address, known browser, and
    /// `instance` (see `auth::throttle`).
    pub login_failures: FailureLimiter,
    /// The instance-wide spacing of passphrase verifications for unknown browsers.
    pub login_slowdown: Slowdown,
    /// How many passphrases this process verified for the instance (argon2 runs): a real
    /// counter, read by the rate-limit tests.
    pub passphrase_checks: std::sync::atomic::AtomicU64,
    /// The owner's login sessions.
    pub sessions: Sessions,
    /// Live subscribers of `GET /realtime/events` (see `http::realtime`).
    pub realtime_subscribers: std::sync::atomic::AtomicUsize,
}

/// The owner's login sessions, kept server-side in the registry file: a session is a random
/// 256-bit id (the cookie's value) stored as its SHA-256, with an expiry. Logging out ends one;
/// changing the passphrase ends them all.
pub struct Sessions {
    db: Arc<Mutex<Connection>>,
    domain: Domain,
}

fn session_hash(id: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(id.as_bytes()))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl Sessions {
    fn db(&self) -> anyhow::Result<std::sync::MutexGuard<'_, Connection>> {
        self.db.lock().map_err(|_| anyhow::anyhow!("registry lock poisoned"))
    }

    /// Starts a session lasting `ttl_secs`; returns its id (the cookie value, never stored).
    pub fn start(&self, ttl_secs: u64) -> anyhow::Result<String> {
        let id = auth::random_hex(32);
        let now = unix_now();
        let db = self.db()?;
        db.execute("DELETE FROM sessions WHERE expires_at <= ?1", params![now])?;
        db.execute(
            "INSERT INTO sessions (id_hash, domain, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![
                session_hash(&id),
                self.domain.as_str(),
                now,
                now.saturating_add(ttl_secs.min(i64::MAX as u64) as i64)
            ],
        )?;
        Ok(id)
    }

    /// Whether `id` is a live session of this instance.
    pub fn is_valid(&self, id: &str) -> bool {
        let Ok(db) = self.db() else {
            return false;
        };
        db.query_row(
            "SELECT 1 FROM sessions WHERE id_hash = ?1 AND domain = ?2 AND expires_at > ?3",
            params![session_hash(id), self.domain.as_str(), unix_now()],
            |_| Ok(()),
        )
        .optional()
        .ok()
        .flatten()
        .is_some()
    }

    /// Ends one session (logging out); ending an unknown one is not an error.
    pub fn end(&self, id: &str) -> anyhow::Result<()> {
        self.db()?.execute(
            "DELETE FROM sessions WHERE id_hash = ?1 AND domain = ?2",
            params![session_hash(id), self.domain.as_str()],
        )?;
        Ok(())
    }

    /// How many sessions are live.
    pub fn count(&self) -> anyhow::Result<u64> {
        let n: i64 = self.db()?.query_row(
            "SELECT COUNT(*) FROM sessions WHERE domain = ?1 AND expires_at > ?2",
            params![self.domain.as_str(), unix_now()],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }
}

impl Instance {
    /// A secret derived from the instance secret for `purpose` and `parts` (HMAC-SHA256,
    /// 128 bits, hex): invitation states, CSRF tokens. Recomputable, so never stored.
    pub fn derive_secret(&self, purpose: &str, parts: &[&str]) -> String {
        use hmac::Mac;
        let mut mac = self.mac.clone();
        mac.update(purpose.as_bytes());
        for p in parts {
            mac.update(b"\0");
            mac.update(p.as_bytes());
        }
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// Constant-time comparison of a presented secret with the expected one.
    pub fn secrets_match(presented: &str, expected: &str) -> bool {
        auth::secrets_match(presented, expected)
    }

    /// The name shown to people: the public name, else the domain.
    pub fn display_name(&self) -> &str {
        self.public_name.as_deref().unwrap_or(self.domain.as_str())
    }
}

impl auth::Authority for Instance {
    fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    fn keys(&self) -> &TokenKeys {
        &self.keys
    }
}

pub struct Registry {
    config: Arc<Config>,
    db: Arc<Mutex<Connection>>,
    open: RwLock<HashMap<Domain, Arc<Instance>>>,
    /// The CouchDB server instances' stores live on, with `store = "couchdb"` (the registry
    /// itself stays this local SQLite file whatever the store).
    couch: Option<Arc<CouchServer>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("instance {0} already exists")]
    Exists(Domain),
    #[error("no instance {0}")]
    Unknown(Domain),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<rusqlite::Error> for RegistryError {
    fn from(e: rusqlite::Error) -> Self {
        RegistryError::Other(e.into())
    }
}

pub struct NewInstance<'a> {
    pub domain: Domain,
    pub passphrase: Option<&'a str>,
    pub email: Option<String>,
    pub public_name: Option<String>,
}

impl Registry {
    pub fn open(config: Arc<Config>) -> anyhow::Result<Registry> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("failed to create data dir {}", dir.display()))?;
        let conn = Connection::open(dir.join("registry.sqlite")).context("failed to open the instance registry")?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS instances (
                domain TEXT PRIMARY KEY,
                secret BLOB NOT NULL,
                passphrase_hash TEXT,
                email TEXT,
                public_name TEXT,
                created_at TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS sessions (
                id_hash TEXT PRIMARY KEY,
                domain TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                expires_at INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS sessions_by_domain ON sessions (domain);",
        )?;
        // Refuse to start, saying why, when CouchDB is unreachable or refuses the credentials.
        let couch = match config.store {
            StoreKind::Sqlite => None,
            StoreKind::Couchdb => Some(CouchServer::connect_blocking(&config.couchdb)?),
        };
        Ok(Registry { config, db: Arc::new(Mutex::new(conn)), open: RwLock::new(HashMap::new()), couch })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn db(&self) -> anyhow::Result<std::sync::MutexGuard<'_, Connection>> {
        self.db.lock().map_err(|_| anyhow::anyhow!("registry lock poisoned"))
    }

    pub fn add(&self, new: NewInstance<'_>) -> Result<InstanceRecord, RegistryError> {
        let hash = new.passphrase.map(auth::hash_passphrase).transpose()?;
        let secret = hex::decode(auth::random_hex(32)).map_err(anyhow::Error::from)?;
        let created_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(anyhow::Error::from)?;
        let db = self.db()?;
        let inserted = db.execute(
            "INSERT OR IGNORE INTO instances (domain, secret, passphrase_hash, email, public_name, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![new.domain.as_str(), secret, hash, new.email, new.public_name, created_at],
        )?;
        if inserted == 0 {
            return Err(RegistryError::Exists(new.domain));
        }
        Ok(InstanceRecord {
            domain: new.domain,
            email: new.email,
            public_name: new.public_name,
            created_at,
            secret,
            passphrase_hash: hash,
        })
    }

    pub fn list(&self) -> anyhow::Result<Vec<InstanceRecord>> {
        let db = self.db()?;
        let mut stmt = db.prepare(
            "SELECT domain, secret, passphrase_hash, email, public_name, created_at FROM instances ORDER BY domain",
        )?;
        let rows = stmt.query_map([], record_from_row)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r??);
        }
        Ok(out)
    }

    fn record(&self, domain: &Domain) -> anyhow::Result<Option<InstanceRecord>> {
        let db = self.db()?;
        let rec = db
            .query_row(
                "SELECT domain, secret, passphrase_hash, email, public_name, created_at FROM instances WHERE domain = ?1",
                params![domain.as_str()],
                record_from_row,
            )
            .optional()?;
        rec.transpose()
    }

    /// Sets the owner's passphrase and ends every session of the instance (in one
    /// transaction, so a running server sees both at once).
    pub fn set_passphrase(&self, domain: &Domain, passphrase: &str) -> Result<(), RegistryError> {
        let hash = auth::hash_passphrase(passphrase)?;
        let mut db = self.db()?;
        let tx = db.transaction()?;
        let n =
            tx.execute("UPDATE instances SET passphrase_hash = ?2 WHERE domain = ?1", params![domain.as_str(), hash])?;
        if n == 0 {
            return Err(RegistryError::Unknown(domain.clone()));
        }
        tx.execute("DELETE FROM sessions WHERE domain = ?1", params![domain.as_str()])?;
        tx.commit()?;
        Ok(())
    }

    /// Checks the owner's passphrase against the registry (read each time, so a passphrase
    /// changed by the CLI applies at once to a running server). Slow by design (argon2).
    pub fn check_passphrase(&self, domain: &Domain, passphrase: &str) -> bool {
        match self.record(domain) {
            Ok(Some(rec)) => rec.passphrase_hash.as_deref().is_some_and(|h| auth::verify_passphrase(passphrase, h)),
            _ => false,
        }
    }

    /// Removes an instance and its data.
    pub fn remove(&self, domain: &Domain) -> Result<(), RegistryError> {
        let n = self.db()?.execute("DELETE FROM instances WHERE domain = ?1", params![domain.as_str()])?;
        self.db()?.execute("DELETE FROM sessions WHERE domain = ?1", params![domain.as_str()])?;
        if n == 0 {
            return Err(RegistryError::Unknown(domain.clone()));
        }
        if let Ok(mut open) = self.open.write() {
            open.remove(domain);
        }
        if let Some(server) = &self.couch {
            server.destroy_instance_blocking(domain.as_str())?;
        }
        let path = self.instance_db_path(domain);
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
        Ok(())
    }

    pub fn instance_db_path(&self, domain: &Domain) -> PathBuf {
        self.config.data_dir.join("instances").join(format!("{}.sqlite", domain.file_stem()))
    }

    /// The opened instance for `domain`, opening it on first use; `None` if it isn't hosted here.
    pub fn get(&self, domain: &Domain) -> anyhow::Result<Option<Arc<Instance>>> {
        if let Some(inst) = self.open.read().ok().and_then(|m| m.get(domain).cloned()) {
            return Ok(Some(inst));
        }
        let Some(rec) = self.record(domain)? else {
            return Ok(None);
        };
        let mut open = self.open.write().map_err(|_| anyhow::anyhow!("registry lock poisoned"))?;
        if let Some(inst) = open.get(domain) {
            return Ok(Some(inst.clone()));
        }
        let store: Arc<dyn Store> = match self.config.store {
            StoreKind::Sqlite => Arc::new(SqliteStore::open(&self.instance_db_path(domain), self.config.revs_limit)?),
            StoreKind::Couchdb => match &self.couch {
                Some(server) => Arc::new(server.store(domain.as_str(), self.config.revs_limit)),
                None => anyhow::bail!("the CouchDB server was not opened"),
            },
        };
        let sessions = Sessions { db: self.db.clone(), domain: rec.domain.clone() };
        let inst = Arc::new(Instance {
            keys: TokenKeys::new(&rec.secret, rec.domain.as_str()),
            mac: <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(&rec.secret)
                .map_err(|_| anyhow::anyhow!("invalid instance secret"))?,
            domain: rec.domain,
            email: rec.email,
            public_name: rec.public_name,
            store,
            login_failures: FailureLimiter::new(
                self.config.login_max_failures,
                Duration::from_secs(self.config.login_window_secs),
            ),
            login_slowdown: Slowdown::new(
                self.config.login_max_failures,
                Duration::from_millis(self.config.login_slowdown_ms),
                Duration::from_secs(self.config.login_max_wait_secs),
            ),
            passphrase_checks: Default::default(),
            realtime_subscribers: Default::default(),
            sessions,
        });
        open.insert(domain.clone(), inst.clone());
        Ok(Some(inst))
    }

    /// Every instance opened so far in this process.
    pub fn opened(&self) -> Vec<Arc<Instance>> {
        self.open.read().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// Opens every registered instance (so background work such as the outbox resumes after a
    /// restart). Instances that fail to open are logged and skipped.
    pub fn open_all(&self) -> anyhow::Result<()> {
        for rec in self.list()? {
            if let Err(e) = self.get(&rec.domain) {
                tracing::error!(instance = %rec.domain, error = ?e, "failed to open instance");
            }
        }
        Ok(())
    }

    /// Creates the instance if it doesn't exist yet; used by `hearth serve` on a fresh data dir.
    pub fn ensure(&self, new: NewInstance<'_>) -> Result<bool, RegistryError> {
        match self.add(new) {
            Ok(_) => Ok(true),
            Err(RegistryError::Exists(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<anyhow::Result<InstanceRecord>> {
    let domain: String = r.get(0)?;
    Ok(Ok(InstanceRecord {
        domain: match Domain::parse(&domain) {
            Ok(d) => d,
            Err(e) => return Ok(Err(anyhow::anyhow!(e))),
        },
        secret: r.get(1)?,
        passphrase_hash: r.get(2)?,
        email: r.get(3)?,
        public_name: r.get(4)?,
        created_at: r.get(5)?,
    }))
}

/// The registry's data dir has what it needs to run.
pub fn data_dir_exists(path: &Path) -> bool {
    path.join("registry.sqlite").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_normalised_and_checked() {
        assert_eq!(Domain::parse("Alice.Localhost:8080").unwrap().as_str(), "alice.localhost:8080");
        assert_eq!(Domain::parse("example.net.").unwrap().as_str(), "example.net");
        for bad in ["", "a b", "a:0", "a:99999", "-a.b", "a..b", "a/b", "a:", "[::1]:80", "a_b"] {
            assert!(Domain::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn instances_are_added_listed_opened_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(Arc::new(Config::for_tests(dir.path()))).unwrap();
        let d = Domain::parse("alice.localhost:8080").unwrap();
        reg.add(NewInstance {
            domain: d.clone(),
            passphrase: Some("x"),
            email: None,
            public_name: Some("Alice".into()),
        })
        .unwrap();
        assert!(matches!(
            reg.add(NewInstance { domain: d.clone(), passphrase: None, email: None, public_name: None }),
            Err(RegistryError::Exists(_))
        ));
        assert_eq!(reg.list().unwrap().len(), 1);
        let inst = reg.get(&d).unwrap().unwrap();
        assert!(reg.check_passphrase(&d, "x"));
        assert!(!reg.check_passphrase(&d, "y"));
        let first = inst.sessions.start(60).unwrap();
        let second = inst.sessions.start(60).unwrap();
        assert_ne!(first, second, "every login gets its own session");
        assert!(inst.sessions.is_valid(&first) && inst.sessions.is_valid(&second));
        inst.sessions.end(&first).unwrap();
        assert!(!inst.sessions.is_valid(&first) && inst.sessions.is_valid(&second));
        reg.set_passphrase(&d, "y").unwrap();
        assert!(reg.check_passphrase(&d, "y"));
        assert!(!inst.sessions.is_valid(&second), "a passphrase change ends every session");
        assert_eq!(inst.sessions.count().unwrap(), 0);
        assert_eq!(inst.display_name(), "Alice");
        assert!(reg.get(&Domain::parse("bob.localhost").unwrap()).unwrap().is_none());
        reg.remove(&d).unwrap();
        assert!(reg.get(&d).unwrap().is_none());
        assert!(!reg.instance_db_path(&d).exists());
    }
}
