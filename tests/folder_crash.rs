//! Crash safety of the content channel (issue 13, item 2): two `hearth serve` processes share a
//! folder of small files and one large file; the test kills the receiving, then the sending
//! process with SIGKILL while the large file is being transferred, and restarts it. The sync
//! must complete with every file byte-identical, no download may ever serve other bytes than
//! the file's, and no file whose content was completed is received a second time.
//!
//! How receptions are counted. The receiver logs each one ("received file content", with the
//! file and its version) *after* committing it: the commit (rename of the temporary object)
//! makes the bytes visible, then the directory is fsynced and the line written. A SIGKILL in
//! between leaves a complete object that is, rightly, not sent again, and no line for it: the
//! log alone cannot tell that file from one never received (one run under load saw 30 lines
//! for 31 files; a pause of 400 ms put there leaves about 7 files so). Logging before the
//! commit would not do either: a kill after the line and before the rename would look like a
//! reception, and the file's next one like a re-send. So "completed before the kill" is read
//! from the filesystem instead, which a SIGKILL leaves as it was: the content objects on the
//! receiver's disk right after it is killed, before it restarts (nothing moves in between).
//! The test then asserts that
//! - every line written before the kill names an object on disk at the kill (a logged
//!   reception was committed);
//! - no line written after the restart names one (a completed file is never received again),
//!   and no version has two lines;
//! - the objects at the end are exactly those logged or on disk at the kill, one per file (every
//!   file was received, and nothing else was).
//!
//! Only the files committed in the gap go unlogged; they are counted and printed.

mod common;

use common::process::call;

use std::collections::HashSet;
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

/// The versions whose content objects are on `s`'s disk (the objects' names).
fn versions_on_disk(s: &Server) -> HashSet<String> {
    let dir = s.dir.join("files").join("content").join(s.domain().replace(':', "_")).join("objects").join("files");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|shard| std::fs::read_dir(shard.path()).into_iter().flatten().flatten())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Each reception the receiver logged, over all its runs: (offset of the line in the log,
/// file, version).
fn receptions(log: &Path) -> Vec<(usize, String, String)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let field = |line: &str, name: &str| {
        line.split(&format!(" {name}=")).nth(1).and_then(|s| s.split_whitespace().next()).map(str::to_owned)
    };
    let mut out = Vec::new();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if line.contains("received file content") {
            let (file, version) = (field(line, "file"), field(line, "version"));
            out.push((at, file.unwrap_or_else(|| panic!("{line}")), version.unwrap_or_else(|| panic!("{line}"))));
        }
        at += line.len();
    }
    out
}

