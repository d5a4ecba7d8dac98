"""Typed shapes of what ``stats()`` returns (plain dicts at run time)."""

from __future__ import annotations

from typing import TypedDict


class WaitStats(TypedDict):
    """Counters every primitive keeps. Times are seconds."""

    waiting: int
    acquired: int
    timeouts: int
    cancelled: int
    total_wait: float
    max_wait: float


class SemaphoreStats(WaitStats):
    """A semaphore's counters and its current value."""

    value: int


class LimiterStats(WaitStats):
    """A limiter's counters and live figures."""

    in_flight: int
    tokens_granted: int
    requests_in_window: int | None
    tokens_in_window: int | None
    paused_for: float
    retries: int
    give_ups: int
    retries_refused: int


class BudgetStats(TypedDict):
    """A retry budget's totals."""

    calls: int
    retries: int
    refused: int
