"""crewthrottle.crewai against real CrewAI and the real openai SDK (and LiteLLM); the only fake
is the provider, which enforces its limits over 2-second windows.

Figures asserted: every crew succeeds, no 429 when the limiter has the provider's numbers, and
at least 90% of the provider's binding limit used in steady state; at most ``max_tries`` HTTP
requests per logical LLM call when the provider refuses anyway.
"""

from __future__ import annotations

import os

# Before CrewAI is imported: no telemetry, no tracing, no fetch of LiteLLM's price list.
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
import copy
import ipaddress
import socket
import sys
import threading
import time
import warnings
from collections import Counter
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # CrewAI's own ImportWarnings at import time
    from crewai import LLM, Agent, Crew, Process, Task
    from crewai.llms.base_llm import BaseLLM

from tests._crewai import MARKS

import crewthrottle as ct
from crewthrottle.crewai import (
    akickoff_all,
    estimate_tokens,
    is_throttled,
    kickoff_all,
    throttle_llm,
)
from crewthrottle.testing import FakeProvider

pytestmark = MARKS

WINDOW = 2.0
MODEL = "gpt-4o-mini"


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail at once, rather than hang, if anything tries to reach beyond this machine."""
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def local(host: object) -> bool:
        if host in ("localhost", None):
            return True
        try:
            return ipaddress.ip_address(str(host)).is_loopback
        except ValueError:
            return False

    def guarded_connect(self: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and not local(address[0]):
            raise OSError(f"test tried to reach {address}: only loopback is allowed")
        connect(self, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not local(host.decode() if isinstance(host, bytes) else host):
            raise socket.gaierror(f"test tried to resolve {host!r}: only loopback is allowed")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)


def make_llm(provider: FakeProvider | str, *, model: str = MODEL, **options: Any) -> BaseLLM:
    base_url = provider if isinstance(provider, str) else provider.base_url
    if options.get("is_litellm"):
        model = f"openai/{model}"
    llm: BaseLLM = LLM(model=model, base_url=base_url, api_key="fake", **options)
    return llm


def make_crew(llm: BaseLLM, name: str, tasks: int = 1, **crew_options: Any) -> Crew:
    agent = Agent(role="Writer", goal="Write one line", backstory="Terse.", llm=llm)
    work = [
        Task(description=f"Say hello to {name}, part {k}.", expected_output="A line.", agent=agent)
        for k in range(tasks)
    ]
    return Crew(agents=[agent], tasks=work, **crew_options)


def limits(**overrides: Any) -> dict[str, Any]:
    """OpenAI-like limits scaled to a 2-second window: requests bind (12 per window)."""
    return {"rpm": 12, "tpm": 4000, "max_concurrent": 4, "window": WINDOW, **overrides}


def limiter_for(**overrides: Any) -> ct.Limiter:
    """A limiter with the provider's numbers. Its margin (how long past the window a start
    stays counted, for the time between grant and arrival) is 50 ms rather than the default
    window/200 = 10 ms: on 2 cores, an event loop busy starting 20 crews can delay a granted
    request's send by more than 10 ms, and the provider then counts it in the next window."""
    return ct.Limiter(**limits(**overrides), margin=0.05)


def refusals(provider: FakeProvider) -> list[str]:
    """Each 429, with how long before it the window's oldest accepted request started."""
    log, out = provider.log, []
    for refused in (r for r in log if r.status == 429):
        window = [r for r in log if r.accepted and 0 <= refused.start - r.start < WINDOW]
        since = refused.start - window[0].start if window else None
        out.append(
            f"{refused.reason} at {refused.start - log[0].start:.3f} s: {len(window)} "
            f"accepted in the window, the oldest {since} s before"
        )
    return out


def requests_by_model(provider: FakeProvider) -> Counter[str]:
    return Counter(record.model for record in provider.log)


# -- throttle_llm ------------------------------------------------------------------------------


def test_a_throttled_llm_keeps_its_class_and_drops_its_own_retries() -> None:
    limiter = ct.Limiter(rpm=60)
    llm = make_llm("http://127.0.0.1:9/v1")
    throttled = throttle_llm(llm, limiter)

    assert isinstance(throttled, type(llm)) and is_throttled(throttled)
    assert not is_throttled(llm), "the original is left as it was"
    assert (throttled.model, throttled.base_url) == (llm.model, llm.base_url)
    assert llm.max_retries == 2 and llm._client.max_retries == 2
    assert throttled.max_retries == 0
    assert throttled._client.max_retries == throttled._async_client.max_retries == 0
    agent = Agent(role="r", goal="g", backstory="b", llm=throttled)
    assert agent.llm is throttled


