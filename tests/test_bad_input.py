"""Bad input gets a clear `ValueError`/`TypeError` naming the argument (issue 2, item 7).

Never a hang, never a panic, never a limit silently dropped: a wrong type is a `TypeError`, a
wrong value of the right type a `ValueError`, and the message names the argument. Calls
that could block run under `promptly`, which fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from typing import Any

import pytest

import crewthrottle as ct

NAN, INF = math.nan, math.inf
HUGE = 2**70

#: Values of a count (an `int >= 1`) of the wrong type, and of the right type but out of range.
COUNT_WRONG_TYPE = [1.5, "3", True, NAN, [3]]
COUNT_WRONG_VALUE = [0, -1, HUGE]


def named(name: str) -> str:
    """A `match=` pattern for a message that names `name` as a word."""
    return rf"\b{name}\b"


# -- Limiter construction --------------------------------------------------------------------


@pytest.mark.parametrize("arg", ["max_concurrent", "rpm", "tpm"])
@pytest.mark.parametrize("value", COUNT_WRONG_VALUE)
def test_limiter_count_out_of_range_is_a_value_error(arg: str, value: int) -> None:
    with pytest.raises(ValueError, match=named(arg)):
        ct.Limiter(**{arg: value})


@pytest.mark.parametrize("arg", ["max_concurrent", "rpm", "tpm"])
@pytest.mark.parametrize("value", COUNT_WRONG_TYPE, ids=repr)
def test_limiter_count_of_the_wrong_type_is_a_type_error(arg: str, value: object) -> None:
    with pytest.raises(TypeError, match=named(arg)):
        ct.Limiter(**{arg: value})


@pytest.mark.parametrize("value", [0, -1, 0.0, -0.5, NAN, INF, -INF])
def test_limiter_window_out_of_range_is_a_value_error(value: float) -> None:
    with pytest.raises(ValueError, match=named("window")):
        ct.Limiter(rpm=10, window=value)


@pytest.mark.parametrize("value", ["60", True, [60]], ids=repr)
def test_limiter_window_of_the_wrong_type_is_a_type_error(value: object) -> None:
    with pytest.raises(TypeError, match=named("window")):
        ct.Limiter(rpm=10, window=value)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"rpm": 10, "burst": 0}, ValueError),
        ({"rpm": 10, "burst": -1}, ValueError),
        ({"rpm": 10, "burst": 11}, ValueError),
        ({"rpm": 10, "burst": HUGE}, ValueError),
        ({"burst": 1}, ValueError),
        ({"max_concurrent": 2, "tpm": 100, "burst": 1}, ValueError),
        ({"rpm": 10, "burst": 1.5}, TypeError),
        ({"rpm": 10, "burst": "2"}, TypeError),
    ],
    ids=["zero", "negative", "over-rpm", "huge", "alone", "without-rpm", "float", "str"],
)
def test_limiter_bad_burst(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error, match=named("burst")):
        ct.Limiter(**kwargs)


def test_limiter_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        ct.Limiter(10)  # type: ignore[misc]


# -- Limiter calls ---------------------------------------------------------------------------


def limiter_calls(limiter: Any) -> dict[str, Callable[..., Any]]:
    """The calls that take `tokens`, each raising (or not) at the call itself."""
    return {
        "acquire": lambda tokens: limiter.acquire(tokens),
        "acquire-timeout": lambda tokens: limiter.acquire(tokens, timeout=None),
        "try_acquire": lambda tokens: limiter.try_acquire(tokens),
        # Not awaited: the error must come from the call, not after an await that never ends.
        "acquire_async": lambda tokens: limiter.acquire_async(tokens),
    }


CALLS = ["acquire", "acquire-timeout", "try_acquire", "acquire_async"]


@pytest.mark.parametrize("call", CALLS)
def test_tokens_above_tpm_fail_at_the_call_even_when_busy(call: str, promptly: Any) -> None:
    limiter = ct.Limiter(max_concurrent=1, tpm=100)
    held = limiter.acquire(100)  # nothing could be granted now, whatever the request
    with pytest.raises(ValueError, match=named("tokens")):
        promptly(lambda: limiter_calls(limiter)[call](101))
    held.release()
    assert limiter.stats()["waiting"] == 0
    assert limiter.stats()["in_flight"] == 0


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize(
    ("tokens", "error"),
    [(-1, ValueError), (HUGE, ValueError), (1.5, TypeError), ("3", TypeError), (True, TypeError)],
    ids=repr,
)
def test_bad_tokens(call: str, tokens: object, error: type[Exception], promptly: Any) -> None:
    limiter = ct.Limiter(max_concurrent=1, tpm=100)
    with pytest.raises(error, match=named("tokens")):
        promptly(lambda: limiter_calls(limiter)[call](tokens))
    assert limiter.stats()["in_flight"] == 0


@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        (-1, ValueError),
        (-0.001, ValueError),
        (NAN, ValueError),
        (-INF, ValueError),
        ("1", TypeError),
        (True, TypeError),
        ([1], TypeError),
    ],
    ids=repr,
)
def test_bad_timeout(timeout: object, error: type[Exception], promptly: Any) -> None:
    limiter = ct.Limiter(max_concurrent=1)
    semaphore = ct.Semaphore(0)
    bucket = ct.TokenBucket(1, per=100.0, burst=1)
    assert bucket.try_acquire()
    calls = [
        lambda: limiter.acquire(timeout=timeout),
        lambda: limiter.acquire_async(timeout=timeout),
        lambda: bucket.acquire(timeout=timeout),
        lambda: bucket.acquire_async(timeout=timeout),
    ]
    # A semaphore takes what threading's does: a timeout <= 0 means "don't wait", a bool is
    # an int (tests/test_semaphore_threading_parity.py); it refuses the rest alike.
    if not (isinstance(timeout, bool) or (isinstance(timeout, float | int) and timeout < 0)):
        calls += [
            lambda: semaphore.acquire(timeout=timeout),
            lambda: semaphore.acquire_async(timeout=timeout),
        ]
    for call in calls:
        with pytest.raises(error, match=named("timeout")):
            promptly(call)


def blocked(kind: str) -> tuple[Any, Callable[[], bool], Callable[[], Any]]:
    """A primitive whose `acquire` must wait, whether it is queued, and what frees it."""
    if kind == "limiter":
        limiter = ct.Limiter(max_concurrent=1)
        held = limiter.acquire()
        return limiter, lambda: limiter.stats()["waiting"] > 0, held.release
    if kind == "semaphore":
        semaphore = ct.Semaphore(0)
        return semaphore, lambda: semaphore.stats()["waiting"] > 0, semaphore.release
    bucket = ct.TokenBucket(20, burst=1)
    assert bucket.try_acquire()  # the next token comes in 50 ms by itself
    return bucket, lambda: True, lambda: None


@pytest.mark.parametrize("kind", ["limiter", "semaphore", "bucket"])
def test_a_huge_timeout_waits_instead_of_panicking(kind: str, promptly: Any) -> None:
    """A finite timeout beyond what a Duration holds (1e300 s) is a long wait, or a clear
    ValueError naming `timeout`: never a Rust panic (`PanicException`, a `BaseException`),
    which also left its ticket queued and so wedged the primitive for good."""
    primitive, queued, free = blocked(kind)
    stop = threading.Event()

    def free_once_queued() -> None:
        while not queued():
            if stop.wait(0.002):
                return
        free()

    releaser = threading.Thread(target=free_once_queued, daemon=True)
    releaser.start()
    try:
        assert promptly(lambda: primitive.acquire(timeout=1e300))
    except ValueError as exc:
        assert "timeout" in str(exc)
    finally:
        stop.set()
        releaser.join(10)
    assert primitive.stats()["waiting"] == 0, "a waiter was left behind in the queue"


def test_a_huge_async_timeout_waits_instead_of_panicking() -> None:
    bucket = ct.TokenBucket(20, burst=1)
    assert bucket.try_acquire()

    async def main() -> None:
        try:
            acquisition = bucket.acquire_async(timeout=1e300)
        except ValueError as exc:
            assert "timeout" in str(exc)
        else:
            assert await asyncio.wait_for(acquisition, 10) is True

    asyncio.run(main())


def test_timeout_with_blocking_false_names_timeout() -> None:
    for call in (
        lambda: ct.Semaphore(1).acquire(False, timeout=1),
        lambda: ct.BoundedSemaphore(1).acquire(blocking=False, timeout=0),
        lambda: ct.TokenBucket(5).acquire(blocking=False, timeout=1),
    ):
        with pytest.raises(ValueError, match=named("timeout")):
            call()


@pytest.mark.parametrize(
    ("actual", "error"),
    [(-1, ValueError), (HUGE, ValueError), (1.5, TypeError), ("3", TypeError), (None, TypeError)],
    ids=repr,
)
def test_bad_settle(actual: object, error: type[Exception]) -> None:
    limiter = ct.Limiter(tpm=100)
    permit = limiter.acquire(10)
    with pytest.raises(error, match=named("actual_tokens")):
        permit.settle(actual)
    assert permit.tokens == 10, "a refused settle changes nothing"
    permit.release()


@pytest.mark.parametrize(
    ("seconds", "error"),
    [(-1, ValueError), (NAN, ValueError), (INF, ValueError), ("1", TypeError), (None, TypeError)],
    ids=repr,
)
def test_bad_pause(seconds: object, error: type[Exception]) -> None:
    for target in (ct.Limiter(rpm=10), ct.TokenBucket(10)):
        with pytest.raises(error, match=named("seconds")):
            target.pause(seconds)
    assert ct.Limiter(rpm=10).try_acquire() is not None


@pytest.mark.parametrize("seconds", [1e11, 1e300])
@pytest.mark.parametrize("kind", ["limiter", "bucket"])
def test_a_huge_pause_pauses_or_is_refused_never_ignored(kind: str, seconds: float) -> None:
    """pause(1e11) (3000 years) must stop grants or raise ValueError: silently granting
    (an overflow of `now + seconds`) would break the provider's Retry-After."""
    target: Any = ct.Limiter(rpm=10) if kind == "limiter" else ct.TokenBucket(10)
    try:
        target.pause(seconds)
    except ValueError as exc:
        assert "seconds" in str(exc)
        return
    granted = target.try_acquire()
    assert not granted, f"{target!r} granted during pause({seconds})"


