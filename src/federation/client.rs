//! The outbound client: the one way hearth sends a request to another instance (or to any URL a
//! user or a peer supplied). Every request goes through the SSRF guard ([`super::guard`]): the
//! URL is checked before sending and on every redirect hop, the guarded resolver and connector
//! check every address, and responses are capped at the policy's `max_response_bytes`. Calls
//! authenticated with a peer's access token refresh it once on 401 through the peer's
//! `POST /auth/access_token` (the `oauth2` crate, over the same guarded client) and retry.
//! Errors name a peer by [`origin`] only: paths and queries may carry secrets.

use std::time::Duration;

use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{AuthType, ClientId, ClientSecret, RefreshToken, TokenResponse, TokenUrl};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

pub use super::guard::origin;
use super::guard::{self, GuardError, Lookup, PeerPolicy};
use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("peer address refused: {0}")]
    Guard(#[from] GuardError),
    /// Connect, TLS, timeout, protocol or body errors; the wrapped error has its URL removed.
    #[error("peer {peer} unreachable")]
    Unreachable {
        peer: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("peer {peer} answered {status}: {reason}")]
    Status { peer: String, status: u16, reason: String },
    #[error("peer {peer} sent an invalid response")]
    BadResponse { peer: String },
    #[error("peer {peer} refused to refresh our credentials")]
    Refresh { peer: String },
    /// The token endpoint could not be reached or answered nonsense: try again later.
    #[error("peer {peer} could not refresh our credentials now")]
    RefreshUnavailable { peer: String },
}

impl FederationError {
    /// Whether the SSRF guard refused the address before any connection (see
    /// [`GuardError::is_policy_refusal`]): the caller's input is at fault, not the peer.
    pub fn is_policy_refusal(&self) -> bool {
        matches!(self, FederationError::Guard(g) if g.is_policy_refusal())
    }

    /// Whether trying again later may succeed (network trouble, 5xx, 408, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            FederationError::Unreachable { .. } | FederationError::BadResponse { .. } => true,
            FederationError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            FederationError::Guard(g) => g.is_transient(),
            FederationError::Refresh { .. } => false,
            FederationError::RefreshUnavailable { .. } => true,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            FederationError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Tokens and client credentials a peer issued to us, used for outbound calls to it (stored on
/// the sharing member they belong to). `Debug` shows the client id only.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerCredentials {
    pub client_id: String,
    pub client_secret: String,
    pub access_token: String,
    pub refresh_token: String,
}

impl std::fmt::Debug for PeerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCredentials").field("client_id", &self.client_id).finish_non_exhaustive()
    }
}

/// The guarded client with its policy, so URL checks and client always agree.
#[derive(Clone)]
pub struct Federation {
    http: reqwest::Client,
    policy: PeerPolicy,
}

impl Federation {
    /// The client for the configuration's `[federation]` switches, with the default deadlines
    /// and response cap.
    pub fn new(config: &Config) -> Result<Federation, GuardError> {
        Federation::with_policy(PeerPolicy::from(&config.federation), None)
    }

    /// A client for `policy`; `lookup` replaces the system resolver (tests name addresses with it).
    pub fn with_policy(
        policy: PeerPolicy,
        lookup: Option<std::sync::Arc<dyn Lookup>>,
    ) -> Result<Federation, GuardError> {
        Ok(Federation { http: guard::build_client(&policy, lookup)?, policy })
    }

    pub fn policy(&self) -> &PeerPolicy {
        &self.policy
    }

