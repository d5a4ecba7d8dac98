"""Worker processes for the multi-process shared-budget tests (issue 7).

Each worker is a fresh interpreter (multiprocessing's "spawn": no state inherited from pytest)
that builds its own `Limiter` on the test's redis-server and talks to the test over a pipe.
What the workers record is what the tests check: Redis's clock (``Permit.server_time``, the
instant the budget script granted) and ``time.monotonic()``, which every process of one host
shares (CLOCK_MONOTONIC), for spans and for the order things were asked in.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import multiprocessing
import os
import random
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import crewthrottle as ct

CTX = multiprocessing.get_context("spawn")

#: How long the test waits for a worker's word about something that should come at once.
PATIENCE = 30.0


class Grant(NamedTuple):
    """One permit, as a worker saw it."""

    pid: int
    asked: float  # monotonic, just before acquire
    stamp: float  # Permit.server_time: when Redis granted it, on Redis's clock
    start: float  # monotonic, acquire returned
    end: float  # monotonic, just before the release
    tokens: int  # settled to (the "actual usage")


class WorkerError(AssertionError):
    """A worker raised; the message carries its traceback."""


# -- the test's side ---------------------------------------------------------------------------


class Worker:
    """A spawned worker running ``target(link, **options)``."""

    def __init__(self, target: Callable[..., None], **options: Any) -> None:
        self.conn, theirs = CTX.Pipe()
        self.process = CTX.Process(target=_main, args=(theirs, target, options), daemon=True)
        self.process.start()
        theirs.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def send(self, *message: Any) -> None:
        self.conn.send(message)

    def recv(self, timeout: float = PATIENCE) -> tuple[Any, ...]:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"worker {self.pid} said nothing within {timeout} s")
        try:
            message: tuple[Any, ...] = self.conn.recv()
        except EOFError:
            self.process.join(5)
            raise WorkerError(f"worker {self.pid} ended ({self.process.exitcode})") from None
        if message[0] == "error":
            raise WorkerError(f"worker {self.pid} failed:\n{message[1]}")
        return message

    def expect(self, word: str, timeout: float = PATIENCE) -> tuple[Any, ...]:
        """The next message, which must start with `word`; its other items."""
        message = self.recv(timeout)
        assert message[0] == word, f"worker {self.pid}: expected {word!r}, got {message!r}"
        return message[1:]

    def close(self, timeout: float = 10.0) -> int | None:
        """Waits for the worker to end (kills it past `timeout`); its exit code."""
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()
        return self.process.exitcode


# -- the worker's side -------------------------------------------------------------------------


class Link:
    """The worker's end of the pipe, safe to send on from any thread."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def send(self, *message: Any) -> None:
        with self.lock:
            self.conn.send(message)

    def recv(self) -> tuple[Any, ...]:
        message: tuple[Any, ...] = self.conn.recv()
        return message


def _main(conn: Connection, target: Callable[..., None], options: dict[str, Any]) -> None:
    link = Link(conn)
    try:
        target(link, **options)
    except BaseException:
        link.send("error", traceback.format_exc())
    finally:
        conn.close()


def shared(url: str, name: str, limits: dict[str, Any], **backend: Any) -> ct.Limiter:
    """This process's `Limiter` on the shared budget `name`."""
    return ct.Limiter(name=name, backend=ct.RedisBackend(url, **backend), **limits)


