//! The one waiting engine behind every in-memory primitive: a FIFO queue of waiters in front
//! of a [`Resource`] that decides, without blocking, whether a request can be granted now.
//!
//! The gate decides; the edges (threads, event loops) wait. A call never blocks: it answers
//! *granted*, or *queued* with a ticket that the caller polls when its [`Notify`] fires or its
//! retry instant passes. Grants are handed to waiters strictly first come, first served (a
//! large request at the head is not overtaken by small ones, as in tokio's `Semaphore`).
//!
//! Liveness does not depend on any one waiter (issue 9). Every call serves the queue first, so
//! whoever touches the gate moves it. A rate limit that holds the head is watched by one
//! waiter per independent context (see [`watch`]), so a blocked event loop cannot stall a
//! waiter elsewhere, while a thousand idle waiters still cost nothing. A waiter that can never
//! run again (its event loop closed) is found when it is woken, and its grant goes back at
//! once. A grant picked up late — its thread or loop was busy — is re-dated to the moment it is
//! taken, or taken back if too late to honour ([`Resource::pick_up`]). Notifications are always
//! sent after the lock is dropped: they may call into Python.

use std::collections::{BTreeMap, HashMap};

use super::clock::{Clock, Nanos};
use super::error::InvalidArgument;
use super::fork::{AfterFork, ForkableMutex, Survivors};
use super::notify::{Context, Delivery, Notifier};
use super::wait_times::WaitTimes;

pub(super) mod pressure;
pub(super) mod watch;

use pressure::{Pressure, PressureEvent, Thresholds};
use watch::Watch;

/// What a resource says about a request at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check<G> {
    /// Granted and taken: the caller now owns `G`.
    Granted(G),
    /// Not before this instant (a rate limit or a pause); ask again then.
    RetryAt(Nanos),
    /// Not until something is given back (a concurrency limit); no timer helps.
    WaitForRelease,
}

/// Something a gate hands out: permits, tokens, or both.
pub trait Resource: Send + 'static {
    /// What a caller asks for (a count of tokens, say).
    type Request: Copy + Send + Sync;
    /// What a caller owns once granted, to give back later.
    type Grant: Send;

    /// Rejects a request that can never be granted (larger than the capacity).
    ///
    /// # Errors
    /// [`InvalidArgument`] naming the argument at fault.
    fn validate(&self, request: &Self::Request) -> Result<(), InvalidArgument>;

    /// Grants the request now if possible, else says when to ask again. Never blocks.
    fn try_take(&mut self, request: &Self::Request, now: Nanos) -> Check<Self::Grant>;

    /// Returns a grant that its owner no longer needs (released, cancelled, timed out).
    fn give_back(&mut self, grant: Self::Grant, now: Nanos);

    /// A grant made at `granted` for a queued waiter is taken by it at `now`. A resource that
    /// counts starts re-dates the grant to `now` (the request starts when its waiter runs, not
    /// when it was chosen), or gives it back and returns `None` when it is too late to honour;
    /// the waiter then stays first in line. The default keeps the grant as it is.
    fn pick_up(&mut self, grant: Self::Grant, granted: Nanos, now: Nanos) -> Option<Self::Grant> {
        let _ = (granted, now);
        Some(grant)
    }

    /// The caller of a request now owns `grant` (at once, or taken after waiting).
    fn taken(&mut self, grant: &Self::Grant) {
        let _ = grant;
    }

    /// When the gate should report "pacing hard" (`None`: never).
    fn pressure_thresholds(&self) -> Option<Thresholds> {
        None
    }

    /// The limit that held the last request refused, for the "pacing hard" report.
    fn blocked_by(&self) -> Option<&'static str> {
        None
    }

    /// Called in a forked child. `intact` is false when another thread of the parent held
    /// the lock at the moment of the fork, so dynamic state may be half-written: rebuild it
    /// from configuration without dropping (or reading) the old parts.
    fn after_fork_in_child(&mut self, intact: bool);
}

/// A queued request, identified by the queue that issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket(pub u64);

