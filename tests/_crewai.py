"""What a test module that runs real CrewAI needs: CrewAI imported without its import-time
chatter, and the marks for what it does while it runs. (The environment that keeps it off the
network is set in conftest.py, before any test imports it.)"""

from __future__ import annotations

import warnings

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # CrewAI's own ImportWarnings at import time
    import crewai  # noqa: F401

MARKS = [
    # CrewAI warns about its own deprecated fields while it runs (function_calling_llm...).
    pytest.mark.filterwarnings("ignore::DeprecationWarning:crewai"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pydantic"),
    # CrewAI never closes its SDK clients; their sockets are collected unclosed.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.usefixtures("collect_sdk_clients"),
]
