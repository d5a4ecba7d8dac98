"""Recognising rate-limit errors and the waits they name, across LLM client libraries.

The module is duck-typed (it imports none of these libraries), so it is tested on the real
exception classes of the installed ones — openai, anthropic, LiteLLM, httpx, requests, aiohttp,
urllib — built as each library builds them (issue 9, item 10). Google's (google-api-core,
google-genai) are not installed here: look-alikes with their documented attributes stand in.
"""

from __future__ import annotations

import email.utils
import io
import json as jsonlib
import time
import urllib.error
from collections.abc import Callable
from email.message import Message
from typing import Any

import aiohttp
import anthropic
import httpx
import litellm
import multidict
import openai
import pytest
import requests
import yarl

from crewthrottle._rate_limit_errors import is_rate_limit_error, retry_after

# The SDK's own class for 529; exported at the top level only by newer releases (CrewAI's
# anthropic extra pins 0.73, where it lives in the exceptions module).
OverloadedError = (
    getattr(anthropic, "OverloadedError", None)
    or vars(__import__("anthropic._exceptions", fromlist=["OverloadedError"]))["OverloadedError"]
)

# -- the libraries' own exceptions, made as the libraries make them ---------------------------

REQUEST = httpx.Request("POST", "https://api.openai.com/v1/chat/completions")


def openai_error(
    cls: Callable[..., openai.APIStatusError],
    status: int,
    error: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> openai.APIStatusError:
    """An error as openai's client makes it: the body is the ``error`` object of the JSON."""
    payload = {"error": error} if error is not None else None
    response = httpx.Response(status, headers=headers, json=payload, request=REQUEST)
    return cls(f"Error code: {status} - {payload}", response=response, body=error)


def anthropic_error(
    cls: Callable[..., anthropic.APIStatusError], status: int, body: dict[str, Any]
) -> anthropic.APIStatusError:
    """An error as anthropic's client makes it: the body is the whole decoded JSON."""
    response = httpx.Response(status, json=body, request=REQUEST)
    return cls(f"Error code: {status} - {body}", response=response, body=body)


def litellm_error(status: int, message: str) -> Exception:
    """LiteLLM's mapped exceptions, as its ``exception_type`` raises them."""
    cls = {429: litellm.RateLimitError, 503: litellm.ServiceUnavailableError}[status]
    response = httpx.Response(status, request=REQUEST)
    return cls(message, llm_provider="openai", model="gpt-4o", response=response)  # type: ignore[no-any-return]


def raise_for_status(
    status: int, headers: dict[Any, Any] | None = None, json: object = None
) -> httpx.HTTPStatusError:
    """httpx's own: ``Response.raise_for_status()``."""
    with pytest.raises(httpx.HTTPStatusError) as info:
        httpx.Response(status, headers=headers, json=json, request=REQUEST).raise_for_status()
    return info.value


def requests_response(
    status: int, headers: dict[str, str] | None = None, json: object = None, stream: bool = False
) -> requests.Response:
    """A ``Response`` as requests' adapter builds one; unless ``stream``, its body is read, as
    ``Session.send`` does."""
    response = requests.Response()
    response.status_code, response.reason = status, "Too Many Requests"
    response.headers = requests.structures.CaseInsensitiveDict(headers or {})
    response.raw = io.BytesIO(b"" if json is None else jsonlib.dumps(json).encode())
    response.url = str(REQUEST.url)
    if not stream:
        assert response.content is not None
    return response


def requests_error(
    status: int, headers: dict[str, str] | None = None, json: object = None
) -> requests.HTTPError:
    """requests' own: ``Response.raise_for_status()``."""
    with pytest.raises(requests.HTTPError) as info:
        requests_response(status, headers, json).raise_for_status()
    return info.value


def aiohttp_error(status: int, headers: dict[str, str] | None = None) -> Exception:
    """aiohttp's own, with the arguments ``ClientResponse.raise_for_status()`` passes."""
    url = yarl.URL(str(REQUEST.url))
    info = aiohttp.RequestInfo(
        url, "POST", multidict.CIMultiDictProxy(multidict.CIMultiDict()), url
    )
    return aiohttp.ClientResponseError(
        info,
        (),
        status=status,
        message="Too Many Requests",
        headers=multidict.CIMultiDict(headers or {}),
    )


# -- look-alikes, for libraries not installed here (google-api-core, google-genai) ------------


class GoogleAPICallError(Exception):
    """google-api-core's shape: the HTTP status is a class attribute ``code``."""

    code: int | None = None


class ResourceExhausted(GoogleAPICallError):
    code = 429


class TooManyRequests(GoogleAPICallError):
    code = 429


class GenaiClientError(Exception):
    """google-genai's ``errors.ClientError``: ``code``, ``status`` (a name), ``details``."""

    def __init__(self, code: int, response_json: dict[str, Any]) -> None:
        self.code = code
        self.details = response_json
        self.status = response_json["error"]["status"]
        super().__init__(f"{code} {self.status}. {response_json}")


def gemini_429(quota_id: str, retry_delay: str | None = None) -> GenaiClientError:
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaMetric": "generate_content_requests", "quotaId": quota_id}],
        }
    ]
    if retry_delay is not None:
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}
        )
    message = "You exceeded your current quota, please check your plan and billing details."
    body = {
        "error": {
            "code": 429,
            "message": message,
            "status": "RESOURCE_EXHAUSTED",
            "details": details,
        }
    }
    return GenaiClientError(429, body)


