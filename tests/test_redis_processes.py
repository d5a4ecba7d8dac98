"""One budget shared by several processes through a real `redis-server` (issue 7).

Every worker is a spawned interpreter of its own (tests/_redis_workers.py). The figures come
from what the workers recorded: Redis's clock (``Permit.server_time``) for the windows, since
the budget script decides on it; ``time.monotonic()`` (one clock for all processes of a host)
for spans in flight, the order things were asked in, and recovery times. (The pytest-xdist
fixture has its own file, tests/test_shared_limiter_fixture.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, NamedTuple

import pytest
from tests._redis import RedisServer
from tests._redis_workers import Grant, Worker, crews, forking, load, waiter
from tests._timeline import fifo_lag, max_in_window, max_overlap, steady_utilisation

import crewthrottle as ct

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals and fork")

WINDOW = 1.0


@contextlib.contextmanager
def started(processes: int, target: Callable[..., None], **options: Any) -> Iterator[list[Worker]]:
    """`processes` workers running `target`, each ready; all gone afterwards, whatever happened."""
    workers = [Worker(target, **options) for _ in range(processes)]
    try:
        for worker in workers:
            worker.expect("ready")
        yield workers
    finally:
        for worker in workers:
            with contextlib.suppress(OSError, ValueError):
                worker.send("exit")
            worker.close(timeout=5)


def run_load(
    url: str, name: str, limits: dict[str, Any], seconds: float, **options: Any
) -> tuple[list[Grant], Counter[str]]:
    """4 processes of 2 threads and 2 asyncio tasks each, asking from one budget for
    `seconds`: every grant, and the acquires that failed (by exception name, when the
    workers are ``resilient``)."""
    options = {"threads": 2, "tasks": 2, "estimate": 100, "hold": (0.005, 0.035), **options}
    backend = {"lease": options.pop("lease", 3.0), "timeout": 1.0}
    during = options.pop("during", None)
    with started(4, load, url=url, name=name, limits=limits, backend=backend, **options) as ws:
        end = time.monotonic() + seconds
        for worker in ws:
            worker.send("go", end)
        if during is not None:
            during()
        grants: list[Grant] = []
        missed: Counter[str] = Counter()
        for worker in ws:
            got, failed, errors = worker.expect("done", timeout=seconds + 60)
            assert errors == [], errors[0]
            grants += got
            missed.update(failed)
    return grants, missed


def shared_limiter(url: str, name: str, **limits: Any) -> ct.Limiter:
    return ct.Limiter(name=name, backend=ct.RedisBackend(url, lease=3.0), **limits)


def check_limits(grants: list[Grant], limits: dict[str, Any]) -> None:
    """Invariants: never more than rpm requests nor tpm (settled) tokens granted in any
    window on Redis's clock; never more than max_concurrent permits held at once."""
    stamps = [g.stamp for g in grants]
    assert max_in_window(stamps, WINDOW) <= limits["rpm"]
    assert max_in_window(stamps, WINDOW, [g.tokens for g in grants]) <= limits["tpm"]
    assert max_overlap([(g.start, g.end) for g in grants]) <= limits["max_concurrent"]


# -- 4 processes, threads and tasks, one budget --------------------------------------------------


@pytest.mark.parametrize("binding", ["rpm", "tpm"])
def test_four_processes_share_one_budget_exactly_fully_and_fairly(
    redis_url: str, budget_name: str, binding: str
) -> None:
    """Each request reserves 100 tokens and settles to 50..100 (75 on average). With rpm
    binding, 100 requests per second are allowed; with tpm binding, 5000 tokens (~66 requests).

    Invariants (from the recorded stamps): the limits of `check_limits`; utilisation of the
    binding limit >= 0.95 in the steady state (`steady_utilisation`: grants in the whole
    windows after the first one, over what the limit allows in them); first come, first
    served across processes: nobody who asked more than 0.1 s before another was served after
    it (`fifo_lag`); and so each process (the same number of waiters) gets a fair share.
    """
    limits = {"max_concurrent": 4, "rpm": 100, "window": WINDOW, "margin": 0.01, "burst": 5}
    limits["tpm"] = 20_000 if binding == "rpm" else 5_000
    grants, _ = run_load(redis_url, budget_name, limits, seconds=4.0)

    check_limits(grants, limits)
    stamps = [g.stamp for g in grants]
    if binding == "rpm":
        used = steady_utilisation(stamps, limits["rpm"], WINDOW)
    else:
        used = steady_utilisation(stamps, limits["tpm"], WINDOW, [g.tokens for g in grants])
    lag = fifo_lag([g.asked for g in grants], stamps)
    shares = Counter(g.pid for g in grants)
    jain = sum(shares.values()) ** 2 / (len(shares) * sum(n * n for n in shares.values()))
    print(
        f"{binding}: {len(grants)} grants, utilisation {used:.3f}, fifo lag {lag * 1000:.1f} ms, "
        f"shares {sorted(shares.values())} (Jain {jain:.4f}), "
        f"max in flight {max_overlap([(g.start, g.end) for g in grants])}"
    )
    assert used >= 0.95
    assert lag <= 0.1
    assert len(shares) == 4 and jain >= 0.98


