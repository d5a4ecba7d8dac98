"""What the test files that run real CrewAI share."""

from __future__ import annotations

import pytest

#: Their module marks.
MARKS = [
    # CrewAI warns about its own deprecated fields while it runs (function_calling_llm...).
    pytest.mark.filterwarnings("ignore::DeprecationWarning:crewai"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pydantic"),
    # CrewAI never closes its SDK clients; their sockets are collected unclosed.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.usefixtures("collect_sdk_clients"),
]
