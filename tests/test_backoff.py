"""``backoff``: which errors are retried, how long it waits, when it gives up, and what it
tells (notes, logs, callbacks, the limiter's counters and pause).

Delays are read from ``on_retry`` (attempt, delay, exc), which runs just before each sleep; base
delays are small so the suite stays fast. Fake exceptions are shaped like openai's (status code,
``response.headers``, ``body``); the real openai and httpx classes are checked too.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import itertools
import logging
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import httpx
import openai
import pytest

import crewthrottle as ct

# -- fakes ------------------------------------------------------------------------------------


class FakeResponse:
    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.status_code = 429
        self.headers = headers or {}


class RateLimited(Exception):
    """Shaped like ``openai.APIStatusError`` with status 429."""

    def __init__(self, headers: dict[str, str] | None = None, body: object = None) -> None:
        super().__init__(f"Error code: 429 - {body}")
        self.status_code = 429
        self.body = body
        self.response = FakeResponse(headers)


class Recorder:
    """An ``on_retry`` callback that keeps what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float, BaseException]] = []

    def __call__(self, attempt: int, delay: float, exc: BaseException) -> None:
        self.calls.append((attempt, delay, exc))

    @property
    def delays(self) -> list[float]:
        return [delay for _, delay, _ in self.calls]


def failing(times: int, make: Any = RateLimited, result: object = "ok") -> Any:
    """A function failing ``times`` times with ``make()``, then returning ``result``; it counts
    its calls in ``.calls`` and keeps the exceptions it raised in ``.raised``."""

    def function(*args: Any, **kwargs: Any) -> object:
        function.calls += 1  # type: ignore[attr-defined]
        function.seen.append((args, kwargs))  # type: ignore[attr-defined]
        if function.calls <= times:  # type: ignore[attr-defined]
            exc = make()
            function.raised.append(exc)  # type: ignore[attr-defined]
            raise exc
        return result

    function.calls = 0  # type: ignore[attr-defined]
    function.seen = []  # type: ignore[attr-defined]
    function.raised = []  # type: ignore[attr-defined]
    return function


NOTE = re.compile(r"gave up after (\d+) tries in (\d+\.\d+) s")


def give_up_note(exc: BaseException) -> str:
    notes = getattr(exc, "__notes__", [])
    assert len(notes) == 1, notes
    return str(notes[0])


# -- sync, async and .call ------------------------------------------------------------------


def test_sync_function_is_retried_then_returns() -> None:
    raw = failing(2, result=42)
    rec = Recorder()

    def fetch(a: int, *, b: int) -> int:
        """Docstring kept."""
        return raw(a, b=b)  # type: ignore[no-any-return]

    decorated = ct.backoff(base=0.001, on_retry=rec)(fetch)
    assert decorated(1, b=2) == 42
    assert raw.calls == 3
    assert raw.seen == [((1,), {"b": 2})] * 3
    assert [a for a, _, _ in rec.calls] == [1, 2]
    assert decorated.__name__ == "fetch" and decorated.__doc__ == "Docstring kept."
    assert inspect.signature(decorated) == inspect.signature(fetch)


def test_async_function_is_retried_then_returns() -> None:
    raw = failing(2, result=42)
    rec = Recorder()

    @ct.backoff(base=0.001, on_retry=rec)
    async def fetch(a: int, *, b: int) -> int:
        await asyncio.sleep(0)
        return raw(a, b=b)  # type: ignore[no-any-return]

    assert inspect.iscoroutinefunction(fetch)
    assert fetch.__name__ == "fetch"
    assert asyncio.run(fetch(1, b=2)) == 42
    assert raw.calls == 3
    assert raw.seen == [((1,), {"b": 2})] * 3
    assert [a for a, _, _ in rec.calls] == [1, 2]


def test_call_runs_a_sync_function_with_retries() -> None:
    raw = failing(1, result="done")
    assert ct.backoff(base=0.001).call(raw, 1, 2, key="v") == "done"
    assert raw.seen == [((1, 2), {"key": "v"})] * 2


def test_call_returns_an_awaitable_for_an_async_function() -> None:
    raw = failing(1, result="done")

    async def fetch(x: int, *, y: int) -> object:
        return raw(x, y=y)

    pending = ct.backoff(base=0.001).call(fetch, 1, y=2)
    assert inspect.iscoroutine(pending)
    assert asyncio.run(pending) == "done"  # type: ignore[arg-type]
    assert raw.seen == [((1,), {"y": 2})] * 2


