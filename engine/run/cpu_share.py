"""How many kernel threads the next evaluation episode gets: the cores other processes leave free.

A step of the evidence model is a few parallel regions of ~0.1 ms each, and every region
ends at a barrier where all of the run's threads meet. When another process holds a core,
the thread that shares that core with it is descheduled for a whole scheduler slice (~3 ms
here) every so often, and the barrier waits for it: measured on this 2-core machine,
``shapes_10`` took 35 ms per step instead of 1.5 ms with a busy loop started during the run.
Fewer threads than there are free cores never meet that wait, so before each episode the
run measures how much CPU the machine's other processes used since its last look and runs
the episode on the cores they left free (at least one, at most the configured threads).

What it reads (Linux): ``/proc/stat``'s first line (all CPUs' busy and idle ticks; steal
time counts as taken by others) and this process's own CPU time
(``time.process_time``: all its threads, spinning OpenMP workers included), over at least
``WINDOW_S`` of wall time, so that the 10 ms ticks average out. Elsewhere (no
``/proc/stat``) it never changes the threads. Results do not depend on the number of threads
(the kernels' parallel loops write disjoint rows; ``tests/test_workers.py`` checks one-thread
workers against a two-thread run), so only the time per step changes.
"""

from __future__ import annotations

import os
import time

#: shortest wall time between two decisions: /proc/stat counts in ticks of 10 ms
WINDOW_S = 0.25
#: a core counts as free when others use less than this much of it (hysteresis: a core
#: half used by others still slows every barrier it is part of)
FREE_BELOW = 0.4


def _proc_stat() -> tuple[float, float] | None:
    """(busy, total) seconds of all CPUs since boot from ``/proc/stat``, or None."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != b"cpu":
        return None
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = sum(ticks) / hz
    idle = (ticks[3] + ticks[4]) / hz
    return total - idle, total


def others_cores(busy0: float, busy1: float, ours: float, wall: float) -> float:
    """Cores' worth of CPU used by other processes: the machine's busy seconds minus this
    process's CPU seconds, over ``wall`` seconds (never negative)."""
    if wall <= 0:
        return 0.0
    return max(0.0, (busy1 - busy0 - ours) / wall)


def threads_for(others: float, cpus: int, max_threads: int) -> int:
    """Threads for cores that ``others`` cores' worth of other work leaves free: each core
    counts as taken from ``FREE_BELOW`` of its use on; at least 1, at most ``max_threads``."""
    free = cpus - int(others + (1.0 - FREE_BELOW))
    return max(1, min(max_threads, free))


class CpuShare:
    """Sets numba's thread count before each episode (:meth:`before_episode`).

    ``max_threads``: the most threads to use (numba's configured count). ``enabled``: False
    leaves the threads alone (one thread anyway, no ``/proc/stat``, or
    ``ENGINE_CPU_SHARE=0``). ``changes``: how often the count changed; ``threads``: the
    count now; ``used``: the counts episodes ran with."""

    def __init__(self, max_threads: int | None = None):
        import numba

        self._numba = numba
        self.max_threads = int(max_threads if max_threads is not None else numba.config.NUMBA_NUM_THREADS)
        self.cpus = os.cpu_count() or 1
        self.threads = numba.get_num_threads()
        self.changes = 0
        self.used: set[int] = set()
        self.enabled = (self.max_threads > 1 and os.environ.get("ENGINE_CPU_SHARE", "1") != "0"
                        and _proc_stat() is not None)
        self._mark = None

    def _sample(self):
        st = _proc_stat()
        return None if st is None else (time.perf_counter(), st[0], time.process_time())

    def start(self, settle_s: float = 0.05) -> int:
        """A first look before the first episode: ``settle_s`` of sleep (others' use is measured
        while this process is idle). Returns the threads chosen."""
        if not self.enabled:
            return self.threads
        a = self._sample()
        time.sleep(settle_s)
        b = self._sample()
        if a is not None and b is not None:
            self._decide(others_cores(a[1], b[1], b[2] - a[2], b[0] - a[0]))
        self._mark = b
        return self.threads

    def before_episode(self) -> int:
        """The threads for the next episode (set in numba), from what others used since the last
        decision, once at least ``WINDOW_S`` has passed."""
        n = self._next()
        self.used.add(n)
        return n

    def _next(self) -> int:
        if not self.enabled:
            return self.threads
        now = self._sample()
        if now is None:
            return self.threads
        if self._mark is None:
            self._mark = now
            return self.threads
        wall = now[0] - self._mark[0]
        if wall < WINDOW_S:
            return self.threads
        self._decide(others_cores(self._mark[1], now[1], now[2] - self._mark[2], wall))
        self._mark = now
        return self.threads

    def _decide(self, others: float) -> None:
        n = threads_for(others, self.cpus, self.max_threads)
        if n != self.threads:
            self._numba.set_num_threads(n)
            self.threads = n
            self.changes += 1

    def restore(self) -> None:
        """Back to ``max_threads`` (after the evaluation)."""
        if self.enabled and self.threads != self.max_threads:
            self._numba.set_num_threads(self.max_threads)
            self.threads = self.max_threads
