"""The layers under a throttled CrewAI LLM: where each HTTP request takes its permit, and the
retry layers switched off so that one logical call costs at most ``max_tries`` requests.

Where the permit is taken, by CrewAI's route:

- native OpenAI and Anthropic providers: CrewAI's public ``interceptor`` option
  (:class:`crewai.llms.hooks.BaseInterceptor`), whose ``on_outbound`` runs in the HTTP
  transport, just before each request is written: :func:`interceptor_class`;
- LiteLLM with an OpenAI-compatible or an Anthropic model: a client handed to LiteLLM with
  each completion (its ``client`` parameter; an ``openai`` client, or LiteLLM's own HTTP
  handler for Anthropic), whose httpx request hooks take the permit just before each request
  is sent (the seams on the way are in :mod:`crewthrottle._seams`);
- any other route (LiteLLM with other models, Gemini, Bedrock, Azure, a custom ``BaseLLM``):
  when the attempt starts. Retries being off, that is still one permit per
  HTTP request, only taken a little earlier.

Retry layers, all off: the SDK's (the provider's public ``max_retries`` field), LiteLLM's
(``num_retries=0``/``max_retries=0`` through the public ``additional_params``) and CrewAI's own
rate-limit retry around every provider's ``call`` (a private seam, see :mod:`crewthrottle._seams`).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from crewthrottle import _seams as seams
from crewthrottle._integrations import is_llm_call

if TYPE_CHECKING:
    import httpx

__all__ = [
    "Current",
    "LiteLLMClients",
    "current",
    "interceptor_class",
    "litellm_clients",
    "uses_interceptor",
]


class Current(Protocol):
    """What the request hooks ask of the throttled call under way."""

    def owns(self, key: object) -> bool: ...

    def take(self) -> None: ...

    async def atake(self) -> None: ...

    def on_response(self, status: object, headers: object) -> None: ...


#: The attempt of a throttled call under way in this context, if any.
current: contextvars.ContextVar[Current | None] = contextvars.ContextVar(
    "crewthrottle_crewai_attempt", default=None
)


def _is_call(request: httpx.Request) -> bool:
    return is_llm_call(request.url.path)


def _mine(key: object, request: httpx.Request | None = None) -> Current | None:
    """The attempt under way if hooks made for ``key`` serve it (and ``request``, if given,
    is an LLM call rather than, say, token counting)."""
    attempt = current.get()
    if attempt is None or not attempt.owns(key):
        return None
    return attempt if request is None or _is_call(request) else None


def uses_interceptor(llm: Any) -> bool:
    """Whether ``llm``'s route builds its SDK clients with CrewAI's ``interceptor``."""
    fields = type(llm).model_fields
    return "interceptor" in fields and not getattr(llm, "is_litellm", False)


_interceptor: type | None = None


def interceptor_class() -> type:
    """:class:`PermitInterceptor`, made once CrewAI is importable."""
    global _interceptor
    if _interceptor is None:
        from crewai.llms.hooks import BaseInterceptor

        class PermitInterceptor(BaseInterceptor[Any, Any]):
            """Takes the current attempt's permit just before each request is written, and
            hands each response's status and headers to it; then the user's interceptor."""

            def __init__(self, key: object, inner: Any = None) -> None:
                self.key, self.inner = key, inner

            def on_outbound(self, message: Any) -> Any:
                if self.inner is not None:
                    message = self.inner.on_outbound(message)
                attempt = _mine(self.key, message)
                if attempt is not None:
                    attempt.take()
                return message

            def on_inbound(self, message: Any) -> Any:
                attempt = _mine(self.key)
                if attempt is not None:
                    attempt.on_response(message.status_code, message.headers)
                return message if self.inner is None else self.inner.on_inbound(message)

            async def aon_outbound(self, message: Any) -> Any:
                if self.inner is not None:
                    message = await self.inner.aon_outbound(message)
                attempt = _mine(self.key, message)
                if attempt is not None:
                    await attempt.atake()
                return message

            async def aon_inbound(self, message: Any) -> Any:
                attempt = _mine(self.key)
                if attempt is not None:
                    attempt.on_response(message.status_code, message.headers)
                return message if self.inner is None else await self.inner.aon_inbound(message)

        _interceptor = PermitInterceptor
    return _interceptor


def litellm_options(llm: Any) -> dict[str, Any]:
    """``additional_params`` for a LiteLLM-path LLM with LiteLLM's own retries off."""
    return {**(llm.additional_params or {}), "num_retries": 0, "max_retries": 0}


