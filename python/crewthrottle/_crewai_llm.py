"""The throttled CrewAI LLM: a subclass made on the fly of the LLM's own class.

CrewAI picks a class per provider (``OpenAICompletion``, ``AnthropicCompletion``, LiteLLM's
``LLM``...). Throttling keeps that class and inserts :class:`Throttled` in front of it, so the
result is still what ``Agent(llm=...)`` expects and behaves the same in every other way. The
layers under it (retries, SDK hooks) are in :mod:`crewthrottle._crewai_sdk`.
"""

from __future__ import annotations

import contextvars
import copy
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from crewthrottle import _crewai_guard as guard
from crewthrottle import _crewai_sdk as sdk
from crewthrottle._backoff import Backoff
from crewthrottle._native import Limiter, Permit

if TYPE_CHECKING:
    from crewai.llms.base_llm import BaseLLM

__all__ = [
    "DEFAULT_COMPLETION_TOKENS",
    "EstimateTokens",
    "Throttled",
    "Throttling",
    "estimate_tokens",
    "make_throttled",
    "throttling_of",
]

#: Completion tokens reserved for a call whose LLM sets neither ``max_completion_tokens`` nor
#: ``max_tokens`` (settled to the real count from ``usage`` when the call returns).
DEFAULT_COMPLETION_TOKENS = 256

EstimateTokens = Callable[[Any, Any], int]

_PRIVATE = "_crewthrottle"


def estimate_tokens(messages: str | Sequence[Any], llm: Any) -> int:
    """The default size of a call, in tokens: prompt plus completion budget.

    The prompt is all message text at 4 characters a token, rounded up (as OpenAI's own rate
    limiter estimates it); the completion budget is the LLM's ``max_completion_tokens`` or
    ``max_tokens``, else :data:`DEFAULT_COMPLETION_TOKENS`.
    """
    return prompt_tokens(messages) + completion_budget(llm)


def prompt_tokens(messages: str | Sequence[Any]) -> int:
    """All message text at 4 characters a token, rounded up, at least 1."""
    if isinstance(messages, str):
        chars = len(messages)
    else:
        chars = sum(len(_text(m.get("content"))) for m in messages if isinstance(m, dict))
    return max(1, math.ceil(chars / 4))


