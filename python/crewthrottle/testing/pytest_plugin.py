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
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._provider import FakeProvider

MARKER = "fake_llm_provider"


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