/// The answer to [`Gate::acquire`].
#[derive(Debug)]
pub enum Acquired<G> {
    /// Granted at once.
    Now(G),
    /// Queued: poll the ticket, cancel it if you stop waiting.
    Queued(Ticket),
}

/// The answer to [`Gate::poll`].
#[derive(Debug, PartialEq, Eq)]
pub enum Polled<G> {
    /// The grant is yours.
    Ready(G),
    /// Still waiting: poll again when notified, or at this instant if one is given.
    Pending(Option<Nanos>),
    /// The gate no longer knows this ticket (abandoned, or its process forked).
    Unknown,
}

/// Why a waiter stopped waiting without a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandon {
    /// Its timeout passed.
    Timeout,
    /// Cancelled (asyncio cancellation, KeyboardInterrupt, an error while waiting).
    Cancelled,
    /// It can never run again (its event loop was closed); counted as cancelled.
    Gone,
}

/// Counters kept by every gate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GateCounters {
    /// Grants taken by their callers, at once or after waiting.
    pub acquired: u64,
    /// Waits that ended by timeout.
    pub timeouts: u64,
    /// Waits that were cancelled, or whose event loop closed under them.
    pub cancelled: u64,
    /// Total time granted requests spent queued, in nanoseconds.
    pub total_wait_ns: u64,
    /// The longest time a granted request spent queued, in nanoseconds.
    pub max_wait_ns: u64,
}

/// What a gate reports about waiting, for `stats()`.
pub struct WaitFigures<'a> {
    /// The counters.
    pub counters: GateCounters,
    /// Waiters queued now.
    pub waiting: usize,
    /// Recent and cumulative wait times.
    pub times: &'a WaitTimes,
    /// When the current "pacing hard" episode started, if one is under way.
    pub pressed_since: Option<Nanos>,
    /// "Pacing hard" episodes so far.
    pub pressure_episodes: u64,
}

struct Waiter<Req> {
    request: Req,
    /// How to wake it; taken when it is woken, set again when it polls.
    notifier: Option<Notifier>,
    context: Option<Context>,
    /// The instant this waiter will poll again by itself (None: only when notified).
    armed: Option<Nanos>,
    since: Nanos,
}

/// A grant made for a queued waiter, kept until the waiter takes it.
struct Handed<Req, G> {
    grant: G,
    request: Req,
    context: Option<Context>,
    granted: Nanos,
    since: Nanos,
}

struct State<R: Resource> {
    resource: R,
    queue: BTreeMap<u64, Waiter<R::Request>>,
    handed: HashMap<u64, Handed<R::Request, R::Grant>>,
    watch: Watch,
    next_ticket: u64,
    counters: GateCounters,
    times: WaitTimes,
    pressure: Pressure,
}

/// What a call under the lock leaves to do once the lock is dropped: waiters to notify, and
/// notifiers to drop (dropping one may release Python objects, which may run Python code).
#[derive(Default)]
struct Outbox {
    wake: Vec<(u64, Notifier)>,
    drop: Vec<Notifier>,
    pressure: Option<PressureEvent>,
}

/// Told of every change of pressure, after the lock is dropped (it may call into Python).
pub type PressureHook = Box<dyn Fn(&PressureEvent) + Send + Sync>;

/// A FIFO queue of waiters in front of a resource. Thread-safe; all methods take `&self`.
pub struct Gate<R: Resource> {
    state: ForkableMutex<State<R>>,
    clock: Clock,
    pressure_hook: std::sync::OnceLock<PressureHook>,
}

impl<R: Resource> Gate<R> {
    /// A gate over `resource`, reading time from `clock`.
    pub fn new(resource: R, clock: Clock) -> Self {
        let state = State {
            resource,
            queue: BTreeMap::new(),
            handed: HashMap::new(),
            watch: Watch::default(),
            next_ticket: 0,
            counters: GateCounters::default(),
            times: WaitTimes::default(),
            pressure: Pressure::default(),
        };
        Gate {
            state: ForkableMutex::new(state),
            clock,
            pressure_hook: std::sync::OnceLock::new(),
        }
    }

