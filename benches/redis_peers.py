"""The limiters that share one budget through Redis, each configured the way its docs show.

Two regimes, with the same limits for everyone:

- ``open``: 10^9 requests per 1 s window, which never binds: what a grant costs.
- ``paced``: 50 requests per 1 s window, burst 1 where the limiter can say so.

A contender is rebuilt by its ``key`` in every worker process (spawned processes cannot be
handed closures). An acquire gives back the grant's stamp on the clock that decided it:
``Permit.server_time`` (the Redis server's clock) for ours; for limits, the client's clock
just before the successful hit (limits stamps the hit with it); ``None`` for pyrate-limiter,
whose stamps (start time plus the delays it slept) are not the decision's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import crewthrottle as ct

OPEN_RATE = 10**9
RATE = 50
HOUR = 3600.0

SyncAcquire = Callable[[], "float | None"]
AsyncAcquire = Callable[[], Awaitable["float | None"]]


@dataclass(frozen=True)
class RedisContender:
    key: str  # how a worker process finds it again
    name: str
    config: str
    ours: bool
    make_sync: Callable[[str, str], SyncAcquire]  # (url, budget) -> acquire
    make_async: Callable[[str, str], Awaitable[AsyncAcquire]] | None = None
    burst_one: bool = True
    window: float = 1.0  # seconds its paced limit counts in (RATE per second in every case)


# --- ours ----------------------------------------------------------------------------------


def _ours(key: str, name: str, limits: dict[str, Any]) -> RedisContender:
    def limiter(url: str, budget: str) -> ct.Limiter:
        return ct.Limiter(name=budget, backend=ct.RedisBackend(url), **limits)

    def make_sync(url: str, budget: str) -> SyncAcquire:
        lim = limiter(url, budget)

        def acquire() -> float | None:
            permit = lim.acquire(timeout=60)
            permit.release()
            return permit.server_time

        return acquire

    async def make_async(url: str, budget: str) -> AsyncAcquire:
        lim = limiter(url, budget)

        async def acquire() -> float | None:
            permit = await lim.acquire_async(timeout=60)
            permit.release()
            return permit.server_time

        return acquire

    config = ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in limits.items()
    )
    window = float(limits.get("window", 60.0))
    return RedisContender(key, name, config, True, make_sync, make_async, window=window)


# --- peers ---------------------------------------------------------------------------------


def _limits(key: str, rate: int, per: str = "second") -> RedisContender:
    from limits import aio, parse, storage, strategies

    item = parse(f"{rate}/{per}")

    def make_sync(url: str, budget: str) -> SyncAcquire:
        lim = strategies.MovingWindowRateLimiter(storage.RedisStorage(url))

        def acquire() -> float | None:
            # The retry loop users write: sleep until the window says a slot frees up.
            while True:
                stamp = time.time()  # limits stamps the hit with the client's clock: this one
                if lim.hit(item, budget):
                    return stamp
                reset = lim.get_window_stats(item, budget).reset_time
                time.sleep(max(reset - time.time(), 0.001))

        return acquire

    async def make_async(url: str, budget: str) -> AsyncAcquire:
        store = aio.storage.RedisStorage(f"async+{url}", implementation="redispy")
        lim = aio.strategies.MovingWindowRateLimiter(store)

        async def acquire() -> float | None:
            while True:
                stamp = time.time()
                if await lim.hit(item, budget):
                    return stamp
                reset = (await lim.get_window_stats(item, budget)).reset_time
                await asyncio.sleep(max(reset - time.time(), 0.001))

        return acquire

    burst = "" if rate in (1, OPEN_RATE) else f" (burst {rate}: no sub-second windows)"
    return RedisContender(
        key,
        "limits (moving window, Redis)",
        f"{rate:g}/{per} + sleep-until-reset retry{burst}",
        False,
        make_sync,
        make_async,
        burst_one=rate in (1, OPEN_RATE),
    )


def _pyrate(key: str, rate: int, per_ms: int) -> RedisContender:
    from pyrate_limiter import Duration, Limiter, Rate, RedisBucket
    from redis import Redis
    from redis.asyncio import Redis as AsyncRedis

    def limiter(bucket: Any) -> Limiter:
        # Blocking, as pyrate's docs show for waiting callers (retry_until_max_delay: the
        # buckets are shared by several processes).
        return Limiter(
            bucket, raise_when_fail=False, max_delay=Duration.DAY, retry_until_max_delay=True
        )

    def make_sync(url: str, budget: str) -> SyncAcquire:
        lim = limiter(RedisBucket.init([Rate(rate, per_ms)], Redis.from_url(url), budget))

        def acquire() -> float | None:
            lim.try_acquire("k")
            return None

        return acquire

    async def make_async(url: str, budget: str) -> AsyncAcquire:
        bucket = await RedisBucket.init([Rate(rate, per_ms)], AsyncRedis.from_url(url), budget)
        lim = limiter(bucket)

        async def acquire() -> float | None:
            await lim.try_acquire_async("k")
            return None

        return acquire

    return RedisContender(
        key,
        "pyrate-limiter (RedisBucket)",
        f"Rate({rate:g}, {per_ms} ms), max_delay=DAY (blocking)",
        False,
        make_sync,
        make_async,
    )


# --- the regimes ---------------------------------------------------------------------------


def contenders(regime: str) -> list[RedisContender]:
    """Ours first, then the peers, all with the same limits in ``regime`` (open or paced)."""
    if regime == "open":
        return [
            _ours("ours-open", "crewthrottle.Limiter", {"rpm": OPEN_RATE, "window": 1.0}),
            _ours(
                "ours-open-mc",
                "crewthrottle.Limiter",
                {"max_concurrent": 1000, "rpm": OPEN_RATE, "window": 1.0},
            ),
            _limits("limits-open", OPEN_RATE),
            _pyrate("pyrate-open", OPEN_RATE, 1000),
        ]
    paced = {"rpm": RATE, "window": 1.0, "burst": 1}
    return [
        _ours("ours-paced", "crewthrottle.Limiter", {**paced, "margin": 0.0}),
        _ours("ours-paced-margin", "crewthrottle.Limiter", paced),  # default margin (50 ms)
        # The same 50/s as users configure it (per minute), with the default margin (0.3 s).
        _ours(
            "ours-paced-60",
            "crewthrottle.Limiter",
            {"rpm": RATE * 60, "window": 60.0, "burst": 1},
        ),
        _limits("limits-paced", RATE),
        _pyrate("pyrate-paced", 1, 1000 // RATE),
    ]


def by_key(key: str) -> RedisContender:
    """A contender by its key (in a worker process)."""
    for c in [ping(), *contenders("open"), *contenders("paced")]:
        if c.key == key:
            return c
    raise KeyError(key)


# --- idle waiters: a budget that lets nobody through for the next hour ----------------------


@dataclass(frozen=True)
class Blocked:
    """Waiters on a budget that lets nobody through while they are measured."""

    wait: Callable[[], object]  # a thread's wait
    make_async: Callable[[], Awaitable[Callable[[], Awaitable[object]]]]  # in the loop, once
    release: Callable[[], None]  # lets the threads through, where the limiter can


def blocked_ours_held(url: str, budget: str, _: float) -> Blocked:
    """Ours: max_concurrent=1, its permit held by the benchmark (released by the cleanup).

    window=1: a server younger than a window holds a new budget's first grant until a window
    after its start (it cannot tell the budget from one its restart lost), and the default
    window is a minute."""
    lim = ct.Limiter(max_concurrent=1, window=1.0, name=budget, backend=ct.RedisBackend(url))
    held = lim.acquire(timeout=60)

    async def make_async() -> Callable[[], Awaitable[object]]:
        return lim.acquire_async

    return Blocked(lambda: lim.acquire(timeout=HOUR).release(), make_async, held.release)


def blocked_ours_spent(url: str, budget: str, hold: float) -> Blocked:
    """Ours: rpm=1 per hour, the one request of the hour spent (threads time out after
    ``hold`` seconds). On a server younger than an hour the budget starts held (recovering)
    instead: either way its waiters hold a retry instant an hour away."""
    lim = ct.Limiter(rpm=1, window=HOUR, burst=1, name=budget, backend=ct.RedisBackend(url))
    permit = lim.try_acquire()
    if permit is not None:
        permit.release()

    def wait() -> None:
        with contextlib.suppress(ct.AcquireTimeout):
            lim.acquire(timeout=hold)

    async def make_async() -> Callable[[], Awaitable[object]]:
        return lim.acquire_async

    return Blocked(wait, make_async, lambda: None)


def _blocked_peer(c: RedisContender, url: str, budget: str) -> Blocked:
    wait = c.make_sync(url, budget)
    wait()  # spends the one request of the hour
    make_async = c.make_async
    assert make_async is not None

    async def in_loop() -> Callable[[], Awaitable[object]]:
        return await make_async(url, budget)

    return Blocked(wait, in_loop, lambda: None)  # they sleep an hour: left alone (daemons)


IdleCase = tuple[str, str, bool, Callable[[str, str, float], Blocked]]

IDLE_CASES: list[IdleCase] = [
    ("crewthrottle.Limiter", "max_concurrent=1, held", True, blocked_ours_held),
    ("crewthrottle.Limiter", "rpm=1, window=3600, spent (or recovering)", True, blocked_ours_spent),
    (
        "limits (moving window, Redis)",
        "1/hour, spent; sleep until reset",
        False,
        lambda url, budget, _: _blocked_peer(_limits("limits-idle", 1, "hour"), url, budget),
    ),
    (
        "pyrate-limiter (RedisBucket)",
        "Rate(1, 1 h), spent; blocking",
        False,
        lambda url, budget, _: _blocked_peer(
            _pyrate("pyrate-idle", 1, int(HOUR * 1000)), url, budget
        ),
    ),
]


def ping() -> RedisContender:
    """No limiter: one PING per "grant", with redis-py (the round trip every grant needs)."""
    from redis import Redis
    from redis.asyncio import Redis as AsyncRedis

    def make_sync(url: str, _: str) -> SyncAcquire:
        client = Redis.from_url(url)

        def acquire() -> float | None:
            client.ping()
            return None

        return acquire

    async def make_async(url: str, _: str) -> AsyncAcquire:
        client = AsyncRedis.from_url(url)

        async def acquire() -> float | None:
            await client.ping()
            return None

        return acquire

    return RedisContender(
        "ping", "baseline: redis-py PING", "no limiter", False, make_sync, make_async
    )
