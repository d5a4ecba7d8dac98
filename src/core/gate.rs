//! The one waiting engine behind every primitive: a FIFO queue of waiters in front of a
//! [`Resource`] that decides, without blocking, whether a request can be granted now.
//!
//! The gate decides; the edges (threads, event loops) wait. A call never blocks: it answers
//! *granted*, or *queued* with a ticket that the caller polls when its [`Waker`] fires or its
//! retry instant passes. Grants are handed to waiters strictly first come, first served (a
//! large request at the head is not overtaken by small ones, as in tokio's `Semaphore`), and
//! only the head of the queue needs a timer — plus the next waiter, a backstop a little later
//! in case the head's event loop is busy — so a thousand idle waiters cost nothing.
//! Wakers are always called after the lock is dropped: they may call into Python.

use std::collections::{BTreeMap, HashMap};
use std::task::Waker;

use super::clock::{Clock, Nanos};
use super::error::InvalidArgument;
use super::fork::{AfterFork, ForkableMutex};

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

    /// Called in a forked child. `intact` is false when another thread of the parent held
    /// the lock at the moment of the fork, so dynamic state may be half-written: rebuild it
    /// from configuration without dropping (or reading) the old parts.
    fn after_fork_in_child(&mut self, intact: bool);
}

/// A queued request, identified by the gate that issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket(u64);

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
    /// Still waiting: poll again when woken, or at this instant if one is given.
    Pending(Option<Nanos>),
    /// The gate no longer knows this ticket (cancelled, or its process forked).
    Unknown,
}

/// Why a waiter stopped waiting without a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandon {
    /// Its timeout passed.
    Timeout,
    /// Cancelled (asyncio cancellation, KeyboardInterrupt, an error while waiting).
    Cancelled,
}

/// Counters kept by every gate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GateCounters {
    /// Grants made, at once or after waiting.
    pub acquired: u64,
    /// Waits that ended by timeout.
    pub timeouts: u64,
    /// Waits that were cancelled.
    pub cancelled: u64,
    /// Total time granted requests spent queued, in nanoseconds.
    pub total_wait_ns: u64,
    /// The longest time a granted request spent queued, in nanoseconds.
    pub max_wait_ns: u64,
}

struct Waiter<Req> {
    request: Req,
    waker: Option<Waker>,
    /// The instant this waiter will poll again by itself (None: only when woken).
    armed: Option<Nanos>,
    since: Nanos,
}

struct State<R: Resource> {
    resource: R,
    queue: BTreeMap<u64, Waiter<R::Request>>,
    handed: HashMap<u64, R::Grant>,
    next_ticket: u64,
    counters: GateCounters,
}

/// A FIFO queue of waiters in front of a resource. Thread-safe; all methods take `&self`.
pub struct Gate<R: Resource> {
    state: ForkableMutex<State<R>>,
    clock: Clock,
}

impl<R: Resource> Gate<R> {
    /// A gate over `resource`, reading time from `clock`.
    pub fn new(resource: R, clock: Clock) -> Self {
        let state = State {
            resource,
            queue: BTreeMap::new(),
            handed: HashMap::new(),
            next_ticket: 0,
            counters: GateCounters::default(),
        };
        Gate {
            state: ForkableMutex::new(state),
            clock,
        }
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

    /// Grants `request` now if nobody is queued and the resource allows it.
    ///
    /// # Errors
    /// [`InvalidArgument`] if the request can never be granted.
    pub fn try_acquire(&self, request: R::Request) -> Result<Option<R::Grant>, InvalidArgument> {
        let now = self.clock.now();
        let mut st = self.state.lock();
        st.resource.validate(&request)?;
        if !st.queue.is_empty() {
            return Ok(None);
        }
        match st.resource.try_take(&request, now) {
            Check::Granted(grant) => {
                st.counters.acquired += 1;
                Ok(Some(grant))
            }
            _ => Ok(None),
        }
    }

    /// Grants `request` now, or queues it behind everyone already waiting.
    ///
    /// # Errors
    /// [`InvalidArgument`] if the request can never be granted.
    pub fn acquire(&self, request: R::Request) -> Result<Acquired<R::Grant>, InvalidArgument> {
        let now = self.clock.now();
        let mut st = self.state.lock();
        st.resource.validate(&request)?;
        if st.queue.is_empty() {
            if let Check::Granted(grant) = st.resource.try_take(&request, now) {
                st.counters.acquired += 1;
                return Ok(Acquired::Now(grant));
            }
        }
        let id = st.next_ticket;
        st.next_ticket += 1;
        let waiter = Waiter {
            request,
            waker: None,
            armed: None,
            since: now,
        };
        st.queue.insert(id, waiter);
        Ok(Acquired::Queued(Ticket(id)))
    }

    /// Checks a queued ticket: hands over its grant if it has one, else registers `waker`
    /// and says when to poll again.
    ///
    /// # Cancel safety
    /// A grant made for a ticket stays with the gate until polled or cancelled; cancelling
    /// a granted ticket gives the grant back, so nothing is lost whichever comes first.
    pub fn poll(&self, ticket: Ticket, waker: &Waker) -> Polled<R::Grant> {
        let now = self.clock.now();
        let mut wake = Vec::new();
        let polled = {
            let mut st = self.state.lock();
            let head_retry = dispatch(&mut st, now, &mut wake);
            if let Some(grant) = st.handed.remove(&ticket.0) {
                Polled::Ready(grant)
            } else {
                let place = st.queue.keys().take(2).position(|id| *id == ticket.0);
                match st.queue.get_mut(&ticket.0) {
                    Some(waiter) => {
                        waiter.armed = match place {
                            Some(0) => head_retry,
                            Some(1) => head_retry.map(backstop),
                            _ => None,
                        };
                        if !waiter.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                            waiter.waker = Some(waker.clone());
                        }
                        Polled::Pending(waiter.armed)
                    }
                    None => Polled::Unknown,
                }
            }
        };
        wake_all(wake);
        polled
    }

