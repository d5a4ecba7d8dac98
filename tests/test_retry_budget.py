"""``RetryBudget``: retries capped at ``ratio`` of recent calls plus ``min_retries_per_s`` over
``window``, shared by threads and tasks, so retries cannot multiply a storm."""

from __future__ import annotations

import asyncio
import copy
import math
import threading
import time
from typing import Any, ClassVar

import pytest

import crewthrottle as ct


class FakeResponse:
    status_code = 429
    headers: ClassVar[dict[str, str]] = {}


class RateLimited(Exception):
    """Shaped like ``openai.APIStatusError`` with status 429."""

    status_code = 429
    response = FakeResponse()


def test_defaults_and_stats_keys() -> None:
    budget = ct.RetryBudget()
    assert (budget.ratio, budget.min_retries_per_s, budget.window) == (0.2, 1.0, 10.0)
    assert budget.stats() == {"calls": 0, "retries": 0, "refused": 0}
    assert budget.available == 10  # the floor: 1 retry per second over 10 s
    assert "RetryBudget" in repr(budget) and "ratio=0.2" in repr(budget)


def test_budget_exhaustion_under_16_threads() -> None:
    """Invariant: over any run within one window, retries <= ratio * calls + floor, where
    calls are logical calls (first attempts); every call refused a retry propagates its error
    at once with a note naming the budget."""
    ratio, floor_rate, window = 0.1, 0.5, 60.0  # floor: 30 retries per window
    budget = ct.RetryBudget(ratio=ratio, min_retries_per_s=floor_rate, window=window)
    threads_n, calls_per_thread = 16, 20
    attempts = [0] * threads_n
    errors: list[list[BaseException]] = [[] for _ in range(threads_n)]
    other: list[BaseException] = []
    start = threading.Barrier(threads_n)
    policy = ct.backoff(budget=budget, base=0, max_tries=1000)

    def worker(i: int) -> None:
        @policy
        def call() -> None:
            attempts[i] += 1
            raise RateLimited("429 Too Many Requests")

        start.wait()
        for _ in range(calls_per_thread):
            try:
                call()
            except RateLimited as exc:
                errors[i].append(exc)
            except BaseException as exc:  # pragma: no cover - reported below
                other.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert time.monotonic() - started < window  # so no call left the window
    assert other == []
    calls = threads_n * calls_per_thread
    stats = budget.stats()
    allowance = math.floor(ratio * calls + floor_rate * window)  # 32 + 30
    assert stats["calls"] == calls
    assert stats["retries"] <= allowance
    assert stats["retries"] == allowance  # and the budget was spent to the last retry
    assert stats["retries"] == sum(attempts) - calls  # each retry was one more attempt
    assert stats["refused"] == calls  # max_tries is out of reach: every call ended refused
    given_up = [exc for per_thread in errors for exc in per_thread]
    assert len(given_up) == calls
    for exc in given_up:
        notes = getattr(exc, "__notes__", [])
        assert len(notes) == 1 and "budget" in notes[0], notes
    assert budget.available == 0


def test_budget_is_shared_by_async_tasks() -> None:
    budget = ct.RetryBudget(ratio=0.25, min_retries_per_s=0.0, window=60.0)
    attempts = 0

    @ct.backoff(budget=budget, base=0, max_tries=1000)
    async def call() -> None:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0)
        raise RateLimited()

    async def main() -> list[Any]:
        return await asyncio.gather(*(call() for _ in range(40)), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, RateLimited) for r in results)
    stats = budget.stats()
    assert stats["calls"] == 40
    assert stats["retries"] <= 10 and stats["retries"] == attempts - 40
    assert stats["refused"] == 40


