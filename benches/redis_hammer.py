"""Drive one shared budget from several processes, each with threads, and record every grant.

The processes are spawned (never forked: each starts clean, as separate workers would), build
their contender by key, warm their connection up on a budget of their own, then start together
at a barrier and acquire in a loop for the run's length.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

GRACE = 3.0  # seconds a thread may take to finish its last acquire
Grant = tuple[
    float, float, int, int
]  # (client time after the grant, decision stamp, process, thread)


@dataclass(frozen=True)
class Job:
    contender: str  # a redis_peers.RedisContender key
    url: str
    budget: str
    threads: int
    seconds: float
    cpu: int | None  # pin the process (and so its threads) to this CPU


def _worker(job: Job, index: int, barrier: Any, results: Any) -> None:
    if job.cpu is not None:
        os.sched_setaffinity(0, {job.cpu})  # before any thread starts: they inherit it
    import redis_peers

    contender = redis_peers.by_key(job.contender)
    contender.make_sync(job.url, f"{job.budget}/warm-up/{index}")()  # connect, load scripts
    acquire = contender.make_sync(job.url, job.budget)
    grants: list[Grant] = []
    barrier.wait(120)
    t0 = time.time()
    end = t0 + job.seconds

    def work(thread: int) -> None:
        while time.time() < end:
            stamp = acquire()
            now = time.time()
            grants.append((now, now if stamp is None else stamp, index, thread))

    pool = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(job.threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(max(end + GRACE - time.time(), 0.0))
    results.put((index, t0, [g for g in grants if g[0] < end]))


def run(job: Job, processes: int) -> tuple[list[Grant], float]:
    """Runs ``job`` in ``processes`` processes at once: the grants made while all of them
    were running, and how long that was (seconds)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes + 1), ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(job, i, barrier, results), daemon=True)
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        barrier.wait(120)
        collected = [results.get(timeout=job.seconds + GRACE + 60) for _ in workers]
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
    starts = [t for _, t, _ in collected]
    t0, t1 = max(starts), min(starts) + job.seconds  # every process was running in between
    return [g for _, _, grants in collected for g in grants if t0 <= g[0] < t1], t1 - t0
