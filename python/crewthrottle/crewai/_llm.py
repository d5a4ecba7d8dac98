"""The throttled CrewAI LLM: an instance of a subclass, made on the fly, of the LLM's class.

CrewAI picks a class per provider (``OpenAICompletion``, ``AnthropicCompletion``, LiteLLM's
``LLM``...). Throttling keeps that class and puts :class:`Throttled` in front of it, so the
result is still what ``Agent(llm=...)`` expects and behaves the same in every other way. It is
built with CrewAI's public constructor from the original's options, plus the public options
that matter here: ``max_retries=0``, an ``interceptor`` that takes permits, LiteLLM's retries
off. Where each request takes its permit is in :mod:`crewthrottle.crewai._sdk`.
"""

from __future__ import annotations

import contextvars
import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

from crewthrottle import _guard as guard
from crewthrottle import _integrations as shared
from crewthrottle import _seams as seams
from crewthrottle import _spend as spending
from crewthrottle._backoff import Backoff
from crewthrottle._native import Limiter
from crewthrottle.crewai import _sdk as sdk
from crewthrottle.crewai._who import caller

if TYPE_CHECKING:
    from crewai.llms.base_llm import BaseLLM

__all__ = ["CrewAttempt", "Throttled", "Throttling", "make_throttled", "throttling_of"]

_PRIVATE = "_crewthrottle"


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
        estimate: shared.EstimateTokens | None,
        deadlock_after: float | None,
    ) -> None:
        self.limiter = limiter
        self.retry = shared.wire_retry(retry, limiter, retry)
        self.estimate = estimate
        self.deadlock_after = deadlock_after
        self.litellm_clients: sdk.LiteLLMClients | None = None  # set by make_throttled

    def size(self, messages: Any, llm: Any) -> shared.Sizing:
        """The tokens to reserve for a call (see ``_integrations.TokenEstimator``)."""
        if self.estimate is not None:
            return shared.Sizing.given(shared.checked_estimate(self.estimate(messages, llm)))
        return shared.DEFAULT_ESTIMATOR.size(messages, model=llm, limiter=self.limiter)

    def __copy__(self) -> Throttling:
        return self

    def __deepcopy__(self, memo: object) -> Throttling:
        return self


class CrewAttempt(shared.Attempt):
    """One attempt of a throttled CrewAI call, for the request hooks of its LLM's clients."""

    __slots__ = ("deferred", "failed", "is_async", "throttling")

    def __init__(self, owner: Any, call: LogicalCall, is_async: bool) -> None:
        throttling, sizing, spend = call
        limiter, deadlock_after = throttling.limiter, throttling.deadlock_after
        tried = None if spend is None else spend.attempt()
        super().__init__(
            limiter,
            sizing.tokens,
            model=owner,
            deadlock_after=deadlock_after,
            sizing=sizing,
            spend=tried,
        )
        self.throttling = throttling
        self.is_async = is_async
        # The permit waits for the HTTP request where the LLM's clients call our hooks.
        self.deferred = sdk.uses_interceptor(owner) or throttling.litellm_clients is not None
        self.failed: Exception | None = None  # why a deferred permit could not be taken

    def take(self) -> None:
        """Take the permit; remember why not (the SDK wraps errors raised in its transport)."""
        try:
            super().take()
        except Exception as exc:
            self.failed = exc
            raise

    async def atake(self) -> None:
        """:meth:`take` for asyncio."""
        try:
            await super().atake()
        except Exception as exc:
            self.failed = exc
            raise

    def unwrapped(self, error: Exception) -> Exception:
        """The error to raise for ``error``: the permit's own failure (a self-deadlock, a
        timeout), which the SDK reports as a connection error, else ``error`` itself."""
        failed, self.failed = self.failed, None
        return error if failed is None or failed is error else failed

    def owns(self, key: object) -> bool:
        """Whether a hooked client or interceptor made for ``key`` serves this attempt."""
        return key is self.throttling

    def on_response(self, status: object, headers: Any) -> None:
        """A response's status and headers: the limiter learns from them, and the spend
        report (if any) counts the status."""
        super().on_response(status, headers)
        if self.spend is not None and isinstance(status, int):
            self.spend.response(status)