OPENAI_RATE_LIMIT = {
    "message": "Rate limit reached for gpt-4o on tokens per min (TPM): Limit 30000, Used 30000.",
    "type": "tokens",
    "param": None,
    "code": "rate_limit_exceeded",
}
OPENAI_NO_CREDIT = {
    "message": "You exceeded your current quota, please check your plan and billing details.",
    "type": "insufficient_quota",
    "param": None,
    "code": "insufficient_quota",
}
ANTHROPIC_RATE_LIMIT = {
    "type": "error",
    "error": {"type": "rate_limit_error", "message": "Number of request tokens has exceeded"},
}
ANTHROPIC_OVERLOADED = {
    "type": "error",
    "error": {"type": "overloaded_error", "message": "Overloaded"},
}


def chained(outer: BaseException, inner: BaseException, *, cause: bool = True) -> BaseException:
    """``outer`` raised from (or while handling) ``inner``, as a real ``raise`` leaves them."""
    try:
        try:
            raise inner
        except BaseException as exc:
            if cause:
                raise outer from exc
            raise outer  # noqa: B904 - the implicit context is the point
    except BaseException as exc:
        return exc


# -- is_rate_limit_error ---------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(openai_error(openai.RateLimitError, 429, OPENAI_RATE_LIMIT), id="openai-429"),
        pytest.param(
            openai_error(openai.APIStatusError, 429, OPENAI_RATE_LIMIT), id="openai-status"
        ),
        pytest.param(openai_error(openai.InternalServerError, 503), id="openai-503"),
        pytest.param(
            anthropic_error(anthropic.RateLimitError, 429, ANTHROPIC_RATE_LIMIT), id="anthropic-429"
        ),
        pytest.param(
            anthropic_error(OverloadedError, 529, ANTHROPIC_OVERLOADED),
            id="anthropic-529",
        ),
        pytest.param(
            anthropic_error(anthropic.APIStatusError, 200, ANTHROPIC_OVERLOADED),
            id="anthropic-overloaded-in-stream",
        ),
        pytest.param(litellm_error(429, "Rate limit reached"), id="litellm-429"),
        pytest.param(litellm_error(503, "Service unavailable"), id="litellm-503"),
        pytest.param(raise_for_status(429), id="httpx-429"),
        pytest.param(requests_error(429), id="requests-429"),
        pytest.param(aiohttp_error(429), id="aiohttp-429"),
        pytest.param(raise_for_status(503), id="httpx-503"),
        pytest.param(requests_error(503), id="requests-503"),
        pytest.param(aiohttp_error(503), id="aiohttp-503"),
        pytest.param(ResourceExhausted("quota"), id="google-ResourceExhausted"),
        pytest.param(TooManyRequests("slow down"), id="google-TooManyRequests"),
        pytest.param(
            gemini_429("GenerateRequestsPerMinutePerProjectPerModel-FreeTier"), id="genai"
        ),
        pytest.param(type("ThrottlingException", (Exception,), {})(), id="named-only"),
        pytest.param(
            Exception("litellm.RateLimitError: Rate limit exceeded for gpt-4o"), id="text"
        ),
        pytest.param(Exception("Error code: 429 - {'error': {...}}"), id="text-error-code"),
        pytest.param(RuntimeError("429 Too Many Requests"), id="text-too-many"),
        pytest.param(Exception("The model is overloaded. Try again later."), id="text-overloaded"),
    ],
)
def test_rate_limit_and_overload_errors_are_recognised(exc: BaseException) -> None:
    assert is_rate_limit_error(exc)


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(
            openai_error(openai.BadRequestError, 400, {"code": "invalid_request"}), id="400"
        ),
        pytest.param(openai_error(openai.InternalServerError, 500), id="500"),
        pytest.param(anthropic_error(anthropic.InternalServerError, 500, {}), id="anthropic-500"),
        pytest.param(raise_for_status(404), id="httpx-404"),
        pytest.param(requests_error(404), id="requests-404"),
        pytest.param(aiohttp_error(404), id="aiohttp-404"),
        pytest.param(ValueError("rate limit must be positive"), id="validation-text"),
        pytest.param(RuntimeError("processed 429 items"), id="a-number-in-text"),
        pytest.param(TypeError("no overloaded signature matches"), id="overloaded-in-text"),
        pytest.param(KeyboardInterrupt(), id="KeyboardInterrupt"),
        pytest.param(SystemExit(429), id="SystemExit-429"),
        pytest.param(GoogleAPICallError("no code"), id="google-base"),
        pytest.param(TimeoutError(), id="timeout"),
    ],
)
def test_other_errors_are_not(exc: BaseException) -> None:
    assert not is_rate_limit_error(exc)


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(
            openai_error(openai.RateLimitError, 429, OPENAI_NO_CREDIT),
            id="openai-insufficient_quota",
        ),
        pytest.param(
            openai.APIStatusError(
                "You exceeded your current quota, check billing.",
                response=httpx.Response(429, request=REQUEST),
                body=None,
            ),
            id="quota-message-only",
        ),
        pytest.param(
            openai_error(
                openai.RateLimitError,
                429,
                {**OPENAI_RATE_LIMIT, "message": "on requests per day (RPD)"},
            ),
            id="openai-per-day",
        ),
        pytest.param(
            gemini_429("GenerateRequestsPerDayPerProjectPerModel-FreeTier", "23s"), id="gemini-day"
        ),
        pytest.param(raise_for_status(429, json={"error": OPENAI_NO_CREDIT}), id="httpx-json()"),
        pytest.param(requests_error(429, json={"error": OPENAI_NO_CREDIT}), id="requests-json()"),
        pytest.param(
            chained(
                RuntimeError("LLM call failed"),
                openai_error(openai.RateLimitError, 429, OPENAI_NO_CREDIT),
            ),
            id="chained",
        ),
    ],
)
def test_an_exhausted_quota_is_not_a_rate_limit(exc: BaseException) -> None:
    assert not is_rate_limit_error(exc)


