//! What the provider says corrects the limiter's view (issue 8): limits learned from its
//! rate-limit headers, traffic it saw that we did not grant ("foreign" traffic on a shared
//! key), and 429s we did not expect, answered by AIMD. Pure bookkeeping: it decides the
//! effective limits and how much foreign traffic to count; the limiter applies them under
//! its lock.
//!
//! - **Learned limits.** A response's `limit-requests`/`limit-tokens` become the limits of
//!   that kind when the user configured one (the lower of the two wins: learning never raises
//!   a configured limit) or asked for `adaptive` limits. Limits are taken as per `window`
//!   (60 s by default, as OpenAI and Anthropic count).
//! - **Conservative start.** An adaptive limiter missing `rpm` or `tpm` allows one request in
//!   flight and one per second until the first response with limits arrives (or
//!   [`SILENT_RESPONSES`] responses without any: that provider sends none).
//! - **Foreign traffic.** `limit - remaining` is what the provider counted in its window. What
//!   it counted beyond our own window's count is someone else's traffic on the key; it is
//!   recorded in our window at once (so it expires with it), minus the share of the provider's
//!   limit the user left to others by configuring a lower one.
//! - **AIMD.** A 429 that no header explains (no foreign traffic found) lowers the rate limits
//!   to 70% (the multiplicative decrease of the AWS SDKs' adaptive retry mode, CUBIC's beta),
//!   at most once per tenth of a window (the other requests in flight were sent at the old
//!   rate), down to 10%; each further tenth of a window without one adds back 5% of the base
//!   limit, so a full recovery takes about half a window.
//!
//! The state that matters to another process sharing the budget is a handful of numbers
//! ([`Summary`]), so a shared store can carry it.

use super::clock::Nanos;
use super::sliding_window::{SlidingWindow, MAX_AMOUNT};

/// The AIMD factor when nothing was lowered, in thousandths.
pub const FULL: u32 = 1000;
/// A decrease multiplies the factor by this many thousandths.
pub const DECREASE: u32 = 700;
/// The factor never goes below this many thousandths.
pub const MIN_FACTOR: u32 = 100;
/// Thousandths added back per step without an unexplained 429.
pub const STEP: u32 = 50;
/// Steps per window; also the cooldown between two decreases is one step.
pub const STEPS_PER_WINDOW: u64 = 10;
/// Responses without rate-limit headers after which an adaptive limiter stops waiting for
/// them (the provider sends none) and leaves its conservative start.
pub const SILENT_RESPONSES: u32 = 3;

/// The limits a limiter enforces (`None`: no limit of that kind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Permits out at once.
    pub max_concurrent: Option<u64>,
    /// Requests started per window.
    pub rpm: Option<u64>,
    /// Tokens per window.
    pub tpm: Option<u64>,
}

/// Why the effective limits are what they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// As configured.
    Configured,
    /// The conservative start of an adaptive limiter, before the first headers.
    Conservative,
    /// Lowered (or set) by the provider's rate-limit headers.
    Headers,
    /// Lowered after a 429 nothing explained, recovering.
    RateLimited,
}

impl Reason {
    const ALL: [Reason; 4] = [
        Reason::Configured,
        Reason::Conservative,
        Reason::Headers,
        Reason::RateLimited,
    ];

    /// The name `stats()` reports as `limits_reason`.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Configured => "configured",
            Reason::Conservative => "conservative",
            Reason::Headers => "headers",
            Reason::RateLimited => "429",
        }
    }

    /// A small number for a published or shared word.
    pub fn code(self) -> u64 {
        self as u64
    }

    /// The reason of [`Self::code`]; `Configured` for an unknown code.
    pub fn from_code(code: u64) -> Self {
        Self::ALL
            .get(code as usize)
            .copied()
            .unwrap_or(Reason::Configured)
    }
}

/// One kind of limit as a response's headers report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reported {
    /// The provider's limit per window.
    pub limit: Option<u64>,
    /// What is left of it in the provider's current window.
    pub remaining: Option<u64>,
}

