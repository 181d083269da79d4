//! File content throughput against `cp`, and the server's memory.
//!
//! Everything lives under one directory (`--dir`, default a temporary directory under the
//! system's): the source files, `cp`'s copies, the server's data directory and the downloads,
//! so every figure is on the same disk; it is all removed at the end. Source files are written
//! (and fsynced) first, so every reader, `cp` included, finds them in the page cache.
//!
//! What each side does, so the ratios compare like with like:
//! * `cp SRC DST` (GNU cp: `copy_file_range`, one copy inside the kernel), and the same followed
//!   by an fsync of the copy: hearth fsyncs every upload before acknowledging it, so that is the
//!   reference for uploads; plain `cp` (no fsync) for downloads, whose client does not fsync;
//! * MD5 of the large file on one core: hearth hashes every upload (`md5sum`, `Content-MD5`),
//!   and one MD5 cannot be spread over cores, so it bounds an upload whatever the disk;
//! * upload: `POST /files/…` with `Content-Length` and `Content-MD5` (computed before timing),
//!   the body read from the file by a thread of this client in 1 MiB blocks; the server
//!   hashes, writes and fsyncs;
//! * download: `GET /files/download/…` by a plain blocking HTTP/1.1 client on a thread of its
//!   own, the body written to a file in 1 MiB reads as it arrives, not fsynced, not hashed (the
//!   MD5 check of every byte runs after the timing, and a mismatch fails the bench);
//! * the same bytes over loopback TCP with no server (a thread reading the file into a socket,
//!   the same client writing them out): what any network download costs at least, the socket
//!   copies and the client's write, which `cp`'s copy inside the kernel does not pay;
//! * the same for the small files, one request at a time (each read or written whole), against
//!   `cp -r` of their directory;
//! * CPU seconds (user + system, `/proc/PID/stat`) of the server and of this client in each
//!   phase: on a busy machine they say what the work costs better than wall-clock rates;
//! * the server's resident memory before, and its peak (`VmHWM`) after each phase, in MiB.
//!
//! Large-file figures and their references are the best of `--runs` (the machine is shared),
//! each run timing each reference next to what it is compared with (`cp` + fsync and MD5 right
//! before the upload, `cp` right before the download, the loopback transfer before the download
//! in even runs and after it in odd ones), with the source in the page cache (warm reads, for
//! `cp` as for the client); the ratios of the medians follow. The download's step holds about
//! five times the large file in the page cache (source, the server's object, and three copies).
//! The upload's reference is `cp` + fsync: the same durability as hearth's (one fsync of the
//! file before the answer; hearth also fsyncs the directory, which costs one journal commit).

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
    let base = hearth::files::sample::pattern(MIB.min(len.max(1)), seed);
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

/// The same bytes over loopback TCP with no server in between: a thread reads `src` 1 MiB at
/// a time and writes each block to a socket; the download's lean client reads it 1 MiB at a
/// time into `dst` (the page cache, no fsync). What any HTTP download costs at least on this
/// machine: the socket copies both ways and the client's write, which `cp`'s copy inside the
/// kernel does not pay. The time from the connection to the last byte written.
fn loopback(src: &Path, dst: &Path) -> anyhow::Result<Duration> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    // Connected before the sender's thread waits to accept (the backlog completes the
    // handshake): a failed connection is an error here, not a thread waiting forever.
    let started = Instant::now();
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    std::thread::scope(|sc| {
        let sender = sc.spawn(move || -> anyhow::Result<()> {
            let (mut conn, _) = listener.accept()?;
            let mut file = std::fs::File::open(src)?;
            let mut buf = vec![0u8; MIB];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                conn.write_all(&buf[..n])?;
            }
        });
        let mut out = std::fs::File::create(dst)?;
        let mut buf = vec![0u8; MIB];
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
        }
        let took = started.elapsed();
        sender.join().map_err(|_| anyhow::anyhow!("the loopback sender panicked"))??;
        Ok(took)
    })
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
    super::in_scratch_dir(a.dir.as_deref(), async |root| bench(&a, &root).await).await
}

