//! A counting semaphore as a [`Resource`]: the count behind `Semaphore` and
//! `BoundedSemaphore`, with `threading`'s semantics.

use std::fmt;

use super::clock::Nanos;
use super::error::InvalidArgument;
use super::gate::{Check, Resource};

/// Releasing a bounded semaphore above its initial value (threading's `ValueError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverRelease;

impl fmt::Display for OverRelease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Semaphore released too many times")
    }
}

impl std::error::Error for OverRelease {}

/// The count of a semaphore; `bound` is the initial value of a bounded one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SemaphoreCount {
    value: u64,
    bound: Option<u64>,
}

impl SemaphoreCount {
    /// A semaphore starting at `value`, bounded by it if `bounded`.
    pub fn new(value: u64, bounded: bool) -> Self {
        SemaphoreCount {
            value,
            bound: bounded.then_some(value),
        }
    }

    /// Permits available now.
    pub fn value(&self) -> u64 {
        self.value
    }

    /// The bound of a bounded semaphore.
    pub fn bound(&self) -> Option<u64> {
        self.bound
    }

    /// Adds `n` permits.
    ///
    /// # Errors
    /// [`OverRelease`] if that would pass the bound; nothing changes then.
    pub fn release(&mut self, n: u64) -> Result<(), OverRelease> {
        let value = self.value.checked_add(n).ok_or(OverRelease)?;
        if self.bound.is_some_and(|bound| value > bound) {
            return Err(OverRelease);
        }
        self.value = value;
        Ok(())
    }
}

impl Resource for SemaphoreCount {
    type Request = ();
    type Grant = ();

    fn validate(&self, _request: &()) -> Result<(), InvalidArgument> {
        Ok(())
    }

    fn try_take(&mut self, _request: &(), _now: Nanos) -> Check<()> {
        if self.value == 0 {
            return Check::WaitForRelease;
        }
        self.value -= 1;
        Check::Granted(())
    }

    fn give_back(&mut self, _grant: (), _now: Nanos) {
        // A grant abandoned at the moment it was made: put the permit back, bound or not.
        // Saturating: a release of 2**64 - 1 in between must not wrap the count to 0.
        self.value = self.value.saturating_add(1);
    }

    fn after_fork_in_child(&mut self, _intact: bool) {
        // Like threading.Semaphore, the child keeps the count it inherited: two plain words,
        // never half-written.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_until_empty_then_waits_for_release() {
        let mut sem = SemaphoreCount::new(2, false);
        let now = Nanos::new(0);
        assert_eq!(sem.try_take(&(), now), Check::Granted(()));
        assert_eq!(sem.try_take(&(), now), Check::Granted(()));
        assert_eq!(sem.try_take(&(), now), Check::WaitForRelease);
        sem.release(1).unwrap();
        assert_eq!(sem.value(), 1);
    }

    #[test]
    fn bounded_semaphore_refuses_over_release() {
        let mut sem = SemaphoreCount::new(1, true);
        assert_eq!(sem.release(1), Err(OverRelease));
        assert_eq!(sem.try_take(&(), Nanos::new(0)), Check::Granted(()));
        assert_eq!(sem.release(2), Err(OverRelease));
        assert_eq!(sem.value(), 0, "a refused release changes nothing");
        assert_eq!(sem.release(1), Ok(()));
    }

    #[test]
    fn a_grant_given_back_after_a_huge_release_does_not_wrap() {
        let mut sem = SemaphoreCount::new(1, false);
        assert_eq!(sem.try_take(&(), Nanos::new(0)), Check::Granted(()));
        sem.release(u64::MAX).unwrap();
        sem.give_back((), Nanos::new(0));
        assert_eq!(sem.value(), u64::MAX);
    }

    #[test]
    fn unbounded_release_saturates_into_an_error_not_a_wrap() {
        let mut sem = SemaphoreCount::new(u64::MAX, false);
        assert_eq!(sem.release(1), Err(OverRelease));
    }
}
