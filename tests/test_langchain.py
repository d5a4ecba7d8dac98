"""crewthrottle.langchain against real langchain-core and langchain-openai's ``ChatOpenAI``.

The only fake is the provider (:class:`crewthrottle.testing.FakeProvider`), which counts a
request when it arrives. A limiter counts it when it grants it, a few milliseconds earlier,
and that delay varies: the first burst of a test opens connections while 30 threads share
the GIL on a 2-core machine, and arrives up to ~40 ms later than requests granted alone
afterwards. At the exact edge of a window that is enough for the provider to see one request
too many, so the limiters here count over ``WINDOW + SKEW``: the same rpm and tpm, a window
padded by a margin that covers the skew (a 60 s window takes the same absolute margin).

Each ``ChatOpenAI`` gets its own httpx clients, closed by the test (langchain-openai would
otherwise share cached ones per base URL, and an async one left open to the garbage collector
warns, which ``filterwarnings = error`` turns into a failure).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.rate_limiters import BaseRateLimiter
from langchain_core.runnables import RunnableBinding
from langchain_openai import ChatOpenAI

import crewthrottle as ct
from crewthrottle.langchain import (
    DEFAULT_COMPLETION_TOKENS,
    RateLimiter,
    ThrottledChatModel,
    estimate_tokens,
    rate_limiter,
    throttle_chat_model,
)
from crewthrottle.testing import FakeProvider

T = TypeVar("T")

WINDOW = 1.0
SKEW = 0.1  # see the module docstring
RPM = 10
CALLS = 30


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as client:
        yield client


def chat_openai(
    provider: FakeProvider,
    http: httpx.Client | None = None,
    ahttp: httpx.AsyncClient | None = None,
    **options: Any,
) -> ChatOpenAI:
    options.setdefault("max_retries", 0)
    return ChatOpenAI(
        model="gpt-4o-mini",
        base_url=provider.base_url,
        api_key="fake",  # type: ignore[arg-type]
        http_client=http,
        http_async_client=ahttp,
        **options,
    )


def concurrently(n: int, call: Callable[[int], T]) -> list[T]:
    """Run ``call(i)`` for i in range(n) on ``n`` threads released together by a barrier."""
    barrier = threading.Barrier(n)

    def run(i: int) -> T:
        barrier.wait()
        return call(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def usage(message: AIMessage) -> int:
    assert message.usage_metadata is not None
    return message.usage_metadata["total_tokens"]


def assert_within_limits(provider: FakeProvider, rpm: int | None, tpm: int | None = None) -> None:
    assert provider.count(status=429) == 0
    if rpm is not None:
        assert provider.max_requests_in_any_window() <= rpm
    if tpm is not None:
        assert provider.max_tokens_in_any_window() <= tpm


# -- limiter.as_langchain(): rpm through LangChain's own hook -----------------------------------


def test_as_langchain_is_a_base_rate_limiter() -> None:
    limiter = ct.Limiter(rpm=2, window=60.0, burst=2, max_concurrent=1)
    adapter = limiter.as_langchain()
    assert isinstance(adapter, RateLimiter) and isinstance(adapter, BaseRateLimiter)
    assert adapter.limiter is limiter and "RateLimiter" in repr(adapter)
    assert adapter.acquire() is True
    # The permit went back at once: the concurrency slot is free, the request counted.
    assert limiter.stats()["in_flight"] == 0 and limiter.stats()["requests_in_window"] == 1
    assert asyncio.run(adapter.aacquire()) is True
    assert adapter.acquire(blocking=False) is False  # 2 of 2 requests in the window
    assert asyncio.run(adapter.aacquire(blocking=False)) is False
    assert limiter.stats()["tokens_granted"] == 0  # no weight


def test_rate_limiter_timeout_raises() -> None:
    limiter = ct.Limiter(rpm=1, window=60.0)
    adapter = rate_limiter(limiter, timeout=0.05)
    adapter.acquire()
    # LangChain ignores acquire's result, so a timeout must raise, never return False.
    with pytest.raises(ct.AcquireTimeout):
        adapter.acquire()
    with pytest.raises(ct.AcquireTimeout):
        asyncio.run(adapter.aacquire())
    with pytest.raises(TypeError, match=r"crewthrottle\.Limiter"):
        rate_limiter("limiter")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        rate_limiter(limiter, timeout=-1)


def test_rate_limiter_keeps_rpm_from_threads(http: httpx.Client) -> None:
    with FakeProvider(rpm=RPM, window=WINDOW) as provider:
        limiter = ct.Limiter(rpm=RPM, window=WINDOW + SKEW)
        llm = chat_openai(provider, http, rate_limiter=limiter.as_langchain())
        replies = concurrently(CALLS, lambda i: llm.invoke(f"question {i}"))
    assert all(isinstance(r, AIMessage) and "Final Answer" in r.content for r in replies)
    assert provider.count(status=200) == CALLS
    assert_within_limits(provider, RPM)
    assert provider.utilisation("requests") > 0.8  # paced, not serialised


def test_rate_limiter_keeps_rpm_from_asyncio() -> None:
    async def main(provider: FakeProvider) -> list[AIMessage]:
        limiter = ct.Limiter(rpm=RPM, window=WINDOW + SKEW)
        async with httpx.AsyncClient(timeout=10.0) as ahttp:
            llm = chat_openai(provider, ahttp=ahttp, rate_limiter=limiter.as_langchain())
            return await asyncio.gather(*(llm.ainvoke(f"question {i}") for i in range(CALLS)))

    with FakeProvider(rpm=RPM, window=WINDOW) as provider:
        replies = asyncio.run(main(provider))
    assert all("Final Answer" in r.content for r in replies)
    assert provider.count(status=200) == CALLS
    assert_within_limits(provider, RPM)


def test_rate_limiter_cannot_hold_concurrency(http: httpx.Client) -> None:
    # The documented limitation: LangChain never says when a request ends, so the slot is
    # given back before the request is sent.
    with FakeProvider(latency=0.3) as provider:
        limiter = ct.Limiter(max_concurrent=1)
        llm = chat_openai(provider, http, rate_limiter=limiter.as_langchain())
        concurrently(4, lambda i: llm.invoke(f"q{i}"))
    assert provider.max_in_flight > 1


# -- throttle_chat_model: every limit ------------------------------------------------------------


def test_wrapper_enforces_max_concurrent(http: httpx.Client) -> None:
    with FakeProvider(max_concurrent=3, latency=0.15) as provider:
        limiter = ct.Limiter(max_concurrent=3)
        llm = throttle_chat_model(chat_openai(provider, http), limiter)
        replies = concurrently(12, lambda i: llm.invoke(f"q{i}"))
    assert len(replies) == 12 and provider.count(status=200) == 12
    assert provider.count(status=429) == 0
    assert provider.max_in_flight == 3  # reached, never passed
    assert limiter.stats()["in_flight"] == 0


def test_wrapper_enforces_tpm_and_settles(http: httpx.Client) -> None:
    tpm = 240
    # Prompts of 1 to 16 tokens (4 characters each) plus 20 completion tokens.
    prompts = ["word" * (1 + i % 16) for i in range(20)]
    with FakeProvider(tpm=tpm, window=WINDOW, completion_tokens=20) as provider:
        limiter = ct.Limiter(tpm=tpm, window=WINDOW + SKEW)
        llm = throttle_chat_model(chat_openai(provider, http, max_tokens=20), limiter)
        replies = concurrently(len(prompts), lambda i: llm.invoke(prompts[i]))
    assert_within_limits(provider, None, tpm)
    real = sum(usage(r) for r in replies)
    assert real == sum(r.total_tokens for r in provider.log) > 2 * tpm  # spans windows
    assert limiter.stats()["tokens_granted"] == real


def test_wrapper_keeps_rpm_from_threads_and_asyncio(http: httpx.Client) -> None:
    async def from_asyncio(llm: BaseChatModel) -> list[Any]:
        return await asyncio.gather(*(llm.ainvoke(f"async {i}") for i in range(CALLS // 2)))

    async def main(provider: FakeProvider, limiter: ct.Limiter) -> list[Any]:
        async with httpx.AsyncClient(timeout=10.0) as ahttp:
            llm = throttle_chat_model(chat_openai(provider, http, ahttp), limiter)
            # One limiter shared by an event loop and a thread pool at once.
            threads = asyncio.to_thread(concurrently, CALLS // 2, lambda i: llm.invoke(f"{i}"))
            from_threads, from_loop = await asyncio.gather(threads, from_asyncio(llm))
            return [*from_threads, *from_loop]

    with FakeProvider(rpm=RPM, window=WINDOW) as provider:
        limiter = ct.Limiter(rpm=RPM, window=WINDOW + SKEW, max_concurrent=4)
        replies = asyncio.run(main(provider, limiter))
    assert len(replies) == CALLS and provider.count(status=200) == CALLS
    assert_within_limits(provider, RPM)
    assert limiter.stats()["tokens_granted"] == sum(usage(r) for r in replies)


def test_wrapper_invoke_ainvoke_stream_batch(http: httpx.Client) -> None:
    # No max_tokens: each permit reserves prompt + DEFAULT_COMPLETION_TOKENS, then is settled
    # to the real usage (20 completion tokens).
    async def main(provider: FakeProvider, limiter: ct.Limiter) -> list[Any]:
        async with httpx.AsyncClient(timeout=10.0) as ahttp:
            base = chat_openai(provider, http, ahttp, stream_usage=True)
            llm = throttle_chat_model(base, limiter)
            got: list[Any] = [llm.invoke("one"), await llm.ainvoke("two")]
            got.append(_merge(list(llm.stream("three"))))
            got.append(_merge([c async for c in llm.astream("four")]))
            got.extend(llm.batch(["five", "six", "seven"]))
            got.extend(await llm.abatch(["eight", "nine"]))
            return got

    with FakeProvider(completion_tokens=20) as provider:
        limiter = ct.Limiter(max_concurrent=2, tpm=10_000, window=WINDOW)
        replies = asyncio.run(main(provider, limiter))
    assert len(replies) == 9 == provider.count(status=200)
    assert all("Final Answer" in r.content for r in replies)
    assert [r.stream for r in provider.log].count(True) == 2
    real = sum(usage(r) for r in replies)
    assert real == sum(r.total_tokens for r in provider.log) < 9 * DEFAULT_COMPLETION_TOKENS
    stats = limiter.stats()
    assert stats["tokens_granted"] == real
    assert stats["acquired"] == 9 and stats["in_flight"] == 0


def _merge(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    assert len(chunks) > 1
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    return merged


def test_wrapper_in_a_chain_and_with_tools(http: httpx.Client) -> None:
    def get_weather(city: str) -> str:
        """Today's weather in a city."""
        return "sunny"

    with FakeProvider() as provider:
        limiter = ct.Limiter(max_concurrent=2)
        llm = throttle_chat_model(chat_openai(provider, http, max_tokens=20), limiter)
        chain = ChatPromptTemplate.from_messages([("user", "Tell me about {topic}")])
        assert "Final Answer" in (chain | llm | StrOutputParser()).invoke({"topic": "bees"})

        with_tools = llm.bind_tools([get_weather], tool_choice="auto")
        assert isinstance(with_tools, RunnableBinding) and with_tools.bound is llm
        assert with_tools.kwargs["tools"][0]["function"]["name"] == "get_weather"
        assert isinstance(with_tools.invoke("Weather in Paris?"), AIMessage)
        stats = limiter.stats()
    assert stats["acquired"] == 2 == provider.count(status=200)
    # The bound tools count in the estimate; the settled figure is the real usage.
    assert stats["tokens_granted"] == sum(r.total_tokens for r in provider.log)


