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
    let state = service::member_state(&alice, &s, hearth::sharing::MemberIndex(1)).context("state")?;
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

/// What `--help` prints: the forms of the command line (the module docs say what each measures).
const USAGE: &str = "\
usage:
  hearth-bench [--docs N] [--branches N] [--pouchdb-server PATH]   store, sync and conflicts
  hearth-bench files [--large-mb N] [--small N] [--small-kb N] [--runs N] [--dir PATH]
  hearth-bench folder [--files N] [--total-mb N] [--large-mb N] [--dir PATH]
  hearth-bench servers [--docs N,N] [--sizes-kb N,N] [--rates N,N] [--seconds S] [--json]
                       [--pouchdb-server PATH]
  hearth-bench realtime [--docs N] [--stalled N]
The hearth binary next to this one serves files, folder, servers and realtime: build both
with `cargo build --release --bins`. README.md, \"Benchmark\", says what each line means.";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
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

/// The `hearth` binary next to this one, which the benches start as servers.
fn hearth_binary() -> anyhow::Result<std::path::PathBuf> {
    let hearth = std::env::current_exe()?.with_file_name("hearth");
    if !hearth.exists() {
        bail!("{} is missing: cargo build --release --bins", hearth.display());
    }
    Ok(hearth)
}

/// Runs `bench` in a scratch directory under `dir` (the system's temporary directory by
/// default), removed afterwards whatever the outcome: disks are small, nothing of a run stays.
async fn in_scratch_dir<F, Fut>(dir: Option<&std::path::Path>, bench: F) -> anyhow::Result<()>
where
    F: FnOnce(std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let root = match dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let outcome = bench(root.path().to_path_buf()).await;
    root.close()?;
    outcome
}

mod files;

mod folder;

mod realtime;

mod servers;
