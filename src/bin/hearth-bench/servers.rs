//! What users see: two `hearth serve` processes (the `hearth` binary next to this one), see
//! [`servers::run`].

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
        let mut cmd = Command::new(super::hearth_binary()?);
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

    /// Starts the peak resident memory over from the current one (Linux `clear_refs` 5), so
    /// that the next [`Server::peak_rss_mib`] covers what happens from now on.
    fn reset_peak_rss(&self) -> Option<()> {
        let pid = self.child.as_ref()?.id();
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").ok()
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
    /// Peak resident memory once the documents are loaded: the sharing's creation, the
    /// acceptance, the sync and the propagation runs.
    sender_peak_rss_mib: Option<f64>,
    recipient_peak_rss_mib: Option<f64>,
    /// The sender's peak while the bench loads the documents into it (`_bulk_docs` of 1,000
    /// documents each), before the sharing exists: a client's load, not the sync.
    sender_load_peak_rss_mib: Option<f64>,
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
    f.sender_load_peak_rss_mib = alice.peak_rss_mib();
    let (reset_alice, reset_bob) = (alice.reset_peak_rss(), bob.reset_peak_rss());
    if reset_alice.is_none() || reset_bob.is_none() {
        eprintln!("warning: the peak RSS could not be reset: the figures include the load");
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
    let resp = http.post(bob.url("/auth/authorize/sharing")).header("cookie", jar.header()).form(&form).send().await?;
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
            let mut f = Figures { docs: n, doc_bytes: serde_json::to_vec(&body(0, size))?.len(), ..Figures::default() };
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
    let cost =
        |kb: usize, n: usize| all.iter().find(|f| f.docs == n && f.doc_bytes / 1024 == kb).map(|f| f.sync_us_per_doc);
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
        format!("{:>10.0} docs/s  {:.2} s  {:.0} µs CPU/doc", f.sync_docs_per_s, f.sync_secs, f.sync_cpu_us_per_doc),
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
    row("peak RSS: sender, recipient", format!("{}  {}", mib(f.sender_peak_rss_mib), mib(f.recipient_peak_rss_mib)));
    row("  sender's peak while the bench loaded it", mib(f.sender_load_peak_rss_mib));
}
