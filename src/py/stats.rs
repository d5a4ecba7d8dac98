//! The figures every primitive reports in `stats()`.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::core::{GateCounters, Nanos, WaitFigures, WaitTimes, CUMULATIVE_BOUNDS};

/// `None` in a published word.
const ABSENT: u64 = u64::MAX;

/// The quantiles of recent waits that `stats()` reports, as `wait_p50`, `wait_p90`, `wait_p99`.
const QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

/// A gate's waiting figures, copied out of its lock.
#[derive(Debug, Clone)]
pub struct WaitSummary {
    counters: GateCounters,
    waiting: usize,
    /// p50, p90, p99 of recent waits in nanoseconds, if any were recorded recently.
    quantiles: Option<[u64; 3]>,
    cumulative: [u64; CUMULATIVE_BOUNDS.len() + 1],
}

impl WaitSummary {
    /// Reads `figures` at `now` (under the gate's lock: keep it short).
    pub fn of(figures: &WaitFigures<'_>, now: Nanos) -> Self {
        WaitSummary {
            counters: figures.counters,
            waiting: figures.waiting,
            quantiles: figures.times.quantiles(QUANTILES, now),
            cumulative: figures.times.cumulative(),
        }
    }

    /// The figures of a shared budget, which keeps counters but no wait times.
    pub fn shared(counters: GateCounters, waiting: usize) -> Self {
        WaitSummary {
            counters,
            waiting,
            quantiles: None,
            cumulative: [0; CUMULATIVE_BOUNDS.len() + 1],
        }
    }

    /// Adds this process's wait times to a shared budget's figures: its percentiles, longest
    /// wait and buckets.
    pub fn add_local_times(&mut self, times: &WaitTimes, now: Nanos) {
        self.quantiles = times.quantiles(QUANTILES, now);
        self.cumulative = times.cumulative();
        self.counters.max_wait_ns = self
            .quantiles
            .map_or(0, |q| q[2])
            .max(self.counters.max_wait_ns);
    }

    /// Waiters queued.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Fills a `stats()` dict (times in seconds).
    pub fn fill(&self, stats: &Bound<'_, PyDict>) -> PyResult<()> {
        let counters = &self.counters;
        stats.set_item("waiting", self.waiting)?;
        stats.set_item("acquired", counters.acquired)?;
        stats.set_item("timeouts", counters.timeouts)?;
        stats.set_item("cancelled", counters.cancelled)?;
        stats.set_item("total_wait", secs(counters.total_wait_ns))?;
        stats.set_item("max_wait", secs(counters.max_wait_ns))?;
        for (key, i) in [("wait_p50", 0), ("wait_p90", 1), ("wait_p99", 2)] {
            stats.set_item(key, self.quantiles.map(|q| secs(q[i])))?;
        }
        Ok(())
    }

    /// Cumulative wait-time buckets for metrics: `[(upper bound in seconds, count), ...]`,
    /// the last bound infinite.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        CUMULATIVE_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.cumulative.iter().copied())
            .collect()
    }

    /// The words these figures take in a published snapshot.
    pub const WORDS: usize = 9 + CUMULATIVE_BOUNDS.len() + 1;

    /// These figures as words, for a published snapshot.
    pub fn to_words(&self) -> [u64; Self::WORDS] {
        let c = &self.counters;
        let q = self.quantiles.unwrap_or([ABSENT; 3]);
        let head = [
            self.waiting as u64,
            c.acquired,
            c.timeouts,
            c.cancelled,
            c.total_wait_ns,
            c.max_wait_ns,
            q[0],
            q[1],
            q[2],
        ];
        let mut words = [0; Self::WORDS];
        words[..head.len()].copy_from_slice(&head);
        words[head.len()..].copy_from_slice(&self.cumulative);
        words
    }

    /// Figures from [`Self::to_words`]'s words.
    pub fn from_words(words: &[u64]) -> Self {
        let word = |i: usize| words.get(i).copied().unwrap_or(0);
        let counters = GateCounters {
            acquired: word(1),
            timeouts: word(2),
            cancelled: word(3),
            total_wait_ns: word(4),
            max_wait_ns: word(5),
        };
        let quantiles = [word(6), word(7), word(8)];
        WaitSummary {
            counters,
            waiting: word(0) as usize,
            quantiles: (quantiles[0] != ABSENT).then_some(quantiles),
            cumulative: std::array::from_fn(|i| word(9 + i)),
        }
    }

    /// A new `stats()` dict holding these figures.
    pub fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = PyDict::new(py);
        self.fill(&stats)?;
        Ok(stats)
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}
