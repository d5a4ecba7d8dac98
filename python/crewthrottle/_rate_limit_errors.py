"""Recognise rate-limit errors from any LLM client, and read the wait they name.

Duck-typed on purpose: nothing here imports openai, anthropic, litellm, httpx, requests, google
or a framework, so the checks cost nothing when those packages are absent and keep working as
their exception classes move. An exception is read through the attributes those libraries share:

- a status code: ``status_code``, ``status``, ``code``, ``http_status``, or the same on
  ``response`` (openai, anthropic, litellm, httpx, requests, google-api-core, google-genai);
- an error body: ``body`` (openai, anthropic), ``json_body`` (openai < 1), ``details``
  (google-genai), ``response_json``, or ``response.json()``;
- class names in the MRO (``RateLimitError``, ``ResourceExhausted``, ``TooManyRequests``...);
- headers: ``response.headers`` or ``headers``.

The chain of ``__cause__`` and ``__context__`` is walked too, so wrappers (LangChain, CrewAI,
``raise MyError(...) from exc``) are seen through.

Both public functions run inside the ``except`` blocks of retry loops, where an exception of
their own would replace the provider's error: they never raise (issue 9). Every value read from
an exception goes through ``_plain_*``, which copies a ``str``/``int``/``dict``/``list``
subclass to its base type without calling the subclass's methods (they may raise), and whatever
still goes wrong in one link of the chain makes that link say nothing.
"""

from __future__ import annotations

import email.utils
import inspect
import itertools
import json
import math
import re
import time
from collections.abc import Callable, Iterator
from datetime import timezone
from typing import Any, TypeGuard, TypeVar

__all__ = ["http_status", "is_rate_limit_error", "retry_after"]

_T = TypeVar("_T")

#: HTTP statuses that mean "slow down": too many requests, unavailable, Anthropic's overloaded.
_RATE_LIMIT_STATUSES = frozenset({429, 503, 529})

#: Error codes and types, lower-cased, that name a rate limit or an overload in a body or on
#: the exception (openai ``code``, anthropic ``error.type``, google ``status``).
_RATE_LIMIT_IDS = frozenset(
    {
        "rate_limit_exceeded",
        "rate_limit_error",
        "ratelimitexceeded",
        "overloaded_error",
        "resource_exhausted",
        "too_many_requests",
        "throttlingexception",
    }
)

#: Class names, anywhere in the MRO, of rate-limit exceptions (openai, anthropic, litellm,
#: google-api-core, boto3's generated ``ThrottlingException``, and wrappers named alike).
_RATE_LIMIT_CLASS_NAMES = frozenset(
    {
        "RateLimitError",
        "RateLimitException",
        "RateLimitExceeded",
        "RateLimitExceededError",
        "TooManyRequests",
        "TooManyRequestsError",
        "ResourceExhausted",
        "OverloadedError",
        "ThrottlingException",
    }
)

#: Messages of rate limits, for exceptions that carry no status code of their own.
_RATE_LIMIT_TEXT = re.compile(
    r"rate[ _-]?limit(?:ed)?[ _-]?(?:exceeded|reached|hit)|\bRateLimit(?:Error|Exception)\b"
    r"|too many requests|resource[ _]exhausted|overloaded_error|\b(?:is|currently) overloaded\b"
    r"|(?:error|status|http)(?: code)?:? ?(?:429|529)\b",
    re.IGNORECASE,
)

#: A 429 that waiting minutes will not cure: no money, or a daily quota spent. OpenAI says
#: ``insufficient_quota``; Gemini names quota ids like ``GenerateRequestsPerDayPerProject...``;
#: OpenAI's per-day limits say "requests per day (RPD)".
_EXHAUSTED_TEXT = re.compile(r"insufficient_quota|per[ _-]?day", re.IGNORECASE)

