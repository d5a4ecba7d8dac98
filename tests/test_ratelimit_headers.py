"""The rate-limit header parser (issue 8): real header sets of OpenAI, Azure OpenAI and
Anthropic, every mapping users hold, and anything else — it never raises (hypothesis)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
import requests.structures
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_rate_limit_errors_hostile import HEADER_VALUES, HEADERS, HostileDict, HostileStr

import crewthrottle as ct
from crewthrottle import RateLimit, RateLimitHeaders, parse_ratelimit_headers
from crewthrottle._ratelimit_headers import _observation

# As OpenAI documents and sends them (https://platform.openai.com/docs/guides/rate-limits).
OPENAI = {
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-limit-tokens": "150000",
    "x-ratelimit-remaining-requests": "59",
    "x-ratelimit-remaining-tokens": "149984",
    "x-ratelimit-reset-requests": "1s",
    "x-ratelimit-reset-tokens": "6m0s",
}
# Azure OpenAI sends only what is left (and its request window is 10 s, not a minute).
AZURE = {"x-ratelimit-remaining-requests": "19", "x-ratelimit-remaining-tokens": "19913"}


def in_seconds(seconds: float) -> str:
    when = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def anthropic_headers(reset_in: float = 30.0) -> dict[str, str]:
    """As Anthropic documents them (https://docs.anthropic.com/en/api/rate-limits)."""
    headers = {"retry-after": "12"}
    for kind, limit, remaining in (
        ("requests", 50, 49),
        ("tokens", 8_000, 7_400),
        ("input-tokens", 40_000, 39_000),
        ("output-tokens", 8_000, 7_400),
    ):
        headers[f"anthropic-ratelimit-{kind}-limit"] = str(limit)
        headers[f"anthropic-ratelimit-{kind}-remaining"] = str(remaining)
        headers[f"anthropic-ratelimit-{kind}-reset"] = in_seconds(reset_in)
    return headers


def test_openai_headers_are_read_durations_included() -> None:
    parsed = parse_ratelimit_headers(OPENAI)
    assert parsed.requests == RateLimit(60, 59, 1.0)
    assert parsed.tokens == RateLimit(150_000, 149_984, 360.0)
    assert parsed.requests.used == 1 and parsed.tokens.used == 16
    assert parsed.input_tokens == RateLimit() and parsed.retry_after is None
    assert _observation(OPENAI) == (60, 59, 150_000, 149_984)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1.5s", 1.5),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("17", 17.0),
        ("", None),
        ("soon", None),
        ("-1s", None),
        ("1s garbage", None),
        ("9" * 100 + "s", None),
    ],
)
def test_go_durations_of_openai_resets(text: str, seconds: float | None) -> None:
    reset = parse_ratelimit_headers({"x-ratelimit-reset-requests": text}).requests.reset
    assert reset == (pytest.approx(seconds) if seconds is not None else None)


def test_azure_sends_only_what_is_left_and_nothing_is_learned_from_it() -> None:
    parsed = parse_ratelimit_headers(AZURE)
    assert parsed.requests == RateLimit(None, 19, None)
    assert parsed.tokens == RateLimit(None, 19_913, None)
    assert parsed.requests.used is None
    limiter = ct.Limiter(rpm=100, tpm=30_000)
    limiter.observe(AZURE)
    stats = limiter.stats()
    assert (stats["effective_rpm"], stats["effective_tpm"]) == (100, 30_000)
    assert stats["foreign_requests_in_window"] == stats["foreign_tokens_in_window"] == 0


def test_anthropic_headers_are_read_rfc3339_resets_included() -> None:
    parsed = parse_ratelimit_headers(anthropic_headers(reset_in=30.0))
    assert (parsed.requests.limit, parsed.requests.remaining) == (50, 49)
    assert parsed.requests.reset == pytest.approx(30.0, abs=2.0)
    assert (parsed.input_tokens.limit, parsed.output_tokens.limit) == (40_000, 8_000)
    assert parsed.retry_after == 12.0
    # `tokens` is Anthropic's most restrictive token limit: what a tpm counting both binds to.
    assert _observation(anthropic_headers()) == (50, 49, 8_000, 7_400)


