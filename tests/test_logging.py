"""What crewthrottle logs (issue 11): never a line per call at INFO or above. A retry is DEBUG
on ``crewthrottle.retry``; a give-up one WARNING there; a provider's wait that pauses a limiter
one INFO on ``crewthrottle.limiter`` per pause, naming the limiter, the wait and the error."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

import crewthrottle as ct


class Throttled(Exception):
    """Shaped like ``openai.RateLimitError``: status 429 and the provider's Retry-After."""

    def __init__(self, wait: str) -> None:
        super().__init__("Error code: 429")
        self.status_code = 429
        self.headers = {"retry-after": wait}


def always(wait: str) -> object:
    def call() -> None:
        raise Throttled(wait)

    return call


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("crewthrottle") and r.levelno >= level]


def test_a_pause_is_logged_once_with_who_why_and_how_long(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="crewthrottle")
    limiter = ct.Limiter(max_concurrent=8, name="gpt-4o")
    policy = ct.backoff(max_tries=1, limiter=limiter)
    for _ in range(5):  # five 429s naming a 30 s wait: the first pauses, the others extend it
        with pytest.raises(Throttled):
            policy.call(always("30"))
    pauses = [r for r in caplog.records if r.name == "crewthrottle.limiter"]
    assert len(pauses) == 1, [r.getMessage() for r in pauses]
    record = pauses[0]
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "limiter 'gpt-4o': paused for 30.00 s: the provider asked to wait (Throttled)"
    )
    assert (record.limiter, record.pause_seconds) == ("gpt-4o", 30.0)  # type: ignore[attr-defined]
    assert limiter.stats()["paused_for"] > 25


def test_a_storm_of_retries_logs_nothing_at_info_but_pauses_and_give_ups(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Invariant: lines at INFO and above = pauses started + calls given up, however many
    retries; each give-up is one WARNING naming the limiter."""
    caplog.set_level(logging.INFO, logger="crewthrottle")
    limiter = ct.Limiter(max_concurrent=8, name="storm")
    policy = ct.backoff(max_tries=3, base=0.001, max_delay=0.002, limiter=limiter)

    def worker(first: int) -> None:
        for i in range(first, first + 10):
            # Call i fails i % 5 times: 0, 1 and 2 failures succeed (0 + 1 + 2 retries),
            # 3 and 4 give up after 2 retries each.
            failures = iter(range(i % 5))

            def call(failures: Iterator[int] = failures) -> str:
                if next(failures, None) is not None:
                    raise Throttled("0")  # a zero wait: no pause
                return "ok"

            try:
                policy.call(call)
            except Throttled:
                pass

    threads = [threading.Thread(target=worker, args=(10 * n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = limiter.stats()
    assert (stats["retries"], stats["give_ups"]) == (56, 16)  # 40 calls: 8 x (0+1+2+2+2), 8 x 2
    told = lines(caplog, logging.INFO)
    assert len(told) == 16, [r.getMessage() for r in told]
    assert all(r.levelno == logging.WARNING and r.name == "crewthrottle.retry" for r in told)
    assert all(r.getMessage().startswith("limiter 'storm': giving up after 3") for r in told)


def test_a_refused_retry_is_a_give_up_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="crewthrottle")
    budget = ct.RetryBudget(ratio=0.0, min_retries_per_s=0.0)
    with pytest.raises(Throttled):
        ct.backoff(base=0.001, budget=budget).call(always("0"))
    (record,) = lines(caplog, logging.INFO)
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("retry budget spent, not retrying after 1 tries")


def test_the_library_prints_nothing_unless_the_app_configures_logging() -> None:
    root = logging.getLogger("crewthrottle")
    assert any(isinstance(h, logging.NullHandler) for h in root.handlers)
    assert logging.getLogger("crewthrottle.retry").parent is root
    assert logging.getLogger("crewthrottle.limiter").parent is root


def test_pacing_hard_is_logged_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Six callers against two requests a second: the first waiter waits past a second while
    # others queue behind it (one line), then the queue stays empty for a window (one line).
    caplog.set_level(logging.INFO, logger="crewthrottle")
    limiter = ct.Limiter(rpm=2, window=1.0, margin=0.0, burst=1, name="busy")
    threads = [
        threading.Thread(target=lambda: limiter.acquire(timeout=10).release()) for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    stats = limiter.stats()
    assert stats["pacing_episodes"] == 1 and stats["pacing_hard_for"] is not None
    started = [r for r in lines(caplog, logging.INFO) if "pacing hard:" in r.getMessage()]
    assert len(started) == 1 and "'busy'" in started[0].getMessage().replace('"', "'")
    assert "held by" in started[0].getMessage()
    deadline = threading.Event()
    deadline.wait(1.1)  # a whole window with nobody queued
    assert limiter.try_acquire() is not None  # the next touch of the limiter judges it calm
    calm = [r for r in lines(caplog, logging.INFO) if "calm again" in r.getMessage()]
    assert len(calm) == 1
    assert limiter.stats()["pacing_hard_for"] is None