class Warnings(logging.Handler):
    """Keeps what the ``crewthrottle`` logger says (a refused late release, a lost lease)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        logging.getLogger("crewthrottle").addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


# -- load: threads and tasks asking as fast as they are served ----------------------------------


class Load:
    """The loop of one load worker, run by `threads` threads and `tasks` asyncio tasks.

    With ``resilient``, an acquire that meets Redis out of reach (BackendUnavailable) or that
    times out (``timeout``) is counted and asked again, as a service would; else it fails
    the worker."""

    def __init__(self, limiter: ct.Limiter, options: dict[str, Any]) -> None:
        self.limiter = limiter
        self.estimate: int = options["estimate"]
        self.hold: tuple[float, float] = options["hold"]
        self.timeout: float = options.get("timeout", PATIENCE)
        self.resilient: bool = options.get("resilient", False)
        self.grants: list[Grant] = []
        self.missed: Counter[str] = Counter()
        self.errors: list[str] = []
        self.end = 0.0

    def missed_one(self, exc: Exception) -> None:
        if not self.resilient:
            raise exc
        self.missed[type(exc).__name__] += 1

    def usage(self, rng: random.Random) -> tuple[float, int]:
        """How long the "request" takes, and the tokens it really used (fewer than reserved)."""
        return rng.uniform(*self.hold), rng.randint(self.estimate // 2, self.estimate)

    def record(self, asked: float, permit: Any, start: float, actual: int) -> None:
        self.grants.append(
            Grant(os.getpid(), asked, permit.server_time, start, time.monotonic(), actual)
        )

    def thread(self, seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < self.end:
            asked = time.monotonic()
            try:
                permit = self.limiter.acquire(tokens=self.estimate, timeout=self.timeout)
            except (ct.BackendUnavailable, ct.AcquireTimeout) as exc:
                self.missed_one(exc)
                time.sleep(0.05)  # the worker's own pause before asking again
                continue
            with permit:
                start = time.monotonic()
                hold, actual = self.usage(rng)
                time.sleep(hold)
                permit.settle(actual)
                self.record(asked, permit, start, actual)

    async def task(self, seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < self.end:
            asked = time.monotonic()
            try:
                permit = await self.limiter.acquire_async(
                    tokens=self.estimate, timeout=self.timeout
                )
            except (ct.BackendUnavailable, ct.AcquireTimeout) as exc:
                self.missed_one(exc)
                await asyncio.sleep(0.05)
                continue
            async with permit:
                start = time.monotonic()
                hold, actual = self.usage(rng)
                await asyncio.sleep(hold)
                permit.settle(actual)
                self.record(asked, permit, start, actual)

    def guarded(self, run: Callable[[], Any]) -> Callable[[], None]:
        def go() -> None:
            try:
                run()
            except BaseException:
                self.errors.append(traceback.format_exc())

        return go


def load(
    link: Link,
    *,
    url: str,
    name: str,
    limits: dict[str, Any],
    backend: dict[str, Any],
    **options: Any,
) -> None:
    """Threads and asyncio tasks that each take a permit, hold it a while, settle it and
    release it, again and again until the test's deadline; reports every grant."""
    limiter = shared(url, name, limits, **backend)
    limiter.stats()  # connected and subscribed before the start
    work = Load(limiter, options)
    link.send("ready")
    (_, work.end) = link.recv()
    seed = os.getpid() * 100

    async def tasks() -> None:
        await asyncio.gather(*(work.task(seed + 50 + i) for i in range(options["tasks"])))

    runners = [work.guarded(lambda i=i: work.thread(seed + i)) for i in range(options["threads"])]
    runners.append(work.guarded(lambda: asyncio.run(tasks())))
    threads = [threading.Thread(target=run) for run in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    link.send("done", work.grants, dict(work.missed), work.errors)


# -- waiter: acquires on command, from a thread or an asyncio task -------------------------------


class Waiter:
    """Permits taken on the test's command, each by a thread or a task of one event loop."""

    def __init__(self, link: Link, limiter: ct.Limiter) -> None:
        self.link, self.limiter = link, limiter
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.held: dict[str, Any] = {}

    def granted(self, label: str, permit: Any, hold: float | None) -> None:
        now = time.monotonic()
        self.link.send("granted", label, permit.server_time, now)
        if hold is None:
            self.held[label] = permit
            return
        time.sleep(hold)  # the "request"; then the next waiter's turn
        permit.release()

    def by_thread(self, label: str, tokens: int, hold: float | None) -> None:
        def run() -> None:
            try:
                self.granted(label, self.limiter.acquire(tokens=tokens, timeout=PATIENCE), hold)
            except BaseException:
                self.link.send("error", traceback.format_exc())

        threading.Thread(target=run, daemon=True).start()

    def by_task(self, label: str, tokens: int, hold: float | None) -> None:
        async def run() -> None:
            try:
                permit = await self.limiter.acquire_async(tokens=tokens, timeout=PATIENCE)
                await asyncio.to_thread(self.granted, label, permit, hold)
            except BaseException:
                self.link.send("error", traceback.format_exc())

        asyncio.run_coroutine_threadsafe(run(), self.loop)


def waiter(
    link: Link, *, url: str, name: str, limits: dict[str, Any], backend: dict[str, Any]
) -> None:
    """Obeys the test: ``("acquire", label, "thread"|"task", tokens, hold or None)``,
    ``("release", label)``, ``("settle", label, tokens)``, ``("stats",)``, ``("said",)``,
    ``("exit",)``.
    Says ``("granted", label, server_time, monotonic)`` when a permit comes."""
    caught = Warnings()
    limiter = shared(url, name, limits, **backend)
    limiter.stats()
    me = Waiter(link, limiter)
    link.send("ready")
    while True:
        command, *args = link.recv()
        if command == "acquire":
            label, how, tokens, hold = args
            (me.by_thread if how == "thread" else me.by_task)(label, tokens, hold)
        elif command == "release":
            me.held.pop(args[0]).release()
        elif command == "settle":
            me.held[args[0]].settle(args[1])
        elif command == "stats":
            # One round trip after the commands above: fired in order from this thread.
            link.send("stats", dict(limiter.stats()), list(caught.messages))
        elif command == "said":
            # What the limiter has logged so far: warnings about replies (a refused release)
            # are logged when the reply comes back, after the caller moved on.
            link.send("said", list(caught.messages))
        elif command == "exit":
            return


# -- fork --------------------------------------------------------------------------------------


def forking(link: Link, *, url: str, name: str, lease: float) -> None:
    """Takes a permit, forks, and reports what the child and then the parent saw."""
    warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
    limiter = shared(url, name, {"max_concurrent": 2}, lease=lease)
    held = limiter.acquire(timeout=PATIENCE)
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(reader)
        with os.fdopen(writer, "w") as out:
            json.dump(_in_the_child(limiter, held), out)
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as inp:
        child = json.load(inp)
    _, status = os.waitpid(pid, 0)
    parent = {"child_exit": os.waitstatus_to_exitcode(status)}
    parent["after_child"] = limiter.stats()["in_flight"]  # the parent's permit only
    time.sleep(2 * lease)  # two leases: only renewals keep the parent's permit
    parent["after_leases"] = limiter.stats()["in_flight"]
    second = limiter.acquire(timeout=PATIENCE)
    parent["both"] = limiter.stats()["in_flight"]
    held.release()
    second.release()
    parent["none"] = limiter.stats()["in_flight"]
    link.send("done", child, parent)


def _in_the_child(limiter: ct.Limiter, held: Any) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    try:
        permit = limiter.acquire(timeout=PATIENCE)
        seen["server_time"] = permit.server_time
        seen["both"] = limiter.stats()["in_flight"]  # the parent's and the child's
        seen["full"] = limiter.try_acquire() is None
        held.release()  # the parent's permit: not the child's to release
        del held
        gc.collect()
        seen["after_parents"] = limiter.stats()["in_flight"]
        permit.release()
        seen["after_own"] = limiter.stats()["in_flight"]
    except BaseException:
        seen["error"] = traceback.format_exc()
    return seen


# -- CrewAI ------------------------------------------------------------------------------------


def crews(link: Link, *, count: int, limits: dict[str, Any], url: str, name: str) -> None:
    """Builds `count` one-agent crews and a limiter on ``("build", base_url,
    "shared"|"local")``, kicks them off with ``kickoff_all`` on ``("go", start)`` at monotonic
    `start` (every worker together), and reports the outcome; again for each build."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CrewAI's own warnings at import time
        from crewthrottle._demo import build_crews, quiet_crewai

        quiet_crewai()
        import crewai  # noqa: F401  (imported before the start, not during the run)
    from crewthrottle.crewai import kickoff_all

    link.send("ready")
    while True:
        command, *args = link.recv()
        if command == "exit":
            os._exit(0)  # without CrewAI's exit handlers, which take seconds
        base_url, mode = args
        backend = ct.RedisBackend(url) if mode == "shared" else None
        limiter = ct.Limiter(name=name, backend=backend, **limits)
        team = build_crews(count, base_url)
        link.send("built")
        (_, start) = link.recv()
        time.sleep(max(0.0, start - time.monotonic()))  # every worker starts together
        results = kickoff_all(team, limiter=limiter, return_exceptions=True)
        failed = [repr(r) for r in results if isinstance(r, BaseException)]
        link.send("done", len(results) - len(failed), failed)
