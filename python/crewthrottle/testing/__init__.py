"""Test helpers: a fake OpenAI-compatible LLM provider that enforces rate limits.

Point any OpenAI-compatible client (the ``openai`` SDK, LiteLLM, CrewAI's ``LLM``, LangChain's
``ChatOpenAI``) at :attr:`FakeProvider.base_url` to see how an app behaves under RPM, TPM and
concurrency limits, ``Retry-After`` hints and exhausted quota, then assert on
:attr:`FakeProvider.log`::

    from crewthrottle.testing import FakeProvider

    with FakeProvider(rpm=20, tpm=10_000, window=2.0) as provider:
        client = openai.OpenAI(base_url=provider.base_url, api_key="fake", max_retries=0)
        run_my_app(client)
    assert provider.count(status=429) == 0
    assert provider.max_requests_in_any_window() <= 20

For pytest, the ``fake_llm_provider`` fixture lives in :mod:`crewthrottle.testing.pytest_plugin`.

This package uses only the standard library; it imports nothing from the rest of crewthrottle.
"""

from ._limits import Reason
from ._openai import format_duration
from ._provider import FakeProvider
from ._stats import RequestRecord

__all__ = ["FakeProvider", "Reason", "RequestRecord", "format_duration"]
