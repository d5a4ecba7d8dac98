"""``crewthrottle.metrics``: limiters read back through OpenTelemetry's SDK (an
``InMemoryMetricReader``) and a real ``prometheus_client`` registry's exposition output, parsed
by prometheus_client's own parser; under load from threads and asyncio tasks, every exported
value agrees with ``Limiter.stats()``.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Gauge, InMemoryMetricReader, Sum
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import crewthrottle as ct
from crewthrottle import _native, metrics
from crewthrottle.metrics import SERIES, Series

NAME = "crewthrottle.limiter.name"

needs_native_registry = pytest.mark.skipif(
    not hasattr(_native, "_limiter_snapshots"),
    reason="needs crewthrottle._native._limiter_snapshots (issue 11, native side)",
)


@pytest.fixture
def otel(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[MeterProvider, InMemoryMetricReader]]:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "false")  # conftest disables it for CrewAI
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield provider, reader
    metrics.uninstrument()
    provider.shutdown()


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    registry = CollectorRegistry()
    yield registry
    metrics.unregister_prometheus(registry)


# -- reading back -----------------------------------------------------------------------------


def otel_read(reader: InMemoryMetricReader) -> dict[str, dict[str, Any]]:
    """crewthrottle's instruments: name -> {limiter name: data point}."""
    data = reader.get_metrics_data()
    found: dict[str, dict[str, Any]] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            assert scope.scope.name == "crewthrottle" and scope.scope.version == ct.__version__
            for metric in scope.metrics:
                points = found.setdefault(metric.name, {})
                for point in metric.data.data_points:
                    key = point.attributes[NAME]
                    if "crewthrottle.quantile" in point.attributes:
                        key = (key, point.attributes["crewthrottle.quantile"])
                    points[key] = (metric, point)
    return found


def otel_values(reader: InMemoryMetricReader) -> dict[str, dict[Any, float]]:
    return {
        name: {key: point.value for key, (_, point) in points.items()}
        for name, points in otel_read(reader).items()
    }


