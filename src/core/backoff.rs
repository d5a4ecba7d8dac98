//! The delay schedule of the retry decorator: exponential backoff with jitter, capped.
//!
//! The n-th retry (counting from 0) waits `min(base * factor^n, max_delay)`, then jittered as in
//! AWS's "Exponential Backoff And Jitter" (Marc Brooker, 2015) and tenacity's
//! `wait_random_exponential`. When the provider names a wait (`Retry-After`), the delay is at
//! least that wait; when that wait is longer than the schedule would ever allow, the schedule
//! gives up at once rather than retry into a certain second 429.
//!
//! Pure: [`Schedule::next`] decides, the caller sleeps. Randomness comes from a caller's
//! [`fastrand::Rng`] so tests can seed it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::error::MAX_SPAN_SECS;

/// How a delay is randomised, so that many clients that failed together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Uniform in `[0, d]` ("full jitter"): the least contention, the default.
    #[default]
    Full,
    /// `d/2` plus uniform in `[0, d/2]` ("equal jitter"): never much shorter than `d`.
    Equal,
    /// Exactly `d`.
    None,
}

impl Jitter {
    /// The name this jitter parses from: `"full"`, `"equal"` or `"none"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Jitter::Full => "full",
            Jitter::Equal => "equal",
            Jitter::None => "none",
        }
    }

    /// Applies the jitter to a delay of `secs` seconds (finite, `>= 0`).
    fn apply(self, secs: f64, rng: &mut fastrand::Rng) -> f64 {
        match self {
            Jitter::Full => secs * rng.f64_inclusive(),
            Jitter::Equal => secs / 2.0 + secs / 2.0 * rng.f64_inclusive(),
            Jitter::None => secs,
        }
    }
}

