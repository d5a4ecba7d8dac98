"""Who spends the budget: ``SpendReport`` against the fake provider's own request log, with real
CrewAI crews (two agents, three tasks, a guardrail that makes one task loop and asks a judge
LLM itself) and a real LangChain model, the provider refusing some requests.

Every figure is checked against what the provider logged: each request counted once, in the
row of the model, agent and task whose prompt it carried, with its 429s, retries and tokens.
"""

# No ``from __future__ import annotations``: CrewAI reads the guardrail's return annotation.
import asyncio
import itertools
import re
import threading
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # CrewAI's own ImportWarnings at import time
    from crewai import LLM, Agent, Crew, Task
    from crewai.llms.base_llm import BaseLLM

from tests._crewai import MARKS

import crewthrottle as ct
from crewthrottle.crewai import akickoff_all, is_throttled, kickoff_all, throttle_llm
from crewthrottle.testing import FakeProvider, RequestRecord

pytestmark = MARKS

WINDOW = 2.0
TOPICS = ("ants", "bees", "cats", "dogs")
#: Retries fast enough for a test, and enough of them that no call gives up; max_delay is
#: above the slow start's hold, so a refused request waits out the provider's Retry-After.
RETRY = ct.backoff(max_tries=20, base=0.05, max_delay=2.0)
#: Refusals before a draft passes its guardrail: the draft task makes 3 calls per execution.
REFUSALS = 2


def slow_start(first: int, hold: float = 0.3, then: float = 0.02) -> Callable[[], float]:
    """The provider's latency: its first ``first`` accepted requests take ``hold`` seconds,
    the rest ``then``. With a provider that takes ``first`` requests at once and a limiter that
    lets more through, the requests sent meanwhile are refused: 429s, and retries."""
    count = itertools.count()
    return lambda: hold if next(count) < first else then


def judged(judge: BaseLLM) -> Callable[[Any], tuple[bool, Any]]:
    """A guardrail (CrewAI wants a function) that asks a judge LLM itself (a call that names
    no agent nor task) and refuses each draft :data:`REFUSALS` times."""
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def guardrail(output: Any) -> tuple[bool, Any]:
        judge.call(f"Is this draft fine? {output.raw}")
        with lock:
            seen[output.description] += 1
            passed = seen[output.description] > REFUSALS
        return (True, output.raw) if passed else (False, "Shorter, please.")

    return guardrail


def research_crew(provider: FakeProvider, limiter: ct.Limiter, *, litellm: bool = False) -> Crew:
    """Two agents, three tasks: the researcher collects facts (a named task) and reviews,
    the writer drafts under a guardrail. One model per agent, one for the judge."""
    prefix = "openai/" if litellm else ""

    def llm(model: str) -> BaseLLM:
        url, options = provider.base_url, {"is_litellm": True} if litellm else {}
        plain = LLM(model=prefix + model, base_url=url, api_key="fake", **options)
        throttled: BaseLLM = throttle_llm(plain, limiter, retry=RETRY)
        return throttled

    researcher = Agent(role="Researcher", goal="Find facts", backstory="Careful.", llm=llm("m-r"))
    writer = Agent(role="Writer", goal="Write notes", backstory="Terse.", llm=llm("m-w"))
    tasks = [
        Task(
            name="collect facts",
            description="Collect facts about {topic}.",
            expected_output="Facts.",
            agent=researcher,
        ),
        Task(
            description="Draft a note on {topic}.",
            expected_output="A note.",
            agent=writer,
            guardrail=judged(llm("m-judge")),
            guardrail_max_retries=REFUSALS + 1,
        ),
        Task(
            description="Review the note on {topic} line by line.",
            expected_output="OK.",
            agent=researcher,
        ),
    ]
    return Crew(agents=[researcher, writer], tasks=tasks)


def kind_of_task(label: str) -> str:
    """The task a row's label names (labels of templates filled with different inputs end
    where the inputs start, then ``… #`` and the start of the task's key)."""
    for kind, start in (("collect", "collect facts"), ("draft", "Draft"), ("review", "Review")):
        if label.startswith(start):
            return kind
    raise AssertionError(f"unexpected task label {label!r}")


