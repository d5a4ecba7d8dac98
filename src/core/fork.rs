//! Surviving `os.fork()` (Celery prefork, gunicorn): a registry of every live gate, so the
//! child can forget the parent's other threads (their queued waiters, their permits).
//!
//! The registry's lock is taken before the fork and released after it on both sides, as
//! `pthread_atfork` handlers do, so the child never inherits it half-held.
//!
//! Every lock here is a `std::sync::Mutex` — a futex whose whole state is its own word —
//! rather than `parking_lot`'s: a parking_lot lock that is contended parks its waiters in a
//! process-wide table guarded by locks of its own, and a fork while another thread is inside
//! that table leaves a child whose next contended lock may never return (issue 9). A futex
//! word is ours to renew ([`ForkableMutex`]).

use std::any::Any;
use std::cell::{RefCell, UnsafeCell};
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError, Weak};

// The lock inside `ForkableMutex`: std's, except in the gate's model check (tests built with
// `--cfg shuttle`, see `gate/model.rs`), where shuttle's stands in so that the checker decides
// every hand-off of the lock. Same API; the production build never sees shuttle.
#[cfg(all(test, shuttle))]
use shuttle::sync::{Mutex as InnerMutex, MutexGuard as InnerGuard};
#[cfg(not(all(test, shuttle)))]
use std::sync::{Mutex as InnerMutex, MutexGuard as InnerGuard};

/// The guard of a locked [`ForkableMutex`].
pub type ForkableGuard<'a, T> = InnerGuard<'a, T>;

/// What survives in a forked child: the thread that forked, and the tasks of the event loop
/// it was running (if any). Every other thread and loop of the parent is gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Survivors {
    /// The identity of the event loop running on the forking thread.
    pub event_loop: Option<u64>,
}

/// Something with state to reset in a forked child.
pub trait AfterFork: Send + Sync + Any {
    /// Forgets the parent's other threads (and their event loops).
    ///
    /// # Safety
    /// Only in the child right after `fork()`, while it has a single thread.
    unsafe fn reset_in_child(&self, survivors: Survivors);

    /// This item, to find items of one type among the registered ones.
    fn as_any(&self) -> &dyn Any;
}

type Registry = Vec<Weak<dyn AfterFork>>;

static REGISTRY: Mutex<Registry> = Mutex::new(Vec::new());

thread_local! {
    /// The registry's guard, held by the forking thread from `before_fork` until after the
    /// fork (in the child, that thread's copy holds it).
    static HELD_FOR_FORK: RefCell<Option<(MutexGuard<'static, Registry>, Survivors)>> =
        const { RefCell::new(None) };
}

fn lock_registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Registers `item` for resetting in forked children; dead entries are pruned as it grows.
pub fn register(item: Weak<dyn AfterFork>) {
    let mut items = lock_registry();
    if items.len() == items.capacity() {
        items.retain(|w| w.strong_count() > 0);
    }
    items.push(item);
}

/// Every live registered item of type `T`.
pub fn live<T: AfterFork>() -> Vec<Arc<dyn AfterFork>> {
    lock_registry()
        .iter()
        .filter_map(Weak::upgrade)
        .filter(|item| item.as_any().is::<T>())
        .collect()
}

/// Before `fork()`: holds the registry so no thread is half-way through registering.
pub fn before_fork(survivors: Survivors) {
    let guard = lock_registry();
    HELD_FOR_FORK.with(|held| *held.borrow_mut() = Some((guard, survivors)));
}

/// In the parent after `fork()`.
pub fn after_fork_in_parent() {
    HELD_FOR_FORK.with(|held| drop(held.borrow_mut().take()));
}

/// In the child after `fork()`: resets every live registered item.
///
/// # Safety
/// Only in the child right after `fork()`, while it has a single thread.
pub unsafe fn after_fork_in_child() {
    HELD_FOR_FORK.with(|held| {
        let Some((items, survivors)) = held.borrow_mut().take() else {
            return;
        };
        for item in items.iter().filter_map(Weak::upgrade) {
            // SAFETY: the caller guarantees we are the single thread of a fresh child.
            unsafe { item.reset_in_child(survivors) };
        }
    });
}

/// A mutex whose lock word a forked child can renew.
///
/// In a child, the parent's lock word may say "held" by a thread that does not exist there,
/// or "parked" with waiters that do not exist (then even `force_unlock` would hand the lock to
/// one of them). [`ForkableMutex::reset_in_child`] moves the data into a brand-new mutex.
pub struct ForkableMutex<T> {
    cell: UnsafeCell<InnerMutex<T>>,
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
    pub const fn new(value: T) -> Self {
        ForkableMutex {
            cell: UnsafeCell::new(InnerMutex::new(value)),
        }
    }

    /// Locks it. Nothing panics while holding one, but a poisoned lock is used as it is.
    pub fn lock(&self) -> InnerGuard<'_, T> {
        self.mutex().lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks it if it is free this instant.
    pub fn try_lock(&self) -> Option<InnerGuard<'_, T>> {
        match self.mutex().try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    fn mutex(&self) -> &InnerMutex<T> {
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
        // Locked in a single-threaded child means locked by a thread that is gone.
        let intact = !matches!(mutex.try_lock(), Err(TryLockError::WouldBlock));
        reset(
            mutex.get_mut().unwrap_or_else(PoisonError::into_inner),
            intact,
        );
        // SAFETY: the value is moved out and the old mutex is overwritten without being
        // dropped, so the value is neither dropped nor duplicated.
        unsafe {
            let value = std::ptr::read(mutex.get_mut().unwrap_or_else(PoisonError::into_inner));
            std::ptr::write(mutex, InnerMutex::new(value));
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
