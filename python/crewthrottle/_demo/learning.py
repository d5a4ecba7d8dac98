"""``python -m crewthrottle demo --profile tokens|shared``: issue 8's two profiles, with real
CrewAI crews against the fake provider (which sends OpenAI's rate-limit headers).

- ``tokens``: tokens per window bind and the LLM sets no ``max_tokens`` (70-120 prompt and 70
  completion tokens a call, three tasks a crew; the provider holds about 5 calls a window).
  crewthrottle reserving the fixed 256 completion tokens, and learning the completion size
  from the replies, against the provider's theoretical minimum wall time.
- ``shared``: another client uses 30% of the key's requests, unseen. crewthrottle configured
  with the key's limits, and ``adaptive`` (no limit given).

Both against what users do instead: the SDK's own retries (exponential backoff with jitter,
``max_retries=6``, all crews at once) and the seed's fix (batches of 5, ``sleep(2)``,
``max_retries=3``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crewthrottle._demo import chart
from crewthrottle.testing import FakeProvider

MODES = {
    "tokens": ("seed-fix", "retries", "fixed-256", "crewthrottle"),
    "shared": ("seed-fix", "retries", "crewthrottle", "adaptive"),
}
TITLES = {
    "seed-fix": "the usual fix: batches of 5 + sleep(2) + max_retries=3",
    "retries": "SDK retries only (backoff with jitter, max_retries=6)",
    "fixed-256": "crewthrottle reserving a fixed 256 completion tokens a call",
    "crewthrottle": "crewthrottle: kickoff_all + one Limiter with the key's limits",
    "adaptive": "crewthrottle: Limiter(adaptive=True), no limit given",
}
#: The provider of each profile; the limiter modes are configured with its rpm and tpm.
PROVIDERS: dict[str, dict[str, Any]] = {
    "tokens": {"rpm": 1_000, "tpm": 800, "completion_tokens": 70},
    "shared": {"rpm": 10, "tpm": 100_000, "foreign_share": 0.3},
}


@dataclass(frozen=True)
class Outcome:
    mode: str
    ok: int
    failed: int
    requests: int
    refused: int
    wall: float
    used: float
    tokens: int
    foreign_refused: int
    series: chart.Series


def run_crewthrottle(crews: list[Any], profile: str, window: float, mode: str) -> list[Any]:
    import crewthrottle as ct
    from crewthrottle._integrations import prompt_tokens
    from crewthrottle.crewai import kickoff_all, throttle_llm

    limits = {k: v for k, v in PROVIDERS[profile].items() if k in ("rpm", "tpm")}
    options: dict[str, Any] = {"adaptive": True} if mode == "adaptive" else limits
    limiter = ct.Limiter(window=window, name=f"demo-{mode}", **options)
    if mode == "fixed-256":  # what every call reserved before issue 8
        for crew in crews:
            for agent in crew.agents:
                agent.llm = throttle_llm(
                    agent.llm, limiter, estimate_tokens=lambda m, llm: prompt_tokens(m) + 256
                )
    return kickoff_all(crews, limiter=limiter, max_workers=len(crews), return_exceptions=True)


def run_mode(profile: str, mode: str, args: argparse.Namespace) -> Outcome:
    from crewthrottle import _demo as demo

    with FakeProvider(
        window=args.window,
        latency=args.latency,
        rejected_consume_quota=True,  # as OpenAI: a refused request still counts
        **PROVIDERS[profile],
    ) as provider:
        retries = {"seed-fix": 3, "retries": 6}.get(mode)
        tasks = 3 if profile == "tokens" else 1
        crews = demo.build_crews(args.crews, provider.base_url, max_retries=retries, tasks=tasks)
        progress = demo.Progress(mode, args.crews, provider, args.quiet)
        deadline = progress.started + args.time_limit
        chatter = io.StringIO()
        with progress, contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            if mode == "seed-fix":
                demo.run_seed_fix(crews, progress.done, None, deadline)  # type: ignore[arg-type]
            elif mode == "retries":
                demo.run_unthrottled(crews, progress.done, None, deadline)  # type: ignore[arg-type]
            else:
                for result in run_crewthrottle(crews, profile, args.window, mode):
                    progress.done(not isinstance(result, BaseException))
        wall = time.monotonic() - progress.started
        log, foreign_refused = list(provider.log), provider.foreign_requests[1]
    return outcome(profile, mode, args, progress, wall, log, foreign_refused)


def outcome(
    profile: str,
    mode: str,
    args: argparse.Namespace,
    progress: Any,
    wall: float,
    log: list[Any],
    foreign_refused: int,
) -> Outcome:
    accepted = [r for r in log if r.status < 400]
    tokens = sum(r.total_tokens for r in accepted)
    by_tokens = profile == "tokens"
    limit = PROVIDERS[profile]["tpm" if by_tokens else "rpm"]
    # A sliding window lets `limit` through in each window the run touches.
    allowed = limit * math.ceil(wall / args.window)
    refused = sum(1 for r in log if r.status == 429)
    series = chart.Series(
        f"{TITLES[mode]}: {progress.ok}/{args.crews} crews ok, {refused} x 429, {wall:.1f} s",
        [(r.start - progress.started, r.status) for r in log],
    )
    used = (tokens if by_tokens else len(accepted)) / allowed
    ok, failed = progress.ok, progress.failed
    return Outcome(mode, ok, failed, len(log), refused, wall, used, tokens, foreign_refused, series)


def table(profile: str, outcomes: list[Outcome], args: argparse.Namespace) -> str:
    head = f"{'mode':<14}{'crews ok':>10}{'failed':>8}{'HTTP reqs':>11}{'429s':>7}{'wall s':>8}"
    head += f"{'x min':>7}{'used':>7}" + (f"{'other 429s':>12}" if profile == "shared" else "")
    rows = [head, "-" * len(head)]
    for o in outcomes:
        row = f"{o.mode:<14}{f'{o.ok}/{args.crews}':>10}{o.failed:>8}{o.requests:>11}"
        row += f"{o.refused:>7}{o.wall:>8.1f}{o.wall / minimum(profile, o, args):>7.2f}"
        row += f"{o.used:>7.0%}" + (f"{o.foreign_refused:>12}" if profile == "shared" else "")
        rows.append(row)
    return "\n".join(rows)


def minimum(profile: str, outcome: Outcome, args: argparse.Namespace) -> float:
    """The provider's own bound on the wall time: the first window's budget at once, then a
    window per budget (the tokens the crews used; the 70% of requests left to us)."""
    if profile == "tokens":
        windows = float(outcome.tokens / PROVIDERS["tokens"]["tpm"])
    else:
        windows = float(args.crews / (PROVIDERS["shared"]["rpm"] * 0.7))
    window = float(args.window)
    return max(window, (math.ceil(windows) - 1) * window)


def main(args: argparse.Namespace, quiet_crewai: Callable[[], None]) -> int:
    """Run a profile's modes (``args.modes`` among :data:`MODES`); the process's exit code."""
    profile = args.profile
    quiet_crewai()
    limits = ", ".join(f"{k}={v}" for k, v in PROVIDERS[profile].items())
    print(
        f"Profile {profile}: fake provider with {limits} per {args.window:g} s window (a "
        f"scaled minute), {args.latency:g} s per completion; the LLM sets no max_tokens. "
        f"{args.crews} crews launched together.\n"
    )
    outcomes = [run_mode(profile, mode, args) for mode in args.modes]
    print()
    print(table(profile, outcomes, args))
    path = chart.write(
        args.chart,
        [o.series for o in outcomes],
        limit_per_bin=PROVIDERS[profile]["rpm"] / 8 if profile == "shared" else 5 / 8,
        bin_seconds=args.window / 8,
        note=f"profile {profile}: {limits} per {args.window:g} s, {args.crews} crews",
    )
    print(f"\nChart: {path.resolve()}")
    return 0
