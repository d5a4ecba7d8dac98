"""Side-by-side benchmarks of crewthrottle against the limiters users would pick instead.

    .venv/bin/python benches/run.py [--quick] [--only NAME[,NAME]] [--json out.json]
                                    [--markdown out.md] [--no-pin] [--redis URL]

Sections (NAME for --only): cost, rate, latency, idle, fairness, metrics, redis. Every peer
runs beside ours in the same process (the redis section: against the same Redis server, from
the same processes), and figures are given as ratios where a baseline exists.
Needs the ``bench`` extra: ``pip install -e ".[bench]"`` (asyncio-throttle is optional), and
for the metrics section the ``otel`` and ``prometheus`` ones with the OpenTelemetry SDK. The
redis section starts a private ``redis-server`` (Debian's package) unless given ``--redis``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere

from _common import Settings, Table, render_checks, render_markdown, render_text
from bench_cost import run_cost
from bench_idle import run_idle
from bench_latency import run_latency
from bench_metrics import run_metrics
from bench_rate import run_fairness, run_rate
from bench_redis import run_redis

SECTIONS: dict[str, Callable[[Settings], Table | list[Table]]] = {
    "cost": run_cost,
    "rate": run_rate,
    "latency": run_latency,
    "idle": run_idle,
    "fairness": run_fairness,
    "metrics": run_metrics,
    "redis": run_redis,
}

TARGETS = [
    "Semaphore <= 1/3 of threading.Semaphore's cost",
    "Limiter acquire+release < 500 ns",
    "utilisation >= 99% at burst 1, no 1 s window over the limit (threads and tasks)",
    "wake-up p99 <= 1 ms",
    "idle waiters <= 0.5% of a core",
    "Jain's index >= 0.99",
    "metrics registered: acquire+release <= 1.10 x unregistered",
    "Redis: acquire+release <= 1.5 round trips (PING); utilisation >= 0.98 at 50/s burst 1 "
    "across 4 processes, zero windows over; idle waiters ~0 CPU; Jain's index >= 0.99",
]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    parser.add_argument("--only", help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--json", type=Path, help="write every figure as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the tables as Markdown here")
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the timing-sensitive runs to CPU 0"
    )
    parser.add_argument(
        "--redis", metavar="URL", help="the redis section's server (default: start a private one)"
    )
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    args.sections = names
    return args


def _machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpus": str(os.cpu_count()),
        "cpu model": model,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        # The machine is shared: how busy it was when the run started.
        "load average (1, 5, 15 min)": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "command": " ".join([_relative(sys.executable), *sys.argv]),
        "source": _commit(),
    }


def _commit() -> str:
    """The commit crewthrottle was built from, and whether the tree had local changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "src", "python", "Cargo.toml")
    return f"commit {head}" + (" + uncommitted changes in src/ or python/" if dirty else "")


def _relative(path: str) -> str:
    try:
        return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
    except ValueError:
        return path


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = [
        "crewthrottle",
        "pyrate-limiter",
        "limits",
        "aiolimiter",
        "langchain-core",
        "throttled-py",
        "asyncio-throttle",
        "redis",
    ]
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    settings = dataclasses.replace(
        Settings.make(quick=args.quick, pin=not args.no_pin), redis_url=args.redis
    )
    machine, versions = _machine(), _versions()
    machine["pinning"] = (
        "rate, latency, idle and fairness runs pinned to CPU 0 "
        "(os.sched_setaffinity on every thread of the process); cost unpinned; redis: "
        "client processes on CPU 0, a private redis-server on CPU 1 (taskset)"
        if settings.pin
        else "none (--no-pin)"
    )
    print("\n".join(f"{k}: {v}" for k, v in machine.items()))
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print("targets: " + "; ".join(TARGETS) + "\n", flush=True)
    tables = []
    for name in args.sections:
        started = time.perf_counter()
        result = SECTIONS[name](settings)
        made = result if isinstance(result, list) else [result]
        made[-1].notes.append(f"section took {time.perf_counter() - started:.1f} s")
        tables += made
        for table in made:
            print(render_text(table) + "\n", flush=True)
    print(render_checks(tables, markdown=False))
    if args.markdown:
        args.markdown.write_text(_markdown(tables, machine, versions))
    if args.json:
        args.json.write_text(json.dumps(_as_json(tables, machine, versions), indent=2))
    return 0


def _markdown(tables: list[Table], machine: dict[str, str], versions: dict[str, str]) -> str:
    head = [
        "# crewthrottle benchmarks",
        "",
        "Written by `benches/run.py`; every peer ran beside "
        "ours in the same process, one after the other.",
        "",
    ]
    head += [f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in machine.items()]
    head.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    head.append("- targets: " + "; ".join(TARGETS))
    body = [render_markdown(t) for t in tables] + [render_checks(tables, markdown=True)]
    return "\n".join(head) + "\n\n" + "\n\n".join(body) + "\n"


def _as_json(tables: list[Table], machine: dict[str, str], versions: dict[str, str]) -> object:
    return {
        "machine": machine,
        "versions": versions,
        "targets": TARGETS,
        "sections": {
            t.key: {
                "title": t.title,
                "notes": t.notes,
                "rows": [dict(zip(t.columns, row, strict=True)) for row in t.rows],
                "checks": [
                    dict(zip(["what", "measured", "target", "met"], c, strict=True))
                    for c in t.checks
                ],
            }
            for t in tables
        },
    }


if __name__ == "__main__":
    sys.exit(main())