    /// Stops waiting on `ticket`; a grant made for it meanwhile is given back.
    pub fn abandon(&self, ticket: Ticket, why: Abandon) {
        self.update(|st, now| {
            if let Some(grant) = st.handed.remove(&ticket.0) {
                st.resource.give_back(grant, now);
            } else if st.queue.remove(&ticket.0).is_none() {
                return;
            }
            match why {
                Abandon::Timeout => st.counters.timeouts += 1,
                Abandon::Cancelled => st.counters.cancelled += 1,
            }
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

    /// Reads the resource (at `now`), the counters and the number of waiters. The resource
    /// is `&mut` only so it can drop expired history; nobody is served by a read.
    pub fn inspect<T>(&self, read: impl FnOnce(&mut R, &GateCounters, usize, Nanos) -> T) -> T {
        let now = self.clock.now();
        let mut st = self.state.lock();
        let State {
            resource,
            counters,
            queue,
            ..
        } = &mut *st;
        read(resource, counters, queue.len(), now)
    }

    fn update<T>(&self, change: impl FnOnce(&mut State<R>, Nanos) -> T) -> T {
        let now = self.clock.now();
        let mut wake = Vec::new();
        let out = {
            let mut st = self.state.lock();
            let out = change(&mut st, now);
            dispatch(&mut st, now, &mut wake);
            out
        };
        wake_all(wake);
        out
    }
}

impl<R: Resource> AfterFork for Gate<R> {
    unsafe fn reset_in_child(&self) {
        let reset = |st: &mut State<R>, intact: bool| {
            if intact {
                st.queue.clear();
                st.handed.clear();
            } else {
                // Possibly half-written by the vanished holder: leak rather than drop.
                std::mem::forget(std::mem::take(&mut st.queue));
                std::mem::forget(std::mem::take(&mut st.handed));
            }
            st.resource.after_fork_in_child(intact);
        };
        // SAFETY: the caller guarantees a single-threaded child; no gate call is under way.
        unsafe { self.state.reset_in_child(reset) };
    }
}

/// Serves the queue in order while the head can be granted; returns the head's retry
/// instant if it must wait for time. Wakers to call go to `wake`.
fn dispatch<R: Resource>(st: &mut State<R>, now: Nanos, wake: &mut Vec<Waker>) -> Option<Nanos> {
    let State {
        resource,
        queue,
        handed,
        counters,
        ..
    } = st;
    while let Some(head) = queue.first_entry() {
        match resource.try_take(&head.get().request, now) {
            Check::Granted(grant) => {
                let (id, waiter) = head.remove_entry();
                let waited = now.as_u64().saturating_sub(waiter.since.as_u64());
                counters.acquired += 1;
                counters.total_wait_ns = counters.total_wait_ns.saturating_add(waited);
                counters.max_wait_ns = counters.max_wait_ns.max(waited);
                handed.insert(id, grant);
                wake.extend(waiter.waker);
            }
            Check::RetryAt(at) => {
                // Wake a waiter only if it would otherwise sleep past its instant: the head
                // at `at`, the next one at the backstop (in case the head's thread or event
                // loop is not running when `at` comes).
                for (waiter, due) in queue.values_mut().zip([at, backstop(at)]) {
                    if waiter.armed.is_none_or(|armed| due < armed) {
                        wake.extend(waiter.waker.take());
                    }
                }
                return Some(at);
            }
            Check::WaitForRelease => return None,
        }
    }
    None
}

/// How long after the head's instant the next waiter checks on it: only the head keeps a
/// timer, and an event loop that is busy (or stopped) must not hold up everyone behind it.
const BACKSTOP_NS: u64 = 20_000_000;

fn backstop(at: Nanos) -> Nanos {
    Nanos::new(at.as_u64().saturating_add(BACKSTOP_NS))
}

fn wake_all(wakers: Vec<Waker>) {
    for waker in wakers {
        waker.wake();
    }
}

#[cfg(test)]
mod tests;
