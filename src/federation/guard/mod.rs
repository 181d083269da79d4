//! SSRF guard: the only way hearth sends a request to a URL that a user or a peer supplied.
//!
//! A peer URL is attacker-controlled: typed by a recipient during discovery, or sent by another
//! instance. Without a guard, `http://127.0.0.1:5984/`, `http://169.254.169.254/latest/meta-data/`,
//! a name whose DNS answer is `10.0.0.1`, or a public URL that redirects to any of those would make
//! this server attack its own network (cozy-stack #3436 and #4380, Synapse CVE-2021-21273 and
//! CVE-2021-21392). The guard is layered, because each layer alone leaves a hole:
//!
//! 1. [`check_url`] runs before every request and on every redirect hop: scheme (`https`, and
//!    `http` only when allowed), no userinfo, and the address check for IP-literal hosts. It has to,
//!    because hyper's connector never asks the resolver about `http://127.0.0.1/` or `[::1]`.
//! 2. [`GuardedResolver`] classifies every DNS answer and hands the connector only the allowed
//!    addresses. The connector dials exactly what the resolver returned, so a name cannot be
//!    re-resolved to another address between the check and the connect (DNS rebinding).
//! 3. A connector layer checks the remote address of every fresh connection before the first HTTP
//!    byte is written: a last line that does not depend on the two above being complete.
//!
//! [`build_client`] also ignores proxy environment variables (a proxy would resolve the name itself,
//! Synapse #9812), caps redirects at [`PeerPolicy::max_redirects`], sends no `Referer` (URLs may
//! carry secrets), and sets connect and total deadlines against slow peers (Mastodon
//! CVE-2023-36461). [`read_limited`] caps response bodies (Synapse CVE-2021-21274).
//!
//! Refusals never need a packet to the forbidden address: the integration tests prove it with a
//! listener on loopback that must accept zero connections.

mod addresses;
mod resolve;

pub use addresses::is_forbidden_ip;
pub use resolve::{GuardedResolver, Lookup, StaticLookup, SystemLookup};

use std::error::Error as StdError;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::{Response, StatusCode};
use url::{Host, Url};

use addresses::is_localhost_name;
use resolve::VerifyPeerLayer;

/// `User-Agent` of every outbound request.
pub const USER_AGENT: &str = concat!("hearth/", env!("CARGO_PKG_VERSION"));

/// What outbound requests may reach, and how long and how much they may take.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    /// Let peers live on loopback, private, link-local and other non-public addresses (tests and
    /// local demos). When set, the address checks are off; scheme and userinfo checks still apply.
    pub allow_private_addresses: bool,
    /// Let peers be reached over plain `http://` (tests and local demos).
    pub allow_http: bool,
    /// Exact socket addresses allowed even though their IP is forbidden, for a test peer on
    /// loopback while everything else stays guarded. Only IP-literal URLs can use them: the
    /// resolver never sees the port, so a DNS name is never exempted, and `127.0.0.1:8080` being
    /// exempt does not open `127.0.0.1:8081`. Empty in production.
    pub exempt_addrs: Vec<SocketAddr>,
    /// Deadline for resolving and connecting.
    pub connect_timeout: Duration,
    /// Deadline for a whole request, redirects and response body included.
    pub timeout: Duration,
    /// Redirect hops followed before a request is refused.
    pub max_redirects: usize,
    /// Largest response body accepted from a peer (`federation::client::Federation` reads
    /// every response with [`read_limited`] and this cap).
    pub max_response_bytes: usize,
}

impl PeerPolicy {
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_REDIRECTS: usize = 3;
    /// A batch of replicated documents is the largest answer a peer sends.
    pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

