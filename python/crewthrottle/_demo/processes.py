"""``demo --processes N``: the crews split over N worker processes, each process with a
``Limiter`` holding the provider's limits — in memory (each process its own budget: N times
the limit is sent) or on Redis (one budget shared by all of them).

The workers are spawned interpreters that import CrewAI once and serve both modes; a mode
that overruns its time leaves its workers behind (they are killed and new ones serve the next
mode).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

MODES = ("per-process", "shared-redis")
MODE_TITLES = {
    "per-process": "one in-memory Limiter per process, each with the provider's limits",
    "shared-redis": "one Limiter budget shared by every process on Redis",
}

_CTX = multiprocessing.get_context("spawn")


def split(crews: int, processes: int) -> list[int]:
    """How many crews each process runs (as even as can be)."""
    return [crews // processes + (i < crews % processes) for i in range(processes)]


class Workers:
    """N spawned processes that build and kick off crews on command."""

    def __init__(self, counts: list[int], limits: dict[str, Any], redis_url: str | None) -> None:
        self.pipes: list[Connection] = []
        self.processes = []
        self.overran = False  # a mode ran out of time with crews still running here
        name = f"demo/{os.getpid()}/{time.time_ns()}"  # a fresh budget for each run
        for count in counts:
            mine, theirs = _CTX.Pipe()
            process = _CTX.Process(
                target=_serve, args=(theirs, count, limits, redis_url, name), daemon=True
            )
            process.start()
            theirs.close()
            self.pipes.append(mine)
            self.processes.append(process)
        self.expect("ready", None)

    def expect(self, word: str, deadline: float | None) -> list[Any]:
        """Each worker's next message (which must be `word`); None for one past `deadline`."""
        answers: list[Any] = []
        for pipe in self.pipes:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not pipe.poll(wait):
                answers.append(None)
                continue
            message = pipe.recv()
            if message[0] == "error":
                raise RuntimeError(f"a demo worker failed:\n{message[1]}")
            answers.append(message[1] if len(message) > 1 else None)
        return answers

    def run(self, mode: str, base_url: str) -> Callable[[Callable[[bool], None], float], None]:
        """Has every worker build its crews for `base_url`; what kicks them off in `mode`."""
        for pipe in self.pipes:
            pipe.send(("build", base_url, mode))
        self.expect("built", None)

        def go(done: Callable[[bool], None], deadline: float) -> None:
            for pipe in self.pipes:
                pipe.send(("go",))
            for outcome in self.expect("done", deadline):
                self.overran = self.overran or outcome is None
                for ok in outcome or []:
                    done(ok)

        return go

    def close(self) -> None:
        for pipe, process in zip(self.pipes, self.processes, strict=True):
            with contextlib.suppress(OSError):
                pipe.send(("exit",))
            process.join(2)
            if process.is_alive():
                process.kill()
                process.join(5)
            pipe.close()


def _serve(
    conn: Connection, count: int, limits: dict[str, Any], redis_url: str | None, name: str
) -> None:
    import traceback

    try:
        _serve_commands(conn, count, limits, redis_url, name)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    os._exit(0)  # without CrewAI's exit handlers, which take seconds


def _serve_commands(
    conn: Connection, count: int, limits: dict[str, Any], redis_url: str | None, name: str
) -> None:
    import contextlib
    import io

    import crewthrottle as ct
    from crewthrottle._demo import build_crews, quiet_crewai

    quiet_crewai()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from crewthrottle.crewai import kickoff_all
    conn.send(("ready",))
    crews: list[Any] = []
    limiter: ct.Limiter | None = None
    while True:
        command, *args = conn.recv()
        if command == "exit":
            return
        if command == "build":
            base_url, mode = args
            crews = build_crews(count, base_url)
            backend = ct.RedisBackend(redis_url) if mode == "shared-redis" and redis_url else None
            limiter = ct.Limiter(name=name, backend=backend, **limits)
            conn.send(("built",))
        elif command == "go":
            chatter = io.StringIO()
            with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
                results = kickoff_all(
                    crews, limiter=limiter, max_workers=max(1, count), return_exceptions=True
                )
            conn.send(("done", [not isinstance(r, BaseException) for r in results]))


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[str | None]:
    """`url`, or a local ``redis-server`` started for the demo (None if there is none)."""
    if url is not None:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="crewthrottle-demo-redis-")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory]
    server = subprocess.Popen(
        [*command, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_pong(port, server)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def _wait_for_pong(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and server.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return
        time.sleep(0.05)
    raise RuntimeError(f"the local redis-server did not start on port {port}")
