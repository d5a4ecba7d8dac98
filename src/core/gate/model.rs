//! A model check of the gate's state machine (issue 9), as tokio checks its semaphore with
//! loom, run by [shuttle](https://docs.rs/shuttle): shuttle's schedulers pick interleavings of
//! two or three threads whose waiters acquire, poll as an event loop does (`poll`) or as a
//! parked thread does (`poll_handed`, then `take` once it holds the interpreter lock again),
//! sleep until the instant the gate gives them, time out, are cancelled, stall (a blocked event
//! loop), have their event loop closed under them (a notifier that answers `Gone`, or a
//! wake-up dropped unrun), take their grants and release them. After every gate call, and at
//! the end of every schedule, it checks:
//! - no grant lost or duplicated: every grant is held by one waiter, kept by the gate for one
//!   ticket, or back in the budget (the budget's ledger, read under the gate's lock); at the
//!   end every grant made was taken or given back, exactly once;
//! - in-flight counts consistent, within `max_concurrent` and `rpm`;
//! - FIFO: nobody is granted while a waiter queued ahead of it is still waiting ungranted;
//! - every ticket ends exactly once (taken, timed out or cancelled), as the counters say;
//! - no deadlock: shuttle fails a schedule in which every thread is blocked, so a waiter that
//!   sleeps until notified is notified, and a stalled event loop holds nobody else up.
//!
//! Built only by `RUSTFLAGS="--cfg shuttle" cargo test --lib model_check` (scripts/test.sh):
//! the gate's lock is then shuttle's (see `fork.rs`), so shuttle decides every hand-off.
//! `SHUTTLE_RANDOM_SEED` replaces the fixed seeds; a failing schedule is printed for replay.
//! (One file past the usual size: the model's waiters, ledger and checks only make sense
//! together.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use shuttle::rand::{thread_rng, Rng};
use shuttle::scheduler::{PctScheduler, RandomScheduler};
use shuttle::sync::{Condvar, Mutex};
use shuttle::{thread, Config, MaxSteps, Runner};

use super::*;
use crate::core::limiter::{LimiterBudget, LimiterConfig, LimiterGrant, LimiterRequest};
use crate::core::notify::Notify;
use crate::core::semaphore::SemaphoreCount;

/// A budget the model drives: the same request every time, so FIFO is plain queue order.
trait Budget: Resource + Sized {
    fn request() -> Self::Request;
    /// What its owner does with a grant it is done with.
    fn release(gate: &Gate<Logged<Self>>, grant: Self::Grant);
    /// Panics unless `held` grants out with waiters and `handed` kept by the gate fit.
    fn check(&mut self, held: u64, handed: u64, now: Nanos);
    /// Panics unless everything came back.
    fn check_idle(&mut self, now: Nanos);
}

impl Budget for SemaphoreCount {
    fn request() {}

    fn release(gate: &Gate<Logged<Self>>, (): ()) {
        let released = gate.with_resource(|r, _| r.inner.release(1));
        assert_eq!(
            released,
            Ok(()),
            "released above the bound: a grant was duplicated"
        );
    }

    fn check(&mut self, held: u64, handed: u64, _now: Nanos) {
        let (value, bound) = (self.value(), self.bound().unwrap_or(0));
        assert!(
            value + held + handed <= bound,
            "value {value} + held {held} + handed {handed} > {bound}: a grant was duplicated"
        );
    }

    fn check_idle(&mut self, _now: Nanos) {
        assert_eq!(Some(self.value()), self.bound(), "a permit was lost");
    }
}

impl Budget for LimiterBudget {
    fn request() -> LimiterRequest {
        LimiterRequest::default()
    }

    fn release(gate: &Gate<Logged<Self>>, grant: LimiterGrant) {
        gate.with_resource(|r, _| r.inner.release(&grant));
    }

    fn check(&mut self, held: u64, handed: u64, now: Nanos) {
        let config = *self.config();
        let figures = self.figures(now);
        let in_flight = figures.in_flight;
        assert!(
            in_flight >= held + handed,
            "in flight {in_flight} < held {held} + handed {handed}: a grant was lost"
        );
        let max = config.max_concurrent.unwrap_or(u64::MAX);
        assert!(
            in_flight <= max,
            "{in_flight} in flight, max_concurrent {max}"
        );
        if let (Some(rpm), Some(used)) = (config.rpm, figures.requests_in_window) {
            assert!(used <= rpm, "{used} requests in the window, rpm {rpm}");
        }
    }