    /// Installs the hook told of every change of pressure (once; later calls are ignored).
    pub fn on_pressure(&self, hook: PressureHook) {
        let _ = self.pressure_hook.set(hook);
    }

    /// The clock this gate reads.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Checks that `request` could ever be granted.
    ///
    /// # Errors
    /// [`InvalidArgument`] naming the argument at fault.
    pub fn validate(&self, request: &R::Request) -> Result<(), InvalidArgument> {
        self.state.lock().resource.validate(request)
    }

    /// Grants `request` now if nobody is queued (once the queue has been served) and the
    /// resource allows it.
    ///
    /// # Errors
    /// [`InvalidArgument`] if the request can never be granted.
    pub fn try_acquire(&self, request: R::Request) -> Result<Option<R::Grant>, InvalidArgument> {
        self.locked(|st, now, outbox| {
            st.resource.validate(&request)?;
            dispatch(st, now, outbox);
            if !st.queue.is_empty() {
                return Ok(None);
            }
            Ok(take_now(st, &request, now))
        })
    }

    /// Grants `request` now, or queues it behind everyone already waiting.
    ///
    /// # Errors
    /// [`InvalidArgument`] if the request can never be granted.
    pub fn acquire(&self, request: R::Request) -> Result<Acquired<R::Grant>, InvalidArgument> {
        self.locked(|st, now, outbox| {
            st.resource.validate(&request)?;
            dispatch(st, now, outbox);
            if st.queue.is_empty() {
                if let Some(grant) = take_now(st, &request, now) {
                    return Ok(Acquired::Now(grant));
                }
            }
            let id = st.next_ticket;
            st.next_ticket += 1;
            let waiter = Waiter {
                request,
                notifier: None,
                context: None,
                armed: None,
                since: now,
            };
            st.queue.insert(id, waiter);
            Ok(Acquired::Queued(Ticket(id)))
        })
    }

    /// Checks a queued ticket: hands over its grant if it has one, else registers `notifier`
    /// and says when to poll again.
    ///
    /// # Cancel safety
    /// A grant made for a ticket stays with the gate until polled or abandoned; abandoning
    /// a granted ticket gives the grant back, so nothing is lost whichever comes first.
    pub fn poll(&self, ticket: Ticket, notifier: &Notifier) -> Polled<R::Grant> {
        self.locked(|st, now, outbox| {
            let head_retry = dispatch(st, now, outbox);
            match take_locked(st, ticket.0, now, outbox) {
                Take::Taken(grant) => Polled::Ready(grant),
                Take::NotHanded => register(st, ticket.0, notifier, head_retry, outbox),
                Take::Requeued(retry) => register(st, ticket.0, notifier, retry, outbox),
            }
        })
    }

    /// [`Gate::poll`] for a waiter that cannot run the moment it wakes (a thread that must
    /// wait for the interpreter lock before its request can start): a grant stays with the
    /// gate, and `Ready(())` says to come for it with [`Gate::take`] once able to use it.
    pub fn poll_handed(&self, ticket: Ticket, notifier: &Notifier) -> Polled<()> {
        self.locked(|st, now, outbox| {
            let head_retry = dispatch(st, now, outbox);
            if st.handed.contains_key(&ticket.0) {
                return Polled::Ready(());
            }
            match register(st, ticket.0, notifier, head_retry, outbox) {
                Polled::Pending(at) => Polled::Pending(at),
                _ => Polled::Unknown,
            }
        })
    }

    /// Takes the grant handed to `ticket` (see [`Gate::poll_handed`]), counted from now.
    /// `Pending(None)` if it came too late to honour: the ticket is queued again, first in
    /// line, to be polled again.
    pub fn take(&self, ticket: Ticket) -> Polled<R::Grant> {
        self.locked(|st, now, outbox| {
            if let Take::Taken(grant) = take_locked(st, ticket.0, now, outbox) {
                return Polled::Ready(grant);
            }
            if st.queue.contains_key(&ticket.0) {
                Polled::Pending(None)
            } else {
                Polled::Unknown
            }
        })
    }