    /// The scheme this server's instances are reached with.
    pub fn scheme(&self) -> &'static str {
        if !self.policy.allow_http {
            "https"
        } else {
            "http"
        }
    }

    /// The base URL of one of our own instances.
    pub fn instance_url(&self, domain: &str) -> String {
        format!("{}://{domain}", self.scheme())
    }

    /// Normalises what a person typed as their instance address (`bob.example.net`,
    /// `https://bob.example.net/some/path`) to its origin, and checks it with the SSRF guard.
    pub fn normalise_instance_url(&self, input: &str) -> Result<Url, FederationError> {
        let input = input.trim();
        // `http:/\host` and the like are http URLs to browsers (WHATWG parsing), so to us too;
        // `host:port` parses with `host` as its scheme and gets ours.
        let has_scheme =
            input.contains("://") || Url::parse(input).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
        let with_scheme = if has_scheme { input.to_owned() } else { format!("{}://{input}", self.scheme()) };
        let mut url = guard::check_url(&with_scheme, &self.policy)?;
        url.set_path("/");
        url.set_query(None);
        url.set_fragment(None);
        Ok(url)
    }

    fn join(base: &Url, path: &str) -> Result<Url, FederationError> {
        base.join(path).map_err(|_| FederationError::BadResponse { peer: origin(base) })
    }

    /// The one path of every request: the URL checked, the request sent through the guarded
    /// client (refusals raised inside reqwest by the resolver, the redirect policy or the
    /// connector come back as the guard's), and the body read up to `max` bytes.
    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        max: usize,
    ) -> Result<(u16, bytes::Bytes, Url), FederationError> {
        let (status, _, bytes, url) = self.exchange_with_headers(request, max).await?;
        Ok((status, bytes, url))
    }

    /// [`Federation::exchange`], with the answer's headers.
    async fn exchange_with_headers(
        &self,
        request: reqwest::RequestBuilder,
        max: usize,
    ) -> Result<(u16, reqwest::header::HeaderMap, bytes::Bytes, Url), FederationError> {
        let request = request.build().map_err(|e| FederationError::Guard(GuardError::from_transport(e)))?;
        let url = guard::check_url(request.url().as_str(), &self.policy)?;
        let resp =
            self.http.execute(request).await.map_err(|source| match GuardError::from_transport_ref(&source) {
                Some(refusal) => FederationError::Guard(refusal),
                None => FederationError::Unreachable { peer: origin(&url), source: source.without_url() },
            })?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = guard::read_limited(resp, max).await?;
        Ok((status, headers, bytes, url))
    }

    /// oauth2's HTTP client for token requests: through [`Federation::exchange_with_headers`],
    /// so the guard's checks and the policy's response cap apply to them as to every call
    /// (oauth2's own reqwest client reads a whole answer, however large).
    async fn oauth_exchange(&self, request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, FederationError> {
        let (parts, body) = request.into_parts();
        let url =
            Url::parse(&parts.uri.to_string()).map_err(|_| FederationError::BadResponse { peer: String::new() })?;
        let builder = self.http.request(parts.method, url.clone()).headers(parts.headers).body(body);
        let (status, headers, bytes, _) = self.exchange_with_headers(builder, self.policy.max_response_bytes).await?;
        let mut response = http::Response::new(bytes.to_vec());
        *response.status_mut() =
            http::StatusCode::from_u16(status).map_err(|_| FederationError::BadResponse { peer: origin(&url) })?;
        *response.headers_mut() = headers;
        Ok(response)
    }

    /// Sends `method` to a URL a user or a peer supplied, without credentials, and answers the
    /// status and the body (the policy's cap applies; redirects are followed, each hop checked).
    pub async fn fetch(&self, method: Method, url: &str) -> Result<(u16, bytes::Bytes), FederationError> {
        let url = guard::check_url(url, &self.policy)?;
        let (status, bytes, _) = self.exchange(self.http.request(method, url), self.policy.max_response_bytes).await?;
        Ok((status, bytes))
    }

    /// Sends one request (no token refresh) and returns status and JSON body.
    async fn send<B: serde::Serialize + ?Sized>(
        &self,
        method: Method,
        url: &Url,
        token: Option<&str>,
        body: Option<&B>,
    ) -> Result<(u16, Value), FederationError> {
        let url = guard::check_url(url.as_str(), &self.policy)?;
        let mut req = self.http.request(method, url).header("Accept", "application/json");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let (status, bytes, _) = self.exchange(req, self.policy.max_response_bytes).await?;
        let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Ok((status, value))
    }

    /// An unauthenticated call; non-2xx answers become `Status` errors.
    pub async fn call_open(
        &self,
        method: Method,
        base: &Url,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, FederationError> {
        let url = Self::join(base, path)?;
        let (status, value) = self.send(method, &url, None, body).await?;
        check_status(&url, status, value)
    }

    /// A GET authenticated with a token the peer issued for this one purpose (a recipient
    /// fetching its sharing request back from the owner): at most `max` bytes, all within
    /// `deadline`; no refresh; non-2xx answers become `Status` errors. Answers the raw body,
    /// for the caller to parse into bounded types.
    pub async fn fetch_with_token(
        &self,
        base: &Url,
        path: &str,
        token: &str,
        max: usize,
        deadline: Duration,
    ) -> Result<bytes::Bytes, FederationError> {
        let url = guard::check_url(Self::join(base, path)?.as_str(), &self.policy)?;
        let request = self.http.get(url).header("Accept", "application/json").bearer_auth(token).timeout(deadline);
        let (status, bytes, url) = self.exchange(request, max.min(self.policy.max_response_bytes)).await?;
        if (200..300).contains(&status) {
            return Ok(bytes);
        }
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        check_status(&url, status, value).map(|_| bytes::Bytes::new())
    }

    /// A call authenticated with the credentials a peer gave us. On 401 the access token is
    /// refreshed once (and `creds` updated, so the caller can store it) and the call retried.
    /// The body is anything serialisable, so documents can travel as their raw JSON text.
    pub async fn call_peer<B: serde::Serialize + ?Sized>(
        &self,
        creds: &mut PeerCredentials,
        base: &Url,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Value, FederationError> {
        let url = Self::join(base, path)?;
        let (status, value) = self.send(method.clone(), &url, Some(&creds.access_token), body).await?;
        if status != 401 {
            return check_status(&url, status, value);
        }
        self.refresh(creds, base).await?;
        let (status, value) = self.send(method, &url, Some(&creds.access_token), body).await?;
        check_status(&url, status, value)
    }

    /// `PUT`s a streamed body (a file's content) with the credentials a peer gave us, within
    /// `deadline` (a large file needs more than the usual request deadline). A stream cannot be
    /// sent twice, so a 401 is not retried here: the caller refreshes with its next
    /// [`Federation::call_peer`] and tries again. Non-2xx answers become `Status` errors.
    pub async fn put_stream(
        &self,
        creds: &PeerCredentials,
        base: &Url,
        path: &str,
        headers: &[(&str, String)],
        body: reqwest::Body,
        deadline: Duration,
    ) -> Result<Value, FederationError> {
        let url = Self::join(base, path)?;
        let mut req = self
            .http
            .put(url.clone())
            .header("Accept", "application/json")
            .bearer_auth(&creds.access_token)
            .timeout(deadline)
            .body(body);
        for (name, value) in headers {
            req = req.header(*name, value.as_str());
        }
        let (status, bytes, _) = self.exchange(req, self.policy.max_response_bytes).await?;
        let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        check_status(&url, status, value)
    }

    /// `POST <peer>/auth/access_token` with `grant_type=refresh_token`.
    pub async fn refresh(&self, creds: &mut PeerCredentials, base: &Url) -> Result<(), FederationError> {
        let peer = origin(base);
        let token_url = Self::join(base, "/auth/access_token")?;
        guard::check_url(token_url.as_str(), &self.policy)?;
        let client = BasicClient::new(ClientId::new(creds.client_id.clone()))
            .set_client_secret(ClientSecret::new(creds.client_secret.clone()))
            .set_auth_type(AuthType::RequestBody)
            .set_token_uri(TokenUrl::from_url(token_url));
        let resp = client
            .exchange_refresh_token(&RefreshToken::new(creds.refresh_token.clone()))
            .request_async(&move |request| {
                // An owned client (cheap: the connection pool is shared), so the future is
                // not tied to this borrow.
                let federation = self.clone();
                async move { federation.oauth_exchange(request).await }
            })
            .await
            .map_err(|e| {
                tracing::warn!(peer = %peer, error = %e, "token refresh failed");
                match e {
                    // The peer answered with an OAuth error (invalid_grant...): it no longer
                    // accepts these credentials.
                    oauth2::RequestTokenError::ServerResponse(r)
                        if matches!(
                            r.error(),
                            BasicErrorResponseType::InvalidGrant
                                | BasicErrorResponseType::InvalidClient
                                | BasicErrorResponseType::UnauthorizedClient
                        ) =>
                    {
                        FederationError::Refresh { peer: peer.clone() }
                    }
                    _ => FederationError::RefreshUnavailable { peer: peer.clone() },
                }
            })?;
        creds.access_token = resp.access_token().secret().clone();
        if let Some(r) = resp.refresh_token() {
            creds.refresh_token = r.secret().clone();
        }
        Ok(())
    }

    pub fn timeout() -> Duration {
        Duration::from_secs(30)
    }
}

fn check_status(url: &Url, status: u16, value: Value) -> Result<Value, FederationError> {
    if (200..300).contains(&status) {
        return Ok(value);
    }
    let reason = value
        .get("reason")
        .or_else(|| value.get("error"))
        .and_then(Value::as_str)
        .unwrap_or("no reason given")
        .chars()
        .take(200)
        .collect();
    Err(FederationError::Status { peer: origin(url), status, reason })
}
