"""``throttle_chat_model``: a LangChain chat model whose every request holds a permit."""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableBinding
from langchain_core.tools import BaseTool

from crewthrottle import _integrations as shared
from crewthrottle import _spend as spending
from crewthrottle._backoff import Backoff, backoff
from crewthrottle._integrations import DEFAULT_COMPLETION_TOKENS, Attempt, EstimateTokens
from crewthrottle._native import Limiter

__all__ = [
    "DEFAULT_COMPLETION_TOKENS",
    "ThrottledChatModel",
    "estimate_tokens",
    "throttle_chat_model",
]

logger = logging.getLogger("crewthrottle")

T = TypeVar("T")
RunManager = CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None

#: Fields holding ready-made SDK clients, which a model's validator builds from its options:
#: left out when a model is rebuilt without SDK retries, so the rebuild makes new ones.
_SDK_CLIENTS = frozenset({"client", "async_client", "root_client", "root_async_client"})

#: ``BaseChatModel`` options the wrapper takes over from the model it wraps (its own
#: ``rate_limiter`` is not: the wrapper calls the model below the point where LangChain uses it).
_INHERITED = frozenset(BaseChatModel.model_fields) - {"rate_limiter"}


class ThrottledChatModel(BaseChatModel):
    """A chat model whose every request holds a permit of ``limiter`` while it runs.

    Built by :func:`throttle_chat_model`, which documents it. It is a ``BaseChatModel``, so
    ``invoke``, ``ainvoke``, ``stream``, ``astream``, ``batch``, ``bind_tools``,
    ``with_structured_output`` (through tool calling), callbacks, caching and chains work as
    with the model it wraps.
    """

    chat_model: BaseChatModel
    """The wrapped model (with its SDK retries switched off where possible)."""
    limiter: Limiter
    """Where every request takes its permit."""
    retry: Backoff
    """The retry policy for rate-limit errors, pausing ``limiter`` when a provider names a wait."""
    token_estimator: EstimateTokens | None = None
    """``estimate_tokens`` as given to :func:`throttle_chat_model` (None: the default)."""

    @property
    def _llm_type(self) -> str:
        return f"crewthrottle-{self.chat_model._llm_type}"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return dict(self.chat_model._identifying_params)

    def _get_invocation_params(
        self, stop: list[str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        return self.chat_model._get_invocation_params(stop=stop, **kwargs)

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return self.chat_model._get_ls_params(stop=stop, **kwargs)

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """The wrapped model's ``bind_tools``, with the tools bound to this wrapper instead.

        The wrapped model formats the tools for its provider; the resulting options are bound
        here, so tool calls stay throttled.
        """
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        bound = self.chat_model.bind_tools(tools, **kwargs)
        if not isinstance(bound, RunnableBinding) or bound.bound is not self.chat_model:
            raise NotImplementedError(
                f"{type(self.chat_model).__name__}.bind_tools returned {type(bound).__name__},"
                " not options bound to the model; throttle the model after binding instead"
            )
        throttled = self.bind(**bound.kwargs)
        return throttled.with_config(bound.config) if bound.config else throttled

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        sizing, spend = self._size(messages, stop, kwargs), self._spend()
        call = self._call(self.chat_model._generate, messages, stop, run_manager, kwargs)

        def attempt() -> ChatResult:
            permit = self._attempt(sizing, spend)
            try:
                permit.take()
                result: ChatResult = call()
                _read_result(permit, result)
                return result
            except Exception as exc:
                permit.on_error(exc)
                raise
            finally:
                permit.finish()

        return self.retry.call(attempt)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        sizing, spend = self._size(messages, stop, kwargs), self._spend()
        call = self._call(self.chat_model._agenerate, messages, stop, run_manager, kwargs)

        async def attempt() -> ChatResult:
            permit = self._attempt(sizing, spend)
            try:
                await permit.atake()
                result: ChatResult = await call()
                _read_result(permit, result)
                return result
            except Exception as exc:
                permit.on_error(exc)
                raise
            finally:
                await permit.afinish()

        result: ChatResult = await self.retry.call(attempt)
        return result

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        sizing, spend = self._size(messages, stop, kwargs), self._spend()
        open_stream = self._call(self.chat_model._stream, messages, stop, run_manager, kwargs)

        # One attempt runs until the first chunk: a 429 comes before it and is retried, while
        # an error after it is not (the caller has already seen part of the reply).
        def start() -> tuple[Attempt, Iterator[ChatGenerationChunk], list[ChatGenerationChunk]]:
            permit = self._attempt(sizing, spend)
            permit.take()
            try:
                chunks: Iterator[ChatGenerationChunk] = open_stream()
                return permit, chunks, list(itertools.islice(chunks, 1))
            except BaseException as exc:
                permit.on_error(exc)
                permit.finish()
                raise

        permit, chunks, first = self.retry.call(start)
        try:
            for chunk in itertools.chain(first, chunks):
                _read_chunk(permit, chunk)
                yield chunk
        finally:
            try:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
            finally:
                permit.finish()

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        sizing, spend = self._size(messages, stop, kwargs), self._spend()
        open_stream = self._call(self.chat_model._astream, messages, stop, run_manager, kwargs)

        async def start() -> tuple[Attempt, AsyncIterator[ChatGenerationChunk], list[Any]]:
            permit = self._attempt(sizing, spend)
            await permit.atake()
            try:
                chunks: AsyncIterator[ChatGenerationChunk] = open_stream()
                first = await anext(chunks, None)
                return permit, chunks, [] if first is None else [first]
            except BaseException as exc:
                permit.on_error(exc)
                await permit.afinish()
                raise

        permit, chunks, first = await self.retry.call(start)
        try:
            for chunk in first:
                _read_chunk(permit, chunk)
                yield chunk
            async for chunk in chunks:
                _read_chunk(permit, chunk)
                yield chunk
        finally:
            try:
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                await permit.afinish()

    def _size(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: Mapping[str, Any]
    ) -> shared.Sizing:
        """The tokens to reserve for one request, capped so that it can always be granted."""
        options = dict(kwargs) if stop is None else {**kwargs, "stop": stop}
        if self.token_estimator is None:
            return shared.DEFAULT_ESTIMATOR.size(
                messages, model=self.chat_model, limiter=self.limiter, options=options
            )
        tokens = shared.checked_estimate(self.token_estimator(messages, **options))
        # A generous guess must not make a request larger than the whole tpm (the limiter
        # would refuse it for good); a prompt alone that large is refused.
        tpm = self.limiter.tpm
        if tpm is not None and tokens > tpm:
            tokens = max(tpm, shared.prompt_tokens(messages, options.get("tools")))
        return shared.Sizing.given(tokens)

    def _attempt(self, sizing: shared.Sizing, spend: spending.Call | None) -> Attempt:
        tried = None if spend is None else spend.attempt()
        return Attempt(
            self.limiter, sizing.tokens, model=self.chat_model, sizing=sizing, spend=tried
        )

    def _spend(self) -> spending.Call | None:
        """The logical call starting, for the spend report: per model; the agent and task
        are those of the CrewAI task running, if any (LangChain does not say)."""
        model = self.chat_model
        name = getattr(model, "model_name", None) or getattr(model, "model", None)
        return spending.start_call(name if isinstance(name, str) else model._llm_type, _nobody)

    @staticmethod
    def _call(
        method: Callable[..., T],
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: RunManager,
        kwargs: Mapping[str, Any],
    ) -> Callable[[], T]:
        """``method`` bound to one request's arguments, passing ``run_manager`` where taken
        (as LangChain does: not every model's ``_generate`` accepts it)."""
        if "run_manager" in inspect.signature(method).parameters:
            return functools.partial(method, messages, stop, run_manager=run_manager, **kwargs)
        return functools.partial(method, messages, stop, **kwargs)


def throttle_chat_model(
    model: BaseChatModel,
    limiter: Limiter,
    *,
    retry: Backoff | None = None,
    estimate_tokens: EstimateTokens | None = None,
) -> ThrottledChatModel:
    """Wrap a LangChain chat model so that all of ``limiter``'s limits hold for its requests.

    Each request (one per ``invoke``, per ``batch`` item, per ``stream``) takes a permit for
    its estimated tokens before it is sent and holds it until the reply has been read, so
    ``max_concurrent``, ``rpm`` and ``tpm`` are all enforced. When the reply reports
    ``usage_metadata``, the permit is settled to its ``total_tokens``; otherwise the estimate
    stands. (``ChatOpenAI`` streams report usage with ``stream_usage=True``.) An attempt that
    fails keeps its estimate charged, as the provider may have counted it.

    The estimate, unless ``estimate_tokens`` is given: the prompt's text (and any bound tools'
    schemas) at 4 characters a token, plus the completion's cap (the call's or the model's
    ``max_tokens``/``max_completion_tokens``/``max_output_tokens``, times ``n``), or
    :data:`DEFAULT_COMPLETION_TOKENS` if none is set; capped at ``limiter.tpm``.
    ``estimate_tokens(messages, **options)`` gets LangChain's messages and the call's options
    (``stop``, ``max_tokens``, ``tools``, ...) and returns an int.

    Rate-limit errors (:func:`crewthrottle.is_rate_limit_error`) are retried by ``retry``
    (default ``crewthrottle.backoff()``, 4 tries; ``backoff(max_tries=1)`` retries nothing):
    every attempt takes its own permit, released before the retry delay, and a provider's
    named wait pauses ``limiter`` for everyone. A stream is retried only until its first chunk.

    The wrapped model's own SDK retries would multiply each attempt behind the limiter's back:
    a model with a ``max_retries`` option (``ChatOpenAI``, ``ChatAnthropic``, ...) not already
    0 is rebuilt from the options it was given with ``max_retries=0`` (SDK clients passed in
    ready-made are rebuilt too); if that fails, a warning is logged and the model is used as
    it is. The model's own ``rate_limiter`` is not used.

    The result is a ``BaseChatModel`` (not a plain ``Runnable``), so it goes wherever a chat
    model goes: chains, agents, ``bind_tools``, ``with_structured_output``, callbacks.

    Raises:
        TypeError: if ``model`` is not a LangChain chat model, or ``limiter``, ``retry`` or
            ``estimate_tokens`` has the wrong type.
        ValueError: if ``model`` is already throttled by ``limiter`` (its requests would
            wait for permits they themselves hold).
    """
    if not isinstance(model, BaseChatModel):
        raise TypeError(f"model must be a LangChain chat model, got {type(model).__name__}")
    shared.check_limiter(limiter)
    if isinstance(model, ThrottledChatModel) and model.limiter is limiter:
        raise ValueError("model is already throttled by this limiter")
    shared.check_retry(retry)
    shared.check_callable(estimate_tokens, "estimate_tokens")
    inherited = {name: getattr(model, name) for name in _INHERITED & model.model_fields_set}
    if type(model)._stream is BaseChatModel._stream:
        inherited["disable_streaming"] = True  # it cannot stream: let LangChain fall back
    return ThrottledChatModel(
        chat_model=_rebuilt(model),
        limiter=limiter,
        retry=shared.wire_retry(retry, limiter, backoff()),
        token_estimator=estimate_tokens,
        **inherited,
    )


def estimate_tokens(
    messages: Sequence[BaseMessage], *, model: BaseChatModel | None = None, **options: Any
) -> int:
    """The default estimate of one request's tokens: prompt plus completion cap.

    The prompt is its messages' text, tool calls and ``options["tools"]`` at 4 characters a
    token, rounded up (as OpenAI's rule of thumb; at least 1). The completion cap is the first
    ``max_completion_tokens``/``max_tokens``/``max_output_tokens`` found in ``options``, then
    on ``model``, else :data:`DEFAULT_COMPLETION_TOKENS`; times ``n`` choices.
    """
    prompt = shared.prompt_tokens(messages, options.get("tools"))
    return prompt + (shared.completion_cap(options, model) or DEFAULT_COMPLETION_TOKENS)


# -- helpers -------------------------------------------------------------------------------------


def _nobody() -> None:
    """A LangChain call names no agent nor task."""


def _read_result(permit: Attempt, result: ChatResult) -> None:
    """Hand the attempt what a reply reports: its rate-limit headers, its usage."""
    for generation in result.generations[:1]:
        _read_headers(permit, generation.generation_info, generation.message)
    permit.add_usage(_result_usage(result))


def _read_chunk(permit: Attempt, chunk: ChatGenerationChunk) -> None:
    """Hand the attempt what a streamed chunk reports (headers come with the first)."""
    _read_headers(permit, chunk.generation_info, chunk.message)
    permit.add_usage(getattr(chunk.message, "usage_metadata", None))


def _read_headers(permit: Attempt, info: Mapping[str, Any] | None, message: Any) -> None:
    """The response headers a model reports (``ChatOpenAI``'s ``include_response_headers``
    puts them in ``generation_info``, LangChain then in ``response_metadata``)."""
    metadata = getattr(message, "response_metadata", None)
    for source in (info, metadata):
        headers = source.get("headers") if isinstance(source, Mapping) else None
        if isinstance(headers, Mapping) and headers:
            permit.on_response(200, headers)
            return


def _usage_total(usage: object) -> int:
    total = usage.get("total_tokens") if isinstance(usage, dict) else None
    return total if isinstance(total, int) and not isinstance(total, bool) else -1


def _result_usage(result: ChatResult) -> object:
    """The usage a reply reports: its messages' ``usage_metadata`` (each generation of one
    response carries the whole response's usage, so the largest), else ``llm_output``'s."""
    usages = [getattr(g.message, "usage_metadata", None) for g in result.generations]
    counted = [u for u in usages if _usage_total(u) >= 0]
    if counted:
        return max(counted, key=_usage_total)
    usage = (result.llm_output or {}).get("token_usage")
    return usage if _usage_total(usage) >= 0 else None


def _rebuilt(model: BaseChatModel) -> BaseChatModel:
    """``model`` rebuilt with ``max_retries=0`` where it has that option set otherwise, and
    with ``include_response_headers=True`` where it has that option (``ChatOpenAI``: the
    provider's rate-limit headers then reach the limiter, issue 8).

    The SDK clients are built by the model's validators from its options, so the model is
    constructed again from the options it was given; a copy would keep the old clients.
    """
    fields = type(model).model_fields
    changes = {
        name: value
        for name, value in (("max_retries", 0), ("include_response_headers", True))
        if name in fields and getattr(model, name, None) != value
    }
    if not changes:
        return model
    options = {
        fields[name].alias or name: getattr(model, name)
        for name in model.model_fields_set
        if name in fields and name not in _SDK_CLIENTS
    }
    options.update({fields[name].alias or name: value for name, value in changes.items()})
    try:
        return type(model)(**options)
    except Exception as exc:
        wanted = ", ".join(f"{name}={value}" for name, value in changes.items())
        logger.warning(
            "could not rebuild %s with %s (%r): its SDK may retry 429s behind the limiter's "
            "back, or its rate-limit headers stay unseen; build it with %s",
            type(model).__name__,
            wanted,
            exc,
            wanted,
        )
        return model