async fn bench(a: &Args, root: &Path) -> anyhow::Result<()> {
    let hearth = super::hearth_binary()?;
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

    // The large file: each run times each reference next to what it is compared with.
    let (mut cp_large, mut cp_large_sync, mut md5_large) = (None, None, None);
    let (mut up_large, mut down_large) = (None, None);
    let (mut hwm_up, mut hwm_down) = (0f64, 0f64);
    let timed = |wall: Duration, cpu: Option<Cpu>| Timed { wall, cpu };
    // Every run's wall time of: cp, cp + fsync, upload, download, loopback (for the medians).
    let mut walls: [Vec<Duration>; 5] = Default::default();
    let mut loop_large = None;
    for run in 0..a.runs {
        let copy = root.join("cp-large.bin");
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
        // `cp`, the download's reference, right before the download, and neither's copy
        // deleted until both are done: each writes a new gigabyte into the page cache, neither
        // into pages the other just freed. (Timed first in the run, `cp` took the pages the last
        // run's download had just freed, while the download came seconds after the last file
        // was deleted: on a VM that hands freed memory back to its host, fresh pages cost a
        // fault each, and `cp` ran 6x faster than in its own first run.)
        let w = cp(&large_src, &copy, false, false)?;
        walls[0].push(w);
        cp_large = Timed::best(cp_large, timed(w, None));
        // The bare network transfer into a third new gigabyte, before the download in even runs
        // and after it in odd ones: whichever comes later takes fresher pages.
        let over_tcp = root.join("loopback.bin");
        let mut bare = None;
        if run % 2 == 0 {
            bare = Some(loopback(&large_src, &over_tcp)?);
        }
        let dl = root.join("download.bin");
        let (t, c) = (Instant::now(), Cpu::now(pid));
        std::thread::scope(|sc| sc.spawn(|| server.download_large(&large_id, &dl)).join())
            .map_err(|_| anyhow::anyhow!("the download thread panicked"))??;
        walls[3].push(t.elapsed());
        down_large = Timed::best(down_large, timed(t.elapsed(), Some(Cpu::now(pid).since(c))));
        hwm_down = hwm_down.max(memory_mib(pid)?.1);
        if run % 2 == 1 {
            bare = Some(loopback(&large_src, &over_tcp)?);
        }
        if let Some(w) = bare {
            walls[4].push(w);
            loop_large = Timed::best(loop_large, timed(w, None));
        }
        if md5_of(&dl)? != large_md5 {
            bail!("the large file came back different");
        }
        for f in [&dl, &copy, &over_tcp] {
            std::fs::remove_file(f)?;
        }
        server.remove(&large_id).await?;
    }
    let [Some(cp_large), Some(cp_large_sync), Some(md5_large), Some(up_large), Some(down_large), Some(loop_large)] =
        [cp_large, cp_large_sync, md5_large, up_large, down_large, loop_large]
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
        let cpu = t
            .cpu
            .map_or(String::new(), |c| format!("   {:>5.2} {:>5.2}", c.server.as_secs_f64(), c.client.as_secs_f64()));
        println!("{what:<52}{:>10.1} MB/s {:>7.2} s{cpu}", mb_s(bytes, t.wall), t.wall.as_secs_f64());
    };
    let runs = if a.runs > 1 { format!(", best of {}", a.runs) } else { String::new() };
    row(&format!("cp, large file (reference{runs})"), large, cp_large);
    row("cp + fsync, large file (reference)", large, cp_large_sync);
    row("md5 of the large file, one core (reference)", large, md5_large);
    row("hearth upload, large file (md5 + write + fsync)", large, up_large);
    row("loopback TCP, same client, no server (reference)", large, loop_large);
    row("hearth download, large file (no fsync)", large, down_large);
    let ratio = |what: &str, t: Timed, reference: Timed| {
        println!("{what:<52}{:>10.2}x", reference.wall.as_secs_f64() / t.wall.as_secs_f64());
    };
    ratio("ratio upload / (cp + fsync)", up_large, cp_large_sync);
    ratio("ratio upload / md5 alone", up_large, md5_large);
    ratio("ratio download / cp", down_large, cp_large);
    ratio("ratio download / loopback TCP", down_large, loop_large);
    for w in &mut walls {
        w.sort();
    }
    let median = |i: usize| walls[i][walls[i].len() / 2].as_secs_f64();
    println!(
        "{:<52}{:>10.2}x {:>9.2}x {:>9.2}x",
        format!("medians of {} runs: upload, download, vs loopback", a.runs),
        median(1) / median(2),
        median(0) / median(3),
        median(4) / median(3)
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
