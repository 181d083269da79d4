//! Test harness: `spawn_app()` runs a real server on 127.0.0.1 (port 0) with a temporary data
//! dir, and gives helpers to create instances, mint tokens and call the API. Test clients
//! resolve every `*.localhost` name to 127.0.0.1 (RFC 6761), as hearth's federation client does,
//! so instances are addressed by their real domain.
#![allow(dead_code)]

pub mod bytes;
pub mod flow;
pub mod folder;
pub mod logs;
pub mod process;

use std::net::SocketAddr;
use std::sync::Arc;

use hearth::auth::{Audience, PermissionSet};
use hearth::instance::{Domain, NewInstance};
use hearth::{Application, Config};
use reqwest::{Client, Method, RequestBuilder};
use serde_json::Value;

struct LocalhostResolver;

impl reqwest::dns::Resolve for LocalhostResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let ok = name.as_str() == "localhost" || name.as_str().ends_with(".localhost");
        Box::pin(async move {
            if ok {
                let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(SocketAddr::from(([127, 0, 0, 1], 0))));
                Ok(addrs)
            } else {
                Err("tests only resolve *.localhost".into())
            }
        })
    }
}

/// A client like a browser: its own cookies, redirects not followed (tests look at them).
/// Idle connections are dropped before the server's keep-alive (5 s) would close them, so a
/// request never goes out on a connection the server is closing (hyper's IncompleteMessage).
pub fn browser() -> Client {
    Client::builder()
        .pool_idle_timeout(std::time::Duration::from_secs(2))
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .dns_resolver(Arc::new(LocalhostResolver))
        .no_proxy()
        .build()
        .expect("client")
}

pub struct TestApp {
    pub port: u16,
    pub registry: Arc<hearth::instance::Registry>,
    pub sharing: Arc<hearth::sharing::Context>,
    pub files: Arc<hearth::files::FilesRegistry>,
    pub client: Client,
    pub dir: Arc<tempfile::TempDir>,
    pub config: Config,
    handle: Option<hearth::app::Stopper>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let mut config = Config::for_tests(dir.path());
    use_test_couchdb(&mut config);
    use_test_s3(&mut config);
    tweak(&mut config);
    start(config, dir).await
}

/// With `HEARTH_TEST_COUCHDB_URL` set (scripts/test sets it for its CouchDB pass, pointing at
/// PouchDB Server), the app keeps its instances in that CouchDB, under a database prefix of its
/// own so tests never see each other's data. Optional `HEARTH_TEST_COUCHDB_USER`/`_PASSWORD`.
pub fn use_test_couchdb(config: &mut Config) {
    if let Ok(url) = std::env::var("HEARTH_TEST_COUCHDB_URL") {
        config.store = hearth::config::StoreKind::Couchdb;
        config.couchdb.url = Some(url);
        config.couchdb.user = std::env::var("HEARTH_TEST_COUCHDB_USER").ok();
        config.couchdb.password = std::env::var("HEARTH_TEST_COUCHDB_PASSWORD").ok().map(Into::into);
        config.couchdb.prefix = Some(format!("t{}", uuid::Uuid::new_v4().simple()));
    }
}

/// With `HEARTH_TEST_FILES_S3=1` and `HEARTH_TEST_S3_URL` set (scripts/test starts moto's
/// server mode, and sets both for its CouchDB pass), file content goes to that S3-compatible
/// server's bucket `hearth-test`, under a prefix of the app's own.
pub fn use_test_s3(config: &mut Config) {
    if std::env::var("HEARTH_TEST_FILES_S3").is_ok_and(|v| v == "1") {
        let url = std::env::var("HEARTH_TEST_S3_URL").expect("HEARTH_TEST_FILES_S3=1 needs HEARTH_TEST_S3_URL");
        config.files.backend = hearth::config::FilesBackendKind::S3;
        config.files.s3 = hearth::config::S3Config {
            endpoint: Some(url),
            bucket: Some("hearth-test".into()),
            access_key_id: Some("test".into()),
            secret_access_key: Some("test".to_owned().into()),
            prefix: format!("t{}", uuid::Uuid::new_v4().simple()),
            allow_http: true,
            ..Default::default()
        };
    }
}

async fn start(config: Config, dir: Arc<tempfile::TempDir>) -> TestApp {
    let app = Application::build(config.clone()).await.expect("build app");
    let port = app.port();
    let registry = app.registry();
    let sharing = app.sharing();
    let files = app.files();
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    let mut config = config;
    config.listen = format!("127.0.0.1:{port}");
    TestApp { port, registry, sharing, files, client: browser(), dir, config, handle: Some(handle) }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            drop(h.stop(false));
        }
    }
}

/// An instance of a test app, addressed through its domain.
pub struct TestInstance {
    pub domain: String,
    pub port: u16,
    pub client: Client,
}

impl TestApp {
    /// Stops the server (its data stays): peers see it as down.
    pub async fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.stop(true).await;
        }
    }

    /// Starts the server again on the same port with the same data.
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut fresh = start(self.config.clone(), self.dir.clone()).await;
        self.registry = fresh.registry.clone();
        self.sharing = fresh.sharing.clone();
        self.files = fresh.files.clone();
        // `fresh` is dropped without its handle, so it doesn't stop the server.
        self.handle = fresh.handle.take();
    }

    pub fn add_instance(&self, name: &str, passphrase: &str) -> TestInstance {
        self.add_instance_at(name, passphrase, self.port)
    }

    /// An instance of this app whose domain names `port` rather than the app's: peers and the
    /// test reach it there (a proxy in front of the app, say).
    pub fn add_instance_at(&self, name: &str, passphrase: &str, port: u16) -> TestInstance {
        let domain = format!("{name}.localhost:{port}");
        self.registry
            .add(NewInstance {
                domain: Domain::parse(&domain).expect("domain"),
                passphrase: Some(passphrase),
                email: Some(format!("{name}@example.net")),
                public_name: Some(name.to_owned()),
            })
            .expect("add instance");
        TestInstance { domain, port, client: self.client.clone() }
    }

    pub fn instance(&self, domain: &str) -> Arc<hearth::instance::Instance> {
        self.registry.get(&Domain::parse(domain).expect("domain")).expect("registry").expect("instance")
    }

    pub fn token(&self, inst: &TestInstance, scope: &str) -> String {
        self.instance(&inst.domain).keys.issue(
            Audience::Cli,
            "cli",
            3600,
            Some(&PermissionSet::parse(scope).expect("scope")),
            None,
        )
    }
}

impl TestInstance {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.domain)
    }

    pub fn req(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let mut r = self.client.request(method, self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r
    }

    /// Sends a request and returns status and JSON body (Null when the body isn't JSON).
    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut r = self.req(method, path, token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// Polls `check` until it returns true or `secs` pass (then fails with `what`).
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if check().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Writes `request` (raw HTTP/1.1, possibly a body cut short) to the server on `port`, keeps
/// the socket open, and reads the answer until its JSON body ends or `wait_secs` pass: the
/// answer's text, or `None` when none came in time.
pub async fn raw_answer(port: u16, request: &str, wait_secs: u64) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    sock.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(wait_secs), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = sock.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    read.ok().map(|_| String::from_utf8_lossy(&answer).into_owned())
}
