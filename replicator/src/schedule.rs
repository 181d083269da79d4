//! When replication to a peer runs, and how the link is doing: the schedule of one
//! (sharing, member) link as pure state and functions. No clock and no randomness of its own:
//! the caller passes the time (milliseconds on any monotonic clock) and the jitter (any `u64`,
//! random in production, seeded in the simulation). `src/sync` keeps one [`LinkSchedule`] per
//! link and executes what it says; `tests/simulation.rs` drives the same state through faults.
//!
//! The rule: never give up. CouchDB's replicator marks a job `failed` after a few crashes in a
//! row and waits for someone to restart it; a sharing link is retried forever instead, backing
//! off exponentially with jitter ([`Backoff`]) up to a cap, so a peer that comes back after a
//! week is caught up within `max_ms`. After [`DOWN_AFTER`] failures in a row the link shows as
//! [`Health::Down`], and is still retried.

use serde::Serialize;

/// Failures in a row after which a link is reported [`Health::Down`] (it is still retried).
pub const DOWN_AFTER: u32 = 5;

/// The longest wait, in milliseconds, before retrying a link refused before it ever ran (see
/// [`LinkSchedule::refused`]).
pub const ACTIVATING_RETRY_MS: u64 = 50;

/// Exponential backoff with jitter: the wait before the try after `attempts` failures is
/// `base_ms * 2^attempts`, capped at `max_ms`, then a point in the upper half of that, chosen by
/// the jitter, so that retries of many links don't fire together ("equal jitter").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Backoff {
    /// The wait in milliseconds; within `[cap / 2, cap]` where `cap = min(base * 2^attempts,
    /// max)` (at least 1 ms).
    pub fn delay_ms(&self, attempts: u32, jitter: u64) -> u64 {
        let cap = self.base_ms.saturating_mul(1u64 << attempts.min(32)).min(self.max_ms.max(1)).max(1);
        let low = cap / 2;
        low + jitter % (cap - low + 1)
    }
}

/// The state of replication to one member, as the status route and CLI show it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not replicated by this process yet, and no document refused.
    #[default]
    Idle,
    /// The last run delivered everything, and the member refuses none of the documents sent.
    Healthy,
    /// Runs succeed, but the member refused documents that it has not written since (or, for
    /// file content, the link has waited too long on the same files): its copy is incomplete.
    Degraded,
    /// The last run failed; retrying with backoff.
    Retrying,
    /// [`DOWN_AFTER`] runs in a row failed; still retried.
    Down,
}

impl Health {
    /// The health to show, given whether the member refuses documents it was sent: a link
    /// that runs well but whose member refuses documents is `Degraded`, never `Healthy`. (A
    /// content link passes as well whether it has waited too long on the same files, see
    /// `content::Stall`: its member's copy lacks them just the same.)
    pub fn with_refusals(self, refused: bool) -> Health {
        match self {
            Health::Idle | Health::Healthy if refused => Health::Degraded,
            h => h,
        }
    }

    /// The worse of two links' healths, for one member whose documents and file contents
    /// travel on two links: `down` before `retrying` before `degraded` before `healthy` before
    /// `idle` (a link that never ran hides nothing the other shows).
    pub fn worst(self, other: Health) -> Health {
        fn rank(h: Health) -> u8 {
            match h {
                Health::Idle => 0,
                Health::Healthy => 1,
                Health::Degraded => 2,
                Health::Retrying => 3,
                Health::Down => 4,
            }
        }
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

/// The schedule of one link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkSchedule {
    /// `Idle`, `Healthy`, `Retrying` or `Down` (`Degraded` comes from the refusals, see
    /// [`Health::with_refusals`]).
    pub health: Health,
    /// A run is in flight.
    pub running: bool,
    /// Failed runs in a row.
    pub attempts: u32,
    /// No run starts before this time (ms), unless forced; `None`: any time.
    pub next_at_ms: Option<u64>,
    /// Something changed while a run was in flight, or a run was asked for: run (again) even if
    /// the feed seems delivered.
    pub dirty: bool,
}

impl LinkSchedule {
    /// Whether a run may start at `now_ms`. While a run is in flight none starts, and the link
    /// is marked to run again once it ends.
    pub fn due(&mut self, now_ms: u64) -> bool {
        if self.running {
            self.dirty = true;
            return false;
        }
        self.next_at_ms.is_none_or(|t| t <= now_ms)
    }

