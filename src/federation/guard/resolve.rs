//! The second and third layers of the guard: the DNS resolver that hands the connector only
//! allowed addresses ([`GuardedResolver`], over a [`Lookup`]: the system's or a test table),
//! and the connector layer that checks every fresh connection's remote address before the
//! first byte ([`VerifyPeerLayer`]).

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connected, Connection, HttpInfo};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::addresses::is_localhost_name;
use super::{GuardError, PeerPolicy};

type BoxError = Box<dyn StdError + Send + Sync>;

/// Where [`GuardedResolver`] gets DNS answers: the system resolver in production, a table in tests.
#[async_trait::async_trait]
pub trait Lookup: Send + Sync {
    /// All addresses of `host` (a DNS name, never an IP literal).
    async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>>;
}

/// The system resolver (`getaddrinfo` through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemLookup;

#[async_trait::async_trait]
impl Lookup for SystemLookup {
    async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        Ok(tokio::net::lookup_host((host, 0)).await?.map(|addr| addr.ip()).collect())
    }
}

/// A fixed name → addresses table, for tests: `evil.test` can answer `10.0.0.1` without DNS.
/// Names are matched case-insensitively and without trailing dot; unknown names fail to resolve.
#[derive(Debug, Clone, Default)]
pub struct StaticLookup {
    table: HashMap<String, Vec<IpAddr>>,
}

impl StaticLookup {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, host: &str, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        self.table.insert(normalise_name(host), addrs.into_iter().collect());
        self
    }
}

impl From<HashMap<String, Vec<IpAddr>>> for StaticLookup {
    fn from(table: HashMap<String, Vec<IpAddr>>) -> Self {
        Self { table: table.into_iter().map(|(host, addrs)| (normalise_name(&host), addrs)).collect() }
    }
}

#[async_trait::async_trait]
impl Lookup for StaticLookup {
    async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        self.table
            .get(&normalise_name(host))
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "name not in the static table"))
    }
}

fn normalise_name(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The DNS resolver of the peer client: resolves with a [`Lookup`], drops forbidden addresses
/// from the answer and refuses the name when none is left. `localhost` names answer `127.0.0.1`
/// without any lookup when private addresses are allowed (so `alice.localhost:PORT` works without
/// /etc/hosts) and are refused otherwise.
#[derive(Clone)]
pub struct GuardedResolver {
    lookup: Arc<dyn Lookup>,
    policy: Arc<PeerPolicy>,
}

impl std::fmt::Debug for GuardedResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedResolver").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl GuardedResolver {
    pub fn new(policy: &PeerPolicy, lookup: Arc<dyn Lookup>) -> Self {
        Self { lookup, policy: Arc::new(policy.clone()) }
    }

    /// The allowed addresses of `host`, in the order the lookup gave them.
    pub async fn resolve_host(&self, host: &str) -> Result<Vec<IpAddr>, GuardError> {
        if is_localhost_name(host) {
            return if self.policy.allow_private_addresses {
                Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)])
            } else {
                Err(GuardError::ForbiddenAddress { peer: host.to_owned() })
            };
        }
        let answer = self
            .lookup
            .lookup(host)
            .await
            .map_err(|source| GuardError::Resolution { host: host.to_owned(), source })?;
        if answer.is_empty() {
            let source = io::Error::new(io::ErrorKind::NotFound, "no addresses");
            return Err(GuardError::Resolution { host: host.to_owned(), source });
        }
        let total = answer.len();
        let allowed: Vec<IpAddr> = answer.into_iter().filter(|ip| self.policy.allows_ip(*ip)).collect();
        if allowed.len() < total {
            tracing::debug!(host, dropped = total - allowed.len(), "dropped forbidden addresses from a dns answer");
        }
        if allowed.is_empty() {
            return Err(GuardError::ForbiddenAddress { peer: host.to_owned() });
        }
        Ok(allowed)
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = self.clone();
        Box::pin(async move {
            let allowed = resolver.resolve_host(name.as_str()).await?;
            // Port 0 is replaced by the URL's port.
            let addrs: Addrs = Box::new(allowed.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// Connector layer that refuses a fresh connection whose remote address the policy forbids,
/// before hyper writes the request on it. With the resolver and `check_url` in place it never
/// fires; it is there so that a path around them (a new reqwest code path, a missed URL check)
/// still cannot send a request to a forbidden address.
#[derive(Debug, Clone)]
pub(super) struct VerifyPeerLayer {
    pub(super) policy: Arc<PeerPolicy>,
}

impl<S> tower_layer::Layer<S> for VerifyPeerLayer {
    type Service = VerifyPeer<S>;

    fn layer(&self, inner: S) -> VerifyPeer<S> {
        VerifyPeer { inner, policy: self.policy.clone() }
    }
}

#[derive(Debug, Clone)]
pub(super) struct VerifyPeer<S> {
    inner: S,
    policy: Arc<PeerPolicy>,
}

impl<S, R> tower_service::Service<R> for VerifyPeer<S>
where
    S: tower_service::Service<R, Error = BoxError>,
    S::Response: Connection + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let policy = self.policy.clone();
        let connecting = self.inner.call(request);
        Box::pin(async move {
            let connection = connecting.await?;
            verify_connected(&connection.connected(), &policy)?;
            Ok(connection)
        })
    }
}

fn verify_connected(connected: &Connected, policy: &PeerPolicy) -> Result<(), GuardError> {
    if policy.allow_private_addresses {
        return Ok(());
    }
    let mut extras = ::http::Extensions::new();
    connected.get_extras(&mut extras);
    match extras.get::<HttpInfo>().map(HttpInfo::remote_addr) {
        Some(remote) if policy.allows_socket(remote) => Ok(()),
        Some(remote) => Err(GuardError::ForbiddenAddress { peer: remote.to_string() }),
        // Fail closed: a TCP connection (plain or under rustls) always reports its remote address.
        None => Err(GuardError::ForbiddenAddress { peer: "unknown remote address".to_owned() }),
    }
}
