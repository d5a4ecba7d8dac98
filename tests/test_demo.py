"""The demo runs end to end (real CrewAI against the fake provider) with small numbers."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("crewai", reason="the demo runs real CrewAI: pip install crewthrottle[crewai]")

from tests._crewai import MARKS

from crewthrottle._demo import main

pytestmark = MARKS


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
    # Who spent the budget, for the mode whose LLMs were throttled (the others' are not seen).
    assert "[crewthrottle] Who spent the budget: 6 LLM calls, 6 HTTP requests" in out, out
    assert "[unthrottled]" not in out and "[seed-fix]" not in out
    (spent,) = [re.split(r"\s{2,}", line) for line in out.splitlines() if line.startswith("gpt-")]
    assert spent[:7] == ["gpt-4o-mini", "Market analyst", "answer a question", "6", "6", "0", "0"]
    svg = chart.read_text(encoding="utf-8")
    assert svg.startswith("<svg") and svg.count("<text") > 5
    assert re.search(r"crewthrottle: .*6/6 crews ok, 0 x 429", svg)


def test_demo_refuses_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--rpm", "0"])
    assert "--rpm must be >= 1" in capsys.readouterr().err


class Terminal(io.StringIO):
    """A stdout that says it is a terminal, so the demo draws its live line."""

    def isatty(self) -> bool:
        return True


def test_demo_shows_live_progress_and_takes_modes_and_tpm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    argv = ["--crews", "4", "--rpm", "50", "--tpm", "150", "--window", "1", "--latency", "0.3"]
    argv += ["--modes", "crewthrottle", "--chart", str(tmp_path / "c.svg")]
    assert main(argv) == 0
    out = screen.getvalue()
    assert "150 tokens per 1 s window" in out
    # The live line is redrawn in place ("\r") while the crews run, then the table.
    lines = [part for part in out.split("\r") if "crews done" in part]
    assert len(lines) >= 2, out
    assert lines[-1].split()[:2] == ["crewthrottle", "4/4"]
    rows = [line.split() for line in out.splitlines() if line.startswith(("unthrottled", "seed"))]
    assert rows == [], "only the mode asked for ran"
    # 150 tokens per window bind (each call ~90): the crews took several windows.
    table = [line.split() for line in out.splitlines() if line.startswith("crewthrottle ")]
    assert table[-1][1:6] == ["4/4", "0", "0", "4", "0"], out
    assert float(table[-1][6]) >= 2.0


def test_python_dash_m_crewthrottle_runs_the_demo(tmp_path: Path) -> None:
    usage = subprocess.run(
        [sys.executable, "-m", "crewthrottle"], capture_output=True, text=True, timeout=60
    )
    assert usage.returncode == 2 and "usage: python -m crewthrottle {demo,status}" in usage.stderr
    argv = ["demo", "--crews", "2", "--rpm", "10", "--window", "1", "--latency", "0"]
    argv += ["--modes", "crewthrottle", "--quiet", "--chart", str(tmp_path / "c.svg")]
    run = subprocess.run(
        [sys.executable, "-m", "crewthrottle", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    row = next(line.split() for line in run.stdout.splitlines() if line.startswith("crewthrottle"))
    assert row[1:6] == ["2/2", "0", "0", "2", "0"], run.stdout
    assert (tmp_path / "c.svg").read_text(encoding="utf-8").startswith("<svg")


def test_demo_compares_a_limiter_per_process_with_one_budget_on_redis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    """4 crews over 2 processes, 3 requests per 3 s window: a limiter per process lets both
    processes send their 2 at once (4 > 3: 429s); the budget shared on Redis sends none."""
    argv = ["--processes", "2", "--crews", "4", "--rpm", "3", "--window", "3"]
    argv += ["--max-concurrent", "2", "--latency", "0.05", "--time-limit", "20"]
    argv += ["--redis", redis_url, "--chart", str(tmp_path / "p.svg"), "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "split over 2 processes" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:1].isalpha()}
    # mode, crews ok, failed, unfinished, HTTP requests, 429s, wall, rpm used
    assert rows["shared-redis"][1:6] == ["4/4", "0", "0", "4", "0"], out
    assert int(rows["per-process"][5]) > 0, out


def test_demo_says_when_it_has_no_redis(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("crewthrottle._demo.processes.shutil.which", lambda name: None)
    assert main(["--processes", "2", "--crews", "4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "needs a Redis server" in err and "--redis" in err and "redis-server" in err
    with pytest.raises(SystemExit):
        main(["--processes", "5", "--crews", "4"])
    assert "--processes must be between 1 and --crews" in capsys.readouterr().err


def test_demo_runs_the_learning_profiles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 8's profiles: tokens bind without max_tokens (a fixed 256-token reservation
    against the learned one), and a key shared with an unseen client (every mode named)."""
    argv = ["--profile", "shared", "--modes", "bogus"]
    with pytest.raises(SystemExit):
        main(argv)
    assert "choose from ('seed-fix', 'retries', 'crewthrottle', 'adaptive')" in (
        capsys.readouterr().err
    )
    argv = ["--profile", "tokens", "--crews", "3", "--window", "1.5", "--latency", "0.05"]
    argv += ["--modes", "fixed-256,crewthrottle", "--chart", str(tmp_path / "t.svg"), "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Profile tokens" in out and "the LLM sets no max_tokens" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:1].isalpha()}
    for mode in ("fixed-256", "crewthrottle"):
        # mode, crews ok, failed, HTTP requests, 429s, wall, x min, used
        assert rows[mode][1:5] == ["3/3", "0", "9", "0"], out
