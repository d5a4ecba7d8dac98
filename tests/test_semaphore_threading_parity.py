"""`Semaphore`/`BoundedSemaphore` against `threading`'s (issue 9, item 3).

CPython's own semaphore tests are imported from the interpreter's `test.lock_tests` (not
copied) and run against our classes and a subclass of each; then every argument `threading`
accepts that those tests do not cover: negative timeouts, bools, `__index__` integers, and a
subclass whose `__init__` calls `super().__init__(value)`. The remaining differences are the
ones documented in the README ("Differences from threading").
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
import weakref
from typing import Any

import pytest

import crewthrottle as ct

try:
    from test import lock_tests
except ImportError:  # Debian's python3 (without python3-test) ships no `test` package
    lock_tests = None

needs_lock_tests = pytest.mark.skipif(
    lock_tests is None,
    reason="this interpreter has no `test.lock_tests` (its `test` package is not installed)",
)


class SubSemaphore(ct.Semaphore):
    """The usual way to extend a threading semaphore: extra state, then the base's init."""

    def __init__(self, value: int = 1) -> None:
        self.extended = True
        super().__init__(value)


class SubBoundedSemaphore(ct.BoundedSemaphore):
    def __init__(self, value: int = 1) -> None:
        self.extended = True
        super().__init__(value)


if lock_tests is not None:
    # Bound as attributes (not imported by name) so pytest collects only these subclasses.

    class TestCPythonSemaphore(lock_tests.SemaphoreTests):  # type: ignore[misc,name-defined]
        semtype = ct.Semaphore

    class TestCPythonBoundedSemaphore(lock_tests.BoundedSemaphoreTests):  # type: ignore[misc,name-defined]
        semtype = ct.BoundedSemaphore

    class TestCPythonSemaphoreSubclass(lock_tests.SemaphoreTests):  # type: ignore[misc,name-defined]
        semtype = SubSemaphore

        def test_repr(self) -> None:
            pytest.skip("the repr names the subclass, as threading's does: checked below")

    class TestCPythonBoundedSemaphoreSubclass(lock_tests.BoundedSemaphoreTests):  # type: ignore[misc,name-defined]
        semtype = SubBoundedSemaphore

        def test_repr(self) -> None:
            pytest.skip("the repr names the subclass, as threading's does: checked below")


@needs_lock_tests
def test_the_cpython_suite_was_collected() -> None:
    """Guards against a `test.lock_tests` that moved its classes: the suite must not vanish."""
    assert issubclass(lock_tests.SemaphoreTests, lock_tests.BaseSemaphoreTests)
    assert any(name.startswith("test_") for name in dir(lock_tests.BaseSemaphoreTests))


PAIRS = [
    pytest.param(threading.Semaphore, ct.Semaphore, id="Semaphore"),
    pytest.param(threading.BoundedSemaphore, ct.BoundedSemaphore, id="BoundedSemaphore"),
    pytest.param(threading.Semaphore, SubSemaphore, id="Semaphore-subclass"),
    pytest.param(threading.BoundedSemaphore, SubBoundedSemaphore, id="BoundedSemaphore-subclass"),
]


def outcome(call: Any) -> Any:
    """What a call returns, or the type of what it raises."""
    try:
        return call()
    except Exception as exc:
        return type(exc)


# -- timeouts --------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [-1, -0.5, -1e300, -math.inf, -(2**70), 0, 0.0, False])
@pytest.mark.parametrize(("reference", "cls"), PAIRS)
def test_a_timeout_of_zero_or_less_means_dont_wait(reference: Any, cls: Any, timeout: Any) -> None:
    for sem in (reference(0), cls(0)):
        started = time.monotonic()
        assert sem.acquire(timeout=timeout) is False
        assert time.monotonic() - started < 5.0, "a timeout <= 0 must not wait"
    for sem in (reference(1), cls(1)):
        assert sem.acquire(timeout=timeout) is True
        assert sem.acquire(True, timeout) is False


@pytest.mark.parametrize(("reference", "cls"), PAIRS)
def test_a_negative_timeout_does_not_wait_in_async_code_either(reference: Any, cls: Any) -> None:
    sem = cls(1)

    async def main() -> list[bool]:
        return [await sem.acquire_async(timeout=-1), await sem.acquire_async(timeout=-1)]

    assert asyncio.run(main()) == [True, False]


@pytest.mark.parametrize("cls", [ct.Semaphore, SubBoundedSemaphore])
def test_true_as_a_timeout_is_one_second(cls: Any) -> None:
    sem = cls(0)
    started = time.monotonic()
    assert sem.acquire(timeout=True) is False
    assert 0.5 <= time.monotonic() - started < 10.0


@pytest.mark.parametrize(("reference", "cls"), PAIRS)
def test_huge_int_timeouts_wait_rather_than_overflow(reference: Any, cls: Any) -> None:
    """threading raises OverflowError for 2**70 only when it must wait; we never do."""
    sem = cls(1)
    assert sem.acquire(timeout=2**70) is True
    assert sem.acquire(timeout=-(2**70)) is False


@pytest.mark.parametrize(("reference", "cls"), PAIRS)
def test_a_nan_timeout_is_refused(reference: Any, cls: Any) -> None:
    """A documented difference: threading spins on a NaN timeout until a release comes."""
    with pytest.raises(ValueError, match="timeout"):
        cls(0).acquire(timeout=math.nan)


