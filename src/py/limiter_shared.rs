//! What a `Limiter` object holds, shared with the registry of live limiters that metrics
//! read (`crewthrottle._native._limiter_snapshots()`): the gate, the configuration, the
//! counts of the retry layer, and figures published for readers that must never wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::adaptive::{self, AdaptiveFigures};
use super::stats::WaitSummary;
use crate::core::adaptive::{Change, Observation};
use crate::core::clock::Nanos;
use crate::core::fork::{self, AfterFork, Survivors};
use crate::core::gate::{Gate, WaitFigures};
use crate::core::limiter::{LimiterBudget, LimiterConfig, LimiterFigures};
use crate::core::published::Published;

/// What the retry layer (`crewthrottle.backoff`) reports about calls through a limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryEvent {
    /// A retry was scheduled.
    Retried,
    /// The policy gave up (tries, time, or a provider's wait too long).
    GaveUp,
    /// A retry budget refused the retry.
    Refused,
    /// The provider answered with a rate-limit error (429, 503, 529).
    RateLimited,
}

impl RetryEvent {
    /// The event named as `_count_retry` takes it.
    pub fn named(name: &str) -> Option<Self> {
        Some(match name {
            "retried" => RetryEvent::Retried,
            "gave_up" => RetryEvent::GaveUp,
            "refused" => RetryEvent::Refused,
            "rate_limited" => RetryEvent::RateLimited,
            _ => return None,
        })
    }
}

/// The retry layer's counts: plain atomics, outside the budget (counting takes no lock).
#[derive(Default)]
struct RetryCounts([AtomicU64; 4]);

impl RetryCounts {
    const KEYS: [&'static str; 4] = [
        "retries",
        "give_ups",
        "retries_refused",
        "rate_limit_errors",
    ];