def test_wrapper_survives_a_provider_that_429s(http: httpx.Client) -> None:
    # The provider allows half what the limiter lets through: 429s happen, are retried after
    # the wait the provider names (pausing the limiter for every caller), and all succeed.
    calls, max_tries = 15, 8
    # (No rate-limit headers: the limiter would learn the provider's rpm from them at once.)
    with FakeProvider(rpm=5, window=WINDOW, ratelimit_headers=False) as provider:
        limiter = ct.Limiter(rpm=10, window=WINDOW)
        retry = ct.backoff(max_tries=max_tries, base=0.05, max_delay=2.0)
        # max_retries left at the SDK's default (2): the wrapper switches it off.
        model = chat_openai(provider, http, max_retries=None)
        llm = throttle_chat_model(model, limiter, retry=retry)
        replies = concurrently(calls, lambda i: llm.invoke(f"q{i}"))
    assert len(replies) == calls == provider.count(status=200)
    refused = provider.count(status=429)
    assert refused > 0
    stats = limiter.stats()
    # Each 429 cost exactly one retry of ours and no hidden SDK retry.
    assert stats["retries"] == refused and stats["give_ups"] == 0
    assert len(provider.log) == calls + refused <= calls * max_tries


def test_wrapper_gives_up_after_max_tries(http: httpx.Client) -> None:
    with FakeProvider(rpm=1, window=30.0) as provider:
        model = chat_openai(provider, http, max_retries=None)
        assert model.max_retries is None  # the openai SDK would retry twice
        retry = ct.backoff(max_tries=3, base=0.01, respect_retry_after=False)
        llm = throttle_chat_model(model, ct.Limiter(), retry=retry)
        assert isinstance(llm.chat_model, ChatOpenAI) and llm.chat_model.max_retries == 0
        llm.invoke("first")
        with pytest.raises(Exception) as raised:
            llm.invoke("second")
    assert ct.is_rate_limit_error(raised.value)
    assert [r.status for r in provider.log] == [200, 429, 429, 429]  # 3 tries, no more


