//! A retry budget: retries as a share of calls, so that retries cannot amplify a 429 storm.
//!
//! This follows Finagle's `RetryBudget` (`ttl`, `minRetriesPerSec`, `percentCanRetry`) and the
//! gRPC retry throttling proposal (A6): each first attempt earns `ratio` of a retry, each retry
//! spends one, and a floor of `min_retries_per_s * window` retries is always allowed so that a
//! quiet client can still retry at all.
//!
//! # Accounting
//! A retry is allowed when, counting the events of the last `window`,
//!
//! ```text
//! retries + 1 <= ratio * calls + min_retries_per_s * window_in_seconds
//! ```
//!
//! The sums are kept exactly, in integer units of a millionth of a retry (as Finagle scales its
//! deposits), so that e.g. `ratio = 0.1` and 10 calls allow exactly one retry, never 0.99999.
//!
//! "The last `window`" is a ring of [`SLICES`] counters, each covering `window / SLICES`
//! (as Finagle's `WindowedAdder`): memory stays constant whatever the traffic, and an event is
//! counted for between `window * (SLICES - 1) / SLICES` and `window` after it happened (it drops
//! out when its slice is reused). Calls and retries expire the same way.

use std::fmt;
use std::time::Duration;

use super::clock::{nanos_of, Clock};
use super::error::MAX_SPAN_SECS;
use super::fork::{AfterFork, ForkableMutex, Survivors};

/// The number of slices the window is cut into.
pub(super) const SLICES: usize = 10;

/// One retry in budget units (a millionth of a retry is the precision of `ratio`).
const UNIT: u64 = 1_000_000;

/// The largest `ratio` accepted (Finagle's bound on `percentCanRetry`, as a fraction).
pub(super) const MAX_RATIO: f64 = 1000.0;

/// An argument of [`RetryBudget::new`] out of range; `Display` names it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BudgetError {
    /// `ratio` was not a finite number in `[0, 1000]`.
    Ratio(f64),
    /// `min_retries_per_s` was negative or not finite.
    MinRetriesPerSec(f64),
    /// `window` was zero or longer than [`MAX_SPAN_SECS`].
    Window(Duration),
}

impl fmt::Display for BudgetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetError::Ratio(v) => {
                write!(f, "ratio must be a finite number in [0, 1000], got {v}")
            }
            BudgetError::MinRetriesPerSec(v) => {
                write!(f, "min_retries_per_s must be a finite number >= 0, got {v}")
            }
            BudgetError::Window(v) => write!(
                f,
                "window must be between 1e-9 and {MAX_SPAN_SECS:e} seconds, got {} s",
                v.as_secs_f64()
            ),
        }
    }
}

impl std::error::Error for BudgetError {}

/// Totals since the budget was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BudgetStats {
    /// First attempts recorded by [`RetryBudget::record_call`].
    pub calls: u64,
    /// Retries allowed by [`RetryBudget::try_spend_retry`].
    pub retries: u64,
    /// Retries refused by [`RetryBudget::try_spend_retry`].
    pub refused: u64,
}

/// The counts of one slice of the window; `epoch` is the slice's number since the clock's
/// origin, so a stale slice is recognised and reset when its place in the ring comes round.
#[derive(Debug, Clone, Copy, Default)]
struct Slice {
    epoch: u64,
    calls: u64,
    retries: u64,
}

#[derive(Debug, Default)]
struct State {
    ring: [Slice; SLICES],
    /// The latest slice seen, so time never runs backwards inside the ring.
    latest: u64,
    totals: BudgetStats,
}

impl State {
    /// Moves to the slice of `epoch` (or a later one already seen) and returns it, after
    /// resetting it if it held an older slice's counts.
    fn current(&mut self, epoch: u64) -> &mut Slice {
        self.latest = self.latest.max(epoch);
        let latest = self.latest;
        // The remainder is < SLICES, so it fits in usize.
        let slot = &mut self.ring[(latest % SLICES as u64) as usize];
        if slot.epoch != latest {
            *slot = Slice {
                epoch: latest,
                ..Slice::default()
            };
        }
        slot
    }