def row_of(record: RequestRecord) -> tuple[str, str, str]:
    """The (model, agent, task) a logged request belongs to, from what it carried."""
    if record.model in ("m-w", "m-judge"):  # the judge is called from the draft's guardrail
        return record.model, "Writer", "draft"
    collect = "Collect facts about" in record.prompt_text
    review = "Review the note on" in record.prompt_text
    assert record.model == "m-r" and collect != review, record
    return "m-r", "Researcher", "collect" if collect else "review"


def parse_table(out: str) -> list[list[str]]:
    """The rows of a printed spend table: cells are separated by two spaces or more."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("model "))
    assert set(lines[start + 1]) == {"-"}, out
    rows = []
    for line in lines[start + 2 :]:
        if not line or line.startswith("!"):
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def number(cell: str) -> int:
    return int(cell.replace(",", ""))


# -- every request, once, in its agent's and task's row ---------------------------------------


@pytest.mark.parametrize("mode", ["threads", "asyncio", "litellm"])
def test_every_request_is_counted_once_in_its_agents_and_tasks_row(
    mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Four crews (one template over four inputs): 32 logical calls. The limiter lets 3
    requests through at once, the provider takes 2 and refuses the rest with 429s at first."""
    # The crews' first requests leave up to ~0.3 s apart (measured on the LiteLLM route: each
    # thread's first LiteLLM call does more work), and CI once saw none of them overlap the
    # first two's hold of 0.3 s: no 429 at all. Held 1.5 s, the first two are still in flight
    # when the third comes; RETRY's max_delay lets the refused wait that out.
    latency = slow_start(2, hold=1.5)
    with FakeProvider(max_concurrent=2, window=WINDOW, latency=latency) as provider:
        limiter = ct.Limiter(max_concurrent=3, window=WINDOW)
        crew = research_crew(provider, limiter, litellm=mode == "litellm")
        spend = ct.SpendReport(flag_calls=REFUSALS)
        inputs = [{"topic": topic} for topic in TOPICS]
        if mode == "asyncio":
            results = asyncio.run(akickoff_all(crew, inputs=inputs, limiter=limiter, report=spend))
        else:
            results = kickoff_all(crew, inputs=inputs, limiter=limiter, report=spend)
        log = provider.log

    assert len(results) == len(TOPICS)
    assert any(r.status == 429 for r in log), "the provider refused some requests"
    logged: dict[tuple[str, str, str], list[RequestRecord]] = defaultdict(list)
    for record in log:
        logged[row_of(record)].append(record)
    rows = {
        (row.model.removeprefix("openai/"), row.agent, kind_of_task(row.task)): row
        for row in spend.rows()
    }
    assert rows.keys() == logged.keys()
    for key, records in logged.items():
        row, accepted = rows[key], [r for r in records if r.accepted]
        calls_per_execution = 1 + REFUSALS if key[2] == "draft" else 1
        assert row.requests == len(records), key
        assert row.rate_limited == sum(r.status == 429 for r in records), key
        assert row.calls == len(accepted) == calls_per_execution * len(TOPICS), key
        assert row.retries == row.requests - row.calls, key
        assert row.prompt_tokens == sum(r.prompt_tokens for r in accepted), key
        assert row.completion_tokens == sum(r.completion_tokens for r in accepted), key
        assert row.tokens == row.prompt_tokens + row.completion_tokens, key
        assert (row.executions, row.max_calls_per_execution) == (len(TOPICS), calls_per_execution)
        assert row.flagged is (calls_per_execution > REFUSALS), key

    total = spend.total()
    assert total.requests == len(log) and total.rate_limited == sum(r.status == 429 for r in log)
    # The time spent for permits, measured around each wait, covers the limiter's own count.
    waited = limiter.stats()["total_wait"]
    assert waited - 1e-3 <= total.wait <= waited + 0.05 * total.requests, (total.wait, waited)

    printed = parse_table(capsys.readouterr().out)
    expected = spend.rows()
    assert [cells[:3] for cells in printed] == [[r.model, r.agent, r.task] for r in expected]
    for cells, row in zip(printed, expected, strict=True):
        figures = [row.calls, row.requests, row.retries, row.rate_limited, row.prompt_tokens]
        figures += [row.completion_tokens, row.tokens]
        assert [number(cell) for cell in cells[3:10]] == figures
        assert cells[-1] == "!" if row.flagged else cells[-1] == str(row.max_calls_per_execution)
    assert [r.tokens for r in expected] == sorted((r.tokens for r in expected), reverse=True)


