"""The machinery of ``kickoff_all``: which crews run with which inputs, their LLMs throttled,
at most ``max_workers`` at once, and a progress bar."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from crewthrottle import _spend as spending
from crewthrottle._backoff import _note
from crewthrottle._guard import refuse_if_held
from crewthrottle._native import Limiter
from crewthrottle.crewai._llm import Throttled, throttling_of
from crewthrottle.crewai._who import running_task

if TYPE_CHECKING:
    from crewai import Crew

__all__ = ["Bar", "Job", "Plan", "default_workers", "plan", "run_all", "run_all_async"]

#: Crews in flight by default, at most.
MAX_DEFAULT_WORKERS = 64

Throttle = Callable[[Any, Limiter], Any]

# Agents' and crews' fields that hold an LLM. The deprecated ones are read from ``vars()``,
# which does not warn.
_AGENT_LLMS = ("llm", "function_calling_llm")
_CREW_LLMS = ("manager_llm", "function_calling_llm", "planning_llm", "chat_llm")


@dataclass
class Job:
    """One kickoff: a crew (or a template to copy first) and its inputs."""

    index: int
    crew: Crew
    inputs: dict[str, Any] | None
    copy: bool


class Plan:
    """The jobs of one ``kickoff_all``, throttling their LLMs with one limiter.

    Each distinct LLM object is throttled once and the result shared by every agent that held
    it, as the caller had them share it.
    """

    def __init__(self, jobs: list[Job], limiter: Limiter | None, throttle: Throttle) -> None:
        self.jobs = jobs
        self.limiter = limiter
        self._throttle = throttle
        self._made: dict[int, tuple[object, object]] = {}  # id(original) -> (original, throttled)
        self._lock = threading.Lock()
        for crew in {id(job.crew): job.crew for job in jobs}.values():
            self.throttle(crew)

    def crew_for(self, job: Job) -> Crew:
        """The crew to kick off: a copy of a template is made (and throttled) just before."""
        if not job.copy:
            return job.crew
        with self._lock:  # copies read the template and share the memo
            crew = job.crew.copy()
        # Crew.copy() keeps a throttled agent's ``llm`` (it copies it, and a copy of a throttled
        # LLM is throttled) but rebuilds the LLMs it serialises (function_calling_llm...).
        self.throttle(crew)
        return crew

    def throttle(self, crew: Crew) -> None:
        """Replace, in place, every LLM of ``crew`` not yet throttled by a throttled one."""
        limiter = self.limiter
        if limiter is None:
            return
        from crewai.llms.base_llm import BaseLLM

        owners: list[Any] = [crew, *crew.agents]
        if crew.manager_agent is not None:
            owners.append(crew.manager_agent)
        for owner in owners:
            for name in _CREW_LLMS if owner is crew else _AGENT_LLMS:
                llm = vars(owner).get(name)
                if isinstance(llm, BaseLLM) and not isinstance(llm, Throttled):
                    setattr(owner, name, self._throttled(llm, limiter))

    def _throttled(self, llm: object, limiter: Limiter) -> object:
        with self._lock:
            made = self._made.get(id(llm))
            if made is None:
                made = self._made[id(llm)] = (llm, self._throttle(llm, limiter))
            return made[1]


def plan(
    crews: Crew | Iterable[Crew],
    inputs: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None,
) -> list[Job]:
    """The jobs for ``kickoff_all(crews, inputs=...)``, checking the arguments."""
    from crewai import Crew

    if isinstance(crews, Crew):
        if inputs is None or isinstance(inputs, (Mapping, str, bytes)):
            raise TypeError(
                "one crew runs over a list of inputs: kickoff_all(crew, inputs=[{...}, ...]); "
                "to run several crews, pass a list of crews"
            )
        return [Job(i, crews, _inputs(i, x, allow_none=False), True) for i, x in enumerate(inputs)]
    if isinstance(crews, (str, bytes, Mapping)) or not isinstance(crews, Iterable):
        raise TypeError(f"crews must be a Crew or a list of Crews, got {type(crews).__name__}")
    listed = list(crews)
    for i, crew in enumerate(listed):
        if not isinstance(crew, Crew):
            raise TypeError(f"crews[{i}] must be a crewai Crew, got {type(crew).__name__}")
    _refuse_duplicates(listed)
    if inputs is None or isinstance(inputs, Mapping):
        each = [inputs] * len(listed)
    elif isinstance(inputs, (str, bytes)):
        raise TypeError("inputs must be a dict, a list of dicts (one per crew), or None")
    else:
        each = list(inputs)
        if len(each) != len(listed):
            raise ValueError(f"got {len(listed)} crews but {len(each)} inputs: give one per crew")
    pairs = enumerate(zip(listed, each, strict=True))
    return [Job(i, c, _inputs(i, x, allow_none=True), False) for i, (c, x) in pairs]


def _inputs(index: int, value: object, *, allow_none: bool) -> dict[str, Any] | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"inputs[{index}] must be a dict, got {type(value).__name__}")
    return dict(value)


def _refuse_duplicates(crews: list[Crew]) -> None:
    seen: dict[int, int] = {}
    for i, crew in enumerate(crews):
        first = seen.setdefault(id(crew), i)
        if first != i:
            raise ValueError(
                f"crews[{i}] is the same Crew object as crews[{first}]: one crew cannot run "
                "twice at once; pass crew.copy(), or one crew with inputs=[...]"
            )


def limiter_in(jobs: list[Job]) -> Limiter | None:
    """The limiter of the first throttled agent LLM among the jobs' crews, if any."""
    for job in jobs:
        for agent in job.crew.agents:
            llm = vars(agent).get("llm")
            if isinstance(llm, Throttled):
                return throttling_of(llm).limiter
    return None