def test_custom_estimate_stands_without_usage(http: httpx.Client) -> None:
    seen: list[dict[str, Any]] = []

    def estimate(messages: list[Any], **options: Any) -> int:
        seen.append({"messages": messages, **options})
        return 77

    with FakeProvider() as provider:
        limiter = ct.Limiter(tpm=1_000)
        model = chat_openai(provider, http, stream_usage=False)
        llm = throttle_chat_model(model, limiter, estimate_tokens=estimate)
        text = "".join(str(c.content) for c in llm.stream("hello", stop=["END"]))
    assert "Final Answer" in text
    [call] = seen
    assert call["stop"] == ["END"] and call["messages"][0].content == "hello"
    assert limiter.stats()["tokens_granted"] == 77  # the stream reported no usage


def test_estimate_tokens() -> None:
    messages = [SystemMessage("a" * 10), HumanMessage([{"type": "text", "text": "b" * 6}])]
    assert estimate_tokens(messages, max_tokens=50) == 4 + 50  # 16 characters: 4 tokens
    assert estimate_tokens(messages) == 4 + DEFAULT_COMPLETION_TOKENS
    assert estimate_tokens([], max_completion_tokens=5, n=3) == 1 + 15
    model = ChatOpenAI(model="gpt-4o-mini", api_key="fake", max_completion_tokens=30)  # type: ignore[arg-type]
    assert estimate_tokens(messages, model=model) == 4 + 30
    assert estimate_tokens(messages, model=model, max_tokens=7) == 4 + 7  # the call wins
    with_tools = estimate_tokens(messages, max_tokens=1, tools=[{"name": "x" * 40}])
    assert with_tools > 4 + 1