class LogicalCall(NamedTuple):
    """One logical call of a throttled LLM, for each of its attempts: the throttling, how an
    attempt's tokens were sized, and the call's spend (when a report tracks it)."""

    throttling: Throttling
    sizing: shared.Sizing
    spend: spending.Call | None


# Throttled LLMs with a call under way in this context: CrewAI's LiteLLM path calls
# ``self.call`` again from inside a call (to retry without ``stop``); that is the same
# logical call, made under the permit already held.
_active: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar(
    "crewthrottle_crewai_active", default=frozenset()
)


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
        call = self._logical_call(messages, args, kwargs)
        return call.throttling.retry.call(self._attempt, call, messages, args, kwargs)

    async def acall(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        """CrewAI's ``acall``, throttled like :meth:`call`, waiting without blocking the loop."""
        parent: Any = super()
        if id(self) in _active.get():
            return await parent.acall(messages, *args, **kwargs)
        call = self._logical_call(messages, args, kwargs)
        return await call.throttling.retry.call(self._aattempt, call, messages, args, kwargs)

    def _logical_call(self, messages: Any, args: Any, kwargs: Any) -> LogicalCall:
        throttling = throttling_of(self)
        sizing = throttling.size(messages, self)
        spend = spending.start_call(getattr(self, "model", None), caller(args, kwargs))
        return LogicalCall(throttling, sizing, spend)

    def _attempt(self, call: LogicalCall, messages: Any, args: Any, kwargs: Any) -> Any:
        parent: Any = super()
        attempt = CrewAttempt(self, call, is_async=False)
        with guard.inside(call.throttling.limiter):
            try:
                if not attempt.deferred:
                    attempt.take()
                with self._running(attempt):
                    return parent.call(messages, *args, **kwargs)
            except Exception as exc:
                _reraise(attempt, exc)
                raise
            finally:
                attempt.finish()

    async def _aattempt(self, call: LogicalCall, messages: Any, args: Any, kwargs: Any) -> Any:
        parent: Any = super()
        attempt = CrewAttempt(self, call, is_async=True)
        with guard.inside(call.throttling.limiter):
            try:
                if not attempt.deferred:
                    await attempt.atake()
                with self._running(attempt):
                    return await parent.acall(messages, *args, **kwargs)
            except Exception as exc:
                _reraise(attempt, exc)
                raise
            finally:
                await attempt.afinish()

    @contextmanager
    def _running(self, attempt: CrewAttempt) -> Iterator[None]:
        """Run one attempt with CrewAI's retries off, its hooks and usage pointed at it."""
        attempt_token = sdk.current.set(attempt)
        active_token = _active.set(_active.get() | {id(self)})
        try:
            with _crewai_retries_off():
                yield
        finally:
            _active.reset(active_token)
            sdk.current.reset(attempt_token)

    def _prepare_completion_params(self, *args: Any, **kwargs: Any) -> Any:
        # The LiteLLM route (a seam, see _seams): hand LiteLLM the hooked client of this
        # attempt's kind, so that its request takes the permit as it is sent.
        parent: Any = super()
        params = parent._prepare_completion_params(*args, **kwargs)
        clients = throttling_of(self).litellm_clients
        attempt = sdk.current.get()
        if clients and isinstance(attempt, CrewAttempt) and attempt.throttling.litellm_clients:
            params["client"] = clients.for_running_loop() if attempt.is_async else clients.sync
        return params

    def _track_token_usage_internal(self, usage_data: Any) -> None:
        # Every CrewAI provider reports each response's usage here (a seam, see _seams).
        parent: Any = super()
        parent._track_token_usage_internal(usage_data)
        attempt = sdk.current.get()
        if isinstance(attempt, CrewAttempt) and attempt.owns(throttling_of(self)):
            attempt.add_usage(usage_data)

    def __copy__(self) -> Any:
        # LiteLLM's LLM.__copy__ builds a plain LLM: throttle that copy the same way.
        parent: Any = super()
        twin = parent.__copy__()
        return twin if isinstance(twin, Throttled) else _rebuild(twin, throttling_of(self))

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Any:
        parent: Any = super()
        if _own_deepcopy(type(self)):
            twin = parent.__deepcopy__(memo)
            return twin if isinstance(twin, Throttled) else _rebuild(twin, throttling_of(self))
        # pydantic's deepcopy would copy the SDK clients, which hold locks and cannot be
        # copied (it fails on a plain OpenAICompletion too): share them, as a shallow copy does.
        twin = self.__copy__()
        object.__setattr__(twin, "__dict__", copy.deepcopy(self.__dict__, memo))
        return twin


def _reraise(attempt: CrewAttempt, error: Exception) -> None:
    """Raise the permit's own failure if that is what ``error`` (the SDK's) wraps."""
    attempt.on_error(error)
    failed = attempt.unwrapped(error)
    if failed is not error:
        raise failed from error


@contextmanager
def _crewai_retries_off() -> Iterator[None]:
    """Make CrewAI's own rate-limit retry step aside, as it does inside a retrying call."""
    if not seams.available("crewai.llms.retry._active_llm_rate_limit_retry"):
        yield
        return
    try:
        from crewai.llms import retry
    except ImportError:  # a CrewAI without that retry layer: nothing to switch off
        yield
        return

    token = retry._active_llm_rate_limit_retry.set(True)
    try:
        yield
    finally:
        retry._active_llm_rate_limit_retry.reset(token)


def _own_deepcopy(cls: type) -> bool:
    """Whether a class of CrewAI's, not pydantic's BaseModel, defines ``__deepcopy__``."""
    for klass in cls.__mro__[2:]:  # after the made class and the mixin
        if "__deepcopy__" in vars(klass):
            return not klass.__module__.startswith("pydantic")
    return False


def throttling_of(llm: object) -> Throttling:
    """The :class:`Throttling` of a throttled LLM."""
    throttling = getattr(llm, _PRIVATE, None) if isinstance(llm, Throttled) else None
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
            # these come from the mixin, so they stay unwrapped (a seam, see _seams).
            made = type(base)(f"Throttled{base.__name__}", (Throttled, base), namespace)
            _classes[base] = made
        return made


def _options(llm: Any) -> dict[str, Any]:
    """The options ``llm`` was built with (pydantic's public ``model_fields_set``)."""
    return {name: getattr(llm, name) for name in llm.model_fields_set}


def _rebuild(llm: Any, throttling: Throttling) -> Any:
    """A throttled LLM of ``llm``'s class built from its options, with its own retry layers
    off and its requests taking permits; ``llm`` is left as it was."""
    options = _options(llm)
    fields = type(llm).model_fields
    if "max_retries" in fields:
        options["max_retries"] = 0  # the SDK's retries
    if getattr(llm, "is_litellm", False):
        options["additional_params"] = sdk.litellm_options(llm)
    if sdk.uses_interceptor(llm):
        options["interceptor"] = sdk.interceptor_class()(throttling, llm.interceptor)
    twin = throttled_class(type(llm))(**options)
    setattr(twin, _PRIVATE, throttling)
    return twin


def make_throttled(llm: BaseLLM, throttling: Throttling) -> Any:
    """A throttled twin of ``llm`` (see :func:`_rebuild`), its seams checked once."""
    seams.available("crewai.llms.base_llm.BaseLLM.__init_subclass__")
    seams.available("crewai.llms.base_llm.BaseLLM._track_token_usage_internal")
    if getattr(llm, "is_litellm", False) and seams.available(
        "crewai.llm.LLM._prepare_completion_params"
    ):
        throttling.litellm_clients = sdk.litellm_clients(llm, throttling)
    return _rebuild(llm, throttling)
