//! Realtime events under load; see the crate documentation for what is printed.

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
        let req = format!("GET /realtime/events HTTP/1.1\r\nHost: {domain}\r\nAuthorization: Bearer {token}\r\n\r\n");
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
    println!("ratio with subscribers / reference           {:>10.2}x", reference.as_secs_f64() / loaded.as_secs_f64());
    println!("changes delivered to the reader              {seen:>10} of {docs} in {:.2} s", delivery.as_secs_f64());
    println!("resident memory before subscribing           {rss_start:>10.1} MiB");
    println!("resident memory after the writes             {rss_loaded:>10.1} MiB");
    println!("subscribers still counted (reader included)  {left:>10} of {}", stalled + 1);
    println!("resident memory after that                   {rss_dropped:>10.1} MiB");
    Ok(())
}
