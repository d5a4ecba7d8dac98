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
//! [`default_margin`] (0.3 s for a minute), at a cost of `margin / (window + margin)` of the
//! budget.

use super::clock::{nanos_of_secs, Nanos};
use super::error::{check_seconds, InvalidArgument, MAX_SPAN_SECS};
use super::gate::{Check, Resource};
use super::pacer::Pacer;
use super::sliding_window::{Receipt, SlidingWindow, MAX_AMOUNT};

/// What a `Limiter` enforces. `None` means "no limit of that kind".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimiterConfig {
    /// Permits out at once.
    pub max_concurrent: Option<u64>,
    /// Requests started per window.
    pub rpm: Option<u64>,
    /// Tokens per window.
    pub tpm: Option<u64>,
    /// The window, in seconds.
    pub window: f64,
    /// Requests that may start back to back (only with `rpm`).
    pub burst: Option<u32>,
    /// Extra seconds each start stays counted, for the jitter between grant and arrival.
    pub margin: f64,
}

impl LimiterConfig {
    /// Validates the arguments. `burst` defaults to about one second's share of `rpm`
    /// (`round(rpm / window)`, at least 1, at most `rpm`); `margin` to [`default_margin`].
    ///
    /// # Errors
    /// [`InvalidArgument`] naming the argument at fault.
    pub fn new(
        max_concurrent: Option<u64>,
        rpm: Option<u64>,
        tpm: Option<u64>,
        window: f64,
        burst: Option<u64>,
        margin: Option<f64>,
    ) -> Result<Self, InvalidArgument> {
        check_seconds("window", window, true)?;
        let margin = match margin {
            Some(margin) => check_seconds("margin", margin, false)?,
            None => default_margin(window),
        };
        if margin > window {
            return Err(InvalidArgument::new(
                "margin",
                format!("must be at most the window ({window} s), got {margin}"),
            ));
        }
        if window > MAX_SPAN_SECS {
            return Err(InvalidArgument::new(
                "window",
                format!("must be at most {MAX_SPAN_SECS:e} seconds, got {window}"),
            ));
        }
        for (name, value) in [
            ("max_concurrent", max_concurrent),
            ("rpm", rpm),
            ("tpm", tpm),
        ] {
            if value.is_some_and(|v| v > MAX_COUNT) {
                return Err(InvalidArgument::new(name, "must be at most 2**53"));
            }
            if value == Some(0) {
                return Err(InvalidArgument::new(
                    name,
                    "must be >= 1 (or None for no limit), got 0",
                ));
            }
        }
        if rpm.is_some_and(|rpm| nanos_of_secs(window) / rpm == 0) {
            return Err(InvalidArgument::new(
                "rpm",
                "is too high for the window: more than one request per nanosecond",
            ));
        }
        let burst = match (rpm, burst) {
            (None, None) => None,
            (None, Some(_)) => return Err(InvalidArgument::new("burst", "only applies with rpm")),
            (Some(rpm), None) => Some(((rpm as f64 / window).round() as u64).clamp(1, rpm)),
            (Some(_), Some(0)) => return Err(InvalidArgument::new("burst", "must be >= 1, got 0")),
            (Some(rpm), Some(b)) if b > rpm => {
                return Err(InvalidArgument::new(
                    "burst",
                    format!("must be at most rpm ({rpm}), got {b}"),
                ))
            }
            (Some(_), Some(b)) => Some(b),
        };
        let burst = burst
            .map(u32::try_from)
            .transpose()
            .map_err(|_| InvalidArgument::new("burst", format!("must be at most {}", u32::MAX)))?;
        Ok(LimiterConfig {
            max_concurrent,
            rpm,
            tpm,
            window,
            burst,
            margin,
        })
    }

    /// The window in nanoseconds.
    pub fn window_ns(&self) -> u64 {
        nanos_of_secs(self.window)
    }

    /// How long a start stays counted: the window plus the margin, in nanoseconds.
    pub fn counted_ns(&self) -> u64 {
        nanos_of_secs(self.window + self.margin)
    }

    /// Nanoseconds between two paced requests (`window / rpm`).
    pub fn pacing_interval_ns(&self) -> Option<u64> {
        self.rpm.map(|rpm| self.window_ns() / rpm)
    }

