//! The figures every primitive reports in `stats()`.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::core::gate::GateCounters;

/// A `stats()` dict with the gate's counters (times in seconds).
pub fn gate_stats<'py>(
    py: Python<'py>,
    counters: &GateCounters,
    waiting: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let stats = PyDict::new(py);
    stats.set_item("waiting", waiting)?;
    stats.set_item("acquired", counters.acquired)?;
    stats.set_item("timeouts", counters.timeouts)?;
    stats.set_item("cancelled", counters.cancelled)?;
    stats.set_item("total_wait", counters.total_wait_ns as f64 / 1e9)?;
    stats.set_item("max_wait", counters.max_wait_ns as f64 / 1e9)?;
    Ok(stats)
}
