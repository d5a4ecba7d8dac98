"""``backoff`` and ``throttle``: retries that wait as long as the provider asks, tell everyone
sharing the limit to wait too, and cannot multiply traffic.

The schedule (delays, jitter, when to give up) and the retry budget live in the native core;
this layer only catches, asks the schedule, sleeps and counts.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, Union

from crewthrottle._callables import is_async, refuse_awaitable
from crewthrottle._native import Limiter, RetryBudget, _Schedule
from crewthrottle._rate_limit_errors import is_rate_limit_error, response_headers, retry_after
from crewthrottle._ratelimit_headers import parse_ratelimit_headers

if TYPE_CHECKING:
    from crewthrottle._estimated import Estimate

__all__ = ["Backoff", "backoff", "throttle"]

P = ParamSpec("P")
R = TypeVar("R")

logging.getLogger("crewthrottle").addHandler(logging.NullHandler())  # the app decides where
#: DEBUG per retry (a storm would log a line per call: the counters in ``stats()`` and the
#: metrics say how many), WARNING per give-up.
logger = logging.getLogger("crewthrottle.retry")
#: INFO when a provider's wait pauses a limiter that was not paused (once per pause).
limiter_logger = logging.getLogger("crewthrottle.limiter")

RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
OnRetry = Callable[[int, float, BaseException], object]
Tokens = Union[int, Callable[..., int], "Estimate"]


def _predicate(retry_on: RetryOn) -> Callable[[BaseException], bool]:
    if isinstance(retry_on, type) and issubclass(retry_on, BaseException):
        return lambda exc: isinstance(exc, retry_on)
    if isinstance(retry_on, tuple) and all(
        isinstance(c, type) and issubclass(c, BaseException) for c in retry_on
    ):
        return lambda exc: isinstance(exc, retry_on)
    if callable(retry_on) and not isinstance(retry_on, type):
        return retry_on
    raise TypeError(
        "retry_on must be an exception class, a tuple of them, or a predicate, "
        f"got {type(retry_on).__name__}"
    )


def _note(exc: BaseException, text: str) -> None:
    # PEP 678; on Python 3.10 the notes are kept in the same attribute, unprinted.
    if hasattr(exc, "add_note"):
        exc.add_note(text)
    else:  # pragma: no cover - Python 3.10
        exc.__notes__ = [*getattr(exc, "__notes__", []), text]


class Backoff:
    """A retry policy for rate-limit errors: a decorator for sync and async functions, or
    ``.call(fn, *args)`` for one call. Times are seconds.

    Retries what ``retry_on`` accepts (default: :func:`is_rate_limit_error`, which refuses
    ``insufficient_quota``) up to ``max_tries`` attempts in all, waiting ``base * factor**n``
    seconds (at most ``max_delay``) with ``jitter`` ("full", "equal" or "none"), and at least
    as long as the provider's ``Retry-After`` when ``respect_retry_after``. A provider's wait
    longer than ``max_delay``, or past ``max_time``, gives up at once. With ``limiter``, the
    provider's wait pauses every caller sharing it, for at most the longer of ``max_delay``
    and the limiter's ``window`` (a rate limit resets within its window: an absurd
    ``Retry-After`` cannot stop the limiter for years; ``limiter.resume()`` lifts a pause);
    with ``budget`` (a :class:`RetryBudget`), retries are capped at a share of calls. When it
    gives up, the original exception propagates with a note. ``on_retry(attempt, delay, exc)``
    is called before each sleep; ``seed`` makes the jitter repeatable.

    Ranges (a ``ValueError`` naming the argument outside them, a ``TypeError`` for a bool
    or a non-number): ``1 <= max_tries <= 2**32 - 1``; ``base >= 0`` and finite;
    ``factor >= 1`` and finite; ``0 <= max_delay <= 1e9`` (so every delay is one
    ``time.sleep`` takes, however large ``base * factor**n`` grows: it saturates at
    ``max_delay``); ``max_time`` None or finite and ``> 0``; ``seed`` None or
    ``0 <= seed <= 2**64 - 1``.
    """

    def __init__(
        self,
        *,
        retry_on: RetryOn = is_rate_limit_error,
        max_tries: int = 4,
        base: float = 0.5,
        factor: float = 2.0,
        max_delay: float = 30.0,
        max_time: float | None = None,
        jitter: str = "full",
        respect_retry_after: bool = True,
        limiter: Limiter | None = None,
        budget: RetryBudget | None = None,
        on_retry: OnRetry | None = None,
        seed: int | None = None,
    ) -> None:
        if not isinstance(jitter, str):
            raise TypeError(f"jitter must be 'full', 'equal' or 'none', got {jitter!r}")
        if limiter is not None and not isinstance(limiter, Limiter):
            raise TypeError(f"limiter must be a crewthrottle.Limiter, got {type(limiter).__name__}")
        if budget is not None and not isinstance(budget, RetryBudget):
            raise TypeError(
                f"budget must be a crewthrottle.RetryBudget, got {type(budget).__name__}"
            )
        if on_retry is not None and not callable(on_retry):
            raise TypeError(f"on_retry must be callable, got {type(on_retry).__name__}")
        self._schedule = _Schedule(
            max_tries=max_tries,
            base=base,
            factor=factor,
            max_delay=max_delay,
            max_time=max_time,
            jitter=jitter,
            seed=seed,
        )
        self._retryable = _predicate(retry_on)
        self.respect_retry_after = respect_retry_after
        self.limiter = limiter
        self.budget = budget
        self.on_retry = on_retry

    def with_limiter(self, limiter: Limiter) -> Backoff:
        """The same policy, pausing ``limiter`` when a provider names a wait."""
        if not isinstance(limiter, Limiter):
            raise TypeError(f"limiter must be a crewthrottle.Limiter, got {type(limiter).__name__}")
        policy = copy.copy(self)  # shares the schedule (and its random source): thread-safe
        policy.limiter = limiter
        return policy

    def __call__(self, function: Callable[P, R]) -> Callable[P, R]:
        """Decorate a sync or async function with this policy."""
        if not callable(function):
            raise TypeError(f"backoff decorates a callable, got {type(function).__name__}")
        if is_async(function):

            @functools.wraps(function)
            async def retried_async(*args: Any, **kwargs: Any) -> Any:
                return await self._call_async(function, args, kwargs)

            return retried_async  # type: ignore[return-value]

        @functools.wraps(function)
        def retried(*args: P.args, **kwargs: P.kwargs) -> R:
            return self._call_sync(function, args, kwargs)

        return retried

    def call(self, function: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """Call ``function(*args, **kwargs)`` with retries; for an async function, returns
        the coroutine to await."""
        if is_async(function):
            return self._call_async(function, args, kwargs)  # type: ignore[return-value]
        return self._call_sync(function, args, kwargs)

    def _call_sync(self, function: Callable[..., R], args: Any, kwargs: Any) -> R:
        started, tries = time.monotonic(), 0
        if self.budget is not None:
            self.budget.record_call()
        while True:
            tries += 1
            try:
                result = function(*args, **kwargs)
            except Exception as exc:
                delay = self._next_delay(exc, tries, started)
                if delay is None:
                    raise
            else:
                refuse_awaitable(result, function)
                return result
            time.sleep(delay)  # releases the GIL; Ctrl-C interrupts it

    async def _call_async(self, function: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        started, tries = time.monotonic(), 0
        if self.budget is not None:
            self.budget.record_call()
        while True:
            tries += 1
            try:
                return await function(*args, **kwargs)
            except Exception as exc:
                delay = self._next_delay(exc, tries, started)
                if delay is None:
                    raise
            await asyncio.sleep(delay)

    def _next_delay(self, exc: BaseException, tries: int, started: float) -> float | None:
        """The delay before the next try, or None to let ``exc`` propagate (with a note)."""
        counted = False
        if self.limiter is not None and is_rate_limit_error(exc):
            counted = _tell_limiter(self.limiter, exc)
        if not self._retryable(exc):
            return None
        wait = retry_after(exc) if self.respect_retry_after else None
        if counted:
            # The limiter counts the provider's window itself now: only a wait the provider
            # named outright (Retry-After) pauses everyone, not the time until its window
            # is whole again (x-ratelimit-reset-*), which would idle the whole budget.
            pause = _named_wait(exc)
        else:
            pause = wait
        if self.limiter is not None and pause:
            # Everyone sharing the limit holds off, whether or not this call retries — for at
            # most the longer of max_delay and the limiter's window: a rate limit resets within
            # its window, so a longer wait (`retry-after: 1e300`, issue 9) is no rate limit the
            # limiter models, and must not stop it for years.
            ceiling = max(self._schedule.max_delay, self.limiter.window)
            _pause(self.limiter, min(pause, ceiling), exc)
        elapsed = time.monotonic() - started
        delay, reason = self._schedule.next(tries, elapsed, wait)
        if delay is None:
            _note(exc, f"crewthrottle: gave up after {tries} tries in {elapsed:.2f} s: {reason}")
            self._give_up(
                "gave_up", f"giving up after {tries} tries in {elapsed:.2f} s ({reason})", exc
            )
            return None
        if self.budget is not None and not self.budget.try_spend_retry():
            _note(exc, f"crewthrottle: retry budget spent, not retried (after {tries} tries)")
            self._give_up("refused", f"retry budget spent, not retrying after {tries} tries", exc)
            return None
        self._count("retried")
        logger.debug("%sretry %d in %.2f s after %r", _who(self.limiter), tries, delay, exc)
        if self.on_retry is not None:
            self.on_retry(tries, delay, exc)
        return delay

    def _count(self, event: str) -> None:
        if self.limiter is not None:
            self.limiter._count_retry(event)

    def _give_up(self, event: str, why: str, exc: BaseException) -> None:
        """Count and log (WARNING, once per call given up) why ``exc`` propagates."""
        self._count(event)
        name = self.limiter.name if self.limiter is not None else None
        logger.warning("%s%s: %r", _who(self.limiter), why, exc, extra={"limiter": name})

    def __repr__(self) -> str:
        s = self._schedule
        return (
            f"<crewthrottle.Backoff max_tries={s.max_tries} base={s.base} factor={s.factor} "
            f"max_delay={s.max_delay} max_time={s.max_time} jitter={s.jitter!r}>"
        )


def _tell_limiter(limiter: Limiter, exc: BaseException) -> bool:
    """Hand ``limiter`` what a rate-limit error says (issue 8): its response's rate-limit
    headers, then the 429 itself, which lowers the rates unless the headers explained it.
    Returns whether the headers gave figures for a limit ``limiter`` counts in its windows."""
    headers = response_headers(exc)
    if headers is not None:
        limiter.observe(headers, status=429)
    limiter._count_retry("rate_limited")
    parsed = parse_ratelimit_headers(headers)
    stats = limiter.stats()
    counts = (stats["effective_rpm"] is not None, stats["effective_tpm"] is not None)
    reported = (parsed.requests.used is not None, parsed.limiting_tokens.used is not None)
    return any(r and c for r, c in zip(reported, counts, strict=True))


def _named_wait(exc: BaseException) -> float | None:
    """The ``retry-after-ms``/``retry-after`` the exception's response carries, if any."""
    return parse_ratelimit_headers(response_headers(exc)).retry_after


