"""Shared helpers for the primitive tests: waiting for a recorded state, and calling promptly."""

from __future__ import annotations

import gc
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

# Before any test imports CrewAI: no telemetry, no tracing, no fetch of LiteLLM's price list
# (this machine reaches no network but the package registries).
for _name, _value in (
    ("CREWAI_DISABLE_TELEMETRY", "true"),
    ("CREWAI_TRACING_ENABLED", "false"),
    ("OTEL_SDK_DISABLED", "true"),
    ("LITELLM_LOCAL_MODEL_COST_MAP", "True"),
    # CrewAI keeps each kickoff's task outputs in a SQLite file named after this directory,
    # shared by every CrewAI version run here; an older CrewAI reading a newer one's table
    # fails on every kickoff (JSONDecodeError in _store_execution_log). A fresh directory per
    # run (an absolute path: appdirs joins it as it is).
    ("CREWAI_STORAGE_DIR", tempfile.mkdtemp(prefix="crewthrottle-crewai-")),
):
    os.environ.setdefault(_name, _value)

#: How long a helper waits for something that should happen at once before calling it a hang.
PATIENCE = 10.0


def _wait_until(predicate: Callable[[], bool], what: str, timeout: float = PATIENCE) -> None:
    """Poll `predicate` until it holds; fail naming `what` if it has not within `timeout`.

    For states the test itself produces (a waiter registered, a grant recorded): polling
    with a deadline observes them, it does not paper over a race.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.002)


def _promptly(call: Callable[[], Any], timeout: float = PATIENCE) -> Any:
    """`call()` in a daemon thread: its result, or the exception it raised, re-raised here.

    Fails the test (instead of hanging it) if the call has not returned within `timeout`.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        pytest.fail(f"the call did not return within {timeout} s (a hang)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.fixture
def collect_sdk_clients() -> Iterator[None]:
    """CrewAI and LangChain never close the SDK clients they build: collect them after each
    test of theirs, where their ResourceWarnings are ignored, not in whichever test runs next."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture
def wait_until() -> Callable[..., None]:
    """`wait_until(predicate, what)`: poll with a deadline, fail naming `what`."""
    return _wait_until


@pytest.fixture
def promptly() -> Callable[..., Any]:
    """`promptly(call)`: run `call` but fail rather than hang if it blocks."""
    return _promptly


@pytest.fixture(scope="session")
def redis_url() -> Any:
    """A real `redis-server` for the shared-budget tests: the one `scripts/test.sh` started,
    or one of this session's own."""
    from tests._redis import RedisServer, session_url

    url = session_url()
    if url is not None:
        yield url
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def budget_name(request: pytest.FixtureRequest) -> str:
    """A budget name no other test uses (tests share the session's server)."""
    return f"test/{request.node.nodeid}/{os.getpid()}/{time.monotonic_ns()}"
