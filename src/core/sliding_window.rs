//! An exact sliding-window budget: never more than `limit` units started in any window of
//! `window` nanoseconds — the way providers count requests and tokens per minute.
//!
//! A log of grants is kept; grants less than a `quantum` (a thousandth of the window) apart
//! share one entry stamped with the latest of them. Stamping later only makes entries expire
//! later, so merging can cost at most a thousandth of utilisation and never breaks the limit,
//! while memory stays bounded (at most 1,001 entries) whatever the limit.
//!
//! No arithmetic can overflow (issue 9): limits and single amounts are at most
//! [`MAX_AMOUNT`], and an entry holds at most [`ENTRY_CAP`] = 2 × `MAX_AMOUNT` (more is
//! saturated). An entry that full exceeds any limit plus any request, so a window holding one
//! grants nothing whatever its true amount: saturating changes no decision. With at most 1,001
//! live entries, their sum stays below `2^64`.

use std::collections::VecDeque;

use super::clock::Nanos;

/// The largest limit, and the largest amount recorded at once.
pub const MAX_AMOUNT: u64 = 1 << 53;
/// The most one entry holds; more saturates (see the module's docs).
pub(super) const ENTRY_CAP: u64 = 2 * MAX_AMOUNT;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// Sequence number of the entry (for refunds to the entry a grant went to).
    seq: u64,
    /// When the first grant merged into this entry was made.
    opened: u64,
    /// When the last grant merged into this entry was made; the entry leaves the window
    /// `window` after this.
    stamp: u64,
    amount: u64,
}

/// Where a grant was recorded, so that its amount can be corrected later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Receipt {
    seq: u64,
}

/// A budget of `limit` units in any window of `window` nanoseconds.
#[derive(Debug, Clone)]
pub(super) struct SlidingWindow {
    limit: u64,
    window: u64,
    quantum: u64,
    entries: VecDeque<Entry>,
    used: u64,
    next_seq: u64,
}

impl SlidingWindow {
    /// A window budget; `1 <= limit <= MAX_AMOUNT` and `window >= 1` ns are the caller's
    /// to check.
    pub(super) fn new(limit: u64, window_ns: u64) -> Self {
        SlidingWindow {
            limit: limit.min(MAX_AMOUNT),
            window: window_ns.max(1),
            // At least 1 ns: grants at the same instant always share an entry.
            quantum: (window_ns / 1000).max(1),
            entries: VecDeque::new(),
            used: 0,
            next_seq: 0,
        }
    }

    /// The most units allowed in any window.
    pub(super) fn limit(&self) -> u64 {
        self.limit
    }

    /// Changes the limit (a limit learned or lowered); clamped to `1..=MAX_AMOUNT`.
    pub(super) fn set_limit(&mut self, limit: u64) {
        self.limit = limit.clamp(1, MAX_AMOUNT);
    }

    /// Units counted in the window ending at `now`.
    pub(super) fn used(&mut self, now: Nanos) -> u64 {
        self.expire(now);
        self.used
    }

    /// The earliest instant at or after `now` at which `amount` more units fit, or `None`
    /// if they never can (`amount > limit`).
    pub(super) fn earliest(&mut self, amount: u64, now: Nanos) -> Option<Nanos> {
        if amount > self.limit {
            return None;
        }
        self.expire(now);
        let mut over = (self.used + amount).saturating_sub(self.limit);
        if over == 0 {
            return Some(now);
        }
        for entry in &self.entries {
            if entry.amount >= over {
                return Some(Nanos::new(entry.stamp.saturating_add(self.window)));
            }
            over -= entry.amount;
        }
        // Unreachable when `used` matches the entries; waiting a whole window is safe anyway.
        Some(Nanos::new(now.as_u64().saturating_add(self.window)))
    }

