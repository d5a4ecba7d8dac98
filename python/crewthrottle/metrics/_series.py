"""The series crewthrottle exports, defined once for OpenTelemetry and Prometheus, and the
grouping of limiter snapshots by name (the one label, so cardinality stays bounded)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["HISTOGRAM", "PERCENTILES", "SERIES", "UNNAMED", "Series", "by_name"]

#: The label value of limiters made without ``name=`` (they are reported together).
UNNAMED = "unnamed"

#: OpenTelemetry's kinds: a monotonic counter, an additive level, a non-additive level.
Kind = Literal["counter", "updown", "gauge"]


@dataclass(frozen=True)
class Series:
    """One series: the snapshot key it reads and how each ecosystem names it."""

    key: str
    name: str  # after the ``crewthrottle.limiter.`` prefix, dotted
    kind: Kind
    unit: str  # UCUM, as OpenTelemetry's semantic conventions use: "s", "{request}"
    description: str
    #: Only OpenTelemetry gets it (Prometheus has the same figure in a histogram).
    otel_only: bool = False

    @property
    def otel_name(self) -> str:
        return f"crewthrottle.limiter.{self.name}"

    @property
    def prometheus_name(self) -> str:
        """Without ``_total``: prometheus_client adds it to counters itself."""
        base = "crewthrottle_limiter_" + self.name.replace(".", "_")
        return base + "_seconds" if self.unit == "s" else base


SERIES: tuple[Series, ...] = (
    Series("in_flight", "in_flight", "updown", "{request}", "Permits held now."),
    Series("waiting", "waiting", "updown", "{request}", "Callers waiting for a permit now."),
    Series("requests_in_window", "window.requests", "updown", "{request}",
           "Requests started in the current window (against limit.requests)."),
    Series("tokens_in_window", "window.tokens", "updown", "{token}",
           "Tokens charged in the current window (against limit.tokens)."),
    Series("max_concurrent", "limit.concurrent", "gauge", "{request}",
           "Configured max_concurrent."),
    Series("rpm", "limit.requests", "gauge", "{request}", "Configured requests per window."),
    Series("tpm", "limit.tokens", "gauge", "{token}", "Configured tokens per window."),
    Series("effective_max_concurrent", "effective_limit.concurrent", "gauge", "{request}",
           "Concurrency limit in force, as learned from the provider."),
    Series("effective_rpm", "effective_limit.requests", "gauge", "{request}",
           "Requests per window in force, as learned from the provider."),
    Series("effective_tpm", "effective_limit.tokens", "gauge", "{token}",
           "Tokens per window in force, as learned from the provider."),
    Series("window", "window.duration", "gauge", "s", "Length of the limiter's window."),
    Series("paused_for", "pause.remaining", "gauge", "s",
           "Time until the pause in force ends (a provider's Retry-After); 0 if none."),
    Series("max_wait", "wait.max", "gauge", "s", "Longest wait of a granted request."),
    Series("acquired", "grants", "counter", "{request}", "Permits granted."),
    Series("timeouts", "timeouts", "counter", "{request}", "Waits ended by a timeout."),
    Series("cancelled", "cancellations", "counter", "{request}",
           "Waits cancelled (asyncio cancellation, Ctrl-C)."),
    # Not a counter: settling a permit below its reservation refunds, so it can go down.
    Series("tokens_granted", "tokens.granted", "updown", "{token}",
           "Tokens charged to granted requests, as settled (refunds lower it)."),
    Series("total_wait", "wait.time", "counter", "s",
           "Time granted requests spent waiting, in all.", otel_only=True),
    Series("retries", "retries", "counter", "{retry}", "Retries scheduled by backoff."),
    Series("give_ups", "give_ups", "counter", "{call}", "Calls backoff gave up on."),
    Series("retries_refused", "retries_refused", "counter", "{retry}",
           "Retries a RetryBudget refused."),
    Series("rate_limit_errors", "rate_limit_errors", "counter", "{error}",
           "Rate-limit errors (429, 503, 529) the retry layer caught."),
)  # fmt: skip

#: Recent wait-time percentiles: snapshot key and quantile label.
PERCENTILES = (("wait_p50", "0.5"), ("wait_p90", "0.9"), ("wait_p99", "0.99"))

#: Keys whose values are levels of one limiter, not amounts: same-named limiters report the
#: largest (the others are summed: permits, counts and limits of the group as a whole).
_LARGEST = frozenset({"window", "paused_for", "max_wait", *(key for key, _ in PERCENTILES)})

#: A cumulative histogram of waits: ``[(upper bound in seconds, waits at or below it), ...]``.
HISTOGRAM = "wait_histogram"

_NUMERIC = tuple(s.key for s in SERIES) + tuple(key for key, _ in PERCENTILES)


def by_name(snapshots: Iterable[Mapping[str, object]]) -> dict[str, dict[str, object]]:
    """Snapshots merged per limiter name; a key absent or None in all of a group is absent."""
    groups: dict[str, dict[str, object]] = {}
    for snapshot in snapshots:
        name = snapshot.get("name")
        group = groups.setdefault(name if isinstance(name, str) and name else UNNAMED, {})
        for key in _NUMERIC:
            _merge(group, key, snapshot.get(key))
        _merge_histogram(group, snapshot.get(HISTOGRAM))
    return groups


def _merge(group: dict[str, object], key: str, value: object) -> None:
    if not isinstance(value, int | float):
        return
    known = group.get(key)
    if not isinstance(known, int | float):
        group[key] = value
    else:
        group[key] = max(known, value) if key in _LARGEST else known + value


def _merge_histogram(group: dict[str, object], buckets: object) -> None:
    if not isinstance(buckets, list | tuple) or not buckets:
        return
    known = group.get(HISTOGRAM)
    if not isinstance(known, list):
        group[HISTOGRAM] = [(float(bound), int(count)) for bound, count in buckets]
    else:  # same native bounds for every limiter: add counts bucket by bucket
        group[HISTOGRAM] = [(b, c + int(n)) for (b, c), (_, n) in zip(known, buckets, strict=True)]