def test_waiters_of_four_processes_are_served_in_the_order_they_queued(
    redis_url: str, budget_name: str, wait_until: Callable[..., None]
) -> None:
    """Invariant: with one slot, waiters queued one after another (each seen in the shared
    queue before the next asks), from threads and tasks of four processes, are granted in
    exactly that order, on Redis's clock."""
    limiter = shared_limiter(redis_url, budget_name, max_concurrent=1)
    held = limiter.acquire(timeout=10)
    options = {"url": redis_url, "name": budget_name, "limits": {"max_concurrent": 1}}
    with started(4, waiter, backend={"lease": 3.0}, **options) as workers:
        order = [(workers[i % 4], i) for i in (0, 5, 2, 7, 1, 4, 11, 3, 6, 9, 8, 10)]
        for queued, (worker, label) in enumerate(order, 1):
            worker.send("acquire", label, "task" if label % 2 else "thread", 0, 0.01)
            wait_until(lambda n=queued: limiter.stats()["waiting"] == n, f"{queued} queued")
        held.release()
        grants = [w.expect("granted") for w in workers for _ in range(3)]
    served = [label for label, _, _ in sorted(grants, key=lambda g: g[1])]
    assert served == [label for _, label in order]


# -- crashes and fencing -----------------------------------------------------------------------

LEASE = 1.0
#: A dead holder's lease runs out at most `LEASE` after its last renewal, which came before
#: the kill; a live waiter's heartbeat (every LEASE / 3) then prunes it and takes the slot.
RECOVERY_BOUND = LEASE + LEASE / 3 + 0.5  # + slack for round trips and a busy machine


def test_a_killed_holder_gives_its_slots_and_places_back_within_its_lease(
    redis_url: str, budget_name: str, wait_until: Callable[..., None]
) -> None:
    """Invariant: process A holds both slots and has a waiter queued ahead of B's two; A is
    killed with SIGKILL; B's waiters are granted within RECOVERY_BOUND of the kill (A's
    holders reaped, A's waiter's place dropped), and nothing of A's is left."""
    limits = {"max_concurrent": 2}
    limiter = shared_limiter(redis_url, budget_name, **limits)
    options = {"url": redis_url, "name": budget_name, "limits": limits}
    with started(2, waiter, backend={"lease": LEASE}, **options) as (a, b):
        a.send("acquire", "a1", "thread", 0, None)
        a.send("acquire", "a2", "task", 0, None)
        a.expect("granted"), a.expect("granted")
        a.send("acquire", "a3", "thread", 0, None)
        wait_until(lambda: limiter.stats()["waiting"] == 1, "A's waiter queued")
        b.send("acquire", "b1", "thread", 0, None)
        b.send("acquire", "b2", "task", 0, None)
        wait_until(lambda: limiter.stats()["waiting"] == 3, "B's waiters queued")
        killed = time.monotonic()
        os.kill(a.pid, signal.SIGKILL)
        served = [b.expect("granted", timeout=RECOVERY_BOUND + 10)[2] for _ in range(2)]
        recovery = max(served) - killed
        stats = limiter.stats()
    print(f"SIGKILL: B served {recovery:.3f} s after the kill (lease {LEASE} s)")
    assert recovery <= RECOVERY_BOUND
    assert (stats["in_flight"], stats["waiting"]) == (2, 0)  # B's two, nobody queued
    assert stats["cancelled"] >= 3  # A's two holders reaped and its waiter dropped


