"""kernels.timing: the in-kernel cycle counter and the timer table, against perf_counter."""

import time

import numpy as np
from numba import njit

from kernels import timing


@njit
def _timed_sections(timers, n):
    for k in range(2):
        for _ in range(n):
            t0 = timing.ticks()
            timing.add_time(timers, k, t0)


def test_ticks_advance_with_wall_time():
    rate = timing.ticks_per_second()
    assert rate > 0
    a, t0 = timing.ticks(), time.perf_counter()
    time.sleep(0.05)
    b, t1 = timing.ticks(), time.perf_counter()
    # the counter measures the same interval as perf_counter, within 20% (calibration on a noisy machine)
    assert abs((b - a) / rate - (t1 - t0)) < 0.2 * (t1 - t0)


def test_add_time_counts_calls_and_non_negative_ticks():
    timers = timing.new_timers(3)
    assert timers.dtype == np.int64 and timers.shape == (3, 2) and not timers.any()
    _timed_sections(timers, 5)
    assert timers[:, 0].tolist() == [5, 5, 0]
    assert (timers[:2, 1] >= 0).all() and timers[2, 1] == 0
