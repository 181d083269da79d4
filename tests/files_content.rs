//! The content stores' conformance suite: on the local filesystem always, and on S3 when
//! `HEARTH_TEST_S3_URL` names an S3-compatible server with the bucket `hearth-test`
//! (`scripts/test` starts moto's server mode for it; `scripts/s3-server start DIR` does it by
//! hand). Then the same files API run end to end with each backend.

mod common;

use hearth::files::conformance;
use hearth::files::content::{ContentBackend, FsBackend, S3Backend, S3Settings};

/// The S3 test server's settings, under a prefix of this run's own.
pub fn s3_settings() -> Option<S3Settings> {
    let url = std::env::var("HEARTH_TEST_S3_URL").ok()?;
    Some(S3Settings {
        endpoint: Some(url),
        bucket: "hearth-test".into(),
        region: "us-east-1".into(),
        access_key_id: "test".into(),
        secret_access_key: "test".to_owned().into(),
        prefix: format!("c{}", uuid::Uuid::new_v4().simple()),
        allow_http: true,
    })
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
    let Some(settings) = s3_settings() else {
        eprintln!("HEARTH_TEST_S3_URL is not set: the S3 backend is not tested here (scripts/test sets it)");
        return;
    };
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
