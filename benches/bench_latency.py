"""Section 3: wake-up latency of one waiter blocked on a rate limit (50/s, burst 1).

With burst 1 and a single waiter that asks again as soon as it is served, the next permit
becomes available exactly one interval (1/rate) after the previous grant, for every limiter
here (GCRA, leaky bucket, token bucket of one, sliding window of one). So the lateness of grant
k is ``t[k] - t[k-1] - 1/rate``: how long after the permit became available the waiter got it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from itertools import pairwise

import hammer
from _common import Settings, Table, percentile, pinned, progress
from peers import AsyncAcquire, Contender, SyncAcquire, rate_contenders

RATE = 50
FLOOR = "floor: no limiter"


def _floor() -> Contender:
    """No limiter: sleep until one interval after the previous grant (the OS's own lateness).

    It shows what this machine allows at best: a thread's ``time.sleep`` and a loop's timer
    (asyncio rounds its epoll timeout up to whole milliseconds) under the same load.
    """

    def make_sync() -> SyncAcquire:
        due: list[float] = []

        def acquire() -> None:
            if due:
                time.sleep(max(due[0] - time.perf_counter(), 0.0))
            due[:] = [time.perf_counter() + 1.0 / RATE]

        return acquire

    def make_async() -> AsyncAcquire:
        due: list[float] = []

        async def acquire() -> None:
            if due:
                await asyncio.sleep(max(due[0] - time.perf_counter(), 0.0))
            due[:] = [time.perf_counter() + 1.0 / RATE]

        return acquire

    return Contender(
        FLOOR, "time.sleep / asyncio.sleep until the next instant", False, make_sync, make_async
    )


def _lateness_ms(grants: list[hammer.Grant]) -> list[float]:
    stamps = sorted(t for t, _ in grants)
    return [(b - a - 1.0 / RATE) * 1e3 for a, b in pairwise(stamps)]


def _runs(c: Contender, seconds: float) -> list[tuple[str, Callable[[], list[hammer.Grant]]]]:
    runs: list[tuple[str, Callable[[], list[hammer.Grant]]]] = []
    if c.make_sync is not None:
        make_sync = c.make_sync
        runs.append(("thread", lambda: hammer.threads(make_sync(), 1, seconds)[0]))
    if c.make_async is not None:
        make_async = c.make_async
        runs.append(("asyncio", lambda: hammer.tasks(make_async, 1, seconds)[0]))
    return runs


def run_latency(settings: Settings) -> Table:
    seconds, rounds = settings.latency_seconds, (1 if settings.quick else 3)
    table = Table(
        "latency",
        f"Wake-up latency: one waiter on {RATE}/s, burst 1",
        ["limiter", "mode", "config", "samples", "p50 ms", "p90 ms", "p99 ms", "max ms"],
    )
    with pinned(settings.pin) as where:
        table.notes += [
            f"One worker thread (or one task) acquiring in a loop, {rounds} slice(s) of "
            f"{seconds / rounds:g} s each, every contender's slices interleaved round-robin "
            f"so all see the same background noise; {where}. "
            f"Lateness = gap between consecutive grants - 1/{RATE} s.",
            "The floor row is no limiter at all, just a sleep to the instant: what this "
            "machine's scheduler (and asyncio's 1 ms timer rounding) allows under the same load.",
        ]
        late = _interleaved(seconds / rounds, rounds)
    floor_p99 = {mode: percentile(v, 99) for (c, mode), v in late.items() if c.name == FLOOR}
    for (c, mode), values in late.items():
        p50, p99 = percentile(values, 50), percentile(values, 99)
        table.rows.append(
            [
                c.name,
                mode,
                c.config,
                len(values),
                p50,
                percentile(values, 90),
                p99,
                max(values, default=float("nan")),
            ]
        )
        if c.ours:
            table.check(
                f"{c.name} wake-up p99, {mode}",
                f"{p99:.3f} ms (p50 {p50:.3f}; no-limiter floor p99 {floor_p99[mode]:.3f})",
                "<= 1 ms",
                p99 <= 1.0,
            )
    return table


def _interleaved(seconds: float, rounds: int) -> dict[tuple[Contender, str], list[float]]:
    """Lateness samples (ms) per (contender, mode), gathered round-robin over ``rounds``."""
    plan = [
        (c, mode, run)
        # margin=0: the margin delays grants on purpose; this measures how promptly we wake.
        for c in [_floor(), *rate_contenders(RATE, margin=0.0)]
        if c.burst_one
        for mode, run in _runs(c, seconds)
    ]
    late: dict[tuple[Contender, str], list[float]] = {(c, mode): [] for c, mode, _ in plan}
    for n in range(rounds):
        for c, mode, run in plan:
            started = time.perf_counter()
            late[c, mode] += _lateness_ms(run())
            progress("latency", f"round {n + 1}/{rounds}: {c.name}, {mode}", started)
    return late
