"""Cheap timers usable inside compiled kernels, for per-kernel profiles of fused runs.

``ticks()`` reads the CPU's cycle counter (``llvm.readcyclecounter``: RDTSC on
x86-64, the virtual counter on AArch64) in a few nanoseconds, from inside
``@njit`` code, and caches like any kernel (no process-specific addresses are
baked into the machine code). ``ticks_per_second()`` calibrates the counter
against ``time.perf_counter`` once per process.

Kernels that accept a ``timers`` array (int64 (K, 2): column 0 counts calls,
column 1 sums ticks) add to row k around their k-th timed section when
``timers`` is given and skip all timing when it is ``None`` (numba compiles the
two cases separately, so the untimed kernels pay nothing).
"""

import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def _readcyclecounter(typingctx):
    sig = types.int64()

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(64), [])
        fn = builder.module.declare_intrinsic("llvm.readcyclecounter", fnty=fnty)
        return builder.call(fn, [])

    return sig, codegen


@njit(cache=True, fastmath=False)
def ticks():
    """The CPU cycle counter (int64); differences measure time, see ``ticks_per_second``."""
    return _readcyclecounter()


@njit(cache=True)
def add_time(timers, k, start):
    """Count one call of timed section ``k`` that began at tick ``start``."""
    timers[k, 0] += 1
    timers[k, 1] += _readcyclecounter() - start


_RATE = None


def ticks_per_second(calibrate_s=0.02):
    """Counter ticks per second, measured once per process against perf_counter."""
    global _RATE
    if _RATE is None:
        ticks()  # compile or load before calibrating
        t0, c0 = time.perf_counter(), ticks()
        while time.perf_counter() - t0 < calibrate_s:
            pass
        t1, c1 = time.perf_counter(), ticks()
        _RATE = (c1 - c0) / (t1 - t0) if c1 > c0 else 0.0
    return _RATE


def new_timers(n_sections):
    """A zeroed timer table: int64 (n_sections, 2)."""
    return np.zeros((n_sections, 2), dtype=np.int64)
