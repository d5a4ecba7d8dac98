//! The one place that waits. Threads park with the GIL released (in slices on the main
//! thread, so Ctrl-C is seen); event loops await a future that the gate's notifier resolves
//! through `loop.call_soon_threadsafe`, with a loop timer only where the gate asks for one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

use super::errors::lost_ticket;
use super::take_once::TakeOnce;
use crate::core::{
    Abandon, Acquired, Context, Delivery, Notifier, Notify, Polled, QueueError, Ticket, WaitQueue,
};

/// How often a waiter on the main thread looks for signals (Ctrl-C).
const SIGNAL_SLICE: Duration = Duration::from_millis(50);

/// Wakes a parked thread; a thread always runs again.
struct ThreadNotify(Thread);

impl Notify for ThreadNotify {
    fn notify(&self) -> Delivery {
        self.0.unpark();
        Delivery::Sent
    }

    fn context(&self) -> Context {
        Context::Thread
    }
}

enum Step {
    Handed,
    TimedOut,
    CheckSignals,
    Lost,
    Failed(QueueError),
}

/// Waits on the calling thread for `request`; `Ok(None)` when `timeout` (seconds) passes.
///
/// # Errors
/// `ValueError` for a request that can never be granted; `KeyboardInterrupt` (or whatever a
/// signal handler raises) while waiting on the main thread, with nothing left held.
pub fn block_on<Q: WaitQueue>(
    py: Python<'_>,
    gate: &Q,
    request: Q::Request,
    timeout: Option<f64>,
) -> PyResult<Option<Q::Grant>> {
    // An in-process store decides with the GIL held, so a grant made at once is counted from
    // when this thread can use it; a remote one takes a round trip, with the GIL released.
    let acquired = if Q::REMOTE {
        py.detach(|| gate.acquire(request, true))?
    } else {
        gate.acquire(request, true)?
    };
    let ticket = match acquired {
        Acquired::Now(mut grant) => {
            gate.taken(&mut grant);
            return Ok(Some(grant));
        }
        Acquired::Queued(ticket) => ticket,
    };
    // From here every way out — a grant, a timeout, an error from Python — settles the ticket.
    let queued = Queued {
        gate,
        ticket,
        settled: false,
    };
    // A timeout too long to represent waits forever, as `None` does.
    let deadline =
        timeout.and_then(|t| Instant::now().checked_add(Duration::try_from_secs_f64(t).ok()?));
    let slice = if is_main_thread(py)? {
        Some(SIGNAL_SLICE)
    } else {
        None
    };
    let notifier: Notifier = Arc::new(ThreadNotify(thread::current()));
    loop {
        match py.detach(|| park_until_step(gate, ticket, &notifier, deadline, slice)) {
            // Taken now that this thread holds the GIL again, and so counted from now: the
            // request starts when its thread can run, which under contention is well after
            // the grant (issue 9: up to 0.58 s, past the margin, and a 429).
            Step::Handed => match gate.take(ticket)? {
                Polled::Ready(grant) => {
                    queued.settle();
                    return Ok(Some(grant));
                }
                Polled::Pending(_) => {}
                Polled::Unknown => {
                    queued.settle();
                    return Err(lost_ticket());
                }
            },
            Step::TimedOut => {
                queued.abandon(Abandon::Timeout);
                return Ok(None);
            }
            Step::CheckSignals => py.check_signals()?, // dropping `queued` abandons the ticket
            Step::Lost => {
                queued.settle();
                return Err(lost_ticket());
            }
            Step::Failed(err) => return Err(err.into()), // dropping `queued` abandons it
        }
    }
}

/// A queued ticket that is abandoned (as cancelled) unless settled: no early return can
/// leave it in the queue to receive a grant nobody will take.
struct Queued<'a, Q: WaitQueue> {
    gate: &'a Q,
    ticket: Ticket,
    settled: bool,
}

impl<Q: WaitQueue> Queued<'_, Q> {
    fn settle(mut self) {
        self.settled = true;
    }

    fn abandon(mut self, why: Abandon) {
        self.settled = true;
        self.gate.abandon(self.ticket, why);
    }
}

impl<Q: WaitQueue> Drop for Queued<'_, Q> {
    fn drop(&mut self) {
        if !self.settled {
            self.gate.abandon(self.ticket, Abandon::Cancelled);
        }
    }
}