    fn pacer(&self) -> Option<Pacer> {
        Some(Pacer::new(
            self.pacing_interval_ns()?,
            self.burst.unwrap_or(1),
        ))
    }
}

/// The default margin: `window / 200` (0.3 s for a minute), at least 50 ms — the jitter
/// between grant and arrival measured here with threads on two busy cores was up to ~11 ms —
/// but never more than a tenth of the window.
pub fn default_margin(window: f64) -> f64 {
    (window / 200.0).max(0.05).min(window / 10.0)
}

/// The largest count a limit may have (2^53): sums of counts then never come near overflow.
pub const MAX_COUNT: u64 = MAX_AMOUNT;

/// What a caller asks a limiter for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimiterRequest {
    /// Tokens to reserve (0 when the call's size is unknown or `tpm` is not limited).
    pub tokens: u64,
    /// Taken by `with limiter:`: all such grants are alike, and `__exit__` releases any one
    /// of them through [`LimiterBudget::release_anonymous`].
    pub anonymous: bool,
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
    /// Counted in `anonymous` (taken by `with limiter:`).
    anonymous: bool,
}

/// What a retry decorator did after a failed attempt, counted in the limiter's stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryEvent {
    /// A retry was scheduled.
    Retried,
    /// The decorator gave up (tries, time, or a provider's wait too long).
    GaveUp,
    /// A retry budget refused the retry.
    Refused,
}

/// Counts of [`RetryEvent`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryCounts {
    /// Retries scheduled.
    pub retries: u64,
    /// Give-ups.
    pub give_ups: u64,
    /// Retries refused by a budget.
    pub refused: u64,
}

/// Live figures for `stats()`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimiterFigures {
    /// Permits out now.
    pub in_flight: u64,
    /// Tokens charged in total (reservations corrected by settles).
    pub tokens_granted: u64,
    /// Requests counted in the current window (with `rpm`).
    pub requests_in_window: Option<u64>,
    /// Tokens counted in the current window (with `tpm`).
    pub tokens_in_window: Option<u64>,
    /// What retry decorators using this limiter did.
    pub retry_counts: RetryCounts,
}

/// The state of a limiter.
pub struct LimiterBudget {
    config: LimiterConfig,
    in_flight: u64,
    /// Permits taken by `with limiter:` (all alike: no tokens), released by `__exit__`.
    anonymous: u64,
    requests: Option<SlidingWindow>,
    pacer: Option<Pacer>,
    tokens: Option<SlidingWindow>,
    paused_until: Nanos,
    /// Bumped in a forked child: grants made before the fork no longer count there.
    generation: u64,
    tokens_granted: u64,
    retry_counts: RetryCounts,
}

