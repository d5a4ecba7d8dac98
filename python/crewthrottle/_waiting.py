"""The Python half of async waiting: awaits a native ticket without blocking the loop.

The native gate wakes a waiting task through ``loop.call_soon_threadsafe`` (from any thread,
for any loop), and a task sets a loop timer only when the gate asks it to: the first waiter of
each event loop ahead of the first waiting thread watches the instant a rate limit lets the head
of the queue through. Whatever ends the wait early (cancellation, an error, the coroutine being
closed) abandons the ticket, which gives back a grant made at that very moment; so does a loop
that is closed with the task still waiting (the gate notices when it cannot wake it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wake(future: asyncio.Future[None]) -> None:
    """Resolve ``future`` unless it is already done (called on its loop by its timer)."""
    if not future.done():
        future.set_result(None)


async def ready(value: T) -> T:
    """An awaitable that is already done."""
    return value


async def acquire(acquisition: Any, timeout: float | None) -> Any:
    """Join the queue now (at the first step), then wait if not granted at once."""
    done, value = acquisition.start()
    if done:
        return value
    return await wait(value, timeout)


async def acquire_or_fall_back(
    acquisition: Any, timeout: float | None, fallback: Callable[[BaseException], Any]
) -> Any:
    """:func:`acquire` on a shared budget; if its store cannot be reached, await the in-process
    acquisition ``fallback(error)`` returns instead (``RedisBackend(on_failure="local")``)."""
    from crewthrottle._native import BackendUnavailable

    try:
        return await acquire(acquisition, timeout)
    except BackendUnavailable as exc:
        return await fallback(exc)


async def wait(waiting: Any, timeout: float | None) -> Any:
    """Await a queued native acquisition; on timeout return (or raise) its timed-out result."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    try:
        while True:
            future: asyncio.Future[None] = loop.create_future()
            done, value = waiting.poll(loop, future)
            if done:
                return value
            delay: float | None = value
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    return waiting.abandon(timed_out=True)
                delay = left if delay is None else min(delay, left)
            timer = None if delay is None else loop.call_later(delay, wake, future)
            try:
                await future
            finally:
                if timer is not None:
                    timer.cancel()
    except BaseException:
        waiting.abandon(timed_out=False)
        raise
