//! `Permit`: one granted request of a `Limiter`, released exactly once — by `release()`, by
//! leaving its `with` block, or when it is garbage-collected.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::args;
use super::wait;
use crate::core::gate::Gate;
use crate::core::limiter::{LimiterBudget, LimiterGrant, MAX_COUNT};

/// The most tokens a settle accepts: far beyond any real request, far from overflow.
const MAX_TOKENS: u64 = MAX_COUNT;

/// A granted request: holds one concurrency slot and its reserved tokens until released.
#[pyclass(module = "crewthrottle", name = "Permit", frozen)]
pub struct Permit {
    gate: Arc<Gate<LimiterBudget>>,
    /// Only ever read or written under the gate's lock (see [`Permit::with_grant`]): no lock
    /// of its own that a fork could leave held.
    grant: UnsafeCell<LimiterGrant>,
    released: AtomicBool,
}

// SAFETY: `grant` is only accessed inside closures the gate runs under its lock, which
// serialises every access from every thread.
unsafe impl Sync for Permit {}

impl Permit {
    /// A permit for `grant`, made by `gate`.
    pub fn new(gate: Arc<Gate<LimiterBudget>>, grant: LimiterGrant) -> Self {
        Permit {
            gate,
            grant: UnsafeCell::new(grant),
            released: AtomicBool::new(false),
        }
    }

    /// Changes the budget and this permit's grant together, under the gate's lock.
    fn with_grant<T>(&self, change: impl FnOnce(&mut LimiterBudget, &mut LimiterGrant) -> T) -> T {
        // SAFETY: under the gate's lock (see the field's docs).
        self.gate
            .with_resource(|budget, _| change(budget, unsafe { &mut *self.grant.get() }))
    }

    fn release_once(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.with_grant(|budget, grant| budget.release(grant));
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
        // Under the gate's lock, so concurrent settles of one permit are serialised.
        self.gate.with_resource(|budget, now| {
            // SAFETY: under the gate's lock (see the field's docs).
            budget.settle(unsafe { &mut *self.grant.get() }, actual, now)
        });
        Ok(())
    }

    /// Tokens charged for this request (reserved, or as settled).
    #[getter]
    fn tokens(&self) -> u64 {
        // SAFETY: under the gate's lock (see the field's docs).
        self.gate
            .inspect(|_, _, _| unsafe { (*self.grant.get()).charged })
    }

    /// When the request started as the limiter counts it, in seconds on the limiter's clock
    /// (private: lets tests check the windows exactly, tests/test_stress.py).
    #[getter]
    fn _started(&self) -> f64 {
        // SAFETY: under the gate's lock (see the field's docs).
        let started = self
            .gate
            .inspect(|_, _, _| unsafe { (*self.grant.get()).started });
        started.as_u64() as f64 / 1e9
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
