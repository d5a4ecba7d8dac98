"""Prometheus: a custom collector that reads the limiters at each scrape, so nothing is
recorded on the acquire/release path. Imported only by ``register_prometheus()`` (the
``prometheus`` extra)."""

from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from crewthrottle.metrics._series import HISTOGRAM, PERCENTILES, SERIES, Series, by_name
from crewthrottle.metrics._source import Source

__all__ = ["LimiterCollector", "register", "unregister"]

LABEL = "limiter"
Groups = dict[str, dict[str, object]]


class LimiterCollector(Collector):
    """Every crewthrottle series for the limiters of ``source``, labelled ``limiter``."""

    def __init__(self, source: Source) -> None:
        self._source = source

    def describe(self) -> list[Metric]:
        """The families without samples: registering reads no limiter."""
        return list(self._families({}))

    def collect(self) -> Iterator[Metric]:
        return self._families(by_name(self._source()))

    def _families(self, groups: Groups) -> Iterator[Metric]:
        for series in SERIES:
            if not series.otel_only:
                yield _family(series, groups)
        yield _wait_histogram(groups)
        yield _percentiles(groups)


def _family(series: Series, groups: Groups) -> Metric:
    kind = CounterMetricFamily if series.kind == "counter" else GaugeMetricFamily
    family = kind(series.prometheus_name, series.description, labels=[LABEL])
    for name, group in groups.items():
        value = group.get(series.key)
        if isinstance(value, int | float):
            family.add_metric([name], value)
    return family


def _wait_histogram(groups: Groups) -> Metric:
    """Waits of granted requests: the native cumulative buckets (``wait_histogram``, the
    last bound infinite) when the snapshot has them, else only the count (grants) and sum
    (total wait), which still give the mean."""
    family = HistogramMetricFamily(
        "crewthrottle_limiter_wait_seconds",
        "Time granted requests spent waiting for their permit.",
        labels=[LABEL],
    )
    for name, group in groups.items():
        count, total = group.get("acquired"), group.get("total_wait")
        if not isinstance(count, int) or not isinstance(total, int | float):
            continue
        buckets = group.get(HISTOGRAM)
        native = buckets if isinstance(buckets, list) else []
        le = [(_le(bound), float(n)) for bound, n in native if math.isfinite(bound)]
        every = next((n for bound, n in native if not math.isfinite(bound)), count)
        family.add_metric([name], [*le, ("+Inf", float(every))], float(total))
    return family


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it ("0.25", "1.0")."""
    return repr(float(bound))


def _percentiles(groups: Groups) -> Metric:
    family = GaugeMetricFamily(
        "crewthrottle_limiter_wait_recent_seconds",
        "Recent wait-time percentiles of granted requests (p50, p90, p99).",
        labels=[LABEL, "quantile"],
    )
    for name, group in groups.items():
        for key, quantile in PERCENTILES:
            value = group.get(key)
            if isinstance(value, int | float):
                family.add_metric([name, quantile], value)
    return family


#: The collectors this module registered, and where.
_registered: list[tuple[CollectorRegistry, LimiterCollector]] = []


def register(registry: CollectorRegistry | None, source: Source) -> LimiterCollector:
    """Register a collector of ``source`` in ``registry`` (the default one when None),
    replacing one registered here before."""
    registry = _checked(registry)
    unregister(registry)
    collector = LimiterCollector(source)
    registry.register(collector)
    _registered.append((registry, collector))
    return collector


def unregister(registry: CollectorRegistry | None) -> None:
    """Remove what ``register`` put in ``registry`` (the default one when None)."""
    registry = _checked(registry)
    for entry in [e for e in _registered if e[0] is registry]:
        registry.unregister(entry[1])
        _registered.remove(entry)


def _checked(registry: CollectorRegistry | None) -> CollectorRegistry:
    if registry is None:
        return REGISTRY
    if not isinstance(registry, CollectorRegistry):
        kind = type(registry).__name__
        raise TypeError(f"registry must be a prometheus_client CollectorRegistry, got {kind}")
    return registry
