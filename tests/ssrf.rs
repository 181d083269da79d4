//! SSRF guard, end to end with real sockets on 127.0.0.1 only, through the one outbound client
//! production uses (`federation::client::Federation`).
//!
//! Forbidden targets are refused before any packet leaves: a counting listener on loopback is the
//! target (or the redirect target) of every refused request and must accept zero connections, and
//! names that would resolve to private ranges come from a static table, so nothing but loopback is
//! ever dialled. A positive test shows the same listener does count connections when allowed.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth::federation::client::{Federation, FederationError};
use hearth::federation::guard::{build_client, check_url, GuardError, Lookup, PeerPolicy, StaticLookup};
use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a test server answers to a request for a path.
enum Reply {
    Ok(&'static str),
    Redirect(String),
    /// `len` bytes of body, framed as `framing` says.
    Large {
        len: usize,
        framing: Framing,
    },
    /// Read the request, never answer.
    Silent,
    /// A JSON body, with its `Content-Type`.
    Json(&'static str),
    /// `len` bytes of body (chunked), counting in `sent` how many the client took before it
    /// closed the connection.
    Counted {
        len: usize,
        sent: Arc<AtomicUsize>,
    },
}

#[derive(Clone, Copy)]
enum Framing {
    ContentLength,
    Chunked,
    /// No length at all: the body ends when the connection closes.
    Close,
}

struct TestServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl TestServer {
    /// One request per connection (`Connection: close`), so accepted connections count requests.
    async fn spawn(reply: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let reply = Arc::new(reply);
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let reply = reply.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, &*reply).await;
                });
            }
        });
        Self { addr, accepted }
    }

    /// A server answering `200 ok` to everything.
    async fn ok() -> Self {
        Self::spawn(|_| Reply::Ok("ok")).await
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

async fn serve(mut stream: TcpStream, reply: &(dyn Fn(&str) -> Reply + Send + Sync)) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    match reply(&path) {
        Reply::Ok(body) => {
            let response =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            stream.write_all(response.as_bytes()).await?;
        }
        Reply::Redirect(location) => {
            let response =
                format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            stream.write_all(response.as_bytes()).await?;
        }
        Reply::Large { len, framing } => {
            let header = match framing {
                Framing::ContentLength => format!("Content-Length: {len}\r\n"),
                Framing::Chunked => "Transfer-Encoding: chunked\r\n".to_owned(),
                Framing::Close => String::new(),
            };
            stream.write_all(format!("HTTP/1.1 200 OK\r\n{header}Connection: close\r\n\r\n").as_bytes()).await?;
            let block = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < len {
                let n = block.len().min(len - sent);
                if let Framing::Chunked = framing {
                    stream.write_all(format!("{n:x}\r\n").as_bytes()).await?;
                    stream.write_all(&block[..n]).await?;
                    stream.write_all(b"\r\n").await?;
                } else {
                    stream.write_all(&block[..n]).await?;
                }
                sent += n;
            }
            if let Framing::Chunked = framing {
                stream.write_all(b"0\r\n\r\n").await?;
            }
        }
        Reply::Json(body) => {
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes()).await?;
        }
        Reply::Counted { len, sent } => {
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").await?;
            let block = vec![b' '; 64 * 1024];
            while sent.load(Ordering::SeqCst) < len {
                stream.write_all(format!("{:x}\r\n", block.len()).as_bytes()).await?;
                stream.write_all(&block).await?;
                stream.write_all(b"\r\n").await?;
                sent.fetch_add(block.len(), Ordering::SeqCst);
            }
            stream.write_all(b"0\r\n\r\n").await?;
        }
        Reply::Silent => {
            // Hold the connection until the client gives up.
            while stream.read(&mut buf).await? > 0 {}
        }
    }
    stream.shutdown().await
}

/// A server whose `/redirect?to=URL` answers `302 Location: URL`, and whose `/chain/N` redirects
/// to `/chain/N-1` until `/chain/0`, which answers 200.
async fn redirecting_server() -> TestServer {
    TestServer::spawn(|path| {
        let url = url::Url::parse(&format!("http://server{path}")).unwrap();
        if let Some(hops) = url.path().strip_prefix("/chain/") {
            let hops: usize = hops.parse().unwrap();
            return match hops {
                0 => Reply::Ok("end of chain"),
                _ => Reply::Redirect(format!("/chain/{}", hops - 1)),
            };
        }
        match url.query_pairs().find(|(key, _)| key == "to") {
            Some((_, to)) => Reply::Redirect(to.into_owned()),
            None => Reply::Ok("no target"),
        }
    })
    .await
}