def test_success_at_first_try_makes_one_call_and_no_retry() -> None:
    raw = failing(0)
    rec = Recorder()
    assert ct.backoff(on_retry=rec).call(raw) == "ok"
    assert raw.calls == 1 and rec.calls == []


# -- what is retried --------------------------------------------------------------------------


def test_retry_on_a_class_retries_it_and_its_subclasses_only() -> None:
    policy = ct.backoff(retry_on=LookupError, base=0.001, max_tries=3)
    raw = failing(2, make=lambda: KeyError("k"))
    assert policy.call(raw) == "ok" and raw.calls == 3
    other = failing(2, make=lambda: ValueError("v"))
    with pytest.raises(ValueError):
        policy.call(other)
    assert other.calls == 1


def test_retry_on_a_tuple_retries_each_class() -> None:
    policy = ct.backoff(retry_on=(KeyError, TimeoutError), base=0.001, max_tries=3)
    errors = iter([KeyError("k"), TimeoutError("t")])
    raw = failing(2, make=lambda: next(errors))
    assert policy.call(raw) == "ok" and raw.calls == 3
    other = failing(1, make=lambda: ValueError("v"))
    with pytest.raises(ValueError):
        policy.call(other)
    assert other.calls == 1


def test_retry_on_a_predicate_is_asked_about_each_error() -> None:
    asked: list[BaseException] = []

    def transient(exc: BaseException) -> bool:
        asked.append(exc)
        return "again" in str(exc)

    policy = ct.backoff(retry_on=transient, base=0.001, max_tries=5)
    raw = failing(2, make=lambda: RuntimeError("try again"))
    assert policy.call(raw) == "ok" and raw.calls == 3
    assert asked == raw.raised
    final = failing(3, make=lambda: RuntimeError("fatal"))
    with pytest.raises(RuntimeError, match="fatal"):
        policy.call(final)
    assert final.calls == 1


def test_default_retries_a_429() -> None:
    raw = failing(2)
    assert ct.backoff(base=0.001).call(raw) == "ok"
    assert raw.calls == 3


@pytest.mark.parametrize(
    "make",
    [
        lambda: RateLimited(body={"code": "insufficient_quota", "type": "insufficient_quota"}),
        lambda: RateLimited(body={"error": {"code": "insufficient_quota"}}),
        lambda: ValueError("not a rate limit"),
    ],
    ids=["insufficient_quota", "nested-insufficient_quota", "ValueError"],
)
def test_default_does_not_retry_other_errors(make: Any) -> None:
    raw = failing(5, make=make)
    with pytest.raises(Exception) as info:
        ct.backoff(base=0.001).call(raw)
    assert raw.calls == 1
    assert info.value is raw.raised[0]
    assert not hasattr(info.value, "__notes__")  # not retried, so nothing to say


def test_a_base_exception_is_never_caught() -> None:
    raw = failing(1, make=lambda: KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        ct.backoff(retry_on=BaseException, base=0.001).call(raw)
    assert raw.calls == 1


# -- the delays -------------------------------------------------------------------------------


def test_unjittered_delays_are_base_times_factor_to_the_n_capped() -> None:
    rec = Recorder()
    base, factor, cap = 0.001, 3.0, 0.02
    policy = ct.backoff(
        base=base, factor=factor, max_delay=cap, jitter="none", max_tries=6, on_retry=rec
    )
    raw = failing(10)
    with pytest.raises(RateLimited):
        policy.call(raw)
    assert raw.calls == 6
    assert [a for a, _, _ in rec.calls] == [1, 2, 3, 4, 5]
    assert all(exc is raised for (_, _, exc), raised in zip(rec.calls, raw.raised, strict=False))
    expected = [min(base * factor**i, cap) for i in range(5)]  # 0.001 0.003 0.009 0.02 0.02
    assert rec.delays == pytest.approx(expected, abs=2e-9)  # the core counts nanoseconds


def full_jitter_delays(seed: int, jitter: str = "full") -> list[float]:
    rec = Recorder()
    policy = ct.backoff(
        base=0.0005,
        factor=2.0,
        max_delay=0.002,
        jitter=jitter,
        max_tries=21,
        seed=seed,
        on_retry=rec,
    )
    with pytest.raises(RateLimited):
        policy.call(failing(100))
    return rec.delays


def capped(i: int) -> float:
    return min(0.0005 * 2.0**i, 0.002)


def test_full_jitter_is_within_zero_and_the_capped_delay_and_repeatable_by_seed() -> None:
    delays = full_jitter_delays(seed=7)
    assert len(delays) == 20
    for i, delay in enumerate(delays):
        assert 0.0 <= delay <= capped(i) + 1e-9, (i, delay)
    assert any(d < capped(i) / 2 for i, d in enumerate(delays)), "no spread below the half"
    assert full_jitter_delays(seed=7) == delays
    assert full_jitter_delays(seed=8) != delays


def test_equal_jitter_is_within_half_and_the_whole_capped_delay() -> None:
    delays = full_jitter_delays(seed=3, jitter="equal")
    assert len(delays) == 20
    for i, delay in enumerate(delays):
        assert capped(i) / 2 - 1e-9 <= delay <= capped(i) + 1e-9, (i, delay)
    assert len(set(delays)) > 3, "equal jitter should still vary"
    assert full_jitter_delays(seed=3, jitter="equal") == delays


def test_the_sleep_between_tries_lasts_the_delay() -> None:
    starts: list[float] = []
    rec = Recorder()

    def fn() -> None:
        starts.append(time.monotonic())
        raise RateLimited()

    with pytest.raises(RateLimited):
        ct.backoff(base=0.03, factor=1.0, jitter="none", max_tries=3, on_retry=rec).call(fn)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) == 2
    assert all(gap >= 0.03 for gap in gaps), gaps  # a sleep never ends early


