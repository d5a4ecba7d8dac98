"""OpenTelemetry: asynchronous instruments read at each collection, so nothing is recorded on
the acquire/release path. Imported only by ``instrument()`` (the ``otel`` extra)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry import metrics

from crewthrottle.metrics._series import PERCENTILES, SERIES, Series, by_name
from crewthrottle.metrics._source import Source

__all__ = ["instrument", "uninstrument"]

#: Attribute naming the limiter, namespaced as OpenTelemetry's semantic conventions ask.
NAME = "crewthrottle.limiter.name"
QUANTILE = "crewthrottle.quantile"

Callback = Callable[[metrics.CallbackOptions], Iterable[metrics.Observation]]


class _Binding:
    """The instruments made on one meter provider; they report while ``source`` is set.

    The OpenTelemetry API cannot remove an instrument, so ``uninstrument()`` silences them
    and a later ``instrument()`` on the same provider sets them reporting again."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.source: Source | None = None
        for series in SERIES:
            create = {
                "counter": meter.create_observable_counter,
                "updown": meter.create_observable_up_down_counter,
                "gauge": meter.create_observable_gauge,
            }[series.kind]
            create(series.otel_name, [self._observe(series)], series.unit, series.description)
        meter.create_observable_gauge(
            "crewthrottle.limiter.wait.recent",
            [self._percentiles],
            "s",
            "Recent wait-time percentiles of granted requests (p50, p90, p99).",
        )

    def _groups(self) -> dict[str, dict[str, object]]:
        source = self.source
        return {} if source is None else by_name(source())

    def _observe(self, series: Series) -> Callback:
        def observe(options: metrics.CallbackOptions) -> list[metrics.Observation]:
            return [
                metrics.Observation(value, {NAME: name})
                for name, group in self._groups().items()
                if isinstance(value := group.get(series.key), int | float)
            ]

        return observe

    def _percentiles(self, options: metrics.CallbackOptions) -> list[metrics.Observation]:
        return [
            metrics.Observation(value, {NAME: name, QUANTILE: quantile})
            for name, group in self._groups().items()
            for key, quantile in PERCENTILES
            if isinstance(value := group.get(key), int | float)
        ]


#: One binding per meter provider ever instrumented, by id (the provider is kept with it, so
#: its id cannot be reused by another); the global provider's under "global", made once: if
#: it is the API's proxy (no provider set yet), its instruments move to the real one when set.
_bindings: dict[int | str, tuple[object, _Binding]] = {}


def instrument(meter_provider: metrics.MeterProvider | None, source: Source, version: str) -> None:
    """Report ``source`` through ``meter_provider`` (the global one when None), alone."""
    if meter_provider is not None and not isinstance(meter_provider, metrics.MeterProvider):
        raise TypeError(
            "meter_provider must be an opentelemetry.metrics.MeterProvider, "
            f"got {type(meter_provider).__name__}"
        )
    uninstrument()
    is_global = meter_provider is None or meter_provider is metrics.get_meter_provider()
    key: int | str = "global" if is_global else id(meter_provider)
    if key not in _bindings:
        provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
        _bindings[key] = provider, _Binding(provider.get_meter("crewthrottle", version))
    _bindings[key][1].source = source


def uninstrument() -> None:
    """Silence every instrument made so far."""
    for _, binding in _bindings.values():
        binding.source = None