impl Reported {
    /// What the provider counted in its window, if both figures are known.
    fn used(&self) -> Option<u64> {
        Some(self.limit?.saturating_sub(self.remaining?))
    }
}

/// What one response's rate-limit headers say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observation {
    /// Requests per window.
    pub requests: Reported,
    /// Tokens per window.
    pub tokens: Reported,
    /// The response was a 429.
    pub rate_limited: bool,
}

/// What the limiter's windows count now, foreign traffic included (`None`: no window).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counted {
    /// Requests in the requests window.
    pub requests: Option<u64>,
    /// Tokens in the tokens window.
    pub tokens: Option<u64>,
}

/// Foreign traffic to record in the windows now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Foreign {
    /// Requests.
    pub requests: u64,
    /// Tokens.
    pub tokens: u64,
}

/// A change of the effective limits worth one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The limits before, and why.
    pub from: (Limits, Reason),
    /// The limits now, and why.
    pub to: (Limits, Reason),
}

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
    /// Foreign requests counted in the current window.
    pub foreign_requests: u64,
    /// Foreign tokens counted in the current window.
    pub foreign_tokens: u64,
}

/// `None` in a word of [`Summary::to_words`].
const ABSENT: u64 = u64::MAX;

impl Summary {
    /// The summary as six words.
    pub fn to_words(&self) -> [u64; 6] {
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

/// The learning state of one limiter.
#[derive(Debug, Clone)]
pub struct Adaptive {
    configured: Limits,
    learn: bool,
    window_ns: u64,
    learned: Limits,
    discovering: bool,
    silent: u32,
    factor: u32,
    /// The last 429 acted on (a decrease, or one the headers explained): the cooldown.
    last_event: Option<u64>,
    /// The last additive step (or decrease).
    last_step: u64,
    /// Foreign traffic recorded, per kind (requests, tokens), expiring as the windows do.
    foreign: [SlidingWindow; 2],
    effective: Limits,
    logged: (Limits, Reason),
}

impl Adaptive {
    /// The state of a limiter configured with `configured`, learning the limits it lacks when
    /// `learn`, over `window_ns` (a start counted for `counted_ns`).
    pub fn new(configured: Limits, learn: bool, window_ns: u64, counted_ns: u64) -> Self {
        let discovering = learn && (configured.rpm.is_none() || configured.tpm.is_none());
        let foreign = || SlidingWindow::new(MAX_AMOUNT, counted_ns);
        let mut state = Adaptive {
            configured,
            learn,
            window_ns: window_ns.max(1),
            learned: Limits::default(),
            discovering,
            silent: 0,
            factor: FULL,
            last_event: None,
            last_step: 0,
            foreign: [foreign(), foreign()],
            effective: configured,
            logged: (configured, Reason::Configured),
        };
        state.refresh();
        state.logged = (state.effective, state.reason());
        state
    }

    /// The limits in force.
    pub fn effective(&self) -> Limits {
        self.effective
    }

    /// Whether limits not configured are learned.
    pub fn learns(&self) -> bool {
        self.learn
    }

    /// Why the limits in force are what they are.
    pub fn reason(&self) -> Reason {
        if self.factor < FULL {
            Reason::RateLimited
        } else if self.discovering {
            Reason::Conservative
        } else if self.effective != self.configured {
            Reason::Headers
        } else {
            Reason::Configured
        }
    }

    /// Foreign (requests, tokens) counted in the window ending at `now`.
    pub fn foreign_in_window(&mut self, now: Nanos) -> (u64, u64) {
        (self.foreign[0].used(now), self.foreign[1].used(now))
    }

    /// Adds back what time without an unexplained 429 earned. True if the limits changed.
    pub fn tick(&mut self, now: Nanos) -> bool {
        let step = self.step_ns();
        let elapsed = now.as_u64().saturating_sub(self.last_step);
        if self.factor >= FULL || elapsed < step {
            return false;
        }
        let steps = elapsed / step;
        let added = u64::from(STEP).saturating_mul(steps);
        self.factor = (u64::from(self.factor) + added).min(u64::from(FULL)) as u32;
        self.last_step = self.last_step.saturating_add(steps * step);
        self.refresh()
    }

    /// Takes in one response's headers, given what the windows count now; returns the foreign
    /// traffic to record in them.
    pub fn observe(&mut self, seen: &Observation, counted: Counted, now: Nanos) -> Foreign {
        self.learn_limits(seen);
        let foreign = Foreign {
            requests: self.foreign_excess(0, seen.requests, counted.requests, now),
            tokens: self.foreign_excess(1, seen.tokens, counted.tokens, now),
        };
        if seen.rate_limited {
            if foreign == Foreign::default() {
                self.rate_limited(now);
            } else if !self.cooling(now) {
                self.last_event = Some(now.as_u64()); // explained: the windows now know
            }
        }
        self.refresh();
        foreign
    }

    /// A 429 nothing explained (the retry layer's count, or a response without the figures):
    /// lowers the rate limits, unless one was acted on less than a step ago.
    pub fn rate_limited(&mut self, now: Nanos) {
        if self.cooling(now) {
            return;
        }
        self.last_event = Some(now.as_u64());
        let base = self.base();
        if base.rpm.is_none() && base.tpm.is_none() {
            return; // no rate limit to lower
        }
        let lowered = u64::from(self.factor) * u64::from(DECREASE) / u64::from(FULL);
        self.factor = (lowered as u32).max(MIN_FACTOR);
        self.last_step = now.as_u64();
        self.refresh();
    }

    /// The change since the last one returned, if it is worth a log line: a new reason, or
    /// new limits — except the steps of a recovery, which are said once, when it ends.
    pub fn take_change(&mut self) -> Option<Change> {
        let to = (self.effective, self.reason());
        let from = self.logged;
        let changed = if to.1 == Reason::RateLimited && from.1 == Reason::RateLimited {
            lower(to.0.rpm, from.0.rpm) || lower(to.0.tpm, from.0.tpm)
        } else {
            to != from
        };
        changed.then(|| {
            self.logged = to;
            Change { from, to }
        })
    }

    /// The state as a handful of numbers (see [`Summary`]).
    pub fn summary(&mut self, now: Nanos) -> Summary {
        let (foreign_requests, foreign_tokens) = self.foreign_in_window(now);
        Summary {
            learned_rpm: self.learned.rpm,
            learned_tpm: self.learned.tpm,
            factor: self.factor,
            discovering: self.discovering,
            foreign_requests,
            foreign_tokens,
        }
    }

    /// Takes on what another process of the same budget learned: its limits, its factor (the
    /// lower wins), the end of its conservative start, and its foreign traffic beyond ours,
    /// which is returned to record in the windows.
    pub fn adopt(&mut self, other: &Summary, now: Nanos) -> Foreign {
        let learned = Limits {
            max_concurrent: None,
            rpm: other
                .learned_rpm
                .filter(|_| self.learns_kind(self.configured.rpm)),
            tpm: other
                .learned_tpm
                .filter(|_| self.learns_kind(self.configured.tpm)),
        };
        self.learned.rpm = learned.rpm.or(self.learned.rpm);
        self.learned.tpm = learned.tpm.or(self.learned.tpm);
        self.factor = self.factor.min(other.factor.clamp(MIN_FACTOR, FULL));
        self.discovering &= other.discovering;
        let mine = self.foreign_in_window(now);
        let foreign = Foreign {
            requests: other
                .foreign_requests
                .min(MAX_AMOUNT)
                .saturating_sub(mine.0),
            tokens: other.foreign_tokens.min(MAX_AMOUNT).saturating_sub(mine.1),
        };
        self.record_foreign(foreign, now);
        self.refresh();
        foreign
    }

    fn learn_limits(&mut self, seen: &Observation) {
        let rpm = seen.requests.limit.filter(|&l| l >= 1);
        let tpm = seen.tokens.limit.filter(|&l| l >= 1);
        if rpm.is_none() && tpm.is_none() {
            if self.discovering {
                self.silent += 1;
                self.discovering = self.silent < SILENT_RESPONSES;
            }
            return;
        }
        self.discovering = false;
        if self.learns_kind(self.configured.rpm) {
            self.learned.rpm = rpm.map(|l| l.min(MAX_AMOUNT)).or(self.learned.rpm);
        }
        if self.learns_kind(self.configured.tpm) {
            self.learned.tpm = tpm.map(|l| l.min(MAX_AMOUNT)).or(self.learned.tpm);
        }
    }

    /// Whether a kind configured as `configured` takes the provider's figure: when a limit was
    /// configured (to lower it) or limits are learned.
    fn learns_kind(&self, configured: Option<u64>) -> bool {
        self.learn || configured.is_some()
    }

    /// Foreign traffic of one kind (0: requests, 1: tokens) to record now.
    fn foreign_excess(
        &mut self,
        kind: usize,
        reported: Reported,
        counted: Option<u64>,
        now: Nanos,
    ) -> u64 {
        let (Some(used), Some(limit), Some(counted)) = (reported.used(), reported.limit, counted)
        else {
            return 0;
        };
        let recorded = self.foreign[kind].used(now);
        let own = counted.saturating_sub(recorded);
        // Left to others by configuring less than the provider allows: theirs to use.
        let configured = [self.configured.rpm, self.configured.tpm][kind];
        let slack = configured.map_or(0, |c| limit.saturating_sub(c));
        let target = used.saturating_sub(own).saturating_sub(slack);
        let add = target.saturating_sub(recorded).min(MAX_AMOUNT);
        if add > 0 {
            self.foreign[kind].record(add, now);
        }
        add
    }

    fn record_foreign(&mut self, foreign: Foreign, now: Nanos) {
        for (kind, amount) in [foreign.requests, foreign.tokens].into_iter().enumerate() {
            if amount > 0 {
                self.foreign[kind].record(amount, now);
            }
        }
    }

    fn cooling(&self, now: Nanos) -> bool {
        self.last_event
            .is_some_and(|at| now.as_u64().saturating_sub(at) < self.step_ns())
    }

    fn step_ns(&self) -> u64 {
        (self.window_ns / STEPS_PER_WINDOW).max(1)
    }

    /// Configured limits lowered by learned ones: what AIMD scales.
    fn base(&self) -> Limits {
        let min = |c: Option<u64>, l: Option<u64>| match (c, l) {
            (Some(c), Some(l)) => Some(c.min(l)),
            (c, l) => c.or(l),
        };
        Limits {
            max_concurrent: self.configured.max_concurrent,
            rpm: min(self.configured.rpm, self.learned.rpm),
            tpm: min(self.configured.tpm, self.learned.tpm),
        }
    }

    /// Recomputes the effective limits; true if they changed.
    fn refresh(&mut self) -> bool {
        let mut limits = self.base();
        if self.discovering {
            // One request in flight and one per second (at least one per window).
            let per_second = self.window_ns.div_ceil(1_000_000_000).max(1);
            limits.max_concurrent = Some(limits.max_concurrent.map_or(1, |m| m.min(1)));
            limits.rpm = Some(limits.rpm.map_or(per_second, |r| r.min(per_second)));
        }
        limits.rpm = limits.rpm.map(|r| scale(r, self.factor));
        limits.tpm = limits.tpm.map(|t| scale(t, self.factor));
        let changed = limits != self.effective;
        self.effective = limits;
        changed
    }
}

/// `limit` times `factor` thousandths, at least 1.
fn scale(limit: u64, factor: u32) -> u64 {
    let scaled = u128::from(limit) * u128::from(factor) / u128::from(FULL);
    (scaled as u64).max(1)
}

fn lower(now: Option<u64>, before: Option<u64>) -> bool {
    matches!((now, before), (Some(n), Some(b)) if n < b)
}

#[cfg(test)]
mod tests;