/// The length of the log at `path`.
fn log_len(path: &Path) -> usize {
    std::fs::metadata(path).map(|m| m.len() as usize).unwrap_or(0)
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

/// alice's and bob's servers, each with its instance, started: alice's files token, her files and
/// sharings token, bob's files token. `bob_env`: settings of bob's beyond the shared ones.
struct Pair {
    alice: Server,
    bob: Server,
    ta: String,
    ts: String,
    tb: String,
}

async fn pair(root: &Path, alice_env: Vec<(&'static str, String)>, bob_env: Vec<(&'static str, String)>) -> Pair {
    let mut alice = Server::new("alice", root.join("a"), alice_env);
    let mut bob = Server::new("bob", root.join("b"), bob_env);
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
    Pair { alice, bob, ta, ts, tb }
}

/// A directory `name` in `parent` on `domain`: its id.
async fn mkdir(domain: &str, token: &str, parent: &str, name: &str) -> String {
    let path = format!("/files/{parent}?Type=directory&Name={name}");
    call(domain, reqwest::Method::POST, &path, token, None).await["data"]["id"].as_str().unwrap().to_owned()
}

/// alice shares her directory `dir` ("Media") with bob, read-write (`ts`: her sharings token);
/// bob accepts. The sharing's id.
async fn share_media(alice: &Server, ts: &str, bob: &Server, dir: &str) -> String {
    let body = json!({"data": {"type": "io.cozy.sharings", "attributes": {"description": "holiday notes", "rules": [
        {"title": "Media", "doctype": "io.cozy.files", "values": [dir], "add": "sync", "update": "sync", "remove": "sync"}]},
        "relationships": {"recipients": {"data": [{"instance": format!("http://{}", bob.domain())}]}}}});
    let created = call(&alice.domain(), reqwest::Method::POST, "/sharings/", ts, Some(body)).await;
    let sid = created["data"]["id"].as_str().unwrap().to_owned();
    let links = alice.cli(&["sharings", "invitations", &alice.domain(), &sid]);
    let link = links.split_whitespace().find(|w| w.starts_with("http")).unwrap().to_owned();
    let recipient = TestInstance { domain: bob.domain(), port: bob.port, client: browser() };
    answer_invitation(&link, &recipient, "accept").await;
    sid
}

/// alice's and bob's servers (`bob_env` as for [`pair`]), alice's folder "Media" holding one
/// file `name` (`size` bytes of pattern `seed`) shared with bob, and the file on bob: the pair,
/// alice's file id, her folder's id, the file's MD5, and its path on bob.
async fn one_shared_file(
    root: &Path,
    bob_env: Vec<(&'static str, String)>,
    name: &str,
    seed: u64,
    size: usize,
) -> (Pair, String, String, String, String) {
    let p = pair(root, vec![], bob_env).await;
    let base = Bytes::from(hearth::files::conformance::pattern(MIB, seed));
    let dir = mkdir(&p.alice.domain(), &p.ta, "io.cozy.files.root-dir", "Media").await;
    let file = upload(&p.alice.domain(), &p.ta, &dir, name, &base, seed + 2, size).await;
    let md5 = md5_of(&base, seed + 2, size);
    share_media(&p.alice, &p.ts, &p.bob, &dir).await;
    let shared = format!("/Shared with me/Media/{name}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while download(&p.bob.domain(), &p.tb, &shared).await != (200, md5.clone()) {
        assert!(Instant::now() < deadline, "{name} never reached bob");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (p, file, dir, md5, shared)
}

/// Moves alice's file `file` to `dir`.
async fn move_file(p: &Pair, file: &str, dir: &str) {
    let attrs = json!({"data": {"type": "io.cozy.files", "attributes": {"dir_id": dir}}});
    call(&p.alice.domain(), reqwest::Method::PATCH, &format!("/files/{file}"), &p.ta, Some(attrs)).await;
}

/// One file shared with bob, whose server runs with `fault` set (a test knob of
/// `sharing::receive`), then moved out of the folder by alice: once bob has its dissociated
/// copy, the pair and bob's log.
async fn moved_out_with_a_fault(
    root: &Path,
    fault: &'static str,
    name: &str,
    seed: u64,
    size: usize,
) -> (Pair, String) {
    let (p, file, _, md5, shared) = one_shared_file(root, vec![(fault, "1".to_owned())], name, seed, size).await;
    move_file(&p, &file, "io.cozy.files.root-dir").await;
    wait_for_the_copy(&p, &shared, name, &md5).await;
    let log = std::fs::read_to_string(p.bob.log_path()).unwrap();
    (p, log)
}

/// Waits until bob's `shared` is gone and his trash holds `name` with the bytes of `md5`.
async fn wait_for_the_copy(p: &Pair, shared: &str, name: &str, md5: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let gone = download(&p.bob.domain(), &p.tb, shared).await.0 == 404;
        let copy = download(&p.bob.domain(), &p.tb, &format!("/.cozy_trash/{name}")).await;
        if gone && copy.0 == 200 && copy.1 == md5 {
            break;
        }
        assert!(Instant::now() < deadline, "bob has no copy of {name} (shared one gone: {gone}, copy: {copy:?})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_share_survives_sigkill_of_either_side_during_a_large_file_without_resending_completed_files() {
    let root = tempfile::tempdir().unwrap();
    let fs = vec![("HEARTH_FILES__BACKEND", "fs".to_owned())];
    let Pair { mut alice, mut bob, ta, ts, tb } = pair(root.path(), fs.clone(), fs).await;
    let base = Bytes::from(hearth::files::conformance::pattern(MIB, 3));
    let dir = mkdir(&alice.domain(), &ta, "io.cozy.files.root-dir", "Media").await;
    let sub = mkdir(&alice.domain(), &ta, &dir, "sub").await;
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

    share_media(&alice, &ts, &bob, &dir).await;

    let big = "/Shared with me/Media/sub/big.bin";
    let mut kills = 0;
    // Of bob's kill: the versions on its disk, and the length of its log.
    let mut at_kill = None;
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
        if victim == "bob" {
            // Dead: what it committed is on disk, and what it logged is in the log.
            at_kill = Some((versions_on_disk(server), log_len(&server.log_path())));
        }
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
    let (committed, killed_at) = at_kill.expect("bob was killed");
    let lines = receptions(&bob.log_path());
    let (before, after): (Vec<_>, Vec<_>) = lines.iter().partition(|(at, _, _)| *at < killed_at);
    let logged_before: HashSet<&String> = before.iter().map(|(_, _, v)| v).collect();
    for (_, file, version) in &before {
        assert!(committed.contains(version), "{file} ({version}) was logged before the kill, and not on disk");
    }
    for (_, file, version) in &after {
        assert!(!committed.contains(version), "{file} ({version}) was completed before the kill, and received again");
    }
    let mut logged = HashSet::new();
    for (_, file, version) in &lines {
        assert!(logged.insert(version.clone()), "{file} ({version}) was received twice: {lines:?}");
    }
    let unlogged = committed.iter().filter(|v| !logged_before.contains(v)).count();
    println!(
        "kills: {kills}, receptions logged: {} ({} before the kill), committed at the kill: {}, of which unlogged: \
         {unlogged}",
        lines.len(),
        before.len(),
        committed.len()
    );
    let received: HashSet<String> = logged.union(&committed).cloned().collect();
    assert_eq!(
        received.len(),
        expected.len(),
        "every file received once: {lines:?}, committed at the kill {committed:?}"
    );
    assert_eq!(versions_on_disk(&bob), received, "bob's objects are the files received");
}

/// A kill between the write of a received removal and what follows it: the member keeps a
/// dissociated copy of a file the owner moved out of the folder (`files::shared`, "Leaving
/// keeps a copy"). The owner sees the removal's revision on the member after the restart and
/// never sends it again, so the copy comes from the member's journal of follow-ups, replayed
/// at its start (`sharing::receive::replay_follow_ups`). bob aborts right after the write
/// (`HEARTH_TEST_ABORT_AFTER_RECEIVED_REMOVAL`): SIGABRT, as sudden as SIGKILL there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_written_just_before_a_kill_still_leaves_the_members_copy() {
    let root = tempfile::tempdir().unwrap();
    let abort = (hearth::sharing::receive::ABORT_AFTER_REMOVAL, "1".to_owned());
    let (mut p, file, _, md5, shared) = one_shared_file(root.path(), vec![abort], "f.bin", 5, 20_000).await;

    // Alice moves f.bin out of the folder: bob writes the removal, and dies before its copy.
    move_file(&p, &file, "io.cozy.files.root-dir").await;
    let status = p.bob.wait_exit(Duration::from_secs(60)).expect("bob aborts on the removal");
    assert!(!status.success(), "{status:?}");
    p.bob.extra_env.clear();
    p.bob.start().await;
    // The removal is written: the file is gone from the shared folder, and bob keeps a copy.
    wait_for_the_copy(&p, &shared, "f.bin", &md5).await;
    let log = std::fs::read_to_string(p.bob.log_path()).unwrap();
    assert!(log.contains("replayed the follow-ups of a received batch"), "{log}");
}

/// Follow-ups that fail while the member runs (a busy store, a full disk since freed) are
/// retried without waiting for a restart (`sharing::receive::retry_follow_ups`): the owner
/// never sends the removal again, so without the retry bob would have no copy until his next
/// start. bob's first follow-ups of a removal fail once, before they run
/// (`HEARTH_TEST_FAIL_RECEIVED_FOLLOW_UPS_ONCE`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_ups_that_fail_are_retried_while_the_member_runs() {
    let root = tempfile::tempdir().unwrap();
    // Alice moves g.bin out: bob writes the removal, and its follow-ups fail.
    let fail = hearth::sharing::receive::FAIL_FOLLOW_UPS_ONCE;
    let (p, log) = moved_out_with_a_fault(root.path(), fail, "g.bin", 6, 30_000).await;
    assert_eq!(p.bob.runs, 1, "bob was not restarted");
    assert!(log.contains("the follow-ups of a received batch failed: retried later"), "{log}");
    assert!(log.contains("replayed the follow-ups of a received batch"), "{log}");
}

/// A batch of files that comes while the member's files cannot be opened (a CouchDB that does
/// not answer while their index catches up, a disk error) is answered 503 and sent again: it
/// was written without them, its removal without the dissociated copy, and the owner never
/// sent it again. bob's files cannot be opened for the first batch holding a removal, once
/// (`HEARTH_TEST_FAIL_FILES_FOR_A_RECEIVED_REMOVAL_ONCE`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_files_that_comes_while_they_cannot_be_opened_is_sent_again() {
    let root = tempfile::tempdir().unwrap();
    let fail = hearth::sharing::receive::FAIL_FILES_FOR_A_REMOVAL_ONCE;
    let (_p, log) = moved_out_with_a_fault(root.path(), fail, "k.bin", 12, 20_000).await;
    assert!(log.contains("could not be opened: answered 503"), "{log}");
}

/// A retry of follow-ups runs while the member serves: a batch of the same sharing arriving
/// between its judgement (a removal) and its follow-ups (the copy, and the removal from the
/// shared tree) must not be undone by it. alice moves the file out, bob's follow-ups fail
/// once, and while the retry waits between the two (`HEARTH_TEST_SLOW_REPLAY_MS`), alice moves
/// the file back in. Without a guard, the retry removed the file that came back, and the
/// removal reached alice: her file ended in her trash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_follow_ups_does_not_remove_a_file_that_came_back_meanwhile() {
    let root = tempfile::tempdir().unwrap();
    let fail = (hearth::sharing::receive::FAIL_FOLLOW_UPS_ONCE, "1".to_owned());
    let slow = (hearth::sharing::receive::SLOW_REPLAY_MS, "2000".to_owned());
    let (p, file, dir, md5, shared) = one_shared_file(root.path(), vec![fail, slow], "h.bin", 9, 25_000).await;

    // Out, then back in while bob's retry of the removal's follow-ups waits.
    move_file(&p, &file, "io.cozy.files.root-dir").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(p.bob.log_path()).unwrap().contains("the follow-ups of a received batch failed") {
        assert!(Instant::now() < deadline, "bob's follow-ups never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    move_file(&p, &file, &dir).await;

    // Once the retry ran and the move back reached bob, both have the file in the folder.
    let (alice, bob) = (p.alice.domain(), p.bob.domain());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(p.bob.log_path()).unwrap();
        let theirs = download(&alice, &p.ta, "/Media/h.bin").await;
        let mine = download(&bob, &p.tb, &shared).await;
        if log.contains("replayed the follow-ups of a received batch")
            && theirs == (200, md5.clone())
            && mine == (200, md5.clone())
        {
            break;
        }
        assert!(Instant::now() < deadline, "alice's h.bin: {theirs:?}, bob's: {mine:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And it stays so once everything settled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(download(&alice, &p.ta, "/Media/h.bin").await, (200, md5.clone()));
    assert_eq!(download(&bob, &p.tb, &shared).await, (200, md5));
}
