"""The layers under a throttled CrewAI LLM: the SDK's and LiteLLM's retries switched off,
CrewAI's own rate-limit retry stepped around, and SDK clients hooked to take the permit of the
current attempt just before each request is sent.

Retry layers (CrewAI 1.15), all off so that one logical call costs at most ``max_tries`` HTTP
requests:

- the SDK's: the ``max_retries`` field (and ``client_params["max_retries"]``) set to 0, and every
  SDK client already built replaced by ``client.with_options(max_retries=0)`` (openai's
  ``OpenAI``/``AsyncOpenAI``, and other Stainless-made clients such as anthropic's);
- LiteLLM's: ``num_retries=0`` and ``max_retries=0`` passed with every completion;
- CrewAI's: ``BaseLLM`` wraps every provider's ``call``/``acall`` in a 3-attempt rate-limit retry
  (``crewai.llms.retry``) that steps aside when its "already retrying" context variable is set,
  as for nested calls. A throttled call sets it around its attempt.

Not an LLM layer, so left alone: the agent's ``max_retry_limit`` (a failed task is run again, by
default twice more); each run makes new logical calls.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

__all__ = [
    "Attempt",
    "crewai_retries_off",
    "current_attempt",
    "hooked_clients",
    "litellm_clients",
    "retries_off",
]


class Attempt(Protocol):
    """What a hooked client asks of the attempt under way."""

    clients: frozenset[int]

    def take(self) -> None: ...

    async def atake(self) -> None: ...


#: The attempt of a throttled call under way in this context, if any.
current_attempt: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar(
    "crewthrottle_crewai_attempt", default=None
)


def retries_off(llm: Any) -> None:
    """Switch off the SDK's and LiteLLM's retries of ``llm`` (a copy nobody else holds), and
    hook its SDK clients so that permits are taken as each request is sent."""
    if "max_retries" in type(llm).model_fields and llm.max_retries:
        llm.max_retries = 0
    client_params = getattr(llm, "client_params", None)
    if isinstance(client_params, dict) and client_params.get("max_retries"):
        llm.client_params = {**client_params, "max_retries": 0}
    if getattr(llm, "is_litellm", False):
        llm.additional_params = {**llm.additional_params, "num_retries": 0, "max_retries": 0}
    for store in _stores(llm):
        for name, value in list(store.items()):
            if _sdk_client(value):
                # A client of our own (the original's stays as it was), with no retries.
                store[name] = _hook(value.with_options(max_retries=0))


def _stores(llm: Any) -> tuple[dict[str, Any], ...]:
    return (llm.__pydantic_private__ or {}, llm.__dict__)


def _sdk_client(value: object) -> bool:
    """A Stainless-made SDK client (openai, anthropic...): it retries by itself and has the
    ``_prepare_request`` hook, called just before each request is sent."""
    retries = getattr(value, "max_retries", None)
    return (
        isinstance(retries, int)
        and not isinstance(retries, bool)
        and callable(getattr(value, "with_options", None))
        and callable(getattr(value, "_prepare_request", None))
    )


def _hook(client: Any) -> Any:
    """Make ``client`` take the current attempt's permit just before it sends a request."""
    prepare = client._prepare_request
    key = id(client)
    if inspect.iscoroutinefunction(prepare):

        async def prepare_async(request: Any) -> Any:
            attempt = current_attempt.get()
            if attempt is not None and key in attempt.clients:
                await attempt.atake()
            return await prepare(request)

        hooked: Any = prepare_async
    else:

        def prepare_sync(request: Any) -> Any:
            attempt = current_attempt.get()
            if attempt is not None and key in attempt.clients:
                attempt.take()
            return prepare(request)

        hooked = prepare_sync
    hooked.crewthrottle_hook = True
    client._prepare_request = hooked
    return client


def _is_hooked(client: Any) -> bool:
    return bool(getattr(client._prepare_request, "crewthrottle_hook", False))


def hooked_clients(llm: object) -> frozenset[int]:
    """Ids of ``llm``'s SDK clients that take permits as they send; empty unless all are."""
    clients = [v for store in _stores(llm) for v in store.values() if _sdk_client(v)]
    if not clients or not all(_is_hooked(c) for c in clients):
        return frozenset()
    return frozenset(id(c) for c in clients)


@contextmanager
def crewai_retries_off() -> Iterator[None]:
    """Make CrewAI's own rate-limit retry step aside, as it does inside a retrying call."""
    flag = _crewai_retry_flag()
    if flag is None:  # a CrewAI without that layer
        yield
        return
    token = flag.set(True)
    try:
        yield
    finally:
        flag.reset(token)


def _crewai_retry_flag() -> contextvars.ContextVar[bool] | None:
    try:
        from crewai.llms import retry
    except ImportError:
        return None
    flag = getattr(retry, "_active_llm_rate_limit_retry", None)
    return flag if isinstance(flag, contextvars.ContextVar) else None


def litellm_clients(llm: Any) -> tuple[Any, Any] | None:
    """Hooked ``OpenAI`` and ``AsyncOpenAI`` clients for a LiteLLM-path LLM whose provider is
    OpenAI-compatible, to hand LiteLLM with each completion (its ``client`` parameter), so
    that its permits too are taken as requests are sent; None for other providers."""
    if not getattr(llm, "is_litellm", False):
        return None
    try:
        import litellm
        from openai import AsyncOpenAI, OpenAI

        base_url = llm.api_base or llm.base_url
        provider = litellm.get_llm_provider(llm.model, api_base=base_url)[1]
        if provider != "openai":
            return None
        options: dict[str, Any] = {"base_url": base_url, "max_retries": 0}
        if llm.api_key:
            options["api_key"] = llm.api_key
        if llm.timeout is not None:
            options["timeout"] = llm.timeout
        return _hook(OpenAI(**options)), _hook(AsyncOpenAI(**options))
    except Exception:  # no key, no litellm, an unknown model: permits taken at the call
        return None
