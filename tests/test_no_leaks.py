"""No permit is ever lost: not on exceptions, timeouts, cancellation (while waiting, at the
moment of the grant, while holding), KeyboardInterrupt, or garbage collection."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

import crewthrottle as ct


def settled(limiter: ct.Limiter) -> tuple[int, int]:
    stats = limiter.stats()
    return stats["in_flight"], stats["waiting"]


def test_exception_in_guarded_block_releases() -> None:
    limiter = ct.Limiter(max_concurrent=1)
    for guard in (limiter, limiter.acquire):
        with (
            pytest.raises(RuntimeError),
            guard() if callable(guard) and guard is not limiter else guard,
        ):
            raise RuntimeError("boom")
        assert settled(limiter) == (0, 0)


def test_keyboard_interrupt_in_guarded_block_releases() -> None:
    limiter = ct.Limiter(max_concurrent=1)
    with pytest.raises(KeyboardInterrupt), limiter.acquire():
        raise KeyboardInterrupt
    assert settled(limiter) == (0, 0)


def test_garbage_collected_permit_is_released() -> None:
    limiter = ct.Limiter(max_concurrent=1)
    limiter.acquire()  # dropped at once
    gc.collect()
    assert settled(limiter) == (0, 0)
    permit = limiter.acquire()
    cycle: list[object] = [permit]
    cycle.append(cycle)
    del permit, cycle
    gc.collect()
    assert settled(limiter) == (0, 0)


def test_timeout_raises_acquire_timeout_and_leaves_nothing() -> None:
    limiter = ct.Limiter(max_concurrent=1)
    with limiter.acquire():
        with pytest.raises(ct.AcquireTimeout) as info:
            limiter.acquire(timeout=0.05)
        assert isinstance(info.value, TimeoutError)
        assert settled(limiter) == (1, 0)
    assert limiter.stats()["timeouts"] == 1
    assert settled(limiter) == (0, 0)


def test_async_timeout_raises_and_leaves_nothing() -> None:
    limiter = ct.Limiter(max_concurrent=1)

    async def main() -> None:
        async with await limiter.acquire_async():
            with pytest.raises(ct.AcquireTimeout):
                await limiter.acquire_async(timeout=0.05)

    asyncio.run(main())
    assert settled(limiter) == (0, 0)
    assert limiter.stats()["timeouts"] == 1


def test_cancelled_while_waiting() -> None:
    limiter = ct.Limiter(max_concurrent=1)

    async def main() -> None:
        held = await limiter.acquire_async()
        waiter = asyncio.create_task(limiter.acquire_async())
        while limiter.stats()["waiting"] == 0:
            await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert settled(limiter) == (1, 0)
        held.release()

    asyncio.run(main())
    assert settled(limiter) == (0, 0)
    assert limiter.stats()["cancelled"] == 1


def test_cancelled_at_the_moment_of_the_grant() -> None:
    """The permit is handed to the waiter, which is cancelled before it runs again."""
    limiter = ct.Limiter(max_concurrent=1)

    async def main() -> None:
        held = await limiter.acquire_async()
        waiter = asyncio.create_task(limiter.acquire_async())
        while limiter.stats()["waiting"] == 0:
            await asyncio.sleep(0)
        held.release()  # grants the waiter at once (it is the head of the queue)
        assert settled(limiter) == (1, 0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(main())
    assert settled(limiter) == (0, 0)


def test_cancelled_while_holding() -> None:
    limiter = ct.Limiter(max_concurrent=1)
    inside = asyncio.Event

    async def main() -> None:
        entered = inside()

        async def hold() -> None:
            async with limiter:
                entered.set()
                await asyncio.sleep(3600)

        task = asyncio.create_task(hold())
        await entered.wait()
        assert settled(limiter) == (1, 0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert settled(limiter) == (0, 0)


def test_unawaited_acquire_async_takes_no_place_in_the_queue() -> None:
    """An acquisition joins the queue at its first step, so one never awaited (or cancelled
    before it ran) cannot block the waiters behind it."""
    limiter = ct.Limiter(max_concurrent=1)
    with limiter.acquire():
        pending = limiter.acquire_async()
        assert settled(limiter) == (1, 0)
        pending.close()  # type: ignore[attr-defined]

    async def main() -> None:
        never_started = asyncio.create_task(limiter.acquire_async())
        never_started.cancel()
        assert await limiter.acquire_async(timeout=1) is not None

    asyncio.run(main())
    gc.collect()
    assert settled(limiter) == (0, 0)


def test_a_thread_waiter_is_woken_by_an_async_release_and_back() -> None:
    limiter = ct.Limiter(max_concurrent=1)
    got: list[str] = []

    async def main() -> None:
        held = await limiter.acquire_async()
        thread = threading.Thread(
            target=lambda: got.append(str(limiter.acquire(timeout=10).release()))
        )
        thread.start()
        while limiter.stats()["waiting"] == 0:
            await asyncio.sleep(0.001)
        held.release()
        await asyncio.get_running_loop().run_in_executor(None, thread.join)

    asyncio.run(main())
    assert got == ["None"]
    assert settled(limiter) == (0, 0)
