"""An absurd Retry-After cannot pause a shared limiter for good (issue 9, item 6).

`retry-after: 1e300` (or an HTTP date in year 9999) makes `backoff` give up, as before; but
the limiter it pauses for everyone is paused at most the longer of the policy's `max_delay`
and the limiter's `window` (a rate limit resets within its window), and `Limiter.resume()`
lifts any pause.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import openai
import pytest

import crewthrottle as ct

REQUEST = httpx.Request("POST", "https://api.openai.com/v1/chat/completions")


def rate_limited(retry_after: str) -> openai.RateLimitError:
    """A real openai 429, built as the SDK builds it from a response."""
    response = httpx.Response(429, headers={"retry-after": retry_after}, request=REQUEST)
    return openai.RateLimitError("Error code: 429", response=response, body=None)


@pytest.mark.parametrize(
    "retry_after",
    ["1e300", "1e18", "Fri, 31 Dec 9999 23:59:59 GMT", str(2**64)],
    ids=["1e300", "1e18", "year-9999", "2**64"],
)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_absurd_retry_after_pauses_the_limiter_at_most_max_delay_or_window(
    kind: str, retry_after: str
) -> None:
    limiter = ct.Limiter(rpm=100, window=1.0)
    error = rate_limited(retry_after)
    policy = ct.backoff(max_tries=3, max_delay=2.0, limiter=limiter)

    def call() -> None:
        raise error

    async def acall() -> None:
        raise error

    # The provider's own error propagates (backoff gives up at once): no OverflowError, no
    # ValueError from pause(), nothing hiding it.
    with pytest.raises(openai.RateLimitError) as info:
        if kind == "sync":
            policy(call)()
        else:
            asyncio.run(policy(acall)())
    assert info.value is error
    paused_for = limiter.stats()["paused_for"]
    assert 1.0 < paused_for <= 2.0, f"paused for {paused_for} s, not capped at max_delay=2"
    assert limiter.stats()["give_ups"] == 1


def test_the_ceiling_is_the_limiters_window_when_longer_than_max_delay() -> None:
    limiter = ct.Limiter(rpm=100, window=30.0)
    policy = ct.backoff(max_tries=3, max_delay=1.0, limiter=limiter)
    with pytest.raises(openai.RateLimitError):
        policy.call(lambda: (_ for _ in ()).throw(rate_limited("1e300")))
    assert 29.0 < limiter.stats()["paused_for"] <= 30.0


def test_a_reasonable_retry_after_still_pauses_for_all_of_it() -> None:
    limiter = ct.Limiter(rpm=100, window=1.0)
    calls = []

    @ct.backoff(max_tries=2, max_delay=30.0, limiter=limiter, on_retry=lambda *a: calls.append(a))
    def call() -> None:
        if not calls:
            raise rate_limited("0.3")

    call()
    assert calls and calls[0][1] >= 0.3


def blocked_waiter(limiter: ct.Limiter) -> tuple[threading.Thread, list[Any]]:
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(limiter.acquire(timeout=30)))
    waiter.start()
    return waiter, got


def test_resume_lifts_a_pause_and_serves_the_waiters(wait_until: Any) -> None:
    limiter = ct.Limiter(rpm=10, burst=2)
    limiter.pause(1e9)
    assert limiter.try_acquire() is None
    waiter, got = blocked_waiter(limiter)
    wait_until(lambda: limiter.stats()["waiting"] == 1, "the waiter to queue")
    limiter.resume()
    waiter.join(10)
    assert not waiter.is_alive(), "resume() did not serve the waiter"
    assert len(got) == 1
    got[0].release()
    assert limiter.stats()["paused_for"] == 0.0
    assert limiter.try_acquire() is not None


def test_resume_serves_async_waiters_too() -> None:
    limiter = ct.Limiter(max_concurrent=1)
    limiter.pause(1000)

    async def main() -> None:
        waiting = asyncio.ensure_future(limiter.acquire_async(timeout=30))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        limiter.resume()
        permit = await asyncio.wait_for(waiting, 10)
        permit.release()

    asyncio.run(main())


def test_resume_without_a_pause_changes_nothing() -> None:
    limiter = ct.Limiter(max_concurrent=1)
    limiter.resume()
    held = limiter.acquire()
    limiter.resume()
    assert limiter.try_acquire() is None, "resume() must not lift the other limits"
    held.release()


def test_a_pause_after_resume_holds_again() -> None:
    limiter = ct.Limiter(rpm=10)
    limiter.pause(100)
    limiter.resume()
    limiter.pause(100)
    assert limiter.try_acquire() is None
