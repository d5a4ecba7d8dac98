"""Learning from the provider end to end (issue 8): real CrewAI and the real openai SDK against
``FakeProvider`` (2-second windows), which sends OpenAI's rate-limit headers.

Each run has two phases: the first calls (the limiter learns; the SDK's first call also opens
its connection, which delays that request past the limiter's margin), then, the provider's
log and windows reset, the steady state, whose figures are asserted:

- tokens per window binding, no ``max_tokens``: no 429, >= 0.85 of the tokens budget used
  (with the fixed 256-token reservation, about 0.45 is possible). By design up to ~9% goes
  unused whoever packs the calls: a call is up to 1/16 of the budget, and the margin 1/40 of
  the window. Measured 0.93-0.98 alone, 0.93-0.97 after other suites in one process, and
  0.898 once (openai runner) after four suites;
- limits unknown to the user (``adaptive=True``, no rpm/tpm): no 429, >= 0.9 of the requests
  budget used (1.0 measured);
- a second client takes 30% of the key's budget, unseen: at most 2 429s in 48 calls (0 to 2
  measured), >= 0.8 of the other 70% used, and the other client refused at most 4 times
  (the two race for a slot freed at the same instant; 0 to 4 measured). A 429 that the
  foreign estimate does not explain lowers the rates (AIMD) for about half a window: measured
  0.91-0.93 of the 70% without a 429, 0.84-0.87 with one or two (0.84 seen in CI).

Nothing learned ever raises a configured limit: tests/test_learning.py (hypothesis) and the
Rust unit tests of src/core/adaptive.rs.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import openai
import pytest
from _crewai import MARKS
from crewai import LLM, Agent, Crew, Task

import crewthrottle as ct
from crewthrottle.crewai import kickoff_all
from crewthrottle.testing import FakeProvider, _stats

pytestmark = MARKS

WINDOW = 2.0
MODEL = "gpt-4o-mini"


@dataclass(frozen=True)
class Scenario:
    provider: dict[str, Any]
    limiter: dict[str, Any]
    by: Literal["requests", "tokens"]
    calls: int  # in the measured phase: about four windows' worth


SCENARIOS = {
    # 70-110 prompt + 70 completion tokens: about 20 calls a window (a call that is a tenth of
    # the budget leaves up to a tenth unused whoever packs them, the provider included).
    "tokens-bound": Scenario(
        {"tpm": 3_200, "rpm": 1_000, "completion_tokens": 70}, {"tpm": 3_200, "rpm": 1_000},
        "tokens", 80,
    ),
    "limits-unknown": Scenario(
        {"rpm": 10, "tpm": 100_000}, {"adaptive": True}, "requests", 40
    ),
    "shared-key": Scenario(
        {"rpm": 14, "tpm": 100_000, "foreign_share": 0.3}, {"rpm": 14, "tpm": 100_000},
        "requests", 48,
    ),
}  # fmt: skip


def openai_runner(provider: FakeProvider, limiter: ct.Limiter) -> Callable[[int], None]:
    """``n`` calls of the openai SDK on 4 threads, throttled with ``tokens=ct.estimate()``,
    responses fed to the limiter by ``ct.http_hooks``."""
    http = openai.DefaultHttpxClient(event_hooks=ct.http_hooks(limiter))
    client = openai.OpenAI(
        base_url=provider.base_url, api_key="fake", max_retries=0, http_client=http
    )

    @ct.throttle(limiter, retry=ct.backoff(max_tries=6, base=0.1), tokens=ct.estimate())
    def ask(messages: Any, **options: Any) -> Any:
        return client.chat.completions.create(messages=messages, **options)

    def run(n: int) -> None:
        text = "Name one risk of scaling LLM agents, in one line. " * 7  # ~90 tokens
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            calls = [
                pool.submit(ask, [{"role": "user", "content": f"{i} {text}"}], model=MODEL)
                for i in range(n)
            ]
            for call in calls:
                call.result()

    return run


def crewai_runner(provider: FakeProvider, limiter: ct.Limiter) -> Callable[[int], None]:
    """``n`` calls: crews of four one-line tasks (copies of one crew) through ``kickoff_all``,
    8 at a time; the LLM sets no ``max_tokens``."""
    llm = LLM(model=MODEL, base_url=provider.base_url, api_key="fake")
    agent = Agent(role="Analyst", goal="Answer in one line", backstory="Terse.", llm=llm)
    tasks = [
        Task(
            description=f"Question {{n}}.{k}: name one risk.",
            expected_output="A line.",
            agent=agent,
        )
        for k in range(4)
    ]
    crew = Crew(agents=[agent], tasks=tasks)

    def run(n: int) -> None:
        inputs = [{"n": str(i)} for i in range(n // 4)]
        results = kickoff_all(crew, inputs=inputs, limiter=limiter, max_workers=8)
        assert all("fake answer" in result.raw for result in results)

    return run


RUNNERS = {"openai": openai_runner, "crewai": crewai_runner}


def utilisation(provider: FakeProvider, by: Literal["requests", "tokens"]) -> float:
    """``provider.utilisation(by)`` averaged over where its windows start (20 phases of a
    window after the first accepted request): bursts, as a token-bound limiter lets through
    when old tokens leave the window, may otherwise fall on the edges of the windows counted
    and make the figure a matter of luck. Each phase's figure is at most 1.0, so their mean
    is too."""
    limits = {"requests": provider._limits.rpm, "tokens": provider._limits.tpm}
    limit = limits[by]
    assert limit is not None
    accepted = [r for r in provider.log if r.accepted]
    figures = []
    for phase in range(20):
        later = accepted[0].start + WINDOW * phase / 20
        records = [r for r in accepted if r.start >= later]
        size = (lambda r: 1) if by == "requests" else (lambda r: r.total_tokens)
        figures.append(_stats.utilisation(records, limit, WINDOW, size))
    return sum(figures) / len(figures)


def refused(provider: FakeProvider) -> list[str]:
    start = provider.log[0].start if provider.log else 0.0
    return [f"{r.reason} at {r.start - start:.3f} s" for r in provider.log if r.status == 429]


@pytest.mark.parametrize("client", RUNNERS)
@pytest.mark.parametrize("name", SCENARIOS)
def test_the_steady_state_uses_the_budget_without_429s(name: str, client: str) -> None:
    scenario = SCENARIOS[name]
    with FakeProvider(window=WINDOW, latency=0.05, **scenario.provider) as provider:
        limiter = ct.Limiter(window=WINDOW, margin=0.05, **scenario.limiter)
        run = RUNNERS[client](provider, limiter)
        run(10)  # the first responses: limits, sizes and other traffic learned
        provider.reset()
        run(scenario.calls)
        used = utilisation(provider, scenario.by)
        accepted, foreign_refused = provider.foreign_requests

    stats = limiter.stats()
    learned = ct.token_estimates(limiter)
    print(
        f"{name}/{client}: 429s {provider.count(status=429)}, utilisation {used:.3f}, "
        f"limits {stats['effective_rpm']}/{stats['effective_tpm']} ({stats['limits_reason']}), "
        f"foreign accepted/refused {accepted}/{foreign_refused}, estimates {learned}"
    )
    if name == "shared-key":
        assert provider.count(status=429) <= 2, refused(provider)
        assert used >= 0.8 * 0.7  # the seed's fix uses 0.36 of it (README, "Learning")
        assert foreign_refused <= 4
        return
    assert provider.count(status=429) == 0, refused(provider)
    assert used >= (0.85 if name == "tokens-bound" else 0.9)
    if name == "tokens-bound":
        assert learned[MODEL]["learned_completion"] and learned[MODEL]["completion_tokens"] == 70
    else:
        assert (stats["effective_rpm"], stats["limits_reason"]) == (10, "headers")
