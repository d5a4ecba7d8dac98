//! `Limiter`: a concurrency cap plus requests and tokens per window, acquired as one.

use std::sync::Arc;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::adaptive;
use super::args;
use super::errors::timeout_error;
use super::limiter_engine::{Engine, Fallback};
use super::limiter_shared::{LimiterShared, RetryEvent};
use super::permit::Permit;
use super::redis_backend::RedisBackend;
use super::semaphore::qualified_name;
use super::wait;
use crate::core::{
    Clock, Gate, LimiterBudget, LimiterConfig, LimiterRequest, PressureEvent, PressureHook,
};
use crate::store::redis::RedisQueue;

/// One limit shared by every thread and event loop of the process — or, with a backend, by
/// every process that names it.
#[pyclass(module = "crewthrottle", name = "Limiter", frozen, weakref)]
pub struct Limiter {
    shared: Arc<LimiterShared>,
    engine: Engine,
    backend: Option<Py<RedisBackend>>,
}

fn request(tokens: Option<&Bound<'_, PyAny>>) -> PyResult<LimiterRequest> {
    let tokens = args::optional_count(tokens, "tokens", 0)?.unwrap_or(0);
    Ok(LimiterRequest {
        tokens,
        lend: false,
    })
}

/// Logs each change of pressure once, at INFO on `crewthrottle.limiter` (issue 11): when
/// callers start being held back, and when the limiter is calm again.
fn pressure_log(name: Option<&str>) -> PressureHook {
    let who = name.map_or_else(
        || "an unnamed limiter".to_owned(),
        |n| format!("limiter {n:?}"),
    );
    Box::new(move |event| {
        let message = match event {
            PressureEvent::Started {
                waited_ns,
                waiting,
                reason,
            } => format!(
                "{who} is pacing hard: its first waiter has waited {:.2} s ({} waiting; held by {})",
                *waited_ns as f64 / 1e9,
                waiting,
                reason.unwrap_or("the queue")
            ),
            PressureEvent::Ended { lasted_ns } => format!(
                "{who} is calm again, after {:.1} s of pacing hard",
                *lasted_ns as f64 / 1e9
            ),
        };
        crate::store::log::log(crate::store::log::Level::Info, &message);
    })
}

/// The engine for `config`: in memory, or on the backend under `name`.
fn engine(
    config: LimiterConfig,
    name: Option<&str>,
    backend: Option<&Bound<'_, PyAny>>,
) -> PyResult<(Engine, Option<Py<RedisBackend>>)> {
    let Some(backend) = backend.filter(|b| !b.is_none()) else {
        let gate = Gate::new(LimiterBudget::new(config), Clock::monotonic());
        gate.on_pressure(pressure_log(name));
        return Ok((Engine::Memory(Arc::new(gate)), None));
    };
    let Ok(redis) = backend.cast::<RedisBackend>() else {
        let kind = backend.get_type().name()?;
        return Err(PyTypeError::new_err(format!(
            "backend must be a crewthrottle.RedisBackend or None, got {kind}"
        )));
    };
    let Some(name) = name else {
        return Err(PyValueError::new_err(
            "name is required with a backend: every process that uses the same backend and \
             name shares one budget",
        ));
    };
    let settings = redis.get().settings();
    let fallback = match settings.local_share {
        Some(share) => {
            let retry_after = settings.timeout.max(std::time::Duration::from_secs(1));
            Some(Arc::new(Fallback::new(&config, share, retry_after, name)?))
        }
        None => None,
    };
    let queue = RedisQueue::new(settings, name, config);
    Ok((Engine::Redis(queue, fallback), Some(redis.clone().unbind())))
}

#[pymethods]
impl Limiter {
    #[new]
    #[pyo3(
        signature = (*, max_concurrent = None, rpm = None, tpm = None, window = None, burst = None, margin = None, name = None, backend = None, adaptive = false),
        text_signature = "(*, max_concurrent=None, rpm=None, tpm=None, window=60.0, burst=None, margin=None, name=None, backend=None, adaptive=False)"
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
        backend: Option<&Bound<'_, PyAny>>,
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
        super::logging::install();
        let (engine, backend) = engine(config, name.as_deref(), backend)?;
        let shared = LimiterShared::new(py, engine.clone(), config, name);
        Ok(Limiter {
            engine,
            shared,
            backend,
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
        self.engine
            .acquire(py, request, secs)?
            .ok_or_else(|| timeout_error(secs.unwrap_or(f64::INFINITY)))
    }

    /// A permit if one can be had now without waiting, else None.
    #[pyo3(signature = (tokens = None), text_signature = "($self, tokens=0)")]
    fn try_acquire(
        &self,
        py: Python<'_>,
        tokens: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<Py<Permit>>> {
        let request = request(tokens)?;
        self.engine.try_acquire(py, request)
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
        self.engine.acquire_async(py, request, secs, false)
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<()> {
        self.engine.enter(py)
    }

    fn __exit__(
        &self,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) {
        self.engine.exit();
    }

    fn __aenter__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.engine
            .acquire_async(py, LimiterRequest::default(), None, true)
    }

    fn __aexit__(
        &self,
        py: Python<'_>,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        self.engine.exit();
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
        Ok(self.engine.pause(seconds))
    }

    /// Lifts a pause (`pause()`, or a provider's Retry-After through `backoff`) at once.
    fn resume(&self) {
        self.engine.resume();
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

    /// The backend keeping the budget (`None`: this process).
    #[getter]
    fn backend(&self, py: Python<'_>) -> Option<Py<RedisBackend>> {
        self.backend.as_ref().map(|b| b.clone_ref(py))
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
        // Never a round trip: a shared budget shows what this process holds and awaits.
        let (in_flight, waiting, place) = match &this.engine {
            Engine::Memory(gate) => {
                let (f, w) = gate
                    .inspect(|budget, waits, now| (budget.figures(now).in_flight, waits.waiting));
                (f, w, String::new())
            }
            Engine::Redis(queue, _) => {
                let (waiting, holding) = queue.local_counts();
                (holding as u64, waiting, format!(" on {}", queue.url()))
            }
        };
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
             {adaptive}: in_flight={in_flight} waiting={waiting}{place}>",
            qualified_name(&slf.get_type())?,
            show(max_concurrent),
            show(rpm),
            show(tpm),
            show(burst.map(u64::from)),
        ))
    }
}
