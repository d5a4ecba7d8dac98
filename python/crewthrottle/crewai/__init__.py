"""CrewAI integration: throttle a crew's LLM calls, and run many crews inside the limits.

Throttle your crew in three lines::

    import crewthrottle as ct
    from crewthrottle.crewai import kickoff_all

    limiter = ct.Limiter(rpm=500, tpm=200_000, max_concurrent=8)
    results = kickoff_all(crews, limiter=limiter)

or throttle one LLM and use it as any other: ``Agent(llm=throttle_llm(llm, limiter))``.

Who spends the budget: ``kickoff_all(crews, limiter=limiter, report=True)`` prints, at the end,
the LLM calls, HTTP requests, retries, 429s, tokens and permit waits per model, agent role and
task; ``with track_spend() as spend:`` counts them around any code (``spend.rows()``).

The limiter shapes LLM calls, not crews. Never hold it around ``crew.kickoff()`` (``with
limiter:``): the crew's own calls wait for the slots its kickoff holds, and once every slot is
held so, nothing moves. Bound crews in flight with ``kickoff_all(..., max_workers=N)`` instead.
A throttled call that finds itself in that situation raises ``RuntimeError`` rather than hang
(see :func:`throttle_llm`).

CrewAI is imported only when these functions are called (``pip install 'crewthrottle[crewai]'``).
"""

from crewthrottle._guard import DEFAULT_DEADLOCK_AFTER
from crewthrottle._integrations import DEFAULT_COMPLETION_TOKENS
from crewthrottle._spend import SpendReport, SpendRow, track_spend
from crewthrottle.crewai._api import (
    DEFAULT_RETRY,
    akickoff_all,
    estimate_tokens,
    is_throttled,
    kickoff_all,
    throttle_llm,
)

__all__ = [
    "DEFAULT_COMPLETION_TOKENS",
    "DEFAULT_DEADLOCK_AFTER",
    "DEFAULT_RETRY",
    "SpendReport",
    "SpendRow",
    "akickoff_all",
    "estimate_tokens",
    "is_throttled",
    "kickoff_all",
    "throttle_llm",
    "track_spend",
]