    /// Calls and retries in the slices of the last window.
    fn live(&self) -> (u64, u64) {
        let live = self
            .ring
            .iter()
            .filter(|s| self.latest - s.epoch < SLICES as u64);
        live.fold((0, 0), |(c, r), s| {
            (c.saturating_add(s.calls), r.saturating_add(s.retries))
        })
    }
}

/// Caps retries at a share of calls over a sliding window; thread-safe (`&self` methods).
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_retries_per_s: f64,
    window: Duration,
    /// Budget units earned per call: `ratio * UNIT`.
    deposit: u64,
    /// Budget units always available: `min_retries_per_s * window * UNIT`.
    reserve: u64,
    slice_nanos: u64,
    clock: Clock,
    state: ForkableMutex<State>,
}

impl RetryBudget {
    /// A budget allowing `ratio` retries per call (0.2 = one retry per five calls) plus
    /// `min_retries_per_s` retries per second, counted over the last `window`.
    ///
    /// # Errors
    /// A [`BudgetError`] naming the first argument out of range: `0 <= ratio <= 1000`,
    /// `min_retries_per_s >= 0`, both finite; `1 ns <= window <= MAX_SPAN_SECS`.
    pub fn new(
        ratio: f64,
        min_retries_per_s: f64,
        window: Duration,
        clock: Clock,
    ) -> Result<Self, BudgetError> {
        if !(ratio.is_finite() && (0.0..=MAX_RATIO).contains(&ratio)) {
            return Err(BudgetError::Ratio(ratio));
        }
        if !(min_retries_per_s.is_finite() && min_retries_per_s >= 0.0) {
            return Err(BudgetError::MinRetriesPerSec(min_retries_per_s));
        }
        if window.is_zero() || window.as_secs_f64() > MAX_SPAN_SECS {
            return Err(BudgetError::Window(window));
        }
        Ok(RetryBudget {
            ratio,
            min_retries_per_s,
            window,
            deposit: units(ratio),
            reserve: units(min_retries_per_s * window.as_secs_f64()),
            slice_nanos: (nanos_of(window) / SLICES as u64).max(1),
            clock,
            state: ForkableMutex::new(State::default()),
        })
    }

    /// Retries allowed per call.
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// Retries per second allowed whatever the calls.
    pub fn min_retries_per_s(&self) -> f64 {
        self.min_retries_per_s
    }

    /// The window over which calls and retries are counted.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Records a first attempt, which earns `ratio` of a retry for the next `window`.
    pub fn record_call(&self) {
        let mut state = self.state.lock();
        let epoch = self.epoch();
        let slot = state.current(epoch);
        slot.calls = slot.calls.saturating_add(1);
        state.totals.calls = state.totals.calls.saturating_add(1);
    }

    /// Spends one retry if the budget allows it; `false` means do not retry.
    pub fn try_spend_retry(&self) -> bool {
        let mut state = self.state.lock();
        // Read the clock under the lock so slices are entered in time order.
        let epoch = self.epoch();
        state.current(epoch);
        let (calls, retries) = state.live();
        let allowed = self.allowance(calls) >= retries.saturating_add(1).saturating_mul(UNIT);
        if allowed {
            let slot = state.current(epoch);
            slot.retries = slot.retries.saturating_add(1);
            state.totals.retries = state.totals.retries.saturating_add(1);
        } else {
            state.totals.refused = state.totals.refused.saturating_add(1);
        }
        allowed
    }

    /// Retries that [`RetryBudget::try_spend_retry`] would allow right now, one after another.
    pub fn available(&self) -> u64 {
        let mut state = self.state.lock();
        let epoch = self.epoch();
        state.current(epoch);
        let (calls, retries) = state.live();
        (self.allowance(calls) / UNIT).saturating_sub(retries)
    }