def test_throttling_twice_is_refused_unless_it_changes_nothing() -> None:
    limiter = ct.Limiter(rpm=60)
    throttled = throttle_llm(make_llm("http://127.0.0.1:9/v1"), limiter)

    assert throttle_llm(throttled, limiter) is throttled
    with pytest.raises(ValueError, match="throttled already"):
        throttle_llm(throttled, ct.Limiter(rpm=60))
    with pytest.raises(ValueError, match="throttled already"):
        throttle_llm(throttled, limiter, retry=ct.backoff(max_tries=2))


def test_bad_arguments_are_refused_with_the_reason() -> None:
    llm, limiter = make_llm("http://127.0.0.1:9/v1"), ct.Limiter(rpm=60)
    with pytest.raises(TypeError, match="CrewAI LLM"):
        throttle_llm("gpt-4o-mini", limiter)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="Limiter"):
        throttle_llm(llm, object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="backoff"):
        throttle_llm(llm, limiter, retry=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="deadlock_after"):
        throttle_llm(llm, limiter, deadlock_after=0)


@pytest.mark.parametrize("mode", ["call", "acall", "stream", "litellm"])
def test_each_call_takes_one_permit_settled_to_the_reported_usage(mode: str) -> None:
    with FakeProvider(window=WINDOW) as provider:
        limiter = ct.Limiter(rpm=60, tpm=10_000, max_concurrent=2, window=WINDOW)
        options = {"stream": mode == "stream", "is_litellm": mode == "litellm"}
        llm = throttle_llm(make_llm(provider, max_tokens=500, **options), limiter)
        message = "Say hello. " * 10
        assert estimate_tokens(message, llm) == 28 + 500  # 110 characters, then max_tokens

        answer = asyncio.run(llm.acall(message)) if mode == "acall" else llm.call(message)

    assert "Final Answer" in answer
    (record,) = provider.log
    assert record.status == 200 and record.stream is (mode == "stream")
    stats = limiter.stats()
    assert stats["acquired"] == 1 and stats["in_flight"] == 0
    assert stats["tokens_granted"] == record.total_tokens, "settled to the usage, not 528"


# -- kickoff_all: the figures --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["threads", "asyncio", "litellm"])
def test_twenty_crews_use_the_limit_without_a_single_429(mode: str) -> None:
    """20 one-agent crews (two tasks each: 40 calls) launched together, limiter = provider."""
    with FakeProvider(latency=0.05, **limits()) as provider:
        limiter = limiter_for()
        crews = [
            make_crew(make_llm(provider, is_litellm=mode == "litellm"), f"#{i}", tasks=2)
            for i in range(20)
        ]
        started = time.monotonic()
        if mode == "asyncio":
            results = asyncio.run(akickoff_all(crews, limiter=limiter))
        else:
            results = kickoff_all(crews, limiter=limiter)
        elapsed = time.monotonic() - started

    assert all("fake answer" in result.raw for result in results)
    assert provider.count(status=429) == 0, refusals(provider)
    assert provider.count() == limiter.stats()["acquired"] == 40
    utilisation = provider.utilisation()
    print(f"{mode}: 20/20 crews, 0 429s, utilisation {utilisation:.3f}, {elapsed:.1f} s")
    assert utilisation >= 0.9


