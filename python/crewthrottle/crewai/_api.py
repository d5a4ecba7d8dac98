"""``throttle_llm``, ``kickoff_all``, ``akickoff_all``: the CrewAI integration's public face.

(The package docstring, in ``crewthrottle/crewai/__init__.py``, says how to use them.)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from crewthrottle import _integrations as shared
from crewthrottle._backoff import Backoff, backoff
from crewthrottle._guard import DEFAULT_DEADLOCK_AFTER
from crewthrottle._integrations import DEFAULT_COMPLETION_TOKENS, EstimateTokens
from crewthrottle._native import Limiter
from crewthrottle._spend import SpendReport
from crewthrottle.crewai import _run as run
from crewthrottle.crewai._llm import Throttled, Throttling, make_throttled, throttling_of

if TYPE_CHECKING:
    from crewai import Crew
    from crewai.llms.base_llm import BaseLLM

L = TypeVar("L", bound="BaseLLM")

#: The retry policy of a throttled LLM unless told otherwise: 4 attempts in all, for rate limits
#: and overloads only (not ``insufficient_quota``), waiting 1, 2, 4 s with full jitter and at
#: least as long as the provider's ``Retry-After`` (which pauses the limiter for everyone), and
#: giving up at once on a named wait over a minute, a provider's whole window.
DEFAULT_RETRY = backoff(max_tries=4, base=1.0, max_delay=60.0)


def throttle_llm(
    llm: L,
    limiter: Limiter,
    *,
    retry: Backoff | None = None,
    estimate_tokens: EstimateTokens | None = None,
    deadlock_after: float | None = DEFAULT_DEADLOCK_AFTER,
) -> L:
    """A copy of the CrewAI ``llm`` whose every call takes a permit of ``limiter``.

    The copy is of the same class (a subclass made for it), so it goes wherever ``llm`` goes:
    ``Agent(llm=...)``, ``Crew(manager_llm=...)``. Each attempt of ``call``/``acall``
    (streaming or not) holds one permit until it returns, taken just before its HTTP request
    is sent where the SDK allows (openai's clients, also under LiteLLM for OpenAI-compatible
    models; elsewhere when the attempt starts), so that the provider counts the request in
    the window the limiter did. The permit is for ``estimate_tokens(messages, llm)`` tokens
    (default: :func:`estimate_tokens`, message text at 4 characters a token plus
    ``max_completion_tokens``/``max_tokens`` or :data:`DEFAULT_COMPLETION_TOKENS`, never more
    than the limiter's ``tpm``), settled to the ``usage`` the provider reports. Rate-limit
    errors are retried by ``retry`` (default :data:`DEFAULT_RETRY`) the way
    :func:`crewthrottle.throttle` does: the permit is given back before each delay, and a
    wait the provider names pauses ``limiter``.

    The copy's own retry layers are off, so one logical call costs at most ``retry``'s
    ``max_tries`` HTTP requests: the SDK client's (``max_retries=0``), LiteLLM's
    (``num_retries=0``) and CrewAI's rate-limit retry around ``call``. The agent's
    ``max_retry_limit`` (a failed task runs again) is the agent's, and stays.

    Copies CrewAI makes (``Crew.copy()``, ``kickoff_for_each``, ``copy.deepcopy`` of an agent)
    stay throttled by the same limiter. Throttling a throttled LLM again with the same limiter
    returns it unchanged; with another limiter, or new options, is a ``ValueError``.

    Self-deadlock: a call made while its own thread or task holds a permit of ``limiter``
    through another throttled call raises ``RuntimeError`` at once. Holders that crewthrottle
    cannot see (``with limiter:`` around ``kickoff``) are caught by the stall they cause: a call
    that has waited ``deadlock_after`` seconds while every concurrency slot was held outside
    throttled calls, with at least as many of those waiting and nothing granted meanwhile,
    raises ``RuntimeError`` (``None``: wait forever).

    Raises:
        TypeError: ``llm`` is not a CrewAI LLM, or another argument has the wrong type.
        ValueError: ``llm`` is throttled already by another limiter or with other options.
        ImportError: CrewAI is not installed.
    """
    base = _base_llm()
    if not isinstance(llm, base):
        raise TypeError(f"llm must be a CrewAI LLM (crewai.LLM), got {type(llm).__name__}")
    shared.check_limiter(limiter)
    shared.check_retry(retry)
    shared.check_callable(estimate_tokens, "estimate_tokens")
    deadlock_after = shared.seconds_or_none(deadlock_after, "deadlock_after")
    if isinstance(llm, Throttled):
        return _already_throttled(llm, limiter, retry, estimate_tokens, deadlock_after)
    throttling = Throttling(limiter, retry or DEFAULT_RETRY, estimate_tokens, deadlock_after)
    cap, tpm = shared.completion_cap({}, llm), limiter.tpm
    if estimate_tokens is None and cap is not None and tpm is not None and cap >= tpm:
        shared.warn_large_budget(llm, cap, limiter)  # said once, now rather than at a call
    throttled: L = make_throttled(llm, throttling)
    return throttled


def estimate_tokens(messages: str | Sequence[Any], llm: Any) -> int:
    """The default size of a call, in tokens: prompt plus completion budget.

    The prompt is all message text at 4 characters a token, rounded up (as OpenAI's own rate
    limiter estimates it); the completion budget is the LLM's ``max_completion_tokens`` or
    ``max_tokens`` (what OpenAI and Anthropic reserve until the reply's usage is known), else
    :data:`DEFAULT_COMPLETION_TOKENS`.
    """
    cap = shared.completion_cap({}, llm)
    return shared.prompt_tokens(messages) + (DEFAULT_COMPLETION_TOKENS if cap is None else cap)


def is_throttled(llm: object) -> bool:
    """Whether ``llm`` was made by :func:`throttle_llm` (or is a copy of one)."""
    return isinstance(llm, Throttled)


def kickoff_all(
    crews: Crew | Iterable[Crew],
    *,
    inputs: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None = None,
    limiter: Limiter | None = None,
    max_workers: int | None = None,
    return_exceptions: bool = False,
    progress: bool = False,
    report: bool | SpendReport = False,
) -> list[Any]:
    """Kick off many crews concurrently, on threads, and return their outputs in order.

    ``crews`` is a list of crews, each run with ``inputs`` (one dict for all, or a list with one
    dict per crew), or one crew run once per dict of ``inputs`` (a fresh ``crew.copy()`` each
    time, as ``kickoff_for_each`` does). With ``limiter``, every LLM of the crews' agents (and
    their ``manager_llm``, ``planning_llm``...) not yet throttled is replaced, in place, by
    ``throttle_llm(llm, limiter)``; an LLM shared by several agents stays shared.

    ``max_workers`` bounds the crews in flight. The default is twice the limiter's
    ``max_concurrent`` (that of ``limiter``, else of the first throttled LLM found), so that the
    slots stay busy while some crews work between LLM calls; without one, the thread pool
    default ``min(32, cpus + 4)``; never more than 64 or the number of crews.

    A failing crew raises its exception once the crews already running have finished (threads
    cannot be interrupted) and those not started are cancelled; a note on it tells which crew
    failed and how many others failed. With ``return_exceptions``, every crew runs and a
    failure takes its place in the list. ``progress`` draws a bar with ``rich``
    (``pip install 'crewthrottle[progress]'``; ImportError without it).

    ``report`` prints, when the crews are done (or one failed), who spent the budget: one row
    per model, agent role and task, with their LLM calls, HTTP requests, retries, 429s,
    tokens and time spent waiting for permits, most tokens first (see
    :class:`crewthrottle.SpendReport`). ``report=True`` prints a new report; pass a
    ``SpendReport`` to have it filled too, and read its :meth:`~SpendReport.rows` after.
    Only these crews' throttled calls are counted.

    Crews with ``stream=True`` are read to the end; their place holds the final output.

    Raises:
        TypeError, ValueError: for arguments that cannot be run (a crew given twice, inputs of
            the wrong length).
        RuntimeError: if called from inside a throttled LLM call of ``limiter``.
        ImportError: CrewAI is not installed, or ``progress`` without rich.
    """
    spend = _spend_report(report)
    plan, workers, bar = _prepare(crews, inputs, limiter, max_workers, progress)
    with _reporting(spend):
        return run.run_all(plan, workers, return_exceptions, bar)


async def akickoff_all(
    crews: Crew | Iterable[Crew],
    *,
    inputs: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None = None,
    limiter: Limiter | None = None,
    max_workers: int | None = None,
    return_exceptions: bool = False,
    progress: bool = False,
    report: bool | SpendReport = False,
) -> list[Any]:
    """:func:`kickoff_all` for asyncio: each crew runs with CrewAI's native ``akickoff``.

    The same arguments and results (and ``report``). A failing crew cancels the others
    (running ones too) and is raised once they have stopped; cancelling ``akickoff_all``
    cancels every crew.

    CrewAI 1.15's ``akickoff`` makes each LLM call on a thread of the event loop's default
    executor (``min(32, cpus + 4)`` threads), which so bounds the LLM calls in flight too: give
    the loop a larger executor (``loop.set_default_executor``) to use more concurrency.
    """
    spend = _spend_report(report)
    plan, workers, bar = _prepare(crews, inputs, limiter, max_workers, progress)
    with _reporting(spend):
        return await run.run_all_async(plan, workers, return_exceptions, bar)


def _spend_report(report: object) -> SpendReport | None:
    """The report ``report=`` asks for: None (False), a new one (True), or the one given."""
    if not isinstance(report, (bool, SpendReport)):
        raise TypeError(f"report must be a bool or a crewthrottle.SpendReport, got {report!r}")
    if report is False:
        return None
    return SpendReport() if report is True else report


@contextmanager
def _reporting(spend: SpendReport | None) -> Iterator[None]:
    """Track the crews' spend in ``spend``, if any, and print it at the end."""
    if spend is None:
        yield
        return
    with spend.track():
        try:
            yield
        finally:
            print(spend.table(), flush=True)


def _prepare(
    crews: Crew | Iterable[Crew],
    inputs: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None,
    limiter: Limiter | None,
    max_workers: int | None,
    progress: bool,
) -> tuple[run.Plan, int, run.Bar]:
    _base_llm()
    if limiter is not None:
        shared.check_limiter(limiter)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {progress!r}")
    workers = run.check_workers(max_workers)
    jobs = run.plan(crews, inputs)
    found = run.limiter_in(jobs)
    run.guard([limiter, found])
    if workers is None:
        workers = run.default_workers(limiter or found, len(jobs))
    bar = run.RichBar(len(jobs)) if progress else run.Bar()
    return run.Plan(jobs, limiter, throttle_llm), workers, bar


def _already_throttled(
    llm: L,
    limiter: Limiter,
    retry: Backoff | None,
    estimate: EstimateTokens | None,
    deadlock_after: float | None,
) -> L:
    current = throttling_of(llm)
    if current.limiter is not limiter:
        raise ValueError(
            f"this LLM is throttled already, by {current.limiter!r}: throttle the original "
            "LLM instead to use another limiter"
        )
    if retry is not None or estimate is not None or deadlock_after != current.deadlock_after:
        raise ValueError(
            "this LLM is throttled already: retry, estimate_tokens and deadlock_after are set "
            "when it is first throttled (throttle the original LLM to change them)"
        )
    return llm


def _base_llm() -> type[BaseLLM]:
    try:
        from crewai.llms.base_llm import BaseLLM
    except ImportError as exc:
        raise ImportError(
            "crewthrottle.crewai needs CrewAI: pip install 'crewthrottle[crewai]'"
        ) from exc
    return BaseLLM
