"""`stats()` wait figures against waits the test records itself (issue 9, item 10).

Before, `total_wait`/`max_wait` were only checked as `>= 0` after an acquire that never
waited, and never for `Limiter`: a primitive reporting zeros (or garbage) passed. Here each
waiter's wait is bracketed by timestamps the test takes: the primitive's own figure for a
waiter lies between "from when it was seen queued to when its permit could first be given"
and "from just before its acquire call to just after it returned". Bounds are generous
(they come from the timestamps, never from a speed assumption).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import crewthrottle as ct

WAITERS = 3
#: How long the permit is held while the waiters queue: the wait being measured.
HOLD = 0.2


class Recorded:
    """Each waiter's (called, returned) instants around its blocking acquire."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self.lock = threading.Lock()

    def run(self, acquire: Callable[[], Any]) -> threading.Thread:
        def waiter() -> None:
            called = time.monotonic()
            acquire()
            returned = time.monotonic()
            with self.lock:
                self.spans.append((called, returned))

        thread = threading.Thread(target=waiter)
        thread.start()
        return thread


def check_figures(
    stats: dict[str, Any], floor_each: float, spans: list[tuple[float, float]]
) -> None:
    """`floor_each`: the least any waiter can have waited; the spans bound each from above."""
    waits = [returned - called for called, returned in spans]
    assert stats["total_wait"] >= floor_each * len(spans), stats
    assert stats["total_wait"] <= sum(waits), (stats, waits)
    assert floor_each <= stats["max_wait"] <= max(waits), (stats, waits)
    assert stats["max_wait"] <= stats["total_wait"]


def held_then_released(
    primitive: Any, acquire: Callable[[], Any], release: Callable[[], None], wait_until: Any
) -> tuple[float, list[tuple[float, float]]]:
    """WAITERS threads queue behind a held permit; it is released after HOLD seconds.

    Each waiter releases what it got at once, so all are served after the main release.
    Returns the least wait any of them can have had, and the recorded spans.
    """
    recorded = Recorded()
    threads = [recorded.run(acquire) for _ in range(WAITERS)]
    wait_until(lambda: primitive.stats()["waiting"] == WAITERS, "the waiters to queue")
    all_queued = time.monotonic()
    time.sleep(HOLD)  # the wait under measurement, not a race being hidden
    release_started = time.monotonic()
    release()
    for thread in threads:
        thread.join(10)
    assert len(recorded.spans) == WAITERS
    return release_started - all_queued, recorded.spans


def test_semaphore_wait_figures_match_the_recorded_waits(wait_until: Any) -> None:
    sem = ct.Semaphore(1)
    assert sem.acquire()

    def acquire_and_pass_on() -> None:
        assert sem.acquire(timeout=30)
        sem.release()

    floor, spans = held_then_released(sem, acquire_and_pass_on, sem.release, wait_until)
    stats = sem.stats()
    assert stats["acquired"] == 1 + WAITERS and stats["timeouts"] == 0
    check_figures(stats, floor, spans)


def test_limiter_wait_figures_match_the_recorded_waits(wait_until: Any) -> None:
    limiter = ct.Limiter(max_concurrent=1)
    held = limiter.acquire()

    def acquire_and_pass_on() -> None:
        limiter.acquire(timeout=30).release()

    floor, spans = held_then_released(limiter, acquire_and_pass_on, held.release, wait_until)
    stats = limiter.stats()
    assert stats["acquired"] == 1 + WAITERS and stats["in_flight"] == 0
    check_figures(stats, floor, spans)


def test_token_bucket_wait_figures_match_the_recorded_waits(wait_until: Any) -> None:
    """5 tokens a second, burst 1: emptied at `emptied`, the k-th waiter cannot be served
    before `emptied + k / 5`, and was queued by the time all were seen queued."""
    rate = 5.0
    bucket = ct.TokenBucket(rate, burst=1)
    emptied = time.monotonic()
    assert bucket.try_acquire()
    recorded = Recorded()
    threads = [recorded.run(lambda: bucket.acquire(timeout=30)) for _ in range(WAITERS)]
    wait_until(lambda: bucket.stats()["waiting"] == WAITERS, "the waiters to queue")
    all_queued = time.monotonic()
    for thread in threads:
        thread.join(10)
    stats = bucket.stats()
    assert stats["acquired"] == 1 + WAITERS
    # The k-th waiter (1-based) waited at least emptied + k / rate - all_queued.
    floors = [emptied + k / rate - all_queued for k in range(1, WAITERS + 1)]
    waits = [returned - called for called, returned in recorded.spans]
    assert stats["total_wait"] >= sum(floors), (stats, floors)
    assert stats["total_wait"] <= sum(waits), (stats, waits)
    assert floors[-1] <= stats["max_wait"] <= max(waits), (stats, floors, waits)


@pytest.mark.parametrize("kind", ["semaphore", "limiter", "bucket"])
def test_an_acquire_that_never_waited_adds_no_wait(kind: str) -> None:
    primitive: Any = {
        "semaphore": lambda: ct.Semaphore(2),
        "limiter": lambda: ct.Limiter(max_concurrent=2),
        "bucket": lambda: ct.TokenBucket(10, burst=2),
    }[kind]()
    assert primitive.try_acquire() if kind != "semaphore" else primitive.acquire(False)
    stats = primitive.stats()
    assert stats["acquired"] == 1
    assert stats["total_wait"] == 0.0 and stats["max_wait"] == 0.0


def test_timed_out_waits_are_not_counted_as_waits() -> None:
    sem = ct.Semaphore(0)
    assert not sem.acquire(timeout=0.05)
    stats = sem.stats()
    assert stats["timeouts"] == 1 and stats["acquired"] == 0
    assert stats["total_wait"] == 0.0, "only granted waits are summed"
