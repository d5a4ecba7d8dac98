"""Smoke test of an installed crewthrottle wheel, run by check_dist.py in a fresh virtual
environment with no Rust toolchain on PATH: ``python smoke_wheel.py EXPECTED_VERSION``.

Standard library only (the wheel has no dependencies); every step asserts what it prints.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

import crewthrottle as ct
import crewthrottle.metrics
from crewthrottle.testing import FakeProvider


def environment(expected_version: str) -> None:
    assert shutil.which("cargo") is None and shutil.which("rustc") is None, "Rust on PATH"
    package = Path(ct.__file__).parent
    assert Path(sys.prefix) in package.parents, f"{package} is not in {sys.prefix}"
    assert sys.prefix != sys.base_prefix, "not in a virtual environment"
    native = Path(ct._native.__file__).name
    assert (package / "py.typed").is_file() and (package / "_native.pyi").is_file()
    version = importlib.metadata.version("crewthrottle")
    assert version == ct.__version__ == expected_version, (version, ct.__version__)
    print(f"python {sys.version.split()[0]} in {sys.prefix}; cargo: None, rustc: None")
    print(f"crewthrottle {version} from {package} ({native}, py.typed, _native.pyi)")


def primitives() -> None:
    limiter = ct.Limiter(max_concurrent=2, rpm=100, tpm=10_000, window=1.0, name="smoke")
    with limiter.acquire(tokens=50) as permit:
        permit.settle(40)
    assert limiter.try_acquire() is not None  # released at once by GC
    stats = limiter.stats()
    assert stats["acquired"] == 2 and stats["tokens_granted"] == 40, stats
    sem = ct.BoundedSemaphore(2)
    assert sem.acquire() and sem.acquire(blocking=False) and not sem.acquire(blocking=False)
    sem.release(2)
    bucket = ct.TokenBucket(100, per=1.0, burst=2)
    assert bucket.try_acquire(2) and not bucket.try_acquire() and bucket.acquire(timeout=1.0)
    try:
        ct.Limiter(tpm=10).acquire(tokens=50)
    except ValueError as exc:  # more than the bucket can ever hold: refused at once
        print(f"Limiter, BoundedSemaphore, TokenBucket: ok; bad input: {exc}")
    else:
        raise AssertionError("a request larger than tpm was not refused")


async def in_event_loop() -> int:
    limiter = ct.Limiter(max_concurrent=1, name="async")

    @limiter
    async def job(i: int) -> int:
        await asyncio.sleep(0)
        return i

    permit = await limiter.acquire_async(timeout=1.0)
    try:
        await limiter.acquire_async(timeout=0.01)
        raise AssertionError("a second permit while max_concurrent=1")
    except ct.AcquireTimeout:
        pass
    permit.release()
    async with ct.Semaphore(1):
        results = await asyncio.gather(*(job(i) for i in range(5)))
    assert results == list(range(5))
    return limiter.stats()["acquired"]


class RateLimited(Exception):
    status_code = 429  # shaped like openai.RateLimitError


def retried_once() -> int:
    calls: list[int] = []

    @ct.backoff(max_tries=3, base=0.001)
    def flaky() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RateLimited("429")
        return len(calls)

    assert flaky() == 2
    return len(calls)


def round_trip() -> None:
    """Throttled, retried chat completions against the fake provider: no 429 gets through.

    The provider allows 4 a window, the limiter 3: a slow first connection in a fresh process
    (imports inside urllib) must not turn the smoke test into a timing test."""
    limiter = ct.Limiter(max_concurrent=2, rpm=3, window=1.0, name="fake-openai")
    with FakeProvider(rpm=4, window=1.0) as provider:

        @ct.throttle(limiter, retry=ct.backoff(max_tries=3, base=0.05))
        def ask(prompt: str) -> str:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
            request = urllib.request.Request(
                provider.base_url + "/chat/completions",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json", "Authorization": "Bearer fake"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                reply = json.load(response)
            return str(reply["choices"][0]["message"]["content"])

        answers = [ask(f"question {i}") for i in range(5)]
        ok, refused = provider.count(status=200), provider.count(status=429)
    assert len(answers) == 5 and all(answers) and (ok, refused) == (5, 0), (ok, refused)
    print(f"FakeProvider round trip: {ok} answers, {refused} 429s, {limiter.stats()['acquired']}"
          " permits")  # fmt: skip


def metrics_without_extras() -> None:
    limiters = [ct.Limiter(name="metrics")]
    for register in (crewthrottle.metrics.instrument, crewthrottle.metrics.register_prometheus):
        try:
            register(None, limiters)
        except ImportError as exc:
            assert "crewthrottle[" in str(exc), exc
        else:
            return  # the extra happens to be installed: nothing to check here
    print("crewthrottle.metrics without its extras: a clear ImportError naming the extra")


def main() -> None:
    environment(sys.argv[1])
    primitives()
    print(f"acquire_async, async with, @limiter on a coroutine: ok ({asyncio.run(in_event_loop())}"
          " grants)")  # fmt: skip
    print(f"backoff: answered after {retried_once()} tries")
    round_trip()
    metrics_without_extras()
    print("smoke test: OK")


if __name__ == "__main__":
    main()
