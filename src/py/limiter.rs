//! `Limiter`: a concurrency cap plus requests and tokens per window, acquired as one.

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::adaptive;
use super::args;
use super::errors::AcquireTimeout;
use super::limiter_shared::{LimiterShared, RetryEvent};
use super::permit::Permit;
use super::semaphore::qualified_name;
use super::wait::{self, AsyncOutcome};
use crate::core::clock::Clock;
use crate::core::gate::Gate;
use crate::core::limiter::{LimiterBudget, LimiterConfig, LimiterGrant, LimiterRequest};

/// One limit shared by every thread and event loop of the process.
#[pyclass(module = "crewthrottle", name = "Limiter", frozen, weakref)]
pub struct Limiter {
    shared: Arc<LimiterShared>,
    gate: Arc<Gate<LimiterBudget>>,
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

/// `async with limiter:`: the grant is lent to the limiter until `__aexit__`.
struct LentOutcome(Arc<Gate<LimiterBudget>>);

impl AsyncOutcome<LimiterBudget> for LentOutcome {
    fn granted(&self, py: Python<'_>, grant: LimiterGrant) -> PyResult<Py<PyAny>> {
        self.0.with_resource(|budget, _| budget.lend(grant));
        Ok(py.None())
    }

    fn timed_out(&self, _py: Python<'_>) -> PyResult<Py<PyAny>> {
        Err(timeout_error(f64::INFINITY))
    }
}

fn timeout_error(timeout: f64) -> PyErr {
    AcquireTimeout::new_err(format!("no permit within the timeout of {timeout} s"))
}

fn request(tokens: Option<&Bound<'_, PyAny>>) -> PyResult<LimiterRequest> {
    let tokens = args::optional_count(tokens, "tokens", 0)?.unwrap_or(0);
    Ok(LimiterRequest { tokens })
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
        signature = (*, max_concurrent = None, rpm = None, tpm = None, window = None, burst = None, margin = None, name = None, adaptive = false),
        text_signature = "(*, max_concurrent=None, rpm=None, tpm=None, window=60.0, burst=None, margin=None, name=None, adaptive=False)"
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
        adaptive: bool,
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
        )?
        .with_adaptive(adaptive);
        let gate = Gate::new(LimiterBudget::new(config), Clock::monotonic());
        let shared = LimiterShared::new(py, gate, config, name);
        Ok(Limiter {
            gate: Arc::clone(&shared.gate),
            shared,
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
        let request = request(tokens)?;
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
        let request = request(tokens)?;
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
        let request = request(tokens)?;
        let secs = args::timeout(timeout)?;
        let outcome = PermitOutcome {
            gate: Arc::clone(&self.gate),
            timeout: secs.unwrap_or(f64::INFINITY),
        };
        wait::acquire_async(py, &self.gate, request, secs, outcome)
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<()> {
        if let Some(grant) = wait::block_on(py, &self.gate, LimiterRequest::default(), None)? {
            self.gate.with_resource(|budget, _| budget.lend(grant));
        }
        Ok(())
    }

    fn __exit__(
        &self,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) {
        self.gate.with_resource(|budget, _| budget.release_lent());
    }

    fn __aenter__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let outcome = LentOutcome(Arc::clone(&self.gate));
        wait::acquire_async(py, &self.gate, LimiterRequest::default(), None, outcome)
    }

    fn __aexit__(
        &self,
        py: Python<'_>,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        self.gate.with_resource(|budget, _| budget.release_lent());
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
    /// Returns whether this started a pause (none was in force).
    fn pause(&self, seconds: &Bound<'_, PyAny>) -> PyResult<bool> {
        let seconds = args::seconds(seconds, "seconds", false)?;
        Ok(self
            .gate
            .with_resource(|budget, now| budget.pause(now, seconds)))
    }

    /// Lifts a pause (`pause()`, or a provider's Retry-After through `backoff`) at once.
    fn resume(&self) {
        self.gate.with_resource(|budget, _| budget.resume());
    }

    /// Live figures: in_flight, waiting, acquired, timeouts, cancelled, tokens_granted,
    /// tokens_charged, tokens_refunded, requests_in_window, tokens_in_window, paused_for,
    /// blocked_by, total_wait, max_wait, wait_p50, wait_p90, wait_p99 (seconds), the limits in
    /// force (effective_max_concurrent, effective_rpm, effective_tpm, limits_reason,
    /// foreign_requests_in_window, foreign_tokens_in_window), and the retry layer's retries,
    /// give_ups, retries_refused, rate_limit_errors.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.shared.stats(py)
    }

    /// What `_limiter_snapshots()` gives for this limiter: `stats()` plus the configuration
    /// and cumulative wait buckets, read without waiting for the gate's lock.
    fn _snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.shared.snapshot(py)
    }