    /// The policy for the two configuration switches (`[federation]` in the config), with the
    /// default deadlines and caps.
    pub fn new(allow_private_addresses: bool, allow_http: bool) -> Self {
        Self {
            allow_private_addresses,
            allow_http,
            exempt_addrs: Vec::new(),
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            timeout: Self::DEFAULT_TIMEOUT,
            max_redirects: Self::DEFAULT_MAX_REDIRECTS,
            max_response_bytes: Self::DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// Exempt one exact socket address (see [`PeerPolicy::exempt_addrs`]).
    pub fn with_exempt_addr(mut self, addr: SocketAddr) -> Self {
        self.exempt_addrs.push(addr);
        self
    }

    /// May a connection go to this exact address?
    fn allows_socket(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        self.allows_ip(ip)
            || self.exempt_addrs.iter().any(|exempt| exempt.ip().to_canonical() == ip && exempt.port() == addr.port())
    }

    /// May a DNS answer be used? (No port is known at resolution time, so no exemptions apply.)
    fn allows_ip(&self, ip: IpAddr) -> bool {
        self.allow_private_addresses || !is_forbidden_ip(ip)
    }
}

impl Default for PeerPolicy {
    /// The production policy: public `https` peers only.
    fn default() -> Self {
        Self::new(false, false)
    }
}

impl From<&crate::config::FederationConfig> for PeerPolicy {
    fn from(config: &crate::config::FederationConfig) -> Self {
        Self::new(config.allow_private_addresses, config.allow_http)
    }
}

/// Why an outbound request was refused or failed. Messages name the peer only as
/// `scheme://host:port` (or the bare host name): paths and query strings may carry secrets.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// Unparseable, userinfo present, or no host. The input is not echoed.
    #[error("invalid peer url: {reason}")]
    InvalidUrl { reason: &'static str },
    #[error("scheme `{scheme}` is not allowed for peer urls")]
    Scheme { scheme: String },
    /// The peer resolves to, or is written as, a loopback, private, link-local, metadata or
    /// otherwise non-public address.
    #[error("peer address is not allowed: {peer}")]
    ForbiddenAddress { peer: String },
    #[error("could not resolve peer {host}")]
    Resolution {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("too many redirects from {peer} (limit {limit})")]
    TooManyRedirects { peer: String, limit: usize },
    #[error("response from {peer} is larger than {limit} bytes")]
    BodyTooLarge { peer: String, limit: usize },
    /// Connect, TLS, timeout, protocol or body errors. The wrapped error has its URL removed.
    #[error("request to {peer} failed")]
    Transport {
        peer: String,
        #[source]
        source: reqwest::Error,
    },
}

impl GuardError {
    /// Whether the guard refused the peer address itself (bad url, scheme, or an address that
    /// is or resolves to a forbidden one): no connection was made, so the request, not the
    /// peer, is at fault (400 rather than 502).
    pub fn is_policy_refusal(&self) -> bool {
        matches!(self, GuardError::InvalidUrl { .. } | GuardError::Scheme { .. } | GuardError::ForbiddenAddress { .. })
    }

    /// Worth retrying later (the replicator backs off and retries these; the others are final).
    pub fn is_transient(&self) -> bool {
        match self {
            GuardError::Resolution { .. } => true,
            GuardError::Transport { source, .. } => match source.status() {
                Some(status) => status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS,
                None => source.is_timeout() || source.is_connect() || source.is_request() || source.is_body(),
            },
            _ => false,
        }
    }

    /// Wraps a reqwest error, surfacing the guard's own refusal when the resolver, the redirect
    /// policy or the connector layer caused it (they reach us boxed inside reqwest's error chain).
    pub fn from_transport(error: reqwest::Error) -> Self {
        let mut cause: Option<&(dyn StdError + 'static)> = error.source();
        while let Some(current) = cause {
            if let Some(refusal) = current.downcast_ref::<GuardError>().and_then(GuardError::duplicate) {
                return refusal;
            }
            cause = current.source();
        }
        let peer = error.url().map(origin).unwrap_or_else(|| "peer".to_owned());
        GuardError::Transport { peer, source: error.without_url() }
    }

    /// The guard's own refusal inside a reqwest error's chain, if there is one.
    pub fn from_transport_ref(error: &reqwest::Error) -> Option<Self> {
        let mut cause: Option<&(dyn StdError + 'static)> = error.source();
        while let Some(current) = cause {
            if let Some(refusal) = current.downcast_ref::<GuardError>().and_then(GuardError::duplicate) {
                return Some(refusal);
            }
            cause = current.source();
        }
        None
    }

    /// A copy of a refusal found by reference in an error chain. `Transport` is never raised
    /// inside reqwest's chain, so it has no copy.
    fn duplicate(&self) -> Option<Self> {
        Some(match self {
            GuardError::InvalidUrl { reason } => GuardError::InvalidUrl { reason },
            GuardError::Scheme { scheme } => GuardError::Scheme { scheme: scheme.clone() },
            GuardError::ForbiddenAddress { peer } => GuardError::ForbiddenAddress { peer: peer.clone() },
            GuardError::Resolution { host, source } => {
                GuardError::Resolution { host: host.clone(), source: io::Error::new(source.kind(), source.to_string()) }
            }
            GuardError::TooManyRedirects { peer, limit } => {
                GuardError::TooManyRedirects { peer: peer.clone(), limit: *limit }
            }
            GuardError::BodyTooLarge { peer, limit } => GuardError::BodyTooLarge { peer: peer.clone(), limit: *limit },
            GuardError::Transport { .. } => return None,
        })
    }
}

impl From<reqwest::Error> for GuardError {
    fn from(error: reqwest::Error) -> Self {
        GuardError::from_transport(error)
    }
}

/// `scheme://host:port` of a URL: the only part of a peer URL that messages and logs may show.
pub fn origin(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port_or_known_default() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// Parses and checks a peer URL, returning it normalised (WHATWG parsing turns `2130706433`,
/// `0x7f.1` and `0177.0.0.1` into `127.0.0.1`, lowercases, and applies IDNA) and without fragment.
/// Refuses other schemes than `https` (and `http` when allowed), userinfo, and IP-literal hosts
/// that are forbidden unless private addresses are allowed or the exact address is exempt. Names
/// are checked at resolution by [`GuardedResolver`], except `localhost` names, refused here already.
///
/// Run it on every URL before a request; [`build_client`]'s redirect policy runs it on every hop.
pub fn check_url(url: impl AsRef<str>, policy: &PeerPolicy) -> Result<Url, GuardError> {
    let mut url = Url::parse(url.as_ref()).map_err(|_| GuardError::InvalidUrl { reason: "not a valid url" })?;
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_http => {}
        other => return Err(GuardError::Scheme { scheme: other.to_owned() }),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(GuardError::InvalidUrl { reason: "credentials are not allowed in peer urls" });
    }
    let port = url.port_or_known_default().ok_or(GuardError::InvalidUrl { reason: "no port" })?;
    let forbidden = match url.host() {
        None => return Err(GuardError::InvalidUrl { reason: "no host" }),
        Some(Host::Domain(name)) => !policy.allow_private_addresses && is_localhost_name(name),
        Some(Host::Ipv4(ip)) => !policy.allows_socket(SocketAddr::new(IpAddr::V4(ip), port)),
        Some(Host::Ipv6(ip)) => !policy.allows_socket(SocketAddr::new(IpAddr::V6(ip), port)),
    };
    if forbidden {
        return Err(GuardError::ForbiddenAddress { peer: origin(&url) });
    }
    url.set_fragment(None);
    Ok(url)
}

/// The redirect policy: every hop is re-checked with [`check_url`] (scheme, userinfo, IP literals;
/// names are checked again by the resolver when the hop connects), at most `max_redirects` hops.
fn redirect_policy(policy: &PeerPolicy) -> reqwest::redirect::Policy {
    let policy = policy.clone();
    reqwest::redirect::Policy::custom(move |attempt| {
        // `previous` starts with the original URL, so it holds one entry per hop already followed.
        if attempt.previous().len() > policy.max_redirects {
            let peer = attempt.previous().last().map(origin).unwrap_or_default();
            return attempt.error(GuardError::TooManyRedirects { peer, limit: policy.max_redirects });
        }
        match check_url(attempt.url().as_str(), &policy) {
            Ok(_) => attempt.follow(),
            Err(refusal) => attempt.error(refusal),
        }
    })
}

/// The HTTP client for peers: guarded resolver (`lookup` replaces the system resolver, for tests),
/// connector check, redirect re-checks, no proxies from the environment, no `Referer`, deadlines,
/// `https` only unless `http` is allowed, rustls. Check each URL with [`check_url`] before using
/// this client (`federation::client::Federation` does).
pub fn build_client(policy: &PeerPolicy, lookup: Option<Arc<dyn Lookup>>) -> Result<reqwest::Client, GuardError> {
    let lookup = lookup.unwrap_or_else(|| Arc::new(SystemLookup));
    reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver::new(policy, lookup)))
        .connector_layer(VerifyPeerLayer { policy: Arc::new(policy.clone()) })
        .connect_timeout(policy.connect_timeout)
        .timeout(policy.timeout)
        .redirect(redirect_policy(policy))
        .referer(false)
        .https_only(!policy.allow_http)
        .user_agent(USER_AGENT)
        .build()
        .map_err(GuardError::from_transport)
}

/// Reads a response body, refusing more than `max` bytes: at once when `Content-Length` says so,
/// otherwise as soon as the streamed body passes the cap (chunked or close-delimited bodies).
pub async fn read_limited(mut response: Response, max: usize) -> Result<Bytes, GuardError> {
    let peer = origin(response.url());
    let too_large = || GuardError::BodyTooLarge { peer: peer.clone(), limit: max };
    if response.content_length().is_some_and(|length| length > max as u64) {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        if chunk.len() > max - body.len() {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::net::Ipv4Addr;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    type BoxError = Box<dyn std::error::Error + Send + Sync>;

    /// Addresses that must be refused, with the reason in a comment where it is not obvious.
    const FORBIDDEN: &[&str] = &[
        "0.0.0.0",
        "0.1.2.3",
        "0.255.255.255",
        "10.0.0.1",
        "10.255.255.255",
        "100.64.0.1",
        "100.127.255.254",
        "127.0.0.1",
        "127.0.0.2",
        "127.255.255.254",
        "169.254.0.1",
        "169.254.169.254", // cloud metadata
        "172.16.0.1",
        "172.31.255.254",
        "192.0.0.1",
        "192.0.0.170", // NAT64 discovery
        "192.0.2.1",
        "192.88.99.1",
        "192.168.0.1",
        "192.168.255.255",
        "198.18.0.1",
        "198.19.255.254",
        "198.51.100.1",
        "203.0.113.1",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "250.1.2.3",
        "255.255.255.255",
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:7f00:1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:0.0.0.0",
        "::127.0.0.1", // IPv4-compatible, deprecated
        "::10.0.0.1",
        "::8.8.8.8", // IPv4-compatible, refused even when public
        "64:ff9b::7f00:1",
        "64:ff9b::a00:1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::1", // local-use NAT64, RFC 8215
        "100::1",       // discard-only, RFC 6666
        "2001::1",      // Teredo
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "2001:2::1",  // benchmarking
        "2001:10::1", // ORCHID
        "2001:20::1", // ORCHIDv2
        "2001:db8::1",
        "2002:7f00:1::",
        "2002:a00:1::1",
        "2002:a9fe:a9fe::",
        "2002:c0a8:101::1",
        "3fff::1",
        "5f00::1", // SRv6 SIDs, outside global unicast
        "fc00::1",
        "fd00::1",
        "fd12:3456:789a::1",
        "fe80::1",
        "febf::1",
        "fec0::1",
        "feff::1",
        "ff02::1",
        "ff05::1:3",
        "::2",
        "1::1",
    ];

    const PUBLIC: &[&str] = &[
        "1.1.1.1",
        "8.8.8.8",
        "9.9.9.9",
        "93.184.216.34",
        "100.63.255.255",
        "100.128.0.1",
        "172.15.255.255",
        "172.32.0.1",
        "192.0.1.1",
        "192.167.255.255",
        "192.169.0.1",
        "198.17.255.255",
        "198.20.0.1",
        "223.255.255.255",
        "2001:200::1",
        "2001:4860:4860::8888",
        "2606:4700:4700::1111",
        "2a00:1450:4001:800::200e",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ];

    #[test]
    fn every_forbidden_address_is_refused() {
        for text in FORBIDDEN {
            let ip: IpAddr = text.parse().unwrap();
            assert!(is_forbidden_ip(ip), "{text} should be forbidden");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for text in PUBLIC {
            let ip: IpAddr = text.parse().unwrap();
            assert!(!is_forbidden_ip(ip), "{text} should be allowed");
        }
    }

    /// IP-literal spellings that the WHATWG parser normalises to a forbidden address.
    const FORBIDDEN_URLS: &[&str] = &[
        "http://127.0.0.1/",
        "http://127.1/",
        "http://127.0.1/",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0x7F.0.0.1/",
        "http://0x7f.1/",
        "http://0177.0.0.1/",
        "http://017700000001/",
        "http://0177.1/",
        "http://127.000.000.001/",
        "http://127.0.0.1./",
        "http://0/",
        "http://0.0.0.0:8080/",
        "http://0x0/",
        "http://%31%32%37.0.0.1/",
        "http://\u{ff11}\u{ff12}\u{ff17}.\u{ff10}.\u{ff10}.\u{ff11}/", // full-width digits
        "http://167772161/",                                           // 10.0.0.1
        "http://0xa9.0xfe.0xa9.0xfe/latest/meta-data/",
        "http://2852039166/",
        "http://[::1]/",
        "http://[0:0:0:0:0:0:0:1]/",
        "http://[::]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[0:0:0:0:0:ffff:127.0.0.1]/",
        "http://[::127.0.0.1]/",
        "http://[64:ff9b::a00:1]/",
        "http://[2002:7f00:1::]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[fec0::1]/",
        "https://[::ffff:a9fe:a9fe]/",
        "https://localhost/",
        "https://LOCALHOST./",
        "https://alice.localhost:8443/",
        "https://a.b.Localhost/",
    ];

    #[test]
    fn forbidden_literal_and_localhost_urls_are_refused() {
        let policy = PeerPolicy::new(false, true);
        for url in FORBIDDEN_URLS {
            match check_url(url, &policy) {
                Err(GuardError::ForbiddenAddress { .. }) => {}
                other => panic!("{url}: expected a forbidden address, got {other:?}"),
            }
        }
    }

    #[test]
    fn private_addresses_pass_when_allowed() {
        let policy = PeerPolicy::new(true, true);
        for url in FORBIDDEN_URLS {
            assert!(check_url(url, &policy).is_ok(), "{url} should pass with private addresses allowed");
        }
    }

    #[test]
    fn malformed_urls_credentials_and_schemes_are_refused() {
        let policy = PeerPolicy::new(false, false);
        type Expected = fn(&GuardError) -> bool;
        let cases: &[(&str, Expected)] = &[
            ("http://example.com/", |e| matches!(e, GuardError::Scheme { .. })),
            ("ftp://example.com/", |e| matches!(e, GuardError::Scheme { .. })),
            ("file:///etc/passwd", |e| matches!(e, GuardError::Scheme { .. })),
            ("gopher://example.com:70/", |e| matches!(e, GuardError::Scheme { .. })),
            ("javascript:alert(1)", |e| matches!(e, GuardError::Scheme { .. })),
            ("ws://example.com/", |e| matches!(e, GuardError::Scheme { .. })),
            ("https://user:pass@example.com/", |e| matches!(e, GuardError::InvalidUrl { .. })),
            ("https://user@example.com/", |e| matches!(e, GuardError::InvalidUrl { .. })),
            ("https://:pass@example.com/", |e| matches!(e, GuardError::InvalidUrl { .. })),
            ("https://[fe80::1%25eth0]/", |e| matches!(e, GuardError::InvalidUrl { .. })),
            ("https://1.2.3.4.5/", |e| matches!(e, GuardError::InvalidUrl { .. })),
            ("https://0x100000000/", |e| matches!(e, GuardError::InvalidUrl { .. })),
            ("https:///", |e| matches!(e, GuardError::InvalidUrl { .. })),
            ("not a url", |e| matches!(e, GuardError::InvalidUrl { .. })),
            ("", |e| matches!(e, GuardError::InvalidUrl { .. })),
        ];
        for (url, expected) in cases {
            match check_url(url, &policy) {
                Err(error) if expected(&error) => {}
                other => panic!("{url:?}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn public_urls_are_normalised() {
        let policy = PeerPolicy::new(false, false);
        let cases = [
            ("HTTPS://Alice.Example.NET/sharings/x?y=1#frag", "https://alice.example.net/sharings/x?y=1"),
            ("https://8.8.8.8:8443/", "https://8.8.8.8:8443/"),
            ("https://134744072/", "https://8.8.8.8/"),
            ("https://[2606:4700:4700::1111]/", "https://[2606:4700:4700::1111]/"),
            ("https://b\u{fc}cher.example/", "https://xn--bcher-kva.example/"),
        ];
        for (input, expected) in cases {
            assert_eq!(check_url(input, &policy).unwrap().as_str(), expected, "{input}");
        }
        assert!(check_url("http://example.com/", &PeerPolicy::new(false, true)).is_ok());
    }

    #[test]
    fn an_exemption_covers_one_exact_socket_address() {
        let policy = PeerPolicy::new(false, true).with_exempt_addr("127.0.0.1:4000".parse().unwrap());
        assert!(check_url("http://127.0.0.1:4000/x", &policy).is_ok());
        assert!(check_url("http://[::ffff:127.0.0.1]:4000/x", &policy).is_ok());
        assert!(check_url("http://127.0.0.1:4001/x", &policy).is_err());
        assert!(check_url("http://127.0.0.2:4000/x", &policy).is_err());
        assert!(check_url("http://127.0.0.1/x", &policy).is_err());
        assert!(check_url("http://localhost:4000/x", &policy).is_err());
    }

    #[test]
    fn error_messages_show_only_the_origin() {
        let policy = PeerPolicy::new(false, true);
        let error = check_url("https://10.0.0.1:8443/secret-path?token=SECRET#frag", &policy).unwrap_err();
        assert_eq!(error.to_string(), "peer address is not allowed: https://10.0.0.1:8443");
        let error = check_url("https://user:SECRET@example.com/", &policy).unwrap_err();
        assert!(!error.to_string().contains("SECRET"));
        let error = check_url("nonsense SECRET", &policy).unwrap_err();
        assert!(!error.to_string().contains("SECRET"));
    }

    #[tokio::test]
    async fn the_resolver_drops_forbidden_answers_and_refuses_when_none_is_left() {
        let lookup = StaticLookup::new()
            .with("evil.test", ["10.0.0.1".parse().unwrap()])
            .with("mixed.test", ["127.0.0.1".parse().unwrap(), "8.8.8.8".parse().unwrap()])
            .with("mapped.test", ["::ffff:169.254.169.254".parse().unwrap()])
            .with("empty.test", []);
        let resolver = GuardedResolver::new(&PeerPolicy::default(), Arc::new(lookup.clone()));
        for host in ["evil.test", "EVIL.TEST.", "mapped.test", "localhost", "alice.localhost"] {
            let refusal = resolver.resolve_host(host).await.unwrap_err();
            assert!(matches!(refusal, GuardError::ForbiddenAddress { .. }), "{host}: {refusal:?}");
        }
        assert_eq!(resolver.resolve_host("mixed.test").await.unwrap(), ["8.8.8.8".parse::<IpAddr>().unwrap()]);
        for host in ["unknown.test", "empty.test"] {
            let failure = resolver.resolve_host(host).await.unwrap_err();
            assert!(matches!(failure, GuardError::Resolution { .. }), "{host}: {failure:?}");
            assert!(failure.is_transient());
        }

        let permissive = GuardedResolver::new(&PeerPolicy::new(true, true), Arc::new(lookup));
        assert_eq!(permissive.resolve_host("evil.test").await.unwrap(), ["10.0.0.1".parse::<IpAddr>().unwrap()]);
        // Answered without the lookup: the static table has no such name.
        assert_eq!(permissive.resolve_host("Alice.Localhost.").await.unwrap(), [IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    }

    /// Fake inner connector: dials the address it is given, like hyper's connector would.
    #[derive(Clone)]
    struct Dial;

    impl tower_service::Service<SocketAddr> for Dial {
        type Response = tokio::net::TcpStream;
        type Error = BoxError;
        type Future = Pin<Box<dyn Future<Output = Result<tokio::net::TcpStream, BoxError>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, addr: SocketAddr) -> Self::Future {
            Box::pin(async move { Ok(tokio::net::TcpStream::connect(addr).await?) })
        }
    }

    #[tokio::test]
    async fn the_connector_layer_refuses_a_connection_to_a_forbidden_address() {
        use tower_layer::Layer;
        use tower_service::Service;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let layer = |policy: PeerPolicy| VerifyPeerLayer { policy: Arc::new(policy) }.layer(Dial);

        let refusal = layer(PeerPolicy::new(false, true)).call(addr).await.unwrap_err();
        assert!(matches!(refusal.downcast_ref::<GuardError>(), Some(GuardError::ForbiddenAddress { .. })));
        assert!(layer(PeerPolicy::new(false, true).with_exempt_addr(addr)).call(addr).await.is_ok());
        assert!(layer(PeerPolicy::new(true, true)).call(addr).await.is_ok());
    }

    #[test]
    fn only_transport_and_resolution_failures_are_transient() {
        let final_errors = [
            GuardError::InvalidUrl { reason: "x" },
            GuardError::Scheme { scheme: "ftp".into() },
            GuardError::ForbiddenAddress { peer: "x".into() },
            GuardError::TooManyRedirects { peer: "x".into(), limit: 3 },
            GuardError::BodyTooLarge { peer: "x".into(), limit: 3 },
        ];
        for error in final_errors {
            assert!(!error.is_transient(), "{error}");
        }
    }
}
