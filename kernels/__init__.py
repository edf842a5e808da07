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
"""

__all__ = ["distance", "matching", "loop", "store"]