    fn check_idle(&mut self, now: Nanos) {
        assert_eq!(
            self.figures(now).in_flight,
            0,
            "a grant was never given back"
        );
    }
}

/// A resource that notes, under the gate's lock, which request each grant went to and how
/// many grants came back unused.
struct Logged<R> {
    inner: R,
    grants: Vec<u64>,
    returned: u64,
}

impl<R: Resource> Resource for Logged<R> {
    type Request = (u64, R::Request);
    type Grant = R::Grant;

    fn validate(&self, request: &Self::Request) -> Result<(), InvalidArgument> {
        self.inner.validate(&request.1)
    }

    fn try_take(&mut self, request: &Self::Request, now: Nanos) -> Check<R::Grant> {
        let check = self.inner.try_take(&request.1, now);
        if matches!(check, Check::Granted(_)) {
            self.grants.push(request.0);
        }
        check
    }

    fn give_back(&mut self, grant: R::Grant, now: Nanos) {
        self.returned += 1;
        self.inner.give_back(grant, now);
    }

    fn pick_up(&mut self, grant: R::Grant, granted: Nanos, now: Nanos) -> Option<R::Grant> {
        let kept = self.inner.pick_up(grant, granted, now);
        self.returned += u64::from(kept.is_none());
        kept
    }

    fn after_fork_in_child(&mut self, intact: bool) {
        self.inner.after_fork_in_child(intact);
    }
}

/// A waiter's wake-up: a flag and a condition variable, shuttle's (so a wait that nobody ends
/// is a deadlock shuttle reports). A closed event loop answers `Gone`.
struct Waker {
    state: Mutex<WakerState>,
    woken: Condvar,
    context: Context,
}

#[derive(Default)]
struct WakerState {
    pending: bool,
    closed: bool,
}

impl Waker {
    fn new(context: Context) -> Arc<Self> {
        Arc::new(Waker {
            state: Mutex::new(WakerState::default()),
            woken: Condvar::new(),
            context,
        })
    }

    fn wait(&self) {
        let mut state = self.state.lock().unwrap();
        while !state.pending {
            state = self.woken.wait(state).unwrap();
        }
        state.pending = false;
    }

    /// The event loop closes: later wake-ups are `Gone`; says whether one was waiting unrun
    /// (which `loop.close()` drops, abandoning the ticket).
    fn close(&self) -> bool {
        let mut state = self.state.lock().unwrap();
        state.closed = true;
        state.pending
    }
}

impl Notify for Waker {
    fn notify(&self) -> Delivery {
        let mut state = self.state.lock().unwrap();
        if state.closed {
            return Delivery::Gone;
        }
        state.pending = true;
        self.woken.notify_all();
        Delivery::Sent
    }

    fn context(&self) -> Context {
        self.context
    }
}

/// How a queued waiter's wait ends; `k` counts its polls so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Wait,
    Cancel(u32),
    Timeout(u32),
    /// Its event loop closes after its `k`-th poll (`k >= 1`: a task polls in the step that
    /// queues it).
    Close(u32),
    /// Its event loop blocks for `n` scheduling steps after its `k`-th poll.
    Stall(u32, u32),
    /// Its event loop blocks after its `k`-th poll until every other thread is done.
    StallForOthers(u32),
}

/// How a waiter polls: as a parked thread or as a task of an event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Thread,
    Task,
}

enum End {
    Taken,
    /// Gave up (timeout or cancel) when the grant log was at least this long.
    GaveUp(usize),
    /// Its event loop closed.
    Stranded,
}

struct Record {
    id: u64,
    ticket: u64,
    end: End,
}

/// What every thread of one schedule shares.
struct World<B: Budget> {
    gate: Gate<Logged<B>>,
    clock: Clock,
    held: AtomicU64,
    taken: AtomicU64,
    next_id: AtomicU64,
    polls: AtomicU64,
    records: Mutex<Vec<Record>>,
    /// Whether a task stranded with a grant on a closed loop is eventually collected, its
    /// ticket abandoned. (A task whose wake-up ran in the loop's last iteration but which never
    /// stepped again keeps its grant until then: the model checks with and without it.)
    collector: bool,
    /// Threads not yet done (the stalled one waits for the others).
    running: Mutex<usize>,
    done: Condvar,
}

