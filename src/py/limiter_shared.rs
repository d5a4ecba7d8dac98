//! What a `Limiter` object holds, shared with the registry of live limiters that metrics
//! read (`crewthrottle._native._limiter_snapshots()`): the gate, the configuration, the
//! counts of the retry layer, and figures published for readers that must never wait.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::adaptive::{self, AdaptiveFigures};
use super::limiter_engine::Engine;
use super::stats::WaitSummary;
use crate::core::fork::{self, AfterFork, Survivors};
use crate::core::{
    Change, GateCounters, LimiterBudget, LimiterConfig, LimiterFigures, Limits, Nanos, Observation,
    Published, WaitFigures,
};
use crate::store::redis::script::int;
use crate::store::redis::RedisQueue;

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

/// Words of a published snapshot: the limiter's nine, its learning figures, then its
/// waiting figures.
const WORDS: usize = HEAD_WORDS + AdaptiveFigures::WORDS + WaitSummary::WORDS;
const HEAD_WORDS: usize = 9;
/// `None` in a published word.
const ABSENT: u64 = u64::MAX;

/// One limiter's figures, copied out of its lock.
#[derive(Clone)]
pub struct Figures {
    pub budget: LimiterFigures,
    pub paused_for: f64,
    pub blocked: Option<&'static str>,
    pub waits: WaitSummary,
    /// Seconds since the current "pacing hard" episode started, if one is under way.
    pub pacing_hard_for: Option<f64>,
    pub pacing_episodes: u64,
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
            pacing_hard_for: waits
                .pressed_since
                .map(|since| now.as_u64().saturating_sub(since.as_u64()) as f64 / 1e9),
            pacing_episodes: waits.pressure_episodes,
            adaptive: AdaptiveFigures::read(budget),
        }
    }

    /// A shared budget's figures from the script's `stats` reply.
    pub fn of_shared(values: &[redis::Value]) -> Self {
        let n = |i: usize| int(values.get(i));
        let count = |i: usize| n(i).unwrap_or(0).max(0) as u64;
        let optional = |i: usize| n(i).filter(|&v| v >= 0).map(|v| v as u64);
        let counters = GateCounters {
            acquired: count(6),
            timeouts: count(12),
            cancelled: count(9) + count(10),
            total_wait_ns: count(11).saturating_mul(1000),
            max_wait_ns: 0,
        };
        let budget = LimiterFigures {
            in_flight: count(1),
            tokens_granted: count(7).saturating_sub(count(8)),
            tokens_charged: count(7),
            tokens_refunded: count(8),
            requests_in_window: optional(3),
            tokens_in_window: optional(4),
        };
        Figures {
            budget,
            paused_for: count(5) as f64 / 1e6,
            blocked: None,
            waits: WaitSummary::shared(counters, count(2) as usize),
            pacing_hard_for: None,
            pacing_episodes: 0,
            // The limits in force, which every process enforces: the stored ones, lowered by
            // what the processes learned from the provider.
            adaptive: AdaptiveFigures::shared(
                Limits {
                    max_concurrent: optional(14),
                    rpm: optional(15),
                    tpm: optional(16),
                },
                Limits {
                    max_concurrent: optional(24),
                    rpm: optional(25),
                    tpm: optional(26),
                },
                n(22).unwrap_or(1000),
                n(23) == Some(1),
            ),
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
        stats.set_item("pacing_hard_for", self.pacing_hard_for)?;
        stats.set_item("pacing_episodes", self.pacing_episodes)?;
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
            self.pacing_hard_for.map_or(ABSENT, f64::to_bits),
            self.pacing_episodes,
        ];
        words[..head.len()].copy_from_slice(&head);
        let learning = head.len() + AdaptiveFigures::WORDS;
        words[head.len()..learning].copy_from_slice(&self.adaptive.to_words());
        words[learning..].copy_from_slice(&self.waits.to_words());
        words
    }

    fn from_words(words: &[u64; WORDS]) -> Self {
        let absent = |w: u64| (w != ABSENT).then_some(w);
        let learning = HEAD_WORDS + AdaptiveFigures::WORDS;
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
            pacing_hard_for: (words[7] != ABSENT).then(|| f64::from_bits(words[7])),
            pacing_episodes: words[8],
            adaptive: AdaptiveFigures::from_words(&words[HEAD_WORDS..learning]),
            waits: WaitSummary::from_words(&words[learning..]),
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
    pub engine: Engine,
    pub config: LimiterConfig,
    pub name: Option<String>,
    retries: RetryCounts,
    /// The latest figures a metrics reader computed, for readers that find the gate busy
    /// (for a shared budget: of the latest `stats()` or background refresh).
    published: Arc<Published<WORDS>>,
    /// A shared budget's background refresh is in flight (at most one at a time).
    refreshing: Arc<AtomicBool>,
}

