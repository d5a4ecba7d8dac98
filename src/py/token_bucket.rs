//! `TokenBucket`: a GCRA bucket (governor) with fair, GIL-releasing waits.

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::args;
use super::fork::new_gate;
use super::semaphore::qualified_name;
use super::stats::WaitSummary;
use super::wait::{self, Flag};
use crate::core::{BucketConfig, Clock, Gate, TokenBucketBudget};

/// `rate` tokens every `per` seconds, at most `burst` at once; waiters served in order.
///
/// Ranges (ValueError outside them): `rate` finite and > 0; 0 < `per` <= 1e9 seconds;
/// 1 <= `burst` <= 2**32 - 1; at most one token per nanosecond; a full burst refilled within
/// 1e9 s. `n`: 1 <= n <= burst. `timeout`: None or seconds >= 0. `pause`: 0 to 1e9 seconds.
#[pyclass(module = "crewthrottle", name = "TokenBucket", frozen)]
pub struct TokenBucket {
    gate: Arc<Gate<TokenBucketBudget>>,
    config: BucketConfig,
}

fn tokens(n: &Bound<'_, PyAny>) -> PyResult<u32> {
    let n = args::count(n, "n", 1)?;
    u32::try_from(n).map_err(|_| PyValueError::new_err(format!("n is too large: {n}")))
}

#[pymethods]
impl TokenBucket {
    #[new]
    #[pyo3(signature = (rate, per = None, burst = None), text_signature = "(rate, per=1.0, burst=None)")]
    fn new(
        py: Python<'_>,
        rate: &Bound<'_, PyAny>,
        per: Option<&Bound<'_, PyAny>>,
        burst: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let rate = args::number(rate, "rate")?;
        let per = match per {
            Some(per) => args::seconds(per, "per", true)?,
            None => 1.0,
        };
        let burst = args::optional_count(burst, "burst", 1)?;
        let config = BucketConfig::new(rate, per, burst)?;
        let clock = Clock::monotonic();
        let gate = Gate::new(TokenBucketBudget::new(config, clock.clone()), clock);
        Ok(TokenBucket {
            gate: new_gate(py, gate),
            config,
        })
    }

    /// Takes `n` tokens, waiting (GIL released) unless `blocking` is False.
    #[pyo3(signature = (n = None, blocking = None, timeout = None), text_signature = "($self, n=1, blocking=True, timeout=None)")]
    fn acquire(
        &self,
        py: Python<'_>,
        n: Option<&Bound<'_, PyAny>>,
        blocking: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        // Any truthy value blocks, as in threading.
        let blocking = blocking.map_or(Ok(true), |b| b.is_truthy())?;
        let n = n.map(tokens).transpose()?.unwrap_or(1);
        if !blocking {
            args::no_timeout_when_nonblocking(timeout)?;
            return Ok(self.gate.try_acquire(n)?.is_some());
        }
        let timeout = args::timeout(timeout)?;
        Ok(wait::block_on(py, &*self.gate, n, timeout)?.is_some())
    }

    /// Takes `n` tokens if they are available now and nobody is waiting.
    #[pyo3(signature = (n = None), text_signature = "($self, n=1)")]
    fn try_acquire(&self, n: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        let n = n.map(tokens).transpose()?.unwrap_or(1);
        Ok(self.gate.try_acquire(n)?.is_some())
    }

    /// Awaits `n` tokens; False if `timeout` seconds pass first.
    #[pyo3(signature = (n = None, timeout = None), text_signature = "($self, n=1, timeout=None)")]
    fn acquire_async(
        &self,
        py: Python<'_>,
        n: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let n = n.map(tokens).transpose()?.unwrap_or(1);
        let timeout = args::timeout(timeout)?;
        wait::acquire_async(py, &self.gate, n, timeout, Flag)
    }

    /// Grants nothing for `seconds` (a provider said Retry-After); a longer pause wins.
    fn pause(&self, seconds: &Bound<'_, PyAny>) -> PyResult<()> {
        let seconds = args::seconds(seconds, "seconds", false)?;
        self.gate
            .with_resource(|bucket, now| bucket.pause(now, seconds));
        Ok(())
    }

    #[getter]
    fn rate(&self) -> f64 {
        self.config.rate
    }

    #[getter]
    fn per(&self) -> f64 {
        self.config.per
    }

    #[getter]
    fn burst(&self) -> u32 {
        self.config.burst
    }

    /// Counters: waiting, acquired, timeouts, cancelled, total_wait, max_wait and the recent
    /// wait percentiles wait_p50, wait_p90, wait_p99 (seconds, None without recent grants).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.gate
            .inspect(|_, figures, now| WaitSummary::of(figures, now))
            .to_dict(py)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let BucketConfig { rate, per, burst } = slf.get().config;
        let waiting = slf.get().gate.inspect(|_, figures, _| figures.waiting);
        let cls = qualified_name(&slf.get_type())?;
        Ok(format!(
            "<{cls} rate={rate} per={per} burst={burst}: waiting={waiting}>"
        ))
    }
}
