"""A randomized stress test of the waiting engine (issue 9): threads and tasks on several event
loops (each on its own thread, living, blocking at random and closed with waiters and holders
left on them) share one Limiter, then a Semaphore, then a TokenBucket, doing random acquires,
try-acquires, acquires with timeouts, cancellations, settles, pauses, resumes and drops left to
the garbage collector (tests/_stress.py). After each run the invariants are checked from what
was recorded:

- safety, exactly: never more holders at once than the limit (each holder's own interval lies
  within the engine's, so the bound is exact); never more than `rpm` starts or `tpm` tokens in
  any window of `window + margin` on the limiter's own start times (`Permit._started`); never
  more than `burst + t / interval` tokens in any span t of a bucket (each grant placed within
  its call, so only a sure excess fails);
- liveness, with generous bounds: no waiter that could run was left waiting for 2 s while the
  engine's own figures said the head of the queue could be served (see `stalled`);
- nothing left: no permit in flight and nobody waiting at the end (after a collection).

`CREWTHROTTLE_STRESS_SECONDS` (default 60, over the three) and `CREWTHROTTLE_STRESS_SEED` set
the length and the seed; run with `-s` to see what a run explored.
"""

from __future__ import annotations

import gc
import os
import random
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import pytest
from tests._stress import MAX_PAUSE, Hold, Run, Wait, ends, now, run_workload
from tests._timeline import max_in_window, max_overlap

import crewthrottle as ct

SECONDS = float(os.environ.get("CREWTHROTTLE_STRESS_SECONDS", "60"))
SEED = int(os.environ.get("CREWTHROTTLE_STRESS_SEED", "9"))
#: How long the engine may leave a servable queue unserved before it is a liveness failure:
#: its timers fire within milliseconds, so this only absorbs a loaded machine.
STALL = 2.0
#: How long after recording its call a waiter is surely queued (and so counts as waiting).
SETTLED = 0.5
SHARES = {"Limiter": 0.5, "Semaphore": 0.25, "TokenBucket": 0.25}

# Loops are closed with tasks that never ran their first step, on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")


class LimiterSubject:
    name = "Limiter"
    ops: ClassVar[dict[str, float]] = {"pause": 0.3, "resume": 0.3}
    # Tight enough that every limit binds in turn: rpm most of the time, tpm for large
    # requests, max_concurrent during long holds.
    max_concurrent, rpm, tpm, window, margin = 4, 15, 1_500, 1.0, 0.05
    max_tokens = 200

    def __init__(self) -> None:
        # burst = rpm: a window with room then also means the pacer lets the head through, so
        # the liveness check can read "could be served" off `stats()`.
        self.limiter = ct.Limiter(
            max_concurrent=self.max_concurrent,
            rpm=self.rpm,
            tpm=self.tpm,
            window=self.window,
            burst=self.rpm,
            margin=self.margin,
        )

    def request(self, rng: random.Random) -> int:
        return 0 if rng.random() < 0.4 else rng.randint(1, self.max_tokens)

    def acquire(self, tokens: int, timeout: float | None) -> ct.Permit | None:
        try:
            return self.limiter.acquire(tokens, timeout=timeout)
        except ct.AcquireTimeout:
            return None

    def try_acquire(self, tokens: int) -> ct.Permit | None:
        return self.limiter.try_acquire(tokens)

    async def acquire_async(self, tokens: int, timeout: float | None) -> ct.Permit | None:
        try:
            return await self.limiter.acquire_async(tokens, timeout=timeout)
        except ct.AcquireTimeout:
            return None

    def took(self, permit: ct.Permit, hold: Hold) -> None:
        hold.tokens = permit.tokens
        hold.started_ns = round(permit._started * 1e9)

    def finish(self, permit: ct.Permit, rng: random.Random, hold: Hold, run: Run) -> None:
        if rng.random() < 0.3:
            actual = rng.randint(0, 2 * permit.tokens)
            permit.settle(actual)
            hold.tokens = min(hold.tokens, actual)
            run.count("settles")
        hold.end = now()
        how = rng.choices(["release", "exit", "collect"], [6, 2, 2])[0]
        run.count(f"let go by {how}")
        if how == "release":
            permit.release()
        elif how == "exit":
            with permit:
                pass
        else:  # left in a reference cycle: only the garbage collector gives it back
            cycle: list[Any] = [permit]
            cycle.append(cycle)

    def other(self, op: str, rng: random.Random, run: Run) -> None:
        if op == "pause":
            self.limiter.pause(rng.uniform(0.05, MAX_PAUSE))
        else:
            self.limiter.resume()
        run.count(op)

    def sample(self) -> dict[str, Any]:
        return dict(self.limiter.stats())

    def could_serve(self, s: dict[str, Any]) -> bool:
        """Whether, by its own figures, the limiter could grant any request at its head."""
        return (
            s["in_flight"] < self.max_concurrent
            and s["requests_in_window"] < self.rpm
            and s["tokens_in_window"] + self.max_tokens <= self.tpm
            and s["paused_for"] == 0
        )

    def check(self, run: Run) -> list[str]:
        holds = run.holds
        counted = round((self.window + self.margin) * 1e9)
        starts = [h.started_ns or 0 for h in holds]
        assert all(h.started_ns is not None for h in holds)
        assert max_overlap(ends(run)) <= self.max_concurrent, "over max_concurrent"
        assert max_in_window(starts, counted) <= self.rpm, "over rpm"
        tokens = [h.tokens for h in holds]
        assert max_in_window(starts, counted, tokens) <= self.tpm, "over tpm"
        stalls = stalled(run, lambda s: s["waiting"] > 0 and self.could_serve(s))
        offset, delay = clock_offset(holds)
        seen = max_in_window([h.start for h in holds], self.window)
        return [
            *stalls,
            f"limiter clock + {offset:.6f} s = time.monotonic(); "
            f"grant to caller <= {delay * 1e3:.1f} ms",
            f"busiest window: {max_in_window(starts, counted)} starts (rpm {self.rpm}), "
            f"{max_in_window(starts, counted, tokens)} tokens (tpm {self.tpm}); "
            f"as callers saw them, {seen} in {self.window} s",
        ]

    def drain(self) -> dict[str, Any]:
        self.limiter.acquire(timeout=10).release()
        stats = self.limiter.stats()
        assert (stats["in_flight"], stats["waiting"]) == (0, 0), stats
        return dict(stats)


