"""What kind of callable a decorator was given: the one place that tells sync from async."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeGuard


def is_async(function: Callable[..., Any]) -> TypeGuard[Callable[..., Awaitable[Any]]]:
    """An ``async def`` function, or an object whose ``__call__`` is one (LLM clients often are).

    Generators and async generators are refused: a permit or a retry cannot span their
    iteration, which happens after the call returns.
    """
    call = getattr(function, "__call__", None)  # noqa: B004 - the bound method, not callable()
    for candidate in (function, call):
        if inspect.isgeneratorfunction(candidate) or inspect.isasyncgenfunction(candidate):
            raise TypeError(
                f"{function!r} is a generator function: its body runs while it is iterated, "
                "after the call returns, so no permit or retry can cover it; decorate the "
                "function that consumes it"
            )
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(call)


def refuse_awaitable(result: object, function: Callable[..., Any]) -> None:
    """A sync-looking callable that returned an awaitable: its work has not run yet, so the
    permit taken for it covered nothing. Say so rather than limit nothing."""
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()
        raise TypeError(
            f"{function!r} returned an awaitable although it is not an async function: "
            "decorate an `async def` function (or an object with `async def __call__`)"
        )