fn redirect_to(server: &TestServer, target: &str) -> String {
    let query: String = url::form_urlencoded::Serializer::new(String::new()).append_pair("to", target).finish();
    server.url(&format!("/redirect?{query}"))
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Names that resolve, in tests only, to addresses no test may actually contact.
fn test_names() -> Arc<dyn Lookup> {
    Arc::new(
        StaticLookup::new()
            .with("evil.test", [ip("10.0.0.1")])
            .with("rebound.test", [ip("127.0.0.1")])
            .with("metadata.test", [ip("169.254.169.254")])
            .with("mixed.test", [ip("127.0.0.1"), ip("10.0.0.1"), ip("::1")])
            .with("mapped.test", [ip("::ffff:127.0.0.1")])
            .with("ula.test", [ip("fd00::1")]),
    )
}

/// The expected refusal for a URL.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Refusal {
    Forbidden,
    Scheme,
    InvalidUrl,
    TooManyRedirects,
}

fn kind(error: &FederationError) -> Option<Refusal> {
    let FederationError::Guard(error) = error else { return None };
    match error {
        GuardError::ForbiddenAddress { .. } => Some(Refusal::Forbidden),
        GuardError::Scheme { .. } => Some(Refusal::Scheme),
        GuardError::InvalidUrl { .. } => Some(Refusal::InvalidUrl),
        GuardError::TooManyRedirects { .. } => Some(Refusal::TooManyRedirects),
        _ => None,
    }
}

/// A GET through the client: the path every federation request takes. Answers the status and
/// the body (within the policy's cap).
async fn fetch(client: &Federation, url: &str) -> Result<(u16, bytes::Bytes), FederationError> {
    client.fetch(Method::GET, url).await
}