def _who(limiter: Limiter | None) -> str:
    return "" if limiter is None else f"limiter {limiter.name or 'unnamed'!r}: "


def _pause(limiter: Limiter, seconds: float, exc: BaseException) -> None:
    """Pause ``limiter``, saying so once per pause: not when a pause was already in force."""
    if limiter.pause(seconds):
        limiter_logger.info(
            "%spaused for %.2f s: the provider asked to wait (%s)",
            _who(limiter),
            seconds,
            type(exc).__name__,
            extra={"limiter": limiter.name, "pause_seconds": seconds},
        )


#: ``backoff(...)`` builds a :class:`Backoff`: the name users call, as ``stamina.retry``.
backoff = Backoff


def _token_counter(tokens: Tokens, limiter: Limiter) -> Callable[..., int]:
    if callable(tokens):
        return tokens
    if isinstance(tokens, bool) or not isinstance(tokens, int):
        raise TypeError(
            f"tokens must be an int or a function of the call's arguments, got {tokens!r}"
        )
    # A size the limiter could never grant fails here, not at every call.
    most = limiter.tpm if limiter.tpm is not None else 2**64 - 1
    if not 0 <= tokens <= most:
        raise ValueError(f"tokens must be in [0, {most}] (the limiter's tpm), got {tokens}")
    return lambda *args, **kwargs: tokens


