//! The pure-Rust core: it decides, the edges wait. Nothing here knows about Python.
//!
//! The modules are private; what the edges (`crate::py`, `crate::store`) use is re-exported
//! below, grouped by what it is for. `fork` stays a module: its functions are process hooks,
//! called by their qualified names.

mod adaptive;
mod backoff;
mod clock;
mod error;
pub mod fork;
mod gate;
mod limiter;
mod notify;
mod pacer;
mod published;
mod queue;
mod retry_budget;
mod semaphore;
mod sliding_window;
mod token_bucket;
mod wait_times;

// Time and argument checks.
pub use clock::{nanos_of, nanos_of_secs, Clock, Nanos};
pub use error::{check_seconds, check_span, InvalidArgument, QueueError, MAX_SPAN_SECS};

// The waiting engine: the in-memory store (a FIFO gate in front of a resource), the seam every
// store answers the edge through, and how a waiter is woken.
pub use gate::pressure::PressureEvent;
pub use gate::{
    Abandon, Acquired, Check, Gate, GateCounters, Polled, PressureHook, Resource, Ticket,
    WaitFigures,
};
pub use notify::{Context, Delivery, Notifier, Notify};
pub use queue::WaitQueue;
pub use wait_times::{WaitTimes, CUMULATIVE_BOUNDS};

// The resources.
pub use limiter::{
    validate_request, LimiterBudget, LimiterConfig, LimiterFigures, LimiterGrant, LimiterRequest,
    MAX_COUNT,
};
pub use semaphore::{OverRelease, SemaphoreCount};
pub use sliding_window::MAX_AMOUNT;
pub use token_bucket::{BucketConfig, TokenBucketBudget};

// Learning from the provider.
pub use adaptive::{Adaptive, Change, Counted, Limits, Observation, Reason, Reported, FULL};

// The retry layer.
pub use backoff::{Decision, Jitter, Schedule};
pub use published::Published;
pub use retry_budget::RetryBudget;
