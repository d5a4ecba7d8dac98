//! Argument checks shared by the classes: counts and seconds, with errors naming the argument.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt};

use crate::core::{check_seconds, check_span};

/// A whole number `>= min` (bools and floats are refused: a count is an `int`).
pub fn count(obj: &Bound<'_, PyAny>, name: &str, min: u64) -> PyResult<u64> {
    if obj.is_instance_of::<PyBool>() || !obj.is_instance_of::<PyInt>() {
        let kind = obj.get_type().name()?;
        return Err(PyTypeError::new_err(format!(
            "{name} must be an int, got {kind}"
        )));
    }
    let value = match obj.extract::<u64>() {
        Ok(value) => value,
        Err(_) if obj.lt(0)? => {
            return Err(PyValueError::new_err(format!(
                "{name} must be >= {min}, got {obj}"
            )))
        }
        Err(_) => return Err(PyValueError::new_err(format!("{name} is too large: {obj}"))),
    };
    if value < min {
        return Err(PyValueError::new_err(format!(
            "{name} must be >= {min}, got {value}"
        )));
    }
    Ok(value)
}

/// An optional count: `None` stays `None`.
pub fn optional_count(
    obj: Option<&Bound<'_, PyAny>>,
    name: &str,
    min: u64,
) -> PyResult<Option<u64>> {
    match obj {
        Some(obj) if !obj.is_none() => count(obj, name, min).map(Some),
        _ => Ok(None),
    }
}

/// A real number (int or float, not bool), any sign; NaN and infinities pass through.
pub fn number(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<f64> {
    if obj.is_instance_of::<PyBool>()
        || !(obj.is_instance_of::<PyInt>() || obj.is_instance_of::<PyFloat>())
    {
        let kind = obj.get_type().name()?;
        return Err(PyTypeError::new_err(format!(
            "{name} must be a number, got {kind}"
        )));
    }
    obj.extract::<f64>()
}

/// A span in seconds (a window, a period, a pause): `>= 0` (or `> 0` when `positive`) and at
/// most `MAX_SPAN_SECS`, so that no deadline computed from it can overflow.
pub fn seconds(obj: &Bound<'_, PyAny>, name: &'static str, positive: bool) -> PyResult<f64> {
    Ok(check_span(name, number(obj, name)?, positive)?)
}

/// A timeout: `None` (or infinity) waits forever; otherwise seconds `>= 0`.
pub fn timeout(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<f64>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    let secs = number(obj, "timeout")?;
    if secs == f64::INFINITY {
        return Ok(None);
    }
    Ok(Some(check_seconds("timeout", secs, false)?))
}

/// `acquire(blocking=False, timeout=...)` is refused, with `threading`'s message.
pub fn no_timeout_when_nonblocking(timeout: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    if timeout.is_some_and(|t| !t.is_none()) {
        return Err(PyValueError::new_err(
            "can't specify timeout for non-blocking acquire",
        ));
    }
    Ok(())
}

/// An argument as given, `None` included, or `Missing`: for the semaphores, where an
/// explicit `None` is refused as `threading` refuses it, unlike a default.
pub enum Given<'py> {
    /// Not passed: the parameter's default applies.
    Missing,
    /// Passed, whatever it is.
    Value(Bound<'py, PyAny>),
}

impl<'a, 'py> FromPyObject<'a, 'py> for Given<'py> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(Given::Value(obj.to_owned()))
    }
}

/// A count as `threading`'s semaphores take it: any integer, `bool` and `__index__` types
/// (numpy's) included, `>= min`; `negative` is the error for a value below `min` (threading's
/// own message). Floats are refused with a `TypeError`, a documented difference.
pub fn threading_count(
    obj: &Bound<'_, PyAny>,
    name: &str,
    min: u64,
    negative: &'static str,
) -> PyResult<u64> {
    let int = if obj.is_instance_of::<PyInt>() {
        obj.clone()
    } else if obj.is_instance_of::<PyFloat>() || !obj.hasattr("__index__")? {
        let kind = obj.get_type().name()?;
        return Err(PyTypeError::new_err(format!(
            "{name} must be an int, got {kind}"
        )));
    } else {
        obj.call_method0("__index__")?
    };
    match int.extract::<u64>() {
        Ok(value) if value >= min => Ok(value),
        _ if int.lt(min)? => Err(PyValueError::new_err(negative)),
        _ => Err(PyValueError::new_err(format!("{name} is too large: {int}"))),
    }
}

/// A timeout as `threading`'s semaphores take it: `None` or infinity waits forever; zero or
/// less (`-inf` and huge negative ints included) does not wait; an int too large for a float
/// waits forever; bools are ints. NaN is refused (threading would spin on it).
pub fn threading_timeout(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<f64>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    if !(obj.is_instance_of::<PyInt>() || obj.is_instance_of::<PyFloat>()) {
        let kind = obj.get_type().name()?;
        return Err(PyTypeError::new_err(format!(
            "timeout must be a number, got {kind}"
        )));
    }
    let secs = match obj.extract::<f64>() {
        Ok(secs) => secs,
        // Only an int beyond a float's range fails to convert.
        Err(_) if obj.lt(0)? => f64::NEG_INFINITY,
        Err(_) => f64::INFINITY,
    };
    match secs {
        s if s.is_nan() => Err(PyValueError::new_err("timeout must be a number, got nan")),
        f64::INFINITY => Ok(None),
        s => Ok(Some(s.max(0.0))),
    }
}