# -- Semaphore -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ct.Semaphore, ct.BoundedSemaphore])
def test_semaphore_bad_value(cls: Any) -> None:
    with pytest.raises(ValueError, match=named("value")):
        cls(-1)
    for wrong in ("1", 1.5, [1]):
        with pytest.raises(TypeError, match=named("value")):
            cls(wrong)


@pytest.mark.parametrize("cls", [ct.Semaphore, ct.BoundedSemaphore])
def test_semaphore_value_too_large_says_so(cls: Any) -> None:
    """2**70 is not negative: the error must not claim it is (or it must be accepted)."""
    try:
        sem = cls(HUGE)
    except ValueError as exc:
        assert "value" in str(exc)
        assert ">= 0" not in str(exc), f"misleading message for {HUGE}: {exc}"
    else:
        assert f"value={HUGE}" in repr(sem)


@pytest.mark.parametrize("cls", [ct.Semaphore, ct.BoundedSemaphore])
def test_semaphore_bad_release(cls: Any) -> None:
    sem = cls(1)
    assert sem.acquire()
    for n in (0, -1):
        with pytest.raises(ValueError, match=named("n")):
            sem.release(n)
    for wrong in ("1", 1.5, [1]):
        with pytest.raises(TypeError, match=named("n")):
            sem.release(wrong)
    assert sem.stats()["value"] == 0