#: "You exceeded your current quota" is OpenAI's out-of-credit message, but Gemini says it for
#: per-minute limits too, naming a ``...PerMinute...`` quota id: only the latter is a rate limit.
_QUOTA_TEXT = re.compile(r"exceeded your current quota", re.IGNORECASE)
_SHORT_WINDOW_TEXT = re.compile(r"per[ _-]?(?:minute|second)", re.IGNORECASE)

#: How many exceptions of a ``__cause__``/``__context__`` chain are looked at, at most.
_MAX_CHAIN = 16

#: Bounds on what is read, so a huge or endless body or header mapping cannot hang a retry
#: loop: text searched (str(exc), bodies), header pairs, list items, and a header value's
#: length (an HTTP date is 29 characters; a longer wait value is no wait).
_MAX_TEXT = 65_536
_MAX_ITEMS = 256
_MAX_HEADER_VALUE = 64

#: The wait in OpenAI's rate-limit messages: "Please try again in 1.561s" (or "6m0s", "20ms").
_TRY_AGAIN_TEXT = re.compile(r"try again in ((?:\d+(?:\.\d*)?(?:ns|us|µs|ms|s|m|h)){1,4})\b")

#: Go-style durations as OpenAI sends in ``x-ratelimit-reset-*``: "6m0s", "1.5s", "20ms".
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}


