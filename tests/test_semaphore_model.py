"""A stateful (hypothesis) test of `Semaphore` and `BoundedSemaphore` against a model.

The model is two integers: the value, and the bound of a bounded semaphore. `threading`'s
semaphore of the same kind is driven alongside, as a second oracle for the drop-in contract.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import crewthrottle as ct

REPR = re.compile(r"<crewthrottle\.(\w+) at 0x[0-9a-f]+: value=(\d+)(?:/(\d+))?>")


class SemaphoreMachine(RuleBasedStateMachine):
    """Non-blocking acquires, releases and over-releases, each checked against the model."""

    def __init__(self) -> None:
        super().__init__()
        self.sem: Any = None
        self.oracle: Any = None
        self.value = 0
        self.bound: int | None = None

    @initialize(value=st.integers(0, 5), bounded=st.booleans())
    def create(self, value: int, bounded: bool) -> None:
        native, stdlib = (
            (ct.BoundedSemaphore, threading.BoundedSemaphore)
            if bounded
            else (ct.Semaphore, threading.Semaphore)
        )
        self.sem, self.oracle = native(value), stdlib(value)
        self.value, self.bound = value, (value if bounded else None)

    def fits(self, n: int) -> bool:
        return self.bound is None or self.value + n <= self.bound

    @rule()
    def try_acquire(self) -> None:
        expected = self.value > 0
        assert self.sem.acquire(blocking=False) is expected
        assert self.oracle.acquire(blocking=False) is expected
        self.value -= expected

    @rule()
    def acquire_with_zero_timeout(self) -> None:
        expected = self.value > 0
        assert self.sem.acquire(timeout=0) is expected
        assert self.oracle.acquire(timeout=0) is expected
        self.value -= expected

    @rule(n=st.integers(1, 4))
    def release(self, n: int) -> None:
        if self.fits(n):
            self.sem.release(n)
            self.oracle.release(n)
            self.value += n
        else:
            with pytest.raises(ValueError, match="released too many times"):
                self.sem.release(n)
            with pytest.raises(ValueError, match="released too many times"):
                self.oracle.release(n)

    @precondition(lambda self: self.bound is not None and self.value == self.bound)
    @rule()
    def over_release_when_full(self) -> None:
        with pytest.raises(ValueError):
            self.sem.release()
        with pytest.raises(ValueError):
            self.oracle.release()

    @rule(n=st.integers(-2, 0))
    def release_of_fewer_than_one(self, n: int) -> None:
        with pytest.raises(ValueError, match=r"\bn\b"):
            self.sem.release(n)

    @precondition(lambda self: self.value > 0)
    @rule()
    def context_manager(self) -> None:
        with self.sem as entered:
            assert entered is True
            assert self.sem.stats()["value"] == self.value - 1

    @invariant()
    def repr_shows_the_model(self) -> None:
        match = REPR.fullmatch(repr(self.sem))
        assert match, repr(self.sem)
        name, value, bound = match.groups()
        assert name == ("Semaphore" if self.bound is None else "BoundedSemaphore")
        assert int(value) == self.value
        assert (None if bound is None else int(bound)) == self.bound
        assert self.sem.stats()["value"] == self.value
        assert self.sem.stats()["waiting"] == 0

    @invariant()
    def repr_matches_threading(self) -> None:
        ours = re.sub(r"^<crewthrottle\.| at 0x[0-9a-f]+", "", repr(self.sem))
        theirs = re.sub(r"^<threading\.| at 0x[0-9a-f]+", "", repr(self.oracle))
        assert ours == theirs


SemaphoreMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None
)
TestSemaphoreModel = SemaphoreMachine.TestCase
