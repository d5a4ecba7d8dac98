//! A value that one caller, once, may take — with no lock (a fork cannot leave it held).

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};

/// Holds a value until the first [`TakeOnce::take`].
pub struct TakeOnce<T> {
    taken: AtomicBool,
    value: UnsafeCell<Option<T>>,
}

// SAFETY: the value is moved out by the single caller that wins the `taken` swap; nobody else
// touches it, and `Drop` has exclusive access.
unsafe impl<T: Send> Sync for TakeOnce<T> {}

impl<T> TakeOnce<T> {
    /// Holds `value`.
    pub fn new(value: T) -> Self {
        TakeOnce {
            taken: AtomicBool::new(false),
            value: UnsafeCell::new(Some(value)),
        }
    }

    /// The value, to the first caller only.
    pub fn take(&self) -> Option<T> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: only the caller that flipped `taken` gets here, once.
        unsafe { (*self.value.get()).take() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_of_many_threads_takes_it() {
        let once = TakeOnce::new(7);
        let taken: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| once.take())).collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().ok().flatten())
                .count()
        });
        assert_eq!(taken, 1);
        assert_eq!(once.take(), None);
    }
}
