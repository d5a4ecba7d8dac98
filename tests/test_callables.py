"""Decorators tell sync from async correctly, and refuse what no permit or retry can cover."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import crewthrottle as ct


class AsyncClient:
    """An LLM client shape: an object with ``async def __call__``."""

    def __init__(self, limiter: ct.Limiter) -> None:
        self.limiter = limiter
        self.seen: list[int] = []

    async def __call__(self, prompt: str) -> str:
        self.seen.append(self.limiter.stats()["in_flight"])
        await asyncio.sleep(0)
        return prompt


def test_an_async_callable_object_holds_its_permit_while_it_runs() -> None:
    limiter = ct.Limiter(max_concurrent=1)
    client = AsyncClient(limiter)
    limited = limiter(client)
    throttled = ct.throttle(limiter)(client)
    retried = ct.backoff()(client)
    assert asyncio.run(limited("a")) == "a"
    assert asyncio.run(throttled("b")) == "b"
    assert asyncio.run(retried("c")) == "c"
    assert client.seen == [1, 1, 0]
    assert limiter.stats()["in_flight"] == 0


def gen() -> Iterator[int]:
    yield 1


async def agen() -> AsyncIterator[int]:
    yield 1


@pytest.mark.parametrize("function", [gen, agen], ids=["generator", "async generator"])
@pytest.mark.parametrize(
    "decorate",
    [
        lambda f: ct.Limiter(max_concurrent=1)(f),
        lambda f: ct.throttle(ct.Limiter(max_concurrent=1))(f),
        lambda f: ct.backoff()(f),
    ],
    ids=["limiter", "throttle", "backoff"],
)
def test_generators_are_refused(function: Any, decorate: Any) -> None:
    with pytest.raises(TypeError, match="generator"):
        decorate(function)


def test_a_sync_callable_returning_an_awaitable_is_refused() -> None:
    async def work() -> int:
        return 1

    def sneaky() -> Any:
        return work()

    limiter = ct.Limiter(max_concurrent=1)
    with pytest.raises(TypeError, match="awaitable"):
        limiter(sneaky)()
    with pytest.raises(TypeError, match="awaitable"):
        ct.throttle(limiter)(sneaky)()
    with pytest.raises(TypeError, match="awaitable"):
        ct.backoff().call(sneaky)
    assert limiter.stats()["in_flight"] == 0