    /// Run now, even while backing off (`hearth sharings sync`, `POST /sharings/:id/sync`).
    pub fn force(&mut self) {
        self.next_at_ms = None;
        self.dirty = true;
    }

    /// Whether a run was asked for since the last look (and forget it).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// A run starts.
    pub fn started(&mut self) {
        self.running = true;
    }

    /// The run delivered everything: the link is healthy. Answers whether to run again at once
    /// (something was asked for during the run).
    pub fn succeeded(&mut self) -> bool {
        self.running = false;
        self.health = Health::Healthy;
        self.attempts = 0;
        self.next_at_ms = None;
        self.take_dirty()
    }

    /// The run failed at `now_ms`: retrying (down after [`DOWN_AFTER`] in a row), the next try
    /// after the backoff for this many failures. Never gives up.
    pub fn failed(&mut self, now_ms: u64, backoff: &Backoff, jitter: u64) {
        self.running = false;
        self.attempts = self.attempts.saturating_add(1);
        self.health = if self.attempts >= DOWN_AFTER { Health::Down } else { Health::Retrying };
        self.next_at_ms = Some(now_ms.saturating_add(backoff.delay_ms(self.attempts - 1, jitter)));
    }

    /// The run delivered what it could and waits for something outside the link (file
    /// content not on this instance yet, say): look again `ms` after `now_ms`. Not a failure:
    /// the health and the failures in a row stay as they were.
    pub fn wait(&mut self, now_ms: u64, ms: u64) {
        self.running = false;
        self.next_at_ms = Some(now_ms.saturating_add(ms));
    }

