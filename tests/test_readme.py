"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


pytestmark = [
    # CrewAI warns about its own deprecated fields while it runs (function_calling_llm...).
    pytest.mark.filterwarnings("ignore::DeprecationWarning:crewai"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pydantic"),
    # CrewAI never closes its SDK clients; their sockets are collected unclosed.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.usefixtures("collect_sdk_clients"),
    # CrewAI's own import-time ImportWarnings (crewai.rag's lazy submodules).
    pytest.mark.filterwarnings("ignore::ImportWarning"),
]


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each block runs in a fresh namespace; its own asserts check what it claims. Examples
    that share a budget on Redis read the test server's URL from ``REDIS_URL``."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    code = compile(BLOCKS[index], f"README.md[python block {index}]", "exec")
    exec(code, {"__name__": f"readme_example_{index}"})
