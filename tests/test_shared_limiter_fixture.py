"""The ``shared_limiter`` pytest fixture (crewthrottle.testing.pytest_plugin): one budget on
Redis for every worker of a pytest-xdist run, checked by running ``pytest -n 4`` on a generated
suite against the test session's real `redis-server` (issue 7)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests._timeline import max_in_window

from crewthrottle.testing.pytest_plugin import shared_limiter_factory

#: Plugins of the test extra that cost each xdist worker seconds to start on 2 cores (the
#: crewthrottle plugin still comes by its entry point).
NO_SLOW_PLUGINS = [
    "-p",
    "no:cacheprovider",
    "-p",
    "no:langsmith_plugin",
    "-p",
    "no:hypothesispytest",
]

XDIST_SUITE = """
import os
import pytest

@pytest.mark.parametrize("i", range(8))
def test_call(shared_limiter, i):
    limiter = shared_limiter({name!r}, rpm={rpm}, window={window})
    worker = os.environ["PYTEST_XDIST_WORKER"]
    for _ in range(3):
        with limiter.acquire(timeout=30) as permit:
            with open(os.path.join({stamps!r}, worker), "a") as out:
                out.write(f"{{permit.server_time!r}}\\n")
"""


def test_pytest_xdist_workers_share_one_budget_through_the_fixture(
    redis_url: str, budget_name: str, tmp_path: Path
) -> None:
    """`pytest -n 4` on a generated suite whose 8 tests take 3 permits each from
    ``shared_limiter`` (the URL from the ini option), 6 per 0.5 s window. Invariant: the 24
    grants of all workers together, on Redis's clock, are never more than 6 in a window."""
    rpm, window = 6, 0.5
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    suite = XDIST_SUITE.format(name=budget_name, rpm=rpm, window=window, stamps=str(stamps))
    (tmp_path / "test_shared.py").write_text(suite, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text(f"[pytest]\ncrewthrottle_redis_url = {redis_url}\n")
    env = {k: v for k, v in os.environ.items() if k != "CREWTHROTTLE_REDIS_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "4", "-q", *NO_SLOW_PLUGINS],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    by_worker = {f.name: [float(x) for x in f.read_text().split()] for f in stamps.iterdir()}
    times = [t for worker in by_worker.values() for t in worker]
    print(
        f"xdist: {len(times)} grants from {len(by_worker)} workers, "
        f"{max(times) - min(times):.2f} s on Redis's clock"
    )
    assert len(times) == 24 and len(by_worker) >= 2
    assert max_in_window(times, window) <= rpm


def test_shared_limiter_refuses_to_give_xdist_workers_a_budget_each() -> None:
    """With no Redis URL, an xdist worker's test fails saying what to set; outside xdist the
    fixture gives one in-memory limiter per name and limits."""
    alone = shared_limiter_factory(None, None)
    assert alone("x", rpm=5) is alone("x", rpm=5) and alone("x", rpm=6) is not alone("x", rpm=5)
    assert alone("x", rpm=5).backend is None
    with pytest.raises(pytest.fail.Exception, match="CREWTHROTTLE_REDIS_URL"):
        shared_limiter_factory(None, "gw1")("x", rpm=5)