#[tokio::test]
async fn forbidden_targets_are_refused_before_any_connection() {
    let target = TestServer::ok().await;
    let redirector = redirecting_server().await;
    let p = target.port();
    // Production rules except plain http (the test servers speak no TLS), plus one exact exemption
    // for the redirecting server so redirects out of an allowed peer are exercised.
    let policy = PeerPolicy::new(false, true).with_exempt_addr(redirector.addr);
    let client = Federation::with_policy(policy, Some(test_names())).unwrap();

    use Refusal::*;
    let direct: Vec<(String, Refusal)> = vec![
        // Loopback, every spelling the WHATWG parser turns into 127.0.0.1.
        (format!("http://2130706433:{p}/"), Forbidden),
        (format!("http://0x7f000001:{p}/"), Forbidden),
        (format!("http://0x7f.0.0.1:{p}/"), Forbidden),
        (format!("http://0x7f.1:{p}/"), Forbidden),
        (format!("http://0177.0.0.1:{p}/"), Forbidden),
        (format!("http://017700000001:{p}/"), Forbidden),
        (format!("http://127.1:{p}/"), Forbidden),
        (format!("http://127.0.1:{p}/"), Forbidden),
        (format!("http://127.0.0.1:{p}/"), Forbidden),
        (format!("http://127.0.0.1.:{p}/"), Forbidden),
        (format!("http://127.000.000.001:{p}/"), Forbidden),
        (format!("http://%31%32%37.0.0.1:{p}/"), Forbidden),
        (format!("http://127.0.0.2:{p}/"), Forbidden),
        (format!("http://[::1]:{p}/"), Forbidden),
        (format!("http://[0:0:0:0:0:0:0:1]:{p}/"), Forbidden),
        (format!("http://[::ffff:127.0.0.1]:{p}/"), Forbidden),
        (format!("http://[::ffff:7f00:1]:{p}/"), Forbidden),
        (format!("http://[::127.0.0.1]:{p}/"), Forbidden),
        (format!("http://[2002:7f00:1::]:{p}/"), Forbidden),
        (format!("http://[64:ff9b::7f00:1]:{p}/"), Forbidden),
        // Unspecified: 0.0.0.0 dials the local host on Linux.
        (format!("http://0.0.0.0:{p}/"), Forbidden),
        (format!("http://0:{p}/"), Forbidden),
        (format!("http://[::]:{p}/"), Forbidden),
        // Names that mean loopback (RFC 6761), refused without asking any resolver.
        (format!("http://localhost:{p}/"), Forbidden),
        (format!("http://alice.localhost:{p}/"), Forbidden),
        (format!("http://LOCALHOST.:{p}/"), Forbidden),
        // Names whose DNS answers are forbidden.
        (format!("http://evil.test:{p}/"), Forbidden),
        (format!("http://rebound.test:{p}/"), Forbidden),
        (format!("http://metadata.test:{p}/latest/meta-data/"), Forbidden),
        (format!("http://mixed.test:{p}/"), Forbidden),
        (format!("http://mapped.test:{p}/"), Forbidden),
        (format!("http://ula.test:{p}/"), Forbidden),
        // Private, metadata, CGNAT and other non-public ranges.
        ("http://10.0.0.1/".to_owned(), Forbidden),
        ("http://167772161/".to_owned(), Forbidden),
        ("http://172.16.0.1/".to_owned(), Forbidden),
        ("http://192.168.1.1/".to_owned(), Forbidden),
        ("http://169.254.169.254/latest/meta-data/".to_owned(), Forbidden),
        ("http://[::ffff:169.254.169.254]/".to_owned(), Forbidden),
        ("http://100.64.0.1/".to_owned(), Forbidden),
        ("http://198.18.0.1/".to_owned(), Forbidden),
        ("http://192.0.0.1/".to_owned(), Forbidden),
        ("http://224.0.0.1/".to_owned(), Forbidden),
        ("http://255.255.255.255/".to_owned(), Forbidden),
        ("http://240.0.0.1/".to_owned(), Forbidden),
        ("http://[fc00::1]/".to_owned(), Forbidden),
        ("http://[fe80::1]/".to_owned(), Forbidden),
        ("http://[fec0::1]/".to_owned(), Forbidden),
        ("http://[ff02::1]/".to_owned(), Forbidden),
        ("http://[64:ff9b::a00:1]/".to_owned(), Forbidden),
        ("http://[2001::1]/".to_owned(), Forbidden),
        // Schemes and credentials.
        (format!("ftp://127.0.0.1:{p}/"), Scheme),
        (format!("gopher://127.0.0.1:{p}/"), Scheme),
        ("file:///etc/passwd".to_owned(), Scheme),
        (format!("https://user:pass@127.0.0.1:{p}/"), InvalidUrl),
        (format!("http://user:pass@{}/", redirector.addr), InvalidUrl),
        (format!("http://[fe80::1%25lo]:{p}/"), InvalidUrl),
    ];
    // Redirects out of the exempt server: each hop is re-checked.
    let targets: Vec<(String, Refusal)> = vec![
        (format!("http://127.0.0.1:{p}/"), Forbidden),
        (format!("http://2130706433:{p}/"), Forbidden),
        (format!("http://[::1]:{p}/"), Forbidden),
        (format!("http://[::ffff:7f00:1]:{p}/"), Forbidden),
        (format!("http://localhost:{p}/"), Forbidden),
        (format!("http://rebound.test:{p}/"), Forbidden),
        ("http://evil.test/".to_owned(), Forbidden),
        ("http://10.0.0.1/".to_owned(), Forbidden),
        ("http://[::ffff:a00:1]/".to_owned(), Forbidden),
        ("http://169.254.169.254/latest/meta-data/".to_owned(), Forbidden),
        (format!("ftp://127.0.0.1:{p}/"), Scheme),
        (format!("http://user:pass@{}/", redirector.addr), InvalidUrl),
    ];
    let redirects: Vec<(String, Refusal)> =
        targets.iter().map(|(target, refusal)| (redirect_to(&redirector, target), *refusal)).collect();
    let chain = (redirector.url("/chain/10"), TooManyRedirects);

    let cases: Vec<_> = direct.iter().chain(&redirects).chain([&chain]).collect();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    for (url, expected) in &cases {
        let started = Instant::now();
        let outcome = fetch(&client, url).await;
        match &outcome {
            Err(error) if kind(error) == Some(*expected) => {}
            other => panic!("{url}: expected {expected:?}, got {other:?}"),
        }
        // Refused on the spot, not after a connect timeout.
        assert!(started.elapsed() < Duration::from_secs(2), "{url} took {:?}", started.elapsed());
    }

    assert_eq!(target.accepted(), 0, "a forbidden target was reached");
    // Each redirect case reached the exempt server once; the chain ran the 3 allowed hops, plus
    // the first request, and was refused at the 4th redirect.
    assert_eq!(redirector.accepted(), redirects.len() + 4);
    println!("{} refused urls", cases.len());
}

