//! What a `Limiter` enforces, validated: the limits, the window, the burst and the margin.

use crate::core::adaptive::Limits;
use crate::core::clock::nanos_of_secs;
use crate::core::error::{check_seconds, InvalidArgument, MAX_SPAN_SECS};
use crate::core::pacer::Pacer;
use crate::core::sliding_window::MAX_AMOUNT;

/// What a `Limiter` enforces. `None` means "no limit of that kind".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimiterConfig {
    /// Permits out at once.
    pub max_concurrent: Option<u64>,
    /// Requests started per window.
    pub rpm: Option<u64>,
    /// Tokens per window.
    pub tpm: Option<u64>,
    /// The window, in seconds.
    pub window: f64,
    /// Requests that may start back to back (only with `rpm`).
    pub burst: Option<u32>,
    /// Extra seconds each start stays counted, for the jitter between grant and arrival.
    pub margin: f64,
    /// Whether limits not configured are learned from the provider (issue 8).
    pub adaptive: bool,
}

impl LimiterConfig {
    /// Validates the arguments. `burst` defaults to about one second's share of `rpm`
    /// (`round(rpm / window)`, at least 1, at most `rpm`); `margin` to [`default_margin`].
    ///
    /// # Errors
    /// [`InvalidArgument`] naming the argument at fault.
    pub fn new(
        max_concurrent: Option<u64>,
        rpm: Option<u64>,
        tpm: Option<u64>,
        window: f64,
        burst: Option<u64>,
        margin: Option<f64>,
    ) -> Result<Self, InvalidArgument> {
        check_seconds("window", window, true)?;
        let margin = match margin {
            Some(margin) => check_seconds("margin", margin, false)?,
            None => default_margin(window),
        };
        if margin > window {
            return Err(InvalidArgument::new(
                "margin",
                format!("must be at most the window ({window} s), got {margin}"),
            ));
        }
        if window > MAX_SPAN_SECS {
            return Err(InvalidArgument::new(
                "window",
                format!("must be at most {MAX_SPAN_SECS:e} seconds, got {window}"),
            ));
        }
        for (name, value) in [
            ("max_concurrent", max_concurrent),
            ("rpm", rpm),
            ("tpm", tpm),
        ] {
            if value.is_some_and(|v| v > MAX_COUNT) {
                return Err(InvalidArgument::new(name, "must be at most 2**53"));
            }
            if value == Some(0) {
                return Err(InvalidArgument::new(
                    name,
                    "must be >= 1 (or None for no limit), got 0",
                ));
            }
        }
        if rpm.is_some_and(|rpm| nanos_of_secs(window) / rpm == 0) {
            return Err(InvalidArgument::new(
                "rpm",
                "is too high for the window: more than one request per nanosecond",
            ));
        }
        let burst = match (rpm, burst) {
            (None, None) => None,
            (None, Some(_)) => return Err(InvalidArgument::new("burst", "only applies with rpm")),
            (Some(rpm), None) => Some(((rpm as f64 / window).round() as u64).clamp(1, rpm)),
            (Some(_), Some(0)) => return Err(InvalidArgument::new("burst", "must be >= 1, got 0")),
            (Some(rpm), Some(b)) if b > rpm => {
                return Err(InvalidArgument::new(
                    "burst",
                    format!("must be at most rpm ({rpm}), got {b}"),
                ))
            }
            (Some(_), Some(b)) => Some(b),
        };
        let burst = burst
            .map(u32::try_from)
            .transpose()
            .map_err(|_| InvalidArgument::new("burst", format!("must be at most {}", u32::MAX)))?;
        Ok(LimiterConfig {
            max_concurrent,
            rpm,
            tpm,
            window,
            burst,
            margin,
            adaptive: false,
        })
    }

    /// The same configuration, learning the limits it lacks from the provider when `adaptive`.
    pub fn with_adaptive(self, adaptive: bool) -> Self {
        LimiterConfig { adaptive, ..self }
    }

    /// The configured limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_concurrent: self.max_concurrent,
            rpm: self.rpm,
            tpm: self.tpm,
        }
    }

    /// The window in nanoseconds.
    pub fn window_ns(&self) -> u64 {
        nanos_of_secs(self.window)
    }

    /// How long a start stays counted: the window plus the margin, in nanoseconds.
    pub fn counted_ns(&self) -> u64 {
        nanos_of_secs(self.window + self.margin)
    }

    /// Nanoseconds between two paced requests (`window / rpm`).
    pub fn pacing_interval_ns(&self) -> Option<u64> {
        self.rpm.map(|rpm| self.window_ns() / rpm)
    }

    pub(super) fn pacer(&self) -> Option<Pacer> {
        Some(Pacer::new(
            self.pacing_interval_ns()?,
            self.burst.unwrap_or(1),
        ))
    }

    /// Interval and burst of the pacer for an effective `rpm`: as configured when it is the
    /// configured one, else the default burst for it (never more than the configured burst).
    pub(super) fn pacing_for(&self, rpm: u64) -> (u64, u32) {
        let interval = (self.window_ns() / rpm.max(1)).max(1);
        if self.rpm == Some(rpm) {
            return (interval, self.burst.unwrap_or(1));
        }
        let default = ((rpm as f64 / self.window).round() as u64).clamp(1, rpm.max(1));
        let burst = u32::try_from(default).unwrap_or(u32::MAX);
        (interval, burst.min(self.burst.unwrap_or(u32::MAX)))
    }
}

/// The default margin: `window / 200` (0.3 s for a minute), at least 50 ms — the jitter
/// between grant and arrival measured here with threads on two busy cores was up to ~11 ms —
/// but never more than a tenth of the window.
pub(super) fn default_margin(window: f64) -> f64 {
    (window / 200.0).max(0.05).min(window / 10.0)
}

/// The largest count a limit may have (2^53): sums of counts then never come near overflow.
pub const MAX_COUNT: u64 = MAX_AMOUNT;
