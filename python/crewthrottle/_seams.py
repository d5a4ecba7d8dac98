"""Every private seam of another library that crewthrottle still relies on, in one place.

A seam is a name or behaviour that a library does not promise to keep. Each one here is used
only because nothing public gives the same control (the public ones used instead are named in
the README, "Supported versions and seams"). For each: what it gives, how its presence is
checked, and what happens without it — which is never silent: :func:`available` warns once,
naming the seam and the behaviour that then applies. The integrations check their seams once,
when they are enabled (``throttle_llm``, ``kickoff_all``); ``tests/test_seams.py`` has a canary
per seam that fails, naming it, when an upgrade moves it.
"""

from __future__ import annotations

import contextvars
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass

from crewthrottle._integrations import warn_once

__all__ = ["SEAMS", "Seam", "available", "missing"]


@dataclass(frozen=True)
class Seam:
    """One private seam: its name, what it is for, and the behaviour without it."""

    name: str
    gives: str
    without: str
    probe: Callable[[], bool]


def _crewai_has_retry() -> bool:
    """Whether this CrewAI wraps providers' calls in its own rate-limit retry (added in a
    1.15.x release; the floor of our range has none, so there is nothing to switch off)."""
    from crewai.llms.base_llm import BaseLLM

    return "__init_subclass__" in vars(BaseLLM)


def _crewai_retry_flag() -> bool:
    if not _crewai_has_retry():
        return True
    from crewai.llms import retry

    flag = getattr(retry, "_active_llm_rate_limit_retry", None)
    source = inspect.getsource(retry.run_with_rate_limit_retry)
    return isinstance(flag, contextvars.ContextVar) and "_active_llm_rate_limit_retry" in source


def _crewai_subclass_wrapping() -> bool:
    from crewai.llms.base_llm import BaseLLM

    if not _crewai_has_retry():
        return True
    source = inspect.getsource(BaseLLM.__init_subclass__) + inspect.getsource(
        BaseLLM._wrap_call_method
    )
    return "cls.__dict__.get(method_name)" in source


def _crewai_usage_hook() -> bool:
    from crewai.llms.base_llm import BaseLLM

    hook = getattr(BaseLLM, "_track_token_usage_internal", None)
    return callable(hook) and list(inspect.signature(hook).parameters) == ["self", "usage_data"]


def _crewai_litellm_params() -> bool:
    from crewai.llm import LLM

    prepare = getattr(LLM, "_prepare_completion_params", None)
    return callable(prepare) and "params" in inspect.getsource(prepare)


def _litellm_http_handler() -> bool:
    from litellm.llms.anthropic.chat import handler
    from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler, HTTPHandler

    sync = inspect.signature(HTTPHandler).parameters
    async_ = inspect.signature(AsyncHTTPHandler).parameters
    source = inspect.getsource(handler)
    return (
        "client" in sync
        and "event_hooks" in async_
        and "isinstance(client, HTTPHandler)" in source
        and "isinstance(client, AsyncHTTPHandler)" in source
    )


SEAMS: dict[str, Seam] = {
    seam.name: seam
    for seam in (
        Seam(
            "crewai.llms.retry._active_llm_rate_limit_retry",
            "switches off CrewAI's own 3-attempt rate-limit retry inside a throttled attempt "
            "(CrewAI sets it itself for nested calls; nothing public turns that retry off)",
            "CrewAI's own retry stays on under crewthrottle's: a logical call may cost up to "
            "3 x max_tries HTTP requests",
            _crewai_retry_flag,
        ),
        Seam(
            "crewai.llms.base_llm.BaseLLM.__init_subclass__",
            "CrewAI wraps only the call/acall a subclass defines in its own body in its retry, "
            "so a throttled class's call/acall (from a mixin) stay outside it",
            "CrewAI's retry may wrap the throttled call: up to 3 x max_tries HTTP requests "
            "per logical call",
            _crewai_subclass_wrapping,
        ),
        Seam(
            "crewai.llms.base_llm.BaseLLM._track_token_usage_internal",
            "every provider reports each reply's usage here, in the calling thread; CrewAI's "
            "public LLM events carry usage too, but are delivered later on other threads",
            "permits are not settled to the usage: each call stays charged at its estimate "
            "(the limiter is stricter than needed, never looser)",
            _crewai_usage_hook,
        ),
        Seam(
            "crewai.llm.LLM._prepare_completion_params",
            "the LiteLLM route's completion parameters, where crewthrottle adds the client "
            "(LiteLLM's client= parameter) whose requests take their permits as they are sent",
            "LiteLLM-route calls take their permit when the attempt starts, a little before "
            "the request is sent",
            _crewai_litellm_params,
        ),
        Seam(
            "litellm.llms.custom_httpx.http_handler.HTTPHandler",
            "LiteLLM's HTTP handler classes, which its Anthropic route accepts as client=: "
            "crewthrottle hands it one whose httpx request hook takes the permit",
            "LiteLLM-route calls to Anthropic take their permit when the attempt starts, a "
            "little before the request is sent",
            _litellm_http_handler,
        ),
    )
}

_checked: dict[str, bool] = {}
_lock = threading.Lock()


def available(name: str) -> bool:
    """Whether seam ``name`` is where crewthrottle expects it (checked once per process);
    if not, a warning names it and the behaviour that applies instead."""
    with _lock:
        present = _checked.get(name)
    if present is None:
        present = _probe(SEAMS[name])
        with _lock:
            _checked[name] = present
    if not present:
        seam = SEAMS[name]
        warn_once(
            f"seam:{name}",
            f"crewthrottle: the private seam {seam.name} is not where crewthrottle expects it "
            f"(what it is for: {seam.gives}); this version of its library moved it. Until "
            f"crewthrottle follows: {seam.without}.",
        )
    return present


def _probe(seam: Seam) -> bool:
    try:
        return bool(seam.probe())
    except Exception:  # an import or an attribute that moved is the seam missing
        return False


def missing() -> list[str]:
    """The names of the seams that are not where expected (no warning)."""
    return [name for name, seam in SEAMS.items() if not _probe(seam)]
