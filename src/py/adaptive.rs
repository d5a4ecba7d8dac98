//! The Python side of learning from the provider (issue 8): headers read by the one parser
//! (`crewthrottle._ratelimit_headers`), changes of limits told in the log, and the figures
//! `stats()` reports.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyInt};

use super::args;
use crate::core::{Change, LimiterBudget, Limits, Observation, Reason, Reported, FULL};

/// `None` in a published word.
const ABSENT: u64 = u64::MAX;

/// What `headers` say, read by `crewthrottle._ratelimit_headers._observation` (which never
/// raises), for a response of HTTP `status` (a 429 is a rate limit).
pub fn observation(
    headers: &Bound<'_, PyAny>,
    status: Option<&Bound<'_, PyAny>>,
) -> PyResult<Observation> {
    static PARSE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = headers.py();
    let parse = PARSE.get_or_try_init(py, || {
        let module = py.import("crewthrottle._ratelimit_headers")?;
        module.getattr("_observation").map(Bound::unbind)
    })?;
    let figures: [Option<u64>; 4] = parse.bind(py).call1((headers,))?.extract()?;
    Ok(observed(figures, rate_limited(status)?))
}

/// An observation from its four figures: requests limit and remaining, tokens limit and
/// remaining.
pub fn observed(figures: [Option<u64>; 4], rate_limited: bool) -> Observation {
    let [requests_limit, requests_remaining, tokens_limit, tokens_remaining] = figures;
    Observation {
        requests: Reported {
            limit: requests_limit,
            remaining: requests_remaining,
        },
        tokens: Reported {
            limit: tokens_limit,
            remaining: tokens_remaining,
        },
        rate_limited,
    }
}

/// Four optional counts (`>= 0`), each named.
pub fn figures(values: [(Option<&Bound<'_, PyAny>>, &str); 4]) -> PyResult<[Option<u64>; 4]> {
    let mut out = [None; 4];
    for (slot, (value, name)) in out.iter_mut().zip(values) {
        *slot = args::optional_count(value, name, 0)?;
    }
    Ok(out)
}

/// Whether `status` (None or an int) is a 429.
pub fn rate_limited(status: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
    match status.filter(|s| !s.is_none()) {
        None => Ok(false),
        Some(s) if s.is_instance_of::<PyInt>() && !s.is_instance_of::<PyBool>() => s.eq(429),
        Some(s) => Err(PyTypeError::new_err(format!(
            "status must be an int (an HTTP status) or None, got {}",
            s.get_type().name()?
        ))),
    }
}

/// One INFO line on `crewthrottle.limiter` for a change of the effective limits.
pub fn log_change(py: Python<'_>, name: Option<&str>, change: &Change) -> PyResult<()> {
    static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let logger = LOGGER.get_or_try_init(py, || {
        let logging = py.import("logging")?;
        logging
            .call_method1("getLogger", ("crewthrottle.limiter",))
            .map(Bound::unbind)
    })?;
    let (from, to) = (change.from, change.to);
    let who = name.map_or_else(String::new, |n| format!("limiter {n:?}: "));
    let message = format!(
        "{who}limits now {} ({}), were {} ({})",
        show(&to.0),
        why(to.1),
        show(&from.0),
        from.1.name(),
    );
    let extra = PyDict::new(py);
    extra.set_item("limiter", name)?;
    extra.set_item("limits_reason", to.1.name())?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("extra", extra)?;
    logger
        .bind(py)
        .call_method("info", ("%s", message), Some(&kwargs))?;
    Ok(())
}

fn show(limits: &Limits) -> String {
    let show = |v: Option<u64>| v.map_or_else(|| "None".to_owned(), |v| v.to_string());
    format!(
        "max_concurrent={} rpm={} tpm={}",
        show(limits.max_concurrent),
        show(limits.rpm),
        show(limits.tpm)
    )
}

fn why(reason: Reason) -> &'static str {
    match reason {
        Reason::Configured => "configured",
        Reason::Conservative => "conservative until the provider's rate-limit headers arrive",
        Reason::Headers => "from the provider's rate-limit headers",
        Reason::RateLimited => "lowered after a 429 nothing explained; recovering",
    }
}

/// The learning figures of `stats()`, copied out of the gate's lock.
#[derive(Debug, Clone, Copy)]
pub struct AdaptiveFigures {
    effective: Limits,
    reason: Reason,
    foreign: (u64, u64),
}

impl AdaptiveFigures {
    /// The words these figures take in a published snapshot.
    pub const WORDS: usize = 6;

    /// The figures of a shared budget: the limits in force and those configured, its AIMD
    /// factor (thousandths) and whether it is in its conservative start.
    pub fn shared(effective: Limits, configured: Limits, factor: i64, discovering: bool) -> Self {
        let reason = if factor < i64::from(FULL) {
            Reason::RateLimited
        } else if discovering {
            Reason::Conservative
        } else if effective != configured {
            Reason::Headers
        } else {
            Reason::Configured
        };
        AdaptiveFigures {
            effective,
            reason,
            foreign: (0, 0),
        }
    }

    /// Reads them (under the gate's lock).
    pub fn read(budget: &LimiterBudget) -> Self {
        let adaptive = budget.adaptive();
        AdaptiveFigures {
            effective: adaptive.effective(),
            reason: adaptive.reason(),
            foreign: adaptive.foreign(),
        }
    }

    /// Fills a `stats()` dict.
    pub fn fill(&self, stats: &Bound<'_, PyDict>) -> PyResult<()> {
        let e = &self.effective;
        stats.set_item("effective_max_concurrent", e.max_concurrent)?;
        stats.set_item("effective_rpm", e.rpm)?;
        stats.set_item("effective_tpm", e.tpm)?;
        stats.set_item("limits_reason", self.reason.name())?;
        stats.set_item("foreign_requests_in_window", self.foreign.0)?;
        stats.set_item("foreign_tokens_in_window", self.foreign.1)?;
        Ok(())
    }

    /// These figures as words, for a published snapshot.
    pub fn to_words(&self) -> [u64; Self::WORDS] {
        let e = &self.effective;
        [
            e.max_concurrent.unwrap_or(ABSENT),
            e.rpm.unwrap_or(ABSENT),
            e.tpm.unwrap_or(ABSENT),
            self.reason.code(),
            self.foreign.0,
            self.foreign.1,
        ]
    }

    /// Figures from [`Self::to_words`]'s words.
    pub fn from_words(words: &[u64]) -> Self {
        let word = |i: usize| words.get(i).copied().unwrap_or(ABSENT);
        let absent = |w: u64| (w != ABSENT).then_some(w);
        AdaptiveFigures {
            effective: Limits {
                max_concurrent: absent(word(0)),
                rpm: absent(word(1)),
                tpm: absent(word(2)),
            },
            reason: Reason::from_code(word(3)),
            foreign: (
                words.get(4).copied().unwrap_or(0),
                words.get(5).copied().unwrap_or(0),
            ),
        }
    }
}
