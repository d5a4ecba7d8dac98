"""Type stubs for the native module ``crewthrottle._native`` (hand-written; checked by stubtest)."""

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar, final

from typing_extensions import Self, disjoint_base

from crewthrottle._types import (
    BudgetStats,
    LimiterSnapshot,
    LimiterStats,
    SemaphoreStats,
    WaitStats,
)

_F = TypeVar("_F", bound=Callable[..., Any])

__all__ = [
    "AcquireTimeout",
    "BackendUnavailable",
    "BoundedSemaphore",
    "Limiter",
    "LimitsConflict",
    "Permit",
    "RedisBackend",
    "RetryBudget",
    "Semaphore",
    "TokenBucket",
    "_Acquisition",
    "_Schedule",
    "_Waiting",
    "_after_fork_in_child",
    "_after_fork_in_parent",
    "_before_fork",
    "_limiter_snapshots",
]

class AcquireTimeout(TimeoutError):
    """No permit could be had before the timeout passed (a subclass of TimeoutError)."""

class BackendUnavailable(ConnectionError):
    """The store that keeps a shared limit (Redis) cannot be reached; the message names it and
    why (a subclass of ConnectionError)."""

class LimitsConflict(ValueError):
    """Another process set other limits for this shared budget (a subclass of ValueError)."""

@final
class RedisBackend:
    """A Redis server that keeps budgets shared by every process and host that names them:
    ``Limiter(..., name="openai/gpt-4o-mini", backend=RedisBackend(url))``.

    ``lease`` (seconds, 0.001 to 86400, default 30): a concurrency slot, or a place in the
    queue, of a process that stops renewing it (killed, hung) comes back within it; a live
    process renews its leases every ``lease / 3``. ``timeout`` (seconds, 0.001 to 86400,
    default 5): the longest a connection attempt or a command may take; an unreachable server
    raises ``BackendUnavailable`` within about it. ``prefix``: the first part of every key
    (``{prefix:name}:v1:...``). ``replace_limits``: these processes' limits replace the ones
    stored for a budget (by default the stored limits win, and a process given others gets
    ``LimitsConflict``). ``on_failure``: ``"raise"`` (default: an acquisition that cannot
    reach the server raises ``BackendUnavailable``) or ``"local"``: while it cannot, each
    process grants from an in-process limiter with ``local_share`` (in (0, 1], e.g. 1 / the
    number of processes) of each limit, tries the server again every ``max(timeout, 1)``
    seconds, and logs each switch once on the ``crewthrottle.limiter`` logger."""

    def __new__(
        cls,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        lease: float = 30.0,
        timeout: float = 5.0,
        prefix: str = "crewthrottle",
        replace_limits: bool = False,
        on_failure: str = "raise",
        local_share: float | None = None,
    ) -> Self: ...
    @property
    def url(self) -> str:
        """The server's URL."""
    @property
    def lease(self) -> float:
        """Seconds a grant or a waiter of a process that stopped renewing it survives."""
    @property
    def timeout(self) -> float:
        """The longest a connection attempt or a command may take, in seconds."""
    @property
    def prefix(self) -> str:
        """The first part of every key."""
    @property
    def replace_limits(self) -> bool:
        """Whether these limits replace the ones stored for a budget."""
    @property
    def on_failure(self) -> str:
        """``"raise"`` or ``"local"`` (fall back to an in-process limiter)."""
    @property
    def local_share(self) -> float | None:
        """The share of each limit a process uses alone while the server cannot be reached."""

