"""Section 4: CPU burnt by idle waiters (1000 asyncio tasks, 100 threads) over a few seconds.

Each case blocks its waiters on something that will not let them through during the
measurement (a concurrency permit held by the benchmark, or a rate limit already spent), then
reads the process's CPU time (``time.process_time``: user + system, all threads) across a
sleep. 100% is one core busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from _common import Settings, Table, pinned, progress

import crewthrottle as ct

TASKS = 1000
THREADS = 100
HOUR = 3600.0

Waiter = Callable[[], object]
Setup = Callable[[float], tuple[Waiter, Callable[[], None]]]  # deadline -> (waiter, cleanup)


@dataclass(frozen=True)
class IdleCase:
    name: str
    config: str
    setup: Setup  # called in the loop (async cases) or the main thread (thread cases)
    ours: bool = False
    spend: bool = False  # one waiter runs first, spending the limit's only permit


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


# --- asyncio cases (waiters are coroutine functions; cleanup runs before they are cancelled) ---


def _async_cases() -> list[IdleCase]:
    def ours_held(_: float) -> tuple[Waiter, Callable[[], None]]:
        lim = ct.Limiter(max_concurrent=1)
        permit = lim.acquire()

        async def waiter() -> None:
            async with lim:
                pass

        return waiter, permit.release

    def ours_rate(_: float) -> tuple[Waiter, Callable[[], None]]:
        lim = ct.Limiter(rpm=1, window=HOUR, burst=1)
        return lim.acquire_async, lambda: None

    def stdlib(_: float) -> tuple[Waiter, Callable[[], None]]:
        sem = asyncio.Semaphore(0)
        return sem.acquire, lambda: None

    def aiolimiter(_: float) -> tuple[Waiter, Callable[[], None]]:
        from aiolimiter import AsyncLimiter

        return AsyncLimiter(1, HOUR).acquire, lambda: None

    def langchain(_: float) -> tuple[Waiter, Callable[[], None]]:
        from langchain_core.rate_limiters import InMemoryRateLimiter

        lim = InMemoryRateLimiter(requests_per_second=1 / HOUR)  # bucket starts empty
        return lim.aacquire, lambda: None

    cases = [
        IdleCase("crewthrottle.Limiter", "max_concurrent=1, held", ours_held, True),
        IdleCase("crewthrottle.Limiter", "rpm=1, window=3600, spent", ours_rate, True, True),
        IdleCase("asyncio.Semaphore", "Semaphore(0)", stdlib),
        IdleCase("aiolimiter", "AsyncLimiter(1, 3600), spent", aiolimiter, spend=True),
        IdleCase("langchain InMemoryRateLimiter", "1/3600 per s (polls every 0.1 s)", langchain),
    ]
    with contextlib.suppress(ImportError):
        from asyncio_throttle.throttler import Throttler  # optional peer

        def throttle(_: float) -> tuple[Waiter, Callable[[], None]]:
            return Throttler(rate_limit=1, period=HOUR).acquire, lambda: None

        cases.append(
            IdleCase(
                "asyncio-throttle", "Throttler(1, 3600), spent (optional)", throttle, spend=True
            )
        )
    return cases


async def _measure_async(case: IdleCase, settle: float, seconds: float) -> tuple[float, int]:
    waiter, cleanup = case.setup(time.monotonic() + HOUR)
    make: Callable[[], Awaitable[Any]] = waiter  # type: ignore[assignment]
    if case.spend:
        await make()
    tasks = [asyncio.ensure_future(make()) for _ in range(TASKS)]
    await asyncio.sleep(settle)
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    waiting = sum(not t.done() for t in tasks)
    for task in tasks:
        task.cancel()
    cleanup()
    await asyncio.gather(*tasks, return_exceptions=True)
    return 100.0 * cpu / wall, waiting


# --- thread cases (cleanup lets every waiter through, or they time out at the deadline) ---


def _thread_cases() -> list[IdleCase]:
    def ours_held(_: float) -> tuple[Waiter, Callable[[], None]]:
        lim = ct.Limiter(max_concurrent=1)
        permit = lim.acquire()
        return lambda: lim.acquire().release(), permit.release

    def ours_rate(deadline: float) -> tuple[Waiter, Callable[[], None]]:
        lim = ct.Limiter(rpm=1, window=HOUR, burst=1)
        lim.acquire().release()  # the one request of the hour

        def waiter() -> None:
            with contextlib.suppress(ct.AcquireTimeout):
                lim.acquire(timeout=_left(deadline))

        return waiter, lambda: None

    def stdlib(_: float) -> tuple[Waiter, Callable[[], None]]:
        sem = threading.Semaphore(0)
        return sem.acquire, lambda: sem.release(THREADS)

    def langchain(_: float) -> tuple[Waiter, Callable[[], None]]:
        from langchain_core.rate_limiters import InMemoryRateLimiter

        lim = InMemoryRateLimiter(requests_per_second=1 / HOUR)

        def unblock() -> None:
            lim.requests_per_second = 1e9

        return lim.acquire, unblock

    return [
        IdleCase("crewthrottle.Limiter", "max_concurrent=1, held", ours_held, True),
        IdleCase("crewthrottle.Limiter", "rpm=1, window=3600, spent", ours_rate, True),
        IdleCase("threading.Semaphore", "Semaphore(0)", stdlib),
        IdleCase("langchain InMemoryRateLimiter", "1/3600 per s (polls every 0.1 s)", langchain),
    ]


def _measure_threads(case: IdleCase, settle: float, seconds: float) -> tuple[float, int]:
    waiter, cleanup = case.setup(time.monotonic() + settle + seconds + 0.5)
    pool = [threading.Thread(target=waiter, daemon=True) for _ in range(THREADS)]
    for thread in pool:
        thread.start()
    time.sleep(settle)
    cpu, wall = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    waiting = sum(t.is_alive() for t in pool)
    cleanup()
    for thread in pool:
        thread.join()
    return 100.0 * cpu / wall, waiting


def run_idle(settings: Settings) -> Table:
    seconds, settle = settings.idle_seconds, (0.2 if settings.quick else 0.5)
    table = Table(
        "idle",
        "Idle CPU: blocked waiters doing nothing",
        ["limiter", "waiters", "blocked on", "still waiting", "CPU % of one core"],
    )
    with pinned(settings.pin) as where:
        table.notes.append(
            f"Waiters settle {settle:g} s, then process CPU time is read over "
            f"{seconds:g} s; {where}."
        )
        for case in _async_cases():
            pct, waiting = asyncio.run(_measure_async(case, settle, seconds))
            _add(table, case, f"{TASKS} tasks", waiting, pct)
        for case in _thread_cases():
            pct, waiting = _measure_threads(case, settle, seconds)
            _add(table, case, f"{THREADS} threads", waiting, pct)
    return table


def _add(table: Table, case: IdleCase, waiters: str, waiting: int, pct: float) -> None:
    progress("idle", f"{case.name} ({case.config}), {waiters}: {pct:.2f}% CPU", time.perf_counter())
    table.rows.append([case.name, waiters, case.config, waiting, pct])
    if case.ours:
        table.check(
            f"{case.name} idle CPU, {waiters}, {case.config}", f"{pct:.2f}%", "<= 0.5%", pct <= 0.5
        )
