"""Anthropic, first class: the fake provider's Messages API read by the real ``anthropic`` SDK,
and crewthrottle's integrations against it — CrewAI's native Anthropic provider, CrewAI over
LiteLLM with an Anthropic model, and ``langchain-anthropic``'s ``ChatAnthropic``.

The provider enforces requests, input tokens and output tokens per window separately, output
estimated from ``max_tokens`` at arrival and corrected when the reply ends, as Anthropic does.
"""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import anthropic
import httpx
import pytest

import crewthrottle as ct
from crewthrottle.testing import FakeProvider

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # CrewAI's own ImportWarnings at import time
    from crewai import LLM, Agent, Crew, Task
    from langchain_anthropic import ChatAnthropic

from tests._crewai import MARKS

from crewthrottle.crewai import kickoff_all, throttle_llm
from crewthrottle.langchain import throttle_chat_model

pytestmark = MARKS

MODEL = "claude-3-5-haiku-latest"
WINDOW = 2.0


def ask(client: anthropic.Anthropic, text: str = "hi", max_tokens: int = 100) -> Any:
    return client.messages.create(
        model=MODEL, max_tokens=max_tokens, messages=[{"role": "user", "content": text}]
    )


# -- the fake's Messages API, read by the real SDK ----------------------------------------------


def test_messages_api_answers_like_anthropic_streaming_included() -> None:
    with FakeProvider(rpm=60, input_tpm=10_000, output_tpm=2_000, window=WINDOW) as provider:
        client = anthropic.Anthropic(base_url=provider.url, api_key="fake", max_retries=0)
        raw = client.messages.with_raw_response.create(
            model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "Say hi " * 10}]
        )
        message = raw.parse()
        with client.messages.stream(
            model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "again"}]
        ) as stream:
            text = "".join(stream.text_stream)
            streamed = stream.get_final_message()

    assert "Final Answer" in message.content[0].text and message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (18, 20)
    headers = raw.headers
    assert headers["anthropic-ratelimit-requests-limit"] == "60"
    assert headers["anthropic-ratelimit-input-tokens-limit"] == "10000"
    assert headers["anthropic-ratelimit-output-tokens-remaining"] == str(2_000 - 100)
    assert headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert "Final Answer" in text and streamed.usage.output_tokens == 20
    assert [r.stream for r in provider.log] == [False, True]


def test_output_tokens_are_reserved_from_max_tokens_and_corrected_at_the_end() -> None:
    """Output 1,000 per window: a request asking max_tokens=600 is counted 600 while it runs
    and 20 (its real output) afterwards, as Anthropic estimates and adjusts."""
    with FakeProvider(output_tpm=1_000, window=60.0, latency=0.3) as provider:
        client = anthropic.Anthropic(base_url=provider.url, api_key="fake", max_retries=0)

        async def two_at_once() -> list[Any]:
            aclient = anthropic.AsyncAnthropic(base_url=provider.url, api_key="f", max_retries=0)
            async with aclient:
                calls = [
                    aclient.messages.create(
                        model=MODEL, max_tokens=600, messages=[{"role": "user", "content": "x"}]
                    )
                    for _ in range(2)
                ]
                return await asyncio.gather(*calls, return_exceptions=True)

        outcomes = asyncio.run(two_at_once())
        after = ask(client, max_tokens=900)  # 20 + 900 fits once the first was corrected

    refused = [o for o in outcomes if isinstance(o, anthropic.RateLimitError)]
    assert len(refused) == 1, outcomes  # 600 + 600 > 1,000 while both would run
    assert refused[0].body["error"]["type"] == "rate_limit_error"
    assert int(refused[0].response.headers["retry-after"]) >= 1
    assert "output tokens per minute" in refused[0].message
    assert after.usage.output_tokens == 20
    assert [r.reason for r in provider.log if r.status == 429] == ["output_tokens"]


def test_input_tokens_are_limited_separately_from_requests() -> None:
    with FakeProvider(rpm=100, input_tpm=50, window=60.0) as provider:
        client = anthropic.Anthropic(base_url=provider.url, api_key="fake", max_retries=0)
        ask(client, "x" * 160)  # 40 input tokens
        with pytest.raises(anthropic.RateLimitError) as raised:
            ask(client, "x" * 80)  # 20 more would make 60 > 50
    assert "input tokens per minute" in raised.value.message
    assert provider.log[-1].reason == "input_tokens"


def test_overloaded_is_a_529_with_retry_after_and_backoff_survives_it() -> None:
    with FakeProvider(window=WINDOW) as provider:
        client = anthropic.Anthropic(base_url=provider.url, api_key="fake", max_retries=0)
        provider.overload(1)
        with pytest.raises(anthropic.APIStatusError) as raised:
            ask(client)
        assert raised.value.status_code == 529
        assert raised.value.body["error"]["type"] == "overloaded_error"
        assert ct.is_rate_limit_error(raised.value) and ct.retry_after(raised.value) == 1.0

        limiter = ct.Limiter(rpm=60, window=WINDOW)
        provider.overload(1)
        reply = ct.throttle(limiter, retry=ct.backoff(max_tries=3, base=0.01))(ask)(client)
    assert reply.usage.output_tokens == 20
    assert [r.status for r in provider.log] == [529, 529, 200]
    assert limiter.stats()["retries"] == 1


