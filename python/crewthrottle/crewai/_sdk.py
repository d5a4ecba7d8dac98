"""The layers under a throttled CrewAI LLM: where each HTTP request takes its permit, and the
retry layers switched off so that one logical call costs at most ``max_tries`` requests.

Where the permit is taken, by CrewAI's route:

- native OpenAI and Anthropic providers: CrewAI's public ``interceptor`` option
  (:class:`crewai.llms.hooks.BaseInterceptor`), whose ``on_outbound`` runs in the HTTP
  transport, just before each request is written: :func:`interceptor_class`;
- LiteLLM with an OpenAI-compatible model: an ``openai`` client handed to LiteLLM with each
  completion (its public ``client`` parameter), whose requests take their permits in the
  client's request preparation (private seams, see :mod:`crewthrottle._seams`);
- any other route (LiteLLM with Anthropic or other models, Gemini, Bedrock, Azure, a custom
  ``BaseLLM``): when the attempt starts. Retries being off, that is still one permit per
  HTTP request, only taken a little earlier.

Retry layers, all off: the SDK's (the provider's public ``max_retries`` field), LiteLLM's
(``num_retries=0``/``max_retries=0`` through the public ``additional_params``) and CrewAI's own
rate-limit retry around every provider's ``call`` (a private seam, see :mod:`crewthrottle._seams`).
"""

from __future__ import annotations

import contextvars
import inspect
from typing import TYPE_CHECKING, Any, Protocol

from crewthrottle import _seams as seams
from crewthrottle._integrations import is_llm_call

if TYPE_CHECKING:
    import httpx

__all__ = [
    "Current",
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


def litellm_clients(llm: Any, key: object) -> tuple[Any, Any] | None:
    """Hooked ``OpenAI`` and ``AsyncOpenAI`` clients for a LiteLLM-path LLM whose provider is
    OpenAI-compatible, to hand LiteLLM with each completion, so that its permits too are taken
    as requests are sent; None for other providers, or if the seam is missing."""
    if not getattr(llm, "is_litellm", False) or not seams.available(
        "openai._base_client.SyncAPIClient._prepare_request"
    ):
        return None
    try:
        import litellm
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient, DefaultHttpxClient, OpenAI

        base_url = llm.api_base or llm.base_url
        provider = litellm.get_llm_provider(llm.model, api_base=base_url)[1]
    except Exception:  # no litellm, an unknown model: the permit is taken at the call
        return None
    if provider != "openai":
        return None
    options: dict[str, Any] = {"base_url": base_url, "max_retries": 0}
    if llm.api_key:
        options["api_key"] = llm.api_key
    if llm.timeout is not None:
        options["timeout"] = llm.timeout

    async def inbound_async(response: httpx.Response) -> None:
        _inbound(key, response)

    # Responses go to the attempt through httpx's public event hooks, on the SDK's own
    # default client (its timeouts and connection limits kept).
    sync_client = DefaultHttpxClient(event_hooks={"response": [lambda r: _inbound(key, r)]})
    async_client = DefaultAsyncHttpxClient(event_hooks={"response": [inbound_async]})
    return (
        _hook(OpenAI(**options, http_client=sync_client), key),
        _hook(AsyncOpenAI(**options, http_client=async_client), key),
    )


def _inbound(key: object, response: httpx.Response) -> None:
    """Hand a response of the attempt under way its status and headers."""
    attempt = _mine(key, response.request)
    if attempt is not None:
        attempt.on_response(response.status_code, response.headers)


def _hook(client: Any, key: object) -> Any:
    """Make ``client`` take the current attempt's permit just before it sends a request
    (``_prepare_request``: the openai SDK's private per-request hook, see _seams)."""
    prepare = client._prepare_request
    if inspect.iscoroutinefunction(prepare):

        async def prepare_async(request: Any) -> Any:
            attempt = _mine(key, request)
            if attempt is not None:
                await attempt.atake()
            return await prepare(request)

        client._prepare_request = prepare_async
    else:

        def prepare_sync(request: Any) -> Any:
            attempt = _mine(key, request)
            if attempt is not None:
                attempt.take()
            return prepare(request)

        client._prepare_request = prepare_sync
    return client