def test_a_release_after_the_lease_expired_frees_nothing(
    redis_url: str, budget_name: str, wait_until: Callable[..., None]
) -> None:
    """Fencing. A holds the only slot (100 tokens) and is stopped (SIGSTOP) past its lease;
    B gets the slot; A is continued and settles (to 10 tokens) and releases late.
    Invariants: both are refused — B keeps the slot (in flight stays 1, nobody else gets
    one) until B releases, and A's tokens stay charged; A is told its lease was lost."""
    limits = {"max_concurrent": 1, "tpm": 1000, "window": 60.0}
    limiter = shared_limiter(redis_url, budget_name, **limits)
    options = {"url": redis_url, "name": budget_name, "limits": limits}
    with started(2, waiter, backend={"lease": LEASE}, **options) as (a, b):
        a.send("acquire", "a", "thread", 100, None)
        a.expect("granted")
        b.send("acquire", "b", "task", 100, None)
        wait_until(lambda: limiter.stats()["waiting"] == 1, "B queued")
        stopped = time.monotonic()
        os.kill(a.pid, signal.SIGSTOP)
        try:
            _, _, served = b.expect("granted", timeout=RECOVERY_BOUND + 10)
        finally:
            os.kill(a.pid, signal.SIGCONT)
        a.send("settle", "a", 10)
        a.send("release", "a")
        a.send("stats")
        seen_by_a, _ = a.expect("stats")

        def a_was_told() -> bool:
            a.send("said")
            return any("lease" in message for message in a.expect("said")[0])

        # The refusal is logged when the release's reply comes back (it is fired and forgotten).
        wait_until(a_was_told, "A told its lease was lost")
        assert limiter.try_acquire() is None, "the slot is B's"
        after_a = limiter.stats()
        b.send("release", "b")
        wait_until(lambda: limiter.stats()["in_flight"] == 0, "B's release")
        limiter.acquire(timeout=5).release()
    print(f"SIGSTOP: B served {served - stopped:.3f} s after A stopped (lease {LEASE} s)")
    assert served - stopped <= RECOVERY_BOUND
    for stats in (seen_by_a, after_a):
        assert (stats["in_flight"], stats["tokens_in_window"]) == (1, 200), stats


# -- Redis itself failing ------------------------------------------------------------------------


RESTART_LIMITS = {"max_concurrent": 4, "rpm": 100, "tpm": 20_000, "window": WINDOW}
RESTART_LIMITS.update(margin=0.01, burst=5)


class Restart(NamedTuple):
    grants: list[Grant]
    missed: Counter[str]
    killed: float
    restarted: float


@pytest.fixture(scope="module")
def restart_run() -> Restart:
    """A 6 s run of 4 resilient processes (rpm binding) whose own redis-server is killed
    2.5 s in and started again 1 s later: its state is lost; its clock, this host's, goes on.
    (A server grants nothing rate-limited until it has been up a window — it cannot tell a
    new budget from a lost one — so the run's first part is 1.5 s of service after that.)
    Acquires wait at most 4 s, so that a waiter the restart leaves stranded shows as a timeout
    rather than a hang."""
    times: dict[str, float] = {}
    with RedisServer() as server:

        def outage() -> None:
            time.sleep(2.5)  # the server's first window, then a part with a full window
            times["killed"] = time.monotonic()
            server.kill()
            time.sleep(1.0)  # the outage
            server.start()
            times["restarted"] = time.monotonic()

        grants, missed = run_load(
            server.url,
            "restart",
            RESTART_LIMITS,
            6.0,
            during=outage,
            lease=1.0,
            resilient=True,
            timeout=4.0,
        )
    return Restart(grants, missed, times["killed"], times["restarted"])


def test_a_redis_restart_mid_run_crashes_nobody_and_exceeds_nothing(restart_run: Restart) -> None:
    """Invariants: no worker fails (what meets the outage is counted and asked again); the
    limits of `check_limits` hold across the restart, on Redis's clock (the budget restarts
    conservatively: no grant for one window)."""
    check_limits(restart_run.grants, RESTART_LIMITS)
    before = [g for g in restart_run.grants if g.start < restart_run.killed]
    print(f"restart: {len(before)} grants before the kill; missed {dict(restart_run.missed)}")
    assert len(before) >= RESTART_LIMITS["rpm"]