# -- bounded labels ----------------------------------------------------------------------------


def test_labels_are_cut_and_rows_past_max_rows_fold_into_other(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Six one-task crews, each task's description different, long and over several lines."""
    role = "Senior principal analyst of extremely long job titles " * 3
    with FakeProvider(window=WINDOW) as provider:
        limiter = ct.Limiter(max_concurrent=4, window=WINDOW)

        def crew(i: int) -> Crew:
            llm = LLM(model="gpt-4o-mini", base_url=provider.base_url, api_key="fake")
            agent = Agent(role=role, goal="Answer", backstory="Terse.", llm=llm)
            text = f"Question {i}:\n\n   name one risk of scaling agents, " + "in detail " * 40
            task = Task(description=text, expected_output="A line.", agent=agent)
            return Crew(agents=[agent], tasks=[task])

        spend = ct.SpendReport(max_rows=3)
        kickoff_all([crew(i) for i in range(6)], limiter=limiter, report=spend)
        requests = provider.count()

    rows = spend.rows()
    assert len(rows) == 4 and requests == 6
    other = next(row for row in rows if row.model == "(other)")
    assert (other.agent, other.task, other.calls) == ("(other)", "(other)", 3)
    for row in rows:
        assert "\n" not in row.task and "  " not in row.task and len(row.agent) <= 80
        assert len(row.task) <= 80 + len(" #123456")
    named = [row for row in rows if row is not other]
    assert all(re.fullmatch(r"Question \d: name one risk.* #[0-9a-f]{6}", r.task) for r in named)
    assert len({row.task for row in named}) == 3
    printed = parse_table(capsys.readouterr().out)
    assert len(printed) == 4
    for model, agent, task, *_ in printed:
        assert len(model) <= 28 and len(agent) <= 24 and len(task) <= 44
        assert agent == "(other)" or agent.endswith("…")


# -- who calls ---------------------------------------------------------------------------------


def test_a_call_is_counted_for_the_agent_and_task_it_names_or_else_for_nobody() -> None:
    """Direct calls: ``from_agent``/``from_task`` (as CrewAI's executors pass them), by keyword
    or position, sync and async; a call that names neither is nobody's. Calls made while no
    report tracks are counted nowhere."""
    with FakeProvider(window=WINDOW) as provider:
        llm = throttle_llm(
            LLM(model="gpt-4o-mini", base_url=provider.base_url, api_key="fake"),
            ct.Limiter(rpm=600, window=WINDOW),
        )
        agent = Agent(role="Editor", goal="Edit", backstory="Strict.", llm=llm)
        task = Task(name="edit", description="Edit it.", expected_output="Text.", agent=agent)
        llm.call("untracked")
        with ct.track_spend() as spend:
            llm.call("Hello", from_agent=agent, from_task=task)
            llm.call("Hello", None, None, None, task)  # from_task by position: its agent
            asyncio.run(llm.acall("Hello", from_agent=agent))
            llm.call("Hello")
        requests = provider.count()

    rows = {(row.agent, row.task): row for row in spend.rows()}
    assert rows.keys() == {("Editor", "edit"), ("Editor", "-"), ("-", "-")}
    assert rows["Editor", "edit"].calls == 2 and rows["Editor", "edit"].executions == 1
    assert rows["Editor", "-"].calls == rows["-", "-"].calls == 1
    assert rows["Editor", "-"].executions == 0 and rows["Editor", "-"].calls_per_execution is None
    assert spend.total().requests == requests - 1, "the untracked call is not counted"


def test_concurrent_kickoffs_count_their_own_crews_and_an_enclosing_report_both() -> None:
    """Two ``akickoff_all`` at once in one event loop, each with its report, inside a third."""
    with FakeProvider(window=WINDOW) as provider:
        limiter = ct.Limiter(max_concurrent=4, window=WINDOW)

        def crew(model: str) -> Crew:
            llm = LLM(model=model, base_url=provider.base_url, api_key="fake")
            agent = Agent(role="Analyst", goal="Answer", backstory="Terse.", llm=llm)
            tasks = [
                Task(description=f"Say hi {i}.", expected_output="Hi.", agent=agent) for i in (1, 2)
            ]
            return Crew(agents=[agent], tasks=tasks)

        async def both(a: ct.SpendReport, b: ct.SpendReport) -> None:
            await asyncio.gather(
                akickoff_all([crew("m-a"), crew("m-a")], limiter=limiter, report=a),
                akickoff_all([crew("m-b")], limiter=limiter, report=b),
            )

        a, b = ct.SpendReport(), ct.SpendReport()
        with ct.track_spend() as outer:
            asyncio.run(both(a, b))
        sent = Counter(record.model for record in provider.log)

    assert {row.model for row in a.rows()} == {"m-a"} and a.total().requests == sent["m-a"] == 4
    assert {row.model for row in b.rows()} == {"m-b"} and b.total().requests == sent["m-b"] == 2
    assert outer.total().requests == 6


# -- LangChain ---------------------------------------------------------------------------------


def test_langchain_calls_are_counted_per_model_against_the_log() -> None:
    from langchain_openai import ChatOpenAI

    from crewthrottle.langchain import throttle_chat_model

    with FakeProvider(max_concurrent=1, window=WINDOW, latency=slow_start(1)) as provider:
        limiter = ct.Limiter(max_concurrent=3, window=WINDOW)
        model = ChatOpenAI(
            model="lc-model", base_url=provider.base_url, api_key="fake", stream_usage=True
        )
        chat = throttle_chat_model(model, limiter, retry=RETRY)
        with ct.track_spend() as spend:
            chat.batch([f"Question {i}" for i in range(4)])
            asyncio.run(chat.ainvoke("Async question"))
            assert "".join(str(chunk.content) for chunk in chat.stream("Streamed question"))
        log = provider.log

    (row,) = spend.rows()
    accepted = [r for r in log if r.accepted]
    assert (row.model, row.agent, row.task) == ("lc-model", "-", "-")
    assert any(r.status == 429 for r in log), "the provider refused some requests"
    assert (row.calls, row.requests) == (len(accepted), len(log)) == (6, row.calls + row.retries)
    assert row.rate_limited == sum(r.status == 429 for r in log)
    assert row.prompt_tokens == sum(r.prompt_tokens for r in accepted)
    assert row.completion_tokens == sum(r.completion_tokens for r in accepted)


# -- arguments ---------------------------------------------------------------------------------


def test_bad_report_arguments_are_refused_with_their_name() -> None:
    llm = LLM(model="gpt-4o-mini", base_url="http://127.0.0.1:9/v1", api_key="fake")
    agent = Agent(role="r", goal="g", backstory="b", llm=llm)
    crew = Crew(agents=[agent], tasks=[Task(description="d", expected_output="o", agent=agent)])
    with pytest.raises(TypeError, match="report must be"):
        kickoff_all([crew], limiter=ct.Limiter(rpm=60), report="yes")  # type: ignore[arg-type]
    assert not is_throttled(agent.llm), "refused before the crew's LLMs were touched"
    with pytest.raises(TypeError, match="report must be"):
        asyncio.run(akickoff_all([crew], report=1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_rows"):
        ct.SpendReport(max_rows=0)
    with pytest.raises(TypeError, match="flag_calls"):
        ct.SpendReport(flag_calls=True)