# -- Retry-After ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"retry-after": "0.05"}, 0.05),
        ({"Retry-After": "0.06"}, 0.06),
        ({"retry-after-ms": "50"}, 0.05),
        ({"retry-after-ms": "40", "retry-after": "30"}, 0.04),  # ms wins, as in openai's SDK
        ({"x-ratelimit-reset-requests": "0.05s"}, 0.05),
        ({"x-ratelimit-reset-requests": "50ms"}, 0.05),
        ({"x-ratelimit-reset-tokens": "60ms", "x-ratelimit-reset-requests": "0.02s"}, 0.06),
        ({"x-ratelimit-reset-requests": "0m0.05s"}, 0.05),
    ],
)
def test_a_named_wait_makes_the_delay_at_least_that(headers: dict[str, str], wait: float) -> None:
    rec = Recorder()
    starts: list[float] = []

    def fn() -> str:
        starts.append(time.monotonic())
        if len(starts) == 1:
            raise RateLimited(headers)
        return "ok"

    policy = ct.backoff(base=0.001, max_delay=1.0, on_retry=rec, seed=1)
    assert policy.call(fn) == "ok"
    assert rec.delays[0] == pytest.approx(wait, abs=1e-6)  # the jitter is far shorter
    assert starts[1] - starts[0] >= wait


def test_an_http_date_names_a_wait_until_then() -> None:
    # HTTP dates have whole seconds: the next whole second is at most 1 s away.
    target = math.floor(time.time()) + 1.0
    headers = {"retry-after": email.utils.formatdate(target, usegmt=True)}
    rec = Recorder()
    before = time.time()
    seen_at: list[float] = []

    def on_retry(attempt: int, delay: float, exc: BaseException) -> None:
        seen_at.append(time.time())
        rec(attempt, delay, exc)

    raw = failing(1, make=lambda: RateLimited(headers))
    assert ct.backoff(base=0.0, max_delay=5.0, on_retry=on_retry).call(raw) == "ok"
    assert target - seen_at[0] - 0.01 <= rec.delays[0] <= target - before + 0.01
    assert time.time() >= target - 0.01  # the retry waited for the date


def test_respect_retry_after_false_ignores_the_named_wait() -> None:
    rec = Recorder()
    raw = failing(1, make=lambda: RateLimited({"retry-after": "20"}))
    policy = ct.backoff(base=0.001, jitter="none", respect_retry_after=False, on_retry=rec)
    assert policy.call(raw) == "ok"
    assert rec.delays == [pytest.approx(0.001, abs=1e-9)]


@pytest.mark.parametrize("wait", ["5", "1e12", "1e20"])
def test_a_named_wait_longer_than_max_delay_gives_up_at_once(wait: str) -> None:
    # 1e20 s is past what a Rust Duration holds: it is still longer than max_delay.
    raw = failing(5, make=lambda: RateLimited({"retry-after": wait}))
    rec = Recorder()
    with pytest.raises(RateLimited) as info:
        ct.backoff(base=0.001, max_delay=1.0, on_retry=rec).call(raw)
    assert (raw.calls, rec.delays) == (1, [])
    assert info.value is raw.raised[0]
    note = give_up_note(info.value)
    assert "Retry-After" in note and "max_delay" in note
    match = NOTE.search(note)
    assert match is not None and match.group(1) == "1"


