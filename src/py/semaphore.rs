//! `Semaphore` and `BoundedSemaphore`: drop-in replacements for `threading`'s, which also
//! serve any number of event loops (`async with`, `acquire_async`).

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple, PyType};

use super::args::{self, Given};
use super::fork::new_gate;
use super::stats::WaitSummary;
use super::wait::{self, Flag};
use crate::core::{Clock, Gate, SemaphoreCount};

/// A counting semaphore shared by threads and event loops; waiters are served in order.
/// Takes every argument `threading.Semaphore` takes, with its meaning (the differences are
/// in the README and `_native.pyi`).
///
/// Like `threading.Semaphore` (a plain Python class), it is set up by `__init__`, so a
/// subclass may take arguments of its own and call `super().__init__(value)`; `__new__`
/// takes whatever arguments the subclass's `__init__` does and starts at threading's
/// default value of 1. `dict` and `weakref`: threading's semaphores take attributes and
/// weak references.
#[pyclass(
    module = "crewthrottle",
    name = "Semaphore",
    frozen,
    subclass,
    dict,
    weakref
)]
pub struct Semaphore {
    gate: Arc<Gate<SemaphoreCount>>,
    bounded: bool,
}

impl Semaphore {
    fn unset(py: Python<'_>, bounded: bool) -> Self {
        let gate = Gate::new(SemaphoreCount::new(1, bounded), Clock::monotonic());
        Semaphore {
            gate: new_gate(py, gate),
            bounded,
        }
    }
}

/// A count or `n` as threading takes it (bools and `__index__` integers included).
fn count(obj: Given<'_>, name: &str, min: u64, below: &'static str) -> PyResult<u64> {
    match obj {
        Given::Missing => Ok(1),
        Given::Value(obj) => args::threading_count(&obj, name, min, below),
    }
}

#[pymethods]
impl Semaphore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs), text_signature = "(value=1)")]
    fn new(
        py: Python<'_>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> Self {
        Semaphore::unset(py, false)
    }

    /// Sets the value (again, as threading's `__init__` would); `value >= 0`.
    #[pyo3(signature = (value = Given::Missing))]
    fn __init__(&self, value: Given<'_>) -> PyResult<()> {
        // threading's message for a negative value.
        let value = count(value, "value", 0, "semaphore initial value must be >= 0")?;
        let bounded = self.bounded;
        self.gate
            .with_resource(|count, _| *count = SemaphoreCount::new(value, bounded));
        Ok(())
    }

    /// Takes a permit; see `threading.Semaphore.acquire`.
    #[pyo3(signature = (blocking = Given::Missing, timeout = None), text_signature = "($self, blocking=True, timeout=None)")]
    fn acquire(
        &self,
        py: Python<'_>,
        blocking: Given<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        // Any truthy value blocks, as in threading (so an explicit None does not).
        let blocking = match blocking {
            Given::Missing => true,
            Given::Value(b) => b.is_truthy()?,
        };
        if !blocking {
            args::no_timeout_when_nonblocking(timeout)?;
            return Ok(self.gate.try_acquire(())?.is_some());
        }
        let timeout = args::threading_timeout(timeout)?;
        Ok(wait::block_on(py, &*self.gate, (), timeout)?.is_some())
    }

    /// Awaits a permit; returns False if `timeout` seconds pass first.
    #[pyo3(signature = (timeout = None))]
    fn acquire_async(
        &self,
        py: Python<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let timeout = args::threading_timeout(timeout)?;
        wait::acquire_async(py, &self.gate, (), timeout, Flag)
    }

    /// Gives back `n` permits; a `BoundedSemaphore` refuses to pass its initial value.
    #[pyo3(signature = (n = Given::Missing), text_signature = "($self, n=1)")]
    fn release(&self, n: Given<'_>) -> PyResult<()> {
        // threading's message for n < 1.
        let n = count(n, "n", 1, "n must be one or more")?;
        Ok(self.gate.with_resource(|count, _| count.release(n))?)
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.acquire(py, Given::Missing, None)
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
    #[pyo3(signature = (*_args, **_kwargs), text_signature = "(value=1)")]
    fn new(
        py: Python<'_>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyClassInitializer<Self> {
        PyClassInitializer::from(Semaphore::unset(py, true)).add_subclass(BoundedSemaphore)
    }
}
