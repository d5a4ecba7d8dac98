"""Read the rate-limit headers providers send on every response (issue 8): the one parser,
used by :meth:`crewthrottle.Limiter.observe`.

- OpenAI (https://platform.openai.com/docs/guides/rate-limits): ``x-ratelimit-limit-requests``,
  ``x-ratelimit-limit-tokens``, ``x-ratelimit-remaining-{requests,tokens}``,
  ``x-ratelimit-reset-{requests,tokens}`` with Go durations (``6m0s``, ``1.5s``, ``20ms``).
- Azure OpenAI sends the same names, often only ``x-ratelimit-remaining-*`` (without a limit
  nothing can be learned from them: configure Azure's limits).
- Anthropic (https://docs.anthropic.com/en/api/rate-limits):
  ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}``,
  resets as RFC 3339 times; ``retry-after`` on a 429.

Any mapping works (httpx's and requests' headers, a dict, a list of pairs), keys in any case,
bytes as Latin-1. Missing or malformed values are left out; nothing here ever raises (an
observation runs on every response, and must never replace the reply with an error of ours).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from crewthrottle._rate_limit_errors import (
    _duration,
    _header_lookup,
    _plain_str,
    named_wait,
)

__all__ = ["RateLimit", "RateLimitHeaders", "parse_ratelimit_headers"]

#: The largest count read (2**53, the limiter's own bound); a larger value is malformed.
_MAX_COUNT = 1 << 53
#: A count or a time longer than this is malformed (RFC 3339 with nanoseconds is 35).
_MAX_VALUE = 40

_KINDS = ("requests", "tokens", "input_tokens", "output_tokens")

_Lookup = Callable[[str], "str | None"]


@dataclass(frozen=True)
class RateLimit:
    """One limit as a response reports it; ``None`` where a value is missing or malformed.

    ``reset`` is the number of seconds until the limit is whole again (OpenAI's duration, or
    Anthropic's time less now), at least 0.
    """

    limit: int | None = None
    remaining: int | None = None
    reset: float | None = None

    @property
    def used(self) -> int | None:
        """What the provider counted against the limit (``limit - remaining``), if known."""
        if self.limit is None or self.remaining is None:
            return None
        return max(0, self.limit - self.remaining)


@dataclass(frozen=True)
class RateLimitHeaders:
    """What one response's rate-limit headers say (see :func:`parse_ratelimit_headers`)."""

    requests: RateLimit = RateLimit()
    tokens: RateLimit = RateLimit()
    input_tokens: RateLimit = RateLimit()
    output_tokens: RateLimit = RateLimit()
    #: ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date), in seconds.
    retry_after: float | None = None

    @property
    def limiting_tokens(self) -> RateLimit:
        """The token limit that binds: ``tokens`` if sent, else the one of Anthropic's input
        and output limits with the least remaining (a limiter's ``tpm`` counts both)."""
        if self.tokens.limit is not None:
            return self.tokens
        known = [t for t in (self.input_tokens, self.output_tokens) if t.limit is not None]
        return min(known, key=_left, default=self.tokens)


def _left(limit: RateLimit) -> int:
    return limit.remaining if limit.remaining is not None else limit.limit or 0


def parse_ratelimit_headers(headers: object) -> RateLimitHeaders:
    """The rate-limit figures in a response's ``headers``, OpenAI's or Anthropic's.

    Never raises: an unreadable mapping or value gives ``None`` for what it would have said.
    """
    try:
        lookup = _header_lookup(headers)
        kinds = {kind: _limit(lookup, kind) for kind in _KINDS}
        return RateLimitHeaders(**kinds, retry_after=named_wait(lookup))
    except Exception:  # documented never to raise
        return RateLimitHeaders()


def _observation(headers: object) -> tuple[int | None, int | None, int | None, int | None]:
    """What ``Limiter.observe`` takes from ``headers``: requests limit and remaining, tokens
    limit and remaining."""
    parsed = parse_ratelimit_headers(headers)
    tokens = parsed.limiting_tokens
    return parsed.requests.limit, parsed.requests.remaining, tokens.limit, tokens.remaining


def _limit(lookup: _Lookup, kind: str) -> RateLimit:
    """One kind, OpenAI's names first, then Anthropic's."""
    dashed = kind.replace("_", "-")
    openai = RateLimit(
        _count(lookup(f"x-ratelimit-limit-{dashed}")),
        _count(lookup(f"x-ratelimit-remaining-{dashed}")),
        _duration(lookup(f"x-ratelimit-reset-{dashed}")),
    )
    anthropic = RateLimit(
        _count(lookup(f"anthropic-ratelimit-{dashed}-limit")),
        _count(lookup(f"anthropic-ratelimit-{dashed}-remaining")),
        _until(lookup(f"anthropic-ratelimit-{dashed}-reset")),
    )
    return openai if openai != RateLimit() else anthropic


def _count(value: object) -> int | None:
    """A count written in decimal digits, at most 2**53, else None."""
    text = _plain_str(value)
    if text is None or len(text) > _MAX_VALUE:
        return None
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        return None
    count = int(text)
    return count if count <= _MAX_COUNT else None


def _until(value: object) -> float | None:
    """Seconds from now until an RFC 3339 time (``2025-01-01T00:00:30Z``), at least 0."""
    text = _plain_str(value)
    if text is None or len(text) > _MAX_VALUE:
        return None
    text = text.strip()
    if text[-1:] in ("Z", "z"):  # fromisoformat takes "Z" only from Python 3.11
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:  # RFC 3339 requires an offset: a time without one is malformed
        return None
    wait = when.astimezone(timezone.utc).timestamp() - time.time()
    return max(0.0, wait) if math.isfinite(wait) else None
