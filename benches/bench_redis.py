"""Section "redis": one budget shared through Redis, ours beside limits and pyrate-limiter.

Everything runs against one Redis server in one run (a private ``redis-server`` the section
starts, or ``--redis URL``), so every figure has a baseline measured beside it: a bare round
trip (``PING``) for latency and throughput, the server's own counters for commands and CPU.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import pairwise

import redis_hammer
from _common import Settings, Table, jain, max_in_window, percentile, pinned, progress
from _redis_server import Monitor, Server, ServerFigures, redis_server
from redis_peers import (
    IDLE_CASES,
    RATE,
    AsyncAcquire,
    Blocked,
    RedisContender,
    SyncAcquire,
    contenders,
    ping,
)

PROCESSES, THREADS = 4, 4  # per process
CLIENT_CPU = 0
TASKS, IDLE_THREADS = 1000, 100


def run_redis(settings: Settings) -> list[Table]:
    with redis_server(settings.redis_url, settings.pin) as (url, where):
        run = f"bench/{os.getpid()}/{time.time_ns()}"
        server = Server(url)
        cpu = CLIENT_CPU if settings.pin else None
        notes = [
            f"Server: {where}; clients "
            + (f"pinned to CPU {cpu}." if cpu is not None else "not pinned.")
        ]
        latency, open_commands = _latency(settings, server, run, url)
        throughput = _throughput(settings, server, run, url, cpu)
        idle = _idle(settings, server, run, url)
        # Last: the server is then oldest (see `_older_than`).
        paced, paced_commands = _paced(settings, server, run, url, cpu)
        tables = [latency, throughput, paced, _commands(open_commands, paced_commands), idle]
        for table in tables:
            table.notes.insert(0, notes[0])
        return tables


# --- latency -------------------------------------------------------------------------------


def _latency(
    settings: Settings, server: Server, run: str, url: str
) -> tuple[Table, list[list[object]]]:
    rounds, per_round = (2, 100) if settings.quick else (7, 400)
    table = Table(
        "redis-latency",
        "Shared budget on Redis: uncontended acquire+release latency against a bare round trip",
        [
            "limiter",
            "mode",
            "config",
            "samples",
            "p50 µs",
            "p99 µs",
            "x PING p50",
            "server µs/grant",
            "EVALSHA+EVAL+PING/grant",
        ],
    )
    table.notes.append(
        f"One thread (or one task), limits that never bind; {rounds} rounds of {per_round} timed "
        "calls each, every contender's rounds interleaved round-robin so all see the same "
        "background noise. Ours is acquire() then release(); the peers have no release."
    )
    table.notes.append(
        "x PING p50: p50 / p50 of a bare redis-py PING in the same mode (sync or asyncio), "
        "measured in the same rounds; server µs/grant: time the server spent in script calls "
        "(their inner commands included), from INFO commandstats."
    )
    everyone = [ping(), *contenders("open")]
    monitored: list[list[object]] = []
    with pinned(settings.pin):
        for mode, samples, figures in _interleaved(everyone, url, run, rounds, per_round):
            base = percentile(samples[0], 50)
            for c, s, f in zip(everyone, samples, figures, strict=True):
                p50 = percentile(s, 50)
                calls = sum(v for k, v in f.items() if k != "usec") / len(s)
                table.rows.append(
                    [
                        c.name,
                        mode,
                        c.config,
                        len(s),
                        p50,
                        percentile(s, 99),
                        p50 / base,
                        f["usec"] / len(s),
                        calls,
                    ]
                )
                if c.ours:
                    table.check(
                        f"{c.name}({c.config}) acquire+release, {mode}",
                        f"{p50 / base:.2f} x PING ({p50:.0f} µs)",
                        "<= 1.5 round trips",
                        p50 / base <= 1.5,
                    )
        monitored = [_monitored_calls(c, url, run, per_round) for c in contenders("open")]
    c_client = _redis_benchmark(server, settings.pin)
    if c_client is not None:
        table.rows.append(
            [
                "baseline: redis-benchmark PING",
                "C client",
                "-c 1 -P 1",
                c_client[0],
                c_client[1],
                c_client[2],
                float("nan"),
                float("nan"),
                float("nan"),
            ]
        )
    return table, monitored


def _interleaved(
    everyone: list[RedisContender], url: str, run: str, rounds: int, per_round: int
) -> Iterator[tuple[str, list[list[float]], list[Counter[str]]]]:
    """Per mode: every contender's latencies (µs) and server figures, over all rounds."""
    server = Server(url)
    budget = f"{run}/latency"
    sync = [c.make_sync(url, f"{budget}/{c.key}/sync") for c in everyone]
    loop = asyncio.new_event_loop()
    try:
        made = [c.make_async(url, f"{budget}/{c.key}/async") for c in everyone if c.make_async]
        asyncs = [loop.run_until_complete(m) for m in made]
        for mode, ops in (
            ("sync", [_sync_batch(a) for a in sync]),
            ("asyncio", [_async_batch(loop, a) for a in asyncs]),
        ):
            samples: list[list[float]] = [[] for _ in everyone]
            figures: list[Counter[str]] = [Counter() for _ in everyone]
            for _ in range(rounds):
                for i, batch in enumerate(ops):
                    batch(20)  # warm: connections, scripts loaded, caches
                    with server.measure() as out:
                        samples[i] += batch(per_round)
                    figures[i] += _script_figures(out[0])
            progress("redis", f"latency, {mode}", time.perf_counter())
            yield mode, samples, figures
    finally:
        loop.close()


