//! `Limiter`: a concurrency cap plus requests and tokens per window, acquired as one.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::args;
use super::errors::AcquireTimeout;
use super::fork::new_gate;
use super::permit::Permit;
use super::semaphore::qualified_name;
use super::stats::WaitSummary;
use super::wait::{self, AsyncOutcome};
use crate::core::clock::Clock;
use crate::core::gate::Gate;
use crate::core::limiter::{
    LimiterBudget, LimiterConfig, LimiterGrant, LimiterRequest, RetryEvent,
};

/// One limit shared by every thread and event loop of the process.
#[pyclass(module = "crewthrottle", name = "Limiter", frozen)]
pub struct Limiter {
    gate: Arc<Gate<LimiterBudget>>,
    config: LimiterConfig,
    name: Option<String>,
}

struct PermitOutcome {
    gate: Arc<Gate<LimiterBudget>>,
    timeout: f64,
}

impl AsyncOutcome<LimiterBudget> for PermitOutcome {
    fn granted(&self, py: Python<'_>, grant: LimiterGrant) -> PyResult<Py<PyAny>> {
        Ok(Py::new(py, Permit::new(Arc::clone(&self.gate), grant))?.into_any())
    }

    fn timed_out(&self, _py: Python<'_>) -> PyResult<Py<PyAny>> {
        Err(timeout_error(self.timeout))
    }
}

struct AnonymousOutcome;

impl AsyncOutcome<LimiterBudget> for AnonymousOutcome {
    fn granted(&self, py: Python<'_>, _grant: LimiterGrant) -> PyResult<Py<PyAny>> {
        Ok(py.None())
    }

    fn timed_out(&self, _py: Python<'_>) -> PyResult<Py<PyAny>> {
        Err(timeout_error(f64::INFINITY))
    }
}

fn timeout_error(timeout: f64) -> PyErr {
    AcquireTimeout::new_err(format!("no permit within the timeout of {timeout} s"))
}

fn request(tokens: Option<&Bound<'_, PyAny>>, anonymous: bool) -> PyResult<LimiterRequest> {
    let tokens = args::optional_count(tokens, "tokens", 0)?.unwrap_or(0);
    Ok(LimiterRequest { tokens, anonymous })
}

impl Limiter {
    fn permit(&self, py: Python<'_>, grant: LimiterGrant) -> PyResult<Py<Permit>> {
        Py::new(py, Permit::new(Arc::clone(&self.gate), grant))
    }
}

