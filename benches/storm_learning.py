"""Issue 8's two profiles, against ``FakeProvider`` (OpenAI's rate-limit headers on every
answer) with the real openai SDK, every strategy in one run:

- ``tokens``: tokens per window bind, the calls set no ``max_tokens`` (~90 prompt + 70
  completion tokens each). crewthrottle reserving the fixed 256 completion tokens, and
  learning the completion size, against the provider's theoretical minimum wall time.
- ``shared``: another client uses 30% of the key's requests per window, unseen. crewthrottle
  configured with the key's limits, and adaptive (no limit given).

Each against what users write instead: ``tenacity`` (``wait_random_exponential``, 8 tries,
nothing shared, no limiter) and the seed's fix (batches of 5, a window's sleep between,
the SDK's own ``max_retries=3``). A window is 2 s (a scaled minute); 20 threads.

Run: ``.venv/bin/python benches/storm.py --profile tokens shared``.
"""

from __future__ import annotations

import concurrent.futures
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import openai
import tenacity
from _common import aligned_markdown

import crewthrottle as ct
from crewthrottle.testing import FakeProvider

WINDOW = 2.0
LATENCY = 0.1
THREADS = 20
MODEL = "gpt-4o-mini"
TEXT = "Name one risk of scaling LLM agents, in one line. " * 7  # ~90 prompt tokens

Ask = Callable[[int], Any]


@dataclass(frozen=True)
class Profile:
    calls: int
    provider: dict[str, Any]
    limits: dict[str, Any]  # the key's limits, as the limiter modes are configured


PROFILES = {
    "tokens": Profile(120, {"tpm": 1_600, "rpm": 1_000, "completion_tokens": 70}, {"tpm": 1_600}),
    "shared": Profile(100, {"rpm": 20, "tpm": 100_000, "foreign_share": 0.3}, {"rpm": 20}),
}


@dataclass
class Result:
    mode: str
    ok: int
    failed: int
    requests: int
    refused: int
    wall: float
    utilisation: float
    foreign_refused: int


def client(provider: FakeProvider, limiter: ct.Limiter | None = None, retries: int = 0) -> Any:
    hooks = ct.http_hooks(limiter) if limiter is not None else {}
    http = openai.DefaultHttpxClient(event_hooks=hooks)
    return openai.OpenAI(
        base_url=provider.base_url, api_key="fake", max_retries=retries, http_client=http
    )


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{i} {TEXT}"}]


def with_tenacity(provider: FakeProvider, profile: Profile) -> Ask:
    sdk = client(provider)

    @tenacity.retry(
        wait=tenacity.wait_random_exponential(multiplier=0.5, max=8),
        stop=tenacity.stop_after_attempt(8),
        retry=tenacity.retry_if_exception_type(openai.RateLimitError),
        reraise=True,
    )
    def ask(i: int) -> Any:
        return sdk.chat.completions.create(model=MODEL, messages=messages(i))

    return ask


def seed_fix(provider: FakeProvider, profile: Profile) -> Ask:
    sdk = client(provider, retries=3)
    gate, started = __import__("threading").Lock(), [0]

    def ask(i: int) -> Any:
        with gate:  # batches of 5, a window's sleep between them
            if started[0] and started[0] % 5 == 0:
                time.sleep(WINDOW)
            started[0] += 1
        return sdk.chat.completions.create(model=MODEL, messages=messages(i))

    return ask


def ours(provider: FakeProvider, tokens: Any, limits: dict[str, Any]) -> tuple[Ask, ct.Limiter]:
    limiter = ct.Limiter(window=WINDOW, margin=0.05, **limits)
    sdk = client(provider, limiter)

    @ct.throttle(limiter, retry=ct.backoff(max_tries=8, base=0.5), tokens=tokens)
    def call(messages: Any, **options: Any) -> Any:
        return sdk.chat.completions.create(messages=messages, **options)

    return (lambda i: call(messages(i), model=MODEL)), limiter


def fixed_256(messages: Any, **options: Any) -> int:
    """What every call reserved before issue 8: its prompt plus 256 completion tokens."""
    return ct._integrations.prompt_tokens(messages) + 256


def modes(profile: str) -> dict[str, Callable[[FakeProvider, Profile], Ask]]:
    def limiter_mode(tokens: Any, adaptive: bool = False) -> Callable[..., Ask]:
        def make(provider: FakeProvider, p: Profile) -> Ask:
            limits = {"adaptive": True} if adaptive else p.limits
            return ours(provider, tokens, limits)[0]

        return make

    found: dict[str, Callable[[FakeProvider, Profile], Ask]] = {
        "tenacity": with_tenacity,
        "seed-fix": seed_fix,
    }
    if profile == "tokens":
        found["crewthrottle, 256 fixed"] = limiter_mode(fixed_256)
        found["crewthrottle, learned"] = limiter_mode(ct.estimate())
    else:
        found["crewthrottle, key's limits"] = limiter_mode(ct.estimate())
        found["crewthrottle, adaptive"] = limiter_mode(ct.estimate(), adaptive=True)
    return found


def run(profile_name: str, mode: str) -> Result:
    profile = PROFILES[profile_name]
    with FakeProvider(window=WINDOW, latency=LATENCY, **profile.provider) as provider:
        ask = modes(profile_name)[mode](provider, profile)
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            outcomes = list(pool.map(lambda i: _quietly(ask, i), range(profile.calls)))
        wall = time.monotonic() - started
        by = "tokens" if profile_name == "tokens" else "requests"
        used = provider.utilisation(by=by)
        return Result(
            mode,
            outcomes.count(True),
            outcomes.count(False),
            provider.count(),
            provider.count(status=429),
            wall,
            used,
            provider.foreign_requests[1],
        )


def _quietly(ask: Ask, i: int) -> bool:
    try:
        ask(i)
    except openai.RateLimitError:
        return False
    return True


def theoretical_minimum(profile_name: str) -> float:
    """The provider's own bound: the first window's budget at once, then a window per
    budget (tokens: 160 a call; shared: the 70% of requests left)."""
    profile = PROFILES[profile_name]
    if profile_name == "tokens":
        windows = profile.calls * 160 / profile.provider["tpm"]
    else:
        windows = profile.calls / (profile.provider["rpm"] * 0.7)
    return (math.ceil(windows) - 1) * WINDOW


def table(profile_name: str, results: list[Result]) -> str:
    best = theoretical_minimum(profile_name)
    head = ("mode", "ok", "failed", "HTTP", "429s", "wall", "x min", "used", "other refused")
    rows = [
        (
            r.mode,
            str(r.ok),
            str(r.failed),
            str(r.requests),
            str(r.refused),
            f"{r.wall:.1f} s",
            f"{r.wall / best:.2f}",
            f"{r.utilisation:.0%}",
            str(r.foreign_refused),
        )
        for r in results
    ]
    return aligned_markdown(head, rows)


def describe(profile_name: str) -> str:
    p = PROFILES[profile_name]
    limits = ", ".join(f"{k}={v}" for k, v in p.provider.items())
    return (
        f"profile {profile_name}: {p.calls} calls on {THREADS} threads, provider {limits} per "
        f"{WINDOW:g} s window, {LATENCY * 1000:.0f} ms per answer; theoretical minimum "
        f"{theoretical_minimum(profile_name):.1f} s; 'used' is the share of the provider's "
        f"{'tokens' if profile_name == 'tokens' else 'requests'} per window used in steady state"
    )
