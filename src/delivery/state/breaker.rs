//! A circuit breaker in front of Redis on the request path.
//!
//! A Redis that refuses connections fails a call at once, but one that hangs (a stopped process,
//! a lost network, a slow fork) makes every call wait its whole `[state.redis] timeout`: every
//! capped decision and every tracking hit is then that much slower, and they pile up. After
//! [`TRIP_AFTER`] calls in a row could not reach Redis, the breaker opens: request-path calls
//! fail at once (caps follow `on_outage`, tracking falls back to the node's own memory) for
//! [`OPEN_FOR`]. Then one call at a time goes through as a probe while the others keep failing
//! at once; the first call that reaches Redis (a probe, or a budget lease, which is never held
//! back) closes the breaker.
//!
//! Lock-free: a decision pays two relaxed atomic loads while the breaker is closed.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Calls in a row that could not reach Redis before the breaker opens.
pub const TRIP_AFTER: u32 = 3;
/// How long an open breaker refuses calls before it lets one probe through. Short: a blip of
/// Redis (a fork, a stolen CPU) that trips the breaker costs at most about this long of
/// `on_outage`, and during a real outage one request in this long waits for its timeout.
pub const OPEN_FOR: Duration = Duration::from_millis(250);

/// What a finished call tells the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing to report.
    None,
    /// This failure opened the breaker.
    Opened,
    /// This success closed it.
    Closed,
}

/// The breaker's state, shared by every task of the node.
#[derive(Debug)]
pub struct Breaker {
    /// The origin of the millisecond clock below.
    base: Instant,
    /// Calls in a row that could not reach Redis.
    failures: AtomicU32,
    /// Milliseconds since `base` (plus one) until which calls are refused; 0 while closed.
    open_until: AtomicU64,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(now: Instant) -> Breaker {
        Breaker {
            base: now,
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
        }
    }

    /// Never 0 (0 means closed).
    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX - 1)
            + 1
    }

    fn open_for(&self, now: Instant) -> u64 {
        self.millis(now)
            .saturating_add(u64::try_from(OPEN_FOR.as_millis()).unwrap_or(u64::MAX))
    }

    /// Whether a call may go to Redis at `now`: always while closed; while open, only the one
    /// caller that first finds the open period over (it probes, and the period restarts for
    /// the others).
    pub fn admit(&self, now: Instant) -> bool {
        let until = self.open_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if self.millis(now) < until {
            return false;
        }
        self.open_until
            .compare_exchange(
                until,
                self.open_for(now),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Whether the breaker is open (calls are refused or probing); the tests' view of it.
    #[cfg(test)]
    fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Relaxed) != 0
    }

    /// A call reached Redis.
    pub fn success(&self) -> Change {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.open_until.load(Ordering::Relaxed) != 0
            && self.open_until.swap(0, Ordering::AcqRel) != 0
        {
            return Change::Closed;
        }
        Change::None
    }

    /// A call could not reach Redis (timeout, refused or dropped connection) at `now`.
    pub fn failure(&self, now: Instant) -> Change {
        let failures = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        if failures < TRIP_AFTER {
            return Change::None;
        }
        match self.open_until.swap(self.open_for(now), Ordering::AcqRel) {
            0 => Change::Opened,
            _ => Change::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A breaker tripped at the returned instant.
    fn tripped() -> (Instant, Breaker) {
        let t0 = Instant::now();
        let b = Breaker::new(t0);
        for _ in 0..TRIP_AFTER {
            b.failure(t0);
        }
        (t0, b)
    }

    #[test]
    fn opens_after_failures_in_a_row_only() {
        let t0 = Instant::now();
        let b = Breaker::new(t0);
        assert_eq!(b.failure(t0), Change::None);
        assert_eq!(b.failure(t0), Change::None);
        assert_eq!(b.success(), Change::None, "a success resets the count");
        for _ in 1..TRIP_AFTER {
            assert_eq!(b.failure(t0), Change::None);
        }
        assert!(b.admit(t0) && !b.is_open());
        assert_eq!(b.failure(t0), Change::Opened);
        assert!(b.is_open());
        assert!(!b.admit(t0) && !b.admit(t0 + OPEN_FOR - MS));
    }

    #[test]
    fn one_probe_at_a_time_then_closes_on_success() {
        let (t0, b) = tripped();
        let later = t0 + OPEN_FOR;
        assert!(b.admit(later), "the period is over: one probe");
        assert!(!b.admit(later), "the others wait for the probe");
        assert!(!b.admit(later + OPEN_FOR - MS));
        assert_eq!(b.success(), Change::Closed);
        assert!(!b.is_open() && b.admit(later));
        assert_eq!(b.success(), Change::None);
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let (t0, b) = tripped();
        let probe = t0 + OPEN_FOR;
        assert!(b.admit(probe));
        assert_eq!(
            b.failure(probe),
            Change::None,
            "still open: not a new opening"
        );
        assert!(!b.admit(probe + OPEN_FOR - MS));
        assert!(b.admit(probe + OPEN_FOR));
    }
}