def test_status_codes_are_read_from_every_usual_attribute() -> None:
    for name in ("status_code", "status", "code", "http_status"):
        exc = Exception("boom")
        setattr(exc, name, 429)
        assert is_rate_limit_error(exc), name
        setattr(exc, name, "429")
        assert is_rate_limit_error(exc), f"{name} as a string"
    aiohttp_like = Exception("boom")
    aiohttp_like.response = type("R", (), {"status": 503})()  # type: ignore[attr-defined]
    assert is_rate_limit_error(aiohttp_like)
    stdlib = urllib.error.HTTPError(
        "https://api.example.com", 429, "Too Many Requests", Message(), None
    )
    assert is_rate_limit_error(stdlib)


def test_chains_are_walked_through_wrappers() -> None:
    inner = openai_error(openai.RateLimitError, 429, OPENAI_RATE_LIMIT)
    assert is_rate_limit_error(chained(RuntimeError("crew failed"), inner))
    assert is_rate_limit_error(chained(RuntimeError("crew failed"), inner, cause=False))
    deep: BaseException = inner
    for i in range(10):
        deep = chained(RuntimeError(f"wrapper {i}"), deep)
    assert is_rate_limit_error(deep)


def test_suppressed_contexts_and_other_http_errors_hide_what_they_wrap() -> None:
    inner = openai_error(openai.RateLimitError, 429, OPENAI_RATE_LIMIT)
    try:
        try:
            raise inner
        except openai.RateLimitError:
            raise RuntimeError("swallowed") from None
    except RuntimeError as exc:
        assert not is_rate_limit_error(exc)
    # A 500 raised while handling a 429 is a 500.
    assert not is_rate_limit_error(
        chained(openai_error(openai.InternalServerError, 500), inner, cause=False)
    )


def test_cycles_and_very_long_chains_end() -> None:
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a
    assert not is_rate_limit_error(a)
    assert retry_after(a) is None
    deep: BaseException = openai_error(openai.RateLimitError, 429)
    for _ in range(40):
        outer = RuntimeError("wrapper")
        outer.__cause__ = deep
        deep = outer
    assert not is_rate_limit_error(deep), "past the depth limit, nothing is seen"