def test_semaphore_release_too_large_says_so() -> None:
    """release(2**64) is not "fewer than one": a ValueError that says what is wrong."""
    sem = ct.Semaphore(1)
    with pytest.raises(ValueError, match=named("n")) as info:
        sem.release(2**64)
    assert "one or more" not in str(info.value), f"misleading message: {info.value}"
    assert sem.stats()["value"] == 1


def test_bounded_over_release_is_a_value_error() -> None:
    sem = ct.BoundedSemaphore(2)
    with pytest.raises(ValueError, match="released too many times"):
        sem.release()
    assert sem.stats()["value"] == 2


# -- TokenBucket -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name", "error"),
    [
        ({"rate": 0}, "rate", ValueError),
        ({"rate": -1}, "rate", ValueError),
        ({"rate": NAN}, "rate", ValueError),
        ({"rate": INF}, "rate", ValueError),
        ({"rate": "x"}, "rate", TypeError),
        ({"rate": True}, "rate", TypeError),
        ({"rate": None}, "rate", TypeError),
        ({"rate": 1, "per": 0}, "per", ValueError),
        ({"rate": 1, "per": -1}, "per", ValueError),
        ({"rate": 1, "per": NAN}, "per", ValueError),
        ({"rate": 1, "per": INF}, "per", ValueError),
        ({"rate": 1, "per": "1"}, "per", TypeError),
        ({"rate": 1, "burst": 0}, "burst", ValueError),
        ({"rate": 1, "burst": -1}, "burst", ValueError),
        ({"rate": 1, "burst": HUGE}, "burst", ValueError),
        ({"rate": 1, "burst": 1.5}, "burst", TypeError),
        ({"rate": 1, "burst": "2"}, "burst", TypeError),
    ],
    ids=lambda v: repr(v) if not isinstance(v, type) else v.__name__,
)
def test_token_bucket_bad_construction(
    kwargs: dict[str, Any], name: str, error: type[Exception]
) -> None:
    with pytest.raises(error, match=named(name)):
        ct.TokenBucket(**kwargs)