#[tokio::test]
async fn an_allowed_loopback_peer_is_reached() {
    let target = TestServer::ok().await;
    let client = Federation::with_policy(PeerPolicy::new(true, true), Some(test_names())).unwrap();

    for url in [format!("http://alice.localhost:{}/", target.port()), target.url("/")] {
        let (status, body) = fetch(&client, &url).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, "ok");
    }
    assert_eq!(target.accepted(), 2);
}

#[tokio::test]
async fn plain_http_is_refused_when_only_https_is_allowed() {
    let target = TestServer::ok().await;
    let policy = PeerPolicy::new(true, false);
    let client = Federation::with_policy(policy.clone(), Some(test_names())).unwrap();

    for url in [format!("http://alice.localhost:{}/", target.port()), target.url("/")] {
        let refusal = fetch(&client, &url).await.unwrap_err();
        assert!(matches!(refusal, FederationError::Guard(GuardError::Scheme { .. })), "{url}: {refusal:?}");
        assert!(matches!(check_url(&url, &policy), Err(GuardError::Scheme { .. })));
        // The bare client refuses too (`https_only`), for callers that skip `check_url`.
        let bare = build_client(&policy, Some(test_names())).unwrap();
        assert!(bare.get(&url).send().await.is_err());
    }
    assert_eq!(target.accepted(), 0);
}

#[tokio::test]
async fn a_redirect_to_a_non_http_scheme_is_not_followed() {
    // `file:` has no authority, so reqwest hands back the 302 itself instead of asking the redirect
    // policy; `ftp:` reaches the policy and is refused there (see the refusal list).
    let redirector = redirecting_server().await;
    let client = Federation::with_policy(PeerPolicy::new(false, true).with_exempt_addr(redirector.addr), None).unwrap();
    match fetch(&client, &redirect_to(&redirector, "file:///etc/passwd")).await {
        Ok((status, _)) => assert_eq!(status, 302),
        Err(refusal) => assert!(matches!(refusal, FederationError::Guard(GuardError::Scheme { .. })), "{refusal:?}"),
    }
    assert_eq!(redirector.accepted(), 1);
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    const MAX: usize = 1024 * 1024;
    const LARGE: usize = 10 * 1024 * 1024;
    let server = TestServer::spawn(|path| match path {
        "/length" => Reply::Large { len: LARGE, framing: Framing::ContentLength },
        "/chunked" => Reply::Large { len: LARGE, framing: Framing::Chunked },
        "/close" => Reply::Large { len: LARGE, framing: Framing::Close },
        "/exact" => Reply::Large { len: MAX, framing: Framing::Chunked },
        _ => Reply::Large { len: MAX + 1, framing: Framing::ContentLength },
    })
    .await;
    let mut policy = PeerPolicy::new(true, true);
    assert_eq!(policy.max_response_bytes, 64 * 1024 * 1024, "the one cap production uses");
    policy.max_response_bytes = MAX;
    let client = Federation::with_policy(policy, None).unwrap();

    for path in ["/length", "/chunked", "/close", "/one-too-many"] {
        let refusal = fetch(&client, &server.url(path)).await.unwrap_err();
        assert!(
            matches!(refusal, FederationError::Guard(GuardError::BodyTooLarge { limit: MAX, .. })),
            "{path}: {refusal:?}"
        );
    }
    let (_, body) = fetch(&client, &server.url("/exact")).await.unwrap();
    assert_eq!(body.len(), MAX);
}

