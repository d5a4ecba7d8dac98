"""Real `redis-server` processes for the shared-budget tests (issue 7).

The tests never touch a Redis they did not start: a session server (the one `scripts/test.sh`
started, named by ``CREWTHROTTLE_TEST_REDIS_URL``, or one started here) and, for the tests
that kill and restart the server, servers of their own.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

__all__ = ["RedisServer", "free_port", "redis_cli", "require_redis_server"]


def require_redis_server() -> str:
    """The `redis-server` binary; fails (never skips) if it is missing, since CI needs it."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed: scripts/test.sh installs it (apt-get install "
            "redis-server); the shared-budget tests need a real server"
        )
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_cli(port: int, *args: str) -> str:
    """Runs one command against the server on `port` (with redis-cli, which ships with it)."""
    done = subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10
    )
    return done.stdout.strip()


def port_of(url: str) -> int:
    """The port of a ``redis://host:port/db`` URL."""
    return int(url.rsplit(":", 1)[1].split("/")[0])


class RedisServer:
    """A `redis-server` on 127.0.0.1 with no persistence, in a directory of its own."""

    def __init__(self, port: int | None = None) -> None:
        self.binary = require_redis_server()
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="crewthrottle-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.dir), "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while redis_cli(self.port, "ping") != "PONG":
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL: the server and everything it held in memory are gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        self.kill()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def session_url() -> str | None:
    """The session server's URL, when `scripts/test.sh` started one."""
    return os.environ.get("CREWTHROTTLE_TEST_REDIS_URL") or None