def test_token_bucket_rate_too_high_names_rate() -> None:
    with pytest.raises(ValueError, match=named("rate")):
        ct.TokenBucket(1e12, burst=1)


@pytest.mark.parametrize(
    ("rate", "per", "burst"),
    [(1, 1e12, 1), (1e-12, 1.0, 1), (1, 1e300, 1), (1, 2e9, 10)],
    ids=["per-1e12", "rate-1e-12", "per-1e300", "per-2e9-burst-10"],
)
def test_a_very_slow_bucket_limits_or_is_refused_never_unlimited(
    rate: float, per: float, burst: int
) -> None:
    """One token every 1e12 s (or 2e9 s with a burst of 10): grant the burst, then nothing,
    or refuse the configuration. An overflow that grants everything is a dropped limit."""
    try:
        bucket = ct.TokenBucket(rate, per=per, burst=burst)
    except ValueError as exc:
        assert "rate" in str(exc) or "per" in str(exc) or "burst" in str(exc)
        return
    granted = [bucket.try_acquire() for _ in range(burst + 2)]
    assert granted == [True] * burst + [False, False]


@pytest.mark.parametrize("call", ["acquire", "nonblocking", "try_acquire", "acquire_async"])
@pytest.mark.parametrize(
    ("n", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (6, ValueError),
        (HUGE, ValueError),
        (1.5, TypeError),
        ("1", TypeError),
        (True, TypeError),
    ],
    ids=repr,
)
def test_token_bucket_bad_n(call: str, n: object, error: type[Exception], promptly: Any) -> None:
    bucket = ct.TokenBucket(20, burst=5)
    calls = {
        "acquire": lambda: bucket.acquire(n),
        "nonblocking": lambda: bucket.acquire(n, blocking=False),
        "try_acquire": lambda: bucket.try_acquire(n),
        "acquire_async": lambda: bucket.acquire_async(n),
    }
    with pytest.raises(error, match=named("n")):
        promptly(calls[call])
    assert bucket.try_acquire(5), "a refused request took nothing"


def test_an_async_refusal_leaves_nothing_to_await() -> None:
    """Bad input raises from `acquire_async(...)` itself: no coroutine is left un-awaited."""
    bucket = ct.TokenBucket(20, burst=5)

    async def main() -> None:
        with pytest.raises(ValueError, match=named("n")):
            await bucket.acquire_async(6)

    asyncio.run(main())