def throttle(
    limiter: Limiter, *, retry: Backoff | None = None, tokens: Tokens = 0
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a sync or async function so each attempt takes its own permit of ``limiter``.

    With ``retry`` (a :func:`backoff` policy), the permit is given back before every retry
    delay, so a retrying call never sits on a concurrency slot while it sleeps, and a
    provider's ``Retry-After`` pauses ``limiter`` for everyone. ``tokens`` is the request's
    size: an int from 0 to the limiter's ``tpm`` (``ValueError`` otherwise), a function
    of the call's arguments returning one, or :func:`crewthrottle.estimate` (sized from the
    call's messages, settled to its result's ``usage``, learned from).
    """
    if not isinstance(limiter, Limiter):
        raise TypeError(f"limiter must be a crewthrottle.Limiter, got {type(limiter).__name__}")
    if retry is not None and not isinstance(retry, Backoff):
        raise TypeError(f"retry must be a crewthrottle.backoff(...), got {type(retry).__name__}")
    policy = retry.with_limiter(limiter) if retry is not None and retry.limiter is None else retry
    from crewthrottle._estimated import Estimate, estimated  # (it imports this module)

    if isinstance(tokens, Estimate):
        wrap = functools.partial(estimated, limiter, tokens)
    else:
        wrap = functools.partial(_counted, limiter, _token_counter(tokens, limiter))

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        attempt: Callable[P, R] = wrap(function)
        return attempt if policy is None else policy(attempt)

    return decorate


def _counted(
    limiter: Limiter, count: Callable[..., int], function: Callable[P, R]
) -> Callable[P, R]:
    """``function`` taking a permit of ``count(*args, **kwargs)`` tokens for each call."""
    if is_async(function):

        @functools.wraps(function)
        async def attempt_async(*args: Any, **kwargs: Any) -> Any:
            async with await limiter.acquire_async(count(*args, **kwargs)):
                return await function(*args, **kwargs)

        return attempt_async  # type: ignore[return-value]

    @functools.wraps(function)
    def attempt_sync(*args: P.args, **kwargs: P.kwargs) -> R:
        with limiter.acquire(count(*args, **kwargs)):
            result = function(*args, **kwargs)
        refuse_awaitable(result, function)
        return result

    return attempt_sync
