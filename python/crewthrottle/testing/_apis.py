"""The fake provider's two wire formats, OpenAI's and Anthropic's, behind one interface: what
:meth:`FakeProvider._serve` asks of each (token counts, headers, refusals, bodies)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from . import _anthropic as claude
from . import _openai as wire
from ._limits import Decision, Request

if TYPE_CHECKING:
    from ._provider import FakeProvider

__all__ = ["JSON", "SSE", "Anthropic", "Api", "OpenAI", "Response", "dumps"]

Response = tuple[int, dict[str, str], bytes]


def dumps(body: object) -> bytes:
    """A JSON body."""
    return json.dumps(body).encode()


JSON = {"content-type": "application/json"}
QUOTA_REFUSAL: Response = (
    429,
    JSON,
    json.dumps(
        wire.error_body(wire.QUOTA_MESSAGE, "insufficient_quota", "insufficient_quota")
    ).encode(),
)
SSE = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}


class Api:
    """One wire format's answers, for :meth:`FakeProvider._serve`."""

    id_prefix = ""

    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider

    def model(self, payload: Mapping[str, Any]) -> str:
        raise NotImplementedError

    def prompt_tokens(self, payload: Mapping[str, Any]) -> int:
        raise NotImplementedError

    def prompt_text(self, payload: Mapping[str, Any]) -> str:
        messages = payload.get("messages")
        return wire.prompt_text(messages if isinstance(messages, list) else [])

    def output_estimate(self, payload: Mapping[str, Any], completion: int) -> int:
        return completion

    def headers(self, decision: Decision) -> dict[str, str]:
        raise NotImplementedError

    def refusal(
        self, headers: dict[str, str], decision: Decision, model: str, request: Request
    ) -> Response:
        raise NotImplementedError

    def error(self, status: int, message: str) -> Response:
        raise NotImplementedError

    def overloaded(self) -> Response:
        raise NotImplementedError

    def quota(self) -> Response:
        raise NotImplementedError

    def body(self, reply: wire.Reply) -> Any:
        raise NotImplementedError

    def stream(self, reply: wire.Reply, payload: Mapping[str, Any]) -> Iterator[bytes]:
        raise NotImplementedError


class OpenAI(Api):
    id_prefix = "chatcmpl-fake"

    def model(self, payload: Mapping[str, Any]) -> str:
        return wire.model_of(payload)

    def prompt_tokens(self, payload: Mapping[str, Any]) -> int:
        return wire.prompt_tokens(payload["messages"])

    def headers(self, decision: Decision) -> dict[str, str]:
        return wire.ratelimit_headers(decision.requests, decision.tokens)

    def refusal(
        self, headers: dict[str, str], decision: Decision, model: str, request: Request
    ) -> Response:
        provider = self.provider
        if decision.retry_in is not None:
            headers.update(wire.retry_after_headers(decision.retry_in, provider._retry_after))
        limits = provider._limits
        message = wire.rate_limit_message(model, decision, request.tokens, limits.max_concurrent)
        kind = "tokens" if decision.reason == "tokens" else "requests"
        body = wire.error_body(message, kind, "rate_limit_exceeded")
        return 429, {**JSON, **headers}, dumps(body)

    def error(self, status: int, message: str) -> Response:
        return status, JSON, dumps(wire.error_body(message, "server_error", None))

    def overloaded(self) -> Response:
        status, headers, body = self.error(503, "The server is overloaded. Please retry.")
        return status, {**headers, "retry-after": "1"}, body

    def quota(self) -> Response:
        return QUOTA_REFUSAL

    def body(self, reply: wire.Reply) -> Any:
        return wire.completion_body(reply)

    def stream(self, reply: wire.Reply, payload: Mapping[str, Any]) -> Iterator[bytes]:
        options = payload.get("stream_options")
        usage = isinstance(options, dict) and options.get("include_usage") is True
        return wire.stream_events(reply, include_usage=usage)


class Anthropic(Api):
    id_prefix = "msg_fake"

    def model(self, payload: Mapping[str, Any]) -> str:
        model = payload.get("model")
        return model if isinstance(model, str) and model else claude.DEFAULT_MODEL

    def prompt_tokens(self, payload: Mapping[str, Any]) -> int:
        return claude.prompt_tokens(payload)

    def prompt_text(self, payload: Mapping[str, Any]) -> str:
        messages = payload.get("messages")
        listed = messages if isinstance(messages, list) else []
        return wire.prompt_text(listed, payload.get("system"))

    def output_estimate(self, payload: Mapping[str, Any], completion: int) -> int:
        # Anthropic estimates output from max_tokens until the reply's real count is known;
        # one request alone is never refused for it (max_tokens may exceed the limit).
        estimate = claude.max_tokens(payload) or completion
        limit = self.provider._limits.output_tpm
        return estimate if limit is None else min(estimate, limit)

    def headers(self, decision: Decision) -> dict[str, str]:
        return claude.ratelimit_headers(decision)

    def refusal(
        self, headers: dict[str, str], decision: Decision, model: str, request: Request
    ) -> Response:
        if decision.retry_in is not None:
            headers["retry-after"] = str(max(1, math.ceil(decision.retry_in)))
        message = claude.rate_limit_message(decision, request.input)
        body = claude.error_body("rate_limit_error", message)
        return 429, {**JSON, **headers}, dumps(body)

    def error(self, status: int, message: str) -> Response:
        return status, JSON, dumps(claude.error_body("api_error", message))

    def overloaded(self) -> Response:
        body = claude.error_body("overloaded_error", "Overloaded")
        return 529, {**JSON, "retry-after": "1"}, dumps(body)

    def quota(self) -> Response:
        message = "Your credit balance is too low to access the Anthropic API."
        return 400, JSON, dumps(claude.error_body("invalid_request_error", message))

    def body(self, reply: wire.Reply) -> Any:
        return claude.message_body(reply)

    def stream(self, reply: wire.Reply, payload: Mapping[str, Any]) -> Iterator[bytes]:
        return claude.stream_events(reply)
