//! Where a `Limiter` keeps its budget: in this process (the core's gate) or on Redis, shared
//! by every process that names it. Both are waited on by the same edge (`wait.rs`); this is
//! the one place that tells them apart.

use std::sync::Arc;

use pyo3::prelude::*;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::errors::{timeout_error, wrong_store, BackendUnavailable};
use super::permit::Permit;
use super::wait::{self, AsyncOutcome};
use crate::core::{
    nanos_of, Clock, Gate, LimiterBudget, LimiterConfig, LimiterGrant, LimiterRequest, WaitQueue,
};
use crate::store::log;
use crate::store::redis::{RedisGrant, RedisQueue};

/// A limiter's budget.
#[derive(Clone)]
pub enum Engine {
    /// In this process.
    Memory(Arc<Gate<LimiterBudget>>),
    /// On Redis, with an in-process fallback for when it cannot be reached, if asked for.
    Redis(Arc<RedisQueue>, Option<Arc<Fallback>>),
}

/// `RedisBackend(on_failure="local")`: while the store cannot be reached, grants come from an
/// in-process limiter holding `share` of each limit; the store is tried again every
/// `retry_after`. Each switch is logged once.
pub struct Fallback {
    gate: Arc<Gate<LimiterBudget>>,
    share: f64,
    retry_after: Duration,
    name: String,
    /// The instant (on the fallback gate's clock) until which the fallback is used; 0: up.
    down_until: AtomicU64,
}

impl Fallback {
    /// A fallback with `share` of `config`'s limits.
    pub fn new(
        config: &LimiterConfig,
        share: f64,
        retry_after: Duration,
        name: &str,
    ) -> PyResult<Self> {
        let scale = |v: Option<u64>| v.map(|v| ((v as f64 * share).floor() as u64).max(1));
        let local = LimiterConfig::new(
            scale(config.max_concurrent),
            scale(config.rpm),
            scale(config.tpm),
            config.window,
            None,
            Some(config.margin),
        )?;
        Ok(Fallback {
            gate: Arc::new(Gate::new(LimiterBudget::new(local), Clock::monotonic())),
            share,
            retry_after,
            name: name.to_owned(),
            down_until: AtomicU64::new(0),
        })
    }

    /// The in-process gate (for forks and `with` blocks).
    pub fn gate(&self) -> &Arc<Gate<LimiterBudget>> {
        &self.gate
    }

    fn in_force(&self) -> bool {
        let until = self.down_until.load(Ordering::Acquire);
        until != 0 && self.gate.clock().now().as_u64() < until
    }

    fn mark_down(&self, why: &str) {
        let until = self.gate.clock().now().as_u64() + nanos_of(self.retry_after);
        if self.down_until.swap(until.max(1), Ordering::AcqRel) == 0 {
            log::log(
                log::Level::Warning,
                &format!(
                    "crewthrottle: {why}; the limiter {:?} falls back to an in-process limiter \
                     with {} of each limit until Redis answers again (tried every {:?})",
                    self.name, self.share, self.retry_after
                ),
            );
        }
    }

    fn mark_up(&self) {
        if self.down_until.swap(0, Ordering::AcqRel) != 0 {
            log::log(
                log::Level::Info,
                &format!(
                    "crewthrottle: Redis answers again: {:?} is shared again",
                    self.name
                ),
            );
        }
    }
}

/// The in-process acquisition a fallback makes, called by `_waiting.acquire_or_fall_back`
/// when the store could not be reached (private).
#[pyclass(module = "crewthrottle._native", name = "_FallBack", frozen)]
pub struct FallBack {
    fallback: Arc<Fallback>,
    request: LimiterRequest,
    timeout: Option<f64>,
    lent: bool,
}

#[pymethods]
impl FallBack {
    fn __call__(&self, py: Python<'_>, error: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.fallback.mark_down(&error.str()?.to_string());
        Engine::Memory(Arc::clone(&self.fallback.gate)).acquire_async(
            py,
            self.request,
            self.timeout,
            self.lent,
        )
    }
}

fn unavailable(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<BackendUnavailable>(py)
}

