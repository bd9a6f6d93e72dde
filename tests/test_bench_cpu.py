"""bench.push's CPU-per-request figure reads the server's CPU time from /proc."""

from __future__ import annotations

import os
import threading
import time

from bench.push import _cpu_s


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_process_and_main_thread_cpu_follow_the_work_done() -> None:
    pid = os.getpid()
    tid = threading.get_native_id()
    assert tid == pid  # pytest runs tests on the main thread: the one bench.push reads
    before, thread_before = _cpu_s(pid), _cpu_s(pid, tid)
    _burn(0.3)
    after, thread_after = _cpu_s(pid), _cpu_s(pid, tid)
    # Clock ticks are 10 ms: 0.3 s of CPU shows as at least 0.2 s on both counters.
    assert after - before >= 0.2
    assert thread_after - thread_before >= 0.2


def test_a_thread_that_is_gone_reads_as_no_cpu() -> None:
    assert _cpu_s(os.getpid(), 2**31 - 1) == 0.0
