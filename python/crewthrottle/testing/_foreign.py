"""Another client on the same key, which the app under test cannot see (issue 8): a share of
the provider's limits used in the background, so that "someone else uses the key" can be
tested end to end.

Its requests arrive evenly, ``share`` of ``rpm`` per window, each carrying ``tpm / rpm``
tokens (or, with ``tpm`` alone, ``share`` of ``tpm`` per window in 50 requests). It has been
running for a whole window when the provider sees its first request, as a client already at
work would. Each of its requests is admitted like any other: refused when it does not fit
(the other client gets a 429 then), which is counted.

Pure bookkeeping: arrivals are generated, with their own times, when the provider next
admits a request — the windows are only ever read then.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["ForeignTraffic"]

#: Requests per window of a foreign client when only ``tpm`` is limited.
_REQUESTS_WITHOUT_RPM = 50


@dataclass
class ForeignTraffic:
    """The schedule and counts of the other client (see the module's docs)."""

    interval: float  # seconds between two of its requests
    tokens: int  # tokens each of its requests carries
    window: float
    next_at: float | None = None
    accepted: int = 0
    refused: int = 0
    accepted_tokens: int = 0

    @classmethod
    def of(
        cls, rpm: int | None, tpm: int | None, window: float, share: float
    ) -> ForeignTraffic | None:
        """The foreign traffic taking ``share`` of ``rpm`` and ``tpm`` per ``window`` (None
        for no share, or no such limit)."""
        if share <= 0 or (rpm is None and tpm is None):
            return None
        per_window = rpm if rpm is not None else _REQUESTS_WITHOUT_RPM
        tokens = tpm // per_window if tpm is not None else 0
        return cls(window / (share * per_window), tokens, window)

    def due(self, now: float) -> Iterator[float]:
        """The times of its requests up to ``now``, each once, in order."""
        if self.next_at is None:
            self.next_at = now - self.window + self.interval / 2
        while self.next_at <= now:
            yield self.next_at
            self.next_at += self.interval

    def count(self, accepted: bool) -> None:
        """One of its requests was accepted, or refused."""
        if accepted:
            self.accepted += 1
            self.accepted_tokens += self.tokens
        else:
            self.refused += 1

    def reset(self) -> None:
        """Start again (with a window's worth of history) at the next admission."""
        self.next_at = None
        self.accepted = self.refused = self.accepted_tokens = 0
