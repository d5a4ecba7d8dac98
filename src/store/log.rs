//! Where the stores' warnings go: a sink the Python layer installs (Python's `logging`), so
//! that the stores themselves know nothing of Python.

use std::sync::OnceLock;

type Sink = Box<dyn Fn(&str) + Send + Sync>;

static SINK: OnceLock<Sink> = OnceLock::new();

/// Installs the sink (once; later calls are ignored).
pub fn install(sink: Sink) {
    let _ = SINK.set(sink);
}

/// Logs a warning, if a sink is installed.
pub fn warning(message: &str) {
    if let Some(sink) = SINK.get() {
        sink(message);
    }
}
