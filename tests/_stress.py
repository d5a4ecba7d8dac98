"""The workload of tests/test_stress.py: threads, and tasks on event loops that live, block and
close, doing random operations on one primitive, with every wait, hold, loop life, pause and a
stream of `stats()` samples recorded for the checks.

Choices are drawn from per-worker generators seeded from one seed, so a seed always makes the
same choices (the interleaving, of course, differs from run to run).
"""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

now = time.monotonic

#: Longest a loop blocks: longer than the windows tested (1 s), so that a grant handed to a
#: task of a blocked loop is sometimes picked up a whole window late, and given back.
MAX_BLOCK = 1.5
#: Longest pause a worker asks for.
MAX_PAUSE = 0.3
#: Active and quiet stretches: in a quiet one nobody starts anything, so only the engine's own
#: timers and wake-ups can serve whoever still waits (a new call would serve the queue itself
#: and hide a missing timer).
ACTIVE, QUIET = 4.0, 1.5


@dataclass
class Wait:
    """One acquisition, from its call to its answer (`end` None: its loop closed first)."""

    ctx: int  # -1: a thread; else the id of the loop life
    op: str
    start: float
    end: float | None = None
    outcome: str = "stranded"


@dataclass
class Hold:
    """One grant held: from when its holder had it until it let it go (None: stranded)."""

    ctx: int
    op: str
    called: float  # when the acquisition was called
    start: float
    end: float | None = None
    tokens: int = 0  # for a Limiter, the least it was charged (reserved, then settled)
    started_ns: int | None = None  # when the limiter counts its start, on its clock


@dataclass
class Life:
    """One event loop, from creation to close, with the spans its thread blocked it."""

    id: int
    started: float
    blocks: list[tuple[float, float]] = field(default_factory=list)
    stopped: float | None = None
    closed: float | None = None


class Subject(Protocol):
    """A primitive under test, seen through the operations the workload performs."""

    name: str
    ops: dict[str, float]  # operation -> weight, besides acquisitions

    def request(self, rng: random.Random) -> Any: ...
    def acquire(self, request: Any, timeout: float | None) -> Any: ...
    def try_acquire(self, request: Any) -> Any: ...
    def acquire_async(self, request: Any, timeout: float | None) -> Awaitable[Any]: ...
    def took(self, grant: Any, hold: Hold) -> None: ...
    def finish(self, grant: Any, rng: random.Random, hold: Hold, run: Run) -> None: ...
    def other(self, op: str, rng: random.Random, run: Run) -> None: ...
    def sample(self) -> dict[str, Any]: ...


class Run:
    """What every worker shares: the schedule, and the records."""

    def __init__(self, subject: Subject, seconds: float, seed: int) -> None:
        self.subject = subject
        self.seed = seed
        self.t0 = now()
        self.deadline = self.t0 + seconds
        self.lock = threading.Lock()
        self.waits: list[Wait] = []
        self.holds: list[Hold] = []
        self.lives: dict[int, Life] = {}
        self.pauses: list[tuple[float, float]] = []
        self.samples: list[tuple[float, float, dict[str, Any]]] = []
        self.counts: Counter[str] = Counter()
        self.done = threading.Event()

    def rng(self, *key: object) -> random.Random:
        return random.Random(f"{self.seed}/{self.subject.name}/{key}")

    def pause_for(self) -> float | None:
        """0 to act now, else how long to stay quiet; None once the run is over."""
        t = now()
        if t >= self.deadline:
            return None
        into = (t - self.t0) % (ACTIVE + QUIET)
        return 0.0 if into < ACTIVE else ACTIVE + QUIET - into

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] += n

    def wait(self, ctx: int, op: str) -> Wait:
        wait = Wait(ctx, op, now())
        with self.lock:
            self.waits.append(wait)
            self.counts[op] += 1
        return wait

    def hold(self, wait: Wait, grant: Any) -> Hold:
        hold = Hold(wait.ctx, wait.op, wait.start, now())
        self.subject.took(grant, hold)
        with self.lock:
            self.holds.append(hold)
        return hold


def answered(wait: Wait, grant: Any, outcome: str | None = None) -> None:
    wait.end = now()
    wait.outcome = outcome or ("granted" if grant else "refused")


def hold_duration(rng: random.Random) -> float:
    return rng.uniform(0.1, 0.3) if rng.random() < 0.1 else rng.uniform(0, 0.02)


# -- threads ---------------------------------------------------------------------------------


def thread_worker(run: Run, index: int) -> None:
    rng = run.rng("thread", index)
    subject = run.subject
    ops = {"acquire": 3, "acquire_timeout": 3, "try_acquire": 2, **subject.ops}
    while (quiet := run.pause_for()) is not None:
        if quiet:
            time.sleep(quiet)
            continue
        op = rng.choices(list(ops), list(ops.values()))[0]
        if op in ("acquire", "acquire_timeout", "try_acquire"):
            thread_acquire(run, rng, op)
        else:
            subject.other(op, rng, run)
        time.sleep(rng.uniform(0, 0.02))


def thread_acquire(run: Run, rng: random.Random, op: str) -> None:
    subject = run.subject
    request = subject.request(rng)
    timeout = rng.choice([0.0, rng.uniform(0, 0.5)]) if op == "acquire_timeout" else None
    wait = run.wait(-1, op)
    if op == "try_acquire":
        grant = subject.try_acquire(request)
    else:
        grant = subject.acquire(request, timeout)
    answered(wait, grant, None if grant or op != "acquire_timeout" else "timeout")
    if grant:
        hold = run.hold(wait, grant)
        time.sleep(hold_duration(rng))
        subject.finish(grant, rng, hold, run)