    /// The peer refused the run, or is not ready for it (HTTP 403 or 503), at `now_ms`. A member
    /// that has just accepted answers the owner before it stores its own side, so the first run
    /// of a link that never ran may be refused for a moment: that first refusal is retried
    /// within [`ACTIVATING_RETRY_MS`], not after the backoff (in one `hearth-bench servers` run,
    /// a 20,000-document initial sync took 1.84 s this way against 2.29 s). Any other refusal
    /// is a failure as [`LinkSchedule::failed`] says.
    pub fn refused(&mut self, now_ms: u64, backoff: &Backoff, jitter: u64) {
        let activating = self.health == Health::Idle && self.attempts == 0;
        let backoff = if activating {
            Backoff { base_ms: ACTIVATING_RETRY_MS.min(backoff.base_ms), ..*backoff }
        } else {
            *backoff
        };
        self.failed(now_ms, &backoff, jitter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff { base_ms: 100, max_ms: 10_000 };

    #[test]
    fn waiting_for_something_else_is_no_failure() {
        let mut l = LinkSchedule::default();
        l.started();
        l.failed(0, &B, 0);
        l.started();
        l.wait(1_000, 250);
        assert_eq!((l.health, l.attempts, l.running), (Health::Retrying, 1, false));
        assert!(!l.due(1_249) && l.due(1_250));
    }

    #[test]
    fn only_the_first_refusal_of_a_link_that_never_ran_is_retried_at_once() {
        let slow = Backoff { base_ms: 5_000, max_ms: 60_000 };
        let mut fresh = LinkSchedule::default();
        fresh.started();
        fresh.refused(1_000, &slow, u64::MAX);
        assert_eq!(fresh.health, Health::Retrying);
        assert!(fresh.next_at_ms.is_some_and(|t| t <= 1_000 + ACTIVATING_RETRY_MS), "{fresh:?}");
        // Refused again: no longer the moment of an acceptance, the backoff applies.
        fresh.started();
        fresh.refused(2_000, &slow, u64::MAX);
        assert!(fresh.next_at_ms.is_some_and(|t| t >= 2_000 + slow.base_ms), "{fresh:?}");
        // A link that ran before and is refused now (a member made read-only, say) backs off.
        let mut ran = LinkSchedule::default();
        ran.started();
        ran.succeeded();
        ran.started();
        ran.refused(1_000, &slow, 0);
        assert!(ran.next_at_ms.is_some_and(|t| t >= 1_000 + slow.base_ms / 2), "{ran:?}");
        assert_eq!(ran.attempts, 1);
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap_and_jitters_within_the_upper_half() {
        for attempts in 0..70 {
            let cap = 100u64.saturating_mul(1 << attempts.min(32)).min(10_000);
            for jitter in [0, 1, 7, 12_345, u64::MAX / 3, u64::MAX] {
                let d = B.delay_ms(attempts, jitter);
                assert!(
                    d >= cap / 2 && d <= cap,
                    "attempt {attempts}, jitter {jitter}: {d} outside [{}, {cap}]",
                    cap / 2
                );
            }
            // Every point of the range is reachable.
            assert_eq!(B.delay_ms(attempts, 0), cap / 2);
            assert_eq!(B.delay_ms(attempts, cap - cap / 2), cap);
        }
        assert_eq!(Backoff { base_ms: 0, max_ms: 0 }.delay_ms(3, 5), 1, "never a zero wait");
    }

    #[test]
    fn a_failing_link_is_retried_forever_and_reported_down_after_five_failures() {
        let mut s = LinkSchedule::default();
        let mut now = 0;
        for failure in 1..=1000u32 {
            assert!(s.due(now), "failure {failure}: a due link starts");
            s.started();
            assert!(!s.due(now), "no second run while one is in flight");
            s.failed(now, &B, u64::from(failure) * 7919);
            let expected = if failure >= DOWN_AFTER { Health::Down } else { Health::Retrying };
            assert_eq!((s.health, s.attempts), (expected, failure));
            let next = s.next_at_ms.expect("a failed link has a next try");
            assert!(next > now && next <= now + B.max_ms, "failure {failure}: retried within the cap");
            assert!(!s.due(next - 1), "not before its time");
            now = next;
        }
        // A success heals it at once, and the run asked for during the flight happens.
        s.due(now);
        s.started();
        s.due(now);
        assert!(s.succeeded());
        assert_eq!((s.health, s.attempts, s.next_at_ms), (Health::Healthy, 0, None));
        assert!(!s.succeeded(), "asked once, run once");
    }

    #[test]
    fn forcing_a_run_skips_the_backoff() {
        let mut s = LinkSchedule::default();
        s.started();
        s.failed(1_000, &B, 0);
        assert!(!s.due(1_000));
        s.force();
        assert!(s.due(1_000) && s.take_dirty() && !s.take_dirty());
    }

    #[test]
    fn a_member_shows_the_worse_of_its_two_links() {
        use Health::*;
        for (a, b, shown) in [
            (Idle, Idle, Idle),
            (Idle, Healthy, Healthy),
            (Healthy, Degraded, Degraded),
            (Retrying, Degraded, Retrying),
            (Down, Retrying, Down),
            (Healthy, Down, Down),
        ] {
            assert_eq!(a.worst(b), shown, "{a:?} and {b:?}");
            assert_eq!(b.worst(a), shown, "{b:?} and {a:?}");
        }
    }

    #[test]
    fn refusals_degrade_a_healthy_link_but_not_a_failing_one() {
        for (health, refused, shown) in [
            (Health::Idle, false, Health::Idle),
            (Health::Idle, true, Health::Degraded),
            (Health::Healthy, true, Health::Degraded),
            (Health::Healthy, false, Health::Healthy),
            (Health::Retrying, true, Health::Retrying),
            (Health::Down, true, Health::Down),
        ] {
            assert_eq!(health.with_refusals(refused), shown, "{health:?}, refused {refused}");
        }
    }
}