def test_a_named_wait_past_max_time_gives_up_at_once() -> None:
    raw = failing(5, make=lambda: RateLimited({"retry-after": "2"}))
    with pytest.raises(RateLimited) as info:
        ct.backoff(base=0.001, max_delay=10.0, max_time=1.0).call(raw)
    assert raw.calls == 1
    assert "Retry-After" in give_up_note(info.value)


# -- giving up --------------------------------------------------------------------------------


def test_give_up_after_max_tries_reraises_the_original_exception_with_a_note() -> None:
    raw = failing(10)
    with pytest.raises(RateLimited) as info:
        ct.backoff(base=0.001, max_tries=3).call(raw)
    assert raw.calls == 3
    exc = info.value
    assert exc is raw.raised[-1]
    assert type(exc) is RateLimited and exc.status_code == 429
    assert exc.args == ("Error code: 429 - None",)
    assert exc.__cause__ is None
    note = give_up_note(exc)
    match = NOTE.search(note)
    assert match is not None, note
    assert match.group(1) == "3"
    assert 0.0 <= float(match.group(2)) < 10.0
    assert "max_tries" in note
    # The earlier exceptions carry no note: only the one that propagates does.
    assert all(not hasattr(e, "__notes__") for e in raw.raised[:-1])


def test_give_up_in_an_async_function_carries_the_note_too() -> None:
    raw = failing(10)

    @ct.backoff(base=0.001, max_tries=2)
    async def fetch() -> object:
        return raw()

    with pytest.raises(RateLimited) as info:
        asyncio.run(fetch())
    assert raw.calls == 2 and info.value is raw.raised[-1]
    assert NOTE.search(give_up_note(info.value)).group(1) == "2"  # type: ignore[union-attr]


def test_max_time_gives_up_before_passing_it() -> None:
    raw = failing(1000)
    started = time.monotonic()
    with pytest.raises(RateLimited) as info:
        ct.backoff(base=0.02, factor=1.0, jitter="none", max_tries=1000, max_time=0.1).call(raw)
    elapsed = time.monotonic() - started
    # Delays of 0.02 s within 0.1 s: five retries at most (six calls), never the 1000.
    assert 2 <= raw.calls <= 6
    assert elapsed < 0.1 + 1.0  # generous: the sleeps stop before max_time, calls are instant
    note = give_up_note(info.value)
    assert "max_time" in note
    assert NOTE.search(note).group(1) == str(raw.calls)  # type: ignore[union-attr]


# -- observability ----------------------------------------------------------------------------


def test_retries_log_at_debug_and_a_give_up_once_at_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="crewthrottle")
    with pytest.raises(RateLimited):
        ct.backoff(base=0.001, max_tries=4).call(failing(10))
    records = [r for r in caplog.records if r.name == "crewthrottle.retry"]
    debugs = [r for r in records if r.levelno == logging.DEBUG]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(debugs) == 3 and len(warnings) == 1, [r.getMessage() for r in records]
    assert [r.getMessage().split()[:2] for r in debugs] == [
        ["retry", "1"],
        ["retry", "2"],
        ["retry", "3"],
    ]
    assert "giving up after 4 tries" in warnings[0].getMessage()


def test_limiter_counts_retries_and_give_ups() -> None:
    limiter = ct.Limiter(max_concurrent=4)
    policy = ct.backoff(base=0.001, max_tries=3, limiter=limiter)
    assert policy.call(failing(1)) == "ok"
    stats = limiter.stats()
    assert (stats["retries"], stats["give_ups"], stats["retries_refused"]) == (1, 0, 0)
    with pytest.raises(RateLimited):
        policy.call(failing(10))
    stats = limiter.stats()
    assert (stats["retries"], stats["give_ups"], stats["retries_refused"]) == (3, 1, 0)
    # Not retryable: neither a retry nor a give-up.
    with pytest.raises(ValueError):
        policy.call(failing(1, make=lambda: ValueError("x")))
    assert (limiter.stats()["retries"], limiter.stats()["give_ups"]) == (3, 1)


