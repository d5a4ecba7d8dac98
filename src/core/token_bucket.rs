//! `TokenBucket`: a GCRA bucket on governor, behind a [`Gate`](super::gate::Gate) for
//! first-come-first-served waiting, plus a pause for a provider's `Retry-After`.
//!
//! Governor decides (`check_n`: granted, not until an instant, or never); we never use its
//! `until_ready*` futures, which need a timer thread (trouble after `fork`).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::clock::{nanos_of_secs, Clock, Nanos};
use super::error::{check_seconds, InvalidArgument, MAX_SPAN_SECS};
use super::gate::{Check, Resource};

type Gcra = RateLimiter<NotKeyed, InMemoryState, Clock, NoOpMiddleware<Nanos>>;

/// `rate` tokens every `per` seconds, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketConfig {
    /// Tokens added per `per` seconds (> 0).
    pub rate: f64,
    /// The period of `rate`, in seconds (> 0).
    pub per: f64,
    /// The bucket's capacity: the most tokens granted back to back.
    pub burst: u32,
}

impl BucketConfig {
    /// Validates the arguments; `burst` defaults to one period's worth (at least 1).
    ///
    /// # Errors
    /// [`InvalidArgument`] naming `rate`, `per` or `burst`.
    pub fn new(rate: f64, per: f64, burst: Option<u64>) -> Result<Self, InvalidArgument> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(InvalidArgument::new(
                "rate",
                format!("must be a finite number > 0, got {rate}"),
            ));
        }
        check_seconds("per", per, true)?;
        let burst = match burst {
            Some(0) => return Err(InvalidArgument::new("burst", "must be >= 1, got 0")),
            Some(b) => b,
            None if rate.floor() > f64::from(u32::MAX) => {
                // The caller gave `rate`, not `burst`: name what they gave.
                return Err(InvalidArgument::new(
                    "rate",
                    format!(
                        "is too high for the default burst=floor(rate) (at most {}): pass burst",
                        u32::MAX
                    ),
                ));
            }
            None => (rate.floor() as u64).max(1),
        };
        let burst = u32::try_from(burst).map_err(|_| {
            InvalidArgument::new(
                "burst",
                format!("must be at most {}, got {burst}", u32::MAX),
            )
        })?;
        let config = BucketConfig { rate, per, burst };
        if per / rate * f64::from(burst) > MAX_SPAN_SECS {
            return Err(InvalidArgument::new(
                "rate",
                format!(
                    "is too low: a burst of {burst} would take over {MAX_SPAN_SECS:e} s to refill"
                ),
            ));
        }
        if config.interval_ns() == 0 {
            return Err(InvalidArgument::new(
                "rate",
                "is too high: more than one token per nanosecond",
            ));
        }
        Ok(config)
    }

    /// Nanoseconds between two tokens.
    pub fn interval_ns(&self) -> u64 {
        nanos_of_secs(self.per / self.rate)
    }

    fn quota(&self) -> Quota {
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        let interval = Duration::from_nanos(self.interval_ns().max(1));
        // `with_period` is None only for a zero period, excluded above.
        Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst)
    }
}

/// The state of a token bucket: governor's GCRA plus a pause.
pub struct TokenBucketBudget {
    config: BucketConfig,
    gcra: Gcra,
    paused_until: Nanos,
}

