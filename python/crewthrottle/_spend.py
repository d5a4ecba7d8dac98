"""Who spends the budget (issue 11): per model, agent role and task, the LLM calls, HTTP
requests, tokens, 429s, retries and time spent waiting for permits of throttled calls.

A :class:`SpendReport` counts the throttled calls made in a context that tracks it
(``with report.track():``, :func:`track_spend`, ``kickoff_all(report=...)``). Tracking is a
``ContextVar``: it follows a call into the threads and tasks that ``kickoff_all`` and CrewAI
start (both copy the context), so a report counts its own crews' calls and not those of
another ``kickoff_all`` running at the same time. Nested tracking counts a call in every
enclosing report.

The integrations feed it through two small objects: a :class:`Call` per logical LLM call
(:func:`start_call`; None when nothing tracks, so an untracked call costs one ContextVar
read) and a :class:`Try` per attempt of it, which
:class:`~crewthrottle._integrations.Attempt` tells when a request goes out (and how long its
permit took), what usage came back, and how it failed.

Labels are bounded: free text (roles, task descriptions) is normalised and cut short, rows are
keyed by stable template keys (CrewAI's ``Agent.key`` and ``Task.key``, so one crew run over a
thousand inputs is one row per task, not a thousand), and past ``max_rows`` distinct rows the
rest are counted in one "(other)" row.
"""

from __future__ import annotations

import contextvars
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields

from crewthrottle._integrations import usage_tokens
from crewthrottle._rate_limit_errors import http_status
from crewthrottle._spend_table import render

__all__ = [
    "NOBODY",
    "OTHER",
    "Call",
    "SpendReport",
    "SpendRow",
    "Try",
    "Who",
    "fallback",
    "start_call",
    "text_label",
    "track_spend",
]

#: The label of what a call does not say (no agent, no task).
NOBODY = "-"
#: The labels of the row that counts every row past ``max_rows``.
OTHER = "(other)"
#: Characters of free text kept for a label (the table cuts them shorter).
LABEL_CHARS = 80
#: Characters of a model's name kept.
MODEL_CHARS = 60
#: Task executions remembered per report, to count calls per execution: far more than run at
#: once. One forgotten and seen again would count as a new execution.
_EXECUTIONS = 4096


@dataclass(frozen=True)
class Who:
    """Whose call it is: the labels of its row, and the stable keys that choose the row."""

    agent: str = NOBODY
    task: str = NOBODY
    agent_key: Hashable = NOBODY
    task_key: Hashable = NOBODY
    #: Shown after the task's label: ``#`` and the start of its key, for an unnamed task.
    task_tag: str = ""
    #: One execution of the task (calls are counted per execution); None outside a task.
    execution: Hashable | None = None


@dataclass(frozen=True)
class SpendRow:
    """What the calls of one model, agent role and task cost. Times are seconds.

    ``calls`` are logical LLM calls; ``requests`` the HTTP requests they sent (one per permit:
    the first try and every retry that reached the provider); ``retries`` the tries after the
    first; ``rate_limited`` the responses with status 429; the tokens those the provider
    reported (``tokens``: the total the limiter settled to; prompt and completion where the
    usage says). ``executions`` counts the task's executions that made these calls, and
    ``max_calls_per_execution`` the most calls one of them made; ``flagged`` says that was
    more than the report's ``flag_calls`` (``max_iter`` or a tool loop at work).
    """

    model: str
    agent: str
    task: str
    calls: int
    requests: int
    retries: int
    rate_limited: int
    prompt_tokens: int
    completion_tokens: int
    tokens: int
    wait: float
    executions: int
    max_calls_per_execution: int
    flagged: bool

    @property
    def calls_per_execution(self) -> float | None:
        """Calls per execution of the task, on average; None for calls outside any task."""
        return self.calls / self.executions if self.executions else None


@dataclass
class _Tally:
    """A row being counted (under its report's lock)."""

    model: str
    agent: str
    task: str
    tag: str = ""
    calls: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens: int = 0
    wait: float = 0.0
    executions: int = 0
    most_calls: int = 0


#: The figures a total adds up: the counts after the labels, but ``most_calls``.
_SUMMED = tuple(f.name for f in fields(_Tally))[4:-1]
_OTHER_KEY = (OTHER, OTHER, OTHER)

_SPACE = re.compile(r"\s+")


def text_label(value: object, limit: int = LABEL_CHARS) -> str:
    """``value``'s text on one line, spaces collapsed, at most ``limit`` characters; ``-`` for
    nothing."""
    text = _SPACE.sub(" ", value).strip() if isinstance(value, str) else ""
    return text[:limit] or NOBODY


