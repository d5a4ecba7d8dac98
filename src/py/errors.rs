//! Core errors to Python exceptions, in one place (as jiter's `map_json_error`).

use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyTimeoutError, PyValueError};
use pyo3::PyErr;

use crate::core::error::InvalidArgument;
use crate::core::semaphore::OverRelease;

create_exception!(
    crewthrottle,
    AcquireTimeout,
    PyTimeoutError,
    "No permit could be had before the timeout passed (a subclass of TimeoutError)."
);

impl From<InvalidArgument> for PyErr {
    fn from(err: InvalidArgument) -> PyErr {
        PyValueError::new_err(err.to_string())
    }
}

impl From<OverRelease> for PyErr {
    fn from(err: OverRelease) -> PyErr {
        PyValueError::new_err(err.to_string())
    }
}

/// A waiter's ticket vanished from its gate: a bug, reported rather than hung on.
pub fn lost_ticket() -> PyErr {
    PyRuntimeError::new_err("crewthrottle: a waiting ticket was lost (please report this bug)")
}
