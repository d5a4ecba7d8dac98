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
//!   it counted beyond our own window's count is someone else's traffic on the key (less the
//!   share of the provider's limit the user left to others by configuring a lower one). Our
//!   own traffic keeps within the limit less that: the most seen in the responses of the last
//!   window, kept until newer responses say otherwise. A level rather than entries that
//!   expire: the other client goes on sending, and entries recorded when it was seen would all
//!   leave the window at once, a window later, leaving its share open to us for a moment.
//! - **AIMD.** A 429 that no header explains (no foreign traffic found) lowers the rate limits
//!   to 70% (the multiplicative decrease of the AWS SDKs' adaptive retry mode, CUBIC's beta),
//!   at most once per tenth of a window (the other requests in flight were sent at the old
//!   rate), down to 10%; each further tenth of a window without one adds back 5% of the base
//!   limit, so a full recovery takes about half a window.
//!
//! The state that matters to another process sharing the budget is a handful of numbers
//! ([`Summary`]), so a shared store can carry it.

use super::clock::Nanos;
use super::sliding_window::MAX_AMOUNT;

/// The AIMD factor when nothing was lowered, in thousandths.
pub const FULL: u32 = 1000;
/// A decrease multiplies the factor by this many thousandths.
pub(super) const DECREASE: u32 = 700;
/// The factor never goes below this many thousandths.
pub(super) const MIN_FACTOR: u32 = 100;
/// Thousandths added back per step without an unexplained 429.
pub(super) const STEP: u32 = 50;
/// Steps per window; also the cooldown between two decreases is one step.
pub(super) const STEPS_PER_WINDOW: u64 = 10;
/// Responses without rate-limit headers after which an adaptive limiter stops waiting for
/// them (the provider sends none) and leaves its conservative start.
pub(super) const SILENT_RESPONSES: u32 = 3;

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

/// What the limiter's windows count of its own traffic now (`None`: no window).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counted {
    /// Requests in the requests window.
    pub requests: Option<u64>,
    /// Tokens in the tokens window.
    pub tokens: Option<u64>,
}

/// A change of the effective limits worth one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The limits before, and why.
    pub from: (Limits, Reason),
    /// The limits now, and why.
    pub to: (Limits, Reason),
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
    /// Other clients' traffic per kind (requests, tokens).
    foreign: [ForeignLevel; 2],
    effective: Limits,
    logged: (Limits, Reason),
}

impl Adaptive {
    /// The state of a limiter configured with `configured`, learning the limits it lacks when
    /// `learn`, over `window_ns`.
    pub fn new(configured: Limits, learn: bool, window_ns: u64) -> Self {
        let discovering = learn && (configured.rpm.is_none() || configured.tpm.is_none());
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
            foreign: Default::default(),
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

    /// Other clients' (requests, tokens) in the provider's window, as last seen.
    pub fn foreign(&self) -> (u64, u64) {
        (self.foreign[0].level(), self.foreign[1].level())
    }

    /// The (rpm, tpm) our own traffic keeps within: the effective rate limits less other
    /// clients' traffic, at least 1.
    pub fn own_limits(&self) -> (Option<u64>, Option<u64>) {
        let (requests, tokens) = self.foreign();
        let less = |limit: Option<u64>, theirs: u64| limit.map(|l| l.saturating_sub(theirs).max(1));
        (
            less(self.effective.rpm, requests),
            less(self.effective.tpm, tokens),
        )
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

    /// Takes in one response's headers, given what the windows count of our own traffic now.
    pub fn observe(&mut self, seen: &Observation, counted: Counted, now: Nanos) {
        self.learn_limits(seen);
        let more_requests = self.see_foreign(0, seen.requests, counted.requests, now);
        let more_tokens = self.see_foreign(1, seen.tokens, counted.tokens, now);
        if seen.rate_limited {
            if !(more_requests || more_tokens) {
                self.rate_limited(now);
            } else if !self.cooling(now) {
                self.last_event = Some(now.as_u64()); // explained: the limits now know
            }
        }
        self.refresh();
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
    pub fn summary(&self) -> Summary {
        let (foreign_requests, foreign_tokens) = self.foreign();
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
    /// lower wins), the end of its conservative start, and the other clients' traffic it saw
    /// (the higher wins).
    pub fn adopt(&mut self, other: &Summary, now: Nanos) {
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
        let slot = self.slot(now);
        self.foreign[0].see(other.foreign_requests.min(MAX_AMOUNT), slot);
        self.foreign[1].see(other.foreign_tokens.min(MAX_AMOUNT), slot);
        self.refresh();
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

    /// Takes in other clients' traffic of one kind (0: requests, 1: tokens); true if more
    /// than the level known so far.
    fn see_foreign(
        &mut self,
        kind: usize,
        reported: Reported,
        counted: Option<u64>,
        now: Nanos,
    ) -> bool {
        let (Some(used), Some(limit), Some(own)) = (reported.used(), reported.limit, counted)
        else {
            return false;
        };
        // Left to others by configuring less than the provider allows: theirs to use.
        let configured = [self.configured.rpm, self.configured.tpm][kind];
        let slack = configured.map_or(0, |c| limit.saturating_sub(c));
        let theirs = used
            .saturating_sub(own)
            .saturating_sub(slack)
            .min(MAX_AMOUNT);
        let before = self.foreign[kind].level();
        let slot = self.slot(now);
        self.foreign[kind].see(theirs, slot);
        theirs > before
    }

    /// The slot of `now` for the foreign levels: a step (a tenth of a window).
    fn slot(&self, now: Nanos) -> u64 {
        now.as_u64() / self.step_ns()
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

mod foreign;
mod summary;

use foreign::ForeignLevel;
pub(super) use summary::Summary;

#[cfg(test)]
mod tests;
