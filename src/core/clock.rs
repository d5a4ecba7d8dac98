//! Time for the core: one monotonic clock for production and a manual one for tests.
//!
//! Every decision in the core takes `now` from a [`Clock`], never from the system directly,
//! so tests can drive time by hand (as governor's `FakeRelativeClock` and aiolimiter's
//! `MockLoopTime` do). Instants are [`Nanos`] since the clock's origin, which is also the
//! instant type governor works with, so the GCRA state and our windows share one time base.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use governor::nanos::Nanos;

/// A source of monotonic time, cheap to clone and shareable across threads.
#[derive(Debug, Clone)]
pub enum Clock {
    /// The process's monotonic clock, counted from the instant the clock was made.
    Monotonic(Instant),
    /// A clock that only moves when told to (tests).
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The real monotonic clock.
    pub fn monotonic() -> Self {
        Clock::Monotonic(Instant::now())
    }

    /// A manual clock starting at zero; advance it with [`Clock::advance`].
    pub fn manual() -> Self {
        Clock::Manual(Arc::new(AtomicU64::new(0)))
    }

    /// The current instant, in nanoseconds since the clock's origin.
    pub fn now(&self) -> Nanos {
        match self {
            Clock::Monotonic(origin) => Nanos::from(origin.elapsed()),
            Clock::Manual(now) => Nanos::new(now.load(Ordering::Acquire)),
        }
    }

    /// Moves a manual clock forward; a no-op on the monotonic clock.
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(now) = self {
            now.fetch_add(nanos_of(by), Ordering::AcqRel);
        }
    }
}

impl governor::clock::Clock for Clock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Clock::now(self)
    }
}

/// A duration as whole nanoseconds, saturating at `u64::MAX` (about 584 years).
pub fn nanos_of(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Seconds (as a caller gives them) to nanoseconds; the caller has validated `secs >= 0`.
pub fn nanos_of_secs(secs: f64) -> u64 {
    // `as` saturates for f64 -> u64, which is the behaviour we want for huge values.
    (secs * 1e9).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = Clock::manual();
        assert_eq!(clock.now().as_u64(), 0);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now().as_u64(), 1_500_000_000);
    }

    #[test]
    fn monotonic_clock_does_not_go_back() {
        let clock = Clock::monotonic();
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
    }

    #[test]
    fn seconds_convert_and_saturate() {
        assert_eq!(nanos_of_secs(0.25), 250_000_000);
        assert_eq!(nanos_of_secs(f64::MAX), u64::MAX);
    }
}
