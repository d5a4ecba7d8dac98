"""Section 3: wake-up latency of one waiter blocked on a rate limit (50/s, burst 1).

With burst 1 and a single waiter that asks again as soon as it is served, the next permit
becomes available exactly one interval (1/rate) after the previous grant, for every limiter
here (GCRA, leaky bucket, token bucket of one, sliding window of one). So the lateness of grant
k is ``t[k] - t[k-1] - 1/rate``: how long after the permit became available the waiter got it.
"""

from __future__ import annotations

import hammer
from _common import Settings, Table, percentile, pinned
from peers import rate_contenders

RATE = 50


def _lateness_ms(grants: list[hammer.Grant]) -> list[float]:
    stamps = sorted(t for t, _ in grants)
    return [(b - a - 1.0 / RATE) * 1e3 for a, b in zip(stamps, stamps[1:])]


def run_latency(settings: Settings) -> Table:
    seconds = settings.latency_seconds
    table = Table("latency", f"Wake-up latency: one waiter on {RATE}/s, burst 1",
                  ["limiter", "mode", "config", "samples", "p50 ms", "p99 ms", "max ms"])
    with pinned(settings.pin) as where:
        table.notes.append(
            f"One worker thread (or one task) acquiring in a loop for {seconds:g} s; {where}. "
            f"Lateness = gap between consecutive grants - 1/{RATE} s."
        )
        for c in rate_contenders(RATE):
            if not c.burst_one:
                continue
            runs = []
            if c.make_sync is not None:
                make_sync = c.make_sync
                runs.append(("thread", lambda: hammer.threads(make_sync(), 1, seconds)[0]))
            if c.make_async is not None:
                make_async = c.make_async
                runs.append(("asyncio", lambda: hammer.tasks(make_async, 1, seconds)[0]))
            for mode, run in runs:
                late = _lateness_ms(run())
                p50, p99 = percentile(late, 50), percentile(late, 99)
                table.rows.append([c.name, mode, c.config, len(late), p50, p99,
                                   max(late, default=float("nan"))])
                if c.ours:
                    table.check(f"{c.name} wake-up p99, {mode}", f"{p99:.3f} ms", "<= 1 ms",
                                p99 <= 1.0)
    return table
