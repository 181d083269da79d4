//! Authentication and authorisation: tokens, permission sets, the owner's passphrase, and the
//! rate limiter that slows down guessing.

pub mod oauth;
pub mod scope;
pub mod token;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

pub use scope::{PermissionSet, Reach, Verb};
pub use token::{Audience, Claims, TokenKeys};

/// Hashes a passphrase with argon2id and a random salt (PHC string format).
pub fn hash_passphrase(passphrase: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(passphrase.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("failed to hash the passphrase: {e}"))
}

pub fn verify_passphrase(passphrase: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| Argon2::default().verify_password(passphrase.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

/// Random secret of `n` bytes, hex-encoded (at least 128 bits wherever it guards something).
pub fn random_hex(n: usize) -> String {
    use rand::RngCore;
    let mut bytes = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Counts failures per key in a sliding window; once `max` failures are in the window, the key
/// is limited until the oldest failure leaves it. Successes are never slowed down.
pub struct FailureLimiter {
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl FailureLimiter {
    pub fn new(max: u32, window: Duration) -> Self {
        FailureLimiter { max, window, failures: Mutex::new(HashMap::new()) }
    }

    /// Whether `key` has used up its failures.
    pub fn is_limited(&self, key: &str) -> bool {
        self.is_limited_with(key, self.max)
    }

    /// Like `is_limited`, with another budget for this key.
    pub fn is_limited_with(&self, key: &str, max: u32) -> bool {
        let Ok(mut map) = self.failures.lock() else {
            return true;
        };
        let now = Instant::now();
        match map.get_mut(key) {
            Some(list) => {
                list.retain(|t| now.duration_since(*t) < self.window);
                list.len() >= max as usize
            }
            None => false,
        }
    }

    pub fn record_failure(&self, key: &str) {
        if let Ok(mut map) = self.failures.lock() {
            // Bound memory: forget keys whose failures all left the window.
            if map.len() > 10_000 {
                let now = Instant::now();
                map.retain(|_, l| l.iter().any(|t| now.duration_since(*t) < self.window));
            }
            map.entry(key.to_owned()).or_default().push(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passphrases_verify_against_their_hash_only() {
        let h = hash_passphrase("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_passphrase("correct horse", &h));
        assert!(!verify_passphrase("wrong horse", &h));
        assert!(!verify_passphrase("correct horse", "not a hash"));
    }

    #[test]
    fn limiter_blocks_after_max_failures_per_key() {
        let l = FailureLimiter::new(2, Duration::from_secs(60));
        assert!(!l.is_limited("a"));
        l.record_failure("a");
        assert!(!l.is_limited("a"));
        l.record_failure("a");
        assert!(l.is_limited("a"));
        assert!(!l.is_limited("b"));
    }
}