def test_a_named_wait_pauses_the_limiter_for_other_threads() -> None:
    """Invariant: after a 429 naming 0.3 s, no permit of the shared limiter is granted to
    anyone until 0.3 s after that 429 was raised."""
    limiter = ct.Limiter(max_concurrent=8)
    raised_at: list[float] = []
    other: dict[str, float] = {}
    paused_for: list[float] = []

    def fn() -> str:
        if not raised_at:
            raised_at.append(time.monotonic())
            raise RateLimited({"retry-after": "0.3"})
        return "ok"

    def acquire_elsewhere() -> None:
        with limiter.acquire(timeout=10):
            other["granted"] = time.monotonic()

    threads: list[threading.Thread] = []

    def on_retry(attempt: int, delay: float, exc: BaseException) -> None:
        paused_for.append(limiter.stats()["paused_for"])
        thread = threading.Thread(target=acquire_elsewhere)
        thread.start()
        threads.append(thread)

    policy = ct.backoff(base=0.001, limiter=limiter, on_retry=on_retry)
    assert policy.call(fn) == "ok"
    for thread in threads:
        thread.join(10)
    assert 0.0 < paused_for[0] <= 0.3
    assert other["granted"] - raised_at[0] >= 0.25
    assert limiter.stats()["retries"] == 1 and limiter.stats()["in_flight"] == 0


def test_a_429_without_a_named_wait_does_not_pause_the_limiter() -> None:
    limiter = ct.Limiter(max_concurrent=8)
    seen: list[float] = []
    policy = ct.backoff(
        base=0.001, limiter=limiter, on_retry=lambda *_: seen.append(limiter.stats()["paused_for"])
    )
    assert policy.call(failing(1)) == "ok"
    assert seen == [0.0]


@pytest.mark.parametrize(
    ("why", "wait"),
    [
        ("wait longer than max_delay", "5"),
        ("max_tries reached", "5"),
        ("budget spent", "5"),
        ("huge wait", "1e12"),  # longer than the native clock's 584 years: must not wrap
    ],
)
def test_a_named_wait_pauses_the_limiter_even_when_giving_up(why: str, wait: str) -> None:
    """The provider said everyone must wait: the callers sharing the limiter should hold off
    whether or not this caller retries (issue 3: "a 429's wait is also applied as
    limiter.pause(...) so every caller sharing it holds off")."""
    limiter = ct.Limiter(max_concurrent=8)
    options: dict[str, Any] = {
        "wait longer than max_delay": {"max_delay": 1.0},
        "max_tries reached": {"max_tries": 1, "max_delay": 10.0},
        "budget spent": {"budget": ct.RetryBudget(ratio=0, min_retries_per_s=0), "max_delay": 10.0},
        "huge wait": {},
    }[why]
    policy = ct.backoff(base=0.001, limiter=limiter, **options)
    raw = failing(5, make=lambda: RateLimited({"retry-after": wait}))
    with pytest.raises(RateLimited):
        policy.call(raw)
    assert raw.calls == 1
    stats = limiter.stats()
    assert stats["give_ups"] + stats["retries_refused"] == 1
    assert stats["paused_for"] > 4.0
    assert limiter.try_acquire() is None


# -- the real openai and httpx exceptions -----------------------------------------------------


def openai_429(headers: dict[str, str], body: object = None) -> openai.RateLimitError:
    response = httpx.Response(429, headers=headers, request=httpx.Request("POST", "https://x"))
    return openai.RateLimitError("Rate limit reached", response=response, body=body)


def test_openai_rate_limit_error_is_retried_and_its_header_honoured() -> None:
    rec = Recorder()
    raw = failing(1, make=lambda: openai_429({"retry-after-ms": "30"}))
    policy = ct.backoff(base=0.001, jitter="none", on_retry=rec)
    assert policy.call(raw) == "ok"
    assert raw.calls == 2
    assert rec.delays == [pytest.approx(0.03, abs=1e-6)]
    assert isinstance(rec.calls[0][2], openai.RateLimitError)


def test_openai_insufficient_quota_is_not_retried() -> None:
    body = {
        "message": "You exceeded your current quota",
        "type": "insufficient_quota",
        "code": "insufficient_quota",
    }
    raw = failing(5, make=lambda: openai_429({}, body=body))
    with pytest.raises(openai.RateLimitError):
        ct.backoff(base=0.001).call(raw)
    assert raw.calls == 1