impl<B: Budget> World<B> {
    fn new(budget: B, clock: Clock, threads: usize, collector: bool) -> Self {
        let logged = Logged {
            inner: budget,
            grants: Vec::new(),
            returned: 0,
        };
        World {
            gate: Gate::new(logged, clock.clone()),
            clock,
            held: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            records: Mutex::new(Vec::new()),
            collector,
            running: Mutex::new(threads),
            done: Condvar::new(),
        }
    }

    /// Checks the ledger under the gate's lock.
    fn check(&self) {
        let now = self.clock.now();
        let mut st = self.gate.state.lock();
        let handed = st.handed.len() as u64;
        let held = self.held.load(SeqCst);
        st.resource.inner.check(held, handed, now);
    }

    fn grants_so_far(&self) -> usize {
        self.gate.state.lock().resource.grants.len()
    }

    /// Holds a grant for a moment, then releases it.
    fn hold(&self, grant: B::Grant) {
        self.taken.fetch_add(1, SeqCst);
        self.held.fetch_add(1, SeqCst);
        self.check();
        thread::yield_now();
        self.held.fetch_sub(1, SeqCst);
        B::release(&self.gate, grant);
        self.check();
    }

    fn sleep_until(&self, at: Nanos) {
        let now = self.clock.now().as_u64();
        if at.as_u64() > now {
            self.clock.advance(Duration::from_nanos(at.as_u64() - now));
        }
    }

    fn thread_done(&self) {
        *self.running.lock().unwrap() -= 1;
        self.done.notify_all();
    }

    fn wait_for_others(&self) {
        let mut running = self.running.lock().unwrap();
        while *running > 1 {
            running = self.done.wait(running).unwrap();
        }
    }
}

/// One poll in `style`; a thread's `take` may find its grant came too late and requeued.
fn poll_once<B: Budget>(
    world: &World<B>,
    ticket: Ticket,
    style: Style,
    notifier: &Notifier,
) -> Polled<B::Grant> {
    world.polls.fetch_add(1, SeqCst);
    let polled = match style {
        Style::Task => world.gate.poll(ticket, notifier),
        Style::Thread => loop {
            match world.gate.poll_handed(ticket, notifier) {
                Polled::Ready(()) => {
                    thread::yield_now(); // waiting for the interpreter lock
                    match world.gate.take(ticket) {
                        // Taken too late and queued again: poll again at once, as
                        // `block_on` does.
                        Polled::Pending(_) => world.check(),
                        taken => break taken,
                    }
                }
                Polled::Pending(at) => break Polled::Pending(at),
                Polled::Unknown => break Polled::Unknown,
            }
        },
    };
    world.check();
    polled
}

/// Waits on a queued ticket until its fate; returns the grant if it got one.
fn wait<B: Budget>(
    world: &World<B>,
    id: u64,
    ticket: Ticket,
    style: Style,
    mut fate: Fate,
    context: Context,
) -> Option<B::Grant> {
    let waker = Waker::new(context);
    let notifier: Notifier = waker.clone();
    let mut polls = 0;
    // Woken (its wake-up ran) and not polled since.
    let mut woken = false;
    let record = |end| {
        let ticket = ticket.0;
        world
            .records
            .lock()
            .unwrap()
            .push(Record { id, ticket, end });
    };
    loop {
        match fate {
            Fate::Cancel(k) | Fate::Timeout(k) if k == polls => {
                let why = match fate {
                    Fate::Timeout(_) => Abandon::Timeout,
                    _ => Abandon::Cancelled,
                };
                record(End::GaveUp(world.grants_so_far()));
                world.gate.abandon(ticket, why);
                world.check();
                return None;
            }
            Fate::Close(k) if k == polls => {
                record(End::Stranded);
                if waker.close() || woken {
                    // The unrun wake-up, or the guard a run one scheduled after the task's
                    // step (src/py/wait.rs, `WakeGuard`): `loop.close()` drops it, and the
                    // ticket is abandoned at once.
                    world.gate.abandon(ticket, Abandon::Gone);
                } else if world.collector {
                    (0..3).for_each(|_| thread::yield_now());
                }
                world.check();
                return None;
            }
            Fate::Stall(k, steps) if k == polls => {
                (0..steps).for_each(|_| thread::yield_now());
                fate = Fate::Wait;
            }
            Fate::StallForOthers(k) if k == polls => {
                world.wait_for_others();
                fate = Fate::Wait;
            }
            _ => {}
        }
        let polled = poll_once(world, ticket, style, &notifier);
        woken = false;
        match polled {
            Polled::Ready(grant) => {
                record(End::Taken);
                let again = world.gate.poll(ticket, &notifier);
                assert!(
                    matches!(again, Polled::Unknown),
                    "a ticket was granted twice"
                );
                return Some(grant);
            }
            Polled::Pending(at) => {
                polls += 1;
                match at {
                    // A wake-up meanwhile stays pending: a spurious wake-up later at worst.
                    Some(at) => world.sleep_until(at),
                    None => {
                        waker.wait();
                        woken = true;
                    }
                }
            }
            Polled::Unknown => panic!("the gate lost ticket {ticket:?} of a live waiter"),
        }
    }
}

