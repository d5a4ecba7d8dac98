"""Rate-limit errors (429, 503, 529) the retry layer caught, per limiter (issue 11).

Counted natively, in ``Limiter.stats()["rate_limit_errors"]``, where the native module knows
the ``"rate_limited"`` event of ``Limiter._count_retry``; with an older native module, here.
The fallback holds each counted limiter (``Limiter`` takes no weak reference): it is meant to
go once the native count lands, not to last.
"""

from __future__ import annotations

import threading

from crewthrottle._native import Limiter

__all__ = ["count", "counted_here"]

_lock = threading.Lock()
_counts: dict[Limiter, int] = {}
_native_counts: bool | None = None  # None until the first count tells


def count(limiter: Limiter) -> None:
    """Count one rate-limit error against ``limiter``."""
    global _native_counts
    if _native_counts is not False:
        try:
            limiter._count_retry("rate_limited")
        except ValueError:  # a native module without the event
            _native_counts = False
        else:
            _native_counts = True
            return
    with _lock:
        _counts[limiter] = _counts.get(limiter, 0) + 1


def counted_here(limiter: Limiter) -> int:
    """Rate-limit errors counted against ``limiter`` by the fallback (0 when native)."""
    with _lock:
        return _counts.get(limiter, 0)
