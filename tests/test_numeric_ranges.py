"""Every numeric input of the public API has a stated range (issue 9, item 4).

Within it, the call works and nothing overflows or wraps; outside it, a ValueError (or a
TypeError for the wrong type) names the argument — never a Rust panic (`PanicException`, a
`BaseException`), an `OverflowError`, or an error deferred to the first retry. Hypothesis
throws extreme floats and ints at every constructor and at the calls that take numbers.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crewthrottle as ct

#: The longest span any argument may name (the core's MAX_SPAN_SECS): about 31 years.
MAX_SPAN = 1e9

EXTREME_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 5e-324, 1e-300, 1e9, 1e9 * (1 + 2**-52), 1.8e10, 1e20, 1e300]),
)
EXTREME_INTS = st.one_of(
    st.integers(),
    st.sampled_from([0, 1, 2**31, 2**32, 2**53, 2**53 + 1, 2**63, 2**64 - 1, 2**64, 2**200]),
    st.integers(min_value=-(2**70), max_value=2**70),
)
NUMBERS = st.one_of(EXTREME_FLOATS, EXTREME_INTS)
MAYBE = st.one_of(st.none(), NUMBERS)

settings.register_profile(
    "numeric-ranges", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def refused_by_name(call: Callable[[], Any], names: tuple[str, ...]) -> Any:
    """`call()`'s result, or None if it raised a ValueError/TypeError naming one of `names`.

    Any other exception — a panic, an OverflowError — fails the test.
    """
    try:
        return call()
    except (ValueError, TypeError) as exc:
        assert any(name in str(exc) for name in names), f"{exc!r} names none of {names}"
        return None
    except BaseException as exc:  # PanicException derives from BaseException
        pytest.fail(f"{call} raised {type(exc).__name__}: {exc}")


# -- RetryBudget -----------------------------------------------------------------------------


@pytest.mark.parametrize("window", [1e10, 1e20, 1e300, 2**64, 10**30])
def test_retry_budget_window_beyond_the_range_is_a_value_error(window: float) -> None:
    """`RetryBudget(window=1e20)` raised PanicException (Duration::from_secs_f64 overflow)."""
    with pytest.raises(ValueError, match="window"):
        ct.RetryBudget(window=window)


def test_retry_budget_accepts_its_whole_stated_range() -> None:
    budget = ct.RetryBudget(ratio=1000, min_retries_per_s=1e300, window=MAX_SPAN)
    budget.record_call()
    assert budget.try_spend_retry()
    assert budget.available > 0
    tiny = ct.RetryBudget(ratio=0, min_retries_per_s=0, window=1e-9)
    with pytest.raises(ValueError, match="window"):
        ct.RetryBudget(window=5e-324)  # below a nanosecond
    assert not tiny.try_spend_retry()


@settings(settings.get_profile("numeric-ranges"))
@given(ratio=MAYBE, floor=MAYBE, window=MAYBE)
def test_retry_budget_never_panics_or_overflows(ratio: Any, floor: Any, window: Any) -> None:
    kwargs = {
        k: v
        for k, v in {"ratio": ratio, "min_retries_per_s": floor, "window": window}.items()
        if v is not None
    }
    budget = refused_by_name(lambda: ct.RetryBudget(**kwargs), tuple(kwargs))
    if budget is None:
        return
    for _ in range(3):
        budget.record_call()
    spent = sum(budget.try_spend_retry() for _ in range(3))
    assert 0 <= budget.available <= 2**64 - 1
    assert budget.stats() == {"calls": 3, "retries": spent, "refused": 3 - spent}


# -- backoff ---------------------------------------------------------------------------------


def test_backoff_refuses_a_delay_time_sleep_cannot_take() -> None:
    """`backoff(base=1e300, max_delay=1e300)` was accepted, then `time.sleep` raised
    OverflowError on the first retry, hiding the provider's error."""
    with pytest.raises(ValueError, match="max_delay"):
        ct.backoff(base=1e300, max_delay=1e300)


def test_the_longest_accepted_delay_is_one_time_sleep_takes() -> None:
    policy = ct.backoff(base=1e300, factor=1e300, max_delay=MAX_SPAN, jitter="none")
    delay, reason = policy._schedule.next(1, 0.0, None)
    assert delay == MAX_SPAN and reason is None
    with pytest.raises(ValueError, match="negative"):  # accepted by sleep, unlike OverflowError
        time.sleep(-delay)


@pytest.mark.parametrize("seed", [-1, 2**64, 2**70])
def test_a_seed_out_of_range_is_a_value_error_not_an_overflow(seed: int) -> None:
    with pytest.raises(ValueError, match="seed"):
        ct.backoff(seed=seed)


@settings(settings.get_profile("numeric-ranges"))
@given(
    max_tries=st.one_of(EXTREME_INTS, st.just(4)),
    base=NUMBERS,
    factor=NUMBERS,
    max_delay=NUMBERS,
    max_time=MAYBE,
    seed=st.one_of(st.none(), EXTREME_INTS),
    retry_after=st.one_of(st.none(), EXTREME_FLOATS),
)
def test_every_delay_backoff_accepts_can_be_slept(
    max_tries: Any,
    base: Any,
    factor: Any,
    max_delay: Any,
    max_time: Any,
    seed: Any,
    retry_after: Any,
) -> None:
    """Whatever backoff accepts, each delay it asks for is finite, >= 0, at most max_delay
    (or the provider's wait, itself at most max_delay), and so accepted by time.sleep."""
    args = {"max_tries": max_tries, "base": base, "factor": factor, "max_delay": max_delay}
    args |= {"max_time": max_time, "seed": seed}
    policy = refused_by_name(lambda: ct.backoff(**args), (*args, "jitter"))
    if policy is None:
        return
    for tries in (1, 2, 64, 2**31):
        for elapsed in (0.0, 1e300):
            delay, reason = policy._schedule.next(min(tries, 2**32 - 1), elapsed, retry_after)
            if delay is None:
                assert reason
                continue
            assert math.isfinite(delay) and 0 <= delay <= MAX_SPAN
            assert delay <= max(max_delay, 0)


