//! The backoff schedule (delays, jitter, when to give up) for `crewthrottle.backoff`, whose
//! decorator layer is thin Python (`_backoff.py`).

use std::time::Duration;

use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::args;
use crate::core::{Decision, Jitter, Schedule};

/// A validated schedule with its own random source (private: used by `_backoff.py`).
#[pyclass(module = "crewthrottle._native", name = "_Schedule", frozen)]
pub struct BackoffSchedule {
    schedule: Schedule,
    rng: Mutex<fastrand::Rng>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[pymethods]
impl BackoffSchedule {
    #[new]
    #[pyo3(signature = (*, max_tries, base, factor, max_delay, max_time, jitter, seed = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        max_tries: &Bound<'_, PyAny>,
        base: &Bound<'_, PyAny>,
        factor: &Bound<'_, PyAny>,
        max_delay: &Bound<'_, PyAny>,
        max_time: Option<&Bound<'_, PyAny>>,
        jitter: &str,
        seed: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let seed = args::optional_count(seed, "seed", 0)?;
        let max_tries = args::count(max_tries, "max_tries", 1)?;
        let max_tries = u32::try_from(max_tries)
            .map_err(|_| PyValueError::new_err(format!("max_tries is too large: {max_tries}")))?;
        let max_time = max_time
            .filter(|t| !t.is_none())
            .map(|t| args::number(t, "max_time"))
            .transpose()?;
        let jitter: Jitter = jitter
            .parse()
            .map_err(|e| PyValueError::new_err(format!("{e}")))?;
        let schedule = Schedule::new(
            max_tries,
            args::number(base, "base")?,
            args::number(factor, "factor")?,
            args::number(max_delay, "max_delay")?,
            max_time,
            jitter,
        )
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let rng = seed.map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        Ok(BackoffSchedule {
            schedule,
            rng: Mutex::new(rng),
        })
    }

    /// After `tries` failed attempts, `elapsed` seconds since the first, with the provider's
    /// named wait `retry_after` (seconds) if any: `(delay, None)` to retry after `delay`
    /// seconds, or `(None, reason)` to give up.
    #[pyo3(signature = (tries, elapsed, retry_after = None))]
    fn next(
        &self,
        tries: u32,
        elapsed: f64,
        retry_after: Option<f64>,
    ) -> (Option<f64>, Option<String>) {
        let elapsed = Duration::try_from_secs_f64(elapsed).unwrap_or(Duration::ZERO);
        // A wait too long for a Duration is as good as forever (give up), never "no wait".
        let retry_after =
            retry_after.map(|s| Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX));
        match self
            .schedule
            .next(tries, elapsed, retry_after, &mut self.rng.lock())
        {
            Decision::Retry(delay) => (Some(secs(delay)), None),
            Decision::GiveUp(reason) => (None, Some(reason.to_string())),
        }
    }

    #[getter]
    fn max_tries(&self) -> u32 {
        self.schedule.max_tries()
    }

    #[getter]
    fn base(&self) -> f64 {
        self.schedule.base()
    }

    #[getter]
    fn factor(&self) -> f64 {
        self.schedule.factor()
    }

    #[getter]
    fn max_delay(&self) -> f64 {
        self.schedule.max_delay()
    }

    #[getter]
    fn max_time(&self) -> Option<f64> {
        self.schedule.max_time()
    }

    #[getter]
    fn jitter(&self) -> &'static str {
        self.schedule.jitter().as_str()
    }
}
