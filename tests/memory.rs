//! Memory stays bounded for anonymous callers: a `hearth serve` process (a child, so its
//! resident memory is its own, read from `/proc/<pid>/status`) takes a flood of large
//! unauthenticated requests, the kinds that once took a server past 10 GiB: `PUT /sharings/<new
//! id>` of ~10 MB (one rule with 800,000 values, owner `https://ownerN.example`), declared or
//! streamed, and `POST /sharings/<id>/answer` with a 30 MB array; then small notices under ids
//! their owner did not issue. Every one gets a 4xx, none a 5xx, and the server's peak resident
//! memory (`VmHWM`) ends less than [`BOUND_MIB`] above its resident memory before the flood.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hearth::sharing::SharingId;
use serde_json::json;

/// How far above its starting resident memory the server's peak may go, in MiB. Each of the
/// 8 requests in flight holds at most 64 KiB of body; the rest is allocator and runtime slack.
const BOUND_MIB: f64 = 32.0;
/// Requests in flight at once.
const CONCURRENCY: usize = 8;

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_anonymous_requests_leaves_the_servers_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let domain = format!("bob.localhost:{port}");
    let env = |cmd: &mut Command| {
        cmd.env("HEARTH_DATA_DIR", dir.path())
            .env("HEARTH_LISTEN", format!("127.0.0.1:{port}"))
            .env("HEARTH_FEDERATION__ALLOW_PRIVATE_ADDRESSES", "true")
            .env("HEARTH_FEDERATION__ALLOW_HTTP", "true")
            .env("HEARTH_LOG", "warn");
    };
    let mut add = Command::new(env!("CARGO_BIN_EXE_hearth"));
    env(&mut add);
    let out = add.args(["instances", "add", &domain, "--passphrase", "pb"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut serve = Command::new(env!("CARGO_BIN_EXE_hearth"));
    env(&mut serve);
    let server = Serve(serve.arg("serve").stdin(Stdio::null()).stdout(Stdio::null()).spawn().unwrap());
    let pid = server.0.id();
    let client = common::browser();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client.get(format!("http://{domain}/status")).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "hearth serve did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Warm up the paths the flood takes, so the baseline holds what they need anyway.
    for _ in 0..5 {
        client.put(format!("http://{domain}/sharings/{}", "0".repeat(32))).json(&json!({})).send().await.unwrap();
    }
    let (before, _) = memory_mib(pid);

    // The issue's request: ~10 MB, one rule with 800,000 values.
    let values: Vec<String> = (0..800_000).map(|i| format!("{i:x}")).collect();
    let huge_put = |n: usize| {
        bytes::Bytes::from(
            json!({"data": {"type": "io.cozy.sharings", "attributes": {
                "rules": [{"title": "r", "doctype": "io.cozy.contacts", "values": values}],
                "members": [{"status": "owner", "instance": format!("https://owner{n}.example")}, {"status": "pending"}]}}})
            .to_string(),
        )
    };
    let put_body = huge_put(0);
    assert!(put_body.len() > 6_000_000, "{} bytes", put_body.len());
    let answer_body = bytes::Bytes::from(format!("[{}1]", "1,".repeat(15 * 1024 * 1024)));
    let mut requests = Vec::new();
    for n in 0..64 {
        let id = SharingId::derived(&format!("https://owner{n}.example"), "n");
        let url = format!("http://{domain}/sharings/{id}");
        let body = match n % 4 {
            // Declared length.
            0 | 1 => reqwest::Body::from(put_body.clone()),
            // Streamed, no length.
            2 => {
                let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
                    put_body.chunks(256 * 1024).map(|c| Ok(put_body.slice_ref(c))).collect();
                reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
            }
            _ => reqwest::Body::from(answer_body.clone()),
        };
        let req = if n % 4 == 3 { client.post(format!("{url}/answer")) } else { client.put(url) };
        requests.push(req.header("Content-Type", "application/json").body(body));
    }
    // Small notices under ids that do not derive from the owner they name.
    for n in 0..200 {
        let id = SharingId::derived("https://alice.example", &n.to_string());
        let notice = json!({"data": {"type": "io.cozy.sharings", "attributes": {"id_nonce": "x",
            "members": [{"status": "owner", "instance": format!("https://owner{n}.example")}]},
            "meta": {"request_token": "t"}}});
        requests.push(client.put(format!("http://{domain}/sharings/{id}")).json(&notice));
    }
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
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut statuses: Vec<(usize, u16)> = futures_util::stream::iter(requests.into_iter().enumerate())
        .map(|(i, r)| async move { (i, r.send().await.map(|resp| resp.status().as_u16()).unwrap_or(0)) })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    statuses.sort();
    let statuses: Vec<u16> = statuses.into_iter().map(|(_, s)| s).collect();
    sampler.abort();
    let (after, hwm) = memory_mib(pid);
    let sampled = *peak.lock().unwrap();
    println!(
        "hearth serve RSS: {before:.1} MiB before, sampled peak {sampled:.1} MiB, VmHWM {hwm:.1} MiB, {after:.1} MiB after"
    );
    let large = &statuses[..64];
    assert!(large.iter().all(|s| *s == 413), "every large body gets 413: {large:?}");
    assert!(statuses[64..].iter().all(|s| *s == 403), "{:?}", &statuses[64..]);
    assert!(hwm - before < BOUND_MIB, "peak {hwm:.1} MiB, {before:.1} MiB before: over {BOUND_MIB} MiB more");
    // Nothing was stored: the server still answers, and holds no request.
    let resp = client.get(format!("http://{domain}/status")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

/// Resets `VmHWM` to the current resident memory (`/proc/<pid>/clear_refs`, proc(5)), so the
/// next peak is one request's own.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("clear_refs");
}

/// Bounds for a token holder's requests, in MiB above the resident memory before each.
const BULK_BOUND_MIB: f64 = 96.0;
const FEED_BOUND_MIB: f64 = 32.0;
const GETS_BOUND_MIB: f64 = 400.0;

/// A token holder's requests against a `hearth serve` child: a 30 MB `_bulk_docs` of 10 M
/// empty documents gets 413 `max_bulk_docs_count_exceeded` without being parsed into
/// documents (its peak stays within [`BULK_BOUND_MIB`], about three times the body); `_changes`
/// and `_all_docs` with `include_docs` over 20,000 documents of ~1 KB (~22 MB of answer) stay
/// within [`FEED_BOUND_MIB`] since they are written a page at a time; four parallel GETs of a 30
/// MB document stay within [`GETS_BOUND_MIB`] (each holds the document about three times).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_holders_large_requests_cost_a_small_multiple_of_their_size() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let domain = format!("alice.localhost:{port}");
    let env = |cmd: &mut Command| {
        cmd.env("HEARTH_DATA_DIR", dir.path())
            .env("HEARTH_LISTEN", format!("127.0.0.1:{port}"))
            .env("HEARTH_MAX_DOCUMENT_SIZE", "40000000")
            .env("HEARTH_MAX_HTTP_REQUEST_SIZE", "41943040")
            .env("HEARTH_LOG", "warn");
    };
    let mut add = Command::new(env!("CARGO_BIN_EXE_hearth"));
    env(&mut add);
    let out = add.args(["instances", "add", &domain, "--passphrase", "pa"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut tok = Command::new(env!("CARGO_BIN_EXE_hearth"));
    env(&mut tok);
    let out = tok.args(["instances", "token", &domain, "--scope", "io.cozy.notes"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_hearth"));
    env(&mut serve);
    let server = Serve(serve.arg("serve").stdin(Stdio::null()).stdout(Stdio::null()).spawn().unwrap());
    let pid = server.0.id();
    let client = common::browser();
    let base = format!("http://{domain}/data/io.cozy.notes");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client.get(format!("http://{domain}/status")).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "hearth serve did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let post = |path: &str, body: bytes::Bytes| {
        client
            .post(format!("{base}/{path}"))
            .bearer_auth(&token)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    let text = "x".repeat(1000);
    for start in (0..20_000).step_by(2_000) {
        let docs: Vec<_> = (start..start + 2_000).map(|i| json!({"_id": format!("d{i:05}"), "text": text})).collect();
        let resp = post("_bulk_docs", json!({ "docs": docs }).to_string().into()).await.unwrap();
        assert_eq!(resp.status(), 201);
    }
    let mut report = Vec::new();
    let mut measure = |what: &str, before: f64, pid: u32, bound: f64| {
        let (_, hwm) = memory_mib(pid);
        report.push(format!("{what}: {:.1} MiB over {before:.1} MiB", hwm - before));
        assert!(hwm - before < bound, "{what}: peak {hwm:.1} MiB, {before:.1} MiB before: over {bound} MiB more");
    };

    // 10 M empty documents, 30 MB.
    let huge = bytes::Bytes::from(format!("{{\"docs\":[{}{{}}]}}", "{},".repeat(10_000_000 - 1)));
    reset_peak(pid);
    let (before, _) = memory_mib(pid);
    let resp = post("_bulk_docs", huge).await.unwrap();
    assert_eq!(resp.status(), 413);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "max_bulk_docs_count_exceeded", "{v}");
    measure("_bulk_docs of 10 M documents", before, pid, BULK_BOUND_MIB);

    for path in ["_changes?include_docs=true", "_all_docs?include_docs=true"] {
        reset_peak(pid);
        let (before, _) = memory_mib(pid);
        let resp = client.get(format!("{base}/{path}")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let answer = resp.bytes().await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&answer).expect("a complete answer");
        let rows = v.get("results").or(v.get("rows")).and_then(|r| r.as_array()).map_or(0, Vec::len);
        assert_eq!(rows, 20_000, "{path}");
        measure(path, before, pid, FEED_BOUND_MIB);
    }

    let big = json!({ "_id": "big", "text": "y".repeat(30_000_000) }).to_string();
    let resp = client
        .put(format!("{base}/big"))
        .bearer_auth(&token)
        .header("Content-Type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    tokio::time::sleep(Duration::from_millis(200)).await;
    reset_peak(pid);
    let (before, _) = memory_mib(pid);
    let gets = (0..4).map(|_| {
        let req = client.get(format!("{base}/big")).bearer_auth(&token);
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.bytes().await.unwrap().len()
        }
    });
    let sizes = futures_util::future::join_all(gets).await;
    assert!(sizes.iter().all(|s| *s > 30_000_000), "{sizes:?}");
    measure("4 parallel GETs of a 30 MB document", before, pid, GETS_BOUND_MIB);
    println!("hearth serve peak RSS growth: {}", report.join("; "));
}

/// The variables of a running process, from `/proc/<pid>/environ`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn environment(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("/proc/PID/environ");
    raw.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect()
}

/// `hearth serve` limits glibc's malloc arenas (threads that each kept what they freed took a
/// sender of 10 KB documents to 132 MiB): the process serving, under the id its parent
/// started, runs with `MALLOC_ARENA_MAX=2`, and a value set by whoever starts it is kept.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test]
async fn the_server_runs_with_few_malloc_arenas_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    for d in ["a", "b"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
    }
    let mut server = common::process::ServerProcess::new("alice", dir.path().join("a"), Vec::new());
    server.start().await;
    let env = environment(server.pid().expect("running"));
    assert!(env.contains(&"MALLOC_ARENA_MAX=2".to_string()), "{env:?}");
    server.kill();
    let mut told =
        common::process::ServerProcess::new("bob", dir.path().join("b"), vec![("MALLOC_ARENA_MAX", "1".into())]);
    told.start().await;
    let env = environment(told.pid().expect("running"));
    assert!(env.contains(&"MALLOC_ARENA_MAX=1".to_string()) && !env.contains(&"MALLOC_ARENA_MAX=2".to_string()));
}
