//! File content against a real `hearth serve` child process (its own memory, read from
//! `/proc/<pid>/status`; killed with SIGKILL for the crash test), content on disk:
//!
//! * a 300 MB upload and its download leave the server's resident memory flat (the bench,
//!   `hearth-bench files`, does 1 GB and reports the numbers);
//! * SIGKILL during a large upload and during a PUT replacing a file's content leaves, after a
//!   restart, no partial file visible, the old content byte-identical, and no temporary or
//!   orphaned content on disk or in the quota; an instance's own quota (`hearth instances
//!   quota`) then holds.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use md5::Digest;
use serde_json::Value;

const ROOT: &str = "io.cozy.files.root-dir";
const MIB: usize = 1024 * 1024;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `VmRSS` and `VmHWM` of a process, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One `hearth serve` on a data directory of its own, with one instance.
struct Server {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Server {
    fn new() -> Server {
        let s = Server { dir: tempfile::tempdir().unwrap(), port: free_port(), child: None };
        s.cli(&["instances", "add", &s.domain(), "--passphrase", "pa"]);
        s
    }

    fn domain(&self) -> String {
        format!("alice.localhost:{}", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.domain())
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env("HEARTH_DATA_DIR", self.dir.path())
            .env("HEARTH_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("HEARTH_FILES__BACKEND", "fs")
            .env("HEARTH_LOG", "warn");
    }

    fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearth"));
        self.env(&mut cmd);
        let out = cmd.args(args).stdin(Stdio::null()).output().expect("hearth cli");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn token(&self) -> String {
        self.cli(&["instances", "token", &self.domain(), "--scope", "io.cozy.files"]).trim().to_owned()
    }

    async fn start(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("serve.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearth"));
        self.env(&mut cmd);
        cmd.arg("serve").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(log));
        self.child = Some(cmd.spawn().expect("hearth serve"));
        let client = common::browser();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !client.get(self.url("/status")).send().await.is_ok_and(|r| r.status().is_success()) {
            assert!(Instant::now() < deadline, "hearth serve did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            c.wait().unwrap();
        }
    }

    /// The instance's content directory (`objects/` and `tmp/`).
    fn content_dir(&self) -> PathBuf {
        self.dir.path().join("files").join("content").join(self.domain().replace(':', "_"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every regular file under `dir`, with its size. A file the server removes while it is
/// listed (its sweep, after a restart) is left out.
fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = match e.metadata() {
                Ok(m) => m,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => panic!("{}: {err}", e.path().display()),
            };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), m.len()));
            }
        }
    }
    out
}

/// Deterministic content made on the fly, `total` bytes in 1 MiB chunks: chunk `i` is a fixed
/// pseudo-random MiB with `i` and `seed` written over its first 16 bytes.
fn chunk(base: &[u8], i: usize, seed: u64, total: usize) -> Bytes {
    let len = MIB.min(total - i * MIB);
    let mut c = base[..len].to_vec();
    let tag = [(i as u64).to_le_bytes(), seed.to_le_bytes()].concat();
    let n = tag.len().min(len);
    c[..n].copy_from_slice(&tag[..n]);
    Bytes::from(c)
}

fn md5_of_generated(base: &[u8], seed: u64, total: usize) -> [u8; 16] {
    let mut h = md5::Md5::new();
    for i in 0..total.div_ceil(MIB) {
        h.update(chunk(base, i, seed, total));
    }
    h.finalize().into()
}

fn generated_body(base: Bytes, seed: u64, total: usize) -> reqwest::Body {
    let stream = futures_util::stream::iter(0..total.div_ceil(MIB))
        .map(move |i| Ok::<_, std::io::Error>(chunk(&base, i, seed, total)));
    reqwest::Body::wrap_stream(stream)
}

