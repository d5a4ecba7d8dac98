"""LangChain integration: a :class:`~crewthrottle.Limiter` for any LangChain chat model.

Two ways in, with different powers:

- :func:`rate_limiter` (also ``limiter.as_langchain()``) is a LangChain ``BaseRateLimiter`` for
  the ``rate_limiter=`` option every chat model has. LangChain calls it once before each
  request, with no size, and never after: it can enforce ``rpm`` and nothing else.
- :func:`throttle_chat_model` wraps a chat model so that each request holds a permit for its
  estimated tokens until it ends, settles them from the reply's ``usage_metadata``, and retries
  rate-limit errors: it enforces ``rpm``, ``tpm`` and ``max_concurrent``.

::

    import crewthrottle as ct
    from crewthrottle.langchain import throttle_chat_model
    from langchain_openai import ChatOpenAI

    limiter = ct.Limiter(max_concurrent=8, rpm=500, tpm=200_000)
    llm = throttle_chat_model(ChatOpenAI(model="gpt-4o-mini", max_tokens=512), limiter)
    llm.invoke("Hello")                                   # or ainvoke, stream, batch, bind_tools

    rpm_only = ChatOpenAI(model="gpt-4o-mini", rate_limiter=limiter.as_langchain())

A limiter counts a request when it grants it, a provider when the request arrives: a few
milliseconds later, and not equally later for all (the first requests open connections, threads
wait for the GIL). The limiter's ``margin`` (``window / 200``, at least 50 ms, unless given)
keeps each start counted that much longer; raise it if a provider still answers 429 at window
edges.

Needs ``pip install "crewthrottle[langchain]"``; ``import crewthrottle`` never imports LangChain.
"""

try:
    import langchain_core  # noqa: F401
except ImportError as exc:  # pragma: no cover - only without LangChain installed
    raise ImportError(
        f"crewthrottle.langchain needs LangChain ({exc.name} is missing): "
        'pip install "crewthrottle[langchain]"'
    ) from exc

from crewthrottle.langchain._chat_model import (
    DEFAULT_COMPLETION_TOKENS,
    ThrottledChatModel,
    estimate_tokens,
    throttle_chat_model,
)
from crewthrottle.langchain._rate_limiter import RateLimiter, rate_limiter

__all__ = [
    "DEFAULT_COMPLETION_TOKENS",
    "RateLimiter",
    "ThrottledChatModel",
    "estimate_tokens",
    "rate_limiter",
    "throttle_chat_model",
]
