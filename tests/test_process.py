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


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_tasks_of_the_forking_threads_loop_live_on_in_the_child() -> None:
    """A coroutine forks while other tasks of its loop wait on the limiter (and a thread of
    the parent waits too): in the child, the loop's tasks are served; the thread is gone."""
    proc = python("""
        import asyncio, os, threading, time, warnings
        import crewthrottle as ct
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        limiter = ct.Limiter(max_concurrent=1)
        held = limiter.acquire()
        threading.Thread(target=lambda: limiter.acquire().release(), daemon=True).start()

        async def main() -> str:
            async def one() -> None:
                async with await limiter.acquire_async(timeout=5):
                    await asyncio.sleep(0)
            tasks = [asyncio.create_task(one()) for _ in range(2)]
            while limiter.stats()["waiting"] < 3:
                await asyncio.sleep(0.001)
            pid = os.fork()
            if pid == 0:
                try:
                    await asyncio.gather(*tasks)  # the permit held before the fork is not here
                    stats = limiter.stats()
                    ok = (stats["in_flight"], stats["waiting"], stats["acquired"]) == (0, 0, 3)
                except BaseException as exc:
                    print("child failed:", repr(exc), flush=True)
                    ok = False
                os._exit(0 if ok else 1)
            _, status = os.waitpid(pid, 0)
            held.release()
            await asyncio.gather(*tasks)
            return f"child {os.waitstatus_to_exitcode(status)}"

        print(asyncio.run(main()), flush=True)
    """)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.split() == ["child", "0"], (out, err)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forks_under_lock_contention_leave_no_child_stuck() -> None:
    """Threads contend for one limiter's lock (so some sleep inside the lock's wait) while the
    main thread forks again and again; each child then contends for the same lock from
    threads of its own. Every child must finish: a lock, or the bookkeeping of its sleepers,
    half-held by a thread that does not exist in the child would hang it."""
    proc = python("""
        import os, sys, threading, warnings
        import crewthrottle as ct
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        limiter = ct.Limiter(max_concurrent=64, rpm=10**9, window=1.0, margin=0.0)
        stop = threading.Event()

        def hammer(n: int = 10**9) -> None:
            for _ in range(n):
                if stop.is_set():
                    return
                permit = limiter.try_acquire()
                if permit is not None:
                    permit.release()

        workers = [threading.Thread(target=hammer, daemon=True) for _ in range(6)]
        for w in workers:
            w.start()
        stuck = 0
        for _ in range(20):
            pid = os.fork()
            if pid == 0:
                stop.clear()
                threads = [threading.Thread(target=hammer, args=(2_000,)) for _ in range(4)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                os._exit(0 if limiter.stats()["in_flight"] == 0 else 1)
            for _ in range(200):  # up to 10 s
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                threading.Event().wait(0.05)
            else:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                stuck += 1
                continue
            if os.waitstatus_to_exitcode(status) != 0:
                stuck += 1
        stop.set()
        print("stuck", stuck, flush=True)
    """)
    out, err = proc.communicate(timeout=110)
    assert proc.returncode == 0, err
    assert out.split() == ["stuck", "0"], (out, err)