class LiteLLMClients:
    """The clients handed to LiteLLM for one throttled LLM: one sync client, and one async
    client per event loop (an async client's connections belong to the loop that opened
    them: reused on another loop, once the first is closed, every request fails)."""

    __slots__ = ("_by_loop", "_lock", "_make_async", "sync")

    def __init__(self, sync: Any, make_async: Callable[[], Any]) -> None:
        self.sync = sync
        self._make_async = make_async
        self._by_loop: dict[asyncio.AbstractEventLoop, Any] = {}
        self._lock = threading.Lock()

    def for_running_loop(self) -> Any:
        """The async client of the running event loop (made on its first call there);
        clients of loops since closed are dropped."""
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._by_loop.get(loop)
            if client is None:
                live = {other: c for other, c in self._by_loop.items() if not other.is_closed()}
                client = live[loop] = self._make_async()
                self._by_loop = live
        return client


def litellm_clients(llm: Any, key: object) -> LiteLLMClients | None:
    """The clients for a LiteLLM-path LLM, to hand LiteLLM with each completion (its
    ``client`` parameter), whose requests take their permits as they are sent: ``OpenAI`` and
    ``AsyncOpenAI`` for OpenAI-compatible providers, LiteLLM's own HTTP handlers for
    Anthropic. None for other providers, or if a seam is missing (the permit is then taken
    when the attempt starts)."""
    if not getattr(llm, "is_litellm", False):
        return None
    try:
        import litellm

        base_url = llm.api_base or llm.base_url
        provider = litellm.get_llm_provider(llm.model, api_base=base_url)[1]
    except Exception:  # no litellm, an unknown model: the permit is taken at the call
        return None
    if provider == "openai":
        return _openai_clients(llm, base_url, key)
    if provider == "anthropic" and seams.available(
        "litellm.llms.custom_httpx.http_handler.HTTPHandler"
    ):
        return _litellm_handlers(llm, key)
    return None


def _openai_clients(llm: Any, base_url: str | None, key: object) -> LiteLLMClients:
    """``OpenAI`` and ``AsyncOpenAI`` on the SDK's own default httpx clients (its timeouts
    and connection limits kept), with our request and response hooks."""
    from openai import AsyncOpenAI, DefaultAsyncHttpxClient, DefaultHttpxClient, OpenAI

    options: dict[str, Any] = {"base_url": base_url, "max_retries": 0}
    if llm.api_key:
        options["api_key"] = llm.api_key
    if llm.timeout is not None:
        options["timeout"] = llm.timeout
    sync_client = DefaultHttpxClient(event_hooks=_event_hooks(key))
    return LiteLLMClients(
        OpenAI(**options, http_client=sync_client),
        lambda: AsyncOpenAI(
            **options, http_client=DefaultAsyncHttpxClient(event_hooks=_async_event_hooks(key))
        ),
    )


def _litellm_handlers(llm: Any, key: object) -> LiteLLMClients:
    """LiteLLM's ``HTTPHandler`` and ``AsyncHTTPHandler`` (a seam, see _seams), on httpx
    clients LiteLLM builds itself (its transport, proxies, TLS and timeout) with our hooks."""
    from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler, HTTPHandler

    sync_handler = HTTPHandler(timeout=llm.timeout)
    # The handler's own client, hooked (a client made by one handler and given to another
    # would be closed when the first is collected, as older LiteLLMs do).
    sync_handler.client.event_hooks = _event_hooks(key)
    return LiteLLMClients(
        sync_handler,
        lambda: AsyncHTTPHandler(timeout=llm.timeout, event_hooks=_async_event_hooks(key)),
    )


def _event_hooks(key: object) -> dict[str, list[Any]]:
    """httpx ``event_hooks``: each LLM request of the attempt under way takes its permit just
    before it is sent (httpx calls request hooks then), and each response hands the attempt
    its status and headers."""

    def take(request: httpx.Request) -> None:
        attempt = _mine(key, request)
        if attempt is not None:
            attempt.take()

    return {"request": [take], "response": [lambda response: _inbound(key, response)]}


def _async_event_hooks(key: object) -> dict[str, list[Any]]:
    """:func:`_event_hooks` for an ``httpx.AsyncClient``: the permit is awaited."""

    async def take(request: httpx.Request) -> None:
        attempt = _mine(key, request)
        if attempt is not None:
            await attempt.atake()

    async def inbound(response: httpx.Response) -> None:
        _inbound(key, response)

    return {"request": [take], "response": [inbound]}


def _inbound(key: object, response: httpx.Response) -> None:
    """Hand a response of the attempt under way its status and headers."""
    attempt = _mine(key, response.request)
    if attempt is not None:
        attempt.on_response(response.status_code, response.headers)