def prom_read(registry: CollectorRegistry) -> dict[str, dict[Any, float]]:
    """Sample name -> {limiter (or (limiter, le/quantile)): value}, from the text exposition."""
    found: dict[str, dict[Any, float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            labels = dict(sample.labels)
            key: Any = labels.pop("limiter")
            if labels:
                key = (key, *labels.values())
            found.setdefault(sample.name, {})[key] = sample.value
    return found


def prom_name(series: Series) -> str:
    return series.prometheus_name + ("_total" if series.kind == "counter" else "")


def stats_of(limiter: ct.Limiter) -> dict[str, Any]:
    return metrics._source.snapshot(limiter)


# -- names, kinds, units ----------------------------------------------------------------------


def test_otel_instruments_follow_the_semantic_conventions(
    otel: tuple[MeterProvider, InMemoryMetricReader],
) -> None:
    provider, reader = otel
    limiter = ct.Limiter(max_concurrent=3, rpm=100, tpm=5_000, name="gpt-4o")
    with limiter.acquire(tokens=40) as permit:
        permit.settle(30)
    metrics.instrument(provider, limiters=[limiter])
    found = otel_read(reader)
    for series in SERIES:
        # (the effective limits are the configured ones: nothing learned from a provider)
        metric, point = found[series.otel_name]["gpt-4o"]
        assert (metric.unit, metric.description) == (series.unit, series.description)
        if series.kind == "gauge":
            assert isinstance(metric.data, Gauge)
        else:
            assert isinstance(metric.data, Sum)
            assert metric.data.is_monotonic == (series.kind == "counter")
        assert dict(point.attributes) == {NAME: "gpt-4o"}
    values = otel_values(reader)
    assert values["crewthrottle.limiter.grants"]["gpt-4o"] == 1
    assert values["crewthrottle.limiter.tokens.granted"]["gpt-4o"] == 30
    assert values["crewthrottle.limiter.limit.tokens"]["gpt-4o"] == 5_000


def test_prometheus_families_follow_its_conventions(registry: CollectorRegistry) -> None:
    limiter = ct.Limiter(max_concurrent=3, rpm=100, name="gpt-4o")
    with limiter:
        pass
    metrics.register_prometheus(registry, limiters=[limiter])
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    for series in SERIES:
        if series.otel_only:
            continue
        family = families[series.prometheus_name]  # the parser strips _total from the family
        assert family.type == ("counter" if series.kind == "counter" else "gauge")
        assert family.documentation == series.description
        assert (series.unit == "s") == series.prometheus_name.endswith("_seconds")
        if series.key in ("tpm", "tokens_in_window", "effective_tpm"):
            assert family.samples == []  # no tpm: no sample, not a zero
        else:
            assert [s.labels for s in family.samples] == [{"limiter": "gpt-4o"}]
            assert family.samples[0].name == prom_name(series)
    wait = families["crewthrottle_limiter_wait_seconds"]
    assert wait.type == "histogram"
    samples = {s.name: s.value for s in wait.samples if s.labels.get("le") in (None, "+Inf")}
    assert samples["crewthrottle_limiter_wait_seconds_count"] == 1
    assert samples["crewthrottle_limiter_wait_seconds_bucket"] == 1


# -- under load ---------------------------------------------------------------------------------


class Load:
    """Threads and asyncio tasks sharing one limiter, with waits, timeouts and cancellations,
    while another thread collects metrics over and over."""

    THREADS, CALLS, TASKS = 4, 60, 40

    def __init__(self, limiter: ct.Limiter) -> None:
        self.limiter = limiter
        self.done = threading.Event()

    def thread_calls(self, n: int) -> None:
        for i in range(self.CALLS):
            try:  # every fifth call does not wait: under contention it times out
                timeout = 0.0 if i % 5 == 4 else 10.0
                with self.limiter.acquire(tokens=20, timeout=timeout) as permit:
                    time.sleep(0.0002)  # the call's work, while others queue
                    permit.settle(10 + n)
            except ct.AcquireTimeout:
                pass

    async def task_call(self) -> None:
        async with await self.limiter.acquire_async(tokens=5, timeout=10.0):
            await asyncio.sleep(0.0002)

    async def tasks(self) -> None:
        running = [asyncio.create_task(self.task_call()) for _ in range(self.TASKS)]
        await asyncio.sleep(0)
        for task in running[::4]:
            task.cancel()  # waiting or holding: the permit comes back either way
        await asyncio.gather(*running, return_exceptions=True)

    async def surely_one_timeout_and_one_cancellation(self) -> None:
        held = [self.limiter.acquire(), self.limiter.acquire()]  # max_concurrent=2
        with pytest.raises(ct.AcquireTimeout):
            self.limiter.acquire(timeout=0.0)
        with pytest.raises(TimeoutError):  # wait_for cancels the wait
            await asyncio.wait_for(self.limiter.acquire_async(), 0.01)
        for permit in held:
            permit.release()

    def run(self, collect: Any) -> list[Any]:
        asyncio.run(self.surely_one_timeout_and_one_cancellation())
        collected: list[Any] = []

        def collector() -> None:
            while not self.done.is_set():
                collected.append(collect())

        reader = threading.Thread(target=collector)
        workers = [threading.Thread(target=self.thread_calls, args=(n,)) for n in range(4)]
        workers.append(threading.Thread(target=asyncio.run, args=(self.tasks(),)))
        reader.start()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        self.done.set()
        reader.join()
        collected.append(collect())
        return collected


def loaded_limiter() -> ct.Limiter:
    # A long window: nothing leaves it during the test, so window figures can be compared.
    return ct.Limiter(max_concurrent=2, rpm=100_000, tpm=10_000_000, window=600.0, name="load")


#: What the collections taken during the load are checked for, by snapshot key.
WATCHED = ("acquired", "timeouts", "cancelled", "in_flight", "waiting", "tokens_granted")
BY_KEY = {series.key: series for series in SERIES}


def check_collections(collected: list[dict[str, float]], limits: dict[str, float]) -> None:
    """Invariants of each collection taken during the load: counters never go down, levels
    stay within the limits."""
    assert len(collected) >= 3
    for before, after in itertools.pairwise(collected):
        for key in ("acquired", "timeouts", "cancelled"):
            assert after[key] >= before[key], (key, before, after)
    for figures in collected:
        assert figures["tokens_granted"] >= 0  # it may go down: a settle refunds
        assert 0 <= figures["in_flight"] <= limits["in_flight"]
        assert figures["waiting"] >= 0
        assert figures["acquired"] >= figures["in_flight"]


def test_otel_under_load_agrees_with_stats(
    otel: tuple[MeterProvider, InMemoryMetricReader],
) -> None:
    provider, reader = otel
    limiter = loaded_limiter()
    metrics.instrument(provider, limiters=[limiter])

    def collect() -> dict[str, float]:
        values = otel_values(reader)
        return {key: values[BY_KEY[key].otel_name]["load"] for key in WATCHED}

    check_collections(Load(limiter).run(collect), {"in_flight": 2})
    stats, values = stats_of(limiter), otel_values(reader)
    assert stats["timeouts"] > 0 and stats["cancelled"] > 0 and stats["total_wait"] > 0
    for series in SERIES:
        if stats.get(series.key) is not None:
            assert values[series.otel_name]["load"] == stats[series.key], series.key


def test_prometheus_under_load_agrees_with_stats(registry: CollectorRegistry) -> None:
    limiter = loaded_limiter()
    metrics.register_prometheus(registry, limiters=[limiter])

    def collect() -> dict[str, float]:
        samples = prom_read(registry)
        return {key: samples[prom_name(BY_KEY[key])]["load"] for key in WATCHED}

    check_collections(Load(limiter).run(collect), {"in_flight": 2})
    stats, samples = stats_of(limiter), prom_read(registry)
    assert stats["timeouts"] > 0 and stats["cancelled"] > 0 and stats["total_wait"] > 0
    for series in SERIES:
        if stats.get(series.key) is not None and not series.otel_only:
            assert samples[prom_name(series)]["load"] == stats[series.key], series.key
    assert samples["crewthrottle_limiter_wait_seconds_count"]["load"] == stats["acquired"]
    assert samples["crewthrottle_limiter_wait_seconds_sum"]["load"] == stats["total_wait"]


def test_wait_percentiles_are_exported_when_the_native_module_has_them(
    otel: tuple[MeterProvider, InMemoryMetricReader], registry: CollectorRegistry
) -> None:
    provider, reader = otel
    limiter = ct.Limiter(max_concurrent=1, name="p")
    with limiter:
        pass
    metrics.instrument(provider, limiters=[limiter])
    metrics.register_prometheus(registry, limiters=[limiter])
    recent = otel_values(reader).get("crewthrottle.limiter.wait.recent", {})
    exposed = prom_read(registry).get("crewthrottle_limiter_wait_recent_seconds", {})
    stats = stats_of(limiter)
    expected = {
        ("p", quantile): stats[key] for key, quantile in metrics.PERCENTILES if key in stats
    }
    assert recent == expected and exposed == expected


# -- retries, pauses and names -----------------------------------------------------------------


class Throttled(Exception):
    def __init__(self) -> None:
        super().__init__("Error code: 429")
        self.status_code = 429


class NotFound(Exception):
    status_code = 404


def raising(error: type[Exception]) -> Any:
    def call() -> None:
        raise error()

    return call


def test_retry_counters_and_rate_limit_errors(
    otel: tuple[MeterProvider, InMemoryMetricReader], registry: CollectorRegistry
) -> None:
    provider, reader = otel
    limiter = ct.Limiter(max_concurrent=4, name="retrying")
    budget = ct.RetryBudget(ratio=0.0, min_retries_per_s=0.0)
    attempts = iter([Throttled(), Throttled(), None, Throttled(), Throttled(), Throttled()])

    def call() -> str:
        exc = next(attempts, None)
        if exc is not None:
            raise exc
        return "ok"

    throttled = ct.throttle(limiter, retry=ct.backoff(max_tries=3, base=0.001))(call)
    assert throttled() == "ok"  # two 429s, two retries
    with pytest.raises(Throttled):
        throttled()  # three 429s, two retries, a give-up
    with pytest.raises(Throttled):
        ct.backoff(limiter=limiter, budget=budget).call(raising(Throttled))  # a 429, refused
    with pytest.raises(NotFound):
        ct.throttle(limiter, retry=ct.backoff())(raising(NotFound))()  # neither retried nor 429
    metrics.instrument(provider, limiters=[limiter])
    metrics.register_prometheus(registry, limiters=[limiter])
    values, samples = otel_values(reader), prom_read(registry)
    expected = {"retries": 4, "give_ups": 1, "retries_refused": 1, "rate_limit_errors": 6}
    for key, count in expected.items():
        assert values[f"crewthrottle.limiter.{key}"]["retrying"] == count, key
        assert samples[f"crewthrottle_limiter_{key}_total"]["retrying"] == count, key
        assert stats_of(limiter)[key] == count


def test_a_pause_shows_its_remaining_time(registry: CollectorRegistry) -> None:
    limiter = ct.Limiter(max_concurrent=1, name="paused")
    metrics.register_prometheus(registry, limiters=[limiter])
    assert prom_read(registry)["crewthrottle_limiter_pause_remaining_seconds"]["paused"] == 0
    limiter.pause(30)
    remaining = prom_read(registry)["crewthrottle_limiter_pause_remaining_seconds"]["paused"]
    assert 20 < remaining <= 30


def test_same_named_limiters_add_up_and_unnamed_ones_share_a_label(
    otel: tuple[MeterProvider, InMemoryMetricReader],
) -> None:
    provider, reader = otel
    a, b = ct.Limiter(max_concurrent=2, name="shared"), ct.Limiter(max_concurrent=3, name="shared")
    anonymous = [ct.Limiter(max_concurrent=1), ct.Limiter(max_concurrent=1)]
    held = [a.acquire(), b.acquire(), b.acquire(), anonymous[0].acquire()]
    metrics.instrument(provider, limiters=[a, b, *anonymous])
    values = otel_values(reader)
    assert values["crewthrottle.limiter.in_flight"] == {"shared": 3, metrics.UNNAMED: 1}
    assert values["crewthrottle.limiter.limit.concurrent"] == {"shared": 5, metrics.UNNAMED: 2}
    assert values["crewthrottle.limiter.window.duration"] == {"shared": 60, metrics.UNNAMED: 60}
    for permit in held:
        permit.release()


# -- registering and unregistering ------------------------------------------------------------


def test_instrument_replaces_and_uninstrument_silences(
    otel: tuple[MeterProvider, InMemoryMetricReader], caplog: pytest.LogCaptureFixture
) -> None:
    provider, reader = otel
    first, second = ct.Limiter(name="first"), ct.Limiter(name="second")
    metrics.instrument(provider, limiters=[first])
    assert set(otel_values(reader)["crewthrottle.limiter.grants"]) == {"first"}
    metrics.instrument(provider, limiters=[second])
    assert set(otel_values(reader)["crewthrottle.limiter.grants"]) == {"second"}
    metrics.uninstrument()
    assert otel_values(reader) == {}
    metrics.instrument(provider, limiters=[first])  # the same instruments, reporting again
    assert set(otel_values(reader)["crewthrottle.limiter.grants"]) == {"first"}
    assert not [r for r in caplog.records if r.levelno >= 30], "duplicate instruments?"


def test_instrumenting_another_provider_moves_the_report(
    otel: tuple[MeterProvider, InMemoryMetricReader],
) -> None:
    provider, reader = otel
    other_reader = InMemoryMetricReader()
    other = MeterProvider(metric_readers=[other_reader])
    limiter = ct.Limiter(name="moved")
    metrics.instrument(provider, limiters=[limiter])
    metrics.instrument(other, limiters=[limiter])
    assert otel_values(reader) == {}
    assert otel_values(other_reader)["crewthrottle.limiter.grants"] == {"moved": 0}
    other.shutdown()


def test_register_prometheus_replaces_and_unregisters(registry: CollectorRegistry) -> None:
    first, second = ct.Limiter(name="first"), ct.Limiter(name="second")
    metrics.register_prometheus(registry, limiters=[first])
    metrics.register_prometheus(registry, limiters=[second])  # no "duplicated timeseries"
    assert set(prom_read(registry)["crewthrottle_limiter_grants_total"]) == {"second"}
    metrics.unregister_prometheus(registry)
    assert "crewthrottle" not in generate_latest(registry).decode()
    metrics.unregister_prometheus(registry)  # nothing left: nothing happens


def test_prometheus_default_registry() -> None:
    limiter = ct.Limiter(name="default-registry")
    collector = metrics.register_prometheus(limiters=[limiter])
    try:
        assert 'crewthrottle_limiter_grants_total{limiter="default-registry"} 0.0' in (
            generate_latest(REGISTRY).decode()
        )
    finally:
        metrics.unregister_prometheus()
    assert "default-registry" not in generate_latest(REGISTRY).decode()
    with pytest.raises(KeyError):
        REGISTRY.unregister(collector)  # it really is gone


def test_the_global_meter_provider_even_when_set_later() -> None:
    """The API's global provider can be set once per process: a process of its own."""
    script = textwrap.dedent(
        """
        import os
        os.environ["OTEL_SDK_DISABLED"] = "false"
        import crewthrottle as ct, crewthrottle.metrics
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        limiter = ct.Limiter(max_concurrent=1, name="global")
        with limiter:
            pass
        crewthrottle.metrics.instrument(limiters=[limiter])  # before any provider is set
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        crewthrottle.metrics.instrument(limiters=[limiter])  # again: no duplicates
        data = reader.get_metrics_data()
        (scope,) = data.resource_metrics[0].scope_metrics
        grants = [m for m in scope.metrics if m.name == "crewthrottle.limiter.grants"]
        print(grants[0].data.data_points[0].value)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "1", done.stderr
    assert "created already" not in done.stderr  # no duplicate instrument was made


@needs_native_registry
def test_every_limiter_present_and_future(
    otel: tuple[MeterProvider, InMemoryMetricReader], registry: CollectorRegistry
) -> None:
    provider, reader = otel
    before = ct.Limiter(max_concurrent=1, name="before")
    metrics.instrument(provider)
    metrics.register_prometheus(registry)
    after = ct.Limiter(max_concurrent=1, name="after")
    with after:
        pass
    grants = otel_values(reader)["crewthrottle.limiter.grants"]
    assert grants["before"] == 0 and grants["after"] == 1
    assert prom_read(registry)["crewthrottle_limiter_grants_total"]["after"] == 1
    del after
    assert "after" not in otel_values(reader)["crewthrottle.limiter.grants"]
    assert "after" not in prom_read(registry)["crewthrottle_limiter_grants_total"]
    assert before.name == "before"


# -- bad input and missing extras -------------------------------------------------------------


@pytest.mark.parametrize(
    ("limiters", "error", "message"),
    [
        (ct.Limiter(), TypeError, "limiters must be an iterable of crewthrottle.Limiter"),
        ("gpt", TypeError, "limiters must be an iterable"),
        ([ct.Limiter(), ct.Semaphore()], TypeError, "only crewthrottle.Limiter, got Semaphore"),
        ([], ValueError, "limiters is empty"),
    ],
)
def test_bad_limiters(limiters: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        metrics.instrument(limiters=limiters)
    with pytest.raises(error, match=message):
        metrics.register_prometheus(CollectorRegistry(), limiters=limiters)


def test_bad_provider_or_registry() -> None:
    with pytest.raises(TypeError, match="meter_provider must be an opentelemetry"):
        metrics.instrument(object(), limiters=[ct.Limiter()])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="registry must be a prometheus_client"):
        metrics.register_prometheus(object(), limiters=[ct.Limiter()])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("missing", "module", "call", "extra"),
    [
        ("opentelemetry", "_otel", metrics.instrument, "crewthrottle[otel]"),
        ("prometheus_client", "_prometheus", metrics.register_prometheus,
         "crewthrottle[prometheus]"),
    ],
)  # fmt: skip
def test_a_missing_extra_is_a_clear_import_error(
    monkeypatch: pytest.MonkeyPatch, missing: str, module: str, call: Any, extra: str
) -> None:
    for name in list(sys.modules):
        if name == missing or name.startswith(missing + "."):
            monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    monkeypatch.setitem(sys.modules, missing, None)
    monkeypatch.delitem(sys.modules, f"crewthrottle.metrics.{module}", raising=False)
    with pytest.raises(ImportError, match=re.escape(extra)):
        call(None, [ct.Limiter()])


# -- the native snapshot contract and the docs ------------------------------------------------


def test_native_wait_buckets_become_a_prometheus_histogram(registry: CollectorRegistry) -> None:
    """Snapshots as ``_native._limiter_snapshots()`` gives them, with cumulative buckets (the
    last bound infinite): same-named limiters add up bucket by bucket."""
    from crewthrottle.metrics._prometheus import LimiterCollector

    def snapshot(counts: list[int], total: float) -> dict[str, object]:
        bounds = [0.01, 0.1, 1.0, float("inf")]
        return {"name": "gpt", "acquired": counts[-1], "total_wait": total,
                "wait_histogram": list(zip(bounds, counts, strict=True))}  # fmt: skip

    collector = LimiterCollector(lambda: [snapshot([2, 5, 6, 6], 0.9), snapshot([1, 1, 3, 4], 4.2)])
    registry.register(collector)
    samples = prom_read(registry)
    buckets = samples["crewthrottle_limiter_wait_seconds_bucket"]
    assert buckets == {
        ("gpt", "0.01"): 3,
        ("gpt", "0.1"): 6,
        ("gpt", "1.0"): 9,
        ("gpt", "+Inf"): 10,
    }
    assert samples["crewthrottle_limiter_wait_seconds_count"] == {"gpt": 10}
    assert samples["crewthrottle_limiter_wait_seconds_sum"]["gpt"] == pytest.approx(5.1)
    registry.unregister(collector)


def test_the_readme_lists_every_series() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for series in SERIES:
        assert f"| `{series.otel_name}` |" in readme, series.otel_name
        assert series.otel_only or f"| `{prom_name(series)}` |" in readme, series.key


def test_undoing_needs_no_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clean-up code (``uninstrument()`` in a shutdown hook) works where nothing was set up."""
    for module in ("_otel", "_prometheus"):
        monkeypatch.delitem(sys.modules, f"crewthrottle.metrics.{module}", raising=False)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    metrics.uninstrument()
    metrics.unregister_prometheus()
