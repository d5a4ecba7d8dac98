"""``@limiter``: one decorator for sync and async callables, keeping name and signature."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from crewthrottle._callables import is_async, refuse_awaitable

F = TypeVar("F", bound=Callable[..., Any])


def limit(limiter: Any, function: F) -> F:
    """Wrap ``function`` so each call holds a permit of ``limiter`` while it runs."""
    if not callable(function):
        raise TypeError(f"a Limiter decorates a callable, got {type(function).__name__}")
    if is_async(function):

        @functools.wraps(function)
        async def limited_async(*args: Any, **kwargs: Any) -> Any:
            async with await limiter.acquire_async():
                return await function(*args, **kwargs)

        return limited_async  # type: ignore[return-value]

    @functools.wraps(function)
    def limited(*args: Any, **kwargs: Any) -> Any:
        with limiter.acquire():
            result = function(*args, **kwargs)
        refuse_awaitable(result, function)
        return result

    return limited  # type: ignore[return-value]
