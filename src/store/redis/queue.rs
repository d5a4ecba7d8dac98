//! A shared budget's waiters in this process: the Redis side of [`WaitQueue`].
//!
//! Each local waiter has a ticket of its own in the budget's global queue (so the order is
//! first come, first served across every process) and a task on the I/O runtime that waits
//! for it: until the script says when the head may be served, or until an announcement says
//! its grant was handed — never polling. The threads and event loops of Python wait on the
//! local slot exactly as they wait on an in-memory gate (`src/py/wait.rs`). A heartbeat renews
//! the leases of this process's holders and waiters and catches what an announcement lost on a
//! broken connection would have said.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::hub::{Hub, Listener};
use super::script::{Announcement, Budget, Epoch, Reply};
use crate::core::fork::{AfterFork, ForkableGuard, ForkableMutex, Survivors};
use crate::core::{
    validate_request, Abandon, Acquired, Adaptive, Change, Clock, Context, Counted, Delivery,
    LimiterConfig, LimiterRequest, Nanos, Notifier, Observation, Polled, QueueError, Ticket,
    WaitQueue, WaitTimes,
};
use crate::store::runtime;

/// How a process reaches a shared budget.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// The server, as a `redis://` URL.
    pub url: String,
    /// How long a grant or a waiter of a process that stopped renewing it survives.
    pub lease: Duration,
    /// The longest a command or a connection attempt may take.
    pub timeout: Duration,
    /// The first part of every key.
    pub prefix: String,
    /// This process's limits replace the stored ones.
    pub replace_limits: bool,
    /// With the server unreachable, grant from an in-process limiter with this share of each
    /// limit (`None`: raise `BackendUnavailable`).
    pub local_share: Option<f64>,
}

/// A grant of a shared budget, held by this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisGrant {
    /// The grant's id in the budget (its fencing token).
    pub id: u64,
    /// Tokens charged for it.
    pub tokens: u64,
    /// The process that holds it (a forked child does not release its parent's).
    pub pid: u32,
    /// When it was granted, on the Redis server's clock (µs since the Unix epoch).
    pub stamp_us: u64,
    /// When the grant reached this process.
    arrived: Option<Instant>,
}

/// How the wait of a queued ticket ended.
enum Waited {
    Granted(RedisGrant),
    Abandoned,
    /// Its place in the queue is gone: queue again.
    Lost,
}

enum State {
    Waiting,
    Ready(RedisGrant),
    Failed(QueueError),
}

struct Slot {
    request: LimiterRequest,
    state: State,
    notifier: Option<Notifier>,
    /// Wakes the task that waits for this slot (an announcement, a cancellation).
    wake: Arc<Notify>,
    cancelled: Option<Abandon>,
    /// The remote ticket, once queued.
    ticket: Option<u64>,
    /// When the script said the head may be served (set by an announcement).
    head_retry: Option<Duration>,
    /// When the waiter started waiting (for this process's wait times).
    since: Nanos,
}

struct Local {
    /// This process's waits (what its callers waited for their grants).
    times: WaitTimes,
    next: u64,
    slots: HashMap<u64, Slot>,
    /// Remote ticket → local slot.
    tickets: HashMap<u64, u64>,
    /// Announced before their ticket was known here (the reply still on its way).
    early: VecDeque<(u64, Option<Duration>)>,
    holders: HashSet<u64>,
    /// Grants held by `with limiter:` blocks (alike: the block's exit releases any one).
    lent: Vec<RedisGrant>,
    epoch: String,
    paused_until: Option<Instant>,
    warned_lost: bool,
    /// What this process learned from the provider (issue 8); the budget's script keeps what
    /// every process learned, and enforces it.
    learning: Adaptive,
}

impl Local {
    fn new(config: &LimiterConfig) -> Self {
        Local {
            times: WaitTimes::default(),
            next: 0,
            slots: HashMap::new(),
            tickets: HashMap::new(),
            early: VecDeque::new(),
            holders: HashSet::new(),
            lent: Vec::new(),
            epoch: String::new(),
            paused_until: None,
            warned_lost: false,
            learning: Adaptive::new(config.limits(), config.adaptive, config.window_ns()),
        }
    }
}

