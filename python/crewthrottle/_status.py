"""``python -m crewthrottle status``: the live shared budgets on a Redis server, as a table that
refreshes (issue 7, "Operations").

Budgets are found by SCAN for their config keys and read with plain reads only (HGETALL,
ZCOUNT, ZRANGEBYSCORE, PTTL): the command never writes, so it neither keeps an idle budget
alive nor brings back one whose keys expired. Figures are computed on the Redis server's
clock (TIME), as the budget script computes them. Needs redis-py (``crewthrottle[status]``);
uses rich for the live table when it is installed and the output is a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crewthrottle import _redis_keys as keys

if TYPE_CHECKING:
    from redis import Redis

HOLDERS_SHOWN = 3


@dataclass(frozen=True)
class InForce:
    """Limits lower than the configured ones that a shared budget put in force (issue 8; None:
    no limit of that kind), as its script's latest call computed them: the recovery after a
    429 advances only when a call comes."""

    max_concurrent: int | None
    rpm: int | None
    tpm: int | None
    reason: str  # as stats()["limits_reason"]: "429", "conservative" or "headers"
    changed_ago: float | None  # seconds since they last changed (server clock)


@dataclass(frozen=True)
class Budget:
    """One shared budget's live figures (seconds; None: no such limit)."""

    name: str
    max_concurrent: int | None
    rpm: int | None
    tpm: int | None
    window: float
    margin: float
    burst: int
    in_flight: int
    waiting: int
    requests_in_window: int | None
    tokens_in_window: int | None
    paused_for: float
    recovering_for: float
    holders: list[tuple[int, float]]  # (grant id, seconds left on its lease), soonest first
    acquired: int
    timeouts: int
    expires_in: float | None  # when its keys vanish if nothing touches it (PTTL)
    in_force: InForce | None  # None: the configured limits are in force


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m crewthrottle status",
        description="The live shared budgets on a Redis server (limiters with a RedisBackend).",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", metavar="URL")
    parser.add_argument("--prefix", default="crewthrottle", help="RedisBackend's prefix")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    parser.add_argument("--once", action="store_true", help="print one table and exit")
    parser.add_argument("--json", action="store_true", help="JSON (one document per refresh)")
    parser.add_argument("--plain", action="store_true", help="plain text even if rich is here")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per Redis command")
    args = parser.parse_args(argv)
    if not args.interval > 0:
        parser.error(f"--interval must be a positive number of seconds, got {args.interval}")
    if not args.timeout > 0:
        parser.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    return args


# --- reading -----------------------------------------------------------------------------------


def connect(url: str, timeout: float) -> Redis:
    """A redis-py client for ``url`` (the URL forms RedisBackend takes)."""
    from redis import Redis

    if url.startswith("redis+unix://"):
        url = "unix://" + url.removeprefix("redis+unix://")
    return Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def read_budgets(client: Redis, prefix: str) -> tuple[float, list[Budget]]:
    """The server's time (seconds since the epoch) and every live budget under ``prefix``."""
    names = set()
    for found in client.scan_iter(match=keys.config_pattern(prefix), count=500):
        name = keys.name_of(_text(found), prefix)
        if name is not None:
            names.add(name)
    budgets = [_read_one(client, prefix, name) for name in sorted(names)]
    return _now_us(client) / 1e6, [b for b in budgets if b is not None]


