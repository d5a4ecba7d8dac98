"""Permits for throttled CrewAI LLM calls, refusing the self-deadlock instead of hanging in it.

The self-deadlock: code that holds a concurrency slot of a limiter (``with limiter:`` around
``crew.kickoff()``) while the crew's own LLM calls wait for a slot of the same limiter. Once every
slot is held that way, no LLM call can start and no kickoff can end.

Two checks, because only one of the two holders can be seen from here:

- A permit taken by a throttled LLM call is recorded in a ``ContextVar``, which follows the call
  into CrewAI's worker threads (CrewAI starts them with ``contextvars.copy_context()``). A second
  acquisition of the same limiter in that context (a tool that runs another crew from inside an
  LLM call, ``kickoff_all`` called from one) is refused at once with ``RuntimeError``.
- ``with limiter:``, ``@limiter`` and ``limiter.acquire()`` are native and record no holder, so a
  stalled wait is diagnosed instead: a throttled call waits at most ``deadlock_after`` seconds at
  a time, and raises ``RuntimeError`` if, when that time is up, every slot is held by code outside
  throttled LLM calls, at least as many throttled calls are waiting, the limiter is not paused and
  it granted nothing at all meanwhile. A wait that is merely long starts again (at the back of the
  queue, which after ``deadlock_after`` seconds costs nothing that matters).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from crewthrottle._native import AcquireTimeout, Limiter, Permit

__all__ = [
    "DEFAULT_DEADLOCK_AFTER",
    "acquire",
    "acquire_async",
    "inside",
    "refuse_if_held",
    "release",
]

#: Seconds a throttled call may wait with every slot held outside LLM calls before the stall is
#: reported as a self-deadlock. Long enough that a slow LLM call made under ``with limiter:``
#: (legitimate use of the same limiter) is not mistaken for one.
DEFAULT_DEADLOCK_AFTER = 60.0

_held: contextvars.ContextVar[tuple[Limiter, ...]] = contextvars.ContextVar(
    "crewthrottle_crewai_held", default=()
)


@dataclass
class _Counts:
    """Throttled LLM calls of one limiter: holding a permit, and waiting for one."""

    held: int = 0
    waiting: int = 0


_lock = threading.Lock()
_counts: dict[int, _Counts] = {}  # by id(limiter); an entry lives while a call uses it


def refuse_if_held(limiter: Limiter, what: str) -> None:
    """Raise ``RuntimeError`` if this context holds a permit of ``limiter`` through a throttled
    LLM call: ``what`` would wait for a slot its own context keeps."""
    if any(held is limiter for held in _held.get()):
        raise RuntimeError(
            f"crewthrottle: {what} needs {_name(limiter)} while this thread or task already "
            "holds one of its permits (in an enclosing throttled LLM call, e.g. a tool that "
            "runs another crew): with every slot held that way, nothing could ever proceed. "
            "Use a separate limiter for the inner work, or run it after the LLM call returns."
        )


@contextmanager
def inside(limiter: Limiter) -> Iterator[None]:
    """Mark this context as inside a throttled call of ``limiter`` (refusing to nest one)."""
    refuse_if_held(limiter, "a throttled LLM call")
    token = _held.set((*_held.get(), limiter))
    try:
        yield
    finally:
        _held.reset(token)


def acquire(limiter: Limiter, tokens: int, deadlock_after: float | None) -> Permit:
    """A permit for ``tokens`` tokens, counted as held by a throttled call until
    :func:`release`; waits with the GIL released, watching for the self-deadlock."""
    granted = limiter.try_acquire(tokens)
    if granted is None:
        granted = _wait(limiter, tokens, deadlock_after)
    _count(limiter, "held", +1)
    return granted


async def acquire_async(limiter: Limiter, tokens: int, deadlock_after: float | None) -> Permit:
    """:func:`acquire` for asyncio: waits without blocking the event loop."""
    granted = limiter.try_acquire(tokens)
    if granted is None:
        granted = await _await(limiter, tokens, deadlock_after)
    _count(limiter, "held", +1)
    return granted


def release(limiter: Limiter, permit: Permit) -> None:
    """Give back a permit from :func:`acquire`."""
    permit.release()
    _count(limiter, "held", -1)


def _wait(limiter: Limiter, tokens: int, deadlock_after: float | None) -> Permit:
    with _counting(limiter, "waiting"):
        while True:
            acquired = limiter.stats()["acquired"]
            try:
                return limiter.acquire(tokens, timeout=deadlock_after)
            except AcquireTimeout:
                _raise_if_stalled(limiter, acquired, deadlock_after)


async def _await(limiter: Limiter, tokens: int, deadlock_after: float | None) -> Permit:
    with _counting(limiter, "waiting"):
        while True:
            acquired = limiter.stats()["acquired"]
            try:
                return await limiter.acquire_async(tokens, timeout=deadlock_after)
            except AcquireTimeout:
                _raise_if_stalled(limiter, acquired, deadlock_after)


def _raise_if_stalled(limiter: Limiter, acquired_before: int, waited: float | None) -> None:
    """Raise ``RuntimeError`` if the wait that just timed out looks like the self-deadlock."""
    slots = limiter.max_concurrent
    if slots is None:  # without a concurrency cap, holding the limiter blocks no one
        return
    stats = limiter.stats()
    with _lock:
        counts = _counts.get(id(limiter), _Counts())
        held, waiting = counts.held, counts.waiting
    outside = stats["in_flight"] - held
    stalled = stats["acquired"] == acquired_before and stats["paused_for"] <= 0
    if stalled and outside >= slots and waiting >= outside:
        raise RuntimeError(
            f"crewthrottle: self-deadlock on {_name(limiter)}: for {waited:g} s all {slots} of "
            f"its concurrency slots have been held by code outside throttled LLM calls while "
            f"{waiting} throttled LLM calls wait for one, and nothing was granted. Most likely "
            "`with limiter:` (or @limiter, limiter.acquire()) is held around crew.kickoff(), "
            "whose own LLM calls need that limiter. Don't hold the limiter around kickoff: "
            "throttle the LLMs (throttle_llm) and bound the crews in flight with "
            "crewthrottle.crewai.kickoff_all(..., max_workers=N) or a separate semaphore."
        )


@contextmanager
def _counting(limiter: Limiter, field: str) -> Iterator[None]:
    _count(limiter, field, +1)
    try:
        yield
    finally:
        _count(limiter, field, -1)


def _count(limiter: Limiter, field: str, step: int) -> None:
    with _lock:
        counts = _counts.setdefault(id(limiter), _Counts())
        setattr(counts, field, getattr(counts, field) + step)
        if counts.held == counts.waiting == 0:
            del _counts[id(limiter)]


def _name(limiter: Limiter) -> str:
    return f"limiter {limiter.name!r}" if limiter.name else repr(limiter)
