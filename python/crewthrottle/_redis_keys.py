"""The key layout of a shared budget on Redis, for the Python side (``status``).

Mirrors ``src/store/redis/script.rs`` (``LAYOUT``, ``SUFFIXES``, the channel) and the fields
``src/store/redis/limiter.lua`` keeps; ``tests/test_status.py`` fails if the two drift. Every
other Python module reads Redis keys through this one.

What each key holds (times are µs of the Redis server's clock):

- ``config``: hash of the budget's limits (``CONFIG_FIELDS``; -1: no such limit).
- ``state``: hash of the pacing, pause, ids and counters (``STATE_FIELDS``, ``COUNTERS``);
  ``limits``: the limits in force when lower than the configured ones, "max_concurrent rpm
  tpm reason" (-1: none; empty: the configured ones), as the latest call computed them;
  ``limits_at``: when they last changed.
- ``requests`` / ``tokens``: sorted sets of grant ids scored by when they started; an entry
  counts in the window while its score is above ``now - (window_us + margin_us)``.
- ``amounts``: hash of grant id -> tokens charged in the tokens window.
- ``holders``: grant ids scored by when their lease expires (live while above ``now``).
- ``queue``: tickets of waiters in order; ``leases``: tickets scored by lease expiry.
- ``queued``, ``handed``, ``reaped``: the queue's bookkeeping (not read here).
"""

from __future__ import annotations

LAYOUT = "v1"
SUFFIXES = (
    "config",
    "state",
    "requests",
    "tokens",
    "amounts",
    "holders",
    "queue",
    "queued",
    "leases",
    "handed",
    "reaped",
)
CHANNEL = "events"
CONFIG_FIELDS = ("digest", "max_concurrent", "rpm", "tpm", "window_us", "margin_us", "burst")
STATE_FIELDS = ("paused_until", "recovering_until", "epoch", "limits", "limits_at")
COUNTERS = ("acquired", "timeouts", "cancelled", "reaped", "total_wait_us")

_GLOB_SPECIALS = "\\*?[]"


def base(prefix: str, name: str) -> str:
    """What every key of budget ``name`` starts with: one hash tag (Redis Cluster), a layout."""
    return f"{{{prefix}:{name}}}:{LAYOUT}"


def key(prefix: str, name: str, suffix: str) -> str:
    """The key ``suffix`` of budget ``name``."""
    if suffix not in SUFFIXES:
        raise ValueError(f"suffix must be one of {SUFFIXES}, got {suffix!r}")
    return f"{base(prefix, name)}:{suffix}"


def config_pattern(prefix: str) -> str:
    """A SCAN pattern matching the config key of every budget under ``prefix``."""
    escaped = "".join("\\" + c if c in _GLOB_SPECIALS else c for c in prefix)
    return f"{{{escaped}:*}}:{LAYOUT}:config"


def name_of(config_key: str, prefix: str) -> str | None:
    """The budget a config key belongs to; None if the key is not one under ``prefix``."""
    head, tail = f"{{{prefix}:", f"}}:{LAYOUT}:config"
    if config_key.startswith(head) and config_key.endswith(tail):
        return config_key[len(head) : -len(tail)] or None
    return None
