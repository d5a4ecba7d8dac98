//! The process's tokio runtime, for the Redis store's I/O: started on first use (an in-memory
//! limiter never starts it), one worker thread, and rebuilt in a forked child — whose copy of
//! the parent's runtime has no threads behind it.

use std::cell::RefCell;
use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Waker};

use tokio::runtime::{Builder, Handle, Runtime};

struct Slot {
    pid: u32,
    runtime: Runtime,
}

static RUNTIME: Mutex<Option<Slot>> = Mutex::new(None);

thread_local! {
    /// Held by the forking thread across `fork()`, so the child never inherits it half-held.
    static HELD_FOR_FORK: RefCell<Option<MutexGuard<'static, Option<Slot>>>> =
        const { RefCell::new(None) };
}

fn lock() -> MutexGuard<'static, Option<Slot>> {
    RUNTIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A handle to this process's runtime, started if need be.
///
/// # Errors
/// The runtime could not be started (no thread could be spawned).
pub fn handle() -> Result<Handle, String> {
    let pid = std::process::id();
    let mut slot = lock();
    if let Some(current) = slot.as_ref().filter(|s| s.pid == pid) {
        return Ok(current.runtime.handle().clone());
    }
    if let Some(stale) = slot.take() {
        // A forked child's copy of the parent's runtime: its threads do not exist here, and
        // shutting it down would wait for them forever.
        std::mem::forget(stale);
    }
    let runtime = Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("crewthrottle-io")
        .enable_all()
        .build()
        .map_err(|err| format!("could not start crewthrottle's I/O thread: {err}"))?;
    let handle = runtime.handle().clone();
    *slot = Some(Slot { pid, runtime });
    Ok(handle)
}

/// Runs `future` to completion on the runtime, from a thread that is not one of its own.
///
/// # Errors
/// The runtime could not be started.
pub fn block_on<F: Future>(future: F) -> Result<F::Output, String> {
    Ok(handle()?.block_on(future))
}

/// Starts `future` on the calling thread — far enough to send its first request — then lets
/// the runtime finish it in the background. A command "fired and forgotten" this way still
/// reaches the server before any command this thread sends after it (a release before the
/// next acquire), without waiting for its reply.
pub fn submit<F>(future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let Ok(handle) = handle() else { return };
    let _context = handle.enter();
    let mut future = Box::pin(future);
    let mut cx = Context::from_waker(Waker::noop());
    if future.as_mut().poll(&mut cx).is_pending() {
        // Spawned, it is polled again at once with a real waker.
        handle.spawn(future);
    }
}

/// Runs `future` on the runtime in the background.
pub fn spawn<F>(future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    if let Ok(handle) = handle() {
        handle.spawn(future);
    }
}

/// Before `fork()`, on the forking thread.
pub fn before_fork() {
    let guard = lock();
    HELD_FOR_FORK.with(|held| *held.borrow_mut() = Some(guard));
}

/// After `fork()`, in the parent and in the child.
pub fn after_fork() {
    HELD_FOR_FORK.with(|held| drop(held.borrow_mut().take()));
}