def _merged(label: str, other: str) -> str:
    """One label for a row whose calls gave two (a template filled with different inputs):
    their common start, marked as cut."""
    if label == other:
        return label
    length = 0
    for a, b in zip(label, other, strict=False):
        if a != b:
            break
        length += 1
    common = label[:length].rstrip(" …")
    return f"{common}…" if common else "…"


def _positive(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


class SpendReport:
    """Who spends the budget: the throttled LLM calls made while this report tracks, per
    model, agent role and task (see :class:`SpendRow` for the figures).

    ``with report.track():`` counts the calls made in that block (``kickoff_all(report=report)``
    does it for you).
    :meth:`rows` returns the figures, by spend (tokens) first; :meth:`table` (or ``str()``)
    renders them. At most ``max_rows`` rows of their own: calls of any further model, agent
    and task are counted in one "(other)" row. A row whose task made more than ``flag_calls``
    LLM calls in one execution is flagged. Thread-safe.

    Raises:
        TypeError, ValueError: ``max_rows`` or ``flag_calls`` is not an int >= 1.
    """

    def __init__(self, *, max_rows: int = 30, flag_calls: int = 10) -> None:
        self.max_rows = _positive(max_rows, "max_rows")
        self.flag_calls = _positive(flag_calls, "flag_calls")
        self._lock = threading.Lock()
        self._rows: dict[tuple[Hashable, ...], _Tally] = {}
        self._executions: OrderedDict[tuple[Hashable, ...], int] = OrderedDict()

    @contextmanager
    def track(self) -> Iterator[SpendReport]:
        """Count the throttled calls made in this block: in this context, so also in the tasks
        it starts and in threads started with a copy of it (``kickoff_all``'s, CrewAI's,
        ``asyncio.to_thread``, LangChain's ``batch``; not a bare ``threading.Thread``)."""
        token = _reports.set((*_reports.get(), self))
        try:
            yield self
        finally:
            _reports.reset(token)

    def rows(self) -> list[SpendRow]:
        """The figures so far, one row per model, agent role and task, most tokens first."""
        with self._lock:
            rows = [self._row(t) for t in self._rows.values()]
        return sorted(rows, key=lambda r: (-r.tokens, -r.calls, r.model, r.agent, r.task))

    def total(self) -> SpendRow:
        """All rows added up (``max_calls_per_execution``: the most of any row)."""
        rows = self.rows()
        counts = {name: sum(getattr(r, name) for r in rows) for name in _SUMMED}
        most = max((r.max_calls_per_execution for r in rows), default=0)
        return SpendRow(
            "total",
            NOBODY,
            NOBODY,
            **counts,
            max_calls_per_execution=most,
            flagged=any(r.flagged for r in rows),
        )

    def table(self) -> str:
        """The rows as a text table, under a line of totals; flagged rows marked ``!``."""
        return render(self.rows(), self.total(), self.flag_calls)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        total = self.total()
        return (
            f"<crewthrottle.SpendReport rows={len(self._rows)} calls={total.calls} "
            f"requests={total.requests} tokens={total.tokens}>"
        )

    # -- fed by Call and Try ---------------------------------------------------------------------

    def _open(self, model: str, who: Who) -> _Tally:
        """The row of a new call, with the call counted."""
        key = (model, who.agent_key, who.task_key)
        with self._lock:
            tally = self._rows.get(key)
            if tally is None and len(self._rows) >= self.max_rows + (_OTHER_KEY in self._rows):
                key = _OTHER_KEY
                tally = self._rows.setdefault(key, _Tally(OTHER, OTHER, OTHER))
            elif tally is None:
                tally = self._rows[key] = _Tally(model, who.agent, who.task, who.task_tag)
            elif key != _OTHER_KEY:
                tally.agent, tally.task = (
                    _merged(tally.agent, who.agent),
                    _merged(tally.task, who.task),
                )
            tally.calls += 1
            if who.execution is not None:
                self._count_execution(tally, (*key, who.execution))
            return tally

    def _count_execution(self, tally: _Tally, execution: tuple[Hashable, ...]) -> None:
        calls = self._executions.pop(execution, 0) + 1
        self._executions[execution] = calls  # the most recent last
        if len(self._executions) > _EXECUTIONS:
            self._executions.popitem(last=False)
        tally.executions += calls == 1
        tally.most_calls = max(tally.most_calls, calls)

    def _add(self, tally: _Tally, amounts: Mapping[str, float]) -> None:
        with self._lock:
            for name, amount in amounts.items():
                setattr(tally, name, getattr(tally, name) + amount)

    def _row(self, t: _Tally) -> SpendRow:
        counts = {name: getattr(t, name) for name in _SUMMED}
        return SpendRow(
            t.model,
            t.agent,
            t.task + t.tag,
            **counts,
            max_calls_per_execution=t.most_calls,
            flagged=t.most_calls > self.flag_calls,
        )


@contextmanager
def track_spend(*, max_rows: int = 30, flag_calls: int = 10) -> Iterator[SpendReport]:
    """A new :class:`SpendReport` counting the throttled calls made in this block (see
    :meth:`SpendReport.track`): ``with track_spend() as spend: kickoff_all(crews, ...)``, then
    ``spend.rows()`` or ``print(spend)``."""
    with SpendReport(max_rows=max_rows, flag_calls=flag_calls).track() as report:
        yield report


# -- what the integrations call ----------------------------------------------------------------

_reports: contextvars.ContextVar[tuple[SpendReport, ...]] = contextvars.ContextVar(
    "crewthrottle_spend_reports", default=()
)
#: Who calls, when a call does not say: set by ``kickoff_all`` around each crew.
_fallback: contextvars.ContextVar[Callable[[], Who | None] | None] = contextvars.ContextVar(
    "crewthrottle_spend_fallback", default=None
)


@contextmanager
def fallback(who: Callable[[], Who | None]) -> Iterator[None]:
    """In this block, ``who()`` tells whose a call is when the call itself does not."""
    token = _fallback.set(who)
    try:
        yield
    finally:
        _fallback.reset(token)


def start_call(model: object, who: Callable[[], Who | None]) -> Call | None:
    """A logical LLM call to ``model`` starts: counted in every report tracking here, in the
    row of ``who()`` (or of the fallback, if it says None). None when nothing tracks."""
    reports = _reports.get()
    if not reports:
        return None
    caller = _quietly(who) or _quietly(_fallback.get()) or Who()
    label = text_label(model if isinstance(model, str) else None, MODEL_CHARS)
    return Call([(report, report._open(label, caller)) for report in reports])


def _quietly(who: Callable[[], Who | None] | None) -> Who | None:
    """``who()``, or None if it fails: accounting never fails a call."""
    try:
        return None if who is None else who()
    except Exception:
        return None


class Call:
    """One logical LLM call, counted in the row of each report tracking it."""

    __slots__ = ("_rows", "_tries")

    def __init__(self, rows: list[tuple[SpendReport, _Tally]]) -> None:
        self._rows = rows
        self._tries = 0

    def attempt(self) -> Try:
        """A try of this call begins (a retry, after the first)."""
        self._tries += 1
        if self._tries > 1:
            self._add(retries=1)
        return Try(self)

    def _add(self, **amounts: float) -> None:
        for report, tally in self._rows:
            report._add(tally, amounts)


class Try:
    """One attempt of a :class:`Call`, fed by :class:`~crewthrottle._integrations.Attempt`."""

    __slots__ = ("_answered", "_call")

    def __init__(self, call: Call) -> None:
        self._call = call
        self._answered = False

    def sent(self, waited: float) -> None:
        """An HTTP request goes out, its permit having taken ``waited`` seconds."""
        self._call._add(requests=1, wait=waited)

    def usage(self, usage: object) -> None:
        """The usage a response reported (any shape :func:`usage_tokens` reads)."""
        prompt, completion = _split(usage)
        total = usage_tokens(usage)
        self._call._add(
            prompt_tokens=prompt,
            completion_tokens=completion,
            tokens=prompt + completion if total is None else total,
        )

    def response(self, status: int) -> None:
        """A response arrived with ``status``."""
        self._answered = True
        if status == 429:
            self._call._add(rate_limited=1)

    def error(self, exc: BaseException) -> None:
        """The attempt failed with ``exc``: a 429 unless its response was counted already."""
        if not self._answered and http_status(exc) == 429:
            self._call._add(rate_limited=1)


def _field(usage: object, name: str) -> int:
    value = usage.get(name) if isinstance(usage, Mapping) else getattr(usage, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _split(usage: object) -> tuple[int, int]:
    """Prompt and completion tokens of a usage: OpenAI's names, else Anthropic's and
    LangChain's (input with cache creation, which Anthropic counts as input; output)."""
    if usage is None or isinstance(usage, (int, bool)):
        return 0, 0
    prompt = _field(usage, "prompt_tokens")
    prompt = prompt or _field(usage, "input_tokens") + _field(usage, "cache_creation_input_tokens")
    return prompt, _field(usage, "completion_tokens") or _field(usage, "output_tokens")
