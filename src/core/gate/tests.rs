use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::time::Duration;

use super::*;
use crate::core::semaphore::SemaphoreCount;
use crate::core::token_bucket::{BucketConfig, TokenBucketBudget};

#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting_waker() -> (Arc<CountingWaker>, Waker) {
    let counter = Arc::new(CountingWaker::default());
    (counter.clone(), Waker::from(counter))
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
    let woken: usize = counters.iter().map(|c| c.0.load(Ordering::SeqCst)).sum();
    assert_eq!(woken, 1, "no thundering herd");
    assert_eq!(counters[0].0.load(Ordering::SeqCst), 1);
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
        gate.inspect(|sem, counters, waiting, _| (sem.value(), counters.cancelled, waiting)),
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
    assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    assert_eq!(gate.poll(next, &waker), Polled::Ready(()));
    assert_eq!(gate.inspect(|_, c, _, _| c.timeouts), 1);
}

#[test]
fn only_the_head_and_its_backstop_get_a_retry_instant_and_a_large_request_is_not_starved() {
    let (gate, clock) = bucket_gate(10);
    assert!(matches!(gate.acquire(10).unwrap(), Acquired::Now(())));
    let big = queued(gate.acquire(10).unwrap());
    let small = queued(gate.acquire(1).unwrap());
    let (_, waker) = counting_waker();
    assert_eq!(
        gate.poll(big, &waker),
        Polled::Pending(Some(Nanos::new(1_000_000_000)))
    );
    let backstop = Polled::Pending(Some(Nanos::new(1_020_000_000)));
    assert_eq!(gate.poll(small, &waker), backstop);
    let third = queued(gate.acquire(1).unwrap());
    assert_eq!(
        gate.poll(third, &waker),
        Polled::Pending(None),
        "no timer for the rest"
    );
    // Half-way, one token would fit, but the small request waits behind the big one.
    clock.advance(Duration::from_millis(500));
    assert_eq!(gate.poll(small, &waker), backstop);
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
    let counters = gate.inspect(|_, c, _, _| *c);
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
    unsafe { AfterFork::reset_in_child(&gate) };
    let (_, waker) = counting_waker();
    assert_eq!(gate.poll(ticket, &waker), Polled::Unknown);
    assert_eq!(gate.inspect(|_, _, waiting, _| waiting), 0);
}

#[test]
fn a_child_recovers_a_lock_held_by_a_vanished_thread() {
    let gate = semaphore(1);
    // Simulate a parent thread that held the lock at the instant of the fork.
    std::mem::forget(gate.state.lock());
    // SAFETY: as above.
    unsafe { AfterFork::reset_in_child(&gate) };
    assert_eq!(gate.try_acquire(()).unwrap(), Some(()));
}

#[test]
fn a_head_that_never_polls_does_not_hold_up_the_next_waiter() {
    // The head's event loop is busy when its instant comes: the next waiter's backstop
    // serves the queue (the head's grant waits for it, handed).
    let (gate, clock) = bucket_gate(1);
    assert!(matches!(gate.acquire(1).unwrap(), Acquired::Now(())));
    let stuck = queued(gate.acquire(1).unwrap());
    let next = queued(gate.acquire(1).unwrap());
    let (_, waker) = counting_waker();
    assert_eq!(
        gate.poll(stuck, &waker),
        Polled::Pending(Some(Nanos::new(100_000_000)))
    );
    let Polled::Pending(Some(backstop)) = gate.poll(next, &waker) else {
        panic!("no backstop")
    };
    clock.advance(Duration::from_nanos(backstop.as_u64()));
    // The stuck head was served at the backstop (120 ms); governor paces from there.
    assert_eq!(
        gate.poll(next, &waker),
        Polled::Pending(Some(Nanos::new(220_000_000)))
    );
    clock.advance(Duration::from_millis(100));
    assert_eq!(gate.poll(next, &waker), Polled::Ready(()));
    assert_eq!(
        gate.poll(stuck, &waker),
        Polled::Ready(()),
        "the head's grant was kept for it"
    );
}

#[test]
fn serving_the_head_wakes_the_new_second_to_arm_its_backstop() {
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
    let woken: Vec<_> = counters
        .iter()
        .map(|c| c.0.load(Ordering::SeqCst))
        .collect();
    // The served waiter's old waker; not the new head, whose backstop (120 ms) comes before
    // its instant (200 ms); the new second, to arm its backstop. Nobody else.
    assert_eq!(woken, vec![1, 0, 1]);
}
