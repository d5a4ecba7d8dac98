//! Wait-time figures in fixed space: percentiles over the last minute or so, and cumulative
//! buckets for metrics histograms — neither grows with traffic.
//!
//! Recent waits go into a ring of [`SLOTS`] histograms, each covering [`SLOT_NS`]; a slot
//! older than the ring is cleared when its turn comes again, so percentiles describe the last
//! `SLOTS - 1` to `SLOTS` slot spans. Buckets are logarithmic, four to an octave from 1 µs,
//! so a percentile is exact to within about 9% (the geometric middle of its bucket is
//! reported, never more than the largest wait seen).

use super::clock::Nanos;

/// Slots in the ring of recent histograms.
pub(super) const SLOTS: usize = 6;
/// How long one slot collects, in nanoseconds (10 s: percentiles cover the last 50–60 s).
pub(super) const SLOT_NS: u64 = 10_000_000_000;
/// Waits below this (1 µs) count as no wait.
const FLOOR_LOG2: u32 = 10;
const SUBS_LOG2: u32 = 2;
const SUBS: usize = 1 << SUBS_LOG2;
/// Octaves covered above the floor: up to 2^42 ns (73 minutes); longer waits share the last.
const OCTAVES: usize = 32;
const BUCKETS: usize = 1 + OCTAVES * SUBS;

/// Upper bounds, in seconds, of the cumulative buckets kept for metrics (Prometheus style).
pub const CUMULATIVE_BOUNDS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Clone)]
struct Slot {
    /// Which span of `SLOT_NS` this slot holds (`now / SLOT_NS`).
    epoch: u64,
    counts: [u32; BUCKETS],
    max: u64,
}

/// Recent and cumulative wait times of one gate.
pub struct WaitTimes {
    slots: Box<[Slot; SLOTS]>,
    /// Waits in each span between two of [`CUMULATIVE_BOUNDS`] (the last: above them all),
    /// since the start; summed up when read.
    spans: [u64; CUMULATIVE_BOUNDS.len() + 1],
}

impl Default for WaitTimes {
    fn default() -> Self {
        let slot = Slot {
            epoch: u64::MAX,
            counts: [0; BUCKETS],
            max: 0,
        };
        WaitTimes {
            slots: Box::new(std::array::from_fn(|_| slot.clone())),
            spans: [0; CUMULATIVE_BOUNDS.len() + 1],
        }
    }
}

impl WaitTimes {
    /// Records a wait of `waited` nanoseconds that ended at `now`.
    pub fn record(&mut self, waited: u64, now: Nanos) {
        let epoch = now.as_u64() / SLOT_NS;
        let slot = &mut self.slots[(epoch % SLOTS as u64) as usize];
        if slot.epoch != epoch {
            slot.epoch = epoch;
            slot.counts = [0; BUCKETS];
            slot.max = 0;
        }
        let bucket = &mut slot.counts[bucket_of(waited)];
        *bucket = bucket.saturating_add(1);
        slot.max = slot.max.max(waited);
        let secs = waited as f64 / 1e9;
        let span = &mut self.spans[CUMULATIVE_BOUNDS.partition_point(|&bound| bound < secs)];
        *span = span.saturating_add(1);
    }

    /// The `q`-quantiles (0 < q <= 1) of the waits recorded in the recent slots, in
    /// nanoseconds; `None` when nothing was recorded recently.
    pub fn quantiles<const N: usize>(&self, qs: [f64; N], now: Nanos) -> Option<[u64; N]> {
        let epoch = now.as_u64() / SLOT_NS;
        let recent = || {
            self.slots
                .iter()
                .filter(move |s| s.epoch <= epoch && epoch - s.epoch < SLOTS as u64)
        };
        let mut counts = [0u64; BUCKETS];
        for slot in recent() {
            for (sum, &c) in counts.iter_mut().zip(slot.counts.iter()) {
                *sum += u64::from(c);
            }
        }
        let max = recent().map(|s| s.max).max()?;
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        Some(qs.map(|q| {
            let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
            let mut seen = 0;
            let bucket = counts
                .iter()
                .position(|&c| {
                    seen += c;
                    seen >= rank
                })
                .unwrap_or(BUCKETS - 1);
            middle_of(bucket).min(max)
        }))
    }