    /// Counts a retry layer's event ("retried", "gave_up", "refused" or "rate_limited") in
    /// `stats()`.
    fn _count_retry(&self, py: Python<'_>, event: &str) -> PyResult<()> {
        let event = RetryEvent::named(event)
            .ok_or_else(|| PyValueError::new_err(format!("unknown retry event {event:?}")))?;
        self.shared.count_retry(py, event)
    }

    /// Takes in a response's rate-limit headers (any mapping: httpx, requests, a dict; missing
    /// or malformed values are ignored): limits learned, foreign traffic counted, and with
    /// `status=429` a rate limit that lowers the rates unless the headers explain it.
    #[pyo3(signature = (headers, *, status = None))]
    fn observe(
        &self,
        py: Python<'_>,
        headers: &Bound<'_, PyAny>,
        status: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let seen = adaptive::observation(headers, status)?;
        self.shared.observe(py, &seen)
    }

    /// `observe` with the figures already read from the headers.
    #[pyo3(signature = (requests_limit = None, requests_remaining = None, tokens_limit = None, tokens_remaining = None, *, status = None))]
    fn _observe(
        &self,
        py: Python<'_>,
        requests_limit: Option<&Bound<'_, PyAny>>,
        requests_remaining: Option<&Bound<'_, PyAny>>,
        tokens_limit: Option<&Bound<'_, PyAny>>,
        tokens_remaining: Option<&Bound<'_, PyAny>>,
        status: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let figures = adaptive::figures([
            (requests_limit, "requests_limit"),
            (requests_remaining, "requests_remaining"),
            (tokens_limit, "tokens_limit"),
            (tokens_remaining, "tokens_remaining"),
        ])?;
        let seen = adaptive::observed(figures, adaptive::rate_limited(status)?);
        self.shared.observe(py, &seen)
    }

    /// Whether limits not given are learned from the provider's rate-limit headers.
    #[getter]
    fn adaptive(&self) -> bool {
        self.shared.config.adaptive
    }

    #[getter]
    fn name(&self) -> Option<&str> {
        self.shared.name.as_deref()
    }

    #[getter]
    fn max_concurrent(&self) -> Option<u64> {
        self.shared.config.max_concurrent
    }

    #[getter]
    fn rpm(&self) -> Option<u64> {
        self.shared.config.rpm
    }

    #[getter]
    fn tpm(&self) -> Option<u64> {
        self.shared.config.tpm
    }

    #[getter]
    fn window(&self) -> f64 {
        self.shared.config.window
    }

    #[getter]
    fn burst(&self) -> Option<u32> {
        self.shared.config.burst
    }

    #[getter]
    fn margin(&self) -> f64 {
        self.shared.config.margin
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
            adaptive,
        } = this.shared.config;
        let (in_flight, waiting) = this
            .gate
            .inspect(|budget, waits, now| (budget.figures(now).in_flight, waits.waiting));
        let show = |v: Option<u64>| v.map_or_else(|| "None".to_owned(), |v| v.to_string());
        let name = this
            .shared
            .name
            .as_ref()
            .map(|n| format!(" {n:?}"))
            .unwrap_or_default();
        let adaptive = if adaptive { " adaptive=True" } else { "" };
        Ok(format!(
            "<{}{name} max_concurrent={} rpm={} tpm={} window={window:?} burst={} margin={margin:?}\
             {adaptive}: in_flight={in_flight} waiting={waiting}>",
            qualified_name(&slf.get_type())?,
            show(max_concurrent),
            show(rpm),
            show(tpm),
            show(burst.map(u64::from)),
        ))
    }
}