    /// Stops waiting on `ticket`; a grant made for it meanwhile is given back.
    pub fn abandon(&self, ticket: Ticket, why: Abandon) {
        self.locked(|st, now, outbox| {
            abandon_locked(st, ticket.0, why, now, outbox);
            dispatch(st, now, outbox);
        });
    }

    /// Gives a grant back and serves whoever can now be served.
    pub fn give_back(&self, grant: R::Grant) {
        self.update(|st, now| st.resource.give_back(grant, now));
    }

    /// Changes the resource (a release, a refund, a pause), then serves the queue.
    pub fn with_resource<T>(&self, change: impl FnOnce(&mut R, Nanos) -> T) -> T {
        self.update(|st, now| change(&mut st.resource, now))
    }

    /// Reads the resource (at `now`) and the waiting figures. The resource is `&mut` only so
    /// it can drop expired history; nobody is served by a read.
    pub fn inspect<T>(&self, read: impl FnOnce(&mut R, &WaitFigures<'_>, Nanos) -> T) -> T {
        let mut st = self.state.lock();
        let now = self.clock.now();
        read_state(&mut st, read, now)
    }

    /// [`Gate::inspect`] if the lock is free this instant, else `None`: a reader that must
    /// never make an acquire or a release wait (metrics).
    pub fn try_inspect<T>(
        &self,
        read: impl FnOnce(&mut R, &WaitFigures<'_>, Nanos) -> T,
    ) -> Option<T> {
        let mut st = self.state.try_lock()?;
        let now = self.clock.now();
        Some(read_state(&mut st, read, now))
    }

    fn update<T>(&self, change: impl FnOnce(&mut State<R>, Nanos) -> T) -> T {
        self.locked(|st, now, outbox| {
            let out = change(st, now);
            dispatch(st, now, outbox);
            out
        })
    }

    /// Runs `f` under the lock, then sends the notifications it collected.
    fn locked<T>(&self, f: impl FnOnce(&mut State<R>, Nanos, &mut Outbox) -> T) -> T {
        let mut outbox = Outbox::default();
        let out = {
            let mut st = self.state.lock();
            // Read under the lock: a caller that waited for it must not decide with the time
            // it had before (issue 9, found by the model check: a late grant re-dated to
            // before a decision that no longer counted it).
            let now = self.clock.now();
            let out = f(&mut st, now, &mut outbox);
            outbox.pressure = judge_pressure(&mut st, now);
            out
        };
        if let (Some(event), Some(hook)) = (outbox.pressure.take(), self.pressure_hook.get()) {
            hook(&event);
        }
        self.deliver(outbox);
        out
    }

    /// Wakes waiters (outside the lock). A waiter that can never run again is abandoned —
    /// giving back any grant made for it — and whoever that serves is woken in turn.
    fn deliver(&self, mut outbox: Outbox) {
        if outbox.wake.is_empty() && outbox.drop.is_empty() {
            return; // the common case: nobody to wake
        }
        loop {
            drop(std::mem::take(&mut outbox.drop));
            let gone: Vec<u64> = std::mem::take(&mut outbox.wake)
                .into_iter()
                .filter(|(_, notifier)| notifier.notify() == Delivery::Gone)
                .map(|(id, _)| id)
                .collect();
            if gone.is_empty() {
                return;
            }
            let mut st = self.state.lock();
            let now = self.clock.now();
            for id in gone {
                abandon_locked(&mut st, id, Abandon::Gone, now, &mut outbox);
            }
            dispatch(&mut st, now, &mut outbox);
        }
    }
}

impl<R: Resource> AfterFork for Gate<R> {
    unsafe fn reset_in_child(&self, survivors: Survivors) {
        let reset = |st: &mut State<R>, intact: bool| {
            if intact {
                keep_survivors(st, survivors);
            } else {
                // Possibly half-written by the vanished holder: leak rather than drop.
                std::mem::forget(std::mem::take(&mut st.queue));
                std::mem::forget(std::mem::take(&mut st.handed));
                std::mem::forget(std::mem::take(&mut st.watch));
            }
            st.resource.after_fork_in_child(intact);
        };
        // SAFETY: the caller guarantees a single-threaded child; no gate call is under way.
        unsafe { self.state.reset_in_child(reset) };
        // The child's budget may serve the survivors at once (nothing is in flight here).
        self.update(|_, _| ());
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// In a forked child: forgets the waiters of the parent's other threads and loops, and keeps
/// those of the forking thread's own event loop, which runs on in the child. Their grants were
/// made by the parent's budget, so they queue again (first in line, in their order) to be
/// granted by the child's.
fn keep_survivors<R: Resource>(st: &mut State<R>, survivors: Survivors) {
    let kept = survivors.event_loop.map(Context::EventLoop);
    let survives = |context: Option<Context>| kept.is_some() && context == kept;
    st.queue.retain(|_, waiter| survives(waiter.context));
    for (id, handed) in std::mem::take(&mut st.handed) {
        if survives(handed.context) {
            let waiter = Waiter {
                request: handed.request,
                notifier: None,
                context: handed.context,
                armed: None,
                since: handed.since,
            };
            st.queue.insert(id, waiter);
        }
    }
    st.watch.clear();
    for (&id, waiter) in &st.queue {
        if let Some(context) = waiter.context {
            st.watch.insert(id, context);
        }
    }
}

fn read_state<R: Resource, T>(
    st: &mut State<R>,
    read: impl FnOnce(&mut R, &WaitFigures<'_>, Nanos) -> T,
    now: Nanos,
) -> T {
    let State {
        resource,
        queue,
        counters,
        times,
        pressure,
        ..
    } = st;
    let figures = WaitFigures {
        counters: *counters,
        waiting: queue.len(),
        times,
        pressed_since: pressure.since(),
        pressure_episodes: pressure.episodes(),
    };
    read(resource, &figures, now)
}

fn judge_pressure<R: Resource>(st: &mut State<R>, now: Nanos) -> Option<PressureEvent> {
    if st.queue.is_empty() && st.pressure.is_calm() {
        return None; // the common case: nobody waits, and nothing to end
    }
    let thresholds = st.resource.pressure_thresholds()?;
    let head_since = st.queue.first_key_value().map(|(_, w)| w.since);
    let reason = st.resource.blocked_by();
    st.pressure
        .judge(thresholds, head_since, st.queue.len(), reason, now)
}

/// Takes the grant handed to `id`, if any. One taken too late is given back and the waiter
/// queued again, first in line; the queue is then served again, so it may be handed a fresh
/// grant at once.
fn take_locked<R: Resource>(
    st: &mut State<R>,
    id: u64,
    now: Nanos,
    outbox: &mut Outbox,
) -> Take<R::Grant> {
    let Some(handed) = st.handed.remove(&id) else {
        return Take::NotHanded;
    };
    if let Some(grant) = pick_up(st, id, handed, now) {
        return Take::Taken(grant);
    }
    let head_retry = dispatch(st, now, outbox);
    match st.handed.remove(&id).and_then(|h| pick_up(st, id, h, now)) {
        Some(grant) => Take::Taken(grant),
        None => Take::Requeued(head_retry),
    }
}

/// What a waiter coming for its grant found.
enum Take<G> {
    Taken(G),
    /// No grant was handed to it.
    NotHanded,
    /// Its grant came too late: it waits again, first in line; the head's retry instant as
    /// served again (issue 9: its timer must be armed from this, found by the stress test).
    Requeued(Option<Nanos>),
}

/// Takes `request` from the resource for a caller that did not queue.
fn take_now<R: Resource>(st: &mut State<R>, request: &R::Request, now: Nanos) -> Option<R::Grant> {
    match st.resource.try_take(request, now) {
        Check::Granted(grant) => {
            st.resource.taken(&grant);
            record_grant(st, 0, now);
            Some(grant)
        }
        _ => None,
    }
}

fn record_grant<R: Resource>(st: &mut State<R>, waited: u64, now: Nanos) {
    let counters = &mut st.counters;
    counters.acquired += 1;
    counters.total_wait_ns = counters.total_wait_ns.saturating_add(waited);
    counters.max_wait_ns = counters.max_wait_ns.max(waited);
    st.times.record(waited, now);
}

/// The waiter of `handed` takes its grant; if the resource says it is too late, the waiter is
/// queued again under its old ticket (so first in line) and `None` is returned.
fn pick_up<R: Resource>(
    st: &mut State<R>,
    id: u64,
    handed: Handed<R::Request, R::Grant>,
    now: Nanos,
) -> Option<R::Grant> {
    let Handed {
        grant,
        request,
        granted,
        since,
        ..
    } = handed;
    match st.resource.pick_up(grant, granted, now) {
        Some(grant) => {
            st.resource.taken(&grant);
            record_grant(st, now.as_u64().saturating_sub(since.as_u64()), now);
            Some(grant)
        }
        None => {
            // Its context is registered again by the poll under way.
            let waiter = Waiter {
                request,
                notifier: None,
                context: None,
                armed: None,
                since,
            };
            // It was the head when granted, so its ticket is older than every queued one:
            // queued again under it, it is first in line.
            st.queue.insert(id, waiter);
            None
        }
    }
}

/// Registers the waiter of `id` (its notifier and context) and says when it polls again.
fn register<R: Resource>(
    st: &mut State<R>,
    id: u64,
    notifier: &Notifier,
    head_retry: Option<Nanos>,
    outbox: &mut Outbox,
) -> Polled<R::Grant> {
    let Some(waiter) = st.queue.get_mut(&id) else {
        return Polled::Unknown;
    };
    let context = notifier.context();
    if waiter.context != Some(context) {
        st.watch.remove(id, waiter.context);
        st.watch.insert(id, context);
        waiter.context = Some(context);
    }
    outbox
        .drop
        .extend(waiter.notifier.replace(notifier.clone()));
    waiter.armed = head_retry.filter(|_| st.watch.is_watcher(id, context));
    Polled::Pending(waiter.armed)
}

fn abandon_locked<R: Resource>(
    st: &mut State<R>,
    id: u64,
    why: Abandon,
    now: Nanos,
    outbox: &mut Outbox,
) {
    if let Some(handed) = st.handed.remove(&id) {
        st.resource.give_back(handed.grant, now);
    } else if let Some(waiter) = st.queue.remove(&id) {
        st.watch.remove(id, waiter.context);
        outbox.drop.extend(waiter.notifier);
    } else {
        return;
    }
    match why {
        Abandon::Timeout => st.counters.timeouts += 1,
        Abandon::Cancelled | Abandon::Gone => st.counters.cancelled += 1,
    }
}

/// Serves the queue in order while the head can be granted; returns the head's retry
/// instant if it must wait for time. Waiters to notify go to `wake`.
fn dispatch<R: Resource>(st: &mut State<R>, now: Nanos, outbox: &mut Outbox) -> Option<Nanos> {
    while let Some(head) = st.queue.first_entry() {
        match st.resource.try_take(&head.get().request, now) {
            Check::Granted(grant) => {
                let (id, waiter) = head.remove_entry();
                st.watch.remove(id, waiter.context);
                let handed = Handed {
                    grant,
                    request: waiter.request,
                    context: waiter.context,
                    granted: now,
                    since: waiter.since,
                };
                st.handed.insert(id, handed);
                outbox.wake.extend(waiter.notifier.map(|n| (id, n)));
            }
            Check::RetryAt(at) => {
                // Wake a watcher only if it would otherwise sleep past the instant.
                for id in st.watch.watchers() {
                    if let Some(waiter) = st.queue.get_mut(&id) {
                        if waiter.armed.is_none_or(|armed| at < armed) {
                            outbox.wake.extend(waiter.notifier.take().map(|n| (id, n)));
                        }
                    }
                }
                return Some(at);
            }
            Check::WaitForRelease => return None,
        }
    }
    None
}

#[cfg(all(test, shuttle))]
mod model;
#[cfg(test)]
mod tests;
