//! The pure-Rust core: it decides, the edges wait. Nothing here knows about Python.

pub mod adaptive;
pub mod backoff;
pub mod clock;
pub mod error;
pub mod fork;
pub mod gate;
pub mod limiter;
pub mod notify;
pub mod pacer;
pub mod published;
pub mod queue;
pub mod retry_budget;
pub mod semaphore;
pub mod sliding_window;
pub mod token_bucket;
pub mod wait_times;
