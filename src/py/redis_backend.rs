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

/// The stores log their warnings on the `crewthrottle.limiter` logger, from any thread.
fn install_log_sink() {
    crate::store::log::install(Box::new(|message| {
        // `try_attach`: an I/O thread may log while the interpreter is shutting down.
        let _ = Python::try_attach(|py| -> PyResult<()> {
            py.import("logging")?
                .call_method1("getLogger", ("crewthrottle.limiter",))?
                .call_method1("warning", (message,))?;
            Ok(())
        });
    }));
}

#[pymethods]
impl RedisBackend {
    #[new]
    #[pyo3(
        signature = (url = "redis://127.0.0.1:6379/0".to_owned(), *, lease = None, timeout = None, prefix = "crewthrottle".to_owned(), replace_limits = false),
        text_signature = "(url='redis://127.0.0.1:6379/0', *, lease=30.0, timeout=5.0, prefix='crewthrottle', replace_limits=False)"
    )]
    fn new(
        url: String,
        lease: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        prefix: String,
        replace_limits: bool,
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
        let settings = RedisSettings {
            url,
            lease: duration(lease, "lease", 30.0)?,
            timeout: duration(timeout, "timeout", 5.0)?,
            prefix,
            replace_limits,
        };
        install_log_sink();
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
