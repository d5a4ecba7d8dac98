"""Whose a throttled CrewAI call is, for the spend report (:mod:`crewthrottle._spend`).

First what the call itself says: CrewAI's public ``BaseLLM.call``/``acall`` parameters
``from_agent`` and ``from_task``, which every agent executor fills. (CrewAI's LLM call hooks,
``crewai.hooks.before_llm_call``, say no more: their ``LLMCallHookContext`` carries the same
executor's agent and task, or for a direct call ``agent=from_agent`` and no task; and they
are registered for the whole process, where these arguments come with each call.)

Else, for calls that name neither (a guardrail or a tool that calls an LLM itself, memory,
summaries), the task the crew is running, for crews run by ``kickoff_all``: the one task whose
public ``start_time`` is later than its ``end_time`` (or has none), if exactly one is.

Rows are keyed by CrewAI's public ``Agent.key`` and ``Task.key`` (hashes of the role, goal and
backstory, of the description and expected output, before inputs are filled in), so that a
crew run over many inputs counts one row per agent and task; a task's ``name``, when it has
one, is its label and key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from crewthrottle._spend import Who, text_label

__all__ = ["caller", "running_task", "who_of"]

#: Where ``BaseLLM.call(messages, tools, callbacks, available_functions, from_task,
#: from_agent, response_model)`` takes them, after ``messages``.
_POSITIONS = {"from_task": 3, "from_agent": 4}


def caller(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[[], Who | None]:
    """Who makes the call with these arguments (None: the call does not say)."""

    def who() -> Who | None:
        task, agent = _argument(args, kwargs, "from_task"), _argument(args, kwargs, "from_agent")
        if task is None and agent is None:
            return None
        return who_of(agent if agent is not None else getattr(task, "agent", None), task)

    return who


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> Any:
    if name in kwargs:
        return kwargs[name]
    position = _POSITIONS[name]
    return args[position] if len(args) > position else None


def who_of(agent: Any, task: Any) -> Who:
    """The row of a call by ``agent`` for ``task`` (either may be None)."""
    role = text_label(getattr(agent, "role", None))
    agent_key = _key(agent) or role
    if task is None:
        return Who(agent=role, agent_key=agent_key)
    name = getattr(task, "name", None)
    if isinstance(name, str) and name.strip():
        label, task_key, tag = text_label(name), f"name:{text_label(name)}", ""
    else:
        label = text_label(getattr(task, "description", None))
        task_key = _key(task) or hashlib.sha256(label.encode()).hexdigest()
        tag = f" #{str(task_key)[:6]}"
    # One execution: the task object (a copy per kickoff_all input) started at that time.
    execution = (getattr(task, "id", None) or id(task), getattr(task, "start_time", None))
    return Who(role, label, agent_key, task_key, tag, execution)


def _key(thing: Any) -> str | None:
    key = getattr(thing, "key", None) if thing is not None else None
    return key if isinstance(key, str) and key else None


def running_task(crew: Any) -> Callable[[], Who | None]:
    """Who calls, when the call does not say: the one task ``crew`` is running, if one is."""

    def who() -> Who | None:
        running = [task for task in crew.tasks if _running(task)]
        if len(running) != 1:
            return None
        task = running[0]
        return who_of(task.agent, task)

    return who


def _running(task: Any) -> bool:
    start, end = getattr(task, "start_time", None), getattr(task, "end_time", None)
    return start is not None and (end is None or end < start)