fn park_until_step<Q: WaitQueue>(
    gate: &Q,
    ticket: Ticket,
    notifier: &Notifier,
    deadline: Option<Instant>,
    slice: Option<Duration>,
) -> Step {
    let slice_end = slice.map(|s| Instant::now() + s);
    loop {
        let retry_at = match gate.poll_handed(ticket, notifier) {
            Ok(Polled::Ready(())) => return Step::Handed,
            Ok(Polled::Pending(at)) => at,
            Ok(Polled::Unknown) => return Step::Lost,
            Err(err) => return Step::Failed(err),
        };
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Step::TimedOut;
        }
        if slice_end.is_some_and(|e| now >= e) {
            return Step::CheckSignals;
        }
        let retry = retry_at.map(|at| now + gate.until(at));
        match [deadline, slice_end, retry].into_iter().flatten().min() {
            Some(wake_at) => thread::park_timeout(wake_at.saturating_duration_since(now)),
            None => thread::park(),
        }
    }
}

fn is_main_thread(py: Python<'_>) -> PyResult<bool> {
    static THREADING: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let threading = THREADING
        .get_or_try_init(py, || py.import("threading").map(Bound::unbind))?
        .bind(py);
    let main_ident = threading.call_method0("main_thread")?.getattr("ident")?;
    threading.call_method0("get_ident")?.eq(main_ident)
}

/// `crewthrottle._waiting`, the Python half of async waiting.
pub fn waiting_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static WAITING: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    Ok(WAITING
        .get_or_try_init(py, || py.import("crewthrottle._waiting").map(Bound::unbind))?
        .bind(py))
}

/// An awaitable that is already done: `value`.
pub fn ready(py: Python<'_>, value: Py<PyAny>) -> PyResult<Py<PyAny>> {
    Ok(waiting_module(py)?
        .call_method1("ready", (value,))?
        .unbind())
}

/// What to do when a wake-up can never be delivered: abandon the ticket (weakly held, so a
/// queued notifier never keeps its gate alive).
type OnLost = Arc<dyn Fn() + Send + Sync>;

fn abandon_when_lost<Q: WaitQueue>(gate: &Arc<Q>, ticket: Ticket) -> OnLost {
    let gate: Weak<Q> = Arc::downgrade(gate);
    Arc::new(move || {
        if let Some(gate) = gate.upgrade() {
            gate.abandon(ticket, Abandon::Gone);
        }
    })
}

/// Wakes an asyncio future from any thread: `loop.call_soon_threadsafe(_WakeCall(fut))`.
struct LoopNotify {
    call_soon_threadsafe: Py<PyAny>,
    call_soon: Py<PyAny>,
    future: Py<PyAny>,
    loop_id: u64,
    on_lost: OnLost,
}

impl Notify for LoopNotify {
    fn notify(&self) -> Delivery {
        // `try_attach`: an I/O thread may notify while the interpreter is shutting down.
        Python::try_attach(|py| {
            let call = WakeCall {
                future: self.future.clone_ref(py),
                call_soon: self.call_soon.clone_ref(py),
                on_lost: TakeOnce::new(Arc::clone(&self.on_lost)),
            };
            let Ok(call) = Py::new(py, call) else {
                return Delivery::Gone;
            };
            match self.call_soon_threadsafe.call1(py, (call.clone_ref(py),)) {
                Ok(_) => Delivery::Sent,
                Err(_) => {
                    // A closed loop: the gate abandons the ticket itself.
                    call.get().disarm();
                    Delivery::Gone
                }
            }
        })
        .unwrap_or(Delivery::Gone)
    }

    fn context(&self) -> Context {
        Context::EventLoop(self.loop_id)
    }
}

/// The callback a loop runs to wake a waiting task. If the loop drops it without running it
/// (`loop.close()` clears the pending callbacks of tasks it never cancelled), the task can
/// never run again: its ticket is abandoned then, so a grant made for it comes back at once.
/// Run, it resolves the task's future — which schedules the task's step — and hands the
/// same guard on to a [`WakeGuard`] scheduled after that step: a loop stopped and closed
/// between the two drops the guard, and the grant comes back all the same.
#[pyclass(module = "crewthrottle._native", name = "_WakeCall", frozen)]
pub struct WakeCall {
    future: Py<PyAny>,
    call_soon: Py<PyAny>,
    on_lost: TakeOnce<OnLost>,
}

/// Abandons its ticket if dropped unrun (see [`WakeCall`]); running it means the task's step
/// ran first.
#[pyclass(module = "crewthrottle._native", name = "_WakeGuard", frozen)]
pub struct WakeGuard {
    on_lost: TakeOnce<OnLost>,
}

#[pymethods]
impl WakeGuard {
    fn __call__(&self) {
        self.on_lost.take();
    }
}

impl Drop for WakeGuard {
    fn drop(&mut self) {
        if let Some(on_lost) = self.on_lost.take() {
            on_lost();
        }
    }
}

