"""Drive one limiter from many threads or asyncio tasks and record every grant's timestamp."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from peers import AsyncAcquire, SyncAcquire

GRACE = 3.0  # seconds
Grant = tuple[float, int]  # (time.perf_counter() right after the grant, worker index)


def threads(acquire: SyncAcquire, workers: int, seconds: float) -> tuple[list[Grant], float]:
    """``workers`` threads call ``acquire`` in a loop for ``seconds``; returns grants and t0.

    Grants after ``t0 + seconds`` are dropped so every contender is judged over the same span.
    Threads still blocked at the end get ``GRACE`` seconds to finish their last acquire; a
    slow peer's stragglers (daemon threads, mostly asleep) are then left to finish alone.
    """
    grants: list[Grant] = []
    go, stop = threading.Event(), threading.Event()

    def work(index: int) -> None:
        go.wait()
        while not stop.is_set():
            acquire()
            grants.append((time.perf_counter(), index))  # list.append is atomic

    pool = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(workers)]
    for thread in pool:
        thread.start()
    t0 = time.perf_counter()
    go.set()
    time.sleep(seconds)
    stop.set()
    give_up = time.perf_counter() + GRACE
    for thread in pool:
        thread.join(max(give_up - time.perf_counter(), 0.0))
    return [g for g in grants if g[0] < t0 + seconds], t0


def tasks(
    make: Callable[[], AsyncAcquire], workers: int, seconds: float
) -> tuple[list[Grant], float]:
    """``workers`` asyncio tasks on one fresh loop, cancelled after ``seconds``."""
    return asyncio.run(_tasks(make, workers, seconds))


async def _tasks(
    make: Callable[[], AsyncAcquire], workers: int, seconds: float
) -> tuple[list[Grant], float]:
    acquire = make()
    grants: list[Grant] = []

    async def work(index: int) -> None:
        while True:
            await acquire()
            grants.append((time.perf_counter(), index))

    t0 = time.perf_counter()
    running = [asyncio.create_task(work(i)) for i in range(workers)]
    await asyncio.sleep(seconds)
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    return [g for g in grants if g[0] < t0 + seconds], t0
