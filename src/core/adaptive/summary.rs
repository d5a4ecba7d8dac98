//! The adaptive state as a handful of numbers, for a store shared by several processes.

use super::{FULL, MIN_FACTOR};
use crate::core::sliding_window::MAX_AMOUNT;

/// The adaptive state as a handful of numbers, for a store shared by several processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Requests per window the provider reported.
    pub learned_rpm: Option<u64>,
    /// Tokens per window the provider reported.
    pub learned_tpm: Option<u64>,
    /// The AIMD factor, in thousandths.
    pub factor: u32,
    /// Still in the conservative start.
    pub discovering: bool,
    /// Other clients' requests in the provider's window, as last seen.
    pub foreign_requests: u64,
    /// Other clients' tokens in the provider's window, as last seen.
    pub foreign_tokens: u64,
}

/// `None` in a word of [`Summary::to_words`].
const ABSENT: u64 = u64::MAX;

impl Summary {
    /// The summary as six words.
    pub fn to_words(self) -> [u64; 6] {
        [
            self.learned_rpm.unwrap_or(ABSENT),
            self.learned_tpm.unwrap_or(ABSENT),
            u64::from(self.factor),
            u64::from(self.discovering),
            self.foreign_requests,
            self.foreign_tokens,
        ]
    }

    /// A summary from [`Self::to_words`]'s words (out-of-range values clamped).
    pub fn from_words(words: &[u64; 6]) -> Self {
        let learned = |w: u64| (w != ABSENT).then(|| w.clamp(1, MAX_AMOUNT));
        Summary {
            learned_rpm: learned(words[0]),
            learned_tpm: learned(words[1]),
            factor: words[2].clamp(u64::from(MIN_FACTOR), u64::from(FULL)) as u32,
            discovering: words[3] != 0,
            foreign_requests: words[4].min(MAX_AMOUNT),
            foreign_tokens: words[5].min(MAX_AMOUNT),
        }
    }
}
