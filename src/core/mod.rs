//! The pure-Rust core: it decides, the edges wait. Nothing here knows about Python.

pub mod backoff;
pub mod clock;
pub mod retry_budget;