/// What an async acquisition turns its grant into.
#[derive(Clone, Copy)]
enum Want {
    /// A `Permit` (`acquire_async`).
    Permit,
    /// Nothing: the grant is lent to the limiter until `__aexit__` (`async with limiter:`).
    Lent,
}

struct Outcome {
    engine: Engine,
    want: Want,
    timeout: f64,
}

impl Outcome {
    fn timed_out(&self) -> PyResult<Py<PyAny>> {
        Err(timeout_error(self.timeout))
    }
}

impl AsyncOutcome<LimiterGrant> for Outcome {
    fn granted(&self, py: Python<'_>, grant: LimiterGrant) -> PyResult<Py<PyAny>> {
        let Engine::Memory(gate) = &self.engine else {
            return Err(wrong_store());
        };
        match self.want {
            Want::Permit => Ok(Py::new(py, Permit::memory(Arc::clone(gate), grant))?.into_any()),
            // Kept by the budget as it was taken (`LimiterRequest::lend`).
            Want::Lent => Ok(py.None()),
        }
    }

    fn timed_out(&self, _py: Python<'_>) -> PyResult<Py<PyAny>> {
        Outcome::timed_out(self)
    }
}

impl AsyncOutcome<RedisGrant> for Outcome {
    fn granted(&self, py: Python<'_>, grant: RedisGrant) -> PyResult<Py<PyAny>> {
        let Engine::Redis(queue, _) = &self.engine else {
            return Err(wrong_store());
        };
        match self.want {
            Want::Permit => Ok(Py::new(py, Permit::redis(Arc::clone(queue), grant))?.into_any()),
            Want::Lent => {
                queue.lend(grant);
                Ok(py.None())
            }
        }
    }

    fn timed_out(&self, _py: Python<'_>) -> PyResult<Py<PyAny>> {
        Outcome::timed_out(self)
    }
}

impl Engine {
    /// Waits (GIL released) for a permit; `None` on timeout.
    pub fn acquire(
        &self,
        py: Python<'_>,
        request: LimiterRequest,
        timeout: Option<f64>,
    ) -> PyResult<Option<Py<Permit>>> {
        let permit = match self.live() {
            Engine::Memory(gate) => wait::block_on(py, &*gate, request, timeout)?
                .map(|grant| Permit::memory(Arc::clone(&gate), grant)),
            Engine::Redis(queue, fallback) => match wait::block_on(py, &*queue, request, timeout) {
                Ok(grant) => {
                    up(&fallback);
                    grant.map(|grant| Permit::redis(Arc::clone(&queue), grant))
                }
                Err(err) => return self.fall_back(py, err, |e| e.acquire(py, request, timeout)),
            },
        };
        permit.map(|p| Py::new(py, p)).transpose()
    }

    /// The engine to use now: the fallback's while it is in force.
    fn live(&self) -> Engine {
        match self {
            Engine::Redis(_, Some(fallback)) if fallback.in_force() => {
                Engine::Memory(Arc::clone(&fallback.gate))
            }
            engine => engine.clone(),
        }
    }

    /// After `err` from the store: the fallback's answer if there is one and the store is
    /// unreachable, else `err`.
    fn fall_back<T>(
        &self,
        py: Python<'_>,
        err: PyErr,
        retry: impl FnOnce(&Engine) -> PyResult<T>,
    ) -> PyResult<T> {
        match self {
            Engine::Redis(_, Some(fallback)) if unavailable(py, &err) => {
                fallback.mark_down(&err.value(py).to_string());
                retry(&Engine::Memory(Arc::clone(&fallback.gate)))
            }
            _ => Err(err),
        }
    }

    /// A permit if one can be had now (a round trip with the GIL released on Redis).
    pub fn try_acquire(
        &self,
        py: Python<'_>,
        request: LimiterRequest,
    ) -> PyResult<Option<Py<Permit>>> {
        let permit = match self.live() {
            Engine::Memory(gate) => gate
                .try_acquire(request)?
                .map(|grant| Permit::memory(Arc::clone(&gate), grant)),
            Engine::Redis(queue, fallback) => {
                match py.detach(|| queue.try_acquire(request, true)) {
                    Ok(grant) => {
                        up(&fallback);
                        grant.map(|grant| Permit::redis(Arc::clone(&queue), grant))
                    }
                    Err(err) => {
                        return self.fall_back(py, err.into(), |e| e.try_acquire(py, request))
                    }
                }
            }
        };
        permit.map(|p| Py::new(py, p)).transpose()
    }

