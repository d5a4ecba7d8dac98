"""Typed shapes of what ``stats()`` returns (plain dicts at run time)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:  # only read by type checkers (the annotations are strings at run time)
    from typing_extensions import NotRequired


class WaitStats(TypedDict):
    """Counters every primitive keeps. Times are seconds.

    ``acquired`` counts grants taken by their callers; ``cancelled`` counts waits cancelled, or
    ended because the waiter's event loop was closed under it. ``wait_p50``, ``wait_p90`` and
    ``wait_p99`` are percentiles of the waits of the grants taken in the last 50 to 60 seconds
    (a grant taken at once waited 0), to within about 9%; ``None`` when there were none.
    """

    waiting: int
    acquired: int
    timeouts: int
    cancelled: int
    total_wait: float
    max_wait: float
    wait_p50: float | None
    wait_p90: float | None
    wait_p99: float | None


class SemaphoreStats(WaitStats):
    """A semaphore's counters and its current value."""

    value: int


class LimiterStats(WaitStats):
    """A limiter's counters and live figures.

    ``tokens_granted`` is ``tokens_charged - tokens_refunded``: tokens ever reserved or settled
    above the reservation, less those refunded (settled below it, or never used).
    ``blocked_by`` names the limit the last refused request met ("max_concurrent", "rpm",
    "pacing", "tpm" or "pause"), ``None`` after a grant. ``pacing_hard_for`` is how long
    (seconds) the limiter has been holding callers back — since its first waiter waited more
    than a second (or a sixtieth of the window, if longer) — or ``None`` once the queue has
    stayed empty for a window; ``pacing_episodes`` counts such episodes (each is logged once
    at INFO on ``crewthrottle.limiter`` when it starts and when it ends). ``retries``,
    ``give_ups``, ``retries_refused`` and ``rate_limit_errors`` are what
    ``backoff``/``throttle`` did and saw through this limiter.

    With a Redis backend the figures are the shared budget's, but for the wait-time
    percentiles and ``max_wait``, which are this process's; ``process_waiting`` and
    ``process_in_flight`` are this process's own waiters and permits.
    """

    in_flight: int
    tokens_granted: int
    tokens_charged: int
    tokens_refunded: int
    requests_in_window: int | None
    tokens_in_window: int | None
    paused_for: float
    blocked_by: str | None
    pacing_hard_for: float | None
    pacing_episodes: int
    retries: int
    give_ups: int
    retries_refused: int
    rate_limit_errors: int
    process_waiting: NotRequired[int]
    process_in_flight: NotRequired[int]


class LimiterSnapshot(LimiterStats):
    """A metrics snapshot of one live limiter (``_native._limiter_snapshots()``)."""

    name: str | None
    max_concurrent: int | None
    rpm: int | None
    tpm: int | None
    window: float
    wait_histogram: list[tuple[float, int]]
    shared: bool


class BudgetStats(TypedDict):
    """A retry budget's totals."""

    calls: int
    retries: int
    refused: int
