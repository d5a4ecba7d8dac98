//! Stores that keep a budget outside the process: Redis, shared by every process and host
//! that names the same budget. The in-memory store is the core's gate (`crate::core::gate`);
//! both answer the edge through `crate::core::WaitQueue`.

pub mod log;
pub mod redis;
pub mod runtime;

/// Before `fork()`, on the forking thread: holds the stores' process-wide locks.
pub fn before_fork() {
    runtime::before_fork();
    redis::hub::before_fork();
}

/// After `fork()`, in the parent and in the child.
pub fn after_fork() {
    redis::hub::after_fork();
    runtime::after_fork();
}