/// This process's side of one shared budget.
pub struct RedisQueue {
    settings: RedisSettings,
    budget: Budget,
    config: LimiterConfig,
    name: String,
    local: ForkableMutex<Local>,
    heartbeat: Arc<Notify>,
    clock: Clock,
    /// The process that subscribed to the budget's channel (0: none yet).
    subscribed: AtomicU32,
    me: Weak<RedisQueue>,
}

const EARLY: usize = 1024;

impl RedisQueue {
    /// This process's side of the budget `name`.
    pub fn new(settings: RedisSettings, name: &str, config: LimiterConfig) -> Arc<Self> {
        let lease_us = u64::try_from(settings.lease.as_micros()).unwrap_or(u64::MAX);
        let budget = Budget::new(
            &settings.prefix,
            name,
            &config,
            lease_us,
            settings.replace_limits,
        );
        Arc::new_cyclic(|me| RedisQueue {
            settings,
            budget,
            config,
            name: name.to_owned(),
            local: ForkableMutex::new(Local::new(&config)),
            heartbeat: Arc::new(Notify::new()),
            clock: Clock::monotonic(),
            subscribed: AtomicU32::new(0),
            me: me.clone(),
        })
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.settings.url
    }

    fn local(&self) -> ForkableGuard<'_, Local> {
        self.local.lock()
    }

    /// Keeps `grant` for a `with limiter:` block.
    pub fn lend(&self, grant: RedisGrant) {
        self.local().lent.push(grant);
    }

    /// Releases one grant kept by [`Self::lend`]; false if there is none.
    pub fn release_lent(&self) -> bool {
        let grant = self.local().lent.pop();
        grant.map(|grant| self.release(grant)).is_some()
    }

    fn unavailable(&self, err: impl std::fmt::Display) -> QueueError {
        QueueError::Unavailable(format!(
            "the shared limit {:?} on Redis at {} is unavailable: {err}",
            self.name, self.settings.url
        ))
    }

    /// Calls the budget script, connecting (and subscribing) first if need be.
    async fn call(&self, op: &str, args: &[String]) -> Result<Reply, QueueError> {
        let hub = self.hub().await?;
        let epoch = self.local().epoch.clone();
        let (reply, epoch) = self
            .budget
            .call(&mut hub.conn(), op, &epoch, args)
            .await
            .map_err(|err| self.unavailable(err))?;
        self.note_epoch(epoch);
        if let Reply::Conflict(stored) = &reply {
            return Err(self.conflict(stored));
        }
        Ok(reply)
    }

    fn conflict(&self, stored: &[String]) -> QueueError {
        let field = |i: usize| stored.get(i).map(String::as_str).unwrap_or("?");
        QueueError::Conflict(format!(
            "the shared limit {:?} on Redis at {} has other limits than this process's: \
             stored max_concurrent={} rpm={} tpm={} window_us={} margin_us={} burst={} \
             adaptive={} (-1: none), here {:?}. The stored limits win: use the same limits \
             everywhere, another name, or RedisBackend(..., replace_limits=True) to replace them",
            self.name,
            self.settings.url,
            field(1),
            field(2),
            field(3),
            field(4),
            field(5),
            field(6),
            field(7) == "1",
            self.config
        ))
    }

    fn note_epoch(&self, epoch: Epoch) {
        let Some(current) = epoch.current else { return };
        let changed = {
            let mut local = self.local();
            let changed = !local.epoch.is_empty() && local.epoch != current;
            local.epoch = current;
            changed || epoch.changed
        };
        if changed {
            // The budget's state was lost and rebuilt: renew (re-adopt) our holders now.
            self.heartbeat.notify_one();
        }
    }

    async fn hub(&self) -> Result<Arc<Hub>, QueueError> {
        let hub = Hub::get(&self.settings.url, self.settings.timeout)
            .await
            .map_err(QueueError::Unavailable)?;
        let pid = std::process::id();
        if self.subscribed.load(Ordering::Acquire) != pid {
            // Once per process (the hub subscribes again by itself after reconnecting).
            let listener: Weak<dyn Listener> = self.me.clone();
            hub.listen(self.budget.channel(), listener)
                .await
                .map_err(|err| self.unavailable(err))?;
            if self.subscribed.swap(pid, Ordering::AcqRel) != pid {
                self.start_heartbeat();
            }
        }
        Ok(hub)
    }

    fn lease_us(&self) -> String {
        self.budget.lease_us().to_string()
    }

    fn granted(&self, id: u64, tokens: u64, stamp_us: u64) -> RedisGrant {
        self.local().holders.insert(id);
        RedisGrant {
            id,
            tokens,
            stamp_us,
            pid: std::process::id(),
            arrived: Some(Instant::now()),
        }
    }

    /// Waits for the remote ticket of slot `id` until it is granted, abandoned or lost. Redis
    /// out of reach meanwhile is waited out (the waiter's own timeout still applies): a
    /// restart must not fail the calls already waiting.
    async fn wait_ticket(
        &self,
        id: u64,
        ticket: u64,
        mut retry: Option<Duration>,
    ) -> Result<Waited, QueueError> {
        let wake = self.register_ticket(id, ticket, &mut retry);
        let mut outage = Duration::ZERO;
        loop {
            match retry {
                Some(delay) => {
                    let _ = tokio::time::timeout(delay, wake.notified()).await;
                }
                None => wake.notified().await,
            }
            if let Some(why) = self.cancelled(id) {
                self.abandon_remote(ticket, why).await;
                return Ok(Waited::Abandoned);
            }
            let args = [ticket.to_string(), self.lease_us()];
            let reply = match self.call("poll", &args).await {
                Ok(reply) => reply,
                Err(QueueError::Unavailable(_)) => {
                    outage = (outage * 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
                    retry = Some(outage);
                    continue;
                }
                Err(err) => return Err(err),
            };
            outage = Duration::ZERO;
            match reply {
                Reply::Granted {
                    id: gid,
                    tokens,
                    stamp_us,
                    ..
                } => return Ok(Waited::Granted(self.granted(gid, tokens, stamp_us))),
                Reply::Waiting { retry_us } => {
                    // The poll's delay is the script's answer now; an announced one is older
                    // by its delivery and this poll's round trip (sleeping it made the head
                    // late). The announced one serves only when the poll named none.
                    let announced = self.take_head_retry(id);
                    retry = retry_us.map(Duration::from_micros).or(announced);
                }
                Reply::Unknown => {
                    self.local().tickets.remove(&ticket);
                    return Ok(Waited::Lost);
                }
                other => return Err(self.unavailable(format!("unexpected reply {other:?}"))),
            }
        }
    }

    fn register_ticket(&self, id: u64, ticket: u64, retry: &mut Option<Duration>) -> Arc<Notify> {
        let mut local = self.local();
        local.tickets.insert(ticket, id);
        let early = local.early.iter().position(|(t, _)| *t == ticket);
        let wake = match local.slots.get_mut(&id) {
            Some(slot) => {
                slot.ticket = Some(ticket);
                Arc::clone(&slot.wake)
            }
            None => Arc::new(Notify::new()),
        };
        if let Some(i) = early {
            if let Some((_, announced)) = local.early.remove(i) {
                *retry = Some(announced.unwrap_or(Duration::ZERO));
            }
        }
        wake
    }

    fn take_head_retry(&self, id: u64) -> Option<Duration> {
        self.local()
            .slots
            .get_mut(&id)
            .and_then(|slot| slot.head_retry.take())
    }

    fn cancelled(&self, id: u64) -> Option<Abandon> {
        let local = self.local();
        match local.slots.get(&id) {
            Some(slot) => slot.cancelled,
            None => Some(Abandon::Cancelled),
        }
    }

    async fn abandon_remote(&self, ticket: u64, why: Abandon) {
        let why = if why == Abandon::Timeout {
            "timeout"
        } else {
            "cancelled"
        };
        let _ = self
            .call("abandon", &[ticket.to_string(), why.to_owned()])
            .await;
        self.local().tickets.remove(&ticket);
    }

    /// The whole wait of slot `id`: one round trip to be granted or queued, then
    /// [`Self::wait_ticket`]; queued again if its place was lost (its lease expired, or the
    /// budget's state with it).
    async fn drive(self: Arc<Self>, id: u64, request: LimiterRequest) {
        let outcome = self.acquire_remote(id, request).await;
        self.settle_slot(id, outcome);
    }

    async fn acquire_remote(
        &self,
        id: u64,
        request: LimiterRequest,
    ) -> Result<Option<RedisGrant>, QueueError> {
        let args = [request.tokens.to_string(), self.lease_us(), "1".to_owned()];
        loop {
            match self.call("acquire", &args).await? {
                Reply::Granted {
                    id: gid,
                    tokens,
                    stamp_us,
                    ..
                } => return Ok(Some(self.granted(gid, tokens, stamp_us))),
                Reply::Queued { ticket, retry_us } => {
                    let retry = retry_us.map(Duration::from_micros);
                    match self.wait_ticket(id, ticket, retry).await? {
                        Waited::Granted(grant) => return Ok(Some(grant)),
                        Waited::Abandoned => return Ok(None),
                        Waited::Lost => continue,
                    }
                }
                other => return Err(self.unavailable(format!("unexpected reply {other:?}"))),
            }
        }
    }

    /// Records the outcome of slot `id` and wakes its waiter; a grant nobody waits for any
    /// more goes back.
    fn settle_slot(&self, id: u64, outcome: Result<Option<RedisGrant>, QueueError>) {
        let notifier = {
            let mut local = self.local();
            if let Some(ticket) = local.slots.get_mut(&id).and_then(|s| s.ticket.take()) {
                local.tickets.remove(&ticket);
            }
            match local.slots.get_mut(&id) {
                Some(slot) if slot.cancelled.is_none() => {
                    slot.state = match outcome {
                        Ok(Some(grant)) => State::Ready(grant),
                        Ok(None) => State::Failed(self.unavailable("the wait was abandoned")),
                        Err(err) => State::Failed(err),
                    };
                    slot.notifier.take()
                }
                _ => {
                    local.slots.remove(&id);
                    drop(local);
                    if let Ok(Some(grant)) = outcome {
                        self.release(grant); // nobody waits for it any more
                    }
                    return;
                }
            }
        };
        if let Some(notifier) = notifier {
            if notifier.notify() == Delivery::Gone {
                self.abandon(Ticket(id), Abandon::Gone);
            }
        }
    }

    fn new_slot(&self, request: LimiterRequest) -> u64 {
        let since = self.clock.now();
        let mut local = self.local();
        local.next += 1;
        let id = local.next;
        local.slots.insert(
            id,
            Slot {
                request,
                state: State::Waiting,
                notifier: None,
                wake: Arc::new(Notify::new()),
                cancelled: None,
                ticket: None,
                head_retry: None,
                since,
            },
        );
        id
    }

    fn spawn_drive(&self, id: u64, request: LimiterRequest) {
        if let Some(me) = self.me.upgrade() {
            runtime::spawn(me.drive(id, request));
        }
    }

    /// Gives a grant's slot back (fire and forget: the caller never waits for Redis). A grant
    /// whose lease expired is refused by the script: it frees nothing twice.
    pub fn release(&self, grant: RedisGrant) {
        if grant.pid != std::process::id() {
            return; // taken by the parent before a fork: the parent releases it
        }
        self.local().holders.remove(&grant.id);
        self.fire("release", vec![grant.id.to_string()]);
    }

    /// Corrects the tokens charged for a grant (fire and forget).
    pub fn settle(&self, grant: &mut RedisGrant, actual: u64) {
        if grant.pid != std::process::id() {
            return;
        }
        let args = vec![
            grant.id.to_string(),
            grant.tokens.to_string(),
            actual.to_string(),
        ];
        grant.tokens = actual;
        self.fire("settle", args);
    }

    fn fire(&self, op: &'static str, args: Vec<String>) {
        let Some(me) = self.me.upgrade() else { return };
        runtime::submit(async move {
            match me.call(op, &args).await {
                Ok(Reply::Done(0)) if op == "release" => me.warn_lost_once(),
                Ok(_) => {}
                Err(err) => log_warning(&format!("crewthrottle: {op} failed: {err}")),
            }
        });
    }

    fn warn_lost_once(&self) {
        let first = !std::mem::replace(&mut self.local().warned_lost, true);
        if first {
            log_warning(&format!(
                "crewthrottle: a permit of the shared limit {:?} was released after its lease \
                 ({:?}) expired; its slot had already been given back (renewals failed?)",
                self.name, self.settings.lease
            ));
        }
    }

    /// Pauses the budget for every process (fire and forget). Returns whether, as far as this
    /// process knows, this starts a pause.
    pub fn pause(&self, seconds: f64) -> bool {
        let until = Instant::now().checked_add(Duration::from_secs_f64(seconds));
        let started = {
            let mut local = self.local();
            let started = local.paused_until.is_none_or(|p| p <= Instant::now());
            if until > local.paused_until {
                local.paused_until = until;
            }
            started && seconds > 0.0
        };
        let micros = (seconds * 1e6).round().min(9e15) as u64;
        self.fire("pause", vec![micros.to_string()]);
        started
    }

    /// Lifts a pause for every process (fire and forget).
    pub fn resume(&self) {
        self.local().paused_until = None;
        self.fire("resume", Vec::new());
    }

    /// Takes in a response's rate-limit headers (fire and forget): the limits they report
    /// become the budget's for every process, and a 429 lowers them for every process, as a
    /// local limiter's would (see [`Adaptive`]). Other clients' traffic is not estimated: the
    /// budget's own count spans every process. Returns the change of this process's view
    /// worth a log line.
    pub fn observe(&self, seen: &Observation) -> Option<Change> {
        let now = self.clock.now();
        let (learned, change) = {
            let mut local = self.local();
            let was_discovering = local.learning.summary().discovering;
            local.learning.observe(seen, Counted::default(), now);
            let reported = seen.requests.limit.is_some() || seen.tokens.limit.is_some();
            let summary = local.learning.summary();
            let learned = (reported || summary.discovering != was_discovering).then_some(summary);
            (learned, local.learning.take_change())
        };
        if let Some(summary) = learned {
            let figure = |v: Option<u64>| v.map_or_else(|| "-1".to_owned(), |v| v.to_string());
            let discovering = if summary.discovering { "1" } else { "0" };
            let args = vec![
                figure(summary.learned_rpm),
                figure(summary.learned_tpm),
                discovering.to_owned(),
            ];
            self.fire("learn", args);
        }
        if seen.rate_limited {
            self.fire("rate_limited", Vec::new());
        }
        change
    }

    /// A 429 nothing explained: lowers the budget's rate limits for every process (fire and
    /// forget; the script acts on one per tenth of a window). Returns the change of this
    /// process's view worth a log line.
    pub fn rate_limited(&self) -> Option<Change> {
        let now = self.clock.now();
        let change = {
            let mut local = self.local();
            local.learning.rate_limited(now);
            local.learning.take_change()
        };
        self.fire("rate_limited", Vec::new());
        change
    }

    /// The budget's figures (one round trip; waits for no local lock).
    ///
    /// # Errors
    /// Redis could not be reached.
    pub fn stats(&self) -> Result<Vec<redis::Value>, QueueError> {
        let reply =
            runtime::block_on(self.call("stats", &[])).map_err(|err| self.unavailable(err))??;
        match reply {
            Reply::Stats(values) => Ok(values),
            other => Err(self.unavailable(format!("unexpected reply {other:?}"))),
        }
    }

    /// The budget's figures, fetched in the background for readers that must never wait
    /// (metrics): `then` runs on the runtime with them; on a failure it is dropped unrun (the
    /// next refresh tries again).
    pub fn stats_later(&self, then: impl FnOnce(Vec<redis::Value>) + Send + 'static) {
        let Some(me) = self.me.upgrade() else { return };
        runtime::spawn(async move {
            if let Ok(Reply::Stats(values)) = me.call("stats", &[]).await {
                then(values);
            }
        });
    }

    /// This process's waiters and holders.
    pub fn local_counts(&self) -> (usize, usize) {
        let local = self.local();
        (local.slots.len(), local.holders.len())
    }

    /// Reads this process's wait times (under a short lock; no round trip).
    pub fn with_wait_times<T>(&self, read: impl FnOnce(&WaitTimes, Nanos) -> T) -> T {
        let now = self.clock.now();
        read(&self.local().times, now)
    }

    fn record_wait(&self, since: Nanos) {
        let now = self.clock.now();
        let waited = now.as_u64().saturating_sub(since.as_u64());
        self.local().times.record(waited, now);
    }

    fn start_heartbeat(&self) {
        let me = self.me.clone();
        let wake = Arc::clone(&self.heartbeat);
        let every = self.settings.lease / 3;
        runtime::spawn(async move {
            loop {
                let _ = tokio::time::timeout(every, wake.notified()).await;
                let Some(queue) = me.upgrade() else { return };
                queue.renew().await;
            }
        });
    }

    /// Renews this process's leases, and catches up on lost announcements.
    async fn renew(&self) {
        let (holders, tickets) = {
            let local = self.local();
            let holders: Vec<String> = local.holders.iter().map(u64::to_string).collect();
            let tickets: Vec<String> = local.tickets.keys().map(u64::to_string).collect();
            (holders, tickets)
        };
        if holders.is_empty() && tickets.is_empty() {
            return;
        }
        let mut args = vec![self.lease_us(), holders.len().to_string()];
        args.extend(holders);
        args.extend(tickets);
        match self.call("renew", &args).await {
            Ok(Reply::Renewed { lost, handed, head }) => {
                if lost.iter().any(|l| !l.starts_with('t')) {
                    self.warn_lost_once();
                }
                // Waiters whose place was lost (their lease expired, or the budget's state
                // with it) poll now, find it gone and queue again.
                let lost_tickets: Vec<u64> = lost
                    .iter()
                    .filter_map(|l| l.strip_prefix('t')?.parse().ok())
                    .collect();
                self.wake_tickets(&lost_tickets);
                self.hear(&Announcement { handed, head });
            }
            Ok(_) => {}
            Err(err) => log_warning(&format!(
                "crewthrottle: renewing the leases of {:?} failed (retrying every {:?}): {err}",
                self.name,
                self.settings.lease / 3
            )),
        }
    }

    fn wake_tickets(&self, tickets: &[u64]) {
        let wake: Vec<Arc<Notify>> = {
            let local = self.local();
            tickets
                .iter()
                .filter_map(|t| local.tickets.get(t))
                .filter_map(|id| local.slots.get(id))
                .map(|slot| Arc::clone(&slot.wake))
                .collect()
        };
        for notify in wake {
            notify.notify_one();
        }
    }

    /// Acts on what the budget announced: wakes the waiters whose grants were handed, and
    /// tells the head when it may be served.
    fn hear(&self, news: &Announcement) {
        let mut wake = Vec::new();
        {
            let mut local = self.local();
            for &ticket in &news.handed {
                match local.tickets.get(&ticket).copied() {
                    Some(id) => wake.extend(local.slots.get(&id).map(|s| Arc::clone(&s.wake))),
                    None => remember_early(&mut local, ticket, None),
                }
            }
            if let Some((ticket, retry)) = news.head {
                let retry = retry.map(Duration::from_micros);
                match local.tickets.get(&ticket).copied() {
                    Some(id) => {
                        if let Some(slot) = local.slots.get_mut(&id) {
                            slot.head_retry = Some(retry.unwrap_or(Duration::MAX));
                            if retry.is_some() {
                                wake.push(Arc::clone(&slot.wake));
                            }
                        }
                    }
                    None if retry.is_some() => remember_early(&mut local, ticket, retry),
                    None => {}
                }
            }
        }
        for notify in wake {
            notify.notify_one();
        }
    }
}

