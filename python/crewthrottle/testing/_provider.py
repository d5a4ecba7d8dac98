"""``FakeProvider``: an OpenAI-compatible chat completions server that enforces rate limits."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Literal, overload

from . import _openai as wire
from ._http import Send, Server
from ._limits import Admission, Decision, Limits, Reason
from ._stats import RequestRecord, max_in_any_window, one, tokens, utilisation

RetryAfter = Literal["seconds", "ms", "both"]
Latency = float | Callable[[], float]

Response = tuple[int, dict[str, str], bytes]

_JSON = {"content-type": "application/json"}
_QUOTA_REFUSAL: Response = (
    429,
    _JSON,
    json.dumps(
        wire.error_body(wire.QUOTA_MESSAGE, "insufficient_quota", "insufficient_quota")
    ).encode(),
)
_SSE = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}


class FakeProvider:
    """A fake OpenAI-compatible LLM provider on loopback that enforces rate limits.

    It serves ``POST /v1/chat/completions`` (and ``/chat/completions``) from a background
    thread, answering every accepted request with a deterministic CrewAI-style final answer::

        with FakeProvider(rpm=20, tpm=10_000, window=2.0) as provider:
            client = openai.OpenAI(base_url=provider.base_url, api_key="fake", max_retries=0)
            ...
        assert provider.max_requests_in_any_window() <= 20

    Limits hold over a sliding window of ``window`` seconds (60, as providers count per
    minute; tests scale it down): a request is refused with HTTP 429 if accepting it would put
    more than ``rpm`` request starts, or more than ``tpm`` tokens, within the last ``window``
    seconds, or if ``max_concurrent`` accepted requests are already in flight. Messages still
    say "per min", as OpenAI's do, whatever the window.

    A request's tokens are its prompt estimate (all message text, 4 characters a token,
    rounded up, at least 1) plus its completion tokens: ``completion_tokens``, or the request's
    ``max_completion_tokens``/``max_tokens`` if smaller (the reply text is not cut short).

    Args:
        rpm: Requests allowed per window, or None for no limit.
        tpm: Tokens allowed per window, or None for no limit.
        max_concurrent: Accepted requests allowed in flight at once, or None for no limit.
        window: Length of the sliding window, in seconds.
        latency: Seconds each accepted request takes (while it counts as in flight): a number,
            or a callable returning one, called once per accepted request. Refusals are
            answered at once.
        retry_after: Which retry hint a 429 carries: False (none, as often in real life),
            "seconds" (or True) for ``retry-after`` in whole seconds rounded up, "ms" for
            ``retry-after-ms``, "both" for both.
        rejected_consume_quota: Whether a refused request still counts against ``rpm``
            (as with providers that count attempts, so a retry storm keeps itself refused).
        quota_exhausted: Answer every request 429 ``insufficient_quota`` (never worth a retry);
            also settable while running.
        completion_tokens: Completion tokens each reply reports and counts.
        host: Loopback address to listen on.
        port: Port to listen on; 0 picks a free one.

    Raises:
        ValueError: for an out-of-range option, naming it.
        TypeError: for an option of the wrong type, naming it.
    """

    def __init__(
        self,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        max_concurrent: int | None = None,
        window: float = 60.0,
        latency: Latency = 0.0,
        retry_after: bool | RetryAfter = False,
        rejected_consume_quota: bool = False,
        quota_exhausted: bool = False,
        completion_tokens: int = 20,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._limits = Limits(
            rpm=_positive_int("rpm", rpm),
            tpm=_positive_int("tpm", tpm),
            max_concurrent=_positive_int("max_concurrent", max_concurrent),
            window=_seconds("window", window, allow_zero=False),
            rejected_consume_quota=_bool("rejected_consume_quota", rejected_consume_quota),
        )
        self._latency = latency if callable(latency) else _seconds("latency", latency)
        self._retry_after = _retry_after_mode(retry_after)
        self.quota_exhausted = _bool("quota_exhausted", quota_exhausted)
        self._completion_tokens = _positive_int("completion_tokens", completion_tokens, False)
        if not isinstance(host, str) or not host:
            raise TypeError(f"host must be a non-empty str, got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int from 0 to 65535, got {port!r}")
        self._host, self._port = host, port
        self._admission = Admission(self._limits)
        self._lock = threading.Lock()
        self._log: list[RequestRecord] = []
        self._ids = 0
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeProvider:
        """Bind and serve in a background (daemon) thread; returns ``self``.

        Raises:
            RuntimeError: if already running.
            OSError: if the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("FakeProvider is already running")
        self._stopping.clear()
        server = Server(self._host, self._port, self._chat)
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"crewthrottle-fake-provider:{server.server_port}",
            daemon=True,
        )
        self._server = server
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and join every thread; requests in their latency end at once. Idempotent."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        self._stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()  # joins the handler threads
        thread.join()

    def __enter__(self) -> FakeProvider:
        return self.start() if self._server is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server is serving."""
        return self._server is not None

    @property
    def url(self) -> str:
        """``http://host:port``, the server's root. Raises RuntimeError if not running."""
        if self._server is None:
            raise RuntimeError("FakeProvider is not running: call start() or use `with`")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The ``base_url`` for OpenAI-compatible clients: :attr:`url` plus ``/v1``."""
        return f"{self.url}/v1"

    @property
    def port(self) -> int:
        """The port actually listened on. Raises RuntimeError if not running."""
        if self._server is None:
            raise RuntimeError("FakeProvider is not running: call start() or use `with`")
        return self._server.server_port

    # -- assertions --------------------------------------------------------------------------

    @property
    def log(self) -> list[RequestRecord]:
        """A copy of the records of every answered chat request, in order of ``start``."""
        with self._lock:
            return sorted(self._log, key=lambda record: record.start)

    def count(self, status: int | None = None, *, reason: Reason | None = None) -> int:
        """Number of logged requests, optionally only those with ``status`` and/or ``reason``."""
        return sum(
            1
            for r in self.log
            if (status is None or r.status == status) and (reason is None or r.reason == reason)
        )

    def reset(self) -> None:
        """Forget the log, the windows' contents and :attr:`max_in_flight`."""
        with self._lock:
            self._log.clear()
        self._admission.reset()

    @property
    def in_flight(self) -> int:
        """Accepted requests being answered right now."""
        return self._admission.in_flight

    @property
    def max_in_flight(self) -> int:
        """Most accepted requests ever in flight at once (since start or :meth:`reset`)."""
        return self._admission.max_in_flight

    def max_requests_in_any_window(self, window: float | None = None) -> int:
        """Most accepted requests started within any ``window`` seconds (default: the limit's)."""
        return max_in_any_window(self.log, self._window(window), one)

    def max_tokens_in_any_window(self, window: float | None = None) -> int:
        """Most tokens of accepted requests started within any ``window`` seconds."""
        return max_in_any_window(self.log, self._window(window), tokens)

    def utilisation(self, by: Literal["requests", "tokens"] | None = None) -> float:
        """Share of the allowed capacity that accepted requests used in steady state.

        Steady state starts one window after the first accepted request (skipping the initial
        burst every client gets) and spans the most whole windows that end before the last
        accepted request; the figure is what was started in them divided by what the limit
        allowed in them, so it lies in [0, 1]. ``by`` picks the limit; None takes the binding
        one, i.e. the highest figure among the configured ``rpm`` and ``tpm``.

        Raises:
            ValueError: if the chosen limit is not configured, or the accepted traffic spans
                fewer than two windows.
        """
        window = self._limits.window
        figures = []
        for kind, limit, amount in (
            ("requests", self._limits.rpm, one),
            ("tokens", self._limits.tpm, tokens),
        ):
            if by in (None, kind) and limit is not None:
                figures.append(utilisation(self.log, limit, window, amount))
        if not figures:
            raise ValueError(f"utilisation(by={by!r}) needs that limit (rpm or tpm) configured")
        return max(figures)

    def __repr__(self) -> str:
        lim = self._limits
        where = self.url if self.running else "stopped"
        return (
            f"<FakeProvider {where} rpm={lim.rpm} tpm={lim.tpm} "
            f"max_concurrent={lim.max_concurrent} window={lim.window} "
            f"in_flight={self.in_flight} requests={len(self._log)}>"
        )

    # -- serving (called from handler threads) -----------------------------------------------

    def _chat(self, payload: dict[str, Any], send: Send) -> None:
        """Answer one chat completion request (called by the server's handler threads).

        The request is logged, and stops counting as in flight, just before its response is
        written: a client that has read a response always finds it in the log, and a client
        that keeps at most ``max_concurrent`` requests open is never refused for concurrency.
        """
        messages: list[Any] = payload["messages"]
        model, stream = wire.model_of(payload), payload.get("stream") is True
        prompt = wire.prompt_tokens(messages)
        completion = wire.completion_tokens(payload, self._completion_tokens)
        if self.quota_exhausted:
            self._record(time.monotonic(), 429, prompt, 0, self.in_flight, "quota", model, stream)
            send(*_QUOTA_REFUSAL)
            return
        try:
            latency = self._next_latency()
        except Exception as exc:  # a broken latency callable is the test's bug: say so
            body = wire.error_body(f"latency failed: {exc!r}", "server_error", None)
            send(500, _JSON, _dumps(body))
            return
        start = time.monotonic()
        decision = self._admission.admit(start, prompt + completion, latency)
        headers = wire.ratelimit_headers(decision.requests, decision.tokens)
        if not decision.accepted:
            response = self._refusal(headers, decision, model, prompt + completion)
            self._record(start, 429, prompt, 0, decision.in_flight, decision.reason, model, stream)
            send(*response)
            return
        try:
            if latency > 0:
                self._stopping.wait(latency)
            response = self._reply(headers, payload, model, prompt, completion)
        finally:
            self._admission.release(decision.ticket)
            self._record(start, 200, prompt, completion, decision.in_flight, None, model, stream)
        send(*response)

    def _refusal(
        self, headers: dict[str, str], decision: Decision, model: str, requested: int
    ) -> Response:
        if decision.retry_in is not None:
            headers.update(wire.retry_after_headers(decision.retry_in, self._retry_after))
        message = wire.rate_limit_message(model, decision, requested, self._limits.max_concurrent)
        kind = "tokens" if decision.reason == "tokens" else "requests"
        body = wire.error_body(message, kind, "rate_limit_exceeded")
        return 429, {**_JSON, **headers}, _dumps(body)

    def _reply(
        self,
        headers: dict[str, str],
        payload: Mapping[str, Any],
        model: str,
        prompt: int,
        completion: int,
    ) -> Response:
        with self._lock:
            self._ids += 1
            ident = f"chatcmpl-fake{self._ids:08d}"
        content = wire.reply_content(payload["messages"])
        reply = wire.Reply(ident, int(time.time()), model, content, prompt, completion)
        if payload.get("stream") is True:
            options = payload.get("stream_options")
            usage = isinstance(options, dict) and options.get("include_usage") is True
            events = wire.stream_events(reply, include_usage=usage)
            return 200, {**_SSE, **headers}, b"".join(events)
        return 200, {**_JSON, **headers}, _dumps(wire.completion_body(reply))

    def _record(
        self,
        start: float,
        status: int,
        prompt: int,
        completion: int,
        in_flight: int,
        reason: Reason | None,
        model: str,
        stream: bool,
    ) -> None:
        record = RequestRecord(
            start, time.monotonic(), status, prompt, completion, in_flight, reason, model, stream
        )
        with self._lock:
            self._log.append(record)

    def _next_latency(self) -> float:
        if not callable(self._latency):
            return self._latency
        return _seconds("latency() result", self._latency())

    def _window(self, window: float | None) -> float:
        return self._limits.window if window is None else _seconds("window", window, False)


def _dumps(body: object) -> bytes:
    return json.dumps(body).encode()


@overload
def _positive_int(name: str, value: int | None) -> int | None: ...


@overload
def _positive_int(name: str, value: int, optional: Literal[False]) -> int: ...


def _positive_int(name: str, value: int | None, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        expected = "an int or None" if optional else "an int"
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    if value < 1:
        hint = " (or None for no limit)" if optional else ""
        raise ValueError(f"{name} must be at least 1{hint}, got {value!r}")
    return value


def _seconds(name: str, value: float, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
    return float(value)


def _bool(name: str, value: bool) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def _retry_after_mode(value: bool | RetryAfter | None) -> RetryAfter | None:
    if value is None or value is False:
        return None
    if value is True:
        return "seconds"
    if value in ("seconds", "ms", "both"):
        return value
    raise ValueError(f'retry_after must be False, True, "seconds", "ms" or "both", got {value!r}')
