//! Test data for files: path-segment encoding, deterministic bytes, Cozy's base64 MD5.

use base64::Engine;
use md5::Digest;

/// A path or query segment, every non-alphanumeric byte percent-encoded.
pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Deterministic bytes that differ from seed to seed (`hearth::files::sample::pattern`).
pub fn bytes_of(seed: u64, len: usize) -> Vec<u8> {
    hearth::files::sample::pattern(len, seed)
}

/// The base64 MD5 of `data`, as `Content-MD5` and `md5sum` carry it.
pub fn md5_b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data))
}
