"""Section 1: uncontended acquire+release cost, in ns per operation, as ratios to the stdlib.

timeit-style: each statement runs in a loop long enough to last ``cost_min_time`` seconds,
the best of ``cost_repeats`` repeats is kept (the least disturbed), and every figure is divided
by ``threading.Semaphore``'s, timed in the same process a moment before.
"""

from __future__ import annotations

import asyncio
import threading
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from _common import Settings, Table

import crewthrottle as ct

HUGE = 10**9  # a rate no loop here can reach: the limiter always grants, so only cost counts


@dataclass(frozen=True)
class Case:
    name: str
    stmt: str  # timed statement; for async cases the body of an ``async def`` loop
    setup: Callable[[], dict[str, Any]]  # names the statement uses
    ours: bool = False
    is_async: bool = False
    target_ns: float | None = None  # ours: the absolute target


def _sync_cases() -> list[Case]:
    from langchain_core.rate_limiters import InMemoryRateLimiter
    from limits import RateLimitItemPerSecond, storage, strategies
    from pyrate_limiter import Duration, Limiter, Rate
    from throttled import MemoryStore, Throttled, per_sec

    def limiter(**kw: Any) -> Callable[[], dict[str, Any]]:
        return lambda: {"lim": ct.Limiter(**kw)}

    return [
        Case(
            "threading.Semaphore", "s.acquire(); s.release()", lambda: {"s": threading.Semaphore()}
        ),
        Case(
            "crewthrottle.Semaphore",
            "s.acquire(); s.release()",
            lambda: {"s": ct.Semaphore()},
            ours=True,
        ),
        Case(
            "crewthrottle.Semaphore  with s:",
            "with s: pass",
            lambda: {"s": ct.Semaphore()},
            ours=True,
        ),
        Case(
            "crewthrottle.Limiter(max_concurrent)  with lim.acquire():",
            "with lim.acquire(): pass",
            limiter(max_concurrent=8),
            True,
            target_ns=500,
        ),
        Case(
            "crewthrottle.Limiter(max_concurrent)  with lim:",
            "with lim: pass",
            limiter(max_concurrent=8),
            True,
            target_ns=500,
        ),
        Case(
            "crewthrottle.Limiter(rpm=1e9)  with lim:",
            "with lim: pass",
            limiter(rpm=HUGE, window=60.0),
            True,
            target_ns=500,
        ),
        Case(
            "crewthrottle.Limiter(rpm=1e9)  try_acquire().release()",
            "lim.try_acquire().release()",
            limiter(rpm=HUGE, window=60.0),
            True,
            target_ns=500,
        ),
        Case(
            "crewthrottle.TokenBucket(1e9)  try_acquire()",
            "b.try_acquire()",
            lambda: {"b": ct.TokenBucket(HUGE)},
            ours=True,
        ),
        Case(
            "pyrate-limiter  Limiter(Rate(1e9/s)).try_acquire",
            "lim.try_acquire('k')",
            lambda: {"lim": Limiter(Rate(HUGE, Duration.SECOND))},
        ),
        Case(
            "limits  MovingWindow(1e9/s, memory).hit",
            "mw.hit(item, 'k')",
            lambda: {
                "mw": strategies.MovingWindowRateLimiter(storage.MemoryStorage()),
                "item": RateLimitItemPerSecond(HUGE),
            },
        ),
        Case(
            "langchain  InMemoryRateLimiter(1e9/s).acquire()",
            "lim.acquire()",
            lambda: {"lim": InMemoryRateLimiter(requests_per_second=HUGE)},
        ),
        Case(
            "throttled-py  Throttled(per_sec(1e9)).limit()",
            "lim.limit()",
            lambda: {"lim": Throttled(key="k", quota=per_sec(HUGE), store=MemoryStore())},
        ),
    ]


