//! How a gate wakes a waiter, and where that waiter runs.
//!
//! A waiter is a parked thread or a task on an event loop. The gate must never depend on one
//! waiter's thread or loop to serve the others (issue 9: a blocked or closed event loop must
//! not stall a thread queued behind it), so it needs to know *where* each waiter runs — to keep
//! a timer running in every independent place — and to learn when a waiter can never run
//! again, so that a grant made for it goes back at once.

use std::sync::Arc;

/// Where a waiter runs: waiters sharing an event loop stall together when it blocks, while
/// every thread runs on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Context {
    /// A thread parked in native code (it needs no interpreter lock to be woken).
    Thread,
    /// A task of the event loop with this identity.
    EventLoop(u64),
}

/// What became of a wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The waiter will run and poll again.
    Sent,
    /// The waiter can never run again (its event loop is closed): abandon its ticket.
    Gone,
}

/// Wakes one waiter. Called by the gate after its lock is dropped (it may call into Python).
pub trait Notify: Send + Sync {
    /// Asks the waiter to poll its ticket again.
    fn notify(&self) -> Delivery;

    /// Where the waiter runs.
    fn context(&self) -> Context;
}

/// A shared handle to a waiter's [`Notify`].
pub type Notifier = Arc<dyn Notify>;
