//! The budget behind `Limiter`: a concurrency count, a requests budget and a tokens budget,
//! granted together as one operation.
//!
//! `rpm=N` means what a user who copies N from a provider's dashboard expects: never more
//! than N requests started in any window of `window` seconds (an exact [`SlidingWindow`]),
//! spread evenly (a GCRA [`Pacer`], one request every `window / N`, with `burst`
//! back to back), and the whole budget usable (the window, not the pacer, is the cap, so
//! utilisation reaches 100%). `tpm` is an exact window over tokens; one request may take all
//! of it. Abandoned grants are refunded to the pacer and the windows; `settle` corrects the
//! tokens window.
//!
//! A request is counted by the provider when it arrives, a little after its permit was
//! granted, and that delay varies (connection set-up, a busy GIL). Two requests granted exactly
//! one window apart can therefore arrive less than a window apart, and the second one gets a
//! 429. So each start stays in the windows for `window + margin`: `margin` defaults to
//! [`config::default_margin`] (0.3 s for a minute), at a cost of `margin / (window + margin)` of the
//! budget.

use super::adaptive::{Adaptive, Change, Counted, Observation};
use super::clock::{nanos_of_secs, Nanos};
use super::error::InvalidArgument;
use super::gate::pressure::Thresholds;
use super::gate::{Check, Resource};
use super::pacer::Pacer;
use super::sliding_window::{Receipt, SlidingWindow, MAX_AMOUNT};

mod config;

pub use config::{LimiterConfig, MAX_COUNT};

/// What a caller asks a limiter for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimiterRequest {
    /// Tokens to reserve (0 when the call's size is unknown or `tpm` is not limited).
    pub tokens: u64,
    /// For a `with limiter:` block: once taken, the grant is kept by the limiter (lent), to be
    /// released by the block's exit ([`LimiterBudget::release_lent`]).
    pub lend: bool,
}

/// What a granted request owns: one concurrency slot and its reserved tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterGrant {
    generation: u64,
    request: Option<Receipt>,
    /// The tokens window's entry holding this grant's tokens, and how many of them it holds
    /// (an entry may also hold other grants' tokens: a refund never takes more than ours).
    tokens: Option<(Receipt, u64)>,
    /// Tokens currently charged for this grant (reserved, then corrected by `settle`).
    pub charged: u64,
    /// Kept by the limiter once taken (see [`LimiterRequest::lend`]).
    lend: bool,
    /// When the request started, as the windows count it (re-dated by a late pick-up).
    pub started: Nanos,
}

/// Live figures for `stats()`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimiterFigures {
    /// Permits out now.
    pub in_flight: u64,
    /// Tokens charged in total (reservations corrected by settles): charged less refunded.
    pub tokens_granted: u64,
    /// Tokens ever charged: reservations, and usage above them (never goes down).
    pub tokens_charged: u64,
    /// Tokens ever refunded: reservations above the usage settled, abandoned grants.
    pub tokens_refunded: u64,
    /// Requests counted in the current window (with `rpm`).
    pub requests_in_window: Option<u64>,
    /// Tokens counted in the current window (with `tpm`).
    pub tokens_in_window: Option<u64>,
}

/// Which limit a refused request met last (for `stats()` and the "pacing hard" signal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// `max_concurrent` permits are out.
    Concurrency,
    /// A pause (a provider's Retry-After) is in force.
    Pause,
    /// The requests window is full.
    Requests,
    /// Requests are being spread out (`burst` used up).
    Pacing,
    /// The tokens window is full.
    Tokens,
}

impl Blocked {
    /// The name `stats()` reports.
    pub fn name(self) -> &'static str {
        match self {
            Blocked::Concurrency => "max_concurrent",
            Blocked::Pause => "pause",
            Blocked::Requests => "rpm",
            Blocked::Pacing => "pacing",
            Blocked::Tokens => "tpm",
        }
    }
}

/// The state of a limiter.
pub struct LimiterBudget {
    config: LimiterConfig,
    in_flight: u64,
    requests: Option<SlidingWindow>,
    pacer: Option<Pacer>,
    tokens: Option<SlidingWindow>,
    paused_until: Nanos,
    /// Bumped in a forked child: grants made before the fork no longer count there.
    generation: u64,
    tokens_charged: u64,
    tokens_refunded: u64,
    blocked: Option<Blocked>,
    /// Grants held by `with limiter:` blocks. They reserve no tokens and are alike, so the
    /// block's exit releases any one of them (it cannot name its own).
    lent: Vec<LimiterGrant>,
    /// What the provider taught: the effective limits (issue 8).
    adaptive: Adaptive,
}