/// Token refresh (`POST /auth/access_token`, through oauth2) goes through the same client: the
/// same cap on the answer, read as it streams (oauth2's own client would read it whole).
#[tokio::test]
async fn a_token_refresh_answer_is_capped_too() {
    const MAX: usize = 1024 * 1024;
    const LARGE: usize = 256 * 1024 * 1024;
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let hostile = TestServer::spawn(move |_| Reply::Counted { len: LARGE, sent: counter.clone() }).await;
    let honest = TestServer::spawn(|_| {
        Reply::Json(r#"{"access_token":"new-access","token_type":"bearer","refresh_token":"new-refresh"}"#)
    })
    .await;
    let mut policy = PeerPolicy::new(true, true);
    policy.max_response_bytes = MAX;
    let client = Federation::with_policy(policy, None).unwrap();
    let creds = || hearth::federation::client::PeerCredentials {
        client_id: "cid".into(),
        client_secret: "secret".into(),
        access_token: "old-access".into(),
        refresh_token: "old-refresh".into(),
    };

    let mut c = creds();
    let base = url::Url::parse(&hostile.url("/")).unwrap();
    let refusal = client.refresh(&mut c, &base).await.unwrap_err();
    assert!(matches!(refusal, FederationError::RefreshUnavailable { .. }), "{refusal:?}");
    assert_eq!(c.access_token, "old-access");
    // The client stopped reading past the cap (what the socket buffers hold aside).
    let taken = sent.load(Ordering::SeqCst);
    assert!(taken < 32 * MAX, "{taken} bytes of a {LARGE}-byte answer were read");

    let mut c = creds();
    client.refresh(&mut c, &url::Url::parse(&honest.url("/")).unwrap()).await.unwrap();
    assert_eq!((c.access_token.as_str(), c.refresh_token.as_str()), ("new-access", "new-refresh"));
}

#[tokio::test]
async fn redirect_chains_stop_at_the_limit() {
    let server = redirecting_server().await;
    let policy = PeerPolicy::new(false, true).with_exempt_addr(server.addr);
    assert_eq!(policy.max_redirects, 3);
    let client = Federation::with_policy(policy, None).unwrap();

    let (_, body) = fetch(&client, &server.url("/chain/3")).await.unwrap();
    assert_eq!(body, "end of chain");
    assert_eq!(server.accepted(), 4);

    let refusal = fetch(&client, &server.url("/chain/4")).await.unwrap_err();
    assert!(matches!(refusal, FederationError::Guard(GuardError::TooManyRedirects { limit: 3, .. })), "{refusal:?}");
    assert_eq!(server.accepted(), 8, "the 4th redirect must not be followed");
}

#[tokio::test]
async fn a_silent_peer_hits_the_deadline_and_errors_hide_the_query() {
    let server = TestServer::spawn(|_| Reply::Silent).await;
    let mut policy = PeerPolicy::new(true, true);
    policy.timeout = Duration::from_millis(300);
    let client = Federation::with_policy(policy, None).unwrap();

    let started = Instant::now();
    let error = fetch(&client, &server.url("/secret-path?token=SECRET")).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    match &error {
        FederationError::Unreachable { source, .. } => assert!(source.is_timeout(), "{source:?}"),
        other => panic!("expected a transport timeout, got {other:?}"),
    }
    assert!(error.is_transient());

    let mut chain = vec![format!("{error}"), format!("{error:?}")];
    let mut cause = std::error::Error::source(&error);
    while let Some(current) = cause {
        chain.push(current.to_string());
        cause = current.source();
    }
    for text in &chain {
        assert!(!text.contains("SECRET") && !text.contains("secret-path"), "leaked: {text}");
    }
    assert_eq!(error.to_string(), format!("peer http://{}:{} unreachable", server.addr.ip(), server.port()));
}

/// Run by `proxy_variables_are_ignored` in a child process, so that the proxy variables never
/// touch this process's environment (other tests run concurrently). A no-op otherwise.
#[tokio::test]
async fn proxy_child() {
    let Ok(url) = std::env::var("HEARTH_SSRF_PROXY_CHILD_TARGET") else { return };
    let client = Federation::with_policy(PeerPolicy::new(true, true), None).unwrap();
    let (_, body) = fetch(&client, &url).await.unwrap();
    assert_eq!(body, "ok");
}

#[tokio::test]
async fn proxy_variables_are_ignored() {
    // A proxy resolves names itself, so honouring one would bypass every address check
    // (Synapse #9812).
    let target = TestServer::ok().await;
    let proxy = TestServer::spawn(|_| Reply::Ok("proxied")).await;
    let proxy_url = proxy.url("");
    let output = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "proxy_child", "--nocapture", "--test-threads=1"])
        .env("HEARTH_SSRF_PROXY_CHILD_TARGET", format!("http://alice.localhost:{}/", target.port()))
        .env("HTTP_PROXY", &proxy_url)
        .env("http_proxy", &proxy_url)
        .env("HTTPS_PROXY", &proxy_url)
        .env("https_proxy", &proxy_url)
        .env("ALL_PROXY", &proxy_url)
        .env("all_proxy", &proxy_url)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(proxy.accepted(), 0, "the request went through the proxy");
    assert_eq!(target.accepted(), 1);
}
