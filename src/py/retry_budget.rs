//! `RetryBudget`: retries allowed only up to a share of recent first attempts.

use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::args;
use super::semaphore::qualified_name;
use crate::core::fork::{self, AfterFork};
use crate::core::Clock;
use crate::core::RetryBudget as Budget;

/// Caps retries at `ratio` of the calls of the last `window` seconds, plus
/// `min_retries_per_s`, shared by every thread and task (gRPC retry throttling, Finagle).
///
/// Ranges (ValueError outside them): 0 <= `ratio` <= 1000; `min_retries_per_s` finite and
/// >= 0; 1e-9 <= `window` <= 1e9 seconds.
#[pyclass(module = "crewthrottle", name = "RetryBudget", frozen)]
pub struct RetryBudget {
    budget: Arc<Budget>,
}

#[pymethods]
impl RetryBudget {
    #[new]
    #[pyo3(
        signature = (ratio = None, min_retries_per_s = None, window = None),
        text_signature = "(ratio=0.2, min_retries_per_s=1.0, window=10.0)"
    )]
    fn new(
        py: Python<'_>,
        ratio: Option<&Bound<'_, PyAny>>,
        min_retries_per_s: Option<&Bound<'_, PyAny>>,
        window: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let ratio = ratio
            .map(|r| args::number(r, "ratio"))
            .transpose()?
            .unwrap_or(0.2);
        let floor = min_retries_per_s
            .map(|m| args::number(m, "min_retries_per_s"))
            .transpose()?
            .unwrap_or(1.0);
        let window = window
            .map(|w| args::seconds(w, "window", true))
            .transpose()?
            .unwrap_or(10.0);
        // In range (checked above), so only a window below a nanosecond fails: as zero.
        let window = Duration::try_from_secs_f64(window).unwrap_or(Duration::ZERO);
        let budget = Budget::new(ratio, floor, window, Clock::monotonic())
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let budget = Arc::new(budget);
        let weak = Arc::downgrade(&budget) as std::sync::Weak<dyn AfterFork>;
        py.detach(|| fork::register(weak));
        Ok(RetryBudget { budget })
    }

    /// Records a first attempt (each earns `ratio` of a retry for the next `window`).
    fn record_call(&self) {
        self.budget.record_call();
    }

    /// Spends one retry if the budget allows it; False means: do not retry.
    fn try_spend_retry(&self) -> bool {
        self.budget.try_spend_retry()
    }

    /// Retries the budget would allow right now.
    #[getter]
    fn available(&self) -> u64 {
        self.budget.available()
    }

    #[getter]
    fn ratio(&self) -> f64 {
        self.budget.ratio()
    }

    #[getter]
    fn min_retries_per_s(&self) -> f64 {
        self.budget.min_retries_per_s()
    }

    #[getter]
    fn window(&self) -> f64 {
        self.budget.window().as_secs_f64()
    }

    /// Totals: calls (first attempts), retries allowed, refused.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let totals = self.budget.stats();
        let stats = PyDict::new(py);
        stats.set_item("calls", totals.calls)?;
        stats.set_item("retries", totals.retries)?;
        stats.set_item("refused", totals.refused)?;
        Ok(stats)
    }

    fn __copy__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __deepcopy__(slf: Py<Self>, _memo: &Bound<'_, PyAny>) -> Py<Self> {
        slf
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let b = &slf.get().budget;
        Ok(format!(
            "<{} ratio={:?} min_retries_per_s={:?} window={:?}: available={}>",
            qualified_name(&slf.get_type())?,
            b.ratio(),
            b.min_retries_per_s(),
            b.window().as_secs_f64(),
            b.available()
        ))
    }
}
