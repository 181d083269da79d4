//! Slowing down guessing of passphrases, link passwords and codes, without locking the owner out.
//!
//! # Per client: reserve, then verify
//!
//! [`FailureLimiter`] counts failures per key (a client address, a known browser) in a sliding
//! window. A check first *reserves* an attempt ([`FailureLimiter::reserve`]): the reservation
//! counts against the key's budget while the (slow, argon2) verification runs, and becomes a
//! failure or disappears once the outcome is known ([`Attempt::failed`],
//! [`Attempt::succeeded`]). So however many requests arrive at once, at most `max` of them are
//! verified per key and window: checking the budget before the verification and recording the
//! failure after it would let every concurrent request through the check.
//!
//! # Per instance: a slowdown, not a wall
//!
//! Many addresses each staying under their own budget are still a distributed guess. Walling
//! the whole instance off after N failures (as hearth did) hands the attacker a way to lock the
//! owner out. Instead ([`Slowdown`]): once the instance has seen `free` failures in the window,
//! passphrase verifications for browsers that never logged in are *spaced*, at most one per
//! `spacing`, whatever their address; an attempt waits for its turn, and only one whose turn is
//! more than `max_wait` away gets 429 with `Retry-After`. Since every address can hold only its
//! own budget of attempts, the queue is bounded and drains as soon as the guessing stops: the
//! owner waits seconds, not the whole window. A browser that logged in before carries a signed
//! device cookie (OWASP's "device cookie" defence against lockout attacks) and skips the
//! spacing, with a failure budget of its own: the owner's usual browser is never slowed down by
//! anyone else's guesses.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
struct KeyState {
    failures: VecDeque<Instant>,
    /// Attempts reserved and not resolved yet.
    pending: u32,
}

/// Failures per key in a sliding window, with attempts reserved before they are verified.
pub struct FailureLimiter {
    max: u32,
    window: Duration,
    keys: Mutex<HashMap<String, KeyState>>,
}

/// A reserved attempt: resolve it with [`Attempt::succeeded`] or [`Attempt::failed`]; dropped
/// unresolved (an error during verification), it counts as a failure.
#[must_use = "an attempt must be resolved"]
pub struct Attempt<'a> {
    limiter: &'a FailureLimiter,
    key: String,
    resolved: bool,
}

impl FailureLimiter {
    pub fn new(max: u32, window: Duration) -> Self {
        FailureLimiter { max, window, keys: Mutex::new(HashMap::new()) }
    }

    /// Reserves an attempt for `key` within the default budget; `None` when failures and
    /// attempts in flight already use it up.
    pub fn reserve(&self, key: &str) -> Option<Attempt<'_>> {
        self.reserve_with(key, self.max)
    }

    /// Like [`FailureLimiter::reserve`], with another budget for this key.
    pub fn reserve_with(&self, key: &str, max: u32) -> Option<Attempt<'_>> {
        self.reserve_counting(key, max).map(|(attempt, _)| attempt)
    }

    /// Like [`FailureLimiter::reserve_with`], with the key's load (failures in the window and
    /// attempts in flight) just before this reservation, read under the same lock: concurrent
    /// callers each see the ones reserved before them, never the same load twice.
    pub fn reserve_counting(&self, key: &str, max: u32) -> Option<(Attempt<'_>, usize)> {
        let mut keys = self.keys.lock().ok()?;
        let now = Instant::now();
        if keys.len() > 10_000 {
            // Bound memory: forget keys with nothing in the window and nothing in flight.
            keys.retain(|_, s| {
                s.pending > 0 || s.failures.back().is_some_and(|t| now.duration_since(*t) < self.window)
            });
        }
        let state = keys.entry(key.to_owned()).or_default();
        Self::expire(&mut state.failures, now, self.window);
        let load = state.failures.len() + state.pending as usize;
        if load >= max as usize {
            return None;
        }
        state.pending += 1;
        Some((Attempt { limiter: self, key: key.to_owned(), resolved: false }, load))
    }

    /// Failures of `key` in the window plus its attempts in flight.
    pub fn load(&self, key: &str) -> usize {
        let Ok(mut keys) = self.keys.lock() else {
            return usize::MAX;
        };
        match keys.get_mut(key) {
            Some(state) => {
                Self::expire(&mut state.failures, Instant::now(), self.window);
                state.failures.len() + state.pending as usize
            }
            None => 0,
        }
    }

    fn expire(failures: &mut VecDeque<Instant>, now: Instant, window: Duration) {
        while failures.front().is_some_and(|t| now.duration_since(*t) >= window) {
            failures.pop_front();
        }
    }

    fn resolve(&self, key: &str, failed: bool) {
        if let Ok(mut keys) = self.keys.lock() {
            let state = keys.entry(key.to_owned()).or_default();
            state.pending = state.pending.saturating_sub(1);
            if failed {
                state.failures.push_back(Instant::now());
            }
        }
    }
}