/// What one thread does: `ops` acquisitions, each with a random style, context and fate
/// (from `fates`, which a thread with `first` takes its first fate from).
fn waiter<B: Budget>(world: &World<B>, ops: usize, fates: &[Fate], mut first: Option<Fate>) {
    let mut rng = thread_rng();
    for _ in 0..ops {
        let id = world.next_id.fetch_add(1, SeqCst);
        let request = (id, B::request());
        if first.is_none() && rng.gen_bool(0.2) {
            if let Some(grant) = world.gate.try_acquire(request).unwrap() {
                world.hold(grant);
            }
            continue;
        }
        let fate = first
            .take()
            .unwrap_or_else(|| fates[rng.gen_range(0..fates.len())]);
        // A closing or stalling waiter is a task of an event loop; the others anywhere.
        let loop_only = !matches!(fate, Fate::Wait | Fate::Cancel(_) | Fate::Timeout(_));
        let style = if loop_only || rng.gen_bool(0.5) {
            Style::Task
        } else {
            Style::Thread
        };
        let context = match (style, fate) {
            (Style::Thread, _) => Context::Thread,
            // A loop of its own: tasks sharing it would be blocked or closed with it, which
            // one model thread per task cannot mimic.
            (_, Fate::Close(_) | Fate::Stall(..) | Fate::StallForOthers(_)) => {
                Context::EventLoop(100 + id)
            }
            _ => Context::EventLoop(rng.gen_range(1..=2)),
        };
        match world.gate.acquire(request).unwrap() {
            Acquired::Now(grant) => world.hold(grant),
            Acquired::Queued(ticket) => {
                if let Some(grant) = wait(world, id, ticket, style, fate, context) {
                    world.hold(grant);
                }
            }
        }
        world.check();
    }
    world.thread_done();
}

/// After every thread: serves what is left (waiters of closed loops still queued where no
/// budget freed up for them since), then checks that everything came back, every grant and
/// ticket is accounted for, and FIFO held.
fn check_end<B: Budget>(world: &World<B>, window: Duration, stats: &Stats) {
    world.clock.advance(window * 10);
    if let Some(grant) = world.gate.try_acquire((u64::MAX, B::request())).unwrap() {
        world.hold(grant);
    }
    let now = world.clock.now();
    let records = std::mem::take(&mut *world.records.lock().unwrap());
    let mut st = world.gate.state.lock();
    assert!(
        st.queue.is_empty() && st.handed.is_empty(),
        "a ticket was left behind"
    );
    st.resource.inner.check_idle(now);
    let taken = world.taken.load(SeqCst);
    let (grants, returned) = (st.resource.grants.len() as u64, st.resource.returned);
    assert_eq!(grants, taken + returned, "grants made = taken + given back");
    let c = st.counters;
    assert_eq!(c.acquired, taken);
    let queued = records.len() as u64;
    let taken_queued = records
        .iter()
        .filter(|r| matches!(r.end, End::Taken))
        .count() as u64;
    assert_eq!(
        c.timeouts + c.cancelled + taken_queued,
        queued,
        "tickets end once"
    );
    check_fifo(&st.resource.grants, &records);
    let stranded = records.iter().filter(|r| matches!(r.end, End::Stranded));
    let acquisitions = world.next_id.load(SeqCst);
    for (total, n) in [
        (&stats.schedules, 1),
        (&stats.acquisitions, acquisitions),
        (&stats.polls, world.polls.load(SeqCst)),
        (&stats.grants, grants),
        (&stats.returned, returned),
        (&stats.tickets, queued),
        (&stats.timeouts, c.timeouts),
        (&stats.cancelled, c.cancelled),
        (&stats.stranded, stranded.count() as u64),
    ] {
        total.fetch_add(n, SeqCst);
    }
}

