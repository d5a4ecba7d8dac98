//! The seam between the edge that waits (threads, event loops: `src/py/wait.rs`) and a store
//! that decides: the in-memory [`Gate`] or the Redis store (`src/store/redis`). Both answer
//! the same questions — granted now, or queued with a ticket to poll — so waiting, timeouts,
//! cancellation and the hand-over of grants are written once, in the edge.

use std::time::Duration;

use super::error::QueueError;
use super::gate::{Abandon, Acquired, Gate, Polled, Resource, Ticket};
use super::notify::Notifier;

/// A FIFO queue of waiters in front of a budget, wherever the budget lives.
pub trait WaitQueue: Send + Sync + 'static {
    /// What a caller asks for.
    type Request: Copy + Send + Sync;
    /// What a caller owns once granted.
    type Grant: Send;

    /// Whether [`WaitQueue::acquire`] with `may_block` may wait on I/O (a remote store): the
    /// edge then releases the GIL around it, and calls [`WaitQueue::taken`] once it holds the
    /// GIL again. An in-process store decides at once, with the GIL held, so that a grant is
    /// counted from when its caller can use it.
    const REMOTE: bool;

    /// A grant made at once by a remote store, taken now that its caller holds the GIL again
    /// (counted from now if that was late).
    fn taken(&self, grant: &mut Self::Grant) {
        let _ = grant;
    }

    /// Rejects a request that can never be granted, without waiting.
    ///
    /// # Errors
    /// [`QueueError::Invalid`] naming the argument at fault.
    fn validate(&self, request: &Self::Request) -> Result<(), QueueError>;

    /// Grants `request` now if nobody is queued and the budget allows it. A remote store may
    /// take one round trip (`may_block`) — never on an event loop's thread.
    ///
    /// # Errors
    /// A bad request, or a store that cannot be reached.
    fn try_acquire(
        &self,
        request: Self::Request,
        may_block: bool,
    ) -> Result<Option<Self::Grant>, QueueError>;

    /// Grants `request` now or queues it. With `may_block` a remote store may spend one round
    /// trip to grant at once; without it (an event loop's thread) it only queues.
    ///
    /// # Errors
    /// A bad request, or a store that cannot be reached.
    fn acquire(
        &self,
        request: Self::Request,
        may_block: bool,
    ) -> Result<Acquired<Self::Grant>, QueueError>;

    /// Hands over the ticket's grant if it has one, else registers `notifier` and says when
    /// to poll again (`Pending(None)`: when notified).
    ///
    /// # Errors
    /// The store failed while the ticket waited.
    fn poll(&self, ticket: Ticket, notifier: &Notifier) -> Result<Polled<Self::Grant>, QueueError>;

    /// [`WaitQueue::poll`] that leaves a grant with the queue: `Ready(())` says to come for it
    /// with [`WaitQueue::take`] once able to use it (a thread that must get the GIL back).
    ///
    /// # Errors
    /// The store failed while the ticket waited.
    fn poll_handed(&self, ticket: Ticket, notifier: &Notifier) -> Result<Polled<()>, QueueError>;

    /// Takes the grant handed to `ticket`, counted from now; `Pending(None)` if it came too
    /// late and the ticket waits again, first in line.
    ///
    /// # Errors
    /// The store failed while the ticket waited.
    fn take(&self, ticket: Ticket) -> Result<Polled<Self::Grant>, QueueError>;

    /// Stops waiting on `ticket`; a grant made for it meanwhile is given back.
    fn abandon(&self, ticket: Ticket, why: Abandon);

    /// How long from now until the instant `at` a `Pending(Some(at))` named.
    fn until(&self, at: super::clock::Nanos) -> Duration;
}

impl<R: Resource> WaitQueue for Gate<R> {
    type Request = R::Request;
    type Grant = R::Grant;
    const REMOTE: bool = false;

    fn validate(&self, request: &R::Request) -> Result<(), QueueError> {
        Ok(Gate::validate(self, request)?)
    }

    fn try_acquire(&self, request: R::Request, _: bool) -> Result<Option<R::Grant>, QueueError> {
        Ok(Gate::try_acquire(self, request)?)
    }

    fn acquire(&self, request: R::Request, _: bool) -> Result<Acquired<R::Grant>, QueueError> {
        Ok(Gate::acquire(self, request)?)
    }

    fn poll(&self, ticket: Ticket, notifier: &Notifier) -> Result<Polled<R::Grant>, QueueError> {
        Ok(Gate::poll(self, ticket, notifier))
    }

    fn poll_handed(&self, ticket: Ticket, notifier: &Notifier) -> Result<Polled<()>, QueueError> {
        Ok(Gate::poll_handed(self, ticket, notifier))
    }

    fn take(&self, ticket: Ticket) -> Result<Polled<R::Grant>, QueueError> {
        Ok(Gate::take(self, ticket))
    }

    fn abandon(&self, ticket: Ticket, why: Abandon) {
        Gate::abandon(self, ticket, why);
    }

    fn until(&self, at: super::clock::Nanos) -> Duration {
        let now = self.clock().now().as_u64();
        Duration::from_nanos(at.as_u64().saturating_sub(now))
    }
}
