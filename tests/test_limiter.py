"""Limiter: the safety guarantees, checked from recorded timestamps, with threads and tasks
on two event loops sharing one limiter at the same time."""

from __future__ import annotations

import asyncio
import inspect
import random
import sys
import threading
import time

import pytest
from tests._timeline import max_in_window, max_overlap

import crewthrottle as ct

# Recorded times lag the native grant by scheduling noise (2 shared cores): windows are
# checked slightly shorter than the limiter's, and bursts with this much slack.
SLACK = 0.05


class Recorder:
    """Collects (start, end, tokens) of every permit, as its holder saw it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: list[tuple[float, float, int]] = []

    def add(self, start: float, end: float, tokens: int) -> None:
        with self.lock:
            self.records.append((start, end, tokens))


def run_threads(
    limiter: ct.Limiter, rec: Recorder, threads: int, calls: int, seed: int
) -> list[threading.Thread]:
    def worker(i: int) -> None:
        rng = random.Random(seed + i)
        for _ in range(calls):
            tokens = rng.randint(1, 20)
            with limiter.acquire(tokens) as permit:
                start = time.monotonic()
                time.sleep(rng.uniform(0, 0.01))
                end = time.monotonic()
                assert permit.tokens == tokens
            rec.add(start, end, tokens)

    return [threading.Thread(target=worker, args=(i,)) for i in range(threads)]


def run_loop(limiter: ct.Limiter, rec: Recorder, tasks: int, seed: int) -> threading.Thread:
    async def task(rng: random.Random) -> None:
        tokens = rng.randint(1, 20)
        async with await limiter.acquire_async(tokens):
            start = time.monotonic()
            await asyncio.sleep(rng.uniform(0, 0.01))
            end = time.monotonic()
        rec.add(start, end, tokens)

    async def main() -> None:
        await asyncio.gather(*(task(random.Random(seed + i)) for i in range(tasks)))

    return threading.Thread(target=asyncio.run, args=(main(),))


def test_threads_and_two_event_loops_never_exceed_any_limit() -> None:
    """Invariants: never more than max_concurrent in flight; never more than rpm requests nor
    tpm tokens in any window; never more than burst + rate*t in a shorter span t."""
    rpm, tpm, window, burst, max_concurrent = 100, 1000, 1.0, 3, 4
    limiter = ct.Limiter(
        max_concurrent=max_concurrent, rpm=rpm, tpm=tpm, window=window, burst=burst
    )
    rec = Recorder()
    workers = run_threads(limiter, rec, threads=16, calls=4, seed=0)
    workers += [
        run_loop(limiter, rec, tasks=100, seed=1000),
        run_loop(limiter, rec, tasks=100, seed=2000),
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert not any(w.is_alive() for w in workers), "a worker hung"
    assert len(rec.records) == 16 * 4 + 200

    starts = [s for s, _, _ in rec.records]
    tokens = [t for _, _, t in rec.records]
    assert max_overlap([(s, e) for s, e, _ in rec.records]) <= max_concurrent
    assert max_in_window(starts, window - SLACK) <= rpm
    assert max_in_window(starts, window - SLACK, tokens) <= tpm
    interval = window / rpm
    for span in (0.001, 0.02, 0.1):
        assert max_in_window(starts, span) <= burst + (span + SLACK) / interval
    stats = limiter.stats()
    assert (stats["in_flight"], stats["waiting"], stats["acquired"]) == (0, 0, 264)
    assert stats["tokens_granted"] == sum(tokens)


def test_rpm_caps_every_window_with_burst() -> None:
    """A backlog against rpm=20 per 0.5 s: at most 20 started in any 0.5 s window."""
    limiter = ct.Limiter(rpm=20, window=0.5, burst=5)
    starts: list[float] = []
    deadline = time.monotonic() + 1.6
    while time.monotonic() < deadline:
        limiter.acquire().release()
        starts.append(time.monotonic())
    assert max_in_window(starts, 0.5 - SLACK) <= 20
    # The whole budget is offered: the first window alone allows 20.
    assert max_in_window(starts, 0.5 + SLACK) >= 20


def test_one_request_may_take_all_of_tpm() -> None:
    limiter = ct.Limiter(tpm=500, window=0.5)
    with limiter.acquire(500):
        pass
    assert limiter.try_acquire(1) is None
    start = time.monotonic()
    limiter.acquire(500).release()
    assert time.monotonic() - start >= 0.4


def test_settle_refunds_unused_tokens() -> None:
    limiter = ct.Limiter(tpm=1000, window=60)
    permit = limiter.acquire(900)
    assert limiter.try_acquire(200) is None
    permit.settle(100)
    assert permit.tokens == 100
    second = limiter.try_acquire(800)
    assert second is not None
    second.settle(1200)  # the provider counted more than reserved: charged in full
    assert limiter.stats()["tokens_in_window"] == 1300
    assert limiter.try_acquire(1) is None


def test_pause_holds_all_new_permits() -> None:
    limiter = ct.Limiter(max_concurrent=10)
    limiter.pause(0.3)
    assert limiter.try_acquire() is None
    assert limiter.stats()["paused_for"] > 0.1
    start = time.monotonic()
    limiter.acquire().release()
    assert time.monotonic() - start >= 0.25


def test_permit_release_is_idempotent_and_counts_are_exact() -> None:
    limiter = ct.Limiter(max_concurrent=2)
    permit = limiter.acquire()
    permit.release()
    permit.release()
    assert permit.released
    with limiter, limiter:
        assert limiter.stats()["in_flight"] == 2
        assert limiter.try_acquire() is None
    assert limiter.stats()["in_flight"] == 0


def test_decorator_keeps_name_doc_signature_for_sync_and_async() -> None:
    limiter = ct.Limiter(max_concurrent=1)
    seen: list[int] = []

    @limiter
    def add(a: int, b: int = 2) -> int:
        """Adds."""
        seen.append(limiter.stats()["in_flight"])
        return a + b

    @limiter
    async def aadd(a: int, *, b: int = 2) -> int:
        """Adds, async."""
        seen.append(limiter.stats()["in_flight"])
        return a + b

    assert (add.__name__, add.__doc__) == ("add", "Adds.")
    assert str(inspect.signature(add)) == "(a: 'int', b: 'int' = 2) -> 'int'"
    assert inspect.iscoroutinefunction(aadd)
    assert str(inspect.signature(aadd)) == "(a: 'int', *, b: 'int' = 2) -> 'int'"
    assert add(1) == 3
    assert asyncio.run(aadd(1, b=5)) == 6
    assert seen == [1, 1]
    assert limiter.stats()["in_flight"] == 0
    with pytest.raises(TypeError, match="callable"):
        limiter(42)  # type: ignore[call-overload]


def test_copies_are_the_same_limiter() -> None:
    import copy

    limiter = ct.Limiter(rpm=10)
    assert copy.copy(limiter) is limiter
    assert copy.deepcopy({"l": limiter})["l"] is limiter


def test_repr_shows_configuration_and_state() -> None:
    limiter = ct.Limiter(max_concurrent=3, rpm=600, name="openai")
    with limiter:
        text = repr(limiter)
    assert text == (
        '<crewthrottle.Limiter "openai" max_concurrent=3 rpm=600 tpm=None window=60.0 '
        "burst=10 margin=0.3: in_flight=1 waiting=0>"
    )
    assert limiter.burst == 10, "default burst: about one second's share of rpm"


def test_settle_refuses_absurd_usage_instead_of_wedging_the_window() -> None:
    limiter = ct.Limiter(tpm=100, window=60)
    permit = limiter.acquire(10)
    with pytest.raises(ValueError, match="actual_tokens"):
        permit.settle(2**64 - 1)
    with pytest.raises(ValueError, match="actual_tokens"):
        permit.settle(-1)
    assert limiter.stats()["tokens_in_window"] == 10


def test_endless_huge_settles_never_wrap_the_token_count() -> None:
    # Issue 9: repeated huge settle() values wrapped the window's 64-bit token count, after
    # which every token request timed out forever. They saturate now, and leave with the window.
    limiter = ct.Limiter(tpm=1_000, window=0.5, margin=0.0)
    permits = [limiter.acquire() for _ in range(3_000)]  # no tokens reserved: none wait
    for permit in permits:
        permit.settle(2**53)  # 3,000 * 2**53 > 2**64
        permit.release()
    assert limiter.stats()["tokens_in_window"] >= 1_000
    with pytest.raises(ct.AcquireTimeout):
        limiter.acquire(tokens=1, timeout=0.1)
    time.sleep(0.5)  # the window passes: every huge entry leaves it
    assert limiter.stats()["tokens_in_window"] == 0
    limiter.acquire(tokens=1_000, timeout=1).release()


def test_requests_are_counted_from_when_their_thread_can_run() -> None:
    # Issue 9 (the unexplained 429): a thread granted a permit must get the GIL back before
    # its request can start, and under contention that takes a long while. The limiter counts
    # each start from when the thread takes its grant with the GIL held, so the starts the
    # threads record themselves never put more than rpm in any window.
    rpm, window = 5, 1.0
    limiter = ct.Limiter(rpm=rpm, window=window, margin=0.01)
    starts: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def hog() -> None:  # holds the GIL for whole switch intervals
        n = 0
        while not stop.is_set():
            n += 1

    def worker() -> None:
        while not stop.is_set():
            try:
                permit = limiter.acquire(timeout=0.5)
            except ct.AcquireTimeout:
                continue
            with lock:
                starts.append(time.monotonic())
            permit.release()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.05)
    threads = [threading.Thread(target=hog) for _ in range(2)]
    threads += [threading.Thread(target=worker) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        time.sleep(4.0)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        sys.setswitchinterval(interval)
    assert len(starts) >= 3 * rpm
    assert max_in_window(starts, window) <= rpm, sorted(starts)
