"""Token sizes learned from what providers report (issue 8), per limiter and model.

A call that names no completion cap (``max_tokens``) reserves, for its completion, the 90th
percentile of the completions recently settled for the same limiter and model — once
:data:`MIN_SAMPLES` of them exist; until then the conservative
:data:`~crewthrottle._integrations.DEFAULT_COMPLETION_TOKENS`. Prompts are sized with the 90th
percentile of the tokens per character the provider reported for recent prompts (until then,
4 characters a token). Samples are the last :data:`SAMPLE_SIZE` (a fixed-size ring: memory
never grows), so the estimates follow a workload that changes. A high quantile rather than
the mean: a reservation below the real size lets the limiter start more than the provider
allows, and the settle that corrects it comes after the fact. Settling still corrects every
call.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypedDict

from crewthrottle._native import Limiter

__all__ = [
    "MIN_SAMPLES",
    "QUANTILE",
    "SAMPLE_SIZE",
    "Learned",
    "Sizing",
    "TokenEstimate",
    "learned",
    "model_name",
    "token_estimates",
    "usage_parts",
    "usage_tokens",
]

#: Recent settled calls each estimate is drawn from.
SAMPLE_SIZE = 64
#: Settled calls needed before a learned estimate replaces the default.
MIN_SAMPLES = 8
#: The quantile of recent sizes reserved.
QUANTILE = 0.9
#: Characters a token until tokens per character are learned (OpenAI's rule of thumb).
DEFAULT_CHARS_PER_TOKEN = 4.0


class TokenEstimate(TypedDict):
    """What :func:`crewthrottle.token_estimates` reports for one model of a limiter.

    ``completion_tokens`` is what a call without ``max_tokens`` reserves for its completion
    now; ``chars_per_token`` how prompts are sized now; ``learned_*`` whether each comes from
    the provider's figures (at least :data:`MIN_SAMPLES` of the last :data:`SAMPLE_SIZE`
    settled calls) rather than the default.
    """

    completion_tokens: int
    completion_samples: int
    learned_completion: bool
    chars_per_token: float
    prompt_samples: int
    learned_prompt: bool


@dataclass(frozen=True)
class Sizing:
    """How one call was sized: what its estimate was made of, to learn from its usage."""

    chars: int  # characters of its prompt (and tools' schemas)
    prompt: int  # tokens reserved for the prompt
    completion: int  # tokens reserved for the completion
    capped: bool  # the completion size was the call's own cap (max_tokens), not an estimate
    tokens: int  # what the call reserves in all (capped to fit the limiter's tpm)

    @classmethod
    def given(cls, tokens: int) -> Sizing:
        """A size the user's own estimator gave: nothing to learn from."""
        return cls(0, 0, 0, True, tokens)


def _quantile(values: deque[float] | deque[int]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(QUANTILE * len(ordered)) - 1)]


class Learned:
    """Recent sizes of one model's calls through one limiter (thread-safe)."""

    def __init__(self, default_completion: int) -> None:
        self._lock = threading.Lock()
        self._default = default_completion
        self._completions: deque[int] = deque(maxlen=SAMPLE_SIZE)
        self._tokens_per_char: deque[float] = deque(maxlen=SAMPLE_SIZE)

    def completion(self) -> int:
        """Tokens to reserve for a completion of unknown size."""
        with self._lock:
            if len(self._completions) < MIN_SAMPLES:
                return self._default
            return max(1, int(_quantile(self._completions)))

    def prompt(self, chars: int) -> int:
        """Tokens to reserve for a prompt of ``chars`` characters (at least 1)."""
        with self._lock:
            per_char = self._per_char()
        return max(1, math.ceil(chars * per_char))

    def _per_char(self) -> float:
        if len(self._tokens_per_char) < MIN_SAMPLES:
            return 1 / DEFAULT_CHARS_PER_TOKEN
        return _quantile(self._tokens_per_char)

    def learn(self, sizing: Sizing, prompt: int | None, completion: int | None) -> None:
        """What the provider reported for a call sized as ``sizing``."""
        with self._lock:
            if completion is not None and completion >= 0 and not sizing.capped:
                self._completions.append(completion)
            if prompt is not None and prompt > 0 and sizing.chars > 0:
                self._tokens_per_char.append(prompt / sizing.chars)

    def report(self) -> TokenEstimate:
        """The current estimates (see :class:`TokenEstimate`)."""
        completion = self.completion()
        with self._lock:
            samples, prompts, per_char = (
                len(self._completions),
                len(self._tokens_per_char),
                self._per_char(),
            )
        return TokenEstimate(
            completion_tokens=completion,
            completion_samples=samples,
            learned_completion=samples >= MIN_SAMPLES,
            chars_per_token=1 / per_char,
            prompt_samples=prompts,
            learned_prompt=prompts >= MIN_SAMPLES,
        )