#[pymethods]
impl Limiter {
    #[new]
    #[pyo3(
        signature = (*, max_concurrent = None, rpm = None, tpm = None, window = None, burst = None, margin = None, name = None),
        text_signature = "(*, max_concurrent=None, rpm=None, tpm=None, window=60.0, burst=None, margin=None, name=None)"
    )]
    #[allow(clippy::too_many_arguments)] // the keyword-only Python constructor
    fn new(
        py: Python<'_>,
        max_concurrent: Option<&Bound<'_, PyAny>>,
        rpm: Option<&Bound<'_, PyAny>>,
        tpm: Option<&Bound<'_, PyAny>>,
        window: Option<&Bound<'_, PyAny>>,
        burst: Option<&Bound<'_, PyAny>>,
        margin: Option<&Bound<'_, PyAny>>,
        name: Option<String>,
    ) -> PyResult<Self> {
        let window = match window {
            Some(w) if !w.is_none() => args::seconds(w, "window", true)?,
            _ => 60.0,
        };
        let config = LimiterConfig::new(
            args::optional_count(max_concurrent, "max_concurrent", 1)?,
            args::optional_count(rpm, "rpm", 1)?,
            args::optional_count(tpm, "tpm", 1)?,
            window,
            args::optional_count(burst, "burst", 1)?,
            margin
                .filter(|m| !m.is_none())
                .map(|m| args::number(m, "margin"))
                .transpose()?,
        )?;
        let gate = Gate::new(LimiterBudget::new(config), Clock::monotonic());
        Ok(Limiter {
            gate: new_gate(py, gate),
            config,
            name,
        })
    }

    /// Waits (GIL released) for a permit for a request of `tokens` tokens.
    #[pyo3(signature = (tokens = None, *, timeout = None), text_signature = "($self, tokens=0, *, timeout=None)")]
    fn acquire(
        &self,
        py: Python<'_>,
        tokens: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Permit>> {
        let request = request(tokens, false)?;
        let secs = args::timeout(timeout)?;
        match wait::block_on(py, &self.gate, request, secs)? {
            Some(grant) => self.permit(py, grant),
            None => Err(timeout_error(secs.unwrap_or(f64::INFINITY))),
        }
    }

    /// A permit if one can be had now without waiting, else None.
    #[pyo3(signature = (tokens = None), text_signature = "($self, tokens=0)")]
    fn try_acquire(
        &self,
        py: Python<'_>,
        tokens: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<Py<Permit>>> {
        let request = request(tokens, false)?;
        self.gate
            .try_acquire(request)?
            .map(|grant| self.permit(py, grant))
            .transpose()
    }

    /// Awaits a permit without blocking the event loop.
    #[pyo3(signature = (tokens = None, *, timeout = None), text_signature = "($self, tokens=0, *, timeout=None)")]
    fn acquire_async(
        &self,
        py: Python<'_>,
        tokens: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let request = request(tokens, false)?;
        let secs = args::timeout(timeout)?;
        let outcome = PermitOutcome {
            gate: Arc::clone(&self.gate),
            timeout: secs.unwrap_or(f64::INFINITY),
        };
        wait::acquire_async(py, &self.gate, request, secs, outcome)
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<()> {
        wait::block_on(py, &self.gate, request(None, true)?, None)?;
        Ok(())
    }

    fn __exit__(
        &self,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) {
        self.gate
            .with_resource(|budget, _| budget.release_anonymous());
    }

    fn __aenter__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        wait::acquire_async(py, &self.gate, request(None, true)?, None, AnonymousOutcome)
    }

    fn __aexit__(
        &self,
        py: Python<'_>,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        self.gate
            .with_resource(|budget, _| budget.release_anonymous());
        wait::ready(py, py.None())
    }

    /// Decorates a sync or async function: each call holds a permit.
    fn __call__(slf: &Bound<'_, Self>, function: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let decorate = slf
            .py()
            .import("crewthrottle._decorate")?
            .getattr("limit")?;
        Ok(decorate.call1((slf, function))?.unbind())
    }

    /// This limiter as a `langchain_core.rate_limiters.BaseRateLimiter` (needs the
    /// `crewthrottle[langchain]` extra); see `crewthrottle.langchain`.
    fn as_langchain(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let adapter = slf
            .py()
            .import("crewthrottle.langchain")?
            .getattr("rate_limiter")?;
        Ok(adapter.call1((slf,))?.unbind())
    }

    /// Grants nothing for `seconds` (a provider said Retry-After); a longer pause wins.
    fn pause(&self, seconds: &Bound<'_, PyAny>) -> PyResult<()> {
        let seconds = args::seconds(seconds, "seconds", false)?;
        self.gate
            .with_resource(|budget, now| budget.pause(now, seconds));
        Ok(())
    }

    /// Lifts a pause (`pause()`, or a provider's Retry-After through `backoff`) at once.
    fn resume(&self) {
        self.gate.with_resource(|budget, _| budget.resume());
    }

    /// Live figures: in_flight, waiting, acquired, timeouts, cancelled, tokens_granted,
    /// requests_in_window, tokens_in_window, paused_for, total_wait, max_wait (seconds).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (figures, paused_for, summary) = self.gate.inspect(|budget, waits, now| {
            let paused = budget
                .paused_until(now)
                .map_or(0.0, |until| (until.as_u64() - now.as_u64()) as f64 / 1e9);
            (budget.figures(now), paused, WaitSummary::of(waits, now))
        });
        let stats = summary.to_dict(py)?;
        stats.set_item("in_flight", figures.in_flight)?;
        stats.set_item("tokens_granted", figures.tokens_granted)?;
        stats.set_item("requests_in_window", figures.requests_in_window)?;
        stats.set_item("tokens_in_window", figures.tokens_in_window)?;
        stats.set_item("paused_for", paused_for)?;
        stats.set_item("retries", figures.retry_counts.retries)?;
        stats.set_item("give_ups", figures.retry_counts.give_ups)?;
        stats.set_item("retries_refused", figures.retry_counts.refused)?;
        Ok(stats)
    }

    /// Counts a retry decorator's decision ("retried", "gave_up" or "refused") in `stats()`.
    fn _count_retry(&self, event: &str) -> PyResult<()> {
        let event = match event {
            "retried" => RetryEvent::Retried,
            "gave_up" => RetryEvent::GaveUp,
            "refused" => RetryEvent::Refused,
            other => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "unknown retry event {other:?}"
                )))
            }
        };
        self.gate
            .with_resource(|budget, _| budget.count_retry(event));
        Ok(())
    }

    #[getter]
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    #[getter]
    fn max_concurrent(&self) -> Option<u64> {
        self.config.max_concurrent
    }

    #[getter]
    fn rpm(&self) -> Option<u64> {
        self.config.rpm
    }

    #[getter]
    fn tpm(&self) -> Option<u64> {
        self.config.tpm
    }

    #[getter]
    fn window(&self) -> f64 {
        self.config.window
    }

    #[getter]
    fn burst(&self) -> Option<u32> {
        self.config.burst
    }

    #[getter]
    fn margin(&self) -> f64 {
        self.config.margin
    }

    /// A limiter is shared, never copied: CrewAI copies crews and agents deeply.
    fn __copy__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __deepcopy__(slf: Py<Self>, _memo: &Bound<'_, PyAny>) -> Py<Self> {
        slf
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let this = slf.get();
        let LimiterConfig {
            max_concurrent,
            rpm,
            tpm,
            window,
            burst,
            margin,
        } = this.config;
        let (in_flight, waiting) = this
            .gate
            .inspect(|budget, waits, now| (budget.figures(now).in_flight, waits.waiting));
        let show = |v: Option<u64>| v.map_or_else(|| "None".to_owned(), |v| v.to_string());
        let name = this
            .name
            .as_ref()
            .map(|n| format!(" {n:?}"))
            .unwrap_or_default();
        Ok(format!(
            "<{}{name} max_concurrent={} rpm={} tpm={} window={window:?} burst={} margin={margin:?}: \
             in_flight={in_flight} waiting={waiting}>",
            qualified_name(&slf.get_type())?,
            show(max_concurrent),
            show(rpm),
            show(tpm),
            show(burst.map(u64::from)),
        ))
    }
}
