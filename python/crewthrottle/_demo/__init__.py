"""``python -m crewthrottle demo``: 20 CrewAI crews launched together against a fake provider
with OpenAI-like limits — unthrottled, with the usual fix, and with crewthrottle.

A minute is scaled down to ``--window`` seconds so the whole demo takes about a minute.
With ``--processes N`` the crews are split over N processes instead, and the modes compare a
limiter per process with one budget shared on Redis (see ``processes.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crewthrottle._demo import chart, processes
from crewthrottle.testing import FakeProvider

MODES = ("unthrottled", "seed-fix", "crewthrottle")
MODE_TITLES = {
    "unthrottled": "no throttling (20 kickoffs at once)",
    "seed-fix": "the usual fix: batches of 5 + sleep(2) + max_retries=3",
    "crewthrottle": "crewthrottle: kickoff_all + one shared Limiter",
    **processes.MODE_TITLES,
}


@dataclass(frozen=True)
class Limits:
    """The provider's limits, which the crewthrottle mode copies into its Limiter."""

    rpm: int
    tpm: int
    max_concurrent: int
    window: float
    latency: float


@dataclass(frozen=True)
class Outcome:
    """One mode's figures."""

    mode: str
    ok: int
    failed: int
    unfinished: int
    requests: int
    rate_limited: int
    wall: float
    utilisation: float
    series: chart.Series


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m crewthrottle demo", description=__doc__)
    parser.add_argument("--crews", type=int, default=20, help="crews launched together (20)")
    parser.add_argument("--rpm", type=int, default=10, help="provider requests per window (10)")
    parser.add_argument("--tpm", type=int, default=4000, help="provider tokens per window (4000)")
    parser.add_argument("--max-concurrent", type=int, default=4, help="provider concurrency (4)")
    parser.add_argument("--window", type=float, default=8.0, help="a 'minute', in seconds (8)")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per completion (0.5)")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=30.0,
        help="seconds a mode may run; crews still retrying then count as unfinished (30)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="split the crews over N processes and compare a limiter per process with one "
        "budget shared on Redis (1: the in-process modes)",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="the Redis server of the shared budget with --processes (default: a local "
        "redis-server started for the demo, if one is installed)",
    )
    parser.add_argument(
        "--modes",
        help=f"comma-separated: {MODES}, or with --processes {processes.MODES} (default: all)",
    )
    parser.add_argument("--chart", type=Path, default=Path("crewthrottle-demo.svg"))
    parser.add_argument("--quiet", action="store_true", help="no live progress")
    args = parser.parse_args(argv)
    choices = MODES if args.processes == 1 else processes.MODES
    args.modes = [m.strip() for m in (args.modes or ",".join(choices)).split(",") if m.strip()]
    unknown = set(args.modes) - set(choices)
    if unknown:
        parser.error(f"unknown mode(s) {sorted(unknown)}; choose from {choices}")
    if not 1 <= args.processes <= args.crews:
        parser.error("--processes must be between 1 and --crews")
    for name in ("crews", "rpm", "tpm", "max_concurrent"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.window <= 0 or args.latency < 0 or args.time_limit <= 0:
        parser.error("--window and --time-limit must be > 0, --latency >= 0")
    return args


def quiet_crewai() -> None:
    """No telemetry (there is no network here) and no chatter from CrewAI."""
    os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("CREWAI_DISABLE_TRACKING", "true")
    os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
    os.environ.setdefault("OTEL_SDK_DISABLED", "true")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import logging

    # CrewAI reports each failed LLM call on the root logger; the table tells the story.
    for name in ("", "crewai", "LiteLLM", "httpx", "openai"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def build_crews(count: int, base_url: str, *, max_retries: int | None = None) -> list[Any]:
    """The seed's workload: one-agent, one-task crews."""
    from crewai import LLM, Agent, Crew, Task

    crews = []
    for i in range(count):
        options: dict[str, Any] = {} if max_retries is None else {"max_retries": max_retries}
        llm = LLM(model="gpt-4o-mini", base_url=base_url, api_key="fake", **options)
        agent = Agent(
            role="Market analyst",
            goal="Answer the question in one line",
            backstory="A terse analyst who answers at once.",
            llm=llm,
            verbose=False,
        )
        task = Task(
            description=f"Question {i}: name one risk of scaling LLM agents.",
            expected_output="One line.",
            agent=agent,
        )
        crews.append(Crew(agents=[agent], tasks=[task], verbose=False))
    return crews


def kickoff_counting(crew: Any, done: Callable[[bool], None]) -> None:
    try:
        crew.kickoff()
    except Exception:
        done(False)
    else:
        done(True)


def start(crews: Sequence[Any], done: Callable[[bool], None]) -> list[threading.Thread]:
    """One daemon thread per kickoff, so a mode that overruns its time can be left behind."""
    threads = [
        threading.Thread(target=kickoff_counting, args=(crew, done), daemon=True) for crew in crews
    ]
    for thread in threads:
        thread.start()
    return threads


def join(threads: list[threading.Thread], deadline: float) -> None:
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def run_unthrottled(
    crews: list[Any], done: Callable[[bool], None], limits: Limits, deadline: float
) -> None:
    join(start(crews, done), deadline)


def run_seed_fix(
    crews: list[Any], done: Callable[[bool], None], limits: Limits, deadline: float
) -> None:
    for first in range(0, len(crews), 5):
        join(start(crews[first : first + 5], done), deadline)
        pause = min(2.0, deadline - time.monotonic())
        if pause <= 0:
            return
        time.sleep(pause)


def run_crewthrottle(
    crews: list[Any], done: Callable[[bool], None], limits: Limits, deadline: float
) -> None:
    import crewthrottle as ct
    from crewthrottle.crewai import kickoff_all

    limiter = ct.Limiter(
        max_concurrent=limits.max_concurrent,
        rpm=limits.rpm,
        tpm=limits.tpm,
        window=limits.window,
        name="provider",
    )
    results = kickoff_all(crews, limiter=limiter, max_workers=len(crews), return_exceptions=True)
    for result in results:
        done(not isinstance(result, BaseException))


RUNNERS = {
    "unthrottled": run_unthrottled,
    "seed-fix": run_seed_fix,
    "crewthrottle": run_crewthrottle,
}


class Progress:
    """Counts finished crews and shows a live line (unless quiet)."""

    def __init__(self, mode: str, total: int, provider: FakeProvider, quiet: bool) -> None:
        self.mode, self.total, self.provider = mode, total, provider
        self.out = sys.stdout  # CrewAI's own printing is silenced while the mode runs
        self.live = not quiet and self.out.isatty()
        self.ok = self.failed = 0
        self.closed = False  # kickoffs still retrying when the mode's time is up count no more
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.started = time.monotonic()

    def done(self, ok: bool) -> None:
        with self.lock:
            if self.closed:
                return
            if ok:
                self.ok += 1
            else:
                self.failed += 1

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        return (
            f"  {self.mode:<13} {self.ok + self.failed:>3}/{self.total} crews done "
            f"({self.failed} failed)  HTTP {self.provider.count():>4}  "
            f"429s {self.provider.count(status=429):>4}  {elapsed:5.1f} s"
        )

    def show(self) -> None:
        while not self.stop.wait(0.25):
            print("\r" + self.line(), end="", file=self.out, flush=True)

    def __enter__(self) -> Progress:
        if self.live:
            threading.Thread(target=self.show, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.closed = True
        self.stop.set()
        print("\r" + self.line(), file=self.out, flush=True)


#: Starts a mode's crews against the provider at ``base_url``; returns what runs them, given
#: the callback each finished crew reports to and the mode's deadline (``time.monotonic()``).
Prepare = Callable[[str], Callable[[Callable[[bool], None], float], None]]


def run_mode(mode: str, args: argparse.Namespace, limits: Limits) -> Outcome:
    """One in-process mode: its crews built here, kicked off by ``RUNNERS[mode]``."""

    def prepare(base_url: str) -> Callable[[Callable[[bool], None], float], None]:
        max_retries = 3 if mode == "seed-fix" else None
        crews = build_crews(args.crews, base_url, max_retries=max_retries)
        return lambda done, deadline: RUNNERS[mode](crews, done, limits, deadline)

    return measured(mode, args, limits, prepare)


def measured(mode: str, args: argparse.Namespace, limits: Limits, prepare: Prepare) -> Outcome:
    """Runs a mode against a fresh provider with the demo's limits; its figures."""
    with FakeProvider(
        rpm=limits.rpm,
        tpm=limits.tpm,
        max_concurrent=limits.max_concurrent,
        window=limits.window,
        latency=limits.latency,
        rejected_consume_quota=True,  # as OpenAI: a refused request still counts
    ) as provider:
        run = prepare(provider.base_url)
        progress = Progress(mode, args.crews, provider, args.quiet)
        chatter = io.StringIO()
        with progress, contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            run(progress.done, progress.started + args.time_limit)
        wall = time.monotonic() - progress.started
        log = list(provider.log)
    accepted = sum(1 for r in log if r.status < 400)
    # A sliding window lets `rpm` through in each window the run touches.
    allowed = limits.rpm * math.ceil(wall / limits.window)
    series = chart.Series(
        f"{MODE_TITLES[mode]}: {progress.ok}/{args.crews} crews ok, "
        f"{sum(1 for r in log if r.status == 429)} x 429, {wall:.1f} s",
        [(r.start - progress.started, r.status) for r in log],
    )
    return Outcome(
        mode=mode,
        ok=progress.ok,
        failed=progress.failed,
        unfinished=args.crews - progress.ok - progress.failed,
        requests=len(log),
        rate_limited=sum(1 for r in log if r.status == 429),
        wall=wall,
        utilisation=accepted / allowed,
        series=series,
    )


NO_REDIS = (
    "The shared-redis mode needs a Redis server, and there is none: pass --redis "
    "redis://HOST:PORT/0, or install redis-server (apt-get install redis-server, "
    "brew install redis) so that the demo starts a local one; or run --modes per-process."
)


def run_in_processes(args: argparse.Namespace, limits: Limits, url: str | None) -> list[Outcome]:
    """The ``--processes`` modes, served by one set of worker processes while none overruns."""
    provider_limits = {
        "max_concurrent": limits.max_concurrent,
        "rpm": limits.rpm,
        "tpm": limits.tpm,
        "window": limits.window,
    }
    counts = processes.split(args.crews, args.processes)
    outcomes: list[Outcome] = []
    workers: processes.Workers | None = None
    try:
        for mode in args.modes:
            if workers is None or workers.overran:
                if workers is not None:
                    workers.close()
                workers = processes.Workers(counts, provider_limits, url)
            outcomes.append(measured(mode, args, limits, functools.partial(workers.run, mode)))
    finally:
        if workers is not None:
            workers.close()
    return outcomes


def table(outcomes: list[Outcome], crews: int) -> str:
    head = (
        f"{'mode':<14}{'crews ok':>10}{'failed':>8}{'unfinished':>12}{'HTTP reqs':>11}{'429s':>7}"
    )
    head += f"{'wall s':>8}{'rpm used':>10}"
    rows = [head, "-" * len(head)]
    for o in outcomes:
        rows.append(
            f"{o.mode:<14}{f'{o.ok}/{crews}':>10}{o.failed:>8}{o.unfinished:>12}{o.requests:>11}"
            f"{o.rate_limited:>7}{o.wall:>8.1f}{o.utilisation:>10.0%}"
        )
    return "\n".join(rows)


def main(argv: Sequence[str]) -> int:
    """Run the demo; returns the process's exit code."""
    args = parse(argv)
    try:
        import crewai  # noqa: F401
    except ImportError:
        print(
            "The demo runs real CrewAI crews: pip install 'crewthrottle[crewai]' "
            "(or run ./scripts/demo.sh, which sets everything up).",
            file=sys.stderr,
        )
        return 2
    quiet_crewai()
    limits = Limits(args.rpm, args.tpm, args.max_concurrent, args.window, args.latency)
    print(
        f"Fake provider: {limits.rpm} requests and {limits.tpm} tokens per {limits.window:g} s "
        f"window (a scaled minute), {limits.max_concurrent} concurrent, "
        f"{limits.latency:g} s per completion. {args.crews} crews launched together"
        + ("." if args.processes == 1 else f", split over {args.processes} processes.")
        + "\n"
    )
    if args.processes == 1:
        outcomes = [run_mode(mode, args, limits) for mode in args.modes]
    else:
        with processes.redis_server(args.redis) as url:
            if url is None and "shared-redis" in args.modes:
                print(NO_REDIS, file=sys.stderr)
                return 2
            outcomes = run_in_processes(args, limits, url)
    print()
    print(table(outcomes, args.crews))
    path = chart.write(
        args.chart,
        [o.series for o in outcomes],
        limit_per_bin=limits.rpm / 8,
        bin_seconds=limits.window / 8,
        note=f"{limits.rpm} requests per {limits.window:g} s, {limits.max_concurrent} concurrent, "
        f"{args.crews} crews",
    )
    print(f"\nChart: {path.resolve()}")
    return 0