def default_workers(limiter: Limiter | None, jobs: int) -> int:
    """Twice the limiter's concurrency (crews spend part of their time between LLM calls),
    else the standard library's thread pool default; at most :data:`MAX_DEFAULT_WORKERS`."""
    slots = limiter.max_concurrent if limiter is not None else None
    workers = 2 * slots if slots else min(32, (os.cpu_count() or 1) + 4)
    return max(1, min(jobs, workers, MAX_DEFAULT_WORKERS))


def check_workers(max_workers: object) -> int | None:
    if max_workers is None:
        return None
    if isinstance(max_workers, bool) or not isinstance(max_workers, int):
        raise TypeError(f"max_workers must be an int or None, got {max_workers!r}")
    if max_workers < 1:
        raise ValueError(f"max_workers must be at least 1, got {max_workers}")
    return max_workers


def guard(limiters: Iterable[Limiter | None]) -> None:
    for limiter in limiters:
        if limiter is not None:
            refuse_if_held(limiter, "kickoff_all")


# -- running ------------------------------------------------------------------------------------


def run_all(plan: Plan, workers: int, return_exceptions: bool, bar: Bar) -> list[Any]:
    """Kick off every job on a pool of ``workers`` threads; results in the jobs' order."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix="crewthrottle-crew")
    interrupted = True
    try:
        with bar:
            futures = [_submit(pool, plan, job, bar) for job in plan.jobs]
            if not return_exceptions:
                wait(futures, return_when=FIRST_EXCEPTION)
                for future in futures:
                    future.cancel()  # those not started; running crews cannot be interrupted
            wait(futures)
        interrupted = False
    finally:
        pool.shutdown(wait=not interrupted, cancel_futures=True)
    return _outcomes([_outcome(f) for f in futures], return_exceptions)


def _submit(pool: ThreadPoolExecutor, plan: Plan, job: Job, bar: Bar) -> Future[Any]:
    future = pool.submit(contextvars.copy_context().run, _kickoff, plan, job)
    future.add_done_callback(bar.done)
    return future


def _kickoff(plan: Plan, job: Job) -> Any:
    crew = plan.crew_for(job)
    with spending.fallback(running_task(crew)):
        output: Any = crew.kickoff(inputs=job.inputs)
        if crew.stream:  # a streaming crew runs as its output is read: read it all
            for _ in output:
                pass
            return output.result
    return output


def _outcome(future: Future[Any]) -> Any:
    if future.cancelled():
        return _Cancelled()
    error = future.exception()
    return error if error is not None else _Result(future.result())


async def run_all_async(plan: Plan, workers: int, return_exceptions: bool, bar: Bar) -> list[Any]:
    """Kick off every job with ``akickoff`` as tasks, at most ``workers`` at once."""
    slots = asyncio.Semaphore(workers)
    with bar:
        tasks = [asyncio.ensure_future(_akickoff(plan, job, slots)) for job in plan.jobs]
        for task in tasks:
            task.add_done_callback(bar.done)
        try:
            if not return_exceptions:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in tasks:
                    task.cancel()  # no-op on those done
            await asyncio.wait(tasks)
        except BaseException:  # cancelled from outside: take the crews down too
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
    return _outcomes([_task_outcome(t) for t in tasks], return_exceptions)


async def _akickoff(plan: Plan, job: Job, slots: asyncio.Semaphore) -> Any:
    async with slots:
        crew = plan.crew_for(job)
        with spending.fallback(running_task(crew)):
            output: Any = await crew.akickoff(inputs=job.inputs)
            if crew.stream:
                async for _ in output:
                    pass
                return output.result
        return output


def _task_outcome(task: asyncio.Future[Any]) -> Any:
    if task.cancelled():
        return _Cancelled()
    error = task.exception()
    return error if error is not None else _Result(task.result())


@dataclass
class _Result:
    value: Any


class _Cancelled:
    """A crew not started (or cancelled) because another failed first."""


def _outcomes(outcomes: list[Any], return_exceptions: bool) -> list[Any]:
    """The results in order, or the first failure raised (with a note on the others)."""
    failures = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, BaseException)]
    if return_exceptions:
        fatal = [o for _, o in failures if not isinstance(o, Exception)]
        if fatal:
            raise fatal[0]
        return [o.value if isinstance(o, _Result) else o for o in outcomes]
    if not failures:
        return [o.value for o in outcomes]
    index, error = failures[0]
    cancelled = sum(isinstance(o, _Cancelled) for o in outcomes)
    _note(
        error,
        f"crewthrottle: crew #{index} of {len(outcomes)} failed; {len(failures) - 1} other "
        f"crews failed and {cancelled} were cancelled",
    )
    raise error


# -- progress -----------------------------------------------------------------------------------


class Bar:
    """No progress bar."""

    def done(self, future: Future[Any] | asyncio.Future[Any]) -> None:
        """Count the crew of ``future`` done, unless it was cancelled."""
        if not future.cancelled():
            self.advance(future.exception() is None)

    def advance(self, ok: bool) -> None:
        """Count one crew done (``ok``: without an exception)."""

    def __enter__(self) -> Bar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class RichBar(Bar):
    """A rich progress bar: crews done of all, failures, time elapsed and left."""

    def __init__(self, total: int) -> None:
        try:
            from rich import progress
        except ImportError as exc:
            raise ImportError(
                "kickoff_all(progress=True) draws its bar with rich, which is not installed: "
                "pip install 'crewthrottle[progress]' (or pip install rich)"
            ) from exc
        self._progress = progress.Progress(
            progress.TextColumn("[bold]{task.description}"),
            progress.BarColumn(),
            progress.MofNCompleteColumn(),
            progress.TextColumn("{task.fields[failed]} failed"),
            progress.TimeElapsedColumn(),
            progress.TimeRemainingColumn(),
        )
        self._task = self._progress.add_task("crews", total=total, failed=0)
        self._failed = 0
        self._lock = threading.Lock()

    def advance(self, ok: bool) -> None:
        with self._lock:
            self._failed += not ok
            self._progress.update(self._task, advance=1, failed=self._failed)

    def __enter__(self) -> Bar:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()