def test_budget_recovers_as_calls_accumulate() -> None:
    budget = ct.RetryBudget(ratio=0.5, min_retries_per_s=0.0, window=60.0)
    policy = ct.backoff(budget=budget, base=0, max_tries=10)
    assert budget.available == 0
    failing_calls = 0

    def always_failing() -> None:
        nonlocal failing_calls
        failing_calls += 1
        raise RateLimited()

    with pytest.raises(RateLimited) as info:
        policy.call(always_failing)
    assert failing_calls == 1  # half a retry earned: not enough for one
    assert "budget" in info.value.__notes__[0]

    for _ in range(3):
        assert policy.call(lambda: "ok") == "ok"  # calls that succeed still earn retries
    assert budget.available == 2  # 4 calls * 0.5

    tries = 0

    def fails_twice() -> str:
        nonlocal tries
        tries += 1
        if tries <= 2:
            raise RateLimited()
        return "ok"

    assert policy.call(fails_twice) == "ok"  # 5 calls * 0.5 = 2.5: both retries allowed
    assert tries == 3
    assert budget.available == 0
    assert budget.stats() == {"calls": 5, "retries": 2, "refused": 1}


def test_the_floor_comes_back_as_the_window_slides() -> None:
    budget = ct.RetryBudget(ratio=0.0, min_retries_per_s=20.0, window=0.1)  # 2 per 0.1 s
    assert budget.available == 2
    assert budget.try_spend_retry() and budget.try_spend_retry()
    assert not budget.try_spend_retry()
    assert budget.available == 0
    deadline = time.monotonic() + 10
    while budget.available == 0:  # waiting for the window to slide, not for a race
        assert time.monotonic() < deadline, "the budget never recovered"
        time.sleep(0.005)
    assert budget.try_spend_retry()
    assert budget.stats() == {"calls": 0, "retries": 3, "refused": 1}


def test_available_counts_what_try_spend_retry_would_allow() -> None:
    budget = ct.RetryBudget(ratio=1.0, min_retries_per_s=0.0, window=60.0)
    for _ in range(3):
        budget.record_call()
    assert budget.available == 3
    spent = 0
    while budget.try_spend_retry():
        spent += 1
        assert budget.available == 3 - spent
    assert spent == 3


def test_a_refusal_is_counted_on_the_limiter() -> None:
    limiter = ct.Limiter(max_concurrent=2)
    budget = ct.RetryBudget(ratio=0.0, min_retries_per_s=0.0, window=60.0)
    calls = 0

    def call() -> None:
        nonlocal calls
        calls += 1
        raise RateLimited()

    with pytest.raises(RateLimited):
        ct.backoff(budget=budget, limiter=limiter, base=0).call(call)
    assert calls == 1
    stats = limiter.stats()
    assert (stats["retries"], stats["retries_refused"]) == (0, 1)


def test_a_non_retryable_error_spends_nothing() -> None:
    budget = ct.RetryBudget(ratio=0.0, min_retries_per_s=0.5, window=10.0)

    def call() -> None:
        raise ValueError("not a rate limit")

    with pytest.raises(ValueError):
        ct.backoff(budget=budget, base=0).call(call)
    assert budget.stats() == {"calls": 1, "retries": 0, "refused": 0}
    assert budget.available == 5


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"ratio": -1}, ValueError, "ratio"),
        ({"ratio": math.nan}, ValueError, "ratio"),
        ({"ratio": math.inf}, ValueError, "ratio"),
        ({"ratio": "0.2"}, TypeError, "ratio"),
        ({"window": 0}, ValueError, "window"),
        ({"window": -1.0}, ValueError, "window"),
        ({"min_retries_per_s": -1}, ValueError, "min_retries_per_s"),
        ({"min_retries_per_s": math.nan}, ValueError, "min_retries_per_s"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(
    kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=rf"\b{name}\b"):
        ct.RetryBudget(**kwargs)


def test_copy_and_deepcopy_return_the_same_budget() -> None:
    budget = ct.RetryBudget()
    assert copy.copy(budget) is budget
    assert copy.deepcopy(budget) is budget
    holder = copy.deepcopy({"budget": budget})
    assert holder["budget"] is budget  # shared state survives a config being deep-copied