fn remember_early(local: &mut Local, ticket: u64, retry: Option<Duration>) {
    if local.early.len() >= EARLY {
        local.early.pop_front();
    }
    local.early.push_back((ticket, retry));
}

/// Logs through Python's `logging` (the `crewthrottle` logger), from any thread.
fn log_warning(message: &str) {
    crate::store::log::warning(message);
}

impl AfterFork for RedisQueue {
    unsafe fn reset_in_child(&self, survivors: Survivors) {
        let kept = survivors.event_loop.map(Context::EventLoop);
        let mut restart = Vec::new();
        let reset = |local: &mut Local, intact: bool| {
            let old = std::mem::replace(local, Local::new(&self.config));
            if !intact {
                std::mem::forget(old); // possibly half-written by a vanished thread
                return;
            }
            // The waiters of the forking thread's event loop run on in the child; their
            // tickets are the parent's (it waits on them too), so they queue again here.
            local.next = old.next;
            local.epoch = old.epoch;
            local.learning = old.learning;
            for (id, mut slot) in old.slots {
                let survives = kept.is_some()
                    && slot.notifier.as_ref().map(|n| n.context()) == kept
                    && slot.cancelled.is_none();
                if survives {
                    slot.state = State::Waiting;
                    slot.ticket = None;
                    slot.head_retry = None;
                    slot.wake = Arc::new(Notify::new());
                    restart.push((id, slot.request));
                    local.slots.insert(id, slot);
                }
            }
        };
        // SAFETY: the caller guarantees a single-threaded child.
        unsafe { self.local.reset_in_child(reset) };
        self.subscribed.store(0, Ordering::Release);
        for (id, request) in restart {
            self.spawn_drive(id, request);
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Listener for RedisQueue {
    fn announced(&self, payload: &str) {
        if let Some(news) = Announcement::parse(payload) {
            self.hear(&news);
        }
    }

    fn resubscribed(&self) {
        // Announcements may have been lost while the connection was down: catch up now.
        self.heartbeat.notify_one();
    }
}

impl WaitQueue for RedisQueue {
    type Request = LimiterRequest;
    type Grant = RedisGrant;
    const REMOTE: bool = true;

    fn taken(&self, grant: &mut RedisGrant) {
        self.redate(grant);
    }

    fn validate(&self, request: &LimiterRequest) -> Result<(), QueueError> {
        Ok(validate_request(&self.config, request)?)
    }

    fn try_acquire(
        &self,
        request: LimiterRequest,
        _may_block: bool,
    ) -> Result<Option<RedisGrant>, QueueError> {
        self.validate(&request)?;
        let args = [request.tokens.to_string(), self.lease_us(), "0".to_owned()];
        let reply = runtime::block_on(self.call("acquire", &args))
            .map_err(|err| self.unavailable(err))??;
        match reply {
            Reply::Granted {
                id,
                tokens,
                stamp_us,
                ..
            } => Ok(Some(self.granted(id, tokens, stamp_us))),
            _ => Ok(None),
        }
    }

    fn acquire(
        &self,
        request: LimiterRequest,
        may_block: bool,
    ) -> Result<Acquired<RedisGrant>, QueueError> {
        self.validate(&request)?;
        let id = self.new_slot(request);
        if !may_block {
            self.spawn_drive(id, request);
            return Ok(Acquired::Queued(Ticket(id)));
        }
        // One round trip on this thread (its GIL released by the caller): granted at once,
        // or queued, and a task on the I/O runtime waits for the ticket.
        let args = [request.tokens.to_string(), self.lease_us(), "1".to_owned()];
        let reply = runtime::block_on(self.call("acquire", &args))
            .map_err(|err| self.unavailable(err))
            .and_then(|r| r);
        match reply {
            Ok(Reply::Granted {
                id: gid,
                tokens,
                stamp_us,
                ..
            }) => {
                let since = self.local().slots.remove(&id).map(|slot| slot.since);
                if let Some(since) = since {
                    self.record_wait(since);
                }
                Ok(Acquired::Now(self.granted(gid, tokens, stamp_us)))
            }
            Ok(Reply::Queued { ticket, retry_us }) => {
                if let Some(me) = self.me.upgrade() {
                    runtime::spawn(async move {
                        let retry = retry_us.map(Duration::from_micros);
                        let outcome = match me.wait_ticket(id, ticket, retry).await {
                            Ok(Waited::Granted(grant)) => Ok(Some(grant)),
                            Ok(Waited::Abandoned) => Ok(None),
                            Ok(Waited::Lost) => me.acquire_remote(id, request).await,
                            Err(err) => Err(err),
                        };
                        me.settle_slot(id, outcome);
                    });
                }
                Ok(Acquired::Queued(Ticket(id)))
            }
            Ok(other) => {
                self.local().slots.remove(&id);
                Err(self.unavailable(format!("unexpected reply {other:?}")))
            }
            Err(err) => {
                self.local().slots.remove(&id);
                Err(err)
            }
        }
    }

    fn poll(&self, ticket: Ticket, notifier: &Notifier) -> Result<Polled<RedisGrant>, QueueError> {
        match self.poll_handed(ticket, notifier)? {
            Polled::Ready(()) => self.take(ticket),
            Polled::Pending(at) => Ok(Polled::Pending(at)),
            Polled::Unknown => Ok(Polled::Unknown),
        }
    }

    fn poll_handed(&self, ticket: Ticket, notifier: &Notifier) -> Result<Polled<()>, QueueError> {
        let old;
        {
            let mut local = self.local();
            let Some(slot) = local.slots.get_mut(&ticket.0) else {
                return Ok(Polled::Unknown);
            };
            match &slot.state {
                State::Ready(_) => return Ok(Polled::Ready(())),
                State::Failed(err) => {
                    let err = err.clone();
                    local.slots.remove(&ticket.0);
                    return Err(err);
                }
                State::Waiting => old = slot.notifier.replace(Arc::clone(notifier)),
            }
        }
        drop(old); // outside the lock: it may hold Python objects
        Ok(Polled::Pending(None))
    }

    fn take(&self, ticket: Ticket) -> Result<Polled<RedisGrant>, QueueError> {
        let slot = self.local().slots.remove(&ticket.0);
        let Some(slot) = slot else {
            return Ok(Polled::Unknown);
        };
        match slot.state {
            State::Ready(mut grant) => {
                self.redate(&mut grant);
                self.record_wait(slot.since);
                Ok(Polled::Ready(grant))
            }
            State::Failed(err) => Err(err),
            State::Waiting => {
                self.local().slots.insert(ticket.0, slot);
                Ok(Polled::Pending(None))
            }
        }
    }

    fn abandon(&self, ticket: Ticket, why: Abandon) {
        let (wake, orphan) = {
            let mut local = self.local();
            match local.slots.get_mut(&ticket.0) {
                Some(slot) if matches!(slot.state, State::Waiting) => {
                    slot.cancelled = Some(why);
                    (Some(Arc::clone(&slot.wake)), None)
                }
                Some(_) => match local.slots.remove(&ticket.0).map(|s| s.state) {
                    Some(State::Ready(grant)) => (None, Some(grant)),
                    _ => (None, None),
                },
                None => (None, None),
            }
        };
        if let Some(wake) = wake {
            wake.notify_one();
        }
        if let Some(grant) = orphan {
            self.release(grant);
        }
    }

    fn until(&self, _at: Nanos) -> Duration {
        Duration::ZERO // this queue never asks its waiters to keep a timer
    }
}

impl RedisQueue {
    /// A grant that reached this process a while before its waiter could take it (a thread
    /// waiting for the GIL) is counted from now: the budget moves its start later.
    fn redate(&self, grant: &mut RedisGrant) {
        let Some(arrived) = grant.arrived.take() else {
            return;
        };
        let late = arrived.elapsed();
        let window = Duration::from_nanos(self.config.window_ns());
        if late >= Duration::from_millis(1) && late < window {
            let micros = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
            self.fire("redate", vec![grant.id.to_string(), micros.to_string()]);
        }
    }
}
