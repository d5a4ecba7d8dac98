"""A simulated 429 storm: how many requests four retry strategies make, and how many calls fail.

Issue 3's "Done means": 50 threads each make a few logical calls to a fake provider that
answers 429 whenever more than 5 requests arrived in the last second (a sliding one-second
window). Like OpenAI's, the provider counts every request that arrives, rejected ones too
("unsuccessful requests contribute to your per-minute limit"), so retries that come back too
soon keep the window full. Each 429 carries ``retry-after``: the seconds until the window
would have room again if nobody else arrived.

Strategies compared:

- ``naive``: the loop users write (tenacity's ``wait_random_exponential`` shape): up to 4
  tries, sleeping ``uniform(0, min(0.5 * 2**n, 8))`` between them; no budget, no pause.
- ``backoff``: ``@ct.backoff()`` alone: the same tries, but each waits at least Retry-After.
- ``budget+pause``: ``@ct.throttle(Limiter(max_concurrent=5), retry=ct.backoff(budget=
  RetryBudget()))``: one 429's Retry-After pauses every thread; retries capped by the budget.
- ``rpm-limiter``: ``@ct.throttle(Limiter(rpm=5, window=1.0), retry=ct.backoff())``: the
  limiter shapes traffic to the provider's limit, so 429s should (almost) never happen.

Run: ``.venv/bin/python benches/storm.py [--threads 50] [--calls 4] [--only MODE ...]``.

``--profile tokens shared`` runs issue 8's profiles instead (see ``storm_learning.py``): a
tokens-bound workload without ``max_tokens``, and a key shared with an unseen client.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from _common import aligned_markdown

import crewthrottle as ct

LIMIT = 5  # requests per WINDOW the provider accepts
WINDOW = 1.0  # seconds
LATENCY = 0.02  # seconds each request takes to answer, accepted or not


class _Response:
    def __init__(self, retry_after: float) -> None:
        self.status_code = 429
        self.headers = {"retry-after": f"{retry_after:.3f}"}


class RateLimitError(Exception):
    """Shaped like ``openai.RateLimitError``: a status code and ``response.headers``."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"Error code: 429 - rate limit reached, retry after {retry_after:.3f} s")
        self.status_code = 429
        self.response = _Response(retry_after)


class Provider:
    """A thread-safe fake endpoint: at most ``LIMIT`` arrivals in any ``WINDOW`` seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrivals: deque[float] = deque()
        self.requests = 0
        self.rejected = 0

    def complete(self) -> str:
        now = time.monotonic()
        with self._lock:
            self.requests += 1
            while self._arrivals and self._arrivals[0] <= now - WINDOW:
                self._arrivals.popleft()
            self._arrivals.append(now)  # rejected requests count too, as at OpenAI
            over = len(self._arrivals) > LIMIT
            if over:
                self.rejected += 1
                # Room again once all but the LIMIT - 1 latest arrivals have left the window.
                retry_after = self._arrivals[-LIMIT] + WINDOW - now
        time.sleep(LATENCY)
        if over:
            raise RateLimitError(max(retry_after, 0.0))
        return "ok"


def naive(provider: Provider) -> Callable[[], str]:
    """The retry loop users write: exponential backoff with full jitter, nothing shared."""
    rng = random.Random()

    def call() -> str:
        for attempt in range(4):
            try:
                return provider.complete()
            except RateLimitError:
                if attempt == 3:
                    raise
                time.sleep(rng.uniform(0, min(0.5 * 2**attempt, 8.0)))
        raise AssertionError("unreachable")

    return call


def backoff_alone(provider: Provider) -> Callable[[], str]:
    return ct.backoff()(provider.complete)


def budget_and_pause(provider: Provider) -> Callable[[], str]:
    limiter = ct.Limiter(max_concurrent=5, name="storm")
    policy = ct.backoff(budget=ct.RetryBudget())
    return ct.throttle(limiter, retry=policy)(provider.complete)


def rpm_limiter(provider: Provider) -> Callable[[], str]:
    limiter = ct.Limiter(rpm=LIMIT, window=WINDOW, name="storm")
    return ct.throttle(limiter, retry=ct.backoff())(provider.complete)


MODES: dict[str, Callable[[Provider], Callable[[], str]]] = {
    "naive": naive,
    "backoff": backoff_alone,
    "budget+pause": budget_and_pause,
    "rpm-limiter": rpm_limiter,
}


@dataclass
class Result:
    mode: str
    logical: int
    requests: int
    rejected: int
    failed: int
    seconds: float


def storm(mode: str, threads: int, calls: int) -> Result:
    """``threads`` threads each make ``calls`` logical calls, started together."""
    provider = Provider()
    call = MODES[mode](provider)
    failed = [0] * threads
    start = threading.Barrier(threads + 1)

    def work(index: int) -> None:
        start.wait()
        for _ in range(calls):
            try:
                call()
            except RateLimitError:
                failed[index] += 1

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    start.wait()
    began = time.monotonic()
    for thread in pool:
        thread.join()
    seconds = time.monotonic() - began
    return Result(mode, threads * calls, provider.requests, provider.rejected, sum(failed), seconds)


def table(results: list[Result]) -> str:
    head = ("mode", "logical calls", "HTTP calls", "429s", "failed calls", "wall time")
    rows = [
        (
            r.mode,
            str(r.logical),
            f"{r.requests} ({r.requests / r.logical:.2f}x)",
            str(r.rejected),
            f"{r.failed} ({100 * r.failed / r.logical:.0f}%)",
            f"{r.seconds:.1f} s",
        )
        for r in results
    ]
    return aligned_markdown(head, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=50)
    parser.add_argument("--calls", type=int, default=4, help="logical calls per thread")
    parser.add_argument("--only", nargs="+", choices=sorted(MODES), help="modes to run")
    parser.add_argument(
        "--profile", nargs="+", choices=("tokens", "shared"), help="issue 8's profiles instead"
    )
    args = parser.parse_args(argv)
    if args.profile:
        return learning_profiles(args.profile)
    modes = args.only or list(MODES)
    print(
        f"{args.threads} threads x {args.calls} logical calls against a provider allowing "
        f"{LIMIT} requests per {WINDOW:g} s (sliding; rejected requests count), "
        f"{LATENCY * 1000:.0f} ms per request; Python {sys.version.split()[0]}",
        flush=True,
    )
    results = []
    for mode in modes:
        results.append(storm(mode, args.threads, args.calls))
        r = results[-1]
        print(f"  {mode}: {r.seconds:.1f} s", file=sys.stderr, flush=True)
    print(table(results))
    return 0


def learning_profiles(names: list[str]) -> int:
    import storm_learning as learning

    print(f"Python {sys.version.split()[0]}, crewthrottle {ct.__version__}", flush=True)
    for name in names:
        print(f"\n{learning.describe(name)}", flush=True)
        results = []
        for mode in learning.modes(name):
            results.append(learning.run(name, mode))
            print(f"  {mode}: {results[-1].wall:.1f} s", file=sys.stderr, flush=True)
        print(learning.table(name, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