impl LimiterBudget {
    /// A limiter with nothing in flight and empty windows.
    pub fn new(config: LimiterConfig) -> Self {
        let (requests, tokens) = windows(&config);
        let mut budget = LimiterBudget {
            requests,
            pacer: config.pacer(),
            tokens,
            adaptive: Adaptive::new(config.limits(), config.adaptive, config.window_ns()),
            config,
            in_flight: 0,
            paused_until: Nanos::new(0),
            generation: 0,
            tokens_charged: 0,
            tokens_refunded: 0,
            blocked: None,
            lent: Vec::new(),
        };
        budget.apply_limits();
        budget
    }

    /// The configuration.
    pub fn config(&self) -> &LimiterConfig {
        &self.config
    }

    /// Ends a grant's hold on its concurrency slot (its tokens stay spent).
    pub fn release(&mut self, grant: &LimiterGrant) {
        if grant.generation == self.generation {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
    }

    /// Releases one grant kept by [`Self::lend`]; false if there is none (a block entered
    /// before a fork, exited in the child).
    pub fn release_lent(&mut self) -> bool {
        match self.lent.pop() {
            Some(grant) => {
                self.release(&grant);
                true
            }
            None => false,
        }
    }

    /// Corrects the tokens charged for `grant` to `actual`: refunds the difference to the
    /// grant's own window entry, or charges the excess now.
    pub fn settle(&mut self, grant: &mut LimiterGrant, actual: u64, now: Nanos) {
        if grant.generation != self.generation {
            return;
        }
        if let Some(window) = &mut self.tokens {
            grant.tokens = settle_entry(window, grant.tokens, grant.charged, actual, now);
        }
        if actual > grant.charged {
            self.tokens_charged = self.tokens_charged.saturating_add(actual - grant.charged);
        } else {
            self.tokens_refunded = self.tokens_refunded.saturating_add(grant.charged - actual);
        }
        grant.charged = actual;
    }

    /// Grants nothing before `now + seconds` (a longer pause in force wins). Returns whether
    /// this starts a pause (none was in force).
    pub fn pause(&mut self, now: Nanos, seconds: f64) -> bool {
        let started = self.paused_until <= now;
        let until = Nanos::new(now.as_u64().saturating_add(nanos_of_secs(seconds)));
        self.paused_until = self.paused_until.max(until);
        started && self.paused_until > now
    }

    /// Which limit the last refused request met, if any was refused since the last grant.
    pub fn blocked(&self) -> Option<Blocked> {
        self.blocked
    }

    /// Lifts the pause in force, if any.
    pub fn resume(&mut self) {
        self.paused_until = Nanos::new(0);
    }

    /// The end of the pause in force at `now`, if any.
    pub fn paused_until(&self, now: Nanos) -> Option<Nanos> {
        (self.paused_until > now).then_some(self.paused_until)
    }

    /// The learning state (effective limits, reason, foreign traffic).
    pub fn adaptive(&self) -> &Adaptive {
        &self.adaptive
    }

    /// Takes in one response's rate-limit headers: limits learned, other clients' traffic
    /// left room for. Returns the change of limits worth a log line, if any.
    pub fn observe(&mut self, seen: &Observation, now: Nanos) -> Option<Change> {
        let counted = Counted {
            requests: self.requests.as_mut().map(|w| w.used(now)),
            tokens: self.tokens.as_mut().map(|w| w.used(now)),
        };
        self.adaptive.observe(seen, counted, now);
        self.apply_limits();
        self.adaptive.take_change()
    }

    /// A 429 nothing explained (see [`Adaptive::rate_limited`]). Returns the change of limits
    /// worth a log line, if any.
    pub fn rate_limited(&mut self, now: Nanos) -> Option<Change> {
        self.adaptive.rate_limited(now);
        self.apply_limits();
        self.adaptive.take_change()
    }

    /// Puts the effective limits, less other clients' traffic, in force: window limits and
    /// pacing (our share, spread evenly).
    fn apply_limits(&mut self) {
        let (rpm, tpm) = self.adaptive.own_limits();
        for (window, limit) in [(&mut self.requests, rpm), (&mut self.tokens, tpm)] {
            if let Some(window) = window {
                window.set_limit(limit.unwrap_or(MAX_AMOUNT));
            }
        }
        self.pacer = match (rpm, self.pacer.take()) {
            (None, _) => None,
            (Some(rpm), pacer) => {
                let (interval, burst) = self.config.pacing_for(rpm);
                let mut pacer = pacer.unwrap_or_else(|| Pacer::new(interval, burst));
                pacer.retune(interval, burst);
                Some(pacer)
            }
        };
    }

    /// Live figures at `now`.
    pub fn figures(&mut self, now: Nanos) -> LimiterFigures {
        LimiterFigures {
            in_flight: self.in_flight,
            tokens_granted: self.tokens_charged.saturating_sub(self.tokens_refunded),
            tokens_charged: self.tokens_charged,
            tokens_refunded: self.tokens_refunded,
            requests_in_window: self.requests.as_mut().map(|w| w.used(now)),
            tokens_in_window: self.tokens.as_mut().map(|w| w.used(now)),
        }
    }

    /// The first instant at which the windows and the pause allow `tokens` more, and the
    /// limit that holds the request longest.
    fn rate_ready_at(&mut self, tokens: u64, now: Nanos) -> (Nanos, Option<Blocked>) {
        let mut ready = (now, None);
        let mut hold = |at: Option<Nanos>, by: Blocked| {
            if let Some(at) = at.filter(|&at| at > ready.0) {
                ready = (at, Some(by));
            }
        };
        hold(Some(self.paused_until), Blocked::Pause);
        hold(
            self.pacer.as_ref().map(|p| p.ready_at(now)),
            Blocked::Pacing,
        );
        hold(
            self.requests.as_mut().and_then(|w| w.earliest(1, now)),
            Blocked::Requests,
        );
        if tokens > 0 {
            // A request above a learned or lowered tpm (never above the configured one) goes
            // when the window holds nothing else, rather than never.
            hold(
                self.tokens
                    .as_mut()
                    .and_then(|w| w.earliest(tokens.min(w.limit()), now)),
                Blocked::Tokens,
            );
        }
        ready
    }
}

/// Rejects a request no limiter of `config` could ever grant (more tokens than `tpm`).
///
/// # Errors
/// [`InvalidArgument`] naming `tokens`.
pub fn validate_request(
    config: &LimiterConfig,
    request: &LimiterRequest,
) -> Result<(), InvalidArgument> {
    let tokens = request.tokens;
    match config.tpm {
        Some(tpm) if tokens > tpm => Err(InvalidArgument::new(
            "tokens",
            format!("is {tokens}, more than tpm ({tpm}): it could never be granted"),
        )),
        _ => Ok(()),
    }
}

/// The requests and tokens windows: for the limits configured, and for all when limits are
/// learned (their limits are set by [`LimiterBudget::apply_limits`]).
fn windows(config: &LimiterConfig) -> (Option<SlidingWindow>, Option<SlidingWindow>) {
    let window = config.counted_ns();
    let make = |limit: Option<u64>| {
        (limit.is_some() || config.adaptive)
            .then(|| SlidingWindow::new(limit.unwrap_or(MAX_AMOUNT), window))
    };
    (make(config.rpm), make(config.tpm))
}

/// Moves a grant's tokens in `window` from `charged` to `actual`; returns where they now are.
///
/// Usage above the reservation is charged to the grant's own entry (the provider counted the
/// request when it started), or, once that entry has left the window, as a new entry now.
/// A refund takes back only tokens this grant put in its entry.
fn settle_entry(
    window: &mut SlidingWindow,
    entry: Option<(Receipt, u64)>,
    charged: u64,
    actual: u64,
    now: Nanos,
) -> Option<(Receipt, u64)> {
    if actual <= charged {
        let (receipt, ours) = entry?;
        let refund = (charged - actual).min(ours);
        window.refund(receipt, refund);
        return Some((receipt, ours - refund));
    }
    let extra = actual - charged;
    match entry {
        Some((receipt, ours)) if window.add(receipt, extra, now) => Some((receipt, ours + extra)),
        _ => Some((window.record(extra, now), extra)),
    }
}

impl Resource for LimiterBudget {
    type Request = LimiterRequest;
    type Grant = LimiterGrant;