/// Nobody is granted while a waiter queued ahead of it is still waiting with no grant yet.
fn check_fifo(grants: &[u64], records: &[Record]) {
    let mut first = HashMap::new();
    for (pos, id) in grants.iter().enumerate() {
        first.entry(*id).or_insert(pos);
    }
    for a in records {
        let left_at = match a.end {
            End::Taken => usize::MAX,
            End::GaveUp(len) => len,
            End::Stranded => continue, // abandoned by the gate, at an instant not recorded
        };
        let a_granted = first.get(&a.id).copied().unwrap_or(usize::MAX);
        for b in records.iter().filter(|b| b.ticket > a.ticket) {
            if let Some(&b_granted) = first.get(&b.id) {
                assert!(
                    a_granted < b_granted || b_granted >= left_at,
                    "ticket {} granted before ticket {} queued ahead of it",
                    b.ticket,
                    a.ticket
                );
            }
        }
    }
}

/// Totals over the schedules of one check, for its summary.
#[derive(Default)]
struct Stats {
    schedules: AtomicU64,
    acquisitions: AtomicU64,
    polls: AtomicU64,
    grants: AtomicU64,
    returned: AtomicU64,
    tickets: AtomicU64,
    timeouts: AtomicU64,
    cancelled: AtomicU64,
    stranded: AtomicU64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = |a: &AtomicU64| a.load(SeqCst);
        write!(
            f,
            "{} schedules: {} acquisitions, {} polls, {} grants ({} given back unused), \
             {} queued ({} timed out, {} cancelled, {} on a closed loop)",
            n(&self.schedules),
            n(&self.acquisitions),
            n(&self.polls),
            n(&self.grants),
            n(&self.returned),
            n(&self.tickets),
            n(&self.timeouts),
            n(&self.cancelled),
            n(&self.stranded),
        )
    }
}

/// What a model check runs: `threads` threads of `ops` acquisitions each, over the budget
/// `make` builds, with fates drawn from `fates`; the first thread's first waiter has fate
/// `first` if given.
struct Setup<B> {
    make: fn() -> B,
    window: Duration,
    threads: usize,
    ops: usize,
    fates: &'static [Fate],
    first: Option<Fate>,
    collector: bool,
}

// Not derived: that would ask `B: Copy`.
impl<B> Clone for Setup<B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B> Copy for Setup<B> {}

