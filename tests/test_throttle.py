"""``throttle``: each attempt takes its own permit, gives it back before any retry delay, takes
its tokens, and a provider's named wait pauses the limiter for every thread and task."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from typing import Any

import pytest
from tests._timeline import max_overlap

import crewthrottle as ct


class FakeResponse:
    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.status_code = 429
        self.headers = headers or {}


class RateLimited(Exception):
    """Shaped like ``openai.APIStatusError`` with status 429."""

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        super().__init__("Error code: 429")
        self.status_code = 429
        self.response = FakeResponse(headers)


def test_each_attempt_takes_a_permit_and_gives_it_back_before_the_delay() -> None:
    limiter = ct.Limiter(max_concurrent=1)
    inside: list[int] = []
    at_retry: list[tuple[int, bool]] = []

    def on_retry(attempt: int, delay: float, exc: BaseException) -> None:
        # Runs after the failed attempt, just before the sleep: the slot must be free.
        in_flight = limiter.stats()["in_flight"]
        permit = limiter.try_acquire()
        at_retry.append((in_flight, permit is not None))
        if permit is not None:
            permit.release()

    @ct.throttle(limiter, retry=ct.backoff(base=0.001, max_tries=4, on_retry=on_retry))
    def call() -> str:
        inside.append(limiter.stats()["in_flight"])
        if len(inside) < 3:
            raise RateLimited()
        return "ok"

    assert call() == "ok"
    assert inside == [1, 1, 1]  # every attempt held a permit
    assert at_retry == [(0, True), (0, True)]  # and none was held between attempts
    stats = limiter.stats()
    assert stats["acquired"] == 3 + 2  # three attempts, two probes from on_retry
    assert stats["in_flight"] == 0 and stats["retries"] == 2


def test_a_retrying_call_lets_a_queued_caller_in_during_its_delay() -> None:
    """Invariant: with one slot, a caller queued during attempt 1 gets the slot before
    attempt 2 (the retrying call does not sit on it while sleeping), and no two holders
    ever overlap."""
    limiter = ct.Limiter(max_concurrent=1)
    intervals: dict[str, tuple[float, float]] = {}
    attempts = 0

    def other() -> None:
        with limiter.acquire(timeout=10):
            intervals["other"] = (time.monotonic(), time.monotonic())

    thread = threading.Thread(target=other)

    @ct.throttle(limiter, retry=ct.backoff(base=0.05, jitter="none", max_tries=2))
    def call() -> str:
        nonlocal attempts
        attempts += 1
        start = time.monotonic()
        if attempts == 1:
            thread.start()
            deadline = time.monotonic() + 10
            while limiter.stats()["waiting"] == 0:  # wait until the other caller is queued
                assert time.monotonic() < deadline, "the other thread never queued"
                time.sleep(0.001)
            intervals["attempt1"] = (start, time.monotonic())
            raise RateLimited()
        intervals["attempt2"] = (start, time.monotonic())
        return "ok"

    assert call() == "ok"
    thread.join(10)
    assert intervals["attempt1"][1] <= intervals["other"][0]
    assert intervals["other"][1] <= intervals["attempt2"][0]
    assert max_overlap(list(intervals.values())) == 1
    assert limiter.stats()["in_flight"] == 0


def test_async_throttle_takes_a_permit_per_attempt_and_releases_it_between() -> None:
    limiter = ct.Limiter(max_concurrent=1)
    inside: list[int] = []
    at_retry: list[int] = []

    @ct.throttle(
        limiter,
        retry=ct.backoff(
            base=0.001, on_retry=lambda *_: at_retry.append(limiter.stats()["in_flight"])
        ),
    )
    async def call(x: int) -> int:
        await asyncio.sleep(0)
        inside.append(limiter.stats()["in_flight"])
        if len(inside) < 3:
            raise RateLimited()
        return x * 2

    assert inspect.iscoroutinefunction(call)
    assert call.__name__ == "call"
    assert asyncio.run(call(21)) == 42
    assert inside == [1, 1, 1]
    assert at_retry == [0, 0]
    assert limiter.stats()["acquired"] == 3 and limiter.stats()["in_flight"] == 0


def test_async_throttle_cancelled_during_the_delay_holds_no_permit() -> None:
    limiter = ct.Limiter(max_concurrent=1)
    calls = 0

    async def main() -> None:
        retrying = asyncio.Event()

        @ct.throttle(limiter, retry=ct.backoff(base=100, on_retry=lambda *_: retrying.set()))
        async def call() -> None:
            nonlocal calls
            calls += 1
            raise RateLimited()

        task = asyncio.create_task(call())
        await retrying.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with await limiter.acquire_async(timeout=5):
            pass

    asyncio.run(main())
    assert calls == 1
    assert limiter.stats()["in_flight"] == 0


def test_tokens_as_an_int_are_taken_by_every_attempt() -> None:
    limiter = ct.Limiter(tpm=10_000)
    attempts = 0

    @ct.throttle(limiter, retry=ct.backoff(base=0.001), tokens=7)
    def call() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RateLimited()
        return "ok"

    assert call() == "ok"
    assert limiter.stats()["tokens_granted"] == 2 * 7  # each attempt is a request to pay for


def test_tokens_as_a_function_of_the_calls_arguments() -> None:
    limiter = ct.Limiter(tpm=10_000)
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def count(prompt: str, *, max_tokens: int = 0) -> int:
        seen.append(((prompt,), {"max_tokens": max_tokens}))
        return len(prompt) + max_tokens

    @ct.throttle(limiter, tokens=count)
    def call(prompt: str, *, max_tokens: int = 0) -> str:
        return prompt.upper()

    assert call("hello", max_tokens=10) == "HELLO"
    assert call("hi") == "HI"
    assert seen == [(("hello",), {"max_tokens": 10}), (("hi",), {"max_tokens": 0})]
    assert limiter.stats()["tokens_granted"] == 15 + 2


def test_tokens_function_with_async_throttle_and_retries() -> None:
    limiter = ct.Limiter(tpm=10_000)
    attempts = 0

    @ct.throttle(limiter, retry=ct.backoff(base=0.001), tokens=lambda text: len(text))
    async def call(text: str) -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RateLimited()
        return text

    assert asyncio.run(call("abcd")) == "abcd"
    assert limiter.stats()["tokens_granted"] == 3 * 4


def test_a_named_wait_pauses_other_threads_and_tasks() -> None:
    """Invariant: after a 429 naming 0.3 s, a thread's acquire and an event loop's
    acquire_async that start after it are granted no earlier than ~0.3 s after the 429."""
    limiter = ct.Limiter(max_concurrent=10)
    raised_at: list[float] = []
    granted: dict[str, float] = {}
    paused = threading.Event()

    def in_thread() -> None:
        paused.wait(10)
        with limiter.acquire(timeout=10):
            granted["thread"] = time.monotonic()

    def on_loop() -> None:
        async def main() -> None:
            async with await limiter.acquire_async(timeout=10):
                granted["task"] = time.monotonic()

        paused.wait(10)
        asyncio.run(main())

    others = [threading.Thread(target=in_thread), threading.Thread(target=on_loop)]
    for thread in others:
        thread.start()

    @ct.throttle(limiter, retry=ct.backoff(base=0.001, on_retry=lambda *_: paused.set()))
    def call() -> str:
        if not raised_at:
            raised_at.append(time.monotonic())
            raise RateLimited({"retry-after": "0.3"})
        granted["retry"] = time.monotonic()
        return "ok"

    try:
        assert call() == "ok"
    finally:
        paused.set()
        for thread in others:
            thread.join(10)
    assert set(granted) == {"thread", "task", "retry"}
    for who, when in granted.items():
        assert 0.25 <= when - raised_at[0] < 10, (who, when - raised_at[0])
    assert limiter.stats()["in_flight"] == 0


def test_throttle_without_retry_holds_a_permit_per_call_and_does_not_retry() -> None:
    limiter = ct.Limiter(max_concurrent=2)
    inside: list[int] = []
    calls = 0

    @ct.throttle(limiter)
    def call(fail: bool) -> str:
        nonlocal calls
        calls += 1
        inside.append(limiter.stats()["in_flight"])
        if fail:
            raise RateLimited({"retry-after": "1"})
        return "ok"

    assert call(False) == "ok"
    with pytest.raises(RateLimited) as info:
        call(True)
    assert calls == 2 and inside == [1, 1]
    assert not hasattr(info.value, "__notes__")
    stats = limiter.stats()
    assert stats["acquired"] == 2 and stats["in_flight"] == 0
    assert stats["paused_for"] == 0.0 and stats["retries"] == 0 and stats["give_ups"] == 0


def test_throttle_without_retry_on_an_async_function() -> None:
    limiter = ct.Limiter(max_concurrent=1)

    @ct.throttle(limiter)
    async def call() -> int:
        return limiter.stats()["in_flight"]  # type: ignore[no-any-return]

    assert asyncio.run(call()) == 1
    assert limiter.stats()["in_flight"] == 0


def test_throttle_counts_retries_and_give_ups_on_its_limiter() -> None:
    limiter = ct.Limiter(max_concurrent=2)
    policy = ct.backoff(base=0.001, max_tries=3)

    @ct.throttle(limiter, retry=policy)
    def call() -> None:
        raise RateLimited()

    with pytest.raises(RateLimited) as info:
        call()
    stats = limiter.stats()
    assert (stats["acquired"], stats["retries"], stats["give_ups"]) == (3, 2, 1)
    assert "gave up after 3 tries" in info.value.__notes__[0]
    assert policy.limiter is None  # the policy given to throttle is left as it was


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "name"),
    [
        (("x",), {}, TypeError, "limiter"),
        ((None,), {}, TypeError, "limiter"),
        ((), {"retry": "x"}, TypeError, "retry"),
        ((), {"retry": ct.backoff}, TypeError, "retry"),
        ((), {"tokens": -1}, ValueError, "tokens"),
        ((), {"tokens": 1.5}, TypeError, "tokens"),
        ((), {"tokens": "3"}, TypeError, "tokens"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=rf"\b{name}\b"):
        ct.throttle(*(args or (ct.Limiter(max_concurrent=1),)), **kwargs)
