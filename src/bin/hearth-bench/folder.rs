//! Sharing a folder between two `hearth serve` processes (issue 13, item 6), against a local
//! copy of the same bytes.
//!
//! A folder of `--files` files (default 1,000) totalling `--total-mb` MiB (default 1,024), one
//! of them `--large-mb` MiB (default 300), spread over ten directories, is written under
//! `--dir` (default a temporary directory), then:
//! * the references, each run three times (before the servers start, with the source folder
//!   in the page cache: warm reads), best and median printed, the best taken for the ratios:
//!   - `cp -r` of the folder: the copy lands in the page cache only, nothing is durable;
//!   - a durable local copy: `cp -r`, then an fsync of every file copied and of every
//!     directory, one after the other, as a program that acknowledges each file only once it
//!     is on disk would (hearth's receiver fsyncs each file and its directory before it
//!     answers). This is the fair reference: the same bytes, the same disk, the same
//!     durability; a whole-machine `sync` is not used, since on a shared machine it also
//!     flushes whatever other processes wrote;
//!
//!   the copies are kept until the end (deleted files slow down ext4's next file creations
//!   for a minute), and a `sync` after each page-cache-only one writes back what it left,
//!   untimed, before anything else is timed;
//! * the folder is uploaded to alice's server (timed apart), shared with bob, on a server of
//!   its own; from bob's acceptance to every file's content present on bob (alice's status
//!   shows nothing pending for bob, metadata nor content; bob's shows no content missing) is
//!   the sharing time, in MB/s and as a ratio of the references. The statuses are polled every
//!   100 ms, and every 10 ms once at most 16 files are left to deliver, so the end is seen
//!   within about 10 ms plus the two statuses;
//! * every file is then downloaded from bob and its MD5 compared with the source's;
//! * the peak resident memory (`VmHWM`) of each server.

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

/// CPU seconds (user and system) process `pid` has used so far.
fn cpu_s(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command's name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').context("no ) in stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).context("utime")?.parse::<f64>()? + f.get(12).context("stime")?.parse::<f64>()?;
    // In clock ticks, which Linux counts at `USER_HZ`, 100 a second, whatever the kernel's tick.
    Ok(ticks / 100.0)
}

fn write_source(path: &Path, len: usize, seed: u64) -> anyhow::Result<String> {
    use std::io::Write;
    let base = hearth::files::sample::pattern(MIB.min(len.max(1)), seed);
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
    /// The servers' log filter, from `HEARTH_BENCH_LOG`; their logs then go to `<data>/serve.log`.
    log: Option<String>,
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
            .env("HEARTH_LOG", self.log.as_deref().unwrap_or("warn"));
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
        // With `HEARTH_BENCH_LOG`, each server's log goes to `<data>/serve.log` (see the module docs).
        let log = match self.log {
            Some(_) => Stdio::from(std::fs::File::create(self.data.join("serve.log"))?),
            None => Stdio::null(),
        };
        let serve = Serve(cmd.arg("serve").stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn()?);
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
    // `HEARTH_BENCH_LOG` is this program's: the configuration loaded below, and the servers,
    // would refuse it as an unknown `HEARTH_` key.
    let log = std::env::var("HEARTH_BENCH_LOG").ok();
    std::env::remove_var("HEARTH_BENCH_LOG");
    super::in_scratch_dir(a.dir.as_deref(), async |root| bench(&a, &root, log).await).await
}