@disjoint_base
class Semaphore:
    """A counting semaphore, a drop-in for ``threading.Semaphore``, that also serves any
    number of event loops (``async with``, ``acquire_async``). Waiters are served in order.

    Takes every argument ``threading.Semaphore`` takes, with the same meaning: ``value`` and
    ``n`` are ints (``bool`` and ``__index__`` integers included), a ``timeout`` of zero or
    less does not wait, ``blocking`` is read for truth. It is set up by ``__init__``, so a
    subclass may take arguments of its own and call ``super().__init__(value)``. Differences
    (see the README): a float ``value`` or ``n`` is a ``TypeError`` (threading's fractional
    counts never block); a NaN timeout is a ``ValueError`` (threading spins on it); a
    timeout too large for ``threading`` (``OverflowError``) waits forever; counts are at most
    ``2**64 - 1`` (``ValueError`` beyond, also for a release that would pass it)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Self: ...
    def __init__(self, value: int = 1) -> None:
        """Set the value (``value >= 0``), as threading's ``__init__`` does."""
    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take a permit, waiting with the GIL released; False if ``timeout`` seconds pass
        (None or infinity: wait forever; zero or less: do not wait)."""
    def acquire_async(self, timeout: float | None = None) -> Awaitable[bool]:
        """Await a permit without blocking the loop; False if ``timeout`` seconds pass
        (None or infinity: wait forever; zero or less: do not wait)."""
    def release(self, n: int = 1) -> None:
        """Give back ``n >= 1`` permits."""
    def stats(self) -> SemaphoreStats:
        """Counters: waiting, acquired, timeouts, cancelled, total/max wait (seconds), value."""
    def __enter__(self) -> bool: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    def __aenter__(self) -> Awaitable[bool]: ...
    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]: ...

class BoundedSemaphore(Semaphore):
    """A semaphore that raises ``ValueError`` if released above its initial value."""

    def __new__(cls, value: int = 1) -> Self: ...

@final
class TokenBucket:
    """A GCRA token bucket: ``rate`` tokens every ``per`` seconds, at most ``burst`` at once
    (default: ``rate`` rounded down, at least 1). Waiters are served in order, so a large
    request is not starved by small ones.

    Ranges (``ValueError`` naming the argument outside them; ``TypeError`` for a bool or a
    non-number): ``rate`` finite and ``> 0``; ``0 < per <= 1e9`` seconds; ``1 <= burst <=
    2**32 - 1``; at most one token per nanosecond (``per / rate >= 1e-9``); a full burst
    refilled within 1e9 seconds (``per / rate * burst <= 1e9``). ``n``: ``1 <= n <= burst``.
    ``timeout``: None or seconds ``>= 0`` (infinity, or one too long to represent, waits
    forever)."""

    def __new__(cls, rate: float, per: float = 1.0, burst: int | None = None) -> Self: ...
    @property
    def rate(self) -> float: ...
    @property
    def per(self) -> float: ...
    @property
    def burst(self) -> int: ...
    def acquire(self, n: int = 1, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take ``n`` tokens, waiting with the GIL released unless ``blocking`` is False."""
    def try_acquire(self, n: int = 1) -> bool:
        """Take ``n`` tokens if available now and nobody is waiting."""
    def acquire_async(self, n: int = 1, timeout: float | None = None) -> Awaitable[bool]:
        """Await ``n`` tokens; False if ``timeout`` seconds pass first."""
    def pause(self, seconds: float) -> None:
        """Grant nothing for ``seconds`` (``0 <= seconds <= 1e9``; a longer pause wins over
        a shorter one)."""
    def stats(self) -> WaitStats: ...

@final
class Permit:
    """One granted request of a ``Limiter``: a concurrency slot plus reserved tokens.

    Released exactly once: by ``release()``, on leaving its ``with`` block, or when
    garbage-collected."""

    @property
    def tokens(self) -> int:
        """Tokens charged for this request (reserved, or as settled)."""
    @property
    def released(self) -> bool: ...
    @property
    def server_time(self) -> float | None:
        """When a shared budget granted this permit, on the Redis server's clock (seconds since
        the Unix epoch); ``None`` for an in-process limiter."""
    def release(self) -> None:
        """Give the concurrency slot back (idempotent; the tokens stay spent)."""
    def settle(self, actual_tokens: int) -> None:
        """Correct the charged tokens to the real usage: refund the difference or charge the
        excess."""
    def __enter__(self) -> Permit: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    def __aenter__(self) -> Awaitable[Permit]: ...
    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]: ...