impl TokenBucketBudget {
    /// A full bucket.
    pub fn new(config: BucketConfig, clock: Clock) -> Self {
        TokenBucketBudget {
            gcra: RateLimiter::direct_with_clock(config.quota(), clock),
            config,
            paused_until: Nanos::new(0),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BucketConfig {
        &self.config
    }

    /// Grants nothing before `now + seconds` (a later pause wins over an earlier one).
    pub fn pause(&mut self, now: Nanos, seconds: f64) {
        let until = Nanos::new(now.as_u64().saturating_add(nanos_of_secs(seconds)));
        self.paused_until = self.paused_until.max(until);
    }

    /// The end of the current pause, if one is in force at `now`.
    pub fn paused_until(&self, now: Nanos) -> Option<Nanos> {
        (self.paused_until > now).then_some(self.paused_until)
    }
}

impl Resource for TokenBucketBudget {
    type Request = u32;
    type Grant = ();

    fn validate(&self, n: &u32) -> Result<(), InvalidArgument> {
        if *n == 0 {
            return Err(InvalidArgument::new("n", "must be >= 1, got 0"));
        }
        if *n > self.config.burst {
            let burst = self.config.burst;
            return Err(InvalidArgument::new(
                "n",
                format!(
                    "is {n}, more than the bucket's burst of {burst}: it could never be granted"
                ),
            ));
        }
        Ok(())
    }

    fn try_take(&mut self, n: &u32, now: Nanos) -> Check<()> {
        if let Some(until) = self.paused_until(now) {
            return Check::RetryAt(until);
        }
        let Some(n) = NonZeroU32::new(*n) else {
            return Check::Granted(());
        };
        match self.gcra.check_n(n) {
            Ok(Ok(())) => Check::Granted(()),
            Ok(Err(not_until)) => Check::RetryAt(not_until.earliest_possible()),
            // Excluded by `validate`.
            Err(_) => Check::WaitForRelease,
        }
    }

    fn give_back(&mut self, _grant: (), _now: Nanos) {
        // Governor cannot refund: tokens granted at the moment their waiter gave up stay spent,
        // which errs on the safe side (never more than the rate).
    }

    fn after_fork_in_child(&mut self, _intact: bool) {
        // Governor's state is one atomic word and the pause one plain word: never half-written.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(rate: f64, per: f64, burst: Option<u64>) -> (TokenBucketBudget, Clock) {
        let clock = Clock::manual();
        (
            TokenBucketBudget::new(BucketConfig::new(rate, per, burst).unwrap(), clock.clone()),
            clock,
        )
    }

    #[test]
    fn grants_a_burst_then_one_token_per_interval() {
        let (mut b, clock) = bucket(10.0, 1.0, Some(3));
        for _ in 0..3 {
            assert_eq!(b.try_take(&1, clock.now()), Check::Granted(()));
        }
        assert_eq!(
            b.try_take(&1, clock.now()),
            Check::RetryAt(Nanos::new(100_000_000))
        );
        clock.advance(Duration::from_millis(100));
        assert_eq!(b.try_take(&1, clock.now()), Check::Granted(()));
    }

    #[test]
    fn a_large_request_waits_for_enough_tokens() {
        let (mut b, clock) = bucket(10.0, 1.0, Some(5));
        assert_eq!(b.try_take(&5, clock.now()), Check::Granted(()));
        assert_eq!(
            b.try_take(&5, clock.now()),
            Check::RetryAt(Nanos::new(500_000_000))
        );
    }

    #[test]
    fn pause_holds_every_grant_until_it_ends() {
        let (mut b, clock) = bucket(100.0, 1.0, None);
        b.pause(clock.now(), 2.0);
        b.pause(clock.now(), 1.0);
        assert_eq!(
            b.try_take(&1, clock.now()),
            Check::RetryAt(Nanos::new(2_000_000_000))
        );
        clock.advance(Duration::from_secs(2));
        assert_eq!(b.try_take(&1, clock.now()), Check::Granted(()));
    }

    #[test]
    fn a_default_burst_too_large_names_rate() {
        let err = BucketConfig::new(5e9, 10.0, None).unwrap_err();
        assert_eq!(err.name, "rate");
        assert!(BucketConfig::new(5e9, 10.0, Some(10)).is_ok());
    }

    #[test]
    fn bad_configuration_names_the_argument() {
        assert_eq!(BucketConfig::new(0.0, 1.0, None).unwrap_err().name, "rate");
        assert_eq!(
            BucketConfig::new(f64::NAN, 1.0, None).unwrap_err().name,
            "rate"
        );
        assert_eq!(
            BucketConfig::new(1.0, f64::INFINITY, None)
                .unwrap_err()
                .name,
            "per"
        );
        assert_eq!(
            BucketConfig::new(1.0, 1.0, Some(0)).unwrap_err().name,
            "burst"
        );
        assert_eq!(
            BucketConfig::new(1e12, 1.0, Some(1)).unwrap_err().name,
            "rate"
        );
        assert_eq!(BucketConfig::new(0.5, 1.0, None).unwrap().burst, 1);
        // So slow that the GCRA's nanosecond arithmetic would overflow: refused, not unlimited.
        assert_eq!(BucketConfig::new(1.0, 1e12, None).unwrap_err().name, "rate");
        assert_eq!(
            BucketConfig::new(1.0, 2e9, Some(10)).unwrap_err().name,
            "rate"
        );
    }

    #[test]
    fn requests_larger_than_the_burst_are_refused_up_front() {
        let (b, _) = bucket(10.0, 1.0, Some(4));
        assert_eq!(b.validate(&5).unwrap_err().name, "n");
        assert_eq!(b.validate(&0).unwrap_err().name, "n");
        assert!(b.validate(&4).is_ok());
    }
}