impl LimiterBudget {
    /// A limiter with nothing in flight and empty windows.
    pub fn new(config: LimiterConfig) -> Self {
        let window = config.counted_ns();
        LimiterBudget {
            requests: config.rpm.map(|rpm| SlidingWindow::new(rpm, window)),
            pacer: config.pacer(),
            tokens: config.tpm.map(|tpm| SlidingWindow::new(tpm, window)),
            config,
            in_flight: 0,
            anonymous: 0,
            paused_until: Nanos::new(0),
            generation: 0,
            tokens_granted: 0,
            retry_counts: RetryCounts::default(),
        }
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

    /// Releases one anonymous grant; false if there is none (e.g. taken before a fork).
    pub fn release_anonymous(&mut self) -> bool {
        if self.anonymous == 0 {
            return false;
        }
        self.anonymous -= 1;
        self.in_flight = self.in_flight.saturating_sub(1);
        true
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
        self.tokens_granted = self
            .tokens_granted
            .saturating_sub(grant.charged)
            .saturating_add(actual);
        grant.charged = actual;
    }

    /// Counts what a retry decorator did.
    pub fn count_retry(&mut self, event: RetryEvent) {
        let counts = &mut self.retry_counts;
        let counter = match event {
            RetryEvent::Retried => &mut counts.retries,
            RetryEvent::GaveUp => &mut counts.give_ups,
            RetryEvent::Refused => &mut counts.refused,
        };
        *counter += 1;
    }

    /// Grants nothing before `now + seconds`.
    pub fn pause(&mut self, now: Nanos, seconds: f64) {
        let until = Nanos::new(now.as_u64().saturating_add(nanos_of_secs(seconds)));
        self.paused_until = self.paused_until.max(until);
    }

    /// Lifts the pause in force, if any.
    pub fn resume(&mut self) {
        self.paused_until = Nanos::new(0);
    }

    /// The end of the pause in force at `now`, if any.
    pub fn paused_until(&self, now: Nanos) -> Option<Nanos> {
        (self.paused_until > now).then_some(self.paused_until)
    }

    /// Live figures at `now`.
    pub fn figures(&mut self, now: Nanos) -> LimiterFigures {
        LimiterFigures {
            in_flight: self.in_flight,
            tokens_granted: self.tokens_granted,
            requests_in_window: self.requests.as_mut().map(|w| w.used(now)),
            tokens_in_window: self.tokens.as_mut().map(|w| w.used(now)),
            retry_counts: self.retry_counts,
        }
    }

    /// The first instant at which the windows and the pause allow `tokens` more.
    fn rate_ready_at(&mut self, tokens: u64, now: Nanos) -> Nanos {
        let mut ready = self.paused_until.max(now);
        if let Some(pacer) = &self.pacer {
            ready = ready.max(pacer.ready_at(now));
        }
        if let Some(requests) = &mut self.requests {
            ready = ready.max(requests.earliest(1, now).unwrap_or(ready));
        }
        if let (Some(window), true) = (&mut self.tokens, tokens > 0) {
            ready = ready.max(window.earliest(tokens, now).unwrap_or(ready));
        }
        ready
    }
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
        let tokens = request.tokens;
        match self.config.tpm {
            Some(tpm) if tokens > tpm => Err(InvalidArgument::new(
                "tokens",
                format!("is {tokens}, more than tpm ({tpm}): it could never be granted"),
            )),
            _ => Ok(()),
        }
    }

    fn try_take(&mut self, request: &LimiterRequest, now: Nanos) -> Check<LimiterGrant> {
        let tokens = &request.tokens;
        if self
            .config
            .max_concurrent
            .is_some_and(|max| self.in_flight >= max)
        {
            return Check::WaitForRelease;
        }
        let ready = self.rate_ready_at(*tokens, now);
        if ready > now {
            return Check::RetryAt(ready);
        }
        if let Some(pacer) = &mut self.pacer {
            pacer.record(now);
        }
        self.in_flight += 1;
        let anonymous_grant = request.anonymous;
        self.anonymous += u64::from(anonymous_grant);
        self.tokens_granted = self.tokens_granted.saturating_add(*tokens);
        let request = self.requests.as_mut().map(|w| w.record(1, now));
        let token_receipt = match (&mut self.tokens, *tokens) {
            (Some(window), t) if t > 0 => Some((window.record(t, now), t)),
            _ => None,
        };
        Check::Granted(LimiterGrant {
            generation: self.generation,
            request,
            tokens: token_receipt,
            charged: *tokens,
            anonymous: anonymous_grant,
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
        self.anonymous -= u64::from(grant.anonymous && self.anonymous > 0);
        self.tokens_granted = self.tokens_granted.saturating_sub(grant.charged);
        if let (Some(window), Some(receipt)) = (&mut self.requests, grant.request) {
            window.refund(receipt, 1);
        }
        if let (Some(window), Some((receipt, ours))) = (&mut self.tokens, grant.tokens) {
            window.refund(receipt, ours);
        }
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
        Some(grant)
    }

    fn after_fork_in_child(&mut self, intact: bool) {
        self.generation += 1;
        self.in_flight = 0;
        self.anonymous = 0;
        if !intact {
            // Possibly half-written windows: leak them and start empty. The pacer is two plain
            // words, never half-written, so the child keeps the pace it inherited.
            let window = self.config.counted_ns();
            let requests = self.config.rpm.map(|rpm| SlidingWindow::new(rpm, window));
            let tokens = self.config.tpm.map(|tpm| SlidingWindow::new(tpm, window));
            std::mem::forget(std::mem::replace(&mut self.requests, requests));
            std::mem::forget(std::mem::replace(&mut self.tokens, tokens));
        }
    }
}

#[cfg(test)]
mod tests;
