//! The native layers' log lines go to Python's `logging`, on the `crewthrottle.limiter`
//! logger, from any thread (an I/O thread of the Redis store included).

use pyo3::prelude::*;

use crate::store::log::{self, Level};

/// Installs the sink (once per process; cheap to call again).
pub fn install() {
    log::install(Box::new(|level, message| {
        let method = match level {
            Level::Info => "info",
            Level::Warning => "warning",
        };
        // `try_attach`: an I/O thread may log while the interpreter is shutting down.
        let _ = Python::try_attach(|py| -> PyResult<()> {
            py.import("logging")?
                .call_method1("getLogger", ("crewthrottle.limiter",))?
                .call_method1(method, (message,))?;
            Ok(())
        });
    }));
}
