"""crewthrottle: stop LLM agent apps dying of ``429 rate limit exceeded``.

A native (Rust) limiter shared by every thread and event loop of a process: a concurrency cap
plus requests and tokens per window, waiting with the GIL released, served first come first
served. See ``Limiter``, ``Semaphore``, ``BoundedSemaphore`` and ``TokenBucket``.

An in-memory limiter is per process: after ``os.fork()`` the child has its own (it forgets
the parent's other threads, their waiters and their permits).
"""

from __future__ import annotations

import os

from crewthrottle._backoff import Backoff, backoff, throttle
from crewthrottle._estimated import estimate
from crewthrottle._estimates import token_estimates
from crewthrottle._http_hooks import http_hooks
from crewthrottle._native import (
    AcquireTimeout,
    BackendUnavailable,
    BoundedSemaphore,
    Limiter,
    LimitsConflict,
    Permit,
    RedisBackend,
    RetryBudget,
    Semaphore,
    TokenBucket,
    _after_fork_in_child,
    _after_fork_in_parent,
    _before_fork,
)
from crewthrottle._native import __version__ as _version
from crewthrottle._rate_limit_errors import is_rate_limit_error, retry_after
from crewthrottle._ratelimit_headers import RateLimit, RateLimitHeaders, parse_ratelimit_headers
from crewthrottle._spend import SpendReport, SpendRow, track_spend

#: The version; its one source is Cargo.toml.
__version__: str = _version

__all__ = [
    "AcquireTimeout",
    "BackendUnavailable",
    "Backoff",
    "BoundedSemaphore",
    "Limiter",
    "LimitsConflict",
    "Permit",
    "RateLimit",
    "RateLimitHeaders",
    "RedisBackend",
    "RetryBudget",
    "Semaphore",
    "SpendReport",
    "SpendRow",
    "TokenBucket",
    "backoff",
    "estimate",
    "http_hooks",
    "is_rate_limit_error",
    "parse_ratelimit_headers",
    "retry_after",
    "throttle",
    "token_estimates",
    "track_spend",
]

if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
