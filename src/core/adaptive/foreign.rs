//! Other clients' traffic on the key, as a level the responses keep up to date.

use super::STEPS_PER_WINDOW;

/// Slots (of a tenth of a window) a foreign level remembers: a window, so that it holds the
/// most the other client had in any window lately, not a passing low.
const SLOTS: u64 = STEPS_PER_WINDOW;

/// Other clients' traffic of one kind: the most seen in each of the last [`SLOTS`] slots up
/// to the latest one something was seen in. Only an observation moves it on, so a level stays
/// while no response comes (while we send nothing) rather than fade into a burst when we
/// start again.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ForeignLevel {
    latest: Option<u64>,
    most: [u64; SLOTS as usize],
}

impl ForeignLevel {
    pub(super) fn level(&self) -> u64 {
        self.most.iter().copied().max().unwrap_or(0)
    }

    pub(super) fn see(&mut self, amount: u64, slot: u64) {
        let latest = self
            .latest
            .map_or(slot, |latest| latest.max(slot.saturating_sub(SLOTS)));
        for passed in latest.saturating_add(1)..=slot {
            self.most[(passed % SLOTS) as usize] = 0;
        }
        let slot = slot.max(latest);
        self.latest = Some(slot);
        let most = &mut self.most[(slot % SLOTS) as usize];
        *most = (*most).max(amount);
    }
}