/// One schedule of `setup`.
fn schedule<B: Budget>(setup: Setup<B>, stats: &Stats) {
    let world = World::new(
        (setup.make)(),
        Clock::manual(),
        setup.threads,
        setup.collector,
    );
    let world = Arc::new(world);
    let handles: Vec<_> = (0..setup.threads)
        .map(|i| {
            let world = Arc::clone(&world);
            let first = setup.first.filter(|_| i == 0);
            thread::spawn(move || waiter(&world, setup.ops, setup.fates, first))
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    check_end(&world, setup.window, stats);
}

/// Runs `setup` under a random scheduler and a PCT scheduler (depth 3), `iterations` each,
/// from fixed seeds, and prints what they explored.
fn explore<B: Budget>(name: &str, iterations: usize, setup: Setup<B>) {
    let stats = Arc::new(Stats::default());
    let config = || {
        let mut config = Config::new();
        // Time here jumps to the instant a waiter sleeps until, so an unfair schedule can keep
        // two threads handing each other grants that each takes a whole window too late
        // (given back and requeued, again and again). Only a scheduler that starves a thread
        // forever does that: such schedules are cut short and counted, not failed.
        config.max_steps = MaxSteps::ContinueAfter(STEP_BOUND);
        config
    };
    let random = RandomScheduler::new_from_seed(0x5eed, iterations);
    let shared = Arc::clone(&stats);
    let mut runs = Runner::new(random, config()).run(move || schedule(setup, &shared));
    let pct = PctScheduler::new_from_seed(0x9c7, 3, iterations);
    let shared = Arc::clone(&stats);
    runs += Runner::new(pct, config()).run(move || schedule(setup, &shared));
    let cut = runs as u64 - stats.schedules.load(SeqCst);
    println!("model_check {name}: {stats}; {cut} cut at {STEP_BOUND} steps");
    assert!(
        cut * 100 <= runs as u64,
        "over 1% of the schedules never ended"
    );
}

/// Steps after which a schedule is cut short; a normal one takes a few hundred.
const STEP_BOUND: usize = 20_000;

const FATES: &[Fate] = &[
    Fate::Wait,
    Fate::Wait,
    Fate::Cancel(0),
    Fate::Cancel(1),
    Fate::Timeout(1),
    Fate::Timeout(2),
    Fate::Close(1),
    Fate::Close(2),
    Fate::Stall(1, 3),
];

fn bounded_semaphore() -> SemaphoreCount {
    SemaphoreCount::new(thread_rng().gen_range(1..=2), true)
}

fn limiter_concurrency_only() -> LimiterBudget {
    let config = LimiterConfig::new(Some(2), None, None, 1.0, None, None);
    LimiterBudget::new(config.unwrap())
}

fn limiter_with_max_concurrent() -> LimiterBudget {
    limiter(Some(2))
}

fn limiter_without_max_concurrent() -> LimiterBudget {
    limiter(None)
}

fn limiter(max_concurrent: Option<u64>) -> LimiterBudget {
    // rpm=2 per second plus 0.1 s margin, one at a time by the pacer: every grant but the
    // first two of a window waits for time, and a late pick-up is re-dated or given back.
    let config = LimiterConfig::new(max_concurrent, Some(2), None, 1.0, Some(1), Some(0.1));
    LimiterBudget::new(config.unwrap())
}

const SEMAPHORE: Setup<SemaphoreCount> = Setup {
    make: bounded_semaphore,
    window: Duration::ZERO,
    threads: 3,
    ops: 2,
    fates: FATES,
    first: None,
    collector: true,
};

const LIMITER: Setup<LimiterBudget> = Setup {
    make: limiter_with_max_concurrent,
    window: Duration::from_secs(1),
    threads: 3,
    ops: 2,
    fates: FATES,
    first: None,
    collector: true,
};

// Bugs this check found in the engine, now fixed (issue 9; reproducers in
// tests/test_liveness.py): `Gate::locked` read the clock before taking the lock, so a caller
// that waited for it decided with a stale `now` and `pick_up` re-dated a late grant to before
// a decision that no longer counted it (rpm exceeded: `model_check_limiter`); a task whose
// grant came too late was queued again with no timer (`..._stalled_loop_holds_nobody_up`); a
// task woken in its loop's last iteration kept its grant after `loop.close()`
// (`..._woken_task_of_a_closed_loop_...`).

#[test]
fn model_check_semaphore() {
    explore("semaphore, 3 threads x 2", 3000, SEMAPHORE);
}

#[test]
fn model_check_limiter_max_concurrent() {
    let setup = Setup {
        make: limiter_concurrency_only,
        ..LIMITER
    };
    explore("limiter max_concurrent=2, 3 threads x 2", 3000, setup);
}

#[test]
fn model_check_limiter() {
    explore(
        "limiter max_concurrent=2 rpm=2, 3 threads x 2",
        3000,
        LIMITER,
    );
}

#[test]
fn model_check_a_stalled_loop_holds_nobody_up() {
    // The first waiter's event loop blocks until everyone else is done: they must all be
    // served meanwhile, by their own timers (issue 9). Without max_concurrent: a grant handed
    // to a blocked loop rightly keeps its concurrency slot until the loop runs again.
    const OTHERS: &[Fate] = &[Fate::Wait, Fate::Wait, Fate::Timeout(1), Fate::Close(1)];
    let setup = Setup {
        make: limiter_without_max_concurrent,
        fates: OTHERS,
        first: Some(Fate::StallForOthers(1)),
        ..LIMITER
    };
    explore("a stalled event loop, rpm=2, 3 threads x 2", 2000, setup);
}

#[test]
fn model_check_a_woken_task_of_a_closed_loop_gives_its_grant_back_at_once() {
    let setup = Setup {
        collector: false,
        ..SEMAPHORE
    };
    explore("semaphore, closed loops never collected", 3000, setup);
}