_lock = threading.Lock()
#: Per limiter (held weakly: a limiter's estimates go with it), per model name.
_learned: weakref.WeakKeyDictionary[Limiter, dict[str, Learned]] = weakref.WeakKeyDictionary()


def learned(limiter: Limiter, model: str, default_completion: int) -> Learned:
    """The learned sizes of ``model``'s calls through ``limiter``."""
    with _lock:
        models = _learned.setdefault(limiter, {})
        found = models.get(model)
        if found is None:
            found = models[model] = Learned(default_completion)
        return found


def model_name(model: object) -> str:
    """The name estimates are kept under: ``model`` itself if a string, else its ``model`` or
    ``model_name`` (CrewAI's and LangChain's LLMs), else its class name."""
    if isinstance(model, str):
        return model
    for attribute in ("model", "model_name"):
        name = getattr(model, attribute, None)
        if isinstance(name, str) and name:
            return name
    return type(model).__name__


def token_estimates(limiter: Limiter) -> dict[str, TokenEstimate]:
    """The token estimates ``limiter``'s throttled calls use now, by model name.

    One entry per model that made a call through a CrewAI, LangChain or
    ``throttle(tokens=crewthrottle.estimate())`` integration with ``limiter`` (none made with
    a custom ``estimate_tokens``). See :class:`TokenEstimate`.
    """
    if not isinstance(limiter, Limiter):
        raise TypeError(f"limiter must be a crewthrottle.Limiter, got {type(limiter).__name__}")
    with _lock:
        models = dict(_learned.get(limiter, {}))
    return {name: sizes.report() for name, sizes in sorted(models.items())}


# -- what a reply reports --------------------------------------------------------------------


def _field(usage: object, name: str) -> int | None:
    value = usage.get(name) if isinstance(usage, Mapping) else getattr(usage, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def usage_parts(usage: object) -> tuple[int | None, int | None]:
    """Prompt and completion tokens a reply counted: OpenAI's ``prompt_tokens`` and
    ``completion_tokens``, else Anthropic's and LangChain's ``input_tokens`` (with Anthropic's
    cache creation; cache reads do not count against its limits) and ``output_tokens``; None
    where unknown."""
    if usage is None or isinstance(usage, bool | int):
        return None, None
    prompt, completion = _field(usage, "prompt_tokens"), _field(usage, "completion_tokens")
    if prompt is not None or completion is not None:
        return prompt, completion
    inputs = [_field(usage, name) for name in ("input_tokens", "cache_creation_input_tokens")]
    known = [part for part in inputs if part is not None]
    return (sum(known) if known else None), _field(usage, "output_tokens")


def usage_tokens(usage: object) -> int | None:
    """Tokens a reply counted, from any usage shape: OpenAI's (``total_tokens``, else prompt
    plus completion), LangChain's ``usage_metadata`` (``total_tokens``) or Anthropic's (input,
    cache creation and output tokens). None when nothing can be read: the estimate then
    stands."""
    if usage is None or isinstance(usage, bool):
        return None
    if isinstance(usage, int):
        return usage
    total = _field(usage, "total_tokens")
    if total is not None:
        return total
    prompt, completion = usage_parts(usage)
    if prompt is None and completion is None:
        return None
    return (prompt or 0) + (completion or 0)
