//! Where a `Limiter` keeps its budget: in this process (the core's gate) or on Redis, shared
//! by every process that names it. Both are waited on by the same edge (`wait.rs`); this is
//! the one place that tells them apart.

use std::sync::Arc;

use pyo3::prelude::*;

use super::errors::AcquireTimeout;
use super::permit::Permit;
use super::wait::{self, AsyncOutcome};
use crate::core::gate::Gate;
use crate::core::limiter::{LimiterBudget, LimiterGrant, LimiterRequest};
use crate::core::queue::WaitQueue;
use crate::store::redis::{RedisGrant, RedisQueue};

/// A limiter's budget.
#[derive(Clone)]
pub enum Engine {
    /// In this process.
    Memory(Arc<Gate<LimiterBudget>>),
    /// On Redis.
    Redis(Arc<RedisQueue>),
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
            Want::Lent => {
                gate.with_resource(|budget, _| budget.lend(grant));
                Ok(py.None())
            }
        }
    }

    fn timed_out(&self, _py: Python<'_>) -> PyResult<Py<PyAny>> {
        Outcome::timed_out(self)
    }
}

impl AsyncOutcome<RedisGrant> for Outcome {
    fn granted(&self, py: Python<'_>, grant: RedisGrant) -> PyResult<Py<PyAny>> {
        let Engine::Redis(queue) = &self.engine else {
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

fn wrong_store() -> PyErr {
    pyo3::exceptions::PyRuntimeError::new_err(
        "crewthrottle: a grant reached the wrong store (please report this bug)",
    )
}

/// `AcquireTimeout` for a wait of `timeout` seconds.
pub fn timeout_error(timeout: f64) -> PyErr {
    AcquireTimeout::new_err(format!("no permit within the timeout of {timeout} s"))
}

impl Engine {
    /// Waits (GIL released) for a permit; `None` on timeout.
    pub fn acquire(
        &self,
        py: Python<'_>,
        request: LimiterRequest,
        timeout: Option<f64>,
    ) -> PyResult<Option<Py<Permit>>> {
        let permit = match self {
            Engine::Memory(gate) => wait::block_on(py, &**gate, request, timeout)?
                .map(|grant| Permit::memory(Arc::clone(gate), grant)),
            Engine::Redis(queue) => wait::block_on(py, &**queue, request, timeout)?
                .map(|grant| Permit::redis(Arc::clone(queue), grant)),
        };
        permit.map(|p| Py::new(py, p)).transpose()
    }

    /// A permit if one can be had now (a round trip with the GIL released on Redis).
    pub fn try_acquire(
        &self,
        py: Python<'_>,
        request: LimiterRequest,
    ) -> PyResult<Option<Py<Permit>>> {
        let permit = match self {
            Engine::Memory(gate) => gate
                .try_acquire(request)?
                .map(|grant| Permit::memory(Arc::clone(gate), grant)),
            Engine::Redis(queue) => py
                .detach(|| queue.try_acquire(request, true))?
                .map(|grant| Permit::redis(Arc::clone(queue), grant)),
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
        let outcome = Outcome {
            engine: self.clone(),
            want: if lent { Want::Lent } else { Want::Permit },
            timeout: timeout.unwrap_or(f64::INFINITY),
        };
        match self {
            Engine::Memory(gate) => wait::acquire_async(py, gate, request, timeout, outcome),
            Engine::Redis(queue) => wait::acquire_async(py, queue, request, timeout, outcome),
        }
    }

    /// `with limiter:`: waits for a grant and lends it to the limiter.
    pub fn enter(&self, py: Python<'_>) -> PyResult<()> {
        let request = LimiterRequest::default();
        match self {
            Engine::Memory(gate) => {
                if let Some(grant) = wait::block_on(py, &**gate, request, None)? {
                    gate.with_resource(|budget, _| budget.lend(grant));
                }
            }
            Engine::Redis(queue) => {
                if let Some(grant) = wait::block_on(py, &**queue, request, None)? {
                    queue.lend(grant);
                }
            }
        }
        Ok(())
    }

    /// The end of a `with limiter:` block: releases one lent grant.
    pub fn exit(&self) {
        match self {
            Engine::Memory(gate) => {
                gate.with_resource(|budget, _| budget.release_lent());
            }
            Engine::Redis(queue) => {
                queue.release_lent();
            }
        }
    }

    /// Pauses every grant for `seconds`; whether this started a pause.
    pub fn pause(&self, seconds: f64) -> bool {
        match self {
            Engine::Memory(gate) => gate.with_resource(|budget, now| budget.pause(now, seconds)),
            Engine::Redis(queue) => queue.pause(seconds),
        }
    }

    /// Lifts a pause.
    pub fn resume(&self) {
        match self {
            Engine::Memory(gate) => gate.with_resource(|budget, _| budget.resume()),
            Engine::Redis(queue) => queue.resume(),
        }
    }

    /// Validates a request without waiting.
    pub fn validate(&self, request: &LimiterRequest) -> PyResult<()> {
        match self {
            Engine::Memory(gate) => Ok(WaitQueue::validate(&**gate, request)?),
            Engine::Redis(queue) => Ok(queue.validate(request)?),
        }
    }
}