impl fmt::Display for Jitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A jitter name that is none of `"full"`, `"equal"` or `"none"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseJitterError {
    /// The name that was given.
    pub given: String,
}

impl fmt::Display for ParseJitterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "jitter must be 'full', 'equal' or 'none', not {:?}",
            self.given
        )
    }
}

impl std::error::Error for ParseJitterError {}

impl FromStr for Jitter {
    type Err = ParseJitterError;

    /// Parses `"full"`, `"equal"` or `"none"`, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Jitter::Full, Jitter::Equal, Jitter::None]
            .into_iter()
            .find(|j| j.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseJitterError {
                given: s.to_owned(),
            })
    }
}

/// An argument of [`Schedule::new`] out of range; `Display` names the argument and the rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScheduleError {
    /// `max_tries` was 0.
    MaxTries(u32),
    /// `base` was negative or not finite.
    Base(f64),
    /// `factor` was below 1 or not finite.
    Factor(f64),
    /// `max_delay` was negative, not finite, or above [`MAX_SPAN_SECS`] (which `time.sleep`
    /// still takes: it refuses about 9.2e9 s).
    MaxDelay(f64),
    /// `max_time` was not positive or not finite.
    MaxTime(f64),
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleError::MaxTries(v) => write!(f, "max_tries must be >= 1, got {v}"),
            ScheduleError::Base(v) => write!(f, "base must be a finite number >= 0, got {v}"),
            ScheduleError::Factor(v) => write!(f, "factor must be a finite number >= 1, got {v}"),
            ScheduleError::MaxDelay(v) => {
                write!(
                    f,
                    "max_delay must be a number of seconds in [0, {MAX_SPAN_SECS:e}], got {v}"
                )
            }
            ScheduleError::MaxTime(v) => {
                write!(f, "max_time must be None or a finite number > 0, got {v}")
            }
        }
    }
}

impl std::error::Error for ScheduleError {}

/// Why [`Schedule::next`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpReason {
    /// `max_tries` attempts have been made.
    MaxTries,
    /// The next delay would end past `max_time` since the first attempt.
    MaxTime,
    /// The provider's named wait is longer than `max_delay`, or would end past `max_time`:
    /// retrying sooner would only meet another 429.
    RetryAfterTooLong,
}

impl fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GiveUpReason::MaxTries => "max_tries reached",
            GiveUpReason::MaxTime => "the next delay would pass max_time",
            GiveUpReason::RetryAfterTooLong => {
                "the provider's Retry-After is longer than max_delay or would pass max_time"
            }
        })
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Sleep this long, then try again.
    Retry(Duration),
    /// Stop and re-raise the last error.
    GiveUp(GiveUpReason),
}

/// A validated backoff schedule. Times are seconds, as the Python API takes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    max_tries: u32,
    base: f64,
    factor: f64,
    max_delay: f64,
    max_time: Option<f64>,
    jitter: Jitter,
}

impl Schedule {
    /// A schedule of at most `max_tries` attempts (the first included), the n-th retry waiting
    /// `min(base * factor^n, max_delay)` seconds jittered, all within `max_time` seconds of the
    /// first attempt if given.
    ///
    /// # Errors
    /// A [`ScheduleError`] naming the first argument out of range: `max_tries >= 1`,
    /// `base >= 0`, `factor >= 1`, `0 <= max_delay <= MAX_SPAN_SECS`, `max_time > 0`, all
    /// finite. So every delay is finite and at most `max_delay`, whatever `base` and `factor`.
    pub fn new(
        max_tries: u32,
        base: f64,
        factor: f64,
        max_delay: f64,
        max_time: Option<f64>,
        jitter: Jitter,
    ) -> Result<Self, ScheduleError> {
        if max_tries == 0 {
            return Err(ScheduleError::MaxTries(max_tries));
        }
        if !(base.is_finite() && base >= 0.0) {
            return Err(ScheduleError::Base(base));
        }
        if !(factor.is_finite() && factor >= 1.0) {
            return Err(ScheduleError::Factor(factor));
        }
        if !(0.0..=MAX_SPAN_SECS).contains(&max_delay) {
            return Err(ScheduleError::MaxDelay(max_delay));
        }
        if let Some(t) = max_time.filter(|t| !(t.is_finite() && *t > 0.0)) {
            return Err(ScheduleError::MaxTime(t));
        }
        Ok(Schedule {
            max_tries,
            base,
            factor,
            max_delay,
            max_time,
            jitter,
        })
    }

    /// Attempts allowed, the first included.
    pub fn max_tries(&self) -> u32 {
        self.max_tries
    }

    /// The first retry's delay before jitter, in seconds.
    pub fn base(&self) -> f64 {
        self.base
    }

    /// The growth of the delay from one retry to the next.
    pub fn factor(&self) -> f64 {
        self.factor
    }

    /// The cap on one delay before jitter, in seconds.
    pub fn max_delay(&self) -> f64 {
        self.max_delay
    }

    /// The cap on the time from the first attempt to the last retry's start, in seconds.
    pub fn max_time(&self) -> Option<f64> {
        self.max_time
    }

    /// The jitter applied to each delay.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The delay before the retry numbered `retry_index` (0 for the first retry), in seconds,
    /// before jitter: `min(base * factor^retry_index, max_delay)`, saturating at `max_delay`
    /// however large the power grows.
    pub fn capped_secs(&self, retry_index: u32) -> f64 {
        if self.base == 0.0 {
            return 0.0; // 0 * inf would be NaN
        }
        let raw = self.base * self.factor.powf(f64::from(retry_index));
        // `raw` is +inf on overflow, never NaN (base > 0, factor >= 1); `min` caps it.
        raw.min(self.max_delay)
    }

    /// The jittered delay before the retry numbered `retry_index` (0 for the first retry).
    pub fn delay(&self, retry_index: u32, rng: &mut fastrand::Rng) -> Duration {
        secs_to_duration(self.jitter.apply(self.capped_secs(retry_index), rng))
    }

    /// Decides what follows a failed attempt.
    ///
    /// `tries_so_far` counts the attempts made, the failed one included (1 after the first
    /// failure); `elapsed` is the time since the first attempt started; `retry_after` is the
    /// wait the provider named, if any (pass `None` to ignore it).
    ///
    /// Gives up when `max_tries` attempts have been made; when the provider's wait is longer
    /// than `max_delay` or would end past `max_time`; or when the delay would end past
    /// `max_time`. Otherwise retries after the jittered delay, or the provider's wait if that
    /// is longer.
    pub fn next(
        &self,
        tries_so_far: u32,
        elapsed: Duration,
        retry_after: Option<Duration>,
        rng: &mut fastrand::Rng,
    ) -> Decision {
        if tries_so_far >= self.max_tries {
            return Decision::GiveUp(GiveUpReason::MaxTries);
        }
        if let Some(wait) = retry_after {
            if wait > secs_to_duration(self.max_delay) || self.passes_max_time(elapsed, wait) {
                return Decision::GiveUp(GiveUpReason::RetryAfterTooLong);
            }
        }
        let jittered = self.delay(tries_so_far.saturating_sub(1), rng);
        let delay = retry_after.map_or(jittered, |wait| jittered.max(wait));
        if self.passes_max_time(elapsed, delay) {
            return Decision::GiveUp(GiveUpReason::MaxTime);
        }
        Decision::Retry(delay)
    }

    /// Whether sleeping `delay` after `elapsed` would end past `max_time`.
    fn passes_max_time(&self, elapsed: Duration, delay: Duration) -> bool {
        self.max_time
            .is_some_and(|t| elapsed.saturating_add(delay) > secs_to_duration(t))
    }
}

/// Seconds (finite, `>= 0`) to a [`Duration`], saturating at [`Duration::MAX`] instead of
/// panicking as `Duration::from_secs_f64` does.
fn secs_to_duration(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).unwrap_or(if secs > 0.0 {
        Duration::MAX
    } else {
        Duration::ZERO
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(jitter: Jitter) -> Schedule {
        Schedule::new(4, 0.5, 2.0, 30.0, None, jitter).unwrap()
    }

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn jitter_parses_its_three_names_and_rejects_others() {
        assert_eq!("full".parse(), Ok(Jitter::Full));
        assert_eq!("Equal".parse(), Ok(Jitter::Equal));
        assert_eq!("NONE".parse(), Ok(Jitter::None));
        let err = "random".parse::<Jitter>().unwrap_err();
        assert_eq!(err.given, "random");
        assert_eq!(
            err.to_string(),
            "jitter must be 'full', 'equal' or 'none', not \"random\""
        );
        assert!("".parse::<Jitter>().is_err());
        for j in [Jitter::Full, Jitter::Equal, Jitter::None] {
            assert_eq!(j.to_string().parse(), Ok(j));
        }
    }

    #[test]
    fn constructor_names_the_bad_argument() {
        let ok = |r: Result<Schedule, ScheduleError>| r.unwrap_err().to_string();
        let j = Jitter::Full;
        assert!(ok(Schedule::new(0, 0.5, 2.0, 30.0, None, j)).starts_with("max_tries"));
        for bad in [-0.1, f64::NAN, f64::INFINITY] {
            assert!(ok(Schedule::new(4, bad, 2.0, 30.0, None, j)).starts_with("base"));
            assert!(ok(Schedule::new(4, 0.5, 2.0, bad, None, j)).starts_with("max_delay"));
            assert!(ok(Schedule::new(4, 0.5, 2.0, 30.0, Some(bad), j)).starts_with("max_time"));
        }
        for bad in [0.99, f64::NAN, f64::INFINITY, -2.0] {
            assert!(ok(Schedule::new(4, 0.5, bad, 30.0, None, j)).starts_with("factor"));
        }
        assert_eq!(
            Schedule::new(4, 0.5, 2.0, 30.0, Some(0.0), j),
            Err(ScheduleError::MaxTime(0.0))
        );
        // The edges of each range are allowed.
        assert!(Schedule::new(1, 0.0, 1.0, 0.0, Some(1e-9), j).is_ok());
    }

    #[test]
    fn undithered_delays_follow_the_formula_and_cap() {
        let s = schedule(Jitter::None);
        let mut rng = fastrand::Rng::with_seed(1);
        let got: Vec<f64> = (0..8).map(|i| secs(s.delay(i, &mut rng))).collect();
        assert_eq!(got, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]);
    }

    #[test]
    fn jittered_delays_match_the_formula_for_a_seeded_rng() {
        for seed in 0..200 {
            for i in 0..10 {
                let d = (0.5 * 2f64.powi(i as i32)).min(30.0);
                let mut rng = fastrand::Rng::with_seed(seed);
                let mut twin = fastrand::Rng::with_seed(seed);
                let full = secs(schedule(Jitter::Full).delay(i, &mut rng));
                assert!((full - d * twin.f64_inclusive()).abs() < 1e-9);
                let equal = secs(schedule(Jitter::Equal).delay(i, &mut rng));
                assert!((equal - (d / 2.0 + d / 2.0 * twin.f64_inclusive())).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn jittered_delays_stay_in_bounds_over_many_seeds() {
        let (full, equal) = (schedule(Jitter::Full), schedule(Jitter::Equal));
        let mut seen_low_half = false;
        for seed in 0..2000 {
            let mut rng = fastrand::Rng::with_seed(seed);
            for i in 0..12 {
                let d = full.capped_secs(i);
                let f = secs(full.delay(i, &mut rng));
                let e = secs(equal.delay(i, &mut rng));
                assert!((0.0..=d + 1e-9).contains(&f), "full {f} outside [0, {d}]");
                assert!(
                    (d / 2.0 - 1e-9..=d + 1e-9).contains(&e),
                    "equal {e} outside"
                );
                seen_low_half |= f < d / 2.0;
            }
        }
        assert!(seen_low_half, "full jitter should reach below d/2");
    }

    #[test]
    fn huge_powers_saturate_instead_of_panicking() {
        let mut rng = fastrand::Rng::with_seed(7);
        let s = Schedule::new(u32::MAX, 1e300, 1e308, MAX_SPAN_SECS, None, Jitter::None).unwrap();
        assert_eq!(s.capped_secs(u32::MAX), MAX_SPAN_SECS);
        let longest = Duration::from_secs(MAX_SPAN_SECS as u64);
        assert_eq!(s.delay(u32::MAX, &mut rng), longest);
        let zero = Schedule::new(4, 0.0, 1e308, 30.0, None, Jitter::Full).unwrap();
        assert_eq!(zero.delay(u32::MAX, &mut rng), Duration::ZERO);
        let flat = Schedule::new(4, 2.0, 1.0, 30.0, None, Jitter::None).unwrap();
        assert_eq!(flat.delay(u32::MAX, &mut rng), Duration::from_secs(2));
        assert_eq!(
            s.next(u32::MAX - 1, Duration::MAX, Some(longest), &mut rng),
            Decision::Retry(longest)
        );
        assert_eq!(
            s.next(u32::MAX - 1, Duration::MAX, Some(Duration::MAX), &mut rng),
            Decision::GiveUp(GiveUpReason::RetryAfterTooLong)
        );
    }

    #[test]
    fn max_delay_is_at_most_max_span() {
        assert!(Schedule::new(4, 0.5, 2.0, MAX_SPAN_SECS, None, Jitter::Full).is_ok());
        for bad in [MAX_SPAN_SECS * 1.01, 1e300, f64::INFINITY, f64::NAN, -1.0] {
            let err = Schedule::new(4, 0.5, 2.0, bad, None, Jitter::Full).unwrap_err();
            assert!(matches!(err, ScheduleError::MaxDelay(_)), "{err}");
        }
    }

    #[test]
    fn gives_up_after_max_tries() {
        let s = schedule(Jitter::None);
        let mut rng = fastrand::Rng::with_seed(3);
        let next = |n| s.next(n, Duration::ZERO, None, &mut rng.clone());
        assert_eq!(next(1), Decision::Retry(Duration::from_millis(500)));
        assert_eq!(next(2), Decision::Retry(Duration::from_secs(1)));
        assert_eq!(next(3), Decision::Retry(Duration::from_secs(2)));
        assert_eq!(next(4), Decision::GiveUp(GiveUpReason::MaxTries));
        let once = Schedule::new(1, 0.5, 2.0, 30.0, None, Jitter::None).unwrap();
        assert_eq!(
            once.next(1, Duration::ZERO, None, &mut rng),
            Decision::GiveUp(GiveUpReason::MaxTries)
        );
    }

    #[test]
    fn gives_up_when_the_delay_would_pass_max_time() {
        let s = Schedule::new(10, 1.0, 2.0, 30.0, Some(5.0), Jitter::None).unwrap();
        let mut rng = fastrand::Rng::with_seed(3);
        let at = |ms| Duration::from_millis(ms);
        assert_eq!(
            s.next(1, at(3000), None, &mut rng),
            Decision::Retry(at(1000))
        );
        assert_eq!(
            s.next(2, at(3000), None, &mut rng),
            Decision::Retry(at(2000))
        );
        assert_eq!(
            s.next(2, at(3001), None, &mut rng),
            Decision::GiveUp(GiveUpReason::MaxTime)
        );
    }

    #[test]
    fn retry_after_is_a_floor_on_the_delay() {
        let s = schedule(Jitter::None);
        let mut rng = fastrand::Rng::with_seed(3);
        let ra = Duration::from_secs(7);
        assert_eq!(
            s.next(1, Duration::ZERO, Some(ra), &mut rng),
            Decision::Retry(ra)
        );
        // A longer scheduled delay wins over a short Retry-After.
        let short = Duration::from_millis(10);
        assert_eq!(
            s.next(3, Duration::ZERO, Some(short), &mut rng),
            Decision::Retry(Duration::from_secs(2))
        );
        for seed in 0..500 {
            let mut rng = fastrand::Rng::with_seed(seed);
            match schedule(Jitter::Full).next(2, Duration::ZERO, Some(ra), &mut rng) {
                Decision::Retry(d) => assert!(d >= ra),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn gives_up_at_once_on_a_retry_after_it_cannot_honour() {
        let s = Schedule::new(4, 0.5, 2.0, 30.0, Some(60.0), Jitter::Full).unwrap();
        let mut rng = fastrand::Rng::with_seed(3);
        let too_long = Decision::GiveUp(GiveUpReason::RetryAfterTooLong);
        let ra = |s| Some(Duration::from_secs(s));
        assert_eq!(s.next(1, Duration::ZERO, ra(31), &mut rng), too_long);
        assert_eq!(
            s.next(1, Duration::from_secs(40), ra(21), &mut rng),
            too_long
        );
        assert_eq!(
            s.next(1, Duration::from_secs(40), ra(20), &mut rng),
            Decision::Retry(ra(20).unwrap())
        );
        assert_eq!(
            s.next(1, Duration::ZERO, ra(30), &mut rng),
            Decision::Retry(ra(30).unwrap())
        );
    }

    #[test]
    fn give_up_reasons_read_well() {
        assert_eq!(GiveUpReason::MaxTries.to_string(), "max_tries reached");
        assert!(GiveUpReason::RetryAfterTooLong
            .to_string()
            .contains("Retry-After"));
    }
}
