"""Sections 2 and 5: rate precision and utilisation, and fairness, at 50 requests/s, burst 1."""

from __future__ import annotations

import time
from collections.abc import Callable
from itertools import pairwise

import hammer
from _common import Settings, Table, jain, max_in_window, pinned, progress
from peers import Contender, rate_contenders

RATE = 50
THREADS = 16
TASKS = 200
FAIR_THREADS = 8


def _rate_row(c: Contender, mode: str, grants: list[hammer.Grant], seconds: float) -> list[object]:
    stamps = sorted(t for t, _ in grants)
    achieved = len(stamps) / seconds
    gaps = [b - a for a, b in pairwise(stamps)]
    min_gap_ms = min(gaps) * 1e3 if gaps else float("nan")
    return [
        c.name,
        mode,
        c.config,
        len(stamps),
        achieved,
        achieved / RATE,
        max_in_window(stamps, 1.0),
        min_gap_ms,
    ]


def _check_rate(table: Table, row: list[object]) -> None:
    name, mode, config, util, peak = row[0], row[1], row[2], row[5], row[6]
    assert isinstance(util, float) and isinstance(peak, int)
    table.check(
        f"{name}({config}) utilisation, {mode}",
        f"{util:.3f}, max/1 s = {peak}",
        f">= 0.99, max/1 s <= {RATE}",
        util >= 0.99 and peak <= RATE,
    )


def run_rate(settings: Settings) -> Table:
    seconds = settings.rate_seconds
    table = Table(
        "rate",
        f"Rate precision and utilisation at {RATE}/s, burst 1",
        [
            "limiter",
            "mode",
            "config",
            "grants",
            "req/s",
            "utilisation",
            "max in any 1 s",
            "min gap ms",
        ],
    )
    with pinned(settings.pin) as where:
        table.notes += [
            f"{THREADS} threads, then {TASKS} asyncio tasks on one loop, each acquiring in a "
            f"loop for {seconds:g} s; {where}.",
            f"utilisation = grants / ({RATE}/s x {seconds:g} s), the most a limiter at burst 1 "
            "can grant in the run (one at t0, then one every 1/50 s); above 1 means bursts.",
            f"max in any 1 s: most grants in any window [t, t+1 s) (the limit is {RATE}); "
            f"min gap: closest two grants (1/{RATE} s = {1e3 / RATE:g} ms at burst 1).",
            "Our Limiter runs twice: with its default margin (each start counted 50 ms "
            "longer, for grant-to-arrival jitter) and with margin=0, to show what that costs.",
        ]
        for c in rate_contenders(RATE, variants=True):
            for mode, run in _modes(c, THREADS, TASKS, seconds):
                started = time.perf_counter()
                row = _rate_row(c, mode, run(), seconds)
                progress("rate", f"{c.name}, {mode}", started)
                table.rows.append(row)
                if c.ours:
                    _check_rate(table, row)
    return table


Run = Callable[[], list[hammer.Grant]]


def _modes(c: Contender, n_threads: int, n_tasks: int, seconds: float) -> list[tuple[str, Run]]:
    """The ways to drive ``c``: from threads (if it has a sync API) and from asyncio tasks."""
    modes: list[tuple[str, Run]] = []
    if c.make_sync is not None:
        make_sync = c.make_sync
        modes.append(
            (f"{n_threads} threads", lambda: hammer.threads(make_sync(), n_threads, seconds)[0])
        )
    if c.make_async is not None and n_tasks:
        make_async = c.make_async
        modes.append((f"{n_tasks} tasks", lambda: hammer.tasks(make_async, n_tasks, seconds)[0]))
    return modes


def run_fairness(settings: Settings) -> Table:
    seconds = settings.fairness_seconds
    table = Table(
        "fairness",
        f"Fairness: {FAIR_THREADS} threads sharing {RATE}/s, burst 1",
        ["limiter", "config", "grants", "per thread", "min/max", "Jain's index"],
    )
    with pinned(settings.pin) as where:
        table.notes.append(
            f"{FAIR_THREADS} threads acquiring in a loop for {seconds:g} s; "
            f"{where}. Jain's index = (sum x)^2 / (n sum x^2): 1 is equal shares."
        )
        for c in rate_contenders(RATE):
            if c.make_sync is None:
                continue
            started = time.perf_counter()
            grants, _ = hammer.threads(c.make_sync(), FAIR_THREADS, seconds)
            progress("fairness", c.name, started)
            counts = [0] * FAIR_THREADS
            for _, index in grants:
                counts[index] += 1
            fairness = jain(counts)
            table.rows.append(
                [
                    c.name,
                    c.config,
                    len(grants),
                    "/".join(map(str, counts)),
                    f"{min(counts)}/{max(counts)}",
                    fairness,
                ]
            )
            if c.ours:
                table.check(
                    f"{c.name} Jain's index, {FAIR_THREADS} threads",
                    f"{fairness:.4f}",
                    ">= 0.99",
                    fairness >= 0.99,
                )
    return table
