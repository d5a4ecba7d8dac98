"""Each limiter configured for "R requests per second, burst 1", used the way its docs show.

A contender makes a fresh limiter and hands back one blocking acquire: a plain function for
threads, a coroutine function for asyncio (made inside the running loop, since some peers bind
to it). Peers that cannot express burst 1 say so in ``config``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import crewthrottle as ct

SyncAcquire = Callable[[], None]
AsyncAcquire = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Contender:
    name: str
    config: str
    ours: bool = False
    make_sync: Callable[[], SyncAcquire] | None = None
    make_async: Callable[[], AsyncAcquire] | None = None
    burst_one: bool = True  # False: the peer cannot limit bursts to one (excluded from latency)


# --- ours ----------------------------------------------------------------------------------


def _ours_limiter(rate: int, margin: float | None = None) -> Contender:
    # margin=None is the default (window / 200, at least 50 ms: each start stays counted that
    # much longer, for the jitter between a grant and the provider counting the request).
    options: dict[str, float] = {} if margin is None else {"margin": margin}
    default_margin = ct.Limiter(rpm=rate, window=1.0).margin

    def make_sync() -> SyncAcquire:
        lim = ct.Limiter(rpm=rate, window=1.0, burst=1, **options)
        return lambda: lim.acquire().release()

    def make_async() -> AsyncAcquire:
        lim = ct.Limiter(rpm=rate, window=1.0, burst=1, **options)

        async def acquire() -> None:
            (await lim.acquire_async()).release()

        return acquire

    config = f"rpm={rate}, window=1.0, burst=1" + (
        f" (default margin {default_margin:g})" if margin is None else f", margin={margin:g}"
    )
    return Contender("crewthrottle.Limiter", config, True, make_sync, make_async)


def _ours_bucket(rate: int) -> Contender:
    def make_sync() -> SyncAcquire:
        bucket = ct.TokenBucket(rate, per=1.0, burst=1)

        def acquire() -> None:
            bucket.acquire()

        return acquire

    def make_async() -> AsyncAcquire:
        bucket = ct.TokenBucket(rate, per=1.0, burst=1)

        async def acquire() -> None:
            await bucket.acquire_async()

        return acquire

    return Contender(
        "crewthrottle.TokenBucket", f"({rate}, per=1.0, burst=1)", True, make_sync, make_async
    )


# --- peers ---------------------------------------------------------------------------------


def _pyrate(rate: int) -> Contender:
    from pyrate_limiter import AbstractBucket, BucketAsyncWrapper, Duration, Limiter, Rate
    from pyrate_limiter.buckets.in_memory_bucket import InMemoryBucket

    period_ms = 1000 // rate

    def limiter(bucket: AbstractBucket) -> Limiter:
        # As pyrate's own create_inmemory_limiter() builds a blocking limiter (buffer_ms=50).
        return Limiter(
            bucket, raise_when_fail=False, max_delay=Duration.DAY, retry_until_max_delay=True
        )

    def make_sync() -> SyncAcquire:
        lim = limiter(InMemoryBucket([Rate(1, period_ms)]))

        def acquire() -> None:
            lim.try_acquire("k")

        return acquire

    def make_async() -> AsyncAcquire:
        lim = limiter(BucketAsyncWrapper(InMemoryBucket([Rate(1, period_ms)])))

        async def acquire() -> None:
            await lim.try_acquire_async("k")

        return acquire

    return Contender(
        "pyrate-limiter",
        f"Rate(1, {period_ms} ms), max_delay=DAY (blocking)",
        False,
        make_sync,
        make_async,
    )


def _langchain(rate: int) -> Contender:
    from langchain_core.rate_limiters import InMemoryRateLimiter

    def make() -> InMemoryRateLimiter:
        return InMemoryRateLimiter(requests_per_second=rate, max_bucket_size=1)

    def make_sync() -> SyncAcquire:
        lim = make()

        def acquire() -> None:
            lim.acquire()

        return acquire

    def make_async() -> AsyncAcquire:
        lim = make()

        async def acquire() -> None:
            await lim.aacquire()

        return acquire

    return Contender(
        "langchain InMemoryRateLimiter",
        f"requests_per_second={rate}, max_bucket_size=1 (polls every 0.1 s)",
        False,
        make_sync,
        make_async,
    )


def _throttled(rate: int) -> Contender:
    import throttled
    import throttled.asyncio as athrottled

    def make_sync() -> SyncAcquire:
        lim = throttled.Throttled(
            key="k",
            quota=throttled.per_sec(rate, burst=1),
            store=throttled.MemoryStore(),
            timeout=10.0,
        )

        def acquire() -> None:
            while lim.limit().limited:
                pass

        return acquire

    def make_async() -> AsyncAcquire:
        lim = athrottled.Throttled(
            key="k",
            quota=athrottled.per_sec(rate, burst=1),
            store=athrottled.MemoryStore(),
            timeout=10.0,
        )

        async def acquire() -> None:
            while (await lim.limit()).limited:
                pass

        return acquire

    return Contender(
        "throttled-py",
        f"token_bucket per_sec({rate}, burst=1), timeout=10.0 (retry_after in whole s)",
        False,
        make_sync,
        make_async,
    )


def _limits(rate: int) -> Contender:
    from limits import RateLimitItemPerSecond, aio, storage, strategies

    item = RateLimitItemPerSecond(rate)

    def make_sync() -> SyncAcquire:
        lim = strategies.MovingWindowRateLimiter(storage.MemoryStorage())

        def acquire() -> None:
            # The retry loop users write: sleep until the window says a slot frees up.
            while not lim.hit(item, "k"):
                reset = lim.get_window_stats(item, "k").reset_time
                time.sleep(max(reset - time.time(), 0.001))

        return acquire

    def make_async() -> AsyncAcquire:
        lim = aio.strategies.MovingWindowRateLimiter(aio.storage.MemoryStorage())

        async def acquire() -> None:
            while not await lim.hit(item, "k"):
                reset = (await lim.get_window_stats(item, "k")).reset_time
                await asyncio.sleep(max(reset - time.time(), 0.001))

        return acquire

    return Contender(
        "limits (moving window)",
        f"{rate}/second + sleep-until-reset retry (burst {rate}: no sub-second windows)",
        False,
        make_sync,
        make_async,
        burst_one=False,
    )


def _aiolimiter(max_rate: float, period: float, burst_one: bool) -> Contender:
    from aiolimiter import AsyncLimiter

    def make_async() -> AsyncAcquire:
        lim = AsyncLimiter(max_rate, period)

        async def acquire() -> None:
            await lim.acquire()

        return acquire

    note = "" if burst_one else f" (bucket of {max_rate:g}: bursts {max_rate:g})"
    return Contender(
        "aiolimiter",
        f"AsyncLimiter({max_rate:g}, {period:g}){note}; one loop only",
        False,
        None,
        make_async,
        burst_one=burst_one,
    )


def rate_contenders(
    rate: int, *, variants: bool = False, margin: float | None = None
) -> list[Contender]:
    """Ours first, then the peers users would pick instead, all at ``rate``/s with burst 1.

    ``variants`` adds our Limiter without its margin, to tell the margin's cost from the rest;
    ``margin`` sets our Limiter's margin (the wake-up benchmark measures waking, not policy).
    """
    ours = [_ours_limiter(rate, margin), *([_ours_limiter(rate, 0.0)] if variants else [])]
    return [
        *ours,
        _ours_bucket(rate),
        _pyrate(rate),
        _langchain(rate),
        _throttled(rate),
        _limits(rate),
        _aiolimiter(rate, 1.0, burst_one=False),
        _aiolimiter(1, 1.0 / rate, burst_one=True),
    ]