    fn validate(&self, request: &LimiterRequest) -> Result<(), InvalidArgument> {
        validate_request(&self.config, request)
    }

    fn try_take(&mut self, request: &LimiterRequest, now: Nanos) -> Check<LimiterGrant> {
        let tokens = &request.tokens;
        if self.adaptive.tick(now) {
            self.apply_limits();
        }
        if self
            .adaptive
            .effective()
            .max_concurrent
            .is_some_and(|max| self.in_flight >= max)
        {
            self.blocked = Some(Blocked::Concurrency);
            return Check::WaitForRelease;
        }
        let (ready, blocked) = self.rate_ready_at(*tokens, now);
        if ready > now {
            self.blocked = blocked;
            return Check::RetryAt(ready);
        }
        self.blocked = None;
        if let Some(pacer) = &mut self.pacer {
            pacer.record(now);
        }
        self.in_flight += 1;
        self.tokens_charged = self.tokens_charged.saturating_add(*tokens);
        let receipt = self.requests.as_mut().map(|w| w.record(1, now));
        let token_receipt = match (&mut self.tokens, *tokens) {
            (Some(window), t) if t > 0 => Some((window.record(t, now), t)),
            _ => None,
        };
        Check::Granted(LimiterGrant {
            generation: self.generation,
            request: receipt,
            tokens: token_receipt,
            charged: *tokens,
            lend: request.lend,
            started: now,
        })
    }

