"""What every integration (CrewAI, LangChain, the SDKs under them) shares, written once.

- **Arguments**: the checks every public entry point makes (:func:`check_limiter`, ...).
- **Sizing a call**: :class:`TokenEstimator`, the one place that decides how many tokens a
  call reserves (prompt text at 4 characters a token plus the completion cap the provider
  itself reserves, capped so that a call can always be granted; both sizes learned from what
  the provider reports, see :mod:`crewthrottle._estimates`), and warns when a huge
  ``max_tokens`` turns a token budget into one call per window.
- **Reading a reply**: :func:`usage_tokens` and :func:`usage_parts` read OpenAI's,
  Anthropic's and LangChain's usage shapes; :meth:`Attempt.on_response` hands a response's
  rate-limit headers to the limiter.
- **Retries**: :func:`wire_retry` points a policy at the limiter it pauses.
- **One call's permit**: :class:`Attempt` takes it (late: just before the HTTP request where
  the integration can see it), settles it to the usage the provider reported and gives it
  back. Every throttled call of every integration passes through it, so what happens to an
  LLM call (start, usage, end, rate-limit error) can be observed in this one place.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from crewthrottle import _estimates as estimates
from crewthrottle import _guard as guard
from crewthrottle._backoff import Backoff
from crewthrottle._estimates import Sizing, usage_parts, usage_tokens
from crewthrottle._native import Limiter, Permit

if TYPE_CHECKING:
    from crewthrottle._spend import Try

__all__ = [
    "DEFAULT_COMPLETION_TOKENS",
    "DEFAULT_ESTIMATOR",
    "MAX_TOKENS_NAMES",
    "Attempt",
    "EstimateTokens",
    "Sizing",
    "TokenEstimator",
    "check_callable",
    "check_limiter",
    "check_retry",
    "checked_estimate",
    "completion_cap",
    "is_llm_call",
    "prompt_chars",
    "prompt_tokens",
    "seconds_or_none",
    "usage_parts",
    "usage_tokens",
    "warn_large_budget",
    "warn_once",
    "wire_retry",
]

logger = logging.getLogger("crewthrottle")

#: Completion tokens reserved for a call that names no ``max_tokens`` (nor an equivalent);
#: settled to the real count from the reply's usage.
DEFAULT_COMPLETION_TOKENS = 256

#: Option names under which LLMs and chat models take the completion's cap, in order of
#: preference (OpenAI, Anthropic, Google, older APIs, Hugging Face).
MAX_TOKENS_NAMES = (
    "max_completion_tokens",
    "max_tokens",
    "max_output_tokens",
    "max_tokens_to_sample",
    "max_new_tokens",
)

#: A user's estimator: whatever arguments its integration documents, returning an int.
EstimateTokens = Callable[..., int]

#: Paths of the requests that are LLM calls (not token counting, model listing, uploads).
_CALL_PATHS = ("/chat/completions", "/responses", "/messages", "/completions")


def is_llm_call(path: str) -> bool:
    """Whether an HTTP request to ``path`` is an LLM call (OpenAI's or Anthropic's)."""
    path = path.rstrip("/")
    return path.endswith(_CALL_PATHS) and not path.endswith("/count_tokens")


# -- arguments -----------------------------------------------------------------------------------


def check_limiter(limiter: object, name: str = "limiter") -> Limiter:
    """``limiter`` if it is a :class:`~crewthrottle.Limiter`, else ``TypeError`` naming it."""
    if not isinstance(limiter, Limiter):
        raise TypeError(f"{name} must be a crewthrottle.Limiter, got {type(limiter).__name__}")
    return limiter


def check_retry(retry: object) -> Backoff | None:
    """``retry`` if it is None or a :func:`crewthrottle.backoff` policy, else ``TypeError``."""
    if retry is not None and not isinstance(retry, Backoff):
        raise TypeError(f"retry must be a crewthrottle.backoff(...), got {type(retry).__name__}")
    return retry


def check_callable(value: object, name: str) -> None:
    """``TypeError`` naming ``name`` unless ``value`` is None or callable."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")