def _now_us(client: Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1_000_000 + int(micros)


def _read_one(client: Redis, prefix: str, name: str) -> Budget | None:
    def k(suffix: str) -> str:
        return keys.key(prefix, name, suffix)

    head = _head(client, k)
    if head is None:
        return None  # expired since the SCAN: gone, and left gone
    now, config, state, pttl = head
    window_us, margin_us = _int(config, "window_us", 60_000_000), _int(config, "margin_us", 0)
    holders, waiting, requests, tokens = _live(client, k, now, now - window_us - margin_us)
    rpm, tpm = _limit(config, "rpm"), _limit(config, "tpm")
    return Budget(
        name=name,
        max_concurrent=_limit(config, "max_concurrent"),
        rpm=rpm,
        tpm=tpm,
        window=window_us / 1e6,
        margin=margin_us / 1e6,
        burst=_int(config, "burst", 1),
        in_flight=len(holders),
        waiting=waiting,
        requests_in_window=None if rpm is None else requests,
        tokens_in_window=None if tpm is None else tokens,
        paused_for=max(_int(state, "paused_until", 0) - now, 0) / 1e6,
        recovering_for=max(_int(state, "recovering_until", 0) - now, 0) / 1e6,
        holders=holders,
        acquired=_int(state, "acquired", 0),
        timeouts=_int(state, "timeouts", 0),
        expires_in=pttl / 1e3 if pttl >= 0 else None,
        in_force=_in_force(state, now),
    )


def _in_force(state: dict[str, str], now: int) -> InForce | None:
    """What the script recorded in ``limits`` ("max_concurrent rpm tpm reason", -1: no such
    limit; empty: the configured ones) and when (``limits_at``)."""
    words = state.get("limits", "").split(" ", 3)
    if len(words) != 4:
        return None
    mc, rpm, tpm = (_as_limit(_int_or(w, -1)) for w in words[:3])
    at = _int(state, "limits_at", -1)
    return InForce(mc, rpm, tpm, words[3], (now - at) / 1e6 if at >= 0 else None)


Head = tuple[int, dict[str, str], dict[str, str], int]  # now (µs), config, state, PTTL (ms)


def _head(client: Redis, k: Callable[[str], str]) -> Head | None:
    """The server's time, the budget's config and state hashes, and its keys' time to live."""
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.hgetall(k("config"))
    pipe.hgetall(k("state"))
    pipe.pttl(k("config"))
    (seconds, micros), config, state, pttl = pipe.execute()
    if not config:
        return None
    return int(seconds) * 1_000_000 + int(micros), _decoded(config), _decoded(state), pttl


def _live(
    client: Redis, k: Callable[[str], str], now: int, cutoff: int
) -> tuple[list[tuple[int, float]], int, int, int]:
    """Holders (id, lease left), live waiters, requests and tokens counted after ``cutoff``
    (as the script's expire_windows: an entry counts while its start is above it)."""
    pipe = client.pipeline(transaction=False)
    pipe.zrangebyscore(k("holders"), f"({now}", "+inf", withscores=True)
    pipe.zrange(k("queue"), 0, -1)
    pipe.zcount(k("requests"), f"({cutoff}", "+inf")
    pipe.zrangebyscore(k("tokens"), f"({cutoff}", "+inf")
    holders, queue, requests, token_ids = pipe.execute()
    # Waiting: queued tickets whose lease is live (a dead process's wait no longer counts).
    leases = client.zmscore(k("leases"), queue) if queue else []
    amounts = client.hmget(k("amounts"), token_ids) if token_ids else []
    return (
        [(int(_text(g)), (score - now) / 1e6) for g, score in holders],
        sum(lease is not None and lease > now for lease in leases),
        int(requests),
        sum(_int_or(a, 0) for a in amounts),
    )


def _decoded(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {_text(f): _text(v) for f, v in fields.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _int_or(value: bytes | str | None, default: int) -> int:
    try:
        return int(_text(value)) if value is not None else default
    except ValueError:
        return default


def _int(fields: dict[str, str], name: str, default: int) -> int:
    return _int_or(fields.get(name), default)


def _limit(fields: dict[str, str], name: str) -> int | None:
    return _as_limit(_int(fields, name, -1))


def _as_limit(value: int) -> int | None:
    return None if value < 0 else value


# --- rendering ---------------------------------------------------------------------------------

COLUMNS = ("NAME", "LIMITS", "IN FLIGHT", "WAITING", "REQUESTS", "TOKENS", "PAUSED", "HOLDERS",
           "EXPIRES IN")  # fmt: skip


def _seconds(value: float) -> str:
    return f"{value:.1f} s"


def _parts(max_concurrent: int | None, rpm: int | None, tpm: int | None) -> str:
    parts = [f"{max_concurrent} concurrent"] if max_concurrent is not None else []
    parts += [f"{rpm} req"] if rpm is not None else []
    parts += [f"{tpm} tok"] if tpm is not None else []
    return ", ".join(parts) or "none"


def _limits_text(b: Budget) -> str:
    text = _parts(b.max_concurrent, b.rpm, b.tpm)
    if b.rpm is not None or b.tpm is not None:
        text += f" per {b.window:g} s"
        text += f" (+{b.margin:g} s margin)" if b.margin else ""
        text += f", burst {b.burst}" if b.burst > 1 else ""
    if f := b.in_force:
        text += f" (in force: {_parts(f.max_concurrent, f.rpm, f.tpm)}, {f.reason})"
    return text


def _of(used: int | None, limit: int | None) -> str:
    if used is None:
        return "-"
    return str(used) if limit is None else f"{used}/{limit}"


def _holders_text(b: Budget) -> str:
    shown = [f"#{g} ({_seconds(left)})" for g, left in b.holders[:HOLDERS_SHOWN]]
    more = len(b.holders) - HOLDERS_SHOWN
    return ", ".join(shown) + (f" +{more}" if more > 0 else "") or "-"


def _paused_text(b: Budget) -> str:
    if b.paused_for > 0:
        return _seconds(b.paused_for)
    return f"recovering {_seconds(b.recovering_for)}" if b.recovering_for > 0 else "-"


def row(b: Budget) -> list[str]:
    """One budget's cells, in COLUMNS order; use is shown against the limits in force."""
    limits = b.in_force or b
    return [
        b.name,
        _limits_text(b),
        _of(b.in_flight, limits.max_concurrent),
        str(b.waiting),
        _of(b.requests_in_window, limits.rpm),
        _of(b.tokens_in_window, limits.tpm),
        _paused_text(b),
        _holders_text(b),
        "-" if b.expires_in is None else _seconds(b.expires_in),
    ]


def title(args: argparse.Namespace, now: float, budgets: list[Budget]) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now))
    count = f"{len(budgets)} live budget" + ("" if len(budgets) == 1 else "s")
    return f"crewthrottle budgets on {args.redis} (prefix {args.prefix!r}): {count}, {stamp} UTC"


def render_plain(heading: str, budgets: list[Budget]) -> str:
    cells = [list(COLUMNS), *(row(b) for b in budgets)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = [heading, ""]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def render_json(now: float, budgets: list[Budget]) -> str:
    return json.dumps({"server_time": now, "budgets": [dataclasses.asdict(b) for b in budgets]})


def _rich_table(heading: str, budgets: list[Budget]) -> Any:
    from rich.table import Table

    table = Table(title=heading, title_justify="left")
    for column in COLUMNS:
        table.add_column(column, no_wrap=column != "HOLDERS")
    for b in budgets:
        table.add_row(*row(b))
    return table


# --- the command -------------------------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    args = parse(argv)
    try:
        from redis import RedisError
    except ImportError:
        print(
            "the status command needs redis-py: pip install 'crewthrottle[status]'",
            file=sys.stderr,
        )
        return 2
    try:
        client = connect(args.redis, args.timeout)
    except ValueError as err:
        print(f"bad Redis URL {args.redis!r}: {err}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        show = _shower(args, stack)
        try:
            while True:
                try:
                    now, budgets = read_budgets(client, args.prefix)
                except (RedisError, OSError) as err:
                    print(f"Redis at {args.redis} is unreachable: {err}", file=sys.stderr)
                    if args.once:
                        return 1
                else:
                    show(now, budgets)
                    if args.once:
                        return 0
                time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0  # the way to leave the live table


Show = Callable[[float, list[Budget]], None]


def _shower(args: argparse.Namespace, stack: contextlib.ExitStack) -> Show:
    """How each refresh is shown: JSON lines, rich (a live table on a terminal), or plain."""
    if args.json:
        return lambda now, budgets: print(render_json(now, budgets), flush=True)
    tty = sys.stdout.isatty()
    rich = None if args.plain or not tty else _rich(args, stack)
    if rich is not None:
        return rich

    def plain(now: float, budgets: list[Budget]) -> None:
        text = render_plain(title(args, now, budgets), budgets)
        clear = "\x1b[H\x1b[2J" if tty and not args.once else ""  # redraw in place
        print(clear + text + ("" if tty else "\n"), flush=True)

    return plain


def _rich(args: argparse.Namespace, stack: contextlib.ExitStack) -> Show | None:
    try:
        from rich.console import Console
        from rich.live import Live
    except ImportError:
        return None
    if args.once:
        console = Console()
        return lambda now, budgets: console.print(_rich_table(title(args, now, budgets), budgets))
    live = stack.enter_context(Live(auto_refresh=False))
    return lambda now, budgets: live.update(
        _rich_table(title(args, now, budgets), budgets), refresh=True
    )