async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Downloads a file, streaming: its MD5 and size.
async fn download_md5(client: &reqwest::Client, url: String, token: &str) -> (u16, [u8; 16], u64) {
    let resp = client.get(url).bearer_auth(token).send().await.unwrap();
    let status = resp.status().as_u16();
    let mut h = md5::Md5::new();
    let mut size = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(c) = body.next().await {
        let c = c.unwrap();
        size += c.len() as u64;
        h.update(&c);
    }
    (status, h.finalize().into(), size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_mb_upload_and_download_leave_the_servers_memory_flat() {
    const TOTAL: usize = 300 * MIB;
    /// How far above its resident memory before the transfers the server's peak may go.
    const BOUND_MIB: f64 = 40.0;
    let mut server = Server::new();
    let token = server.token();
    server.start().await;
    let pid = server.pid();
    let client = common::browser();
    let base = Bytes::from(hearth::files::conformance::pattern(MIB, 7));
    // Warm up the upload and download paths with a small file.
    let resp = client
        .post(server.url(&format!("/files/{ROOT}?Type=file&Name=warm")))
        .bearer_auth(&token)
        .body(base.clone())
        .send()
        .await
        .unwrap();
    let (status, warm) = json_of(resp).await;
    assert_eq!(status, 201, "{warm}");
    let warm_id = warm["data"]["id"].as_str().unwrap().to_owned();
    let (status, _, size) = download_md5(&client, server.url(&format!("/files/download/{warm_id}")), &token).await;
    assert_eq!((status, size), (200, MIB as u64));
    let (before, _) = memory_mib(pid);

    let expected = md5_of_generated(&base, 1, TOTAL);
    let peak = std::sync::Arc::new(std::sync::Mutex::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                let (rss, _) = memory_mib(pid);
                {
                    let mut p = peak.lock().unwrap();
                    *p = p.max(rss);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Streamed with its Content-Length and Content-MD5.
    let resp = client
        .post(server.url(&format!("/files/{ROOT}?Type=file&Name=big.bin")))
        .bearer_auth(&token)
        .header("Content-Length", TOTAL.to_string())
        .header("Content-MD5", base64::engine::general_purpose::STANDARD.encode(expected))
        .body(generated_body(base.clone(), 1, TOTAL))
        .send()
        .await
        .unwrap();
    let (status, big) = json_of(resp).await;
    assert_eq!(status, 201, "{big}");
    assert_eq!(big["data"]["attributes"]["size"], TOTAL.to_string());
    let (_, after_upload) = memory_mib(pid);
    let id = big["data"]["id"].as_str().unwrap().to_owned();
    let (status, md5, size) = download_md5(&client, server.url(&format!("/files/download/{id}")), &token).await;
    sampler.abort();
    let (after, hwm) = memory_mib(pid);
    let sampled = *peak.lock().unwrap();
    println!(
        "hearth serve RSS: {before:.1} MiB before, {after_upload:.1} MiB peak after the upload, sampled peak \
         {sampled:.1} MiB, VmHWM {hwm:.1} MiB, {after:.1} MiB after"
    );
    assert_eq!((status, size), (200, TOTAL as u64));
    assert_eq!(md5, expected, "the download is the upload, byte for byte");
    assert!(hwm - before < BOUND_MIB, "peak {hwm:.1} MiB, {before:.1} MiB before: over {BOUND_MIB} MiB more");
    // On disk: the two files whole, nothing else.
    let mut sizes: Vec<u64> = files_under(&server.content_dir()).into_iter().map(|(_, s)| s).collect();
    sizes.sort();
    assert_eq!(sizes, vec![MIB as u64, TOTAL as u64]);
}

/// Sends a body of `total` bytes from the pattern, pausing for good after `sent_before_pause`
/// bytes (the request then hangs until the server dies).
fn stalling_body(base: Bytes, seed: u64, total: usize, sent_before_pause: usize) -> reqwest::Body {
    let chunks = sent_before_pause / MIB;
    let stream = futures_util::stream::iter(0..chunks)
        .map(move |i| Ok::<_, std::io::Error>(chunk(&base, i, seed, total)))
        .chain(futures_util::stream::pending());
    reqwest::Body::wrap_stream(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_an_upload_or_a_replacement_leaves_the_old_content_whole_and_no_garbage() {
    const OLD: usize = 3 * MIB + 12_345;
    const NEW: usize = 200 * MIB;
    const SENT: usize = 40 * MIB;
    let mut server = Server::new();
    let token = server.token();
    server.start().await;
    let client = common::browser();
    let base = Bytes::from(hearth::files::conformance::pattern(MIB, 11));
    let old_md5 = md5_of_generated(&base, 100, OLD);
    let resp = client
        .post(server.url(&format!("/files/{ROOT}?Type=file&Name=keep.bin")))
        .bearer_auth(&token)
        .header("Content-Length", OLD.to_string())
        .body(generated_body(base.clone(), 100, OLD))
        .send()
        .await
        .unwrap();
    let (status, keep) = json_of(resp).await;
    assert_eq!(status, 201, "{keep}");
    let keep_id = keep["data"]["id"].as_str().unwrap().to_owned();
    let keep_rev = keep["data"]["meta"]["rev"].as_str().unwrap().to_owned();
    let objects_before = files_under(&server.content_dir().join("objects"));
    assert_eq!(objects_before.len(), 1);

    for round in 0..2u64 {
        // In flight at once: a new file (declared length, then chunked) and a replacement of
        // keep.bin, each stalled after 40 MB of its 200 MB.
        let new_file = client
            .post(server.url(&format!("/files/{ROOT}?Type=file&Name=partial-{round}.bin")))
            .bearer_auth(&token)
            .body(stalling_body(base.clone(), 200 + round, NEW, SENT));
        let new_file = if round == 0 { new_file.header("Content-Length", NEW.to_string()) } else { new_file };
        let replace = client
            .put(server.url(&format!("/files/{keep_id}")))
            .bearer_auth(&token)
            .header("If-Match", &keep_rev)
            .header("Content-Length", NEW.to_string())
            .body(stalling_body(base.clone(), 300 + round, NEW, SENT));
        let in_flight = [tokio::spawn(new_file.send()), tokio::spawn(replace.send())];
        // Both bodies are being written to temporary files: kill then.
        let tmp = server.content_dir().join("tmp");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let temps = files_under(&tmp);
            if temps.len() == 2 && temps.iter().all(|(_, s)| *s >= (SENT / 2) as u64) {
                break;
            }
            assert!(Instant::now() < deadline, "the uploads did not reach the disk: {temps:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.kill();
        for r in in_flight {
            assert!(r.await.unwrap().is_err(), "a request to a killed server fails");
        }
        assert_eq!(files_under(&tmp).len(), 2, "the crash left its temporary files behind");

        // The default grace period (an hour) applies to S3; on disk, a restart cleans up at once.
        server.start().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !files_under(&tmp).is_empty() {
            assert!(
                Instant::now() < deadline,
                "temporary files still there after the restart: {:?}",
                files_under(&tmp)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let resp = client
            .get(server.url(&format!("/files/metadata?Path=/partial-{round}.bin")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "no partial file is visible");
        let resp = client.get(server.url(&format!("/files/{ROOT}"))).bearer_auth(&token).send().await.unwrap();
        let (_, root) = json_of(resp).await;
        let names: Vec<&str> =
            root["included"].as_array().unwrap().iter().map(|c| c["attributes"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, vec![".cozy_trash", "keep.bin"]);
        let resp = client.get(server.url(&format!("/files/{keep_id}"))).bearer_auth(&token).send().await.unwrap();
        let (_, meta) = json_of(resp).await;
        assert_eq!(meta["data"]["meta"]["rev"], keep_rev.as_str(), "keep.bin was not changed");
        assert_eq!(meta["data"]["attributes"]["size"], OLD.to_string());
        let (status, md5, size) =
            download_md5(&client, server.url(&format!("/files/download/{keep_id}")), &token).await;
        assert_eq!((status, size), (200, OLD as u64));
        assert_eq!(md5, old_md5, "the old content is intact");
        let objects: Vec<PathBuf> =
            files_under(&server.content_dir().join("objects")).into_iter().map(|(p, _)| p).collect();
        assert_eq!(objects, vec![objects_before[0].0.clone()], "only keep.bin's content is on disk");
    }
    server.kill();
    let quota = server.cli(&["instances", "quota", &server.domain()]);
    assert!(quota.contains(&format!(", {OLD} bytes used")), "only keep.bin counts in the quota: {quota}");
    // An instance's own quota, set with the CLI, holds: full now, one more byte is 413.
    let quota = server.cli(&["instances", "quota", &server.domain(), &OLD.to_string()]);
    assert!(quota.contains(&format!("quota {OLD} bytes (its own), {OLD} bytes used")), "{quota}");
    server.start().await;
    let one_more_url = server.url(&format!("/files/{ROOT}?Type=file&Name=one.txt"));
    let one_more = || client.post(&one_more_url).bearer_auth(&token).body("x");
    let (status, v) = json_of(one_more().send().await.unwrap()).await;
    assert_eq!(status, 413, "{v}");
    server.kill();
    let quota = server.cli(&["instances", "quota", &server.domain(), "--default"]);
    assert!(quota.contains("(the default, files.quota_bytes)"), "{quota}");
    server.start().await;
    assert_eq!(one_more().send().await.unwrap().status(), 201);
}
