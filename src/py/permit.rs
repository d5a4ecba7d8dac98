//! `Permit`: one granted request of a `Limiter`, released exactly once — by `release()`, by
//! leaving its `with` block, or when it is garbage-collected.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::args;
use super::wait;
use crate::core::{Gate, LimiterBudget, LimiterGrant, MAX_COUNT};
use crate::store::redis::{RedisGrant, RedisQueue};

/// The most tokens a settle accepts: far beyond any real request, far from overflow.
const MAX_TOKENS: u64 = MAX_COUNT;

/// A granted request: holds one concurrency slot and its reserved tokens until released.
#[pyclass(module = "crewthrottle", name = "Permit", frozen)]
pub struct Permit {
    held: Held,
    released: AtomicBool,
}

/// Where the grant lives.
enum Held {
    /// In this process's gate. The grant is only ever read or written under the gate's lock
    /// (see [`Permit::with_grant`]): no lock of its own that a fork could leave held.
    Memory {
        gate: Arc<Gate<LimiterBudget>>,
        grant: UnsafeCell<LimiterGrant>,
    },
    /// On Redis: its id (the fencing token) and the tokens charged, settled atomically.
    Redis {
        queue: Arc<RedisQueue>,
        grant: RedisGrant,
        tokens: AtomicU64,
    },
}

// SAFETY: a memory grant is only accessed inside closures the gate runs under its lock, which
// serialises every access from every thread; a Redis grant is immutable but for an atomic.
unsafe impl Sync for Permit {}

impl Permit {
    /// A permit for `grant`, made by `gate`.
    pub fn memory(gate: Arc<Gate<LimiterBudget>>, grant: LimiterGrant) -> Self {
        Permit {
            held: Held::Memory {
                gate,
                grant: UnsafeCell::new(grant),
            },
            released: AtomicBool::new(false),
        }
    }

    /// A permit for `grant`, made by a shared budget on Redis.
    pub fn redis(queue: Arc<RedisQueue>, grant: RedisGrant) -> Self {
        Permit {
            held: Held::Redis {
                queue,
                tokens: AtomicU64::new(grant.tokens),
                grant,
            },
            released: AtomicBool::new(false),
        }
    }

    fn release_once(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        match &self.held {
            Held::Memory { gate, grant } => {
                // SAFETY: under the gate's lock (see `Held::Memory`).
                gate.with_resource(|budget, _| budget.release(unsafe { &*grant.get() }));
            }
            Held::Redis { queue, grant, .. } => queue.release(*grant),
        }
    }
}

#[pymethods]
impl Permit {
    /// Gives the concurrency slot back. Idempotent; the tokens stay spent.
    fn release(&self) {
        self.release_once();
    }

    /// Corrects the tokens charged for this request to `actual_tokens` once the real usage
    /// is known: refunds the difference, or charges the excess.
    fn settle(&self, actual_tokens: &Bound<'_, PyAny>) -> PyResult<()> {
        let actual = args::count(actual_tokens, "actual_tokens", 0)?;
        if actual > MAX_TOKENS {
            return Err(PyValueError::new_err(format!(
                "actual_tokens is {actual}, more than any request uses (at most 2**53)"
            )));
        }
        match &self.held {
            // Under the gate's lock, so concurrent settles of one permit are serialised.
            Held::Memory { gate, grant } => gate.with_resource(|budget, now| {
                // SAFETY: under the gate's lock (see `Held::Memory`).
                budget.settle(unsafe { &mut *grant.get() }, actual, now)
            }),
            Held::Redis {
                queue,
                grant,
                tokens,
            } => {
                let mut settled = *grant;
                settled.tokens = tokens.swap(actual, Ordering::AcqRel);
                queue.settle(&mut settled, actual);
            }
        }
        Ok(())
    }

    /// Tokens charged for this request (reserved, or as settled).
    #[getter]
    fn tokens(&self) -> u64 {
        match &self.held {
            // SAFETY: under the gate's lock (see `Held::Memory`).
            Held::Memory { gate, grant } => {
                gate.inspect(|_, _, _| unsafe { (*grant.get()).charged })
            }
            Held::Redis { tokens, .. } => tokens.load(Ordering::Acquire),
        }
    }

    /// When a shared budget granted this permit, on the Redis server's clock (seconds since
    /// the Unix epoch); `None` for an in-process limiter.
    #[getter]
    fn server_time(&self) -> Option<f64> {
        match &self.held {
            Held::Memory { .. } => None,
            Held::Redis { grant, .. } => Some(grant.stamp_us as f64 / 1e6),
        }
    }

    /// When the request started as the limiter counts it, in seconds on the limiter's clock
    /// (private: lets tests check the windows exactly, tests/test_stress.py).
    #[getter]
    fn _started(&self) -> Option<f64> {
        match &self.held {
            Held::Memory { gate, grant } => {
                // SAFETY: under the gate's lock (see `Held::Memory`).
                let started = gate.inspect(|_, _, _| unsafe { (*grant.get()).started });
                Some(started.as_u64() as f64 / 1e9)
            }
            Held::Redis { .. } => None,
        }
    }

    /// Whether the permit has been released.
    #[getter]
    fn released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) {
        self.release_once();
    }

    fn __aenter__(slf: Py<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        wait::ready(py, slf.into_any())
    }

    fn __aexit__(
        &self,
        py: Python<'_>,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        self.release_once();
        wait::ready(py, py.None())
    }

    fn __repr__(&self) -> String {
        let state = if self.released() { "released" } else { "held" };
        format!("<crewthrottle.Permit {state}: tokens={}>", self.tokens())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // Garbage-collected while held: the slot comes back.
        self.release_once();
    }
}