class SemaphoreSubject:
    name = "Semaphore"
    ops: ClassVar[dict[str, float]] = {}

    def __init__(self) -> None:
        self.sem = ct.Semaphore(2)

    def request(self, rng: random.Random) -> None:
        return None

    def acquire(self, _: None, timeout: float | None) -> bool:
        return self.sem.acquire(timeout=timeout)

    def try_acquire(self, _: None) -> bool:
        return self.sem.acquire(blocking=False)

    def acquire_async(self, _: None, timeout: float | None) -> Any:
        return self.sem.acquire_async(timeout=timeout)

    def took(self, grant: bool, hold: Hold) -> None:
        pass

    def finish(self, grant: bool, rng: random.Random, hold: Hold, run: Run) -> None:
        hold.end = now()
        self.sem.release()

    def other(self, op: str, rng: random.Random, run: Run) -> None:
        raise AssertionError(op)

    def sample(self) -> dict[str, Any]:
        return dict(self.sem.stats())

    def check(self, run: Run) -> list[str]:
        assert max_overlap(ends(run)) <= 2, "over the semaphore's value"
        # Exact: every call serves the queue under the gate's lock, so no sample may show a
        # free permit while somebody waits.
        for before, _, s in run.samples:
            assert not (s["waiting"] and s["value"]), f"{s} at {before - run.t0:.3f} s"
        return [f"{len(run.samples)} samples: never a free permit while somebody waited"]

    def drain(self) -> dict[str, Any]:
        assert self.sem.acquire(timeout=10)
        self.sem.release()
        stats = self.sem.stats()
        assert (stats["value"], stats["waiting"]) == (2, 0), stats
        return dict(stats)


class TokenBucketSubject:
    name = "TokenBucket"
    ops: ClassVar[dict[str, float]] = {"pause": 0.3}
    rate, burst = 30.0, 5

    def __init__(self) -> None:
        self.bucket = ct.TokenBucket(self.rate, per=1.0, burst=self.burst)

    def request(self, rng: random.Random) -> int:
        return rng.randint(1, self.burst)

    def acquire(self, n: int, timeout: float | None) -> int:
        return n if self.bucket.acquire(n, timeout=timeout) else 0

    def try_acquire(self, n: int) -> int:
        return n if self.bucket.try_acquire(n) else 0

    async def acquire_async(self, n: int, timeout: float | None) -> int:
        return n if await self.bucket.acquire_async(n, timeout=timeout) else 0

    def took(self, n: int, hold: Hold) -> None:
        hold.tokens = n

    def finish(self, n: int, rng: random.Random, hold: Hold, run: Run) -> None:
        hold.end = now()

    def other(self, op: str, rng: random.Random, run: Run) -> None:
        seconds = rng.uniform(0.05, MAX_PAUSE)
        self.bucket.pause(seconds)
        with run.lock:
            run.pauses.append((now(), seconds))
        run.count(op)

    def sample(self) -> dict[str, Any]:
        return dict(self.bucket.stats())

    def check(self, run: Run) -> list[str]:
        interval = round(1e9 / self.rate) / 1e9
        excess = sure_excess(run.holds, self.burst, interval)
        assert excess <= 1e-6, f"{excess} tokens over burst + t / interval"
        refill = self.burst / self.rate
        counters = ("waiting", "acquired", "timeouts", "cancelled")
        stalls = stalled(
            run, lambda s: s["waiting"] > 0, unchanged=counters, settle=refill, quiet=True
        )
        return [*stalls, f"most tokens over burst + t / interval, for sure: {excess:.2f}"]

    def drain(self) -> dict[str, Any]:
        assert self.bucket.acquire(1, timeout=10)
        stats = self.bucket.stats()
        assert stats["waiting"] == 0, stats
        return dict(stats)


