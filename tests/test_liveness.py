"""Liveness (issue 9): no waiter is held up by another waiter's blocked or closed event loop,
and a grant made for a waiter that can never take it comes back at once."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import crewthrottle as ct


@contextmanager
def gc_disabled() -> Iterator[None]:
    """Prove that what comes back does not come back by garbage collection."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def start_blocked_loop(
    limiter: ct.Limiter, tasks: int, block_for: float, wait_until: Callable[..., None]
) -> tuple[threading.Thread, dict[str, float]]:
    """A thread running an event loop with `tasks` tasks queued on `limiter`, after which the
    loop blocks (a synchronous call inside a coroutine) for `block_for` seconds."""
    times: dict[str, float] = {}
    queued_before = limiter.stats()["waiting"]

    async def main() -> None:
        waiters = [asyncio.create_task(limiter.acquire_async()) for _ in range(tasks)]
        while limiter.stats()["waiting"] < queued_before + tasks:
            await asyncio.sleep(0.001)
        times["blocked"] = time.monotonic()
        time.sleep(block_for)  # the loop is blocked: none of its callbacks or timers run
        times["unblocked"] = time.monotonic()
        for permit in await asyncio.gather(*waiters):
            permit.release()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    wait_until(lambda: "blocked" in times, "the event loop's tasks to queue")
    return thread, times


def test_a_thread_behind_a_blocked_event_loop_is_served_when_the_window_frees(
    wait_until: Callable[..., None], promptly: Callable[..., Any]
) -> None:
    # Invariant: a waiter is served as soon as the limits allow, whatever the state of the
    # event loops of the waiters ahead of it. Here the window frees at 1 s (plus the margin)
    # while the loop of the two waiters ahead stays blocked until 4 s.
    limiter = ct.Limiter(rpm=3, window=1.0, margin=0.05)
    started = time.monotonic()
    held = [limiter.acquire() for _ in range(3)]  # the whole window's budget
    for permit in held:
        permit.release()
    loop_thread, times = start_blocked_loop(limiter, tasks=2, block_for=3.0, wait_until=wait_until)
    # Not the main thread: that one wakes every 50 ms anyway, to look for Ctrl-C.
    permit = promptly(lambda: limiter.acquire(timeout=10))
    served = time.monotonic()
    permit.release()
    loop_thread.join(10)
    assert not loop_thread.is_alive()
    assert served - started < 2.5, f"served at {served - started:.2f} s"
    assert served < times["unblocked"] - 1.0, "the thread did not wait for the blocked loop"


def test_a_task_behind_a_blocked_event_loop_is_served_on_its_own_loop(
    wait_until: Callable[..., None],
) -> None:
    limiter = ct.Limiter(rpm=3, window=1.0, margin=0.05)
    started = time.monotonic()
    for _ in range(3):
        limiter.acquire().release()
    loop_thread, times = start_blocked_loop(limiter, tasks=2, block_for=3.0, wait_until=wait_until)

    async def other_loop() -> float:
        permit = await limiter.acquire_async(timeout=10)
        permit.release()
        return time.monotonic()

    served = asyncio.run(other_loop())
    loop_thread.join(10)
    assert served - started < 2.5, f"served at {served - started:.2f} s"
    assert served < times["unblocked"] - 1.0


def stranded_tasks(
    acquire: Callable[[], Awaitable[Any]], waiting: Callable[[], int], tasks: int
) -> tuple[asyncio.AbstractEventLoop, list[asyncio.Task[Any]]]:
    """A loop, not running and never to run again, with `tasks` tasks queued by `acquire`
    (`run_until_complete` returned; the tasks were never cancelled). The tasks are returned so
    that they stay referenced: nothing here may come back by garbage collection."""
    loop = asyncio.new_event_loop()
    queued: list[asyncio.Task[Any]] = []

    async def queue_them() -> None:
        queued.extend(loop.create_task(acquire()) for _ in range(tasks))
        while waiting() < tasks:
            await asyncio.sleep(0.001)

    loop.run_until_complete(queue_them())
    return loop, queued


def stranded_on(limiter: ct.Limiter, tasks: int) -> tuple[Any, list[Any]]:
    return stranded_tasks(limiter.acquire_async, lambda: limiter.stats()["waiting"], tasks)


def test_a_grant_for_a_task_of_a_closed_loop_goes_back_at_once(
    promptly: Callable[..., Any],
) -> None:
    limiter = ct.Limiter(max_concurrent=1)
    held = limiter.acquire()
    loop, _tasks = stranded_on(limiter, tasks=2)
    loop.close()
    with gc_disabled():
        held.release()  # served to the stranded tasks, who cannot take it: it comes back
        permit = promptly(lambda: limiter.acquire(timeout=2))
        stats = limiter.stats()
        assert (stats["in_flight"], stats["waiting"], stats["cancelled"]) == (1, 0, 2)
        permit.release()


