"""Sections 2 and 5: rate precision and utilisation, and fairness, at 50 requests/s, burst 1."""

from __future__ import annotations

import hammer
from _common import Settings, Table, jain, max_in_window, pinned
from peers import Contender, rate_contenders

RATE = 50
THREADS = 16
TASKS = 200
FAIR_THREADS = 8


def _rate_row(c: Contender, mode: str, grants: list[hammer.Grant], seconds: float) -> list[object]:
    stamps = sorted(t for t, _ in grants)
    achieved = (len(stamps) - 1) / seconds if stamps else 0.0
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    min_gap_ms = min(gaps) * 1e3 if gaps else float("nan")
    return [c.name, mode, c.config, len(stamps), achieved, achieved / RATE,
            max_in_window(stamps, 1.0), min_gap_ms]


def _check_rate(table: Table, row: list[object]) -> None:
    name, mode, util, peak = row[0], row[1], float(row[5]), int(row[6])  # type: ignore[arg-type]
    table.check(f"{name} utilisation, {mode}", f"{util:.3f}, max/1 s = {peak}",
                f">= 0.99, max/1 s <= {RATE}", util >= 0.99 and peak <= RATE)


def run_rate(settings: Settings) -> Table:
    seconds = settings.rate_seconds
    table = Table("rate", f"Rate precision and utilisation at {RATE}/s, burst 1",
                  ["limiter", "mode", "config", "grants", "req/s", "utilisation",
                   "max in any 1 s", "min gap ms"])
    with pinned(settings.pin) as where:
        table.notes += [
            f"{THREADS} threads, then {TASKS} asyncio tasks on one loop, each acquiring in a "
            f"loop for {seconds:g} s; {where}.",
            f"utilisation = (grants - 1) / ({RATE} x {seconds:g} s): burst 1 makes the first "
            "grant free; above 1 means bursts beyond the rate.",
            f"max in any 1 s: most grants in any window [t, t+1 s) (the limit is {RATE}); "
            f"min gap: closest two grants (1/{RATE} s = {1e3 / RATE:g} ms at burst 1).",
        ]
        for c in rate_contenders(RATE):
            for mode, run in _modes(c, THREADS, TASKS, seconds):
                row = _rate_row(c, mode, run(), seconds)
                table.rows.append(row)
                if c.ours:
                    _check_rate(table, row)
    return table


def _modes(c: Contender, n_threads: int, n_tasks: int, seconds: float) -> list[tuple[str, object]]:
    modes: list[tuple[str, object]] = []
    if c.make_sync is not None:
        make_sync = c.make_sync
        modes.append((f"{n_threads} threads",
                      lambda: hammer.threads(make_sync(), n_threads, seconds)[0]))
    if c.make_async is not None and n_tasks:
        make_async = c.make_async
        modes.append((f"{n_tasks} tasks", lambda: hammer.tasks(make_async, n_tasks, seconds)[0]))
    return modes


def run_fairness(settings: Settings) -> Table:
    seconds = settings.fairness_seconds
    table = Table("fairness", f"Fairness: {FAIR_THREADS} threads sharing {RATE}/s, burst 1",
                  ["limiter", "config", "grants", "per thread", "min/max", "Jain's index"])
    with pinned(settings.pin) as where:
        table.notes.append(f"{FAIR_THREADS} threads acquiring in a loop for {seconds:g} s; "
                           f"{where}. Jain's index = (sum x)^2 / (n sum x^2): 1 is equal shares.")
        for c in rate_contenders(RATE):
            if c.make_sync is None:
                continue
            grants, _ = hammer.threads(c.make_sync(), FAIR_THREADS, seconds)
            counts = [0] * FAIR_THREADS
            for _, index in grants:
                counts[index] += 1
            index = jain(counts)
            table.rows.append([c.name, c.config, len(grants), "/".join(map(str, counts)),
                               f"{min(counts)}/{max(counts)}", index])
            if c.ours:
                table.check(f"{c.name} Jain's index, {FAIR_THREADS} threads", f"{index:.4f}",
                            ">= 0.99", index >= 0.99)
    return table
