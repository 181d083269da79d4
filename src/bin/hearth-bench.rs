//! `hearth-bench`: measures what matters for sharing, and compares with a reference run in the
//! same invocation (machines are noisy; ratios are what to read):
//! 1. the SQLite store: replicated writes (`new_edits=false`, 500 per transaction) and
//!    interactive writes, in documents per second;
//! 2. an initial sync of N documents between two hearth instances over real HTTP (sharing
//!    accepted, replication until the recipient holds every document);
//! 3. the reference: PouchDB Server's own replicator (`POST /_replicate`) copying the same N
//!    documents between two of its databases, when `pouchdb-server` is installed
//!    (`tests/node`), and the ratio between the two;
//! 4. many conflicts: `--branches N` (default 20,000) conflicting branches of one document
//!    pushed into the SQLite store in batches of 5,000 (`new_edits=false`), the time of each
//!    batch and the ratio of the last to the first (the reference): it must stay near 1, since
//!    merging costs the size of the path, not of the tree;
//! 5. the peak resident memory of this process.
//!
//! Next to each of hearth's rates, the CPU time this process spent per document (all threads,
//! user and system, from `/proc/self/stat`): other processes on a busy machine disturb it far
//! less than wall-clock rates, so it is what to compare between two builds.
//!
//! Usage: `cargo run --release --bin hearth-bench -- [--docs N] [--branches N] [--pouchdb-server PATH]`.
//!
//! `hearth-bench files [--large-mb N] [--small N] [--small-kb N] [--runs N] [--dir PATH]`
//! measures file content instead (see [`files`]): a real `hearth serve` (the `hearth` binary
//! next to this one: `cargo build --release --bins` first) takes uploads and serves downloads
//! of one large file (1 GB by default, best of `--runs`, default 2) and of N small ones (1,000
//! of 16 KiB), compared with `cp` of the same bytes on the same disk (best of as many runs),
//! with the CPU time of the server and of this client, and the server's peak resident memory.
//!
//! `hearth-bench servers [--docs 20000,100000] [--sizes-kb 1,10] [--rates 50,500] [--seconds S]
//! [--json]` measures what users see (see [`servers`]): for each document size and count, two
//! separate `hearth serve` processes (the `hearth` binary next to this one), N documents of
//! about that size written to the sender through `/data`, a sharing created and accepted
//! through the real flow (invitation link, discovery, the recipient's login and acceptance
//! page), timed from the acceptance until the recipient holds every document; next to it, in
//! the same run, the SQLite store's own replicated-write rate for the same documents and
//! PouchDB Server's replicator copying them; at the first size and count, the propagation
//! latency of single writes at each rate (p50, p99, max: from the write's request on the sender
//! to the change on the recipient's realtime stream) for `--seconds` each; the peak resident
//! memory of each server; the ratio of the per-document cost at the largest count to the
//! smallest. `--json` prints all of it as one JSON object. With `HEARTH_BENCH_LOG=FILTER`
//! (`HEARTH_LOG` syntax, e.g. `warn,hearth::sync=debug`) the servers log at that level and
//! their data directories, with each one's `serve.log`, are kept (their path is printed): the
//! replication steps' timings, to profile a run.
//!
//! `hearth-bench realtime [--docs N] [--stalled N]` measures `GET /realtime/events` (see
//! [`realtime`]): the write rate of N documents (default 20,000, in batches of 100) with one
//! reading subscriber and S stalled ones (default 50, which never read), against the same
//! writes with no subscriber (the reference); how fast the reader gets every change; and this
//! process's resident memory while the stalled subscribers are connected and once the server
//! dropped them.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hearth::instance::{Domain, NewInstance};
use hearth::sharing::{service, SharingId};
use hearth::store::sqlite::SqliteStore;
use hearth::store::{Body, DocId, DocWrite, Doctype, Store};
use hearth::{Application, Config};
use hearth_replicator::rev::Rev;
use serde_json::{json, Value};

struct Args {
    docs: usize,
    branches: usize,
    pouchdb_server: Option<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args { docs: 20_000, branches: 20_000, pouchdb_server: None };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--docs" => a.docs = it.next().context("--docs N")?.parse()?,
            "--branches" => a.branches = it.next().context("--branches N")?.parse()?,
            "--pouchdb-server" => a.pouchdb_server = Some(it.next().context("--pouchdb-server PATH")?),
            other => bail!("unknown argument {other}"),
        }
    }
    if a.pouchdb_server.is_none() {
        let default =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/node_modules/.bin/pouchdb-server");
        if default.exists() {
            a.pouchdb_server = Some(default.display().to_string());
        }
    }
    Ok(a)
}