impl WakeCall {
    fn disarm(&self) -> Option<OnLost> {
        self.on_lost.take()
    }
}

#[pymethods]
impl WakeCall {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let Some(on_lost) = self.disarm() else {
            return Ok(());
        };
        let future = self.future.bind(py);
        if !future.call_method0("done")?.is_truthy()? {
            future.call_method1("set_result", (py.None(),))?;
        }
        let guard = Py::new(
            py,
            WakeGuard {
                on_lost: TakeOnce::new(on_lost),
            },
        )?;
        // If it cannot be scheduled (the loop is closing), dropping it abandons the ticket.
        let _ = self.call_soon.call1(py, (guard,));
        Ok(())
    }
}

impl Drop for WakeCall {
    fn drop(&mut self) {
        if let Some(on_lost) = self.disarm() {
            on_lost();
        }
    }
}

/// What an async wait turns its grant into, and what it answers on timeout.
pub trait AsyncOutcome<G>: Send + Sync + 'static {
    /// The awaited result for a grant.
    fn granted(&self, py: Python<'_>, grant: G) -> PyResult<Py<PyAny>>;
    /// The awaited result on timeout (or the exception to raise).
    fn timed_out(&self, py: Python<'_>) -> PyResult<Py<PyAny>>;
}

/// The outcome of a permit that is only a yes or no: `True` when granted, `False` on timeout
/// (as `threading`'s `acquire` answers).
pub struct Flag;

impl AsyncOutcome<()> for Flag {
    fn granted(&self, py: Python<'_>, _grant: ()) -> PyResult<Py<PyAny>> {
        Ok(true.into_pyobject(py)?.to_owned().into_any().unbind())
    }

    fn timed_out(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(false.into_pyobject(py)?.to_owned().into_any().unbind())
    }
}

/// One queued async acquisition, driven by `crewthrottle._waiting.wait`.
pub trait AsyncWait: Send + Sync {
    /// `(True, result)` once granted, else `(False, seconds until the next poll or None)`.
    fn poll<'py>(
        &self,
        py: Python<'py>,
        event_loop: &Bound<'py, PyAny>,
        future: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>>;
    /// Gives up: on timeout returns (or raises) the timed-out result.
    fn abandon(&self, py: Python<'_>, timed_out: bool) -> PyResult<Py<PyAny>>;
}

/// The [`AsyncWait`] of a ticket on a queue.
pub struct GateWait<Q: WaitQueue, O: AsyncOutcome<Q::Grant>> {
    gate: Arc<Q>,
    ticket: Ticket,
    finished: AtomicBool,
    outcome: O,
}

impl<Q: WaitQueue, O: AsyncOutcome<Q::Grant>> GateWait<Q, O> {
    fn finish(&self) -> bool {
        !self.finished.swap(true, Ordering::AcqRel)
    }
}

impl<Q: WaitQueue, O: AsyncOutcome<Q::Grant>> AsyncWait for GateWait<Q, O> {
    fn poll<'py>(
        &self,
        py: Python<'py>,
        event_loop: &Bound<'py, PyAny>,
        future: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let notifier: Notifier = Arc::new(LoopNotify {
            call_soon_threadsafe: event_loop.getattr("call_soon_threadsafe")?.unbind(),
            call_soon: event_loop.getattr("call_soon")?.unbind(),
            future: future.clone().unbind(),
            loop_id: event_loop.as_ptr() as u64,
            on_lost: abandon_when_lost(&self.gate, self.ticket),
        });
        match self.gate.poll(self.ticket, &notifier)? {
            Polled::Ready(grant) => {
                self.finished.store(true, Ordering::Release);
                let result = self.outcome.granted(py, grant)?;
                PyTuple::new(
                    py,
                    [
                        true.into_pyobject(py)?.to_owned().into_any(),
                        result.into_bound(py),
                    ],
                )
            }
            Polled::Pending(at) => {
                let delay = at.map(|at| self.gate.until(at).as_secs_f64());
                PyTuple::new(
                    py,
                    [
                        false.into_pyobject(py)?.to_owned().into_any(),
                        delay.into_pyobject(py)?.into_any(),
                    ],
                )
            }
            Polled::Unknown => Err(lost_ticket()),
        }
    }

    fn abandon(&self, py: Python<'_>, timed_out: bool) -> PyResult<Py<PyAny>> {
        if self.finish() {
            let why = if timed_out {
                Abandon::Timeout
            } else {
                Abandon::Cancelled
            };
            self.gate.abandon(self.ticket, why);
        }
        if timed_out {
            self.outcome.timed_out(py)
        } else {
            Ok(py.None())
        }
    }
}

impl<Q: WaitQueue, O: AsyncOutcome<Q::Grant>> Drop for GateWait<Q, O> {
    fn drop(&mut self) {
        // A wait dropped unfinished (its coroutine collected unawaited): nothing may leak.
        if self.finish() {
            self.gate.abandon(self.ticket, Abandon::Cancelled);
        }
    }
}

/// A queued async acquisition, as Python sees it (private: used by `_waiting.wait`).
#[pyclass(module = "crewthrottle._native", name = "_Waiting", frozen)]
pub struct Waiting(Box<dyn AsyncWait>);

#[pymethods]
impl Waiting {
    fn poll<'py>(
        &self,
        py: Python<'py>,
        event_loop: &Bound<'py, PyAny>,
        future: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        self.0.poll(py, event_loop, future)
    }

    #[pyo3(signature = (*, timed_out))]
    fn abandon(&self, py: Python<'_>, timed_out: bool) -> PyResult<Py<PyAny>> {
        self.0.abandon(py, timed_out)
    }
}

