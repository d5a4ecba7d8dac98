"""crewthrottle.testing: the fake rate-limited OpenAI-compatible provider and its pytest plugin.

Clients are the real ``openai`` SDK (``max_retries=0``: the SDK retries 429s by default) and
raw ``httpx`` where headers matter. Waits are computed from the provider's log, never guessed.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import openai
import pytest

from crewthrottle.testing import FakeProvider, RequestRecord, format_duration
from crewthrottle.testing import _stats as stats
from crewthrottle.testing._limits import Admission, Limits

pytest_plugins = ["crewthrottle.testing.pytest_plugin", "pytester"]

T = TypeVar("T")
MODEL = "gpt-4o-mini"
DURATION = r"\d+ms|(\d+h)?(\d+m)?\d+(\.\d+)?s"  # OpenAI's reset format: 20ms, 1.5s, 6m0s


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as client:
        yield client


def sdk(provider: FakeProvider) -> openai.OpenAI:
    return openai.OpenAI(base_url=provider.base_url, api_key="fake", max_retries=0, timeout=10.0)


def chat(
    http: httpx.Client, provider: FakeProvider, content: str | list[Any] = "hi", **extra: Any
) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}
    return http.post(f"{provider.base_url}/chat/completions", json=body)


def concurrently(n: int, call: Callable[[], T]) -> list[T]:
    """Run ``call`` on ``n`` threads released together by a barrier."""
    barrier = threading.Barrier(n)

    def run() -> T:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(n) as pool:
        return [f.result() for f in [pool.submit(run) for _ in range(n)]]


def sleep_until(deadline: float) -> None:
    """Sleep until ``time.monotonic()`` (the log's clock) has passed ``deadline``."""
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(left)


def statuses(responses: list[httpx.Response]) -> list[int]:
    return sorted(r.status_code for r in responses)


def error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


# -- replies -----------------------------------------------------------------------------------


def test_sdk_parses_a_deterministic_final_answer() -> None:
    with FakeProvider() as provider, sdk(provider) as client:
        messages: Any = [
            {"role": "system", "content": "You are a researcher."},
            {"role": "user", "content": "Summarise the news"},
        ]
        first = client.chat.completions.create(model="my-model", messages=messages)
        again = client.chat.completions.create(model="my-model", messages=messages)
        other = client.chat.completions.create(
            model="my-model", messages=[{"role": "user", "content": "Something else"}]
        )
    content = first.choices[0].message.content or ""
    assert content.startswith("Thought: I now know the final answer\nFinal Answer: fake answer #")
    assert again.choices[0].message.content == content != other.choices[0].message.content
    assert first.object == "chat.completion" and first.model == "my-model"
    assert first.choices[0].finish_reason == "stop" and first.choices[0].message.role == "assistant"
    assert first.usage is not None
    # 20 + 18 characters of text: 38 / 4 rounded up.
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (10, 20)
    assert first.usage.total_tokens == 30
    assert first.id != again.id
    [record, *_] = provider.log
    assert (record.status, record.reason, record.model, record.stream) == (
        200,
        None,
        "my-model",
        False,
    )
    assert (record.prompt_tokens, record.completion_tokens, record.in_flight) == (10, 20, 0)
    assert record.start <= record.end


def test_token_estimate_and_max_tokens(http: httpx.Client) -> None:
    with FakeProvider(completion_tokens=20) as provider:
        parts = [{"type": "text", "text": "a" * 9}, {"type": "image_url", "image_url": {}}]
        assert chat(http, provider, parts).json()["usage"]["prompt_tokens"] == 3
        assert chat(http, provider, "").json()["usage"]["prompt_tokens"] == 1
        assert chat(http, provider, max_tokens=5).json()["usage"]["completion_tokens"] == 5
        usage = chat(http, provider, max_completion_tokens=7).json()["usage"]
        assert usage["completion_tokens"] == 7
        assert chat(http, provider, max_tokens=500).json()["usage"]["completion_tokens"] == 20


def test_streaming_through_the_sdk() -> None:
    with FakeProvider() as provider, sdk(provider) as client:
        messages: Any = [{"role": "user", "content": "stream please"}]
        whole = client.chat.completions.create(model=MODEL, messages=messages)
        chunks = list(
            client.chat.completions.create(
                model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
            )
        )
        plain = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])
    assert all(c.choices and c.usage is None for c in plain)
    assert [r.stream for r in provider.log] == [False, True, True]


