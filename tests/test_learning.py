"""What the provider says corrects the limiter's view (issue 8), through the public API:
limits learned from rate-limit headers, foreign traffic, 429s that lower the rates, one log
line per change, token estimates that learn — and nothing learned ever raises a limit the
user configured (hypothesis)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import crewthrottle as ct
from crewthrottle import _integrations as shared
from crewthrottle._estimates import MIN_SAMPLES, SAMPLE_SIZE
from crewthrottle.testing import FakeProvider


def openai_headers(rpm: tuple[int, int], tpm: tuple[int, int]) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(rpm[0]),
        "x-ratelimit-remaining-requests": str(rpm[1]),
        "x-ratelimit-limit-tokens": str(tpm[0]),
        "x-ratelimit-remaining-tokens": str(tpm[1]),
    }


def effective(limiter: ct.Limiter) -> tuple[Any, ...]:
    s = limiter.stats()
    return s["effective_max_concurrent"], s["effective_rpm"], s["effective_tpm"]


# -- limits --------------------------------------------------------------------------------------


def test_a_plain_limiter_reports_its_configured_limits_in_force() -> None:
    limiter = ct.Limiter(max_concurrent=3, rpm=60)
    assert effective(limiter) == (3, 60, None)
    assert limiter.stats()["limits_reason"] == "configured"
    assert limiter.adaptive is False and "adaptive" not in repr(limiter)


def test_an_adaptive_limiter_starts_careful_and_takes_the_providers_limits() -> None:
    limiter = ct.Limiter(adaptive=True, window=10.0)
    assert limiter.adaptive is True and "adaptive=True" in repr(limiter)
    assert effective(limiter) == (1, 10, None)  # one in flight, one per second
    assert limiter.stats()["limits_reason"] == "conservative"
    first = limiter.acquire()
    assert limiter.try_acquire() is None, "one in flight"
    first.release()
    limiter.observe(openai_headers((500, 499), (200_000, 199_000)))
    assert effective(limiter) == (None, 500, 200_000)
    assert limiter.stats()["limits_reason"] == "headers"
    assert limiter.rpm is None and limiter.tpm is None  # the configuration is what was given


def test_headers_lower_a_configured_limit_and_never_raise_one() -> None:
    limiter = ct.Limiter(rpm=100, tpm=5_000)
    limiter.observe(openai_headers((1_000, 1_000), (4_000, 4_000)))
    assert effective(limiter) == (None, 100, 4_000)
    assert limiter.stats()["limits_reason"] == "headers"


def test_traffic_the_provider_saw_beyond_ours_is_left_room_for() -> None:
    limiter = ct.Limiter(rpm=10, window=60.0, burst=10)
    with limiter.acquire():
        pass
    limiter.observe(openai_headers((10, 2), (0, 0)))  # 8 used, 1 of them ours
    stats = limiter.stats()
    assert stats["foreign_requests_in_window"] == 7
    assert stats["requests_in_window"] == 1  # our own; theirs lower the limit in force
    # Our share, 3 of the 10 a window, is spread out: the next one in 20 s.
    assert limiter.try_acquire() is None
    assert limiter.stats()["blocked_by"] == "pacing"


def test_an_unexplained_429_lowers_the_rates_once_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = ct.Limiter(rpm=100, tpm=10_000, name="gpt")
    with caplog.at_level(logging.INFO, logger="crewthrottle.limiter"):
        for _ in range(5):  # the requests in flight come back 429 together
            limiter._count_retry("rate_limited")
        limiter.observe({}, status=429)
    assert effective(limiter) == (None, 70, 7_000)
    assert limiter.stats()["limits_reason"] == "429"
    assert limiter.stats()["rate_limit_errors"] == 5
    lines = [r for r in caplog.records if r.name == "crewthrottle.limiter"]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "rpm=70" in lines[0].getMessage() and "429" in lines[0].getMessage()
    assert lines[0].limits_reason == "429" and lines[0].limiter == "gpt"  # type: ignore[attr-defined]


def test_a_429_its_headers_explain_lowers_nothing(caplog: pytest.LogCaptureFixture) -> None:
    limiter = ct.Limiter(rpm=10)
    with caplog.at_level(logging.INFO, logger="crewthrottle.limiter"):
        limiter.observe(openai_headers((10, 0), (0, 0)), status=429)  # 10 someone else's
        limiter._count_retry("rate_limited")  # the retry layer counts the same 429
    assert effective(limiter) == (None, 10, None)
    assert limiter.stats()["foreign_requests_in_window"] == 10
    assert not [r for r in caplog.records if r.name == "crewthrottle.limiter"]


def test_learning_needs_headers_seen_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    limiter = ct.Limiter(adaptive=True)
    with caplog.at_level(logging.INFO, logger="crewthrottle.limiter"):
        for _ in range(20):
            limiter.observe(openai_headers((500, 500), (9_000, 9_000)))
    assert len([r for r in caplog.records if r.name == "crewthrottle.limiter"]) == 1


def test_a_provider_without_headers_ends_the_careful_start_after_three_responses() -> None:
    limiter = ct.Limiter(adaptive=True, max_concurrent=4)
    for _ in range(2):
        limiter.observe(httpx.Headers({"content-type": "application/json"}))
    assert limiter.stats()["limits_reason"] == "conservative"
    limiter.observe({})
    assert effective(limiter) == (4, None, None)
    assert limiter.stats()["limits_reason"] == "configured"


def test_bad_arguments_are_named() -> None:
    limiter = ct.Limiter()
    with pytest.raises(TypeError, match="status"):
        limiter.observe({}, status="429")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="status"):
        limiter.observe({}, status=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="requests_limit"):
        limiter._observe(requests_limit=-1)
    with pytest.raises(TypeError, match="tokens_remaining"):
        limiter._observe(tokens_remaining=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="adaptive"):
        ct.Limiter(adaptive=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="requests_limit is too large"):
        limiter._observe(requests_limit=2**80)
    limiter._observe(requests_limit=2**63, requests_remaining=0)  # huge, but a count
    assert effective(limiter) == (None, None, None)  # nothing configured, not adaptive


def test_the_metrics_snapshot_reports_the_limits_in_force() -> None:
    limiter = ct.Limiter(rpm=100)
    limiter._count_retry("rate_limited")
    snapshot = limiter._snapshot()
    assert (snapshot["effective_rpm"], snapshot["limits_reason"]) == (70, "429")


LIMITS = st.one_of(st.none(), st.integers(1, 5_000))
COUNT = st.one_of(st.none(), st.integers(0, 2**53))
EVENTS = st.one_of(
    st.tuples(st.just("observe"), COUNT, COUNT, COUNT, COUNT, st.sampled_from([None, 200, 429])),
    st.tuples(st.just("429")),
    st.tuples(st.just("take"), st.integers(0, 100)),
)


@settings(max_examples=150, deadline=None)
@given(LIMITS, LIMITS, LIMITS, st.booleans(), st.lists(EVENTS, max_size=30))
def test_nothing_learned_ever_raises_a_configured_limit(
    max_concurrent: int | None,
    rpm: int | None,
    tpm: int | None,
    adaptive: bool,
    events: list[tuple[Any, ...]],
) -> None:
    limiter = ct.Limiter(max_concurrent=max_concurrent, rpm=rpm, tpm=tpm, adaptive=adaptive)
    for event in events:
        if event[0] == "observe":
            limiter._observe(*event[1:5], status=event[5])
        elif event[0] == "429":
            limiter._count_retry("rate_limited")
        elif (permit := limiter.try_acquire(min(event[1], tpm or event[1]))) is not None:
            permit.release()
        for configured, now in zip((max_concurrent, rpm, tpm), effective(limiter), strict=True):
            if configured is not None:
                assert now is not None and 1 <= now <= configured


# -- token estimates ----------------------------------------------------------------------------


class Model:
    model = "gpt-test"


def sized(limiter: ct.Limiter, messages: Any, **options: Any) -> shared.Sizing:
    return shared.DEFAULT_ESTIMATOR.size(messages, model=Model(), limiter=limiter, options=options)


def learn(limiter: ct.Limiter, sizing: shared.Sizing, prompt: int, completion: int) -> None:
    shared.DEFAULT_ESTIMATOR.learn(limiter, Model(), sizing, (prompt, completion))


def test_completions_are_learned_as_a_high_quantile_after_enough_samples() -> None:
    limiter = ct.Limiter(tpm=100_000)
    prompt = "x" * 400  # 100 tokens at 4 characters a token
    first = sized(limiter, prompt)
    assert (first.prompt, first.completion, first.tokens) == (100, 256, 356)
    for completion in range(10, 10 + MIN_SAMPLES - 1):
        learn(limiter, first, 100, completion)
    assert sized(limiter, prompt).completion == 256, "the default until enough samples"
    learn(limiter, first, 100, 500)  # the eighth: one large completion among small ones
    assert sized(limiter, prompt).completion == 500  # p90 of 8 is the largest
    for _ in range(SAMPLE_SIZE):
        learn(limiter, first, 100, 70)
    assert sized(limiter, prompt).tokens == 170, "a fixed-size sample: old ones forgotten"
    estimates = ct.token_estimates(limiter)["gpt-test"]
    assert estimates["completion_tokens"] == 70 and estimates["learned_completion"]
    assert estimates["completion_samples"] == SAMPLE_SIZE


def test_prompts_are_sized_with_the_tokens_per_character_reported() -> None:
    limiter = ct.Limiter()
    text = "y" * 300
    sizing = sized(limiter, text)
    assert sizing.prompt == 75
    for _ in range(MIN_SAMPLES):
        learn(limiter, sizing, 100, 20)  # the provider counts 1 token per 3 characters
    assert sized(limiter, text).prompt == 100
    assert ct.token_estimates(limiter)["gpt-test"]["chars_per_token"] == pytest.approx(3.0)


def test_a_call_with_its_own_cap_reserves_the_cap_and_teaches_no_completion_size() -> None:
    limiter = ct.Limiter()
    capped = sized(limiter, "hello", max_tokens=40)
    assert capped.completion == 40 and capped.capped
    for _ in range(MIN_SAMPLES):
        learn(limiter, capped, 2, 40)
    assert sized(limiter, "hello").completion == 256
    assert ct.token_estimates(limiter)["gpt-test"]["completion_samples"] == 0


def test_estimates_are_kept_per_limiter_and_model_and_go_with_the_limiter() -> None:
    one, two = ct.Limiter(), ct.Limiter()
    sizing = sized(one, "hi")
    for _ in range(MIN_SAMPLES):
        learn(one, sizing, 1, 5)
    assert sized(one, "hi").completion == 5 and sized(two, "hi").completion == 256
    assert ct.token_estimates(two) == {"gpt-test": ct.token_estimates(two)["gpt-test"]}
    with pytest.raises(TypeError, match="Limiter"):
        ct.token_estimates("limiter")  # type: ignore[arg-type]


# -- the SDKs' way in: http_hooks, and throttle(tokens=estimate()) ------------------------------


def test_http_hooks_feed_an_openai_clients_responses_to_the_limiter() -> None:
    with FakeProvider(rpm=30, tpm=9_000, window=10.0) as provider:
        limiter = ct.Limiter(adaptive=True)
        hooks = ct.http_hooks(limiter)
        client = openai.OpenAI(
            base_url=provider.base_url,
            api_key="fake",
            max_retries=0,
            http_client=openai.DefaultHttpxClient(event_hooks=hooks),
        )
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        client.close()
    assert effective(limiter) == (None, 30, 9_000)
    with pytest.raises(TypeError, match="asynchronous"):
        ct.http_hooks(limiter, asynchronous="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Limiter"):
        ct.http_hooks(None)  # type: ignore[arg-type]


def test_async_http_hooks_feed_an_async_client() -> None:
    async def main(base_url: str, limiter: ct.Limiter) -> None:
        hooks = ct.http_hooks(limiter, asynchronous=True)
        http = openai.DefaultAsyncHttpxClient(event_hooks=hooks)
        async with openai.AsyncOpenAI(
            base_url=base_url, api_key="fake", max_retries=0, http_client=http
        ) as client:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )

    with FakeProvider(rpm=40, window=10.0) as provider:
        limiter = ct.Limiter(rpm=100)
        asyncio.run(main(provider.base_url, limiter))
    assert effective(limiter) == (None, 40, None)


def test_http_hooks_feed_an_anthropic_clients_responses_to_the_limiter() -> None:
    import anthropic

    with FakeProvider(rpm=50, input_tpm=40_000, output_tpm=8_000, window=10.0) as provider:
        limiter = ct.Limiter(adaptive=True)
        http = anthropic.DefaultHttpxClient(event_hooks=ct.http_hooks(limiter))
        client = anthropic.Anthropic(
            base_url=provider.url, api_key="fake", max_retries=0, http_client=http
        )
        client.messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=100,
            messages=[{"role": "user", "content": "hi"}],
        )
        client.close()
    # tpm binds to Anthropic's tighter token limit (a limiter's tpm counts input and output).
    assert effective(limiter) == (None, 50, 8_000)


def test_a_response_that_is_no_llm_call_is_left_alone() -> None:
    limiter = ct.Limiter(adaptive=True)
    (hook,) = ct.http_hooks(limiter)["response"]
    request = httpx.Request("GET", "http://x/v1/models")
    hook(httpx.Response(200, headers={"x-ratelimit-limit-requests": "7"}, request=request))
    assert limiter.stats()["limits_reason"] == "conservative"
    hook(object())  # unreadable: ignored, never raised into the HTTP client


def test_throttle_with_estimate_sizes_settles_and_learns_from_the_sdks_usage() -> None:
    with FakeProvider(tpm=50_000, window=10.0, completion_tokens=30) as provider:
        limiter = ct.Limiter(tpm=50_000)
        client = openai.OpenAI(base_url=provider.base_url, api_key="fake", max_retries=0)

        @ct.throttle(limiter, tokens=ct.estimate())
        def ask(messages: Any, **options: Any) -> Any:
            return client.chat.completions.create(messages=messages, **options)

        for i in range(MIN_SAMPLES + 1):
            ask([{"role": "user", "content": f"{i:02d}" + "z" * 398}], model="gpt-x")
        client.close()
    estimates = ct.token_estimates(limiter)["gpt-x"]
    assert estimates["completion_tokens"] == 30 and estimates["learned_completion"]
    assert estimates["chars_per_token"] == pytest.approx(4.0)
    stats = limiter.stats()
    assert stats["tokens_granted"] == sum(r.total_tokens for r in provider.log)
    # The first eight reserved 100 + 256, the ninth what was learned: 100 + 30.
    assert stats["tokens_charged"] == 8 * 356 + 130
    with pytest.raises(TypeError, match="model"):
        ct.estimate(model=3)  # type: ignore[arg-type]


# -- the retry layer -------------------------------------------------------------------------


class Refused(Exception):
    """Shaped like ``openai.RateLimitError``: a 429 with its response's headers."""

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__("Error code: 429 - rate limit reached")
        self.status_code = 429
        self.response = httpx.Response(429, headers=headers)


