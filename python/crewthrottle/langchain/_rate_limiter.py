"""``limiter.as_langchain()``: a :class:`~crewthrottle.Limiter` as LangChain's own
``rate_limiter=`` hook, and what that hook can and cannot enforce."""

from __future__ import annotations

import math

from langchain_core.rate_limiters import BaseRateLimiter

from crewthrottle._integrations import check_limiter
from crewthrottle._native import Limiter

__all__ = ["RateLimiter", "rate_limiter"]


class RateLimiter(BaseRateLimiter):
    """A :class:`~crewthrottle.Limiter` as LangChain's ``rate_limiter=`` (``BaseRateLimiter``).

    LangChain calls :meth:`acquire` (or :meth:`aacquire`) once before each model request and
    nothing afterwards, and names no request size. So each call takes a permit for 0 tokens
    and gives it back at once. What that enforces, for requests made through this object:

    - ``rpm``: **yes**: every request start counts in the limiter's window, shared with
      everything else using the limiter (other models, threads, event loops).
    - ``max_concurrent``: **no**. A free slot is waited for, but released before the request
      is sent, so any number of requests may be in flight.
    - ``tpm``: **no**. The permit weighs 0 tokens.
    - retries: none here. Rate-limit errors come back from the model (or its SDK's own retries,
      which this limiter does not see).

    For all three limits, token settling and retries, wrap the model with
    :func:`throttle_chat_model` instead.

    Args:
        limiter: The limiter to take permits from.
        timeout: Seconds to wait for a permit at most (None: forever); then
            :class:`~crewthrottle.AcquireTimeout` is raised, as LangChain ignores a False.
    """

    def __init__(self, limiter: Limiter, *, timeout: float | None = None) -> None:
        self.limiter = check_limiter(limiter)
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout < 0
        ):
            raise ValueError(f"timeout must be None or seconds >= 0, got {timeout!r}")
        self.timeout = timeout

    def acquire(self, *, blocking: bool = True) -> bool:
        """Wait for the limiter to allow one more request start (GIL released).

        With ``blocking=False``, False if it does not allow one right now.
        """
        if blocking:
            permit = self.limiter.acquire(timeout=self.timeout)
        elif (now := self.limiter.try_acquire()) is not None:
            permit = now
        else:
            return False
        permit.release()  # LangChain never says when the request ends: keep no slot
        return True

    async def aacquire(self, *, blocking: bool = True) -> bool:
        """Await the limiter's leave for one more request start, without blocking the loop."""
        if not blocking:
            return self.acquire(blocking=False)
        permit = await self.limiter.acquire_async(timeout=self.timeout)
        permit.release()
        return True

    def __repr__(self) -> str:
        return f"<crewthrottle.langchain.RateLimiter {self.limiter!r} timeout={self.timeout}>"


def rate_limiter(limiter: Limiter, *, timeout: float | None = None) -> RateLimiter:
    """``limiter`` as a LangChain ``BaseRateLimiter``: ``ChatOpenAI(rate_limiter=...)``.

    Enforces ``rpm`` only; see :class:`RateLimiter` for why, and :func:`throttle_chat_model`
    for a wrapper that enforces ``tpm`` and ``max_concurrent`` too.
    ``limiter.as_langchain()`` calls this.
    """
    return RateLimiter(limiter, timeout=timeout)