# -- event loops -----------------------------------------------------------------------------


def loop_thread(run: Run, index: int, tasks: int) -> None:
    """Event loops one after another, each closed after its life with its tasks left as they
    are (queued, holding, sleeping: `loop.close()` after `run_until_complete`, no cancel)."""
    rng = run.rng("loop", index)
    lives = 0
    while run.pause_for() is not None:
        life = Life(index * 10_000 + lives, now())
        lives += 1
        with run.lock:
            run.lives[life.id] = life
        loop = asyncio.new_event_loop()
        seeds = [rng.random() for _ in range(tasks + 1)]
        loop.run_until_complete(live(run, life, rng.uniform(2, 6), seeds))
        life.stopped = now()
        time.sleep(rng.uniform(0, 0.3))  # stopped, not yet closed: as blocked
        life.closed = now()
        loop.close()
        run.count("loops closed")
        # What was left on it (a task holding a permit, one woken too late to run) lets go
        # only when collected: collect now rather than whenever allocations next trigger it,
        # or a semaphore's threads could wait on a stranded holder for the rest of the run.
        gc.collect()


async def live(run: Run, life: Life, seconds: float, seeds: list[float]) -> None:
    end = now() + seconds
    # Referenced only here: once the loop is closed, nothing but the garbage collector frees
    # the tasks left behind.
    tasks = [asyncio.ensure_future(task_worker(run, life, end, random.Random(s))) for s in seeds]
    tasks.append(asyncio.ensure_future(blocker(life, end, random.Random(seeds[-1]))))
    await asyncio.sleep(seconds)
    run.count("tasks left on a closed loop", sum(not t.done() for t in tasks))


async def blocker(life: Life, end: float, rng: random.Random) -> None:
    """Blocks the loop at random: a synchronous call inside a coroutine."""
    while now() < end:
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        start = now()
        time.sleep(rng.uniform(0.05, MAX_BLOCK))
        life.blocks.append((start, now()))


async def task_worker(run: Run, life: Life, end: float, rng: random.Random) -> None:
    subject = run.subject
    ops = {"acquire": 3, "acquire_timeout": 3, "try_acquire": 1, "cancel": 2, **subject.ops}
    while now() < end and (quiet := run.pause_for()) is not None:
        if quiet:
            await asyncio.sleep(quiet)
            continue
        op = rng.choices(list(ops), list(ops.values()))[0]
        if op in ("acquire", "acquire_timeout", "try_acquire", "cancel"):
            await task_acquire(run, life, rng, op)
        else:
            subject.other(op, rng, run)
        await asyncio.sleep(rng.uniform(0, 0.02))


async def task_acquire(run: Run, life: Life, rng: random.Random, op: str) -> None:
    subject = run.subject
    request = subject.request(rng)
    timeout = rng.choice([0.0, rng.uniform(0, 0.5)]) if op == "acquire_timeout" else None
    wait = run.wait(life.id, op)
    if op == "try_acquire":
        grant = subject.try_acquire(request)
        answered(wait, grant)
    elif op == "cancel":
        grant = await cancelled_soon(subject.acquire_async(request, None), rng, wait)
    else:
        grant = await subject.acquire_async(request, timeout)
        answered(wait, grant, None if grant or op != "acquire_timeout" else "timeout")
    if grant:
        await hold_async(run, rng, wait, grant)


async def cancelled_soon(acquisition: Awaitable[Any], rng: random.Random, wait: Wait) -> Any:
    """Cancels `acquisition` after a moment; its grant if it came first."""
    task = asyncio.ensure_future(acquisition)
    await asyncio.sleep(rng.uniform(0, 0.1))
    task.cancel()
    try:
        grant = await task
    except asyncio.CancelledError:
        answered(wait, None, "cancelled")
        return None
    answered(wait, grant)
    return grant


async def hold_async(run: Run, rng: random.Random, wait: Wait, grant: Any) -> None:
    hold = run.hold(wait, grant)
    try:
        await asyncio.sleep(hold_duration(rng))
    finally:
        # Also when the task is collected on its closed loop (GeneratorExit): let go then.
        run.subject.finish(grant, rng, hold, run)


# -- the run ---------------------------------------------------------------------------------


def monitor(run: Run) -> None:
    """Samples `stats()` every 20 ms: what the engine's own figures said, and when."""
    while not run.done.is_set():
        before = now()
        sample = run.subject.sample()
        run.samples.append((before, now(), sample))
        time.sleep(0.02)


def run_workload(run: Run, threads: int, loops: int, tasks: int) -> None:
    workers = [threading.Thread(target=thread_worker, args=(run, i)) for i in range(threads)]
    workers += [threading.Thread(target=loop_thread, args=(run, i, tasks)) for i in range(loops)]
    sampler = threading.Thread(target=monitor, args=(run,))
    for worker in [*workers, sampler]:
        worker.start()
    for worker in workers:
        worker.join(run.deadline - now() + 30)
    run.done.set()
    sampler.join(10)
    assert not any(w.is_alive() for w in [*workers, sampler]), "a worker hung"


def ends(run: Run) -> list[tuple[float, float]]:
    """Every hold as an interval; a stranded one ends when its loop closed (its grant can only
    come back after that: the collector frees it once the loop is closed)."""
    out = []
    for hold in run.holds:
        end = hold.end
        if end is None:
            life = run.lives[hold.ctx]
            assert life.closed is not None
            end = life.closed
        out.append((hold.start, end))
    return out


Check = Callable[[Run], None]
