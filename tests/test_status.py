"""``python -m crewthrottle status`` against a real `redis-server`: the live budgets that
limiters made, with their figures, read without writing (idle budgets still expire)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from tests._redis import free_port

import crewthrottle as ct
from crewthrottle import _redis_keys as keys

ROOT = Path(__file__).resolve().parent.parent


def status(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crewthrottle", "status", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def budgets_json(url: str, *args: str) -> dict[str, dict[str, Any]]:
    done = status("--redis", url, "--once", "--json", *args)
    assert done.returncode == 0, done.stderr
    return {b["name"]: b for b in json.loads(done.stdout)["budgets"]}


def plain_rows(url: str, *args: str) -> dict[str, dict[str, str]]:
    """The --once table, parsed: one dict per budget, by column header."""
    done = status("--redis", url, "--once", "--plain", *args)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"crewthrottle budgets on {url}"), done.stdout
    header = re.split(r"\s{2,}", lines[2].strip())
    assert header[:4] == ["NAME", "LIMITS", "IN FLIGHT", "WAITING"], lines[2]
    cells = [re.split(r"\s{2,}", line.strip()) for line in lines[3:] if line.strip()]
    rows = [dict(zip(header, row, strict=True)) for row in cells]
    return {r["NAME"]: r for r in rows}


def shared(url: str, name: str, *, prefix: str = "crewthrottle", **limits: Any) -> ct.Limiter:
    backend = ct.RedisBackend(url, lease=5.0, prefix=prefix)
    return ct.Limiter(name=name, backend=backend, **limits)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as c:
        yield c


def test_budgets_made_by_limiters_show_up_with_their_figures(
    redis_url: str, budget_name: str
) -> None:
    busy = shared(redis_url, budget_name + "/busy", max_concurrent=2, rpm=100, tpm=10_000)
    paused = shared(redis_url, budget_name + "/paused", rpm=10, window=1.0)
    held = [busy.acquire(tokens=300), busy.acquire(tokens=200)]
    waiter = threading.Thread(target=lambda: busy.acquire(tokens=50, timeout=30).release())
    waiter.start()
    deadline = time.monotonic() + 10
    while busy.stats()["waiting"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert paused.pause(30) is True
    try:
        found = budgets_json(redis_url)
        b, p = found[budget_name + "/busy"], found[budget_name + "/paused"]
        stats = busy.stats()
        for figure in ("in_flight", "waiting", "requests_in_window", "tokens_in_window"):
            assert b[figure] == stats[figure] != 0, figure
        assert (b["in_flight"], b["waiting"], b["tokens_in_window"]) == (2, 1, 500)
        assert (b["max_concurrent"], b["rpm"], b["tpm"], b["window"]) == (2, 100, 10_000, 60.0)
        assert len(b["holders"]) == 2 and all(0 < left <= 5.0 for _, left in b["holders"])
        assert (p["rpm"], p["tpm"], p["max_concurrent"], p["window"]) == (10, None, None, 1.0)
        assert 20 < p["paused_for"] <= 30 and p["in_flight"] == 0
        row = plain_rows(redis_url)[budget_name + "/busy"]
        assert (row["IN FLIGHT"], row["WAITING"], row["REQUESTS"]) == ("2/2", "1", "2/100")
        assert row["TOKENS"] == "500/10000" and row["PAUSED"] == "-"
        assert row["HOLDERS"].count("#") == 2
        limits = "2 concurrent, 100 req, 10000 tok per 60 s (+0.3 s margin), burst 2"
        assert row["LIMITS"] == limits
        assert plain_rows(redis_url)[budget_name + "/paused"]["PAUSED"].endswith(" s")
    finally:
        paused.resume()
        for permit in held:
            permit.release()
        waiter.join(30)


def test_the_prefix_option_finds_the_budgets_under_it(redis_url: str, budget_name: str) -> None:
    prefix = f"ct-status-{os.getpid()}-{time.monotonic_ns()}"
    shared(redis_url, budget_name, prefix=prefix, max_concurrent=3).acquire().release()
    assert budget_name in budgets_json(redis_url, "--prefix", prefix)
    assert budget_name not in budgets_json(redis_url)


def test_status_reads_without_writing_and_idle_budgets_expire(
    redis_url: str, budget_name: str, client: redis.Redis
) -> None:
    # The script gives every key of a budget a TTL (2 windows or 3 leases, plus a minute);
    # status must not renew it, nor bring back a budget whose keys expired.
    lim = shared(redis_url, budget_name, max_concurrent=2, rpm=10, window=1.0)
    lim.acquire().release()
    lim.stats()  # after the release on the limiter's connection (stats touches no TTL)
    budget_keys = sorted(client.scan_iter(match=keys.base("crewthrottle", budget_name) + ":*"))
    assert len(budget_keys) >= 3  # config, state, requests (an empty set is no key)
    bound_ms = max(2 * 1.05 * 1000, 3 * 5.0 * 1000) + 60_000
    before = [client.pttl(k) for k in budget_keys]
    assert all(0 < ttl <= bound_ms for ttl in before), before
    assert budget_name in budgets_json(redis_url)
    assert budget_name in plain_rows(redis_url)
    after = [client.pttl(k) for k in budget_keys]
    assert all(0 < a <= b for a, b in zip(after, before, strict=True)), (before, after)
    for k in budget_keys:
        client.pexpire(k, 1)  # what the TTL does, a minute or so from now
    time.sleep(0.05)
    assert budget_name not in budgets_json(redis_url)
    assert list(client.scan_iter(match=keys.base("crewthrottle", budget_name) + ":*")) == []


def test_the_table_refreshes(redis_url: str, budget_name: str) -> None:
    shared(redis_url, budget_name, max_concurrent=1).acquire().release()
    command = [sys.executable, "-m", "crewthrottle", "status", "--redis", redis_url]
    with subprocess.Popen(
        [*command, "--interval", "0.2", "--plain"], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        titles = 0
        deadline = time.monotonic() + 30
        while titles < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            titles += line.startswith("crewthrottle budgets on ")
        proc.terminate()
    assert titles == 2


def test_an_unreachable_server_is_a_clear_error_in_bounded_time() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    started = time.monotonic()
    done = status("--redis", url, "--once", "--timeout", "0.5")
    assert done.returncode == 1 and f"Redis at {url} is unreachable" in done.stderr
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("args", "named"),
    [(["--interval", "0"], "--interval"), (["--timeout", "-1"], "--timeout")],
)
def test_bad_arguments_are_named(args: list[str], named: str) -> None:
    done = status(*args)
    assert done.returncode == 2 and named in done.stderr


def test_crewthrottle_needs_no_redis_py_and_status_says_what_to_install() -> None:
    code = "import sys, crewthrottle; print('redis' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60).stdout.strip() == "False"  # fmt: skip
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from crewthrottle.__main__ import main; sys.exit(main(['status', '--once']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "pip install 'crewthrottle[status]'" in done.stderr


def test_the_key_layout_mirrors_the_native_store() -> None:
    # crewthrottle/_redis_keys.py copies what src/store/redis/ writes: this fails if they drift.
    script_rs = (ROOT / "src/store/redis/script.rs").read_text()
    lua = (ROOT / "src/store/redis/limiter.lua").read_text()
    layout = re.search(r'const LAYOUT: &str = "([^"]+)";', script_rs)
    suffixes = re.search(r"const SUFFIXES: \[&str; \d+\] = \[(.*?)\];", script_rs, re.S)
    assert layout and suffixes
    assert keys.LAYOUT == layout.group(1)
    assert keys.SUFFIXES == tuple(re.findall(r'"([^"]+)"', suffixes.group(1)))
    assert f'format!("{{base}}:{keys.CHANNEL}")' in script_rs
    assert 'format!("{{{prefix}:{name}}}:{LAYOUT}")' in script_rs
    for field in keys.CONFIG_FIELDS + keys.STATE_FIELDS + keys.COUNTERS:
        assert f"'{field}'" in lua, field
    assert keys.name_of(keys.key("p", "a:b}c", "config"), "p") == "a:b}c"
    assert keys.config_pattern("a*b") == "{a\\*b:*}:v1:config"


def test_the_status_command_reads_the_same_budget_a_limiter_uses(
    redis_url: str, budget_name: str, client: redis.Redis
) -> None:
    # The keys status reads are the keys a limiter writes (not only the same names).
    lim = shared(redis_url, budget_name, max_concurrent=4)
    permit = lim.acquire()
    try:
        holders = client.zrange(keys.key("crewthrottle", budget_name, "holders"), 0, -1)
        assert len(holders) == 1
        assert budgets_json(redis_url)[budget_name]["holders"][0][0] == int(holders[0])
    finally:
        permit.release()


def test_a_budget_lowered_by_a_429_shows_the_limits_in_force(
    redis_url: str, budget_name: str
) -> None:
    # The script records the limits in force when they change; status shows them beside the
    # configured ones. A 60 s window: steps of 6 s, so the x0.7 holds while this runs.
    lim = shared(redis_url, budget_name, rpm=500, tpm=50_000, window=60.0, burst=1)
    lim.observe({}, status=429)
    assert until_reason(lim, "429") == (None, 350, 35_000)
    b = budgets_json(redis_url)[budget_name]
    assert (b["rpm"], b["tpm"]) == (500, 50_000)
    forced = b["in_force"]
    assert (forced["rpm"], forced["tpm"], forced["max_concurrent"]) == (350, 35_000, None)
    assert forced["reason"] == "429" and 0 <= forced["changed_ago"] < 60
    row = plain_rows(redis_url)[budget_name]
    in_force = "(in force: 350 req, 35000 tok, 429)"
    assert row["LIMITS"] == f"500 req, 50000 tok per 60 s (+0.3 s margin) {in_force}"
    # Use is shown against the limits in force.
    assert (row["REQUESTS"], row["TOKENS"]) == ("0/350", "0/35000")


def test_a_budget_that_learned_headers_shows_them_and_a_configured_one_shows_none(
    redis_url: str, budget_name: str
) -> None:
    learned = shared(redis_url, budget_name, rpm=100, window=2.0)
    plain = shared(redis_url, budget_name + "/plain", rpm=100, window=2.0)
    plain.stats()  # made with its configured limits
    learned.observe({"x-ratelimit-limit-requests": "30", "x-ratelimit-remaining-requests": "29"})
    assert until_reason(learned, "headers") == (None, 30, None)
    found = budgets_json(redis_url)
    forced = found[budget_name]["in_force"]
    assert (forced["rpm"], forced["tpm"], forced["reason"]) == (30, None, "headers")
    assert found[budget_name + "/plain"]["in_force"] is None
    rows = plain_rows(redis_url)
    configured = rows[budget_name + "/plain"]["LIMITS"]
    assert configured.startswith("100 req per 2 s")
    assert rows[budget_name]["LIMITS"] == f"{configured} (in force: 30 req, headers)"
    assert "in force" not in configured


def test_once_recovered_from_a_429_the_configured_limits_show_alone(
    redis_url: str, budget_name: str
) -> None:
    # A 1 s window: steps of 0.1 s, each adding back 5%: recovered 0.6 s after the 429, as
    # the first call after that computes (stats() is one).
    lim = shared(redis_url, budget_name, rpm=100, window=1.0)
    lim.observe({}, status=429)
    assert until_reason(lim, "429")[1] < 100
    assert budgets_json(redis_url)[budget_name]["in_force"]["reason"] == "429"
    assert until_reason(lim, "configured") == (None, 100, None)
    assert budgets_json(redis_url)[budget_name]["in_force"] is None


def test_an_adaptive_budget_shows_its_cautious_start_then_what_the_headers_said(
    redis_url: str, budget_name: str
) -> None:
    a = shared(redis_url, budget_name, adaptive=True, window=60.0)
    assert until_reason(a, "conservative") == (1, 60, None)
    forced = budgets_json(redis_url)[budget_name]["in_force"]
    assert (forced["max_concurrent"], forced["rpm"], forced["reason"]) == (1, 60, "conservative")
    assert (
        "(in force: 1 concurrent, 60 req, conservative)"
        in plain_rows(redis_url)[budget_name]["LIMITS"]
    )
    a.observe(
        {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-limit-tokens": "200000",
            "x-ratelimit-remaining-tokens": "199900",
        }
    )
    # Read by status alone (which computes nothing): what the call that learned them recorded.
    deadline = time.monotonic() + 15
    while (forced := budgets_json(redis_url)[budget_name]["in_force"])["reason"] != "headers":
        assert time.monotonic() < deadline, forced
    assert (forced["max_concurrent"], forced["rpm"], forced["tpm"]) == (None, 500, 200_000)


def until_reason(lim: ct.Limiter, reason: str) -> tuple[Any, ...]:
    """The limits in force once the budget says why they are lower (a change is sent without
    waiting, so it may take a round trip to land); fails after 15 s."""
    deadline = time.monotonic() + 15
    while (s := lim.stats())["limits_reason"] != reason:
        assert time.monotonic() < deadline, s["limits_reason"]
        time.sleep(0.02)
    return (s["effective_max_concurrent"], s["effective_rpm"], s["effective_tpm"])
