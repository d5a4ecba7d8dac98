//! Surviving `os.fork()` (Celery prefork, gunicorn): a registry of every live gate, so the
//! child can forget the parent's other threads (their queued waiters, their permits).
//!
//! The registry's lock is taken before the fork and released after it on both sides, as
//! `pthread_atfork` handlers do, so the child never inherits it half-held.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Weak;

use parking_lot::{const_mutex, Mutex};

/// Something with state to reset in a forked child.
pub trait AfterFork: Send + Sync {
    /// Forgets the parent's other threads.
    ///
    /// # Safety
    /// Only in the child right after `fork()`, while it has a single thread.
    unsafe fn reset_in_child(&self);
}

static REGISTRY: Mutex<Vec<Weak<dyn AfterFork>>> = const_mutex(Vec::new());
static HELD_FOR_FORK: AtomicBool = AtomicBool::new(false);

/// Registers `item` for resetting in forked children; dead entries are pruned as it grows.
pub fn register(item: Weak<dyn AfterFork>) {
    let mut items = REGISTRY.lock();
    if items.len() == items.capacity() {
        items.retain(|w| w.strong_count() > 0);
    }
    items.push(item);
}

/// Before `fork()`: holds the registry so no thread is half-way through registering.
pub fn before_fork() {
    std::mem::forget(REGISTRY.lock());
    HELD_FOR_FORK.store(true, Ordering::Release);
}

/// In the parent after `fork()`.
pub fn after_fork_in_parent() {
    if HELD_FOR_FORK.swap(false, Ordering::AcqRel) {
        // SAFETY: `before_fork` locked it on this thread and forgot the guard.
        unsafe { REGISTRY.force_unlock() };
    }
}

/// In the child after `fork()`: resets every live registered item.
///
/// # Safety
/// Only in the child right after `fork()`, while it has a single thread.
pub unsafe fn after_fork_in_child() {
    if !HELD_FOR_FORK.swap(false, Ordering::AcqRel) {
        return;
    }
    // SAFETY: we hold the lock (taken in `before_fork`, inherited by this only thread).
    let items = unsafe { &*REGISTRY.data_ptr() };
    for item in items.iter().filter_map(Weak::upgrade) {
        // SAFETY: the caller guarantees we are the single thread of a fresh child.
        unsafe { item.reset_in_child() };
    }
    // SAFETY: as in `after_fork_in_parent`.
    unsafe { REGISTRY.force_unlock() };
}