    fn count(&self, event: RetryEvent) {
        self.0[event as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn fill(&self, stats: &Bound<'_, PyDict>) -> PyResult<()> {
        for (key, count) in Self::KEYS.iter().zip(&self.0) {
            stats.set_item(*key, count.load(Ordering::Relaxed))?;
        }
        Ok(())
    }
}

/// Words of a published snapshot: the limiter's seven, its learning figures, then its
/// waiting figures.
const WORDS: usize = 7 + AdaptiveFigures::WORDS + WaitSummary::WORDS;
/// `None` in a published word.
const ABSENT: u64 = u64::MAX;

/// One limiter's figures, copied out of its lock.
#[derive(Clone)]
pub struct Figures {
    pub budget: LimiterFigures,
    pub paused_for: f64,
    pub blocked: Option<&'static str>,
    pub waits: WaitSummary,
    pub adaptive: AdaptiveFigures,
}

impl Figures {
    /// Reads them under the gate's lock (keep it short).
    pub fn read(budget: &mut LimiterBudget, waits: &WaitFigures<'_>, now: Nanos) -> Self {
        let paused_for = budget
            .paused_until(now)
            .map_or(0.0, |until| (until.as_u64() - now.as_u64()) as f64 / 1e9);
        Figures {
            budget: budget.figures(now),
            paused_for,
            blocked: budget.blocked().map(|b| b.name()),
            waits: WaitSummary::of(waits, now),
            adaptive: AdaptiveFigures::read(budget),
        }
    }

    fn fill(&self, stats: &Bound<'_, PyDict>) -> PyResult<()> {
        self.waits.fill(stats)?;
        let b = &self.budget;
        stats.set_item("in_flight", b.in_flight)?;
        stats.set_item("tokens_granted", b.tokens_granted)?;
        stats.set_item("tokens_charged", b.tokens_charged)?;
        stats.set_item("tokens_refunded", b.tokens_refunded)?;
        stats.set_item("requests_in_window", b.requests_in_window)?;
        stats.set_item("tokens_in_window", b.tokens_in_window)?;
        stats.set_item("paused_for", self.paused_for)?;
        stats.set_item("blocked_by", self.blocked)?;
        self.adaptive.fill(stats)?;
        Ok(())
    }

    fn to_words(&self) -> [u64; WORDS] {
        let b = &self.budget;
        let mut words = [0; WORDS];
        let head = [
            b.in_flight,
            b.tokens_charged,
            b.tokens_refunded,
            b.requests_in_window.unwrap_or(ABSENT),
            b.tokens_in_window.unwrap_or(ABSENT),
            self.paused_for.to_bits(),
            blocked_word(self.blocked),
        ];
        words[..head.len()].copy_from_slice(&head);
        let learning = head.len() + AdaptiveFigures::WORDS;
        words[head.len()..learning].copy_from_slice(&self.adaptive.to_words());
        words[learning..].copy_from_slice(&self.waits.to_words());
        words
    }

    fn from_words(words: &[u64; WORDS]) -> Self {
        let absent = |w: u64| (w != ABSENT).then_some(w);
        let budget = LimiterFigures {
            in_flight: words[0],
            tokens_granted: words[1].saturating_sub(words[2]),
            tokens_charged: words[1],
            tokens_refunded: words[2],
            requests_in_window: absent(words[3]),
            tokens_in_window: absent(words[4]),
        };
        Figures {
            budget,
            paused_for: f64::from_bits(words[5]),
            blocked: BLOCKED_NAMES.get(words[6] as usize).copied().flatten(),
            adaptive: AdaptiveFigures::from_words(&words[7..7 + AdaptiveFigures::WORDS]),
            waits: WaitSummary::from_words(&words[7 + AdaptiveFigures::WORDS..]),
        }
    }
}

const BLOCKED_NAMES: [Option<&str>; 6] = [
    None,
    Some("max_concurrent"),
    Some("pause"),
    Some("rpm"),
    Some("pacing"),
    Some("tpm"),
];

fn blocked_word(blocked: Option<&'static str>) -> u64 {
    BLOCKED_NAMES
        .iter()
        .position(|name| *name == blocked)
        .unwrap_or(0) as u64
}

/// What a `Limiter` object holds; registered so that metrics can find every live limiter.
pub struct LimiterShared {
    pub gate: Arc<Gate<LimiterBudget>>,
    pub config: LimiterConfig,
    pub name: Option<String>,
    retries: RetryCounts,
    /// The latest figures a metrics reader computed, for readers that find the gate busy.
    published: Published<WORDS>,
}

impl LimiterShared {
    /// A limiter's shared state, registered (for forks and for metrics).
    pub fn new(
        py: Python<'_>,
        gate: Gate<LimiterBudget>,
        config: LimiterConfig,
        name: Option<String>,
    ) -> Arc<Self> {
        let shared = Arc::new(LimiterShared {
            gate: Arc::new(gate),
            config,
            name,
            retries: RetryCounts::default(),
            published: Published::default(),
        });
        let weak: Weak<dyn AfterFork> = Arc::downgrade(&shared) as Weak<dyn AfterFork>;
        // Detached: between `_before_fork` and the fork itself the registry is held, and the
        // forking thread may need the GIL back to get there.
        py.detach(|| fork::register(weak));
        shared
    }

    /// Counts what the retry layer did; a rate-limit error lowers the rates unless the
    /// provider's headers explained it (issue 8).
    pub fn count_retry(&self, py: Python<'_>, event: RetryEvent) -> PyResult<()> {
        self.retries.count(event);
        if event != RetryEvent::RateLimited {
            return Ok(());
        }
        let change = self
            .gate
            .with_resource(|budget, now| budget.rate_limited(now));
        self.tell(py, change)
    }

    /// Takes in a response's rate-limit headers (issue 8).
    pub fn observe(&self, py: Python<'_>, seen: &Observation) -> PyResult<()> {
        let change = self
            .gate
            .with_resource(|budget, now| budget.observe(seen, now));
        self.tell(py, change)
    }

    /// Logs a change of the effective limits (outside the gate's lock).
    fn tell(&self, py: Python<'_>, change: Option<Change>) -> PyResult<()> {
        match change {
            Some(change) => adaptive::log_change(py, self.name.as_deref(), &change),
            None => Ok(()),
        }
    }

    /// `stats()`: the figures, read under the gate's lock.
    pub fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let figures = self.gate.inspect(Figures::read);
        self.dict(py, &figures)
    }

    /// The figures without waiting for the gate's lock: fresh if it is free this instant,
    /// else the latest published ones.
    fn figures_now(&self) -> Figures {
        match self.gate.try_inspect(Figures::read) {
            Some(figures) => {
                self.published.publish(&figures.to_words());
                figures
            }
            None => match self.published.read() {
                Some(words) => Figures::from_words(&words),
                // Never read before, and busy now: read once, briefly, under the lock.
                None => self.gate.inspect(Figures::read),
            },
        }
    }

    fn dict<'py>(&self, py: Python<'py>, figures: &Figures) -> PyResult<Bound<'py, PyDict>> {
        let stats = PyDict::new(py);
        figures.fill(&stats)?;
        self.retries.fill(&stats)?;
        Ok(stats)
    }

    /// A metrics snapshot: `stats()` plus the configuration and the cumulative wait buckets.
    pub fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let figures = self.figures_now();
        let snapshot = self.dict(py, &figures)?;
        let c = &self.config;
        snapshot.set_item("name", self.name.as_deref())?;
        snapshot.set_item("max_concurrent", c.max_concurrent)?;
        snapshot.set_item("rpm", c.rpm)?;
        snapshot.set_item("tpm", c.tpm)?;
        snapshot.set_item("window", c.window)?;
        snapshot.set_item("wait_histogram", figures.waits.buckets())?;
        Ok(snapshot)
    }
}

impl AfterFork for LimiterShared {
    unsafe fn reset_in_child(&self, survivors: Survivors) {
        // SAFETY: passed on from our caller.
        unsafe { self.gate.reset_in_child(survivors) };
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// One snapshot per live `Limiter` (present and future, while alive): `stats()` plus `name`,
/// `max_concurrent`, `rpm`, `tpm`, `window` and `wait_histogram` (cumulative buckets, the
/// last bound infinite). Reading never waits for a lock that acquire and release take.
#[pyfunction]
pub fn _limiter_snapshots(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let live = py.detach(fork::live::<LimiterShared>);
    live.iter()
        .filter_map(|item| item.as_any().downcast_ref::<LimiterShared>())
        .map(|shared| shared.snapshot(py))
        .collect()
}