# -- TokenBucket, Limiter, Semaphore ---------------------------------------------------------


@settings(settings.get_profile("numeric-ranges"))
@given(rate=NUMBERS, per=MAYBE, burst=st.one_of(st.none(), EXTREME_INTS))
def test_token_bucket_never_panics_or_overflows(rate: Any, per: Any, burst: Any) -> None:
    kwargs = {"per": per, "burst": burst}
    bucket = refused_by_name(
        lambda: ct.TokenBucket(rate, **{k: v for k, v in kwargs.items() if v is not None}),
        ("rate", "per", "burst"),
    )
    if bucket is None:
        return
    assert bucket.try_acquire(bucket.burst)
    assert bucket.acquire(1, timeout=0) in (True, False)
    refused_by_name(lambda: bucket.pause(rate), ("seconds",))
    assert bucket.stats()["acquired"] >= 1


def test_token_bucket_too_fast_for_a_default_burst_names_rate_not_burst() -> None:
    """`rate=5e9, per=10` has a representable interval, but its default burst (5e9 tokens)
    does not fit: the message must name `rate` (the argument given), not `burst`."""
    with pytest.raises(ValueError, match=r"^rate") as info:
        ct.TokenBucket(5e9, per=10.0)
    assert "burst=" in str(info.value)


@settings(settings.get_profile("numeric-ranges"))
@given(
    max_concurrent=st.one_of(st.none(), EXTREME_INTS),
    rpm=st.one_of(st.none(), EXTREME_INTS),
    tpm=st.one_of(st.none(), EXTREME_INTS),
    window=MAYBE,
    burst=st.one_of(st.none(), EXTREME_INTS),
    margin=MAYBE,
    tokens=EXTREME_INTS,
)
def test_limiter_never_panics_or_overflows(
    max_concurrent: Any, rpm: Any, tpm: Any, window: Any, burst: Any, margin: Any, tokens: Any
) -> None:
    kwargs = {
        "max_concurrent": max_concurrent,
        "rpm": rpm,
        "tpm": tpm,
        "window": window,
        "burst": burst,
        "margin": margin,
    }
    limiter = refused_by_name(lambda: ct.Limiter(**kwargs), tuple(kwargs))
    if limiter is None:
        return
    permit = refused_by_name(lambda: limiter.try_acquire(tokens), ("tokens",))
    if permit is not None:
        refused_by_name(lambda: permit.settle(tokens), ("actual_tokens",))
        permit.release()
    assert limiter.stats()["in_flight"] == 0


@pytest.mark.parametrize("seconds", [MAX_SPAN * 1.000001, 1e11, 1e300, 2**64])
@pytest.mark.parametrize("kind", ["limiter", "bucket"])
def test_a_pause_beyond_the_longest_span_is_a_value_error(kind: str, seconds: float) -> None:
    """pause(1e300) saturated silently to ~584 years; now a stated range, ValueError beyond."""
    target: Any = ct.Limiter(rpm=10) if kind == "limiter" else ct.TokenBucket(10)
    with pytest.raises(ValueError, match="seconds"):
        target.pause(seconds)
    assert target.try_acquire(), "a refused pause paused nothing"


@pytest.mark.parametrize("kind", ["limiter", "bucket"])
def test_the_longest_pause_holds(kind: str) -> None:
    target: Any = ct.Limiter(rpm=10) if kind == "limiter" else ct.TokenBucket(10)
    target.pause(MAX_SPAN)
    assert not target.try_acquire()


@settings(settings.get_profile("numeric-ranges"))
@given(value=st.one_of(EXTREME_INTS, st.booleans()), n=st.one_of(EXTREME_INTS, st.booleans()))
def test_semaphore_counts_never_wrap(value: Any, n: Any) -> None:
    for cls in (ct.Semaphore, ct.BoundedSemaphore):
        sem = refused_by_name(lambda c=cls: c(value), ("value",))
        if sem is None:
            continue
        before = sem.stats()["value"]
        refused_by_name(lambda s=sem: s.release(n), ("n", "released too many times"))
        after = sem.stats()["value"]
        assert after in (before, before + n), "a release changed the value by another amount"


@settings(settings.get_profile("numeric-ranges"))
@given(timeout=st.one_of(st.none(), NUMBERS, st.booleans()))
def test_semaphore_timeouts_never_panic(timeout: Any) -> None:
    sem = ct.Semaphore(1)
    assert refused_by_name(lambda: sem.acquire(timeout=timeout), ("timeout",)) in (True, None)
    if math.isnan(float(timeout or 0)):
        return
    # The value is now 0: only a timeout <= 0 returns at once (others would wait).
    if timeout is not None and timeout <= 0:
        assert sem.acquire(timeout=timeout) is False

    async def main() -> Any:
        sem.release()
        return await sem.acquire_async(timeout=timeout)

    assert asyncio.run(main()) is True


def test_throttle_refuses_tokens_the_limiter_could_never_grant() -> None:
    limiter = ct.Limiter(tpm=100)
    with pytest.raises(ValueError, match="tokens"):
        ct.throttle(limiter, tokens=101)
    with pytest.raises(ValueError, match="tokens"):
        ct.throttle(ct.Limiter(rpm=1), tokens=2**64)