fn body(i: usize) -> serde_json::Map<String, Value> {
    json!({"list_id": "bench", "n": i, "title": format!("note {i}"), "text": "lorem ipsum ".repeat(20)})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// CPU time used by this process so far (all threads, user and system).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields follow the command name, which may hold spaces: count from its closing ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // `utime` and `stime` (fields 14 and 15 of proc(5)), in clock ticks of 1/100 s on Linux.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// The start of a measured phase.
struct Measure {
    wall: Instant,
    cpu: Option<Duration>,
}

impl Measure {
    fn start() -> Measure {
        Measure { wall: Instant::now(), cpu: cpu_time() }
    }

    /// Documents per second, and microseconds of CPU per document, since the start.
    fn done(&self, n: usize) -> (f64, Option<f64>) {
        let cpu = cpu_time().zip(self.cpu).map(|(now, then)| (now - then).as_secs_f64() * 1e6 / n as f64);
        (rate(n, self.wall.elapsed()), cpu)
    }
}

fn line(what: &str, (rate, cpu): (f64, Option<f64>)) {
    let cpu = cpu.map_or(String::new(), |c| format!("   {c:>8.0} µs CPU/doc"));
    println!("{what:<45}{rate:>10.0} docs/s{cpu}");
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

type Rate = (f64, Option<f64>);

async fn store_writes(n: usize) -> anyhow::Result<(Rate, Rate)> {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(&dir.path().join("bench.sqlite"), 1000)?;
    let t = Doctype::parse("io.cozy.bench").map_err(anyhow::Error::msg)?;
    let started = Measure::start();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let docs = chunk
            .iter()
            .map(|i| DocWrite {
                id: DocId::parse(&format!("{i:032x}")).unwrap_or_else(|_| DocId::generate()),
                rev: None,
                revisions: Some(vec![Rev::new(2, format!("{i:x}b")), Rev::new(1, format!("{i:x}a"))]),
                deleted: false,
                body: Body::from_map(&body(*i)),
            })
            .collect();
        store.bulk_docs(&t, docs, false).await?;
    }
    let replicated = started.done(n);
    let m = n.min(2000);
    let started = Measure::start();
    for i in 0..m {
        let w = DocWrite {
            id: DocId::generate(),
            rev: None,
            revisions: None,
            deleted: false,
            body: Body::from_map(&body(i)),
        };
        store.bulk_docs(&t, vec![w], true).await?;
    }
    Ok((replicated, started.done(m)))
}

/// `n` conflicting branches (`2-<i>` on a shared `1-root`) of one document, written in batches
/// of 5,000 replicated writes; returns each batch's duration.
async fn many_conflicts(n: usize) -> anyhow::Result<Vec<Duration>> {
    const BATCH: usize = 5_000;
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(&dir.path().join("conflicts.sqlite"), 1000)?;
    let t = Doctype::parse("io.cozy.bench").map_err(anyhow::Error::msg)?;
    let id = DocId::parse("conflicted").map_err(anyhow::Error::msg)?;
    let mut times = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(BATCH) {
        let docs = chunk
            .iter()
            .map(|i| DocWrite {
                id: id.clone(),
                rev: None,
                revisions: Some(vec![Rev::new(2, format!("{i:032x}")), Rev::new(1, "root")]),
                deleted: false,
                body: Body::from_map(&body(*i)),
            })
            .collect();
        let started = Instant::now();
        let refused = store.bulk_docs(&t, docs, false).await?;
        times.push(started.elapsed());
        if !refused.is_empty() {
            bail!("the store refused {} branches: {:?}", refused.len(), refused.first());
        }
    }
    let leaves = store.doc_leaves(&t, std::slice::from_ref(&id)).await?;
    let count = leaves.get(&id).map_or(0, Vec::len);
    if count != n {
        bail!("the document has {count} leaves, {n} expected");
    }
    Ok(times)
}

/// Two instances on one server, a sharing of `n` documents selected by a field, accepted
/// through the service layer; returns docs/s from acceptance to the last document received.
async fn hearth_initial_sync(n: usize) -> anyhow::Result<Rate> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::for_tests(dir.path());
    config.replication.batch_size = 500;
    let app = Application::build(config).await?;
    let port = app.port();
    let registry = app.registry();
    let svc = app.sharing();
    tokio::spawn(app.run_until_stopped());
    let (a, b) = (format!("alice.localhost:{port}"), format!("bob.localhost:{port}"));
    for d in [&a, &b] {
        registry.add(NewInstance {
            domain: Domain::parse(d).map_err(anyhow::Error::msg)?,
            passphrase: None,
            email: None,
            public_name: None,
        })?;
    }
    let alice = registry.get(&Domain::parse(&a).map_err(anyhow::Error::msg)?)?.context("alice")?;
    let bob = registry.get(&Domain::parse(&b).map_err(anyhow::Error::msg)?)?.context("bob")?;
    let t = Doctype::parse("io.cozy.notes").map_err(anyhow::Error::msg)?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let docs = chunk
            .iter()
            .map(|i| DocWrite {
                id: DocId::generate(),
                rev: None,
                revisions: None,
                deleted: false,
                body: Body::from_map(&body(*i)),
            })
            .collect();
        alice.store.bulk_docs(&t, docs, true).await?;
    }
    let scope = hearth::auth::PermissionSet::parse("io.cozy.notes").map_err(anyhow::Error::msg)?;
    let request = json!({"data": {"type": "io.cozy.sharings", "attributes": {"description": "bench", "rules": [
        {"title": "bench", "doctype": "io.cozy.notes", "selector": "list_id", "values": ["bench"], "add": "sync", "update": "sync", "remove": "sync"}]},
        "relationships": {"recipients": {"data": [{"instance": format!("http://{b}")}]}}}});
    let s = service::create(&svc, &alice, &scope, &request).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let id = SharingId::parse(s.id()).map_err(anyhow::Error::msg)?;
    let state = service::member_state(&alice, &s, 1).context("state")?;
    service::discover(&svc, &alice, &id, &state, &format!("http://{b}")).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let started = Measure::start();
    let digest = service::pending_digest(&svc, &bob, &id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    service::accept(&svc, &bob, &id, &state, &digest).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let deadline = started.wall + Duration::from_secs(600);
    while bob.store.db_info(&t).await?.doc_count < n as u64 {
        if Instant::now() > deadline {
            bail!("the initial sync did not finish in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(started.done(n))
}

/// PouchDB Server replicating `n` documents between two of its in-memory databases.
async fn pouchdb_server_replication(
    path: &str,
    n: usize,
    body: &(dyn Fn(usize) -> serde_json::Map<String, Value> + Sync),
) -> anyhow::Result<f64> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = tempfile::tempdir()?;
    let mut child = tokio::process::Command::new(path)
        .args(["-m", "-p", &port.to_string(), "-o", "127.0.0.1", "-n"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("failed to start pouchdb-server")?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let base = format!("http://127.0.0.1:{port}");
    let up = Instant::now();
    while http.get(&base).send().await.is_err() {
        if up.elapsed() > Duration::from_secs(30) {
            bail!("pouchdb-server did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for db in ["src", "tgt"] {
        http.put(format!("{base}/{db}")).send().await?;
    }
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let docs: Vec<Value> = chunk
            .iter()
            .map(|i| {
                let mut d = body(*i);
                d.insert("_id".into(), json!(format!("{i:032x}")));
                Value::Object(d)
            })
            .collect();
        http.post(format!("{base}/src/_bulk_docs")).json(&json!({"docs": docs})).send().await?.error_for_status()?;
    }
    let started = Instant::now();
    let resp = http
        .post(format!("{base}/_replicate"))
        .json(&json!({"source": format!("{base}/src"), "target": format!("{base}/tgt")}))
        .timeout(Duration::from_secs(900))
        .send()
        .await?;
    let elapsed = started.elapsed();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    let count = http.get(format!("{base}/tgt")).send().await?.json::<Value>().await?["doc_count"].as_u64().unwrap_or(0);
    child.kill().await.ok();
    if count != n as u64 {
        bail!("pouchdb-server replicated {count} of {n} documents: {v}");
    }
    Ok(rate(n, elapsed))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("files") {
        return files::run(std::env::args().skip(2).collect()).await;
    }
    if std::env::args().nth(1).as_deref() == Some("servers") {
        return servers::run(std::env::args().skip(2).collect()).await;
    }
    if std::env::args().nth(1).as_deref() == Some("folder") {
        return folder::run(std::env::args().skip(2).collect()).await;
    }
    if std::env::args().nth(1).as_deref() == Some("realtime") {
        return realtime::run(std::env::args().skip(2).collect()).await;
    }
    let a = args()?;
    let n = a.docs;
    println!("hearth-bench: {n} documents of ~{} bytes", serde_json::to_vec(&body(0))?.len());
    let (replicated, interactive) = store_writes(n).await?;
    line("store: replicated writes (500/transaction)", replicated);
    line("store: interactive writes (1/transaction)", interactive);
    let times = many_conflicts(a.branches).await?;
    for (i, d) in times.iter().enumerate() {
        println!("store: conflicting branches, batch {:>2} of 5,000 {:>10.3} s", i + 1, d.as_secs_f64());
    }
    if let (Some(first), Some(last)) = (times.first(), times.last()) {
        println!("ratio last batch / first batch (reference)   {:>10.2}x", last.as_secs_f64() / first.as_secs_f64());
    }
    let sync = hearth_initial_sync(n).await?;
    line("hearth → hearth initial sync over HTTP", sync);
    let hearth = sync.0;
    match a.pouchdb_server {
        Some(path) => match pouchdb_server_replication(&path, n, &body).await {
            Ok(reference) => {
                println!("PouchDB Server replicator (reference)        {reference:>10.0} docs/s");
                println!("ratio hearth / PouchDB Server                {:>10.1}x", hearth / reference);
            }
            Err(e) => println!("PouchDB Server reference failed: {e:#}"),
        },
        None => println!("PouchDB Server not installed (npm ci in tests/node): no reference run"),
    }
    if let Some(mib) = peak_rss_mib() {
        println!("peak resident memory of this process         {mib:>10.1} MiB");
    }
    Ok(())
}

/// File content throughput against `cp`, and the server's memory.
///
/// Everything lives under one directory (`--dir`, default a temporary directory under the
/// system's): the source files, `cp`'s copies, the server's data directory and the downloads,
/// so every figure is on the same disk; it is all removed at the end. Source files are written
/// (and fsynced) first, so every reader, `cp` included, finds them in the page cache.
///
/// What each side does, so the ratios compare like with like:
/// * `cp SRC DST` (GNU cp: `copy_file_range`, one copy inside the kernel), and the same followed
///   by an fsync of the copy: hearth fsyncs every upload before acknowledging it, so that is the
///   reference for uploads; plain `cp` (no fsync) for downloads, whose client does not fsync;
/// * MD5 of the large file on one core: hearth hashes every upload (`md5sum`, `Content-MD5`),
///   and one MD5 cannot be spread over cores, so it bounds an upload whatever the disk;
/// * upload: `POST /files/…` with `Content-Length` and `Content-MD5` (computed before timing),
///   the body read from the file by a thread of this client in 1 MiB blocks; the server
///   hashes, writes and fsyncs;
/// * download: `GET /files/download/…` by a plain blocking HTTP/1.1 client on a thread of its
///   own, the body written to a file in 1 MiB reads as it arrives, not fsynced, not hashed (the
///   MD5 check of every byte runs after the timing, and a mismatch fails the bench);
/// * the same for the small files, one request at a time (each read or written whole), against
///   `cp -r` of their directory;
/// * CPU seconds (user + system, `/proc/PID/stat`) of the server and of this client in each
///   phase: on a busy machine they say what the work costs better than wall-clock rates;
/// * the server's resident memory before, and its peak (`VmHWM`) after each phase, in MiB.
///
/// Large-file figures and their references are the best of `--runs` (the machine is shared),
/// each run timing the references then hearth back to back (interleaved), with the source in
/// the page cache (warm reads, for `cp` as for the client); the ratios of the medians follow.
/// The upload's reference is `cp` + fsync: the same durability as hearth's (one fsync of the
/// file before the answer; hearth also fsyncs the directory, which costs one journal commit).
mod files {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context};
    use base64::Engine;
    use bytes::Bytes;
    use futures_util::StreamExt;
    use md5::Digest;

    const MIB: usize = 1024 * 1024;

    struct Args {
        large_mb: usize,
        small: usize,
        small_kb: usize,
        runs: usize,
        dir: Option<PathBuf>,
    }

    fn args(raw: Vec<String>) -> anyhow::Result<Args> {
        let mut a = Args { large_mb: 1024, small: 1000, small_kb: 16, runs: 2, dir: None };
        let mut it = raw.into_iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| it.next().with_context(|| format!("{name} N"));
            match arg.as_str() {
                "--large-mb" => a.large_mb = value("--large-mb")?.parse()?,
                "--small" => a.small = value("--small")?.parse()?,
                "--small-kb" => a.small_kb = value("--small-kb")?.parse()?,
                "--runs" => a.runs = value("--runs")?.parse::<usize>()?.max(1),
                "--dir" => a.dir = Some(PathBuf::from(value("--dir")?)),
                other => bail!("unknown argument {other}"),
            }
        }
        Ok(a)
    }

    struct Serve(Child);

    impl Drop for Serve {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// `VmRSS` and `VmHWM` of a process, in MiB.
    fn memory_mib(pid: u32) -> anyhow::Result<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> anyhow::Result<f64> {
            let kib: f64 = status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse().ok())
                .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
            Ok(kib / 1024.0)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// CPU time (user + system, all threads) of a process so far; `/proc/PID/stat` counts in
    /// ticks of 1/100 s on Linux.
    fn cpu_of(pid: &str) -> Duration {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return Duration::ZERO;
        };
        let fields: Vec<&str> = stat.rsplit_once(')').map_or(vec![], |(_, f)| f.split_whitespace().collect());
        let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        Duration::from_millis((tick(11) + tick(12)) * 10)
    }

    /// CPU time of the server and of this client, at a moment.
    #[derive(Clone, Copy)]
    struct Cpu {
        server: Duration,
        client: Duration,
    }

    impl Cpu {
        fn now(server_pid: u32) -> Cpu {
            Cpu { server: cpu_of(&server_pid.to_string()), client: cpu_of("self") }
        }

        fn since(self, then: Cpu) -> Cpu {
            Cpu { server: self.server.saturating_sub(then.server), client: self.client.saturating_sub(then.client) }
        }
    }

    /// One timed phase: its duration and the CPU it took.
    #[derive(Clone, Copy)]
    struct Timed {
        wall: Duration,
        cpu: Option<Cpu>,
    }

    impl Timed {
        fn best(a: Option<Timed>, b: Timed) -> Option<Timed> {
            Some(match a {
                Some(a) if a.wall <= b.wall => a,
                _ => b,
            })
        }
    }

    /// Writes `len` pseudo-random bytes to `path`, returning their MD5.
    fn write_source(path: &Path, len: usize, seed: u64) -> anyhow::Result<[u8; 16]> {
        use std::io::Write;
        let base = hearth::files::conformance::pattern(MIB.min(len.max(1)), seed);
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        let mut h = md5::Md5::new();
        let mut left = len;
        let mut i = 0u64;
        while left > 0 {
            let mut chunk = base[..left.min(base.len())].to_vec();
            let tag = i.to_le_bytes();
            let n = tag.len().min(chunk.len());
            chunk[..n].copy_from_slice(&tag[..n]);
            h.update(&chunk);
            f.write_all(&chunk)?;
            left -= chunk.len();
            i += 1;
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(h.finalize().into())
    }

    fn md5_of(path: &Path) -> anyhow::Result<[u8; 16]> {
        use std::io::Read;
        let mut f = std::fs::File::open(path)?;
        let mut h = md5::Md5::new();
        let mut buf = vec![0; MIB];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(h.finalize().into());
            }
            h.update(&buf[..n]);
        }
    }

    fn mb_s(bytes: usize, d: Duration) -> f64 {
        bytes as f64 / 1e6 / d.as_secs_f64()
    }

    /// `cp SRC DST`, then (with `fsync`) an fsync of the copy; its duration.
    fn cp(src: &Path, dst: &Path, recursive: bool, fsync: bool) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut cmd = Command::new("cp");
        if recursive {
            cmd.arg("-r");
        }
        let status = cmd.arg(src).arg(dst).status().context("cp")?;
        if !status.success() {
            bail!("cp failed: {status}");
        }
        if fsync {
            std::fs::File::open(dst)?.sync_all()?;
        }
        Ok(started.elapsed())
    }

    struct Server {
        domain: String,
        token: String,
        client: reqwest::Client,
        port: u16,
    }

    impl Server {
        fn url(&self, path: &str) -> String {
            format!("http://127.0.0.1:{}{path}", self.port)
        }

        /// Uploads a file: whole in one buffer when small, else streamed in 1 MiB blocks read by a
        /// thread of its own (one read and one copy per block, as curl does).
        async fn upload(&self, name: &str, path: &Path, md5: &[u8; 16]) -> anyhow::Result<String> {
            let len = std::fs::metadata(path)?.len();
            let body = if len <= MIB as u64 {
                reqwest::Body::from(std::fs::read(path)?)
            } else {
                reqwest::Body::wrap_stream(blocks_of(path.to_owned()))
            };
            let resp = self
                .client
                .post(self.url(&format!("/files/io.cozy.files.root-dir?Type=file&Name={name}")))
                .header("Host", &self.domain)
                .bearer_auth(&self.token)
                .header("Content-Length", len)
                .header("Content-MD5", base64::engine::general_purpose::STANDARD.encode(md5))
                .body(body)
                .send()
                .await?;
            let status = resp.status();
            let v: serde_json::Value = resp.json().await.unwrap_or_default();
            if status.as_u16() != 201 {
                bail!("upload of {name}: {status} {v}");
            }
            v["data"]["id"].as_str().map(str::to_owned).context("no id in the upload's answer")
        }

        /// Downloads a large file into `to` as a lean client would (curl does the same): one
        /// blocking thread, a plain HTTP/1.1 `GET` on its own connection, the body read from the
        /// socket in 1 MiB reads and each written to the file as it comes (one copy into the
        /// page cache, no fsync, like `cp`). The bench's async HTTP client spent three times the
        /// server's CPU on the same bytes, so it measured itself more than hearth.
        fn download_large(&self, id: &str, to: &Path) -> anyhow::Result<()> {
            use std::io::{Read, Write};
            let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
            write!(
                conn,
                "GET /files/download/{id} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
                self.domain, self.token
            )?;
            let mut buf = vec![0u8; MIB];
            let mut got = 0;
            let head_end = loop {
                let n = conn.read(&mut buf[got..])?;
                if n == 0 {
                    bail!("download of {id}: the connection closed in the head");
                }
                got += n;
                if let Some(i) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                if got == buf.len() {
                    bail!("download of {id}: head too large");
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                bail!("download of {id}: {}", head.lines().next().unwrap_or(""));
            }
            let len: u64 = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .context("no Content-Length")?;
            let mut file = std::fs::File::create(to)?;
            file.write_all(&buf[head_end..got])?;
            let mut left = len - (got - head_end) as u64;
            while left > 0 {
                let n = conn.read(&mut buf)?;
                if n == 0 {
                    bail!("download of {id}: cut with {left} bytes to go");
                }
                file.write_all(&buf[..n])?;
                left = left.saturating_sub(n as u64);
            }
            Ok(())
        }

        /// Downloads a file into `to`: whole when small, else each chunk handed as it arrives to a
        /// thread that writes it (one copy into the page cache, no fsync, like `cp`).
        async fn download(&self, id: &str, to: &Path) -> anyhow::Result<()> {
            let resp = self
                .client
                .get(self.url(&format!("/files/download/{id}")))
                .header("Host", &self.domain)
                .bearer_auth(&self.token)
                .send()
                .await?;
            if !resp.status().is_success() {
                bail!("download of {id}: {}", resp.status());
            }
            if resp.content_length().is_some_and(|l| l <= MIB as u64) {
                std::fs::write(to, resp.bytes().await?)?;
                return Ok(());
            }
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
            let mut file = std::fs::File::create(to)?;
            let writer = std::thread::spawn(move || -> std::io::Result<()> {
                use std::io::Write;
                while let Some(chunk) = rx.blocking_recv() {
                    file.write_all(&chunk)?;
                }
                Ok(())
            });
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                if tx.send(chunk?).await.is_err() {
                    break;
                }
            }
            drop(tx);
            writer.join().map_err(|_| anyhow::anyhow!("the writing thread panicked"))??;
            Ok(())
        }

        /// Trashes then destroys a file, so the next run's upload finds room.
        async fn remove(&self, id: &str) -> anyhow::Result<()> {
            for path in [format!("/files/{id}"), format!("/files/trash/{id}")] {
                let resp = self
                    .client
                    .delete(self.url(&path))
                    .header("Host", &self.domain)
                    .bearer_auth(&self.token)
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    bail!("DELETE {path}: {}", resp.status());
                }
            }
            Ok(())
        }
    }

    /// A file's bytes in blocks of 1 MiB, read by a thread of its own, a few blocks ahead.
    fn blocks_of(path: PathBuf) -> futures_util::stream::BoxStream<'static, std::io::Result<Bytes>> {
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
        std::thread::spawn(move || {
            use std::io::Read;
            let mut file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            loop {
                let mut block = Vec::with_capacity(MIB);
                match (&mut file).take(MIB as u64).read_to_end(&mut block) {
                    Ok(0) => return,
                    Ok(_) => {
                        if tx.blocking_send(Ok(Bytes::from(block))).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        });
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) }).boxed()
    }

    pub async fn run(raw: Vec<String>) -> anyhow::Result<()> {
        let a = args(raw)?;
        let root = match &a.dir {
            Some(d) => tempfile::tempdir_in(d)?,
            None => tempfile::tempdir()?,
        };
        let outcome = bench(&a, root.path()).await;
        // Disks are small: nothing of the run stays.
        root.close()?;
        outcome
    }

    async fn bench(a: &Args, root: &Path) -> anyhow::Result<()> {
        let hearth = std::env::current_exe()?.with_file_name("hearth");
        if !hearth.exists() {
            bail!("{} is missing: cargo build --release --bins", hearth.display());
        }
        let large = a.large_mb * MIB;
        let small_len = a.small_kb * 1024;
        println!(
            "hearth-bench files: one file of {} MiB, {} files of {} KiB, under {}",
            a.large_mb,
            a.small,
            a.small_kb,
            root.display()
        );
        let src = root.join("src");
        std::fs::create_dir_all(src.join("small"))?;
        let large_src = src.join("large.bin");
        let large_md5 = write_source(&large_src, large, 1)?;
        let mut small_md5 = Vec::with_capacity(a.small);
        for i in 0..a.small {
            small_md5.push(write_source(&src.join("small").join(format!("f{i}")), small_len, 100 + i as u64)?);
        }

        // The server.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let domain = format!("bench.localhost:{port}");
        let data = root.join("data");
        let env = |cmd: &mut Command| {
            cmd.env("HEARTH_DATA_DIR", &data)
                .env("HEARTH_LISTEN", format!("127.0.0.1:{port}"))
                .env("HEARTH_FILES__BACKEND", "fs")
                .env("HEARTH_FILES__QUOTA_BYTES", ((large + a.small * small_len) * 2 + MIB).to_string())
                .env("HEARTH_LOG", "warn");
        };
        let cli = |args: &[&str]| -> anyhow::Result<String> {
            let mut cmd = Command::new(&hearth);
            env(&mut cmd);
            let out = cmd.args(args).stdin(Stdio::null()).output()?;
            if !out.status.success() {
                bail!("hearth {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(String::from_utf8(out.stdout)?.trim().to_owned())
        };
        cli(&["instances", "add", &domain, "--passphrase", "bench"])?;
        let token = cli(&["instances", "token", &domain, "--scope", "io.cozy.files"])?;
        let mut cmd = Command::new(&hearth);
        env(&mut cmd);
        let serve = Serve(cmd.arg("serve").stdin(Stdio::null()).stdout(Stdio::null()).spawn()?);
        let pid = serve.0.id();
        let server = Server { domain, token, client: reqwest::Client::builder().no_proxy().build()?, port };
        let started = Instant::now();
        while !server.client.get(server.url("/status")).send().await.is_ok_and(|r| r.status().is_success()) {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("hearth serve did not start");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (rss_start, _) = memory_mib(pid)?;

        // The large file: each run times the references, then hearth, back to back.
        let (mut cp_large, mut cp_large_sync, mut md5_large) = (None, None, None);
        let (mut up_large, mut down_large) = (None, None);
        let (mut hwm_up, mut hwm_down) = (0f64, 0f64);
        let timed = |wall: Duration, cpu: Option<Cpu>| Timed { wall, cpu };
        // Every run's wall time of: cp, cp + fsync, upload, download (for the medians).
        let mut walls: [Vec<Duration>; 4] = Default::default();
        for run in 0..a.runs {
            let copy = root.join("cp-large.bin");
            let w = cp(&large_src, &copy, false, false)?;
            walls[0].push(w);
            cp_large = Timed::best(cp_large, timed(w, None));
            std::fs::remove_file(&copy)?;
            let w = cp(&large_src, &copy, false, true)?;
            walls[1].push(w);
            cp_large_sync = Timed::best(cp_large_sync, timed(w, None));
            std::fs::remove_file(&copy)?;
            // What MD5 alone costs, with the MD5 code hearth uses (this binary links the same).
            let (t, c) = (Instant::now(), Cpu::now(pid));
            md5_of(&large_src)?;
            md5_large = Timed::best(md5_large, timed(t.elapsed(), Some(Cpu::now(pid).since(c))));

            let (t, c) = (Instant::now(), Cpu::now(pid));
            let large_id = server.upload(&format!("large-{run}.bin"), &large_src, &large_md5).await?;
            walls[2].push(t.elapsed());
            up_large = Timed::best(up_large, timed(t.elapsed(), Some(Cpu::now(pid).since(c))));
            hwm_up = hwm_up.max(memory_mib(pid)?.1);
            let dl = root.join("download.bin");
            let (t, c) = (Instant::now(), Cpu::now(pid));
            std::thread::scope(|sc| sc.spawn(|| server.download_large(&large_id, &dl)).join())
                .map_err(|_| anyhow::anyhow!("the download thread panicked"))??;
            walls[3].push(t.elapsed());
            down_large = Timed::best(down_large, timed(t.elapsed(), Some(Cpu::now(pid).since(c))));
            hwm_down = hwm_down.max(memory_mib(pid)?.1);
            if md5_of(&dl)? != large_md5 {
                bail!("the large file came back different");
            }
            std::fs::remove_file(&dl)?;
            server.remove(&large_id).await?;
        }
        let [Some(cp_large), Some(cp_large_sync), Some(md5_large), Some(up_large), Some(down_large)] =
            [cp_large, cp_large_sync, md5_large, up_large, down_large]
        else {
            bail!("no run");
        };

        let cp_small = cp(&src.join("small"), &root.join("cp-small"), true, false)?;
        std::fs::remove_dir_all(root.join("cp-small"))?;
        let mut ids = Vec::with_capacity(a.small);
        let (t, c) = (Instant::now(), Cpu::now(pid));
        for (i, md5) in small_md5.iter().enumerate() {
            ids.push(server.upload(&format!("f{i}"), &src.join("small").join(format!("f{i}")), md5).await?);
        }
        let up_small = timed(t.elapsed(), Some(Cpu::now(pid).since(c)));
        let dl_dir = root.join("download-small");
        std::fs::create_dir_all(&dl_dir)?;
        let (t, c) = (Instant::now(), Cpu::now(pid));
        for (i, id) in ids.iter().enumerate() {
            server.download(id, &dl_dir.join(format!("f{i}"))).await?;
        }
        let down_small = timed(t.elapsed(), Some(Cpu::now(pid).since(c)));
        for (i, md5) in small_md5.iter().enumerate() {
            if md5_of(&dl_dir.join(format!("f{i}")))? != *md5 {
                bail!("small file {i} came back different");
            }
        }
        let (rss_end, hwm_end) = memory_mib(pid)?;
        drop(serve);

        let small_bytes = a.small * small_len;
        println!("{:<52}{:>10} {:>9}   CPU s: server, client", "", "", "");
        let row = |what: &str, bytes: usize, t: Timed| {
            let cpu = t.cpu.map_or(String::new(), |c| {
                format!("   {:>5.2} {:>5.2}", c.server.as_secs_f64(), c.client.as_secs_f64())
            });
            println!("{what:<52}{:>10.1} MB/s {:>7.2} s{cpu}", mb_s(bytes, t.wall), t.wall.as_secs_f64());
        };
        let runs = if a.runs > 1 { format!(", best of {}", a.runs) } else { String::new() };
        row(&format!("cp, large file (reference{runs})"), large, cp_large);
        row("cp + fsync, large file (reference)", large, cp_large_sync);
        row("md5 of the large file, one core (reference)", large, md5_large);
        row("hearth upload, large file (md5 + write + fsync)", large, up_large);
        row("hearth download, large file (no fsync)", large, down_large);
        let ratio = |what: &str, t: Timed, reference: Timed| {
            println!("{what:<52}{:>10.2}x", reference.wall.as_secs_f64() / t.wall.as_secs_f64());
        };
        ratio("ratio upload / (cp + fsync)", up_large, cp_large_sync);
        ratio("ratio upload / md5 alone", up_large, md5_large);
        ratio("ratio download / cp", down_large, cp_large);
        for w in &mut walls {
            w.sort();
        }
        let median = |i: usize| walls[i][walls[i].len() / 2].as_secs_f64();
        println!(
            "{:<52}{:>10.2}x {:>9.2}x",
            format!("medians of {} runs: ratio upload, download", a.runs),
            median(1) / median(2),
            median(0) / median(3)
        );
        row(&format!("cp -r, {} small files (reference)", a.small), small_bytes, timed(cp_small, None));
        row("hearth upload, small files, one at a time", small_bytes, up_small);
        row("hearth download, small files, one at a time", small_bytes, down_small);
        println!(
            "{:<52}{:>10.0} files/s {:>7.0} files/s",
            "hearth small files: uploads, downloads",
            a.small as f64 / up_small.wall.as_secs_f64(),
            a.small as f64 / down_small.wall.as_secs_f64()
        );
        ratio("ratio small uploads / cp -r", up_small, timed(cp_small, None));
        ratio("ratio small downloads / cp -r", down_small, timed(cp_small, None));
        println!("hearth serve resident memory at start              {rss_start:>10.1} MiB");
        println!("hearth serve peak after the large uploads          {hwm_up:>10.1} MiB");
        println!("hearth serve peak after the large downloads        {hwm_down:>10.1} MiB");
        println!("hearth serve peak at the end, and RSS              {hwm_end:>10.1} MiB {rss_end:>7.1} MiB");
        Ok(())
    }
}

/// Sharing a folder between two `hearth serve` processes (issue 13, item 6), against a local
/// copy of the same bytes.
///
/// A folder of `--files` files (default 1,000) totalling `--total-mb` MiB (default 1,024), one
/// of them `--large-mb` MiB (default 300), spread over ten directories, is written under
/// `--dir` (default a temporary directory), then:
/// * the references, each run three times (before the servers start, with the source folder
///   in the page cache: warm reads), best and median printed, the best taken for the ratios:
///   - `cp -r` of the folder: the copy lands in the page cache only, nothing is durable;
///   - a durable local copy: `cp -r`, then an fsync of every file copied and of every
///     directory, one after the other, as a program that acknowledges each file only once it
///     is on disk would (hearth's receiver fsyncs each file and its directory before it
///     answers). This is the fair reference: the same bytes, the same disk, the same
///     durability; a whole-machine `sync` is not used, since on a shared machine it also
///     flushes whatever other processes wrote;
/// * the folder is uploaded to alice's server (timed apart), shared with bob, on a server of
///   its own; from bob's acceptance to every file's content present on bob (alice's status
///   shows nothing pending for bob, metadata nor content; bob's shows no content missing) is
///   the sharing time, in MB/s and as a ratio of the references;
/// * every file is then downloaded from bob and its MD5 compared with the source's;
/// * the peak resident memory (`VmHWM`) of each server.
mod folder {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context};
    use base64::Engine;
    use futures_util::StreamExt;
    use hearth::instance::Domain;
    use hearth::sharing::{service, SharingId};
    use md5::Digest;
    use serde_json::{json, Value};

    const MIB: usize = 1024 * 1024;
    const DIRS: usize = 10;

    struct Args {
        files: usize,
        total_mb: usize,
        large_mb: usize,
        dir: Option<PathBuf>,
    }

    fn args(raw: Vec<String>) -> anyhow::Result<Args> {
        let mut a = Args { files: 1000, total_mb: 1024, large_mb: 300, dir: None };
        let mut it = raw.into_iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| it.next().with_context(|| format!("{name} N"));
            match arg.as_str() {
                "--files" => a.files = value("--files")?.parse()?,
                "--total-mb" => a.total_mb = value("--total-mb")?.parse()?,
                "--large-mb" => a.large_mb = value("--large-mb")?.parse()?,
                "--dir" => a.dir = Some(PathBuf::from(value("--dir")?)),
                other => bail!("unknown argument {other}"),
            }
        }
        if a.files < 2 || a.large_mb >= a.total_mb {
            bail!("--files must be at least 2 and --large-mb below --total-mb");
        }
        Ok(a)
    }

    struct Serve(Child);

    impl Drop for Serve {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn hwm_mib(pid: u32) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse().ok())
            .context("no VmHWM")?;
        Ok(kib / 1024.0)
    }

    fn write_source(path: &Path, len: usize, seed: u64) -> anyhow::Result<String> {
        use std::io::Write;
        let base = hearth::files::conformance::pattern(MIB.min(len.max(1)), seed);
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        let mut h = md5::Md5::new();
        let (mut left, mut i) = (len, 0u64);
        while left > 0 {
            let mut chunk = base[..left.min(base.len())].to_vec();
            let tag = [i.to_le_bytes(), seed.to_le_bytes()].concat();
            let n = tag.len().min(chunk.len());
            chunk[..n].copy_from_slice(&tag[..n]);
            h.update(&chunk);
            f.write_all(&chunk)?;
            left -= chunk.len();
            i += 1;
        }
        f.flush()?;
        Ok(base64::engine::general_purpose::STANDARD.encode(h.finalize()))
    }

    struct Server {
        name: &'static str,
        data: PathBuf,
        port: u16,
        hearth: PathBuf,
    }

    impl Server {
        fn domain(&self) -> String {
            format!("{}.localhost:{}", self.name, self.port)
        }

        fn env(&self, cmd: &mut Command) {
            cmd.env("HEARTH_DATA_DIR", &self.data)
                .env("HEARTH_LISTEN", format!("127.0.0.1:{}", self.port))
                .env("HEARTH_FILES__BACKEND", "fs")
                .env("HEARTH_FILES__QUOTA_BYTES", (8u64 << 30).to_string())
                .env("HEARTH_FEDERATION__ALLOW_PRIVATE_ADDRESSES", "true")
                .env("HEARTH_FEDERATION__ALLOW_HTTP", "true")
                .env("HEARTH_LOG", "warn");
        }

        fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
            let mut cmd = Command::new(&self.hearth);
            self.env(&mut cmd);
            let out = cmd.args(args).stdin(Stdio::null()).output()?;
            if !out.status.success() {
                bail!("hearth {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(String::from_utf8(out.stdout)?.trim().to_owned())
        }

        async fn serve(&self, client: &reqwest::Client) -> anyhow::Result<Serve> {
            let mut cmd = Command::new(&self.hearth);
            self.env(&mut cmd);
            let serve = Serve(cmd.arg("serve").stdin(Stdio::null()).stdout(Stdio::null()).spawn()?);
            let started = Instant::now();
            while !client
                .get(format!("http://127.0.0.1:{}/status", self.port))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                if started.elapsed() > Duration::from_secs(30) {
                    bail!("hearth serve ({}) did not start", self.name);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(serve)
        }

        fn req(
            &self,
            client: &reqwest::Client,
            method: reqwest::Method,
            path: &str,
            token: &str,
        ) -> reqwest::RequestBuilder {
            client
                .request(method, format!("http://127.0.0.1:{}{path}", self.port))
                .header("Host", self.domain())
                .bearer_auth(token)
        }

        async fn json(
            &self,
            client: &reqwest::Client,
            method: reqwest::Method,
            path: &str,
            token: &str,
            body: Option<Value>,
        ) -> anyhow::Result<Value> {
            let mut r = self.req(client, method, path, token);
            if let Some(b) = body {
                r = r.json(&b);
            }
            let resp = r.send().await?;
            let status = resp.status();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                bail!("{path}: {status} {v}");
            }
            Ok(v)
        }
    }

    fn enc(s: &str) -> String {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    }

    /// Runs of each reference copy.
    const REFERENCE_RUNS: usize = 3;

    /// `cp -r SRC DST`; with `durable`, then an fsync of every file under `DST`, and of every
    /// directory once its entries are (see the module docs). Its duration.
    fn copy(src: &Path, dst: &Path, durable: bool) -> anyhow::Result<Duration> {
        fn fsync_tree(dir: &Path) -> std::io::Result<()> {
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    fsync_tree(&entry.path())?;
                } else {
                    std::fs::File::open(entry.path())?.sync_all()?;
                }
            }
            std::fs::File::open(dir)?.sync_all()
        }
        let t = Instant::now();
        if !Command::new("cp").arg("-r").arg(src).arg(dst).status()?.success() {
            bail!("cp -r failed");
        }
        if durable {
            fsync_tree(dst)?;
            if let Some(parent) = dst.parent() {
                std::fs::File::open(parent)?.sync_all()?;
            }
        }
        Ok(t.elapsed())
    }

    fn mb_s(bytes: u64, d: Duration) -> f64 {
        bytes as f64 / 1e6 / d.as_secs_f64()
    }

    pub async fn run(raw: Vec<String>) -> anyhow::Result<()> {
        let a = args(raw)?;
        let root = match &a.dir {
            Some(d) => tempfile::tempdir_in(d)?,
            None => tempfile::tempdir()?,
        };
        let outcome = bench(&a, root.path()).await;
        root.close()?;
        outcome
    }

    async fn bench(a: &Args, root: &Path) -> anyhow::Result<()> {
        let hearth = std::env::current_exe()?.with_file_name("hearth");
        if !hearth.exists() {
            bail!("{} is missing: cargo build --release --bins", hearth.display());
        }
        let large = a.large_mb * MIB;
        let each = (a.total_mb * MIB - large) / (a.files - 1);
        println!(
            "hearth-bench folder: {} files in {DIRS} directories, one of {} MiB, the others of {} KiB, under {}",
            a.files,
            a.large_mb,
            each / 1024,
            root.display()
        );
        // The source folder: (relative path, md5).
        let src = root.join("Folder");
        let mut files = Vec::with_capacity(a.files);
        let mut total = 0u64;
        for d in 0..DIRS {
            std::fs::create_dir_all(src.join(format!("d{d}")))?;
        }
        for i in 0..a.files {
            let rel = format!("d{}/f{i}.bin", i % DIRS);
            let len = if i == a.files - 1 { large } else { each };
            files.push((rel.clone(), write_source(&src.join(&rel), len, i as u64)?));
            total += len as u64;
        }
        Command::new("sync").status()?;

        // The references (see the module docs), interleaved.
        let (mut cps, mut durables) = (Vec::new(), Vec::new());
        for _ in 0..REFERENCE_RUNS {
            cps.push(copy(&src, &root.join("copy"), false)?);
            std::fs::remove_dir_all(root.join("copy"))?;
            durables.push(copy(&src, &root.join("copy"), true)?);
            std::fs::remove_dir_all(root.join("copy"))?;
        }
        cps.sort();
        durables.sort();
        let (cp, durable) = (cps[0], durables[0]);

        let free = || std::net::TcpListener::bind("127.0.0.1:0").map(|l| l.local_addr().map(|a| a.port()));
        let alice = Server { name: "alice", data: root.join("alice"), port: free()??, hearth: hearth.clone() };
        let bob = Server { name: "bob", data: root.join("bob"), port: free()??, hearth: hearth.clone() };
        alice.cli(&["instances", "add", &alice.domain(), "--passphrase", "bench"])?;
        bob.cli(&["instances", "add", &bob.domain(), "--passphrase", "bench"])?;
        let ta = alice.cli(&[
            "instances",
            "token",
            &alice.domain(),
            "--scope",
            "io.cozy.files",
            "--scope",
            "io.cozy.sharings",
        ])?;
        let tb =
            bob.cli(&["instances", "token", &bob.domain(), "--scope", "io.cozy.files", "--scope", "io.cozy.sharings"])?;
        let client = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build()?;
        let serve_a = alice.serve(&client).await?;
        let serve_b = bob.serve(&client).await?;
        let post = reqwest::Method::POST;

        // The folder on alice.
        let t = Instant::now();
        let folder = alice
            .json(&client, post.clone(), "/files/io.cozy.files.root-dir?Type=directory&Name=Folder", &ta, None)
            .await?["data"]["id"]
            .as_str()
            .context("folder id")?
            .to_owned();
        let mut dirs = Vec::new();
        for d in 0..DIRS {
            let v = alice
                .json(&client, post.clone(), &format!("/files/{folder}?Type=directory&Name=d{d}"), &ta, None)
                .await?;
            dirs.push(v["data"]["id"].as_str().context("dir id")?.to_owned());
        }
        for (i, (rel, md5)) in files.iter().enumerate() {
            let path = src.join(rel);
            let file = tokio::fs::File::open(&path).await?;
            let len = file.metadata().await?.len();
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024));
            let name = rel.rsplit('/').next().unwrap_or(rel);
            let resp = alice
                .req(&client, post.clone(), &format!("/files/{}?Type=file&Name={name}", dirs[i % DIRS]), &ta)
                .header("Content-Length", len)
                .header("Content-MD5", md5)
                .body(body)
                .send()
                .await?;
            if resp.status().as_u16() != 201 {
                bail!("upload of {rel}: {}", resp.status());
            }
        }
        let upload = t.elapsed();

        // Shared with bob: created on alice, discovered through alice's form, accepted on bob.
        let request = json!({"data": {"type": "io.cozy.sharings", "attributes": {"description": "bench folder", "rules": [
            {"title": "Folder", "doctype": "io.cozy.files", "values": [folder], "add": "sync", "update": "sync", "remove": "sync"}]},
            "relationships": {"recipients": {"data": [{"instance": format!("http://{}", bob.domain())}]}}}});
        let created = alice.json(&client, post.clone(), "/sharings/", &ta, Some(request)).await?;
        let sid = created["data"]["id"].as_str().context("sharing id")?.to_owned();
        let links = alice.cli(&["sharings", "invitations", &alice.domain(), &sid])?;
        let link = links.split_whitespace().find(|w| w.starts_with("http")).context("invitation link")?.to_owned();
        let state = link.split("state=").nth(1).context("state in the link")?.to_owned();
        let discovery = url::Url::parse(&link)?;
        let resp = client
            .post(format!("http://127.0.0.1:{}{}", alice.port, discovery.path()))
            .header("Host", alice.domain())
            .form(&[("state", state.as_str()), ("url", &format!("http://{}", bob.domain()))])
            .send()
            .await?;
        if resp.status().as_u16() != 302 {
            bail!("discovery: {}", resp.status());
        }
        let mut config = hearth::Config::load(None).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.data_dir = bob.data.clone();
        config.federation.allow_http = true;
        config.federation.allow_private_addresses = true;
        let core = hearth::app::Core::open(config)?;
        let bob_inst = core.registry.get(&Domain::parse(&bob.domain()).map_err(anyhow::Error::msg)?)?.context("bob")?;
        let id = SharingId::parse(&sid).map_err(anyhow::Error::msg)?;
        let digest =
            service::pending_digest(&core.sharing, &bob_inst, &id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let t = Instant::now();
        service::accept(&core.sharing, &bob_inst, &id, &state, &digest).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let deadline = t + Duration::from_secs(1800);
        loop {
            let st = alice.json(&client, reqwest::Method::GET, &format!("/sharings/{sid}/status"), &ta, None).await?;
            let m = &st["data"]["attributes"]["members"][1];
            let done = m["replication"]["pending"] == json!(0)
                && m["content"]["files_pending"] == json!(0)
                && m["replication"]["last_seq"].as_u64().is_some_and(|s| s > 0);
            if done {
                let st = bob.json(&client, reqwest::Method::GET, &format!("/sharings/{sid}/status"), &tb, None).await?;
                if st["data"]["attributes"]["content_missing"]["files"] == json!(0) {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("the folder was not shared in 30 minutes: {m}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let share = t.elapsed();
        let (hwm_a, hwm_b) = (hwm_mib(serve_a.0.id())?, hwm_mib(serve_b.0.id())?);

        // Every file on bob, byte for byte.
        for (rel, md5) in &files {
            let path = format!("/Shared with me/Folder/{rel}");
            let resp = bob
                .req(&client, reqwest::Method::GET, &format!("/files/download?Path={}", enc(&path)), &tb)
                .send()
                .await?;
            if !resp.status().is_success() {
                bail!("{path} on bob: {}", resp.status());
            }
            let mut h = md5::Md5::new();
            let mut body = resp.bytes_stream();
            while let Some(c) = body.next().await {
                h.update(&c?);
            }
            if base64::engine::general_purpose::STANDARD.encode(h.finalize()) != *md5 {
                bail!("{path} differs on bob");
            }
        }
        drop((serve_a, serve_b));

        let row = |what: &str, d: Duration| {
            println!("{what:<52}{:>10.1} MB/s {:>9.2} s", mb_s(total, d), d.as_secs_f64());
        };
        let median = |v: &[Duration]| v[v.len() / 2];
        row(&format!("cp -r, page cache only (reference, best of {REFERENCE_RUNS})"), cp);
        row("  its median", median(&cps));
        row(&format!("durable copy: cp -r + fsync of each (best of {REFERENCE_RUNS})"), durable);
        row("  its median", median(&durables));
        row("upload of the folder to alice, one file at a time", upload);
        row("sharing: from bob's acceptance to all content on bob", share);
        println!(
            "{:<52}{:>10.2}x",
            "ratio sharing / durable copy (the target)",
            durable.as_secs_f64() / share.as_secs_f64()
        );
        println!("{:<52}{:>10.2}x", "ratio sharing / cp -r (page cache only)", cp.as_secs_f64() / share.as_secs_f64());
        println!("{:<52}{:>10.1} MiB", "alice's server: peak resident memory", hwm_a);
        println!("{:<52}{:>10.1} MiB", "bob's server: peak resident memory", hwm_b);
        println!("all {} files identical on bob (MD5)", files.len());
        Ok(())
    }
}

/// Realtime events under load; see the crate documentation for what is printed.
mod realtime {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context};
    use futures_util::StreamExt;
    use hearth::instance::{Domain, NewInstance};
    use hearth::store::{Body, DocId, DocWrite, Doctype};
    use hearth::{Application, Config};
    use tokio::io::AsyncWriteExt;

    fn rss_mib() -> f64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .map_or(0.0, |kib: f64| kib / 1024.0)
    }

    async fn write(store: &dyn hearth::store::Store, t: &Doctype, n: usize, tag: &str) -> anyhow::Result<Duration> {
        let started = Instant::now();
        for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
            let docs = chunk
                .iter()
                .map(|i| DocWrite {
                    id: DocId::parse(&format!("{tag}-{i:08}")).unwrap_or_else(|_| DocId::generate()),
                    rev: None,
                    revisions: None,
                    deleted: false,
                    body: Body::from_map(&super::body(*i)),
                })
                .collect();
            store.bulk_docs(t, docs, true).await?;
        }
        Ok(started.elapsed())
    }

    pub async fn run(raw: Vec<String>) -> anyhow::Result<()> {
        let (mut docs, mut stalled) = (20_000usize, 50usize);
        let mut it = raw.into_iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--docs" => docs = it.next().context("--docs N")?.parse()?,
                "--stalled" => stalled = it.next().context("--stalled N")?.parse()?,
                other => bail!("unknown argument {other}"),
            }
        }
        let dir = tempfile::tempdir()?;
        let app = Application::build(Config::for_tests(dir.path())).await?;
        let port = app.port();
        let registry = app.registry();
        tokio::spawn(app.run_until_stopped());
        let domain = format!("alice.localhost:{port}");
        let d = Domain::parse(&domain).map_err(anyhow::Error::msg)?;
        registry.add(NewInstance { domain: d.clone(), passphrase: None, email: None, public_name: None })?;
        let alice = registry.get(&d)?.context("alice")?;
        let t = Doctype::parse("io.cozy.notes").map_err(anyhow::Error::msg)?;
        let scope = hearth::auth::PermissionSet::parse("io.cozy.notes").map_err(anyhow::Error::msg)?;
        let token = alice.keys.issue(hearth::auth::Audience::App, "bench", 3600, Some(&scope), None);
        println!("hearth-bench realtime: {docs} documents, 1 reading and {stalled} stalled subscribers");

        let reference = write(alice.store.as_ref(), &t, docs, "ref").await?;
        let rss_start = rss_mib();

        let mut stalled_sockets = Vec::new();
        for _ in 0..stalled {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_recv_buffer_size(2048)?;
            let mut s = socket.connect(([127, 0, 0, 1], port).into()).await?;
            let req =
                format!("GET /realtime/events HTTP/1.1\r\nHost: {domain}\r\nAuthorization: Bearer {token}\r\n\r\n");
            s.write_all(req.as_bytes()).await?;
            stalled_sockets.push(s);
        }
        let client = reqwest::Client::builder().no_proxy().build()?;
        let resp = client
            .get(format!("http://127.0.0.1:{port}/realtime/events"))
            .header("Host", &domain)
            .bearer_auth(&token)
            .send()
            .await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while alice.realtime_subscribers.load(Ordering::Relaxed) < stalled + 1 {
            if Instant::now() > deadline {
                bail!("the subscribers did not all start");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let reader = tokio::spawn(async move {
            let mut stream = resp.bytes_stream();
            let (mut seen, mut tail) = (0usize, String::new());
            while seen < docs {
                let Some(Ok(chunk)) = stream.next().await else { break };
                tail.push_str(&String::from_utf8_lossy(&chunk));
                seen += tail.matches("event: change\n").count();
                let keep = tail.rfind('\n').map_or(0, |i| i + 1);
                tail.drain(..keep);
            }
            (seen, Instant::now())
        });
        let started = Instant::now();
        let loaded = write(alice.store.as_ref(), &t, docs, "load").await?;
        let rss_loaded = rss_mib();
        let (seen, last) = reader.await?;
        let delivery = last.duration_since(started);
        // A stalled subscriber whose socket buffers took everything is not slow yet; one whose
        // queue stayed full for SLOW_CONSUMER_SECS is gone.
        tokio::time::sleep(Duration::from_secs(hearth::http::realtime::SLOW_CONSUMER_SECS + 2)).await;
        let left = alice.realtime_subscribers.load(Ordering::Relaxed);
        let rss_dropped = rss_mib();
        drop(stalled_sockets);

        let rate = |d: Duration| docs as f64 / d.as_secs_f64();
        println!("writes, no subscriber (reference)            {:>10.0} docs/s", rate(reference));
        println!("writes, 1 reading + {stalled:>4} stalled subscribers {:>10.0} docs/s", rate(loaded));
        println!(
            "ratio with subscribers / reference           {:>10.2}x",
            reference.as_secs_f64() / loaded.as_secs_f64()
        );
        println!(
            "changes delivered to the reader              {seen:>10} of {docs} in {:.2} s",
            delivery.as_secs_f64()
        );
        println!("resident memory before subscribing           {rss_start:>10.1} MiB");
        println!("resident memory after the writes             {rss_loaded:>10.1} MiB");
        println!("subscribers still counted (reader included)  {left:>10} of {}", stalled + 1);
        println!("resident memory after that                   {rss_dropped:>10.1} MiB");
        Ok(())
    }
}