def _async_cases() -> list[Case]:
    from aiolimiter import AsyncLimiter
    from langchain_core.rate_limiters import InMemoryRateLimiter

    return [
        Case(
            "asyncio.Semaphore  async with",
            "async with s: pass",
            lambda: {"s": asyncio.Semaphore()},
            is_async=True,
        ),
        Case(
            "crewthrottle.Semaphore  async with",
            "async with s: pass",
            lambda: {"s": ct.Semaphore()},
            ours=True,
            is_async=True,
        ),
        Case(
            "crewthrottle.Limiter(max_concurrent)  async with",
            "async with lim: pass",
            lambda: {"lim": ct.Limiter(max_concurrent=8)},
            ours=True,
            is_async=True,
        ),
        Case(
            "crewthrottle.Limiter(rpm=1e9)  async with",
            "async with lim: pass",
            lambda: {"lim": ct.Limiter(rpm=HUGE, window=60.0)},
            ours=True,
            is_async=True,
        ),
        Case(
            "aiolimiter  AsyncLimiter(1e9, 1)  async with",
            "async with lim: pass",
            lambda: {"lim": AsyncLimiter(HUGE, 1)},
            is_async=True,
        ),
        Case(
            "langchain  InMemoryRateLimiter(1e9/s).aacquire()",
            "await lim.aacquire()",
            lambda: {"lim": InMemoryRateLimiter(requests_per_second=HUGE)},
            is_async=True,
        ),
    ]


def _time_sync(case: Case, settings: Settings) -> float:
    timer = timeit.Timer(case.stmt, globals=case.setup())
    number = _calibrate(lambda n: timer.timeit(n), settings.cost_min_time)
    return min(timer.repeat(settings.cost_repeats, number)) / number


def _time_async(case: Case, settings: Settings) -> float:
    env = case.setup()
    source = f"async def _loop(n):\n    for _ in range(n):\n        {case.stmt}\n"
    exec(source, env)  # one coroutine runs the whole loop, as timeit does for sync code
    loop_fn = env["_loop"]

    async def timed(n: int) -> float:
        start = time.perf_counter()
        await loop_fn(n)
        return time.perf_counter() - start

    async def main() -> float:
        number = 1
        while (elapsed := await timed(number)) < settings.cost_min_time:
            number *= 10 if elapsed < settings.cost_min_time / 10 else 2
        best = min([await timed(number) for _ in range(settings.cost_repeats)])
        return best / number

    return asyncio.run(main())


def _calibrate(run: Callable[[int], float], min_time: float) -> int:
    number = 1
    while (elapsed := run(number)) < min_time:
        number *= 10 if elapsed < min_time / 10 else 2
    return number


def run_cost(settings: Settings) -> Table:
    table = Table(
        "cost", "Uncontended acquire+release cost", ["operation", "ns/op", "x threading.Semaphore"]
    )
    table.notes.append(
        f"timeit-style loops, best of {settings.cost_repeats} repeats of >= "
        f"{settings.cost_min_time:g} s each, one thread, not pinned; rate limiters at 1e9/s "
        "so they always grant."
    )
    baseline = float("nan")
    for case in _sync_cases() + _async_cases():
        ns = 1e9 * (_time_async(case, settings) if case.is_async else _time_sync(case, settings))
        if case.name == "threading.Semaphore":
            baseline = ns
        table.rows.append([case.name, ns, ns / baseline])
        _check(table, case, ns, ns / baseline)
    return table


def _check(table: Table, case: Case, ns: float, ratio: float) -> None:
    if not case.ours:
        return
    if case.target_ns is not None:
        table.check(
            f"{case.name} cost", f"{ns:.0f} ns", f"< {case.target_ns:.0f} ns", ns < case.target_ns
        )
    elif case.name.startswith("crewthrottle.Semaphore") and not case.is_async:
        table.check(
            f"{case.name} cost", f"{ratio:.2f} x threading.Semaphore", "<= 0.33 x", ratio <= 1 / 3
        )
