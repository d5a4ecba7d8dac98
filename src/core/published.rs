//! A few numbers published for readers that must never wait: a sequence lock over words.
//!
//! Metrics are read while acquire and release run; a reader must not take a lock they wait
//! on (issue 11). The latest figures a reader managed to compute are kept here: a writer that
//! finds another writer busy simply skips, and a reader retries only while a write is under
//! way, so neither ever blocks.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};

/// `N` words, written and read as one consistent snapshot.
pub struct Published<const N: usize> {
    seq: AtomicU64,
    writing: AtomicBool,
    words: [AtomicU64; N],
}

impl<const N: usize> Default for Published<N> {
    fn default() -> Self {
        Published {
            seq: AtomicU64::new(0),
            writing: AtomicBool::new(false),
            words: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl<const N: usize> Published<N> {
    /// Publishes `words`, unless another writer is publishing right now (then theirs stands).
    pub fn publish(&self, words: &[u64; N]) {
        if self.writing.swap(true, Ordering::Acquire) {
            return;
        }
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        for (slot, &word) in self.words.iter().zip(words) {
            slot.store(word, Ordering::Relaxed);
        }
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
        self.writing.store(false, Ordering::Release);
    }

    /// The latest published words (all zero before the first), and whether any were
    /// published.
    pub fn read(&self) -> Option<[u64; N]> {
        loop {
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let words = std::array::from_fn(|i| self.words[i].load(Ordering::Relaxed));
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return (before > 0).then_some(words);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_see_whole_snapshots_only() {
        let published = Published::<4>::default();
        assert_eq!(published.read(), None);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 1..20_000u64 {
                    published.publish(&[i; 4]);
                }
            });
            for _ in 0..20_000 {
                if let Some(words) = published.read() {
                    assert!(words.iter().all(|&w| w == words[0]), "torn: {words:?}");
                }
            }
        });
        assert_eq!(published.read(), Some([19_999; 4]));
    }
}