    fn give_back(&mut self, grant: LimiterGrant, _now: Nanos) {
        // Granted but never used (its waiter gave up at that very moment, or could never
        // take it): refund the windows and the pacer.
        if grant.generation != self.generation {
            return;
        }
        if let (Some(pacer), Some(_)) = (&mut self.pacer, grant.request) {
            pacer.refund();
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        self.tokens_refunded = self.tokens_refunded.saturating_add(grant.charged);
        if let (Some(window), Some(receipt)) = (&mut self.requests, grant.request) {
            window.refund(receipt, 1);
        }
        if let (Some(window), Some((receipt, ours))) = (&mut self.tokens, grant.tokens) {
            window.refund(receipt, ours);
        }
    }

    fn taken(&mut self, grant: &LimiterGrant) {
        if grant.lend {
            self.lent.push(*grant);
        }
    }

    fn pressure_thresholds(&self) -> Option<Thresholds> {
        // Pacing hard: the head waited a second, or a sixtieth of the window if longer (a
        // request per window of a minute); calm again after a whole window with nobody queued.
        let window = self.config.window_ns();
        Some(Thresholds {
            start_after: (window / 60).max(1_000_000_000),
            calm_after: self.config.counted_ns(),
        })
    }

    fn blocked_by(&self) -> Option<&'static str> {
        self.blocked.map(Blocked::name)
    }

    fn pick_up(
        &mut self,
        mut grant: LimiterGrant,
        granted: Nanos,
        now: Nanos,
    ) -> Option<LimiterGrant> {
        let late = now.as_u64().saturating_sub(granted.as_u64());
        if late == 0 || grant.generation != self.generation {
            return Some(grant);
        }
        if late >= self.config.counted_ns() {
            // Its start has already left the windows: counting it now could pass the limit.
            self.give_back(grant, now);
            return None;
        }
        // The request starts now, not when its waiter was chosen: count it from now, as the
        // provider will. Every decision made meanwhile saw it in the window, so moving it
        // later keeps every window within the limit.
        if let (Some(window), Some(receipt)) = (&mut self.requests, grant.request) {
            grant.request = Some(window.move_to(receipt, 1, now));
        }
        if let (Some(window), Some((receipt, ours))) = (&mut self.tokens, grant.tokens) {
            grant.tokens = Some((window.move_to(receipt, ours, now), ours));
        }
        grant.started = now;
        Some(grant)
    }

    fn after_fork_in_child(&mut self, intact: bool) {
        self.generation += 1;
        self.in_flight = 0;
        if intact {
            self.lent.clear();
        } else {
            std::mem::forget(std::mem::take(&mut self.lent));
        }
        if !intact {
            // Possibly half-written windows: leak them and start empty. The pacer is two plain
            // words, never half-written, so the child keeps the pace it inherited.
            let (requests, tokens) = windows(&self.config);
            std::mem::forget(std::mem::replace(&mut self.requests, requests));
            std::mem::forget(std::mem::replace(&mut self.tokens, tokens));
            // What it learned may be half-written too (plain numbers): learn again.
            let c = &self.config;
            self.adaptive = Adaptive::new(c.limits(), c.adaptive, c.window_ns());
            self.apply_limits();
        }
    }
}

#[cfg(test)]
pub(super) mod tests;