/// Clears `refreshing` when a refresh ends, whether it ran or was dropped unrun.
struct RefreshDone(Arc<AtomicBool>);

impl Drop for RefreshDone {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl LimiterShared {
    /// A limiter's shared state, registered (for forks and for metrics).
    pub fn new(
        py: Python<'_>,
        engine: Engine,
        config: LimiterConfig,
        name: Option<String>,
    ) -> Arc<Self> {
        let shared = Arc::new(LimiterShared {
            engine,
            config,
            name,
            retries: RetryCounts::default(),
            published: Arc::default(),
            refreshing: Arc::default(),
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
        let change = match &self.engine {
            Engine::Memory(gate) => gate.with_resource(|budget, now| budget.rate_limited(now)),
            Engine::Redis(queue, _) => queue.rate_limited(),
        };
        self.tell(py, change)
    }

    /// Takes in a response's rate-limit headers (issue 8).
    pub fn observe(&self, py: Python<'_>, seen: &Observation) -> PyResult<()> {
        let change = match &self.engine {
            Engine::Memory(gate) => gate.with_resource(|budget, now| budget.observe(seen, now)),
            Engine::Redis(queue, _) => queue.observe(seen),
        };
        self.tell(py, change)
    }

    /// Logs a change of the effective limits (outside the gate's lock).
    fn tell(&self, py: Python<'_>, change: Option<Change>) -> PyResult<()> {
        match change {
            Some(change) => adaptive::log_change(py, self.name.as_deref(), &change),
            None => Ok(()),
        }
    }

    /// `stats()`: the figures, read under the gate's lock (one round trip to a shared
    /// budget, with the GIL released).
    pub fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let figures = match &self.engine {
            Engine::Memory(gate) => gate.inspect(Figures::read),
            Engine::Redis(queue, _) => {
                let values = py.detach(|| queue.stats())?;
                let figures = shared_figures(&values, queue);
                self.published.publish(&figures.to_words());
                figures
            }
        };
        let stats = self.dict(py, &figures)?;
        if let Engine::Redis(queue, _) = &self.engine {
            let (waiting, holding) = queue.local_counts();
            stats.set_item("process_waiting", waiting)?;
            stats.set_item("process_in_flight", holding)?;
        }
        Ok(stats)
    }

    /// The figures without waiting for the gate's lock: fresh if it is free this instant,
    /// else the latest published ones. Metrics never wait for Redis: a shared budget's are
    /// those of its latest `stats()` or of the refresh the previous reading started.
    fn figures_now(&self) -> Figures {
        let fresh = match &self.engine {
            Engine::Memory(gate) => gate.try_inspect(Figures::read),
            Engine::Redis(queue, _) => {
                self.refresh_later(queue);
                None
            }
        };
        match fresh {
            Some(figures) => {
                self.published.publish(&figures.to_words());
                figures
            }
            None => match (self.published.read(), &self.engine) {
                (Some(words), _) => Figures::from_words(&words),
                // Never read before, and busy now: read once, briefly, under the lock.
                (None, Engine::Memory(gate)) => gate.inspect(Figures::read),
                (None, Engine::Redis(..)) => Figures::of_shared(&[]),
            },
        }
    }

    /// Starts a background `stats` of the shared budget unless one is in flight; its figures
    /// are published for the next reader.
    fn refresh_later(&self, queue: &Arc<RedisQueue>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let done = RefreshDone(Arc::clone(&self.refreshing));
        let (published, weak) = (Arc::clone(&self.published), Arc::downgrade(queue));
        queue.stats_later(move |values| {
            let _done = done;
            if let Some(queue) = weak.upgrade() {
                published.publish(&shared_figures(&values, &queue).to_words());
            }
        });
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
        snapshot.set_item("shared", matches!(self.engine, Engine::Redis(..)))?;
        Ok(snapshot)
    }
}

impl AfterFork for LimiterShared {
    unsafe fn reset_in_child(&self, survivors: Survivors) {
        // SAFETY: passed on from our caller.
        match &self.engine {
            Engine::Memory(gate) => unsafe { gate.reset_in_child(survivors) },
            Engine::Redis(queue, fallback) => unsafe {
                // A refresh in flight in the parent never ends in the child.
                self.refreshing.store(false, Ordering::Release);
                queue.reset_in_child(survivors);
                if let Some(fallback) = fallback {
                    fallback.gate().reset_in_child(survivors);
                }
            },
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A shared budget's figures from its `stats` reply, with this process's wait times.
fn shared_figures(values: &[redis::Value], queue: &RedisQueue) -> Figures {
    let mut figures = Figures::of_shared(values);
    queue.with_wait_times(|times, now| figures.waits.add_local_times(times, now));
    figures
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