def is_rate_limit_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a provider's "too many requests" or "overloaded" error, worth a retry.

    True for HTTP 429, 503 and 529 (Anthropic's overloaded) from openai, anthropic, litellm,
    httpx, requests, google-api-core and google-genai errors, for exceptions whose class or a
    base is named like ``RateLimitError``, and for any exception caused by one of these.

    False for a 429 that means the account is out of money or out of daily quota (OpenAI's
    ``insufficient_quota``, Gemini's per-day quotas): retrying cannot succeed before tomorrow.
    False also for ``KeyboardInterrupt``, ``SystemExit`` and other non-``Exception`` errors.
    """
    try:
        if not _is(exc, Exception):
            return False
        rate_limited = False
        for link in _chain(exc, stop=_is_other_http_error):
            if _quietly(_quota_exhausted, link):
                return False
            rate_limited = rate_limited or bool(_quietly(_says_rate_limited, link))
        return rate_limited
    except Exception:  # documented never to raise: an unreadable exception is no rate limit
        return False


def retry_after(exc: BaseException) -> float | None:
    """The wait, in seconds, that the provider named in ``exc``'s response, or ``None``.

    Read from the headers of ``exc.response`` (or ``exc.headers``), case-insensitively, in
    the order OpenAI's SDK uses: ``retry-after-ms`` (milliseconds), then ``retry-after``
    (seconds, possibly fractional, or an HTTP date), then the longest of OpenAI's
    ``x-ratelimit-reset-requests`` and ``x-ratelimit-reset-tokens`` (durations like ``"6m0s"``),
    then Gemini's ``RetryInfo.retryDelay`` in the error body, then the wait OpenAI's message
    names ("Please try again in 1.561s", "in 20ms": what reaches a client whose wrapper drops
    the headers, as older LiteLLMs do). The first exception of the ``__cause__``/``__context__``
    chain that names a wait wins. Never negative; unparseable values are ignored; never raises.
    """
    try:
        for link in _chain(exc):
            for read in (_header_wait, _body_retry_delay, _message_wait):
                wait = _quietly(read, link)
                if wait is not None:
                    return wait
        return None
    except Exception:  # documented never to raise: an unreadable exception names no wait
        return None


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of the first exception in ``exc``'s chain that carries one (a wrapper's
    own, else its cause's), or ``None``; never raises."""
    try:
        for link in _chain(exc):
            status = _quietly(_own_status, link)
            if status is not None:
                return status
        return None
    except Exception:  # as above: an unreadable exception has no status
        return None


def _quietly(read: Callable[[BaseException], _T], link: BaseException) -> _T | None:
    """``read(link)``, or ``None`` if a hostile part of ``link`` made it raise."""
    try:
        return read(link)
    except Exception:
        return None


# -- walking the chain -----------------------------------------------------------------------


def _chain(
    exc: BaseException, stop: Callable[[BaseException], bool] | None = None
) -> Iterator[BaseException]:
    """``exc``, then its causes and contexts, depth first, each once, at most ``_MAX_CHAIN``.

    ``__context__`` is skipped where ``raise ... from None`` suppressed it; the links beneath
    an exception for which ``stop`` is true are not visited.
    """
    seen: set[int] = set()
    stack = [exc]
    while stack and len(seen) < _MAX_CHAIN:
        link = stack.pop()
        if id(link) in seen:
            continue
        seen.add(id(link))
        yield link
        if stop is not None and stop(link):
            continue
        # Through _attr: a subclass may make these properties that raise.
        suppressed = _attr(link, "__suppress_context__") is not False
        context = None if suppressed else _attr(link, "__context__")
        # Pushed so that the explicit cause is visited before the implicit context.
        causes = (context, _attr(link, "__cause__"))
        stack.extend(e for e in causes if _is(e, BaseException))


def _is_other_http_error(exc: BaseException) -> bool:
    """Whether ``exc`` has an HTTP status of its own that is not a rate limit.

    Such an error (a 500 after the SDK's own retries of a 429, say) speaks for itself, so the
    errors it was raised while handling are not asked.
    """
    status = _own_status(exc)
    return status is not None and status not in _RATE_LIMIT_STATUSES


# -- reading one exception -------------------------------------------------------------------


def _says_rate_limited(exc: BaseException) -> bool:
    """Whether this one exception, without its chain, reads as a rate limit or overload."""
    if not _is(exc, Exception):
        return False
    if _own_status(exc) in _RATE_LIMIT_STATUSES:
        return True
    if any(_plain_str(_attr(c, "__name__")) in _RATE_LIMIT_CLASS_NAMES for c in _mro(exc)):
        return True
    bodies = _bodies(exc)
    if any(_status_of(v) in _RATE_LIMIT_STATUSES for v in _error_fields(exc, bodies)):
        return True
    if any(_id_of(v) in _RATE_LIMIT_IDS for v in _error_fields(exc, bodies)):
        return True
    return _own_status(exc) is None and bool(_RATE_LIMIT_TEXT.search(_safe_str(exc)))


def _quota_exhausted(exc: BaseException) -> bool:
    """Whether this exception says the account's money or daily quota is spent."""
    fields = [_plain_str(v) for v in _error_fields(exc, [])]
    texts = [_safe_str(exc), *(f for f in fields if f is not None)]
    text = " ".join([*texts, *(_dump(b) for b in _bodies(exc))])
    if _EXHAUSTED_TEXT.search(text):
        return True
    return bool(_QUOTA_TEXT.search(text)) and not _SHORT_WINDOW_TEXT.search(text)


def _own_status(exc: BaseException) -> int | None:
    """The HTTP status carried by the exception's attributes or its ``response``."""
    for owner in (exc, _attr(exc, "response")):
        for name in ("status_code", "status", "code", "http_status"):
            status = _status_of(_attr(owner, name))
            if status is not None:
                return status
    return None


def _error_fields(exc: BaseException, bodies: list[object]) -> list[object]:
    """The ``code``/``type``/``status`` values of the exception and of its error bodies."""
    fields = [_attr(exc, name) for name in ("code", "type", "status")]
    for body in bodies:
        for part in (body, _get(body, "error")):
            fields.extend(_get(part, key) for key in ("code", "type", "status"))
    return [f for f in fields if f is not None]


def _bodies(exc: BaseException) -> list[object]:
    """The decoded error bodies the exception carries, outermost first."""
    bodies = [_attr(exc, n) for n in ("body", "json_body", "details", "response_json")]
    bodies.append(_response_json(_attr(exc, "response")))
    return [_maybe_json(b) for b in bodies if b is not None]


def _response_json(response: object) -> object:
    """``response.json()``, or ``None`` if it fails, is not there, or is a coroutine.

    A streamed ``requests`` response whose body is unread is left alone: reading it would
    block on the network. (A streamed httpx one raises ``ResponseNotRead``, which is caught.)
    """
    method = _attr(response, "json")
    if not callable(method) or _attr(response, "_content_consumed") is False:
        return None
    try:
        result = method()
        if inspect.iscoroutine(result):  # aiohttp: never leave a coroutine un-awaited
            result.close()
            return None
    except Exception:
        return None
    return result


# -- the wait a provider names -----------------------------------------------------------------


def _header_wait(exc: BaseException) -> float | None:
    """The wait named by the exception's response headers, in seconds."""
    lookup = _header_lookup(_own_headers(exc))
    seconds = named_wait(lookup)
    if seconds is not None:
        return seconds
    resets = [_duration(lookup(f"x-ratelimit-reset-{kind}")) for kind in ("requests", "tokens")]
    return max((r for r in resets if r is not None), default=None)


def response_headers(exc: BaseException) -> object:
    """The headers of the response an exception carries (``exc.response.headers``, else
    ``exc.headers``), the first found along its ``__cause__``/``__context__`` chain, or None.
    Never raises."""
    try:
        for link in _chain(exc):
            headers = _quietly(_own_headers, link)
            if headers is not None:
                return headers
    except Exception:  # an unreadable chain carries no headers
        pass
    return None


def _own_headers(exc: BaseException) -> object:
    response = _attr(exc, "response")
    headers = _attr(response, "headers") if response is not None else None
    return _attr(exc, "headers") if headers is None else headers


def named_wait(lookup: Callable[[str], str | None]) -> float | None:
    """``retry-after-ms`` (milliseconds), else ``retry-after`` (seconds or an HTTP date)."""
    millis = _seconds(lookup("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    seconds = _seconds(lookup("retry-after"))
    return _http_date_wait(lookup("retry-after")) if seconds is None else seconds


def _header_lookup(headers: object) -> Callable[[str], str | None]:
    """A case-insensitive getter over any mapping of headers (httpx, requests, dict)."""
    found: dict[str, str] = {}
    items = _attr(headers, "items")
    try:
        pairs: Any = items() if callable(items) else ()  # not iterable: TypeError, caught
        for pair in itertools.islice(pairs, _MAX_ITEMS):
            if _is(pair, tuple) and tuple.__len__(pair) == 2:
                key, value = (_text(tuple.__getitem__(pair, i)) for i in (0, 1))
                if key is not None and value is not None:
                    found.setdefault(key.strip().lower(), value.strip())
    except Exception:  # a broken mapping names no more waits
        pass
    return found.get


def _body_retry_delay(exc: BaseException) -> float | None:
    """Gemini's ``google.rpc.RetryInfo`` ``retryDelay`` ("23s") in the error body, in seconds."""
    for body in _bodies(exc):
        for part in (body, _get(body, "error")):
            for detail in _plain_list(_get(part, "details")):
                if "RetryInfo" in (_plain_str(_get(detail, "@type")) or ""):
                    wait = _duration(_get(detail, "retryDelay"))
                    if wait is not None:
                        return wait
    return None


def _message_wait(exc: BaseException) -> float | None:
    """The wait OpenAI's rate-limit message names: "Please try again in 1.561s"."""
    found = _TRY_AGAIN_TEXT.search(_safe_str(exc))
    return _duration(found.group(1)) if found else None


def _seconds(value: object) -> float | None:
    """A non-negative, finite number of seconds written as a decimal, or ``None``."""
    text = _plain_str(value)
    if text is None or len(text) > _MAX_HEADER_VALUE:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _http_date_wait(value: object) -> float | None:
    """Seconds from now until an HTTP date (``Wed, 21 Oct 2015 07:28:00 GMT``), at least 0."""
    text = _plain_str(value)
    if text is None or len(text) > _MAX_HEADER_VALUE:
        return None
    try:
        when = email.utils.parsedate_to_datetime(text)
        if when.tzinfo is None:  # "-0000" gives a naive datetime; HTTP dates are UTC
            when = when.replace(tzinfo=timezone.utc)
        wait = when.timestamp() - time.time()
    except Exception:  # TypeError or ValueError by Python version; OverflowError near year 1
        return None
    return max(0.0, wait)


def _duration(value: object) -> float | None:
    """Seconds in a Go-style duration ("1h2m3.5s", "20ms") or a bare number of seconds."""
    plain = _seconds(value)
    text = _plain_str(value)
    if plain is not None or text is None or len(text) > _MAX_HEADER_VALUE:
        return plain
    text = text.strip()
    parts = list(_DURATION_PART.finditer(text))
    if not parts or "".join(p.group(0) for p in parts) != text:
        return None
    total = sum(float(p.group(1)) * _DURATION_UNITS[p.group(2)] for p in parts)
    return total if math.isfinite(total) else None


# -- defensive access ------------------------------------------------------------------------


def _is(value: object, cls: type[_T]) -> TypeGuard[_T]:
    """``isinstance`` by the object's real type: ``isinstance`` also reads ``__class__``,
    which a hostile object may make raise."""
    return issubclass(type(value), cls)


def _attr(obj: object, name: str) -> object:
    """``getattr(obj, name, None)``, where a failing property also gives ``None``."""
    if obj is None:
        return None
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def _mro(exc: BaseException) -> tuple[type, ...]:
    """The classes of ``exc``, read from its real type."""
    return type.__dict__["__mro__"].__get__(type(exc))  # type: ignore[no-any-return]


def _get(mapping: object, key: str) -> object:
    """``mapping[key]`` for a dict (a subclass's own ``get`` is not called), else ``None``."""
    return dict.get(mapping, key) if _is(mapping, dict) else None


def _plain_str(value: object) -> str | None:
    """A ``str`` (a subclass copied to a plain one without calling its methods), else None."""
    return str.__str__(value) if _is(value, str) else None


def _plain_list(value: object) -> list[object]:
    """The first items of a list (a subclass's own ``__iter__`` is not called), else []."""
    if not _is(value, list):
        return []
    return list(itertools.islice(list.__iter__(value), _MAX_ITEMS))


def _maybe_json(body: object) -> object:
    """A body as decoded JSON when it is a JSON string, else as it is (str and bytes plain)."""
    text: str | bytes | None = bytes(memoryview(body)) if _is(body, bytes) else _plain_str(body)
    if text is None:
        return body
    if text[:1] in ("{", b"{") and len(text) <= _MAX_TEXT:
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            pass
    return text


def _status_of(value: object) -> int | None:
    """An HTTP status (100-599) from an int or a string of three digits, else ``None``."""
    if _is(value, bool):
        return None
    text = _plain_str(value)
    if text is not None:
        text = text.strip()
        value = int(text) if len(text) == 3 and text.isascii() and text.isdigit() else None
    if _is(value, int):
        status = int.__index__(value)
        return status if 100 <= status <= 599 else None
    return None


def _id_of(value: object) -> str | None:
    """An error code or type, lower-cased, from a string value."""
    text = _plain_str(value)
    return text.strip().lower() if text is not None else None


def _text(value: object) -> str | None:
    """A header name or value as text (bytes are Latin-1, as HTTP/1.1 has it)."""
    if _is(value, bytes):
        return bytes(memoryview(value)).decode("latin-1")
    return _plain_str(value)


def _safe_str(exc: BaseException) -> str:
    """``str(exc)``, at most ``_MAX_TEXT`` of it, or ``""`` if its ``__str__`` raises."""
    try:
        return (_plain_str(str(exc)) or "")[:_MAX_TEXT]
    except Exception:
        return ""


def _dump(body: object) -> str:
    """A body as text to search, whatever its type."""
    try:
        return json.dumps(body, default=lambda o: _plain_str(o) or repr(type(o)))[:_MAX_TEXT]
    except Exception:
        return ""
