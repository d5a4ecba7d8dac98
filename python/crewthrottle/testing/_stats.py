"""The fake provider's request log and the figures computed from it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ._limits import Reason


@dataclass(frozen=True)
class RequestRecord:
    """One request the fake provider answered.

    Times are ``time.monotonic()`` seconds. ``start`` is when the provider decided (the instant
    that counts in its windows), ``end`` when the response was ready to be written (after any
    latency; the request stopped counting as in flight then). ``in_flight`` is
    how many accepted requests were in flight when this one arrived, not counting itself.
    Rejected requests generate nothing: their ``completion_tokens`` is 0. ``prompt_text`` is
    the text of the request's messages (and Anthropic's ``system``), one per line, to tell
    which part of an app sent it.
    """

    start: float
    end: float
    status: int
    prompt_tokens: int
    completion_tokens: int
    in_flight: int
    reason: Reason | None
    model: str
    stream: bool = False
    prompt_text: str = ""

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def accepted(self) -> bool:
        """Whether the request was answered with a completion (HTTP 200)."""
        return self.status == 200


Amount = Callable[[RequestRecord], int]


def one(_: RequestRecord) -> int:
    """Amount of a record when counting requests."""
    return 1


def tokens(record: RequestRecord) -> int:
    """Amount of a record when counting tokens."""
    return record.total_tokens


def max_in_any_window(records: Sequence[RequestRecord], window: float, amount: Amount) -> int:
    """Largest sum of ``amount`` over accepted requests whose starts lie within ``window``.

    "Within" is the provider's rule: starts ``s`` with ``s - first < window``.
    """
    accepted = sorted((r for r in records if r.accepted), key=lambda r: r.start)
    best = total = right = 0
    for left, first in enumerate(accepted):
        while right < len(accepted) and accepted[right].start - first.start < window:
            total += amount(accepted[right])
            right += 1
        best = max(best, total)
        if right > left:
            total -= amount(first)
    return best


def utilisation(
    records: Sequence[RequestRecord], limit: int, window: float, amount: Amount
) -> float:
    """Share of what ``limit`` per ``window`` allowed that accepted requests used, steadily.

    The steady state skips the first window after the first accepted start (every client gets
    that burst for free) and keeps the largest whole number ``m`` of windows that ends before
    the last accepted start. Utilisation is the amount started in those ``m`` windows divided by
    ``m * limit``: 1.0 is a client that used every request (or token) the limit allowed, and
    it can never exceed 1.0, whether the client sends evenly or in bursts.

    Raises:
        ValueError: if the accepted traffic does not span at least two whole windows.
    """
    starts = sorted(r.start for r in records if r.accepted)
    if len(starts) < 2:
        raise ValueError("utilisation needs at least two accepted requests")
    steady_from = starts[0] + window
    windows = math.floor((starts[-1] - steady_from) / window)
    if windows < 1:
        raise ValueError("utilisation needs accepted traffic spanning at least two windows")
    steady_to = steady_from + windows * window
    used = sum(amount(r) for r in records if r.accepted and steady_from <= r.start < steady_to)
    return used / (windows * limit)
