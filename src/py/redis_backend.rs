//! `RedisBackend`: where a `Limiter` keeps a budget shared by every process and host that
//! names it (issue 7).

use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::args;
use crate::store::redis::RedisSettings;

/// A Redis server that keeps shared budgets: `Limiter(..., name=..., backend=RedisBackend(url))`.
#[pyclass(module = "crewthrottle", name = "RedisBackend", frozen)]
pub struct RedisBackend {
    settings: RedisSettings,
}

impl RedisBackend {
    /// How limiters reach the server.
    pub fn settings(&self) -> RedisSettings {
        self.settings.clone()
    }
}

fn duration(
    obj: Option<&Bound<'_, PyAny>>,
    name: &'static str,
    default: f64,
) -> PyResult<Duration> {
    let secs = match obj.filter(|o| !o.is_none()) {
        Some(obj) => args::seconds(obj, name, true)?,
        None => default,
    };
    if !(0.001..=86_400.0).contains(&secs) {
        return Err(PyValueError::new_err(format!(
            "{name} must be between 0.001 and 86400 seconds, got {secs}"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `on_failure` and `local_share`: the share of each limit a process grants by itself while
/// the server cannot be reached (`None`: raise).
fn failure_policy(
    on_failure: &str,
    local_share: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<f64>> {
    let share = local_share
        .filter(|s| !s.is_none())
        .map(|s| args::number(s, "local_share"))
        .transpose()?;
    match (on_failure, share) {
        ("raise", None) => Ok(None),
        ("raise", Some(_)) => Err(PyValueError::new_err(
            "local_share only applies with on_failure=\"local\"",
        )),
        ("local", Some(share)) if share > 0.0 && share <= 1.0 => Ok(Some(share)),
        ("local", Some(share)) => Err(PyValueError::new_err(format!(
            "local_share must be in (0, 1], got {share}"
        ))),
        ("local", None) => Err(PyValueError::new_err(
            "on_failure=\"local\" needs local_share: the share of each limit one process may \
             use alone (e.g. 1 / the number of processes)",
        )),
        (other, _) => Err(PyValueError::new_err(format!(
            "on_failure must be \"raise\" or \"local\", got {other:?}"
        ))),
    }
}

#[pymethods]
impl RedisBackend {
    #[new]
    #[pyo3(
        signature = (url = "redis://127.0.0.1:6379/0".to_owned(), *, lease = None, timeout = None, prefix = "crewthrottle".to_owned(), replace_limits = false, on_failure = "raise".to_owned(), local_share = None),
        text_signature = "(url='redis://127.0.0.1:6379/0', *, lease=30.0, timeout=5.0, prefix='crewthrottle', replace_limits=False, on_failure='raise', local_share=None)"
    )]
    #[allow(clippy::too_many_arguments)] // the keyword-only Python constructor
    fn new(
        url: String,
        lease: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        prefix: String,
        replace_limits: bool,
        on_failure: String,
        local_share: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        if !(url.starts_with("redis://")
            || url.starts_with("unix://")
            || url.starts_with("redis+unix://"))
        {
            return Err(PyValueError::new_err(format!(
                "url must be a redis:// (or unix://) URL, got {url:?}"
            )));
        }
        if prefix.is_empty() || prefix.contains(['{', '}']) {
            return Err(PyValueError::new_err(format!(
                "prefix must be non-empty text without braces, got {prefix:?}"
            )));
        }
        let local_share = failure_policy(&on_failure, local_share)?;
        let settings = RedisSettings {
            url,
            lease: duration(lease, "lease", 30.0)?,
            timeout: duration(timeout, "timeout", 5.0)?,
            prefix,
            replace_limits,
            local_share,
        };
        super::logging::install();
        Ok(RedisBackend { settings })
    }

    /// The server's URL.
    #[getter]
    fn url(&self) -> &str {
        &self.settings.url
    }

    /// Seconds a grant (or a waiter) of a process that stopped renewing it survives.
    #[getter]
    fn lease(&self) -> f64 {
        self.settings.lease.as_secs_f64()
    }

    /// The longest a connection attempt or a command may take, in seconds.
    #[getter]
    fn timeout(&self) -> f64 {
        self.settings.timeout.as_secs_f64()
    }

    /// The first part of every key.
    #[getter]
    fn prefix(&self) -> &str {
        &self.settings.prefix
    }

    /// "raise" (the default) or "local" (fall back to an in-process limiter).
    #[getter]
    fn on_failure(&self) -> &str {
        if self.settings.local_share.is_some() {
            "local"
        } else {
            "raise"
        }
    }

    /// The share of each limit a process uses alone while the server cannot be reached.
    #[getter]
    fn local_share(&self) -> Option<f64> {
        self.settings.local_share
    }

    /// Whether limiters made with this backend replace the limits stored for their budget.
    #[getter]
    fn replace_limits(&self) -> bool {
        self.settings.replace_limits
    }

    fn __repr__(&self) -> String {
        format!(
            "<crewthrottle.RedisBackend {:?} lease={:?} timeout={:?}>",
            self.settings.url,
            self.lease(),
            self.timeout()
        )
    }
}