def test_anthropic_without_the_tokens_summary_binds_the_tighter_of_input_and_output() -> None:
    headers = {k: v for k, v in anthropic_headers().items() if "-tokens-" not in k}
    headers.update(
        {
            "anthropic-ratelimit-input-tokens-limit": "40000",
            "anthropic-ratelimit-input-tokens-remaining": "1000",
            "anthropic-ratelimit-output-tokens-limit": "8000",
            "anthropic-ratelimit-output-tokens-remaining": "7000",
        }
    )
    assert _observation(headers)[2:] == (40_000, 1_000)


def test_a_reset_in_the_past_is_zero_and_times_without_an_offset_are_malformed() -> None:
    past = {"anthropic-ratelimit-requests-reset": "2001-01-01T00:00:00Z"}
    assert parse_ratelimit_headers(past).requests.reset == 0.0
    naive = {"anthropic-ratelimit-requests-reset": "2999-01-01T00:00:00"}
    assert parse_ratelimit_headers(naive).requests.reset is None
    offset = {"anthropic-ratelimit-requests-reset": in_seconds(60).replace("Z", "+00:00")}
    assert parse_ratelimit_headers(offset).requests.reset == pytest.approx(60, abs=2)


@pytest.mark.parametrize(
    "value", ["", " ", "-5", "1e3", "12.5", "0x10", "१२", "9" * 30, str(2**53 + 1), "NaN"]
)
def test_malformed_counts_are_ignored(value: str) -> None:
    parsed = parse_ratelimit_headers({**OPENAI, "x-ratelimit-limit-requests": value})
    assert parsed.requests.limit is None
    assert parsed.requests.remaining == 59  # the rest of the set still counts


@pytest.mark.parametrize(
    "make",
    [
        dict,
        httpx.Headers,
        requests.structures.CaseInsensitiveDict,
        lambda h: {k.upper(): v for k, v in h.items()},
        lambda h: {k.encode(): v.encode() for k, v in h.items()},
        lambda h: httpx.Response(200, headers=h).headers,
    ],
    ids=["dict", "httpx", "requests", "upper-case", "bytes", "httpx-response"],
)
def test_any_mapping_of_headers_is_read(make: Any) -> None:
    assert _observation(make(OPENAI)) == (60, 59, 150_000, 149_984)


@pytest.mark.parametrize(
    "headers",
    [None, 42, "x-ratelimit-limit-requests: 5", [("x-ratelimit-limit-requests", "5")], object()],
)
def test_what_is_not_a_mapping_says_nothing(headers: object) -> None:
    assert parse_ratelimit_headers(headers) == RateLimitHeaders()


def test_hostile_mappings_and_values_say_nothing_rather_than_raise() -> None:
    hostile = HostileDict(OPENAI)
    assert parse_ratelimit_headers(hostile) == RateLimitHeaders()
    values = {"x-ratelimit-limit-requests": HostileStr("60"), "x-ratelimit-remaining-requests": 5}
    # The str subclass is read as plain text without calling its methods; an int is no header.
    assert parse_ratelimit_headers(values).requests == RateLimit(60, None, None)


REAL_KEYS = st.sampled_from(
    [
        *OPENAI,
        *AZURE,
        *anthropic_headers(),
        "retry-after-ms",
        "RETRY-AFTER",
        "X-RateLimit-Limit-Tokens",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        HEADERS,
        st.dictionaries(REAL_KEYS, HEADER_VALUES, max_size=8),
        st.dictionaries(REAL_KEYS, st.from_regex(r"\A\s*[0-9]{0,20}\s*\Z"), max_size=8),
    )
)
def test_the_parser_never_raises_and_the_limiter_takes_whatever_it_gives(headers: Any) -> None:
    parsed = parse_ratelimit_headers(headers)
    for limit in (parsed.requests, parsed.tokens, parsed.input_tokens, parsed.output_tokens):
        for count in (limit.limit, limit.remaining):
            assert count is None or (type(count) is int and 0 <= count <= 2**53)
        assert limit.reset is None or limit.reset >= 0
    limiter = ct.Limiter(rpm=100, tpm=10_000, adaptive=True)
    limiter.observe(headers, status=429)
    stats = limiter.stats()
    assert 1 <= stats["effective_rpm"] <= 100  # type: ignore[operator]
    assert 1 <= stats["effective_tpm"] <= 10_000  # type: ignore[operator]