def test_service_resumes_after_a_redis_restart(restart_run: Restart) -> None:
    """Invariant: service resumes by itself — at least a window's worth of grants after the
    restart, and no acquire waits out its 4 s timeout (the outage lasts 1 s, the
    conservative window 1 s)."""
    after = sorted(g.start for g in restart_run.grants if g.start > restart_run.restarted)
    resumed = after[0] - restart_run.restarted if after else float("inf")
    print(f"restart: {len(after)} grants after the restart, the first {resumed:.3f} s after")
    assert restart_run.missed["AcquireTimeout"] == 0
    assert len(after) >= RESTART_LIMITS["rpm"]


def test_a_waiter_whose_place_expired_queues_again(
    redis_url: str, budget_name: str, wait_until: Callable[..., None]
) -> None:
    """A's waiter is queued behind the test's permit; A is stopped past its lease (its place
    is dropped) and continued. Invariant: A's waiter queues again (within its heartbeat,
    LEASE / 3, + slack) and is served when the slot is free."""
    limiter = shared_limiter(redis_url, budget_name, max_concurrent=1)
    held = limiter.acquire(timeout=10)
    options = {"url": redis_url, "name": budget_name, "limits": {"max_concurrent": 1}}
    with started(1, waiter, backend={"lease": LEASE}, **options) as (a,):
        a.send("acquire", "a", "thread", 0, None)
        wait_until(lambda: limiter.stats()["waiting"] == 1, "A queued")
        os.kill(a.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: limiter.stats()["waiting"] == 0, "A's place dropped")
        finally:
            os.kill(a.pid, signal.SIGCONT)
        held.release()
        a.expect("granted", timeout=RECOVERY_BOUND)


def test_a_restart_lets_no_more_than_rpm_through_whoever_comes_first(budget_name: str) -> None:
    """This process takes a window's 10 requests; the server is killed and restarted at once;
    then a worker that never used the budget asks for 10. Invariant: never more than 10 in any
    1 s window on Redis's clock (this host's: it goes on across the restart)."""
    limits = {"rpm": 10, "window": WINDOW, "margin": 0.01}
    with RedisServer() as server:
        before = ct.Limiter(name=budget_name, backend=ct.RedisBackend(server.url), **limits)
        stamps = [before.acquire(timeout=10).server_time for _ in range(10)]
        server.kill()
        server.start()
        options = {"url": server.url, "name": budget_name, "limits": limits}
        with started(1, waiter, backend={"timeout": 1.0}, **options) as (fresh,):
            for label in range(10):
                fresh.send("acquire", label, "thread", 0, 0.0)
            stamps += [fresh.expect("granted")[1] for _ in range(10)]
    print(f"restart, a new process first: {max_in_window(stamps, WINDOW)} grants in a window")
    assert max_in_window(stamps, WINDOW) <= limits["rpm"]


def test_a_server_that_stopped_answering_is_a_clear_error_in_bounded_time() -> None:
    """Not a refused connection (tests/test_redis.py) but a server that accepts and never
    answers (SIGSTOP): a limiter already connected and one connecting for the first time,
    blocking and async (20 tasks at once), each get BackendUnavailable naming the URL within
    a few command timeouts (0.5 s), never a hang."""
    server = RedisServer().start()
    try:
        limits = {"rpm": 100, "window": WINDOW}
        backend = ct.RedisBackend(server.url, timeout=0.5, lease=1.0)
        connected = ct.Limiter(name="stopped", backend=backend, **limits)
        connected.acquire(timeout=5).release()
        # Another database of that server: a connection of its own, made after the stop.
        fresh_url = server.url.replace("/0", "/1")
        fresh = ct.Limiter(
            name="stopped", backend=ct.RedisBackend(fresh_url, timeout=0.5), **limits
        )
        os.kill(server.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]

        async def many(limiter: ct.Limiter) -> list[BaseException]:
            calls = (limiter.acquire_async(timeout=60) for _ in range(20))
            return await asyncio.gather(*calls, return_exceptions=True)  # type: ignore[arg-type]

        took = []
        for limiter, url in ((connected, server.url), (fresh, fresh_url)):
            for attempt in (partial(limiter.acquire, timeout=60), limiter.try_acquire):
                started_at = time.monotonic()
                with pytest.raises(ct.BackendUnavailable, match=url):
                    attempt()
                took.append(time.monotonic() - started_at)
            started_at = time.monotonic()
            errors = asyncio.run(many(limiter))
            took.append(time.monotonic() - started_at)
            assert all(isinstance(e, ct.BackendUnavailable) and url in str(e) for e in errors)
        print("stopped server: errors after " + ", ".join(f"{t:.2f}" for t in took) + " s")
        assert max(took) < 5
    finally:
        if server.process is not None:
            os.kill(server.process.pid, signal.SIGCONT)
        server.cleanup()


