//! Where the stores' warnings go: a sink the Python layer installs (Python's `logging`), so
//! that the stores themselves know nothing of Python.

use std::sync::OnceLock;

/// A level of Python's `logging`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `logging.INFO`
    Info,
    /// `logging.WARNING`
    Warning,
}

type Sink = Box<dyn Fn(Level, &str) + Send + Sync>;

static SINK: OnceLock<Sink> = OnceLock::new();

/// Installs the sink (once; later calls are ignored).
pub fn install(sink: Sink) {
    let _ = SINK.set(sink);
}

/// Logs a warning, if a sink is installed.
pub fn warning(message: &str) {
    log(Level::Warning, message);
}

/// Logs at `level`, if a sink is installed.
pub fn log(level: Level, message: &str) {
    if let Some(sink) = SINK.get() {
        sink(level, message);
    }
}
