"""`Semaphore` and `BoundedSemaphore`: drop-in replacements for `threading`'s (issue 2, item 2).

The behavioural tests run against `threading`'s classes too: a test that `threading` fails
would be testing our guess, not the drop-in contract. Concurrency tests state their invariant
and check it from recorded data, never from timing.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import crewthrottle as ct

SemaphoreClass = Callable[..., Any]

ALL = {
    "crewthrottle.Semaphore": ct.Semaphore,
    "crewthrottle.BoundedSemaphore": ct.BoundedSemaphore,
    "threading.Semaphore": threading.Semaphore,
    "threading.BoundedSemaphore": threading.BoundedSemaphore,
}
BOUNDED = {k: v for k, v in ALL.items() if k.endswith("BoundedSemaphore")}
UNBOUNDED = {k: v for k, v in ALL.items() if k not in BOUNDED}
NATIVE = {k: v for k, v in ALL.items() if k.startswith("crewthrottle.")}

REPR = re.compile(r"<(?P<cls>[\w.]+) at 0x[0-9a-f]+: value=(?P<value>\d+)(?:/(?P<bound>\d+))?>")


def by_name(classes: dict[str, SemaphoreClass]) -> Any:
    return pytest.mark.parametrize("cls", list(classes.values()), ids=list(classes))


def value_of(sem: Any) -> int:
    """The current value, read from the repr (the one view threading offers too)."""
    match = REPR.fullmatch(repr(sem))
    assert match, f"unexpected repr {sem!r}"
    return int(match["value"])


# -- construction --------------------------------------------------------------------------


@by_name(ALL)
def test_default_value_is_one(cls: SemaphoreClass) -> None:
    sem = cls()
    assert sem.acquire(blocking=False) is True
    assert sem.acquire(blocking=False) is False


@by_name(ALL)
def test_value_keyword_and_zero_are_accepted(cls: SemaphoreClass) -> None:
    assert value_of(cls(value=2)) == 2
    empty = cls(0)
    assert value_of(empty) == 0
    assert empty.acquire(blocking=False) is False


@by_name(ALL)
def test_negative_value_is_a_value_error(cls: SemaphoreClass) -> None:
    with pytest.raises(ValueError, match="value must be >= 0"):
        cls(-1)


def test_bounded_semaphore_is_a_semaphore_like_threading() -> None:
    assert isinstance(ct.BoundedSemaphore(), ct.Semaphore)
    assert issubclass(ct.BoundedSemaphore, ct.Semaphore)
    assert not isinstance(ct.Semaphore(), ct.BoundedSemaphore)
    # The standard library's classes are related the same way.
    assert isinstance(threading.BoundedSemaphore(), threading.Semaphore)


# -- acquire ---------------------------------------------------------------------------------


@by_name(ALL)
def test_acquire_returns_true_and_takes_a_permit(cls: SemaphoreClass) -> None:
    sem = cls(2)
    assert sem.acquire() is True
    assert sem.acquire(True, None) is True
    assert value_of(sem) == 0
    assert sem.acquire(False) is False
    assert sem.acquire(blocking=False, timeout=None) is False


@by_name(ALL)
def test_blocking_takes_any_truthy_value_like_threading(cls: SemaphoreClass) -> None:
    # `sem.acquire(0)` is an old but common spelling of a non-blocking acquire.
    assert cls(1).acquire(0) is True
    sem = cls(0)
    assert sem.acquire(0) is False
    assert sem.acquire(blocking=0) is False
    assert cls(1).acquire(1) is True


@by_name(ALL)
def test_timeout_on_an_empty_semaphore_returns_false_after_about_that_long(
    cls: SemaphoreClass,
) -> None:
    sem = cls(0)
    start = time.monotonic()
    assert sem.acquire(timeout=0.05) is False
    elapsed = time.monotonic() - start
    assert 0.045 <= elapsed < 5.0, elapsed
    assert sem.acquire(timeout=0) is False


@by_name(ALL)
def test_timeout_on_an_available_permit_returns_true(cls: SemaphoreClass) -> None:
    sem = cls(1)
    assert sem.acquire(timeout=0) is True
    assert value_of(sem) == 0


@by_name(ALL)
def test_timeout_with_non_blocking_is_a_value_error(cls: SemaphoreClass) -> None:
    sem = cls(1)
    with pytest.raises(ValueError, match="timeout"):
        sem.acquire(False, timeout=1)
    with pytest.raises(ValueError, match="timeout"):
        sem.acquire(False, 1)
    assert value_of(sem) == 1, "a refused call takes nothing"


# -- release ---------------------------------------------------------------------------------


@by_name(ALL)
def test_release_n_gives_back_n_permits(cls: SemaphoreClass) -> None:
    sem = cls(3)
    for _ in range(3):
        assert sem.acquire(False)
    sem.release(2)
    assert value_of(sem) == 2
    sem.release()
    assert value_of(sem) == 3


@by_name(ALL)
def test_release_zero_or_negative_is_a_value_error(cls: SemaphoreClass) -> None:
    sem = cls(1)
    assert sem.acquire(False)
    for n in (0, -1):
        with pytest.raises(ValueError, match=r"\bn\b"):
            sem.release(n)
    assert value_of(sem) == 0


@by_name(ALL)
def test_release_of_a_non_number_is_a_type_error(cls: SemaphoreClass) -> None:
    sem = cls(1)
    assert sem.acquire(False)
    with pytest.raises(TypeError):
        sem.release("1")
    assert value_of(sem) == 0


@by_name(UNBOUNDED)
def test_unbounded_semaphore_may_be_released_above_its_initial_value(
    cls: SemaphoreClass,
) -> None:
    sem = cls(1)
    sem.release(2)
    assert value_of(sem) == 3


@by_name(BOUNDED)
def test_over_release_of_a_bounded_semaphore_is_a_value_error_and_changes_nothing(
    cls: SemaphoreClass,
) -> None:
    sem = cls(2)
    with pytest.raises(ValueError, match="released too many times"):
        sem.release()
    assert sem.acquire(False)
    with pytest.raises(ValueError, match="released too many times"):
        sem.release(2)
    assert value_of(sem) == 1
    sem.release()
    assert value_of(sem) == 2


# -- context manager and repr ----------------------------------------------------------------


@by_name(ALL)
def test_context_manager_holds_one_permit_and_returns_true(cls: SemaphoreClass) -> None:
    sem = cls(1)
    with sem as entered:
        assert entered is True
        assert value_of(sem) == 0
    assert value_of(sem) == 1
    with pytest.raises(KeyError), sem:
        raise KeyError("boom")
    assert value_of(sem) == 1, "an exception in the block gives the permit back"


@pytest.mark.parametrize(
    ("native", "stdlib", "shown"),
    [
        (ct.Semaphore, threading.Semaphore, "3"),
        (ct.BoundedSemaphore, threading.BoundedSemaphore, "2/3"),
    ],
    ids=["Semaphore", "BoundedSemaphore"],
)
def test_repr_has_the_standard_librarys_shape(
    native: SemaphoreClass, stdlib: SemaphoreClass, shown: str
) -> None:
    ours, theirs = native(3), stdlib(3)
    if shown == "2/3":
        ours.acquire()
        theirs.acquire()
    name = native.__name__
    assert re.fullmatch(rf"<crewthrottle\.{name} at 0x[0-9a-f]+: value={shown}>", repr(ours))
    assert re.fullmatch(rf"<threading\.{name} at 0x[0-9a-f]+: value={shown}>", repr(theirs))
    assert hex(id(ours)) in repr(ours)

    def shape(text: str) -> str:
        return re.sub(r"^<\w+\.", "<MODULE.", re.sub(r"0x[0-9a-f]+", "0xADDR", text))

    assert shape(repr(ours)) == shape(repr(theirs))


@pytest.mark.parametrize(
    ("native", "stdlib"),
    [(ct.Semaphore, threading.Semaphore), (ct.BoundedSemaphore, threading.BoundedSemaphore)],
    ids=["Semaphore", "BoundedSemaphore"],
)
def test_repr_of_a_subclass_names_the_subclass_like_threading(
    native: SemaphoreClass, stdlib: SemaphoreClass
) -> None:
    Ours = type("Pool", (native,), {"__module__": "app.limits"})
    Theirs = type("Pool", (stdlib,), {"__module__": "app.limits"})
    ours, theirs = Ours(2), Theirs(2)
    assert isinstance(ours, native)
    assert re.sub(r"0x[0-9a-f]+", "0x", repr(ours)) == re.sub(r"0x[0-9a-f]+", "0x", repr(theirs))
    assert repr(ours).startswith("<app.limits.Pool at 0x")


# -- threads ---------------------------------------------------------------------------------


def run_threads(count: int, target: Callable[[int], None]) -> None:
    """Start `count` threads on `target(i)`, join them all, and re-raise the first failure."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "a worker thread hung"
    if errors:
        raise errors[0]


