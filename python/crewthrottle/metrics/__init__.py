"""Metrics for OpenTelemetry and Prometheus: limiter gauges, counters and wait times.

``instrument()`` reports every limiter, present and future (or the ones given), through an
OpenTelemetry meter provider; ``register_prometheus()`` adds a collector to a
``prometheus_client`` registry. Both read the limiters when metrics are collected, through
asynchronous instruments and a custom collector: nothing is recorded on the acquire/release
path, so registering costs a limiter nothing, and reading takes no lock that acquire and
release wait on. Series are labelled by the limiter's name (same-named limiters are reported
together, unnamed ones as ``"unnamed"``). The series: :data:`SERIES` and the README.

OpenTelemetry and prometheus_client are optional (``crewthrottle[otel]``,
``crewthrottle[prometheus]``) and imported only when these functions are called.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from types import ModuleType
from typing import TYPE_CHECKING

from crewthrottle._native import Limiter
from crewthrottle.metrics._series import PERCENTILES, SERIES, UNNAMED, Series
from crewthrottle.metrics._source import source

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from prometheus_client.registry import CollectorRegistry

    from crewthrottle.metrics._prometheus import LimiterCollector

__all__ = [
    "PERCENTILES",
    "SERIES",
    "UNNAMED",
    "Series",
    "instrument",
    "register_prometheus",
    "uninstrument",
    "unregister_prometheus",
]


def _backend(module: str, extra: str, requirement: str) -> ModuleType:
    try:
        return importlib.import_module(f"crewthrottle.metrics.{module}")
    except ImportError as exc:
        raise ImportError(
            f"crewthrottle.metrics needs {requirement} for this: "
            f"pip install 'crewthrottle[{extra}]' ({exc})"
        ) from exc


def instrument(
    meter_provider: MeterProvider | None = None, limiters: Iterable[Limiter] | None = None
) -> None:
    """Report limiters through OpenTelemetry: every limiter, present and future, or only
    ``limiters``; through ``meter_provider``, or the global one (also when it is set later).

    Calling it again replaces the previous instrumentation; :func:`uninstrument` ends it
    (and lets go of ``limiters``, which are kept until then).
    Raises ``ImportError`` without ``opentelemetry-api`` (``crewthrottle[otel]``).
    """
    otel = _backend("_otel", "otel", "opentelemetry-api")
    from crewthrottle import __version__

    otel.instrument(meter_provider, source(limiters), __version__)


def uninstrument() -> None:
    """Stop reporting through OpenTelemetry (the instruments stay, silent: OpenTelemetry
    cannot remove them; :func:`instrument` on the same provider revives them)."""
    otel = sys.modules.get("crewthrottle.metrics._otel")
    if otel is not None:  # else nothing was instrumented: nothing to import or undo
        otel.uninstrument()


def register_prometheus(
    registry: CollectorRegistry | None = None, limiters: Iterable[Limiter] | None = None
) -> LimiterCollector:
    """Add a collector of every limiter, present and future (or only ``limiters``), to
    ``registry`` (``prometheus_client``'s default when None), replacing one added before.

    Returns the collector (it keeps ``limiters``); :func:`unregister_prometheus` removes it.
    Raises ``ImportError`` without ``prometheus_client`` (``crewthrottle[prometheus]``).
    """
    prometheus = _backend("_prometheus", "prometheus", "prometheus_client")
    collector: LimiterCollector = prometheus.register(registry, source(limiters))
    return collector


def unregister_prometheus(registry: CollectorRegistry | None = None) -> None:
    """Remove the collector :func:`register_prometheus` added to ``registry`` (the default
    one when None); nothing happens if there is none."""
    prometheus = sys.modules.get("crewthrottle.metrics._prometheus")
    if prometheus is not None:  # else nothing was registered
        prometheus.unregister(registry)
