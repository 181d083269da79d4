//! Crash safety of the content channel (issue 13, item 2): two `hearth serve` processes share a
//! folder of small files and one large file; the test kills the receiving, then the sending
//! process with SIGKILL while the large file is being transferred, and restarts it. The sync
//! must complete with every file byte-identical, no download may ever serve other bytes than
//! the file's, and no file whose content was completed is received a second time (each
//! reception is logged by the receiver, which is counted over all its runs).

mod common;

use common::process::call;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use common::browser;
use common::flow::answer_invitation;
use common::process::ServerProcess as Server;
use common::TestInstance;
use futures_util::StreamExt;
use md5::Digest;
use serde_json::{json, Value};

const MIB: usize = 1024 * 1024;
const SMALL: usize = 30;
const BIG: usize = 120 * MIB;

/// The largest temporary content object a server is writing, in bytes.
fn receiving(s: &Server) -> u64 {
    let dir = s.dir.join("files").join("content").join(s.domain().replace(':', "_")).join("tmp");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

/// How many times the receiver committed each file's content, over all its runs (its logs).
fn receptions(log: &Path) -> HashMap<String, usize> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| l.contains("received file content")) {
        if let Some(id) = line.split("file=").nth(1).and_then(|s| s.split_whitespace().next()) {
            *out.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    out
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `size` deterministic bytes, made on the fly in 1 MiB chunks.
fn chunk(base: &[u8], i: usize, seed: u64, size: usize) -> Bytes {
    let len = MIB.min(size - i * MIB);
    let mut c = base[..len].to_vec();
    let tag = [(i as u64).to_le_bytes(), seed.to_le_bytes()].concat();
    let n = tag.len().min(len);
    c[..n].copy_from_slice(&tag[..n]);
    Bytes::from(c)
}

fn md5_of(base: &[u8], seed: u64, size: usize) -> String {
    let mut h = md5::Md5::new();
    for i in 0..size.div_ceil(MIB) {
        h.update(chunk(base, i, seed, size));
    }
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

async fn upload(domain: &str, token: &str, dir: &str, name: &str, base: &Bytes, seed: u64, size: usize) -> String {
    let b = base.clone();
    let stream = futures_util::stream::iter(0..size.div_ceil(MIB))
        .map(move |i| Ok::<_, std::io::Error>(chunk(&b, i, seed, size)));
    let resp = browser()
        .post(format!("http://{domain}/files/{}?Type=file&Name={}", enc(dir), enc(name)))
        .bearer_auth(token)
        .header("Content-Length", size.to_string())
        .header("Content-MD5", md5_of(base, seed, size))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    v["data"]["id"].as_str().unwrap_or_else(|| panic!("upload: {v}")).to_owned()
}

/// Downloads by path, streaming: status and the body's MD5. A 200 must carry the bytes its
/// ETag names; anything else must be a JSON error.
async fn download(domain: &str, token: &str, path: &str) -> (u16, String) {
    let resp = match browser()
        .get(format!("http://{domain}/files/download?Path={}", enc(path)))
        .bearer_auth(token)
        .send()
        .await
    {
        Ok(r) => r,
        Err(_) => return (0, String::new()), // the server is down
    };
    let status = resp.status().as_u16();
    let etag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(|s| s.trim_matches('"').to_owned());
    let mut h = md5::Md5::new();
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(c) = stream.next().await {
        let Ok(c) = c else { return (0, String::new()) };
        h.update(&c);
        if status != 200 {
            body.extend_from_slice(&c);
        }
    }
    let md5 = base64::engine::general_purpose::STANDARD.encode(h.finalize());
    if status == 200 {
        assert_eq!(etag.as_deref(), Some(md5.as_str()), "{path}: a download serves the file's bytes, whole");
    } else if status != 404 {
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        assert!(v["error"].is_string(), "{path}: {status} {v}");
    }
    (status, md5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_share_survives_sigkill_of_either_side_during_a_large_file_without_resending_completed_files() {
    let root = tempfile::tempdir().unwrap();
    let fs = vec![("HEARTH_FILES__BACKEND", "fs".to_owned())];
    let mut alice = Server::new("alice", root.path().join("a"), fs.clone());
    let mut bob = Server::new("bob", root.path().join("b"), fs);
    alice.cli(&["instances", "add", &alice.domain(), "--passphrase", "pa"]);
    bob.cli(&["instances", "add", &bob.domain(), "--passphrase", common::flow::PASS]);
    let ta = alice.cli(&["instances", "token", &alice.domain(), "--scope", "io.cozy.files"]).trim().to_owned();
    let ts = alice
        .cli(&["instances", "token", &alice.domain(), "--scope", "io.cozy.files", "--scope", "io.cozy.sharings"])
        .trim()
        .to_owned();
    let tb = bob.cli(&["instances", "token", &bob.domain(), "--scope", "io.cozy.files"]).trim().to_owned();
    alice.start().await;
    bob.start().await;

    let base = Bytes::from(hearth::files::conformance::pattern(MIB, 3));
    let dir = call(
        &alice.domain(),
        reqwest::Method::POST,
        "/files/io.cozy.files.root-dir?Type=directory&Name=Media",
        &ta,
        None,
    )
    .await["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sub = call(&alice.domain(), reqwest::Method::POST, &format!("/files/{dir}?Type=directory&Name=sub"), &ta, None)
        .await["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut expected = Vec::new();
    for n in 0..SMALL {
        let (parent, prefix) = if n % 2 == 0 { (&dir, "") } else { (&sub, "sub/") };
        let size = 10_000 + n * 1000;
        upload(&alice.domain(), &ta, parent, &format!("f{n}.bin"), &base, n as u64, size).await;
        expected.push((format!("{prefix}f{n}.bin"), md5_of(&base, n as u64, size)));
    }
    // The large file last: the small ones are complete when it is being transferred.
    upload(&alice.domain(), &ta, &sub, "big.bin", &base, 1000, BIG).await;
    expected.push(("sub/big.bin".into(), md5_of(&base, 1000, BIG)));

    let body = json!({"data": {"type": "io.cozy.sharings", "attributes": {"description": "holiday notes", "rules": [
        {"title": "Media", "doctype": "io.cozy.files", "values": [dir], "add": "sync", "update": "sync", "remove": "sync"}]},
        "relationships": {"recipients": {"data": [{"instance": format!("http://{}", bob.domain())}]}}}});
    let created = call(&alice.domain(), reqwest::Method::POST, "/sharings/", &ts, Some(body)).await;
    let sid = created["data"]["id"].as_str().unwrap().to_owned();
    let links = alice.cli(&["sharings", "invitations", &alice.domain(), &sid]);
    let link = links.split_whitespace().find(|w| w.starts_with("http")).unwrap().to_owned();
    let recipient = TestInstance { domain: bob.domain(), port: bob.port, client: browser() };
    answer_invitation(&link, &recipient, "accept").await;

    let big = "/Shared with me/Media/sub/big.bin";
    let mut kills = 0;
    for victim in ["bob", "alice"] {
        // Wait for the large file to be on its way, then kill.
        let deadline = Instant::now() + Duration::from_secs(120);
        while receiving(&bob) < 8 * MIB as u64 {
            assert!(Instant::now() < deadline, "the large file never started arriving");
            let (s, _) = download(&bob.domain(), &tb, big).await;
            assert_ne!(s, 200, "the large file cannot be complete yet");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let server = if victim == "bob" { &mut bob } else { &mut alice };
        println!("killing {victim} during the large file");
        server.kill();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.start().await;
        if victim == "bob" {
            // Right after the restart: the partial content is nowhere visible.
            let (s, _) = download(&bob.domain(), &tb, big).await;
            assert_eq!(s, 409, "a file whose content is not complete answers 409");
        }
    }

    let deadline = Instant::now() + Duration::from_secs(600);
    for (path, md5) in &expected {
        let path = format!("/Shared with me/Media/{path}");
        loop {
            let (s, got) = download(&bob.domain(), &tb, &path).await;
            if s == 200 {
                assert_eq!(&got, md5, "{path}");
                break;
            }
            assert!(Instant::now() < deadline, "{path} never arrived (last status {s})");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    alice.kill();
    bob.kill();
    let counts = receptions(&bob.log_path());
    println!("kills: {kills}, receptions: {}", counts.values().sum::<usize>());
    assert_eq!(counts.len(), expected.len(), "every file received: {counts:?}");
    assert!(counts.values().all(|n| *n == 1), "a completed file was received again: {counts:?}");
}