/// What users see: two `hearth serve` processes (the `hearth` binary next to this one), see
/// [`servers::run`].
mod servers {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context};
    use futures_util::StreamExt;
    use hearth::store::sqlite::SqliteStore;
    use hearth::store::{Body, DocId, DocWrite, Doctype, Store};
    use hearth_replicator::rev::Rev;
    use serde_json::{json, Value};

    const DOCTYPE: &str = "io.cozy.notes";
    const PASSPHRASE: &str = "bench-passphrase";

    struct Args {
        docs: Vec<usize>,
        sizes_kb: Vec<usize>,
        rates: Vec<usize>,
        seconds: f64,
        json: bool,
        pouchdb_server: Option<String>,
    }

    fn list(s: &str) -> anyhow::Result<Vec<usize>> {
        s.split(',').map(|x| x.trim().replace('_', "").parse().context("a list of numbers: 1,10")).collect()
    }

    fn args(raw: Vec<String>) -> anyhow::Result<Args> {
        let mut a = Args {
            docs: vec![20_000, 100_000],
            sizes_kb: vec![1, 10],
            rates: vec![50, 500],
            seconds: 5.0,
            json: false,
            pouchdb_server: None,
        };
        let mut it = raw.into_iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| it.next().with_context(|| format!("{name} VALUE"));
            match arg.as_str() {
                "--docs" => a.docs = list(&value("--docs")?)?,
                "--sizes-kb" => a.sizes_kb = list(&value("--sizes-kb")?)?,
                "--rates" => a.rates = list(&value("--rates")?)?,
                "--seconds" => a.seconds = value("--seconds")?.parse()?,
                "--pouchdb-server" => a.pouchdb_server = Some(value("--pouchdb-server")?),
                "--json" => a.json = true,
                other => bail!("unknown argument {other}"),
            }
        }
        if a.pouchdb_server.is_none() {
            let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/node_modules/.bin/pouchdb-server");
            if default.exists() {
                a.pouchdb_server = Some(default.display().to_string());
            }
        }
        Ok(a)
    }

    /// A note of about `size` bytes of JSON.
    pub fn body(i: usize, size: usize) -> serde_json::Map<String, Value> {
        let mut b = json!({"list_id": "bench", "n": i, "title": format!("note {i}"), "text": ""});
        let base = b.to_string().len();
        let words = "lorem ipsum dolor sit amet ";
        let text: String = words.chars().cycle().take(size.saturating_sub(base)).collect();
        b["text"] = json!(text);
        b.as_object().cloned().unwrap_or_default()
    }

    fn doc_id(i: usize) -> String {
        format!("{i:032x}")
    }

    struct Server {
        name: &'static str,
        dir: PathBuf,
        port: u16,
        child: Option<Child>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    impl Server {
        fn new(name: &'static str, root: &Path) -> anyhow::Result<Server> {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            Ok(Server { name, dir: root.join(name), port, child: None })
        }

        fn domain(&self) -> String {
            format!("{}.localhost:{}", self.name, self.port)
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.domain())
        }

        fn command(&self) -> anyhow::Result<Command> {
            let hearth = std::env::current_exe()?.with_file_name("hearth");
            if !hearth.exists() {
                bail!("{} is missing: cargo build --release --bins", hearth.display());
            }
            let mut cmd = Command::new(hearth);
            // `HEARTH_BENCH_LOG` is this program's: a server would refuse it as an unknown key.
            cmd.env_remove("HEARTH_BENCH_LOG")
                .env("HEARTH_DATA_DIR", &self.dir)
                .env("HEARTH_LISTEN", format!("127.0.0.1:{}", self.port))
                .env("HEARTH_FEDERATION__ALLOW_PRIVATE_ADDRESSES", "true")
                .env("HEARTH_FEDERATION__ALLOW_HTTP", "true")
                .env("HEARTH_LOG", std::env::var("HEARTH_BENCH_LOG").unwrap_or_else(|_| "warn".into()));
            Ok(cmd)
        }

        fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
            let out = self.command()?.args(args).stdin(Stdio::null()).output()?;
            if !out.status.success() {
                bail!("hearth {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(String::from_utf8(out.stdout)?.trim().to_owned())
        }

        async fn start(&mut self, http: &reqwest::Client) -> anyhow::Result<()> {
            let log = std::fs::File::create(self.dir.join("serve.log"))?;
            let child = self.command()?.arg("serve").stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn()?;
            self.child = Some(child);
            let started = Instant::now();
            while !http.get(self.url("/status")).send().await.is_ok_and(|r| r.status().is_success()) {
                if started.elapsed() > Duration::from_secs(30) {
                    bail!("{} did not start", self.name);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        }

        /// Peak resident memory (`VmHWM`) of the server process, in MiB.
        fn peak_rss_mib(&self) -> Option<f64> {
            let pid = self.child.as_ref()?.id();
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
        }

        /// CPU time the server process used so far (user and system), in seconds.
        fn cpu_secs(&self) -> Option<f64> {
            let pid = self.child.as_ref()?.id();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        }
    }

    /// A browser's client: `*.localhost` goes to 127.0.0.1, redirects are not followed.
    fn client(servers: &[&Server]) -> anyhow::Result<reqwest::Client> {
        let mut b = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none());
        for s in servers {
            b = b.resolve(&format!("{}.localhost", s.name), std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        }
        Ok(b.build()?)
    }

    /// The cookies a browser keeps for one site (only what the accept flow needs).
    #[derive(Default)]
    struct Jar(HashMap<String, String>);

    impl Jar {
        fn take(&mut self, resp: &reqwest::Response) {
            for v in resp.headers().get_all(reqwest::header::SET_COOKIE) {
                let Ok(v) = v.to_str() else { continue };
                let pair = v.split(';').next().unwrap_or_default();
                if let Some((name, value)) = pair.split_once('=') {
                    self.0.insert(name.trim().to_owned(), value.trim().to_owned());
                }
            }
        }

        fn header(&self) -> String {
            self.0.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
        }
    }

    fn hidden(html: &str, name: &str) -> anyhow::Result<String> {
        let marker = format!("name=\"{name}\" value=\"");
        let start = html.find(&marker).with_context(|| format!("no {name} in the page"))? + marker.len();
        Ok(html[start..].split('"').next().unwrap_or_default().replace("&amp;", "&"))
    }

    fn location(resp: &reqwest::Response) -> anyhow::Result<String> {
        Ok(resp.headers().get("location").context("no redirect")?.to_str()?.to_owned())
    }

    /// What a person does in a browser, up to the acceptance page: opens the invitation,
    /// types their address, logs in. Returns the acceptance form's fields.
    async fn open_invitation(
        http: &reqwest::Client,
        link: &str,
        bob: &Server,
        jar: &mut Jar,
    ) -> anyhow::Result<Vec<(&'static str, String)>> {
        let html = http.get(link).send().await?.text().await?;
        let state = hidden(&html, "state")?;
        let action = link.split('?').next().unwrap_or(link);
        let resp = http
            .post(action)
            .form(&[("state", state.as_str()), ("url", &format!("http://{}", bob.domain()))])
            .send()
            .await?;
        if resp.status() != 302 {
            bail!("discovery: {} {}", resp.status(), resp.text().await?);
        }
        let authorize = location(&resp)?;
        let resp = http.get(&authorize).send().await?;
        jar.take(&resp);
        let login = location(&resp)?;
        let resp = http.get(bob.url(&login)).header("cookie", jar.header()).send().await?;
        jar.take(&resp);
        let redirect = hidden(&resp.text().await?, "redirect")?;
        let resp = http
            .post(bob.url("/auth/login"))
            .header("cookie", jar.header())
            .form(&[("passphrase", PASSPHRASE), ("redirect", &redirect)])
            .send()
            .await?;
        jar.take(&resp);
        let back = location(&resp)?;
        let resp = http.get(bob.url(&back)).header("cookie", jar.header()).send().await?;
        jar.take(&resp);
        let html = resp.text().await?;
        Ok(vec![
            ("sharing_id", hidden(&html, "sharing_id")?),
            ("state", hidden(&html, "state")?),
            ("csrf_token", hidden(&html, "csrf_token")?),
            ("action", "accept".to_owned()),
            ("digest", hidden(&html, "digest")?),
        ])
    }

    async fn call(
        http: &reqwest::Client,
        method: reqwest::Method,
        url: &str,
        token: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let mut r = http.request(method, url).bearer_auth(token);
        if let Some(b) = body {
            r = r.json(b);
        }
        let resp = r.send().await?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{url}: {status} {v}");
        }
        Ok(v)
    }

    async fn doc_count(http: &reqwest::Client, s: &Server, token: &str) -> anyhow::Result<u64> {
        let v = call(http, reqwest::Method::GET, &s.url(&format!("/data/{DOCTYPE}/")), token, None).await?;
        v["doc_count"].as_u64().context("no doc_count")
    }

    /// The figures of one run (one document size and count).
    #[derive(Debug, Default, serde::Serialize)]
    struct Figures {
        docs: usize,
        doc_bytes: usize,
        /// The SQLite store alone, replicated writes (`new_edits=false`, 500 per transaction).
        store_replicated_docs_per_s: f64,
        /// From the recipient's accept to its holding every document.
        sync_docs_per_s: f64,
        sync_secs: f64,
        /// Microseconds of wall time per document synced.
        sync_us_per_doc: f64,
        /// CPU seconds both servers used during the sync, per document (µs).
        sync_cpu_us_per_doc: f64,
        sync_vs_store: f64,
        pouchdb_docs_per_s: Option<f64>,
        sync_vs_pouchdb: Option<f64>,
        /// Propagation of single writes: rate (writes/s) → (p50 ms, p99 ms, max ms, writes).
        propagation: Vec<Propagation>,
        sender_peak_rss_mib: Option<f64>,
        recipient_peak_rss_mib: Option<f64>,
    }

    #[derive(Debug, Default, serde::Serialize)]
    struct Propagation {
        writes_per_s: usize,
        writes: usize,
        p50_ms: f64,
        p99_ms: f64,
        max_ms: f64,
    }

    async fn store_replicated(n: usize, size: usize) -> anyhow::Result<f64> {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(&dir.path().join("bench.sqlite"), 1000)?;
        let t = Doctype::parse(DOCTYPE).map_err(anyhow::Error::msg)?;
        let started = Instant::now();
        for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
            let docs = chunk
                .iter()
                .map(|i| DocWrite {
                    id: DocId::parse(&doc_id(*i)).unwrap_or_else(|_| DocId::generate()),
                    rev: None,
                    revisions: Some(vec![Rev::new(1, format!("{i:032x}"))]),
                    deleted: false,
                    body: Body::from_map(&body(*i, size)),
                })
                .collect();
            store.bulk_docs(&t, docs, false).await?;
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    }

    /// One run: `n` documents of about `size` bytes on alice, shared with bob, accepted, synced;
    /// then single writes at each rate, timed until bob's realtime stream shows them.
    async fn two_servers(n: usize, size: usize, rates: &[usize], seconds: f64, f: &mut Figures) -> anyhow::Result<()> {
        let mut root = tempfile::tempdir()?;
        if std::env::var_os("HEARTH_BENCH_LOG").is_some() {
            root.disable_cleanup(true);
            eprintln!("servers' data and logs kept in {}", root.path().display());
        }
        let mut alice = Server::new("alice", root.path())?;
        let mut bob = Server::new("bob", root.path())?;
        let http = client(&[&alice, &bob])?;
        alice.cli(&["instances", "add", &alice.domain(), "--passphrase", PASSPHRASE])?;
        bob.cli(&["instances", "add", &bob.domain(), "--passphrase", PASSPHRASE])?;
        let token = alice.cli(&["instances", "token", &alice.domain(), "--scope", DOCTYPE])?;
        let bob_token = bob.cli(&["instances", "token", &bob.domain(), "--scope", DOCTYPE])?;
        alice.start(&http).await?;
        bob.start(&http).await?;

        for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
            let docs: Vec<Value> = chunk
                .iter()
                .map(|i| {
                    let mut d = body(*i, size);
                    d.insert("_id".into(), json!(doc_id(*i)));
                    Value::Object(d)
                })
                .collect();
            let url = alice.url(&format!("/data/{DOCTYPE}/_bulk_docs"));
            call(&http, reqwest::Method::POST, &url, &token, Some(&json!({"docs": docs}))).await?;
        }
        let request = json!({"data": {"type": "io.cozy.sharings", "attributes": {"description": "bench", "rules": [
            {"title": "bench", "doctype": DOCTYPE, "selector": "list_id", "values": ["bench"], "add": "sync", "update": "sync", "remove": "sync"}]},
            "relationships": {"recipients": {"data": [{"instance": format!("http://{}", bob.domain())}]}}}});
        let created = call(&http, reqwest::Method::POST, &alice.url("/sharings/"), &token, Some(&request)).await?;
        let sid = created["data"]["id"].as_str().context("no sharing id")?.to_owned();
        let links = alice.cli(&["sharings", "invitations", &alice.domain(), &sid])?;
        let link = links.split_whitespace().find(|w| w.starts_with("http")).context("no invitation link")?.to_owned();
        let mut jar = Jar::default();
        let form = open_invitation(&http, &link, &bob, &mut jar).await?;

        let cpu = alice.cpu_secs().zip(bob.cpu_secs()).map(|(a, b)| a + b);
        let started = Instant::now();
        let resp =
            http.post(bob.url("/auth/authorize/sharing")).header("cookie", jar.header()).form(&form).send().await?;
        if !resp.status().is_success() {
            bail!("accept: {} {}", resp.status(), resp.text().await?);
        }
        let deadline = started + Duration::from_secs(1800);
        while doc_count(&http, &bob, &bob_token).await? < n as u64 {
            if Instant::now() > deadline {
                bail!("the initial sync did not finish in 30 minutes");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu_after = alice.cpu_secs().zip(bob.cpu_secs()).map(|(a, b)| a + b);
        f.sync_secs = secs;
        f.sync_docs_per_s = n as f64 / secs;
        f.sync_us_per_doc = secs * 1e6 / n as f64;
        f.sync_cpu_us_per_doc = cpu.zip(cpu_after).map_or(0.0, |(a, b)| (b - a) * 1e6 / n as f64);

        for &rate in rates {
            let writes = ((rate as f64 * seconds) as usize).max(1);
            f.propagation.push(propagation(&http, &alice, &bob, &token, &bob_token, rate, writes).await?);
        }
        f.sender_peak_rss_mib = alice.peak_rss_mib();
        f.recipient_peak_rss_mib = bob.peak_rss_mib();
        Ok(())
    }

    /// `writes` single-document writes to alice at `rate` per second, each timed from just
    /// before its request to the moment bob's realtime stream shows its revision (ids differ
    /// between the two instances, revisions do not).
    async fn propagation(
        http: &reqwest::Client,
        alice: &Server,
        bob: &Server,
        token: &str,
        bob_token: &str,
        rate: usize,
        writes: usize,
    ) -> anyhow::Result<Propagation> {
        let resp = http.get(bob.url("/realtime/events")).bearer_auth(bob_token).send().await?;
        if !resp.status().is_success() {
            bail!("realtime: {}", resp.status());
        }
        let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let reader = {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut stream = resp.bytes_stream();
                let mut ready = Some(ready_tx);
                let mut buf = String::new();
                while let Some(Ok(chunk)) = stream.next().await {
                    let now = Instant::now();
                    buf.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = buf.find("\n\n") {
                        let frame: String = buf.drain(..end + 2).collect();
                        if frame.starts_with("event: ready") {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        }
                        if !frame.starts_with("event: change") {
                            continue;
                        }
                        let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
                        let Ok(v) = serde_json::from_str::<Value>(data) else { continue };
                        if let (Some(rev), Ok(mut s)) = (v["rev"].as_str(), seen.lock()) {
                            s.entry(rev.to_owned()).or_insert(now);
                        }
                    }
                }
            })
        };
        tokio::time::timeout(Duration::from_secs(10), ready_rx).await.context("no ready event")??;
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let start = Instant::now() + Duration::from_millis(50);
        let mut tasks = Vec::with_capacity(writes);
        for i in 0..writes {
            let at = start + interval.mul_f64(i as f64);
            tokio::time::sleep_until(at.into()).await;
            let url = alice.url(&format!("/data/{DOCTYPE}/p{rate}-{i:08}"));
            let (http, token) = (http.clone(), token.to_owned());
            let doc = body(i, 1024);
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let resp = http.put(url).bearer_auth(token).json(&doc).send().await?;
                let status = resp.status();
                let v: Value = resp.json().await.unwrap_or(Value::Null);
                match v["rev"].as_str() {
                    Some(rev) if status.is_success() => Ok((rev.to_owned(), sent)),
                    _ => bail!("a write failed: {status} {v}"),
                }
            }));
        }
        let mut sent = Vec::with_capacity(writes);
        for t in tasks {
            sent.push(t.await??);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let ms = loop {
            let found: Vec<f64> = {
                let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                sent.iter()
                    .filter_map(|(rev, at)| seen.get(rev).map(|s| s.saturating_duration_since(*at).as_secs_f64() * 1e3))
                    .collect()
            };
            if found.len() == writes {
                break found;
            }
            if Instant::now() > deadline {
                bail!("bob saw {} of {writes} writes within 2 minutes", found.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        reader.abort();
        let mut ms = ms;
        ms.sort_by(f64::total_cmp);
        let pct = |p: f64| ms[((ms.len() as f64 * p).ceil() as usize).clamp(1, ms.len()) - 1];
        Ok(Propagation { writes_per_s: rate, writes, p50_ms: pct(0.50), p99_ms: pct(0.99), max_ms: pct(1.0) })
    }

    /// Runs every (size, count): see the crate documentation.
    pub async fn run(raw: Vec<String>) -> anyhow::Result<()> {
        let a = args(raw)?;
        let mut all = Vec::new();
        for &kb in &a.sizes_kb {
            for &n in &a.docs {
                let size = kb * 1024;
                let mut f =
                    Figures { docs: n, doc_bytes: serde_json::to_vec(&body(0, size))?.len(), ..Figures::default() };
                if !a.json {
                    println!("two servers: {n} documents of {} bytes", f.doc_bytes);
                }
                f.store_replicated_docs_per_s = store_replicated(n, size).await?;
                let rates: &[usize] = if kb == a.sizes_kb[0] && n == a.docs[0] { &a.rates } else { &[] };
                two_servers(n, size, rates, a.seconds, &mut f).await?;
                f.sync_vs_store = f.sync_docs_per_s / f.store_replicated_docs_per_s;
                if let Some(path) = &a.pouchdb_server {
                    let sized = |i: usize| body(i, size);
                    match super::pouchdb_server_replication(path, n, &sized).await {
                        Ok(r) => {
                            f.pouchdb_docs_per_s = Some(r);
                            f.sync_vs_pouchdb = Some(f.sync_docs_per_s / r);
                        }
                        Err(e) => eprintln!("PouchDB Server reference failed: {e:#}"),
                    }
                }
                if !a.json {
                    print(&f);
                }
                all.push(f);
            }
        }
        let cost = |kb: usize, n: usize| {
            all.iter().find(|f| f.docs == n && f.doc_bytes / 1024 == kb).map(|f| f.sync_us_per_doc)
        };
        let mut flat = Vec::new();
        for &kb in &a.sizes_kb {
            if let (Some(&small), Some(&large)) = (a.docs.iter().min(), a.docs.iter().max()) {
                if small != large {
                    if let (Some(s), Some(l)) = (cost(kb, small), cost(kb, large)) {
                        flat.push(json!({"doc_kb": kb, "docs": [small, large], "per_doc_cost_ratio": l / s}));
                        if !a.json {
                            println!("per-document cost, {large} / {small} docs of {kb} KB:  {:>8.2}x", l / s);
                        }
                    }
                }
            }
        }
        if a.json {
            println!("{}", serde_json::to_string_pretty(&json!({"runs": all, "scaling": flat}))?);
        }
        Ok(())
    }

    fn print(f: &Figures) {
        let row = |what: &str, v: String| println!("  {what:<52}{v}");
        row("store alone, replicated writes", format!("{:>10.0} docs/s", f.store_replicated_docs_per_s));
        row(
            "initial sync, accept → recipient holds all",
            format!(
                "{:>10.0} docs/s  {:.2} s  {:.0} µs CPU/doc",
                f.sync_docs_per_s, f.sync_secs, f.sync_cpu_us_per_doc
            ),
        );
        row("ratio sync / store alone", format!("{:>10.2}", f.sync_vs_store));
        match (f.pouchdb_docs_per_s, f.sync_vs_pouchdb) {
            (Some(p), Some(r)) => {
                row("PouchDB Server replicator (reference)", format!("{p:>10.0} docs/s"));
                row("ratio hearth / PouchDB Server", format!("{r:>10.1}x"));
            }
            _ => row("PouchDB Server reference", "not run".into()),
        }
        for p in &f.propagation {
            row(
                &format!("propagation at {} writes/s ({} writes)", p.writes_per_s, p.writes),
                format!("p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms", p.p50_ms, p.p99_ms, p.max_ms),
            );
        }
        let mib = |m: Option<f64>| m.map_or("?".into(), |m| format!("{m:.1} MiB"));
        row(
            "peak RSS: sender, recipient",
            format!("{}  {}", mib(f.sender_peak_rss_mib), mib(f.recipient_peak_rss_mib)),
        );
    }
}
