//! The Redis store (issue 7): one budget shared by every process and host that names it.
//!
//! `limiter.lua` decides — the windows, the pacing, the concurrency leases and the global
//! first-come-first-served queue — atomically on the server's clock; `queue` is this
//! process's side (its waiters, their tasks, the heartbeat of its leases); `hub` the one
//! connection per server; `script` the keys and the typed calls.

pub mod hub;
pub mod queue;
pub mod script;

pub use queue::{RedisGrant, RedisQueue, RedisSettings};