def test_httpx_status_error_429_is_retried() -> None:
    def make() -> httpx.HTTPStatusError:
        request = httpx.Request("GET", "https://x")
        response = httpx.Response(429, headers={"retry-after": "0.02"}, request=request)
        return httpx.HTTPStatusError("429", request=request, response=response)

    rec = Recorder()
    raw = failing(1, make=make)
    assert ct.backoff(base=0.001, jitter="none", on_retry=rec).call(raw) == "ok"
    assert rec.delays == [pytest.approx(0.02, abs=1e-6)]


# -- bad arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"max_tries": 0}, ValueError, "max_tries"),
        ({"max_tries": -3}, ValueError, "max_tries"),
        ({"max_tries": 2.5}, TypeError, "max_tries"),
        ({"base": -0.1}, ValueError, "base"),
        ({"base": math.nan}, ValueError, "base"),
        ({"base": "1"}, TypeError, "base"),
        ({"max_delay": -1.0}, ValueError, "max_delay"),
        ({"max_delay": math.inf}, ValueError, "max_delay"),
        ({"factor": 0.5}, ValueError, "factor"),
        ({"jitter": "random"}, ValueError, "jitter"),
        ({"jitter": None}, TypeError, "jitter"),
        ({"max_time": 0}, ValueError, "max_time"),
        ({"max_time": -1.0}, ValueError, "max_time"),
        ({"retry_on": 42}, TypeError, "retry_on"),
        ({"retry_on": (ValueError, 42)}, TypeError, "retry_on"),
        ({"retry_on": int}, TypeError, "retry_on"),
        ({"limiter": "x"}, TypeError, "limiter"),
        ({"budget": "x"}, TypeError, "budget"),
        ({"on_retry": 5}, TypeError, "on_retry"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(
    kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=rf"\b{name}\b"):
        ct.backoff(**kwargs)


def test_decorating_a_non_callable_raises() -> None:
    with pytest.raises(TypeError, match="callable"):
        ct.backoff()(42)  # type: ignore[arg-type]


# -- interruption and cancellation ------------------------------------------------------------


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX signals")
def test_ctrl_c_interrupts_a_sync_backoff_sleep() -> None:
    code = textwrap.dedent("""
        import crewthrottle as ct

        class RateLimited(Exception):
            status_code = 429

        calls = 0

        def fn():
            global calls
            calls += 1
            raise RateLimited("429")

        policy = ct.backoff(base=100, max_delay=100, jitter="none",
                            on_retry=lambda a, d, e: print("retrying", d, flush=True))
        try:
            policy.call(fn)
        except KeyboardInterrupt:
            print("interrupted", calls, flush=True)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().split() == ["retrying", "100.0"]
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    elapsed = time.monotonic() - sent
    assert proc.returncode == 0, err
    assert out.split() == ["interrupted", "1"], (out, err)  # no call after the interrupt
    assert elapsed < 5, f"KeyboardInterrupt took {elapsed:.2f} s"


def test_cancelling_an_async_backoff_sleep_stops_the_retries() -> None:
    calls = 0

    async def main() -> None:
        nonlocal calls
        retrying = asyncio.Event()

        @ct.backoff(base=100, max_delay=100, jitter="none", on_retry=lambda *_: retrying.set())
        async def fetch() -> None:
            nonlocal calls
            calls += 1
            raise RateLimited()

        task = asyncio.create_task(fetch())
        await retrying.wait()
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        for _ in range(10):  # give a stray retry every chance to run
            await asyncio.sleep(0)

    started = time.monotonic()
    asyncio.run(main())
    assert calls == 1
    assert time.monotonic() - started < 10  # did not sleep the 100 s


def test_async_backoff_sleeps_on_the_running_loop() -> None:
    """While one task backs off, the loop runs others: an async sleep, not a blocking one."""
    attempts: list[float] = []
    ticks: list[float] = []

    async def main() -> None:
        @ct.backoff(base=0.1, factor=1.0, jitter="none", max_tries=2)
        async def fetch() -> str:
            attempts.append(time.monotonic())
            if len(attempts) == 1:
                raise RateLimited()
            return "ok"

        async def ticker() -> None:
            for _ in range(5):
                ticks.append(time.monotonic())
                await asyncio.sleep(0.001)

        result, _ = await asyncio.gather(fetch(), ticker())
        assert result == "ok"

    asyncio.run(main())
    assert len(attempts) == 2 and len(ticks) == 5
    assert any(attempts[0] < tick < attempts[1] for tick in ticks), (attempts, ticks)
