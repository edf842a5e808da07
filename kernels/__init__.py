"""Numba kernels of the engine: plain functions over flat float32 arrays.

This package imports numpy and numba only (never ``engine``), so other projects
can use the kernels on their own. Every kernel is ``@njit(cache=True)`` and
compiles lazily on its first call with a given signature: importing this package
compiles nothing.

Modules
-------
distance   pairwise Euclidean distances (parallel over rows)
matching   the similarity reduction, batch matching of many queries, and the
           early-termination scan (the confidence recurrence)
loop       whole-episode train and evaluation loops, and the single steps the
           stepwise path calls
store      the structure-of-arrays layout of a model's stored observations
timing     cycle-counter timers usable inside kernels (per-kernel profiles)
"""

import os as _os

# OpenMP worker threads that spin while waiting (libgomp's default) fall off a
# cliff when another process holds a core: every parallel region then waits a
# scheduler slice for the descheduled spinner. Measured on this 2-core machine
# with one other busy process: 8.0 ms per region (100 x 10 seed row: 8.0 ms
# instead of 0.31 ms; a thresholded run with 32 rounds: 244 ms instead of
# 1.3 ms). Passive waiting removes the cliff. A user's own setting wins; it
# must be set before the first parallel kernel runs, hence here.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["distance", "matching", "loop", "store", "timing"]
