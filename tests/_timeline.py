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
