"""The Redis server the shared-budget benchmarks run against, and what it tells us.

By default a private ``redis-server`` (no persistence, a temporary directory, a free port on
127.0.0.1), pinned to its own CPU when pinning is on; or the server at ``--redis URL``, which
the benchmark only reads statistics from and writes keys of its own to (never FLUSH, never
CONFIG RESETSTAT). Figures are deltas of ``INFO``; ``Monitor`` counts the commands clients
send apart from those the scripts they call run (MONITOR tags those ``lua``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import redis

SERVER_CPU = 1  # the CPU a private server is pinned to (clients go to CPU 0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server(url: str | None, pin: bool) -> Iterator[tuple[str, str]]:
    """Yields (url, description): the given server, or a private one stopped at the end."""
    if url is not None:
        yield url, f"the server at {url} (given with --redis; not pinned by us)"
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port, workdir = _free_port(), tempfile.mkdtemp(prefix="crewthrottle-bench-redis-")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir]
    command += ["--save", "", "--appendonly", "no"]
    pinned = pin and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1
    if pinned:
        command = ["taskset", "-c", str(SERVER_CPU), *command]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_for(url)
        version = redis.Redis.from_url(url).info("server")["redis_version"]
        where = f"pinned to CPU {SERVER_CPU} (taskset)" if pinned else "not pinned"
        yield url, f"a private redis-server {version} on 127.0.0.1:{port}, {where}"
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_for(url: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@dataclass(frozen=True)
class ServerFigures:
    """What the server did over an interval."""

    seconds: float
    cpu_seconds: float  # user + system
    commands: int  # every command, top-level and in-script alike (our INFO left out)
    calls: dict[str, int]  # INFO commandstats calls, by command
    usec: dict[str, int]  # INFO commandstats time, by command

    @property
    def cpu_pct(self) -> float:
        return 100.0 * self.cpu_seconds / self.seconds if self.seconds else float("nan")

    def script_usec(self) -> int:
        """Server time spent in script calls (their inner commands included)."""
        return sum(v for k, v in self.usec.items() if k in SCRIPT_CALLS)


SCRIPT_CALLS = {"evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro"}


class Server:
    """An admin connection to the server under test."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = redis.Redis.from_url(url)

    def _snapshot(self) -> tuple[float, float, dict[str, int], dict[str, int]]:
        cpu = self.client.info("cpu")
        commandstats = self.client.info("commandstats")
        calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in commandstats.items()}
        usec = {k.removeprefix("cmdstat_"): int(v["usec"]) for k, v in commandstats.items()}
        used = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        return time.perf_counter(), used, calls, usec

    @contextlib.contextmanager
    def measure(self) -> Iterator[list[ServerFigures]]:
        """Yields a list that holds the interval's figures once the block is done."""
        out: list[ServerFigures] = []
        t0, cpu0, calls0, usec0 = self._snapshot()
        yield out
        t1, cpu1, calls1, usec1 = self._snapshot()
        calls = {k: v - calls0.get(k, 0) for k, v in calls1.items() if v > calls0.get(k, 0)}
        calls.pop("info", None)  # our own snapshots
        usec = {k: v - usec0.get(k, 0) for k, v in usec1.items() if k in calls}
        out.append(ServerFigures(t1 - t0, cpu1 - cpu0, sum(calls.values()), calls, usec))


class Monitor:
    """Counts the commands clients send (``top``) and those their scripts run (``inner``)."""

    STOP = "crewthrottle-bench-monitor-stop"

    def __init__(self, url: str) -> None:
        self.url = url
        self.top: Counter[str] = Counter()
        self.inner: Counter[str] = Counter()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        redis.Redis.from_url(self.url).echo(self.STOP)
        self._thread.join(30)

    def _run(self) -> None:
        with redis.Redis.from_url(self.url).monitor() as monitor:
            self._ready.set()
            for event in monitor.listen():
                command = str(event["command"])
                name = command.split(" ", 1)[0].lower()
                if name == "echo" and self.STOP in command:
                    return
                if name == "info":
                    continue
                counter = self.inner if event.get("client_type") == "lua" else self.top
                counter[name] += 1
