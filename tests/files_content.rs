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
    // With direct I/O (the default: where the filesystem refuses it, the page cache is used,
    // as with it off), and through the page cache.
    for direct in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBackend::new(dir.path().to_path_buf(), direct).open("alice.localhost_8080").unwrap();
        conformance::run(store.as_ref()).await;
        // Nothing of the suite's interrupted writes is left on disk once swept.
        let tmp = dir.path().join("alice.localhost_8080").join("tmp");
        assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0, "direct: {direct}");
    }
}

/// Whether the filesystem of `dir` takes `O_DIRECT` (ramfs does not, nor tmpfs before Linux 6.6).
fn takes_direct_io(dir: &std::path::Path) -> bool {
    use rustix::fs::OFlags;
    let probe = std::fs::File::create(dir.join("probe")).unwrap();
    let flags = rustix::fs::fcntl_getfl(&probe).unwrap();
    let taken = rustix::fs::fcntl_setfl(&probe, flags | OFlags::DIRECT).is_ok();
    std::fs::remove_file(dir.join("probe")).unwrap();
    taken
}

/// Whether this process has, under `dir`, exactly one descriptor open (asserted), and whether
/// it is in direct mode (its flags in `/proc/self/fdinfo`).
fn one_open_file_under(dir: &std::path::Path) -> bool {
    let mut found = Vec::new();
    for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else { continue };
        if !target.starts_with(dir) {
            continue;
        }
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.file_name().to_string_lossy())).unwrap();
        let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).expect("flags").trim();
        let flags = u32::from_str_radix(flags, 8).unwrap();
        found.push(flags & rustix::fs::OFlags::DIRECT.bits() != 0);
    }
    assert_eq!(found.len(), 1, "one file open under {}: {found:?}", dir.display());
    found[0]
}

/// With `files.direct_io`, a file of `DIRECT_MIN` bytes or more is written with direct I/O
/// once it has a whole buffer, and read so from an aligned offset; a smaller file, a range
/// from elsewhere, and everything with the option off, go through the page cache. Every
/// read gives the bytes written.
#[tokio::test]
async fn direct_io_is_used_where_it_applies() {
    use futures_util::TryStreamExt;
    let dir = tempfile::tempdir().unwrap();
    if !takes_direct_io(dir.path()) {
        eprintln!("skipped: the filesystem of {} refuses O_DIRECT (the page cache is used)", dir.path().display());
        return;
    }
    let min = hearth::files::content::DIRECT_MIN as usize;
    for direct in [true, false] {
        let root = dir.path().join(format!("direct-{direct}"));
        let store = FsBackend::new(root.clone(), direct).open("alice.localhost_8080").unwrap();
        for (name, len) in [("large", 3 * 1024 * 1024 + 123), ("small", min - 1)] {
            let key = hearth::files::ContentKey::parse(&format!("files/aa/{name}")).unwrap();
            let data = conformance::pattern(len, 5);
            let mut w = store.create(&key).await.unwrap();
            // Two blocks handed over: the first one has been written when the second goes.
            let cut = len.min(2 * 1024 * 1024 + 1000);
            for c in data[..cut].chunks(64 * 1024) {
                w.write(bytes::Bytes::copy_from_slice(c)).await.unwrap();
            }
            let large = len >= min;
            assert_eq!(one_open_file_under(&root), direct && large, "{name} being written, direct: {direct}");
            w.write(bytes::Bytes::copy_from_slice(&data[cut..])).await.unwrap();
            w.commit().await.unwrap();
            for range in [None, Some(4096..len as u64 - 1), Some(4097..len as u64), Some(1..2)] {
                let stream = store.read(&key, range.clone()).await.unwrap();
                let aligned = range.as_ref().is_none_or(|r| r.start % 4096 == 0);
                assert_eq!(
                    one_open_file_under(&root),
                    direct && large && aligned,
                    "{name} {range:?}, direct: {direct}"
                );
                let got: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
                let (start, end) = range.map_or((0, len), |r| (r.start as usize, r.end as usize));
                assert!(got.concat() == data[start..end], "{name} {start}..{end}, direct: {direct}");
            }
        }
    }
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
