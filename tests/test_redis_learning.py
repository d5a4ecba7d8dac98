"""What one process learns from the provider holds for every process of a shared budget
(issue 8 on Redis, issue 7): limits its rate-limit headers report, an adaptive budget's
cautious start, and the AIMD decrease after a 429 and its recovery — kept and enforced by the
budget's script, on a real `redis-server`.

Each limiter object below has its own side of the budget (its own connection, queue and
learning state), as a process has; they share only what is on the server. What a response
teaches is sent without waiting (the caller never waits for Redis), so the tests wait, with a
generous deadline, until the other side's ``stats()`` — read from the server — shows it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from tests._redis import port_of, redis_cli

import crewthrottle as ct

#: How long a change may take to reach the server (it is one fire-and-forget round trip).
DEADLINE = 15.0


def shared(redis_url: str, name: str, **limits: Any) -> ct.Limiter:
    return ct.Limiter(name=name, backend=ct.RedisBackend(redis_url, lease=5.0), **limits)


def openai_headers(rpm: int, tpm: int) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(rpm),
        "x-ratelimit-remaining-requests": str(rpm - 1),
        "x-ratelimit-limit-tokens": str(tpm),
        "x-ratelimit-remaining-tokens": str(tpm - 100),
    }


def in_force(limiter: ct.Limiter) -> tuple[Any, ...]:
    s = limiter.stats()
    return (
        s["effective_max_concurrent"],
        s["effective_rpm"],
        s["effective_tpm"],
        s["limits_reason"],
    )


def older_than_window(redis_url: str, window: float) -> None:
    """Waits until the server is older than `window`: a younger one cannot tell a new budget
    from one it lost in a restart, so it grants no rate-limited request for its first window
    (README, "Redis unreachable or restarted") — a precondition of the tests that need grants,
    not a race."""
    deadline = time.monotonic() + window + DEADLINE
    while True:
        info = redis_cli(port_of(redis_url), "info", "server")
        uptime = int(info.split("uptime_in_seconds:")[1].split()[0])
        if uptime > window:
            return
        assert time.monotonic() < deadline, f"server still {uptime} s old"
        time.sleep(0.2)


def until(limiter: ct.Limiter, wanted: Callable[[tuple[Any, ...]], bool]) -> tuple[Any, ...]:
    """The limits in force once `wanted` holds of them; fails after `DEADLINE` with the last
    seen."""
    deadline = time.monotonic() + DEADLINE
    seen = in_force(limiter)
    while not wanted(seen):
        assert time.monotonic() < deadline, f"still {seen}"
        time.sleep(0.02)
        seen = in_force(limiter)
    return seen


def test_limits_one_process_reads_in_headers_bind_every_process(
    redis_url: str, budget_name: str
) -> None:
    # burst=100 lets the configured rate grant 100 at once; the learned one only 3 (header
    # limits are taken as per `window`). The 2 s window keeps the wait for a young server short.
    older_than_window(redis_url, 2.0)
    a = shared(redis_url, budget_name, rpm=100, tpm=100_000, burst=100, window=2.0)
    b = shared(redis_url, budget_name, rpm=100, tpm=100_000, burst=100, window=2.0)
    assert in_force(b) == (None, 100, 100_000, "configured")

    a.observe(openai_headers(3, 40_000))
    assert until(b, lambda s: s[1] == 3) == (None, 3, 40_000, "headers")

    # Enforced by the script for b, which never saw a header: three requests in the window.
    granted = [p for p in (b.try_acquire() for _ in range(10)) if p is not None]
    assert len(granted) == 3
    for permit in granted:
        permit.release()

    # Learning never raises a configured limit.
    a.observe(openai_headers(10_000, 10_000_000))
    assert until(b, lambda s: s[1] == 100) == (None, 100, 100_000, "configured")


def test_a_429_lowers_the_rates_of_every_process_once_per_step(
    redis_url: str, budget_name: str
) -> None:
    a = shared(redis_url, budget_name, rpm=1_000, tpm=50_000, window=60.0)
    b = shared(redis_url, budget_name, rpm=1_000, tpm=50_000, window=60.0)
    assert in_force(b)[3] == "configured"  # both connected: what follows is sent in order
    a.observe({}, status=429)
    assert until(b, lambda s: s[3] == "429") == (None, 700, 35_000, "429")
    # Within the same step (6 s): the same storm, not a second decrease. Commands a thread
    # sends reach the server in order, so the next `stats()` is read after this report.
    b.observe({}, status=429)
    assert in_force(a) == (None, 700, 35_000, "429")


class TooMany(Exception):
    status_code = 429


def test_the_retry_layer_s_429s_lower_the_shared_rates(redis_url: str, budget_name: str) -> None:
    older_than_window(redis_url, 2.0)  # the calls acquire: a young server would hold them
    a = shared(redis_url, budget_name, rpm=200, window=2.0)
    b = shared(redis_url, budget_name, rpm=200, window=2.0)
    calls = 0

    @ct.throttle(a, retry=ct.backoff(max_tries=2, base=0.01, max_delay=0.01))
    def call() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TooMany("429 rate limit exceeded")
        return "ok"

    assert call() == "ok" and calls == 2
    # Lowered to 140 (x0.7); with 0.2 s steps it may already be recovering (+10 a step).
    assert 140 <= until(b, lambda s: s[3] == "429")[1] < 200


def test_a_lowered_budget_recovers_for_every_process(redis_url: str, budget_name: str) -> None:
    # A 1 s window: steps of 0.1 s, each adding back 5% of the limit.
    a = shared(redis_url, budget_name, rpm=1_000, window=1.0)
    b = shared(redis_url, budget_name, rpm=1_000, window=1.0)
    a.observe({}, status=429)
    lowered = until(b, lambda s: s[3] == "429")
    assert lowered[1] is not None and lowered[1] < 1_000
    assert until(a, lambda s: s[3] == "configured") == (None, 1_000, None, "configured")


def test_an_adaptive_budget_starts_cautiously_until_any_process_sees_the_limits(
    redis_url: str, budget_name: str
) -> None:
    a = shared(redis_url, budget_name, adaptive=True, window=60.0)
    b = shared(redis_url, budget_name, adaptive=True, window=60.0)
    # One in flight, one a second, for every process.
    assert in_force(b) == (1, 60, None, "conservative")
    a.observe(openai_headers(500, 200_000))
    assert until(b, lambda s: s[3] != "conservative") == (None, 500, 200_000, "headers")


def test_an_adaptive_and_a_fixed_limiter_cannot_share_a_budget(
    redis_url: str, budget_name: str
) -> None:
    shared(redis_url, budget_name, rpm=10, adaptive=True).stats()
    fixed = shared(redis_url, budget_name, rpm=10)
    with pytest.raises(ct.LimitsConflict, match="adaptive=true"):
        fixed.stats()