    /// Cumulative counts of waits at most each of [`CUMULATIVE_BOUNDS`] seconds, then of
    /// all waits.
    pub fn cumulative(&self) -> [u64; CUMULATIVE_BOUNDS.len() + 1] {
        let mut total = 0u64;
        self.spans.map(|count| {
            total = total.saturating_add(count);
            total
        })
    }
}

fn bucket_of(ns: u64) -> usize {
    if ns < 1 << FLOOR_LOG2 {
        return 0;
    }
    let log2 = 63 - ns.leading_zeros();
    let sub = ((ns >> (log2 - SUBS_LOG2)) as usize) & (SUBS - 1);
    let index = 1 + (log2 - FLOOR_LOG2) as usize * SUBS + sub;
    index.min(BUCKETS - 1)
}

/// The geometric middle of a bucket, in nanoseconds (0 for the no-wait bucket).
fn middle_of(bucket: usize) -> u64 {
    if bucket == 0 {
        return 0;
    }
    let octave = (bucket - 1) / SUBS;
    let sub = (bucket - 1) % SUBS;
    let base = 2f64.powi((octave as u32 + FLOOR_LOG2) as i32);
    let low = base * (1.0 + sub as f64 / SUBS as f64);
    let high = base * (1.0 + (sub + 1) as f64 / SUBS as f64);
    (low * high).sqrt() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn quantiles_are_within_a_tenth_of_the_true_values() {
        let mut times = WaitTimes::default();
        for i in 1..=1000u64 {
            times.record(i * MS, Nanos::new(0));
        }
        let [p50, p90, p99] = times.quantiles([0.5, 0.9, 0.99], Nanos::new(0)).unwrap();
        for (got, want) in [(p50, 500 * MS), (p90, 900 * MS), (p99, 990 * MS)] {
            let error = (got as f64 - want as f64).abs() / want as f64;
            assert!(error < 0.1, "got {got}, want about {want}");
        }
    }

    #[test]
    fn no_waits_and_old_waits_are_told_apart() {
        let mut times = WaitTimes::default();
        assert_eq!(times.quantiles([0.5], Nanos::new(0)), None);
        times.record(0, Nanos::new(0));
        assert_eq!(times.quantiles([0.99], Nanos::new(0)), Some([0]));
        times.record(5_000 * MS, Nanos::new(SLOT_NS));
        let [q] = times.quantiles([1.0], Nanos::new(SLOT_NS)).unwrap();
        assert!(q.abs_diff(5_000 * MS) < 500 * MS, "about 5 s, got {q}");
        // A ring later, both are forgotten.
        let later = Nanos::new(SLOT_NS * (SLOTS as u64 + 2));
        assert_eq!(times.quantiles([0.5], later), None);
    }

    #[test]
    fn huge_waits_saturate_in_the_last_bucket() {
        let mut times = WaitTimes::default();
        times.record(u64::MAX, Nanos::new(0));
        let [q] = times.quantiles([1.0], Nanos::new(0)).unwrap();
        assert!(q > 1 << 41, "in the last bucket, got {q}");
        assert_eq!(times.cumulative()[CUMULATIVE_BOUNDS.len()], 1);
        assert_eq!(times.cumulative()[CUMULATIVE_BOUNDS.len() - 1], 0);
    }

    #[test]
    fn cumulative_buckets_count_each_wait_in_every_bound_above_it() {
        let mut times = WaitTimes::default();
        times.record(MS, Nanos::new(0)); // exactly 1 ms: in the first bucket
        times.record(3 * MS, Nanos::new(0));
        let cumulative = times.cumulative();
        assert_eq!(cumulative[0], 1);
        assert_eq!(cumulative[1], 2);
        assert_eq!(cumulative[CUMULATIVE_BOUNDS.len()], 2);
    }
}