def test_paths_and_bad_requests(http: httpx.Client) -> None:
    with FakeProvider() as provider:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
        assert http.post(f"{provider.url}/chat/completions", json=body).status_code == 200
        assert http.post(f"{provider.base_url}/embeddings", json=body).status_code == 404
        assert http.get(f"{provider.base_url}/models").status_code == 404
        bad = http.post(f"{provider.base_url}/chat/completions", content=b"{not json")
        assert bad.status_code == 400 and error(bad)["type"] == "invalid_request_error"
        missing = http.post(f"{provider.base_url}/chat/completions", json={"model": MODEL})
        assert missing.status_code == 400
        assert provider.count() == 1


def test_many_concurrent_connections(http: httpx.Client) -> None:
    with FakeProvider(latency=0.05) as provider:
        responses = concurrently(64, lambda: chat(http, provider))
    assert statuses(responses) == [200] * 64
    assert provider.count(status=200) == 64


# -- limits ------------------------------------------------------------------------------------


def test_rpm_burst_admits_exactly_the_limit(http: httpx.Client) -> None:
    with FakeProvider(rpm=5, window=1.0) as provider:
        burst = concurrently(8, lambda: chat(http, provider))
        assert statuses(burst) == [200] * 5 + [429] * 3
        refused = next(r for r in burst if r.status_code == 429)
        assert error(refused) == {
            "message": error(refused)["message"],
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
        assert error(refused)["message"].startswith(
            f"Rate limit reached for {MODEL} in organization org-fake on requests per min (RPM): "
            "Limit 5, Used 5, Requested 1. Please try again in "
        )
        headers = refused.headers
        assert headers["x-ratelimit-limit-requests"] == "5"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert re.fullmatch(r"\d+ms|1s", headers["x-ratelimit-reset-requests"])  # <= 1 s
        assert "retry-after" not in headers and "retry-after-ms" not in headers
        assert "x-ratelimit-limit-tokens" not in headers  # no tpm configured
        accepted = [r for r in provider.log if r.accepted]
        assert [r.reason for r in provider.log if not r.accepted] == ["requests"] * 3

        # Once the last accepted request has left the window, the full limit is back.
        sleep_until(max(r.start for r in accepted) + 1.0)
        assert statuses(concurrently(5, lambda: chat(http, provider))) == [200] * 5
        assert chat(http, provider).status_code == 429
    assert provider.max_requests_in_any_window() == 5
    assert provider.max_requests_in_any_window(window=10.0) == 10


def test_rpm_window_slides(http: httpx.Client) -> None:
    # A fixed window would admit E (it restarts at a + 1); a sliding one still counts B.
    with FakeProvider(rpm=2, window=1.0, retry_after="ms") as provider:
        assert chat(http, provider).status_code == 200  # A
        a = provider.log[0].start
        sleep_until(a + 0.5)
        assert chat(http, provider).status_code == 200  # B
        c = chat(http, provider)
        assert c.status_code == 429  # A and B are in the window
        c_start = provider.log[-1].start
        assert int(c.headers["retry-after-ms"]) == math.ceil((a + 1.0 - c_start) * 1000)
        sleep_until(a + 1.05)
        assert chat(http, provider).status_code == 200  # D: A has left, B has not
        assert chat(http, provider).status_code == 429  # E: B and D are in the window
    log = provider.log
    assert [r.status for r in log] == [200, 200, 429, 200, 429]
    assert log[4].start < log[1].start + 1.0  # E really arrived while B counted


def test_tpm(http: httpx.Client) -> None:
    text = "x" * 160  # 40 prompt tokens + 20 completion tokens = 60 a request
    with FakeProvider(tpm=100, window=1.0, retry_after="both") as provider:
        first = chat(http, provider, text)
        assert first.status_code == 200
        assert first.headers["x-ratelimit-remaining-tokens"] == "40"
        assert first.headers["x-ratelimit-limit-tokens"] == "100"
        assert "x-ratelimit-limit-requests" not in first.headers
        refused = chat(http, provider, text)
        assert refused.status_code == 429
        assert error(refused)["type"] == "tokens"
        assert error(refused)["code"] == "rate_limit_exceeded"
        assert (
            "on tokens per min (TPM): Limit 100, Used 60, Requested 60. Please try again in"
            in (error(refused)["message"])
        )
        assert {"retry-after", "retry-after-ms"} <= set(refused.headers)
        assert chat(http, provider, "abcd", max_tokens=20).status_code == 200  # 21 tokens fit

        too_large = chat(http, provider, "x" * 1000)
        assert too_large.status_code == 429
        assert error(too_large)["message"].startswith(
            f"Request too large for {MODEL} in organization org-fake on tokens per min (TPM): "
            "Limit 100, Requested 270."
        )
        assert "retry-after" not in too_large.headers  # retrying can never help

        sleep_until(provider.log[0].start + 1.0)
        assert chat(http, provider, text).status_code == 200  # 21 + 60 <= 100
    assert provider.max_tokens_in_any_window() <= 100
    assert [r.reason for r in provider.log] == [None, "tokens", None, "tokens", None]


def test_concurrency_limit_with_latency(http: httpx.Client) -> None:
    with FakeProvider(max_concurrent=2, latency=0.5, retry_after="ms") as provider:
        responses = concurrently(5, lambda: chat(http, provider))
    assert statuses(responses) == [200, 200, 429, 429, 429]
    refused = [r for r in responses if r.status_code == 429]
    assert {error(r)["type"] for r in refused} == {"requests"}
    assert all("Too many concurrent requests" in error(r)["message"] for r in refused)
    assert all(0 < int(r.headers["retry-after-ms"]) <= 500 for r in refused)
    assert provider.max_in_flight == 2
    assert [r.in_flight for r in provider.log if r.reason == "concurrency"] == [2, 2, 2]
    assert all(r.end - r.start >= 0.5 for r in provider.log if r.accepted)
    assert all(r.end - r.start < 0.5 for r in provider.log if not r.accepted)


def test_latency_counts_requests_in_flight(http: httpx.Client) -> None:
    with FakeProvider(latency=lambda: 0.3) as provider:
        assert statuses(concurrently(4, lambda: chat(http, provider))) == [200] * 4
        assert provider.in_flight == 0
    assert provider.max_in_flight == 4
    assert sorted(r.in_flight for r in provider.log) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (False, set()),
        (True, {"retry-after"}),
        ("seconds", {"retry-after"}),
        ("ms", {"retry-after-ms"}),
        ("both", {"retry-after", "retry-after-ms"}),
    ],
)
def test_retry_after_only_when_asked(option: Any, expected: set[str]) -> None:
    with FakeProvider(rpm=1, window=1.0, retry_after=option) as provider, sdk(provider) as client:
        messages: Any = [{"role": "user", "content": "hi"}]
        ok = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages)
        assert not {"retry-after", "retry-after-ms"} & set(ok.headers)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model=MODEL, messages=messages)
    headers = caught.value.response.headers
    assert {"retry-after", "retry-after-ms"} & set(headers) == expected
    if "retry-after" in headers:
        assert headers["retry-after"] == "1"  # < 1 s left, rounded up to whole seconds
    if "retry-after-ms" in headers:
        assert 0 < int(headers["retry-after-ms"]) <= 1000
    assert caught.value.code == "rate_limit_exceeded"


