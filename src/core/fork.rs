//! Surviving `os.fork()` (Celery prefork, gunicorn): a registry of every live gate, so the
//! child can forget the parent's other threads (their queued waiters, their permits).
//!
//! The registry's lock is taken before the fork and released after it on both sides, as
//! `pthread_atfork` handlers do, so the child never inherits it half-held.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Weak;

use parking_lot::{const_mutex, Mutex, MutexGuard};

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
    // Never park on the registry: a thread parked on it at the instant of a fork would leave
    // a "parked" mark that makes the child's unlock hand the lock to a thread that does not
    // exist there. Registration is rare and brief, so yielding until it is free costs nothing.
    let mut items = loop {
        if let Some(items) = REGISTRY.try_lock() {
            break items;
        }
        std::thread::yield_now();
    };
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

/// A mutex whose lock word a forked child can renew.
///
/// In a child, the parent's lock word may say "held" by a thread that does not exist there,
/// or "parked" with waiters that do not exist (then even `force_unlock` would hand the lock to
/// one of them). [`ForkableMutex::reset_in_child`] moves the data into a brand-new mutex.
pub struct ForkableMutex<T> {
    cell: UnsafeCell<Mutex<T>>,
}

// SAFETY: shared access only ever goes through the inner `Mutex` (which is Sync for T: Send);
// the cell is written only by `reset_in_child`, in a single-threaded child.
unsafe impl<T: Send> Sync for ForkableMutex<T> {}
// SAFETY: as for `Mutex<T>`.
unsafe impl<T: Send> Send for ForkableMutex<T> {}

impl<T: std::fmt::Debug> std::fmt::Debug for ForkableMutex<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.mutex().fmt(f)
    }
}

impl<T> ForkableMutex<T> {
    /// A new, unlocked mutex.
    pub fn new(value: T) -> Self {
        ForkableMutex {
            cell: UnsafeCell::new(Mutex::new(value)),
        }
    }

    /// Locks it (parking_lot: brief spinning, then parking).
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.mutex().lock()
    }

    /// Locks it if it is free this instant.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        self.mutex().try_lock()
    }

    fn mutex(&self) -> &Mutex<T> {
        // SAFETY: the cell is only replaced in a single-threaded child with no guard alive.
        unsafe { &*self.cell.get() }
    }

    /// Lets `reset` repair the data (`intact` is false if a vanished thread held the lock, so
    /// the data may be half-written), then gives it a fresh lock.
    ///
    /// # Safety
    /// Only in the child right after `fork()`, while it has a single thread and no guard of
    /// this mutex is alive.
    pub unsafe fn reset_in_child(&self, reset: impl FnOnce(&mut T, bool)) {
        // SAFETY: the caller guarantees exclusive access.
        let mutex = unsafe { &mut *self.cell.get() };
        let intact = !mutex.is_locked();
        reset(mutex.get_mut(), intact);
        // SAFETY: the value is moved out and the old mutex is overwritten without being
        // dropped, so the value is neither dropped nor duplicated.
        unsafe {
            let value = std::ptr::read(mutex.get_mut());
            std::ptr::write(mutex, Mutex::new(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_renews_a_lock_held_by_a_vanished_thread() {
        let mutex = ForkableMutex::new(1);
        std::mem::forget(mutex.lock());
        let mut seen = None;
        // SAFETY: single-threaded test standing in for a fresh child.
        unsafe { mutex.reset_in_child(|v, intact| seen = Some((*v, intact))) };
        assert_eq!(seen, Some((1, false)));
        assert_eq!(*mutex.lock(), 1);
    }
}
