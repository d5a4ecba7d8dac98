"""``throttle(limiter, tokens=crewthrottle.estimate())``: each call sized from its own
arguments as the CrewAI and LangChain integrations size theirs, settled to the usage its
result reports, and learned from (issue 8)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from crewthrottle._callables import is_async, refuse_awaitable
from crewthrottle._integrations import DEFAULT_ESTIMATOR, Sizing, usage_parts, usage_tokens
from crewthrottle._native import Limiter, Permit

__all__ = ["Estimate", "estimate", "estimated"]

R = TypeVar("R")


class Estimate:
    """How ``throttle`` sizes a call from its arguments (made by :func:`estimate`)."""

    __slots__ = ("messages", "model")

    def __init__(self, model: str | None, messages: str) -> None:
        self.model = model
        self.messages = messages

    def size(self, limiter: Limiter, args: Any, kwargs: dict[str, Any]) -> tuple[str, Sizing]:
        """The model a call is for, and its size."""
        messages = kwargs.get(self.messages, args[0] if args else None)
        model = self.model or kwargs.get("model")
        name = model if isinstance(model, str) and model else "unknown"
        sizing = DEFAULT_ESTIMATOR.size(messages, model=name, limiter=limiter, options=kwargs)
        return name, sizing

    def __repr__(self) -> str:
        return f"crewthrottle.estimate(model={self.model!r}, messages={self.messages!r})"


def estimate(model: str | None = None, *, messages: str = "messages") -> Estimate:
    """Size each call of a function throttled with ``throttle(limiter, tokens=estimate())``
    as the CrewAI and LangChain integrations size theirs, and learn from its usage.

    The call's prompt is its ``messages`` argument (the keyword named ``messages``, else the
    first positional argument; a string or OpenAI-/Anthropic-style messages) with any
    ``tools``; its completion cap is its ``max_tokens`` (or ``max_completion_tokens``...), else
    the completion size learned for the limiter and ``model`` (the call's ``model`` keyword
    unless given here): the 90th percentile of recent ones, 256 until 8 are known. When the
    function returns an object with ``usage`` (the ``openai`` and ``anthropic`` SDKs'
    completions and messages do; streams do not), the permit is settled to it and the sizes
    are learned; :func:`crewthrottle.token_estimates` shows them.
    """
    if model is not None and not isinstance(model, str):
        raise TypeError(f"model must be a str or None, got {type(model).__name__}")
    if not isinstance(messages, str):
        raise TypeError(f"messages must be the name of an argument, got {messages!r}")
    return Estimate(model, messages)


def _settle(limiter: Limiter, permit: Permit, model: str, sizing: Sizing, result: object) -> None:
    usage = getattr(result, "usage", None)
    used = usage_tokens(usage)
    if used is not None:
        permit.settle(used)
        DEFAULT_ESTIMATOR.learn(limiter, model, sizing, usage_parts(usage))


def estimated(limiter: Limiter, sizes: Estimate, function: Callable[..., R]) -> Callable[..., R]:
    """``function`` taking a permit sized by ``sizes`` for each call, settled from its result."""
    if is_async(function):

        @functools.wraps(function)
        async def attempt_async(*args: Any, **kwargs: Any) -> Any:
            model, sizing = sizes.size(limiter, args, kwargs)
            async with await limiter.acquire_async(sizing.tokens) as permit:
                DEFAULT_ESTIMATOR.shrink(permit, limiter, model, sizing)
                result = await function(*args, **kwargs)
                _settle(limiter, permit, model, sizing, result)
                return result

        return attempt_async  # type: ignore[return-value]

    @functools.wraps(function)
    def attempt_sync(*args: Any, **kwargs: Any) -> R:
        model, sizing = sizes.size(limiter, args, kwargs)
        with limiter.acquire(sizing.tokens) as permit:
            DEFAULT_ESTIMATOR.shrink(permit, limiter, model, sizing)
            result = function(*args, **kwargs)
            refuse_awaitable(result, function)
            _settle(limiter, permit, model, sizing, result)
        return result

    return attempt_sync