def test_a_grant_woken_on_a_stopped_loop_comes_back_when_the_loop_closes() -> None:
    limiter = ct.Limiter(max_concurrent=1)
    held = limiter.acquire()
    loop, _tasks = stranded_on(limiter, tasks=2)
    with gc_disabled():
        held.release()  # handed to the first task: its wake-up waits in the stopped loop
        assert limiter.stats()["in_flight"] == 1
        loop.close()  # drops the wake-up unrun: the task can never take its grant
        stats = limiter.stats()
        assert (stats["in_flight"], stats["waiting"], stats["cancelled"]) == (0, 0, 2)
        limiter.acquire(timeout=0).release()


def test_a_thread_behind_tasks_of_a_closed_loop_is_served_when_the_window_frees(
    promptly: Callable[..., Any],
) -> None:
    # The reviewer's case: a thread behind two stranded waiters was still waiting after 3 s.
    limiter = ct.Limiter(rpm=1, window=1.0, margin=0.05)
    limiter.acquire().release()
    started = time.monotonic()
    loop, _tasks = stranded_on(limiter, tasks=2)
    loop.close()
    with gc_disabled():
        permit = promptly(lambda: limiter.acquire(timeout=5))
        served = time.monotonic() - started
        permit.release()
    assert served < 2.0, f"served after {served:.2f} s"
    assert limiter.stats()["cancelled"] == 2


def test_a_semaphore_skips_waiters_of_a_closed_loop(promptly: Callable[..., Any]) -> None:
    sem = ct.Semaphore(0)
    loop, _tasks = stranded_tasks(sem.acquire_async, lambda: sem.stats()["waiting"], tasks=2)
    loop.close()
    with gc_disabled():
        sem.release()
        assert promptly(lambda: sem.acquire(timeout=2)) is True
        assert sem.stats()["cancelled"] == 2


def test_a_token_bucket_skips_waiters_of_a_closed_loop(promptly: Callable[..., Any]) -> None:
    bucket = ct.TokenBucket(20, per=1.0, burst=1)
    assert bucket.acquire()
    loop, _tasks = stranded_tasks(bucket.acquire_async, lambda: bucket.stats()["waiting"], 2)
    loop.close()
    with gc_disabled():
        assert promptly(lambda: bucket.acquire(timeout=2)) is True
        assert bucket.stats()["cancelled"] == 2


# -- Found by the gate's model check (src/core/gate/model.rs) and the stress test -------------


def test_a_task_woken_in_its_loops_last_iteration_gives_its_grant_back_on_close() -> None:
    limiter = ct.Limiter(max_concurrent=1)
    held = limiter.acquire()
    loop = asyncio.new_event_loop()
    tasks: list[asyncio.Task[Any]] = []

    async def main() -> None:
        tasks.append(loop.create_task(limiter.acquire_async()))
        while limiter.stats()["waiting"] < 1:
            await asyncio.sleep(0.001)
        # Handed to the task; its wake-up runs in the loop's next (and last) iteration, which
        # also stops the loop, before the task itself can step.
        held.release()

    with gc_disabled():
        loop.run_until_complete(main())
        loop.close()
        stats = limiter.stats()
        assert (stats["in_flight"], stats["waiting"]) == (0, 0), stats


def test_a_task_whose_grant_came_too_late_is_served_when_the_window_frees(
    wait_until: Callable[..., None],
) -> None:
    # The task's loop blocks while its grant is handed to it and for longer than the window
    # and margin after, so the grant is given back when the task takes it; by then another
    # caller filled the window. The task must be served when that frees (1.05 s later).
    limiter = ct.Limiter(rpm=1, window=1.0, margin=0.05)
    limiter.acquire().release()  # the window is full for 1.05 s
    filled = threading.Event()
    late: dict[str, Any] = {}

    def other_caller() -> None:
        wait_until(lambda: limiter.stats()["requests_in_window"] == 0, "the window to free")
        assert limiter.try_acquire() is None  # serves the queue: hands the task its grant
        handed = time.monotonic()
        wait_until(lambda: time.monotonic() > handed + 1.15, "the grant to be too late")
        late["permit"] = limiter.try_acquire()  # the window's one request, for 1.05 s
        filled.set()

    async def main() -> bool:
        task = asyncio.ensure_future(limiter.acquire_async())
        await asyncio.sleep(0)  # queued, with a timer on this loop
        threading.Thread(target=other_caller, daemon=True).start()
        filled.wait(10)  # the loop is blocked until the window is full again
        done, _ = await asyncio.wait({task}, timeout=3.0)
        task.cancel()
        return bool(done)

    assert asyncio.run(main()), "the task was still waiting 3 s after the window had room"
    assert late["permit"] is not None
