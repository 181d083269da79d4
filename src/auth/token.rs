//! JWTs issued by an instance: HS256 with the instance's own secret (the algorithm is pinned,
//! never read from the token), issuer = the instance domain, an audience naming the kind of
//! token, an expiry, and a scope.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::scope::PermissionSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// A client-side application of the owner.
    App,
    /// The command line (`hearth instances token`).
    Cli,
    /// An OAuth access token of a peer instance.
    Access,
    /// An OAuth refresh token of a peer instance.
    Refresh,
    /// The owner's browser session.
    Session,
}

impl Audience {
    pub fn as_str(self) -> &'static str {
        match self {
            Audience::App => "app",
            Audience::Cli => "cli",
            Audience::Access => "access",
            Audience::Refresh => "refresh",
            Audience::Session => "session",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// For OAuth tokens: the client they were issued to (deleting it revokes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl Claims {
    pub fn permissions(&self) -> Option<PermissionSet> {
        self.scope.as_deref().and_then(|s| PermissionSet::parse(s).ok())
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    issuer: String,
}

impl TokenKeys {
    pub fn new(secret: &[u8], issuer: &str) -> Self {
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            issuer: issuer.to_owned(),
        }
    }

    pub fn issue(
        &self,
        aud: Audience,
        sub: &str,
        ttl_secs: u64,
        scope: Option<&PermissionSet>,
        client_id: Option<&str>,
    ) -> String {
        let iat = now_secs();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: aud.as_str().to_owned(),
            sub: sub.to_owned(),
            iat,
            exp: iat.saturating_add(ttl_secs),
            scope: scope.map(ToString::to_string),
            client_id: client_id.map(str::to_owned),
        };
        // Encoding claims we built with a key we own cannot fail.
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).unwrap_or_default()
    }

    /// Verifies signature, algorithm, issuer, expiry and that the audience is one of `auds`.
    pub fn verify(&self, token: &str, auds: &[Audience]) -> Option<Claims> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&auds.iter().map(|a| a.as_str()).collect::<Vec<_>>());
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = 0;
        decode::<Claims>(token, &self.decoding, &v).ok().map(|d| d.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_with_their_key_issuer_and_audience() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef", "alice.localhost");
        let scope = PermissionSet::parse("io.cozy.notes").unwrap();
        let t = keys.issue(Audience::Cli, "cli", 60, Some(&scope), None);
        let c = keys.verify(&t, &[Audience::Cli]).unwrap();
        assert_eq!(c.permissions(), Some(scope));
        assert!(keys.verify(&t, &[Audience::App]).is_none());
        let other_key = TokenKeys::new(b"another secret of enough length!", "alice.localhost");
        assert!(other_key.verify(&t, &[Audience::Cli]).is_none());
        let other_issuer = TokenKeys::new(b"0123456789abcdef0123456789abcdef", "bob.localhost");
        assert!(other_issuer.verify(&t, &[Audience::Cli]).is_none());
        let mut tampered = t.clone();
        tampered.push('x');
        assert!(keys.verify(&tampered, &[Audience::Cli]).is_none());
    }

    #[test]
    fn expired_and_unsigned_tokens_are_refused() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef", "alice.localhost");
        let t = keys.issue(Audience::Cli, "cli", 0, None, None);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(keys.verify(&t, &[Audience::Cli]).is_none());
        // alg=none with the same claims must not pass.
        let claims = r#"{"iss":"alice.localhost","aud":"cli","sub":"x","iat":1,"exp":99999999999}"#;
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!("{}.{}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#), b64.encode(claims));
        assert!(keys.verify(&none, &[Audience::Cli]).is_none());
    }
}