def completion_budget(llm: Any) -> int:
    """``max_completion_tokens`` or ``max_tokens`` of ``llm``, else the default budget."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = getattr(llm, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1:
            return int(value)
    return DEFAULT_COMPLETION_TOKENS


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: only text parts are text
        return "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


class Throttling:
    """What a throttled LLM and all its copies share: the limiter and how to use it.

    Immutable, and copies (shallow or deep) are itself, so every copy CrewAI makes of a
    throttled LLM keeps the same limiter.
    """

    __slots__ = ("deadlock_after", "estimate", "limiter", "litellm_clients", "retry")

    def __init__(
        self,
        limiter: Limiter,
        retry: Backoff,
        estimate: EstimateTokens | None,
        deadlock_after: float | None,
    ) -> None:
        self.limiter = limiter
        self.retry = retry if retry.limiter is not None else retry.with_limiter(limiter)
        self.estimate = estimate
        self.deadlock_after = deadlock_after
        self.litellm_clients: tuple[Any, Any] | None = None  # set by make_throttled

    def tokens_for(self, messages: Any, llm: Any) -> int:
        """The tokens to reserve for a call (the default budget never exceeds the TPM)."""
        if self.estimate is not None:
            return _checked_estimate(self.estimate(messages, llm))
        prompt, budget = prompt_tokens(messages), completion_budget(llm)
        tpm = self.limiter.tpm
        if tpm is not None and prompt <= tpm:
            budget = min(budget, tpm - prompt)  # a guess must not make a call impossible
        return prompt + budget

    def __copy__(self) -> Throttling:
        return self

    def __deepcopy__(self, memo: object) -> Throttling:
        return self


def _checked_estimate(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"estimate_tokens must return an int, got {value!r}")
    if value < 0:
        raise ValueError(f"estimate_tokens must return a count >= 0, got {value}")
    return value


class _Attempt:
    """One attempt of a throttled call: its permit, taken as late as possible.

    Where the LLM's SDK clients are hooked, the permit is taken just before each HTTP request
    is sent, not when CrewAI's ``call`` starts: the first call of a thread can spend half a
    second in CrewAI before it sends, and a permit taken that early lets the request reach the
    provider later than the limiter counted it, into the next window (the limiter's ``margin``
    covers only milliseconds).
    """

    __slots__ = ("clients", "is_async", "owner", "permit", "throttling", "tokens", "used")

    def __init__(self, owner: object, throttling: Throttling, tokens: int, is_async: bool) -> None:
        self.owner = owner
        self.throttling = throttling
        self.tokens = tokens
        self.is_async = is_async
        extra = throttling.litellm_clients
        self.clients = frozenset(map(id, extra)) if extra else sdk.hooked_clients(owner)
        self.permit: Permit | None = None
        self.used: int | None = None  # tokens the provider reported for the current permit

    @property
    def deferred(self) -> bool:
        """Whether the permit is taken at the HTTP request rather than now."""
        return bool(self.clients)

    def take(self) -> None:
        """Take the permit for a request (giving back one a previous request held)."""
        self._give_back()
        limiter, deadlock_after = self.throttling.limiter, self.throttling.deadlock_after
        self.permit = guard.acquire(limiter, self.tokens, deadlock_after)

    async def atake(self) -> None:
        """:meth:`take` for asyncio."""
        self._give_back()
        limiter, deadlock_after = self.throttling.limiter, self.throttling.deadlock_after
        self.permit = await guard.acquire_async(limiter, self.tokens, deadlock_after)

    def add_usage(self, usage: object) -> None:
        tokens = _total_tokens(usage)
        if tokens is not None:
            self.used = tokens if self.used is None else self.used + tokens

    def finish(self) -> None:
        """Settle and give back the permit; charge a request that slipped past the hooks."""
        if self.permit is None and self.used is not None:
            self.permit = self.throttling.limiter.acquire(self.tokens)
        self._give_back()

    def _give_back(self) -> None:
        permit, self.permit = self.permit, None
        if permit is None:
            return
        try:
            if self.used is not None:
                permit.settle(self.used)
        finally:
            guard.release(self.throttling.limiter, permit)
            self.used = None


# Throttled LLMs with a call under way in this context: CrewAI's LiteLLM path calls
# ``self.call`` again from inside a call (to retry without ``stop``); that is the same
# logical call, made under the permit already held.
_active: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar(
    "crewthrottle_crewai_active", default=frozenset()
)


def _total_tokens(usage: object) -> int | None:
    """Prompt plus completion tokens of a provider's ``usage``, by CrewAI's own reading."""
    try:
        from crewai.types.usage_metrics import UsageMetrics

        metrics = UsageMetrics.from_provider_dict(cast(Any, usage))
    except Exception:  # an unexpected shape settles nothing: the estimate stands
        return None
    return None if metrics is None else int(metrics.total_tokens)


class Throttled:
    """Mixin in front of a CrewAI LLM class: each call takes a permit of the shared limiter.

    Instances exist only through :func:`make_throttled`; their classes are made by
    :func:`throttled_class`.
    """

    def call(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        """CrewAI's ``call``, one permit per attempt, rate limits retried outside the permit."""
        parent: Any = super()
        if id(self) in _active.get():
            return parent.call(messages, *args, **kwargs)
        throttling = throttling_of(self)
        tokens = throttling.tokens_for(messages, self)
        return throttling.retry.call(self._attempt, throttling, tokens, messages, args, kwargs)

    async def acall(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        """CrewAI's ``acall``, throttled like :meth:`call`, waiting without blocking the loop."""
        parent: Any = super()
        if id(self) in _active.get():
            return await parent.acall(messages, *args, **kwargs)
        throttling = throttling_of(self)
        tokens = throttling.tokens_for(messages, self)
        return await throttling.retry.call(
            self._aattempt, throttling, tokens, messages, args, kwargs
        )

    def _attempt(
        self, throttling: Throttling, tokens: int, messages: Any, args: Any, kwargs: Any
    ) -> Any:
        parent: Any = super()
        attempt = _Attempt(self, throttling, tokens, is_async=False)
        with guard.inside(throttling.limiter):
            try:
                if not attempt.deferred:
                    attempt.take()
                with self._running(attempt):
                    return parent.call(messages, *args, **kwargs)
            finally:
                attempt.finish()

    async def _aattempt(
        self, throttling: Throttling, tokens: int, messages: Any, args: Any, kwargs: Any
    ) -> Any:
        parent: Any = super()
        attempt = _Attempt(self, throttling, tokens, is_async=True)
        with guard.inside(throttling.limiter):
            try:
                if not attempt.deferred:
                    await attempt.atake()
                with self._running(attempt):
                    return await parent.acall(messages, *args, **kwargs)
            finally:
                attempt.finish()

    @contextmanager
    def _running(self, attempt: _Attempt) -> Iterator[None]:
        """Run one attempt with CrewAI's retries off, its hooks and usage pointed at it."""
        attempt_token = sdk.current_attempt.set(attempt)
        active_token = _active.set(_active.get() | {id(self)})
        try:
            with sdk.crewai_retries_off():
                yield
        finally:
            _active.reset(active_token)
            sdk.current_attempt.reset(attempt_token)

    def _prepare_completion_params(self, *args: Any, **kwargs: Any) -> Any:
        # The LiteLLM path: hand LiteLLM the hooked OpenAI client of this attempt's kind.
        parent: Any = super()
        params = parent._prepare_completion_params(*args, **kwargs)
        clients = throttling_of(self).litellm_clients
        attempt = sdk.current_attempt.get()
        if clients and isinstance(attempt, _Attempt) and attempt.owner is self:
            params["client"] = clients[1] if attempt.is_async else clients[0]
        return params

    def _track_token_usage_internal(self, usage_data: Any) -> None:
        # Every CrewAI provider reports each response's usage here, in the calling thread.
        parent: Any = super()
        parent._track_token_usage_internal(usage_data)
        attempt = sdk.current_attempt.get()
        if isinstance(attempt, _Attempt) and attempt.owner is self:
            attempt.add_usage(usage_data)

    def __copy__(self) -> Any:
        # LiteLLM's LLM.__copy__ builds a plain LLM: make it throttled again.
        parent: Any = super()
        twin = parent.__copy__()
        return twin if isinstance(twin, Throttled) else _adopt(twin, throttling_of(self))

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Any:
        parent: Any = super()
        if _own_deepcopy(type(self)):
            twin = parent.__deepcopy__(memo)
            return twin if isinstance(twin, Throttled) else _adopt(twin, throttling_of(self))
        # pydantic's deepcopy would copy the SDK clients, which hold locks and cannot be
        # copied (it fails on a plain OpenAICompletion too): share them, as a shallow copy does.
        twin = self.__copy__()
        object.__setattr__(twin, "__dict__", copy.deepcopy(self.__dict__, memo))
        return twin


def _own_deepcopy(cls: type) -> bool:
    """Whether a class of CrewAI's, not pydantic's BaseModel, defines ``__deepcopy__``."""
    for klass in cls.__mro__[2:]:  # after the made class and the mixin
        if "__deepcopy__" in vars(klass):
            return not klass.__module__.startswith("pydantic")
    return False


def throttling_of(llm: object) -> Throttling:
    """The :class:`Throttling` of a throttled LLM."""
    private = getattr(llm, "__pydantic_private__", None) or {}
    throttling = private.get(_PRIVATE)
    if not isinstance(throttling, Throttling):
        raise TypeError(f"{type(llm).__name__} is not a throttled LLM")
    return throttling


_classes: dict[type, type] = {}
_classes_lock = threading.Lock()


def throttled_class(base: type) -> type:
    """``Throttled<base>``: :class:`Throttled` in front of ``base``, made once per class."""
    with _classes_lock:
        made = _classes.get(base)
        if made is None:
            from pydantic import PrivateAttr

            namespace = {
                "__module__": "crewthrottle.crewai",
                "__qualname__": f"Throttled{base.__name__}",
                "__doc__": f"{base.__name__} whose calls are throttled by crewthrottle.",
                "__annotations__": {_PRIVATE: Any},
                _PRIVATE: PrivateAttr(default=None),
            }
            # BaseLLM.__init_subclass__ wraps a subclass's own call/acall in CrewAI's retry;
            # these come from the mixin, so they stay unwrapped (and that retry steps aside).
            made = type(base)(f"Throttled{base.__name__}", (Throttled, base), namespace)
            _classes[base] = made
        return made


def _adopt(llm: Any, throttling: Throttling) -> Any:
    """Turn ``llm`` (an instance of no one else's) into a throttled LLM, in place."""
    object.__setattr__(llm, "__class__", throttled_class(type(llm)))
    if llm.__pydantic_private__ is None:
        object.__setattr__(llm, "__pydantic_private__", {})
    llm.__pydantic_private__[_PRIVATE] = throttling
    return llm


def make_throttled(llm: BaseLLM, throttling: Throttling) -> Any:
    """A throttled copy of ``llm`` with its own retry layers off; ``llm`` is left as it was."""
    twin: Any = copy.copy(llm)
    if isinstance(getattr(twin, "_token_usage", None), dict):
        twin._token_usage = dict(twin._token_usage)  # its own counters from here on
    sdk.retries_off(twin)
    throttling.litellm_clients = sdk.litellm_clients(twin)
    return _adopt(twin, throttling)
