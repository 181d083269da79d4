//! Deterministic sample content, for the benchmark (`hearth-bench`) and the tests: bytes in
//! which a shifted, repeated or lost chunk shows.

/// `len` bytes from a small PRNG (xorshift64) seeded with `seed`: the same bytes for the same
/// arguments, different bytes for different seeds.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
