"""Where metrics read from: every live limiter (the native registry), or the ones given.

A snapshot is ``Limiter.stats()`` plus the limiter's ``name``, ``max_concurrent``, ``rpm``,
``tpm`` and ``window``: the contract of ``crewthrottle._native._limiter_snapshots()``, which
reads without taking the lock that acquire and release wait on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from crewthrottle import _native
from crewthrottle._native import Limiter

__all__ = ["Snapshot", "Source", "snapshot", "source"]

Snapshot = Mapping[str, object]
Source = Callable[[], Iterable[Snapshot]]


def source(limiters: Iterable[Limiter] | None) -> Source:
    """What to read: all live limiters when ``limiters`` is None, else those (validated)."""
    if limiters is None:
        return _native._limiter_snapshots
    chosen = _checked(limiters)
    return lambda: [snapshot(limiter) for limiter in chosen]


def _checked(limiters: Iterable[Limiter]) -> tuple[Limiter, ...]:
    if isinstance(limiters, Limiter | str | bytes) or not isinstance(limiters, Iterable):
        raise TypeError(
            f"limiters must be an iterable of crewthrottle.Limiter, got {type(limiters).__name__}"
        )
    chosen = tuple(limiters)
    wrong = [type(item).__name__ for item in chosen if not isinstance(item, Limiter)]
    if wrong:
        raise TypeError(f"limiters must hold only crewthrottle.Limiter, got {', '.join(wrong)}")
    if not chosen:
        raise ValueError("limiters is empty: pass None to report every limiter")
    return chosen


def snapshot(limiter: Limiter) -> Snapshot:
    """One limiter's snapshot, as ``_limiter_snapshots()`` gives it."""
    return limiter._snapshot()