def test_estimate_is_capped_at_tpm(http: httpx.Client) -> None:
    with FakeProvider(completion_tokens=20) as provider:
        limiter = ct.Limiter(tpm=100, window=WINDOW)
        # 1 prompt token + 256 default completion tokens would never fit a 100-token window.
        llm = throttle_chat_model(chat_openai(provider, http), limiter)
        with pytest.warns(RuntimeWarning, match="one call per window at most"):
            assert usage(llm.invoke("hi")) == 21  # said once: the cap serialises the calls
        with pytest.raises(ValueError):  # a prompt alone larger than the tpm can never fit
            llm.invoke("x" * 800)
    assert provider.count() == 1


def test_throttle_chat_model_checks_its_arguments(http: httpx.Client) -> None:
    with FakeProvider() as provider:
        model = chat_openai(provider, http, include_response_headers=True)
        limiter = ct.Limiter(max_concurrent=1)
        with pytest.raises(TypeError, match="chat model"):
            throttle_chat_model("gpt-4o", limiter)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"crewthrottle\.Limiter"):
            throttle_chat_model(model, None)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="backoff"):
            throttle_chat_model(model, limiter, retry=3)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="callable"):
            throttle_chat_model(model, limiter, estimate_tokens=5)  # type: ignore[arg-type]
        llm = throttle_chat_model(model, limiter)
        # Retries 0 and response headers included already: nothing to rebuild.
        assert isinstance(llm, ThrottledChatModel) and llm.chat_model is model
        assert llm.retry.limiter is limiter
        with pytest.raises(ValueError, match="already throttled"):
            throttle_chat_model(llm, limiter)
        bad = throttle_chat_model(model, limiter, estimate_tokens=lambda m, **o: -1)
        with pytest.raises(ValueError, match="estimate_tokens"):
            bad.invoke("hi")
    assert provider.count() == 0


def test_wrapper_takes_over_the_models_options(http: httpx.Client) -> None:
    with FakeProvider() as provider:
        model = chat_openai(provider, http, tags=["mine"], metadata={"team": "a"})
        llm = throttle_chat_model(model, ct.Limiter())
        assert llm.tags == ["mine"] and llm.metadata is not None
        assert llm.metadata["team"] == "a"
        assert llm._llm_type == "crewthrottle-openai-chat"
        assert llm._get_ls_params()["ls_model_name"] == "gpt-4o-mini"


# -- LangChain stays optional ----------------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_import_crewthrottle_does_not_import_langchain() -> None:
    done = run_python(
        "import sys, crewthrottle\nassert 'langchain_core' not in sys.modules, 'imported'"
    )
    assert done.returncode == 0, done.stderr


def test_without_langchain_the_error_says_what_to_install() -> None:
    # A None in sys.modules makes "import langchain_core" fail as if it were not installed.
    done = run_python(
        "import sys\n"
        "sys.modules['langchain_core'] = None\n"
        "import crewthrottle\n"
        "try:\n"
        "    crewthrottle.Limiter().as_langchain()\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    assert done.returncode == 0, done.stderr
    assert 'pip install "crewthrottle[langchain]"' in done.stdout
    assert "langchain_core" in done.stdout