impl Attempt<'_> {
    pub fn succeeded(mut self) {
        self.resolved = true;
        self.limiter.resolve(&self.key, false);
    }

    /// Releases the reservation without counting anything (the attempt was not verified).
    pub fn cancel(self) {
        self.succeeded();
    }

    pub fn failed(mut self) {
        self.resolved = true;
        self.limiter.resolve(&self.key, true);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.resolved {
            self.limiter.resolve(&self.key, true);
        }
    }
}

/// The instance-wide spacing of verifications: see the module documentation.
pub struct Slowdown {
    free: usize,
    spacing: Duration,
    max_wait: Duration,
    next: Mutex<Instant>,
}

impl Slowdown {
    pub fn new(free: u32, spacing: Duration, max_wait: Duration) -> Self {
        Slowdown { free: free as usize, spacing, max_wait, next: Mutex::new(Instant::now()) }
    }

    /// The turn of one verification, given the instance's load (failures in the window and
    /// verifications in flight, this one excluded): `Ok(wait)` (zero while under `free`), or
    /// `Err(retry_after)` when the turn is too far away.
    pub fn turn(&self, load: usize) -> Result<Duration, Duration> {
        if load < self.free {
            return Ok(Duration::ZERO);
        }
        let Ok(mut next) = self.next.lock() else {
            return Err(self.max_wait);
        };
        let now = Instant::now();
        let slot = (*next).max(now);
        let wait = slot - now;
        if wait > self.max_wait {
            return Err(wait);
        }
        *next = slot + self.spacing;
        Ok(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_count_against_the_budget_until_resolved() {
        let l = FailureLimiter::new(2, Duration::from_secs(60));
        let a = l.reserve("a").unwrap();
        let b = l.reserve("a").unwrap();
        assert!(l.reserve("a").is_none(), "two in flight use up a budget of two");
        assert!(l.reserve("b").is_some_and(|b| {
            b.succeeded();
            true
        }));
        a.succeeded();
        let c = l.reserve("a").unwrap();
        b.failed();
        assert!(l.reserve("a").is_none());
        drop(c);
        assert_eq!(l.load("a"), 2, "an attempt dropped unresolved counts as a failure");
        assert!(l.reserve("a").is_none());
    }

    #[test]
    fn failures_leave_the_window() {
        let l = FailureLimiter::new(1, Duration::from_millis(30));
        l.reserve("a").unwrap().failed();
        assert!(l.reserve("a").is_none());
        std::thread::sleep(Duration::from_millis(40));
        assert!(l.reserve("a").is_some());
    }

    #[test]
    fn the_slowdown_spaces_turns_once_free_failures_are_used_and_bounds_the_wait() {
        let s = Slowdown::new(3, Duration::from_secs(1), Duration::from_secs(2));
        assert_eq!(s.turn(2), Ok(Duration::ZERO));
        assert_eq!(s.turn(3).unwrap().as_secs(), 0);
        assert!(s.turn(3).unwrap() > Duration::from_millis(900));
        assert!(s.turn(3).unwrap() > Duration::from_millis(1900));
        assert!(s.turn(3).is_err_and(|retry| retry > Duration::from_secs(2)));
    }
}