    /// Records `amount` units started at `now` (even past the limit: a settle may charge
    /// usage that already happened).
    pub(super) fn record(&mut self, amount: u64, now: Nanos) -> Receipt {
        self.expire(now);
        let now = now.as_u64();
        if let Some(last) = self.entries.back_mut() {
            if now.saturating_sub(last.opened) < self.quantum {
                last.stamp = last.stamp.max(now);
                let seq = last.seq;
                self.add_to_back(amount);
                return Receipt { seq };
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.push_back(Entry {
            seq,
            opened: now,
            stamp: now,
            amount: 0,
        });
        self.add_to_back(amount);
        Receipt { seq }
    }

    fn add_to_back(&mut self, amount: u64) {
        if let Some(last) = self.entries.back_mut() {
            let added = amount.min(ENTRY_CAP - last.amount);
            last.amount += added;
            self.used += added;
        }
    }

    /// Takes back up to `amount` units from the entry of `receipt` (a grant that used less
    /// than it reserved). An entry that has left the window has nothing to refund.
    pub(super) fn refund(&mut self, receipt: Receipt, amount: u64) {
        let Ok(index) = self.entries.binary_search_by_key(&receipt.seq, |e| e.seq) else {
            return;
        };
        let entry = &mut self.entries[index];
        let refund = amount.min(entry.amount);
        entry.amount -= refund;
        self.used -= refund;
    }

    /// Moves `amount` units of the entry of `receipt` to `now`: a start that happened later
    /// than it was first recorded. Returns where they now are.
    pub(super) fn move_to(&mut self, receipt: Receipt, amount: u64, now: Nanos) -> Receipt {
        self.refund(receipt, amount);
        self.record(amount, now)
    }

    /// Adds `amount` units to the entry of `receipt`, if it is still in the window.
    pub(super) fn add(&mut self, receipt: Receipt, amount: u64, now: Nanos) -> bool {
        self.expire(now);
        let Ok(index) = self.entries.binary_search_by_key(&receipt.seq, |e| e.seq) else {
            return false;
        };
        let entry = &mut self.entries[index];
        let added = amount.min(ENTRY_CAP - entry.amount);
        entry.amount += added;
        self.used += added;
        true
    }

    fn expire(&mut self, now: Nanos) {
        let now = now.as_u64();
        while let Some(front) = self.entries.front() {
            if now.saturating_sub(front.stamp) < self.window {
                break;
            }
            self.used -= front.amount;
            self.entries.pop_front();
        }
    }

    #[cfg(test)]
    fn entry_count(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn at(ns: u64) -> Nanos {
        Nanos::new(ns)
    }

    #[test]
    fn fills_to_the_limit_then_waits_for_the_oldest_to_leave() {
        let mut w = SlidingWindow::new(3, 60 * SEC);
        for t in [0, SEC, 2 * SEC] {
            assert_eq!(w.earliest(1, at(t)), Some(at(t)));
            w.record(1, at(t));
        }
        assert_eq!(w.earliest(1, at(3 * SEC)), Some(at(60 * SEC)));
        assert_eq!(w.earliest(2, at(3 * SEC)), Some(at(61 * SEC)));
        assert_eq!(w.earliest(4, at(3 * SEC)), None);
        assert_eq!(w.used(at(60 * SEC)), 2);
    }

    #[test]
    fn refund_goes_to_the_grants_own_entry() {
        let mut w = SlidingWindow::new(100, 60 * SEC);
        let first = w.record(80, at(0));
        w.record(10, at(30 * SEC));
        w.refund(first, 50);
        assert_eq!(w.used(at(30 * SEC)), 40);
        // The refund freed the old entry, not the new one: at 60 s only the 10 remain.
        assert_eq!(w.used(at(60 * SEC)), 10);
    }

    #[test]
    fn close_grants_share_an_entry_and_expire_with_the_latest() {
        let mut w = SlidingWindow::new(1000, 1000 * SEC);
        for t in 0..100u64 {
            w.record(1, at(t * 1000));
        }
        assert_eq!(w.entry_count(), 1);
        assert_eq!(
            w.used(at(1000 * SEC)),
            100,
            "stamped with the latest grant: still inside"
        );
        assert_eq!(w.used(at(1000 * SEC + 99_000)), 0);
    }

    #[test]
    fn endless_huge_amounts_saturate_without_changing_a_decision() {
        // Issue 9: repeated huge settles used to wrap the window's count, after which every
        // request waited forever. Saturated entries still block until they leave the window.
        let mut w = SlidingWindow::new(MAX_AMOUNT, 10 * SEC);
        let mut receipts = Vec::new();
        for i in 0..5_000u64 {
            let receipt = w.record(MAX_AMOUNT, at(i * SEC / 100));
            assert!(w.add(receipt, MAX_AMOUNT, at(i * SEC / 100)));
            receipts.push(receipt);
        }
        let last = at(4_999 * SEC / 100);
        assert_eq!(w.earliest(1, last), Some(at(4_999 * SEC / 100 + 10 * SEC)));
        assert!(w.used(last) <= 1001 * ENTRY_CAP);
        for receipt in receipts {
            w.refund(receipt, u64::MAX);
        }
        assert_eq!(w.used(last), 0);
        assert_eq!(w.earliest(MAX_AMOUNT, last), Some(last));
        assert_eq!(w.used(at(u64::MAX)), 0);
    }

    #[test]
    fn grants_at_one_instant_share_an_entry_even_in_a_tiny_window() {
        let mut w = SlidingWindow::new(10, 5);
        for _ in 0..10 {
            w.record(1, at(7));
        }
        assert_eq!(w.entry_count(), 1);
        assert_eq!(w.earliest(1, at(7)), Some(at(12)));
    }

    #[test]
    fn never_more_than_limit_in_any_window_under_random_traffic() {
        // Replays grants made whenever `earliest` allows and checks every window from the log.
        let (limit, window) = (50u64, 10 * SEC);
        let mut w = SlidingWindow::new(limit, window);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut starts: Vec<(u64, u64)> = Vec::new();
        let mut now = 0u64;
        for _ in 0..5_000 {
            now += rng.u64(0..SEC / 5);
            let amount = rng.u64(1..=5);
            if w.earliest(amount, at(now)) == Some(at(now)) {
                w.record(amount, at(now));
                starts.push((now, amount));
            }
        }
        let mut lo = 0;
        let mut sum = 0;
        for &(t, a) in &starts {
            sum += a;
            while starts[lo].0 + window <= t {
                sum -= starts[lo].1;
                lo += 1;
            }
            assert!(sum <= limit, "{sum} units in a window ending at {t}");
        }
    }
}
