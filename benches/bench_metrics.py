"""Section "metrics": uncontended acquire+release with metrics registered vs not (issue 11).

The same limiter and statement timed three ways, interleaved round by round so that drift on a
shared machine hits all three alike (best of ``cost_repeats`` rounds each): nothing registered;
registered with OpenTelemetry (an SDK meter provider and an in-memory reader) and Prometheus
(a registry); and registered while another thread collects both every 10 ms, far more often
than any real scrape. Metrics are read at collection time, so the target is no difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import timeit
from collections.abc import Callable, Iterator

from _common import Settings, Table

import crewthrottle as ct
from crewthrottle import _native, metrics

HUGE = 10**9  # a rate no loop here can reach: only the cost counts
MODES = ("not registered", "registered", "registered, scraped every 10 ms")
STATEMENTS = ("with lim.acquire(): pass", "with lim: pass", "async with lim: pass")


@contextlib.contextmanager
def registered(limiter: ct.Limiter, scrape: bool) -> Iterator[None]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from prometheus_client import CollectorRegistry, generate_latest

    os.environ["OTEL_SDK_DISABLED"] = "false"  # else the SDK is a no-op and we time nothing
    reader, registry = InMemoryMetricReader(), CollectorRegistry()
    provider = MeterProvider(metric_readers=[reader])
    # Every limiter when the native module can list them (the real default), else this one.
    chosen = None if hasattr(_native, "_limiter_snapshots") else [limiter]
    metrics.instrument(provider, limiters=chosen)
    metrics.register_prometheus(registry, limiters=chosen)
    stop = threading.Event()

    def scraper() -> None:
        while not stop.wait(0.01):
            reader.get_metrics_data()
            generate_latest(registry)

    thread = threading.Thread(target=scraper, daemon=True)
    if scrape:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if scrape:
            thread.join()
        metrics.uninstrument()
        metrics.unregister_prometheus(registry)
        provider.shutdown()


def _timer(statement: str, limiter: ct.Limiter) -> Callable[[int], float]:
    """Seconds for ``number`` runs of the statement, sync or inside one coroutine."""
    if not statement.startswith("async"):
        timer = timeit.Timer(statement, globals={"lim": limiter})
        return timer.timeit
    env: dict[str, object] = {"lim": limiter}
    exec(f"async def _loop(n):\n    for _ in range(n):\n        {statement}\n", env)

    def timed(number: int) -> float:
        async def run() -> float:
            started = time.perf_counter()
            await env["_loop"](number)  # type: ignore[operator]
            return time.perf_counter() - started

        return asyncio.run(run())

    return timed


def _best_per_mode(statement: str, settings: Settings) -> list[float]:
    limiter = ct.Limiter(max_concurrent=8, rpm=HUGE, window=60.0, name="bench")
    run = _timer(statement, limiter)
    number = 1
    while (elapsed := run(number)) < settings.cost_min_time:
        number *= 10 if elapsed < settings.cost_min_time / 10 else 2
    best = [float("inf")] * len(MODES)
    for _ in range(settings.cost_repeats):
        for i, mode in enumerate(MODES):
            context = (
                contextlib.nullcontext()
                if i == 0
                else registered(limiter, scrape=mode.endswith("10 ms"))
            )
            with context:
                best[i] = min(best[i], run(number) / number)
    return best


def run_metrics(settings: Settings) -> Table:
    table = Table(
        "metrics",
        "Acquire+release with metrics registered vs not (ns per operation)",
        ["statement", *MODES, "ratio registered", "ratio scraped"],
    )
    table.notes.append(
        "Limiter(max_concurrent=8, rpm=1e9, window=60); OpenTelemetry SDK + in-memory reader "
        "and a prometheus_client registry; modes interleaved, best of "
        f"{settings.cost_repeats} rounds each"
    )
    for statement in STATEMENTS:
        plain, registered_ns, scraped = (t * 1e9 for t in _best_per_mode(statement, settings))
        ratios = registered_ns / plain, scraped / plain
        table.rows.append([statement, plain, registered_ns, scraped, *ratios])
        table.check(
            f"metrics registered: {statement}",
            f"{ratios[0]:.2f} x unregistered (scraped: {ratios[1]:.2f} x)",
            "<= 1.10 x (no measurable difference)",
            ratios[0] <= 1.10,
        )
    return table
