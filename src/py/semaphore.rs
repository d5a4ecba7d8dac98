//! `Semaphore` and `BoundedSemaphore`: drop-in replacements for `threading`'s, which also
//! serve any number of event loops (`async with`, `acquire_async`).

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt, PyType};

use super::args;
use super::fork::new_gate;
use super::stats::WaitSummary;
use super::wait::{self, Flag};
use crate::core::clock::Clock;
use crate::core::gate::Gate;
use crate::core::semaphore::SemaphoreCount;

/// A counting semaphore shared by threads and event loops; waiters are served in order.
#[pyclass(module = "crewthrottle", name = "Semaphore", frozen, subclass)]
pub struct Semaphore {
    gate: Arc<Gate<SemaphoreCount>>,
}

impl Semaphore {
    fn with_count(
        py: Python<'_>,
        value: Option<&Bound<'_, PyAny>>,
        bounded: bool,
    ) -> PyResult<Self> {
        let value = match value {
            None => 1,
            // threading's message for a negative value; other errors name `value` as they are.
            Some(v) if v.is_instance_of::<PyInt>() && v.lt(0)? => {
                return Err(PyValueError::new_err(
                    "semaphore initial value must be >= 0",
                ));
            }
            Some(v) => args::count(v, "value", 0)?,
        };
        let gate = Gate::new(SemaphoreCount::new(value, bounded), Clock::monotonic());
        Ok(Semaphore {
            gate: new_gate(py, gate),
        })
    }
}

#[pymethods]
impl Semaphore {
    #[new]
    #[pyo3(signature = (value = None), text_signature = "(value=1)")]
    fn new(py: Python<'_>, value: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        Semaphore::with_count(py, value, false)
    }

    /// Takes a permit; see `threading.Semaphore.acquire`.
    #[pyo3(signature = (blocking = None, timeout = None), text_signature = "($self, blocking=True, timeout=None)")]
    fn acquire(
        &self,
        py: Python<'_>,
        blocking: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        // Any truthy value blocks, as in threading.
        let blocking = blocking.map_or(Ok(true), |b| b.is_truthy())?;
        if !blocking {
            args::no_timeout_when_nonblocking(timeout)?;
            return Ok(self.gate.try_acquire(())?.is_some());
        }
        let timeout = args::timeout(timeout)?;
        Ok(wait::block_on(py, &self.gate, (), timeout)?.is_some())
    }

    /// Awaits a permit; returns False if `timeout` seconds pass first.
    #[pyo3(signature = (timeout = None))]
    fn acquire_async(
        &self,
        py: Python<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let timeout = args::timeout(timeout)?;
        wait::acquire_async(py, &self.gate, (), timeout, Flag)
    }

    /// Gives back `n` permits; a `BoundedSemaphore` refuses to pass its initial value.
    #[pyo3(signature = (n = None), text_signature = "($self, n=1)")]
    fn release(&self, n: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let n = match n {
            None => 1,
            // threading's message for n < 1; other errors name `n` as they are.
            Some(n) if n.is_instance_of::<PyInt>() && n.lt(1)? => {
                return Err(PyValueError::new_err("n must be one or more"));
            }
            Some(n) => args::count(n, "n", 1)?,
        };
        Ok(self.gate.with_resource(|count, _| count.release(n))?)
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.acquire(py, None, None)
    }

    fn __exit__(
        &self,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.gate
            .with_resource(|count, _| count.release(1))
            .map_err(PyErr::from)
    }

    fn __aenter__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.acquire_async(py, None)
    }

    fn __aexit__(
        &self,
        py: Python<'_>,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        self.gate.with_resource(|count, _| count.release(1))?;
        wait::ready(py, py.None())
    }

    /// Counters: waiting, acquired, timeouts, cancelled, total_wait, max_wait, the recent
    /// wait percentiles wait_p50, wait_p90, wait_p99 (seconds, None without recent grants),
    /// and the current value.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (summary, value) = self
            .gate
            .inspect(|count, figures, now| (WaitSummary::of(figures, now), count.value()));
        let stats = summary.to_dict(py)?;
        stats.set_item("value", value)?;
        Ok(stats)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let (value, bound) = slf
            .get()
            .gate
            .inspect(|count, _, _| (count.value(), count.bound()));
        let cls = slf.get_type();
        let value = match bound {
            Some(bound) => format!("{value}/{bound}"),
            None => value.to_string(),
        };
        Ok(format!(
            "<{} at {:#x}: value={value}>",
            qualified_name(&cls)?,
            slf.as_ptr() as usize
        ))
    }
}

/// `module.QualName`, as threading's reprs show classes.
pub fn qualified_name(cls: &Bound<'_, PyType>) -> PyResult<String> {
    Ok(format!("{}.{}", cls.module()?, cls.qualname()?))
}

/// A semaphore that refuses to be released above its initial value.
#[pyclass(module = "crewthrottle", name = "BoundedSemaphore", frozen, extends = Semaphore, subclass)]
pub struct BoundedSemaphore;

#[pymethods]
impl BoundedSemaphore {
    #[new]
    #[pyo3(signature = (value = None), text_signature = "(value=1)")]
    fn new(py: Python<'_>, value: Option<&Bound<'_, PyAny>>) -> PyResult<PyClassInitializer<Self>> {
        let base = Semaphore::with_count(py, value, true)?;
        Ok(PyClassInitializer::from(base).add_subclass(BoundedSemaphore))
    }
}