def _script_figures(f: ServerFigures) -> Counter[str]:
    out: Counter[str] = Counter({k: f.calls.get(k, 0) for k in ("evalsha", "eval", "ping")})
    out["usec"] = f.script_usec()
    return out


def _sync_batch(acquire: SyncAcquire) -> Callable[[int], list[float]]:
    def batch(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter_ns()
            acquire()
            out.append((time.perf_counter_ns() - t) / 1e3)
        return out

    return batch


def _async_batch(
    loop: asyncio.AbstractEventLoop, acquire: AsyncAcquire
) -> Callable[[int], list[float]]:
    async def timed(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter_ns()
            await acquire()
            out.append((time.perf_counter_ns() - t) / 1e3)
        return out

    return lambda n: loop.run_until_complete(timed(n))


def _monitored_calls(c: RedisContender, url: str, run: str, n: int) -> list[object]:
    acquire = c.make_sync(url, f"{run}/monitored/{c.key}")
    acquire()
    with Monitor(url) as monitor:
        for _ in range(n):
            acquire()
    return _command_row(c, "uncontended, 1 thread", monitor, n)


def _redis_benchmark(server: Server, pin: bool) -> tuple[int, float, float] | None:
    """p50 and p99 (µs) of PING from redis-benchmark, C, one connection, no pipelining."""
    if shutil.which("redis-benchmark") is None:
        return None
    port = str(server.client.connection_pool.connection_kwargs.get("port", 6379))
    host = str(server.client.connection_pool.connection_kwargs.get("host", "127.0.0.1"))
    command = [
        "redis-benchmark",
        "-h",
        host,
        "-p",
        port,
        "-c",
        "1",
        "-n",
        "20000",
        "-t",
        "ping",
        "--csv",
    ]
    if pin:
        command = ["taskset", "-c", str(CLIENT_CPU), *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    rows = [r for r in csv.DictReader(io.StringIO(done.stdout)) if r.get("test") == "PING_MBULK"]
    if not rows:
        return None
    return 20000, float(rows[0]["p50_latency_ms"]) * 1e3, float(rows[0]["p99_latency_ms"]) * 1e3


# --- throughput ----------------------------------------------------------------------------


def _throughput(settings: Settings, server: Server, run: str, url: str, cpu: int | None) -> Table:
    seconds = 1.0 if settings.quick else 3.0
    table = Table(
        "redis-throughput",
        f"Shared budget on Redis: throughput, {PROCESSES} processes x {THREADS} threads",
        [
            "limiter",
            "config",
            "grants/s",
            "x PING/s",
            "server CPU µs/grant",
            "script calls/grant",
        ],
    )
    table.notes.append(
        f"{PROCESSES} spawned processes x {THREADS} threads acquiring (+ releasing) in a loop "
        f"for {seconds:g} s on one budget whose limits never bind; the baseline row does a bare "
        "redis-py PING instead. Server CPU: INFO used_cpu_user+sys over the run (spawning "
        "included) / grants in the span all processes ran together."
    )
    base = float("nan")
    for c in [ping(), *contenders("open")]:
        started = time.perf_counter()
        job = redis_hammer.Job(c.key, url, f"{run}/throughput/{c.key}", THREADS, seconds, cpu)
        with server.measure() as out:
            grants, span = redis_hammer.run(job, PROCESSES)
        f = out[0]
        rate = len(grants) / span
        base = rate if c.key == "ping" else base
        scripts = sum(v for k, v in f.calls.items() if k in {"evalsha", "eval"})
        table.rows.append(
            [
                c.name,
                c.config,
                rate,
                rate / base,
                f.cpu_seconds * 1e6 / max(len(grants), 1),
                scripts / max(len(grants), 1),
            ]
        )
        progress("redis", f"throughput, {c.name}: {rate:,.0f}/s", started)
    return table


# --- utilisation, fairness and commands at 50/s, burst 1 ---------------------------------


def windows_over(stamps: list[float], width: float, limit: int) -> int:
    """How many grants end a window of ``width`` (half-open, ``(t - width, t]``) holding more
    than ``limit`` grants: zero when the limit held everywhere."""
    ordered, over, lo = sorted(stamps), 0, 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - width:
            lo += 1
        over += hi - lo + 1 > limit
    return over


def _paced(
    settings: Settings, server: Server, run: str, url: str, cpu: int | None
) -> tuple[Table, list[list[object]]]:
    seconds = settings.rate_seconds + (0.0 if settings.quick else 1.0)
    table = Table(
        "redis-paced",
        f"Shared budget on Redis: utilisation and fairness at {RATE}/s, burst 1, "
        f"{PROCESSES} processes x {THREADS} threads",
        [
            "limiter",
            "config",
            "grants",
            "utilisation",
            "max in 1 s (decision clock)",
            "windows over",
            "gap p50/p90 ms",
            "max in 1 s (client clock)",
            "per process",
            "Jain (processes)",
            "Jain (threads)",
        ],
    )
    table.notes += [
        f"{PROCESSES} spawned processes x {THREADS} threads acquiring in a loop for {seconds:g} s "
        f"on one budget of {RATE} requests per 1 s window, burst 1 where the limiter can say so.",
        f"utilisation = grants / ({RATE}/s x the span all processes ran together). The decision "
        "clock is the one that decided: Permit.server_time (Redis's TIME) for ours, time.time() "
        "just before the successful hit for limits (its own stamp), time.time() after the grant "
        "for pyrate-limiter (the same host's clock here). windows over: grants that "
        f"end a 1 s window holding more than {RATE} (decision clock); the client clock is when "
        "the caller got the grant back (what a provider would see, less network jitter). "
        f"gap: between consecutive grants (decision clock); 1/{RATE} s = {1e3 / RATE:g} ms "
        "at burst 1, so the p50 above that is how late the next grant typically came.",
        "Jain's index = (sum x)^2 / (n sum x^2) over per-process (and per-thread) grant counts.",
        f"rpm={RATE * 60}, window=60: the same {RATE}/s as users configure it, with the default "
        "margin (0.3 s: utilisation ceiling 60/60.3 = 0.995; 1 s windows: 1/1.05 = 0.952); its "
        f"windows over are counted in its own window (60 s, {RATE * 60}), its max in 1 s shows "
        "the pacing.",
    ]
    rows: list[list[object]] = []
    for c in contenders("paced"):
        _older_than(server, c.window + 1.5)
        started = time.perf_counter()
        job = redis_hammer.Job(c.key, url, f"{run}/paced/{c.key}", THREADS, seconds, cpu)
        grants, span = redis_hammer.run(job, PROCESSES)
        _paced_row(table, c, grants, span)
        # Commands are counted in a run of their own: MONITOR slows every command down.
        job = dataclasses.replace(job, budget=f"{run}/paced-monitored/{c.key}", seconds=2.0)
        with Monitor(url) as monitor:
            grants, _ = redis_hammer.run(job, PROCESSES)
        rows.append(
            _command_row(c, f"{RATE}/s, {PROCESSES}x{THREADS} threads", monitor, len(grants))
        )
        progress("redis", f"paced, {c.name}", started)
    return table, rows


def _older_than(server: Server, seconds: float) -> None:
    """Waits until the server is older than ``seconds``: one younger than a budget's window
    cannot tell a new budget from one its restart lost, so it holds its first window's rate
    grants (README, "Redis unreachable or restarted") — by design, not what is measured."""
    while int(server.client.info("server")["uptime_in_seconds"]) <= seconds:
        time.sleep(0.5)


def _paced_row(
    table: Table, c: RedisContender, grants: list[redis_hammer.Grant], span: float
) -> None:
    decided = [g[1] for g in grants]
    per_process = Counter(g[2] for g in grants)
    per_thread = Counter((g[2], g[3]) for g in grants)
    util = len(grants) / (RATE * span)
    peak = max_in_window(decided, 1.0)
    over = windows_over(decided, c.window, round(RATE * c.window))
    gaps = [(b - a) * 1e3 for a, b in pairwise(sorted(decided))] or [float("nan")]
    fair = jain([per_process.get(i, 0) for i in range(PROCESSES)])
    table.rows.append(
        [
            c.name,
            c.config,
            len(grants),
            util,
            peak,
            over,
            f"{percentile(gaps, 50):.1f}/{percentile(gaps, 90):.1f}",
            max_in_window([g[0] for g in grants], 1.0),
            "/".join(str(per_process.get(i, 0)) for i in range(PROCESSES)),
            fair,
            jain([per_thread.get((p, t), 0) for p in range(PROCESSES) for t in range(THREADS)]),
        ]
    )
    if c.ours:
        table.check(
            f"{c.name}({c.config}) utilisation, {PROCESSES} processes",
            f"{util:.3f}, windows over = {over}",
            ">= 0.98, zero windows over",
            util >= 0.98 and over == 0,
        )
        table.check(
            f"{c.name}({c.config}) Jain's index, {PROCESSES} processes",
            f"{fair:.4f}",
            ">= 0.99",
            fair >= 0.99,
        )


# --- commands per grant ----------------------------------------------------------------------


def _command_row(c: RedisContender, load: str, monitor: Monitor, grants: int) -> list[object]:
    n = max(grants, 1)
    top = ", ".join(f"{k} {v / n:.2f}" for k, v in monitor.top.most_common())
    return [
        c.name,
        c.config,
        load,
        grants,
        sum(monitor.top.values()) / n,
        sum(monitor.inner.values()) / n,
        top or "-",
    ]


def _commands(open_rows: list[list[object]], paced_rows: list[list[object]]) -> Table:
    table = Table(
        "redis-commands",
        "Shared budget on Redis: commands per grant",
        [
            "limiter",
            "config",
            "load",
            "grants",
            "sent/grant",
            "in scripts/grant",
            "sent, by command",
        ],
    )
    table.notes.append(
        "Counted with MONITOR (which tags the commands a script runs 'lua'): sent = commands "
        "clients sent (each a round trip, unless pipelined); in scripts = commands their "
        "scripts ran on the server. Uncontended: one thread, limits that never bind; "
        f"{RATE}/s: a 2 s run like the paced one above (its waiting included), monitored "
        "apart from it since MONITOR slows every command."
    )
    table.rows += open_rows + paced_rows
    return table


# --- idle waiters --------------------------------------------------------------------------


def _idle(settings: Settings, server: Server, run: str, url: str) -> Table:
    seconds, settle = settings.idle_seconds, (0.5 if settings.quick else 1.0)
    table = Table(
        "redis-idle",
        "Shared budget on Redis: CPU of idle waiters (process and server)",
        [
            "limiter",
            "waiters",
            "blocked on",
            "still waiting",
            "failed",
            "process CPU %",
            "server CPU %",
            "server commands/s",
        ],
    )
    table.notes.append(
        f"Waiters settle {settle:g} s, then this process's CPU time (all threads) and the "
        f"server's (INFO) are read over {seconds:g} s; 100% is one core."
    )
    with pinned(settings.pin):
        with server.measure() as out:
            cpu, wall = time.process_time(), time.perf_counter()
            time.sleep(seconds)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        f = out[0]
        table.rows.append(["baseline: no waiters", "0", "-", 0, "0", 100.0 * cpu / wall,
                           f.cpu_pct, f.commands / f.seconds])  # fmt: skip
        for name, config, ours, setup in IDLE_CASES:
            for kind in (f"{TASKS} tasks", f"{IDLE_THREADS} threads"):
                budget = f"{run}/idle/{name}/{config}/{kind}"
                blocked = setup(url, budget, settle + seconds + 0.5)
                measure = _idle_tasks if "tasks" in kind else _idle_threads
                pct, waiting, failed, f = measure(blocked, server, settle, seconds)
                table.rows.append(
                    [name, kind, config, waiting, failed, pct, f.cpu_pct, f.commands / f.seconds]
                )
                progress(
                    "redis", f"idle, {name} ({config}), {kind}: {pct:.2f}%", time.perf_counter()
                )
                if ours:
                    table.check(
                        f"{name} idle CPU, {kind}, {config}",
                        f"{pct:.2f}% (server {f.cpu_pct:.2f}%, {f.commands / f.seconds:.1f} cmd/s)",
                        "<= 0.5% (no polling)",
                        pct <= 0.5,
                    )
    return table


# process CPU %, still waiting, failed (how many, and why), server figures
Idle = tuple[float, int, str, ServerFigures]


def _failures(errors: list[BaseException]) -> str:
    kinds = Counter(type(e).__name__ for e in errors)
    return f"{len(errors)} ({', '.join(kinds)})" if errors else "0"


def _idle_tasks(blocked: Blocked, server: Server, settle: float, seconds: float) -> Idle:
    async def main() -> Idle:
        wait = await blocked.make_async()
        tasks = [asyncio.ensure_future(wait()) for _ in range(TASKS)]
        await asyncio.sleep(settle)
        with server.measure() as out:
            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.sleep(seconds)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        waiting = sum(not t.done() for t in tasks)
        errors = [e for t in tasks if t.done() and (e := t.exception()) is not None]
        for task in tasks:
            task.cancel()
        blocked.release()
        await asyncio.gather(*tasks, return_exceptions=True)
        return 100.0 * cpu / wall, waiting, _failures(errors), out[0]

    return asyncio.run(main())


def _idle_threads(blocked: Blocked, server: Server, settle: float, seconds: float) -> Idle:
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            blocked.wait()
        except Exception as err:
            errors.append(err)

    pool = [threading.Thread(target=wait, daemon=True) for _ in range(IDLE_THREADS)]
    for thread in pool:
        thread.start()
    time.sleep(settle)
    with server.measure() as out:
        cpu, wall = time.process_time(), time.perf_counter()
        time.sleep(seconds)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    waiting = sum(t.is_alive() for t in pool)
    blocked.release()
    return 100.0 * cpu / wall, waiting, _failures(errors), out[0]
