use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::core::fork::Survivors;
use crate::core::notify::Notify;
use crate::core::semaphore::SemaphoreCount;
use crate::core::token_bucket::{BucketConfig, TokenBucketBudget};

/// A waiter that counts its wake-ups; `gone` makes it one whose event loop has closed.
struct CountingWaker {
    count: AtomicUsize,
    context: Context,
    gone: AtomicBool,
}

impl CountingWaker {
    fn woken(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Notify for CountingWaker {
    fn notify(&self) -> Delivery {
        self.count.fetch_add(1, Ordering::SeqCst);
        if self.gone.load(Ordering::SeqCst) {
            Delivery::Gone
        } else {
            Delivery::Sent
        }
    }

    fn context(&self) -> Context {
        self.context
    }
}

fn waker_in(context: Context) -> (Arc<CountingWaker>, Notifier) {
    let counter = Arc::new(CountingWaker {
        count: AtomicUsize::new(0),
        context,
        gone: AtomicBool::new(false),
    });
    (counter.clone(), counter)
}

/// A thread's waker.
fn counting_waker() -> (Arc<CountingWaker>, Notifier) {
    waker_in(Context::Thread)
}

fn queued<G: std::fmt::Debug>(acquired: Acquired<G>) -> Ticket {
    match acquired {
        Acquired::Queued(ticket) => ticket,
        Acquired::Now(grant) => panic!("expected to queue, got {grant:?}"),
    }
}

/// A gate over a bucket of 10 tokens a second holding at most `burst`, on a manual clock.
fn bucket_gate(burst: u64) -> (Gate<TokenBucketBudget>, Clock) {
    let clock = Clock::manual();
    let config = BucketConfig::new(10.0, 1.0, Some(burst)).unwrap();
    let bucket = TokenBucketBudget::new(config, clock.clone());
    (Gate::new(bucket, clock.clone()), clock)
}

fn semaphore(value: u64) -> Gate<SemaphoreCount> {
    Gate::new(SemaphoreCount::new(value, false), Clock::manual())
}

#[test]
fn waiters_are_served_first_come_first_served() {
    let gate = semaphore(0);
    let tickets: Vec<_> = (0..3).map(|_| queued(gate.acquire(()).unwrap())).collect();
    let (_, waker) = counting_waker();
    for &t in &tickets {
        assert_eq!(gate.poll(t, &waker), Polled::Pending(None));
    }
    for (i, &t) in tickets.iter().enumerate() {
        gate.with_resource(|sem, _| sem.release(1)).unwrap();
        assert_eq!(
            gate.poll(t, &waker),
            Polled::Ready(()),
            "waiter {i} should be next"
        );
        for &later in &tickets[i + 1..] {
            assert_eq!(gate.poll(later, &waker), Polled::Pending(None));
        }
    }
}

#[test]
fn a_release_wakes_only_the_waiter_it_serves() {
    let gate = semaphore(0);
    let counters: Vec<_> = (0..100)
        .map(|_| {
            let ticket = queued(gate.acquire(()).unwrap());
            let (counter, waker) = counting_waker();
            assert_eq!(gate.poll(ticket, &waker), Polled::Pending(None));
            counter
        })
        .collect();
    gate.with_resource(|sem, _| sem.release(1)).unwrap();
    let woken: usize = counters.iter().map(|c| c.woken()).sum();
    assert_eq!(woken, 1, "no thundering herd");
    assert_eq!(counters[0].woken(), 1);
}

#[test]
fn newcomers_queue_behind_waiters_instead_of_barging() {
    let gate = semaphore(0);
    let first = queued(gate.acquire(()).unwrap());
    gate.with_resource(|sem, _| sem.release(1)).unwrap();
    // The permit was handed to the waiter: a newcomer cannot take it.
    assert_eq!(gate.try_acquire(()).unwrap(), None);
    let (_, waker) = counting_waker();
    assert_eq!(gate.poll(first, &waker), Polled::Ready(()));
}

#[test]
fn abandoning_a_granted_ticket_gives_the_grant_back() {
    let gate = semaphore(0);
    let ticket = queued(gate.acquire(()).unwrap());
    gate.with_resource(|sem, _| sem.release(1)).unwrap();
    gate.abandon(ticket, Abandon::Cancelled);
    assert_eq!(
        gate.inspect(|sem, w, _| (sem.value(), w.counters.cancelled, w.waiting)),
        (1, 1, 0)
    );
    let (_, waker) = counting_waker();
    assert_eq!(gate.poll(ticket, &waker), Polled::Unknown);
}

#[test]
fn abandoning_the_head_serves_the_next_waiter() {
    let gate = semaphore(0);
    let head = queued(gate.acquire(()).unwrap());
    let next = queued(gate.acquire(()).unwrap());
    let (counter, waker) = counting_waker();
    gate.poll(next, &waker);
    gate.with_resource(|sem, _| sem.release(1)).unwrap();
    gate.abandon(head, Abandon::Timeout);
    assert_eq!(counter.woken(), 1);
    assert_eq!(gate.poll(next, &waker), Polled::Ready(()));
    assert_eq!(gate.inspect(|_, w, _| w.counters.timeouts), 1);
}

#[test]
fn only_the_first_thread_gets_a_retry_instant_and_a_large_request_is_not_starved() {
    let (gate, clock) = bucket_gate(10);
    assert!(matches!(gate.acquire(10).unwrap(), Acquired::Now(())));
    let big = queued(gate.acquire(10).unwrap());
    let small = queued(gate.acquire(1).unwrap());
    let (_, waker) = counting_waker();
    let at_one_second = Polled::Pending(Some(Nanos::new(1_000_000_000)));
    assert_eq!(gate.poll(big, &waker), at_one_second);
    assert_eq!(
        gate.poll(small, &waker),
        Polled::Pending(None),
        "a thread behind a thread needs no timer"
    );
    // Half-way, one token would fit, but the small request waits behind the big one.
    clock.advance(Duration::from_millis(500));
    assert_eq!(gate.poll(small, &waker), Polled::Pending(None));
    clock.advance(Duration::from_millis(500));
    assert_eq!(gate.poll(big, &waker), Polled::Ready(()));
    assert_eq!(
        gate.poll(small, &waker),
        Polled::Pending(Some(Nanos::new(1_100_000_000)))
    );
}

#[test]
fn wait_times_are_counted() {
    let clock = Clock::manual();
    let gate = Gate::new(SemaphoreCount::new(0, false), clock.clone());
    let ticket = queued(gate.acquire(()).unwrap());
    clock.advance(Duration::from_millis(250));
    gate.with_resource(|sem, _| sem.release(1)).unwrap();
    let (_, waker) = counting_waker();
    assert_eq!(gate.poll(ticket, &waker), Polled::Ready(()));
    let counters = gate.inspect(|_, w, _| w.counters);
    assert_eq!(
        (
            counters.acquired,
            counters.max_wait_ns,
            counters.total_wait_ns
        ),
        (1, 250_000_000, 250_000_000)
    );
}

#[test]
fn a_reset_child_forgets_queued_waiters() {
    let gate = semaphore(0);
    let ticket = queued(gate.acquire(()).unwrap());
    // SAFETY: single-threaded test standing in for a fresh child.
    unsafe { AfterFork::reset_in_child(&gate, Survivors::default()) };
    let (_, waker) = counting_waker();
    assert_eq!(gate.poll(ticket, &waker), Polled::Unknown);
    assert_eq!(gate.inspect(|_, w, _| w.waiting), 0);
}

#[test]
fn a_child_recovers_a_lock_held_by_a_vanished_thread() {
    let gate = semaphore(1);
    // Simulate a parent thread that held the lock at the instant of the fork.
    std::mem::forget(gate.state.lock());
    // SAFETY: as above.
    unsafe { AfterFork::reset_in_child(&gate, Survivors::default()) };
    assert_eq!(gate.try_acquire(()).unwrap(), Some(()));
}

#[test]
fn a_blocked_event_loop_does_not_hold_up_a_thread_behind_it() {
    // Issue 9: the first two waiters belong to one event loop that is blocked (it never
    // polls); a thread third in line is served when capacity allows, driven by its own timer.
    let (gate, clock) = bucket_gate(1);
    assert!(matches!(gate.acquire(1).unwrap(), Acquired::Now(())));
    let stuck: Vec<_> = (0..2).map(|_| queued(gate.acquire(1).unwrap())).collect();
    let thread = queued(gate.acquire(1).unwrap());
    let (stuck_waker, loop_waker) = waker_in(Context::EventLoop(7));
    for &t in &stuck {
        gate.poll(t, &loop_waker);
    }
    let (_, thread_waker) = counting_waker();
    let mut at = match gate.poll(thread, &thread_waker) {
        Polled::Pending(Some(at)) => at,
        other => panic!("the thread must keep a timer, got {other:?}"),
    };
    assert_eq!(
        at,
        Nanos::new(100_000_000),
        "the head's own instant, no later"
    );
    // Only the thread polls from now on.
    loop {
        clock.advance(Duration::from_nanos(at.as_u64() - clock.now().as_u64()));
        match gate.poll(thread, &thread_waker) {
            Polled::Ready(()) => break,
            Polled::Pending(Some(next)) => at = next,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        clock.now(),
        Nanos::new(300_000_000),
        "one grant per 100 ms, in order"
    );
    // The loop's waiters were granted in turn and woken; their grants wait for them.
    assert_eq!(stuck_waker.woken(), 2, "each woken once, when granted");
    for &t in &stuck {
        assert_eq!(gate.poll(t, &loop_waker), Polled::Ready(()));
    }
}

#[test]
fn every_event_loop_and_the_first_thread_keep_a_timer() {
    let (gate, _clock) = bucket_gate(1);
    assert!(matches!(gate.acquire(1).unwrap(), Acquired::Now(())));
    let contexts = [
        Context::EventLoop(1),
        Context::EventLoop(1),
        Context::EventLoop(2),
        Context::Thread,
        Context::Thread,
        Context::EventLoop(3),
    ];
    let polled: Vec<_> = contexts
        .iter()
        .map(|&context| {
            let ticket = queued(gate.acquire(1).unwrap());
            let (_, waker) = waker_in(context);
            gate.poll(ticket, &waker)
        })
        .collect();
    let at = Some(Nanos::new(100_000_000));
    let expected = [at, None, at, at, None, None].map(Polled::Pending);
    assert_eq!(polled, expected);
}

#[test]
fn a_grant_for_a_waiter_whose_loop_closed_goes_back_at_once() {
    let gate = semaphore(0);
    let closed = queued(gate.acquire(()).unwrap());
    let live = queued(gate.acquire(()).unwrap());
    let (closed_waker, notifier) = waker_in(Context::EventLoop(1));
    closed_waker.gone.store(true, Ordering::SeqCst);
    gate.poll(closed, &notifier);
    let (live_waker, notifier) = counting_waker();
    assert_eq!(gate.poll(live, &notifier), Polled::Pending(None));
    gate.with_resource(|sem, _| sem.release(1)).unwrap();
    assert_eq!(live_waker.woken(), 1, "served in the closed waiter's place");
    assert_eq!(gate.poll(live, &notifier), Polled::Ready(()));
    assert_eq!(gate.poll(closed, &notifier), Polled::Unknown);
    let (value, cancelled) = gate.inspect(|sem, w, _| (sem.value(), w.counters.cancelled));
    assert_eq!((value, cancelled), (0, 1));
}

#[test]
fn any_call_serves_a_queue_whose_waiters_all_stalled() {
    // Nobody queued can run; time frees the head; a newcomer's call serves the queue first.
    let (gate, clock) = bucket_gate(2);
    assert!(matches!(gate.acquire(2).unwrap(), Acquired::Now(())));
    let stalled = queued(gate.acquire(1).unwrap());
    let (_, waker) = waker_in(Context::EventLoop(1));
    gate.poll(stalled, &waker);
    clock.advance(Duration::from_millis(200));
    assert_eq!(
        gate.try_acquire(1).unwrap(),
        Some(()),
        "the head was served, then the newcomer"
    );
    assert_eq!(gate.poll(stalled, &waker), Polled::Ready(()));
}

#[test]
fn serving_the_head_wakes_the_new_first_thread_to_arm_its_timer() {
    let (gate, clock) = bucket_gate(1);
    assert!(matches!(gate.acquire(1).unwrap(), Acquired::Now(())));
    let tickets: Vec<_> = (0..3).map(|_| queued(gate.acquire(1).unwrap())).collect();
    let counters: Vec<_> = tickets
        .iter()
        .map(|&t| {
            let (counter, waker) = counting_waker();
            gate.poll(t, &waker);
            counter
        })
        .collect();
    clock.advance(Duration::from_millis(100));
    let (_, waker) = counting_waker();
    assert_eq!(gate.poll(tickets[0], &waker), Polled::Ready(()));
    let woken: Vec<_> = counters.iter().map(|c| c.woken()).collect();
    // The served waiter's old waker; the new head, to arm its timer. Nobody else.
    assert_eq!(woken, vec![1, 1, 0]);
}

#[test]
fn a_forked_child_keeps_the_waiters_of_the_forking_threads_loop() {
    let gate = semaphore(0);
    let tickets: Vec<_> = (0..4).map(|_| queued(gate.acquire(()).unwrap())).collect();
    let (_, forking_loop) = waker_in(Context::EventLoop(1));
    let (_, other_loop) = waker_in(Context::EventLoop(2));
    let (_, thread) = counting_waker();
    gate.poll(tickets[0], &forking_loop);
    gate.poll(tickets[1], &other_loop);
    gate.poll(tickets[2], &thread);
    gate.poll(tickets[3], &forking_loop);
    gate.with_resource(|sem, _| sem.release(1)).unwrap(); // handed to the first
    gate.with_resource(|sem, _| sem.release(1)).unwrap(); // handed to the second
    let survivors = Survivors {
        event_loop: Some(1),
    };
    // SAFETY: single-threaded test standing in for a fresh child.
    unsafe { AfterFork::reset_in_child(&gate, survivors) };
    assert_eq!(
        gate.inspect(|_, w, _| w.waiting),
        2,
        "the forking loop's two tasks"
    );
    for lost in [tickets[1], tickets[2]] {
        assert_eq!(gate.poll(lost, &thread), Polled::Unknown);
    }
    // The semaphore keeps its count (0: the grants went with the parent); released in the
    // child, it serves the survivors in their order.
    assert_eq!(gate.poll(tickets[0], &forking_loop), Polled::Pending(None));
    gate.with_resource(|sem, _| sem.release(2)).unwrap();
    assert_eq!(gate.poll(tickets[0], &forking_loop), Polled::Ready(()));
    assert_eq!(gate.poll(tickets[3], &forking_loop), Polled::Ready(()));
}

#[test]
fn a_grant_is_counted_from_when_its_thread_comes_for_it() {
    use crate::core::limiter::{LimiterBudget, LimiterConfig, LimiterRequest};
    let clock = Clock::manual();
    let config = LimiterConfig::new(None, Some(1), None, 10.0, None, Some(0.0)).unwrap();
    let gate = Gate::new(LimiterBudget::new(config), clock.clone());
    let request = LimiterRequest::default();
    assert!(matches!(gate.acquire(request).unwrap(), Acquired::Now(_)));
    let ticket = queued(gate.acquire(request).unwrap());
    let (_, waker) = counting_waker();
    clock.advance(Duration::from_secs(10));
    assert_eq!(gate.poll_handed(ticket, &waker), Polled::Ready(()));
    // The thread gets the interpreter lock back 3 s later (an extreme of contention).
    clock.advance(Duration::from_secs(3));
    assert!(matches!(gate.take(ticket), Polled::Ready(_)));
    clock.advance(Duration::from_secs(7));
    let next = queued(gate.acquire(request).unwrap());
    assert_eq!(
        gate.poll(next, &waker),
        Polled::Pending(Some(Nanos::new(23_000_000_000))),
        "the window frees 10 s after the request started (13 s), not after its grant (10 s)"
    );
}
