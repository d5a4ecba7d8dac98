"""Whole-process behaviour, in subprocesses: Ctrl-C interrupts a blocked acquire promptly,
and a limiter made before os.fork() works in the child."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

BLOCKED = {
    "Limiter": "held = ct.Limiter(max_concurrent=1); p = held.acquire(); wait = held.acquire",
    "Semaphore": "held = ct.Semaphore(0); wait = held.acquire",
    "TokenBucket": "held = ct.TokenBucket(1, per=3600); held.acquire(); wait = held.acquire",
}


def python(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("kind", sorted(BLOCKED))
def test_ctrl_c_interrupts_a_blocked_acquire(kind: str) -> None:
    proc = python(f"""
        import threading, time, crewthrottle as ct
        {BLOCKED[kind]}
        def announce():
            while held.stats()["waiting"] == 0:
                time.sleep(0.001)
            print("blocked", flush=True)
        threading.Thread(target=announce, daemon=True).start()
        try:
            wait()
        except KeyboardInterrupt:
            stats = held.stats()
            print("interrupted", stats["waiting"], stats.get("in_flight", "-"), flush=True)
    """)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "blocked"  # queued inside the native wait
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    elapsed = time.monotonic() - sent
    assert proc.returncode == 0, err
    words = out.split()
    assert words[:2] == ["interrupted", "0"], out  # nothing left queued
    if kind == "Limiter":
        assert words[2] == "1"  # only the permit taken before
    assert elapsed < 5, f"KeyboardInterrupt took {elapsed:.2f} s"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_limiter_made_before_fork_works_in_the_child() -> None:
    """The parent holds the only slot and another thread waits on it while the process forks:
    the child must neither deadlock nor inherit those ghosts."""
    proc = python("""
        import os, sys, threading, time, warnings
        import crewthrottle as ct
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        limiter = ct.Limiter(max_concurrent=1, rpm=1000, window=1.0)
        sem = ct.BoundedSemaphore(1)
        held = limiter.acquire()
        sem.acquire()
        waiter = threading.Thread(target=lambda: limiter.acquire().release(), daemon=True)
        waiter.start()
        while limiter.stats()["waiting"] == 0:
            time.sleep(0.001)
        pid = os.fork()
        if pid == 0:
            ok = limiter.stats()["in_flight"] == 0 and limiter.stats()["waiting"] == 0
            permit = limiter.acquire(timeout=5)
            held.release()  # a permit from before the fork: changes nothing here
            ok = ok and limiter.stats()["in_flight"] == 1
            permit.release()
            ok = ok and limiter.try_acquire() is not None
            sem.release()  # the child inherits the semaphore's count, like threading's
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        held.release()
        waiter.join(5)
        sem.release()
        in_flight = limiter.stats()["in_flight"]
        print("child", os.waitstatus_to_exitcode(status), "parent", in_flight, flush=True)
    """)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.split() == ["child", "0", "parent", "0"], (out, err)