class InFlight:
    """Counts holders of a permit under its own lock, remembering the most seen at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.entries = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.entries += 1
            self.most = max(self.most, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


@by_name(NATIVE)
def test_threads_never_hold_more_than_value_permits(cls: SemaphoreClass) -> None:
    """Invariant: never more than k holders at once; the recorded maximum reaches k."""
    k, threads, rounds = 3, 8, 40
    sem, seen = cls(k), InFlight()

    def worker(_: int) -> None:
        for _ in range(rounds):
            with sem:
                seen.enter()
                time.sleep(0.0005)  # the guarded work, so that holders overlap
                seen.leave()

    run_threads(threads, worker)
    assert seen.entries == threads * rounds
    assert seen.most <= k
    assert seen.most == k, "with 8 threads contending, all k permits were never used at once"
    assert sem.stats()["value"] == k
    assert sem.stats()["waiting"] == 0


@by_name(NATIVE)
def test_waiters_are_woken_in_arrival_order(cls: SemaphoreClass, wait_until: Any) -> None:
    """Invariant: with one release at a time, wake-ups follow the order of arrival.

    The semaphore starts full and is drained, so that a bounded one may be released.
    """
    count = 5
    sem, woken, lock = cls(count), [], threading.Lock()
    for _ in range(count):
        assert sem.acquire(False)

    def waiter(i: int) -> None:
        assert sem.acquire(timeout=30)
        with lock:
            woken.append(i)

    threads = []
    for i in range(count):
        thread = threading.Thread(target=waiter, args=(i,))
        thread.start()
        threads.append(thread)
        wait_until(lambda i=i: sem.stats()["waiting"] == i + 1, f"waiter {i} to queue")
    for released in range(1, count + 1):
        sem.release()
        wait_until(lambda n=released: len(woken) == n, f"wake-up number {released}")
    for thread in threads:
        thread.join(10)
    assert woken == list(range(count))


@by_name(NATIVE)
def test_release_n_wakes_exactly_n_waiters(cls: SemaphoreClass, wait_until: Any) -> None:
    """Invariant: release(3) with 5 waiters lets exactly 3 through and leaves 2 waiting."""
    sem, done, lock = cls(5), [], threading.Lock()
    for _ in range(5):
        assert sem.acquire(False)

    def waiter(i: int) -> None:
        assert sem.acquire(timeout=30)
        with lock:
            done.append(i)

    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(5)]
    for thread in threads:
        thread.start()
    wait_until(lambda: sem.stats()["waiting"] == 5, "5 waiters to queue")
    sem.release(3)
    wait_until(lambda: len(done) == 3, "3 wake-ups")
    stats = sem.stats()
    assert (stats["waiting"], stats["value"], len(done)) == (2, 0, 3)
    sem.release(2)
    for thread in threads:
        thread.join(10)
    assert sorted(done) == list(range(5))
    assert sem.stats()["value"] == 0


@by_name(NATIVE)
def test_a_timed_out_waiter_leaves_the_queue_and_is_counted(cls: SemaphoreClass) -> None:
    sem = cls(1)
    assert sem.acquire()
    assert sem.acquire(timeout=0.01) is False
    stats = sem.stats()
    assert (stats["waiting"], stats["timeouts"], stats["value"]) == (0, 1, 0)
    sem.release()
    assert sem.acquire(False), "the permit released after a timeout is still there"


@by_name(NATIVE)
def test_stats_keys(cls: SemaphoreClass) -> None:
    sem = cls(2)
    assert sem.acquire()
    stats = sem.stats()
    assert {"waiting", "acquired", "timeouts", "cancelled", "total_wait", "max_wait"} <= set(stats)
    assert stats["value"] == 1
    assert stats["acquired"] == 1
    assert stats["waiting"] == 0
    assert stats["total_wait"] >= 0.0
    assert stats["max_wait"] >= 0.0


# -- asyncio ---------------------------------------------------------------------------------


async def until_waiting(sem: Any, count: int, timeout: float = 10.0) -> None:
    """Yield to the loop until `count` acquisitions are queued (fail after `timeout`)."""
    deadline = time.monotonic() + timeout
    while sem.stats()["waiting"] < count:
        assert time.monotonic() < deadline, f"{count} waiters never queued"
        await asyncio.sleep(0.001)


@by_name(NATIVE)
def test_async_with_holds_a_permit_and_gives_it_back(cls: SemaphoreClass) -> None:
    sem = cls(1)

    async def main() -> None:
        async with sem:
            assert sem.stats()["value"] == 0
        assert sem.stats()["value"] == 1
        with pytest.raises(KeyError):
            async with sem:
                raise KeyError("boom")
        assert sem.stats()["value"] == 1

    asyncio.run(main())


@by_name(NATIVE)
def test_acquire_async_returns_a_bool(cls: SemaphoreClass) -> None:
    sem = cls(1)

    async def main() -> None:
        assert await sem.acquire_async() is True
        assert await sem.acquire_async(timeout=0) is False
        start = time.monotonic()
        assert await sem.acquire_async(timeout=0.05) is False
        elapsed = time.monotonic() - start
        assert 0.045 <= elapsed < 5.0, elapsed
        sem.release()
        assert await sem.acquire_async(timeout=0.05) is True

    asyncio.run(main())
    stats = sem.stats()
    assert (stats["timeouts"], stats["waiting"], stats["value"]) == (2, 0, 0)


@by_name(NATIVE)
def test_threads_and_two_event_loops_share_one_semaphore(cls: SemaphoreClass) -> None:
    """Invariant: never more than k holders at once across 4 threads and two event loops."""
    k = 3
    sem, seen = cls(k), InFlight()
    thread_rounds, tasks, task_rounds = 25, 15, 5

    def thread_worker() -> None:
        for _ in range(thread_rounds):
            with sem:
                seen.enter()
                time.sleep(0.0005)
                seen.leave()

    async def task_worker() -> None:
        for _ in range(task_rounds):
            async with sem:
                seen.enter()
                await asyncio.sleep(0.0005)
                seen.leave()

    async def loop_main() -> None:
        await asyncio.gather(*(task_worker() for _ in range(tasks)))

    def run(i: int) -> None:
        if i < 2:
            asyncio.run(loop_main())
        else:
            thread_worker()

    run_threads(6, run)
    assert seen.entries == 4 * thread_rounds + 2 * tasks * task_rounds
    assert seen.most <= k
    assert seen.most == k
    stats = sem.stats()
    assert (stats["value"], stats["waiting"]) == (k, 0)


@by_name(NATIVE)
def test_cancelling_waiting_tasks_loses_no_permit(cls: SemaphoreClass) -> None:
    sem = cls(1)
    finished: list[int] = []

    async def waiter(i: int) -> None:
        async with sem:
            finished.append(i)

    async def main() -> None:
        assert await sem.acquire_async()
        tasks = [asyncio.create_task(waiter(i)) for i in range(5)]
        await until_waiting(sem, 5)
        tasks[1].cancel()
        tasks[3].cancel()
        for i in (1, 3):
            with pytest.raises(asyncio.CancelledError):
                await tasks[i]
        assert sem.stats()["waiting"] == 3
        sem.release()
        await asyncio.gather(tasks[0], tasks[2], tasks[4])

    asyncio.run(main())
    assert finished == [0, 2, 4]
    stats = sem.stats()
    assert (stats["value"], stats["waiting"], stats["cancelled"]) == (1, 0, 2)


@by_name(NATIVE)
def test_cancelling_a_task_at_the_moment_it_is_granted_loses_no_permit(
    cls: SemaphoreClass,
) -> None:
    sem = cls(1)

    async def main() -> None:
        assert await sem.acquire_async()
        task = asyncio.create_task(sem.acquire_async())
        await until_waiting(sem, 1)
        sem.release()  # handed to the queued task, which has not run yet ...
        task.cancel()  # ... and is cancelled before it can see it
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert sem.stats()["value"] == 1
    assert sem.acquire(False)


@by_name(NATIVE)
def test_wait_for_timeout_and_cancelling_a_holder_lose_no_permit(cls: SemaphoreClass) -> None:
    sem = cls(1)

    async def hold(entered: asyncio.Event) -> None:
        async with sem:
            entered.set()
            await asyncio.Event().wait()  # until cancelled

    async def main() -> None:
        entered = asyncio.Event()
        holder = asyncio.create_task(hold(entered))
        await entered.wait()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(sem.acquire_async(), 0.05)
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
        assert await sem.acquire_async(timeout=5) is True
        sem.release()

    asyncio.run(main())
    stats = sem.stats()
    assert (stats["value"], stats["waiting"]) == (1, 0)
