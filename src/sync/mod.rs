//! Background work between instances: the durable outbox of notifications (revocations,
//! credential changes) and, later, the replication workers.

pub mod manager;
pub mod outbox;
pub mod replication;

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter: `base * 2^attempts`, capped at `max`, then a random point
/// in its upper half so that retries of many items don't fire together.
pub fn backoff(attempts: u32, base_ms: u64, max_ms: u64) -> Duration {
    let exp = base_ms.saturating_mul(1u64 << attempts.min(32)).min(max_ms.max(1));
    let low = exp / 2;
    Duration::from_millis(rand::thread_rng().gen_range(low..=exp.max(low)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempts in 0..40 {
            let d = backoff(attempts, 100, 10_000).as_millis() as u64;
            let exp = (100u64.saturating_mul(1 << attempts.min(32))).min(10_000);
            assert!(d >= exp / 2 && d <= exp, "attempt {attempts}: {d}");
        }
    }
}
