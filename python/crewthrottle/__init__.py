"""crewthrottle: stop LLM agent apps dying of ``429 rate limit exceeded``.

A native (Rust) limiter shared by every thread and event loop of a process: a concurrency cap
plus requests and tokens per window, waiting with the GIL released, served first come first
served. See ``Limiter``, ``Semaphore``, ``BoundedSemaphore`` and ``TokenBucket``.

An in-memory limiter is per process: after ``os.fork()`` the child has its own (it forgets
the parent's other threads, their waiters and their permits).
"""

from __future__ import annotations

import os

from crewthrottle._native import (
    AcquireTimeout,
    BoundedSemaphore,
    Limiter,
    Permit,
    Semaphore,
    TokenBucket,
    _after_fork_in_child,
    _after_fork_in_parent,
    _before_fork,
)

__all__ = [
    "AcquireTimeout",
    "BoundedSemaphore",
    "Limiter",
    "Permit",
    "Semaphore",
    "TokenBucket",
]

if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