# -- fork ----------------------------------------------------------------------------------------


def test_a_limiter_made_before_fork_works_in_the_child_and_the_parent(
    redis_url: str, budget_name: str
) -> None:
    """A worker takes one of two slots and forks. Invariants: the child gets the other slot
    (its grant on Redis's clock), then finds the budget full; releasing the parent's permit in
    the child (explicitly, and by garbage collection) frees nothing; the child's own release
    does. The parent's permit outlives two leases after the fork (its heartbeat survived), and
    the parent acquires and releases as before."""
    worker = Worker(forking, url=redis_url, name=budget_name, lease=0.5)
    try:
        child, parent = worker.expect("done")
    finally:
        worker.close()
    assert "error" not in child, child["error"]
    assert child["server_time"] is not None
    assert (child["both"], child["full"]) == (2, True)
    assert (child["after_parents"], child["after_own"]) == (2, 1)
    assert parent == {"child_exit": 0, "after_child": 1, "after_leases": 1, "both": 2, "none": 0}


# -- CrewAI end to end ---------------------------------------------------------------------------

CREW_LIMITS = {"rpm": 10, "tpm": 4_000, "max_concurrent": 4, "window": 3.0}


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_twenty_crews_in_four_processes_one_redis_budget_no_429(
    redis_url: str, budget_name: str, wait_until: Callable[..., None]
) -> None:
    """20 one-agent crews (real CrewAI, the real openai SDK), 5 in each of 4 processes, all
    started together against one FakeProvider, each process's `kickoff_all` given a limiter
    with the provider's limits. Shared on Redis: 20/20 crews and not one 429 by the provider's
    own count (nor more than its limits in any window). One in-memory limiter per process:
    four times the limit is sent, and the provider refuses (the run stops at the first 429:
    the per-process crews' retries prove nothing more)."""
    from crewthrottle.testing import FakeProvider

    # The limiters may send the whole window's requests at once (burst): a 3 s window then
    # shows per-process limiters overshooting even when a busy machine spreads the processes'
    # first requests over a second or two.
    limits = {**CREW_LIMITS, "burst": CREW_LIMITS["rpm"]}
    options = {"count": 5, "limits": limits, "url": redis_url, "name": budget_name}
    with started(4, crews, **options) as workers:

        def kick_off(mode: str, provider: FakeProvider) -> None:
            for worker in workers:
                worker.send("build", provider.base_url, mode)
            for worker in workers:
                worker.expect("built")
            start = time.monotonic() + 0.2
            for worker in workers:
                worker.send("go", start)

        with FakeProvider(latency=0.05, **CREW_LIMITS) as shared:
            kick_off("shared", shared)
            done = [worker.expect("done", timeout=120) for worker in workers]
        with FakeProvider(latency=0.05, **CREW_LIMITS) as local:
            kick_off("local", local)
            wait_until(lambda: local.count(status=429) > 0, "a 429 (per process)", timeout=60)
            for worker in workers:
                worker.process.kill()  # busy retrying: it would not hear "exit"
    ok, failed = sum(ok for ok, _ in done), [f for _, fs in done for f in fs]
    print(
        f"CrewAI, 4 processes: shared {ok}/20 crews, {shared.count(status=429)} 429s, "
        f"{shared.count()} requests; per process: {local.count(status=429)} 429s of "
        f"{local.count()} requests before it was stopped"
    )
    assert ok == 20, failed
    assert shared.count(status=429) == 0
    assert shared.max_requests_in_any_window() <= CREW_LIMITS["rpm"]
    assert shared.max_in_flight <= CREW_LIMITS["max_concurrent"]