@final
class Limiter:
    """One limit shared by every thread and event loop of the process — or, with
    ``backend=RedisBackend(url)`` and a ``name``, by every process and host that names it.

    ``max_concurrent`` permits out at once; never more than ``rpm`` requests nor ``tpm``
    tokens started in any window of ``window`` seconds (default 60), requests spread evenly
    with at most ``burst`` back to back (default: about one second's share of ``rpm``).
    Each start stays counted for ``window + margin`` seconds (default margin ``window / 200``,
    at least 50 ms, at most ``window / 10``), covering the jitter between a permit's grant and
    the provider counting the request.
    Waiters are served first come, first served, with the GIL released.

    Ranges (``ValueError`` naming the argument outside them; ``TypeError`` for a bool or a
    non-int count): ``max_concurrent``, ``rpm``, ``tpm``: None or ``1 <= n <= 2**53``, and
    ``rpm`` at most one request per nanosecond of ``window``; ``0 < window <= 1e9`` seconds;
    ``burst``: ``1 <= burst <= min(rpm, 2**32 - 1)``, only with ``rpm``;
    ``0 <= margin <= window``. ``tokens``: ``0 <= tokens <= tpm`` (``2**64 - 1`` without
    ``tpm``). ``timeout``: None or seconds ``>= 0`` (infinity, or one too long to represent,
    waits forever)."""

    def __new__(
        cls,
        *,
        max_concurrent: int | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        window: float = 60.0,
        burst: int | None = None,
        margin: float | None = None,
        name: str | None = None,
        backend: RedisBackend | None = None,
    ) -> Self: ...
    @property
    def name(self) -> str | None: ...
    @property
    def backend(self) -> RedisBackend | None:
        """The backend keeping the budget (``None``: this process)."""
    @property
    def max_concurrent(self) -> int | None: ...
    @property
    def rpm(self) -> int | None: ...
    @property
    def tpm(self) -> int | None: ...
    @property
    def window(self) -> float: ...
    @property
    def burst(self) -> int | None: ...
    @property
    def margin(self) -> float:
        """Extra seconds each start stays counted (default ``window / 200``, at least 0.05)."""
    def acquire(self, tokens: int = 0, *, timeout: float | None = None) -> Permit:
        """Wait for a permit for ``tokens`` tokens; ``AcquireTimeout`` after ``timeout`` s."""
    def try_acquire(self, tokens: int = 0) -> Permit | None:
        """A permit if one can be had now without waiting, else None."""
    def acquire_async(self, tokens: int = 0, *, timeout: float | None = None) -> Awaitable[Permit]:
        """Await a permit without blocking the event loop."""
    def pause(self, seconds: float) -> bool:
        """Grant no new permit for ``seconds`` (a provider said Retry-After), at most 1e9
        (about 31 years; ``ValueError`` beyond). A longer pause wins over a shorter one.
        Returns whether this started a pause (none was in force)."""
    def resume(self) -> None:
        """Lift a pause at once, whoever set it (``pause()`` or ``backoff``'s Retry-After);
        the other limits still hold."""
    def as_langchain(self) -> Any:
        """This limiter as a LangChain ``BaseRateLimiter`` (``crewthrottle[langchain]``)."""
    def stats(self) -> LimiterStats:
        """Live figures (see ``LimiterStats``); times in seconds."""
    def _snapshot(self) -> LimiterSnapshot:
        """What ``_limiter_snapshots()`` gives for this limiter."""
    def _count_retry(self, event: str) -> None:
        """Count a retry layer's event: "retried", "gave_up", "refused" or "rate_limited"."""
    def __enter__(self) -> None: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    def __aenter__(self) -> Awaitable[None]: ...
    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]: ...
    def __call__(self, function: _F) -> _F:
        """Decorate a sync or async function so each call holds a permit."""
    def __copy__(self) -> Limiter: ...
    def __deepcopy__(self, memo: Any) -> Limiter: ...

@final
class RetryBudget:
    """Retries allowed only up to ``ratio`` of the first attempts of the last ``window``
    seconds, plus ``min_retries_per_s``; shared by every thread and task (as gRPC's retry
    throttling and Finagle's RetryBudget), so retries cannot amplify a storm.

    Ranges (``ValueError`` naming the argument outside them; ``TypeError`` for a bool or a
    non-number): ``0 <= ratio <= 1000``; ``min_retries_per_s`` finite and ``>= 0`` (the
    allowance saturates, it never wraps); ``1e-9 <= window <= 1e9`` seconds."""

    def __new__(
        cls, ratio: float = 0.2, min_retries_per_s: float = 1.0, window: float = 10.0
    ) -> Self: ...
    @property
    def available(self) -> int:
        """Retries the budget would allow right now."""
    @property
    def ratio(self) -> float: ...
    @property
    def min_retries_per_s(self) -> float: ...
    @property
    def window(self) -> float: ...
    def record_call(self) -> None:
        """Record a first attempt."""
    def try_spend_retry(self) -> bool:
        """Spend one retry if allowed; False means: do not retry."""
    def stats(self) -> BudgetStats:
        """Totals: calls, retries, refused."""
    def __copy__(self) -> RetryBudget: ...
    def __deepcopy__(self, memo: Any) -> RetryBudget: ...

@final
class _Schedule:
    def __new__(
        cls,
        *,
        max_tries: int,
        base: float,
        factor: float,
        max_delay: float,
        max_time: float | None,
        jitter: str,
        seed: int | None = None,
    ) -> Self: ...
    def next(
        self, tries: int, elapsed: float, retry_after: float | None = None
    ) -> tuple[float | None, str | None]: ...
    @property
    def max_tries(self) -> int: ...
    @property
    def base(self) -> float: ...
    @property
    def factor(self) -> float: ...
    @property
    def max_delay(self) -> float: ...
    @property
    def max_time(self) -> float | None: ...
    @property
    def jitter(self) -> str: ...

@final
class _Waiting:
    def poll(self, event_loop: Any, future: Any) -> tuple[bool, Any]: ...
    def abandon(self, *, timed_out: bool) -> Any: ...

@final
class _Acquisition:
    def start(self) -> tuple[bool, Any]: ...

def _limiter_snapshots() -> list[LimiterSnapshot]:
    """One snapshot per live ``Limiter``: ``stats()`` plus its configuration and cumulative
    wait-time buckets. Never waits for the lock that acquire and release take."""

def _before_fork() -> None: ...
def _after_fork_in_parent() -> None: ...
def _after_fork_in_child() -> None: ...