    /// An awaitable of a permit (or, `lent`, of None with the grant lent to the limiter).
    pub fn acquire_async(
        &self,
        py: Python<'_>,
        request: LimiterRequest,
        timeout: Option<f64>,
        lent: bool,
    ) -> PyResult<Py<PyAny>> {
        let engine = self.live();
        let outcome = Outcome {
            engine: engine.clone(),
            want: if lent { Want::Lent } else { Want::Permit },
            timeout: timeout.unwrap_or(f64::INFINITY),
        };
        let request = LimiterRequest {
            lend: lent && matches!(engine, Engine::Memory(_)),
            ..request
        };
        match &engine {
            Engine::Memory(gate) => wait::acquire_async(py, gate, request, timeout, outcome),
            Engine::Redis(queue, None) => wait::acquire_async(py, queue, request, timeout, outcome),
            Engine::Redis(queue, Some(fallback)) => {
                let fall_back = FallBack {
                    fallback: Arc::clone(fallback),
                    request,
                    timeout,
                    lent,
                };
                let fall_back = Py::new(py, fall_back)?.into_any();
                wait::acquire_async_or(py, queue, request, timeout, outcome, fall_back)
            }
        }
    }

    /// `with limiter:`: waits for a grant and lends it to the limiter.
    pub fn enter(&self, py: Python<'_>) -> PyResult<()> {
        let request = LimiterRequest::default();
        match self.live() {
            Engine::Memory(gate) => {
                // Kept by the budget as it is taken, under the same lock.
                let lent = LimiterRequest {
                    lend: true,
                    ..request
                };
                wait::block_on(py, &*gate, lent, None)?;
            }
            Engine::Redis(queue, fallback) => match wait::block_on(py, &*queue, request, None) {
                Ok(grant) => {
                    up(&fallback);
                    if let Some(grant) = grant {
                        queue.lend(grant);
                    }
                }
                Err(err) => return self.fall_back(py, err, |e| e.enter(py)),
            },
        }
        Ok(())
    }

    /// The end of a `with limiter:` block: releases one lent grant (from the store, or from
    /// the fallback if the block got its grant there).
    pub fn exit(&self) {
        match self {
            Engine::Memory(gate) => {
                gate.with_resource(|budget, _| budget.release_lent());
            }
            Engine::Redis(queue, fallback) => {
                if !queue.release_lent() {
                    if let Some(fallback) = fallback {
                        fallback
                            .gate
                            .with_resource(|budget, _| budget.release_lent());
                    }
                }
            }
        }
    }

    /// Pauses every grant for `seconds`; whether this started a pause.
    pub fn pause(&self, seconds: f64) -> bool {
        match self {
            Engine::Memory(gate) => gate.with_resource(|budget, now| budget.pause(now, seconds)),
            Engine::Redis(queue, fallback) => {
                if let Some(fallback) = fallback {
                    fallback
                        .gate
                        .with_resource(|budget, now| budget.pause(now, seconds));
                }
                queue.pause(seconds)
            }
        }
    }

    /// Lifts a pause.
    pub fn resume(&self) {
        match self {
            Engine::Memory(gate) => gate.with_resource(|budget, _| budget.resume()),
            Engine::Redis(queue, fallback) => {
                if let Some(fallback) = fallback {
                    fallback.gate.with_resource(|budget, _| budget.resume());
                }
                queue.resume();
            }
        }
    }

    /// Validates a request without waiting.
    pub fn validate(&self, request: &LimiterRequest) -> PyResult<()> {
        match self {
            Engine::Memory(gate) => Ok(WaitQueue::validate(&**gate, request)?),
            Engine::Redis(queue, _) => Ok(queue.validate(request)?),
        }
    }
}

fn up(fallback: &Option<Arc<Fallback>>) {
    if let Some(fallback) = fallback {
        fallback.mark_up();
    }
}