def refuse_once(limiter: ct.Limiter, headers: dict[str, str]) -> None:
    calls: list[int] = []

    @ct.throttle(limiter, retry=ct.backoff(max_tries=2, base=0.0, jitter="none"))
    def call() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise Refused(headers)

    with pytest.raises(Refused):  # the retry waits the reset named, longer than allowed
        call()


def test_a_429_whose_window_the_limiter_counts_pauses_nobody_for_the_reset() -> None:
    headers = {**openai_headers((10, 0), (0, 0)), "x-ratelimit-reset-requests": "50s"}
    counting = ct.Limiter(rpm=10, window=60.0)
    refuse_once(counting, headers)
    stats = counting.stats()
    assert stats["paused_for"] == 0.0, "its window is full instead"
    assert stats["foreign_requests_in_window"] == 9  # the provider counted 10, one ours
    assert counting.try_acquire() is None
    # A limiter that does not count requests can only pause, as before.
    blind = ct.Limiter(max_concurrent=4)
    refuse_once(blind, headers)
    assert blind.stats()["paused_for"] > 40


def test_a_429_with_retry_after_still_pauses_everyone() -> None:
    headers = {**openai_headers((10, 0), (0, 0)), "retry-after": "45"}
    limiter = ct.Limiter(rpm=10, window=60.0)
    refuse_once(limiter, headers)
    assert limiter.stats()["paused_for"] > 40