def seconds_or_none(value: object, name: str) -> float | None:
    """``value`` as finite seconds > 0, or None; ``TypeError``/``ValueError`` naming ``name``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value}")
    return float(value)


def wire_retry(retry: Backoff | None, limiter: Limiter, default: Backoff) -> Backoff:
    """``retry`` (or ``default``) pausing ``limiter`` when a provider names a wait, unless it
    already pauses a limiter of its own choosing."""
    policy = default if retry is None else retry
    return policy if policy.limiter is not None else policy.with_limiter(limiter)


# -- warnings ------------------------------------------------------------------------------------

_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(key: str, message: str) -> None:
    """A ``RuntimeWarning`` (and a log line) the first time ``key`` is seen in this process."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning("%s", message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


# -- sizing a call -------------------------------------------------------------------------------


def _text(content: object) -> str:
    """The text of a message's content: a string, or the text parts of a list of blocks."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    texts = (p if isinstance(p, str) else p.get("text") for p in parts if isinstance(p, str | dict))
    return "".join(t for t in texts if isinstance(t, str))


def _message_chars(message: object) -> int:
    """Characters of one message: an OpenAI-style dict, or a LangChain message (its content
    and tool calls)."""
    if isinstance(message, Mapping):
        return len(_text(message.get("content")))
    chars = len(_text(getattr(message, "content", None)))
    for call in getattr(message, "tool_calls", None) or ():
        if isinstance(call, Mapping):
            chars += len(str(call.get("name", ""))) + len(json.dumps(call.get("args"), default=str))
    return chars


def prompt_chars(messages: object, tools: object = None) -> int:
    """Characters of all message text (and of ``tools``' schemas)."""
    if isinstance(messages, str):
        chars = len(messages)
    elif isinstance(messages, Sequence):
        chars = sum(_message_chars(m) for m in messages)
    else:
        chars = 0
    if tools:
        chars += len(json.dumps(tools, default=str))
    return chars


def prompt_tokens(messages: object, tools: object = None) -> int:
    """All message text (and ``tools``' schemas) at 4 characters a token, rounded up, at least
    1: the rule of thumb OpenAI's and Anthropic's own limiters are documented to follow."""
    return max(1, math.ceil(prompt_chars(messages, tools) / 4))


def _positive_int(value: object) -> int | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1:
        return int(value)
    return None


def completion_cap(options: Mapping[str, Any], model: object) -> int | None:
    """The completion cap a request names: the first of :data:`MAX_TOKENS_NAMES` in
    ``options``, then on ``model``; times ``n`` choices; None if none is set."""
    for source in (options.get, lambda name: getattr(model, name, None)):
        for name in MAX_TOKENS_NAMES:
            cap = _positive_int(source(name))
            if cap is not None:
                choices = _positive_int(options.get("n")) or _positive_int(getattr(model, "n", 0))
                return cap * (choices or 1)
    return None


def checked_estimate(value: object) -> int:
    """A user estimator's result, refused with a clear error unless an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"estimate_tokens must return an int, got {value!r}")
    if value < 0:
        raise ValueError(f"estimate_tokens must return a count >= 0, got {value}")
    return value


class TokenEstimator:
    """How many tokens one call reserves: the one place every integration asks.

    The default is what the providers themselves reserve when a request arrives: OpenAI
    counts the prompt's estimated tokens plus ``max_tokens`` (times ``n``), Anthropic counts
    input tokens and estimates output tokens from ``max_tokens``, both adjusting to the real
    usage afterwards — which :class:`Attempt` does too, by settling. A call that names no
    cap reserves the completion size learned for the limiter and model (the 90th percentile of
    recent settled completions, :mod:`crewthrottle._estimates`), or
    :data:`DEFAULT_COMPLETION_TOKENS` until enough are known; prompts are sized with the
    tokens per character learned likewise (4 characters a token until then). A reservation is
    never larger than the limiter's ``tpm`` (a guess must not make a call impossible); a
    prompt alone that large is kept, and refused by the limiter.

    :meth:`learn` takes in what the provider reported; :class:`Attempt` calls it with every
    settled usage.
    """

    def estimate(
        self,
        messages: object,
        *,
        model: object,
        limiter: Limiter,
        options: Mapping[str, Any] | None = None,
    ) -> int:
        """Tokens to reserve for one request of ``messages`` to ``model``."""
        return self.size(messages, model=model, limiter=limiter, options=options).tokens

    def size(
        self,
        messages: object,
        *,
        model: object,
        limiter: Limiter,
        options: Mapping[str, Any] | None = None,
    ) -> Sizing:
        """:meth:`estimate`, with what it was made of (to learn from the call's usage)."""
        options = options or {}
        sizes = self.learned(limiter, model)
        chars = prompt_chars(messages, options.get("tools"))
        prompt = sizes.prompt(chars)
        cap = completion_cap(options, model)
        budget = sizes.completion() if cap is None else cap
        tokens = self.capped(prompt, budget, limiter, model)
        return Sizing(chars, prompt, budget, cap is not None, tokens)

    def shrink(self, permit: Permit, limiter: Limiter, model: object, sizing: Sizing) -> int:
        """A granted call's reservation cut to what is known now, before it is sent: a call
        that waited in the queue was sized before the sizes learned meanwhile. Returns it."""
        if sizing.capped:
            return sizing.tokens
        sizes = self.learned(limiter, model)
        tpm = limiter.tpm if limiter.tpm is not None else 2**53
        now = min(sizes.prompt(sizing.chars) + sizes.completion(), tpm)
        if now >= sizing.tokens:
            return sizing.tokens
        permit.settle(now)
        return now

    def learned(self, limiter: Limiter, model: object) -> estimates.Learned:
        """The sizes learned for ``model``'s calls through ``limiter``."""
        name = estimates.model_name(model)
        return estimates.learned(limiter, name, DEFAULT_COMPLETION_TOKENS)

    def capped(self, prompt: int, budget: int, limiter: Limiter, model: object) -> int:
        """``prompt + budget``, the budget cut so that the call fits in ``limiter.tpm``; warns
        once per model and limiter when that cut leaves room for one call per window."""
        tpm = limiter.tpm
        if tpm is None or prompt + budget <= tpm:
            return prompt + budget
        warn_large_budget(model, budget, limiter)
        return prompt + min(budget, tpm - prompt) if prompt <= tpm else prompt

    def learn(
        self,
        limiter: Limiter,
        model: object,
        sizing: Sizing,
        usage: tuple[int | None, int | None],
    ) -> None:
        """A call to ``model`` through ``limiter``, sized as ``sizing``, used ``usage``
        (prompt and completion tokens, as :func:`usage_parts` reads them)."""
        self.learned(limiter, model).learn(sizing, *usage)


def warn_large_budget(model: object, budget: int, limiter: Limiter) -> None:
    """Warn (once per model, cap and limiter) that ``budget`` completion tokens per call
    leave room for a single call per window of ``limiter``."""
    name = getattr(model, "model", None) or getattr(model, "model_name", None) or type(model)
    warn_once(
        f"budget:{name}:{budget}:{id(limiter)}",
        f"crewthrottle: each call to {name} reserves its completion cap of {budget} tokens "
        "(max_tokens: the provider itself counts it until the reply says otherwise) against "
        f"tpm={limiter.tpm} of {limiter!r}: one call per window at most, whatever the rpm. "
        "Set max_tokens on the LLM close to the replies you expect (e.g. max_tokens=1024), "
        "or pass estimate_tokens=... to reserve less.",
    )


#: The estimator integrations use unless told otherwise.
DEFAULT_ESTIMATOR = TokenEstimator()


# -- one call's permit ---------------------------------------------------------------------------


class Attempt:
    """One attempt of a throttled call: its permit, taken as late as the integration allows.

    Where the integration sees each HTTP request (an SDK client's transport, CrewAI's
    interceptor), :meth:`take` runs just before it is sent; elsewhere when the attempt starts.
    A permit taken early lets the request reach the provider later than the limiter counted
    it, possibly into the next window.

    Every throttled LLM call of every integration passes through here: :meth:`take` (start),
    :meth:`on_response` (the provider's rate-limit headers), :meth:`add_usage` (what the
    provider reported), :meth:`finish` (end, settling and learning the call's sizes). If the
    HTTP request left without a permit (a seam the integration relies on moved),
    :meth:`finish` charges it afterwards and warns, rather than letting it go uncounted.

    ``spend`` (a :class:`crewthrottle._spend.Try`, when a spend report tracks the call) hears
    of each request sent (and how long its permit took), the usage, and errors
    (:meth:`on_error`); integrations that see responses tell it their status.
    """

    __slots__ = (
        "deadlock_after",
        "estimator",
        "limiter",
        "model",
        "parts",
        "permit",
        "sizing",
        "spend",
        "tokens",
        "used",
    )

    def __init__(
        self,
        limiter: Limiter,
        tokens: int,
        *,
        model: object = None,
        deadlock_after: float | None = None,
        estimator: TokenEstimator = DEFAULT_ESTIMATOR,
        sizing: Sizing | None = None,
        spend: Try | None = None,
    ) -> None:
        self.limiter = limiter
        self.tokens = tokens
        self.model = model
        self.deadlock_after = deadlock_after
        self.estimator = estimator
        self.sizing = sizing  # how ``tokens`` was estimated, to learn from (None: not ours)
        self.permit: Permit | None = None
        self.used: int | None = None  # tokens the provider reported for the current permit
        self.parts: tuple[int | None, int | None] = (None, None)  # its prompt and completion
        self.spend = spend

    def take(self) -> None:
        """Take the permit for a request (giving back the one a previous request held)."""
        self._give_back()
        started = time.monotonic()
        self.permit = guard.acquire(self.limiter, self.tokens, self.deadlock_after)
        self._shrink()
        self._sent(started)

    async def atake(self) -> None:
        """:meth:`take` for asyncio: waits without blocking the event loop."""
        self._give_back()
        started = time.monotonic()
        self.permit = await guard.acquire_async(self.limiter, self.tokens, self.deadlock_after)
        self._shrink()
        self._sent(started)

    def _shrink(self) -> None:
        if self.sizing is not None and self.permit is not None:
            self.estimator.shrink(self.permit, self.limiter, self.model, self.sizing)

    def on_response(self, status: object, headers: object) -> None:
        """A response's status and headers: the limiter learns from its rate-limit headers
        (a 429 among them lowers the rates unless they explain it)."""
        code = status if isinstance(status, int) and not isinstance(status, bool) else None
        self.limiter.observe(headers, status=code)

    def add_usage(self, usage: object) -> None:
        """Count what the provider reported for the request under way."""
        if self.spend is not None:
            self.spend.usage(usage)
        tokens = usage_tokens(usage)
        if tokens is not None:
            self.used = tokens if self.used is None else self.used + tokens
            self.parts = _added(self.parts, usage_parts(usage))

    def finish(self) -> None:
        """Settle and give back the permit; charge a request that went out without one."""
        if self.permit is None and self.used is not None:
            _warn_unpermitted()
            started = time.monotonic()
            self.permit = guard.acquire(self.limiter, self.tokens, None)
            self._sent(started)
        self._give_back()

    async def afinish(self) -> None:
        """:meth:`finish` for asyncio: a late charge waits without blocking the event loop."""
        if self.permit is None and self.used is not None:
            _warn_unpermitted()
            started = time.monotonic()
            self.permit = await guard.acquire_async(self.limiter, self.tokens, None)
            self._sent(started)
        self._give_back()

    def on_error(self, error: BaseException) -> None:
        """This attempt failed with ``error`` (for the spend report: a 429?)."""
        if self.spend is not None:
            self.spend.error(error)

    def _sent(self, started: float) -> None:
        if self.spend is not None:
            self.spend.sent(time.monotonic() - started)

    def _give_back(self) -> None:
        permit, self.permit = self.permit, None
        if permit is None:
            return
        used, self.used = self.used, None
        parts, self.parts = self.parts, (None, None)
        try:
            if used is not None:
                permit.settle(used)
                if self.sizing is not None:
                    self.estimator.learn(self.limiter, self.model, self.sizing, parts)
        finally:
            guard.release(self.limiter, permit)


def _added(
    known: tuple[int | None, int | None], more: tuple[int | None, int | None]
) -> tuple[int | None, int | None]:
    def plus(a: int | None, b: int | None) -> int | None:
        return b if a is None else a if b is None else a + b

    return plus(known[0], more[0]), plus(known[1], more[1])


def _warn_unpermitted() -> None:
    warn_once(
        "unpermitted",
        "crewthrottle: an LLM request was sent without passing the hook that takes its "
        "permit (a seam of the LLM library moved; see crewthrottle._seams): it was charged "
        "to the limiter after the fact, so requests may have exceeded the limits meanwhile. "
        "Please report this with your library versions.",
    )
