"""``http_hooks``: feed the rate-limit headers of every LLM response an ``httpx`` client
receives to a limiter — the public way in for users of the ``openai`` and ``anthropic`` SDKs
(both take an ``http_client``) and of anything else built on httpx."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from crewthrottle._integrations import check_limiter, is_llm_call
from crewthrottle._native import Limiter

__all__ = ["http_hooks", "observe_response"]


def observe_response(limiter: Limiter, response: Any) -> None:
    """``limiter.observe`` an httpx response of an LLM call (others are left alone); never
    raises (it runs inside the HTTP client)."""
    try:
        if is_llm_call(str(response.request.url.path)):
            status = response.status_code
            limiter.observe(response.headers, status=status if type(status) is int else None)
    except Exception:  # a response we cannot read teaches nothing
        return


def http_hooks(
    limiter: Limiter, *, asynchronous: bool = False
) -> dict[str, list[Callable[[Any], Any]]]:
    """``event_hooks`` for an httpx client, so ``limiter`` learns from every LLM response.

    Each response to an LLM call (OpenAI's ``/chat/completions`` and ``/responses``,
    Anthropic's ``/messages``) hands its rate-limit headers and status to
    :meth:`Limiter.observe`: limits learned (with ``adaptive=True``), other clients' traffic on
    the key counted, a 429 that they do not explain lowering the rates. For the SDKs, keep
    their default client settings with their own ``DefaultHttpxClient``::

        client = openai.OpenAI(
            http_client=openai.DefaultHttpxClient(event_hooks=ct.http_hooks(limiter))
        )
        aclient = anthropic.AsyncAnthropic(
            http_client=anthropic.DefaultAsyncHttpxClient(
                event_hooks=ct.http_hooks(limiter, asynchronous=True)
            )
        )

    ``asynchronous=True`` for an ``httpx.AsyncClient`` (its hooks are awaited).
    """
    check_limiter(limiter)
    if not isinstance(asynchronous, bool):
        raise TypeError(f"asynchronous must be a bool, got {asynchronous!r}")

    def observe(response: Any) -> None:
        observe_response(limiter, response)

    async def observe_async(response: Any) -> None:
        observe_response(limiter, response)

    hook: Callable[[Any], None] | Callable[[Any], Awaitable[None]]
    hook = observe_async if asynchronous else observe
    return {"response": [hook]}