def test_a_request_without_max_tokens_is_refused_as_anthropic_does() -> None:
    with FakeProvider() as provider:
        reply = httpx.post(
            f"{provider.url}/v1/messages",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        )
    assert reply.status_code == 400 and reply.json()["error"]["type"] == "invalid_request_error"


# -- CrewAI with Claude: native provider and LiteLLM --------------------------------------------


def crews(provider: FakeProvider, count: int, **llm_options: Any) -> list[Crew]:
    made = []
    for i in range(count):
        llm = LLM(model=f"anthropic/{MODEL}", base_url=provider.url, api_key="f", **llm_options)
        agent = Agent(role="Writer", goal="Write one line", backstory="Terse.", llm=llm)
        task = Task(description=f"Say hello to #{i}.", expected_output="A line.", agent=agent)
        made.append(Crew(agents=[agent], tasks=[task]))
    return made


@pytest.mark.parametrize("litellm", [False, True], ids=["native", "litellm"])
def test_twenty_claude_crews_without_a_single_429(litellm: bool) -> None:
    limits = {"rpm": 10, "max_concurrent": 4, "window": WINDOW}
    with FakeProvider(latency=0.05, input_tpm=20_000, output_tpm=20_000, **limits) as provider:
        limiter = ct.Limiter(**limits, tpm=20_000, margin=0.05)
        outputs = kickoff_all(
            crews(provider, 20, is_litellm=litellm, max_tokens=1_000), limiter=limiter
        )

    assert all("fake answer" in output.raw for output in outputs)
    assert provider.count(status=429) == 0
    assert provider.count() == limiter.stats()["acquired"] == 20
    assert provider.max_requests_in_any_window() <= 10
    # Each permit was settled to Anthropic's usage: input plus output tokens.
    assert limiter.stats()["tokens_granted"] == sum(r.total_tokens for r in provider.log)


def test_claudes_huge_default_max_tokens_is_said_once_not_silently_serialised() -> None:
    """CrewAI sets max_tokens to the model's maximum for Claude: reserved in full, as the
    provider counts it, it lets one call per window through — and the user is told."""
    with FakeProvider(window=WINDOW) as provider:
        llm = LLM(model=f"anthropic/{MODEL}", base_url=provider.url, api_key="f")
        assert llm.max_tokens is not None and llm.max_tokens >= 20_000
        limiter = ct.Limiter(rpm=60, tpm=20_000, window=WINDOW)
        with pytest.warns(RuntimeWarning, match=r"one call per window at most.*max_tokens"):
            throttled = throttle_llm(llm, limiter)
        throttled.call("hi")
    assert provider.count(status=200) == 1


def test_native_claude_retries_a_429_once_per_try_with_the_sdk_retries_off() -> None:
    # No rate-limit headers: from them the limiter would learn rpm=1 and wait, not retry.
    with FakeProvider(rpm=1, window=60.0, retry_after=True, ratelimit_headers=False) as provider:
        llm = LLM(model=f"anthropic/{MODEL}", base_url=provider.url, api_key="f", max_tokens=100)
        limiter = ct.Limiter(rpm=100, window=60.0)
        throttled = throttle_llm(llm, limiter, retry=ct.backoff(max_tries=2, max_delay=0.5))
        throttled.call("first")
        with pytest.raises(Exception, match="rate") as raised:
            throttled.call("second")  # the provider says wait 60 s: more than max_delay
    assert provider.count(status=429) == 1, "one HTTP request per try, no SDK retry"
    assert any("gave up" in note for note in getattr(raised.value, "__notes__", []))
    assert limiter.stats()["paused_for"] > 30, "the provider's wait paused the limiter"


# -- langchain-anthropic --------------------------------------------------------------------------


def test_chat_anthropic_is_throttled_streaming_included() -> None:
    limits = {"rpm": 6, "window": 1.0}
    with FakeProvider(input_tpm=5_000, output_tpm=5_000, **limits) as provider:
        model = ChatAnthropic(
            model_name=MODEL, base_url=provider.url, api_key="f", max_tokens=200, timeout=10
        )
        limiter = ct.Limiter(**limits, tpm=5_000, max_concurrent=2, margin=0.05)
        llm = throttle_chat_model(model, limiter)
        assert llm.chat_model.max_retries == 0, "the SDK's own retries are off"
        replies = llm.batch([f"question {i}" for i in range(8)])
        chunks = list(llm.stream("stream me"))

    assert all("Final Answer" in r.content for r in replies)
    assert "Final Answer" in "".join(str(c.content) for c in chunks)
    assert provider.count(status=429) == 0 and provider.max_requests_in_any_window() <= 6
    assert limiter.stats()["acquired"] == provider.count() == 9
    assert limiter.stats()["tokens_granted"] == sum(r.total_tokens for r in provider.log)