# -- bools and integers as counts ------------------------------------------------------------


class Index:
    """An integer that is not an int, as numpy's are: threading accepts it, so do we."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value

    def __lt__(self, other: int) -> bool:  # threading compares the value with 0 and 1
        return self.value < other


@pytest.mark.parametrize(("reference", "cls"), PAIRS)
def test_bools_are_ints_as_in_threading(reference: Any, cls: Any) -> None:
    for make in (reference, cls):
        sem = make(True)
        assert sem.acquire(blocking=False) is True
        assert sem.acquire(False) is False
        sem.release(True)
        assert sem.acquire(True, True) is True
        assert outcome(lambda s=sem: s.release(False)) is ValueError
        empty = make(False)
        assert empty.acquire(blocking=False) is False
        assert empty.acquire(False) is False


@pytest.mark.parametrize(("reference", "cls"), PAIRS)
def test_index_integers_are_counts(reference: Any, cls: Any) -> None:
    sem = cls(Index(2))
    assert sem.acquire(False) and sem.acquire(False) and not sem.acquire(False)
    sem.release(Index(2))
    assert sem.acquire(False) and sem.acquire(False) and not sem.acquire(False)
    with pytest.raises(ValueError, match="value"):
        cls(Index(-1))
    with pytest.raises(ValueError, match="one or more"):
        sem.release(Index(0))


@pytest.mark.parametrize(("reference", "cls"), PAIRS)
def test_errors_match_threadings_for_bad_counts(reference: Any, cls: Any) -> None:
    for bad in (-1, -sys.maxsize, -(2**70)):
        assert outcome(lambda b=bad: reference(b)) is ValueError
        assert outcome(lambda b=bad: cls(b)) is ValueError
        for make in (reference, cls):
            assert outcome(lambda m=make, b=bad: m(1).release(b)) is ValueError
    for wrong in ("1", None, [1]):
        assert outcome(lambda w=wrong: reference(w)) is TypeError
        assert outcome(lambda w=wrong: cls(w)) is TypeError


# -- subclasses ------------------------------------------------------------------------------


@pytest.mark.parametrize(("reference", "cls"), PAIRS[:2])
def test_a_subclass_may_take_other_arguments_and_call_super_init(reference: Any, cls: Any) -> None:
    """Today's TypeError (issue 9, item 3): a native `__new__` saw the subclass's arguments."""

    def subclass(base: Any) -> Any:
        class Named(base):  # type: ignore[misc,valid-type]
            def __init__(self, name: str, *, size: int) -> None:
                super().__init__(size)
                self.name = name

        return Named

    for base in (reference, cls):
        sem = subclass(base)("workers", size=2)
        assert sem.name == "workers"
        assert sem.acquire(False) and sem.acquire(False) and not sem.acquire(False)
        sem.release(2)
        assert outcome(lambda s=sem: s.release()) is (
            ValueError if "Bounded" in base.__name__ else None
        )


@pytest.mark.parametrize(("reference", "cls"), PAIRS[:2])
def test_a_subclass_passing_value_by_keyword_works(reference: Any, cls: Any) -> None:
    class Keyword(cls):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            super().__init__(value=3)

    sem = Keyword()
    assert [sem.acquire(False) for _ in range(4)] == [True, True, True, False]


@pytest.mark.parametrize("cls", [SubSemaphore, SubBoundedSemaphore])
def test_a_subclass_keeps_its_state_and_everything_native(cls: Any) -> None:
    sem = cls(2)
    assert sem.extended
    assert isinstance(sem, ct.Semaphore)
    assert repr(sem).startswith(f"<{__name__}.{cls.__qualname__} at 0x")

    async def main() -> bool:
        async with sem:
            return await sem.acquire_async(timeout=0)

    assert asyncio.run(main()) is True
    assert sem.stats()["value"] == 1


@pytest.mark.parametrize("cls", [ct.Semaphore, ct.BoundedSemaphore])
def test_semaphores_take_attributes_and_weak_references_like_threadings(cls: Any) -> None:
    for sem in (cls(1), threading.Semaphore(1)):
        sem.name = "pool"
        ref = weakref.ref(sem)
        assert ref() is sem and sem.name == "pool"


@pytest.mark.parametrize("cls", [ct.Semaphore, ct.BoundedSemaphore])
def test_calling_init_again_resets_the_value_as_in_threading(cls: Any) -> None:
    sem = cls(1)
    assert sem.acquire(False)
    sem.__init__(2)
    assert [sem.acquire(False) for _ in range(3)] == [True, True, False]
    with pytest.raises(ValueError):
        sem.__init__(-1)


@pytest.mark.parametrize(("reference", "cls"), PAIRS)
def test_an_explicit_none_is_not_the_default(reference: Any, cls: Any) -> None:
    """threading reads `blocking=None` as falsy (don't wait) and refuses `value=None` and
    `release(None)` with TypeError: None is not the default there, so not here either."""
    for make in (reference, cls):
        assert make(0).acquire(None) is False
        assert make(1).acquire(None) is True
        assert outcome(lambda m=make: m(None)) is TypeError
        assert outcome(lambda m=make: m(1).release(None)) is TypeError
