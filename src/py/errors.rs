//! Core errors to Python exceptions, in one place (as jiter's `map_json_error`).

use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyTimeoutError, PyValueError};
use pyo3::PyErr;

use crate::core::{InvalidArgument, OverRelease, QueueError};

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

create_exception!(
    crewthrottle,
    BackendUnavailable,
    pyo3::exceptions::PyConnectionError,
    "The store that keeps a shared limit (Redis) cannot be reached; the message names it and \
     why (a subclass of ConnectionError)."
);

create_exception!(
    crewthrottle,
    LimitsConflict,
    PyValueError,
    "Another process set other limits for this shared budget (a subclass of ValueError)."
);

impl From<QueueError> for PyErr {
    fn from(err: QueueError) -> PyErr {
        match err {
            QueueError::Invalid(err) => err.into(),
            QueueError::Unavailable(what) => BackendUnavailable::new_err(what),
            QueueError::Conflict(what) => LimitsConflict::new_err(what),
        }
    }
}

impl From<OverRelease> for PyErr {
    fn from(err: OverRelease) -> PyErr {
        PyValueError::new_err(err.to_string())
    }
}

/// `AcquireTimeout` for a wait of `timeout` seconds.
pub fn timeout_error(timeout: f64) -> PyErr {
    AcquireTimeout::new_err(format!("no permit within the timeout of {timeout} s"))
}

/// A grant reached the other kind of store than the one that made it: a bug.
pub fn wrong_store() -> PyErr {
    PyRuntimeError::new_err(
        "crewthrottle: a grant reached the wrong store (please report this bug)",
    )
}

/// A waiter's ticket vanished from its gate: a bug, reported rather than hung on.
pub fn lost_ticket() -> PyErr {
    PyRuntimeError::new_err("crewthrottle: a waiting ticket was lost (please report this bug)")
}