@pytest.mark.parametrize("consume", [True, False])
def test_rejected_consume_quota(http: httpx.Client, consume: bool) -> None:
    with FakeProvider(rpm=2, window=1.0, rejected_consume_quota=consume) as provider:
        assert chat(http, provider).status_code == 200  # A
        sleep_until(provider.log[0].start + 0.3)
        assert chat(http, provider).status_code == 200  # B
        assert chat(http, provider).status_code == 429  # C
        sleep_until(provider.log[0].start + 1.0)
        # A has left the window; B and, if refusals count, C are still in it.
        assert chat(http, provider).status_code == (429 if consume else 200)
        assert provider.log[-1].start < provider.log[2].start + 1.0


def test_insufficient_quota(http: httpx.Client) -> None:
    with FakeProvider(quota_exhausted=True, rpm=100) as provider, sdk(provider) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}]
            )
        assert caught.value.code == "insufficient_quota"
        raw = chat(http, provider)
        assert raw.status_code == 429
        assert error(raw) == {
            "message": "You exceeded your current quota, please check your plan and billing "
            "details.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
        assert "retry-after" not in raw.headers
        provider.quota_exhausted = False
        assert chat(http, provider).status_code == 200
    assert [r.reason for r in provider.log] == ["quota", "quota", None]
    assert provider.count(status=429, reason="quota") == 2


def test_admission_rules_with_a_fake_clock() -> None:
    limits = Limits(rpm=2, tpm=100, max_concurrent=None, window=1.0, rejected_consume_quota=False)
    admission = Admission(limits)
    assert admission.admit(0.0, 30, 0.0).accepted
    assert admission.admit(0.5, 50, 0.0).accepted
    refused = admission.admit(0.6, 10, 0.0)
    assert (refused.reason, refused.retry_in, refused.used_requests) == ("requests", 0.4, 2)
    assert refused.requests is not None and refused.requests.reset == pytest.approx(0.9)
    assert admission.admit(1.0, 10, 0.0).accepted  # the start at 0.0 has just left
    both = admission.admit(1.2, 45, 0.0)  # 2 requests and 50 + 10 + 45 tokens until 1.5
    assert both.reason == "requests" and both.retry_in == pytest.approx(0.3)
    too_large = admission.admit(1.2, 101, 0.0)
    assert (too_large.reason, too_large.retry_in) == ("tokens", None)
    assert admission.admit(1.5, 45, 0.0).accepted
    assert admission.max_in_flight == 4  # latency 0, but nothing released them

    tokens_only = Admission(
        Limits(rpm=None, tpm=100, max_concurrent=None, window=1.0, rejected_consume_quota=True)
    )
    assert tokens_only.admit(0.0, 60, 0.0).accepted and tokens_only.admit(0.2, 30, 0.0).accepted
    refused = tokens_only.admit(0.3, 50, 0.0)  # fits once the 60 at 0.0 has left
    assert (refused.reason, refused.retry_in, refused.used_tokens) == ("tokens", 0.7, 90)
    assert refused.tokens is not None and refused.tokens.remaining == 10
    assert tokens_only.admit(0.3, 10, 0.0).accepted


# -- log figures -------------------------------------------------------------------------------


def record(start: float, status: int = 200, tokens: int = 10) -> RequestRecord:
    return RequestRecord(start, start, status, tokens, 0, 0, None, MODEL)


def test_max_in_any_window_counts_accepted_starts_within_the_window() -> None:
    log = [record(0.0), record(0.5), record(0.99), record(1.0), record(1.2, 429), record(1.4)]
    # 0.5 to 1.4 (0.0 to 1.0 is not: 1.0 - 0.0 is not below the window)
    assert stats.max_in_any_window(log, 1.0, stats.one) == 4
    assert stats.max_in_any_window(log, 1.0, stats.tokens) == 40
    assert stats.max_in_any_window(log, 0.1, stats.one) == 2  # 0.99 and 1.0
    assert stats.max_in_any_window(log, 0.005, stats.one) == 1
    assert stats.max_in_any_window([], 1.0, stats.one) == 0


def test_utilisation_definition() -> None:
    # Bursts of 4 at every window: full use. Evenly spread at the limit: full use.
    bursts = [record(k + i * 0.001) for k in range(5) for i in range(4)]
    assert stats.utilisation(bursts, 4, 1.0, stats.one) == 1.0
    even = [record(i / 4) for i in range(21)]
    assert stats.utilisation(even, 4, 1.0, stats.one) == 1.0
    half = [record(i / 2) for i in range(11)]
    assert stats.utilisation(half, 4, 1.0, stats.one) == 0.5
    assert stats.utilisation(half, 100, 1.0, stats.tokens) == 0.2
    with pytest.raises(ValueError, match="two windows"):
        stats.utilisation([record(0.0), record(1.5)], 4, 1.0, stats.one)


def test_utilisation_of_a_client_that_waits_out_each_burst(http: httpx.Client) -> None:
    with FakeProvider(rpm=4, tpm=10_000, window=0.25) as provider:
        for _ in range(5):
            batch_start = time.monotonic()
            assert statuses(concurrently(4, lambda: chat(http, provider))) == [200] * 4
            last = max(r.start for r in provider.log if r.start >= batch_start)
            sleep_until(last + 0.25)
        assert 0.9 <= provider.utilisation() == provider.utilisation("requests") <= 1.0
        assert provider.utilisation("tokens") < 0.1
    with FakeProvider(tpm=100) as provider, pytest.raises(ValueError, match="rpm or tpm"):
        provider.utilisation("requests")


def test_reset_forgets_log_and_windows(http: httpx.Client) -> None:
    with FakeProvider(rpm=1, window=60.0) as provider:
        assert chat(http, provider).status_code == 200
        assert chat(http, provider).status_code == 429
        provider.reset()
        assert provider.log == [] and provider.max_in_flight == 0
        assert chat(http, provider).status_code == 200


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.0001, "1ms"),
        (0.02, "20ms"),
        (0.999, "999ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (8.64, "8.64s"),
        (86.4, "1m26.4s"),
        (360.0, "6m0s"),
        (3723.0, "1h2m3s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# -- lifecycle and options ---------------------------------------------------------------------


def test_start_stop(http: httpx.Client) -> None:
    provider = FakeProvider()
    with pytest.raises(RuntimeError, match="not running"):
        _ = provider.base_url
    assert provider.start() is provider
    assert provider.base_url == f"http://127.0.0.1:{provider.port}/v1"
    with pytest.raises(RuntimeError, match="already running"):
        provider.start()
    assert chat(http, provider).status_code == 200
    url = provider.base_url
    provider.stop()
    provider.stop()
    assert not provider.running
    with pytest.raises(httpx.ConnectError):
        http.post(f"{url}/chat/completions", json={"messages": []})
    with provider:
        assert chat(http, provider).status_code == 200
    assert provider.count() == 2


def test_stop_ends_requests_in_their_latency() -> None:
    before = set(threading.enumerate())
    provider = FakeProvider(latency=30.0).start()
    outcome: list[BaseException | int] = []

    def call() -> None:
        with httpx.Client(timeout=10.0) as client:
            try:
                outcome.append(chat(client, provider).status_code)
            except httpx.HTTPError as exc:
                outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    while provider.in_flight == 0:
        time.sleep(0.01)
    began = time.monotonic()
    provider.stop()
    assert time.monotonic() - began < 2.0
    caller.join(5.0)
    assert not caller.is_alive() and len(outcome) == 1
    assert set(threading.enumerate()) <= before  # no server or handler thread left behind


def test_repr_shows_configuration_and_state() -> None:
    provider = FakeProvider(rpm=3, window=2.0)
    assert "stopped" in repr(provider) and "rpm=3" in repr(provider)
    with provider:
        assert provider.url in repr(provider)


@pytest.mark.parametrize(
    ("options", "error", "name"),
    [
        ({"rpm": -1}, ValueError, "rpm"),
        ({"rpm": 0}, ValueError, "rpm"),
        ({"tpm": 0}, ValueError, "tpm"),
        ({"max_concurrent": 0}, ValueError, "max_concurrent"),
        ({"window": 0}, ValueError, "window"),
        ({"window": -1.0}, ValueError, "window"),
        ({"window": float("inf")}, ValueError, "window"),
        ({"latency": -0.1}, ValueError, "latency"),
        ({"latency": float("nan")}, ValueError, "latency"),
        ({"completion_tokens": 0}, ValueError, "completion_tokens"),
        ({"port": 70_000}, ValueError, "port"),
        ({"retry_after": "minutes"}, ValueError, "retry_after"),
        ({"rpm": 2.5}, TypeError, "rpm"),
        ({"rpm": True}, TypeError, "rpm"),
        ({"window": "60"}, TypeError, "window"),
        ({"rejected_consume_quota": 1}, TypeError, "rejected_consume_quota"),
        ({"quota_exhausted": "yes"}, TypeError, "quota_exhausted"),
    ],
)
def test_bad_options(options: dict[str, Any], error: type[Exception], name: str) -> None:
    with pytest.raises(error, match=rf"^{name} "):
        FakeProvider(**options)


def test_a_failing_latency_callable_answers_500(http: httpx.Client) -> None:
    with FakeProvider(latency=lambda: -1.0) as provider:
        response = chat(http, provider)
    assert response.status_code == 500 and "latency" in error(response)["message"]


# -- pytest plugin -----------------------------------------------------------------------------


def test_fixture_default_has_no_limits(fake_llm_provider: FakeProvider, http: httpx.Client) -> None:
    assert fake_llm_provider.running and fake_llm_provider.base_url.endswith("/v1")
    assert statuses(concurrently(10, lambda: chat(http, fake_llm_provider))) == [200] * 10


@pytest.mark.parametrize("fake_llm_provider", [{"tpm": 30}, {"rpm": 1}], indirect=True)
def test_indirect_param_sets_options(fake_llm_provider: FakeProvider, http: httpx.Client) -> None:
    assert chat(http, fake_llm_provider).status_code == 200
    assert chat(http, fake_llm_provider).status_code == 429


# Markers are tested in a fresh session: this module loads the plugin through `pytest_plugins`,
# which pytest reads only after the module's decorators have run, too late to register the
# marker for them (and `filterwarnings = error` makes the unknown-mark warning fatal).
MARKER_TESTS = """
import httpx, pytest

seen = []
BODY = {"messages": [{"role": "user", "content": "hi"}]}

def statuses(provider, n):
    url = provider.base_url + "/chat/completions"
    return [httpx.post(url, json=BODY).status_code for _ in range(n)]

@pytest.mark.fake_llm_provider(rpm=1, window=30.0, retry_after="seconds")
def test_marker_sets_options(fake_llm_provider):
    seen.append(fake_llm_provider)
    assert statuses(fake_llm_provider, 2) == [200, 429]
    refused = httpx.post(fake_llm_provider.base_url + "/chat/completions", json=BODY)
    assert refused.headers["retry-after"] == "30"

def test_stopped_after_the_test():
    assert not seen[0].running

@pytest.mark.fake_llm_provider(rpm=1)
class TestClassMarker:
    def test_inherits(self, fake_llm_provider):
        assert statuses(fake_llm_provider, 2) == [200, 429]

    @pytest.mark.fake_llm_provider(rpm=3)
    def test_closest_wins(self, fake_llm_provider):
        assert statuses(fake_llm_provider, 4) == [200, 200, 200, 429]

@pytest.mark.fake_llm_provider(rpm=1, tpm=1000)
@pytest.mark.parametrize("fake_llm_provider", [{"rpm": 2}], indirect=True)
def test_param_overrides_marker(fake_llm_provider):
    assert statuses(fake_llm_provider, 3) == [200, 200, 429]
    assert "tpm=1000" in repr(fake_llm_provider)

@pytest.mark.fake_llm_provider(3)
def test_positional(fake_llm_provider):
    pass
"""


def test_marker_in_a_fresh_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(MARKER_TESTS)
    plugin = ("-p", "crewthrottle.testing.pytest_plugin")
    result = pytester.runpytest_inprocess(*plugin, "--strict-markers")
    result.assert_outcomes(passed=5, errors=1)
    result.stdout.fnmatch_lines(["*keyword arguments only*"])
    markers = pytester.runpytest_inprocess(*plugin, "--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.fake_llm_provider(**options):*"])


def test_error_bodies_are_json(http: httpx.Client) -> None:
    with FakeProvider(rpm=1) as provider:
        chat(http, provider)
        refused = chat(http, provider)
    assert refused.headers["content-type"] == "application/json"
    assert json.loads(refused.content)["error"]["code"] == "rate_limit_exceeded"
    assert re.fullmatch(DURATION, refused.headers["x-ratelimit-reset-requests"])
