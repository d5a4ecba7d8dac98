//! crewthrottle's native core: a pure-Rust core (`core`) and its Python bindings (`py`).

pub mod core;
pub mod py;
pub mod store;

/// The extension module `crewthrottle._native`; the public API is `crewthrottle`.
#[pyo3::pymodule(gil_used = false)]
mod _native {
    #[pymodule_export]
    use crate::py::backoff::BackoffSchedule;
    #[pymodule_export]
    use crate::py::errors::{AcquireTimeout, BackendUnavailable, LimitsConflict};
    #[pymodule_export]
    use crate::py::fork::{_after_fork_in_child, _after_fork_in_parent, _before_fork};
    #[pymodule_export]
    use crate::py::limiter::Limiter;
    #[pymodule_export]
    use crate::py::limiter_shared::_limiter_snapshots;
    #[pymodule_export]
    use crate::py::permit::Permit;
    #[pymodule_export]
    use crate::py::redis_backend::RedisBackend;
    #[pymodule_export]
    use crate::py::retry_budget::RetryBudget;
    #[pymodule_export]
    use crate::py::semaphore::{BoundedSemaphore, Semaphore};
    #[pymodule_export]
    use crate::py::token_bucket::TokenBucket;
    #[pymodule_export]
    use crate::py::wait::{Acquisition, Waiting};

    /// The version, from its one source: Cargo.toml.
    #[allow(non_upper_case_globals)] // Python's name for it
    #[pymodule_export]
    const __version__: &str = env!("CARGO_PKG_VERSION");
}
