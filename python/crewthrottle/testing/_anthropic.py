"""Anthropic wire format for the fake provider: the Messages API as the ``anthropic`` SDK
reads it.

``POST /v1/messages`` answers a ``message`` object, or (``"stream": true``) the server-sent
events ``message_start``, ``content_block_start``, ``ping``, ``content_block_delta``,
``content_block_stop``, ``message_delta`` (with the final ``usage``) and ``message_stop``.
Errors are ``{"type": "error", "error": {"type", "message"}}`` with ``rate_limit_error``
(429) and ``overloaded_error`` (529). Rate-limit headers are
``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}``,
resets as RFC 3339 times (https://docs.anthropic.com/en/api/rate-limits).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

from ._limits import Decision, Usage
from ._openai import Reply, message_text

DEFAULT_MODEL = "claude-3-5-haiku-latest"

Json = dict[str, Any]

_KINDS = {
    "requests": "requests",
    "tokens": "tokens",
    "input_tokens": "input tokens",
    "output_tokens": "output tokens",
}


def prompt_tokens(payload: Mapping[str, Any]) -> int:
    """Input estimate: the system prompt and all message text, 4 characters a token, rounded
    up, at least 1."""
    system = payload.get("system")
    chars = len(message_text(system)) if system is not None else 0
    messages = payload.get("messages") or []
    chars += sum(len(message_text(m.get("content"))) for m in messages if isinstance(m, dict))
    return max(1, math.ceil(chars / 4))


def max_tokens(payload: Mapping[str, Any]) -> int | None:
    """The request's ``max_tokens`` (required by Anthropic), or None if missing or invalid."""
    value = payload.get("max_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def message_body(reply: Reply) -> Json:
    """A non-streaming ``message`` object."""
    return {
        "id": reply.ident,
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": [{"type": "text", "text": reply.content}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage(reply),
    }


def usage(reply: Reply) -> Json:
    """Anthropic's ``usage``: input and output tokens (no prompt caching here)."""
    return {
        "input_tokens": reply.prompt_tokens,
        "output_tokens": reply.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def stream_events(reply: Reply) -> Iterator[bytes]:
    """The server-sent events of a streamed message, text delivered line by line."""
    start = {**message_body(reply), "content": [], "stop_reason": None}
    start["usage"] = {**usage(reply), "output_tokens": 1}
    yield _event("message_start", {"type": "message_start", "message": start})
    block = {"type": "text", "text": ""}
    yield _event(
        "content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}
    )
    yield _event("ping", {"type": "ping"})
    for line in reply.content.splitlines(keepends=True):
        delta = {"type": "text_delta", "text": line}
        yield _event(
            "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
        )
    yield _event("content_block_stop", {"type": "content_block_stop", "index": 0})
    final = {"stop_reason": "end_turn", "stop_sequence": None}
    # message_delta's usage is cumulative, input tokens included, as Anthropic's now is.
    tail = {"type": "message_delta", "delta": final, "usage": usage(reply)}
    yield _event("message_delta", tail)
    yield _event("message_stop", {"type": "message_stop"})


def error_body(kind: str, message: str) -> Json:
    """Anthropic's error object."""
    return {"type": "error", "error": {"type": kind, "message": message}}


def rate_limit_message(decision: Decision, requested: int) -> str:
    """The message of a 429 for ``decision`` (a rejected one), in Anthropic's words."""
    kind = _KINDS.get(str(decision.reason), "requests")
    if decision.retry_in is None:
        return (
            f"This request would exceed the rate limit for your organization of {kind} per "
            f"minute on its own ({requested} requested)."
        )
    return (
        f"This request would exceed the rate limit for your organization of {kind} per "
        "minute. For details, refer to: https://docs.anthropic.com/en/api/rate-limits."
    )


def ratelimit_headers(decision: Decision) -> dict[str, str]:
    """``anthropic-ratelimit-*`` for the configured limits; ``tokens`` is the most
    restrictive of the token limits, as Anthropic sends it."""
    headers: dict[str, str] = {}
    token_limits = [
        u for u in (decision.tokens, decision.input_tokens, decision.output_tokens) if u
    ]
    kinds = (
        ("requests", decision.requests),
        ("tokens", min(token_limits, key=lambda u: u.remaining) if token_limits else None),
        ("input-tokens", decision.input_tokens),
        ("output-tokens", decision.output_tokens),
    )
    for kind, limit in kinds:
        if limit is not None:
            headers.update(_limit_headers(kind, limit))
    return headers


def _limit_headers(kind: str, limit: Usage) -> dict[str, str]:
    reset = datetime.fromtimestamp(time.time() + limit.reset, tz=timezone.utc)
    return {
        f"anthropic-ratelimit-{kind}-limit": str(limit.limit),
        f"anthropic-ratelimit-{kind}-remaining": str(limit.remaining),
        f"anthropic-ratelimit-{kind}-reset": reset.isoformat(timespec="seconds").replace(
            "+00:00", "Z"
        ),
    }


def _event(name: str, data: Json) -> bytes:
    return (
        f"event: {name}\ndata: ".encode()
        + json.dumps(data, separators=(",", ":")).encode()
        + b"\n\n"
    )
