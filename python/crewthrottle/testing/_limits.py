"""Sliding-window admission for the fake provider: pure bookkeeping, no I/O.

Every method takes ``now`` (seconds, from ``time.monotonic()``) so the rules can be read and
tested without a clock. An entry started at ``t`` counts while ``now < t + window``: a provider
that allows ``limit`` per window never lets more than ``limit`` starts fall within any span
shorter than ``window``.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from ._foreign import ForeignTraffic

Reason = Literal[
    "requests", "tokens", "input_tokens", "output_tokens", "concurrency", "quota", "overloaded"
]


class SlidingWindow:
    """Amounts (1 per request, or a token count) started within the last ``window`` seconds."""

    def __init__(self, window: float) -> None:
        self._window = window
        self._entries: deque[list[Any]] = deque()  # [start, amount]
        self._total = 0

    @property
    def total(self) -> int:
        """Sum of the amounts still inside the window (call :meth:`prune` first)."""
        return self._total

    def prune(self, now: float) -> None:
        """Forget entries whose window has passed at ``now``."""
        while self._entries and self._entries[0][0] + self._window <= now:
            self._total -= self._entries.popleft()[1]

    def add(self, now: float, amount: int) -> list[Any]:
        """Count ``amount`` as started at ``now``; returns the entry, for :meth:`adjust`."""
        entry = [now, amount]
        self._entries.append(entry)
        self._total += amount
        return entry

    def adjust(self, entry: list[Any], amount: int) -> None:
        """Correct an entry's amount (an estimate settled to the real count), if it is still
        in the window."""
        if any(e is entry for e in self._entries):
            self._total += amount - entry[1]
            entry[1] = amount

    def wait_until_fits(self, now: float, limit: int, amount: int) -> float | None:
        """Seconds from ``now`` until ``amount`` more fits under ``limit``; None if it never can."""
        if amount > limit:
            return None
        excess = self._total + amount - limit
        if excess <= 0:
            return 0.0
        for started, entry_amount in self._entries:  # oldest first: they leave first
            excess -= entry_amount
            if excess <= 0:
                return max(0.0, float(started) + self._window - now)
        return None  # pragma: no cover - an empty window always fits amount <= limit

    def until_empty(self, now: float) -> float:
        """Seconds from ``now`` until every entry has left the window (0 if none)."""
        if not self._entries:
            return 0.0
        return max(0.0, float(self._entries[-1][0]) + self._window - now)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()
        self._total = 0


@dataclass(frozen=True)
class Limits:
    """The limits the fake provider enforces (None: unlimited). Times in seconds."""

    rpm: int | None
    tpm: int | None
    max_concurrent: int | None
    window: float
    rejected_consume_quota: bool
    input_tpm: int | None = None
    output_tpm: int | None = None


@dataclass(frozen=True)
class Usage:
    """What a limit looked like at a decision, for the ``x-ratelimit-*`` headers."""

    limit: int
    remaining: int
    reset: float  # seconds until the window is empty again


@dataclass(frozen=True)
class Decision:
    """The answer to one request's admission.

    ``retry_in`` is the number of seconds until the same request could be accepted, or None
    when it never can (larger than the token limit) or nobody can know.
    """

    accepted: bool
    reason: Reason | None
    retry_in: float | None
    in_flight: int
    used_requests: int
    used_tokens: int
    requests: Usage | None
    tokens: Usage | None
    ticket: int
    input_tokens: Usage | None = None
    output_tokens: Usage | None = None


@dataclass(frozen=True)
class Request:
    """What admission needs to know of one request, in tokens.

    ``tokens`` counts against ``tpm`` (OpenAI's way: prompt plus the completion cap);
    ``input`` against ``input_tpm``; ``output`` against ``output_tpm``, estimated from the
    request's ``max_tokens`` when it starts and adjusted to the real output when it ends
    (Anthropic's way).
    """

    tokens: int
    input: int
    output: int


class Admission:
    """Thread-safe admission: sliding windows for requests and tokens (all, input, output),
    plus the in-flight count."""

    def __init__(self, limits: Limits, foreign_share: float = 0.0) -> None:
        self.limits = limits
        self.foreign = ForeignTraffic.of(limits.rpm, limits.tpm, limits.window, foreign_share)
        self._lock = threading.Lock()
        self._requests = SlidingWindow(limits.window)
        self._tokens = SlidingWindow(limits.window)
        self._input = SlidingWindow(limits.window)
        self._output = SlidingWindow(limits.window)
        self._windows = (self._requests, self._tokens, self._input, self._output)
        self._planned_ends: dict[int, float] = {}
        self._outputs: dict[int, list[Any]] = {}  # ticket -> its output window entry
        self._next_ticket = 0
        self.max_in_flight = 0

    def admit(self, now: float, request: Request | int, latency: float) -> Decision:
        """Accept or reject a request (or a plain token count) taking ``latency`` seconds."""
        if isinstance(request, int):
            request = Request(request, 0, 0)
        with self._lock:
            if self.foreign is not None:
                for at in self.foreign.due(now):
                    self.foreign.count(self._admit_foreign(at, self.foreign.tokens))
            for window in self._windows:
                window.prune(now)
            used_requests, used_tokens = self._requests.total, self._tokens.total
            in_flight = len(self._planned_ends)
            reason, retry_in = self._check(now, request, in_flight)
            self._next_ticket += 1
            if reason is None:
                self._accept(now, request, latency)
            elif self.limits.rejected_consume_quota:
                self._requests.add(now, 1)
            lim = self.limits
            return Decision(
                accepted=reason is None,
                reason=reason,
                retry_in=retry_in,
                in_flight=in_flight,
                used_requests=used_requests,
                used_tokens=used_tokens,
                requests=self._usage(now, lim.rpm, self._requests),
                tokens=self._usage(now, lim.tpm, self._tokens),
                ticket=self._next_ticket,
                input_tokens=self._usage(now, lim.input_tpm, self._input),
                output_tokens=self._usage(now, lim.output_tpm, self._output),
            )

    def _admit_foreign(self, at: float, tokens: int) -> bool:
        """One request of the other client, at ``at``: counted if it fits, else refused."""
        for window in (self._requests, self._tokens):
            window.prune(at)
        lim = self.limits
        fits = (lim.rpm is None or self._requests.total < lim.rpm) and (
            lim.tpm is None or self._tokens.total + tokens <= lim.tpm
        )
        if fits:
            self._requests.add(at, 1)
            self._tokens.add(at, tokens)
        return fits

    def _accept(self, now: float, request: Request, latency: float) -> None:
        self._requests.add(now, 1)
        self._tokens.add(now, request.tokens)
        self._input.add(now, request.input)
        self._outputs[self._next_ticket] = self._output.add(now, request.output)
        self._planned_ends[self._next_ticket] = now + latency
        self.max_in_flight = max(self.max_in_flight, len(self._planned_ends))

    @property
    def in_flight(self) -> int:
        """Accepted requests not yet released."""
        with self._lock:
            return len(self._planned_ends)

    def release(self, ticket: int, output: int | None = None) -> None:
        """The accepted request ``ticket`` has been answered: it is no longer in flight, and
        its estimated output tokens become ``output``, the real count (if given)."""
        with self._lock:
            self._planned_ends.pop(ticket, None)
            entry = self._outputs.pop(ticket, None)
            if entry is not None and output is not None:
                self._output.adjust(entry, output)

    def reset(self) -> None:
        """Empty the windows and the high-water mark (requests in flight stay in flight)."""
        with self._lock:
            for window in self._windows:
                window.clear()
            self._outputs.clear()
            if self.foreign is not None:
                self.foreign.reset()
            self.max_in_flight = len(self._planned_ends)

    def _check(
        self, now: float, request: Request, in_flight: int
    ) -> tuple[Reason | None, float | None]:
        # Order: a request too large for a token limit can never pass, so say so first (as
        # OpenAI's "Request too large"); then requests, tokens and concurrency.
        # The wait is until every limit would let the request through (concurrency aside,
        # unless it is the reason: requests in flight end when their latency does).
        lim = self.limits
        reason: Reason | None = None
        wait = 0.0
        checks: tuple[tuple[Reason, int | None, SlidingWindow, int], ...] = (
            ("tokens", lim.tpm, self._tokens, request.tokens),
            ("input_tokens", lim.input_tpm, self._input, request.input),
            ("output_tokens", lim.output_tpm, self._output, request.output),
            ("requests", lim.rpm, self._requests, 1),
        )
        for kind, limit, window, amount in checks:
            if limit is None:
                continue
            fits = window.wait_until_fits(now, limit, amount)
            if fits is None:
                return kind, None
            if fits > 0:
                reason, wait = kind, max(wait, fits)
        if reason is not None:
            return reason, wait
        if lim.max_concurrent is not None and in_flight >= lim.max_concurrent:
            return "concurrency", max(0.0, min(self._planned_ends.values()) - now)
        return None, None

    @staticmethod
    def _usage(now: float, limit: int | None, window: SlidingWindow) -> Usage | None:
        if limit is None:
            return None
        return Usage(limit, max(0, limit - window.total), window.until_empty(now))