def test_misbehaving_exceptions_never_make_it_raise() -> None:
    class Hostile(Exception):
        @property
        def response(self) -> object:
            raise RuntimeError("no response")

        @property
        def body(self) -> object:
            raise RuntimeError("no body")

        def __str__(self) -> str:
            raise RuntimeError("no str")

    assert not is_rate_limit_error(Hostile())
    assert retry_after(Hostile()) is None
    weird = Exception()
    weird.status_code = True  # type: ignore[attr-defined]
    weird.body = b"\xff{not json"  # type: ignore[attr-defined]
    weird.code = object()  # type: ignore[attr-defined]
    assert not is_rate_limit_error(weird)


def test_an_async_json_method_is_not_left_unawaited() -> None:
    """aiohttp's ``ClientResponse.json`` is a coroutine: un-awaited, it would warn (an error)."""

    class AioResponse:
        status = 500
        headers = None

        async def json(self) -> object:
            return {"error": {"type": "rate_limit_error"}}

    exc = Exception("boom")
    exc.response = AioResponse()  # type: ignore[attr-defined]
    assert not is_rate_limit_error(exc)


def test_an_unread_streamed_requests_body_is_not_read() -> None:
    """``requests.post(..., stream=True)``: reading the body would block on the network."""
    streamed = requests_response(500, json={"error": OPENAI_RATE_LIMIT}, stream=True)
    exc = Exception("boom")
    exc.response = streamed  # type: ignore[attr-defined]
    assert not is_rate_limit_error(exc)
    assert not streamed.raw.tell(), "the streamed body was read"


# -- retry_after ------------------------------------------------------------------------


def http_date(offset: float) -> str:
    return email.utils.formatdate(time.time() + offset, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({"retry-after-ms": "1500"}, 1.5, id="ms"),
        pytest.param({"retry-after-ms": "250", "retry-after": "9"}, 0.25, id="ms-first"),
        pytest.param({"Retry-After": "7"}, 7.0, id="seconds"),
        pytest.param({"RETRY-AFTER": " 0.25 "}, 0.25, id="float-any-case"),
        pytest.param({"retry-after": "0"}, 0.0, id="zero"),
        pytest.param({"x-ratelimit-reset-requests": "6m0s"}, 360.0, id="reset-6m0s"),
        pytest.param({"x-ratelimit-reset-tokens": "1.5s"}, 1.5, id="reset-1.5s"),
        pytest.param({"x-ratelimit-reset-tokens": "20ms"}, 0.02, id="reset-20ms"),
        pytest.param({"x-ratelimit-reset-requests": "1h2m3.5s"}, 3723.5, id="reset-1h2m3.5s"),
        pytest.param({"x-ratelimit-reset-requests": "2"}, 2.0, id="reset-bare-number"),
        pytest.param(
            {"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"},
            360.0,
            id="reset-max",
        ),
        pytest.param(
            {"retry-after": "3", "x-ratelimit-reset-tokens": "6m0s"}, 3.0, id="retry-after-first"
        ),
        pytest.param({"retry-after-ms": "-5", "retry-after": "2"}, 2.0, id="bad-ms-falls-through"),
        pytest.param({"retry-after": http_date(-3600)}, 0.0, id="date-in-the-past"),
        pytest.param({"retry-after": "Wed, 21 Oct 2015 07:28:00 -0000"}, 0.0, id="naive-date"),
        pytest.param({b"Retry-After": b"4"}, 4.0, id="bytes"),
    ],
)
def test_retry_after_headers(headers: dict[Any, Any], expected: float) -> None:
    assert retry_after(raise_for_status(429, headers)) == pytest.approx(expected)


def test_retry_after_http_date_in_the_future() -> None:
    wait = retry_after(raise_for_status(429, {"Retry-After": http_date(30)}))
    assert wait is not None
    assert 28 <= wait <= 30


@pytest.mark.parametrize(
    "value",
    ["soon", "-5", "nan", "inf", "1e400", "", "6x", "m", "1.2.3s", "5 s", "Wed, 99 Foo 2015"],
)
def test_garbage_header_values_are_ignored(value: str) -> None:
    for name in ("retry-after-ms", "retry-after", "x-ratelimit-reset-requests"):
        assert retry_after(raise_for_status(429, {name: value})) is None, (name, value)


@pytest.mark.parametrize(
    "headers",
    [None, [("retry-after", "3")], 42, "retry-after: 3", {"retry-after": 3}, {None: "3"}],
)
def test_headers_that_are_not_a_mapping_of_text_are_ignored(headers: object) -> None:
    exc = Exception()
    exc.headers = headers  # type: ignore[attr-defined]
    assert retry_after(exc) is None


