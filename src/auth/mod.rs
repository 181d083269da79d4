//! Authentication and authorisation: tokens, permission sets, the owner's passphrase, and the
//! limits that slow down guessing (`throttle`).

pub mod oauth;
pub mod scope;
pub mod throttle;
pub mod token;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

pub use scope::{PermissionSet, Reach, Verb};
pub use throttle::{Attempt, FailureLimiter, Slowdown};
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

/// Constant-time comparison of a presented secret with the expected one.
pub fn secrets_match(presented: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    presented.len() == expected.len() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// What OAuth clients and tokens need of an instance: the store its clients are kept in and
/// the keys its tokens are signed with. `instance::Instance` implements it; `auth` sits below
/// `instance` and never names it.
pub trait Authority: Send + Sync {
    fn store(&self) -> &dyn crate::store::Store;
    fn keys(&self) -> &TokenKeys;
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
}
