"""OpenAI wire format for the fake provider: token estimates, bodies, errors and headers.

Follows the Chat Completions API as the ``openai`` Python SDK reads it: the ``chat.completion``
object, ``chat.completion.chunk`` server-sent events ending in ``data: [DONE]``, the error
object ``{"error": {"message", "type", "param", "code"}}`` and the ``x-ratelimit-*`` headers
(https://platform.openai.com/docs/guides/rate-limits).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ._limits import Decision, Usage

DEFAULT_MODEL = "gpt-4o-mini"
ORGANIZATION = "org-fake"
QUOTA_MESSAGE = "You exceeded your current quota, please check your plan and billing details."

Json = dict[str, Any]


def message_text(content: object) -> str:
    """The text of one message's ``content``: a string, or a list of ``{"text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def prompt_tokens(messages: list[Any]) -> int:
    """Estimate: all message text, 4 characters a token, rounded up, at least 1."""
    chars = sum(len(message_text(m.get("content"))) for m in messages if isinstance(m, dict))
    return max(1, math.ceil(chars / 4))


def prompt_text(messages: list[Any], system: object = None) -> str:
    """The text of a request: ``system`` (Anthropic's), then each message's, one per line."""
    texts = [message_text(system)] if system is not None else []
    texts += [message_text(m.get("content")) for m in messages if isinstance(m, dict)]
    return "\n".join(texts)


def completion_tokens(payload: Mapping[str, Any], default: int) -> int:
    """``default``, or the request's ``max_completion_tokens``/``max_tokens`` if smaller."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = payload.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return min(default, value)
    return default


def reply_content(messages: list[Any]) -> str:
    """A ReAct final answer (what CrewAI's parser accepts), fixed by the last user message."""
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    last = message_text(users[-1].get("content")) if users else ""
    digest = hashlib.sha256(last.encode()).hexdigest()[:8]
    return f"Thought: I now know the final answer\nFinal Answer: fake answer #{digest}"


def model_of(payload: Mapping[str, Any]) -> str:
    """The requested model, echoed back (a default when the request names none)."""
    model = payload.get("model")
    return model if isinstance(model, str) and model else DEFAULT_MODEL


@dataclass(frozen=True)
class Reply:
    """One accepted request's answer."""

    ident: str
    created: int  # Unix time, seconds
    model: str
    content: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def usage(self) -> Json:
        """The ``usage`` object."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def completion_body(reply: Reply) -> Json:
    """A non-streaming ``chat.completion`` object."""
    return {
        "id": reply.ident,
        "object": "chat.completion",
        "created": reply.created,
        "model": reply.model,
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": reply.usage,
    }


def stream_events(reply: Reply, *, include_usage: bool) -> Iterator[bytes]:
    """Server-sent events of a streamed completion: role, content by line, stop, [usage]."""
    head: Json = {"id": reply.ident, "object": "chat.completion.chunk", "created": reply.created}
    head.update(model=reply.model, system_fingerprint="fp_fake")
    if include_usage:  # OpenAI sends "usage": null on every chunk but the last when asked
        head["usage"] = None
    deltas: list[tuple[Json, str | None]] = [({"role": "assistant", "content": ""}, None)]
    deltas += [({"content": line}, None) for line in reply.content.splitlines(keepends=True)]
    deltas.append(({}, "stop"))
    for delta, finish in deltas:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        yield _event({**head, "choices": [choice]})
    if include_usage:
        yield _event({**head, "choices": [], "usage": reply.usage})
    yield b"data: [DONE]\n\n"


def error_body(message: str, type_: str, code: str | None) -> Json:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def rate_limit_message(
    model: str, decision: Decision, requested_tokens: int, max_concurrent: int | None
) -> str:
    """The message of a 429 for ``decision`` (a rejected one), in OpenAI's words.

    OpenAI has no concurrency limit; that message follows the same pattern.
    """
    where = f"for {model} in organization {ORGANIZATION}"
    if decision.reason == "concurrency":
        head = f"Too many concurrent requests {where}: Limit {max_concurrent}, "
        head += f"In flight {decision.in_flight}."
    elif decision.reason == "tokens" and decision.retry_in is None:
        limit = decision.tokens.limit if decision.tokens else 0
        return (
            f"Request too large {where} on tokens per min (TPM): Limit {limit}, "
            f"Requested {requested_tokens}. The input or output tokens must be reduced in "
            "order to run successfully."
        )
    elif decision.reason == "tokens":
        limit = decision.tokens.limit if decision.tokens else 0
        head = f"Rate limit reached {where} on tokens per min (TPM): Limit {limit}, "
        head += f"Used {decision.used_tokens}, Requested {requested_tokens}."
    else:
        limit = decision.requests.limit if decision.requests else 0
        head = f"Rate limit reached {where} on requests per min (RPM): Limit {limit}, "
        head += f"Used {decision.used_requests}, Requested 1."
    return f"{head} Please try again in {format_duration(decision.retry_in or 0.0)}."


def ratelimit_headers(requests: Usage | None, tokens: Usage | None) -> dict[str, str]:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the configured limits."""
    headers: dict[str, str] = {}
    for kind, usage in (("requests", requests), ("tokens", tokens)):
        if usage is not None:
            headers[f"x-ratelimit-limit-{kind}"] = str(usage.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(usage.remaining)
            headers[f"x-ratelimit-reset-{kind}"] = format_duration(usage.reset)
    return headers


def retry_after_headers(seconds: float, mode: str | None) -> dict[str, str]:
    """``retry-after`` (whole seconds, rounded up, as RFC 9110 wants) and/or ``retry-after-ms``."""
    headers: dict[str, str] = {}
    if mode in ("seconds", "both"):
        headers["retry-after"] = str(math.ceil(seconds))
    if mode in ("ms", "both"):
        headers["retry-after-ms"] = str(math.ceil(seconds * 1000))
    return headers


def format_duration(seconds: float) -> str:
    """OpenAI's (Go's) duration text: ``"20ms"``, ``"1.5s"``, ``"6m0s"``, ``"1h2m3s"``.

    Rounded up to the millisecond, so a client that waits this long is never early.
    """
    millis = math.ceil(round(seconds * 1000, 6))
    if millis <= 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _event(chunk: Json) -> bytes:
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
