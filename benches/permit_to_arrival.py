"""How long after its permit a CrewAI request reaches the provider, by where the permit is taken.

The limiter counts a request when its permit is taken, the provider when the request arrives;
``margin`` covers the time between (README, "Counted when taken"). This measures that time on
CrewAI's LiteLLM route with a Claude model: 20 one-agent crews through ``kickoff_all`` against
``FakeProvider`` (rpm 10, max_concurrent 4, 2-second windows, as
``tests/test_anthropic.py::test_twenty_claude_crews_without_a_single_429``), per run.

- ``hook``: as shipped, the permit taken in an httpx request hook of the client handed to
  LiteLLM, just before the request is sent;
- ``start``: the permit taken when the attempt starts (what routes without a per-request hook
  do, and what this route did before), before LiteLLM's own work on the request.

Permit times are recorded when ``Attempt.take``/``atake`` return, arrivals from the provider's
log; both sorted and matched in order (the k-th permit with the k-th arrival), which can only
understate the largest delay. Prints the 429s and largest delay per run, then percentiles.

Run: ``.venv/bin/python benches/permit_to_arrival.py [--runs 8] [--mode hook|start]``.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")

import crewthrottle as ct
from crewthrottle import _integrations as shared
from crewthrottle.crewai import _sdk, kickoff_all
from crewthrottle.testing import FakeProvider

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # CrewAI's own ImportWarnings at import time
    from crewai import LLM, Agent, Crew, Task

WINDOW = 2.0
MODEL = "anthropic/claude-3-5-haiku-latest"


def crews(provider: FakeProvider, count: int) -> list[Crew]:
    made = []
    for i in range(count):
        llm = LLM(
            model=MODEL, base_url=provider.url, api_key="f", max_tokens=1_000, is_litellm=True
        )
        agent = Agent(role="Writer", goal="Write one line", backstory="Terse.", llm=llm)
        task = Task(description=f"Say hello to #{i}.", expected_output="A line.", agent=agent)
        made.append(Crew(agents=[agent], tasks=[task]))
    return made


def record_permits(into: list[float]) -> None:
    take, atake = shared.Attempt.take, shared.Attempt.atake

    def timed_take(self: Any) -> None:
        take(self)
        into.append(time.monotonic())

    async def timed_atake(self: Any) -> None:
        await atake(self)
        into.append(time.monotonic())

    shared.Attempt.take, shared.Attempt.atake = timed_take, timed_atake  # type: ignore[method-assign]


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--mode", choices=("hook", "start"), default="hook")
    args = parser.parse_args()
    if args.mode == "start":
        _sdk.litellm_clients = lambda llm, key: None  # no per-request hook: take at the start
    permits: list[float] = []
    record_permits(permits)
    delays: list[float] = []
    for run in range(args.runs):
        permits.clear()
        limits = {"rpm": 10, "max_concurrent": 4, "window": WINDOW}
        with FakeProvider(latency=0.05, input_tpm=20_000, output_tpm=20_000, **limits) as provider:
            limiter = ct.Limiter(**limits, tpm=20_000, margin=0.05)
            kickoff_all(crews(provider, 20), limiter=limiter)
        arrivals = sorted(r.start for r in provider.log)
        run_delays = [a - p for a, p in zip(arrivals, sorted(permits), strict=False)]
        delays += run_delays
        print(
            f"run {run}: 429s {provider.count(status=429)}, "
            f"largest delay {max(run_delays) * 1e3:.1f} ms",
            flush=True,
        )
    figures = ", ".join(
        f"p{p} {percentile(delays, p) * 1e3:.1f} ms" for p in (50, 90, 99, 100)
    ).replace("p100", "max")
    print(f"{args.mode}: {len(delays)} requests, permit to arrival: {figures}")


if __name__ == "__main__":
    main()
