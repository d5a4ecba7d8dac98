//! `Permit`: one granted request of a `Limiter`, released exactly once — by `release()`, by
//! leaving its `with` block, or when it is garbage-collected.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
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
    grant: Mutex<LimiterGrant>,
    released: AtomicBool,
}

impl Permit {
    /// A permit for `grant`, made by `gate`.
    pub fn new(gate: Arc<Gate<LimiterBudget>>, grant: LimiterGrant) -> Self {
        Permit {
            gate,
            grant: Mutex::new(grant),
            released: AtomicBool::new(false),
        }
    }

    fn release_once(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            let grant = *self.grant.lock();
            self.gate.with_resource(|budget, _| budget.release(&grant));
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
        // Under the gate's lock, so concurrent settles of one permit are serialised; the gate
        // wakes waiters only after both locks are dropped (lock order: gate, then permit).
        self.gate
            .with_resource(|budget, now| budget.settle(&mut self.grant.lock(), actual, now));
        Ok(())
    }

    /// Tokens charged for this request (reserved, or as settled).
    #[getter]
    fn tokens(&self) -> u64 {
        self.grant.lock().charged
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
