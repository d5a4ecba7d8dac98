"""pytest plugin: the ``fake_llm_provider`` fixture, a started :class:`FakeProvider`.

Installing crewthrottle registers this plugin (entry point ``pytest11``); without the entry
point, load it with ``-p crewthrottle.testing.pytest_plugin`` or, in a root ``conftest.py``,
``pytest_plugins = ["crewthrottle.testing.pytest_plugin"]``.

The fixture is function-scoped: each test gets a fresh provider, stopped after the test. Its
options are :class:`FakeProvider`'s keyword arguments, given by the
``fake_llm_provider`` marker (the closest one wins: function, then class, then module)::

    @pytest.mark.fake_llm_provider(rpm=5, tpm=2_000, window=1.0)
    def test_my_crew_survives_429s(fake_llm_provider):
        llm = LLM(model="openai/gpt-4o-mini", base_url=fake_llm_provider.base_url, api_key="x")
        ...
        assert fake_llm_provider.max_requests_in_any_window() <= 5

or, to run one test under several settings, by indirect parametrization with a dict (its
keys override the marker's)::

    @pytest.mark.parametrize("fake_llm_provider", [{"rpm": 5}, {"tpm": 500}], indirect=True)
    def test_limits(fake_llm_provider): ...

Without either, the provider enforces no limit.

The ``shared_limiter`` fixture gives every worker of a pytest-xdist run (``pytest -n 4``) one
budget on Redis, so that parallel tests calling a rate-limited provider stay under its
limits together::

    def test_summary(shared_limiter):
        limiter = shared_limiter("openai/gpt-4o-mini", rpm=500, tpm=200_000)
        with limiter.acquire(tokens=1_000) as permit:
            ...

The Redis server is named by the ``CREWTHROTTLE_REDIS_URL`` environment variable or, if it is
unset, the ``crewthrottle_redis_url`` ini option. Without either, a run that is not split over
workers gets an in-memory limiter (one process, one budget), and an xdist worker fails its test
saying what to set: each worker would otherwise send the whole limit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from crewthrottle import Limiter

    from ._provider import FakeProvider

MARKER = "fake_llm_provider"
URL_INI = "crewthrottle_redis_url"
URL_ENV = "CREWTHROTTLE_REDIS_URL"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``crewthrottle_redis_url`` ini option (of ``shared_limiter``)."""
    parser.addini(
        URL_INI,
        f"Redis URL of the budgets that shared_limiter shares between parallel test workers "
        f"(the {URL_ENV} environment variable wins over it)",
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``fake_llm_provider`` marker (so ``--strict-markers`` accepts it)."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**options): options of the {MARKER} fixture, the keyword arguments of "
        "crewthrottle.testing.FakeProvider (rpm, tpm, max_concurrent, window, latency, ...)",
    )


def provider_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The fixture's options: the closest marker's keywords, updated by an indirect param."""
    options: dict[str, Any] = {}
    marker = request.node.get_closest_marker(MARKER)
    if marker is not None:
        if marker.args:
            raise TypeError(f"@pytest.mark.{MARKER} takes keyword arguments only")
        options.update(marker.kwargs)
    param = getattr(request, "param", None)
    if param is not None:
        if not isinstance(param, dict):
            raise TypeError(f"indirect parameters of {MARKER} must be dicts, got {param!r}")
        options.update(param)
    return options


@pytest.fixture
def fake_llm_provider(request: pytest.FixtureRequest) -> Iterator[FakeProvider]:
    """A started :class:`~crewthrottle.testing.FakeProvider`, stopped after the test."""
    # Imported here so that pytest's start-up, which loads this plugin for every suite of
    # every project that installs crewthrottle, does not pay for the server modules.
    from ._provider import FakeProvider

    with FakeProvider(**provider_options(request)) as provider:
        yield provider


SharedLimiter = Callable[..., "Limiter"]


def shared_limiter_factory(url: str | None, worker: str | None) -> SharedLimiter:
    """``shared_limiter``'s factory for a Redis `url` (or None) in xdist `worker` (or None).

    Calling it in an xdist worker with no Redis URL fails the test, saying what to set.
    """
    from crewthrottle import Limiter, RedisBackend

    made: dict[tuple[str, tuple[tuple[str, Any], ...]], Limiter] = {}

    def shared_limiter(name: str, **limits: Any) -> Limiter:
        key = (name, tuple(sorted(limits.items())))
        if key not in made:
            if url is None and worker is not None:
                pytest.fail(
                    f"shared_limiter({name!r}) in pytest-xdist worker {worker}: set {URL_ENV} "
                    f"or the {URL_INI} ini option to a Redis server, so that the workers share "
                    "one budget (each would otherwise send the whole limit)",
                    pytrace=False,
                )
            backend = None if url is None else RedisBackend(url)
            made[key] = Limiter(name=name, backend=backend, **limits)
        return made[key]

    return shared_limiter


@pytest.fixture(scope="session")
def shared_limiter(request: pytest.FixtureRequest) -> SharedLimiter:
    """``shared_limiter(name, **limits)``: the :class:`~crewthrottle.Limiter` of the budget
    `name` (its keyword arguments are ``Limiter``'s), on the Redis server of
    ``CREWTHROTTLE_REDIS_URL`` or of the ``crewthrottle_redis_url`` ini option, and so shared
    by every pytest-xdist worker (and every other process) that names it. One limiter per
    name and limits in each worker. Without a URL, an in-memory limiter outside xdist."""
    url = os.environ.get(URL_ENV) or str(request.config.getini(URL_INI)) or None
    return shared_limiter_factory(url, os.environ.get("PYTEST_XDIST_WORKER"))
