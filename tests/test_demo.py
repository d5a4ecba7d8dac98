"""The demo runs end to end (real CrewAI against the fake provider) with small numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("crewai", reason="the demo runs real CrewAI: pip install crewthrottle[crewai]")

from crewthrottle._demo import main

pytestmark = [
    # CrewAI warns about its own deprecated fields while it runs (function_calling_llm...).
    pytest.mark.filterwarnings("ignore::DeprecationWarning:crewai"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pydantic"),
    # CrewAI never closes its SDK clients; their sockets are collected unclosed.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]


def test_demo_runs_all_three_modes_and_writes_a_chart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chart = tmp_path / "demo.svg"
    argv = ["--crews", "6", "--rpm", "3", "--window", "1.5", "--max-concurrent", "2"]
    argv += ["--latency", "0.05", "--time-limit", "8", "--chart", str(chart), "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:1].isalpha()}
    for mode in ("unthrottled", "seed-fix", "crewthrottle"):
        assert mode in rows, out
    ours = rows["crewthrottle"]
    # mode, crews ok, failed, unfinished, HTTP requests, 429s, wall, rpm used
    assert ours[1:6] == ["6/6", "0", "0", "6", "0"], out
    svg = chart.read_text(encoding="utf-8")
    assert svg.startswith("<svg") and svg.count("<text") > 5
    assert re.search(r"crewthrottle: .*6/6 crews ok, 0 x 429", svg)


def test_demo_refuses_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--rpm", "0"])
    assert "--rpm must be >= 1" in capsys.readouterr().err