# LiteLLM 1.95 (under the CrewAI floor) leaves its success-logging coroutine unawaited when an
# event loop closes: its own doing, said by Python when the coroutine is collected.
@pytest.mark.filterwarnings(
    "ignore:coroutine 'Logging.async_success_handler' was never awaited:RuntimeWarning",
    "ignore:Exception ignored in. <coroutine object Logging.async_success_handler"
    ":pytest.PytestUnraisableExceptionWarning",
)
@pytest.mark.parametrize("model", ["anthropic/claude-3-5-haiku-latest", f"openai/{MODEL}"])
@pytest.mark.parametrize("mode", ["call", "acall"])
def test_the_litellm_route_takes_its_permit_as_the_request_is_sent(
    model: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LiteLLM's work before a request (building and translating it; its first call loads
    much more) happens before the permit: the limiter counts the request when it is sent,
    as the provider does, so that work cannot bunch requests up at the provider. The check
    is made inside ``litellm.completion`` itself: no permit is held yet there. The two async
    calls run on two event loops, one after the other (an async client serves one loop)."""
    import litellm

    held_when_litellm_starts: list[int] = []
    real_sync, real_async = litellm.completion, litellm.acompletion

    def completion(*args: Any, **kwargs: Any) -> Any:
        held_when_litellm_starts.append(limiter.stats()["in_flight"])
        return real_sync(*args, **kwargs)

    async def acompletion(*args: Any, **kwargs: Any) -> Any:
        held_when_litellm_starts.append(limiter.stats()["in_flight"])
        return await real_async(*args, **kwargs)

    monkeypatch.setattr(litellm, "completion", completion)
    monkeypatch.setattr(litellm, "acompletion", acompletion)
    with FakeProvider(rpm=60, input_tpm=20_000, output_tpm=20_000, window=60.0) as provider:
        llm = LLM(model=model, base_url=provider.url, api_key="f", max_tokens=100, is_litellm=True)
        limiter = ct.Limiter(rpm=60, tpm=20_000, window=60.0)
        throttled = throttle_llm(llm, limiter)
        for i in range(2):
            if mode == "call":
                reply = throttled.call(f"hi #{i}")
            else:
                reply = asyncio.run(throttled.acall(f"hi #{i}"))
            assert "fake answer" in reply

    assert held_when_litellm_starts == [0, 0], "a permit was taken before LiteLLM ran"
    stats = limiter.stats()
    assert stats["acquired"] == provider.count(status=200) == 2 and stats["in_flight"] == 0
    assert stats["tokens_granted"] == sum(r.total_tokens for r in provider.log)


@pytest.mark.parametrize("litellm", [False, True], ids=["native", "litellm"])
def test_a_provider_that_refuses_anyway_costs_at_most_max_tries_per_call(litellm: bool) -> None:
    """The provider allows a third of what the limiter lets through, and sends no rate-limit
    headers to learn that from: 429s, retried, survived."""
    retry = ct.backoff(max_tries=4, base=0.2)
    logical: Counter[str] = Counter()

    def counted(messages: Any, llm: Any) -> int:
        logical[llm.model.removeprefix("openai/")] += 1  # once per logical call
        return estimate_tokens(messages, llm)

    with FakeProvider(latency=0.05, ratelimit_headers=False, **limits(rpm=4)) as provider:
        limiter = limiter_for()
        crews = [
            make_crew(
                throttle_llm(
                    make_llm(provider, model=f"{MODEL}-{i}", is_litellm=litellm),
                    limiter,
                    retry=retry,
                    estimate_tokens=counted,
                ),
                f"#{i}",
            )
            for i in range(10)
        ]
        results = kickoff_all(crews)

    assert all("fake answer" in result.raw for result in results)
    refused = provider.count(status=429)
    assert refused > 0, "the provider did refuse"
    sent = requests_by_model(provider)
    for model, calls in logical.items():
        assert sent[model] <= 4 * calls, (model, sent[model], calls)
    stats = limiter.stats()
    assert stats["retries"] + stats["give_ups"] == refused
    print(f"429s {refused}, requests {sum(sent.values())}, logical calls {sum(logical.values())}")


# -- copies share the limiter --------------------------------------------------------------------


@pytest.mark.parametrize("litellm", [False, True], ids=["native", "litellm"])
def test_copies_crewai_makes_keep_the_one_limiter(litellm: bool) -> None:
    with FakeProvider(window=WINDOW) as provider:
        limiter = ct.Limiter(rpm=600, max_concurrent=4, window=WINDOW)
        crew = make_crew(throttle_llm(make_llm(provider, is_litellm=litellm), limiter), "{who}")

        twin = crew.copy()
        assert is_throttled(twin.agents[0].llm) and twin.agents[0].llm is not crew.agents[0].llm
        outputs = crew.kickoff_for_each(inputs=[{"who": "Ada"}, {"who": "Bob"}, {"who": "Cy"}])
        twin.kickoff(inputs={"who": "Di"})
        # (A deepcopy of a whole Agent fails in CrewAI itself, throttled or not: its SDK
        # clients cannot be copied. A throttled LLM shares them instead.)
        deep = copy.deepcopy(crew.agents[0].llm)
        assert is_throttled(deep)
        deep.call("Hello")
        assert is_throttled(copy.copy(crew.agents[0].llm))

    assert len(outputs) == 3
    assert provider.count() == limiter.stats()["acquired"] == 5


# -- the self-deadlock -----------------------------------------------------------------------------


def test_holding_the_limiter_around_kickoff_raises_instead_of_hanging() -> None:
    with FakeProvider(window=WINDOW) as provider:
        limiter = ct.Limiter(max_concurrent=2, rpm=600, window=WINDOW)
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def run(i: int) -> None:
            llm = throttle_llm(make_llm(provider), limiter, deadlock_after=1.0)
            crew = make_crew(llm, f"#{i}")
            try:
                with limiter:  # the mistake: every slot held by a kickoff
                    barrier.wait()
                    crew.kickoff()
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        elapsed = time.monotonic() - started

    # Once one kickoff fails and leaves ``with limiter:``, the other may go on and succeed.
    assert not any(thread.is_alive() for thread in threads) and elapsed < 20
    assert errors and all(isinstance(e, RuntimeError) for e in errors)
    assert "self-deadlock" in str(errors[0]) and "kickoff_all" in str(errors[0])
    assert provider.count() == 2 - len(errors)


def test_holding_the_limiter_around_akickoff_raises_instead_of_hanging() -> None:
    async def main(provider: FakeProvider) -> list[BaseException | Any]:
        limiter = ct.Limiter(max_concurrent=2, rpm=600, window=WINDOW)

        async def run(i: int) -> Any:
            crew = make_crew(throttle_llm(make_llm(provider), limiter, deadlock_after=1.0), f"{i}")
            async with limiter:
                return await crew.akickoff()

        return await asyncio.wait_for(
            asyncio.gather(run(0), run(1), return_exceptions=True), timeout=30
        )

    with FakeProvider(window=WINDOW) as provider:
        outcomes = asyncio.run(main(provider))

    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert errors and all(isinstance(e, RuntimeError) and "self-deadlock" in str(e) for e in errors)
    assert provider.count() == 2 - len(errors)


class Relay(BaseLLM):
    """A custom CrewAI LLM that answers by asking another LLM (as a tool could)."""

    inner: Any = None

    def call(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        return self.inner.call(messages)

    async def acall(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        return await self.inner.acall(messages)


def test_a_call_nested_in_a_call_of_the_same_limiter_is_refused_at_once() -> None:
    limiter = ct.Limiter(max_concurrent=1, rpm=600)
    inner = throttle_llm(make_llm("http://127.0.0.1:9/v1"), limiter)
    outer = throttle_llm(Relay(model="relay", inner=inner), limiter)

    with pytest.raises(RuntimeError, match="already holds one of its permits"):
        outer.call("Hello")
    with pytest.raises(RuntimeError, match="already holds one of its permits"):
        asyncio.run(outer.acall("Hello"))
    assert limiter.stats()["in_flight"] == 0


# -- kickoff_all: how it runs --------------------------------------------------------------------


def test_one_crew_over_many_inputs_returns_results_in_input_order() -> None:
    with FakeProvider(window=WINDOW, latency=lambda: 0.01 * (time.monotonic_ns() % 7)) as provider:
        limiter = ct.Limiter(max_concurrent=3, rpm=600, window=WINDOW)
        template = make_crew(make_llm(provider), "{who}")
        names = [f"guest {i}" for i in range(8)]
        results = kickoff_all(template, inputs=[{"who": n} for n in names], limiter=limiter)
        again = asyncio.run(
            akickoff_all(template, inputs=[{"who": n} for n in names], limiter=limiter)
        )

    for outputs in (results, again):
        descriptions = [r.tasks_output[0].description for r in outputs]
        assert descriptions == [f"Say hello to {n}, part 0." for n in names]
    assert is_throttled(template.agents[0].llm), "the template's LLM was throttled in place"
    assert provider.count() == limiter.stats()["acquired"] == 16


class Gauge:
    """Crews between their before- and after-kickoff callbacks (CrewAI wants those callbacks
    to be module-level functions)."""

    lock = threading.Lock()
    now = most = 0


def enter_kickoff(inputs: Any) -> Any:
    with Gauge.lock:
        Gauge.now += 1
        Gauge.most = max(Gauge.most, Gauge.now)
    return inputs


def leave_kickoff(output: Any) -> Any:
    with Gauge.lock:
        Gauge.now -= 1
    return output


@pytest.mark.parametrize("use_asyncio", [False, True], ids=["threads", "asyncio"])
def test_max_workers_bounds_the_crews_in_flight(use_asyncio: bool) -> None:
    Gauge.now = Gauge.most = 0
    with FakeProvider(window=WINDOW, latency=0.1) as provider:
        limiter = ct.Limiter(max_concurrent=8, rpm=600, window=WINDOW)
        crews = [
            make_crew(
                make_llm(provider),
                f"#{i}",
                before_kickoff_callbacks=[enter_kickoff],
                after_kickoff_callbacks=[leave_kickoff],
            )
            for i in range(6)
        ]
        if use_asyncio:
            results = asyncio.run(akickoff_all(crews, limiter=limiter, max_workers=2))
        else:
            results = kickoff_all(crews, limiter=limiter, max_workers=2)

    assert len(results) == 6 and Gauge.most == 2 and Gauge.now == 0


@pytest.mark.parametrize("use_asyncio", [False, True], ids=["threads", "asyncio"])
def test_a_failing_crew_is_raised_or_returned_in_its_place(use_asyncio: bool) -> None:
    def run(crews: list[Crew], **options: Any) -> list[Any]:
        if use_asyncio:
            return asyncio.run(akickoff_all(crews, **options))
        return kickoff_all(crews, **options)

    with FakeProvider(window=WINDOW) as provider:
        limiter = ct.Limiter(max_concurrent=2, rpm=600, window=WINDOW)

        def crews() -> list[Crew]:
            dead = make_llm("http://127.0.0.1:1/v1")  # connection refused, not a rate limit
            agents = [make_llm(provider), dead, make_llm(provider)]
            return [make_crew(llm, f"#{i}") for i, llm in enumerate(agents)]

        with pytest.raises(Exception, match="Connection error") as raised:
            run(crews(), limiter=limiter)
        outcomes = run(crews(), limiter=limiter, return_exceptions=True)

    assert any("crew #1 of 3 failed" in note for note in getattr(raised.value, "__notes__", []))
    assert isinstance(outcomes[1], Exception)
    assert "fake answer" in outcomes[0].raw and "fake answer" in outcomes[2].raw


def test_arguments_that_cannot_run_are_refused() -> None:
    crew = make_crew(make_llm("http://127.0.0.1:9/v1"), "{who}")
    with pytest.raises(TypeError, match="list of inputs"):
        kickoff_all(crew)
    with pytest.raises(ValueError, match="same Crew object"):
        kickoff_all([crew, crew])
    with pytest.raises(ValueError, match="2 crews but 1 inputs"):
        kickoff_all([crew, crew.copy()], inputs=[{"who": "x"}])
    with pytest.raises(TypeError, match="crewai Crew"):
        kickoff_all(["not a crew"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="max_workers"):
        kickoff_all([crew], max_workers=0)


def test_progress_draws_a_bar_or_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeProvider(window=WINDOW) as provider:
        crews = [make_crew(make_llm(provider), f"#{i}") for i in range(3)]
        results = kickoff_all(crews, limiter=ct.Limiter(rpm=600), progress=True)
    assert len(results) == 3
    assert "crews" in capsys.readouterr().out

    monkeypatch.setitem(sys.modules, "rich", None)
    with pytest.raises(ImportError, match=r"crewthrottle\[progress\]"):
        kickoff_all(crews, progress=True)


# -- crew-level LLMs -----------------------------------------------------------------------------


def test_kickoff_all_throttles_the_crew_level_llms() -> None:
    """The manager of a hierarchical crew, the function-calling, planning and chat LLMs: all
    replaced by throttled ones, and the manager's calls take permits like any agent's."""
    with FakeProvider(window=WINDOW) as provider:
        limiter = ct.Limiter(rpm=600, max_concurrent=4, window=WINDOW)

        def llm(name: str, **options: Any) -> BaseLLM:
            return make_llm(provider, model=name, **options)

        worker = Agent(
            role="Writer",
            goal="Write one line",
            backstory="Terse.",
            llm=llm("agent"),
            function_calling_llm=llm("agent-tools"),
        )
        crew = Crew(
            agents=[worker],
            tasks=[Task(description="Say hello.", expected_output="A line.")],
            process=Process.hierarchical,
            manager_llm=llm("manager"),
            function_calling_llm=llm("crew-tools", is_litellm=True),  # Crew wants an LLM
            planning_llm=llm("planner"),
            chat_llm=llm("chat"),
        )
        [result] = kickoff_all([crew], limiter=limiter)

    throttled = {
        name: is_throttled(vars(owner)[name])
        for owner, name in (
            (crew, "manager_llm"),
            (crew, "function_calling_llm"),
            (crew, "planning_llm"),
            (crew, "chat_llm"),
            (worker, "llm"),
            (worker, "function_calling_llm"),
        )
    }
    assert all(throttled.values()), throttled
    assert "fake answer" in result.raw
    assert requests_by_model(provider)["manager"] >= 1, requests_by_model(provider)
    assert provider.count() == limiter.stats()["acquired"]


def test_akickoff_all_draws_its_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeProvider(window=WINDOW) as provider:
        crews = [make_crew(make_llm(provider), f"#{i}") for i in range(3)]
        limiter = ct.Limiter(rpm=600, window=WINDOW)
        results = asyncio.run(akickoff_all(crews, limiter=limiter, progress=True))
    assert len(results) == 3
    out = capsys.readouterr().out
    assert "crews" in out and "3/3" in out and "0 failed" in out