async fn bench(a: &Args, root: &Path, log: Option<String>) -> anyhow::Result<()> {
    let hearth = super::hearth_binary()?;
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

    // The references (see the module docs), interleaved. Their copies are kept until the end:
    // ext4 without a journal passes over inodes freed in the last minute when it allocates one
    // (`recently_deleted`), so deleting thousands of files here would slow down whatever
    // creates files next (the next copy, the servers' uploads and sharing) for a minute.
    let (mut cps, mut durables) = (Vec::new(), Vec::new());
    for run in 0..REFERENCE_RUNS {
        cps.push(copy(&src, &root.join(format!("copy-{run}")), false)?);
        // What the page-cache-only copy left to write back is written now (untimed), not
        // during the next copy or the sharing.
        Command::new("sync").status()?;
        durables.push(copy(&src, &root.join(format!("durable-{run}")), true)?);
    }
    cps.sort();
    durables.sort();
    let (cp, durable) = (cps[0], durables[0]);

    let free = || std::net::TcpListener::bind("127.0.0.1:0").map(|l| l.local_addr().map(|a| a.port()));
    let alice =
        Server { name: "alice", data: root.join("alice"), port: free()??, hearth: hearth.clone(), log: log.clone() };
    let bob = Server { name: "bob", data: root.join("bob"), port: free()??, hearth: hearth.clone(), log: log.clone() };
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
        let v =
            alice.json(&client, post.clone(), &format!("/files/{folder}?Type=directory&Name=d{d}"), &ta, None).await?;
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
    let digest = service::pending_digest(&core.sharing, &bob_inst, &id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let cpu_before = (cpu_s(serve_a.0.id())?, cpu_s(serve_b.0.id())?);
    let t = Instant::now();
    let accepted_at = std::time::SystemTime::now();
    service::accept(&core.sharing, &bob_inst, &id, &state, &digest).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let accepted = t.elapsed();
    let deadline = t + Duration::from_secs(1800);
    // Phases, as the polls see them (to within a poll): every document on bob, and the first
    // file's content acknowledged.
    let (mut metadata_done, mut first_content) = (None, None);
    loop {
        let st = alice.json(&client, reqwest::Method::GET, &format!("/sharings/{sid}/status"), &ta, None).await?;
        let m = &st["data"]["attributes"]["members"][1];
        if metadata_done.is_none()
            && m["replication"]["pending"] == json!(0)
            && m["replication"]["last_seq"].as_u64().is_some_and(|s| s > 0)
        {
            metadata_done = Some(t.elapsed());
        }
        if first_content.is_none() && m["content"]["files_sent"].as_u64().is_some_and(|n| n > 0) {
            first_content = Some(t.elapsed());
        }
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
        // Every 100 ms while files go (each status reads the rows past the checkpoint, on the
        // servers being measured), every 10 ms once at most 16 files are left to deliver, so
        // that the end is seen within about 10 ms plus the statuses, not 100. Counted from
        // `files_sent` (every delivery, as it is answered): `files_pending` counts the files
        // after one still travelling until its round ends.
        let sent = m["content"]["files_sent"].as_u64().unwrap_or(0);
        let tail = m["replication"]["pending"] == json!(0) && sent + 16 >= files.len() as u64;
        tokio::time::sleep(Duration::from_millis(if tail { 10 } else { 100 })).await;
    }
    let share = t.elapsed();
    let cpu = (cpu_s(serve_a.0.id())? - cpu_before.0, cpu_s(serve_b.0.id())? - cpu_before.1);
    let (hwm_a, hwm_b) = (hwm_mib(serve_a.0.id())?, hwm_mib(serve_b.0.id())?);

    // Every file on bob, byte for byte.
    for (rel, md5) in &files {
        let path = format!("/Shared with me/Folder/{rel}");
        let resp =
            bob.req(&client, reqwest::Method::GET, &format!("/files/download?Path={}", enc(&path)), &tb).send().await?;
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
    if log.is_some() {
        let kept = std::env::temp_dir().join(format!("hearth-bench-folder-{}", std::process::id()));
        std::fs::create_dir_all(&kept)?;
        for s in [&alice, &bob] {
            std::fs::copy(s.data.join("serve.log"), kept.join(format!("{}.log", s.name)))?;
        }
        let at = accepted_at.duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
        println!("servers' logs kept in {} (bob's acceptance began at {at:.3} s after the epoch)", kept.display());
    }

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
    let phase = |what: &str, d: Option<Duration>| match d {
        Some(d) => println!("  {what:<50}{:>9.2} s", d.as_secs_f64()),
        None => println!("  {what:<50}{:>11}", "-"),
    };
    phase("of which: acceptance answered after", Some(accepted));
    phase("first file's content acknowledged, polled, at", first_content);
    phase("every document on bob, polled, at", metadata_done);
    println!("{:<52}{:>10.2} s", "  CPU time of alice's server while sharing", cpu.0);
    println!("{:<52}{:>10.2} s", "  CPU time of bob's server while sharing", cpu.1);
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