def test_headers_are_read_from_the_exception_when_there_is_no_response() -> None:
    exc = Exception("429")
    exc.headers = {"Retry-After": "12"}  # type: ignore[attr-defined]
    assert retry_after(exc) == 12.0
    exc.response = None  # type: ignore[attr-defined]
    assert retry_after(exc) == 12.0


def test_retry_after_walks_the_chain() -> None:
    inner = openai_error(openai.RateLimitError, 429, headers={"retry-after": "5"})
    assert retry_after(chained(RuntimeError("wrapper"), inner)) == 5.0
    assert retry_after(chained(RuntimeError("wrapper"), inner, cause=False)) == 5.0
    outer = openai_error(openai.RateLimitError, 429, headers={"retry-after": "1"})
    assert retry_after(chained(outer, inner)) == 1.0, "the outermost wait wins"


def test_retry_after_reads_gemini_retry_info() -> None:
    assert retry_after(gemini_429("GenerateRequestsPerMinutePerProjectPerModel", "23s")) == 23.0
    assert retry_after(gemini_429("GenerateRequestsPerMinutePerProjectPerModel", "0.5s")) == 0.5
    assert retry_after(gemini_429("GenerateRequestsPerMinutePerProjectPerModel", "later")) is None


def test_no_wait_named_is_none() -> None:
    assert retry_after(ValueError("x")) is None
    assert retry_after(raise_for_status(429)) is None
    assert retry_after(raise_for_status(429, {"content-type": "application/json"})) is None


# -- the real openai and httpx classes ---------------------------------------------------------


def test_real_openai_errors() -> None:
    assert is_rate_limit_error(openai_error(openai.RateLimitError, 429, OPENAI_RATE_LIMIT))
    assert is_rate_limit_error(openai_error(openai.InternalServerError, 503))
    assert is_rate_limit_error(openai_error(openai.APIStatusError, 529, ANTHROPIC_OVERLOADED))
    assert not is_rate_limit_error(openai_error(openai.RateLimitError, 429, OPENAI_NO_CREDIT))
    assert not is_rate_limit_error(openai_error(openai.BadRequestError, 400, {"code": "bad"}))
    assert not is_rate_limit_error(openai_error(openai.InternalServerError, 500))
    assert not is_rate_limit_error(openai.APITimeoutError(request=REQUEST))
    wrapped = chained(RuntimeError("agent failed"), openai_error(openai.RateLimitError, 429))
    assert is_rate_limit_error(wrapped)


def test_real_openai_retry_after() -> None:
    headers = {"retry-after-ms": "1500", "retry-after": "2", "x-ratelimit-reset-tokens": "6m0s"}
    assert retry_after(openai_error(openai.RateLimitError, 429, headers=headers)) == 1.5
    headers = {"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}
    assert retry_after(openai_error(openai.RateLimitError, 429, headers=headers)) == 360.0
    assert retry_after(openai_error(openai.RateLimitError, 429)) is None


def test_real_httpx_errors() -> None:
    assert is_rate_limit_error(raise_for_status(429))
    assert is_rate_limit_error(raise_for_status(503))
    assert not is_rate_limit_error(raise_for_status(404))
    assert not is_rate_limit_error(raise_for_status(500))
    assert retry_after(raise_for_status(429, {"Retry-After": "3"})) == 3.0
    assert retry_after(raise_for_status(503, {"retry-after": http_date(-10)})) == 0.0
    assert retry_after(raise_for_status(429, {"retry-after": "garbage"})) is None
    no_credit = httpx.Response(429, json={"error": OPENAI_NO_CREDIT}, request=REQUEST)
    with pytest.raises(httpx.HTTPStatusError) as info:
        no_credit.raise_for_status()
    assert not is_rate_limit_error(info.value)


def test_real_requests_and_aiohttp_retry_after() -> None:
    assert retry_after(requests_error(429, {"Retry-After": "3"})) == 3.0
    assert retry_after(requests_error(429, {"x-ratelimit-reset-tokens": "1.5s"})) == 1.5
    assert retry_after(aiohttp_error(429, {"Retry-After": "4"})) == 4.0
    assert retry_after(aiohttp_error(503, {"retry-after-ms": "250"})) == 0.25


def test_real_anthropic_and_litellm_retry_after() -> None:
    response = httpx.Response(429, headers={"retry-after": "7"}, request=REQUEST)
    exc = anthropic.RateLimitError("429", response=response, body=ANTHROPIC_RATE_LIMIT)
    assert retry_after(exc) == 7.0
    wrapped = litellm.RateLimitError("429", "anthropic", "claude", response=response)
    assert retry_after(wrapped) == 7.0