/// An async acquisition not yet started: it joins the queue at the coroutine's first step,
/// so a coroutine cancelled (or dropped) before it runs holds no place in the queue.
trait Start: Send + Sync {
    fn start(&self, py: Python<'_>) -> PyResult<(bool, Py<PyAny>)>;
}

struct Unstarted<Q: WaitQueue, O: AsyncOutcome<Q::Grant>> {
    gate: Arc<Q>,
    request: Q::Request,
    outcome: TakeOnce<O>,
}

impl<Q: WaitQueue, O: AsyncOutcome<Q::Grant>> Start for Unstarted<Q, O> {
    fn start(&self, py: Python<'_>) -> PyResult<(bool, Py<PyAny>)> {
        let Some(outcome) = self.outcome.take() else {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "this acquisition was already awaited",
            ));
        };
        // On the event loop's thread: a remote store only queues here, never waits.
        match self.gate.acquire(self.request, false)? {
            Acquired::Now(grant) => Ok((true, outcome.granted(py, grant)?)),
            Acquired::Queued(ticket) => {
                let wait = GateWait {
                    gate: Arc::clone(&self.gate),
                    ticket,
                    finished: AtomicBool::new(false),
                    outcome,
                };
                Ok((false, Py::new(py, Waiting(Box::new(wait)))?.into_any()))
            }
        }
    }
}

/// An async acquisition, as Python sees it (private: used by `_waiting.acquire`).
#[pyclass(module = "crewthrottle._native", name = "_Acquisition", frozen)]
pub struct Acquisition(Box<dyn Start>);

#[pymethods]
impl Acquisition {
    fn start(&self, py: Python<'_>) -> PyResult<(bool, Py<PyAny>)> {
        self.0.start(py)
    }
}

/// An awaitable of the result of acquiring `request`. The request is validated now (bad
/// input raises at the call), but joins the queue only when first awaited.
pub fn acquire_async<Q: WaitQueue, O: AsyncOutcome<Q::Grant>>(
    py: Python<'_>,
    gate: &Arc<Q>,
    request: Q::Request,
    timeout: Option<f64>,
    outcome: O,
) -> PyResult<Py<PyAny>> {
    let acquisition = unstarted(py, gate, request, outcome)?;
    Ok(waiting_module(py)?
        .call_method1("acquire", (acquisition, timeout))?
        .unbind())
}

/// [`acquire_async`] that, if the store cannot be reached, awaits what `fallback(error)`
/// returns instead.
pub fn acquire_async_or<Q: WaitQueue, O: AsyncOutcome<Q::Grant>>(
    py: Python<'_>,
    gate: &Arc<Q>,
    request: Q::Request,
    timeout: Option<f64>,
    outcome: O,
    fallback: Py<PyAny>,
) -> PyResult<Py<PyAny>> {
    let acquisition = unstarted(py, gate, request, outcome)?;
    Ok(waiting_module(py)?
        .call_method1("acquire_or_fall_back", (acquisition, timeout, fallback))?
        .unbind())
}

fn unstarted<Q: WaitQueue, O: AsyncOutcome<Q::Grant>>(
    py: Python<'_>,
    gate: &Arc<Q>,
    request: Q::Request,
    outcome: O,
) -> PyResult<Py<Acquisition>> {
    gate.validate(&request)?;
    let unstarted = Unstarted {
        gate: Arc::clone(gate),
        request,
        outcome: TakeOnce::new(outcome),
    };
    Py::new(py, Acquisition(Box::new(unstarted)))
}