    /// Totals since the budget was made.
    pub fn stats(&self) -> BudgetStats {
        self.state.lock().totals
    }

    /// The budget, in units, that `calls` in the window plus the reserve allow.
    fn allowance(&self, calls: u64) -> u64 {
        calls
            .saturating_mul(self.deposit)
            .saturating_add(self.reserve)
    }

    /// The number of the slice the clock is in now.
    fn epoch(&self) -> u64 {
        self.clock.now().as_u64() / self.slice_nanos
    }
}

/// A count of retries (finite, `>= 0`) in budget units, rounded, saturating.
fn units(retries: f64) -> u64 {
    // `as` saturates for f64 -> u64, which is what we want for huge values.
    (retries * UNIT as f64).round() as u64
}

impl AfterFork for RetryBudget {
    unsafe fn reset_in_child(&self, _survivors: Survivors) {
        // The counts are plain words, never half-written in a way that matters: keep them;
        // only the lock word needs renewing.
        // SAFETY: the caller guarantees a single-threaded child.
        unsafe { self.state.reset_in_child(|_, _| {}) };
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const WINDOW: Duration = Duration::from_secs(10);

    fn budget(ratio: f64, min: f64) -> (RetryBudget, Clock) {
        let clock = Clock::manual();
        (
            RetryBudget::new(ratio, min, WINDOW, clock.clone()).unwrap(),
            clock,
        )
    }

    fn calls(b: &RetryBudget, n: u64) {
        (0..n).for_each(|_| b.record_call());
    }

    fn spend_all(b: &RetryBudget) -> u64 {
        let mut n = 0;
        while b.try_spend_retry() {
            n += 1;
            assert!(n < 1_000_000, "budget never ran out");
        }
        n
    }

    #[test]
    fn constructor_names_the_bad_argument() {
        let c = Clock::manual;
        let err = |r: Result<RetryBudget, BudgetError>| r.unwrap_err().to_string();
        for bad in [-0.1, 1000.5, f64::NAN, f64::INFINITY] {
            assert!(err(RetryBudget::new(bad, 0.0, WINDOW, c())).starts_with("ratio"));
        }
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            let e = err(RetryBudget::new(0.2, bad, WINDOW, c()));
            assert!(e.starts_with("min_retries_per_s"), "{e}");
        }
        assert!(err(RetryBudget::new(0.2, 0.0, Duration::ZERO, c())).starts_with("window"));
        assert!(RetryBudget::new(MAX_RATIO, 0.0, Duration::from_nanos(1), c()).is_ok());
        assert!(RetryBudget::new(0.0, 0.0, Duration::MAX, c()).is_err());
        let longest = Duration::from_secs(MAX_SPAN_SECS as u64);
        assert!(RetryBudget::new(MAX_RATIO, f64::MAX, longest, c()).is_ok());
    }

    #[test]
    fn retries_run_out_at_ratio_times_calls() {
        let (b, _) = budget(0.2, 0.0);
        assert!(!b.try_spend_retry(), "no calls, no floor: no retry");
        calls(&b, 10);
        assert_eq!(b.available(), 2);
        assert_eq!(spend_all(&b), 2);
        assert_eq!(b.available(), 0);
        assert_eq!(
            b.stats(),
            BudgetStats {
                calls: 10,
                retries: 2,
                refused: 2
            }
        );
        calls(&b, 5);
        assert_eq!(spend_all(&b), 1);
    }

    #[test]
    fn fractions_of_a_retry_are_exact() {
        let (b, _) = budget(0.1, 0.0);
        calls(&b, 9);
        assert_eq!(b.available(), 0);
        calls(&b, 1);
        assert_eq!(spend_all(&b), 1, "0.1 * 10 is exactly one retry");
        let (b, _) = budget(0.7, 0.0);
        calls(&b, 100);
        assert_eq!(spend_all(&b), 70);
        let (b, _) = budget(3.0, 0.0);
        calls(&b, 2);
        assert_eq!(
            spend_all(&b),
            6,
            "a ratio above 1 allows several retries per call"
        );
    }

