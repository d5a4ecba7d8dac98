//! `os.register_at_fork` hooks (installed by `crewthrottle/__init__.py`) and registration of
//! every gate, so a forked child forgets the parent's other threads.

use std::sync::{Arc, Weak};

use pyo3::prelude::*;

use crate::core::fork::{self, AfterFork, Survivors};
use crate::core::{Gate, Resource};

/// Makes a gate and registers it for resetting in forked children.
pub fn new_gate<R: Resource>(py: Python<'_>, gate: Gate<R>) -> Arc<Gate<R>> {
    let gate = Arc::new(gate);
    let weak: Weak<dyn AfterFork> = Arc::downgrade(&gate) as Weak<dyn AfterFork>;
    // Detached: between `_before_fork` and the fork itself the registry is held, and the
    // forking thread may need the GIL back to get there.
    py.detach(|| fork::register(weak));
    gate
}

/// Runs just before `os.fork()`, on the forking thread: notes the event loop it is running
/// (its tasks live on in the child), then holds the registry.
#[pyfunction]
pub fn _before_fork(py: Python<'_>) {
    let survivors = Survivors {
        event_loop: running_loop(py),
    };
    py.detach(|| {
        fork::before_fork(survivors);
        crate::store::before_fork();
    });
}

/// The identity of the event loop running on this thread, if any (as the gate's waiters
/// record it).
fn running_loop(py: Python<'_>) -> Option<u64> {
    let event_loop = py
        .import("asyncio")
        .and_then(|asyncio| asyncio.call_method0("get_running_loop"))
        .ok()?;
    Some(event_loop.as_ptr() as u64)
}

/// Runs in the parent after `os.fork()`.
#[pyfunction]
pub fn _after_fork_in_parent() {
    crate::store::after_fork();
    fork::after_fork_in_parent();
}

/// Runs in the child after `os.fork()`.
#[pyfunction]
pub fn _after_fork_in_child() {
    // SAFETY: Python calls `after_in_child` hooks in the child right after fork, while it
    // has a single thread.
    crate::store::after_fork();
    unsafe { fork::after_fork_in_child() };
}
