"""``FakeProvider``: an OpenAI- and Anthropic-compatible server that enforces rate limits."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Literal, overload

from . import _anthropic as claude
from . import _openai as wire
from ._apis import JSON, SSE, Anthropic, Api, OpenAI, dumps
from ._http import CHAT_PATHS, MESSAGES_PATHS, Send, Server
from ._limits import Admission, Limits, Reason, Request
from ._stats import RequestRecord, max_in_any_window, one, tokens, utilisation

RetryAfter = Literal["seconds", "ms", "both"]
Latency = float | Callable[[], float]

Response = tuple[int, dict[str, str], bytes]


class FakeProvider:
    """A fake OpenAI- and Anthropic-compatible LLM provider on loopback that enforces rate
    limits.

    It serves OpenAI's ``POST /v1/chat/completions`` and Anthropic's Messages API,
    ``POST /v1/messages`` (each with or without ``/v1``; point Anthropic clients at
    :attr:`url`), from a background thread, answering every accepted request with a
    deterministic CrewAI-style final answer::

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

    Anthropic's limits are also enforced, separately, as Anthropic does: ``input_tpm`` counts
    input (prompt) tokens when a request arrives; ``output_tpm`` counts output tokens
    estimated from the request's ``max_tokens`` when it arrives (never more than the limit
    itself) and corrected to the real output when it ends. ``rpm``, ``tpm`` and
    ``max_concurrent`` hold for both APIs alike. Anthropic's answers carry its error bodies
    (``rate_limit_error``, ``overloaded_error``) and ``anthropic-ratelimit-*`` headers; a 429
    there always carries ``retry-after``, as Anthropic's do. OpenAI's answers, 429s included,
    carry ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the limits configured.

    ``foreign_share`` simulates another client on the same key that the app cannot see: it
    uses that share of ``rpm`` and ``tpm`` per window in the background, its requests arriving
    evenly (each ``tpm / rpm`` tokens) and admitted like any other, so they fill the windows
    and the headers' ``remaining`` counts (see :attr:`foreign_requests`).

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
        input_tpm: Input tokens allowed per window (Anthropic's ITPM), or None.
        output_tpm: Output tokens allowed per window (Anthropic's OTPM), or None.
        foreign_share: Share of ``rpm``/``tpm`` another client uses, from 0 (none) to below 1.
        ratelimit_headers: Whether answers carry the rate-limit headers (False: a provider
            that sends none; ``retry-after`` still follows ``retry_after``).
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
        input_tpm: int | None = None,
        output_tpm: int | None = None,
        foreign_share: float = 0.0,
        ratelimit_headers: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._limits = Limits(
            rpm=_positive_int("rpm", rpm),
            tpm=_positive_int("tpm", tpm),
            max_concurrent=_positive_int("max_concurrent", max_concurrent),
            window=_seconds("window", window, allow_zero=False),
            rejected_consume_quota=_bool("rejected_consume_quota", rejected_consume_quota),
            input_tpm=_positive_int("input_tpm", input_tpm),
            output_tpm=_positive_int("output_tpm", output_tpm),
        )
        self._overloads = 0
        self._latency = latency if callable(latency) else _seconds("latency", latency)
        self._retry_after = _retry_after_mode(retry_after)
        self.quota_exhausted = _bool("quota_exhausted", quota_exhausted)
        self._completion_tokens = _positive_int("completion_tokens", completion_tokens, False)
        if not isinstance(host, str) or not host:
            raise TypeError(f"host must be a non-empty str, got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int from 0 to 65535, got {port!r}")
        self._host, self._port = host, port
        self._admission = Admission(self._limits, _share("foreign_share", foreign_share))
        self._ratelimit_headers = _bool("ratelimit_headers", ratelimit_headers)
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
        engines = {path: self._chat for path in CHAT_PATHS}
        engines.update({path: self._messages for path in MESSAGES_PATHS})
        server = Server(self._host, self._port, engines)
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

    def overload(self, count: int = 1) -> None:
        """Answer the next ``count`` requests ``529 overloaded_error`` (Anthropic's "the API
        is overloaded", with ``retry-after: 1``; an OpenAI request gets a 503 instead).
        Overloaded requests count against no limit."""
        with self._lock:
            self._overloads = _positive_int("count", count, False)

    def reset(self) -> None:
        """Forget the log, the windows' contents and :attr:`max_in_flight`."""
        with self._lock:
            self._log.clear()
        self._admission.reset()

    @property
    def foreign_requests(self) -> tuple[int, int]:
        """Requests of the other client (``foreign_share``) accepted and refused so far."""
        foreign = self._admission.foreign
        return (0, 0) if foreign is None else (foreign.accepted, foreign.refused)

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
        """Answer one OpenAI chat completion request (from a handler thread)."""
        self._serve(OpenAI(self), payload, send)

    def _messages(self, payload: dict[str, Any], send: Send) -> None:
        """Answer one Anthropic Messages API request (from a handler thread)."""
        if claude.max_tokens(payload) is None:
            body = claude.error_body("invalid_request_error", "max_tokens: Field required")
            send(400, JSON, dumps(body))
            return
        self._serve(Anthropic(self), payload, send)

    def _serve(self, api: Api, payload: dict[str, Any], send: Send) -> None:
        """Answer one request in ``api``'s wire format.

        The request is logged, and stops counting as in flight, just before its response is
        written: a client that has read a response always finds it in the log, and a client
        that keeps at most ``max_concurrent`` requests open is never refused for concurrency.
        """
        model, stream = api.model(payload), payload.get("stream") is True
        prompt, text = api.prompt_tokens(payload), api.prompt_text(payload)
        completion = wire.completion_tokens(payload, self._completion_tokens)
        refusal = self._refused_at_once(api)
        if refusal is not None:
            reason, response = refusal
            self._record(
                time.monotonic(),
                response[0],
                prompt,
                0,
                self.in_flight,
                reason,
                model,
                stream,
                text,
            )
            send(*response)
            return
        try:
            latency = self._next_latency()
        except Exception as exc:  # a broken latency callable is the test's bug: say so
            send(*api.error(500, f"latency failed: {exc!r}"))
            return
        start = time.monotonic()
        request = Request(prompt + completion, prompt, api.output_estimate(payload, completion))
        decision = self._admission.admit(start, request, latency)
        headers = api.headers(decision) if self._ratelimit_headers else {}
        if not decision.accepted:
            response = api.refusal(headers, decision, model, request)
            self._record(
                start, 429, prompt, 0, decision.in_flight, decision.reason, model, stream, text
            )
            send(*response)
            return
        try:
            if latency > 0:
                self._stopping.wait(latency)
            response = self._reply(api, headers, payload, model, prompt, completion)
        finally:
            self._admission.release(decision.ticket, completion)
            self._record(
                start, 200, prompt, completion, decision.in_flight, None, model, stream, text
            )
        send(*response)

    def _refused_at_once(self, api: Api) -> tuple[Reason, Response] | None:
        """An overload (see :meth:`overload`) or an exhausted quota, before any limit."""
        with self._lock:
            overloaded = self._overloads > 0
            self._overloads -= overloaded
        if overloaded:
            return "overloaded", api.overloaded()
        if self.quota_exhausted:
            return "quota", api.quota()
        return None

    def _reply(
        self,
        api: Api,
        headers: dict[str, str],
        payload: Mapping[str, Any],
        model: str,
        prompt: int,
        completion: int,
    ) -> Response:
        with self._lock:
            self._ids += 1
            ident = f"{api.id_prefix}{self._ids:08d}"
        content = wire.reply_content(payload["messages"])
        reply = wire.Reply(ident, int(time.time()), model, content, prompt, completion)
        if payload.get("stream") is True:
            return 200, {**SSE, **headers}, b"".join(api.stream(reply, payload))
        return 200, {**JSON, **headers}, dumps(api.body(reply))

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
        text: str,
    ) -> None:
        record = RequestRecord(
            start,
            time.monotonic(),
            status,
            prompt,
            completion,
            in_flight,
            reason,
            model,
            stream,
            text,
        )
        with self._lock:
            self._log.append(record)

    def _next_latency(self) -> float:
        if not callable(self._latency):
            return self._latency
        return _seconds("latency() result", self._latency())

    def _window(self, window: float | None) -> float:
        return self._limits.window if window is None else _seconds("window", window, False)


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


def _share(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be at least 0 and below 1, got {value!r}")
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
