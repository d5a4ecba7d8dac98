"""Shared helpers: CPU pinning, statistics over recorded timestamps, and the result tables."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Settings:
    """How long each kind of run lasts; ``--quick`` shrinks them all for a smoke test."""

    quick: bool
    pin: bool
    cost_min_time: float  # seconds per repeat of a timed loop
    cost_repeats: int
    rate_seconds: float
    latency_seconds: float
    idle_seconds: float
    fairness_seconds: float
    redis_url: str | None = None  # the shared-budget section's server (None: start one)

    @classmethod
    def make(cls, *, quick: bool, pin: bool) -> Settings:
        if quick:
            return cls(quick, pin, 0.02, 3, 1.0, 1.0, 1.0, 1.0)
        return cls(quick, pin, 0.2, 7, 4.0, 6.0, 5.0, 4.0)


@dataclass
class Table:
    """One section's results: a title, notes (configuration, pinning), columns and rows."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Our rows checked against the targets: (what, measured, target, met)
    checks: list[tuple[str, str, str, bool]] = field(default_factory=list)

    def check(self, what: str, measured: str, target: str, met: bool) -> None:
        self.checks.append((what, measured, target, met))


# --- pinning -------------------------------------------------------------------------------


def _threads() -> list[int]:
    return [int(tid) for tid in os.listdir("/proc/self/task")]


@contextlib.contextmanager
def pinned(enabled: bool, cpu: int = 0) -> Iterator[str]:
    """Pin every thread of the process (and so every thread started inside) to one CPU.

    ``os.sched_setaffinity(0, ...)`` only moves the calling thread on Linux, so the threads
    that already exist (peers' background leakers, for one) are moved one by one.
    """
    if not enabled or not hasattr(os, "sched_setaffinity"):
        yield "not pinned"
        return
    before = os.sched_getaffinity(0)
    for tid in _threads():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, {cpu})
    try:
        yield f"pinned to CPU {cpu}"
    finally:
        for tid in _threads():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, before)


# --- statistics ----------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 200 samples is the 198th)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


def max_in_window(stamps: Sequence[float], width: float) -> int:
    """The largest number of stamps in any half-open window ``[t, t + width)``."""
    ordered = sorted(stamps)
    best, lo = 0, 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def jain(counts: Sequence[float]) -> float:
    """Jain's fairness index: 1.0 when all equal, 1/n when one takes everything."""
    total = sum(counts)
    squares = sum(x * x for x in counts)
    return (total * total) / (len(counts) * squares) if squares else math.nan


# --- formatting ----------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def render_text(table: Table) -> str:
    cells = [table.columns, *([fmt(v) for v in row] for row in table.rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(table.columns))]
    lines = [f"== {table.title} ==", *(f"   {n}" for n in table.notes)]
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def aligned_markdown(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table whose columns line up in plain text too."""
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), rule, *(line(r) for r in rows)])


def render_markdown(table: Table) -> str:
    lines = [f"### {table.title}", ""]
    lines += [f"- {n}" for n in table.notes]
    lines += ["", "| " + " | ".join(table.columns) + " |"]
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table.rows]
    return "\n".join(lines)


def render_checks(tables: Sequence[Table], markdown: bool) -> str:
    checks = [c for t in tables for c in t.checks]
    if markdown:
        head = ["### Targets (ours)", "", "| what | measured | target | met |", "|---|---|---|---|"]
        return "\n".join(
            head + [f"| {w} | {m} | {t} | {'yes' if ok else '**NO**'} |" for w, m, t, ok in checks]
        )
    width = max((len(c[0]) for c in checks), default=0)
    lines = ["== Targets (ours) =="]
    lines += [
        f"  {'meets ' if ok else 'MISSES'}  {w.ljust(width)}  {m}  (target {t})"
        for w, m, t, ok in checks
    ]
    return "\n".join(lines)


def progress(section: str, what: str, started: float) -> None:
    """One line per run on stderr, so a long benchmark shows where it is."""
    print(
        f"  [{section}] {what}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True
    )
