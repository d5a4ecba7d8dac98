"""Canaries: each private seam of another library that crewthrottle relies on (listed in
``crewthrottle._seams``) is where it is expected; each fails naming its seam when an upgrade
moves it. Then the run-time side: a missing seam is a warning naming it and the behaviour that
applies, said once; and no code path blocks an event loop (issue 9, item 7).
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings

import pytest

import crewthrottle as ct
from crewthrottle import _integrations as shared
from crewthrottle import _seams as seams

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # CrewAI's own ImportWarnings at import time
    import crewai.llms.hooks
    from crewai import LLM


@pytest.mark.parametrize("name", sorted(seams.SEAMS))
def test_private_seam_is_where_crewthrottle_expects_it(name: str) -> None:
    seam = seams.SEAMS[name]
    assert seams._probe(seam), (
        f"the private seam {name} moved in this version of its library: {seam.without}. "
        f"(what it is for: {seam.gives}); follow it in crewthrottle/_seams.py"
    )


@pytest.mark.parametrize(
    "model", ["gpt-4o-mini", "anthropic/claude-3-5-haiku-latest"], ids=["openai", "anthropic"]
)
def test_public_seams_of_the_native_providers_are_there(model: str) -> None:
    """Not private, but what the native providers' throttling stands on: the interceptor and
    max_retries options, and the hook class."""
    llm = LLM(model=model, base_url="http://127.0.0.1:9", api_key="fake")
    fields = type(llm).model_fields
    assert "interceptor" in fields and "max_retries" in fields, type(llm).__name__
    assert callable(crewai.llms.hooks.BaseInterceptor.on_outbound)


def test_a_missing_seam_is_said_once_with_what_then_happens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = "crewai.llms.retry._active_llm_rate_limit_retry"
    moved = seams.Seam(name, "does something", "something else happens", lambda: False)
    monkeypatch.setitem(seams.SEAMS, name, moved)
    monkeypatch.setattr(seams, "_checked", {})
    monkeypatch.setattr(shared, "_warned", set())
    with pytest.warns(RuntimeWarning, match=rf"{name}.*something else happens") as said:
        assert not seams.available(name)
        assert not seams.available(name)
    assert len(said) == 1


def test_seams_are_checked_once_not_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    name = "crewai.llms.base_llm.BaseLLM._track_token_usage_internal"
    real = seams.SEAMS[name]
    counted = seams.Seam(name, real.gives, real.without, lambda: calls.append(1) or True)
    monkeypatch.setitem(seams.SEAMS, name, counted)
    monkeypatch.setattr(seams, "_checked", {})
    for _ in range(3):
        assert seams.available(name)
    assert calls == [1]


def test_a_late_charge_waits_without_blocking_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 9, item 7: a request that went out without its permit is charged afterwards;
    on the async path that charge is awaited, so the loop keeps running (here it must, as
    the only permit is given back by a task of the same loop)."""
    monkeypatch.setattr(shared, "_warned", set())
    limiter = ct.Limiter(max_concurrent=1)
    ticks: list[float] = []

    async def main() -> None:
        held = await limiter.acquire_async()
        attempt = shared.Attempt(limiter, 10)
        attempt.add_usage({"input_tokens": 3, "output_tokens": 4})  # no permit: slipped by
        finishing = asyncio.ensure_future(attempt.afinish())

        async def tick() -> None:
            for _ in range(5):
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)
            held.release()  # only this loop can free the slot the late charge waits for

        await asyncio.wait_for(asyncio.gather(tick(), finishing), timeout=10)

    result: list[BaseException] = []
    worker = threading.Thread(target=lambda: _run(main, result), daemon=True)
    with pytest.warns(RuntimeWarning, match="without passing the hook"):
        worker.start()
        worker.join(15)
    assert not worker.is_alive(), "the event loop was blocked by a late charge"
    assert not result, result
    assert len(ticks) == 5
    stats = limiter.stats()
    assert stats["acquired"] == 2 and stats["in_flight"] == 0
    assert stats["tokens_granted"] == 7, "charged, then settled to the reported usage"


def _run(main: object, errors: list[BaseException]) -> None:
    try:
        asyncio.run(main())  # type: ignore[operator]
    except BaseException as exc:
        errors.append(exc)
