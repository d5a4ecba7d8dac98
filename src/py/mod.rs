//! The thin PyO3 layer: argument conversion, GIL-released waiting, error mapping.

pub mod args;
pub mod backoff;
pub mod errors;
pub mod fork;
pub mod limiter;
pub mod limiter_engine;
pub mod limiter_shared;
pub mod logging;
pub mod permit;
pub mod redis_backend;
pub mod retry_budget;
pub mod semaphore;
pub mod stats;
pub mod take_once;
pub mod token_bucket;
pub mod wait;