def sure_excess(holds: Sequence[Hold], burst: int, interval: float) -> float:
    """The most tokens, over `burst + span / interval`, granted within a span for sure: each
    grant was made between its call and its return, so a set of them spans at most from the
    earliest call to the latest return. Spans up to 3 s are searched."""
    grants = sorted((h.called, h.start, h.tokens) for h in holds)
    worst = float("-inf")
    for i, (lo, _, _) in enumerate(grants):
        inside = sorted((hi, n) for called, hi, n in grants[i:] if called - lo < 3.0)
        total = 0
        for hi, n in inside:
            total += n
            worst = max(worst, total - burst - max(hi - lo, 0) / interval)
    return worst


def clock_offset(holds: Sequence[Hold]) -> tuple[float, float]:
    """time.monotonic() minus the limiter's clock, bounded by every grant made during its own
    call (the calls that did not wait), and the longest a caller took to see its grant."""
    low, high = float("-inf"), float("inf")
    for h in holds:
        assert h.started_ns is not None
        started = h.started_ns / 1e9
        low, high = max(low, h.called - started), min(high, h.start - started)
    assert low <= high + 1e-6, "the limiter's start times contradict the callers' clocks"
    delay = max(h.start - (h.started_ns or 0) / 1e9 - low for h in holds)
    return high, max(delay, 0.0)


def live(run: Run, wait: Wait, t1: float, t2: float) -> bool:
    """Whether `wait` surely waited from `t1` to `t2` on a thread, or on a loop that ran."""
    if wait.op == "try_acquire" or wait.start > t1 - SETTLED:
        return False
    if wait.end is not None and wait.end < t2:
        return False
    if wait.ctx < 0:
        return True
    life = run.lives[wait.ctx]
    if life.stopped is not None and life.stopped < t2 + SETTLED:
        return False
    return not any(s < t2 and e > t1 - SETTLED for s, e in life.blocks)


def stalled(
    run: Run,
    servable: Callable[[dict[str, Any]], bool],
    unchanged: Sequence[str] = (),
    settle: float = 0.0,
    quiet: bool = False,
) -> list[str]:
    """Fails on any span over `STALL` (+ `settle`) in which every sample said the queue could
    be served (and the `unchanged` figures did not move; with `quiet`, nobody arrived and no
    pause was asked for) while a waiter that could run waited throughout. Returns a summary."""
    spans: list[list[tuple[float, float, dict[str, Any]]]] = []
    current: list[tuple[float, float, dict[str, Any]]] = []
    for sample in run.samples:
        figures = sample[2]
        if servable(figures) and all(
            figures[k] == current[0][2][k] for k in unchanged[: len(current) and len(unchanged)]
        ):
            current.append(sample)
            continue
        if current:
            spans.append(current)
        current = [sample] if servable(figures) else []
    if current:
        spans.append(current)
    longest = 0.0
    for span in spans:
        t1, t2 = span[0][1], span[-1][0]
        if quiet:
            t1 = max([t1, *(w.start + SETTLED for w in run.waits if w.start < t2)])
            t1 = max([t1, *(t + s + SETTLED for t, s in run.pauses if t < t2)])
        longest = max(longest, t2 - t1)
        if t2 - t1 < STALL + settle:
            continue
        stuck = [w for w in run.waits if live(run, w, t1, t2)]
        assert not stuck, (
            f"{t1 - run.t0:.2f}-{t2 - run.t0:.2f} s: servable ({span[0][2]}) while "
            f"{stuck[0]} waited"
        )
    return [f"longest servable span with waiters: {longest:.2f} s"]


@pytest.mark.parametrize(
    "make", [LimiterSubject, SemaphoreSubject, TokenBucketSubject], ids=list(SHARES)
)
@pytest.mark.timeout(SECONDS + 120)
def test_stress(make: Callable[[], Any]) -> None:
    subject = make()
    seconds = SECONDS * SHARES[subject.name]
    run = Run(subject, seconds, SEED)
    run_workload(run, threads=4, loops=3, tasks=3)
    gc.collect()  # tasks left on closed loops, permits left in cycles
    findings = subject.check(run)
    stats = subject.drain()
    summary(run, stats, findings)


def summary(run: Run, stats: dict[str, Any], findings: list[str]) -> None:
    outcomes: dict[str, int] = {}
    for wait in run.waits:
        outcomes[wait.outcome] = outcomes.get(wait.outcome, 0) + 1
    blocks = sum(len(life.blocks) for life in run.lives.values())
    engine = {k: stats[k] for k in ("acquired", "timeouts", "cancelled")}
    print(
        f"\n{run.subject.name}, seed {run.seed}, {now() - run.t0:.0f} s: "
        f"operations {dict(sorted(run.counts.items()))}; outcomes {outcomes}; "
        f"{len(run.holds)} grants held; {len(run.lives)} event loops, {blocks} blocks; "
        f"{len(run.samples)} samples; engine {engine}"
    )
    for finding in findings:
        print(f"  {finding}")
