//! The content stores' conformance suite, on the local filesystem and on S3: the server
//! `HEARTH_TEST_S3_URL` names (with the bucket `hearth-test`; `scripts/test` starts moto's
//! server mode for it), else a moto server this test starts with `scripts/s3-server`. The files
//! API runs end to end on S3 in `scripts/test`'s CouchDB pass (`HEARTH_TEST_FILES_S3`).

mod common;

use hearth::files::conformance;
use hearth::files::content::{ContentBackend, FsBackend, S3Backend, S3Settings};

/// A moto server started by this test binary when `HEARTH_TEST_S3_URL` is not set, stopped
/// when dropped.
struct OwnS3 {
    dir: tempfile::TempDir,
}

impl Drop for OwnS3 {
    fn drop(&mut self) {
        let _ = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/s3-server"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// The S3 test server's URL: `HEARTH_TEST_S3_URL`, or a moto server started here with
/// `scripts/s3-server` (which installs moto from PyPI on first use). Never skipped.
fn s3_url() -> (String, Option<OwnS3>) {
    if let Ok(url) = std::env::var("HEARTH_TEST_S3_URL") {
        return (url, None);
    }
    let own = OwnS3 { dir: tempfile::tempdir().unwrap() };
    let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/s3-server"))
        .arg("start")
        .arg(own.dir.path())
        .output()
        .expect("scripts/s3-server");
    assert!(
        out.status.success(),
        "no S3 server: set HEARTH_TEST_S3_URL or let scripts/s3-server install moto (python3-venv, PyPI): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (String::from_utf8(out.stdout).unwrap().trim().to_owned(), Some(own))
}

/// The S3 test server's settings, under a prefix of this run's own.
fn s3_settings(url: String) -> S3Settings {
    S3Settings {
        endpoint: Some(url),
        bucket: "hearth-test".into(),
        region: "us-east-1".into(),
        access_key_id: "test".into(),
        secret_access_key: "test".to_owned().into(),
        prefix: format!("c{}", uuid::Uuid::new_v4().simple()),
        allow_http: true,
    }
}

#[tokio::test]
async fn the_filesystem_backend_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsBackend::new(dir.path().to_path_buf()).open("alice.localhost_8080").unwrap();
    conformance::run(store.as_ref()).await;
    // Nothing of the suite's interrupted writes is left on disk once swept.
    let tmp = dir.path().join("alice.localhost_8080").join("tmp");
    assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0);
}

#[tokio::test]
async fn the_s3_backend_passes_the_conformance_suite() {
    let (url, _own) = s3_url();
    let settings = s3_settings(url);
    let backend = S3Backend::new(&settings).unwrap();
    let store = backend.open("alice.localhost_8080").unwrap();
    conformance::run(store.as_ref()).await;
    // Destroying an instance's content removes every object under its prefix.
    let other = backend.open("bob.localhost_8080").unwrap();
    let mut w = other.create(&hearth::files::ContentKey::parse("files/aa/x").unwrap()).await.unwrap();
    w.write(bytes::Bytes::from_static(b"x")).await.unwrap();
    w.commit().await.unwrap();
    backend.destroy("bob.localhost_8080").await.unwrap();
    assert!(other.list("").await.unwrap().is_empty());
}

#[tokio::test]
async fn an_unreachable_s3_server_is_a_clear_error_not_a_hang() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let settings = S3Settings {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        bucket: "b".into(),
        region: "us-east-1".into(),
        access_key_id: "k".into(),
        secret_access_key: "s".to_owned().into(),
        prefix: "p".into(),
        allow_http: true,
    };
    let store = S3Backend::new(&settings).unwrap().open("a").unwrap();
    let key = hearth::files::ContentKey::parse("files/aa/x").unwrap();
    let started = std::time::Instant::now();
    let got = tokio::time::timeout(std::time::Duration::from_secs(120), store.size(&key)).await.expect("no hang");
    assert!(matches!(got, Err(hearth::files::ContentError::Unavailable(_))), "{got:?}");
    eprintln!("refused after {:?}", started.elapsed());
}
