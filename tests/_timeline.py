"""Checks of recorded timestamps: the invariants the concurrency tests state."""

from __future__ import annotations

from collections.abc import Sequence


def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end before a start at the same instant)."""
    events = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
        key=lambda e: (e[0], e[1]),
    )
    best = current = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best


def max_in_window(
    times: Sequence[float], window: float, weights: Sequence[int] | None = None
) -> int:
    """The largest total weight of events less than `window` apart from first to last."""
    pairs = sorted(zip(times, weights or [1] * len(times), strict=True))
    best = total = lo = 0
    for hi in range(len(pairs)):
        total += pairs[hi][1]
        while pairs[hi][0] - pairs[lo][0] >= window:
            total -= pairs[lo][1]
            lo += 1
        best = max(best, total)
    return best


def steady_utilisation(
    times: Sequence[float], limit: int, window: float, weights: Sequence[int] | None = None
) -> float:
    """What was granted in the steady state over what `limit` per `window` allowed there.

    The steady state starts one window after the first grant (every client gets the first
    window's burst) and is the most whole windows that end by the last grant, so bursts do not
    skew the figure: 1.0 is every request (or token) the limit allowed, and it cannot exceed
    1.0 if the limit held.
    """
    pairs = sorted(zip(times, weights or [1] * len(times), strict=True))
    start = pairs[0][0] + window
    windows = int((pairs[-1][0] - start) // window)
    if windows < 1:
        raise ValueError("the grants span fewer than two windows")
    stop = start + windows * window
    return sum(w for t, w in pairs if start <= t < stop) / (windows * limit)


def fifo_lag(asked: Sequence[float], granted: Sequence[float]) -> float:
    """The largest head start that did not win: over every pair where one asked before the
    other but was granted after it, the most the loser had asked earlier (0.0 if first come
    was always first served)."""
    order = sorted(zip(asked, granted, strict=True))
    lag = 0.0
    for i, (ask, grant) in enumerate(order):
        for earlier, earlier_grant in order[:i]:
            if earlier_grant > grant:
                lag = max(lag, ask - earlier)
                break  # the earliest such one gives this request's largest lag
    return lag