    #[test]
    fn the_floor_allows_retries_without_calls() {
        let (b, clock) = budget(0.0, 0.5);
        assert_eq!(spend_all(&b), 5, "0.5 per second over 10 s");
        calls(&b, 1000);
        assert_eq!(spend_all(&b), 0, "a zero ratio earns nothing");
        clock.advance(WINDOW);
        assert_eq!(spend_all(&b), 5, "the floor comes back with the window");
        let (b, _) = budget(0.5, 0.2);
        calls(&b, 4);
        assert_eq!(spend_all(&b), 4, "ratio and floor add up: 2 + 2");
    }

    #[test]
    fn the_budget_recovers_as_the_window_slides() {
        let (b, clock) = budget(0.5, 0.0);
        calls(&b, 4); // t = 0
        clock.advance(Duration::from_secs(5));
        assert_eq!(spend_all(&b), 2); // retries at t = 5
        calls(&b, 2); // t = 5
        assert_eq!(spend_all(&b), 1);
        // The slice of t = 0 is counted until t = 10, then the four calls expire, but the
        // retries of t = 5 are still counted against the two calls of t = 5.
        clock.advance(Duration::from_millis(4999));
        assert_eq!(b.available(), 0);
        clock.advance(Duration::from_millis(1));
        calls(&b, 10);
        assert_eq!(
            b.available(),
            6 - 3,
            "(2 + 10) * 0.5 minus the 3 live retries"
        );
        clock.advance(Duration::from_secs(5));
        assert_eq!(b.available(), 5, "only the calls of t = 10 remain");
        clock.advance(WINDOW);
        assert_eq!(b.available(), 0);
        assert_eq!(
            b.stats(),
            BudgetStats {
                calls: 16,
                retries: 3,
                refused: 2
            }
        );
    }

    #[test]
    fn events_expire_within_the_last_slice_of_the_window() {
        let (b, clock) = budget(1.0, 0.0);
        clock.advance(Duration::from_millis(500)); // mid-slice
        calls(&b, 1);
        clock.advance(Duration::from_millis(9499)); // t = 9.999 s, same ring turn
        assert_eq!(b.available(), 1);
        clock.advance(Duration::from_millis(1)); // t = 10 s: 9.5 s after the call
        assert_eq!(b.available(), 0);
    }

    #[test]
    fn sixteen_threads_never_exceed_the_allowance() {
        let (b, clock) = budget(0.25, 0.3); // floor: 3 retries per window
        let b = Arc::new(b);
        let granted: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|t| {
                    let b = Arc::clone(&b);
                    s.spawn(move || {
                        let mut granted = 0;
                        for i in 0..500 {
                            if (i + t) % 3 == 0 {
                                b.record_call();
                            }
                            granted += u64::from(b.try_spend_retry());
                        }
                        granted
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let stats = b.stats();
        let allowance = stats.calls / 4 + 3; // 0.25 * calls + floor, rounded down
        assert_eq!(stats.retries, granted);
        assert!(
            granted <= allowance,
            "{granted} retries > allowance {allowance}"
        );
        assert_eq!(stats.retries + stats.refused, 16 * 500);
        // Whatever was refused early, the budget is spent exactly to the allowance.
        assert_eq!(granted + spend_all(&b), allowance);
        // A new window: again at most the allowance, with the clock moving under the threads.
        clock.advance(WINDOW);
        let before = b.stats();
        std::thread::scope(|s| {
            for _ in 0..16 {
                let (b, clock) = (Arc::clone(&b), clock.clone());
                s.spawn(move || {
                    for _ in 0..100 {
                        b.record_call();
                        b.try_spend_retry();
                        clock.advance(Duration::from_micros(1));
                    }
                });
            }
        });
        let after = b.stats();
        let new_calls = after.calls - before.calls;
        assert!(after.retries - before.retries <= new_calls / 4 + 3);
    }
}
