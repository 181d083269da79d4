//! The CouchDB backend when CouchDB misbehaves: a clear startup error when it is unreachable or
//! refuses the credentials, and, with PouchDB Server killed in the middle of a run, 503 JSON
//! errors (quickly, not a hang) until it comes back, then normal service. The test runs its own
//! PouchDB Server (from tests/node, installed by `npm ci --ignore-scripts`; scripts/test does
//! it), killed and restarted on the same port; its in-memory data is lost on the restart, which
//! doesn't matter here.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hearth::config::StoreKind;
use hearth::{Application, Config};
use reqwest::Method;
use serde_json::json;

fn pouchdb_server_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node/node_modules/.bin/pouchdb-server");
    assert!(bin.exists(), "run `npm ci --ignore-scripts` in tests/node first (scripts/test does it)");
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A PouchDB Server process on a fixed port, killed when dropped.
struct PouchServer {
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl PouchServer {
    async fn start(port: u16) -> PouchServer {
        // It writes config.json and log.txt into its working directory.
        let dir = tempfile::tempdir().unwrap();
        let child = tokio::process::Command::new(pouchdb_server_bin())
            .args(["-m", "-p", &port.to_string(), "-o", "127.0.0.1", "-n"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be installed");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = reqwest::Client::new();
        loop {
            if client.get(format!("http://127.0.0.1:{port}/")).send().await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(Instant::now() < deadline, "PouchDB Server did not start on port {port}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        PouchServer { child, _dir: dir }
    }

    async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

fn couch_config(port: u16) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.store = StoreKind::Couchdb;
        c.couchdb.url = Some(format!("http://127.0.0.1:{port}"));
        c.couchdb.user = None;
        c.couchdb.password = None;
        c.couchdb.prefix = Some(format!("t{}", uuid::Uuid::new_v4().simple()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearth_answers_503_while_couchdb_is_down_and_recovers_when_it_is_back() {
    let port = free_port();
    let couch = PouchServer::start(port).await;
    let app = common::spawn_app_with(couch_config(port)).await;
    let alice = app.add_instance("alice", "x");
    let token = app.token(&alice, "io.cozy.notes");
    let (s, v) = alice.call(Method::PUT, "/data/io.cozy.notes/n1", Some(&token), Some(json!({"v": 1}))).await;
    assert_eq!(s, 201, "{v}");

    couch.kill().await;
    for (method, path, body) in [
        (Method::GET, "/data/io.cozy.notes/n1", None),
        (Method::PUT, "/data/io.cozy.notes/n2", Some(json!({"v": 2}))),
        (Method::GET, "/data/io.cozy.notes/_changes", None),
        (Method::GET, "/data/io.cozy.notes/", None),
    ] {
        let started = Instant::now();
        let (s, v) = alice.call(method.clone(), path, Some(&token), body).await;
        assert_eq!(s, 503, "{method} {path} while CouchDB is down: {v}");
        assert_eq!(v["error"], "service_unavailable", "{v}");
        assert!(started.elapsed() < Duration::from_secs(10), "{method} {path} took {:?}", started.elapsed());
    }

    let _couch = PouchServer::start(port).await;
    // In-memory data is gone with the old process; the databases are created again.
    let (s, v) = alice.call(Method::PUT, "/data/io.cozy.notes/n2", Some(&token), Some(json!({"v": 2}))).await;
    assert_eq!(s, 201, "writes work again: {v}");
    let (s, v) = alice.call(Method::GET, "/data/io.cozy.notes/n2", Some(&token), None).await;
    assert_eq!((s, &v["v"]), (200, &json!(2)), "{v}");
    let (s, v) = alice.call(Method::GET, "/data/io.cozy.notes/_changes", Some(&token), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["results"][0]["id"], "n2", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_fails_clearly_when_couchdb_is_unreachable_or_refuses_the_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    couch_config(free_port())(&mut config);
    let started = Instant::now();
    let err = Application::build(config.clone()).await.err().expect("no CouchDB there");
    assert!(format!("{err:#}").contains("unreachable"), "{err:#}");
    assert!(started.elapsed() < Duration::from_secs(10));

    config.couchdb.url = None;
    let err = Application::build(config.clone()).await.err().expect("no URL");
    assert!(format!("{err:#}").contains("couchdb.url"), "{err:#}");

    // PouchDB Server refuses Basic credentials of a user it doesn't have.
    let port = free_port();
    let _couch = PouchServer::start(port).await;
    config.couchdb.url = Some(format!("http://127.0.0.1:{port}"));
    config.couchdb.user = Some("admin".into());
    config.couchdb.password = Some("wrong".to_owned().into());
    let err = Application::build(config).await.err().expect("wrong credentials");
    assert!(format!("{err:#}").contains("refused the credentials"), "{err:#}");
}
