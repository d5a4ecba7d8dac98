"""A `Limiter` on Redis (issue 7) inside one process: the same API as in memory, the same
guarantees, checked against a real `redis-server` and, where time matters, the server's clock
(``Permit.server_time``)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from tests._redis import RedisServer, free_port, port_of, redis_cli
from tests._timeline import max_in_window, max_overlap

import crewthrottle as ct


def shared(redis_url: str, name: str, *, lease: float = 3.0, **limits: Any) -> ct.Limiter:
    return ct.Limiter(name=name, backend=ct.RedisBackend(redis_url, lease=lease), **limits)


def test_a_backend_needs_a_name(redis_url: str) -> None:
    with pytest.raises(ValueError, match="name is required"):
        ct.Limiter(rpm=5, backend=ct.RedisBackend(redis_url))
    with pytest.raises(TypeError, match=r"backend must be a crewthrottle\.RedisBackend"):
        ct.Limiter(rpm=5, name="x", backend="redis://127.0.0.1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lease": 0}, "lease"),
        ({"lease": -1.0}, "lease"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": 1e9}, "timeout"),
        ({"prefix": "a{b}"}, "prefix"),
    ],
)
def test_bad_backend_arguments_are_named(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ct.RedisBackend("redis://127.0.0.1:1/0", **kwargs)
    with pytest.raises(ValueError, match="url"):
        ct.RedisBackend("http://127.0.0.1:6379")


def test_every_way_in_works_on_a_shared_budget(redis_url: str, budget_name: str) -> None:
    limiter = shared(redis_url, budget_name, max_concurrent=2, rpm=100, tpm=1_000, window=1.0)
    assert "on redis://" in repr(limiter) and limiter.backend is not None
    with limiter:
        assert limiter.stats()["in_flight"] == 1
    with limiter.acquire(tokens=300) as permit:
        assert permit.server_time is not None and abs(permit.server_time - time.time()) < 5
        permit.settle(120)
    permit = limiter.try_acquire(tokens=10)
    assert permit is not None
    permit.release()

    @limiter
    async def call() -> str:
        return "done"

    async def main() -> None:
        async with limiter:
            pass
        async with await limiter.acquire_async(tokens=5, timeout=5):
            pass
        assert await call() == "done"

    asyncio.run(main())
    stats = limiter.stats()
    assert (stats["in_flight"], stats["waiting"], stats["acquired"]) == (0, 0, 6)
    assert stats["tokens_in_window"] == 120 + 10 + 5
    assert stats["process_in_flight"] == 0


def test_a_timeout_leaves_nothing_queued(redis_url: str, budget_name: str) -> None:
    limiter = shared(redis_url, budget_name, max_concurrent=1)
    held = limiter.acquire()
    started = time.monotonic()
    with pytest.raises(ct.AcquireTimeout):
        limiter.acquire(timeout=0.3)
    assert 0.25 < time.monotonic() - started < 3
    with pytest.raises(ct.AcquireTimeout):
        asyncio.run(asyncio.wait_for(limiter.acquire_async(timeout=0.2), 5))
    assert limiter.try_acquire() is None
    held.release()
    stats = limiter.stats()
    assert (stats["in_flight"], stats["waiting"], stats["timeouts"]) == (0, 0, 2)


def test_a_cancelled_task_gives_its_place_back(redis_url: str, budget_name: str) -> None:
    limiter = shared(redis_url, budget_name, max_concurrent=1)

    async def main() -> None:
        held = await limiter.acquire_async()
        waiter = asyncio.create_task(limiter.acquire_async())
        while limiter.stats()["waiting"] == 0:
            await asyncio.sleep(0.005)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        held.release()
        async with await limiter.acquire_async(timeout=5):
            pass

    asyncio.run(main())
    stats = limiter.stats()
    assert (stats["in_flight"], stats["waiting"], stats["cancelled"]) == (0, 0, 1)


def test_rpm_is_exact_on_the_servers_clock_with_threads_and_tasks(
    redis_url: str, budget_name: str
) -> None:
    # Invariant: never more than rpm grants in any window, on the clock Redis decided by.
    rpm, window = 10, 1.0
    limiter = shared(redis_url, budget_name, rpm=rpm, window=window, margin=0.02)
    stamps: list[float] = []
    lock = threading.Lock()
    end = time.monotonic() + 3.0

    def thread() -> None:
        while time.monotonic() < end:
            with limiter.acquire(timeout=5) as permit:
                with lock:
                    stamps.append(permit.server_time or 0.0)

    async def tasks() -> None:
        async def one() -> None:
            while time.monotonic() < end:
                async with await limiter.acquire_async(timeout=5) as permit:
                    stamps.append(permit.server_time or 0.0)

        await asyncio.gather(*(one() for _ in range(3)))

    threads = [threading.Thread(target=thread) for _ in range(3)]
    threads.append(threading.Thread(target=asyncio.run, args=(tasks(),)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert max_in_window(stamps, window) <= rpm
    # The whole budget is used: 3 s of traffic is at least 3 windows' worth, less the margin.
    assert len(stamps) >= 3 * rpm


def test_max_concurrent_holds_across_threads(redis_url: str, budget_name: str) -> None:
    limiter = shared(redis_url, budget_name, max_concurrent=3)
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(5):
            with limiter.acquire(timeout=10):
                start = time.monotonic()
                time.sleep(0.01)
                with lock:
                    spans.append((start, time.monotonic()))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(spans) == 40
    assert max_overlap(spans) <= 3


def test_waiters_are_served_in_order(redis_url: str, budget_name: str) -> None:
    limiter = shared(redis_url, budget_name, max_concurrent=1)
    held = limiter.acquire()
    served: list[int] = []

    def wait(i: int) -> None:
        with limiter.acquire(timeout=10):
            served.append(i)

    threads = []
    for i in range(5):
        threads.append(threading.Thread(target=wait, args=(i,)))
        threads[-1].start()
        deadline = time.monotonic() + 5
        while limiter.stats()["waiting"] < i + 1 and time.monotonic() < deadline:
            time.sleep(0.005)
    held.release()
    for t in threads:
        t.join(20)
    assert served == list(range(5))


def test_a_pause_holds_every_process_and_resume_lifts_it(redis_url: str, budget_name: str) -> None:
    limiter = shared(redis_url, budget_name, rpm=100, window=1.0)
    other = shared(redis_url, budget_name, rpm=100, window=1.0)  # another process's view
    assert limiter.pause(30) is True
    assert limiter.pause(10) is False  # a pause is in force already
    deadline = time.monotonic() + 5
    while other.stats()["paused_for"] < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert other.try_acquire() is None
    limiter.resume()
    deadline = time.monotonic() + 5
    while other.stats()["paused_for"] > 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    other.acquire(timeout=5).release()


def test_other_limits_for_one_name_are_refused_then_replaced(
    redis_url: str, budget_name: str
) -> None:
    first = shared(redis_url, budget_name, rpm=10, window=1.0)
    first.acquire().release()
    second = shared(redis_url, budget_name, rpm=20, window=1.0)
    with pytest.raises(ct.LimitsConflict, match="rpm=10") as info:
        second.acquire(timeout=1)
    assert isinstance(info.value, ValueError)
    replacing = ct.Limiter(
        rpm=20,
        window=1.0,
        name=budget_name,
        backend=ct.RedisBackend(redis_url, replace_limits=True),
    )
    replacing.acquire().release()
    second.acquire(timeout=1).release()  # the stored limits are now its own


def test_an_unreachable_server_is_a_clear_error_in_bounded_time() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    limiter = ct.Limiter(rpm=5, name="unreachable", backend=ct.RedisBackend(url, timeout=0.5))
    for attempt in (
        lambda: limiter.acquire(timeout=60),
        limiter.try_acquire,
        lambda: asyncio.run(limiter.acquire_async(timeout=60)),
    ):
        started = time.monotonic()
        with pytest.raises(ct.BackendUnavailable, match=url) as info:
            attempt()
        assert isinstance(info.value, ConnectionError)
        assert time.monotonic() - started < 10


#: The longest a key of the budgets below may live when idle (ms): two counted windows
#: (1 s + 50 ms margin), three leases (1 s), and a minute.
IDLE_TTL_MS = 2 * 1.05 * 1000 + 3 * 1000 + 60_000


def budget_keys(redis_url: str, name: str) -> list[str]:
    return redis_cli(port_of(redis_url), "--scan", "--pattern", f"{{crewthrottle:{name}}}*").split()


def ttls(redis_url: str, keys: list[str]) -> list[int]:
    return [int(redis_cli(port_of(redis_url), "pttl", k)) for k in keys]


def test_keys_share_one_hash_tag_and_expire_when_idle(redis_url: str, budget_name: str) -> None:
    limiter = shared(redis_url, budget_name, max_concurrent=2, rpm=10, window=1.0, lease=1.0)
    limiter.acquire().release()
    keys = budget_keys(redis_url, budget_name)
    assert keys and all(k.startswith(f"{{crewthrottle:{budget_name}}}:v1:") for k in keys)
    left = ttls(redis_url, keys)
    assert all(0 < ttl <= IDLE_TTL_MS for ttl in left), left


def test_a_budget_only_ever_read_expires_too(redis_url: str, budget_name: str) -> None:
    # stats() and observe() create the budget's keys without any acquire: they expire as well.
    uses: list[tuple[str, Callable[[ct.Limiter], object]]] = [
        ("stats", lambda lim: lim.stats()),
        ("429", lambda lim: lim.observe({}, status=429)),
    ]
    for suffix, use in uses:
        name = f"{budget_name}/{suffix}"
        use(shared(redis_url, name, rpm=10, window=1.0, lease=1.0))
        deadline = time.monotonic() + 15
        while not (keys := budget_keys(redis_url, name)):
            assert time.monotonic() < deadline, "the budget never reached the server"
            time.sleep(0.02)
        left = ttls(redis_url, keys)
        assert all(0 < ttl <= IDLE_TTL_MS for ttl in left), (suffix, left)


def test_a_restarted_server_is_reconnected_to_and_treated_conservatively(
    wait_until: Callable[..., None],
) -> None:
    # The budget's state is lost with the server: for one window after, no rate grant (the
    # lost window may have been full), then service resumes, on the same limiter object.
    server = RedisServer().start()
    try:
        limiter = ct.Limiter(
            rpm=20,
            window=1.0,
            name="restart",
            backend=ct.RedisBackend(server.url, timeout=1.0, lease=2.0),
        )
        stamps = [limiter.acquire(timeout=5).server_time for _ in range(5)]
        server.kill()
        with pytest.raises(ct.BackendUnavailable):
            limiter.acquire(timeout=5)
        server.start()
        deadline = time.monotonic() + 15
        while True:
            try:
                permit = limiter.acquire(timeout=5)
                break
            except ct.BackendUnavailable:
                assert time.monotonic() < deadline, "no service after the restart"
                time.sleep(0.1)
        assert permit.server_time is not None
        assert permit.server_time >= (stamps[-1] or 0.0) + 1.0, "a window passed first"
        permit.release()
    finally:
        server.cleanup()


def test_an_unreachable_server_can_fall_back_to_a_local_share(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    backend = ct.RedisBackend(url, timeout=0.3, on_failure="local", local_share=0.5)
    assert (backend.on_failure, backend.local_share) == ("local", 0.5)
    limiter = ct.Limiter(max_concurrent=4, name="fallback", backend=backend)
    with caplog.at_level("WARNING", logger="crewthrottle.limiter"):
        held = [limiter.acquire(timeout=5) for _ in range(2)]  # half of max_concurrent
        with pytest.raises(ct.AcquireTimeout):
            limiter.acquire(timeout=0.1)
        with pytest.raises(ct.AcquireTimeout):
            asyncio.run(asyncio.wait_for(limiter.acquire_async(timeout=0.1), 5))
    warnings = [r for r in caplog.records if "falls back" in r.getMessage()]
    assert len(warnings) == 1 and url in warnings[0].getMessage()
    for permit in held:
        permit.release()
    with limiter:
        pass


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"on_failure": "local"}, "needs local_share"),
        ({"on_failure": "local", "local_share": 0}, "local_share"),
        ({"on_failure": "local", "local_share": 1.5}, "local_share"),
        ({"local_share": 0.5}, "only applies"),
        ({"on_failure": "ignore"}, "on_failure"),
    ],
)
def test_the_failure_policy_is_checked(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ct.RedisBackend("redis://127.0.0.1:1/0", **kwargs)


def test_an_announcement_reaches_every_limiter_object_of_a_budget(
    redis_url: str, budget_name: str, promptly: Callable[..., Any]
) -> None:
    # Two objects naming one budget in one process share one connection: a release through one
    # must wake a waiter of the other by announcement, not by the heartbeat (lease / 3 = 10 s).
    holder = shared(redis_url, budget_name, max_concurrent=1, lease=30.0)
    waiter = shared(redis_url, budget_name, max_concurrent=1, lease=30.0)
    waiter.acquire().release()  # the waiter's object subscribes first...
    held = holder.acquire()  # ...the holder's second
    threading.Timer(0.2, held.release).start()
    started = time.monotonic()
    promptly(lambda: waiter.acquire(timeout=20).release())
    assert time.monotonic() - started < 3


def test_metrics_of_a_shared_budget_follow_it_without_waiting_for_redis(
    redis_url: str, budget_name: str
) -> None:
    # Nobody calls stats(): each metrics reading starts a background refresh, whose figures the
    # next reading reports. Another process's view holds the permit: ours must come to see it.
    from prometheus_client import CollectorRegistry, generate_latest

    from crewthrottle import metrics

    ours = shared(redis_url, budget_name, max_concurrent=4, rpm=100, window=1.0)
    other = shared(redis_url, budget_name, max_concurrent=4, rpm=100, window=1.0)
    registry = CollectorRegistry()
    metrics.register_prometheus(registry, limiters=[ours])
    in_flight = f'crewthrottle_limiter_in_flight{{limiter="{budget_name}"}}'
    try:
        permit = other.acquire()
        deadline = time.monotonic() + 15
        while f"{in_flight} 1.0" not in generate_latest(registry).decode():
            assert time.monotonic() < deadline, "the metrics never saw the other's permit"
            time.sleep(0.02)
        permit.release()
        while f"{in_flight} 0.0" not in generate_latest(registry).decode():
            assert time.monotonic() < deadline, "the metrics never saw the release"
            time.sleep(0.02)
    finally:
        metrics.unregister_prometheus(registry)
