//! Errors the core reports: small, typed, and naming the argument at fault.

use std::fmt;

/// A bad argument: which one, and why. Maps to Python's `ValueError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidArgument {
    /// The argument's name as the caller spelt it (`rpm`, `tokens`, `n`, ...).
    pub name: &'static str,
    /// What is wrong with it, as a sentence fragment after the name.
    pub reason: String,
}

impl InvalidArgument {
    /// A new error for argument `name`.
    pub fn new(name: &'static str, reason: impl Into<String>) -> Self {
        InvalidArgument {
            name,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for InvalidArgument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.reason)
    }
}

impl std::error::Error for InvalidArgument {}

/// Why a queue could not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueError {
    /// A bad argument (Python's `ValueError`).
    Invalid(InvalidArgument),
    /// The store that keeps the budget cannot be reached: what and why.
    Unavailable(String),
    /// The store keeps other limits for this budget than this process was given.
    Conflict(String),
}

impl From<InvalidArgument> for QueueError {
    fn from(err: InvalidArgument) -> Self {
        QueueError::Invalid(err)
    }
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::Invalid(err) => err.fmt(f),
            QueueError::Unavailable(what) | QueueError::Conflict(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for QueueError {}

/// The longest span the core schedules over, in seconds (about 31 years): beyond it the
/// nanosecond arithmetic of the GCRA could overflow, so such limits are refused.
pub const MAX_SPAN_SECS: f64 = 1e9;

/// Checks that a duration given in seconds is finite and `>= 0` (or `> 0` when `positive`).
pub fn check_seconds(
    name: &'static str,
    secs: f64,
    positive: bool,
) -> Result<f64, InvalidArgument> {
    if !secs.is_finite() {
        return Err(InvalidArgument::new(
            name,
            format!("must be a finite number of seconds, got {secs}"),
        ));
    }
    if secs < 0.0 || (positive && secs == 0.0) {
        let bound = if positive { "> 0" } else { ">= 0" };
        return Err(InvalidArgument::new(
            name,
            format!("must be {bound}, got {secs}"),
        ));
    }
    Ok(secs)
}

/// Checks a span of time given in seconds: as [`check_seconds`], and at most
/// [`MAX_SPAN_SECS`] (a window, a period, a pause).
pub fn check_span(name: &'static str, secs: f64, positive: bool) -> Result<f64, InvalidArgument> {
    let secs = check_seconds(name, secs, positive)?;
    if secs > MAX_SPAN_SECS {
        return Err(InvalidArgument::new(
            name,
            format!("must be at most {MAX_SPAN_SECS:e} seconds (about 31 years), got {secs}"),
        ));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_the_argument() {
        let err = check_seconds("window", -1.0, true).unwrap_err();
        assert_eq!(err.to_string(), "window must be > 0, got -1");
        assert!(check_seconds("timeout", f64::NAN, false).is_err());
        assert!(check_seconds("timeout", 0.0, false).is_ok());
        assert!(check_seconds("window", 0.0, true).is_err());
    }

    #[test]
    fn a_span_is_at_most_max_span() {
        assert_eq!(
            check_span("seconds", MAX_SPAN_SECS, false),
            Ok(MAX_SPAN_SECS)
        );
        let err = check_span("seconds", MAX_SPAN_SECS * 1.5, false).unwrap_err();
        assert_eq!(err.name, "seconds");
        assert!(check_span("seconds", f64::MAX, false).is_err());
    }
}
